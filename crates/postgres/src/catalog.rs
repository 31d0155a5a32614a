//! What the target's own catalog says about the functions a statement calls: a function
//! that may modify data makes a `SELECT` a write. Classification (`classify`) names the
//! functions without I/O; this module asks the target which of them are VOLATILE
//! (`pg_proc.provolatile`) over a side connection with the gateway's credential, and
//! caches the answers per target for a bounded time.
//!
//! Why `provolatile` is a sound signal for SQL and PL/pgSQL: PostgreSQL runs the commands
//! of a STABLE or IMMUTABLE function in read-only mode and refuses anything but SELECT in
//! them ("DELETE is not allowed in a non-volatile function"). User-defined functions are
//! VOLATILE unless their author says otherwise. It is not bulletproof, and the docs say so:
//! a STABLE function may call a VOLATILE one, and functions in C or other languages are
//! not checked by PostgreSQL; creating such a function needs DDL rights, which policy
//! decides, and the least-privileged upstream role stays the second line of defence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use pgwire::messages::extendedquery::{Bind, Execute, Parse, Sync};
use pgwire::messages::response::ErrorResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::classify::{Statement, StatementKind};
use crate::upstream::{MAX_BACKEND_MESSAGE, Upstream, UpstreamConfig, UpstreamError, UpstreamStream};
use crate::wire;

/// Volatile built-ins that read or produce values without changing anything the next
/// statement could see: counted as free of side effects when the catalog finds them in
/// `pg_catalog`. (A function of the same name in another schema is judged on its own.)
/// Left out on purpose: `nextval`/`setval`/`txid_current`/`pg_current_xact_id` (they
/// change sequences or assign a transaction id), `pg_notify`, the advisory-lock family,
/// `set_config`, the `lo_*` family and the stats/replication management functions.
pub const HARMLESS_VOLATILE: &[&str] = &[
    // Random values and the random generator's per-session seed.
    "random",
    "random_normal",
    "setseed",
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    // Wall-clock time.
    "clock_timestamp",
    "timeofday",
    // Waiting holds the session's own backend only.
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    // Read the session's own sequence state.
    "currval",
    "lastval",
];

/// Schemas whose functions only a superuser can create or replace.
const BUILTIN_SCHEMAS: [&str; 2] = ["pg_catalog", "information_schema"];

/// Answers kept per target; the cache is emptied when full (names come from clients).
const CAPACITY: usize = 4096;

/// Time allowed to log in to the target or to answer one lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed lookup, lookups fail at once for this long instead of each statement
/// waiting for the target again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// `SELECT` over the whole catalog for the names asked, whatever their schema: unqualified
/// names are judged over every schema (conservative against `search_path`).
const LOOKUP_SQL: &str = "SELECT p.proname, n.nspname, p.provolatile \
                          FROM pg_catalog.pg_proc p \
                          JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                          WHERE p.proname = ANY($1::pg_catalog.name[])";

/// The views and materialized views of the names asked, in every schema, with their
/// definitions and column names: masking follows a view's columns to the table columns
/// they read.
const VIEW_SQL: &str = "SELECT n.nspname::text, c.relname::text, pg_catalog.pg_get_viewdef(c.oid), \
                        (SELECT pg_catalog.json_agg(a.attname ORDER BY a.attnum) \
                         FROM pg_catalog.pg_attribute a \
                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)::text \
                        FROM pg_catalog.pg_class c \
                        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                        WHERE c.relkind IN ('v', 'm') AND c.relname = ANY($1::pg_catalog.name[])";

/// A view (or materialized view) the target's catalog holds under a name a statement used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewRow {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Its query, as `pg_get_viewdef` prints it.
    pub definition: String,
    /// Its column names, in order.
    pub columns: Vec<String>,
}

/// What the catalog says about one function name as a statement spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Volatility {
    /// Every definition is STABLE, IMMUTABLE or an allowlisted built-in, all in
    /// `pg_catalog` or `information_schema`.
    BuiltinFree,
    /// Every definition is free of side effects, but some are user-defined.
    Free,
    /// Some definition is VOLATILE and not allowlisted.
    Volatile,
    /// No function of that name exists (the statement would fail at the target).
    Unknown,
}

