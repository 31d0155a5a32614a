//! The hash chain, without I/O: how a record is sealed and how a sequence of stored lines
//! is checked, so both are unit-tested and fuzzed on plain strings.
//!
//! # Record format and hash
//!
//! A record is one line of JSON, written exactly as
//!
//! ```text
//! {"seq":<N>,"time":"<RFC 3339 UTC, millis>","prev":"<64 hex>","hash":"<64 hex>",<event fields>}
//! ```
//!
//! where `<event fields>` is the compact `serde_json` serialisation of the [`AuditEvent`]
//! without its opening brace (so it starts with `"event":"<kind>"`). `seq` counts from 1
//! with no gaps across all segments; `prev` is the `hash` of record `seq - 1`, or 64
//! zeros for record 1.
//!
//! `hash` is the lowercase hex SHA-256 of the line's UTF-8 bytes with the `"hash":"<64 hex>",`
//! member removed, i.e. of `{"seq":<N>,"time":"...","prev":"...",<event fields>}`, with no
//! trailing newline. The hash covers the stored bytes, not a re-serialisation, so any
//! edited byte (even whitespace or key order) is detected and verification never depends
//! on how a JSON library prints numbers. A line that does not start with the exact prefix
//! above is not in canonical form and fails verification.
//!
//! The chain is unkeyed: it proves that records were not altered, removed, reordered or
//! inserted after the fact by anyone who did not also rewrite every later record and
//! `HEAD`; shipping records off the host is what defends against that.

use std::fmt;

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

use crate::AuditEvent;

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One stored line of the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Position in the log, from 1, gap-free across segments.
    pub seq: u64,
    /// When the writer sealed it: RFC 3339 UTC with milliseconds.
    pub time: String,
    /// Hash of the previous record; [`GENESIS`] for the first.
    pub prev: String,
    /// Hash of this record, see the module documentation.
    pub hash: String,
    /// What happened.
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// What is wrong with the log at a [`VerifyProblem`]'s position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The record's content does not match its hash, or it does not chain to the record
    /// before it.
    Altered,
    /// Records `first..=last` are missing before this position.
    Removed {
        /// First missing seq.
        first: u64,
        /// Last missing seq.
        last: u64,
    },
    /// Records are present but out of order; this is the first one out of place.
    Reordered,
    /// A record that belongs elsewhere (a seq already seen) was added here.
    Inserted,
    /// `HEAD` names a record the log no longer has: the tail was cut off.
    Truncated {
        /// The seq `HEAD` names.
        head_seq: u64,
    },
    /// The line is not a record.
    Unparseable,
}

/// The first bad place in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyProblem {
    /// The seq of the record at this position, when it could be read, or the first
    /// missing seq for [`ProblemKind::Removed`] and [`ProblemKind::Truncated`].
    pub seq: Option<u64>,
    /// Segment file name, e.g. `segment-000002.jsonl`.
    pub segment: String,
    /// 1-based line within the segment.
    pub line: usize,
    /// The kind of damage.
    pub kind: ProblemKind,
    /// A sentence for the operator.
    pub message: String,
}

/// Checks stored lines in order and reports the first problem.
///
/// A seq gap is not decided at once: if a missing seq turns up later, the records were
/// reordered, otherwise removed. So after a gap the chain keeps reading (only looking at
/// seqs) until a missing one appears or [`Chain::finish`] is called.
#[derive(Debug)]
pub struct Chain {
    /// The seq the next record must have; `None` until the first record when resuming
    /// mid-log.
    expected: Option<u64>,
    last_hash: String,
    records: u64,
    head: Option<(u64, String)>,
    gap: Option<Gap>,
}

/// A seq gap not yet classified as removal or reordering.
#[derive(Debug)]
struct Gap {
    first: u64,
    last: u64,
    found: u64,
    problem: VerifyProblem,
}

/// Why a single line is not a valid record, before chaining is considered.
#[derive(Debug, PartialEq, Eq)]
pub enum LineError {
    /// Not JSON, or not a record.
    Unparseable(String),
    /// Parsed, but the hash does not match the bytes.
    Altered {
        /// The seq the line claims.
        seq: u64,
        /// What does not match.
        message: String,
    },
}

/// Builds the stored line (without newline) and its hash for an event.
pub fn seal(seq: u64, time: &str, prev: &str, event: &AuditEvent) -> Result<(String, String), serde_json::Error> {
    let mut line = Vec::with_capacity(512);
    let hash = seal_into(&mut line, seq, time, prev, event)?;
    // Only JSON was written: the serialiser and the ASCII prefix produce UTF-8.
    let line = String::from_utf8(line).map_err(|e| serde_json::Error::io(std::io::Error::other(e)))?;
    Ok((line, hash))
}

