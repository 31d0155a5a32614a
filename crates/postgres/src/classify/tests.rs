//! One test per classification rule, hostile forms included.

use super::*;
use StatementKind::*;

/// Every rule holds through the per-connection cache too: a statement classifies the same
/// whether or not one of its shape (same text, other values) was seen before.
fn one(sql: &str) -> Statement {
    let mut all = classify(sql).unwrap();
    assert_eq!(all.len(), 1, "{sql}: {all:?}");
    let mut cache = ClassifyCache::default();
    for _ in 0..2 {
        assert_eq!(cache.classify(sql).unwrap(), all, "{sql} through the cache");
    }
    all.remove(0)
}

fn kind(sql: &str) -> StatementKind {
    one(sql).kind
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn plain_select_is_read_with_tables_and_functions() {
    let s = one("SELECT lower(email) FROM public.customers c JOIN Orders o ON o.cid = c.id");
    assert_eq!(s.kind, Read);
    assert_eq!(s.tag, "SELECT");
    assert_eq!(s.tables, set(&["public.customers", "orders"]));
    assert_eq!(s.functions, set(&["lower"]));
    assert!(s.has_where);
}

#[test]
fn quoted_identifiers_keep_case_unquoted_fold() {
    let s = one(r#"SELECT * FROM "MySchema"."Mixed" , UPPER_T"#);
    assert_eq!(s.tables, set(&["MySchema.Mixed", "upper_t"]));
}

#[test]
fn unicode_escaped_identifier_is_decoded() {
    let s = one(r#"DELETE FROM U&"\0074able" WHERE id = 1"#);
    assert_eq!(s.kind, Write);
    assert_eq!(s.tables, set(&["table"]));
}

#[test]
fn dml_statements_are_writes() {
    assert_eq!(kind("INSERT INTO t VALUES (1)"), Write);
    assert_eq!(kind("UPDATE t SET a = 1 WHERE id = 2"), Write);
    assert_eq!(kind("DELETE FROM t WHERE id = 2"), Write);
    assert_eq!(
        kind("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE"),
        Write
    );
    assert_eq!(one("INSERT INTO t VALUES (1)").tag, "INSERT");
}

#[test]
fn update_and_delete_without_where_are_flagged() {
    assert!(!one("DELETE FROM t").has_where);
    assert!(!one("UPDATE t SET a = 1").has_where);
    assert!(one("DELETE FROM t WHERE true").has_where);
    assert!(one("INSERT INTO t SELECT * FROM s").has_where);
    assert!(!one("TRUNCATE t").has_where);
}

#[test]
fn write_hidden_in_cte_is_write_and_cte_name_is_not_a_table() {
    let s = one("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x");
    assert_eq!(s.kind, Write);
    assert_eq!(s.tables, set(&["t"]));
    assert!(!s.has_where);
    let nested = one("SELECT * FROM (WITH y AS (UPDATE u SET a=1 WHERE b RETURNING a) SELECT a FROM y) z");
    assert_eq!(nested.kind, Write);
    assert!(nested.has_where);
}

#[test]
fn select_for_update_and_share_are_writes() {
    assert_eq!(kind("SELECT * FROM t WHERE id = 1 FOR UPDATE"), Write);
    assert_eq!(kind("SELECT * FROM t FOR SHARE SKIP LOCKED"), Write);
    assert_eq!(kind("SELECT * FROM (SELECT * FROM t FOR UPDATE) s"), Write);
}

#[test]
fn select_into_is_ddl() {
    let s = one("SELECT * INTO newtable FROM t");
    assert_eq!(s.kind, Ddl);
    assert_eq!(s.tag, "SELECT INTO");
    assert!(s.tables.contains("newtable") && s.tables.contains("t"));
}

#[test]
fn create_table_as_is_ddl() {
    assert_eq!(kind("CREATE TABLE c AS SELECT * FROM t"), Ddl);
    assert_eq!(one("CREATE TABLE c AS SELECT 1").tag, "CREATE TABLE AS");
    assert_eq!(
        one("CREATE MATERIALIZED VIEW mv AS SELECT 1").tag,
        "CREATE MATERIALIZED VIEW"
    );
}

#[test]
fn side_effect_functions_are_admin() {
    for sql in [
        "SELECT pg_terminate_backend(123)",
        "SELECT pg_cancel_backend(1)",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT lo_import('/etc/passwd')",
        "SELECT lo_export(1, '/tmp/x')",
        "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
        "SELECT dblink_exec('host=x', 'drop table t')",
        "SELECT set_config('role', 'postgres', false)",
        "SELECT pg_reload_conf()",
        "SELECT pg_catalog.pg_read_file('x')",
        "SELECT ext.dblink_exec('c', 'q')",
        "SELECT 1 WHERE EXISTS (SELECT pg_terminate_backend(pid) FROM pg_stat_activity)",
        "SELECT query_to_xml('delete from t', true, false, '')",
    ] {
        assert_eq!(kind(sql), Admin, "{sql}");
    }
    assert!(
        one("SELECT pg_terminate_backend(1)")
            .functions
            .contains("pg_terminate_backend")
    );
}

#[test]
fn user_schema_function_named_like_builtin_is_not_escalated_by_name() {
    let s = one("SELECT myschema.pg_read_file('x')");
    assert_eq!(s.kind, Read);
    assert_eq!(s.functions, set(&["myschema.pg_read_file"]));
}

#[test]
fn sequence_functions_are_writes() {
    assert_eq!(kind("SELECT nextval('s')"), Write);
    assert_eq!(kind("SELECT setval('s', 10)"), Write);
}

#[test]
fn copy_directions() {
    assert_eq!(kind("COPY t TO STDOUT"), Read);
    assert_eq!(kind("COPY (SELECT * FROM t) TO STDOUT WITH CSV"), Read);
    assert_eq!(kind("COPY t FROM STDIN"), Write);
    assert_eq!(kind("COPY t TO PROGRAM 'curl evil'"), Admin);
    assert_eq!(kind("COPY t FROM PROGRAM 'id'"), Admin);
    assert_eq!(kind("COPY t TO '/tmp/out'"), Admin);
    assert_eq!(kind("COPY t FROM '/etc/passwd'"), Admin);
    assert_eq!(one("COPY t TO STDOUT").tables, set(&["t"]));
}

#[test]
fn binary_copy_out_cannot_be_masked_so_it_is_admin() {
    assert_eq!(kind("COPY t TO STDOUT (FORMAT binary)"), Admin);
    assert_eq!(kind("COPY t TO STDOUT (FORMAT 'BINARY')"), Admin);
    assert_eq!(kind("COPY t TO STDOUT BINARY"), Admin);
    assert_eq!(kind("COPY t TO STDOUT (FORMAT csv)"), Read);
    assert_eq!(kind("COPY t FROM STDIN (FORMAT binary)"), Write);
}

#[test]
fn do_and_call_are_admin() {
    assert_eq!(kind("DO $$BEGIN DELETE FROM t; END$$"), Admin);
    assert_eq!(kind("CALL my_proc(1)"), Admin);
    assert_eq!(one("DO 'begin end'").tag, "DO");
}

#[test]
fn privilege_and_server_statements_are_admin() {
    for (sql, tag) in [
        ("GRANT SELECT ON t TO bob", "GRANT"),
        ("REVOKE ALL ON t FROM bob", "REVOKE"),
        ("GRANT admin TO bob", "GRANT"),
        ("ALTER SYSTEM SET work_mem = '1GB'", "ALTER SYSTEM"),
        ("CREATE ROLE evil SUPERUSER", "CREATE ROLE"),
        ("CREATE USER evil", "CREATE ROLE"),
        ("ALTER ROLE bob SUPERUSER", "ALTER ROLE"),
        ("ALTER USER bob PASSWORD 'x'", "ALTER ROLE"),
        ("DROP ROLE bob", "DROP ROLE"),
        ("LOAD 'evil.so'", "LOAD"),
        ("CREATE EXTENSION dblink", "CREATE EXTENSION"),
        ("VACUUM t", "VACUUM"),
        ("CHECKPOINT", "CHECKPOINT"),
        ("PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION"),
    ] {
        let s = one(sql);
        assert_eq!((s.kind, s.tag.as_str()), (Admin, tag), "{sql}");
    }
}

#[test]
fn ddl_statements() {
    for (sql, tag) in [
        ("CREATE TABLE t (id int)", "CREATE TABLE"),
        ("ALTER TABLE t ADD COLUMN x int", "ALTER TABLE"),
        ("DROP TABLE t", "DROP TABLE"),
        ("DROP INDEX i", "DROP INDEX"),
        ("CREATE INDEX ON t (x)", "CREATE INDEX"),
        ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'",
            "CREATE FUNCTION",
        ),
        ("COMMENT ON TABLE t IS 'x'", "COMMENT"),
    ] {
        let s = one(sql);
        assert_eq!((s.kind, s.tag.as_str()), (Ddl, tag), "{sql}");
    }
    assert_eq!(one("DROP TABLE a.t, \"U\"").tables, set(&["a.t", "U"]));
    assert_eq!(one("DROP INDEX i").tables, set(&["i"]));
    assert_eq!(one("DROP FUNCTION f(int)").tables, BTreeSet::new());
}

#[test]
fn explain_analyze_runs_its_statement_plain_explain_does_not() {
    assert_eq!(kind("EXPLAIN ANALYZE DELETE FROM t"), Write);
    assert_eq!(kind("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1"), Write);
    assert_eq!(kind("EXPLAIN (ANALYZE true) INSERT INTO t VALUES (1)"), Write);
    assert_eq!(kind("EXPLAIN ANALYZE SELECT pg_terminate_backend(1)"), Admin);
    assert_eq!(kind("EXPLAIN DELETE FROM t"), Read);
    assert_eq!(kind("EXPLAIN (ANALYZE false) DELETE FROM t"), Read);
    assert_eq!(kind("EXPLAIN ANALYZE SELECT * FROM t"), Read);
    assert_eq!(one("EXPLAIN DELETE FROM t").tag, "EXPLAIN");
}

#[test]
fn prepare_takes_its_query_kind_execute_is_admin() {
    let p = one("PREPARE d (int) AS DELETE FROM t WHERE id = $1");
    assert_eq!((p.kind, p.tag.as_str()), (Write, "PREPARE"));
    assert_eq!(kind("PREPARE r AS SELECT 1"), Read);
    let e = one("EXECUTE d(1)");
    assert_eq!((e.kind, e.tag.as_str()), (Admin, "EXECUTE"));
    assert_eq!(kind("DEALLOCATE d"), Session);
}

#[test]
fn transaction_control_is_its_own_kind() {
    for (sql, tag) in [
        ("BEGIN", "BEGIN"),
        ("BEGIN READ ONLY", "BEGIN"),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", "START TRANSACTION"),
        ("COMMIT", "COMMIT"),
        ("END", "COMMIT"),
        ("ROLLBACK", "ROLLBACK"),
        ("SAVEPOINT a", "SAVEPOINT"),
        ("RELEASE SAVEPOINT a", "RELEASE"),
        ("ROLLBACK TO SAVEPOINT a", "ROLLBACK"),
    ] {
        let s = one(sql);
        assert_eq!((s.kind, s.tag.as_str()), (Transaction, tag), "{sql}");
    }
}

#[test]
fn harmless_session_statements() {
    for (sql, tag) in [
        ("SET search_path = app, public", "SET"),
        ("SET LOCAL statement_timeout = '5s'", "SET"),
        ("SHOW search_path", "SHOW"),
        ("RESET search_path", "RESET"),
        ("RESET ALL", "RESET"),
        ("DISCARD ALL", "DISCARD"),
        ("LISTEN ch", "LISTEN"),
    ] {
        let s = one(sql);
        assert_eq!((s.kind, s.tag.as_str()), (Session, tag), "{sql}");
    }
}

#[test]
fn identity_and_read_only_settings_are_admin() {
    assert_eq!(kind("SET ROLE postgres"), Admin);
    assert_eq!(kind("SET SESSION AUTHORIZATION postgres"), Admin);
    assert_eq!(kind("SET default_transaction_read_only = off"), Admin);
    assert_eq!(kind("RESET ROLE"), Admin);
    assert_eq!(kind("SET session_replication_role = replica"), Admin);
}

#[test]
fn lock_and_notify_are_writes() {
    assert_eq!(one("LOCK TABLE t IN ACCESS EXCLUSIVE MODE").kind, Write);
    assert_eq!(one("NOTIFY ch, 'x'").kind, Write);
}

#[test]
fn multi_statement_string_each_classified_with_own_text() {
    let all = classify("SELECT 1; /* c */ DELETE FROM t WHERE id = 1;\nBEGIN READ ONLY; COMMIT").unwrap();
    let kinds: Vec<_> = all.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, vec![Read, Write, Transaction, Transaction]);
    assert_eq!(all[0].text, "SELECT 1");
    assert!(all[1].text.ends_with("DELETE FROM t WHERE id = 1"), "{}", all[1].text);
    assert_eq!(all[3].text, "COMMIT");
}

#[test]
fn comments_do_not_hide_or_invent_statements() {
    let all = classify("-- DELETE FROM t;\nSELECT 1 /* ; DROP TABLE t; */").unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].kind, Read);
    assert!(classify("-- only a comment").unwrap().is_empty());
    assert!(classify("").unwrap().is_empty());
}

