//! [`mask_kube_secret`](super::mask_kube_secret) over the raw bytes of a response: the same
//! values are masked, but only they change. Everything else goes out as the API server sent
//! it — no `Value` tree of the whole document, no re-serialisation (a list of 1,000 Secrets
//! spent most of its masking time building and writing that tree).
//!
//! The document is checked as JSON by serde first, so the scanner below only ever walks valid
//! JSON. Where a key the walk looks at appears twice in one object, which value a client
//! would read is its parser's choice: such a document is masked through `Value` instead,
//! which keeps one of them (the last, as serde_json does) and masks that.

use std::borrow::Cow;
use std::ops::Range;

use serde::de::IgnoredAny;
use serde_json::Value;

use super::{KUBE_MASKED_DATA, KUBE_MASKED_STRING, LAST_APPLIED, mask_applied, mask_kube_secret};
use crate::{DataClass, MaskCounts};

/// Masks `doc` as [`mask_kube_secret`] masks its parsed form; `None` when nothing changes.
/// Fails only when `doc` is not JSON.
pub fn mask_kube_secret_json(doc: &[u8], counts: &mut MaskCounts) -> Result<Option<Vec<u8>>, serde_json::Error> {
    serde_json::from_slice::<IgnoredAny>(doc)?;
    let mut walk = Walk {
        doc,
        edits: Vec::new(),
        counts: MaskCounts::default(),
    };
    let root = skip_ws(doc, 0)..doc.len();
    if walk.document(root).is_err() {
        let mut value: Value = serde_json::from_slice(doc)?;
        return if mask_kube_secret(&mut value, counts) {
            serde_json::to_vec(&value).map(Some)
        } else {
            Ok(None)
        };
    }
    if walk.edits.is_empty() {
        return Ok(None);
    }
    counts.merge(&walk.counts);
    let mut edits = walk.edits;
    edits.sort_unstable_by_key(|(range, _)| range.start);
    let mut out = Vec::with_capacity(doc.len());
    let mut at = 0;
    for (range, text) in edits {
        out.extend_from_slice(&doc[at..range.start]);
        out.extend_from_slice(text.as_bytes());
        at = range.end;
    }
    out.extend_from_slice(&doc[at..]);
    Ok(Some(out))
}

/// The walk cannot tell what a client would read: a key it looks at appears more than once
/// in an object, or a string it needs does not decode (a lone surrogate escape).
struct Fallback;

/// An object's members: each key (unescaped) and the byte range of its value.
type Members<'a> = Vec<(Cow<'a, str>, Range<usize>)>;

struct Walk<'a> {
    doc: &'a [u8],
    /// Value ranges and what replaces them.
    edits: Vec<(Range<usize>, Cow<'static, str>)>,
    counts: MaskCounts,
}

