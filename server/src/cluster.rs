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
//!
//! Group quotas count every relay's writes: the size of each document a hint names is
//! read from the database at once (batched), and every [`RECOUNT_EVERY_SWEEPS`] sweeps
//! the size of every stored document, which catches lost hints and serves
//! `--cluster-listen false`. The quota's other counts (documents per group, per member
//! per hour) are membership records, re-read under the cluster-wide lock before each
//! change.
//!
//! Ephemeral messages (presence, cursors) cross relays on the same channel, never
//! stored: the engine reports each one a socket sent for everyone (or for a peer not
//! connected here) as [`Event::EphemeralShared`](cairn_sync::engine::Event), the
//! [`share`] task sends them as notifications (CBOR in base64, up to
//! [`MAX_NOTIFY_PAYLOAD`] bytes; larger ones stay on this relay), and the other relays
//! deliver them to the peers they hold that may read the document. They are lossy like
//! every ephemeral message: none cross while the listener is away, or with
//! `--cluster-listen false`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_sync::engine::SharedEphemeral;
use cairn_sync::ids::DocumentId;
use cairn_sync::membership::KEY_PREFIX as MEMBERSHIP;
use ciborium::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreChoice};
use crate::metrics::Metrics;
use crate::pg_store::{
    Hint, ListenerStatus, PgListener, PgStore, EPHEMERAL_PREFIX, MAX_NOTIFY_PAYLOAD,
};
use crate::AppState;

/// Hints waiting to be acted on. Past it, hints are dropped (and counted): the relay is
/// behind, and the sweep catches up. The listener never waits, so a slow relay never
/// fills PostgreSQL's notification queue (which would make every relay's commits fail).
const HINT_QUEUE: usize = 4096;

/// Ephemeral messages waiting to go to the other relays. Past it they are dropped (and
/// counted): presence is lossy, and the engine never waits for the database.
const EPHEMERAL_QUEUE: usize = 1024;

/// Ephemeral messages sent in one statement (one round trip).
const EPHEMERAL_BATCH: usize = 128;

/// Every this many sweeps, the size of every stored document is read again (the sizes
/// group quotas count; a hint's document is read at once, this catches lost hints and
/// serves `--cluster-listen false`).
const RECOUNT_EVERY_SWEEPS: u32 = 30;

/// Hinted documents' sizes are read together, at most this often.
const SIZES_EVERY: Duration = Duration::from_millis(100);

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

/// Where the engine's observer puts ephemeral messages for the other relays.
pub(crate) type EphemeralOut = mpsc::Sender<SharedEphemeral>;

/// The [`share`] task's end of the ephemeral queue, until the task takes it.
pub(crate) type EphemeralIn = Arc<std::sync::Mutex<Option<mpsc::Receiver<SharedEphemeral>>>>;

/// The ephemeral queue of a relay that shares ephemeral messages with the other relays:
/// one on PostgreSQL that listens for hints (without the listener nothing would arrive).
pub(crate) fn ephemeral_queue(config: &Config) -> Option<(EphemeralOut, EphemeralIn)> {
    match &config.store {
        StoreChoice::Postgres(settings) if settings.listen => {
            let (tx, rx) = mpsc::channel(EPHEMERAL_QUEUE);
            Some((tx, Arc::new(std::sync::Mutex::new(Some(rx)))))
        }
        _ => None,
    }
}

/// Queues an ephemeral message for the other relays, or drops it (counted) when the
/// queue is full or it could never fit a notification (base64 makes 4 bytes of 3), so
/// the queue holds at most [`EPHEMERAL_QUEUE`] small messages. Called from the engine's
/// observer: never waits.
pub(crate) fn queue_ephemeral(out: &EphemeralOut, metrics: &Metrics, m: &SharedEphemeral) {
    if m.data.len() > MAX_NOTIFY_PAYLOAD / 4 * 3 {
        count_ephemeral(metrics, "too_large", 1);
    } else if out.try_send(m.clone()).is_err() {
        count_ephemeral(metrics, "dropped", 1);
    }
}

fn count_ephemeral(metrics: &Metrics, result: &'static str, n: u64) {
    metrics
        .cluster_ephemeral
        .get_or_create(&vec![("result", result)])
        .inc_by(n);
}

