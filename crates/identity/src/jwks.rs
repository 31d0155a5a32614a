//! Issuer keys: JWK parsing, OIDC discovery, and the JWKS cache.
//!
//! The cache exists because every connection carries a token: without it each login
//! would cost a round trip to the issuer, and a flood of tokens with made-up `kid`s
//! would turn the gateway into an amplifier against the issuer. So: keys are cached for
//! the issuer's `Cache-Control: max-age` (bounded 5 min..24 h), refreshed in the
//! background before they expire, and an unknown `kid` triggers at most one fetch per
//! cooldown, shared by every caller waiting on it (single flight); kids still unknown
//! after a fetch go into a short negative cache.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::config::check_fetch_url;
use crate::error::IdentityError;

/// Timeout for one discovery or JWKS request, connection included.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest discovery or JWKS document we read; real ones are a few KiB.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Minimum time between two fetches for one issuer, whatever triggers them.
pub(crate) const REFETCH_COOLDOWN: Duration = Duration::from_secs(30);
const MIN_MAX_AGE: Duration = Duration::from_secs(5 * 60);
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// How long expired keys stay usable while the issuer cannot be reached: long enough to
/// ride out an issuer outage, short enough that a removed key does not live on for days.
const STALE_GRACE: Duration = Duration::from_secs(60 * 60);
/// Bound on the negative cache so random kids cannot grow memory without limit.
const NEGATIVE_CACHE_CAP: usize = 4096;

/// One issuer key, with the single algorithm it may be used with.
#[derive(Debug)]
pub(crate) struct VerifyingKey {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// The usable keys of one JWKS document.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    unnamed: Vec<Arc<VerifyingKey>>,
}

/// Monotonic and wall-clock time, shiftable in tests so cooldowns and expiry are tested
/// without sleeping.
#[derive(Clone, Debug, Default)]
pub(crate) struct Clock {
    offset_secs: Option<Arc<AtomicU64>>,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Keys fetched from the network for one issuer.
pub(crate) struct RemoteKeys {
    issuer: String,
    jwks_uri: Option<String>,
    fetcher: Arc<Fetcher>,
    clock: Clock,
    current: RwLock<Option<Arc<Cached>>>,
    negative: Mutex<HashMap<String, Instant>>,
    refresh: tokio::sync::Mutex<RefreshState>,
}

struct Cached {
    keys: KeySet,
    fetched_at: Instant,
    max_age: Duration,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    discovered_jwks_uri: Option<String>,
}

/// The HTTP client, built on first use so deployments with only static keys never load
/// the system trust store.
#[derive(Default)]
pub(crate) struct Fetcher {
    client: OnceLock<Result<HttpClient, String>>,
    /// Requests sent, for tests and metrics.
    pub(crate) requests: AtomicU64,
}

impl KeySet {
    /// Reads a JWKS document. Keys we cannot or must not use (symmetric, encryption,
    /// unknown curves) are skipped; a set with no usable key is an error.
    pub(crate) fn from_jwks(doc: &Value) -> Result<Self, String> {
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| "JWKS has no `keys` array".to_owned())?;
        let mut set = KeySet::default();
        for jwk in keys {
            match parse_jwk(jwk) {
                Ok((Some(kid), key)) => match set.by_kid.entry(kid) {
                    Entry::Occupied(e) => {
                        tracing::warn!(kid = %e.key(), "JWKS lists a key id twice; keeping the first.");
                    }
                    Entry::Vacant(e) => {
                        e.insert(Arc::new(key));
                    }
                },
                Ok((None, key)) => set.unnamed.push(Arc::new(key)),
                Err(reason) => tracing::debug!(%reason, "Skipping a JWKS entry."),
            }
        }
        if set.by_kid.is_empty() && set.unnamed.is_empty() {
            return Err("JWKS has no usable signing key".to_owned());
        }
        Ok(set)
    }

    /// The key for a token's `kid`. A token without `kid` is accepted only when exactly
    /// one key of its algorithm exists, so the choice is never ambiguous.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<VerifyingKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None => {
                let mut matching = self.by_kid.values().chain(self.unnamed.iter()).filter(|k| k.alg == alg);
                match (matching.next(), matching.next()) {
                    (Some(k), None) => Some(Arc::clone(k)),
                    _ => None,
                }
            }
        }
    }
}

