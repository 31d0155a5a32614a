//! The broker against the repository's real policies, a real audit log and a real SQLite
//! store in a temp dir; identities are built directly, no tokens needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gatehouse_audit::{AuditLog, AuditOptions};
use gatehouse_identity::{Identity, PrincipalKind};
use gatehouse_policy::{PolicyEngine, Resource, ResourceKind};

use super::*;

const ISSUER: &str = "https://idp.example.com";
const STATEMENT: &str = "DELETE FROM orders WHERE id = $1";

struct Fixture {
    dir: tempfile::TempDir,
    audit: AuditLog,
    policy: Arc<PolicyEngine>,
    broker: ApprovalBroker,
    resource: Resource,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let policy = Arc::new(PolicyEngine::load(&policies).unwrap());
    let audit = AuditLog::open(&dir.path().join("audit"), AuditOptions::default()).unwrap();
    let store = SqliteApprovalStore::open(&db_path(dir.path())).unwrap();
    let broker = ApprovalBroker::new(Arc::new(store), policy.clone(), audit.clone());
    let resource = Resource {
        kind: ResourceKind::Database,
        name: "orders".into(),
        labels: BTreeMap::from([("env".into(), "prod".into())]),
    };
    Fixture {
        dir,
        audit,
        policy,
        broker,
        resource,
    }
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join("gatehouse.db")
}

fn person(subject: &str, groups: &[&str]) -> Identity {
    Identity {
        issuer: ISSUER.into(),
        subject: subject.into(),
        kind: PrincipalKind::User,
        email: Some(format!("{subject}@example.com")),
        name: None,
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        owner: None,
        expires_at: SystemTime::now() + Duration::from_secs(3600),
    }
}

/// An agent owned by alice, in the approver group itself so that only the agent rule stops it.
fn agent(subject: &str) -> Identity {
    Identity {
        kind: PrincipalKind::Agent,
        email: None,
        owner: Some("alice@example.com".into()),
        ..person(subject, &["agents", "dba-leads"])
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()))
}

impl Fixture {
    async fn ask(&self, requester: &Identity, required: u32, timeout: Option<Duration>) -> (ApprovalRequest, Waiter) {
        self.broker
            .request(NewApproval {
                requester,
                session: "sess-1",
                request_number: 3,
                resource: &self.resource,
                protocol: Protocol::Postgres,
                action: "write",
                request: STATEMENT,
                request_sha256: &sha256_hex(STATEMENT),
                approver_group: "dba-leads",
                approvals_required: required,
                timeout,
            })
            .await
            .unwrap()
    }

    /// The audit event kinds recorded for one approval, in order.
    fn audited(&self, id: &str) -> Vec<&'static str> {
        gatehouse_audit::read_records(&self.dir.path().join("audit"))
            .unwrap()
            .map(|r| r.unwrap().event)
            .filter(|e| e.approval() == Some(id))
            .map(|e| e.kind())
            .collect()
    }
}

