//! `gatehouse policy test DIR`: policy tests kept beside the policies, so that a
//! policy change is reviewed with the cases it keeps (or breaks).
//!
//! Each `DIR/tests/*.toml` file holds cases:
//!
//! ```toml
//! # optional: context fields shared by the cases of one action, merged under each
//! # case's own `context` (the case wins)
//! [context_defaults."Postgres::write"]
//! statement_kind = "UPDATE"
//! tables = ["orders"]
//!
//! [[case]]
//! name = "an agent's write on prod waits for dba-leads"
//! principal = { kind = "agent", subject = "agent-7", groups = [], owner = "alice" }
//! action = "Postgres::write"
//! resource = { kind = "database", name = "orders", labels = { env = "prod" } }
//! context = { functions = [], has_where = true, statement = "UPDATE ..." }
//! expect = "needs_approval"        # "allow" | "deny" | "needs_approval"
//! approver_group = "dba-leads"     # optional, for needs_approval
//! approvals_required = 1           # optional, for needs_approval
//! policies = ["..."]               # optional: exactly the deciding policy ids
//! reason_contains = "..."          # optional, for deny
//! ```
//!
//! Principals may also set `issuer`, `email` and `name`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::engine::PolicyEngine;
use crate::error::{PolicyError, Problem};
use crate::model::{AuthzRequest, Decision, Namespace, Resource, ResourceKind};
use gatehouse_identity::{Identity, PrincipalKind};

/// The directory under the policy directory that holds the test files.
const TESTS_DIR: &str = "tests";

/// The outcome of every case in every test file.
#[derive(Clone, Debug, Default)]
pub struct TestReport {
    /// One entry per case, in file order.
    pub cases: Vec<CaseResult>,
}

