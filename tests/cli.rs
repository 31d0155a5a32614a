//! The `gatehouse` command line: exit codes, help, tokens, policy and audit commands.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::path::Path;
use std::process::{Command, Output};

fn gatehouse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .env_remove("GATEHOUSE_TOKEN")
        .env_remove("GATEHOUSE_CONFIG")
        .env_remove("GATEHOUSE_DEMO_PASSWORD")
        .output()
        .expect("gatehouse runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
        .display()
        .to_string()
}

/// A config in a temp dir with the repository's policies and the development issuer.
fn config(dir: &Path, extra: &str) -> String {
    let path = dir.join("gatehouse.toml");
    let text = format!(
        "state_dir = \"state\"\n[admin]\nlisten = \"127.0.0.1:18080\"\n[identity.dev_issuer]\nenabled = true\n[policy]\ndir = \"{}\"\n{extra}",
        repo("policies")
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn check_config_accepts_the_quick_start_and_exits_64_naming_a_bad_key() {
    let ok = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check-config", &repo("examples/quickstart.toml")])
        .env("GATEHOUSE_DEMO_PASSWORD", "demo")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("ok"), "{}", stdout(&ok));

    let dir = tempfile::tempdir().unwrap();
    let bad = config(dir.path(), "[audit]\nfsink = \"always\"\n");
    let out = gatehouse(&["check-config", &bad]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("fsink"), "{}", stderr(&out));

    // The demo database's password comes from the environment; without it the config is bad.
    let no_password = gatehouse(&["check-config", &repo("examples/quickstart.toml")]);
    assert_eq!(no_password.status.code(), Some(64), "{}", stderr(&no_password));
    assert!(
        stderr(&no_password).contains("GATEHOUSE_DEMO_PASSWORD"),
        "{}",
        stderr(&no_password)
    );

    let missing = gatehouse(&["check-config", "/nonexistent/gatehouse.toml"]);
    assert_eq!(missing.status.code(), Some(64));

    let bad_policy_dir = tempfile::tempdir().unwrap();
    std::fs::write(bad_policy_dir.path().join("schema.cedarschema"), "entity User;").unwrap();
    std::fs::write(
        bad_policy_dir.path().join("p.cedar"),
        "permit (principal == Nope::\"x\", action, resource);",
    )
    .unwrap();
    let path = dir.path().join("bad-policy.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"s\"\n[identity.dev_issuer]\nenabled = true\n[policy]\ndir = \"{}\"\n",
            bad_policy_dir.path().display()
        ),
    )
    .unwrap();
    let out = gatehouse(&["check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("p.cedar"),
        "names the policy file: {}",
        stderr(&out)
    );
}

#[test]
fn every_command_explains_itself() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["check-config", "--help"],
        &["token", "mint", "--help"],
        &["token", "show", "--help"],
        &["policy", "check", "--help"],
        &["policy", "test", "--help"],
        &["policy", "explain", "--help"],
        &["audit", "verify", "--help"],
        &["audit", "sessions", "--help"],
        &["audit", "show", "--help"],
        &["credentials", "--help"],
        &["credentials", "revoke", "--help"],
    ] {
        let out = gatehouse(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).len() > 200, "{args:?} help is too thin:\n{}", stdout(&out));
    }
}

#[test]
fn minted_tokens_print_alone_and_show_as_exec_credential() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let out = gatehouse(&[
        "token",
        "mint",
        "--config",
        &cfg,
        "--sub",
        "ci-bot",
        "--groups",
        "deployers",
        "--agent",
        "--ttl",
        "5m",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "one JWT alone on stdout: {token}");

    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["token", "show", "--exec-credential"])
        .env("GATEHOUSE_TOKEN", token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let cred: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cred["kind"], "ExecCredential");
    assert_eq!(cred["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(cred["status"]["token"], token);
    assert!(cred["status"]["expirationTimestamp"].as_str().unwrap().ends_with('Z'));

    // Minting needs the development issuer to be on.
    let off = dir.path().join("off.toml");
    std::fs::write(
        &off,
        format!(
            "state_dir = \"s\"\n[[identity.issuers]]\nissuer = \"https://idp.example\"\naudience = \"gatehouse\"\nprincipal = \"User\"\n[policy]\ndir = \"{}\"\n",
            repo("policies")
        ),
    )
    .unwrap();
    let out = gatehouse(&["token", "mint", "--config", off.to_str().unwrap(), "--sub", "x"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("development issuer"), "{}", stderr(&out));
}

#[test]
fn policy_check_test_and_explain_work_on_the_example_set() {
    let out = gatehouse(&["policy", "check", &repo("policies")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = gatehouse(&["policy", "test", &repo("policies")]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("0 failed"), "{}", stdout(&out));

    let out = gatehouse(&[
        "policy",
        "explain",
        "--dir",
        &repo("policies"),
        "--agent",
        "--sub",
        "ci-bot",
        "--action",
        "Postgres::write",
        "--resource",
        "database",
        "--target",
        "orders",
        "--label",
        "env=prod",
        "--context",
        r#"{"statement_kind":"UPDATE","tables":["orders"],"functions":[],"has_where":true,"statement":"UPDATE orders SET a = 1 WHERE id = 2"}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("dba-leads"),
        "explains the approval: {}",
        stdout(&out)
    );
}

#[test]
fn policy_test_fails_on_a_wrong_expectation() {
    let dir = tempfile::tempdir().unwrap();
    gatehouse_testkit::gateway::copy_dir(Path::new(&repo("policies")), dir.path()).unwrap();
    // Turn the set's "dba may write" into a forbid: the shipped test cases must notice.
    let extra = dir.path().join("zz-lockdown.cedar");
    std::fs::write(
        &extra,
        "@id(\"lockdown\")\nforbid (principal, action == Postgres::Action::\"write\", resource);\n",
    )
    .unwrap();
    let out = gatehouse(&["policy", "test", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(!stdout(&out).contains(" 0 failed"), "{}", stdout(&out));
}

#[test]
fn audit_verify_names_the_first_altered_record() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let log = gatehouse_audit::AuditLog::open(&audit, gatehouse_audit::AuditOptions::default()).unwrap();
        for generation in 1..=5 {
            log.append(gatehouse_audit::AuditEvent::PolicyReloaded {
                generation,
                policies: 3,
            })
            .await
            .unwrap();
        }
    });
    let dir_arg = audit.to_str().unwrap();
    let out = gatehouse(&["audit", "verify", "--dir", dir_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("5 records"), "{}", stdout(&out));

    let segment = audit.join("segment-000001.jsonl");
    let text = std::fs::read_to_string(&segment).unwrap();
    std::fs::write(&segment, text.replacen("\"generation\":3", "\"generation\":4", 1)).unwrap();
    let out = gatehouse(&["audit", "verify", "--dir", dir_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("seq 3") || stderr(&out).contains("line 3"),
        "{}",
        stderr(&out)
    );
}
