//! Prometheus metrics. Labels never carry ids of people, groups or documents.

use std::time::Duration;

use cairn_sync::engine::{Event, Stats};
use cairn_sync::runtime::Observer;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A metric's labels: fixed words from the engine (a `reason`, a `kind`), never an id.
type Labels = Vec<(&'static str, &'static str)>;

fn reason_label(reason: &'static str) -> Labels {
    vec![("reason", reason)]
}

/// Every metric the relay exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open websockets.
    pub sockets: Gauge,
    connections: Gauge,
    documents: Gauge,
    documents_loaded: Gauge,
    frames_in: Counter,
    frames_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    storage_batch_seconds: Histogram,
    forward_delay_seconds: Histogram,
    storage_ops: Counter,
    evictions: Counter,
    loads: Counter,
    compactions: Counter,
    rejections: Family<Labels, Counter>,
    closes: Family<Labels, Counter>,
    ephemeral_dropped: Family<Labels, Counter>,
    budget_evictions: Counter,
    loaded_ops: Gauge,
    storage_errors: Family<Labels, Counter>,
    backpressure_closes: Counter,
    /// Sockets refused at the upgrade (no or a bad credential, a rate limit, the connection
    /// cap).
    pub refused: Counter,
    /// Open TCP connections, before and after a websocket upgrade.
    pub tcp_connections: Gauge,
    /// TCP connections closed as soon as they were accepted: the TCP cap was reached.
    pub tcp_refused: Counter,
    /// Connections closed because a request's headers did not arrive in time (including
    /// idle keep-alive connections and connections that never sent a byte).
    pub header_timeouts: Counter,
    /// Websockets closed because they did not take a frame within the send timeout.
    pub send_timeouts: Counter,
    queue_bytes_closes: Counter,
    /// 1 while the sync engine runs, 0 once it has stopped.
    pub engine_up: Gauge,
    /// Credentials refused (missing, wrong, rotated or revoked).
    pub auth_failures: Counter,
    /// Calls refused by a rate limit, by `limit`.
    pub rate_limited: Family<Labels, Counter>,
    /// Membership changes, by `kind`.
    pub membership_changes: Family<Labels, Counter>,
    /// Sockets closed because their access was taken away.
    pub access_revocations: Counter,
    /// Free bytes on the data directory's filesystem (refreshed at each scrape).
    pub disk_free_bytes: Gauge,
    /// Changes and calls refused by a quota, by `quota`.
    pub quota_exceeded: Family<Labels, Counter>,
    /// Audit entries written (counted at each scrape from the log itself).
    pub audit_entries: Counter,
    /// The last audit sequence number [`Metrics::audit_entries`] has counted.
    pub audit_seen_seq: std::sync::atomic::AtomicU64,
    /// Online backups, by `result` (`ok`, `failed`).
    pub backups: Family<Labels, Counter>,
    /// When the last good backup finished (Unix seconds; 0: none since the start).
    pub last_backup_timestamp: Gauge,
    /// Deleted groups awaiting their purge.
    pub groups_pending_deletion: Gauge,
    /// With PostgreSQL: 1 while the database answers, 0 while it does not.
    pub database_up: Gauge,
    /// With PostgreSQL: the other relays' hints received, by `result` (`taken`, `dropped`
    /// while the relay was behind).
    pub cluster_hints: Family<Labels, Counter>,
    /// With PostgreSQL: re-reads of what the other relays wrote, by `cause` (`hint`,
    /// `sweep`, `reconnect`).
    pub cluster_refreshes: Family<Labels, Counter>,
    /// With PostgreSQL: ephemeral messages passed between relays, by `result` (`sent`,
    /// `received`; not passed on: `dropped` while the queue was full, `too_large` for a
    /// notification, `failed` when the database did not take them, `malformed`).
    pub cluster_ephemeral: Family<Labels, Counter>,
    /// With PostgreSQL and membership: documents whose stored size was read from the
    /// database for the group quotas, by `cause` (`hint`, `recount`).
    pub cluster_sizes: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers everything.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cairn");
        let m = Metrics {
            sockets: Gauge::default(),
            connections: Gauge::default(),
            documents: Gauge::default(),
            documents_loaded: Gauge::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            storage_batch_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // The engine's clock counts milliseconds: 1 ms to 16 s.
            forward_delay_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            storage_ops: Counter::default(),
            evictions: Counter::default(),
            loads: Counter::default(),
            compactions: Counter::default(),
            rejections: Family::default(),
            closes: Family::default(),
            ephemeral_dropped: Family::default(),
            budget_evictions: Counter::default(),
            loaded_ops: Gauge::default(),
            storage_errors: Family::default(),
            backpressure_closes: Counter::default(),
            refused: Counter::default(),
            tcp_connections: Gauge::default(),
            tcp_refused: Counter::default(),
            header_timeouts: Counter::default(),
            send_timeouts: Counter::default(),
            queue_bytes_closes: Counter::default(),
            engine_up: Gauge::default(),
            auth_failures: Counter::default(),
            rate_limited: Family::default(),
            membership_changes: Family::default(),
            access_revocations: Counter::default(),
            disk_free_bytes: Gauge::default(),
            database_up: Gauge::default(),
            cluster_hints: Family::default(),
            cluster_refreshes: Family::default(),
            cluster_ephemeral: Family::default(),
            cluster_sizes: Family::default(),
            quota_exceeded: Family::default(),
            audit_entries: Counter::default(),
            audit_seen_seq: std::sync::atomic::AtomicU64::new(0),
            backups: Family::default(),
            last_backup_timestamp: Gauge::default(),
            groups_pending_deletion: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("sockets", "Open websocket connections", m.sockets.clone());
        registry.register(
            "peers",
            "Connections that finished the handshake",
            m.connections.clone(),
        );
        registry.register(
            "documents",
            "Documents the engine tracks",
            m.documents.clone(),
        );
        registry.register(
            "documents_loaded",
            "Documents held in memory",
            m.documents_loaded.clone(),
        );
        registry.register("frames_received", "Frames received", m.frames_in.clone());
        registry.register(
            "frames_sent",
            "Frames queued for sending",
            m.frames_out.clone(),
        );
        registry.register(
            "bytes_received",
            "Bytes received in frames",
            m.bytes_in.clone(),
        );
        registry.register(
            "bytes_sent",
            "Bytes queued for sending",
            m.bytes_out.clone(),
        );
        registry.register(
            "forward_delay_seconds",
            "From a member's change arriving to the relay passing it on to the document's other peers (its write included), in the engine's millisecond clock",
            m.forward_delay_seconds.clone(),
        );
        registry.register(
            "storage_batch_seconds",
            "Time to run one storage batch including its flush",
            m.storage_batch_seconds.clone(),
        );
        registry.register(
            "storage_ops",
            "Storage operations run",
            m.storage_ops.clone(),
        );
        registry.register(
            "evictions",
            "Idle documents dropped from memory",
            m.evictions.clone(),
        );
        registry.register(
            "document_loads",
            "Documents loaded from storage",
            m.loads.clone(),
        );
        registry.register(
            "compactions",
            "Documents compacted into a snapshot",
            m.compactions.clone(),
        );
        registry.register(
            "rejections",
            "Documents refused to a peer (doc-unavailable), by reason",
            m.rejections.clone(),
        );
        registry.register(
            "closes",
            "Connections the engine closed, by reason",
            m.closes.clone(),
        );
        registry.register(
            "ephemeral_dropped",
            "Ephemeral messages not forwarded, by reason",
            m.ephemeral_dropped.clone(),
        );
        registry.register(
            "budget_evictions",
            "Documents evicted before they were idle because loaded documents passed --max-loaded-ops",
            m.budget_evictions.clone(),
        );
        registry.register(
            "loaded_ops",
            "Automerge operations held by the documents in memory",
            m.loaded_ops.clone(),
        );
        registry.register(
            "storage_errors",
            "Failed storage operations by kind (disk_full, io, corrupt, closed); a disk_full \
             write is a change refused to its peer",
            m.storage_errors.clone(),
        );
        registry.register(
            "backpressure_closes",
            "Connections closed because their outbound queue was full",
            m.backpressure_closes.clone(),
        );
        registry.register("refused", "Websocket upgrades refused", m.refused.clone());
        registry.register(
            "tcp_connections",
            "Open TCP connections, before and after a websocket upgrade",
            m.tcp_connections.clone(),
        );
        registry.register(
            "tcp_refused",
            "TCP connections closed at once because the TCP connection cap was reached",
            m.tcp_refused.clone(),
        );
        registry.register(
            "header_timeouts",
            "Connections closed because request headers did not arrive within the header timeout",
            m.header_timeouts.clone(),
        );
        registry.register(
            "send_timeouts",
            "Websockets closed because they did not take a frame within the send timeout",
            m.send_timeouts.clone(),
        );
        registry.register(
            "queue_bytes_closes",
            "Connections closed because their outbound queue would pass its byte bound",
            m.queue_bytes_closes.clone(),
        );
        registry.register(
            "engine_up",
            "1 while the sync engine runs, 0 once it has stopped (the relay then exits)",
            m.engine_up.clone(),
        );
        registry.register(
            "auth_failures",
            "Credentials refused: missing, wrong, rotated or revoked",
            m.auth_failures.clone(),
        );
        registry.register(
            "rate_limited",
            "Calls refused with 429 by a rate limit, by limit",
            m.rate_limited.clone(),
        );
        registry.register(
            "membership_changes",
            "Membership changes committed, by kind",
            m.membership_changes.clone(),
        );
        registry.register(
            "access_revocations",
            "Sockets closed because a membership change took their access away",
            m.access_revocations.clone(),
        );
        registry.register(
            "disk_free_bytes",
            "Free bytes on the data directory's filesystem (for unprivileged users)",
            m.disk_free_bytes.clone(),
        );
        // The same counts as `rejections`, under the name operators look for: changes the
        // relay refused, by reason (too_large, group_quota, disk_full, ...).
        registry.register(
            "refused_changes",
            "Documents or changes refused to a peer, by reason (same counts as cairn_rejections)",
            m.rejections.clone(),
        );
        registry.register(
            "quota_exceeded",
            "Changes and calls refused by a quota, by quota",
            m.quota_exceeded.clone(),
        );
        registry.register(
            "audit_entries",
            "Audit entries written (membership changes, credential failures, backups, operator actions)",
            m.audit_entries.clone(),
        );
        registry.register("backups", "Online backups, by result", m.backups.clone());
        registry.register(
            "last_backup_timestamp_seconds",
            "Unix time the last good online backup finished (0: none since the relay started)",
            m.last_backup_timestamp.clone(),
        );
        registry.register(
            "groups_pending_deletion",
            "Deleted groups awaiting their purge at the end of the grace period",
            m.groups_pending_deletion.clone(),
        );
        registry.register(
            "database_up",
            "With PostgreSQL: 1 while the database answers, 0 while it does not (/readyz is then 503)",
            m.database_up.clone(),
        );
        registry.register(
            "cluster_hints",
            "With PostgreSQL: other relays' change hints, by result (taken, dropped)",
            m.cluster_hints.clone(),
        );
        registry.register(
            "cluster_refreshes",
            "With PostgreSQL: re-reads of documents the other relays wrote, by cause (hint, sweep, reconnect)",
            m.cluster_refreshes.clone(),
        );
        registry.register(
            "cluster_ephemeral",
            "With PostgreSQL: ephemeral messages passed between relays, by result (sent, received, dropped, too_large, failed, malformed)",
            m.cluster_ephemeral.clone(),
        );
        registry.register(
            "cluster_sizes",
            "With PostgreSQL and membership: documents whose stored size was read for the group quotas, by cause (hint, recount)",
            m.cluster_sizes.clone(),
        );
        // Up until the host says otherwise: the gauge is refreshed on every scrape.
        m.engine_up.set(1);
        Metrics { registry, ..m }
    }

    /// Counts a refusal by `quota` (a fixed word: `documents_per_group`,
    /// `documents_per_member_per_hour`, `bytes_per_group`, ...).
    pub fn quota_exceeded(&self, quota: &'static str) {
        self.quota_exceeded
            .get_or_create(&vec![("quota", quota)])
            .inc();
    }

    /// Sets the gauges that come from the engine.
    pub fn set_stats(&self, s: Stats) {
        self.loaded_ops
            .set(i64::try_from(s.loaded_ops).unwrap_or(i64::MAX));
        self.connections.set(s.connections as i64);
        self.documents.set(s.documents as i64);
        self.documents_loaded.set(s.documents_loaded as i64);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// An observer that feeds these metrics from the engine host, and passes the
    /// ephemeral messages the engine shares to `share` (a relay of a cluster).
    pub(crate) fn observer(
        self: &std::sync::Arc<Self>,
        share: Option<crate::cluster::EphemeralOut>,
    ) -> Box<dyn Observer> {
        Box::new(MetricsObserver(self.clone(), share))
    }
}

