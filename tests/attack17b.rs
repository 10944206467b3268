//! Second hostile review of issue 17, after its mend (156bf9d): the
//! sign-in throttle, the reject form's token fingerprint, per-scope session
//! caps and cookie picking, and `provider::scrub`'s pieces of known
//! secrets. A test that found a hole is `#[ignore = "HOLE: …"]` (seen
//! failing first); the others are guards that held.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use tokenwarden::http::ui::throttle::{Throttle, GLOBAL_BURST, PER_PEER_BURST, PER_PEER_REFILL};
use tokenwarden::provider::scrub;

use crate::common::fake_oauth::Fault;
use crate::common::http::{Answer, Client};
use crate::common::tw::text;
use crate::ui::{csrf_of, enc, exchange, flash, reject_now, set_cookie, Console, ADMIN};

/// Upstream token requests so far.
fn calls(c: &Console) -> usize {
    c.env.fake.token_requests().len()
}

/// The access token the API serves for `id` now.
fn served_token(c: &Console, id: &str) -> String {
    Client::new(c.addr, Some(ADMIN))
        .get(&format!("/v1/credentials/{id}/token"))
        .expect(200)
        .json()["access_token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

/// `name=value` of the `Set-Cookie` that sets `name`, if any.
fn cookie_pair(a: &Answer, name: &str) -> Option<String> {
    set_cookie(a, name).map(|c| c.split(';').next().unwrap_or_default().trim().to_owned())
}

const REBIND: &str = "rebind.attacker.example";

/// One request as a page reached by DNS rebinding sends it: its own
/// `Host` and `Origin` (same-origin, so it may set any header and read the
/// answer).
fn as_rebind(c: &Console, head: &str, body: &str) -> Answer {
    let request = format!(
        "{head}Host: {REBIND}\r\nOrigin: http://{REBIND}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(c.addr, request.as_bytes())
}

// ---------------------------------------------------------------------
// 1. The sign-in throttle.
// ---------------------------------------------------------------------

/// The README says a page reached by DNS rebinding "can hold the console's
/// sign-in shut (not the API or the CLI) but not guess faster". It can:
/// the same page (same `Host`/`Origin`, so `fetch` may set
/// `Authorization` and read the status) sends wrong keys to `GET
/// /v1/credentials` with no throttle at all — once the sign-in form is
/// already answering 429, sixty more wrong keys through the API are each
/// answered 401 at full speed and the right one 200: the throttle guards
/// one door of two, and the rebinding page, which the mend names as the
/// attacker it stops, just uses the other.
#[test]
#[ignore = "KNOWN LIMIT (documented): the API does not throttle wrong keys — refusing before the compare would let one client with a typo lock every client out; serve warns about keys under 20 characters; README 'Console' and SECURITY.md say so"]
fn a_rebinding_page_cannot_guess_keys_faster_through_the_api() {
    let c = Console::start();
    let form = as_rebind(&c, "GET /ui/login HTTP/1.1\r\n", "");
    assert_eq!(form.status, 200, "{}", form.body);
    let pre = cookie_pair(&form, "tw_pre").expect("a pre-session cookie");
    let csrf = csrf_of(&form.body);
    let mut form_statuses = std::collections::BTreeMap::new();
    for i in 0..(PER_PEER_BURST + 2) {
        let a = as_rebind(
            &c,
            &format!("POST /ui/login HTTP/1.1\r\nCookie: {pre}\r\n"),
            &format!("csrf={csrf}&key=guess-{i:04}"),
        );
        *form_statuses.entry(a.status).or_insert(0) += 1;
    }
    assert!(
        form_statuses.contains_key(&429),
        "the sign-in form is throttled: {form_statuses:?}"
    );
    let mut api_statuses = std::collections::BTreeMap::new();
    for i in 0..GLOBAL_BURST {
        let a = as_rebind(
            &c,
            &format!("GET /v1/credentials HTTP/1.1\r\nAuthorization: Bearer guess-api-{i:04}\r\n"),
            "",
        );
        *api_statuses.entry(a.status).or_insert(0) += 1;
    }
    let right = as_rebind(
        &c,
        &format!("GET /v1/credentials HTTP/1.1\r\nAuthorization: Bearer {ADMIN}\r\n"),
        "",
    );
    assert!(
        api_statuses.contains_key(&429) || right.status != 200,
        "the sign-in form answered {form_statuses:?}, but the same rebinding page then sent \
         {GLOBAL_BURST} wrong keys to the API ({api_statuses:?}) and the right key was answered \
         {} — key guessing is not throttled for it",
        right.status
    );
}

/// Forty wrong keys at once from one address, over the server's four
/// workers: at most the burst (plus a slot per refill that passed) are
/// compared, every other is 429 with a `Retry-After` of whole seconds
/// between 1 and 6; a right key sent while the bucket is empty is refused
/// the same way (no session, same answer), so a refusal says nothing
/// about the key.
#[test]
fn concurrent_wrong_keys_get_the_burst_and_refusals_say_nothing() {
    let c = Arc::new(Console::start());
    let (pre, csrf) = c.sign_in_form();
    let started = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (c, pre, csrf) = (c.clone(), pre.clone(), csrf.clone());
            thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let a = c.post(
                            "/ui/login",
                            Some(&pre),
                            &format!("csrf={csrf}&key=guess-{w}-{i}"),
                        );
                        (a.status, a.header("retry-after").map(str::to_owned))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<(u16, Option<String>)> = workers
        .into_iter()
        .flat_map(|t| t.join().expect("worker"))
        .collect();
    let elapsed = started.elapsed();
    let compared = answers.iter().filter(|(s, _)| *s == 401).count();
    let refilled = (elapsed.as_secs_f64() / PER_PEER_REFILL.as_secs_f64()).ceil() as usize;
    assert!(
        compared <= PER_PEER_BURST as usize + refilled,
        "{compared} wrong keys compared in {elapsed:?}: {answers:?}"
    );
    for (status, retry) in &answers {
        assert!(
            matches!(status, 401 | 429),
            "unexpected status {status}: {answers:?}"
        );
        if *status == 429 {
            let secs: u64 = retry
                .as_deref()
                .expect("429 carries Retry-After")
                .parse()
                .expect("whole seconds");
            assert!((1..=PER_PEER_REFILL.as_secs()).contains(&secs), "{secs}");
        }
    }
    assert!(answers.iter().any(|(s, _)| *s == 429), "{answers:?}");
    // The right key while the bucket is empty: the same refusal.
    let right = c.post(
        "/ui/login",
        Some(&pre),
        &format!("csrf={csrf}&key={}", enc(ADMIN)),
    );
    let wrong = c.post("/ui/login", Some(&pre), &format!("csrf={csrf}&key=nope"));
    assert_eq!((right.status, wrong.status), (429, 429), "{}", right.body);
    assert!(set_cookie(&right, "tw_session").is_none());
    let digits = |s: &str| s.replace(|ch: char| ch.is_ascii_digit(), "");
    assert_eq!(digits(&right.body), digits(&wrong.body));
}

/// Unit level: right keys interleaved with wrong ones (a read-only key
/// holder's, say) buy no extra wrong guesses — every refund gives back
/// exactly the slot its own attempt took; the `Retry-After` of a refusal
/// is exact (a try at that instant gets in, a millisecond before does
/// not).
#[test]
fn right_key_refunds_buy_no_extra_guesses_and_retry_after_is_exact() {
    let t = Throttle::default();
    let t0 = Instant::now();
    let peer = Some(IpAddr::from([192, 0, 2, 7]));
    let mut wrong_let_in = 0;
    for _ in 0..100 {
        if let Ok(a) = t.attempt(peer, t0) {
            t.right_key(a);
        }
        if let Ok(_wrong) = t.attempt(peer, t0) {
            wrong_let_in += 1;
        }
    }
    assert_eq!(wrong_let_in, PER_PEER_BURST);
    let wait = t.attempt(peer, t0).expect_err("spent");
    assert!(t
        .attempt(peer, t0 + wait - Duration::from_millis(1))
        .is_err());
    assert!(t.attempt(peer, t0 + wait).is_ok());
}

/// Unit level: the per-address bucket is keyed by the whole address. Any
/// IPv6 host is handed at least a /64 (2^64 addresses), so one attacker
/// has as many per-address buckets as it likes: from one /64 it gets the
/// whole server's burst at once (60 wrong keys, six times what "one
/// address" gets) and then the server's full rate of one a second,
/// against one per 6 s from an IPv4 address — and holds everyone else's
/// sign-in shut meanwhile. Buckets should be per /64 for IPv6 (and an
/// IPv4-mapped address should count as its IPv4 one).
///
/// (Mended: IPv6 peers count by their /64, IPv4-mapped ones as IPv4 — `throttle::bucket_of`.)
#[test]
fn addresses_of_one_ipv6_slash_64_share_a_bucket() {
    let t = Throttle::default();
    let t0 = Instant::now();
    let in_64 = |n: u16| Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 7, 7, 0, 0, n, 1)));
    let let_in = (0..GLOBAL_BURST as u16)
        .filter(|n| t.attempt(in_64(*n), t0).is_ok())
        .count();
    assert_eq!(
        let_in, PER_PEER_BURST as usize,
        "wrong keys let in at once from one IPv6 /64 ({GLOBAL_BURST} addresses)"
    );
}

