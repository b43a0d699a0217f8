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
//! What it does not do: verify checksums, hashes, UTF-8 or the values inside columns.
//! Automerge checks those itself and fails with an error, not a panic or an unbounded
//! allocation, so a message that passes here may still be refused by automerge.
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

use std::io::Read;

use flate2::bufread::DeflateDecoder;
use thiserror::Error;

/// Caps on what one sync message may declare. Every count, length and expansion that
/// automerge would loop over or allocate for is checked against one of these fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncLimits {
    /// Hashes in a list of heads: the message's `heads`, a change's dependencies and a
    /// document chunk's heads. Default 1,024: heads are the unmerged tips of a document's
    /// history, one per device that edited concurrently since anyone merged; each costs a
    /// lookup in the change graph.
    pub max_heads: u64,
    /// Hashes the sender asks for by hash. Default 1,024: automerge asks only for the missing
    /// dependencies of the heads it was told about, a list as short as the heads.
    pub max_need: u64,
    /// `have` entries. Default 8: automerge writes at most one, and each one costs a Bloom
    /// lookup per change the sender lacks when the reply is generated.
    pub max_haves: u64,
    /// Hashes in one `have`'s `last_sync`. Default 1,024: these are the heads both peers
    /// shared last time, so the same bound as `max_heads`.
    pub max_last_sync: u64,
    /// Bloom filter probes per hash. Default 32: automerge writes 7; automerge allocates and
    /// loops this many times for every change it considers sending.
    pub max_bloom_probes: u32,
    /// Bloom filter bits per entry; 0 is always refused (it makes automerge divide by zero).
    /// Default 64: automerge writes 10.
    pub max_bloom_bits_per_entry: u32,
    /// Chunks in the change list (change, compressed change and document chunks). Default
    /// 100,000: a peer catching up on a document sends every missing change in one message,
    /// but a V2 peer receives the whole document in one chunk once it lacks a third of it;
    /// automerge keeps a parsed copy of every chunk while applying them, so tiny chunks cost
    /// about 20 times their wire size.
    pub max_changes: u64,
    /// Changes recorded inside document chunks, summed over the message. Default 1,000,000:
    /// a change normally holds at least one operation, so the same bound as `max_ops`;
    /// automerge materialises several integers per change when loading a document.
    pub max_document_changes: u64,
    /// Actor ids declared by one chunk. Default 65,536: every device session that ever
    /// edited a document is an actor in it; automerge allocates an id and index entry each.
    pub max_actors: u64,
    /// Columns declared by one section of a chunk. Default 64: automerge writes at most 16
    /// op columns and 9 change columns; the rest leaves room for columns added later.
    pub max_columns: u64,
    /// Bytes in the trailing flags section. Default 64: automerge writes 2, and parses the
    /// section byte by byte.
    pub max_flag_bytes: u64,
    /// Bytes of all chunks after inflating DEFLATE-compressed chunks and columns. Default
    /// 16 MiB: the same as the largest document the engine accepts and about one frame, so
    /// compression cannot make a message bigger than an uncompressed one could be.
    pub max_expanded_bytes: u64,
    /// Operations in the whole message, counted from the run lengths of each chunk's action
    /// column; also the most rows any single column may declare. Default 1,000,000: applying
    /// costs about 90 bytes and 1.6 µs per operation in automerge 0.12 (a 10-million-character
    /// text took 888 MB and 16 s), so the worst message costs about 90 MB and 2 s.
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
    /// Changes: one per change chunk plus those recorded in document chunks.
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
    /// A LEB128 number is overlong, wider than 64 bits or wider than its field (automerge
    /// refuses these too).
    #[error("malformed number in {field}")]
    BadNumber {
        /// The field holding the number.
        field: &'static str,
    },
    /// The first byte is neither 0x42 (V1) nor 0x43 (V2): not an automerge sync message.
    #[error("unknown sync message version byte {0:#04x}")]
    UnknownVersion(u8),
    /// A count exceeds its [`SyncLimits`] field.
    #[error("{field}: {count} is over the limit of {limit}")]
    TooMany {
        /// What was counted (`heads`, `need`, `haves`, `changes`, ...).
        field: &'static str,
        /// The count seen (declared or accumulated).
        count: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// A Bloom filter parameter is 0 or above its limit (`max_bloom_bits_per_entry`,
    /// `max_bloom_probes`).
    #[error("Bloom filter {field} is {value}, allowed 1..={limit}")]
    BadBloom {
        /// `bits per entry` or `probes`.
        field: &'static str,
        /// The value declared.
        value: u64,
        /// The largest allowed.
        limit: u64,
    },
    /// A Bloom filter's bit array is not the length its entry count and bits per entry imply.
    #[error("Bloom filter has {actual} bytes of bits, its header implies {expected}")]
    BloomSize {
        /// Bytes implied by the header.
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
    /// Chunks expand past `max_expanded_bytes`; inflating stopped one byte past the limit.
    #[error("chunks expand to at least {expanded} bytes, over the limit of {limit}")]
    TooLarge {
        /// Bytes counted when checking stopped.
        expanded: u64,
        /// `max_expanded_bytes`.
        limit: u64,
    },
    /// The message holds more operations than `max_ops`.
    #[error("message holds at least {ops} operations, over the limit of {limit}")]
    TooManyOps {
        /// Operations counted when checking stopped.
        ops: u64,
        /// `max_ops`.
        limit: u64,
    },
    /// One column declares more rows than `max_ops` (for example a run of a billion nulls,
    /// which automerge would iterate).
    #[error("column {column:#x} declares {rows} rows, over the limit of {limit}")]
    ColumnTooLong {
        /// The column specification (id, type and compression bit).
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
    /// Bytes follow where the format has none (after the flags, a Bloom filter's bits or a
    /// document's head indexes). Automerge ignores some of these; no writer produces them.
    #[error("{count} unexpected bytes after {field}")]
    TrailingBytes {
        /// What they follow.
        field: &'static str,
        /// How many.
        count: u64,
    },
}

type Result<T, E = SyncCheckError> = std::result::Result<T, E>;

/// First byte of a V1 sync message.
const MESSAGE_V1: u8 = 0x42;
/// First byte of a V2 sync message (changes may be a whole document).
const MESSAGE_V2: u8 = 0x43;
/// Every automerge storage chunk starts with these (automerge `storage.rs` `MAGIC_BYTES`).
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
/// The action column (id 4, unsigned integer): one row per operation, in change chunks
/// and document chunks alike.
const ACTION_COLUMN: u32 = 0x42;
/// A document's change actor column (id 0, actor): one row per change.
const CHANGE_ACTOR_COLUMN: u32 = 0x01;
/// Automerge's Bloom modulo is `8 * bits.len() as u32`; more bytes than this wrap it to 0.
const MAX_BLOOM_BYTES: u64 = (u32::MAX / 8) as u64;

/// Checks `data`, the bytes of one automerge sync message, against `limits` without
/// handing it to automerge. Call it before `automerge::sync::Message::decode`; on `Err` the
/// message must not reach automerge.
pub fn check_sync_message(data: &[u8], limits: &SyncLimits) -> Result<SyncSummary> {
    let mut c = Cursor::new(data);
    let version = c.byte("version")?;
    if version != MESSAGE_V1 && version != MESSAGE_V2 {
        return Err(SyncCheckError::UnknownVersion(version));
    }
    hashes(&mut c, "heads", limits.max_heads)?;
    hashes(&mut c, "need", limits.max_need)?;
    // A `have` is at least two bytes: an empty `last_sync` and an empty filter.
    let haves = c.count("haves", limits.max_haves, 2)?;
    for _ in 0..haves {
        hashes(&mut c, "last_sync", limits.max_last_sync)?;
        check_bloom(c.prefixed("bloom")?, limits)?;
    }
    let mut tally = Tally::new(limits);
    let entries = c.count("changes", limits.max_changes, 1)?;
    for _ in 0..entries {
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
        changes: usize::try_from(tally.change_chunks + tally.document_changes)
            .unwrap_or(usize::MAX),
        ops: tally.ops,
        expanded_bytes: tally.expanded,
    })
}

/// Mirrors automerge's `BloomFilter::parse` and refuses what would make `get_probes`
/// divide by zero or allocate by a declared number.
fn check_bloom(bytes: &[u8], limits: &SyncLimits) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mut c = Cursor::new(bytes);
    let entries = c.uleb_u32("bloom entries")?;
    let bits_per_entry = c.uleb_u32("bloom bits per entry")?;
    let probes = c.uleb_u32("bloom probes")?;
    // With zero entries automerge never probes the filter, so these are harmless there,
    // but no writer produces them: one rule for all filters.
    if !(1..=limits.max_bloom_bits_per_entry).contains(&bits_per_entry) {
        return Err(SyncCheckError::BadBloom {
            field: "bits per entry",
            value: bits_per_entry.into(),
            limit: limits.max_bloom_bits_per_entry.into(),
        });
    }
    if !(1..=limits.max_bloom_probes).contains(&probes) {
        return Err(SyncCheckError::BadBloom {
            field: "probes",
            value: probes.into(),
            limit: limits.max_bloom_probes.into(),
        });
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
    tally.add_chunk()?;
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
    let actors = c.count("change actors", limits.max_actors, 1)?;
    for _ in 0..actors {
        c.prefixed("change actor")?;
    }
    let columns = Columns::read(&mut c, limits)?;
    let data = c.take(columns.total, "change columns")?;
    // What follows is the change's extra bytes, which automerge keeps as they are.
    let mut rows = Rows::counting(ACTION_COLUMN);
    columns.each(data, |spec, bytes| {
        if spec & COLUMN_DEFLATE != 0 {
            return Err(SyncCheckError::CompressedChangeColumn { column: spec });
        }
        rows.add(spec, count_rows(spec, bytes)?);
        Ok(())
    })?;
    tally.add_ops(rows.rows_of_id)?;
    rows.check(limits)
}

/// A document chunk body (automerge `storage/document.rs` `Document::parse`): actors,
/// heads, change column metadata, op column metadata, change data, op data, and optionally
/// one head index per head. Compressed columns are inflated within the budget and every
/// column's rows are counted from its run lengths.
fn check_document(body: &[u8], tally: &mut Tally<'_>) -> Result<()> {
    let limits = tally.limits;
    let mut c = Cursor::new(body);
    let actors = c.count("document actors", limits.max_actors, 1)?;
    for _ in 0..actors {
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
    let mut changes = Rows::counting(CHANGE_ACTOR_COLUMN);
    change_columns.each(change_data, |spec, bytes| {
        changes.add(spec, tally.column_rows(spec, bytes)?);
        Ok(())
    })?;
    tally.add_document_changes(changes.rows_of_id)?;
    changes.check(limits)?;
    let mut ops = Rows::counting(ACTION_COLUMN);
    op_columns.each(op_data, |spec, bytes| {
        ops.add(spec, tally.column_rows(spec, bytes)?);
        Ok(())
    })?;
    tally.add_ops(ops.rows_of_id)?;
    ops.check(limits)
}

/// Rows per column of one chunk section: those of the column that counts what the section
/// holds (changes or operations), and the longest column.
struct Rows {
    id: u32,
    rows_of_id: u64,
    longest: Option<(u32, u64)>,
}

impl Rows {
    fn counting(id: u32) -> Self {
        Rows {
            id,
            rows_of_id: 0, // automerge omits empty columns
            longest: None,
        }
    }

    fn add(&mut self, spec: u32, rows: u64) {
        if spec & !COLUMN_DEFLATE == self.id {
            self.rows_of_id = rows;
        }
        if self.longest.is_none_or(|(_, r)| rows > r) {
            self.longest = Some((spec, rows));
        }
    }

    /// No column may declare more rows than `max_ops`: automerge iterates every row.
    fn check(&self, limits: &SyncLimits) -> Result<()> {
        match self.longest {
            Some((column, rows)) if rows > limits.max_ops => Err(SyncCheckError::ColumnTooLong {
                column,
                rows,
                limit: limits.max_ops,
            }),
            _ => Ok(()),
        }
    }
}

/// Rows declared by one uncompressed column, from run lengths only (no value is kept).
///
/// Encodings by column type (automerge `columnar/encoding`, hexane): booleans are alternating
/// uLEB run lengths; raw value bytes have no rows of their own; every other type is RLE: a
/// signed LEB `n` then one value repeated `n` times (`n > 0`), `-n` literal values
/// (`n < 0`), or a uLEB count of nulls (`n == 0`). Values are LEB128 numbers, or for strings
/// a uLEB length and that many bytes.
fn count_rows(spec: u32, bytes: &[u8]) -> Result<u64> {
    let mut c = Cursor::new(bytes);
    let mut rows = 0_u64;
    match spec & COLUMN_TYPE {
        TYPE_VALUE => {}
        TYPE_BOOLEAN => {
            while !c.is_empty() {
                rows = rows.saturating_add(c.uleb("boolean run")?);
            }
        }
        kind => {
            let skip_value = |c: &mut Cursor<'_>| {
                if kind == TYPE_STRING {
                    c.prefixed("string value").map(drop)
                } else {
                    c.skip_leb("column value")
                }
            };
            while !c.is_empty() {
                let run = c.sleb("run length")?;
                if run > 0 {
                    skip_value(&mut c)?;
                    rows = rows.saturating_add(run.unsigned_abs());
                } else if run < 0 {
                    // Each literal is at least one byte, so this loop is bounded by the input.
                    for _ in 0..run.unsigned_abs() {
                        skip_value(&mut c)?;
                    }
                    rows = rows.saturating_add(run.unsigned_abs());
                } else {
                    rows = rows.saturating_add(c.uleb("null run")?);
                }
            }
        }
    }
    Ok(rows)
}

/// Column metadata of one chunk section: a uLEB count, then (uLEB spec, uLEB length) pairs;
/// the columns' bytes follow the metadata back to back. Read twice instead of collected.
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
            total = total.checked_add(len).ok_or(SyncCheckError::Truncated {
                field: "column length",
            })?;
        }
        Ok(Columns { meta, count, total })
    }

    fn each(&self, data: &'a [u8], mut f: impl FnMut(u32, &'a [u8]) -> Result<()>) -> Result<()> {
        let mut meta = self.meta;
        let mut data = Cursor::new(data);
        for _ in 0..self.count {
            let spec = meta.uleb_u32("column spec")?;
            let len = meta.uleb("column length")?;
            f(spec, data.take(len, "column data")?)?;
        }
        Ok(())
    }
}

