//! The SSH listener: terminates the client's SSH connection with russh, takes the SSH user
//! name as the target and the password (or the one keyboard-interactive answer) as the
//! caller's OIDC token or `ghc_` credential, opens a core session, and hands every channel
//! to a task that asks the core about it before anything reaches the host.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::{Gateway, Protocol, Session, serve_connections, stopped};
use russh::keys::PrivateKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, Response};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect, MethodKind, MethodSet, SshId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OnceCell, Semaphore, watch};

use crate::ca::SshCa;
use crate::channel::{self, ChannelContext};
use crate::config::SshConfig;
use crate::error::SshError;
use crate::upstream::{Upstream, UpstreamTarget};

/// What a connection is told when it is closed because its token or credential expired.
const EXPIRED: &str = "gatehouse: the token or credential of this session expired; connect again with a fresh one";
const SHUTDOWN: &str = "gatehouse: the gateway is shutting down";
const AUTH_TIMEOUT: &str = "gatehouse: authentication timed out";
/// How long a closing connection's channels get to write their last records.
const DRAIN: Duration = Duration::from_secs(5);

/// The SSH frontend, shared by every connection.
pub struct SshFrontend {
    gateway: Arc<Gateway>,
    russh: Arc<russh::server::Config>,
    ca: Arc<SshCa>,
    targets: HashMap<String, UpstreamTarget>,
    max_connections: usize,
    auth_timeout: Duration,
    max_auth_attempts: usize,
    max_channels: usize,
    recordings: PathBuf,
    record_input: bool,
}

/// The host's connection, opened on the first channel that needs it.
pub(crate) type UpstreamSlot = OnceCell<Arc<Upstream>>;

impl SshFrontend {
    /// Loads (or, on first start, generates) the host key and every target's key.
    pub fn new(gateway: Arc<Gateway>, config: &SshConfig, state_dir: &Path) -> Result<Self, String> {
        let host_key = load_or_create_key(&config.host_key_path(), "gatehouse host key", "ssh.host_key")?;
        let ca = Arc::new(SshCa::load_or_create(&config.ca_key_path())?);
        let mut targets = HashMap::new();
        for t in &config.targets {
            targets.insert(t.name.clone(), UpstreamTarget::from_config(t)?);
        }
        let recordings = state_dir.join("recordings");
        create_private_dir(&recordings).map_err(|e| format!("cannot create {}: {e}", recordings.display()))?;
        let russh = russh::server::Config {
            server_id: SshId::Standard(Cow::Borrowed("SSH-2.0-Gatehouse")),
            // Public keys: only as certificates signed by the gateway's CA; a bare key
            // never authenticates.
            methods: MethodSet::from(
                &[
                    MethodKind::PublicKey,
                    MethodKind::Password,
                    MethodKind::KeyboardInteractive,
                ][..],
            ),
            auth_rejection_time: Duration::from_millis(500),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![host_key],
            // The "none" probe OpenSSH sends first counts as an attempt in russh.
            max_auth_attempts: config.max_auth_attempts + 1,
            // Idle sessions stay open (the token's expiry ends them); dead peers are found
            // by keepalives. The pre-auth limit is enforced by the connection task.
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 3,
            nodelay: true,
            ..russh::server::Config::default()
        };
        Ok(Self {
            gateway,
            russh: Arc::new(russh),
            ca,
            targets,
            max_connections: config.max_connections,
            auth_timeout: Duration::from_secs(config.auth_timeout_secs),
            max_auth_attempts: config.max_auth_attempts,
            max_channels: config.max_channels,
            recordings,
            record_input: config.record_input,
        })
    }

    /// The CA that signs the certificates this listener accepts.
    pub fn ca(&self) -> Arc<SshCa> {
        Arc::clone(&self.ca)
    }