// ---------------------------------------------------------------------
// 2. The reject form's fingerprint.
// ---------------------------------------------------------------------

/// Four clicks of one page's reject button at once (a double-click, a
/// retry and two tabs), over four workers, against a slow upstream: the
/// token the page showed is rejected once, one refresh goes upstream, the
/// new token is served and the old one never again.
#[test]
fn four_simultaneous_rejects_of_one_page_reject_once() {
    let c = Console::start();
    c.env.login("acct", 3600);
    let (s, _) = c.sign_in(ADMIN);
    let old = served_token(&c, "acct");
    let field = reject_now(&c, &s, "acct");
    let upstream = calls(&c);
    c.env.fake.set_latency(Duration::from_millis(800));
    let c = Arc::new(c);
    let s = Arc::new(s);
    let posts: Vec<_> = (0..4)
        .map(|_| {
            let (c, s, field) = (c.clone(), s.clone(), field.clone());
            thread::spawn(move || {
                c.post(
                    "/ui/credentials/acct/reject",
                    Some(&s.cookie),
                    &format!("csrf={}{field}", s.csrf),
                )
                .status
            })
        })
        .collect();
    for p in posts {
        assert_eq!(p.join().expect("post"), 303);
    }
    c.env.fake.set_latency(Duration::ZERO);
    assert_eq!(
        calls(&c) - upstream,
        1,
        "one refresh for one rejected token"
    );
    let now = served_token(&c, "acct");
    assert_ne!(now, old);
    assert_eq!(served_token(&c, "acct"), now, "the fresh token stays");
    c.env.fake.assert_no_reuse_after_success();
}

