//! The HTTP API end to end over loopback (DESIGN.md §5, §7): the server
//! in-process and as the real `tokenwarden serve`, against the fake OAuth
//! server.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::fake_oauth::Fault;
use crate::common::http::{free_port, raw, raw_request, Client, InProcess, Served};
use crate::common::tw::{code, now, text, Env};
use serde_json::{json, Value};

const KEY: &str = "test-key-0123456789";

fn token_of(a: &crate::common::http::Answer) -> String {
    a.json()["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token: {}", a.body))
        .to_owned()
}

/// The ids of a `{"credentials":[…]}` answer.
fn ids_in(list: &Value) -> Vec<String> {
    list["credentials"]
        .as_array()
        .unwrap_or_else(|| panic!("no credentials in {list}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn reject_body(token: &str) -> String {
    json!({ "access_token": token }).to_string()
}

/// Polls `cond` every 20 ms for at most `limit`; false if it never held.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// The value of one exact metric line (`name{labels}`), if present.
fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Without a valid Bearer key every route but `GET /healthz` is 401 before routing, and any configured key (scheme case-insensitive) works.
#[test]
fn auth_comes_before_routing_and_any_configured_key_works() {
    let env = Env::new();
    let srv = InProcess::start(&env, &[KEY, "rotated-key-2"], 4);
    let c = &srv.client;
    let anon = c.with_key(None);

    let h = anon.get("/healthz").expect(200);
    assert_eq!(h.json(), json!({"status": "ok"}));

    for path in [
        "/metrics",
        "/v1/credentials",
        "/v1/credentials/nobody",
        "/v1/credentials/nobody/token",
        "/no/such/path",
        "/v1/credentials/%2f",
    ] {
        for who in [None, Some("wrong"), Some("test-key-012345678"), Some("")] {
            let a = c.with_key(who).get(path).expect(401);
            assert_eq!(a.code(), "unauthorized", "{path}");
            assert_eq!(a.header("www-authenticate"), Some("Bearer"));
            assert!(!a.body.contains(KEY));
        }
    }
    // Only GET /healthz is open.
    anon.post("/healthz", "").expect(401);
    // Not a Bearer credential.
    let basic = raw(
        srv.addr(),
        &raw_request(
            "GET",
            "/v1/credentials",
            None,
            &[format!("Authorization: Basic {KEY}")],
            b"",
        ),
        Duration::from_secs(5),
    )
    .expect("answer");
    assert_eq!(basic.status, 401);

    // With a key: unknown paths are 404, and both keys work.
    assert_eq!(c.get("/no/such/path").expect(404).code(), "not_found");
    assert_eq!(
        c.get("/v1/credentials").expect(200).json(),
        json!({"credentials": []})
    );
    c.with_key(Some("rotated-key-2"))
        .get("/v1/credentials")
        .expect(200);
    // The scheme is case-insensitive.
    let lower = raw(
        srv.addr(),
        &raw_request(
            "GET",
            "/v1/credentials",
            None,
            &[format!("Authorization: bearer {KEY}")],
            b"",
        ),
        Duration::from_secs(5),
    )
    .expect("answer");
    assert_eq!(lower.status, 200, "{}", lower.body);
}

/// Import (record, auth.json, array), list, show, events and delete over HTTP answer their documented shapes and never a secret.
#[test]
fn import_list_show_events_and_delete() {
    let env = Env::new();
    let srv = InProcess::start(&env, &[KEY], 4);
    let c = &srv.client;
    let url = env.fake.token_url();

    let alice = env.fake.new_family("alice");
    let record = alice.import_json("alice", "codex", &url).to_string();
    let a = c.post("/v1/credentials", &record).expect(201);
    let s = a.json();
    assert_eq!(
        (&s["id"], &s["provider"], &s["state"]),
        (&json!("alice"), &json!("codex"), &json!("valid"))
    );
    assert_eq!(s["account_id"], alice.account_id.as_str());
    assert_eq!(a.header("location"), Some("/v1/credentials/alice"));
    assert_eq!(a.header("content-type"), Some("application/json"));

    // An existing id: 409, and the message says how to overwrite.
    let dup = c.post("/v1/credentials", &record).expect(409);
    assert_eq!(dup.code(), "exists");
    assert!(dup.message().contains("replace=1"), "{}", dup.body);
    c.post("/v1/credentials?replace=1", &record).expect(201);

    // A Codex auth.json under a chosen id.
    let bob = env.fake.new_family("bob");
    let a = c
        .post("/v1/credentials?id=bob", &bob.codex_auth_json().to_string())
        .expect(201);
    assert_eq!(a.json()["email"], bob.email.as_str());

    // An array: 201 with every summary.
    let carol = env.fake.new_family("carol");
    let dave = env.fake.new_family("dave");
    let many = json!([
        carol.import_json("carol", "codex", &url),
        dave.import_json("dave", "codex", &url)
    ]);
    let a = c.post("/v1/credentials", &many.to_string()).expect(201);
    assert_eq!(ids_in(&a.json()), ["carol", "dave"]);

    // Bad imports.
    for (path, body) in [
        ("/v1/credentials", "{not json"),
        ("/v1/credentials", ""),
        ("/v1/credentials", r#"{"provider":"codex"}"#),
        ("/v1/credentials?id=..", record.as_str()),
        ("/v1/credentials?provider=nope", record.as_str()),
        ("/v1/credentials?replace=maybe", record.as_str()),
        ("/v1/credentials?typo=1", record.as_str()),
    ] {
        let a = c.post(path, body).expect(400);
        assert_eq!(a.code(), "bad_request", "{path}");
        assert!(!a.body.contains(&alice.refresh_token));
    }

    // List and show: summaries, never a secret.
    let list = c.get("/v1/credentials").expect(200);
    assert_eq!(ids_in(&list.json()), ["alice", "bob", "carol", "dave"]);
    for g in [&alice, &bob, &carol, &dave] {
        for secret in [&g.refresh_token, &g.access_token, &g.id_token] {
            assert!(!list.body.contains(secret.as_str()), "secret in the list");
        }
    }
    let show = c.get("/v1/credentials/alice").expect(200);
    assert_eq!(show.json()["id"], "alice");
    assert!(!show.body.contains(&alice.refresh_token));
    assert_eq!(
        c.get("/v1/credentials/nobody").expect(404).code(),
        "not_found"
    );

    // Events, newest N with ?limit=.
    let ev = c.get("/v1/credentials/alice/events").expect(200).json();
    let events = ev["events"].as_array().expect("events");
    assert!(events.len() >= 2, "import + replace: {ev}");
    for key in ["seq", "at", "from", "to", "version", "actor", "reason"] {
        assert!(events[0].get(key).is_some(), "{key} in {ev}");
    }
    let one = c.get("/v1/credentials/alice/events?limit=1").expect(200);
    assert_eq!(one.json()["events"].as_array().map(Vec::len), Some(1));
    for q in ["limit=x", "limit=-1", "limit=1.5", "limit=99999999999"] {
        c.get(&format!("/v1/credentials/alice/events?{q}"))
            .expect(400);
    }
    c.get("/v1/credentials/nobody/events").expect(404);

    // Delete: 204, then gone; its events stay.
    let d = c.delete("/v1/credentials/alice").expect(204);
    assert!(d.body.is_empty());
    c.get("/v1/credentials/alice").expect(404);
    c.delete("/v1/credentials/alice").expect(404);
    c.get("/v1/credentials/alice/events").expect(200);
}

/// The token, reject and refresh routes serve, refresh and replace tokens as asked and refuse bad parameters and bodies by name.
#[test]
fn token_reject_and_refresh_answer_token_responses() {
    let env = Env::new();
    let srv = InProcess::start(&env, &[KEY], 4);
    let c = &srv.client;
    let g = env.login("tok", 3000);

    // A valid token is served as is.
    let a = c.get("/v1/credentials/tok/token").expect(200);
    let t = a.json();
    assert_eq!(t["access_token"], g.access_token.as_str());
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["credential_id"], "tok");
    assert_eq!(t["account_id"], g.account_id.as_str());
    assert!(t["version"].is_i64());
    let left = t["expires_in"].as_i64().expect("expires_in");
    assert!(left > 2900 && left <= 3000, "{t}");
    assert_eq!(t["expires_at"].as_i64(), Some(now() + left));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    assert_eq!(env.fake.stats().token_requests, 0);

    // min_ttl beyond its life: refreshed first.
    let t2 = token_of(&c.get("/v1/credentials/tok/token?min_ttl=3500").expect(200));
    assert_ne!(t2, g.access_token);
    assert_eq!(env.fake.stats().token_requests, 1);

    // Reject the current token: a different, fresh one.
    let t3 = token_of(
        &c.post("/v1/credentials/tok/reject", &reject_body(&t2))
            .expect(200),
    );
    assert_ne!(t3, t2);
    assert!(env.fake.is_access_token_valid(&t3));
    assert_eq!(env.fake.stats().token_requests, 2);
    // Rejecting an old token: the current one, no refresh.
    let t4 = token_of(
        &c.post("/v1/credentials/tok/reject", &reject_body(&g.access_token))
            .expect(200),
    );
    assert_eq!(t4, t3);
    assert_eq!(env.fake.stats().token_requests, 2);

    // Refresh now, with or without force, and an explicit wait.
    let t5 = token_of(&c.post("/v1/credentials/tok/refresh", "").expect(200));
    assert_ne!(t5, t3);
    let t6 = token_of(
        &c.post("/v1/credentials/tok/refresh?force=1&wait=5", "")
            .expect(200),
    );
    assert_ne!(t6, t5);
    assert_eq!(env.fake.stats().token_requests, 4);
    c.get("/v1/credentials/tok/token?wait=0&min_ttl=0")
        .expect(200);

    // Non-numeric or out-of-range numbers, unknown parameters.
    for q in [
        "min_ttl=abc",
        "min_ttl=-5",
        "min_ttl=",
        "wait=soon",
        "wait=1e99",
        "wait=301",
        "bogus=1",
        "wait=1&wait=2",
    ] {
        let a = c.get(&format!("/v1/credentials/tok/token?{q}")).expect(400);
        assert_eq!(a.code(), "bad_request", "{q}");
    }
    c.post("/v1/credentials/tok/refresh?force=maybe", "")
        .expect(400);
    c.post("/v1/credentials/tok/refresh?wait=x", "").expect(400);

    // Reject bodies: strict, and the errors name the field.
    for (body, words) in [
        ("{", "not JSON"),
        ("[]", "object"),
        ("", "not JSON"),
        (r#"{"access_token":5}"#, "\"access_token\" must be a string"),
        (r#"{"access_token":null}"#, "missing field \"access_token\""),
        (r#"{"access_token":""}"#, "empty"),
        ("{}", "missing field \"access_token\""),
        (
            r#"{"access_token":"x","extra":1}"#,
            "unknown field \"extra\"",
        ),
    ] {
        let a = c.post("/v1/credentials/tok/reject", body).expect(400);
        assert!(a.message().contains(words), "{body}: {}", a.body);
    }
    assert_eq!(env.fake.stats().token_requests, 4);

    // Unknown credential.
    c.get("/v1/credentials/nobody/token").expect(404);
    c.post("/v1/credentials/nobody/reject", &reject_body("x"))
        .expect(404);
    c.post("/v1/credentials/nobody/refresh", "").expect(404);
}

/// A dead credential is 410 with its reason, and a backing-off one 503 with `Retry-After`.
#[test]
fn dead_is_410_with_the_reason_and_unavailable_is_503_with_retry_after() {
    let env = Env::new();
    let srv = InProcess::start(&env, &[KEY], 4);
    let c = &srv.client;

    env.login("gone", 3000);
    env.fake.revoke_family("gone");
    let a = c.post("/v1/credentials/gone/refresh", "").expect(410);
    assert_eq!(a.code(), "credential_dead");
    assert_eq!(a.json()["error"]["reason"], "refresh_token_invalidated");
    let again = c.get("/v1/credentials/gone/token").expect(410);
    assert_eq!(again.json()["error"]["reason"], "refresh_token_invalidated");
    let s = c.get("/v1/credentials/gone").expect(200).json();
    assert_eq!(s["state"], "dead");
    assert_eq!(s["dead_reason"], "refresh_token_invalidated");

    env.login("busy", -10);
    env.fake.push_fault(Fault::retry_after(
        429,
        r#"{"error":"rate_limited"}"#,
        "120",
    ));
    let a = c.get("/v1/credentials/busy/token").expect(503);
    assert_eq!(a.code(), "unavailable");
    let retry: u64 = a
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("integer seconds");
    assert!(retry >= 100, "upstream asked for 120 s: {retry}");
    assert_eq!(a.json()["error"]["retry_after"], retry);
    // During the backoff: 503 again, with no upstream traffic.
    let before = env.fake.stats().token_requests;
    c.get("/v1/credentials/busy/token").expect(503);
    assert_eq!(env.fake.stats().token_requests, before);
}

/// A forced refresh of a dead credential that upstream still refuses is 410 with the reason.
#[test]
fn a_forced_refresh_refused_for_good_is_410() {
    let env = Env::new();
    let srv = InProcess::start(&env, &[KEY], 2);
    env.login("gone", 3000);
    env.fake.revoke_family("gone");
    srv.client
        .post("/v1/credentials/gone/refresh", "")
        .expect(410);
    let a = srv
        .client
        .post("/v1/credentials/gone/refresh?force=1", "")
        .expect(410);
    assert_eq!(a.json()["error"]["reason"], "refresh_token_invalidated");
}

/// Ids with dots, escaped slashes, NULs or over 128 characters are 400, never normalised into another credential's path.
#[test]
fn bad_ids_are_refused_never_normalised() {
    let env = Env::new();
    env.login("victim", 3000);
    let srv = InProcess::start(&env, &[KEY], 4);
    let long = "x".repeat(129);
    for path in [
        "/v1/credentials/..",
        "/v1/credentials/../token",
        "/v1/credentials/.",
        "/v1/credentials/%2e%2e/token",
        "/v1/credentials/%2f",
        "/v1/credentials/%2F/token",
        "/v1/credentials/a%2fb/token",
        "/v1/credentials/a%00b",
        "/v1/credentials/a%00b/events",
        "/v1/credentials/victim%00/token",
        "/v1/credentials/..%2fmetrics",
        "/v1/credentials//token",
        "/v1/credentials/",
        "/v1/credentials/vict%69m/token",
        &format!("/v1/credentials/{long}/token"),
    ] {
        for method in ["GET", "POST", "DELETE"] {
            let a = raw(
                srv.addr(),
                &raw_request(method, path, Some(KEY), &[], b""),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|| panic!("no answer to {method} {path}"));
            assert_eq!(a.status, 400, "{method} {path}: {}", a.body);
            assert_eq!(a.code(), "bad_request");
        }
    }
    // Not normalised into another route either.
    for path in ["/v1/../metrics", "/v1/credentials/victim/../../../metrics"] {
        let a = raw(
            srv.addr(),
            &raw_request("GET", path, Some(KEY), &[], b""),
            Duration::from_secs(5),
        )
        .expect("answer");
        assert_eq!(a.status, 404, "{path}: {}", a.body);
    }
    // The credential is untouched.
    srv.client.get("/v1/credentials/victim").expect(200);
}

/// A wrong method on a known route is 405 with the route's methods in `Allow`.
#[test]
fn wrong_methods_are_405_with_allow() {
    let env = Env::new();
    let srv = InProcess::start(&env, &[KEY], 2);
    let c = &srv.client;
    for (method, path, allow) in [
        ("PUT", "/v1/credentials", "GET, POST"),
        ("DELETE", "/v1/credentials", "GET, POST"),
        ("POST", "/v1/credentials/x", "GET, DELETE"),
        ("PATCH", "/v1/credentials/x", "GET, DELETE"),
        ("POST", "/v1/credentials/x/token", "GET"),
        ("GET", "/v1/credentials/x/reject", "POST"),
        ("GET", "/v1/credentials/x/refresh", "POST"),
        ("DELETE", "/v1/credentials/x/events", "GET"),
        ("PUT", "/v1/credentials/x/quota", "GET, POST"),
        ("POST", "/healthz", "GET"),
        ("POST", "/metrics", "GET"),
    ] {
        let a = c.send(method, path, None).expect(405);
        assert_eq!(a.code(), "method_not_allowed", "{method} {path}");
        assert_eq!(a.header("allow"), Some(allow), "{method} {path}");
    }
}

/// Bodies over 1 MiB (declared, chunked or absent behind a declared length) are 413, exactly 1 MiB is read, and no length takes the server down.
#[test]
fn bodies_over_one_mib_are_413() {
    let env = Env::new();
    let srv = InProcess::start(&env, &[KEY], 2);
    let c = &srv.client;
    let mib = 1 << 20;

    // Declared too large: refused before reading.
    let a = c
        .send("POST", "/v1/credentials", Some(&vec![b' '; mib + 1]))
        .expect(413);
    assert_eq!(a.code(), "too_large");
    // Chunked: refused once the limit is passed.
    let a = c
        .post_chunked("/v1/credentials", vec![b' '; 2 * mib])
        .expect(413);
    assert_eq!(a.code(), "too_large");
    let a = c
        .post_chunked("/v1/credentials/x/reject", vec![b'{'; mib + 10])
        .expect(413);
    assert_eq!(a.code(), "too_large");
    // Exactly 1 MiB is read (and is not an import).
    c.send("POST", "/v1/credentials", Some(&vec![b' '; mib]))
        .expect(400);
    // A declared length with no body behind it: answered at once.
    let a = raw(
        srv.addr(),
        &raw_request(
            "POST",
            "/v1/credentials",
            Some(KEY),
            &["Content-Length: 5000000".into()],
            b"",
        ),
        Duration::from_secs(10),
    )
    .expect("answer");
    assert_eq!(a.status, 413);
    // Without a key, auth still comes first.
    let a = raw(
        srv.addr(),
        &raw_request(
            "POST",
            "/v1/credentials",
            None,
            &["Content-Length: 5000000".into()],
            b"",
        ),
        Duration::from_secs(10),
    )
    .expect("answer");
    assert_eq!(a.status, 401);
    // A length no memory could hold must not take the server down.
    for len in ["99999999999999999", "18446744073709551615"] {
        let _ = raw(
            srv.addr(),
            &raw_request(
                "POST",
                "/v1/credentials",
                Some(KEY),
                &[format!("Content-Length: {len}")],
                b"{}",
            ),
            Duration::from_millis(300),
        );
    }
    c.get("/healthz").expect(200);
    c.get("/v1/credentials").expect(200);
}

/// The quota routes fetch, keep and show a snapshot, say `no_quota` or `quota_unsupported`, and never show the access token.
#[test]
fn quota_routes() {
    let env = Env::new();
    let srv = InProcess::start(&env, &[KEY], 2);
    let c = &srv.client;
    let g = env.login("cx", 3000);
    let a = c.get("/v1/credentials/cx/quota").expect(404);
    assert_eq!(a.code(), "no_quota");
    let fetched = c.post("/v1/credentials/cx/quota", "").expect(200);
    assert_eq!(fetched.json()["credential_id"], "cx");
    assert!(!fetched.body.contains(&g.access_token));
    let latest = c.get("/v1/credentials/cx/quota").expect(200);
    assert_eq!(latest.json()["fetched_at"], fetched.json()["fetched_at"]);

    let o2 = json!({
        "id": "o2", "provider": "oauth2", "refresh_token": "r-o2",
        "token_url": env.fake.token_url(), "client_id": "client",
    });
    c.post("/v1/credentials", &o2.to_string()).expect(201);
    for method in ["GET", "POST"] {
        let a = c.send(method, "/v1/credentials/o2/quota", None).expect(404);
        assert_eq!(a.code(), "quota_unsupported");
    }
    c.get("/v1/credentials/nobody/quota").expect(404);
    // The summary carries the quota line.
    let summary = c.get("/v1/credentials/cx").expect(200).json();
    assert_eq!(summary["quota"]["status"], "ok");
    assert_eq!(summary["quota"]["windows"][0]["used_percent"], 42.0);
    let list = c.get("/v1/credentials").expect(200).json();
    assert_eq!(
        list["credentials"][0]["quota"]["windows"][1]["name"],
        "secondary"
    );
}

/// A read-only key fetches tokens but cannot import, delete or force.
#[test]
fn read_only_keys_fetch_tokens_but_cannot_administer() {
    use tokenwarden::http::{ApiKeys, Server, ServerOptions};
    let env = Env::new();
    let g = env.login("ro", 3000);
    let file = env.dir.path().join("keys");
    std::fs::write(&file, "# keys\nread:reader-key\nadmin:admin-key\n").unwrap();
    let options = ServerOptions {
        keys: ApiKeys::from_file(&file).unwrap(),
        ..ServerOptions::default()
    };
    let server = Server::start(Arc::new(env.warden()), "127.0.0.1:0", options).unwrap();
    let reader = Client::new(server.addr(), Some("reader-key"));
    let admin = reader.with_key(Some("admin-key"));
    assert_eq!(
        token_of(&reader.get("/v1/credentials/ro/token").expect(200)),
        g.access_token
    );
    reader.get("/v1/credentials").expect(200);
    reader.get("/v1/credentials/ro/events").expect(200);
    let fresh = token_of(&reader.post("/v1/credentials/ro/refresh", "").expect(200));
    token_of(
        &reader
            .post("/v1/credentials/ro/reject", &reject_body(&fresh))
            .expect(200),
    );
    let o = json!({"id": "new", "provider": "codex", "refresh_token": "r"}).to_string();
    for (method, path, body) in [
        ("POST", "/v1/credentials", Some(o.as_bytes())),
        ("DELETE", "/v1/credentials/ro", None),
        ("POST", "/v1/credentials/ro/refresh?force=1", None),
    ] {
        let a = reader.send(method, path, body).expect(403);
        assert_eq!(a.code(), "forbidden", "{method} {path}");
    }
    assert_eq!(
        admin.get("/v1/credentials").expect(200).json()["credentials"][0]["id"],
        "ro"
    );
    admin.post("/v1/credentials", &o).expect(201);
    admin
        .post("/v1/credentials/ro/refresh?force=1", "")
        .expect(200);
    admin.delete("/v1/credentials/new").expect(204);
    reader
        .with_key(Some("read:reader-key"))
        .get("/v1/credentials")
        .expect(401);
}

/// 64 HTTP callers and a CLI process want a token of one expiring
/// credential at once: one upstream refresh, one token for all.
#[test]
fn one_refresh_for_64_http_callers_and_a_cli_process() {
    let env = Env::new();
    let old = env.login("hot", 100);
    env.fake.set_latency(Duration::from_millis(500));
    let srv = InProcess::start(&env, &[KEY], 16);
    let start = Arc::new(Barrier::new(65));
    let callers: Vec<_> = (0..64)
        .map(|_| {
            let (c, start) = (srv.client.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                token_of(&c.get("/v1/credentials/hot/token").expect(200))
            })
        })
        .collect();
    start.wait();
    // The CLI arrives while the HTTP side's refresh is in flight.
    assert!(
        eventually(Duration::from_secs(10), || env.fake.stats().token_requests
            >= 1),
        "no refresh started"
    );
    let cli = env.run(&["token", "hot"]);
    assert_eq!(code(&cli), 0, "{}", text(&cli.stderr));
    let mut tokens: HashSet<String> = callers
        .into_iter()
        .map(|h| h.join().expect("caller"))
        .collect();
    tokens.insert(text(&cli.stdout).trim().to_owned());
    assert_eq!(tokens.len(), 1, "everyone gets the same token");
    assert!(!tokens.contains(&old.access_token));
    assert_eq!(env.fake.stats().token_requests, 1, "exactly one refresh");
    env.fake.assert_single_flight();

    // The metrics say what happened.
    let m = srv.client.get("/metrics").expect(200);
    assert!(m
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain")));
    let body = &m.body;
    let http_ok =
        r#"tokenwarden_http_requests_total{route="/v1/credentials/{id}/token",status="200"}"#;
    assert_eq!(metric(body, http_ok), Some(64), "{body}");
    assert_eq!(
        metric(
            body,
            r#"tokenwarden_refreshes_total{provider="codex",outcome="success"}"#
        ),
        Some(1),
        "{body}"
    );
    assert_eq!(
        metric(body, r#"tokenwarden_credentials{state="valid"}"#),
        Some(1)
    );
    assert_eq!(
        metric(body, r#"tokenwarden_credentials{state="dead"}"#),
        Some(0)
    );
    // A 404 and a 401 show up by route pattern.
    srv.client.get("/v1/credentials/nobody").expect(404);
    srv.client.with_key(None).get("/nowhere").expect(401);
    let body = srv.client.get("/metrics").expect(200).body;
    assert_eq!(
        metric(
            &body,
            r#"tokenwarden_http_requests_total{route="/v1/credentials/{id}",status="404"}"#
        ),
        Some(1)
    );
    assert_eq!(
        metric(
            &body,
            r#"tokenwarden_http_requests_total{route="unknown",status="401"}"#
        ),
        Some(1)
    );
    assert_eq!(
        metric(
            &body,
            r#"tokenwarden_http_requests_total{route="/metrics",status="200"}"#
        ),
        Some(1)
    );
}

fn serve_cmd(env: &Env, addr: SocketAddr, extra: &[&str]) -> std::process::Command {
    let mut cmd = env.cmd();
    cmd.args(["serve", "--listen", &addr.to_string(), "--threads", "4"])
        .args(extra);
    cmd
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `tokenwarden serve` answers with either configured key, logs one line per request without secrets, and on SIGTERM finishes requests in flight and exits 0.
#[test]
fn the_binary_serves_and_exits_0_on_sigterm_after_finishing_in_flight_requests() {
    let env = Env::new();
    let g = env.login("bin", 3000);
    let slow = env.login("slow", 100);
    let addr = loopback(free_port());
    let mut cmd = serve_cmd(&env, addr, &["--no-refresher"]);
    cmd.env("TOKENWARDEN_API_KEY", format!("{KEY}, second-key"))
        .env("TOKENWARDEN_LOG", "debug");
    let served = Served::spawn(cmd, addr);
    let c = Client::new(addr, Some(KEY));
    assert_eq!(
        token_of(&c.get("/v1/credentials/bin/token").expect(200)),
        g.access_token
    );
    c.with_key(Some("second-key"))
        .get("/v1/credentials")
        .expect(200);
    c.with_key(None).get("/v1/credentials").expect(401);

    // A request whose refresh is in flight when SIGTERM arrives finishes.
    env.fake.set_latency(Duration::from_millis(700));
    let pending = {
        let c = c.clone();
        thread::spawn(move || c.get("/v1/credentials/slow/token"))
    };
    // (The upstream request has arrived; it is answered 700 ms later.)
    let upstream = || env.fake.stats().token_requests >= 1;
    assert!(eventually(Duration::from_secs(10), upstream));
    let (status, stderr) = served.terminate();
    assert_eq!(status, Some(0), "{stderr}");
    let answer = pending.join().expect("caller").expect(200);
    assert_ne!(token_of(&answer), slow.access_token);
    // Debug logs: one line per request, no key, no token.
    assert!(
        stderr.contains("/v1/credentials/{id}/token 200"),
        "{stderr}"
    );
    for secret in [KEY, "second-key", g.access_token.as_str(), &g.refresh_token] {
        assert!(!stderr.contains(secret), "secret in the log: {stderr}");
    }
}

/// `serve` on a public address without an API key refuses to start, naming both ways to set one.
#[test]
fn serve_refuses_a_public_address_without_a_key() {
    let env = Env::new();
    let out = env
        .cmd()
        .args(["serve", "--listen", "0.0.0.0:0", "--no-refresher"])
        .output()
        .expect("run serve");
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains("TOKENWARDEN_API_KEY") && last.contains("--api-key-file"),
        "{last}"
    );

    // An unreadable or empty key file is a configuration error too.
    let empty = env.dir.path().join("keys");
    std::fs::write(&empty, "# no keys yet\n").expect("write");
    for file in [empty.clone(), env.dir.path().join("missing")] {
        let out = env
            .cmd()
            .args(["serve", "--listen", "127.0.0.1:0", "--api-key-file"])
            .arg(&file)
            .output()
            .expect("run serve");
        assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    }
}

/// `serve` with an API key file on a public address uses the file's keys and the default database in the working directory.
#[test]
fn serve_with_a_key_file_on_a_public_address_and_a_default_database() {
    let env = Env::new();
    let cwd = tempfile::tempdir().expect("temp dir");
    let keys = env.dir.path().join("keys");
    std::fs::write(&keys, format!("# current\n{KEY}\n\n# next\nnext-key\n")).expect("write");
    let port = free_port();
    let mut cmd = env.cmd();
    cmd.env_remove("TOKENWARDEN_DB")
        .current_dir(cwd.path())
        .args(["serve", "--listen", &format!("0.0.0.0:{port}")])
        .args(["--no-refresher", "--api-key-file"])
        .arg(&keys);
    let served = Served::spawn(cmd, loopback(port));
    assert!(cwd.path().join("tokenwarden.db").exists());
    let c = Client::new(loopback(port), Some("next-key"));
    c.get("/v1/credentials").expect(200);
    c.with_key(Some("current"))
        .get("/v1/credentials")
        .expect(401);
    let (status, stderr) = served.terminate();
    assert_eq!(status, Some(0), "{stderr}");
}

/// `serve`'s background refresher refreshes due credentials and leaves valid and dead ones alone.
#[test]
fn the_background_refresher_refreshes_due_credentials_and_leaves_dead_ones_alone() {
    let env = Env::new();
    env.login("soon", 100);
    let later = env.login("later", 7200);
    env.login("doomed", 100);
    env.fake.revoke_family("doomed");
    let out = env.run(&["refresh", "doomed"]);
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
    let doomed_requests = env.fake.presented_refresh_tokens("doomed").len();

    let addr = loopback(free_port());
    let served = Served::spawn(serve_cmd(&env, addr, &["--refresher-threads", "2"]), addr);
    let c = Client::new(addr, None);
    let refreshed = eventually(Duration::from_secs(20), || {
        let s = c.get("/v1/credentials/soon").expect(200).json();
        s["state"] == "valid" && s["expires_at"].as_i64().unwrap_or(0) > now() + 3000
    });
    assert!(refreshed, "soon was not refreshed in the background");
    // One more look after a full round: the others were left alone.
    let list = c.get("/v1/credentials").expect(200).json();
    let states: Vec<(Value, Value)> = list["credentials"]
        .as_array()
        .expect("array")
        .iter()
        .map(|s| (s["id"].clone(), s["state"].clone()))
        .collect();
    assert!(states.contains(&(json!("doomed"), json!("dead"))), "{list}");
    assert!(states.contains(&(json!("later"), json!("valid"))), "{list}");
    assert_eq!(
        env.fake.presented_refresh_tokens("doomed").len(),
        doomed_requests
    );
    assert!(env.fake.presented_refresh_tokens("later").is_empty());
    let _ = later;
    let (status, stderr) = served.terminate();
    assert_eq!(status, Some(0), "{stderr}");
}

/// DNS rebinding (DESIGN.md §7): a keyless `serve` on loopback answered a
/// page that reached it as `rebind.attacker.example` with the credential
/// list and a token. Now a foreign Host is 403 `forbidden_host` unless
/// `--allow-host` / `TOKENWARDEN_ALLOW_HOST` names it, and a foreign
/// `Origin` is 403 `forbidden_origin` with or without a key.
#[test]
fn a_dns_rebinding_page_reads_nothing() {
    let env = Env::new();
    let g = env.login("rb", 3000);
    let addr = loopback(free_port());
    let mut cmd = serve_cmd(&env, addr, &["--no-refresher", "--allow-host", "tw.lan"]);
    cmd.env("TOKENWARDEN_ALLOW_HOST", "box.example, other.example");
    let served = Served::spawn(cmd, addr);
    let port = addr.port();
    let send = |path: &str, headers: &[String]| {
        let mut head = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        raw(addr, head.as_bytes(), Duration::from_secs(20)).expect("an answer")
    };
    let host = |h: &str| format!("Host: {h}");
    let origin = |o: &str| format!("Origin: {o}");
    let paths = [
        "/v1/credentials",
        "/v1/credentials/rb",
        "/v1/credentials/rb/token",
        "/metrics",
        "/nowhere",
    ];
    for path in paths {
        for h in [
            "rebind.attacker.example".to_owned(),
            format!("rebind.attacker.example:{port}"),
            format!("127.0.0.1.attacker.example:{port}"),
            format!("localhost.attacker.example:{port}"),
        ] {
            let a = send(path, &[host(&h)]);
            assert_eq!(
                (a.status, a.code().as_str()),
                (403, "forbidden_host"),
                "{path} Host {h}: {}",
                a.body
            );
            assert!(!a.body.contains(&g.access_token) && !a.body.contains("\"rb\""));
        }
        // The server's own names, any port; names allowed by flag or env.
        for h in [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            "LOCALHOST".to_owned(),
            "tw.lan:443".to_owned(),
            "box.example".to_owned(),
            "other.example".to_owned(),
        ] {
            let a = send(path, &[host(&h)]);
            assert!(
                a.status != 403 && a.status != 400,
                "{path} Host {h}: {} {}",
                a.status,
                a.body
            );
        }
        // A foreign Origin, even with a good Host.
        for o in [
            "http://rebind.attacker.example".to_owned(),
            format!("http://evil.example:{port}"),
            format!("https://127.0.0.1:{port}"),
            "null".to_owned(),
        ] {
            let a = send(path, &[host(&format!("127.0.0.1:{port}")), origin(&o)]);
            assert_eq!(
                (a.status, a.code().as_str()),
                (403, "forbidden_origin"),
                "{path} Origin {o}: {}",
                a.body
            );
        }
        // The server's own origin is fine (its own page, if it had one).
        let own = format!("http://127.0.0.1:{port}");
        let a = send(path, &[host(&format!("127.0.0.1:{port}")), origin(&own)]);
        assert_ne!(a.status, 403, "{path}: {}", a.body);
    }
    // The token route works for a local client, and health checks for all.
    let a = send(
        "/v1/credentials/rb/token",
        &[host(&format!("localhost:{port}"))],
    );
    assert_eq!(token_of(&a.expect(200)), g.access_token);
    let a = send("/healthz", &[host("rebind.attacker.example")]);
    assert_eq!(a.status, 200, "{}", a.body);
    // HTTP/1.1 without Host is malformed; HTTP/1.0 may omit it.
    let a = raw(
        addr,
        b"GET /v1/credentials HTTP/1.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(20),
    )
    .expect("an answer");
    assert_eq!(a.status, 400, "{}", a.body);
    let a = raw(
        addr,
        b"GET /v1/credentials HTTP/1.0\r\n\r\n",
        Duration::from_secs(20),
    )
    .expect("an answer");
    assert_eq!(a.status, 200, "{}", a.body);
    let (status, stderr) = served.terminate();
    assert_eq!(status, Some(0), "{stderr}");
}

/// With an API key a page cannot authenticate, so any Host is answered
/// (the server may be reached by a DNS name); a foreign Origin is still
/// refused, before the key is even looked at.
#[test]
fn with_a_key_any_host_but_never_a_foreign_origin() {
    let env = Env::new();
    env.login("k", 3000);
    let srv = InProcess::start(&env, &[KEY], 2);
    let req = |extra: &[&str]| {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        raw(
            srv.addr(),
            &raw_request("GET", "/v1/credentials/k", Some(KEY), &extra, b""),
            Duration::from_secs(20),
        )
        .expect("an answer")
    };
    // raw_request sends `Host: test`.
    req(&[]).expect(200);
    let a = req(&["Origin: http://test"]);
    assert_eq!(a.status, 200, "the server's own origin: {}", a.body);
    let a = req(&["Origin: https://evil.example"]);
    assert_eq!((a.status, a.code().as_str()), (403, "forbidden_origin"));
}