    /// Serves `listener` until `shutdown` turns true, then waits for open sessions to end.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        let this = Arc::clone(&self);
        serve_connections(
            "ssh",
            listener,
            self.max_connections,
            shutdown,
            move |tcp, peer, shutdown| Arc::clone(&this).connection(tcp, peer, shutdown),
        )
        .await;
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, mut shutdown: watch::Receiver<bool>) {
        let (authed_tx, mut authed_rx) = watch::channel(None);
        let upstream: Arc<UpstreamSlot> = Arc::new(OnceCell::new());
        let channels = Arc::new(Semaphore::new(self.max_channels));
        let handler = ConnectionHandler {
            frontend: Arc::clone(&self),
            peer,
            attempts: 0,
            session: None,
            authed: authed_tx,
            upstream: Arc::clone(&upstream),
            channels: Arc::clone(&channels),
        };
        let deadline = tokio::time::Instant::now() + self.auth_timeout;
        let started = tokio::time::timeout_at(
            deadline,
            russh::server::run_stream(Arc::clone(&self.russh), tcp, handler),
        )
        .await;
        let running = match started {
            Ok(Ok(running)) => running,
            Ok(Err(error)) => {
                tracing::info!(client = %peer, %error, "SSH connection ended before key exchange.");
                return;
            }
            Err(_) => {
                tracing::info!(client = %peer, "SSH client sent no banner in time.");
                return;
            }
        };
        let handle = running.handle();
        tokio::pin!(running);

        // Before authentication: bounded in time.
        let session = tokio::select! {
            result = &mut running => {
                if let Err(error) = result {
                    tracing::info!(client = %peer, %error, "SSH connection ended before authentication.");
                }
                return;
            }
            authed = async { authed_rx.wait_for(Option::is_some).await.ok().and_then(|s| s.clone()) } => authed,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::info!(client = %peer, "SSH client did not authenticate in time.");
                let _ = handle.disconnect(Disconnect::ByApplication, AUTH_TIMEOUT.into(), "en".into()).await;
                return;
            }
            _ = stopped(&mut shutdown) => {
                let _ = handle.disconnect(Disconnect::ByApplication, SHUTDOWN.into(), "en".into()).await;
                return;
            }
        };
        let Some(session) = session else {
            let _ = (&mut running).await;
            return;
        };
        let span = tracing::info_span!("session", session = %session.id(), user = %session.identity().display_name(), target = %session.target().name, protocol = "ssh");
        let _entered = span.enter();
        tracing::info!(client = %peer, "SSH session opened.");

        let mut finished = false;
        let reason = tokio::select! {
            result = &mut running => {
                finished = true;
                match result {
                    Ok(()) => "client closed".to_string(),
                    Err(error) => {
                        tracing::info!(%error, "SSH connection failed.");
                        error.to_string()
                    }
                }
            }
            _ = tokio::time::sleep(session.time_left()) => {
                tracing::info!("Closing the SSH session: its token or credential expired.");
                let _ = handle.disconnect(Disconnect::ByApplication, EXPIRED.into(), "en".into()).await;
                "token expired".to_string()
            }
            _ = stopped(&mut shutdown) => {
                let _ = handle.disconnect(Disconnect::ByApplication, SHUTDOWN.into(), "en".into()).await;
                "gateway shutdown".to_string()
            }
        };
        if !finished {
            let _ = tokio::time::timeout(DRAIN, &mut running).await;
        }
        // Channels hold a permit each until they have written their audit records.
        let all = u32::try_from(self.max_channels).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(DRAIN, channels.acquire_many(all)).await;
        if let Some(up) = upstream.get() {
            let _ = up.disconnect(Disconnect::ByApplication, "session ended", "en").await;
        }
        session.end(&reason).await;
        tracing::info!(%reason, "SSH session closed.");
    }
}

/// russh's callbacks for one client connection. Authentication is decided here; each
/// channel is handed to its own task (see [`crate::channel`]), which owns it from then on.
struct ConnectionHandler {
    frontend: Arc<SshFrontend>,
    peer: SocketAddr,
    attempts: usize,
    session: Option<Session>,
    authed: watch::Sender<Option<Session>>,
    upstream: Arc<UpstreamSlot>,
    channels: Arc<Semaphore>,
}

