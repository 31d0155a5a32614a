//! Where each result column of a statement comes from: its values are masked as the classes
//! of the source columns it reads, not only by its own name. `SELECT reverse(email) AS x`
//! returns a column named `x` whose every value is computed from `email`; this module follows
//! each output expression back through the parse tree (aliases, subqueries, CTEs, set
//! operations, VALUES, scalar subqueries, COPY) to the table columns it reads.
//!
//! The walk needs no catalog and no I/O. What it cannot know without the catalog it leaves
//! open, for the relay to settle conservatively: which columns a `*` covers (the result's
//! own column names tell), and which columns a whole-row reference (`row_to_json(c)`) holds
//! (JSON keys tell; otherwise the rules naming the table).
//!
//! What does not count as reading a value: a `WHERE`, `GROUP BY` or join condition (they
//! choose rows, not values), `x IS NULL`, `count(x)` and `EXISTS (...)`. Everything else in an
//! output expression counts, including a `CASE` condition and the arguments of any function.

use gatehouse_mask::{ColumnRules, DataClasses, TableRef, column_hint};
use serde_json::Value;

/// A table as the statement names it (names folded as PostgreSQL folds them).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Table {
    /// The schema, when written.
    pub schema: Option<String>,
    /// The table or view name.
    pub name: String,
}

/// One column an output reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The tables it may come from; empty when the gateway cannot tell (rules naming the
    /// column in any table apply).
    pub tables: Vec<Table>,
    /// The column's name.
    pub column: String,
}

/// What one output expression reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// Columns read.
    pub columns: Vec<Source>,
    /// Tables whose whole rows are read (`row_to_json(c)`, `c::text`).
    pub rows: Vec<Table>,
}

/// One entry of a target list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One output column computed from `origin`.
    Expr {
        /// Its name, as PostgreSQL would report it (for lookups through subqueries).
        name: String,
        /// What it reads.
        origin: Origin,
    },
    /// Any number of output columns carrying their real names: the columns of `tables`
    /// (`*`, `t.*`), each also derived from `origin` (a set-returning function's arguments).
    Star {
        /// Tables the columns come from.
        tables: Vec<Table>,
        /// What every column of the star also reads.
        origin: Origin,
    },
}

/// The target list of a query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    /// Targets in output order.
    pub targets: Vec<Target>,
    /// Positions cannot be trusted (set operations whose branches differ in shape, a `*`
    /// over a `USING` join mixed with subqueries): every column derives from everything.
    pub mixed: bool,
    /// Set on a statement's own outputs when no source column's name announces a class and
    /// no star or whole row is read: without column rules, nothing is traced (the relay's
    /// fast path for the common `SELECT a, b FROM t`).
    pub quiet: bool,
}

/// What the relay knows about a statement's result rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Provenance {
    /// The statement's rows cannot be traced from its text (`FETCH`, `EXECUTE`, `SHOW`):
    /// its result columns are masked by their names and content only.
    #[default]
    Untraced,
    /// A query, a `COPY ... TO`, or a `RETURNING` list.
    Rows(Outputs),
    /// `DECLARE name CURSOR FOR query` or `PREPARE name AS query`: the rows a later `FETCH`
    /// or `EXECUTE` of `name` returns.
    Defines {
        /// Cursors and prepared statements have separate names.
        kind: Named,
        /// The cursor's or statement's name.
        name: String,
        /// Its query's rows.
        rows: Outputs,
    },
    /// `FETCH`/`MOVE` from a cursor, `EXECUTE` of a prepared statement: the rows its
    /// definition traced.
    Uses {
        /// Cursor or prepared statement.
        kind: Named,
        /// Its name.
        name: String,
    },
}

/// What a SQL-level name names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Named {
    /// `DECLARE ... CURSOR` / `FETCH`.
    Cursor,
    /// `PREPARE` / `EXECUTE`.
    Prepared,
}

/// How one result column is to be masked beyond its name and content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnTrace {
    /// Classes the value derives from: it is masked whole as the most sensitive of them that
    /// the session masks.
    pub classes: DataClasses,
    /// Whole rows of these tables flow into the value: JSON is masked key by key (name hints
    /// and the rules on these tables); any other value as `row_classes`.
    pub rows: Vec<Table>,
    /// Classes of every rule naming a column of `rows`.
    pub row_classes: DataClasses,
}

impl Table {
    /// The table as the mask crate's rules take it.
    pub fn as_ref(&self) -> TableRef<'_> {
        TableRef {
            schema: self.schema.as_deref(),
            name: &self.name,
        }
    }
}

