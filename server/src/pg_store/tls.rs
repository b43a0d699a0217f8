//! TLS to PostgreSQL, as libpq reads the URL: `sslmode` and `sslrootcert`.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require` and leaves the handshake
//! to a [`MakeTlsConnect`]; this module takes the TLS options out of the URL, builds one
//! rustls client configuration (ring provider only, like the relay's own TLS) whose
//! certificate check matches the mode, and is the small glue between the two.
//!
//! | `sslmode` | TLS | certificate check |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers it, else plain | none |
//! | `require` | always | none; the chain, as `verify-ca`, when `sslrootcert` is given |
//! | `verify-ca` | always | the chain against the roots |
//! | `verify-full` | always | the chain and the host name |
//!
//! The roots are the PEM certificates of `sslrootcert=FILE`, or the system's roots when it
//! is absent or `system` (which, as in libpq, also means `verify-full`).

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::Socket;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore};

/// The `sslmode` of a URL, libpq's five.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(value: &str) -> Result<Mode, io::Error> {
        Ok(match value {
            "disable" => Mode::Disable,
            // libpq's `allow` tries plain first; plain-or-TLS is what `prefer` gives too,
            // and a server that takes plain takes it in both.
            "allow" | "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            _ => {
                return Err(invalid(
                    "the PostgreSQL URL's sslmode is not one of disable, allow, prefer, \
                     require, verify-ca, verify-full",
                ))
            }
        })
    }
}

/// Where the roots for a certificate check come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Roots {
    /// The operating system's store.
    System,
    /// PEM certificates in this file.
    File(PathBuf),
}

/// The TLS options of a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsOptions {
    pub(crate) mode: Mode,
    /// `sslrootcert`, when given.
    pub(crate) roots: Option<Roots>,
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL (tokio-postgres would
/// refuse the verify modes and `sslrootcert`) and returns the rest of the URL with the
/// options. A key=value connection string is returned as it is, with the options
/// tokio-postgres reads from it itself; it cannot ask for a certificate check.
pub(crate) fn split_url(url: &str) -> Result<(String, TlsOptions), io::Error> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if !is_url {
        let lower = url.to_ascii_lowercase();
        if lower.contains("sslrootcert") || lower.contains("sslmode=verify") {
            return Err(invalid(
                "sslmode=verify-ca/verify-full and sslrootcert are read from a \
                 postgres:// URL only",
            ));
        }
        if lower.contains("sslcert") || lower.contains("sslkey") {
            return Err(client_certificates_refused());
        }
        // tokio-postgres reads disable, prefer and require here itself.
        return Ok((
            url.to_owned(),
            TlsOptions {
                mode: Mode::Prefer,
                roots: None,
            },
        ));
    }
    let mut mode = None;
    let mut roots = None;
    let Some((base, query)) = url.split_once('?') else {
        return Ok((
            url.to_owned(),
            TlsOptions {
                mode: Mode::Prefer,
                roots: None,
            },
        ));
    };
    let mut kept = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key {
            "sslmode" => mode = Some(Mode::parse(&percent_decode(value)?)?),
            "sslrootcert" => {
                let value = percent_decode(value)?;
                roots = Some(if value == "system" {
                    Roots::System
                } else {
                    Roots::File(PathBuf::from(value))
                });
            }
            "sslcert" | "sslkey" | "sslpassword" => return Err(client_certificates_refused()),
            _ => kept.push(param),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mode = match (mode, &roots) {
        // libpq: the system's roots are only worth anything with the host name checked.
        (_, Some(Roots::System)) => Mode::VerifyFull,
        (Some(mode), _) => mode,
        (None, _) => Mode::Prefer,
    };
    Ok((rest, TlsOptions { mode, roots }))
}

impl TlsOptions {
    /// What tokio-postgres is told: it negotiates, the connector checks.
    pub(crate) fn ssl_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }

    /// The connector for these options: reads the root certificates now, so a missing or
    /// empty file is an error at start-up rather than at the first connection.
    pub(crate) fn connector(&self) -> Result<RustlsConnect, io::Error> {
        let provider = Arc::new(crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|_| invalid("the TLS provider offers no protocol version"))?;
        // `require` with roots checks the chain, as libpq does with a root file.
        let check = match (self.mode, &self.roots) {
            (Mode::Disable | Mode::Prefer, _) | (Mode::Require, None) => None,
            (Mode::Require | Mode::VerifyCa, _) => Some(false),
            (Mode::VerifyFull, _) => Some(true),
        };
        let config = match check {
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PartialCheck {
                    chain_of: None,
                    provider,
                }))
                .with_no_client_auth(),
            Some(check_name) => {
                let roots = load_roots(self.roots.as_ref().unwrap_or(&Roots::System))?;
                if check_name {
                    builder.with_root_certificates(roots).with_no_client_auth()
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(PartialCheck {
                            chain_of: Some(Arc::new(roots)),
                            provider,
                        }))
                        .with_no_client_auth()
                }
            }
        };
        Ok(RustlsConnect {
            config: Arc::new(config),
        })
    }
}

