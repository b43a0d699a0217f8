//! Who is calling: the source address (for rate limits) and the device credential
//! presented as `Authorization: Bearer <token>` or `?token=<token>`.
//!
//! A wrong credential counts against its source address's failed-credentials limit; once
//! that is used up, the address gets 429 for everything that authenticates, a good
//! credential included, until it cools down. Neither the token nor the query string is
//! ever logged.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Uri};
use cairn_sync::membership::{Credential, Identity};

use crate::api::ApiError;
use crate::AppState;

/// The source address of a request (see [`crate::limits::source_address`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Source(pub(crate) IpAddr);

impl FromRequestParts<AppState> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        Ok(Source(crate::limits::source_address(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

/// The credential a request presents: the `Authorization: Bearer` header, else the
/// `token` query parameter (browsers cannot set headers on a websocket).
pub(crate) fn presented_token(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        // Credentials are URL-safe: a percent sign means it is not one of ours.
        .map(str::to_owned)
}

/// Checks the credential of a request from `source`: the identity, or why not.
pub(crate) fn authenticate(
    state: &AppState,
    source: IpAddr,
    token: Option<&str>,
) -> Result<Identity, ApiError> {
    let members = state.members()?;
    if let Err(limited) = members.limiters.blocked(source) {
        return Err(state.limited(limited));
    }
    let Some(token) = token else {
        state.metrics.auth_failures.inc();
        return Err(ApiError::unauthorized("a device credential is required"));
    };
    match members.membership.authenticate(token) {
        Ok(identity) => Ok(identity),
        Err(_) => {
            state.metrics.auth_failures.inc();
            state.failed_credentials.note(token);
            if let Err(limited) = members.limiters.failed_from(source) {
                return Err(state.limited(limited));
            }
            Err(ApiError::unauthorized(
                "the credential is not valid (wrong, rotated or revoked)",
            ))
        }
    }
}

/// Distinct claimed identities whose failures are counted separately between two audit
/// flushes: 1,024. Forged credentials can claim any id; past this many, further ones are
/// counted with the unparseable ones, so an attacker cannot grow the map or the log.
const MAX_CLAIMED: usize = 1024;

/// How often one claimed identity may get a `CredentialFailed` audit entry: once a minute.
pub(crate) const FAILURE_AUDIT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Wrong credentials not yet in the audit log, by the identity they claimed (`None`: a
/// credential that does not parse, or past [`MAX_CLAIMED`]). Each claimed identity gets at
/// most one `CredentialFailed` entry per [`FAILURE_AUDIT_EVERY`], carrying the count.
#[derive(Debug, Default)]
pub(crate) struct FailedCredentials {
    inner: Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    pending: HashMap<Option<Identity>, u64>,
    /// When each key last got an entry (pruned once older than a period).
    written: HashMap<Option<Identity>, std::time::Instant>,
}

impl FailedCredentials {
    /// Counts a refused `token` under the identity it claims.
    pub(crate) fn note(&self, token: &str) {
        let claimed = Credential::parse(token).ok().map(|c| c.identity().clone());
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = if claimed.is_some()
            && inner.pending.len() >= MAX_CLAIMED
            && !inner.pending.contains_key(&claimed)
        {
            None
        } else {
            claimed
        };
        *inner.pending.entry(key).or_insert(0) += 1;
    }

    /// Takes the counts of the keys that may get an entry at `now` (none in the last
    /// period), marking them written; the others wait.
    pub(crate) fn take_due(&self, now: std::time::Instant) -> Vec<(Option<Identity>, u64)> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Failures { pending, written } = &mut *inner;
        written.retain(|_, at| now.duration_since(*at) < FAILURE_AUDIT_EVERY);
        let mut due = Vec::new();
        pending.retain(|key, count| {
            if written.contains_key(key) {
                return true;
            }
            due.push((key.clone(), *count));
            false
        });
        for (key, _) in &due {
            written.insert(key.clone(), now);
        }
        due.sort();
        due
    }
}

/// An authenticated caller of the membership API.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) identity: Identity,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Ok(Source(source)) = Source::from_request_parts(parts, state).await;
        let token = presented_token(&parts.headers, &parts.uri);
        let identity = authenticate(state, source, token.as_deref())?;
        Ok(Caller { identity })
    }
}

/// A caller who may or may not present a credential (redeeming an invite: without one a
/// new member and device are made). A credential that is presented must be valid.
#[derive(Clone, Debug)]
pub(crate) struct MaybeCaller(pub(crate) Option<Identity>);

impl FromRequestParts<AppState> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = presented_token(&parts.headers, &parts.uri);
        if token.is_none() {
            return Ok(MaybeCaller(None));
        }
        let Ok(Source(source)) = Source::from_request_parts(parts, state).await;
        authenticate(state, source, token.as_deref()).map(|id| MaybeCaller(Some(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn failures_are_audited_once_a_period_per_claimed_identity_and_bounded() {
        let failed = FailedCredentials::default();
        let t0 = std::time::Instant::now();
        failed.note("not a credential");
        failed.note("also not one");
        assert_eq!(failed.take_due(t0), vec![(None, 2)]);
        assert!(failed.take_due(t0).is_empty(), "nothing new");
        failed.note("a third");
        assert!(
            failed.take_due(t0 + FAILURE_AUDIT_EVERY / 2).is_empty(),
            "one entry per key per period: the count waits"
        );
        assert_eq!(failed.take_due(t0 + FAILURE_AUDIT_EVERY), vec![(None, 1)]);
        for _ in 0..(MAX_CLAIMED + 10) {
            let (credential, _) = Credential::issue(Identity {
                member: cairn_sync::membership::random_id().into(),
                device: cairn_sync::membership::random_id().into(),
            });
            failed.note(credential.as_str());
        }
        let taken = failed.take_due(t0 + 3 * FAILURE_AUDIT_EVERY);
        assert_eq!(
            taken.len(),
            MAX_CLAIMED + 1,
            "bounded: the rest count as one key"
        );
        assert_eq!(
            taken.iter().map(|(_, n)| n).sum::<u64>(),
            (MAX_CLAIMED + 10) as u64
        );
        assert!(taken.contains(&(None, 10)));
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_query() {
        let uri: Uri = "/?a=1&token=cairn1_x&b=2".parse().unwrap();
        assert_eq!(
            presented_token(&headers(None), &uri).as_deref(),
            Some("cairn1_x")
        );
        assert_eq!(
            presented_token(&headers(Some("Bearer cairn1_y")), &uri).as_deref(),
            Some("cairn1_y"),
            "the header wins"
        );
        assert_eq!(
            presented_token(&headers(Some("bearer  cairn1_z ")), &"/".parse().unwrap()).as_deref(),
            Some("cairn1_z")
        );
        assert_eq!(
            presented_token(&headers(Some("Basic abc")), &uri),
            None,
            "another scheme is no credential (and the query is not consulted)"
        );
        assert_eq!(presented_token(&headers(None), &"/".parse().unwrap()), None);
    }
}
