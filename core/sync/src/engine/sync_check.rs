//! Bounds checks on an automerge sync message before automerge parses it.
//!
//! The `data` of a `sync` or `request` frame is an automerge sync message chosen by the
//! remote peer. Automerge 0.12 trusts it: counts in the message size loops and allocations,
//! Bloom filter parameters size allocations and divisions, and compressed chunks inflate
//! without bound. [`check_sync_message`] walks the raw bytes with a zero-copy cursor and
//! refuses any message whose declared counts exceed a [`SyncLimits`] field, whose declared
//! lengths are not actually present, or whose chunks expand (after DEFLATE and after
//! run-length decoding) past the limits. It never allocates in proportion to a declared
//! count: the only buffers it fills are inflated chunks and columns, bounded by
//! [`SyncLimits::max_expanded_bytes`] while they are being inflated.
//!
//! It does not verify checksums, hashes, UTF-8 or most values inside columns: automerge
//! checks those and fails with an error, so a message that passes may still be refused.
//! The one column whose values it reads is a document's dependency indexes, see below.
//!
//! ## Upstream bug (automerge 0.12.0)
//! `sync::Message::decode` accepts a Bloom filter whose `num_bits_per_entry` is 0 as long as
//! `num_entries` is not. When the document then answers (`generate_sync_message` →
//! `get_hashes_to_send` → `BloomFilter::contains_hash` → `get_probes` in `src/sync/bloom.rs`),
//! it computes `hash % (8 * bits.len())` with an empty `bits`, a division by zero that
//! panics. `get_probes` also starts with `Vec::with_capacity(num_probes)`, so
//! `num_probes = 4294967295` asks for 16 GiB. Minimal reproduction: create a document with
//! one change; decode the ten bytes `42 00 00 01 00 03 01 00 01 00` (V1 message, no heads,
//! no need, one `have` with no `last_sync` and the 3-byte filter `01 00 01`: one entry, zero
//! bits per entry, one probe; no changes) with `sync::Message::decode`; pass it to
//! `receive_sync_message` with a fresh `sync::State`; call `generate_sync_message` on the
//! same state: it panics with "attempt to calculate the remainder with a divisor of zero".
//! The parser should refuse `num_bits_per_entry == 0` and bound `num_probes`. Separately,
//! `Message::decode` pushes one element per declared `have`, `need` and change without
//! bounding the count by the input (`parse::length_prefixed`), so 8 million two-byte `have`
//! entries cost hundreds of MB.
//!
//! A second panic: a document chunk whose dependency column (`DEPS_VAL_COL_SPEC`, 0x43)
//! names a change index past the end of the change columns makes `ChangeGraph::load`
//! (`src/change_graph.rs`, `max_ops[dep as usize]`) index out of bounds, both in
//! `Automerge::load` and when a sync message carries that document. Reproduction: save a
//! two-change document with `save_nocompress`, set the single dependency index to 63,
//! recompute the chunk checksum, load it.

use std::borrow::Cow;
use std::io::Read;

use flate2::bufread::DeflateDecoder;
use thiserror::Error;

use cursor::Cursor;

mod cursor;

