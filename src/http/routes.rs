//! The route table, the checks every request goes through (auth, size,
//! id, route, method, query, body — in that order), and the handlers: thin
//! calls into [`Warden`] whose answers are [`crate::view`] shapes.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;
use tiny_http::Request;

use crate::admin::PageQuery;
use crate::clock;
use crate::config::parse_secs;
use crate::credential::validate_id;
use crate::facade;
use crate::import::{self, ImportOptions};
use crate::provider::{percent_unescape, ProviderKind};
use crate::state::State;
use crate::view::{EventList, EventView, Summary, SummaryList, SummaryWriter, TokenResponse};
use crate::warden::{Grant, Warden};

use super::auth::{ApiKeys, Scope};
use super::origin::{self, HostPolicy};
use super::quota::{quota_get, quota_post};
use super::response::{ApiError, Reply, MAX_BODY};

/// The longest `?wait=` accepted (seconds).
pub const MAX_WAIT_S: u64 = 300;

/// What the handlers need: the warden and the server's settings.
pub(crate) struct App {
    pub warden: std::sync::Arc<Warden>,
    pub keys: ApiKeys,
    pub wait: Duration,
    /// Which `Host` and `Origin` headers are answered.
    pub hosts: HostPolicy,
    /// Whether the server speaks HTTPS (for the sign-in redirect URI).
    pub tls: bool,
    /// Behind the TLS front: the client of each relayed connection.
    pub relayed: Option<std::sync::Arc<super::tls::Relayed>>,
    /// Sign-ins started over the API, waiting for their browsers.
    pub logins: super::login::PendingLogins,
    /// The console's sessions.
    pub console: super::ui::Console,
}

/// A request that reached the TLS front's internal port from something
/// other than a relay.
#[derive(Debug)]
pub(crate) struct NotRelayed;

impl App {
    /// The client's address: the TCP peer, or behind the TLS front the
    /// client its relay carries (`Err` for a connection no relay made).
    pub(crate) fn client(&self, rq: &Request) -> Result<Option<std::net::IpAddr>, NotRelayed> {
        let peer = rq.remote_addr().copied();
        match &self.relayed {
            None => Ok(peer.map(|a| a.ip())),
            Some(relayed) => peer
                .and_then(|hop| relayed.client_of(hop))
                .map(|a| Some(a.ip()))
                .ok_or(NotRelayed),
        }
    }
}

/// The outcome of one request, ready to count, log and send.
pub(crate) struct Handled {
    /// The route pattern (`/v1/credentials/{id}/token`), or `unknown`.
    pub route: &'static str,
    /// The answer.
    pub reply: Reply,
    /// How much of the body was read.
    pub body: BodyState,
}

/// How much of a request's body was read before the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyState {
    /// All of it (or there was none).
    Done,
    /// None of it.
    Unread,
    /// Up to the limit; more remains.
    Truncated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Healthz,
    Metrics,
    List,
    Import,
    Show,
    Delete,
    Token,
    Reject,
    Refresh,
    Events,
    QuotaGet,
    QuotaPost,
    /// `GET /v1/pools/{name}/token`.
    PoolToken,
    /// `POST /v1/pools/{name}/reject`.
    PoolReject,
    /// `POST /v1/credentials/{id}/cooldown`.
    CooldownSet,
    /// `DELETE /v1/credentials/{id}/cooldown`.
    CooldownClear,
    /// `GET /v1/notifications`.
    Notifications,
    /// The Codex token-endpoint facade (authenticated by its handle).
    Facade,
    /// Start signing a credential in again.
    Login,
    /// Where the browser comes back (authenticated by the state).
    Callback,
}

impl Action {
    /// Whether a read-only key may do this (`force` is a forced refresh).
    fn allowed_for_read(self, force: bool) -> bool {
        // A read-only key may set a cooldown (a caller that got a 429) but
        // not lift one.
        !(matches!(
            self,
            Action::Import | Action::Delete | Action::Login | Action::CooldownClear
        ) || (self == Action::Refresh && force))
    }
}

/// One method of a route: what it does and which query parameters it takes.
struct Endpoint {
    method: &'static str,
    action: Action,
    params: &'static [&'static str],
}

/// A path pattern (`{id}` matches one segment) and its methods.
struct Route {
    pattern: &'static str,
    endpoints: &'static [Endpoint],
}

