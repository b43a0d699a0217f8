//! Several relays on one PostgreSQL database: how a relay learns what the others wrote.
//!
//! Every commit of a relay carries a hint (`pg_notify` in the same transaction: the
//! document id and the relay's id). A relay with that document open re-reads the keys it
//! does not know yet and syncs what they add to its peers. A hint is only a hint: it is
//! lost when the listening connection drops or this relay falls behind, so correctness
//! comes from the store. After every (re)connection of the listener the relay re-reads
//! every open document, and a sweep on a timer re-reads each open document whose stored
//! version moved since the last sweep. With `--cluster-listen false` the sweep alone
//! keeps relays in step (slower, still complete).
//!
//! Membership is a record family in the same store: a hint or a sweep that finds it
//! changed reloads it, and closes the sockets whose access the other relay took away.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_sync::ids::DocumentId;
use cairn_sync::membership::KEY_PREFIX as MEMBERSHIP;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::StoreChoice;
use crate::pg_store::{Hint, ListenerStatus, PgListener, PgStore};
use crate::AppState;

/// Hints waiting to be acted on. Past it, hints are dropped (and counted): the relay is
/// behind, and the sweep catches up. The listener never waits, so a slow relay never
/// fills PostgreSQL's notification queue (which would make every relay's commits fail).
const HINT_QUEUE: usize = 4096;

/// Time between health checks of the database (`/readyz`, `cairn_database_up`).
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Why a document is re-read (a metric label).
#[derive(Clone, Copy)]
enum Cause {
    Hint,
    Sweep,
    Reconnect,
}

impl Cause {
    fn label(self) -> &'static str {
        match self {
            Cause::Hint => "hint",
            Cause::Sweep => "sweep",
            Cause::Reconnect => "reconnect",
        }
    }
}

/// Starts the cluster tasks of a relay on PostgreSQL (none on the embedded store): the
/// listener, the follower (hints, reconnects, sweeps) and the health check. They end when
/// `stop` is cancelled.
pub(crate) fn spawn(state: &AppState, stop: CancellationToken) -> Vec<JoinHandle<()>> {
    let (Some(pg), StoreChoice::Postgres(settings)) =
        (state.store.postgres().cloned(), &state.config.store)
    else {
        return Vec::new();
    };
    let mut tasks = Vec::new();
    let (hints, rx) = mpsc::channel(HINT_QUEUE);
    let mut listening = None;
    if settings.listen {
        match PgListener::spawn(&settings.url, pg.relay_id(), hints) {
            Ok(listener) => {
                listening = Some(listener.status());
                let stopped = stop.clone();
                tasks.push(tokio::spawn(async move {
                    stopped.cancelled().await;
                    listener.stop();
                }));
            }
            Err(e) => {
                tracing::error!(error = %e, "cluster: the listener could not start; the sweep alone follows the other relays");
            }
        }
    } else {
        tracing::info!("cluster: not listening for hints (--cluster-listen false); the sweep alone follows the other relays");
        drop(hints);
    }
    tasks.push(tokio::spawn(follow(
        state.clone(),
        pg.clone(),
        Following {
            hints: rx,
            listener: listening,
            every: settings.sweep,
        },
        stop.clone(),
    )));
    tasks.push(tokio::spawn(health(state.clone(), pg, stop)));
    tasks
}

/// What the follower works from.
struct Following {
    hints: mpsc::Receiver<Hint>,
    /// The listener's counters (`None` with `--cluster-listen false`).
    listener: Option<Arc<ListenerStatus>>,
    /// Time between sweeps.
    every: Duration,
}

