//! The shell of `tokenwarden login`: binds the loopback listener, opens
//! the browser, reads the redirect (or the pasted code, or polls the device
//! flow), sends the exchange through the warden's HTTP client and stores
//! the credential with [`Warden::store_login`]. Everything it decides is
//! the pure functions of the modules beside it.

use std::io::BufRead;
use std::time::{Duration, Instant};

use tiny_http::{Header, Response, Server};

use super::{
    authorize_url, code_request, discovery_request, next_interval, openid_scope, parse_callback,
    parse_discovery, parse_pasted, parse_poll, parse_start, parse_tokens, poll_request,
    start_request, state_from, CallbackError, DeviceDialect, Discovery, LoginClient, LoginError,
    OAuth2Settings, Pkce, Poll,
};
use crate::admin::Stored;
use crate::clock;
use crate::credential::{Credential, NewCredential};
use crate::error::{Error, IoError, Result};
use crate::provider::{HttpRequest, HttpResponse, Tokens};
use crate::secret::Secret;
use crate::warden::Warden;

/// How the user gets the code to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A browser redirect to a loopback listener (RFC 8252).
    Browser {
        /// Try to open a browser (else only print the URL).
        open: bool,
        /// The listener's port (else the client's registered one, or any).
        port: Option<u16>,
    },
    /// The provider's page shows `code#state`; the user pastes it back.
    Manual,
    /// The device authorization grant (RFC 8628, or Codex's).
    Device,
}

/// One sign-in to run.
#[derive(Debug, Clone)]
pub struct LoginRequest {
    /// The provider's client.
    pub client: LoginClient,
    /// The credential id to store under (else the account's, see
    /// [`Warden::store_login`]).
    pub id: Option<String>,
    /// How the code comes back.
    pub method: Method,
    /// How long to wait for the user.
    pub timeout: Duration,
}

/// The settings of an `oauth2` sign-in as the command line gives them.
#[derive(Debug, Clone, Default)]
pub struct OAuth2Flags {
    /// `--issuer`: OpenID discovery.
    pub issuer: Option<String>,
    /// `--authorize-url`.
    pub authorize_url: Option<String>,
    /// `--token-url`.
    pub token_url: Option<String>,
    /// `--device-url`.
    pub device_url: Option<String>,
    /// `--client-id`.
    pub client_id: Option<String>,
    /// The secret read from `--client-secret-file`.
    pub client_secret: Option<Secret>,
    /// `--scope`.
    pub scope: Option<String>,
}

fn login_err(e: LoginError) -> Error {
    match e {
        LoginError::Config(m) => Error::BadInput(m),
        other => Error::Login {
            code: match &other {
                LoginError::Denied(_) => "access_denied",
                LoginError::Expired => "expired_token",
                LoginError::NoRefreshToken => "no_refresh_token",
                LoginError::Callback(_) => "bad_callback",
                _ => "exchange_failed",
            },
            message: other.to_string(),
        },
    }
}

/// A redirect that ends a sign-in: a refused consent is `access_denied`.
fn callback_err(e: CallbackError) -> Error {
    login_err(match e {
        CallbackError::Refused { error, description } if error == "access_denied" => {
            LoginError::Denied(description.unwrap_or(error))
        }
        other => LoginError::Callback(other),
    })
}

fn send(warden: &Warden, req: &HttpRequest) -> Result<HttpResponse> {
    let timeout = warden.config().request_timeout;
    warden
        .upstream()
        .send(req, timeout)
        .map_err(|f| Error::Login {
            code: "upstream_unreachable",
            message: format!("{} did not answer: {}", req.url, f.message),
        })
}

