//! Reading the log back: full verification (safe while the gateway writes), plain record
//! iteration, and the per-session views the console and CLI show.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::chain::{Chain, ProblemKind, Record, VerifyProblem};
use crate::writer::read_head;
use crate::{AuditError, AuditEvent};

/// Result of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Records that verified before the problem, or all of them.
    pub records: u64,
    /// Segment files found.
    pub segments: usize,
    /// The last verified record: `(seq, hash)`.
    pub head: (u64, String),
    /// What `HEAD` said when verification started, if it existed.
    pub head_file: Option<(u64, String)>,
    /// The first problem, if any.
    pub problem: Option<VerifyProblem>,
}

/// One session as the console lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// Session id.
    pub session: String,
    /// Who opened it, for display.
    pub actor: String,
    /// Protocol.
    pub protocol: String,
    /// Target name.
    pub target: String,
    /// Start time (RFC 3339).
    pub started: String,
    /// End time, while the session is still open `None`.
    pub ended: Option<String>,
    /// Requests decided.
    pub requests: u64,
    /// Requests denied.
    pub denied: u64,
    /// `active`, or the reason the session ended.
    pub outcome: String,
}

/// Lines of one segment file.
pub(crate) struct Lines<'a> {
    /// Newline-terminated lines, numbered from 1.
    pub(crate) lines: Vec<(usize, Cow<'a, str>)>,
    /// Bytes after the last newline, with their line number.
    pub(crate) torn: Option<(usize, Cow<'a, str>)>,
}

/// Iterator returned by [`read_records`].
struct RecordIter {
    segments: VecDeque<(u64, PathBuf)>,
    lines: VecDeque<(String, usize, String)>,
}

/// Verifies the whole log in `dir`. Reads `HEAD` first, so records the gateway appends
/// meanwhile are fine; only records up to that head must be present.
pub fn verify(dir: &Path) -> Result<VerifyReport, AuditError> {
    let head = read_head(dir)?;
    let segments = list_segments(dir)?;
    let mut chain = Chain::new();
    if let Some(h) = &head {
        chain.expect_head(h.seq, &h.hash);
    }
    let head_seq = head.as_ref().map_or(0, |h| h.seq);
    let mut missing = Vec::new();
    let mut prev_no = 0;
    let mut end = (segment_name(1), 1);
    let mut problem = None;
    'segments: for (i, (no, path)) in segments.iter().enumerate() {
        missing.extend((prev_no + 1..*no).map(segment_name));
        prev_no = *no;
        let name = segment_name(*no);
        let data = fs::read(path).map_err(|e| AuditError::io("read segment", path, e))?;
        let lines = split_lines(&data);
        for (n, line) in &lines.lines {
            if let Err(p) = chain.push(&name, *n, line) {
                problem = Some(p);
                break 'segments;
            }
        }
        end = (name.clone(), lines.lines.len() + 1);
        if let Some((n, torn)) = &lines.torn {
            let is_last = i + 1 == segments.len();
            // The writer may be in the middle of this line; it matters only if HEAD
            // says records we have not seen yet were written.
            if is_last && chain.last().0 >= head_seq {
                break;
            }
            if let Err(mut p) = chain.push(&name, *n, torn) {
                if is_last && p.kind == ProblemKind::Unparseable {
                    p.kind = ProblemKind::Truncated { head_seq };
                    p.seq = Some(chain.last().0 + 1);
                    p.message =
                        format!("{name} line {n}: the log ends inside a record, before seq {head_seq} named by HEAD");
                }
                problem = Some(p);
                break;
            }
            end = (name, n + 1);
        }
    }
    let records = chain.records();
    let last = chain.last();
    let problem = match problem {
        Some(p) => Some(p),
        None => chain.finish(&end.0, end.1).err(),
    };
    let problem = problem.map(|mut p| {
        if !missing.is_empty() && matches!(p.kind, ProblemKind::Removed { .. } | ProblemKind::Truncated { .. }) {
            p.message
                .push_str(&format!(" (segment files missing: {})", missing.join(", ")));
        }
        p
    });
    Ok(VerifyReport {
        records,
        segments: segments.len(),
        head: last,
        head_file: head.map(|h| (h.seq, h.hash)),
        problem,
    })
}

