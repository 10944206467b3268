//! A hostile review of the fixes of issue 11: each test here is a way the
//! promise ("a rotating refresh token is used exactly once and never lost;
//! a rejected token is never served; no secret leaks") still breaks. Each
//! one FAILS on the tree it was written against, except those marked HELD
//! (attacks that did not break anything, kept as guards).

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::scripted::{answer, import_at, wait_for_lease, write, Scripted};
use crate::common::tw::{code, now, text, Env};
use serde_json::Value;
use tokenwarden::state::State;
use tokenwarden::Warden;

/// `delete` takes no notice of a live refresh lease. An operator who
/// deletes a credential and re-imports the same auth.json (to "reset" it)
/// while a refresh of it is in flight: the re-import is accepted (the
/// in-flight token was never recorded as spent, and its fingerprint went
/// with the deleted row), the owner's commit is fenced out (the new row
/// has no lease) so the rotated token is discarded, and the row now holds
/// a refresh token upstream has already rotated away. The next refresh
/// sends it again: `refresh_token_reused`, login burned.
#[test]
fn delete_then_reimport_during_a_live_lease_resends_the_refresh_token() {
    let env = Env::new();
    let g = env.login("acct", 60);
    let file = env.dir.path().join("acct.json");
    let warden = Arc::new(env.warden());

    env.fake.set_latency(Duration::from_millis(1200));
    let w = warden.clone();
    let owner = thread::spawn(move || w.token("acct", Duration::ZERO));
    wait_for_lease(&warden, "acct");

    // The operator's "reset": delete, then import the same file again.
    let out = env.run(&["delete", "acct"]);
    let deleted = code(&out) == 0;
    let out2 = env.run(&["import", file.to_str().unwrap()]);
    let reimported = code(&out2) == 0;
    let _ = owner.join().unwrap();
    env.fake.set_latency(Duration::ZERO);

    // Whatever the CLI said, one thing must hold: the refresh token that
    // was in flight is never presented a second time.
    let _ = warden.token("acct", Duration::ZERO);
    let presented = env.fake.presented_refresh_tokens("acct");
    let stats = env.fake.stats();
    assert_eq!(
        stats.reuse_detected,
        0,
        "delete ok={deleted} ({}), re-import ok={reimported} ({}); presented {presented:?}; \
         the login was burned: {stats:?}",
        text(&out.stderr).trim(),
        text(&out2.stderr).trim()
    );
    assert_eq!(
        presented.iter().filter(|t| **t == g.refresh_token).count(),
        1,
        "the first refresh token was sent more than once: {presented:?}"
    );
}

/// `delete` during a live lease, then nothing else: the owner's commit of
/// the rotated tokens finds no row, gets `NotFound`, and — since the tokens
/// were rotated — retries it forever (every 2 s, "until it lands or the
/// lease is seen lost": neither ever happens to a deleted row). The caller
/// of `token` never returns, however short its wait; a `serve` would never
/// finish its SIGTERM drain either.
#[test]
fn delete_during_a_live_lease_hangs_the_owner_forever() {
    let env = Env::new();
    env.login("gone", 60);
    let warden = Arc::new(env.warden());

    env.fake.set_latency(Duration::from_millis(800));
    let (tx, rx) = std::sync::mpsc::channel();
    let w = warden.clone();
    thread::spawn(move || {
        let r = w.token_within("gone", Duration::ZERO, Duration::from_secs(1));
        let _ = tx.send(r.map(|g| g.version));
    });
    wait_for_lease(&warden, "gone");
    let out = env.run(&["delete", "gone"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));

    // Lease 3 s, request timeout 2 s, wait 1 s: any sane outcome (an error,
    // "lease lost", "not found") is known within a few seconds.
    match rx.recv_timeout(Duration::from_secs(12)) {
        Ok(r) => eprintln!("owner returned: {r:?}"),
        Err(_) => panic!(
            "the owner of a lease on a deleted credential is still retrying its commit \
             12 s later (lease 3 s, caller's wait 1 s): it never returns"
        ),
    }
}

