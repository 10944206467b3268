//! Property-based fuzzing of the HTTP API (proptest): random methods, paths,
//! query strings, headers, framing and bodies against one in-process server
//! holding a few credentials (the fake OAuth server upstream).
//!
//! The one HTTP fuzzer: it also holds the input classes and properties of
//! the seeded random-request test tests/http.rs had (odd prefixes and
//! ids, a header line without a colon, a second `Authorization`, framing
//! headers that contradict each other, a re-import of a real login).
//!
//! Properties, for every request:
//! - it is answered, unless its HTTP framing is invalid (then the server may
//!   close the connection without a word); a header line tiny_http cannot
//!   parse (no colon) gets its 400;
//! - no 5xx but 503 `unavailable` (`temporarily_unavailable` on the facade)
//!   with an integer `Retry-After`, and only for a credential whose refresh
//!   upstream failed (its summary counts failures) or that another refresh
//!   holds: a credential whose upstream is well is never 5xx;
//! - every error body is `{"error":{"code","message"}}` (OpenAI's shape from
//!   the facade), and every answer fits docs/openapi.yaml;
//! - a request without a valid key is 401 on every route but `GET /healthz`
//!   and `POST /oauth/token`; a read-only key never imports or deletes;
//! - no secret in any answer: no refresh token (not even one the request
//!   itself carried, as in a re-import of a real login), no facade handle
//!   (but the one presented, echoed by the facade), no API key, and no
//!   access or id token unless the request was an authorized token /
//!   reject / refresh call (access token) or a facade call (access and id
//!   token);
//!
//! and afterwards `/healthz` still answers 200, no 5xx but 503 was counted,
//! and (from 64 cases on) the answers span at least six statuses, one of
//! them a success.
//!
//! 400 cases by default; `TOKENWARDEN_FUZZ_CASES=2000` (or `PROPTEST_CASES`)
//! runs more, from a random seed that is printed; `TOKENWARDEN_FUZZ_SEED=N`
//! replays one.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::fake_oauth::CODEX_CLIENT_ID;
use crate::common::http::{free_port, parse_raw, read_answer, Answer, Client, InProcess};
use crate::common::spec::{Seen, Spec};
use crate::common::tw::Env;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use serde_json::{json, Value};
use tokenwarden::http::{ApiKeys, Server, ServerOptions};

const KEY: &str = "fuzz-admin-key-0123456789abcdef";
const READ_KEY: &str = "fuzz-read-key-fedcba9876543210";
const DEFAULT_CASES: u32 = 400;

/// What every JWT the fake issues (access and id tokens) starts with:
/// base64url of `{"alg":`.
const JWT_MARK: &str = "eyJhbGci";
/// Prefixes of the secrets the fuzzer itself puts in import bodies.
const FUZZ_REFRESH: &str = "rtfz";
const FUZZ_ACCESS: &str = "atfz";
const FUZZ_CLIENT_SECRET: &str = "csfz";
/// A body that stands for the import record of `real`'s first login (its
/// refresh token, by now maybe rotated away, and its access and id tokens).
const REAL_LOGIN: &str = "$REAL_LOGIN";

// ---------------------------------------------------------------------------
// Requests

#[derive(Clone, Debug, PartialEq)]
enum Auth {
    None,
    Admin,
    Read,
    /// Any `Authorization` value (`{KEY}` stands for the admin key).
    Raw(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Framing {
    /// `Content-Length` of the body (none when empty).
    Length,
    /// No length and no chunking, whatever the body.
    Absent,
    /// One or two valid chunks.
    Chunked,
    /// `Transfer-Encoding: chunked` and a body that is not.
    ChunkedBroken,
    /// `Content-Length: N`, N not the body's length.
    Declared(u64),
    /// `Content-Length: <not a number>`.
    Garbage(String),
}

#[derive(Clone, PartialEq)]
enum Body {
    Bytes(Vec<u8>),
    /// Text with placeholders (`$CURRENT`, `$HANDLE_REAL`, …) filled in
    /// when sent.
    Text(String),
    /// `len` copies of one byte.
    Huge(usize, u8),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Bytes(b) if b.len() > 200 => {
                write!(f, "Bytes({} bytes: {:?}…)", b.len(), &b[..200])
            }
            Body::Bytes(b) => write!(f, "Bytes({:?})", String::from_utf8_lossy(b)),
            Body::Text(t) => write!(f, "Text({t:?})"),
            Body::Huge(n, b) => write!(f, "Huge({n} × {b:#x})"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct FuzzRequest {
    method: String,
    /// Path and query as sent (may hold anything).
    target: String,
    auth: Auth,
    headers: Vec<(String, String)>,
    body: Body,
    framing: Framing,
    version: String,
    /// Header lines sent as they are, after the others (`{KEY}` stands
    /// for the admin key): a line without a colon, a second
    /// `Authorization`, a `Content-Length` or `Transfer-Encoding` beside the
    /// framing's own.
    lines: Vec<String>,
    /// Send through ureq when the request is well-formed enough for it.
    ureq: bool,
}

// ---------------------------------------------------------------------------
// Strategies

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(vec!["GET", "POST", "DELETE"]).prop_map(str::to_owned),
        2 => select(vec![
            "PUT", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "get", "Post", "BREW",
            "M-SEARCH", "PROPFIND", "X",
        ])
        .prop_map(str::to_owned),
        1 => "[A-Za-z!#$%&'*+.^_`|~-]{1,12}",
        1 => "[^\r\n]{0,8}",
    ]
}

fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(vec!["real", "real", "soon", "gone", "busy", "o2", "nobody"]).prop_map(str::to_owned),
        2 => "[A-Za-z0-9._@+-]{1,12}",
        2 => select(vec![
            "..", ".", "%2f", "%2F", "%00", "a%2fb", "%2e%2e", "real%00", "", "real%20",
            "%C3%A9", "é", "日本", "%", "%zz", "-", "@+._", "real;x", "real#x", "real?",
            "a%00b", "a/b", "a%zz",
        ])
        .prop_map(str::to_owned),
        1 => "\\PC{0,12}",
        1 => prop::collection::vec(any::<u8>(), 1..6)
            .prop_map(|b| b.iter().map(|b| format!("%{b:02x}")).collect()),
        1 => (120usize..140).prop_map(|n| "i".repeat(n)),
    ]
}