impl ConnectionHandler {
    /// The one authentication path of password and keyboard-interactive.
    async fn check_secret(&mut self, user: &str, secret: &str) -> Result<Auth, SshError> {
        self.attempts += 1;
        if self.attempts > self.frontend.max_auth_attempts || self.session.is_some() {
            return Ok(Auth::Reject {
                proceed_with_methods: Some(MethodSet::empty()),
                partial_success: false,
            });
        }
        // An unknown target is refused by the core exactly like a denied connect.
        match self
            .frontend
            .gateway
            .connect(secret, Protocol::Ssh, user, self.peer)
            .await
        {
            Ok(session) => self.opened(session, user).await,
            Err(refusal) => {
                tracing::debug!(client = %self.peer, target = user, %refusal, "SSH authentication refused.");
                Ok(Auth::reject())
            }
        }
    }

    /// A session the core opened: accepted when this frontend has the target's upstream.
    async fn opened(&mut self, session: Session, user: &str) -> Result<Auth, SshError> {
        if !self.frontend.targets.contains_key(user) {
            // The core knows the target but this frontend has no upstream for it: a
            // configuration bug, refused like any other failure.
            session.end("no SSH upstream for this target").await;
            return Ok(Auth::reject());
        }
        self.session = Some(session.clone());
        let _ = self.authed.send(Some(session));
        Ok(Auth::Accept)
    }

    fn context(&self, session: &Session) -> Option<ChannelContext> {
        let target = self.frontend.targets.get(&session.target().name)?.clone();
        Some(ChannelContext {
            gateway: Arc::clone(&self.frontend.gateway),
            session: session.clone(),
            target,
            upstream: Arc::clone(&self.upstream),
            recordings: self.frontend.recordings.clone(),
            record_input: self.frontend.record_input,
        })
    }
}

