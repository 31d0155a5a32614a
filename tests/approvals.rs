//! Four-eyes approval end to end: an agent's write through the real `psql` waits in the
//! gateway until a DBA lead approves it with `gatehouse approvals`; the requester, the
//! agent's owner, other agents and people outside the approver group are refused; denied,
//! expired, withdrawn and restarted requests never reach the target.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use gatehouse_testkit::gateway::{GatewayBuilder, TestGateway, free_port};
use gatehouse_testkit::postgres::{GatewayRole, PgServer};
use serde_json::Value;

const PASSWORD: &str = "orders-gateway-secret";

struct Setup {
    gw: TestGateway,
    pg: PgServer,
    port: u16,
    _role: GatewayRole,
}

fn setup() -> Setup {
    setup_with("")
}

/// `extra`: more config (e.g. `[approvals]`).
fn setup_with(extra: &str) -> Setup {
    let pg = PgServer::start().unwrap();
    let role = pg.gateway_role("gatehouse_orders", PASSWORD).unwrap();
    role.database(
        &pg,
        "orders",
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email text);
         INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Bob', 'bob@example.org');",
    )
    .unwrap();
    let port = free_port().unwrap();
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_gatehouse"))
        .config(&format!(
            "[postgres]\nlisten = \"127.0.0.1:{port}\"\nallow_plaintext = true\n{}\n{extra}\n",
            role.target_toml("orders", "orders", "env = \"prod\""),
        ))
        .start()
        .unwrap();
    Setup {
        gw,
        pg,
        port,
        _role: role,
    }
}

/// An agent token whose owner (the person responsible for it) is `owner`.
fn agent_token(s: &Setup, sub: &str, owner: &str) -> String {
    agent_token_in(s, sub, owner, "")
}

/// An agent token in `groups` (comma-separated).
fn agent_token_in(s: &Setup, sub: &str, owner: &str, groups: &str) -> String {
    let cfg = s.gw.config_path().display().to_string();
    let mut args = vec![
        "token", "mint", "--config", &cfg, "--sub", sub, "--agent", "--owner", owner,
    ];
    if !groups.is_empty() {
        args.extend(["--groups", groups]);
    }
    let o = s.gw.cli(&args).unwrap();
    assert!(o.status.success(), "{}", err(&o));
    out(&o).trim().to_string()
}

/// psql running `sql` in the background; its output is read when it ends.
fn spawn_psql(s: &Setup, token: &str, sql: &str) -> Child {
    Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} dbname=orders user=ci-bot sslmode=disable connect_timeout=10",
            s.port
        ))
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a spawned psql (killing it after `timeout`).
fn finish(mut child: Child, timeout: Duration) -> Output {
    let deadline = std::time::Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("psql did not finish in {timeout:?}: {}", err(&o));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    child.wait_with_output().unwrap()
}

fn approvals(s: &Setup, token: &str, args: &[&str]) -> Output {
    s.gw.approvals(token, args).unwrap()
}