const fn ep(method: &'static str, action: Action, params: &'static [&'static str]) -> Endpoint {
    Endpoint {
        method,
        action,
        params,
    }
}

/// DESIGN.md §5, the one route table.
const ROUTES: &[Route] = &[
    Route {
        pattern: "/healthz",
        endpoints: &[ep("GET", Action::Healthz, &[])],
    },
    Route {
        pattern: "/metrics",
        endpoints: &[ep("GET", Action::Metrics, &[])],
    },
    Route {
        pattern: "/v1/credentials",
        endpoints: &[
            ep(
                "GET",
                Action::List,
                &["limit", "after", "state", "provider", "pool"],
            ),
            ep("POST", Action::Import, &["id", "provider", "replace"]),
        ],
    },
    Route {
        pattern: "/v1/credentials/{id}",
        endpoints: &[
            ep("GET", Action::Show, &[]),
            ep("DELETE", Action::Delete, &[]),
        ],
    },
    Route {
        pattern: "/v1/credentials/{id}/token",
        endpoints: &[ep("GET", Action::Token, &["min_ttl", "wait"])],
    },
    Route {
        pattern: "/v1/credentials/{id}/reject",
        endpoints: &[ep("POST", Action::Reject, &["wait"])],
    },
    Route {
        pattern: "/v1/credentials/{id}/refresh",
        endpoints: &[ep("POST", Action::Refresh, &["force", "wait"])],
    },
    Route {
        pattern: "/v1/credentials/{id}/events",
        endpoints: &[ep("GET", Action::Events, &["limit", "after"])],
    },
    Route {
        pattern: "/v1/credentials/{id}/cooldown",
        endpoints: &[
            ep("POST", Action::CooldownSet, &[]),
            ep("DELETE", Action::CooldownClear, &[]),
        ],
    },
    Route {
        pattern: "/v1/pools/{id}/token",
        endpoints: &[ep("GET", Action::PoolToken, &["min_ttl", "wait", "sticky"])],
    },
    Route {
        pattern: "/v1/pools/{id}/reject",
        endpoints: &[ep("POST", Action::PoolReject, &["wait", "sticky"])],
    },
    Route {
        pattern: "/v1/notifications",
        endpoints: &[ep("GET", Action::Notifications, &["pending", "limit"])],
    },
    Route {
        pattern: "/oauth/token",
        endpoints: &[ep("POST", Action::Facade, &[])],
    },
    Route {
        pattern: "/v1/credentials/{id}/login",
        endpoints: &[ep("POST", Action::Login, &[])],
    },
    Route {
        pattern: "/oauth/callback",
        endpoints: &[ep(
            "GET",
            Action::Callback,
            &[
                "code",
                "state",
                "error",
                "error_description",
                "error_uri",
                "iss",
                "session_state",
                "scope",
            ],
        )],
    },
    Route {
        pattern: "/v1/credentials/{id}/quota",
        endpoints: &[
            ep("GET", Action::QuotaGet, &[]),
            ep("POST", Action::QuotaPost, &[]),
        ],
    },
];

/// The prefix under which the first segment is a credential id.
const ID_PREFIX: &str = "/v1/credentials/";

/// Matches `path` against `pattern`: `Some(id)` if it fits (`id` is the
/// `{id}` segment, if the pattern has one).
fn captures<'p>(pattern: &str, path: &'p str) -> Option<Option<&'p str>> {
    let mut id = None;
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(segment)) => id = Some(segment),
            (Some(w), Some(segment)) if w == segment => {}
            _ => return None,
        }
    }
}

/// The route a path belongs to, whatever the method.
fn route_of(path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| captures(r.pattern, path).is_some())
}