/// The reject form of one credential's page posted to another
/// credential's reject path (a crafted post, or a form reused across
/// tabs): the fingerprint names the first credential's token, so the
/// second's token is not rejected and nothing goes upstream; an empty or
/// missing token field is refused too, and a second `token` field is a
/// malformed form.
#[test]
fn a_reject_form_names_only_its_own_credentials_token() {
    let c = Console::start();
    c.env.login("acct", 3600);
    c.env.login("other", 3600);
    let (s, _) = c.sign_in(ADMIN);
    let field = reject_now(&c, &s, "acct");
    let other_before = served_token(&c, "other");
    let acct_before = served_token(&c, "acct");
    let upstream = calls(&c);
    let post = |path: &str, fields: &str| {
        c.post(path, Some(&s.cookie), &format!("csrf={}{fields}", s.csrf))
            .status
    };
    assert_eq!(post("/ui/credentials/other/reject", &field), 303);
    let said = flash(&c, &s, "/ui/credentials/other");
    assert!(!said.starts_with("Rejected"), "{said}");
    assert_eq!(post("/ui/credentials/acct/reject", "&token="), 303);
    assert_eq!(post("/ui/credentials/acct/reject", ""), 303);
    let dup = format!("{field}{field}");
    assert_ne!(post("/ui/credentials/acct/reject", &dup), 200);
    assert_eq!(calls(&c), upstream, "nothing was rejected");
    assert_eq!(served_token(&c, "other"), other_before);
    assert_eq!(served_token(&c, "acct"), acct_before);
}

