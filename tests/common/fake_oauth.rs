//! A real HTTP test double of an OAuth token server with rotating refresh
//! tokens, plus the Codex and Claude quota endpoints, on loopback.
//!
//! It behaves like the real servers the crate talks to (DESIGN.md §6):
//!
//! * every successful refresh rotates the refresh token (unless rotation is
//!   switched off, Google-style);
//! * presenting a refresh token that was already rotated away is *reuse*: the
//!   whole token family is revoked (its access tokens stop working, its
//!   current refresh token is refused too) and OpenAI's verbatim
//!   `refresh_token_reused` body is answered;
//! * faults ([`Fault`]) can be queued to replace the processing of the next
//!   requests, including the ambiguous "processed upstream, answer lost" cases.
//!
//! It records everything needed to check the invariants of DESIGN.md §3:
//! in-flight counters (global and per family) for single flight, and the
//! ordered log of every token request with the token it presented and what
//! happened to it ([`FakeOAuth::token_requests`],
//! [`FakeOAuth::assert_no_reuse_after_success`]).
//!
//! The server is a small hand-written HTTP/1.1 server on `std::net`, one
//! thread per connection (so concurrent requests really are concurrent, with
//! no pool limit). It is not built on tiny_http because tiny_http cannot
//! close a connection without answering: dropping an unanswered
//! `tiny_http::Request` always sends a 500, and the socket belongs to its
//! keep-alive loop — so [`Fault::Drop`] and [`Fault::ProcessThenDrop`] would
//! be impossible.
//!
//! Routes:
//!
//! | route | what |
//! |---|---|
//! | `POST /oauth/token` | OpenAI-shaped token endpoint (Codex, generic OAuth2) |
//! | `POST /v1/oauth/token` | the same families, Anthropic-shaped answers (no id_token; `account`, `organization`) |
//! | `GET /backend-api/wham/usage` | Codex quota |
//! | `GET /api/oauth/usage` | Claude quota |
//!
//! Anything else is 404, a known path with the wrong method 405, a body over
//! 1 MiB 413.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use parking_lot::{Condvar, Mutex};
use serde_json::{json, Value};

/// The Codex CLI's OAuth client id (DESIGN.md §6).
pub const CODEX_CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
/// The `anthropic-beta` value the Claude quota endpoint requires.
pub const ANTHROPIC_OAUTH_BETA: &str = "oauth-2025-04-20";
/// OpenAI's answer to a reused refresh token, verbatim (status 401).
pub const OPENAI_REUSE_BODY: &str =
    include_str!("../../fixtures/fake/openai_refresh_token_reused.json");
/// The answer (status 401) to any refresh token of a revoked family.
pub const OPENAI_INVALIDATED_BODY: &str =
    include_str!("../../fixtures/fake/openai_refresh_token_invalidated.json");
/// Body answered for an unknown refresh token (status 400).
pub const INVALID_GRANT_BODY: &str =
    r#"{"error":"invalid_grant","error_description":"Invalid refresh token"}"#;
/// The canned 200 body of the Codex quota endpoint (`reset_at` is rewritten
/// to now + `reset_after_seconds` when served).
pub const CODEX_USAGE_BODY: &str = include_str!("../../fixtures/fake/codex_usage.json");
/// The canned 200 body of the Claude quota endpoint.
pub const CLAUDE_USAGE_BODY: &str = include_str!("../../fixtures/fake/claude_usage.json");
/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY: usize = 1024 * 1024;
/// Plan type put in every issued token's claims.
pub const PLAN_TYPE: &str = "plus";

const MAX_HEAD: usize = 64 * 1024;
const MAX_DISCARD: usize = 16 * 1024 * 1024;

/// Current unix time in seconds.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Decodes the payload (second segment) of a JWT-shaped token, if it is one.
pub fn jwt_payload(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What the fake does with one request instead of (or around) its normal
/// processing. Queued with [`FakeOAuth::push_fault`] (token endpoint) or
/// [`FakeOAuth::push_usage_fault`] (quota endpoints), served FIFO in order of
/// arrival, one fault per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status and body (JSON content type) with an optional
    /// `Retry-After` header. Nothing is processed: the token is NOT consumed.
    Status {
        /// HTTP status.
        status: u16,
        /// Body, sent as is.
        body: String,
        /// Value of the `Retry-After` header, if any.
        retry_after: Option<String>,
    },
    /// 200 with an HTML (non-JSON) body, as a captive proxy or CDN would
    /// answer. Not consumed.
    Garbage,
    /// Sleep this long, then answer 504 without processing. Not consumed.
    /// Meant to outlast the client's timeout (a timeout before the request
    /// was processed). The sleep is not counted as in flight.
    HangBefore(Duration),
    /// Process normally (the refresh token IS rotated upstream), then sleep
    /// this long before answering: the ambiguous "timed out after send" case.
    /// The sleep is not counted as in flight.
    ProcessThenHang(Duration),
    /// Process normally (token consumed), then close the connection without
    /// answering.
    ProcessThenDrop,
    /// Close the connection without answering. Not consumed.
    Drop,
}

impl Fault {
    /// A canned answer with no `Retry-After`.
    pub fn status(status: u16, body: impl Into<String>) -> Fault {
        Fault::Status {
            status,
            body: body.into(),
            retry_after: None,
        }
    }

    /// A canned answer with a `Retry-After` header (e.g. 429 or 503).
    pub fn retry_after(status: u16, body: impl Into<String>, retry_after: &str) -> Fault {
        Fault::Status {
            status,
            body: body.into(),
            retry_after: Some(retry_after.to_string()),
        }
    }
}

/// How a token request's body was encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `application/json` (or a body that parsed as a JSON object).
    Json,
    /// `application/x-www-form-urlencoded` (or a body that parsed as a form).
    Form,
}

