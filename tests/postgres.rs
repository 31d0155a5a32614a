//! The PostgreSQL gateway end to end: a real PostgreSQL server, a real `gatehouse serve`,
//! and the real `psql`, `pgbench` and tokio-postgres clients with development tokens.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::process::{Command, Output};
use std::time::Duration;

use gatehouse_testkit::gateway::{GatewayBuilder, TestGateway, free_port};
use gatehouse_testkit::postgres::{GatewayRole, PgServer};

const ORDERS_PASSWORD: &str = "orders-gateway-secret";

struct Setup {
    gw: TestGateway,
    pg: PgServer,
    port: u16,
    _secrets: tempfile::TempDir,
    _role: GatewayRole,
}

fn setup() -> Setup {
    setup_with(|_| "allow_plaintext = true".to_string())
}

/// `listener` gives the `[postgres]` keys beyond `listen`, from the secrets dir.
fn setup_with(listener: impl FnOnce(&std::path::Path) -> String) -> Setup {
    let pg = PgServer::start().unwrap();
    let role = pg.gateway_role("gatehouse_orders", ORDERS_PASSWORD).unwrap();
    role.database(
        &pg,
        "orders",
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card text);
         INSERT INTO customers VALUES
           (1, 'Ada', 'ada@example.com', '4111 1111 1111 1111'),
           (2, 'Bob', 'bob@example.org', '5500 0000 0000 0004');",
    )
    .unwrap();
    role.database(&pg, "scratch", "").unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let listener = listener(secrets.path());
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_gatehouse"))
        .config(&format!(
            "[postgres]\nlisten = \"127.0.0.1:{port}\"\n{listener}\n{}{}",
            role.target_toml("orders", "orders", "env = \"prod\""),
            role.target_toml("scratch", "scratch", "env = \"dev\""),
        ))
        .start()
        .unwrap();
    Setup {
        gw,
        pg,
        port,
        _secrets: secrets,
        _role: role,
    }
}

fn psql(s: &Setup, db: &str, password: &str, sql: &str) -> Output {
    psql_command(s, db, password).args(["-c", sql]).output().unwrap()
}