/// Turns one JWK into a key bound to exactly one algorithm, derived from the key itself
/// (`kty`/`crv`, and `alg` when given) so a token cannot pick a weaker one.
fn parse_jwk(jwk: &Value) -> Result<(Option<String>, VerifyingKey), String> {
    let obj = jwk.as_object().ok_or("JWK is not an object")?;
    let text = |name: &str| -> Result<Option<&str>, String> {
        match obj.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("JWK `{name}` is not a string")),
        }
    };
    let required = |name: &str| -> Result<&str, String> { text(name)?.ok_or_else(|| format!("JWK has no `{name}`")) };
    if let Some(usage) = text("use")?
        && usage != "sig"
    {
        return Err("JWK is not a signing key".to_owned());
    }
    let kid = text("kid")?.map(str::to_owned);
    let declared = text("alg")?;
    let kty = required("kty")?;
    let (alg, key) = match kty {
        "RSA" => {
            let alg = match declared.unwrap_or("RS256") {
                "RS256" => Algorithm::RS256,
                "RS384" => Algorithm::RS384,
                "RS512" => Algorithm::RS512,
                "PS256" => Algorithm::PS256,
                "PS384" => Algorithm::PS384,
                "PS512" => Algorithm::PS512,
                _ => return Err("RSA JWK has an unsupported `alg`".to_owned()),
            };
            let n = b64(required("n")?)?;
            let e = b64(required("e")?)?;
            if n.len() < 256 {
                return Err("RSA JWK is shorter than 2048 bits".to_owned());
            }
            (alg, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        "EC" => {
            let (alg, name, len) = match required("crv")? {
                "P-256" => (Algorithm::ES256, "ES256", 32),
                "P-384" => (Algorithm::ES384, "ES384", 48),
                _ => return Err("EC JWK has an unsupported curve".to_owned()),
            };
            if declared.is_some_and(|d| d != name) {
                return Err("EC JWK `alg` does not match its curve".to_owned());
            }
            let x = required("x")?;
            let y = required("y")?;
            if b64(x)?.len() != len || b64(y)?.len() != len {
                return Err("EC JWK coordinates have the wrong length".to_owned());
            }
            (alg, DecodingKey::from_ec_components(x, y).map_err(|e| e.to_string())?)
        }
        "OKP" => {
            if required("crv")? != "Ed25519" {
                return Err("OKP JWK has an unsupported curve".to_owned());
            }
            if declared.is_some_and(|d| d != "EdDSA" && d != "Ed25519") {
                return Err("OKP JWK `alg` does not match its curve".to_owned());
            }
            let x = required("x")?;
            if b64(x)?.len() != 32 {
                return Err("Ed25519 JWK has the wrong length".to_owned());
            }
            (
                Algorithm::EdDSA,
                DecodingKey::from_ed_components(x).map_err(|e| e.to_string())?,
            )
        }
        // A symmetric key in a public JWKS would let anyone who reads it mint tokens.
        "oct" => return Err("symmetric JWKs are never accepted".to_owned()),
        _ => return Err("JWK has an unsupported `kty`".to_owned()),
    };
    Ok((kid, VerifyingKey { alg, key }))
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "JWK value is not base64url".to_owned())
}

impl Clock {
    pub(crate) fn now(&self) -> Instant {
        Instant::now() + self.offset()
    }

    pub(crate) fn wall(&self) -> SystemTime {
        SystemTime::now() + self.offset()
    }

    fn offset(&self) -> Duration {
        self.offset_secs
            .as_ref()
            .map_or(Duration::ZERO, |o| Duration::from_secs(o.load(Ordering::Relaxed)))
    }

    #[cfg(test)]
    pub(crate) fn manual() -> Self {
        Self {
            offset_secs: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        if let Some(o) = &self.offset_secs {
            o.fetch_add(by.as_secs(), Ordering::Relaxed);
        }
    }
}

impl RemoteKeys {
    pub(crate) fn new(issuer: String, jwks_uri: Option<String>, fetcher: Arc<Fetcher>, clock: Clock) -> Self {
        Self {
            issuer,
            jwks_uri,
            fetcher,
            clock,
            current: RwLock::new(None),
            negative: Mutex::new(HashMap::new()),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
        }
    }

