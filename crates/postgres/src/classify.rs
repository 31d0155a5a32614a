//! Statement classification with PostgreSQL's own grammar, without I/O: what each
//! statement of a query string does (read, write, DDL, admin, ...), which tables and
//! functions it touches, and whether an UPDATE/DELETE lacks a WHERE clause.
//!
//! The whole parse tree is walked (through pg_query's serialisable protobuf form), so a
//! write hidden in a CTE, a subquery's `FOR UPDATE` or a side-effecting function call
//! anywhere in the statement is seen. Known limits, on purpose for this layer:
//! `EXECUTE <prepared>` cannot be classified from its text and is `Admin`; here functions
//! are judged by name only, from the fixed lists below, and every function called is
//! reported in [`Statement::functions`] so that the gate can ask the target's catalog
//! whether the rest are volatile (`crate::catalog`, which makes such a read a write); an
//! unqualified table named like a CTE of the same statement is taken to be the CTE.

mod cache;

use std::collections::BTreeSet;
use std::sync::Arc;

use pg_query::NodeEnum;
use pg_query::protobuf::{self, TransactionStmtKind, VariableSetKind};
use serde_json::Value;

pub use cache::{ClassifyCache, shape};

/// What a statement does, for policy. Ordered for escalation among Read..Admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatementKind {
    /// Reads data only.
    Read,
    /// Modifies data (DML, row locks, sequences, NOTIFY, LOCK).
    Write,
    /// Changes the schema.
    Ddl,
    /// Affects the server, roles, files, other sessions, or cannot be inspected.
    Admin,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE.
    Transaction,
    /// Harmless session statements: SET (most), SHOW, RESET, DISCARD, LISTEN, DEALLOCATE.
    Session,
}

/// One classified statement of a query string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// What it does.
    pub kind: StatementKind,
    /// Command name, as PostgreSQL would tag it ("SELECT", "CREATE TABLE", ...).
    pub tag: String,
    /// Tables referenced, schema-qualified when written so, folded as PostgreSQL folds.
    pub tables: BTreeSet<String>,
    /// Functions called, schema-qualified when written so.
    pub functions: BTreeSet<String>,
    /// False only for an UPDATE or DELETE (anywhere, CTEs included) lacking WHERE, or TRUNCATE.
    pub has_where: bool,
    /// This statement's own text.
    pub text: String,
    /// Where its result columns come from, for masking.
    pub provenance: Arc<crate::provenance::Provenance>,
}

/// Why a query string could not be classified.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// PostgreSQL's grammar rejected the text; the message is PostgreSQL's.
    #[error("{0}")]
    Syntax(String),
    /// The parse tree could not be read.
    #[error("cannot read the parse tree: {0}")]
    Tree(String),
}

/// Functions with effects outside the statement's own data: the server, files, other
/// sessions, other databases, or arbitrary SQL given as a string.
const ADMIN_FUNCTIONS: &[&str] = &[
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_stat_file",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_logical_emit_message",
    "pg_replication_origin_create",
    "pg_import_system_collations",
    "set_config",
    "lo_import",
    "lo_export",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
];

/// Prefixes of function families that are admin as a whole (`dblink`, `dblink_exec`, ...).
const ADMIN_FUNCTION_PREFIXES: &[&str] = &["dblink"];

/// Functions that change data although called from a SELECT.
const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "lo_truncate",
    "lo_truncate64",
    "txid_current",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
];

/// SET/RESET parameters that change who the session is or lift a read-only guard.
const ADMIN_SETTINGS: &[&str] = &[
    "role",
    "session_authorization",
    "default_transaction_read_only",
    "transaction_read_only",
    "session_replication_role",
];

/// Facts gathered from the whole tree of one statement.
#[derive(Default)]
struct Findings {
    tables: BTreeSet<String>,
    ctes: BTreeSet<String>,
    functions: BTreeSet<String>,
    has_dml: bool,
    has_row_lock: bool,
    missing_where: bool,
    escalation: Option<StatementKind>,
}

/// Classify every statement of a query string. An empty string (or only comments) gives
/// no statements.
pub fn classify(sql: &str) -> Result<Vec<Statement>, ClassifyError> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).map_err(|e| match e {
        pg_query::Error::Parse(message) => ClassifyError::Syntax(message),
        other => ClassifyError::Tree(other.to_string()),
    })?;
    let mut out = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let text = statement_text(sql, raw);
        out.push(classify_node(node, text)?);
    }
    Ok(out)
}

