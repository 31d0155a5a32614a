//! `gatehouse approvals`: the approver's command line over the admin API — list, show,
//! approve, deny, watch. The gateway decides who may approve; this only asks and reports.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::Value;

use crate::client;
use crate::cmd_credentials::Connection;

#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// Requests you may see: yours, and those your groups may approve.
    List {
        /// pending, approved, denied, expired, withdrawn, executed or all.
        #[arg(long, default_value = "pending")]
        state: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// One request in full: who asks, what exactly, the votes so far.
    Show {
        /// The approval id, e.g. 7KQM-X2PD-9HWT.
        id: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Approve a pending request. Refused (exit 1, with the reason) for your own request,
    /// your own agent's, outside the approver group, or when policy does not permit you.
    Approve {
        id: String,
        /// Why; kept in the audit log.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Deny a pending request; the requester sees your reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Print pending requests as they arrive, until interrupted.
    Watch {
        /// How often to ask the gateway.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        #[command(flatten)]
        conn: Connection,
    },
}

pub fn run(command: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    let runtime = client::runtime()?;
    runtime.block_on(async move {
        match command {
            ApprovalsCommand::List { state, conn } => {
                let url = format!("{}/api/approvals?state={state}", conn.admin_url()?);
                let value = get(&conn, &url, "listing").await?;
                if conn.json {
                    println!("{value}");
                } else {
                    print_table(value.as_array().map(Vec::as_slice).unwrap_or_default());
                }
                Ok(ExitCode::SUCCESS)
            }
            ApprovalsCommand::Show { id, conn } => {
                let url = format!("{}/api/approvals/{id}", conn.admin_url()?);
                let value = get(&conn, &url, "show").await?;
                if conn.json {
                    println!("{value}");
                } else {
                    print_one(&value);
                }
                Ok(ExitCode::SUCCESS)
            }
            ApprovalsCommand::Approve { id, reason, conn } => {
                let body = serde_json::json!({ "reason": reason });
                decide(&conn, &id, "approve", body).await
            }
            ApprovalsCommand::Deny { id, reason, conn } => {
                anyhow::ensure!(
                    !reason.trim().is_empty(),
                    "--reason must say why: the requester sees it"
                );
                let body = serde_json::json!({ "reason": reason });
                decide(&conn, &id, "deny", body).await
            }
            ApprovalsCommand::Watch { interval, conn } => watch(&conn, interval).await,
        }
    })
}

async fn get(conn: &Connection, url: &str, what: &str) -> anyhow::Result<Value> {
    let token = client::require_token(conn.token.clone())?;
    let (status, value) = client::call(http::Method::GET, url, &token, None).await?;
    if !status.is_success() {
        anyhow::bail!("{what} refused ({status}): {}", client::error_message(&value));
    }
    Ok(value)
}

async fn decide(conn: &Connection, id: &str, verb: &str, body: Value) -> anyhow::Result<ExitCode> {
    let url = format!("{}/api/approvals/{id}/{verb}", conn.admin_url()?);
    let token = client::require_token(conn.token.clone())?;
    let (status, value) = client::call(http::Method::POST, &url, &token, Some(body)).await?;
    if !status.is_success() {
        anyhow::bail!("{verb} refused ({status}): {}", client::error_message(&value));
    }
    if conn.json {
        println!("{value}");
    } else {
        let state = field(&value, "state");
        let got = value.get("approvals").and_then(Value::as_u64).unwrap_or(0);
        let needed = value.get("approvals_required").and_then(Value::as_u64).unwrap_or(1);
        match (verb, state.as_str()) {
            ("approve", "pending") => eprintln!("approved {id}: {got} of {needed} approvals, waiting for more"),
            ("approve", _) => eprintln!("approved {id}: the request runs now"),
            _ => eprintln!("denied {id}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn watch(conn: &Connection, interval: Duration) -> anyhow::Result<ExitCode> {
    let url = format!("{}/api/approvals?state=pending", conn.admin_url()?);
    let token = client::require_token(conn.token.clone())?;
    let mut seen = HashSet::new();
    if !conn.json {
        eprintln!("watching {url} (Ctrl-C to stop)");
    }
    loop {
        let (status, value) = client::call(http::Method::GET, &url, &token, None)
            .await
            .context("watching pending approvals")?;
        if !status.is_success() {
            anyhow::bail!("listing refused ({status}): {}", client::error_message(&value));
        }
        for request in value.as_array().into_iter().flatten() {
            let id = field(request, "id");
            if seen.insert(id) {
                if conn.json {
                    println!("{request}");
                } else {
                    println!("{}", summary_line(request));
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

fn field(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn requester(request: &Value) -> String {
    let name = field(request, "requester");
    match (
        field(request, "requester_kind").as_str(),
        field(request, "requester_owner"),
    ) {
        ("Agent", owner) if !owner.is_empty() => format!("{name} (agent of {owner})"),
        ("Agent", _) => format!("{name} (agent)"),
        _ => name,
    }
}

fn summary_line(request: &Value) -> String {
    format!(
        "{}  {}  {} on {}  group {}  until {}\n    {}",
        field(request, "id"),
        requester(request),
        field(request, "action"),
        field(request, "target"),
        field(request, "approver_group"),
        field(request, "expires_at"),
        one_line(&field(request, "request")),
    )
}

fn print_table(requests: &[Value]) {
    if requests.is_empty() {
        eprintln!("no approval requests");
        return;
    }
    println!(
        "{:<15} {:<9} {:<28} {:<18} {:<14} {:<14} REQUEST",
        "ID", "STATE", "REQUESTER", "ACTION", "TARGET", "GROUP"
    );
    for r in requests {
        println!(
            "{:<15} {:<9} {:<28} {:<18} {:<14} {:<14} {}",
            field(r, "id"),
            field(r, "state"),
            requester(r),
            field(r, "action"),
            field(r, "target"),
            field(r, "approver_group"),
            truncate(&one_line(&field(r, "request")), 60),
        );
    }
}

fn print_one(r: &Value) {
    println!("id:         {}", field(r, "id"));
    println!("state:      {}", field(r, "state"));
    println!("requester:  {}", requester(r));
    println!(
        "session:    {} (request {})",
        field(r, "session"),
        field(r, "request_number")
    );
    println!("target:     {} ({})", field(r, "target"), field(r, "protocol"));
    println!("action:     {}", field(r, "action"));
    println!(
        "approvers:  group {}, {} of {} approvals",
        field(r, "approver_group"),
        field(r, "approvals"),
        field(r, "approvals_required")
    );
    println!("created:    {}", field(r, "created_at"));
    println!("expires:    {}", field(r, "expires_at"));
    println!("sha256:     {}", field(r, "request_sha256"));
    for vote in r.get("votes").and_then(Value::as_array).into_iter().flatten() {
        let verdict = if vote.get("approved").and_then(Value::as_bool) == Some(true) {
            "approved"
        } else {
            "denied"
        };
        let reason = field(vote, "reason");
        let reason = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        println!(
            "vote:       {} {verdict} at {}{reason}",
            field(vote, "approver"),
            field(vote, "at")
        );
    }
    println!("request:\n{}", field(r, "request"));
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}