fn path() -> impl Strategy<Value = String> {
    let tail = select(vec![
        "", "", "/token", "/reject", "/refresh", "/events", "/quota", "/zzz", "/token/", "//",
        "/token/x", "/",
    ]);
    let segment = prop_oneof![
        3 => "[a-zA-Z0-9._~%@+=;-]{0,10}",
        1 => "\\PC{0,6}",
        1 => select(vec!["..", ".", "v1", "credentials", "oauth", "token", "healthz"]).prop_map(str::to_owned),
    ];
    prop_oneof![
        8 => (id(), tail.clone()).prop_map(|(id, t)| format!("/v1/credentials/{id}{t}")),
        3 => select(vec![
            "/healthz", "/metrics", "/v1/credentials", "/oauth/token", "/v1/credentials/",
        ])
        .prop_map(str::to_owned),
        2 => prop::collection::vec(segment, 0..6).prop_map(|s| format!("/{}", s.join("/"))),
        1 => (1usize..20_000, select(vec!["", "/token", "/events"]))
            .prop_map(|(n, t)| format!("/v1/credentials/{}{t}", "a".repeat(n))),
        1 => select(vec![
            "*", "", "/", "//", "http://fuzz/v1/credentials", "/v1/../metrics",
            "/v1/credentials/real/../../../metrics", "/%", "/%zz", "/healthz/",
            "//v1/credentials", "/oauth/token/", "/oauth/token/x",
            // The console: HTML under its own sign-in.
            "/ui", "/ui/login", "/ui/logout", "/ui/overview", "/ui/credentials/real",
            "/ui/credentials/real/refresh", "/ui/credentials/..%2f/delete", "/ui/static/app.js",
        ])
        .prop_map(str::to_owned),
        2 => (select(vec![
            "/v1/credentials/", "/v1/credentials", "/healthz", "/metrics", "/", "/v1/",
            "/v2/credentials/", "*", "http://fuzz/v1/credentials/", "//v1/credentials/",
        ]), id(), tail)
            .prop_map(|(prefix, id, t)| format!("{prefix}{id}{t}")),
    ]
}

fn query() -> impl Strategy<Value = String> {
    let name = select(vec![
        "min_ttl", "wait", "limit", "force", "replace", "id", "provider", "bogus", "", "MIN_TTL",
    ]);
    let value = prop_oneof![
        4 => select(vec![
            "0", "1", "60", "3500", "abc", "-1", "1e400", "301", "300", "1.5", "", "true", "no",
            "maybe", "%31", "codex", "oauth2", "claude", "nope", "real", "fz-new", "..",
            "1e2", "inf", "NaN", "0.25", "99999999999", " 5", "%2f", "x", "2",
        ])
        .prop_map(str::to_owned),
        1 => "[!-~]{0,12}",
        1 => (0u64..100_000).prop_map(|n| n.to_string()),
    ];
    prop_oneof![
        4 => Just(String::new()),
        4 => prop::collection::vec((name, value, any::<bool>()), 1..4).prop_map(|pairs| {
            let parts: Vec<String> = pairs
                .into_iter()
                .map(|(n, v, eq)| if eq || !v.is_empty() { format!("{n}={v}") } else { n.to_owned() })
                .collect();
            format!("?{}", parts.join("&"))
        }),
        1 => "\\?[!-~]{0,30}",
        1 => "\\?\\PC{0,10}",
        1 => select(vec!["?", "?&&=&", "?=", "?wait=1&wait=2", "?%00=1"]).prop_map(str::to_owned),
    ]
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        10 => Just(Auth::Admin),
        4 => Just(Auth::Read),
        2 => Just(Auth::None),
        2 => select(vec![
            "Bearer wrong", "Basic Zm9vOmJhcg==", "Bearer", "Bearer ", "bearer {KEY}",
            "BEARER   {KEY}  ", "Bearer {KEY}x", "Bearer x{KEY}", "{KEY}", "Bearer  {KEY}",
            "Token {KEY}", "Bearer {KEY} extra", "Bearer fuzz-admin-key-0123456789abcde",
        ])
        .prop_map(|s| Auth::Raw(s.to_owned())),
        1 => "[ -~]{0,40}".prop_map(Auth::Raw),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        6 => select(vec![
            "Content-Type", "Content-Type", "Accept", "X-Forwarded-For", "Cookie", "Expect",
            "Host", "User-Agent", "X-Junk", "Accept-Encoding", "Range", "Upgrade",
        ])
        .prop_map(str::to_owned),
        1 => "[A-Za-z-]{1,16}",
    ];
    let value = prop_oneof![
        4 => select(vec![
            "application/json", "application/x-www-form-urlencoded",
            "text/plain; charset=\u{1}", "multipart/form-data; boundary=x", "100-continue",
            "", "*/*", "gzip", "bytes=0-1", "h2c", "application/json; charset=utf-8",
        ])
        .prop_map(str::to_owned),
        2 => "[ -~]{0,40}",
        1 => "\\PC{0,10}",
    ];
    prop::collection::vec((name, value), 0..4)
}

