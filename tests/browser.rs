//! The operator's console (issue 17) in a real browser: Debian's headless
//! Chromium, driven by playwright-core (tests/browser, installed from its
//! lockfile by `.ci/run` or on first need), against `tokenwarden serve` on
//! loopback with the fake OAuth upstream.
//!
//! Each test starts a `serve`, sets credentials up through the CLI and the
//! API, and runs one Node script (one browser launch) that plays several
//! scenarios in order and reports each. The script asks this side, over a
//! line protocol on its stdin/stdout, for what only the test can do while
//! the page is open (reject a token through the API, count the upstream's
//! requests); afterwards the test checks the server side (the fake's
//! request log, the events through the API) and everything the browser sent
//! and received: no token, handle or API key in any of it, and the security
//! headers on every console response.
//!
//! Without Chromium or Node.js the tests say loudly that they were skipped,
//! or fail under `TOKENWARDEN_REQUIRE_BROWSER=1` (as `.ci/run` sets).
//! `TOKENWARDEN_CHROMIUM` names another browser binary;
//! `TOKENWARDEN_SCREENSHOTS=DIR` saves the README's screenshots there.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::fake_oauth::{Fault, Grant};
use crate::common::http::{free_port, Client, Served};
use crate::common::tw::{code, now, text, Env};

/// The admin key of every console under test (long and distinctive, so
/// the secret scan cannot miss it).
const ADMIN_KEY: &str = "tw-admin-key-5b2f8c1e9d7a4036";
/// The read-only key.
const READ_KEY: &str = "tw-read-key-c4e81a7f2b9d6053";
/// The most one script may take, browser launch included (a loaded CI
/// machine runs the rest of the suite beside it).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(240);

/// The browser binary, when this machine can run the browser tests;
/// `None` after a loud SKIPPED line, or a panic under
/// `TOKENWARDEN_REQUIRE_BROWSER=1`. Installs tests/browser on first need.
pub(crate) fn browser() -> Option<PathBuf> {
    let chromium = std::env::var_os("TOKENWARDEN_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let why = if !chromium.is_file() {
        Some(format!(
            "no browser at {} (apt-get install chromium, or set TOKENWARDEN_CHROMIUM)",
            chromium.display()
        ))
    } else if Command::new("node").arg("--version").output().is_err() {
        Some("no `node` (Node.js 20+) on PATH".to_owned())
    } else {
        crate::common::node::installed(&scripts_dir(), "playwright-core").err()
    };
    let Some(why) = why else {
        return Some(chromium);
    };
    if std::env::var("TOKENWARDEN_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("TOKENWARDEN_REQUIRE_BROWSER=1 and no browser test can run: {why}");
    }
    // Straight to stderr, past the test harness's capture: this line
    // must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED a browser test: {why} ***\n"
    );
    None
}

/// tests/browser, the Node package of the scripts.
fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// A `tokenwarden serve` on loopback with an admin and a read-only key,
/// its log kept.
pub(crate) struct Console {
    pub(crate) env: Env,
    _served: Served,
    pub(crate) addr: SocketAddr,
    /// The API with the admin key (plain HTTP consoles only).
    pub(crate) api: Client,
    log: Arc<Mutex<String>>,
    /// `http` or `https`.
    scheme: &'static str,
}

impl Console {
    /// Serves `env` (no background refresher: the test decides when a
    /// credential refreshes) with `extra` flags.
    pub(crate) fn start(env: Env, extra: &[&str]) -> Console {
        Console::start_with(env, extra, false)
    }

