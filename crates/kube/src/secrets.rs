//! Secret masking on the data path: responses that may carry Secrets are asked for as JSON,
//! decompressed, bounded, and masked with `gatehouse_mask::mask_kube_secret_json` (only the
//! masked values are rewritten; the rest goes out byte for byte) — whole documents for get
//! and list, event by event for watch streams. Pure functions over bytes, so they are
//! tested without sockets.

use std::io::Read as _;

use bytes::{Bytes, BytesMut};
use gatehouse_mask::{
    KUBE_MASKED_DATA, KUBE_MASKED_STRING, MaskCounts, Masker, mask_kube_secret, mask_kube_secret_json,
};
use serde::de::IgnoredAny;
use serde_json::Value;

/// What a response that must be read is masked for.
#[derive(Clone, Debug)]
pub enum Masking {
    /// Secret `data` and `stringData` values, by structure.
    Secrets,
    /// ConfigMap data and env values, through the content detectors (see `crate::detect`).
    Detect(Masker),
}

impl Masking {
    /// Masks one document (object, list, Table or watch event); true if anything changed.
    pub fn apply(&self, v: &mut Value, counts: &mut MaskCounts) -> bool {
        match self {
            Masking::Secrets => mask_kube_secret(v, counts),
            Masking::Detect(masker) => crate::detect::mask_detected(v, masker, counts),
        }
    }
}

/// Why a response could not be masked; the client gets a `Status` instead of the data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error(
        "the response is larger than the gateway's {0}-byte masking buffer; ask for fewer objects per request (kubectl --chunk-size=100, or ?limit=100 and continue)"
    )]
    TooLarge(usize),
    #[error("the API server answered with content type {0:?}, which the gateway cannot mask")]
    NotJson(String),
    #[error("the API server's response is compressed as {0:?}, which the gateway cannot read")]
    Encoding(String),
    #[error("the API server's response is not valid JSON: {0}")]
    BadJson(String),
}

/// The `Accept` header sent upstream for a response that may carry Secrets: only the JSON
/// alternatives the client listed (Table included), never protobuf, YAML or CBOR.
pub fn json_accept(client_accept: Option<&str>) -> String {
    let kept: Vec<&str> = client_accept
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|entry| {
            let media = entry.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("application/json")
        })
        .collect();
    if kept.is_empty() {
        "application/json".into()
    } else {
        kept.join(",")
    }
}

/// True when a write's body carries a masking placeholder: applying it would overwrite real
/// Secret values with masked ones (`kubectl get -o yaml | kubectl apply -f -`).
pub fn carries_placeholder(body: &[u8]) -> bool {
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    has(KUBE_MASKED_DATA.as_bytes()) || has(KUBE_MASKED_STRING.as_bytes())
}

/// Decodes a buffered response body per its `Content-Encoding`, bounded by `limit`.
pub fn decode(body: Bytes, encoding: Option<&str>, limit: usize) -> Result<Bytes, MaskError> {
    match encoding.map(str::trim).filter(|e| !e.is_empty()) {
        None => Ok(body),
        Some(e) if e.eq_ignore_ascii_case("identity") => Ok(body),
        Some(e) if e.eq_ignore_ascii_case("gzip") => {
            let mut out = Vec::new();
            let decoder = flate2::read::GzDecoder::new(body.as_ref());
            decoder
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| MaskError::BadJson(format!("gzip: {e}")))?;
            if out.len() > limit {
                return Err(MaskError::TooLarge(limit));
            }
            Ok(out.into())
        }
        Some(other) => Err(MaskError::Encoding(other.chars().take(40).collect())),
    }
}

/// Whether a content type is JSON (as the API server labels JSON, Table and watch streams).
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Masks one whole JSON document (an object, a list page, a Table, a Status).
/// Returned as it came when nothing in it is masked.
pub fn mask_document(body: Bytes, masking: &Masking, counts: &mut MaskCounts) -> Result<Bytes, MaskError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(body);
    }
    let bad_json = |e: serde_json::Error| MaskError::BadJson(e.to_string());
    if let Masking::Secrets = masking {
        // Spliced into the bytes as they came: only the masked values are rewritten.
        let masked = mask_kube_secret_json(&body, counts).map_err(bad_json)?;
        return Ok(masked.map_or(body, Bytes::from));
    }
    if let Masking::Detect(masker) = masking
        && !crate::detect::may_change(&body, masker).map_err(bad_json)?
    {
        // Most pods and ConfigMaps: nothing the detectors could find, no `Value` round trip.
        return Ok(body);
    }
    let mut value: Value = serde_json::from_slice(&body).map_err(bad_json)?;
    if !masking.apply(&mut value, counts) {
        return Ok(body);
    }
    // Straight into bytes: `to_string` goes through `fmt::Write`, which was a sixth of the
    // CPU of masking a list of Secrets.
    let out = serde_json::to_vec(&value).map_err(bad_json)?;
    Ok(Bytes::from(out))
}

/// Splits a watch stream into events and masks each as soon as it is complete.
#[derive(Debug)]
pub struct WatchMasker {
    buffer: BytesMut,
    limit: usize,
    masking: Masking,
}

impl WatchMasker {
    /// `limit` bounds one event.
    pub fn new(limit: usize, masking: Masking) -> Self {
        Self {
            buffer: BytesMut::new(),
            limit,
            masking,
        }
    }