/// The `oauth2` client from the flags: OpenID discovery from `--issuer`
/// (asking for `offline_access`, with consent), or the endpoints given.
/// `stored` fills what the flags leave out when signing an existing
/// credential in again (`tokenwarden login oauth2 --id ID`): its token URL,
/// client id and secret, scope, and — with neither `--issuer` nor
/// `--authorize-url` — discovery at its token URL's origin.
pub fn oauth2_client(
    warden: &Warden,
    flags: &OAuth2Flags,
    stored: Option<&Credential>,
) -> Result<LoginClient> {
    let sp = stored.map(|c| &c.provider);
    let client_id = flags
        .client_id
        .clone()
        .or_else(|| sp.and_then(|p| p.client_id.clone()))
        .ok_or_else(|| Error::BadInput("oauth2 sign-in needs --client-id".into()))?;
    let client_secret = flags
        .client_secret
        .clone()
        .or_else(|| sp.and_then(|p| p.client_secret.clone()));
    let scope = flags
        .scope
        .clone()
        .or_else(|| sp.and_then(|p| p.scope.clone()));
    let stored_token_url = match (&flags.issuer, &flags.authorize_url) {
        (None, None) => sp.and_then(|p| p.token_url.as_deref()),
        _ => None,
    };
    let issuer = flags
        .issuer
        .clone()
        .or_else(|| stored_token_url.and_then(origin));
    let settings = match (&issuer, &flags.authorize_url) {
        (Some(issuer), None) => {
            let doc = match stored_token_url {
                Some(token_url) => discover_for(warden, token_url)?,
                None => parse_discovery(
                    issuer,
                    &send(warden, &discovery_request(issuer).map_err(login_err)?)?,
                )
                .map_err(login_err)?,
            };
            let scope = openid_scope(scope.as_deref(), &doc.scopes_supported);
            OAuth2Settings {
                consent: scope.split_whitespace().any(|s| s == "offline_access"),
                authorize_url: doc.authorization_endpoint,
                token_url: flags.token_url.clone().unwrap_or(doc.token_endpoint),
                device_url: flags
                    .device_url
                    .clone()
                    .or(doc.device_authorization_endpoint),
                client_id,
                client_secret,
                scope,
            }
        }
        (_, Some(authorize_url)) => {
            let token_url = flags
                .token_url
                .clone()
                .or_else(|| sp.and_then(|p| p.token_url.clone()))
                .ok_or_else(|| {
                    Error::BadInput("oauth2 sign-in needs --token-url (or --issuer)".into())
                })?;
            let scope = scope.unwrap_or_default();
            OAuth2Settings {
                consent: scope.split_whitespace().any(|s| s == "offline_access"),
                authorize_url: authorize_url.clone(),
                token_url,
                device_url: flags.device_url.clone(),
                client_id,
                client_secret,
                scope,
            }
        }
        (None, None) => return Err(Error::BadInput(
            "oauth2 sign-in needs --issuer (OpenID discovery) or --authorize-url and --token-url"
                .into(),
        )),
    };
    for url in [&settings.authorize_url, &settings.token_url] {
        crate::provider::check_url(url).map_err(Error::BadInput)?;
    }
    Ok(LoginClient::oauth2(settings))
}

/// OpenID discovery for a stored credential's `token_url` when no issuer is
/// named: an issuer may have a path (Keycloak's `…/realms/NAME`), so each
/// path prefix of the token URL is tried, longest first, and the first
/// document whose `token_endpoint` is that very token URL is the one; the
/// origin last, whose document is taken as before (its token endpoint may
/// differ: the stored one may be a proxy's). Unreachable: that error at
/// once. None found: the origin's error, saying to pass `--issuer`.
fn discover_for(warden: &Warden, token_url: &str) -> Result<Discovery> {
    let candidates = issuer_candidates(token_url);
    let Some((origin, paths)) = candidates.split_last() else {
        return Err(Error::BadInput(format!(
            "cannot find the issuer of token URL {token_url}; pass --issuer"
        )));
    };
    for issuer in paths {
        let Ok(req) = discovery_request(issuer) else {
            continue;
        };
        if let Ok(doc) = parse_discovery(issuer, &send(warden, &req)?) {
            if doc.token_endpoint == token_url {
                return Ok(doc);
            }
        }
    }
    let resp = send(warden, &discovery_request(origin).map_err(login_err)?)?;
    parse_discovery(origin, &resp).map_err(|e| {
        Error::BadInput(format!(
            "{}; no OpenID discovery found along token URL {token_url} — pass --issuer URL \
             (or --authorize-url)",
            login_err(e)
        ))
    })
}

/// The issuers a token URL may belong to: each path prefix of it, longest
/// first (the token URL itself left out), then its origin.
fn issuer_candidates(token_url: &str) -> Vec<String> {
    let Some(origin) = origin(token_url) else {
        return vec![];
    };
    let path = token_url[origin.len()..]
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut out: Vec<String> = (1..segments.len())
        .rev()
        .map(|n| format!("{origin}/{}", segments[..n].join("/")))
        .collect();
    out.push(origin);
    out
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split('/').next()?;
    Some(format!("{scheme}://{host}"))
}

