//! Four-eyes approval of one live request: the broker that holds a request policy marked
//! `NeedsApproval` until other people approve exactly that request, and the store that keeps
//! pending requests and their history across restarts. Segregation of duties is enforced
//! here, in code, whatever the policies say.

mod store;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use gatehouse_audit::{Actor, AuditError, AuditEvent, AuditLog};
use gatehouse_identity::{Identity, PrincipalKind};
use gatehouse_policy::{AuthzRequest, Decision, Namespace, PolicyEngine, Resource, ResourceKind};
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::gateway::Protocol;

pub use store::SqliteApprovalStore;

/// How long a request waits for its approvers when neither the policy nor the caller says.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Symbols of approval ids: no 0/O, 1/l/I, so an id survives being read aloud or retyped.
/// 32 symbols, 5 bits each.
const ID_ALPHABET: &[u8; 32] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";

/// Where an approval request is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
    Expired,
    Withdrawn,
    Executed,
}

/// One approver's decision on a request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Vote {
    pub approver: Actor,
    /// True for an approval, false for a denial.
    pub approved: bool,
    pub reason: Option<String>,
    #[serde(serialize_with = "serialize_time")]
    pub at: SystemTime,
}

/// A request held for approval, as approvers and the store see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApprovalRequest {
    /// Short and unguessable, e.g. `7KQM-X2PD-9HWT`.
    pub id: String,
    pub requester: Identity,
    pub session: String,
    /// The request number within the session.
    pub request_number: u64,
    /// The target's name.
    pub target: String,
    pub target_kind: ResourceKind,
    pub target_labels: BTreeMap<String, String>,
    pub protocol: Protocol,
    /// `<Namespace>::<action>`, e.g. `Postgres::write`.
    pub action: String,
    /// The request as approvers see it, already masked by the caller.
    pub request: String,
    /// Hex SHA-256 of the exact request; an approval releases only this request.
    pub request_sha256: String,
    pub approver_group: String,
    pub approvals_required: u32,
    #[serde(serialize_with = "serialize_time")]
    pub created_at: SystemTime,
    #[serde(serialize_with = "serialize_time")]
    pub expires_at: SystemTime,
    pub state: ApprovalState,
    pub votes: Vec<Vote>,
}

/// What the enforcement path knows when it asks for an approval.
#[derive(Clone, Debug)]
pub struct NewApproval<'a> {
    pub requester: &'a Identity,
    pub session: &'a str,
    pub request_number: u64,
    /// The target as policy sees it; approvers are checked against it.
    pub resource: &'a Resource,
    pub protocol: Protocol,
    /// The action within the protocol's namespace, e.g. `write`.
    pub action: &'a str,
    /// The request text with sensitive values already masked.
    pub request: &'a str,
    /// Hex SHA-256 of the exact, unmasked request.
    pub request_sha256: &'a str,
    pub approver_group: &'a str,
    pub approvals_required: u32,
    /// `None`: the broker's default.
    pub timeout: Option<Duration>,
}

/// How a wait for approval ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Quorum reached; the request may run once, via [`ApprovalBroker::consume`].
    Approved {
        approvers: Vec<Actor>,
    },
    Denied {
        approver: Actor,
        reason: String,
    },
    Expired,
    Withdrawn {
        reason: String,
    },
}

/// Why an approval operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("you cannot approve or deny your own request")]
    OwnRequest,
    #[error("agents cannot approve or deny requests; approval is a human decision")]
    AgentCannotApprove,
    #[error("you own the agent that made this request, so you cannot approve or deny it")]
    OwnerOfAgent,
    #[error("you are not in the approver group {0}")]
    NotInApproverGroup(String),
    #[error("policy does not permit you to approve requests on this target{}", named(.0))]
    NotPermittedByPolicy(Vec<String>),
    #[error("the request is already {0}")]
    AlreadyDecided(ApprovalState),
    #[error("the request has expired")]
    Expired,
    #[error("no approval request with this id")]
    NotFound,
    #[error("you have already voted on this request")]
    AlreadyVoted,
    #[error("this approval is for another session or another request")]
    NotBound,
    #[error("the approval store failed: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("a stored approval is unreadable: {0}")]
    Corrupt(String),
    #[error("the audit log failed: {0}")]
    Audit(#[from] AuditError),
}

