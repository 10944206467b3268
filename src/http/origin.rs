//! Who may talk to the API from a browser: the `Host` and `Origin` checks
//! made before routing on every path but `GET /healthz` (DESIGN.md §7).
//!
//! DNS rebinding: a web page at `rebind.attacker.example` points that name
//! at 127.0.0.1 once loaded, and its scripts then talk to tokenwarden on
//! loopback as their own origin — the browser sends `Host:
//! rebind.attacker.example`. Without an API key nothing else stops them
//! reading tokens, so without a key only loopback names are answered:
//! `localhost`, 127.0.0.0/8 and `[::1]` (any port), plus the names given
//! with `--allow-host` / `TOKENWARDEN_ALLOW_HOST`. With a key, a page
//! cannot authenticate, so any `Host` is answered (the server may well be
//! reached by a DNS name).
//!
//! Cross-origin pages: whatever the key, a request whose `Origin` header is
//! present and is not the server's own origin (`http[s]://` + the `Host` it
//! was sent to) is refused. Non-browser clients send no `Origin`.
//!
//! No `Host` header at all: an HTTP/1.1 request without one is malformed
//! (RFC 9112 §3.2) and gets 400. An HTTP/1.0 request may lack it; no
//! browser sends one, so it is answered as if sent to a loopback name.

use crate::provider::{is_loopback_host, url_host};

use super::response::ApiError;

/// The environment variable naming extra accepted `Host` names,
/// comma-separated (the `--allow-host` flag adds to it).
pub const ALLOW_HOST_ENV: &str = "TOKENWARDEN_ALLOW_HOST";

/// The names of `--allow-host` plus those of [`ALLOW_HOST_ENV`]
/// (comma-separated; blanks ignored).
pub(crate) fn allowed_hosts(flags: &[String]) -> Vec<String> {
    let env = std::env::var(ALLOW_HOST_ENV).unwrap_or_default();
    flags
        .iter()
        .map(String::as_str)
        .chain(env.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The `Host` and `Origin` rules of one server.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostPolicy {
    /// An API key is configured: any `Host` is answered.
    pub any_host: bool,
    /// Extra names accepted as `Host` (lower-case, no port, no trailing dot).
    pub allowed: Vec<String>,
    /// The server speaks TLS: its own origin is `https://…`.
    pub tls: bool,
}

/// What the checks need from a request.
pub(crate) struct Seen<'a> {
    /// Whether the request line says HTTP/1.0 (or older).
    pub http_1_0: bool,
    /// Every `Host` header value.
    pub hosts: &'a [&'a str],
    /// Every `Origin` header value.
    pub origins: &'a [&'a str],
}

