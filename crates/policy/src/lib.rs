//! Gatehouse's policy decision point: the Cedar schema and policies of a directory,
//! validated and hot-reloaded, turned into `Allow`, `Deny` or `NeedsApproval` for
//! every request a frontend makes. `cedar-policy` stays inside this crate.
//!
//! Decision rules, in order:
//! 1. A request that cannot be evaluated (unknown action, a resource type the action
//!    does not apply to, a context that does not match the schema) is denied.
//! 2. An evaluation error in any policy denies, naming the policy: Cedar skips a
//!    policy that errors, and for a forbid that would fail open.
//! 3. A satisfied forbid denies, naming the forbids.
//! 4. No satisfied permit denies: "no policy permits this request".
//! 5. If every satisfied permit carries `@approval("<group>")`, the request needs
//!    approval; the first of those permits by id sets the group,
//!    `@approvals_required` and `@approval_timeout` (nothing is merged from the others).
//! 6. Otherwise it is allowed.
//!
//! Policy ids come from `@id("...")`, else `<file path without .cedar>:<index>`
//! (the file stem for files directly in the directory); a duplicate id fails the load.

mod annotations;
mod check;
mod engine;
mod error;
mod model;
mod store;
mod testing;

pub use check::{CheckSummary, check_dir};
pub use engine::{EntityCache, PolicyEngine};
pub use error::{PolicyError, Problem};
pub use model::{AuthzRequest, Decision, Namespace, Resource, ResourceKind};
pub use testing::{CaseResult, TestReport, run_tests};

#[cfg(test)]
mod tests;
