//! # cairn-relay
//!
//! The self-hostable Cairn relay: an axum websocket endpoint at `/` that speaks the
//! automerge-repo protocol through `cairn-core`'s engine, an embedded sled store with
//! batched fsync, `/healthz`, `/readyz` and Prometheus `/metrics`.
//!
//! Unless it runs with `--open` (development, loopback only), the relay decides who may do
//! what: every websocket presents a device credential (`Authorization: Bearer` or
//! `?token=`) checked before the upgrade, the engine checks every message against the
//! relay's membership (groups, roles, devices, document bindings), and the membership API
//! under `/v1` ([`api`]) manages it. A call that takes access away answers only once the
//! affected sockets are closed. `cairn-relay bootstrap` ([`bootstrap`]) creates the first
//! group offline. Upgrades, invite calls and wrong credentials are rate limited
//! ([`limits`]).
//!
//! [`run`] serves until `shutdown` resolves, then stops accepting, closes sockets, lets
//! in-flight writes flush, and returns. If the sync engine stops on its own, `/healthz`
//! turns 503 and [`run`] returns [`RelayError::EngineStopped`] so that the process exits
//! and its supervisor restarts it. [`app`] builds the router alone for tests.

pub mod admin;
pub mod admin_cli;
pub mod api;
mod auth;
pub mod backup;
pub mod bootstrap;
mod cluster;
pub mod config;
pub mod limits;
pub mod members;
pub mod metrics;
pub mod migrate;
pub mod pg_store;
pub mod sockets;
pub mod store;
pub mod tcp;
mod ws;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use cairn_sync::engine::{
    Access, Engine, EngineConfig, Limits, Operation, PeerInfo, Role, SyncLimits,
};
use cairn_sync::ids::{DocumentId, PeerId};
use cairn_sync::membership::{KvMembershipStore, Membership, MembershipError, Quotas};
use cairn_sync::runtime::{Host, HostConfig};
use cairn_sync::store::{SledConfig, SledDurability, SledStore, Storage, StoreError};
pub use store::RelayStore;
use thiserror::Error;
use tokio::net::TcpListener;

pub use config::{Config, ConfigError, StoreChoice, UnsafeDurability};
use limits::Limiters;
use members::Members;
use metrics::Metrics;
use sockets::Sockets;

/// Why the relay could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum RelayError {
    /// The data directory could not be opened or written (permissions, another relay
    /// holds its lock, a full disk).
    #[error("opening the store failed: {0}")]
    Store(StoreError),
    /// The store is damaged: it lost changes it had made durable, or its files do not read
    /// back. The relay refuses to start rather than serve what is left, since clients that
    /// remember its storage id would never resend what it lost.
    #[error(
        "the store is damaged: {0}. Run `cairn-relay check --data DIR` for a report; restore \
         the directory from a backup, then run `cairn-relay new-storage-id --data DIR` so \
         clients resend what the backup lacks"
    )]
    Damaged(String),
    /// Another process (a running relay) holds the data directory's lock.
    #[error("the store is in use: stop the relay running on it first")]
    Locked,
    /// The membership state could not be loaded or changed.
    #[error("membership: {0}")]
    Membership(MembershipError),
    /// `bootstrap` on a relay that already has groups, without `--new-organiser-invite`.
    #[error(
        "this relay already has groups; to invite a new organiser to one (when every \
         organiser has lost their devices) run `cairn-relay bootstrap --new-organiser-invite GROUP`"
    )]
    AlreadyBootstrapped,
    /// The code-of-conduct file could not be read.
    #[error("reading the code of conduct file failed: {0}")]
    CodeOfConduct(std::io::Error),
    /// `--tls-cert`/`--tls-key` could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Serving failed.
    #[error("serving failed: {0}")]
    Serve(#[from] std::io::Error),
    /// The sync engine stopped without being asked to (a panic, or the storage thread
    /// stopped); the log says which. Restart the relay: clients reconnect and resync.
    #[error("the sync engine stopped; restart the relay")]
    EngineStopped,
    /// A backup or a restore was refused or failed (see [`backup`]); nothing of a refused
    /// restore was written.
    #[error("{0}")]
    Backup(String),
}

