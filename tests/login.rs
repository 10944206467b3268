//! `tokenwarden login` against a real OpenID provider: panva's
//! `oidc-provider` on Node.js (tests/oidc, installed by `.ci/run` with
//! `npm ci`), started on a free loopback port per test and stopped after.
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
struct Idp {
    child: Child,
    _stdin: ChildStdin,
    issuer: String,
}

impl Idp {
    fn start() -> Idp {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run `npm ci` in tests/oidc (.ci/run does)"
        );
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
struct Answer {
    status: u16,
    location: Option<String>,
    body: String,
}

/// A browser: plain HTTP/1.1 over loopback, one connection per request,
/// a cookie jar, no redirects followed by itself.
#[derive(Default)]
struct Browser {
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

    fn get(&mut self, url: &str) -> Answer {
        self.send("GET", url, None)
    }

    fn post(&mut self, url: &str, form: &str) -> Answer {
        self.send("POST", url, Some(form))
    }

    /// Follows redirects from `url`, signing in as `user` and consenting
    /// on the development forms (or aborting at consent when `deny`),
    /// until the provider redirects outside itself (the loopback callback)
    /// or answers a page; returns that redirect, or the last page's URL.
    fn sign_in(&mut self, issuer: &str, url: &str, user: &str, deny: bool) -> String {
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

/// A browser sign-in: `login oauth2 --issuer`, the provider's forms, the
/// redirect to the loopback listener. Returns the login's result.
fn browser_login(idp: &Idp, db: &Path, user: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "oauth2",
        "--issuer",
        &idp.issuer,
        "--client-id",
        "tw-cli",
        "--no-browser",
    ];
    args.extend_from_slice(extra);
    let run = Running::start(db, &args);
    let url = run.printed(&format!("{}/auth?", idp.issuer));
    let mut b = Browser::default();
    let callback = b.sign_in(&idp.issuer, &url, user, false);
    assert!(callback.starts_with("http://127.0.0.1:"), "{callback}");
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
    let run = Running::start(
        &db,
        &[
            "oauth2",
            "--issuer",
            &idp.issuer,
            "--client-id",
            "tw-cli",
            "--no-browser",
        ],
    );
    let url = run.printed(&format!("{}/auth?", idp.issuer));
    let mut b = Browser::default();
    let callback = b.sign_in(&idp.issuer, &url, "bob", false);
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
    let run = Running::start(
        &db,
        &[
            "oauth2",
            "--issuer",
            &idp.issuer,
            "--client-id",
            "tw-cli",
            "--no-browser",
        ],
    );
    let url = run.printed(&format!("{}/auth?", idp.issuer));
    let mut b = Browser::default();
    let callback = b.sign_in(&idp.issuer, &url, "carol", true);
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
    let run = Running::start(
        &db,
        &[
            "oauth2",
            "--issuer",
            &idp.issuer,
            "--client-id",
            "tw-cli",
            "--device",
        ],
    );
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
    let run = Running::start(
        &db,
        &[
            "oauth2",
            "--issuer",
            &idp.issuer,
            "--client-id",
            "tw-short",
            "--device",
        ],
    );
    let (code, _, err) = run.finish();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("expired"), "{err}");
    assert!(tw(&db, &["list", "--json"])
        .1
        .contains(r#""credentials":[]"#));
}

/// A credential whose refresh token was revoked goes dead, and its error
/// names the login that fixes it; that login (for the same account, no
/// --id) updates the same credential in place: alive again, same id, its
/// handle and events kept, no second credential.
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

    let (code, out, err) = browser_login(&idp, &db, "erin", &[]);
    assert_eq!((code, out.trim()), (0, "erin revived"), "{err}");
    let (code, _, err) = tw(&db, &["token", "erin"]);
    assert_eq!(code, 0, "{err}");
    let (_, list, _) = tw(&db, &["list", "--json"]);
    assert_eq!(list.matches(r#""id":"#).count(), 1, "{list}");
    let (_, handles, _) = tw(&db, &["handle", "list", "erin", "--json"]);
    assert!(handles.contains("laptop"), "{handles}");
    let events = w.events("erin", None).unwrap();
    assert_eq!(
        events.first().map(|e| e.reason.as_str()),
        Some("imported"),
        "{events:?}"
    );
}