/// Header lines the name/value pairs above never make.
fn lines() -> impl Strategy<Value = Vec<String>> {
    let line = select(vec![
        "no colon in this line",
        "Authorization: Bearer {KEY}",
        "Authorization: Bearer nope",
        "Authorization: Basic dXNlcjpwYXNz",
        "Authorization: Bearer",
        "Content-Length: 3000000",
        "Content-Length: -1",
        "Transfer-Encoding: chunked",
        "Expect: 100-continue",
        "X-Not-Ascii: caf\u{e9}",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        6 => Just(Vec::new()),
        1 => prop::collection::vec(line, 1..4),
    ]
}

/// A near-valid import record: fields of the three formats, values
/// sometimes off.
fn import_record() -> impl Strategy<Value = Value> {
    let secret =
        |prefix: &'static str| "[A-Za-z0-9]{12}".prop_map(move |s| format!("{prefix}_{s}"));
    let id = prop_oneof![
        4 => "fz-[a-z0-9]{1,8}",
        1 => select(vec!["spare", "spare", "gone", "..", "", "a/b", "é"]).prop_map(str::to_owned),
    ];
    let provider = select(vec![
        json!("codex"),
        json!("codex"),
        json!("codex"),
        json!("claude"),
        json!("google"),
        json!("oauth2"),
        json!("nope"),
        json!(5),
        Value::Null,
    ]);
    let token_url = select(vec![
        json!("$FAKE"),
        json!("$FAKE"),
        json!("$DOWN"),
        json!("http://10.0.0.1/t"),
        json!("ftp://x"),
        json!("not a url"),
        json!(""),
        Value::Null,
    ]);
    let expires_at = select(vec![
        json!(4_102_444_800i64),
        json!(4_102_444_800i64),
        json!("2030-01-01T00:00:00Z"),
        json!(0),
        json!(-1),
        json!("2030-01-01T00:00:00Z"),
        json!("garbage"),
        json!(1e30),
        Value::Null,
        json!(true),
    ]);
    let extra = select(vec![
        ("encoding", json!("form")),
        ("encoding", json!("xml")),
        ("client_auth", json!("basic")),
        ("client_auth", json!("none")),
        ("scope", json!("openid")),
        ("typo", json!(1)),
        ("client_id", json!("client")),
        ("client_id", json!(7)),
        ("id_token", json!("not.a.jwt")),
    ]);
    (
        id,
        provider,
        secret(FUZZ_REFRESH),
        secret(FUZZ_ACCESS),
        token_url,
        expires_at,
        prop::collection::vec(extra, 0..2),
        (secret(FUZZ_CLIENT_SECRET), any::<bool>()),
        0..4u8,
    )
        .prop_map(|(id, provider, rt, at, url, exp, extra, (cs, with_cs), format)| match format {
            // Codex CLI auth.json.
            0 => json!({"OPENAI_API_KEY": null, "tokens": {"refresh_token": rt, "access_token": at,
                "account_id": id}, "last_refresh": "2025-01-01T00:00:00Z"}),
            // CLIProxyAPI.
            1 => json!({"type": provider, "refresh_token": rt, "access_token": at, "email": id,
                "expired": exp}),
            // tokenwarden's own, google ones never without a token URL.
            _ => {
                let mut r = json!({"id": id, "provider": provider, "refresh_token": rt,
                    "access_token": at, "expires_at": exp, "token_url": url});
                if with_cs {
                    r["client_secret"] = json!(cs);
                }
                if provider == "google" && url.is_null() {
                    r["token_url"] = json!("$FAKE");
                }
                for (k, v) in extra {
                    r[k] = v;
                }
                if format == 3 {
                    r.as_object_mut().map(|m| m.remove("refresh_token"));
                }
                r
            }
        })
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        "\\PC{0,16}".prop_map(Value::from),
        select(vec![
            "access_token",
            "refresh_token",
            "$CURRENT",
            "$HANDLE_REAL",
            "twh_x"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        let key = prop_oneof![
            select(vec![
                "access_token",
                "refresh_token",
                "grant_type",
                "id",
                "provider",
                "tokens",
                "type",
                "client_id",
            ])
            .prop_map(str::to_owned),
            "\\PC{0,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn reject_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        4 => select(vec!["$CURRENT", "$CURRENT", "not-a-token", ""]).prop_map(|t| json!({ "access_token": t })),
        1 => Just(json!({"access_token": 5})),
        1 => Just(json!({"access_token": null})),
        1 => Just(json!({"access_token": ["x"]})),
        1 => Just(json!({"access_token": "$CURRENT", "extra": 1})),
        1 => Just(json!({"token": "$CURRENT"})),
    ]
    .prop_map(|v| Body::Text(v.to_string()))
}

fn facade_body() -> impl Strategy<Value = Body> {
    let handle = select(vec![
        "$HANDLE_REAL",
        "$HANDLE_REAL",
        "$HANDLE_GONE",
        "$HANDLE_BUSY",
        "twh_unknown",
        "x",
        "",
    ]);
    (
        select(vec!["refresh_token", "refresh_token", "authorization_code", ""]),
        handle,
        any::<bool>(),
    )
        .prop_map(|(grant, handle, form)| {
            Body::Text(if form {
                format!("grant_type={grant}&refresh_token={handle}&client_id={CODEX_CLIENT_ID}&scope=openid+profile")
            } else {
                json!({"grant_type": grant, "refresh_token": handle, "client_id": CODEX_CLIENT_ID})
                    .to_string()
            })
        })
}

fn import_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        3 => import_record().prop_map(|r| Body::Text(r.to_string())),
        1 => prop::collection::vec(import_record(), 0..3)
            .prop_map(|rs| Body::Text(Value::Array(rs).to_string())),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    let mib = 1usize << 20;
    prop_oneof![
        6 => Just(Body::Bytes(Vec::new())),
        3 => prop::collection::vec(any::<u8>(), 0..2000).prop_map(Body::Bytes),
        3 => arbitrary_json().prop_map(|v| Body::Text(v.to_string())),
        1 => select(vec!["\u{feff}{}", "[]", "null"]).prop_map(|t| Body::Text(t.to_owned())),
        4 => import_body(),
        1 => Just(Body::Text(REAL_LOGIN.to_owned())),
        3 => reject_body(),
        3 => facade_body(),
        1 => (prop_oneof![mib - 4..=mib + 4, mib..=mib + mib / 5], any::<u8>())
            .prop_map(|(n, b)| Body::Huge(n, b)),
    ]
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        20 => Just(Framing::Length),
        2 => Just(Framing::Absent),
        3 => Just(Framing::Chunked),
        1 => Just(Framing::ChunkedBroken),
        1 => prop_oneof![
            0u64..2000,
            Just(5_000_000u64),
            Just(u64::MAX),
            Just(99_999_999_999_999_999),
        ]
        .prop_map(Framing::Declared),
        1 => select(vec!["-1", "abc", "1, 2", "+5", "0x10", "", "18446744073709551616"])
            .prop_map(|s| Framing::Garbage(s.to_owned())),
    ]
}

fn version() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => Just("HTTP/1.1".to_owned()),
        1 => select(vec!["HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.2", "HTTP/1.1x", "", "http/1.1"])
            .prop_map(str::to_owned),
    ]
}

