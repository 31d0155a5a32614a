//! The gateway's shared state and the entry of every connection: authenticate the caller's
//! token or credential, then open a session on a target once policy allows `connect`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gatehouse_audit::{Actor, AuditEvent, AuditLog};
use gatehouse_identity::{Identity, Verifier};
use gatehouse_policy::{AuthzRequest, Decision, Namespace, PolicyEngine, Resource, ResourceKind};
use serde::{Deserialize, Serialize};

use crate::approvals::{ApprovalBroker, SqliteApprovalStore};
use crate::credentials::{CREDENTIAL_PREFIX, CredentialStore, IssuedCredential};
use crate::error::{CoreError, Refusal, RefusalKind};
use crate::metrics::Metrics;
use crate::session::Session;
use crate::throttle::Throttle;

/// The protocol a frontend speaks. Each has its own Cedar action namespace and resource type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Postgres,
    Ssh,
    Kube,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Ssh => "ssh",
            Protocol::Kube => "kube",
        }
    }

    pub fn namespace(self) -> Namespace {
        match self {
            Protocol::Postgres => Namespace::Postgres,
            Protocol::Ssh => Namespace::Ssh,
            Protocol::Kube => Namespace::Kube,
        }
    }

    pub fn resource_kind(self) -> ResourceKind {
        match self {
            Protocol::Postgres => ResourceKind::Database,
            Protocol::Ssh => ResourceKind::Host,
            Protocol::Kube => ResourceKind::Cluster,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "postgres" => Some(Protocol::Postgres),
            "ssh" => Some(Protocol::Ssh),
            "kube" => Some(Protocol::Kube),
            _ => None,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A target as policy sees it: its unique name, protocol and labels.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub protocol: Protocol,
    pub(crate) resource: Resource,
}

impl Target {
    pub fn new(name: impl Into<String>, protocol: Protocol, labels: BTreeMap<String, String>) -> Self {
        let name = name.into();
        let resource = Resource {
            kind: protocol.resource_kind(),
            name: name.clone(),
            labels,
        };
        Self {
            name,
            protocol,
            resource,
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.resource.labels
    }

    pub fn resource(&self) -> &Resource {
        &self.resource
    }
}

/// What the binary assembles from config before anything listens.
pub struct GatewayParts {
    pub state_dir: PathBuf,
    pub verifier: Verifier,
    pub policy: Arc<PolicyEngine>,
    pub audit: AuditLog,
    pub targets: Vec<Target>,
    /// Sessions end at the identity's expiry or after this long, whichever comes first.
    pub max_session_lifetime: Option<Duration>,
    /// How long a held request waits when its policy names no timeout.
    pub approval_timeout: Duration,
    /// Told about approval requests as they are created and decided (webhooks).
    pub approval_listener: Option<Arc<dyn crate::approvals::ApprovalListener>>,
}

/// The shared state every frontend holds an `Arc` of.
pub struct Gateway {
    verifier: Verifier,
    policy: Arc<PolicyEngine>,
    audit: AuditLog,
    credentials: CredentialStore,
    approvals: ApprovalBroker,
    targets: HashMap<String, Target>,
    metrics: Metrics,
    throttle: Throttle,
    max_session_lifetime: Option<Duration>,
}

impl Gateway {
    pub fn new(parts: GatewayParts) -> Result<Arc<Self>, CoreError> {
        let mut targets = HashMap::new();
        for target in parts.targets {
            if let Some(other) = targets.insert(target.name.clone(), target) {
                return Err(CoreError::Invalid(format!(
                    "target name {:?} is used twice; target names are unique across protocols",
                    other.name
                )));
            }
        }
        std::fs::create_dir_all(&parts.state_dir)
            .map_err(|e| CoreError::Invalid(format!("cannot create {}: {e}", parts.state_dir.display())))?;
        let db = parts.state_dir.join("gatehouse.db");
        let credentials = CredentialStore::open(&db)?;
        let store = SqliteApprovalStore::open(&db).map_err(|e| CoreError::Invalid(e.to_string()))?;
        let mut approvals = ApprovalBroker::new(Arc::new(store), Arc::clone(&parts.policy), parts.audit.clone())
            .with_default_timeout(parts.approval_timeout);
        if let Some(listener) = parts.approval_listener {
            approvals = approvals.with_listener(listener);
        }
        Ok(Arc::new(Self {
            verifier: parts.verifier,
            policy: parts.policy,
            audit: parts.audit,
            credentials,
            approvals,
            targets,
            metrics: Metrics::default(),
            throttle: Throttle::default(),
            max_session_lifetime: parts.max_session_lifetime,
        }))
    }

    pub fn policy(&self) -> &PolicyEngine {
        &self.policy
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The approval broker: held requests, approvers' decisions.
    pub fn approvals(&self) -> &ApprovalBroker {
        &self.approvals
    }

    pub fn credentials(&self) -> &CredentialStore {
        &self.credentials
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.get(name)
    }

    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }

    pub(crate) fn max_session_lifetime(&self) -> Option<Duration> {
        self.max_session_lifetime
    }

    /// Problems that make the gateway not ready: it refuses requests while any exists.
    pub fn readiness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.audit.healthy() {
            let why = self.audit.last_error().unwrap_or_else(|| "unknown error".into());
            problems.push(format!("audit log cannot be written: {why}"));
        }
        if let Some(err) = self.policy.last_reload_error() {
            problems.push(format!("policy reload failed, the previous set stays in force: {err}"));
        }
        problems
    }

    /// Validates an OIDC token directly (the admin API's callers), without a target.
    pub async fn verify_token(&self, token: &str) -> Result<Identity, gatehouse_identity::IdentityError> {
        self.verifier.verify(token).await
    }

    /// Who presents `secret` (an OIDC token or a `ghc_` credential), for `protocol`/`target`.
    /// Every failure is audited and slowed down per client address; the client learns only
    /// "access denied".
    pub async fn authenticate(
        &self,
        secret: &str,
        protocol: Protocol,
        target: &str,
        client: SocketAddr,
    ) -> Result<Identity, Refusal> {
        let outcome = if secret.starts_with(CREDENTIAL_PREFIX) {
            self.credentials
                .lookup(secret, protocol, target, SystemTime::now())
                .map_err(|e| format!("credential rejected: {e}"))
        } else {
            self.verifier
                .verify(secret)
                .await
                .map_err(|e| format!("token rejected: {e}"))
        };
        match outcome {
            Ok(identity) => {
                self.throttle.success(client.ip());
                Ok(identity)
            }
            Err(reason) => {
                self.metrics.auth_failure();
                let delay = self.throttle.failure(client.ip());
                tracing::info!(protocol = %protocol, target, client = %client, %reason, "Authentication failed.");
                // Best effort: a failed login is not a request that reaches a target, so an
                // audit write failure here must not hide the refusal itself.
                let _ = self
                    .audit
                    .append(AuditEvent::AuthenticationFailed {
                        protocol: protocol.as_str().into(),
                        target: target.into(),
                        client_addr: client.to_string(),
                        reason,
                    })
                    .await;
                tokio::time::sleep(delay).await;
                Err(Refusal::access_denied())
            }
        }
    }

    /// Opens a session once Cedar allows `connect` on the target. An unknown target and a
    /// denied connect refuse alike.
    pub async fn open_session(
        self: &Arc<Self>,
        identity: Identity,
        protocol: Protocol,
        target: &str,
        client: SocketAddr,
    ) -> Result<Session, Refusal> {
        let Some(target) = self.targets.get(target).filter(|t| t.protocol == protocol) else {
            tracing::info!(protocol = %protocol, target, user = identity.display_name(), "Connect to an unknown target refused.");
            self.metrics.decision("deny");
            return Err(Refusal::access_denied());
        };
        if !self.audit.healthy() {
            return Err(Refusal::new(
                RefusalKind::Unavailable,
                "the gateway cannot write its audit log and refuses new sessions",
            ));
        }
        let context = connect_context(&identity, client);
        let decision = self.policy.authorize(&AuthzRequest {
            principal: &identity,
            namespace: protocol.namespace(),
            action: "connect",
            resource: &target.resource,
            context,
        });
        let Decision::Allow { policies } = decision else {
            self.metrics.decision("deny");
            tracing::info!(protocol = %protocol, target = %target.name, user = identity.display_name(), ?decision, "Connect refused by policy.");
            let _ = self
                .audit
                .append(AuditEvent::AuthenticationFailed {
                    protocol: protocol.as_str().into(),
                    target: target.name.clone(),
                    client_addr: client.to_string(),
                    reason: format!(
                        "connect not permitted for {}: {}",
                        identity.display_name(),
                        describe(&decision)
                    ),
                })
                .await;
            return Err(Refusal::access_denied());
        };
        self.metrics.decision("allow");
        let session = Session::start(Arc::clone(self), identity, target.clone(), client);
        self.audit
            .append(AuditEvent::SessionStarted {
                session: session.id().into(),
                actor: Actor::from(session.identity()),
                protocol: protocol.as_str().into(),
                target: target.name.clone(),
                client_addr: client.to_string(),
                policies,
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "Audit write failed; refusing the session.");
                Refusal::new(
                    RefusalKind::Unavailable,
                    "the gateway cannot write its audit log and refuses new sessions",
                )
            })?;
        self.metrics.session_opened(protocol);
        Ok(session)
    }

    /// Authenticate and open in one step: what a frontend does at login.
    pub async fn connect(
        self: &Arc<Self>,
        secret: &str,
        protocol: Protocol,
        target: &str,
        client: SocketAddr,
    ) -> Result<Session, Refusal> {
        let identity = self.authenticate(secret, protocol, target, client).await?;
        self.open_session(identity, protocol, target, client).await
    }

    /// Issues a `ghc_` credential for `identity` on `target`, expiring no later than the
    /// identity itself; refused when policy does not let this identity connect there.
    pub async fn issue_credential(
        &self,
        identity: &Identity,
        target: &str,
        ttl: Option<Duration>,
        client: SocketAddr,
    ) -> Result<IssuedCredential, Refusal> {
        let target = self.check_connect(identity, target, client)?;
        let now = SystemTime::now();
        let mut expires = identity.expires_at;
        if let Some(ttl) = ttl {
            expires = expires.min(now + ttl);
        }
        if expires <= now {
            return Err(Refusal::new(RefusalKind::Expired, "the token has expired"));
        }
        let issued = self
            .credentials
            .issue(identity, target.protocol, &target.name, now, expires)
            .map_err(|e| {
                tracing::error!(error = %e, "Credential store failed.");
                Refusal::new(RefusalKind::Unavailable, "the credential store failed")
            })?;
        self.audit
            .append(AuditEvent::CredentialIssued {
                credential_id: issued.info.id.clone(),
                actor: Actor::from(identity),
                protocol: target.protocol.as_str().into(),
                target: target.name.clone(),
                expires_at: crate::format_time(expires),
            })
            .await
            .map_err(|_| Refusal::new(RefusalKind::Unavailable, "the gateway cannot write its audit log"))?;
        Ok(issued)
    }

    /// Whether policy lets `identity` connect to `target` from `client`, for issuing
    /// something that opens sessions later (a credential, an SSH certificate). Not audited:
    /// the issue is.
    pub fn check_connect(&self, identity: &Identity, target: &str, client: SocketAddr) -> Result<&Target, Refusal> {
        let Some(target) = self.targets.get(target) else {
            return Err(Refusal::new(RefusalKind::Denied, format!("no target named {target:?}")));
        };
        let decision = self.policy.authorize(&AuthzRequest {
            principal: identity,
            namespace: target.protocol.namespace(),
            action: "connect",
            resource: &target.resource,
            context: connect_context(identity, client),
        });
        if !matches!(decision, Decision::Allow { .. }) {
            return Err(Refusal::new(
                RefusalKind::Denied,
                format!(
                    "policy does not let {} connect to {}: {}",
                    identity.display_name(),
                    target.name,
                    describe(&decision)
                ),
            ));
        }
        Ok(target)
    }

    /// Revokes one of `identity`'s own credentials.
    pub async fn revoke_credential(&self, identity: &Identity, id: &str) -> Result<(), Refusal> {
        match self.credentials.revoke(identity, id, SystemTime::now()) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Refusal::new(
                    RefusalKind::Denied,
                    format!("no active credential {id} of yours"),
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "Credential store failed.");
                return Err(Refusal::new(RefusalKind::Unavailable, "the credential store failed"));
            }
        }
        self.audit
            .append(AuditEvent::CredentialRevoked {
                credential_id: id.into(),
                by: Actor::from(identity),
            })
            .await
            .map_err(|_| Refusal::new(RefusalKind::Unavailable, "the gateway cannot write its audit log"))?;
        Ok(())
    }
}

fn connect_context(identity: &Identity, client: SocketAddr) -> serde_json::Value {
    let mut context = serde_json::json!({ "client_address": client.ip().to_string() });
    if let Some(owner) = &identity.owner {
        context["owner"] = owner.clone().into();
    }
    context
}

/// A one-line account of a non-allow decision for logs and messages.
pub(crate) fn describe(decision: &Decision) -> String {
    match decision {
        Decision::Allow { policies } => format!("allowed by {}", policies.join(", ")),
        Decision::Deny { policies, reason } if policies.is_empty() => reason.clone(),
        Decision::Deny { policies, reason } => format!("{reason} ({})", policies.join(", ")),
        Decision::NeedsApproval {
            approver_group,
            policies,
            ..
        } => {
            format!("needs approval by group {approver_group} ({})", policies.join(", "))
        }
    }
}
