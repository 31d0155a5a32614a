//! Verifier tests with hostile tokens, real signatures (keys generated with aws-lc-rs at
//! test time) and a real HTTP issuer on 127.0.0.1:0 for discovery, caching and rotation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
    RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair, RsaPublicKeyComponents,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::jwks::{Clock, REFETCH_COOLDOWN};
use crate::{DevIssuer, IdentityError, IssuerConfig, MintRequest, PrincipalKind, Verifier};

const ISS: &str = "https://idp.example.com";
const AUD: &str = "gatehouse";

enum KeyKind {
    Rs256,
    Ps256,
    Es256(EcdsaKeyPair),
    Es384(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct TestKey {
    kind: KeyKind,
    kid: String,
}

fn rsa() -> &'static RsaKeyPair {
    static KEY: OnceLock<RsaKeyPair> = OnceLock::new();
    KEY.get_or_init(|| RsaKeyPair::generate(KeySize::Rsa2048).unwrap())
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TestKey {
    fn es256(kid: &str) -> Self {
        let k = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        Self {
            kind: KeyKind::Es256(k),
            kid: kid.into(),
        }
    }
    fn es384(kid: &str) -> Self {
        let k = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
        Self {
            kind: KeyKind::Es384(k),
            kid: kid.into(),
        }
    }
    fn ed(kid: &str) -> Self {
        Self {
            kind: KeyKind::Ed(Ed25519KeyPair::generate().unwrap()),
            kid: kid.into(),
        }
    }
    fn rs256(kid: &str) -> Self {
        Self {
            kind: KeyKind::Rs256,
            kid: kid.into(),
        }
    }
    fn ps256(kid: &str) -> Self {
        Self {
            kind: KeyKind::Ps256,
            kid: kid.into(),
        }
    }

    fn alg(&self) -> &'static str {
        match self.kind {
            KeyKind::Rs256 => "RS256",
            KeyKind::Ps256 => "PS256",
            KeyKind::Es256(_) => "ES256",
            KeyKind::Es384(_) => "ES384",
            KeyKind::Ed(_) => "EdDSA",
        }
    }

    fn public_bytes(&self) -> Vec<u8> {
        match &self.kind {
            KeyKind::Rs256 | KeyKind::Ps256 => rsa().public_key().as_ref().to_vec(),
            KeyKind::Es256(k) | KeyKind::Es384(k) => k.public_key().as_ref().to_vec(),
            KeyKind::Ed(k) => k.public_key().as_ref().to_vec(),
        }
    }

    fn jwk(&self) -> Value {
        match &self.kind {
            KeyKind::Rs256 | KeyKind::Ps256 => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(rsa().public_key());
                json!({"kty": "RSA", "kid": self.kid, "alg": self.alg(), "use": "sig", "n": b64(&c.n), "e": b64(&c.e)})
            }
            KeyKind::Es256(k) | KeyKind::Es384(k) => {
                let p = k.public_key().as_ref();
                let n = (p.len() - 1) / 2;
                let crv = if n == 32 { "P-256" } else { "P-384" };
                json!({"kty": "EC", "kid": self.kid, "crv": crv, "x": b64(&p[1..=n]), "y": b64(&p[n + 1..])})
            }
            KeyKind::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "x": b64(k.public_key())})
            }
        }
    }

    fn sign_raw(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.kind {
            KeyKind::Rs256 | KeyKind::Ps256 => {
                let pad: &'static dyn aws_lc_rs::signature::RsaEncoding = if matches!(self.kind, KeyKind::Rs256) {
                    &RSA_PKCS1_SHA256
                } else {
                    &RSA_PSS_SHA256
                };
                let mut sig = vec![0; rsa().public_modulus_len()];
                rsa().sign(pad, &rng, input, &mut sig).unwrap();
                sig
            }
            KeyKind::Es256(k) | KeyKind::Es384(k) => k.sign(&rng, input).unwrap().as_ref().to_vec(),
            KeyKind::Ed(k) => k.sign(input).as_ref().to_vec(),
        }
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let sig = self.sign_raw(input.as_bytes());
        format!("{input}.{}", b64(sig))
    }

    fn header(&self) -> Value {
        json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid})
    }

    fn token(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "ann", "aud": AUD, "iat": now(), "exp": now() + 300,
           "email": "ann@example.com", "groups": ["dba", "oncall"]})
}

fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()})
}

fn verifier(keys: &[&TestKey]) -> Verifier {
    Verifier::new(vec![])
        .unwrap()
        .with_static_keys(IssuerConfig::new(ISS, AUD, PrincipalKind::User), jwks(keys))
        .unwrap()
}

async fn reject(v: &Verifier, token: &str) -> IdentityError {
    let err = v.verify(token).await.expect_err("token must be rejected");
    assert!(err.is_client_fault(), "{err}");
    assert!(
        token.is_empty() || !err.to_string().contains(token),
        "error echoes the token"
    );
    err
}

#[tokio::test]
async fn accepts_every_supported_algorithm() {
    for key in [
        TestKey::rs256("r"),
        TestKey::ps256("p"),
        TestKey::es256("e"),
        TestKey::es384("e3"),
        TestKey::ed("d"),
    ] {
        let v = verifier(&[&key]);
        let id = v
            .verify(&key.token(&claims()))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", key.alg()));
        assert_eq!(id.subject, "ann");
        assert_eq!(id.issuer, ISS);
        assert_eq!(id.kind, PrincipalKind::User);
        assert_eq!(id.groups, ["dba", "oncall"]);
        assert_eq!(id.email.as_deref(), Some("ann@example.com"));
    }
}

#[tokio::test]
async fn rejects_alg_none() {
    let key = TestKey::es256("k");
    let v = verifier(&[&key]);
    let input = format!(
        "{}.{}",
        b64(json!({"alg": "none", "kid": "k"}).to_string()),
        b64(claims().to_string())
    );
    assert!(matches!(
        reject(&v, &format!("{input}.{}", b64("x"))).await,
        IdentityError::AlgorithmNotAllowed
    ));
    assert!(matches!(
        reject(&v, &format!("{input}.")).await,
        IdentityError::Malformed(_)
    ));
    let none_lower = format!(
        "{}.{}.{}",
        b64(json!({"alg": "NONE"}).to_string()),
        b64(claims().to_string()),
        b64("x")
    );
    assert!(matches!(
        reject(&v, &none_lower).await,
        IdentityError::AlgorithmNotAllowed
    ));
}

#[tokio::test]
async fn rejects_hs256_keyed_with_the_public_key() {
    for key in [TestKey::es256("k"), TestKey::rs256("k")] {
        let v = verifier(&[&key]);
        for secret in [key.public_bytes(), key.jwk().to_string().into_bytes()] {
            let input = format!(
                "{}.{}",
                b64(json!({"alg": "HS256", "kid": "k"}).to_string()),
                b64(claims().to_string())
            );
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &secret), input.as_bytes());
            let token = format!("{input}.{}", b64(tag));
            assert!(matches!(reject(&v, &token).await, IdentityError::AlgorithmNotAllowed));
        }
    }
}

#[tokio::test]
async fn rejects_keys_carried_in_the_header() {
    let key = TestKey::es256("k");
    let v = verifier(&[&key]);
    for (field, value) in [
        ("jwk", key.jwk()),
        ("jku", json!("https://evil.example/jwks")),
        ("x5u", json!("https://evil.example/cert")),
        ("x5c", json!(["MIIB"])),
    ] {
        let mut header = key.header();
        header[field] = value;
        match reject(&v, &key.sign(&header, &claims())).await {
            IdentityError::EmbeddedKey(f) => assert_eq!(f, field),
            other => panic!("{field}: {other}"),
        }
    }
    let mut header = key.header();
    header["crit"] = json!(["b64"]);
    assert!(matches!(
        reject(&v, &key.sign(&header, &claims())).await,
        IdentityError::CriticalHeader
    ));
}

