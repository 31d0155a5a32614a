//! Sessions from the audit log (the same readers as `gatehouse audit sessions|show`): the
//! list with filters, one session's requests with their decisions, deciding policies,
//! masking counts and approvals, and its shell recordings played in the page.
//!
//! Who sees what: members of `console.auditor_groups` see every session; anyone else sees
//! their own sessions and the sessions of approval requests their groups may decide.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gatehouse_audit::{AuditEvent, Record, SessionSummary};
use serde::Deserialize;
use serde_json::Value;

use super::Console;
use super::auth::{self, ConsoleSession};
use super::html::{self, esc};

/// Sessions shown at most on the list page.
const MAX_LISTED: usize = 200;
/// Largest recording served to the page.
const MAX_RECORDING: u64 = 64 << 20;

fn is_auditor(console: &Console, session: &ConsoleSession) -> bool {
    session
        .identity
        .groups
        .iter()
        .any(|g| console.auditor_groups.contains(g))
}

#[derive(Deserialize, Default)]
pub struct Filters {
    identity: Option<String>,
    target: Option<String>,
    protocol: Option<String>,
    outcome: Option<String>,
}

impl Filters {
    fn value(v: &Option<String>) -> &str {
        v.as_deref().map(str::trim).unwrap_or("")
    }

    fn keep(&self, s: &SessionSummary) -> bool {
        let contains =
            |hay: &str, needle: &str| needle.is_empty() || hay.to_lowercase().contains(&needle.to_lowercase());
        let protocol = Self::value(&self.protocol);
        let outcome = Self::value(&self.outcome);
        contains(&s.actor, Self::value(&self.identity))
            && contains(&s.target, Self::value(&self.target))
            && (protocol.is_empty() || s.protocol == protocol)
            && match outcome {
                "" => true,
                "active" => s.ended.is_none(),
                "ended" => s.ended.is_some(),
                "denied" => s.denied > 0,
                other => contains(&s.outcome, other),
            }
    }
}

fn audit_failed(session: &ConsoleSession, error: impl std::fmt::Display) -> Response {
    tracing::error!(%error, "Console: cannot read the audit log.");
    html::error_page(
        Some(session),
        StatusCode::SERVICE_UNAVAILABLE,
        "The audit log cannot be read.",
    )
}

