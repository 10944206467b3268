//! Self-test of the fake OAuth server in tests/common: drives it over
//! loopback with ureq, as the crate under test will.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::fake_oauth::{
    jwt_payload, FakeOAuth, Fault, Outcome, CODEX_CLIENT_ID, OPENAI_REUSE_BODY,
};
use serde_json::{json, Value};

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn read(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Answer, ureq::Error> {
    let mut r = r?;
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    Ok(Answer {
        status: r.status().as_u16(),
        retry_after,
        body: r.body_mut().read_to_string()?,
    })
}

fn refresh_with(a: &ureq::Agent, url: &str, rt: &str) -> Result<Answer, ureq::Error> {
    let body =
        json!({"client_id": CODEX_CLIENT_ID, "grant_type": "refresh_token", "refresh_token": rt});
    read(
        a.post(url)
            .content_type("application/json")
            .send(body.to_string()),
    )
}

fn refresh(fake: &FakeOAuth, rt: &str) -> Answer {
    refresh_with(&agent(Duration::from_secs(5)), &fake.token_url(), rt).expect("token request")
}

fn codex_usage(fake: &FakeOAuth, token: &str, account: Option<&str>) -> Answer {
    let mut req = agent(Duration::from_secs(5))
        .get(fake.codex_usage_url())
        .header("Authorization", format!("Bearer {token}"))
        .header("User-Agent", "selftest");
    if let Some(a) = account {
        req = req.header("ChatGPT-Account-Id", a);
    }
    read(req.call()).expect("usage request")
}

/// The fake issues OpenAI-shaped JWTs, rotates the refresh token on every refresh, records the chain, and answers Claude-shaped on its other path.
#[test]
fn rotation_chains_tokens() {
    let fake = FakeOAuth::start();
    assert!(fake
        .env()
        .contains(&("TOKENWARDEN_CODEX_TOKEN_URL", fake.token_url())));
    let g = fake.new_family("alice");
    assert!(fake.is_access_token_valid(&g.access_token));
    let claims = jwt_payload(&g.id_token).unwrap();
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(
        claims["https://api.openai.com/auth"]["chatgpt_account_id"],
        "alice"
    );
    assert_eq!(
        claims["https://api.openai.com/auth"]["chatgpt_plan_type"],
        "plus"
    );
    let exp = jwt_payload(&g.access_token).unwrap()["exp"]
        .as_i64()
        .unwrap();
    assert_eq!(exp, g.expires_at);

    let a1 = refresh(&fake, &g.refresh_token);
    assert_eq!(a1.status, 200, "{}", a1.body);
    let b1 = a1.json();
    let rt1 = b1["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, g.refresh_token);
    assert_eq!(b1["token_type"], "Bearer");
    assert_eq!(b1["expires_in"], 3600);
    let at1 = b1["access_token"].as_str().unwrap();
    assert!(fake.is_access_token_valid(at1));
    let id = jwt_payload(b1["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(
        id["https://api.openai.com/auth"]["chatgpt_user_id"],
        "user-alice"
    );

    let a2 = refresh(&fake, &rt1);
    assert_eq!(a2.status, 200, "{}", a2.body);
    let rt2 = a2.json()["refresh_token"].as_str().unwrap().to_string();

    let fs = fake.family_state("alice");
    assert_eq!(fs.rotations, 2);
    assert!(!fs.revoked);
    assert_eq!(fs.current_refresh_token, rt2);
    assert_eq!(
        fs.issued_refresh_tokens,
        vec![g.refresh_token.clone(), rt1.clone(), rt2.clone()]
    );
    assert_eq!(
        fake.presented_refresh_tokens("alice"),
        vec![g.refresh_token, rt1]
    );
    let s = fake.stats();
    assert_eq!(
        (s.token_requests, s.successful_refreshes, s.json_bodies),
        (2, 2, 2)
    );
    assert_eq!(s.max_in_flight_per_family, 1);
    fake.assert_no_reuse_after_success();
    fake.assert_single_flight();

    // Claude-shaped answers from the same families.
    let body = json!({"grant_type": "refresh_token", "refresh_token": rt2, "client_id": "x"});
    let a3 = read(
        agent(Duration::from_secs(5))
            .post(fake.claude_token_url())
            .content_type("application/json")
            .send(body.to_string()),
    )
    .unwrap();
    assert_eq!(a3.status, 200, "{}", a3.body);
    let b3 = a3.json();
    assert_eq!(b3["account"]["uuid"], "alice");
    assert!(b3.get("id_token").is_none());
}

/// Presenting a rotated-away refresh token answers OpenAI's `refresh_token_reused` and revokes the whole family.
#[test]
fn reuse_revokes_the_family() {
    let fake = FakeOAuth::start();
    let g = fake.new_family("bob");
    let a1 = refresh(&fake, &g.refresh_token);
    let b1 = a1.json();
    let rt1 = b1["refresh_token"].as_str().unwrap().to_string();
    let at1 = b1["access_token"].as_str().unwrap().to_string();

    let reused = refresh(&fake, &g.refresh_token);
    assert_eq!(reused.status, 401);
    assert_eq!(reused.body, OPENAI_REUSE_BODY);
    assert_eq!(reused.json()["error"]["code"], "refresh_token_reused");
    let fs = fake.family_state("bob");
    assert!(fs.revoked);
    assert_eq!(fs.revoked_reason.as_deref(), Some("refresh_token_reused"));
    assert!(!fake.is_access_token_valid(&at1));
    assert!(!fake.is_access_token_valid(&g.access_token));

    let current = refresh(&fake, &rt1);
    assert_eq!(current.status, 401);
    assert_eq!(current.json()["error"]["code"], "refresh_token_invalidated");

    let s = fake.stats();
    assert_eq!(
        (s.reuse_detected, s.invalidated, s.successful_refreshes),
        (1, 1, 1)
    );
    let outcomes: Vec<Outcome> = fake
        .token_requests()
        .into_iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes,
        vec![Outcome::Rotated, Outcome::Reused, Outcome::Invalidated]
    );
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fake.assert_no_reuse_after_success()
    }));
    assert!(caught.is_err(), "the reuse must be reported");
}