/// Leases are judged on CLOCK_BOOTTIME, which a time namespace offsets
/// (`unshare --time --boottime`, CRIU-restored containers): the boot id is
/// the same, so the clocks are taken to be one. A refresh run by a process
/// whose boot-time clock is 600 s behind writes a lease that every other
/// process sees as expired the moment it is written, and the next caller
/// takes it over and sends the same refresh token while it is in flight.
#[test]
fn a_lease_written_in_a_time_namespace_is_taken_over_while_live() {
    if std::process::Command::new("unshare")
        .args(["-r", "--time", "--boottime", "-600", "true"])
        .status()
        .map_or(true, |s| !s.success())
    {
        eprintln!("no time namespaces here; skipped");
        return;
    }
    let env = Env::new();
    let g = env.login("ns", 60);
    let warden = env.warden();

    env.fake.set_latency(Duration::from_millis(1500));
    let cmd = env.cmd();
    let prog = cmd.get_program().to_owned();
    let mut ns = std::process::Command::new("unshare");
    ns.args(["-r", "--time", "--boottime", "-600"])
        .arg(prog)
        .args(["refresh", "ns"]);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => ns.env(k, v),
            None => ns.env_remove(k),
        };
    }
    ns.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = ns.spawn().unwrap();
    wait_for_lease(&warden, "ns");
    // An ordinary caller on the host, moments later.
    let _ = warden.token("ns", Duration::from_secs(3600));
    let _ = child.wait();
    let presented = env.fake.presented_refresh_tokens("ns");
    assert_eq!(
        presented.iter().filter(|t| **t == g.refresh_token).count(),
        1,
        "the refresh token in flight was sent again by a second process: {presented:?}, {:?}",
        env.fake.stats()
    );
}

/// A 2xx answer that carries a NEW refresh token but no usable access
/// token (or an `"error": ""` member beside the tokens) is classified as a
/// transient failure, and the refresh token in it is thrown away — though
/// upstream has just rotated, and the old token is spent. The row keeps
/// the spent token; the next refresh sends it again (reuse). A refresh
/// token received in a 2xx answer is the only copy of the login.
#[test]
fn a_2xx_answer_with_a_new_refresh_token_but_no_access_token_loses_the_rotation() {
    let env = Env::new();
    let up = Scripted::start(vec![Box::new(|_rt, conn| {
        answer(
            conn,
            "200 OK",
            r#"{"access_token":"","refresh_token":"rt-2-rotated","token_type":"Bearer","expires_in":3600}"#,
        )
    })]);
    import_at(&env, "lie", "rt-1-original", 60, &up.url());
    let warden = env.warden();
    let r = warden.token("lie", Duration::ZERO);
    let row = warden.get("lie").unwrap();
    assert_eq!(
        row.refresh_token.expose(),
        "rt-2-rotated",
        "upstream rotated rt-1 into rt-2 (token call: {:?}); the row still holds the spent \
         one, presented: {:?}",
        r.map(|g| g.version),
        up.presented()
    );
}

/// The same with `"error": ""` beside complete tokens.
#[test]
fn a_2xx_answer_with_tokens_and_an_empty_error_member_loses_the_rotation() {
    let env = Env::new();
    let up = Scripted::start(vec![Box::new(|_rt, conn| {
        answer(
            conn,
            "200 OK",
            r#"{"access_token":"at-new-123","refresh_token":"rt-2-rotated","expires_in":3600,"error":""}"#,
        )
    })]);
    import_at(&env, "lie2", "rt-1-original", 60, &up.url());
    let warden = env.warden();
    let r = warden.token("lie2", Duration::ZERO);
    let row = warden.get("lie2").unwrap();
    assert_eq!(
        row.refresh_token.expose(),
        "rt-2-rotated",
        "token call: {:?}; presented: {:?}",
        r.map(|g| g.version),
        up.presented()
    );
}

