//! The Codex token-endpoint facade: a fleet of clients that behave like the
//! Codex CLI (JSON refresh with a handle, proactive refresh near expiry,
//! refresh and retry on a 401) in threads and separate processes, against a
//! fake OAuth server that rotates and detects reuse.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::fake_oauth::{jwt_payload, now_unix, CODEX_CLIENT_ID};
use crate::common::tw::{code, json, text, Env};
use serde_json::{json, Value};
use tokenwarden::http::{ApiKeys, Server, ServerOptions};
use tokenwarden::Warden;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// POSTs a JSON body; (status, body).
fn post(agent: &ureq::Agent, url: &str, body: &Value) -> (u16, Value) {
    let mut resp = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .expect("facade reachable");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// What a Codex-CLI-like client did.
#[derive(Debug, Default)]
struct Tally {
    calls_ok: u64,
    refreshes: u64,
    retries_after_401: u64,
    failures: Vec<String>,
    tokens_seen: Vec<String>,
}

/// Behaves like the Codex CLI for `duration`: refreshes through the facade
/// when its token is within `window` of expiry, calls the upstream API
/// (the fake's usage endpoint) with it, and on a 401 refreshes and retries
/// once.
fn codex_client(
    facade_url: &str,
    usage_url: &str,
    handle: &str,
    window: f64,
    duration: Duration,
) -> Tally {
    let agent = agent();
    let mut t = Tally::default();
    let refresh = |t: &mut Tally| -> Option<(String, String)> {
        let (status, body) = post(
            &agent,
            facade_url,
            &json!({"client_id": CODEX_CLIENT_ID, "grant_type": "refresh_token", "refresh_token": handle}),
        );
        t.refreshes += 1;
        if status != 200 {
            t.failures
                .push(format!("refresh answered {status}: {body}"));
            return None;
        }
        if body["refresh_token"] != handle {
            t.failures
                .push("the facade did not hand back the handle".into());
        }
        let at = body["access_token"].as_str()?.to_owned();
        let account = jwt_payload(body["id_token"].as_str()?)?["https://api.openai.com/auth"]
            ["chatgpt_account_id"]
            .as_str()?
            .to_owned();
        t.tokens_seen.push(at.clone());
        Some((at, account))
    };
    let Some(mut current) = refresh(&mut t) else {
        return t;
    };
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let exp = jwt_payload(&current.0)
            .and_then(|p| p["exp"].as_f64())
            .unwrap_or(0.0);
        if exp - (now_unix() as f64) < window {
            match refresh(&mut t) {
                Some(c) => current = c,
                None => break,
            }
        }
        let call = |token: &str, account: &str| {
            agent
                .get(usage_url)
                .header("Authorization", &format!("Bearer {token}"))
                .header("ChatGPT-Account-Id", account)
                .call()
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        };
        match call(&current.0, &current.1) {
            200 => t.calls_ok += 1,
            401 => {
                t.retries_after_401 += 1;
                match refresh(&mut t) {
                    Some(c) => current = c,
                    None => break,
                }
                match call(&current.0, &current.1) {
                    200 => t.calls_ok += 1,
                    s => t.failures.push(format!("call after refresh answered {s}")),
                }
            }
            s => t.failures.push(format!("call answered {s}")),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    t
}

/// The name libtest knows [`facade_client_process`] by (its path in the
/// test binary, without the crate's name), for the fleet test's `--exact`.
fn client_test() -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::facade_client_process")
}

/// The client as a separate process: this test binary re-run with
/// `FACADE_CLIENT` set prints its tally as JSON.
#[test]
#[ignore = "run as a child process by the fleet test"]
fn facade_client_process() {
    let Ok(args) = std::env::var("FACADE_CLIENT") else {
        return;
    };
    let a: Value = serde_json::from_str(&args).unwrap();
    let t = codex_client(
        a["facade"].as_str().unwrap(),
        a["usage"].as_str().unwrap(),
        a["handle"].as_str().unwrap(),
        a["window"].as_f64().unwrap(),
        Duration::from_secs_f64(a["secs"].as_f64().unwrap()),
    );
    println!(
        "TALLY {}",
        json!({"ok": t.calls_ok, "refreshes": t.refreshes, "retries": t.retries_after_401,
               "failures": t.failures, "tokens": t.tokens_seen})
    );
}

struct Fleet {
    env: Env,
    server: Server,
    warden: Arc<Warden>,
}

/// A server whose facade answers tokens that live at least 1.5 s, refreshed
/// at most once a second per credential; upstream tokens live 4 s.
fn fleet() -> Fleet {
    let env = Env::new();
    env.fake.set_expires_in(4);
    env.login("team", 4);
    let mut config = env.config();
    config.policy.refresh_ahead_ms = 500;
    config.facade_min_ttl = Duration::from_millis(1500);
    config.facade_interval = Duration::from_secs(1);
    let warden = Arc::new(Warden::open(&env.db, config).unwrap());
    let server = Server::start(
        warden.clone(),
        "127.0.0.1:0",
        ServerOptions {
            threads: 16,
            keys: ApiKeys::new(["admin-key"]),
            ..ServerOptions::default()
        },
    )
    .unwrap();
    Fleet {
        env,
        server,
        warden,
    }
}

/// Eleven Codex-like clients (threads and processes) share one login through the facade for several token lifetimes with no reuse, single flight, far fewer upstream refreshes, and never the real refresh token.
#[test]
fn a_fleet_of_codex_clients_shares_one_login_without_reuse() {
    let f = fleet();
    let facade_url = format!("http://{}/oauth/token", f.server.addr());
    let usage_url = f.env.fake.codex_usage_url();
    let secs = 8.0;
    let mut handles = Vec::new();
    for i in 0..11 {
        let out = f.env.run(&[
            "handle",
            "create",
            "team",
            "--label",
            &format!("client-{i}"),
        ]);
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        handles.push(text(&out.stdout).trim().to_owned());
    }
    let exe = std::env::current_exe().unwrap();
    let client_test = client_test();
    let procs: Vec<_> = handles[8..]
        .iter()
        .map(|h| {
            let args = json!({"facade": facade_url, "usage": usage_url, "handle": h, "window": 1.0, "secs": secs});
            std::process::Command::new(&exe)
                .args(["--ignored", "--exact", &client_test, "--nocapture"])
                .env("FACADE_CLIENT", args.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let threads: Vec<_> = handles[..8]
        .iter()
        .cloned()
        .map(|h| {
            let (fu, uu) = (facade_url.clone(), usage_url.clone());
            std::thread::spawn(move || {
                codex_client(&fu, &uu, &h, 1.0, Duration::from_secs_f64(secs))
            })
        })
        .collect();

    let mut ok = 0;
    let mut tokens = Vec::new();
    for t in threads {
        let t = t.join().unwrap();
        assert!(
            t.failures.is_empty(),
            "thread client failed: {:?}",
            t.failures
        );
        assert!(t.calls_ok > 10, "{t:?}");
        ok += t.calls_ok;
        tokens.extend(t.tokens_seen);
    }
    for p in procs {
        let out = p.wait_with_output().unwrap();
        let stdout = text(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("TALLY "))
            .unwrap_or_else(|| panic!("client process printed no tally: {stdout}"));
        let tally: Value = serde_json::from_str(line).unwrap();
        assert_eq!(tally["failures"], json!([]), "process client failed");
        assert!(tally["ok"].as_u64().unwrap() > 10, "{tally}");
        ok += tally["ok"].as_u64().unwrap();
        tokens.extend(
            tally["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned()),
        );
    }
    let stats = f.env.fake.stats();
    let family = f.env.fake.family_state("team");
    eprintln!(
        "calls ok: {ok}; upstream refreshes: {}; tokens seen: {}",
        stats.successful_refreshes,
        tokens.len()
    );
    assert_eq!(stats.reuse_detected, 0, "the login was never burnt");
    assert!(!family.revoked);
    f.env.fake.assert_no_reuse_after_success();
    f.env.fake.assert_single_flight();
    assert!(
        stats.successful_refreshes >= 2,
        "clients outlived several access-token lifetimes: {stats:?}"
    );
    // Far fewer upstream refreshes than client refreshes: one login, shared.
    let client_refreshes = tokens.len() as u64;
    assert!(
        stats.successful_refreshes < client_refreshes,
        "{stats:?} vs {client_refreshes}"
    );
    // The real refresh token never reached a client.
    for rt in &family.issued_refresh_tokens {
        assert!(!tokens.contains(rt));
    }
    drop(f.warden);
}

/// 24 simultaneous facade refreshes with one handle cause one upstream refresh, and all get the new token.
#[test]
fn clients_coming_back_at_once_cause_one_refresh() {
    let f = fleet();
    let facade_url = format!("http://{}/oauth/token", f.server.addr());
    let handle = {
        let out = f.env.run(&["handle", "create", "team", "--label", "herd"]);
        text(&out.stdout).trim().to_owned()
    };
    let body = json!({"grant_type": "refresh_token", "refresh_token": handle, "client_id": CODEX_CLIENT_ID});
    // First contact: the client has not seen the current token.
    let (status, first) = post(&agent(), &facade_url, &body);
    assert_eq!(status, 200, "{first}");
    let before = f.env.fake.stats().token_requests;
    // The same client comes back 24 times at once (as after a 401 upstream).
    let barrier = Arc::new(std::sync::Barrier::new(24));
    let threads: Vec<_> = (0..24)
        .map(|_| {
            let (u, b, bar) = (facade_url.clone(), body.clone(), barrier.clone());
            std::thread::spawn(move || {
                bar.wait();
                post(&agent(), &u, &b)
            })
        })
        .collect();
    for t in threads {
        let (status, answer) = t.join().unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_ne!(answer["access_token"], first["access_token"], "a new token");
    }
    assert_eq!(
        f.env.fake.stats().token_requests,
        before + 1,
        "one refresh for the herd"
    );
}

/// Revoked, unknown and malformed handles get OpenAI's 401 `refresh_token_invalidated`, a bad grant 400; handles are never listed, and form bodies work.
#[test]
fn revoked_and_unknown_handles_are_refused_in_openais_shape() {
    let f = fleet();
    let facade_url = format!("http://{}/oauth/token", f.server.addr());
    let out = f
        .env
        .run(&["handle", "create", "team", "--label", "laptop"]);
    let handle = text(&out.stdout).trim().to_owned();
    let grant = |h: &str| json!({"grant_type": "refresh_token", "refresh_token": h, "client_id": CODEX_CLIENT_ID});
    let (status, _) = post(&agent(), &facade_url, &grant(&handle));
    assert_eq!(status, 200);

    let list = json(&f.env.run(&["handle", "list", "team", "--json"]));
    let entry = &list["handles"][0];
    assert_eq!(entry["label"], "laptop");
    assert!(entry["last_used_at"].as_i64().is_some());
    assert!(
        !list.to_string().contains(&handle),
        "the handle itself is never listed"
    );
    let out = f
        .env
        .run(&["handle", "revoke", entry["id"].as_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));

    for h in [handle.as_str(), "twh_unknown", "not-a-handle"] {
        let (status, body) = post(&agent(), &facade_url, &grant(h));
        assert_eq!(status, 401, "{h}");
        assert_eq!(body["error"]["code"], "refresh_token_invalidated");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["message"].as_str().unwrap().contains("sign"));
    }
    // The facade takes no API key, but a bad grant is a 400.
    let (status, body) = post(&agent(), &facade_url, &json!({"grant_type": "password"}));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_request");
    // Form-encoded works too.
    let out = f.env.run(&["handle", "create", "team", "--label", "form"]);
    let h2 = text(&out.stdout).trim().to_owned();
    let mut resp = agent()
        .post(&facade_url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(format!("grant_type=refresh_token&refresh_token={h2}&client_id=x").as_bytes())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["refresh_token"], h2.as_str());
}

/// `export --handle` writes a 0600 `auth.json` holding a handle, never a real refresh token, that works at the facade.
#[test]
fn export_with_a_handle_writes_a_ready_auth_json() {
    let f = fleet();
    let file = f.env.dir.path().join("auth.json");
    let out = f.env.run(&[
        "export",
        "team",
        "--format",
        "codex",
        "--handle",
        "container-1",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let auth: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let rt = auth["tokens"]["refresh_token"].as_str().unwrap();
    assert!(rt.starts_with("twh_"), "a handle, not the real token");
    for real in f.env.fake.family_state("team").issued_refresh_tokens {
        assert_ne!(rt, real);
    }
    // That handle works at the facade.
    let (status, body) = post(
        &agent(),
        &format!("http://{}/oauth/token", f.server.addr()),
        &json!({"grant_type": "refresh_token", "refresh_token": rt, "client_id": CODEX_CLIENT_ID}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["id_token"].is_string());
}
