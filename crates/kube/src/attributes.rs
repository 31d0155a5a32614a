//! Kubernetes authorization attributes of one API request, derived the way the API server's
//! `RequestInfoFactory` does (verb from method and path, group, version, resource,
//! subresource, namespace, name), after the path has been canonicalised. Anything the gateway
//! and the API server could read differently is refused rather than guessed: the gateway
//! decides on the canonical path and forwards exactly that path.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::{Value, json};

/// Why a request path or query was refused before any decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path has an empty segment ('//')")]
    EmptySegment,
    #[error("the path has a dot segment ('.' or '..')")]
    DotSegment,
    #[error("the path has a malformed percent-encoding")]
    BadPercent,
    #[error("the path encodes a character that changes its meaning ({0})")]
    AmbiguousEncoding(&'static str),
    #[error("the path has a backslash, control character or non-UTF-8 byte")]
    BadCharacter,
    #[error("the query names {0:?} more than once")]
    DuplicateParameter(&'static str),
    #[error("the query parameter {0} has a value that is not a boolean")]
    NotBoolean(&'static str),
    #[error("a named object cannot be watched with ?watch; use a fieldSelector on the list")]
    NamedWatch,
    #[error("the HTTP method {0} has no Kubernetes verb")]
    Method(String),
    #[error("the port-forward port {0:?} is not a port number (1-65535)")]
    BadPort(String),
}

/// What kind of path a request addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// `/api`, `/apis`, a group or version listing, `/version`, `/openapi/...`: needs only
    /// `connect`.
    Discovery,
    /// An API resource (`/api/v1/...`, `/apis/<group>/<version>/...`).
    Resource,
    /// Any other path (`/healthz`, `/metrics`, `/logs`, ...).
    NonResource,
}

/// The attributes policy decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub kind: PathKind,
    /// The Cedar action: a Kubernetes verb, or an exec-class action for the subresources
    /// that open a stream into a workload (`exec`, `attach`, `portforward`, `proxy`,
    /// `ephemeralcontainers`), whatever the method.
    pub action: &'static str,
    /// `""` for the core group.
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The canonical path, percent-encoded as it is forwarded (no query).
    pub path: String,
    /// The query exactly as the client sent it (forwarded unchanged once checked).
    pub query: Option<String>,
    /// For `pods/portforward`: the ports of its `ports=` query (WebSocket clients name them
    /// there; kubectl's SPDY tunnel names them only inside the stream, so they are unknown).
    pub ports: Vec<u16>,
}

/// Characters re-encoded when the canonical path is forwarded: everything Go's
/// `url.PathEscape` would escape in a segment, except that `/` separates segments.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'\\')
    .add(b'/');

/// Exec-class subresources of the core group and their actions.
const EXEC_CLASS: [(&str, &str, &str); 7] = [
    ("pods", "exec", "exec"),
    ("pods", "attach", "attach"),
    ("pods", "portforward", "portforward"),
    ("pods", "ephemeralcontainers", "ephemeralcontainers"),
    ("pods", "proxy", "proxy"),
    ("services", "proxy", "proxy"),
    ("nodes", "proxy", "proxy"),
];

