//! Pending approvals: the list that updates itself (the script polls
//! `/approvals/pending`), one request's page, and approve/deny forms that go through the
//! broker, which enforces segregation of duties whatever the page showed.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use gatehouse_core::{ApprovalError, ApprovalRequest, ApprovalState};
use gatehouse_identity::{Identity, PrincipalKind};
use serde::Deserialize;

use super::Console;
use super::auth::{self, ConsoleSession};
use super::html::{self, esc, time_left, unix_ms};
use crate::admin_approvals::{normalise, visible_to};

/// `/`: the approvals page when signed in, else the sign-in page.
pub async fn home(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match auth::current(&console, &headers) {
        Some(_) => Redirect::to("/approvals").into_response(),
        None => auth::sign_in_page(&console, "/approvals", None, StatusCode::OK),
    }
}

/// Why this person may not decide on this request, mirroring the broker's own checks (the
/// broker refuses anyway: this only decides whether the buttons are shown).
pub fn cannot_decide(request: &ApprovalRequest, who: &Identity) -> Option<String> {
    if request.state != ApprovalState::Pending || request.expires_at <= SystemTime::now() {
        return Some(format!("This request is {}.", request.state.as_str()));
    }
    if who.same_person(&request.requester) {
        return Some("This is your own request: someone else must decide.".into());
    }
    if who.kind == PrincipalKind::Agent {
        return Some("Agents cannot approve.".into());
    }
    if let Some(owner) = &request.requester.owner
        && (*owner == who.subject || who.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(owner)))
    {
        return Some("You own the agent that asks: someone else must decide.".into());
    }
    if request
        .votes
        .iter()
        .any(|v| v.approver.issuer == who.issuer && v.approver.subject == who.subject)
    {
        return Some("You have already voted on this request.".into());
    }
    if !who.groups.contains(&request.approver_group) {
        return Some(format!("Only members of {} can decide.", request.approver_group));
    }
    None
}

fn requester(request: &ApprovalRequest) -> String {
    let r = &request.requester;
    let mut s = format!("<span class=\"requester\">{}</span>", esc(r.display_name()));
    if r.kind == PrincipalKind::Agent {
        s.push_str(" <span class=\"badge agent\">agent</span>");
        match &r.owner {
            Some(owner) => s.push_str(&format!(" <span class=\"owner\">owned by {}</span>", esc(owner))),
            None => s.push_str(" <span class=\"owner\">no owner named</span>"),
        }
    } else {
        s.push_str(" <span class=\"badge\">person</span>");
    }
    s
}

/// One request as a card; with the decision forms when `session` may decide.
fn card(request: &ApprovalRequest, session: &ConsoleSession, detail: bool) -> String {
    let id = esc(&request.id);
    let approvals = request.votes.iter().filter(|v| v.approved).count();
    let mut s = format!(
        "<article class=\"approval\" id=\"approval-{id}\" data-id=\"{id}\" data-state=\"{state}\">\
         <h2><a href=\"/approvals/{id}\">{id}</a> <span class=\"badge state-{state}\">{state}</span></h2>\
         <dl>\
         <dt>Who asks</dt><dd>{who}</dd>\
         <dt>What</dt><dd><span class=\"action\">{action}</span><pre class=\"request\">{what}</pre></dd>\
         <dt>Target</dt><dd>{target} <span class=\"badge\">{protocol}</span></dd>\
         <dt>Session</dt><dd><a href=\"/sessions/{session_id}\">{session_id}</a> (request #{number})</dd>\
         <dt>Approver group</dt><dd>{group} — {approvals} of {required} approvals</dd>\
         <dt>Asked</dt><dd>{created}</dd>\
         <dt>Time left</dt><dd><time class=\"countdown\" data-expires=\"{expires_ms}\" datetime=\"{expires}\">{left}</time></dd>\
         </dl>",
        state = esc(request.state.as_str()),
        who = requester(request),
        action = esc(&request.action),
        what = esc(&request.request),
        target = esc(&request.target),
        protocol = esc(request.protocol.as_str()),
        session_id = esc(&request.session),
        number = request.request_number,
        group = esc(&request.approver_group),
        required = request.approvals_required,
        created = esc(&gatehouse_core::format_time(request.created_at)),
        expires = esc(&gatehouse_core::format_time(request.expires_at)),
        expires_ms = unix_ms(request.expires_at),
        left = esc(&time_left(request.expires_at)),
    );
    if !request.votes.is_empty() {
        s.push_str("<ul class=\"votes\">");
        for v in &request.votes {
            s.push_str(&format!(
                "<li>{} by {}{}</li>",
                if v.approved { "Approved" } else { "Denied" },
                esc(&v.approver.to_string()),
                v.reason.as_deref().map(|r| format!(": {}", esc(r))).unwrap_or_default()
            ));
        }
        s.push_str("</ul>");
    }
    match cannot_decide(request, &session.identity) {
        Some(why) => s.push_str(&format!("<p class=\"nodecide\">{}</p>", esc(&why))),
        None => {
            let csrf = esc(&session.csrf);
            s.push_str(&format!(
                "<form method=\"post\" action=\"/approvals/{id}/approve\" class=\"decide\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <label>Reason <input name=\"reason\" maxlength=\"1000\" placeholder=\"ticket, context\"></label>\
                 <button type=\"submit\" class=\"approve\" name=\"decision\" value=\"approve\">Approve</button></form>\
                 <form method=\"post\" action=\"/approvals/{id}/deny\" class=\"decide\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <label>Reason <input name=\"reason\" maxlength=\"1000\" required placeholder=\"why not\"></label>\
                 <button type=\"submit\" class=\"deny\" name=\"decision\" value=\"deny\">Deny</button></form>"
            ));
        }
    }
    if detail {
        s.push_str(&format!(
            "<p class=\"hash\">SHA-256 of the exact request: <code>{}</code></p>",
            esc(&request.request_sha256)
        ));
    }
    s.push_str("</article>");
    s
}