impl From<StoreError> for RelayError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { detail } => RelayError::Damaged(detail),
            // A store file that ends early is damage, whichever layer noticed (sled
            // reports some cuts in its log as a short read).
            StoreError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                RelayError::Damaged(format!("a store file ends early ({io})"))
            }
            e if e.is_locked() => RelayError::Locked,
            other => RelayError::Store(other),
        }
    }
}

impl From<MembershipError> for RelayError {
    fn from(e: MembershipError) -> Self {
        match e {
            MembershipError::Store(s) => s.into(),
            other => RelayError::Membership(other),
        }
    }
}

/// Shared state of the HTTP handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    host: Host,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    /// Open websockets (checked against `--max-connections`).
    socket_count: Arc<AtomicUsize>,
    /// The live websockets, to close those whose access is taken away.
    sockets: Arc<Sockets>,
    /// The membership; `None` in `--open` mode.
    members: Option<Arc<Members>>,
    /// Wrong credentials awaiting their audit entry (see `admin`'s background tasks).
    failed_credentials: Arc<auth::FailedCredentials>,
    /// The store the host runs (for backups).
    store: RelayStore,
    /// With PostgreSQL: whether the database answered the last health check.
    database_up: cluster::DatabaseUp,
    /// With PostgreSQL and the listener: the ephemeral messages for the other relays.
    ephemeral_in: Option<cluster::EphemeralIn>,
}

impl AppState {
    /// The engine host, for tests and embedding (`call`, `is_running`).
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The relay's store (a backup reads it through [`Host::exclusive`]).
    pub fn store(&self) -> &RelayStore {
        &self.store
    }

    /// The membership service (`None` in `--open` mode), for tests and embedding.
    pub fn membership(&self) -> Option<&cairn_sync::membership::Membership> {
        self.members.as_ref().map(|m| &m.membership)
    }
}

/// The relay's peer id (on the embedded store; a relay of a PostgreSQL cluster adds its
/// own id: see [`relay_peer_id`]).
pub const RELAY_PEER_ID: &str = "cairn-relay";

/// The peer id a relay announces: [`RELAY_PEER_ID`] alone, or followed by the relay's id
/// in a cluster, where every relay shares one storage id but is a peer of its own.
pub fn relay_peer_id(store: &RelayStore) -> PeerId {
    match store.postgres() {
        Some(pg) => PeerId::from(format!("{RELAY_PEER_ID}-{}", pg.relay_id())),
        None => PeerId::from(RELAY_PEER_ID),
    }
}

/// Opens the store the configuration names (`--store`): the embedded store in `--data`,
/// or a connection pool to PostgreSQL under a new relay id.
pub async fn open_relay_store(config: &Config) -> Result<RelayStore, RelayError> {
    std::fs::create_dir_all(&config.data).map_err(StoreError::Io)?;
    match &config.store {
        StoreChoice::Embedded => {
            let durability = match config.unsafe_durability {
                Some(UnsafeDurability::SledFlushOnly) => SledDurability::SledFlushOnly,
                _ => SledDurability::Fsync,
            };
            if let Some(control) = config.unsafe_durability {
                tracing::warn!(?control, "UNSAFE durability test control: acknowledged changes WILL be lost in a crash or power cut");
            }
            let store = open_store(
                &config.data,
                &SledConfig {
                    cache_capacity: config.cache_bytes,
                    durability,
                    reserve_bytes: config.min_free_bytes,
                },
            )?;
            Ok(RelayStore::Sled(store))
        }
        StoreChoice::Postgres(pg) => {
            let relay_id = uuid_hex();
            let options = pg_store::PgOptions {
                pool_size: pg.pool_size,
                op_timeout: pg.timeout,
            };
            let url = pg.url.clone();
            let id = relay_id.clone();
            let store =
                tokio::task::spawn_blocking(move || pg_store::PgStore::connect(&url, &id, options))
                    .await
                    .map_err(|_| RelayError::EngineStopped)??;
            tracing::info!(relay_id = %relay_id, pool_size = pg.pool_size, listen = pg.listen, "connected to PostgreSQL");
            Ok(RelayStore::Postgres(store))
        }
    }
}

