//! The development issuer's authorization and token endpoints, so the console signs in
//! through the same code flow (with PKCE) as with a real issuer. The authorization
//! endpoint is a form where you pick any subject and groups: it exists only when the
//! development issuer is on, which the config allows only on a loopback admin listener.
//! Its only client is this gateway's console.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use gatehouse_identity::MintRequest;
use serde::Deserialize;
use serde_json::json;

use super::Console;
use super::auth::{pkce_challenge, pkce_verifier_ok, random_token, same_secret};
use super::html::{self, esc};

/// Codes live this long and are used once.
const CODE_TTL: Duration = Duration::from_secs(60);
/// ID tokens from the sign-in form last this long.
const TOKEN_TTL: Duration = Duration::from_secs(60 * 60);
const MAX_CODES: usize = 1_000;

struct IssuedCode {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    id_token: String,
    issued: SystemTime,
}

#[derive(Default)]
pub struct CodeStore {
    inner: Mutex<HashMap<String, IssuedCode>>,
}

impl CodeStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, IssuedCode>> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The authorization request's parameters (query of the GET, hidden fields of the POST).
#[derive(Deserialize)]
pub struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    scope: Option<String>,
    // The form's own fields.
    subject: Option<String>,
    email: Option<String>,
    groups: Option<String>,
}

/// Checks what OAuth requires before anything is shown: a known client and its exact
/// redirect URI (else no redirect at all), a code request with an S256 challenge.
fn check(console: &Console, p: &AuthorizeParams) -> Result<(), String> {
    if p.client_id.as_deref() != Some(console.client_id.as_str()) {
        return Err("unknown client_id: the development issuer serves this gateway's console only".into());
    }
    if p.redirect_uri.as_deref() != Some(console.redirect_uri().as_str()) {
        return Err("redirect_uri is not the console's callback".into());
    }
    if p.response_type.as_deref() != Some("code") {
        return Err("response_type must be code".into());
    }
    if p.code_challenge_method.as_deref() != Some("S256") || p.code_challenge.as_deref().is_none_or(|c| c.len() != 43) {
        return Err("PKCE is required: code_challenge with code_challenge_method=S256".into());
    }
    if p.state.as_deref().is_none_or(str::is_empty) {
        return Err("state is required".into());
    }
    Ok(())
}

fn refuse(message: &str) -> Response {
    html::error_page(None, StatusCode::BAD_REQUEST, message)
}

/// `GET /dev/users/authorize`: the sign-in form.
pub async fn form(State(console): State<Arc<Console>>, Query(p): Query<AuthorizeParams>) -> Response {
    if let Err(message) = check(&console, &p) {
        return refuse(&message);
    }
    let hidden = |name: &str, value: &Option<String>| {
        format!(
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            esc(value.as_deref().unwrap_or(""))
        )
    };
    let body = format!(
        "<section class=\"signin\"><h1>Development sign-in</h1>\
         <p class=\"devnote\"><strong>Development issuer — not for production.</strong> \
         Anyone who can reach this page can sign in as anyone. It runs only on a loopback admin listener.</p>\
         <form method=\"post\" action=\"/dev/users/authorize\" class=\"stack\">{}{}{}{}{}{}{}{}\
         <label>Subject <input name=\"subject\" id=\"subject\" required maxlength=\"200\" autocomplete=\"username\"></label>\
         <label>Email (optional) <input name=\"email\" id=\"email\" type=\"email\" maxlength=\"200\"></label>\
         <label>Groups, separated by spaces or commas <input name=\"groups\" id=\"groups\" maxlength=\"1000\" placeholder=\"dba-leads auditors\"></label>\
         <button type=\"submit\" id=\"dev-signin\">Sign in</button></form></section>",
        hidden("response_type", &p.response_type),
        hidden("client_id", &p.client_id),
        hidden("redirect_uri", &p.redirect_uri),
        hidden("state", &p.state),
        hidden("nonce", &p.nonce),
        hidden("code_challenge", &p.code_challenge),
        hidden("code_challenge_method", &p.code_challenge_method),
        hidden("scope", &p.scope),
    );
    html::page("Development sign-in", None, &body).into_response()
}

