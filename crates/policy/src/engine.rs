//! The policy engine: holds the current policy set behind an `ArcSwap` so that
//! decisions never wait for a reload, and turns Cedar's answer into the gateway's
//! `Decision` (approval annotations, fail-closed on any evaluation error).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use cedar_policy::{
    AuthorizationError, Authorizer, Context, Effect, Entities, Entity, EntityId, EntityUid, PolicyId, PolicySet,
    Request, RequestValidationError, RestrictedExpression,
};

use crate::annotations::ApprovalSpec;
use crate::error::PolicyError;
use crate::model::{AuthzRequest, Decision, Resource};
use crate::store::{Fingerprint, PolicyStore};
use gatehouse_identity::{Identity, PrincipalKind};

/// Loads a policy directory and answers authorization questions against it.
///
/// Cheap to share (`Send + Sync`); `authorize` takes no lock, and `reload` replaces
/// the whole policy set at once, so a decision sees either the old set or the new
/// one, never a mix.
pub struct PolicyEngine {
    dir: PathBuf,
    current: ArcSwap<PolicyStore>,
    /// Serialises reloads so generations count up without gaps or races.
    reload_lock: Mutex<()>,
    last_error: Mutex<Option<String>>,
    /// The files as they were at the last load attempt, good or bad: a broken file
    /// is reported once, not at every poll.
    fingerprint: Mutex<Option<Fingerprint>>,
    authorizer: Authorizer,
}

/// Cedar's answer for one request, with ids sorted so that output is stable.
struct Evaluation {
    allowed: bool,
    /// Satisfied permits when allowed, satisfied forbids when denied.
    reason: Vec<String>,
    /// (policy id, message) for every policy that failed to evaluate.
    errors: Vec<(String, String)>,
}