/// The storage behind the broker; small so that a shared (PostgreSQL) store can follow.
pub trait ApprovalStore: Send + Sync {
    fn insert(&self, request: &ApprovalRequest) -> Result<(), ApprovalError>;
    /// The request with its votes.
    fn get(&self, id: &str) -> Result<Option<ApprovalRequest>, ApprovalError>;
    /// Requests in `state` (all when `None`), oldest first.
    fn list(&self, state: Option<ApprovalState>) -> Result<Vec<ApprovalRequest>, ApprovalError>;
    /// False when this approver (issuer + subject) already voted on the request.
    fn record_vote(&self, id: &str, vote: &Vote) -> Result<bool, ApprovalError>;
    /// Moves the request from `from` to `to`; false when it was not in `from`, so that
    /// exactly one of several racing transitions wins.
    fn set_state(&self, id: &str, from: ApprovalState, to: ApprovalState) -> Result<bool, ApprovalError>;
}

/// Told about each request when it is created and when it is decided (approved, denied,
/// expired, withdrawn), e.g. to post webhooks. Called on the broker's path: an
/// implementation must hand slow work (network) to a task of its own and return at once.
pub trait ApprovalListener: Send + Sync {
    /// `request.state` is the state it just entered.
    fn notify(&self, request: &ApprovalRequest);
}

/// What a waiting enforcement path holds. Dropping it withdraws a pending request:
/// the client is gone.
pub struct Waiter {
    id: String,
    rx: watch::Receiver<Option<Outcome>>,
}

/// A pending request's live half: how decisions reach its waiter.
struct Live {
    tx: watch::Sender<Option<Outcome>>,
    done: Notify,
}

/// Holds requests for approval, checks approvers, and releases each approved request once.
pub struct ApprovalBroker {
    shared: Arc<Shared>,
    policy: Arc<PolicyEngine>,
    default_timeout: Duration,
}

/// What the broker shares with its expiry tasks.
struct Shared {
    store: Arc<dyn ApprovalStore>,
    audit: AuditLog,
    live: Mutex<HashMap<String, Arc<Live>>>,
    listener: Option<Arc<dyn ApprovalListener>>,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Withdrawn => "withdrawn",
            Self::Executed => "executed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "denied" => Self::Denied,
            "expired" => Self::Expired,
            "withdrawn" => Self::Withdrawn,
            "executed" => Self::Executed,
            _ => return None,
        })
    }
}

impl fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Waiter {
    /// The approval id to tell the client and the approvers.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits until the request is decided, expires or is withdrawn.
    pub async fn wait(mut self) -> Outcome {
        match self.rx.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(Outcome::Expired),
            // The broker dropped the request's live half without an outcome: it went away.
            Err(_) => Outcome::Withdrawn {
                reason: "the approval broker shut down".into(),
            },
        }
    }
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter").field("id", &self.id).finish_non_exhaustive()
    }
}