impl Attributes {
    /// Derives the attributes of `method` on `raw_path` (as received, still percent-encoded,
    /// relative to the cluster's API root) with `raw_query` (without the `?`).
    pub fn parse(method: &str, raw_path: &str, raw_query: Option<&str>) -> Result<Self, PathError> {
        let segments = canonical_segments(raw_path)?;
        let query = Query::parse(raw_query.unwrap_or(""))?;
        let path = if segments.is_empty() {
            "/".to_string()
        } else {
            segments
                .iter()
                .map(|s| format!("/{}", utf8_percent_encode(s, SEGMENT)))
                .collect()
        };
        let mut attrs = Self {
            kind: PathKind::NonResource,
            action: "get",
            api_group: String::new(),
            api_version: String::new(),
            resource: String::new(),
            subresource: None,
            namespace: None,
            name: None,
            path,
            query: raw_query.filter(|q| !q.is_empty()).map(str::to_string),
            ports: Vec::new(),
        };
        let mut verb = method_verb(method)?;
        let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
        let rest: &[&str] = match parts.as_slice() {
            ["api"] | ["api", _] | ["apis"] | ["apis", _] | ["apis", _, _] | ["version"] => {
                attrs.kind = PathKind::Discovery;
                attrs.action = "connect";
                return Ok(attrs);
            }
            ["openapi", ..] if verb == "get" => {
                attrs.kind = PathKind::Discovery;
                attrs.action = "connect";
                return Ok(attrs);
            }
            ["api", version, rest @ ..] => {
                attrs.api_version = (*version).to_string();
                rest
            }
            ["apis", group, version, rest @ ..] => {
                attrs.api_group = (*group).to_string();
                attrs.api_version = (*version).to_string();
                rest
            }
            _ => {
                attrs.action = verb;
                return Ok(attrs);
            }
        };
        attrs.kind = PathKind::Resource;
        let mut rest = rest;
        if rest.first() == Some(&"watch") {
            verb = "watch";
            rest = &rest[1..];
        }
        if rest.first() == Some(&"namespaces")
            && let Some(ns) = rest.get(1)
        {
            attrs.namespace = Some((*ns).to_string());
            if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
                rest = &rest[2..];
            }
        }
        if let Some(resource) = rest.first() {
            attrs.resource = (*resource).to_string();
        }
        if let Some(name) = rest.get(1) {
            attrs.name = Some((*name).to_string());
        }
        if let Some(sub) = rest.get(2) {
            attrs.subresource = Some((*sub).to_string());
        }
        if attrs.name.is_none() {
            match verb {
                "get" => {
                    verb = if query.watch == Some(true) { "watch" } else { "list" };
                }
                "delete" => verb = "deletecollection",
                _ => {}
            }
            if matches!(verb, "list" | "watch") {
                attrs.name = query.field_selector_name.clone();
            }
        } else if query.watch == Some(true) && verb == "get" {
            return Err(PathError::NamedWatch);
        }
        attrs.action = verb;
        if attrs.api_group.is_empty()
            && let Some(sub) = &attrs.subresource
            && let Some((_, _, action)) = EXEC_CLASS.iter().find(|(r, s, _)| *r == attrs.resource && s == sub)
        {
            attrs.action = action;
        }
        if attrs.action == "portforward" {
            attrs.ports = query.ports()?;
        }
        Ok(attrs)
    }

    /// True for the exec-class actions, which open a stream into a workload.
    pub fn is_exec_class(&self) -> bool {
        matches!(
            self.action,
            "exec" | "attach" | "portforward" | "proxy" | "ephemeralcontainers"
        )
    }

    /// Whether the response may carry Secret values and so must be masked.
    pub fn may_carry_secrets(&self) -> bool {
        self.kind == PathKind::Resource && self.api_group.is_empty() && self.resource == "secrets"
    }

    /// The Cedar context (`Kube::Request`).
    pub fn context(&self) -> Value {
        let mut context = json!({
            "api_group": self.api_group,
            "api_version": self.api_version,
            "resource": self.resource,
            "path": self.path,
            "non_resource": self.kind != PathKind::Resource,
        });
        if !self.ports.is_empty() {
            context["ports"] = self.ports.iter().map(|p| Value::from(*p)).collect();
        }
        for (key, value) in [
            ("subresource", &self.subresource),
            ("namespace", &self.namespace),
            ("name", &self.name),
        ] {
            if let Some(v) = value {
                context[key] = v.clone().into();
            }
        }
        context
    }

    /// The path and query forwarded upstream.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

fn method_verb(method: &str) -> Result<&'static str, PathError> {
    Ok(match method {
        "GET" | "HEAD" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        other => return Err(PathError::Method(other.chars().take(20).collect())),
    })
}

/// The decoded segments of a path, refusing whatever could be read two ways.
fn canonical_segments(raw: &str) -> Result<Vec<String>, PathError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut segments = Vec::new();
    for raw_segment in rest.split('/') {
        if raw_segment.is_empty() {
            return Err(PathError::EmptySegment);
        }
        check_encoding(raw_segment)?;
        let decoded = percent_decode_str(raw_segment)
            .decode_utf8()
            .map_err(|_| PathError::BadCharacter)?
            .into_owned();
        if decoded == "." || decoded == ".." {
            return Err(PathError::DotSegment);
        }
        if decoded.chars().any(|c| c.is_control() || c == '\\') {
            return Err(PathError::BadCharacter);
        }
        segments.push(decoded);
    }
    Ok(segments)
}

