//! Signing in and out: the authorization code flow with PKCE, the server-side session
//! store behind an `HttpOnly`, `SameSite=Strict` cookie, and the CSRF token every
//! state-changing form carries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_identity::Identity;
use serde::Deserialize;

use super::Console;
use super::html::{self, esc};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "gh_session";
/// The cookie binding a sign-in in progress to the browser that started it.
pub const LOGIN_COOKIE: &str = "gh_login";
/// How long a sign-in may take at the issuer.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Bounds on the in-memory stores, so a flood of sign-ins cannot exhaust memory.
const MAX_SESSIONS: usize = 10_000;
const MAX_LOGINS: usize = 1_000;

/// 32 random bytes, URL-safe base64 (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The system RNG failing is not something a web page can recover from.
    #[allow(clippy::expect_used)]
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random number generator");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The PKCE `S256` challenge of a verifier (RFC 7636 section 4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

/// Whether a PKCE verifier has the form RFC 7636 requires: 43-128 unreserved characters.
pub fn pkce_verifier_ok(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Equality in time independent of where the inputs differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// One signed-in browser.
#[derive(Clone, Debug)]
pub struct ConsoleSession {
    pub identity: Identity,
    /// The token for every state-changing form of this session.
    pub csrf: String,
    pub expires_at: SystemTime,
}

impl ConsoleSession {
    /// Whether a submitted CSRF token is this session's.
    pub fn csrf_ok(&self, submitted: Option<&str>) -> bool {
        submitted.is_some_and(|s| same_secret(s, &self.csrf))
    }
}

/// Server-side sessions keyed by the cookie value; the cookie carries nothing else.
#[derive(Default)]
pub struct SessionStore {
    inner: Mutex<HashMap<String, ConsoleSession>>,
}

impl SessionStore {
    /// Starts a session for `identity` ending at `expires_at`; returns the cookie value.
    pub fn create(&self, identity: Identity, expires_at: SystemTime) -> String {
        let id = random_token();
        let session = ConsoleSession {
            identity,
            csrf: random_token(),
            expires_at,
        };
        let mut map = lock(&self.inner);
        let now = SystemTime::now();
        map.retain(|_, s| s.expires_at > now);
        if map.len() >= MAX_SESSIONS {
            // Drop the session closest to its end rather than refuse everyone.
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires_at).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), session);
        id
    }

    /// The live session for a cookie value; an expired one is removed.
    pub fn get(&self, id: &str) -> Option<ConsoleSession> {
        let mut map = lock(&self.inner);
        match map.get(id) {
            Some(s) if s.expires_at > SystemTime::now() => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        lock(&self.inner).remove(id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A sign-in between the redirect to the issuer and the callback.
struct PendingLogin {
    verifier: String,
    nonce: String,
    return_to: String,
    started: SystemTime,
}

/// Sign-ins in progress, keyed by their `state`.
#[derive(Default)]
pub struct LoginStore {
    inner: Mutex<HashMap<String, PendingLogin>>,
}

impl LoginStore {
    fn insert(&self, state: String, login: PendingLogin) {
        let mut map = lock(&self.inner);
        let now = SystemTime::now();
        map.retain(|_, l| now.duration_since(l.started).unwrap_or_default() < LOGIN_TTL);
        if map.len() >= MAX_LOGINS
            && let Some(oldest) = map.iter().min_by_key(|(_, l)| l.started).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(state, login);
    }

    /// Takes a pending sign-in out (single use).
    fn take(&self, state: &str) -> Option<PendingLogin> {
        let login = lock(&self.inner).remove(state)?;
        (SystemTime::now().duration_since(login.started).unwrap_or_default() < LOGIN_TTL).then_some(login)
    }
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value. `same_site` is `Strict` for the session; the sign-in cookie must
/// survive the issuer's cross-site redirect back, so it is `Lax` and scoped to `/auth`.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: Duration, same_site: &str, secure: bool) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite={same_site}{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The signed-in session of this request, if any.
pub fn current(console: &Console, headers: &HeaderMap) -> Option<(String, ConsoleSession)> {
    let id = cookie(headers, SESSION_COOKIE)?;
    console.sessions.get(id).map(|s| (id.to_owned(), s))
}

/// The session, or the sign-in page (with a link back to `here`).
#[allow(clippy::result_large_err)] // the error is the page to send; boxing it buys nothing here
pub fn require(console: &Console, headers: &HeaderMap, here: &str) -> Result<ConsoleSession, Response> {
    match current(console, headers) {
        Some((_, s)) => Ok(s),
        None => Err(sign_in_page(console, here, None, StatusCode::UNAUTHORIZED)),
    }
}

/// The sign-in page.
pub fn sign_in_page(console: &Console, return_to: &str, problem: Option<&str>, status: StatusCode) -> Response {
    let mut body = String::from("<section class=\"signin\"><h1>Sign in</h1>");
    if let Some(problem) = problem {
        body.push_str(&format!("<p class=\"error\" role=\"alert\">{}</p>", esc(problem)));
    }
    body.push_str(&format!(
        "<p>Approvers and auditors sign in with <strong>{}</strong>.</p>",
        esc(&console.issuer)
    ));
    if console.signs_in_with_dev() {
        body.push_str("<p class=\"devnote\">This gateway runs the <strong>development issuer</strong>: sign-in is a form where you pick any identity. Never use it in production.</p>");
    }
    body.push_str(&format!(
        "<p><a class=\"button\" id=\"signin\" href=\"/auth/login?return_to={}\">Sign in</a></p></section>",
        esc(&urlencode(return_to))
    ));
    (status, html::page("Sign in", None, &body)).into_response()
}

#[derive(Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
}

/// Starts the code flow: PKCE verifier, state and nonce kept here, the browser sent to the
/// issuer's authorization endpoint.
pub async fn login(State(console): State<Arc<Console>>, Query(q): Query<LoginQuery>) -> Response {
    let endpoints = match console.oidc.discover(&console.issuer).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(issuer = %console.issuer, error = %e, "Console sign-in: discovery failed.");
            return sign_in_page(
                &console,
                "/",
                Some(&format!("The identity provider cannot be reached: {e}")),
                StatusCode::BAD_GATEWAY,
            );
        }
    };
    let state = random_token();
    let verifier = random_token();
    let nonce = random_token();
    let return_to = safe_return_to(q.return_to.as_deref());
    let url = format!(
        "{}{}{}",
        endpoints.authorization_endpoint,
        if endpoints.authorization_endpoint.contains('?') {
            "&"
        } else {
            "?"
        },
        serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", console.client_id.as_str()),
            ("redirect_uri", console.redirect_uri().as_str()),
            ("scope", console.scopes.as_str()),
            ("state", state.as_str()),
            ("nonce", nonce.as_str()),
            ("code_challenge", pkce_challenge(&verifier).as_str()),
            ("code_challenge_method", "S256"),
        ])
        .unwrap_or_default()
    );
    console.logins.insert(
        state.clone(),
        PendingLogin {
            verifier,
            nonce,
            return_to,
            started: SystemTime::now(),
        },
    );
    let cookie = set_cookie(LOGIN_COOKIE, &state, "/auth", LOGIN_TTL, "Lax", console.secure_cookies);
    ([(header::SET_COOKIE, cookie)], Redirect::to(&url)).into_response()
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The issuer sends the browser back here: check the state against the browser's cookie,
/// exchange the code with the PKCE verifier, verify the ID token like any other token
/// (issuer, audience, signature, expiry) and its nonce, then start a session.
pub async fn callback(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let fail = |message: String| {
        tracing::info!(%message, "Console sign-in failed.");
        sign_in_page(&console, "/", Some(&message), StatusCode::FORBIDDEN)
    };
    if let Some(error) = q.error {
        let detail = q.error_description.unwrap_or_default();
        return fail(format!("The identity provider refused the sign-in: {error} {detail}"));
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return fail("The identity provider sent no code.".to_owned());
    };
    // The state must be the one this browser was given: a code injected into someone
    // else's browser is refused here.
    if !cookie(&headers, LOGIN_COOKIE).is_some_and(|c| same_secret(c, &state)) {
        return fail("This sign-in was not started in this browser; start again.".to_owned());
    }
    let Some(login) = console.logins.take(&state) else {
        return fail("This sign-in has expired or was already used; start again.".to_owned());
    };
    let endpoints = match console.oidc.discover(&console.issuer).await {
        Ok(e) => e,
        Err(e) => return fail(format!("The identity provider cannot be reached: {e}")),
    };
    let id_token = match console
        .oidc
        .exchange(
            &endpoints.token_endpoint,
            &code,
            &login.verifier,
            &console.redirect_uri(),
            &console.client_id,
            console.client_secret.as_deref(),
        )
        .await
    {
        Ok(t) => t,
        Err(e) => return fail(format!("The code could not be exchanged: {e}")),
    };
    let identity = match console.gateway.verify_token(&id_token).await {
        Ok(i) => i,
        Err(e) => return fail(format!("The ID token was rejected: {e}")),
    };
    if identity.issuer != console.issuer {
        return fail("The ID token comes from another issuer.".to_owned());
    }
    if identity.is_agent() {
        return fail("Agents cannot sign in to the console.".to_owned());
    }
    // The signature verified above, so the payload can be read for the nonce.
    if !super::oidc::claim(&id_token, "nonce").is_some_and(|n| same_secret(&n, &login.nonce)) {
        return fail("The ID token does not carry this sign-in's nonce.".to_owned());
    }
    let now = SystemTime::now();
    let expires_at = identity.expires_at.min(now + console.session_lifetime);
    let Ok(left) = expires_at.duration_since(now) else {
        return fail("The ID token has already expired.".to_owned());
    };
    tracing::info!(who = identity.display_name(), "Console sign-in.");
    let id = console.sessions.create(identity, expires_at);
    let session = set_cookie(SESSION_COOKIE, &id, "/", left, "Strict", console.secure_cookies);
    let clear = set_cookie(LOGIN_COOKIE, "", "/auth", Duration::ZERO, "Lax", console.secure_cookies);
    // A page, not a redirect: the browser arrived here from the issuer (cross-site), and a
    // SameSite=Strict cookie is only sent on a navigation this origin starts.
    let target = esc(&login.return_to);
    let body = format!(
        "<meta http-equiv=\"refresh\" content=\"0;url={target}\"><p>Signed in. <a id=\"continue\" href=\"{target}\">Continue</a></p>"
    );
    let mut response = html::page("Signed in", None, &body).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, header_value(&session));
    response.headers_mut().append(header::SET_COOKIE, header_value(&clear));
    response
}