/// psql on database `db` through the gateway, before its `-c`.
fn psql_command(s: &Setup, db: &str, password: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.arg(format!(
        "host=127.0.0.1 port={} dbname={db} user=someone sslmode=disable connect_timeout=10",
        s.port
    ))
    .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
    .env("PGPASSWORD", password);
    cmd
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// psql through the gateway to `orders`, which must succeed; its output.
fn read_ok(s: &Setup, token: &str, sql: &str) -> String {
    let o = psql(s, "orders", token, sql);
    assert!(o.status.success(), "{sql}: {}\n{}", err(&o), s.gw.log());
    out(&o)
}

/// A gateway with `people.full_name` ruled `secret`, and a `people` table whose one row
/// no detector recognises: its email is `not-an-address`, and nothing about its
/// `full_name` looks secret.
fn people_with_a_secret_rule() -> Setup {
    let s =
        setup_with(|_| "allow_plaintext = true\n[mask]\ncolumns = { \"people.full_name\" = \"secret\" }".to_string());
    direct(
        &s,
        "CREATE TABLE people (id int PRIMARY KEY, full_name text, email text);
         INSERT INTO people VALUES (1, 'Ada Lovelace', 'not-an-address');",
    );
    s
}

fn direct(s: &Setup, sql: &str) -> String {
    let o =
        s.pg.psql_as("gatehouse_orders", ORDERS_PASSWORD, "orders", sql)
            .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    out(&o)
}

#[test]
fn psql_reads_through_the_gateway_with_sensitive_values_masked() {
    let s = setup();
    let token = s.gw.mint("alice", &["dba"], false).unwrap();
    let o = psql(
        &s,
        "orders",
        &token,
        "SELECT id, name, email, card FROM customers ORDER BY id",
    );
    assert!(o.status.success(), "{}\n{}", err(&o), s.gw.log());
    let text = out(&o);
    assert!(text.contains("Ada"), "{text}");
    assert!(!text.contains("ada@example.com"), "email masked: {text}");
    assert!(text.contains("a***@example.com"), "{text}");
    assert!(!text.contains("4111 1111 1111 1111"), "card masked: {text}");
    assert!(text.contains("1111"), "last four kept: {text}");

    // support-leads may see emails, but never cards.
    let support = s.gw.mint("sam", &["support-leads"], false).unwrap();
    let text = out(&psql(
        &s,
        "orders",
        &support,
        "SELECT email, card FROM customers WHERE id = 1",
    ));
    assert!(text.contains("ada@example.com"), "{text}");
    assert!(!text.contains("4111 1111 1111 1111"), "{text}");
}

#[test]
fn writes_are_decided_per_statement_and_refusals_never_reach_the_target() {
    let s = setup();
    // (Writes that wait for approval are tests/approvals.rs.)
    let agent = s.gw.mint("ci-bot", &[], true).unwrap();
    let o = psql(&s, "orders", &agent, "DROP TABLE customers");
    assert!(!o.status.success());
    assert!(err(&o).contains("ERROR:"), "{}", err(&o));
    assert!(err(&o).contains("agent-no-ddl-admin"), "names the policy: {}", err(&o));
    assert!(
        err(&o).contains("HINT:  the gateway's Cedar policies decide"),
        "{}",
        err(&o)
    );

    // One refused statement refuses the whole string; nothing of it runs.
    let dba = s.gw.mint("alice", &["dba"], false).unwrap();
    let o = psql(
        &s,
        "orders",
        &dba,
        "UPDATE customers SET name = 'Zed' WHERE id = 2; DELETE FROM customers",
    );
    assert!(!o.status.success());
    assert!(err(&o).contains("ERROR:"), "{}", err(&o));
    assert_eq!(direct(&s, "SELECT name FROM customers ORDER BY id"), "Ada\nBob\n");

    // A write with WHERE by a dba goes through.
    let o = psql(&s, "orders", &dba, "UPDATE customers SET name = 'Bobby' WHERE id = 2");
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(direct(&s, "SELECT name FROM customers WHERE id = 2"), "Bobby\n");

    // Hidden writes are still writes: an agent may read, but this unbounded DELETE is refused.
    let o = psql(
        &s,
        "orders",
        &agent,
        "WITH gone AS (DELETE FROM customers RETURNING *) SELECT count(*) FROM gone",
    );
    assert!(!o.status.success(), "{}", out(&o));
    assert!(err(&o).contains("prod-no-unbounded-update-delete"), "{}", err(&o));
    assert_eq!(direct(&s, "SELECT count(*) FROM customers"), "2\n");
}

#[test]
fn bad_token_unknown_database_and_denied_connect_fail_alike() {
    let s = setup();
    let token = s.gw.mint("alice", &["dba"], false).unwrap();
    let bad = psql(&s, "orders", "not-a-token", "SELECT 1");
    let unknown = psql(&s, "nosuchdb", &token, "SELECT 1");
    assert!(!bad.status.success() && !unknown.status.success());
    let message = |o: &Output| {
        err(o)
            .lines()
            .find(|l| l.contains("FATAL"))
            .map(|l| l.split("FATAL:").nth(1).unwrap_or("").trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(message(&bad), "password authentication failed for user \"someone\"");
    assert_eq!(message(&bad), message(&unknown));
}

#[test]
fn credentials_work_as_the_password_and_the_session_is_audited() {
    let s = setup();
    let token = s.gw.mint("alice", &["dba"], false).unwrap();
    let cfg = s.gw.config_path().display().to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["credentials", "--config", &cfg, "--target", "orders", "--ttl", "5m"])
        .env("GATEHOUSE_TOKEN", &token)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let secret = out(&o).trim().to_string();
    assert!(secret.starts_with("ghc_"), "{secret}");

    let o = psql(&s, "orders", &secret, "SELECT count(*) FROM customers");
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "2\n");
    // Bound to its target: not valid for another database.
    assert!(!psql(&s, "scratch", &secret, "SELECT 1").status.success());

    let sessions = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["audit", "sessions", "--config", &cfg, "--json"])
        .output()
        .unwrap();
    let sessions: serde_json::Value = serde_json::from_slice(&sessions.stdout).unwrap();
    let list = sessions.as_array().unwrap();
    assert!(
        list.iter()
            .any(|x| x["target"] == "orders" && x["requests"].as_u64() >= Some(1)),
        "{sessions}"
    );
    let verify = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["audit", "verify", "--config", &cfg])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", err(&verify));
    let segment = std::fs::read_to_string(s.gw.audit_dir().join("segment-000001.jsonl")).unwrap();
    assert!(
        !segment.contains(&token) && !segment.contains(&secret),
        "no secrets in the audit log"
    );
    assert!(
        segment.contains("SELECT count(*) FROM customers"),
        "statements are recorded"
    );
}

