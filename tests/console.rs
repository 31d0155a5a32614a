//! The web console end to end: a real PostgreSQL and OpenSSH sshd behind `gatehouse serve`,
//! the real `psql` and `ssh`, and Debian's headless chromium driven by playwright-core
//! (tests/console/console.mjs). A DBA lead signs in through the development issuer's code
//! flow, watches an agent's `DELETE ... WHERE` appear and approves it; the waiting psql
//! finishes. The agent's owner finds no approve button and a forged POST refused; the
//! session page shows the statement with its decision; an SSH shell recording replays.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gatehouse_testkit::gateway::{GatewayBuilder, TestGateway, free_port};
use gatehouse_testkit::postgres::PgServer;
use gatehouse_testkit::sshd::SshServer;

const PASSWORD: &str = "orders-gateway-secret";
const STATEMENT: &str = "DELETE FROM customers WHERE id = 2";

/// Kills a child process (node, psql) when the test ends, passing or not.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/console")
}

/// A recorded shell through the gateway: returns its session id.
fn record_a_shell(gw: &TestGateway, port: u16, marker_expr: &str) -> String {
    let token = gw.mint("olivia", &["ops"], false).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["credentials", "--config"])
        .arg(gw.config_path())
        .args(["--target", "web-1", "--ttl", "5m"])
        .env("GATEHOUSE_TOKEN", token)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let secret = out(&o).trim().to_string();
    let mut child = Command::new("sshpass")
        .args(["-e", "ssh", "-F", "/dev/null"])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "GlobalKnownHostsFile=/dev/null", "-o", "PubkeyAuthentication=no"])
        .args(["-o", "PreferredAuthentications=password,keyboard-interactive"])
        .args(["-o", "IdentityAgent=none", "-o", "NumberOfPasswordPrompts=1"])
        .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-tt"])
        .args(["-p", &port.to_string(), "web-1@127.0.0.1"])
        .env("SSHPASS", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // `<b>` shows that the page escapes what the recording prints.
    let input = format!("stty -echo; echo '<b>console</b>' marker-{marker_expr}; exit 0\n");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(o.status.success(), "ssh: {}\n{}", err(&o), gw.log());

    let mut session = None;
    let seen = gw.wait_for(Duration::from_secs(10), || {
        session = audit_events(gw, "recording_written")
            .first()
            .and_then(|e| e["session"].as_str().map(str::to_owned));
        session.is_some()
    });
    assert!(seen, "no recording_written record:\n{}", gw.log());
    session.unwrap()
}

fn audit_events(gw: &TestGateway, kind: &str) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(gw.audit_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter(|r| r["event"] == kind)
        .collect()
}

/// The next line the browser script prints, within `timeout`.
fn expect_line(lines: &mpsc::Receiver<String>, prefix: &str, timeout: Duration, gw: &TestGateway) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(line) if line.starts_with("SCREENSHOT ") => println!("screenshot: {}", &line["SCREENSHOT ".len()..]),
            Ok(line) => println!("browser: {line}"),
            Err(_) => panic!(
                "the browser script did not print {prefix} in time\ngateway log:\n{}",
                gw.log()
            ),
        }
    }
}

fn tell(stdin: &mut ChildStdin, line: &str) {
    stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    stdin.flush().unwrap();
}