/// Caps on what one sync message may declare. Every count, length and expansion that
/// automerge would loop over or allocate for is checked against one of these fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncLimits {
    /// Hashes in a list of heads: the message's `heads`, a change's dependencies and a
    /// document chunk's heads. Default 1,024: heads are the unmerged tips of a document's
    /// history, one per device that edited concurrently since anyone merged; each costs a
    /// lookup in the change graph.
    pub max_heads: u64,
    /// Hashes the sender asks for. Default 1,024: automerge asks only for the missing
    /// dependencies of the heads it was told about, a list as short as the heads.
    pub max_need: u64,
    /// `have` entries. Default 8: automerge writes at most one, and each costs a Bloom
    /// lookup per change the sender lacks when the reply is generated.
    pub max_haves: u64,
    /// Hashes in one `have`'s `last_sync`. Default 1,024: the heads both peers shared last
    /// time, so the same bound as `max_heads`.
    pub max_last_sync: u64,
    /// Bloom filter probes per hash. Default 32: automerge writes 7, and allocates and loops
    /// this many times for every change it considers sending.
    pub max_bloom_probes: u32,
    /// Bloom filter bits per entry; 0 is always refused (automerge divides by zero).
    /// Default 64: automerge writes 10.
    pub max_bloom_bits_per_entry: u32,
    /// Chunks in the change list (change, compressed change and document chunks). Default
    /// 100,000: a peer catching up sends every missing change in one message, but a V2 peer
    /// gets the whole document as one chunk once it lacks a third of it; automerge keeps a
    /// parsed copy of every chunk while applying, so tiny chunks cost ~20 times their size.
    pub max_changes: u64,
    /// Changes recorded inside document chunks, summed over the message. Default 1,000,000:
    /// a change normally holds at least one operation, so the same bound as `max_ops`.
    pub max_document_changes: u64,
    /// Actor ids declared by one chunk. Default 65,536: every device session that ever
    /// edited a document is an actor in it; automerge allocates an id and index entry each.
    pub max_actors: u64,
    /// Columns in one section of a chunk. Default 64: automerge writes at most 16 op columns
    /// and 9 change columns; the rest leaves room for columns added later.
    pub max_columns: u64,
    /// Bytes in the trailing flags section. Default 64: automerge writes 2 and parses the
    /// section byte by byte.
    pub max_flag_bytes: u64,
    /// Bytes of all chunks once compressed chunks and columns are inflated. Default 16 MiB:
    /// the largest document the engine accepts and about one frame, so compression cannot
    /// make a message bigger than an uncompressed one could be.
    pub max_expanded_bytes: u64,
    /// Operations in the message (action column rows), and the most rows any one column may
    /// declare. Default 1,000,000: automerge 0.12 spends about 90 bytes and 1.6 µs applying
    /// an operation (a 10-million-character text took 888 MB and 16 s).
    pub max_ops: u64,
}

impl Default for SyncLimits {
    fn default() -> Self {
        SyncLimits {
            max_heads: 1024,
            max_need: 1024,
            max_haves: 8,
            max_last_sync: 1024,
            max_bloom_probes: 32,
            max_bloom_bits_per_entry: 64,
            max_changes: 100_000,
            max_document_changes: 1_000_000,
            max_actors: 65_536,
            max_columns: 64,
            max_flag_bytes: 64,
            max_expanded_bytes: 16 * 1024 * 1024,
            max_ops: 1_000_000,
        }
    }
}

/// What a message that passed [`check_sync_message`] carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncSummary {
    /// One per change chunk plus the changes recorded in document chunks.
    pub changes: usize,
    /// Operations in all chunks (action column rows).
    pub ops: u64,
    /// Bytes of all chunks once compressed chunks and columns are inflated.
    pub expanded_bytes: u64,
}