/// What happened to one token request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still being processed (latency sleep).
    Pending,
    /// 200; the presented refresh token was rotated away (consumed).
    Rotated,
    /// 200 with rotation switched off ([`FakeOAuth::set_rotation`]); the
    /// refresh token stays valid.
    Refreshed,
    /// A rotated-away token of the family was presented: the family is now
    /// revoked; 401 `refresh_token_reused`.
    Reused,
    /// A token of an already revoked family: 401 `refresh_token_invalidated`.
    Invalidated,
    /// Unknown refresh token: 400 `invalid_grant`.
    Unknown,
    /// Refused before looking at the token, with this error code
    /// (`unsupported_grant_type`, `invalid_request`, `invalid_client`).
    BadRequest(String),
    /// A fault was served instead of processing (see [`TokenRequest::fault`]).
    Faulted,
}

/// One request to the token endpoint, as recorded by the fake.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// 0-based position in arrival order.
    pub seq: usize,
    /// Body parameters (JSON values other than strings are stringified).
    pub params: BTreeMap<String, String>,
    /// Client credentials from an `Authorization: Basic` header.
    pub basic_auth: Option<(String, String)>,
    /// The refresh token presented, if any.
    pub refresh_token: Option<String>,
    /// The account of the family that token belongs to, if known.
    pub account: Option<String>,
    /// The fault served for this request, if one was queued.
    pub fault: Option<Fault>,
    /// What happened.
    pub outcome: Outcome,
    /// HTTP status answered (None while pending, or for a dropped
    /// connection).
    pub status: Option<u16>,
    /// Logical clock at arrival (shared with `done_tick`).
    pub arrival_tick: u64,
    /// Logical clock when the answer was decided (token processed).
    pub done_tick: Option<u64>,
}

impl TokenRequest {
    /// True when this request got a clean successful answer that rotated its
    /// refresh token (no fault around it): that token must never be sent
    /// again (DESIGN.md §3 invariant 2).
    pub fn succeeded_cleanly(&self) -> bool {
        self.outcome == Outcome::Rotated && self.fault.is_none()
    }
}

/// One request to a quota endpoint, as recorded by the fake.
#[derive(Clone, Debug)]
pub struct UsageRequest {
    /// The bearer token presented, if any.
    pub bearer: Option<String>,
    /// `ChatGPT-Account-Id` header, if any.
    pub account_header: Option<String>,
    /// `User-Agent` header, if any.
    pub user_agent: Option<String>,
    /// Status answered (None for a dropped connection).
    pub status: Option<u16>,
}

/// A snapshot of the fake's counters ([`FakeOAuth::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// All POSTs to a token path.
    pub token_requests: u64,
    /// 200 answers that issued tokens.
    pub successful_refreshes: u64,
    /// Rotated-away refresh tokens presented again (each revoked a family).
    pub reuse_detected: u64,
    /// Tokens of an already revoked family presented.
    pub invalidated: u64,
    /// Refresh tokens the fake never issued.
    pub unknown_tokens: u64,
    /// Requests refused before the token lookup (grant type, client, body).
    pub bad_requests: u64,
    /// Token requests answered by a queued fault.
    pub faults_served: u64,
    /// Token requests with a JSON body.
    pub json_bodies: u64,
    /// Token requests with a form body.
    pub form_bodies: u64,
    /// Token requests in flight right now.
    pub in_flight: u64,
    /// Most token requests ever in flight at once (all families).
    pub max_in_flight: u64,
    /// Most token requests ever in flight at once for a single family.
    pub max_in_flight_per_family: u64,
    /// All GETs to a quota path.
    pub usage_requests: u64,
    /// Quota requests answered 200.
    pub usage_ok: u64,
    /// Quota requests answered 401.
    pub usage_unauthorized: u64,
    /// Quota requests answered by a queued fault.
    pub usage_faults_served: u64,
}

/// The tokens a family starts with ([`FakeOAuth::new_family`]), as a client
/// would hold them after logging in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The account name given to `new_family`.
    pub account: String,
    /// `chatgpt_account_id` claim (= `account`), also Claude's `account.uuid`.
    pub account_id: String,
    /// `email` claim (`{account}@example.com`, or `account` if it has an `@`).
    pub email: String,
    /// `chatgpt_user_id` claim.
    pub user_id: String,
    /// `chatgpt_plan_type` claim ([`PLAN_TYPE`]).
    pub plan_type: String,
    /// The family's first refresh token.
    pub refresh_token: String,
    /// A valid access token (JWT-shaped unless opaque tokens are switched on).
    pub access_token: String,
    /// An id token with the Codex claims.
    pub id_token: String,
    /// Expiry of `access_token`, unix seconds.
    pub expires_at: i64,
}

impl Grant {
    /// This grant as a Codex CLI `auth.json`.
    pub fn codex_auth_json(&self) -> Value {
        json!({
            "OPENAI_API_KEY": null,
            "tokens": {
                "id_token": self.id_token,
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "account_id": self.account_id,
            },
            "last_refresh": "2025-01-01T00:00:00Z",
        })
    }

    /// This grant in tokenwarden's own import format, pointing at `token_url`
    /// (usually [`FakeOAuth::token_url`]).
    pub fn import_json(&self, id: &str, provider: &str, token_url: &str) -> Value {
        json!({
            "id": id,
            "provider": provider,
            "refresh_token": self.refresh_token,
            "access_token": self.access_token,
            "id_token": self.id_token,
            "expires_at": self.expires_at,
            "token_url": token_url,
        })
    }
}

/// The server-side state of a family ([`FakeOAuth::family_state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyState {
    /// Account name.
    pub account: String,
    /// The refresh token the server accepts now (refused too if revoked).
    pub current_refresh_token: String,
    /// The latest access token issued.
    pub current_access_token: String,
    /// Every refresh token issued to the family, in order (first = login).
    pub issued_refresh_tokens: Vec<String>,
    /// Whether the family is revoked.
    pub revoked: bool,
    /// Why: `refresh_token_reused` or `revoked_by_test`.
    pub revoked_reason: Option<String>,
    /// Successful refreshes that rotated the refresh token.
    pub rotations: u64,
    /// Successful refreshes (with or without rotation).
    pub refreshes: u64,
    /// Token requests in flight for this family right now.
    pub in_flight: u64,
    /// Most token requests ever in flight at once for this family.
    pub max_in_flight: u64,
}

// ---------------------------------------------------------------------------
// State