#[test]
fn approvers_and_auditors_work_in_the_browser() {
    let node_modules = console_dir().join("node_modules/playwright-core");
    assert!(
        node_modules.is_dir(),
        "{} is missing: run `just setup` (npm ci in tests/console)",
        node_modules.display()
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run `just setup` (apt chromium)"
    );

    let pg = PgServer::start().unwrap();
    let role = pg.gateway_role("gatehouse_orders", PASSWORD).unwrap();
    role.database(
        &pg,
        "orders",
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email text);
         INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Bob', 'bob@example.org');",
    )
    .unwrap();
    let sshd = SshServer::start().unwrap();
    let pg_port = free_port().unwrap();
    let ssh_port = free_port().unwrap();
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_gatehouse"))
        .config(&format!(
            r#"
[console]
auditor_groups = ["auditors"]

[postgres]
listen = "127.0.0.1:{pg_port}"
allow_plaintext = true

{pg_target}
[ssh]
listen = "127.0.0.1:{ssh_port}"
auth_timeout_secs = 10

{ssh_target}
"#,
            pg_target = role.target_toml("orders", "orders", "env = \"prod\""),
            ssh_target = sshd.target_toml("web-1", "env = \"prod\""),
        ))
        .start()
        .unwrap();

    let ssh_session = record_a_shell(&gw, ssh_port, "$((6*7))");

    // Screenshots outlive the test so a person can look at them.
    let shots = std::env::temp_dir().join(format!("gatehouse-console-shots-{}", std::process::id()));
    std::fs::create_dir_all(&shots).unwrap();

    let mut node = Command::new("node")
        .arg(console_dir().join("console.mjs"))
        .current_dir(console_dir())
        .env("BASE_URL", gw.admin_url())
        .env("SHOTS_DIR", &shots)
        .env("STATEMENT", STATEMENT)
        .env("SSH_SESSION", &ssh_session)
        .env("SSH_MARKER", "<b>console</b> marker-42")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut to_node = node.stdin.take().unwrap();
    let from_node = node.stdout.take().unwrap();
    let mut node = Reaped(Some(node));
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from_node).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // The lead watches the empty page; now the agent's DELETE arrives and waits.
    expect_line(&lines, "READY", Duration::from_secs(30), &gw);
    let agent = {
        let o = gw
            .cli(&[
                "token",
                "mint",
                "--config",
                &gw.config_path().display().to_string(),
                "--sub",
                "ci-bot",
                "--agent",
                "--owner",
                "carol",
            ])
            .unwrap();
        assert!(o.status.success(), "{}", err(&o));
        out(&o).trim().to_string()
    };
    let psql = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={pg_port} dbname=orders user=ci-bot sslmode=disable connect_timeout=10"
        ))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", STATEMENT])
        .env("PGPASSWORD", &agent)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut psql = Reaped(Some(psql));
    tell(&mut to_node, "STARTED");

    let approved = expect_line(&lines, "APPROVED ", Duration::from_secs(30), &gw);
    let id = approved["APPROVED ".len()..].to_string();
    let child = psql.0.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "psql still waits after the approval:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}\n{}", err(&o), gw.log());
    assert!(
        err(&o).contains(&format!("waiting for approval {id} by group dba-leads")),
        "{}",
        err(&o)
    );
    assert_eq!(out(&o).trim(), "DELETE 1");
    let left = pg
        .psql_as(
            "gatehouse_orders",
            PASSWORD,
            "orders",
            "SELECT count(*) FROM customers WHERE id = 2",
        )
        .unwrap();
    assert_eq!(out(&left).trim(), "0", "the row is gone");
    tell(&mut to_node, "PSQL-DONE");

    expect_line(&lines, "OK", Duration::from_secs(40), &gw);
    let status = node.0.take().unwrap().wait().unwrap();
    assert!(status.success(), "the browser script failed");
    for name in ["approvals.png", "session.png", "replay.png"] {
        let path = shots.join(name);
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 1000),
            "{} was not written",
            path.display()
        );
    }

    // The console's decisions are in the audit log like the CLI's.
    let granted = audit_events(&gw, "approval_granted");
    assert!(
        granted
            .iter()
            .any(|e| e["approval"] == id.as_str() && e["reason"] == "ticket OPS-7, checked the row"),
        "{granted:?}"
    );
    let refused = audit_events(&gw, "approval_refused");
    assert!(
        refused
            .iter()
            .any(|e| e["approval"] == id.as_str() && e["approver"]["subject"] == "carol"),
        "{refused:?}"
    );
}

/// A raw HTTP/1.1 exchange, to see the headers too.
fn http(gw: &TestGateway, method: &str, path: &str, headers: &str, body: &str) -> (u16, String, String) {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(gw.admin_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[test]
fn console_pages_are_locked_down_without_a_browser() {
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_gatehouse")).start().unwrap();

    // Every console answer carries the CSP and friends; signed out, pages ask to sign in.
    let (status, head, body) = http(&gw, "GET", "/", "", "");
    assert_eq!(status, 200);
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(
        head.contains("x-frame-options: deny") && head.contains("referrer-policy: no-referrer"),
        "{head}"
    );
    assert!(
        body.contains("id=\"signin\"") && body.contains("development issuer"),
        "{body}"
    );
    let (status, _, body) = http(&gw, "GET", "/approvals", "", "");
    assert_eq!(status, 401);
    assert!(body.contains("/auth/login?return_to=%2Fapprovals"), "{body}");
    let (status, _, _) = http(&gw, "GET", "/sessions/s_0000", "", "");
    assert_eq!(status, 401);
    let (status, _, _) = http(&gw, "GET", "/approvals/pending", "", "");
    assert_eq!(status, 401);
    // A made-up session cookie is no session; a POST without one decides nothing.
    let (status, _, _) = http(&gw, "GET", "/approvals", "Cookie: gh_session=made-up\r\n", "");
    assert_eq!(status, 401);
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    let (status, _, _) = http(
        &gw,
        "POST",
        "/approvals/AAAA-BBBB-CCCC/approve",
        form,
        "csrf=x&reason=y",
    );
    assert_eq!(status, 401);

    // The development issuer advertises the code flow and guards it.
    let (_, _, doc) = http(&gw, "GET", "/dev/users/.well-known/openid-configuration", "", "");
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        doc["authorization_endpoint"],
        format!("{}/dev/users/authorize", gw.admin_url())
    );
    assert_eq!(doc["code_challenge_methods_supported"][0], "S256");
    let (status, head, _) = http(&gw, "GET", "/auth/login", "", "");
    assert_eq!(status, 303);
    assert!(
        head.contains("set-cookie: gh_login=") && head.contains("httponly"),
        "{head}"
    );
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .to_string();
    assert!(location.contains("code_challenge_method=s256"), "{location}");
    // The form only serves the console's own callback, with PKCE.
    let evil = location.replace("redirect_uri=http", "redirect_uri=https%3a%2f%2fevil.example%2f");
    let path = &evil[evil.find("/dev/users/authorize").unwrap()..];
    let (status, _, body) = http(&gw, "GET", path, "", "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("redirect_uri"), "{body}");
    // A made-up code is refused the OAuth way.
    let (status, _, body) = http(
        &gw,
        "POST",
        "/dev/users/token",
        form,
        "grant_type=authorization_code&code=nope&client_id=gatehouse&code_verifier=x",
    );
    assert_eq!(status, 400);
    assert!(body.contains("invalid_grant"), "{body}");
}
