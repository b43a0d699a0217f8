//! The relay's PostgreSQL store: several relays share one database (issue 13).
//!
//! [`PgStore`] implements [`Storage`] on one table of generic key-value rows:
//!
//! - `key bytea primary key`: the key parts, each followed by a 0x00 byte, so byte order
//!   is the order of the `Vec<String>` keys and a prefix is one byte range (a key part
//!   holding a NUL byte is refused);
//! - `doc text`: the first key part (the document id for the engine's keys);
//! - `data bytea`;
//! - `seq bigint`: from one sequence, new on every insert and on every update that changes
//!   the data, so `max(seq)` per document says whether a document moved
//!   ([`PgStore::document_versions`]).
//!
//! `put` and `delete` only buffer, and reads see the buffer laid over the table, as the
//! embedded store shows unflushed writes. `flush` commits the whole buffer in one
//! transaction that also sends one `pg_notify` hint per touched document on the
//! [`CHANNEL`] channel; a failed flush keeps the buffer, and the next flush retries it
//! (every statement is idempotent). A flush returns only after `COMMIT` returned.
//!
//! The [`Storage`] trait is synchronous and is called from plain threads and from inside
//! tokio tasks, so the store runs its database calls on a small runtime of its own and the
//! caller waits on a channel (never `block_on`, which panics inside a runtime). Every call
//! has a timeout ([`PgOptions::op_timeout`]): a hung database gives an error, not a hang.
//!
//! [`PgListener`] listens on [`CHANNEL`] and forwards other relays' hints. Hints are lossy
//! (dropped when the relay is behind, lost while the listener reconnects): a relay must
//! also sweep with [`PgStore::document_versions`].
//!
//! Both use TLS as the URL asks, as libpq reads it: `sslmode=disable`, `prefer` (the
//! default: TLS when the server offers it, without a certificate check), `require` (TLS,
//! no certificate check unless `sslrootcert` is given), `verify-ca` and `verify-full`
//! (the chain against `sslrootcert=FILE`, or the system's roots; `verify-full` also
//! checks the host name). Client certificates are not supported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cairn_sync::ids::StorageId;
use cairn_sync::store::{
    gone_keys, random_uuid, storage_id_key, RangeUpdate, SharedLock, Storage, StorageKey,
    StoreError,
};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio::sync::mpsc;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::AsyncMessage;

mod tls;

/// The notification channel every relay of a cluster listens on. A payload is
/// `document id`, a newline, and the id of the relay that wrote; or, for an ephemeral
/// message passed between relays, [`EPHEMERAL_PREFIX`], the message, a newline and the
/// relay's id.
pub const CHANNEL: &str = "cairn_changes";

/// How a notification carrying an ephemeral message starts (no record family is named
/// so: the first key part of a document hint is a document id or `cairn-membership`).
pub const EPHEMERAL_PREFIX: &str = "ephemeral\n";

/// The largest notification payload a relay sends: PostgreSQL refuses 8000 bytes or more.
/// A longer document hint is not sent (the sweep finds the change), nor a longer
/// ephemeral message.
pub const MAX_NOTIFY_PAYLOAD: usize = 7900;

/// The schema version this build creates and reads (the `cairn_schema` table).
pub const SCHEMA_VERSION: i32 = 1;

/// Unflushed bytes above which writes are refused (see
/// [`PgStore::set_max_unflushed_bytes`]).
pub const DEFAULT_MAX_UNFLUSHED_BYTES: usize = 256 * 1024 * 1024;

/// The upper bound of an empty prefix: no key reaches it, as UTF-8 never holds 0xFF.
const ALL_KEYS_END: &[u8] = &[0xFF];

/// First retry delay of the listener after a lost connection, doubled up to
/// [`LISTEN_BACKOFF_MAX`].
const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait of the listener between two connection attempts.
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long the listener waits for a connection or for `LISTEN` to answer.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA_SQL: &str = "
    SELECT pg_advisory_xact_lock(hashtextextended('cairn-schema', 0));
    CREATE TABLE IF NOT EXISTS cairn_schema (version integer NOT NULL);
    CREATE SEQUENCE IF NOT EXISTS cairn_kv_seq;
    CREATE TABLE IF NOT EXISTS cairn_kv (
        key bytea PRIMARY KEY,
        doc text NOT NULL,
        data bytea NOT NULL,
        seq bigint NOT NULL DEFAULT nextval('cairn_kv_seq')
    );
    CREATE INDEX IF NOT EXISTS cairn_kv_doc_seq ON cairn_kv (doc, seq);
    INSERT INTO cairn_schema (version) SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM cairn_schema);
";

const SQL_LOAD: &str = "SELECT data FROM cairn_kv WHERE key = $1";
const SQL_RANGE: &str = "SELECT key, data FROM cairn_kv WHERE key >= $1 AND key < $2 ORDER BY key";
// Every key of the range, with its data only when the caller does not know it.
const SQL_RANGE_EXCEPT: &str =
    "SELECT key, CASE WHEN key = ANY($3::bytea[]) THEN NULL ELSE data END \
     FROM cairn_kv WHERE key >= $1 AND key < $2 ORDER BY key";
