//! The command line as a user meets it: formats, flags, exit codes, output
//! shapes, and errors that say what to do.

use std::os::unix::fs::PermissionsExt;

use crate::common::fake_oauth::Fault;
use crate::common::tw::{code, json, now, text, Env};
use serde_json::Value;

fn last_line(out: &std::process::Output) -> String {
    text(&out.stderr)
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// `init` twice succeeds, creates a 0600 database and leaves it empty.
#[test]
fn init_is_idempotent_and_creates_a_private_file() {
    let env = Env::new();
    for _ in 0..2 {
        let out = env.run(&["init"]);
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    }
    let mode = std::fs::metadata(&env.db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = env.run(&["list", "--json"]);
    assert_eq!(json(&out), serde_json::json!({"credentials": []}));
}

/// A Codex `auth.json` imports with its claims and expiry, `token` prints its access token without a refresh, and an id taken from the e-mail needs the refresh token free.
#[test]
fn imports_a_codex_auth_json_and_prints_a_token() {
    let env = Env::new();
    let g = env.fake.new_family("cx");
    let path = env.dir.path().join("auth.json");
    std::fs::write(&path, g.codex_auth_json().to_string()).unwrap();
    let out = env.run(&["import", path.to_str().unwrap(), "--id", "cx"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));

    let summary = json(&env.run(&["show", "cx", "--json"]));
    assert_eq!(summary["provider"], "codex");
    assert_eq!(summary["state"], "valid");
    assert_eq!(summary["account_id"], g.account_id.as_str());
    assert_eq!(summary["email"], g.email.as_str());
    assert_eq!(summary["plan_type"], g.plan_type.as_str());
    assert_eq!(
        summary["expires_at"], g.expires_at,
        "expiry from the JWT exp"
    );

    let out = env.run(&["token", "cx"]);
    assert_eq!(code(&out), 0);
    assert_eq!(
        text(&out.stdout).trim(),
        g.access_token,
        "valid token, no refresh"
    );
    assert_eq!(env.fake.stats().token_requests, 0);

    // Without --id the id comes from the e-mail claim. (Its refresh token
    // can live under one id only: `cx` gives it up first.)
    let out = env.run(&["import", path.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    assert!(last_line(&out).contains("'cx'"), "{}", last_line(&out));
    assert_eq!(code(&env.run(&["delete", "cx"])), 0);
    let out = env.run(&["import", path.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&g.email));
}

/// Imports read stdin and tokenwarden's own and CLIProxyAPI's formats; a credential without an access token is refreshed on first use.
#[test]
fn imports_from_stdin_and_several_formats() {
    let env = Env::new();
    let g = env.fake.new_family("multi");
    // tokenwarden's own JSON with only a refresh token: refreshed on first use.
    let own = serde_json::json!({
        "id": "own", "provider": "codex", "refresh_token": g.refresh_token,
        "token_url": env.fake.token_url(),
    });
    let out = env.run_stdin(&["import", "-"], own.to_string().as_bytes());
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let s = json(&env.run(&["show", "own", "--json"]));
    assert_eq!(s["state"], "expiring", "no access token: due for refresh");
    let out = env.run(&["token", "own", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let t = json(&out);
    assert_eq!(
        t["access_token"],
        env.fake.family_state("multi").current_access_token.as_str()
    );
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["credential_id"], "own");
    assert!(t["expires_in"].as_i64().unwrap() > 3000);
    // Equal when computed in the same second; the clock may tick once since.
    let drift = t["expires_at"].as_i64().unwrap() - now() - t["expires_in"].as_i64().unwrap();
    assert!((-1..=0).contains(&drift), "{t}");
    assert!(t["version"].as_i64().unwrap() >= 3);

    // A CLIProxyAPI file.
    let g2 = env.fake.new_family("cpa");
    let cpa = serde_json::json!({
        "type": "codex", "access_token": g2.access_token, "refresh_token": g2.refresh_token,
        "id_token": g2.id_token, "account_id": g2.account_id, "email": g2.email,
        "expired": "2099-01-01T00:00:00Z", "last_refresh": "2025-01-01T00:00:00Z",
    });
    let path = env.dir.path().join("cpa.json");
    std::fs::write(&path, cpa.to_string()).unwrap();
    let out = env.run(&["import", path.to_str().unwrap(), "--id", "cpa"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let s = json(&env.run(&["show", "cpa", "--json"]));
    assert_eq!(s["expires_at"], 4_070_908_800i64);
}

/// Importing over an existing id is refused with a hint at `--replace`, which then re-imports it and records why.
#[test]
fn import_refuses_to_overwrite_without_replace() {
    let env = Env::new();
    env.login("dup", 3600);
    let path = env.dir.path().join("dup.json");
    let out = env.run(&["import", path.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(last_line(&out).contains("--replace"), "{}", last_line(&out));
    let out = env.run(&["import", path.to_str().unwrap(), "--replace"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let events = json(&env.run(&["events", "dup", "--json"]));
    let reasons: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["imported", "re-imported, same refresh token"]);
}

/// Bad import files, ids, usage, missing files and foreign databases each get their exit code and a message that says what is wrong, never a panic.
#[test]
fn bad_input_gets_a_clear_error_and_the_right_exit_code() {
    let env = Env::new();
    env.login("ok", 3600);
    let bad = env.dir.path().join("bad.json");
    for (body, hint) in [
        ("{not json", "JSON"),
        ("[1,2,3]", ""),
        (r#"{"provider":"codex"}"#, "refresh_token"),
        (
            r#"{"id":"x","provider":"nope","refresh_token":"r"}"#,
            "provider",
        ),
        (
            r#"{"id":"a/b","provider":"codex","refresh_token":"r"}"#,
            "id",
        ),
        (
            r#"{"id":"x","provider":"oauth2","refresh_token":"r"}"#,
            "token_url",
        ),
    ] {
        std::fs::write(&bad, body).unwrap();
        let out = env.run(&["import", bad.to_str().unwrap()]);
        assert_eq!(code(&out), 2, "{body}: {}", text(&out.stderr));
        assert!(
            last_line(&out).contains(hint),
            "{body}: {}",
            last_line(&out)
        );
        assert!(!text(&out.stderr).contains("panicked"));
    }
    // Unknown credential → 3; bad id → 2; usage → 2; missing file → 1.
    assert_eq!(code(&env.run(&["token", "missing"])), 3);
    assert!(last_line(&env.run(&["token", "missing"])).contains("list"));
    for bad_id in ["..", "a/b", "a%2fb", "a b"] {
        assert_eq!(code(&env.run(&["token", bad_id])), 2, "{bad_id}");
    }
    assert_eq!(code(&env.run(&["token"])), 2);
    assert_eq!(code(&env.run(&["frobnicate"])), 2);
    assert_eq!(code(&env.run(&["import", "/nonexistent/file.json"])), 1);
    // A database that is not ours.
    let foreign = env.dir.path().join("foreign.db");
    std::fs::write(
        &foreign,
        b"this is not sqlite at all, just text".repeat(200),
    )
    .unwrap();
    let out = env.run(&["--db", foreign.to_str().unwrap(), "list"]);
    assert_eq!(code(&out), 1);
    assert!(last_line(&out).contains("database"), "{}", last_line(&out));
}

/// `reject` takes tokens that begin with `-` and `-` for stdin; a stale token refreshes nothing, the current one is replaced.
#[test]
fn reject_accepts_tokens_that_begin_with_a_dash_and_reads_stdin() {
    let env = Env::new();
    let g = env.login("dash", 3600);
    // A token that begins with '-' (not current: answered with the current one).
    let out = env.run(&["reject", "dash", "--token", "-abc_DEF"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), g.access_token);
    let out = env.run(&["reject", "dash", "--token=-xyz"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(
        env.fake.stats().token_requests,
        0,
        "stale rejects refresh nothing"
    );

    // The current token, from stdin: refreshed, a different token printed.
    let out = env.run_stdin(
        &["reject", "dash", "--token", "-", "--json"],
        format!("{}\n", g.access_token).as_bytes(),
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let t = json(&out);
    assert_ne!(t["access_token"], g.access_token.as_str());
    assert_eq!(
        t["access_token"],
        env.fake.family_state("dash").current_access_token.as_str()
    );
    assert_eq!(env.fake.stats().token_requests, 1);
}

/// `refresh` always refreshes, a permanent refusal makes the credential dead (exit 4), and only `--force` tries it again.
#[test]
fn refresh_prints_a_new_token_and_dead_ones_need_force() {
    let env = Env::new();
    let g = env.login("rf", 3600);
    let out = env.run(&["refresh", "rf"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let first = text(&out.stdout).trim().to_owned();
    assert_ne!(first, g.access_token, "refreshed although valid");
    assert_eq!(env.fake.stats().token_requests, 1);

    env.fake
        .push_fault(Fault::status(400, r#"{"error":"invalid_grant"}"#));
    let out = env.run(&["refresh", "rf"]);
    assert_eq!(code(&out), 4);
    let out = env.run(&["token", "rf"]);
    assert_eq!(code(&out), 4);
    assert!(last_line(&out).contains("invalid_grant"));
    let out = env.run(&["refresh", "rf", "--force", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(
        json(&out)["access_token"],
        env.fake.family_state("rf").current_access_token.as_str()
    );
}

/// `list`, `show` and `events` print every summary and event field (JSON and human), and `delete` removes the credential while its events stay.
#[test]
fn list_show_events_and_delete() {
    let env = Env::new();
    env.login("a1", 3600);
    env.login("a2", 60);
    let list = json(&env.run(&["list", "--json"]));
    let creds = list["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 2);
    assert_eq!(creds[0]["id"], "a1");
    assert_eq!(creds[0]["state"], "valid");
    assert_eq!(creds[1]["state"], "expiring");
    for key in [
        "id",
        "provider",
        "state",
        "version",
        "expires_at",
        "account_id",
        "email",
        "plan_type",
        "last_refresh_at",
        "failures",
        "next_attempt_at",
        "last_error",
    ] {
        assert!(creds[0].get(key).is_some(), "summary lacks {key}");
    }
    let human = text(&env.run(&["list"]).stdout);
    assert!(
        human.contains("a1") && human.contains("expiring"),
        "{human}"
    );
    let human = text(&env.run(&["show", "a2"]).stdout);
    assert!(
        human.contains("state:") && human.contains("expiring"),
        "{human}"
    );

    let out = env.run(&["delete", "a1"]);
    assert_eq!(code(&out), 0);
    assert_eq!(code(&env.run(&["show", "a1"])), 3);
    assert_eq!(code(&env.run(&["delete", "a1"])), 3);
    let events = json(&env.run(&["events", "a1", "--json"]));
    let events = events["events"].as_array().unwrap();
    assert_eq!(
        events.last().unwrap()["to"],
        "deleted",
        "events outlive the credential"
    );
    for key in ["seq", "at", "from", "to", "version", "actor", "reason"] {
        assert!(events[0].get(key).is_some(), "event lacks {key}");
    }
    let limited = json(&env.run(&["events", "a1", "--json", "--limit", "1"]));
    assert_eq!(limited["events"].as_array().unwrap().len(), 1);
    assert_eq!(code(&env.run(&["events", "never-existed"])), 3);
}

/// `export` writes Codex and CLIProxyAPI files (0600) that import again into another database as the same credential.
#[test]
fn export_round_trips_and_writes_private_files() {
    let env = Env::new();
    let g = env.fake.new_family("ex");
    let path = env.dir.path().join("auth.json");
    std::fs::write(&path, g.codex_auth_json().to_string()).unwrap();
    assert_eq!(
        code(&env.run(&["import", path.to_str().unwrap(), "--id", "ex"])),
        0
    );

    let out = env.run(&["export", "ex", "--format", "codex"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let auth = json(&out);
    assert_eq!(auth["tokens"]["refresh_token"], g.refresh_token.as_str());
    assert_eq!(auth["tokens"]["access_token"], g.access_token.as_str());
    assert_eq!(auth["tokens"]["account_id"], g.account_id.as_str());

    let file = env.dir.path().join("out").with_extension("json");
    let out = env.run(&[
        "export",
        "ex",
        "--format",
        "codex",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let written: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(written, auth);

    let out = env.run(&["export", "ex", "--format", "cliproxy"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let cpa = json(&out);
    assert_eq!(cpa["type"], "codex");
    assert_eq!(cpa["refresh_token"], g.refresh_token.as_str());

    // Re-importing the export into another database yields the same
    // credential. (In this one its refresh token is held by `ex`.)
    let out = env.run(&["import", file.to_str().unwrap(), "--id", "ex2"]);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    assert!(last_line(&out).contains("'ex'"), "{}", last_line(&out));
    let other = Env::new();
    let out = other.run(&["import", file.to_str().unwrap(), "--id", "ex2"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let a = json(&env.run(&["show", "ex", "--json"]));
    let b = json(&other.run(&["show", "ex2", "--json"]));
    for key in ["provider", "expires_at", "account_id", "email", "plan_type"] {
        assert_eq!(a[key], b[key], "{key}");
    }
}

/// A transient upstream refusal exits 5 with a retry hint and records the failure and the next attempt.
#[test]
fn unavailable_exits_5_with_a_retry_hint() {
    let env = Env::new();
    env.login("u", -5);
    env.fake
        .push_fault(Fault::retry_after(429, r#"{"error":"rate_limited"}"#, "30"));
    let out = env.run(&["token", "u"]);
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    let line = last_line(&out);
    assert!(
        line.contains("retry in") && line.contains("http_429"),
        "{line}"
    );
    let s = json(&env.run(&["show", "u", "--json"]));
    assert!(s["next_attempt_at"].as_i64().unwrap() >= now() + 29, "{s}");
    assert_eq!(s["failures"], 1);
    assert_eq!(s["last_error"]["code"], "http_429");
}

/// Log lines on a piped stderr carry no colour escape codes, whatever TERM says.
#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    // A cron job's mail or a captured log: stderr is a pipe. TERM says the
    // (absent) terminal could do colours; that must not matter.
    let env = Env::new();
    assert_eq!(code(&env.run(&["init"])), 0);
    std::fs::set_permissions(&env.db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env
        .cmd()
        .args(["list"])
        .env("TERM", "xterm-256color")
        .env("TOKENWARDEN_LOG", "trace")
        .output()
        .expect("run tokenwarden");
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("readable by others"),
        "a warning was logged: {err}"
    );
    assert!(
        !err.contains("\x1b["),
        "escape codes in captured stderr: {err:?}"
    );
}
