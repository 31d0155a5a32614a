//! The gateway's own login to a target PostgreSQL: TCP with no-delay, optional TLS with no
//! silent downgrade, SCRAM-SHA-256 / MD5 / cleartext password, then the session
//! parameters and cancel key the relay hands to its client.

use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_lc_rs::{digest, hmac, pbkdf2};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::startup::{
    Authentication, BackendKeyData, ParameterStatus, Password, PasswordMessageFamily, SASLInitialResponse,
    SASLResponse, SecretKey, Startup,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::wire::{self, Frame};

/// Largest backend message accepted (PostgreSQL's own limit for a field is 1 GB).
pub const MAX_BACKEND_MESSAGE: usize = 0x4000_0000;

/// TLS towards the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// Encrypted, certificate not verified. Refused SSL is an error, never plaintext.
    Require,
    /// Encrypted, certificate verified against the CA file and the host name.
    VerifyFull,
}

/// How to reach and log in to one target.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database to open.
    pub database: String,
    /// The gateway's role on the target.
    pub user: String,
    /// The gateway's password on the target.
    pub password: String,
    /// TLS mode.
    pub tls: TlsMode,
    /// CA certificates (PEM) for `verify-full`.
    pub ca_file: Option<PathBuf>,
}

/// A logged-in connection to the target, ready for queries.
pub struct Upstream {
    /// The connection, plain or TLS.
    pub stream: UpstreamStream,
    /// Bytes read past ReadyForQuery, not yet framed.
    pub read_buf: BytesMut,
    /// ParameterStatus values from login, in arrival order.
    pub params: Vec<(String, String)>,
    /// BackendKeyData: (pid, secret).
    pub backend_key: (i32, i32),
}

/// The target connection.
pub enum UpstreamStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why the target could not be reached or logged in to.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Network failure.
    #[error("connection to the target failed: {0}")]
    Io(#[from] std::io::Error),
    /// TLS set-up failed.
    #[error("TLS to the target failed: {0}")]
    Tls(String),
    /// The target does not accept SSL though the configuration requires it.
    #[error("the target refused SSL and TLS mode {0:?} forbids plaintext")]
    SslRefused(TlsMode),
    /// The target answered with an error (bad password: SQLSTATE 28P01).
    #[error("the target refused the login: {severity} {code}: {message}")]
    Server {
        /// Severity (FATAL, ERROR).
        severity: String,
        /// SQLSTATE.
        code: String,
        /// The target's message.
        message: String,
    },
    /// The target asked for an authentication method the gateway does not do.
    #[error("unsupported authentication method requested by the target: {0}")]
    UnsupportedAuth(String),
    /// The target broke the protocol.
    #[error("protocol violation by the target: {0}")]
    Protocol(String),
}

