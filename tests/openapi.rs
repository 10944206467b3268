//! The contract: docs/openapi.yaml against the real server (in-process, with
//! the fake OAuth server upstream). Every answer the server gives here must
//! have a status documented for its route and method, the documented
//! required headers, and a body that fits the documented schema for that
//! status and content type; every route the server has must be documented,
//! and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::fake_oauth::{Fault, Grant, CODEX_CLIENT_ID};
use crate::common::http::{free_port, raw, raw_request, Answer, Client, InProcess};
use crate::common::spec::{Seen, Spec};
use crate::common::tw::{now, Env};
use serde_json::{json, Value};
use tokenwarden::http::{ApiError, ApiKeys, Server, ServerOptions};

const KEY: &str = "contract-admin-key-0123456789";
const READ_KEY: &str = "contract-read-key-9876543210";

/// The server's routes and methods (src/http/routes.rs), as this test
/// knows them: the document must list exactly these.
const ROUTES: &[(&str, &[&str])] = &[
    ("/healthz", &["GET"]),
    ("/metrics", &["GET"]),
    ("/v1/credentials", &["GET", "POST"]),
    ("/v1/credentials/{id}", &["GET", "DELETE"]),
    ("/v1/credentials/{id}/token", &["GET"]),
    ("/v1/credentials/{id}/reject", &["POST"]),
    ("/v1/credentials/{id}/refresh", &["POST"]),
    ("/v1/credentials/{id}/events", &["GET"]),
    ("/v1/credentials/{id}/quota", &["GET", "POST"]),
    ("/v1/credentials/{id}/cooldown", &["POST", "DELETE"]),
    ("/v1/pools/{name}/token", &["GET"]),
    ("/v1/pools/{name}/reject", &["POST"]),
    ("/v1/notifications", &["GET"]),
    ("/oauth/token", &["POST"]),
    ("/v1/credentials/{id}/login", &["POST"]),
    ("/oauth/callback", &["GET"]),
];

/// Methods tried on every path.
const PROBE_METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE",
];

/// Who sends a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Admin,
    Read,
    Anon,
    Wrong,
}

impl Who {
    fn key(self) -> Option<&'static str> {
        match self {
            Who::Admin => Some(KEY),
            Who::Read => Some(READ_KEY),
            Who::Anon => None,
            Who::Wrong => Some("contract-admin-key-012345678"),
        }
    }
}

/// A server with an admin and a read-only key (from a key file), the fake
/// upstream, the document, and a record of every (route, method, status)
/// seen.
struct Harness {
    spec: Spec,
    env: Env,
    srv: InProcess,
    seen: Mutex<BTreeSet<(String, String, u16)>>,
}

impl Harness {
    fn new() -> Harness {
        let env = Env::new();
        let file = env.dir.path().join("api-keys");
        std::fs::write(
            &file,
            format!("# contract test\nread:{READ_KEY}\nadmin:{KEY}\n"),
        )
        .expect("write key file");
        let options = ServerOptions {
            threads: 4,
            keys: ApiKeys::from_file(&file).expect("key file"),
            ..ServerOptions::default()
        };
        let server =
            Server::start(Arc::new(env.warden()), "127.0.0.1:0", options).expect("start server");
        let client = Client::new(server.addr(), Some(KEY));
        Harness {
            spec: Spec::load(),
            env,
            srv: InProcess { server, client },
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// A well-formed request through ureq (Content-Length when a body).
    fn send(&self, who: Who, method: &str, target: &str, body: Option<&str>) -> Answer {
        let a = self
            .srv
            .client
            .with_key(who.key())
            .send(method, target, body.map(str::as_bytes));
        self.check(method, target, a)
    }

    /// A raw request with extra header lines.
    fn raw(&self, who: Who, method: &str, target: &str, extra: &[&str], body: &[u8]) -> Answer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let a = raw(
            self.srv.addr(),
            &raw_request(method, target, who.key(), &extra, body),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("no answer to {method} {target}"));
        self.check(method, target, a)
    }

    /// Checks `a` against the document (panicking with the request and
    /// the answer if it does not fit) and records it.
    fn check(&self, method: &str, target: &str, a: Answer) -> Answer {
        let seen = Seen {
            method,
            target,
            status: a.status,
            headers: &a.headers,
            body: &a.body,
        };
        if let Err(e) = self.spec.check(&seen) {
            panic!(
                "{method} {target} → {}: does not match docs/openapi.yaml: {e}\nheaders: {:?}",
                a.status, a.headers
            );
        }
        let path = target.split('?').next().unwrap_or_default();
        let route = match self.spec.route_of(path) {
            Some(p) if self.spec.operation(p, method).is_some() => p.to_owned(),
            _ => "x-unrouted".to_owned(),
        };
        let method = match route.as_str() {
            "x-unrouted" => "*".to_owned(),
            _ => method.to_owned(),
        };
        self.seen.lock().unwrap().insert((route, method, a.status));
        a
    }

    fn handle(&self, id: &str) -> String {
        tokenwarden::facade::create_handle(&self.env.warden(), id, "contract")
            .expect("create handle")
            .expose()
            .to_owned()
    }
}

fn facade_body(handle: &str) -> String {
    json!({"grant_type": "refresh_token", "refresh_token": handle, "client_id": CODEX_CLIENT_ID})
        .to_string()
}

fn reject_body(token: &str) -> String {
    json!({ "access_token": token }).to_string()
}

/// The path of an operation's pattern with `{id}` filled in.
fn fill(pattern: &str, id: &str) -> String {
    pattern.replace("{id}", id)
}

/// docs/openapi.yaml documents exactly the server's routes and methods, and
/// each route is in a route group with a test of its own below.
#[test]
fn the_document_lists_exactly_the_servers_routes() {
    let spec = Spec::load();
    for (pattern, _) in ROUTES {
        group_of(pattern);
    }
    let documented: BTreeSet<(String, String)> = spec.operations().into_iter().collect();
    let known: BTreeSet<(String, String)> = ROUTES
        .iter()
        .flat_map(|(p, ms)| ms.iter().map(|m| (p.to_string(), m.to_string())))
        .collect();
    let missing: Vec<_> = known.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&known).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "undocumented routes: {missing:?}; documented routes the server lacks: {extra:?}"
    );
}