/// Running totals over one message, checked against the limits as they grow.
struct Tally<'l> {
    limits: &'l SyncLimits,
    chunks: u64,
    change_chunks: u64,
    document_changes: u64,
    ops: u64,
    expanded: u64,
}

impl<'l> Tally<'l> {
    fn new(limits: &'l SyncLimits) -> Self {
        Tally {
            limits,
            chunks: 0,
            change_chunks: 0,
            document_changes: 0,
            ops: 0,
            expanded: 0,
        }
    }

    fn add_chunk(&mut self) -> Result<()> {
        self.chunks += 1;
        if self.chunks > self.limits.max_changes {
            return Err(too_many("changes", self.chunks, self.limits.max_changes));
        }
        Ok(())
    }

    fn add_document_changes(&mut self, changes: u64) -> Result<()> {
        self.document_changes = self.document_changes.saturating_add(changes);
        let limit = self.limits.max_document_changes;
        if self.document_changes > limit {
            return Err(too_many("document changes", self.document_changes, limit));
        }
        Ok(())
    }

    fn add_ops(&mut self, ops: u64) -> Result<()> {
        self.ops = self.ops.saturating_add(ops);
        if self.ops > self.limits.max_ops {
            return Err(SyncCheckError::TooManyOps {
                ops: self.ops,
                limit: self.limits.max_ops,
            });
        }
        Ok(())
    }

