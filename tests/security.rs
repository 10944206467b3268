//! Secrets at rest and in output: encrypted databases, encrypt/rekey that
//! survive SIGKILL, file modes, and no secret in any output at trace level.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::tw::{code, json, now, text, Env};

fn key() -> String {
    tokenwarden::seal::generate_key()
}

/// Every byte of the database and its WAL, for grepping.
fn db_bytes(db: &Path) -> Vec<u8> {
    let mut all = std::fs::read(db).unwrap();
    let wal = db.with_extension("db-wal");
    if let Ok(w) = std::fs::read(wal) {
        all.extend(w);
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// An encrypted database works with its key (refreshes write sealed tokens) and is refused, saying why, without it or with a wrong or malformed key.
#[test]
fn an_encrypted_database_opens_only_with_its_key() {
    let env = Env::new();
    let k = key();
    let g = env.fake.new_family("enc");
    let record = g.import_json("enc", "codex", &env.fake.token_url());
    let run = |key: Option<&str>, args: &[&str], input: Option<&str>| {
        let mut c = env.cmd();
        if let Some(k) = key {
            c.env("TOKENWARDEN_ENCRYPTION_KEY", k);
        }
        c.args(args);
        match input {
            Some(i) => {
                use std::io::Write;
                let mut child = c
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
                child.wait_with_output().unwrap()
            }
            None => c.output().unwrap(),
        }
    };
    let out = run(Some(&k), &["import", "-"], Some(&record.to_string()));
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = run(Some(&k), &["token", "enc"], None);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), g.access_token);
    // A refresh writes new sealed tokens.
    let out = run(Some(&k), &["refresh", "enc"], None);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let fresh = text(&out.stdout).trim().to_owned();

    let bytes = db_bytes(&env.db);
    let family = env.fake.family_state("enc");
    for secret in family
        .issued_refresh_tokens
        .iter()
        .chain([&g.access_token, &fresh, &g.id_token])
    {
        assert!(
            !contains(&bytes, secret),
            "a secret is readable in the file"
        );
    }

    let out = run(None, &["token", "enc"], None);
    assert_eq!(code(&out), 2);
    assert!(
        text(&out.stderr).contains("encrypted"),
        "{}",
        text(&out.stderr)
    );
    let out = run(Some(&key()), &["token", "enc"], None);
    assert_eq!(code(&out), 2);
    assert!(
        text(&out.stderr).contains("does not open"),
        "{}",
        text(&out.stderr)
    );
    let out = run(Some("not-a-key"), &["list"], None);
    assert_eq!(code(&out), 2);
    assert!(
        text(&out.stderr).contains("keygen"),
        "{}",
        text(&out.stderr)
    );
    // The right key still works after all the refusals.
    let out = run(Some(&k), &["token", "enc"], None);
    assert_eq!(text(&out.stdout).trim(), fresh);

    // A key file works too, and keygen makes keys.
    let out = env.run(&["keygen"]);
    assert_eq!(code(&out), 0);
    assert!(tokenwarden::seal::Sealer::from_base64(text(&out.stdout).trim()).is_ok());
    let file = env.dir.path().join("key");
    std::fs::write(&file, format!("{k}\n")).unwrap();
    let out = env.run(&[
        "--encryption-key-file",
        file.to_str().unwrap(),
        "token",
        "enc",
    ]);
    assert_eq!(text(&out.stdout).trim(), fresh, "{}", text(&out.stderr));
}

