//! Command line and environment configuration.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use thiserror::Error;

use crate::limits::{Rate, RateLimits};

/// `cairn-relay`: the self-hostable Cairn sync relay.
#[derive(Debug, Parser)]
#[command(name = "cairn-relay", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Sub-commands.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve(ServeArgs),
    /// Give a store restored from a backup a new storage id. Run it (with the relay stopped)
    /// on every restored data directory: clients remember what the old id had and would
    /// otherwise never resend changes made after the backup.
    NewStorageId {
        /// Directory of the restored store.
        #[arg(long, env = "CAIRN_DATA", default_value = "cairn-data")]
        data: PathBuf,
    },
    /// Create the first group on a new relay (with the relay stopped) and print its first
    /// organiser invite: the code and its `cairn://invite/…` link, to this terminal only.
    /// Whoever redeems it becomes the group's organiser. On a relay that has groups it
    /// refuses, unless `--new-organiser-invite GROUP` asks for a fresh organiser invite to an
    /// existing group (when every organiser has lost their devices).
    Bootstrap(BootstrapArgs),
    /// Operate a running relay through its admin API: list and create groups, organiser
    /// invites, suspend or remove members, revoke devices, quotas, the audit log, backups,
    /// rotating the operator token. The token comes from `CAIRN_ADMIN_TOKEN` or a file
    /// (`--token-file`, or `--data DIR` for `DIR/admin-token`), never from the command line.
    Admin(crate::admin_cli::AdminArgs),
    /// Check a data directory (with the relay stopped): sled recovers its log, every entry
    /// reads back, and the database holds what its durable record says was made durable.
    /// Prints what it found; exits non-zero if the store is damaged.
    Check {
        /// Directory of the store.
        #[arg(long, env = "CAIRN_DATA", default_value = "cairn-data")]
        data: PathBuf,
    },
    /// Copy a stopped relay's embedded store into an empty PostgreSQL database, so that
    /// several relays can serve it: every key and value byte for byte (documents,
    /// membership, audit log, the storage id), then read back and compared. Run it with
    /// the relay stopped, then start the relays with `--store postgres://…`.
    Migrate {
        /// Directory of the embedded store to copy.
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL database (a URL; `CAIRN_STORE` works too, and keeps a password
        /// off the command line).
        #[arg(long, env = "CAIRN_STORE")]
        to: String,
    },
    /// Write a backup of a stopped relay's store to FILE (a running relay takes backups
    /// through the admin API). The file is written under a temporary name and renamed.
    Backup {
        /// Directory of the store.
        #[arg(long, env = "CAIRN_DATA", default_value = "cairn-data")]
        data: PathBuf,
        /// The backup file to create (it must not exist; not inside the data directory).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
    /// Restore a backup into an empty data directory (the relay stopped). The whole file is
    /// checked first; the restored store gets a new storage id. Needs `--replay-audit FILE`
    /// or `--membership-as-of-backup`: membership changes made after the backup (removals,
    /// revocations) are not in it.
    Restore(crate::backup::RestoreArgs),
}

/// Flags of `bootstrap`.
#[derive(Debug, Args, Clone)]
pub struct BootstrapArgs {
    /// Directory of the relay's store (created if missing).
    #[arg(long, env = "CAIRN_DATA", default_value = "cairn-data")]
    pub data: PathBuf,
    /// A UTF-8 file with the group's code of conduct, which members read and accept before
    /// they see anything (organisers can change it later). Without it, a short generic text.
    #[arg(long)]
    pub code_of_conduct_file: Option<PathBuf>,
    /// Hours the invite works. Default 72: time to pass it to the first organiser.
    #[arg(long, default_value_t = 72)]
    pub invite_hours: u64,
    /// Recovery: a new organiser invite to this existing group instead of a new group.
    #[arg(long, value_name = "GROUP")]
    pub new_organiser_invite: Option<String>,
    /// The store, as `serve --store` takes it: `embedded` (the data directory) or the
    /// PostgreSQL database of a cluster (a running cluster may be bootstrapped: the group
    /// reaches every relay with the next hint or sweep).
    #[arg(long, env = "CAIRN_STORE", default_value = "embedded")]
    pub store: String,
}

/// Flags of `serve`; each is also an environment variable.
#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CAIRN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "CAIRN_DATA", default_value = "cairn-data")]
    pub data: PathBuf,
    /// Development mode: accept any peer without authentication, read and write any
    /// document, and serve no membership API. Refused unless the listen address is
    /// loopback. Without it every websocket presents a device credential and every document
    /// belongs to a group (see `cairn-relay bootstrap`).
    #[arg(long, env = "CAIRN_OPEN", default_value_t = false)]
    pub open: bool,
    /// sled page cache in MiB.
    #[arg(long, env = "CAIRN_CACHE_MB", default_value_t = 64)]
    pub cache_mb: u64,
    /// MiB the data directory's filesystem must keep free (beyond twice a write); a change
    /// that would go below is refused (`cairn_storage_errors_total{kind="disk_full"}`) and
    /// its client resends it once there is room. sled cannot survive running out of space
    /// mid-write, so the relay stops short of it.
    #[arg(long, env = "CAIRN_MIN_FREE_MB", default_value_t = 64)]
    pub min_free_mb: u64,
    /// Most websocket connections at once; further upgrades get 503. Every TCP connection,
    /// before and after its upgrade, also counts against a cap of this many plus 16 (room for
    /// health probes and /metrics); past it a connection is closed as soon as it is accepted.
    /// Lowered at start-up (with a warning) when the open-files limit cannot hold it.
    #[arg(long, env = "CAIRN_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Frames queued for one slow connection before it is closed (it resyncs on reconnect).
    #[arg(long, env = "CAIRN_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,
    /// MiB queued for one slow connection before it is closed (it resyncs on reconnect).
    /// Default 8: far more than a socket that keeps reading ever has queued, while a
    /// thousand stalled sockets hold at most 8 GiB. A single frame larger than this (a
    /// whole document's first sync) still goes to a connection whose queue is empty.
    #[arg(long, env = "CAIRN_OUTBOUND_QUEUE_MB", default_value_t = 8)]
    pub outbound_queue_mb: usize,
    /// Largest document in MiB; larger ones are answered `doc-unavailable`.
    #[arg(long, env = "CAIRN_MAX_DOCUMENT_MB", default_value_t = 16)]
    pub max_document_mb: usize,
    /// Seconds a document stays in memory after its last use.
    #[arg(long, env = "CAIRN_IDLE_SECS", default_value_t = 120)]
    pub idle_secs: u64,
    /// Seconds of silence (no frame, no pong) after which a socket is closed.
    #[arg(long, env = "CAIRN_SOCKET_TIMEOUT_SECS", default_value_t = 60)]
    pub socket_timeout_secs: u64,
    /// Seconds a TCP connection may take to send a request's headers (also the longest an
    /// idle keep-alive connection is held). Default 10: a phone on a slow link sends a few
    /// hundred bytes of headers in well under a second, and a connection that sends nothing
    /// holds a file descriptor that the connection cap counts.
    #[arg(long, env = "CAIRN_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds a websocket may take to accept one frame before it is closed. Default 30:
    /// long enough for the largest frame (16 MiB) at about 4 Mbit/s; a socket that takes
    /// nothing for that long is not reading, and holds its queue and buffers.
    #[arg(long, env = "CAIRN_SEND_TIMEOUT_SECS", default_value_t = 30)]
    pub send_timeout_secs: u64,
    /// Documents one connection may have open at once; past it further documents get
    /// `doc-unavailable`. Default 4,096: a member of several groups holds a few hundred.
    #[arg(
        long,
        env = "CAIRN_MAX_DOCUMENTS_PER_CONNECTION",
        default_value_t = 4096
    )]
    pub max_documents_per_connection: usize,
    /// New documents one identity (a device; its peer id in `--open` mode) may create per
    /// hour, also the burst. Default 1,000: joining a busy group copies a few hundred.
    #[arg(long, env = "CAIRN_NEW_DOCUMENTS_PER_HOUR", default_value_t = 1000)]
    pub new_documents_per_hour: u32,
    /// Most Automerge operations in one document (about 90 bytes of memory each once
    /// loaded). Default 1,000,000.
    #[arg(long, env = "CAIRN_MAX_DOCUMENT_OPS", default_value_t = 1_000_000)]
    pub max_document_ops: u64,
    /// Automerge operations all loaded documents may hold together; past it idle-most
    /// documents are evicted early. Default 4,000,000 (about 360 MB).
    #[arg(long, env = "CAIRN_MAX_LOADED_OPS", default_value_t = 4_000_000)]
    pub max_loaded_ops: u64,
    /// Engine tasks the documents are spread over (by document id), so the relay uses
    /// more than one core; 1 to 64, default the number of cores (at most 16). 1 serves
    /// everything from one task. `--max-loaded-ops` is shared out between them, so memory
    /// stays bounded; the per-connection limits (`--max-documents-per-connection`, the
    /// ephemeral and new-document budgets) hold per task, so one socket gets at most this
    /// many times them.
    #[arg(long, env = "CAIRN_ENGINE_SHARDS", default_value_t = default_engine_shards())]
    pub engine_shards: usize,
    /// After the relay passed a document's changes on to its peers, how long (ms) before it
    /// passes on the next ones: changes that arrive meanwhile go out together. Default 0:
    /// every durable write is passed on at once (lowest latency). A few tens of ms send
    /// fewer frames per edit when a group types fast, each edit waiting up to that long;
    /// the acknowledgement to the member who sent a change is never held.
    #[arg(long, env = "CAIRN_FANOUT_DEBOUNCE_MS", default_value_t = 0)]
    pub fanout_debounce_ms: u64,
    /// Chunks a document's store may hold before the relay compacts them into one
    /// snapshot (deleting exactly the chunks the snapshot holds). Default 64; lower keeps
    /// loads cheaper at the cost of more rewriting.
    #[arg(long, env = "CAIRN_COMPACT_AFTER_CHUNKS", default_value_t = 64)]
    pub compact_after_chunks: usize,
    /// Where documents and membership are kept: `embedded` (default: the sled store in
    /// `--data`, one relay) or `postgres://USER@HOST/DB` (one PostgreSQL database shared by
    /// every relay of a cluster). Prefer `CAIRN_STORE` (or a `.pgpass` file) for a URL with
    /// a password: a flag is visible to every user of the machine.
    #[arg(long, env = "CAIRN_STORE", default_value = "embedded")]
    pub store: String,
    /// Connections each relay keeps to PostgreSQL (at least 2, plus one for hints). Keep
    /// relays × (this + 1) under the server's `max_connections`. Default 8.
    #[arg(long, env = "CAIRN_PG_POOL_SIZE", default_value_t = 8)]
    pub pg_pool_size: usize,
    /// Seconds one PostgreSQL call may take before it fails (and `/readyz` turns 503).
    /// Default 5.
    #[arg(long, env = "CAIRN_PG_TIMEOUT_SECS", default_value_t = 5)]
    pub pg_timeout_secs: u64,
    /// With PostgreSQL: listen for the other relays' change hints (`LISTEN`), so their
    /// members' edits reach this relay's members at once. `false` leaves only the sweep.
    /// Default true.
    #[arg(long, env = "CAIRN_CLUSTER_LISTEN", default_value_t = true, action = ArgAction::Set)]
    pub cluster_listen: bool,
    /// With PostgreSQL: milliseconds between sweeps that re-read every open document the
    /// other relays changed (what catches a lost hint). Default 2,000.
    #[arg(long, env = "CAIRN_CLUSTER_SWEEP_MS", default_value_t = 2000)]
    pub cluster_sweep_ms: u64,
    /// Whether a member who organises a group may create more groups. Default true; with
    /// false only `cairn-relay bootstrap` creates groups.
    #[arg(long, env = "CAIRN_ORGANISERS_CREATE_GROUPS", default_value_t = true, action = ArgAction::Set)]
    pub organisers_create_groups: bool,
    /// Comma-separated addresses of reverse proxies in front of the relay. Only for
    /// requests from these is the last `X-Forwarded-For` hop taken as the source address
    /// that rate limits count by; otherwise the TCP peer is. Default: none.
    #[arg(long, env = "CAIRN_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpAddr>,
    /// Websocket upgrades one source address may make at once. Default 60: a household or
    /// office behind one address, every phone reconnecting after a network change.
    #[arg(long, env = "CAIRN_UPGRADES_PER_ADDRESS_BURST", default_value_t = 60)]
    pub upgrades_per_address_burst: u32,
    /// Milliseconds for one more upgrade per source address after the burst. Default 500
    /// (2 a second): a steady stream of reconnects, while a flood is held to 2 a second.
    #[arg(
        long,
        env = "CAIRN_UPGRADES_PER_ADDRESS_INTERVAL_MS",
        default_value_t = 500
    )]
    pub upgrades_per_address_interval_ms: u64,
    /// Websocket upgrades one device may make at once. Default 10: a client reconnects
    /// with back-off, so 10 in a row is already a loop.
    #[arg(long, env = "CAIRN_UPGRADES_PER_DEVICE_BURST", default_value_t = 10)]
    pub upgrades_per_device_burst: u32,
    /// Milliseconds for one more upgrade per device after the burst. Default 1,000.
    #[arg(
        long,
        env = "CAIRN_UPGRADES_PER_DEVICE_INTERVAL_MS",
        default_value_t = 1000
    )]
    pub upgrades_per_device_interval_ms: u64,
    /// Invite previews, redemptions and device links one source address may make at once.
    /// Default 10: a few people joining from one place, each maybe mistyping a code.
    #[arg(long, env = "CAIRN_INVITES_PER_ADDRESS_BURST", default_value_t = 10)]
    pub invites_per_address_burst: u32,
    /// Milliseconds for one more invite call per source address after the burst. Default
    /// 30,000: a code of 100 random bits cannot be guessed anyway; this keeps a guesser
    /// from even trying at scale, while a real person retries within a minute.
    #[arg(
        long,
        env = "CAIRN_INVITES_PER_ADDRESS_INTERVAL_MS",
        default_value_t = 30_000
    )]
    pub invites_per_address_interval_ms: u64,
    /// Wrong credentials one source address may present at once; past it the address gets
    /// 429 for everything that authenticates, good credentials included, until it cools
    /// down. Default 10: a device with a stale token retries a few times.
    #[arg(long, env = "CAIRN_FAILED_CREDENTIALS_BURST", default_value_t = 10)]
    pub failed_credentials_burst: u32,
    /// Milliseconds for one more wrong credential per source address after the burst.
    /// Default 10,000.
    #[arg(
        long,
        env = "CAIRN_FAILED_CREDENTIALS_INTERVAL_MS",
        default_value_t = 10_000
    )]
    pub failed_credentials_interval_ms: u64,
    /// Address of the admin API (`/admin/v1`, used by `cairn-relay admin`) and a second
    /// `/metrics`; `off` serves none. Refused unless loopback, or `--admin-allow-remote` is
    /// given (then put it behind a TLS proxy: it is plain HTTP). Not served in `--open` mode.
    #[arg(long, env = "CAIRN_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    pub admin_listen: AdminListen,
    /// Allows `--admin-listen` on an address other machines can reach.
    #[arg(long, env = "CAIRN_ADMIN_ALLOW_REMOTE", default_value_t = false)]
    pub admin_allow_remote: bool,
    /// File holding the operator token (default `DATA/admin-token`, created with a random
    /// token and mode 0600 on the first start). Ignored when the `CAIRN_ADMIN_TOKEN`
    /// environment variable holds the token. There is no flag for the token itself: a
    /// command line is visible to every user of the machine.
    #[arg(long, env = "CAIRN_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Directory `POST /admin/v1/backups` (`cairn-relay admin backup`) writes backups to;
    /// outside the data directory. Without it, online backups are refused.
    #[arg(long, env = "CAIRN_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Days audit entries are kept. Default 400: a year of history and some slack.
    #[arg(long, env = "CAIRN_AUDIT_RETENTION_DAYS", default_value_t = 400)]
    pub audit_retention_days: u64,
    /// Days a deleted group can still be restored before everything in it is destroyed.
    #[arg(long, env = "CAIRN_GROUP_DELETION_GRACE_DAYS", default_value_t = 14)]
    pub group_deletion_grace_days: u64,
    /// Documents one group may hold (the operator may set another per group).
    #[arg(long, env = "CAIRN_GROUP_MAX_DOCUMENTS", default_value_t = 100_000)]
    pub group_max_documents: usize,
    /// MiB one group's documents may take in the store (the operator may set another per
    /// group). Default 1,024.
    #[arg(long, env = "CAIRN_GROUP_MAX_MB", default_value_t = 1024)]
    pub group_max_mb: u64,
    /// Documents one member may register per hour in all their groups. Default 120.
    #[arg(long, env = "CAIRN_MEMBER_DOCUMENTS_PER_HOUR", default_value_t = 120)]
    pub member_documents_per_hour: usize,
    /// PEM certificate chain: serve HTTPS and `wss://` directly (rustls) instead of behind
    /// a reverse proxy. Needs `--tls-key`.
    #[arg(long, env = "CAIRN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "CAIRN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A test control that LOSES acknowledged changes: `ack-before-flush` or
    /// `sled-flush-only`. The crash and power-cut tests use it to show they would see a lost
    /// acknowledgement. Hidden from `--help`; never set it on real data.
    #[arg(long, env = "CAIRN_UNSAFE_DURABILITY", hide = true)]
    pub unsafe_durability: Option<UnsafeDurability>,
}