impl<'a> Walk<'a> {
    /// `mask_kube_secret`: a Secret, a list, a Table, metadata only, or a watch event.
    fn document(&mut self, value: Range<usize>) -> Result<(), Fallback> {
        let Some(members) = self.object(value)? else {
            return Ok(());
        };
        let kind = match get(&members, "kind")? {
            Some(kind) => self.string(kind)?,
            None => None,
        };
        match kind.as_deref().unwrap_or_default() {
            "Secret" => self.secret(&members),
            "SecretList" => self.each(&members, "items", |walk, item| match walk.object(item)? {
                Some(item) => walk.secret(&item),
                None => Ok(()),
            }),
            "Table" => self.each(&members, "rows", |walk, row| match walk.object(row)? {
                Some(row) => match get(&row, "object")? {
                    Some(object) => walk.document(object),
                    None => Ok(()),
                },
                None => Ok(()),
            }),
            "PartialObjectMetadata" => self.annotation(&members, true),
            kind if kind.ends_with("List") => self.each(&members, "items", Self::document),
            "" => {
                let event = match get(&members, "type")? {
                    Some(kind) => self.doc[kind.start] == b'"',
                    None => false,
                };
                match get(&members, "object")? {
                    Some(object) if event => self.document(object),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    fn secret(&mut self, secret: &Members<'a>) -> Result<(), Fallback> {
        self.values(secret, "data", KUBE_MASKED_DATA)?;
        self.values(secret, "stringData", KUBE_MASKED_STRING)?;
        self.annotation(secret, false)
    }

    /// Every value of the object `secret[key]` becomes `placeholder` (nulls and values that
    /// already are the placeholder stay).
    fn values(&mut self, secret: &Members<'a>, key: &str, placeholder: &'static str) -> Result<(), Fallback> {
        let Some(values) = self.member_object(secret, key)? else {
            return Ok(());
        };
        let mut keys: Vec<&str> = values.iter().map(|(k, _)| k.as_ref()).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(Fallback);
        }
        for (_, value) in values {
            let raw = &self.doc[value.clone()];
            if raw == b"null" || self.string(value.clone())?.as_deref() == Some(placeholder) {
                continue;
            }
            self.edits.push((value, Cow::Owned(format!("\"{placeholder}\""))));
            self.counts.add(DataClass::Secret, 1);
        }
        Ok(())
    }

    /// The Secret in `object.metadata.annotations[LAST_APPLIED]`, as `mask_annotation`.
    fn annotation(&mut self, object: &Members<'a>, only_secrets: bool) -> Result<(), Fallback> {
        let Some(metadata) = self.member_object(object, "metadata")? else {
            return Ok(());
        };
        let Some(annotations) = self.member_object(&metadata, "annotations")? else {
            return Ok(());
        };
        let Some(value) = get(&annotations, LAST_APPLIED)? else {
            return Ok(());
        };
        let Some(applied) = self.string(value.clone())? else {
            return Ok(());
        };
        if let Some(masked) = mask_applied(&applied, only_secrets, &mut self.counts) {
            let quoted = serde_json::to_string(&masked).unwrap_or_else(|_| format!("\"{KUBE_MASKED_STRING}\""));
            self.edits.push((value, Cow::Owned(quoted)));
        }
        Ok(())
    }

    /// Applies `f` to each element of the array `object[key]`.
    fn each(
        &mut self,
        object: &Members<'a>,
        key: &str,
        mut f: impl FnMut(&mut Self, Range<usize>) -> Result<(), Fallback>,
    ) -> Result<(), Fallback> {
        let Some(array) = get(object, key)? else {
            return Ok(());
        };
        if self.doc[array.start] != b'[' {
            return Ok(());
        }
        let mut at = skip_ws(self.doc, array.start + 1);
        while self.doc[at] != b']' {
            let end = skip_value(self.doc, at);
            f(self, at..end)?;
            at = skip_ws(self.doc, end);
            if self.doc[at] == b',' {
                at = skip_ws(self.doc, at + 1);
            }
        }
        Ok(())
    }

    /// The members of the object `object[key]`, if there is one.
    fn member_object(&self, object: &Members<'a>, key: &str) -> Result<Option<Members<'a>>, Fallback> {
        match get(object, key)? {
            Some(value) => self.object(value),
            None => Ok(None),
        }
    }

    /// The members of the object at `value`, or `None` when it is not an object.
    fn object(&self, value: Range<usize>) -> Result<Option<Members<'a>>, Fallback> {
        let doc = self.doc;
        if doc[value.start] != b'{' {
            return Ok(None);
        }
        let mut members = Vec::new();
        let mut at = skip_ws(doc, value.start + 1);
        while doc[at] != b'}' {
            let key_end = skip_value(doc, at);
            let key = decode(doc, at..key_end)?.ok_or(Fallback)?;
            let start = skip_ws(doc, skip_ws(doc, key_end) + 1);
            let end = skip_value(doc, start);
            members.push((key, start..end));
            at = skip_ws(doc, end);
            if doc[at] == b',' {
                at = skip_ws(doc, at + 1);
            }
        }
        Ok(Some(members))
    }

    /// The string at `value`, unescaped, or `None` when it is not a string.
    fn string(&self, value: Range<usize>) -> Result<Option<Cow<'a, str>>, Fallback> {
        decode(self.doc, value)
    }
}

/// The value of `key`; an error when the object has it more than once.
fn get(members: &Members<'_>, key: &str) -> Result<Option<Range<usize>>, Fallback> {
    let mut found = None;
    for (k, value) in members {
        if k == key {
            if found.is_some() {
                return Err(Fallback);
            }
            found = Some(value.clone());
        }
    }
    Ok(found)
}

/// A JSON string literal's text, borrowed when it holds no escape; `None` for another value.
fn decode<'a>(doc: &'a [u8], literal: Range<usize>) -> Result<Option<Cow<'a, str>>, Fallback> {
    let raw = &doc[literal];
    let Some(inner) = raw.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\"")) else {
        return Ok(None);
    };
    let text = if inner.contains(&b'\\') {
        Cow::Owned(serde_json::from_slice::<String>(raw).map_err(|_| Fallback)?)
    } else {
        Cow::Borrowed(std::str::from_utf8(inner).map_err(|_| Fallback)?)
    };
    Ok(Some(text))
}