#[tokio::test]
async fn segregation_of_duties_refuses_each_rule() {
    let f = fixture();
    let requester = agent("agent-7");
    let (request, _waiter) = f.ask(&requester, 1, None).await;
    let id = request.id.as_str();

    let err = f.broker.approve(id, &requester, None).await.unwrap_err();
    assert!(matches!(err, ApprovalError::OwnRequest), "{err}");
    let err = f.broker.deny(id, &requester, "no").await.unwrap_err();
    assert!(matches!(err, ApprovalError::OwnRequest), "{err}");
    let err = f.broker.approve(id, &agent("agent-9"), None).await.unwrap_err();
    assert!(matches!(err, ApprovalError::AgentCannotApprove), "{err}");
    // alice owns the agent: matched by email here and by subject below.
    let err = f
        .broker
        .approve(id, &person("alice", &["dba-leads"]), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ApprovalError::OwnerOfAgent), "{err}");
    let owner_by_subject = Identity {
        subject: "alice@example.com".into(),
        email: None,
        ..person("x", &["dba-leads"])
    };
    let err = f.broker.deny(id, &owner_by_subject, "no").await.unwrap_err();
    assert!(matches!(err, ApprovalError::OwnerOfAgent), "{err}");
    let err = f
        .broker
        .approve(id, &person("dave", &["developers"]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApprovalError::NotInApproverGroup(ref g) if g == "dba-leads"),
        "{err}"
    );

    // A human's own request: refused even though the requester is in the approver group.
    let frank = person("frank", &["dba-leads"]);
    let (own, _own_waiter) = f.ask(&frank, 1, None).await;
    let err = f.broker.approve(&own.id, &frank, None).await.unwrap_err();
    assert!(matches!(err, ApprovalError::OwnRequest), "{err}");

    let after = f.broker.get(id).unwrap();
    assert_eq!(after.state, ApprovalState::Pending);
    assert!(after.votes.is_empty());
    // Each refused attempt on it is on record.
    let mut expected = vec!["approval_requested"];
    expected.extend(["approval_refused"; 6]);
    assert_eq!(f.audited(id), expected);
}

#[tokio::test]
async fn approver_group_member_needs_the_policy_too() {
    let f = fixture();
    // The group on the request comes from an annotation; no policy lets this group approve.
    let (request, _waiter) = f
        .broker
        .request(NewApproval {
            requester: &agent("agent-7"),
            session: "sess-1",
            request_number: 1,
            resource: &f.resource,
            protocol: Protocol::Postgres,
            action: "write",
            request: STATEMENT,
            request_sha256: &sha256_hex(STATEMENT),
            approver_group: "db-reviewers",
            approvals_required: 1,
            timeout: None,
        })
        .await
        .unwrap();
    let err = f
        .broker
        .approve(&request.id, &person("erin", &["db-reviewers"]), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ApprovalError::NotPermittedByPolicy(_)), "{err}");
    assert_eq!(f.broker.get(&request.id).unwrap().state, ApprovalState::Pending);
}

#[tokio::test]
async fn dba_lead_approves_an_agents_request() {
    let f = fixture();
    let (request, waiter) = f.ask(&agent("agent-7"), 1, None).await;
    assert_eq!(request.action, "Postgres::write");
    assert_eq!(request.state, ApprovalState::Pending);
    assert_eq!(waiter.id(), request.id);
    let bob = person("bob", &["dba-leads"]);
    let after = f.broker.approve(&request.id, &bob, Some("looks right")).await.unwrap();
    assert_eq!(after.state, ApprovalState::Approved);
    assert_eq!(after.votes.len(), 1);
    assert_eq!(after.votes[0].reason.as_deref(), Some("looks right"));
    match f.broker.wait(waiter).await {
        Outcome::Approved { approvers } => assert_eq!(approvers, vec![Actor::from(&bob)]),
        other => panic!("expected approval, got {other:?}"),
    }
    let err = f
        .broker
        .approve(&request.id, &person("carol", &["dba-leads"]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApprovalError::AlreadyDecided(ApprovalState::Approved)),
        "{err}"
    );
    assert_eq!(
        f.audited(&request.id),
        ["approval_requested", "approval_granted", "approval_refused"]
    );
}