/// Anything: every part drawn on its own, so most requests are off in
/// some way.
fn chaotic() -> impl Strategy<Value = FuzzRequest> {
    (
        method(),
        path(),
        query(),
        auth(),
        headers(),
        body(),
        framing(),
        version(),
        lines(),
        any::<bool>(),
    )
        .prop_map(
            |(method, path, query, auth, headers, body, framing, version, lines, ureq)| {
                FuzzRequest {
                    method,
                    target: format!("{path}{query}"),
                    auth,
                    headers,
                    body,
                    framing,
                    version,
                    lines,
                    ureq,
                }
            },
        )
}

/// A route called as meant (method, a plausible id, query and body), so
/// the success paths are reached too.
fn well_formed() -> impl Strategy<Value = FuzzRequest> {
    let ops = vec![
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/v1/credentials"),
        ("POST", "/v1/credentials"),
        ("POST", "/v1/credentials"),
        ("POST", "/v1/credentials"),
        ("GET", "/v1/credentials/{id}"),
        ("DELETE", "/v1/credentials/{id}"),
        ("GET", "/v1/credentials/{id}/token"),
        ("GET", "/v1/credentials/{id}/token"),
        ("POST", "/v1/credentials/{id}/reject"),
        ("POST", "/v1/credentials/{id}/refresh"),
        ("GET", "/v1/credentials/{id}/events"),
        ("GET", "/v1/credentials/{id}/quota"),
        ("POST", "/v1/credentials/{id}/quota"),
        ("POST", "/oauth/token"),
        ("POST", "/oauth/token"),
    ];
    select(ops)
        .prop_flat_map(|(method, pattern)| {
            let body = match pattern {
                "/v1/credentials" => import_body().boxed(),
                "/v1/credentials/{id}/reject" => reject_body().boxed(),
                "/oauth/token" => facade_body().boxed(),
                _ => prop_oneof![9 => Just(Body::Bytes(Vec::new())), 1 => body()].boxed(),
            };
            let id = prop_oneof![
                6 => select(vec!["real", "real", "soon", "gone", "busy", "o2", "spare", "nobody"])
                    .prop_map(str::to_owned),
                1 => "fz-[a-z0-9]{1,6}",
            ];
            let query = prop_oneof![
                4 => Just(String::new()),
                3 => select(vec![
                    "?min_ttl=60", "?min_ttl=3500", "?wait=1", "?wait=0.5&min_ttl=10", "?limit=3",
                    "?force=1", "?force=0", "?replace=1", "?id=fz-q", "?provider=codex",
                    "?replace=1&id=fz-r", "?limit=0",
                ])
                .prop_map(str::to_owned),
                1 => query(),
            ];
            let auth =
                prop_oneof![6 => Just(Auth::Admin), 3 => Just(Auth::Read), 1 => Just(Auth::None)];
            (
                Just(method),
                Just(pattern),
                id,
                query,
                auth,
                body,
                any::<bool>(),
            )
        })
        .prop_map(|(method, pattern, id, query, auth, body, ureq)| {
            let mut headers = Vec::new();
            if let Body::Text(t) = &body {
                let ctype = match t.starts_with("grant_type=") {
                    true => "application/x-www-form-urlencoded",
                    false => "application/json",
                };
                headers.push(("Content-Type".to_owned(), ctype.to_owned()));
            }
            FuzzRequest {
                method: method.to_owned(),
                target: format!("{}{query}", pattern.replace("{id}", &id)),
                auth,
                headers,
                body,
                framing: Framing::Length,
                version: "HTTP/1.1".to_owned(),
                lines: Vec::new(),
                ureq,
            }
        })
}

fn request() -> impl Strategy<Value = FuzzRequest> {
    prop_oneof![1 => well_formed(), 1 => chaotic()].prop_map(spare_fixtures)
}

/// Deletes of the fixtures the properties lean on go to `spare` instead,
/// so the success paths stay reachable through a long run.
fn spare_fixtures(mut rq: FuzzRequest) -> FuzzRequest {
    let path = rq.target.split('?').next().unwrap_or_default();
    let fixture = ["real", "soon", "gone", "busy", "o2"]
        .iter()
        .any(|id| path == format!("/v1/credentials/{id}"));
    if rq.method == "DELETE" && fixture {
        rq.target = rq.target.replacen(path, "/v1/credentials/spare", 1);
    }
    rq
}

// ---------------------------------------------------------------------------
// The world the requests are sent to

struct World {
    env: Env,
    srv: InProcess,
    spec: Spec,
    client: Client,
    /// `$HANDLE_REAL`, `$HANDLE_GONE`, `$HANDLE_BUSY`, with the
    /// credential each stands for.
    handles: Vec<(&'static str, String, &'static str)>,
    /// [`REAL_LOGIN`] filled in.
    real_login: String,
    /// Upstream accounts whose refresh tokens are secrets.
    accounts: Vec<String>,
    down_url: String,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    by_status: BTreeMap<u16, u32>,
    closed: u32,
    hung: u32,
    via_ureq: u32,
    /// Answers whose every byte must be free of secrets (everything but the
    /// token fields an authorized call may carry), for a last check once
    /// every secret is known.
    scrubbed: Vec<(String, String)>,
}