fn header_value(s: &str) -> header::HeaderValue {
    header::HeaderValue::from_str(s).unwrap_or_else(|_| header::HeaderValue::from_static(""))
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

/// Signs out: the server-side session is gone, whatever the browser keeps.
pub async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form: CsrfForm = serde_urlencoded::from_bytes(&body).unwrap_or(CsrfForm { csrf: None });
    if let Some((id, session)) = current(&console, &headers) {
        if !session.csrf_ok(form.csrf.as_deref()) {
            return html::error_page(
                Some(&session),
                StatusCode::FORBIDDEN,
                "The form's CSRF token is missing or wrong.",
            );
        }
        console.sessions.remove(&id);
    }
    let clear = set_cookie(
        SESSION_COOKIE,
        "",
        "/",
        Duration::ZERO,
        "Strict",
        console.secure_cookies,
    );
    ([(header::SET_COOKIE, clear)], Redirect::to("/")).into_response()
}

/// Only paths on this site: `/x`, never `//host` or `https://...`.
pub fn safe_return_to(given: Option<&str>) -> String {
    match given {
        Some(p)
            if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') && !p.chars().any(char::is_control) =>
        {
            p.to_owned()
        }
        _ => "/".to_owned(),
    }
}

pub fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|v| v.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc_7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(pkce_verifier_ok(verifier));
        assert_eq!(pkce_challenge(verifier), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn pkce_verifiers_are_random_and_well_formed() {
        let a = random_token();
        let b = random_token();
        assert_ne!(a, b);
        assert!(pkce_verifier_ok(&a), "{a}");
        assert!(!pkce_verifier_ok("short"));
        assert!(!pkce_verifier_ok(&format!("{a}!")));
        assert!(!pkce_verifier_ok(&"a".repeat(129)));
    }

    #[test]
    fn session_cookie_is_http_only_strict_and_secure_over_tls() {
        let c = set_cookie(SESSION_COOKIE, "abc", "/", Duration::from_secs(60), "Strict", true);
        assert_eq!(
            c,
            "gh_session=abc; Path=/; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
        );
        let c = set_cookie(SESSION_COOKIE, "abc", "/", Duration::from_secs(60), "Strict", false);
        assert!(!c.contains("Secure"), "{c}");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict"), "{c}");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; gh_session=xyz; b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "gh_sess"), None);
    }

    fn someone(expires_in: Duration) -> Identity {
        Identity {
            issuer: "http://127.0.0.1:1/dev/users".into(),
            subject: "dora".into(),
            kind: gatehouse_identity::PrincipalKind::User,
            email: None,
            name: None,
            groups: vec!["dba-leads".into()],
            owner: None,
            expires_at: SystemTime::now() + expires_in,
        }
    }

    #[test]
    fn sessions_expire_and_csrf_is_per_session() {
        let store = SessionStore::default();
        let soon = SystemTime::now() + Duration::from_millis(400);
        let a = store.create(
            someone(Duration::from_secs(60)),
            SystemTime::now() + Duration::from_secs(60),
        );
        let b = store.create(someone(Duration::from_secs(60)), soon);
        let sa = store.get(&a).unwrap();
        let sb = store.get(&b).unwrap();
        assert_ne!(sa.csrf, sb.csrf);
        assert!(sa.csrf_ok(Some(&sa.csrf)));
        assert!(!sa.csrf_ok(Some(&sb.csrf)), "another session's token is refused");
        assert!(!sa.csrf_ok(None));
        assert!(!sa.csrf_ok(Some("")));
        std::thread::sleep(Duration::from_millis(500));
        assert!(store.get(&b).is_none(), "expired sessions are gone");
        assert!(store.get(&a).is_some());
        store.remove(&a);
        assert!(store.get(&a).is_none());
        assert!(store.get("made-up").is_none());
    }

    #[test]
    fn logins_are_single_use() {
        let store = LoginStore::default();
        store.insert(
            "st".into(),
            PendingLogin {
                verifier: "v".into(),
                nonce: "n".into(),
                return_to: "/".into(),
                started: SystemTime::now(),
            },
        );
        assert!(store.take("st").is_some());
        assert!(store.take("st").is_none());
        store.insert(
            "old".into(),
            PendingLogin {
                verifier: "v".into(),
                nonce: "n".into(),
                return_to: "/".into(),
                started: SystemTime::now() - LOGIN_TTL - Duration::from_secs(1),
            },
        );
        assert!(store.take("old").is_none(), "an expired sign-in is refused");
    }

    #[test]
    fn return_to_stays_on_this_site() {
        assert_eq!(safe_return_to(Some("/approvals/AB")), "/approvals/AB");
        assert_eq!(safe_return_to(Some("//evil.example")), "/");
        assert_eq!(safe_return_to(Some("https://evil.example")), "/");
        assert_eq!(safe_return_to(Some("/\\evil")), "/");
        assert_eq!(safe_return_to(None), "/");
    }
}
