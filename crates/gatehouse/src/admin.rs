//! The admin listener: `/healthz`, `/readyz`, `/metrics`, the development issuer's discovery
//! and JWKS, and the admin API (`/api/credentials`, `/api/approvals`, described by
//! `/api/openapi.json`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use gatehouse_core::{Gateway, RefusalKind};
use gatehouse_identity::{DevIssuer, Identity};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::{admin_approvals, admin_ssh};

/// The admin API's OpenAPI 3.1 description.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub(crate) gateway: Arc<Gateway>,
    dev: Option<Arc<DevIssuer>>,
    /// Signs `POST /api/ssh/cert`; absent without an `[ssh]` section.
    pub(crate) ssh_ca: Option<Arc<gatehouse_ssh::SshCa>>,
    console: Option<Arc<crate::console::Console>>,
}

impl AdminState {
    pub fn new(gateway: Arc<Gateway>, dev: Option<Arc<DevIssuer>>) -> Self {
        Self {
            gateway,
            dev,
            ssh_ca: None,
            console: None,
        }
    }

    pub fn with_ssh_ca(mut self, ca: Option<Arc<gatehouse_ssh::SshCa>>) -> Self {
        self.ssh_ca = ca;
        self
    }

    /// Also serve the web console (HTML pages at `/`, see `crate::console`).
    pub fn with_console(mut self, console: Option<Arc<crate::console::Console>>) -> Self {
        self.console = console;
        self
    }
}

pub fn router(state: AdminState) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/credentials", get(list_credentials).post(create_credential))
        .route("/api/credentials/{id}", delete(revoke_credential))
        .route("/api/approvals", get(admin_approvals::list))
        .route("/api/approvals/{id}", get(admin_approvals::show))
        .route("/api/approvals/{id}/approve", post(admin_approvals::approve))
        .route("/api/approvals/{id}/deny", post(admin_approvals::deny))
        .route("/api/ssh/cert", post(admin_ssh::issue))
        .route("/api/openapi.json", get(openapi));
    if state.dev.is_some() {
        router = router
            .route("/dev/users/.well-known/openid-configuration", get(dev_discovery_users))
            .route(
                "/dev/agents/.well-known/openid-configuration",
                get(dev_discovery_agents),
            )
            .route("/dev/jwks.json", get(dev_jwks));
    }
    let console = state.console.clone();
    let router = router.with_state(state);
    match console {
        Some(console) => router.merge(crate::console::router(console)),
        None => router,
    }
}

/// Serves the admin API on `listener` (TLS when `tls` is set) until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: AdminState,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<ClientAddr>();
    let signal = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    match tls {
        None => {
            axum::serve(PlainListener(listener), app)
                .with_graceful_shutdown(signal)
                .await?;
        }
        Some(config) => {
            axum::serve(TlsListener::spawn(listener, config), app)
                .with_graceful_shutdown(signal)
                .await?;
        }
    }
    Ok(())
}

/// The peer address of an admin connection, whatever the listener (plain or TLS).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PlainListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, PlainListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// Plain HTTP (loopback only, see config validation), with TCP_NODELAY on every connection.
pub struct PlainListener(TcpListener);

