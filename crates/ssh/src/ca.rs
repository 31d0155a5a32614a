//! The gateway's SSH certificate authority: it signs short user certificates that carry
//! the caller's OIDC identity, and the SSH listener accepts public-key authentication only
//! with a certificate it signed itself.
//!
//! A certificate names the target as its one principal (the SSH user name that selects
//! the target), the identity and target in its key id, and the identity itself (as the
//! token said it at issue time) in the `identity@gatehouse` extension, covered by the CA's
//! signature. It is valid from a minute before issue (clock skew) until the token expires
//! at the latest.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_identity::Identity;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::{Fingerprint, HashAlg};
use russh::keys::{Certificate, PrivateKey, PublicKey};

/// The certificate extension that carries the identity (JSON).
pub const IDENTITY_EXTENSION: &str = "identity@gatehouse";
/// Allowed clock skew between the gateway and the client when a certificate starts.
const BACKDATE: Duration = Duration::from_secs(60);

/// The CA key and its fingerprint.
pub struct SshCa {
    key: PrivateKey,
    fingerprint: Fingerprint,
}

/// A signed certificate and what it says, for the caller and the audit record.
#[derive(Debug)]
pub struct IssuedCertificate {
    pub certificate: Certificate,
    pub serial: u64,
    pub key_id: String,
    pub valid_before: SystemTime,
}

/// One OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
pub fn parse_public_key(line: &str) -> Result<PublicKey, String> {
    PublicKey::from_openssh(line.trim()).map_err(|e| format!("not an OpenSSH public key line: {e}"))
}

