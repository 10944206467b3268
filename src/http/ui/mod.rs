//! The operator's console (issue 17): server-rendered HTML under `/ui` on
//! the API's own listener, with a little plain JavaScript and CSS embedded
//! in the binary. The DOM and URL contract the browser tests rely on is in
//! the README's "Console" section.
//!
//! Requests reach `handle` after the API's `Host`/`Origin` checks
//! (`origin.rs`), and only then: a page of another origin cannot post a
//! form here, and without an API key only loopback names are answered.
//!
//! - [`session`]: sign-in trades an API key for a random session id
//!   (cookie `tw_session`, `HttpOnly; SameSite=Strict`), CSRF tokens.
//! - [`form`]: strict form bodies and query strings.
//! - [`actions`]: each action through the same `Warden` call as the API.
//! - [`render`]: pure functions from view data to HTML.
//!
//! Every answer under `/ui` (redirects and errors too) carries the
//! security headers of [`secure`]; `Cache-Control: no-store` is added by
//! the server to every answer.

pub mod actions;
pub mod form;
pub mod render;
pub mod session;
pub mod throttle;

use std::io::Read;
use std::time::Instant;

use tiny_http::Request;

use crate::admin::PageQuery;
use crate::clock;
use crate::credential::validate_id;
use crate::provider::{percent_unescape, ProviderKind};
use crate::state::State;

use super::auth::Scope;
use super::response::{ApiError, Reply};
use super::routes::{App, BodyState};
use actions::Action;
use form::{Form, Malformed};
use render::overview::{Filters, Overview, PAGE_ROWS};
use render::Chrome;
use session::{Flash, Seen, Sessions, PRE_COOKIE, SESSION_COOKIE};

/// The largest form body read (a sign-in or an action form is a few
/// hundred bytes).
pub const MAX_FORM: usize = 16 * 1024;

/// Events shown on a credential's page (the newest).
const EVENTS_SHOWN: u32 = 200;

/// Quota snapshots drawn in a credential's history chart (the newest).
const HISTORY_SHOWN: u32 = 500;

/// Notifications looked through for a credential's page (the newest of
/// all credentials).
const NOTIFICATIONS_SCANNED: u32 = 1000;

/// The console's `Content-Security-Policy`: nothing inline, nothing from
/// elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const APP_JS: &str = include_str!("static/app.js");
const APP_CSS: &str = include_str!("static/app.css");

/// The console's state in the server: sessions, and the instant the
/// pre-session clock counts from.
#[derive(Debug)]
pub(crate) struct Console {
    sessions: Sessions,
    started: Instant,
    throttle: throttle::Throttle,
}

impl Default for Console {
    fn default() -> Self {
        Console {
            sessions: Sessions::new(),
            started: Instant::now(),
            throttle: throttle::Throttle::default(),
        }
    }
}

/// Whether `path` is the console's (`/`, `/ui` and below).
pub(crate) fn owns(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// Adds the console's security headers. `Referrer-Policy` is
/// `same-origin`, not `no-referrer`: under `no-referrer` browsers send
/// `Origin: null` with every form post (Fetch, "serializing a request
/// origin"), which the `Origin` check must refuse; `same-origin` sends the
/// real origin to this server and no referrer to any other.
pub fn secure(reply: Reply) -> Reply {
    reply
        .with_header("Content-Security-Policy", CSP)
        .with_header("X-Frame-Options", "DENY")
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Referrer-Policy", "same-origin")
}

/// A refusal from the checks made before routing (`Host`, `Origin`), as
/// a console page.
pub(crate) fn refusal(e: ApiError) -> Reply {
    secure(Reply::html(
        e.status,
        render::error_page(e.status, &e.message, None),
    ))
}

fn see_other(to: &str) -> Reply {
    Reply::empty(303).with_header("Location", to.to_owned())
}

fn header<'r>(rq: &'r Request, name: &'static str) -> Option<&'r str> {
    rq.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// What one request is, once read: the clock readings, the session.
struct Ctx<'a> {
    app: &'a App,
    now_ms: i64,
    now: Instant,
    /// The session cookie's value, if any: of several (see
    /// [`Sessions::pick`]), the live one.
    cookie: Option<String>,
}

impl Ctx<'_> {
    fn session(&self, take_flash: bool) -> Option<Seen> {
        let id = self.cookie.as_deref()?;
        self.app
            .console
            .sessions
            .get(id, &self.app.keys, self.now, take_flash)
    }

    fn chrome<'s>(&self, s: &'s Seen) -> Chrome<'s> {
        Chrome {
            csrf: &s.csrf,
            admin: s.scope == Scope::Admin,
        }
    }

    fn page_error(&self, e: ApiError, s: Option<&Seen>) -> Reply {
        let chrome = s.map(|s| self.chrome(s));
        Reply::html(e.status, render::error_page(e.status, &e.message, chrome))
    }
}