impl Volatility {
    /// Whether a call makes the statement a write. `distrust_user_defined`: the session
    /// changed functions itself, possibly in a transaction the catalog cannot see yet.
    pub fn writes(self, distrust_user_defined: bool) -> bool {
        match self {
            Volatility::BuiltinFree => false,
            Volatility::Free => distrust_user_defined,
            Volatility::Volatile | Volatility::Unknown => true,
        }
    }
}

/// One row of [`LOOKUP_SQL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcRow {
    /// `pg_proc.proname`.
    pub name: String,
    /// The function's schema.
    pub schema: String,
    /// `pg_proc.provolatile`: `i`, `s` or `v`.
    pub volatile: u8,
}

/// Why the catalog could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Logging in to the target failed.
    #[error("{0}")]
    Login(#[from] UpstreamError),
    /// The connection failed mid-lookup.
    #[error("connection to the target failed: {0}")]
    Io(#[from] std::io::Error),
    /// The target answered the lookup with an error.
    #[error("the target refused the catalog lookup: {0}")]
    Query(String),
    /// The target's answer could not be read.
    #[error("protocol violation by the target: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("the target did not answer the catalog lookup in time")]
    Timeout,
    /// An earlier lookup failed moments ago.
    #[error("{0} (a lookup failed moments ago; retrying shortly)")]
    Recent(String),
}

/// Whether a statement's function calls need the catalog: only statements that are
/// otherwise reads (a write, DDL or admin statement is decided as such already) and call
/// at least one function.
pub fn needs_catalog(statement: &Statement) -> bool {
    matches!(
        statement.kind,
        StatementKind::Read | StatementKind::Transaction | StatementKind::Session
    ) && !statement.functions.is_empty()
}

/// The first function (in name order) whose call makes the statement a write, given the
/// catalog's answers; a name without an answer does (fail closed).
pub fn first_writing_call<'s>(
    statement: &'s Statement,
    answers: &HashMap<String, Volatility>,
    distrust_user_defined: bool,
) -> Option<&'s str> {
    statement
        .functions
        .iter()
        .find(|f| answers.get(*f).is_none_or(|v| v.writes(distrust_user_defined)))
        .map(String::as_str)
}

/// The catalog's verdict for `name` as a statement spells it (`f` or `schema.f`) from the
/// rows for its function name. Unqualified: every schema counts, any volatile definition
/// makes it volatile. Qualified: that schema only. Three-part names (`db.schema.f`) and
/// empty parts are `Unknown`.
pub fn verdict(name: &str, rows: &[ProcRow]) -> Volatility {
    let (schema, function) = match name.split_once('.') {
        None => (None, name),
        Some((schema, function)) if !function.contains('.') && !schema.is_empty() => (Some(schema), function),
        Some(_) => return Volatility::Unknown,
    };
    let mut found = false;
    let mut user_defined = false;
    for row in rows
        .iter()
        .filter(|r| r.name == function && schema.is_none_or(|s| r.schema == s))
    {
        found = true;
        let builtin = BUILTIN_SCHEMAS.contains(&row.schema.as_str());
        let harmless = builtin && row.schema == "pg_catalog" && HARMLESS_VOLATILE.contains(&function);
        if row.volatile == b'v' && !harmless {
            return Volatility::Volatile;
        }
        user_defined |= !builtin;
    }
    match (found, user_defined) {
        (false, _) => Volatility::Unknown,
        (true, true) => Volatility::Free,
        (true, false) => Volatility::BuiltinFree,
    }
}

/// The last part of a name as a statement spells it (`f` of `schema.f`), as
/// `pg_proc.proname` and `pg_class.relname` hold it.
fn unqualified(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(_, f)| f)
}