/// The fake answers unknown tokens, wrong grants, missing or wrong clients and broken bodies as OAuth servers do, accepts form bodies with Basic auth, and routes 404/405/413.
#[test]
fn bad_requests_and_encodings() {
    let fake = FakeOAuth::start();
    let g = fake.new_family("carol");
    let a = agent(Duration::from_secs(5));

    let unknown = refresh(&fake, "not-a-token");
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.json()["error"], "invalid_grant");

    let body = json!({"client_id": "c", "grant_type": "authorization_code", "refresh_token": g.refresh_token});
    let wrong = read(
        a.post(fake.token_url())
            .content_type("application/json")
            .send(body.to_string()),
    )
    .unwrap();
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.json()["error"], "unsupported_grant_type");

    let body = json!({"grant_type": "refresh_token", "refresh_token": g.refresh_token});
    let no_client = read(
        a.post(fake.token_url())
            .content_type("application/json")
            .send(body.to_string()),
    )
    .unwrap();
    assert_eq!(no_client.status, 401);
    assert_eq!(no_client.json()["error"], "invalid_client");

    let broken = read(
        a.post(fake.token_url())
            .content_type("application/json")
            .send("{nope"),
    )
    .unwrap();
    assert_eq!(broken.status, 400);
    assert_eq!(broken.json()["error"], "invalid_request");

    // Form body with Basic client auth; '+' and %-escapes decoded.
    let form = read(
        a.post(fake.token_url())
            .header("Authorization", "Basic Y2xpZW50OnMzY3JldA==") // client:s3cret
            .send_form([
                ("grant_type", "refresh_token"),
                ("refresh_token", g.refresh_token.as_str()),
                ("scope", "openid profile email"),
            ]),
    )
    .unwrap();
    assert_eq!(form.status, 200, "{}", form.body);
    let last = fake.token_requests().pop().unwrap();
    assert_eq!(
        last.basic_auth,
        Some(("client".to_string(), "s3cret".to_string()))
    );
    assert_eq!(last.params["scope"], "openid profile email");
    assert_eq!(last.outcome, Outcome::Rotated);
    let s = fake.stats();
    assert_eq!((s.unknown_tokens, s.bad_requests, s.form_bodies), (1, 3, 1));

    // Exact client id required.
    fake.set_required_client_id(Some(CODEX_CLIENT_ID));
    let rt = fake.family_state("carol").current_refresh_token;
    let body = json!({"client_id": "other", "grant_type": "refresh_token", "refresh_token": rt});
    let other = read(
        a.post(fake.token_url())
            .content_type("application/json")
            .send(body.to_string()),
    )
    .unwrap();
    assert_eq!(other.status, 401);
    assert_eq!(refresh(&fake, &rt).status, 200);

    // Routing: 404, 405, 413.
    let r = read(a.get(format!("{}/nope", fake.url())).call()).unwrap();
    assert_eq!(r.status, 404);
    let r = read(a.get(fake.token_url()).call()).unwrap();
    assert_eq!(r.status, 405);
    let big = "x".repeat(1024 * 1024 + 1);
    let r = read(
        a.post(fake.token_url())
            .content_type("application/json")
            .send(big),
    )
    .unwrap();
    assert_eq!(r.status, 413);
    // Still serving afterwards.
    assert_eq!(
        read(a.get(format!("{}/nope", fake.url())).call())
            .unwrap()
            .status,
        404
    );
}