impl axum::serve::Listener for PlainListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    return (tcp, peer);
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "Admin listener accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// TLS in front of axum: handshakes run in their own tasks so that one slow client never
/// holds up the accept loop; finished streams are handed over through a channel.
pub struct TlsListener {
    ready: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn spawn(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(error) => {
                        tracing::warn!(%error, "Admin listener accept failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                if tx.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "Admin TLS handshake failed."),
                        Err(_) => tracing::debug!(%peer, "Admin TLS handshake timed out."),
                    }
                });
            }
        });
        Self { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends when this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let problems = state.gateway.readiness_problems();
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let mut body = String::from("not ready:\n");
        for p in problems {
            body.push_str(&format!("- {p}\n"));
        }
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let latency = state.gateway.audit().write_latency();
    let extra = format!(
        "# HELP gatehouse_audit_write_seconds Time from an audit append to its record being durable.\n\
         # TYPE gatehouse_audit_write_seconds summary\n\
         gatehouse_audit_write_seconds_count {}\n\
         gatehouse_audit_write_seconds_sum {:.6}\n\
         # HELP gatehouse_audit_write_max_seconds Slowest audit write so far.\n\
         # TYPE gatehouse_audit_write_max_seconds gauge\n\
         gatehouse_audit_write_max_seconds {:.6}\n\
         # HELP gatehouse_audit_healthy Whether the audit log can be written (0 means requests are refused).\n\
         # TYPE gatehouse_audit_healthy gauge\n\
         gatehouse_audit_healthy {}\n\
         # HELP gatehouse_policy_generation Successful policy loads so far.\n\
         # TYPE gatehouse_policy_generation gauge\n\
         gatehouse_policy_generation {}\n",
        latency.count,
        latency.sum_us as f64 / 1e6,
        latency.max_us as f64 / 1e6,
        u8::from(state.gateway.audit().healthy()),
        state.gateway.policy().generation(),
    );
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.gateway.metrics().render(&extra),
    )
        .into_response()
}

async fn dev_discovery_users(State(state): State<AdminState>) -> Response {
    match &state.dev {
        Some(dev) => {
            let mut doc = dev.discovery_document(&dev.user_issuer());
            // With the console on, the user issuer is a real authorization server too.
            if let (Some(console), Some(map)) = (&state.console, doc.as_object_mut())
                && let serde_json::Value::Object(extra) = crate::console::dev_discovery_fields(&console.base_url)
            {
                map.extend(extra);
            }
            Json(doc).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn dev_discovery_agents(State(state): State<AdminState>) -> Response {
    match &state.dev {
        Some(dev) => Json(dev.discovery_document(&dev.agent_issuer())).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn dev_jwks(State(state): State<AdminState>) -> Response {
    match &state.dev {
        Some(dev) => ([(header::CACHE_CONTROL, "max-age=300")], Json(dev.jwks())).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A JSON error body, `{"error": "..."}`.
pub fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
    let mut response = (status, Json(serde_json::json!({ "error": message.into() }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    response
}

/// The caller's identity from `Authorization: Bearer <OIDC token>`.
pub(crate) async fn caller(state: &AdminState, headers: &HeaderMap) -> Result<Identity, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            api_error(
                StatusCode::UNAUTHORIZED,
                "missing bearer token: send Authorization: Bearer <your OIDC token>",
            )
        })?;
    state
        .gateway
        .verify_token(token)
        .await
        .map_err(|e| api_error(StatusCode::UNAUTHORIZED, format!("token rejected: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCredential {
    target: String,
    /// e.g. "15m"; never beyond the token's own expiry.
    ttl: Option<String>,
}

async fn create_credential(
    State(state): State<AdminState>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    body: Result<Json<CreateCredential>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let identity = match caller(&state, &headers).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("bad request body: {}", e.body_text())),
    };
    let ttl = match body.ttl.as_deref().map(humantime::parse_duration).transpose() {
        Ok(t) => t,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("ttl: {e}")),
    };
    match state.gateway.issue_credential(&identity, &body.target, ttl, peer).await {
        Ok(issued) => (StatusCode::CREATED, Json(issued)).into_response(),
        Err(refusal) => {
            let status = match refusal.kind {
                RefusalKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::FORBIDDEN,
            };
            api_error(status, refusal.message)
        }
    }
}

async fn list_credentials(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let identity = match caller(&state, &headers).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    match state
        .gateway
        .credentials()
        .list(&identity, std::time::SystemTime::now())
    {
        Ok(list) => Json(list).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "Credential store failed.");
            api_error(StatusCode::SERVICE_UNAVAILABLE, "the credential store failed")
        }
    }
}

async fn revoke_credential(State(state): State<AdminState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let identity = match caller(&state, &headers).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    match state.gateway.revoke_credential(&identity, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(refusal) if refusal.kind == RefusalKind::Unavailable => {
            api_error(StatusCode::SERVICE_UNAVAILABLE, refusal.message)
        }
        Err(refusal) => api_error(StatusCode::NOT_FOUND, refusal.message),
    }
}