impl World {
    fn new() -> World {
        let env = Env::new();
        let file = env.dir.path().join("api-keys");
        std::fs::write(&file, format!("read:{READ_KEY}\nadmin:{KEY}\n")).expect("key file");
        let options = ServerOptions {
            threads: 4,
            keys: ApiKeys::from_file(&file).expect("keys"),
            ..ServerOptions::default()
        };
        let server =
            Server::start(Arc::new(env.warden()), "127.0.0.1:0", options).expect("start server");
        let client = Client::new(server.addr(), Some(KEY));
        let srv = InProcess {
            server,
            client: client.clone(),
        };
        let url = env.fake.token_url();
        let real_login = env
            .login("real", 3000)
            .import_json("real", "codex", &url)
            .to_string();
        env.login("soon", 100);
        env.login("spare", 3000);
        env.login("gone", 3000);
        env.fake.revoke_family("gone");
        client.post("/v1/credentials/gone/refresh", "").expect(410);
        // Refreshing it fails transiently, every time: 503.
        let down_url = format!("http://127.0.0.1:{}/token", free_port());
        let busy = json!({"id": "busy", "provider": "oauth2", "refresh_token": "rt-busy",
            "token_url": down_url, "client_id": "c"});
        client
            .post("/v1/credentials", &busy.to_string())
            .expect(201);
        client.get("/v1/credentials/busy/token").expect(503);
        let o2 = env.fake.new_family("o2");
        let mut record = o2.import_json("o2", "oauth2", &url);
        record["client_id"] = json!("client");
        client
            .post("/v1/credentials", &record.to_string())
            .expect(201);
        client.post("/v1/credentials/real/quota", "").expect(200);
        let warden = env.warden();
        let handle = |id: &str| {
            tokenwarden::facade::create_handle(&warden, id, "fuzz")
                .expect("handle")
                .expose()
                .to_owned()
        };
        let handles = vec![
            ("$HANDLE_REAL", handle("real"), "real"),
            ("$HANDLE_GONE", handle("gone"), "gone"),
            ("$HANDLE_BUSY", handle("busy"), "busy"),
        ];
        World {
            spec: Spec::load(),
            client,
            handles,
            real_login,
            accounts: ["real", "soon", "spare", "gone", "o2"]
                .map(str::to_owned)
                .to_vec(),
            down_url,
            srv,
            env,
            log: Mutex::new(Log::default()),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.srv.addr()
    }

    /// The body's bytes, placeholders filled in.
    fn body_bytes(&self, body: &Body) -> Vec<u8> {
        match body {
            Body::Bytes(b) => b.clone(),
            Body::Huge(n, b) => vec![*b; *n],
            Body::Text(t) => {
                let mut t = t.replace(REAL_LOGIN, &self.real_login);
                t = t.replace("$FAKE", &self.env.fake.token_url());
                t = t.replace("$DOWN", &self.down_url);
                if t.contains("$CURRENT") {
                    let current = self.env.fake.family_state("real").current_access_token;
                    t = t.replace("$CURRENT", &current);
                }
                for (name, h, _) in &self.handles {
                    t = t.replace(name, h);
                }
                t.into_bytes()
            }
        }
    }

    fn auth_value(auth: &Auth) -> Option<String> {
        match auth {
            Auth::None => None,
            Auth::Admin => Some(format!("Bearer {KEY}")),
            Auth::Read => Some(format!("Bearer {READ_KEY}")),
            Auth::Raw(v) => Some(v.replace("{KEY}", KEY)),
        }
    }

    /// The bytes on the wire.
    fn wire(&self, rq: &FuzzRequest, body: &[u8]) -> (Vec<u8>, usize) {
        let mut head = match rq.version.as_str() {
            "" => format!("{} {}\r\n", rq.method, rq.target),
            v => format!("{} {} {v}\r\n", rq.method, rq.target),
        };
        head.push_str("Host: fuzz\r\nConnection: close\r\n");
        if let Some(a) = Self::auth_value(&rq.auth) {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        for (n, v) in &rq.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        for line in &rq.lines {
            head.push_str(&line.replace("{KEY}", KEY));
            head.push_str("\r\n");
        }
        match &rq.framing {
            Framing::Length if !body.is_empty() => {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            Framing::Length | Framing::Absent => {}
            Framing::Chunked | Framing::ChunkedBroken => {
                head.push_str("Transfer-Encoding: chunked\r\n");
            }
            Framing::Declared(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
            Framing::Garbage(s) => head.push_str(&format!("Content-Length: {s}\r\n")),
        }
        head.push_str("\r\n");
        let head_len = head.len();
        let mut out = head.into_bytes();
        match rq.framing {
            Framing::Chunked => {
                let (a, b) = body.split_at(body.len() / 2);
                for chunk in [a, b] {
                    if !chunk.is_empty() {
                        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        out.extend_from_slice(chunk);
                        out.extend_from_slice(b"\r\n");
                    }
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            Framing::ChunkedBroken => {
                out.extend_from_slice(b"zz\r\n");
                out.extend_from_slice(body);
            }
            _ => out.extend_from_slice(body),
        }
        (out, head_len)
    }

    /// Whether the request's framing is invalid HTTP/1.1 (the server may
    /// then close without answering).
    fn framing_invalid(rq: &FuzzRequest, head: &[u8], body_len: usize) -> bool {
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        let head_ok = head.is_ascii()
            && head.split(|b| *b == b'\n').all(|l| {
                l.iter()
                    .all(|b| (0x20..0x7f).contains(b) || *b == b'\t' || *b == b'\r')
            });
        !head_ok
            || !token(&rq.method)
            || rq.target.is_empty()
            || rq.target.contains(' ')
            || !matches!(rq.version.as_str(), "HTTP/1.1" | "HTTP/1.0")
            || (rq.version == "HTTP/1.0" && matches!(rq.framing, Framing::Chunked))
            || match &rq.framing {
                Framing::ChunkedBroken | Framing::Garbage(_) => true,
                Framing::Declared(n) => *n != body_len as u64,
                _ => false,
            }
    }

    /// Whether ureq can send it as is.
    fn ureq_can_send(rq: &FuzzRequest, invalid: bool) -> bool {
        rq.ureq
            && !invalid
            // ureq sends CONNECT's target in authority form.
            && !rq.method.eq_ignore_ascii_case("CONNECT")
            && rq.version == "HTTP/1.1"
            && rq.framing == Framing::Length
            && rq.lines.is_empty()
            && rq.target.starts_with('/')
            // ureq drops a fragment.
            && !rq.target.contains('#')
            && !matches!(rq.body, Body::Huge(..))
            && rq.headers.iter().all(|(n, v)| {
                !n.eq_ignore_ascii_case("host")
                    && !n.eq_ignore_ascii_case("expect")
                    && v.bytes().all(|b| (0x20..0x7f).contains(&b))
            })
    }

    fn send_ureq(&self, rq: &FuzzRequest, body: &[u8]) -> Option<Answer> {
        let mut builder = ureq::http::Request::builder()
            .method(rq.method.as_str())
            .uri(format!("http://{}{}", self.addr(), rq.target));
        if let Some(a) = Self::auth_value(&rq.auth) {
            builder = builder.header("Authorization", a);
        }
        for (n, v) in &rq.headers {
            builder = builder.header(n.as_str(), v.as_str());
        }
        let request = builder.body(body.to_vec()).ok()?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .allow_non_standard_methods(true)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        read_answer(agent.run(request).ok()?).ok()
    }

    /// Sends one request and checks every property on its answer.
    fn case(&self, rq: &FuzzRequest) -> Result<(), TestCaseError> {
        let body = self.body_bytes(&rq.body);
        let (wire, head_len) = self.wire(rq, &body);
        let invalid = Self::framing_invalid(rq, &wire[..head_len], body.len());
        let mut answer = None;
        if Self::ureq_can_send(rq, invalid) {
            // ureq refuses some requests itself; those go raw instead.
            answer = self.send_ureq(rq, &body);
            if answer.is_some() {
                self.log.lock().unwrap().via_ureq += 1;
            }
        }
        let t0 = Instant::now();
        let outcome = match answer {
            Some(a) => Outcome::Answer(a),
            // An invalid request is closed at once or not at all.
            None => send_raw(self.addr(), &wire, if invalid { 2 } else { 30 }),
        };
        if std::env::var_os("FUZZ_DEBUG").is_some() {
            eprintln!(
                "{:?} {:?} {:?} {:?} {:?} framing {:?} body {:?} → {:?} in {:?}",
                rq.method,
                rq.target.chars().take(80).collect::<String>(),
                rq.version,
                rq.headers,
                rq.lines,
                rq.framing,
                rq.body,
                outcome,
                t0.elapsed()
            );
        }
        let a = match outcome {
            Outcome::Answer(a) => a,
            Outcome::Closed => {
                self.log.lock().unwrap().closed += 1;
                prop_assert!(invalid, "closed without an answer to a well-formed request");
                return Ok(());
            }
            Outcome::Hung => {
                self.log.lock().unwrap().hung += 1;
                // Known bugs: see the ignored tests below.
                prop_assert!(
                    known_hang(rq),
                    "neither answered nor closed within the timeout"
                );
                return Ok(());
            }
        };
        *self
            .log
            .lock()
            .unwrap()
            .by_status
            .entry(a.status)
            .or_default() += 1;
        self.check_answer(rq, &body, invalid, &a).map_err(|e| {
            TestCaseError::fail(format!(
                "{e}\n→ {} {:?}\n{}",
                a.status,
                a.headers,
                a.body.chars().take(2000).collect::<String>()
            ))
        })
    }

    /// Whether answer `a` to `rq` fits docs/openapi.yaml.
    fn contract(&self, rq: &FuzzRequest, a: &Answer) -> Result<(), String> {
        self.spec
            .check(&Seen {
                method: &rq.method,
                target: &rq.target,
                status: a.status,
                headers: &a.headers,
                body: &a.body,
            })
            .map_err(|e| format!("does not match docs/openapi.yaml: {e}"))
    }

    fn check_answer(
        &self,
        rq: &FuzzRequest,
        body: &[u8],
        invalid: bool,
        a: &Answer,
    ) -> Result<(), String> {
        let (path, _) = rq.target.split_once('?').unwrap_or((&rq.target, ""));
        let head = rq.method == "HEAD";
        let from_handler = a.header("cache-control") == Some("no-store");
        if !from_handler {
            // tiny_http itself refused the request before any handler saw
            // it: a framing error, or an expectation it does not meet
            // (RFC 9110 §10.1.1: 417).
            let odd_expect = rq.headers.iter().any(|(n, v)| {
                n.eq_ignore_ascii_case("expect") && !v.trim().eq_ignore_ascii_case("100-continue")
            });
            // A header line without a colon, or framing headers beside the
            // framing's own: tiny_http may refuse it, but must answer.
            let odd_lines = rq.lines.iter().any(|l| {
                !l.contains(':')
                    || l.starts_with("Content-Length:")
                    || l.starts_with("Transfer-Encoding:")
            });
            if ((invalid || odd_lines) && a.status == 400) || (odd_expect && a.status == 417) {
                return Ok(());
            }
            return Err(format!(
                "an answer not from the handler (invalid framing: {invalid})"
            ));
        }
        // No 5xx but 503 with a Retry-After.
        if a.status >= 500 {
            let retry = a.header("retry-after").and_then(|v| v.parse::<u64>().ok());
            if a.status != 503 || retry.is_none() {
                return Err("a 5xx other than 503 with Retry-After".into());
            }
        }
        // The console (`/`, `/ui…`): HTML with its own sign-in, not the
        // JSON API. Its answers must still fit the document's `x-console`
        // (statuses, security headers, types) and hold no secret.
        if self.spec.is_console(path) {
            self.contract(rq, a)?;
            return self.scan(&format!("{:?}\n{}", a.headers, a.body));
        }
        let facade = rq.method == "POST" && path == "/oauth/token";
        // Error bodies.
        if a.status >= 400 && !head {
            let v: Value =
                serde_json::from_str(&a.body).map_err(|e| format!("error body not JSON: {e}"))?;
            let e = &v["error"];
            let ours = e["code"].is_string() && e["message"].is_string();
            let openai = e["message"].is_string()
                && e["type"].is_string()
                && e["param"].is_null()
                && e["code"].is_string();
            if !(ours || facade && openai) {
                return Err("error body is not {\"error\":{\"code\",\"message\"}}".into());
            }
            if a.status == 503 {
                let code = e["code"].as_str().unwrap_or_default();
                if !matches!(code, "unavailable" | "temporarily_unavailable") {
                    return Err(format!("503 with code {code}"));
                }
                self.explain_503(path, body, e)?;
            }
        }
        // The contract.
        self.contract(rq, a)?;
        // Keys: the server reads the first `Authorization` line.
        let presented = Self::auth_value(&rq.auth).or_else(|| {
            rq.lines.iter().find_map(|l| {
                let value = l.strip_prefix("Authorization:")?;
                Some(value.replace("{KEY}", KEY).trim().to_owned())
            })
        });
        let scope = presented.as_deref().and_then(key_scope);
        // A second `Host` or a foreign `Origin` is refused before the key
        // is looked at (DNS rebinding, src/http/origin.rs), whatever the key.
        // (An answer to HEAD has no body to say which refusal it is.)
        let error = serde_json::from_str::<Value>(&a.body).unwrap_or_default();
        let says = |field: &str, what: fn(&str) -> bool| {
            head || error["error"][field].as_str().is_some_and(what)
        };
        let host_refused = path != "/healthz"
            && rq
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("host") || n.eq_ignore_ascii_case("origin"))
            && match a.status {
                400 => says("message", |m| m.contains("Host")),
                403 => says("code", |c| c.starts_with("forbidden_")),
                _ => false,
            };
        let public = (rq.method == "GET" && path == "/healthz") || facade || host_refused;
        if scope.is_none() && !public && a.status != 401 {
            return Err("no valid key, yet not 401".into());
        }
        if scope.is_some() && a.status == 401 && !facade {
            return Err("a valid key, yet 401".into());
        }
        if scope == Some(Scope::Read) && (200..300).contains(&a.status) {
            let import = rq.method == "POST" && path == "/v1/credentials";
            let delete = rq.method == "DELETE";
            if import || delete {
                return Err("a read-only key imported or deleted".into());
            }
        }
        // Secrets: first take out what this caller may see.
        let mut text = format!("{:?}\n{}", a.headers, a.body);
        let token_call = scope.is_some()
            && a.status == 200
            && [("GET", "/token"), ("POST", "/reject"), ("POST", "/refresh")]
                .iter()
                .any(|(m, tail)| {
                    rq.method == *m
                        && path.starts_with("/v1/credentials/")
                        && path.ends_with(tail)
                        && path.matches('/').count() == 4
                });
        let facade_ok = facade && a.status == 200;
        if token_call || facade_ok {
            let v: Value = serde_json::from_str(&a.body).map_err(|e| format!("not JSON: {e}"))?;
            let mut allowed = vec!["access_token"];
            if facade_ok {
                allowed.extend(["id_token", "refresh_token"]);
                let echoed = v["refresh_token"].as_str().unwrap_or_default();
                if !String::from_utf8_lossy(body).contains(echoed) || echoed.is_empty() {
                    return Err("the facade answered another refresh token than presented".into());
                }
            }
            for field in allowed {
                if let Some(s) = v[field].as_str().filter(|s| s.len() >= 8) {
                    text = text.replace(s, "<allowed>");
                }
            }
        }
        self.scan(&text)?;
        self.log
            .lock()
            .unwrap()
            .scrubbed
            .push((format!("{} {}", rq.method, rq.target), text));
        Ok(())
    }

    /// A 503 is for a credential whose refresh upstream failed (its summary
    /// counts failures) or that another refresh holds: never for one whose
    /// upstream is well. `error` is the answer's `error` member.
    fn explain_503(&self, path: &str, body: &[u8], error: &Value) -> Result<(), String> {
        let message = error["message"].as_str().unwrap_or_default();
        if message.contains("another refresh of it is still in flight") {
            return Ok(());
        }
        let id = match path.split_once("/v1/credentials/") {
            Some((_, rest)) => rest.split('/').next().unwrap_or_default().to_owned(),
            // The facade: the credential of the handle presented.
            None => {
                let body = String::from_utf8_lossy(body);
                let held = self
                    .handles
                    .iter()
                    .find(|(_, h, _)| body.contains(h.as_str()));
                match held {
                    Some((_, _, id)) => (*id).to_owned(),
                    None => return Err("a 503 for no known handle".into()),
                }
            }
        };
        let summary = self.client.get(&format!("/v1/credentials/{id}"));
        if summary.status != 200 {
            return Err(format!("a 503 for {id:?}, which is not there"));
        }
        let s = summary.json();
        let failed = s["failures"].as_u64().is_some_and(|n| n > 0);
        if !failed && s["state"] != "refreshing" {
            return Err(format!("a 503 for {id}, whose upstream never failed: {s}"));
        }
        Ok(())
    }

    /// Every secret known now.
    fn secrets(&self) -> Vec<String> {
        let mut s: Vec<String> = self
            .accounts
            .iter()
            .flat_map(|a| self.env.fake.issued_refresh_tokens(a))
            .collect();
        s.extend(self.handles.iter().map(|(_, h, _)| h.clone()));
        s.extend([KEY, READ_KEY].map(str::to_owned));
        s.extend(
            [JWT_MARK, FUZZ_REFRESH, FUZZ_ACCESS, FUZZ_CLIENT_SECRET]
                .iter()
                .map(|m| m.to_string()),
        );
        s
    }

    fn scan(&self, text: &str) -> Result<(), String> {
        match self
            .secrets()
            .into_iter()
            .find(|s| text.contains(s.as_str()))
        {
            Some(s) => Err(format!(
                "a secret in the answer: {}…",
                s.chars().take(12).collect::<String>()
            )),
            None => Ok(()),
        }
    }
}

/// Requests the server is known to leave hanging (open, unanswered) — the
/// two ignored tests at the end.
fn known_hang(rq: &FuzzRequest) -> bool {
    let unallocatable = matches!(rq.framing, Framing::Declared(n) if n > 1 << 40);
    let http2_or_later = rq
        .version
        .strip_prefix("HTTP/")
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(major, minor)| {
            major.parse::<u32>().is_ok_and(|m| m >= 2) && minor.parse::<u32>().is_ok()
        });
    unallocatable || http2_or_later
}

/// What became of a raw request.
#[derive(Debug)]
enum Outcome {
    Answer(Answer),
    /// Closed without an answer.
    Closed,
    /// Neither answered nor closed within the timeout.
    Hung,
}

/// Sends raw bytes, half-closes, and reads until the server closes (or
/// `timeout_s` passes without a byte).
fn send_raw(addr: SocketAddr, request: &[u8], timeout_s: u64) -> Outcome {
    let mut s = TcpStream::connect(addr).expect("connect");
    let timeout = Some(Duration::from_secs(timeout_s));
    s.set_read_timeout(timeout).expect("timeout");
    s.set_write_timeout(timeout).expect("timeout");
    // The server may stop reading early (413): that is fine.
    let _ = s.write_all(request);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16384];
    let hung = loop {
        match s.read(&mut buf) {
            Ok(0) => break false,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break true
            }
            Err(_) => break false,
        }
    };
    match parse_raw(&bytes) {
        Some(a) => Outcome::Answer(a),
        None if hung => Outcome::Hung,
        None => Outcome::Closed,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scope {
    Read,
    Admin,
}

/// What the server makes of an `Authorization` value (mirrors
/// src/http/auth.rs).
fn key_scope(value: &str) -> Option<Scope> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    match rest.trim() {
        KEY => Some(Scope::Admin),
        READ_KEY => Some(Scope::Read),
        _ => None,
    }
}

fn cases() -> (u32, bool) {
    let var = |n: &str| std::env::var(n).ok().and_then(|v| v.trim().parse().ok());
    match var("TOKENWARDEN_FUZZ_CASES").or_else(|| var("PROPTEST_CASES")) {
        Some(n) => (n, true),
        None => (DEFAULT_CASES, false),
    }
}

/// Every fuzzed request, well-formed or not, keeps every property in this
/// module's doc, and the server is still up and counted no 5xx afterwards.
#[test]
fn fuzzed_requests_keep_every_property() {
    let started = Instant::now();
    let world = World::new();
    let (cases, long) = cases();
    // A fixed seed by default (the same cases in every CI run); a random,
    // printed one in long runs; TOKENWARDEN_FUZZ_SEED replays one.
    let seed: u64 = std::env::var("TOKENWARDEN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| match long {
            true => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
            false => 0x7e57_f422,
        });
    eprintln!("fuzz_http: {cases} cases, TOKENWARDEN_FUZZ_SEED={seed}");
    let mut bytes = [0u8; 32];
    for (i, b) in seed.to_le_bytes().iter().cycle().take(32).enumerate() {
        bytes[i] = b.wrapping_add(i as u8);
    }
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 512,
        // Shrinking re-sends requests; some time out.
        max_shrink_time: 60_000,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let result = runner.run(&request(), |rq| world.case(&rq));
    let log = world.log.lock().unwrap();
    eprintln!(
        "fuzz_http: answers by status {:?}; {} closed and {} left open without an answer; {} sent through ureq; {:.1} s",
        log.by_status,
        log.closed,
        log.hung,
        log.via_ureq,
        started.elapsed().as_secs_f64()
    );
    drop(log);
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, rq)) => {
            panic!("{why}\nminimal failing request (seed {seed}): {rq:#?}")
        }
        Err(TestError::Abort(why)) => panic!("aborted: {why}"),
    }

    // Afterwards: still up, no 5xx counted, and no secret issued later
    // (rotated refresh tokens) in any earlier answer.
    let health = world.client.with_key(None).get("/healthz");
    assert_eq!(health.status, 200, "{}", health.body);
    let metrics = world.client.get("/metrics").expect(200).body;
    for line in metrics.lines().filter(|l| l.contains("status=\"5")) {
        assert!(line.contains("status=\"503\""), "a 5xx was counted: {line}");
    }
    let log = world.log.lock().unwrap();
    for (request, text) in &log.scrubbed {
        if let Err(e) = world.scan(text) {
            panic!("{request}: {e}\n{text}");
        }
    }
    let statuses = log.by_status.len();
    assert!(
        cases < 64 || (statuses >= 6 && log.by_status.keys().any(|s| *s < 300)),
        "the fuzzer reaches too little: {:?}",
        log.by_status
    );
}