/// Queued faults are served in order, one per request, and leave the refresh token unconsumed.
#[test]
fn faults_are_served_in_order_without_consuming() {
    let fake = FakeOAuth::start();
    let g = fake.new_family("dave");
    fake.push_fault(Fault::retry_after(
        429,
        r#"{"error":{"code":"rate_limited"}}"#,
        "7",
    ));
    fake.push_fault(Fault::Garbage);
    fake.push_fault(Fault::Drop);
    fake.push_fault(Fault::HangBefore(Duration::from_millis(150)));
    fake.push_fault(Fault::HangBefore(Duration::from_secs(30)));
    fake.push_fault(Fault::status(503, r#"{"error":"temporarily_unavailable"}"#));
    assert_eq!(fake.pending_faults(), 6);

    let a = agent(Duration::from_secs(5));
    let url = fake.token_url();
    let r = refresh_with(&a, &url, &g.refresh_token).unwrap();
    assert_eq!((r.status, r.retry_after.as_deref()), (429, Some("7")));
    let r = refresh_with(&a, &url, &g.refresh_token).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        serde_json::from_str::<Value>(&r.body).is_err(),
        "garbage must not be JSON"
    );
    assert!(
        refresh_with(&a, &url, &g.refresh_token).is_err(),
        "dropped connection"
    );
    let r = refresh_with(&a, &url, &g.refresh_token).unwrap();
    assert_eq!(r.status, 504);
    let t = Instant::now();
    let short = agent(Duration::from_millis(200));
    assert!(
        refresh_with(&short, &url, &g.refresh_token).is_err(),
        "client timeout"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    let r = refresh_with(&a, &url, &g.refresh_token).unwrap();
    assert_eq!(r.status, 503);

    // Nothing was consumed: the first token still rotates.
    assert_eq!(fake.pending_faults(), 0);
    assert_eq!(
        refresh_with(&a, &url, &g.refresh_token).unwrap().status,
        200
    );
    let fs = fake.family_state("dave");
    assert_eq!((fs.rotations, fs.revoked), (1, false));
    let log = fake.token_requests();
    assert!(log[..6].iter().all(|r| r.outcome == Outcome::Faulted));
    assert_eq!(log[2].status, None);
    assert_eq!(fake.stats().faults_served, 6);
    fake.assert_no_reuse_after_success();
}

/// The ambiguous faults rotate upstream, then hang or drop: the client sees an error while the token is spent.
#[test]
fn process_then_hang_or_drop_consumes_the_token() {
    let fake = FakeOAuth::start();
    let g = fake.new_family("erin");
    fake.push_fault(Fault::ProcessThenHang(Duration::from_secs(30)));
    let short = agent(Duration::from_millis(200));
    assert!(refresh_with(&short, &fake.token_url(), &g.refresh_token).is_err());
    let fs = fake.family_state("erin");
    assert_eq!(
        fs.rotations, 1,
        "rotated upstream although the client timed out"
    );
    assert_eq!(
        fake.stats().in_flight,
        0,
        "the hang is not counted in flight"
    );

    // The client retries the only token it has: reuse, family revoked.
    let r = refresh(&fake, &g.refresh_token);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "refresh_token_reused");
    assert!(fake.family_state("erin").revoked);
    // Ambiguous successes are not counted as clean ones.
    fake.assert_no_reuse_after_success();

    let g = fake.new_family("frank");
    fake.push_fault(Fault::ProcessThenDrop);
    let a = agent(Duration::from_secs(5));
    assert!(
        refresh_with(&a, &fake.token_url(), &g.refresh_token).is_err(),
        "dropped"
    );
    let log = fake.token_requests();
    let last = log.last().unwrap();
    assert_eq!(
        (last.outcome.clone(), last.status),
        (Outcome::Rotated, None)
    );
    assert_eq!(fake.family_state("frank").rotations, 1);
}

/// Requests really run in parallel, and the in-flight counters (global and per family) see it.
#[test]
fn concurrency_counters_see_parallel_requests() {
    let fake = Arc::new(FakeOAuth::start());
    fake.set_latency(Duration::from_millis(300));
    const N: usize = 8;
    let grants: Vec<_> = (0..N)
        .map(|i| fake.new_family(&format!("acct{i}")))
        .collect();
    let barrier = Arc::new(Barrier::new(N));
    let t = Instant::now();
    let handles: Vec<_> = grants
        .into_iter()
        .map(|g| {
            let (fake, barrier) = (fake.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                refresh(&fake, &g.refresh_token).status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert!(
        t.elapsed() < Duration::from_millis(300 * N as u64 / 2),
        "requests were serialised"
    );
    let s = fake.stats();
    assert_eq!(s.max_in_flight, N as u64);
    assert_eq!(s.max_in_flight_per_family, 1);
    fake.assert_single_flight();

    // Same family, in parallel: visible as a single-flight violation.
    fake.reset_stats();
    let g = fake.new_family("shared");
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (fake, barrier, rt) = (fake.clone(), barrier.clone(), g.refresh_token.clone());
            thread::spawn(move || {
                barrier.wait();
                refresh(&fake, &rt).status
            })
        })
        .collect();
    let mut statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 401, 401, 401]);
    let s = fake.stats();
    assert_eq!(s.max_in_flight_per_family, 4);
    assert_eq!(fake.family_state("shared").max_in_flight, 4);
    assert_eq!(s.in_flight, 0);
    assert!(
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fake.assert_single_flight()))
            .is_err()
    );
}