    /// Feeds bytes from the API server; returns the masked events completed by them, each
    /// followed by a newline as the API server frames them.
    pub fn push(&mut self, chunk: &[u8], counts: &mut MaskCounts) -> Result<Bytes, MaskError> {
        self.buffer.extend_from_slice(chunk);
        let mut out = BytesMut::new();
        loop {
            let Some(start) = self.buffer.iter().position(|b| !b.is_ascii_whitespace()) else {
                self.buffer.clear();
                break;
            };
            // Only the event's extent is parsed here; the event itself is one document.
            let mut events = serde_json::Deserializer::from_slice(&self.buffer[start..]).into_iter::<IgnoredAny>();
            match events.next() {
                Some(Ok(_)) => {
                    let end = start + events.byte_offset();
                    let event = self.buffer.split_to(end).freeze().slice(start..);
                    out.extend_from_slice(&mask_document(event, &self.masking, counts)?);
                    out.extend_from_slice(b"\n");
                }
                Some(Err(e)) if e.is_eof() => break,
                None => {
                    self.buffer.clear();
                    break;
                }
                Some(Err(e)) => return Err(MaskError::BadJson(e.to_string())),
            }
        }
        if self.buffer.len() > self.limit {
            return Err(MaskError::TooLarge(self.limit));
        }
        Ok(out.freeze())
    }

    /// At the end of the stream: an incomplete event left over is an error.
    pub fn finish(&self) -> Result<(), MaskError> {
        if self.buffer.iter().all(u8::is_ascii_whitespace) {
            Ok(())
        } else {
            Err(MaskError::BadJson("the watch stream ended inside an event".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_mask::DataClass;
    use serde_json::json;

    fn secret(name: &str) -> Value {
        json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": name}, "data": {"password": "aHVudGVyMg=="}})
    }

    #[test]
    fn accept_keeps_only_json_alternatives() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(json_accept(Some(kubectl)), kubectl);
        assert_eq!(
            json_accept(Some("application/vnd.kubernetes.protobuf,application/json")),
            "application/json"
        );
        assert_eq!(
            json_accept(Some("application/vnd.kubernetes.protobuf")),
            "application/json"
        );
        assert_eq!(json_accept(Some("application/yaml, */*")), "application/json");
        assert_eq!(json_accept(None), "application/json");
    }

    #[test]
    fn documents_are_masked_and_gzip_is_read() {
        let list = json!({"kind": "SecretList", "items": [secret("a"), secret("b")]});
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, list.to_string().as_bytes()).unwrap();
        let compressed = Bytes::from(gz.finish().unwrap());
        let plain = decode(compressed.clone(), Some("gzip"), 1 << 20).unwrap();
        let mut counts = MaskCounts::default();
        let masked = mask_document(plain, &Masking::Secrets, &mut counts).unwrap();
        assert!(!String::from_utf8_lossy(&masked).contains("aHVudGVyMg"));
        assert_eq!(counts.get(DataClass::Secret), 2);
        assert_eq!(decode(compressed, Some("gzip"), 10), Err(MaskError::TooLarge(10)));
        assert!(matches!(
            decode(Bytes::new(), Some("br"), 10),
            Err(MaskError::Encoding(_))
        ));
        assert!(matches!(
            mask_document(Bytes::from_static(b"k8s\0proto"), &Masking::Secrets, &mut counts),
            Err(MaskError::BadJson(_))
        ));
        let detect = Masking::Detect(gatehouse_mask::Masker::all());
        for garbage in [&b"k8s\0proto"[..], b"{\"kind\": \"Pod\"} trailing", b"{\"env\": ["] {
            assert!(matches!(
                mask_document(Bytes::from_static(garbage), &detect, &mut counts),
                Err(MaskError::BadJson(_))
            ));
        }
        assert!(is_json(Some("application/json;as=Table;v=v1;g=meta.k8s.io")));
        assert!(!is_json(Some("application/vnd.kubernetes.protobuf")));
    }

    #[test]
    fn watch_events_are_masked_one_by_one_across_chunks() {
        let first = json!({"type": "ADDED", "object": secret("a")}).to_string();
        let second = json!({"type": "MODIFIED", "object": secret("b")}).to_string();
        let stream = format!("{first}\n{second}\n");
        let (head, tail) = stream.as_bytes().split_at(first.len() + 10);
        let mut watch = WatchMasker::new(1 << 20, Masking::Secrets);
        let mut counts = MaskCounts::default();
        let out1 = watch.push(head, &mut counts).unwrap();
        let text1 = String::from_utf8(out1.to_vec()).unwrap();
        assert_eq!(text1.lines().count(), 1);
        assert!(text1.contains(KUBE_MASKED_DATA) && text1.ends_with('\n'));
        let out2 = watch.push(tail, &mut counts).unwrap();
        assert!(String::from_utf8_lossy(&out2).contains("MODIFIED"));
        assert!(!String::from_utf8_lossy(&out2).contains("aHVudGVyMg"));
        watch.finish().unwrap();
        assert_eq!(counts.get(DataClass::Secret), 2);

        let mut small = WatchMasker::new(8, Masking::Secrets);
        assert_eq!(
            small.push(b"{\"type\":\"ADDED\",", &mut counts),
            Err(MaskError::TooLarge(8))
        );
        let mut cut = WatchMasker::new(100, Masking::Secrets);
        cut.push(b"{\"type\":", &mut counts).unwrap();
        assert!(cut.finish().is_err());
        assert!(matches!(
            WatchMasker::new(100, Masking::Secrets).push(b"]]", &mut counts),
            Err(MaskError::BadJson(_))
        ));
    }

    #[test]
    fn placeholders_in_writes_are_found() {
        assert!(carries_placeholder(
            format!("{{\"data\":{{\"k\":\"{KUBE_MASKED_DATA}\"}}}}").as_bytes()
        ));
        assert!(carries_placeholder(b"stringData:\n  k: <masked>\n"));
        assert!(!carries_placeholder(b"{\"data\":{\"k\":\"aHVudGVyMg==\"}}"));
    }
}
