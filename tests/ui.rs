//! The operator's console (issue 17) end to end over loopback: the real
//! `tokenwarden serve` against the fake OAuth server, driven with raw HTTP
//! requests so every cookie, header and status is seen as a browser would
//! get it. (The headless-Chromium scenarios live in tests/browser/.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::common::fake_oauth::Fault;
use crate::common::http::{free_port, parse_raw, Answer, Served};
use crate::common::tw::{json, text, Backend, Env};

pub(crate) const ADMIN: &str = "ui-admin-key-0123456789";
pub(crate) const READ: &str = "ui-read-key-9876543210";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A `serve` with an admin and a read-only key, no background refresher
/// (the tests decide every state change).
pub(crate) struct Console {
    pub(crate) env: Env,
    pub(crate) addr: SocketAddr,
    pub(crate) _served: Served,
}

impl Console {
    pub(crate) fn start() -> Console {
        Console::serve(Env::new())
    }

    /// A console on `backend`; `None` where there is no PostgreSQL.
    fn on(backend: Backend) -> Option<Console> {
        Env::on(backend).map(Console::serve)
    }

    fn serve(env: Env) -> Console {
        Console::serve_keys(
            env,
            &[
                ("TOKENWARDEN_API_KEY", ADMIN),
                ("TOKENWARDEN_READ_API_KEY", READ),
            ],
        )
    }

    /// A console whose keys are these environment variables (none: a
    /// keyless server on loopback).
    pub(crate) fn serve_keys(env: Env, keys: &[(&str, &str)]) -> Console {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = env.cmd();
        cmd.args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--threads",
            "4",
            "--no-refresher",
        ])
        .envs(keys.iter().copied());
        let served = Served::spawn(cmd, addr);
        Console {
            env,
            addr,
            _served: served,
        }
    }

    /// This server's own origin.
    pub(crate) fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One request: `Host` is the server's address, `Connection: close`;
    /// `headers` are extra lines.
    pub(crate) fn send(&self, method: &str, path: &str, headers: &[String], body: &[u8]) -> Answer {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        if method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        exchange(self.addr, &bytes)
    }

    pub(crate) fn get(&self, path: &str, cookie: Option<&str>) -> Answer {
        let headers: Vec<String> = cookie.map(|c| format!("Cookie: {c}")).into_iter().collect();
        self.send("GET", path, &headers, b"")
    }

    /// A form post as a browser sends it (own `Origin`, URL-encoded).
    pub(crate) fn post(&self, path: &str, cookie: Option<&str>, form: &str) -> Answer {
        let mut headers = vec![
            format!("Origin: {}", self.origin()),
            "Content-Type: application/x-www-form-urlencoded".to_owned(),
        ];
        headers.extend(cookie.map(|c| format!("Cookie: {c}")));
        self.send("POST", path, &headers, form.as_bytes())
    }

    /// Signs in with `key`: the session cookie (`tw_session=…`) and the
    /// session's CSRF token, and the sign-in answer.
    pub(crate) fn sign_in(&self, key: &str) -> (Session, Answer) {
        let (pre, csrf) = self.sign_in_form();
        let answer = self.post(
            "/ui/login",
            Some(&pre),
            &format!("csrf={csrf}&key={}", enc(key)),
        );
        assert_eq!(answer.status, 303, "{}", answer.body);
        let cookie = set_cookie(&answer, "tw_session").expect("a session cookie");
        let value = cookie
            .split(';')
            .next()
            .expect("name=value")
            .trim()
            .to_owned();
        let page = self.get("/ui", Some(&value)).expect_status(200);
        let csrf = csrf_of(&page.body);
        (
            Session {
                cookie: value,
                csrf,
            },
            answer,
        )
    }

    /// A fresh sign-in form: the pre-session cookie (`tw_pre=…`) and its
    /// CSRF token.
    pub(crate) fn sign_in_form(&self) -> (String, String) {
        let form = self.get("/ui/login", None).expect_status(200);
        let pre = set_cookie(&form, "tw_pre").expect("a pre-session cookie");
        let pre = pre.split(';').next().expect("name=value").trim().to_owned();
        (pre, csrf_of(&form.body))
    }

    /// `list --json` and the events of `id`: what must not change when a
    /// post is refused.
    /// (The summaries hold cooldowns, pools and quota too.)
    pub(crate) fn snapshot(&self, id: &str) -> (Value, usize) {
        let list = json(&self.env.run(&["list", "--json"]));
        let events = json(&self.env.run(&["events", id, "--json"]))["events"]
            .as_array()
            .map_or(0, Vec::len);
        (list, events)
    }
}

/// A signed-in browser.
pub(crate) struct Session {
    /// `tw_session=…`.
    pub(crate) cookie: String,
    pub(crate) csrf: String,
}

pub(crate) trait Expect {
    fn expect_status(self, status: u16) -> Answer;
}

impl Expect for Answer {
    fn expect_status(self, status: u16) -> Answer {
        assert_eq!(self.status, status, "body: {}", self.body);
        self
    }
}