fn list(s: &Setup, token: &str, state: &str) -> Vec<Value> {
    let o = approvals(s, token, &["list", "--state", state, "--json"]);
    assert!(o.status.success(), "{}", err(&o));
    serde_json::from_slice::<Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The one pending request, once it shows up.
fn wait_pending(s: &Setup, lead: &str) -> Value {
    let mut found = None;
    let seen = s.gw.wait_for(Duration::from_secs(20), || {
        found = list(s, lead, "pending").into_iter().next();
        found.is_some()
    });
    assert!(seen, "no pending approval appeared:\n{}", s.gw.log());
    found.unwrap()
}

fn state_of(s: &Setup, token: &str, id: &str) -> String {
    let o = approvals(s, token, &["show", id, "--json"]);
    assert!(o.status.success(), "{}", err(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["state"].as_str().unwrap().to_string()
}

fn direct(s: &Setup, sql: &str) -> String {
    let o = s.pg.psql_as("gatehouse_orders", PASSWORD, "orders", sql).unwrap();
    assert!(o.status.success(), "{}", err(&o));
    out(&o)
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn audit_kinds(s: &Setup) -> Vec<String> {
    let o =
        s.gw.cli(&["audit", "verify", "--config", &s.gw.config_path().display().to_string()])
            .unwrap();
    assert!(o.status.success(), "audit chain verifies: {}{}", out(&o), err(&o));
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(s.gw.audit_dir()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line)
                && let Some(kind) = v.get("event").and_then(Value::as_str)
            {
                kinds.push(kind.to_string());
            }
        }
    }
    kinds
}

#[test]
fn an_agents_write_waits_for_a_dba_lead_and_runs_once_approved() {
    let s = setup();
    let agent = agent_token(&s, "ci-bot", "carol");
    let lead = s.gw.mint("dora", &["dba-leads"], false).unwrap();
    let psql = spawn_psql(&s, &agent, "UPDATE customers SET name = 'Eve' WHERE id = 1");

    let pending = wait_pending(&s, &lead);
    let id = pending["id"].as_str().unwrap().to_string();
    assert_eq!(pending["state"], "pending");
    assert_eq!(pending["requester"], "ci-bot");
    assert_eq!(pending["requester_kind"], "Agent");
    assert_eq!(pending["requester_owner"], "carol");
    assert_eq!(pending["target"], "orders");
    assert_eq!(pending["action"], "Postgres::write");
    assert_eq!(pending["approver_group"], "dba-leads");
    assert_eq!(pending["request"], "UPDATE customers SET name = 'Eve' WHERE id = 1");
    assert!(pending["expires_at"].as_str().is_some_and(|t| !t.is_empty()));
    // Held, not run.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(direct(&s, "SELECT name FROM customers WHERE id = 1"), "Ada\n");

    // Segregation of duties: each refusal exits non-zero and says why.
    let refused = |token: &str, why: &str| {
        let o = approvals(&s, token, &["approve", &id, "--reason", "looks fine"]);
        assert!(!o.status.success(), "approve should be refused ({why})");
        assert!(err(&o).contains(why), "{why}: {}", err(&o));
    };
    refused(&agent, "your own request");
    let owner = s.gw.mint("carol", &["dba-leads"], false).unwrap();
    refused(&owner, "you own the agent");
    let other_agent = s.gw.mint("deploy-bot", &["dba-leads"], true).unwrap();
    refused(&other_agent, "agents cannot approve");
    let outsider = s.gw.mint("ed", &["dba"], false).unwrap();
    refused(&outsider, "not in the approver group dba-leads");
    // Someone outside the group does not even see it.
    assert!(list(&s, &outsider, "all").is_empty());

    // `show` prints it for the approver; the id may be typed in lower case.
    let o = approvals(&s, &lead, &["show", &id.to_lowercase()]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("ci-bot (agent of carol)"), "{}", out(&o));

    let o = approvals(&s, &lead, &["approve", &id, "--reason", "ticket OPS-12"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = finish(psql, Duration::from_secs(20));
    assert!(o.status.success(), "{}\n{}", err(&o), s.gw.log());
    assert!(
        err(&o).contains(&format!("waiting for approval {id} by group dba-leads")),
        "{}",
        err(&o)
    );
    assert_eq!(direct(&s, "SELECT name FROM customers WHERE id = 1"), "Eve\n");

    // Spent: executed once, never again.
    assert_eq!(state_of(&s, &lead, &id), "executed");
    let o = approvals(&s, &lead, &["approve", &id]);
    assert!(!o.status.success());
    assert!(err(&o).contains("already executed"), "{}", err(&o));

    let kinds = audit_kinds(&s);
    for kind in ["approval_requested", "approval_granted", "approval_executed"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} audited: {kinds:?}");
    }
}

#[test]
fn a_denied_request_fails_with_the_reason_and_never_runs() {
    let s = setup();
    let agent = agent_token(&s, "ci-bot", "carol");
    let lead = s.gw.mint("dora", &["dba-leads"], false).unwrap();
    // A write hidden in a CTE is held like any write.
    let psql = spawn_psql(
        &s,
        &agent,
        "WITH gone AS (DELETE FROM customers WHERE id = 2 RETURNING *) SELECT count(*) FROM gone",
    );
    let id = wait_pending(&s, &lead)["id"].as_str().unwrap().to_string();
    let o = approvals(&s, &lead, &["deny", &id, "--reason", "change freeze until Monday"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = finish(psql, Duration::from_secs(20));
    assert!(!o.status.success());
    let stderr = err(&o);
    assert!(stderr.contains("ERROR:"), "{stderr}");
    assert!(
        stderr.contains("ERROR:  42501:") && stderr.contains("denied by dora: change freeze until Monday"),
        "{stderr}"
    );
    assert_eq!(direct(&s, "SELECT count(*) FROM customers"), "2\n");
    assert_eq!(state_of(&s, &lead, &id), "denied");
    // A denial needs a reason.
    let o = approvals(&s, &lead, &["deny", &id, "--reason", " "]);
    assert!(!o.status.success());
}

#[test]
fn unanswered_requests_expire_and_abandoned_ones_are_withdrawn() {
    let s = setup();
    // Shorten the policy's approval timeout; the gateway reloads policies on change.
    let path = s.gw.policy_dir().join("postgres.cedar");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("@approval_timeout(\"10m\")"));
    std::fs::write(
        &path,
        text.replace("@approval_timeout(\"10m\")", "@approval_timeout(\"2s\")"),
    )
    .unwrap();
    s.gw.hangup().unwrap();
    assert!(
        s.gw.wait_for(Duration::from_secs(10), || s.gw.log().contains("Policies reloaded")),
        "{}",
        s.gw.log()
    );
    let agent = agent_token(&s, "ci-bot", "carol");
    let lead = s.gw.mint("dora", &["dba-leads"], false).unwrap();

    let o = finish(
        spawn_psql(&s, &agent, "UPDATE customers SET name = 'Eve' WHERE id = 1"),
        Duration::from_secs(20),
    );
    assert!(!o.status.success());
    assert!(
        err(&o).contains("ERROR:  42501:")
            && err(&o).contains("expired: nobody in group dba-leads approved it in time"),
        "{}",
        err(&o)
    );
    assert_eq!(direct(&s, "SELECT name FROM customers WHERE id = 1"), "Ada\n");

    // A client that gives up withdraws its request.
    std::fs::write(&path, text).unwrap();
    s.gw.hangup().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut psql = spawn_psql(&s, &agent, "UPDATE customers SET name = 'Fay' WHERE id = 1");
    let id = wait_pending(&s, &lead)["id"].as_str().unwrap().to_string();
    psql.kill().unwrap();
    psql.wait().unwrap();
    assert!(
        s.gw.wait_for(Duration::from_secs(10), || state_of(&s, &lead, &id) == "withdrawn"),
        "state {}",
        state_of(&s, &lead, &id)
    );
    let o = approvals(&s, &lead, &["approve", &id]);
    assert!(!o.status.success());
    assert!(err(&o).contains("already withdrawn"), "{}", err(&o));
    assert_eq!(direct(&s, "SELECT name FROM customers WHERE id = 1"), "Ada\n");
    let kinds = audit_kinds(&s);
    assert!(kinds.iter().any(|k| k == "approval_expired"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "approval_withdrawn"), "{kinds:?}");
}

#[test]
fn a_pending_request_is_withdrawn_when_the_gateway_restarts_and_its_history_kept() {
    let mut s = setup();
    let agent = agent_token(&s, "ci-bot", "carol");
    let lead = s.gw.mint("dora", &["dba-leads"], false).unwrap();
    let psql = spawn_psql(&s, &agent, "UPDATE customers SET name = 'Eve' WHERE id = 1");
    let id = wait_pending(&s, &lead)["id"].as_str().unwrap().to_string();
    s.gw.kill_and_restart().unwrap();
    let o = finish(psql, Duration::from_secs(20));
    assert!(!o.status.success(), "the connection died with the gateway");
    let all = list(&s, &lead, "all");
    let request = all.iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert_eq!(request["state"], "withdrawn");
    assert_eq!(request["request"], "UPDATE customers SET name = 'Eve' WHERE id = 1");
    assert_eq!(direct(&s, "SELECT name FROM customers WHERE id = 1"), "Ada\n");
    assert!(s.gw.log().contains("withdrawn"), "{}", s.gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_held_statement_withdraws_it() {
    let s = setup();
    let agent = agent_token(&s, "ci-bot", "carol");
    let lead = s.gw.mint("dora", &["dba-leads"], false).unwrap();
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} dbname=orders user=ci-bot password={agent} sslmode=disable",
            s.port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let cancel = client.cancel_token();
    let held = tokio::spawn(async move {
        let result = client
            .execute("UPDATE customers SET name = 'Eve' WHERE id = $1", &[&1i32])
            .await;
        (client, result)
    });
    let pending = tokio::task::block_in_place(|| wait_pending(&s, &lead));
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (client, result) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .unwrap()
        .unwrap();
    let error = result.unwrap_err();
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{error:?}"
    );
    let id = pending["id"].as_str().unwrap().to_string();
    assert_eq!(tokio::task::block_in_place(|| state_of(&s, &lead, &id)), "withdrawn");
    // The session stays usable.
    let rows = client
        .query("SELECT name FROM customers WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, &str>(0), "Ada");
}

#[test]
fn watch_prints_pending_requests_as_they_arrive() {
    use std::io::BufRead as _;
    let s = setup();
    let agent = agent_token(&s, "ci-bot", "carol");
    let lead = s.gw.mint("dora", &["dba-leads"], false).unwrap();
    let mut watch = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["approvals", "watch", "--interval", "200ms", "--json", "--config"])
        .arg(s.gw.config_path())
        .env("GATEHOUSE_TOKEN", &lead)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // If nothing is ever printed, end the watch so that the read below fails instead of hanging.
    let pid = watch.id().to_string();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        let _ = Command::new("kill").arg(&pid).status();
    });
    let psql = spawn_psql(&s, &agent, "UPDATE customers SET name = 'Eve' WHERE id = 1");
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(watch.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    watch.kill().unwrap();
    watch.wait().unwrap();
    let printed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(printed["state"], "pending");
    assert_eq!(printed["request"], "UPDATE customers SET name = 'Eve' WHERE id = 1");
    let id = printed["id"].as_str().unwrap();
    let o = approvals(&s, &lead, &["deny", id, "--reason", "not today"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = finish(psql, Duration::from_secs(20));
    assert!(err(&o).contains("not today"), "{}", err(&o));
}

/// A webhook receiver on loopback: records each POST body; answers the first with 500 (so
/// the gateway must retry) and the rest with 200.
struct Receiver {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

fn receiver() -> Receiver {
    use std::io::{BufRead as _, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/dba-leads", listener.local_addr().unwrap());
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok()
                && let Ok(v) = serde_json::from_slice(&body)
            {
                seen.lock().unwrap().push(v);
            }
            let status = if n == 0 { "500 Internal Server Error" } else { "200 OK" };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    Receiver { url, bodies }
}

#[test]
fn two_approvers_release_it_each_counts_once_and_the_group_webhook_hears_of_it() {
    let hook = receiver();
    let s = setup_with(&format!(
        "[approvals]\nlink_base = \"https://gatehouse.example\"\n\n[[approvals.webhooks]]\ngroup = \"dba-leads\"\nurl = \"{}\"\n",
        hook.url
    ));
    let path = s.gw.policy_dir().join("postgres.cedar");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "@approval(\"dba-leads\")\n",
            "@approval(\"dba-leads\")\n@approvals_required(\"2\")\n",
        ),
    )
    .unwrap();
    s.gw.hangup().unwrap();
    assert!(s.gw.wait_for(Duration::from_secs(10), || s.gw.log().contains("Policies reloaded")));

    // The agent is itself in the approver group: still never its own approver.
    let agent = agent_token_in(&s, "ci-bot", "carol", "dba-leads");
    let dora = s.gw.mint("dora", &["dba-leads"], false).unwrap();
    let fred = s.gw.mint("fred", &["dba-leads"], false).unwrap();
    let sql = "DELETE FROM customers WHERE id = 2";
    let mut psql = spawn_psql(&s, &agent, sql);
    let id = wait_pending(&s, &dora)["id"].as_str().unwrap().to_string();
    let o = approvals(&s, &agent, &["approve", &id]);
    assert!(!o.status.success());
    assert!(err(&o).contains("your own request"), "{}", err(&o));

    let o = approvals(&s, &dora, &["approve", &id, "--reason", "ok"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("1 of 2 approvals"), "{}", err(&o));
    let o = approvals(&s, &dora, &["approve", &id]);
    assert!(!o.status.success(), "the same approver counts once");
    assert!(err(&o).contains("already voted"), "{}", err(&o));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        psql.try_wait().unwrap().is_none(),
        "one approval of two does not release it"
    );
    assert_eq!(direct(&s, "SELECT count(*) FROM customers"), "2\n");

    let o = approvals(&s, &fred, &["approve", &id]);
    assert!(o.status.success(), "{}", err(&o));
    let o = finish(psql, Duration::from_secs(20));
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).trim(), "DELETE 1", "psql reports the row count");
    assert_eq!(direct(&s, "SELECT count(*) FROM customers"), "1\n");

    // Single use: the same statement again waits again, under a new id.
    let again = spawn_psql(&s, &agent, sql);
    let second = wait_pending(&s, &dora)["id"].as_str().unwrap().to_string();
    assert_ne!(second, id);
    let o = approvals(&s, &fred, &["deny", &second, "--reason", "once is enough"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = finish(again, Duration::from_secs(20));
    assert!(err(&o).contains("once is enough"), "{}", err(&o));

    let kinds = audit_kinds(&s);
    assert!(
        kinds.iter().any(|k| k == "approval_refused"),
        "refused attempts are audited: {kinds:?}"
    );

    // Webhooks: created (retried after the receiver's 500) and decided, for both requests.
    let events = |b: &Vec<Value>| -> Vec<(String, String)> {
        b.iter()
            .map(|v| {
                (
                    v["event"].as_str().unwrap_or("").to_string(),
                    v["approval"]["id"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let expected = [
        ("approval_requested".to_string(), id.clone()),
        ("approval_approved".to_string(), id.clone()),
        ("approval_requested".to_string(), second.clone()),
        ("approval_denied".to_string(), second.clone()),
    ];
    let delivered = s.gw.wait_for(Duration::from_secs(15), || {
        let got = events(&hook.bodies.lock().unwrap());
        expected.iter().all(|e| got.contains(e))
    });
    let bodies = hook.bodies.lock().unwrap().clone();
    assert!(delivered, "{:?}\n{}", events(&bodies), s.gw.log());
    assert!(s.gw.log().contains("Webhook delivery failed"), "the 500 was logged");
    let first = bodies.iter().find(|b| b["event"] == "approval_requested").unwrap();
    let text = first["text"].as_str().unwrap();
    assert!(text.contains("Approval needed from dba-leads"), "{text}");
    assert!(text.contains("ci-bot (agent of carol)"), "{text}");
    assert!(
        text.contains(&format!("<https://gatehouse.example/approvals/{id}|{id}>")),
        "{text}"
    );
    let denied = bodies.iter().find(|b| b["event"] == "approval_denied").unwrap();
    assert!(
        denied["text"].as_str().unwrap().contains("Denied: once is enough"),
        "{denied}"
    );
}
