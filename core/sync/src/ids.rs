//! Identifiers: documents, peers, storages, connections and storage tasks.

use std::fmt;

use rand::RngCore;
use thiserror::Error;

/// A document id: 16 random bytes (a UUID v4), written as bs58check text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentId([u8; 16]);

/// Why a document id string was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DocumentIdError {
    /// Not base58, or the bs58check checksum did not match (a typo or a truncated link).
    #[error("document id is not valid bs58check")]
    Checksum,
    /// Decoded fine but is not 16 bytes long.
    #[error("document id decodes to {0} bytes, expected 16")]
    Length(usize),
}

impl DocumentId {
    /// A fresh random id drawn from the caller's RNG (the engine owns a seeded one).
    pub fn random(rng: &mut impl RngCore) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        // Shape it as a UUID v4 like automerge-repo does.
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        DocumentId(bytes)
    }

    /// The raw 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Builds an id from raw bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        DocumentId(bytes)
    }

    /// The `automerge:<id>` URL form.
    pub fn url(&self) -> String {
        format!("automerge:{self}")
    }

    /// Parses an `automerge:` URL (heads and path suffixes are accepted and dropped) or a bare id.
    pub fn parse_url(url: &str) -> Result<Self, DocumentIdError> {
        let rest = url.strip_prefix("automerge:").unwrap_or(url);
        let end = rest.find(['#', '/']).unwrap_or(rest.len());
        rest[..end].parse()
    }
}

/// As its bs58check text (the HTTP API's JSON).
impl serde::Serialize for DocumentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for DocumentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for DocumentId {
    type Err = DocumentIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(uuid) = uuid::Uuid::parse_str(s) {
            if s.len() == 36 {
                // Legacy plain-UUID form.
                return Ok(DocumentId(*uuid.as_bytes()));
            }
        }
        let bytes = bs58::decode(s)
            .with_check(None)
            .into_vec()
            .map_err(|_| DocumentIdError::Checksum)?;
        let len = bytes.len();
        let arr: [u8; 16] = bytes.try_into().map_err(|_| DocumentIdError::Length(len))?;
        Ok(DocumentId(arr))
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(&self.0).with_check().into_string())
    }
}

impl fmt::Debug for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocumentId({self})")
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }
        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <String as ::serde::Deserialize>::deserialize(d).map($name)
            }
        }
    };
}

#[doc(hidden)]
pub use crate::string_id;

string_id!(
    /// A peer's id as it appears in `senderId`/`targetId` (any string; per device, e.g. `member/device`).
    PeerId
);
string_id!(
    /// A member of a group (stable across the member's devices; never a name).
    MemberId
);
string_id!(
    /// One device of a member (e.g. `member/device` peer ids are built from these).
    DeviceId
);
string_id!(
    /// A store's UUID, made once per store and kept in it (`storageId` in peer metadata).
    StorageId
);

impl StorageId {
    /// A fresh random storage id (UUID v4 text) from the caller's RNG.
    pub fn random(rng: &mut impl RngCore) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        StorageId(
            uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .to_string(),
        )
    }
}

/// A host-chosen handle for one transport connection (one websocket).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ConnectionId(u64);

impl ConnectionId {
    /// Wraps a host-chosen number; the host keeps them unique while connections live.
    pub const fn new(n: u64) -> Self {
        ConnectionId(n)
    }
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// Identifies one storage task the engine asked the host to run.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TaskId(pub(crate) u64);

impl TaskId {
    /// The number (unique per engine instance).
    pub fn get(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn known_js_id_round_trips() {
        let id: DocumentId = "488sijVLJ6Grs5PnrczSYBwfNg25".parse().unwrap();
        assert_eq!(id.to_string(), "488sijVLJ6Grs5PnrczSYBwfNg25");
        assert_eq!(
            DocumentId::parse_url("automerge:488sijVLJ6Grs5PnrczSYBwfNg25#abc").unwrap(),
            id
        );
    }

    #[test]
    fn a_typo_fails_the_checksum() {
        assert_eq!(
            "488sijVLJ6Grs5PnrczSYBwfNg26".parse::<DocumentId>(),
            Err(DocumentIdError::Checksum)
        );
    }

    #[test]
    fn legacy_uuid_is_accepted() {
        let id: DocumentId = "6ba7b810-9dad-41d1-80b4-00c04fd430c8".parse().unwrap();
        assert_eq!(id.as_bytes()[0], 0x6b);
    }

    #[test]
    fn random_ids_are_v4_and_parse_back() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let id = DocumentId::random(&mut rng);
        assert_eq!(id.as_bytes()[6] >> 4, 4);
        assert_eq!(id.to_string().parse::<DocumentId>().unwrap(), id);
    }
}