    /// [`Console::start`], over HTTPS when `tls` (a certificate for
    /// 127.0.0.1 made by tests/tls.rs's test CA, which the browser is told
    /// to accept).
    fn start_with(env: Env, extra: &[&str], tls: bool) -> Console {
        let keys = env.dir.path().join("api-keys");
        std::fs::write(&keys, format!("admin:{ADMIN_KEY}\nread:{READ_KEY}\n")).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = env.cmd();
        cmd.args(["serve", "--listen", &addr.to_string(), "--threads", "4"])
            .arg("--api-key-file")
            .arg(&keys)
            .args(["--no-refresher"])
            .args(extra);
        let mut served = if tls {
            let pki = crate::tls::make_pki(env.dir.path());
            cmd.arg("--tls-cert")
                .arg(&pki.cert)
                .arg("--tls-key")
                .arg(&pki.key);
            let child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn tokenwarden serve");
            let served = Served { child };
            // Up once it accepts connections (its /healthz speaks TLS).
            let start = Instant::now();
            while std::net::TcpStream::connect(addr).is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "serve did not come up"
                );
                thread::sleep(Duration::from_millis(20));
            }
            served
        } else {
            Served::spawn(cmd, addr)
        };
        // Drained, or a chatty log would fill the pipe and stall serve.
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = served.child.stderr.take() {
            let log = log.clone();
            thread::spawn(move || {
                let mut buf = String::new();
                let _ = err.read_to_string(&mut buf);
                log.lock().unwrap().push_str(&buf);
            });
        }
        Console {
            api: Client::new(addr, Some(ADMIN_KEY)),
            env,
            _served: served,
            addr,
            log,
            scheme: if tls { "https" } else { "http" },
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Every secret the browser must never see: each token the fake ever
    /// issued, both API keys, and `more` (handles).
    pub(crate) fn secrets(&self, more: &[String]) -> Vec<String> {
        let mut all = self.env.fake.every_token_issued();
        all.extend([ADMIN_KEY.to_owned(), READ_KEY.to_owned()]);
        all.extend(more.iter().cloned());
        all
    }

    /// Runs tests/browser/`script` against this console with `expect`
    /// (TW_EXPECT), answering its asks with `on_ask` (after the built-in
    /// `mark`, which notes the fake's request counts under a name).
    pub(crate) fn run(
        &self,
        chromium: &Path,
        script: &str,
        expect: Value,
        mut on_ask: impl FnMut(&str, &Value) -> Result<Value, String>,
    ) -> Outcome {
        let traffic = self.env.dir.path().join(format!("{script}.traffic.jsonl"));
        let mut cmd = Command::new("node");
        cmd.arg(script)
            .current_dir(scripts_dir())
            .env("TW_URL", self.url())
            .env("TW_ADMIN_KEY", ADMIN_KEY)
            .env("TW_READ_KEY", READ_KEY)
            .env("TW_EXPECT", expect.to_string())
            .env("TW_TRAFFIC", &traffic)
            .env("TOKENWARDEN_CHROMIUM", chromium)
            .env_remove("TW_SHOTS");
        if let Some(dir) = std::env::var_os("TOKENWARDEN_SCREENSHOTS") {
            // The script runs in tests/browser: a relative DIR is the
            // test's (the package root's).
            cmd.env(
                "TW_SHOTS",
                std::path::absolute(dir).expect("a screenshot directory"),
            );
        }
        let started = Instant::now();
        let mut node = Node::spawn(cmd);
        let mut out = Outcome {
            scenarios: Vec::new(),
            marks: BTreeMap::new(),
            traffic: Vec::new(),
            stderr: String::new(),
            log: String::new(),
            elapsed: Duration::ZERO,
        };
        loop {
            let Some(left) = SCRIPT_DEADLINE.checked_sub(started.elapsed()) else {
                panic!("{script} ran over {SCRIPT_DEADLINE:?}: {}", node.stderr());
            };
            let line = match node.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!(
                    "{script} ended or hung without `done` after {:?} ({} scenarios): {}",
                    started.elapsed(),
                    out.scenarios.len(),
                    node.stderr()
                ),
            };
            let msg: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{script} printed a non-JSON line ({e}): {line}"));
            if let Some(what) = msg["ask"].as_str() {
                let answer = match what {
                    "mark" => {
                        let name = msg["name"].as_str().unwrap_or_default().to_owned();
                        let counts = (
                            self.env.fake.token_requests().len(),
                            self.env.fake.usage_requests().len(),
                        );
                        out.marks.insert(name, counts);
                        Ok(json!({}))
                    }
                    _ => on_ask(what, &msg),
                };
                let reply = match answer {
                    Ok(mut v) => {
                        v["ok"] = json!(true);
                        v
                    }
                    Err(e) => json!({"ok": false, "error": e}),
                };
                node.reply(&reply);
            } else if msg.get("scenario").is_some() {
                out.scenarios.push(msg);
            } else if msg["done"] == json!(true) {
                break;
            } else {
                panic!("{script} printed an unknown line: {line}");
            }
        }
        out.elapsed = started.elapsed();
        out.stderr = node.stderr();
        out.log = self.log.lock().unwrap().clone();
        out.traffic = std::fs::read_to_string(&traffic)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a traffic line is JSON"))
            .collect();
        let _ = writeln!(
            std::io::stderr(),
            "{script}: {} scenarios in {:?} ({} responses recorded)",
            out.scenarios.len(),
            out.elapsed,
            out.traffic.len()
        );
        out
    }
}