/// Client-supplied text fit for an error message: printable ASCII, short.
fn shown(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .take(64)
        .collect();
    if s.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

/// A host name as compared: lower-case, without a trailing dot.
pub(crate) fn normalize_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `host[:port]` with the scheme's default port dropped, lower-cased.
fn authority_key(authority: &str, tls: bool) -> String {
    let a = authority.to_ascii_lowercase();
    let default = if tls { ":443" } else { ":80" };
    match a.strip_suffix(default) {
        Some(bare) => bare.to_owned(),
        None => a,
    }
}

impl HostPolicy {
    /// A policy from the server's settings; `allowed` names are
    /// normalised and empty ones dropped.
    pub(crate) fn new<I, S>(any_host: bool, allowed: I, tls: bool) -> HostPolicy
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        HostPolicy {
            any_host,
            allowed: allowed
                .into_iter()
                .map(|n| normalize_name(n.as_ref()))
                .filter(|n| !n.is_empty())
                .collect(),
            tls,
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = normalize_name(host);
        self.any_host || is_loopback_host(&name) || self.allowed.contains(&name)
    }

    /// Checks a request's `Host` and `Origin`: `Err` is the answer (400
    /// `bad_request`, 403 `forbidden_host` or 403 `forbidden_origin`).
    pub(crate) fn check(&self, rq: &Seen) -> Result<(), ApiError> {
        let host = match rq.hosts {
            [] if rq.http_1_0 => None,
            [] => {
                return Err(ApiError::bad_request(
                    "an HTTP/1.1 request needs a Host header",
                ))
            }
            [one] => Some(one.trim()),
            _ => return Err(ApiError::bad_request("more than one Host header")),
        };
        if let Some(h) = host {
            let name = url_host(h).ok_or_else(|| {
                ApiError::bad_request(format!("malformed Host header {:?}", shown(h)))
            })?;
            if !self.host_allowed(name) {
                return Err(ApiError::new(
                    403,
                    "forbidden_host",
                    format!(
                        "Host {:?} is not a name of this server: without an API key it answers \
                         only to localhost, 127.0.0.1 and [::1] (a defence against DNS \
                         rebinding); add the name with --allow-host NAME or \
                         {ALLOW_HOST_ENV}, or configure an API key",
                        shown(name)
                    ),
                ));
            }
        }
        let origin = match rq.origins {
            [] => return Ok(()),
            [one] => one.trim(),
            _ => return Err(forbidden_origin("more than one Origin header")),
        };
        let scheme = if self.tls { "https://" } else { "http://" };
        let own = host.is_some_and(|h| {
            origin
                .get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
                && authority_key(&origin[scheme.len()..], self.tls) == authority_key(h, self.tls)
        });
        if own {
            return Ok(());
        }
        Err(forbidden_origin(&format!(
            "Origin {:?} is not this server's own origin",
            shown(origin)
        )))
    }
}

fn forbidden_origin(what: &str) -> ApiError {
    ApiError::new(
        403,
        "forbidden_origin",
        format!(
            "{what}: requests from other web pages are refused (use a client that sends \
             no Origin header, or this server's own origin)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(p: &HostPolicy, http_1_0: bool, hosts: &[&str], origins: &[&str]) -> &'static str {
        match p.check(&Seen {
            http_1_0,
            hosts,
            origins,
        }) {
            Ok(()) => "ok",
            Err(e) => e.code,
        }
    }

    #[test]
    fn without_a_key_only_loopback_names_are_answered() {
        let p = HostPolicy::new(false, ["Tw.Example.", ""], false);
        assert_eq!(p.allowed, ["tw.example"]);
        let table = [
            ("127.0.0.1:8719", "ok"),
            ("127.0.0.1", "ok"),
            ("127.1.2.3:1", "ok"),
            ("localhost:8719", "ok"),
            ("LOCALHOST", "ok"),
            ("localhost.", "ok"),
            ("[::1]:8719", "ok"),
            ("[::1]", "ok"),
            ("tw.example:443", "ok"),
            ("TW.EXAMPLE", "ok"),
            ("rebind.attacker.example", "forbidden_host"),
            ("rebind.attacker.example:8719", "forbidden_host"),
            ("localhost.attacker.example", "forbidden_host"),
            ("127.0.0.1.nip.io", "forbidden_host"),
            ("sub.tw.example", "forbidden_host"),
            ("0.0.0.0:8719", "forbidden_host"),
            ("[::]:8719", "forbidden_host"),
            ("10.0.0.1", "forbidden_host"),
            ("", "bad_request"),
            ("a b", "bad_request"),
            ("user@127.0.0.1", "bad_request"),
            ("127.0.0.1:99999", "bad_request"),
            ("[::1", "bad_request"),
        ];
        for (host, want) in table {
            assert_eq!(verdict(&p, false, &[host], &[]), want, "{host:?}");
        }
        // With a key, any well-formed name.
        let keyed = HostPolicy::new(true, Vec::<String>::new(), false);
        assert_eq!(
            verdict(&keyed, false, &["rebind.attacker.example"], &[]),
            "ok"
        );
        assert_eq!(verdict(&keyed, false, &["a b"], &[]), "bad_request");
    }

    #[test]
    fn missing_or_repeated_host_headers() {
        let p = HostPolicy::default();
        assert_eq!(verdict(&p, false, &[], &[]), "bad_request");
        assert_eq!(verdict(&p, true, &[], &[]), "ok", "HTTP/1.0 may omit Host");
        assert_eq!(
            verdict(&p, true, &[], &["http://127.0.0.1:8719"]),
            "forbidden_origin",
            "no Host: no origin can be ours"
        );
        assert_eq!(
            verdict(&p, false, &["127.0.0.1", "localhost"], &[]),
            "bad_request"
        );
    }

    #[test]
    fn only_the_servers_own_origin_is_answered() {
        let plain = HostPolicy::new(true, Vec::<String>::new(), false);
        let tls = HostPolicy::new(true, Vec::<String>::new(), true);
        // (policy, host, origin, verdict)
        let table = [
            (&plain, "127.0.0.1:8719", "http://127.0.0.1:8719", "ok"),
            (&plain, "LocalHost:8719", "HTTP://localhost:8719", "ok"),
            (&plain, "tw.example", "http://tw.example:80", "ok"),
            (&plain, "tw.example:80", "http://tw.example", "ok"),
            (&tls, "tw.example", "https://tw.example", "ok"),
            (&tls, "tw.example:443", "https://tw.example", "ok"),
            (
                &plain,
                "127.0.0.1:8719",
                "http://127.0.0.1:8720",
                "forbidden_origin",
            ),
            (
                &plain,
                "127.0.0.1:8719",
                "http://localhost:8719",
                "forbidden_origin",
            ),
            (
                &plain,
                "127.0.0.1:8719",
                "https://127.0.0.1:8719",
                "forbidden_origin",
            ),
            (&tls, "tw.example", "http://tw.example", "forbidden_origin"),
            (
                &plain,
                "127.0.0.1:8719",
                "http://evil.example",
                "forbidden_origin",
            ),
            (&plain, "127.0.0.1:8719", "null", "forbidden_origin"),
            (&plain, "127.0.0.1:8719", "", "forbidden_origin"),
            (
                &plain,
                "127.0.0.1:8719",
                "http://127.0.0.1:8719/path",
                "forbidden_origin",
            ),
        ];
        for (p, host, origin, want) in table {
            assert_eq!(
                verdict(p, false, &[host], &[origin]),
                want,
                "{host} {origin}"
            );
        }
        assert_eq!(
            verdict(
                &plain,
                false,
                &["127.0.0.1"],
                &["http://127.0.0.1", "http://127.0.0.1"]
            ),
            "forbidden_origin"
        );
    }

    #[test]
    fn messages_show_client_text_safely() {
        let p = HostPolicy::default();
        let e = p
            .check(&Seen {
                http_1_0: false,
                hosts: &["evil.example"],
                origins: &[],
            })
            .unwrap_err();
        assert_eq!(e.status, 403);
        assert!(e.message.contains("evil.example") && e.message.contains("--allow-host"));
        let long = format!("http://{}\u{1b}", "a".repeat(100));
        let e = HostPolicy::new(true, Vec::<String>::new(), false)
            .check(&Seen {
                http_1_0: false,
                hosts: &["localhost"],
                origins: &[&long],
            })
            .unwrap_err();
        assert!(
            !e.message.contains('\u{1b}') && e.message.len() < 300,
            "{}",
            e.message
        );
    }
}