/// `POST /dev/users/authorize`: mints the ID token for the chosen identity and sends the
/// browser back to the console with a one-time code for it.
pub async fn submit(State(console): State<Arc<Console>>, body: axum::body::Bytes) -> Response {
    let Ok(p) = serde_urlencoded::from_bytes::<AuthorizeParams>(&body) else {
        return refuse("the form could not be read");
    };
    if let Err(message) = check(&console, &p) {
        return refuse(&message);
    }
    let Some(dev) = &console.dev else {
        return refuse("the development issuer is off");
    };
    let subject = p.subject.as_deref().map(str::trim).unwrap_or("");
    if subject.is_empty() || subject.len() > 200 {
        return refuse("a subject is required");
    }
    let groups: Vec<String> = p
        .groups
        .as_deref()
        .unwrap_or("")
        .split([' ', ','])
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect();
    let request = MintRequest {
        subject: subject.to_owned(),
        groups,
        ttl: TOKEN_TTL,
        agent: false,
        email: p
            .email
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned),
        name: None,
        owner: None,
    };
    let id_token = match dev.mint_with_nonce(&request, p.nonce.as_deref()) {
        Ok(t) => t,
        Err(e) => return refuse(&format!("cannot mint a token: {e}")),
    };
    let code = random_token();
    {
        let mut codes = console.dev_codes.lock();
        let now = SystemTime::now();
        codes.retain(|_, c| now.duration_since(c.issued).unwrap_or_default() < CODE_TTL);
        if codes.len() >= MAX_CODES {
            return refuse("too many sign-ins in progress; try again in a minute");
        }
        codes.insert(
            code.clone(),
            IssuedCode {
                client_id: console.client_id.clone(),
                redirect_uri: console.redirect_uri(),
                challenge: p.code_challenge.clone().unwrap_or_default(),
                id_token,
                issued: now,
            },
        );
    }
    let query = serde_urlencoded::to_string([("code", code.as_str()), ("state", p.state.as_deref().unwrap_or(""))])
        .unwrap_or_default();
    Redirect::to(&format!("{}?{query}", console.redirect_uri())).into_response()
}

#[derive(Deserialize)]
pub struct TokenForm {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    client_id: Option<String>,
    code_verifier: Option<String>,
}

fn token_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// `POST /dev/users/token`: the code exchange (RFC 6749 section 4.1.3 with RFC 7636).
pub async fn token(State(console): State<Arc<Console>>, body: axum::body::Bytes) -> Response {
    let Ok(f) = serde_urlencoded::from_bytes::<TokenForm>(&body) else {
        return token_error("invalid_request", "send an application/x-www-form-urlencoded body");
    };
    if f.grant_type.as_deref() != Some("authorization_code") {
        return token_error("unsupported_grant_type", "only authorization_code");
    }
    let Some(code) = f.code.as_deref() else {
        return token_error("invalid_request", "code is missing");
    };
    // Taken out whatever happens next: a code is tried once.
    let Some(issued) = console.dev_codes.lock().remove(code) else {
        return token_error("invalid_grant", "unknown, used or expired code");
    };
    if SystemTime::now().duration_since(issued.issued).unwrap_or_default() >= CODE_TTL {
        return token_error("invalid_grant", "the code has expired");
    }
    if f.client_id.as_deref() != Some(issued.client_id.as_str())
        || f.redirect_uri.as_deref() != Some(issued.redirect_uri.as_str())
    {
        return token_error(
            "invalid_grant",
            "client_id or redirect_uri differ from the authorization request",
        );
    }
    let verifier = f.code_verifier.as_deref().unwrap_or("");
    if !pkce_verifier_ok(verifier) || !same_secret(&pkce_challenge(verifier), &issued.challenge) {
        return token_error(
            "invalid_grant",
            "the PKCE code_verifier does not match the code_challenge",
        );
    }
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "id_token": issued.id_token,
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL.as_secs(),
        })),
    )
        .into_response()
}