impl ApprovalBroker {
    pub fn new(store: Arc<dyn ApprovalStore>, policy: Arc<PolicyEngine>, audit: AuditLog) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                audit,
                live: Mutex::new(HashMap::new()),
                listener: None,
            }),
            policy,
            default_timeout: DEFAULT_APPROVAL_TIMEOUT,
        }
    }

    /// Tells `listener` about every request created and decided.
    pub fn with_listener(mut self, listener: Arc<dyn ApprovalListener>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.listener = Some(listener);
        }
        self
    }

    /// The timeout for requests whose policy names none.
    pub fn with_default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Marks every pending request withdrawn: called once at start, before any request is
    /// made, because a request still pending then lost its waiting client with the restart.
    pub async fn mark_orphans_withdrawn(&self) -> Result<usize, ApprovalError> {
        let mut count = 0;
        for request in self.shared.store.list(Some(ApprovalState::Pending))? {
            if self.shared.live_entry(&request.id).is_some() {
                continue;
            }
            if self
                .shared
                .store
                .set_state(&request.id, ApprovalState::Pending, ApprovalState::Withdrawn)?
            {
                self.shared
                    .audit
                    .append(AuditEvent::ApprovalWithdrawn {
                        approval: request.id.clone(),
                        reason: "the gateway restarted while the client waited".into(),
                    })
                    .await?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// Holds a request for approval: stores and audits it, and starts its expiry clock.
    pub async fn request(&self, new: NewApproval<'_>) -> Result<(ApprovalRequest, Waiter), ApprovalError> {
        let created_at = SystemTime::now();
        let timeout = new.timeout.unwrap_or(self.default_timeout);
        let request = ApprovalRequest {
            id: new_id(),
            requester: new.requester.clone(),
            session: new.session.into(),
            request_number: new.request_number,
            target: new.resource.name.clone(),
            target_kind: new.resource.kind,
            target_labels: new.resource.labels.clone(),
            protocol: new.protocol,
            action: format!("{}::{}", new.protocol.namespace().as_str(), new.action),
            request: new.request.into(),
            request_sha256: new.request_sha256.to_ascii_lowercase(),
            approver_group: new.approver_group.into(),
            approvals_required: new.approvals_required.max(1),
            created_at,
            expires_at: created_at + timeout,
            state: ApprovalState::Pending,
            votes: Vec::new(),
        };
        self.shared.store.insert(&request)?;
        let appended = self
            .shared
            .audit
            .append(AuditEvent::ApprovalRequested {
                approval: request.id.clone(),
                session: request.session.clone(),
                request: request.request_number,
                requester: Actor::from(&request.requester),
                target: request.target.clone(),
                action: request.action.clone(),
                summary: request.request.clone(),
                request_sha256: request.request_sha256.clone(),
                approver_group: request.approver_group.clone(),
                approvals_required: request.approvals_required,
                expires_at: crate::format_time(request.expires_at),
            })
            .await;
        if let Err(error) = appended {
            // Nobody can be told about an unaudited request; it must not stay approvable.
            let _ = self
                .shared
                .store
                .set_state(&request.id, ApprovalState::Pending, ApprovalState::Withdrawn);
            return Err(error.into());
        }
        let (tx, rx) = watch::channel(None);
        let live = Arc::new(Live {
            tx,
            done: Notify::new(),
        });
        self.shared
            .live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(request.id.clone(), live.clone());
        tokio::spawn(watch_request(self.shared.clone(), request.id.clone(), live, timeout));
        self.shared.tell_listener(&request.id, ApprovalState::Pending);
        let waiter = Waiter {
            id: request.id.clone(),
            rx,
        };
        Ok((request, waiter))
    }

    /// Waits for the request behind `waiter` to be decided; see [`Waiter::wait`].
    pub async fn wait(&self, waiter: Waiter) -> Outcome {
        waiter.wait().await
    }

    /// Records `approver`'s approval; the request becomes Approved once
    /// `approvals_required` distinct approvers have approved.
    pub async fn approve(
        &self,
        id: &str,
        approver: &Identity,
        reason: Option<&str>,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let request = self.decidable(id, approver, "approve").await?;
        let vote = Vote {
            approver: Actor::from(approver),
            approved: true,
            reason: reason.map(str::to_owned),
            at: SystemTime::now(),
        };
        if !self.shared.store.record_vote(id, &vote)? {
            return Err(self.refused(id, approver, "approve", ApprovalError::AlreadyVoted).await);
        }
        self.shared
            .audit
            .append(AuditEvent::ApprovalGranted {
                approval: id.into(),
                approver: vote.approver.clone(),
                reason: vote.reason.clone(),
            })
            .await?;
        let current = self.get(id)?;
        let approvers: Vec<Actor> = current
            .votes
            .iter()
            .filter(|v| v.approved)
            .map(|v| v.approver.clone())
            .collect();
        if approvers.len() >= usize::try_from(request.approvals_required).unwrap_or(usize::MAX) {
            self.shared
                .finish(id, ApprovalState::Approved, None, Outcome::Approved { approvers })
                .await?;
        }
        self.get(id)
    }

    /// Refuses the request with `reason`; one denial decides.
    pub async fn deny(&self, id: &str, approver: &Identity, reason: &str) -> Result<ApprovalRequest, ApprovalError> {
        self.decidable(id, approver, "deny").await?;
        let vote = Vote {
            approver: Actor::from(approver),
            approved: false,
            reason: Some(reason.into()),
            at: SystemTime::now(),
        };
        if !self.shared.store.record_vote(id, &vote)? {
            return Err(self.refused(id, approver, "deny", ApprovalError::AlreadyVoted).await);
        }
        let outcome = Outcome::Denied {
            approver: vote.approver.clone(),
            reason: reason.into(),
        };
        let audit = AuditEvent::ApprovalDenied {
            approval: id.into(),
            approver: vote.approver,
            reason: reason.into(),
        };
        if !self
            .shared
            .finish(id, ApprovalState::Denied, Some(audit), outcome)
            .await?
        {
            // Someone else decided between the checks and the vote.
            let state = self.get(id)?.state;
            return Err(ApprovalError::AlreadyDecided(state));
        }
        self.get(id)
    }

    /// Withdraws a pending request (its requester no longer needs it, or may no longer
    /// have it); false when it was no longer pending.
    pub async fn withdraw(&self, id: &str, reason: &str) -> Result<bool, ApprovalError> {
        let event = AuditEvent::ApprovalWithdrawn {
            approval: id.into(),
            reason: reason.into(),
        };
        let outcome = Outcome::Withdrawn { reason: reason.into() };
        self.shared
            .finish(id, ApprovalState::Withdrawn, Some(event), outcome)
            .await
    }

    pub fn get(&self, id: &str) -> Result<ApprovalRequest, ApprovalError> {
        self.shared.store.get(id)?.ok_or(ApprovalError::NotFound)
    }

    pub fn list(&self, state: Option<ApprovalState>) -> Result<Vec<ApprovalRequest>, ApprovalError> {
        self.shared.store.list(state)
    }

    /// Uses an approval: only for the session and exact request it was granted for, only
    /// once. The caller runs the request only when this returns Ok.
    pub async fn consume(
        &self,
        id: &str,
        session: &str,
        request_sha256: &str,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let request = self.get(id)?;
        if request.session != session || !request.request_sha256.eq_ignore_ascii_case(request_sha256) {
            return Err(ApprovalError::NotBound);
        }
        if request.state != ApprovalState::Approved {
            return Err(ApprovalError::AlreadyDecided(request.state));
        }
        if !self
            .shared
            .store
            .set_state(id, ApprovalState::Approved, ApprovalState::Executed)?
        {
            return Err(ApprovalError::AlreadyDecided(self.get(id)?.state));
        }
        // Executed is already stored: if the audit write fails the request does not run,
        // and the approval stays spent (fail closed).
        self.shared
            .audit
            .append(AuditEvent::ApprovalExecuted {
                approval: id.into(),
                session: session.into(),
            })
            .await?;
        self.get(id)
    }

    /// Audits a refused attempt to decide a request (best effort: the refusal stands either
    /// way) and hands the error back.
    async fn refused(&self, id: &str, approver: &Identity, attempted: &str, error: ApprovalError) -> ApprovalError {
        let event = AuditEvent::ApprovalRefused {
            approval: id.into(),
            approver: Actor::from(approver),
            attempted: attempted.into(),
            reason: error.to_string(),
        };
        if let Err(audit) = self.shared.audit.append(event).await {
            tracing::error!(approval = %id, error = %audit, "Audit write of a refused approval failed.");
        }
        error
    }

    /// The request, if `approver` may decide it now; refusals are audited.
    async fn decidable(
        &self,
        id: &str,
        approver: &Identity,
        attempted: &str,
    ) -> Result<ApprovalRequest, ApprovalError> {
        match self.check_decidable(id, approver).await {
            Ok(request) => Ok(request),
            // Unknown ids and store failures are not attempts on a request.
            Err(
                error @ (ApprovalError::NotFound
                | ApprovalError::Store(_)
                | ApprovalError::Corrupt(_)
                | ApprovalError::Audit(_)),
            ) => Err(error),
            Err(error) => Err(self.refused(id, approver, attempted, error).await),
        }
    }

    /// Segregation of duties, then policy.
    async fn check_decidable(&self, id: &str, approver: &Identity) -> Result<ApprovalRequest, ApprovalError> {
        let request = self.get(id)?;
        if request.state != ApprovalState::Pending {
            return Err(match request.state {
                ApprovalState::Expired => ApprovalError::Expired,
                state => ApprovalError::AlreadyDecided(state),
            });
        }
        if SystemTime::now() >= request.expires_at {
            // The expiry task may not have run yet (or died with a restart); decide here.
            self.shared
                .finish(
                    id,
                    ApprovalState::Expired,
                    Some(AuditEvent::ApprovalExpired { approval: id.into() }),
                    Outcome::Expired,
                )
                .await?;
            return Err(ApprovalError::Expired);
        }
        check_duties(&request, approver)?;
        let resource = Resource {
            kind: request.target_kind,
            name: request.target.clone(),
            labels: request.target_labels.clone(),
        };
        let decision = self.policy.authorize(&AuthzRequest {
            principal: approver,
            namespace: Namespace::Gatehouse,
            action: "approve",
            resource: &resource,
            context: approve_context(&request),
        });
        match decision {
            Decision::Allow { .. } => Ok(request),
            // An approval that itself needs approval would never end; treat it as refused.
            other => Err(ApprovalError::NotPermittedByPolicy(other.policies().to_vec())),
        }
    }
}

impl Shared {
    fn live_entry(&self, id: &str) -> Option<Arc<Live>> {
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(id)
            .cloned()
    }

    /// Moves a pending request to a final state, audits it and tells its waiter. False when
    /// another transition won the race.
    async fn finish(
        &self,
        id: &str,
        to: ApprovalState,
        audit: Option<AuditEvent>,
        outcome: Outcome,
    ) -> Result<bool, ApprovalError> {
        if !self.store.set_state(id, ApprovalState::Pending, to)? {
            return Ok(false);
        }
        let live = self
            .live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(id);
        let appended = match audit {
            Some(event) => self.audit.append(event).await.map(|_| ()),
            None => Ok(()),
        };
        if let Some(live) = live {
            // Tell the waiter even when the audit write failed, so it never hangs: an
            // approval still runs only after consume has audited its execution.
            live.tx.send_replace(Some(outcome));
            live.done.notify_one();
        }
        self.tell_listener(id, to);
        appended?;
        Ok(true)
    }

    /// Tells the listener about the request as it was at the transition to `state` (it may
    /// have moved on already, e.g. from approved to executed).
    fn tell_listener(&self, id: &str, state: ApprovalState) {
        let Some(listener) = &self.listener else {
            return;
        };
        match self.store.get(id) {
            Ok(Some(mut request)) => {
                request.state = state;
                listener.notify(&request);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(approval = %id, %error, "Could not read an approval request to notify about it.")
            }
        }
    }
}

/// Expires a pending request at its deadline, or withdraws it when its waiter goes away.
async fn watch_request(shared: Arc<Shared>, id: String, live: Arc<Live>, timeout: Duration) {
    let (state, event, outcome) = tokio::select! {
        () = live.done.notified() => return,
        () = tokio::time::sleep(timeout) => (
            ApprovalState::Expired,
            AuditEvent::ApprovalExpired { approval: id.clone() },
            Outcome::Expired,
        ),
        () = live.tx.closed() => {
            let reason = "the client went away while waiting for approval".to_owned();
            (
                ApprovalState::Withdrawn,
                AuditEvent::ApprovalWithdrawn { approval: id.clone(), reason: reason.clone() },
                Outcome::Withdrawn { reason },
            )
        }
    };
    if let Err(error) = shared.finish(&id, state, Some(event), outcome).await {
        tracing::error!(approval = %id, %error, "Could not close an approval request.");
    }
}

/// Segregation of duties: refusals that no policy can lift.
fn check_duties(request: &ApprovalRequest, approver: &Identity) -> Result<(), ApprovalError> {
    if approver.same_person(&request.requester) {
        return Err(ApprovalError::OwnRequest);
    }
    if approver.kind == PrincipalKind::Agent {
        return Err(ApprovalError::AgentCannotApprove);
    }
    if let Some(owner) = &request.requester.owner {
        let by_subject = *owner == approver.subject;
        let by_email = approver
            .email
            .as_deref()
            .is_some_and(|email| email.eq_ignore_ascii_case(owner));
        if by_subject || by_email {
            return Err(ApprovalError::OwnerOfAgent);
        }
    }
    if !approver.groups.contains(&request.approver_group) {
        return Err(ApprovalError::NotInApproverGroup(request.approver_group.clone()));
    }
    Ok(())
}

/// The context of `Gatehouse::Action::"approve"`: who asked for what.
fn approve_context(request: &ApprovalRequest) -> serde_json::Value {
    let requester = &request.requester;
    let mut context = serde_json::json!({
        "requester_kind": requester.kind.as_str(),
        "requester_subject": requester.subject,
        "requester_groups": requester.groups,
        "protocol": request.protocol.as_str(),
        "action": request.action,
    });
    if let Some(owner) = &requester.owner {
        context["requester_owner"] = owner.clone().into();
    }
    context
}

/// Three groups of four symbols: 60 bits from the system generator.
fn new_id() -> String {
    let mut random = [0u8; 12];
    // aws-lc's generator only fails when the OS has no entropy source; nothing can run then.
    aws_lc_rs::rand::fill(&mut random).expect("system random generator");
    let mut id = String::with_capacity(14);
    for (i, byte) in random.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            id.push('-');
        }
        // 256 is a multiple of 32, so the low five bits are uniform.
        id.push(char::from(ID_ALPHABET[usize::from(byte & 31)]));
    }
    id
}

fn named(policies: &[String]) -> String {
    if policies.is_empty() {
        String::new()
    } else {
        format!(" (policy {})", policies.join(", "))
    }
}

fn serialize_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::format_time(*t))
}

#[cfg(test)]
mod tests;
