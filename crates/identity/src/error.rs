//! The crate's one error type. Every message is safe to send to the client that presented
//! the token: none echoes the token or a value taken from it, only claim names from our
//! own configuration and fixed reasons. [`IdentityError::is_client_fault`] tells a bad
//! token (refuse, audit as a client failure) from an issuer or gateway problem.

/// Why a token was not accepted, or why the verifier could not be built.
#[derive(thiserror::Error, Debug)]
pub enum IdentityError {
    /// The token is larger than any legitimate ID token.
    #[error("token is too large")]
    TooLarge,
    /// The token is not a compact JWS (three base64url segments of JSON).
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// The header asks for an algorithm we never accept (`none`, HMAC, unknown).
    #[error("token algorithm is not accepted")]
    AlgorithmNotAllowed,
    /// The header carries key material or a key location; keys come only from the issuer.
    #[error("token header field `{0}` is not accepted: keys come only from the configured issuer")]
    EmbeddedKey(&'static str),
    /// The header marks an extension as critical; we implement none.
    #[error("token header lists critical extensions, which are not supported")]
    CriticalHeader,
    /// The `iss` claim names no configured issuer.
    #[error("token issuer is not trusted")]
    UnknownIssuer,
    /// No key of the issuer matches the token's `kid`.
    #[error("token signing key is not known to the issuer")]
    UnknownKey,
    /// The key exists but its algorithm differs from the header's.
    #[error("token algorithm does not match the issuer's key")]
    AlgorithmMismatch,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// A required claim is absent.
    #[error("token claim `{0}` is missing")]
    MissingClaim(String),
    /// A claim has the wrong JSON type or an unusable value.
    #[error("token claim `{claim}` is invalid: {reason}")]
    InvalidClaim {
        /// The claim name (from the protocol or our configuration, never from the token).
        claim: String,
        /// A fixed explanation.
        reason: &'static str,
    },
    /// The token was issued for another audience.
    #[error("token audience does not include this gateway")]
    WrongAudience,
    /// The token's `exp` is past.
    #[error("token has expired")]
    Expired,
    /// The token's `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// The token's `iat` is in the future.
    #[error("token was issued in the future")]
    IssuedInFuture,
    /// The issuer's keys could not be fetched or parsed: not the client's fault.
    #[error("signing keys for issuer {issuer} are unavailable: {reason}")]
    KeysUnavailable {
        /// The configured issuer.
        issuer: String,
        /// What went wrong, without secrets.
        reason: String,
    },
    /// The identity configuration is invalid.
    #[error("invalid identity configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The development issuer could not load, create or use its key.
    #[error("development issuer: {0}")]
    DevIssuer(String),
}

impl IdentityError {
    /// True when the presented token is at fault (refuse it and tell the client); false
    /// when the gateway or the issuer is (fail closed, alert the operator).
    pub fn is_client_fault(&self) -> bool {
        match self {
            Self::TooLarge
            | Self::Malformed(_)
            | Self::AlgorithmNotAllowed
            | Self::EmbeddedKey(_)
            | Self::CriticalHeader
            | Self::UnknownIssuer
            | Self::UnknownKey
            | Self::AlgorithmMismatch
            | Self::BadSignature
            | Self::MissingClaim(_)
            | Self::InvalidClaim { .. }
            | Self::WrongAudience
            | Self::Expired
            | Self::NotYetValid
            | Self::IssuedInFuture => true,
            Self::KeysUnavailable { .. } | Self::Config(_) | Self::Io { .. } | Self::DevIssuer(_) => false,
        }
    }

    pub(crate) fn invalid(claim: &str, reason: &'static str) -> Self {
        Self::InvalidClaim {
            claim: claim.to_owned(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_split_by_side() {
        assert!(IdentityError::Expired.is_client_fault());
        assert!(IdentityError::invalid("exp", "not a number").is_client_fault());
        let down = IdentityError::KeysUnavailable {
            issuer: "https://i".into(),
            reason: "timeout".into(),
        };
        assert!(!down.is_client_fault());
        assert!(!IdentityError::Config("x".into()).is_client_fault());
    }
}