struct Family {
    account: String,
    account_id: String,
    email: String,
    user_id: String,
    plan_type: String,
    current: String,
    current_access: String,
    issued: Vec<String>,
    revoked: Option<String>,
    rotations: u64,
    refreshes: u64,
    in_flight: u64,
    max_in_flight: u64,
}

struct AccessInfo {
    family: usize,
    exp: i64,
    revoked: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    OpenAi,
    Anthropic,
}

struct State {
    families: Vec<Family>,
    by_account: HashMap<String, usize>,
    refresh_index: HashMap<String, usize>,
    access_index: HashMap<String, AccessInfo>,
    /// Every id token issued, in order.
    id_tokens: Vec<String>,
    token_faults: VecDeque<Fault>,
    usage_faults: VecDeque<Fault>,
    log: Vec<TokenRequest>,
    usage_log: Vec<UsageRequest>,
    stats: Stats,
    tick: u64,
    latency: Duration,
    expires_in: i64,
    send_expires_in: bool,
    rotate: bool,
    opaque_access: bool,
    required_client_id: Option<String>,
    codex_usage: (u16, Value),
    claude_usage: (u16, Value),
    rng: u64,
    refresh_issued: u64,
    opaque_issued: u64,
}

impl State {
    fn new() -> State {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed)
            ^ (std::process::id() as u64).rotate_left(32);
        State {
            families: Vec::new(),
            by_account: HashMap::new(),
            refresh_index: HashMap::new(),
            access_index: HashMap::new(),
            id_tokens: Vec::new(),
            token_faults: VecDeque::new(),
            usage_faults: VecDeque::new(),
            log: Vec::new(),
            usage_log: Vec::new(),
            stats: Stats::default(),
            tick: 0,
            latency: Duration::ZERO,
            expires_in: 3600,
            send_expires_in: true,
            rotate: true,
            opaque_access: false,
            required_client_id: None,
            codex_usage: (
                200,
                serde_json::from_str(CODEX_USAGE_BODY).expect("codex_usage.json"),
            ),
            claude_usage: (
                200,
                serde_json::from_str(CLAUDE_USAGE_BODY).expect("claude_usage.json"),
            ),
            rng: seed,
            refresh_issued: 0,
            opaque_issued: 0,
        }
    }

    /// splitmix64.
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn random_b64(&mut self, bytes: usize) -> String {
        let mut buf = Vec::with_capacity(bytes + 8);
        while buf.len() < bytes {
            buf.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        buf.truncate(bytes);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// A fresh opaque base64url token; every 5th one starts with '-'.
    fn opaque_token(&mut self, counter: u64) -> String {
        let mut t = self.random_b64(32);
        if matches!(counter % 5, 0) {
            t.replace_range(0..1, "-");
        }
        t
    }

    fn new_refresh_token(&mut self) -> String {
        loop {
            self.refresh_issued += 1;
            let t = self.opaque_token(self.refresh_issued);
            if !self.refresh_index.contains_key(&t) {
                return t;
            }
        }
    }

    fn jwt(&mut self, payload: &Value) -> String {
        let header = json!({"alg": "RS256", "kid": "fake-oauth", "typ": "JWT"});
        let sig = self.random_b64(48);
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            sig
        )
    }

    fn auth_claims(f: &Family) -> Value {
        json!({
            "chatgpt_account_id": f.account_id,
            "chatgpt_plan_type": f.plan_type,
            "chatgpt_user_id": f.user_id,
            "user_id": f.user_id,
        })
    }

    /// Issues an access token and an id token for family `fi`; records the
    /// access token. Returns (access, id, expires_at).
    fn issue_access(&mut self, fi: usize) -> (String, String, i64) {
        let now = now_unix();
        let exp = now + self.expires_in;
        let jti = self.random_b64(12);
        let access = if self.opaque_access {
            loop {
                self.opaque_issued += 1;
                let t = self.opaque_token(self.opaque_issued);
                if !self.access_index.contains_key(&t) {
                    break t;
                }
            }
        } else {
            let f = &self.families[fi];
            let payload = json!({
                "iss": "https://auth.openai.com",
                "aud": ["https://api.openai.com/v1"],
                "sub": f.user_id,
                "iat": now,
                "nbf": now,
                "exp": exp,
                "jti": jti,
                "scp": ["openid", "profile", "email", "offline_access"],
                "client_id": CODEX_CLIENT_ID,
                "https://api.openai.com/auth": State::auth_claims(f),
                "https://api.openai.com/profile": {"email": f.email, "email_verified": true},
            });
            self.jwt(&payload)
        };
        let f = &self.families[fi];
        let id_payload = json!({
            "iss": "https://auth.openai.com",
            "aud": [CODEX_CLIENT_ID],
            "sub": f.user_id,
            "iat": now,
            "exp": now + 3600,
            "email": f.email,
            "email_verified": true,
            "https://api.openai.com/auth": State::auth_claims(f),
        });
        let id = self.jwt(&id_payload);
        self.id_tokens.push(id.clone());
        self.access_index.insert(
            access.clone(),
            AccessInfo {
                family: fi,
                exp,
                revoked: false,
            },
        );
        self.families[fi].current_access = access.clone();
        (access, id, exp)
    }

    fn new_family(&mut self, account: &str, refresh_token: Option<&str>) -> Grant {
        let rt = match refresh_token {
            Some(t) => {
                assert!(
                    !self.refresh_index.contains_key(t),
                    "fake_oauth: refresh token {t:?} already issued"
                );
                t.to_string()
            }
            None => self.new_refresh_token(),
        };
        let email = if account.contains('@') {
            account.to_string()
        } else {
            format!("{account}@example.com")
        };
        let fi = self.families.len();
        self.families.push(Family {
            account: account.to_string(),
            account_id: account.to_string(),
            email,
            user_id: format!("user-{account}"),
            plan_type: PLAN_TYPE.to_string(),
            current: rt.clone(),
            current_access: String::new(),
            issued: vec![rt.clone()],
            revoked: None,
            rotations: 0,
            refreshes: 0,
            in_flight: 0,
            max_in_flight: 0,
        });
        self.by_account.insert(account.to_string(), fi);
        self.refresh_index.insert(rt.clone(), fi);
        let (access, id, exp) = self.issue_access(fi);
        let f = &self.families[fi];
        Grant {
            account: f.account.clone(),
            account_id: f.account_id.clone(),
            email: f.email.clone(),
            user_id: f.user_id.clone(),
            plan_type: f.plan_type.clone(),
            refresh_token: rt,
            access_token: access,
            id_token: id,
            expires_at: exp,
        }
    }

    fn family(&self, account: &str) -> &Family {
        let fi = *self
            .by_account
            .get(account)
            .unwrap_or_else(|| panic!("fake_oauth: no family for account {account:?}"));
        &self.families[fi]
    }

    fn access_valid(&self, token: &str) -> Option<usize> {
        let info = self.access_index.get(token)?;
        let ok =
            !info.revoked && info.exp > now_unix() && self.families[info.family].revoked.is_none();
        ok.then_some(info.family)
    }

    fn finish(&mut self, idx: usize, fam: Option<usize>, outcome: Outcome, status: Option<u16>) {
        self.stats.in_flight -= 1;
        if let Some(fi) = fam {
            self.families[fi].in_flight -= 1;
        }
        self.tick += 1;
        let r = &mut self.log[idx];
        r.outcome = outcome;
        r.status = status;
        r.done_tick = Some(self.tick);
    }

    /// The token endpoint's real work, atomic under the state lock.
    fn process(&mut self, req: &ParsedToken, flavor: Flavor) -> (Resp, Outcome) {
        let bad = |st: &mut State, status: u16, code: &str, desc: &str| {
            st.stats.bad_requests += 1;
            (
                Resp::json(status, json!({"error": code, "error_description": desc})),
                Outcome::BadRequest(code.to_string()),
            )
        };
        let params = match &req.params {
            Ok(p) => p,
            Err(e) => return bad(self, 400, "invalid_request", e),
        };
        if params.get("grant_type").map(String::as_str) != Some("refresh_token") {
            return bad(
                self,
                400,
                "unsupported_grant_type",
                "grant_type must be refresh_token",
            );
        }
        let client_id = params
            .get("client_id")
            .cloned()
            .or_else(|| req.basic_auth.as_ref().map(|(id, _)| id.clone()));
        match (&client_id, &self.required_client_id) {
            (None, _) => return bad(self, 401, "invalid_client", "Missing client_id"),
            (Some(got), Some(want)) if got != want => {
                return bad(self, 401, "invalid_client", "Unknown client_id")
            }
            _ => {}
        }
        let rt = match params.get("refresh_token") {
            Some(t) if !t.is_empty() => t.clone(),
            _ => return bad(self, 400, "invalid_request", "Missing refresh_token"),
        };
        let anthropic_refusal = || {
            Resp::json(
                400,
                json!({"error": "invalid_grant",
                       "error_description": "Refresh token not found or invalid"}),
            )
        };
        let Some(&fi) = self.refresh_index.get(&rt) else {
            self.stats.unknown_tokens += 1;
            let resp = match flavor {
                Flavor::OpenAi => Resp::raw_json(400, INVALID_GRANT_BODY),
                Flavor::Anthropic => anthropic_refusal(),
            };
            return (resp, Outcome::Unknown);
        };
        if self.families[fi].revoked.is_some() {
            self.stats.invalidated += 1;
            let resp = match flavor {
                Flavor::OpenAi => Resp::raw_json(401, OPENAI_INVALIDATED_BODY),
                Flavor::Anthropic => anthropic_refusal(),
            };
            return (resp, Outcome::Invalidated);
        }
        if self.families[fi].current != rt {
            self.stats.reuse_detected += 1;
            self.families[fi].revoked = Some("refresh_token_reused".to_string());
            let resp = match flavor {
                Flavor::OpenAi => Resp::raw_json(401, OPENAI_REUSE_BODY),
                Flavor::Anthropic => anthropic_refusal(),
            };
            return (resp, Outcome::Reused);
        }
        // The current token: refresh.
        let rotate = self.rotate;
        if rotate {
            let new_rt = self.new_refresh_token();
            self.refresh_index.insert(new_rt.clone(), fi);
            let f = &mut self.families[fi];
            f.current = new_rt.clone();
            f.issued.push(new_rt);
            f.rotations += 1;
        }
        self.families[fi].refreshes += 1;
        self.stats.successful_refreshes += 1;
        let (access, id, _exp) = self.issue_access(fi);
        let f = &self.families[fi];
        let mut body = serde_json::Map::new();
        body.insert("access_token".into(), json!(access));
        if rotate {
            body.insert("refresh_token".into(), json!(f.current));
        }
        if self.send_expires_in {
            body.insert("expires_in".into(), json!(self.expires_in));
        }
        body.insert("token_type".into(), json!("Bearer"));
        match flavor {
            Flavor::OpenAi => {
                body.insert("id_token".into(), json!(id));
                body.insert("scope".into(), json!("openid profile email offline_access"));
            }
            Flavor::Anthropic => {
                body.insert("scope".into(), json!("user:inference user:profile"));
                body.insert(
                    "account".into(),
                    json!({"uuid": f.account_id, "email_address": f.email}),
                );
                body.insert(
                    "organization".into(),
                    json!({"uuid": format!("org-{}", f.account_id), "name": "Fake Org"}),
                );
            }
        }
        let outcome = if rotate {
            Outcome::Rotated
        } else {
            Outcome::Refreshed
        };
        (Resp::json(200, Value::Object(body)), outcome)
    }
}

