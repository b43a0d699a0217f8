//! [`Cairn`]: start-up, the runtime it owns, the relays, the device's time zone, and the
//! plumbing every typed handle uses.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automerge::transaction::Transaction;
use automerge::Automerge;
use cairn_sync::client::{
    Client, ClientConfig, ClientError, HttpTransport, HyperTransport, RelayApi, RelayEndpoint,
    RelayHandle, Transport, TungsteniteTransport, Update,
};
use cairn_sync::ids::{DocumentId, MemberId};
use cairn_sync::membership::api::GroupInfo;
use cairn_sync::membership::{BoundKind, Credential, GroupId};
use cairn_sync::store::{SledConfig, SledStore, Storage};
use jiff::tz::TimeZone;

use crate::app::{CairnError, Listener, Subscription};
use crate::reflection::Journal;

/// How long a read waits for a document that is on neither the device nor in memory to
/// arrive from the relay: 30 s (a phone on a slow network; a device load takes ms).
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Worker threads of the runtime [`Cairn::start`] owns: 2. A phone app syncs a handful of
/// small documents; more threads would only cost memory and battery.
pub const RUNTIME_THREADS: usize = 2;

/// Length of the journal key (ChaCha20-Poly1305): 32 bytes.
pub const JOURNAL_KEY_BYTES: usize = 32;

/// One relay the device is enrolled with.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// The relay's websocket URL (`wss://relay.example.org/` or `ws://127.0.0.1:8080/`).
    pub url: String,
    /// This device's credential on that relay (from the platform keystore), or `None` for
    /// a relay in open mode.
    pub credential: Option<String>,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credential.
        f.debug_struct("RelayConfig")
            .field("url", &self.url)
            .field("credential", &self.credential.as_ref().map(|_| "…"))
            .finish()
    }
}

/// What [`Cairn::start`] needs.
#[derive(Clone)]
pub struct CairnConfig {
    /// A directory private to the app; Cairn keeps its store in it.
    pub data_dir: String,
    /// The relays this device is enrolled with (none: a device that has not joined yet).
    pub relays: Vec<RelayConfig>,
    /// The key of the private journal, 32 bytes, kept in the platform keystore. Cairn never
    /// writes it to disk.
    pub journal_key: Vec<u8>,
    /// The device's IANA time zone now (`Europe/London`); see [`Cairn::set_time_zone`].
    pub time_zone: String,
    /// The peer id used on a relay without a credential (open mode, tests). `None`: a
    /// random one.
    pub device_name: Option<String>,
}

impl std::fmt::Debug for CairnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CairnConfig")
            .field("data_dir", &self.data_dir)
            .field("relays", &self.relays)
            .field("time_zone", &self.time_zone)
            .finish_non_exhaustive()
    }
}

/// Receives this device's credential whenever Cairn obtains a new one (joining a group
/// with an invite enrols the device; rotating replaces it), so the app can keep it in the
/// platform keystore even if the screen that asked has gone. Called on Cairn's runtime
/// threads before the call that obtained it returns; keep it quick.
pub trait CredentialKeeper: Send + Sync {
    /// `credential` is now this device's credential on the relay at `relay_url`: keep it
    /// (the previous one there, if any, is refused from now on).
    fn keep(&self, relay_url: &str, credential: &str);
}

/// What the platform provides: its network (so TLS, proxies and background rules are the
/// platform's: OkHttp or the JDK on Android, `URLSession` on iOS) and its keystore.
/// [`Platform::default`]: tokio-tungstenite websockets and plain-HTTP hyper (`ws://` and
/// `http://` only; tests, desktop), no keeper.
#[derive(Clone, Default)]
pub struct Platform {
    /// Opens the websockets to relays. `None`: tokio-tungstenite.
    pub transport: Option<Arc<dyn Transport>>,
    /// Carries the membership API's HTTP calls. `None`: hyper over plain HTTP.
    pub http: Option<Arc<dyn HttpTransport>>,
    /// Told of every new credential. `None`: the app reads them from the calls' results.
    pub credentials: Option<Arc<dyn CredentialKeeper>>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("transport", &self.transport.is_some())
            .field("http", &self.http.is_some())
            .field("credentials", &self.credentials.is_some())
            .finish()
    }
}