/// Shortens client-supplied text quoted in an error message.
fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn header<'r>(rq: &'r Request, name: &'static str) -> Option<&'r str> {
    rq.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// Answers one request. Never panics on any input (the server catches a
/// panic anyway and answers 500).
pub(crate) fn handle(app: &App, rq: &mut Request) -> Handled {
    if app.client(rq).is_err() {
        // The TLS front's internal port, reached by something that is not
        // one of its relays: no plain-HTTP way around TLS.
        return Handled {
            route: "unknown",
            reply: ApiError::new(
                421,
                "misdirected_request",
                "this port is internal to the TLS front; connect over https",
            )
            .into_reply(),
            body: BodyState::Unread,
        };
    }
    let url = rq.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let mut body = BodyState::Unread;
    if super::ui::owns(path) {
        // The console: after the same Host/Origin checks as the API, its
        // own sign-in (sessions, not Authorization headers).
        let (route, reply) = match check_origin(app, rq) {
            Err(e) => ("/ui", super::ui::refusal(e)),
            Ok(()) => {
                let method = rq.method().clone();
                super::ui::handle(app, rq, method.as_str(), path, query, &mut body)
            }
        };
        return Handled { route, reply, body };
    }
    let route = route_of(path);
    let reply = answer(app, rq, path, query, route, &mut body).unwrap_or_else(ApiError::into_reply);
    Handled {
        route: route.map_or("unknown", |r| r.pattern),
        reply,
        body,
    }
}

fn answer(
    app: &App,
    rq: &mut Request,
    path: &str,
    query: &str,
    route: Option<&'static Route>,
    body_state: &mut BodyState,
) -> Result<Reply, ApiError> {
    // A standard method is a plain enum value: cloning it copies nothing.
    let method = rq.method().clone();
    let method = method.as_str();
    // A page of another site, or one that reached us by DNS rebinding, is
    // refused before anything else (origin.rs); health checks are exempt.
    if path != "/healthz" {
        check_origin(app, rq)?;
    }
    // Auth comes next, on every path: a caller without a key learns
    // nothing, not even which paths exist. The facade authenticates by the
    // handle in its body instead.
    let public = (method == "GET" && path == "/healthz")
        || (method == "POST" && path == "/oauth/token")
        || (method == "GET" && path == "/oauth/callback");
    let scope = if public || app.keys.is_empty() {
        Scope::Admin
    } else {
        app.keys
            .scope_of(header(rq, "Authorization"))
            .ok_or_else(ApiError::unauthorized)?
    };
    // Refused before a byte of it is read.
    if rq.body_length().is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::too_large());
    }
    // The id is checked as it came, never decoded or normalised: `..`,
    // `%2f` or `%00` are refused here rather than routed anywhere.
    if let Some(rest) = path.strip_prefix(ID_PREFIX) {
        let id = rest.split('/').next().unwrap_or(rest);
        validate_id(id).map_err(ApiError::bad_request)?;
    }
    let route = route.ok_or_else(ApiError::no_route)?;
    let Some(endpoint) = route.endpoints.iter().find(|e| e.method == method) else {
        let allow: Vec<&str> = route.endpoints.iter().map(|e| e.method).collect();
        return Err(ApiError::method_not_allowed(allow.join(", ")));
    };
    let id = captures(route.pattern, path).flatten().unwrap_or_default();
    let query = match endpoint.action {
        // An authorization response: RFC 6749 §4.1.2, "the client MUST
        // ignore unrecognized response parameters" (Google adds `authuser`,
        // `prompt`, `hd`).
        Action::Callback => Query::parse_known(query, endpoint.params)?,
        _ => Query::parse(query, endpoint.params)?,
    };
    if scope == Scope::Read && !endpoint.action.allowed_for_read(query.flag("force")?) {
        return Err(ApiError::new(
            403,
            "forbidden",
            "this API key is read-only; importing, deleting, forced refreshes and clearing a \
             cooldown need an admin key",
        ));
    }
    let body = read_body(rq, body_state)?;
    match endpoint.action {
        Action::Facade => return Ok(facade_reply(app, header(rq, "Content-Type"), &body)),
        Action::Login => {
            let host = header(rq, "Host");
            return super::login::start(&app.warden, &app.logins, id, host, app.tls, &body);
        }
        Action::Callback => {
            let target = rq.url().to_owned();
            return Ok(super::login::callback(&app.warden, &app.logins, &target));
        }
        _ => {}
    }
    dispatch(app, endpoint.action, id, &query, &body, scope)
}

/// The `Host` and `Origin` checks of origin.rs, made before anything
/// else on every path but `/healthz` (the console's included).
fn check_origin(app: &App, rq: &Request) -> Result<(), ApiError> {
    let all = |name: &'static str| -> Vec<&str> {
        rq.headers()
            .iter()
            .filter(|h| h.field.equiv(name))
            .map(|h| h.value.as_str())
            .collect()
    };
    let (hosts, origins) = (all("Host"), all("Origin"));
    let version = rq.http_version();
    app.hosts.check(&origin::Seen {
        http_1_0: (version.0, version.1) <= (1, 0),
        hosts: &hosts,
        origins: &origins,
    })
}

