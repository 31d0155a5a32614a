//! The gateway's tamper-evident memory: typed audit events written to a hash-chained,
//! append-only log that `gatehouse audit verify` can check, even while the gateway writes.
//!
//! Layout of `{state_dir}/audit`:
//! - `segment-000001.jsonl`, `segment-000002.jsonl`, ...: one [`Record`] per line, rotated
//!   by size; the first record of a segment chains to the last record of the previous one.
//! - `HEAD`: `{"seq":N,"hash":"..."}`, rewritten (temp file + rename) after every durable
//!   batch, so removing records from the end of the log is detected.
//! - `LOCK`: held by the one process that writes the log.
//!
//! The hash of a record is defined in [`chain`].

pub mod chain;
mod config;
mod error;
mod event;
mod read;
mod writer;

pub use chain::{Chain, ProblemKind, Record, VerifyProblem, sha256_hex};
pub use config::{AuditConfig, AuditOptions, FsyncMode, FsyncPolicy};
pub use error::AuditError;
pub use event::{Actor, AuditEvent, TargetFailure};
pub use read::{SessionSummary, VerifyReport, read_records, session_records, sessions, verify};
pub use writer::{AuditLog, LatencyStats};
