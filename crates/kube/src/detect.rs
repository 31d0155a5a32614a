//! Content detectors on the values of other objects that commonly carry personal or secret
//! data: ConfigMap `data` values and container `env` values in pod specs (pods, and the pod
//! templates of deployments, statefulsets, daemonsets, replicasets, jobs and cronjobs). Each
//! value goes through the session's `gatehouse_mask::Masker` (the same detectors PostgreSQL
//! results use) with its key or variable name as the hint, so policy `unmask` per data class
//! decides what a caller sees. Only these values are touched; names, labels and the rest of
//! the object stay as they are. Pure functions over `serde_json::Value`, and a pre-pass over
//! the raw document ([`may_change`]) that spares most responses the `Value` round trip.

use std::cell::Cell;
use std::fmt;

use gatehouse_mask::{MaskCounts, Masker};
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Whether a request's response may carry values the detectors read: (API group, resource).
pub fn carries_detected_values(api_group: &str, resource: &str) -> bool {
    matches!(
        (api_group, resource),
        ("", "configmaps" | "pods")
            | ("apps", "deployments" | "statefulsets" | "daemonsets" | "replicasets")
            | ("batch", "jobs" | "cronjobs")
    )
}

/// Masks what the detectors find in one document (object, list, Table or watch event).
/// Returns whether anything changed.
pub fn mask_detected(v: &mut Value, masker: &Masker, counts: &mut MaskCounts) -> bool {
    if masker.is_noop() {
        return false;
    }
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut changed = match kind.as_str() {
        "ConfigMap" => config_map(v, masker, counts),
        "Table" => each(v, "rows", |row| {
            row.get_mut("object")
                .is_some_and(|object| mask_detected(object, masker, counts))
        }),
        "PartialObjectMetadata" => false,
        k if k.ends_with("List") => each(v, "items", |item| mask_detected(item, masker, counts)),
        "" if v.get("type").is_some_and(Value::is_string) && v.get("object").is_some() => v
            .get_mut("object")
            .is_some_and(|object| mask_detected(object, masker, counts)),
        // A list's items carry no kind: recognise them by shape.
        "" if v.get("data").is_some_and(Value::is_object) => config_map(v, masker, counts),
        _ => pod_specs(v, masker, counts),
    };
    changed |= annotation(v, masker, counts);
    changed
}

/// Whether [`mask_detected`] could change the JSON document `body`, read without building a
/// `Value` (no allocation for strings without escapes): the document is walked once and every
/// key and string under an `env` or `data` key (the only places `mask_detected` changes, with
/// names drawn from the same places) goes through [`Masker::may_mask`]; a last-applied
/// annotation always answers yes. False means the document can be passed on as it is. Errors
/// exactly when the document is not valid JSON.
pub fn may_change(body: &[u8], masker: &Masker) -> Result<bool, serde_json::Error> {
    if masker.is_noop() {
        // Still one JSON document, as when it is masked.
        serde_json::from_slice::<serde::de::IgnoredAny>(body)?;
        return Ok(false);
    }
    let hit = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    Probe {
        masker,
        under: false,
        hit: &hit,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(hit.get())
}

/// One value of the document being probed; `under` when an `env` or `data` key is above it.
#[derive(Clone, Copy)]
struct Probe<'a> {
    masker: &'a Masker,
    under: bool,
    hit: &'a Cell<bool>,
}

impl Probe<'_> {
    fn check(&self, s: &str) {
        if self.under && !self.hit.get() && self.masker.may_mask(s) {
            self.hit.set(true);
        }
    }
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        self.check(s);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed(self))? {
            let under = self.under || key.enters;
            map.next_value_seed(Probe { under, ..self })?;
        }
        Ok(())
    }
}

/// A key of the document being probed: checked like a string, and whether it opens a part
/// that `mask_detected` reads.
struct Key {
    enters: bool,
}

struct KeySeed<'a>(Probe<'a>);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Key, E> {
        if key == LAST_APPLIED {
            self.0.hit.set(true);
        }
        self.0.check(key);
        Ok(Key {
            enters: key == "env" || key == "data",
        })
    }
}