const SQL_KEYS: &str = "SELECT key FROM cairn_kv WHERE key >= $1 AND key < $2 ORDER BY key";
// The update keeps `seq` when the data is the same, so a retried flush (or a relay
// writing a chunk another relay already wrote) does not make documents look changed.
const SQL_UPSERT: &str = "INSERT INTO cairn_kv (key, doc, data) \
     SELECT * FROM unnest($1::bytea[], $2::text[], $3::bytea[]) \
     ON CONFLICT (key) DO UPDATE SET data = excluded.data, doc = excluded.doc, seq = excluded.seq \
     WHERE cairn_kv.data IS DISTINCT FROM excluded.data";
const SQL_DELETE: &str = "DELETE FROM cairn_kv WHERE key = ANY($1::bytea[])";
const SQL_DELETE_RANGE: &str = "DELETE FROM cairn_kv WHERE key >= $1 AND key < $2";
const SQL_NOTIFY: &str = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p";
const SQL_VERSIONS: &str =
    "SELECT doc, max(seq) FROM cairn_kv WHERE doc = ANY($1::text[]) GROUP BY doc";
const SQL_SIZES_OF: &str = "SELECT doc, sum(octet_length(data))::bigint FROM cairn_kv \
     WHERE doc = ANY($1::text[]) GROUP BY doc";
const SQL_SIZES: &str =
    "SELECT doc, sum(octet_length(data))::bigint FROM cairn_kv GROUP BY doc ORDER BY doc";

/// How a [`PgStore`] uses the database.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Connections in the pool (each held [`Storage::lock_shared`] guard keeps one).
    pub pool_size: usize,
    /// The longest any one database call may take before it fails with
    /// [`io::ErrorKind::TimedOut`].
    pub op_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 8,
            op_timeout: Duration::from_secs(10),
        }
    }
}

/// One buffered write, not yet committed.
#[derive(Clone)]
enum Pending {
    Put {
        key: Vec<u8>,
        doc: String,
        data: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
        doc: String,
    },
    DeleteRange {
        start: Vec<u8>,
        end: Vec<u8>,
        doc: Option<String>,
    },
}

impl Pending {
    /// Whether the write changes a key in `[start, end)`.
    fn touches(&self, start: &[u8], end: &[u8]) -> bool {
        match self {
            Pending::Put { key, .. } | Pending::Delete { key, .. } => in_range(key, start, end),
            Pending::DeleteRange {
                start: s, end: e, ..
            } => s.as_slice() < end && start < e.as_slice(),
        }
    }

    /// What the write holds in memory, roughly.
    fn size(&self) -> usize {
        match self {
            Pending::Put { key, doc, data } => key.len() + doc.len() + data.len(),
            Pending::Delete { key, doc } => key.len() + doc.len(),
            Pending::DeleteRange { start, end, doc } => {
                start.len() + end.len() + doc.as_ref().map_or(0, String::len)
            }
        }
    }
}

/// One statement of a flush: runs of puts and of deletes become one statement each.
enum FlushStep {
    Upsert(BTreeMap<Vec<u8>, (String, Vec<u8>)>),
    Delete(BTreeSet<Vec<u8>>),
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// A PostgreSQL [`Storage`] shared by every relay of a cluster. Cheap to clone (one
/// pool, one buffer, one runtime behind an `Arc`).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The store's own runtime; `Some` until the store is dropped.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    relay_id: String,
    /// `user@host:port/db`, never the password.
    target: String,
    op_timeout: Duration,
    /// Writes not yet committed, in order. A flush removes the ones it committed only
    /// after `COMMIT` returned, so reads see them all along and a failed flush leaves
    /// them for the next.
    pending: Mutex<Vec<Pending>>,
    /// One flush at a time (two would commit the same writes twice).
    flushing: Mutex<()>,
    /// Bytes of keys and data in `pending`.
    pending_bytes: AtomicUsize,
    /// Above this many unflushed bytes, writes are refused until a flush succeeds.
    max_unflushed_bytes: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle may go away inside a tokio task, where dropping a runtime
        // panics; shutting down in the background never blocks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("relay_id", &self.inner.relay_id)
            .field("target", &self.inner.target)
            .field("op_timeout", &self.inner.op_timeout)
            .finish_non_exhaustive()
    }
}

type PgFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, tokio_postgres::Error>> + Send + 'a>>;

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`), creates the schema if
    /// it is missing (under an advisory lock, so relays starting together do not race)
    /// and checks its version. `relay_id` names this relay in its hints, so its own
    /// listener can ignore them. The URL's `sslmode` and `sslrootcert` choose TLS (see
    /// the module's documentation); a root file that cannot be read is an error here.
    pub fn connect(url: &str, relay_id: &str, options: PgOptions) -> Result<PgStore, StoreError> {
        let (mut config, tls) = parse_url(url)?;
        let op_timeout = options.op_timeout;
        config.connect_timeout(op_timeout);
        config.keepalives(true);
        if config.get_application_name().is_none() {
            config.application_name("cairn-relay");
        }
        let target = describe(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn-pg")
            .enable_all()
            .build()
            .map_err(|e| io_error(e.kind(), "start the PostgreSQL store's runtime"))?;
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                // A broken connection is closed and replaced on checkout; one that hung
                // is taken out of the pool by the call that timed out on it.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            // Two at least: a membership change holds one for the cluster-wide lock
            // while it reads and writes through another.
            .max_size(options.pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(op_timeout))
            .create_timeout(Some(op_timeout))
            .recycle_timeout(Some(op_timeout))
            .build()
            .map_err(|_| io_error(io::ErrorKind::Other, "build the PostgreSQL pool"))?;
        let store = PgStore {
            inner: Arc::new(Inner {
                handle: runtime.handle().clone(),
                runtime: Some(runtime),
                pool,
                relay_id: relay_id.to_owned(),
                target,
                op_timeout,
                pending: Mutex::new(Vec::new()),
                flushing: Mutex::new(()),
                pending_bytes: AtomicUsize::new(0),
                max_unflushed_bytes: AtomicUsize::new(DEFAULT_MAX_UNFLUSHED_BYTES),
            }),
        };
        let version = store.call("create the schema", |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                tx.batch_execute(SCHEMA_SQL).await?;
                let row = tx
                    .query_one("SELECT max(version) FROM cairn_schema", &[])
                    .await?;
                tx.commit().await?;
                Ok(row.get::<_, Option<i32>>(0))
            })
        })?;
        match version {
            Some(v) if v > SCHEMA_VERSION => Err(StoreError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the PostgreSQL schema has version {v}, this relay reads versions up to \
                     {SCHEMA_VERSION}: run a relay at least as new as the one that wrote it"
                ),
            ))),
            _ => {
                tracing::info!(target = %store.inner.target, relay_id = %store.inner.relay_id,
                    "PostgreSQL store connected");
                Ok(store)
            }
        }
    }

    /// The id this relay writes into its hints.
    pub fn relay_id(&self) -> &str {
        &self.inner.relay_id
    }

    /// The highest `seq` of each of `docs` (by first key part), in one query: a value
    /// that moved means another writer changed the document. A document with no rows is
    /// absent. Unflushed writes of this store are not counted.
    pub fn document_versions(&self, docs: &[String]) -> Result<HashMap<String, i64>, StoreError> {
        let docs = docs.to_vec();
        self.call("read document versions", move |c| {
            Box::pin(async move {
                let stmt = c.prepare_cached(SQL_VERSIONS).await?;
                let rows = c.query(&stmt, &[&docs]).await?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                    .collect())
            })
        })
    }

    /// Bytes stored per first key part (documents, and the relay's own records), in
    /// order.
    pub fn document_sizes(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.call("read document sizes", |c| {
            Box::pin(async move {
                let rows = c.query(SQL_SIZES, &[]).await?;
                Ok(rows.iter().map(doc_size).collect())
            })
        })
    }

    /// Sends `payloads` on [`CHANNEL`] in one statement, outside any transaction (for
    /// messages that are never stored: ephemeral ones). Each must be at most
    /// [`MAX_NOTIFY_PAYLOAD`] bytes.
    pub fn notify(&self, payloads: Vec<String>) -> Result<(), StoreError> {
        if payloads.is_empty() {
            return Ok(());
        }
        self.call("notify", move |c| {
            Box::pin(async move {
                let stmt = c.prepare_cached(SQL_NOTIFY).await?;
                c.execute(&stmt, &[&CHANNEL, &payloads]).await?;
                Ok(())
            })
        })
    }

    /// Bytes stored for each of `docs` (by first key part; 0 for one with no key left).
    pub fn sizes_of(&self, docs: &[String]) -> Result<Vec<(String, u64)>, StoreError> {
        let asked = docs.to_vec();
        let found: HashMap<String, u64> = self.call("read document sizes", move |c| {
            Box::pin(async move {
                let stmt = c.prepare_cached(SQL_SIZES_OF).await?;
                let rows = c.query(&stmt, &[&asked]).await?;
                Ok(rows.iter().map(doc_size).collect())
            })
        })?;
        Ok(docs
            .iter()
            .map(|d| (d.clone(), found.get(d).copied().unwrap_or(0)))
            .collect())
    }

    /// One round trip to the database within the timeout (for `/readyz`).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.call("ping", |c| {
            Box::pin(async move {
                c.simple_query("SELECT 1").await?;
                Ok(())
            })
        })
    }

    /// Sets how many bytes of writes may wait for a flush: while a flush keeps failing
    /// (the database is down), writes above this are refused with
    /// [`io::ErrorKind::OutOfMemory`] instead of growing the relay's memory without
    /// bound. Default: [`DEFAULT_MAX_UNFLUSHED_BYTES`].
    pub fn set_max_unflushed_bytes(&self, bytes: usize) {
        self.inner
            .max_unflushed_bytes
            .store(bytes, Ordering::Relaxed);
    }

    /// Adds a write to the buffer, unless the buffer is full.
    fn buffer(&self, write: Pending) -> Result<(), StoreError> {
        let size = write.size();
        let mut pending = self.pending();
        let held = self.inner.pending_bytes.load(Ordering::Relaxed);
        let max = self.inner.max_unflushed_bytes.load(Ordering::Relaxed);
        // An empty buffer always takes one write, however large.
        if held > 0 && held + size > max {
            return Err(io_error(
                io::ErrorKind::OutOfMemory,
                &format!(
                    "PostgreSQL store: {held} bytes of writes wait for a flush; no more until \
                     one succeeds"
                ),
            ));
        }
        pending.push(write);
        self.inner.pending_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    fn pending(&self) -> MutexGuard<'_, Vec<Pending>> {
        // A poisoned lock means a panic while pushing or draining, which leaves the
        // vector itself whole.
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `fut` on the store's runtime and waits for it on this thread.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        // Every step inside has its own timeout; this one only guards against a step
        // that forgot one.
        let limit = self.inner.op_timeout * 3;
        self.inner.handle.spawn(async move {
            let result = match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(io_error(
                    io::ErrorKind::TimedOut,
                    "PostgreSQL call timed out",
                )),
            };
            let _ = tx.send(result);
        });
        // The task's sender goes away without an answer only if the runtime shut down.
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Checks out a connection and runs `f` on it within the timeout. A connection whose
    /// call timed out is closed, not returned to the pool: its session may still be
    /// running the statement (or hold a lock the statement was waiting for).
    fn call<T: Send + 'static>(
        &self,
        step: &'static str,
        f: impl for<'a> FnOnce(&'a mut Object) -> PgFuture<'a, T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = self.inner.pool.clone();
        let limit = self.inner.op_timeout;
        self.run(async move {
            let mut client = checkout(&pool, step).await?;
            match tokio::time::timeout(limit, f(&mut client)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(pg_error(step, &e)),
                Err(_) => {
                    drop(Object::take(client));
                    Err(timed_out(step, limit))
                }
            }
        })
    }

    /// Every key of `prefix`'s range, the buffer laid over the table, with its value when
    /// `values` is set and the key is not in `known` (`None` otherwise).
    fn read_range(
        &self,
        prefix: &[String],
        known: Option<&[StorageKey]>,
        values: bool,
    ) -> Result<Vec<KeyAndValue>, StoreError> {
        let (start, end) = prefix_range(prefix)?;
        let known: BTreeSet<Vec<u8>> = match known {
            Some(keys) => keys
                .iter()
                .map(|k| encode_key(k))
                .collect::<Result<_, _>>()?,
            None => BTreeSet::new(),
        };
        // The buffer is read before the table: a flush that commits in between is then
        // seen twice (harmless), never not at all.
        let pending: Vec<Pending> = self
            .pending()
            .iter()
            .filter(|p| p.touches(&start, &end))
            .cloned()
            .collect();
        let (s, e) = (start.clone(), end.clone());
        let except: Vec<Vec<u8>> = known.iter().cloned().collect();
        let has_known = !known.is_empty();
        let rows = self.call("read a key range", move |c| {
            Box::pin(async move {
                let rows = if !values {
                    let stmt = c.prepare_cached(SQL_KEYS).await?;
                    c.query(&stmt, &[&s, &e]).await?
                } else if has_known {
                    let stmt = c.prepare_cached(SQL_RANGE_EXCEPT).await?;
                    c.query(&stmt, &[&s, &e, &except]).await?
                } else {
                    let stmt = c.prepare_cached(SQL_RANGE).await?;
                    c.query(&stmt, &[&s, &e]).await?
                };
                Ok(rows
                    .iter()
                    .map(|r| {
                        let key: Vec<u8> = r.get(0);
                        let data: Option<Vec<u8>> = if values { r.get(1) } else { None };
                        (key, data)
                    })
                    .collect::<BTreeMap<_, _>>())
            })
        })?;
        let mut rows = rows;
        for p in &pending {
            match p {
                Pending::Put { key, data, .. } => {
                    if in_range(key, &start, &end) {
                        let data = (values && !known.contains(key)).then(|| data.clone());
                        rows.insert(key.clone(), data);
                    }
                }
                Pending::Delete { key, .. } => {
                    rows.remove(key);
                }
                Pending::DeleteRange { start, end, .. } => {
                    rows.retain(|k, _| !in_range(k, start, end));
                }
            }
        }
        rows.into_iter()
            .map(|(k, v)| Ok((decode_key(&k)?, v)))
            .collect()
    }
}

/// A `(doc, sum of bytes)` row of [`SQL_SIZES`] or [`SQL_SIZES_OF`].
fn doc_size(row: &tokio_postgres::Row) -> (String, u64) {
    let size: Option<i64> = row.get(1);
    (row.get(0), size.unwrap_or(0).max(0) as u64)
}

/// A key and, when it was read, its value.
type KeyAndValue = (StorageKey, Option<Vec<u8>>);

/// Releases a [`Storage::lock_shared`] lock when dropped.
struct PgLock {
    client: Option<Object>,
    name: String,
    handle: tokio::runtime::Handle,
    op_timeout: Duration,
}

impl Drop for PgLock {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        let limit = self.op_timeout;
        // Unlocking is a round trip; the guard may be dropped on any thread, so it runs
        // on the store's runtime. Should it fail, the connection is closed, which
        // releases the lock too.
        self.handle.spawn(async move {
            let unlocked = tokio::time::timeout(
                limit,
                client.execute(
                    "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                    &[&name],
                ),
            )
            .await;
            if !matches!(unlocked, Ok(Ok(_))) {
                drop(Object::take(client));
            }
        });
    }
}

impl Storage for PgStore {
    fn load(&self, key: &[String]) -> Result<Option<Vec<u8>>, StoreError> {
        let k = encode_key(key)?;
        {
            let pending = self.pending();
            for p in pending.iter().rev() {
                match p {
                    Pending::Put { key, data, .. } if *key == k => return Ok(Some(data.clone())),
                    Pending::Delete { key, .. } if *key == k => return Ok(None),
                    Pending::DeleteRange { start, end, .. } if in_range(&k, start, end) => {
                        return Ok(None)
                    }
                    _ => {}
                }
            }
        }
        self.call("read a key", move |c| {
            Box::pin(async move {
                let stmt = c.prepare_cached(SQL_LOAD).await?;
                let row = c.query_opt(&stmt, &[&k]).await?;
                Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
            })
        })
    }

    fn load_range(&self, prefix: &[String]) -> Result<Vec<(StorageKey, Vec<u8>)>, StoreError> {
        Ok(self
            .read_range(prefix, None, true)?
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect())
    }

    fn load_range_except(
        &self,
        prefix: &[String],
        known: &[StorageKey],
    ) -> Result<RangeUpdate, StoreError> {
        let rows = self.read_range(prefix, Some(known), true)?;
        let present: BTreeSet<&StorageKey> = rows.iter().map(|(k, _)| k).collect();
        let gone = gone_keys(prefix, known, &present);
        let added = rows
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        Ok(RangeUpdate { added, gone })
    }

    fn list_keys(&self, prefix: &[String]) -> Result<Vec<StorageKey>, StoreError> {
        Ok(self
            .read_range(prefix, None, false)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    fn put(&self, key: &[String], data: &[u8]) -> Result<(), StoreError> {
        let k = encode_key(key)?;
        self.buffer(Pending::Put {
            key: k,
            doc: key.first().cloned().unwrap_or_default(),
            data: data.to_vec(),
        })
    }

    fn delete(&self, key: &[String]) -> Result<(), StoreError> {
        let k = encode_key(key)?;
        self.buffer(Pending::Delete {
            key: k,
            doc: key.first().cloned().unwrap_or_default(),
        })
    }

    fn delete_range(&self, prefix: &[String]) -> Result<(), StoreError> {
        let (start, end) = prefix_range(prefix)?;
        self.buffer(Pending::DeleteRange {
            start,
            end,
            doc: prefix.first().cloned(),
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        let _one = self
            .inner
            .flushing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let batch = self.pending().clone();
        if batch.is_empty() {
            return Ok(());
        }
        let count = batch.len();
        let mut steps: Vec<FlushStep> = Vec::new();
        let mut docs: BTreeSet<String> = BTreeSet::new();
        for p in batch {
            match p {
                Pending::Put { key, doc, data } => {
                    docs.insert(doc.clone());
                    match steps.last_mut() {
                        // Later writes of a key replace earlier ones of the same run: one
                        // statement may not update a row twice.
                        Some(FlushStep::Upsert(rows)) => {
                            rows.insert(key, (doc, data));
                        }
                        _ => steps.push(FlushStep::Upsert(BTreeMap::from([(key, (doc, data))]))),
                    }
                }
                Pending::Delete { key, doc } => {
                    docs.insert(doc);
                    match steps.last_mut() {
                        Some(FlushStep::Delete(keys)) => {
                            keys.insert(key);
                        }
                        _ => steps.push(FlushStep::Delete(BTreeSet::from([key]))),
                    }
                }
                Pending::DeleteRange { start, end, doc } => {
                    docs.extend(doc);
                    steps.push(FlushStep::DeleteRange(start, end));
                }
            }
        }
        let relay_id = &self.inner.relay_id;
        let hints: Vec<String> = docs
            .into_iter()
            .map(|doc| format!("{doc}\n{relay_id}"))
            .filter(|p| p.len() <= MAX_NOTIFY_PAYLOAD)
            .collect();
        self.call("flush", move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                for step in &steps {
                    match step {
                        FlushStep::Upsert(rows) => {
                            let mut keys = Vec::with_capacity(rows.len());
                            let mut docs = Vec::with_capacity(rows.len());
                            let mut data = Vec::with_capacity(rows.len());
                            for (k, (doc, d)) in rows {
                                keys.push(k.as_slice());
                                docs.push(doc.as_str());
                                data.push(d.as_slice());
                            }
                            let stmt = tx.prepare_cached(SQL_UPSERT).await?;
                            tx.execute(&stmt, &[&keys, &docs, &data]).await?;
                        }
                        FlushStep::Delete(keys) => {
                            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                            let stmt = tx.prepare_cached(SQL_DELETE).await?;
                            tx.execute(&stmt, &[&keys]).await?;
                        }
                        FlushStep::DeleteRange(start, end) => {
                            let stmt = tx.prepare_cached(SQL_DELETE_RANGE).await?;
                            tx.execute(&stmt, &[start, end]).await?;
                        }
                    }
                }
                if !hints.is_empty() {
                    let stmt = tx.prepare_cached(SQL_NOTIFY).await?;
                    tx.execute(&stmt, &[&CHANNEL, &hints]).await?;
                }
                tx.commit().await
            })
        })?;
        // Only what this flush committed leaves the buffer; writes made meanwhile stay.
        let freed: usize = self.pending().drain(..count).map(|p| p.size()).sum();
        self.inner.pending_bytes.fetch_sub(freed, Ordering::Relaxed);
        Ok(())
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn lock_shared(&self, name: &str) -> Result<Option<SharedLock>, StoreError> {
        let pool = self.inner.pool.clone();
        let limit = self.inner.op_timeout;
        let lock_name = name.to_owned();
        let client = self.run(async move {
            let client = checkout(&pool, "take a shared lock").await?;
            let locked = tokio::time::timeout(
                limit,
                client.execute(
                    "SELECT pg_advisory_lock(hashtextextended($1, 0))",
                    &[&lock_name],
                ),
            )
            .await;
            match locked {
                Ok(Ok(_)) => Ok(client),
                Ok(Err(e)) => Err(pg_error("take a shared lock", &e)),
                Err(_) => {
                    // The session may still get the lock later: closing it makes sure it
                    // never holds it.
                    drop(Object::take(client));
                    Err(timed_out("take a shared lock", limit))
                }
            }
        })?;
        Ok(Some(Box::new(PgLock {
            client: Some(client),
            name: name.to_owned(),
            handle: self.inner.handle.clone(),
            op_timeout: limit,
        })))
    }

    fn storage_id(&self) -> Result<StorageId, StoreError> {
        let key = storage_id_key();
        if let Some(bytes) = self.load(&key)? {
            if let Ok(s) = String::from_utf8(bytes) {
                return Ok(StorageId::from(s));
            }
        }
        // Relays starting together race here: the first insert wins and every relay
        // reads the winner's id.
        let doc = key.first().cloned().unwrap_or_default();
        let k = encode_key(&key)?;
        let fresh = random_uuid().to_string();
        let data = self.call("make the storage id", move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO cairn_kv (key, doc, data) VALUES ($1, $2, $3) \
                     ON CONFLICT (key) DO NOTHING",
                    &[&k, &doc, &fresh.as_bytes()],
                )
                .await?;
                let row = c.query_one(SQL_LOAD, &[&k]).await?;
                Ok(row.get::<_, Vec<u8>>(0))
            })
        })?;
        String::from_utf8(data)
            .map(StorageId::from)
            .map_err(|_| StoreError::Corrupt {
                detail: "the stored storage id is not text".to_owned(),
            })
    }
}

/// A hint from the listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hint {
    /// Another relay committed a change to this document (by first key part).
    Changed {
        /// The document id.
        doc: String,
    },
    /// The listener (re)connected and listens again: hints may have been lost while it
    /// was away, so every open document should be re-read.
    Reconnected,
    /// Another relay passed on an ephemeral message (what follows [`EPHEMERAL_PREFIX`],
    /// not yet decoded).
    Ephemeral {
        /// The encoded message.
        message: String,
    },
}

/// What a running [`PgListener`] reports (for metrics and `/readyz`).
#[derive(Debug, Default)]
pub struct ListenerStatus {
    connected: AtomicBool,
    dropped: AtomicU64,
    reconnects: AtomicU64,
}

impl ListenerStatus {
    /// Whether the listener is connected and listening now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    /// Hints dropped because the relay's channel was full (the sweep catches up).
    pub fn dropped_hints(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Successful `LISTEN`s, the first included.
    pub fn listens(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
}

/// Listens on [`CHANNEL`] and forwards other relays' hints; see [`PgListener::spawn`].
#[derive(Debug)]
pub struct PgListener {
    status: Arc<ListenerStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl PgListener {
    /// Starts the listener on the caller's tokio runtime: it connects to `url`, runs
    /// `LISTEN`, sends [`Hint::Reconnected`] after every successful `LISTEN` (the first
    /// included) and forwards each notification from another relay than `relay_id` as
    /// [`Hint::Changed`]. A full channel drops the hint and counts it: the listener always
    /// keeps reading, so a slow relay never fills PostgreSQL's notification queue. A lost
    /// connection is retried with backoff (0.2 s doubling to 5 s). The listener ends when
    /// `sender`'s receiver is dropped or on [`PgListener::stop`]; dropping this handle
    /// does not stop it. Must be called inside a tokio runtime.
    pub fn spawn(
        url: &str,
        relay_id: &str,
        sender: mpsc::Sender<Hint>,
    ) -> Result<PgListener, StoreError> {
        let (mut config, tls) = parse_url(url)?;
        config.connect_timeout(LISTEN_TIMEOUT);
        config.keepalives(true);
        if config.get_application_name().is_none() {
            config.application_name("cairn-relay-listen");
        }
        let status = Arc::new(ListenerStatus::default());
        let task = tokio::spawn(listen_loop(
            config,
            tls,
            relay_id.to_owned(),
            sender,
            status.clone(),
        ));
        Ok(PgListener { status, task })
    }

    /// The listener's counters, shareable with metrics.
    pub fn status(&self) -> Arc<ListenerStatus> {
        self.status.clone()
    }

    /// Whether the listener is connected and listening now.
    pub fn is_connected(&self) -> bool {
        self.status.is_connected()
    }

    /// Hints dropped because the relay's channel was full.
    pub fn dropped_hints(&self) -> u64 {
        self.status.dropped_hints()
    }

    /// Stops the listener (its connection closes).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Whether the listener's task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

async fn listen_loop(
    config: tokio_postgres::Config,
    tls: tls::RustlsConnect,
    relay_id: String,
    sender: mpsc::Sender<Hint>,
    status: Arc<ListenerStatus>,
) {
    let mut backoff = LISTEN_BACKOFF_MIN;
    loop {
        match listen_once(&config, &tls, &relay_id, &sender, &status).await {
            Ok(Session::ReceiverGone) => return,
            Ok(Session::Lost) => {
                backoff = LISTEN_BACKOFF_MIN;
                tracing::warn!("PostgreSQL listen connection lost; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff,
                "PostgreSQL listen connection failed"),
        }
        status.connected.store(false, Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = sender.closed() => return,
        }
        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
    }
}

/// How one listen session ended.
enum Session {
    /// The connection was lost after `LISTEN` succeeded.
    Lost,
    /// Nobody takes hints any more.
    ReceiverGone,
}

async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &tls::RustlsConnect,
    relay_id: &str,
    sender: &mpsc::Sender<Hint>,
    status: &ListenerStatus,
) -> Result<Session, StoreError> {
    let (client, mut connection) =
        tokio::time::timeout(LISTEN_TIMEOUT, config.connect(tls.clone()))
            .await
            .map_err(|_| timed_out("connect the listener", LISTEN_TIMEOUT))?
            .map_err(|e| pg_error("connect the listener", &e))?;
    // Reads every message of the connection, always: notifications are handed on with
    // `try_send` and never wait for the relay.
    let read = async {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let Some((doc, from)) = n.payload().rsplit_once('\n') else {
                        continue;
                    };
                    if from == relay_id {
                        continue;
                    }
                    let hint = match doc.strip_prefix(EPHEMERAL_PREFIX) {
                        Some(message) => Hint::Ephemeral {
                            message: message.to_owned(),
                        },
                        None => Hint::Changed {
                            doc: doc.to_owned(),
                        },
                    };
                    match sender.try_send(hint) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            status.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return Ok(Session::ReceiverGone);
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(pg_error("listen", &e)),
                None => return Ok(Session::Lost),
            }
        }
    };
    let listen = async {
        tokio::time::timeout(LISTEN_TIMEOUT, client.batch_execute("LISTEN cairn_changes"))
            .await
            .map_err(|_| timed_out("LISTEN", LISTEN_TIMEOUT))?
            .map_err(|e| pg_error("LISTEN", &e))?;
        status.connected.store(true, Ordering::Relaxed);
        let listens = status.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(listens, "listening for other relays' changes");
        // This one waits for room: it asks for a full re-read, which a dropped hint
        // would not replace. The reader above keeps reading meanwhile.
        if sender.send(Hint::Reconnected).await.is_err() {
            return Ok(Session::ReceiverGone);
        }
        sender.closed().await;
        Ok(Session::ReceiverGone)
    };
    let ended = tokio::select! {
        r = read => r,
        r = listen => r,
    };
    drop(client);
    // A session that failed before LISTEN answered counts as a failed attempt (backoff
    // grows); one lost after it starts the backoff again.
    match ended {
        Err(e) if status.is_connected() => {
            tracing::warn!(error = %e, "PostgreSQL listen connection ended");
            Ok(Session::Lost)
        }
        other => other,
    }
}

/// The connection settings and the TLS connector of `url`. Errors never quote the URL
/// (it may hold the password).
fn parse_url(url: &str) -> Result<(tokio_postgres::Config, tls::RustlsConnect), StoreError> {
    let (rest, options) = tls::split_url(url).map_err(StoreError::Io)?;
    // The parser's own error may quote the URL, password included.
    let mut config: tokio_postgres::Config = rest.parse().map_err(|_| {
        io_error(
            io::ErrorKind::InvalidInput,
            "the PostgreSQL URL does not parse (expected postgres://user:password@host:port/db)",
        )
    })?;
    // A key=value string's own `sslmode` (disable, prefer, require) stays as parsed.
    if rest.starts_with("postgres://") || rest.starts_with("postgresql://") {
        config.ssl_mode(options.ssl_mode());
    }
    // As libpq: TLS is for TCP; a Unix socket is local and PostgreSQL offers no TLS on it.
    let hosts = config.get_hosts();
    if !hosts.is_empty() && hosts.iter().all(|h| matches!(h, Host::Unix(_))) {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    let connector = options.connector().map_err(StoreError::Io)?;
    Ok((config, connector))
}

/// `user@host:port/db`, for logs and `Debug`: never the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

fn encode_key(key: &[String]) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(key.iter().map(|p| p.len() + 1).sum());
    for part in key {
        if part.as_bytes().contains(&0) {
            return Err(io_error(
                io::ErrorKind::InvalidInput,
                "a key part holds a NUL byte, which the PostgreSQL store cannot keep",
            ));
        }
        out.extend_from_slice(part.as_bytes());
        out.push(0);
    }
    Ok(out)
}

fn decode_key(bytes: &[u8]) -> Result<StorageKey, StoreError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let corrupt = || StoreError::Corrupt {
        detail: format!("a PostgreSQL key of {} bytes is not a key", bytes.len()),
    };
    let body = bytes.strip_suffix(&[0]).ok_or_else(corrupt)?;
    body.split(|b| *b == 0)
        .map(|p| String::from_utf8(p.to_vec()).map_err(|_| corrupt()))
        .collect()
}

/// The byte range `[start, end)` of every key under `prefix`.
fn prefix_range(prefix: &[String]) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let start = encode_key(prefix)?;
    let end = match start.split_last() {
        // The last part's terminator 0x00 becomes 0x01: every key that continues the
        // prefix's last part with more parts sorts below it, and no longer part does.
        Some((_, body)) => {
            let mut end = body.to_vec();
            end.push(1);
            end
        }
        None => ALL_KEYS_END.to_vec(),
    };
    Ok((start, end))
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && key < end
}

async fn checkout(pool: &Pool, step: &'static str) -> Result<Object, StoreError> {
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Timeout(_) => io_error(
            io::ErrorKind::TimedOut,
            &format!("PostgreSQL {step}: no connection within the timeout"),
        ),
        deadpool_postgres::PoolError::Backend(e) => pg_error(step, &e),
        deadpool_postgres::PoolError::Closed => StoreError::Closed,
        _ => io_error(
            io::ErrorKind::Other,
            &format!("PostgreSQL {step}: no connection"),
        ),
    })
}

fn io_error(kind: io::ErrorKind, msg: &str) -> StoreError {
    StoreError::Io(io::Error::new(kind, msg.to_owned()))
}

fn timed_out(step: &str, limit: Duration) -> StoreError {
    io_error(
        io::ErrorKind::TimedOut,
        &format!("PostgreSQL {step}: no answer within {limit:?}"),
    )
}

/// A database error as a [`StoreError`] naming the step, without content: a server
/// error gives only its SQLSTATE code (its message and detail may quote keys or data).
fn pg_error(step: &str, e: &tokio_postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        let kind = if *code == SqlState::DISK_FULL {
            io::ErrorKind::StorageFull
        } else if *code == SqlState::OUT_OF_MEMORY {
            io::ErrorKind::OutOfMemory
        } else if code.code().starts_with("57P") || code.code().starts_with("08") {
            // Shut down by an administrator, crash recovery, starting up, connection
            // failure: the server went away.
            io::ErrorKind::ConnectionAborted
        } else {
            io::ErrorKind::Other
        };
        return io_error(
            kind,
            &format!("PostgreSQL {step}: server error {}", code.code()),
        );
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io_error(io.kind(), &format!("PostgreSQL {step}: {io}"));
        }
        source = s.source();
    }
    if e.is_closed() {
        return io_error(
            io::ErrorKind::ConnectionAborted,
            &format!("PostgreSQL {step}: the connection closed"),
        );
    }
    io_error(io::ErrorKind::Other, &format!("PostgreSQL {step}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(parts: &[&str]) -> StorageKey {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn key_bytes_sort_as_keys_and_prefixes_are_ranges() {
        let mut keys = vec![
            k(&["ab", "x"]),
            k(&["a", "snapshot", "2"]),
            k(&["a"]),
            k(&["a", ""]),
            k(&["a", "incremental", "1"]),
            k(&["b"]),
            k(&[]),
        ];
        let mut bytes: Vec<Vec<u8>> = keys.iter().map(|k| encode_key(k).unwrap()).collect();
        keys.sort();
        bytes.sort();
        let decoded: Vec<StorageKey> = bytes.iter().map(|b| decode_key(b).unwrap()).collect();
        assert_eq!(decoded, keys);
        let (start, end) = prefix_range(&k(&["a"])).unwrap();
        let under: Vec<StorageKey> = bytes
            .iter()
            .filter(|b| in_range(b, &start, &end))
            .map(|b| decode_key(b).unwrap())
            .collect();
        assert_eq!(
            under,
            vec![
                k(&["a"]),
                k(&["a", ""]),
                k(&["a", "incremental", "1"]),
                k(&["a", "snapshot", "2"])
            ]
        );
        let (start, end) = prefix_range(&[]).unwrap();
        assert!(bytes.iter().all(|b| in_range(b, &start, &end)));
    }

    #[test]
    fn the_description_leaves_out_the_password() {
        let (config, _) = parse_url("postgres://cairn:secret@db.internal:6432/relay").unwrap();
        assert_eq!(describe(&config), "cairn@db.internal:6432/relay");
    }

    #[test]
    fn a_nul_in_a_key_is_refused() {
        let e = encode_key(&k(&["a\0b"])).unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
    }

    #[test]
    fn bad_urls_are_refused_without_the_password() {
        for url in [
            "postgres://u:secret@127.0.0.1/db?sslmode=verify-everything",
            "postgres://u:secret@127.0.0.1/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "host=127.0.0.1 user=u password=secret sslmode=verify-full",
            "postgres://u:secret@[::1",
        ] {
            let e = PgStore::connect(url, "r", PgOptions::default())
                .unwrap_err()
                .to_string();
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
