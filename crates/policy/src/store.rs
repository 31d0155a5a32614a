//! Reading a policy directory into one validated, immutable policy set: the schema,
//! every `*.cedar` file, policy ids and approval annotations. The engine swaps whole
//! sets, so everything a decision needs is computed here, once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use cedar_policy::{
    ActionConstraint, Effect, Entities, Entity, EntityTypeName, EntityUid, PolicyId, PolicySet, Schema, ValidationMode,
    Validator,
};

use crate::annotations::{self, ApprovalSpec};
use crate::error::{PolicyError, Problem};
use crate::model::{Namespace, ResourceKind};

/// The schema's file name inside the policy directory.
pub(crate) const SCHEMA_FILE: &str = "schema.cedarschema";
/// The extension of policy files.
const POLICY_EXTENSION: &str = "cedar";

/// What the engine knows about one policy besides its Cedar text.
#[derive(Clone, Debug)]
pub(crate) struct PolicyMeta {
    /// The file, relative to the policy directory.
    pub(crate) file: PathBuf,
    pub(crate) line: usize,
    pub(crate) effect: Effect,
    pub(crate) approval: Option<ApprovalSpec>,
}

/// Entity type names parsed once, since parsing a name costs more than cloning it.
#[derive(Clone, Debug)]
pub(crate) struct TypeNames {
    pub(crate) user: EntityTypeName,
    pub(crate) agent: EntityTypeName,
    pub(crate) group: EntityTypeName,
    pub(crate) database: EntityTypeName,
    pub(crate) host: EntityTypeName,
    pub(crate) cluster: EntityTypeName,
    pub(crate) postgres_action: EntityTypeName,
    pub(crate) ssh_action: EntityTypeName,
    pub(crate) kube_action: EntityTypeName,
    pub(crate) gatehouse_action: EntityTypeName,
}

/// One loaded, validated policy directory.
pub(crate) struct PolicyStore {
    pub(crate) schema: Schema,
    pub(crate) policies: PolicySet,
    /// The same permits without any forbid: `explain` uses it to show which permits a
    /// forbid overrode.
    pub(crate) permits_only: PolicySet,
    pub(crate) meta: HashMap<PolicyId, PolicyMeta>,
    /// Action entities from the schema, so a request carries its action's parents.
    pub(crate) actions: HashMap<EntityUid, Entity>,
    /// Per action, the policies whose action scope can match it. Cedar evaluates every
    /// policy it is given, and a policy whose scope excludes the action can neither be
    /// satisfied nor fail, so deciding with this subset gives the same answer, faster.
    pub(crate) by_action: HashMap<EntityUid, PolicySet>,
    pub(crate) names: TypeNames,
    /// Policy files relative to the directory, sorted.
    pub(crate) files: Vec<PathBuf>,
    pub(crate) warnings: Vec<Problem>,
    pub(crate) generation: u64,
    /// The context attributes any policy reads (`context.x`, `context["x"]`,
    /// `context has x`), sorted; `None` when some policy uses `context` otherwise (as a
    /// whole value), so that no attribute can be called unread. A decision depends on
    /// the context only through these attributes, and the shape of the whole context.
    pub(crate) context_reads: Option<Vec<String>>,
}

/// Names, sizes and modification times of the files a load reads: cheap to compute
/// and different after any save an editor or a deploy tool makes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

/// A policy as parsed from its file, before ids are checked across files.
struct Parsed {
    id: String,
    policy: cedar_policy::Policy,
    meta: PolicyMeta,
}

impl TypeNames {
    fn new() -> Result<Self, String> {
        let name = |s: &str| EntityTypeName::from_str(s).map_err(|e| format!("entity type name {s}: {e}"));
        Ok(Self {
            user: name("User")?,
            agent: name("Agent")?,
            group: name("Group")?,
            database: name("Database")?,
            host: name("Host")?,
            cluster: name("Cluster")?,
            postgres_action: name("Postgres::Action")?,
            ssh_action: name("Ssh::Action")?,
            kube_action: name("Kube::Action")?,
            gatehouse_action: name("Gatehouse::Action")?,
        })
    }

