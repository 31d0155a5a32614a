//! `POST /api/ssh/cert`: an OpenSSH user certificate from the gateway's SSH CA for the
//! caller's public key, bound to one SSH target and valid no longer than the caller's token.

use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gatehouse_audit::{Actor, AuditEvent};
use gatehouse_core::{Protocol, RefusalKind};
use serde::Deserialize;

use crate::admin::{AdminState, ClientAddr, api_error, caller};

/// Certificates last this long unless the request asks for less (and never past the token).
const DEFAULT_TTL: Duration = Duration::from_secs(8 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertRequest {
    target: String,
    /// One OpenSSH public key line, e.g. `ssh-ed25519 AAAA... me@laptop`.
    public_key: String,
    /// e.g. "15m"; never beyond the token's own expiry.
    ttl: Option<String>,
}

pub(crate) async fn issue(
    State(state): State<AdminState>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    body: Result<Json<CertRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let identity = match caller(&state, &headers).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let Some(ca) = state.ssh_ca.clone() else {
        return api_error(StatusCode::NOT_FOUND, "this gateway has no SSH listener configured");
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("bad request body: {}", e.body_text())),
    };
    let ttl = match body.ttl.as_deref().map(humantime::parse_duration).transpose() {
        Ok(t) => t.unwrap_or(DEFAULT_TTL),
        Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("ttl: {e}")),
    };
    let public_key = match gatehouse_ssh::ca::parse_public_key(&body.public_key) {
        Ok(k) => k,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("public_key: {e}")),
    };
    let is_ssh = state
        .gateway
        .target(&body.target)
        .is_some_and(|t| t.protocol == Protocol::Ssh);
    if !is_ssh {
        return api_error(StatusCode::FORBIDDEN, format!("no SSH target named {:?}", body.target));
    }
    // The same check as for a credential: policy must let this identity connect there.
    let refusal = state.gateway.check_connect(&identity, &body.target, peer);
    if let Err(refusal) = refusal {
        let status = match refusal.kind {
            RefusalKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::FORBIDDEN,
        };
        return api_error(status, refusal.message);
    }
    let issued = match ca.issue(&identity, &body.target, &public_key, SystemTime::now() + ttl) {
        Ok(i) => i,
        Err(message) => return api_error(StatusCode::BAD_REQUEST, message),
    };
    let certificate = match issued.certificate.to_openssh() {
        Ok(c) => c,
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode: {e}")),
    };
    let expires_at = gatehouse_core::format_time(issued.valid_before);
    let event = AuditEvent::CredentialIssued {
        credential_id: format!("sshcert:{:016x}", issued.serial),
        actor: Actor::from(&identity),
        protocol: Protocol::Ssh.as_str().into(),
        target: body.target.clone(),
        expires_at: expires_at.clone(),
    };
    if state.gateway.audit().append(event).await.is_err() {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway cannot write its audit log",
        );
    }
    let body = serde_json::json!({
        "certificate": certificate,
        "serial": issued.serial.to_string(),
        "key_id": issued.key_id,
        "principals": [body.target],
        "expires_at": expires_at,
        "ca_public_key": ca.public_key_openssh(),
    });
    (StatusCode::CREATED, Json(body)).into_response()
}