/// Opens the store and starts the engine host (inside a tokio runtime). Without `--open`,
/// loads the membership and makes it the engine's access policy before returning.
pub async fn start(config: &Config) -> Result<(AppState, RelayStore), RelayError> {
    let store = open_relay_store(config).await?;
    let storage_id = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.storage_id())
            .await
            .map_err(|_| RelayError::EngineStopped)??
    };
    let limits = Limits {
        max_document_bytes: config.max_document_bytes,
        max_frame_bytes: config.max_document_bytes + 64 * 1024,
        idle_eviction: config.idle,
        max_documents_per_connection: config.max_documents_per_connection,
        new_documents_burst: config.new_documents_per_hour,
        new_document_interval: Duration::from_secs(3600) / config.new_documents_per_hour,
        max_document_ops: config.max_document_ops,
        // Shared out between the shards, so the relay's memory budget stays the same.
        max_loaded_ops: (config.max_loaded_ops / config.engine_shards.max(1) as u64).max(1),
        compact_after_chunks: config.compact_after_chunks,
        sync: SyncLimits {
            // A message may carry as many operations as a document may hold, and expand
            // to as many bytes as a document may be stored in.
            max_ops: config.max_document_ops,
            max_expanded_bytes: config.max_document_bytes as u64,
            ..SyncLimits::default()
        },
        ..Limits::default()
    };
    let seed = u64::from_le_bytes(uuid_seed());
    let engine_config = EngineConfig::new(Role::Relay, relay_peer_id(&store), seed)
        .with_storage_id(storage_id.clone())
        .with_limits(limits)
        .with_sync_debounce(config.fanout_debounce);
    let ephemeral = cluster::ephemeral_queue(config);
    let engine_config = engine_config.with_shared_ephemeral(ephemeral.is_some());
    let make_engine = |task: usize| {
        let mut engine = Engine::new(EngineConfig {
            // Each task's document actors and session id differ.
            seed: seed.wrapping_add(task as u64),
            ..engine_config.clone()
        });
        if !config.open {
            // Nobody may do anything until the membership is loaded and takes over.
            engine.set_access(Box::new(NoAccess));
        }
        engine
    };
    let metrics = Arc::new(Metrics::new());
    tracing::info!(
        engine_shards = config.engine_shards,
        "starting the sync engine"
    );
    let host = Host::start_sharded(
        &tokio::runtime::Handle::current(),
        config.engine_shards,
        make_engine,
        Arc::new(store.clone()),
        |_| metrics.observer(ephemeral.as_ref().map(|(out, _)| out.clone())),
        HostConfig {
            outbound_queue: config.outbound_queue,
            outbound_queue_bytes: config.outbound_queue_bytes,
            unsafe_ack_before_flush: config.unsafe_durability
                == Some(UnsafeDurability::AckBeforeFlush),
            ..HostConfig::default()
        },
    );
    tracing::info!(storage_id = %storage_id, data_bytes = store.size_on_disk().unwrap_or(0), shared = store.is_shared(), "store opened");
    let members = if config.open {
        None
    } else {
        // Membership commits go through the host's storage thread: they never race a
        // flush of document writes, and follow the same durability rule.
        let writer = host.storage_writer();
        let quotas = Quotas {
            organisers_create_groups: config.organisers_create_groups,
            documents_per_group: config.group_max_documents,
            bytes_per_group: config.group_max_bytes,
            documents_per_member_per_hour: config.member_documents_per_hour,
            ..Quotas::default()
        };
        let sizes_of = store.clone();
        let membership = tokio::task::spawn_blocking(move || {
            let membership = Membership::open(Arc::new(KvMembershipStore::new(writer)), quotas)?;
            // Each group's bytes count from the start: every stored document's size (the
            // engine reports changes from here on). Keys that are not document ids are the
            // store's own records.
            let sizes = sizes_of.document_sizes()?;
            membership.seed_document_sizes(
                sizes
                    .into_iter()
                    .filter_map(|(id, bytes)| id.parse::<DocumentId>().ok().map(|d| (d, bytes))),
            );
            Ok::<_, RelayError>(membership)
        })
        .await
        .map_err(|_| RelayError::EngineStopped)??;
        if !membership.has_groups() {
            tracing::warn!("this relay has no group yet: run `cairn-relay bootstrap` (with the relay stopped) to create the first one");
        }
        let access = membership.access(host.origin_unix_ms());
        // Every engine task gets its own copy; they share the membership state.
        host.call_all(move |engine, _| engine.set_access(Box::new(access.clone())))
            .await
            .map_err(|_| RelayError::EngineStopped)?;
        // The roster documents show the committed membership: a change committed just
        // before a crash or a failed write is shown from the first start after it.
        for group in membership.group_ids() {
            members::write_roster(&host, &membership, &group);
        }
        Some(Arc::new(Members::new(
            membership,
            Limiters::new(&config.rate_limits),
        )))
    };
    Ok((
        AppState {
            host,
            metrics,
            config: Arc::new(config.clone()),
            socket_count: Arc::new(AtomicUsize::new(0)),
            sockets: Arc::new(Sockets::default()),
            members,
            failed_credentials: Arc::default(),
            store: store.clone(),
            database_up: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            ephemeral_in: ephemeral.map(|(_, queue)| queue),
        },
        store,
    ))
}