/// The durability test controls (see `--unsafe-durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnsafeDurability {
    /// Writes are reported done before they are flushed (loses changes in a crash).
    AckBeforeFlush,
    /// sled's flush alone, no fsync (loses changes in a power cut).
    SledFlushOnly,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data: PathBuf,
    /// Development mode (any peer accepted).
    pub open: bool,
    /// sled cache bytes.
    pub cache_bytes: u64,
    /// Free bytes kept on the data directory's filesystem.
    pub min_free_bytes: u64,
    /// Connection cap.
    pub max_connections: usize,
    /// Outbound queue bound in frames.
    pub outbound_queue: usize,
    /// Outbound queue bound in bytes.
    pub outbound_queue_bytes: usize,
    /// Largest document in bytes.
    pub max_document_bytes: usize,
    /// Idle eviction.
    pub idle: Duration,
    /// Socket silence timeout (pings go out at a third of it).
    pub socket_timeout: Duration,
    /// Time allowed to send a request's headers.
    pub header_timeout: Duration,
    /// Time a websocket may take to accept one frame.
    pub send_timeout: Duration,
    /// Documents open per connection.
    pub max_documents_per_connection: usize,
    /// New documents per identity per hour (and burst).
    pub new_documents_per_hour: u32,
    /// Operations per document.
    pub max_document_ops: u64,
    /// Operations held by all loaded documents.
    pub max_loaded_ops: u64,
    /// Engine tasks the documents are spread over (1: one task serves everything).
    pub engine_shards: usize,
    /// How long a document's next round of passing changes on waits after one.
    pub fanout_debounce: Duration,
    /// Chunks before a compaction.
    pub compact_after_chunks: usize,
    /// Where documents and membership are kept.
    pub store: StoreChoice,
    /// A durability test control, if one is set (never on real data).
    pub unsafe_durability: Option<UnsafeDurability>,
    /// Where the admin API listens (`None`: nowhere).
    pub admin_listen: Option<SocketAddr>,
    /// Where the operator token comes from.
    pub admin_token: AdminToken,
    /// Where online backups go (`None`: refused).
    pub backup_dir: Option<PathBuf>,
    /// How long audit entries are kept.
    pub audit_retention: Duration,
    /// How long a deleted group can be restored.
    pub group_deletion_grace: Duration,
    /// Default documents per group.
    pub group_max_documents: usize,
    /// Default bytes per group.
    pub group_max_bytes: u64,
    /// Documents one member may register per hour.
    pub member_documents_per_hour: usize,
    /// PEM certificate chain and key for built-in TLS.
    pub tls: Option<TlsFiles>,
    /// Whether organisers may create groups.
    pub organisers_create_groups: bool,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Rate limits.
    pub rate_limits: RateLimits,
}

