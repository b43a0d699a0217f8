use super::*;
use crate::engine::{EngineConfig, Role};
use crate::ids::{DocumentId, PeerId};
use crate::store::{MemoryStore, StorageKey};
use crate::wire::{DocMessage, Message, PeerMetadata};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts closes: (frame bound, byte bound).
#[derive(Clone, Default)]
struct Closes(Arc<AtomicUsize>, Arc<AtomicUsize>);
impl Observer for Closes {
    fn event(&mut self, _: &Event) {}
    fn backpressure_close(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn queue_bytes_close(&mut self) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}
impl Closes {
    fn frames(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
    fn bytes(&self) -> usize {
        self.1.load(Ordering::SeqCst)
    }
    /// Waits (bounded) until some close was counted.
    async fn wait_any(&self) {
        for _ in 0..500 {
            if self.frames() + self.bytes() > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn relay_host(observer: Closes, config: HostConfig) -> Host {
    let store = Arc::new(MemoryStore::default());
    let engine = Engine::new(EngineConfig::new(Role::Relay, PeerId::from("relay"), 1));
    Host::start(engine, store, Box::new(observer), config)
}

fn join() -> Vec<u8> {
    join_as("p")
}

fn join_as(peer: &str) -> Vec<u8> {
    Message::Join {
        sender_id: peer.into(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    }
    .encode()
}

/// A request for an unknown document: the relay answers each one (after a load).
fn request(i: u8) -> Vec<u8> {
    use automerge::sync::SyncDoc;
    let empty = automerge::Automerge::new();
    Message::Request(DocMessage {
        sender_id: "p".into(),
        target_id: "relay".into(),
        document_id: DocumentId::from_bytes([i; 16]),
        data: empty
            .generate_sync_message(&mut automerge::sync::State::new())
            .unwrap()
            .encode(),
    })
    .encode()
}

/// Takes everything left in the queue: the frames' lengths, until the queue ends.
async fn drain(outbound: &mut OutboundQueue) -> Vec<usize> {
    let mut got = Vec::new();
    while let Some(Outbound::Frame(f)) = outbound.recv().await {
        Message::decode(&f).expect("a whole protocol message");
        got.push(f.len());
    }
    got
}

#[tokio::test]
async fn a_reader_that_holds_too_many_bytes_is_closed_not_dropped_frames() {
    const BOUND: usize = 600;
    let closes = Closes::default();
    let host = relay_host(
        closes.clone(),
        HostConfig {
            outbound_queue_bytes: BOUND,
            ..HostConfig::default()
        },
    );
    let mut handle = host.open(Direction::Incoming, None).await.unwrap();
    handle.input.frame(join()).await.unwrap();
    // Twenty answers are far more than BOUND bytes and far fewer than the frame bound.
    for i in 0..20u8 {
        let _ = handle.input.frame(request(i)).await;
    }
    closes.wait_any().await;
    assert_eq!((closes.frames(), closes.bytes()), (0, 1));
    let got = drain(&mut handle.outbound).await;
    let total: usize = got.iter().sum();
    assert!(
        got.len() < 21,
        "every answer was queued: {got:?} bytes (bound {BOUND})"
    );
    assert!(
        total <= BOUND,
        "{total} bytes were queued past the {BOUND}-byte bound: {got:?}"
    );
    assert_eq!(handle.outbound.queued_bytes(), 0);
    host.shutdown().await;
}

#[tokio::test]
async fn a_frame_larger_than_the_byte_bound_goes_into_an_empty_queue_only() {
    let closes = Closes::default();
    let host = relay_host(
        closes.clone(),
        HostConfig {
            // Every protocol message is larger than this.
            outbound_queue_bytes: 1,
            ..HostConfig::default()
        },
    );
    let mut handle = host.open(Direction::Incoming, None).await.unwrap();
    handle.input.frame(join()).await.unwrap();
    let Some(Outbound::Frame(peer)) = handle.outbound.recv().await else {
        panic!("the handshake answer was not delivered");
    };
    assert_eq!(Message::decode(&peer).unwrap().kind(), "peer");
    // Taken as it comes: each answer finds the queue empty.
    handle.input.frame(request(1)).await.unwrap();
    assert!(matches!(
        handle.outbound.recv().await,
        Some(Outbound::Frame(_))
    ));
    // Not taken: the first answer fills the queue, the second closes the connection.
    handle.input.frame(request(2)).await.unwrap();
    handle.input.frame(request(3)).await.unwrap();
    closes.wait_any().await;
    assert_eq!((closes.frames(), closes.bytes()), (0, 1));
    assert_eq!(drain(&mut handle.outbound).await.len(), 1);
    host.shutdown().await;
}

#[tokio::test]
async fn an_engine_panic_is_reported_and_a_shutdown_is_not() {
    let host = relay_host(Closes::default(), HostConfig::default());
    assert!(host.is_running());
    let handle = host.open(Direction::Incoming, None).await.unwrap();
    let panicked = host.call::<()>(|_, _| panic!("a bug in the engine")).await;
    assert!(panicked.is_err(), "the call returned after a panic");
    tokio::time::timeout(Duration::from_secs(10), host.stopped())
        .await
        .expect("`stopped` resolves after the engine panicked");
    assert!(!host.is_running());
    // The connection's queue ends, so its writer closes the socket.
    let mut outbound = handle.outbound;
    assert!(outbound.recv().await.is_none());
    assert!(host.call(|e, _| e.stats()).await.is_err());

    let host = relay_host(Closes::default(), HostConfig::default());
    host.shutdown().await;
    for _ in 0..500 {
        if !host.is_running() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!host.is_running());
    tokio::select! {
        biased;
        _ = host.stopped() => panic!("a requested shutdown was reported as a failure"),
        _ = tokio::task::yield_now() => {}
    }
}

#[tokio::test]
async fn a_reader_that_falls_behind_is_closed_not_dropped_frames() {
    let closes = Closes::default();
    let host = relay_host(
        closes.clone(),
        HostConfig {
            outbound_queue: 4,
            ..HostConfig::default()
        },
    );
    let handle = host.open(Direction::Incoming, None).await.unwrap();
    handle.input.frame(join()).await.unwrap();
    // Each request for an unknown document is answered; nobody reads the answers.
    for i in 0..20u8 {
        let _ = handle.input.frame(request(i)).await;
    }
    // Answers come once each load finishes on the storage thread.
    for _ in 0..500 {
        if closes.frames() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((closes.frames(), closes.bytes()), (1, 0));
    // What was queued is delivered in full and in order, then the queue ends.
    let mut outbound = handle.outbound;
    let mut got = Vec::new();
    while let Some(Outbound::Frame(f)) = outbound.recv().await {
        got.push(Message::decode(&f).unwrap().kind().to_owned());
    }
    assert_eq!(got.first().map(String::as_str), Some("peer"));
    assert_eq!(got.len(), 4);
    host.shutdown().await;
}

/// How [`Gated`]'s flush behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlushMode {
    Succeed,
    /// Fails with "no space left on device".
    Fail,
    /// Waits until the mode changes.
    Block,
}

/// A memory store whose writes are readable at once (as sled's are) and whose flush the
/// test controls.
#[derive(Default)]
struct Gated {
    inner: MemoryStore,
    mode: std::sync::Mutex<Option<FlushMode>>,
    changed: std::sync::Condvar,
    in_flush: AtomicUsize,
}

impl Gated {
    fn set(&self, mode: FlushMode) {
        *self.mode.lock().unwrap() = Some(mode);
        self.changed.notify_all();
    }
}

impl Storage for Gated {
    fn load(&self, key: &[String]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.load(key)
    }
    fn load_range(&self, p: &[String]) -> Result<Vec<(StorageKey, Vec<u8>)>, StoreError> {
        self.inner.load_range(p)
    }
    fn put(&self, key: &[String], data: &[u8]) -> Result<(), StoreError> {
        self.inner.put(key, data)
    }
    fn delete(&self, key: &[String]) -> Result<(), StoreError> {
        self.inner.delete(key)
    }
    fn flush(&self) -> Result<(), StoreError> {
        let mut mode = self.mode.lock().unwrap();
        self.in_flush.fetch_add(1, Ordering::SeqCst);
        while *mode == Some(FlushMode::Block) {
            mode = self.changed.wait(mode).unwrap();
        }
        match *mode {
            Some(FlushMode::Fail) => Err(StoreError::Io(std::io::Error::from_raw_os_error(28))),
            _ => Ok(()),
        }
    }
}

/// A peer's sync message carrying one new change, and that change's hash.
fn one_change(doc: DocumentId) -> (Vec<u8>, automerge::ChangeHash) {
    use automerge::sync::SyncDoc;
    use automerge::transaction::Transactable;
    let mut am = automerge::Automerge::new();
    let mut tx = am.transaction();
    tx.put(automerge::ROOT, "agenda", "check-in").unwrap();
    tx.commit();
    let hash = am.get_heads()[0];
    let mut state = automerge::sync::State::new();
    // Tell the sender the relay has nothing, so the first message carries the change.
    let empty = automerge::Automerge::new();
    let mut theirs = automerge::sync::State::new();
    let hello = empty.generate_sync_message(&mut theirs).unwrap();
    am.receive_sync_message(&mut state, hello).unwrap();
    let data = am.generate_sync_message(&mut state).unwrap().encode();
    let frame = Message::Request(DocMessage {
        sender_id: "p".into(),
        target_id: "relay".into(),
        document_id: doc,
        data,
    })
    .encode();
    (frame, hash)
}

/// Whether a frame is a sync message from the relay whose heads include `hash`.
fn reveals(frame: &[u8], hash: &automerge::ChangeHash) -> bool {
    match Message::decode(frame) {
        Ok(Message::Sync(d)) | Ok(Message::Request(d)) => {
            automerge::sync::Message::decode(&d.data).is_ok_and(|m| m.heads.contains(hash))
        }
        _ => false,
    }
}

/// Every frame queued right now (the engine has handled everything sent before).
async fn queued_now(host: &Host, outbound: &mut OutboundQueue) -> Vec<Vec<u8>> {
    host.call_all(|_, _| ()).await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(Outbound::Frame(f))) =
        tokio::time::timeout(Duration::from_millis(20), outbound.recv()).await
    {
        got.push(f);
    }
    got
}

fn gated_host(store: Arc<Gated>) -> Host {
    sharded_host(store, 1)
}

/// A relay host over `store` with `shards` document shards (1: a single task).
fn sharded_host(store: Arc<dyn Storage>, shards: usize) -> Host {
    Host::start_sharded(
        &tokio::runtime::Handle::current(),
        shards,
        |i| {
            Engine::new(EngineConfig::new(
                Role::Relay,
                PeerId::from("relay"),
                i as u64 + 1,
            ))
        },
        store,
        |_| Box::new(Closes::default()),
        HostConfig::default(),
    )
}

/// Exclusive work (a backup) sees every write acknowledged before it, and a write
/// issued while it runs waits behind it (it is neither applied nor refused meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_work_sees_acknowledged_writes_and_holds_later_ones() {
    let store = Arc::new(Gated::default());
    let host = gated_host(store.clone());
    let writer = host.storage_writer();
    let key = |s: &str| -> StorageKey { vec!["cairn-membership".into(), "t".into(), s.into()] };
    let (w, k) = (writer.clone(), key("before"));
    tokio::task::spawn_blocking(move || w.write_batch(&[(k, Some(b"1".to_vec()))]))
        .await
        .unwrap()
        .unwrap();
    let (entered_tx, entered) = std_mpsc::channel::<()>();
    let (release, release_rx) = std_mpsc::channel::<()>();
    let (s, k) = (store.clone(), key("before"));
    let work = tokio::spawn(host.exclusive(move || {
        let saw = s.load(&k).unwrap();
        entered_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        saw
    }));
    entered
        .recv_timeout(Duration::from_secs(10))
        .expect("the exclusive work runs");
    let (w, k) = (writer.clone(), key("during"));
    let pending = std::thread::spawn(move || w.write_batch(&[(k, Some(b"2".to_vec()))]));
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !pending.is_finished(),
        "a write finished during exclusive work"
    );
    assert_eq!(store.inner.load(&key("during")).unwrap(), None);
    release.send(()).unwrap();
    assert_eq!(work.await.unwrap().unwrap(), Some(b"1".to_vec()));
    pending
        .join()
        .unwrap()
        .expect("the held write goes through after it");
    assert_eq!(
        store.inner.load(&key("during")).unwrap(),
        Some(b"2".to_vec())
    );
    host.shutdown().await;
}

/// A write through `storage_writer` (membership records) returns only once the storage
/// thread's flush has succeeded, and a failed flush reaches the writer as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_write_returns_only_after_its_flush() {
    let store = Arc::new(Gated::default());
    let host = gated_host(store.clone());
    let writer = host.storage_writer();
    store.set(FlushMode::Block);
    let key: StorageKey = vec!["cairn-membership".into(), "device".into(), "a".into()];
    let w = writer.clone();
    let k = key.clone();
    let pending = std::thread::spawn(move || w.write_batch(&[(k, Some(b"one".to_vec()))]));
    while store.in_flush.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !pending.is_finished(),
        "returned while its flush was blocked"
    );
    store.set(FlushMode::Fail);
    assert!(pending.join().unwrap().unwrap_err().is_disk_full());
    store.set(FlushMode::Succeed);
    let w = writer.clone();
    let k = key.clone();
    tokio::task::spawn_blocking(move || w.write_batch(&[(k, Some(b"two".to_vec()))]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(writer.load(&key).unwrap(), Some(b"two".to_vec()));
    host.shutdown().await;
    let w = writer.clone();
    let after = tokio::task::spawn_blocking(move || w.write_batch(&[(key, None)]))
        .await
        .unwrap();
    assert!(matches!(after, Err(StoreError::Closed)), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_frame_reveals_a_change_while_its_flush_blocks() {
    no_frame_reveals_a_change_while_its_flush_blocks_with(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_frame_reveals_a_change_while_its_flush_blocks_on_a_sharded_host() {
    no_frame_reveals_a_change_while_its_flush_blocks_with(3).await;
}

async fn no_frame_reveals_a_change_while_its_flush_blocks_with(shards: usize) {
    let store = Arc::new(Gated::default());
    let host = sharded_host(store.clone(), shards);
    let mut handle = host.open(Direction::Incoming, None).await.unwrap();
    handle.input.frame(join()).await.unwrap();
    let doc = DocumentId::from_bytes([7; 16]);
    let (frame, hash) = one_change(doc);
    store.set(FlushMode::Block);
    handle.input.frame(frame).await.unwrap();
    for _ in 0..1000 {
        if store.in_flush.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        store.in_flush.load(Ordering::SeqCst) > 0,
        "the write never reached flush"
    );
    let early = queued_now(&host, &mut handle.outbound).await;
    assert!(
        !early.iter().any(|f| reveals(f, &hash)),
        "a frame revealed the change while its flush was still running"
    );
    store.set(FlushMode::Succeed);
    let mut revealed = false;
    for _ in 0..200 {
        let frames = queued_now(&host, &mut handle.outbound).await;
        if frames.iter().any(|f| reveals(f, &hash)) {
            revealed = true;
            break;
        }
    }
    assert!(revealed, "the change was never acknowledged once durable");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_flush_failed_is_not_revealed_by_a_reload() {
    a_change_whose_flush_failed_is_not_revealed_by_a_reload_with(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_flush_failed_is_not_revealed_by_a_reload_on_a_sharded_host() {
    a_change_whose_flush_failed_is_not_revealed_by_a_reload_with(3).await;
}

async fn a_change_whose_flush_failed_is_not_revealed_by_a_reload_with(shards: usize) {
    let store = Arc::new(Gated::default());
    let host = sharded_host(store.clone(), shards);
    let doc = DocumentId::from_bytes([8; 16]);
    let (frame, hash) = one_change(doc);
    store.set(FlushMode::Fail);
    let mut writer = host.open(Direction::Incoming, None).await.unwrap();
    writer.input.frame(join()).await.unwrap();
    writer.input.frame(frame).await.unwrap();
    // The write fails: the writer's connection is closed (its peer resends later) and
    // nothing it received revealed the change.
    let mut seen = Vec::new();
    while let Ok(Some(Outbound::Frame(f))) =
        tokio::time::timeout(Duration::from_secs(10), writer.outbound.recv()).await
    {
        seen.push(f);
    }
    assert!(!seen.iter().any(|f| reveals(f, &hash)));
    // The change is still readable in the store's memory, as it is in sled's; a second
    // peer asking for the document must not get it while the disk is still full.
    assert!(!store.inner.keys().is_empty());
    let mut reader = host.open(Direction::Incoming, None).await.unwrap();
    reader.input.frame(join()).await.unwrap();
    reader.input.frame(request_for(doc)).await.unwrap();
    // The read fails (the flush it retries fails): the reader's connection is closed,
    // so its peer redials and asks again, and nothing it got revealed the change.
    let mut answer = Vec::new();
    let mut closed = false;
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_millis(100), reader.outbound.recv()).await {
            Ok(Some(Outbound::Frame(f))) => answer.push(f),
            Ok(Some(_)) => {}
            Ok(None) => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(
        !answer.iter().any(|f| reveals(f, &hash)),
        "a reload revealed an unflushed change"
    );
    assert!(closed, "the reader was neither answered nor closed");
    // Space again: the next flush makes the change durable, and then it may be served.
    store.set(FlushMode::Succeed);
    let mut later = host.open(Direction::Incoming, None).await.unwrap();
    later.input.frame(join()).await.unwrap();
    later.input.frame(request_for(doc)).await.unwrap();
    let mut revealed = false;
    for _ in 0..200 {
        if queued_now(&host, &mut later.outbound)
            .await
            .iter()
            .any(|f| reveals(f, &hash))
        {
            revealed = true;
            break;
        }
    }
    assert!(
        revealed,
        "the change was not served once the disk had room again"
    );
    host.shutdown().await;
}

fn request_for(doc: DocumentId) -> Vec<u8> {
    use automerge::sync::SyncDoc;
    let empty = automerge::Automerge::new();
    Message::Request(DocMessage {
        sender_id: "p".into(),
        target_id: "relay".into(),
        document_id: doc,
        data: empty
            .generate_sync_message(&mut automerge::sync::State::new())
            .unwrap()
            .encode(),
    })
    .encode()
}

// ---------------------------------------------------------------- sharded host

/// Documents spread over every one of `shards` shards (the first ids that reach each).
fn docs_on_every_shard(shards: usize) -> Vec<DocumentId> {
    let mut docs: Vec<DocumentId> = Vec::new();
    for i in 1..=255u8 {
        let doc = DocumentId::from_bytes([i; 16]);
        if !docs
            .iter()
            .any(|d| document_shard(d, shards) == document_shard(&doc, shards))
        {
            docs.push(doc);
        }
        if docs.len() == shards {
            break;
        }
    }
    assert_eq!(docs.len(), shards, "some shard got no document");
    docs
}

/// Waits (bounded) until a frame revealing `hash` arrives; false on timeout.
async fn revealed(host: &Host, outbound: &mut OutboundQueue, hash: &automerge::ChangeHash) -> bool {
    for _ in 0..200 {
        if queued_now(host, outbound)
            .await
            .iter()
            .any(|f| reveals(f, hash))
        {
            return true;
        }
    }
    false
}

/// Two connections sync documents held by different shards: each change one peer
/// sends is served to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_sync_documents_through_shards() {
    let host = sharded_host(Arc::new(MemoryStore::default()), 3);
    assert_eq!(host.shards(), 3);
    let mut writer = host.open(Direction::Incoming, None).await.unwrap();
    writer.input.frame(join_as("w")).await.unwrap();
    let mut reader = host.open(Direction::Incoming, None).await.unwrap();
    reader.input.frame(join_as("r")).await.unwrap();
    for doc in docs_on_every_shard(3) {
        let (frame, hash) = one_change(doc);
        writer.input.frame(frame).await.unwrap();
        assert!(
            revealed(&host, &mut writer.outbound, &hash).await,
            "the writer's change was not acknowledged"
        );
        reader.input.frame(request_for(doc)).await.unwrap();
        assert!(
            revealed(&host, &mut reader.outbound, &hash).await,
            "the reader was not served the change"
        );
    }
    let stats = host.stats().await.unwrap();
    assert_eq!((stats.connections, stats.documents), (2, 3));
    host.shutdown().await;
}

/// A takeover (the same peer joins again) closes the old socket on every task: its
/// queue ends, which happens only once every task let go of it, and a document
/// message sent on it afterwards gets nothing back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_closes_the_old_socket_on_every_shard() {
    let host = sharded_host(Arc::new(MemoryStore::default()), 3);
    let docs = docs_on_every_shard(3);
    let mut old = host.open(Direction::Incoming, None).await.unwrap();
    old.input.frame(join()).await.unwrap();
    for doc in &docs {
        old.input.frame(request_for(*doc)).await.unwrap();
    }
    let mut new = host.open(Direction::Incoming, None).await.unwrap();
    new.input.frame(join()).await.unwrap();
    for doc in &docs {
        old.input.frame(request_for(*doc)).await.unwrap();
    }
    let mut closed = None;
    let mut after_close = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), old.outbound.recv()).await {
            Ok(Some(Outbound::Close(reason))) => closed = Some(reason),
            Ok(Some(Outbound::Frame(_))) if closed.is_some() => after_close += 1,
            Ok(Some(Outbound::Frame(_))) => {}
            Ok(None) => break,
            Err(_) => panic!("the old socket's queue never ended: a task still holds it"),
        }
    }
    assert_eq!(closed, Some(CloseReason::Replaced));
    assert_eq!(after_close, 0, "frames were queued behind the close");
    // The new socket is served on every shard.
    for doc in &docs {
        let (frame, hash) = one_change(*doc);
        new.input.frame(frame).await.unwrap();
        assert!(revealed(&host, &mut new.outbound, &hash).await);
    }
    assert_eq!(host.stats().await.unwrap().connections, 1);
    host.shutdown().await;
}

/// A join and a sync sent back to back: the sync waits for the door's verdict and
/// reaches the document's shard (the door holds no document).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_right_behind_a_join_reaches_the_documents_shard() {
    let host = sharded_host(Arc::new(MemoryStore::default()), 3);
    let doc = DocumentId::from_bytes([9; 16]);
    let (frame, hash) = one_change(doc);
    let mut handle = host.open(Direction::Incoming, None).await.unwrap();
    handle.input.frame(join()).await.unwrap();
    handle.input.frame(frame).await.unwrap();
    assert!(revealed(&host, &mut handle.outbound, &hash).await);
    assert_eq!(host.call(|e, _| e.stats().documents).await.unwrap(), 0);
    assert_eq!(
        host.call_doc(doc, |e, _| e.stats().documents)
            .await
            .unwrap(),
        1
    );
    // A refused join closes the connection, and what follows it is dropped unread.
    let mut refused = host.open(Direction::Incoming, None).await.unwrap();
    refused.input.frame(join_as("relay")).await.unwrap();
    refused.input.frame(request_for(doc)).await.unwrap();
    let mut kinds = Vec::new();
    while let Ok(Some(Outbound::Frame(f))) =
        tokio::time::timeout(Duration::from_secs(10), refused.outbound.recv()).await
    {
        kinds.push(Message::decode(&f).unwrap().kind().to_owned());
    }
    assert_eq!(kinds, ["error"]);
    host.shutdown().await;
}

/// A panic in one task stops the whole host: reported, and every socket's queue ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_shard_stops_every_task() {
    let host = sharded_host(Arc::new(MemoryStore::default()), 2);
    let mut handle = host.open(Direction::Incoming, None).await.unwrap();
    handle.input.frame(join()).await.unwrap();
    let doc = DocumentId::from_bytes([3; 16]);
    let panicked = host
        .call_doc::<()>(doc, |_, _| panic!("a bug in the engine"))
        .await;
    assert!(panicked.is_err());
    tokio::time::timeout(Duration::from_secs(10), host.stopped())
        .await
        .expect("`stopped` resolves after a shard panicked");
    assert!(!host.is_running());
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while handle.outbound.recv().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "a socket stayed open after a shard panicked");
}

#[test]
fn documents_land_on_a_fixed_shard() {
    let doc = DocumentId::from_bytes([1; 16]);
    assert_eq!(document_shard(&doc, 1), 0);
    let a: Vec<usize> = (0..64u8)
        .map(|i| document_shard(&DocumentId::from_bytes([i; 16]), 4))
        .collect();
    assert!(a.iter().all(|s| *s < 4));
    assert!(
        (0..4).all(|s| a.contains(&s)),
        "a shard got none of 64 documents"
    );
    assert_eq!(document_shard(&doc, 4), document_shard(&doc, 4));
}

// ---------------------------------------------------------------- hosts sharing a store

/// A writer's document with `n` changes: for each, a sync message (to a relay that has
/// none of them) carrying every change up to it, and that change's hash.
fn changes(doc: DocumentId, n: usize) -> Vec<(Vec<u8>, automerge::ChangeHash)> {
    use automerge::sync::SyncDoc;
    use automerge::transaction::Transactable;
    let mut am = automerge::Automerge::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut tx = am.transaction();
        tx.put(automerge::ROOT, format!("item{i}"), "check-in")
            .unwrap();
        tx.commit();
        let hash = am.get_heads()[0];
        let mut state = automerge::sync::State::new();
        let empty = automerge::Automerge::new();
        let hello = empty
            .generate_sync_message(&mut automerge::sync::State::new())
            .unwrap();
        am.receive_sync_message(&mut state, hello).unwrap();
        let data = am.generate_sync_message(&mut state).unwrap().encode();
        let frame = Message::Sync(DocMessage {
            sender_id: "w".into(),
            target_id: "relay".into(),
            document_id: doc,
            data,
        })
        .encode();
        out.push((frame, hash));
    }
    out
}

/// Two relays (two shards each) on one store: a change a phone sends to relay A reaches a
/// phone syncing the document through relay B once B refreshes it, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_brings_what_another_host_stored_to_this_hosts_phones() {
    let store: Arc<dyn Storage> = Arc::new(MemoryStore::default());
    let (a, b) = (sharded_host(store.clone(), 2), sharded_host(store, 2));
    let doc = DocumentId::from_bytes([7; 16]);
    let changes = changes(doc, 2);
    let mut writer = a.open(Direction::Incoming, None).await.unwrap();
    writer.input.frame(join_as("w")).await.unwrap();
    let mut reader = b.open(Direction::Incoming, None).await.unwrap();
    reader.input.frame(join_as("r")).await.unwrap();

    writer.input.frame(changes[0].0.clone()).await.unwrap();
    assert!(revealed(&a, &mut writer.outbound, &changes[0].1).await);
    reader.input.frame(request_for(doc)).await.unwrap();
    assert!(
        revealed(&b, &mut reader.outbound, &changes[0].1).await,
        "relay b did not load what relay a stored"
    );
    assert_eq!(b.loaded_documents().await.unwrap(), vec![doc]);

    writer.input.frame(changes[1].0.clone()).await.unwrap();
    assert!(revealed(&a, &mut writer.outbound, &changes[1].1).await);
    assert!(
        !queued_now(&b, &mut reader.outbound)
            .await
            .iter()
            .any(|f| reveals(f, &changes[1].1)),
        "relay b cannot know of it yet"
    );
    assert!(b.refresh(doc).await.unwrap());
    assert!(
        revealed(&b, &mut reader.outbound, &changes[1].1).await,
        "the refresh did not bring relay a's change to relay b's phone"
    );
    assert!(!b.refresh(DocumentId::from_bytes([8; 16])).await.unwrap());
    a.shutdown().await;
    b.shutdown().await;
}