/// Reads the body, at most [`MAX_BODY`] bytes of it (a chunked body has no
/// length to check beforehand).
fn read_body(rq: &mut Request, state: &mut BodyState) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    // Even a failed read leaves nothing worth draining.
    *state = BodyState::Done;
    rq.as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    if body.len() > MAX_BODY {
        *state = BodyState::Truncated;
        return Err(ApiError::too_large());
    }
    Ok(body)
}

fn dispatch(
    app: &App,
    action: Action,
    id: &str,
    q: &Query,
    body: &[u8],
    scope: Scope,
) -> Result<Reply, ApiError> {
    let w = &*app.warden;
    let wait =
        || -> Result<Duration, ApiError> { Ok(q.secs("wait", MAX_WAIT_S)?.unwrap_or(app.wait)) };
    match action {
        Action::Healthz => Ok(Reply::json(200, &serde_json::json!({"status": "ok"}))),
        Action::Metrics => metrics(w),
        Action::List => list(w, q),
        Action::Import => import(w, q, body),
        Action::Show => {
            let detail = w.detail(id)?;
            Ok(Reply::json(200, &detail.summary()))
        }
        Action::Delete => {
            // Refused at once (409 `refresh_in_progress`) during a refresh.
            w.delete_within(id, Duration::ZERO)?;
            Ok(Reply::empty(204))
        }
        Action::Token => {
            let min_ttl = q.secs("min_ttl", u64::MAX)?.unwrap_or(Duration::ZERO);
            token_reply(&w.token_within(id, min_ttl, wait()?)?)
        }
        Action::Reject => {
            let token = rejected_token(body)?;
            token_reply(&w.reject_within(id, &token, wait()?)?)
        }
        Action::Refresh => token_reply(&w.refresh_within(id, q.flag("force")?, wait()?)?),
        Action::Events => {
            let limit = u32::try_from(q.limit(LIST_LIMIT)?).unwrap_or(u32::MAX);
            let after = q.seq("after")?;
            let (rows, next) = w.events_page(id, after, Some(limit))?;
            let events = rows.iter().map(EventView::from).collect();
            Ok(Reply::json(200, &EventList { events, next }))
        }
        Action::QuotaGet => quota_get(w, id),
        Action::QuotaPost => quota_post(w, id),
        Action::PoolToken => {
            let pool = parse_pool(id)?;
            let min_ttl = q.secs("min_ttl", u64::MAX)?.unwrap_or(Duration::ZERO);
            let sticky = sticky_key(q)?;
            token_reply(&w.pool_token_within(&pool, min_ttl, sticky.as_deref(), wait()?)?)
        }
        Action::PoolReject => {
            let pool = parse_pool(id)?;
            let (member, token) = pool_rejected(body)?;
            let sticky = sticky_key(q)?;
            token_reply(&w.pool_reject_within(
                &pool,
                &member,
                &token,
                sticky.as_deref(),
                wait()?,
            )?)
        }
        Action::CooldownSet => {
            // An unknown credential is 404 whatever the body.
            w.get(id)?;
            let (until_ms, reason) = cooldown_body(body, clock::now_ms())?;
            // A read-only key only lengthens: shortening a cooldown lifts
            // it sooner, which needs an admin key like the clear route.
            match scope {
                Scope::Read => w.extend_cooldown(id, until_ms, &reason)?,
                _ => w.set_cooldown(id, until_ms, &reason)?,
            };
            let all = w.cooldowns()?;
            match all.iter().find(|c| c.credential_id == id) {
                Some(c) => Ok(Reply::json(200, &crate::view::CooldownView::new(c))),
                None => Err(ApiError::internal("the cooldown just set is gone")),
            }
        }
        Action::CooldownClear => {
            w.clear_cooldown(id, "cleared over the API")?;
            Ok(Reply::empty(204))
        }
        Action::Notifications => {
            let limit = u32::try_from(q.limit(LIST_LIMIT)?).unwrap_or(u32::MAX);
            let rows = w.notifications(q.flag("pending")?, limit)?;
            Ok(Reply::json(200, &crate::view::NotificationList::new(&rows)))
        }
        // Answered before dispatch (they need the request's headers).
        Action::Facade | Action::Login | Action::Callback => Err(ApiError::no_route()),
    }
}