    pub(crate) fn resource(&self, kind: ResourceKind) -> &EntityTypeName {
        match kind {
            ResourceKind::Database => &self.database,
            ResourceKind::Host => &self.host,
            ResourceKind::Cluster => &self.cluster,
        }
    }

    pub(crate) fn action(&self, namespace: Namespace) -> &EntityTypeName {
        match namespace {
            Namespace::Postgres => &self.postgres_action,
            Namespace::Ssh => &self.ssh_action,
            Namespace::Kube => &self.kube_action,
            Namespace::Gatehouse => &self.gatehouse_action,
        }
    }
}

impl PolicyStore {
    /// Loads and strictly validates `dir`; any problem fails the whole load.
    pub(crate) fn load(dir: &Path, generation: u64) -> Result<Self, PolicyError> {
        let mut problems = Vec::new();

        let schema_path = dir.join(SCHEMA_FILE);
        let schema_src = read(&schema_path)?;
        let schema_rel = PathBuf::from(SCHEMA_FILE);
        let mut warnings = Vec::new();
        let schema = match Schema::from_cedarschema_str(&schema_src) {
            Ok((schema, schema_warnings)) => {
                for w in schema_warnings {
                    warnings.extend(Problem::from_diagnostic(&schema_rel, &schema_src, &w));
                }
                Some(schema)
            }
            Err(e) => {
                problems.extend(Problem::from_diagnostic(&schema_rel, &schema_src, &e));
                None
            }
        };

        let files = policy_files(dir)?;
        if files.is_empty() {
            problems.push(Problem::in_file(
                dir,
                "no *.cedar policy files: an empty policy set would deny everything",
            ));
        }
        let mut sources = HashMap::new();
        let mut parsed = Vec::new();
        for rel in &files {
            let src = read(&dir.join(rel))?;
            parse_file(rel, &src, &mut parsed, &mut problems);
            sources.insert(rel.clone(), src);
        }

        let mut seen: BTreeMap<&str, &PolicyMeta> = BTreeMap::new();
        for p in &parsed {
            if let Some(first) = seen.insert(&p.id, &p.meta) {
                problems.push(Problem {
                    file: p.meta.file.clone(),
                    line: Some(p.meta.line),
                    column: Some(1),
                    message: format!(
                        "duplicate policy id {:?}: already used at {}:{}",
                        p.id,
                        first.file.display(),
                        first.line
                    ),
                });
            }
        }
        let (Some(schema), true) = (schema, problems.is_empty()) else {
            return Err(PolicyError::Invalid { problems });
        };

        let mut policies = PolicySet::new();
        let mut permits_only = PolicySet::new();
        let mut meta = HashMap::new();
        for p in parsed {
            let policy = p.policy.new_id(PolicyId::new(&p.id));
            if p.meta.effect == Effect::Permit {
                add(&mut permits_only, policy.clone(), &p.meta, &mut problems);
            }
            add(&mut policies, policy, &p.meta, &mut problems);
            meta.insert(PolicyId::new(&p.id), p.meta);
        }

        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        for e in validation.validation_errors() {
            problems.extend(located(e.policy_id(), e, &meta, &sources));
        }
        for w in validation.validation_warnings() {
            warnings.extend(located(w.policy_id(), w, &meta, &sources));
        }
        problems.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        if !problems.is_empty() {
            return Err(PolicyError::Invalid { problems });
        }

        let names = TypeNames::new().map_err(|message| PolicyError::Invalid {
            problems: vec![Problem::in_file(&schema_rel, message)],
        })?;
        let action_entities = schema.action_entities().map_err(|e| PolicyError::Invalid {
            problems: Problem::from_diagnostic(&schema_rel, &schema_src, &e),
        })?;
        let by_action = policies_by_action(&policies, &action_entities).map_err(|message| PolicyError::Invalid {
            problems: vec![Problem::in_file(&schema_rel, message)],
        })?;
        let actions = action_entities.iter().map(|e| (e.uid(), e.clone())).collect();
        let context_reads = context_reads(&policies);

        Ok(Self {
            schema,
            policies,
            permits_only,
            meta,
            actions,
            by_action,
            names,
            files,
            warnings,
            generation,
            context_reads,
        })
    }
}

