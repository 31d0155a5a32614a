//! The console as an OIDC relying party: discovery of the issuer's endpoints and the code
//! exchange at its token endpoint. Token verification is not here: the ID token goes
//! through the gateway's one verifier like every other token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Discovery documents are kept this long.
const DISCOVERY_TTL: Duration = Duration::from_secs(300);
/// Largest answer read from the issuer.
const MAX_BODY: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);

/// The endpoints of the code flow.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
}

pub struct Client {
    http: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    cache: Mutex<HashMap<String, (Instant, Endpoints)>>,
}

impl Client {
    pub fn new() -> anyhow::Result<Self> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .context("cannot load the system's trusted certificates")?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            http: HyperClient::builder(TokioExecutor::new()).build(connector),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The issuer's authorization and token endpoints from its discovery document.
    pub async fn discover(&self, issuer: &str) -> anyhow::Result<Endpoints> {
        if let Some((at, e)) = self.lock().get(issuer)
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(e.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let request = http::Request::get(&url)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))?;
        let (status, body) = self.send(request).await?;
        if !status.is_success() {
            bail!("{url} answered {status}");
        }
        let doc: Value = serde_json::from_slice(&body).with_context(|| format!("{url} is not JSON"))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
            bail!("{url} names another issuer");
        }
        let endpoint = |name: &str| -> anyhow::Result<String> {
            let value = doc
                .get(name)
                .and_then(Value::as_str)
                .with_context(|| format!("the issuer has no {name} (it does not offer the code flow)"))?;
            if !url_allowed(value) {
                bail!("{name} {value:?} is neither https nor a loopback http URL");
            }
            Ok(value.to_owned())
        };
        let endpoints = Endpoints {
            authorization_endpoint: endpoint("authorization_endpoint")?,
            token_endpoint: endpoint("token_endpoint")?,
        };
        self.lock()
            .insert(issuer.to_owned(), (Instant::now(), endpoints.clone()));
        Ok(endpoints)
    }

    /// Exchanges an authorization code (with its PKCE verifier) for an ID token.
    pub async fn exchange(
        &self,
        token_endpoint: &str,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        client_id: &str,
        client_secret: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let mut request = http::Request::post(token_endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json");
        match client_secret {
            // RFC 6749 section 2.3.1: both parts form-encoded, then Basic.
            Some(secret) => {
                let pair = format!(
                    "{}:{}",
                    super::auth::urlencode(client_id),
                    super::auth::urlencode(secret)
                );
                request = request.header(http::header::AUTHORIZATION, format!("Basic {}", STANDARD.encode(pair)));
            }
            None => form.push(("client_id", client_id)),
        }
        let body = serde_urlencoded::to_string(&form)?;
        let (status, body) = self.send(request.body(Full::new(Bytes::from(body)))?).await?;
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let error = answer.get("error").and_then(Value::as_str).unwrap_or("no error code");
            let detail = answer.get("error_description").and_then(Value::as_str).unwrap_or("");
            bail!("the token endpoint answered {status}: {error} {detail}");
        }
        answer
            .get("id_token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("the token endpoint sent no id_token")
    }

    async fn send(&self, request: http::Request<Full<Bytes>>) -> anyhow::Result<(http::StatusCode, Bytes)> {
        let uri = request.uri().to_string();
        let response = tokio::time::timeout(TIMEOUT, self.http.request(request))
            .await
            .with_context(|| format!("{uri} did not answer within 5 s"))?
            .with_context(|| format!("cannot reach {uri}"))?;
        let status = response.status();
        let body = tokio::time::timeout(TIMEOUT, Limited::new(response.into_body(), MAX_BODY).collect())
            .await
            .with_context(|| format!("{uri} did not finish its answer within 5 s"))?
            .map_err(|e| anyhow::anyhow!("reading the answer of {uri}: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Endpoints)>> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// https anywhere; plain http only to this machine (the development issuer).
fn url_allowed(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    matches!(host, "localhost" | "[::1]") || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// A string claim of a compact JWS whose signature was already verified.
pub fn claim(token: &str, name: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.get(name)?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_or_loopback() {
        assert!(url_allowed("https://idp.example.com/authorize"));
        assert!(url_allowed("http://127.0.0.1:8080/dev/users/token"));
        assert!(url_allowed("http://localhost/x"));
        assert!(!url_allowed("http://idp.example.com/token"));
        assert!(!url_allowed("http://127.0.0.1.evil.example/token"));
        assert!(!url_allowed("javascript:alert(1)"));
    }

    #[test]
    fn claims_are_read_from_the_payload() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"nonce":"abc","n":1}"#);
        let token = format!("h.{payload}.s");
        assert_eq!(claim(&token, "nonce").as_deref(), Some("abc"));
        assert_eq!(claim(&token, "n"), None);
        assert_eq!(claim("garbage", "nonce"), None);
    }
}