impl russh::server::Handler for ConnectionHandler {
    type Error = SshError;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::reject())
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        self.check_secret(user, password).await
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // The offer shows only the key, not whether it came with a certificate: let the
        // client prove it holds the key; what authenticates is decided after the signature,
        // and a bare key never does (see `auth_publickey`).
        if self.attempts >= self.frontend.max_auth_attempts || self.session.is_some() {
            return Ok(Auth::Reject {
                proceed_with_methods: Some(MethodSet::empty()),
                partial_success: false,
            });
        }
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.attempts += 1;
        tracing::debug!(client = %self.peer, target = user, "A bare public key was offered; only certificates from the gateway's CA authenticate.");
        Ok(Auth::reject())
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        self.attempts += 1;
        if self.attempts > self.frontend.max_auth_attempts || self.session.is_some() {
            return Ok(Auth::Reject {
                proceed_with_methods: Some(MethodSet::empty()),
                partial_success: false,
            });
        }
        let identity = match self.frontend.ca.check(certificate, user) {
            Ok(identity) => identity,
            Err(reason) => {
                tracing::info!(client = %self.peer, target = user, key_id = certificate.key_id(), %reason, "SSH certificate refused.");
                let event = gatehouse_audit::AuditEvent::AuthenticationFailed {
                    protocol: Protocol::Ssh.as_str().into(),
                    target: user.into(),
                    client_addr: self.peer.to_string(),
                    reason: format!("certificate {:?} refused: {reason}", certificate.key_id()),
                };
                let _ = self.frontend.gateway.audit().append(event).await;
                return Ok(Auth::reject());
            }
        };
        tracing::debug!(client = %self.peer, target = user, serial = certificate.serial(), "SSH certificate accepted; deciding connect.");
        match self
            .frontend
            .gateway
            .open_session(identity, Protocol::Ssh, user, self.peer)
            .await
        {
            Ok(session) => self.opened(session, user).await,
            Err(refusal) => {
                tracing::debug!(client = %self.peer, target = user, %refusal, "SSH certificate holder refused.");
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let Some(mut response) = response else {
            // One prompt, worded so that sshpass and people recognise it.
            return Ok(Auth::Partial {
                name: Cow::Borrowed(""),
                instructions: Cow::Borrowed(""),
                prompts: Cow::Owned(vec![(Cow::Borrowed("Password: "), false)]),
            });
        };
        let answer = response.next().map(|b| String::from_utf8(b.to_vec()));
        match answer {
            Some(Ok(secret)) => self.check_secret(user, secret.trim_end_matches(['\r', '\n'])).await,
            _ => {
                self.attempts += 1;
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        let Some(context) = self.session.as_ref().and_then(|s| self.context(s)) else {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        let Ok(permit) = Arc::clone(&self.channels).try_acquire_owned() else {
            tracing::info!("Channel refused: too many open channels on this connection.");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        reply.accept().await;
        tokio::spawn(channel::run_session_channel(context, channel, session.handle(), permit));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        let Some(context) = self.session.as_ref().and_then(|s| self.context(s)) else {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        let Ok(permit) = Arc::clone(&self.channels).try_acquire_owned() else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        let attributes = serde_json::json!({ "host": host_to_connect, "port": port_to_connect });
        let permit_request = match context.session.authorize("forward", attributes).await {
            Ok(p) => p,
            Err(refusal) => {
                tracing::info!(host = host_to_connect, port = port_to_connect, %refusal, "Port forwarding refused.");
                reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
                return Ok(());
            }
        };
        let upstream = match context.upstream().await {
            Ok(up) => up,
            Err(error) => {
                context.session.target_error(error.to_string()).await;
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        let up = match upstream
            .channel_open_direct_tcpip(host_to_connect, port_to_connect, "127.0.0.1", 0)
            .await
        {
            Ok(up) => up,
            Err(error) => {
                context
                    .session
                    .target_error(format!("direct-tcpip refused by the host: {error}"))
                    .await;
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        reply.accept().await;
        tokio::spawn(channel::run_forward(
            context,
            channel,
            session.handle(),
            up,
            permit_request,
            permit,
        ));
        Ok(())
    }

    // Setup requests are answered here, in the order the client sent them: russh keeps one
    // "wants reply" flag per channel, so an answer sent later from the channel task could
    // land on the next request. The channel task records what was accepted.
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        _variable_value: &str,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        if crate::channel::env_allowed(variable_name) {
            session.channel_success(channel)?;
        } else {
            tracing::debug!(name = variable_name, "Environment variable refused.");
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        // Never forwarded: X11 and agent forwarding open paths around the gateway's
        // decisions (agent requests are refused by russh's default).
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut russh::server::Session,
    ) -> Result<bool, Self::Error> {
        let Some(session) = &self.session else {
            return Ok(false);
        };
        let attributes = serde_json::json!({ "host": address, "port": *port });
        match session.authorize("forward", attributes).await {
            Ok(permit) => {
                // Remote forwarding is not relayed by this version even when policy allows it.
                tracing::info!(
                    request = permit.request(),
                    address,
                    port = *port,
                    "Remote port forwarding allowed by policy but not supported; refused."
                );
                Ok(false)
            }
            Err(refusal) => {
                tracing::info!(address, port = *port, %refusal, "Remote port forwarding refused.");
                Ok(false)
            }
        }
    }
}

/// Loads one of the gateway's own keys (`what` names its setting in errors), generating
/// an ed25519 key (mode 0600) when absent.
pub(crate) fn load_or_create_key(path: &Path, comment: &str, what: &str) -> Result<PrivateKey, String> {
    if path.exists() {
        return crate::upstream::load_key(path).map_err(|e| format!("{what}: {e}"));
    }
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(|e| format!("{what}: cannot create {}: {e}", dir.display()))?;
    }
    let mut seed = [0u8; 32];
    aws_lc_rs::rand::fill(&mut seed).map_err(|_| format!("{what}: the system random generator failed"))?;
    let keypair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let mut key = PrivateKey::from(keypair);
    key.set_comment(comment);
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| format!("{what}: cannot encode the new key: {e}"))?;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{what}: cannot create {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{what}: cannot write {}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), key = comment, "Generated a key.");
    Ok(key)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_host_key_is_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/ssh_host_ed25519_key");
        let first = load_or_create_key(&path, "test", "ssh.host_key").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_or_create_key(&path, "test", "ssh.host_key").unwrap();
        assert_eq!(first.public_key(), again.public_key());
    }
}
