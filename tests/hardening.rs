//! Regression tests for the ways an outside review broke the promise
//! ("one refresh per need, the rotated token is never lost, a rejected token
//! is never served again") on paths the first tests did not take: clocks
//! stepped under one process, short-lived tokens, a process with a bad
//! setting, a reject during an operator's forced retry, and a short
//! `Retry-After`. Each failed on the code before its fix.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::fake_oauth::Fault;
use crate::common::tw::{code, json, text, Env, Tuning};
use tokenwarden::state::State;
use tokenwarden::Error;

/// Debian's libfaketime (package `faketime`, installed by `.ci/run`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// `cmd` with its wall clock alone moved by `offset` (e.g. `+60s`): the
/// monotonic and boot-time clocks are left alone, as an NTP step or a VM
/// resume with a wrong clock would. `None` (with a note) if libfaketime is
/// not installed here; in CI it must be.
pub(crate) fn with_wall_clock(mut cmd: Command, offset: &str) -> Option<Command> {
    if !Path::new(LIBFAKETIME).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the faketime package (.ci/run does)"
        );
        eprintln!("skipped: {LIBFAKETIME} not installed (apt-get install faketime)");
        return None;
    }
    cmd.env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("FAKETIME_DONT_RESET", "1");
    Some(cmd)
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A lease deadline in `env` long enough for a slow upstream answer.
fn slow_lease() -> Tuning {
    Tuning {
        request_timeout: 8.0,
        attempts: 1,
        lease_ttl: 12.0,
        ..Tuning::default()
    }
}

/// Item 6, forward: a process whose wall clock alone is 60 s ahead must not
/// see a live lease as expired and take it over (before: it did, and sent
/// the owner's refresh token a second time).
#[test]
fn a_process_whose_wall_clock_is_ahead_does_not_take_over_a_live_lease() {
    let env = Env::with(slow_lease());
    env.login("ahead", 60);
    env.fake.set_latency(Duration::from_millis(2500));
    let warden = Arc::new(env.warden());
    let w = warden.clone();
    let owner = thread::spawn(move || w.token("ahead", Duration::ZERO));
    wait_until("the owner's request", Duration::from_secs(5), || {
        env.fake.stats().in_flight == 1
    });
    let Some(mut cmd) = with_wall_clock(env.cmd(), "+60s") else {
        return;
    };
    let out = cmd.args(["token", "ahead"]).output().unwrap();
    let g = owner.join().unwrap().expect("the owner's refresh");
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), g.access_token.expose());
    let stats = env.fake.stats();
    assert_eq!(stats.token_requests, 1, "one refresh, by the lease's owner");
    assert_eq!(stats.reuse_detected, 0);
    env.fake.assert_no_reuse_after_success();
}

/// A CLI owner whose wall clock alone is moved by `offset` takes the lease
/// of `id` against a slow upstream; an in-test caller with the right time
/// must wait for it and adopt its refresh: one request, no reuse.
fn an_owner_with_a_stepped_clock_keeps_its_lease(id: &str, offset: &str) {
    let env = Env::with(slow_lease());
    env.login(id, 60);
    env.fake.set_latency(Duration::from_millis(2500));
    let Some(mut cmd) = with_wall_clock(env.cmd(), offset) else {
        return;
    };
    let owner = cmd
        .args(["token", id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let warden = env.warden();
    wait_until("the owner's request", Duration::from_secs(5), || {
        env.fake.stats().in_flight == 1
    });
    assert_eq!(warden.get(id).unwrap().status.state, State::Refreshing);
    let g = warden.token(id, Duration::ZERO).expect("token");
    let out = owner.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{offset}: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), g.access_token.expose());
    let stats = env.fake.stats();
    assert_eq!(
        stats.token_requests, 1,
        "{offset}: one refresh, by the lease's owner"
    );
    assert_eq!(stats.reuse_detected, 0);
}

/// Item 6, backward: an owner whose wall clock alone is 60 s behind must
/// not be robbed of its lease by processes with the right time (before:
/// its lease read as expired to everyone else the moment it was written).
#[test]
fn an_owner_whose_wall_clock_is_behind_keeps_its_lease() {
    an_owner_with_a_stepped_clock_keeps_its_lease("behind", "-60s");
}

/// Item 6, the owner ahead: an owner whose wall clock alone is 60 s ahead
/// commits within its lease, and the others adopt its refresh.
#[test]
fn an_owner_whose_wall_clock_is_ahead_commits_within_its_lease() {
    an_owner_with_a_stepped_clock_keeps_its_lease("ahead-owner", "+60s");
}