/// Why a sync message was refused. Values are counts and lengths, never content.
#[derive(Error, Debug, Clone, PartialEq, Eq)]
pub enum SyncCheckError {
    /// A count or length declares more bytes than follow: a truncated or forged message.
    #[error("sync message truncated in {field}")]
    Truncated {
        /// Where the bytes ran out.
        field: &'static str,
    },
    /// A LEB128 number is overlong or too wide for its field (automerge refuses these too).
    #[error("malformed number in {field}")]
    BadNumber {
        /// The field holding it.
        field: &'static str,
    },
    /// The first byte is neither 0x42 (V1) nor 0x43 (V2).
    #[error("unknown sync message version byte {0:#04x}")]
    UnknownVersion(u8),
    /// A count exceeds its [`SyncLimits`] field.
    #[error("{field}: {count} is over the limit of {limit}")]
    TooMany {
        /// What was counted: `heads`, `need`, `haves`, `changes`, `columns`, ...
        field: &'static str,
        /// The count declared or accumulated.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// A Bloom filter's bits per entry or probes is 0 or over its limit.
    #[error("Bloom filter {field} is {value}, allowed 1..={limit}")]
    BadBloom {
        /// `bits per entry` or `probes`.
        field: &'static str,
        /// The value declared.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// A Bloom filter's bit array is not the length its header implies.
    #[error("Bloom filter has {actual} bytes of bits, its header implies {expected}")]
    BloomSize {
        /// Bytes implied by entries and bits per entry.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// An entry of the change list does not start with automerge's magic bytes.
    #[error("change list entry is not an automerge chunk")]
    NotAChunk,
    /// A chunk type automerge never puts in a sync message (3 is a bundle).
    #[error("unsupported chunk type {0}")]
    UnsupportedChunk(u8),
    /// A compressed chunk or column is not a valid DEFLATE stream.
    #[error("compressed data is not a valid DEFLATE stream")]
    Inflate,
    /// Chunks expand past `max_expanded_bytes`; inflating stops one byte past the limit.
    #[error("chunks expand to at least {expanded} bytes, over the limit of {limit}")]
    TooLarge {
        /// Bytes counted when checking stopped.
        expanded: u64,
        /// The limit.
        limit: u64,
    },
    /// The message holds more operations than `max_ops`.
    #[error("message holds at least {ops} operations, over the limit of {limit}")]
    TooManyOps {
        /// Operations counted when checking stopped.
        ops: u64,
        /// The limit.
        limit: u64,
    },
    /// One column declares more rows than `max_ops` (say a run of a billion nulls, which
    /// automerge would iterate).
    #[error("column {column:#x} declares {rows} rows, over the limit of {limit}")]
    ColumnTooLong {
        /// The column specification (id, type, compression bit).
        column: u32,
        /// Rows declared.
        rows: u64,
        /// `max_ops`.
        limit: u64,
    },
    /// A change chunk column has the DEFLATE bit; only document columns may be compressed.
    #[error("change chunk column {column:#x} is marked compressed")]
    CompressedChangeColumn {
        /// The column specification.
        column: u32,
    },
    /// A document names a dependency that is not one of its changes (automerge would panic).
    #[error("document dependency index {index} is not below its {changes} changes")]
    BadDependency {
        /// The index named.
        index: i128,
        /// Changes in the document.
        changes: u64,
    },
    /// Bytes follow where the format has none. Automerge ignores some; no writer adds them.
    #[error("{count} unexpected bytes after {field}")]
    TrailingBytes {
        /// What they follow.
        field: &'static str,
        /// How many.
        count: u64,
    },
}

type Result<T, E = SyncCheckError> = std::result::Result<T, E>;

const MESSAGE_V1: u8 = 0x42;
const MESSAGE_V2: u8 = 0x43;
/// Every automerge storage chunk starts with these (automerge `storage.rs`).
const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHUNK_DOCUMENT: u8 = 0;
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED_CHANGE: u8 = 2;
/// Bit 3 of a column specification: the column's bytes are one DEFLATE stream.
const COLUMN_DEFLATE: u32 = 0x08;
/// Low three bits of a column specification: how its bytes are encoded.
const COLUMN_TYPE: u32 = 0x07;
const TYPE_BOOLEAN: u32 = 4;
const TYPE_STRING: u32 = 5;
const TYPE_VALUE: u32 = 7;
/// Action column (id 4, integer): one row per operation in change and document chunks.
const ACTION_COLUMN: u32 = 0x42;
/// A document's change actor column (id 0, actor): one row per change.
const CHANGE_ACTOR_COLUMN: u32 = 0x01;
/// A document's dependency counts (id 4, group) and indexes (id 4, delta).
const DEPS_COUNT_COLUMN: u32 = 0x40;
const DEPS_INDEX_COLUMN: u32 = 0x43;
/// Automerge's Bloom modulo is `8 * bits.len() as u32`: longer arrays wrap it to 0.
const MAX_BLOOM_BYTES: u64 = (u32::MAX / 8) as u64;

/// Checks `data`, the bytes of one automerge sync message, against `limits`. Call it before
/// `automerge::sync::Message::decode`; on `Err` the message must not reach automerge.
pub fn check_sync_message(data: &[u8], limits: &SyncLimits) -> Result<SyncSummary> {
    let mut c = Cursor::new(data);
    let version = c.byte("version")?;
    if version != MESSAGE_V1 && version != MESSAGE_V2 {
        return Err(SyncCheckError::UnknownVersion(version));
    }
    hashes(&mut c, "heads", limits.max_heads)?;
    hashes(&mut c, "need", limits.max_need)?;
    // A `have` is at least two bytes: an empty `last_sync` and an empty filter.
    for _ in 0..c.count("haves", limits.max_haves, 2)? {
        hashes(&mut c, "last_sync", limits.max_last_sync)?;
        check_bloom(c.prefixed("bloom")?, limits)?;
    }
    let mut tally = Tally {
        limits,
        chunks: 0,
        change_chunks: 0,
        document_changes: 0,
        ops: 0,
        expanded: 0,
    };
    for _ in 0..c.count("changes", limits.max_changes, 1)? {
        // V2 concatenates chunks in one entry (a document, then orphaned changes).
        let mut entry = Cursor::new(c.prefixed("change list entry")?);
        loop {
            check_chunk(&mut entry, &mut tally)?;
            if entry.is_empty() {
                break;
            }
        }
    }
    if !c.is_empty() {
        let flags = c.uleb("flags length")?;
        if flags > limits.max_flag_bytes {
            return Err(too_many("flag bytes", flags, limits.max_flag_bytes));
        }
        c.take(flags, "flags")?;
        if !c.is_empty() {
            return Err(c.trailing("flags"));
        }
    }
    Ok(SyncSummary {
        changes: usize::try_from(tally.change_chunks.saturating_add(tally.document_changes))
            .unwrap_or(usize::MAX),
        ops: tally.ops,
        expanded_bytes: tally.expanded,
    })
}

/// Mirrors automerge's `BloomFilter::parse`, refusing what would make `get_probes` divide
/// by zero or allocate by a declared number.
fn check_bloom(bytes: &[u8], limits: &SyncLimits) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mut c = Cursor::new(bytes);
    let entries = c.uleb_u32("bloom entries")?;
    let bits_per_entry = c.uleb_u32("bloom bits per entry")?;
    let probes = c.uleb_u32("bloom probes")?;
    // Automerge never probes a filter with zero entries, but no writer sends one with
    // parameters either: one rule for all filters.
    for (field, value, limit) in [
        (
            "bits per entry",
            bits_per_entry,
            limits.max_bloom_bits_per_entry,
        ),
        ("probes", probes, limits.max_bloom_probes),
    ] {
        if !(1..=limit).contains(&value) {
            let (value, limit) = (value.into(), limit.into());
            return Err(SyncCheckError::BadBloom {
                field,
                value,
                limit,
            });
        }
    }
    // automerge's `bits_capacity`: ceil(entries * bits_per_entry / 8), exact in u64.
    let expected = (u64::from(entries) * u64::from(bits_per_entry)).div_ceil(8);
    let actual = c.remaining();
    if actual != expected || expected > MAX_BLOOM_BYTES {
        return Err(SyncCheckError::BloomSize { expected, actual });
    }
    Ok(())
}

/// Checks one storage chunk at the cursor (automerge `storage/chunk.rs` `Header::parse`):
/// magic, checksum, type, uLEB body length, body.
fn check_chunk(c: &mut Cursor<'_>, tally: &mut Tally<'_>) -> Result<()> {
    let start = c.pos;
    if c.take(4, "chunk magic")? != CHUNK_MAGIC {
        return Err(SyncCheckError::NotAChunk);
    }
    c.take(4, "chunk checksum")?;
    let kind = c.byte("chunk type")?;
    let body = c.prefixed("chunk body")?;
    let header = (c.pos - start - body.len()) as u64;
    tally.chunks += 1;
    let limit = tally.limits.max_changes;
    if tally.chunks > limit {
        return Err(too_many("changes", tally.chunks, limit));
    }
    match kind {
        CHUNK_DOCUMENT => {
            tally.charge(header + body.len() as u64)?;
            check_document(body, tally)
        }
        CHUNK_CHANGE => {
            tally.change_chunks += 1;
            tally.charge(header + body.len() as u64)?;
            check_change(body, tally)
        }
        CHUNK_COMPRESSED_CHANGE => {
            // The body is one DEFLATE stream of a change chunk's body.
            tally.change_chunks += 1;
            tally.charge(header)?;
            let inflated = tally.inflate(body)?;
            check_change(&inflated, tally)
        }
        other => Err(SyncCheckError::UnsupportedChunk(other)),
    }
}

/// A change chunk body (automerge `storage/change.rs` `parse_following_header`).
fn check_change(body: &[u8], tally: &mut Tally<'_>) -> Result<()> {
    let limits = tally.limits;
    let mut c = Cursor::new(body);
    hashes(&mut c, "change deps", limits.max_heads)?;
    c.prefixed("change actor")?;
    c.uleb("change seq")?;
    c.uleb("change start op")?;
    c.skip_leb("change time")?;
    c.prefixed("change message")?;
    for _ in 0..c.count("change actors", limits.max_actors, 1)? {
        c.prefixed("change actor")?;
    }
    let columns = Columns::read(&mut c, limits)?;
    // After the column data come the change's extra bytes, kept as they are.
    let data = c.take(columns.total, "change columns")?;
    let mut rows = Rows::counting(ACTION_COLUMN);
    columns.each(data, |spec, bytes| {
        if spec & COLUMN_DEFLATE != 0 {
            return Err(SyncCheckError::CompressedChangeColumn { column: spec });
        }
        rows.add(spec, count_rows(spec, bytes)?);
        Ok(())
    })?;
    tally.add_ops(rows.counted)?;
    rows.check(limits)
}

/// A document chunk body (automerge `storage/document.rs` `Document::parse`): actors, heads,
/// change and op column metadata, change and op column data, then optionally one head
/// index per head. Compressed columns are inflated within the budget.
fn check_document(body: &[u8], tally: &mut Tally<'_>) -> Result<()> {
    let limits = tally.limits;
    let mut c = Cursor::new(body);
    for _ in 0..c.count("document actors", limits.max_actors, 1)? {
        c.prefixed("document actor")?;
    }
    let heads = hashes(&mut c, "document heads", limits.max_heads)?;
    let change_columns = Columns::read(&mut c, limits)?;
    let op_columns = Columns::read(&mut c, limits)?;
    let change_data = c.take(change_columns.total, "document change columns")?;
    let op_data = c.take(op_columns.total, "document op columns")?;
    if !c.is_empty() {
        for _ in 0..heads {
            c.uleb("document head index")?;
        }
        if !c.is_empty() {
            return Err(c.trailing("document head indexes"));
        }
    }
    // Columns are in ascending order (automerge refuses others), so the change count
    // (column 0x01) is known before the dependency columns (0x40, 0x43).
    let mut changes = Rows::counting(CHANGE_ACTOR_COLUMN);
    change_columns.each(change_data, |spec, raw| {
        let bytes = tally.inflated(spec, raw)?;
        let rows = count_rows(spec, &bytes)?;
        match spec & !COLUMN_DEFLATE {
            DEPS_COUNT_COLUMN if rows > changes.counted => {
                let limit = changes.counted;
                return Err(too_many("document dependency counts", rows, limit));
            }
            DEPS_INDEX_COLUMN => check_dependencies(&bytes, changes.counted)?,
            _ => {}
        }
        changes.add(spec, rows);
        Ok(())
    })?;
    tally.document_changes = tally.document_changes.saturating_add(changes.counted);
    let limit = limits.max_document_changes;
    if tally.document_changes > limit {
        return Err(too_many("document changes", tally.document_changes, limit));
    }
    changes.check(limits)?;
    let mut ops = Rows::counting(ACTION_COLUMN);
    op_columns.each(op_data, |spec, raw| {
        ops.add(spec, count_rows(spec, &tally.inflated(spec, raw)?)?);
        Ok(())
    })?;
    tally.add_ops(ops.counted)?;
    ops.check(limits)
}

/// Every dependency index (a delta-encoded column) must name one of the document's
/// changes: automerge indexes its change list with them unchecked.
fn check_dependencies(bytes: &[u8], changes: u64) -> Result<()> {
    let mut c = Cursor::new(bytes);
    let mut index = 0_i128;
    let mut step = |delta: i64, times: u64| {
        let first = index + i128::from(delta);
        index += i128::from(delta) * i128::from(times);
        // Values move in one direction within a run, so its ends bound it.
        match [first, index]
            .into_iter()
            .find(|i| !(0..i128::from(changes)).contains(i))
        {
            Some(index) => Err(SyncCheckError::BadDependency { index, changes }),
            None => Ok(()),
        }
    };
    while !c.is_empty() {
        match c.sleb("run length")? {
            0 => drop(c.uleb("null run")?),
            run if run > 0 => step(c.sleb("dependency")?, run.unsigned_abs())?,
            run => {
                for _ in 0..run.unsigned_abs() {
                    step(c.sleb("dependency")?, 1)?;
                }
            }
        }
    }
    Ok(())
}

/// Rows of one chunk section: those of the column that counts what the section holds
/// (changes or operations; automerge omits empty columns), and the longest column.
struct Rows {
    id: u32,
    counted: u64,
    longest: Option<(u32, u64)>,
}

impl Rows {
    fn counting(id: u32) -> Self {
        let (counted, longest) = (0, None);
        Rows {
            id,
            counted,
            longest,
        }
    }

    fn add(&mut self, spec: u32, rows: u64) {
        if spec & !COLUMN_DEFLATE == self.id {
            self.counted = rows;
        }
        if self.longest.is_none_or(|(_, r)| rows > r) {
            self.longest = Some((spec, rows));
        }
    }

    /// No column may declare more rows than `max_ops`: automerge iterates every row.
    fn check(&self, limits: &SyncLimits) -> Result<()> {
        match self.longest {
            Some((column, rows)) if rows > limits.max_ops => {
                let limit = limits.max_ops;
                Err(SyncCheckError::ColumnTooLong {
                    column,
                    rows,
                    limit,
                })
            }
            _ => Ok(()),
        }
    }
}

/// Rows declared by one uncompressed column, from run lengths only.
///
/// Encodings by column type (automerge `columnar/encoding`, hexane): booleans are
/// alternating uLEB run lengths; raw values have no rows of their own; every other type is
/// RLE: a signed LEB `n`, then one value repeated `n` times (`n > 0`), `-n` literal values
/// (`n < 0`), or a uLEB count of nulls (`n == 0`). A value is a LEB128 number, or for
/// strings a uLEB length and that many bytes.
fn count_rows(spec: u32, bytes: &[u8]) -> Result<u64> {
    let mut c = Cursor::new(bytes);
    let mut rows = 0_u64;
    let kind = spec & COLUMN_TYPE;
    let skip_value = |c: &mut Cursor<'_>| match kind {
        TYPE_STRING => c.prefixed("string value").map(drop),
        _ => c.skip_leb("column value"),
    };
    while !c.is_empty() && kind != TYPE_VALUE {
        let run = match kind {
            TYPE_BOOLEAN => c.uleb("boolean run")?,
            _ => match c.sleb("run length")? {
                0 => c.uleb("null run")?,
                run if run > 0 => skip_value(&mut c).map(|()| run.unsigned_abs())?,
                run => {
                    // Each literal is at least one byte: the input bounds this loop.
                    for _ in 0..run.unsigned_abs() {
                        skip_value(&mut c)?;
                    }
                    run.unsigned_abs()
                }
            },
        };
        rows = rows.saturating_add(run);
    }
    Ok(rows)
}

/// Column metadata of one chunk section: a uLEB count, then (uLEB spec, uLEB length) pairs;
/// the columns' bytes follow back to back. Walked twice rather than collected.
struct Columns<'a> {
    meta: Cursor<'a>,
    count: u64,
    total: u64,
}

