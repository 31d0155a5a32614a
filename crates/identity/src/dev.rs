//! The development issuer: lets a laptop or a test run the gateway without a real IdP.
//! It is off unless configured, signs with one ES256 key kept in the state directory
//! (mode 0600, reused across restarts so issued tokens survive a restart), and serves
//! two issuers, one for users and one for agents, so the principal kind still comes
//! from the issuer and never from a claim.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::config::IssuerConfig;
use crate::error::IdentityError;
use crate::identity::PrincipalKind;

/// Longest lifetime the development issuer grants.
pub const MAX_DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A local issuer for development and tests.
pub struct DevIssuer {
    key: EcdsaKeyPair,
    kid: String,
    x: String,
    y: String,
    base_url: String,
    audience: String,
    key_path: PathBuf,
}

/// What to put in a development token.
#[derive(Clone, Debug)]
pub struct MintRequest {
    /// The `sub` claim.
    pub subject: String,
    /// The `groups` claim.
    pub groups: Vec<String>,
    /// Lifetime, at most [`MAX_DEV_TOKEN_TTL`].
    pub ttl: Duration,
    /// Issue from the agent issuer instead of the user issuer.
    pub agent: bool,
    /// The `email` claim.
    pub email: Option<String>,
    /// The `name` claim.
    pub name: Option<String>,
    /// The `owner` claim (the person responsible for an agent).
    pub owner: Option<String>,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("base_url", &self.base_url)
            .field("kid", &self.kid)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl DevIssuer {
    /// Loads the signing key from `{state_dir}/dev-issuer/signing-key.pem`, creating it
    /// (mode 0600) on first start.
    pub fn load_or_create(state_dir: &Path, base_url: &str, audience: &str) -> Result<Self, IdentityError> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(IdentityError::Config(format!(
                "dev issuer base URL `{base_url}` must be http(s)"
            )));
        }
        if audience.trim().is_empty() {
            return Err(IdentityError::Config(
                "dev issuer audience must not be empty".to_owned(),
            ));
        }
        let dir = state_dir.join("dev-issuer");
        let key_path = dir.join("signing-key.pem");
        let io = |context: String| move |source| IdentityError::Io { context, source };
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let key = if key_path.exists() {
            load_key(&key_path)?
        } else {
            create_key(&key_path)?
        };
        let public = key.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
        if public.len() != 65 {
            return Err(IdentityError::DevIssuer("unexpected public key encoding".to_owned()));
        }
        let x = URL_SAFE_NO_PAD.encode(&public[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&public[33..65]);
        // RFC 7638 thumbprint: the kid changes exactly when the key does.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()));
        Ok(Self {
            key,
            kid,
            x,
            y,
            base_url,
            audience: audience.to_owned(),
            key_path,
        })
    }

    /// The issuer of user tokens.
    pub fn user_issuer(&self) -> String {
        format!("{}/dev/users", self.base_url)
    }

    /// The issuer of agent tokens (same key, different principal kind).
    pub fn agent_issuer(&self) -> String {
        format!("{}/dev/agents", self.base_url)
    }

    /// Where the signing key lives.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The key id of the signing key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Configurations for both issuers; pair each with [`DevIssuer::jwks`] through
    /// [`crate::Verifier::with_static_keys`].
    pub fn issuer_configs(&self) -> Vec<IssuerConfig> {
        vec![
            IssuerConfig::new(self.user_issuer(), self.audience.clone(), PrincipalKind::User),
            IssuerConfig::new(self.agent_issuer(), self.audience.clone(), PrincipalKind::Agent),
        ]
    }

    /// The public key set.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "kid": self.kid, "alg": "ES256", "use": "sig"
        }]})
    }

    /// The OIDC discovery document for one of the two issuers.
    pub fn discovery_document(&self, issuer: &str) -> Value {
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{}/dev/jwks.json", self.base_url),
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "email", "name", "groups", "owner"],
        })
    }

    /// Signs a token for the user or agent issuer.
    pub fn mint(&self, req: &MintRequest) -> Result<String, IdentityError> {
        self.mint_with_nonce(req, None)
    }

    /// Signs a token that also carries the OIDC `nonce` its relying party sent to the
    /// authorization endpoint (the console's sign-in).
    pub fn mint_with_nonce(&self, req: &MintRequest, nonce: Option<&str>) -> Result<String, IdentityError> {
        if req.subject.is_empty() {
            return Err(IdentityError::DevIssuer("subject must not be empty".to_owned()));
        }
        if req.ttl.is_zero() || req.ttl > MAX_DEV_TOKEN_TTL {
            return Err(IdentityError::DevIssuer("ttl must be between 1 s and 24 h".to_owned()));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| IdentityError::DevIssuer("system clock is before 1970".to_owned()))?
            .as_secs();
        let issuer = if req.agent {
            self.agent_issuer()
        } else {
            self.user_issuer()
        };
        let mut claims = json!({
            "iss": issuer, "sub": req.subject, "aud": self.audience,
            "iat": now, "nbf": now, "exp": now + req.ttl.as_secs(), "groups": req.groups,
        });
        for (name, value) in [("email", &req.email), ("name", &req.name), ("owner", &req.owner)] {
            if let Some(value) = value {
                claims[name] = Value::String(value.clone());
            }
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = Value::String(nonce.to_owned());
        }
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| IdentityError::DevIssuer("signing failed".to_owned()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

fn load_key(path: &Path) -> Result<EcdsaKeyPair, IdentityError> {
    let meta = fs::metadata(path).map_err(|source| IdentityError::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    // Like ssh: a signing key others can read is a key others can use.
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(IdentityError::DevIssuer(format!(
            "{} is readable by other users; chmod 600 it",
            path.display()
        )));
    }
    let pem = fs::read_to_string(path).map_err(|source| IdentityError::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    if !pem.contains("-----BEGIN PRIVATE KEY-----") {
        return Err(IdentityError::DevIssuer(format!(
            "{} is not a PKCS#8 PEM key",
            path.display()
        )));
    }
    let der = STANDARD
        .decode(body)
        .map_err(|_| IdentityError::DevIssuer(format!("{} is not valid PEM", path.display())))?;
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
        .map_err(|_| IdentityError::DevIssuer(format!("{} is not a P-256 private key", path.display())))
}

fn create_key(path: &Path) -> Result<EcdsaKeyPair, IdentityError> {
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
        .map_err(|_| IdentityError::DevIssuer("key generation failed".to_owned()))?;
    let der = key
        .to_pkcs8v1()
        .map_err(|_| IdentityError::DevIssuer("key encoding failed".to_owned()))?;
    let b64 = STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    // create_new: never overwrite a key another process just wrote.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| IdentityError::Io {
            context: format!("creating {}", path.display()),
            source,
        })?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| IdentityError::Io {
            context: format!("writing {}", path.display()),
            source,
        })?;
    Ok(key)
}