/// Item 6: a lease written by a process of another boot (its boot-time
/// clock is not this one) or with a deadline out of range reads as expired:
/// a dead owner's credential never stays stuck.
#[test]
fn a_lease_on_another_clock_or_out_of_range_is_taken_over() {
    let env = Env::new();
    env.login("stuck", 60);
    for (clock, ms) in [
        ("lease_clock + 1", "lease_until_ms"),
        ("lease_clock", "lease_until_ms + 86400000"),
    ] {
        let warden = env.warden();
        // A claim as a crashed process left it, then its clock or deadline
        // altered under it (a reboot, a corrupt row).
        let lease = tokenwarden::state::Lease {
            owner: "ghost".into(),
            id: "ghost-lease".into(),
            until: tokenwarden::clock::now().plus(60_000).lease,
        };
        let row = warden.get("stuck").unwrap();
        let t = tokenwarden::state::apply(
            &row.status,
            &tokenwarden::state::Event::Claim {
                lease,
                need: tokenwarden::state::Need::Refresh {
                    since_ms: i64::MAX,
                    force: true,
                },
            },
            tokenwarden::clock::now(),
            &warden.config().policy,
        )
        .unwrap();
        warden
            .store()
            .apply(
                "stuck",
                &t,
                tokenwarden::testing::Write::STATE_ONLY,
                "ghost",
                0,
            )
            .unwrap()
            .unwrap();
        drop(warden);
        let conn = rusqlite::Connection::open(&env.db).unwrap();
        conn.execute(
            &format!("UPDATE credentials SET lease_clock = {clock}, lease_until_ms = {ms}"),
            [],
        )
        .unwrap();
        drop(conn);
        let out = env.run(&["token", "stuck", "--wait", "1"]);
        assert_eq!(code(&out), 0, "{clock} {ms}: {}", text(&out.stderr));
        let summary = json(&env.run(&["show", "stuck", "--json"]));
        assert_eq!(summary["state"], "valid", "{clock} {ms}");
    }
}

/// Item 8: a token that lives no longer than `refresh_ahead` (120 s here,
/// 300 s by default) is refreshed once per lifetime, not on every call; its
/// summary says `valid` right after a refresh, and the sweep leaves it.
#[test]
fn a_token_shorter_lived_than_refresh_ahead_is_refreshed_once_per_lifetime() {
    let env = Env::new();
    env.fake.set_expires_in(120);
    env.login("short", 120);
    let warden = env.warden();
    let first = warden.token("short", Duration::ZERO).unwrap();
    for _ in 0..4 {
        let g = warden.token("short", Duration::ZERO).unwrap();
        assert_eq!(g.access_token.expose(), first.access_token.expose());
    }
    for _ in 0..2 {
        let out = env.run(&["token", "short"]);
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), first.access_token.expose());
    }
    let summary = json(&env.run(&["show", "short", "--json"]));
    assert_eq!(summary["state"], "valid");
    let out = env.run(&["sweep", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["refreshed"], serde_json::json!([]));
    assert!(
        env.fake.stats().token_requests <= 1,
        "{:?}",
        env.fake.stats()
    );
}