#[test]
fn pgbench_runs_through_the_gateway() {
    let s = setup();
    let dba = s.gw.mint("alice", &["dba"], false).unwrap();
    let conn = ["-h", "127.0.0.1", "-p", &s.port.to_string(), "-U", "someone"];
    let init = Command::new("pgbench")
        .args(conn)
        .args(["-i", "-s", "1", "scratch"])
        .env("PGPASSWORD", &dba)
        .env("PGSSLMODE", "disable")
        .output()
        .unwrap();
    assert!(init.status.success(), "{}\n{}", err(&init), s.gw.log());
    let run = Command::new("pgbench")
        .args(conn)
        .args(["-c", "2", "-t", "50", "scratch"])
        .env("PGPASSWORD", &dba)
        .env("PGSSLMODE", "disable")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}\n{}", err(&run), out(&run));
    assert!(
        out(&run).contains("number of transactions actually processed: 100/100"),
        "{}",
        out(&run)
    );
}

#[test]
fn cancel_request_reaches_the_right_backend() {
    let s = setup();
    let token = s.gw.mint("alice", &["dba"], false).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = tokio_client(&s, &token).await;
        let cancel = client.cancel_token();
        let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
        // Cancel once the backend is really sleeping (the runtime's workers drive the query
        // while this thread polls).
        let sleeping = s.gw.wait_for(Duration::from_secs(10), || {
            direct(
                &s,
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'",
            ) == "1\n"
        });
        assert!(sleeping, "the query never started");
        cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
            .await
            .unwrap()
            .unwrap();
        let error = result.unwrap_err();
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
            "{error}"
        );
    });
}

#[test]
fn tls_listener_serves_verify_full_clients_and_refuses_plaintext() {
    let s = setup_with(|dir| {
        let certs = gatehouse_testkit::tls::TestCerts::generate(dir).unwrap();
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            certs.server_cert.display(),
            certs.server_key.display()
        )
    });
    let token = s.gw.mint("alice", &["dba"], false).unwrap();
    let ca = s._secrets.path().join("ca.pem");
    let verified = Command::new("psql")
        .arg(format!(
            "host=localhost port={} dbname=orders user=alice sslmode=verify-full sslrootcert={} connect_timeout=10",
            s.port,
            ca.display()
        ))
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ])
        .env("PGPASSWORD", &token)
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}\n{}", err(&verified), s.gw.log());
    // The gateway's leg to the target is plain here (tls = "disable"); the client's leg is TLS.
    assert_eq!(out(&verified), "f\n");

    let plain = psql(&s, "orders", &token, "SELECT 1");
    assert!(!plain.status.success());
    assert!(
        err(&plain).contains("requires an encrypted connection"),
        "{}",
        err(&plain)
    );
}

#[test]
fn a_session_ends_when_its_token_expires() {
    let s = setup();
    let token = s.gw.mint_for("alice", &["dba"], false, "3s").unwrap();
    let o = psql(&s, "orders", &token, "SELECT pg_sleep(8)");
    assert!(!o.status.success(), "the session outlived its token: {}", out(&o));
    assert!(err(&o).contains("expired"), "{}", err(&o));
    let segment = std::fs::read_to_string(s.gw.audit_dir().join("segment-000001.jsonl")).unwrap();
    assert!(segment.contains("token expired"), "the end is audited with its reason");
}

