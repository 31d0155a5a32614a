//! Upstream login and the relay against a real PostgreSQL, driven by the real psql and by
//! tokio-postgres.

// Helpers here run only under tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::borrow::Cow;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{BufMut, BytesMut};
use gatehouse_postgres::classify::{Statement, StatementKind};
use gatehouse_postgres::relay::{self, Gated, Refusal, StatementGate};
use gatehouse_postgres::upstream::{self, TlsMode, Upstream, UpstreamConfig, UpstreamError};
use gatehouse_testkit::postgres::PgServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Refuses writes to `customers`; masks any column named `email` to `***`, and by content
/// any `@example.com` address in other values to `@masked.invalid`. `failed_audit` stands
/// for an audit log that can no longer be written.
#[derive(Default)]
struct TestGate {
    failed_audit: AtomicBool,
}

impl StatementGate for TestGate {
    type Grant = ();
    /// Whether the held batch will be approved.
    type Hold = bool;

    /// Statements mentioning `held_approve` or `held_refuse` are held for 300 ms, then
    /// granted or refused.
    async fn decide(&self, sql: &str, statements: &[Statement]) -> Result<Gated<(), bool>, Refusal> {
        if sql.contains("held_approve") || sql.contains("held_refuse") {
            return Ok(Gated::Held {
                notice: "held for approval".to_owned(),
                hold: sql.contains("held_approve"),
            });
        }
        for s in statements {
            if s.kind != StatementKind::Read && s.tables.contains("customers") {
                return Err(Refusal {
                    sqlstate: "42501".to_owned(),
                    message: format!("{} on customers refused by policy", s.tag),
                    detail: Some("no policy permits it".to_owned()),
                    hint: None,
                });
            }
        }
        Ok(Gated::Granted(()))
    }

    async fn wait(&self, approve: bool) -> Result<(), Refusal> {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if approve {
            Ok(())
        } else {
            Err(Refusal {
                sqlstate: "42501".to_owned(),
                message: "approval denied".to_owned(),
                detail: None,
                hint: None,
            })
        }
    }

    fn recording(&self) -> bool {
        !self.failed_audit.load(Ordering::Relaxed)
    }

    fn mask_value<'a>(&self, column: &str, value: &'a [u8]) -> Cow<'a, [u8]> {
        const DOMAIN: &str = "@example.com";
        if column == "email" {
            return Cow::Owned(b"***".to_vec());
        }
        match std::str::from_utf8(value) {
            Ok(text) if text.contains(DOMAIN) => Cow::Owned(text.replace(DOMAIN, "@masked.invalid").into_bytes()),
            _ => Cow::Borrowed(value),
        }
    }
}

fn config(pg: &PgServer, user: &str, password: &str, database: &str) -> UpstreamConfig {
    UpstreamConfig {
        host: pg.host().to_owned(),
        port: pg.port(),
        database: database.to_owned(),
        user: user.to_owned(),
        password: password.to_owned(),
        tls: TlsMode::Disable,
        ca_file: None,
    }
}

/// A target with database `app` owned by role `gw`, holding `customers` and `scratch`.
fn target() -> PgServer {
    let pg = PgServer::start().unwrap();
    pg.create_role("gw", "gw-pass").unwrap();
    pg.create_database("app", "gw").unwrap();
    let out = pg
        .psql_as(
            "gw",
            "gw-pass",
            "app",
            "CREATE TABLE customers (id int PRIMARY KEY, name text, email text);
             INSERT INTO customers VALUES (1, 'ann', 'ann@example.com'), (2, 'bob', 'bob@example.com');
             CREATE TABLE scratch (id int, note text);",
        )
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pg
}

fn count(pg: &PgServer, table: &str) -> i64 {
    let out = pg
        .psql_as("gw", "gw-pass", "app", &format!("SELECT count(*) FROM {table}"))
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Test stand-in for the lead's startup: trust-style handshake, then `relay::run`.
async fn gateway(cfg: UpstreamConfig) -> u16 {
    gateway_with(cfg, Arc::default()).await
}

async fn gateway_with(cfg: UpstreamConfig, gate: Arc<TestGate>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let cfg = cfg.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let _ = serve(sock, cfg, &gate).await;
            });
        }
    });
    port
}

