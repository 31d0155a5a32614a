//! A session is one caller on one target. Every request in it goes through
//! [`Session::authorize`], the one enforcement path: policy, approval, audit, then a
//! [`Permit`] that the frontend must hand over to forward the request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use gatehouse_audit::AuditEvent;
use gatehouse_identity::Identity;
use gatehouse_mask::{DataClass, MaskCounts, Masker};
use gatehouse_policy::{AuthzRequest, Decision, Namespace};
use tokio::sync::OnceCell;

use crate::error::{Refusal, RefusalKind};
use crate::gateway::{Gateway, Protocol, Target, describe};

/// Proof that one request was decided, allowed and audited. It has no public constructor,
/// is not `Clone`, and forwarding functions take it by value: a frontend cannot forward a
/// request it did not ask about, nor reuse the answer for another.
#[must_use = "a permit is the only way to forward the request it was issued for"]
#[derive(Debug)]
pub struct Permit {
    request: u64,
    policies: Vec<String>,
}

impl Permit {
    /// The request number within the session (audit records carry the same number).
    pub fn request(&self) -> u64 {
        self.request
    }

    /// Ids of the policies that allowed the request.
    pub fn policies(&self) -> &[String] {
        &self.policies
    }
}

/// One caller on one target; cheap to clone into the tasks of a connection.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    identity: Identity,
    target: Target,
    client: SocketAddr,
    started: Instant,
    expires_at: SystemTime,
    gateway: Arc<Gateway>,
    requests: AtomicU64,
    ended: AtomicBool,
    masker: OnceCell<Masker>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("subject", &self.inner.identity.subject)
            .field("target", &self.inner.target.name)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn start(gateway: Arc<Gateway>, identity: Identity, target: Target, client: SocketAddr) -> Self {
        let mut expires_at = identity.expires_at;
        if let Some(max) = gateway.max_session_lifetime() {
            expires_at = expires_at.min(SystemTime::now() + max);
        }
        Self {
            inner: Arc::new(Inner {
                id: crate::random_id("s_", 8),
                identity,
                target,
                client,
                started: Instant::now(),
                expires_at,
                gateway,
                requests: AtomicU64::new(0),
                ended: AtomicBool::new(false),
                masker: OnceCell::new(),
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    pub fn target(&self) -> &Target {
        &self.inner.target
    }

    pub fn protocol(&self) -> Protocol {
        self.inner.target.protocol
    }

    pub fn client(&self) -> SocketAddr {
        self.inner.client
    }

    /// When the session must end: the identity's (or credential's) expiry, or the configured
    /// maximum lifetime, whichever comes first.
    pub fn expires_at(&self) -> SystemTime {
        self.inner.expires_at
    }

    /// Time left before [`Session::expires_at`]; zero once passed.
    pub fn time_left(&self) -> Duration {
        self.inner
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    /// The enforcement path. `action` is the action's name in the protocol's namespace
    /// (`read`, `exec`, `get`, ...), `attributes` its Cedar context (a JSON object). The
    /// decision is written to the audit log before a permit is returned; if it cannot be
    /// written, the request is refused.
    pub async fn authorize(&self, action: &str, attributes: serde_json::Value) -> Result<Permit, Refusal> {
        let inner = &self.inner;
        let request = inner.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let metrics = inner.gateway.metrics();
        if self.time_left().is_zero() {
            metrics.decision("deny");
            return Err(Refusal {
                kind: RefusalKind::Expired,
                message: "the session's token or credential has expired; connect again with a fresh one".into(),
                policies: Vec::new(),
                request: Some(request),
            });
        }
        let mut context = attributes;
        if let (Some(owner), Some(map)) = (&inner.identity.owner, context.as_object_mut()) {
            map.insert("owner".into(), owner.clone().into());
        }
        let decision = inner.gateway.policy().authorize(&AuthzRequest {
            principal: &inner.identity,
            namespace: self.protocol().namespace(),
            action,
            resource: inner.target.resource(),
            context: context.clone(),
        });
        let (outcome, policies, reason) = match &decision {
            Decision::Allow { policies } => ("allow", policies.clone(), None),
            Decision::Deny { policies, reason } => ("deny", policies.clone(), Some(reason.clone())),
            Decision::NeedsApproval { policies, .. } => ("needs_approval", policies.clone(), Some(describe(&decision))),
        };
        metrics.decision(outcome);
        let record = AuditEvent::RequestDecided {
            session: inner.id.clone(),
            request,
            action: format!("{}::{action}", self.protocol().namespace_name()),
            attributes: context,
            decision: outcome.into(),
            policies: policies.clone(),
            reason,
        };
        if let Err(error) = inner.gateway.audit().append(record).await {
            tracing::error!(session = %inner.id, %error, "Audit write failed; refusing the request.");
            return Err(Refusal {
                kind: RefusalKind::Unavailable,
                message: "the gateway cannot write its audit log and refuses requests until it can".into(),
                policies,
                request: Some(request),
            });
        }
        match decision {
            Decision::Allow { policies } => Ok(Permit { request, policies }),
            Decision::Deny { policies, reason } => {
                let named = if policies.is_empty() {
                    String::new()
                } else {
                    format!(" (policy {})", policies.join(", "))
                };
                Err(Refusal {
                    kind: RefusalKind::Denied,
                    message: format!("gatehouse: {action} refused: {reason}{named}"),
                    policies,
                    request: Some(request),
                })
            }
            Decision::NeedsApproval {
                policies,
                approver_group,
                ..
            } => Err(Refusal {
                kind: RefusalKind::ApprovalRequired {
                    approver_group: approver_group.clone(),
                },
                // Approvals arrive with their own issue; until then the request is refused
                // with the reason, never silently allowed.
                message: format!(
                    "gatehouse: {action} needs approval by group {approver_group} (policy {}); this gateway does not take approvals yet, so the request is refused",
                    policies.join(", ")
                ),
                policies,
                request: Some(request),
            }),
        }
    }

    /// The masker for this session: policy decides once per data class whether this identity
    /// may see it unmasked (`Gatehouse::Action::"unmask"`); anything but an allow masks.
    pub async fn masker(&self) -> &Masker {
        self.inner
            .masker
            .get_or_init(|| async {
                let inner = &self.inner;
                let masked = DataClass::ALL.into_iter().filter(|class| {
                    let decision = inner.gateway.policy().authorize(&AuthzRequest {
                        principal: &inner.identity,
                        namespace: Namespace::Gatehouse,
                        action: "unmask",
                        resource: inner.target.resource(),
                        context: serde_json::json!({ "data_class": class.as_str() }),
                    });
                    !matches!(decision, Decision::Allow { .. })
                });
                Masker::new(masked.collect::<Vec<_>>())
            })
            .await
    }

    /// Records how many values of each class were masked in one request's response.
    pub async fn record_masking(&self, request: u64, counts: &MaskCounts) {
        if counts.is_empty() {
            return;
        }
        let event = AuditEvent::MaskingApplied {
            session: self.inner.id.clone(),
            request,
            counts: counts.to_map(),
        };
        if let Err(error) = self.inner.gateway.audit().append(event).await {
            tracing::error!(session = %self.inner.id, %error, "Audit write of masking counts failed.");
        }
    }

    /// Records a failure on the target's side (connection lost, login refused, ...).
    pub async fn target_error(&self, message: impl Into<String>) {
        let event = AuditEvent::TargetError {
            session: self.inner.id.clone(),
            message: message.into(),
        };
        if let Err(error) = self.inner.gateway.audit().append(event).await {
            tracing::error!(session = %self.inner.id, %error, "Audit write of a target error failed.");
        }
    }

    /// Ends the session once; later calls do nothing.
    pub async fn end(&self, reason: &str) {
        let inner = &self.inner;
        if inner.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        inner.gateway.metrics().session_closed(self.protocol());
        let event = AuditEvent::SessionEnded {
            session: inner.id.clone(),
            reason: reason.into(),
            requests: inner.requests.load(Ordering::Relaxed),
            duration_ms: u64::try_from(inner.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        if let Err(error) = inner.gateway.audit().append(event).await {
            tracing::error!(session = %inner.id, %error, "Audit write of the session end failed.");
        }
    }
}

impl Protocol {
    fn namespace_name(self) -> &'static str {
        match self {
            Protocol::Postgres => "Postgres",
            Protocol::Ssh => "Ssh",
            Protocol::Kube => "Kube",
        }
    }
}