    fn charge(&mut self, bytes: u64) -> Result<()> {
        self.expanded = self.expanded.saturating_add(bytes);
        if self.expanded > self.limits.max_expanded_bytes {
            return Err(SyncCheckError::TooLarge {
                expanded: self.expanded,
                limit: self.limits.max_expanded_bytes,
            });
        }
        Ok(())
    }

    /// Inflates a DEFLATE stream, reading at most one byte more than the budget left, so a
    /// bomb costs no more than the limit; the buffer grows with what is actually produced.
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

    /// Rows of a document column, inflating it first if compressed. Its compressed bytes
    /// were charged with the chunk; they are swapped for the inflated size.
    fn column_rows(&mut self, spec: u32, bytes: &[u8]) -> Result<u64> {
        if spec & COLUMN_DEFLATE == 0 {
            return count_rows(spec, bytes);
        }
        self.expanded = self.expanded.saturating_sub(bytes.len() as u64);
        let inflated = self.inflate(bytes)?;
        count_rows(spec, &inflated)
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

/// A zero-copy reader over untrusted bytes; every read checks the bytes are there.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    fn is_empty(&self) -> bool {
        self.pos == self.bytes.len()
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn trailing(&self, field: &'static str) -> SyncCheckError {
        SyncCheckError::TrailingBytes {
            field,
            count: self.remaining(),
        }
    }

    fn take(&mut self, n: u64, field: &'static str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(SyncCheckError::Truncated { field });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn byte(&mut self, field: &'static str) -> Result<u8> {
        Ok(self.take(1, field)?[0])
    }

    /// A uLEB length, then that many bytes.
    fn prefixed(&mut self, field: &'static str) -> Result<&'a [u8]> {
        let n = self.uleb(field)?;
        self.take(n, field)
    }

    /// A uLEB count checked against `limit`, and against the bytes left given that each
    /// item takes at least `min_bytes`, before anyone loops over it.
    fn count(&mut self, field: &'static str, limit: u64, min_bytes: u64) -> Result<u64> {
        let n = self.uleb(field)?;
        if n > limit {
            return Err(too_many(field, n, limit));
        }
        if n.saturating_mul(min_bytes) > self.remaining() {
            return Err(SyncCheckError::Truncated { field });
        }
        Ok(n)
    }

    /// Unsigned LEB128 as automerge reads it (`parse/leb128.rs`): at most 64 bits, and no
    /// redundant trailing zero byte.
    fn uleb(&mut self, field: &'static str) -> Result<u64> {
        let mut value = 0_u64;
        for i in 0..10 {
            let byte = self.byte(field)?;
            let low = u64::from(byte & 0x7f);
            if i == 9 && low > 1 {
                break;
            }
            value |= low << (7 * i);
            if byte & 0x80 == 0 {
                if i > 0 && byte == 0 {
                    break;
                }
                return Ok(value);
            }
        }
        Err(SyncCheckError::BadNumber { field })
    }

    fn uleb_u32(&mut self, field: &'static str) -> Result<u32> {
        u32::try_from(self.uleb(field)?).map_err(|_| SyncCheckError::BadNumber { field })
    }

    /// Signed LEB128 (run lengths), at most ten bytes.
    fn sleb(&mut self, field: &'static str) -> Result<i64> {
        let mut value = 0_i64;
        for i in 0..10 {
            let byte = self.byte(field)?;
            value |= i64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if i < 9 && byte & 0x40 != 0 {
                    value |= -1_i64 << (7 * (i + 1));
                }
                return Ok(value);
            }
        }
        Err(SyncCheckError::BadNumber { field })
    }

    /// Skips one LEB128 number of either sign.
    fn skip_leb(&mut self, field: &'static str) -> Result<()> {
        for _ in 0..10 {
            if self.byte(field)? & 0x80 == 0 {
                return Ok(());
            }
        }
        Err(SyncCheckError::BadNumber { field })
    }
}

#[cfg(test)]
mod tests;