fn statement_text(sql: &str, raw: &protobuf::RawStmt) -> String {
    let start = usize::try_from(raw.stmt_location).unwrap_or(0).min(sql.len());
    let end = match usize::try_from(raw.stmt_len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(len) => start.saturating_add(len).min(sql.len()),
    };
    sql.get(start..end).unwrap_or(sql).trim().to_owned()
}

fn classify_node(node: &NodeEnum, text: String) -> Result<Statement, ClassifyError> {
    let tree = serde_json::to_value(node).map_err(|e| ClassifyError::Tree(e.to_string()))?;
    let mut found = Findings::default();
    walk(&tree, &mut found);
    let provenance = Arc::new(crate::provenance::trace(&tree));
    let name = tree
        .as_object()
        .and_then(|m| m.keys().next())
        .map_or("", String::as_str);
    let (base, tag) = base_kind(node, name);
    let executes = executes_inner(node);
    let mut kind = base;
    if executes {
        if found.has_dml || found.has_row_lock {
            kind = escalate(kind, StatementKind::Write);
        }
        if let Some(e) = found.escalation {
            kind = escalate(kind, e);
        }
    }
    if let NodeEnum::DropStmt(d) = node {
        drop_tables(d, &mut found);
    }
    let truncate = matches!(node, NodeEnum::TruncateStmt(_));
    let tables = found
        .tables
        .into_iter()
        .filter(|t| t.contains('.') || !found.ctes.contains(t))
        .collect();
    Ok(Statement {
        kind,
        tag,
        tables,
        functions: found.functions,
        has_where: !(found.missing_where || truncate),
        text,
        provenance,
    })
}

/// Whether the statement's nested parts run: plain EXPLAIN only plans its query.
fn executes_inner(node: &NodeEnum) -> bool {
    match node {
        NodeEnum::ExplainStmt(e) => explain_analyze(e),
        _ => true,
    }
}

fn explain_analyze(e: &protobuf::ExplainStmt) -> bool {
    e.options.iter().any(|o| match o.node.as_ref() {
        Some(NodeEnum::DefElem(d)) if d.defname == "analyze" => match d.arg.as_deref() {
            None => true,
            Some(arg) => {
                !matches!(
                    arg.node.as_ref(),
                    Some(NodeEnum::String(s)) if matches!(s.sval.as_str(), "false" | "off" | "0")
                ) && !matches!(
                    arg.node.as_ref(),
                    Some(NodeEnum::Boolean(b)) if !b.boolval
                ) && !matches!(
                    arg.node.as_ref(),
                    Some(NodeEnum::Integer(i)) if i.ival == 0
                )
            }
        },
        _ => false,
    })
}

/// `COPY ... (FORMAT binary)` or the legacy `BINARY` keyword.
fn copy_binary(c: &protobuf::CopyStmt) -> bool {
    c.options.iter().any(|o| match o.node.as_ref() {
        Some(NodeEnum::DefElem(d)) if d.defname == "format" => matches!(
            d.arg.as_deref().and_then(|a| a.node.as_ref()),
            Some(NodeEnum::String(s)) if s.sval.eq_ignore_ascii_case("binary")
        ),
        _ => false,
    })
}

/// DROP names its relations as lists of strings, not RangeVars.
fn drop_tables(d: &protobuf::DropStmt, found: &mut Findings) {
    use protobuf::ObjectType::*;
    let relation = matches!(
        protobuf::ObjectType::try_from(d.remove_type),
        Ok(ObjectTable | ObjectView | ObjectMatview | ObjectForeignTable | ObjectSequence | ObjectIndex)
    );
    if !relation {
        return;
    }
    for object in &d.objects {
        if let Some(NodeEnum::List(list)) = object.node.as_ref() {
            let parts: Vec<&str> = list
                .items
                .iter()
                .filter_map(|n| match n.node.as_ref() {
                    Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                    _ => None,
                })
                .collect();
            if !parts.is_empty() {
                found.tables.insert(parts.join("."));
            }
        }
    }
}

fn escalate(a: StatementKind, b: StatementKind) -> StatementKind {
    fn rank(k: StatementKind) -> u8 {
        match k {
            StatementKind::Transaction | StatementKind::Session => 0,
            StatementKind::Read => 1,
            StatementKind::Write => 2,
            StatementKind::Ddl => 3,
            StatementKind::Admin => 4,
        }
    }
    if rank(b) > rank(a) { b } else { a }
}