/// The pending requests this person may see, oldest first.
fn pending(console: &Console, who: &Identity) -> Result<Vec<ApprovalRequest>, ApprovalError> {
    let mut list: Vec<ApprovalRequest> = console
        .gateway
        .approvals()
        .list(Some(ApprovalState::Pending))?
        .into_iter()
        .filter(|r| visible_to(r, who) && r.expires_at > SystemTime::now())
        .collect();
    list.sort_by_key(|r| r.created_at);
    Ok(list)
}

#[allow(clippy::result_large_err)] // the error is the page to send; boxing it buys nothing here
fn pending_html(console: &Console, session: &ConsoleSession) -> Result<String, Response> {
    let list = pending(console, &session.identity).map_err(|e| store_failed(session, e))?;
    // The script replaces the list only when this changes, so a half-typed reason survives.
    let version: Vec<String> = list.iter().map(|r| format!("{}:{}", r.id, r.votes.len())).collect();
    let mut s = format!("<div id=\"pending\" data-version=\"{}\">", esc(&version.join(",")));
    if list.is_empty() {
        s.push_str("<p class=\"empty\" id=\"none-pending\">No pending requests for you.</p>");
    }
    for r in &list {
        s.push_str(&card(r, session, false));
    }
    s.push_str("</div>");
    Ok(s)
}

fn store_failed(session: &ConsoleSession, error: ApprovalError) -> Response {
    tracing::error!(%error, "Console: the approval broker failed.");
    html::error_page(
        Some(session),
        StatusCode::SERVICE_UNAVAILABLE,
        "The approval store failed; try again.",
    )
}

/// `/approvals`: pending requests, kept current by the script.
pub async fn page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let session = match auth::require(&console, &headers, "/approvals") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let list = match pending_html(&console, &session) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let body = format!(
        "<h1>Pending approvals</h1><p class=\"hint\">Requests held until someone approves them. \
         This list updates by itself.</p><div data-poll=\"/approvals/pending\" data-target=\"pending\">{list}</div>"
    );
    html::page("Pending approvals", Some(&session), &body)
}

/// `/approvals/pending`: the list alone, for the page's polling.
pub async fn pending_fragment(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some((_, session)) = auth::current(&console, &headers) else {
        return (StatusCode::UNAUTHORIZED, "sign in again").into_response();
    };
    match pending_html(&console, &session) {
        Ok(list) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], list).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
pub struct ShowQuery {
    done: Option<String>,
}