/// `/sessions`: newest first, filtered.
pub async fn list(State(console): State<Arc<Console>>, headers: HeaderMap, Query(f): Query<Filters>) -> Response {
    let session = match auth::require(&console, &headers, "/sessions") {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !is_auditor(&console, &session) {
        let body = format!(
            "<h1>Sessions</h1><p class=\"hint\">The session list is for members of {}. \
             Approvers reach the sessions of their requests from the approvals page.</p>",
            esc(&console.auditor_groups.join(", "))
        );
        let mut response = html::page("Sessions", Some(&session), &body);
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    }
    let dir = console.audit_dir.clone();
    let all = match tokio::task::spawn_blocking(move || gatehouse_audit::sessions(&dir)).await {
        Ok(Ok(all)) => all,
        Ok(Err(e)) => return audit_failed(&session, e),
        Err(e) => return audit_failed(&session, e),
    };
    let protocols = ["", "postgres", "ssh", "kube"];
    let outcomes = [
        ("", "any"),
        ("active", "active"),
        ("ended", "ended"),
        ("denied", "with denials"),
    ];
    let mut body = String::from("<h1>Sessions</h1><form method=\"get\" action=\"/sessions\" class=\"filters\">");
    let _ = write!(
        body,
        "<label>Identity <input name=\"identity\" value=\"{}\"></label>\
         <label>Target <input name=\"target\" value=\"{}\"></label><label>Protocol <select name=\"protocol\">",
        esc(Filters::value(&f.identity)),
        esc(Filters::value(&f.target))
    );
    for p in protocols {
        let selected = if Filters::value(&f.protocol) == p {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<option value=\"{p}\"{selected}>{}</option>",
            if p.is_empty() { "any" } else { p }
        );
    }
    body.push_str("</select></label><label>Outcome <select name=\"outcome\">");
    for (value, label) in outcomes {
        let selected = if Filters::value(&f.outcome) == value {
            " selected"
        } else {
            ""
        };
        let _ = write!(body, "<option value=\"{value}\"{selected}>{label}</option>");
    }
    body.push_str("</select></label><button type=\"submit\" id=\"filter\">Filter</button></form>");
    let shown: Vec<&SessionSummary> = all.iter().rev().filter(|s| f.keep(s)).take(MAX_LISTED).collect();
    if shown.is_empty() {
        body.push_str("<p class=\"empty\">No sessions match.</p>");
    } else {
        body.push_str(
            "<div class=\"scroll\"><table class=\"sessions\"><thead><tr><th>Session</th><th>Who</th><th>Protocol</th>\
             <th>Target</th><th>Started</th><th>Requests</th><th>Denied</th><th>Outcome</th></tr></thead><tbody>",
        );
        for s in shown {
            let _ = write!(
                body,
                "<tr><td><a href=\"/sessions/{id}\">{id}</a></td><td>{who}</td><td>{protocol}</td><td>{target}</td>\
                 <td>{started}</td><td>{requests}</td><td>{denied}</td><td>{outcome}</td></tr>",
                id = esc(&s.session),
                who = esc(&s.actor),
                protocol = esc(&s.protocol),
                target = esc(&s.target),
                started = esc(&s.started),
                requests = s.requests,
                denied = s.denied,
                outcome = esc(&s.outcome),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    html::page("Sessions", Some(&session), &body)
}

/// The records of one session, if this person may see it.
async fn records_for(console: &Console, session: &ConsoleSession, id: &str) -> Result<Vec<Record>, Response> {
    let valid = id.starts_with("s_") && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let not_found = || html::error_page(Some(session), StatusCode::NOT_FOUND, "No session with this id.");
    if !valid {
        return Err(not_found());
    }
    let dir = console.audit_dir.clone();
    let wanted = id.to_owned();
    let records = match tokio::task::spawn_blocking(move || gatehouse_audit::session_records(&dir, &wanted)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(audit_failed(session, e)),
        Err(e) => return Err(audit_failed(session, e)),
    };
    let who = &session.identity;
    let allowed = is_auditor(console, session)
        || records.iter().any(|r| match &r.event {
            AuditEvent::SessionStarted { actor, .. } => actor.issuer == who.issuer && actor.subject == who.subject,
            AuditEvent::ApprovalRequested { approver_group, .. } => who.groups.contains(approver_group),
            _ => false,
        });
    // Someone else's session: as if it did not exist.
    if records.is_empty() || !allowed {
        return Err(not_found());
    }
    Ok(records)
}

/// One request of a session, gathered from its records.
#[derive(Default)]
struct RequestRow {
    action: String,
    attributes: Value,
    decision: String,
    policies: Vec<String>,
    reason: Option<String>,
    masked: BTreeMap<String, u64>,
    approvals: Vec<String>,
    /// What the target answered (PostgreSQL statements): tag or error, and duration.
    outcomes: Vec<String>,
}

/// `/sessions/{id}`.
pub async fn show(State(console): State<Arc<Console>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let here = format!("/sessions/{}", auth::urlencode(&id));
    let session = match auth::require(&console, &headers, &here) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let records = match records_for(&console, &session, &id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut head = String::new();
    let mut rows: BTreeMap<u64, RequestRow> = BTreeMap::new();
    let mut approval_request: BTreeMap<String, u64> = BTreeMap::new();
    let mut other = String::new();
    let mut recordings = String::new();
    let mut files = String::new();
    for r in &records {
        match &r.event {
            AuditEvent::SessionStarted {
                actor,
                protocol,
                target,
                client_addr,
                ..
            } => {
                let _ = write!(
                    head,
                    "<dt>Who</dt><dd id=\"actor\">{}</dd><dt>Groups</dt><dd>{}</dd><dt>Protocol</dt><dd>{}</dd>\
                     <dt>Target</dt><dd>{}</dd><dt>Client</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd>",
                    esc(&actor.to_string()),
                    esc(&actor.groups.join(", ")),
                    esc(protocol),
                    esc(target),
                    esc(client_addr),
                    esc(&r.time)
                );
            }
            AuditEvent::SessionEnded {
                reason, duration_ms, ..
            } => {
                let _ = write!(
                    head,
                    "<dt>Ended</dt><dd>{} ({}, after {:.1} s)</dd>",
                    esc(&r.time),
                    esc(reason),
                    *duration_ms as f64 / 1000.0
                );
            }
            AuditEvent::RequestDecided {
                request,
                action,
                attributes,
                decision,
                policies,
                reason,
                ..
            } => {
                let row = rows.entry(*request).or_default();
                row.action = action.clone();
                row.attributes = attributes.clone();
                row.decision = decision.clone();
                row.policies = policies.clone();
                row.reason = reason.clone();
            }
            AuditEvent::MaskingApplied { request, counts, .. } => {
                let row = rows.entry(*request).or_default();
                for (class, n) in counts {
                    *row.masked.entry(class.clone()).or_default() += n;
                }
            }
            AuditEvent::StatementCompleted {
                request,
                duration_us,
                command_tag,
                error,
                suspended,
                masked,
                ..
            } => {
                let row = rows.entry(*request).or_default();
                for (class, n) in masked {
                    *row.masked.entry(class.clone()).or_default() += n;
                }
                let what = match (error, command_tag) {
                    (Some(e), _) => format!("error {}: {}", e.code, e.message),
                    (None, Some(tag)) => tag.clone(),
                    (None, None) if *suspended => "suspended".to_owned(),
                    (None, None) => "done".to_owned(),
                };
                row.outcomes
                    .push(format!("{what} ({:.1} ms)", *duration_us as f64 / 1000.0));
            }
            AuditEvent::ApprovalRequested {
                approval,
                request,
                approver_group,
                ..
            } => {
                approval_request.insert(approval.clone(), *request);
                rows.entry(*request)
                    .or_default()
                    .approvals
                    .push(format!("{approval}: asked {approver_group} at {}", r.time));
            }
            AuditEvent::ApprovalGranted {
                approval,
                approver,
                reason,
            } => push_approval(
                &mut rows,
                &approval_request,
                approval,
                format!(
                    "approved by {approver}{}",
                    reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                ),
            ),
            AuditEvent::ApprovalDenied {
                approval,
                approver,
                reason,
            } => push_approval(
                &mut rows,
                &approval_request,
                approval,
                format!("denied by {approver}: {reason}"),
            ),
            AuditEvent::ApprovalRefused {
                approval,
                approver,
                attempted,
                reason,
            } => push_approval(
                &mut rows,
                &approval_request,
                approval,
                format!("{approver} tried to {attempted}: refused ({reason})"),
            ),
            AuditEvent::ApprovalExpired { approval } => {
                push_approval(&mut rows, &approval_request, approval, "expired".to_owned())
            }
            AuditEvent::ApprovalWithdrawn { approval, reason } => {
                push_approval(&mut rows, &approval_request, approval, format!("withdrawn: {reason}"))
            }
            AuditEvent::ApprovalExecuted { approval, .. } => {
                push_approval(&mut rows, &approval_request, approval, "executed".to_owned())
            }
            AuditEvent::FileTransferred {
                request,
                path,
                direction,
                bytes_read,
                bytes_written,
                completed,
                ..
            } => {
                let _ = write!(
                    files,
                    "<tr><td>{}</td><td>{request}</td><td><code>{}</code></td><td>{}</td><td>{bytes_read}</td>\
                     <td>{bytes_written}</td><td>{}</td></tr>",
                    esc(&r.time),
                    esc(path),
                    esc(direction),
                    if *completed { "closed" } else { "left open" }
                );
            }
            AuditEvent::RecordingWritten { bytes, sha256, .. } => {
                let _ = write!(
                    recordings,
                    "<figure class=\"player\" data-src=\"/sessions/{id}/recordings/{seq}\">\
                     <figcaption>Shell recording, {bytes} bytes, SHA-256 <code>{sha}</code></figcaption>\
                     <div class=\"controls\"><button type=\"button\" class=\"play\">Play</button>\
                     <button type=\"button\" class=\"end\">Skip to end</button>\
                     <label>Speed <select class=\"speed\"><option>1</option><option selected>2</option><option>8</option></select></label></div>\
                     <pre class=\"screen\" aria-live=\"off\"></pre></figure>",
                    id = esc(&id),
                    seq = r.seq,
                    sha = esc(sha256),
                );
            }
            event => {
                let mut value = serde_json::to_value(event).unwrap_or(Value::Null);
                if let Some(map) = value.as_object_mut() {
                    map.remove("event");
                    map.remove("session");
                }
                let _ = write!(
                    other,
                    "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                    esc(&r.time),
                    esc(event.kind()),
                    esc(&value.to_string())
                );
            }
        }
    }
    let mut body = format!(
        "<h1>Session <code>{}</code></h1><dl class=\"summary\">{head}</dl>",
        esc(&id)
    );
    body.push_str("<h2>Requests</h2>");
    if rows.is_empty() {
        body.push_str("<p class=\"empty\">No requests were decided in this session.</p>");
    } else {
        body.push_str(
            "<div class=\"scroll\"><table class=\"requests\"><thead><tr><th>#</th><th>Request</th><th>Decision</th>\
             <th>Policies</th><th>Masked</th><th>Approvals</th></tr></thead><tbody>",
        );
        for (n, row) in &rows {
            let _ = write!(
                body,
                "<tr class=\"decision-{decision}\"><td>{n}</td><td><span class=\"action\">{action}</span>{attrs}</td>\
                 <td><span class=\"badge decision\">{decision}</span>{reason}</td><td>{policies}</td><td>{masked}</td><td>{approvals}</td></tr>",
                decision = esc(&row.decision),
                action = esc(&row.action),
                attrs = attributes(&row.attributes),
                reason = row
                    .reason
                    .as_deref()
                    .map(|r| format!("<div class=\"reason\">{}</div>", esc(r)))
                    .into_iter()
                    .chain(
                        row.outcomes
                            .iter()
                            .map(|o| format!("<div class=\"outcome\">{}</div>", esc(o)))
                    )
                    .collect::<String>(),
                policies = esc(&row.policies.join(", ")),
                masked = if row.masked.is_empty() {
                    String::from("—")
                } else {
                    esc(&row
                        .masked
                        .iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join(", "))
                },
                approvals = row
                    .approvals
                    .iter()
                    .map(|a| format!("<div>{}</div>", esc(a)))
                    .collect::<String>(),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    if !files.is_empty() {
        let _ = write!(
            body,
            "<h2>Files</h2><div class=\"scroll\"><table class=\"files\"><thead><tr><th>Time</th><th>#</th><th>Path</th>\
             <th>Direction</th><th>Bytes read</th><th>Bytes written</th><th>Outcome</th></tr></thead><tbody>{files}</tbody></table></div>"
        );
    }
    if !recordings.is_empty() {
        body.push_str("<h2>Recordings</h2>");
        body.push_str(&recordings);
    }
    if !other.is_empty() {
        let _ = write!(
            body,
            "<h2>Other events</h2><div class=\"scroll\"><table class=\"events\"><tbody>{other}</tbody></table></div>"
        );
    }
    html::page(&format!("Session {id}"), Some(&session), &body)
}

fn push_approval(rows: &mut BTreeMap<u64, RequestRow>, index: &BTreeMap<String, u64>, approval: &str, text: String) {
    if let Some(n) = index.get(approval) {
        rows.entry(*n)
            .or_default()
            .approvals
            .push(format!("{approval}: {text}"));
    }
}

/// Request attributes as policy saw them: the statement, command or API call first, in a
/// `<pre>`, the rest as a compact list.
fn attributes(value: &Value) -> String {
    let Some(map) = value.as_object() else {
        return String::new();
    };
    let main = ["statement", "command", "path"];
    let mut s = String::new();
    for key in main {
        if let Some(text) = map.get(key).and_then(Value::as_str) {
            let _ = write!(s, "<pre class=\"request\">{}</pre>", esc(text));
        }
    }
    let seen: HashSet<&str> = main.into_iter().collect();
    let rest: Vec<String> = map
        .iter()
        .filter(|(k, _)| !seen.contains(k.as_str()))
        .map(|(k, v)| match v {
            Value::String(text) => format!("{k}={text}"),
            other => format!("{k}={other}"),
        })
        .collect();
    if !rest.is_empty() {
        let _ = write!(s, "<div class=\"attrs\">{}</div>", esc(&rest.join(" · ")));
    }
    s
}

/// `/sessions/{id}/recordings/{seq}`: the asciicast file named by the audit record `seq`,
/// only from the recordings directory and only when it still has the recorded hash.
pub async fn recording(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((id, seq)): Path<(String, u64)>,
) -> Response {
    let Some((_, session)) = auth::current(&console, &headers) else {
        return (StatusCode::UNAUTHORIZED, "sign in again").into_response();
    };
    let records = match records_for(&console, &session, &id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some((path, sha256)) = records.iter().find_map(|r| match &r.event {
        AuditEvent::RecordingWritten { path, sha256, .. } if r.seq == seq => Some((path.clone(), sha256.clone())),
        _ => None,
    }) else {
        return (StatusCode::NOT_FOUND, "no such recording").into_response();
    };
    let dir = console.recordings_dir.clone();
    let read = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let file = std::fs::canonicalize(&path).map_err(|e| format!("{path}: {e}"))?;
        let dir = std::fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !file.starts_with(&dir) {
            return Err(format!("{path} is outside the recordings directory"));
        }
        let len = std::fs::metadata(&file).map_err(|e| e.to_string())?.len();
        if len > MAX_RECORDING {
            return Err(format!("{path} is larger than the console plays ({len} bytes)"));
        }
        let bytes = std::fs::read(&file).map_err(|e| e.to_string())?;
        let actual = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
        let hex: String = actual.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        if hex != sha256 {
            return Err(format!("{path} does not match the SHA-256 in its audit record"));
        }
        Ok(bytes)
    })
    .await;
    match read {
        Ok(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CONTENT_DISPOSITION, "attachment"),
            ],
            bytes,
        )
            .into_response(),
        Ok(Err(message)) => {
            tracing::warn!(%message, "Console: recording refused.");
            (StatusCode::CONFLICT, message).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