/// [`seal`] appending the line (without newline) to `out`. On error `out` is left as it
/// was.
pub fn seal_into(
    out: &mut Vec<u8>,
    seq: u64,
    time: &str,
    prev: &str,
    event: &AuditEvent,
) -> Result<String, serde_json::Error> {
    seal_fields(out, seq, time, prev, &Fields::of(event)?)
}

/// An event serialised as it goes into a record, before its place in the chain is known:
/// the writer serialises outside its locks and only seals (prefix and hash) inside them.
#[derive(Debug)]
pub struct Fields(Vec<u8>);

impl Fields {
    /// Serialises `event`.
    pub fn of(event: &AuditEvent) -> Result<Self, serde_json::Error> {
        let mut json = Vec::with_capacity(512);
        serde_json::to_writer(&mut json, event)?;
        Ok(Self(json))
    }

    /// The fields after the record's prefix: an internally tagged enum always serialises
    /// as a non-empty object, so this is its JSON without the opening `{`.
    fn after_prefix(&self) -> &[u8] {
        self.0.get(1..).unwrap_or_default()
    }
}

/// Appends the record line (without newline) sealing `fields` as `seq` after `prev` to
/// `out`; returns its hash. On error `out` is left as it was.
pub fn seal_fields(
    out: &mut Vec<u8>,
    seq: u64,
    time: &str,
    prev: &str,
    fields: &Fields,
) -> Result<String, serde_json::Error> {
    let start = out.len();
    let hash_at = match write_prefix(out, seq, time, prev) {
        Ok(at) => at,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    out.extend_from_slice(b"\"hash\":\"");
    let hex_at = out.len();
    out.extend_from_slice(&[b'0'; 64]);
    out.extend_from_slice(b"\",");
    let fields_at = out.len();
    out.extend_from_slice(fields.after_prefix());
    let mut hasher = digest::Context::new(&digest::SHA256);
    hasher.update(&out[start..hash_at]);
    hasher.update(&out[fields_at..]);
    let hash = hex::encode(hasher.finish().as_ref());
    out[hex_at..hex_at + 64].copy_from_slice(hash.as_bytes());
    Ok(hash)
}

/// Parses one stored line and checks its hash against its bytes.
pub fn check_line(line: &str) -> Result<Record, LineError> {
    let record: Record = serde_json::from_str(line).map_err(|e| LineError::Unparseable(e.to_string()))?;
    let altered = |message: String| LineError::Altered {
        seq: record.seq,
        message,
    };
    let unhashed_prefix = prefix(record.seq, &record.time, &record.prev).map_err(|e| altered(e.to_string()))?;
    let full_prefix = format!(
        "{unhashed_prefix}\"hash\":{},",
        json_str(&record.hash).map_err(|e| altered(e.to_string()))?
    );
    let Some(fields) = line.strip_prefix(&full_prefix) else {
        return Err(altered(
            "the record is not in canonical form (seq, time, prev, hash must come first, compact)".into(),
        ));
    };
    let actual = sha256_hex(format!("{unhashed_prefix}{fields}").as_bytes());
    if actual != record.hash {
        return Err(altered(format!(
            "content hashes to {actual} but the record says {}",
            record.hash
        )));
    }
    Ok(record)
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes).as_ref())
}

fn prefix(seq: u64, time: &str, prev: &str) -> Result<String, serde_json::Error> {
    let mut out = Vec::with_capacity(128);
    write_prefix(&mut out, seq, time, prev)?;
    String::from_utf8(out).map_err(|e| serde_json::Error::io(std::io::Error::other(e)))
}

/// Appends `{"seq":N,"time":"...","prev":"...",` to `out`; returns where it ends. The
/// writer's time and hash strings need no escaping, so they are copied as they are; any
/// other string (a record being checked) goes through the JSON serialiser.
fn write_prefix(out: &mut Vec<u8>, seq: u64, time: &str, prev: &str) -> Result<usize, serde_json::Error> {
    let plain = |s: &str| s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(itoa_u64(seq, &mut [0; 20]));
    for (key, value) in [(&b",\"time\":"[..], time), (&b",\"prev\":"[..], prev)] {
        out.extend_from_slice(key);
        if plain(value) {
            out.push(b'"');
            out.extend_from_slice(value.as_bytes());
            out.push(b'"');
        } else {
            serde_json::to_writer(&mut *out, value)?;
        }
    }
    out.push(b',');
    Ok(out.len())
}

/// `n` in decimal, written into the end of `buf`.
fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

fn json_str(s: &str) -> Result<String, serde_json::Error> {
    serde_json::to_string(s)
}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

impl Chain {
    /// A chain that must start at seq 1 with [`GENESIS`] as `prev`.
    pub fn new() -> Self {
        Self {
            expected: Some(1),
            last_hash: GENESIS.to_owned(),
            records: 0,
            head: None,
            gap: None,
        }
    }

    /// A chain that accepts whatever seq and `prev` its first record has, for checking
    /// the tail of a log without reading all of it.
    pub fn resume_anywhere() -> Self {
        Self {
            expected: None,
            ..Self::new()
        }
    }