/// What the document must say everywhere, so no route forgets a case.
#[test]
fn the_document_is_consistent() {
    let spec = Spec::load();
    assert_eq!(spec.doc["openapi"], "3.1.0");
    let scheme = &spec.doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(
        (&scheme["type"], &scheme["scheme"]),
        (&json!("http"), &json!("bearer"))
    );
    assert_eq!(spec.doc["security"], json!([{"bearerAuth": []}]));
    let mut ids = BTreeSet::new();
    for (pattern, method) in spec.operations() {
        let op = spec.operation(&pattern, &method).expect("operation");
        let what = format!("{method} {pattern}");
        assert!(
            ids.insert(op["operationId"].as_str().expect("operationId")),
            "{what}"
        );
        let statuses: BTreeMap<u16, &Value> = spec
            .responses_for(&method, &fill(&pattern, "x"))
            .into_iter()
            .collect();
        let public = spec.is_public(&pattern, &method);
        assert_eq!(
            public,
            (pattern == "/healthz" && method == "GET")
                || pattern == "/oauth/token"
                || pattern == "/oauth/callback",
            "{what}: only GET /healthz, the facade and the sign-in callback need no key"
        );
        // Every request is size-checked and may carry a bad query or body.
        for s in [400, 413] {
            assert!(statuses.contains_key(&s), "{what} lacks {s}");
        }
        if !public {
            let r = statuses
                .get(&401)
                .unwrap_or_else(|| panic!("{what} lacks 401"));
            assert_eq!(r["headers"]["WWW-Authenticate"]["required"], true, "{what}");
        }
        if pattern.contains("{id}") {
            assert!(statuses.contains_key(&404), "{what} lacks 404");
        }
        // 403: a refused Host or Origin anywhere but /healthz, and a
        // read-only key where an admin key is needed.
        assert_eq!(
            statuses.contains_key(&403),
            pattern != "/healthz",
            "{what}: 403 everywhere but /healthz"
        );
        for (status, r) in &statuses {
            if *status == 503 {
                let h = spec.resolve(&r["headers"]["Retry-After"]);
                assert_eq!(h["required"], true, "{what}: 503 without Retry-After");
                assert_eq!(spec.resolve(&h["schema"])["type"], "integer", "{what}");
            }
            if *status == 204 {
                assert!(r.get("content").is_none(), "{what}: 204 has no body");
            } else {
                assert!(r.get("content").is_some(), "{what}: {status} has no body");
            }
        }
    }
    // Requests no operation covers.
    let unrouted = spec.doc["x-unrouted"]["responses"]
        .as_object()
        .expect("x-unrouted");
    let statuses: Vec<&str> = unrouted.keys().map(String::as_str).collect();
    assert_eq!(statuses, ["400", "401", "403", "404", "405", "413"]);
    let allow = spec.resolve(&unrouted["405"]);
    assert_eq!(allow["headers"]["Allow"]["required"], true);
}

/// Every documented path with every method: the documented ones are
/// served (never 404 "no such route" or 405), the others are 405 with the
/// documented methods in `Allow`; paths near the documented ones are 404.
#[test]
fn the_document_covers_every_route_of_the_server() {
    let h = Harness::new();
    h.env.login("probe", 3000);
    h.env.login("probe-del", 3000);
    let no_route = ApiError::no_route().message;
    let mut ops = h.spec.operations();
    // The delete last, on its own credential.
    ops.sort_by_key(|(_, m)| m == "DELETE");
    let mut by_path: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (p, m) in &ops {
        by_path.entry(p.clone()).or_default().push(m.clone());
    }
    for (pattern, documented) in &by_path {
        for method in PROBE_METHODS {
            let id = if method == "DELETE" {
                "probe-del"
            } else {
                "probe"
            };
            let target = fill(pattern, id);
            let body = match (pattern.as_str(), method) {
                (_, "GET" | "HEAD" | "DELETE" | "OPTIONS" | "TRACE") => None,
                ("/v1/credentials/{id}/reject", _) => Some(reject_body("not-current")),
                ("/oauth/token", _) => Some(facade_body("twh_unknown")),
                _ => Some(String::new()),
            };
            let a = h.send(Who::Admin, method, &target, body.as_deref());
            if documented.iter().any(|m| m == method) {
                assert_ne!(a.status, 405, "{method} {target} is documented: {}", a.body);
                let routed = a.status != 404 || a.message() != no_route;
                assert!(routed, "{method} {target} is documented but not routed");
            } else {
                assert_eq!(
                    a.status, 405,
                    "{method} {target} is not documented: {}",
                    a.body
                );
                let mut allow: Vec<&str> = a
                    .header("allow")
                    .expect("Allow")
                    .split(',')
                    .map(str::trim)
                    .collect();
                allow.sort_unstable();
                let mut want: Vec<&str> = documented.iter().map(String::as_str).collect();
                want.sort_unstable();
                assert_eq!(allow, want, "{method} {target}: Allow");
            }
        }
    }
    // `/` is the console's (a redirect to `/ui`), outside the API's routes.
    let root = h.raw(Who::Anon, "GET", "/", &[], b"");
    assert_eq!((root.status, root.header("location")), (303, Some("/ui")));
    assert!(h.spec.is_console("/") && h.spec.route_of("/").is_none());
    for path in [
        "/healthz/",
        "/metrics/x",
        "/v1",
        "/v1/",
        "/v1/credential",
        "/v1/credentials/probe/",
        "/v1/credentials/probe/unknown",
        "/v1/credentials/probe/token/x",
        "/v2/credentials",
        "/oauth",
        "/oauth/token/",
        "/oauth/authorize",
    ] {
        for method in PROBE_METHODS {
            let a = h.send(Who::Admin, method, path, None);
            match h.spec.route_of(path) {
                None => assert_eq!(a.status, 404, "{method} {path}: {}", a.body),
                Some(p) => panic!("{path} is meant to be undocumented, but matches {p}"),
            }
            // (A HEAD answer has no body.)
            if a.status == 404 && method != "HEAD" {
                assert_eq!(a.message(), no_route, "{method} {path}");
            }
        }
    }
}

