//! How the client calls the relay's membership API: an [`HttpTransport`] sends one
//! [`HttpRequest`] and returns its [`HttpResponse`]. Like the websocket [`Transport`], a
//! phone app implements it with its platform HTTP stack (platform TLS, proxies, background
//! rules); [`HyperTransport`] serves tests and desktop over plain `http://`.
//!
//! TLS is the platform's: [`HyperTransport`] speaks HTTP/1.1 over TCP only and refuses
//! `https://` URLs (a rustls-based transport would not cross-build for phones here; a
//! desktop TLS transport is a later addition).
//!
//! [`Transport`]: super::Transport

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header;
use hyper_util::rt::TokioIo;

use super::transport::{bearer, retry_after};
use super::TransportError;
use crate::membership::Credential;

/// The largest response body [`HyperTransport`] reads: 1 MiB. The biggest answer is a
/// group's member list (a few hundred members of well under 1 KiB each); anything larger
/// is not a relay speaking this API.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// An HTTP method of the membership API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
}

impl Method {
    /// The method's name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// One call to the relay. `Debug` never shows the credential, the body (pseudonyms and
/// codes of conduct are content) or an invite code in the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method.
    pub method: Method,
    /// The whole URL (e.g. `http://127.0.0.1:8080/v1/groups`).
    pub url: String,
    /// The device credential, sent as `Authorization: Bearer <token>`; `None` for the calls
    /// a device makes before it has one (invite preview and redeem, device link).
    pub bearer: Option<Credential>,
    /// A JSON body (`Content-Type: application/json`), if any.
    pub json: Option<Vec<u8>>,
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &redacted(&self.url))
            .field("authenticated", &self.bearer.is_some())
            .field("json_bytes", &self.json.as_ref().map(Vec::len))
            .finish()
    }
}

/// `url` with the invite code of `…/invites/{code}` hidden (a code is a capability).
fn redacted(url: &str) -> String {
    match url.split_once("/invites/") {
        Some((head, tail)) if tail != "redeem" => format!("{head}/invites/…"),
        _ => url.to_owned(),
    }
}

/// The relay's answer.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The HTTP status.
    pub status: u16,
    /// `Retry-After` in seconds (sent with 429 and 503), if present.
    pub retry_after: Option<Duration>,
    /// The body (JSON, or empty for 204).
    pub body: Vec<u8>,
}

impl fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("retry_after", &self.retry_after)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// Sends membership API calls to a relay. A failure to get any answer (no network, DNS,
/// TLS, a dropped connection) is [`TransportError::Unreachable`]; every HTTP answer,
/// errors included, is an `Ok` response.
pub trait HttpTransport: Send + Sync {
    /// Sends `request` and returns the relay's answer.
    fn request(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>>;
}

/// Plain HTTP/1.1 over TCP with hyper, one connection per call (membership calls are rare;
/// a pool would only keep sockets open on a phone). For tests and desktop: `http://`
/// only. TLS is the platform's (a phone app implements [`HttpTransport`] with its own
/// stack); a desktop TLS transport is a later addition.
#[derive(Clone, Debug, Default)]
pub struct HyperTransport;

impl HyperTransport {
    /// A transport for `http://` relays.
    pub fn new() -> Self {
        HyperTransport
    }
}

fn unreachable(reason: impl fmt::Display) -> TransportError {
    TransportError::Unreachable {
        reason: reason.to_string(),
    }
}

impl HttpTransport for HyperTransport {
    fn request(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        Box::pin(async move {
            let uri: hyper::Uri = request.url.parse().map_err(unreachable)?;
            if uri.scheme_str() != Some("http") {
                return Err(unreachable(
                    "only http:// URLs: TLS is the platform's HTTP stack's",
                ));
            }
            let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
                return Err(unreachable("the URL has no host"));
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let stream = tokio::net::TcpStream::connect((host, uri.port_u16().unwrap_or(80)))
                .await
                .map_err(unreachable)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(unreachable)?;
            // The connection task ends when the response is read and the sender dropped.
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "relay API connection ended with an error");
                }
            });
            let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            let mut builder = hyper::Request::builder()
                .method(request.method.as_str())
                .uri(path)
                .header(header::HOST, authority.as_str())
                .header(header::ACCEPT, "application/json");
            if let Some(value) = request.bearer.as_ref().and_then(bearer) {
                builder = builder.header(header::AUTHORIZATION, value);
            }
            let body = match request.json {
                Some(json) => {
                    builder = builder.header(header::CONTENT_TYPE, "application/json");
                    Full::new(Bytes::from(json))
                }
                None => Full::new(Bytes::new()),
            };
            let req = builder.body(body).map_err(unreachable)?;
            let response = sender.send_request(req).await.map_err(unreachable)?;
            let status = response.status().as_u16();
            let retry = retry_after(response.headers());
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(unreachable)?
                .to_bytes()
                .to_vec();
            Ok(HttpResponse {
                status,
                retry_after: retry,
                body,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::client::{ClientError, RelayApi};
    use crate::ids::{DeviceId, MemberId};
    use crate::membership::{random_id, Identity};

    /// Serves one request on loopback with `answer` (a whole HTTP/1.1 response) and
    /// returns what it received.
    async fn one_shot(answer: String) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then as many body bytes as Content-Length says.
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    if body.len() >= length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            socket.write_all(answer.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
            String::from_utf8(got).unwrap()
        });
        (base, served)
    }

    #[tokio::test]
    async fn hyper_sends_the_bearer_and_json_and_reads_retry_after() {
        let body = r#"{"error":"quota_exceeded","message":"later"}"#;
        let (base, served) = one_shot(format!(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
        .await;
        let me = Credential::issue(Identity {
            member: MemberId::from(random_id()),
            device: DeviceId::from(random_id()),
        })
        .0;
        let api = RelayApi::over_http(&base).with_credential(me.clone());
        let got = api.create_group("Ana", "Be kind").await.unwrap_err();
        assert!(
            matches!(got, ClientError::QuotaExceeded { retry_after: Some(d) } if d == Duration::from_secs(3)),
            "{got:?}"
        );
        let request = served.await.unwrap();
        assert!(
            request.starts_with("POST /v1/groups HTTP/1.1\r\n"),
            "{request}"
        );
        let lower = request.to_ascii_lowercase();
        assert!(lower.contains(&format!(
            "authorization: bearer {}",
            me.as_str().to_ascii_lowercase()
        )));
        assert!(lower.contains("content-type: application/json"));
        assert!(request.ends_with(r#"{"pseudonym":"Ana","code_of_conduct":"Be kind"}"#));
    }

    #[tokio::test]
    async fn hyper_refuses_tls_urls_and_unreachable_relays_are_offline() {
        let api = RelayApi::over_http("https://127.0.0.1:1");
        assert!(matches!(
            api.preview_invite("ABCD").await,
            Err(ClientError::Offline)
        ));
        // A port nothing listens on (bound, then closed).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        assert!(matches!(
            RelayApi::over_http(&base).preview_invite("ABCD").await,
            Err(ClientError::Offline)
        ));
    }
}