impl SshCa {
    /// Loads the CA key, generating an ed25519 key (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        let key = crate::server::load_or_create_key(path, "gatehouse SSH user CA", "ssh.ca_key")?;
        Ok(Self::from_key(key))
    }

    pub fn from_key(key: PrivateKey) -> Self {
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256);
        Self { key, fingerprint }
    }

    /// The CA's public key in OpenSSH format (for `TrustedUserCAKeys`-style use elsewhere).
    pub fn public_key_openssh(&self) -> String {
        self.key.public_key().to_openssh().unwrap_or_default()
    }

    /// Signs `public_key` for `identity` on `target`, valid until `valid_before` (never past
    /// the identity's own expiry).
    pub fn issue(
        &self,
        identity: &Identity,
        target: &str,
        public_key: &PublicKey,
        valid_before: SystemTime,
    ) -> Result<IssuedCertificate, String> {
        let now = SystemTime::now();
        let valid_before = valid_before.min(identity.expires_at);
        if valid_before <= now {
            return Err("the token has expired".into());
        }
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut nonce = [0u8; 32];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "the system random generator failed".to_string())?;
        let mut serial = [0u8; 8];
        aws_lc_rs::rand::fill(&mut serial).map_err(|_| "the system random generator failed".to_string())?;
        let serial = u64::from_be_bytes(serial);
        let key_id = format!("{} ({}) on {target}", identity.display_name(), identity.kind.as_str());
        let identity_json = serde_json::to_string(&Identity {
            expires_at: valid_before,
            ..identity.clone()
        })
        .map_err(|e| format!("cannot encode the identity: {e}"))?;
        let mut builder = Builder::new(
            nonce.to_vec(),
            public_key.key_data().clone(),
            secs(now - BACKDATE),
            secs(valid_before),
        )
        .map_err(|e| format!("certificate: {e}"))?;
        builder
            .serial(serial)
            .and_then(|b| b.cert_type(CertType::User))
            .and_then(|b| b.key_id(key_id.clone()))
            .and_then(|b| b.valid_principal(target))
            .and_then(|b| b.extension("permit-pty", ""))
            .and_then(|b| b.extension(IDENTITY_EXTENSION, identity_json))
            .and_then(|b| b.comment(key_id.clone()))
            .map_err(|e| format!("certificate: {e}"))?;
        let certificate = builder.sign(&self.key).map_err(|e| format!("cannot sign: {e}"))?;
        Ok(IssuedCertificate {
            certificate,
            serial,
            key_id,
            // The certificate holds whole seconds.
            valid_before: UNIX_EPOCH + Duration::from_secs(secs(valid_before)),
        })
    }

    /// Checks a certificate a client authenticated with (russh has verified that the client
    /// holds its key): signed by this CA, a user certificate, valid now, naming `user` (the
    /// target) as a principal, no critical options. Returns the identity it carries, expiring
    /// when the certificate does.
    pub fn check(&self, certificate: &Certificate, user: &str) -> Result<Identity, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        certificate
            .validate_at(now, [&self.fingerprint])
            .map_err(|_| "not signed by this gateway's CA, or outside its validity window".to_string())?;
        if certificate.cert_type() != CertType::User {
            return Err("not a user certificate".into());
        }
        if !certificate.valid_principals().iter().any(|p| p == user) {
            return Err(format!("the certificate is not valid for {user:?}"));
        }
        if !certificate.critical_options().is_empty() {
            return Err("the certificate has critical options this gateway does not know".into());
        }
        let json = certificate
            .extensions()
            .get(IDENTITY_EXTENSION)
            .ok_or_else(|| "the certificate carries no identity".to_string())?;
        let mut identity: Identity =
            serde_json::from_str(json).map_err(|e| format!("the certificate's identity is unreadable: {e}"))?;
        let valid_before = UNIX_EPOCH + Duration::from_secs(certificate.valid_before());
        identity.expires_at = identity.expires_at.min(valid_before);
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;
    use gatehouse_identity::PrincipalKind;
    use russh::keys::ssh_key::private::Ed25519Keypair;

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
    }

    fn identity(ttl: Duration) -> Identity {
        Identity {
            issuer: "https://issuer.example".into(),
            subject: "agent-7".into(),
            kind: PrincipalKind::Agent,
            email: None,
            name: None,
            groups: vec!["bots".into()],
            owner: Some("alice".into()),
            expires_at: SystemTime::now() + ttl,
        }
    }

    #[test]
    fn a_certificate_carries_the_identity_and_is_bound_to_its_target() {
        let ca = SshCa::from_key(key(1));
        let user_key = key(2);
        let who = identity(Duration::from_secs(3600));
        let issued = ca
            .issue(
                &who,
                "web-1",
                user_key.public_key(),
                SystemTime::now() + Duration::from_secs(600),
            )
            .unwrap();
        let cert = &issued.certificate;
        assert_eq!(cert.valid_principals(), ["web-1".to_string()]);
        assert!(cert.key_id().contains("agent-7") && cert.key_id().contains("web-1"));
        // Shorter of the requested lifetime and the token's.
        let left = issued.valid_before.duration_since(SystemTime::now()).unwrap();
        assert!(
            left <= Duration::from_secs(600) && left > Duration::from_secs(590),
            "{left:?}"
        );

        let checked = ca.check(cert, "web-1").unwrap();
        assert_eq!(checked.subject, "agent-7");
        assert_eq!(checked.owner.as_deref(), Some("alice"));
        assert_eq!(checked.groups, ["bots"]);
        assert!(checked.expires_at <= issued.valid_before);

        assert!(ca.check(cert, "vault").unwrap_err().contains("not valid for"));
        let other = SshCa::from_key(key(3));
        assert!(other.check(cert, "web-1").unwrap_err().contains("CA"));
    }

    #[test]
    fn never_longer_than_the_token() {
        let ca = SshCa::from_key(key(1));
        let who = identity(Duration::from_secs(60));
        let issued = ca
            .issue(
                &who,
                "web-1",
                key(2).public_key(),
                SystemTime::now() + Duration::from_secs(86400),
            )
            .unwrap();
        assert!(issued.valid_before <= who.expires_at);
        let expired = identity(Duration::ZERO);
        assert!(
            ca.issue(&expired, "web-1", key(2).public_key(), SystemTime::now())
                .is_err()
        );
    }
}