#[tokio::test]
async fn rejects_a_header_alg_that_differs_from_the_key() {
    let key = TestKey::rs256("k");
    let v = verifier(&[&key]);
    let pss = TestKey::ps256("k");
    assert!(matches!(
        reject(&v, &pss.token(&claims())).await,
        IdentityError::AlgorithmMismatch
    ));
    let ec = TestKey::es256("k");
    assert!(matches!(
        reject(&v, &ec.token(&claims())).await,
        IdentityError::AlgorithmMismatch
    ));
}

#[tokio::test]
async fn rejects_bad_signatures_and_foreign_keys() {
    let key = TestKey::es256("k");
    let v = verifier(&[&key]);
    let token = key.token(&claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut tampered = claims();
    tampered["sub"] = json!("root");
    parts[1] = b64(tampered.to_string());
    assert!(matches!(
        reject(&v, &parts.join(".")).await,
        IdentityError::BadSignature
    ));
    let impostor = TestKey::es256("k");
    assert!(matches!(
        reject(&v, &impostor.token(&claims())).await,
        IdentityError::BadSignature
    ));
    let unknown = TestKey::es256("other");
    assert!(matches!(
        reject(&v, &unknown.token(&claims())).await,
        IdentityError::UnknownKey
    ));
}

#[tokio::test]
async fn issuer_must_match_exactly() {
    let key = TestKey::es256("k");
    let v = verifier(&[&key]);
    for iss in [
        "https://idp.example.com/",
        "https://IDP.example.com",
        "https://evil.example",
    ] {
        let mut c = claims();
        c["iss"] = json!(iss);
        assert!(
            matches!(reject(&v, &key.token(&c)).await, IdentityError::UnknownIssuer),
            "{iss}"
        );
    }
    let mut c = claims();
    c["iss"] = json!([ISS]);
    assert!(matches!(
        reject(&v, &key.token(&c)).await,
        IdentityError::InvalidClaim { .. }
    ));
}

#[tokio::test]
async fn issuer_keys_are_not_interchangeable() {
    let a = TestKey::es256("a");
    let b = TestKey::es256("b");
    let v = Verifier::new(vec![])
        .unwrap()
        .with_static_keys(IssuerConfig::new(ISS, AUD, PrincipalKind::User), jwks(&[&a]))
        .unwrap()
        .with_static_keys(
            IssuerConfig::new("https://agents.example.com", AUD, PrincipalKind::Agent),
            jwks(&[&b]),
        )
        .unwrap();
    // Signed by the agent issuer's key but claiming the user issuer.
    assert!(matches!(
        reject(&v, &b.token(&claims())).await,
        IdentityError::UnknownKey
    ));
    let mut c = claims();
    c["iss"] = json!("https://agents.example.com");
    c["owner"] = json!("ann@example.com");
    let id = v.verify(&b.token(&c)).await.unwrap();
    assert!(id.is_agent());
    assert_eq!(id.owner.as_deref(), Some("ann@example.com"));
}

#[tokio::test]
async fn audience_must_contain_ours() {
    let key = TestKey::es256("k");
    let v = verifier(&[&key]);
    let mut c = claims();
    c["aud"] = json!("other-service");
    assert!(matches!(reject(&v, &key.token(&c)).await, IdentityError::WrongAudience));
    c["aud"] = json!(["other", "also-other"]);
    assert!(matches!(reject(&v, &key.token(&c)).await, IdentityError::WrongAudience));
    c["aud"] = json!(["other", AUD]);
    assert!(v.verify(&key.token(&c)).await.is_ok());
    c["aud"] = json!([AUD, 7]);
    assert!(matches!(
        reject(&v, &key.token(&c)).await,
        IdentityError::InvalidClaim { .. }
    ));
    c.as_object_mut().unwrap().remove("aud");
    assert!(matches!(
        reject(&v, &key.token(&c)).await,
        IdentityError::MissingClaim(_)
    ));
}

#[tokio::test]
async fn time_claims_are_enforced_with_bounded_leeway() {
    let key = TestKey::es256("k");
    let v = verifier(&[&key]);
    let mut c = claims();
    c["exp"] = json!(now() - 61);
    assert!(matches!(reject(&v, &key.token(&c)).await, IdentityError::Expired));
    c["exp"] = json!(now() - 30);
    assert!(v.verify(&key.token(&c)).await.is_ok(), "within leeway");
    let mut c = claims();
    c["nbf"] = json!(now() + 120);
    assert!(matches!(reject(&v, &key.token(&c)).await, IdentityError::NotYetValid));
    c["nbf"] = json!(now() - 5);
    assert!(v.verify(&key.token(&c)).await.is_ok());
    let mut c = claims();
    c["iat"] = json!(now() + 120);
    assert!(matches!(
        reject(&v, &key.token(&c)).await,
        IdentityError::IssuedInFuture
    ));
    for required in ["exp", "iat", "sub"] {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(required);
        match reject(&v, &key.token(&c)).await {
            IdentityError::MissingClaim(name) => assert_eq!(name, required),
            other => panic!("{required}: {other}"),
        }
    }
}

#[tokio::test]
async fn wrongly_typed_claims_are_errors_not_absent() {
    let key = TestKey::es256("k");
    let v = verifier(&[&key]);
    for (claim, value) in [
        ("exp", json!((now() + 300).to_string())),
        ("iat", json!("yesterday")),
        ("nbf", json!(null)),
        ("sub", json!(42)),
        ("groups", json!("dba")),
        ("groups", json!(["dba", 1])),
        ("email", json!(["a@b"])),
        ("owner", json!({"id": 1})),
    ] {
        let mut c = claims();
        c[claim] = value;
        match reject(&v, &key.token(&c)).await {
            IdentityError::InvalidClaim { claim: name, .. } => assert_eq!(name, claim),
            other => panic!("{claim}: {other}"),
        }
    }
}

#[tokio::test]
async fn configured_claim_names_are_used() {
    let key = TestKey::es256("k");
    let mut cfg = IssuerConfig::new(ISS, AUD, PrincipalKind::Agent);
    cfg.groups_claim = "roles".into();
    cfg.owner_claim = "act_for".into();
    let v = Verifier::new(vec![])
        .unwrap()
        .with_static_keys(cfg, jwks(&[&key]))
        .unwrap();
    let mut c = claims();
    c["roles"] = json!(["deployer"]);
    c["act_for"] = json!("bob@example.com");
    let id = v.verify(&key.token(&c)).await.unwrap();
    assert_eq!(id.groups, ["deployer"]);
    assert_eq!(id.owner.as_deref(), Some("bob@example.com"));
    assert!(id.is_agent());
}

#[tokio::test]
async fn rejects_malformed_and_oversized_tokens() {
    let key = TestKey::es256("k");
    let v = verifier(&[&key]);
    let good = key.token(&claims());
    let mut parts = good.split('.');
    let (h, p, s) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    for bad in [
        format!("{h}.{p}"),
        format!("{h}.{p}.{s}.{s}.{s}"),
        format!("{h}.{p}.{s}."),
        String::new(),
    ] {
        assert!(matches!(reject(&v, &bad).await, IdentityError::Malformed(_)), "{bad}");
    }
    assert!(matches!(
        reject(&v, &format!("{h}.{p}.{s}=")).await,
        IdentityError::Malformed(_)
    ));
    assert!(matches!(
        reject(&v, &format!("{}.{p}.{s}", b64("[1]"))).await,
        IdentityError::Malformed(_)
    ));
    let mut c = claims();
    c["pad"] = json!("x".repeat(17 * 1024));
    assert!(matches!(reject(&v, &key.token(&c)).await, IdentityError::TooLarge));
}

#[test]
fn jwks_file_is_loaded_at_construction() {
    let key = TestKey::ed("file");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&key]).to_string()).unwrap();
    let mut cfg = IssuerConfig::new(ISS, AUD, PrincipalKind::User);
    cfg.jwks_file = Some(path.clone());
    let v = Verifier::new(vec![cfg.clone()]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(rt.block_on(v.verify(&key.token(&claims()))).unwrap().subject, "ann");
    std::fs::write(&path, "not json").unwrap();
    assert!(matches!(
        Verifier::new(vec![cfg.clone()]),
        Err(IdentityError::Config(_))
    ));
    cfg.jwks_file = Some(dir.path().join("missing.json"));
    assert!(matches!(Verifier::new(vec![cfg]), Err(IdentityError::Io { .. })));
}