// ---------------------------------------------------------------------------
// HTTP plumbing

struct HttpRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn bearer(&self) -> Option<String> {
        let v = self.header("authorization")?;
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    }
}

struct Resp {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Resp {
    fn json(status: u16, v: Value) -> Resp {
        Resp::raw_json(status, &v.to_string())
    }

    fn raw_json(status: u16, body: &str) -> Resp {
        Resp {
            status,
            content_type: "application/json",
            body: body.trim().as_bytes().to_vec(),
            headers: Vec::new(),
        }
    }

    fn html(status: u16, body: &str) -> Resp {
        Resp {
            status,
            content_type: "text/html; charset=utf-8",
            body: body.as_bytes().to_vec(),
            headers: Vec::new(),
        }
    }

    fn error(status: u16, code: &str) -> Resp {
        Resp::json(status, json!({"error": {"code": code, "message": code}}))
    }
}

enum Action {
    Respond(Resp),
    Drop,
}

enum ReadError {
    Closed,
    Bad,
    TooLarge,
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> ReadError {
        ReadError::Closed
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn read_line(r: &mut impl BufRead, budget: &mut usize) -> Result<Option<String>, ReadError> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(ReadError::Bad);
    }
    *budget -= n;
    if !buf.ends_with(b"\n") {
        return Err(ReadError::Closed);
    }
    buf.pop();
    if buf.ends_with(b"\r") {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Reads one request. `Ok(None)`: the client closed the connection cleanly.
fn read_request(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
) -> Result<Option<HttpRequest>, ReadError> {
    let mut budget = MAX_HEAD;
    let line = loop {
        match read_line(r, &mut budget)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad);
    };
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let l = read_line(r, &mut budget)?.ok_or(ReadError::Closed)?;
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or(ReadError::Bad)?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = HttpRequest {
        method: method.to_string(),
        path,
        headers,
        body: Vec::new(),
        close: false,
    };
    let conn = req.header("connection").map(str::to_ascii_lowercase);
    req.close = match version {
        "HTTP/1.0" => !conn.as_deref().is_some_and(|c| c.contains("keep-alive")),
        _ => conn.as_deref().is_some_and(|c| c.contains("close")),
    };
    let expect_continue = req
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        if expect_continue {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        loop {
            let size_line = read_line(r, &mut budget)?.ok_or(ReadError::Closed)?;
            let size_hex = size_line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| ReadError::Bad)?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !read_line(r, &mut budget)?
                    .ok_or(ReadError::Closed)?
                    .is_empty()
                {}
                break;
            }
            if req.body.len() + size > MAX_BODY {
                return Err(ReadError::TooLarge);
            }
            let start = req.body.len();
            req.body.resize(start + size, 0);
            r.read_exact(&mut req.body[start..])?;
            let mut crlf_budget = 2;
            read_line(r, &mut crlf_budget)?;
        }
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.trim().parse().map_err(|_| ReadError::Bad)?;
        if len > MAX_BODY {
            if expect_continue || len > MAX_DISCARD {
                return Err(ReadError::TooLarge);
            }
            let copied = io::copy(&mut r.by_ref().take(len as u64), &mut io::sink())?;
            if copied as usize != len {
                return Err(ReadError::Closed);
            }
            return Err(ReadError::TooLarge);
        }
        if expect_continue && len > 0 {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        req.body.resize(len, 0);
        r.read_exact(&mut req.body)?;
    }
    Ok(Some(req))
}

fn write_response(w: &mut TcpStream, resp: &Resp, close: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len(),
        if close { "close" } else { "keep-alive" }
    )
    .into_bytes();
    for (k, v) in &resp.headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&resp.body);
    w.write_all(&out)?;
    w.flush()
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_form(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn parse_json_object(body: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let Value::Object(map) = v else {
        return Err("JSON body is not an object".to_string());
    };
    Ok(map
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect())
}

struct ParsedToken {
    encoding: Option<Encoding>,
    params: Result<BTreeMap<String, String>, String>,
    basic_auth: Option<(String, String)>,
}

fn parse_token_request(req: &HttpRequest) -> ParsedToken {
    let ct = req.header("content-type").map(str::to_ascii_lowercase);
    let text = String::from_utf8_lossy(&req.body);
    let (encoding, params) = match ct.as_deref() {
        Some(c) if c.contains("json") => (Some(Encoding::Json), parse_json_object(&req.body)),
        Some(c) if c.contains("x-www-form-urlencoded") => {
            (Some(Encoding::Form), Ok(parse_form(&text)))
        }
        _ if text.trim_start().starts_with('{') => match parse_json_object(&req.body) {
            Ok(p) => (Some(Encoding::Json), Ok(p)),
            Err(e) => (None, Err(e)),
        },
        _ => (Some(Encoding::Form), Ok(parse_form(&text))),
    };
    let basic_auth = req.header("authorization").and_then(|v| {
        let (scheme, cred) = v.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = STANDARD.decode(cred.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        Some((percent_decode(id), percent_decode(secret)))
    });
    ParsedToken {
        encoding,
        params,
        basic_auth,
    }
}

// ---------------------------------------------------------------------------
// Server

struct Shared {
    state: Mutex<State>,
    stop: Mutex<bool>,
    stop_cv: Condvar,
    stopped: AtomicBool,
    conns: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_conn: AtomicU64,
}

impl Shared {
    /// Sleeps `d`, or less if the server is being stopped.
    fn sleep(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        let deadline = Instant::now() + d;
        let mut stopped = self.stop.lock();
        while !*stopped {
            if self.stop_cv.wait_until(&mut stopped, deadline).timed_out() {
                break;
            }
        }
    }

    fn serve_conn(&self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(read_half);
        let mut writer = stream;
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                break;
            }
            let req = match read_request(&mut reader, &mut writer) {
                Ok(Some(req)) => req,
                Ok(None) | Err(ReadError::Closed) => break,
                Err(ReadError::Bad) => {
                    let _ = write_response(&mut writer, &Resp::error(400, "bad_request"), true);
                    break;
                }
                Err(ReadError::TooLarge) => {
                    // Answer and close (a drained body could keep the
                    // connection, but closing is simpler for every client).
                    let _ =
                        write_response(&mut writer, &Resp::error(413, "payload_too_large"), true);
                    break;
                }
            };
            match self.route(&req) {
                Action::Respond(resp) => {
                    if write_response(&mut writer, &resp, req.close).is_err() || req.close {
                        break;
                    }
                }
                Action::Drop => break,
            }
        }
        let _ = writer.shutdown(Shutdown::Both);
    }

    fn route(&self, req: &HttpRequest) -> Action {
        let method = req.method.as_str();
        match req.path.as_str() {
            "/oauth/token" | "/v1/oauth/token" => {
                if method != "POST" {
                    return Action::Respond(Resp::error(405, "method_not_allowed"));
                }
                let flavor = if req.path.starts_with("/v1/") {
                    Flavor::Anthropic
                } else {
                    Flavor::OpenAi
                };
                self.token_endpoint(req, flavor)
            }
            "/backend-api/wham/usage" | "/api/oauth/usage" => {
                if method != "GET" {
                    return Action::Respond(Resp::error(405, "method_not_allowed"));
                }
                self.usage_endpoint(req)
            }
            _ => Action::Respond(Resp::error(404, "not_found")),
        }
    }

    fn token_endpoint(&self, req: &HttpRequest, flavor: Flavor) -> Action {
        let parsed = parse_token_request(req);
        let refresh_token = parsed
            .params
            .as_ref()
            .ok()
            .and_then(|p| p.get("refresh_token").cloned());
        // Arrival: count in flight, take a fault, log.
        let (idx, fam, fault, latency) = {
            let mut st = self.state.lock();
            let st = &mut *st;
            st.tick += 1;
            let fam = refresh_token
                .as_ref()
                .and_then(|t| st.refresh_index.get(t).copied());
            st.stats.token_requests += 1;
            match parsed.encoding {
                Some(Encoding::Json) => st.stats.json_bodies += 1,
                Some(Encoding::Form) => st.stats.form_bodies += 1,
                None => {}
            }
            st.stats.in_flight += 1;
            st.stats.max_in_flight = st.stats.max_in_flight.max(st.stats.in_flight);
            if let Some(fi) = fam {
                let f = &mut st.families[fi];
                f.in_flight += 1;
                f.max_in_flight = f.max_in_flight.max(f.in_flight);
                st.stats.max_in_flight_per_family =
                    st.stats.max_in_flight_per_family.max(f.in_flight);
            }
            let fault = st.token_faults.pop_front();
            if fault.is_some() {
                st.stats.faults_served += 1;
            }
            let seq = st.log.len();
            st.log.push(TokenRequest {
                seq,
                params: parsed.params.clone().unwrap_or_default(),
                basic_auth: parsed.basic_auth.clone(),
                refresh_token: refresh_token.clone(),
                account: fam.map(|fi| st.families[fi].account.clone()),
                fault: fault.clone(),
                outcome: Outcome::Pending,
                status: None,
                arrival_tick: st.tick,
                done_tick: None,
            });
            (seq, fam, fault, st.latency)
        };
        self.sleep(latency);
        let process = || {
            let mut st = self.state.lock();
            let (resp, outcome) = st.process(&parsed, flavor);
            st.finish(idx, fam, outcome, Some(resp.status));
            resp
        };
        let unprocessed = |status: Option<u16>| {
            self.state.lock().finish(idx, fam, Outcome::Faulted, status);
        };
        match fault {
            None => Action::Respond(process()),
            Some(Fault::Status {
                status,
                body,
                retry_after,
            }) => {
                unprocessed(Some(status));
                let mut resp = Resp::raw_json(status, &body);
                if let Some(ra) = retry_after {
                    resp.headers.push(("Retry-After".to_string(), ra));
                }
                Action::Respond(resp)
            }
            Some(Fault::Garbage) => {
                unprocessed(Some(200));
                Action::Respond(garbage())
            }
            Some(Fault::HangBefore(d)) => {
                unprocessed(Some(504));
                self.sleep(d);
                Action::Respond(Resp::html(
                    504,
                    "<html><body>504 Gateway Time-out</body></html>",
                ))
            }
            Some(Fault::ProcessThenHang(d)) => {
                let resp = process();
                self.sleep(d);
                Action::Respond(resp)
            }
            Some(Fault::ProcessThenDrop) => {
                let _ = process();
                self.state.lock().log[idx].status = None;
                Action::Drop
            }
            Some(Fault::Drop) => {
                unprocessed(None);
                Action::Drop
            }
        }
    }

    fn usage_endpoint(&self, req: &HttpRequest) -> Action {
        let codex = req.path == "/backend-api/wham/usage";
        let bearer = req.bearer();
        let (idx, fault) = {
            let mut st = self.state.lock();
            st.stats.usage_requests += 1;
            let fault = st.usage_faults.pop_front();
            if fault.is_some() {
                st.stats.usage_faults_served += 1;
            }
            st.usage_log.push(UsageRequest {
                bearer: bearer.clone(),
                account_header: req.header("chatgpt-account-id").map(str::to_string),
                user_agent: req.header("user-agent").map(str::to_string),
                status: None,
            });
            (st.usage_log.len() - 1, fault)
        };
        let answer = || {
            let mut st = self.state.lock();
            let resp = usage_answer(&st, req, codex, bearer.as_deref());
            match resp.status {
                200 => st.stats.usage_ok += 1,
                401 => st.stats.usage_unauthorized += 1,
                _ => {}
            }
            resp
        };
        let action = match fault {
            None => Action::Respond(answer()),
            Some(Fault::Status {
                status,
                body,
                retry_after,
            }) => {
                let mut resp = Resp::raw_json(status, &body);
                if let Some(ra) = retry_after {
                    resp.headers.push(("Retry-After".to_string(), ra));
                }
                Action::Respond(resp)
            }
            Some(Fault::Garbage) => Action::Respond(garbage()),
            Some(Fault::HangBefore(d)) => {
                self.sleep(d);
                Action::Respond(Resp::html(
                    504,
                    "<html><body>504 Gateway Time-out</body></html>",
                ))
            }
            Some(Fault::ProcessThenHang(d)) => {
                let resp = answer();
                self.sleep(d);
                Action::Respond(resp)
            }
            Some(Fault::ProcessThenDrop) => {
                let _ = answer();
                Action::Drop
            }
            Some(Fault::Drop) => Action::Drop,
        };
        let status = match &action {
            Action::Respond(r) => Some(r.status),
            Action::Drop => None,
        };
        self.state.lock().usage_log[idx].status = status;
        action
    }
}

