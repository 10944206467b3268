//! `tokenwarden sweep` and quota snapshots, against the fake OAuth and
//! usage servers over loopback, with several processes on one database.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::common::fake_oauth::Fault;
use crate::common::tw::{code, json, now, text, Env};
use serde_json::{json, Value};
use tokenwarden::import::{parse_import, ImportOptions};
use tokenwarden::sweep::{start_background, sweep, SweepOptions};

/// Imports `n` credentials named `{prefix}{i}` in one go; each is a new
/// upstream login whose token expires in `expires_in` seconds, or (with
/// `bogus`) a refresh token upstream does not know.
fn bulk(env: &Env, prefix: &str, n: usize, expires_in: i64, bogus: bool) -> Vec<String> {
    let mut records = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}{i:03}");
        let g = env.fake.new_family(&id);
        let mut r = g.import_json(&id, "codex", &env.fake.token_url());
        r["expires_at"] = Value::from(now() + expires_in);
        if bogus {
            r["refresh_token"] = Value::from(format!("unknown-{id}"));
        }
        records.push(r);
        ids.push(id);
    }
    let bytes = Value::Array(records).to_string();
    let creds = parse_import(bytes.as_bytes(), &ImportOptions::default(), 0).unwrap();
    env.warden().import(&creds, false).unwrap();
    ids
}

fn ids(v: &Value, key: &str) -> HashSet<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

