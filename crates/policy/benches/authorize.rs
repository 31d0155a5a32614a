//! Cost of one decision on the example policy set: this runs for every SQL
//! statement, SSH request and Kubernetes API call, so it must stay in the tens of µs.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse_identity::{Identity, PrincipalKind};
use gatehouse_policy::{AuthzRequest, Decision, Namespace, PolicyEngine, Resource, ResourceKind};
use serde_json::json;

fn authorize(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let engine = PolicyEngine::load(&dir).expect("example policies load");
    let agent = Identity {
        issuer: "https://issuer.test".into(),
        subject: "agent-7".into(),
        kind: PrincipalKind::Agent,
        email: None,
        name: Some("report bot".into()),
        groups: vec!["agents".into(), "reporting".into()],
        owner: Some("alice".into()),
        expires_at: SystemTime::now() + Duration::from_secs(3600),
    };
    let orders = Resource {
        kind: ResourceKind::Database,
        name: "orders".into(),
        labels: BTreeMap::from([
            ("env".to_owned(), "prod".to_owned()),
            ("team".to_owned(), "shop".to_owned()),
        ]),
    };
    let statement = |kind: &str, text: &str| {
        json!({
            "statement_kind": kind,
            "tables": ["orders"],
            "functions": [],
            "has_where": true,
            "statement": text,
        })
    };
    let read = AuthzRequest {
        principal: &agent,
        namespace: Namespace::Postgres,
        action: "read",
        resource: &orders,
        context: statement("SELECT", "SELECT id, total FROM orders WHERE id = $1"),
    };
    let write = AuthzRequest {
        principal: &agent,
        namespace: Namespace::Postgres,
        action: "write",
        resource: &orders,
        context: statement("UPDATE", "UPDATE orders SET status = $1 WHERE id = $2"),
    };
    assert!(engine.authorize(&read).is_allow());
    assert!(matches!(engine.authorize(&write), Decision::NeedsApproval { .. }));

    c.bench_function("postgres read (allow)", |b| {
        b.iter(|| engine.authorize(black_box(&read)))
    });
    c.bench_function("agent write on prod (needs approval)", |b| {
        b.iter(|| engine.authorize(black_box(&write)))
    });
}

criterion_group!(benches, authorize);
criterion_main!(benches);