fn inner_kind(node: Option<&protobuf::Node>) -> (StatementKind, String) {
    match node.and_then(|n| n.node.as_ref()) {
        Some(n) => base_kind(n, ""),
        None => (StatementKind::Admin, "UNKNOWN".to_owned()),
    }
}

/// The kind and tag of the statement itself, before what its subtree escalates.
fn base_kind(node: &NodeEnum, name: &str) -> (StatementKind, String) {
    use StatementKind::*;
    let t = |k: StatementKind, tag: &str| (k, tag.to_owned());
    match node {
        NodeEnum::SelectStmt(s) if s.into_clause.is_some() => t(Ddl, "SELECT INTO"),
        NodeEnum::SelectStmt(_) => t(Read, "SELECT"),
        NodeEnum::InsertStmt(_) => t(Write, "INSERT"),
        NodeEnum::UpdateStmt(_) => t(Write, "UPDATE"),
        NodeEnum::DeleteStmt(_) => t(Write, "DELETE"),
        NodeEnum::MergeStmt(_) => t(Write, "MERGE"),
        NodeEnum::TruncateStmt(_) => t(Write, "TRUNCATE TABLE"),
        NodeEnum::LockStmt(_) => t(Write, "LOCK TABLE"),
        NodeEnum::NotifyStmt(_) => t(Write, "NOTIFY"),
        NodeEnum::CopyStmt(c) => {
            if c.is_program || !c.filename.is_empty() {
                t(Admin, "COPY")
            } else if c.is_from {
                t(Write, "COPY")
            } else if copy_binary(c) {
                // Binary COPY rows carry neither column names nor types, so the gateway
                // cannot mask them: reading that way is as privileged as admin.
                t(Admin, "COPY")
            } else {
                t(Read, "COPY")
            }
        }
        NodeEnum::ExplainStmt(e) => {
            let (inner, _) = inner_kind(e.query.as_deref());
            if explain_analyze(e) {
                (escalate(Read, inner), "EXPLAIN".to_owned())
            } else {
                t(Read, "EXPLAIN")
            }
        }
        NodeEnum::PrepareStmt(p) => (inner_kind(p.query.as_deref()).0, "PREPARE".to_owned()),
        NodeEnum::DeclareCursorStmt(d) => (inner_kind(d.query.as_deref()).0, "DECLARE CURSOR".to_owned()),
        NodeEnum::ExecuteStmt(_) => t(Admin, "EXECUTE"),
        NodeEnum::DeallocateStmt(_) => t(Session, "DEALLOCATE"),
        NodeEnum::FetchStmt(f) => t(Read, if f.ismove { "MOVE" } else { "FETCH" }),
        NodeEnum::ClosePortalStmt(_) => t(Session, "CLOSE CURSOR"),
        NodeEnum::DoStmt(_) => t(Admin, "DO"),
        NodeEnum::CallStmt(_) => t(Admin, "CALL"),
        NodeEnum::TransactionStmt(s) => transaction_kind(s),
        NodeEnum::VariableSetStmt(s) => {
            let reset = matches!(
                VariableSetKind::try_from(s.kind),
                Ok(VariableSetKind::VarReset | VariableSetKind::VarResetAll)
            );
            let tag = if reset { "RESET" } else { "SET" };
            if ADMIN_SETTINGS.contains(&s.name.as_str()) {
                t(Admin, tag)
            } else {
                t(Session, tag)
            }
        }
        NodeEnum::VariableShowStmt(_) => t(Session, "SHOW"),
        NodeEnum::DiscardStmt(_) => t(Session, "DISCARD"),
        NodeEnum::ListenStmt(_) => t(Session, "LISTEN"),
        NodeEnum::UnlistenStmt(_) => t(Session, "UNLISTEN"),
        NodeEnum::GrantStmt(g) => t(Admin, if g.is_grant { "GRANT" } else { "REVOKE" }),
        NodeEnum::GrantRoleStmt(g) => t(Admin, if g.is_grant { "GRANT" } else { "REVOKE" }),
        NodeEnum::AlterSystemStmt(_) => t(Admin, "ALTER SYSTEM"),
        NodeEnum::CreateRoleStmt(_) => t(Admin, "CREATE ROLE"),
        NodeEnum::AlterRoleStmt(_) => t(Admin, "ALTER ROLE"),
        NodeEnum::AlterRoleSetStmt(_) => t(Admin, "ALTER ROLE"),
        NodeEnum::DropRoleStmt(_) => t(Admin, "DROP ROLE"),
        NodeEnum::LoadStmt(_) => t(Admin, "LOAD"),
        NodeEnum::CreatedbStmt(_) => t(Admin, "CREATE DATABASE"),
        NodeEnum::DropdbStmt(_) => t(Admin, "DROP DATABASE"),
        NodeEnum::AlterDatabaseStmt(_) | NodeEnum::AlterDatabaseSetStmt(_) => t(Admin, "ALTER DATABASE"),
        NodeEnum::CreateExtensionStmt(_) => t(Admin, "CREATE EXTENSION"),
        NodeEnum::ReassignOwnedStmt(_) => t(Admin, "REASSIGN OWNED"),
        NodeEnum::DropOwnedStmt(_) => t(Admin, "DROP OWNED"),
        NodeEnum::CheckPointStmt(_) => t(Admin, "CHECKPOINT"),
        NodeEnum::VacuumStmt(v) => t(Admin, if v.is_vacuumcmd { "VACUUM" } else { "ANALYZE" }),
        NodeEnum::ClusterStmt(_) => t(Admin, "CLUSTER"),
        NodeEnum::ReindexStmt(_) => t(Admin, "REINDEX"),
        NodeEnum::CreateTableSpaceStmt(_) => t(Admin, "CREATE TABLESPACE"),
        NodeEnum::CreateSubscriptionStmt(_) => t(Admin, "CREATE SUBSCRIPTION"),
        NodeEnum::CreatePublicationStmt(_) => t(Admin, "CREATE PUBLICATION"),
        NodeEnum::CreateForeignServerStmt(_) => t(Admin, "CREATE SERVER"),
        NodeEnum::CreateUserMappingStmt(_) => t(Admin, "CREATE USER MAPPING"),
        NodeEnum::AlterUserMappingStmt(_) => t(Admin, "ALTER USER MAPPING"),
        NodeEnum::SecLabelStmt(_) => t(Admin, "SECURITY LABEL"),
        NodeEnum::ConstraintsSetStmt(_) => t(Session, "SET CONSTRAINTS"),
        NodeEnum::CreateStmt(_) => t(Ddl, "CREATE TABLE"),
        NodeEnum::CreateTableAsStmt(c) => {
            // OBJECT_MATVIEW
            let tag = if c.objtype == protobuf::ObjectType::ObjectMatview as i32 {
                "CREATE MATERIALIZED VIEW"
            } else if c.is_select_into {
                "SELECT INTO"
            } else {
                "CREATE TABLE AS"
            };
            t(Ddl, tag)
        }
        NodeEnum::ViewStmt(_) => t(Ddl, "CREATE VIEW"),
        NodeEnum::IndexStmt(_) => t(Ddl, "CREATE INDEX"),
        NodeEnum::AlterTableStmt(_) => t(Ddl, "ALTER TABLE"),
        NodeEnum::RefreshMatViewStmt(_) => t(Ddl, "REFRESH MATERIALIZED VIEW"),
        NodeEnum::DropStmt(d) => (Ddl, format!("DROP {}", object_word(d.remove_type))),
        _ => (Ddl, tag_from_node_name(name)),
    }
}