impl UpstreamError {
    /// SQLSTATE of a server-side refusal.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            UpstreamError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Certificate verifier for `require`: encryption without authentication of the server,
/// as libpq's `sslmode=require` does. Handshake signatures are still checked.
#[derive(Debug)]
struct NoCertificateCheck(Arc<rustls::crypto::CryptoProvider>);

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Upstream {
    /// Connect and log in; returns once the target sent ReadyForQuery.
    pub async fn connect(config: &UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let mut stream = open(&config.host, config.port, &config.tls, config).await?;
        let mut startup = Startup::default();
        startup.protocol_number_major = 3;
        startup.protocol_number_minor = 0;
        startup.parameters.insert("user".to_owned(), config.user.clone());
        startup
            .parameters
            .insert("database".to_owned(), config.database.clone());
        startup
            .parameters
            .insert("application_name".to_owned(), "gatehouse".to_owned());
        let mut out = BytesMut::new();
        wire::encode(&startup, &mut out).map_err(protocol)?;
        stream.write_all(&out).await?;

        let mut buf = BytesMut::with_capacity(8192);
        let mut params = Vec::new();
        let mut backend_key = None;
        let mut scram: Option<ScramClient> = None;
        loop {
            let frame = read_frame(&mut stream, &mut buf).await?;
            match frame.tag {
                b'R' => {
                    let auth: Authentication = wire::decode(&frame).map_err(protocol)?;
                    let reply = match auth {
                        Authentication::Ok => None,
                        Authentication::CleartextPassword => {
                            Some(PasswordMessageFamily::Password(Password::new(config.password.clone())))
                        }
                        Authentication::MD5Password(salt) => Some(PasswordMessageFamily::Password(Password::new(
                            md5_password(&config.user, &config.password, &salt),
                        ))),
                        Authentication::SASL(mechanisms) => {
                            if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                                return Err(UpstreamError::UnsupportedAuth(mechanisms.join(", ")));
                            }
                            let client = ScramClient::new()?;
                            let first = client.client_first();
                            scram = Some(client);
                            Some(PasswordMessageFamily::SASLInitialResponse(SASLInitialResponse::new(
                                "SCRAM-SHA-256".to_owned(),
                                Some(Bytes::from(first)),
                            )))
                        }
                        Authentication::SASLContinue(data) => {
                            let client = scram
                                .as_mut()
                                .ok_or_else(|| UpstreamError::Protocol("SASLContinue before SASL".to_owned()))?;
                            let msg = client.client_final(&data, &config.password)?;
                            Some(PasswordMessageFamily::SASLResponse(SASLResponse::new(Bytes::from(msg))))
                        }
                        Authentication::SASLFinal(data) => {
                            let client = scram
                                .as_ref()
                                .ok_or_else(|| UpstreamError::Protocol("SASLFinal before SASL".to_owned()))?;
                            client.verify_server_final(&data)?;
                            None
                        }
                        other => {
                            return Err(UpstreamError::UnsupportedAuth(format!("{other:?}")));
                        }
                    };
                    if let Some(reply) = reply {
                        out.clear();
                        wire::encode(&reply, &mut out).map_err(protocol)?;
                        stream.write_all(&out).await?;
                    }
                }
                b'S' => {
                    let p: ParameterStatus = wire::decode(&frame).map_err(protocol)?;
                    params.push((p.name, p.value));
                }
                b'K' => {
                    let k: BackendKeyData = wire::decode(&frame).map_err(protocol)?;
                    let secret = k
                        .secret_key
                        .as_i32()
                        .ok_or_else(|| UpstreamError::Protocol("non-32-bit cancel key on protocol 3.0".to_owned()))?;
                    backend_key = Some((k.pid, secret));
                }
                b'E' => return Err(server_error(&frame)),
                b'N' | b'v' => {}
                b'Z' => break,
                other => {
                    return Err(UpstreamError::Protocol(format!(
                        "unexpected message {:?} during login",
                        char::from(other)
                    )));
                }
            }
        }
        let backend_key =
            backend_key.ok_or_else(|| UpstreamError::Protocol("no BackendKeyData before ReadyForQuery".to_owned()))?;
        Ok(Upstream {
            stream,
            read_buf: buf,
            params,
            backend_key,
        })
    }
}