/// The outcome of one case.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// The test file, relative to the policy directory.
    pub file: PathBuf,
    /// The case's name.
    pub name: String,
    /// What the case expected, e.g. `needs_approval by dba-leads`.
    pub expected: String,
    /// What the engine decided.
    pub decision: Decision,
    /// `None` when the case passed, otherwise why it failed.
    pub failure: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    context_defaults: BTreeMap<String, toml::Table>,
    #[serde(default, rename = "case")]
    cases: Vec<TestCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    principal: TestPrincipal,
    action: String,
    resource: TestResource,
    #[serde(default)]
    context: toml::Table,
    expect: Expect,
    approver_group: Option<String>,
    approvals_required: Option<u32>,
    policies: Option<Vec<String>>,
    reason_contains: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestPrincipal {
    kind: Kind,
    subject: String,
    #[serde(default)]
    groups: Vec<String>,
    owner: Option<String>,
    email: Option<String>,
    name: Option<String>,
    issuer: Option<String>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    User,
    Agent,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestResource {
    kind: String,
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Expect {
    Allow,
    Deny,
    NeedsApproval,
}

/// Loads the policies in `dir` and runs every case in `dir/tests/*.toml`.
/// `Err` means the policies or a test file could not be read; failing cases are
/// in the report.
pub fn run_tests(dir: &Path) -> Result<TestReport, PolicyError> {
    let engine = PolicyEngine::load(dir)?;
    let tests_dir = dir.join(TESTS_DIR);
    let mut files = Vec::new();
    let entries = fs::read_dir(&tests_dir).map_err(|source| PolicyError::Io {
        path: tests_dir.clone(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| PolicyError::Io {
            path: tests_dir.clone(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(PolicyError::NoTests { dir: tests_dir });
    }

    let mut report = TestReport::default();
    let mut problems = Vec::new();
    for path in files {
        let rel = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
        let src = fs::read_to_string(&path).map_err(|source| PolicyError::Io {
            path: path.clone(),
            source,
        })?;
        let file: TestFile = match toml::from_str(&src) {
            Ok(file) => file,
            Err(e) => {
                let message = e.message().to_owned();
                problems.push(match e.span() {
                    Some(span) => Problem::at_offset(&rel, &src, span.start, message),
                    None => Problem::in_file(&rel, message),
                });
                continue;
            }
        };
        if file.cases.is_empty() {
            problems.push(Problem::in_file(&rel, "no [[case]] in this file"));
        }
        for case in &file.cases {
            match run_case(&engine, &file, case) {
                Ok((expected, decision, failure)) => report.cases.push(CaseResult {
                    file: rel.clone(),
                    name: case.name.clone(),
                    expected,
                    decision,
                    failure,
                }),
                Err(message) => problems.push(Problem::in_file(&rel, format!("case {:?}: {message}", case.name))),
            }
        }
    }
    if !problems.is_empty() {
        return Err(PolicyError::Invalid { problems });
    }
    Ok(report)
}

/// Runs one case: `Err` is a malformed case, not a failing one.
fn run_case(
    engine: &PolicyEngine,
    file: &TestFile,
    case: &TestCase,
) -> Result<(String, Decision, Option<String>), String> {
    let (namespace, action) = case
        .action
        .split_once("::")
        .ok_or_else(|| format!("action {:?} is not \"<Namespace>::<action>\"", case.action))?;
    let namespace: Namespace = namespace.parse()?;
    let kind: ResourceKind = case.resource.kind.parse()?;
    let resource = Resource {
        kind,
        name: case.resource.name.clone(),
        labels: case.resource.labels.clone(),
    };
    let p = &case.principal;
    let identity = Identity {
        issuer: p.issuer.clone().unwrap_or_else(|| "https://issuer.test".to_owned()),
        subject: p.subject.clone(),
        kind: match p.kind {
            Kind::User => PrincipalKind::User,
            Kind::Agent => PrincipalKind::Agent,
        },
        email: p.email.clone(),
        name: p.name.clone(),
        groups: p.groups.clone(),
        owner: p.owner.clone(),
        expires_at: SystemTime::now() + Duration::from_secs(3600),
    };
    let mut context = file.context_defaults.get(&case.action).cloned().unwrap_or_default();
    context.extend(case.context.clone());
    let context = serde_json::to_value(context).map_err(|e| format!("context: {e}"))?;

    let decision = engine.authorize(&AuthzRequest {
        principal: &identity,
        namespace,
        action,
        resource: &resource,
        context,
    });

    let mut expected = match case.expect {
        Expect::Allow => "allow".to_owned(),
        Expect::Deny => "deny".to_owned(),
        Expect::NeedsApproval => "needs_approval".to_owned(),
    };
    if let Some(group) = &case.approver_group {
        expected.push_str(" by ");
        expected.push_str(group);
    }
    let mut failures = Vec::new();
    let matches_kind = matches!(
        (case.expect, &decision),
        (Expect::Allow, Decision::Allow { .. })
            | (Expect::Deny, Decision::Deny { .. })
            | (Expect::NeedsApproval, Decision::NeedsApproval { .. })
    );
    if !matches_kind {
        failures.push(format!("expected {expected}, got {decision}"));
    }
    if let Decision::NeedsApproval {
        approver_group,
        approvals_required,
        ..
    } = &decision
    {
        if let Some(group) = case.approver_group.as_ref().filter(|g| *g != approver_group) {
            failures.push(format!("expected approver group {group}, got {approver_group}"));
        }
        if let Some(n) = case.approvals_required.filter(|n| n != approvals_required) {
            failures.push(format!("expected {n} approvals, got {approvals_required}"));
        }
    }
    if let Some(policies) = &case.policies {
        let mut want = policies.clone();
        want.sort();
        if want.as_slice() != decision.policies() {
            failures.push(format!(
                "expected policies [{}], got [{}]",
                want.join(", "),
                decision.policies().join(", ")
            ));
        }
    }
    if let (Some(needle), Decision::Deny { reason, .. }) = (&case.reason_contains, &decision)
        && !reason.contains(needle.as_str())
    {
        failures.push(format!("expected the reason to contain {needle:?}, got {reason:?}"));
    }
    let failure = (!failures.is_empty()).then(|| failures.join("; "));
    Ok((expected, decision, failure))
}

impl TestReport {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.failure.is_none()).count()
    }

    /// Cases that failed.
    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }

    /// True when every case passed (and there was at least one).
    pub fn all_passed(&self) -> bool {
        !self.cases.is_empty() && self.failed() == 0
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file_width = self
            .cases
            .iter()
            .map(|c| c.file.display().to_string().chars().count())
            .max()
            .unwrap_or(0)
            .max(4);
        let name_width = self
            .cases
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0)
            .max(4);
        writeln!(f, "{:<6}{:<file_width$}  {:<name_width$}  DECISION", "", "FILE", "CASE")?;
        for case in &self.cases {
            let status = if case.failure.is_some() { "FAIL" } else { "ok" };
            writeln!(
                f,
                "{status:<6}{:<file_width$}  {:<name_width$}  {}",
                case.file.display().to_string(),
                case.name,
                case.decision
            )?;
            if let Some(failure) = &case.failure {
                writeln!(f, "{:6}^ {failure}", "")?;
            }
        }
        writeln!(f, "{} passed, {} failed", self.passed(), self.failed())
    }
}