/// Seconds in a day.
const DAY_SECS: u64 = 24 * 3600;

/// Why a configuration was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--open` on an address other people can reach.
    #[error("--open accepts anyone and is only allowed on a loopback address (got {0}); use 127.0.0.1 or [::1]")]
    OpenNotLoopback(SocketAddr),
    /// A limit of zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// The admin API on an address other machines can reach, without saying so.
    #[error("--admin-listen {0} is reachable from other machines; the admin API is only allowed on a loopback address (127.0.0.1 or [::1]) unless --admin-allow-remote is given (then put a TLS proxy in front of it)")]
    AdminNotLoopback(SocketAddr),
    /// The admin API on the relay's own address.
    #[error("--admin-listen must differ from --listen (both are {0})")]
    AdminOnListen(SocketAddr),
    /// `--engine-shards` out of range.
    #[error("--engine-shards must be between 1 and {MAX_ENGINE_SHARDS} (got {0})")]
    EngineShards(usize),
    /// A `CAIRN_ADMIN_TOKEN` too short to be a secret.
    #[error("CAIRN_ADMIN_TOKEN must be at least {MIN_TOKEN_CHARS} characters")]
    AdminTokenShort,
    /// `--store` is neither `embedded` nor a PostgreSQL URL, or a PostgreSQL setting is
    /// out of range.
    #[error("--store: {0}")]
    Store(String),
}

