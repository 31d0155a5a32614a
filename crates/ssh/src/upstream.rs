//! The gateway's own SSH connection to a host: its private key, the host key checked
//! against the target's `known_hosts` file (never trusted on first use).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use crate::config::SshTarget;
use crate::error::SshError;

/// How long the gateway waits for a host to connect, exchange keys and log in.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Ciphers the gateway asks hosts for, best first. The client's order decides, and on this
/// leg the gateway is the client: AES-GCM runs on the CPU's AES instructions (aws-lc) and
/// is several times faster than chacha20-poly1305 on x86, which matters because the
/// gateway encrypts every byte twice. (On the clients' leg their own order decides:
/// OpenSSH's `ssh` picks chacha20-poly1305 unless told `-c aes128-gcm@openssh.com`.)
const UPSTREAM_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// What the gateway needs to reach one target.
#[derive(Clone)]
pub struct UpstreamTarget {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub login: String,
    key: Arc<PrivateKey>,
    known_hosts: PathBuf,
}

impl std::fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// A logged-in connection to a host; channels are opened on it.
pub type Upstream = client::Handle<HostKeyCheck>;

/// Reads an unencrypted OpenSSH private key.
pub fn load_key(path: &Path) -> Result<PrivateKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let key = PrivateKey::from_openssh(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    if key.is_encrypted() {
        return Err(format!(
            "{}: the key is passphrase-protected; the gateway needs an unencrypted key",
            path.display()
        ));
    }
    Ok(key)
}

impl UpstreamTarget {
    pub fn from_config(t: &SshTarget) -> Result<Self, String> {
        let key =
            load_key(&t.private_key_file).map_err(|e| format!("ssh.targets ({}).private_key_file: {e}", t.name))?;
        Ok(Self {
            name: t.name.clone(),
            host: t.host.clone(),
            port: t.port,
            login: t.login.clone(),
            key: Arc::new(key),
            known_hosts: t.known_hosts.clone(),
        })
    }

    /// Connects, checks the host key and logs in as `login` with the gateway's key.
    pub async fn connect(&self) -> Result<Upstream, SshError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner())
            .await
            .map_err(|_| SshError::Target(format!("{}:{} did not answer in time", self.host, self.port)))?
    }

    async fn connect_inner(&self) -> Result<Upstream, SshError> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| SshError::Target(format!("cannot connect to {}:{}: {e}", self.host, self.port)))?;
        let _ = tcp.set_nodelay(true);
        let config = Arc::new(client::Config {
            preferred: russh::Preferred {
                cipher: std::borrow::Cow::Borrowed(UPSTREAM_CIPHERS),
                ..russh::Preferred::DEFAULT
            },
            nodelay: true,
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            ..client::Config::default()
        });
        let check = HostKeyCheck {
            host: self.host.clone(),
            port: self.port,
            known_hosts: self.known_hosts.clone(),
        };
        let mut handle = match client::connect_stream(config, tcp, check).await {
            Ok(h) => h,
            Err(e) => {
                return Err(SshError::Target(format!(
                    "SSH handshake with {}:{} failed: {e}",
                    self.host, self.port
                )));
            }
        };
        let hash = if matches!(self.key.algorithm(), russh::keys::Algorithm::Rsa { .. }) {
            handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| SshError::Target(e.to_string()))?
                .flatten()
                .or(Some(HashAlg::Sha256))
        } else {
            None
        };
        let auth = handle
            .authenticate_publickey(&self.login, PrivateKeyWithHashAlg::new(Arc::clone(&self.key), hash))
            .await
            .map_err(|e| SshError::Target(format!("login to {}:{} failed: {e}", self.host, self.port)))?;
        if !auth.success() {
            return Err(SshError::Target(format!(
                "{}:{} refused the gateway's key for {}",
                self.host, self.port, self.login
            )));
        }
        Ok(handle)
    }
}

/// The client handler: accepts the host only when its key is in `known_hosts`.
pub struct HostKeyCheck {
    host: String,
    port: u16,
    known_hosts: PathBuf,
}

impl client::Handler for HostKeyCheck {
    type Error = SshError;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            tracing::warn!(host = %self.host, port = self.port, "The host presented a certificate; only known_hosts keys are trusted.");
            return Ok(false);
        };
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => Ok(true),
            Ok(false) => {
                tracing::warn!(host = %self.host, port = self.port, known_hosts = %self.known_hosts.display(), "The host's key is not in its known_hosts file; refusing to connect.");
                Ok(false)
            }
            Err(error) => {
                tracing::warn!(host = %self.host, port = self.port, %error, "The host's key does not match its known_hosts file; refusing to connect.");
                Ok(false)
            }
        }
    }
}