/// Acts on hints and reconnects, and sweeps on a timer.
async fn follow(state: AppState, pg: PgStore, mut f: Following, stop: CancellationToken) {
    let mut seen: HashMap<String, i64> = HashMap::new();
    let mut tick = tokio::time::interval(f.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listening = f.listener.is_some();
    let mut dropped = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            hint = f.hints.recv(), if listening => match hint {
                Some(Hint::Changed { doc }) => {
                    state.metrics.cluster_hints.get_or_create(&vec![("result", "taken")]).inc();
                    changed(&state, &doc, Cause::Hint).await;
                }
                Some(Hint::Reconnected) => {
                    // What was committed while nobody listened: every open document.
                    tracing::info!("cluster: listening for hints; re-reading every open document");
                    if let Ok(docs) = state.host.loaded_documents().await {
                        for doc in docs {
                            refresh(&state, doc, Cause::Reconnect).await;
                        }
                    }
                    reload_membership(&state).await;
                }
                None => listening = false,
            },
            _ = tick.tick() => {
                if let Some(status) = &f.listener {
                    let now = status.dropped_hints();
                    if now > dropped {
                        state.metrics.cluster_hints.get_or_create(&vec![("result", "dropped")]).inc_by(now - dropped);
                        dropped = now;
                    }
                }
                sweep(&state, &pg, &mut seen).await;
            }
        }
    }
}

/// One record family changed in the store (`doc` is a document id or `cairn-membership`).
async fn changed(state: &AppState, key: &str, cause: Cause) {
    if key == MEMBERSHIP {
        reload_membership(state).await;
    } else if let Ok(doc) = key.parse::<DocumentId>() {
        refresh(state, doc, cause).await;
    }
}

async fn refresh(state: &AppState, doc: DocumentId, cause: Cause) {
    if let Ok(true) = state.host.refresh(doc).await {
        state
            .metrics
            .cluster_refreshes
            .get_or_create(&vec![("cause", cause.label())])
            .inc();
    }
}

async fn reload_membership(state: &AppState) {
    if state.members.is_some() {
        if let Err(e) = crate::members::reload(state).await {
            tracing::warn!(error = ?e, "cluster: reloading the membership failed; the next sweep retries");
        }
    }
}

/// Re-reads every open document (and the membership) whose stored version moved since
/// the last sweep. A document seen for the first time is re-read once: it may have been
/// loaded just before a commit whose hint was lost.
async fn sweep(state: &AppState, pg: &PgStore, seen: &mut HashMap<String, i64>) {
    let Ok(docs) = state.host.loaded_documents().await else {
        return;
    };
    let mut keys: Vec<String> = docs.iter().map(ToString::to_string).collect();
    if state.members.is_some() {
        keys.push(MEMBERSHIP.to_owned());
    }
    let asked = keys.clone();
    let pg = pg.clone();
    let versions = match tokio::task::spawn_blocking(move || pg.document_versions(&asked)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cluster: the sweep could not read versions");
            return;
        }
        Err(_) => return,
    };
    let mut next = HashMap::with_capacity(keys.len());
    for key in keys {
        let version = versions.get(&key).copied().unwrap_or(0);
        if seen.get(&key) != Some(&version) {
            changed(state, &key, Cause::Sweep).await;
        }
        next.insert(key, version);
    }
    // Documents no longer open are forgotten: a later load reads them whole.
    *seen = next;
}

/// Pings the database every second: `/readyz` fails while it does not answer, so a load
/// balancer drains this relay; it recovers by itself when the database returns.
async fn health(state: AppState, pg: PgStore, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let p = pg.clone();
        let up = matches!(
            tokio::task::spawn_blocking(move || p.ping()).await,
            Ok(Ok(()))
        );
        let was = state.database_up.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!("cluster: the database answers again");
            } else {
                tracing::error!(
                    "cluster: the database does not answer; /readyz is 503 until it does"
                );
            }
        }
        state.metrics.database_up.set(i64::from(up));
    }
}

/// Whether the database answered the last health check (always true on the embedded store).
pub(crate) fn database_up(state: &AppState) -> bool {
    state.store.postgres().is_none() || state.database_up.load(Ordering::Relaxed)
}

/// Keeps the type used by [`AppState`] in one place.
pub(crate) type DatabaseUp = Arc<std::sync::atomic::AtomicBool>;