fn random32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b)
        .map_err(|e| Error::from(IoError::new("no randomness from the OS", e.to_string())))?;
    Ok(b)
}

/// Runs one sign-in and stores its credential. `say` gets what the user
/// must read (the URL, the device code); `input` is read in the manual
/// variant.
pub fn login(
    warden: &Warden,
    req: &LoginRequest,
    say: &mut dyn FnMut(&str),
    input: &mut dyn BufRead,
) -> Result<(Credential, Stored)> {
    let tokens = match req.method {
        Method::Device => device_flow(warden, req, say)?,
        Method::Manual => manual_flow(warden, req, say, input)?,
        Method::Browser { open, port } => browser_flow(warden, req, open, port, say)?,
    };
    store(warden, req, tokens)
}

fn store(warden: &Warden, req: &LoginRequest, t: Tokens) -> Result<(Credential, Stored)> {
    let cred = NewCredential {
        id: String::new(),
        provider: req.client.provider.clone(),
        refresh_token: t.refresh_token,
        access_token: Some(t.access_token),
        id_token: t.id_token,
        expires_at_ms: Some(t.expires_at_ms),
        claims: t.claims,
        last_refresh_ms: Some(clock::now_ms()),
        api_key: None,
    };
    warden.store_login(cred, req.id.as_deref())
}

fn exchange(
    warden: &Warden,
    client: &LoginClient,
    code: &str,
    verifier: &Secret,
    redirect_uri: &str,
    state: &str,
) -> Result<Tokens> {
    let endpoints = &warden.config().endpoints;
    let http =
        code_request(client, code, verifier, redirect_uri, state, endpoints).map_err(login_err)?;
    let sent = [code, verifier.expose()];
    parse_tokens(client, &send(warden, &http)?, &sent, clock::now_ms()).map_err(login_err)
}

fn manual_flow(
    warden: &Warden,
    req: &LoginRequest,
    say: &mut dyn FnMut(&str),
    input: &mut dyn BufRead,
) -> Result<Tokens> {
    let redirect = req.client.manual_redirect.clone().ok_or_else(|| {
        Error::BadInput(format!(
            "{} sign-in has no manual variant; use --no-browser and open the URL on any machine",
            req.client.provider.kind
        ))
    })?;
    let (pkce, state) = (Pkce::from_bytes(&random32()?), state_from(&random32()?));
    let url = authorize_url(&req.client, &redirect, &state, &pkce.challenge);
    say(&format!(
        "Open this URL in a browser, sign in, and paste the code it shows (code#state):\n\n  {url}\n"
    ));
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| Error::from(IoError::new("cannot read the pasted code", e.to_string())))?;
    let code = parse_pasted(&line, &state).map_err(callback_err)?;
    exchange(
        warden,
        &req.client,
        &code,
        &pkce.verifier,
        &redirect,
        &state,
    )
}

/// Binds the listener: the requested port, else the client's registered
/// ports in order, else any.
fn bind(client: &LoginClient, port: Option<u16>) -> Result<(Server, u16)> {
    let ports: Vec<u16> = match (port, client.redirect_ports.is_empty()) {
        (Some(p), _) => vec![p],
        (None, false) => client.redirect_ports.clone(),
        (None, true) => vec![0],
    };
    let mut last = String::new();
    for p in ports {
        match Server::http(("127.0.0.1", p)) {
            Ok(s) => {
                let actual = s.server_addr().to_ip().map(|a| a.port()).unwrap_or(p);
                return Ok((s, actual));
            }
            Err(e) => last = format!("127.0.0.1:{p}: {e}"),
        }
    }
    Err(Error::from(IoError::new(
        "cannot listen for the sign-in redirect",
        format!("{last} (another sign-in running? pass --redirect-port)"),
    )))
}

/// The page a browser is left on after a sign-in: a title and a line,
/// HTML-escaped.
pub fn page_html(title: &str, text: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    format!(
        "<!doctype html><meta charset=utf-8><title>tokenwarden</title>\
         <body style=\"font:16px system-ui;margin:4em auto;max-width:36em\">\
         <h2>{}</h2><p>{}</p></body>",
        esc(title),
        esc(text)
    )
}

