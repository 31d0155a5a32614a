//! A session is one caller on one target. Every request in it goes through
//! [`Session::authorize`], the one enforcement path: policy, approval, audit, then a
//! [`Permit`] that the frontend must hand over to forward the request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use gatehouse_audit::{AuditEvent, TargetFailure};
use gatehouse_identity::Identity;
use gatehouse_mask::{DataClass, MaskCounts, Masker};
use gatehouse_policy::{AuthzRequest, Decision, EntityCache, Namespace};
use tokio::sync::OnceCell;

use crate::approvals::{ApprovalRequest, NewApproval, Outcome, Waiter};
use crate::error::{Refusal, RefusalKind};
use crate::gateway::{Gateway, Protocol, Target, describe};

/// How often a held request looks at the policy generation and the session's expiry.
const HOLD_CHECK_INTERVAL: Duration = Duration::from_millis(500);

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

/// What [`Session::decide`] answers when the request may go ahead or wait for approval.
#[derive(Debug)]
pub enum Verdict {
    Permit(Permit),
    NeedsApproval(ApprovalNeeded),
}

/// A decided (and audited) request that policy wants approved first; it becomes a
/// [`Permit`] only through [`Session::hold`] and an approval.
#[derive(Debug)]
pub struct ApprovalNeeded {
    request: u64,
    action: String,
    context: serde_json::Value,
    policies: Vec<String>,
    approver_group: String,
    approvals_required: u32,
    timeout: Option<Duration>,
    /// The policy generation read before deciding: a reload after it decides again.
    generation: u64,
}

impl ApprovalNeeded {
    pub fn request(&self) -> u64 {
        self.request
    }

    pub fn approver_group(&self) -> &str {
        &self.approver_group
    }

    pub fn policies(&self) -> &[String] {
        &self.policies
    }
}

/// A request waiting for its approvers. Dropping it withdraws the approval request.
#[derive(Debug)]
pub struct HeldRequest {
    session: Session,
    approval: ApprovalRequest,
    waiter: Waiter,
    needed: Vec<ApprovalNeeded>,
}

impl HeldRequest {
    /// The approval id, e.g. `7KQM-X2PD-9HWT`.
    pub fn id(&self) -> &str {
        &self.approval.id
    }

    pub fn approver_group(&self) -> &str {
        &self.approval.approver_group
    }

    pub fn approvals_required(&self) -> u32 {
        self.approval.approvals_required
    }

    pub fn expires_at(&self) -> SystemTime {
        self.approval.expires_at
    }

    /// What to tell the client while it waits.
    pub fn notice(&self) -> String {
        let count = match self.approval.approvals_required {
            1 => String::new(),
            n => format!(" ({n} approvals)"),
        };
        format!(
            "gatehouse: waiting for approval {id} by group {group}{count} until {deadline}; an approver runs: gatehouse approvals approve {id}",
            id = self.approval.id,
            group = self.approval.approver_group,
            deadline = crate::format_time(self.approval.expires_at),
        )
    }

    /// Waits for the approvers. Approved: permits for exactly the held requests, spent at
    /// once. Denied, expired or withdrawn: a refusal with the reason. A policy reload while
    /// waiting decides again: a request policy now allows goes ahead without approval, one
    /// it now denies is refused. The session's expiry ends the wait too.
    pub async fn wait(self) -> Result<Vec<Permit>, Refusal> {
        self.wait_or_cancel(std::future::pending()).await
    }