/// `POST /oauth/token`: a Codex CLI presenting its handle. Answers and
/// errors use OpenAI's shapes, which the CLI understands.
fn facade_reply(app: &App, content_type: Option<&str>, body: &[u8]) -> Reply {
    let w = &*app.warden;
    let result = facade::parse_request(content_type, body).and_then(|handle| {
        let opts = facade::FacadeOptions::from_config(w.config());
        facade::exchange(w, &handle, &opts).map(|row| facade::answer(&row, &handle))
    });
    match result {
        Ok(json) => Reply::raw_json(200, json.into_bytes()),
        Err(refusal) => {
            let (status, json, retry) = refusal.render();
            let reply = Reply::raw_json(status, json.into_bytes());
            match retry {
                Some(s) => reply.with_header("Retry-After", s.to_string()),
                None => reply,
            }
        }
    }
}

fn token_reply(grant: &Grant) -> Result<Reply, ApiError> {
    // The hot route: encoded into a buffer sized for it at once, rather
    // than one that grows through every power of two up to the token's size.
    let answer = TokenResponse::new(grant, clock::now_ms());
    let mut bytes =
        Vec::with_capacity(answer.access_token.len() + answer.credential_id.len() + 192);
    match serde_json::to_writer(&mut bytes, &answer) {
        Ok(()) => Ok(Reply::raw_json(200, bytes)),
        Err(_) => Ok(Reply::json(200, &answer)),
    }
}

/// A provider named in the query string.
fn parse_provider(p: &str) -> Result<ProviderKind, ApiError> {
    ProviderKind::parse(p).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown provider {:?}; use codex, claude, google or oauth2",
            shorten(p)
        ))
    })
}

/// A pool named in the path or the query string (the rules of an id).
fn parse_pool(p: &str) -> Result<String, ApiError> {
    crate::credential::validate_pool_name(p)
        .map(|()| p.to_owned())
        .map_err(ApiError::bad_request)
}

/// Items a page of `GET /v1/credentials` (or of a credential's events)
/// holds when `limit` is not given, and the most it may ask for.
pub const LIST_LIMIT: (usize, usize) = (1_000, 10_000);

/// `GET /v1/credentials?limit=&after=&state=&provider=`: one page of
/// summaries in id order, `{"credentials":[…],"next":"ID"}` (`next` only
/// when more follow), written one row at a time.
fn list(w: &Warden, q: &Query) -> Result<Reply, ApiError> {
    let page = PageQuery {
        after: q.text("after"),
        limit: q.limit(LIST_LIMIT)?,
        state: q
            .get("state")
            .map(|s| {
                State::parse(s).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "unknown state {:?}; use one of {}",
                        shorten(s),
                        State::ALL.map(State::as_str).join(", ")
                    ))
                })
            })
            .transpose()?,
        provider: q.get("provider").map(parse_provider).transpose()?,
        pool: q.get("pool").map(parse_pool).transpose()?,
    };
    let mut list = SummaryWriter::new(Vec::new())
        .map_err(|e| ApiError::internal(format!("cannot encode the answer: {e}")))?;
    let next = w.each_summary_page(&page, |summary| list.push(&summary))?;
    let out = list
        .finish(next.as_deref())
        .map_err(|e| ApiError::internal(format!("cannot encode the answer: {e}")))?;
    Ok(Reply::raw_json(200, out))
}

/// Prometheus text, with the credentials counted by effective state (read
/// one row at a time, without secrets).
fn metrics(w: &Warden) -> Result<Reply, ApiError> {
    let states = w.count_by_state()?;
    let mut text = w.metrics().render(&states);
    text.push_str(&w.metrics().render_pools(&w.pool_gauges()?));
    Ok(Reply::metrics(text))
}

