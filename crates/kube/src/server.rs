//! The HTTPS listener kubectl talks to. Every request: find the cluster in the URL, turn the
//! bearer token into a (cached) core session, refuse impersonation, derive the attributes,
//! ask policy, then forward with the gateway's credential and stream the answer back —
//! masking Secrets on the way — and audit the request when its last byte has gone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use gatehouse_audit::AuditEvent;
use gatehouse_core::recording::Recorder;
use gatehouse_core::{Gateway, Protocol, Refusal, RefusalKind, Session, Verdict, serve_connections, stopped};
use gatehouse_mask::{DataClass, MaskCounts};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::attributes::{Attributes, PathKind};
use crate::config::KubeConfig;
use crate::detect;
use crate::secrets::{self, MaskError, Masking, WatchMasker};
use crate::status::Status;
use crate::tunnel::{self, TunnelEnd};
use crate::upstream::{Body, BoxError, Upstream};

/// Largest request head (request line and headers) a client may send.
const MAX_HEAD: usize = 64 * 1024;
/// Time the API server has to send a response head.
const UPSTREAM_HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Headers that belong to one hop, never forwarded either way.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Any client stream, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// The Kubernetes frontend, shared by every connection.
pub struct KubeFrontend {
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    clusters: HashMap<String, Upstream>,
    sessions: SessionCache,
    max_connections: usize,
    max_request_body: usize,
    max_json_buffer: usize,
    /// Where exec and attach recordings go (the gateway's `state_dir/recordings`).
    recordings: PathBuf,
    /// Open exec, attach and port-forward streams, closed cleanly at shutdown.
    tunnels: tunnel::Tunnels,
}

/// The WebSocket subprotocols relayed for exec and attach: the binary channel protocols,
/// whose frames the recording reads. The base64 variants are not offered upstream.
const CHANNEL_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// The WebSocket subprotocols relayed for port-forward (not recorded: raw TCP bytes).
/// kubectl 1.31+ tunnels SPDY inside WebSocket (`SPDY/3.1+portforward.k8s.io`); the frames
/// are still WebSocket frames between the client and the API server. The Python client and
/// other WebSocket clients speak the kubelet's channel protocol (`v4.channel.k8s.io`: a data
/// and an error channel per port of the `ports=` query).
const PORTFORWARD_PROTOCOLS: [&str; 4] = [
    "SPDY/3.1+portforward.k8s.io",
    "v4.channel.k8s.io",
    "v2.portforward.k8s.io",
    "portforward.k8s.io",
];

/// Sessions by (token, cluster). HTTP carries the token in every request; authenticating
/// and opening a session per request would make every API call a new audited session and
/// cost a JWT verification each time. A session lives as long as its token (or the
/// configured maximum), exactly like a PostgreSQL or SSH session on one connection.
struct SessionCache {
    entries: Mutex<HashMap<[u8; 32], Session>>,
    capacity: usize,
}

/// What the audit record of one request accumulates while it is handled.
struct Record {
    session: Option<Session>,
    request: Option<u64>,
    target: String,
    client: SocketAddr,
    method: String,
    path: String,
    verb: String,
    attributes: serde_json::Value,
    decision: &'static str,
    policies: Vec<String>,
    reason: Option<String>,
    masked: Option<Arc<Mutex<MaskCounts>>>,
    /// For exec, attach and port-forward: how the tunnel ended, once it has.
    tunnel: Option<oneshot::Receiver<TunnelEnd>>,
    /// Keeps shutdown waiting until this record is written.
    _tunnel_guard: Option<tunnel::TunnelGuard>,
}