impl PolicyEngine {
    /// Loads `dir`: the schema `dir/schema.cedarschema` and every `*.cedar` file
    /// below `dir`, strictly validated. Errors name the file and line.
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let fingerprint = Fingerprint::of(dir).ok();
        let store = PolicyStore::load(dir, 1)?;
        tracing::info!(
            dir = %dir.display(),
            policies = store.policies.num_of_policies(),
            files = store.files.len(),
            "Loaded the policy set."
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(store),
            reload_lock: Mutex::new(()),
            last_error: Mutex::new(None),
            fingerprint: Mutex::new(fingerprint),
            authorizer: Authorizer::new(),
        })
    }

    /// Reads the directory again and swaps in the new set if it is valid. On error
    /// the current set stays in force and the error is kept for `last_reload_error`.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let _serialised = self.reload_lock.lock().unwrap_or_else(PoisonError::into_inner);
        // Fingerprint before reading: a save during the load shows up at the next poll.
        let fingerprint = Fingerprint::of(&self.dir).ok();
        let next = self.current.load().generation + 1;
        let result = PolicyStore::load(&self.dir, next);
        *self.fingerprint.lock().unwrap_or_else(PoisonError::into_inner) = fingerprint;
        let mut last_error = self.last_error.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(store) => {
                tracing::info!(
                    generation = next,
                    policies = store.policies.num_of_policies(),
                    "Reloaded the policy set."
                );
                self.current.store(Arc::new(store));
                *last_error = None;
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, "Policy reload failed; the previous policy set stays in force.");
                *last_error = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// The error of the last reload, if it failed; cleared by a successful reload.
    pub fn last_reload_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// True when the schema or a policy file was added, removed or changed since the
    /// last load attempt. Reads only directory entries and metadata.
    pub fn changed_on_disk(&self) -> bool {
        let now = Fingerprint::of(&self.dir).ok();
        *self.fingerprint.lock().unwrap_or_else(PoisonError::into_inner) != now
    }

    /// Starts at 1 and increments on every successful reload; decision caches key on it.
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// The context attributes the policies in force read by name (`None`: some policy
    /// uses the context as a whole, and decisions are not remembered).
    #[cfg(test)]
    pub(crate) fn current_context_reads(&self) -> Option<Vec<String>> {
        self.current.load().context_reads.clone()
    }

    /// Number of policies in force.
    pub fn policy_count(&self) -> usize {
        self.current.load().policies.num_of_policies()
    }

    /// The directory this engine loads from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Decides one request. Never panics and never fails open: a malformed request
    /// or context, or an error in any policy, is a `Deny`.
    pub fn authorize(&self, req: &AuthzRequest<'_>) -> Decision {
        self.authorize_with(req, None)
    }

    /// [`PolicyEngine::authorize`] for a caller that asks many questions as one principal
    /// about one resource (a session): the entities are built once into `cache` and reused
    /// until the policy set changes. The same answers, without rebuilding the entity store
    /// (and Cedar's transitive closure over it) for every request.
    pub fn authorize_cached(&self, req: &AuthzRequest<'_>, cache: &EntityCache) -> Decision {
        self.authorize_with(req, Some(cache))
    }

    fn authorize_with(&self, req: &AuthzRequest<'_>, cache: Option<&EntityCache>) -> Decision {
        let store = self.current.load();
        // Only the policies whose scope admits the action: the same answer, less work.
        let action =
            EntityUid::from_type_name_and_id(store.names.action(req.namespace).clone(), EntityId::new(req.action));
        let policies = store.by_action.get(&action).unwrap_or(&store.policies);
        // A session asks the same questions with different values that no policy reads:
        // the decision is remembered per action, context shape and the values of the
        // attributes policies read (see `memo_key`), for this generation's entities.
        let memo = cache.and_then(|cache| {
            let entities = cache.entities(&store, req).ok()?;
            let key = memo_key(&store, req)?;
            Some((entities, key))
        });
        if let Some((entities, key)) = &memo
            && let Some(decision) = entities.remembered(key)
        {
            return decision;
        }
        match self.evaluate(&store, req, policies, cache) {
            Ok(evaluation) => {
                let decision = decide(&store, evaluation);
                if let Some((entities, key)) = memo {
                    entities.remember(key, &decision);
                }
                decision
            }
            Err(reason) => Decision::deny_request(reason),
        }
    }

    /// Explains a decision for people: the request, the decision, which policies
    /// matched or failed (with file and line), and why that made the decision.
    pub fn explain(&self, req: &AuthzRequest<'_>) -> String {
        let store = self.current.load();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "request:  {} {}::Action::{:?} on {}::{:?} (policy generation {})",
            principal_kind(req.principal),
            req.namespace,
            req.action,
            req.resource.kind,
            req.resource.name,
            store.generation
        );
        let evaluation = match self.evaluate(&store, req, &store.policies, None) {
            Ok(evaluation) => evaluation,
            Err(reason) => {
                let _ = writeln!(out, "decision: deny");
                let _ = writeln!(out, "why:      refused before any policy ran: {reason}");
                return out;
            }
        };
        let describe = |id: &str| -> String {
            let Some(meta) = store.meta.get(&PolicyId::new(id)) else {
                return id.to_owned();
            };
            let effect = match meta.effect {
                Effect::Permit => "permit",
                Effect::Forbid => "forbid",
            };
            let mut line = format!("{effect} {id} ({}:{})", meta.file.display(), meta.line);
            if let Some(spec) = &meta.approval {
                let _ = write!(line, " needs approval by {}", spec.group);
            }
            line
        };
        let decision = decide(
            &store,
            Evaluation {
                allowed: evaluation.allowed,
                reason: evaluation.reason.clone(),
                errors: evaluation.errors.clone(),
            },
        );
        let _ = writeln!(out, "decision: {decision}");
        if evaluation.reason.is_empty() {
            let _ = writeln!(out, "matched:  none");
        } else {
            let _ = writeln!(out, "matched:");
            for id in &evaluation.reason {
                let _ = writeln!(out, "  {}", describe(id));
            }
        }
        if !evaluation.errors.is_empty() {
            let _ = writeln!(out, "errored:");
            for (id, message) in &evaluation.errors {
                let _ = writeln!(out, "  {}: {message}", describe(id));
            }
        }
        let why = match &decision {
            Decision::Deny { .. } if !evaluation.errors.is_empty() => {
                "a policy failed to evaluate, and an error is a denial (fail closed): \
                 a failing forbid must still stop the request"
                    .to_owned()
            }
            Decision::Deny { .. } if !evaluation.allowed && !evaluation.reason.is_empty() => {
                // Show what the forbid overrode: that is what an author usually asks.
                let overridden = self
                    .evaluate(&store, req, &store.permits_only, None)
                    .map(|e| if e.allowed { e.reason } else { Vec::new() })
                    .unwrap_or_default();
                if overridden.is_empty() {
                    "a forbid matched (no permit matched either)".to_owned()
                } else {
                    let _ = writeln!(out, "overridden permits:");
                    for id in &overridden {
                        let _ = writeln!(out, "  {}", describe(id));
                    }
                    "a forbid matched, and a forbid always wins over permits".to_owned()
                }
            }
            Decision::Deny { .. } => "no permit matched, and Cedar denies by default".to_owned(),
            Decision::Allow { .. } => {
                "at least one matching permit needs no approval, and no forbid matched".to_owned()
            }
            Decision::NeedsApproval { policies, .. } => format!(
                "every matching permit needs approval; the first by id, {:?}, sets the \
                 approver group, count and timeout",
                policies.first().map_or("", String::as_str)
            ),
        };
        let _ = writeln!(out, "why:      {why}");
        out
    }

    /// Builds the Cedar request and entities and runs the authorizer on `policies`.
    /// `Err` is a request that cannot be evaluated at all (unknown action, wrong
    /// resource type for the action, context not matching the schema).
    fn evaluate(
        &self,
        store: &PolicyStore,
        req: &AuthzRequest<'_>,
        policies: &PolicySet,
        cache: Option<&EntityCache>,
    ) -> Result<Evaluation, String> {
        let names = &store.names;
        let action = EntityUid::from_type_name_and_id(names.action(req.namespace).clone(), EntityId::new(req.action));
        let Some(action_entity) = store.actions.get(&action) else {
            return Err(format!("unknown action {action}"));
        };
        // Built straight from the JSON values, without the schema: `Request::new` below
        // checks the context against it anyway. (The schema has no entity or extension
        // types in contexts, so plain values are the same values Cedar's JSON parser
        // would make, at a fraction of its cost.)
        let context = context_from_json(&req.context)
            .map_err(|reason| format!("the context of {action} does not match the schema: {reason}"))?;

        let entities = match cache {
            Some(cache) => cache.entities(store, req)?,
            None => Arc::new(SessionEntities::build(store, req, [action_entity.clone()])?),
        };
        // Checking a context against the schema costs as much as the entities did; a
        // session sends the same shapes of context again and again, so each shape is
        // checked once (its values still go to Cedar as they are).
        let shape = cache.and_then(|_| context_shape(req.action, &req.context));
        let checked = shape.as_ref().is_some_and(|shape| entities.checked_shape(shape));
        let request = Request::new(
            entities.principal.clone(),
            action.clone(),
            entities.resource.clone(),
            context,
            (!checked).then_some(&store.schema),
        )
        .map_err(|e| match e {
            // Cedar's message prints the whole context, statement text included.
            RequestValidationError::InvalidContext(_) => {
                let keys = req
                    .context
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                format!(
                    "the context of {action} does not match the schema: an attribute is \
                     missing, unexpected or of the wrong type (attributes given: {keys})"
                )
            }
            other => format!("invalid request: {other}"),
        })?;
        if let Some(shape) = shape
            && !checked
        {
            entities.remember_shape(shape);
        }
        let response = self.authorizer.is_authorized(&request, policies, &entities.entities);
        let mut reason: Vec<String> = response.diagnostics().reason().map(ToString::to_string).collect();
        reason.sort();
        let mut errors: Vec<(String, String)> = response
            .diagnostics()
            .errors()
            .map(|e| match e {
                AuthorizationError::PolicyEvaluationError(e) => (e.policy_id().to_string(), e.inner().to_string()),
            })
            .collect();
        errors.sort();
        Ok(Evaluation {
            allowed: response.decision() == cedar_policy::Decision::Allow,
            reason,
            errors,
        })
    }
}