/// A route group: the routes one test below drives through their success
/// and error paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    Service,
    Credentials,
    Tokens,
    Events,
    Quota,
    Facade,
    Login,
    Pools,
}

/// The group of each of the server's routes ([`ROUTES`]).
fn group_of(pattern: &str) -> Group {
    match pattern {
        "/healthz" | "/metrics" => Group::Service,
        "/v1/credentials" | "/v1/credentials/{id}" => Group::Credentials,
        "/v1/credentials/{id}/token"
        | "/v1/credentials/{id}/reject"
        | "/v1/credentials/{id}/refresh" => Group::Tokens,
        "/v1/credentials/{id}/events" => Group::Events,
        "/v1/credentials/{id}/quota" => Group::Quota,
        "/oauth/token" => Group::Facade,
        "/v1/credentials/{id}/login" | "/oauth/callback" => Group::Login,
        "/v1/credentials/{id}/cooldown"
        | "/v1/pools/{name}/token"
        | "/v1/pools/{name}/reject"
        | "/v1/notifications" => Group::Pools,
        other => panic!("{other} is in no route group"),
    }
}

impl Harness {
    /// The documented operations of `group`.
    fn operations_of(&self, group: Group) -> Vec<(String, String)> {
        let ops: Vec<_> = self
            .spec
            .operations()
            .into_iter()
            .filter(|(pattern, _)| group_of(pattern) == group)
            .collect();
        assert!(!ops.is_empty(), "{group:?} has no documented operation");
        ops
    }

    /// Errors any request of `group` can get: no or a wrong key, a page of
    /// another origin, a bogus query parameter, a declared body over
    /// 1 MiB, an unknown credential.
    fn errors_of_any_request(&self, group: Group) {
        use Who::{Admin, Anon, Wrong};
        for (pattern, method) in self.operations_of(group) {
            let target = fill(&pattern, "nobody");
            if !self.spec.is_public(&pattern, &method) {
                for who in [Anon, Wrong] {
                    let a = self.send(who, &method, &target, None).expect(401);
                    assert_eq!(a.code(), "unauthorized");
                }
            }
            // A page of another origin, whatever the key (checked first).
            if pattern != "/healthz" {
                for who in [Admin, Anon] {
                    let a = self.raw(
                        who,
                        &method,
                        &target,
                        &["Origin: https://evil.example"],
                        b"",
                    );
                    assert_eq!(
                        (a.status, a.code().as_str()),
                        (403, "forbidden_origin"),
                        "{method} {target}"
                    );
                }
            }
            // An authorization response ignores the parameters it does not
            // know (RFC 6749 §4.1.2, the document says so): its bad query is
            // a known one given twice.
            let bad = match pattern.as_str() {
                "/oauth/callback" => "state=a&state=b",
                _ => "bogus=1",
            };
            let a = self.send(Admin, &method, &format!("{target}?{bad}"), None);
            assert_eq!(a.status, 400, "{method} {target}?{bad}: {}", a.body);
            assert_eq!(a.code(), "bad_request");
            let a = self.raw(Admin, &method, &target, &["Content-Length: 2000000"], b"");
            assert_eq!(
                (a.status, a.code().as_str()),
                (413, "too_large"),
                "{method} {target}"
            );
            if pattern.contains("{id}") {
                let body = (method == "POST").then(|| reject_body("x"));
                let a = self
                    .send(Admin, &method, &target, body.as_deref())
                    .expect(404);
                assert_eq!(a.code(), "not_found", "{method} {target}");
            }
        }
    }