    /// Like [`HeldRequest::wait`], but when `cancel` resolves first (the client cancelled
    /// the request) the approval request is withdrawn and the request refused.
    pub async fn wait_or_cancel(self, cancel: impl Future<Output = ()>) -> Result<Vec<Permit>, Refusal> {
        let HeldRequest {
            session,
            approval,
            waiter,
            needed,
        } = self;
        let gateway = Arc::clone(&session.inner.gateway);
        let broker = gateway.approvals();
        let mut generation = needed.iter().map(|n| n.generation).min().unwrap_or(0);
        let outcome = waiter.wait();
        tokio::pin!(outcome);
        tokio::pin!(cancel);
        let mut tick = tokio::time::interval(HOLD_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            tokio::select! {
                outcome = &mut outcome => break outcome,
                () = &mut cancel => {
                    let reason = "the client cancelled the request";
                    if let Err(error) = broker.withdraw(&approval.id, reason).await {
                        tracing::error!(approval = %approval.id, %error, "Could not withdraw an approval request.");
                    }
                    return Err(held_refusal(
                        RefusalKind::Denied,
                        format!("gatehouse: approval {} withdrawn: {reason}", approval.id),
                        &needed,
                    ));
                }
                _ = tick.tick() => {}
            }
            if session.time_left().is_zero() {
                let reason = "the requester's session expired while waiting";
                let _ = broker.withdraw(&approval.id, reason).await;
                return Err(held_refusal(
                    RefusalKind::Expired,
                    format!(
                        "gatehouse: approval {} withdrawn: {reason}; connect again with a fresh token",
                        approval.id
                    ),
                    &needed,
                ));
            }
            let current = gateway.policy().generation();
            if current == generation {
                continue;
            }
            generation = current;
            if let Some(result) = session.redecide(&approval, &needed).await {
                return result;
            }
        };
        match outcome {
            Outcome::Approved { approvers } => {
                let session_id = session.id();
                if let Err(error) = broker.consume(&approval.id, session_id, &approval.request_sha256).await {
                    tracing::error!(session = %session_id, approval = %approval.id, %error, "An approved request could not be released.");
                    return Err(held_refusal(
                        RefusalKind::Unavailable,
                        format!("gatehouse: approval {} could not be used: {error}", approval.id),
                        &needed,
                    ));
                }
                let names: Vec<String> = approvers.iter().map(actor_name).collect();
                tracing::info!(session = %session_id, approval = %approval.id, approvers = ?names, "Approved request released.");
                Ok(needed
                    .into_iter()
                    .map(|n| Permit {
                        request: n.request,
                        policies: n.policies,
                    })
                    .collect())
            }
            Outcome::Denied { approver, reason } => Err(held_refusal(
                RefusalKind::Denied,
                format!(
                    "gatehouse: approval {} denied by {}: {reason}",
                    approval.id,
                    actor_name(&approver)
                ),
                &needed,
            )),
            Outcome::Expired => Err(held_refusal(
                RefusalKind::Denied,
                format!(
                    "gatehouse: approval {} expired: nobody in group {} approved it in time",
                    approval.id, approval.approver_group
                ),
                &needed,
            )),
            Outcome::Withdrawn { reason } => Err(held_refusal(
                RefusalKind::Denied,
                format!("gatehouse: approval {} withdrawn: {reason}", approval.id),
                &needed,
            )),
        }
    }
}