#[tokio::test]
async fn two_distinct_approvers_are_needed_for_a_quorum_of_two() {
    let f = fixture();
    let (request, waiter) = f.ask(&agent("agent-7"), 2, None).await;
    let bob = person("bob", &["dba-leads"]);
    let first = f.broker.approve(&request.id, &bob, None).await.unwrap();
    assert_eq!(first.state, ApprovalState::Pending);
    assert!(
        waiter.rx.borrow().is_none(),
        "one approval must not release the request"
    );
    let err = f.broker.approve(&request.id, &bob, None).await.unwrap_err();
    assert!(matches!(err, ApprovalError::AlreadyVoted), "{err}");
    assert_eq!(f.broker.get(&request.id).unwrap().state, ApprovalState::Pending);
    let carol = person("carol", &["dba-leads"]);
    let second = f.broker.approve(&request.id, &carol, None).await.unwrap();
    assert_eq!(second.state, ApprovalState::Approved);
    match waiter.wait().await {
        Outcome::Approved { approvers } => assert_eq!(approvers, vec![Actor::from(&bob), Actor::from(&carol)]),
        other => panic!("expected approval, got {other:?}"),
    }
    assert_eq!(
        f.audited(&request.id),
        [
            "approval_requested",
            "approval_granted",
            "approval_refused",
            "approval_granted"
        ]
    );
}

#[tokio::test]
async fn a_denial_resolves_the_wait_with_its_reason() {
    let f = fixture();
    let (request, waiter) = f.ask(&agent("agent-7"), 2, None).await;
    let bob = person("bob", &["dba-leads"]);
    let after = f.broker.deny(&request.id, &bob, "not during the freeze").await.unwrap();
    assert_eq!(after.state, ApprovalState::Denied);
    assert_eq!(
        waiter.wait().await,
        Outcome::Denied {
            approver: Actor::from(&bob),
            reason: "not during the freeze".into()
        }
    );
    let err = f
        .broker
        .approve(&request.id, &person("carol", &["dba-leads"]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApprovalError::AlreadyDecided(ApprovalState::Denied)),
        "{err}"
    );
    assert_eq!(
        f.audited(&request.id),
        ["approval_requested", "approval_denied", "approval_refused"]
    );
}

#[tokio::test(start_paused = true)]
async fn an_undecided_request_expires() {
    let f = fixture();
    let (request, waiter) = f.ask(&agent("agent-7"), 1, None).await;
    let started = tokio::time::Instant::now();
    assert_eq!(waiter.wait().await, Outcome::Expired);
    assert!(started.elapsed() >= DEFAULT_APPROVAL_TIMEOUT - Duration::from_secs(1));
    assert_eq!(f.broker.get(&request.id).unwrap().state, ApprovalState::Expired);
    let err = f
        .broker
        .approve(&request.id, &person("bob", &["dba-leads"]), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ApprovalError::Expired), "{err}");
    assert_eq!(
        f.audited(&request.id),
        ["approval_requested", "approval_expired", "approval_refused"]
    );
}

