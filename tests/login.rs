//! `tokenwarden login` against a real OpenID provider: panva's
//! `oidc-provider` on Node.js (tests/oidc, installed from its lockfile by
//! `npm ci` — by `.ci/run`, or by the first test that needs it), started on
//! a free loopback port per test and stopped after.
//! A small HTTP client with a cookie jar plays the browser through the
//! provider's development login and consent forms, so the whole code +
//! PKCE flow, the device flow and their failures run with no browser.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tokenwarden::{Config, Warden};

use crate::common::tw::BIN;

/// The provider, running; killed on drop.
pub(crate) struct Idp {
    child: Child,
    _stdin: ChildStdin,
    pub(crate) issuer: String,
}

impl Idp {
    pub(crate) fn start() -> Idp {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        if let Err(e) = crate::common::node::installed(&dir, "oidc-provider") {
            panic!("{e}");
        }
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node (Node.js 20 or later) runs");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        // Keep reading what it prints (the device flow logs to stdout): a
        // closed pipe would kill it with EPIPE.
        thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let port = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("provider did not start: {line:?}"));
        Idp {
            child,
            _stdin: stdin,
            issuer: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP answer.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) location: Option<String>,
    pub(crate) body: String,
}

/// A browser: plain HTTP/1.1 over loopback, one connection per request,
/// a cookie jar, no redirects followed by itself.
#[derive(Default)]
pub(crate) struct Browser {
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn send(&mut self, method: &str, url: &str, form: Option<&str>) -> Answer {
        let rest = url.strip_prefix("http://").expect("loopback http");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let mut s = TcpStream::connect(host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let body = form.unwrap_or("");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        if !cookie.is_empty() {
            req += &format!("Cookie: {cookie}\r\n");
        }
        if form.is_some() {
            req += &format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        req += "\r\n";
        req += body;
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut location = None;
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("set-cookie") {
                let pair = v.split(';').next().unwrap_or("");
                if let Some((n, val)) = pair.split_once('=') {
                    self.cookies.insert(n.trim().into(), val.trim().into());
                }
            } else if k.eq_ignore_ascii_case("location") {
                location = Some(match v.starts_with('/') {
                    true => format!("http://{host}{v}"),
                    false => v.to_owned(),
                });
            }
        }
        Answer {
            status,
            location,
            body: body.to_owned(),
        }
    }

    pub(crate) fn get(&mut self, url: &str) -> Answer {
        self.send("GET", url, None)
    }

    pub(crate) fn post(&mut self, url: &str, form: &str) -> Answer {
        self.send("POST", url, Some(form))
    }

    /// Follows redirects from `url`, signing in as `user` and consenting
    /// on the development forms (or aborting at consent when `deny`),
    /// until the provider redirects outside itself (the loopback callback)
    /// or answers a page; returns that redirect, or the last page's URL.
    pub(crate) fn sign_in(&mut self, issuer: &str, url: &str, user: &str, deny: bool) -> String {
        let mut next = url.to_owned();
        for _ in 0..20 {
            if !next.starts_with(issuer) {
                return next;
            }
            let path = &next[issuer.len()..];
            let a = if path.starts_with("/interaction/") && !path.contains("/abort") {
                let page = self.get(&next);
                if page.body.contains(r#"name="prompt" value="login""#) {
                    self.post(&next, &format!("prompt=login&login={user}&password=x"))
                } else if deny {
                    self.get(&format!("{next}/abort"))
                } else {
                    assert!(page.body.contains(r#"value="consent""#), "{}", page.body);
                    self.post(&next, "prompt=consent")
                }
            } else {
                self.get(&next)
            };
            match a.location {
                Some(l) => next = l,
                None => return next,
            }
        }
        panic!("too many redirects");
    }
}

/// `tokenwarden login …` running, with its stderr collected.
struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn start(db: &Path, args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .arg("--db")
            .arg(db)
            .arg("login")
            .args(args)
            .env("TOKENWARDEN_REQUEST_TIMEOUT", "10")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sink, err) = (stderr.clone(), child.stderr.take().unwrap());
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Running { child, stderr }
    }

    /// The first printed line that starts with `prefix` (after blanks).
    fn printed(&self, prefix: &str) -> String {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with(prefix))
            {
                return l.to_owned();
            }
            assert!(
                Instant::now() < until,
                "never printed {prefix}: {}",
                self.stderr.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> (i32, String, String) {
        let until = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < until,
                "login never ended: {}",
                self.stderr.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        thread::sleep(Duration::from_millis(50));
        let err = self.stderr.lock().unwrap().clone();
        (status.code().unwrap_or(-1), out, err)
    }
}

fn tw(db: &Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(BIN)
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tw.db");
    (dir, db)
}

/// `tokenwarden login oauth2 --issuer … --client-id CLIENT EXTRA…` running.
fn login_oauth2(idp: &Idp, db: &Path, client: &str, extra: &[&str]) -> Running {
    let mut args = vec!["oauth2", "--issuer", &idp.issuer, "--client-id", client];
    args.extend_from_slice(extra);
    Running::start(db, &args)
}

/// A browser that went through the provider's forms for the running
/// login's authorize URL, and the redirect it was sent to.
fn through_the_forms(idp: &Idp, run: &Running, user: &str, deny: bool) -> (Browser, String) {
    let url = run.printed(&format!("{}/auth?", idp.issuer));
    let mut b = Browser::default();
    let callback = b.sign_in(&idp.issuer, &url, user, deny);
    assert!(callback.starts_with("http://127.0.0.1:"), "{callback}");
    (b, callback)
}

/// A browser sign-in: `login oauth2 --issuer`, the provider's forms, the
/// redirect to the loopback listener. Returns the login's result.
fn browser_login(idp: &Idp, db: &Path, user: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["--no-browser"];
    args.extend_from_slice(extra);
    let run = login_oauth2(idp, db, "tw-cli", &args);
    let (mut b, callback) = through_the_forms(idp, &run, user, false);
    let page = b.get(&callback);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("You can close this tab"),
        "{}",
        page.body
    );
    run.finish()
}

/// The whole code + PKCE flow through the provider's login and consent
/// forms: the credential is stored under the account's e-mail with a
/// refresh token (offline_access with consent), serves its access token,
/// and refreshes against the provider (which rotates it).
#[test]
fn code_and_pkce_through_the_login_form_store_a_working_credential() {
    let idp = Idp::start();
    let (_d, db) = db();
    let (code, out, err) = browser_login(&idp, &db, "alice", &[]);
    assert_eq!((code, out.trim()), (0, "alice@example.com new"), "{err}");
    let (code, token, err) = tw(&db, &["token", "alice@example.com"]);
    assert_eq!(code, 0, "{err}");
    let w = Warden::open(&db, Config::default()).unwrap();
    let c = w.get("alice@example.com").unwrap();
    assert_eq!(c.access_token.as_ref().unwrap().expose(), token.trim());
    assert_eq!(c.claims.user_id.as_deref(), Some("alice"));
    assert_eq!(c.provider.token_url, Some(format!("{}/token", idp.issuer)));
    let first_refresh = c.refresh_token.clone();
    // A real refresh at the provider, which rotates the refresh token.
    let (code, fresh, err) = tw(&db, &["refresh", "alice@example.com"]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(fresh.trim(), token.trim());
    assert_ne!(
        w.get("alice@example.com").unwrap().refresh_token,
        first_refresh
    );
}

/// A redirect with another `state` is answered 400 and ignored (its code
/// never exchanged); the real one that follows completes the sign-in.
#[test]
fn a_wrong_state_is_refused_and_the_real_redirect_still_signs_in() {
    let idp = Idp::start();
    let (_d, db) = db();
    let run = login_oauth2(&idp, &db, "tw-cli", &["--no-browser"]);
    let (mut b, callback) = through_the_forms(&idp, &run, "bob", false);
    let (base, _) = callback.split_once('?').unwrap();
    let forged = b.get(&format!("{base}?code=stolen&state=not-this-one"));
    assert_eq!(forged.status, 400, "{}", forged.body);
    let page = b.get(&callback);
    assert_eq!(page.status, 200, "{}", page.body);
    let (code, out, err) = run.finish();
    assert_eq!((code, out.trim()), (0, "bob@example.com new"), "{err}");
    assert!(err.contains("state"), "{err}");
}

/// Consent refused at the provider: the redirect carries
/// `error=access_denied`; the login fails (exit 1) and stores nothing.
#[test]
fn a_denied_consent_stores_nothing() {
    let idp = Idp::start();
    let (_d, db) = db();
    let run = login_oauth2(&idp, &db, "tw-cli", &["--no-browser"]);
    let (mut b, callback) = through_the_forms(&idp, &run, "carol", true);
    assert!(callback.contains("error=access_denied"), "{callback}");
    let page = b.get(&callback);
    assert_eq!(page.status, 400);
    let (code, _, err) = run.finish();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused"), "{err}");
    let (_, list, _) = tw(&db, &["list", "--json"]);
    assert!(list.contains(r#""credentials":[]"#), "{list}");
}

/// The device flow (RFC 8628): the login prints a user code; the user
/// enters it on the provider's device page, signs in and consents; the
/// polling login stores the credential.
#[test]
fn the_device_flow_signs_in_from_another_device() {
    let idp = Idp::start();
    let (_d, db) = db();
    let run = login_oauth2(&idp, &db, "tw-cli", &["--device"]);
    let page = run.printed("Open ");
    run.printed("(it expires");
    let user_code = {
        let s = run.stderr.lock().unwrap().clone();
        let after = s.split_once(&page).unwrap().1;
        after
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap()
            .to_owned()
    };
    let mut b = Browser::default();
    let device = format!("{}/device", idp.issuer);
    let form = b.get(&device);
    let xsrf = field(&form.body, "xsrf");
    let confirm = b.post(&device, &format!("xsrf={xsrf}&user_code={user_code}"));
    let xsrf = field(&confirm.body, "xsrf");
    let a = b.post(
        &device,
        &format!("xsrf={xsrf}&user_code={user_code}&confirm=yes"),
    );
    let next = a
        .location
        .clone()
        .unwrap_or_else(|| panic!("{} {}", a.status, a.body));
    let end = b.sign_in(&idp.issuer, &next, "dave", false);
    assert!(end.contains("/device/"), "{end}");
    let (code, out, err) = run.finish();
    assert_eq!((code, out.trim()), (0, "dave@example.com new"), "{err}");
    assert_eq!(tw(&db, &["token", "dave@example.com"]).0, 0);
}

/// A hidden form field's value.
fn field(html: &str, name: &str) -> String {
    let at = html
        .find(&format!(r#"name="{name}" value=""#))
        .unwrap_or_else(|| panic!("no {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// A device code that runs out before anyone enters it (this client's
/// live 2 s): the poll is answered `expired_token` and the login says so.
#[test]
fn an_expired_device_code_ends_the_login_cleanly() {
    let idp = Idp::start();
    let (_d, db) = db();
    let run = login_oauth2(&idp, &db, "tw-short", &["--device"]);
    let (code, _, err) = run.finish();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("expired"), "{err}");
    assert!(tw(&db, &["list", "--json"])
        .1
        .contains(r#""credentials":[]"#));
}

/// A credential whose refresh token was revoked goes dead, and its error
/// and summary name the login that fixes it; that command, run as it is
/// (`login oauth2 --id erin`: issuer and client from the stored
/// credential), updates the same credential in place: alive again, same
/// id, its handle and events kept, no second credential; a later login
/// without --id finds it by its account.
#[test]
fn a_login_for_a_dead_credentials_account_revives_it_with_handles_kept() {
    let idp = Idp::start();
    let (_d, db) = db();
    let (code, _, err) = browser_login(&idp, &db, "erin", &["--id", "erin"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        tw(&db, &["handle", "create", "erin", "--label", "laptop"]).0,
        0
    );
    let w = Warden::open(&db, Config::default()).unwrap();
    let rt = w.get("erin").unwrap().refresh_token.expose().to_owned();
    let revoked = Browser::default().post(
        &format!("{}/token/revocation", idp.issuer),
        &format!("token={rt}&token_type_hint=refresh_token&client_id=tw-cli"),
    );
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let (code, _, err) = tw(&db, &["refresh", "erin"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("tokenwarden login oauth2 --id erin"), "{err}");
    let (_, show, _) = tw(&db, &["show", "erin", "--json"]);
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["state"], "dead", "{show}");

    assert_eq!(show["relogin"], "tokenwarden login oauth2 --id erin");

    // The command the error names, as it is (the issuer found from the
    // stored token URL, the client id from the credential).
    let run = Running::start(&db, &["oauth2", "--id", "erin", "--no-browser"]);
    let (mut b, callback) = through_the_forms(&idp, &run, "erin", false);
    assert_eq!(b.get(&callback).status, 200);
    let (code, out, err) = run.finish();
    assert_eq!((code, out.trim()), (0, "erin revived"), "{err}");
    let (code, _, err) = tw(&db, &["token", "erin"]);
    assert_eq!(code, 0, "{err}");
    let (_, list, _) = tw(&db, &["list", "--json"]);
    assert_eq!(list.matches(r#""id":"#).count(), 1, "{list}");
    let (_, handles, _) = tw(&db, &["handle", "list", "erin", "--json"]);
    assert!(handles.contains("laptop"), "{handles}");
    // Signed in again without --id: the account's credential is found
    // (same server, same subject) and updated, not stored a second time.
    let (code, out, err) = browser_login(&idp, &db, "erin", &[]);
    assert_eq!((code, out.trim()), (0, "erin updated"), "{err}");
    let events = w.events("erin", None).unwrap();
    assert_eq!(
        events.first().map(|e| e.reason.as_str()),
        Some("imported"),
        "{events:?}"
    );
}

/// A token endpoint in front of the provider's that holds each request
/// for `delay` before passing it on, and remembers every refresh token it
/// was sent.
struct SlowProxy {
    url: String,
    sent: Arc<Mutex<Vec<String>>>,
}

impl SlowProxy {
    fn start(token_url: String, delay: Duration) -> SlowProxy {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let seen = sent.clone();
        thread::spawn(move || {
            for mut req in server.incoming_requests() {
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                for (k, v) in tokenwarden::provider::form_decode(&body) {
                    if k == "refresh_token" {
                        seen.lock().unwrap().push(v);
                    }
                }
                thread::sleep(delay);
                let mut b = Browser::default();
                let a = b.post(&token_url, &body);
                let reply = tiny_http::Response::from_string(a.body)
                    .with_status_code(a.status)
                    .with_header(
                        tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap(),
                    );
                let _ = req.respond(reply);
            }
        });
        SlowProxy {
            url: format!("http://127.0.0.1:{port}/token"),
            sent,
        }
    }
}

/// A login for an account whose refresh is in flight (held 2 s by a slow
/// token endpoint) waits for that refresh to commit before it replaces
/// the row: the refresh token in flight is sent once, the rotated one it
/// brings back is recorded as spent by the login's replace and never sent,
/// and the login's own token refreshes at the provider afterwards.
#[test]
fn a_login_during_a_refresh_in_flight_waits_for_it_and_reuses_nothing() {
    let idp = Idp::start();
    let (_d, db) = db();
    let (code, _, err) = browser_login(&idp, &db, "frank", &["--id", "frank"]);
    assert_eq!(code, 0, "{err}");
    // Route the credential's refreshes through the slow proxy: a replace
    // with the refresh token it holds changes its settings only.
    let proxy = SlowProxy::start(format!("{}/token", idp.issuer), Duration::from_secs(2));
    let w = Arc::new(Warden::open(&db, Config::default()).unwrap());
    let held = w.get("frank").unwrap().refresh_token.expose().to_owned();
    let record = serde_json::json!({
        "id": "frank", "provider": "oauth2", "refresh_token": held,
        "token_url": proxy.url, "client_id": "tw-cli",
    });
    let file = db.with_file_name("frank.json");
    std::fs::write(&file, record.to_string()).unwrap();
    let (code, _, err) = tw(&db, &["import", file.to_str().unwrap(), "--replace"]);
    assert_eq!(code, 0, "{err}");

    let refresher = w.clone();
    let owner = thread::spawn(move || refresher.refresh("frank", false));
    let until = Instant::now() + Duration::from_secs(5);
    while w.get("frank").unwrap().status.state != tokenwarden::state::State::Refreshing {
        assert!(Instant::now() < until, "the refresh never started");
        thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    let (code, out, err) = browser_login(&idp, &db, "frank", &["--id", "frank"]);
    let waited = started.elapsed();
    assert_eq!((code, out.trim()), (0, "frank updated"), "{err}");
    let granted = owner
        .join()
        .unwrap()
        .expect("the refresh in flight commits");
    assert!(
        waited >= Duration::from_millis(1000),
        "the login waited: {waited:?}"
    );

    let c = w.get("frank").unwrap();
    assert_ne!(
        c.access_token.as_ref().unwrap(),
        &granted.access_token,
        "the login's tokens won"
    );
    assert_eq!(c.provider.token_url, Some(format!("{}/token", idp.issuer)));
    let sent = proxy.sent.lock().unwrap().clone();
    assert_eq!(
        sent,
        std::slice::from_ref(&held),
        "the refresh token in flight was sent once"
    );
    // The login's refresh token works at the provider; the old ones stay spent.
    let (code, _, err) = tw(&db, &["refresh", "frank"]);
    assert_eq!(code, 0, "{err}");
    let record = serde_json::json!({
        "id": "frank2", "provider": "oauth2", "refresh_token": held,
        "token_url": format!("{}/token", idp.issuer), "client_id": "tw-cli",
    });
    std::fs::write(&file, record.to_string()).unwrap();
    let (code, _, err) = tw(&db, &["import", file.to_str().unwrap()]);
    assert_eq!(code, 1, "a spent token is refused: {err}");
    assert!(err.contains("spent"), "{err}");
    let (_, list, _) = tw(&db, &["list", "--json"]);
    assert_eq!(list.matches(r#""id":"#).count(), 1, "{list}");
}

/// The same-account rules of `Warden::store_login`, on a database alone:
/// an --id that holds another account is refused, an account already
/// stored is never stored under a second id, and a new account without
/// --id takes its e-mail as its id.
#[test]
fn store_login_never_keeps_one_account_under_two_ids() {
    use tokenwarden::credential::{Claims, NewCredential, ProviderConfig, ProviderKind};
    use tokenwarden::Secret;
    let (_d, db) = db();
    let w = Warden::open(&db, Config::default()).unwrap();
    let cred = |rt: &str, sub: &str| NewCredential {
        id: String::new(),
        provider: ProviderConfig {
            token_url: Some("https://idp.example/token".into()),
            client_id: Some("c".into()),
            ..ProviderConfig::new(ProviderKind::OAuth2)
        },
        refresh_token: Secret::new(rt),
        access_token: Some(Secret::new(format!("at-{rt}"))),
        id_token: None,
        expires_at_ms: Some(tokenwarden::clock::now_ms() + 3_600_000),
        claims: Claims {
            user_id: Some(sub.into()),
            email: Some(format!("{sub}@example.com")),
            ..Claims::default()
        },
        last_refresh_ms: None,
        api_key: None,
    };
    let (row, _) = w.store_login(cred("rt-1", "gina"), None).unwrap();
    assert_eq!(row.id, "gina@example.com");
    // (login, --id, error contains)
    let table = [
        (
            cred("rt-2", "gina"),
            Some("other"),
            "already stored as credential 'gina@example.com'",
        ),
        (
            cred("rt-3", "hank"),
            Some("gina@example.com"),
            "holds another oauth2 account",
        ),
    ];
    for (login, id, want) in table {
        let err = w.store_login(login, id).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
    let (row, stored) = w.store_login(cred("rt-4", "gina"), None).unwrap();
    assert_eq!(
        (row.id.as_str(), stored),
        (
            "gina@example.com",
            tokenwarden::admin::Stored::Updated { revived: false }
        )
    );
    assert_eq!(w.list().unwrap().len(), 1);
}

/// What cannot make a sign-in is refused at once with exit 2 and the flag
/// to fix, before anything listens or is sent: a provider without the
/// asked-for variant, an `oauth2` sign-in without its client or
/// endpoints, plain http to a non-loopback host.
#[test]
fn impossible_sign_ins_are_usage_errors() {
    let (_d, db) = db();
    // (args, stderr contains)
    let table: [(&[&str], &str); 6] = [
        (&["claude", "--device"], "no device flow"),
        (&["codex", "--manual"], "no manual variant"),
        // `login google` signs in as Gemini CLI does: by browser only.
        (&["google", "--device"], "no device flow"),
        (&["oauth2", "--issuer", "http://127.0.0.1:1"], "--client-id"),
        (&["oauth2", "--client-id", "c"], "--issuer"),
        (
            &[
                "oauth2",
                "--client-id",
                "c",
                "--authorize-url",
                "http://idp.example/auth",
                "--token-url",
                "https://idp.example/token",
            ],
            "http",
        ),
    ];
    for (args, want) in table {
        let mut all = vec!["login"];
        all.extend_from_slice(args);
        all.push("--no-browser");
        let (code, _, err) = tw(&db, &all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// An unsigned JWT with `payload` (readers here never check signatures).
fn unsigned_jwt(payload: &serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

/// The Codex CLI's device flow, end to end against a stand-in for
/// auth.openai.com on loopback (`TOKENWARDEN_CODEX_TOKEN_URL` moves the
/// issuer): the user code is requested with the Codex client id, polls
/// answered 403 are pending, the authorization code and verifier that
/// come back are exchanged as a form at `/oauth/token` with the redirect
/// URI `{issuer}/deviceauth/callback`, and the credential is stored under
/// the id token's e-mail with its ChatGPT account.
#[test]
fn the_codex_device_flow_as_the_codex_cli_runs_it() {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let issuer = format!(
        "http://127.0.0.1:{}",
        server.server_addr().to_ip().unwrap().port()
    );
    let seen = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let log = seen.clone();
    let id_token = unsigned_jwt(&serde_json::json!({
        "email": "dev@example.com",
        "https://api.openai.com/auth": {"chatgpt_account_id": "acc-9", "chatgpt_plan_type": "pro"},
    }));
    thread::spawn(move || {
        let mut polls = 0;
        for mut req in server.incoming_requests() {
            let mut body = String::new();
            let _ = req.as_reader().read_to_string(&mut body);
            let path = req.url().to_owned();
            log.lock().unwrap().push((path.clone(), body));
            let (status, answer) = match path.as_str() {
                "/api/accounts/deviceauth/usercode" => (
                    200,
                    r#"{"device_auth_id":"dev-auth-1","user_code":"WXYZ-1234","interval":"1"}"#
                        .to_owned(),
                ),
                "/api/accounts/deviceauth/token" if polls == 0 => {
                    polls += 1;
                    (403, String::new())
                }
                "/api/accounts/deviceauth/token" => (
                    200,
                    r#"{"authorization_code":"ac-1","code_challenge":"ch-1","code_verifier":"ver-1"}"#
                        .to_owned(),
                ),
                "/oauth/token" => (
                    200,
                    serde_json::json!({
                        "access_token": "at-codex", "refresh_token": "rt-codex",
                        "id_token": id_token, "expires_in": 3600,
                    })
                    .to_string(),
                ),
                _ => (404, String::new()),
            };
            let _ = req.respond(tiny_http::Response::from_string(answer).with_status_code(status));
        }
    });
    let (_d, db) = db();
    let o = Command::new(BIN)
        .arg("--db")
        .arg(&db)
        .args(["login", "codex", "--device"])
        .env(
            "TOKENWARDEN_CODEX_TOKEN_URL",
            format!("{issuer}/oauth/token"),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("{issuer}/codex/device")) && err.contains("WXYZ-1234"),
        "{err}"
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "dev@example.com new"
    );
    let seen = seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/accounts/deviceauth/usercode",
            "/api/accounts/deviceauth/token",
            "/api/accounts/deviceauth/token",
            "/oauth/token"
        ]
    );
    let start: serde_json::Value = serde_json::from_str(&seen[0].1).unwrap();
    assert_eq!(
        start,
        serde_json::json!({"client_id": "app_EMoamEEZ73f0CkXaXp7hrann"})
    );
    let mut exchange = tokenwarden::provider::form_decode(&seen[3].1);
    exchange.sort();
    let redirect = format!("{issuer}/deviceauth/callback");
    let mut want: Vec<(String, String)> = [
        ("client_id", "app_EMoamEEZ73f0CkXaXp7hrann"),
        ("code", "ac-1"),
        ("code_verifier", "ver-1"),
        ("grant_type", "authorization_code"),
        ("redirect_uri", redirect.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    want.sort();
    assert_eq!(exchange, want);
    let w = Warden::open(&db, Config::default()).unwrap();
    let c = w.get("dev@example.com").unwrap();
    assert_eq!(
        (
            c.claims.account_id.as_deref(),
            c.claims.plan_type.as_deref(),
            c.refresh_token.expose()
        ),
        (Some("acc-9"), Some("pro"), "rt-codex")
    );
}