/// What the target did with one forwarded request (a statement), for
/// [`Session::record_completion`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// The request number its decision was recorded under.
    pub request: u64,
    /// From forwarding to the target's answer.
    pub duration: Duration,
    /// The target's command tag (`SELECT 3`, `UPDATE 5`, ...).
    pub command_tag: Option<String>,
    /// Rows returned or affected.
    pub rows: Option<u64>,
    /// The target's error, already scrubbed.
    pub error: Option<TargetFailure>,
    /// Parameters it ran with, already masked.
    pub parameters: Vec<Option<String>>,
    /// It stopped at the client's row limit and may continue.
    pub suspended: bool,
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
    /// The session's principal and resource as Cedar entities, built once.
    entities: EntityCache,
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
                entities: EntityCache::default(),
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

    /// The enforcement path for a frontend that cannot hold a request: like
    /// [`Session::decide`], with a request that needs approval refused (and saying so).
    pub async fn authorize(&self, action: &str, attributes: serde_json::Value) -> Result<Permit, Refusal> {
        match self.decide(action, attributes).await? {
            Verdict::Permit(permit) => Ok(permit),
            Verdict::NeedsApproval(needed) => Err(Refusal {
                kind: RefusalKind::ApprovalRequired {
                    approver_group: needed.approver_group.clone(),
                },
                message: format!(
                    "gatehouse: {} needs approval by group {} (policy {}), and this kind of request cannot be held for approval; it is refused",
                    needed.action,
                    needed.approver_group,
                    needed.policies.join(", ")
                ),
                policies: needed.policies,
                request: Some(needed.request),
            }),
        }
    }

    /// The enforcement path. `action` is the action's name in the protocol's namespace
    /// (`read`, `exec`, `get`, ...), `attributes` its Cedar context (a JSON object). The
    /// decision is written to the audit log before anything is returned; if it cannot be
    /// written, the request is refused. A request that needs approval comes back as
    /// [`Verdict::NeedsApproval`]: hand it (with others of the same batch) to
    /// [`Session::hold`] to ask the approvers.
    pub async fn decide(&self, action: &str, attributes: serde_json::Value) -> Result<Verdict, Refusal> {
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
        let generation = inner.gateway.policy().generation();
        let (decision, context) = self.evaluate(action, context);
        let (outcome, policies, reason) = match &decision {
            Decision::Allow { policies } => ("allow", policies.clone(), None),
            Decision::Deny { policies, reason } => ("deny", policies.clone(), Some(reason.clone())),
            Decision::NeedsApproval { policies, .. } => ("needs_approval", policies.clone(), Some(describe(&decision))),
        };
        metrics.decision(outcome);
        // The context goes into the record; only a held request needs it again.
        let held_context = matches!(decision, Decision::NeedsApproval { .. }).then(|| context.clone());
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
            Decision::Allow { policies } => Ok(Verdict::Permit(Permit { request, policies })),
            Decision::Deny { policies, reason } => Err(denied(action, &reason, policies, request)),
            Decision::NeedsApproval {
                policies,
                approver_group,
                approvals_required,
                timeout,
            } => Ok(Verdict::NeedsApproval(ApprovalNeeded {
                request,
                action: action.to_owned(),
                context: held_context.unwrap_or_default(),
                policies,
                approver_group,
                approvals_required,
                timeout,
                generation,
            })),
        }
    }

    /// Asks the approvers about requests that [`Session::decide`] said need approval: all
    /// of them together, as one request shown to the approvers as `shown` (already masked)
    /// and bound to the SHA-256 of `exact`. The frontend tells its client what
    /// [`HeldRequest::notice`] says, then waits with [`HeldRequest::wait`]; dropping the
    /// held request (the client went away) withdraws it.
    pub async fn hold(&self, needed: Vec<ApprovalNeeded>, shown: &str, exact: &[u8]) -> Result<HeldRequest, Refusal> {
        let Some(first) = needed.first() else {
            return Err(Refusal::new(RefusalKind::Unavailable, "nothing to hold for approval"));
        };
        let request_number = first.request;
        if let Some(other) = needed.iter().find(|n| n.approver_group != first.approver_group) {
            return Err(Refusal {
                kind: RefusalKind::Denied,
                message: format!(
                    "gatehouse: the statements of this request need approval by different groups ({} and {}); send them separately",
                    first.approver_group, other.approver_group
                ),
                policies: needed.iter().flat_map(|n| n.policies.clone()).collect(),
                request: Some(request_number),
            });
        }
        // Several held parts: the strictest terms of any of them.
        let approvals_required = needed.iter().map(|n| n.approvals_required).max().unwrap_or(1);
        let timeout = needed.iter().filter_map(|n| n.timeout).min();
        let sha256 = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, exact));
        let action = needed.iter().map(|n| n.action.as_str()).collect::<Vec<_>>();
        let action = if action.iter().all(|a| *a == action[0]) {
            action[0].to_owned()
        } else {
            action.join("+")
        };
        let inner = &self.inner;
        let approver_group = first.approver_group.clone();
        let broker = inner.gateway.approvals();
        let held = broker
            .request(NewApproval {
                requester: &inner.identity,
                session: &inner.id,
                request_number,
                resource: inner.target.resource(),
                protocol: self.protocol(),
                action: &action,
                request: shown,
                request_sha256: &sha256,
                approver_group: &approver_group,
                approvals_required,
                timeout,
            })
            .await;
        match held {
            Ok((approval, waiter)) => {
                tracing::info!(
                    session = %inner.id,
                    approval = %approval.id,
                    approver_group = %approval.approver_group,
                    user = inner.identity.display_name(),
                    "Request held for approval."
                );
                Ok(HeldRequest {
                    session: self.clone(),
                    approval,
                    waiter,
                    needed,
                })
            }
            Err(error) => {
                tracing::error!(session = %inner.id, %error, "Could not hold a request for approval.");
                Err(Refusal {
                    kind: RefusalKind::Unavailable,
                    message: "the gateway cannot record approval requests right now; the request is refused".into(),
                    policies: needed.iter().flat_map(|n| n.policies.clone()).collect(),
                    request: Some(request_number),
                })
            }
        }
    }

    /// After a policy reload, decides the held requests again. `None`: they still need
    /// approval, keep waiting. Otherwise the approval request is withdrawn and this is the
    /// answer.
    async fn redecide(
        &self,
        approval: &ApprovalRequest,
        needed: &[ApprovalNeeded],
    ) -> Option<Result<Vec<Permit>, Refusal>> {
        let decisions: Vec<Decision> = needed
            .iter()
            .map(|n| self.evaluate(&n.action, n.context.clone()).0)
            .collect();
        let denied_by = needed.iter().zip(&decisions).find_map(|(n, d)| match d {
            Decision::Deny { policies, reason } => Some((n, policies.clone(), reason.clone())),
            _ => None,
        });
        let all_allowed = decisions.iter().all(Decision::is_allow);
        if denied_by.is_none() && !all_allowed {
            return None;
        }
        let reason = if all_allowed {
            "policy changed while waiting and no longer requires approval"
        } else {
            "policy changed while waiting and now denies the request"
        };
        if let Err(error) = self.inner.gateway.approvals().withdraw(&approval.id, reason).await {
            tracing::error!(approval = %approval.id, %error, "Could not withdraw an approval request.");
        }
        for (n, decision) in needed.iter().zip(&decisions) {
            let outcome = if decision.is_allow() { "allow" } else { "deny" };
            let record = AuditEvent::RequestDecided {
                session: self.inner.id.clone(),
                request: n.request,
                action: format!("{}::{}", self.protocol().namespace_name(), n.action),
                attributes: n.context.clone(),
                decision: outcome.into(),
                policies: decision.policies().to_vec(),
                reason: Some(format!("decided again after a policy reload: {}", describe(decision))),
            };
            if let Err(error) = self.inner.gateway.audit().append(record).await {
                tracing::error!(session = %self.inner.id, %error, "Audit write failed; refusing the request.");
                return Some(Err(held_refusal(
                    RefusalKind::Unavailable,
                    "the gateway cannot write its audit log and refuses requests until it can".into(),
                    needed,
                )));
            }
        }
        if let Some((n, policies, reason)) = denied_by {
            return Some(Err(denied(&n.action, &reason, policies, n.request)));
        }
        tracing::info!(session = %self.inner.id, approval = %approval.id, "Policy reload released a held request.");
        Some(Ok(needed
            .iter()
            .zip(decisions)
            .map(|(n, d)| Permit {
                request: n.request,
                policies: d.policies().to_vec(),
            })
            .collect()))
    }

    /// Policy's answer for `action` in this session, without recording it; hands the
    /// context back.
    fn evaluate(&self, action: &str, context: serde_json::Value) -> (Decision, serde_json::Value) {
        let request = AuthzRequest {
            principal: &self.inner.identity,
            namespace: self.protocol().namespace(),
            action,
            resource: self.inner.target.resource(),
            context,
        };
        let decision = self
            .inner
            .gateway
            .policy()
            .authorize_cached(&request, &self.inner.entities);
        (decision, request.context)
    }

    /// The masker for this session: policy decides once per data class whether this identity
    /// may see it unmasked (`Gatehouse::Action::"unmask"`); anything but an allow masks.
    pub async fn masker(&self) -> &Masker {
        self.inner
            .masker
            .get_or_init(|| async {
                let inner = &self.inner;
                let masked = DataClass::ALL.into_iter().filter(|class| {
                    let decision = inner.gateway.policy().authorize_cached(
                        &AuthzRequest {
                            principal: &inner.identity,
                            namespace: Namespace::Gatehouse,
                            action: "unmask",
                            resource: inner.target.resource(),
                            context: serde_json::json!({ "data_class": class.as_str() }),
                        },
                        &inner.entities,
                    );
                    !matches!(decision, Decision::Allow { .. })
                });
                Masker::new(masked.collect::<Vec<_>>())
            })
            .await
    }

    /// False once the audit log cannot be written: requests must not go on unrecorded,
    /// including ones decided earlier (an execution of a prepared statement).
    pub fn recording(&self) -> bool {
        self.inner.gateway.audit().healthy()
    }

    /// Records how many values of each class were masked in one request's response.
    pub fn record_masking(&self, request: u64, counts: &MaskCounts) {
        if counts.is_empty() {
            return;
        }
        let event = AuditEvent::MaskingApplied {
            session: self.inner.id.clone(),
            request,
            counts: counts.to_map(),
        };
        if let Err(error) = self.inner.gateway.audit().submit(event) {
            tracing::error!(session = %self.inner.id, %error, "Audit write of masking counts failed.");
        }
    }

    /// Records what the target answered to one forwarded request, with the masking counts
    /// of that answer, without waiting for the log: the data path never waits for these
    /// records. They take their place in the chain at once, after this session's earlier
    /// records, and are written with the next decision or within the group-commit delay.
    pub fn record_completion(&self, completion: Completion, masked: &MaskCounts) {
        let event = AuditEvent::StatementCompleted {
            session: self.inner.id.clone(),
            request: completion.request,
            duration_us: u64::try_from(completion.duration.as_micros()).unwrap_or(u64::MAX),
            command_tag: completion.command_tag,
            rows: completion.rows,
            error: completion.error,
            parameters: completion.parameters,
            masked: if masked.is_empty() {
                Default::default()
            } else {
                masked.to_map()
            },
            suspended: completion.suspended,
        };
        if let Err(error) = self.inner.gateway.audit().submit(event) {
            tracing::error!(session = %self.inner.id, %error, "Audit write of a statement's completion failed.");
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

/// The refusal of a request that policy denied.
fn denied(action: &str, reason: &str, policies: Vec<String>, request: u64) -> Refusal {
    // The reason usually names its policy already ("forbidden by policy \"x\"").
    let named = if policies.is_empty() || policies.iter().all(|p| reason.contains(p.as_str())) {
        String::new()
    } else {
        format!(" (policy {})", policies.join(", "))
    };
    Refusal {
        kind: RefusalKind::Denied,
        message: format!("gatehouse: {action} refused: {reason}{named}"),
        policies,
        request: Some(request),
    }
}

fn held_refusal(kind: RefusalKind, message: String, needed: &[ApprovalNeeded]) -> Refusal {
    Refusal {
        kind,
        message,
        policies: needed.iter().flat_map(|n| n.policies.iter().cloned()).collect(),
        request: needed.first().map(|n| n.request),
    }
}

fn actor_name(actor: &gatehouse_audit::Actor) -> String {
    actor.email.clone().unwrap_or_else(|| actor.subject.clone())
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
