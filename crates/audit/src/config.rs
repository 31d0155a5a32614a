//! How durable an append must be before it is acknowledged, and how large segments grow:
//! the typed `[audit]` config section and the options the writer runs with.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::AuditError;

/// When the writer calls fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// One fsync per batch, as soon as the queued records are written (the default).
    Always,
    /// Acknowledge once the batch is written to the segment (the OS has it: a gateway crash
    /// loses nothing), and fsync at most `max_delay` later, sharing one fsync among every
    /// record written meanwhile. A power loss can lose at most `max_delay` of records;
    /// `HEAD` only ever names fsynced records.
    Group {
        /// Longest time the first record of a batch waits for company.
        max_delay: Duration,
    },
}

/// Options for [`crate::AuditLog::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditOptions {
    /// When to fsync; default [`FsyncPolicy::Always`].
    pub fsync: FsyncPolicy,
    /// A segment rotates once the next record would take it past this size; default 64 MiB.
    pub segment_max_bytes: u64,
}

/// `fsync` in the config file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    /// Every batch is fsynced before it is acknowledged.
    Always,
    /// Acknowledged once written; fsynced at most `group_commit_ms` later (the default).
    #[default]
    Group,
}

/// The `[audit]` config section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// `"group"` (default) or `"always"`.
    pub fsync: FsyncMode,
    /// With `fsync = "group"`: the longest a written record waits for its fsync (1..=1000 ms).
    pub group_commit_ms: u64,
    /// Size at which a segment file rotates, in bytes (at least 4096; default 64 MiB).
    pub segment_max_bytes: u64,
}

const DEFAULT_SEGMENT_MAX_BYTES: u64 = 64 * 1024 * 1024;

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Always,
            segment_max_bytes: DEFAULT_SEGMENT_MAX_BYTES,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            fsync: FsyncMode::Group,
            group_commit_ms: 5,
            segment_max_bytes: DEFAULT_SEGMENT_MAX_BYTES,
        }
    }
}

impl AuditConfig {
    /// Rejects values that would make the log useless (tiny segments) or slow to
    /// acknowledge (long group commits).
    pub fn validate(&self) -> Result<(), AuditError> {
        if self.fsync == FsyncMode::Group && !(1..=1000).contains(&self.group_commit_ms) {
            return Err(AuditError::Config(format!(
                "group_commit_ms must be between 1 and 1000, not {}",
                self.group_commit_ms
            )));
        }
        if self.segment_max_bytes < 4096 {
            return Err(AuditError::Config(format!(
                "segment_max_bytes must be at least 4096, not {}",
                self.segment_max_bytes
            )));
        }
        Ok(())
    }

    /// The writer options this section describes (after [`Self::validate`]).
    pub fn options(&self) -> AuditOptions {
        let fsync = match self.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Group => FsyncPolicy::Group {
                max_delay: Duration::from_millis(self.group_commit_ms),
            },
        };
        AuditOptions {
            fsync,
            segment_max_bytes: self.segment_max_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_group_commit_and_rejects_unknown_keys() {
        let c: AuditConfig = serde_json::from_str(r#"{"fsync":"group","group_commit_ms":3}"#).unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.options().fsync,
            FsyncPolicy::Group {
                max_delay: Duration::from_millis(3)
            }
        );
        assert_eq!(c.options().segment_max_bytes, 64 * 1024 * 1024);
        // The config's default is group commit within 5 ms.
        let d: AuditConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(
            d.options().fsync,
            FsyncPolicy::Group {
                max_delay: Duration::from_millis(5)
            }
        );
        assert!(serde_json::from_str::<AuditConfig>(r#"{"fsync":"sometimes"}"#).is_err());
        assert!(serde_json::from_str::<AuditConfig>(r#"{"fsync_ms":3}"#).is_err());
        let bad = AuditConfig {
            fsync: FsyncMode::Group,
            group_commit_ms: 0,
            ..AuditConfig::default()
        };
        assert!(bad.validate().is_err());
        let tiny = AuditConfig {
            segment_max_bytes: 10,
            ..AuditConfig::default()
        };
        assert!(tiny.validate().is_err());
    }
}
