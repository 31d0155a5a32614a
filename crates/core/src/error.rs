//! Errors of the shared core, and the refusal a frontend turns into its protocol's error.

use std::fmt;

/// A failure of the gateway itself (state store, audit log), never of a client request.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("the state store failed: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("the audit log failed: {0}")]
    Audit(#[from] gatehouse_audit::AuditError),
    #[error("{0}")]
    Invalid(String),
}

/// Why a request was not let through. Each kind maps to one protocol-native error in a frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// No valid token or credential, an unknown target, or a denied `connect`: deliberately
    /// indistinguishable to the client so that it learns nothing about which targets exist.
    Unauthenticated,
    /// Policy refused the request.
    Denied,
    /// Policy wants another person to approve this request first.
    ApprovalRequired { approver_group: String },
    /// The identity or credential behind the session has expired.
    Expired,
    /// The gateway cannot enforce right now (audit log unwritable, policy unusable): fail closed.
    Unavailable,
}

/// A refused request: what the client is told, and which policies decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// A sentence safe to show the client.
    pub message: String,
    /// Ids of the policies that decided (empty when none permitted or none applied).
    pub policies: Vec<String>,
    /// The request number within the session, when the request got that far.
    pub request: Option<u64>,
}

impl Refusal {
    pub(crate) fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            policies: Vec::new(),
            request: None,
        }
    }

    /// The one message every authentication or connect failure shows a client.
    pub fn access_denied() -> Self {
        Self::new(
            RefusalKind::Unauthenticated,
            "access denied: the token or credential is not valid for this target",
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}