impl KubeFrontend {
    /// Loads every cluster's credential; `tls` is the listener's rustls config, if any;
    /// exec and attach recordings are written to `recordings` (created 0700 if missing).
    pub async fn new(
        gateway: Arc<Gateway>,
        config: &KubeConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        recordings: &Path,
    ) -> Result<Self, String> {
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(recordings)
                .map_err(|e| format!("cannot create {}: {e}", recordings.display()))?;
        }
        let mut clusters = HashMap::new();
        for cluster in &config.clusters {
            let upstream = Upstream::load(cluster).await?;
            tracing::info!(cluster = %cluster.name, server = %upstream.url, "Kubernetes cluster configured.");
            clusters.insert(cluster.name.clone(), upstream);
        }
        Ok(Self {
            gateway,
            tls: tls.map(TlsAcceptor::from),
            clusters,
            sessions: SessionCache {
                entries: Mutex::new(HashMap::new()),
                capacity: config.max_cached_sessions,
            },
            max_connections: config.max_connections,
            max_request_body: config.max_request_body,
            max_json_buffer: config.max_json_buffer,
            recordings: recordings.to_path_buf(),
            tunnels: tunnel::Tunnels::default(),
        })
    }

    /// Serves `listener` until `shutdown` turns true, then drains open connections and ends
    /// the cached sessions.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        // Cached sessions whose token expired are ended even when no request comes.
        let sweeper = {
            let this = Arc::clone(&self);
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut sweep = tokio::time::interval(Duration::from_secs(15));
                loop {
                    tokio::select! {
                        _ = sweep.tick() => this.sessions.sweep().await,
                        _ = stopped(&mut shutdown) => break,
                    }
                }
            })
        };
        let this = Arc::clone(&self);
        serve_connections(
            "kube",
            listener,
            self.max_connections,
            shutdown,
            move |tcp, peer, shutdown| Arc::clone(&this).connection(tcp, peer, shutdown),
        )
        .await;
        let _ = sweeper.await;
        self.tunnels.drained().await;
        self.sessions.end_all("gateway shutdown").await;
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, mut shutdown: watch::Receiver<bool>) {
        self.tunnels.observe(&shutdown);
        let stream: Box<dyn Stream> = match &self.tls {
            Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(error)) => {
                    tracing::debug!(client = %peer, %error, "TLS handshake failed.");
                    return;
                }
                Err(_) => return,
            },
            None => Box::new(tcp),
        };
        let this = self;
        let service = hyper::service::service_fn(move |request| {
            let this = Arc::clone(&this);
            async move { Ok::<_, std::convert::Infallible>(this.handle(request, peer).await) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .max_buf_size(MAX_HEAD);
        let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(client = %peer, %error, "Kubernetes client connection ended with an error.");
                }
            }
            _ = stopped(&mut shutdown) => {
                conn.as_mut().graceful_shutdown();
                // Watches never end by themselves: give answers in flight a moment, then close.
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
            }
        }
    }

    /// One request, start to finish; never fails (a refusal is a `Status` response).
    async fn handle(self: Arc<Self>, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let mut record = Record {
            session: None,
            request: None,
            target: String::new(),
            client: peer,
            method: request.method().as_str().to_string(),
            path: request.uri().path().chars().take(2048).collect(),
            verb: String::new(),
            attributes: serde_json::Value::Null,
            decision: "refused",
            policies: Vec::new(),
            reason: None,
            masked: None,
            tunnel: None,
            _tunnel_guard: None,
        };
        let (response, deadline) = match self.route(request, peer, &mut record).await {
            Ok(response) => {
                let deadline = record.session.as_ref().map(Session::time_left);
                (response, deadline)
            }
            Err(status) => {
                tracing::info!(client = %peer, method = %record.method, path = %record.path, code = status.code, message = %status.message, "Kubernetes request refused.");
                record.reason = Some(status.message.clone());
                (status_response(&status), None)
            }
        };
        let (parts, body) = response.into_parts();
        let metered = Metered {
            inner: body,
            bytes: 0,
            status: parts.status.as_u16(),
            started,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep(d))),
            finish: Some((Arc::clone(&self.gateway), record)),
        };
        Response::from_parts(parts, metered.boxed())
    }

    async fn route(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        record: &mut Record,
    ) -> Result<Response<Body>, Status> {
        // hyper's read buffer bound is not exact: the head's size is checked here as well.
        let head: usize = request
            .headers()
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + request.uri().to_string().len();
        if head > MAX_HEAD {
            return Err(Status::new(
                431,
                "RequestHeaderFieldsTooLarge",
                format!("gatehouse: the request head is larger than {MAX_HEAD} bytes"),
            ));
        }
        let raw_path = request.uri().path().to_string();
        let Some((cluster, api_path)) = split_cluster(&raw_path) else {
            return Err(Status::new(
                404,
                "NotFound",
                "gatehouse serves Kubernetes clusters at /clusters/<name>/; point the kubeconfig's server there (gatehouse kubeconfig --cluster NAME)",
            ));
        };
        record.target = cluster.to_string();
        let token = bearer(request.headers()).ok_or_else(|| {
            Status::unauthorized(
                "gatehouse: no bearer token; present your OIDC token or a gatehouse credential (gatehouse kubeconfig sets this up)",
            )
        })?;
        let session = self
            .session(token, cluster, peer)
            .await
            .map_err(|r| refusal_status(&r))?;
        record.session = Some(session.clone());

        if let Some(name) = request
            .headers()
            .keys()
            .find(|name| name.as_str().starts_with("impersonate-"))
        {
            return Err(Status::forbidden(format!(
                "gatehouse: impersonation is refused ({name} header); the API server sees only the gateway's own credential, and policy decides for you as yourself"
            )));
        }
        let attrs = Attributes::parse(request.method().as_str(), api_path, request.uri().query())
            .map_err(|e| Status::bad_request(format!("gatehouse: request refused: {e}")))?;
        let mut request = request.map(|body| body.map_err(BoxError::from).boxed());
        record.path = attrs.path.clone();
        record.verb = attrs.action.to_string();
        record.attributes = attrs.context();

        if attrs.kind == PathKind::Discovery {
            record.decision = "allow";
        } else {
            let verdict = session.decide(attrs.action, attrs.context()).await;
            let permit = match verdict {
                Ok(Verdict::Permit(permit)) => permit,
                Ok(Verdict::NeedsApproval(needed)) => {
                    let (permit, held) = self
                        .wait_for_approval(request, &attrs, &session, needed, record)
                        .await?;
                    request = held;
                    permit
                }
                Err(refusal) => {
                    record.request = refusal.request;
                    record.policies = refusal.policies.clone();
                    record.decision = match refusal.kind {
                        RefusalKind::Denied => "deny",
                        RefusalKind::ApprovalRequired { .. } => "needs_approval",
                        _ => "refused",
                    };
                    return Err(refusal_status(&refusal));
                }
            };
            record.request = Some(permit.request());
            record.policies = permit.policies().to_vec();
            record.decision = "allow";
        }
        let Some(upstream) = self.clusters.get(cluster) else {
            // The core knows the target, so config wiring guarantees an upstream for it.
            return Err(refusal_status(&Refusal::access_denied()));
        };
        if request.headers().contains_key(header::UPGRADE) {
            let client_upgrade = hyper::upgrade::on(&mut request);
            return self
                .open_tunnel(request, client_upgrade, &attrs, &session, upstream, record)
                .await;
        }

        let masking = {
            let masker = session.masker().await;
            if attrs.may_carry_secrets() && masker.masks(DataClass::Secret) {
                Some(Masking::Secrets)
            } else if attrs.kind == PathKind::Resource
                && matches!(attrs.subresource.as_deref(), None | Some("status"))
                && detect::carries_detected_values(&attrs.api_group, &attrs.resource)
                && !masker.is_noop()
            {
                Some(Masking::Detect(masker.clone()))
            } else {
                None
            }
        };
        let forwarded = self.forward_request(request, &attrs, masking.is_some()).await?;
        let response = match tokio::time::timeout(UPSTREAM_HEAD_TIMEOUT, upstream.send(forwarded)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                tracing::warn!(session = %session.id(), cluster, %error, "Kubernetes API server request failed.");
                session
                    .target_error(format!("API server request failed: {error}"))
                    .await;
                return Err(Status::bad_gateway(format!(
                    "gatehouse could not reach the API server of cluster {cluster:?}"
                )));
            }
            Err(_) => {
                session.target_error("API server did not answer in time").await;
                return Err(Status::new(
                    504,
                    "Timeout",
                    format!("gatehouse: the API server of cluster {cluster:?} did not answer in time"),
                ));
            }
        };
        if let Some(masking) = masking {
            let counts = Arc::new(Mutex::new(MaskCounts::default()));
            record.masked = Some(Arc::clone(&counts));
            self.masked_response(response, attrs.action == "watch", masking, counts)
                .await
        } else {
            Ok(pass_through(response))
        }
    }

    /// The cached session for this token on this cluster, or a new one.
    async fn session(&self, token: &str, cluster: &str, peer: SocketAddr) -> Result<Session, Refusal> {
        let key = cache_key(token, cluster);
        if let Some(session) = self.sessions.get(&key).await {
            return Ok(session);
        }
        let session = self.gateway.connect(token, Protocol::Kube, cluster, peer).await?;
        tracing::info!(client = %peer, session = %session.id(), user = %session.identity().display_name(), target = cluster, "Kubernetes session opened.");
        Ok(self.sessions.insert(key, session).await)
    }

    /// exec, attach and port-forward: a WebSocket upgrade relayed to the API server with the
    /// gateway's credential. Only a `101` from the API server opens the tunnel; any other
    /// answer goes back to the client as an error. exec and attach are recorded.
    async fn open_tunnel(
        &self,
        request: Request<Body>,
        client_upgrade: hyper::upgrade::OnUpgrade,
        attrs: &Attributes,
        session: &Session,
        upstream: &crate::upstream::Upstream,
        record: &mut Record,
    ) -> Result<Response<Body>, Status> {
        let kind = request
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if kind.to_ascii_lowercase().starts_with("spdy/") && attrs.action == "portforward" {
            return Err(Status::bad_request(
                "gatehouse: port-forward is relayed over WebSocket only, not as a bare SPDY upgrade; kubectl 1.31 and later tunnel it in WebSocket (SPDY/3.1+portforward.k8s.io) when the API server supports that (Kubernetes 1.30+), other clients use v4.channel.k8s.io",
            ));
        }
        if kind.to_ascii_lowercase().starts_with("spdy/") {
            return Err(Status::bad_request(
                "gatehouse: SPDY streams cannot be recorded, so the gateway does not relay them; use a client that speaks WebSocket (kubectl 1.30 or later, the Python kubernetes client's stream())",
            ));
        }
        if !kind.eq_ignore_ascii_case("websocket") {
            return Err(Status::bad_request(format!(
                "gatehouse: only WebSocket upgrades are relayed, not {kind:?}"
            )));
        }
        let recorded = matches!(attrs.subresource.as_deref(), Some("exec" | "attach"));
        let allowed: &[&str] = match attrs.subresource.as_deref() {
            Some("exec" | "attach") if attrs.resource == "pods" => &CHANNEL_PROTOCOLS,
            Some("portforward") if attrs.resource == "pods" => &PORTFORWARD_PROTOCOLS,
            _ => {
                return Err(Status::bad_request(
                    "gatehouse: upgrades are relayed only for pods/exec, pods/attach and pods/portforward",
                ));
            }
        };
        let offered: Vec<String> = request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .filter(|p| allowed.contains(&p.as_str()))
            .collect();
        if offered.is_empty() {
            return Err(Status::bad_request(format!(
                "gatehouse: offer one of the WebSocket subprotocols {} (Sec-WebSocket-Protocol)",
                allowed.join(", ")
            )));
        }
        let tty = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .any(|p| p == "tty=true" || p == "tty=1");
        let mut forwarded = self.forward_request(request, attrs, false).await?;
        let headers = forwarded.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        // Compressed frames could not be read for the recording.
        headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(&offered.join(", "))
                .map_err(|_| Status::bad_request("gatehouse: bad subprotocol"))?,
        );
        let cluster = record.target.clone();
        let mut response = match tokio::time::timeout(UPSTREAM_HEAD_TIMEOUT, upstream.send(forwarded)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                tracing::warn!(session = %session.id(), cluster, %error, "Kubernetes API server upgrade failed.");
                session
                    .target_error(format!("API server request failed: {error}"))
                    .await;
                return Err(Status::unavailable(format!(
                    "gatehouse: the API server of cluster {cluster} cannot be reached"
                )));
            }
            Err(_) => {
                return Err(Status::new(
                    504,
                    "Timeout",
                    "gatehouse: the API server did not answer the upgrade in time",
                ));
            }
        };
        let code = response.status();
        if code != StatusCode::SWITCHING_PROTOCOLS {
            // Never a tunnel: the API server's own refusal goes back as it is; a success
            // that is not a switch is a broken upgrade.
            tracing::info!(session = %session.id(), cluster, status = code.as_u16(), "The API server refused an upgrade.");
            if code.is_client_error() || code.is_server_error() {
                return Ok(pass_through(response));
            }
            return Err(Status::bad_gateway(format!(
                "gatehouse: the API server answered the upgrade with {code}, not 101 Switching Protocols; no stream was opened"
            )));
        }
        let chosen = response
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let is_websocket = response
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        if !is_websocket || !chosen.as_ref().is_some_and(|c| offered.contains(c)) {
            return Err(Status::bad_gateway(
                "gatehouse: the API server switched to a protocol the client did not offer; no stream was opened",
            ));
        }
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let recorder = if recorded {
            let path = self
                .recordings
                .join(format!("{}-{}.cast", session.id(), record.request.unwrap_or(0)));
            let title = format!(
                "{} {} {}/{} on {} ({})",
                session.identity().display_name(),
                attrs.subresource.as_deref().unwrap_or(""),
                attrs.namespace.as_deref().unwrap_or(""),
                attrs.name.as_deref().unwrap_or(""),
                cluster,
                session.id()
            );
            match Recorder::create(&path, 80, 24, if tty { "xterm" } else { "dumb" }, &title) {
                Ok(r) => Some(r),
                Err(error) => {
                    tracing::error!(%error, path = %path.display(), "Cannot create the exec recording; refusing the stream.");
                    return Err(Status::unavailable(
                        "gatehouse: the gateway cannot record this stream, so it is refused",
                    ));
                }
            }
        } else {
            None
        };
        let mut answer = Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed());
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for name in [
            header::UPGRADE,
            header::CONNECTION,
            header::SEC_WEBSOCKET_ACCEPT,
            header::SEC_WEBSOCKET_PROTOCOL,
        ] {
            if let Some(value) = response.headers().get(&name) {
                answer.headers_mut().insert(name, value.clone());
            }
        }
        let (done, ended) = oneshot::channel();
        record.tunnel = Some(ended);
        let (guard, shutdown) = self.tunnels.enter();
        record._tunnel_guard = Some(guard);
        let gateway = Arc::clone(&self.gateway);
        let session = session.clone();
        tokio::spawn(async move {
            let (client, upstream) = match tokio::join!(client_upgrade, upstream_upgrade) {
                (Ok(c), Ok(u)) => (c, u),
                (c, u) => {
                    let why = c.err().or(u.err()).map(|e| e.to_string()).unwrap_or_default();
                    let _ = done.send(TunnelEnd {
                        error: Some(format!("the upgrade did not complete: {why}")),
                        ..TunnelEnd::default()
                    });
                    if let Some(r) = recorder {
                        finish_recording(&gateway, &session, r).await;
                    }
                    return;
                }
            };
            tracing::info!(session = %session.id(), "Kubernetes stream opened.");
            let (end, recorder) = tunnel::relay(client, upstream, recorder, session.time_left(), shutdown).await;
            if let Some(r) = recorder {
                finish_recording(&gateway, &session, r).await;
            }
            tracing::info!(session = %session.id(), bytes_in = end.bytes_in, bytes_out = end.bytes_out, exit = ?end.exit, "Kubernetes stream closed.");
            let _ = done.send(end);
        });
        Ok(answer)
    }

    /// The request the API server gets: canonical path, no caller credential, no
    /// impersonation, JSON-only `Accept` when Secrets may come back, and a write body that
    /// was checked for masking placeholders.
    async fn forward_request(
        &self,
        request: Request<Body>,
        attrs: &Attributes,
        mask: bool,
    ) -> Result<Request<Body>, Status> {
        let (parts, body) = request.into_parts();
        let mut headers = HeaderMap::new();
        for (name, value) in &parts.headers {
            let n = name.as_str();
            if n == "authorization" || n == "host" || n.starts_with("impersonate-") || HOP_BY_HOP.contains(&n) {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        if mask {
            let accept = secrets::json_accept(parts.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
            headers.insert(
                header::ACCEPT,
                HeaderValue::from_str(&accept).unwrap_or(HeaderValue::from_static("application/json")),
            );
        }
        let body: Body = if is_write(&parts.method) {
            let bytes = self.read_write_body(&parts.headers, body).await?;
            Full::new(bytes).map_err(|never| match never {}).boxed()
        } else {
            body
        };
        let mut forwarded = Request::new(body);
        *forwarded.method_mut() = parts.method;
        *forwarded.uri_mut() = attrs
            .path_and_query()
            .parse()
            .map_err(|_| Status::bad_request("gatehouse: the request path cannot be forwarded"))?;
        *forwarded.headers_mut() = headers;
        Ok(forwarded)
    }

    /// A create/update/patch body, read whole (bounded by `max_request_body`): refused when
    /// compressed or when it carries the masking placeholder.
    async fn read_write_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, Status> {
        if headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|e| e.as_bytes() != b"identity")
        {
            return Err(Status::new(
                415,
                "UnsupportedMediaType",
                "gatehouse: compressed request bodies are not accepted",
            ));
        }
        // Read frame by frame: `Limited` over a boxed error trips rustc's `Send` inference
        // inside the hyper service.
        let mut body = body;
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| Status::bad_request(format!("gatehouse: reading the request body failed: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > self.max_request_body {
                    return Err(Status::new(
                        413,
                        "RequestEntityTooLarge",
                        format!(
                            "gatehouse: the request body is larger than {} bytes (kube.max_request_body)",
                            self.max_request_body
                        ),
                    ));
                }
                buf.extend_from_slice(&data);
            }
        }
        let bytes = Bytes::from(buf);
        if secrets::carries_placeholder(&bytes) {
            return Err(Status::bad_request(
                "gatehouse: the request body carries the Secret masking placeholder; writing it would replace real Secret values with masked ones. Apply the real values from their source instead",
            ));
        }
        if gatehouse_mask::carries_masked_value(&bytes) {
            return Err(Status::bad_request(
                "gatehouse: the request body carries a value the gateway masked (such as j***@example.com, ************4242 or <masked:secret>); writing it would replace the real value with its masked form. Apply the real values from their source instead",
            ));
        }
        Ok(bytes)
    }

    /// Holds a request that policy wants approved: the approvers see its verb, object and
    /// (for writes) the SHA-256 of its body, and the approval is bound to the exact method,
    /// path, query and body. The client's HTTP request stays open meanwhile; once approved
    /// the request is forwarded exactly as approved. A client that goes away drops this
    /// future, which withdraws the approval request.
    async fn wait_for_approval(
        &self,
        request: Request<Body>,
        attrs: &Attributes,
        session: &Session,
        needed: gatehouse_core::ApprovalNeeded,
        record: &mut Record,
    ) -> Result<(gatehouse_core::Permit, Request<Body>), Status> {
        record.request = Some(needed.request());
        record.policies = needed.policies().to_vec();
        record.decision = "needs_approval";
        // Read whole before holding, whatever the method (a DELETE carries DeleteOptions):
        // the approval binds it, and with nothing left to read the HTTP server notices a
        // client that goes away while it waits.
        let (parts, body) = request.into_parts();
        let body = self.read_write_body(&parts.headers, body).await?;
        let target = attrs.path_and_query();
        let mut exact = format!("{} {target}\n", parts.method).into_bytes();
        exact.extend_from_slice(&body);
        let object = match (&attrs.namespace, &attrs.name) {
            (Some(ns), Some(name)) => format!(" {ns}/{name}"),
            (Some(ns), None) => format!(" in namespace {ns}"),
            (None, Some(name)) => format!(" {name}"),
            (None, None) => String::new(),
        };
        let resource = match &attrs.subresource {
            Some(sub) => format!("{}/{sub}", attrs.resource),
            None => attrs.resource.clone(),
        };
        let mut shown = format!(
            "{verb} {resource}{object} on cluster {cluster}: {method} {target}",
            verb = attrs.action,
            cluster = record.target,
            method = parts.method,
        );
        if !body.is_empty() {
            let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
            let hex: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            shown.push_str(&format!(" (body {} bytes, SHA-256 {hex})", body.len()));
        }
        let held = session.hold(vec![needed], &shown, &exact).await.map_err(|r| {
            record.reason = Some(r.message.clone());
            refusal_status(&r)
        })?;
        tracing::info!(session = %session.id(), approval = held.id(), request = %shown, "{}", held.notice());
        match held.wait().await {
            Ok(mut permits) => {
                let Some(permit) = permits.pop() else {
                    return Err(refusal_status(&Refusal::access_denied()));
                };
                record.decision = "allow";
                record.request = Some(permit.request());
                record.policies = permit.policies().to_vec();
                let body = Full::new(body).map_err(|never| match never {}).boxed();
                Ok((permit, Request::from_parts(parts, body)))
            }
            Err(refusal) => {
                record.decision = match refusal.kind {
                    RefusalKind::Denied => "deny",
                    _ => "refused",
                };
                Err(refusal_status(&refusal))
            }
        }
    }

    /// A response that may carry Secrets: buffered and masked whole, or masked event by
    /// event for a watch.
    async fn masked_response(
        &self,
        response: Response<Incoming>,
        watch: bool,
        masking: Masking,
        counts: Arc<Mutex<MaskCounts>>,
    ) -> Result<Response<Body>, Status> {
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let encoding = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mask_failed = |e: MaskError| Status::bad_gateway(format!("gatehouse: {e}"));
        if content_type.is_some() && !secrets::is_json(content_type.as_deref()) {
            return Err(mask_failed(MaskError::NotJson(content_type.unwrap_or_default())));
        }
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.remove(header::CONTENT_LENGTH);
        if watch {
            if encoding.as_deref().is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
                return Err(mask_failed(MaskError::Encoding(encoding.unwrap_or_default())));
            }
            let body = WatchBody {
                inner: body,
                masker: WatchMasker::new(self.max_json_buffer, masking),
                counts,
                done: false,
            };
            return Ok(Response::from_parts(parts, body.boxed()));
        }
        let limit = self.max_json_buffer;
        let raw = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Status::new(
                        413,
                        "RequestEntityTooLarge",
                        format!("gatehouse: {}", MaskError::TooLarge(limit)),
                    )
                } else {
                    Status::bad_gateway(format!("gatehouse: reading the API server's response failed: {e}"))
                }
            })?
            .to_bytes();
        let plain = secrets::decode(raw, encoding.as_deref(), limit).map_err(|e| match e {
            MaskError::TooLarge(_) => Status::new(413, "RequestEntityTooLarge", format!("gatehouse: {e}")),
            other => mask_failed(other),
        })?;
        let mut local = MaskCounts::default();
        let masked = secrets::mask_document(plain, &masking, &mut local).map_err(mask_failed)?;
        lock(&counts).merge(&local);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(masked.len()));
        Ok(Response::from_parts(
            parts,
            Full::new(masked).map_err(|never| match never {}).boxed(),
        ))
    }
}