#[tokio::test]
async fn dropping_the_waiter_withdraws_the_request() {
    let f = fixture();
    let (request, waiter) = f.ask(&agent("agent-7"), 1, None).await;
    drop(waiter);
    let withdrawn = tokio::time::timeout(Duration::from_secs(10), async {
        while f.broker.get(&request.id).unwrap().state == ApprovalState::Pending {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(withdrawn.is_ok(), "the request stayed pending");
    assert_eq!(f.broker.get(&request.id).unwrap().state, ApprovalState::Withdrawn);
    // The audit record is written right after the state changes.
    tokio::time::timeout(Duration::from_secs(10), async {
        while f.audited(&request.id).len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(f.audited(&request.id), ["approval_requested", "approval_withdrawn"]);
    let err = f
        .broker
        .approve(&request.id, &person("bob", &["dba-leads"]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApprovalError::AlreadyDecided(ApprovalState::Withdrawn)),
        "{err}"
    );
}

#[tokio::test]
async fn an_approval_is_consumed_once_by_its_own_session_and_request() {
    let f = fixture();
    let (request, waiter) = f.ask(&agent("agent-7"), 1, None).await;
    let hash = sha256_hex(STATEMENT);
    let err = f.broker.consume(&request.id, "sess-1", &hash).await.unwrap_err();
    assert!(
        matches!(err, ApprovalError::AlreadyDecided(ApprovalState::Pending)),
        "{err}"
    );
    f.broker
        .approve(&request.id, &person("bob", &["dba-leads"]), None)
        .await
        .unwrap();
    assert!(matches!(waiter.wait().await, Outcome::Approved { .. }));

    let err = f.broker.consume(&request.id, "sess-2", &hash).await.unwrap_err();
    assert!(matches!(err, ApprovalError::NotBound), "{err}");
    let other = sha256_hex("DELETE FROM orders");
    let err = f.broker.consume(&request.id, "sess-1", &other).await.unwrap_err();
    assert!(matches!(err, ApprovalError::NotBound), "{err}");
    let used = f.broker.consume(&request.id, "sess-1", &hash).await.unwrap();
    assert_eq!(used.state, ApprovalState::Executed);
    let err = f.broker.consume(&request.id, "sess-1", &hash).await.unwrap_err();
    assert!(
        matches!(err, ApprovalError::AlreadyDecided(ApprovalState::Executed)),
        "{err}"
    );
    let err = f.broker.consume("ZZZZ-ZZZZ-ZZZZ", "sess-1", &hash).await.unwrap_err();
    assert!(matches!(err, ApprovalError::NotFound), "{err}");
    assert_eq!(
        f.audited(&request.id),
        ["approval_requested", "approval_granted", "approval_executed"]
    );
}

#[tokio::test]
async fn a_restart_keeps_history_and_withdraws_orphans() {
    let f = fixture();
    let (request, _waiter) = f.ask(&agent("agent-7"), 2, None).await;
    let bob = person("bob", &["dba-leads"]);
    f.broker.approve(&request.id, &bob, Some("first of two")).await.unwrap();
    let (denied, denied_waiter) = f.ask(&agent("agent-7"), 1, None).await;
    f.broker.deny(&denied.id, &bob, "no").await.unwrap();
    drop(denied_waiter);

    // A new broker on a fresh connection to the same file, as after a restart.
    let store = SqliteApprovalStore::open(&db_path(f.dir.path())).unwrap();
    let restarted = ApprovalBroker::new(Arc::new(store), f.policy.clone(), f.audit.clone());
    let kept = restarted.get(&request.id).unwrap();
    assert_eq!(kept.state, ApprovalState::Pending);
    // Token expiry is stored to the second, so compare who asked rather than the whole value.
    assert_eq!(Actor::from(&kept.requester), Actor::from(&request.requester));
    assert_eq!(kept.request, STATEMENT);
    assert_eq!(kept.target_labels, request.target_labels);
    assert_eq!(kept.votes.len(), 1);
    assert_eq!(kept.votes[0].approver, Actor::from(&bob));
    assert_eq!(restarted.list(Some(ApprovalState::Pending)).unwrap().len(), 1);
    assert_eq!(restarted.list(None).unwrap().len(), 2);

    assert_eq!(restarted.mark_orphans_withdrawn().await.unwrap(), 1);
    assert_eq!(restarted.get(&request.id).unwrap().state, ApprovalState::Withdrawn);
    assert_eq!(restarted.get(&denied.id).unwrap().state, ApprovalState::Denied);
    assert!(restarted.list(Some(ApprovalState::Pending)).unwrap().is_empty());
    assert_eq!(
        f.audited(&request.id),
        ["approval_requested", "approval_granted", "approval_withdrawn"]
    );
}

#[test]
fn ids_are_short_readable_and_random() {
    let ids: Vec<String> = (0..200).map(|_| new_id()).collect();
    for id in &ids {
        assert_eq!(id.len(), 14, "{id}");
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(groups.len(), 3, "{id}");
        assert!(groups.iter().all(|g| g.len() == 4), "{id}");
        assert!(id.chars().all(|c| c == '-' || ID_ALPHABET.contains(&(c as u8))), "{id}");
        assert!(!id.contains(['0', 'O', '1', 'l', 'I']), "{id}");
    }
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
}