/// Python's psycopg 3 (installed by `just setup`): server-side prepared statements with
/// parameters, binary results masked type-correctly, a refusal as a typed exception.
#[test]
fn psycopg_prepared_statements_binary_results_and_refusals() {
    let s = setup();
    let token = s.gw.mint("alice", &["dba"], false).unwrap();
    direct(
        &s,
        "CREATE TYPE contact AS ENUM ('ops@example.com');
         CREATE TABLE contacts (c contact);
         INSERT INTO contacts VALUES ('ops@example.com');",
    );
    let script = r#"
import json, os, sys
import psycopg
conn = psycopg.connect(host="127.0.0.1", port=int(os.environ["PORT"]), dbname="orders",
                       user="someone", password=os.environ["TOKEN"], sslmode="disable", autocommit=True)
out = {}
with conn.cursor() as cur:
    # prepare=True: Parse once as a named statement, then Bind/Execute with each value.
    out["prepared"] = [cur.execute("SELECT name, email FROM customers WHERE id = %s", (i,), prepare=True).fetchone()
                       for i in (1, 2, 1)]
with conn.cursor(binary=True) as cur:
    out["binary"] = cur.execute("SELECT id, email, card FROM customers ORDER BY id").fetchall()
    # An enum has a per-database OID; its binary form is its label.
    label = cur.execute("SELECT c FROM contacts").fetchone()[0]
    out["enum"] = label if isinstance(label, str) else bytes(label).decode()
try:
    conn.execute("DELETE FROM customers")
    out["refused"] = None
except psycopg.errors.InsufficientPrivilege as e:
    out["refused"] = [e.sqlstate, str(e)]
out["after"] = conn.execute("SELECT count(*) FROM customers").fetchone()[0]
print(json.dumps(out))
"#;
    let o = Command::new("python3")
        .args(["-c", script])
        .env("PORT", s.port.to_string())
        .env("TOKEN", &token)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", err(&o), s.gw.log());
    let v: serde_json::Value = serde_json::from_str(out(&o).trim()).unwrap();
    assert_eq!(
        v["prepared"],
        serde_json::json!([
            ["Ada", "a***@example.com"],
            ["Bob", "b***@example.org"],
            ["Ada", "a***@example.com"]
        ])
    );
    let binary = v["binary"].as_array().unwrap();
    assert_eq!(binary[0][0], 1, "integers decode from binary");
    assert_eq!(binary[0][1], "a***@example.com");
    assert!(!binary[0][2].as_str().unwrap().contains("4111 1111"), "{binary:?}");
    assert_eq!(v["enum"], "o***@example.com");
    assert_eq!(v["refused"][0], "42501");
    assert!(
        v["refused"][1]
            .as_str()
            .unwrap()
            .contains("prod-no-unbounded-update-delete"),
        "{v}"
    );
    assert_eq!(v["after"], 2);
}

/// Masking follows views: a view's columns are masked as the table columns they read,
/// through views over views, materialized views and schemas, and a view created through
/// the gateway is seen at once.
#[test]
fn views_are_masked_as_the_columns_they_read() {
    let s = people_with_a_secret_rule();
    direct(
        &s,
        "CREATE VIEW directory AS SELECT id, full_name AS who, email AS contact FROM people;
         CREATE VIEW names AS SELECT upper(who) AS n FROM directory;
         CREATE MATERIALIZED VIEW snap AS SELECT id, full_name FROM people;
         CREATE SCHEMA hr;
         CREATE VIEW hr.staff AS SELECT full_name AS nm FROM public.people;
         CREATE VIEW plain AS SELECT id FROM people;",
    );
    let dba = s.gw.mint("alice", &["dba"], false).unwrap();
    let read = |sql: &str| read_ok(&s, &dba, sql);
    for (sql, want) in [
        ("SELECT who, contact FROM directory", "<masked:secret>|<masked:email>\n"),
        ("SELECT * FROM directory", "1|<masked:secret>|<masked:email>\n"),
        ("SELECT d.who AS x FROM public.directory d", "<masked:secret>\n"),
        ("SELECT n FROM names", "<masked:secret>\n"),
        ("SELECT * FROM snap", "1|<masked:secret>\n"),
        ("SELECT nm FROM hr.staff", "<masked:secret>\n"),
        ("SELECT id FROM plain", "1\n"),
        ("COPY (SELECT contact FROM directory) TO STDOUT", "<masked:email>\n"),
    ] {
        assert_eq!(read(sql), want, "{sql}");
    }
    let json = read("SELECT row_to_json(d) FROM directory d");
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"id": 1, "who": "<masked:secret>", "contact": "<masked:email>"})
    );
    // A name first read as nothing (no such relation yet), then created as a view through
    // the gateway: the DDL empties the catalog's answers, so the new view is looked up.
    let o = psql(&s, "orders", &dba, "SELECT * FROM later");
    assert!(!o.status.success(), "no such relation yet");
    read("CREATE VIEW later AS SELECT full_name AS q FROM people");
    assert_eq!(read("SELECT q FROM later"), "<masked:secret>\n");
    assert!(!audit_text(&s).contains("Ada Lovelace"));
}

