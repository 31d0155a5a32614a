//! Tests of the engine against the example policies in `policies/` and against
//! small policy sets written to temp dirs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use gatehouse_identity::{Identity, PrincipalKind};
use serde_json::{Value, json};

use crate::*;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn identity(kind: PrincipalKind, subject: &str, groups: &[&str]) -> Identity {
    Identity {
        issuer: "https://issuer.test".into(),
        subject: subject.into(),
        kind,
        email: None,
        name: None,
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        owner: None,
        expires_at: SystemTime::now() + Duration::from_secs(600),
    }
}

fn agent() -> Identity {
    identity(PrincipalKind::Agent, "agent-7", &[])
}

fn resource(kind: ResourceKind, name: &str, labels: &[(&str, &str)]) -> Resource {
    Resource {
        kind,
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn prod_db() -> Resource {
    resource(ResourceKind::Database, "orders", &[("env", "prod")])
}

fn statement(kind: &str, has_where: bool) -> Value {
    json!({
        "statement_kind": kind,
        "tables": ["orders"],
        "functions": [],
        "has_where": has_where,
        "statement": format!("{kind} ..."),
    })
}

fn ask(
    engine: &PolicyEngine,
    who: &Identity,
    namespace: Namespace,
    action: &str,
    target: &Resource,
    context: Value,
) -> Decision {
    engine.authorize(&AuthzRequest {
        principal: who,
        namespace,
        action,
        resource: target,
        context,
    })
}

/// A policy directory with the example schema and the given policy files.
fn temp_policies(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::copy(
        examples().join("schema.cedarschema"),
        dir.path().join("schema.cedarschema"),
    )
    .expect("copy schema");
    for (name, text) in files {
        fs::write(dir.path().join(name), text).expect("write policy");
    }
    dir
}

fn load_err(dir: &Path) -> PolicyError {
    match PolicyEngine::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

const PERMIT_FORWARD: &str = r#"
@id("forward-all")
permit (principal, action == Ssh::Action::"forward", resource);
"#;

/// Validates strictly, yet fails at run time: the addition overflows for ports
/// above 807. Without the overflow the condition is false.
const OVERFLOWING_FORBID: &str = r#"
@id("port-math")
forbid (principal, action == Ssh::Action::"forward", resource)
when { context.port + 9223372036854775000 < 0 };
"#;

fn forward(port: i64) -> Value {
    json!({ "host": "db.internal", "port": port })
}

#[test]
fn engine_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicyEngine>();
}

#[test]
fn example_policy_tests_all_pass() {
    let report = run_tests(&examples()).expect("policy tests load");
    println!("{report}");
    assert!(report.cases.len() >= 60, "only {} cases", report.cases.len());
    assert!(report.all_passed(), "{report}");
    let text = report.to_string();
    assert!(
        text.ends_with(&format!("{} passed, 0 failed\n", report.cases.len())),
        "{text}"
    );
}

#[test]
fn check_dir_counts_the_example_set() {
    let summary = check_dir(&examples()).expect("examples are valid");
    assert_eq!(summary.files.len(), 6, "{:?}", summary.files);
    assert!(summary.policy_count >= 20, "{summary}");
    // postgres.cedar 1, ssh.cedar 1, kube.cedar 2.
    assert_eq!(summary.approval_policies, 4, "{summary}");
    assert!(summary.to_string().starts_with("ok: "), "{summary}");
}

#[test]
fn every_decision_kind_from_the_examples() {
    let engine = PolicyEngine::load(&examples()).expect("examples load");
    assert_eq!(engine.generation(), 1);

    assert_eq!(
        ask(
            &engine,
            &agent(),
            Namespace::Postgres,
            "read",
            &prod_db(),
            statement("SELECT", true)
        ),
        Decision::Allow {
            policies: vec!["read-databases".into()]
        }
    );
    assert_eq!(
        ask(
            &engine,
            &agent(),
            Namespace::Postgres,
            "write",
            &prod_db(),
            statement("UPDATE", true)
        ),
        Decision::NeedsApproval {
            policies: vec!["agent-prod-write-needs-approval".into()],
            approver_group: "dba-leads".into(),
            approvals_required: 1,
            timeout: Some(Duration::from_secs(600)),
        }
    );
    assert_eq!(
        ask(
            &engine,
            &agent(),
            Namespace::Postgres,
            "ddl",
            &prod_db(),
            statement("CREATE TABLE", true)
        ),
        Decision::Deny {
            policies: vec!["agent-no-ddl-admin".into()],
            reason: "forbidden by policy \"agent-no-ddl-admin\"".into(),
        }
    );
    let user = identity(PrincipalKind::User, "bob", &["support"]);
    assert_eq!(
        ask(
            &engine,
            &user,
            Namespace::Postgres,
            "write",
            &prod_db(),
            statement("UPDATE", true)
        ),
        Decision::Deny {
            policies: vec![],
            reason: "no policy permits this request".into(),
        }
    );
}

#[test]
fn groups_become_parents_of_the_principal() {
    let engine = PolicyEngine::load(&examples()).expect("examples load");
    let dba = identity(PrincipalKind::User, "carol", &["other", "dba"]);
    let decision = ask(
        &engine,
        &dba,
        Namespace::Postgres,
        "ddl",
        &prod_db(),
        statement("CREATE TABLE", true),
    );
    assert_eq!(
        decision,
        Decision::Allow {
            policies: vec!["dba-read-write-ddl".into()]
        }
    );
}

#[test]
fn attributes_and_tags_reach_the_policies() {
    let dir = temp_policies(&[(
        "owned.cedar",
        r#"
        @id("alice-agents-on-team-a")
        permit (principal is Agent, action == Postgres::Action::"read", resource)
        when {
          principal has owner && principal.owner == "alice" &&
          principal.issuer == "https://issuer.test" && principal.subject == "agent-7" &&
          resource.name == "orders" &&
          resource.hasTag("team") && resource.getTag("team") == "a"
        };
        "#,
    )]);
    let engine = PolicyEngine::load(dir.path()).expect("load");
    let team_a = resource(ResourceKind::Database, "orders", &[("team", "a")]);
    let read = |who: &Identity, target: &Resource| {
        ask(
            &engine,
            who,
            Namespace::Postgres,
            "read",
            target,
            statement("SELECT", true),
        )
    };
    let mut owned = agent();
    owned.owner = Some("alice".into());
    assert!(read(&owned, &team_a).is_allow());
    // Each attribute and the tag must actually be checked.
    assert!(!read(&agent(), &team_a).is_allow(), "owner absent");
    let mut other_owner = owned.clone();
    other_owner.owner = Some("mallory".into());
    assert!(!read(&other_owner, &team_a).is_allow(), "owner differs");
    assert!(!read(&owned, &resource(ResourceKind::Database, "orders", &[("team", "b")])).is_allow());
    assert!(!read(&owned, &resource(ResourceKind::Database, "orders", &[])).is_allow());
    assert!(!read(&owned, &resource(ResourceKind::Database, "other", &[("team", "a")])).is_allow());
}

#[test]
fn approval_terms_come_from_the_first_permit_by_id() {
    let dir = temp_policies(&[(
        "approvals.cedar",
        r#"
        @id("b-second")
        @approval("ops-leads")
        permit (principal, action == Postgres::Action::"write", resource);

        @id("a-first")
        @approval("dba-leads")
        @approvals_required("2")
        @approval_timeout("90s")
        permit (principal, action == Postgres::Action::"write", resource);

        @id("plain-read")
        permit (principal, action == Postgres::Action::"read", resource);

        @id("read-with-approval")
        @approval("dba-leads")
        permit (principal, action == Postgres::Action::"read", resource);
        "#,
    )]);
    let engine = PolicyEngine::load(dir.path()).expect("load");
    assert_eq!(
        ask(
            &engine,
            &agent(),
            Namespace::Postgres,
            "write",
            &prod_db(),
            statement("UPDATE", true)
        ),
        Decision::NeedsApproval {
            policies: vec!["a-first".into(), "b-second".into()],
            approver_group: "dba-leads".into(),
            approvals_required: 2,
            timeout: Some(Duration::from_secs(90)),
        }
    );
    // One satisfied permit without @approval is enough to allow.
    assert_eq!(
        ask(
            &engine,
            &agent(),
            Namespace::Postgres,
            "read",
            &prod_db(),
            statement("SELECT", true)
        ),
        Decision::Allow {
            policies: vec!["plain-read".into(), "read-with-approval".into()]
        }
    );
}

#[test]
fn forbid_wins_over_an_approval_permit() {
    let engine = PolicyEngine::load(&examples()).expect("examples load");
    let decision = ask(
        &engine,
        &agent(),
        Namespace::Postgres,
        "write",
        &prod_db(),
        statement("DELETE", false),
    );
    assert_eq!(decision.policies(), ["prod-no-unbounded-update-delete".to_owned()]);
    assert!(matches!(decision, Decision::Deny { .. }), "{decision:?}");
}

#[test]
fn an_erroring_forbid_denies_and_is_named() {
    let dir = temp_policies(&[("forward.cedar", PERMIT_FORWARD), ("math.cedar", OVERFLOWING_FORBID)]);
    let engine = PolicyEngine::load(dir.path()).expect("strict validation accepts it");
    let host = resource(ResourceKind::Host, "web-1", &[]);
    // No overflow: the forbid is false and the permit applies.
    assert_eq!(
        ask(&engine, &agent(), Namespace::Ssh, "forward", &host, forward(1)),
        Decision::Allow {
            policies: vec!["forward-all".into()]
        }
    );
    // Overflow: Cedar skips the forbid and would allow; we deny.
    match ask(&engine, &agent(), Namespace::Ssh, "forward", &host, forward(5432)) {
        Decision::Deny { policies, reason } => {
            assert_eq!(policies, vec!["port-math".to_owned()]);
            assert!(reason.contains("port-math") && reason.contains("overflow"), "{reason}");
        }
        other => panic!("expected deny, got {other:?}"),
    }
}

#[test]
fn an_erroring_permit_also_denies() {
    let dir = temp_policies(&[
        ("forward.cedar", PERMIT_FORWARD),
        (
            "math.cedar",
            r#"
            @id("permit-math")
            permit (principal, action == Ssh::Action::"forward", resource)
            when { context.port + 9223372036854775000 > 0 };
            "#,
        ),
    ]);
    let engine = PolicyEngine::load(dir.path()).expect("load");
    let host = resource(ResourceKind::Host, "web-1", &[]);
    let decision = ask(&engine, &agent(), Namespace::Ssh, "forward", &host, forward(5432));
    assert_eq!(decision.policies(), ["permit-math".to_owned()]);
    assert!(matches!(decision, Decision::Deny { .. }), "{decision:?}");
}

#[test]
fn strict_validation_rejects_unguarded_tag_access() {
    let dir = temp_policies(&[(
        "tags.cedar",
        "@id(\"unguarded\")\nforbid (principal, action == Postgres::Action::\"read\", resource)\nwhen { resource.getTag(\"env\") == \"prod\" };\n",
    )]);
    let err = load_err(dir.path());
    let text = err.to_string();
    assert!(text.contains("tags.cedar:3:"), "{text}");
    assert!(text.contains("unguarded"), "{text}");
}

#[test]
fn malformed_requests_are_denied_with_a_reason() {
    let engine = PolicyEngine::load(&examples()).expect("examples load");
    let dba = identity(PrincipalKind::User, "carol", &["dba"]);
    let db = prod_db();
    let host = resource(ResourceKind::Host, "web-1", &[]);
    let cases: [(Namespace, &str, &Resource, Value, &str); 9] = [
        (
            Namespace::Postgres,
            "connect",
            &db,
            json!({ "client_address": 1 }),
            "does not match the schema",
        ),
        (
            Namespace::Postgres,
            "read",
            &db,
            json!({ "statement_kind": "SELECT", "tables": "secret-value", "functions": [], "has_where": true, "statement": "x" }),
            "does not match the schema",
        ),
        (
            Namespace::Postgres,
            "read",
            &db,
            json!({ "statement_kind": "SELECT", "tables": [1], "functions": [], "has_where": true, "statement": "secret-value" }),
            "does not match the schema",
        ),
        (
            Namespace::Postgres,
            "connect",
            &db,
            json!({}),
            "does not match the schema",
        ),
        (
            Namespace::Postgres,
            "connect",
            &db,
            json!({ "client_address": "x", "surprise": true }),
            "does not match the schema",
        ),
        (
            Namespace::Postgres,
            "read",
            &db,
            json!(["not", "an", "object"]),
            "does not match the schema",
        ),
        (Namespace::Postgres, "drop_everything", &db, json!({}), "unknown action"),
        (Namespace::Gatehouse, "read", &db, json!({}), "unknown action"),
        (
            Namespace::Postgres,
            "read",
            &host,
            statement("SELECT", true),
            "invalid request",
        ),
    ];
    for (namespace, action, target, context, expected) in cases {
        match ask(&engine, &dba, namespace, action, target, context.clone()) {
            Decision::Deny { policies, reason } => {
                assert!(policies.is_empty(), "{policies:?}");
                assert!(!reason.contains("secret-value"), "{reason}");
                assert!(reason.contains(expected), "{action} {context}: {reason}");
            }
            other => panic!("{action} {context}: expected deny, got {other:?}"),
        }
    }
    // A null context is an empty record: decided exactly as `{}` is.
    let ssh_host = resource(ResourceKind::Host, "web-1", &[]);
    let null = ask(&engine, &dba, Namespace::Ssh, "connect", &ssh_host, Value::Null);
    let empty = ask(&engine, &dba, Namespace::Ssh, "connect", &ssh_host, json!({}));
    assert_eq!(null, empty);
    assert!(!null.is_allow(), "client_address is required");
    let full = json!({ "client_address": "127.0.0.1" });
    assert!(ask(&engine, &dba, Namespace::Ssh, "connect", &ssh_host, full).is_allow());
}

#[test]
fn unannotated_policies_get_file_and_index_ids() {
    let dir = temp_policies(&[(
        "plain.cedar",
        r#"
        forbid (principal, action == Postgres::Action::"admin", resource);
        permit (principal, action == Postgres::Action::"read", resource);
        "#,
    )]);
    let engine = PolicyEngine::load(dir.path()).expect("load");
    assert_eq!(engine.policy_count(), 2);
    assert_eq!(
        ask(
            &engine,
            &agent(),
            Namespace::Postgres,
            "read",
            &prod_db(),
            statement("SELECT", true)
        ),
        Decision::Allow {
            policies: vec!["plain:1".into()]
        }
    );
    assert_eq!(
        ask(
            &engine,
            &agent(),
            Namespace::Postgres,
            "admin",
            &prod_db(),
            statement("GRANT", true)
        )
        .policies(),
        ["plain:0".to_owned()]
    );
}

#[test]
fn duplicate_ids_fail_the_load_with_both_places() {
    let dir = temp_policies(&[
        (
            "a.cedar",
            "@id(\"same\")\npermit (principal, action == Postgres::Action::\"read\", resource);\n",
        ),
        (
            "b.cedar",
            "\n\n@id(\"same\")\npermit (principal, action == Postgres::Action::\"write\", resource);\n",
        ),
    ]);
    let err = load_err(dir.path());
    let problems = err.problems();
    assert_eq!(problems.len(), 1, "{err}");
    assert_eq!(problems[0].file, PathBuf::from("b.cedar"));
    assert_eq!(problems[0].line, Some(3));
    assert!(problems[0].message.contains("a.cedar:1"), "{err}");
}

#[test]
fn load_errors_carry_file_and_line() {
    // Syntax error on line 3.
    let dir = temp_policies(&[(
        "bad.cedar",
        "// one\n// two\npermit (principal, action, resource) when { ;\n",
    )]);
    let err = load_err(dir.path());
    assert_eq!(err.problems()[0].file, PathBuf::from("bad.cedar"), "{err}");
    assert_eq!(err.problems()[0].line, Some(3), "{err}");

    // Validation error (no such attribute) on line 4, in the second of two files.
    let dir = temp_policies(&[
        (
            "good.cedar",
            "permit (principal, action == Postgres::Action::\"read\", resource);\n",
        ),
        (
            "typo.cedar",
            "@id(\"typo\")\npermit (principal, action == Postgres::Action::\"read\", resource)\nwhen {\n  context.statment_kind == \"SELECT\"\n};\n",
        ),
    ]);
    let err = load_err(dir.path());
    let text = err.to_string();
    assert!(text.contains("typo.cedar:4:"), "{text}");
    assert!(text.contains("statment_kind"), "{text}");

    // A bad annotation, located at its policy.
    let dir = temp_policies(&[(
        "ann.cedar",
        "\n@id(\"x\")\n@approval(\"dba-leads\")\n@approvals_required(\"zero\")\npermit (principal, action == Postgres::Action::\"write\", resource);\n",
    )]);
    let err = load_err(dir.path());
    assert_eq!(err.problems()[0].line, Some(2), "{err}");
    assert!(err.to_string().contains("approvals_required"), "{err}");

    // A broken schema is reported against the schema file.
    let dir = temp_policies(&[("ok.cedar", "permit (principal, action, resource);\n")]);
    fs::write(dir.path().join("schema.cedarschema"), "entity User;\nentity Oops {\n").expect("write");
    let err = load_err(dir.path());
    assert_eq!(err.problems()[0].file, PathBuf::from("schema.cedarschema"), "{err}");
    assert!(err.problems()[0].line.is_some(), "{err}");

    // No schema at all.
    let dir = tempfile::tempdir().expect("temp dir");
    assert!(matches!(load_err(dir.path()), PolicyError::Io { .. }));

    // A schema but no policies.
    let dir = temp_policies(&[]);
    assert!(load_err(dir.path()).to_string().contains("no *.cedar"));
}

#[test]
fn policies_in_subdirectories_are_loaded_and_hidden_files_skipped() {
    let dir = temp_policies(&[(".#lock.cedar", "this is not cedar")]);
    fs::create_dir(dir.path().join("team")).expect("mkdir");
    fs::write(
        dir.path().join("team/read.cedar"),
        "permit (principal, action == Postgres::Action::\"read\", resource);\n",
    )
    .expect("write");
    let engine = PolicyEngine::load(dir.path()).expect("load");
    assert_eq!(
        ask(
            &engine,
            &agent(),
            Namespace::Postgres,
            "read",
            &prod_db(),
            statement("SELECT", true)
        ),
        Decision::Allow {
            policies: vec!["team/read:0".into()]
        }
    );
}

#[test]
fn reload_keeps_the_old_set_when_a_file_breaks() {
    let dir = temp_policies(&[(
        "read.cedar",
        "@id(\"read\")\npermit (principal, action == Postgres::Action::\"read\", resource);\n",
    )]);
    let engine = PolicyEngine::load(dir.path()).expect("load");
    assert!(!engine.changed_on_disk());
    assert_eq!(engine.last_reload_error(), None);

    fs::write(
        dir.path().join("write.cedar"),
        "@id(\"write\")\npermit (principal, action == Postgres::Action::\"write\", resource)\nwhen { context.nope };\n",
    )
    .expect("write");
    assert!(engine.changed_on_disk());
    let err = engine.reload().expect_err("broken set accepted");
    assert!(err.to_string().contains("write.cedar:3:"), "{err}");
    let recorded = engine.last_reload_error().expect("error recorded");
    assert!(recorded.contains("write.cedar:3:"), "{recorded}");
    // The attempt was recorded: the binary's poll does not retry an unchanged file.
    assert!(!engine.changed_on_disk());

    // Still the old set.
    assert_eq!(engine.generation(), 1);
    assert_eq!(engine.policy_count(), 1);
    assert!(
        ask(
            &engine,
            &agent(),
            Namespace::Postgres,
            "read",
            &prod_db(),
            statement("SELECT", true)
        )
        .is_allow()
    );
    assert!(
        !ask(
            &engine,
            &agent(),
            Namespace::Postgres,
            "write",
            &prod_db(),
            statement("UPDATE", true)
        )
        .is_allow()
    );
}

#[test]
fn reload_swaps_to_a_good_set_and_bumps_the_generation() {
    let dir = temp_policies(&[(
        "read.cedar",
        "@id(\"read\")\npermit (principal, action == Postgres::Action::\"read\", resource);\n",
    )]);
    let engine = PolicyEngine::load(dir.path()).expect("load");
    fs::write(
        dir.path().join("write.cedar"),
        "@id(\"write\")\npermit (principal, action == Postgres::Action::\"write\", resource)\nwhen { context.nope };\n",
    )
    .expect("write");
    assert!(engine.reload().is_err());

    fs::write(
        dir.path().join("write.cedar"),
        "@id(\"write\")\npermit (principal, action == Postgres::Action::\"write\", resource);\n",
    )
    .expect("write");
    assert!(engine.changed_on_disk());
    engine.reload().expect("good set");
    assert_eq!(engine.generation(), 2);
    assert_eq!(engine.policy_count(), 2);
    assert_eq!(engine.last_reload_error(), None);
    assert!(!engine.changed_on_disk());
    assert_eq!(
        ask(
            &engine,
            &agent(),
            Namespace::Postgres,
            "write",
            &prod_db(),
            statement("UPDATE", true)
        ),
        Decision::Allow {
            policies: vec!["write".into()]
        }
    );

    // Removing a file is a change too, and the set shrinks back.
    fs::remove_file(dir.path().join("write.cedar")).expect("remove");
    assert!(engine.changed_on_disk());
    engine.reload().expect("good set");
    assert_eq!(engine.generation(), 3);
    assert!(
        !ask(
            &engine,
            &agent(),
            Namespace::Postgres,
            "write",
            &prod_db(),
            statement("UPDATE", true)
        )
        .is_allow()
    );
}

#[test]
fn explain_names_matches_overrides_and_errors() {
    let engine = PolicyEngine::load(&examples()).expect("examples load");
    let dba = identity(PrincipalKind::User, "carol", &["dba"]);
    let text = engine.explain(&AuthzRequest {
        principal: &dba,
        namespace: Namespace::Postgres,
        action: "admin",
        resource: &prod_db(),
        context: statement("GRANT", true),
    });
    println!("{text}");
    assert!(text.contains("decision: deny"), "{text}");
    assert!(text.contains("forbid prod-no-admin (postgres.cedar:"), "{text}");
    assert!(
        text.contains("overridden permits:\n  permit dba-admin (postgres.cedar:"),
        "{text}"
    );

    let text = engine.explain(&AuthzRequest {
        principal: &agent(),
        namespace: Namespace::Postgres,
        action: "write",
        resource: &prod_db(),
        context: statement("UPDATE", true),
    });
    assert!(text.contains("needs approval by dba-leads"), "{text}");
    assert!(text.contains("every matching permit needs approval"), "{text}");

    let text = engine.explain(&AuthzRequest {
        principal: &agent(),
        namespace: Namespace::Postgres,
        action: "write",
        resource: &prod_db(),
        context: json!({}),
    });
    assert!(text.contains("refused before any policy ran"), "{text}");

    let dir = temp_policies(&[("forward.cedar", PERMIT_FORWARD), ("math.cedar", OVERFLOWING_FORBID)]);
    let engine = PolicyEngine::load(dir.path()).expect("load");
    let text = engine.explain(&AuthzRequest {
        principal: &agent(),
        namespace: Namespace::Ssh,
        action: "forward",
        resource: &resource(ResourceKind::Host, "web-1", &[]),
        context: forward(5432),
    });
    assert!(text.contains("errored:\n  forbid port-math (math.cedar:2)"), "{text}");
    assert!(text.contains("fail closed"), "{text}");
}

#[test]
fn run_tests_reports_failing_cases() {
    let dir = temp_policies(&[(
        "read.cedar",
        "@id(\"read\")\npermit (principal, action == Postgres::Action::\"read\", resource);\n",
    )]);
    fs::create_dir(dir.path().join("tests")).expect("mkdir");
    fs::write(
        dir.path().join("tests/cases.toml"),
        r#"
[context_defaults."Postgres::read"]
statement_kind = "SELECT"
tables = []
functions = []
has_where = true
statement = "SELECT 1"

[[case]]
name = "reads"
principal = { kind = "user", subject = "u" }
action = "Postgres::read"
resource = { kind = "database", name = "d" }
expect = "allow"
policies = ["read"]

[[case]]
name = "wrongly expects a denial"
principal = { kind = "user", subject = "u" }
action = "Postgres::read"
resource = { kind = "database", name = "d" }
expect = "deny"

[[case]]
name = "wrongly expects approval"
principal = { kind = "agent", subject = "a" }
action = "Postgres::read"
resource = { kind = "database", name = "d" }
expect = "needs_approval"
approver_group = "dba-leads"
"#,
    )
    .expect("write");
    let report = run_tests(dir.path()).expect("tests run");
    assert_eq!((report.passed(), report.failed()), (1, 2));
    assert!(!report.all_passed());
    let text = report.to_string();
    assert!(text.contains("expected deny, got allow (read)"), "{text}");
    assert!(
        text.contains("expected needs_approval by dba-leads, got allow"),
        "{text}"
    );
    assert!(text.ends_with("1 passed, 2 failed\n"), "{text}");

    // A malformed test file is an error naming file and line, not a failing case.
    fs::write(
        dir.path().join("tests/cases.toml"),
        "[[case]]\nname = \"x\"\nexpect = \"maybe\"\n",
    )
    .expect("write");
    let err = run_tests(dir.path()).expect_err("malformed file accepted");
    assert_eq!(err.problems()[0].file, PathBuf::from("tests/cases.toml"), "{err}");
    assert!(err.problems()[0].line.is_some(), "{err}");

    // No tests at all is an error too: a green run must have run something.
    fs::remove_file(dir.path().join("tests/cases.toml")).expect("remove");
    assert!(matches!(run_tests(dir.path()), Err(PolicyError::NoTests { .. })));
}

#[test]
fn policies_scoped_to_an_action_group_apply_to_its_members() {
    // Decisions use only the policies whose action scope admits the action; a scope that
    // names a group the action belongs to must still admit it.
    let dir = temp_policies(&[(
        "group.cedar",
        r#"@id("changes-by-dba")
permit (principal in Group::"dba", action in Postgres::Action::"changes", resource);
@id("any-action-forbid")
forbid (principal, action, resource) when { principal.subject == "mallory" };"#,
    )]);
    let schema = fs::read_to_string(dir.path().join("schema.cedarschema")).unwrap();
    let grouped = schema
        .replace(
            r#"  action "write" appliesTo"#,
            "  action \"changes\";\n  action \"write\" in [\"changes\"] appliesTo",
        )
        .replace(
            r#"  action "ddl" appliesTo"#,
            r#"  action "ddl" in ["changes"] appliesTo"#,
        );
    assert_ne!(schema, grouped);
    fs::write(dir.path().join("schema.cedarschema"), grouped).unwrap();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let dba = identity(PrincipalKind::User, "ann", &["dba"]);
    let write = ask(
        &engine,
        &dba,
        Namespace::Postgres,
        "write",
        &prod_db(),
        statement("UPDATE", true),
    );
    assert_eq!(write.policies(), ["changes-by-dba"]);
    assert!(write.is_allow());
    assert!(
        ask(
            &engine,
            &dba,
            Namespace::Postgres,
            "ddl",
            &prod_db(),
            statement("DROP", true)
        )
        .is_allow()
    );
    assert!(
        !ask(
            &engine,
            &dba,
            Namespace::Postgres,
            "read",
            &prod_db(),
            statement("SELECT", true)
        )
        .is_allow()
    );
    // An unscoped action applies everywhere.
    let mallory = identity(PrincipalKind::User, "mallory", &["dba"]);
    let refused = ask(
        &engine,
        &mallory,
        Namespace::Postgres,
        "write",
        &prod_db(),
        statement("UPDATE", true),
    );
    assert_eq!(refused.policies(), ["any-action-forbid"]);
}

#[test]
fn cached_entities_decide_like_fresh_ones() {
    let engine = PolicyEngine::load(&examples()).expect("load examples");
    let people = [
        agent(),
        identity(PrincipalKind::User, "alice", &["dba"]),
        identity(PrincipalKind::User, "bob", &["developers"]),
    ];
    let questions = [
        ("read", statement("SELECT", false)),
        ("write", statement("UPDATE", true)),
        ("write", statement("DELETE", false)),
        ("ddl", statement("DROP", false)),
        ("admin", statement("ALTER SYSTEM", false)),
    ];
    for who in &people {
        for target in [
            prod_db(),
            resource(ResourceKind::Database, "scratch", &[("env", "dev")]),
        ] {
            // One cache per principal and resource, asked every question in turn, twice.
            let cache = EntityCache::default();
            for _ in 0..2 {
                for (action, context) in &questions {
                    let request = AuthzRequest {
                        principal: who,
                        namespace: Namespace::Postgres,
                        action,
                        resource: &target,
                        context: context.clone(),
                    };
                    assert_eq!(
                        engine.authorize_cached(&request, &cache),
                        engine.authorize(&request),
                        "{} {action} on {}",
                        who.subject,
                        target.name
                    );
                }
            }
        }
    }
}

#[test]
fn an_entity_cache_follows_a_reload_and_a_different_principal() {
    let dir = temp_policies(&[(
        "dba.cedar",
        "@id(\"dba-writes\")\npermit (principal in Group::\"dba\", action == Postgres::Action::\"write\", resource);\n",
    )]);
    let engine = PolicyEngine::load(dir.path()).expect("load");
    let cache = EntityCache::default();
    let dba = identity(PrincipalKind::User, "alice", &["dba"]);
    let ask_cached = |who: &Identity| {
        engine.authorize_cached(
            &AuthzRequest {
                principal: who,
                namespace: Namespace::Postgres,
                action: "write",
                resource: &prod_db(),
                context: statement("UPDATE", true),
            },
            &cache,
        )
    };
    assert!(ask_cached(&dba).is_allow());
    // A cache handed another principal must not answer with the first one's groups.
    assert!(!ask_cached(&agent()).is_allow());

    fs::write(
        dir.path().join("dba.cedar"),
        "@id(\"dba-writes\")\npermit (principal in Group::\"nobody\", action == Postgres::Action::\"write\", resource);\n",
    )
    .expect("write");
    engine.reload().expect("good set");
    assert!(
        !ask_cached(&dba).is_allow(),
        "the cache outlived the policy set it was built for"
    );
}

#[test]
fn a_cached_session_still_checks_every_new_shape_of_context() {
    let engine = PolicyEngine::load(&examples()).expect("load examples");
    let cache = EntityCache::default();
    let dba = identity(PrincipalKind::User, "alice", &["dba"]);
    let ask_cached = |context: Value| {
        engine.authorize_cached(
            &AuthzRequest {
                principal: &dba,
                namespace: Namespace::Postgres,
                action: "read",
                resource: &prod_db(),
                context,
            },
            &cache,
        )
    };
    assert!(ask_cached(statement("SELECT", true)).is_allow());
    let mut other_values = statement("SELECT", true);
    other_values["tables"] = json!(["orders", "customers"]);
    other_values["statement"] = json!("SELECT * FROM orders JOIN customers USING (id)");
    assert!(ask_cached(other_values).is_allow(), "same shape, other values");
    let mut wrong_type = statement("SELECT", true);
    wrong_type["has_where"] = json!("true");
    let mut wrong_element = statement("SELECT", true);
    wrong_element["tables"] = json!(["orders", 7]);
    let mut nested = statement("SELECT", true);
    nested["tables"] = json!([["orders"]]);
    let mut missing = statement("SELECT", true);
    missing.as_object_mut().expect("object").remove("has_where");
    for context in [wrong_type, wrong_element, nested, missing] {
        match ask_cached(context.clone()) {
            Decision::Deny { reason, .. } => {
                assert!(reason.contains("does not match the schema"), "{context}: {reason}")
            }
            other => panic!("{context} was not refused: {other:?}"),
        }
    }
    assert!(ask_cached(statement("SELECT", true)).is_allow());
}

#[test]
fn context_reads_are_the_attributes_policies_name() {
    let reads = |text: &str| crate::store::context_reads(&text.parse().expect("policy text"));
    assert_eq!(
        reads(
            r#"permit (principal, action, resource) when { context has statement && context["tables"].contains("t") };
               forbid (principal, action, resource) when { context.has_where == false };"#
        ),
        Some(vec![
            "has_where".to_owned(),
            "statement".to_owned(),
            "tables".to_owned()
        ])
    );
    assert_eq!(reads("permit (principal, action, resource);"), Some(Vec::new()));
    // `context` as a whole value: any attribute may matter, so nothing is remembered.
    assert_eq!(
        reads(r#"permit (principal, action, resource) when { context == {"has_where": true} };"#),
        None
    );
    assert_eq!(
        reads(r#"permit (principal, action, resource) when { [context].contains(context) };"#),
        None
    );
    // The example set reads only these, so every PostgreSQL statement of one kind and
    // `has_where` shares one remembered decision.
    let engine = PolicyEngine::load(&examples()).expect("load examples");
    assert_eq!(
        engine.current_context_reads(),
        Some(
            [
                "command",
                "data_class",
                "has_where",
                "requester_subject",
                "uses_shell_syntax"
            ]
            .map(str::to_owned)
            .to_vec()
        )
    );
}

#[test]
fn a_remembered_decision_still_follows_every_attribute_a_policy_reads() {
    let dir = temp_policies(&[(
        "statements.cedar",
        r#"@id("dba-reads")
permit (principal in Group::"dba", action == Postgres::Action::"read", resource);
@id("no-secret-literals")
forbid (principal, action == Postgres::Action::"read", resource)
when { context.statement like "*'secret'*" };
"#,
    )]);
    let engine = PolicyEngine::load(dir.path()).expect("load");
    let cache = EntityCache::default();
    let dba = identity(PrincipalKind::User, "alice", &["dba"]);
    let ask_cached = |text: &str| {
        let mut context = statement("SELECT", true);
        context["statement"] = json!(text);
        engine.authorize_cached(
            &AuthzRequest {
                principal: &dba,
                namespace: Namespace::Postgres,
                action: "read",
                resource: &prod_db(),
                context,
            },
            &cache,
        )
    };
    for _ in 0..2 {
        assert!(ask_cached("SELECT * FROM t WHERE k = 'public'").is_allow());
        assert_eq!(
            ask_cached("SELECT * FROM t WHERE k = 'secret'").policies(),
            ["no-secret-literals"],
            "two statements that differ only in a literal the policy reads"
        );
    }
}

#[test]
fn a_remembered_decision_ends_with_its_generation_and_matches_a_fresh_one() {
    let dir = temp_policies(&[(
        "dba.cedar",
        "@id(\"dba-writes\")\npermit (principal in Group::\"dba\", action == Postgres::Action::\"write\", resource);\n",
    )]);
    let engine = PolicyEngine::load(dir.path()).expect("load");
    let cache = EntityCache::default();
    let dba = identity(PrincipalKind::User, "alice", &["dba"]);
    let db = prod_db();
    let request = |n: i64| AuthzRequest {
        principal: &dba,
        namespace: Namespace::Postgres,
        action: "write",
        resource: &db,
        // Values no policy reads: every one of these shares the remembered decision.
        context: json!({
            "statement_kind": "UPDATE",
            "tables": [format!("orders_{n}")],
            "functions": [],
            "has_where": true,
            "statement": format!("UPDATE orders_{n} SET x = {n} WHERE id = {n}"),
        }),
    };
    for n in 0..3 {
        let remembered = engine.authorize_cached(&request(n), &cache);
        assert_eq!(remembered, engine.authorize(&request(n)));
        assert_eq!(remembered.policies(), ["dba-writes"]);
    }
    fs::write(
        dir.path().join("dba.cedar"),
        "@id(\"dba-writes\")\nforbid (principal in Group::\"dba\", action == Postgres::Action::\"write\", resource);\n",
    )
    .expect("write");
    engine.reload().expect("good set");
    for n in 0..3 {
        let decided = engine.authorize_cached(&request(n), &cache);
        assert!(!decided.is_allow(), "a decision outlived its policy set: {decided:?}");
        assert_eq!(decided, engine.authorize(&request(n)));
    }
}

#[test]
fn a_remembered_decision_never_covers_a_context_cedar_cannot_take() {
    let dir = temp_policies(&[("forward.cedar", PERMIT_FORWARD)]);
    let engine = PolicyEngine::load(dir.path()).expect("load");
    let cache = EntityCache::default();
    let who = agent();
    let host = resource(ResourceKind::Host, "bastion", &[]);
    let ask_cached = |context: Value| {
        engine.authorize_cached(
            &AuthzRequest {
                principal: &who,
                namespace: Namespace::Ssh,
                action: "forward",
                resource: &host,
                context,
            },
            &cache,
        )
    };
    assert!(ask_cached(forward(5432)).is_allow());
    assert!(ask_cached(forward(5433)).is_allow());
    // No policy reads the port, but a port Cedar cannot hold is still refused.
    assert!(!ask_cached(json!({ "host": "db.internal", "port": 5432.5 })).is_allow());
    assert!(!ask_cached(json!({ "host": "db.internal", "port": u64::MAX })).is_allow());
    assert!(ask_cached(forward(5432)).is_allow());
}