/// `encrypt` and `rekey` convert every token of a database (no plaintext left) and the old key stops working.
#[test]
fn encrypt_and_rekey_convert_a_database() {
    let env = Env::new();
    let g = env.login("conv", 7200);
    let k1 = key();
    let k2 = key();
    let with = |k: &str, args: &[&str]| {
        env.cmd()
            .env("TOKENWARDEN_ENCRYPTION_KEY", k)
            .args(args)
            .output()
            .unwrap()
    };

    // A plain database refuses a key until it is encrypted.
    let out = with(&k1, &["token", "conv"]);
    assert_eq!(code(&out), 2);
    assert!(
        text(&out.stderr).contains("tokenwarden encrypt"),
        "{}",
        text(&out.stderr)
    );
    assert!(contains(&db_bytes(&env.db), &g.refresh_token));

    let out = with(&k1, &["encrypt"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("encrypted 1"));
    assert!(!contains(&db_bytes(&env.db), &g.refresh_token));
    let out = with(&k1, &["token", "conv"]);
    assert_eq!(
        text(&out.stdout).trim(),
        g.access_token,
        "{}",
        text(&out.stderr)
    );
    // Encrypting twice is refused with a pointer to rekey.
    let out = with(&k1, &["encrypt"]);
    assert_eq!(code(&out), 2);
    assert!(text(&out.stderr).contains("rekey"));

    let out = env
        .cmd()
        .env("TOKENWARDEN_ENCRYPTION_KEY", &k1)
        .env("TOKENWARDEN_NEW_ENCRYPTION_KEY", &k2)
        .arg("rekey")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(code(&with(&k1, &["token", "conv"])), 2, "old key refused");
    let out = with(&k2, &["token", "conv"]);
    assert_eq!(text(&out.stdout).trim(), g.access_token);
    let out = with(&k2, &["export", "conv", "--format", "codex"]);
    assert_eq!(
        json(&out)["tokens"]["refresh_token"],
        g.refresh_token.as_str()
    );
}

/// Fills a plain database with `n` credentials quickly (one transaction).
fn fill(db: &Path, n: usize) {
    let store = tokenwarden::testing::Store::open(db, Duration::from_secs(5), 1).unwrap();
    drop(store);
    let mut conn = rusqlite::Connection::open(db).unwrap();
    let tx = conn.transaction().unwrap();
    for i in 0..n {
        tx.execute(
            "INSERT INTO credentials (id, provider, state, version, access_token, refresh_token, \
             expires_at_ms, created_ms, updated_ms) VALUES (?1, 'codex', 'valid', 1, ?2, ?3, ?4, 0, 0)",
            rusqlite::params![
                format!("bulk{i:05}"),
                format!("at-{i}-{}", "x".repeat(400)),
                format!("rt-{i}-{}", "y".repeat(40)),
                (now() + 7200) * 1000
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// Reads every refresh token through tokenwarden with `key`, if it opens.
fn all_tokens(env: &Env, key: Option<&str>) -> Option<Vec<String>> {
    let c = tokenwarden::Config {
        encryption_key: key.map(tokenwarden::Secret::new),
        ..tokenwarden::Config::default()
    };
    let w = tokenwarden::Warden::open(&env.db, c).ok()?;
    Some(
        w.list()
            .unwrap()
            .iter()
            .map(|c| c.refresh_token.expose().to_owned())
            .collect(),
    )
}

/// `encrypt` and `rekey` SIGKILLed at any point leave a database one key opens with every token intact, and a rerun finishes the job.
#[test]
fn encrypt_and_rekey_survive_sigkill_midway() {
    let env = Env::new();
    let n = 2_000;
    fill(&env.db, n);
    let expected = all_tokens(&env, None).unwrap();
    assert_eq!(expected.len(), n);
    let k1 = key();
    let k2 = key();
    let mut states = Vec::new();
    for (round, delay_ms) in [20u64, 150, 400, 900, 2000].into_iter().enumerate() {
        let (old, new) = match all_tokens(&env, None) {
            Some(_) => (None, k1.as_str()),
            None if all_tokens(&env, Some(&k1)).is_some() => (Some(k1.as_str()), k2.as_str()),
            None => (Some(k2.as_str()), k1.as_str()),
        };
        let mut cmd = env.cmd();
        match old {
            None => cmd.env("TOKENWARDEN_ENCRYPTION_KEY", new).arg("encrypt"),
            Some(o) => cmd
                .env("TOKENWARDEN_ENCRYPTION_KEY", o)
                .env("TOKENWARDEN_NEW_ENCRYPTION_KEY", new)
                .arg("rekey"),
        };
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Entirely before or entirely after: one key opens it, with every token intact.
        let before = old.map_or_else(|| all_tokens(&env, None), |o| all_tokens(&env, Some(o)));
        let after = all_tokens(&env, Some(new));
        match (before, after) {
            (Some(t), None) => {
                assert_eq!(t, expected, "round {round}");
                states.push("before");
            }
            (None, Some(t)) => {
                assert_eq!(t, expected, "round {round}");
                states.push("after");
            }
            other => panic!(
                "round {round}: neither or both keys open it: {:?}",
                (other.0.is_some(), other.1.is_some())
            ),
        }
        let check = rusqlite::Connection::open(&env.db).unwrap();
        let ok: String = check
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }
    eprintln!("kill outcomes: {states:?}");
    // Resumable: a run to completion from whatever state it is in.
    let k3 = key();
    let current = if all_tokens(&env, None).is_some() {
        None
    } else if all_tokens(&env, Some(&k1)).is_some() {
        Some(k1.clone())
    } else {
        Some(k2.clone())
    };
    let mut cmd = env.cmd();
    match &current {
        None => cmd.env("TOKENWARDEN_ENCRYPTION_KEY", &k3).arg("encrypt"),
        Some(o) => cmd
            .env("TOKENWARDEN_ENCRYPTION_KEY", o)
            .env("TOKENWARDEN_NEW_ENCRYPTION_KEY", &k3)
            .arg("rekey"),
    };
    let out = cmd.output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(all_tokens(&env, Some(&k3)).unwrap(), expected);
}

/// The database is created 0600, and a database readable by others is warned about.
#[test]
fn files_are_private_and_loose_permissions_are_warned_about() {
    let env = Env::new();
    env.login("perm", 7200);
    let mode = std::fs::metadata(&env.db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    std::fs::set_permissions(&env.db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0);
    assert!(
        text(&out.stderr).contains("readable by others"),
        "warns: {}",
        text(&out.stderr)
    );
}

/// Every flow — CLI, HTTP API, sweep with quota, the Codex facade — at
/// trace level: no refresh token, id token, access token, handle or API key
/// in any log line, and no refresh token, id token, handle or API key in any
/// answer but the ones that exist to hand them out.
#[test]
fn no_secret_in_any_log_at_trace_level() {
    use crate::common::http::{free_port, Client};
    let env = Env::new();
    let a = env.login("a", 60);
    let b = env.fake.new_family("b");
    let api_key = "api-key-0123456789abcdef";
    let logs = env.dir.path().join("serve.log");
    let port = free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut server = env
        .cmd()
        .env("TOKENWARDEN_LOG", "trace")
        .env("TOKENWARDEN_API_KEY", api_key)
        .args(["serve", "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&logs).unwrap())
        .spawn()
        .unwrap();
    let client = Client::new(addr, Some(api_key));
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() || client.get("/healthz").status != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut answers = Vec::new();
    let mut token_answers = Vec::new();
    let import = b.codex_auth_json().to_string();
    answers.push(client.post("/v1/credentials?id=b", &import).body);
    answers.push(client.get("/v1/credentials").body);
    answers.push(client.get("/v1/credentials/a").body);
    let t = client.get("/v1/credentials/a/token").body;
    let current: serde_json::Value = serde_json::from_str(&t).unwrap();
    token_answers.push(t.clone());
    let reject = serde_json::json!({"access_token": current["access_token"]}).to_string();
    token_answers.push(client.post("/v1/credentials/a/reject", &reject).body);
    token_answers.push(client.post("/v1/credentials/a/refresh", "").body);
    answers.push(client.get("/v1/credentials/a/events").body);
    answers.push(client.post("/v1/credentials/a/quota", "").body);
    answers.push(client.get("/v1/credentials/a/quota").body);
    answers.push(client.get("/metrics").body);
    let trace_cmd = |args: &[&str]| {
        env.cmd()
            .env("TOKENWARDEN_LOG", "trace")
            .args(args)
            .output()
            .unwrap()
    };
    let handle_out = trace_cmd(&["handle", "create", "a", "--label", "box"]);
    let handle = text(&handle_out.stdout).trim().to_owned();
    let facade =
        serde_json::json!({"grant_type": "refresh_token", "refresh_token": handle}).to_string();
    let facade_answer = client.post("/oauth/token", &facade).body;
    answers.push(
        client
            .post(
                "/oauth/token",
                r#"{"grant_type":"refresh_token","refresh_token":"twh_nope"}"#,
            )
            .body,
    );
    answers.push(client.delete("/v1/credentials/b").body);
    let mut cli_logs = vec![text(&handle_out.stderr)];
    for args in [
        &["sweep", "--quota", "--json"][..],
        &["list", "--json"],
        &["show", "a"],
        &["events", "a"],
        &["token", "a"],
        &["refresh", "a", "--force"],
        &["export", "a", "--format", "cliproxy"],
        &["handle", "list", "a"],
    ] {
        let out = trace_cmd(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        cli_logs.push(text(&out.stderr));
        if !matches!(args[0], "token" | "refresh" | "export") {
            answers.push(text(&out.stdout));
        }
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(server.wait().unwrap().code(), Some(0));
    let server_log = std::fs::read_to_string(&logs).unwrap();
    assert!(
        server_log.contains("request "),
        "trace logging is on: {server_log}"
    );

    let mut secrets: Vec<String> = vec![api_key.to_owned(), handle.clone()];
    for account in ["a", "b"] {
        let f = env.fake.family_state(account);
        secrets.extend(f.issued_refresh_tokens);
        secrets.push(f.current_access_token);
    }
    secrets.extend([
        a.id_token.clone(),
        b.id_token.clone(),
        a.access_token.clone(),
        b.access_token.clone(),
    ]);
    for t in token_answers.iter().chain([&facade_answer]) {
        let v: serde_json::Value = serde_json::from_str(t).unwrap();
        secrets.push(v["access_token"].as_str().unwrap().to_owned());
    }
    for s in &secrets {
        assert!(
            !server_log.contains(s.as_str()),
            "a secret in the server's log"
        );
        for log in &cli_logs {
            assert!(!log.contains(s.as_str()), "a secret in a CLI log");
        }
    }
    // Answers: no refresh token, id token, handle or key anywhere but in the
    // facade's own answer (which hands the handle back, by design).
    let family_a = env.fake.family_state("a");
    let never: Vec<&String> = family_a
        .issued_refresh_tokens
        .iter()
        .chain([&a.id_token, &b.id_token, &b.refresh_token])
        .collect();
    for answer in answers.iter().chain(&token_answers).chain([&facade_answer]) {
        for s in &never {
            assert!(
                !answer.contains(s.as_str()),
                "a refresh/id token in an answer"
            );
        }
        assert!(!answer.contains(api_key));
    }
    for answer in answers.iter().chain(&token_answers) {
        assert!(!answer.contains(&handle), "the handle in an answer");
    }
}

/// A 2xx answer carries new secrets: when it cannot be used (truncated,
/// not JSON, an `error` field, no access token), none of it may be quoted —
/// not in `last_error`, `show`, events, the HTTP 503 body, nor in the CLI's
/// stderr at trace level.
#[test]
fn a_2xx_body_that_fails_is_echoed_nowhere() {
    use crate::common::fake_oauth::Fault;
    use crate::common::http::InProcess;
    // Short and letter-only after the prefix: no "looks like a token" rule
    // would catch it, only the rule that 2xx bodies are never quoted.
    const FRAG: &str = "at_TrUnCaTeDfRaG";
    let bodies = [
        format!(r#"{{"access_token":"{FRAG}"#),
        format!(r#"{{"token_type":"Bearer","refresh_token":"{FRAG}","access_tok"#),
        format!("<html><body>{FRAG}</body></html>"),
        format!(r#"{{"error":{{"message":"{FRAG}"}},"access_token":"{FRAG}"}}"#),
        format!(r#"{{"error":"{FRAG}"}}"#),
        format!(r#"{{"refresh_token":"{FRAG}","expires_in":3600}}"#),
    ];
    let env = Env::new();
    let server = InProcess::start(&env, &[], 2);
    let mut seen = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        // Through the CLI, at trace level.
        let id = format!("cli{i}");
        env.login(&id, -10);
        env.fake.push_fault(Fault::status(200, body.clone()));
        let out = env
            .cmd()
            .env("TOKENWARDEN_LOG", "trace")
            .args(["token", &id])
            .output()
            .unwrap();
        assert_eq!(code(&out), 5, "{body}: {}", text(&out.stderr));
        seen.push(("CLI stderr", body, text(&out.stderr)));
        seen.push(("CLI stdout", body, text(&out.stdout)));
        for args in [&["show", &id, "--json"][..], &["events", &id, "--json"]] {
            let out = env.run(args);
            assert_eq!(code(&out), 0, "{args:?}: {}", text(&out.stderr));
            seen.push(("CLI show/events", body, text(&out.stdout)));
        }
        let row = env.warden().get(&id).unwrap();
        if i == 5 {
            // A new refresh token with nothing usable beside it: upstream
            // rotated, so it is kept (as the secret it is), not reported.
            assert_eq!(row.refresh_token.expose(), FRAG, "{body}");
            assert!(row.last_error.is_none(), "{body}");
        } else {
            let last = row.last_error.expect("a failure is recorded");
            assert!(!last.code.is_empty());
            seen.push((
                "last_error",
                body,
                format!("{} {}", last.code, last.message),
            ));
        }

        // Through the HTTP API.
        let id = format!("http{i}");
        env.login(&id, -10);
        env.fake.push_fault(Fault::status(200, body.clone()));
        let a = server.client.get(&format!("/v1/credentials/{id}/token"));
        assert_eq!(a.status, 503, "{body}: {}", a.body);
        seen.push(("HTTP 503", body, a.body));
        let a = server
            .client
            .get(&format!("/v1/credentials/{id}"))
            .expect(200);
        seen.push(("HTTP summary", body, a.body));
        let a = server
            .client
            .get(&format!("/v1/credentials/{id}/events"))
            .expect(200);
        seen.push(("HTTP events", body, a.body));
        let a = server.client.get(&format!("/v1/credentials/{id}/token"));
        seen.push(("HTTP 503 in backoff", body, a.body));
    }
    for (where_, body, out) in &seen {
        assert!(
            !out.to_lowercase().contains(&FRAG.to_lowercase()),
            "{where_} quotes a 2xx body ({body}): {out}"
        );
    }
}
