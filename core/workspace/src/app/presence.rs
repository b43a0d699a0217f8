//! Who else is in the minutes, and where: each device's cursor or selection, shared as
//! presence (ephemeral, never stored; see `cairn_sync::client` presence) and shown by a
//! native editor. Positions travel as Automerge cursors, so a peer's caret stays on the
//! same character while others type before it; the app sees UTF-16 indexes into
//! [`MinutesText::text`](crate::app::minutes::MinutesText), as every minutes call does.

use std::sync::Arc;

use automerge::Automerge;
use cairn_sync::client::{PeerPresence, PEER_TTL};
use serde_json::{json, Value};

use crate::app::saturating_u32;
use crate::app::{CairnError, Listener, Minutes, Subscription};
use crate::model::minutes as model;

/// This device's caret or selection in the minutes: UTF-16 indexes into the minutes'
/// text. A caret has `anchor == head`; a selection runs from `anchor` (where it started)
/// to `head` (where the caret is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CursorRecord {
    /// Where the selection started.
    pub anchor: u32,
    /// Where the caret is.
    pub head: u32,
}

/// Another device's caret or selection, resolved against this device's copy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerCursor {
    /// The other device's peer id (one per device).
    pub peer_id: String,
    /// Its member id, if it said (show the member's pseudonym from the roster).
    pub member_id: Option<String>,
    /// Where its selection started, in UTF-16 units of this device's text.
    pub anchor: u32,
    /// Where its caret is.
    pub head: u32,
}

/// The presence channel the cursor travels on (automerge-repo's presence shape: a state
/// object of channels).
const CURSOR: &str = "cursor";
/// The channel naming the member.
const MEMBER: &str = "member";

/// The peers' cursors that point into this copy; peers without one (or with one into text
/// this copy has not received yet) are left out.
fn peer_cursors(doc: &Automerge, peers: &[PeerPresence]) -> Vec<PeerCursor> {
    let mut out: Vec<PeerCursor> = peers
        .iter()
        .filter_map(|p| {
            let cursor = p.state.get(CURSOR)?;
            let at = |key: &str| {
                let c = cursor.get(key)?.as_str()?;
                model::cursor_position(doc, c).map(saturating_u32)
            };
            Some(PeerCursor {
                peer_id: p.peer.to_string(),
                member_id: p
                    .state
                    .get(MEMBER)
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                anchor: at("anchor")?,
                head: at("head")?,
            })
        })
        .collect();
    out.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
    out
}

impl Minutes {
    /// Shows this device's caret or selection to everyone else in these minutes (`None`:
    /// leaves, and others stop showing it at once). Indexes past the end are
    /// [`CairnError::Invalid`].
    pub async fn set_cursor(&self, cursor: Option<CursorRecord>) -> Result<(), CairnError> {
        let client = self.cairn.inner.client.clone();
        let doc = self.doc;
        let Some(c) = cursor else {
            return self
                .cairn
                .run(async move { Ok(client.leave_presence(doc).await?) })
                .await;
        };
        let (anchor, head) = self
            .cairn
            .read_doc(doc, move |d| {
                Ok((
                    model::cursor_at(d, c.anchor as usize)?,
                    model::cursor_at(d, c.head as usize)?,
                ))
            })
            .await?;
        let member = self
            .cairn
            .member_id(&self.group)
            .ok()
            .map(|m| m.to_string());
        let state = json!({ MEMBER: member, CURSOR: { "anchor": anchor, "head": head } });
        self.cairn
            .run(async move { Ok(client.set_presence(doc, state).await?) })
            .await
    }

    /// The other devices' carets and selections in these minutes now.
    pub async fn cursors(&self) -> Result<Vec<PeerCursor>, CairnError> {
        let peers = self.cairn.inner.client.presence(self.doc);
        self.cairn
            .read_doc(self.doc, move |d| Ok(peer_cursors(d, &peers)))
            .await
    }

    /// The other devices' cursors, live: the current list first, then a new one whenever
    /// a peer moves, arrives or leaves, or an edit moves their positions (a peer gone
    /// silent drops out within [`PEER_TTL`]).
    pub fn subscribe_cursors(&self, listener: Arc<dyn Listener<Vec<PeerCursor>>>) -> Subscription {
        let presence = self.cairn.inner.client.presence_changes(self.doc);
        let minutes = self.clone();
        self.cairn.subscribe_computed(
            self.doc,
            Some(presence),
            // Silent peers expire without an event.
            Some(PEER_TTL / 3),
            move || {
                let minutes = minutes.clone();
                async move { minutes.cursors().await }
            },
            listener,
        )
    }
}