fn garbage() -> Resp {
    Resp::html(
        200,
        "<html><head><title>Just a moment...</title></head><body>upstream connect error</body></html>",
    )
}

fn usage_answer(st: &State, req: &HttpRequest, codex: bool, bearer: Option<&str>) -> Resp {
    if codex {
        let Some(fi) = bearer.and_then(|t| st.access_valid(t)) else {
            return Resp::json(
                401,
                json!({"detail": {"code": "token_invalid",
                                  "message": "Could not validate the access token"}}),
            );
        };
        let Some(acct) = req.header("chatgpt-account-id") else {
            return Resp::json(400, json!({"detail": "Missing ChatGPT-Account-Id header"}));
        };
        if acct != st.families[fi].account_id {
            return Resp::json(
                403,
                json!({"detail": "ChatGPT-Account-Id does not match the token"}),
            );
        }
        let (status, mut body) = st.codex_usage.clone();
        let now = now_unix();
        for w in ["primary_window", "secondary_window"] {
            if let Some(win) = body
                .get_mut("rate_limit")
                .and_then(|r| r.get_mut(w))
                .and_then(Value::as_object_mut)
            {
                if let Some(after) = win.get("reset_after_seconds").and_then(Value::as_i64) {
                    win.insert("reset_at".into(), json!(now + after));
                }
            }
        }
        Resp::json(status, body)
    } else {
        let beta_ok = req.header("anthropic-beta").is_some_and(|v| {
            v.split(',')
                .any(|b| b.trim().eq_ignore_ascii_case(ANTHROPIC_OAUTH_BETA))
        });
        if !beta_ok {
            return Resp::json(
                401,
                json!({"type": "error", "error": {"type": "authentication_error",
                       "message": "OAuth authentication is currently not supported."}}),
            );
        }
        if bearer.and_then(|t| st.access_valid(t)).is_none() {
            return Resp::json(
                401,
                json!({"type": "error", "error": {"type": "authentication_error",
                       "message": "Invalid bearer token"}}),
            );
        }
        let (status, body) = st.claude_usage.clone();
        Resp::json(status, body)
    }
}

