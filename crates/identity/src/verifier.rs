//! Token verification: from an untrusted compact JWS to an [`Identity`], or a refusal.
//! The order of checks matters: size and shape first (cheap, bounded), header policy
//! before any key lookup, signature before any claim is believed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::config::IssuerConfig;
use crate::error::IdentityError;
use crate::identity::Identity;
use crate::jwks::{Clock, Fetcher, KeySet, RemoteKeys, VerifyingKey};

/// Largest token accepted; real ID tokens are 1-4 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Header fields that carry a key or point at one. Honouring any of them would let the
/// token choose the key that verifies it.
const KEY_HEADERS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

/// Verifies tokens from the configured issuers. Cheap to share: wrap it in an `Arc`.
pub struct Verifier {
    issuers: HashMap<String, Issuer>,
    fetcher: Arc<Fetcher>,
    clock: Clock,
}

struct Issuer {
    config: IssuerConfig,
    keys: Keys,
}

enum Keys {
    Static(KeySet),
    Remote(Arc<RemoteKeys>),
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.issuers.keys().collect();
        names.sort();
        f.debug_struct("Verifier").field("issuers", &names).finish()
    }
}

impl Verifier {
    /// Builds a verifier; static JWKS files are read now, remote keys on first use.
    pub fn new(issuers: Vec<IssuerConfig>) -> Result<Self, IdentityError> {
        Self::with_clock(issuers, Clock::default())
    }

    pub(crate) fn with_clock(issuers: Vec<IssuerConfig>, clock: Clock) -> Result<Self, IdentityError> {
        let mut verifier = Self {
            issuers: HashMap::new(),
            fetcher: Arc::new(Fetcher::default()),
            clock,
        };
        for config in issuers {
            config.validate().map_err(IdentityError::Config)?;
            let keys = match &config.jwks_file {
                Some(path) => {
                    let text = std::fs::read(path).map_err(|source| IdentityError::Io {
                        context: format!("reading JWKS file {}", path.display()),
                        source,
                    })?;
                    let doc: Value = serde_json::from_slice(&text)
                        .map_err(|e| IdentityError::Config(format!("JWKS file {} is not JSON: {e}", path.display())))?;
                    Keys::Static(
                        KeySet::from_jwks(&doc)
                            .map_err(|e| IdentityError::Config(format!("JWKS file {}: {e}", path.display())))?,
                    )
                }
                None => Keys::Remote(Arc::new(RemoteKeys::new(
                    config.issuer.clone(),
                    config.jwks_uri.clone(),
                    Arc::clone(&verifier.fetcher),
                    verifier.clock.clone(),
                ))),
            };
            verifier.insert(config, keys)?;
        }
        Ok(verifier)
    }

    /// Adds an issuer whose keys are given in-process (the development issuer); its
    /// `jwks_file` and `jwks_uri` are ignored.
    pub fn with_static_keys(mut self, issuer: IssuerConfig, jwks: Value) -> Result<Self, IdentityError> {
        issuer.validate().map_err(IdentityError::Config)?;
        let keys =
            KeySet::from_jwks(&jwks).map_err(|e| IdentityError::Config(format!("issuer `{}`: {e}", issuer.issuer)))?;
        self.insert(issuer, Keys::Static(keys))?;
        Ok(self)
    }

    fn insert(&mut self, config: IssuerConfig, keys: Keys) -> Result<(), IdentityError> {
        if self.issuers.contains_key(&config.issuer) {
            return Err(IdentityError::Config(format!(
                "issuer `{}` is configured twice",
                config.issuer
            )));
        }
        self.issuers.insert(config.issuer.clone(), Issuer { config, keys });
        Ok(())
    }

    /// Number of discovery and JWKS requests sent so far.
    pub fn fetch_count(&self) -> u64 {
        self.fetcher.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Verifies a compact JWS and returns who it names.
    pub async fn verify(&self, token: &str) -> Result<Identity, IdentityError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(IdentityError::TooLarge);
        }
        let parsed = Parsed::new(token)?;
        // The unverified `iss` only selects which key set to try; it is trusted after the
        // signature verifies, and compared exactly again then.
        let iss = match parsed.payload.get("iss") {
            Some(Value::String(iss)) => iss,
            Some(_) => return Err(IdentityError::invalid("iss", "must be a string")),
            None => return Err(IdentityError::MissingClaim("iss".to_owned())),
        };
        let issuer = self.issuers.get(iss).ok_or(IdentityError::UnknownIssuer)?;
        let key = match &issuer.keys {
            Keys::Static(set) => set
                .find(parsed.kid.as_deref(), parsed.alg)
                .ok_or(IdentityError::UnknownKey)?,
            Keys::Remote(remote) => remote.key_for(parsed.kid.as_deref(), parsed.alg).await?,
        };
        parsed.check_signature(&key)?;
        identity_from_claims(&issuer.config, &parsed.payload, self.clock.wall())
    }
}

/// A token split and decoded, not yet trusted.
struct Parsed<'a> {
    signing_input: &'a str,
    signature: &'a str,
    alg: Algorithm,
    kid: Option<String>,
    payload: Map<String, Value>,
}