fn skip_ws(doc: &[u8], mut at: usize) -> usize {
    while doc.get(at).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The end of the (valid) JSON value starting at `at`.
fn skip_value(doc: &[u8], at: usize) -> usize {
    match doc[at] {
        b'"' => skip_string(doc, at),
        open @ (b'{' | b'[') => {
            // In valid JSON the brackets of one kind balance by themselves once strings are
            // skipped, so only those and quotes need finding.
            let close = if open == b'{' { b'}' } else { b']' };
            let mut depth = 0usize;
            let mut i = at;
            while let Some(n) = memchr::memchr3(b'"', open, close, &doc[i..]) {
                i += n;
                match doc[i] {
                    b'"' => {
                        i = skip_string(doc, i);
                        continue;
                    }
                    b if b == open => depth += 1,
                    _ => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                }
                i += 1;
            }
            doc.len()
        }
        _ => {
            let mut i = at;
            while doc
                .get(i)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                i += 1;
            }
            i
        }
    }
}

/// The end of the string literal starting at `at` (just past its closing quote).
fn skip_string(doc: &[u8], at: usize) -> usize {
    let mut i = at + 1;
    loop {
        match memchr::memchr2(b'"', b'\\', &doc[i..]) {
            Some(n) if doc[i + n] == b'\\' => i += n + 2,
            Some(n) => return i + n + 1,
            None => return doc.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Both paths, on the same bytes: the same masked document and the same counts.
    fn same_as_value_path(doc: &[u8]) -> Option<Vec<u8>> {
        let mut counts = MaskCounts::default();
        let spliced = mask_kube_secret_json(doc, &mut counts).expect("valid JSON");
        let mut value: Value = serde_json::from_slice(doc).expect("valid JSON");
        let mut expected_counts = MaskCounts::default();
        let changed = mask_kube_secret(&mut value, &mut expected_counts);
        assert_eq!(spliced.is_some(), changed, "{}", String::from_utf8_lossy(doc));
        assert_eq!(counts, expected_counts, "{}", String::from_utf8_lossy(doc));
        if let Some(out) = &spliced {
            let got: Value = serde_json::from_slice(out).expect("the splice writes JSON");
            assert_eq!(got, value, "{}", String::from_utf8_lossy(doc));
        }
        spliced
    }

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
                "annotations": {LAST_APPLIED: applied.to_string(), "team": "payments"},
                "managedFields": [{"fieldsV1": {"f:data": {"f:password": {}}}}],
            },
            "type": "Opaque",
            "data": {"password": "aHVudGVyMg==", "user": "YWRtaW4=", "empty": null, "masked": KUBE_MASKED_DATA},
            "stringData": {"note": "plain \"quoted\" \\ \u{e9}"},
        })
    }

    #[test]
    fn masks_what_the_value_path_masks_and_nothing_else() {
        let meta = {
            let mut s = secret();
            s["kind"] = json!("PartialObjectMetadata");
            s
        };
        let documents = [
            secret(),
            json!({"kind": "SecretList", "metadata": {"resourceVersion": "7"}, "items": [secret(), secret(), 3, "x", {"data": []}]}),
            json!({"kind": "List", "items": [secret(), {"kind": "ConfigMap", "data": {"k": "v"}}, {"kind": "SecretList", "items": [secret()]}]}),
            json!({"type": "MODIFIED", "object": secret()}),
            json!({"type": 1, "object": secret()}),
            json!({"kind": "Table", "rows": [{"cells": ["db"], "object": meta.clone()}, {"cells": [], "object": secret()}, {"cells": []}, 7]}),
            meta,
            json!({"kind": "PartialObjectMetadata", "metadata": {"annotations": {LAST_APPLIED: "{\"kind\":\"ConfigMap\",\"data\":{\"a\":\"b\"}}"}}}),
            json!({"kind": "Secret", "metadata": {"annotations": {LAST_APPLIED: "{not json"}}}),
            json!({"kind": "Secret", "metadata": {"annotations": {LAST_APPLIED: KUBE_MASKED_STRING}}}),
            json!({"kind": "Secret", "metadata": {"annotations": {LAST_APPLIED: 5}}, "data": 4, "stringData": {"a": {"b": [1, "}"]}}}),
            json!({"kind": "Sec\u{72}et", "data": {"k\"ey": "dg=="}}),
            json!({"kind": "ConfigMap", "data": {"password": "x"}}),
            json!({"kind": 3, "data": {"password": "x"}}),
            json!(["Secret", {"kind": "Secret", "data": {"a": "dg=="}}]),
            json!("Secret"),
            json!({"kind": "Secret", "data": {}}),
            json!({}),
        ];
        for doc in &documents {
            same_as_value_path(doc.to_string().as_bytes());
            same_as_value_path(serde_json::to_string_pretty(doc).expect("JSON").as_bytes());
        }
    }

    #[test]
    fn only_the_masked_values_change_byte_for_byte() {
        let doc = b" {\"kind\" : \"SecretList\",\"items\":[ {\"metadata\":{\"name\":\"a\",\"x\":1.50e3},\n\"data\" : {\"k\":\"dg==\" , \"\\u006b2\": \"dw==\"}} ] } ";
        let out = same_as_value_path(doc).expect("masked");
        let expected = " {\"kind\" : \"SecretList\",\"items\":[ {\"metadata\":{\"name\":\"a\",\"x\":1.50e3},\n\"data\" : {\"k\":\"PG1hc2tlZD4=\" , \"\\u006b2\": \"PG1hc2tlZD4=\"}} ] } ";
        assert_eq!(String::from_utf8(out).expect("UTF-8"), expected);
    }

    #[test]
    fn duplicate_keys_go_through_the_value_path() {
        for doc in [
            r#"{"kind":"Secret","data":{"a":"dg=="},"data":{"b":"dw=="}}"#,
            r#"{"kind":"Secret","data":{"a":"dg==","a":"dw=="}}"#,
            r#"{"kind":"ConfigMap","kind":"Secret","data":{"a":"dg=="}}"#,
            r#"{"kind":"SecretList","items":[{"data":{"a":"dg=="}}],"items":[{"data":{"b":"dw=="}}]}"#,
            r#"{"kind":"Secret","data":{"x":"dg=="},"metadata":{"annotations":{"a":"b"},"annotations":{"c":"d"}}}"#,
        ] {
            let out = same_as_value_path(doc.as_bytes()).expect("masked");
            let out = String::from_utf8(out).expect("UTF-8");
            assert!(!out.contains("dg==") && !out.contains("dw=="), "{out}");
        }
    }

    #[test]
    fn invalid_json_is_an_error() {
        for doc in [&b"{\"kind\":\"Secret\""[..], b"k8s\0proto", b"{\"a\":1} x", b""] {
            assert!(mask_kube_secret_json(doc, &mut MaskCounts::default()).is_err());
        }
    }
}