fn load_roots(roots: &Roots) -> Result<RootCertStore, io::Error> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("read sslrootcert {}: {e}", path_for_errors(path)),
                )
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|_| {
                    invalid(&format!(
                        "sslrootcert {} holds a certificate that does not parse",
                        path_for_errors(path)
                    ))
                })?;
                store.add(cert).map_err(|_| {
                    invalid(&format!(
                        "sslrootcert {} holds a certificate that is not a usable root",
                        path_for_errors(path)
                    ))
                })?;
            }
            if store.is_empty() {
                return Err(invalid(&format!(
                    "sslrootcert {} holds no PEM certificate",
                    path_for_errors(path)
                )));
            }
        }
        Roots::System => {
            // Unreadable entries are skipped, as a browser would: the others still count.
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no system root certificates found for the PostgreSQL certificate check: \
                     give sslrootcert=FILE in the URL",
                ));
            }
        }
    }
    Ok(store)
}

fn path_for_errors(path: &Path) -> String {
    format!("`{}`", path.display())
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_owned())
}

fn client_certificates_refused() -> io::Error {
    invalid("client certificates (sslcert, sslkey) for PostgreSQL are not supported")
}

/// `%XX` sequences of a URL query value (a file path may hold any byte).
fn percent_decode(value: &str) -> Result<String, io::Error> {
    let bad = || invalid("the PostgreSQL URL holds a bad %-escape in a TLS option");
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// A certificate check short of `verify-full`'s: `chain_of: None` (`require` and `prefer`
/// without a root file) encrypts without checking the certificate, as libpq does;
/// `Some(roots)` (`verify-ca`) checks that the chain ends at one of the roots but not the
/// host name (a server reached by an address its certificate does not name still passes).
/// Either way the handshake's signatures are checked against the certificate the server
/// sent.
#[derive(Debug)]
struct PartialCheck {
    chain_of: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PartialCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.chain_of {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Makes a TLS connector per connection (the pool's and the listener's).
#[derive(Clone)]
pub(crate) struct RustlsConnect {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for RustlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RustlsConnect").finish_non_exhaustive()
    }
}

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnector;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnector, io::Error> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|_| invalid("the PostgreSQL host is not a valid TLS server name"))?;
        Ok(RustlsConnector {
            config: self.config.clone(),
            name,
        })
    }
}

/// One connection's TLS handshake.
pub(crate) struct RustlsConnector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnector {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(Box::new(stream)))
        })
    }
}

