//! Who is calling: the source address (for rate limits) and the device credential
//! presented as `Authorization: Bearer <token>` or `?token=<token>`.
//!
//! A wrong credential counts against its source address's failed-credentials limit; once
//! that is used up, the address gets 429 for everything that authenticates, a good
//! credential included, until it cools down. Neither the token nor the query string is
//! ever logged.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Uri};
use cairn_sync::membership::Identity;

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
            if let Err(limited) = members.limiters.failed_from(source) {
                return Err(state.limited(limited));
            }
            Err(ApiError::unauthorized(
                "the credential is not valid (wrong, rotated or revoked)",
            ))
        }
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