#[test]
fn duplicate_and_invalid_issuers_are_refused() {
    let c = IssuerConfig::new(ISS, AUD, PrincipalKind::User);
    assert!(Verifier::new(vec![c.clone(), c.clone()]).is_err());
    let mut bad = c;
    bad.leeway_secs = 600;
    assert!(matches!(Verifier::new(vec![bad]), Err(IdentityError::Config(m)) if m.contains("leeway_secs")));
}

#[test]
fn verifier_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Verifier>();
}

// --- A real issuer over HTTP: discovery, caching, single flight, rotation. ---

#[derive(Clone)]
struct Issuer {
    jwks: Arc<Mutex<Value>>,
    jwks_hits: Arc<AtomicUsize>,
    discovery_hits: Arc<AtomicUsize>,
    base: String,
}

async fn start_issuer(initial: Value) -> Issuer {
    use axum::extract::State;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let issuer = Issuer {
        jwks: Arc::new(Mutex::new(initial)),
        jwks_hits: Arc::default(),
        discovery_hits: Arc::default(),
        base: base.clone(),
    };
    let discovery = |State(s): State<Issuer>| async move {
        s.discovery_hits.fetch_add(1, Ordering::SeqCst);
        axum::Json(json!({"issuer": s.base, "jwks_uri": format!("{}/keys", s.base)}))
    };
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        // A second issuer path on the same host that (wrongly) names the first issuer.
        .route("/tenant/.well-known/openid-configuration", get(discovery))
        .route(
            "/keys",
            get(|State(s): State<Issuer>| async move {
                s.jwks_hits.fetch_add(1, Ordering::SeqCst);
                let body = s.jwks.lock().unwrap().clone();
                ([(http::header::CACHE_CONTROL, "public, max-age=600")], axum::Json(body))
            }),
        )
        .with_state(issuer.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    issuer
}

fn claims_for(iss: &str) -> Value {
    let mut c = claims();
    c["iss"] = json!(iss);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_flood_fetches_once_per_cooldown() {
    let key = TestKey::es256("real");
    let issuer = start_issuer(jwks(&[&key])).await;
    let clock = Clock::manual();
    let v = Arc::new(
        Verifier::with_clock(
            vec![IssuerConfig::new(&issuer.base, AUD, PrincipalKind::User)],
            clock.clone(),
        )
        .unwrap(),
    );
    let flood = |round: u32| {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let forged = TestKey {
                kind: KeyKind::Ed(Ed25519KeyPair::generate().unwrap()),
                kid: format!("r{round}-{i}"),
            };
            let token = forged.token(&claims_for(&issuer.base));
            let v = Arc::clone(&v);
            tasks.spawn(async move { v.verify(&token).await });
        }
        tasks
    };
    for result in flood(0).join_all().await {
        assert!(matches!(result, Err(IdentityError::UnknownKey)), "{result:?}");
    }
    assert_eq!(issuer.discovery_hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        issuer.jwks_hits.load(Ordering::SeqCst),
        1,
        "one fetch for 200 random kids"
    );
    // The real key still works during the flood, from the cache.
    assert!(v.verify(&key.token(&claims_for(&issuer.base))).await.is_ok());
    assert_eq!(issuer.jwks_hits.load(Ordering::SeqCst), 1);

    clock.advance(REFETCH_COOLDOWN + Duration::from_secs(1));
    for result in flood(1).join_all().await {
        assert!(matches!(result, Err(IdentityError::UnknownKey)));
    }
    assert_eq!(
        issuer.jwks_hits.load(Ordering::SeqCst),
        2,
        "one more fetch after the cooldown"
    );
    assert_eq!(issuer.discovery_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_key_rotation_without_rebuilding() {
    let old = TestKey::es256("old");
    let new = TestKey::rs256("new");
    let issuer = start_issuer(jwks(&[&old])).await;
    let clock = Clock::manual();
    let v = Verifier::with_clock(
        vec![IssuerConfig::new(&issuer.base, AUD, PrincipalKind::User)],
        clock.clone(),
    )
    .unwrap();
    let id = v.verify(&old.token(&claims_for(&issuer.base))).await.unwrap();
    assert_eq!(id.issuer, issuer.base);
    assert_eq!(issuer.jwks_hits.load(Ordering::SeqCst), 1);

    // The issuer rotates: publishes the new key and drops the old one.
    *issuer.jwks.lock().unwrap() = jwks(&[&new]);
    let new_token = new.token(&claims_for(&issuer.base));
    // Within the cooldown the unknown kid is refused without a fetch.
    assert!(matches!(v.verify(&new_token).await, Err(IdentityError::UnknownKey)));
    assert_eq!(issuer.jwks_hits.load(Ordering::SeqCst), 1);
    clock.advance(REFETCH_COOLDOWN);
    assert_eq!(v.verify(&new_token).await.unwrap().subject, "ann");
    assert_eq!(issuer.jwks_hits.load(Ordering::SeqCst), 2);
    // The old key is gone with the refreshed set.
    assert!(matches!(
        v.verify(&old.token(&claims_for(&issuer.base))).await,
        Err(IdentityError::UnknownKey)
    ));

    // Cached for max-age (600 s): past it, the next verification refetches.
    clock.advance(Duration::from_secs(601));
    assert!(
        matches!(v.verify(&new_token).await, Err(IdentityError::Expired)),
        "token itself expired by now"
    );
    assert_eq!(issuer.jwks_hits.load(Ordering::SeqCst), 3);
    assert_eq!(issuer.discovery_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_refreshed_ahead_of_expiry_in_the_background() {
    let key = TestKey::es256("k");
    let issuer = start_issuer(jwks(&[&key])).await;
    let clock = Clock::manual();
    let v = Verifier::with_clock(
        vec![IssuerConfig::new(&issuer.base, AUD, PrincipalKind::User)],
        clock.clone(),
    )
    .unwrap();
    let mut c = claims_for(&issuer.base);
    c["exp"] = json!(now() + 3600);
    let token = key.token(&c);
    v.verify(&token).await.unwrap();
    assert_eq!(issuer.jwks_hits.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_secs(300));
    v.verify(&token).await.unwrap();
    assert_eq!(
        issuer.jwks_hits.load(Ordering::SeqCst),
        1,
        "half-way through max-age: cached"
    );
    // Three quarters into max-age (600 s) the cached key is still served, and a refresh starts.
    clock.advance(Duration::from_secs(160));
    v.verify(&token).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while issuer.jwks_hits.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("background refresh");
}

#[tokio::test]
async fn keys_are_never_fetched_over_plain_http_from_remote_hosts() {
    let key = TestKey::es256("k");
    let iss = "http://idp.gatehouse.invalid";
    let v = Verifier::new(vec![IssuerConfig::new(iss, AUD, PrincipalKind::User)]).unwrap();
    match v.verify(&key.token(&claims_for(iss))).await {
        Err(IdentityError::KeysUnavailable { reason, .. }) => {
            assert!(reason.contains("https"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn discovery_for_another_issuer_is_refused() {
    let key = TestKey::es256("k");
    let issuer = start_issuer(jwks(&[&key])).await;
    // Same server, but configured under a different issuer string (trailing path).
    let configured = format!("{}/tenant", issuer.base);
    let v = Verifier::new(vec![IssuerConfig::new(&configured, AUD, PrincipalKind::User)]).unwrap();
    match v.verify(&key.token(&claims_for(&configured))).await {
        Err(IdentityError::KeysUnavailable { reason, .. }) => {
            assert!(reason.contains("different issuer"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(issuer.discovery_hits.load(Ordering::SeqCst), 1);
    assert_eq!(issuer.jwks_hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unreachable_issuer_is_not_the_clients_fault() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let key = TestKey::es256("k");
    let v = Verifier::new(vec![IssuerConfig::new(&base, AUD, PrincipalKind::User)]).unwrap();
    let err = v.verify(&key.token(&claims_for(&base))).await.unwrap_err();
    assert!(matches!(err, IdentityError::KeysUnavailable { .. }), "{err}");
    assert!(!err.is_client_fault());
}

#[tokio::test]
async fn oversized_jwks_is_refused() {
    let key = TestKey::es256("k");
    let mut doc = jwks(&[&key]);
    doc["padding"] = json!("x".repeat(2 * 1024 * 1024));
    let issuer = start_issuer(doc).await;
    let v = Verifier::new(vec![IssuerConfig::new(&issuer.base, AUD, PrincipalKind::User)]).unwrap();
    let err = v.verify(&key.token(&claims_for(&issuer.base))).await.unwrap_err();
    assert!(matches!(err, IdentityError::KeysUnavailable { .. }), "{err}");
}

// --- The development issuer. ---

#[tokio::test]
async fn dev_issuer_tokens_verify_and_key_is_reused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let dev = DevIssuer::load_or_create(dir.path(), "http://127.0.0.1:8080/", AUD).unwrap();
    let mode = std::fs::metadata(dir.path().join("dev-issuer/signing-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(dev.user_issuer(), "http://127.0.0.1:8080/dev/users");
    assert_eq!(dev.agent_issuer(), "http://127.0.0.1:8080/dev/agents");
    let doc = dev.discovery_document(&dev.agent_issuer());
    assert_eq!(doc["issuer"], dev.agent_issuer());
    assert_eq!(doc["jwks_uri"], "http://127.0.0.1:8080/dev/jwks.json");

    let mut v = Verifier::new(vec![]).unwrap();
    for cfg in dev.issuer_configs() {
        v = v.with_static_keys(cfg, dev.jwks()).unwrap();
    }
    let req = MintRequest {
        subject: "build-bot".into(),
        groups: vec!["ci".into()],
        ttl: Duration::from_secs(600),
        agent: true,
        email: None,
        name: Some("Build bot".into()),
        owner: Some("ann@example.com".into()),
    };
    let token = dev.mint(&req).unwrap();
    let id = v.verify(&token).await.unwrap();
    assert!(id.is_agent());
    assert_eq!(id.issuer, dev.agent_issuer());
    assert_eq!(id.owner.as_deref(), Some("ann@example.com"));
    assert_eq!(id.groups, ["ci"]);
    let user = v
        .verify(
            &dev.mint(&MintRequest {
                agent: false,
                ..req.clone()
            })
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(user.kind, PrincipalKind::User);
    assert!(!user.same_person(&id));

    // Restart: same key, so tokens minted before still verify.
    let again = DevIssuer::load_or_create(dir.path(), "http://127.0.0.1:8080", AUD).unwrap();
    assert_eq!(again.kid(), dev.kid());
    assert!(v.verify(&again.mint(&req).unwrap()).await.is_ok());
    assert!(
        dev.mint(&MintRequest {
            ttl: Duration::from_secs(2 * 86_400),
            ..req
        })
        .is_err()
    );

    // A key readable by others is refused.
    let path = dir.path().join("dev-issuer/signing-key.pem");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(DevIssuer::load_or_create(dir.path(), "http://127.0.0.1:8080", AUD).is_err());
    assert!(!format!("{dev:?}").contains("BEGIN"));
}