impl<'a> Parsed<'a> {
    fn new(token: &'a str) -> Result<Self, IdentityError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdentityError::Malformed("expected three dot-separated segments"));
        };
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(IdentityError::Malformed("empty segment"));
        }
        let header = decode_object(header, "header")?;
        for field in KEY_HEADERS {
            if header.contains_key(field) {
                return Err(IdentityError::EmbeddedKey(field));
            }
        }
        if header.contains_key("crit") {
            return Err(IdentityError::CriticalHeader);
        }
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => accepted_alg(alg)?,
            _ => return Err(IdentityError::Malformed("header has no `alg` string")),
        };
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(IdentityError::Malformed("header `kid` is not a string")),
        };
        let payload_map = decode_object(payload, "payload")?;
        if URL_SAFE_NO_PAD.decode(signature).is_err() {
            return Err(IdentityError::Malformed("signature is not base64url"));
        }
        let signing_input = &token[..token.len() - signature.len() - 1];
        Ok(Self {
            signing_input,
            signature,
            alg,
            kid,
            payload: payload_map,
        })
    }

    fn check_signature(&self, key: &VerifyingKey) -> Result<(), IdentityError> {
        // The key decides the algorithm; the header must agree, never override it.
        if key.alg != self.alg {
            return Err(IdentityError::AlgorithmMismatch);
        }
        match jsonwebtoken::crypto::verify(self.signature, self.signing_input.as_bytes(), &key.key, key.alg) {
            Ok(true) => Ok(()),
            _ => Err(IdentityError::BadSignature),
        }
    }
}

/// Asymmetric algorithms only: `none` needs no key at all, and HMAC would treat a public
/// key (which anyone can read) as the shared secret.
fn accepted_alg(alg: &str) -> Result<Algorithm, IdentityError> {
    Ok(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return Err(IdentityError::AlgorithmNotAllowed),
    })
}

fn decode_object(segment: &str, what: &'static str) -> Result<Map<String, Value>, IdentityError> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| {
        IdentityError::Malformed(if what == "header" {
            "header is not base64url"
        } else {
            "payload is not base64url"
        })
    })?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(IdentityError::Malformed(if what == "header" {
            "header is not a JSON object"
        } else {
            "payload is not a JSON object"
        })),
    }
}

/// Applies the claim rules to a verified payload. Every claim is type-checked: a claim
/// of the wrong type is an error, never silently "absent".
fn identity_from_claims(
    config: &IssuerConfig,
    claims: &Map<String, Value>,
    now: SystemTime,
) -> Result<Identity, IdentityError> {
    let issuer = required_string(claims, "iss")?;
    if issuer != config.issuer {
        return Err(IdentityError::UnknownIssuer);
    }
    let subject = required_string(claims, "sub")?;
    if subject.is_empty() {
        return Err(IdentityError::invalid("sub", "must not be empty"));
    }
    let audience_ok = match claims.get("aud") {
        None => return Err(IdentityError::MissingClaim("aud".to_owned())),
        Some(Value::String(aud)) => *aud == config.audience,
        Some(Value::Array(auds)) => {
            let mut found = false;
            for aud in auds {
                let aud = aud
                    .as_str()
                    .ok_or_else(|| IdentityError::invalid("aud", "must be a string or an array of strings"))?;
                found |= aud == config.audience;
            }
            found
        }
        Some(_) => {
            return Err(IdentityError::invalid("aud", "must be a string or an array of strings"));
        }
    };
    if !audience_ok {
        return Err(IdentityError::WrongAudience);
    }

    let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let leeway = config.leeway_secs.min(crate::config::MAX_LEEWAY_SECS) as i64;
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| IdentityError::MissingClaim("exp".to_owned()))?;
    let iat = numeric_date(claims, "iat")?.ok_or_else(|| IdentityError::MissingClaim("iat".to_owned()))?;
    if now >= exp.saturating_add(leeway) {
        return Err(IdentityError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(IdentityError::NotYetValid);
    }
    if iat > now.saturating_add(leeway) {
        return Err(IdentityError::IssuedInFuture);
    }
    let expires_at = u64::try_from(exp)
        .ok()
        .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
        .ok_or_else(|| IdentityError::invalid("exp", "is out of range"))?;

    let groups = match claims.get(&config.groups_claim) {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|g| g.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| IdentityError::invalid(&config.groups_claim, "must be an array of strings"))?,
        Some(_) => {
            return Err(IdentityError::invalid(
                &config.groups_claim,
                "must be an array of strings",
            ));
        }
    };

    Ok(Identity {
        issuer: issuer.to_owned(),
        subject: subject.to_owned(),
        kind: config.principal,
        email: optional_string(claims, "email")?,
        name: optional_string(claims, "name")?,
        groups,
        owner: optional_string(claims, &config.owner_claim)?,
        expires_at,
    })
}

fn required_string<'m>(claims: &'m Map<String, Value>, name: &str) -> Result<&'m str, IdentityError> {
    match claims.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(IdentityError::invalid(name, "must be a string")),
        None => Err(IdentityError::MissingClaim(name.to_owned())),
    }
}

fn optional_string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, IdentityError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(IdentityError::invalid(name, "must be a string")),
    }
}

/// A NumericDate (RFC 7519 section 2): a JSON number of seconds, possibly fractional.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, IdentityError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15) {
                Ok(Some(f.floor() as i64))
            } else {
                Err(IdentityError::invalid(name, "is out of range"))
            }
        }
        Some(_) => Err(IdentityError::invalid(name, "must be a number of seconds")),
    }
}