/// Result columns are masked by where their values come from: a column computed from
/// `email` is masked as an email whatever it is called and whatever it looks like, a column a
/// `[mask]` rule names is masked as the rule's class, and COPY rows are masked by field.
#[test]
fn columns_derived_from_masked_columns_are_masked() {
    let s = people_with_a_secret_rule();
    let dba = s.gw.mint("alice", &["dba"], false).unwrap();
    let read = |sql: &str| read_ok(&s, &dba, sql);
    for sql in [
        "SELECT email FROM people",
        "SELECT email AS x FROM people",
        "SELECT upper(email) FROM people",
        "SELECT email || '' FROM people",
        "SELECT reverse(email) FROM people",
        "SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM people",
        "SELECT (SELECT email FROM people LIMIT 1)",
        "WITH e AS (SELECT email AS v FROM people) SELECT v FROM e",
        "SELECT v FROM (SELECT lower(email) AS v FROM people) s",
        "SELECT 'x' AS v UNION ALL SELECT email FROM people",
        "COPY (SELECT reverse(email) FROM people) TO STDOUT",
    ] {
        let text = read(sql);
        assert!(!text.trim().is_empty(), "{sql}");
        for line in text.lines() {
            assert_eq!(line, "<masked:email>", "{sql}: {text}");
        }
    }
    for sql in [
        "SELECT full_name FROM people",
        "SELECT full_name AS n FROM people",
        "SELECT upper(p.full_name) FROM people p",
        "COPY people (full_name) TO STDOUT",
    ] {
        assert_eq!(read(sql), "<masked:secret>\n", "{sql}");
    }
    // Unrelated columns come back as they are; a value computed from email, even a
    // length, is masked (text format: as the class).
    assert_eq!(
        read("SELECT id, name FROM customers WHERE id = 1"),
        "1|Ada\n",
        "unrelated tables are untouched"
    );
    assert_eq!(read("SELECT id, length(email) FROM people"), "1|<masked:email>\n");
    assert_eq!(
        read("SELECT count(email), bool_and(email IS NULL) FROM people"),
        "1|f\n"
    );
    assert_eq!(
        read("COPY (SELECT id, reverse(email) FROM people) TO STDOUT"),
        "1\t<masked:email>\n"
    );
    // A cursor's rows are traced from its DECLARE.
    let text = read("BEGIN; DECLARE cur CURSOR FOR SELECT id, reverse(email) FROM people; FETCH ALL FROM cur; COMMIT");
    assert!(text.contains("1|<masked:email>"), "{text}");
    assert!(!text.contains("sserdda"), "{text}");
    // Whole rows: JSON is masked key by key (name hints and the rules on the table).
    let json = read("SELECT row_to_json(p) FROM people p");
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"id": 1, "full_name": "<masked:secret>", "email": "<masked:email>"})
    );
    // COPY of a whole table names no columns: a table with rules is masked field by field
    // as its strictest rule.
    assert_eq!(
        read("COPY people TO STDOUT"),
        "<masked:secret>\t<masked:secret>\t<masked:secret>\n"
    );

    // support-leads may see emails unmasked, wherever they flow; never secrets.
    let lead = s.gw.mint("sam", &["support-leads"], false).unwrap();
    let o = psql(
        &s,
        "orders",
        &lead,
        "SELECT reverse(email), upper(full_name) FROM people",
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "sserdda-na-ton|<masked:secret>\n");

    // Counts per class reach the audit log; the values never do.
    let audit = || audit_text(&s);
    assert!(
        s.gw.wait_for(Duration::from_secs(10), || audit().contains("\"statement_completed\"")
            && audit().contains("\"masked\":{")
            && audit().contains("\"secret\":")),
        "{}",
        audit()
    );
    assert!(!audit().contains("not-an-address") && !audit().contains("Ada Lovelace"));

    // The extended protocol: prepared statements, binary results.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = tokio_client(&s, &dba).await;
        let statement = client
            .prepare("SELECT id, reverse(email) AS x, p.full_name AS n, length(email) AS l FROM people p WHERE id = $1")
            .await
            .unwrap();
        for _ in 0..2 {
            let row = client.query_one(&statement, &[&1i32]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), 1);
            assert_eq!(row.get::<_, String>(1), "<masked:email>");
            assert_eq!(row.get::<_, String>(2), "<masked:secret>");
            // A binary integer computed from a masked column cannot be rewritten as text:
            // NULL, never the value.
            assert_eq!(row.get::<_, Option<i32>>(3), None);
        }
        let rows = client
            .simple_query("SELECT 1; SELECT reverse(email) FROM people")
            .await
            .unwrap();
        let values: Vec<String> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        assert_eq!(values, ["1", "<masked:email>"]);
    });
}