/// What the browser is told when the sign-in worked.
pub const SIGNED_IN: (&str, &str) = (
    "Signed in",
    "tokenwarden has the login. You can close this tab.",
);

/// The page the browser is left on, as tiny_http's response.
fn page(title: &str, text: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut r = Response::from_string(page_html(title, text));
    for (k, v) in [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
    ] {
        // Static, valid header names and values.
        if let Ok(h) = Header::from_bytes(k, v) {
            r.add_header(h);
        }
    }
    r
}

fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    // Best effort: the URL is printed anyway.
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

fn browser_flow(
    warden: &Warden,
    req: &LoginRequest,
    open: bool,
    port: Option<u16>,
    say: &mut dyn FnMut(&str),
) -> Result<Tokens> {
    let client = &req.client;
    let (server, port) = bind(client, port)?;
    let redirect = client.redirect_uri(port);
    let (pkce, state) = (Pkce::from_bytes(&random32()?), state_from(&random32()?));
    let url = authorize_url(client, &redirect, &state, &pkce.challenge);
    say(&format!(
        "Sign in at this URL (the browser comes back to {redirect}):\n\n  {url}\n"
    ));
    if open {
        open_browser(&url);
    }
    let deadline = Instant::now() + req.timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Login {
                code: "timed_out",
                message: format!(
                    "no sign-in came back within {} s; run the command again",
                    req.timeout.as_secs()
                ),
            });
        }
        let Ok(Some(request)) = server.recv_timeout(left.min(Duration::from_millis(500))) else {
            continue;
        };
        let target = request.url().to_owned();
        match parse_callback(&target, &client.redirect_path, &state) {
            Err(CallbackError::NotCallback) => {
                let _ = request.respond(
                    page("Not found", "This is tokenwarden's sign-in callback.")
                        .with_status_code(404),
                );
            }
            Err(CallbackError::StateMismatch) => {
                log::warn!("sign-in callback with a wrong state ignored");
                let _ = request.respond(
                    page(
                        "This sign-in is not the one running",
                        &CallbackError::StateMismatch.to_string(),
                    )
                    .with_status_code(400),
                );
            }
            Err(e) => {
                let _ =
                    request.respond(page("Sign-in failed", &e.to_string()).with_status_code(400));
                return Err(callback_err(e));
            }
            Ok(code) => {
                let got = exchange(warden, client, &code, &pkce.verifier, &redirect, &state);
                let _ = match &got {
                    Ok(_) => request.respond(page(SIGNED_IN.0, SIGNED_IN.1)),
                    Err(e) => request
                        .respond(page("Sign-in failed", &e.to_string()).with_status_code(502)),
                };
                return got;
            }
        }
    }
}

fn device_flow(warden: &Warden, req: &LoginRequest, say: &mut dyn FnMut(&str)) -> Result<Tokens> {
    let client = &req.client;
    let endpoints = &warden.config().endpoints;
    let start = start_request(client, endpoints).map_err(login_err)?;
    let started = parse_start(client, &send(warden, &start)?).map_err(login_err)?;
    let page = started
        .verification_uri_complete
        .clone()
        .unwrap_or_else(|| started.verification_uri.clone());
    // The server's words, its control characters escaped.
    say(&format!(
        "Open {} on any device and enter the code:\n\n  {}\n\n(it expires in {} minutes)",
        super::printable(&page),
        super::printable(&started.user_code),
        started.expires_in_ms / 60_000
    ));
    let deadline =
        Instant::now() + Duration::from_millis(started.expires_in_ms as u64).min(req.timeout);
    let mut interval = started.interval_ms;
    loop {
        // Never asleep past the deadline, whatever interval the server
        // names (RFC 8628 lets it pick one of hours).
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(Duration::from_millis(interval as u64).min(left));
        if Instant::now() >= deadline {
            return Err(login_err(LoginError::Expired));
        }
        let http = poll_request(client, &started, endpoints).map_err(login_err)?;
        let poll = parse_poll(client, &send(warden, &http)?, clock::now_ms()).map_err(login_err)?;
        interval = next_interval(interval, &poll);
        match poll {
            Poll::Pending | Poll::SlowDown => {}
            Poll::Tokens(t) => return Ok(t),
            Poll::Code { code, verifier } => {
                let Some(DeviceDialect::Codex { issuer }) = &client.device else {
                    return Err(Error::Internal(
                        "a device code answer from a non-Codex flow",
                    ));
                };
                let redirect = format!("{}/deviceauth/callback", issuer.trim_end_matches('/'));
                return exchange(warden, client, &code, &verifier, &redirect, "");
            }
        }
    }
}