/// The access policy of a relay with membership until the membership is loaded.
struct NoAccess;

impl Access for NoAccess {
    fn allows(
        &self,
        _: &PeerInfo<'_>,
        _: &cairn_sync::ids::DocumentId,
        _: Operation,
        _: cairn_sync::time::Timestamp,
    ) -> bool {
        false
    }

    fn connection_allowed(&self, _: &PeerInfo<'_>, _: cairn_sync::time::Timestamp) -> bool {
        false
    }
}

fn uuid_seed() -> [u8; 8] {
    let mut b = [0u8; 8];
    b.copy_from_slice(&uuid_bytes()[..8]);
    b
}

/// A relay id: 16 random hex digits.
fn uuid_hex() -> String {
    hex_digits(&uuid_bytes()[..8])
}

fn hex_digits(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn uuid_bytes() -> [u8; 16] {
    // OS randomness through the uuid crate, which the store already uses for its id.
    *cairn_sync::store::random_uuid().as_bytes()
}

/// Opens the store in the data directory `data` (store format 2, see
/// [`cairn_sync::store::open_data_dir`]): migrates an older format and logs that it did,
/// refuses a newer one.
pub fn open_store(data: &std::path::Path, config: &SledConfig) -> Result<SledStore, RelayError> {
    let (store, layout) = cairn_sync::store::open_data_dir(data, config)?;
    if let Some(from) = layout.migrated_from {
        tracing::info!(
            from,
            to = layout.format,
            "migrated the store from format {from} to {}",
            layout.format
        );
    }
    Ok(store)
}

/// Checks the store in `data` (the relay must be stopped; an older format is checked in
/// place, not migrated): see [`SledStore::check`].
pub fn check(data: &std::path::Path) -> Result<cairn_sync::store::VerifyReport, RelayError> {
    Ok(cairn_sync::store::check_data_dir(data, &SledConfig::default())?.0)
}

/// Replaces the store's id (after a restore from backup) and returns the new one.
pub fn new_storage_id(data: &std::path::Path) -> Result<cairn_sync::ids::StorageId, RelayError> {
    let store = open_store(data, &SledConfig::default())?;
    store.delete(&cairn_sync::store::storage_id_key())?;
    store.flush()?;
    let id = store.storage_id()?;
    tracing::info!(storage_id = %id, "store has a new id");
    Ok(id)
}

/// The router: `/` (websocket), `/healthz`, `/readyz`, `/metrics`, and the membership
/// API under `/v1` (not in `--open` mode).
pub fn app(state: AppState) -> Router {
    let router = Router::new()
        .route("/", get(ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler));
    let router = if state.members.is_some() {
        router.merge(api::routes().layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::count_quota_refusals,
        )))
    } else {
        router
    };
    router.with_state(state)
}

/// Liveness: 503 once the engine has stopped, so a probe restarts a relay that cannot sync.
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    if state.host.is_running() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "engine stopped")
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if !cluster::database_up(&state) {
        return (StatusCode::SERVICE_UNAVAILABLE, "database not responding");
    }
    match tokio::time::timeout(Duration::from_secs(2), state.host.stats()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "engine not responding"),
    }
}

pub(crate) async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    admin::refresh_gauges(&state);
    if let Ok(Ok(stats)) = tokio::time::timeout(Duration::from_secs(2), state.host.stats()).await {
        state.metrics.set_stats(stats);
    }
    state
        .metrics
        .sockets
        .set(state.socket_count.load(Ordering::Relaxed) as i64);
    state
        .metrics
        .engine_up
        .set(i64::from(state.host.is_running()));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Serves on `listener` until `shutdown` resolves; then stops accepting, closes every
