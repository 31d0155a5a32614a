//! What the gateway records: one typed event per thing that happened, so readers (verify,
//! the console, SIEM exports) match on variants instead of parsing format strings.

use std::collections::BTreeMap;
use std::fmt;

use gatehouse_identity::{Identity, PrincipalKind};
use serde::{Deserialize, Serialize};

/// Who did something, as recorded: the identity without its expiry or display name, and
/// never the token it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The token issuer.
    pub issuer: String,
    /// The subject, unique within the issuer.
    pub subject: String,
    /// User or agent.
    pub kind: PrincipalKind,
    /// The email claim, when present.
    pub email: Option<String>,
    /// Groups at the time of the event.
    pub groups: Vec<String>,
    /// For agents, the person responsible for them.
    pub owner: Option<String>,
}

/// One audited fact. Serialised with an `"event"` tag, e.g. `{"event":"session_ended",...}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A caller authenticated and a session to a target began.
    SessionStarted {
        /// Session id.
        session: String,
        /// Who opened it.
        actor: Actor,
        /// `postgres`, `ssh` or `kube`.
        protocol: String,
        /// Target name from the config.
        target: String,
        /// Client socket address.
        client_addr: String,
        /// Policy sets in force (ids), for later explanation.
        policies: Vec<String>,
    },
    /// A session closed.
    SessionEnded {
        /// Session id.
        session: String,
        /// Why: `client closed`, `token expired`, `target error`, ...
        reason: String,
        /// Requests decided during the session.
        requests: u64,
        /// Wall-clock length of the session.
        duration_ms: u64,
    },
    /// A caller could not be authenticated; no session exists.
    AuthenticationFailed {
        /// Protocol of the attempt.
        protocol: String,
        /// Target asked for.
        target: String,
        /// Client socket address.
        client_addr: String,
        /// Why (never the token itself).
        reason: String,
    },
    /// Policy decided one request.
    RequestDecided {
        /// Session id.
        session: String,
        /// Request number within the session, from 1.
        request: u64,
        /// The Cedar action.
        action: String,
        /// Request attributes given to policy (already masked where needed).
        attributes: serde_json::Value,
        /// `allow`, `deny` or `needs_approval`.
        decision: String,
        /// Policies that determined the decision.
        policies: Vec<String>,
        /// Explanation shown to the caller, if any.
        reason: Option<String>,
    },
    /// A request waits for a human approval.
    ApprovalRequested {
        /// Approval id.
        approval: String,
        /// Session id.
        session: String,
        /// Request number within the session.
        request: u64,
        /// Who asked.
        requester: Actor,
        /// Target name.
        target: String,
        /// The Cedar action.
        action: String,
        /// What approvers see.
        summary: String,
        /// SHA-256 of the exact request, so the executed request is the approved one.
        request_sha256: String,
        /// Group whose members may approve.
        approver_group: String,
        /// Distinct approvals needed.
        approvals_required: u32,
        /// RFC 3339 expiry.
        expires_at: String,
    },
    /// An approver approved.
    ApprovalGranted {
        /// Approval id.
        approval: String,
        /// Who approved.
        approver: Actor,
        /// Optional comment.
        reason: Option<String>,
    },
    /// An approver refused.
    ApprovalDenied {
        /// Approval id.
        approval: String,
        /// Who refused.
        approver: Actor,
        /// Why.
        reason: String,
    },
    /// Someone tried to approve or deny and was refused (their own request, not in the
    /// approver group, not permitted by policy, ...).
    ApprovalRefused {
        /// Approval id.
        approval: String,
        /// Who tried.
        approver: Actor,
        /// `approve` or `deny`.
        attempted: String,
        /// Why it was refused.
        reason: String,
    },
    /// Nobody decided in time.
    ApprovalExpired {
        /// Approval id.
        approval: String,
    },
    /// The requester (or the gateway) withdrew the request.
    ApprovalWithdrawn {
        /// Approval id.
        approval: String,
        /// Why.
        reason: String,
    },
    /// The approved request was sent to the target.
    ApprovalExecuted {
        /// Approval id.
        approval: String,
        /// Session that executed it.
        session: String,
    },
    /// The target failed or refused; the session may continue or end.
    TargetError {
        /// Session id.
        session: String,
        /// The target's message.
        message: String,
    },
    /// Values were masked in a response.
    MaskingApplied {
        /// Session id.
        session: String,
        /// Request number within the session.
        request: u64,
        /// How many values were masked per data class; never the values.
        counts: BTreeMap<String, u64>,
    },
    /// The target answered one forwarded statement (PostgreSQL): what it did, how long it
    /// took, and the values the statement was executed with, masked. A statement costs at most
    /// two records: its `request_decided` before it is forwarded and this one after.
    StatementCompleted {
        /// Session id.
        session: String,
        /// The request (statement) this answers, as in its `request_decided` record.
        request: u64,
        /// From forwarding (or the previous statement's answer, within one query string)
        /// to the target's answer, in microseconds.
        duration_us: u64,
        /// The command tag, e.g. `SELECT 3`, `INSERT 0 1`, `UPDATE 5`, `COPY 1000`; absent
        /// after an error, for an empty query and for a suspended portal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command_tag: Option<String>,
        /// Rows returned or affected, from the tag (or counted, for a suspended portal).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<u64>,
        /// The target's error for this statement, its text scrubbed by the detectors.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<TargetFailure>,
        /// Bind parameters of an extended-protocol execution, masked (`null` for NULL).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        parameters: Vec<Option<String>>,
        /// How many values of each class were masked in the answer; never the values.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        masked: BTreeMap<String, u64>,
        /// The execution stopped at the client's row limit (PortalSuspended); a later
        /// execution of the same portal continues it.
        #[serde(default, skip_serializing_if = "is_false")]
        suspended: bool,
    },
    /// A channel of a session ended (an SSH exec, shell, subsystem or forward): how its
    /// program ended and how many bytes flowed each way.
    ChannelEnded {
        /// Session id.
        session: String,
        /// The request that opened it.
        request: u64,
        /// `exec`, `shell`, `subsystem` or `forward`.
        kind: String,
        /// The program's exit status, when the target sent one.
        exit_status: Option<u32>,
        /// The signal that ended the program, when the target sent one.
        exit_signal: Option<String>,
        /// Bytes from the client to the target.
        bytes_in: u64,
        /// Bytes from the target to the client (stdout).
        bytes_out: u64,
        /// Bytes from the target to the client on stderr.
        bytes_err: u64,
    },
    /// One file opened inside an SFTP channel (OpenSSH `sftp`, and `scp` in its default
    /// SFTP mode) was closed, or its channel ended with it still open.
    FileTransferred {
        /// Session id.
        session: String,
        /// The request (the file's open) that policy decided.
        request: u64,
        /// The request that opened the SFTP channel.
        channel: u64,
        /// The path as the client named it.
        path: String,
        /// `download` (opened for reading) or `upload` (opened for writing).
        direction: String,
        /// Bytes the host returned to the client's reads.
        bytes_read: u64,
        /// Bytes of the client's writes the host confirmed.
        bytes_written: u64,
        /// True when the client closed the file and the host confirmed it.
        completed: bool,
    },
    /// A client broke its channel's protocol (e.g. a malformed or oversized SFTP
    /// packet); the gateway closed that channel.
    ProtocolError {
        /// Session id.
        session: String,
        /// The request that opened the channel.
        request: u64,
        /// What was wrong.
        message: String,
    },
    /// A session recording was closed.
    RecordingWritten {
        /// Session id.
        session: String,
        /// Path of the recording file.
        path: String,
        /// Its size.
        bytes: u64,
        /// Hex SHA-256 of its content.
        sha256: String,
    },
    /// The gateway issued a short-lived credential.
    CredentialIssued {
        /// Credential id (never the credential).
        credential_id: String,
        /// For whom.
        actor: Actor,
        /// Protocol it is valid for.
        protocol: String,
        /// Target it is valid for.
        target: String,
        /// RFC 3339 expiry.
        expires_at: String,
    },
    /// A credential was revoked before it expired.
    CredentialRevoked {
        /// Credential id.
        credential_id: String,
        /// Who revoked it.
        by: Actor,
    },
    /// A new policy generation is in force.
    PolicyReloaded {
        /// Generation number.
        generation: u64,
        /// Policies in it.
        policies: usize,
    },
    /// A policy reload was rejected; the previous generation stays in force.
    PolicyReloadFailed {
        /// Why.
        error: String,
    },
    /// One Kubernetes API request from start to its last response byte. HTTP is per request,
    /// so this complements `request_decided` with what happened on the wire; requests refused
    /// before a session existed (bad path, impersonation, unknown cluster) carry no session.
    KubeRequest {
        /// Session id, when the caller was authenticated.
        session: Option<String>,
        /// Request number within the session, when policy decided it.
        request: Option<u64>,
        /// Cluster name from the URL.
        target: String,
        /// Client socket address.
        client_addr: String,
        /// HTTP method.
        method: String,
        /// The canonical API path (no query), or the raw path when it was refused as ambiguous.
        path: String,
        /// The Kubernetes verb (`get`, `list`, `watch`, ..., `exec`), or `connect` for discovery.
        verb: String,
        /// Request attributes as policy saw them.
        attributes: serde_json::Value,
        /// `allow`, `deny`, `needs_approval` or `refused` (refused by the gateway itself).
        decision: String,
        /// Policies that decided.
        policies: Vec<String>,
        /// HTTP status sent to the client.
        status: u16,
        /// Response body bytes sent to the client.
        bytes: u64,
        /// From the request's arrival to its last response byte.
        duration_ms: u64,
        /// Why it was refused or failed, if it was.
        reason: Option<String>,
    },
}