/// Every record in order, parsed but not verified (use [`verify`] for that). An
/// unterminated final line is one the writer has not finished and is skipped.
pub fn read_records(dir: &Path) -> Result<impl Iterator<Item = Result<Record, AuditError>>, AuditError> {
    Ok(RecordIter {
        segments: list_segments(dir)?.into(),
        lines: VecDeque::new(),
    })
}

/// Sessions in the order they started.
pub fn sessions(dir: &Path) -> Result<Vec<SessionSummary>, AuditError> {
    let mut list: Vec<SessionSummary> = Vec::new();
    let mut index = HashMap::new();
    for record in read_records(dir)? {
        let record = record?;
        match record.event {
            AuditEvent::SessionStarted {
                session,
                actor,
                protocol,
                target,
                ..
            } => {
                index.insert(session.clone(), list.len());
                list.push(SessionSummary {
                    session,
                    actor: actor.to_string(),
                    protocol,
                    target,
                    started: record.time,
                    ended: None,
                    requests: 0,
                    denied: 0,
                    outcome: "active".into(),
                });
            }
            AuditEvent::SessionEnded { session, reason, .. } => {
                if let Some(s) = index.get(&session).map(|&i| &mut list[i]) {
                    s.ended = Some(record.time);
                    s.outcome = reason;
                }
            }
            AuditEvent::RequestDecided { session, decision, .. } => {
                if let Some(s) = index.get(&session).map(|&i| &mut list[i]) {
                    s.requests += 1;
                    if decision == "deny" {
                        s.denied += 1;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(list)
}

/// The records of one session, including the decisions on approvals it requested.
pub fn session_records(dir: &Path, session: &str) -> Result<Vec<Record>, AuditError> {
    let mut approvals = HashSet::new();
    let mut out = Vec::new();
    for record in read_records(dir)? {
        let record = record?;
        let mine = match record.event.session() {
            Some(s) => s == session,
            None => record.event.approval().is_some_and(|a| approvals.contains(a)),
        };
        if mine {
            if let AuditEvent::ApprovalRequested { approval, .. } = &record.event {
                approvals.insert(approval.clone());
            }
            out.push(record);
        }
    }
    Ok(out)
}

/// `segment-000042.jsonl`.
pub(crate) fn segment_name(no: u64) -> String {
    format!("segment-{no:06}.jsonl")
}

/// Segment files in `dir`, by number.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let entries = fs::read_dir(dir).map_err(|e| AuditError::io("list audit directory", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io("list audit directory", dir, e))?;
        let name = entry.file_name();
        let Some(no) = name
            .to_str()
            .and_then(|n| n.strip_prefix("segment-"))
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((no, entry.path()));
    }
    out.sort();
    Ok(out)
}

pub(crate) fn split_lines(data: &[u8]) -> Lines<'_> {
    let mut lines = Vec::new();
    let mut rest = data;
    let mut n = 1;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        lines.push((n, String::from_utf8_lossy(&rest[..i])));
        rest = &rest[i + 1..];
        n += 1;
    }
    let torn = (!rest.is_empty()).then(|| (n, String::from_utf8_lossy(rest)));
    Lines { lines, torn }
}

impl Iterator for RecordIter {
    type Item = Result<Record, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((segment, n, line)) = self.lines.pop_front() {
                return Some(serde_json::from_str(&line).map_err(|e| {
                    AuditError::Corrupt(Box::new(VerifyProblem {
                        seq: None,
                        message: format!("{segment} line {n}: not an audit record: {e}"),
                        segment,
                        line: n,
                        kind: ProblemKind::Unparseable,
                    }))
                }));
            }
            let (no, path) = self.segments.pop_front()?;
            let data = match fs::read(&path) {
                Ok(d) => d,
                Err(e) => return Some(Err(AuditError::io("read segment", path, e))),
            };
            let name = segment_name(no);
            self.lines = split_lines(&data)
                .lines
                .into_iter()
                .map(|(n, l)| (name.clone(), n, l.into_owned()))
                .collect();
        }
    }
}