/// Ask the target to cancel the query running in backend `pid`.
pub async fn cancel(config: &UpstreamConfig, pid: i32, secret: i32) -> Result<(), UpstreamError> {
    let mut stream = open(&config.host, config.port, &config.tls, config).await?;
    let mut out = BytesMut::new();
    let req = CancelRequest::new(pid, SecretKey::I32(secret));
    wire::encode(&req, &mut out).map_err(protocol)?;
    stream.write_all(&out).await?;
    stream.flush().await?;
    // The target closes the connection without answering; wait for that so the cancel
    // has been delivered when this returns.
    let mut sink = [0u8; 64];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

async fn open(host: &str, port: u16, tls: &TlsMode, config: &UpstreamConfig) -> Result<UpstreamStream, UpstreamError> {
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    if *tls == TlsMode::Disable {
        return Ok(UpstreamStream::Plain(tcp));
    }
    let mut tcp = tcp;
    // SSLRequest: length 8, code 80877103.
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(UpstreamError::SslRefused(tls.clone()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    let client_config = match tls {
        TlsMode::VerifyFull => {
            let ca = config
                .ca_file
                .as_ref()
                .ok_or_else(|| UpstreamError::Tls("verify-full needs a CA file (ca_file)".to_owned()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in
                CertificateDer::pem_file_iter(ca).map_err(|e| UpstreamError::Tls(format!("{}: {e}", ca.display())))?
            {
                let cert = cert.map_err(|e| UpstreamError::Tls(format!("{}: {e}", ca.display())))?;
                roots.add(cert).map_err(|e| UpstreamError::Tls(e.to_string()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider)))
            .with_no_client_auth(),
    };
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| UpstreamError::Tls(format!("invalid server name {host}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    Ok(UpstreamStream::Tls(Box::new(stream)))
}

async fn read_frame(stream: &mut UpstreamStream, buf: &mut BytesMut) -> Result<Frame, UpstreamError> {
    loop {
        if let Some(frame) =
            wire::try_frame(buf, MAX_BACKEND_MESSAGE).map_err(|e| UpstreamError::Protocol(e.to_string()))?
        {
            return Ok(frame);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(UpstreamError::Protocol(
                "the target closed the connection during login".to_owned(),
            ));
        }
    }
}

fn server_error(frame: &Frame) -> UpstreamError {
    match wire::decode::<ErrorResponse>(frame) {
        Ok(e) => {
            let field = |code: u8| {
                e.fields
                    .iter()
                    .find(|(c, _)| *c == code)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            UpstreamError::Server {
                severity: field(b'S'),
                code: field(b'C'),
                message: field(b'M'),
            }
        }
        Err(e) => protocol(e),
    }
}

fn protocol(e: pgwire::error::PgWireError) -> UpstreamError {
    UpstreamError::Protocol(e.to_string())
}

/// "md5" + md5(md5(password + user) + salt), as PostgreSQL expects.
fn md5_password(user: &str, password: &str, salt: &[u8]) -> String {
    use md5::{Digest, Md5};
    let inner = hex::encode(Md5::digest(format!("{password}{user}").as_bytes()));
    let mut outer = Md5::new();
    outer.update(inner.as_bytes());
    outer.update(salt);
    format!("md5{}", hex::encode(outer.finalize()))
}

/// Client side of SCRAM-SHA-256 (RFC 5802/7677) without channel binding.
struct ScramClient {
    nonce: String,
    auth_message: Option<String>,
    salted: Option<[u8; 32]>,
}

impl ScramClient {
    fn new() -> Result<ScramClient, UpstreamError> {
        let mut raw = [0u8; 18];
        aws_lc_rs::rand::fill(&mut raw)
            .map_err(|_| UpstreamError::Protocol("no randomness for SCRAM nonce".to_owned()))?;
        Ok(ScramClient {
            nonce: B64.encode(raw),
            auth_message: None,
            salted: None,
        })
    }

    fn client_first_bare(&self) -> String {
        // PostgreSQL takes the user from the startup packet, so the SCRAM name is empty.
        format!("n=,r={}", self.nonce)
    }

    fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare()).into_bytes()
    }

    fn client_final(&mut self, server_first: &[u8], password: &str) -> Result<Vec<u8>, UpstreamError> {
        let bad = |what: &str| UpstreamError::Protocol(format!("SCRAM server-first: {what}"));
        let server_first = std::str::from_utf8(server_first).map_err(|_| bad("not UTF-8"))?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in server_first.split(',') {
            if let Some(v) = part.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = part.strip_prefix("s=") {
                salt = Some(B64.decode(v).map_err(|_| bad("salt"))?);
            } else if let Some(v) = part.strip_prefix("i=") {
                iterations = Some(v.parse::<u32>().map_err(|_| bad("iterations"))?);
            }
        }
        let nonce = nonce.ok_or_else(|| bad("no nonce"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(bad("nonce does not extend ours"));
        }
        let salt = salt.ok_or_else(|| bad("no salt"))?;
        let iterations = iterations
            .and_then(NonZeroU32::new)
            .ok_or_else(|| bad("no iterations"))?;
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &salted), b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare());
        let signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        self.auth_message = Some(auth_message);
        self.salted = Some(salted);
        let mut out = BytesMut::new();
        out.put_slice(without_proof.as_bytes());
        out.put_slice(b",p=");
        out.put_slice(B64.encode(proof).as_bytes());
        Ok(out.to_vec())
    }

    fn verify_server_final(&self, data: &[u8]) -> Result<(), UpstreamError> {
        let bad = |what: &str| UpstreamError::Protocol(format!("SCRAM server-final: {what}"));
        let text = std::str::from_utf8(data).map_err(|_| bad("not UTF-8"))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(bad(e));
        }
        let claimed = text
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .ok_or_else(|| bad("no verifier"))?;
        let (Some(salted), Some(auth_message)) = (&self.salted, &self.auth_message) else {
            return Err(bad("out of order"));
        };
        let server_key = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, salted), b"Server Key");
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, server_key.as_ref()),
            auth_message.as_bytes(),
            &claimed,
        )
        .map_err(|_| bad("the server does not know the password: wrong signature"))
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
