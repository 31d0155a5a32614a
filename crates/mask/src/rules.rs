//! Column rules: the operator names columns whose values are of a class although neither
//! their name nor their content shows it (`customers.full_name` is a secret, `ssn_last4` an
//! SSN). Frontends consult them, with the built-in name hints, for every column a result
//! value comes from.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{DataClass, DataClasses};

/// The `[mask]` config section.
///
/// ```toml
/// [mask]
/// columns = { "customers.full_name" = "secret", "ssn_last4" = "ssn", "billing.cards.holder" = "card" }
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// `column`, `table.column` or `schema.table.column` → data class. Names compare
    /// ASCII case-insensitively; a bare column name applies in every table.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

/// A table as a statement names it: the schema when it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRef<'a> {
    /// Schema, when the statement qualifies the table.
    pub schema: Option<&'a str>,
    /// Table (or view) name.
    pub name: &'a str,
}

/// Validated column rules, ready for lookups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnRules {
    rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    schema: Option<String>,
    table: Option<String>,
    column: String,
    class: DataClass,
}

static NO_RULES: ColumnRules = ColumnRules { rules: Vec::new() };

impl MaskConfig {
    /// The rules, or a message naming the offending key.
    pub fn rules(&self) -> Result<ColumnRules, String> {
        let mut rules = Vec::with_capacity(self.columns.len());
        for (name, class) in &self.columns {
            let key = format!("mask.columns.{name:?}");
            let class = DataClass::parse(class).ok_or_else(|| {
                format!(
                    "{key}: unknown data class {class:?} (expected one of {})",
                    DataClass::ALL.map(|c| c.as_str()).join(", ")
                )
            })?;
            let parts: Vec<&str> = name.split('.').map(str::trim).collect();
            if parts.iter().any(|p| p.is_empty()) {
                return Err(format!(
                    "{key}: name a column as `column`, `table.column` or `schema.table.column`, with no empty part"
                ));
            }
            let lower = |s: &str| s.to_ascii_lowercase();
            let rule = match parts.as_slice() {
                [column] => Rule {
                    schema: None,
                    table: None,
                    column: lower(column),
                    class,
                },
                [table, column] => Rule {
                    schema: None,
                    table: Some(lower(table)),
                    column: lower(column),
                    class,
                },
                [schema, table, column] => Rule {
                    schema: Some(lower(schema)),
                    table: Some(lower(table)),
                    column: lower(column),
                    class,
                },
                _ => {
                    return Err(format!(
                        "{key}: name a column as `column`, `table.column` or `schema.table.column`"
                    ));
                }
            };
            rules.push(rule);
        }
        Ok(ColumnRules { rules })
    }

    /// Checks the section; messages name the key.
    pub fn validate(&self) -> Result<(), String> {
        self.rules().map(drop)
    }
}