/// The platform's transports with the defaults filled in.
#[derive(Clone)]
pub(crate) struct Network {
    transport: Arc<dyn Transport>,
    http: Arc<dyn HttpTransport>,
    keeper: Option<Arc<dyn CredentialKeeper>>,
}

impl Network {
    fn new(platform: Platform) -> Network {
        let max_frame = cairn_sync::engine::Limits::default().max_frame_bytes;
        Network {
            transport: platform
                .transport
                .unwrap_or_else(|| Arc::new(TungsteniteTransport::new(max_frame))),
            http: platform
                .http
                .unwrap_or_else(|| Arc::new(HyperTransport::new())),
            keeper: platform.credentials,
        }
    }

    /// The membership API of the relay whose websocket is at `url`, without a credential.
    pub(crate) fn api(&self, url: &str) -> Result<RelayApi, CairnError> {
        cairn_sync::client::api_base_for(url)
            .map(|base| RelayApi::new(&base, self.http.clone()))
            .ok_or_else(|| CairnError::invalid("the relay URL is not ws:// or wss://"))
    }

    /// Starts syncing with the relay at `url` over the platform's transports.
    pub(crate) fn connect(
        &self,
        client: &Client,
        url: &str,
        credential: Option<Credential>,
    ) -> RelayEntry {
        let member = credential.as_ref().map(|c| c.identity().member.clone());
        let endpoint = RelayEndpoint {
            url: url.to_owned(),
            transport: self.transport.clone(),
            api: self.api(url).ok(),
            credential,
        };
        RelayEntry {
            url: url.to_owned(),
            handle: client.connect_to(endpoint),
            member,
        }
    }

    /// Hands a new credential to the app's keeper.
    pub(crate) fn keep(&self, relay_url: &str, credential: &str) {
        if let Some(keeper) = &self.keeper {
            keeper.keep(relay_url, credential);
        }
    }
}

/// The runtime Cairn runs on: its own, or the app's.
enum Runtime {
    Owned(Option<tokio::runtime::Runtime>),
    Borrowed,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Runtime::Owned(rt) = self {
            if let Some(rt) = rt.take() {
                // Dropping a runtime from inside one panics; this never blocks.
                rt.shutdown_background();
            }
        }
    }
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    /// The device store (documents, pending registrations, remembered groups, journal).
    pub(crate) store: Arc<dyn Storage>,
    handle: tokio::runtime::Handle,
    _runtime: Runtime,
    zone: Mutex<TimeZone>,
    journal: Journal,
    /// The platform's network and keystore hook.
    pub(crate) network: Network,
    /// Which relay (by URL) each known group is on, and what it last said of the group.
    pub(crate) groups: Mutex<BTreeMap<GroupId, (String, GroupInfo)>>,
    /// The relays this device is enrolled with, in the order given.
    pub(crate) relays: Mutex<Vec<RelayEntry>>,
}

/// One relay as the app layer sees it: the client's handle on it (its connection, status
/// and membership API with this device's credential there) and the member id that
/// credential names.
#[derive(Clone, Debug)]
pub(crate) struct RelayEntry {
    pub(crate) url: String,
    pub(crate) handle: RelayHandle,
    pub(crate) member: Option<MemberId>,
}

/// A running Cairn: the device's store, the sync client and the journal. Cheap to clone;
/// every clone is the same client.
#[derive(Clone)]
pub struct Cairn {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Cairn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cairn").finish_non_exhaustive()
    }
}