impl Origin {
    fn extend(&mut self, other: &Origin) {
        for c in &other.columns {
            if !self.columns.contains(c) {
                self.columns.push(c.clone());
            }
        }
        for t in &other.rows {
            self.add_row(t.clone());
        }
    }

    fn add_row(&mut self, table: Table) {
        if !self.rows.contains(&table) {
            self.rows.push(table);
        }
    }

    fn add_column(&mut self, tables: Vec<Table>, column: &str) {
        let source = Source {
            tables,
            column: column.to_owned(),
        };
        if !self.columns.contains(&source) {
            self.columns.push(source);
        }
    }
}

impl Outputs {
    /// Everything any target reads, with the tables of stars as whole rows.
    fn everything(&self) -> Origin {
        let mut all = Origin::default();
        for t in &self.targets {
            match t {
                Target::Expr { origin, .. } => all.extend(origin),
                Target::Star { tables, origin } => {
                    all.extend(origin);
                    for table in tables {
                        all.add_row(table.clone());
                    }
                }
            }
        }
        all
    }

    /// What a reference to output column `name` of this query reads; false when nothing
    /// here can be it.
    fn lookup(&self, name: &str, out: &mut Origin) -> bool {
        if self.mixed {
            out.extend(&self.everything());
            return true;
        }
        let mut found = false;
        for t in &self.targets {
            if let Target::Expr { name: n, origin } = t
                && n == name
            {
                out.extend(origin);
                found = true;
            }
        }
        if found {
            return true;
        }
        for t in &self.targets {
            if let Target::Star { tables, origin } = t {
                out.extend(origin);
                if !tables.is_empty() {
                    out.add_column(tables.clone(), name);
                    found = true;
                }
            }
        }
        found
    }

    /// Renames the leading outputs (`AS s(a, b)`, a CTE's column list).
    fn rename(&mut self, names: &[String]) {
        let mut names = names.iter();
        for t in &mut self.targets {
            match t {
                Target::Expr { name, .. } => match names.next() {
                    Some(new) => *name = new.clone(),
                    None => return,
                },
                // Which column a name after a star lands on is not known: keep the rest.
                Target::Star { .. } => {
                    if names.len() > 0 {
                        self.mixed = true;
                    }
                    return;
                }
            }
        }
    }

    /// Whether no source column's name announces a class and no star or whole row is read.
    fn unhinted(&self) -> bool {
        let origin_unhinted =
            |o: &Origin| o.rows.is_empty() && o.columns.iter().all(|c| column_hint(&c.column).is_none());
        !self.mixed
            && self.targets.iter().all(|t| match t {
                Target::Expr { origin, .. } => origin_unhinted(origin),
                Target::Star { .. } => false,
            })
    }

    fn finished(mut self) -> Self {
        self.quiet = self.unhinted();
        self
    }

    /// The trace of each of `names.len()` result columns (a name is empty when the result
    /// does not name its columns, as COPY does not), with `rules`.
    pub fn trace_columns(&self, names: &[&str], rules: &ColumnRules) -> Vec<ColumnTrace> {
        let n = names.len();
        // Adjacent stars (`a.*, b.*`, `*` over a join): their columns may come from any of them.
        let star_union = {
            let mut tables = Vec::new();
            let mut origin = Origin::default();
            for t in &self.targets {
                if let Target::Star { tables: ts, origin: o } = t {
                    for table in ts {
                        if !tables.contains(table) {
                            tables.push(table.clone());
                        }
                    }
                    origin.extend(o);
                }
            }
            Target::Star { tables, origin }
        };
        let is_star = |t: &Target| matches!(t, Target::Star { .. });
        let targets = &self.targets;
        let first = targets.iter().position(is_star);
        let last = targets.iter().rposition(is_star);
        let assigned: Option<Vec<&Target>> = match (self.mixed, first, last) {
            (true, _, _) => None,
            (false, None, _) => (targets.len() == n).then(|| targets.iter().collect()),
            (false, Some(first), Some(last)) => {
                let suffix = targets.len() - last - 1;
                let stars_only = targets[first..=last].iter().all(is_star);
                (stars_only && first + suffix <= n).then(|| {
                    (0..n)
                        .map(|i| {
                            if i < first {
                                &targets[i]
                            } else if i >= n - suffix {
                                &targets[targets.len() - (n - i)]
                            } else if first == last {
                                &targets[first]
                            } else {
                                &star_union
                            }
                        })
                        .collect()
                })
            }
            (false, Some(_), None) => None,
        };
        match assigned {
            Some(assigned) => names
                .iter()
                .zip(assigned)
                .map(|(name, target)| trace_target(target, name, rules))
                .collect(),
            None => {
                // Positions are not known: every column derives from everything.
                let all = self.everything();
                names
                    .iter()
                    .map(|name| {
                        let mut trace = trace_origin(&all, rules);
                        let named = trace_target(&star_union, name, rules);
                        trace.classes = trace.classes.union(named.classes);
                        trace
                    })
                    .collect()
            }
        }
    }
}