/// HELD (passes; kept as a guard): a slow upstream that sends its head at once and then trickles the body
/// past the request timeout and the lease: the owner must give up (its
/// timeout is "whole request") before the lease ends, so that no one takes
/// over while its request may still be answered.
#[test]
fn a_trickled_body_does_not_outlive_the_lease() {
    let env = Env::new();
    let up = Scripted::start(vec![
        Box::new(|_rt, conn| {
            let body = br#"{"access_token":"at-new-123","refresh_token":"rt-2-rotated","expires_in":3600}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = std::io::Write::write_all(conn, head.as_bytes());
            for b in body.iter() {
                if std::io::Write::write_all(conn, &[*b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(60));
            }
        }),
        Box::new(|_rt, conn| {
            answer(
                conn,
                "200 OK",
                r#"{"access_token":"at-3-xyz","refresh_token":"rt-3","expires_in":3600}"#,
            )
        }),
    ]);
    import_at(&env, "slow", "rt-1-original", 60, &up.url());
    let warden = Arc::new(env.warden());
    let w = warden.clone();
    let owner = thread::spawn(move || w.token("slow", Duration::ZERO).map(|g| g.version));
    wait_for_lease(&warden, "slow");
    let started = Instant::now();
    let owner_result = owner.join().unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "the owner worked {elapsed:?} on one attempt (timeout 2 s, lease 3 s): {owner_result:?}"
    );
}