/// A tokio-postgres client logged in to the `orders` target with `password` (a token), its
/// connection driven on the current runtime.
async fn tokio_client(s: &Setup, password: &str) -> tokio_postgres::Client {
    let conn = format!(
        "host=127.0.0.1 port={} dbname=orders user=someone password={password} sslmode=disable",
        s.port
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The audit log's first segment as text (empty until it exists).
fn audit_text(s: &Setup) -> String {
    std::fs::read_to_string(s.gw.audit_dir().join("segment-000001.jsonl")).unwrap_or_default()
}

/// The audit records of one kind, parsed.
fn audit_events(s: &Setup, kind: &str) -> Vec<serde_json::Value> {
    audit_text(s)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == kind)
        .collect()
}

#[test]
fn each_forwarded_statement_gets_a_completion_record_with_its_outcome() {
    let s = setup();
    let dba = s.gw.mint("alice", &["dba"], false).unwrap();
    let completed = |tag: &str| {
        audit_events(&s, "statement_completed")
            .into_iter()
            .filter(|v| v["command_tag"] == tag)
            .collect::<Vec<_>>()
    };

    // Two statements in one string, the second fails: the first has its tag and row count,
    // the second the target's SQLSTATE and message, the email it echoes scrubbed.
    let o = psql(
        &s,
        "orders",
        &dba,
        "UPDATE customers SET name = name WHERE id >= 1; SELECT 'eve@example.net'::int",
    );
    assert!(!o.status.success());
    assert!(err(&o).contains("invalid input syntax for type integer"), "{}", err(&o));
    assert!(s.gw.wait_for(Duration::from_secs(10), || !completed("UPDATE 2").is_empty()));
    let update = &completed("UPDATE 2")[0];
    assert_eq!(update["rows"], 2, "{update}");
    assert!(update["duration_us"].as_u64().is_some(), "{update}");
    let failed: Vec<_> = audit_events(&s, "statement_completed")
        .into_iter()
        .filter(|v| v["error"].is_object())
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["error"]["code"], "22P02");
    assert_eq!(failed[0]["request"], update["request"].as_u64().unwrap() + 1);
    let message = failed[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("invalid input syntax for type integer"),
        "{message}"
    );
    assert!(!message.contains("eve@example.net"), "{message}");
    // Each completion answers a decision recorded under the same request number.
    let decided: Vec<u64> = audit_events(&s, "request_decided")
        .iter()
        .map(|v| v["request"].as_u64().unwrap())
        .collect();
    assert!(decided.contains(&update["request"].as_u64().unwrap()), "{decided:?}");

    // COPY TO STDOUT reports the rows it copied.
    let o = psql(&s, "orders", &dba, "COPY (SELECT id FROM customers) TO STDOUT");
    assert!(o.status.success(), "{}", err(&o));
    assert!(s.gw.wait_for(Duration::from_secs(10), || !completed("COPY 2").is_empty()));
    assert_eq!(completed("COPY 2")[0]["rows"], 2);

    // A prepared statement executed twice: two records under its Parse's request, each with
    // the Bind parameters (binary, decoded by the types the target described), masked.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = tokio_client(&s, &dba).await;
        let statement = client
            .prepare("SELECT name FROM customers WHERE email = $1 AND id > $2")
            .await
            .unwrap();
        for _ in 0..2 {
            let rows = client.query(&statement, &[&"ada@example.com", &0i32]).await.unwrap();
            assert_eq!(rows.len(), 1);
        }
        // A partial fetch: each Execute that stops at the row limit is its own record.
        let mut client = client;
        let tx = client.transaction().await.unwrap();
        let portal = tx.bind("SELECT id FROM customers ORDER BY id", &[]).await.unwrap();
        assert_eq!(tx.query_portal(&portal, 1).await.unwrap().len(), 1);
        tx.commit().await.unwrap();
    });
    let suspended: Vec<_> = audit_events(&s, "statement_completed")
        .into_iter()
        .filter(|v| v["suspended"] == true)
        .collect();
    assert_eq!(suspended.len(), 1, "{suspended:?}");
    assert_eq!(suspended[0]["rows"], 1);
    assert!(suspended[0].get("command_tag").is_none());
    let executions = || {
        audit_events(&s, "statement_completed")
            .into_iter()
            .filter(|v| v["parameters"].is_array() && v["command_tag"] == "SELECT 1")
            .collect::<Vec<_>>()
    };
    assert!(s.gw.wait_for(Duration::from_secs(10), || executions().len() == 2));
    let executions = executions();
    assert_eq!(executions[0]["request"], executions[1]["request"]);
    for e in &executions {
        assert_eq!(e["command_tag"], "SELECT 1", "{e}");
        assert_eq!(e["rows"], 1, "{e}");
        let params = e["parameters"].as_array().unwrap();
        assert_eq!(params.len(), 2, "{e}");
        assert_eq!(params[1], "0", "{e}");
        let email = params[0].as_str().unwrap();
        assert!(email.contains("@example.com") && email != "ada@example.com", "{e}");
    }

    // Values never reach the log, and the chain still verifies.
    let segment = std::fs::read_to_string(s.gw.audit_dir().join("segment-000001.jsonl")).unwrap();
    assert!(!segment.contains("eve@example.net"), "{segment}");
    assert!(!segment.contains("ada@example.com"), "{segment}");
    let cfg = s.gw.config_path().display().to_string();
    let verify = s.gw.cli(&["audit", "verify", "--config", &cfg]).unwrap();
    assert!(verify.status.success(), "{}", err(&verify));
}