// ---------------------------------------------------------------------
// 4. scrub.
// ---------------------------------------------------------------------

use crate::common::Rng;

/// Thousands of texts mixing ASCII, two-, three- and four-byte characters,
/// with a char-aligned piece (12 bytes or more) of a secret made of the
/// same mix put anywhere: scrub never panics, and no 12-byte window of
/// the piece survives; huge texts (the 256 KiB body cap, mostly
/// non-token characters) with many secrets are scrubbed too.
#[test]
fn scrub_never_panics_and_leaves_no_window_of_a_piece() {
    let alphabet: Vec<char> = "aZ9-_./+=~é€𝄞ü ".chars().collect();
    let mut rng = Rng(0x5eed_17b0);
    for case in 0..3000 {
        let len = 12 + rng.below(60);
        let secret: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len() - 1)])
            .collect();
        let bounds: Vec<usize> = secret
            .char_indices()
            .map(|(i, _)| i)
            .chain([secret.len()])
            .collect();
        let a = bounds[rng.below(bounds.len())];
        let ends: Vec<usize> = bounds.iter().copied().filter(|&b| b >= a + 12).collect();
        if ends.is_empty() {
            continue;
        }
        let b = ends[rng.below(ends.len())];
        let piece = &secret[a..b];
        let filler = |rng: &mut Rng| -> String {
            (0..rng.below(20))
                .map(|_| ['<', ' ', '!', '"', '\u{a0}', '中'][rng.below(6)])
                .collect()
        };
        let text = format!("{}{piece}{}", filler(&mut rng), filler(&mut rng));
        let out = scrub(&text, &[&secret, "other-secret-0123456789"]);
        for w in piece.as_bytes().windows(12) {
            assert!(
                !out.as_bytes().windows(12).any(|o| o == w),
                "case {case}: a window of the piece survived: {text:?} -> {out:?}"
            );
        }
    }
    let big: String = "<p>\"é\" ".repeat(256 * 1024 / 9);
    let secrets: Vec<String> = (0..64)
        .map(|i| format!("secret-{i:04}-{}", "x".repeat(2000)))
        .collect();
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let out = scrub(&format!("{big}{}", &secrets[3][..40]), &refs);
    assert!(out.ends_with("***"), "{}", &out[out.len() - 40..]);
}

/// A known secret that holds another, shorter known secret (say a refresh
/// token that happens to contain a short client secret): the whole-secret
/// pass replaces the short one first, which cuts the long one into pieces
/// under 12 characters around `***`, and the piece pass, run after it, no
/// longer finds them — 22 of the refresh token's 26 characters are shown.
/// Pieces should be found before anything is replaced.
///
/// (Mended: `scrub` marks whole secrets, pieces and runs on the text as it came, then replaces.)
#[test]
fn a_secret_holding_a_shorter_secret_is_still_scrubbed_whole() {
    let client_secret = "Qx7v";
    let refresh = format!("k9Xq2mW7pL4{client_secret}Zr8Tn3Vb6Yh");
    let out = scrub(
        &format!("refresh {refresh} refused"),
        &[client_secret, &refresh],
    );
    assert!(
        !out.contains(&refresh[..11]) && !out.contains(&refresh[15..]),
        "pieces of the refresh token survived: {out:?}"
    );
}