/// A running Node script: its stdout lines on a channel, its stderr kept;
/// killed on drop.
struct Node {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Node {
    fn spawn(mut cmd: Command) -> Node {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node (Node.js 20 or later) runs");
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let keep = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                keep.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Node {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    fn reply(&mut self, v: &Value) {
        writeln!(self.stdin, "{v}").expect("write to the script");
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a script did: its scenarios' reports, the fake's counts at each
/// mark, every request and response the browser saw.
pub(crate) struct Outcome {
    scenarios: Vec<Value>,
    marks: BTreeMap<String, (usize, usize)>,
    traffic: Vec<Value>,
    stderr: String,
    log: String,
    elapsed: Duration,
}

impl Outcome {
    /// Panics unless every scenario of `names` ran and passed, naming each
    /// that did not with its error.
    pub(crate) fn assert_passed(&self, names: &[&str]) {
        let mut failed = Vec::new();
        for name in names {
            match self.scenarios.iter().find(|s| s["scenario"] == *name) {
                None => failed.push(format!("{name}: did not run")),
                Some(s) if s["ok"] != json!(true) => failed.push(format!(
                    "{name}: {}",
                    s["error"].as_str().unwrap_or_default()
                )),
                Some(_) => {}
            }
        }
        assert!(
            failed.is_empty(),
            "{} of {} browser scenarios failed:\n\n{}\n\n--- browser script stderr ---\n{}\n--- serve log (tail) ---\n{}",
            failed.len(),
            names.len(),
            failed.join("\n\n"),
            self.stderr,
            tail(&self.log, 4000)
        );
    }

    /// What scenario `name` reported.
    pub(crate) fn facts(&self, name: &str) -> &Value {
        &self
            .scenarios
            .iter()
            .find(|s| s["scenario"] == name)
            .unwrap_or_else(|| panic!("no scenario {name}"))["facts"]
    }

    /// The fake's token requests between marks `from` and `to`.
    fn token_requests_between(&self, from: &str, to: &str) -> usize {
        let at = |m: &str| self.marks.get(m).unwrap_or_else(|| panic!("no mark {m}")).0;
        at(to) - at(from)
    }

    /// Panics if any URL, header, request body, response body or DOM the
    /// browser saw holds one of `secrets` (or a 16-character end of one).
    /// The one exception is the key typed into the sign-in form, in the
    /// body of the `POST /ui/login` that sends it.
    pub(crate) fn assert_no_secret(&self, secrets: &[String]) {
        let mut needles: Vec<(&str, &str)> = Vec::new();
        for s in secrets {
            needles.push((s, s));
            // A token shown shortened still leaks its random part: a JWT's
            // signature, an opaque token's ends.
            let random = s.rsplit('.').next().unwrap_or(s);
            if random.len() >= 32 {
                needles.push((s, &random[..16]));
                needles.push((s, &random[random.len() - 16..]));
            }
        }
        let mut leaks = Vec::new();
        for entry in &self.traffic {
            let url = entry["url"].as_str().unwrap_or_default();
            let sign_in = entry["method"] == "POST" && url.ends_with("/ui/login");
            let mut places: Vec<(String, &str)> = vec![("url".into(), url)];
            for field in ["body", "dom"] {
                if let Some(v) = entry[field].as_str() {
                    places.push((field.into(), v));
                }
            }
            if !sign_in {
                if let Some(v) = entry["postData"].as_str() {
                    places.push(("request body".into(), v));
                }
            }
            for field in ["requestHeaders", "responseHeaders"] {
                if let Some(h) = entry[field].as_object() {
                    for (name, v) in h {
                        places.push((format!("{field}.{name}"), v.as_str().unwrap_or_default()));
                    }
                }
            }
            for (place, hay) in &places {
                for (secret, needle) in &needles {
                    if hay.contains(needle) {
                        leaks.push(format!(
                            "{} {url}: {place} holds {}",
                            entry["label"],
                            describe(secret)
                        ));
                    }
                }
            }
            // The sign-in body holds the key typed, and only that: no
            // token.
            if sign_in {
                let body = entry["postData"].as_str().unwrap_or_default();
                for (secret, needle) in &needles {
                    if *secret != ADMIN_KEY && *secret != READ_KEY && body.contains(needle) {
                        leaks.push(format!("sign-in body holds {}", describe(secret)));
                    }
                }
            }
        }
        leaks.dedup();
        assert!(
            leaks.is_empty(),
            "secrets reached the browser ({} of {} recorded entries scanned):\n{}",
            leaks.len(),
            self.traffic.len(),
            leaks.join("\n")
        );
        let bodies = self
            .traffic
            .iter()
            .filter(|e| e["body"].is_string())
            .count();
        assert!(
            bodies > 0,
            "no response body was recorded: the scan saw nothing"
        );
    }

    /// Panics unless every response of the console (`origin`, paths under
    /// /ui) carried the contract's security headers.
    pub(crate) fn assert_security_headers(&self, origin: &str) {
        const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
        let want = [
            ("content-security-policy", CSP),
            ("x-frame-options", "DENY"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "same-origin"),
            ("cache-control", "no-store"),
        ];
        let mut wrong = Vec::new();
        let mut seen = 0;
        for entry in &self.traffic {
            let url = entry["url"].as_str().unwrap_or_default();
            let Some(path) = url.strip_prefix(origin) else {
                continue;
            };
            if !(path == "/ui" || path.starts_with("/ui/") || path.starts_with("/ui?")) {
                continue;
            }
            // Null when the context closed before the driver could read
            // them; empty for a no-cors fetch's opaque answer, whose
            // headers the driver is not shown (a real answer always has
            // some: Date, Content-Length).
            let Some(headers) = entry["responseHeaders"]
                .as_object()
                .filter(|h| !h.is_empty())
            else {
                continue;
            };
            seen += 1;
            for (name, value) in want {
                let got = headers.get(name).and_then(Value::as_str);
                if got != Some(value) {
                    wrong.push(format!("{} {url}: {name}: {got:?}", entry["status"]));
                }
            }
        }
        wrong.dedup();
        assert!(
            wrong.is_empty(),
            "console responses without the contract's headers:\n{}",
            wrong.join("\n")
        );
        assert!(seen > 0, "no console response was recorded");
    }
}

/// A secret named without showing it: its length and a hash-like tag.
fn describe(secret: &str) -> String {
    match secret {
        ADMIN_KEY => "the admin API key".into(),
        READ_KEY => "the read-only API key".into(),
        s => format!(
            "a {}-character secret ending …{}",
            s.len(),
            &s[s.len().saturating_sub(4)..]
        ),
    }
}

/// The last `n` bytes of `s` (at a character boundary).
fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Makes `id` dead: its family revoked upstream, then a refresh refused.
fn kill(env: &Env, id: &str) {
    env.fake.revoke_family(id);
    let out = env.run(&["refresh", id]);
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
}

/// An admin signs in (after a wrong key is refused with 401), sees every
/// credential with its badge (the dead one first, with its fix), watches a
/// credential rejected through the API turn `rejected` and then `valid`
/// again without a reload, cancels a forced refresh at the confirmation
/// (nothing sent upstream) and then confirms one (exactly one refresh
/// upstream, a new event on the page), and signs out (a second tab left
/// open goes to the sign-in page by itself; the old cookie opens nothing).
/// Nothing secret in any of the traffic; the security headers on every
/// console response.
#[test]
fn an_admin_watches_a_rejection_live_and_forces_a_refresh() {
    let Some(chromium) = browser() else { return };
    let env = Env::new();
    let live: Grant = env.login("live", 3600);
    env.login("other", 3600);
    env.login("soon", 120);
    env.login("gone", 3600);
    kill(&env, "gone");
    let console = Console::start(env, &[]);
    let expect = json!({
        "live": "live",
        "states": {"live": "valid", "other": "valid", "soon": "expiring", "gone": "dead"},
    });
    let out = console.run(&chromium, "admin.mjs", expect, |what, _| match what {
        // The token is reported refused; the refresh that follows at once
        // in the same call fails (503 upstream), so `live` stays rejected
        // where the page can see it.
        "reject" => {
            console
                .env
                .fake
                .push_fault(Fault::status(503, r#"{"error":"temporarily_unavailable"}"#));
            let body = json!({ "access_token": live.access_token }).to_string();
            let a = console.api.post("/v1/credentials/live/reject", &body);
            let state = console.api.get("/v1/credentials/live").json()["state"].clone();
            match (a.status, state.as_str()) {
                (503, Some("rejected")) => Ok(json!({})),
                (s, st) => Err(format!("reject answered {s}, state {st:?}: {}", a.body)),
            }
        }
        "refresh" => {
            let a = console.api.post("/v1/credentials/live/refresh?force=1", "");
            match a.status {
                200 => Ok(json!({})),
                s => Err(format!("refresh answered {s}: {}", a.body)),
            }
        }
        _ => Err(format!("unknown ask {what}")),
    });
    out.assert_passed(&[
        "a_wrong_key_is_refused",
        "signs_in_with_an_httponly_strict_session_cookie",
        "the_overview_shows_each_credential_with_its_badge",
        "a_rejected_token_shows_without_a_reload_then_valid_again",
        "a_forced_refresh_cancelled_at_the_confirmation_does_nothing",
        "a_forced_refresh_from_the_credential_page",
        "signing_out_ends_the_session",
    ]);
    // Upstream: nothing for the cancelled refresh, exactly one for the
    // confirmed one, and that one rotated the token.
    assert_eq!(
        out.token_requests_between("cancel_before", "cancel_after"),
        0
    );
    assert_eq!(out.token_requests_between("force_before", "force_after"), 1);
    let log = console.env.fake.token_requests();
    let forced = &log[out.marks["force_before"].0];
    assert!(forced.succeeded_cleanly(), "{forced:?}");
    console.env.fake.assert_no_reuse_after_success();
    // The newest event through the API is that refresh.
    let events = console
        .api
        .get("/v1/credentials/live/events?limit=1")
        .expect(200);
    let newest = events.json()["events"][0].to_string();
    assert!(newest.contains("refresh"), "{newest}");
    let facts = out.facts("a_forced_refresh_from_the_credential_page");
    assert!(
        facts["flash"].as_str().is_some_and(|f| !f.is_empty()),
        "{facts}"
    );
    out.assert_no_secret(&console.secrets(&[]));
    out.assert_security_headers(&console.url());
}

/// Runs the CLI on `console`'s database; panics unless it exits 0; its stdout.
fn cli(console: &Console, args: &[&str]) -> String {
    let out = console.env.run(args);
    assert_eq!(code(&out), 0, "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Each credential's effective state as the API reports it.
fn states(console: &Console) -> BTreeMap<String, String> {
    let list = console.api.get("/v1/credentials").expect(200).json();
    list["credentials"]
        .as_array()
        .expect("credentials")
        .iter()
        .map(|c| {
            let id = c["id"].as_str().unwrap().to_owned();
            (id, c["state"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// What the API shows of `id` that a refused action would have changed:
/// its summary (state, version, cooldown), its events and its handles.
fn footprint(console: &Console, id: &str) -> Value {
    let summary = console
        .api
        .get(&format!("/v1/credentials/{id}"))
        .expect(200)
        .json();
    let events = console
        .api
        .get(&format!("/v1/credentials/{id}/events?limit=1000"))
        .expect(200)
        .json();
    let handles: Value = serde_json::from_str(&cli(console, &["handle", "list", id, "--json"]))
        .expect("handle list --json");
    json!({"summary": summary, "events": events, "handles": handles})
}

/// A read-only key sees every credential and every page (events, handles)
/// but no action form anywhere, and each action it forges from the page —
/// refresh, reject, cooldown, clear-cooldown, revoke-handle, delete, with
/// the page's own CSRF token — is refused 403 with nothing sent upstream
/// and nothing changed.
#[test]
fn a_read_only_key_sees_everything_and_can_change_nothing() {
    let Some(chromium) = browser() else { return };
    let env = Env::new();
    env.login("seat", 3600);
    env.login("spare", 120);
    env.login("lost", 3600);
    kill(&env, "lost");
    let console = Console::start(env, &[]);
    let handle = cli(&console, &["handle", "create", "seat", "--label", "laptop"]);
    let handle = handle.trim().to_owned();
    let listed: Value =
        serde_json::from_str(&cli(&console, &["handle", "list", "seat", "--json"])).unwrap();
    let handle_id = listed["handles"][0]["id"].as_str().unwrap().to_owned();
    let before = footprint(&console, "seat");
    let expect = json!({"states": states(&console), "target": "seat", "handle": handle_id});
    let out = console.run(&chromium, "readonly.mjs", expect, |what, _| {
        Err(format!("unknown ask {what}"))
    });
    out.assert_passed(&[
        "signs_in_with_the_read_only_key",
        "sees_every_credential",
        "no_action_form_on_any_page",
        "every_forged_action_is_refused_403",
    ]);
    assert_eq!(
        out.token_requests_between("forged_before", "forged_after"),
        0
    );
    assert_eq!(
        footprint(&console, "seat"),
        before,
        "a refused action changed something"
    );
    out.assert_no_secret(&console.secrets(&[handle]));
    out.assert_security_headers(&console.url());
}

/// An admin's session cannot be ridden: a POST without a CSRF token, with
/// a wrong one or another session's is 403; an auto-submitting form (and a
/// no-cors fetch) on a page of another loopback origin — same site, so the
/// session cookie goes along, with the right CSRF token even — is 403 by
/// the Origin check; a foreign page cannot frame the console (with the
/// session cookie, it answers 200, and the browser refuses to render it);
/// without a session a form goes to the sign-in page. Nothing reached
/// upstream, nothing changed.
#[test]
fn forged_and_foreign_origin_posts_are_refused() {
    let Some(chromium) = browser() else { return };
    let env = Env::new();
    env.login("seat", 3600);
    let console = Console::start(env, &[]);
    let before = footprint(&console, "seat");
    let out = console.run(
        &chromium,
        "forgery.mjs",
        json!({"target": "seat"}),
        |what, _| Err(format!("unknown ask {what}")),
    );
    out.assert_passed(&[
        "signs_in",
        "a_post_without_a_csrf_token_is_refused_403",
        "a_post_with_a_wrong_csrf_token_is_refused_403",
        "another_sessions_csrf_token_is_refused_403",
        "a_post_from_a_foreign_origin_is_refused",
        "the_console_cannot_be_framed_by_another_origin",
        "a_form_post_without_a_session_goes_to_sign_in",
        "nothing_was_changed",
    ]);
    assert_eq!(
        out.token_requests_between("forgery_before", "forgery_after"),
        0
    );
    assert_eq!(
        footprint(&console, "seat"),
        before,
        "a refused POST changed something"
    );
    out.assert_no_secret(&console.secrets(&[]));
    out.assert_security_headers(&console.url());
}

/// A script's POST without a session is 401 (the contract: 303 to the
/// sign-in page is for forms), and changes nothing.
#[test]
fn a_fetch_post_without_a_session_is_401() {
    let Some(chromium) = browser() else { return };
    let env = Env::new();
    env.login("seat", 3600);
    let console = Console::start(env, &[]);
    let before = footprint(&console, "seat");
    let out = console.run(
        &chromium,
        "nosession.mjs",
        json!({"target": "seat"}),
        |what, _| Err(format!("unknown ask {what}")),
    );
    out.assert_passed(&["a_fetch_post_without_a_session_is_401"]);
    assert_eq!(footprint(&console, "seat"), before);
    assert!(
        console.env.fake.token_requests().is_empty(),
        "a refresh upstream"
    );
    out.assert_security_headers(&console.url());
}

/// Debian's libfaketime, to date a few quota snapshots hours back (a
/// history worth drawing); without it they are all from now.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Fetches a quota snapshot of `id` with the fake's Codex usage at
/// `used` % (5 h window) and `weekly` %, `ago` hours back when libfaketime
/// is there.
fn snapshot_quota(console: &Console, id: &str, used: u32, weekly: u32, ago: u32) {
    let mut body: Value =
        serde_json::from_str(crate::common::fake_oauth::CODEX_USAGE_BODY).unwrap();
    body["rate_limit"]["primary_window"]["used_percent"] = json!(used);
    body["rate_limit"]["secondary_window"]["used_percent"] = json!(weekly);
    console.env.fake.set_codex_usage(200, body);
    let mut cmd = console.env.cmd();
    if ago > 0 && Path::new(LIBFAKETIME).exists() {
        cmd.env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME", format!("-{ago}h"))
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("FAKETIME_DONT_RESET", "1");
    }
    let out = cmd.args(["quota", id, "--refresh"]).output().unwrap();
    assert_eq!(code(&out), 0, "quota {id}: {}", text(&out.stderr));
}

/// The overview with every kind of row — dead, failing, expiring, cooling
/// down, pooled, two providers, quota snapshots — shows each badge, puts
/// dead then failing first with the command that fixes each, fills every
/// cell, draws a gauge per quota window, filters in place and by query
/// parameter; a credential's page shows its events, handles (with revoke
/// forms, never a handle), quota history and notifications; no page logs
/// a script error or CSP violation. Saves the README's screenshots under
/// `TOKENWARDEN_SCREENSHOTS=DIR`.
#[test]
fn every_state_fix_gauge_and_filter_is_shown() {
    let Some(chromium) = browser() else { return };
    let env = Env::new();
    for id in ["team-a", "team-b", "anna"] {
        env.login(id, 3600);
    }
    env.login("bob", 150);
    env.login("flaky", 3600);
    env.login("old-seat", 3600);
    kill(&env, "old-seat");
    // A Claude login.
    let claude = env.fake.new_family("ops-claude");
    let record = claude.import_json("ops-claude", "claude", &env.fake.claude_token_url());
    let file = env.dir.path().join("ops-claude.json");
    std::fs::write(&file, record.to_string()).unwrap();
    let out = env.run(&["import", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let console = Console::start(env, &[]);
    let env = &console.env;
    // flaky: a refresh refused for now (503): one failure, backing off.
    env.fake
        .push_fault(crate::common::fake_oauth::Fault::retry_after(
            503,
            r#"{"error":"temporarily_unavailable"}"#,
            "600",
        ));
    let out = env.run(&["refresh", "flaky", "--force"]);
    assert_ne!(code(&out), 0, "the refused refresh succeeded");
    for id in ["team-a", "team-b"] {
        cli(&console, &["pool", "add", id, "team"]);
    }
    cli(&console, &["pool", "add", "anna", "night"]);
    cli(
        &console,
        &[
            "cooldown",
            "team-b",
            "--seconds",
            "5400",
            "--reason",
            "usage_limit_reached",
        ],
    );
    // team-a: a quota history, events, handles (one revoked).
    for (used, weekly, ago) in [
        (12, 30, 9),
        (35, 34, 7),
        (61, 39, 5),
        (18, 41, 3),
        (44, 46, 1),
        (57, 48, 0),
    ] {
        snapshot_quota(&console, "team-a", used, weekly, ago);
    }
    snapshot_quota(&console, "anna", 91, 72, 0);
    // Claude's windows reset 3 h and 4 days from now.
    let at = |secs: i64| tokenwarden::rfc3339::format((now() + secs) * 1000);
    env.fake.set_claude_usage(
        200,
        json!({
            "five_hour": {"utilization": 23.0, "resets_at": at(3 * 3600)},
            "seven_day": {"utilization": 64.0, "resets_at": at(4 * 86400)},
        }),
    );
    cli(&console, &["quota", "ops-claude", "--refresh"]);
    cli(&console, &["refresh", "team-a", "--force"]);
    let token = console
        .api
        .get("/v1/credentials/team-a/token")
        .expect(200)
        .json();
    let rejected = json!({"access_token": token["access_token"]}).to_string();
    console
        .api
        .post("/v1/credentials/team-a/reject", &rejected)
        .expect(200);
    console.api.get("/v1/credentials/team-a/token").expect(200);
    let mut handles = Vec::new();
    for label in ["laptop-anna", "ci-runner", "old-desktop"] {
        handles.push(
            cli(&console, &["handle", "create", "team-a", "--label", label])
                .trim()
                .to_owned(),
        );
    }
    let listed: Value =
        serde_json::from_str(&cli(&console, &["handle", "list", "team-a", "--json"])).unwrap();
    let old = listed["handles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["label"] == "old-desktop")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cli(&console, &["handle", "revoke", &old]);
    let events = console
        .api
        .get("/v1/credentials/team-a/events?limit=1000")
        .expect(200)
        .json();
    let states = states(&console);
    assert_eq!(states["old-seat"], "dead");
    assert_eq!(states["bob"], "expiring");
    let expect = json!({
        "states": states,
        "dead": ["old-seat"],
        "failing": ["flaky"],
        "cooling": ["team-b"],
        "pools": {"team": ["team-a", "team-b"], "night": ["anna"]},
        "providers": {"claude": ["ops-claude"], "codex": ["team-a", "team-b", "anna", "bob", "flaky", "old-seat"]},
        "quota": ["team-a", "anna", "ops-claude"],
        "detail": "team-a",
        "events": events["events"].as_array().unwrap().len(),
        "handles": 3,
    });
    let out = console.run(&chromium, "states.mjs", expect, |what, _| {
        Err(format!("unknown ask {what}"))
    });
    out.assert_passed(&[
        "signs_in",
        "every_state_has_its_badge",
        "dead_then_failing_first_each_with_its_fix",
        "the_cells_show_cooldowns_pools_countdowns_and_failures",
        "quota_gauges_per_window",
        "filters_swap_the_rows_in_place",
        "a_credential_page_shows_events_handles_quota_history_and_notifications",
        "the_static_files_and_every_page_load_clean",
    ]);
    out.assert_no_secret(&console.secrets(&handles));
    out.assert_security_headers(&console.url());
    if let Some(dir) = std::env::var_os("TOKENWARDEN_SCREENSHOTS") {
        for name in ["ui-overview.png", "ui-credential.png"] {
            let size = std::fs::metadata(Path::new(&dir).join(name)).map(|m| m.len());
            let _ = writeln!(std::io::stderr(), "screenshot {name}: {size:?} bytes");
            assert!(size.is_ok(), "{name} was not saved");
        }
    }
}

/// One exchange at the Codex facade with `handle` (as a Codex CLI would):
/// its status.
fn use_handle(console: &Console, handle: &str) -> u16 {
    let body = json!({
        "grant_type": "refresh_token",
        "refresh_token": handle,
        "client_id": crate::common::fake_oauth::CODEX_CLIENT_ID,
    });
    console
        .api
        .with_key(None)
        .post("/oauth/token", &body.to_string())
        .status
}

/// Every action of a credential's page, clicked and confirmed: a cooldown
/// set (the API shows it, about as long as asked) and cleared; the current
/// token rejected (one refresh upstream, a new token served); a forced
/// refresh refused upstream (an error flash, the credential still there);
/// a handle revoked (the facade refuses it from then on); a credential
/// deleted (gone from the overview and the API; its page a 404).
#[test]
fn every_action_of_the_credential_page_takes_effect() {
    let Some(chromium) = browser() else { return };
    let env = Env::new();
    let seat = env.login("seat", 3600);
    env.login("doomed", 3600);
    let console = Console::start(env, &[]);
    let handle = cli(&console, &["handle", "create", "seat", "--label", "laptop"]);
    let handle = handle.trim().to_owned();
    let listed: Value =
        serde_json::from_str(&cli(&console, &["handle", "list", "seat", "--json"])).unwrap();
    let handle_id = listed["handles"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        use_handle(&console, &handle),
        200,
        "the handle works before"
    );
    let expect = json!({"target": "seat", "doomed": "doomed", "handle": handle_id});
    let started = now();
    let out = console.run(&chromium, "actions.mjs", expect, |what, msg| match what {
        "cooldown" => {
            let id = msg["id"].as_str().unwrap_or_default();
            let s = console
                .api
                .get(&format!("/v1/credentials/{id}"))
                .expect(200)
                .json();
            Ok(json!({"cooldown": s["cooldown"]}))
        }
        "fail_next_refresh" => {
            console
                .env
                .fake
                .push_fault(Fault::status(503, r#"{"error":"temporarily_unavailable"}"#));
            Ok(json!({}))
        }
        "use_handle" => Ok(json!({"status": use_handle(&console, &handle)})),
        _ => Err(format!("unknown ask {what}")),
    });
    out.assert_passed(&[
        "signs_in",
        "a_cooldown_set_then_cleared",
        "the_current_token_rejected",
        "a_refresh_refused_upstream_shows_its_error",
        "a_handle_revoked",
        "a_credential_deleted",
        "an_unknown_credential_is_a_404_page",
    ]);
    let cool = &out.facts("a_cooldown_set_then_cleared");
    let until = cool["during"]["until"]
        .as_i64()
        .expect("a cooldown while set");
    assert!(
        (started + 600..=now() + 601).contains(&until),
        "cooldown until {until}, set for 600 s at {started}"
    );
    assert!(
        cool["after"].is_null(),
        "the cooldown was not cleared: {cool}"
    );
    // The reject: one refresh upstream, and a new token served since.
    assert_eq!(
        out.token_requests_between("reject_before", "reject_after"),
        1
    );
    let now = console
        .api
        .get("/v1/credentials/seat/token")
        .expect(200)
        .json();
    assert_ne!(now["access_token"], json!(seat.access_token));
    // The failed refresh reached upstream once, and left the login alive.
    assert_eq!(
        out.token_requests_between("failed_before", "failed_after"),
        1
    );
    assert_ne!(states(&console)["seat"], "dead");
    assert_eq!(out.facts("a_handle_revoked")["facadeStatus"], json!(401));
    console.api.get("/v1/credentials/doomed").expect(404);
    console.env.fake.assert_no_reuse_after_success();
    out.assert_no_secret(&console.secrets(&[handle]));
    out.assert_security_headers(&console.url());
}

/// A dead `oauth2` credential signed in again from the console in the
/// browser, against a real OpenID provider (oidc-provider, tests/oidc):
/// the dead row's button (confirmed), the link to the provider, its login
/// and consent pages, the way back to `/oauth/callback`, and the overview
/// left open turning the row valid without a reload. No token of the old
/// or the new login reaches the browser.
#[test]
fn a_dead_oauth2_login_is_signed_in_again_from_the_console() {
    let Some(chromium) = browser() else { return };
    let idp = crate::login::Idp::start();
    let env = Env::new();
    let record = json!({
        "provider": "oauth2", "refresh_token": "rt-ops-old-0f3b9c2d7e41a856",
        "token_url": format!("{}/token", idp.issuer), "client_id": "tw-cli",
    });
    let file = env.dir.path().join("ops.json");
    std::fs::write(&file, record.to_string()).unwrap();
    let out = env.run(&["import", "--id", "ops", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    // The provider refuses the unknown refresh token for good: dead.
    env.run(&["refresh", "ops", "--force"]);
    let console = Console::start(env, &[]);
    assert_eq!(states(&console)["ops"], "dead");
    let expect = json!({"dead": "ops", "issuer": idp.issuer});
    let out = console.run(&chromium, "relogin.mjs", expect, |what, _| {
        Err(format!("unknown ask {what}"))
    });
    out.assert_passed(&[
        "signs_in",
        "the_dead_row_offers_to_sign_in_again",
        "signs_in_at_the_provider_and_comes_back",
    ]);
    assert_eq!(states(&console)["ops"], "valid");
    // The new login's tokens, read from the database.
    let now = console.env.warden().get("ops").expect("ops");
    let mut secrets = vec![
        "rt-ops-old-0f3b9c2d7e41a856".to_owned(),
        now.refresh_token.expose().to_owned(),
    ];
    secrets.extend(now.access_token.iter().map(|t| t.expose().to_owned()));
    secrets.extend(now.id_token.iter().map(|t| t.expose().to_owned()));
    assert!(secrets.len() >= 3, "no access token after signing in again");
    out.assert_no_secret(&console.secrets(&secrets));
    out.assert_security_headers(&console.url());
}

/// An [`Outcome`] holding only `traffic`, for the scanner's own tests.
fn recorded(traffic: Vec<Value>) -> Outcome {
    Outcome {
        scenarios: Vec::new(),
        marks: BTreeMap::new(),
        traffic,
        stderr: String::new(),
        log: String::new(),
        elapsed: Duration::ZERO,
    }
}

/// The secret scan itself finds a JWT shown by its signature's start, an
/// opaque token's end in a request header, and an API key anywhere but in
/// the sign-in form's body (no browser needed).
#[test]
fn the_secret_scan_finds_shortened_tokens_and_keys_out_of_place() {
    let jwt =
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.Q2hlY2tzIHRoZSBzaWduYXR1cmUgc2VnbWVudCBpcyBmb3VuZA";
    let opaque = "rt-0123456789abcdefghijklmnopqrstuvwxyz";
    let page =
        |body: &str| json!({"label": "t", "url": "http://h/ui", "method": "GET", "body": body});
    let sign_in = json!({"label": "t", "url": "http://h/ui/login", "method": "POST",
        "postData": format!("csrf=x&key={ADMIN_KEY}"), "body": "<p>ok</p>"});
    let secrets = [jwt.to_owned(), opaque.to_owned(), ADMIN_KEY.to_owned()];
    // Clean: the key only where it is typed.
    recorded(vec![page("<p>nothing</p>"), sign_in.clone()]).assert_no_secret(&secrets);
    let leaks = [
        page("<td>Q2hlY2tzIHRoZSBzaWdu…</td>"),
        json!({"label": "t", "url": "http://h/ui", "method": "GET", "body": "",
            "requestHeaders": {"x-debug": "…klmnopqrstuvwxyz"}}),
        page(&format!("<code>{ADMIN_KEY}</code>")),
        json!({"label": "t", "url": "http://h/ui/overview", "method": "POST",
            "postData": format!("key={ADMIN_KEY}"), "body": ""}),
    ];
    for leak in leaks {
        let shown = leak.to_string();
        let caught = std::panic::catch_unwind(|| {
            recorded(vec![leak, sign_in.clone()]).assert_no_secret(&secrets)
        });
        assert!(caught.is_err(), "the scan missed a secret in {shown}");
    }
}

/// The console over HTTPS (a certificate of the tests' own CA, which the
/// browser is told to accept): Chromium keeps the `Secure` session cookie
/// and sends it back, the page's own `https://` origin passes the Origin
/// check (sign-in and a forced refresh: exactly one upstream), the rows
/// still refresh themselves, and signing out ends the session.
#[test]
fn the_console_works_over_https() {
    let Some(chromium) = browser() else { return };
    let env = Env::new();
    env.login("seat", 3600);
    env.login("spare", 120);
    let console = Console::start_with(env, &[], true);
    let expect = json!({"target": "seat", "rows": 2});
    let out = console.run(&chromium, "tls.mjs", expect, |what, _| {
        Err(format!("unknown ask {what}"))
    });
    out.assert_passed(&[
        "signs_in_with_a_secure_session_cookie",
        "the_rows_refresh_themselves",
        "a_forced_refresh_over_https",
        "signs_out",
    ]);
    assert_eq!(out.token_requests_between("force_before", "force_after"), 1);
    console.env.fake.assert_no_reuse_after_success();
    out.assert_no_secret(&console.secrets(&[]));
    out.assert_security_headers(&console.url());
}