/// Answers a console request: the route pattern (for metrics and logs)
/// and the reply, with the security headers.
pub(crate) fn handle(
    app: &App,
    rq: &mut Request,
    method: &str,
    path: &str,
    query: &str,
    body: &mut BodyState,
) -> (&'static str, Reply) {
    let now = Instant::now();
    let sent = session::cookies(header(rq, "Cookie"), SESSION_COOKIE);
    let cookie = app
        .console
        .sessions
        .pick(&sent, &app.keys, now)
        .map(str::to_owned);
    let ctx = Ctx {
        app,
        now_ms: clock::now_ms(),
        now,
        cookie,
    };
    let (route, reply) = route(&ctx, rq, method, path, query, body);
    (route, secure(reply))
}

/// A path segment of a credential id, decoded and checked.
fn credential_id(raw: &str) -> Result<String, ApiError> {
    let id = percent_unescape(raw);
    validate_id(&id).map_err(ApiError::bad_request)?;
    Ok(id)
}

fn route(
    ctx: &Ctx<'_>,
    rq: &mut Request,
    method: &str,
    path: &str,
    query: &str,
    body: &mut BodyState,
) -> (&'static str, Reply) {
    let not_allowed = |allow: &str| {
        Reply::html(
            405,
            render::error_page(405, &format!("this path takes {allow}"), None),
        )
        .with_header("Allow", allow.to_owned())
    };
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (segments.as_slice(), method) {
        ([""], "GET") => ("/", see_other("/ui")),
        (["ui"], "GET") => ("/ui", overview_page(ctx, query)),
        (["ui", "overview"], "GET") => ("/ui/overview", overview_fragment(ctx, query)),
        (["ui", "login"], "GET") => ("/ui/login", signin_page(ctx, None, None, 200)),
        (["ui", "login"], "POST") => ("/ui/login", signin(ctx, rq, body)),
        (["ui", "logout"], "POST") => ("/ui/logout", signout(ctx, rq, body)),
        (["ui", "static", "app.js"], "GET") => (
            "/ui/static/app.js",
            Reply::asset("text/javascript; charset=utf-8", APP_JS),
        ),
        (["ui", "static", "app.css"], "GET") => (
            "/ui/static/app.css",
            Reply::asset("text/css; charset=utf-8", APP_CSS),
        ),
        (["ui", "credentials", id], "GET") => ("/ui/credentials/{id}", credential_page(ctx, id)),
        (["ui", "credentials", id, name], _) => match (Action::parse(name), method) {
            (Some(action), "POST") => (
                "/ui/credentials/{id}/{action}",
                act(ctx, rq, id, action, body),
            ),
            (Some(_), _) => ("/ui/credentials/{id}/{action}", not_allowed("POST")),
            (None, _) => ("/ui/unknown", not_found()),
        },
        ([""], _) => ("/", not_allowed("GET")),
        (["ui"], _) => ("/ui", not_allowed("GET")),
        (["ui", "overview"], _) => ("/ui/overview", not_allowed("GET")),
        (["ui", "credentials", _], _) => ("/ui/credentials/{id}", not_allowed("GET")),
        (["ui", "login"], _) => ("/ui/login", not_allowed("GET, POST")),
        (["ui", "logout"], _) => ("/ui/logout", not_allowed("POST")),
        _ => ("/ui/unknown", not_found()),
    }
}

