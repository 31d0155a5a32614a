//! The admin listener of a real `gatehouse serve`: health, readiness, metrics, the development
//! issuer's discovery, the credential API, and policy reload with a broken file.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::time::Duration;

use gatehouse_testkit::gateway::{GatewayBuilder, TestGateway};

fn gateway() -> TestGateway {
    GatewayBuilder::new(env!("CARGO_BIN_EXE_gatehouse"))
        .start()
        .expect("gateway starts")
}

#[test]
fn health_readiness_and_metrics_answer() {
    let gw = gateway();
    assert_eq!(gw.get("/healthz").unwrap(), (200, "ok\n".to_string()));
    let (status, body) = gw.get("/readyz").unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = gw.get("/metrics").unwrap();
    assert_eq!(status, 200);
    for name in [
        "gatehouse_sessions_total{protocol=\"postgres\"}",
        "gatehouse_decisions_total{outcome=\"deny\"}",
        "gatehouse_audit_write_seconds_count",
        "gatehouse_audit_healthy 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
}

#[test]
fn development_issuer_serves_discovery_and_keys_that_verify_its_tokens() {
    let gw = gateway();
    let (status, doc) = gw.get("/dev/users/.well-known/openid-configuration").unwrap();
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["issuer"], format!("{}/dev/users", gw.admin_url()));
    let jwks_uri = doc["jwks_uri"].as_str().unwrap();
    let path = jwks_uri.strip_prefix(&gw.admin_url()).unwrap();
    let (status, jwks) = gw.get(path).unwrap();
    assert_eq!(status, 200);
    let jwks: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    assert!(jwks["keys"].as_array().is_some_and(|k| !k.is_empty()));
    for key in jwks["keys"].as_array().unwrap() {
        assert!(key.get("d").is_none(), "a JWKS never carries the private part");
    }

    // A minted token authenticates to the admin API; garbage and no token do not.
    let token = gw.mint("alice", &["dba"], false).unwrap();
    let (status, body) = gw.request("GET", "/api/credentials", Some(&token), None).unwrap();
    assert_eq!((status, body.as_str()), (200, "[]"));
    let (status, body) = gw
        .request("GET", "/api/credentials", Some("eyJhbGciOiJub25lIn0.e30."), None)
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token rejected"), "{body}");
    let (status, _) = gw.request("GET", "/api/credentials", None, None).unwrap();
    assert_eq!(status, 401);
}