/// The entities one principal's requests about one resource are decided with, kept between
/// requests by [`PolicyEngine::authorize_cached`]. One cache serves one principal and one
/// resource; it rebuilds itself when the policy set (and so perhaps the schema) changes.
#[derive(Default)]
pub struct EntityCache {
    slot: Mutex<Option<Arc<SessionEntities>>>,
}

impl EntityCache {
    /// The cached entities when they were built for this generation, principal and
    /// resource; built afresh otherwise.
    fn entities(&self, store: &PolicyStore, req: &AuthzRequest<'_>) -> Result<Arc<SessionEntities>, String> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = slot.as_ref()
            && cached.generation == store.generation
            && cached.identity == *req.principal
            && cached.resource_source == *req.resource
        {
            return Ok(Arc::clone(cached));
        }
        // Every action entity, so any action of the session finds its own.
        let built = Arc::new(SessionEntities::build(store, req, store.actions.values().cloned())?);
        *slot = Some(Arc::clone(&built));
        Ok(built)
    }
}

/// The principal, the resource and action entities, as one Cedar entity store.
struct SessionEntities {
    generation: u64,
    /// What the principal and resource entities were built from, to tell a stale cache.
    identity: Identity,
    resource_source: Resource,
    principal: EntityUid,
    resource: EntityUid,
    entities: Entities,
    /// Shapes of context ([`context_shape`]) already checked against this generation's schema.
    checked_shapes: Mutex<HashSet<String>>,
    /// Decisions of this generation by [`memo_key`], at most [`MAX_MEMO`] of them.
    memo: Mutex<HashMap<String, Decision>>,
}

