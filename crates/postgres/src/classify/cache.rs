//! A per-connection cache of classifications, keyed by a statement's *shape*: its text with
//! every number and plain string literal replaced by a marker. Programs send the same few
//! statements with different values (`... WHERE aid = 48312`), and parsing each one again
//! costs far more than relaying it.
//!
//! The shape must never let two statements that classify differently share an entry, so it
//! is deliberately narrow:
//! - only a single statement of plain ASCII made of identifiers, quoted identifiers,
//!   numbers, standard `'...'` strings, `$n` parameters, operators and whitespace gets a
//!   shape; a comment, a dollar quote, an `E''`/`U&''`/`B''`/`X''` literal, a backslash
//!   (the meaning of `'\''` depends on a session setting), a control character or a second
//!   statement means no shape, and the statement is classified from scratch;
//! - only `SELECT`, `INSERT`, `UPDATE` and `DELETE` results are kept: for those, what the
//!   classification reports (kind, tables, functions, WHERE) comes from identifiers and
//!   structure, never from a literal's value. Statements whose meaning can hang on a value
//!   (`EXPLAIN (ANALYZE 'off')`, `COPY ... (FORMAT 'binary')`) are never cached.

use std::collections::HashMap;

use super::{ClassifyError, Statement, classify};

/// Entries kept per connection; the cache is emptied when it is full.
const CAPACITY: usize = 512;

/// Longest statement worth a shape: longer ones are rarely repeated.
const MAX_SHAPED: usize = 8 * 1024;

/// Tags whose classification never depends on a literal's value.
const CACHEABLE_TAGS: [&str; 4] = ["SELECT", "INSERT", "UPDATE", "DELETE"];

/// Classifications of one connection's recent statement shapes.
#[derive(Debug, Default)]
pub struct ClassifyCache {
    entries: HashMap<String, Statement>,
    hits: u64,
}

impl ClassifyCache {
    /// Like [`classify`], answered from the cache when a statement of the same shape was
    /// classified before.
    pub fn classify(&mut self, sql: &str) -> Result<Vec<Statement>, ClassifyError> {
        let Some(key) = shape(sql) else {
            return classify(sql);
        };
        if let Some(known) = self.entries.get(&key) {
            self.hits += 1;
            let mut statement = known.clone();
            statement.text = statement_text(sql).to_owned();
            return Ok(vec![statement]);
        }
        let statements = classify(sql)?;
        if let [statement] = statements.as_slice()
            && CACHEABLE_TAGS.contains(&statement.tag.as_str())
            && statement.text == statement_text(sql)
        {
            if self.entries.len() >= CAPACITY {
                self.entries.clear();
            }
            self.entries.insert(key, statement.clone());
        }
        Ok(statements)
    }

    /// Statements answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits
    }
}

/// The text a single statement's classification carries (see `classify::statement_text`):
/// PostgreSQL's statement length stops before a terminating semicolon.
fn statement_text(sql: &str) -> &str {
    let sql = sql.trim();
    sql.strip_suffix(';').map_or(sql, str::trim_end)
}