/// A fake OAuth token server (plus quota endpoints) on `127.0.0.1`.
/// Dropping it stops the server: the listener closes, open connections are
/// shut down and sleeping requests wake up.
pub struct FakeOAuth {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl FakeOAuth {
    /// Binds `127.0.0.1:0` and starts serving (one thread per connection).
    pub fn start() -> FakeOAuth {
        let listener = TcpListener::bind("127.0.0.1:0").expect("fake_oauth: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake_oauth: local_addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            stopped: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let accept = thread::Builder::new()
            .name("fake-oauth-accept".into())
            .spawn(move || accept_loop(sh, listener))
            .expect("fake_oauth: spawn accept thread");
        FakeOAuth {
            shared,
            addr,
            accept: Some(accept),
        }
    }

    /// The socket address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `{url}/oauth/token` (OpenAI-shaped answers).
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.url())
    }

    /// `{url}/v1/oauth/token` (Anthropic-shaped answers, same families).
    pub fn claude_token_url(&self) -> String {
        format!("{}/v1/oauth/token", self.url())
    }

    /// `{url}/backend-api/wham/usage`.
    pub fn codex_usage_url(&self) -> String {
        format!("{}/backend-api/wham/usage", self.url())
    }

    /// `{url}/api/oauth/usage`.
    pub fn claude_usage_url(&self) -> String {
        format!("{}/api/oauth/usage", self.url())
    }