#[test]
fn credential_for_an_unknown_target_is_refused_with_a_json_error() {
    let gw = gateway();
    let token = gw.mint("alice", &["dba"], false).unwrap();
    let (status, body) = gw
        .request(
            "POST",
            "/api/credentials",
            Some(&token),
            Some(r#"{"target":"nowhere"}"#),
        )
        .unwrap();
    assert_eq!(status, 403, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("nowhere"));
    let (status, body) = gw
        .request("POST", "/api/credentials", Some(&token), Some(r#"{"tagret":"x"}"#))
        .unwrap();
    assert_eq!(status, 400, "{body}");
}

#[test]
fn a_broken_policy_file_keeps_the_old_set_and_shows_on_readyz() {
    let gw = gateway();
    let generation = |gw: &TestGateway| -> u64 {
        let (_, metrics) = gw.get("/metrics").unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("gatehouse_policy_generation "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    let before = generation(&gw);
    let broken = gw.policy_dir().join("zz-broken.cedar");
    std::fs::write(
        &broken,
        "permit (principal, action == Postgres::Action::\"nosuch\", resource);\n",
    )
    .unwrap();
    let noticed = gw.wait_for(Duration::from_secs(10), || {
        gw.get("/readyz")
            .map(|(s, b)| s == 503 && b.contains("zz-broken.cedar"))
            .unwrap_or(false)
    });
    assert!(noticed, "readyz did not report the broken file; log:\n{}", gw.log());
    assert_eq!(generation(&gw), before, "the broken set did not replace the old one");

    std::fs::remove_file(&broken).unwrap();
    gw.hangup().unwrap();
    let recovered = gw.wait_for(Duration::from_secs(10), || {
        gw.get("/readyz").map(|(s, _)| s == 200).unwrap_or(false)
    });
    assert!(recovered, "readyz did not recover; log:\n{}", gw.log());
    assert!(generation(&gw) > before);

    // Both reload outcomes were audited, and the log verifies.
    let out = gw
        .cli(&["audit", "verify", "--config", gw.config_path().to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(gw.audit_dir().join("segment-000001.jsonl")).unwrap();
    assert!(text.contains("policy_reload_failed"), "{text}");
    assert!(text.contains("policy_reloaded"), "{text}");
}

#[test]
fn admin_api_over_tls_serves_the_cli() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = gatehouse_testkit::tls::TestCerts::generate(certs_dir.path()).unwrap();
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_gatehouse"))
        .admin_tls(&certs.server_cert, &certs.server_key)
        .start()
        .expect("gateway starts");
    let token = gw.mint("alice", &["dba"], false).unwrap();
    let url = format!("https://localhost:{}", gw.admin_addr().port());
    let list = |ca: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["credentials", "list", "--admin-url", &url])
            .env("GATEHOUSE_TOKEN", &token)
            // rustls-native-certs reads the trusted roots from here.
            .env("SSL_CERT_FILE", ca)
            .output()
            .unwrap()
    };
    let out = list(&certs.ca_cert);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ID"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A client that does not trust the gateway's CA gets no answer.
    let other = tempfile::tempdir().unwrap();
    let stranger = gatehouse_testkit::tls::TestCerts::generate(other.path()).unwrap();
    let out = list(&stranger.ca_cert);
    assert!(!out.status.success());
    // Plain HTTP to the TLS listener does not work either.
    assert!(gw.get("/healthz").map(|(s, _)| s != 200).unwrap_or(true));
}

#[test]
fn the_openapi_document_describes_every_api_route() {
    let gw = gateway();
    let (status, body) = gw.get("/api/openapi.json").unwrap();
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    // Every route the admin router serves (admin.rs) is documented, with its methods.
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/api/openapi.json", "get"),
        ("/api/credentials", "get"),
        ("/api/credentials", "post"),
        ("/api/credentials/{id}", "delete"),
        ("/api/approvals", "get"),
        ("/api/approvals/{id}", "get"),
        ("/api/approvals/{id}/approve", "post"),
        ("/api/approvals/{id}/deny", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} documented"
        );
        let concrete = path.replace("{id}", "X");
        let (status, _) = gw.request(&method.to_uppercase(), &concrete, None, None).unwrap();
        assert_ne!(status, 404, "{method} {path} is served");
        assert_ne!(status, 405, "{method} {path} is served");
    }
}

#[test]
fn approval_calls_need_a_token_and_explain_their_errors() {
    let gw = gateway();
    let (status, body) = gw.request("GET", "/api/approvals", None, None).unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("missing bearer token"), "{body}");
    let lead = gw.mint("dora", &["dba-leads"], false).unwrap();
    let (status, body) = gw
        .request("GET", "/api/approvals?state=maybe", Some(&lead), None)
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown state"), "{body}");
    let (status, body) = gw.request("GET", "/api/approvals", Some(&lead), None).unwrap();
    assert_eq!((status, body.trim()), (200, "[]"));
    let (status, body) = gw
        .request("POST", "/api/approvals/NOPE-NOPE-NOPE/deny", Some(&lead), Some("{}"))
        .unwrap();
    assert_eq!(status, 400, "a denial needs a reason: {body}");
    let (status, body) = gw
        .request("POST", "/api/approvals/NOPE-NOPE-NOPE/approve", Some(&lead), Some("{}"))
        .unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no approval request with this id"), "{body}");
    let (status, body) = gw
        .request(
            "POST",
            "/api/approvals/NOPE-NOPE-NOPE/approve",
            Some(&lead),
            Some("{\"reason\": 1}"),
        )
        .unwrap();
    assert_eq!(status, 400, "{body}");
}
