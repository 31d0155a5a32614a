//! HTML by hand: one layout and one escaping function that every dynamic value goes
//! through. The console shows hostile input (SQL, shell commands, names from tokens), so
//! nothing is ever written into a page without [`esc`].

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::auth::ConsoleSession;

/// Escapes text for HTML element content and double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters (other than newline and tab) would confuse a reader or a
            // terminal copying the text; show them as escapes.
            c if c.is_control() && c != '\n' && c != '\t' => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: the header with navigation and sign-out when signed in.
pub fn page(title: &str, session: Option<&ConsoleSession>, body: &str) -> Response {
    let nav = match session {
        Some(s) => format!(
            "<nav><a href=\"/approvals\">Approvals</a> <a href=\"/sessions\">Sessions</a>\
             <span class=\"who\" id=\"who\">{who}</span>\
             <form method=\"post\" action=\"/auth/logout\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\" id=\"signout\">Sign out</button></form></nav>",
            who = esc(s.identity.display_name()),
            csrf = esc(&s.csrf),
        ),
        None => String::new(),
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Gatehouse</title>\
         <link rel=\"stylesheet\" href=\"/console/static/console.css\">\
         <script src=\"/console/static/console.js\" defer></script></head>\
         <body><header><a class=\"brand\" href=\"/\">Gatehouse</a>{nav}</header><main>{body}</main></body></html>\n",
        title = esc(title),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// A page saying what went wrong, with its status.
pub fn error_page(session: Option<&ConsoleSession>, status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><p class=\"error\" role=\"alert\" id=\"error\">{}</p>",
        esc(status.canonical_reason().unwrap_or("Error")),
        esc(message)
    );
    let mut response = page("Error", session, &body);
    *response.status_mut() = status;
    response
}

/// Milliseconds since the epoch (what the page's countdowns read).
pub fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// "4m 12s" until `t`, or "expired".
pub fn time_left(t: SystemTime) -> String {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => {
            let s = d.as_secs();
            if s >= 3600 {
                format!("{}h {}m", s / 3600, (s % 3600) / 60)
            } else {
                format!("{}m {:02}s", s / 60, s % 60)
            }
        }
        Err(_) => "expired".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_controls() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(esc("a\u{1b}[31mb\nc"), "a\\u{1b}[31mb\nc");
        assert_eq!(
            esc("DELETE FROM t WHERE a <> 'b'"),
            "DELETE FROM t WHERE a &lt;&gt; &#39;b&#39;"
        );
    }
}
