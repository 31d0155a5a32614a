//! Errors of the SSH frontend; each knows which side caused it, which decides what the
//! client is told (a disconnect reason, or stderr and an exit status on a channel).

/// A failure while serving one SSH connection.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The SSH library reported a protocol or I/O failure on either leg.
    #[error("SSH protocol error: {0}")]
    Protocol(#[from] russh::Error),
    /// The host could not be reached, refused the gateway's key, or failed its host key check.
    #[error("target: {0}")]
    Target(String),
    /// The gateway itself failed (recording file, host key).
    #[error("gateway: {0}")]
    Gateway(String),
}
