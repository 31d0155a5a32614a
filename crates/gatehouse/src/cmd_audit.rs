//! `gatehouse audit`: verify the hash chain, list sessions, show one session's records.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config::Config;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify the whole log: every record's hash, the chain between records and segments,
    /// and the head file. Works while the gateway is writing. Exits 1 naming the first bad
    /// record.
    Verify {
        #[command(flatten)]
        source: Source,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List sessions: who, which target, when, how many requests and denials.
    Sessions {
        #[command(flatten)]
        source: Source,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show every record of one session.
    Show {
        /// The session id (s_...).
        session: String,
        #[command(flatten)]
        source: Source,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct Source {
    /// The gateway's config file (the log is in its state_dir/audit).
    #[arg(long, short, env = "GATEHOUSE_CONFIG", required_unless_present = "dir")]
    config: Option<PathBuf>,
    /// The audit directory itself, instead of --config.
    #[arg(long, conflicts_with = "config")]
    dir: Option<PathBuf>,
}

impl Source {
    fn dir(&self) -> anyhow::Result<PathBuf> {
        match (&self.dir, &self.config) {
            (Some(dir), _) => Ok(dir.clone()),
            (None, Some(config)) => Ok(Config::load(config)?.audit_dir()),
            (None, None) => anyhow::bail!("give --config FILE or --dir DIR"),
        }
    }
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify { source, json } => {
            let dir = source.dir()?;
            let report = gatehouse_audit::verify(&dir)?;
            // Recordings are checked only against a log that verified: otherwise the
            // hashes they are compared with cannot be trusted either.
            let recordings = match report.problem {
                None => verify_recordings(&dir)?,
                Some(_) => RecordingCheck::default(),
            };
            if json {
                let mut value = serde_json::to_value(&report)?;
                value["recordings_checked"] = recordings.checked.into();
                value["recording_problems"] = recordings.problems.clone().into();
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
            match &report.problem {
                None if recordings.problems.is_empty() => {
                    if !json {
                        println!(
                            "audit log OK: {} records in {} segments, head seq {} hash {}; {} recordings match their SHA-256",
                            report.records, report.segments, report.head.0, report.head.1, recordings.checked
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    for problem in &recordings.problems {
                        eprintln!("recording FAILED verification: {problem}");
                    }
                    eprintln!(
                        "audit log OK ({} records), but {} of {} recordings do not match the log",
                        report.records,
                        recordings.problems.len(),
                        recordings.checked
                    );
                    Ok(ExitCode::FAILURE)
                }
                Some(problem) => {
                    eprintln!(
                        "audit log FAILED verification after {} good records: {problem}",
                        report.records
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        AuditCommand::Sessions { source, json } => {
            let sessions = gatehouse_audit::sessions(&source.dir()?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sessions)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<20} {:<28} {:<9} {:<16} {:<25} {:>8} {:>6}  OUTCOME",
                "SESSION", "WHO", "PROTOCOL", "TARGET", "STARTED", "REQUESTS", "DENIED"
            );
            for s in sessions {
                println!(
                    "{:<20} {:<28} {:<9} {:<16} {:<25} {:>8} {:>6}  {}",
                    s.session, s.actor, s.protocol, s.target, s.started, s.requests, s.denied, s.outcome
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Show { session, source, json } => {
            let records = gatehouse_audit::session_records(&source.dir()?, &session)?;
            if records.is_empty() {
                anyhow::bail!("no records for session {session}");
            }
            for record in records {
                if json {
                    println!("{}", serde_json::to_string(&record)?);
                } else {
                    let mut event = serde_json::to_value(&record.event)?;
                    let kind = record.event.kind();
                    if let Some(map) = event.as_object_mut() {
                        map.remove("event");
                        map.remove("session");
                    }
                    println!("{:>6}  {}  {:<18} {}", record.seq, record.time, kind, event);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Recordings named by `recording_written` records, checked against their size and SHA-256.
#[derive(Default)]
struct RecordingCheck {
    checked: u64,
    problems: Vec<String>,
}

fn verify_recordings(dir: &std::path::Path) -> anyhow::Result<RecordingCheck> {
    let mut check = RecordingCheck::default();
    for record in gatehouse_audit::read_records(dir)? {
        let record = record?;
        let gatehouse_audit::AuditEvent::RecordingWritten {
            session,
            path,
            bytes,
            sha256,
        } = &record.event
        else {
            continue;
        };
        check.checked += 1;
        let at = format!("{path} (session {session}, record {})", record.seq);
        match std::fs::read(path) {
            Err(e) => check.problems.push(format!("{at}: cannot read it: {e}")),
            Ok(content) => {
                let actual = gatehouse_audit::sha256_hex(&content);
                if actual != *sha256 {
                    check.problems.push(format!(
                        "{at}: SHA-256 is {actual}, the log recorded {sha256} ({} bytes now, {bytes} recorded): altered since it was written",
                        content.len()
                    ));
                }
            }
        }
    }
    Ok(check)
}