/// A sweep refreshes exactly the due credentials once, reports dead and skipped ones, and a second sweep finds nothing due.
#[test]
fn a_sweep_refreshes_exactly_the_due_credentials_once() {
    let env = Env::new();
    let due = bulk(&env, "due", 100, 60, false);
    let fresh = bulk(&env, "fresh", 150, 7200, false);
    let doomed = bulk(&env, "doomed", 50, 60, true);
    env.fake.set_latency(Duration::from_millis(5));

    let out = env.run(&["sweep", "--json", "--concurrency", "8"]);
    assert_eq!(
        code(&out),
        4,
        "dead credentials → exit 4: {}",
        text(&out.stderr)
    );
    let report = json(&out);
    assert_eq!(ids(&report, "refreshed"), due.iter().cloned().collect());
    assert_eq!(ids(&report, "dead"), doomed.iter().cloned().collect());
    assert_eq!(ids(&report, "skipped"), fresh.iter().cloned().collect());
    assert!(report["failed"].as_array().unwrap().is_empty());
    assert_eq!(report["quota"], json!([]));
    assert_eq!(
        env.fake.stats().token_requests,
        150,
        "100 refreshes + 50 refusals"
    );

    // A second sweep finds nothing due; dead ones are reported, not retried.
    let out = env.run(&["sweep", "--json"]);
    assert_eq!(code(&out), 4);
    let report = json(&out);
    assert!(ids(&report, "refreshed").is_empty());
    assert_eq!(ids(&report, "dead").len(), 50);
    assert_eq!(ids(&report, "skipped").len(), 250);
    assert_eq!(env.fake.stats().token_requests, 150);
    env.fake.assert_no_reuse_after_success();

    // --only narrows the pass; an unknown id is an error (exit 3).
    let out = env.run(&["sweep", "--json", "--only", "fresh000", "due000"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(ids(&json(&out), "skipped").len(), 2);
    assert_eq!(code(&env.run(&["sweep", "--only", "nope"])), 3);
}

/// Concurrent sweeps and a background refresher refresh each due credential exactly once, with no reuse and single flight.
#[test]
fn concurrent_sweeps_and_a_background_refresher_refresh_each_credential_once() {
    let env = Env::new();
    let due = bulk(&env, "c", 120, 60, false);
    env.fake.set_latency(Duration::from_millis(20));
    let warden = Arc::new(env.warden());
    let sweeps: Vec<_> = (0..2)
        .map(|_| {
            env.cmd()
                .args(["sweep", "--json", "--concurrency", "8"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let background = start_background(warden.clone(), 4);
    let in_process = sweep(
        &warden,
        &SweepOptions {
            concurrency: 8,
            ..SweepOptions::default()
        },
        &|_, _| {},
    )
    .unwrap();
    let mut refreshed: Vec<String> = in_process.refreshed.clone();
    for s in sweeps {
        let out = s.wait_with_output().unwrap();
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        refreshed.extend(ids(&json(&out), "refreshed"));
    }
    // Let the background refresher finish what it started.
    background.stop(Duration::from_secs(10));
    let by_background = warden
        .metrics()
        .refresh_count(tokenwarden::metrics::RefreshOutcome::Success)
        as usize
        - in_process.refreshed.len();
    let unique: HashSet<&String> = refreshed.iter().collect();
    assert_eq!(
        unique.len(),
        refreshed.len(),
        "no credential refreshed by two sweeps"
    );
    assert_eq!(
        refreshed.len() + by_background,
        120,
        "each once, by someone"
    );
    assert_eq!(env.fake.stats().token_requests, 120);
    assert_eq!(env.fake.stats().reuse_detected, 0);
    env.fake.assert_single_flight();
    for id in &due {
        let row = warden.get(id).unwrap();
        assert_eq!(
            row.refresh_token.expose(),
            env.fake.family_state(id).current_refresh_token
        );
    }
}

/// A sweep exits 0 when all is well and 5 on a transient failure, listing what failed.
#[test]
fn sweep_exit_codes() {
    let env = Env::new();
    env.login("fine", 7200);
    let out = env.run(&["sweep"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    // Issue 13: a summary line per outcome; a fresh credential gets a row
    // only with --verbose.
    assert!(
        text(&out.stdout).contains("fresh      1"),
        "{}",
        text(&out.stdout)
    );
    assert!(!text(&out.stdout).contains("fine"), "{}", text(&out.stdout));
    let out = env.run(&["sweep", "--verbose"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("fine"), "--verbose lists it");

    env.login("flaky", 60);
    env.fake.push_fault(Fault::status(503, "{}"));
    let out = env.run(&["sweep", "--json"]);
    assert_eq!(code(&out), 5, "transient failure → 5");
    let failed = &json(&out)["failed"];
    assert_eq!(failed[0]["id"], "flaky");
    assert!(
        failed[0]["error"].as_str().unwrap().contains("http_503"),
        "{failed}"
    );
}

/// `sweep --quota` records a quota snapshot per credential with its bearer, readable afterwards with `quota`.
#[test]
fn quota_snapshots_are_recorded_and_readable() {
    let env = Env::new();
    let g = env.login("q", 7200);
    // No snapshot yet.
    let out = env.run(&["quota", "q"]);
    assert_eq!(code(&out), 1);
    assert!(text(&out.stderr).contains("--refresh"));

    let out = env.run(&["sweep", "--quota", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(json(&out)["quota"], json!([{"id": "q", "status": "ok"}]));
    let usage = env.fake.usage_requests();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].bearer.as_deref(), Some(g.access_token.as_str()));
    assert_eq!(
        usage[0].account_header.as_deref(),
        Some(g.account_id.as_str())
    );

    let out = env.run(&["quota", "q", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let q = json(&out);
    assert_eq!(q["status"], "ok");
    assert_eq!(q["plan_type"], "plus");
    assert_eq!(q["windows"][0]["name"], "primary");
    assert_eq!(q["windows"][0]["used_percent"], 42.0);
    assert_eq!(q["windows"][0]["window_seconds"], 18000);
    assert!(q["windows"][0]["resets_at"].as_i64().unwrap() > now());
    let show = json(&env.run(&["show", "q", "--json"]));
    assert_eq!(show["quota"]["windows"][1]["used_percent"], 17.0);
    let human = text(&env.run(&["show", "q"]).stdout);
    assert!(
        human.contains("quota:") && human.contains("primary 42%"),
        "{human}"
    );

    // History is kept.
    let out = env.run(&["quota", "q", "--refresh"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let store = tokenwarden::testing::Store::open(&env.db, Duration::from_secs(5), 1).unwrap();
    assert_eq!(store.quota_history_len("q").unwrap(), 2);
    // …and pruned to the configured age (the newest always stays).
    let out = env
        .cmd()
        .env("TOKENWARDEN_QUOTA_KEEP", "0")
        .args(["quota", "q", "--refresh"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    assert_eq!(store.quota_history_len("q").unwrap(), 1);
}

/// A 401 from the usage endpoint makes one refresh and one retry with the new token, and the refused token is not served again.
#[test]
fn a_401_from_the_usage_endpoint_refreshes_once_and_retries() {
    let env = Env::new();
    let g = env.login("u401", 7200);
    env.fake.revoke_access_token(&g.access_token);
    let out = env.run(&["quota", "u401", "--refresh", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(json(&out)["status"], "ok");
    assert_eq!(env.fake.stats().token_requests, 1, "one refresh");
    let usage = env.fake.usage_requests();
    assert_eq!(usage.len(), 2);
    assert_eq!(usage[0].status, Some(401));
    assert_eq!(usage[1].status, Some(200));
    assert_ne!(usage[1].bearer.as_deref(), Some(g.access_token.as_str()));
    // The rejected token is not served any more.
    let out = env.run(&["token", "u401"]);
    assert_ne!(text(&out.stdout).trim(), g.access_token);
}

/// Usage endpoint failures are recorded in the snapshot (status and error), not fatal to the sweep.
#[test]
fn transient_usage_failures_are_recorded_not_fatal() {
    let env = Env::new();
    env.login("t", 7200);
    env.fake.push_usage_fault(Fault::status(503, "{}"));
    let out = env.run(&["sweep", "--quota", "--json"]);
    assert_eq!(code(&out), 0, "quota failures do not fail the sweep");
    assert_eq!(
        json(&out)["quota"],
        json!([{"id": "t", "status": "http_503"}])
    );
    let q = json(&env.run(&["quota", "t", "--json"]));
    assert_eq!(q["status"], "http_503");
    assert!(q["error"].as_str().unwrap().contains("503"));
    env.fake.push_usage_fault(Fault::Garbage);
    let out = env.run(&["quota", "t", "--refresh", "--json"]);
    assert_eq!(json(&out)["status"], "bad_json");
}

/// Providers without a quota endpoint are skipped by the sweep and refused by `quota`, with no usage request.
#[test]
fn providers_without_a_quota_endpoint_are_skipped() {
    let env = Env::new();
    let g = env.fake.new_family("goog");
    let record = json!({
        "id": "goog", "provider": "google", "refresh_token": g.refresh_token,
        "access_token": g.access_token, "expires_at": now() + 7200,
        "client_id": "cid", "client_secret": "shh", "token_url": env.fake.token_url(),
    });
    let out = env.run_stdin(&["import", "-"], record.to_string().as_bytes());
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = env.run(&["sweep", "--quota", "--json"]);
    assert_eq!(code(&out), 0);
    assert_eq!(
        json(&out)["quota"],
        json!([{"id": "goog", "status": "skipped"}])
    );
    let out = env.run(&["quota", "goog"]);
    assert_eq!(code(&out), 1);
    assert!(text(&out.stderr).contains("no quota endpoint"));
    assert_eq!(env.fake.stats().usage_requests, 0);
}
