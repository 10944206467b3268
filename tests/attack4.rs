//! Attacks on a33b4c4 "token: a one-shot read skips what only a refresh
//! needs (cold start)": the clap-free `token ID [--json]` shortcut,
//! `Warden::open_for_reads` + `stored_token`, and `Startup::Deferred` (the
//! refresh-token fingerprint key, the schema-v1 fingerprint backfill and
//! the space reserve done at the first write). The promise under attack: a
//! rotating refresh token is used exactly once and never lost, and a spent
//! token is recognised as spent whichever process spent it.
//!
//! HELD tests pass and stay as guards; HOLE tests fail on the commit that
//! added them.

use std::process::{Output, Stdio};
use std::thread;
use std::time::Duration;

use crate::common::scripted::wait_for_lease;
use crate::common::tw::{code, text, Env};

fn kill(signal: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// The last line of a process's stderr (the error line).
fn last_line(out: &Output) -> String {
    text(&out.stderr).lines().last().unwrap_or("").to_owned()
}

/// A schema-v1 database (no fingerprints, no fingerprint key) holding one
/// row per `(id, refresh token)`, optionally sealed with `key`.
fn v1_database(env: &Env, rows: &[(&str, &str)], key: Option<&str>) {
    use tokenwarden::seal::Sealer;
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    conn.execute_batch(include_str!("../schema.sql")).unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    let sealer = key.map(|k| Sealer::from_base64(k).unwrap());
    if let Some(s) = &sealer {
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('key_check', ?1)",
            [s.seal("", "key_check", "tokenwarden")],
        )
        .unwrap();
    }
    for (id, rt) in rows {
        let stored = match &sealer {
            Some(s) => s.seal(id, "refresh_token", rt),
            None => rt.to_string(),
        };
        conn.execute(
            "INSERT INTO credentials (id, provider, state, version, access_token, \
             refresh_token, expires_at_ms, token_url, failures, created_ms, updated_ms) \
             VALUES (?1, 'codex', 'valid', 1, NULL, ?2, NULL, NULL, 0, 1, 1)",
            rusqlite::params![id, stored],
        )
        .unwrap();
    }
}

fn fingerprint_keys(env: &Env) -> Vec<String> {
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    let mut stmt = conn
        .prepare("SELECT value FROM meta WHERE key = 'fingerprint_key'")
        .unwrap();
    let rows = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<Vec<String>, _>>()
        .unwrap();
    rows
}

