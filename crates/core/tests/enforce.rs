//! The enforcement path end to end inside the core: real tokens from the development issuer,
//! the repository's example policies, a real audit log on disk.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_audit::{AuditEvent, AuditLog, AuditOptions};
use gatehouse_core::{ApprovalState, Gateway, GatewayParts, Protocol, RefusalKind, Target, Verdict};
use gatehouse_identity::{DevIssuer, MintRequest, Verifier};
use gatehouse_mask::DataClass;
use gatehouse_policy::PolicyEngine;
use serde_json::json;

struct Fixture {
    _dir: tempfile::TempDir,
    audit_dir: std::path::PathBuf,
    dev: DevIssuer,
    gateway: Arc<Gateway>,
}

const CLIENT: &str = "127.0.0.1:40000";

fn client() -> SocketAddr {
    CLIENT.parse().unwrap()
}

fn repo_policies() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn fixture() -> Fixture {
    fixture_with(&repo_policies())
}

fn fixture_with(policies: &Path) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevIssuer::load_or_create(dir.path(), "http://127.0.0.1:1", "gatehouse").unwrap();
    let mut verifier = Verifier::new(Vec::new()).unwrap();
    for issuer in dev.issuer_configs() {
        verifier = verifier.with_static_keys(issuer, dev.jwks()).unwrap();
    }
    let audit_dir = dir.path().join("audit");
    let audit = AuditLog::open(&audit_dir, AuditOptions::default()).unwrap();
    let prod = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    let gateway = Gateway::new(GatewayParts {
        state_dir: dir.path().to_path_buf(),
        verifier,
        policy: Arc::new(PolicyEngine::load(policies).unwrap()),
        audit,
        targets: vec![
            Target::new("orders", Protocol::Postgres, prod.clone()),
            Target::new(
                "scratch",
                Protocol::Postgres,
                BTreeMap::from([("env".into(), "dev".into())]),
            ),
            Target::new("web-1", Protocol::Ssh, prod),
        ],
        max_session_lifetime: None,
        approval_timeout: gatehouse_core::DEFAULT_APPROVAL_TIMEOUT,
        approval_listener: None,
    })
    .unwrap();
    Fixture {
        audit_dir,
        dev,
        gateway,
        _dir: dir,
    }
}

fn mint(dev: &DevIssuer, sub: &str, groups: &[&str], agent: bool) -> String {
    dev.mint(&MintRequest {
        subject: sub.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ttl: Duration::from_secs(600),
        agent,
        email: None,
        name: None,
        owner: agent.then(|| "carol".to_string()),
    })
    .unwrap()
}

fn statement(kind: &str, has_where: bool, sql: &str) -> serde_json::Value {
    json!({
        "statement_kind": kind,
        "tables": ["orders"],
        "functions": [],
        "has_where": has_where,
        "statement": sql,
    })
}