/// `POST /v1/credentials`: any import format; 201 with the summary, or
/// `{"credentials":[…]}` for an array.
fn import(w: &Warden, q: &Query, body: &[u8]) -> Result<Reply, ApiError> {
    let provider = q.get("provider").map(parse_provider).transpose()?;
    let opts = ImportOptions {
        id: q.get("id").map(str::to_owned),
        provider,
    };
    let creds = import::parse_import(body, &opts, clock::now_ms())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    // An array lands whole or not at all (with `replace`: up to the first
    // refusal, which says what landed). A replace during a refresh in
    // flight is refused at once (409 `refresh_in_progress`, with
    // Retry-After), not waited out.
    let rows = w.import_all(&creds, q.flag("replace")?, Duration::ZERO)?;
    let (now, policy) = (w.now(), w.config().policy);
    if is_array(body) {
        let credentials = rows.iter().map(|c| Summary::new(c, now, &policy)).collect();
        return Ok(Reply::json(
            201,
            &SummaryList {
                credentials,
                next: None,
            },
        ));
    }
    match rows.first() {
        Some(row) => Ok(Reply::json(201, &Summary::new(row, now, &policy))
            .with_header("Location", format!("{ID_PREFIX}{}", row.id))),
        None => Err(ApiError::bad_request("nothing to import")),
    }
}