/// The Codex and Claude quota endpoints answer their canned bodies, check the bearer, account and beta headers, refuse expired or revoked tokens, and log each request.
#[test]
fn usage_endpoints() {
    let fake = FakeOAuth::start();
    let g = fake.new_family("gina");

    let ok = codex_usage(&fake, &g.access_token, Some("gina"));
    assert_eq!(ok.status, 200, "{}", ok.body);
    let b = ok.json();
    assert_eq!(b["plan_type"], "plus");
    assert_eq!(b["rate_limit"]["primary_window"]["used_percent"], 42);
    assert!(
        b["rate_limit"]["primary_window"]["reset_at"]
            .as_i64()
            .unwrap()
            > 1_700_000_000
    );
    assert_eq!(codex_usage(&fake, &g.access_token, None).status, 400);
    assert_eq!(
        codex_usage(&fake, &g.access_token, Some("other")).status,
        403
    );
    assert_eq!(codex_usage(&fake, "bogus", Some("gina")).status, 401);
    let r = read(
        agent(Duration::from_secs(5))
            .get(fake.codex_usage_url())
            .call(),
    )
    .unwrap();
    assert_eq!(r.status, 401);

    fake.push_usage_fault(Fault::status(500, "{}"));
    assert_eq!(
        codex_usage(&fake, &g.access_token, Some("gina")).status,
        500
    );
    assert_eq!(
        codex_usage(&fake, &g.access_token, Some("gina")).status,
        200
    );

    // Claude: needs the beta header.
    let a = agent(Duration::from_secs(5));
    let claude = |beta: Option<&str>, token: &str| {
        let mut req = a
            .get(fake.claude_usage_url())
            .header("Authorization", format!("Bearer {token}"));
        if let Some(b) = beta {
            req = req.header("anthropic-beta", b);
        }
        read(req.call()).unwrap()
    };
    let c = claude(Some("oauth-2025-04-20"), &g.access_token);
    assert_eq!(c.status, 200);
    assert_eq!(c.json()["five_hour"]["utilization"], 12.0);
    assert!(c.json()["seven_day"]["resets_at"].is_string());
    assert_eq!(claude(None, &g.access_token).status, 401);
    assert_eq!(claude(Some("oauth-2025-04-20"), "bogus").status, 401);

    // Expired and revoked tokens.
    fake.set_expires_in(-10);
    let r = refresh(&fake, &g.refresh_token).json();
    let expired = r["access_token"].as_str().unwrap();
    assert_eq!(r["expires_in"], -10);
    assert!(!fake.is_access_token_valid(expired));
    assert_eq!(codex_usage(&fake, expired, Some("gina")).status, 401);
    fake.set_expires_in(3600);
    let rt = r["refresh_token"].as_str().unwrap();
    let fresh = refresh(&fake, rt).json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(codex_usage(&fake, &fresh, Some("gina")).status, 200);
    fake.revoke_access_token(&fresh);
    assert_eq!(codex_usage(&fake, &fresh, Some("gina")).status, 401);

    let s = fake.stats();
    assert_eq!(s.usage_requests, 13);
    assert_eq!(s.usage_faults_served, 1);
    let log = fake.usage_requests();
    assert_eq!(log[0].account_header.as_deref(), Some("gina"));
    assert_eq!(log[0].user_agent.as_deref(), Some("selftest"));
    assert_eq!(log[0].status, Some(200));
}

