//! The console's HTML, as pure functions: view data and the time in, a
//! `String` out. Nothing here reads a clock, the database or a request,
//! and nothing here is handed a secret: the rows are [`Summary`] values
//! (which have no field for one), events, handles (by the short id of
//! their hash), notifications and quota snapshots.
//!
//! Every piece of text that came from outside — credential ids, account
//! names, e-mails, reasons, upstream messages, event details, pool names —
//! goes through [`escape`], the one escaping function, and every
//! attribute is double-quoted. The pages carry no inline script or style
//! (the Content-Security-Policy forbids both): behaviour is in
//! `static/app.js`, looks in `static/app.css`, and the SVG charts use
//! presentation attributes only.
//!
//! [`Summary`]: crate::view::Summary

pub mod credential;
pub mod overview;
pub mod quota;
pub mod signin;
#[cfg(test)]
mod testkit;

use super::session::Flash;

/// `s` fit for HTML text and double- or single-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters (other than tab and newline) show as the
            // replacement character: a browser may drop or misread them.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `s` as one component of a URL path or query (RFC 3986 unreserved
/// characters kept, everything else `%XX`), for links built from ids and
/// filter values.
pub fn url_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A span of milliseconds as `1d 2h`, `2h 5m`, `4m 12s` or `9s` (two
/// units at most; negative spans as their size).
pub fn span(ms: i64) -> String {
    let s = ms.unsigned_abs() / 1000;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// How long until `at_ms`: `in 4m 12s`, or `expired 3m 0s ago` once past.
pub fn countdown(at_ms: i64, now_ms: i64) -> String {
    match at_ms - now_ms {
        left if left > 0 => format!("in {}", span(left)),
        past => format!("expired {} ago", span(past)),
    }
}

/// How long ago `at_ms` was: `3m 10s ago` (`in …` if in the future).
pub fn ago(at_ms: i64, now_ms: i64) -> String {
    match now_ms - at_ms {
        past if past >= 0 => format!("{} ago", span(past)),
        ahead => format!("in {}", span(ahead)),
    }
}

/// A `<time>` element: the RFC 3339 instant as its `datetime` and title,
/// `text` shown.
pub fn time_el(at_ms: i64, text: &str) -> String {
    let iso = crate::rfc3339::format(at_ms.div_euclid(1000) * 1000);
    format!(
        r#"<time datetime="{iso}" title="{iso}">{}</time>"#,
        escape(text)
    )
}

/// A hidden input `name` of `value` (escaped; `name` is ours).
pub fn hidden_input(name: &str, value: &str) -> String {
    format!(
        r#"<input type="hidden" name="{name}" value="{}">"#,
        escape(value)
    )
}

/// The hidden CSRF input every form carries.
pub fn csrf_input(csrf: &str) -> String {
    hidden_input("csrf", csrf)
}

/// The flash message of the last action, if any.
pub fn flash(f: Option<&Flash>) -> String {
    match f {
        None => String::new(),
        Some(f) => format!(
            r#"<p class="{}" id="flash" role="status">{}</p>"#,
            if f.error { "flash error" } else { "flash" },
            escape(&f.message)
        ),
    }
}

/// Who is signed in, for the page header.
#[derive(Debug, Clone, Copy)]
pub struct Chrome<'a> {
    /// The session's CSRF token (for the sign-out form).
    pub csrf: &'a str,
    /// Whether the session may act.
    pub admin: bool,
}

/// A whole page: the document, the stylesheet and script, the header
/// (with the sign-out form when signed in) and `body`.
pub fn page(title: &str, chrome: Option<Chrome<'_>>, body: &str) -> String {
    let header = match chrome {
        None => String::new(),
        Some(c) => format!(
            concat!(
                r#"<header><a href="/ui" class="home">tokenwarden</a>"#,
                r#"<span class="scope scope-{scope}">{scope}</span>"#,
                r#"<form id="signout" method="post" action="/ui/logout">{csrf}"#,
                r#"<button type="submit" id="signout-submit">Sign out</button></form></header>"#
            ),
            scope = if c.admin { "admin" } else { "read-only" },
            csrf = csrf_input(c.csrf),
        ),
    };
    format!(
        concat!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#,
            r#"<meta name="referrer" content="same-origin">"#,
            r#"<link rel="icon" href="data:,">"#,
            "<title>{title} · tokenwarden</title>",
            r#"<link rel="stylesheet" href="/ui/static/app.css">"#,
            r#"<script src="/ui/static/app.js" defer></script>"#,
            "</head><body>{header}<main>{body}</main></body></html>\n"
        ),
        title = escape(title),
        header = header,
        body = body,
    )
}