/// psql with SQLSTATEs in its error output (`ERROR:  42501: ...`).
fn psql_verbose(s: &Setup, password: &str, sql: &str) -> Output {
    psql_command(s, "orders", password)
        .args(["-v", "VERBOSITY=verbose", "-c", sql])
        .output()
        .unwrap()
}

#[test]
fn function_calls_are_writes_unless_the_target_catalog_says_they_are_free_of_side_effects() {
    let s = setup_with(|_| "allow_plaintext = true\nfunction_cache_secs = 3".to_string());
    direct(
        &s,
        "CREATE FUNCTION volatile_delete() RETURNS int LANGUAGE plpgsql VOLATILE
           AS $$ BEGIN DELETE FROM customers WHERE id = 2; RETURN 1; END $$;
         CREATE FUNCTION stable_count() RETURNS bigint LANGUAGE sql STABLE
           AS 'SELECT count(*) FROM customers';
         CREATE FUNCTION default_volatility() RETURNS int LANGUAGE sql AS 'SELECT 1';",
    );
    // Not in dba and not an agent: may read, never write (policies/).
    let reader = s.gw.mint("rita", &[], false).unwrap();
    let dba = s.gw.mint("alice", &["dba"], false).unwrap();
    let superuser = |sql: &str| {
        let o = s.pg.psql_as(s.pg.superuser(), s.pg.password(), "orders", sql).unwrap();
        assert!(o.status.success(), "{}", err(&o));
    };

    // The catalog cannot be asked: fail closed, decided as a write, the session usable.
    superuser("REVOKE SELECT ON pg_catalog.pg_proc FROM PUBLIC");
    let o = psql_verbose(&s, &reader, "SELECT stable_count()");
    assert!(!o.status.success(), "{}", out(&o));
    assert!(err(&o).contains("ERROR:  42501"), "{}", err(&o));
    assert!(
        err(&o).contains("cannot verify that stable_count() is free of side effects"),
        "{}",
        err(&o)
    );
    let o = psql(&s, "orders", &dba, "SELECT stable_count()");
    assert!(o.status.success(), "a writer is permitted the write: {}", err(&o));
    superuser("GRANT SELECT ON pg_catalog.pg_proc TO PUBLIC");
    let recovered = s.gw.wait_for(Duration::from_secs(10), || {
        psql(&s, "orders", &reader, "SELECT stable_count()").status.success()
    });
    assert!(recovered, "{}", s.gw.log());

    // A volatile function that deletes rows is a write: refused, nothing deleted.
    let o = psql_verbose(&s, &reader, "SELECT volatile_delete()");
    assert!(!o.status.success(), "{}", out(&o));
    assert!(err(&o).contains("ERROR:  42501"), "{}", err(&o));
    assert!(err(&o).contains("volatile_delete() is VOLATILE"), "{}", err(&o));
    assert_eq!(direct(&s, "SELECT count(*) FROM customers"), "2\n");
    let o = psql_verbose(
        &s,
        &reader,
        "SELECT id FROM customers WHERE id IN (SELECT volatile_delete())",
    );
    assert!(err(&o).contains("ERROR:  42501"), "hidden in a subquery: {}", err(&o));
    // User-defined functions are volatile by default; unknown functions fail closed.
    let o = psql_verbose(&s, &reader, "SELECT default_volatility()");
    assert!(err(&o).contains("ERROR:  42501"), "{}", err(&o));
    let o = psql_verbose(&s, &reader, "SELECT no_such_function()");
    assert!(err(&o).contains("ERROR:  42501"), "{}", err(&o));
    assert_eq!(direct(&s, "SELECT count(*) FROM customers"), "2\n");

    // Stable and immutable functions, and the harmless volatile built-ins, stay reads.
    let o = psql(
        &s,
        "orders",
        &reader,
        "SELECT stable_count(), now() IS NOT NULL, random() < 2, lower('X'), pg_catalog.upper('y')",
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "2|t|t|x|Y\n");
    // psql's own catalog queries are reads.
    let o = psql(&s, "orders", &reader, "\\d customers");
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("email"), "{}", out(&o));

    // Changed directly on the target: seen once the cached answer expires (3 s here).
    direct(
        &s,
        "CREATE OR REPLACE FUNCTION stable_count() RETURNS bigint LANGUAGE sql VOLATILE
           AS 'SELECT count(*) FROM customers'",
    );
    let refused = s.gw.wait_for(Duration::from_secs(15), || {
        err(&psql_verbose(&s, &reader, "SELECT stable_count()")).contains("ERROR:  42501")
    });
    assert!(refused, "{}", s.gw.log());

    // Changed through the gateway: the target's answers are dropped at once.
    let o = psql(
        &s,
        "orders",
        &dba,
        "CREATE OR REPLACE FUNCTION stable_count() RETURNS bigint LANGUAGE sql STABLE
           AS 'SELECT count(*) FROM customers'",
    );
    assert!(o.status.success(), "{}", err(&o));
    let o = psql(&s, "orders", &reader, "SELECT stable_count()");
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "2\n");

    // The session that changed a function (perhaps in a transaction the catalog cannot see
    // yet) and a string that changes one decide later calls as writes: the audit says so.
    let replace = "CREATE OR REPLACE FUNCTION stable_count() RETURNS bigint LANGUAGE sql STABLE
                   AS 'SELECT count(*) FROM customers'";
    let o = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} dbname=orders user=someone sslmode=disable connect_timeout=10",
            s.port
        ))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-c", "SELECT stable_count() AS before_change", "-c", replace])
        .args(["-c", "SELECT stable_count() AS after_change"])
        .args(["-c", &format!("{replace}; SELECT stable_count() AS same_string")])
        .env("PGPASSWORD", &dba)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let segment = std::fs::read_to_string(s.gw.audit_dir().join("segment-000001.jsonl")).unwrap();
    let actions = |marker: &str| -> Vec<String> {
        segment
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r.to_string().contains(marker))
            .filter_map(|r| find_key(&r, "action").map(str::to_owned))
            .collect()
    };
    assert_eq!(actions("AS before_change"), ["Postgres::read"], "{segment}");
    assert_eq!(actions("AS after_change"), ["Postgres::write"], "{segment}");
    assert_eq!(actions("AS same_string"), ["Postgres::write"], "{segment}");
}

/// The first string value under `key` anywhere in `v`.
fn find_key<'v>(v: &'v serde_json::Value, key: &str) -> Option<&'v str> {
    match v {
        serde_json::Value::Object(map) => map
            .get(key)
            .and_then(serde_json::Value::as_str)
            .or_else(|| map.values().find_map(|x| find_key(x, key))),
        serde_json::Value::Array(items) => items.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}