/// Where the relay keeps documents and membership (`--store`).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// The embedded sled store in `--data`: one relay.
    Embedded,
    /// One PostgreSQL database shared by every relay of a cluster.
    Postgres(PgSettings),
}

/// The PostgreSQL settings of a relay in a cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// The connection URL (may hold a password: never logged).
    pub url: String,
    /// Pooled connections.
    pub pool_size: usize,
    /// Longest time one call may take.
    pub timeout: Duration,
    /// Whether to `LISTEN` for the other relays' hints.
    pub listen: bool,
    /// Time between sweeps.
    pub sweep: Duration,
}

impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Embedded => f.write_str("Embedded"),
            // Without the URL: it may carry a password.
            StoreChoice::Postgres(pg) => f
                .debug_struct("Postgres")
                .field("pool_size", &pg.pool_size)
                .field("timeout", &pg.timeout)
                .field("listen", &pg.listen)
                .field("sweep", &pg.sweep)
                .finish_non_exhaustive(),
        }
    }
}

impl StoreChoice {
    fn parse(
        store: &str,
        pool_size: usize,
        timeout_secs: u64,
        listen: bool,
        sweep_ms: u64,
    ) -> Result<StoreChoice, ConfigError> {
        let store = store.trim();
        if store == "embedded" || store == "sled" {
            return Ok(StoreChoice::Embedded);
        }
        if !(store.starts_with("postgres://") || store.starts_with("postgresql://")) {
            return Err(ConfigError::Store(
                "give `embedded` or a URL starting with postgres://".into(),
            ));
        }
        if !(1..=256).contains(&pool_size) {
            return Err(ConfigError::Store(format!(
                "--pg-pool-size must be between 1 and 256 (got {pool_size})"
            )));
        }
        if !(1..=60).contains(&timeout_secs) {
            return Err(ConfigError::Store(format!(
                "--pg-timeout-secs must be between 1 and 60 (got {timeout_secs})"
            )));
        }
        if !(50..=3_600_000).contains(&sweep_ms) {
            return Err(ConfigError::Store(format!(
                "--cluster-sweep-ms must be between 50 and 3600000 (got {sweep_ms})"
            )));
        }
        Ok(StoreChoice::Postgres(PgSettings {
            url: store.to_owned(),
            pool_size,
            timeout: Duration::from_secs(timeout_secs),
            listen,
            sweep: Duration::from_millis(sweep_ms),
        }))
    }
}