fn each(v: &mut Value, key: &str, mut f: impl FnMut(&mut Value) -> bool) -> bool {
    let Some(Value::Array(items)) = v.get_mut(key) else {
        return false;
    };
    items.iter_mut().fold(false, |changed, item| f(item) | changed)
}

fn config_map(v: &mut Value, masker: &Masker, counts: &mut MaskCounts) -> bool {
    let Some(Value::Object(data)) = v.get_mut("data") else {
        return false;
    };
    let mut changed = false;
    for (key, value) in data.iter_mut() {
        if let Value::String(text) = value
            && let std::borrow::Cow::Owned(masked) = masker.mask_column(key, text, counts)
        {
            *text = masked;
            changed = true;
        }
    }
    changed
}

/// The pod spec of a pod, a workload's template, or a cronjob's job template.
fn pod_specs(v: &mut Value, masker: &Masker, counts: &mut MaskCounts) -> bool {
    let Some(spec) = v.get_mut("spec") else {
        return false;
    };
    if spec.get("containers").is_some() {
        return containers(spec, masker, counts);
    }
    if let Some(template) = spec.pointer_mut("/template/spec") {
        return containers(template, masker, counts);
    }
    if let Some(template) = spec.pointer_mut("/jobTemplate/spec/template/spec") {
        return containers(template, masker, counts);
    }
    false
}

fn containers(spec: &mut Value, masker: &Masker, counts: &mut MaskCounts) -> bool {
    let mut changed = false;
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        changed |= each(spec, key, |container| {
            each(container, "env", |var| {
                let name = var.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
                match var.get_mut("value") {
                    Some(Value::String(text)) => match masker.mask_column(&name, text, counts) {
                        std::borrow::Cow::Owned(masked) => {
                            *text = masked;
                            true
                        }
                        std::borrow::Cow::Borrowed(_) => false,
                    },
                    _ => false,
                }
            })
        });
    }
    changed
}

