//! Attacks on issue 16, `tokenwarden login` (738ede3..3d89f9e): the
//! sign-in flows, `Warden::store_login`, the API sign-in routes, the
//! Claude Code and Gemini CLI importers and the `tokenwarden login …`
//! command that dead credentials' errors name. The promise under attack:
//! a rotating refresh token is used exactly once and never lost, a
//! rejected token is never served again; and the issue's own guarantees
//! (one account never under two ids, a dead credential revived by a
//! login, a device flow that ends cleanly, a relogin command that works
//! as printed).
//!
//! HELD tests passed when written and stay as guards; the HOLE tests
//! failed on the commit that added them and run since the source was
//! mended (branch wt-fix16): every test here now guards a promise.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokenwarden::credential::{Claims, NewCredential, ProviderConfig, ProviderKind};
use tokenwarden::provider::form_decode;
use tokenwarden::{Config, Secret, Warden};

use crate::common::fake_oauth::Fault;
use crate::common::http::Client;
use crate::common::tw::{code, text, Env, BIN};

/// One request a [`Scripted`] server was sent.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    body: String,
}

/// What a [`Scripted`] server answers: status and JSON body.
type Script = dyn Fn(&str, &[(String, String)]) -> (u16, String) + Send + Sync;

/// A loopback token / device endpoint whose answers a closure decides
/// (from the path and the form fields); remembers every request.
struct Scripted {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    fn start(
        script: impl Fn(&str, &[(String, String)]) -> (u16, String) + Send + Sync + 'static,
    ) -> Scripted {
        Scripted::start_with(false, script)
    }