fn transaction_kind(s: &protobuf::TransactionStmt) -> (StatementKind, String) {
    use TransactionStmtKind::*;
    let (kind, tag) = match TransactionStmtKind::try_from(s.kind) {
        Ok(TransStmtBegin) => (StatementKind::Transaction, "BEGIN"),
        Ok(TransStmtStart) => (StatementKind::Transaction, "START TRANSACTION"),
        Ok(TransStmtCommit) => (StatementKind::Transaction, "COMMIT"),
        Ok(TransStmtRollback) => (StatementKind::Transaction, "ROLLBACK"),
        Ok(TransStmtSavepoint) => (StatementKind::Transaction, "SAVEPOINT"),
        Ok(TransStmtRelease) => (StatementKind::Transaction, "RELEASE"),
        Ok(TransStmtRollbackTo) => (StatementKind::Transaction, "ROLLBACK"),
        // Two-phase commit outlives the session: it is not ordinary transaction control.
        Ok(TransStmtPrepare) => (StatementKind::Admin, "PREPARE TRANSACTION"),
        Ok(TransStmtCommitPrepared) => (StatementKind::Admin, "COMMIT PREPARED"),
        Ok(TransStmtRollbackPrepared) => (StatementKind::Admin, "ROLLBACK PREPARED"),
        Ok(Undefined) | Err(_) => (StatementKind::Admin, "TRANSACTION"),
    };
    (kind, tag.to_owned())
}