fn not_found() -> Reply {
    Reply::html(
        404,
        render::error_page(404, "no such page; the console starts at /ui", None),
    )
}

/// The overview's filters from a query string (`state`, `provider`,
/// `pool`, `after`; an empty value means all).
fn filters(query: &str) -> Result<Filters, ApiError> {
    let form = Form::parse(query.as_bytes(), &["state", "provider", "pool", "after"])
        .map_err(|Malformed(m)| ApiError::bad_request(m))?;
    let state = form
        .non_empty("state")
        .map(|s| {
            State::parse(s).ok_or_else(|| {
                ApiError::bad_request(
                    "unknown state; use one of valid, expiring, refreshing, rejected, dead",
                )
            })
        })
        .transpose()?;
    let provider = form
        .non_empty("provider")
        .map(|p| {
            ProviderKind::parse(p).ok_or_else(|| {
                ApiError::bad_request("unknown provider; use codex, claude, google or oauth2")
            })
        })
        .transpose()?;
    let pool = form
        .non_empty("pool")
        .map(|p| {
            crate::credential::validate_pool_name(p)
                .map(|()| p.to_owned())
                .map_err(ApiError::bad_request)
        })
        .transpose()?;
    let after = form.non_empty("after").map(str::to_owned);
    Ok(Filters {
        state,
        provider,
        pool,
        after,
    })
}

/// One page of rows (`<tbody>`) and the next page's cursor, for session
/// `s` (an admin's rows carry re-login buttons).
fn overview_rows(
    ctx: &Ctx<'_>,
    f: &Filters,
    s: &Seen,
) -> Result<(String, Option<String>), ApiError> {
    let relogin = (s.scope == Scope::Admin).then_some(s.csrf.as_str());
    let q = PageQuery {
        after: f.after.clone(),
        limit: PAGE_ROWS,
        state: f.state,
        provider: f.provider,
        pool: f.pool.clone(),
    };
    let mut ranked = Vec::new();
    let next = ctx.app.warden.each_summary_page(&q, |summary| {
        ranked.push((
            render::overview::rank(&summary),
            render::overview::row(&summary, ctx.now_ms, relogin),
        ))
    })?;
    Ok((render::overview::rows(ranked), next))
}

fn overview_page(ctx: &Ctx<'_>, query: &str) -> Reply {
    let Some(s) = ctx.session(true) else {
        return see_other("/ui/login");
    };
    let result = (|| -> Result<String, ApiError> {
        let f = filters(query)?;
        let (rows, next) = overview_rows(ctx, &f, &s)?;
        let w = &ctx.app.warden;
        let mut pools: Vec<String> = w.memberships()?.into_values().flatten().collect();
        pools.sort();
        pools.dedup();
        let counts = w.count_by_state()?;
        Ok(render::overview::page_html(&Overview {
            rows,
            filters: &f,
            pools: &pools,
            counts: &counts,
            next: next.as_deref(),
            chrome: ctx.chrome(&s),
            flash: s.flash.as_ref(),
        }))
    })();
    match result {
        Ok(html) => Reply::html(200, html),
        Err(e) => ctx.page_error(e, Some(&s)),
    }
}

fn overview_fragment(ctx: &Ctx<'_>, query: &str) -> Reply {
    let Some(s) = ctx.session(false) else {
        return Reply::html(
            401,
            render::error_page(401, "signed out; sign in again at /ui/login", None),
        );
    };
    match filters(query).and_then(|f| overview_rows(ctx, &f, &s)) {
        Ok((rows, next)) => {
            let reply = Reply::html(200, rows);
            match next {
                Some(n) => reply.with_header("X-Next-After", render::url_component(&n)),
                None => reply,
            }
        }
        Err(e) => Reply::html(e.status, render::escape(&e.message)),
    }
}