/// The context attributes the policies read by name, from each policy's JSON form; `None`
/// when any policy uses `context` in any other way, or cannot be turned into JSON.
pub(crate) fn context_reads(policies: &PolicySet) -> Option<Vec<String>> {
    /// Collects `attr` of every `.`/`has` whose left side is the `context` variable;
    /// false when `context` appears anywhere else.
    fn walk(value: &serde_json::Value, reads: &mut Vec<String>) -> bool {
        match value {
            serde_json::Value::Object(map) => {
                if map.len() == 1 && map.get("Var").and_then(serde_json::Value::as_str) == Some("context") {
                    return false;
                }
                for (key, child) in map {
                    if (key == "." || key == "has")
                        && let Some(access) = child.as_object()
                        && access.len() == 2
                        && let (Some(left), Some(attr)) = (access.get("left"), access.get("attr"))
                        && left.as_object().is_some_and(|l| l.len() == 1)
                        && left.get("Var").and_then(serde_json::Value::as_str) == Some("context")
                    {
                        let Some(attr) = attr.as_str() else {
                            return false;
                        };
                        reads.push(attr.to_owned());
                        continue;
                    }
                    if !walk(child, reads) {
                        return false;
                    }
                }
                true
            }
            serde_json::Value::Array(items) => items.iter().all(|item| walk(item, reads)),
            _ => true,
        }
    }
    let mut reads = Vec::new();
    for policy in policies.policies() {
        let json = policy.to_json().ok()?;
        if !walk(&json, &mut reads) {
            return None;
        }
    }
    reads.sort();
    reads.dedup();
    Some(reads)
}

/// For each action, the policies whose action scope admits it (itself or an action group
/// it belongs to, or any action).
fn policies_by_action(policies: &PolicySet, actions: &Entities) -> Result<HashMap<EntityUid, PolicySet>, String> {
    let mut by_action = HashMap::new();
    for action in actions.iter() {
        let uid = action.uid();
        let mut lineage: HashSet<EntityUid> = actions.ancestors(&uid).into_iter().flatten().cloned().collect();
        lineage.insert(uid.clone());
        let mut subset = PolicySet::new();
        for policy in policies.policies() {
            let applies = match policy.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(a) => lineage.contains(&a),
                ActionConstraint::In(list) => list.iter().any(|a| lineage.contains(a)),
            };
            if applies {
                subset
                    .add(policy.clone())
                    .map_err(|e| format!("indexing policy {} by action: {e}", policy.id()))?;
            }
        }
        by_action.insert(uid, subset);
    }
    Ok(by_action)
}

impl Fingerprint {
    /// Fingerprints the files `PolicyStore::load` would read.
    pub(crate) fn of(dir: &Path) -> Result<Self, PolicyError> {
        let mut entries = Vec::new();
        let mut paths = vec![PathBuf::from(SCHEMA_FILE)];
        paths.extend(policy_files(dir)?);
        for rel in paths {
            let full = dir.join(&rel);
            let md = fs::metadata(&full).map_err(|source| PolicyError::Io { path: full, source })?;
            entries.push((rel, md.len(), md.modified().ok()));
        }
        Ok(Self(entries))
    }
}