    /// The key for `kid`, fetching the issuer's keys when they are missing, expired or
    /// do not know `kid` (subject to the cooldown).
    pub(crate) async fn key_for(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyingKey>, IdentityError> {
        let now = self.clock.now();
        if let Some(cached) = self.snapshot()
            && cached.is_fresh(now)
        {
            if now.saturating_duration_since(cached.fetched_at) >= cached.max_age / 4 * 3 {
                self.refresh_ahead();
            }
            if let Some(key) = cached.keys.find(kid, alg) {
                return Ok(key);
            }
            if let Some(kid) = kid
                && self.known_unknown(kid, now)
            {
                return Err(IdentityError::UnknownKey);
            }
        }

        // Single flight: one caller fetches, the others wait here and then use its result.
        let mut state = self.refresh.lock().await;
        let now = self.clock.now();
        if let Some(cached) = self.snapshot()
            && cached.is_fresh(now)
            && let Some(key) = cached.keys.find(kid, alg)
        {
            return Ok(key);
        }
        if state.may_fetch(now)
            && let Err(reason) = self.refresh_locked(&mut state).await
        {
            tracing::warn!(issuer = %self.issuer, error = %reason, "Could not refresh issuer keys.");
            let usable = self.snapshot().is_some_and(|c| c.is_usable_stale(now));
            if !usable {
                return Err(self.unavailable(reason));
            }
        }
        let Some(cached) = self.snapshot() else {
            return Err(self.unavailable("keys not fetched yet; will retry after the cooldown".to_owned()));
        };
        if !cached.is_usable_stale(now) {
            return Err(self.unavailable("keys expired and could not be refreshed".to_owned()));
        }
        match cached.keys.find(kid, alg) {
            Some(key) => Ok(key),
            None => {
                if let Some(kid) = kid {
                    self.remember_unknown(kid, now);
                }
                Err(IdentityError::UnknownKey)
            }
        }
    }

    fn snapshot(&self) -> Option<Arc<Cached>> {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn unavailable(&self, reason: String) -> IdentityError {
        IdentityError::KeysUnavailable {
            issuer: self.issuer.clone(),
            reason,
        }
    }

    fn known_unknown(&self, kid: &str, now: Instant) -> bool {
        let negative = self.negative.lock().unwrap_or_else(|p| p.into_inner());
        negative
            .get(kid)
            .is_some_and(|at| now.saturating_duration_since(*at) < REFETCH_COOLDOWN)
    }

    fn remember_unknown(&self, kid: &str, now: Instant) {
        let mut negative = self.negative.lock().unwrap_or_else(|p| p.into_inner());
        if negative.len() >= NEGATIVE_CACHE_CAP {
            negative.retain(|_, at| now.saturating_duration_since(*at) < REFETCH_COOLDOWN);
            if negative.len() >= NEGATIVE_CACHE_CAP {
                negative.clear();
            }
        }
        negative.insert(kid.to_owned(), now);
    }

    /// Starts a background refresh unless one is running or the cooldown forbids it, so
    /// callers never wait for a routine key rotation.
    fn refresh_ahead(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = Arc::clone(self);
        handle.spawn(async move {
            let Ok(mut state) = this.refresh.try_lock() else { return };
            let now = this.clock.now();
            let due = this
                .snapshot()
                .is_none_or(|c| now.saturating_duration_since(c.fetched_at) >= c.max_age / 4 * 3);
            if due
                && state.may_fetch(now)
                && let Err(reason) = this.refresh_locked(&mut state).await
            {
                tracing::warn!(issuer = %this.issuer, error = %reason, "Background key refresh failed.");
            }
        });
    }

    async fn refresh_locked(&self, state: &mut RefreshState) -> Result<(), String> {
        state.last_attempt = Some(self.clock.now());
        let uri = match (&self.jwks_uri, &state.discovered_jwks_uri) {
            (Some(uri), _) | (None, Some(uri)) => uri.clone(),
            (None, None) => {
                let uri = self.discover().await?;
                state.discovered_jwks_uri = Some(uri.clone());
                uri
            }
        };
        let (doc, max_age) = match self.fetcher.get_json(&uri).await {
            Ok(got) => got,
            Err(e) => {
                // The issuer may have moved its keys: discover again next time.
                state.discovered_jwks_uri = None;
                return Err(e);
            }
        };
        let keys = KeySet::from_jwks(&doc)?;
        let cached = Cached {
            keys,
            fetched_at: self.clock.now(),
            max_age,
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(cached));
        self.negative.lock().unwrap_or_else(|p| p.into_inner()).clear();
        tracing::debug!(issuer = %self.issuer, max_age_secs = max_age.as_secs(), "Refreshed issuer keys.");
        Ok(())
    }

    async fn discover(&self) -> Result<String, String> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
        let (doc, _) = self.fetcher.get_json(&url).await?;
        // OIDC Discovery 4.3: a document for another issuer must not be used (mix-up).
        if doc.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err("discovery document names a different issuer".to_owned());
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| "discovery document has no `jwks_uri`".to_owned())?;
        check_fetch_url(uri).map_err(|e| format!("discovered jwks_uri {e}"))?;
        Ok(uri.to_owned())
    }
}

impl Cached {
    fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.fetched_at) < self.max_age
    }

    fn is_usable_stale(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.fetched_at) < self.max_age + STALE_GRACE
    }
}

