//! A small HTTP client for the commands that act for a person or an agent through the
//! gateway's admin API.

use anyhow::Context as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The caller's token: `--token` or `GATEHOUSE_TOKEN`, trimmed.
pub fn require_token(token: Option<String>) -> anyhow::Result<String> {
    let token = token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
    token.context("no token: pass --token or set GATEHOUSE_TOKEN to your OIDC token")
}

/// Sends one JSON request to the admin API; returns the status and the JSON body
/// (`null` when the body is empty).
pub async fn call(
    method: http::Method,
    url: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(http::StatusCode, serde_json::Value)> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .context("cannot load the system's trusted certificates")?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let payload = match &body {
        Some(v) => Bytes::from(serde_json::to_vec(v)?),
        None => Bytes::new(),
    };
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(payload))?;
    let response = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(request))
        .await
        .with_context(|| format!("{url} did not answer within 30 s"))?
        .with_context(|| format!("cannot reach the gateway at {url}"))?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Ok((status, value))
}

/// The `error` field of an API error body, or the body itself.
pub fn error_message(value: &serde_json::Value) -> String {
    match value.get("error").and_then(|e| e.as_str()) {
        Some(e) => e.to_string(),
        None => value.to_string(),
    }
}

/// A current-thread runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}