/// socket, waits for in-flight writes to flush, and returns. Returns
/// [`RelayError::EngineStopped`] as soon as the engine stops on its own.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    if config.open {
        tracing::warn!(listen = %config.listen, "development mode (--open): every peer is accepted without authentication");
    }
    let mut config = config;
    let tcp_cap = fit_to_fd_limit(&mut config);
    let (state, store) = start(&config).await?;
    serve_with_cap(state, store, listener, shutdown, tcp_cap).await
}

/// Like [`run`], on a relay already started with [`start`] (tests reach its host first).
pub async fn serve(
    state: AppState,
    store: RelayStore,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    let tcp_cap = state
        .config
        .max_connections
        .saturating_add(tcp::PROBE_HEADROOM);
    serve_with_cap(state, store, listener, shutdown, tcp_cap).await
}

/// Lowers `--max-connections` when the TCP cap plus the store's reserve would not fit the
/// open-files limit (a relay out of descriptors cannot even answer `/metrics`), and
/// returns the TCP cap.
fn fit_to_fd_limit(config: &mut Config) -> usize {
    let Some(limit) = tcp::fd_soft_limit() else {
        return config.max_connections.saturating_add(tcp::PROBE_HEADROOM);
    };
    let (tcp_cap, ws_cap) = tcp::fit_caps(config.max_connections, limit);
    if ws_cap < config.max_connections {
        tracing::warn!(
            fd_limit = limit,
            fd_reserve = tcp::FD_RESERVE,
            max_connections = config.max_connections,
            lowered_to = ws_cap,
            tcp_cap,
            "the open-files limit is too low for --max-connections; lowering it"
        );
        config.max_connections = ws_cap;
    }
    tcp_cap
}

/// Why serving ended.
enum Stop {
    Requested,
    EngineStopped,
}

async fn serve_with_cap(
    state: AppState,
    store: RelayStore,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    tcp_cap: usize,
) -> Result<(), RelayError> {
    let host = state.host.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    // Operations (section "Admin"): built-in TLS, the admin listener, its background
    // tasks; first, so that a refusal leaves nothing running.
    let tls = match &state.config.tls {
        Some(files) => Some(tcp::tls_acceptor(files).map_err(RelayError::Tls)?),
        None => None,
    };
    let mut background = admin::spawn(&state, stop.clone()).await?;
    background.extend(cluster::spawn(&state, stop.clone()));
    if let Some(members) = &state.members {
        background.push(tokio::spawn(members::expire_guests(
            state.clone(),
            members.clone(),
            stop.clone(),
        )));
        background.push(tokio::spawn(members::limiter_housekeeping(
            members.clone(),
            stop.clone(),
        )));
        background.push(tokio::spawn(members::purge_deleted_groups(
            state.clone(),
            stop.clone(),
        )));
    }
    tracing::info!(addr = %listener.local_addr()?, tcp_cap, max_connections = state.config.max_connections, tls = tls.is_some(), "listening");
    let serving = tcp::Serving {
        router: app(state.clone()),
        gate: tcp::Gate::new(tcp_cap),
        metrics: state.metrics.clone(),
        header_timeout: state.config.header_timeout,
        stop: stop.clone(),
        tls,
    };
    let closer = host.clone();
    // Upgraded websockets are not hyper's any more: the host closes them (and flushes)
    // before the accept loop waits for every connection to end.
    let accept = tokio::spawn(tcp::serve(listener, serving, async move {
        closer.shutdown().await;
    }));
    let why = tokio::select! {
        _ = shutdown => Stop::Requested,
        _ = host.stopped() => Stop::EngineStopped,
    };
    if let Stop::EngineStopped = why {
        tracing::error!(
            "the sync engine stopped; shutting down so that a supervisor restarts the relay"
        );
    }
    stop.cancel();
    if let Err(e) = accept.await {
        tracing::error!(error = %e, "the accept loop failed");
    }
    // They hold the store (through the membership): done before `run` returns.
    for task in background {
        let _ = task.await;
    }
    store.flush()?;
    tracing::info!("stopped");
    match why {
        Stop::Requested => Ok(()),
        Stop::EngineStopped => Err(RelayError::EngineStopped),
    }
}