    /// The endpoint overrides of DESIGN.md §5 pointing every provider at
    /// this fake, for `Command::envs` (Google's token URL is the
    /// OpenAI-shaped `/oauth/token`).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TOKENWARDEN_CODEX_TOKEN_URL", self.token_url()),
            ("TOKENWARDEN_CODEX_USAGE_URL", self.codex_usage_url()),
            ("TOKENWARDEN_CLAUDE_TOKEN_URL", self.claude_token_url()),
            ("TOKENWARDEN_CLAUDE_USAGE_URL", self.claude_usage_url()),
            ("TOKENWARDEN_GOOGLE_TOKEN_URL", self.token_url()),
        ]
    }

    /// Creates a token family for `account` (a login) and returns its first
    /// refresh token plus a valid access token and id token. A second call
    /// for the same account is a new login: a new family, which
    /// `family_state(account)` then reports; the old family's tokens keep
    /// their own state.
    pub fn new_family(&self, account: &str) -> Grant {
        self.shared.state.lock().new_family(account, None)
    }

    /// Like [`new_family`](Self::new_family) with a chosen first refresh
    /// token (e.g. one starting with `-`). Panics if the fake already issued
    /// it.
    pub fn new_family_with_refresh_token(&self, account: &str, refresh_token: &str) -> Grant {
        self.shared
            .state
            .lock()
            .new_family(account, Some(refresh_token))
    }

    /// Delay before processing/answering each token request (counted as in
    /// flight). Default zero.
    pub fn set_latency(&self, d: Duration) {
        self.shared.state.lock().latency = d;
    }

    /// Lifetime of issued access tokens in seconds (default 3600): the JWT
    /// `exp` is now + `secs` and the answer's `expires_in` is `secs` (zero or
    /// negative gives tokens that are already expired).
    pub fn set_expires_in(&self, secs: i64) {
        self.shared.state.lock().expires_in = secs;
    }

    /// Whether token answers carry `expires_in` (default true). Without it a
    /// client must read the access token's JWT `exp`.
    pub fn set_send_expires_in(&self, send: bool) {
        self.shared.state.lock().send_expires_in = send;
    }

    /// Whether refreshes rotate the refresh token (default true). Off, the
    /// answer has no `refresh_token` and the presented one stays current
    /// (Google-style); outcomes are then [`Outcome::Refreshed`].
    pub fn set_rotation(&self, rotate: bool) {
        self.shared.state.lock().rotate = rotate;
    }

    /// What the Codex usage endpoint answers from now on (`reset_after_seconds`
    /// of each window is turned into `reset_at` at answer time).
    pub fn set_codex_usage(&self, status: u16, body: Value) {
        self.shared.state.lock().codex_usage = (status, body);
    }

    /// What the Claude usage endpoint answers from now on (as is).
    pub fn set_claude_usage(&self, status: u16, body: Value) {
        self.shared.state.lock().claude_usage = (status, body);
    }

    /// Issue opaque base64url access tokens instead of JWTs (default false);
    /// every 5th opaque access token starts with `-`.
    pub fn set_opaque_access_tokens(&self, opaque: bool) {
        self.shared.state.lock().opaque_access = opaque;
    }

    /// Require this exact client id (body `client_id` or Basic auth user);
    /// `None` (default) accepts any, but one must be present (else 401
    /// `invalid_client`).
    pub fn set_required_client_id(&self, client_id: Option<&str>) {
        self.shared.state.lock().required_client_id = client_id.map(str::to_string);
    }

    /// Queues a fault for the next token request (FIFO, one per request).
    pub fn push_fault(&self, f: Fault) {
        self.shared.state.lock().token_faults.push_back(f);
    }

    /// Queues a fault for the next quota request (FIFO, one per request).
    /// `ProcessThenHang` answers normally after the sleep; `ProcessThenDrop`
    /// drops after checking the token.
    pub fn push_usage_fault(&self, f: Fault) {
        self.shared.state.lock().usage_faults.push_back(f);
    }

    /// Token faults still queued.
    pub fn pending_faults(&self) -> usize {
        self.shared.state.lock().token_faults.len()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.state.lock().stats.clone()
    }

    /// Resets all counters except `in_flight` (the logs are kept).
    pub fn reset_stats(&self) {
        let mut st = self.shared.state.lock();
        let in_flight = st.stats.in_flight;
        st.stats = Stats {
            in_flight,
            ..Stats::default()
        };
    }

    /// The state of `account`'s latest family. Panics if there is none.
    pub fn family_state(&self, account: &str) -> FamilyState {
        let st = self.shared.state.lock();
        let f = st.family(account);
        FamilyState {
            account: f.account.clone(),
            current_refresh_token: f.current.clone(),
            current_access_token: f.current_access.clone(),
            issued_refresh_tokens: f.issued.clone(),
            revoked: f.revoked.is_some(),
            revoked_reason: f.revoked.clone(),
            rotations: f.rotations,
            refreshes: f.refreshes,
            in_flight: f.in_flight,
            max_in_flight: f.max_in_flight,
        }
    }

    /// Every refresh token issued to `account`'s latest family, in order.
    pub fn issued_refresh_tokens(&self, account: &str) -> Vec<String> {
        self.shared.state.lock().family(account).issued.clone()
    }

    /// Every refresh token of `account`'s families presented to the token
    /// endpoint, in arrival order (faulted requests included).
    pub fn presented_refresh_tokens(&self, account: &str) -> Vec<String> {
        self.shared
            .state
            .lock()
            .log
            .iter()
            .filter(|r| r.account.as_deref() == Some(account))
            .filter_map(|r| r.refresh_token.clone())
            .collect()
    }

    /// The log of every token request, in arrival order.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.shared.state.lock().log.clone()
    }

    /// Every refresh, access and id token this fake ever issued (or was
    /// given as a family's first refresh token), of every family: what no
    /// page, log or answer of tokenwarden's but a token route may show.
    pub fn every_token_issued(&self) -> Vec<String> {
        let st = self.shared.state.lock();
        let refresh = st.refresh_index.keys().cloned();
        let access = st.access_index.keys().cloned();
        refresh
            .chain(access)
            .chain(st.id_tokens.iter().cloned())
            .collect()
    }

    /// The log of every quota request, in arrival order.
    pub fn usage_requests(&self) -> Vec<UsageRequest> {
        self.shared.state.lock().usage_log.clone()
    }

    /// True if `token` is an access token this fake issued, not expired,
    /// not revoked, and its family is not revoked.
    pub fn is_access_token_valid(&self, token: &str) -> bool {
        self.shared.state.lock().access_valid(token).is_some()
    }

    /// Revokes `account`'s latest family as an operator would (reason
    /// `revoked_by_test`): its refresh tokens get `refresh_token_invalidated`,
    /// its access tokens 401.
    pub fn revoke_family(&self, account: &str) {
        let mut st = self.shared.state.lock();
        let fi = *st
            .by_account
            .get(account)
            .unwrap_or_else(|| panic!("fake_oauth: no family for account {account:?}"));
        st.families[fi].revoked = Some("revoked_by_test".to_string());
    }

    /// Makes one access token invalid (quota calls with it get 401) without
    /// touching its family.
    pub fn revoke_access_token(&self, token: &str) {
        if let Some(info) = self.shared.state.lock().access_index.get_mut(token) {
            info.revoked = true;
        }
    }

    /// Panics if a refresh token that got a clean successful answer (see
    /// [`TokenRequest::succeeded_cleanly`]) was presented again by a request
    /// that arrived after that answer was decided (DESIGN.md §3 invariant 2).
    pub fn assert_no_reuse_after_success(&self) {
        let log = self.token_requests();
        for ok in log.iter().filter(|r| r.succeeded_cleanly()) {
            let done = ok.done_tick.unwrap_or(u64::MAX);
            if let Some(again) = log
                .iter()
                .find(|r| r.arrival_tick > done && r.refresh_token == ok.refresh_token)
            {
                panic!(
                    "refresh token of {:?} answered successfully by request #{} was sent again \
                     by request #{} (outcome {:?})",
                    ok.account, ok.seq, again.seq, again.outcome
                );
            }
        }
    }

    /// Panics if two token requests for one family were ever in flight at
    /// once (DESIGN.md §3 invariant 1).
    pub fn assert_single_flight(&self) {
        let s = self.stats();
        assert!(
            s.max_in_flight_per_family <= 1,
            "single flight violated: {} token requests for one family in flight at once",
            s.max_in_flight_per_family
        );
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    for conn in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else {
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            shared.conns.lock().insert(id, clone);
        }
        let sh = shared.clone();
        let spawned = thread::Builder::new()
            .name("fake-oauth-conn".into())
            .spawn(move || {
                sh.serve_conn(stream);
                sh.conns.lock().remove(&id);
            });
        let mut threads = shared.threads.lock();
        threads.retain(|h| !h.is_finished());
        match spawned {
            Ok(h) => threads.push(h),
            Err(_) => {
                shared.conns.lock().remove(&id);
            }
        }
    }
}

impl Drop for FakeOAuth {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        {
            let mut stop = self.shared.stop.lock();
            *stop = true;
            self.shared.stop_cv.notify_all();
        }
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for (_, s) in self.shared.conns.lock().drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock());
        for h in threads {
            let _ = h.join();
        }
    }
}