impl Cairn {
    /// Starts Cairn on a runtime of its own ([`RUNTIME_THREADS`] threads) with the
    /// default network (tokio-tungstenite, plain HTTP). Call it from any thread that is
    /// not itself running async code.
    pub fn start(config: CairnConfig) -> Result<Cairn, CairnError> {
        Cairn::start_with(config, Platform::default())
    }

    /// Starts Cairn on a runtime of its own over the platform's network and keystore.
    pub fn start_with(config: CairnConfig, platform: Platform) -> Result<Cairn, CairnError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("cairn")
            .enable_all()
            .build()
            .map_err(CairnError::generic)?;
        let handle = rt.handle().clone();
        Cairn::start_inner(handle, Runtime::Owned(Some(rt)), config, platform)
    }

    /// Starts Cairn on the app's tokio runtime.
    pub fn start_on(
        handle: tokio::runtime::Handle,
        config: CairnConfig,
    ) -> Result<Cairn, CairnError> {
        Cairn::start_inner(handle, Runtime::Borrowed, config, Platform::default())
    }

    fn start_inner(
        handle: tokio::runtime::Handle,
        runtime: Runtime,
        config: CairnConfig,
        platform: Platform,
    ) -> Result<Cairn, CairnError> {
        let network = Network::new(platform);
        let zone = zone_named(&config.time_zone)?;
        let key: [u8; JOURNAL_KEY_BYTES] =
            config.journal_key.as_slice().try_into().map_err(|_| {
                CairnError::invalid(format!("the journal key must be {JOURNAL_KEY_BYTES} bytes"))
            })?;
        let credentials = config
            .relays
            .iter()
            .map(|r| r.credential.as_deref().map(parse_credential).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let dir = PathBuf::from(&config.data_dir).join("store");
        std::fs::create_dir_all(&dir)
            .map_err(|e| CairnError::from(cairn_sync::store::StoreError::Io(e)))?;
        let store: Arc<dyn Storage> = Arc::new(SledStore::open(&dir, &SledConfig::default())?);
        // Each relay gets its own credential (a member of groups in two organisations has
        // an identity on each); this peer id is only for a relay in open mode.
        let client_config = ClientConfig::new(
            config
                .device_name
                .clone()
                .unwrap_or_else(|| format!("device-{}", uuid_hex())),
        );
        let client = Client::start_on(handle.clone(), store.clone(), client_config)?;
        // The groups the device belonged to when it last heard from its relays: an offline
        // start shows them, and a removed member can still wipe them.
        let known = crate::app::sync::remembered_groups(store.as_ref())?
            .into_iter()
            .map(|(relay, info)| (info.group_id.clone(), (relay, info)))
            .collect();
        let relays = config
            .relays
            .iter()
            .zip(credentials)
            .map(|(relay, credential)| network.connect(&client, &relay.url, credential))
            .collect();
        Ok(Cairn {
            inner: Arc::new(Inner {
                client,
                handle,
                _runtime: runtime,
                zone: Mutex::new(zone),
                journal: Journal::open(store.clone(), &key),
                network,
                groups: Mutex::new(known),
                store,
                relays: Mutex::new(relays),
            }),
        })
    }

    /// The device's IANA time zone changed (a member who travels): times are shown in the
    /// new one from now on. Unknown names are [`CairnError::Invalid`].
    pub fn set_time_zone(&self, zone: &str) -> Result<(), CairnError> {
        let zone = zone_named(zone)?;
        *self.inner.zone.lock().unwrap_or_else(|e| e.into_inner()) = zone;
        Ok(())
    }

    /// The device's IANA time zone name.
    pub fn time_zone(&self) -> String {
        self.zone().iana_name().unwrap_or("UTC").to_owned()
    }

    /// Stops syncing, lets pending writes finish, and stops the runtime's tasks.
    pub async fn shutdown(&self) {
        let client = self.inner.client.clone();
        let _ = self
            .run(async move {
                client.shutdown().await;
                Ok(())
            })
            .await;
    }

    // ----- plumbing for the handles -----

    /// Runs `fut` on Cairn's runtime; the returned future can be awaited from any executor.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, CairnError>> + Send + 'static,
    ) -> Result<T, CairnError> {
        self.inner
            .handle
            .spawn(fut)
            .await
            .map_err(|_| CairnError::generic("the client has stopped"))?
    }

    /// Spawns a task on Cairn's runtime (from any thread, inside a runtime or not).
    pub(crate) fn spawn(
        &self,
        fut: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        self.inner.handle.spawn(fut)
    }

    /// Makes sure `doc` is in memory (from the device, else the relay).
    async fn ensure_loaded(client: &Client, doc: DocumentId) -> Result<(), CairnError> {
        let loaded = client
            .with_engine(move |e| e.document(&doc).is_some_and(|d| !d.get_heads().is_empty()))
            .await?;
        if !loaded {
            client.find(doc, LOAD_TIMEOUT).await.map_err(|e| match e {
                ClientError::Timeout | ClientError::Unavailable(_) => {
                    CairnError::not_found(format!("document {doc}"))
                }
                other => other.into(),
            })?;
        }
        Ok(())
    }

    /// Reads a document (loading it from the device, else the relay, if needed).
    pub(crate) async fn read_doc<T: Send + 'static>(
        &self,
        doc: DocumentId,
        f: impl FnOnce(&Automerge) -> Result<T, CairnError> + Send + 'static,
    ) -> Result<T, CairnError> {
        let client = self.inner.client.clone();
        self.run(async move {
            Cairn::ensure_loaded(&client, doc).await?;
            client
                .read(doc, f)
                .await?
                .unwrap_or_else(|| Err(CairnError::not_found(format!("document {doc}"))))
        })
        .await
    }

    /// Changes a document; returns the closure's value once the change is durable on this
    /// device. The closure's error means nothing was committed.
    pub(crate) async fn change_doc<R: Send + 'static>(
        &self,
        doc: DocumentId,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, CairnError> + Send + 'static,
    ) -> Result<R, CairnError> {
        let client = self.inner.client.clone();
        self.run(async move {
            Cairn::ensure_loaded(&client, doc).await?;
            client.change(doc, f).await.map_err(CairnError::from)
        })
        .await
    }

    /// Creates a document bound to `group` as `kind` (registered with the group's relay);
    /// returns its id and the closure's value once durable on this device.
    pub(crate) async fn create_doc<R: Send + 'static>(
        &self,
        group: &GroupId,
        kind: BoundKind,
        init: impl FnOnce(&mut Transaction<'_>) -> Result<R, CairnError> + Send + 'static,
    ) -> Result<(DocumentId, R), CairnError> {
        let relay = self.group_relay(group).await?;
        let (group, client) = (group.clone(), self.inner.client.clone());
        self.run(async move {
            match relay {
                Some(relay) => relay.create_in_group(&group, kind, init).await,
                None => client.create_in_group(&group, kind, init).await,
            }
            .map_err(CairnError::from)
        })
        .await
    }

    /// The client's handle on the relay `group` is on; `None` when no relay has said yet
    /// (offline since enrolling): the client's first relay then keeps the registration
    /// on the device and sends it when it can.
    pub(crate) async fn group_relay(
        &self,
        group: &GroupId,
    ) -> Result<Option<RelayHandle>, CairnError> {
        if self.relay_of(group).is_none() {
            self.refresh_groups().await?;
        }
        match self.relay_of(group) {
            Some(url) => Ok(Some(self.relay_handle(&url)?)),
            None => Ok(None),
        }
    }

    /// Delivers `view` of the document now, then after each of its changes, to `listener`
    /// (on the runtime), until the returned [`Subscription`] is cancelled or dropped.
    pub(crate) fn subscribe_doc<T: Send + 'static>(
        &self,
        doc: DocumentId,
        view: impl Fn(&Automerge) -> Result<T, CairnError> + Send + Sync + 'static,
        listener: Arc<dyn Listener<T>>,
    ) -> Subscription {
        let cancelled = Arc::new(AtomicBool::new(false));
        let flag = cancelled.clone();
        let handle = self.inner.client.subscribe(doc, view, move |update| {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            match update {
                Update::Changed { value: Ok(v), .. } => listener.on_update(v),
                Update::Changed { value: Err(e), .. } => listener.on_error(e),
                Update::Failed(e) => listener.on_error(match e {
                    ClientError::Timeout | ClientError::Unavailable(_) => {
                        CairnError::not_found(format!("document {doc}"))
                    }
                    other => other.into(),
                }),
            }
        });
        Subscription::new(cancelled, move || handle.cancel())
    }

    /// A live value computed by `compute` (which reads through the handles' plumbing):
    /// delivered first, then again whenever it differs after an event on `doc` (a change,
    /// a relay showing its heads, an acknowledgement), a wake-up on `extra`, or every
    /// `every` (for values that change without an event, like a peer falling silent).
    pub(crate) fn subscribe_computed<T, F, Fut>(
        &self,
        doc: DocumentId,
        mut extra: Option<tokio::sync::watch::Receiver<u64>>,
        every: Option<Duration>,
        compute: F,
        listener: Arc<dyn Listener<T>>,
    ) -> Subscription
    where
        T: Clone + PartialEq + Send + 'static,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, CairnError>> + Send + 'static,
    {
        let cancelled = Arc::new(AtomicBool::new(false));
        // Listening before the first read, so no event between the two is missed.
        let mut events = self.inner.client.document_events(doc);
        let flag = cancelled.clone();
        let task = self.spawn(async move {
            let mut last: Option<T> = None;
            loop {
                events.borrow_and_update();
                let now = compute().await;
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                match now {
                    Ok(v) if last.as_ref() != Some(&v) => {
                        last = Some(v.clone());
                        listener.on_update(v);
                    }
                    Ok(_) => {}
                    Err(e) => listener.on_error(e),
                }
                let extra_changed = async {
                    match extra.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                let tick = async {
                    match every {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    alive = extra_changed => {
                        if !alive {
                            return;
                        }
                    }
                    changed = events.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = tick => {}
                }
            }
        });
        Subscription::new(cancelled, move || task.abort())
    }

    /// The device's current IANA zone.
    pub(crate) fn zone(&self) -> TimeZone {
        self.inner
            .zone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Milliseconds since the Unix epoch now.
    pub(crate) fn now_ms(&self) -> i64 {
        jiff::Timestamp::now().as_millisecond()
    }

    /// This device's member id in `group` (from the credential of the group's relay).
    pub(crate) fn member_id(&self, group: &GroupId) -> Result<MemberId, CairnError> {
        let relay = self.relay_of(group);
        let relays = self.inner.relays.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match relay {
            Some(url) => relays.iter().find(|r| r.url == url),
            // Not looked up yet: a device on one relay is that relay's member.
            None if relays.len() == 1 => relays.first(),
            None => None,
        };
        entry
            .and_then(|r| r.member.clone())
            .ok_or_else(|| CairnError::not_found(format!("membership of group {group}")))
    }

    /// The URL of the relay `group` is on, if known.
    pub(crate) fn relay_of(&self, group: &GroupId) -> Option<String> {
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(group)
            .map(|(url, _)| url.clone())
    }

    /// The membership API of the relay at `url`, with this device's credential there.
    pub(crate) fn api_of(&self, url: &str) -> Result<RelayApi, CairnError> {
        Ok(self.relay_handle(url)?.api()?)
    }

    /// The client's handle on the relay at `url`.
    pub(crate) fn relay_handle(&self, url: &str) -> Result<RelayHandle, CairnError> {
        self.inner
            .relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|r| r.url == url)
            .map(|r| r.handle.clone())
            .ok_or_else(|| CairnError::not_found(format!("relay {url}")))
    }

    /// Asks every relay for this device's groups and remembers which relay each is on.
    /// Relays that cannot be reached keep what they last said.
    pub(crate) async fn refresh_groups(&self) -> Result<Vec<(String, GroupInfo)>, CairnError> {
        let relays: Vec<RelayEntry> = self
            .inner
            .relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for relay in relays {
            let Some(api) = relay.handle.api().ok().filter(|a| a.credential().is_some()) else {
                continue;
            };
            let fresh = self.run(async move { Ok(api.groups().await?) }).await;
            match fresh {
                Ok(groups) => {
                    for g in &groups {
                        crate::app::sync::remember_group(self.inner.store.as_ref(), &relay.url, g)?;
                    }
                    let mut known = self.inner.groups.lock().unwrap_or_else(|e| e.into_inner());
                    // A group the relay no longer lists (left, removed) stays remembered
                    // on the device until it is wiped; only the live view forgets it.
                    known.retain(|_, (url, _)| *url != relay.url);
                    for g in groups {
                        known.insert(g.group_id.clone(), (relay.url.clone(), g));
                    }
                }
                Err(CairnError::Offline) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect())
    }

    /// The group's documents and our role, as the relay says now (or last said, offline).
    pub(crate) async fn group_info(&self, group: &GroupId) -> Result<GroupInfo, CairnError> {
        self.refresh_groups().await?;
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(group)
            .map(|(_, info)| info.clone())
            .ok_or_else(|| CairnError::not_found(format!("group {group}")))
    }

    /// The device's private journal (never synced; encrypted with the keystore's key).
    pub(crate) fn journal_store(&self) -> &Journal {
        &self.inner.journal
    }
}

/// Keeps one connection to the relay at `url`, presenting `credential` (the client returns
/// the existing relay's handle for a URL it already has, with the new credential).
fn zone_named(name: &str) -> Result<TimeZone, CairnError> {
    TimeZone::get(name).map_err(|_| CairnError::invalid(format!("unknown time zone {name:?}")))
}

pub(crate) fn parse_credential(token: &str) -> Result<Credential, CairnError> {
    Credential::parse(token)
        .map_err(|_| CairnError::invalid("the credential is not a Cairn credential"))
}

fn uuid_hex() -> String {
    let mut b = [0u8; 8];
    cairn_sync::membership::os_random(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> CairnConfig {
        CairnConfig {
            data_dir: dir.to_string_lossy().into_owned(),
            relays: Vec::new(),
            journal_key: vec![1; JOURNAL_KEY_BYTES],
            time_zone: "Europe/London".to_owned(),
            device_name: Some("test-phone".to_owned()),
        }
    }

    fn invalid<T: std::fmt::Debug>(result: Result<T, CairnError>) -> String {
        match result {
            Err(CairnError::Invalid { reason }) => reason,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn start_up_refuses_bad_settings_with_a_clear_error_and_the_zone_can_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = config(dir.path());
        bad.time_zone = "Mars/Olympus_Mons".to_owned();
        assert!(invalid(Cairn::start(bad)).contains("time zone"));
        let mut bad = config(dir.path());
        bad.journal_key = vec![1; 31];
        assert!(invalid(Cairn::start(bad)).contains("journal key"));
        let mut bad = config(dir.path());
        bad.relays = vec![RelayConfig {
            url: "ws://127.0.0.1:9/".to_owned(),
            credential: Some("cairn1_not_a_credential".to_owned()),
        }];
        let reason = invalid(Cairn::start(bad));
        assert!(reason.contains("credential") && !reason.contains("not_a_credential"));

        let cairn = Cairn::start(config(dir.path())).unwrap();
        assert!(invalid(cairn.set_time_zone("Nowhere/Here")).contains("time zone"));
        assert_eq!(
            cairn.time_zone(),
            "Europe/London",
            "a refused zone changes nothing"
        );
        cairn.set_time_zone("Asia/Tokyo").unwrap();
        assert_eq!(cairn.time_zone(), "Asia/Tokyo");
    }
}