fn decisions(audit_dir: &Path) -> Vec<(String, String, Vec<String>)> {
    gatehouse_audit::read_records(audit_dir)
        .unwrap()
        .filter_map(|r| match r.unwrap().event {
            AuditEvent::RequestDecided {
                action,
                decision,
                policies,
                ..
            } => Some((action, decision, policies)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn every_decision_is_audited_and_only_an_allow_yields_a_permit() {
    let f = fixture();
    let dba = mint(&f.dev, "alice", &["dba"], false);
    let session = f
        .gateway
        .connect(&dba, Protocol::Postgres, "orders", client())
        .await
        .unwrap();
    assert_eq!(session.identity().subject, "alice");

    let permit = session
        .authorize(
            "write",
            statement("UPDATE", true, "UPDATE orders SET paid = true WHERE id = 1"),
        )
        .await
        .expect("dba may write with a WHERE clause");
    assert_eq!(permit.request(), 1);
    assert!(!permit.policies().is_empty(), "an allow names its policies");

    let refusal = session
        .authorize("write", statement("DELETE", false, "DELETE FROM orders"))
        .await
        .expect_err("DELETE without WHERE on prod is forbidden for everyone");
    assert_eq!(refusal.kind, RefusalKind::Denied);
    assert!(!refusal.policies.is_empty(), "a forbid is named: {refusal:?}");
    assert!(refusal.message.contains(&refusal.policies[0]), "{}", refusal.message);

    session.end("client closed").await;

    let agent = mint(&f.dev, "ci-bot", &[], true);
    let bot = f
        .gateway
        .connect(&agent, Protocol::Postgres, "orders", client())
        .await
        .unwrap();
    assert_eq!(bot.identity().owner.as_deref(), Some("carol"));
    let _read = bot
        .authorize("read", statement("SELECT", true, "SELECT * FROM orders"))
        .await
        .unwrap();
    let refusal = bot
        .authorize(
            "write",
            statement("UPDATE", true, "UPDATE orders SET paid = true WHERE id = 1"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        refusal.kind,
        RefusalKind::ApprovalRequired {
            approver_group: "dba-leads".into()
        }
    );
    let refusal = bot
        .authorize("ddl", statement("DROP TABLE", true, "DROP TABLE orders"))
        .await
        .unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::Denied);
    bot.end("client closed").await;

    let logged = decisions(&f.audit_dir);
    let outcomes: Vec<&str> = logged.iter().map(|(_, d, _)| d.as_str()).collect();
    assert_eq!(outcomes, ["allow", "deny", "allow", "needs_approval", "deny"]);
    assert_eq!(logged[0].0, "Postgres::write");
    let report = gatehouse_audit::verify(&f.audit_dir).unwrap();
    assert!(report.problem.is_none(), "{:?}", report.problem);
}

#[tokio::test]
async fn unknown_target_bad_token_and_denied_connect_look_the_same() {
    let f = fixture();
    let token = mint(&f.dev, "alice", &[], false);
    let unknown = f
        .gateway
        .connect(&token, Protocol::Postgres, "no-such-db", client())
        .await
        .unwrap_err();
    let wrong_protocol = f
        .gateway
        .connect(&token, Protocol::Postgres, "web-1", client())
        .await
        .unwrap_err();
    let garbage = f
        .gateway
        .connect("not-a-token", Protocol::Postgres, "orders", client())
        .await
        .unwrap_err();
    assert_eq!(unknown, wrong_protocol);
    assert_eq!(unknown, garbage);
    assert_eq!(unknown.kind, RefusalKind::Unauthenticated);
}

#[tokio::test]
async fn credentials_stand_in_for_the_token_on_their_own_target_only() {
    let f = fixture();
    let token = mint(&f.dev, "alice", &["dba"], false);
    let identity = f.gateway.verify_token(&token).await.unwrap();
    let issued = f
        .gateway
        .issue_credential(&identity, "orders", Some(Duration::from_secs(60)), client())
        .await
        .unwrap();
    assert!(issued.secret.starts_with("ghc_"));
    assert!(identity.expires_at >= std::time::SystemTime::now() + Duration::from_secs(30));

    let session = f
        .gateway
        .connect(&issued.secret, Protocol::Postgres, "orders", client())
        .await
        .unwrap();
    assert!(session.identity().same_person(&identity));
    assert!(
        session.time_left() <= Duration::from_secs(60),
        "a credential session ends with the credential"
    );
    session.end("done").await;

    let elsewhere = f
        .gateway
        .connect(&issued.secret, Protocol::Postgres, "scratch", client())
        .await;
    assert_eq!(elsewhere.unwrap_err().kind, RefusalKind::Unauthenticated);

    f.gateway.revoke_credential(&identity, &issued.info.id).await.unwrap();
    let revoked = f
        .gateway
        .connect(&issued.secret, Protocol::Postgres, "orders", client())
        .await;
    assert_eq!(revoked.unwrap_err().kind, RefusalKind::Unauthenticated);

    let records: Vec<_> = gatehouse_audit::read_records(&f.audit_dir)
        .unwrap()
        .map(|r| r.unwrap().event.kind())
        .collect();
    assert!(records.contains(&"credential_issued"), "{records:?}");
    assert!(records.contains(&"credential_revoked"), "{records:?}");
    let log = std::fs::read_to_string(f.audit_dir.join("segment-000001.jsonl")).unwrap();
    assert!(!log.contains(&issued.secret), "the secret never reaches the audit log");
    assert!(!log.contains(&token), "the token never reaches the audit log");
}

#[tokio::test]
async fn unmasking_is_decided_per_data_class() {
    let f = fixture();
    let support = mint(&f.dev, "sam", &["support-leads"], false);
    let session = f
        .gateway
        .connect(&support, Protocol::Postgres, "orders", client())
        .await
        .unwrap();
    let masker = session.masker().await;
    assert!(!masker.masks(DataClass::Email), "support-leads may see emails");
    assert!(masker.masks(DataClass::Card), "but never card numbers");
    assert!(masker.masks(DataClass::Secret));

    let plain = mint(&f.dev, "bob", &[], false);
    let session = f
        .gateway
        .connect(&plain, Protocol::Postgres, "orders", client())
        .await
        .unwrap();
    assert!(session.masker().await.masks(DataClass::Email));
}

#[tokio::test]
async fn a_context_that_does_not_match_the_schema_is_refused() {
    let f = fixture();
    let dba = mint(&f.dev, "alice", &["dba"], false);
    let session = f
        .gateway
        .connect(&dba, Protocol::Postgres, "orders", client())
        .await
        .unwrap();
    let refusal = session
        .authorize("read", json!({ "statement_kind": 42 }))
        .await
        .unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::Denied);
}

#[tokio::test]
async fn a_held_request_runs_once_approved_and_is_bound_to_its_session() {
    let f = fixture();
    let agent = mint(&f.dev, "ci-bot", &[], true);
    let bot = f
        .gateway
        .connect(&agent, Protocol::Postgres, "orders", client())
        .await
        .unwrap();
    let sql = "UPDATE orders SET paid = true WHERE id = 1";
    let Verdict::NeedsApproval(needed) = bot.decide("write", statement("UPDATE", true, sql)).await.unwrap() else {
        panic!("an agent's write on prod needs approval");
    };
    assert_eq!(needed.approver_group(), "dba-leads");
    let held = bot.hold(vec![needed], sql, sql.as_bytes()).await.unwrap();
    let id = held.id().to_string();
    assert!(
        held.notice().contains(&id) && held.notice().contains("dba-leads"),
        "{}",
        held.notice()
    );
    let waiting = tokio::spawn(held.wait());

    let lead = f
        .gateway
        .verify_token(&mint(&f.dev, "dora", &["dba-leads"], false))
        .await
        .unwrap();
    f.gateway.approvals().approve(&id, &lead, Some("ok")).await.unwrap();
    let permits = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(permits.len(), 1);
    assert_eq!(permits[0].policies(), ["agent-prod-write-needs-approval"]);
    let spent = f.gateway.approvals().get(&id).unwrap();
    assert_eq!(spent.state, ApprovalState::Executed);
    // The approval is spent: not for this session again, nor for another.
    assert!(
        f.gateway
            .approvals()
            .consume(&id, bot.id(), &spent.request_sha256)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_policy_reload_decides_a_held_request_again() {
    let policies = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo_policies()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), policies.path().join(entry.file_name())).unwrap();
        }
    }
    let f = fixture_with(policies.path());
    let agent = mint(&f.dev, "ci-bot", &[], true);
    let bot = f
        .gateway
        .connect(&agent, Protocol::Postgres, "orders", client())
        .await
        .unwrap();
    let hold = |sql: &'static str| {
        let bot = bot.clone();
        async move {
            let Verdict::NeedsApproval(needed) = bot.decide("write", statement("UPDATE", true, sql)).await.unwrap()
            else {
                panic!("needs approval");
            };
            bot.hold(vec![needed], sql, sql.as_bytes()).await.unwrap()
        }
    };
    let first = hold("UPDATE orders SET paid = true WHERE id = 1").await;
    let first_id = first.id().to_string();
    let waiting = tokio::spawn(first.wait());

    // Policy now forbids agents' writes outright: the held request is refused and withdrawn.
    let path = policies.path().join("postgres.cedar");
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!(
            "{original}\n@id(\"freeze\")\nforbid (principal is Agent, action == Postgres::Action::\"write\", resource);\n"
        ),
    )
    .unwrap();
    f.gateway.policy().reload().unwrap();
    let refusal = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::Denied);
    assert!(refusal.message.contains("freeze"), "{}", refusal.message);
    assert_eq!(
        f.gateway.approvals().get(&first_id).unwrap().state,
        ApprovalState::Withdrawn
    );

    // Back to the original, then agents' writes allowed without approval: released at once.
    std::fs::write(&path, &original).unwrap();
    f.gateway.policy().reload().unwrap();
    let second = hold("UPDATE orders SET paid = true WHERE id = 2").await;
    let second_id = second.id().to_string();
    let waiting = tokio::spawn(second.wait());
    std::fs::write(
        &path,
        original.replace("@approval(\"dba-leads\")\n@approval_timeout(\"10m\")\n", ""),
    )
    .unwrap();
    f.gateway.policy().reload().unwrap();
    let permits = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(permits.len(), 1);
    assert_eq!(
        f.gateway.approvals().get(&second_id).unwrap().state,
        ApprovalState::Withdrawn
    );
}