/// An error the target reported for one statement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetFailure {
    /// SQLSTATE, e.g. `23505`.
    pub code: String,
    /// The primary message, scrubbed by the content detectors.
    pub message: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl From<&Identity> for Actor {
    fn from(id: &Identity) -> Self {
        Self {
            issuer: id.issuer.clone(),
            subject: id.subject.clone(),
            kind: id.kind,
            email: id.email.clone(),
            groups: id.groups.clone(),
            owner: id.owner.clone(),
        }
    }
}

impl fmt::Display for Actor {
    /// The email when known, else the subject; agents also name their owner.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.email.as_deref().unwrap_or(&self.subject))?;
        match (&self.kind, &self.owner) {
            (PrincipalKind::Agent, Some(owner)) => write!(f, " (agent of {owner})"),
            (PrincipalKind::Agent, None) => f.write_str(" (agent)"),
            (PrincipalKind::User, _) => Ok(()),
        }
    }
}

impl AuditEvent {
    /// The session this event belongs to, when it names one directly.
    pub fn session(&self) -> Option<&str> {
        match self {
            Self::SessionStarted { session, .. }
            | Self::SessionEnded { session, .. }
            | Self::RequestDecided { session, .. }
            | Self::ApprovalRequested { session, .. }
            | Self::ApprovalExecuted { session, .. }
            | Self::TargetError { session, .. }
            | Self::MaskingApplied { session, .. }
            | Self::StatementCompleted { session, .. }
            | Self::ChannelEnded { session, .. }
            | Self::FileTransferred { session, .. }
            | Self::ProtocolError { session, .. }
            | Self::RecordingWritten { session, .. } => Some(session),
            Self::KubeRequest { session, .. } => session.as_deref(),
            Self::AuthenticationFailed { .. }
            | Self::ApprovalGranted { .. }
            | Self::ApprovalDenied { .. }
            | Self::ApprovalRefused { .. }
            | Self::ApprovalExpired { .. }
            | Self::ApprovalWithdrawn { .. }
            | Self::CredentialIssued { .. }
            | Self::CredentialRevoked { .. }
            | Self::PolicyReloaded { .. }
            | Self::PolicyReloadFailed { .. } => None,
        }
    }