/// Sends `request`, half-closes, reads the whole answer.
pub(crate) fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let _ = s.write_all(request);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    let mut a = parse_raw(&bytes)
        .unwrap_or_else(|| panic!("no answer: {}", String::from_utf8_lossy(&bytes)));
    // tiny_http sends a large answer (a page of 200 rows) chunked.
    if a.header("transfer-encoding") == Some("chunked") {
        let start = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of head")
            + 4;
        a.body = String::from_utf8_lossy(&dechunk(&bytes[start..])).into_owned();
    }
    a
}

/// The payload of a chunked body (RFC 9112 §7.1; extensions and trailers
/// ignored).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let line = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {line:?}"));
        if size == 0 {
            return out;
        }
        let data = &b[eol + 2..];
        out.extend_from_slice(&data[..size]);
        b = &data[size + 2..];
    }
}

/// URL-encodes a form value.
pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `Set-Cookie` header that sets cookie `name`.
pub(crate) fn set_cookie(a: &Answer, name: &str) -> Option<String> {
    a.headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .map(|(_, v)| v.clone())
        .find(|v| v.starts_with(&format!("{name}=")))
}

/// The value of the first `name="csrf"` input of a page.
pub(crate) fn csrf_of(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("no csrf input in {html}"));
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').expect("closing quote")].to_owned()
}

/// The `&token=…` field of the reject form on credential page `html`: the
/// fingerprint of the access token the page showed.
pub(crate) fn reject_field(html: &str) -> String {
    let marker = r#"name="token" value=""#;
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("no reject form naming a token in {html}"));
    let rest = &html[at + marker.len()..];
    format!("&token={}", &rest[..rest.find('"').expect("closing quote")])
}

/// The reject form's fields as session `s` sees credential `id`'s page now.
pub(crate) fn reject_now(c: &Console, s: &Session, id: &str) -> String {
    let page = c.get(&format!("/ui/credentials/{id}"), Some(&s.cookie));
    reject_field(&page.expect_status(200).body)
}

pub(crate) fn location(a: &Answer) -> &str {
    a.header("location").unwrap_or_default()
}

/// Makes a facade handle for `id` with the CLI: the handle (shown once)
/// and the short id the lists and the console show.
pub(crate) fn new_handle(c: &Console, id: &str) -> (String, String) {
    let out = c.env.run(&["handle", "create", id, "--label", "laptop"]);
    let handle = text(&out.stdout).trim().to_owned();
    let listed = json(&c.env.run(&["handle", "list", id, "--json"]));
    let short = listed["handles"][0]["id"].as_str().expect("id").to_owned();
    (handle, short)
}

/// The flash message the next page shows, if any.
pub(crate) fn flash(c: &Console, s: &Session, path: &str) -> String {
    let page = c.get(path, Some(&s.cookie)).expect_status(200);
    let Some(at) = page.body.find(r#"id="flash""#) else {
        return String::new();
    };
    let rest = &page.body[at..];
    let start = rest.find('>').expect("tag end") + 1;
    let end = rest.find("</p>").expect("p end");
    let class = &page.body[..at];
    let error = class[class.rfind("<p").expect("p")..].contains("error");
    format!(
        "{}{}",
        if error { "ERROR: " } else { "" },
        &rest[start..end]
    )
}