/// An upstream that quotes pieces of the refresh and access tokens in a
/// 400 `invalid_grant` (the credential goes dead): the message reaches
/// `last_error`, the event row, the notification, the API's JSON, the
/// CLI's `show` and the console's pages, and none of them holds a
/// 12-character piece of either token (the mend was checked on console
/// pages with a 503 only).
#[test]
fn quoted_token_pieces_reach_no_answer_of_any_kind() {
    let c = Console::start();
    c.env.login("acct", 3600);
    let (s, _) = c.sign_in(ADMIN);
    let fam = c.env.fake.family_state("acct");
    let (rt, at) = (
        fam.current_refresh_token.clone(),
        fam.current_access_token.clone(),
    );
    let description = format!(
        "grant {}… revoked; bearer …{} no longer valid; see {}",
        &rt[2..16],
        &at[at.len() - 14..],
        &rt[rt.len() - 13..]
    );
    c.env.fake.push_fault(Fault::status(
        400,
        json!({"error": "invalid_grant", "error_description": description}).to_string(),
    ));
    let a = c.post(
        "/ui/credentials/acct/refresh",
        Some(&s.cookie),
        &format!("csrf={}", s.csrf),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let mut seen = vec![flash(&c, &s, "/ui/credentials/acct")];
    for path in ["/ui", "/ui/overview", "/ui/credentials/acct"] {
        seen.push(c.get(path, Some(&s.cookie)).body);
    }
    let api = Client::new(c.addr, Some(ADMIN));
    for path in [
        "/v1/credentials",
        "/v1/credentials/acct",
        "/v1/credentials/acct/events",
        "/v1/notifications",
    ] {
        seen.push(api.get(path).body);
    }
    for args in [
        &["show", "acct", "--json"][..],
        &["events", "acct", "--json"],
        &["list", "--json"],
    ] {
        let out = c.env.run(args);
        seen.push(text(&out.stdout) + &text(&out.stderr));
    }
    assert!(
        seen.iter().any(|p| p.contains("revoked")),
        "upstream's message is shown somewhere"
    );
    for secret in [&rt, &at] {
        for w in secret.as_bytes().windows(12) {
            let w = std::str::from_utf8(w).expect("ascii token");
            for (i, page) in seen.iter().enumerate() {
                assert!(
                    !page.contains(w),
                    "answer {i} holds a 12-character piece of a token"
                );
            }
        }
    }
}

/// A token endpoint that answers every request with a redirect to
/// `location` (`{rt}` in it is replaced by the first 20 characters of the
/// refresh token the request carried): its address. The thread ends with the test process.
fn redirecting_upstream(location: &'static str) -> std::net::SocketAddr {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Head, then the declared body.
            while let Ok(n @ 1..) = s.read(&mut chunk) {
                buf.extend_from_slice(&chunk[..n]);
                let raw = String::from_utf8_lossy(&buf).into_owned();
                if let Some(end) = raw.find("\r\n\r\n") {
                    let len = raw[..end]
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            n.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let raw = String::from_utf8_lossy(&buf).into_owned();
            let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
            let rt = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["refresh_token"].as_str().map(str::to_owned))
                .or_else(|| {
                    body.split('&')
                        .find_map(|p| p.strip_prefix("refresh_token=").map(str::to_owned))
                })
                .unwrap_or_default();
            let piece: String = rt.chars().take(20).collect();
            let to = location.replace("{rt}", &piece);
            let _ = write!(
                s,
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    addr
}

/// A token endpoint that redirects to a path quoting 20 characters of the
/// refresh token it was sent (`/denied/<20 chars>/retry`): the redirect's
/// target is put in the failure's message with only token-looking runs
/// scrubbed — no known secret is passed for it, so the mend's "every piece
/// of 12 characters or more of a known secret" does not apply — and the
/// piece reaches `last_error`, the API's JSON and the console's pages.
///
/// (Mended: the redirect's target is scrubbed of everything the request carried — `HttpRequest::secrets`.)
#[test]
fn a_redirect_quoting_a_piece_of_the_refresh_token_shows_it_nowhere() {
    let c = Console::start();
    let up = redirecting_upstream("http://127.0.0.1/denied/{rt}");
    let grant = c.env.fake.new_family("acct");
    let rt = grant.refresh_token.clone();
    assert!(rt.len() > 20, "the fake's refresh tokens are long");
    let mut record = grant.import_json("acct", "codex", &format!("http://{up}/token"));
    record["expires_at"] = serde_json::Value::from(crate::common::tw::now() + 3600);
    let path = std::env::temp_dir().join(format!("attack17b-redirect-{}.json", up.port()));
    std::fs::write(&path, record.to_string()).expect("write");
    let out = c.env.run(&["import", path.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = std::fs::remove_file(&path);
    let api = Client::new(c.addr, Some(ADMIN));
    let forced = api.post("/v1/credentials/acct/refresh?force=true", "");
    let (s, _) = c.sign_in(ADMIN);
    let seen = [
        forced.body.clone(),
        api.get("/v1/credentials/acct").body,
        c.get("/ui/credentials/acct", Some(&s.cookie)).body,
    ];
    assert!(
        seen.iter().any(|p| p.contains("redirect")),
        "the redirect is reported: {seen:?}"
    );
    let holding: Vec<&str> = [
        "the API's refresh answer",
        "the API's credential",
        "the console page",
    ]
    .into_iter()
    .zip(&seen)
    .filter(|(_, page)| {
        rt.as_bytes()
            .windows(12)
            .any(|w| page.contains(std::str::from_utf8(w).expect("ascii")))
    })
    .map(|(name, _)| name)
    .collect();
    assert!(
        holding.is_empty(),
        "a 12-character piece of the live refresh token is in: {holding:?}"
    );
}

/// Over TLS (`serve --tls-cert --tls-key`, what the README asks for off
/// loopback), rustls is in front and hands the decrypted bytes to tiny_http
/// over a Unix socket: every request's `remote_addr()` is `None`, so the
/// sign-in throttle's per-address bucket never applies — one client gets
/// the whole server's burst (60 wrong keys at once, then one a second,
/// not 10 then one per 6 s), and the log line that is to "name the address
/// of each wrong key" says "an unknown address".
///
/// (Mended: the TLS front relays over an internal loopback TCP hop and
/// registers each relay's client — `tls::Relayed`; `App::client` reads it.)
#[test]
fn over_tls_the_throttle_still_counts_per_address() {
    use std::io::Read as _;
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let env = crate::common::tw::Env::new();
    let pki = crate::tls::make_pki(env.dir.path());
    let port = crate::common::http::free_port();
    let mut child = crate::tls::tls_serve(env.cmd(), ADMIN, &pki, port)
        .spawn()
        .expect("spawn serve");
    let ca = Certificate::from_der(&pki.ca_der).to_owned();
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(vec![ca])))
        .build();
    let browser = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .tls_config(tls)
        .build()
        .new_agent();
    let base = format!("https://127.0.0.1:{port}");
    let started = Instant::now();
    let form = loop {
        match browser.get(format!("{base}/ui/login")).call() {
            Ok(r) => break crate::common::http::read_answer(r).expect("answer"),
            Err(e) if started.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("serve did not come up: {e}"),
        }
    };
    assert_eq!(form.status, 200, "{}", form.body);
    let pre = cookie_pair(&form, "tw_pre").expect("a pre-session cookie");
    let csrf = csrf_of(&form.body);
    let mut statuses = Vec::new();
    for i in 0..=PER_PEER_BURST {
        let a = crate::common::http::read_answer(
            browser
                .post(format!("{base}/ui/login"))
                .header("Cookie", &pre)
                .header("Origin", &base)
                .content_type("application/x-www-form-urlencoded")
                .send(format!("csrf={csrf}&key=guess-{i:04}"))
                .expect("https"),
        )
        .expect("answer");
        statuses.push(a.status);
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let mut log = String::new();
    let _ = child.stderr.take().expect("piped").read_to_string(&mut log);
    let unnamed = log
        .lines()
        .filter(|l| l.contains("wrong key from an unknown address"))
        .count();
    assert!(
        statuses.contains(&429) && unnamed == 0,
        "{} wrong keys from one TLS client were answered {statuses:?}; {unnamed} log lines \
         name no address",
        PER_PEER_BURST + 1
    );
}

// ---------------------------------------------------------------------
// 3. and 5. Sessions and cookies.
// ---------------------------------------------------------------------

/// A browser sending hundreds of planted `tw_session` and `tw_pre` values
/// (another port's page can set many, under many paths) ahead of the real
/// ones, and the attacker's own live read-only session first of all: the
/// admin's session is still the one used (admin actions shown, a forced
/// refresh allowed), and signing in with a form whose pre-session cookie
/// is last of 300 works.
#[test]
fn hundreds_of_planted_cookies_neither_sign_out_nor_downgrade_the_admin() {
    let c = Console::start();
    c.env.login("acct", 3600);
    let (admin, _) = c.sign_in(ADMIN);
    let (attacker, _) = c.sign_in(crate::ui::READ);
    let planted: String = (0..300)
        .map(|i| format!("tw_session=planted-{i:04}; tw_pre={i}.planted; "))
        .collect();
    let jar = format!("{}; {planted}{}", attacker.cookie, admin.cookie);
    let page = c
        .get("/ui/credentials/acct", Some(&jar))
        .expect_status_200();
    assert!(
        !page.contains("read-only-note") && page.contains("/ui/credentials/acct/refresh"),
        "the admin's page, with its actions"
    );
    let upstream = calls(&c);
    let a = c.post(
        "/ui/credentials/acct/refresh",
        Some(&jar),
        &format!("csrf={}", admin.csrf),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(calls(&c), upstream + 1, "the admin's forced refresh ran");
    let (pre, csrf) = c.sign_in_form();
    let signed = c.post(
        "/ui/login",
        Some(&format!("{planted}{pre}")),
        &format!("csrf={csrf}&key={}", enc(ADMIN)),
    );
    assert_eq!(signed.status, 303, "{}", signed.body);
    assert!(set_cookie(&signed, "tw_session").is_some());
}

trait Status200 {
    fn expect_status_200(self) -> String;
}

impl Status200 for Answer {
    fn expect_status_200(self) -> String {
        assert_eq!(self.status, 200, "{}", self.body);
        self.body
    }
}
/// A Google-style refresh token, for the scrub tests below.
const GOOGLE_RT: &str = "1//0gLq7Zt3kPw9Xv2Rn8Ys4Hb6Jm1Dc5Fa0Ee3Gi7Kk9Mo2Qs4Uu6Ww8Yy";

/// A known refresh token quoted URL-encoded (`%2F`), JSON-escaped
/// (`\u002f`, in a body that is not JSON, so not decoded) or HTML-escaped
/// (`&#x2F;`): only the well-known `1//` prefix is left, the rest goes
/// with its run.
#[test]
fn escaped_forms_of_a_known_secret_are_scrubbed() {
    for escaped in ["%2F", "\\u002f", "&#x2F;"] {
        let text = format!("token {} unknown", GOOGLE_RT.replace('/', escaped));
        let out = scrub(&text, &[GOOGLE_RT]);
        assert!(!out.contains("0gLq7"), "{text:?} -> {out:?}");
        assert!(out.ends_with("*** unknown"), "{out:?}");
    }
}

/// A known token quoted in groups shorter than 12 characters — an HTML
/// error page or a log-style message that breaks long words (spaces,
/// line breaks, `<wbr>`), here every 8 characters — goes through whole:
/// each group is under the piece length and, alone, does not look like a
/// token, so every character of the refresh token is shown, a space
/// apart. Pieces are matched only on contiguous bytes.
///
/// (Mended: a run of 8 or more token characters made of a secret's characters in order goes — `MIN_SECRET_RUN`.)
#[test]
fn a_known_token_broken_into_short_groups_is_scrubbed() {
    let groups: Vec<String> = GOOGLE_RT
        .as_bytes()
        .chunks(8)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    for sep in [" ", "\n", "<wbr>"] {
        let text = format!("invalid token: {}", groups.join(sep));
        let out = scrub(&text, &[GOOGLE_RT]);
        let shown = groups.iter().filter(|g| out.contains(g.as_str())).count();
        assert!(
            shown <= 1,
            "{shown} of {} 8-character groups of the token survive (separator {sep:?}): {out:?}",
            groups.len()
        );
    }
}

/// A piece of a known token quoted in another case (an upstream or a proxy
/// that upper-cases its message): 20 characters of the refresh token are
/// shown, since pieces are matched byte for byte.
///
/// (Mended: pieces and runs are compared with ASCII case folded.)
#[test]
fn a_case_changed_piece_of_a_known_token_is_scrubbed() {
    let text = format!("TOKEN {} UNKNOWN", GOOGLE_RT[..20].to_uppercase());
    let out = scrub(&text, &[GOOGLE_RT]);
    assert!(!out.contains("0GLQ7ZT3KPW9"), "{out:?}");
}