impl ColumnRules {
    /// No rules at all.
    pub fn none() -> &'static ColumnRules {
        &NO_RULES
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Adds a rule for `column` of `schema.table` (a view whose column the gateway traced
    /// to a class); false when an equal rule was there already.
    pub fn add(&mut self, schema: &str, table: &str, column: &str, class: DataClass) -> bool {
        let rule = Rule {
            schema: Some(schema.to_ascii_lowercase()),
            table: Some(table.to_ascii_lowercase()),
            column: column.to_ascii_lowercase(),
            class,
        };
        if self.rules.contains(&rule) {
            return false;
        }
        self.rules.push(rule);
        true
    }

    /// The classes of column `column` read from one of `tables`. With no table known, every
    /// rule naming the column applies (the gateway cannot tell which table it is in).
    pub fn column_classes(&self, tables: &[TableRef<'_>], column: &str) -> DataClasses {
        self.rules
            .iter()
            .filter(|r| r.column.eq_ignore_ascii_case(column))
            .filter(|r| tables.is_empty() || tables.iter().any(|t| r.names_table(*t)))
            .map(|r| r.class)
            .collect()
    }

    /// The classes of the rules that name no table: they apply to a result column by its
    /// name alone.
    pub fn bare_column_classes(&self, column: &str) -> DataClasses {
        self.rules
            .iter()
            .filter(|r| r.table.is_none() && r.column.eq_ignore_ascii_case(column))
            .map(|r| r.class)
            .collect()
    }

    /// The classes of every rule naming a column of `table`: what a whole row of it may hold.
    pub fn table_classes(&self, table: TableRef<'_>) -> DataClasses {
        self.rules
            .iter()
            .filter(|r| r.table.is_some() && r.names_table(table))
            .map(|r| r.class)
            .collect()
    }
}

impl Rule {
    /// A rule without a table names every table; a rule's schema must match when the
    /// statement names one (an unqualified table may be in any schema on the search path).
    fn names_table(&self, t: TableRef<'_>) -> bool {
        let Some(table) = &self.table else {
            return true;
        };
        if !table.eq_ignore_ascii_case(t.name) {
            return false;
        }
        match (&self.schema, t.schema) {
            (Some(rule), Some(named)) => rule.eq_ignore_ascii_case(named),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> MaskConfig {
        MaskConfig {
            columns: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn t<'a>(schema: Option<&'a str>, name: &'a str) -> TableRef<'a> {
        TableRef { schema, name }
    }

    #[test]
    fn added_rules_name_one_view_column_once() {
        let mut rules = ColumnRules::default();
        assert!(rules.add("HR", "Staff", "NM", DataClass::Secret));
        assert!(!rules.add("hr", "staff", "nm", DataClass::Secret), "already there");
        assert!(rules.add("hr", "staff", "nm", DataClass::Email), "another class");
        let both = DataClasses::EMPTY.with(DataClass::Secret).with(DataClass::Email);
        assert_eq!(rules.column_classes(&[t(Some("hr"), "staff")], "nm"), both);
        assert_eq!(rules.column_classes(&[t(None, "staff")], "nm"), both, "unqualified");
        assert!(rules.column_classes(&[t(Some("public"), "staff")], "nm").is_empty());
        assert!(rules.bare_column_classes("nm").is_empty(), "never a bare-name rule");
        assert_eq!(rules.table_classes(t(None, "staff")), both);
    }

    #[test]
    fn rules_match_by_column_table_and_schema() {
        let rules = config(&[
            ("customers.full_name", "secret"),
            ("ssn_last4", "ssn"),
            ("billing.Cards.holder", "card"),
        ])
        .rules()
        .unwrap();
        let secret = DataClasses::EMPTY.with(DataClass::Secret);
        assert_eq!(rules.column_classes(&[t(None, "customers")], "full_name"), secret);
        assert_eq!(
            rules.column_classes(&[t(Some("public"), "Customers")], "FULL_NAME"),
            secret
        );
        assert!(rules.column_classes(&[t(None, "orders")], "full_name").is_empty());
        // No table known: every rule naming the column.
        assert_eq!(rules.column_classes(&[], "full_name"), secret);
        assert_eq!(
            rules.column_classes(&[t(None, "anything")], "ssn_last4"),
            DataClasses::EMPTY.with(DataClass::Ssn)
        );
        let card = DataClasses::EMPTY.with(DataClass::Card);
        assert_eq!(rules.column_classes(&[t(None, "cards")], "holder"), card);
        assert_eq!(rules.column_classes(&[t(Some("billing"), "cards")], "holder"), card);
        assert!(rules.column_classes(&[t(Some("other"), "cards")], "holder").is_empty());
        assert_eq!(
            rules.bare_column_classes("SSN_LAST4"),
            DataClasses::EMPTY.with(DataClass::Ssn)
        );
        assert!(rules.bare_column_classes("full_name").is_empty());
        assert_eq!(rules.table_classes(t(None, "customers")), secret);
        assert!(rules.table_classes(t(None, "orders")).is_empty());
        assert!(ColumnRules::none().is_empty());
    }

    #[test]
    fn bad_rules_are_refused_with_the_key() {
        for (name, class, expect) in [
            ("customers.email", "mail", "unknown data class \"mail\""),
            ("", "email", "no empty part"),
            ("customers.", "email", "no empty part"),
            ("a.b.c.d", "email", "schema.table.column"),
        ] {
            let e = config(&[(name, class)]).validate().unwrap_err();
            assert!(e.contains(expect), "{e}");
            assert!(e.starts_with("mask.columns."), "{e}");
        }
    }

    #[test]
    fn classes_pick_the_most_sensitive() {
        let set: DataClasses = [DataClass::Email, DataClass::Card, DataClass::Phone]
            .into_iter()
            .collect();
        assert_eq!(set.most_sensitive(), Some(DataClass::Card));
        assert_eq!(DataClasses::EMPTY.most_sensitive(), None);
        let m = crate::Masker::new([DataClass::Email, DataClass::Phone]);
        assert_eq!(m.strictest(set), Some(DataClass::Phone));
        assert_eq!(crate::Masker::none().strictest(set), None);
    }
}
