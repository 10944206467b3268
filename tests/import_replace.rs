//! Imports that could burn a login (DESIGN.md §7 "Import"): a replace
//! during a live refresh lease, a stale re-import of a refresh token that
//! was already rotated away, one refresh token under two ids, an import
//! without an expiry, and a database of schema version 1 opened by this
//! build.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::fake_oauth::Fault;
use crate::common::http::InProcess;
use crate::common::tw::{code, json, now, text, Env};
use serde_json::{json, Value};
use tokenwarden::state::State;
use tokenwarden::testing::QuotaRow;
use tokenwarden::Warden;

const KEY: &str = "import-test-key";

fn last_line(out: &std::process::Output) -> String {
    text(&out.stderr)
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// Writes `value` to a file in the env's directory.
fn write(env: &Env, name: &str, value: &Value) -> PathBuf {
    let path = env.dir.path().join(name);
    std::fs::write(&path, value.to_string()).unwrap();
    path
}

fn import(env: &Env, path: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["import", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    env.run(&args)
}

/// Waits until `id` is held by a refresh lease.
fn wait_for_lease(warden: &Warden, id: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    while warden.store().get(id).unwrap().unwrap().status.state != State::Refreshing {
        assert!(Instant::now() < until, "the refresh never started");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Gives `id` a facade handle and a quota snapshot: history a replace must
/// keep.
fn add_history(warden: &Warden, id: &str) {
    tokenwarden::facade::create_handle(warden, id, "laptop").unwrap();
    let snapshot = QuotaRow {
        credential_id: id.into(),
        fetched_at_ms: tokenwarden::clock::now_ms(),
        status: "http_503".into(),
        http_status: Some(503),
        quota: None,
        error_message: Some("upstream was down".into()),
    };
    warden.store().insert_quota(&snapshot, None, 0).unwrap();
}

fn assert_history_kept(warden: &Warden, id: &str) {
    assert_eq!(warden.store().handles(id).unwrap().len(), 1, "handles kept");
    assert_eq!(
        warden.store().quota_history_len(id).unwrap(),
        1,
        "quota history kept"
    );
    let events = warden.events(id, None).unwrap();
    assert_eq!(
        events.first().map(|e| e.reason.as_str()),
        Some("imported"),
        "events kept: {events:?}"
    );
}

/// Item 1: `import --replace` while another caller holds a live refresh
/// lease against a slow upstream. The CLI waits for the lease; the refresh
/// token in flight is sent exactly once; a re-import of that very token
/// (now rotated away) is refused; HTTP refuses at once with 409; a new
/// login replaces the row after the owner committed, and handles, events
/// and quota history survive.
#[test]
fn a_replace_during_a_live_lease_waits_and_never_resends_the_refresh_token() {
    let env = Env::new();
    let g = env.login("live", 60);
    let file = env.dir.path().join("live.json");
    let warden = Arc::new(env.warden());
    add_history(&warden, "live");
    let srv = InProcess::start(&env, &[KEY], 2);

    // 1. The same file again while its refresh token is in flight.
    env.fake.set_latency(Duration::from_millis(1500));
    let w = warden.clone();
    let owner = thread::spawn(move || w.token("live", Duration::ZERO));
    wait_for_lease(&warden, "live");
    let t = Instant::now();
    let refused = srv
        .client
        .post(
            "/v1/credentials?replace=1",
            &std::fs::read_to_string(&file).unwrap(),
        )
        .expect(409);
    assert_eq!(refused.code(), "refresh_in_progress", "{}", refused.body);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "HTTP refuses at once"
    );
    assert!(!refused.body.contains(&g.refresh_token));
    let out = import(&env, &file, &["--replace"]);
    let granted = owner.join().unwrap().expect("the owner's refresh");
    assert_eq!(
        code(&out),
        1,
        "a re-import of the token the lease just rotated away: {}",
        text(&out.stderr)
    );
    assert!(
        last_line(&out).contains("rotated away"),
        "{}",
        last_line(&out)
    );
    // Nobody sends the old refresh token again.
    env.fake.set_latency(Duration::ZERO);
    let again = warden.token("live", Duration::ZERO).unwrap();
    assert_eq!(again.access_token, granted.access_token);
    assert_eq!(
        env.fake.presented_refresh_tokens("live"),
        std::slice::from_ref(&g.refresh_token),
        "the refresh token was sent exactly once"
    );
    assert_eq!(warden.get("live").unwrap().status.state, State::Valid);

    // 2. A new login imported while a refresh is in flight: the CLI waits
    //    for the owner's commit, then replaces.
    let fresh = env.fake.new_family("live-new");
    let mut record = fresh.import_json("live", "codex", &env.fake.token_url());
    record["expires_at"] = Value::from(now() + 3600);
    let new_file = write(&env, "live-new.json", &record);
    env.fake.set_latency(Duration::from_millis(1500));
    let w = warden.clone();
    let owner = thread::spawn(move || w.refresh("live", false));
    wait_for_lease(&warden, "live");
    let refused = srv
        .client
        .post("/v1/credentials?replace=1", &record.to_string())
        .expect(409);
    assert_eq!(refused.code(), "refresh_in_progress");
    let t = Instant::now();
    let out = import(&env, &new_file, &["--replace"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        t.elapsed() > Duration::from_millis(500),
        "the replace waited for the lease"
    );
    owner
        .join()
        .unwrap()
        .expect("the owner's commit landed first");
    let row = warden.get("live").unwrap();
    assert_eq!(row.refresh_token.expose(), fresh.refresh_token);
    assert_eq!(row.status.state, State::Valid);
    assert!(row.status.lease.is_none());
    assert_history_kept(&warden, "live");
    let stats = env.fake.stats();
    assert_eq!(stats.reuse_detected, 0, "{stats:?}");
    env.fake.assert_no_reuse_after_success();
    env.fake.assert_single_flight();
    let presented = env.fake.presented_refresh_tokens("live");
    assert_eq!(presented.len(), 2, "{presented:?}");
    assert_ne!(presented[0], presented[1]);
}

/// Item 1: what a replace does to the credential's state. The same refresh
/// token changes metadata only (a dead credential stays dead); a new one
/// makes it valid.
#[test]
fn a_replace_with_the_same_refresh_token_keeps_its_state_and_a_new_one_revives() {
    let env = Env::new();
    env.login("d", 3600);
    let file = env.dir.path().join("d.json");
    let warden = env.warden();
    add_history(&warden, "d");
    env.fake
        .push_fault(Fault::status(400, r#"{"error":"invalid_grant"}"#));
    assert!(warden.refresh("d", false).is_err());
    assert_eq!(warden.get("d").unwrap().status.state, State::Dead);

    let out = import(&env, &file, &["--replace"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("still dead"),
        "the CLI says it: {}",
        text(&out.stderr)
    );
    let row = warden.get("d").unwrap();
    assert_eq!(
        row.status.state,
        State::Dead,
        "the same dead token stays dead"
    );
    assert_eq!(row.status.dead_reason.as_deref(), Some("invalid_grant"));
    let requests = env.fake.stats().token_requests;
    assert!(warden.token("d", Duration::ZERO).is_err());
    assert_eq!(env.fake.stats().token_requests, requests, "no traffic");

    let fresh = env.fake.new_family("d-new");
    let mut record = fresh.import_json("d", "codex", &env.fake.token_url());
    record["expires_at"] = Value::from(now() + 3600);
    let out = import(&env, &write(&env, "d-new.json", &record), &["--replace"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let row = warden.get("d").unwrap();
    assert_eq!(row.status.state, State::Valid, "a new login revives it");
    assert_eq!(row.status.failures, 0);
    assert!(row.last_error.is_none());
    assert_eq!(
        warden
            .token("d", Duration::ZERO)
            .unwrap()
            .access_token
            .expose(),
        fresh.access_token
    );
    assert_history_kept(&warden, "d");
}

/// Item 2: re-importing an older file whose refresh token a refresh already
/// rotated away is refused — CLI exit 1 and HTTP 409, saying when it was
/// rotated away and why — and changes nothing.
#[test]
fn a_stale_reimport_of_a_rotated_refresh_token_is_refused() {
    let env = Env::new();
    let g = env.login("st", 3600);
    let file = env.dir.path().join("st.json");
    let warden = env.warden();
    warden.refresh("st", false).unwrap();
    let before = warden.get("st").unwrap();
    let rotated_at = warden
        .events("st", None)
        .unwrap()
        .iter()
        .rev()
        .find(|e| e.from.as_deref() == Some("refreshing") && e.to == "valid")
        .unwrap()
        .at_ms;
    let when = tokenwarden::rfc3339::format(rotated_at - rotated_at.rem_euclid(1000));

    for extra in [
        &["--replace"][..],
        &["--id", "st-copy"],
        &["--id", "st-copy", "--replace"],
    ] {
        let out = import(&env, &file, extra);
        assert_eq!(code(&out), 1, "{extra:?}: {}", text(&out.stderr));
        let line = last_line(&out);
        for needle in ["rotated away", &when, "revoke", "'st'"] {
            assert!(line.contains(needle), "{extra:?}: {needle:?} in {line}");
        }
        assert!(!text(&out.stderr).contains(&g.refresh_token));
    }
    // The Codex auth.json of the same login too.
    let auth = write(&env, "auth.json", &g.codex_auth_json());
    let out = import(&env, &auth, &["--id", "st", "--replace"]);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));

    let srv = InProcess::start(&env, &[KEY], 2);
    let record = std::fs::read_to_string(&file).unwrap();
    for path in ["/v1/credentials?replace=1", "/v1/credentials?id=st-copy"] {
        let a = srv.client.post(path, &record).expect(409);
        assert_eq!(a.code(), "refresh_token_spent", "{path}: {}", a.body);
        assert!(a.message().contains(&when), "{}", a.body);
        assert!(!a.body.contains(&g.refresh_token));
    }

    let after = warden.get("st").unwrap();
    assert_eq!(
        after.status.version, before.status.version,
        "nothing changed"
    );
    assert_eq!(after.refresh_token, before.refresh_token);
    assert!(warden.get("st-copy").is_err());
    assert_eq!(
        env.fake.presented_refresh_tokens("st"),
        std::slice::from_ref(&g.refresh_token)
    );
    assert_eq!(env.fake.stats().reuse_detected, 0);
}

/// Item 3: the refresh token another id holds is refused, naming that id —
/// else `token a & token b` sends it twice and one of them dies.
#[test]
fn one_refresh_token_under_two_ids_is_refused_naming_the_holder() {
    let env = Env::new();
    let g = env.login("a", 3600);
    let file = env.dir.path().join("a.json");
    for (path, extra) in [
        (file.clone(), &["--id", "b"][..]),
        (file.clone(), &["--id", "b", "--replace"]),
        (
            write(&env, "auth.json", &g.codex_auth_json()),
            &["--id", "b"],
        ),
    ] {
        let out = import(&env, &path, extra);
        assert_eq!(code(&out), 1, "{extra:?}: {}", text(&out.stderr));
        let line = last_line(&out);
        assert!(line.contains("'a'"), "names the holder: {line}");
        assert!(!text(&out.stderr).contains(&g.refresh_token));
    }
    let out = env.run(&["show", "b"]);
    assert_eq!(code(&out), 3, "no credential b");

    let srv = InProcess::start(&env, &[KEY], 2);
    let a = srv
        .client
        .post(
            "/v1/credentials?id=b",
            &std::fs::read_to_string(&file).unwrap(),
        )
        .expect(409);
    assert_eq!(a.code(), "refresh_token_in_use", "{}", a.body);
    assert!(a.message().contains("'a'"), "{}", a.body);

    // After a rotation the new token is just as unique: an export of `a`
    // imported as `b` is refused too.
    let w = env.warden();
    w.refresh("a", false).unwrap();
    let out = env.run(&["export", "a", "--format", "codex"]);
    assert_eq!(code(&out), 0);
    let exported = env.dir.path().join("exported.json");
    std::fs::write(&exported, &out.stdout).unwrap();
    let out = import(&env, &exported, &["--id", "b"]);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    assert!(last_line(&out).contains("'a'"), "{}", last_line(&out));
    // Moving it is delete + import.
    assert_eq!(code(&env.run(&["delete", "a"])), 0);
    let out = import(&env, &exported, &["--id", "b"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
}

/// Item 13: an import without `expires_at` takes the access token's JWT
/// `exp`, in all three formats, and so is served without a refresh.
#[test]
fn an_import_without_an_expiry_takes_the_access_tokens_jwt_exp() {
    let env = Env::new();
    let url = env.fake.token_url();
    let own = env.fake.new_family("own");
    let mut record = own.import_json("own", "codex", &url);
    record.as_object_mut().unwrap().remove("expires_at");
    let cpa = env.fake.new_family("cpa");
    let cliproxy = json!({
        "type": "codex", "access_token": cpa.access_token, "refresh_token": cpa.refresh_token,
        "id_token": cpa.id_token, "account_id": cpa.account_id, "email": cpa.email,
    });
    let codex = env.fake.new_family("cdx");
    for (id, value, grant) in [
        ("own", record, &own),
        ("cpa", cliproxy, &cpa),
        ("cdx", codex.codex_auth_json(), &codex),
    ] {
        let out = import(
            &env,
            &write(&env, &format!("{id}.json"), &value),
            &["--id", id],
        );
        assert_eq!(code(&out), 0, "{id}: {}", text(&out.stderr));
        let summary = json(&env.run(&["show", id, "--json"]));
        assert_eq!(summary["expires_at"], grant.expires_at, "{id}: {summary}");
        assert_eq!(summary["state"], "valid", "{id}");
        let out = env.run(&["token", id]);
        assert_eq!(code(&out), 0, "{id}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), grant.access_token, "{id}");
    }
    assert_eq!(env.fake.stats().token_requests, 0, "no refresh before use");
}

/// The v1 `credentials` columns of one row.
fn insert_v1_row(conn: &rusqlite::Connection, id: &str, refresh_token: &str) {
    conn.execute(
        "INSERT INTO credentials (id, provider, state, version, access_token, refresh_token, \
         expires_at_ms, token_url, failures, created_ms, updated_ms) \
         VALUES (?1, 'codex', 'valid', 1, NULL, ?2, NULL, NULL, 0, 1, 1)",
        rusqlite::params![id, refresh_token],
    )
    .unwrap();
}

fn fingerprints(env: &Env) -> Vec<(String, Option<String>)> {
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, refresh_fp FROM credentials ORDER BY id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

/// Schema migration: rows of a schema-version-1 database get their refresh
/// tokens' fingerprints when this build opens it (plain and encrypted), and
/// a duplicate is refused from then on.
#[test]
fn a_schema_v1_database_gets_fingerprints_and_then_refuses_a_duplicate() {
    use tokenwarden::seal::{generate_key, Sealer};

    for encrypted in [false, true] {
        let env = Env::new();
        let g = env.fake.new_family("v1");
        let key = generate_key();
        {
            let conn = rusqlite::Connection::open(&env.db).unwrap();
            conn.execute_batch(include_str!("../schema.sql")).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            let stored = if encrypted {
                let sealer = Sealer::from_base64(&key).unwrap();
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('key_check', ?1)",
                    [sealer.seal("", "key_check", "tokenwarden")],
                )
                .unwrap();
                sealer.seal("old", "refresh_token", &g.refresh_token)
            } else {
                g.refresh_token.clone()
            };
            insert_v1_row(&conn, "old", &stored);
        }
        let run = |args: &[&str]| {
            let mut c = env.cmd();
            if encrypted {
                c.env("TOKENWARDEN_ENCRYPTION_KEY", &key);
            }
            c.args(args).output().unwrap()
        };
        let out = run(&["list"]);
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        let fps = fingerprints(&env);
        assert_eq!(fps.len(), 1);
        let fp = fps[0].1.clone().expect("a fingerprint was computed");
        assert_eq!(fp.len(), 64, "{fp}");
        assert!(!fp.contains(&g.refresh_token));
        let fp_key: String = rusqlite::Connection::open(&env.db)
            .unwrap()
            .query_row(
                "SELECT value FROM meta WHERE key = 'fingerprint_key'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            fp_key.starts_with("tw1:"),
            encrypted,
            "the fingerprint key is sealed in an encrypted database"
        );

        let record = json!({"id": "new", "provider": "codex", "refresh_token": g.refresh_token});
        let path = write(&env, "dup.json", &record);
        let out = run(&["import", path.to_str().unwrap()]);
        assert_eq!(
            code(&out),
            1,
            "encrypted={encrypted}: {}",
            text(&out.stderr)
        );
        assert!(last_line(&out).contains("'old'"), "{}", last_line(&out));
        assert_eq!(fingerprints(&env).len(), 1);
    }
}
