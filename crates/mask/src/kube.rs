//! Kubernetes Secrets carry their sensitive values in `data` and `stringData` (and again in
//! kubectl's last-applied annotation), where no detector would recognise base64 blobs: this
//! module masks them by structure, keeping the object valid for clients that decode it.

mod splice;

use serde_json::{Map, Value};

use crate::{DataClass, MaskCounts};

pub use splice::mask_kube_secret_json;

/// What replaces each `data` value: base64 of `<masked>`, so clients that decode it still can.
pub const KUBE_MASKED_DATA: &str = "PG1hc2tlZD4=";

/// What replaces each `stringData` value.
pub const KUBE_MASKED_STRING: &str = "<masked>";

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Masks a Kubernetes Secret in an API response: every value under `data` (as
/// [`KUBE_MASKED_DATA`]) and `stringData` (as [`KUBE_MASKED_STRING`]), and the same values
/// inside the `kubectl.kubernetes.io/last-applied-configuration` annotation (which stays
/// valid JSON for `kubectl apply`; an annotation that does not parse is replaced whole).
/// Handles `Secret`, `SecretList` (items need no `kind`), other lists holding Secrets, `Table`
/// rows with their objects, metadata-only objects whose annotation holds a Secret, and watch
/// events (`{"type": …, "object": …}`). Each masked value counts once as
/// [`DataClass::Secret`]. Returns whether anything changed.
pub fn mask_kube_secret(v: &mut Value, counts: &mut MaskCounts) -> bool {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "Secret" => mask_secret(v, counts),
        "SecretList" => each(v, "items", |item| mask_secret(item, counts)),
        "Table" => each(v, "rows", |row| {
            row.get_mut("object")
                .is_some_and(|object| mask_kube_secret(object, counts))
        }),
        "PartialObjectMetadata" => mask_annotation(v, counts, true),
        kind if kind.ends_with("List") => each(v, "items", |item| mask_kube_secret(item, counts)),
        "" if v.get("type").is_some_and(Value::is_string) => v
            .get_mut("object")
            .is_some_and(|object| mask_kube_secret(object, counts)),
        _ => false,
    }
}

/// Applies `f` to every element of the array `v[key]`; true if any call changed something.
fn each(v: &mut Value, key: &str, mut f: impl FnMut(&mut Value) -> bool) -> bool {
    let Some(Value::Array(items)) = v.get_mut(key) else {
        return false;
    };
    items.iter_mut().fold(false, |changed, item| f(item) | changed)
}

fn mask_secret(secret: &mut Value, counts: &mut MaskCounts) -> bool {
    let Value::Object(map) = secret else {
        return false;
    };
    let data = mask_values(map, "data", KUBE_MASKED_DATA, counts);
    let string_data = mask_values(map, "stringData", KUBE_MASKED_STRING, counts);
    let annotation = mask_annotation(secret, counts, false);
    data | string_data | annotation
}

fn mask_values(map: &mut Map<String, Value>, key: &str, placeholder: &str, counts: &mut MaskCounts) -> bool {
    let Some(Value::Object(values)) = map.get_mut(key) else {
        return false;
    };
    let mut changed = false;
    for value in values.values_mut() {
        if value.is_null() || value.as_str() == Some(placeholder) {
            continue;
        }
        *value = Value::String(placeholder.to_owned());
        counts.add(DataClass::Secret, 1);
        changed = true;
    }
    changed
}

/// Masks the Secret recorded in the last-applied annotation. With `only_secrets`, an
/// annotation that is not a Secret's (a metadata-only object of any kind) is left alone.
fn mask_annotation(object: &mut Value, counts: &mut MaskCounts, only_secrets: bool) -> bool {
    let Some(Value::String(annotation)) = object
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(|a| a.get_mut(LAST_APPLIED))
    else {
        return false;
    };
    match mask_applied(annotation, only_secrets, counts) {
        Some(masked) => {
            *annotation = masked;
            true
        }
        None => false,
    }
}