impl RefreshState {
    fn may_fetch(&self, now: Instant) -> bool {
        self.last_attempt
            .is_none_or(|at| now.saturating_duration_since(at) >= REFETCH_COOLDOWN)
    }
}

impl Fetcher {
    fn client(&self) -> Result<&HttpClient, String> {
        self.client.get_or_init(build_client).as_ref().map_err(Clone::clone)
    }

    /// GETs a JSON document with the URL policy, timeout and size cap applied, and
    /// returns it with the cache lifetime the server asked for.
    pub(crate) async fn get_json(&self, url: &str) -> Result<(Value, Duration), String> {
        check_fetch_url(url).map_err(|e| format!("{url} {e}"))?;
        let uri: http::Uri = url.parse().map_err(|_| format!("{url} is not a URL"))?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "gatehouse")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let fetch = async {
            let response = self
                .client()?
                .request(request)
                .await
                .map_err(|e| format!("request to {url} failed: {e}"))?;
            if response.status() != http::StatusCode::OK {
                return Err(format!("{url} answered {}", response.status()));
            }
            let max_age = cache_max_age(response.headers());
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading {url} failed: {e}"))?
                .to_bytes();
            let doc: Value = serde_json::from_slice(&body).map_err(|_| format!("{url} did not return JSON"))?;
            Ok((doc, max_age))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("request to {url} timed out"))?
    }
}

fn build_client() -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(FETCH_TIMEOUT));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = match HttpsConnectorBuilder::new().with_provider_and_native_roots(Arc::clone(&provider)) {
        Ok(builder) => builder,
        Err(error) => {
            // Fail closed: without trust anchors every https fetch fails, while loopback
            // http (development, tests) still works.
            tracing::warn!(%error, "No system trust anchors; https key fetches will fail.");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS configuration failed: {e}"))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let connector = builder.https_or_http().enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The cache lifetime from `Cache-Control`, bounded so an issuer can neither make us
/// fetch constantly (`no-cache`, `max-age=0`) nor pin a key for days.
pub(crate) fn cache_max_age(headers: &http::HeaderMap) -> Duration {
    let Some(value) = headers.get(http::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()) else {
        return DEFAULT_MAX_AGE;
    };
    let mut max_age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return MIN_MAX_AGE;
        }
        if let Some(secs) = lower.strip_prefix("max-age=") {
            max_age = secs.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    max_age.map_or(DEFAULT_MAX_AGE, |d| d.clamp(MIN_MAX_AGE, MAX_MAX_AGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::CACHE_CONTROL, v.parse().unwrap());
        h
    }

    #[test]
    fn cache_control_is_bounded() {
        assert_eq!(cache_max_age(&http::HeaderMap::new()), DEFAULT_MAX_AGE);
        assert_eq!(cache_max_age(&headers("public, max-age=600")), Duration::from_secs(600));
        assert_eq!(cache_max_age(&headers("max-age=0")), MIN_MAX_AGE);
        assert_eq!(cache_max_age(&headers("max-age=99999999")), MAX_MAX_AGE);
        assert_eq!(cache_max_age(&headers("no-store")), MIN_MAX_AGE);
        assert_eq!(cache_max_age(&headers("max-age=abc")), DEFAULT_MAX_AGE);
    }

    #[test]
    fn symmetric_and_encryption_keys_are_skipped() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
            {"kty": "EC", "crv": "P-256", "use": "enc", "kid": "e", "x": "AA", "y": "AA"}
        ]});
        assert!(KeySet::from_jwks(&doc).unwrap_err().contains("no usable"));
        assert!(KeySet::from_jwks(&serde_json::json!({"nokeys": []})).is_err());
    }
}
