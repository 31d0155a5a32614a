//! Every statement and request the gateway forwards is sealed into the log before it is
//! forwarded, so the cost of sealing one typical record is on the data path: this bench
//! measures a PostgreSQL statement's decision record and a Kubernetes GET's request record.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse_audit::AuditEvent;
use gatehouse_audit::chain::seal;
use serde_json::json;

fn statement() -> AuditEvent {
    AuditEvent::RequestDecided {
        session: "0193a1f2-7c4e-7d6a-9b1e-3f2a5c8d9e01".into(),
        request: 48213,
        action: "Postgres::Action::\"read\"".into(),
        attributes: json!({
            "statement": "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "statement_type": "select",
            "class": "read",
            "tables_read": ["pgbench_accounts"],
            "tables_written": [],
            "functions": [],
            "statements": 1,
            "protocol": "simple",
            "target": "bench",
            "database": "bench",
            "labels": { "env": "dev" },
            "groups": ["dba"],
            "principal_kind": "user",
        }),
        decision: "allow".into(),
        policies: vec!["dba-full-access".into()],
        reason: None,
    }
}

fn kube_get() -> AuditEvent {
    AuditEvent::KubeRequest {
        session: Some("0193a1f2-7c4e-7d6a-9b1e-3f2a5c8d9e02".into()),
        request: Some(1021),
        target: "prod".into(),
        client_addr: "127.0.0.1:53122".into(),
        method: "GET".into(),
        path: "/api/v1/namespaces/default/pods/web-0".into(),
        verb: "get".into(),
        attributes: json!({
            "verb": "get", "api_group": "", "api_version": "v1", "resource": "pods",
            "subresource": "", "namespace": "default", "name": "web-0", "path": "/api/v1/namespaces/default/pods/web-0",
            "resource_request": true, "cluster": "prod", "labels": { "env": "prod" },
        }),
        decision: "allow".into(),
        policies: vec!["sre-read".into()],
        status: 200,
        bytes: 4211,
        duration_ms: 1,
        reason: None,
    }
}

fn bench(c: &mut Criterion) {
    let prev = "3f".repeat(32);
    let time = "2026-11-27T21:40:12.345Z";
    for (name, event) in [("seal/statement", statement()), ("seal/kube_get", kube_get())] {
        c.bench_function(name, |b| {
            b.iter(|| {
                seal(
                    black_box(1_000_000),
                    black_box(time),
                    black_box(&prev),
                    black_box(&event),
                )
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