fn trace_target(target: &Target, name: &str, rules: &ColumnRules) -> ColumnTrace {
    match target {
        Target::Expr { origin, .. } => trace_origin(origin, rules),
        Target::Star { tables, origin } => {
            let mut trace = trace_origin(origin, rules);
            let refs: Vec<TableRef<'_>> = tables.iter().map(Table::as_ref).collect();
            let classes = if name.is_empty() {
                // No column name (COPY): every field of a table with rules is masked as
                // their strictest class; name hints cannot apply.
                refs.iter()
                    .fold(DataClasses::EMPTY, |acc, t| acc.union(rules.table_classes(*t)))
            } else if refs.is_empty() {
                rules.bare_column_classes(name)
            } else {
                rules.column_classes(&refs, name)
            };
            trace.classes = trace.classes.union(classes);
            trace
        }
    }
}

/// The classes an origin carries: name hints and rules of each source column, and the rules
/// on each whole row.
fn trace_origin(origin: &Origin, rules: &ColumnRules) -> ColumnTrace {
    let mut classes = DataClasses::EMPTY;
    for source in &origin.columns {
        let refs: Vec<TableRef<'_>> = source.tables.iter().map(Table::as_ref).collect();
        classes = classes
            .with_opt(column_hint(&source.column))
            .union(rules.column_classes(&refs, &source.column));
    }
    let row_classes = origin
        .rows
        .iter()
        .fold(DataClasses::EMPTY, |acc, t| acc.union(rules.table_classes(t.as_ref())));
    ColumnTrace {
        classes,
        rows: origin.rows.clone(),
        row_classes,
    }
}

impl ColumnTrace {
    /// Whether this trace adds anything to masking by name and content.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty() && self.rows.is_empty() && self.row_classes.is_empty()
    }
}

impl Provenance {
    /// Whether no column of this statement's result can be traced to a class with `rules`:
    /// the relay then skips tracing (the common case without column rules).
    pub fn traces_nothing(&self, rules: &ColumnRules) -> bool {
        match self {
            Provenance::Rows(outputs) => outputs.quiet && rules.is_empty(),
            _ => true,
        }
    }

    /// The traces of a result's columns, `None` for a column masked by name and content
    /// alone (as every column of an untraced statement is).
    pub fn trace_columns(&self, names: &[&str], rules: &ColumnRules) -> Vec<Option<ColumnTrace>> {
        if self.traces_nothing(rules) {
            return vec![None; names.len()];
        }
        match self {
            Provenance::Untraced | Provenance::Defines { .. } | Provenance::Uses { .. } => vec![None; names.len()],
            Provenance::Rows(outputs) => outputs
                .trace_columns(names, rules)
                .into_iter()
                .zip(names)
                .map(|(mut trace, name)| {
                    if trace.is_empty() {
                        return None;
                    }
                    // The column's own name still counts, as it does untraced.
                    trace.classes = trace
                        .classes
                        .with_opt(column_hint(name))
                        .union(rules.bare_column_classes(name));
                    Some(trace)
                })
                .collect(),
        }
    }
}