fn credential_page(ctx: &Ctx<'_>, raw_id: &str) -> Reply {
    let Some(s) = ctx.session(true) else {
        return see_other("/ui/login");
    };
    let result = (|| -> Result<String, ApiError> {
        let id = credential_id(raw_id)?;
        let w = &ctx.app.warden;
        // One read: the reject form names the very token the summary
        // shows, so it never rejects a token the page did not show.
        let detail = w.detail(&id)?;
        let fingerprint = detail.token_fingerprint();
        let summary = detail.summary();
        let events = w.events(&id, Some(EVENTS_SHOWN))?;
        let handles = w.handles(&id)?;
        let all = w.notifications(false, NOTIFICATIONS_SCANNED)?;
        let notifications: Vec<&crate::NotificationRow> = all
            .iter()
            .filter(|n| n.notice.credential_id.as_deref() == Some(id.as_str()))
            .collect();
        let history = w.quota_history(&id, HISTORY_SHOWN)?;
        Ok(render::credential::page_html(
            &render::credential::CredentialView {
                summary: &summary,
                events: &events,
                handles: &handles,
                notifications: &notifications,
                quota: detail.quota(),
                history: &history,
                chrome: ctx.chrome(&s),
                flash: s.flash.as_ref(),
                now_ms: ctx.now_ms,
                token_fingerprint: fingerprint.as_deref(),
            },
        ))
    })();
    match result {
        Ok(html) => Reply::html(200, html),
        Err(e) => ctx.page_error(e, Some(&s)),
    }
}

/// Reads a form body: at most [`MAX_FORM`] bytes (413 past it, refused
/// before reading when the length is declared), URL-encoded (415 for
/// another type), with only `fields` (400).
fn read_form(rq: &mut Request, fields: &[&str], state: &mut BodyState) -> Result<Form, ApiError> {
    if rq.body_length().is_some_and(|n| n > MAX_FORM) {
        return Err(form_too_large());
    }
    let ctype = header(rq, "Content-Type").map(|t| {
        t.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    if ctype
        .as_deref()
        .is_some_and(|t| t != "application/x-www-form-urlencoded")
    {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "console forms are sent as application/x-www-form-urlencoded",
        ));
    }
    let mut bytes = Vec::new();
    *state = BodyState::Done;
    rq.as_reader()
        .take(MAX_FORM as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::bad_request(format!("cannot read the form: {e}")))?;
    if bytes.len() > MAX_FORM {
        *state = BodyState::Truncated;
        return Err(form_too_large());
    }
    Form::parse(&bytes, fields).map_err(|Malformed(m)| ApiError::bad_request(m))
}

fn form_too_large() -> ApiError {
    ApiError::new(
        413,
        "too_large",
        format!("the form is larger than {MAX_FORM} bytes"),
    )
}

/// Seconds on the pre-session clock.
fn pre_now(ctx: &Ctx<'_>) -> u64 {
    ctx.now
        .saturating_duration_since(ctx.app.console.started)
        .as_secs()
}

/// The sign-in page, with a fresh pre-session cookie (or `keep`, the
/// request's own, when re-shown after a wrong key).
fn signin_page(ctx: &Ctx<'_>, keep: Option<&str>, error: Option<&str>, status: u16) -> Reply {
    let sessions = &ctx.app.console.sessions;
    let pre = match keep.map(str::to_owned) {
        Some(p) => p,
        None => match sessions.pre_cookie(pre_now(ctx)) {
            Ok(p) => p,
            Err(e) => return ctx.page_error(e.into(), None),
        },
    };
    let html = render::signin::page_html(&sessions.pre_csrf(&pre), error, ctx.app.keys.is_empty());
    Reply::html(status, html).with_header(
        "Set-Cookie",
        session::set_cookie(
            PRE_COOKIE,
            &pre,
            "/ui",
            Some(session::PRE_TTL.as_secs()),
            ctx.app.tls,
        ),
    )
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(403, "forbidden", message)
}

