use gatehouse_mask::MaskConfig;

use super::*;
use crate::classify::classify;

fn rules() -> ColumnRules {
    MaskConfig {
        columns: [
            ("customers.full_name", "secret"),
            ("ssn_last4", "ssn"),
            ("billing.cards.holder", "card"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    }
    .rules()
    .unwrap()
}

/// Each result column's trace as text: its classes, then `rows(t)` per whole row; `-` for a
/// column masked by name and content alone.
fn traced(sql: &str, names: &[&str]) -> Vec<String> {
    let statements = classify(sql).unwrap();
    let statement = statements.last().unwrap();
    statement
        .provenance
        .trace_columns(names, &rules())
        .into_iter()
        .map(|t| match t {
            None => "-".to_owned(),
            Some(t) => {
                let mut parts: Vec<String> = t
                    .classes
                    .union(t.row_classes)
                    .iter()
                    .map(|c| c.as_str().to_owned())
                    .collect();
                parts.extend(t.rows.iter().map(|r| format!("rows({})", r.name)));
                parts.join(",")
            }
        })
        .collect()
}

#[test]
fn plain_columns_keep_masking_by_name() {
    assert_eq!(traced("SELECT id, name FROM customers", &["id", "name"]), ["-", "-"]);
    // A plain column whose name hints a class is traced to itself: the same class.
    assert_eq!(traced("SELECT email FROM customers", &["email"]), ["email"]);
    assert_eq!(
        traced("SELECT abalance FROM pgbench_accounts WHERE aid = 1", &["abalance"]),
        ["-"]
    );
}

#[test]
fn derived_columns_carry_their_sources_classes() {
    for sql in [
        "SELECT email AS x FROM customers",
        "SELECT upper(email) FROM customers",
        "SELECT email || '' FROM customers",
        "SELECT reverse(email) FROM customers",
        "SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM customers",
        "SELECT encode(email::bytea, 'base64') AS b FROM customers",
        "SELECT c.email AS x FROM customers c",
        "SELECT (c).email AS x FROM customers c",
        "SELECT public.customers.email AS x FROM public.customers",
        "SELECT CASE WHEN email LIKE 'a%' THEN 'a' ELSE 'b' END AS x FROM customers",
        "SELECT coalesce(NULL, lower(email)) x FROM customers",
        "SELECT string_agg(email, ',') x FROM customers",
        "SELECT length(email) AS x FROM customers",
        "SELECT (SELECT email FROM customers LIMIT 1) AS x",
        "SELECT (SELECT max(c2.email) FROM customers c2 WHERE c2.id = c.id) AS x FROM customers c",
        "SELECT ARRAY(SELECT email FROM customers) AS x",
    ] {
        assert_eq!(traced(sql, &["x"]), ["email"], "{sql}");
    }
    assert_eq!(traced("SELECT reverse(password) AS p FROM users", &["p"]), ["secret"]);
}

#[test]
fn rules_name_columns_by_table() {
    assert_eq!(traced("SELECT full_name AS n FROM customers", &["n"]), ["secret"]);
    assert_eq!(
        traced("SELECT upper(c.full_name) FROM customers c", &["upper"]),
        ["secret"]
    );
    // The same column name in another table is not covered by a `table.column` rule.
    assert_eq!(traced("SELECT full_name AS n FROM orders", &["n"]), ["-"]);
    // A bare-name rule applies in every table.
    assert_eq!(traced("SELECT ssn_last4 || '' AS s FROM people", &["s"]), ["ssn"]);
    assert_eq!(traced("SELECT holder AS h FROM billing.cards", &["h"]), ["card"]);
    assert_eq!(traced("SELECT holder AS h FROM cards", &["h"]), ["card"]);
    assert_eq!(traced("SELECT holder AS h FROM other.cards", &["h"]), ["-"]);
    // Several sources: all of their classes (the most sensitive the session masks wins).
    assert_eq!(
        traced("SELECT full_name || email AS x FROM customers", &["x"]),
        ["email,secret"]
    );
    // An unqualified column with two tables in FROM may come from either.
    assert_eq!(
        traced("SELECT full_name AS n FROM orders, customers", &["n"]),
        ["secret"]
    );
}

#[test]
fn subqueries_ctes_and_set_operations_pass_classes_through() {
    for sql in [
        "SELECT s.x FROM (SELECT email AS x FROM customers) s",
        "SELECT x FROM (SELECT email AS x FROM customers) s",
        "SELECT y AS x FROM (SELECT email FROM customers) s(y)",
        "WITH e AS (SELECT email AS v FROM customers) SELECT upper(v) AS x FROM e",
        "WITH e(v) AS (SELECT email FROM customers) SELECT v AS x FROM e",
        "WITH a AS (SELECT email FROM customers), b AS (SELECT email AS w FROM a) SELECT w AS x FROM b",
        "SELECT id AS x FROM customers UNION SELECT email FROM customers",
        "SELECT 'a' AS x INTERSECT SELECT email FROM customers EXCEPT SELECT 'b'",
        "SELECT x FROM (VALUES ('a'), ((SELECT email FROM customers LIMIT 1))) v(x)",
        "SELECT t.x FROM customers c, LATERAL (SELECT c.email AS x) t",
        "SELECT x FROM unnest(ARRAY(SELECT email FROM customers)) AS u(x)",
        "SELECT u AS x FROM unnest(ARRAY(SELECT email FROM customers)) u",
    ] {
        assert_eq!(traced(sql, &["x"]), ["email"], "{sql}");
    }
    // Columns of a subquery that do not read email stay clean.
    assert_eq!(
        traced(
            "SELECT s.id, s.x FROM (SELECT id, lower(email) AS x FROM customers) s",
            &["id", "x"]
        ),
        ["-", "email"]
    );
    assert_eq!(
        traced(
            "WITH RECURSIVE r(x, n) AS (SELECT email, 1 FROM customers UNION ALL SELECT x || '', n + 1 FROM r WHERE n < 3) SELECT n, x FROM r",
            &["n", "x"]
        ),
        ["-", "email"]
    );
}

#[test]
fn stars_expand_to_named_columns() {
    // `*` keeps the real names: hints apply by name (no trace needed), rules by name and table.
    assert_eq!(
        traced("SELECT * FROM customers", &["id", "email", "full_name"]),
        ["-", "-", "secret"]
    );
    assert_eq!(
        traced(
            "SELECT c.*, upper(c.email) AS u FROM customers c",
            &["id", "full_name", "u"]
        ),
        ["-", "secret", "email"]
    );
    assert_eq!(
        traced("SELECT upper(email) AS u, * FROM customers", &["u", "id", "full_name"]),
        ["email", "-", "secret"]
    );
    // A star over a subquery expands to the subquery's own outputs.
    assert_eq!(
        traced("SELECT * FROM (SELECT id, email AS x FROM customers) s", &["id", "x"]),
        ["-", "email"]
    );
    // Several tables: a `table.column` rule applies to a column of that name from any of them.
    assert_eq!(
        traced(
            "SELECT * FROM orders o JOIN customers c ON c.id = o.cid",
            &["id", "full_name"]
        ),
        ["-", "secret"]
    );
}

#[test]
fn unmappable_results_fall_back_to_everything() {
    // Two stars with an expression between them: positions are unknown.
    assert_eq!(
        traced(
            "SELECT a.*, upper(c.email) AS u, c.* FROM accounts a, customers c",
            &["id", "u", "id", "name"]
        ),
        ["email,secret,rows(accounts),rows(customers)"; 4]
    );
    // A column count that does not match the target list.
    assert_eq!(
        traced("SELECT upper(email) FROM customers", &["a", "b"]),
        ["email", "email"]
    );
    // Branches of different shapes.
    assert_eq!(
        traced("SELECT email AS x FROM customers UNION SELECT * FROM other", &["x"]),
        ["email,rows(other)"]
    );
}

#[test]
fn whole_rows_are_traced_to_their_tables() {
    assert_eq!(
        traced("SELECT row_to_json(c) AS j FROM customers c", &["j"]),
        ["secret,rows(customers)"]
    );
    assert_eq!(
        traced("SELECT to_jsonb(c.*) AS j FROM orders c", &["j"]),
        ["rows(orders)"]
    );
    assert_eq!(traced("SELECT c::text AS t FROM orders c", &["t"]), ["rows(orders)"]);
    // A whole row of a subquery is every column the subquery reads.
    assert_eq!(
        traced(
            "SELECT row_to_json(s) AS j FROM (SELECT id, email FROM customers) s",
            &["j"]
        ),
        ["email"]
    );
    // `(c).*` spreads the row into named columns.
    assert_eq!(
        traced("SELECT (c).* FROM customers c", &["id", "full_name"]),
        ["-", "secret"]
    );
}

#[test]
fn filters_null_tests_and_counts_read_no_values() {
    assert_eq!(
        traced("SELECT id FROM customers WHERE email LIKE 'a%' ORDER BY email", &["id"]),
        ["-"]
    );
    assert_eq!(
        traced(
            "SELECT count(email) AS n, email IS NULL AS z, EXISTS (SELECT 1 FROM customers WHERE email = 'x') AS e FROM customers",
            &["n", "z", "e"]
        ),
        ["-", "-", "-"]
    );
}

#[test]
fn copy_and_returning_are_traced() {
    assert_eq!(
        traced("COPY (SELECT id, reverse(email) FROM customers) TO STDOUT", &["", ""]),
        ["-", "email"]
    );
    assert_eq!(
        traced("COPY customers (id, full_name, email) TO STDOUT", &["", "", ""]),
        ["-", "secret", "email"]
    );
    // Without a column list the fields have no names: a table with rules is masked whole.
    assert_eq!(traced("COPY customers TO STDOUT", &["", ""]), ["secret", "secret"]);
    assert_eq!(traced("COPY orders TO STDOUT", &["", ""]), ["-", "-"]);
    assert_eq!(traced("COPY customers FROM STDIN", &[""]), ["-"]);
    assert_eq!(
        traced(
            "DELETE FROM customers c WHERE id = 1 RETURNING id, upper(c.email) AS x",
            &["id", "x"]
        ),
        ["-", "email"]
    );
    assert_eq!(
        traced(
            "UPDATE customers SET name = 'x' WHERE id = 1 RETURNING *",
            &["id", "full_name"]
        ),
        ["-", "secret"]
    );
    assert_eq!(
        traced(
            "WITH d AS (DELETE FROM customers WHERE id = 1 RETURNING email) SELECT reverse(email) AS x FROM d",
            &["x"]
        ),
        ["email"]
    );
}

#[test]
fn cursors_and_prepared_statements_name_their_rows() {
    let declare = classify("DECLARE cur CURSOR FOR SELECT reverse(email) FROM customers").unwrap();
    let Provenance::Defines { kind, name, rows } = &*declare[0].provenance else {
        panic!("{:?}", declare[0].provenance);
    };
    assert_eq!((*kind, name.as_str()), (Named::Cursor, "cur"));
    assert_eq!(
        rows.trace_columns(&["reverse"], &rules())[0].classes.most_sensitive(),
        Some(gatehouse_mask::DataClass::Email)
    );
    let fetch = classify("FETCH 10 FROM Cur").unwrap();
    assert_eq!(
        *fetch[0].provenance,
        Provenance::Uses {
            kind: Named::Cursor,
            name: "cur".to_owned()
        }
    );
    let prepare = classify("PREPARE p(int) AS SELECT email AS x FROM customers WHERE id = $1").unwrap();
    assert!(matches!(&*prepare[0].provenance, Provenance::Defines { kind: Named::Prepared, name, .. } if name == "p"));
    let execute = classify("EXECUTE p(1)").unwrap();
    assert!(matches!(&*execute[0].provenance, Provenance::Uses { kind: Named::Prepared, name } if name == "p"));
}

#[test]
fn untraced_statements_mask_by_name_alone() {
    for sql in ["SHOW search_path", "EXPLAIN SELECT email FROM customers"] {
        let statement = classify(sql).unwrap().remove(0);
        assert_eq!(*statement.provenance, Provenance::Untraced, "{sql}");
    }
}

#[test]
fn statements_reading_nothing_classified_are_not_traced_without_rules() {
    let none = ColumnRules::none();
    let quiet = classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1;").unwrap();
    assert!(quiet[0].provenance.traces_nothing(none));
    assert!(
        !quiet[0].provenance.traces_nothing(&rules()),
        "rules may name any column"
    );
    for sql in [
        "SELECT upper(email) FROM customers",
        "SELECT * FROM customers",
        "SELECT row_to_json(c) FROM customers c",
    ] {
        let statement = classify(sql).unwrap().remove(0);
        assert!(!statement.provenance.traces_nothing(none), "{sql}");
    }
    let upper = classify("SELECT upper(email) AS x FROM customers").unwrap().remove(0);
    assert!(upper.provenance.trace_columns(&["x"], none)[0].is_some());
}

#[test]
fn odd_statements_trace_without_panicking() {
    for sql in [
        "SELECT",
        "SELECT FROM customers",
        "VALUES (1, 'a'), (2, 'b')",
        "TABLE customers",
        "WITH x AS (SELECT email FROM customers) TABLE x",
        "SELECT * FROM a NATURAL JOIN b",
        "SELECT * FROM a JOIN b USING (id), (SELECT email FROM customers) s",
        "SELECT * FROM (a JOIN b ON true) AS j",
        "SELECT j.email FROM (a JOIN customers ON true) AS j",
        "SELECT a.b.c.d.e FROM t",
        "SELECT *, *, 1 FROM t",
        "SELECT ROW(c.*) FROM customers c",
        "SELECT (x).* FROM (SELECT ROW(1, 2) AS x) s",
        "SELECT * FROM ROWS FROM (generate_series(1, 2), unnest(ARRAY['a'])) AS r(a, b)",
        "SELECT * FROM customers TABLESAMPLE SYSTEM (10)",
        "SELECT * FROM XMLTABLE('/r' PASSING (SELECT email::xml FROM customers) COLUMNS a text)",
        "SELECT $1, $2::text",
        "SELECT email, count(*) FROM customers GROUP BY GROUPING SETS ((email), ())",
        "SELECT row_number() OVER (PARTITION BY email ORDER BY id) FROM customers",
        "COPY (VALUES (1)) TO STDOUT",
        "COPY (DELETE FROM customers WHERE id = 1 RETURNING email) TO STDOUT",
        "MERGE INTO customers c USING src s ON c.id = s.id WHEN MATCHED THEN DELETE RETURNING c.email",
        "INSERT INTO customers SELECT * FROM customers RETURNING *",
        "SELECT * FROM customers c, LATERAL (SELECT c.*) l",
        "WITH RECURSIVE r AS (SELECT 1 AS n UNION SELECT n + 1 FROM r) SELECT * FROM r",
        "SELECT * FROM (SELECT 1 UNION SELECT * FROM t) s(a, b, c)",
        "DECLARE c CURSOR FOR VALUES (1)",
        "SELECT 1; SELECT 2",
    ] {
        for statement in classify(sql).unwrap() {
            for n in [0, 1, 3, 10] {
                let names: Vec<&str> = ["id", "email", ""].into_iter().cycle().take(n).collect();
                let traces = statement.provenance.trace_columns(&names, &rules());
                assert_eq!(traces.len(), n, "{sql}");
            }
        }
    }
    // A join alias hides its tables' names but not their columns' hints or rules.
    assert_eq!(
        traced(
            "SELECT j.full_name AS n FROM (orders JOIN customers ON true) AS j",
            &["n"]
        ),
        ["secret"]
    );
}
