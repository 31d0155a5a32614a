//! The approvers' half of the admin API: `/api/approvals`. Every call carries the caller's
//! OIDC token; the broker in `gatehouse-core` enforces segregation of duties and policy, this
//! module only turns its answers into HTTP.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gatehouse_core::{ApprovalError, ApprovalRequest, ApprovalState};
use gatehouse_identity::Identity;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admin::{AdminState, api_error, caller};

#[derive(Deserialize)]
pub struct ListQuery {
    /// `pending` (the default), `approved`, `denied`, `expired`, `withdrawn`, `executed`
    /// or `all`.
    state: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    reason: Option<String>,
}

/// Requests the caller may see: their own, and those their groups may approve.
pub async fn list(State(state): State<AdminState>, headers: HeaderMap, Query(query): Query<ListQuery>) -> Response {
    let identity = match caller(&state, &headers).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let filter = match query.state.as_deref().unwrap_or("pending") {
        "all" => None,
        s => match ApprovalState::parse(s) {
            Some(state) => Some(state),
            None => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown state {s:?}: use pending, approved, denied, expired, withdrawn, executed or all"),
                );
            }
        },
    };
    match state.gateway.approvals().list(filter) {
        Ok(requests) => Json(
            requests
                .iter()
                .filter(|r| visible_to(r, &identity))
                .map(view)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(error) => broker_error(error),
    }
}

pub async fn show(State(state): State<AdminState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let identity = match caller(&state, &headers).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    match state.gateway.approvals().get(&normalise(&id)) {
        // Someone else's request outside the caller's groups: as if it did not exist.
        Ok(request) if visible_to(&request, &identity) => Json(view(&request)).into_response(),
        Ok(_) => broker_error(ApprovalError::NotFound),
        Err(error) => broker_error(error),
    }
}

pub async fn approve(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<DecisionBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let (identity, reason) = match decider(&state, &headers, body).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    match state
        .gateway
        .approvals()
        .approve(&normalise(&id), &identity, reason.as_deref())
        .await
    {
        Ok(request) => {
            tracing::info!(approval = %request.id, approver = identity.display_name(), state = %request.state, "Approval recorded.");
            Json(view(&request)).into_response()
        }
        Err(error) => broker_error(error),
    }
}

pub async fn deny(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<DecisionBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let (identity, reason) = match decider(&state, &headers, body).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let Some(reason) = reason else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "a denial needs a reason: the requester is shown it",
        );
    };
    match state
        .gateway
        .approvals()
        .deny(&normalise(&id), &identity, &reason)
        .await
    {
        Ok(request) => {
            tracing::info!(approval = %request.id, approver = identity.display_name(), "Approval request denied.");
            Json(view(&request)).into_response()
        }
        Err(error) => broker_error(error),
    }
}

/// Who decides, and their reason (trimmed; none when empty), for approve and deny.
async fn decider(
    state: &AdminState,
    headers: &HeaderMap,
    body: Result<Json<DecisionBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(Identity, Option<String>), Response> {
    let identity = caller(state, headers).await?;
    let body = decision_body(body).map_err(|message| api_error(StatusCode::BAD_REQUEST, message))?;
    let reason = body.reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
    Ok((identity, reason))
}

/// An empty body is no reason; a malformed one is a client error (the message says so).
fn decision_body(
    body: Result<Json<DecisionBody>, axum::extract::rejection::JsonRejection>,
) -> Result<DecisionBody, String> {
    use axum::extract::rejection::JsonRejection;
    match body {
        Ok(Json(b)) => Ok(b),
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(DecisionBody::default()),
        Err(JsonRejection::JsonSyntaxError(_)) | Err(JsonRejection::JsonDataError(_)) => {
            Err("bad request body: send {\"reason\": \"...\"}".to_owned())
        }
        Err(e) => Err(format!("bad request body: {}", e.body_text())),
    }
}

/// Ids are printed in upper case with dashes; accept them typed in lower case too.
pub(crate) fn normalise(id: &str) -> String {
    id.trim().to_ascii_uppercase()
}

pub(crate) fn visible_to(request: &ApprovalRequest, identity: &Identity) -> bool {
    identity.same_person(&request.requester) || identity.groups.contains(&request.approver_group)
}

/// The JSON shape of a request in the API (and in `gatehouse approvals list --json`).
pub fn view(request: &ApprovalRequest) -> Value {
    let requester = &request.requester;
    let votes: Vec<Value> = request
        .votes
        .iter()
        .map(|v| {
            json!({
                "approver": v.approver.email.clone().unwrap_or_else(|| v.approver.subject.clone()),
                "approved": v.approved,
                "reason": v.reason,
                "at": gatehouse_core::format_time(v.at),
            })
        })
        .collect();
    let approvals = request.votes.iter().filter(|v| v.approved).count();
    json!({
        "id": request.id,
        "state": request.state.as_str(),
        "requester": requester.display_name(),
        "requester_kind": requester.kind.as_str(),
        "requester_issuer": requester.issuer,
        "requester_subject": requester.subject,
        "requester_owner": requester.owner,
        "requester_groups": requester.groups,
        "session": request.session,
        "request_number": request.request_number,
        "protocol": request.protocol.as_str(),
        "target": request.target,
        "action": request.action,
        "request": request.request,
        "request_sha256": request.request_sha256,
        "approver_group": request.approver_group,
        "approvals_required": request.approvals_required,
        "approvals": approvals,
        "votes": votes,
        "created_at": gatehouse_core::format_time(request.created_at),
        "expires_at": gatehouse_core::format_time(request.expires_at),
    })
}

fn broker_error(error: ApprovalError) -> Response {
    let status = match &error {
        ApprovalError::OwnRequest
        | ApprovalError::AgentCannotApprove
        | ApprovalError::OwnerOfAgent
        | ApprovalError::NotInApproverGroup(_)
        | ApprovalError::NotPermittedByPolicy(_) => StatusCode::FORBIDDEN,
        ApprovalError::AlreadyDecided(_)
        | ApprovalError::Expired
        | ApprovalError::AlreadyVoted
        | ApprovalError::NotBound => StatusCode::CONFLICT,
        ApprovalError::NotFound => StatusCode::NOT_FOUND,
        ApprovalError::Store(_) | ApprovalError::Corrupt(_) | ApprovalError::Audit(_) => {
            tracing::error!(%error, "The approval broker failed.");
            return api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the approval store or audit log failed; try again",
            );
        }
    };
    api_error(status, error.to_string())
}