/// Parses one file. Cedar numbers the policies of a parsed text `policy0`,
/// `policy1`, ... in source order; that index names policies without `@id`.
fn parse_file(rel: &Path, src: &str, out: &mut Vec<Parsed>, problems: &mut Vec<Problem>) {
    let set = match PolicySet::from_str(src) {
        Ok(set) => set,
        Err(errors) => {
            for e in errors.iter() {
                problems.extend(Problem::from_diagnostic(rel, src, e));
            }
            return;
        }
    };
    if set.templates().next().is_some() {
        problems.push(Problem::in_file(
            rel,
            "policy templates (?principal, ?resource) are not supported; write static policies",
        ));
    }
    let mut indexed: Vec<(usize, &cedar_policy::Policy)> = set
        .policies()
        .map(|p| {
            let index = p
                .id()
                .to_string()
                .strip_prefix("policy")
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            (index, p)
        })
        .collect();
    indexed.sort_by_key(|(index, _)| *index);

    let stem = rel.with_extension("");
    let stem = stem.to_string_lossy().replace('\\', "/");
    let mut cursor = 0;
    for (index, policy) in indexed {
        // The policy's own text is a slice of the file: finding it from the end of
        // the previous one gives its line without reaching into Cedar's internals.
        let offset = policy
            .to_cedar()
            .and_then(|text| src.get(cursor..)?.find(&text).map(|at| (cursor + at, text.len())));
        let offset = match offset {
            Some((start, len)) => {
                cursor = start + len;
                start
            }
            None => cursor,
        };
        let location = Problem::at_offset(rel, src, offset, "");
        let line = location.line.unwrap_or(1);
        let id = match policy.annotation(annotations::ID) {
            Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
            Some(_) => {
                problems.push(Problem {
                    message: "@id needs a non-empty value".into(),
                    ..location
                });
                continue;
            }
            None => format!("{stem}:{index}"),
        };
        let approval = match annotations::parse_approval(policy.effect(), policy.annotations()) {
            Ok(approval) => approval,
            Err(message) => {
                problems.push(Problem {
                    message: format!("policy {id:?}: {message}"),
                    ..location
                });
                continue;
            }
        };
        out.push(Parsed {
            id,
            policy: policy.clone(),
            meta: PolicyMeta {
                file: rel.to_path_buf(),
                line,
                effect: policy.effect(),
                approval,
            },
        });
    }
}

fn add(set: &mut PolicySet, policy: cedar_policy::Policy, meta: &PolicyMeta, problems: &mut Vec<Problem>) {
    if let Err(e) = set.add(policy) {
        problems.push(Problem {
            file: meta.file.clone(),
            line: Some(meta.line),
            column: Some(1),
            message: e.to_string(),
        });
    }
}

/// Locates a validator finding in the file of the policy it names; Cedar's spans
/// index into that file's text because each file was parsed whole.
fn located(
    id: &PolicyId,
    diag: &dyn miette::Diagnostic,
    meta: &HashMap<PolicyId, PolicyMeta>,
    sources: &HashMap<PathBuf, String>,
) -> Vec<Problem> {
    match meta.get(id).and_then(|m| Some((&m.file, sources.get(&m.file)?))) {
        Some((file, src)) => Problem::from_diagnostic(file, src, diag)
            .into_iter()
            .map(|mut p| {
                p.message = format!("policy {:?}: {}", id.to_string(), p.message);
                // Cedar has no span for some findings (scope constraints): point at
                // the policy itself rather than at the file.
                if p.line.is_none() {
                    p.line = meta.get(id).map(|m| m.line);
                }
                p
            })
            .collect(),
        None => vec![Problem::in_file(Path::new("?"), diag.to_string())],
    }
}

fn read(path: &Path) -> Result<String, PolicyError> {
    fs::read_to_string(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Every `*.cedar` file under `dir`, relative and sorted. Hidden files and
/// directories are skipped: editors keep lock and swap files there.
pub(crate) fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let full = dir.join(&rel);
        let entries = fs::read_dir(&full).map_err(|source| PolicyError::Io {
            path: full.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| PolicyError::Io {
                path: full.clone(),
                source,
            })?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let child = rel.join(&name);
            let file_type = entry.file_type().map_err(|source| PolicyError::Io {
                path: dir.join(&child),
                source,
            })?;
            // Follow symlinks (Kubernetes ConfigMap mounts are symlinks) by asking
            // for the target's metadata.
            let is_dir = file_type.is_dir() || (file_type.is_symlink() && dir.join(&child).is_dir());
            if is_dir {
                pending.push(child);
            } else if child.extension().is_some_and(|e| e == POLICY_EXTENSION) {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}