/// Sends `request`, half-closes, and says whether the server closed the
/// connection (answered or not) within 5 s.
fn closed_within_5s(addr: SocketAddr, request: &str) -> bool {
    !matches!(send_raw(addr, request.as_bytes(), 5), Outcome::Hung)
}

/// Known limitation (ignored): a request declaring an unallocatable Content-Length is closed rather than left hanging.
#[test]
#[ignore = "known limitation (SECURITY.md): tiny_http 0.12 would allocate an undrained \
            declared Content-Length at once and abort, so src/http/server.rs abandons such a \
            request: neither answered nor closed, a thread and 2 fds held"]
fn an_unallocatable_content_length_is_closed_not_leaked() {
    let env = Env::new();
    let srv = InProcess::start(&env, &[KEY], 2);
    for len in ["99999999999999999", "18446744073709551615"] {
        let request = format!(
            "POST /v1/credentials HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Length: {len}\r\n\r\n{{}}"
        );
        assert!(
            closed_within_5s(srv.addr(), &request),
            "Content-Length: {len}"
        );
    }
}

/// Known limitation (ignored): a request line naming HTTP/2.0 or later is answered or closed rather than left hanging.
#[test]
#[ignore = "known limitation (SECURITY.md) of tiny_http 0.12, client.rs: a request line \
            naming HTTP/2.0 or later gets a 505 that is never flushed, and the connection is \
            neither closed nor freed"]
fn a_request_for_http_2_is_answered_or_closed() {
    let env = Env::new();
    let srv = InProcess::start(&env, &[KEY], 2);
    for version in ["HTTP/2.0", "HTTP/3.0"] {
        let request = format!("GET /healthz {version}\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(closed_within_5s(srv.addr(), &request), "{version}");
    }
}