#[test]
fn string_literals_and_dollar_quotes_are_not_sql() {
    let s = one("SELECT 'DELETE FROM t; DROP TABLE u', $q$ ; UPDATE t SET a=1 $q$, E'\\'; DROP TABLE v; --'");
    assert_eq!(s.kind, Read);
    assert!(s.tables.is_empty());
}

#[test]
fn dollar_quoted_statement_after_string_is_seen() {
    let all = classify("SELECT $a$ x $a$; DROP TABLE t").unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].kind, Ddl);
}

#[test]
fn parse_error_carries_postgres_message() {
    let err = classify("SELEC 1").unwrap_err();
    assert!(err.to_string().contains("syntax error at or near \"SELEC\""), "{err}");
    let err = classify("SELECT 1; DELETE FROM").unwrap_err();
    assert!(matches!(err, ClassifyError::Syntax(_)));
}

#[test]
fn nul_byte_is_an_error_not_a_panic() {
    assert!(classify("SELECT 1\0; DROP TABLE t").is_err());
}

#[test]
fn declare_and_fetch() {
    assert_eq!(kind("DECLARE c CURSOR FOR SELECT * FROM t"), Read);
    assert_eq!(kind("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE"), Write);
    assert_eq!(one("FETCH 10 FROM c").tag, "FETCH");
}
