//! The approvers' and auditors' web console on the admin listener: sign-in with the
//! configured OIDC issuer (authorization code flow with PKCE), pending approvals that update
//! live, and the sessions of the audit log with their decisions and shell recordings.
//!
//! Pages are rendered on the server with every value escaped ([`html::esc`]); the only
//! script is `/console/static/console.js` (polling, countdowns, the recording player), and
//! the Content-Security-Policy allows nothing else.

mod approvals;
mod auth;
mod dev_login;
mod html;
mod oidc;
mod sessions;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gatehouse_core::Gateway;
use gatehouse_identity::{DevIssuer, PrincipalKind};
use serde::Deserialize;

use crate::config::Config;

/// `[console]`: the web console at `/` on the admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The issuer people sign in with; one of `identity.issuers` (a user issuer). Default:
    /// the development issuer's user issuer when it is on, else the first user issuer.
    pub issuer: Option<String>,
    /// The console's client id at the issuer. Default: the issuer's `audience`, since the
    /// ID token the console receives must pass the same audience check as every token.
    pub client_id: Option<String>,
    /// A file holding the client secret, for issuers that do not accept public clients
    /// (sent with HTTP Basic authentication to the token endpoint).
    pub client_secret_file: Option<PathBuf>,
    /// Scopes asked for (default `openid email profile`).
    #[serde(default = "default_scopes")]
    pub scopes: String,
    /// Groups whose members may browse every session in the audit log. Others see the
    /// sessions of requests they may approve.
    #[serde(default = "default_auditor_groups")]
    pub auditor_groups: Vec<String>,
    /// A console sign-in lasts this long at most, and never beyond the ID token's expiry.
    #[serde(default = "default_session_lifetime", with = "humantime_serde_like")]
    pub session_lifetime: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            issuer: None,
            client_id: None,
            client_secret_file: None,
            scopes: default_scopes(),
            auditor_groups: default_auditor_groups(),
            session_lifetime: default_session_lifetime(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_scopes() -> String {
    "openid email profile".to_owned()
}

fn default_auditor_groups() -> Vec<String> {
    vec!["auditors".to_owned()]
}

fn default_session_lifetime() -> Duration {
    Duration::from_secs(8 * 60 * 60)
}

/// `"8h"`-style durations, like the rest of the config.
mod humantime_serde_like {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Everything the console's handlers share.
pub struct Console {
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) dev: Option<Arc<DevIssuer>>,
    /// The issuer people sign in with.
    pub(crate) issuer: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: Option<String>,
    pub(crate) scopes: String,
    /// The admin listener's URL as browsers see it, without a trailing slash.
    pub(crate) base_url: String,
    pub(crate) secure_cookies: bool,
    pub(crate) auditor_groups: Vec<String>,
    pub(crate) session_lifetime: Duration,
    pub(crate) audit_dir: PathBuf,
    pub(crate) recordings_dir: PathBuf,
    pub(crate) sessions: auth::SessionStore,
    pub(crate) logins: auth::LoginStore,
    pub(crate) dev_codes: dev_login::CodeStore,
    pub(crate) oidc: oidc::Client,
}

impl Console {
    /// The console for `config`, or `None` when it is switched off.
    pub fn new(
        config: &Config,
        gateway: Arc<Gateway>,
        dev: Option<Arc<DevIssuer>>,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let c = &config.console;
        if !c.enabled {
            return Ok(None);
        }
        let (issuer, audience) = match (&c.issuer, &dev) {
            (Some(name), _) => match config.identity.issuers.iter().find(|i| &i.issuer == name) {
                Some(i) if i.principal == PrincipalKind::User => (i.issuer.clone(), i.audience.clone()),
                Some(_) => bail!("console.issuer = {name:?} is an agent issuer; people sign in with a user issuer"),
                None => match &dev {
                    Some(dev) if *name == dev.user_issuer() => {
                        (name.clone(), config.identity.dev_issuer.audience.clone())
                    }
                    _ => bail!("console.issuer = {name:?} is not one of identity.issuers"),
                },
            },
            (None, Some(dev)) => (dev.user_issuer(), config.identity.dev_issuer.audience.clone()),
            (None, None) => match config
                .identity
                .issuers
                .iter()
                .find(|i| i.principal == PrincipalKind::User)
            {
                Some(i) => (i.issuer.clone(), i.audience.clone()),
                None => {
                    tracing::warn!("The console is off: no user issuer to sign in with.");
                    return Ok(None);
                }
            },
        };
        let client_secret = match &c.client_secret_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("console.client_secret_file {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let base_url = config.admin_url();
        Ok(Some(Arc::new(Self {
            gateway,
            dev,
            issuer,
            client_id: c.client_id.clone().unwrap_or(audience),
            client_secret,
            scopes: c.scopes.clone(),
            secure_cookies: base_url.starts_with("https://"),
            base_url,
            auditor_groups: c.auditor_groups.clone(),
            session_lifetime: c.session_lifetime,
            audit_dir: config.audit_dir(),
            recordings_dir: config.recordings_dir(),
            sessions: auth::SessionStore::default(),
            logins: auth::LoginStore::default(),
            dev_codes: dev_login::CodeStore::default(),
            oidc: oidc::Client::new()?,
        })))
    }

    /// Where the issuer sends the browser back with the code.
    pub(crate) fn redirect_uri(&self) -> String {
        format!("{}/auth/callback", self.base_url)
    }

    /// Whether the development issuer is the one people sign in with.
    pub(crate) fn signs_in_with_dev(&self) -> bool {
        self.dev.as_ref().is_some_and(|d| d.user_issuer() == self.issuer)
    }
}

/// The console's routes (HTML pages; the API stays under `/api`).
pub fn router(console: Arc<Console>) -> Router {
    let mut router = Router::new()
        .route("/", get(approvals::home))
        .route("/auth/login", get(auth::login))
        .route("/auth/callback", get(auth::callback))
        .route("/auth/logout", post(auth::logout))
        .route("/approvals", get(approvals::page))
        .route("/approvals/pending", get(approvals::pending_fragment))
        .route("/approvals/{id}", get(approvals::show))
        .route("/approvals/{id}/approve", post(approvals::approve))
        .route("/approvals/{id}/deny", post(approvals::deny))
        .route("/sessions", get(sessions::list))
        .route("/sessions/{id}", get(sessions::show))
        .route("/sessions/{id}/recordings/{seq}", get(sessions::recording))
        .route("/console/static/console.js", get(script))
        .route("/console/static/console.css", get(style));
    if console.signs_in_with_dev() {
        router = router
            .route("/dev/users/authorize", get(dev_login::form).post(dev_login::submit))
            .route("/dev/users/token", post(dev_login::token));
    }
    router
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

/// The extra discovery fields of the development user issuer when the console signs in
/// with it: a real authorization and token endpoint.
pub fn dev_discovery_fields(base_url: &str) -> serde_json::Value {
    serde_json::json!({
        "authorization_endpoint": format!("{base_url}/dev/users/authorize"),
        "token_endpoint": format!("{base_url}/dev/users/token"),
        "response_types_supported": ["code", "id_token"],
        "grant_types_supported": ["authorization_code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": ["openid", "email", "profile"],
    })
}

/// The policy every console answer carries: scripts and styles from this origin only, no
/// frames, forms post back here only, and no referrer (codes travel in URLs).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("static/console.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("static/console.css"),
    )
        .into_response()
}