/// The provenance of one statement, from its parse tree in serialised form (a single-key
/// object naming the node type, as `classify` produces it).
pub fn trace(tree: &Value) -> Provenance {
    let Some((kind, node)) = node_of(tree) else {
        return Provenance::Untraced;
    };
    let ctes = Ctes::default();
    match kind {
        "SelectStmt" => Provenance::Rows(select(node, None, &ctes).finished()),
        "CopyStmt" => {
            if node.get("is_from").and_then(Value::as_bool) == Some(true) {
                return Provenance::Untraced;
            }
            if let Some((_, query)) = node.get("query").and_then(node_of) {
                return Provenance::Rows(statement_rows(query_kind(node.get("query")), query, None, &ctes).finished());
            }
            let Some(table) = node.get("relation").and_then(range_var_table) else {
                return Provenance::Untraced;
            };
            let columns: Vec<String> = array(node, "attlist").iter().filter_map(|n| string_node(n)).collect();
            if columns.is_empty() {
                return Provenance::Rows(Outputs {
                    targets: vec![Target::Star {
                        tables: vec![table],
                        origin: Origin::default(),
                    }],
                    mixed: false,
                    quiet: false,
                });
            }
            let targets = columns
                .into_iter()
                .map(|c| {
                    let mut origin = Origin::default();
                    origin.add_column(vec![table.clone()], &c);
                    Target::Expr { name: c, origin }
                })
                .collect();
            Provenance::Rows(Outputs {
                targets,
                mixed: false,
                quiet: false,
            })
        }
        "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
            Provenance::Rows(statement_rows(kind, node, None, &ctes).finished())
        }
        "DeclareCursorStmt" | "PrepareStmt" => {
            let (kind, key) = if kind == "PrepareStmt" {
                (Named::Prepared, "name")
            } else {
                (Named::Cursor, "portalname")
            };
            let query = node.get("query");
            let rows = match query.and_then(node_of) {
                Some((k, q)) => statement_rows(k, q, None, &ctes),
                None => Outputs::default(),
            };
            Provenance::Defines {
                kind,
                name: str_field(node, key).to_owned(),
                rows: rows.finished(),
            }
        }
        "FetchStmt" => Provenance::Uses {
            kind: Named::Cursor,
            name: str_field(node, "portalname").to_owned(),
        },
        "ExecuteStmt" => Provenance::Uses {
            kind: Named::Prepared,
            name: str_field(node, "name").to_owned(),
        },
        _ => Provenance::Untraced,
    }
}

fn query_kind(v: Option<&Value>) -> &str {
    v.and_then(node_of).map_or("", |(k, _)| k)
}

/// The rows a query-like node returns: a SELECT's targets or a DML statement's RETURNING.
fn statement_rows(kind: &str, node: &Value, parent: Option<&Scope<'_>>, ctes: &Ctes<'_>) -> Outputs {
    match kind {
        "SelectStmt" => select(node, parent, ctes),
        "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => returning(node, parent, ctes),
        _ => Outputs::default(),
    }
}

/// Common table expressions visible at a point of the statement, innermost first.
#[derive(Default)]
struct Ctes<'p> {
    list: Vec<(String, Outputs)>,
    parent: Option<&'p Ctes<'p>>,
}

impl Ctes<'_> {
    fn get(&self, name: &str) -> Option<&Outputs> {
        self.list
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, o)| o)
            .or_else(|| self.parent.and_then(|p| p.get(name)))
    }
}

/// The FROM items a column reference can name, and the enclosing query's for correlated
/// references.
struct Scope<'p> {
    items: Vec<Item>,
    /// A `USING` or `NATURAL` join moves its merged columns first: `*` order is not the
    /// items' order.
    reordered: bool,
    parent: Option<&'p Scope<'p>>,
}

#[derive(Clone)]
struct Item {
    alias: String,
    kind: ItemKind,
}

#[derive(Clone)]
enum ItemKind {
    Table(Table),
    Derived(Outputs),
    /// A function in FROM: its columns are computed from its arguments.
    Function(Origin),
}

impl Item {
    fn whole_row(&self, out: &mut Origin) {
        match &self.kind {
            ItemKind::Table(t) => out.add_row(t.clone()),
            ItemKind::Derived(outputs) => out.extend(&outputs.everything()),
            ItemKind::Function(origin) => out.extend(origin),
        }
    }

    /// `alias.column`.
    fn column(&self, column: &str, out: &mut Origin) {
        match &self.kind {
            ItemKind::Table(t) => out.add_column(vec![t.clone()], column),
            ItemKind::Derived(outputs) => {
                if !outputs.lookup(column, out) {
                    // Not a column of the subquery: a whole-row field or an error; be safe.
                    out.extend(&outputs.everything());
                }
            }
            ItemKind::Function(origin) => out.extend(origin),
        }
    }

    /// The targets `alias.*` stands for.
    fn star(&self) -> Outputs {
        match &self.kind {
            ItemKind::Table(t) => Outputs {
                targets: vec![Target::Star {
                    tables: vec![t.clone()],
                    origin: Origin::default(),
                }],
                mixed: false,
                quiet: false,
            },
            ItemKind::Derived(outputs) => outputs.clone(),
            ItemKind::Function(origin) => Outputs {
                targets: vec![Target::Star {
                    tables: Vec::new(),
                    origin: origin.clone(),
                }],
                mixed: false,
                quiet: false,
            },
        }
    }
}

impl<'p> Scope<'p> {
    fn find(&self, alias: &str) -> Option<&Item> {
        self.items
            .iter()
            .find(|i| i.alias == alias)
            .or_else(|| self.parent.and_then(|p| p.find(alias)))
    }