impl SessionCache {
    async fn get(&self, key: &[u8; 32]) -> Option<Session> {
        let expired = {
            let mut entries = lock(&self.entries);
            match entries.get(key) {
                Some(session) if !session.time_left().is_zero() => return Some(session.clone()),
                Some(_) => entries.remove(key),
                None => None,
            }
        };
        if let Some(session) = expired {
            session.end("token expired").await;
        }
        None
    }

    /// Keeps `session` unless a concurrent request cached one first (then this one ends).
    async fn insert(&self, key: [u8; 32], session: Session) -> Session {
        let (kept, dropped) = {
            let mut entries = lock(&self.entries);
            let mut dropped = Vec::new();
            if let Some(existing) = entries.get(&key) {
                (existing.clone(), vec![session])
            } else {
                if entries.len() >= self.capacity {
                    entries.retain(|_, s| {
                        let live = !s.time_left().is_zero();
                        if !live {
                            dropped.push(s.clone());
                        }
                        live
                    });
                }
                if entries.len() >= self.capacity {
                    // Still full of live sessions: the one closest to its end makes room.
                    if let Some(oldest) = entries.iter().min_by_key(|(_, s)| s.expires_at()).map(|(k, _)| *k)
                        && let Some(s) = entries.remove(&oldest)
                    {
                        dropped.push(s);
                    }
                }
                entries.insert(key, session.clone());
                (session, dropped)
            }
        };
        for session in dropped {
            session.end("session cache full or superseded").await;
        }
        kept
    }