/// SIGTERM to a one-shot command mid-refresh: `tokenwarden sweep` is
/// shipped as a systemd oneshot unit on a timer (stopped with SIGTERM on
/// `systemctl stop`, on shutdown, or by a cron `timeout`). It installs no
/// handler: the default action kills it after upstream rotated the token and
/// before the commit; after the lease, the next caller presents the spent
/// token and the login is revoked. `serve` waits for its leases on SIGTERM;
/// the CLI could too.
#[test]
fn sigterm_to_a_sweep_mid_refresh_loses_the_rotation() {
    let env = Env::new();
    let g = env.login("cron", 60);
    let warden = env.warden();
    env.fake.set_latency(Duration::from_millis(1500));
    let mut child = env
        .cmd()
        .args(["sweep"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_lease(&warden, "cron");
    // Let the request reach upstream, then stop the unit.
    thread::sleep(Duration::from_millis(500));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    env.fake.set_latency(Duration::ZERO);
    // After the lease (3 s), any caller.
    thread::sleep(Duration::from_millis(3200));
    let r = warden.token("cron", Duration::ZERO);
    let presented = env.fake.presented_refresh_tokens("cron");
    assert_eq!(
        env.fake.stats().reuse_detected,
        0,
        "sweep exited {status:?}; then token: {:?}; presented {presented:?} (first {})",
        r.map(|g| g.version),
        g.refresh_token
    );
}

/// A token reported rejected comes back through `import --replace`. With a
/// refresh token that does not rotate (Google-style), a replace carrying
/// the stored refresh token takes the file's access token when it
/// "expires later" than the stored one — with no memory that this very
/// token was reported rejected (it was current at the time, and a refresh
/// has since replaced it). A later-expiring old token is ordinary: the
/// provider's refreshed tokens live shorter than the login's first one, or
/// the rejected token was revoked early (password change) long before its
/// `exp`. The re-import turns the credential back to serving it.
#[test]
fn a_reimport_with_the_same_refresh_token_brings_back_a_rejected_access_token() {
    let env = Env::new();
    env.fake.set_rotation(false);
    let g = env.login("goog", 3600);
    let file = env.dir.path().join("goog.json");
    let warden = env.warden();
    // Upstream revokes AT1 early; the client reports it.
    env.fake.set_expires_in(1800);
    let fresh = warden.reject("goog", &g.access_token).unwrap();
    assert_ne!(fresh.access_token.expose(), g.access_token);

    // The operator re-imports the login file (same refresh token).
    let out = env.run(&["import", file.to_str().unwrap(), "--replace"]);
    eprintln!("replace: exit {} {}", code(&out), text(&out.stderr));

    let served = warden.token("goog", Duration::ZERO).unwrap();
    assert!(
        served.access_token.expose() != g.access_token,
        "the access token reported rejected is served again (state {:?})",
        warden.get("goog").unwrap().status.state
    );
}

/// HELD (passes; kept as a guard): upstream answers a's refresh with the
/// refresh token b holds. The unique fingerprint index must not make the
/// commit of a's rotation fail (and the token be lost).
#[test]
fn a_rotation_into_a_token_another_id_holds_still_commits() {
    let env = Env::new();
    let up = Scripted::start(vec![Box::new(|_rt, conn| {
        answer(
            conn,
            "200 OK",
            r#"{"access_token":"at-a-2-xyz","refresh_token":"rt-b-held","expires_in":3600}"#,
        )
    })]);
    import_at(&env, "a", "rt-a-1", 60, &up.url());
    import_at(&env, "b", "rt-b-held", 3600, &up.url());
    let warden = env.warden();
    let g = warden.token("a", Duration::ZERO).unwrap();
    assert_eq!(g.access_token.expose(), "at-a-2-xyz");
    let row = warden.get("a").unwrap();
    assert_eq!(row.refresh_token.expose(), "rt-b-held");
    assert_eq!(row.status.state, State::Valid);
    // And a process opening the database afterwards still works.
    let out = env.run(&["token", "b"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
}

/// `rekey` while a refresh is in flight in a running process (the server
/// an operator forgot to stop, or one on another host of a shared volume).
/// `rekey` takes no notice of leases. The owner, still on the old key,
/// cannot even read the row to fence its commit (the access token column
/// is now sealed with the new key), so its commit of the rotated tokens
/// fails, and — being rotated tokens — is retried forever; meanwhile the
/// lease runs out, a process with the new key takes over and presents the
/// refresh token upstream already rotated: login burned, owner stuck.
#[test]
fn rekey_during_a_refresh_burns_the_login() {
    let env = Env::new();
    let k1 = text(&env.run(&["keygen"]).stdout).trim().to_owned();
    let k2 = text(&env.run(&["keygen"]).stdout).trim().to_owned();
    let g = env.fake.new_family("sealed");
    let mut record = g.import_json("sealed", "codex", &env.fake.token_url());
    record["expires_at"] = Value::from(now() + 60);
    let path = write(&env, "sealed.json", &record);
    let out = env
        .cmd()
        .env("TOKENWARDEN_ENCRYPTION_KEY", &k1)
        .args(["import", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));

    let mut config = env.config();
    config.encryption_key = Some(tokenwarden::secret::Secret::new(k1.clone()));
    let warden = Arc::new(Warden::open(&env.db, config).unwrap());
    env.fake.set_latency(Duration::from_millis(1500));
    let (tx, rx) = std::sync::mpsc::channel();
    let w = warden.clone();
    thread::spawn(move || {
        let _ = tx.send(w.token("sealed", Duration::ZERO).map(|g| g.version));
    });
    wait_for_lease(&warden, "sealed");
    let out = env
        .cmd()
        .env("TOKENWARDEN_ENCRYPTION_KEY", &k1)
        .env("TOKENWARDEN_NEW_ENCRYPTION_KEY", &k2)
        .args(["rekey"])
        .output()
        .unwrap();
    let rekeyed = code(&out) == 0;
    let rekey_said = text(&out.stderr);
    // A process with the new key, once the lease (3 s) has run out.
    thread::sleep(Duration::from_millis(3500));
    env.fake.set_latency(Duration::ZERO);
    let out = env
        .cmd()
        .env("TOKENWARDEN_ENCRYPTION_KEY", &k2)
        .args(["token", "sealed"])
        .output()
        .unwrap();
    let owner = rx.recv_timeout(Duration::from_secs(1));
    let presented = env.fake.presented_refresh_tokens("sealed");
    assert_eq!(
        env.fake.stats().reuse_detected,
        0,
        "rekey ok={rekeyed} ({}); owner after 5 s: {owner:?}; new-key token: exit {} {}; \
         presented {presented:?}",
        rekey_said.trim(),
        code(&out),
        text(&out.stderr).trim()
    );
}
