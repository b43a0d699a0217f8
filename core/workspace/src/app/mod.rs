//! The app-facing API: what a phone app (through the Kotlin and Swift bindings) or a
//! desktop app calls.
//!
//! [`Cairn`] is started once with the data directory, the relays and their device
//! credentials, the journal key (all from the platform keystore) and the device's IANA
//! time zone. It owns its runtime (or runs on the app's, [`Cairn::start_on`]) and every
//! `async` method can be awaited from any executor: the work runs on Cairn's runtime.
//!
//! Typed handles give owned records: ids as strings, instants as milliseconds since the
//! Unix epoch, zones as IANA names, heads as hex. Live values come through a
//! [`Listener`]: the current value first, then one per change of that document only,
//! until the [`Subscription`] is cancelled or dropped. Every error is a [`CairnError`].
//!
//! The example the README shows (compiled here, so it stays true):
//!
//! ```no_run
//! use std::sync::Arc;
//! use cairn_core::app::group::GroupProfile;
//! use cairn_core::app::meeting::{AgendaKind, MeetingKind, MeetingRecord, NewAgendaItem};
//! use cairn_core::app::{Cairn, CairnConfig, RelayConfig, RelayStatus};
//!
//! # async fn demo() -> Result<(), cairn_core::app::CairnError> {
//! // Every start: the data directory, the relays with this device's credential on each and the
//! // journal key (both from the platform keystore; Cairn never writes them to disk), and the
//! // device's IANA zone.
//! let cairn = Cairn::start(CairnConfig {
//!     data_dir: "/data/cairn".into(),
//!     relays: vec![], // RelayConfig { url, credential: Some(from_keystore) } once enrolled
//!     journal_key: vec![0; 32],
//!     time_zone: "Europe/London".into(),
//!     device_name: None,
//! })?;
//!
//! // Once: join with an invite (code, link or QR payload); keep the credential in the keystore.
//! let relay = "wss://relay.example.org/";
//! let invite = cairn.workspace().preview_invite(relay, "cairn://invite/ABCD…").await?; // show it
//! let enrolment = cairn.workspace().join(relay, "cairn://invite/ABCD…", "Ana").await?;
//! let _for_keystore = enrolment.credential;
//! cairn.workspace().accept_code_of_conduct(&enrolment.group_id, invite.code_of_conduct_version).await?;
//!
//! // A group, a meeting, a live agenda.
//! let group = cairn.group(&enrolment.group_id);
//! let meeting = group.create_meeting("March meeting".into(), MeetingKind::Other).await?;
//! let item_id = meeting
//!     .add_agenda_item(NewAgendaItem {
//!         title: "Check-in".into(),
//!         raised_by: None,
//!         time_box_minutes: Some(10),
//!         kind: AgendaKind::Case,
//!         notes: String::new(),
//!     })
//!     .await?;                                  // returns once durable on the device
//! let agenda = meeting.subscribe(Arc::new(|m: MeetingRecord| println!("{} items", m.agenda.len())));
//! meeting.minutes().insert_text(0, "Welcome. ".into()).await?;
//! let _states = cairn.subscribe_relays(Arc::new(|s: Vec<RelayStatus>| println!("{s:?}")));
//! cairn.set_time_zone("America/New_York")?;    // the member travels: times follow
//! let report = cairn.sync_now(20_000).await?;   // a background task: bounded
//! agenda.cancel();
//! # let _ = (item_id, report, GroupProfile::new("", ""), RelayConfig { url: String::new(), credential: None });
//! # Ok(()) }
//! ```

mod cairn;
mod error;
mod handles;
mod listen;
pub mod membership;

pub mod group;
pub mod journal;
pub mod meeting;
pub mod minutes;
pub mod my_data;
pub mod presence;
pub mod resources;
pub mod series;
pub mod status;
pub mod sync;
pub mod thread;
pub mod workspace;

pub use cairn::{
    Cairn, CairnConfig, CredentialKeeper, Platform, RelayConfig, JOURNAL_KEY_BYTES, LOAD_TIMEOUT,
    RUNTIME_THREADS,
};
pub use error::CairnError;
pub use group::FORMER_MEMBER;
pub use handles::{Group, Journal, Meeting, Minutes, Resources, Series, Thread, Workspace};
pub use listen::{Listener, Subscription};
pub use status::{DocumentSync, DocumentSyncState};
pub use sync::{ConnectionState, RelayStatus, SyncReport};

/// A count or UTF-16 index as the app API's `u32`, saturating (no minutes, list or
/// document comes near 4 billion; a saturated value is never wrapped into a small one).
pub(crate) fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