fn signin(ctx: &Ctx<'_>, rq: &mut Request, body: &mut BodyState) -> Reply {
    let form = match read_form(rq, &["csrf", "key"], body) {
        Ok(f) => f,
        Err(e) => return ctx.page_error(e, None),
    };
    let console = &ctx.app.console;
    let sessions = &console.sessions;
    // Of several pre-session cookies (another port's page may plant its
    // own), the one this form was made for.
    let pres = session::cookies(header(rq, "Cookie"), PRE_COOKIE);
    let Some(pre) = sessions.pre_pick(&pres, form.get("csrf"), pre_now(ctx)) else {
        return ctx.page_error(
            forbidden(
                "the sign-in form expired or did not come from this server; load /ui/login again",
            ),
            None,
        );
    };
    let peer = ctx.app.client(rq).ok().flatten();
    let peer_shown = peer.map_or_else(|| "an unknown address".to_owned(), |p| p.to_string());
    let attempt = match console.throttle.attempt(peer, ctx.now) {
        Ok(a) => a,
        Err(wait) => {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            log::debug!("console: a sign-in from {peer_shown} was held back ({secs} s)");
            let message = format!(
                "too many wrong keys; try again in {secs} s (the API and the CLI are not held back)"
            );
            return ctx
                .page_error(ApiError::new(429, "too_many_requests", message), None)
                .with_header("Retry-After", secs.to_string());
        }
    };
    let key = form.get("key").unwrap_or_default().trim();
    let Some(scope) = session::scope_of_key(&ctx.app.keys, key) else {
        log::info!("console: a sign-in with a wrong key from {peer_shown} was refused");
        return signin_page(
            ctx,
            Some(pre),
            Some("That key is not one of this server's API keys."),
            401,
        );
    };
    console.throttle.right_key(attempt);
    let id = match sessions.open(key, scope, ctx.now) {
        Ok(id) => id,
        Err(e) => return ctx.page_error(e.into(), None),
    };
    log::info!("console: signed in ({} session(s))", sessions.len());
    see_other("/ui")
        .with_header(
            "Set-Cookie",
            session::set_cookie(SESSION_COOKIE, &id, "/", None, ctx.app.tls),
        )
        .with_header(
            "Set-Cookie",
            session::set_cookie(PRE_COOKIE, "", "/ui", Some(0), ctx.app.tls),
        )
}

/// The session of a form post and its CSRF check: `Err` is the answer
/// (303 to the sign-in page without a session, 403 for a missing or
/// wrong token).
fn checked_post(ctx: &Ctx<'_>, form: &Form) -> Result<Seen, Reply> {
    let Some(s) = ctx.session(false) else {
        return Err(see_other("/ui/login"));
    };
    let sent = form.get("csrf").unwrap_or_default();
    if !session::ct_eq(sent.as_bytes(), s.csrf.as_bytes()) {
        return Err(ctx.page_error(
            forbidden("missing or wrong CSRF token; reload the page and try again"),
            Some(&s),
        ));
    }
    Ok(s)
}

/// The answer to a post without a session: a form's browser goes to the
/// sign-in page (303); a script's `fetch` (`Sec-Fetch-Mode` other than
/// `navigate`) gets 401.
fn signed_out(rq: &Request) -> Reply {
    match header(rq, "Sec-Fetch-Mode") {
        Some(mode) if !mode.eq_ignore_ascii_case("navigate") => Reply::html(
            401,
            render::error_page(401, "signed out; sign in again at /ui/login", None),
        ),
        _ => see_other("/ui/login"),
    }
}