/// A TLS connection to PostgreSQL.
pub(crate) struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // No `tls-server-end-point` binding: SCRAM still authenticates, without tying
        // it to this TLS session (a server that requires channel binding refuses).
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, TlsOptions) {
        split_url(url).unwrap()
    }

    #[test]
    fn the_tls_options_leave_the_url_and_the_rest_stays() {
        let (rest, tls) =
            split("postgres://u:p@db:5432/x?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=a");
        assert_eq!(rest, "postgres://u:p@db:5432/x?application_name=a");
        assert_eq!(tls.mode, Mode::VerifyFull);
        assert_eq!(tls.roots, Some(Roots::File(PathBuf::from("/etc/ca.pem"))));

        let (rest, tls) = split("postgres://u@db/x?sslmode=require");
        assert_eq!(rest, "postgres://u@db/x");
        assert_eq!(
            (tls.mode, tls.ssl_mode()),
            (Mode::Require, SslMode::Require)
        );

        // libpq's default, and `sslrootcert=system` forces the full check.
        assert_eq!(split("postgres://u@db/x").1.mode, Mode::Prefer);
        assert_eq!(
            split("postgres://u@db/x?sslmode=verify-ca&sslrootcert=system").1,
            TlsOptions {
                mode: Mode::VerifyFull,
                roots: Some(Roots::System)
            }
        );
    }

    #[test]
    fn bad_tls_options_are_refused_with_the_reason() {
        for (url, expect) in [
            ("postgres://u:secret@db/x?sslmode=verify", "sslmode"),
            (
                "postgres://u:secret@db/x?sslcert=c.pem",
                "client certificates",
            ),
            ("postgres://u:secret@db/x?sslrootcert=%zz", "%-escape"),
            (
                "host=db password=secret sslmode=verify-full",
                "postgres:// URL",
            ),
        ] {
            let e = split_url(url).unwrap_err().to_string();
            assert!(e.contains(expect), "{url}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    /// `verify-ca` takes a certificate from the right CA for another host name;
    /// `verify-full` refuses it; both refuse one from another CA.
    #[test]
    fn verify_ca_checks_the_chain_and_verify_full_the_name_too() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db.example".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["other".to_owned()]).unwrap();

        let provider = Arc::new(crypto::ring::default_provider());
        let roots = |der: &CertificateDer<'_>| {
            let mut store = RootCertStore::empty();
            store.add(der.clone().into_owned()).unwrap();
            Arc::new(store)
        };
        let chain_only = |store| PartialCheck {
            chain_of: Some(store),
            provider: provider.clone(),
        };
        let full = |store: Arc<RootCertStore>| {
            rustls::client::WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                .build()
                .unwrap()
        };
        let check = |v: &dyn ServerCertVerifier, host: &str| {
            let name = ServerName::try_from(host.to_owned()).unwrap();
            v.verify_server_cert(cert.der(), &[], &name, &[], UnixTime::now())
        };
        let right = roots(ca.der());
        let wrong = roots(other.cert.der());
        assert!(check(&chain_only(right.clone()), "db.example").is_ok());
        assert!(check(&chain_only(right.clone()), "elsewhere.example").is_ok());
        // `require` without a root file: any certificate, any name.
        let unchecked = PartialCheck {
            chain_of: None,
            provider: provider.clone(),
        };
        assert!(check(&unchecked, "elsewhere.example").is_ok());
        assert!(check(&*full(right.clone()), "db.example").is_ok());
        assert!(check(&*full(right), "elsewhere.example").is_err());
        assert!(check(&chain_only(wrong.clone()), "db.example").is_err());
        assert!(check(&*full(wrong), "db.example").is_err());
    }

    #[test]
    fn a_missing_root_file_is_an_error_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.pem");
        let tls = TlsOptions {
            mode: Mode::VerifyFull,
            roots: Some(Roots::File(missing)),
        };
        let e = tls.connector().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
        let tls = TlsOptions {
            mode: Mode::VerifyCa,
            roots: Some(Roots::File(dir.path().join("empty.pem"))),
        };
        let e = tls.connector().unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
