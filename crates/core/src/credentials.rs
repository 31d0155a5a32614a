//! Short-lived credentials for clients that cannot carry a long OIDC token (OpenSSH's prompt,
//! some drivers): a `ghc_` secret bound to one identity, protocol and target, expiring no
//! later than the token it was exchanged for. Only the secret's SHA-256 is stored.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use gatehouse_identity::Identity;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::error::CoreError;
use crate::gateway::Protocol;

/// Every credential starts with this, so frontends tell it from a JWT at a glance.
pub const CREDENTIAL_PREFIX: &str = "ghc_";

/// What is known about a credential, without its secret.
#[derive(Clone, Debug, Serialize)]
pub struct CredentialInfo {
    pub id: String,
    pub protocol: String,
    pub target: String,
    pub created_at: String,
    pub expires_at: String,
}

/// A freshly issued credential: the secret is shown once, here, and never stored.
#[derive(Debug, Serialize)]
pub struct IssuedCredential {
    pub secret: String,
    #[serde(flatten)]
    pub info: CredentialInfo,
}

/// The credential table in the embedded store.
pub struct CredentialStore {
    // rusqlite's connection is not Sync; every statement here is a single indexed lookup
    // or insert, so a mutex costs less than a connection pool.
    conn: Mutex<Connection>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("unknown or revoked credential")]
    Unknown,
    #[error("credential expired")]
    Expired,
    #[error("credential is for another target")]
    WrongTarget,
    #[error("state store failed: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("stored identity is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
}

