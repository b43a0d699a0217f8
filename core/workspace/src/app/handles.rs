//! The typed handles. Each is a cheap, cloneable reference to one document (or the
//! device's journal) through a [`Cairn`]; its methods live in the module of its kind
//! (`meeting.rs`, `thread.rs`, …).

use cairn_sync::ids::DocumentId;
use cairn_sync::membership::GroupId;

use crate::app::{Cairn, CairnError};

/// Parses a document id as an app holds it (the bs58check form, or an `automerge:` URL).
pub(crate) fn document_id(id: &str) -> Result<DocumentId, CairnError> {
    let id = id.strip_prefix("automerge:").unwrap_or(id);
    id.parse()
        .map_err(|_| CairnError::invalid("not a document id"))
}

macro_rules! handle {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            pub(crate) cairn: Cairn,
            pub(crate) group: GroupId,
            pub(crate) doc: DocumentId,
        }

        impl $name {
            pub(crate) fn new(cairn: Cairn, group: GroupId, doc: DocumentId) -> Self {
                $name { cairn, group, doc }
            }

            /// The document's id.
            pub fn id(&self) -> String {
                self.doc.to_string()
            }

            /// The id of the group it belongs to.
            pub fn group_id(&self) -> String {
                self.group.to_string()
            }
        }
    };
}

handle!(
    /// A meeting (one-off or one occurrence of a series): agenda, attendance, RSVPs, roles,
    /// actions. Its minutes are [`Minutes`] on the same document.
    Meeting
);
handle!(
    /// The minutes of a meeting: co-edited rich text, agreement, export.
    Minutes
);
handle!(
    /// A recurring meeting: its rule in an IANA zone and its occurrences.
    Series
);
handle!(
    /// A discussion thread between meetings.
    Thread
);
handle!(
    /// The group's shared readings and files.
    Resources
);

/// One group: its profile, roster view and index, and the way to its documents.
#[derive(Clone, Debug)]
pub struct Group {
    pub(crate) cairn: Cairn,
    pub(crate) group: GroupId,
}

impl Group {
    pub(crate) fn new(cairn: Cairn, group: GroupId) -> Self {
        Group { cairn, group }
    }

    /// The group's id.
    pub fn id(&self) -> String {
        self.group.to_string()
    }
}

/// The device's private journal: reflections that never leave this device.
#[derive(Clone, Debug)]
pub struct Journal {
    pub(crate) cairn: Cairn,
}

/// The device across its groups and relays.
#[derive(Clone, Debug)]
pub struct Workspace {
    pub(crate) cairn: Cairn,
}

impl Cairn {
    /// The device across its groups.
    pub fn workspace(&self) -> Workspace {
        Workspace {
            cairn: self.clone(),
        }
    }

    /// The group with this id.
    pub fn group(&self, group_id: &str) -> Group {
        Group::new(self.clone(), GroupId::from(group_id))
    }

    /// The private journal.
    pub fn journal(&self) -> Journal {
        Journal {
            cairn: self.clone(),
        }
    }
}
