//! A group is three documents, one per access level the relay enforces, plus the
//! documents its index lists:
//!
//! | document | module | who writes | holds |
//! |---|---|---|---|
//! | settings | `cairn_core::model::settings` | organisers | name, purpose, how and where it meets, size, time frame, crisis link, pinned resource |
//! | roster | [`roster`](crate::docs::roster) | the relay alone | the membership view (pseudonym, role, status, accepted code-of-conduct version per member) and the code of conduct |
//! | index | `cairn_core::model::index` | members (not observers or alumni) | the `automerge:` URLs of the group's meetings, series, threads and resources |
//!
//! Every member who may see the group reads all three. Splitting them is what lets one
//! access level fit each document: a member's new thread goes into the index, which
//! members write, and not into a document only organisers may change (where the relay
//! would drop it and nobody else would ever see the thread). Membership itself (roles,
//! suspensions, removals, pseudonyms, code-of-conduct acceptance) is decided by the relay
//! through its API and only *shown* in the roster: nothing a member writes in a document
//! changes who may do what.
//!
//! Reports to facilitators are not group documents in this sense: each reporter has their
//! own reports document (`cairn_core::model::safety`), which the relay shares with the
//! facilitators and organisers alone, and which is not listed in the index (the index is
//! readable by every member, and a listed report would tell them someone reported).
//!
//! This module keeps [`Role`], which the relay, the roster and the content modules share.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A member's role in the group. Decided by the relay (organisers change it through the
/// relay's API); the roster shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Runs the group: settings, membership, code of conduct.
    Organiser,
    /// Holds the space; receives reports and may remove content.
    Facilitator,
    /// Takes notes (the standing recorder; meetings may rotate it).
    Recorder,
    /// A participant.
    Member,
    /// A guest who may read but not write.
    Observer,
    /// A former member of a closed or renewed group, kept read-only.
    Alumnus,
}

impl Role {
    /// Every role, in order of responsibility.
    pub const ALL: [Role; 6] = [
        Role::Organiser,
        Role::Facilitator,
        Role::Recorder,
        Role::Member,
        Role::Observer,
        Role::Alumnus,
    ];

    /// The name stored in documents and used in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Organiser => "organiser",
            Role::Facilitator => "facilitator",
            Role::Recorder => "recorder",
            Role::Member => "member",
            Role::Observer => "observer",
            Role::Alumnus => "alumnus",
        }
    }

    /// Parses a stored name.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Whether this role may add to the group's documents (observers and alumni only read).
    pub const fn can_write(self) -> bool {
        !matches!(self, Role::Observer | Role::Alumnus)
    }

    /// Whether this role acts as a facilitator: receives reports, is reached by
    /// `@facilitators`, may remove content. Organisers are included because they run the
    /// group and must be able to act when no facilitator is present.
    pub const fn is_facilitator(self) -> bool {
        matches!(self, Role::Organiser | Role::Facilitator)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Role {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Role::from_name(&name).ok_or_else(|| serde::de::Error::unknown_variant(&name, &ROLE_NAMES))
    }
}

/// The names serde reports when a role it does not know arrives.
const ROLE_NAMES: [&str; 6] = [
    Role::Organiser.name(),
    Role::Facilitator.name(),
    Role::Recorder.name(),
    Role::Member.name(),
    Role::Observer.name(),
    Role::Alumnus.name(),
];

/// Whether `role` may write (observers and alumni are read-only). See [`Role::can_write`].
pub fn can_write(role: Role) -> bool {
    role.can_write()
}

/// Whether `role` acts as a facilitator. See [`Role::is_facilitator`].
pub fn is_facilitator(role: Role) -> bool {
    role.is_facilitator()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observers_and_alumni_are_read_only() {
        let writers: Vec<_> = Role::ALL.into_iter().filter(|r| can_write(*r)).collect();
        assert_eq!(
            writers,
            [
                Role::Organiser,
                Role::Facilitator,
                Role::Recorder,
                Role::Member
            ]
        );
        let facilitators: Vec<_> = Role::ALL
            .into_iter()
            .filter(|r| is_facilitator(*r))
            .collect();
        assert_eq!(facilitators, [Role::Organiser, Role::Facilitator]);
    }

    #[test]
    fn roles_serialise_by_their_stored_names() {
        for role in Role::ALL {
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{}\"", role.name()));
            assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), role);
            assert_eq!(Role::from_name(&role.to_string()), Some(role));
        }
        let err = serde_json::from_str::<Role>("\"admin\"").unwrap_err();
        assert!(err.to_string().contains("organiser"), "{err}");
    }
}