    async fn sweep(&self) {
        let now = SystemTime::now();
        let expired: Vec<Session> = {
            let mut entries = lock(&self.entries);
            let mut out = Vec::new();
            entries.retain(|_, s| {
                let live = s.expires_at() > now;
                if !live {
                    out.push(s.clone());
                }
                live
            });
            out
        };
        for session in expired {
            session.end("token expired").await;
        }
    }

    async fn end_all(&self, reason: &str) {
        let all: Vec<Session> = lock(&self.entries).drain().map(|(_, s)| s).collect();
        for session in all {
            session.end(reason).await;
        }
    }
}

/// `/clusters/<name>/<api path>` → (name, api path); the API path of `/clusters/<name>` is `/`.
fn split_cluster(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/clusters/")?;
    let (name, api) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (!name.is_empty()).then_some((name, api))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A digest of the token, so the cache never holds a credential in a form anyone could use.
fn cache_key(token: &str, cluster: &str) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(cluster.as_bytes());
    ctx.update(&[0]);
    ctx.update(token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// The `Status` for a refusal of the core: the same 403 for a bad token, an unknown
/// cluster and a denied connect.
fn refusal_status(refusal: &Refusal) -> Status {
    match &refusal.kind {
        RefusalKind::Unauthenticated => Status::forbidden(format!("gatehouse: {}", refusal.message)),
        RefusalKind::Denied => Status::forbidden(refusal.message.clone()),
        RefusalKind::ApprovalRequired { .. } => Status::forbidden(refusal.message.clone()),
        RefusalKind::Expired => Status::unauthorized(format!("gatehouse: {}", refusal.message)),
        RefusalKind::Unavailable => Status::unavailable(format!("gatehouse: {}", refusal.message)),
    }
}

fn status_response(status: &Status) -> Response<Body> {
    let mut response = Response::new(Full::new(status.body()).map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::from_u16(status.code).unwrap_or(StatusCode::FORBIDDEN);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(HeaderName::from_static(name));
    }
}

async fn finish_recording(gateway: &Gateway, session: &Session, recorder: Recorder) {
    match recorder.finish() {
        Ok(written) => {
            let event = AuditEvent::RecordingWritten {
                session: session.id().into(),
                path: written.path.display().to_string(),
                bytes: written.bytes,
                sha256: written.sha256,
            };
            if let Err(error) = gateway.audit().append(event).await {
                tracing::error!(%error, "Audit write of a recording failed.");
            }
        }
        Err(error) => tracing::error!(%error, "Closing the exec recording failed."),
    }
}

/// A response that carries no Secrets: streamed as it comes (watch and logs unbuffered).
fn pass_through(response: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

fn is_write(method: &http::Method) -> bool {
    matches!(method.as_str(), "POST" | "PUT" | "PATCH")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Resolves once the shutdown flag turns true (or its sender is gone).
/// A watch stream from the API server, masked event by event.
struct WatchBody {
    inner: Incoming,
    masker: WatchMasker,
    counts: Arc<Mutex<MaskCounts>>,
    done: bool,
}

impl HttpBody for WatchBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    if let Err(e) = this.masker.finish() {
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    let mut counts = lock(&this.counts);
                    match this.masker.push(&data, &mut counts) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(e) => {
                            // Ending the stream is the only safe answer once events flowed.
                            tracing::warn!(error = %e, "Masking a watch stream failed; closing it.");
                            this.done = true;
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                    }
                }
            }
        }
    }
}