/// Every `%` starts two hex digits, and none encodes a character that separates or escapes
/// (`/`, `\`, `%`, `.`, `?`, `#`, `;`): servers and proxies disagree on those.
fn check_encoding(segment: &str) -> Result<(), PathError> {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadPercent)?;
                let text = std::str::from_utf8(hex).map_err(|_| PathError::BadPercent)?;
                let byte = u8::from_str_radix(text, 16).map_err(|_| PathError::BadPercent)?;
                let what = match byte {
                    b'/' => "%2F, a slash",
                    b'\\' => "%5C, a backslash",
                    b'%' => "%25, a percent sign",
                    b'.' => "%2E, a dot",
                    b'?' => "%3F, a question mark",
                    b'#' => "%23, a hash",
                    b';' => "%3B, a semicolon",
                    0 => "%00, a NUL",
                    _ => {
                        i += 3;
                        continue;
                    }
                };
                return Err(PathError::AmbiguousEncoding(what));
            }
            b'\\' | b';' => return Err(PathError::BadCharacter),
            _ => i += 1,
        }
    }
    Ok(())
}

/// The query parameters that change a request's attributes.
#[derive(Debug, Default)]
struct Query {
    watch: Option<bool>,
    field_selector_name: Option<String>,
    /// Every `ports` value as sent (the kubelet splits each at commas).
    ports: Vec<String>,
}

impl Query {
    fn parse(raw: &str) -> Result<Self, PathError> {
        let mut query = Query::default();
        let mut seen_selector = false;
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = form_decode(key)?;
            let value = form_decode(value)?;
            match key.as_str() {
                "watch" => {
                    if query.watch.is_some() {
                        return Err(PathError::DuplicateParameter("watch"));
                    }
                    query.watch = Some(parse_bool(&value).ok_or(PathError::NotBoolean("watch"))?);
                }
                "fieldSelector" => {
                    if seen_selector {
                        return Err(PathError::DuplicateParameter("fieldSelector"));
                    }
                    seen_selector = true;
                    query.field_selector_name = exact_name(&value);
                }
                "ports" => query.ports.push(value),
                _ => {}
            }
        }
        Ok(query)
    }
}

impl Query {
    /// The port-forward ports, parsed as the kubelet does (`ports=80,443` or `ports=80&ports=443`),
    /// without repeats; a value that is not a port refuses the request.
    fn ports(&self) -> Result<Vec<u16>, PathError> {
        let mut ports = Vec::new();
        for raw in self.ports.iter().flat_map(|v| v.split(',')) {
            let port = raw
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| PathError::BadPort(raw.chars().take(20).collect()))?;
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        Ok(ports)
    }
}

/// `application/x-www-form-urlencoded` decoding as Go's `url.ParseQuery` does it.
fn form_decode(s: &str) -> Result<String, PathError> {
    let plus = s.replace('+', " ");
    check_percent_syntax(&plus)?;
    percent_decode_str(&plus)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| PathError::BadCharacter)
}

fn check_percent_syntax(s: &str) -> Result<(), PathError> {
    let bytes = s.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let ok = bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !ok {
                return Err(PathError::BadPercent);
            }
        }
    }
    Ok(())
}

/// Go's `strconv.ParseBool`, which the API server uses for `watch`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The name of a field selector that requires exactly one `metadata.name` (as the API server
/// fills `name` for list and watch requests).
fn exact_name(selector: &str) -> Option<String> {
    if selector.contains(',') {
        return None;
    }
    let value = selector
        .strip_prefix("metadata.name==")
        .or_else(|| selector.strip_prefix("metadata.name="))?;
    let valid = !value.is_empty() && value != "." && value != ".." && !value.contains(['/', '%', '\\', '=', '!']);
    valid.then(|| value.to_string())
}

#[cfg(test)]
mod tests;