/// How many decisions a session remembers; past that, new keys are evaluated every time.
const MAX_MEMO: usize = 256;

/// How many context shapes a session remembers; past that, every context is checked.
const MAX_CHECKED_SHAPES: usize = 64;

impl SessionEntities {
    fn build(
        store: &PolicyStore,
        req: &AuthzRequest<'_>,
        actions: impl IntoIterator<Item = Entity>,
    ) -> Result<Self, String> {
        let principal = principal_entity(store, req.principal)?;
        let resource = resource_entity(store, req)?;
        let (principal_uid, resource_uid) = (principal.uid(), resource.uid());
        let entities = Entities::from_entities([principal, resource].into_iter().chain(actions), None)
            .map_err(|e| format!("invalid request entities: {e}"))?;
        Ok(Self {
            generation: store.generation,
            identity: req.principal.clone(),
            resource_source: req.resource.clone(),
            principal: principal_uid,
            resource: resource_uid,
            entities,
            checked_shapes: Mutex::new(HashSet::new()),
            memo: Mutex::new(HashMap::new()),
        })
    }

    fn checked_shape(&self, shape: &str) -> bool {
        self.checked_shapes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(shape)
    }

    fn remembered(&self, key: &str) -> Option<Decision> {
        self.memo
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn remember(&self, key: String, decision: &Decision) {
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        if memo.len() < MAX_MEMO {
            memo.insert(key, decision.clone());
        }
    }

    fn remember_shape(&self, shape: String) {
        let mut shapes = self.checked_shapes.lock().unwrap_or_else(PoisonError::into_inner);
        if shapes.len() < MAX_CHECKED_SHAPES {
            shapes.insert(shape);
        }
    }
}

/// What a decision of one session's entities depends on besides them: the action, the
/// context's shape (which decides whether it converts to Cedar values and passes the
/// schema) and the values of the context attributes some policy reads, in JSON. `None`
/// when the policy set reads the context in a way that is not by attribute name, or the
/// shape is not one [`context_shape`] describes: such requests are always evaluated.
fn memo_key(store: &PolicyStore, req: &AuthzRequest<'_>) -> Option<String> {
    let reads = store.context_reads.as_ref()?;
    let mut key = context_shape(req.action, &req.context)?;
    if let serde_json::Value::Object(map) = &req.context {
        for name in reads {
            if let Some(value) = map.get(name) {
                key.push('\0');
                key.push_str(name);
                key.push('=');
                key.push_str(&serde_json::to_string(value).ok()?);
            }
        }
    }
    Some(key)
}

/// The action and the types of a context, without its values: what schema validation of a
/// context depends on. Two contexts with the same shape pass or fail the schema together.
/// The encoding is unambiguous (keys are length-prefixed). `None` for a context whose
/// shape is not worth remembering (a set with elements of different shapes), which is then
/// always checked.
fn context_shape(action: &str, context: &serde_json::Value) -> Option<String> {
    fn write(value: &serde_json::Value, out: &mut String) -> Option<()> {
        match value {
            serde_json::Value::Null => out.push('n'),
            serde_json::Value::Bool(_) => out.push('b'),
            // A number Cedar cannot hold fails in `context_from_json`: no shape, so a
            // remembered decision never stands in for that failure.
            serde_json::Value::Number(n) if n.as_i64().is_some() => out.push('i'),
            serde_json::Value::Number(_) => return None,
            serde_json::Value::String(_) => out.push('s'),
            serde_json::Value::Array(items) => {
                // A set's type is its elements' type: the same for one element or a thousand.
                out.push('[');
                let mut first: Option<String> = None;
                for item in items {
                    let mut element = String::new();
                    write(item, &mut element)?;
                    match &first {
                        None => first = Some(element),
                        Some(seen) if *seen == element => {}
                        Some(_) => return None,
                    }
                }
                out.push_str(first.as_deref().unwrap_or(""));
                out.push(']');
            }
            serde_json::Value::Object(map) => {
                out.push('{');
                for (key, value) in map {
                    push_len(out, key.len());
                    out.push(':');
                    out.push_str(key);
                    out.push('=');
                    write(value, out)?;
                    out.push(',');
                }
                out.push('}');
            }
        }
        Some(())
    }
    fn push_len(out: &mut String, len: usize) {
        // Lengths of keys and action names: short, and this runs for every request.
        if len >= 10 {
            push_len(out, len / 10);
        }
        out.push(char::from(b'0' + (len % 10) as u8));
    }
    let mut out = String::with_capacity(128);
    push_len(&mut out, action.len());
    out.push(':');
    out.push_str(action);
    write(context, &mut out)?;
    Some(out)
}

/// Turns Cedar's answer into the gateway's decision.
fn decide(store: &PolicyStore, evaluation: Evaluation) -> Decision {
    let Evaluation {
        allowed,
        reason,
        errors,
    } = evaluation;
    if !errors.is_empty() {
        // Cedar skips a policy that errors; for a forbid that would fail open.
        let reason = errors
            .iter()
            .map(|(id, message)| format!("policy {id:?} failed to evaluate: {message}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut policies: Vec<String> = errors.into_iter().map(|(id, _)| id).collect();
        policies.dedup();
        return Decision::Deny { policies, reason };
    }
    if !allowed {
        if reason.is_empty() {
            return Decision::Deny {
                policies: reason,
                reason: "no policy permits this request".to_owned(),
            };
        }
        let names = reason.iter().map(|id| format!("{id:?}")).collect::<Vec<_>>().join(", ");
        return Decision::Deny {
            reason: format!("forbidden by policy {names}"),
            policies: reason,
        };
    }
    let approval = |id: &String| -> Option<&ApprovalSpec> { store.meta.get(&PolicyId::new(id))?.approval.as_ref() };
    if reason.is_empty() || reason.iter().any(|id| approval(id).is_none()) {
        return Decision::Allow { policies: reason };
    }
    // Every satisfied permit needs approval: the first by id sets the terms.
    match reason.first().and_then(approval).cloned() {
        Some(spec) => Decision::NeedsApproval {
            policies: reason,
            approver_group: spec.group,
            approvals_required: spec.approvals_required,
            timeout: spec.timeout,
        },
        None => Decision::Allow { policies: reason },
    }
}

fn principal_kind(identity: &Identity) -> &'static str {
    match identity.kind {
        PrincipalKind::User => "User",
        PrincipalKind::Agent => "Agent",
    }
}

/// `User::"<subject>"` or `Agent::"<subject>"`, a child of `Group::"<g>"` for each group.
fn principal_entity(store: &PolicyStore, identity: &Identity) -> Result<Entity, String> {
    let names = &store.names;
    let type_name = match identity.kind {
        PrincipalKind::User => &names.user,
        PrincipalKind::Agent => &names.agent,
    };
    let uid = EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(&identity.subject));
    let string = |s: &String| RestrictedExpression::new_string(s.clone());
    let mut attrs = Vec::with_capacity(5);
    attrs.push(("issuer".to_owned(), string(&identity.issuer)));
    attrs.push(("subject".to_owned(), string(&identity.subject)));
    for (key, value) in [
        ("email", &identity.email),
        ("name", &identity.name),
        ("owner", &identity.owner),
    ] {
        if let Some(value) = value {
            attrs.push((key.to_owned(), string(value)));
        }
    }
    let parents = identity
        .groups
        .iter()
        .map(|g| EntityUid::from_type_name_and_id(names.group.clone(), EntityId::new(g)));
    Entity::new_with_tags(uid, attrs, parents, []).map_err(|e| format!("invalid principal: {e}"))
}

/// `Database::"<name>"` (or Host, Cluster) with attribute `name` and labels as tags.
fn resource_entity(store: &PolicyStore, req: &AuthzRequest<'_>) -> Result<Entity, String> {
    let resource = req.resource;
    let uid = EntityUid::from_type_name_and_id(
        store.names.resource(resource.kind).clone(),
        EntityId::new(&resource.name),
    );
    let attrs = [(
        "name".to_owned(),
        RestrictedExpression::new_string(resource.name.clone()),
    )];
    let tags = resource
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())));
    Entity::new_with_tags(uid, attrs, [], tags).map_err(|e| format!("invalid resource: {e}"))
}

