//! Approval notifications: a webhook per approver group, posted when a request is created
//! and when it is decided. The body is JSON with a Slack-compatible `text` (so a Slack or
//! Mattermost incoming webhook shows it as is) plus the request itself for other receivers.
//! Delivery runs in its own task and is retried; it never holds up the request.

use std::collections::HashMap;
use std::time::Duration;

use gatehouse_core::{ApprovalListener, ApprovalRequest, ApprovalState};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::admin_approvals;

/// Pauses before the second, third and fourth attempt.
const RETRY_DELAYS: [Duration; 3] = [Duration::from_secs(1), Duration::from_secs(4), Duration::from_secs(16)];
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Posts approval events to each approver group's webhook.
pub struct Webhooks {
    by_group: HashMap<String, String>,
    /// Base URL of the pages people open (`{base}/approvals/{id}`).
    link_base: String,
    client: HttpsClient,
}

impl Webhooks {
    pub fn new(by_group: HashMap<String, String>, link_base: String) -> anyhow::Result<Self> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            by_group,
            link_base: link_base.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }
}

impl ApprovalListener for Webhooks {
    fn notify(&self, request: &ApprovalRequest) {
        let Some(url) = self.by_group.get(&request.approver_group) else {
            return;
        };
        let link = format!("{}/approvals/{}", self.link_base, request.id);
        let body = serde_json::json!({
            "text": text(request, &link),
            "event": event_name(request.state),
            "url": link,
            "approval": admin_approvals::view(request),
        });
        let payload = Bytes::from(body.to_string());
        let client = self.client.clone();
        let url = url.clone();
        let id = request.id.clone();
        let event = event_name(request.state);
        tokio::spawn(async move {
            for attempt in 0..=RETRY_DELAYS.len() {
                if attempt > 0 {
                    tokio::time::sleep(RETRY_DELAYS[attempt - 1]).await;
                }
                match post(&client, &url, payload.clone()).await {
                    Ok(()) => {
                        tracing::debug!(approval = %id, event, "Webhook delivered.");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(approval = %id, event, attempt = attempt + 1, %error, "Webhook delivery failed.");
                    }
                }
            }
            tracing::error!(approval = %id, event, "Webhook delivery gave up after {} attempts.", RETRY_DELAYS.len() + 1);
        });
    }
}

async fn post(client: &HttpsClient, url: &str, payload: Bytes) -> Result<(), String> {
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(payload))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(ATTEMPT_TIMEOUT, client.request(request))
        .await
        .map_err(|_| format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {}", response.status()))
    }
}

fn event_name(state: ApprovalState) -> &'static str {
    match state {
        ApprovalState::Pending => "approval_requested",
        ApprovalState::Approved => "approval_approved",
        ApprovalState::Denied => "approval_denied",
        ApprovalState::Expired => "approval_expired",
        ApprovalState::Withdrawn => "approval_withdrawn",
        ApprovalState::Executed => "approval_executed",
    }
}

/// One Slack-style line (mrkdwn link syntax).
fn text(request: &ApprovalRequest, link: &str) -> String {
    let who = match (&request.requester.owner, request.requester.is_agent()) {
        (Some(owner), true) => format!("{} (agent of {owner})", request.requester.display_name()),
        (None, true) => format!("{} (agent)", request.requester.display_name()),
        _ => request.requester.display_name().to_owned(),
    };
    let what: String = request.request.chars().take(300).collect();
    let head = match request.state {
        ApprovalState::Pending => format!(
            "Approval needed from {} by {}",
            request.approver_group,
            gatehouse_core::format_time(request.expires_at)
        ),
        ApprovalState::Approved | ApprovalState::Executed => "Approved".to_owned(),
        ApprovalState::Denied => {
            let reason = request
                .votes
                .iter()
                .rev()
                .find(|v| !v.approved)
                .and_then(|v| v.reason.clone())
                .unwrap_or_default();
            format!("Denied: {reason}")
        }
        ApprovalState::Expired => "Expired without a decision".to_owned(),
        ApprovalState::Withdrawn => "Withdrawn".to_owned(),
    };
    format!(
        "{head} — {who} wants {} on {}: `{what}` <{link}|{}>",
        request.action, request.target, request.id
    )
}