/// A sign-in started over the API (`POST /v1/credentials/{id}/login`),
/// waiting for the browser to come back to the server's `/oauth/callback`.
#[derive(Debug)]
pub struct PendingLogin {
    /// The credential it signs in again.
    pub id: String,
    /// Its client.
    pub client: LoginClient,
    /// The PKCE verifier (never leaves the server).
    pub verifier: Secret,
    /// The redirect URI sent in the authorize URL.
    pub redirect_uri: String,
    /// The state sent in the authorize URL: the callback's only credential.
    pub state: String,
    /// When it was started (it lives [`PENDING_TTL`]).
    pub started: Instant,
}

/// How long an API sign-in waits for its redirect.
pub const PENDING_TTL: Duration = Duration::from_secs(600);

/// Starts an API sign-in for the `oauth2` credential `id`, whose settings
/// (client id, secret, scope, token URL) it reuses; `flags` may name the
/// issuer or authorize URL (else discovery at the token URL's origin).
/// Returns the authorize URL for the operator's browser.
pub fn begin(
    warden: &Warden,
    id: &str,
    redirect_uri: &str,
    flags: &OAuth2Flags,
) -> Result<(String, PendingLogin)> {
    let stored = warden.get(id)?;
    if stored.provider.kind != crate::credential::ProviderKind::OAuth2 {
        return Err(Error::BadInput(format!(
            "credential '{id}' is a {} credential: only oauth2 credentials sign in over the API \
             (their client registers this server's /oauth/callback); run `{}` instead",
            stored.provider.kind,
            super::login_command(stored.provider.kind, id)
        )));
    }
    crate::provider::check_url(redirect_uri)
        .map_err(|why| Error::BadInput(format!("redirect_uri: {why}")))?;
    let client = oauth2_client(warden, flags, Some(&stored))?;
    let (pkce, state) = (Pkce::from_bytes(&random32()?), state_from(&random32()?));
    let url = authorize_url(&client, redirect_uri, &state, &pkce.challenge);
    Ok((
        url,
        PendingLogin {
            id: id.to_owned(),
            client,
            verifier: pkce.verifier,
            redirect_uri: redirect_uri.to_owned(),
            state,
            started: Instant::now(),
        },
    ))
}

/// Finishes an API sign-in with the callback's request target: the code
/// checked against the pending state, exchanged, and the credential
/// updated through [`Warden::store_login`] (its id kept).
pub fn finish(warden: &Warden, p: &PendingLogin, target: &str) -> Result<(Credential, Stored)> {
    let path = target.split('?').next().unwrap_or(target);
    let code = parse_callback(target, path, &p.state).map_err(callback_err)?;
    let tokens = exchange(
        warden,
        &p.client,
        &code,
        &p.verifier,
        &p.redirect_uri,
        &p.state,
    )?;
    let req = LoginRequest {
        client: p.client.clone(),
        id: Some(p.id.clone()),
        method: Method::Manual,
        timeout: PENDING_TTL,
    };
    store(warden, &req, tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Discovery for a stored token URL tries each path prefix, longest
    /// first, then the origin.
    #[test]
    fn issuers_along_a_token_url() {
        // (token url, candidates)
        let table: [(&str, &[&str]); 3] = [
            (
                "https://kc.example/realms/team/protocol/openid-connect/token",
                &[
                    "https://kc.example/realms/team/protocol/openid-connect",
                    "https://kc.example/realms/team/protocol",
                    "https://kc.example/realms/team",
                    "https://kc.example/realms",
                    "https://kc.example",
                ],
            ),
            ("https://idp.example/token?x=1", &["https://idp.example"]),
            ("not a url", &[]),
        ];
        for (url, want) in table {
            assert_eq!(issuer_candidates(url), want, "{url}");
        }
    }
}