    fn tables(&self) -> Vec<Table> {
        let mut tables = Vec::new();
        for item in &self.items {
            if let ItemKind::Table(t) = &item.kind
                && !tables.contains(t)
            {
                tables.push(t.clone());
            }
        }
        tables
    }

    /// An unqualified `column`: from this query's items, else from the enclosing query's.
    fn column(&self, column: &str, out: &mut Origin) {
        let mut found = false;
        for item in &self.items {
            match &item.kind {
                ItemKind::Table(_) => {}
                ItemKind::Derived(outputs) => found |= outputs.lookup(column, out),
                ItemKind::Function(origin) => out.extend(origin),
            }
        }
        let tables = self.tables();
        if !tables.is_empty() {
            out.add_column(tables, column);
            found = true;
        }
        // A bare name may also be a whole row (`row_to_json(c)`): both, to be safe.
        if let Some(item) = self.items.iter().find(|i| i.alias == column) {
            item.whole_row(out);
            found = true;
        }
        if !found {
            match self.parent {
                Some(parent) => parent.column(column, out),
                None => out.add_column(Vec::new(), column),
            }
        }
    }

    /// `*` in a target list.
    fn star(&self) -> Outputs {
        if self.reordered {
            let mut origin = Origin::default();
            for item in &self.items {
                match &item.kind {
                    ItemKind::Table(_) => {}
                    ItemKind::Derived(o) => origin.extend(&o.everything()),
                    ItemKind::Function(o) => origin.extend(o),
                }
            }
            return Outputs {
                targets: vec![Target::Star {
                    tables: self.tables(),
                    origin,
                }],
                mixed: false,
                quiet: false,
            };
        }
        let mut out = Outputs::default();
        for item in &self.items {
            let part = item.star();
            out.mixed |= part.mixed;
            out.targets.extend(part.targets);
        }
        out
    }
}

fn select(s: &Value, parent: Option<&Scope<'_>>, outer: &Ctes<'_>) -> Outputs {
    let mut ctes = Ctes {
        list: Vec::new(),
        parent: Some(outer),
    };
    if let Some(with) = s.get("with_clause").filter(|w| !w.is_null()) {
        for cte in array(with, "ctes") {
            let Some(("CommonTableExpr", cte)) = node_of(cte) else {
                continue;
            };
            let name = str_field(cte, "ctename").to_owned();
            let query = cte.get("ctequery");
            let mut outputs = match query.and_then(node_of) {
                Some((kind, q)) => statement_rows(kind, q, parent, &ctes),
                None => Outputs::default(),
            };
            let names: Vec<String> = array(cte, "aliascolnames")
                .iter()
                .filter_map(|n| string_node(n))
                .collect();
            outputs.rename(&names);
            ctes.list.push((name, outputs));
        }
    }
    let op = s.get("op").and_then(Value::as_i64).unwrap_or(1);
    if op > 1 {
        let branch = |k: &str| match s.get(k).filter(|v| !v.is_null()) {
            Some(b) => select(b, parent, &ctes),
            None => Outputs::default(),
        };
        return combine(branch("larg"), branch("rarg"));
    }
    let values = array(s, "values_lists");
    if !values.is_empty() {
        let scope = Scope {
            items: Vec::new(),
            reordered: false,
            parent,
        };
        let mut columns: Vec<Origin> = Vec::new();
        for row in values {
            let items = row
                .get("node")
                .and_then(|n| n.get("List"))
                .map(|l| array(l, "items"))
                .unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                if columns.len() <= i {
                    columns.push(Origin::default());
                }
                expr(item, &scope, &ctes, &mut columns[i]);
            }
        }
        return Outputs {
            targets: columns
                .into_iter()
                .enumerate()
                .map(|(i, origin)| Target::Expr {
                    name: format!("column{}", i + 1),
                    origin,
                })
                .collect(),
            mixed: false,
            quiet: false,
        };
    }
    let mut scope = Scope {
        items: Vec::new(),
        reordered: false,
        parent,
    };
    for item in array(s, "from_clause") {
        from_item(item, &mut scope, &ctes);
    }
    targets(array(s, "target_list"), &scope, &ctes)
}

/// A DML statement's RETURNING list, over its target table and its FROM/USING items.
fn returning(s: &Value, parent: Option<&Scope<'_>>, outer: &Ctes<'_>) -> Outputs {
    let list = s
        .get("returning_clause")
        .filter(|r| !r.is_null())
        .map(|r| array(r, "exprs"))
        .unwrap_or_default();
    if list.is_empty() {
        return Outputs::default();
    }
    let mut scope = Scope {
        items: Vec::new(),
        reordered: false,
        parent,
    };
    if let Some(relation) = s.get("relation").filter(|r| !r.is_null()) {
        range_var(relation, &mut scope, outer);
    }
    for key in ["from_clause", "using_clause"] {
        for item in array(s, key) {
            from_item(item, &mut scope, outer);
        }
    }
    if let Some(source) = s.get("source_relation").filter(|r| !r.is_null()) {
        from_item(source, &mut scope, outer);
    }
    targets(list, &scope, outer)
}