fn null_fingerprints(env: &Env) -> i64 {
    rusqlite::Connection::open(&env.db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM credentials WHERE refresh_fp IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// Imports `refresh_token` under a new id `id`; the exit and last line.
fn import_token(env: &Env, id: &str, refresh_token: &str, key: Option<&str>) -> (i32, String) {
    let record = serde_json::json!({"id": id, "provider": "codex", "refresh_token": refresh_token});
    let path = env.dir.path().join(format!("{id}.json"));
    std::fs::write(&path, record.to_string()).unwrap();
    let mut c = env.cmd();
    if let Some(k) = key {
        c.env("TOKENWARDEN_ENCRYPTION_KEY", k);
    }
    let out = c.args(["import", path.to_str().unwrap()]).output().unwrap();
    (code(&out), last_line(&out))
}

/// HELD: a schema-v1 database whose first writer is a deferred `token`
/// (plain and encrypted): `token` refreshes, the old refresh token's
/// fingerprint was backfilled before the claim, so after the rotation the
/// old token is recorded spent and a re-import of it is refused.
#[test]
fn held_v1_database_first_written_by_a_deferred_token_spends_the_old_token() {
    use tokenwarden::seal::generate_key;
    for encrypted in [false, true] {
        let env = Env::new();
        let g = env.fake.new_family("v1");
        let key = encrypted.then(generate_key);
        v1_database(&env, &[("old", &g.refresh_token)], key.as_deref());
        let mut c = env.cmd();
        if let Some(k) = &key {
            c.env("TOKENWARDEN_ENCRYPTION_KEY", k);
        }
        let out = c.args(["token", "old"]).output().unwrap();
        assert_eq!(
            code(&out),
            0,
            "encrypted={encrypted}: {}",
            text(&out.stderr)
        );
        assert_eq!(env.fake.stats().successful_refreshes, 1);
        assert_eq!(fingerprint_keys(&env).len(), 1);
        assert_eq!(null_fingerprints(&env), 0);
        let (code, line) = import_token(&env, "again", &g.refresh_token, key.as_deref());
        assert_eq!(code, 1, "encrypted={encrypted}: {line}");
        assert!(line.contains("spent") || line.contains("old"), "{line}");
        assert_eq!(env.fake.stats().reuse_detected, 0);
    }
}

/// HELD: a v1 database read by the shortcut (`token` on a valid credential
/// writes no key), then first written by several deferred `token`s and
/// eager commands racing: one fingerprint key, every old token spent.
#[test]
fn held_racing_deferred_and_eager_first_writes_make_one_fingerprint_key() {
    let env = Env::new();
    let grants: Vec<_> = (0..4)
        .map(|i| env.fake.new_family(&format!("r{i}")))
        .collect();
    let ids: Vec<String> = (0..4).map(|i| format!("r{i}")).collect();
    let rows: Vec<(&str, &str)> = ids
        .iter()
        .zip(&grants)
        .map(|(id, g)| (id.as_str(), g.refresh_token.as_str()))
        .collect();
    v1_database(&env, &rows, None);
    let mut children = Vec::new();
    for id in &ids {
        children.push(
            env.cmd()
                .args(["token", id])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        children.push(
            env.cmd()
                .args(["list"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    }
    assert_eq!(fingerprint_keys(&env).len(), 1);
    assert_eq!(null_fingerprints(&env), 0);
    for (i, g) in grants.iter().enumerate() {
        let (code, line) = import_token(&env, &format!("dup{i}"), &g.refresh_token, None);
        assert_eq!(code, 1, "r{i}'s spent token was imported again: {line}");
    }
    assert_eq!(env.fake.stats().reuse_detected, 0);
}

/// HELD: SIGTERM to a one-shot `token` whose own refresh is in flight
/// (it claimed after the shortcut read found the token due): it finishes
/// the refresh, commits the rotation and exits 143.
#[test]
fn held_sigterm_during_the_shortcut_tokens_own_refresh_finishes_it() {
    let env = Env::new();
    let g = env.login("term", 60);
    env.fake.set_latency(Duration::from_millis(1200));
    let warden = env.warden();
    let child = env
        .cmd()
        .args(["token", "term"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lease(&warden, "term");
    thread::sleep(Duration::from_millis(100));
    kill("TERM", child.id());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "{:?} {}",
        out.status,
        text(&out.stderr)
    );
    let row = warden.get("term").unwrap();
    assert_ne!(row.refresh_token.expose(), g.refresh_token, "rotation lost");
    assert_eq!(
        env.fake
            .issued_refresh_tokens("term")
            .last()
            .map(String::as_str),
        Some(row.refresh_token.expose())
    );
    assert_eq!(env.fake.stats().reuse_detected, 0);
}

/// HELD: the shortcut (`token ID`) and clap (`token ID --min-ttl 0`, same
/// meaning, not taken by the shortcut) give the same exit code, stdout
/// and error line, for odd ids, a missing / dead / encrypted credential,
/// a wrong key and an empty `TOKENWARDEN_DB`.
#[test]
fn held_the_shortcut_and_clap_answer_alike() {
    use tokenwarden::seal::generate_key;
    let env = Env::new();
    env.login("ok", 3600);
    let dead = env.login("dead", 60);
    env.fake.revoke_family(&dead.account);
    let _ = env.run(&["token", "dead", "--min-ttl", "0"]);
    let compare = |args: &[&str], envs: &[(&str, &str)], what: &str| {
        let run = |extra: &[&str]| {
            let mut c = env.cmd();
            for (k, v) in envs {
                c.env(k, v);
            }
            c.args(args).args(extra).output().unwrap()
        };
        let fast = run(&[]);
        let slow = run(&["--min-ttl", "0"]);
        assert_eq!(code(&fast), code(&slow), "{what}: {}", text(&fast.stderr));
        assert_eq!(fast.stdout, slow.stdout, "{what}");
        assert_eq!(last_line(&fast), last_line(&slow), "{what}");
        code(&fast)
    };
    assert_eq!(compare(&["token", "ok"], &[], "valid"), 0);
    assert_eq!(compare(&["token", "ok", "--json"], &[], "json"), 0);
    assert_eq!(compare(&["token", "nobody"], &[], "unknown"), 3);
    assert_eq!(compare(&["token", "dead"], &[], "dead"), 4);
    for id in ["help", "a=b", "é漢字", "a--b", "token", "-"] {
        let c = compare(&["token", id], &[], id);
        assert!(c == 3 || c == 2, "{id}: {c}");
    }
    compare(&["token", "ok"], &[("TOKENWARDEN_DB", "")], "empty db");
    compare(&["token", "ok"], &[("TOKENWARDEN_WAIT", "x")], "bad tuning");
    compare(
        &["token", "ok"],
        &[("TOKENWARDEN_ATTEMPTS", "0")],
        "bad attempts",
    );
    let key = generate_key();
    compare(
        &["token", "ok"],
        &[("TOKENWARDEN_ENCRYPTION_KEY", &key)],
        "key for a plain db",
    );
    // Encrypt, then: no key, the right key, a wrong key, a garbage key.
    let mut c = env.cmd();
    let out = c
        .env("TOKENWARDEN_ENCRYPTION_KEY", &key)
        .args(["encrypt"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    compare(&["token", "ok"], &[], "encrypted, no key");
    assert_eq!(
        compare(
            &["token", "ok"],
            &[("TOKENWARDEN_ENCRYPTION_KEY", &key)],
            "right key"
        ),
        0
    );
    compare(
        &["token", "ok"],
        &[("TOKENWARDEN_ENCRYPTION_KEY", &generate_key())],
        "wrong key",
    );
    compare(
        &["token", "ok"],
        &[("TOKENWARDEN_ENCRYPTION_KEY", "zz")],
        "garbage key",
    );
}
