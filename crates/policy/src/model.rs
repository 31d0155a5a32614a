//! The vocabulary that frontends use to ask for a decision, free of Cedar types so
//! that `cedar-policy` stays inside this crate.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use gatehouse_identity::Identity;

/// The kind of target; each is a Cedar entity type of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ResourceKind {
    /// A PostgreSQL database: `Database::"<name>"`.
    Database,
    /// An SSH host: `Host::"<name>"`.
    Host,
    /// A Kubernetes cluster: `Cluster::"<name>"`.
    Cluster,
}

/// A target as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// Database, host or cluster.
    pub kind: ResourceKind,
    /// The target's configured name; the Cedar entity id and its `name` attribute.
    pub name: String,
    /// Configured labels (env, team, ...); Cedar entity tags.
    pub labels: BTreeMap<String, String>,
}

/// The namespace of an action; each protocol has its own because Cedar gives each
/// action exactly one context type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Namespace {
    /// `Postgres::Action::"..."`
    Postgres,
    /// `Ssh::Action::"..."`
    Ssh,
    /// `Kube::Action::"..."`
    Kube,
    /// Gateway decisions: `Gatehouse::Action::"approve"`, `Gatehouse::Action::"unmask"`.
    Gatehouse,
}

/// One question for the policy engine.
#[derive(Clone, Debug)]
pub struct AuthzRequest<'a> {
    /// Who asks.
    pub principal: &'a Identity,
    /// The protocol namespace of the action.
    pub namespace: Namespace,
    /// The action within the namespace, e.g. `"read"`.
    pub action: &'a str,
    /// The target.
    pub resource: &'a Resource,
    /// The action's context as JSON; checked against the schema (`null` means `{}`).
    pub context: serde_json::Value,
}

/// The verdict on one request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Decision {
    /// Permitted now. `policies`: the satisfied permits, sorted by id.
    Allow {
        /// Ids of the satisfied permits.
        policies: Vec<String>,
    },
    /// Refused. `policies` names the satisfied forbids, or the policies that failed to
    /// evaluate; it is empty when nothing permits the request or the request itself
    /// was malformed.
    Deny {
        /// Ids of the policies that caused the denial.
        policies: Vec<String>,
        /// A sentence for the caller and the audit log.
        reason: String,
    },
    /// Permitted once a member of `approver_group` approves. Every satisfied permit
    /// carried `@approval`; the first of them by id decides the group, count and
    /// timeout (nothing is merged from the others).
    NeedsApproval {
        /// Ids of the satisfied permits, sorted; the first one decided the terms.
        policies: Vec<String>,
        /// The group whose members may approve.
        approver_group: String,
        /// Distinct approvals needed (at least 1).
        approvals_required: u32,
        /// How long to wait for approval; `None` means the gateway's default.
        timeout: Option<Duration>,
    },
}

impl ResourceKind {
    /// The Cedar entity type name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "Database",
            Self::Host => "Host",
            Self::Cluster => "Cluster",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResourceKind {
    type Err = String;

    /// Accepts the entity type name in any case (`Database`, `database`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "database" => Ok(Self::Database),
            "host" => Ok(Self::Host),
            "cluster" => Ok(Self::Cluster),
            _ => Err(format!(
                "unknown resource kind {s:?} (expected database, host or cluster)"
            )),
        }
    }
}

impl Namespace {
    /// The Cedar namespace name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "Postgres",
            Self::Ssh => "Ssh",
            Self::Kube => "Kube",
            Self::Gatehouse => "Gatehouse",
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Namespace {
    type Err = String;

    /// Accepts the namespace name in any case (`Postgres`, `postgres`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "postgres" => Ok(Self::Postgres),
            "ssh" => Ok(Self::Ssh),
            "kube" => Ok(Self::Kube),
            "gatehouse" => Ok(Self::Gatehouse),
            _ => Err(format!(
                "unknown action namespace {s:?} (expected Postgres, Ssh, Kube or Gatehouse)"
            )),
        }
    }
}

impl Decision {
    /// The ids of the policies that decided, whatever the verdict.
    pub fn policies(&self) -> &[String] {
        match self {
            Self::Allow { policies } | Self::Deny { policies, .. } | Self::NeedsApproval { policies, .. } => policies,
        }
    }

    /// True only for `Allow`.
    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }

    /// A denial that no policy caused: malformed request, unknown action, ...
    pub(crate) fn deny_request(reason: String) -> Self {
        Self::Deny {
            policies: Vec::new(),
            reason,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allow { policies } => write!(f, "allow ({})", policies.join(", ")),
            Self::Deny { reason, .. } => write!(f, "deny: {reason}"),
            Self::NeedsApproval {
                approver_group,
                approvals_required,
                timeout,
                ..
            } => {
                write!(f, "needs approval by {approver_group} ({approvals_required} required")?;
                if let Some(timeout) = timeout {
                    write!(f, ", timeout {}", humantime::format_duration(*timeout))?;
                }
                f.write_str(")")
            }
        }
    }
}