    /// Also require the record at `seq` to have `hash` (from the `HEAD` file), and at
    /// least `seq` records in total.
    pub fn expect_head(&mut self, seq: u64, hash: &str) {
        self.head = Some((seq, hash.to_owned()));
    }

    /// Records accepted so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The last accepted record: `(seq, hash)`, or `(0, GENESIS)` before any.
    pub fn last(&self) -> (u64, String) {
        (self.expected.map_or(0, |e| e - 1), self.last_hash.clone())
    }

    /// Checks the next stored line. `Err` is the first problem; stop feeding after it.
    pub fn push(&mut self, segment: &str, line_no: usize, line: &str) -> Result<(), VerifyProblem> {
        let problem = |seq, kind, message: String| VerifyProblem {
            seq,
            segment: segment.to_owned(),
            line: line_no,
            kind,
            message: format!("{segment} line {line_no}: {message}"),
        };
        if let Some(gap) = &self.gap {
            // Only a missing seq showing up later matters now: it means reordering.
            if let Ok(r) = serde_json::from_str::<SeqOnly>(line)
                && (gap.first..=gap.last).contains(&r.seq)
            {
                let mut p = gap.problem.clone();
                p.kind = ProblemKind::Reordered;
                p.seq = Some(gap.found);
                p.message = format!(
                    "{} line {}: seq {} is out of order (seq {} comes later, at {segment} line {line_no})",
                    p.segment, p.line, gap.found, r.seq
                );
                return Err(p);
            }
            return Ok(());
        }
        let record = match check_line(line) {
            Ok(r) => r,
            Err(LineError::Unparseable(e)) => {
                return Err(problem(
                    None,
                    ProblemKind::Unparseable,
                    format!("not an audit record: {e}"),
                ));
            }
            Err(LineError::Altered { seq, message }) => {
                return Err(problem(
                    Some(seq),
                    ProblemKind::Altered,
                    format!("seq {seq} was altered: {message}"),
                ));
            }
        };
        let seq = record.seq;
        if seq == u64::MAX {
            // No log gets here honestly, and the next seq would not exist.
            return Err(problem(
                Some(seq),
                ProblemKind::Altered,
                format!("seq {seq} is out of range"),
            ));
        }
        let expected = self.expected.unwrap_or(seq);
        if seq > expected {
            let msg = format!(
                "seq {seq} follows seq {}: records {expected}..={} are missing",
                expected - 1,
                seq - 1
            );
            let removed = problem(
                Some(expected),
                ProblemKind::Removed {
                    first: expected,
                    last: seq - 1,
                },
                msg,
            );
            self.gap = Some(Gap {
                first: expected,
                last: seq - 1,
                found: seq,
                problem: removed,
            });
            return Ok(());
        }
        if seq < expected {
            let what = if seq + 1 == expected && record.hash == self.last_hash {
                "a copy of the previous record"
            } else {
                "a seq already seen"
            };
            return Err(problem(
                Some(seq),
                ProblemKind::Inserted,
                format!("seq {seq} is {what}; expected seq {expected}"),
            ));
        }
        if self.expected.is_some() && record.prev != self.last_hash {
            return Err(problem(
                Some(seq),
                ProblemKind::Altered,
                format!(
                    "seq {seq} does not chain to seq {}: prev is {} but that record's hash is {}",
                    seq.saturating_sub(1),
                    record.prev,
                    self.last_hash
                ),
            ));
        }
        if let Some((head_seq, head_hash)) = &self.head
            && *head_seq == seq
            && *head_hash != record.hash
        {
            return Err(problem(
                Some(seq),
                ProblemKind::Altered,
                format!("seq {seq} has hash {} but HEAD says {head_hash}", record.hash),
            ));
        }
        self.expected = Some(seq + 1);
        self.last_hash = record.hash;
        self.records += 1;
        Ok(())
    }

    /// Ends the check at `segment`/`next_line` (where the next record would go) and
    /// returns the last record's `(seq, hash)`.
    pub fn finish(self, segment: &str, next_line: usize) -> Result<(u64, String), VerifyProblem> {
        if let Some(gap) = self.gap {
            return Err(gap.problem);
        }
        let (last_seq, last_hash) = self.last();
        if let Some((head_seq, _)) = self.head
            && head_seq > last_seq
        {
            return Err(VerifyProblem {
                seq: Some(last_seq + 1),
                segment: segment.to_owned(),
                line: next_line,
                kind: ProblemKind::Truncated { head_seq },
                message: format!(
                    "{segment} line {next_line}: the log ends at seq {last_seq} but HEAD says seq {head_seq} was written: records {}..={head_seq} were cut off",
                    last_seq + 1
                ),
            });
        }
        Ok((last_seq, last_hash))
    }
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

impl fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests;
