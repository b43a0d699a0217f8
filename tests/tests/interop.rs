//! Interop through a real relay on loopback: the upstream `@automerge/automerge-repo` 2.5.6
//! Node client (`tests/js`, install with `npm ci` there), the `samod` 0.16 crate, and Cairn's
//! own client runtime all sync the same documents through `cairn_relay::run`.
//!
//! Every Node program is a fresh process with fresh storage, so what it reads came from the
//! relay. `CAIRN_WIRE_LOG=1` makes the Node programs log every frame to stderr, which a failing
//! assertion prints.

use std::sync::Arc;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{AutoSerde, ReadDoc, ROOT};
use cairn_sync::client::{Client, ClientConfig, ClientError};
use cairn_sync::ids::DocumentId;
use cairn_sync::store::MemoryStore;
use cairn_tests::relay::{run_node, run_node_json, url_heads, NodeProcess, TestRelay};
use cairn_tests::samod_peer::SamodPeer;
use serde_json::{json, Value};

/// Longer than the Node programs' own 30 s deadline, so theirs reports first.
const NODE_LIMIT: Duration = Duration::from_secs(45);
const WAIT: Duration = Duration::from_secs(15);

/// What `create.mjs` writes.
fn js_created() -> Value {
    json!({"title": "Minutes", "notes": "hello from js", "items": [1, 2, 3]})
}