/// The last-applied annotation `annotation` with the Secret in it masked, or `None` when
/// nothing changes. With `only_secrets`, an annotation that is not a Secret's is left alone;
/// otherwise one that does not parse is replaced whole.
fn mask_applied(annotation: &str, only_secrets: bool, counts: &mut MaskCounts) -> Option<String> {
    match serde_json::from_str::<Value>(annotation) {
        Ok(mut applied) => {
            let is_secret = applied.get("kind").and_then(Value::as_str) == Some("Secret");
            if (only_secrets && !is_secret) || !mask_secret(&mut applied, counts) {
                return None;
            }
            Some(serde_json::to_string(&applied).unwrap_or_else(|_| KUBE_MASKED_STRING.to_owned()))
        }
        Err(_) if only_secrets || annotation == KUBE_MASKED_STRING => None,
        Err(_) => {
            counts.add(DataClass::Secret, 1);
            Some(KUBE_MASKED_STRING.to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret() -> Value {
        let applied = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "namespace": "prod"},
            "data": {"password": "aHVudGVyMg=="},
        });
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "db",
                "namespace": "prod",
                "annotations": {LAST_APPLIED: applied.to_string(), "team": "payments"},
            },
            "type": "Opaque",
            "data": {"password": "aHVudGVyMg==", "user": "YWRtaW4="},
            "stringData": {"note": "plain"},
        })
    }

    #[test]
    fn placeholder_is_base64_of_masked() {
        // Decoding by hand keeps base64 out of the dependencies: "<masked>" is 8 bytes.
        let bytes = b"<masked>";
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut encoded = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
            for k in 0..=chunk.len() {
                encoded.push(char::from(alphabet[((n >> (18 - 6 * k)) & 63) as usize]));
            }
        }
        while !encoded.len().is_multiple_of(4) {
            encoded.push('=');
        }
        assert_eq!(encoded, KUBE_MASKED_DATA);
    }

    #[test]
    fn secret_values_and_last_applied_are_masked() {
        let mut v = secret();
        let mut counts = MaskCounts::default();
        assert!(mask_kube_secret(&mut v, &mut counts));
        assert_eq!(
            v["data"],
            json!({"password": KUBE_MASKED_DATA, "user": KUBE_MASKED_DATA})
        );
        assert_eq!(v["stringData"], json!({"note": KUBE_MASKED_STRING}));
        assert_eq!(v["metadata"]["name"], "db");
        assert_eq!(v["metadata"]["annotations"]["team"], "payments");
        let applied: Value =
            serde_json::from_str(v["metadata"]["annotations"][LAST_APPLIED].as_str().unwrap()).unwrap();
        assert_eq!(applied["data"]["password"], KUBE_MASKED_DATA);
        assert_eq!(applied["metadata"]["name"], "db");
        assert_eq!(counts.get(DataClass::Secret), 4);
        assert!(!v.to_string().contains("aHVudGVyMg"));

        let mut again = MaskCounts::default();
        assert!(!mask_kube_secret(&mut v, &mut again));
        assert!(again.is_empty());
    }

    #[test]
    fn lists_tables_and_watch_events_are_masked() {
        let mut list = json!({"kind": "SecretList", "items": [
            {"metadata": {"name": "a"}, "data": {"k": "dg=="}},
            {"metadata": {"name": "b"}, "data": {"k": "dw=="}},
        ]});
        let mut counts = MaskCounts::default();
        assert!(mask_kube_secret(&mut list, &mut counts));
        assert_eq!(list["items"][1]["data"]["k"], KUBE_MASKED_DATA);
        assert_eq!(counts.get(DataClass::Secret), 2);

        let mut mixed = json!({"kind": "List", "items": [secret(), {"kind": "ConfigMap", "data": {"k": "v"}}]});
        assert!(mask_kube_secret(&mut mixed, &mut counts));
        assert_eq!(mixed["items"][0]["data"]["user"], KUBE_MASKED_DATA);
        assert_eq!(mixed["items"][1]["data"]["k"], "v");

        let mut event = json!({"type": "MODIFIED", "object": secret()});
        assert!(mask_kube_secret(&mut event, &mut counts));
        assert_eq!(event["object"]["data"]["password"], KUBE_MASKED_DATA);

        let mut meta = secret();
        meta["kind"] = json!("PartialObjectMetadata");
        let annotations = meta["metadata"].clone();
        let mut table = json!({"kind": "Table", "rows": [
            {"cells": ["db", "Opaque"], "object": {"kind": "PartialObjectMetadata", "metadata": annotations}},
        ]});
        assert!(mask_kube_secret(&mut table, &mut counts));
        let applied = table["rows"][0]["object"]["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .unwrap();
        assert!(!applied.contains("aHVudGVyMg"));
    }

    #[test]
    fn other_objects_are_left_alone() {
        let mut counts = MaskCounts::default();
        for v in [
            json!({"kind": "ConfigMap", "data": {"password": "x"}}),
            json!({"kind": "Pod", "metadata": {"annotations": {LAST_APPLIED: "{\"kind\":\"Pod\"}"}}}),
            json!({"kind": "PartialObjectMetadata", "metadata": {"annotations": {LAST_APPLIED: "{\"kind\":\"ConfigMap\",\"data\":{\"a\":\"b\"}}"}}}),
            json!("Secret"),
            json!({"type": "ADDED", "object": {"kind": "Pod"}}),
        ] {
            let mut masked = v.clone();
            assert!(!mask_kube_secret(&mut masked, &mut counts));
            assert_eq!(masked, v);
        }
        assert!(counts.is_empty());
    }

    #[test]
    fn unparsable_last_applied_is_replaced() {
        let mut v = json!({"kind": "Secret", "metadata": {"annotations": {LAST_APPLIED: "{not json"}}});
        let mut counts = MaskCounts::default();
        assert!(mask_kube_secret(&mut v, &mut counts));
        assert_eq!(v["metadata"]["annotations"][LAST_APPLIED], KUBE_MASKED_STRING);
        assert!(!mask_kube_secret(&mut v, &mut counts));
    }
}