/// Most engine tasks `--engine-shards` accepts.
pub const MAX_ENGINE_SHARDS: usize = 64;

/// `--engine-shards` by default: one task per core, at most 16 (past that the door and the
/// storage thread, which every shard shares, are the limit).
pub fn default_engine_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(16))
}

/// Shortest operator token accepted from the environment: 24 characters.
pub const MIN_TOKEN_CHARS: usize = 24;

/// `--admin-listen`: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminListen {
    /// No admin API.
    Off,
    /// Listen here.
    At(SocketAddr),
}

impl std::str::FromStr for AdminListen {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            Ok(AdminListen::Off)
        } else {
            s.parse().map(AdminListen::At)
        }
    }
}

/// Where the operator token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum AdminToken {
    /// `CAIRN_ADMIN_TOKEN`: fixed for the relay's life (rotation is refused).
    Env(String),
    /// A file, created with a random token if missing.
    File(PathBuf),
}

impl std::fmt::Debug for AdminToken {
    // The token itself is never printed, whoever debug-prints the config.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminToken::Env(_) => f.write_str("Env(<redacted>)"),
            AdminToken::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// The certificate and key of built-in TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl ServeArgs {
    /// Checks the flags and builds a [`Config`].
    pub fn validate(self) -> Result<Config, ConfigError> {
        if self.open && !self.listen.ip().is_loopback() {
            return Err(ConfigError::OpenNotLoopback(self.listen));
        }
        let admin_listen = match self.admin_listen {
            // Development mode has no membership to administer.
            _ if self.open => None,
            AdminListen::Off => None,
            AdminListen::At(addr) => {
                if !addr.ip().is_loopback() && !self.admin_allow_remote {
                    return Err(ConfigError::AdminNotLoopback(addr));
                }
                if addr == self.listen && addr.port() != 0 {
                    return Err(ConfigError::AdminOnListen(addr));
                }
                Some(addr)
            }
        };
        // Read here, not through clap: a clap argument would also accept the token as a
        // flag, visible to every user of the machine.
        let admin_token = match std::env::var("CAIRN_ADMIN_TOKEN") {
            Ok(t) if !t.trim().is_empty() => {
                if t.trim().len() < MIN_TOKEN_CHARS {
                    return Err(ConfigError::AdminTokenShort);
                }
                AdminToken::Env(t.trim().to_owned())
            }
            _ => AdminToken::File(
                self.admin_token_file
                    .clone()
                    .unwrap_or_else(|| self.data.join("admin-token")),
            ),
        };
        if !(1..=MAX_ENGINE_SHARDS).contains(&self.engine_shards) {
            return Err(ConfigError::EngineShards(self.engine_shards));
        }
        let store = StoreChoice::parse(
            &self.store,
            self.pg_pool_size,
            self.pg_timeout_secs,
            self.cluster_listen,
            self.cluster_sweep_ms,
        )?;
        for (name, v) in [
            ("--max-connections", self.max_connections as u64),
            ("--outbound-queue", self.outbound_queue as u64),
            ("--max-document-mb", self.max_document_mb as u64),
            ("--idle-secs", self.idle_secs),
            ("--socket-timeout-secs", self.socket_timeout_secs),
            ("--outbound-queue-mb", self.outbound_queue_mb as u64),
            ("--header-timeout-secs", self.header_timeout_secs),
            ("--compact-after-chunks", self.compact_after_chunks as u64),
            ("--send-timeout-secs", self.send_timeout_secs),
            (
                "--max-documents-per-connection",
                self.max_documents_per_connection as u64,
            ),
            (
                "--new-documents-per-hour",
                u64::from(self.new_documents_per_hour),
            ),
            ("--max-document-ops", self.max_document_ops),
            ("--max-loaded-ops", self.max_loaded_ops),
            (
                "--upgrades-per-address-burst",
                u64::from(self.upgrades_per_address_burst),
            ),
            (
                "--upgrades-per-address-interval-ms",
                self.upgrades_per_address_interval_ms,
            ),
            (
                "--upgrades-per-device-burst",
                u64::from(self.upgrades_per_device_burst),
            ),
            (
                "--upgrades-per-device-interval-ms",
                self.upgrades_per_device_interval_ms,
            ),
            (
                "--invites-per-address-burst",
                u64::from(self.invites_per_address_burst),
            ),
            (
                "--invites-per-address-interval-ms",
                self.invites_per_address_interval_ms,
            ),
            (
                "--failed-credentials-burst",
                u64::from(self.failed_credentials_burst),
            ),
            (
                "--failed-credentials-interval-ms",
                self.failed_credentials_interval_ms,
            ),
            ("--audit-retention-days", self.audit_retention_days),
            (
                "--group-deletion-grace-days",
                self.group_deletion_grace_days,
            ),
            ("--group-max-documents", self.group_max_documents as u64),
            ("--group-max-mb", self.group_max_mb),
            (
                "--member-documents-per-hour",
                self.member_documents_per_hour as u64,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(Config {
            listen: self.listen,
            data: self.data,
            open: self.open,
            cache_bytes: self.cache_mb * 1024 * 1024,
            min_free_bytes: self.min_free_mb * 1024 * 1024,
            max_connections: self.max_connections,
            outbound_queue: self.outbound_queue,
            outbound_queue_bytes: self.outbound_queue_mb * 1024 * 1024,
            max_document_bytes: self.max_document_mb * 1024 * 1024,
            idle: Duration::from_secs(self.idle_secs),
            socket_timeout: Duration::from_secs(self.socket_timeout_secs),
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            send_timeout: Duration::from_secs(self.send_timeout_secs),
            max_documents_per_connection: self.max_documents_per_connection,
            new_documents_per_hour: self.new_documents_per_hour,
            max_document_ops: self.max_document_ops,
            max_loaded_ops: self.max_loaded_ops,
            engine_shards: self.engine_shards,
            fanout_debounce: Duration::from_millis(self.fanout_debounce_ms),
            store,
            compact_after_chunks: self.compact_after_chunks,
            unsafe_durability: self.unsafe_durability,
            admin_listen,
            admin_token,
            backup_dir: self.backup_dir,
            audit_retention: Duration::from_secs(
                self.audit_retention_days.saturating_mul(DAY_SECS),
            ),
            group_deletion_grace: Duration::from_secs(
                self.group_deletion_grace_days.saturating_mul(DAY_SECS),
            ),
            group_max_documents: self.group_max_documents,
            group_max_bytes: self.group_max_mb.saturating_mul(1024 * 1024),
            member_documents_per_hour: self.member_documents_per_hour,
            tls: match (self.tls_cert, self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                // clap's `requires` refuses one without the other.
                _ => None,
            },
            organisers_create_groups: self.organisers_create_groups,
            trusted_proxies: self.trusted_proxies,
            rate_limits: RateLimits {
                upgrades_per_address: Rate {
                    burst: self.upgrades_per_address_burst,
                    interval: Duration::from_millis(self.upgrades_per_address_interval_ms),
                },
                upgrades_per_device: Rate {
                    burst: self.upgrades_per_device_burst,
                    interval: Duration::from_millis(self.upgrades_per_device_interval_ms),
                },
                invites_per_address: Rate {
                    burst: self.invites_per_address_burst,
                    interval: Duration::from_millis(self.invites_per_address_interval_ms),
                },
                failed_credentials: Rate {
                    burst: self.failed_credentials_burst,
                    interval: Duration::from_millis(self.failed_credentials_interval_ms),
                },
            },
        })
    }
}

impl Config {
    /// A development config for tests: open, on the given loopback address and directory.
    pub fn open_for_tests(listen: SocketAddr, data: PathBuf) -> Config {
        ServeArgs {
            listen,
            data,
            open: true,
            cache_mb: 16,
            min_free_mb: 64,
            max_connections: 10_000,
            outbound_queue: 1024,
            outbound_queue_mb: 8,
            max_document_mb: 16,
            idle_secs: 120,
            socket_timeout_secs: 60,
            header_timeout_secs: 10,
            send_timeout_secs: 30,
            max_documents_per_connection: 4096,
            new_documents_per_hour: 1000,
            max_document_ops: 1_000_000,
            max_loaded_ops: 4_000_000,
            engine_shards: default_engine_shards(),
            fanout_debounce_ms: 0,
            compact_after_chunks: 64,
            store: "embedded".into(),
            pg_pool_size: 8,
            pg_timeout_secs: 5,
            cluster_listen: true,
            cluster_sweep_ms: 2000,
            unsafe_durability: None,
            organisers_create_groups: true,
            trusted_proxies: Vec::new(),
            upgrades_per_address_burst: 60,
            upgrades_per_address_interval_ms: 500,
            upgrades_per_device_burst: 10,
            upgrades_per_device_interval_ms: 1000,
            invites_per_address_burst: 10,
            invites_per_address_interval_ms: 30_000,
            failed_credentials_burst: 10,
            failed_credentials_interval_ms: 10_000,
            admin_listen: AdminListen::Off,
            admin_allow_remote: false,
            admin_token_file: None,
            backup_dir: None,
            audit_retention_days: 400,
            group_deletion_grace_days: 14,
            group_max_documents: 100_000,
            group_max_mb: 1024,
            member_documents_per_hour: 120,
            tls_cert: None,
            tls_key: None,
        }
        .validate()
        .expect("loopback test config is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(listen: &str, open: bool) -> ServeArgs {
        let mut a = Cli::parse_from(["cairn-relay", "serve", "--listen", listen]);
        let Command::Serve(ref mut s) = a.command else {
            unreachable!("parsed serve")
        };
        s.open = open;
        s.clone()
    }

    #[test]
    fn open_mode_refuses_public_addresses() {
        assert_eq!(
            args("0.0.0.0:8080", true).validate().unwrap_err(),
            ConfigError::OpenNotLoopback("0.0.0.0:8080".parse().unwrap())
        );
        assert!(args("127.0.0.1:8080", true).validate().is_ok());
        assert!(args("[::1]:8080", true).validate().is_ok());
        assert!(args("0.0.0.0:8080", false).validate().is_ok());
    }

    #[test]
    fn membership_flags_parse() {
        let Command::Serve(a) = Cli::parse_from([
            "cairn-relay",
            "serve",
            "--organisers-create-groups",
            "false",
            "--trusted-proxies",
            "10.0.0.1,::1",
            "--invites-per-address-burst",
            "3",
        ])
        .command
        else {
            unreachable!("parsed serve")
        };
        let c = a.validate().unwrap();
        assert!(!c.organisers_create_groups);
        assert_eq!(
            c.trusted_proxies,
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(c.rate_limits.invites_per_address.burst, 3);
        assert_eq!(
            c.rate_limits.invites_per_address.interval,
            Duration::from_secs(30)
        );
        let d = args("127.0.0.1:8080", false).validate().unwrap();
        assert!(d.organisers_create_groups && d.trusted_proxies.is_empty());
        let Command::Serve(z) =
            Cli::parse_from(["cairn-relay", "serve", "--failed-credentials-burst", "0"]).command
        else {
            unreachable!("parsed serve")
        };
        assert_eq!(
            z.validate().unwrap_err(),
            ConfigError::Zero("--failed-credentials-burst")
        );
    }

    #[test]
    fn new_limits_refuse_zero_and_convert() {
        for flag in [
            "--outbound-queue-mb",
            "--header-timeout-secs",
            "--send-timeout-secs",
        ] {
            let Command::Serve(a) = Cli::parse_from(["cairn-relay", "serve", flag, "0"]).command
            else {
                unreachable!("parsed serve")
            };
            assert_eq!(a.validate().unwrap_err(), ConfigError::Zero(flag));
        }
        let c = args("127.0.0.1:8080", true).validate().unwrap();
        assert_eq!(c.outbound_queue_bytes, 8 * 1024 * 1024);
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.send_timeout, Duration::from_secs(30));
    }

    #[test]
    fn engine_shards_default_to_the_cores_and_refuse_out_of_range() {
        let c = serve(&[]).validate().unwrap();
        assert!((1..=16).contains(&c.engine_shards));
        assert_eq!(c.engine_shards, default_engine_shards());
        assert_eq!(
            serve(&["--engine-shards", "3"])
                .validate()
                .unwrap()
                .engine_shards,
            3
        );
        for bad in [0, MAX_ENGINE_SHARDS + 1] {
            let n = bad.to_string();
            let err = serve(&["--engine-shards", &n]).validate().unwrap_err();
            assert_eq!(err, ConfigError::EngineShards(bad));
            assert!(err.to_string().contains("between 1 and 64"), "{err}");
        }
    }

    #[test]
    fn the_store_is_embedded_by_default_and_a_postgres_url_keeps_its_password_out_of_debug() {
        let c = serve(&[]).validate().unwrap();
        assert_eq!(c.store, StoreChoice::Embedded);
        let c = serve(&["--store", "postgres://cairn:s3cret@127.0.0.1/cairn"])
            .validate()
            .unwrap();
        let StoreChoice::Postgres(pg) = &c.store else {
            panic!("not postgres: {:?}", c.store);
        };
        assert_eq!(pg.url, "postgres://cairn:s3cret@127.0.0.1/cairn");
        assert!(pg.listen);
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the password reached Debug"
        );
        let err = serve(&["--store", "mysql://x"]).validate().unwrap_err();
        assert!(err.to_string().contains("postgres://"), "{err}");
        let err = serve(&["--store", "postgres://h/db", "--pg-pool-size", "0"])
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("--pg-pool-size"), "{err}");
    }

    fn serve(flags: &[&str]) -> ServeArgs {
        let mut argv = vec!["cairn-relay", "serve"];
        argv.extend_from_slice(flags);
        let Command::Serve(a) = Cli::parse_from(argv).command else {
            unreachable!("parsed serve")
        };
        a
    }

    #[test]
    fn the_admin_api_stays_on_loopback_unless_allowed() {
        let c = serve(&[]).validate().unwrap();
        assert_eq!(c.admin_listen, Some("127.0.0.1:8081".parse().unwrap()));
        assert_eq!(
            c.admin_token,
            AdminToken::File(PathBuf::from("cairn-data/admin-token"))
        );
        assert_eq!(
            serve(&["--admin-listen", "0.0.0.0:8081"])
                .validate()
                .unwrap_err(),
            ConfigError::AdminNotLoopback("0.0.0.0:8081".parse().unwrap())
        );
        assert_eq!(
            serve(&["--admin-listen", "[::]:8081"])
                .validate()
                .unwrap_err(),
            ConfigError::AdminNotLoopback("[::]:8081".parse().unwrap())
        );
        let remote = serve(&["--admin-listen", "0.0.0.0:8081", "--admin-allow-remote"])
            .validate()
            .unwrap();
        assert_eq!(remote.admin_listen, Some("0.0.0.0:8081".parse().unwrap()));
        assert_eq!(
            serve(&["--admin-listen", "off"])
                .validate()
                .unwrap()
                .admin_listen,
            None
        );
        assert_eq!(
            serve(&[
                "--listen",
                "127.0.0.1:9000",
                "--admin-listen",
                "127.0.0.1:9000"
            ])
            .validate()
            .unwrap_err(),
            ConfigError::AdminOnListen("127.0.0.1:9000".parse().unwrap())
        );
        // Development mode serves no admin API at all.
        assert_eq!(serve(&["--open"]).validate().unwrap().admin_listen, None);
    }

    #[test]
    fn operations_flags_parse_and_refuse_zero() {
        let c = serve(&[
            "--data",
            "d",
            "--group-max-mb",
            "2",
            "--group-deletion-grace-days",
            "1",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .validate()
        .unwrap();
        assert_eq!(c.group_max_bytes, 2 * 1024 * 1024);
        assert_eq!(c.group_deletion_grace, Duration::from_secs(24 * 3600));
        assert_eq!(c.audit_retention, Duration::from_secs(400 * 24 * 3600));
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        assert!(Cli::try_parse_from(["cairn-relay", "serve", "--tls-cert", "c.pem"]).is_err());
        assert!(
            Cli::try_parse_from(["cairn-relay", "serve", "--admin-token", "x"]).is_err(),
            "no flag takes the token itself"
        );
        assert_eq!(
            serve(&["--member-documents-per-hour", "0"])
                .validate()
                .unwrap_err(),
            ConfigError::Zero("--member-documents-per-hour")
        );
        assert!(!format!("{:?}", AdminToken::Env("secret-secret".into())).contains("secret"));
    }
}