/// kubectl's last-applied annotation holds the same values: masked the same way inside it.
fn annotation(v: &mut Value, masker: &Masker, counts: &mut MaskCounts) -> bool {
    let Some(Value::String(text)) = v
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(|a| a.get_mut(LAST_APPLIED))
    else {
        return false;
    };
    let Ok(mut applied) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    if applied
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .is_some_and(|a| a.get(LAST_APPLIED).is_some())
    {
        return false; // never nested; not worth recursing into
    }
    if !mask_detected(&mut applied, masker, counts) {
        return false;
    }
    *text = applied.to_string();
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_mask::DataClass;
    use serde_json::json;

    const EMAIL: &str = "lena@example.com";
    const CARD: &str = "4111 1111 1111 1111";

    fn config_map_value() -> Value {
        let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "contacts"},
            "data": {"owner": EMAIL}});
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "contacts", "annotations": {LAST_APPLIED: applied.to_string()}},
            "data": {"owner": EMAIL, "billing": format!("card {CARD}"), "mode": "fast"}})
    }

    #[test]
    fn config_map_values_are_masked_per_class() {
        let mut counts = MaskCounts::default();
        let mut cm = config_map_value();
        assert!(mask_detected(&mut cm, &Masker::all(), &mut counts));
        let text = cm.to_string();
        assert!(!text.contains(EMAIL) && !text.contains("4111 1111 1111 1111"), "{text}");
        assert_eq!(cm["data"]["mode"], "fast");
        assert_eq!(cm["metadata"]["name"], "contacts");
        assert!(counts.get(DataClass::Email) >= 2 && counts.get(DataClass::Card) == 1);

        // A caller allowed to see e-mail addresses sees them; cards stay masked.
        let everything_but_email = DataClass::ALL.into_iter().filter(|c| *c != DataClass::Email);
        let mut cm = config_map_value();
        mask_detected(&mut cm, &Masker::new(everything_but_email), &mut MaskCounts::default());
        assert_eq!(cm["data"]["owner"], EMAIL);
        assert!(!cm.to_string().contains("4111 1111 1111 1111"));

        let mut untouched = config_map_value();
        assert!(!mask_detected(&mut untouched, &Masker::none(), &mut counts));
        assert_eq!(untouched, config_map_value());
    }

    #[test]
    fn env_values_in_pods_templates_lists_tables_and_watch_events() {
        let spec = json!({"containers": [{"name": "web", "env": [
            {"name": "ADMIN", "value": EMAIL}, {"name": "MODE", "value": "fast"},
            {"name": "FROM", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]}]});
        let pod = json!({"kind": "Pod", "metadata": {"name": "web-0"}, "spec": spec});
        let deployment = json!({"kind": "Deployment", "spec": {"template": {"spec": spec}}});
        let cronjob = json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": spec}}}}});
        let docs = [
            pod.clone(),
            deployment,
            cronjob,
            json!({"kind": "PodList", "items": [pod.clone()]}),
            json!({"type": "ADDED", "object": pod.clone()}),
            json!({"kind": "Table", "rows": [{"cells": ["web-0"], "object": pod}]}),
        ];
        for mut doc in docs {
            let mut counts = MaskCounts::default();
            assert!(mask_detected(&mut doc, &Masker::all(), &mut counts), "{doc}");
            let text = doc.to_string();
            assert!(!text.contains(EMAIL), "{text}");
            assert!(text.contains("\"fast\"") && text.contains("secretKeyRef"), "{text}");
            assert_eq!(counts.get(DataClass::Email), 1, "{text}");
        }
        assert!(carries_detected_values("apps", "deployments"));
        assert!(carries_detected_values("", "configmaps"));
        assert!(!carries_detected_values("", "services"));
    }

    /// The pre-pass never says "unchanged" about a document that masking changes, and says
    /// it about the documents that only look like such documents.
    #[test]
    fn the_pre_pass_finds_whatever_masking_changes() {
        let all = Masker::all();
        let pod = |env: Value| {
            json!({"kind": "Pod", "metadata": {"name": "web-0", "uid": "4111111111111111"},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "env": env}]},
            "status": {"podIP": "10.0.0.5", "message": "mail ops@example.com"}})
        };
        let changed = [
            pod(json!([{"name": "ADMIN", "value": EMAIL}])),
            pod(json!([{"name": "DB_PASSWORD", "value": "hunter2"}])),
            json!({"kind": "PodList", "items": [pod(json!([{"name": "CARD", "value": CARD}]))]}),
            json!({"type": "ADDED", "object": pod(json!([{"name": "X", "value": EMAIL}]))}),
            json!({"kind": "Table", "rows": [{"object": pod(json!([{"name": "X", "value": EMAIL}]))}]}),
            config_map_value(),
            json!({"kind": "ConfigMap", "data": {"api_token": "abc"}}),
            json!({"kind": "ConfigMapList", "items": [{"data": {"owner": EMAIL}}]}),
        ];
        for doc in changed {
            let text = doc.to_string();
            assert!(may_change(text.as_bytes(), &all).unwrap(), "{text}");
            let mut masked = doc.clone();
            assert!(mask_detected(&mut masked, &all, &mut MaskCounts::default()), "{text}");
        }
        // Escaped keys and values are read as the parser reads them.
        let escaped = r#"{"kind":"ConfigMap","d\u0061ta":{"owner":"lena\u0040example.com"}}"#;
        assert!(may_change(escaped.as_bytes(), &all).unwrap());

        // Detectable text outside env values and ConfigMap data is never masked, so it does
        // not send the document through the `Value` round trip either.
        let unchanged = [
            pod(json!([{"name": "MODE", "value": "fast"}])),
            json!({"kind": "ConfigMap", "metadata": {"annotations": {"owner": EMAIL}}, "data": {"mode": "fast"}}),
        ];
        for doc in unchanged {
            let text = doc.to_string();
            assert!(!may_change(text.as_bytes(), &all).unwrap(), "{text}");
            let mut masked = doc.clone();
            assert!(!mask_detected(&mut masked, &all, &mut MaskCounts::default()), "{text}");
        }
        let everything_but_email = Masker::new(DataClass::ALL.into_iter().filter(|c| *c != DataClass::Email));
        let only_email = pod(json!([{"name": "ADMIN", "value": EMAIL}])).to_string();
        assert!(!may_change(only_email.as_bytes(), &everything_but_email).unwrap());
        assert!(!may_change(only_email.as_bytes(), &Masker::none()).unwrap());
        assert!(may_change(b"{\"env\": [}", &all).is_err());
        assert!(may_change(b"{} {}", &Masker::none()).is_err());
    }
}