/// The statement with its literals replaced by markers, or `None` when the text uses
/// anything beyond the plain subset described in the module documentation.
pub fn shape(sql: &str) -> Option<String> {
    if sql.len() > MAX_SHAPED {
        return None;
    }
    let bytes = sql.as_bytes();
    let mut key = String::with_capacity(sql.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {
                key.push(char::from(b));
                i += 1;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'$') {
                    i += 1;
                }
                // A prefixed string (E'', B'', X'', N'', U&'') or an identifier glued to a quote.
                if matches!(bytes.get(i), Some(b'\'' | b'"' | b'&')) {
                    return None;
                }
                key.push_str(&sql[start..i]);
            }
            b'0'..=b'9' => {
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                if bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                // 1e5, 0x1F, 1_000, 1.e3, 12abc: forms not worth telling apart here.
                if bytes
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.' || *c == b'$')
                {
                    return None;
                }
                key.push_str("\u{1}n");
            }
            b'\'' => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return None,
                        Some(b'\\') => return None,
                        Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(c) if *c < 0x20 && !matches!(c, b'\t' | b'\n' | b'\r') => return None,
                        Some(c) if !c.is_ascii() => return None,
                        Some(_) => i += 1,
                    }
                }
                // Adjacent string constants continue each other only across a newline;
                // a string glued to an identifier or another quote is unusual: no shape.
                if bytes
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'\'')
                {
                    return None;
                }
                key.push_str("\u{1}s");
            }
            b'"' => {
                let start = i;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return None,
                        Some(b'"') if bytes.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(c) if *c < 0x20 || !c.is_ascii() => return None,
                        Some(_) => i += 1,
                    }
                }
                key.push_str(&sql[start..i]);
            }
            b'$' => {
                // $1, $2, ...: parameters of the extended protocol. Anything else: a dollar quote.
                let start = i;
                i += 1;
                if !bytes.get(i).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                if bytes
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'$')
                {
                    return None;
                }
                key.push_str(&sql[start..i]);
            }
            b';' => {
                // Only a final semicolon: one statement per shape.
                if !sql[i + 1..].trim().is_empty() {
                    return None;
                }
                key.push(';');
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => return None,
            // `.5`: a number this shape does not take apart.
            b'.' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => return None,
            b'/' if bytes.get(i + 1) == Some(&b'*') => return None,
            b'(' | b')' | b',' | b'.' | b'=' | b'<' | b'>' | b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'|' | b'!'
            | b'~' | b':' | b'[' | b']' | b'@' | b'#' | b'&' | b'?' => {
                key.push(char::from(b));
                i += 1;
            }
            _ => return None,
        }
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_share_a_shape_and_names_do_not() {
        let a = shape("SELECT abalance FROM pgbench_accounts WHERE aid = 48312;").unwrap();
        let b = shape("SELECT abalance FROM pgbench_accounts WHERE aid = 7;").unwrap();
        assert_eq!(a, b);
        let strings = shape("SELECT * FROM t WHERE name = 'ann' AND x = 1.5").unwrap();
        assert_eq!(
            strings,
            shape("SELECT * FROM t WHERE name = 'o''brien' AND x = 22.25").unwrap()
        );
        // Different tables, columns, operators or literal kinds never share.
        assert_ne!(
            shape("SELECT * FROM orders_2024_01 WHERE id = 1"),
            shape("SELECT * FROM orders_2024_02 WHERE id = 1")
        );
        assert_ne!(
            shape("SELECT * FROM t WHERE id = 1"),
            shape("SELECT * FROM t WHERE id = '1'")
        );
        assert_ne!(shape("SELECT * FROM \"T\""), shape("SELECT * FROM \"t\""));
        assert_eq!(shape("SELECT $1::int"), Some("SELECT $1::int".to_owned()));
    }

    #[test]
    fn anything_beyond_the_plain_subset_has_no_shape() {
        for sql in [
            "SELECT 1; DELETE FROM t",
            "SELECT 1 -- comment",
            "SELECT /* c */ 1",
            "SELECT $$x$$",
            "SELECT $tag$x$tag$",
            "SELECT E'\\x41'",
            "SELECT e'a'",
            "SELECT U&'\\0041'",
            "SELECT B'101'",
            "SELECT X'1F'",
            "SELECT N'x'",
            "SELECT 'a\\'",
            "SELECT 'unterminated",
            "SELECT \"unterminated",
            "SELECT 0x1F",
            "SELECT 1e5",
            "SELECT 1_000",
            "SELECT .5",
            "SELECT 'é'",
            "SELECT \u{0}",
            "SELECT 1abc",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
    }

    #[test]
    fn only_value_independent_statements_are_cached() {
        let mut cache = ClassifyCache::default();
        let first = cache
            .classify("UPDATE accounts SET balance = balance + 5 WHERE id = 1")
            .unwrap();
        let second = cache
            .classify("UPDATE accounts SET balance = balance + 7 WHERE id = 2")
            .unwrap();
        assert_eq!(cache.hits(), 1);
        assert_eq!(first[0].kind, second[0].kind);
        assert_eq!(second[0].text, "UPDATE accounts SET balance = balance + 7 WHERE id = 2");
        assert_eq!(
            second,
            classify("UPDATE accounts SET balance = balance + 7 WHERE id = 2").unwrap()
        );

        // As pgbench sends it: with a terminating semicolon.
        let mut pgbench = ClassifyCache::default();
        for aid in [48_312, 7, 99] {
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
            assert_eq!(pgbench.classify(&sql).unwrap(), classify(&sql).unwrap());
        }
        assert_eq!(pgbench.hits(), 2);

        // EXPLAIN's and COPY's options are values that change the meaning: never cached.
        for _ in 0..2 {
            cache
                .classify("EXPLAIN (ANALYZE 'off') DELETE FROM t WHERE id = 1")
                .unwrap();
            cache.classify("COPY t TO STDOUT (FORMAT 'text')").unwrap();
        }
        assert_eq!(cache.hits(), 1);
        let analyze = cache
            .classify("EXPLAIN (ANALYZE 'on') DELETE FROM t WHERE id = 1")
            .unwrap();
        assert_eq!(
            analyze,
            classify("EXPLAIN (ANALYZE 'on') DELETE FROM t WHERE id = 1").unwrap()
        );
        let binary = cache.classify("COPY t TO STDOUT (FORMAT 'binary')").unwrap();
        assert_eq!(binary, classify("COPY t TO STDOUT (FORMAT 'binary')").unwrap());

        // A function call is a name, so it keys the shape: nextval stays a write.
        cache.classify("SELECT now()").unwrap();
        let nextval = cache.classify("SELECT nextval('s')").unwrap();
        assert_eq!(nextval, classify("SELECT nextval('s')").unwrap());
    }
}