/// The response body as sent: counts bytes, ends at the session's deadline, and writes the
/// request's audit record when the last byte has gone (or the client went away).
struct Metered {
    inner: Body,
    bytes: u64,
    status: u16,
    started: Instant,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    finish: Option<(Arc<Gateway>, Record)>,
}

impl Metered {
    fn finish(&mut self, reason: Option<&str>) {
        let Some((gateway, mut record)) = self.finish.take() else {
            return;
        };
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let reason = record.reason.take().or_else(|| reason.map(str::to_string));
        let Some(ended) = record.tunnel.take() else {
            record.write(&gateway, self.status, self.bytes, duration_ms, reason);
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (status, bytes, started) = (self.status, self.bytes, self.started);
        runtime.spawn(async move {
            // The request lasts as long as its stream: audited when the stream closes.
            let end = ended.await.unwrap_or_default();
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let reason = match (end.exit, end.error) {
                (Some(exit), None) => Some(exit),
                (Some(exit), Some(error)) => Some(format!("{exit}; {error}")),
                (None, Some(error)) => Some(error),
                (None, None) => None,
            };
            record.write(
                &gateway,
                status,
                bytes + end.bytes_in + end.bytes_out,
                duration_ms,
                reason,
            );
        });
    }
}

impl Record {
    /// Writes the request's record (and its masking counts) once its response is over. It
    /// was decided (and that decision audited) before it was forwarded, so nobody waits for
    /// this write: it goes out with the next record or within the group-commit delay.
    fn write(self, gateway: &Gateway, status: u16, bytes: u64, duration_ms: u64, reason: Option<String>) {
        if let (Some(session), Some(request), Some(masked)) = (&self.session, self.request, &self.masked) {
            session.record_masking(request, &lock(masked));
        }
        let event = AuditEvent::KubeRequest {
            session: self.session.as_ref().map(|s| s.id().to_string()),
            request: self.request,
            target: self.target,
            client_addr: self.client.to_string(),
            method: self.method,
            path: self.path,
            verb: self.verb,
            attributes: self.attributes,
            decision: self.decision.into(),
            policies: self.policies,
            status,
            bytes,
            duration_ms,
            reason,
        };
        if let Err(error) = gateway.audit().submit(event) {
            tracing::error!(%error, "Audit write of a Kubernetes request failed.");
        }
    }
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            // The token behind the session expired: the stream ends, the client reconnects
            // and must present a fresh token.
            this.finish(Some("the session's token expired during the response"));
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let why = format!("the response stream failed: {e}");
                this.finish(Some(&why));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.finish(Some("the client closed the connection before the response ended"));
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_is_the_first_segment_after_clusters() {
        assert_eq!(
            split_cluster("/clusters/dev/api/v1/pods"),
            Some(("dev", "/api/v1/pods"))
        );
        assert_eq!(split_cluster("/clusters/dev"), Some(("dev", "/")));
        assert_eq!(split_cluster("/clusters//api"), None);
        assert_eq!(split_cluster("/api/v1/pods"), None);
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        assert_ne!(cache_key("t", "a"), cache_key("t", "b"));
    }
}
