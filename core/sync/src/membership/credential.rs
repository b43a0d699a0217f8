//! Device identities and credentials, invite and link codes: random from the OS, kept
//! by the relay only as hashes.
//!
//! A credential is `cairn1_{member}_{device}_{secret}`: member and device ids are 16 hex
//! characters, the secret 64 (32 bytes from the OS RNG). Every character is URL-safe, so
//! the same string works as a `Bearer` header and as a `?token=` query parameter. The
//! relay stores SHA-256 of the secret: a 256-bit random secret cannot be guessed from its
//! hash, so a slow password hash would add nothing but CPU for an attacker to spend.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::ids::{DeviceId, MemberId, PeerId};

/// The credential's version prefix.
const PREFIX: &str = "cairn1";
/// Hex characters of a member, device or group id: 16 (64 random bits; ids are not secret,
/// they only need to be unique among a relay's members).
pub const ID_HEX: usize = 16;
/// Hex characters of a credential's secret: 64 (256 random bits).
pub const SECRET_HEX: usize = 64;
/// Characters of an invite or link code: 20 base32 characters (100 random bits), short
/// enough to type from a screen and to fit a small QR code, and hashed at rest.
pub const CODE_CHARS: usize = 20;

/// Why a credential or identity string was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CredentialError {
    /// Not of the form `cairn1_{member}_{device}_{secret}`.
    #[error("not a Cairn device credential")]
    Malformed,
    /// Not of the form `{member}/{device}`.
    #[error("not a Cairn device peer id")]
    NotAnIdentity,
}

/// Fills `buf` from the operating system's RNG.
///
/// # Panics
/// If the OS has no randomness to give (nothing safe can be done without it).
pub fn os_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// A fresh random id of [`ID_HEX`] hex characters (members, devices, groups).
pub fn random_id() -> String {
    let mut b = [0u8; ID_HEX / 2];
    os_random(&mut b);
    hex::encode(b)
}

/// A fresh invite or link code: [`CODE_CHARS`] characters of RFC 4648 base32 (A–Z, 2–7).
pub fn random_code() -> String {
    let mut b = [0u8; CODE_CHARS * 5 / 8];
    os_random(&mut b);
    data_encoding::BASE32_NOPAD.encode(&b)
}

/// Normalises a typed or scanned code: the `cairn://invite/` link prefix, spaces and dashes
/// go, letters are upper-cased (`0`/`1` typed for `O`/`I` are not accepted: base32 has neither).
pub fn normalise_code(input: &str) -> String {
    let tail = input
        .rsplit_once('/')
        .map_or(input, |(_, tail)| tail)
        .trim();
    tail.chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// SHA-256 of a secret or code, in hex: what the relay stores.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares a presented secret with a stored hash in constant time.
pub fn secret_matches(secret: &str, stored_hash: &str) -> bool {
    hash_secret(secret)
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

fn is_id(s: &str) -> bool {
    s.len() == ID_HEX
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A device as the relay knows it: member and device. Its peer id is `member/device`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// The member (the same on all of a person's devices).
    pub member: MemberId,
    /// The device.
    pub device: DeviceId,
}

impl Identity {
    /// Parses a peer id `member/device`.
    pub fn parse(peer_id: &str) -> Result<Identity, CredentialError> {
        let (m, d) = peer_id
            .split_once('/')
            .ok_or(CredentialError::NotAnIdentity)?;
        if !is_id(m) || !is_id(d) {
            return Err(CredentialError::NotAnIdentity);
        }
        Ok(Identity {
            member: MemberId::from(m),
            device: DeviceId::from(d),
        })
    }

    /// The peer id this device uses in `join`.
    pub fn peer_id(&self) -> PeerId {
        PeerId::from(self.to_string())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.member, self.device)
    }
}

/// A device credential. `Debug` and `Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    token: String,
    identity: Identity,
}

impl Credential {
    /// A new credential for `identity` with a fresh secret; returns it and the hash to store.
    pub fn issue(identity: Identity) -> (Credential, String) {
        let mut b = [0u8; SECRET_HEX / 2];
        os_random(&mut b);
        let secret = hex::encode(b);
        let hash = hash_secret(&secret);
        let token = format!("{PREFIX}_{}_{}_{secret}", identity.member, identity.device);
        (Credential { token, identity }, hash)
    }

    /// Parses a presented credential (it is not checked against the relay's hashes here).
    pub fn parse(token: &str) -> Result<Credential, CredentialError> {
        let mut parts = token.split('_');
        let (Some(PREFIX), Some(m), Some(d), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(CredentialError::Malformed);
        };
        let identity =
            Identity::parse(&format!("{m}/{d}")).map_err(|_| CredentialError::Malformed)?;
        if secret.len() != SECRET_HEX || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CredentialError::Malformed);
        }
        Ok(Credential {
            token: token.to_owned(),
            identity,
        })
    }

    /// The whole credential, to present to the relay (never log it).
    pub fn as_str(&self) -> &str {
        &self.token
    }

    /// The secret part (what the relay hashes).
    pub fn secret(&self) -> &str {
        self.token.rsplit('_').next().unwrap_or_default()
    }

    /// The device it belongs to.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The peer id the device must use in `join`.
    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}, secret hidden)", self.identity)
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            member: MemberId::from(random_id()),
            device: DeviceId::from(random_id()),
        }
    }

    #[test]
    fn a_credential_round_trips_and_its_hash_matches_only_its_secret() {
        let (c, hash) = Credential::issue(identity());
        let back = Credential::parse(c.as_str()).unwrap();
        assert_eq!(back.identity(), c.identity());
        assert!(secret_matches(back.secret(), &hash));
        let (other, _) = Credential::issue(c.identity().clone());
        assert!(!secret_matches(other.secret(), &hash));
        assert!(c
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    }

    #[test]
    fn the_secret_never_shows_in_debug_or_display() {
        let (c, _) = Credential::issue(identity());
        for shown in [format!("{c:?}"), format!("{c}")] {
            assert!(!shown.contains(c.secret()), "{shown}");
        }
    }

    #[test]
    fn malformed_credentials_and_identities_are_refused() {
        let (c, _) = Credential::issue(identity());
        let s = c.as_str();
        for bad in [
            "",
            "cairn1",
            &s[..s.len() - 1],
            &format!("{s}0"),
            &format!("{s}_x"),
            &s.replacen("cairn1", "cairn2", 1),
            &s.replace('_', "/"),
        ] {
            assert_eq!(
                Credential::parse(bad),
                Err(CredentialError::Malformed),
                "{bad}"
            );
        }
        for bad in [
            "a/b",
            "0123456789abcdef",
            "0123456789abcdef/0123456789ABCDEF",
            "cairn-relay",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn codes_are_long_random_and_normalised_from_links() {
        let a = random_code();
        assert_eq!(a.len(), CODE_CHARS);
        assert_ne!(a, random_code());
        let link = format!("cairn://invite/{}", a.to_lowercase());
        assert_eq!(normalise_code(&link), a);
        assert_eq!(normalise_code(&format!(" {}-{} ", &a[..10], &a[10..])), a);
    }
}