    /// [`Scripted::start`], answering each request on its own thread when
    /// `concurrent` (a script may then hold requests until others arrive).
    fn start_with(
        concurrent: bool,
        script: impl Fn(&str, &[(String, String)]) -> (u16, String) + Send + Sync + 'static,
    ) -> Scripted {
        let script: Arc<Script> = Arc::new(script);
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let base = format!(
            "http://127.0.0.1:{}",
            server.server_addr().to_ip().unwrap().port()
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        thread::spawn(move || {
            for mut req in server.incoming_requests() {
                let (script, log) = (script.clone(), log.clone());
                let answer = move || {
                    let mut body = String::new();
                    let _ = req.as_reader().read_to_string(&mut body);
                    let path = req.url().split('?').next().unwrap_or("").to_owned();
                    log.lock().unwrap().push(Seen {
                        path: path.clone(),
                        body: body.clone(),
                    });
                    let fields = form_decode(&body);
                    let (status, answer) = script(&path, &fields);
                    let reply = tiny_http::Response::from_string(answer)
                        .with_status_code(status)
                        .with_header(
                            tiny_http::Header::from_bytes("Content-Type", "application/json")
                                .unwrap(),
                        );
                    let _ = req.respond(reply);
                };
                match concurrent {
                    true => drop(thread::spawn(answer)),
                    false => answer(),
                }
            }
        });
        Scripted { base, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A form field's value.
fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `tokenwarden login …` (or any command) running, stderr collected.
struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
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

    /// The first stderr line (trimmed) that starts with `prefix`.
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

    /// Waits up to `limit` for the exit: `Some((code, stdout, stderr))`, or
    /// `None` (the process is killed) when it is still running.
    fn finish_within(mut self, limit: Duration) -> Option<(i32, String, String)> {
        let until = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        let _ = self.child.stdout.take().unwrap().read_to_string(&mut out);
        thread::sleep(Duration::from_millis(50));
        let err = self.stderr.lock().unwrap().clone();
        Some((status.code().unwrap_or(-1), out, err))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The binary on `db`, short timeouts, nothing inherited but PATH.
fn tw_cmd(db: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TOKENWARDEN_DB", db)
        .env("TOKENWARDEN_REQUEST_TIMEOUT", "2")
        .env("TOKENWARDEN_ATTEMPTS", "1")
        .env("TOKENWARDEN_LEASE_TTL", "3.5")
        .stdin(Stdio::null());
    c
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let o = cmd.output().unwrap();
    (code(&o), text(&o.stdout), text(&o.stderr))
}

/// Imports `record` (JSON) from stdin with `args` added.
fn import(db: &Path, record: &Value, args: &[&str]) -> (i32, String, String) {
    use std::io::Write;
    let mut child = tw_cmd(db)
        .args(["import", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(record.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    (code(&o), text(&o.stdout), text(&o.stderr))
}

/// The command between the first pair of backticks after `tokenwarden login`.
fn named_login_command(err: &str) -> String {
    let at = err
        .find("`tokenwarden login")
        .unwrap_or_else(|| panic!("no login command named: {err}"));
    let rest = &err[at + 1..];
    rest[..rest.find('`').unwrap()].to_owned()
}

/// Runs a command line printed by tokenwarden as a user pastes it into a
/// shell (`tokenwarden` found on PATH), with `extra` appended.
fn as_printed(db: &Path, command: &str, extra: &str) -> Running {
    let dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = tw_cmd(db);
    c.env("PATH", path);
    // `tokenwarden` on PATH is the binary under test.
    let line = command.replacen("tokenwarden", BIN, 1);
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(format!("{line} {extra}"));
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    Running::spawn(sh)
}

/// The `state` and `redirect_uri` of an authorize URL.
fn state_and_redirect(url: &str) -> (String, String) {
    let q = form_decode(url.split_once('?').unwrap().1);
    (
        field(&q, "state").unwrap().to_owned(),
        field(&q, "redirect_uri").unwrap().to_owned(),
    )
}

/// A GET over loopback; the status and body.
fn get(url: &str) -> (u16, String) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent();
    match agent.get(url).call() {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

fn temp_db() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tw.db");
    (dir, db)
}

// ---------------------------------------------------------------------------
// The relogin command the errors name.
// ---------------------------------------------------------------------------

/// A dead `google` credential (a Gemini CLI login imported) names
/// `tokenwarden login google --id ID` as the fix; run as printed it must
/// at least start a sign-in, not be refused as a usage error.
#[test]
fn a_dead_google_credentials_relogin_command_runs_as_printed() {
    let (_d, db) = temp_db();
    let google = Scripted::start(|_, _| (400, r#"{"error":"invalid_grant"}"#.into()));
    let file = json!({
        "access_token": "ya29.gemini-access", "refresh_token": "1//gemini-refresh",
        "scope": "openid", "token_type": "Bearer", "expiry_date": 1_000,
    });
    let (c, _, err) = import(&db, &file, &["--id", "gem"]);
    assert_eq!(c, 0, "{err}");
    let (c, _, err) = run(tw_cmd(&db)
        .env("TOKENWARDEN_GOOGLE_TOKEN_URL", google.url("/token"))
        .args(["refresh", "gem"]));
    assert_eq!(c, 4, "dead: {err}");
    let command = named_login_command(&err);
    let got = as_printed(&db, &command, "--no-browser --timeout 1")
        .finish_within(Duration::from_secs(30))
        .expect("ends");
    assert_ne!(
        got.0, 2,
        "`{command}` as printed is a usage error: {}",
        got.2
    );
}

/// A credential id may begin with `-` (DESIGN.md's id alphabet); the
/// dead credential's `tokenwarden login codex --id -ID` must run as
/// printed (clap takes `-ID` for a flag unless the id is written
/// `--id=-ID`).
#[test]
fn a_relogin_command_for_an_id_starting_with_a_dash_runs_as_printed() {
    let (_d, db) = temp_db();
    let codex = Scripted::start(|_, _| (400, r#"{"error":"invalid_grant"}"#.into()));
    let record = json!({
        "provider": "codex", "refresh_token": "rt-dash",
        "token_url": codex.url("/oauth/token"),
    });
    let (c, _, err) = import(&db, &record, &["--id=-dash"]);
    assert_eq!(c, 0, "{err}");
    let (c, _, err) = run(tw_cmd(&db).args(["refresh", "--", "-dash"]));
    assert_eq!(c, 4, "dead: {err}");
    let command = named_login_command(&err);
    assert!(command.contains("-dash"), "{command}");
    let got = as_printed(&db, &command, "--no-browser --timeout 1")
        .finish_within(Duration::from_secs(30))
        .expect("ends");
    assert!(
        got.0 != 2 && !got.2.contains("unexpected argument"),
        "`{command}` as printed: exit {} {}",
        got.0,
        got.2
    );
}

// ---------------------------------------------------------------------------
// Import detection.
// ---------------------------------------------------------------------------

/// A tokenwarden record that says `"provider":"oauth2"` and names its own
/// token URL, plus the `token_type` every token endpoint answers with
/// (refused as an unknown field before this change), is now taken for a
/// Gemini CLI file: stored as `google`, and its refresh token is sent to
/// Google's token endpoint with Gemini's client — a secret sent to a
/// server it was never issued by.
#[test]
fn a_record_with_token_type_is_not_taken_for_a_gemini_file() {
    let (_d, db) = temp_db();
    let own =
        Scripted::start(|_, _| (200, r#"{"access_token":"at-own","expires_in":3600}"#.into()));
    let google = Scripted::start(|_, _| {
        (
            200,
            r#"{"access_token":"at-google","expires_in":3600}"#.into(),
        )
    });
    let record = json!({
        "provider": "oauth2", "token_url": own.url("/token"), "client_id": "mine",
        "refresh_token": "rt-for-my-idp-only", "token_type": "Bearer",
    });
    let (c, _, err) = import(&db, &record, &["--id", "mine"]);
    if c != 0 {
        // Refusing the record is a fine answer too.
        assert!(!err.contains("rt-for-my-idp-only"), "{err}");
        return;
    }
    let _ = run(tw_cmd(&db)
        .env("TOKENWARDEN_GOOGLE_TOKEN_URL", google.url("/token"))
        .args(["refresh", "mine"]));
    let leaked: Vec<_> = google
        .seen()
        .into_iter()
        .filter(|s| s.path == "/token" && s.body.contains("rt-for-my-idp-only"))
        .collect();
    let (_, show, _) = run(tw_cmd(&db).args(["show", "mine", "--json"]));
    assert!(
        leaked.is_empty(),
        "the oauth2 refresh token went to the google endpoint: {leaked:?}; stored as {show}"
    );
}

// ---------------------------------------------------------------------------
// store_login: revival, duplicates, races.
// ---------------------------------------------------------------------------

/// A loopback OAuth server for `login oauth2 --authorize-url/--token-url`:
/// the refresh grant answers `refresh` (status, body); the code exchange
/// answers `exchange`.
fn oauth_server(refresh: (u16, &'static str), exchange: String) -> Scripted {
    Scripted::start(move |_, f| match field(f, "grant_type") {
        Some("refresh_token") => (refresh.0, refresh.1.to_owned()),
        Some("authorization_code") => (200, exchange.clone()),
        _ => (400, r#"{"error":"unsupported_grant_type"}"#.into()),
    })
}

/// `login oauth2` against a [`Scripted`] server, with `extra` flags.
fn login_oauth2(db: &Path, server: &Scripted, extra: &[&str]) -> Running {
    let mut c = tw_cmd(db);
    c.args([
        "login",
        "oauth2",
        "--authorize-url",
        &server.url("/authorize"),
        "--token-url",
        &server.url("/token"),
        "--client-id",
        "cli",
        "--no-browser",
        "--timeout",
        "30",
    ])
    .args(extra);
    Running::spawn(c)
}

/// Plays the browser: reads the printed authorize URL and sends the
/// redirect (`code`, the login's own `state`) to its loopback listener.
fn redirect_back(run: &Running, server: &Scripted, code: &str) -> (u16, String) {
    let url = run.printed(&server.url("/authorize?"));
    let (state, redirect) = state_and_redirect(&url);
    get(&format!("{redirect}?code={code}&state={state}"))
}

/// A credential killed by `invalid_client` (its client secret was
/// rotated) is signed in again with the new secret; a server that keeps
/// one refresh token per user and client (it answers the same one again)
/// gives back the stored refresh token. The login says `revived`: the
/// credential must then serve the login's fresh access token.
#[test]
fn a_login_that_brings_back_the_same_refresh_token_really_revives() {
    let (dir, db) = temp_db();
    let server = oauth_server(
        (401, r#"{"error":"invalid_client"}"#),
        json!({"access_token": "at-after-login", "refresh_token": "rt-kept",
               "token_type": "Bearer", "expires_in": 3600})
        .to_string(),
    );
    let record = json!({
        "provider": "oauth2", "token_url": server.url("/token"), "client_id": "cli",
        "client_secret": "old-secret", "refresh_token": "rt-kept",
    });
    let (c, _, err) = import(&db, &record, &["--id", "sam"]);
    assert_eq!(c, 0, "{err}");
    let (c, _, err) = run(tw_cmd(&db).args(["refresh", "sam"]));
    assert_eq!(c, 4, "dead: {err}");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "new-secret").unwrap();
    let running = login_oauth2(
        &db,
        &server,
        &[
            "--id",
            "sam",
            "--client-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    let (status, page) = redirect_back(&running, &server, "code-1");
    assert_eq!(status, 200, "{page}");
    let (c, out, err) = running
        .finish_within(Duration::from_secs(60))
        .expect("ends");
    assert_eq!(c, 0, "{err}");
    let said = out.trim().to_owned();
    let (c, token, err) = run(tw_cmd(&db).args(["token", "sam"]));
    assert_eq!(
        (c, token.trim()),
        (0, "at-after-login"),
        "the login printed {said:?}; token says: {err}"
    );
}

/// The claims of account `sub` on one oauth2 server.
fn login_cred(rt: &str, sub: &str) -> NewCredential {
    NewCredential {
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
    }
}

/// Two people (or two terminals) finish `tokenwarden login --id …` for
/// one account at the same instant under different ids: one account
/// must never end up under two ids (two processes on one database here,
/// each a library warden as the login command's store).
#[test]
fn concurrent_logins_never_store_one_account_under_two_ids() {
    let (_d, db) = temp_db();
    Warden::open(&db, Config::default()).unwrap();
    let n = 8;
    let start = Arc::new(Barrier::new(n));
    let workers: Vec<_> = (0..n)
        .map(|i| {
            let (db, start) = (db.clone(), start.clone());
            thread::spawn(move || {
                let w = Warden::open(&db, Config::default()).unwrap();
                start.wait();
                w.store_login(
                    login_cred(&format!("rt-{i}"), "ivy"),
                    Some(&format!("ivy-{i}")),
                )
                .map(|(row, _)| row.id)
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().map(|t| t.join().unwrap()).collect();
    let w = Warden::open(&db, Config::default()).unwrap();
    let ids: Vec<String> = w
        .list()
        .unwrap()
        .into_iter()
        .filter(|c| c.claims.user_id.as_deref() == Some("ivy"))
        .map(|c| c.id)
        .collect();
    assert!(
        ids.len() <= 1,
        "account ivy under {ids:?}; results {results:?}"
    );
}

/// Two logins for one new account finish at once, neither naming --id:
/// sequentially the second one updates the account's credential in
/// place; at the same time each must still end in one stored login —
/// not a lost sign-in with an error that names `--replace`, a flag
/// `login` does not have.
#[test]
fn concurrent_logins_for_one_new_account_both_land() {
    let (_d, db) = temp_db();
    Warden::open(&db, Config::default()).unwrap();
    let n = 6;
    let start = Arc::new(Barrier::new(n));
    let workers: Vec<_> = (0..n)
        .map(|i| {
            let (db, start) = (db.clone(), start.clone());
            thread::spawn(move || {
                let w = Warden::open(&db, Config::default()).unwrap();
                start.wait();
                w.store_login(login_cred(&format!("rt-j{i}"), "jo"), None)
                    .map(|(row, _)| row.id)
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().map(|t| t.join().unwrap()).collect();
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "lost sign-ins: {failed:?}");
    let w = Warden::open(&db, Config::default()).unwrap();
    assert_eq!(w.list().unwrap().len(), 1);
}

// ---------------------------------------------------------------------------
// The device flow against a lying server.
// ---------------------------------------------------------------------------

/// A device authorization server that names an interval of an hour (RFC
/// 8628 lets the server pick it): `--timeout 2` still ends the login in
/// seconds, exit 1 with "expired", not after an hour's sleep.
#[test]
fn a_device_server_with_an_hour_interval_does_not_outlast_the_timeout() {
    let (_d, db) = temp_db();
    let server = Scripted::start(|path, _| match path {
        "/device" => (
            200,
            json!({"device_code": "dc-1", "user_code": "ABCD-EFGH",
                   "verification_uri": "http://127.0.0.1:1/device",
                   "expires_in": 600, "interval": 3600})
            .to_string(),
        ),
        _ => (400, r#"{"error":"authorization_pending"}"#.into()),
    });
    let mut c = tw_cmd(&db);
    c.args([
        "login",
        "oauth2",
        "--authorize-url",
        &server.url("/authorize"),
        "--token-url",
        &server.url("/token"),
        "--device-url",
        &server.url("/device"),
        "--client-id",
        "cli",
        "--device",
        "--timeout",
        "2",
    ]);
    let got = Running::spawn(c).finish_within(Duration::from_secs(45));
    let (c, _, err) = got.expect("the login ends within 45 s of a 2 s --timeout");
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("expired"), "{err}");
}

/// A device poll answered with an access token but no refresh token is
/// refused (nothing to keep), and nothing is stored.
#[test]
fn a_device_answer_without_a_refresh_token_stores_nothing() {
    let (_d, db) = temp_db();
    let server = Scripted::start(|path, _| match path {
        "/device" => (
            200,
            json!({"device_code": "dc-1", "user_code": "ABCD-EFGH",
                   "verification_uri": "http://127.0.0.1:1/device",
                   "expires_in": 600, "interval": 1})
            .to_string(),
        ),
        _ => (
            200,
            json!({"access_token": "at-only", "token_type": "Bearer", "expires_in": 3600})
                .to_string(),
        ),
    });
    let mut c = tw_cmd(&db);
    c.args([
        "login",
        "oauth2",
        "--authorize-url",
        &server.url("/authorize"),
        "--token-url",
        &server.url("/token"),
        "--device-url",
        &server.url("/device"),
        "--client-id",
        "cli",
        "--device",
        "--timeout",
        "20",
    ]);
    let (c, out, err) = Running::spawn(c)
        .finish_within(Duration::from_secs(45))
        .expect("ends");
    assert_eq!(c, 1, "{out} {err}");
    assert!(err.contains("no refresh token"), "{err}");
    assert!(
        !err.contains("at-only") && !out.contains("at-only"),
        "{err}"
    );
    let (_, list, _) = run(tw_cmd(&db).args(["list", "--json"]));
    assert!(list.contains(r#""credentials":[]"#), "{list}");
}

// ---------------------------------------------------------------------------
// The API sign-in.
// ---------------------------------------------------------------------------

/// RFC 6749 §4.1.2: "the client MUST ignore unrecognized response
/// parameters". Google's redirect carries `authuser`, `prompt` (and `hd`);
/// the server's `/oauth/callback` must still finish the sign-in.
#[test]
fn the_api_callback_ignores_unrecognised_response_parameters() {
    let idp = crate::login::Idp::start();
    let env = Env::new();
    let served = crate::common::http::InProcess::start(&env, &[], 2);
    let api = Client::new(served.addr(), None);
    let record = json!({
        "provider": "oauth2", "refresh_token": "rt-api-old",
        "token_url": format!("{}/token", idp.issuer), "client_id": "tw-cli",
    });
    api.post("/v1/credentials?id=ops", &record.to_string())
        .expect(201);
    let a = api
        .post(
            "/v1/credentials/ops/login",
            &json!({"issuer": idp.issuer}).to_string(),
        )
        .expect(200);
    let url = a.json()["authorize_url"].as_str().unwrap().to_owned();
    let mut b = crate::login::Browser::default();
    let back = b.sign_in(&idp.issuer, &url, "gwen", false);
    let target = &back[back.find("/oauth/callback").expect("to the server")..];
    let page = api.get(&format!("{target}&authuser=0&prompt=consent"));
    assert_eq!(page.status, 200, "{}", page.body);
    let ops = env.warden().get("ops").unwrap();
    assert_eq!(ops.claims.user_id.as_deref(), Some("gwen"));
}

/// A replayed callback (the same code and state, again) and a callback
/// with a state that was never issued change nothing: no exchange is
/// sent, the credential keeps the first login's tokens.
#[test]
fn a_replayed_or_forged_api_callback_changes_nothing() {
    let idp = crate::login::Idp::start();
    let env = Env::new();
    let served = crate::common::http::InProcess::start(&env, &[], 2);
    let api = Client::new(served.addr(), None);
    let record = json!({
        "provider": "oauth2", "refresh_token": "rt-api-old",
        "token_url": format!("{}/token", idp.issuer), "client_id": "tw-cli",
    });
    api.post("/v1/credentials?id=ops", &record.to_string())
        .expect(201);
    let start = json!({"issuer": idp.issuer}).to_string();
    let url = api
        .post("/v1/credentials/ops/login", &start)
        .expect(200)
        .json()["authorize_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut b = crate::login::Browser::default();
    let back = b.sign_in(&idp.issuer, &url, "hal", false);
    let target = back[back.find("/oauth/callback").unwrap()..].to_owned();
    api.get(&target).expect(200);
    let after = env.warden().get("ops").unwrap();
    // A second sign-in waiting: the first's code with its state is not it.
    let url2 = api
        .post("/v1/credentials/ops/login", &start)
        .expect(200)
        .json()["authorize_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let (state2, _) = state_and_redirect(&url2);
    let replay = api.get(&target);
    assert_eq!(replay.status, 400, "{}", replay.body);
    let forged = api.get("/oauth/callback?code=x&state=never-issued");
    assert_eq!(forged.status, 400, "{}", forged.body);
    let code1 = form_decode(target.split_once('?').unwrap().1)
        .into_iter()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1;
    // The first code under the second sign-in's state: refused by the
    // provider (PKCE), the credential untouched.
    let crossed = api.get(&format!("/oauth/callback?code={code1}&state={state2}"));
    assert_eq!(crossed.status, 400, "{}", crossed.body);
    assert!(!crossed.body.contains(&code1), "{}", crossed.body);
    let now = env.warden().get("ops").unwrap();
    assert_eq!(
        (now.status.version, now.refresh_token.expose()),
        (after.status.version, after.refresh_token.expose())
    );
}

// ---------------------------------------------------------------------------
// Crashes and leases.
// ---------------------------------------------------------------------------

/// `tokenwarden login` SIGKILLed after the token endpoint minted the
/// login's tokens and before the store committed them: the stored
/// credential is untouched (same version and refresh token, no lease
/// left) and still refreshes with its own refresh token.
#[test]
fn a_login_killed_between_exchange_and_commit_leaves_the_old_credential_working() {
    let (_d, db) = temp_db();
    let victim = Arc::new(Mutex::new(None::<u32>));
    let kill = victim.clone();
    let server = Scripted::start(move |_, f| match field(f, "grant_type") {
        Some("authorization_code") => {
            // The tokens are minted upstream; the login dies before it
            // reads them.
            if let Some(pid) = *kill.lock().unwrap() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                thread::sleep(Duration::from_millis(200));
            }
            (
                200,
                json!({"access_token": "at-lost", "refresh_token": "rt-lost", "expires_in": 3600})
                    .to_string(),
            )
        }
        Some("refresh_token") if field(f, "refresh_token") == Some("rt-old") => (
            200,
            json!({"access_token": "at-next", "refresh_token": "rt-next", "expires_in": 3600})
                .to_string(),
        ),
        _ => (400, r#"{"error":"invalid_grant"}"#.into()),
    });
    let record = json!({
        "provider": "oauth2", "token_url": server.url("/token"), "client_id": "cli",
        "refresh_token": "rt-old", "access_token": "at-old", "expires_at": crate::common::tw::now() + 3600,
    });
    let (c, _, err) = import(&db, &record, &["--id", "kit"]);
    assert_eq!(c, 0, "{err}");
    let w = Warden::open(&db, Config::default()).unwrap();
    let before = w.get("kit").unwrap();
    let running = login_oauth2(&db, &server, &["--id", "kit"]);
    *victim.lock().unwrap() = Some(running.child.id());
    let _ = redirect_back(&running, &server, "code-k");
    let got = running
        .finish_within(Duration::from_secs(30))
        .expect("killed");
    assert_eq!(got.0, -1, "SIGKILLed: {}", got.2);
    let after = w.get("kit").unwrap();
    assert_eq!(
        (
            after.status.version,
            after.refresh_token.expose(),
            after.status.state
        ),
        (before.status.version, "rt-old", before.status.state)
    );
    let (c, token, err) = run(tw_cmd(&db).args(["refresh", "kit"]));
    assert_eq!((c, token.trim()), (0, "at-next"), "{err}");
}

/// A login for an account whose refresher was SIGKILLed mid-refresh (its
/// lease still live): the login waits the lease out and lands; the
/// refresh token that may have reached upstream is recorded as spent (an
/// import of it is refused) and was sent once.
#[test]
fn a_login_over_a_crashed_refreshers_lease_waits_and_spends_its_token() {
    let env = Env::new();
    env.login("lee", 60);
    let held = env
        .warden()
        .get("lee")
        .unwrap()
        .refresh_token
        .expose()
        .to_owned();
    env.fake
        .push_fault(Fault::HangBefore(Duration::from_secs(30)));
    let mut refresher = env
        .cmd()
        .args(["refresh", "lee"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    crate::common::scripted::wait_for_lease(&env.warden(), "lee");
    let _ = Command::new("kill")
        .args(["-KILL", &refresher.id().to_string()])
        .status();
    let _ = refresher.wait();
    // A codex login for the same account (same account id), stored by the
    // login command's own store call.
    let w = env.warden();
    let stored = w.get("lee").unwrap();
    let login = NewCredential {
        id: String::new(),
        provider: ProviderConfig::new(ProviderKind::Codex),
        refresh_token: Secret::new("rt-from-login"),
        access_token: Some(Secret::new("at-from-login")),
        id_token: None,
        expires_at_ms: Some(tokenwarden::clock::now_ms() + 3_600_000),
        claims: stored.claims.clone(),
        last_refresh_ms: None,
        api_key: None,
    };
    let (row, _) = w
        .store_login(login, Some("lee"))
        .expect("the login lands after the lease");
    assert_eq!(row.refresh_token.expose(), "rt-from-login");
    let record =
        json!({"provider": "codex", "refresh_token": held, "token_url": env.fake.token_url()});
    let (c, _, err) = import(&env.db, &record, &["--id", "lee-old"]);
    assert_eq!(c, 1, "the possibly-sent token is spent: {err}");
    assert!(err.contains("spent"), "{err}");
    let sent = env
        .fake
        .presented_refresh_tokens("lee")
        .into_iter()
        .filter(|t| *t == held)
        .count();
    assert!(sent <= 1, "sent {sent} times");
}

// ---------------------------------------------------------------------------
// Old backups of other tools' files.
// ---------------------------------------------------------------------------

/// An old backup of Claude Code's `.credentials.json` imported over the
/// credential it became (whose refresh token has rotated since) is
/// refused as spent, with or without --replace, under its id or another.
#[test]
fn an_old_claude_code_backup_never_lands_over_the_rotated_credential() {
    let env = Env::new();
    let grant = env.fake.new_family("cc");
    let file = json!({"claudeAiOauth": {
        "accessToken": grant.access_token, "refreshToken": grant.refresh_token,
        "expiresAt": 1_000, "scopes": ["user:inference"], "subscriptionType": "max"}});
    let path = env.dir.path().join("credentials.json");
    std::fs::write(&path, file.to_string()).unwrap();
    let p = path.to_str().unwrap();
    let out = env.run(&["import", p]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = env.run(&["refresh", "claude"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let now = env.warden().get("claude").unwrap();
    assert_ne!(now.refresh_token.expose(), grant.refresh_token);
    for args in [
        vec!["import", p, "--replace"],
        vec!["import", p, "--id", "claude-2"],
    ] {
        let out = env.run(&args);
        assert_eq!(code(&out), 1, "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("spent"), "{}", text(&out.stderr));
    }
    let after = env.warden().get("claude").unwrap();
    assert_eq!(after.refresh_token, now.refresh_token);
}

/// Gemini CLI's refresh token does not rotate: an old backup of
/// `oauth_creds.json` re-imported with --replace after its access token
/// was reported rejected must not bring that access token back.
#[test]
fn an_old_gemini_backup_never_brings_back_a_rejected_access_token() {
    let env = Env::new();
    env.fake.set_rotation(false);
    let grant = env.fake.new_family("gem");
    let file = json!({
        "access_token": grant.access_token, "refresh_token": grant.refresh_token,
        "scope": "openid", "token_type": "Bearer",
        "expiry_date": (crate::common::tw::now() + 3000) * 1000,
    });
    let path = env.dir.path().join("oauth_creds.json");
    std::fs::write(&path, file.to_string()).unwrap();
    let p = path.to_str().unwrap();
    let google = [("TOKENWARDEN_GOOGLE_TOKEN_URL", env.fake.token_url())];
    let out = env
        .cmd()
        .envs(google.clone())
        .args(["import", p, "--id", "gem"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = env
        .cmd()
        .envs(google.clone())
        .args(["reject", "gem", "--token", &grant.access_token])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let fresh = text(&out.stdout).trim().to_owned();
    assert_ne!(fresh, grant.access_token);
    let out = env
        .cmd()
        .envs(google.clone())
        .args(["import", p, "--id", "gem", "--replace"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = env
        .cmd()
        .envs(google)
        .args(["token", "gem"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_ne!(
        text(&out.stdout).trim(),
        grant.access_token,
        "a rejected token served again"
    );
}

/// An `oauth2` credential of an OpenID provider whose issuer has a path
/// (Keycloak's `…/realms/NAME`, Entra's `…/TENANT/v2.0`): when it dies,
/// the command its error names (`tokenwarden login oauth2 --id ID`) must
/// start the sign-in as printed; it looks for discovery at the token
/// URL's origin only, where there is none.
#[test]
fn a_dead_oauth2_credentials_relogin_command_works_for_an_issuer_with_a_path() {
    let (_d, db) = temp_db();
    let base = Arc::new(std::sync::OnceLock::<String>::new());
    let at = base.clone();
    let server = Scripted::start(move |path, _| {
        let issuer = format!("{}/realms/team", at.get().unwrap());
        match path {
            "/realms/team/.well-known/openid-configuration" => (
                200,
                json!({
                    "issuer": issuer,
                    "authorization_endpoint": format!("{issuer}/protocol/openid-connect/auth"),
                    "token_endpoint": format!("{issuer}/protocol/openid-connect/token"),
                    "scopes_supported": ["openid", "offline_access", "email"],
                })
                .to_string(),
            ),
            "/realms/team/protocol/openid-connect/token" => {
                (400, r#"{"error":"invalid_grant"}"#.into())
            }
            _ => (404, r#"{"error":"not_found"}"#.into()),
        }
    });
    base.set(server.url("")).unwrap();
    let record = json!({
        "provider": "oauth2", "client_id": "cli", "refresh_token": "rt-kc",
        "token_url": server.url("/realms/team/protocol/openid-connect/token"),
    });
    let (c, _, err) = import(&db, &record, &["--id", "kc"]);
    assert_eq!(c, 0, "{err}");
    let (c, _, err) = run(tw_cmd(&db).args(["refresh", "kc"]));
    assert_eq!(c, 4, "dead: {err}");
    let command = named_login_command(&err);
    let running = as_printed(&db, &command, "--no-browser --timeout 3");
    let got = running
        .finish_within(Duration::from_secs(30))
        .expect("ends");
    assert!(
        got.2.contains("Sign in at this URL"),
        "`{command}` as printed never started a sign-in: exit {} {}",
        got.0,
        got.2
    );
}

/// One account of one OpenID server, stored as `kim` with its refreshes
/// sent through a local proxy (a per-credential `token_url`, which
/// DESIGN.md offers for proxies and mirrors), signs in again without
/// --id: the same subject at the same client must update `kim`, not be
/// stored a second time under its e-mail.
#[test]
fn a_login_for_an_account_stored_behind_a_proxy_token_url_is_not_stored_twice() {
    let (_d, db) = temp_db();
    let w = Warden::open(&db, Config::default()).unwrap();
    let mut stored = login_cred("rt-kim-1", "kim");
    stored.id = "kim".into();
    stored.provider.token_url = Some("http://127.0.0.1:8080/idp-proxy/token".into());
    w.import(&[stored], false).unwrap();
    let (row, how) = w.store_login(login_cred("rt-kim-2", "kim"), None).unwrap();
    let ids: Vec<String> = w.list().unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(
        (row.id.as_str(), ids.len()),
        ("kim", 1),
        "stored {how:?}; ids now {ids:?}"
    );
}

/// An unsigned JWT with `payload` (nothing here checks signatures).
fn unsigned_jwt(payload: &Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

/// The multi-process form of the race above, through the real binary:
/// four `tokenwarden login oauth2 --id ivy-N` processes for one account
/// (same subject and e-mail in the id token) whose code exchanges the
/// token endpoint answers at the same moment. At most one id may end up
/// holding the account.
#[test]
fn concurrent_login_processes_never_store_one_account_under_two_ids() {
    let (_d, db) = temp_db();
    let n = 4;
    let together = Arc::new(Barrier::new(n));
    let minted = Arc::new(Mutex::new(0));
    let id_token = unsigned_jwt(&json!({"sub": "ivy", "email": "ivy@example.com"}));
    let server = Scripted::start_with(true, move |_, f| match field(f, "grant_type") {
        Some("authorization_code") => {
            // Every login's exchange is answered at the same moment.
            together.wait();
            let mut m = minted.lock().unwrap();
            *m += 1;
            (
                200,
                json!({"access_token": format!("at-ivy-{m}"), "refresh_token": format!("rt-ivy-{m}"),
                       "id_token": id_token, "token_type": "Bearer", "expires_in": 3600})
                .to_string(),
            )
        }
        _ => (400, r#"{"error":"invalid_grant"}"#.into()),
    });
    let logins: Vec<Running> = (0..n)
        .map(|i| login_oauth2(&db, &server, &["--id", &format!("ivy-{i}")]))
        .collect();
    let pages: Vec<_> = logins
        .iter()
        .map(|r| {
            let url = r.printed(&server.url("/authorize?"));
            let (state, redirect) = state_and_redirect(&url);
            thread::spawn(move || get(&format!("{redirect}?code=c&state={state}")))
        })
        .collect();
    for p in pages {
        p.join().unwrap();
    }
    let results: Vec<_> = logins
        .into_iter()
        .map(|r| r.finish_within(Duration::from_secs(60)).expect("ends"))
        .collect();
    let w = Warden::open(&db, Config::default()).unwrap();
    let ids: Vec<String> = w
        .list()
        .unwrap()
        .into_iter()
        .filter(|c| c.claims.user_id.as_deref() == Some("ivy"))
        .map(|c| c.id)
        .collect();
    assert!(
        ids.len() <= 1,
        "account ivy under {ids:?}; logins said {:?}",
        results
            .iter()
            .map(|r| (r.0, r.1.trim()))
            .collect::<Vec<_>>()
    );
}

/// A device authorization server that puts terminal control sequences in
/// its user code and page (clear the screen, retitle the terminal): the
/// login shows the user no control characters (or refuses the answer).
#[test]
fn a_device_servers_control_characters_never_reach_the_terminal() {
    let (_d, db) = temp_db();
    let server = Scripted::start(|path, _| match path {
        "/device" => (
            200,
            json!({"device_code": "dc-1", "user_code": "AB\u{1b}[2J\u{1b}]0;pwned\u{7}CD",
                   "verification_uri": "http://127.0.0.1:1/device\u{1b}[8m",
                   "expires_in": 600, "interval": 1})
            .to_string(),
        ),
        _ => (400, r#"{"error":"expired_token"}"#.into()),
    });
    let mut c = tw_cmd(&db);
    c.args([
        "login",
        "oauth2",
        "--authorize-url",
        &server.url("/authorize"),
        "--token-url",
        &server.url("/token"),
        "--device-url",
        &server.url("/device"),
        "--client-id",
        "cli",
        "--device",
        "--timeout",
        "20",
    ]);
    let (_, out, err) = Running::spawn(c)
        .finish_within(Duration::from_secs(45))
        .expect("ends");
    assert!(
        !err.contains('\u{1b}') && !err.contains('\u{7}') && !out.contains('\u{1b}'),
        "{err:?}"
    );
}

/// A token endpoint (or a gateway in front of it) that echoes what it was
/// sent in its error: the login's error on stderr and the page the browser
/// is left on must quote neither the client secret nor the PKCE verifier.
#[test]
fn an_echoing_token_endpoint_never_gets_the_client_secret_or_verifier_printed() {
    let (dir, db) = temp_db();
    let server = Scripted::start(|_, f| {
        let echo = format!(
            "client {} with client_secret {} and code_verifier {} refused",
            field(f, "client_id").unwrap_or("-"),
            field(f, "client_secret").unwrap_or("-"),
            field(f, "code_verifier").unwrap_or("-"),
        );
        (
            401,
            json!({"error": "invalid_client", "error_description": echo}).to_string(),
        )
    });
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "hunter2-secret").unwrap();
    let running = login_oauth2(
        &db,
        &server,
        &["--client-secret-file", secret.to_str().unwrap()],
    );
    let (_, page) = redirect_back(&running, &server, "code-e");
    let (c, out, err) = running
        .finish_within(Duration::from_secs(60))
        .expect("ends");
    assert_eq!(c, 1, "{err}");
    let sent = server.seen();
    let verifier = sent
        .iter()
        .find_map(|s| {
            form_decode(&s.body)
                .into_iter()
                .find(|(k, _)| k == "code_verifier")
                .map(|(_, v)| v)
        })
        .expect("an exchange was sent");
    for shown in [&err, &out, &page] {
        assert!(
            !shown.contains("hunter2-secret") && !shown.contains(&verifier),
            "a secret shown: {shown}"
        );
    }
}

/// One person, one e-mail, two providers: `tokenwarden login codex`
/// stored the ChatGPT account as `dev@example.com`; `tokenwarden login
/// claude` (no --id) for the Claude account of the same e-mail is another
/// account of another provider and must be stored as a new credential —
/// not thrown away, after the user finished signing in, because the
/// default id is taken.
#[test]
fn a_second_providers_login_for_the_same_email_is_kept() {
    let (_d, db) = temp_db();
    let w = Warden::open(&db, Config::default()).unwrap();
    let account = |kind: ProviderKind, rt: &str, account: &str| NewCredential {
        id: String::new(),
        provider: ProviderConfig::new(kind),
        refresh_token: Secret::new(rt),
        access_token: Some(Secret::new(format!("at-{rt}"))),
        id_token: None,
        expires_at_ms: Some(tokenwarden::clock::now_ms() + 3_600_000),
        claims: Claims {
            account_id: Some(account.into()),
            email: Some("dev@example.com".into()),
            ..Claims::default()
        },
        last_refresh_ms: None,
        api_key: None,
    };
    let (codex, _) = w
        .store_login(account(ProviderKind::Codex, "rt-codex", "acc-openai"), None)
        .unwrap();
    assert_eq!(codex.id, "dev@example.com");
    let claude = w.store_login(
        account(ProviderKind::Claude, "rt-claude", "uuid-anthropic"),
        None,
    );
    let kinds: Vec<ProviderKind> = w.list().unwrap().iter().map(|c| c.provider.kind).collect();
    assert!(
        claude.is_ok() && kinds.contains(&ProviderKind::Claude),
        "the Claude sign-in: {:?}; stored: {kinds:?}",
        claude.map(|(row, _)| row.id)
    );
}