struct MetricsObserver(
    std::sync::Arc<Metrics>,
    Option<crate::cluster::EphemeralOut>,
);

impl Observer for MetricsObserver {
    fn event(&mut self, event: &Event) {
        let m = &self.0;
        match event {
            Event::EphemeralShared(message) => {
                if let Some(share) = &self.1 {
                    crate::cluster::queue_ephemeral(share, m, message);
                }
            }
            Event::DocumentEvicted { .. } => {
                m.evictions.inc();
            }
            Event::DocumentLoaded { .. } => {
                m.loads.inc();
            }
            Event::Compacted { .. } => {
                m.compactions.inc();
            }
            Event::DocumentRejected { reason, .. } => {
                m.rejections
                    .get_or_create(&reason_label(reason.label()))
                    .inc();
                if reason.label() == "group_quota" {
                    m.quota_exceeded
                        .get_or_create(&vec![("quota", "bytes_per_group")])
                        .inc();
                }
            }
            Event::ConnectionClosed { reason, .. } => {
                m.closes.get_or_create(&reason_label(reason.label())).inc();
            }
            Event::EphemeralDropped { reason, .. } => {
                m.ephemeral_dropped
                    .get_or_create(&reason_label(reason.label()))
                    .inc();
            }
            Event::ChangesForwarded { waited, .. } => {
                m.forward_delay_seconds.observe(waited.as_secs_f64());
            }
            Event::BudgetEviction { documents } => {
                m.budget_evictions.inc_by(*documents as u64);
            }
            Event::StorageFailed { doc, error } => {
                m.storage_errors
                    .get_or_create(&vec![("kind", error.label())])
                    .inc();
                tracing::error!(doc = ?doc.map(|d| d.to_string()), error = %error, disk_full = error.is_disk_full(), "storage failed");
            }
            _ => {}
        }
    }
    fn storage_batch(&mut self, ops: usize, _writes: usize, elapsed: Duration) {
        self.0.storage_ops.inc_by(ops as u64);
        self.0.storage_batch_seconds.observe(elapsed.as_secs_f64());
    }
    fn frame_out(&mut self, bytes: usize) {
        self.0.frames_out.inc();
        self.0.bytes_out.inc_by(bytes as u64);
    }
    fn frame_in(&mut self, bytes: usize) {
        self.0.frames_in.inc();
        self.0.bytes_in.inc_by(bytes as u64);
    }
    fn backpressure_close(&mut self) {
        self.0.backpressure_closes.inc();
    }
    fn queue_bytes_close(&mut self) {
        self.0.queue_bytes_closes.inc();
    }
}