/// The `data-state` of `id`'s row in the overview fragment.
pub(crate) fn row_state(c: &Console, s: &Session, id: &str) -> String {
    let frag = c.get("/ui/overview", Some(&s.cookie)).expect_status(200);
    let marker = format!(r#"<tr class="credential" data-id="{id}" data-state=""#);
    let at = frag
        .body
        .find(&marker)
        .unwrap_or_else(|| panic!("no row for {id}: {}", frag.body));
    let rest = &frag.body[at + marker.len()..];
    rest[..rest.find('"').expect("quote")].to_owned()
}

/// Signing in trades a key for a random `HttpOnly; SameSite=Strict` session cookie that is not the key; a wrong key is 401 with the form again, a bad CSRF token 403; `/` and `/ui` redirect; sign-out ends the session.
#[test]
fn signing_in_and_out() {
    let c = Console::start();
    c.env.login("acct", 3600);
    // `/` and a session-less `/ui` redirect; the fragment is 401.
    let root = c.get("/", None).expect_status(303);
    assert_eq!(location(&root), "/ui");
    let ui = c.get("/ui", None).expect_status(303);
    assert_eq!(location(&ui), "/ui/login");
    c.get("/ui/overview", None).expect_status(401);
    c.get("/ui/credentials/acct", None).expect_status(303);

    for (key, scope) in [(ADMIN, "scope-admin"), (READ, "scope-read-only")] {
        let (s, answer) = c.sign_in(key);
        assert_eq!(location(&answer), "/ui");
        let cookie = set_cookie(&answer, "tw_session").expect("cookie");
        assert!(
            cookie.contains("; Path=/;") || cookie.contains("; Path=/ "),
            "{cookie}"
        );
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        assert!(!cookie.contains("Secure"), "plain http: no Secure flag");
        let value = s.cookie.trim_start_matches("tw_session=");
        assert!(value.len() >= 43, "{value}");
        assert!(!value.contains(key) && !cookie.contains(key));
        assert_ne!(value, key);
        // The pre-session cookie is cleared.
        let pre = set_cookie(&answer, "tw_pre").expect("pre cleared");
        assert!(pre.contains("Max-Age=0"), "{pre}");
        let page = c.get("/ui", Some(&s.cookie)).expect_status(200);
        assert!(page.body.contains(scope), "{}", page.body);
        assert!(page.body.contains(r#"data-id="acct""#));
        // The key itself is no session.
        c.get("/ui", Some(&format!("tw_session={key}")))
            .expect_status(303);
    }

    // A wrong key: 401 and the form again, with the error.
    let (pre, csrf) = c.sign_in_form();
    let wrong = c
        .post("/ui/login", Some(&pre), &format!("csrf={csrf}&key=nope"))
        .expect_status(401);
    assert!(
        wrong.body.contains(r#"id="signin-error""#),
        "{}",
        wrong.body
    );
    assert!(wrong.body.contains(r#"<form id="signin""#));
    assert!(set_cookie(&wrong, "tw_session").is_none());
    // The same form still works after a wrong key.
    let again = csrf_of(&wrong.body);
    let ok = c.post(
        "/ui/login",
        Some(&pre),
        &format!("csrf={again}&key={}", enc(ADMIN)),
    );
    assert_eq!(ok.status, 303, "{}", ok.body);
    // CSRF missing, wrong, or without its pre-session cookie: 403.
    let (pre, csrf) = c.sign_in_form();
    for (cookie, form) in [
        (Some(pre.as_str()), format!("key={ADMIN}")),
        (Some(pre.as_str()), format!("csrf=x{csrf}&key={ADMIN}")),
        (None, format!("csrf={csrf}&key={ADMIN}")),
        (Some("tw_pre=1.forged"), format!("csrf={csrf}&key={ADMIN}")),
    ] {
        let a = c.post("/ui/login", cookie, &form).expect_status(403);
        assert!(set_cookie(&a, "tw_session").is_none());
    }

    // Sign-out: needs the CSRF token, then the session is gone.
    let (s, _) = c.sign_in(ADMIN);
    c.post("/ui/logout", Some(&s.cookie), "csrf=wrong")
        .expect_status(403);
    c.get("/ui", Some(&s.cookie)).expect_status(200);
    let out = c
        .post("/ui/logout", Some(&s.cookie), &format!("csrf={}", s.csrf))
        .expect_status(303);
    assert_eq!(location(&out), "/ui/login");
    assert!(set_cookie(&out, "tw_session")
        .expect("cleared")
        .contains("Max-Age=0"));
    assert_eq!(location(&c.get("/ui", Some(&s.cookie))), "/ui/login");
    c.get("/ui/overview", Some(&s.cookie)).expect_status(401);
    let before = c.snapshot("acct");
    let late = c.post(
        "/ui/credentials/acct/delete",
        Some(&s.cookie),
        &format!("csrf={}", s.csrf),
    );
    assert_eq!((late.status, location(&late)), (303, "/ui/login"));
    assert_eq!(
        c.snapshot("acct"),
        before,
        "a signed-out post changed nothing"
    );
    // A script's fetch without a session gets 401, not a redirect.
    let headers = [
        format!("Origin: {}", c.origin()),
        "Content-Type: application/x-www-form-urlencoded".to_owned(),
        "Sec-Fetch-Mode: cors".to_owned(),
        format!("Cookie: {}", s.cookie),
    ];
    let body = format!("csrf={}", s.csrf);
    let a = c.send(
        "POST",
        "/ui/credentials/acct/refresh",
        &headers,
        body.as_bytes(),
    );
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(c.snapshot("acct"), before);
}

/// Every action works from the console through the same Warden call as the API, leaves an event, and reports a flash message on the page it redirects to.
#[test]
fn every_action_works_and_is_recorded() {
    let c = Console::start();
    let g = c.env.login("acct", 3600);
    c.env.login("other", 3600);
    let (s, _) = c.sign_in(ADMIN);
    let post = |action: &str, extra: &str| {
        c.post(
            &format!("/ui/credentials/acct/{action}"),
            Some(&s.cookie),
            &format!("csrf={}{extra}", s.csrf),
        )
    };
    let events = || json(&c.env.run(&["events", "acct", "--json"]))["events"].clone();
    let reasons = || -> Vec<String> {
        events()
            .as_array()
            .expect("events")
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["to"].as_str().unwrap_or(""),
                    e["reason"].as_str().unwrap_or("")
                )
            })
            .collect()
    };

    // Forced refresh: one token request, a new version.
    let before = c.env.fake.stats().token_requests;
    let v0 = json(&c.env.run(&["show", "acct", "--json"]))["version"]
        .as_i64()
        .expect("v");
    let a = post("refresh", "").expect_status(303);
    assert_eq!(location(&a), "/ui/credentials/acct");
    assert_eq!(c.env.fake.stats().token_requests, before + 1);
    let v1 = json(&c.env.run(&["show", "acct", "--json"]))["version"]
        .as_i64()
        .expect("v");
    assert!(v1 > v0);
    assert!(flash(&c, &s, "/ui/credentials/acct").starts_with("Refreshed acct"));
    assert_eq!(
        flash(&c, &s, "/ui/credentials/acct"),
        "",
        "a flash is shown once"
    );

    // Reject the current token: recorded, and a new token fetched.
    let current = c.env.fake.family_state("acct").current_access_token;
    post("reject", &reject_now(&c, &s, "acct")).expect_status(303);
    assert!(flash(&c, &s, "/ui/credentials/acct").starts_with("Rejected the access token"));
    assert!(
        reasons().iter().any(|r| r.starts_with("rejected")),
        "{:?}",
        reasons()
    );
    assert_ne!(
        c.env.fake.family_state("acct").current_access_token,
        current
    );
    assert_ne!(current, g.access_token, "the refresh above rotated it");

    // Cooldown: set, shown, cleared; each an event.
    post("cooldown", "&seconds=600").expect_status(303);
    let msg = flash(&c, &s, "/ui/credentials/acct");
    assert!(msg.starts_with("acct cools down until"), "{msg}");
    let cd = json(&c.env.run(&["show", "acct", "--json"]))["cooldown"].clone();
    assert_eq!(cd["reason"], "set from the console", "{cd}");
    let page = c
        .get("/ui/credentials/acct", Some(&s.cookie))
        .expect_status(200);
    assert!(page.body.contains("set from the console"));
    post("cooldown", "&seconds=0").expect_status(303);
    assert!(flash(&c, &s, "/ui/credentials/acct").starts_with("ERROR: seconds must be"));
    post("clear-cooldown", "").expect_status(303);
    assert_eq!(
        flash(&c, &s, "/ui/credentials/acct"),
        "Cleared the cooldown of acct."
    );
    let all = reasons().join("\n");
    assert!(
        all.contains("set from the console") && all.contains("cleared from the console"),
        "{all}"
    );

    // Revoke a handle, by the short id the page shows.
    let (handle, short) = new_handle(&c, "acct");
    let page = c
        .get("/ui/credentials/acct", Some(&s.cookie))
        .expect_status(200);
    assert!(page.body.contains(&format!(r#"data-handle-id="{short}""#)));
    assert!(!page.body.contains(&handle));
    // Another credential's page cannot revoke it.
    let other = c.post(
        "/ui/credentials/other/revoke-handle",
        Some(&s.cookie),
        &format!("csrf={}&handle={short}", s.csrf),
    );
    assert_eq!(other.status, 303);
    assert!(flash(&c, &s, "/ui/credentials/other").starts_with("ERROR: other has no active handle"));
    post("revoke-handle", &format!("&handle={short}")).expect_status(303);
    assert!(flash(&c, &s, "/ui/credentials/acct").starts_with("Revoked handle"));
    let listed = json(&c.env.run(&["handle", "list", "acct", "--json"]));
    assert!(
        listed["handles"][0]["revoked_at"].as_i64().is_some(),
        "{listed}"
    );
    let revoked = format!("valid handle {short} revoked");
    assert!(reasons().contains(&revoked), "{:?}", reasons());

    // Delete: gone, back to the overview, the event stays.
    let a = post("delete", "").expect_status(303);
    assert_eq!(location(&a), "/ui");
    assert!(flash(&c, &s, "/ui").starts_with("Deleted acct"));
    assert_eq!(c.env.run(&["show", "acct"]).status.code(), Some(3));
    assert!(
        reasons().iter().any(|r| r.starts_with("deleted")),
        "{:?}",
        reasons()
    );
    // An action on a credential that is gone: an error flash, back to /ui.
    let a = post("refresh", "").expect_status(303);
    assert_eq!(location(&a), "/ui");
    assert!(flash(&c, &s, "/ui").starts_with("ERROR:"));
    c.get("/ui/credentials/acct", Some(&s.cookie))
        .expect_status(404);
}

/// A read-only session, a missing or wrong CSRF token, or a foreign Origin: every action is 403 and changes nothing (no event, no upstream request, no cooldown).
#[test]
fn refused_posts_change_nothing() {
    let c = Console::start();
    c.env.login("acct", 3600);
    let (_, short) = new_handle(&c, "acct");
    let (admin, _) = c.sign_in(ADMIN);
    let (read, _) = c.sign_in(READ);
    // Read-only pages show no action forms.
    let page = c
        .get("/ui/credentials/acct", Some(&read.cookie))
        .expect_status(200);
    assert!(!page.body.contains(r#"class="action""#), "{}", page.body);
    let page = c
        .get("/ui/credentials/acct", Some(&admin.cookie))
        .expect_status(200);
    assert_eq!(page.body.matches(r#"<form class="action""#).count(), 6);

    let before = c.snapshot("acct");
    let upstream = c.env.fake.stats().token_requests;
    let extra = |action: &str| match action {
        "cooldown" => "&seconds=60".to_owned(),
        "revoke-handle" => format!("&handle={short}"),
        _ => String::new(),
    };
    for action in [
        "refresh",
        "reject",
        "cooldown",
        "clear-cooldown",
        "revoke-handle",
        "delete",
    ] {
        let path = format!("/ui/credentials/acct/{action}");
        // Read-only, with its own valid CSRF token.
        let a = c.post(
            &path,
            Some(&read.cookie),
            &format!("csrf={}{}", read.csrf, extra(action)),
        );
        assert_eq!(a.status, 403, "read-only {action}: {}", a.body);
        // Admin without, or with a wrong or another session's, CSRF token.
        for csrf in [
            String::new(),
            "csrf=wrong".into(),
            format!("csrf={}", read.csrf),
        ] {
            let a = c.post(
                &path,
                Some(&admin.cookie),
                &format!("{csrf}{}", extra(action)),
            );
            assert_eq!(a.status, 403, "{action} {csrf:?}: {}", a.body);
        }
        // A foreign Origin, even with a valid session and token.
        let headers = [
            "Origin: http://evil.example".to_owned(),
            "Content-Type: application/x-www-form-urlencoded".to_owned(),
            format!("Cookie: {}", admin.cookie),
        ];
        let body = format!("csrf={}{}", admin.csrf, extra(action));
        let a = c.send("POST", &path, &headers, body.as_bytes());
        assert_eq!(a.status, 403, "foreign origin {action}: {}", a.body);
        assert!(a.body.contains("Origin"));
        assert_eq!(a.header("x-frame-options"), Some("DENY"));
    }
    // A foreign Origin cannot sign in either.
    let (pre, csrf) = c.sign_in_form();
    let headers = [
        "Origin: http://evil.example".to_owned(),
        "Content-Type: application/x-www-form-urlencoded".to_owned(),
        format!("Cookie: {pre}"),
    ];
    let a = c.send(
        "POST",
        "/ui/login",
        &headers,
        format!("csrf={csrf}&key={ADMIN}").as_bytes(),
    );
    assert_eq!(a.status, 403);
    assert_eq!(c.snapshot("acct"), before, "nothing changed");
    assert_eq!(
        c.env.fake.stats().token_requests,
        upstream,
        "nothing went upstream"
    );
    let listed = json(&c.env.run(&["handle", "list", "acct", "--json"]));
    assert!(listed["handles"][0]["revoked_at"].is_null(), "{listed}");
}

/// The overview fragment follows a credential's state: a reject whose refresh fails leaves it `rejected` (listed first, failing), and a forced refresh from the page brings it back to `valid`.
#[test]
fn the_overview_follows_rejects_and_refreshes() {
    let c = Console::start();
    c.env.login("a-first", 3600);
    c.env.login("z-last", 3600);
    let (s, _) = c.sign_in(ADMIN);
    assert_eq!(row_state(&c, &s, "z-last"), "valid");
    // Upstream fails the refresh the reject starts: the token stays rejected.
    c.env
        .fake
        .push_fault(Fault::status(503, r#"{"error":"temporarily_unavailable"}"#));
    let a = c.post(
        "/ui/credentials/z-last/reject",
        Some(&s.cookie),
        &format!("csrf={}{}", s.csrf, reject_now(&c, &s, "z-last")),
    );
    assert_eq!(a.status, 303);
    assert!(flash(&c, &s, "/ui/credentials/z-last").starts_with("ERROR:"));
    assert_eq!(row_state(&c, &s, "z-last"), "rejected");
    // Failing rows come first.
    let frag = c.get("/ui/overview", Some(&s.cookie)).expect_status(200);
    let first = frag.body.find(r#"data-id="z-last""#).expect("z");
    let second = frag.body.find(r#"data-id="a-first""#).expect("a");
    assert!(first < second, "{}", frag.body);
    assert!(
        frag.body.contains("tokenwarden refresh --force z-last"),
        "{}",
        frag.body
    );
    // Filters: state=rejected lists it alone.
    let only = c
        .get(
            "/ui/overview?state=rejected&provider=&pool=",
            Some(&s.cookie),
        )
        .expect_status(200);
    assert!(
        only.body.contains(r#"data-id="z-last""#) && !only.body.contains(r#"data-id="a-first""#)
    );
    // A forced refresh from the page.
    c.post(
        "/ui/credentials/z-last/refresh",
        Some(&s.cookie),
        &format!("csrf={}", s.csrf),
    )
    .expect_status(303);
    assert!(flash(&c, &s, "/ui/credentials/z-last").starts_with("Refreshed z-last"));
    assert_eq!(row_state(&c, &s, "z-last"), "valid");
    let page = c
        .get("/ui/credentials/z-last", Some(&s.cookie))
        .expect_status(200);
    assert!(page.body.contains(r#"<li class="event""#));
    assert!(
        page.body
            .contains(r#"id="refresh-latency">Last refresh took"#),
        "{}",
        page.body
    );
}

/// No answer under /ui — pages, fragments, redirects, errors, flashes, scripts — holds an access token, refresh token, id token, handle or API key.
#[test]
fn no_secret_in_any_console_answer() {
    let c = Console::start();
    c.env.login("acct", 3600);
    let (handle, _) = new_handle(&c, "acct");
    let (s, signin) = c.sign_in(ADMIN);
    let (r, _) = c.sign_in(READ);
    let mut answers = vec![signin];
    for action in ["refresh", "reject", "cooldown"] {
        answers.push(c.post(
            &format!("/ui/credentials/acct/{action}"),
            Some(&s.cookie),
            &format!(
                "csrf={}{}",
                s.csrf,
                match action {
                    "cooldown" => "&seconds=60".to_owned(),
                    "reject" => reject_now(&c, &s, "acct"),
                    _ => String::new(),
                }
            ),
        ));
        answers.push(c.get("/ui/credentials/acct", Some(&s.cookie)));
    }
    for path in [
        "/",
        "/ui",
        "/ui/overview",
        "/ui/credentials/acct",
        "/ui/login",
        "/ui/static/app.js",
        "/ui/static/app.css",
        "/ui/nope",
        "/ui/credentials/missing",
    ] {
        answers.push(c.get(path, Some(&s.cookie)));
        answers.push(c.get(path, Some(&r.cookie)));
        answers.push(c.get(path, None));
    }
    let (pre, csrf) = c.sign_in_form();
    answers.push(c.post(
        "/ui/login",
        Some(&pre),
        &format!("csrf={csrf}&key={ADMIN}x"),
    ));
    let family = c.env.fake.family_state("acct");
    let mut secrets = vec![ADMIN.to_owned(), READ.to_owned(), handle.clone()];
    secrets.extend(c.env.fake.issued_refresh_tokens("acct"));
    secrets.push(family.current_access_token.clone());
    let row = json(&c.env.run(&["export", "acct", "--format", "codex"]));
    for k in ["access_token", "refresh_token", "id_token"] {
        secrets.push(row["tokens"][k].as_str().expect("token").to_owned());
    }
    assert!(handle.starts_with("twh_"));
    for a in &answers {
        let all = format!("{:?}\n{}", a.headers, a.body);
        for secret in &secrets {
            assert!(
                !all.contains(secret.as_str()),
                "a secret in an answer: {all}"
            );
        }
    }
}

/// Every /ui answer carries the security headers (CSP, frame, sniffing, referrer, no-store); the script and stylesheet are served as files with their types.
#[test]
fn security_headers_on_every_console_answer() {
    let c = Console::start();
    c.env.login("acct", 3600);
    let (s, signin) = c.sign_in(ADMIN);
    let mut answers = vec![signin];
    for path in [
        "/",
        "/ui",
        "/ui/overview",
        "/ui/login",
        "/ui/credentials/acct",
        "/ui/nope",
    ] {
        answers.push(c.get(path, Some(&s.cookie)));
        answers.push(c.get(path, None));
    }
    answers.push(c.post("/ui/credentials/acct/refresh", Some(&s.cookie), "csrf=bad"));
    for a in &answers {
        assert_eq!(a.header("content-security-policy"), Some(CSP), "{a:?}");
        assert_eq!(a.header("x-frame-options"), Some("DENY"));
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(a.header("referrer-policy"), Some("same-origin"));
        assert_eq!(a.header("cache-control"), Some("no-store"));
    }
    let js = c.get("/ui/static/app.js", None).expect_status(200);
    assert!(js
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/javascript"));
    assert!(js.body.contains("credential-rows"));
    let css = c.get("/ui/static/app.css", None).expect_status(200);
    assert!(css
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/css"));
    let page = c.get("/ui", Some(&s.cookie)).expect_status(200);
    assert!(page
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/html"));
    assert!(!page.body.contains("<script>") && !page.body.contains("style="));
}

/// Huge, chunked, malformed or mistyped form bodies get 400/413/415 without a panic; unknown paths 404, wrong methods 405, bad ids 400; the server answers on afterwards.
#[test]
fn bad_bodies_and_paths_are_refused() {
    let c = Console::start();
    c.env.login("acct", 3600);
    let (s, _) = c.sign_in(ADMIN);
    let before = c.snapshot("acct");
    let path = "/ui/credentials/acct/cooldown";
    let form_headers = |ctype: &str| {
        vec![
            format!("Origin: {}", c.origin()),
            format!("Content-Type: {ctype}"),
            format!("Cookie: {}", s.cookie),
        ]
    };
    // Too large, declared.
    let big = format!("csrf={}&seconds={}", s.csrf, "1".repeat(100_000));
    let a = c.send(
        "POST",
        path,
        &form_headers("application/x-www-form-urlencoded"),
        big.as_bytes(),
    );
    assert_eq!(a.status, 413, "{}", a.body);
    // Too large, chunked (2 MiB in 64 KiB chunks).
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nOrigin: {}\r\nCookie: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n",
        c.addr,
        c.origin(),
        s.cookie
    )
    .into_bytes();
    let chunk = vec![b'a'; 65_536];
    for _ in 0..32 {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(&chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(exchange(c.addr, &req).status, 413);
    // Malformed forms: 400.
    let csrf = &s.csrf;
    for body in [
        format!("csrf={csrf}&seconds=%zz"),
        format!("csrf={csrf}&seconds=1&seconds=2"),
        format!("csrf={csrf}&bogus=1"),
        format!("csrf={csrf}&seconds=%ff%fe"),
    ] {
        let a = c.send(
            "POST",
            path,
            &form_headers("application/x-www-form-urlencoded"),
            body.as_bytes(),
        );
        assert_eq!(a.status, 400, "{body}: {}", a.body);
    }
    let mut raw = format!("csrf={csrf}&seconds=").into_bytes();
    raw.extend_from_slice(b"\xff\xfe");
    let a = c.send(
        "POST",
        path,
        &form_headers("application/x-www-form-urlencoded"),
        &raw,
    );
    assert_eq!(a.status, 400);
    // Another content type: 415.
    let a = c.send(
        "POST",
        path,
        &form_headers("multipart/form-data; boundary=x"),
        format!("csrf={csrf}&seconds=5").as_bytes(),
    );
    assert_eq!(a.status, 415);
    // Unknown paths, wrong methods, bad ids.
    for (method, p, status) in [
        ("GET", "/ui/nope", 404),
        ("GET", "/ui/", 404),
        ("GET", "/ui/static/other.js", 404),
        ("GET", "/ui/credentials/acct/events", 404),
        ("POST", "/ui/credentials/acct/explode", 404),
        ("GET", "/ui/credentials/acct/refresh", 405),
        ("DELETE", "/ui", 405),
        ("PUT", "/ui/login", 405),
        ("GET", "/ui/logout", 405),
        ("GET", "/ui/credentials/..", 400),
        ("GET", "/ui/credentials/a%2fb", 400),
        ("GET", "/ui/credentials/a%00b", 400),
        ("GET", "/ui/credentials/missing", 404),
        ("GET", "/ui?state=bogus", 400),
        ("GET", "/ui/overview?color=red", 400),
    ] {
        let headers = [
            format!("Cookie: {}", s.cookie),
            format!("Origin: {}", c.origin()),
        ];
        let a = c.send(method, p, &headers, b"");
        assert_eq!(a.status, status, "{method} {p}: {}", a.body);
    }
    assert_eq!(c.snapshot("acct"), before, "nothing changed");
    assert_eq!(c.get("/healthz", None).status, 200);
    c.get("/ui", Some(&s.cookie)).expect_status(200);
}

/// The overview pages through many credentials 200 rows at a time with a next link, never loading them all.
#[test]
fn the_overview_is_paged() {
    let c = Console::start();
    let records: Vec<Value> = (0..450)
        .map(|i| {
            serde_json::json!({
                "id": format!("c{i:04}"),
                "provider": "codex",
                "refresh_token": format!("rt-page-{i}"),
                "access_token": format!("at-page-{i}"),
                "expires_at": crate::common::tw::now() + 3600,
            })
        })
        .collect();
    let file = c.env.dir.path().join("many.json");
    std::fs::write(&file, Value::Array(records).to_string()).expect("write");
    let out = c.env.run(&["import", file.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (s, _) = c.sign_in(READ);
    let mut path = "/ui".to_owned();
    let mut seen = 0;
    for _ in 0..3 {
        let page = c.get(&path, Some(&s.cookie)).expect_status(200);
        seen += page.body.matches(r#"<tr class="credential""#).count();
        let Some(at) = page.body.find(r#"id="next-page" href=""#) else {
            break;
        };
        let rest = &page.body[at + r#"id="next-page" href=""#.len()..];
        path = rest[..rest.find('"').expect("quote")].replace("&amp;", "&");
    }
    assert_eq!(seen, 450);
    let first = c.get("/ui", Some(&s.cookie)).expect_status(200);
    assert_eq!(first.body.matches(r#"<tr class="credential""#).count(), 200);
    assert!(
        first.body.contains(r#"<span class="n">450</span>"#),
        "counts cover the whole table"
    );
    let frag = c
        .get("/ui/overview?after=c0399", Some(&s.cookie))
        .expect_status(200);
    assert_eq!(frag.body.matches(r#"<tr class="credential""#).count(), 50);
}

on_both_backends!(quota_history_and_handle_revocations);

/// The console on each backend: quota gauges per window with their reset time in the overview, the history chart of every snapshot on the credential page, and a handle revoked from the page leaves its event row.
fn quota_history_and_handle_revocations(backend: Backend) {
    let Some(c) = Console::on(backend) else {
        return;
    };
    c.env.login("acct", 3600);
    c.env.login("none", 3600);
    let (s, _) = c.sign_in(ADMIN);
    // Two snapshots: 42 % then 100 % of the 5-hour window.
    let out = c.env.run(&["quota", "acct", "--refresh"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut usage: Value =
        serde_json::from_str(crate::common::fake_oauth::CODEX_USAGE_BODY).expect("fixture");
    usage["rate_limit"]["primary_window"]["used_percent"] = Value::from(100);
    c.env.fake.set_codex_usage(200, usage);
    let out = c.env.run(&["quota", "acct", "--refresh"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let frag = c.get("/ui/overview", Some(&s.cookie)).expect_status(200);
    assert!(
        frag.body.contains(r#"<div class="quota" data-id="acct">"#),
        "{}",
        frag.body
    );
    assert!(!frag.body.contains(r#"<div class="quota" data-id="none">"#));
    assert!(
        frag.body
            .contains(r#"<svg class="gauge level-full" data-window="5h" data-used="100""#),
        "{}",
        frag.body
    );
    assert!(frag
        .body
        .contains(r#"<svg class="gauge level-ok" data-window="weekly" data-used="17""#));
    assert!(frag.body.contains("resets <time"));
    let page = c
        .get("/ui/credentials/acct", Some(&s.cookie))
        .expect_status(200);
    assert!(
        page.body.contains(r#"<svg class="quota-history""#),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains(r#"data-window="5h" fill="none" points="0,70 480,0""#),
        "{}",
        page.body
    );
    assert!(page.body.contains("2 snapshot(s)"));

    // A handle revoked from the page: an event row on its credential.
    let (_, short) = new_handle(&c, "acct");
    c.post(
        "/ui/credentials/acct/revoke-handle",
        Some(&s.cookie),
        &format!("csrf={}&handle={short}", s.csrf),
    )
    .expect_status(303);
    let events = json(&c.env.run(&["events", "acct", "--json"]));
    let last = events["events"]
        .as_array()
        .expect("events")
        .last()
        .expect("one")
        .clone();
    assert_eq!(
        last["reason"],
        format!("handle {short} revoked"),
        "{events}"
    );
    assert_eq!(last["from"], last["to"]);
}

/// A dead `oauth2` credential's row and page carry a "Sign in again" button for admin sessions only; it starts a sign-in over the API and answers a link to the provider, whose callback revives the credential. Another provider's button is refused with the command to run.
#[test]
fn a_dead_oauth2_credential_signs_in_again_from_the_console() {
    let idp = crate::login::Idp::start();
    let c = Console::start();
    c.env.login("codexy", 3600);
    let record = serde_json::json!({
        "provider": "oauth2", "refresh_token": "rt-ops-old",
        "token_url": format!("{}/token", idp.issuer), "client_id": "tw-cli",
    });
    let file = c.env.dir.path().join("ops.json");
    std::fs::write(&file, record.to_string()).expect("write");
    let out = c
        .env
        .run(&["import", "--id", "ops", file.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The provider refuses the unknown refresh token for good: dead.
    c.env.run(&["refresh", "ops", "--force"]);
    let shown = json(&c.env.run(&["show", "ops", "--json"]));
    assert_eq!(shown["state"], "dead", "{shown}");

    let (admin, _) = c.sign_in(ADMIN);
    let (read, _) = c.sign_in(READ);
    let frag = c
        .get("/ui/overview", Some(&admin.cookie))
        .expect_status(200);
    assert_eq!(
        frag.body.matches(r#"data-action="relogin""#).count(),
        1,
        "{}",
        frag.body
    );
    let frag = c.get("/ui/overview", Some(&read.cookie)).expect_status(200);
    assert!(!frag.body.contains("relogin"), "{}", frag.body);
    let page = c
        .get("/ui/credentials/ops", Some(&read.cookie))
        .expect_status(200);
    assert!(!page.body.contains(r#"data-action="relogin""#));
    // Read-only sessions cannot start one either.
    let a = c.post(
        "/ui/credentials/ops/relogin",
        Some(&read.cookie),
        &format!("csrf={}", read.csrf),
    );
    assert_eq!(a.status, 403);

    let a = c
        .post(
            "/ui/credentials/ops/relogin",
            Some(&admin.cookie),
            &format!("csrf={}", admin.csrf),
        )
        .expect_status(200);
    let marker = r#"id="relogin-link" href=""#;
    let at = a.body.find(marker).unwrap_or_else(|| panic!("{}", a.body));
    let rest = &a.body[at + marker.len()..];
    let url = rest[..rest.find('"').expect("quote")].replace("&amp;", "&");
    assert!(url.starts_with(&idp.issuer), "{url}");
    let mut browser = crate::login::Browser::default();
    let back = browser.sign_in(&idp.issuer, &url, "gwen", false);
    let target = &back[back.find("/oauth/callback").expect("back to the server")..];
    let done = c.get(target, None);
    assert_eq!(done.status, 200, "{}", done.body);
    let shown = json(&c.env.run(&["show", "ops", "--json"]));
    assert_eq!(shown["state"], "valid", "{shown}");

    // A codex credential: refused, with the command that signs it in.
    let a = c
        .post(
            "/ui/credentials/codexy/relogin",
            Some(&admin.cookie),
            &format!("csrf={}", admin.csrf),
        )
        .expect_status(303);
    assert_eq!(location(&a), "/ui/credentials/codexy");
    let msg = flash(&c, &admin, "/ui/credentials/codexy");
    assert!(
        msg.starts_with("ERROR:") && msg.contains("tokenwarden login codex"),
        "{msg}"
    );
}

/// A server with no API key (loopback only) signs anyone in as admin, as its API answers anyone — and, as the API, answers no other `Host`: a DNS-rebinding page gets 403 before the console, and no cookie.
#[test]
fn a_keyless_console_answers_loopback_names_only() {
    let c = Console::serve_keys(Env::new(), &[]);
    c.env.login("acct", 3600);
    let form = c.get("/ui/login", None).expect_status(200);
    assert!(form.body.contains(r#"id="signin-open""#), "{}", form.body);
    let (s, _) = c.sign_in("");
    let page = c.get("/ui", Some(&s.cookie)).expect_status(200);
    assert!(page.body.contains("scope-admin") && page.body.contains(r#"data-id="acct""#));
    // A page at another name re-pointed at 127.0.0.1, with its own Origin.
    let rebound = format!("rebind.attacker.example:{}", c.addr.port());
    for (method, path, body) in [
        ("GET", "/ui/login", ""),
        ("GET", "/ui", ""),
        ("POST", "/ui/login", "csrf=x&key="),
        ("POST", "/ui/credentials/acct/delete", "csrf=x"),
    ] {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {rebound}\r\nOrigin: http://{rebound}\r\n\
             Connection: close\r\nCookie: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n",
            s.cookie,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body.as_bytes());
        let a = exchange(c.addr, &req);
        assert_eq!(a.status, 403, "{method} {path}: {}", a.body);
        assert!(a.body.contains("--allow-host"), "{}", a.body);
        assert!(set_cookie(&a, "tw_pre").is_none() && set_cookie(&a, "tw_session").is_none());
        assert_eq!(a.header("content-security-policy"), Some(CSP));
    }
    assert_eq!(
        c.env.run(&["show", "acct"]).status.code(),
        Some(0),
        "not deleted"
    );
}