    /// The approval this event belongs to, if any.
    pub fn approval(&self) -> Option<&str> {
        match self {
            Self::ApprovalRequested { approval, .. }
            | Self::ApprovalGranted { approval, .. }
            | Self::ApprovalDenied { approval, .. }
            | Self::ApprovalRefused { approval, .. }
            | Self::ApprovalExpired { approval }
            | Self::ApprovalWithdrawn { approval, .. }
            | Self::ApprovalExecuted { approval, .. } => Some(approval),
            _ => None,
        }
    }

    /// The `"event"` tag, e.g. `"session_started"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SessionStarted { .. } => "session_started",
            Self::SessionEnded { .. } => "session_ended",
            Self::AuthenticationFailed { .. } => "authentication_failed",
            Self::RequestDecided { .. } => "request_decided",
            Self::ApprovalRequested { .. } => "approval_requested",
            Self::ApprovalGranted { .. } => "approval_granted",
            Self::ApprovalDenied { .. } => "approval_denied",
            Self::ApprovalRefused { .. } => "approval_refused",
            Self::ApprovalExpired { .. } => "approval_expired",
            Self::ApprovalWithdrawn { .. } => "approval_withdrawn",
            Self::ApprovalExecuted { .. } => "approval_executed",
            Self::TargetError { .. } => "target_error",
            Self::MaskingApplied { .. } => "masking_applied",
            Self::StatementCompleted { .. } => "statement_completed",
            Self::ChannelEnded { .. } => "channel_ended",
            Self::FileTransferred { .. } => "file_transferred",
            Self::ProtocolError { .. } => "protocol_error",
            Self::RecordingWritten { .. } => "recording_written",
            Self::CredentialIssued { .. } => "credential_issued",
            Self::CredentialRevoked { .. } => "credential_revoked",
            Self::PolicyReloaded { .. } => "policy_reloaded",
            Self::PolicyReloadFailed { .. } => "policy_reload_failed",
            Self::KubeRequest { .. } => "kube_request",
        }
    }
}