/// Starts the cluster tasks of a relay on PostgreSQL (none on the embedded store): the
/// listener, the follower (hints, reconnects, sweeps), the ephemeral sender and the
/// health check. They end when `stop` is cancelled.
pub(crate) fn spawn(state: &AppState, stop: CancellationToken) -> Vec<JoinHandle<()>> {
    let (Some(pg), StoreChoice::Postgres(settings)) =
        (state.store.postgres().cloned(), &state.config.store)
    else {
        return Vec::new();
    };
    let mut tasks = Vec::new();
    let outgoing = state
        .ephemeral_in
        .as_ref()
        .and_then(|q| q.lock().unwrap_or_else(|e| e.into_inner()).take());
    if let Some(rx) = outgoing {
        tasks.push(tokio::spawn(share(
            pg.clone(),
            rx,
            state.metrics.clone(),
            stop.clone(),
        )));
    }
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
    let mut sizes_tick = tokio::time::interval(SIZES_EVERY);
    sizes_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listening = f.listener.is_some();
    let mut dropped = 0;
    // Documents other relays changed whose sizes this relay should read (with membership:
    // its group quotas count every relay's writes).
    let quotas = state.members.is_some();
    let mut hinted: BTreeSet<String> = BTreeSet::new();
    let mut sweeps: u32 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            hint = f.hints.recv(), if listening => match hint {
                Some(Hint::Changed { doc }) => {
                    state.metrics.cluster_hints.get_or_create(&vec![("result", "taken")]).inc();
                    changed(&state, &doc, Cause::Hint).await;
                    if quotas && doc != MEMBERSHIP && hinted.len() < HINT_QUEUE {
                        hinted.insert(doc);
                    }
                }
                Some(Hint::Ephemeral { message }) => deliver(&state, &message).await,
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
                sweeps = sweeps.wrapping_add(1);
                if quotas && sweeps.is_multiple_of(RECOUNT_EVERY_SWEEPS) {
                    read_sizes(&state, &pg, None).await;
                }
            }
            _ = sizes_tick.tick(), if !hinted.is_empty() => {
                let docs: Vec<String> = std::mem::take(&mut hinted).into_iter().collect();
                read_sizes(&state, &pg, Some(docs)).await;
            }
        }
    }
}

/// Reads the stored size of `docs` (of every document with `None`) and gives them to
/// the membership's group quotas, so a group's bytes count what every relay wrote.
async fn read_sizes(state: &AppState, pg: &PgStore, docs: Option<Vec<String>>) {
    let Some(members) = &state.members else {
        return;
    };
    let cause = if docs.is_some() { "hint" } else { "recount" };
    let p = pg.clone();
    let read = tokio::task::spawn_blocking(move || match docs {
        Some(docs) => p.sizes_of(&docs),
        None => p.document_sizes(),
    })
    .await;
    let sizes = match read {
        Ok(Ok(sizes)) => sizes,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, cause, "cluster: reading document sizes failed; the next recount retries");
            return;
        }
        Err(_) => return,
    };
    let sizes: Vec<(DocumentId, u64)> = sizes
        .into_iter()
        .filter_map(|(id, bytes)| Some((id.parse().ok()?, bytes)))
        .collect();
    state
        .metrics
        .cluster_sizes
        .get_or_create(&vec![("cause", cause)])
        .inc_by(sizes.len() as u64);
    members.membership.seed_document_sizes(sizes);
}

/// Sends the queued ephemeral messages to the other relays, up to [`EPHEMERAL_BATCH`] per
/// statement. A message too large for a notification stays on this relay; a failed send
/// (the database down) drops its batch: presence is re-sent by its heartbeat.
async fn share(
    pg: PgStore,
    mut queue: mpsc::Receiver<SharedEphemeral>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            m = queue.recv() => match m {
                Some(m) => m,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < EPHEMERAL_BATCH {
            match queue.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let relay = pg.relay_id().to_owned();
        let payloads: Vec<String> = batch
            .iter()
            .filter_map(|m| notification(m, &relay))
            .collect();
        let too_large = (batch.len() - payloads.len()) as u64;
        if too_large > 0 {
            count_ephemeral(&metrics, "too_large", too_large);
        }
        let n = payloads.len() as u64;
        let p = pg.clone();
        match tokio::task::spawn_blocking(move || p.notify(payloads)).await {
            Ok(Ok(())) => count_ephemeral(&metrics, "sent", n),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, messages = n, "cluster: ephemeral messages not sent");
                count_ephemeral(&metrics, "failed", n);
            }
            Err(_) => return,
        }
    }
}