/// Whether a JSON body is an array (after an optional BOM and whitespace).
fn is_array(body: &[u8]) -> bool {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// A `?sticky=` key, percent-decoded: 1 to 256 characters.
fn sticky_key(q: &Query) -> Result<Option<String>, ApiError> {
    match q.text("sticky") {
        Some(k) if k.is_empty() || k.chars().count() > 256 => {
            Err(ApiError::bad_request("sticky is 1 to 256 characters"))
        }
        other => Ok(other),
    }
}

/// A pool reject body, `{"credential_id":"…","access_token":"…"}`: the
/// member the token belongs to (the `credential_id` of the token answer)
/// and the token upstream refused. Errors never quote the token.
fn pool_rejected(body: &[u8]) -> Result<(String, String), ApiError> {
    const SHAPE: &str =
        r#"send {"credential_id":"ID","access_token":"THE TOKEN UPSTREAM REFUSED"}"#;
    let bad = |what: String| ApiError::bad_request(format!("{what}; {SHAPE}"));
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON ({e})")))?;
    let Value::Object(mut map) = value else {
        return Err(bad("the body must be a JSON object".into()));
    };
    let member = match map.remove("credential_id") {
        Some(Value::String(s)) => {
            validate_id(&s).map_err(|e| bad(format!("field \"credential_id\": {e}")))?;
            s
        }
        _ => {
            return Err(bad(
                r#"field "credential_id" must be a credential id"#.into()
            ))
        }
    };
    let token = rejected_token(&serde_json::to_vec(&map).unwrap_or_default()).map_err(|e| {
        bad(e
            .message
            .split("; send")
            .next()
            .unwrap_or_default()
            .to_owned())
    })?;
    Ok((member, token))
}

/// A cooldown body: `{"seconds": N}` or `{"until": unix seconds or RFC
/// 3339}`, and an optional `"reason"` (default `cooldown`); the end in
/// unix ms. The end must be in the future and within a year.
fn cooldown_body(body: &[u8], now_ms: i64) -> Result<(i64, String), ApiError> {
    const SHAPE: &str = r#"send {"seconds":N} or {"until":UNIX_SECONDS|"RFC 3339"}, and "reason""#;
    let bad = |what: String| ApiError::bad_request(format!("{what}; {SHAPE}"));
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON ({e})")))?;
    let Value::Object(map) = value else {
        return Err(bad("the body must be a JSON object".into()));
    };
    if let Some(field) = map
        .keys()
        .find(|k| !["seconds", "until", "reason"].contains(&k.as_str()))
    {
        return Err(bad(format!("unknown field {:?}", shorten(field))));
    }
    let until_ms = match (map.get("seconds"), map.get("until")) {
        (Some(s), None) => {
            let secs = s
                .as_f64()
                .filter(|s| s.is_finite() && *s > 0.0)
                .ok_or_else(|| bad(r#"field "seconds" must be a number above 0"#.into()))?;
            now_ms.saturating_add((secs * 1000.0) as i64)
        }
        (None, Some(Value::Number(n))) => n
            .as_i64()
            .map(|s| s.saturating_mul(1000))
            .ok_or_else(|| bad(r#"field "until" must be whole unix seconds"#.into()))?,
        (None, Some(Value::String(s))) => crate::rfc3339::parse(s)
            .ok_or_else(|| bad(r#"field "until" is not an RFC 3339 time"#.into()))?,
        (None, Some(_)) => return Err(bad(r#"field "until" must be a number or a string"#.into())),
        _ => return Err(bad(r#"give exactly one of "seconds" and "until""#.into())),
    };
    if until_ms <= now_ms || until_ms > now_ms.saturating_add(366 * 86_400_000) {
        return Err(bad(
            "the cooldown must end in the future, within a year".into()
        ));
    }
    let reason = match map.get("reason") {
        None | Some(Value::Null) => "cooldown".to_owned(),
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= 200 => s.clone(),
        Some(_) => return Err(bad(r#"field "reason" must be 1 to 200 characters"#.into())),
    };
    Ok((until_ms, reason))
}

/// The token of a reject body, `{"access_token":"…"}`, strictly: errors
/// name the field and never quote a value.
fn rejected_token(body: &[u8]) -> Result<String, ApiError> {
    const SHAPE: &str = r#"send {"access_token":"THE TOKEN UPSTREAM REFUSED"}"#;
    let bad = |what: String| ApiError::bad_request(format!("{what}; {SHAPE}"));
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON ({e})")))?;
    let Value::Object(map) = value else {
        return Err(bad("the body must be a JSON object".into()));
    };
    if let Some(field) = map.keys().find(|k| *k != "access_token") {
        return Err(bad(format!("unknown field {:?}", shorten(field))));
    }
    match map.get("access_token") {
        None | Some(Value::Null) => Err(bad(r#"missing field "access_token""#.into())),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(bad(r#"field "access_token" is empty"#.into()))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(r#"field "access_token" must be a string"#.into())),
    }
}

/// A query string, checked against the parameters a route takes. Values
/// are used as sent: nothing is percent-decoded.
struct Query<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Query<'a> {
    fn parse(raw: &'a str, allowed: &[&str]) -> Result<Query<'a>, ApiError> {
        Query::parse_with(raw, allowed, false)
    }

    /// [`Query::parse`], skipping the parameters not in `allowed` rather
    /// than refusing them (a twice-given known one is still refused).
    fn parse_known(raw: &'a str, allowed: &[&str]) -> Result<Query<'a>, ApiError> {
        Query::parse_with(raw, allowed, true)
    }

    fn parse_with(
        raw: &'a str,
        allowed: &[&str],
        skip_unknown: bool,
    ) -> Result<Query<'a>, ApiError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for piece in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            if !allowed.contains(&name) && skip_unknown {
                continue;
            }
            if !allowed.contains(&name) {
                let takes = match allowed {
                    [] => "no query parameters".to_owned(),
                    _ => allowed.join(", "),
                };
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {:?}; this route takes {takes}",
                    shorten(name)
                )));
            }
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::bad_request(format!(
                    "query parameter {name:?} is given twice"
                )));
            }
            pairs.push((name, value));
        }
        Ok(Query { pairs })
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// Seconds (fractions allowed), at most `max`.
    fn secs(&self, name: &str, max: u64) -> Result<Option<Duration>, ApiError> {
        let Some(raw) = self.get(name) else {
            return Ok(None);
        };
        match parse_secs(raw) {
            Some(d) if d <= Duration::from_secs(max) => Ok(Some(d)),
            Some(_) => Err(ApiError::bad_request(format!(
                "{name} is at most {max} seconds"
            ))),
            None => Err(ApiError::bad_request(format!(
                "{name}={:?} is not a number of seconds",
                shorten(raw)
            ))),
        }
    }

    /// A text value, percent-decoded (an id with `@` may arrive as `%40`);
    /// `+` stays a plus sign, as ids may hold one.
    fn text(&self, name: &str) -> Option<String> {
        self.get(name).map(percent_unescape)
    }

    /// `limit`: a whole number from 1 to `max`; `default` when absent.
    fn limit(&self, (default, max): (usize, usize)) -> Result<usize, ApiError> {
        match self.count("limit")? {
            None => Ok(default),
            Some(n) if (1..=max).contains(&(n as usize)) => Ok(n as usize),
            Some(_) => Err(ApiError::bad_request(format!(
                "limit is a whole number from 1 to {max}"
            ))),
        }
    }

    /// An event sequence number: a whole number from 0.
    fn seq(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|raw| {
                raw.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{name}={:?} is not a sequence number (a whole number from 0)",
                        shorten(raw)
                    ))
                })
            })
            .transpose()
    }

    /// A whole number.
    fn count(&self, name: &str) -> Result<Option<u32>, ApiError> {
        self.get(name)
            .map(|raw| {
                raw.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "{name}={:?} is not a whole number",
                        shorten(raw)
                    ))
                })
            })
            .transpose()
    }

    /// A flag: absent, `0`, `false` or `no` is off; present with no value,
    /// `1`, `true` or `yes` is on.
    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("0" | "false" | "no") => Ok(false),
            Some("" | "1" | "true" | "yes") => Ok(true),
            Some(raw) => Err(ApiError::bad_request(format!(
                "{name}={:?}: use {name}=1 or {name}=0",
                shorten(raw)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_capture_one_segment() {
        assert_eq!(captures("/healthz", "/healthz"), Some(None));
        assert_eq!(captures("/healthz", "/healthz/"), None);
        assert_eq!(
            captures("/v1/credentials/{id}/token", "/v1/credentials/a/token"),
            Some(Some("a"))
        );
        assert_eq!(
            captures("/v1/credentials/{id}", "/v1/credentials/a/token"),
            None
        );
        assert_eq!(
            route_of("/v1/credentials/x/quota").map(|r| r.pattern),
            Some("/v1/credentials/{id}/quota")
        );
        assert!(route_of("/v1/../v1/credentials").is_none());
        assert!(route_of("").is_none());
        assert!(route_of("*").is_none());
    }

    #[test]
    fn every_route_is_unique_and_has_methods() {
        for (i, r) in ROUTES.iter().enumerate() {
            assert!(!r.endpoints.is_empty());
            assert!(ROUTES[..i].iter().all(|o| o.pattern != r.pattern));
        }
    }

    #[test]
    fn queries_are_strict() {
        let q = Query::parse("min_ttl=60&wait=1.5", &["min_ttl", "wait"]).expect("ok");
        assert_eq!(
            q.secs("min_ttl", 100).expect("ok"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            q.secs("wait", 100).expect("ok"),
            Some(Duration::from_millis(1500))
        );
        assert!(q.secs("wait", 1).is_err());
        assert!(Query::parse("mintttl=60", &["min_ttl"]).is_err());
        assert!(Query::parse("wait=1&wait=2", &["wait"]).is_err());
        // An authorization response's unknown parameters are ignored.
        let q = Query::parse_known("code=c&authuser=0&state=s", &["code", "state"]).expect("ok");
        assert_eq!((q.get("code"), q.get("state")), (Some("c"), Some("s")));
        assert!(Query::parse_known("code=a&code=b", &["code"]).is_err());
        let q = Query::parse(
            "min_ttl=abc&limit=-1&force=maybe",
            &["min_ttl", "limit", "force"],
        )
        .expect("ok");
        assert!(q.secs("min_ttl", 100).is_err());
        assert!(q.count("limit").is_err());
        assert!(q.flag("force").is_err());
        let q = Query::parse("force&replace=0", &["force", "replace"]).expect("ok");
        assert!(q.flag("force").expect("ok"));
        assert!(!q.flag("replace").expect("ok"));
    }

    #[test]
    fn reject_bodies_name_the_field() {
        assert_eq!(rejected_token(br#"{"access_token":"t"}"#).expect("ok"), "t");
        for (body, words) in [
            (&b"nope"[..], "not JSON"),
            (b"[]", "object"),
            (br#"{"token":"secret-value"}"#, "\"token\""),
            (
                br#"{"access_token":5}"#,
                "\"access_token\" must be a string",
            ),
            (br#"{"access_token":""}"#, "empty"),
            (b"{}", "missing field \"access_token\""),
        ] {
            let e = rejected_token(body).expect_err("refused");
            assert_eq!(e.status, 400);
            assert!(e.message.contains(words), "{}: {}", words, e.message);
            assert!(!e.message.contains("secret-value"));
        }
    }

    #[test]
    fn arrays_are_told_apart() {
        assert!(is_array(b" \n[{}]"));
        assert!(is_array(b"\xEF\xBB\xBF[]"));
        assert!(!is_array(b"{}"));
        assert!(!is_array(b""));
    }

    #[test]
    fn shorten_cuts_on_a_char_boundary() {
        let long = "é".repeat(100);
        assert_eq!(shorten(&long).chars().count(), 65);
        assert_eq!(shorten("abc"), "abc");
    }
}