async fn serve(mut sock: TcpStream, cfg: UpstreamConfig, gate: &TestGate) -> anyhow::Result<()> {
    sock.set_nodelay(true)?;
    loop {
        let len = sock.read_i32().await?;
        let code = sock.read_i32().await?;
        if code == 80877103 || code == 80877104 {
            sock.write_all(b"N").await?;
            continue;
        }
        let mut rest = vec![0u8; usize::try_from(len)? - 8];
        sock.read_exact(&mut rest).await?;
        break;
    }
    let upstream = Upstream::connect(&cfg).await?;
    let mut out = BytesMut::new();
    gatehouse_postgres::wire::put_login_ok(&mut out, &upstream.params, upstream.backend_key);
    sock.write_all(&out).await?;
    relay::run(sock, upstream, gate).await?;
    Ok(())
}

struct PsqlOut {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn psql(port: u16, args: &[&str], stdin: Option<&str>) -> PsqlOut {
    let mut child = tokio::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "alice", "-d", "app"])
        .args(args)
        .env("PGSSLMODE", "disable")
        .env("PGPASSWORD", "unused")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    PsqlOut {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn tokio_client(port: u16) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=alice dbname=app sslmode=disable"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_scram_login_collects_parameters_and_key() {
    let pg = target();
    let up = Upstream::connect(&config(&pg, "gw", "gw-pass", "app")).await.unwrap();
    assert!(up.params.iter().any(|(k, _)| k == "server_version"));
    assert!(up.params.iter().any(|(k, v)| k == "client_encoding" && v == "UTF8"));
    assert!(up.backend_key.0 > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_md5_login() {
    let pg = target();
    pg.psql("SET password_encryption = 'md5'; CREATE ROLE old LOGIN PASSWORD 'old-pass'")
        .unwrap();
    let hba = pg.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("host all old 127.0.0.1/32 md5\n{rules}")).unwrap();
    pg.reload().unwrap();
    let stored = pg
        .psql("SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = 'old'")
        .unwrap();
    assert_eq!(stored.trim(), "t");
    let up = Upstream::connect(&config(&pg, "old", "old-pass", "postgres")).await;
    assert!(up.is_ok(), "{:?}", up.err());
    let wrong = Upstream::connect(&config(&pg, "old", "nope", "postgres")).await;
    assert_eq!(
        wrong.err().and_then(|e| e.sqlstate().map(str::to_owned)).as_deref(),
        Some("28P01")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_wrong_password_is_28p01() {
    let pg = target();
    let err = Upstream::connect(&config(&pg, "gw", "wrong", "app"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.sqlstate(), Some("28P01"));
    assert!(err.to_string().contains("password authentication failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_require_tls_never_downgrades() {
    let pg = target();
    for mode in [TlsMode::Require, TlsMode::VerifyFull] {
        let mut cfg = config(&pg, "gw", "gw-pass", "app");
        cfg.tls = mode.clone();
        let err = Upstream::connect(&cfg).await.err().unwrap();
        assert!(matches!(err, UpstreamError::SslRefused(ref m) if *m == mode), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cancel_request_reaches_the_backend() {
    let pg = target();
    let cfg = config(&pg, "gw", "gw-pass", "app");
    let mut up = Upstream::connect(&cfg).await.unwrap();
    let (pid, secret) = up.backend_key;
    up.stream.write_all(&[b'Q', 0, 0, 0, 24]).await.unwrap();
    up.stream.write_all(b"SELECT pg_sleep(30)\0").await.unwrap();
    loop {
        let out = pg
            .psql(&format!("SELECT state FROM pg_stat_activity WHERE pid = {pid}"))
            .unwrap();
        if out.trim() == "active" {
            break;
        }
        tokio::task::yield_now().await;
    }
    let started = std::time::Instant::now();
    upstream::cancel(&cfg, pid, secret).await.unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 512];
    while !String::from_utf8_lossy(&seen).contains("57014") {
        let n = up.stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "target closed before reporting the cancel");
        seen.extend_from_slice(&chunk[..n]);
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_read_passes_with_masking() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    let out = psql(port, &["-c", "SELECT id, name, email FROM customers ORDER BY id"], None).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "1|ann|***\n2|bob|***\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_statements_notify_then_run_or_fail_in_order() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    let script = "SELECT 'a';\nSELECT 'held_approve';\nSELECT 'held_refuse';\nSELECT 'b';\n";
    let out = psql(port, &[], Some(script)).await;
    assert_eq!(out.stdout, "a\nheld_approve\nb\n", "{}", out.stderr);
    assert_eq!(
        out.stderr.matches("NOTICE:  held for approval").count(),
        2,
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("ERROR:  approval denied"), "{}", out.stderr);

    // Extended protocol: the Parse is held, Bind/Execute/Sync wait in line behind it.
    let client = tokio_client(port).await;
    let rows = client
        .query("SELECT $1::text || '-held_approve'", &[&"x"])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "x-held_approve");
    let err = client
        .query("SELECT $1::text || 'held_refuse'", &[&"x"])
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().message(), "approval denied");
    let rows = client.query("SELECT 'after'", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, &str>(0), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_refused_write_leaves_table_unchanged() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    let out = psql(port, &["-c", "DELETE FROM customers"], None).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("ERROR:  DELETE on customers refused by policy"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&pg, "customers"), 2);
    // A multi-statement string is refused as a whole: the harmless insert did not run.
    let out = psql(
        port,
        &[
            "-c",
            "INSERT INTO scratch VALUES (1, 'x'); UPDATE customers SET name = 'z'",
        ],
        None,
    )
    .await;
    assert!(!out.ok);
    assert_eq!(count(&pg, "scratch"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_continues_after_refusal_and_transactions_stay_consistent() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    let script = "SELECT count(*) FROM customers;
DELETE FROM customers WHERE id = 1;
SELECT 'after refusal';
BEGIN;
INSERT INTO scratch VALUES (7, 'in txn');
DROP TABLE customers;
SELECT 'never';
ROLLBACK;
SELECT 'end';
";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("script.sql");
    std::fs::write(&file, script).unwrap();
    let out = psql(port, &["-f", file.to_str().unwrap()], None).await;
    assert!(out.stdout.contains("2\nafter refusal\n"), "{}", out.stdout);
    assert!(out.stdout.contains("end"), "{}", out.stdout);
    // Inside the transaction the refusal aborts it, as a failed statement would.
    assert!(!out.stdout.contains("never"), "{}", out.stdout);
    assert!(out.stderr.contains("current transaction is aborted"), "{}", out.stderr);
    assert!(out.stderr.contains("DROP TABLE on customers refused"), "{}", out.stderr);
    assert_eq!(count(&pg, "customers"), 2);
    assert_eq!(count(&pg, "scratch"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_refusal_then_good_query_on_same_connection() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    let client = tokio_client(port).await;
    let name: String = client
        .query_one("SELECT name FROM customers WHERE id = $1", &[&2i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "bob");
    let err = client
        .execute("DELETE FROM customers WHERE id = $1", &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    let stmt = client
        .prepare("SELECT count(*) FROM customers WHERE id >= $1")
        .await
        .unwrap();
    let n: i64 = client.query_one(&stmt, &[&1i32]).await.unwrap().get(0);
    assert_eq!(n, 2);
    let inserted = client
        .execute("INSERT INTO scratch VALUES ($1, $2)", &[&5i32, &"five"])
        .await
        .unwrap();
    assert_eq!(inserted, 1);
    assert_eq!(count(&pg, "customers"), 2);
    assert_eq!(count(&pg, "scratch"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_do_not_run_once_the_audit_cannot_record_them() {
    let pg = target();
    let gate = Arc::new(TestGate::default());
    let port = gateway_with(config(&pg, "gw", "gw-pass", "app"), gate.clone()).await;
    let client = tokio_client(port).await;
    // Decided (and, in the gateway, audited) once, when prepared.
    let insert = client.prepare("INSERT INTO scratch VALUES ($1, $2)").await.unwrap();
    assert_eq!(client.execute(&insert, &[&1i32, &"one"]).await.unwrap(), 1);
    // The log fails: the next execution is not forwarded, the session ends with why.
    gate.failed_audit.store(true, Ordering::Relaxed);
    let err = client.execute(&insert, &[&2i32, &"two"]).await.unwrap_err();
    let db = err.as_db_error().unwrap_or_else(|| panic!("not a server error: {err}"));
    assert_eq!((db.severity(), db.code().code()), ("FATAL", "58000"), "{db}");
    assert!(db.message().contains("cannot write its audit log"), "{db}");
    assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());
    assert_eq!(count(&pg, "scratch"), 1, "the unrecorded execution reached the target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_refusal_inside_transaction_aborts_it() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    let mut client = tokio_client(port).await;
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO scratch VALUES ($1, 'x')", &[&1i32])
        .await
        .unwrap();
    let err = tx.execute("UPDATE customers SET name = $1", &[&"x"]).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    let after = tx.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(
        after.code(),
        Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    tx.rollback().await.unwrap();
    assert_eq!(count(&pg, "scratch"), 0);
    let rows = client.simple_query("SELECT email FROM customers").await.unwrap();
    let masked: Vec<_> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(masked, vec!["***", "***"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_text_results_are_masked_by_portal_columns() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    // pgbench-style extended mode, by hand: Parse/Bind (text results)/Describe portal/
    // Execute/Sync, then Bind on a named statement described earlier.
    let mut sock = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut startup = BytesMut::new();
    let params = b"user\0alice\0database\0app\0\0";
    startup.put_i32(8 + params.len() as i32);
    startup.put_i32(196608);
    startup.put_slice(params);
    sock.write_all(&startup).await.unwrap();
    read_until(&mut sock, b'Z').await;
    let mut msg = BytesMut::new();
    frame(
        &mut msg,
        b'P',
        b"s1\0SELECT email, name FROM customers WHERE id = $1\0\0\0",
    );
    frame(&mut msg, b'D', b"Ss1\0");
    frame(&mut msg, b'S', b"");
    // Unnamed portal on s1, one text parameter "1", all results text.
    frame(&mut msg, b'B', b"\0s1\0\0\0\0\x01\0\0\0\x011\0\0");
    frame(&mut msg, b'E', b"\0\0\0\0\0");
    frame(&mut msg, b'S', b"");
    // Unnamed statement, Describe portal (what pgbench -M extended does).
    frame(
        &mut msg,
        b'P',
        b"\0SELECT name, email FROM customers WHERE id = 2\0\0\0",
    );
    frame(&mut msg, b'B', b"\0\0\0\0\0\0\0\0");
    frame(&mut msg, b'D', b"P\0");
    frame(&mut msg, b'E', b"\0\0\0\0\0");
    frame(&mut msg, b'S', b"");
    sock.write_all(&msg).await.unwrap();
    let mut seen = read_until(&mut sock, b'Z').await;
    seen.extend(read_until(&mut sock, b'Z').await);
    seen.extend(read_until(&mut sock, b'Z').await);
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("***"), "{text}");
    assert!(text.contains("ann") && text.contains("bob"), "{text}");
    assert!(!text.contains("@example.com"), "{text}");
}

/// Any column's raw wire bytes, whatever its type.
struct Raw(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// The same query straight at the target, as the gateway's role: the unmasked control.
async fn direct_client(pg: &PgServer) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=gw password=gw-pass dbname=app sslmode=disable",
            pg.host(),
            pg.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_string_results_are_masked() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    let direct = direct_client(&pg).await;
    let client = tokio_client(port).await;
    // tokio-postgres asks for every result column in binary format.
    let queries = [
        "SELECT email FROM customers WHERE id = 1",
        "SELECT email::varchar(100) AS email FROM customers WHERE id = 1",
        "SELECT email::char(20) AS email FROM customers WHERE id = 1",
        "SELECT email::name AS email FROM customers WHERE id = 1",
    ];
    for sql in queries {
        let plain: String = direct.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(plain.trim_end(), "ann@example.com", "{sql}");
        let row = client.query_one(sql, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "***", "{sql}");
    }
    // By content, in a column the gate cannot name; other columns pass untouched.
    let sql = "SELECT id, 'mail ' || email AS contact FROM customers ORDER BY id";
    let plain: Vec<String> = direct.query(sql, &[]).await.unwrap().iter().map(|r| r.get(1)).collect();
    assert_eq!(plain, ["mail ann@example.com", "mail bob@example.com"]);
    let rows = client.query(sql, &[]).await.unwrap();
    let ids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let contacts: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(contacts, ["mail ann@masked.invalid", "mail bob@masked.invalid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_json_and_jsonb_results_are_masked() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    let direct = direct_client(&pg).await;
    let client = tokio_client(port).await;
    let sql = "SELECT jsonb_build_object('contact', email) AS doc, to_json(email) AS email, \
               to_jsonb(email) AS email FROM customers WHERE id = 1";
    let plain = direct.query_one(sql, &[]).await.unwrap();
    assert_eq!(plain.get::<_, Raw>(0).0, b"\x01{\"contact\": \"ann@example.com\"}");
    assert_eq!(plain.get::<_, Raw>(1).0, b"\"ann@example.com\"");
    let row = client.query_one(sql, &[]).await.unwrap();
    // jsonb keeps its version byte; the JSON text behind it is masked.
    assert_eq!(row.get::<_, Raw>(0).0, b"\x01{\"contact\": \"ann@masked.invalid\"}");
    assert_eq!(row.get::<_, Raw>(1).0, b"***");
    assert_eq!(row.get::<_, Raw>(2).0, b"\x01***");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_string_arrays_are_masked_element_by_element() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    let direct = direct_client(&pg).await;
    let client = tokio_client(port).await;
    let sql = "SELECT array_agg(email ORDER BY id) AS email, \
               ARRAY[min(email), NULL, min(name)] AS contacts, \
               array_agg(email::varchar ORDER BY id) AS contacts_v FROM customers";
    let plain = direct.query_one(sql, &[]).await.unwrap();
    assert_eq!(plain.get::<_, Vec<String>>(0), ["ann@example.com", "bob@example.com"]);
    assert_eq!(
        plain.get::<_, Vec<Option<String>>>(1),
        [Some("ann@example.com".to_owned()), None, Some("ann".to_owned())]
    );
    let row = client.query_one(sql, &[]).await.unwrap();
    assert_eq!(row.get::<_, Vec<String>>(0), ["***", "***"]);
    assert_eq!(
        row.get::<_, Vec<Option<String>>>(1),
        [Some("ann@masked.invalid".to_owned()), None, Some("ann".to_owned())]
    );
    assert_eq!(
        row.get::<_, Vec<String>>(2),
        ["ann@masked.invalid", "bob@masked.invalid"]
    );
    // Two dimensions: the header is kept and each element's length is rewritten.
    let sql = "SELECT ARRAY[[email, 'x'], ['y', name]] AS m FROM customers WHERE id = 2";
    let expected = |first: &str| {
        let mut v = BytesMut::new();
        for word in [2, 0, 25, 2, 1, 2, 1] {
            v.put_i32(word);
        }
        for element in [first, "x", "y", "bob"] {
            v.put_i32(element.len() as i32);
            v.put_slice(element.as_bytes());
        }
        v.to_vec()
    };
    assert_eq!(
        direct.query_one(sql, &[]).await.unwrap().get::<_, Raw>(0).0,
        expected("bob@example.com")
    );
    assert_eq!(
        client.query_one(sql, &[]).await.unwrap().get::<_, Raw>(0).0,
        expected("bob@masked.invalid")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_rows_are_masked_by_content() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    let sql = "COPY (SELECT id, email, name FROM customers ORDER BY id) TO STDOUT";
    let plain = pg.psql_as("gw", "gw-pass", "app", sql).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        "1\tann@example.com\tann\n2\tbob@example.com\tbob\n"
    );
    let out = psql(port, &["-c", sql], None).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "1\tann@masked.invalid\tann\n2\tbob@masked.invalid\tbob\n");
    let out = psql(port, &["-c", &format!("{} WITH (FORMAT csv)", sql)], None).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "1,ann@masked.invalid,ann\n2,bob@masked.invalid,bob\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_echoed_in_errors_and_notices_are_masked() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    let script = "CREATE TEMP TABLE signups (email text CHECK (email NOT LIKE 'zed%'));\n\
                  INSERT INTO signups VALUES ('zed@example.com');\n\
                  DO $$ BEGIN RAISE NOTICE 'welcome %', 'amy@example.com'; END $$;\n\
                  SELECT 'still here';\n";
    // The target itself echoes both addresses.
    let mut plain_err = String::new();
    for sql in script.lines().collect::<Vec<_>>().chunks(2).map(|c| c.join("\n")) {
        let plain = pg.psql_as("gw", "gw-pass", "app", &sql).unwrap();
        plain_err.push_str(&String::from_utf8_lossy(&plain.stderr));
    }
    assert!(
        plain_err.contains("Failing row contains (zed@example.com)"),
        "{plain_err}"
    );
    assert!(plain_err.contains("welcome amy@example.com"), "{plain_err}");

    let out = psql(port, &[], Some(script)).await;
    assert!(
        out.stderr.contains("Failing row contains (zed@masked.invalid)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("welcome amy@masked.invalid"), "{}", out.stderr);
    assert!(!out.stderr.contains("@example.com"), "{}", out.stderr);
    // SQLSTATE-bearing fields are untouched: psql still names the violated constraint.
    assert!(out.stderr.contains("violates check constraint"), "{}", out.stderr);
    assert!(out.stdout.contains("still here"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_without_describe_are_masked() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    // A client that never describes: Parse, Bind asking for binary results, Execute.
    let mut sock = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut startup = BytesMut::new();
    let params = b"user\0alice\0database\0app\0\0";
    startup.put_i32(8 + params.len() as i32);
    startup.put_i32(196608);
    startup.put_slice(params);
    sock.write_all(&startup).await.unwrap();
    read_until(&mut sock, b'Z').await;
    let mut msg = BytesMut::new();
    frame(&mut msg, b'P', b"s1\0SELECT email, id FROM customers ORDER BY id\0\0\0");
    // Named portal p1 on s1, no parameters, one result format for all columns: binary.
    frame(&mut msg, b'B', b"p1\0s1\0\0\0\0\0\0\x01\0\x01");
    frame(&mut msg, b'E', b"p1\0\0\0\0\x01");
    frame(&mut msg, b'E', b"p1\0\0\0\0\0");
    frame(&mut msg, b'S', b"");
    sock.write_all(&msg).await.unwrap();
    let mut tags = Vec::new();
    let mut rows = Vec::new();
    loop {
        let t = sock.read_u8().await.unwrap();
        let len = sock.read_i32().await.unwrap();
        let mut body = vec![0u8; len as usize - 4];
        sock.read_exact(&mut body).await.unwrap();
        tags.push(t);
        if t == b'D' {
            rows.push(body);
        } else if t == b'Z' {
            break;
        }
    }
    // The relay's own Describe is not answered to the client: no RowDescription ('T')
    // reached it, only the two rows, the suspension and the completion.
    assert_eq!(tags, b"12DsDCZ");
    // Two columns: email (masked, 3 bytes) and id (binary int4, untouched).
    assert_eq!(rows[0], b"\0\x02\0\0\0\x03***\0\0\0\x04\0\0\0\x01");
    assert_eq!(rows[1], b"\0\x02\0\0\0\x03***\0\0\0\x04\0\0\0\x02");
}

fn frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(4 + body.len() as i32);
    out.put_slice(body);
}

/// Read whole messages until one of type `tag`; returns the bytes read.
async fn read_until(sock: &mut TcpStream, tag: u8) -> Vec<u8> {
    let mut all = Vec::new();
    loop {
        let t = sock.read_u8().await.unwrap();
        let len = sock.read_i32().await.unwrap();
        let mut body = vec![0u8; len as usize - 4];
        sock.read_exact(&mut body).await.unwrap();
        all.push(t);
        all.extend_from_slice(&body);
        if t == tag {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_select_streams_through() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    let out = psql(
        port,
        &[
            "-c",
            "SELECT g, 'user' || g || '@example.com' AS email FROM generate_series(1, 100000) g",
        ],
        None,
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 100_000);
    assert!(lines.iter().all(|l| l.ends_with("|***")));
    let client = tokio_client(port).await;
    let rows = client
        .query("SELECT g FROM generate_series(1, 100000) g", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_and_from_stdin() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    let out = psql(port, &["-c", "COPY customers (id, name) TO STDOUT"], None).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "1\tann\n2\tbob\n");
    let out = psql(
        port,
        &["-c", "COPY scratch FROM STDIN"],
        Some("1\tone\n2\ttwo\n3\tthree\n\\.\n"),
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(count(&pg, "scratch"), 3);
    let out = psql(port, &["-c", "COPY customers FROM STDIN"], Some("9\tx\ty\n\\.\n")).await;
    assert!(!out.ok);
    assert!(out.stderr.contains("refused by policy"), "{}", out.stderr);
    assert_eq!(count(&pg, "customers"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_gets_an_error_and_the_session_survives() {
    let pg = target();
    let port = gateway(config(&pg, "gw", "gw-pass", "app")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    std::fs::write(&file, b"large object").unwrap();
    let script = format!("\\lo_import {}\nSELECT 'still here';\n", file.display());
    let out = psql(port, &[], Some(&script)).await;
    assert!(out.stderr.contains("function call messages"), "{}", out.stderr);
    assert!(out.stdout.contains("still here"), "{}", out.stdout);
}

/// Turn on TLS at the target with a fresh CA; returns the CA file.
fn enable_tls(pg: &PgServer, dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::MetadataExt;
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let data = pg.data_dir();
    let meta = std::fs::metadata(&data).unwrap();
    for name in ["server.pem", "server.key"] {
        let target = data.join(name);
        std::fs::copy(dir.join(name), &target).unwrap();
        std::os::unix::fs::chown(&target, Some(meta.uid()), Some(meta.gid())).unwrap();
        std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    pg.psql("ALTER SYSTEM SET ssl_cert_file = 'server.pem'").unwrap();
    pg.psql("ALTER SYSTEM SET ssl_key_file = 'server.key'").unwrap();
    pg.psql("ALTER SYSTEM SET ssl = on").unwrap();
    pg.reload().unwrap();
    dir.join("ca.pem")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_require_and_verify_full() {
    let pg = target();
    let dir = tempfile::tempdir().unwrap();
    let ca = enable_tls(&pg, dir.path());
    let mut cfg = config(&pg, "gw", "gw-pass", "app");
    cfg.tls = TlsMode::Require;
    let up = Upstream::connect(&cfg).await.unwrap();
    assert!(matches!(up.stream, upstream::UpstreamStream::Tls(_)));
    let ssl_in_use = pg
        .psql("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.usename = 'gw'")
        .unwrap();
    assert_eq!(ssl_in_use.trim(), "1");
    cfg.tls = TlsMode::VerifyFull;
    cfg.ca_file = Some(ca);
    Upstream::connect(&cfg).await.unwrap();
    // A CA that did not sign the server certificate fails verification.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-keyout", "o.key", "-out", "o.pem", "-days", "2", "-subj", "/CN=other"])
        .current_dir(&other)
        .output()
        .unwrap();
    assert!(out.status.success());
    cfg.ca_file = Some(other.join("o.pem"));
    let err = Upstream::connect(&cfg).await.err().unwrap();
    assert!(matches!(err, UpstreamError::Tls(_)), "{err}");
}

/// The catalog side connection against a real target: verdicts from `pg_proc`, answers
/// cached until invalidated, a target closing the idle connection survived, and a dead
/// target an error (never a verdict).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_learns_volatility_from_the_target() {
    use gatehouse_postgres::catalog::{Catalog, Volatility};
    use std::time::{Duration, Instant};

    let pg = target();
    let out = pg
        .psql_as(
            "gw",
            "gw-pass",
            "app",
            "CREATE FUNCTION volatile_delete() RETURNS int LANGUAGE plpgsql VOLATILE
               AS $$ BEGIN DELETE FROM scratch; RETURN 1; END $$;
             CREATE FUNCTION stable_count() RETURNS bigint LANGUAGE sql STABLE
               AS 'SELECT count(*) FROM customers';
             CREATE SCHEMA \"odd\"\"schema\";
             CREATE FUNCTION \"odd\"\"schema\".\"We\\ird\"() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1';",
        )
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let catalog = Catalog::new(config(&pg, "gw", "gw-pass", "app"), Duration::from_secs(60));
    let names = [
        "volatile_delete",
        "stable_count",
        "public.stable_count",
        "now",
        "random",
        "lower",
        "count",
        "gen_random_uuid",
        "pg_catalog.random",
        "no_such_function",
        "other.stable_count",
        "odd\"schema.We\\ird",
    ];
    let started = Instant::now();
    let answers = catalog.lookup(&names).await.unwrap();
    let first = started.elapsed();
    let expect = [
        Volatility::Volatile,
        Volatility::Free,
        Volatility::Free,
        Volatility::BuiltinFree,
        Volatility::BuiltinFree,
        Volatility::BuiltinFree,
        Volatility::BuiltinFree,
        Volatility::BuiltinFree,
        Volatility::BuiltinFree,
        Volatility::Unknown,
        Volatility::Unknown,
        Volatility::Free,
    ];
    for (name, v) in names.iter().zip(expect) {
        assert_eq!(answers.get(*name), Some(&v), "{name}");
    }

    // Cached: a change on the target is not seen until the answers are dropped.
    let out = pg
        .psql_as(
            "gw",
            "gw-pass",
            "app",
            "CREATE OR REPLACE FUNCTION stable_count() RETURNS bigint LANGUAGE sql VOLATILE
               AS 'SELECT count(*) FROM customers'",
        )
        .unwrap();
    assert!(out.status.success());
    let started = Instant::now();
    assert_eq!(
        catalog.lookup(&["stable_count"]).await.unwrap()["stable_count"],
        Volatility::Free
    );
    let cached = started.elapsed();
    catalog.invalidate();
    let started = Instant::now();
    assert_eq!(
        catalog.lookup(&["stable_count"]).await.unwrap()["stable_count"],
        Volatility::Volatile
    );
    let asked = started.elapsed();
    let started = Instant::now();
    Upstream::connect(&config(&pg, "gw", "gw-pass", "app")).await.unwrap();
    let login = started.elapsed();
    // For docs/postgres.md: why one kept side connection rather than one per lookup.
    eprintln!(
        "catalog lookup: first (login + query) {first:?}, cached {cached:?}, query on the open connection {asked:?}; a fresh login alone {login:?}"
    );

    // The target ends the idle side connection: the next lookup logs in again.
    pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'gw' AND application_name = 'gatehouse'")
        .unwrap();
    catalog.invalidate();
    assert_eq!(
        catalog.lookup(&["volatile_delete"]).await.unwrap()["volatile_delete"],
        Volatility::Volatile
    );

    // A target that cannot be reached is an error, and the next lookups fail fast.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(&pg, "gw", "gw-pass", "app");
    cfg.port = dead.local_addr().unwrap().port();
    drop(dead);
    let unreachable = Catalog::new(cfg, Duration::from_secs(60));
    assert!(unreachable.lookup(&["now"]).await.is_err());
    let started = Instant::now();
    let again = unreachable.lookup(&["lower"]).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(again.to_string().contains("moments ago"), "{again}");
}
