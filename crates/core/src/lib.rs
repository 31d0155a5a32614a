//! What every Gatehouse frontend shares: the target registry, the one enforcement path
//! (identity -> policy -> approval -> audit -> verdict), sessions, short-lived credentials and
//! the gateway's metrics. Frontends turn their protocol's requests into an action with
//! attributes and ask [`Session::authorize`]; they never decide on their own.

mod approvals;
mod credentials;
mod error;
mod gateway;
mod listener;
mod metrics;
pub mod recording;
mod session;
mod throttle;

pub use approvals::{
    ApprovalBroker, ApprovalError, ApprovalListener, ApprovalRequest, ApprovalState, ApprovalStore,
    DEFAULT_APPROVAL_TIMEOUT, NewApproval, Outcome, SqliteApprovalStore, Vote, Waiter,
};
pub use credentials::{CREDENTIAL_PREFIX, CredentialInfo, CredentialStore, IssuedCredential};
pub use error::{CoreError, Refusal, RefusalKind};
pub use gatehouse_audit::TargetFailure;
pub use gateway::{Gateway, GatewayParts, Protocol, Target};
pub use listener::{check_listener_tls, serve_connections, stopped};
pub use metrics::Metrics;
pub use session::{ApprovalNeeded, Completion, HeldRequest, Permit, Session, Verdict};

/// A short random identifier, hex encoded: `bytes` of randomness from the system generator.
pub fn random_id(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // aws-lc's generator only fails when the OS has no entropy source; nothing can run then.
    aws_lc_rs::rand::fill(&mut buf).expect("system random generator");
    format!("{prefix}{}", hex::encode(buf))
}

/// RFC 3339 UTC with milliseconds, the one time format of records and APIs.
pub fn format_time(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