fn signout(ctx: &Ctx<'_>, rq: &mut Request, body: &mut BodyState) -> Reply {
    if ctx.session(false).is_none() {
        return signed_out(rq);
    }
    let form = match read_form(rq, &["csrf"], body) {
        Ok(f) => f,
        Err(e) => return ctx.page_error(e, None),
    };
    if let Err(reply) = checked_post(ctx, &form) {
        return reply;
    }
    // Every session the browser named, not only the one used: a planted
    // one picked over the operator's own must not outlive signing out.
    for id in session::cookies(header(rq, "Cookie"), SESSION_COOKIE) {
        ctx.app.console.sessions.close(id);
    }
    see_other("/ui/login").with_header(
        "Set-Cookie",
        session::set_cookie(SESSION_COOKIE, "", "/", Some(0), ctx.app.tls),
    )
}

fn act(
    ctx: &Ctx<'_>,
    rq: &mut Request,
    raw_id: &str,
    action: Action,
    body: &mut BodyState,
) -> Reply {
    // No session: back to the sign-in page before a byte of the body.
    let Some(seen) = ctx.session(false) else {
        return signed_out(rq);
    };
    let form = match read_form(rq, action.fields(), body) {
        Ok(f) => f,
        Err(e) => return ctx.page_error(e, Some(&seen)),
    };
    let s = match checked_post(ctx, &form) {
        Ok(s) => s,
        Err(reply) => return reply,
    };
    if s.scope != Scope::Admin {
        return ctx.page_error(
            forbidden("signed in with a read-only key: the console's actions need an admin key"),
            Some(&s),
        );
    }
    let id = match credential_id(raw_id) {
        Ok(id) => id,
        Err(e) => return ctx.page_error(e, Some(&s)),
    };
    if action == Action::Relogin {
        return relogin(ctx, rq, &id, &s);
    }
    let result = actions::run(
        &ctx.app.warden,
        &id,
        action,
        &form,
        ctx.app.wait,
        ctx.now_ms,
    );
    let page = format!("/ui/credentials/{}", render::url_component(&id));
    let (flash, to) = match result {
        Ok(message) => {
            log::info!("console: {action:?} on {id}");
            let to = match action {
                Action::Delete => "/ui".to_owned(),
                _ => page,
            };
            (
                Flash {
                    error: false,
                    message,
                },
                to,
            )
        }
        Err(e) => {
            let e = ApiError::from(e);
            // A credential gone meanwhile has no page to go back to.
            let to = match e.status {
                404 => "/ui".to_owned(),
                _ => page,
            };
            (
                Flash {
                    error: true,
                    message: e.message,
                },
                to,
            )
        }
    };
    if let Some(cookie) = &ctx.cookie {
        ctx.app.console.sessions.flash(cookie, flash);
    }
    see_other(&to)
}

/// The re-login button of a dead `oauth2` credential: starts a sign-in
/// over the API (as `POST /v1/credentials/{id}/login` does, redirect URI
/// this server's `/oauth/callback`) and answers a page linking to the
/// provider; a refusal (another provider, no discovery) is a flash on the
/// credential's page.
fn relogin(ctx: &Ctx<'_>, rq: &Request, id: &str, s: &Seen) -> Reply {
    let app = ctx.app;
    let flags = crate::login::run::OAuth2Flags::default();
    let host = header(rq, "Host");
    match super::login::begin(&app.warden, &app.logins, id, host, app.tls, &flags, None) {
        Ok((url, _, _)) => {
            log::info!("console: a sign-in of {id} started");
            Reply::html(
                200,
                render::credential::relogin_page(id, &url, ctx.chrome(s)),
            )
        }
        Err(e) => {
            if let Some(cookie) = &ctx.cookie {
                let flash = Flash {
                    error: true,
                    message: e.message,
                };
                app.console.sessions.flash(cookie, flash);
            }
            see_other(&format!("/ui/credentials/{}", render::url_component(id)))
        }
    }
}