/// Item 9: one process with a bad endpoint setting fails alone — exit 2
/// naming the setting — and leaves the credential as it was for everyone
/// else; nothing goes upstream. (Before: it wrote `dead invalid_config`.)
#[test]
fn a_bad_endpoint_setting_is_that_process_error_and_kills_nothing() {
    let env = Env::new();
    let grant = env.login("cfg", 0);
    for bad in [
        "http://token.example.invalid/oauth/token",
        "ftp://127.0.0.1/token",
        "not a url",
    ] {
        let out = env
            .cmd()
            .env("TOKENWARDEN_CODEX_TOKEN_URL", bad)
            .args(["token", "cfg"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{bad}: {}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(stderr.contains("TOKENWARDEN_CODEX_TOKEN_URL"), "{stderr}");
        assert!(!stderr.contains(&grant.refresh_token), "{stderr}");
    }
    assert_eq!(env.fake.stats().token_requests, 0, "nothing went upstream");
    let summary = json(&env.run(&["show", "cfg", "--json"]));
    assert_ne!(summary["state"], "dead");
    let out = env.run(&["token", "cfg"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
}

/// Item 9, library side: a `Config` with a bad endpoint is refused when a
/// `Warden` is opened with it, naming the setting.
#[test]
fn a_warden_with_a_bad_endpoint_is_refused_at_open() {
    let env = Env::new();
    let mut config = env.config();
    config.endpoints.codex_token = "http://token.example.invalid/".into();
    let Err(err) = tokenwarden::Warden::open(&env.db, config) else {
        panic!("a Warden opened with a bad endpoint");
    };
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(
        err.to_string().contains("TOKENWARDEN_CODEX_TOKEN_URL"),
        "{err}"
    );
    assert_eq!(err.exit_code(), 2);
}

/// Item 10: a reject that arrives while an operator's forced refresh
/// retries a dead credential is refused as dead; the retry failing
/// transiently leaves the credential dead, not revived as `rejected`.
#[test]
fn a_reject_during_a_forced_retry_of_a_dead_credential_does_not_revive_it() {
    let env = Env::new();
    let grant = env.login("gone", 0);
    env.fake
        .push_fault(Fault::status(400, r#"{"error":"invalid_grant"}"#));
    let warden = Arc::new(env.warden());
    assert!(matches!(
        warden.token("gone", Duration::ZERO),
        Err(Error::Dead { .. })
    ));
    env.fake.set_latency(Duration::from_millis(800));
    env.fake.push_fault(Fault::status(503, "busy"));
    let w = warden.clone();
    let forced = thread::spawn(move || w.refresh("gone", true));
    wait_until("the forced retry", Duration::from_secs(5), || {
        env.fake.stats().in_flight == 1
    });
    let rejected = warden.reject("gone", &grant.access_token);
    assert!(matches!(rejected, Err(Error::Dead { .. })), "{rejected:?}");
    assert!(forced.join().unwrap().is_err());
    let row = warden.get("gone").unwrap();
    assert_eq!(row.status.state, State::Dead);
    let out = env.run(&["token", "gone"]);
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
}

/// Item 12: a short `Retry-After` that fits in the lease and the caller's
/// wait is waited out and retried within the call (counting as an
/// attempt); before, any `Retry-After` ended the call with 503.
#[test]
fn a_short_retry_after_is_waited_out_within_the_call() {
    let env = Env::with(Tuning {
        request_timeout: 2.0,
        attempts: 2,
        lease_ttl: 7.0,
        ..Tuning::default()
    });
    env.login("ra", 0);
    env.fake
        .push_fault(Fault::retry_after(429, r#"{"error":"slow_down"}"#, "1"));
    let started = Instant::now();
    let out = env.run(&["token", "ra"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(env.fake.stats().token_requests, 2);
    let summary = json(&env.run(&["show", "ra", "--json"]));
    assert_eq!(summary["state"], "valid");
    assert_eq!(summary["failures"], 0);

    // One that does not fit ends the call, recorded as the backoff.
    env.login("ra-long", 0);
    env.fake
        .push_fault(Fault::retry_after(429, r#"{"error":"slow_down"}"#, "30"));
    let out = env.run(&["token", "ra-long"]);
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    let summary = json(&env.run(&["show", "ra-long", "--json"]));
    let next = summary["next_attempt_at"].as_i64().unwrap();
    assert!(next >= crate::common::tw::now() + 28, "{summary}");
}

/// SIGTERM (or Ctrl-C's SIGINT) to a one-shot command that holds a refresh
/// lease: it finishes committing the rotated tokens before exiting, so the
/// rotation is not lost (before: it died at once, and the next refresh sent
/// the spent token). A command waiting on nothing exits at once.
#[test]
fn sigterm_to_a_one_shot_command_mid_refresh_keeps_the_rotation() {
    for (args, signal) in [(&["token", "one"][..], "-TERM"), (&["sweep"][..], "-INT")] {
        let env = Env::with(slow_lease());
        env.login("one", 0);
        env.fake.set_latency(Duration::from_millis(1500));
        let child = env
            .cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("the refresh in flight", Duration::from_secs(5), || {
            env.fake.stats().in_flight == 1
        });
        let kill = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.code().is_some(),
            "{args:?} died by the signal mid-refresh: {:?} {}",
            out.status,
            text(&out.stderr)
        );
        let family = env.fake.family_state("one");
        assert_eq!(
            family.rotations,
            1,
            "{args:?}: {:?} {}",
            out.status,
            text(&out.stderr)
        );
        let row = env.warden().get("one").unwrap();
        assert_eq!(
            row.refresh_token.expose(),
            family.current_refresh_token,
            "{args:?}: the rotated refresh token was committed before exiting"
        );
        env.fake.set_latency(Duration::ZERO);
        let out = env.run(&["refresh", "one"]);
        assert_eq!(code(&out), 0, "{args:?}: {}", text(&out.stderr));
        assert_eq!(env.fake.stats().reuse_detected, 0, "{args:?}");
    }
}