/// The notification payload of an ephemeral message: [`EPHEMERAL_PREFIX`], the message
/// (CBOR array `[doc, sender, target or null, session, count, data]` in base64), a newline
/// and this relay's id. `None` when it would pass [`MAX_NOTIFY_PAYLOAD`].
fn notification(m: &SharedEphemeral, relay: &str) -> Option<String> {
    // Base64 makes 4 bytes of 3: a payload far too large is not even encoded.
    if m.data.len() > MAX_NOTIFY_PAYLOAD {
        return None;
    }
    let value = Value::Array(vec![
        Value::Text(m.doc.to_string()),
        Value::Text(m.sender.to_string()),
        m.target
            .as_ref()
            .map_or(Value::Null, |t| Value::Text(t.to_string())),
        Value::Text(m.session_id.clone()),
        Value::Integer(m.count.into()),
        Value::Bytes(m.data.clone()),
    ]);
    let mut cbor = Vec::new();
    ciborium::into_writer(&value, &mut cbor).ok()?;
    let payload = format!(
        "{EPHEMERAL_PREFIX}{}\n{relay}",
        data_encoding::BASE64.encode(&cbor)
    );
    (payload.len() <= MAX_NOTIFY_PAYLOAD).then_some(payload)
}

/// Reads an ephemeral message another relay sent; `None` when it is not one (the
/// channel is open to every database user that may `NOTIFY`).
fn parse_ephemeral(message: &str) -> Option<SharedEphemeral> {
    let cbor = data_encoding::BASE64.decode(message.as_bytes()).ok()?;
    let Value::Array(parts) = ciborium::from_reader(cbor.as_slice()).ok()? else {
        return None;
    };
    let [doc, sender, target, session, count, data]: [Value; 6] = parts.try_into().ok()?;
    let text = |v: Value| match v {
        Value::Text(t) => Some(t),
        _ => None,
    };
    Some(SharedEphemeral {
        doc: text(doc)?.parse().ok()?,
        sender: text(sender)?.into(),
        target: match target {
            Value::Null => None,
            t => Some(text(t)?.into()),
        },
        session_id: text(session)?,
        count: match count {
            Value::Integer(n) => u64::try_from(n).ok()?,
            _ => return None,
        },
        data: match data {
            Value::Bytes(b) => b,
            _ => return None,
        },
    })
}

/// Delivers an ephemeral message another relay sent to this relay's peers of its
/// document.
async fn deliver(state: &AppState, message: &str) {
    let Some(m) = parse_ephemeral(message) else {
        count_ephemeral(&state.metrics, "malformed", 1);
        return;
    };
    count_ephemeral(&state.metrics, "received", 1);
    let doc = m.doc;
    let _ = state
        .host
        .call_doc(doc, move |e, now| e.deliver_shared_ephemeral(now, m))
        .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(data: Vec<u8>, target: Option<&str>) -> SharedEphemeral {
        SharedEphemeral {
            doc: DocumentId::from_bytes([7; 16]),
            sender: "ana/phone".into(),
            target: target.map(Into::into),
            session_id: "s1".into(),
            count: 7,
            data,
        }
    }

    #[test]
    fn an_ephemeral_message_crosses_as_a_notification_and_back() {
        for m in [
            message(b"ana is here".to_vec(), None),
            message(vec![0, 255, 10], Some("ben/laptop")),
        ] {
            let payload = notification(&m, "relay-a").unwrap();
            // What the listener hands on: the part before the relay id, prefix removed.
            let (body, relay) = payload.rsplit_once('\n').unwrap();
            assert_eq!(relay, "relay-a");
            let body = body.strip_prefix(EPHEMERAL_PREFIX).unwrap();
            assert_eq!(parse_ephemeral(body), Some(m));
        }
    }

    #[test]
    fn only_what_fits_a_notification_crosses_and_junk_is_refused() {
        // The largest payload that fits: base64 of the data plus a few dozen bytes.
        let fits = message(vec![7; 5_700], None);
        assert!(notification(&fits, "relay-a").unwrap().len() <= MAX_NOTIFY_PAYLOAD);
        assert_eq!(
            notification(&message(vec![7; 6_000], None), "relay-a"),
            None
        );
        assert_eq!(
            notification(&message(vec![7; 64 * 1024], None), "relay-a"),
            None
        );
        for junk in [
            "",
            "not base64!",
            "AAAA",
            &data_encoding::BASE64.encode(b"\x83\x01\x02\x03"),
        ] {
            assert_eq!(parse_ephemeral(junk), None, "{junk:?}");
        }
    }
}