/// The branches of UNION / INTERSECT / EXCEPT: column by column when they line up.
fn combine(l: Outputs, r: Outputs) -> Outputs {
    let aligned = !l.mixed
        && !r.mixed
        && l.targets.len() == r.targets.len()
        && l.targets
            .iter()
            .zip(&r.targets)
            .all(|(a, b)| matches!(a, Target::Star { .. }) == matches!(b, Target::Star { .. }));
    if !aligned {
        let mut targets = l.targets;
        targets.extend(r.targets);
        return Outputs {
            targets,
            mixed: true,
            quiet: false,
        };
    }
    let targets = l
        .targets
        .into_iter()
        .zip(r.targets)
        .map(|(a, b)| match (a, b) {
            (Target::Expr { name, mut origin }, Target::Expr { origin: o, .. }) => {
                origin.extend(&o);
                Target::Expr { name, origin }
            }
            (Target::Star { mut tables, mut origin }, Target::Star { tables: t2, origin: o2 }) => {
                for t in t2 {
                    if !tables.contains(&t) {
                        tables.push(t);
                    }
                }
                origin.extend(&o2);
                Target::Star { tables, origin }
            }
            (a, _) => a,
        })
        .collect();
    Outputs {
        targets,
        mixed: false,
        quiet: false,
    }
}

fn targets(list: Vec<&Value>, scope: &Scope<'_>, ctes: &Ctes<'_>) -> Outputs {
    let mut out = Outputs::default();
    for target in list {
        let Some(("ResTarget", res)) = node_of(target) else {
            continue;
        };
        let Some(val) = res.get("val").filter(|v| !v.is_null()) else {
            continue;
        };
        // `*` and `t.*`.
        if let Some(("ColumnRef", cref)) = node_of(val) {
            let fields = array(cref, "fields");
            if fields.last().is_some_and(|f| is_star(f)) {
                let names: Vec<String> = fields.iter().filter_map(|f| string_node(f)).collect();
                let part = match names.last() {
                    None => scope.star(),
                    Some(alias) => match scope.find(alias) {
                        Some(item) => item.star(),
                        None => Outputs {
                            targets: vec![Target::Star {
                                tables: vec![table_of(&names)],
                                origin: Origin::default(),
                            }],
                            mixed: false,
                            quiet: false,
                        },
                    },
                };
                out.mixed |= part.mixed;
                out.targets.extend(part.targets);
                continue;
            }
        }
        // `(expr).*`: the fields of a composite value.
        if let Some(("AIndirection", ind)) = node_of(val)
            && array(ind, "indirection").last().is_some_and(|f| is_star(f))
        {
            let mut origin = Origin::default();
            if let Some(arg) = ind.get("arg") {
                expr(arg, scope, ctes, &mut origin);
            }
            let tables = std::mem::take(&mut origin.rows);
            out.targets.push(Target::Star { tables, origin });
            continue;
        }
        let mut origin = Origin::default();
        expr(val, scope, ctes, &mut origin);
        let name = match str_field(res, "name") {
            "" => inferred_name(val),
            n => n.to_owned(),
        };
        out.targets.push(Target::Expr { name, origin });
    }
    out
}

/// The column name PostgreSQL gives an unaliased output (for lookups through subqueries).
fn inferred_name(val: &Value) -> String {
    match node_of(val) {
        Some(("ColumnRef", c)) => array(c, "fields")
            .last()
            .and_then(|f| string_node(f))
            .unwrap_or_else(|| "?column?".to_owned()),
        Some(("TypeCast", c)) => c.get("arg").map_or_else(|| "?column?".to_owned(), inferred_name),
        Some(("FuncCall", f)) => array(f, "funcname")
            .last()
            .and_then(|n| string_node(n))
            .unwrap_or_else(|| "?column?".to_owned()),
        Some(("AIndirection", i)) => array(i, "indirection")
            .last()
            .and_then(|n| string_node(n))
            .unwrap_or_else(|| "?column?".to_owned()),
        _ => "?column?".to_owned(),
    }
}