/// A Cedar context from a JSON object (or null, the empty context): strings, booleans,
/// integers, sets and records.
fn context_from_json(value: &serde_json::Value) -> Result<Context, String> {
    let pairs = match value {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(key, value)| Ok((key.clone(), restricted(key, value)?)))
            .collect::<Result<Vec<_>, String>>()?,
        _ => return Err("the context is not a JSON object".to_owned()),
    };
    Context::from_pairs(pairs).map_err(|e| without_value(e.to_string()))
}

fn restricted(key: &str, value: &serde_json::Value) -> Result<RestrictedExpression, String> {
    Ok(match value {
        serde_json::Value::String(s) => RestrictedExpression::new_string(s.clone()),
        serde_json::Value::Bool(b) => RestrictedExpression::new_bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => RestrictedExpression::new_long(i),
            None => return Err(format!("attribute {key:?} is not an integer Cedar can hold")),
        },
        serde_json::Value::Array(items) => RestrictedExpression::new_set(
            items
                .iter()
                .map(|v| restricted(key, v))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        serde_json::Value::Object(map) => RestrictedExpression::new_record(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), restricted(k, v)?)))
                .collect::<Result<Vec<_>, String>>()?,
        )
        .map_err(|e| format!("attribute {key:?}: {e}"))?,
        serde_json::Value::Null => return Err(format!("attribute {key:?} is null")),
    })
}

/// Cedar ends some context errors with the offending value (": `...`"); the value
/// may be statement text with a secret in it, and the type names say enough.
fn without_value(message: String) -> String {
    match message.rfind(": `") {
        Some(at) if message.ends_with('`') => message[..at].to_owned(),
        _ => message,
    }
}