/// `{"a","b"}`: a text-format array literal, each element quoted and escaped.
fn array_literal<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from("{");
    for (i, name) in names.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for ch in name.chars() {
            if ch == '"' || ch == '\\' {
                out.push('\\');
            }
            out.push(ch);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// One target's catalog, shared by all its sessions.
pub struct Catalog {
    upstream: UpstreamConfig,
    ttl: Duration,
    cache: Mutex<Cache>,
    /// The side connection; lookups take turns on it.
    side: tokio::sync::Mutex<Option<Side>>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, (Volatility, Instant)>,
    /// Views by the relation name asked (most names are tables: an empty answer).
    views: HashMap<String, (Arc<[ViewRow]>, Instant)>,
    /// Bumped by [`Catalog::invalidate`]: answers to a lookup that began before are not kept.
    generation: u64,
    /// When and why the last lookup failed.
    failed: Option<(Instant, String)>,
}

impl Cache {
    /// The last lookup's failure, while lookups still fail at once after it (only when
    /// something must be asked).
    fn recent_failure(&self, asking: bool) -> Result<(), CatalogError> {
        match &self.failed {
            Some((at, error)) if asking && at.elapsed() < RETRY_AFTER => Err(CatalogError::Recent(error.clone())),
            _ => Ok(()),
        }
    }
}

/// A logged-in side connection to the target.
struct Side {
    stream: UpstreamStream,
    buf: BytesMut,
}

impl Catalog {
    /// A catalog for the target reached with `upstream`, keeping answers for `ttl`.
    pub fn new(upstream: UpstreamConfig, ttl: Duration) -> Self {
        Self {
            upstream,
            ttl,
            cache: Mutex::new(Cache::default()),
            side: tokio::sync::Mutex::new(None),
        }
    }

    /// How long answers are kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Bumped each time the answers are forgotten ([`Catalog::invalidate`]).
    pub fn generation(&self) -> u64 {
        self.cache().generation
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget every answer (a statement that may change functions was forwarded).
    pub fn invalidate(&self) {
        let mut cache = self.cache();
        cache.entries.clear();
        cache.views.clear();
        cache.generation += 1;
    }

    /// The verdict for each of `names`, from the cache or by asking the target.
    pub async fn lookup(&self, names: &[&str]) -> Result<HashMap<String, Volatility>, CatalogError> {
        let mut answers = HashMap::with_capacity(names.len());
        let mut hit = |name: &str, v: &Volatility| {
            answers.insert(name.to_owned(), *v);
        };
        let missing = self.cached(|c| &c.entries, names, &mut hit)?;
        if missing.is_empty() {
            return Ok(answers);
        }
        let mut side = self.side.lock().await;
        // Another session may have asked while this one waited for the connection.
        let missing = self.cached(|c| &c.entries, &missing, &mut hit)?;
        if missing.is_empty() {
            return Ok(answers);
        }
        let asked: Vec<&str> = missing.iter().map(|n| unqualified(n)).collect();
        let (rows, generation) = self.fetch(&mut side, LOOKUP_SQL, &asked, proc_row).await?;
        let now = Instant::now();
        let mut cache = self.cache();
        let keep = cache.generation == generation && !self.ttl.is_zero();
        if keep && cache.entries.len() + missing.len() > CAPACITY {
            cache.entries.clear();
        }
        for name in missing {
            let v = verdict(name, &rows);
            if keep {
                cache.entries.insert(name.to_owned(), (v, now));
            }
            answers.insert(name.to_owned(), v);
        }
        Ok(answers)
    }

    /// The views (and materialized views) named by any of `names` (relation names as a
    /// statement spells them, schema-qualified or not), in any schema; tables and unknown
    /// names contribute nothing. From the cache or by asking the target.
    pub async fn views(&self, names: &[&str]) -> Result<Vec<ViewRow>, CatalogError> {
        let mut found = Vec::new();
        let mut names: Vec<&str> = names.iter().map(|n| unqualified(n)).collect();
        names.sort_unstable();
        names.dedup();
        let mut hit = |_: &str, views: &Arc<[ViewRow]>| found.extend(views.iter().cloned());
        let missing = self.cached(|c| &c.views, &names, &mut hit)?;
        if missing.is_empty() {
            return Ok(found);
        }
        let mut side = self.side.lock().await;
        let missing = self.cached(|c| &c.views, &missing, &mut hit)?;
        if missing.is_empty() {
            return Ok(found);
        }
        let (rows, generation) = self.fetch(&mut side, VIEW_SQL, &missing, view_row).await?;
        let now = Instant::now();
        let mut cache = self.cache();
        let keep = cache.generation == generation && !self.ttl.is_zero();
        if keep && cache.views.len() + missing.len() > CAPACITY {
            cache.views.clear();
        }
        for name in missing {
            let views: Arc<[ViewRow]> = rows.iter().filter(|v| v.name == name).cloned().collect();
            found.extend(views.iter().cloned());
            if keep {
                cache.views.insert(name.to_owned(), (views, now));
            }
        }
        Ok(found)
    }

    /// Runs `sql` with `names` as its one array parameter on the side connection, within
    /// the lookup timeout; also returns the cache generation from before the question. A
    /// failure closes the connection and fails lookups for the next [`RETRY_AFTER`].
    async fn fetch<R>(
        &self,
        side: &mut Option<Side>,
        sql: &str,
        names: &[&str],
        row: fn(&[u8]) -> Result<R, String>,
    ) -> Result<(Vec<R>, u64), CatalogError> {
        let generation = self.cache().generation;
        let asked = tokio::time::timeout(LOOKUP_TIMEOUT, self.ask(side, sql, names, row))
            .await
            .unwrap_or(Err(CatalogError::Timeout));
        match asked {
            Ok(rows) => {
                self.cache().failed = None;
                Ok((rows, generation))
            }
            Err(error) => {
                *side = None;
                self.cache().failed = Some((Instant::now(), error.to_string()));
                Err(error)
            }
        }
    }

    /// Hands each of `names` with a fresh entry in the map `which` picks to `hit`; the
    /// names still missing (an error instead while lookups pause after a failure).
    fn cached<'n, V>(
        &self,
        which: fn(&Cache) -> &HashMap<String, (V, Instant)>,
        names: &[&'n str],
        mut hit: impl FnMut(&'n str, &V),
    ) -> Result<Vec<&'n str>, CatalogError> {
        let cache = self.cache();
        let mut missing = Vec::new();
        for name in names {
            match which(&cache).get(*name) {
                Some((v, at)) if at.elapsed() < self.ttl => hit(name, v),
                _ => missing.push(*name),
            }
        }
        cache.recent_failure(!missing.is_empty())?;
        Ok(missing)
    }

    /// Query over the side connection, opening it first if needed; an idle connection
    /// the target closed is reopened once.
    async fn ask<R>(
        &self,
        side: &mut Option<Side>,
        sql: &str,
        names: &[&str],
        row: fn(&[u8]) -> Result<R, String>,
    ) -> Result<Vec<R>, CatalogError> {
        let reused = side.is_some();
        if let Some(open) = side.as_mut() {
            match query(open, sql, names, row).await {
                Ok(rows) => return Ok(rows),
                Err(CatalogError::Io(_) | CatalogError::Protocol(_)) if reused => *side = None,
                Err(error) => return Err(error),
            }
        }
        let Upstream {
            stream, read_buf: buf, ..
        } = Upstream::connect(&self.upstream).await?;
        let open = side.insert(Side { stream, buf });
        query(open, sql, names, row).await
    }
}

/// One lookup: Parse/Bind/Execute/Sync with the names as one array parameter, then read
/// up to ReadyForQuery.
async fn query<R>(
    side: &mut Side,
    sql: &str,
    names: &[&str],
    row: fn(&[u8]) -> Result<R, String>,
) -> Result<Vec<R>, CatalogError> {
    let protocol = |e: pgwire::error::PgWireError| CatalogError::Protocol(e.to_string());
    let mut unique = names.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let mut out = BytesMut::new();
    wire::encode(&Parse::new(None, sql.to_owned(), Vec::new()), &mut out).map_err(protocol)?;
    let parameter = Bytes::from(array_literal(unique.into_iter()));
    wire::encode(
        &Bind::new(None, None, vec![0], vec![Some(parameter)], vec![0]),
        &mut out,
    )
    .map_err(protocol)?;
    wire::encode(&Execute::new(None, 0), &mut out).map_err(protocol)?;
    wire::encode(&Sync::new(), &mut out).map_err(protocol)?;
    side.stream.write_all(&out).await?;
    side.stream.flush().await?;

    let mut rows = Vec::new();
    let mut failed = None;
    loop {
        let frame = loop {
            if let Some(frame) = wire::try_frame(&mut side.buf, MAX_BACKEND_MESSAGE)
                .map_err(|e| CatalogError::Protocol(e.to_string()))?
            {
                break frame;
            }
            if side.stream.read_buf(&mut side.buf).await? == 0 {
                return Err(CatalogError::Protocol("the target closed the connection".to_owned()));
            }
        };
        match frame.tag {
            b'D' => rows.push(row(&frame.bytes).map_err(CatalogError::Protocol)?),
            b'E' => {
                let e: ErrorResponse = wire::decode(&frame).map_err(protocol)?;
                let message = e
                    .fields
                    .iter()
                    .find(|(code, _)| *code == b'M')
                    .map(|(_, m)| m.clone())
                    .unwrap_or_default();
                failed = Some(message);
            }
            b'Z' => break,
            // ParseComplete, BindComplete, CommandComplete, notices, parameter changes,
            // notifications: nothing to read.
            _ => {}
        }
    }
    match failed {
        Some(message) => Err(CatalogError::Query(message)),
        None => Ok(rows),
    }
}

/// The text fields of a DataRow of `n` columns (`None` for NULL).
fn data_row(message: &[u8], n: i16) -> Result<Vec<Option<String>>, String> {
    let mut body = message.get(5..).ok_or("short DataRow")?;
    if body.len() < 2 || body.get_i16() != n {
        return Err(format!("catalog row without {n} columns"));
    }
    let mut fields = Vec::with_capacity(n as usize);
    for _ in 0..n {
        if body.len() < 4 {
            return Err("truncated DataRow".to_owned());
        }
        let len = body.get_i32();
        let Ok(len) = usize::try_from(len) else {
            fields.push(None);
            continue;
        };
        let value = body.get(..len).ok_or("truncated DataRow")?;
        fields.push(Some(String::from_utf8_lossy(value).into_owned()));
        body.advance(len);
    }
    Ok(fields)
}

/// A row of [`LOOKUP_SQL`]: proname, nspname, provolatile.
fn proc_row(message: &[u8]) -> Result<ProcRow, String> {
    let mut fields = data_row(message, 3)?.into_iter();
    let mut field = || fields.next().flatten().ok_or("NULL in a catalog row");
    let name = field()?;
    let schema = field()?;
    let volatile = field()?.bytes().next().ok_or("empty provolatile")?;
    Ok(ProcRow { name, schema, volatile })
}

/// A row of [`VIEW_SQL`]: schema, name, definition, column names as a JSON array.
fn view_row(message: &[u8]) -> Result<ViewRow, String> {
    let mut fields = data_row(message, 4)?.into_iter();
    let mut field = || fields.next().flatten().ok_or("NULL in a catalog row");
    let schema = field()?;
    let name = field()?;
    let definition = field()?;
    let columns = serde_json::from_str(&field()?).map_err(|e| format!("view columns: {e}"))?;
    Ok(ViewRow {
        schema,
        name,
        definition,
        columns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    fn row(name: &str, schema: &str, volatile: u8) -> ProcRow {
        ProcRow {
            name: name.to_owned(),
            schema: schema.to_owned(),
            volatile,
        }
    }

    #[test]
    fn verdicts_are_conservative_across_schemas_and_overloads() {
        let rows = [
            row("lower", "pg_catalog", b'i'),
            row("now", "pg_catalog", b's'),
            row("random", "pg_catalog", b'v'),
            row("stable_count", "public", b's'),
            row("purge", "public", b'v'),
            // One overload of `mixed` is volatile.
            row("mixed", "public", b's'),
            row("mixed", "public", b'v'),
            // A user-defined `random` elsewhere is judged on its own.
            row("random", "evil", b'v'),
            row("tidy", "app", b'v'),
            row("tidy", "public", b's'),
        ];
        assert_eq!(verdict("lower", &rows), Volatility::BuiltinFree);
        assert_eq!(verdict("pg_catalog.now", &rows), Volatility::BuiltinFree);
        assert_eq!(verdict("pg_catalog.random", &rows), Volatility::BuiltinFree);
        assert_eq!(verdict("random", &rows), Volatility::Volatile, "evil.random counts");
        assert_eq!(verdict("evil.random", &rows), Volatility::Volatile);
        assert_eq!(verdict("stable_count", &rows), Volatility::Free);
        assert_eq!(verdict("purge", &rows), Volatility::Volatile);
        assert_eq!(verdict("mixed", &rows), Volatility::Volatile);
        assert_eq!(verdict("tidy", &rows), Volatility::Volatile, "any schema counts");
        assert_eq!(
            verdict("public.tidy", &rows),
            Volatility::Free,
            "qualified: that schema only"
        );
        assert_eq!(verdict("missing", &rows), Volatility::Unknown);
        assert_eq!(verdict("other.lower", &rows), Volatility::Unknown);
        assert_eq!(verdict("db.public.tidy", &rows), Volatility::Unknown);
        assert_eq!(verdict(".tidy", &rows), Volatility::Unknown);
    }

    #[test]
    fn volatile_or_unknown_calls_make_a_read_a_write() {
        let answers: HashMap<String, Volatility> = [
            ("now", Volatility::BuiltinFree),
            ("random", Volatility::BuiltinFree),
            ("stable_count", Volatility::Free),
            ("volatile_delete", Volatility::Volatile),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect();
        let first = |sql: &str, distrust: bool| {
            let statement = classify(sql).unwrap().remove(0);
            assert!(needs_catalog(&statement), "{sql}");
            first_writing_call(&statement, &answers, distrust).map(str::to_owned)
        };
        assert_eq!(first("SELECT now(), random()", false), None);
        assert_eq!(first("SELECT stable_count()", false), None);
        assert_eq!(
            first("SELECT stable_count()", true),
            Some("stable_count".to_owned()),
            "a session that changed functions distrusts user-defined ones"
        );
        assert_eq!(first("SELECT now(), random()", true), None);
        assert_eq!(
            first("SELECT id FROM t WHERE id IN (SELECT volatile_delete())", false),
            Some("volatile_delete".to_owned())
        );
        assert_eq!(
            first("SELECT never_heard_of()", false),
            Some("never_heard_of".to_owned()),
            "unknown fails closed"
        );

        // No function, or already a write: the catalog is not asked.
        let plain = classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1").unwrap();
        assert!(!needs_catalog(&plain[0]));
        let write = classify("INSERT INTO t VALUES (volatile_delete())").unwrap();
        assert!(!needs_catalog(&write[0]));
    }

    #[test]
    fn names_are_sent_as_an_escaped_array() {
        assert_eq!(array_literal(["a", "b"].into_iter()), r#"{"a","b"}"#);
        assert_eq!(
            array_literal([r#"we"ird\"#, "x,y}"].into_iter()),
            r#"{"we\"ird\\","x,y}"}"#
        );
        assert_eq!(unqualified("public.f"), "f");
        assert_eq!(unqualified("f"), "f");
    }

    /// A DataRow of text fields (`None`: NULL).
    fn data_row_message(fields: &[Option<&str>]) -> BytesMut {
        let mut msg = BytesMut::new();
        bytes::BufMut::put_u8(&mut msg, b'D');
        bytes::BufMut::put_i32(&mut msg, 0);
        bytes::BufMut::put_i16(&mut msg, fields.len() as i16);
        for value in fields {
            match value {
                Some(value) => {
                    bytes::BufMut::put_i32(&mut msg, value.len() as i32);
                    bytes::BufMut::put_slice(&mut msg, value.as_bytes());
                }
                None => bytes::BufMut::put_i32(&mut msg, -1),
            }
        }
        msg
    }

    #[test]
    fn catalog_rows_are_read_from_data_rows() {
        let msg = data_row_message(&[Some("f"), Some("public"), Some("v")]);
        assert_eq!(proc_row(&msg).unwrap(), row("f", "public", b'v'));
        assert!(proc_row(&msg[..msg.len() - 1]).is_err());
        assert!(proc_row(&data_row_message(&[Some("f"), None, Some("v")])).is_err());
        assert!(proc_row(&data_row_message(&[Some("f"), Some("public")])).is_err());
    }

    #[test]
    fn view_rows_carry_the_definition_and_column_names() {
        let msg = data_row_message(&[
            Some("hr"),
            Some("staff"),
            Some(" SELECT people.full_name AS nm\n   FROM people;"),
            Some(r#"["nm", "Odd \"name\""]"#),
        ]);
        assert_eq!(
            view_row(&msg).unwrap(),
            ViewRow {
                schema: "hr".into(),
                name: "staff".into(),
                definition: " SELECT people.full_name AS nm\n   FROM people;".into(),
                columns: vec!["nm".into(), "Odd \"name\"".into()],
            }
        );
        assert!(view_row(&data_row_message(&[Some("hr"), Some("staff"), Some("SELECT 1"), None])).is_err());
        assert!(
            view_row(&data_row_message(&[
                Some("hr"),
                Some("staff"),
                Some("SELECT 1"),
                Some("nm")
            ]))
            .is_err()
        );
    }
}
