//! `gatehouse policy check DIR`: load and strictly validate a policy directory
//! without starting anything, and say what was found.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{PolicyError, Problem};
use crate::store::{PolicyStore, SCHEMA_FILE};

/// What a successful check found.
#[derive(Clone, Debug)]
pub struct CheckSummary {
    /// The schema file.
    pub schema: PathBuf,
    /// Policy files, relative to the directory, sorted.
    pub files: Vec<PathBuf>,
    /// Number of policies.
    pub policy_count: usize,
    /// Number of permits that need approval.
    pub approval_policies: usize,
    /// Cedar's warnings (they do not fail the check).
    pub warnings: Vec<Problem>,
}

/// Loads and strictly validates `dir` as `PolicyEngine::load` would.
pub fn check_dir(dir: &Path) -> Result<CheckSummary, PolicyError> {
    let store = PolicyStore::load(dir, 1)?;
    Ok(CheckSummary {
        schema: dir.join(SCHEMA_FILE),
        files: store.files.clone(),
        policy_count: store.policies.num_of_policies(),
        approval_policies: store.meta.values().filter(|m| m.approval.is_some()).count(),
        warnings: store.warnings.clone(),
    })
}

impl fmt::Display for CheckSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ok: {} policies ({} needing approval) in {} files validate against {}",
            self.policy_count,
            self.approval_policies,
            self.files.len(),
            self.schema.display()
        )?;
        for warning in &self.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        Ok(())
    }
}