/// Issued tokens sometimes begin with `-` (so the CLI's argument parsing gets tested) and are still valid.
#[test]
fn tokens_can_start_with_a_dash() {
    let fake = FakeOAuth::start();
    let g = fake.new_family("hank");
    let mut rt = g.refresh_token.clone();
    for _ in 0..5 {
        let r = refresh(&fake, &rt);
        assert_eq!(r.status, 200);
        rt = r.json()["refresh_token"].as_str().unwrap().to_string();
    }
    let issued = fake.issued_refresh_tokens("hank");
    assert_eq!(issued.len(), 6);
    assert!(
        issued[4].starts_with('-'),
        "5th issued token starts with '-': {issued:?}"
    );
    assert!(issued.iter().all(|t| t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')));

    let g = fake.new_family_with_refresh_token("ivy", "-dash-first-token");
    assert_eq!(refresh(&fake, &g.refresh_token).status, 200);

    fake.set_opaque_access_tokens(true);
    let mut dashes = 0;
    let mut rt = fake.family_state("ivy").current_refresh_token;
    for _ in 0..5 {
        let r = refresh(&fake, &rt).json();
        let at = r["access_token"].as_str().unwrap();
        assert!(jwt_payload(at).is_none());
        assert!(fake.is_access_token_valid(at));
        dashes += at.starts_with('-') as u32;
        rt = r["refresh_token"].as_str().unwrap().to_string();
    }
    assert_eq!(dashes, 1);
}

/// With rotation off (Google-style) refreshes keep the refresh token and omit it from the answer.
#[test]
fn rotation_can_be_switched_off() {
    let fake = FakeOAuth::start();
    fake.set_rotation(false);
    fake.set_send_expires_in(false);
    let g = fake.new_family("jill");
    for _ in 0..2 {
        let r = refresh(&fake, &g.refresh_token);
        assert_eq!(r.status, 200);
        let b = r.json();
        assert!(b.get("refresh_token").is_none());
        assert!(b.get("expires_in").is_none());
    }
    let fs = fake.family_state("jill");
    assert_eq!((fs.rotations, fs.refreshes, fs.revoked), (0, 2, false));
    fake.assert_no_reuse_after_success();

    fake.revoke_family("jill");
    assert_eq!(refresh(&fake, &g.refresh_token).status, 401);
}

/// Dropping the fake closes its listener and wakes a hanging request at once.
#[test]
fn drop_stops_the_server() {
    let fake = FakeOAuth::start();
    let g = fake.new_family("kim");
    fake.push_fault(Fault::HangBefore(Duration::from_secs(60)));
    let url = fake.token_url();
    let rt = g.refresh_token.clone();
    let client = thread::spawn(move || refresh_with(&agent(Duration::from_secs(30)), &url, &rt));
    thread::sleep(Duration::from_millis(100));
    let addr = fake.addr();
    let t = Instant::now();
    drop(fake);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "drop must not wait for hangs"
    );
    // The hanging client gets an error or the 504, quickly.
    let _ = client.join().unwrap();
    assert!(std::net::TcpStream::connect(addr).is_err());
}