fn from_item(item: &Value, scope: &mut Scope<'_>, ctes: &Ctes<'_>) {
    let Some((kind, node)) = node_of(item) else {
        return;
    };
    match kind {
        "RangeVar" => range_var(node, scope, ctes),
        "RangeSubselect" => {
            let lateral = node.get("lateral").and_then(Value::as_bool) == Some(true);
            let mut outputs = match node.get("subquery").and_then(node_of) {
                Some((kind, q)) => {
                    if lateral {
                        let visible = Scope {
                            items: scope.items.clone(),
                            reordered: false,
                            parent: scope.parent,
                        };
                        statement_rows(kind, q, Some(&visible), ctes)
                    } else {
                        statement_rows(kind, q, scope.parent, ctes)
                    }
                }
                None => Outputs::default(),
            };
            let alias = node.get("alias").filter(|a| !a.is_null());
            outputs.rename(&alias_columns(alias));
            scope.items.push(Item {
                alias: alias.map(|a| str_field(a, "aliasname").to_owned()).unwrap_or_default(),
                kind: ItemKind::Derived(outputs),
            });
        }
        "JoinExpr" => {
            let before = scope.items.len();
            for side in ["larg", "rarg"] {
                if let Some(s) = node.get(side).filter(|s| !s.is_null()) {
                    from_item(s, scope, ctes);
                }
            }
            if !array(node, "using_clause").is_empty() || node.get("is_natural").and_then(Value::as_bool) == Some(true)
            {
                scope.reordered = true;
            }
            if let Some(alias) = node.get("alias").filter(|a| !a.is_null()) {
                let inner = Scope {
                    items: scope.items[before..].to_vec(),
                    reordered: scope.reordered,
                    parent: None,
                };
                let outputs = inner.star();
                scope.items.push(Item {
                    alias: str_field(alias, "aliasname").to_owned(),
                    kind: ItemKind::Derived(outputs),
                });
            }
        }
        _ => {
            // Functions in FROM (`unnest(...)`, `ROWS FROM`, XMLTABLE, JSON_TABLE, TABLESAMPLE):
            // every column is computed from everything the item reads.
            let visible = Scope {
                items: scope.items.clone(),
                reordered: false,
                parent: scope.parent,
            };
            let mut origin = Origin::default();
            let mut alias = String::new();
            if let Some(map) = node.as_object() {
                for (key, value) in map {
                    if key == "alias" {
                        alias = str_field(value, "aliasname").to_owned();
                    } else {
                        expr(value, &visible, ctes, &mut origin);
                    }
                }
            }
            // A RangeTableSample wraps a RangeVar: its table is read as it is.
            if kind == "RangeTableSample"
                && let Some(relation) = node.get("relation")
            {
                from_item(relation, scope, ctes);
                return;
            }
            if alias.is_empty() {
                alias = first_function_name(node).unwrap_or_default();
            }
            scope.items.push(Item {
                alias,
                kind: ItemKind::Function(origin),
            });
        }
    }
}

fn first_function_name(node: &Value) -> Option<String> {
    match node {
        Value::Object(map) => {
            if let Some(f) = map.get("FuncCall") {
                return array(f, "funcname").last().and_then(|n| string_node(n));
            }
            map.values().find_map(first_function_name)
        }
        Value::Array(items) => items.iter().find_map(first_function_name),
        _ => None,
    }
}

fn range_var(node: &Value, scope: &mut Scope<'_>, ctes: &Ctes<'_>) {
    let name = str_field(node, "relname");
    let schema = str_field(node, "schemaname");
    let alias = node.get("alias").filter(|a| !a.is_null());
    let alias_name = alias
        .map(|a| str_field(a, "aliasname"))
        .filter(|a| !a.is_empty())
        .unwrap_or(name);
    let kind = match ctes.get(name).filter(|_| schema.is_empty()) {
        Some(outputs) => {
            let mut outputs = outputs.clone();
            outputs.rename(&alias_columns(alias));
            ItemKind::Derived(outputs)
        }
        None => {
            let table = Table {
                schema: (!schema.is_empty()).then(|| schema.to_owned()),
                name: name.to_owned(),
            };
            if alias.is_some_and(|a| !array(a, "colnames").is_empty()) {
                // `FROM t AS x(a, b)` renames the table's columns by position, which only the
                // catalog knows: every column of it may be any column of t.
                let mut origin = Origin::default();
                origin.add_row(table);
                ItemKind::Function(origin)
            } else {
                ItemKind::Table(table)
            }
        }
    };
    scope.items.push(Item {
        alias: alias_name.to_owned(),
        kind,
    });
}

