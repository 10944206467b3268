//! The sign-in page: one password field for an API key, and the
//! pre-session CSRF token.

use super::{csrf_input, escape, page};

/// The sign-in page; `error` shows the wrong-key message; `open` says
/// that the server has no key configured (any key signs in, as admin).
pub fn page_html(csrf: &str, error: Option<&str>, open: bool) -> String {
    let error = match error {
        Some(e) => format!(
            r#"<p class="error" id="signin-error" role="alert">{}</p>"#,
            escape(e)
        ),
        None => String::new(),
    };
    let note = match open {
        true => concat!(
            r#"<p class="note" id="signin-open">This server has no API key configured and answers "#,
            "loopback clients only: any key (even an empty one) signs in as admin.</p>"
        ),
        false => concat!(
            r#"<p class="note">Sign in with an API key of this server (<code>TOKENWARDEN_API_KEY</code>, "#,
            "<code>TOKENWARDEN_READ_API_KEY</code> or <code>--api-key-file</code>). A read-only key sees ",
            "everything and changes nothing. The key is not kept in the browser: it opens a session.</p>"
        ),
    };
    let body = format!(
        concat!(
            r#"<h1>tokenwarden</h1>{error}{note}"#,
            r#"<form id="signin" method="post" action="/ui/login">{csrf}"#,
            r#"<label for="key">API key</label> "#,
            r#"<input type="password" name="key" id="key" autocomplete="current-password" autofocus{required}> "#,
            r#"<button type="submit" id="signin-submit">Sign in</button></form>"#
        ),
        error = error,
        note = note,
        csrf = csrf_input(csrf),
        required = if open { "" } else { " required" },
    );
    page("Sign in", None, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_follows_the_contract() {
        let html = page_html("PRE", None, false);
        for want in [
            r#"<form id="signin" method="post" action="/ui/login">"#,
            r#"<input type="password" name="key" id="key""#,
            r#"<input type="hidden" name="csrf" value="PRE">"#,
            r#"<button type="submit" id="signin-submit">"#,
        ] {
            assert!(html.contains(want), "{want}");
        }
        assert!(!html.contains("signin-error"));
        assert!(!html.contains("signout"), "no sign-out before signing in");
        let html = page_html("PRE", Some("wrong <key>"), true);
        assert!(html
            .contains(r#"<p class="error" id="signin-error" role="alert">wrong &lt;key&gt;</p>"#));
        assert!(html.contains("signin-open"));
    }
}