/// A page saying what went wrong (an unknown credential, a bad request).
pub fn error_page(status: u16, message: &str, chrome: Option<Chrome<'_>>) -> String {
    let body = format!(
        r#"<h1>{status}</h1><p class="error" id="error">{}</p><p><a href="/ui">Back to the overview</a></p>"#,
        escape(message)
    );
    page(&format!("Error {status}"), chrome, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_table() {
        let table = [
            ("plain-id_1.a@b+c", "plain-id_1.a@b+c"),
            (
                "<script>alert(1)</script>",
                "&lt;script&gt;alert(1)&lt;/script&gt;",
            ),
            (r#"a"b"#, "a&quot;b"),
            ("a'b", "a&#39;b"),
            ("a&b", "a&amp;b"),
            ("&lt;", "&amp;lt;"),
            ("\" onmouseover=\"x", "&quot; onmouseover=&quot;x"),
            ("é – ✓", "é – ✓"),
            ("a\u{1b}[2Jb", "a\u{fffd}[2Jb"),
            ("line\nnext\ttab", "line\nnext\ttab"),
            ("", ""),
        ];
        for (raw, want) in table {
            assert_eq!(escape(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn url_components_table() {
        for (raw, want) in [
            ("a.b_c-d~", "a.b_c-d~"),
            ("me@example.com", "me%40example.com"),
            ("a+b", "a%2Bb"),
            ("a b&c=d", "a%20b%26c%3Dd"),
            ("\"><", "%22%3E%3C"),
            ("é", "%C3%A9"),
        ] {
            assert_eq!(url_component(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn countdown_table() {
        let now = 1_700_000_000_000;
        for (at, want) in [
            (now + 9_000, "in 9s"),
            (now + 252_000, "in 4m 12s"),
            (now + 2 * 3_600_000 + 300_000 + 999, "in 2h 5m"),
            (now + 86_400_000 + 7_200_000, "in 1d 2h"),
            (now, "expired 0s ago"),
            (now - 180_000, "expired 3m 0s ago"),
            (now + 500, "in 0s"),
        ] {
            assert_eq!(countdown(at, now), want);
        }
        assert_eq!(ago(now - 190_000, now), "3m 10s ago");
        assert_eq!(ago(now + 5_000, now), "in 5s");
    }

    #[test]
    fn pages_have_no_inline_script_or_style() {
        let p = page(
            "<x>",
            Some(Chrome {
                csrf: "tok\"en",
                admin: false,
            }),
            "<p>body</p>",
        );
        assert!(p.contains("<title>&lt;x&gt; · tokenwarden</title>"));
        assert!(p.contains(r#"value="tok&quot;en""#));
        assert!(p.contains(r#"<form id="signout" method="post" action="/ui/logout">"#));
        assert!(p.contains("read-only"));
        assert!(!p.contains("<script>") && !p.contains("style="));
        assert!(p.contains(r#"<script src="/ui/static/app.js" defer></script>"#));
        let f = flash(Some(&Flash {
            error: true,
            message: "<b>no</b>".into(),
        }));
        assert_eq!(
            f,
            r#"<p class="flash error" id="flash" role="status">&lt;b&gt;no&lt;/b&gt;</p>"#
        );
        assert!(error_page(404, "no <such>", None).contains("no &lt;such&gt;"));
    }
}