impl CredentialStore {
    pub fn open(path: &Path) -> Result<Self, CoreError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS credentials (
                 id TEXT PRIMARY KEY,
                 secret_sha256 BLOB NOT NULL UNIQUE,
                 issuer TEXT NOT NULL,
                 subject TEXT NOT NULL,
                 identity TEXT NOT NULL,
                 protocol TEXT NOT NULL,
                 target TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 expires_at INTEGER NOT NULL,
                 revoked_at INTEGER
             );
             CREATE INDEX IF NOT EXISTS credentials_owner ON credentials (issuer, subject);",
        )?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite's own state consistent; carry on.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn issue(
        &self,
        identity: &Identity,
        protocol: Protocol,
        target: &str,
        now: SystemTime,
        expires: SystemTime,
    ) -> Result<IssuedCredential, CredentialError> {
        let mut random = [0u8; 24];
        aws_lc_rs::rand::fill(&mut random).map_err(|_| CredentialError::Unknown)?;
        let secret = format!(
            "{CREDENTIAL_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
        );
        let id = crate::random_id("cred_", 6);
        let mut stored = identity.clone();
        stored.expires_at = expires;
        self.conn().execute(
            "INSERT INTO credentials (id, secret_sha256, issuer, subject, identity, protocol, target, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                id,
                sha256(&secret),
                identity.issuer,
                identity.subject,
                serde_json::to_string(&stored)?,
                protocol.as_str(),
                target,
                unix(now),
                unix(expires),
            ],
        )?;
        Ok(IssuedCredential {
            secret,
            info: CredentialInfo {
                id,
                protocol: protocol.as_str().into(),
                target: target.into(),
                created_at: crate::format_time(now),
                expires_at: crate::format_time(expires),
            },
        })
    }

    /// The identity behind `secret`, if it is live and bound to this protocol and target.
    pub fn lookup(
        &self,
        secret: &str,
        protocol: Protocol,
        target: &str,
        now: SystemTime,
    ) -> Result<Identity, CredentialError> {
        let row: Option<(String, String, String, i64)> = self
            .conn()
            .query_row(
                "SELECT identity, protocol, target, expires_at FROM credentials
                 WHERE secret_sha256 = ?1 AND revoked_at IS NULL",
                params![sha256(secret)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((identity, bound_protocol, bound_target, expires)) = row else {
            return Err(CredentialError::Unknown);
        };
        if expires <= unix(now) {
            return Err(CredentialError::Expired);
        }
        if bound_protocol != protocol.as_str() || bound_target != target {
            return Err(CredentialError::WrongTarget);
        }
        Ok(serde_json::from_str(&identity)?)
    }

    /// Revokes `id` if it belongs to `identity` and is still active.
    pub fn revoke(&self, identity: &Identity, id: &str, now: SystemTime) -> Result<bool, CredentialError> {
        let changed = self.conn().execute(
            "UPDATE credentials SET revoked_at = ?1
             WHERE id = ?2 AND issuer = ?3 AND subject = ?4 AND revoked_at IS NULL AND expires_at > ?1",
            params![unix(now), id, identity.issuer, identity.subject],
        )?;
        Ok(changed == 1)
    }

    /// `identity`'s live credentials.
    pub fn list(&self, identity: &Identity, now: SystemTime) -> Result<Vec<CredentialInfo>, CredentialError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, protocol, target, created_at, expires_at FROM credentials
             WHERE issuer = ?1 AND subject = ?2 AND revoked_at IS NULL AND expires_at > ?3
             ORDER BY created_at",
        )?;
        let rows = stmt.query_map(params![identity.issuer, identity.subject, unix(now)], |r| {
            Ok(CredentialInfo {
                id: r.get(0)?,
                protocol: r.get(1)?,
                target: r.get(2)?,
                created_at: crate::format_time(from_unix(r.get(3)?)),
                expires_at: crate::format_time(from_unix(r.get(4)?)),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn sha256(secret: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn from_unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_identity::PrincipalKind;

    fn alice(expires: SystemTime) -> Identity {
        Identity {
            issuer: "https://idp.example".into(),
            subject: "alice".into(),
            kind: PrincipalKind::User,
            email: Some("alice@example.com".into()),
            name: None,
            groups: vec!["dba".into()],
            owner: None,
            expires_at: expires,
        }
    }

    #[test]
    fn issued_secret_resolves_only_for_its_target_until_expiry_or_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::open(&dir.path().join("db")).unwrap();
        let now = SystemTime::now();
        let id = alice(now + Duration::from_secs(3600));
        let issued = store
            .issue(&id, Protocol::Postgres, "orders", now, now + Duration::from_secs(600))
            .unwrap();
        assert!(issued.secret.starts_with(CREDENTIAL_PREFIX));
        // 24 random bytes: 192 bits, base64url without padding.
        assert_eq!(issued.secret.len(), CREDENTIAL_PREFIX.len() + 32);

        let found = store.lookup(&issued.secret, Protocol::Postgres, "orders", now).unwrap();
        assert_eq!(found.subject, "alice");
        assert_eq!(unix(found.expires_at), unix(now + Duration::from_secs(600)));

        assert!(matches!(
            store.lookup(&issued.secret, Protocol::Ssh, "orders", now),
            Err(CredentialError::WrongTarget)
        ));
        assert!(matches!(
            store.lookup(&issued.secret, Protocol::Postgres, "billing", now),
            Err(CredentialError::WrongTarget)
        ));
        assert!(matches!(
            store.lookup(
                &issued.secret,
                Protocol::Postgres,
                "orders",
                now + Duration::from_secs(601)
            ),
            Err(CredentialError::Expired)
        ));
        assert!(matches!(
            store.lookup("ghc_not-a-real-secret", Protocol::Postgres, "orders", now),
            Err(CredentialError::Unknown)
        ));

        assert_eq!(store.list(&id, now).unwrap().len(), 1);
        let mut mallory = id.clone();
        mallory.subject = "mallory".into();
        assert!(
            !store.revoke(&mallory, &issued.info.id, now).unwrap(),
            "only the owner revokes"
        );
        assert!(store.revoke(&id, &issued.info.id, now).unwrap());
        assert!(matches!(
            store.lookup(&issued.secret, Protocol::Postgres, "orders", now),
            Err(CredentialError::Unknown)
        ));
        assert!(store.list(&id, now).unwrap().is_empty());
    }

    #[test]
    fn only_the_hash_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = CredentialStore::open(&path).unwrap();
        let now = SystemTime::now();
        let issued = store
            .issue(
                &alice(now + Duration::from_secs(60)),
                Protocol::Postgres,
                "orders",
                now,
                now + Duration::from_secs(60),
            )
            .unwrap();
        drop(store);
        let raw = std::fs::read(&path).unwrap();
        let wal = std::fs::read(dir.path().join("db-wal")).unwrap_or_default();
        let needle = issued.secret.as_bytes();
        for bytes in [&raw, &wal] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "secret found in the store"
            );
        }
    }
}