/// `create.mjs`: a JS client creates the document and waits for the relay's acknowledgement.
/// Returns the document id and the heads it reported.
async fn js_create(relay: &TestRelay) -> (String, Value) {
    let created = run_node_json("create.mjs", &[&relay.url()], NODE_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let id = created["documentId"]
        .as_str()
        .unwrap_or_else(|| panic!("create.mjs printed no documentId: {created}"))
        .to_owned();
    assert_eq!(created["url"], format!("automerge:{id}"));
    (id, created["heads"].clone())
}

/// `read.mjs` on a fresh JS repo: `{doc, heads}`.
async fn js_read(relay: &TestRelay, id: &str) -> Value {
    run_node_json("read.mjs", &[&relay.url(), id], NODE_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Appends `text` to the Text at `notes`.
fn append_notes(text: &'static str) -> impl FnOnce(&mut automerge::transaction::Transaction<'_>) {
    move |tx| {
        let (_, notes) = tx
            .get(ROOT, "notes")
            .expect("reading notes")
            .expect("the document has notes");
        let len = tx.length(&notes);
        tx.splice_text(&notes, len, 0, text)
            .expect("notes is a Text object");
    }
}

fn notes_of(doc: &automerge::Automerge) -> Option<String> {
    let (_, notes) = doc.get(ROOT, "notes").ok()??;
    doc.text(&notes).ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn js_creates_and_a_fresh_js_client_reads() {
    let relay = TestRelay::start().await;
    let (id, heads) = js_create(&relay).await;

    let read = js_read(&relay, &id).await;
    assert_eq!(read["doc"], js_created());
    assert_eq!(
        read["heads"], heads,
        "the reader sees exactly the acknowledged heads"
    );

    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn samod_reads_a_js_document_and_js_reads_samods_change() {
    let relay = TestRelay::start().await;
    let (id, _) = js_create(&relay).await;

    let samod = SamodPeer::connect(&relay.url())
        .await
        .expect("samod connects");
    let (relay_peer, relay_storage) = samod.relay_info().expect("relay's peer message");
    assert_eq!(relay_peer, cairn_relay::RELAY_PEER_ID);
    assert!(relay_storage.is_some(), "the relay announces its storageId");

    let doc = samod
        .find(&id)
        .await
        .expect("find")
        .expect("the relay has the JS document");
    assert_eq!(doc.json().await.expect("json"), js_created());

    // `change` returns once the relay's sync message shows it holds samod's heads.
    doc.change(append_notes(" + samod"))
        .await
        .expect("the relay acknowledges samod's change");
    let samod_heads = url_heads(&doc.read(|d| d.get_heads()).await.expect("heads"));

    let read = js_read(&relay, &id).await;
    assert_eq!(read["doc"]["notes"], "hello from js + samod");
    assert_eq!(read["doc"]["title"], "Minutes");
    assert_eq!(read["doc"]["items"], json!([1, 2, 3]));
    assert_eq!(read["heads"], json!(samod_heads));

    samod.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn live_changes_flow_between_a_js_client_and_samod() {
    let relay = TestRelay::start().await;
    let url = relay.url();
    let (id, _) = js_create(&relay).await;
    let samod = SamodPeer::connect(&url).await.expect("samod connects");
    let doc = samod
        .find(&id)
        .await
        .expect("find")
        .expect("the relay has the JS document");

    // samod -> a JS client that already has the document open.
    let mut watcher = NodeProcess::spawn("live.mjs", &[&url, &id, "watch", "from samod"])
        .unwrap_or_else(|e| panic!("{e}"));
    watcher
        .wait_stderr("watching", NODE_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    doc.change(append_notes(" from samod"))
        .await
        .expect("the relay acknowledges samod's change");
    let seen = watcher
        .finish(NODE_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seen["doc"]["notes"], "hello from js from samod");

    // A JS client -> samod, which is waiting on its open document.
    let write_args = [url.as_str(), id.as_str(), "write", " from js"];
    let (samod_saw, written) = tokio::join!(
        doc.wait_for(|v| v["notes"] == "hello from js from samod from js"),
        run_node_json("live.mjs", &write_args, NODE_LIMIT),
    );
    let written = written.unwrap_or_else(|e| panic!("{e}"));
    let samod_saw = samod_saw.expect("samod sees the JS write live");
    assert_eq!(samod_saw["title"], "Minutes");
    let samod_heads = url_heads(&doc.read(|d| d.get_heads()).await.expect("heads"));
    assert_eq!(written["heads"], json!(samod_heads));

    samod.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cairn_client_reads_js_and_exchanges_live_changes_with_samod() {
    let relay = TestRelay::start().await;
    let url = relay.url();
    let (id, _) = js_create(&relay).await;
    let doc_id: DocumentId = id.parse().expect("create.mjs prints a bs58check id");

    let client = Client::start(
        Arc::new(MemoryStore::default()),
        ClientConfig::new("interop/cairn"),
    )
    .expect("client starts");
    client.connect(&url);
    client
        .find(doc_id, WAIT)
        .await
        .expect("the client finds the JS document");
    let content = client
        .read(doc_id, |d| serde_json::to_value(AutoSerde::from(d)))
        .await
        .expect("read")
        .expect("loaded")
        .expect("json");
    assert_eq!(content, js_created());

    // samod -> Cairn client, live.
    let samod = SamodPeer::connect(&url).await.expect("samod connects");
    let doc = samod
        .find(&id)
        .await
        .expect("find")
        .expect("the relay has the JS document");
    doc.change(append_notes(" + samod"))
        .await
        .expect("the relay acknowledges samod's change");
    client
        .wait_for(doc_id, WAIT, |d| {
            notes_of(d).as_deref() == Some("hello from js + samod")
        })
        .await
        .expect("the Cairn client sees samod's change live");

    // Cairn client -> samod, live.
    client
        .change(doc_id, |tx| {
            append_notes(" + cairn")(tx);
            Ok::<_, ClientError>(())
        })
        .await
        .expect("the client's change is durable locally");
    client
        .wait_acknowledged(doc_id, WAIT)
        .await
        .expect("the relay acknowledges the client's change");
    doc.wait_for(|v| v["notes"] == "hello from js + samod + cairn")
        .await
        .expect("samod sees the Cairn client's change live");

    samod.shutdown().await;
    client.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_document_is_unavailable() {
    let relay = TestRelay::start().await;
    let unknown = DocumentId::from_bytes(*cairn_sync::store::random_uuid().as_bytes()).to_string();

    let out = run_node("read.mjs", &[&relay.url(), &unknown], NODE_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out.status,
        Some(1),
        "read.mjs should fail; stdout {:?}, stderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("unavailable"),
        "stderr should say unavailable:\n{}",
        out.stderr
    );

    let samod = SamodPeer::connect(&relay.url())
        .await
        .expect("samod connects");
    assert!(
        samod.find(&unknown).await.expect("find answers").is_none(),
        "samod gets doc-unavailable"
    );
    samod.shutdown().await;

    relay.shutdown().await;
}

/// A JS automerge-repo client opening a Cairn workspace document sees the co-edited fields
/// (a group's name and purpose, in its settings) as collaborative Text, not as immutable
/// strings.
#[tokio::test(flavor = "multi_thread")]
async fn js_sees_co_edited_workspace_fields_as_text() {
    use cairn_core::model::settings;
    let relay = cairn_tests::relay::TestRelay::start().await;
    let client = cairn_sync::client::Client::start(
        std::sync::Arc::new(cairn_sync::store::MemoryStore::default()),
        cairn_sync::client::ClientConfig::new("organiser/phone"),
    )
    .expect("client");
    client.connect(&relay.url());
    let doc = client
        .create(|tx| {
            settings::init(tx, "Peer circle", "Monthly case collaboration").expect("settings");
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .expect("create")
        .0;
    client
        .wait_acknowledged(doc, Duration::from_secs(20))
        .await
        .expect("on the relay");
    let url = relay.url();
    let id = doc.to_string();
    let kinds = cairn_tests::relay::run_node_json(
        "types.mjs",
        &[url.as_str(), id.as_str()],
        Duration::from_secs(40),
    )
    .await
    .expect("types.mjs");
    assert_eq!(kinds["name"], "text", "{kinds}");
    assert_eq!(kinds["purpose"], "text", "{kinds}");
    assert_eq!(kinds["schemaKind"], "immutable-string", "{kinds}");
    client.shutdown().await;
    relay.shutdown().await;
}