fn object_word(object_type: i32) -> String {
    protobuf::ObjectType::try_from(object_type)
        .map(|o| o.as_str_name().trim_start_matches("OBJECT_").replace('_', " "))
        .unwrap_or_else(|_| "OBJECT".to_owned())
}

/// "CreateFunctionStmt" -> "CREATE FUNCTION": a readable tag for the many DDL statements.
fn tag_from_node_name(name: &str) -> String {
    let name = name.strip_suffix("Stmt").unwrap_or(name);
    let mut tag = String::with_capacity(name.len() + 4);
    for (i, ch) in name.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            tag.push(' ');
        }
        tag.push(ch.to_ascii_uppercase());
    }
    tag
}

/// Walk every node of the serialised tree; node payloads are objects keyed by type name.
fn walk(value: &Value, found: &mut Findings) {
    match value {
        Value::Object(map) => {
            // RangeVar and SelectStmt also sit in typed fields (`relation`, `larg`), not
            // only under their type name, so they are recognised by shape.
            if map.contains_key("relname") && map.contains_key("relpersistence") {
                found.table(map);
            }
            if map
                .get("locking_clause")
                .and_then(Value::as_array)
                .is_some_and(|l| !l.is_empty())
            {
                found.has_row_lock = true;
            }
            for (key, inner) in map {
                visit(key, inner, found);
                walk(inner, found);
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(item, found);
            }
        }
        _ => {}
    }
}

fn visit(key: &str, node: &Value, found: &mut Findings) {
    match key {
        "CommonTableExpr" => {
            if let Some(name) = node.get("ctename").and_then(Value::as_str) {
                found.ctes.insert(name.to_owned());
            }
        }
        "FuncCall" => {
            let parts: Vec<&str> = node
                .get("funcname")
                .and_then(Value::as_array)
                .map(|names| names.iter().filter_map(string_node).collect())
                .unwrap_or_default();
            let Some(last) = parts.last() else { return };
            let builtin = parts.len() == 1 || parts.first() == Some(&"pg_catalog");
            if builtin {
                if ADMIN_FUNCTIONS.contains(last) || ADMIN_FUNCTION_PREFIXES.iter().any(|p| last.starts_with(p)) {
                    found.escalate(StatementKind::Admin);
                } else if WRITE_FUNCTIONS.contains(last) {
                    found.escalate(StatementKind::Write);
                }
            } else if ADMIN_FUNCTION_PREFIXES.iter().any(|p| last.starts_with(p)) {
                // dblink is an extension: it lives in whatever schema it was installed in.
                found.escalate(StatementKind::Admin);
            }
            found.functions.insert(parts.join("."));
        }
        "InsertStmt" | "MergeStmt" => found.has_dml = true,
        "UpdateStmt" | "DeleteStmt" => {
            found.has_dml = true;
            if node.get("where_clause").is_none_or(Value::is_null) {
                found.missing_where = true;
            }
        }
        "SelectStmt" if node.get("into_clause").is_some_and(|v| !v.is_null()) => {
            found.escalate(StatementKind::Ddl);
        }
        "DoStmt" | "CallStmt" => found.escalate(StatementKind::Admin),
        _ => {}
    }
}

impl Findings {
    fn table(&mut self, map: &serde_json::Map<String, Value>) {
        let part = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or("");
        let mut name = String::new();
        for piece in [part("catalogname"), part("schemaname")] {
            if !piece.is_empty() {
                name.push_str(piece);
                name.push('.');
            }
        }
        name.push_str(part("relname"));
        self.tables.insert(name);
    }

    fn escalate(&mut self, kind: StatementKind) {
        self.escalation = Some(match self.escalation {
            Some(k) => escalate(k, kind),
            None => kind,
        });
    }
}

/// `{"node": {"String": {"sval": "x"}}}` -> "x".
fn string_node(node: &Value) -> Option<&str> {
    node.get("node")?.get("String")?.get("sval")?.as_str()
}

#[cfg(test)]
mod tests;
