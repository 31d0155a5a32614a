//! The verified caller: what the rest of the gateway (policy, audit, approvals) knows
//! about who is on the other end once a token has passed every check in this crate.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Whether a token speaks for a person or for an automated agent. It is decided by the
/// issuer configuration, never by a claim, so a user token cannot pass itself off as an
/// agent (or the reverse) by adding a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PrincipalKind {
    /// A person.
    User,
    /// An automated caller (AI agent, CI job) acting for an owner.
    Agent,
}

/// A caller whose token was verified.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The `iss` claim, exactly as configured.
    pub issuer: String,
    /// The `sub` claim; unique within the issuer only.
    pub subject: String,
    /// User or agent, from the issuer configuration.
    pub kind: PrincipalKind,
    /// The `email` claim, when present.
    pub email: Option<String>,
    /// The `name` claim, when present.
    pub name: Option<String>,
    /// Groups from the issuer's configured groups claim.
    pub groups: Vec<String>,
    /// The person responsible for an agent, from the issuer's configured owner claim.
    pub owner: Option<String>,
    /// When the token stops being valid; sessions must not outlive it.
    #[serde(with = "unix_seconds")]
    pub expires_at: SystemTime,
}

impl PrincipalKind {
    /// The name used in policies and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "User",
            Self::Agent => "Agent",
        }
    }
}

impl fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Identity {
    /// True when both identities name the same principal. Subjects are only unique per
    /// issuer, so the issuer must match too (segregation of duties depends on this).
    pub fn same_person(&self, other: &Identity) -> bool {
        self.issuer == other.issuer && self.subject == other.subject
    }

    /// A human-readable name: the email when the token has one, else the subject.
    pub fn display_name(&self) -> &str {
        self.email.as_deref().unwrap_or(&self.subject)
    }

    /// True for agent principals.
    pub fn is_agent(&self) -> bool {
        self.kind == PrincipalKind::Agent
    }
}

mod unix_seconds {
    use super::*;

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        // Times before the epoch cannot come from a verified token; clamp rather than fail.
        let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        s.serialize_u64(secs)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = u64::deserialize(d)?;
        UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .ok_or_else(|| serde::de::Error::custom("expires_at out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(issuer: &str, subject: &str) -> Identity {
        Identity {
            issuer: issuer.into(),
            subject: subject.into(),
            kind: PrincipalKind::User,
            email: None,
            name: None,
            groups: vec![],
            owner: None,
            expires_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    #[test]
    fn same_person_needs_issuer_and_subject() {
        assert!(id("a", "x").same_person(&id("a", "x")));
        assert!(!id("a", "x").same_person(&id("b", "x")));
        assert!(!id("a", "x").same_person(&id("a", "y")));
    }

    #[test]
    fn display_name_prefers_email() {
        let mut i = id("a", "sub-1");
        assert_eq!(i.display_name(), "sub-1");
        i.email = Some("ann@example.com".into());
        assert_eq!(i.display_name(), "ann@example.com");
        assert!(!i.is_agent());
    }

    #[test]
    fn serializes_kind_and_expiry() {
        let mut i = id("a", "x");
        i.kind = PrincipalKind::Agent;
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!(v["kind"], "Agent");
        assert_eq!(v["expires_at"], 1_700_000_000u64);
        let back: Identity = serde_json::from_value(v).unwrap();
        assert_eq!(back, i);
        assert_eq!(PrincipalKind::User.to_string(), "User");
    }
}