impl<'a> Columns<'a> {
    fn read(c: &mut Cursor<'a>, limits: &SyncLimits) -> Result<Self> {
        let count = c.count("columns", limits.max_columns, 2)?;
        let meta = *c;
        let mut total = 0_u64;
        for _ in 0..count {
            c.uleb_u32("column spec")?;
            let len = c.uleb("column length")?;
            let field = "column length";
            total = total
                .checked_add(len)
                .ok_or(SyncCheckError::Truncated { field })?;
        }
        Ok(Columns { meta, count, total })
    }

    fn each(&self, data: &'a [u8], mut f: impl FnMut(u32, &'a [u8]) -> Result<()>) -> Result<()> {
        let (mut meta, mut data) = (self.meta, Cursor::new(data));
        for _ in 0..self.count {
            let spec = meta.uleb_u32("column spec")?;
            let len = meta.uleb("column length")?;
            f(spec, data.take(len, "column data")?)?;
        }
        Ok(())
    }
}

/// Running totals over one message.
struct Tally<'l> {
    limits: &'l SyncLimits,
    chunks: u64,
    change_chunks: u64,
    document_changes: u64,
    ops: u64,
    expanded: u64,
}

impl Tally<'_> {
    fn add_ops(&mut self, ops: u64) -> Result<()> {
        self.ops = self.ops.saturating_add(ops);
        let limit = self.limits.max_ops;
        match self.ops > limit {
            true => Err(SyncCheckError::TooManyOps {
                ops: self.ops,
                limit,
            }),
            false => Ok(()),
        }
    }

    fn charge(&mut self, bytes: u64) -> Result<()> {
        self.expanded = self.expanded.saturating_add(bytes);
        let limit = self.limits.max_expanded_bytes;
        match self.expanded > limit {
            true => Err(SyncCheckError::TooLarge {
                expanded: self.expanded,
                limit,
            }),
            false => Ok(()),
        }
    }

    /// Inflates a DEFLATE stream, reading at most one byte more than the budget left, so a
    /// bomb costs no more than the limit; the buffer grows only with what is produced.
    fn inflate(&mut self, compressed: &[u8]) -> Result<Vec<u8>> {
        let room = self.limits.max_expanded_bytes.saturating_sub(self.expanded);
        let mut out = Vec::new();
        DeflateDecoder::new(compressed)
            .take(room.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|_| SyncCheckError::Inflate)?;
        self.charge(out.len() as u64)?;
        Ok(out)
    }

    /// A document column's bytes, inflated if compressed; its compressed bytes, charged
    /// with the chunk, are swapped for the inflated size.
    fn inflated<'a>(&mut self, spec: u32, raw: &'a [u8]) -> Result<Cow<'a, [u8]>> {
        if spec & COLUMN_DEFLATE == 0 {
            return Ok(Cow::Borrowed(raw));
        }
        self.expanded = self.expanded.saturating_sub(raw.len() as u64);
        self.inflate(raw).map(Cow::Owned)
    }
}

fn too_many(field: &'static str, count: u64, limit: u64) -> SyncCheckError {
    SyncCheckError::TooMany {
        field,
        count,
        limit,
    }
}

/// Reads a count of 32-byte hashes and skips them.
fn hashes(c: &mut Cursor<'_>, field: &'static str, limit: u64) -> Result<u64> {
    let n = c.count(field, limit, 32)?;
    c.take(n * 32, field)?;
    Ok(n)
}

#[cfg(test)]
mod tests;