/// Collects what an expression reads.
fn expr(v: &Value, scope: &Scope<'_>, ctes: &Ctes<'_>, out: &mut Origin) {
    match v {
        Value::Object(map) => {
            if let Some(c) = map.get("ColumnRef") {
                column_ref(c, scope, out);
                return;
            }
            if let Some(s) = map.get("SubLink") {
                // EXISTS (1) only tells whether rows exist.
                if s.get("sub_link_type").and_then(Value::as_i64) != Some(1) {
                    if let Some(t) = s.get("testexpr") {
                        expr(t, scope, ctes, out);
                    }
                    if let Some((kind, q)) = s.get("subselect").and_then(node_of) {
                        out.extend(&statement_rows(kind, q, Some(scope), ctes).everything());
                    }
                }
                return;
            }
            if map.contains_key("NullTest") {
                return;
            }
            if let Some(f) = map.get("FuncCall")
                && array(f, "funcname").last().and_then(|n| string_node(n)).as_deref() == Some("count")
            {
                return;
            }
            if let Some(i) = map.get("AIndirection")
                && let Some(("ColumnRef", c)) = i.get("arg").and_then(node_of)
                && let [single] = array(c, "fields").as_slice()
                && let Some(alias) = string_node(single)
                && let Some(item) = scope.find(&alias)
                && let [field] = array(i, "indirection").as_slice()
                && let Some(field) = string_node(field)
            {
                // `(c).email`: a column of c.
                item.column(&field, out);
                return;
            }
            for (key, inner) in map {
                if key != "location" {
                    expr(inner, scope, ctes, out);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                expr(item, scope, ctes, out);
            }
        }
        _ => {}
    }
}

fn column_ref(c: &Value, scope: &Scope<'_>, out: &mut Origin) {
    let fields = array(c, "fields");
    let star = fields.last().is_some_and(|f| is_star(f));
    let names: Vec<String> = fields.iter().filter_map(|f| string_node(f)).collect();
    match (names.as_slice(), star) {
        ([], true) => {
            // `*` inside an expression: every row of every item.
            for item in &scope.items {
                item.whole_row(out);
            }
        }
        ([alias], true) => match scope.find(alias) {
            Some(item) => item.whole_row(out),
            None => out.add_row(table_of(&names)),
        },
        ([column], false) => scope.column(column, out),
        ([alias, column], false) => match scope.find(alias) {
            Some(item) => item.column(column, out),
            None => out.add_column(vec![table_of(std::slice::from_ref(alias))], column),
        },
        (parts, _) => {
            // schema.table.column (or with a catalog, or a whole row `schema.table.*`).
            let (table, column) = if star {
                (parts, None)
            } else {
                let (column, table) = parts.split_last().map_or((None, parts), |(c, t)| (Some(c), t));
                (table, column)
            };
            let table = table_of(table);
            match column {
                Some(column) => out.add_column(vec![table], column),
                None => out.add_row(table),
            }
        }
    }
}

/// `[schema, table]` or `[catalog, schema, table]` or `[table]`.
fn table_of(parts: &[String]) -> Table {
    match parts {
        [.., schema, table] => Table {
            schema: Some(schema.clone()),
            name: table.clone(),
        },
        [table] => Table {
            schema: None,
            name: table.clone(),
        },
        [] => Table {
            schema: None,
            name: String::new(),
        },
    }
}

fn range_var_table(v: &Value) -> Option<Table> {
    let name = str_field(v, "relname");
    if name.is_empty() {
        return None;
    }
    let schema = str_field(v, "schemaname");
    Some(Table {
        schema: (!schema.is_empty()).then(|| schema.to_owned()),
        name: name.to_owned(),
    })
}

/// `{"node": {"Kind": {...}}}` or `{"Kind": {...}}` -> ("Kind", {...}).
fn node_of(v: &Value) -> Option<(&str, &Value)> {
    let map = v.as_object()?;
    let inner = match map.get("node") {
        Some(n) if map.len() == 1 => n.as_object()?,
        _ => map,
    };
    if inner.len() != 1 {
        return None;
    }
    inner.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn array<'a>(v: &'a Value, key: &str) -> Vec<&'a Value> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The column names an `Alias` node gives (`AS x(a, b)`); empty without an alias.
fn alias_columns(alias: Option<&Value>) -> Vec<String> {
    alias
        .map(|a| array(a, "colnames"))
        .unwrap_or_default()
        .iter()
        .filter_map(|n| string_node(n))
        .collect()
}

/// A `String` node's text.
fn string_node(v: &Value) -> Option<String> {
    match node_of(v) {
        Some(("String", s)) => s.get("sval").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn is_star(v: &Value) -> bool {
    matches!(node_of(v), Some(("AStar", _)))
}

#[cfg(test)]
mod tests;