/// `/approvals/{id}`: one request (the page notifications link to).
pub async fn show(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Response {
    let here = format!("/approvals/{}", auth::urlencode(&id));
    let session = match auth::require(&console, &headers, &here) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let notice = match q.done.as_deref() {
        Some("approve") => Some("Your approval is recorded."),
        Some("deny") => Some("Your denial is recorded."),
        _ => None,
    };
    render_one(&console, &session, &id, notice, None, StatusCode::OK)
}

fn render_one(
    console: &Console,
    session: &ConsoleSession,
    id: &str,
    notice: Option<&str>,
    problem: Option<&str>,
    status: StatusCode,
) -> Response {
    let request = match console.gateway.approvals().get(&normalise(id)) {
        Ok(r) if visible_to(&r, &session.identity) => r,
        Ok(_) | Err(ApprovalError::NotFound) => {
            return html::error_page(
                Some(session),
                StatusCode::NOT_FOUND,
                "No approval request with this id.",
            );
        }
        Err(e) => return store_failed(session, e),
    };
    let mut body = String::from("<h1>Approval request</h1>");
    if let Some(n) = notice {
        body.push_str(&format!(
            "<p class=\"notice\" role=\"status\" id=\"notice\">{}</p>",
            esc(n)
        ));
    }
    if let Some(p) = problem {
        body.push_str(&format!(
            "<p class=\"error\" role=\"alert\" id=\"error\">Refused: {}</p>",
            esc(p)
        ));
    }
    body.push_str(&card(&request, session, true));
    let mut response = html::page(&format!("Approval {}", request.id), Some(session), &body);
    *response.status_mut() = status;
    response
}

#[derive(Deserialize)]
pub struct DecisionForm {
    csrf: Option<String>,
    reason: Option<String>,
}

pub async fn approve(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    decide(&console, &headers, &id, &body, true).await
}

pub async fn deny(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    decide(&console, &headers, &id, &body, false).await
}

/// Both forms: session and CSRF token first, then the broker decides and its refusal (own
/// request, agent's owner, not in the group, not permitted, already decided) is shown.
async fn decide(console: &Console, headers: &HeaderMap, id: &str, body: &[u8], approve: bool) -> Response {
    let Some((_, session)) = auth::current(console, headers) else {
        return html::error_page(None, StatusCode::UNAUTHORIZED, "Sign in first.");
    };
    let Ok(form) = serde_urlencoded::from_bytes::<DecisionForm>(body) else {
        return html::error_page(Some(&session), StatusCode::BAD_REQUEST, "The form could not be read.");
    };
    if !session.csrf_ok(form.csrf.as_deref()) {
        return html::error_page(
            Some(&session),
            StatusCode::FORBIDDEN,
            "The form's CSRF token is missing or wrong; reload the page and try again.",
        );
    }
    let reason = form.reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
    let id = normalise(id);
    let broker = console.gateway.approvals();
    let result = if approve {
        broker.approve(&id, &session.identity, reason.as_deref()).await
    } else {
        match &reason {
            Some(reason) => broker.deny(&id, &session.identity, reason).await,
            None => {
                return render_one(
                    console,
                    &session,
                    &id,
                    None,
                    Some("a denial needs a reason: the requester is shown it"),
                    StatusCode::BAD_REQUEST,
                );
            }
        }
    };
    let verb = if approve { "approve" } else { "deny" };
    match result {
        Ok(request) => {
            tracing::info!(approval = %request.id, who = session.identity.display_name(), decision = verb, "Console decision recorded.");
            Redirect::to(&format!("/approvals/{}?done={verb}", auth::urlencode(&request.id))).into_response()
        }
        Err(error) => {
            let status = match &error {
                ApprovalError::NotFound => StatusCode::NOT_FOUND,
                ApprovalError::AlreadyDecided(_)
                | ApprovalError::Expired
                | ApprovalError::AlreadyVoted
                | ApprovalError::NotBound => StatusCode::CONFLICT,
                ApprovalError::Store(_) | ApprovalError::Corrupt(_) | ApprovalError::Audit(_) => {
                    return store_failed(&session, error);
                }
                _ => StatusCode::FORBIDDEN,
            };
            if status == StatusCode::NOT_FOUND {
                return html::error_page(Some(&session), status, "No approval request with this id.");
            }
            render_one(console, &session, &id, None, Some(&error.to_string()), status)
        }
    }
}