    /// Every documented status but 500 of `group`'s operations was seen,
    /// and no 5xx but 503.
    fn assert_all_seen(&self, group: Group) {
        let seen = self.seen.lock().unwrap().clone();
        let mut missing = Vec::new();
        for (pattern, method) in self.operations_of(group) {
            for (status, _) in self.spec.responses_for(&method, &fill(&pattern, "x")) {
                if status != 500 && !seen.contains(&(pattern.clone(), method.clone(), status)) {
                    missing.push(format!("{method} {pattern} {status}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "documented but never seen: {missing:#?}"
        );
        assert_no_5xx_but_503(&seen);
        eprintln!(
            "contract, {group:?}: {} (route, method, status) combinations seen",
            seen.len()
        );
    }

    /// A new login `id` imported through the API.
    fn import(&self, id: &str) -> Grant {
        let g = self.env.fake.new_family(id);
        let record = g.import_json(id, "codex", &self.env.fake.token_url());
        self.send(
            Who::Admin,
            "POST",
            "/v1/credentials",
            Some(&record.to_string()),
        )
        .expect(201);
        g
    }

    /// A login `id` that upstream revoked, found dead by a refresh: that
    /// refresh's answer (410).
    fn dead(&self, id: &str) -> Answer {
        self.env.login(id, 3000);
        self.env.fake.revoke_family(id);
        self.send(
            Who::Read,
            "POST",
            &format!("/v1/credentials/{id}/refresh"),
            None,
        )
        .expect(410)
    }

    /// An expired login `id` whose refresh upstream answered with 429 and
    /// `Retry-After: 120`, so it backs off: that token call's answer (503).
    fn backing_off(&self, id: &str) -> Answer {
        self.env.login(id, -10);
        self.env.fake.push_fault(Fault::retry_after(
            429,
            r#"{"error":"rate_limited"}"#,
            "120",
        ));
        self.send(
            Who::Read,
            "GET",
            &format!("/v1/credentials/{id}/token"),
            None,
        )
        .expect(503)
    }
}

/// Drives the routes of `group` on a harness of their own: first the errors
/// any of their requests can get, then `paths` (their success and error
/// paths), and checks that every documented status but 500 of their
/// operations was seen.
fn route_group(group: Group, paths: impl FnOnce(&Harness)) {
    let h = Harness::new();
    h.errors_of_any_request(group);
    paths(&h);
    h.assert_all_seen(group);
}

/// No 5xx among the (route, method, status) seen but 503.
fn assert_no_5xx_but_503(seen: &BTreeSet<(String, String, u16)>) {
    assert!(
        seen.iter().all(|(_, _, s)| *s < 500 || *s == 503),
        "a 5xx other than 503: {seen:?}"
    );
}

/// Service routes: `/healthz` and `/metrics` answer what the document
/// says, through every documented status but 500.
#[test]
fn service_routes_match_the_document() {
    use Who::{Anon, Read};
    route_group(Group::Service, |h| {
        let health = h.send(Anon, "GET", "/healthz", None).expect(200);
        assert_eq!(health.json(), json!({"status": "ok"}));
        let metrics = h.send(Read, "GET", "/metrics", None).expect(200);
        assert!(metrics.body.contains("# TYPE"), "{}", metrics.body);
    });
}

/// Credentials (import, list, show, delete) match the document through
/// every documented status but 500, never echo a secret, and a delete
/// during a refresh is refused at once.
#[test]
fn credential_routes_match_the_document() {
    use Who::{Admin, Read};
    route_group(Group::Credentials, |h| {
        let fake = &h.env.fake;
        let url = fake.token_url();
        let mib = 1usize << 20;

        // Import, list, show.
        assert_eq!(
            h.send(Admin, "GET", "/v1/credentials", None)
                .expect(200)
                .json(),
            json!({"credentials": []})
        );
        let alice = fake.new_family("alice");
        let record = alice.import_json("alice", "codex", &url).to_string();
        let a = h
            .send(Admin, "POST", "/v1/credentials", Some(&record))
            .expect(201);
        assert_eq!(a.header("location"), Some("/v1/credentials/alice"));
        let a = h
            .send(Admin, "POST", "/v1/credentials", Some(&record))
            .expect(409);
        assert_eq!(a.code(), "exists");
        assert_eq!(
            h.send(Read, "POST", "/v1/credentials", Some(&record))
                .expect(403)
                .code(),
            "forbidden"
        );
        h.send(Admin, "POST", "/v1/credentials?replace=1", Some(&record))
            .expect(201);
        // A refresh in flight: a delete is refused at once (409), never waited
        // out over HTTP, and deletes nothing.
        fake.set_latency(Duration::from_millis(1500));
        let pending = {
            let client = h.srv.client.with_key(Admin.key());
            std::thread::spawn(move || client.send("POST", "/v1/credentials/alice/refresh", None))
        };
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while fake.stats().in_flight == 0 {
            assert!(
                std::time::Instant::now() < until,
                "the refresh never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let a = h
            .send(Admin, "DELETE", "/v1/credentials/alice", None)
            .expect(409);
        assert_eq!(a.code(), "refresh_in_progress");
        assert!(a.header("retry-after").is_some());
        pending.join().expect("refresh").expect(200);
        fake.set_latency(Duration::ZERO);
        let bob = fake.new_family("bob");
        let auth_json = bob.codex_auth_json().to_string();
        h.send(
            Admin,
            "POST",
            "/v1/credentials?id=bob&provider=codex",
            Some(&auth_json),
        )
        .expect(201);
        let (carol, dave) = (fake.new_family("carol"), fake.new_family("dave"));
        let many = json!([
            carol.import_json("carol", "codex", &url),
            dave.import_json("dave", "codex", &url)
        ]);
        let a = h
            .send(Admin, "POST", "/v1/credentials", Some(&many.to_string()))
            .expect(201);
        assert_eq!(a.json()["credentials"].as_array().map(Vec::len), Some(2));
        assert_eq!(a.header("location"), None);
        // No access token, no expiry: nulls in the summary.
        let bare = json!({"id": "bare", "provider": "codex", "refresh_token": "rt-bare", "token_url": url});
        let a = h
            .send(Admin, "POST", "/v1/credentials", Some(&bare.to_string()))
            .expect(201);
        assert_eq!(a.json()["expires_at"], Value::Null);
        for (target, body) in [
            ("/v1/credentials", "{not json"),
            ("/v1/credentials", ""),
            ("/v1/credentials", "[]"),
            ("/v1/credentials", r#"{"provider":"codex"}"#),
            ("/v1/credentials?id=..", record.as_str()),
            ("/v1/credentials?provider=nope", record.as_str()),
            ("/v1/credentials?replace=maybe", record.as_str()),
            ("/v1/credentials?id=a&id=b", record.as_str()),
        ] {
            let a = h.send(Admin, "POST", target, Some(body)).expect(400);
            assert!(!a.body.contains(&alice.refresh_token));
        }
        h.send(Admin, "POST", "/v1/credentials", Some(&" ".repeat(mib + 1)))
            .expect(413);
        let chunked = h
            .srv
            .client
            .post_chunked("/v1/credentials", vec![b' '; mib + 10]);
        h.check("POST", "/v1/credentials", chunked).expect(413);
        let list = h.send(Read, "GET", "/v1/credentials", None).expect(200);
        for g in [&alice, &bob, &carol, &dave] {
            assert!(!list.body.contains(&g.refresh_token) && !list.body.contains(&g.access_token));
        }
        h.send(Read, "GET", "/v1/credentials/alice", None)
            .expect(200);
        for bad in ["..", "%2f", "a%00b", "%2e%2e", &"x".repeat(129)] {
            for method in ["GET", "DELETE"] {
                let a = h.raw(Admin, method, &format!("/v1/credentials/{bad}"), &[], b"");
                assert_eq!((a.status, a.code().as_str()), (400, "bad_request"), "{bad}");
            }
            h.raw(
                Admin,
                "GET",
                &format!("/v1/credentials/{bad}/token"),
                &[],
                b"",
            )
            .expect(400);
        }

        // Delete: admin only; events outlive the credential.
        h.send(Read, "DELETE", "/v1/credentials/alice", None)
            .expect(403);
        let a = h
            .send(Admin, "DELETE", "/v1/credentials/alice", None)
            .expect(204);
        assert!(a.body.is_empty());
        h.send(Admin, "DELETE", "/v1/credentials/alice", None)
            .expect(404);
        h.send(Read, "GET", "/v1/credentials/alice/events", None)
            .expect(200);
    });
}

/// Token, reject and refresh match the document through every documented
/// status but 500: served, refreshed, forced (admin only), dead (410 with
/// the reason) and backing off (503 with `Retry-After`).
#[test]
fn token_routes_match_the_document() {
    use Who::{Admin, Read};
    route_group(Group::Tokens, |h| {
        // Tokens.
        let tok = h.env.login("tok", 3000);
        let t = h
            .send(Read, "GET", "/v1/credentials/tok/token", None)
            .expect(200)
            .json();
        assert_eq!(t["access_token"], tok.access_token.as_str());
        assert_eq!(
            t["expires_at"].as_i64(),
            Some(now() + t["expires_in"].as_i64().unwrap())
        );
        let t2 = h
            .send(
                Read,
                "GET",
                "/v1/credentials/tok/token?min_ttl=3500&wait=5",
                None,
            )
            .expect(200)
            .json()["access_token"]
            .clone();
        assert_ne!(t2, tok.access_token.as_str());
        for q in [
            "min_ttl=abc",
            "min_ttl=-1",
            "wait=301",
            "wait=x",
            "wait=1&wait=1",
        ] {
            h.send(Read, "GET", &format!("/v1/credentials/tok/token?{q}"), None)
                .expect(400);
        }
        let current = t2.as_str().unwrap().to_owned();
        let t3 = h
            .send(
                Read,
                "POST",
                "/v1/credentials/tok/reject?wait=5",
                Some(&reject_body(&current)),
            )
            .expect(200)
            .json();
        assert_ne!(t3["access_token"], current.as_str());
        for body in [
            "{",
            "[]",
            "{}",
            r#"{"access_token":""}"#,
            r#"{"access_token":1}"#,
        ] {
            h.send(Read, "POST", "/v1/credentials/tok/reject", Some(body))
                .expect(400);
        }
        h.send(Read, "POST", "/v1/credentials/tok/refresh", None)
            .expect(200);
        h.send(
            Admin,
            "POST",
            "/v1/credentials/tok/refresh?force=1&wait=5",
            Some("ignored"),
        )
        .expect(200);
        let a = h
            .send(Read, "POST", "/v1/credentials/tok/refresh?force=1", None)
            .expect(403);
        assert_eq!(a.code(), "forbidden");
        h.send(
            Read,
            "POST",
            "/v1/credentials/tok/refresh?force=maybe",
            None,
        )
        .expect(400);

        // Dead: 410 with the reason; the summary says why.
        let a = h.dead("gone");
        assert_eq!(a.json()["error"]["reason"], "refresh_token_invalidated");
        h.send(Read, "GET", "/v1/credentials/gone/token", None)
            .expect(410);
        h.send(
            Read,
            "POST",
            "/v1/credentials/gone/reject",
            Some(&reject_body("x")),
        )
        .expect(410);
        h.send(Admin, "POST", "/v1/credentials/gone/refresh?force=1", None)
            .expect(410);
        let s = h
            .send(Read, "GET", "/v1/credentials/gone", None)
            .expect(200)
            .json();
        assert_eq!(
            (&s["state"], &s["dead_reason"]),
            (&json!("dead"), &json!("refresh_token_invalidated"))
        );
        assert_eq!(s["last_error"]["code"], "refresh_token_invalidated");

        // Unavailable: an expired credential whose refresh fails transiently.
        let a = h.backing_off("busy");
        let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
        assert!(retry >= 100, "upstream asked for 120 s: {retry}");
        assert_eq!(a.json()["error"]["retry_after"], retry);
        assert_eq!(a.code(), "unavailable");
        h.send(Read, "POST", "/v1/credentials/busy/refresh", None)
            .expect(503);
        h.send(
            Read,
            "POST",
            "/v1/credentials/busy/reject",
            Some(&reject_body("x")),
        )
        .expect(503);
        let s = h
            .send(Read, "GET", "/v1/credentials/busy", None)
            .expect(200)
            .json();
        assert!(
            s["next_attempt_at"]
                .as_i64()
                .is_some_and(|t| t >= now() + 100),
            "{s}"
        );
        // A transient failure on a never-usable credential, from a dead port.
        let port = free_port();
        let down = json!({"id": "down", "provider": "oauth2", "refresh_token": "r-down",
            "token_url": format!("http://127.0.0.1:{port}/token"), "client_id": "c"});
        h.send(Admin, "POST", "/v1/credentials", Some(&down.to_string()))
            .expect(201);
        h.send(Read, "GET", "/v1/credentials/down/token", None)
            .expect(503);
    });
}

/// Events match the document through every documented status but 500,
/// and `limit` is honoured or refused.
#[test]
fn event_routes_match_the_document() {
    use Who::Read;
    route_group(Group::Events, |h| {
        // A history: the import and three forced refreshes.
        h.env.login("tok", 3000);
        let warden = h.env.warden();
        for _ in 0..3 {
            warden.refresh("tok", true).expect("refresh");
        }
        let ev = h
            .send(Read, "GET", "/v1/credentials/tok/events", None)
            .expect(200)
            .json();
        assert!(
            ev["events"].as_array().is_some_and(|e| e.len() >= 4),
            "{ev}"
        );
        let one = h
            .send(Read, "GET", "/v1/credentials/tok/events?limit=1", None)
            .expect(200);
        assert_eq!(one.json()["events"].as_array().map(Vec::len), Some(1));
        for q in ["limit=x", "limit=-1", "limit=1.5"] {
            h.send(
                Read,
                "GET",
                &format!("/v1/credentials/tok/events?{q}"),
                None,
            )
            .expect(400);
        }
    });
}

/// Quota matches the document through every documented status but 500:
/// none yet, fetched, a failed fetch, a provider without one, a dead
/// credential (410) and one backing off (503).
#[test]
fn quota_routes_match_the_document() {
    use Who::{Admin, Read};
    route_group(Group::Quota, |h| {
        let fake = &h.env.fake;
        let url = fake.token_url();
        h.import("alice");

        // Quota: none yet, fetched, a failed fetch, a provider without one.
        assert_eq!(
            h.send(Read, "GET", "/v1/credentials/alice/quota", None)
                .expect(404)
                .code(),
            "no_quota"
        );
        let q = h
            .send(Read, "POST", "/v1/credentials/alice/quota", None)
            .expect(200)
            .json();
        assert_eq!(q["status"], "ok");
        h.send(Read, "GET", "/v1/credentials/alice/quota", None)
            .expect(200);
        fake.push_usage_fault(Fault::status(500, r#"{"error":"boom"}"#));
        let q = h
            .send(Read, "POST", "/v1/credentials/alice/quota", None)
            .expect(200)
            .json();
        assert_ne!(q["status"], "ok");
        assert!(q["error"].is_string(), "{q}");
        let s = h
            .send(Read, "GET", "/v1/credentials/alice", None)
            .expect(200)
            .json();
        assert!(s["quota"].is_object(), "{s}");
        let list = h
            .send(Read, "GET", "/v1/credentials", None)
            .expect(200)
            .json();
        assert!(list["credentials"][0]["quota"].is_object(), "{list}");
        let o2 = json!({"id": "o2", "provider": "oauth2", "refresh_token": "r-o2", "token_url": url, "client_id": "c"});
        h.send(Admin, "POST", "/v1/credentials", Some(&o2.to_string()))
            .expect(201);
        for method in ["GET", "POST"] {
            let a = h
                .send(Read, method, "/v1/credentials/o2/quota", None)
                .expect(404);
            assert_eq!(a.code(), "quota_unsupported");
        }

        // Dead: 410.
        h.dead("gone");
        h.send(Read, "POST", "/v1/credentials/gone/quota", None)
            .expect(410);

        // Backing off: 503.
        h.backing_off("busy");
        h.send(Read, "POST", "/v1/credentials/busy/quota", None)
            .expect(503);
    });
}

/// The Codex facade answers in OpenAI's shapes, JSON or form-encoded,
/// through every documented status but 500, and never with the real
/// refresh token.
#[test]
fn facade_route_matches_the_document() {
    use Who::Anon;
    route_group(Group::Facade, |h| {
        let mib = 1usize << 20;
        let alice = h.import("alice");
        h.dead("gone");
        h.backing_off("busy");

        // The Codex facade: OpenAI's shapes.
        let handle = h.handle("alice");
        let a = h
            .send(Anon, "POST", "/oauth/token", Some(&facade_body(&handle)))
            .expect(200);
        let body = a.json();
        assert_eq!(body["refresh_token"], handle.as_str());
        assert!(
            body["id_token"].is_string() && body["expires_in"].is_i64(),
            "{body}"
        );
        assert!(!a.body.contains(&alice.refresh_token));
        let form =
            format!("grant_type=refresh_token&refresh_token={handle}&client_id={CODEX_CLIENT_ID}");
        h.raw(
            Anon,
            "POST",
            "/oauth/token",
            &["Content-Type: application/x-www-form-urlencoded"],
            form.as_bytes(),
        )
        .expect(200);
        for body in [
            "garbage".to_owned(),
            "[1]".to_owned(),
            json!({"grant_type": "authorization_code", "refresh_token": handle}).to_string(),
            json!({"grant_type": "refresh_token"}).to_string(),
        ] {
            let a = h
                .send(Anon, "POST", "/oauth/token", Some(&body))
                .expect(400);
            assert_eq!(a.json()["error"]["code"], "invalid_request");
            assert_eq!(a.json()["error"]["type"], "invalid_request_error");
        }
        for presented in [
            "twh_unknown".to_owned(),
            "not-a-handle".to_owned(),
            h.handle("gone"),
        ] {
            let a = h.send(Anon, "POST", "/oauth/token", Some(&facade_body(&presented)));
            let a = a.expect(401);
            assert_eq!(a.json()["error"]["code"], "refresh_token_invalidated");
        }
        let a = h
            .send(
                Anon,
                "POST",
                "/oauth/token",
                Some(&facade_body(&h.handle("busy"))),
            )
            .expect(503);
        assert_eq!(a.json()["error"]["code"], "temporarily_unavailable");
        let a = h
            .send(Anon, "POST", "/oauth/token", Some(&" ".repeat(mib + 1)))
            .expect(413);
        assert_eq!(a.code(), "too_large");
    });
}

/// Signing in again over the API, against a real OpenID provider
/// (tests/login.rs's): the authorize URL for an `oauth2` credential, the
/// refusals (read-only key, another provider's credential, a bad body, an
/// issuer that does not answer, too many sign-ins waiting), and the
/// browser's return to `/oauth/callback` (signed in; an unknown state).
#[test]
fn login_routes_match_the_document() {
    use Who::{Admin, Anon, Read};
    route_group(Group::Login, |h| {
        let idp = crate::login::Idp::start();
        h.import("alice");
        let record = json!({
            "provider": "oauth2", "refresh_token": "rt-ops-old",
            "token_url": format!("{}/token", idp.issuer), "client_id": "tw-cli",
        });
        h.send(
            Admin,
            "POST",
            "/v1/credentials?id=ops",
            Some(&record.to_string()),
        )
        .expect(201);
        let start = json!({"issuer": idp.issuer}).to_string();
        let a = h
            .send(Admin, "POST", "/v1/credentials/ops/login", Some(&start))
            .expect(200);
        let url = a.json()["authorize_url"].as_str().unwrap().to_owned();
        assert!(a.json()["redirect_uri"]
            .as_str()
            .unwrap()
            .ends_with("/oauth/callback"));
        // The browser: the provider's forms, then back to the server.
        let mut b = crate::login::Browser::default();
        let back = b.sign_in(&idp.issuer, &url, "olga", false);
        let target = &back[back.find("/oauth/callback").expect("to the server")..];
        let page = h.send(Anon, "GET", target, None).expect(200);
        assert!(
            page.body.contains("You can close this tab"),
            "{}",
            page.body
        );
        let ops = h.env.warden().get("ops").unwrap();
        assert_eq!(ops.claims.user_id.as_deref(), Some("olga"));
        assert_ne!(ops.refresh_token.expose(), "rt-ops-old");
        // The state was good once.
        let again = h.send(Anon, "GET", target, None).expect(400);
        assert!(again.body.contains("Unknown sign-in"), "{}", again.body);

        h.send(Read, "POST", "/v1/credentials/ops/login", Some(&start))
            .expect(403);
        let a = h
            .send(Admin, "POST", "/v1/credentials/alice/login", None)
            .expect(400);
        assert!(a.body.contains("only oauth2"), "{}", a.body);
        for body in ["[1]", r#"{"issuer": 7}"#, r#"{"bogus": "x"}"#] {
            h.send(Admin, "POST", "/v1/credentials/ops/login", Some(body))
                .expect(400);
        }
        let closed = json!({"issuer": "http://127.0.0.1:1"}).to_string();
        let a = h
            .send(Admin, "POST", "/v1/credentials/ops/login", Some(&closed))
            .expect(503);
        assert_eq!(a.code(), "unavailable");
        assert!(a.body.contains("did not answer"), "{}", a.body);
        let direct = json!({"authorize_url": format!("{}/auth", idp.issuer)}).to_string();
        let mut refused = None;
        for _ in 0..70 {
            let a = h.send(Admin, "POST", "/v1/credentials/ops/login", Some(&direct));
            if a.status == 503 {
                refused = Some(a);
                break;
            }
            a.expect(200);
        }
        assert_eq!(
            refused.expect("a cap on waiting sign-ins").code(),
            "unavailable"
        );
    });
}

/// Requests no route takes (a wrong method, an unknown or malformed path)
/// get the answers the document's `x-unrouted` lists, every one of them.
#[test]
fn unrouted_requests_match_the_document() {
    use Who::{Admin, Anon};
    let h = Harness::new();

    // Wrong methods and unknown paths.
    for (method, target) in [
        ("PUT", "/v1/credentials"),
        ("POST", "/v1/credentials/alice"),
        ("GET", "/v1/credentials/alice/reject"),
        ("GET", "/oauth/token"),
        ("POST", "/healthz"),
        ("OPTIONS", "/metrics"),
    ] {
        let a = h.send(Admin, method, target, None).expect(405);
        assert_eq!(a.code(), "method_not_allowed");
    }
    h.send(Admin, "GET", "/no/such/path", None).expect(404);
    h.send(Anon, "GET", "/no/such/path", None).expect(401);
    h.raw(
        Admin,
        "GET",
        "/no/such/path",
        &["Content-Length: 2000000"],
        b"",
    )
    .expect(413);
    h.raw(Admin, "GET", "/v1/credentials/../metrics", &[], b"")
        .expect(400);
    let a = h
        .raw(
            Anon,
            "GET",
            "/no/such/path",
            &["Origin: http://evil.example"],
            b"",
        )
        .expect(403);
    assert_eq!(a.code(), "forbidden_origin");

    let seen = h.seen.lock().unwrap().clone();
    let missing: Vec<u16> = [400, 401, 403, 404, 405, 413]
        .into_iter()
        .filter(|s| !seen.contains(&("x-unrouted".into(), "*".into(), *s)))
        .collect();
    assert!(missing.is_empty(), "x-unrouted never seen: {missing:?}");
    assert_no_5xx_but_503(&seen);
}

/// Without an API key, a `Host` that is not a loopback name is refused
/// (the DNS-rebinding defence), and so is an HTTP/1.1 request without
/// one; those answers fit the document too.
#[test]
fn host_refusals_match_the_document() {
    let spec = Spec::load();
    let env = Env::new();
    env.login("h", 3000);
    let srv = InProcess::start(&env, &[], 2);
    for (pattern, method) in spec.operations() {
        let target = fill(&pattern, "h");
        let extra = ["Host: rebind.attacker.example".to_owned()];
        let head = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
        let mut cases = vec![(format!("{head}{}\r\n\r\n", extra[0]), 403, "forbidden_host")];
        cases.push((format!("{head}\r\n"), 400, "bad_request"));
        for (request, status, code) in cases {
            let a = raw(srv.addr(), request.as_bytes(), Duration::from_secs(20))
                .unwrap_or_else(|| panic!("no answer to {method} {target}"));
            if pattern == "/healthz" {
                assert_eq!(a.status, 200, "{}", a.body);
                continue;
            }
            assert_eq!(
                (a.status, a.code().as_str()),
                (status, code),
                "{method} {target}"
            );
            let seen = Seen {
                method: &method,
                target: &target,
                status: a.status,
                headers: &a.headers,
                body: &a.body,
            };
            if let Err(e) = spec.check(&seen) {
                panic!("{method} {target} → {}: {e}", a.status);
            }
        }
    }
}

/// Pools, cooldowns and the outbox (issue 15) match the document through
/// every documented status but 500.
#[test]
fn pool_routes_match_the_document() {
    use Who::{Admin, Read};
    route_group(Group::Pools, |h| {
        h.import("alice");
        h.import("bob");
        for id in ["alice", "bob"] {
            h.env.warden().set_pool_member(id, "team", true).unwrap();
        }
        let t = h
            .send(Read, "GET", "/v1/pools/team/token?sticky=s1", None)
            .expect(200)
            .json();
        let member = t["credential_id"].as_str().unwrap().to_owned();
        h.send(Read, "GET", "/v1/pools/team/token?min_ttl=x", None)
            .expect(400);
        h.send(Read, "GET", "/v1/pools/nobody/token", None)
            .expect(404);
        let body = json!({"credential_id": member, "access_token": t["access_token"]}).to_string();
        h.send(Read, "POST", "/v1/pools/team/reject", Some(&body))
            .expect(200);
        h.send(Read, "POST", "/v1/pools/team/reject", Some("{}"))
            .expect(400);
        h.send(
            Read,
            "POST",
            "/v1/pools/nobody/reject",
            Some(&json!({"credential_id": "alice", "access_token": "x"}).to_string()),
        )
        .expect(404);
        for id in ["alice", "bob"] {
            h.send(
                Read,
                "POST",
                &format!("/v1/credentials/{id}/cooldown"),
                Some(r#"{"seconds": 60, "reason": "429"}"#),
            )
            .expect(200);
        }
        h.send(Read, "GET", "/v1/pools/team/token", None)
            .expect(503);
        h.send(
            Read,
            "POST",
            "/v1/pools/team/reject",
            Some(&json!({"credential_id": "alice", "access_token": "x"}).to_string()),
        )
        .expect(503);
        h.send(Read, "POST", "/v1/credentials/alice/cooldown", Some("{}"))
            .expect(400);
        h.send(
            Read,
            "POST",
            "/v1/credentials/nobody/cooldown",
            Some(r#"{"seconds": 1}"#),
        )
        .expect(404);
        h.send(Read, "DELETE", "/v1/credentials/alice/cooldown", None)
            .expect(403);
        h.send(Admin, "DELETE", "/v1/credentials/alice/cooldown", None)
            .expect(204);
        h.send(Admin, "DELETE", "/v1/credentials/nobody/cooldown", None)
            .expect(404);
        h.send(Read, "GET", "/v1/notifications?pending=1", None)
            .expect(200);
        h.send(Read, "GET", "/v1/notifications?limit=0", None)
            .expect(400);
    });
}
