//! The HTTP client shell: sends a request the providers built and hands
//! back the answer (capped) or a classified transport failure.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::provider::{Failure, HttpRequest, HttpResponse};

/// Most bytes of an upstream answer that are read; a token answer is a few
/// KiB, so anything larger is garbage and is not buffered.
pub const BODY_CAP: u64 = 256 * 1024;

/// Idle connections kept for reuse, per host and in all: as many as a sweep
/// of the largest sensible `--concurrency` has requests in flight.
const MAX_IDLE: usize = 64;

/// A limit on upstream requests in flight at once, shared by the threads
/// of one job (the sweep's `--concurrency`): a request is sent only with a
/// slot taken ([`RequestSlots::take`]), and its slot is given back when its
/// answer is in, before the answer is committed. So more threads than
/// slots can run the whole refresh protocol — read, claim, request, commit
/// — while no more than `limit` requests are ever in flight: one thread's
/// claim and commit overlap another's request instead of holding its
/// slot idle.
#[derive(Debug)]
pub struct RequestSlots {
    free: Mutex<usize>,
    freed: Condvar,
}

/// A taken slot of [`RequestSlots`]; given back when dropped.
#[derive(Debug)]
pub struct RequestSlot<'a>(&'a RequestSlots);

impl RequestSlots {
    /// `limit` slots (at least one).
    pub fn new(limit: usize) -> RequestSlots {
        RequestSlots {
            free: Mutex::new(limit.max(1)),
            freed: Condvar::new(),
        }
    }

    /// Waits for a free slot and takes it.
    pub fn take(&self) -> RequestSlot<'_> {
        let mut free = self.free.lock();
        while *free == 0 {
            self.freed.wait(&mut free);
        }
        *free -= 1;
        RequestSlot(self)
    }
}

impl Drop for RequestSlot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock() += 1;
        self.0.freed.notify_one();
    }
}

/// A pooled HTTP client that never follows redirects. Its agent is built
/// on the first request (a process that serves stored tokens never sends
/// one); clones share it and its connection pool.
#[derive(Debug, Clone)]
pub struct Upstream {
    agent: Arc<OnceLock<ureq::Agent>>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream::new()
    }
}

impl Upstream {
    /// A client with keep-alive, no redirects, and statuses returned as
    /// answers rather than errors.
    pub fn new() -> Upstream {
        Upstream {
            agent: Arc::new(OnceLock::new()),
        }
    }

    fn agent(&self) -> &ureq::Agent {
        self.agent.get_or_init(|| {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                // ureq keeps 3 idle connections per host by default: with
                // more requests than that in flight to one token endpoint
                // (a sweep's --concurrency), every other request would open
                // a new connection (and TLS session) and close it after.
                .max_idle_connections(MAX_IDLE)
                .max_idle_connections_per_host(MAX_IDLE)
                .user_agent(concat!("tokenwarden/", env!("CARGO_PKG_VERSION")))
                .build()
                .into()
        })
    }

    /// Sends `req`, giving up after `timeout` in all.
    ///
    /// A failure says whether the request may have reached upstream: a
    /// timeout after sending is *ambiguous* (the token may have rotated
    /// there), a refused connection is not.
    pub fn send(&self, req: &HttpRequest, timeout: Duration) -> Result<HttpResponse, Failure> {
        let result = match req.method {
            "GET" => {
                let mut b = self.agent().get(&req.url);
                for (k, v) in &req.headers {
                    b = b.header(k, v);
                }
                b.config().timeout_global(Some(timeout)).build().call()
            }
            _ => {
                let mut b = self.agent().post(&req.url);
                for (k, v) in &req.headers {
                    b = b.header(k, v);
                }
                b.config()
                    .timeout_global(Some(timeout))
                    .build()
                    .send(&req.body[..])
            }
        };
        let mut resp = result.map_err(classify)?;
        let status = resp.status().as_u16();
        if (300..400).contains(&status) {
            // Never followed: re-sending a refresh token to wherever a
            // redirect points could hand it to a stranger or spend it twice.
            // The target may quote what was sent (a refresh token in its
            // path): everything the request carried is scrubbed from it.
            let sent = req.secrets();
            let sent: Vec<&str> = sent.iter().map(String::as_str).collect();
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(|l| shown_location(l, &sent));
            return Err(redirect_failure(status, location.as_deref()));
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .body_mut()
            .with_config()
            .limit(BODY_CAP)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => Failure {
                    status: Some(status),
                    ..Failure::transient(
                        "response_too_large",
                        format!(
                            "upstream answered HTTP {status} with a body over {BODY_CAP} bytes"
                        ),
                    )
                },
                other => Failure {
                    status: Some(status),
                    ..classify(other)
                },
            })?;
        Ok(HttpResponse {
            status,
            retry_after,
            body,
        })
    }
}

/// The most of a redirect's target shown in a message.
const MAX_LOCATION_CHARS: usize = 120;

/// A redirect target fit for a message: no query or fragment (they may
/// carry secrets), `sent` (what the request carried) and token-looking
/// runs scrubbed, printable ASCII, capped.
fn shown_location(raw: &str, sent: &[&str]) -> String {
    let bare = raw.split(['?', '#']).next().unwrap_or_default();
    // Per path segment: `scrub` counts '/' as a token character.
    let scrubbed = bare
        .split('/')
        .map(|seg| crate::provider::scrub(&crate::provider::percent_unescape(seg), sent))
        .collect::<Vec<_>>()
        .join("/");
    let mut shown: String = scrubbed
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .take(MAX_LOCATION_CHARS)
        .collect();
    if scrubbed.chars().count() > MAX_LOCATION_CHARS {
        shown.push_str("...");
    }
    shown
}

/// The failure for a 3xx answer: transient (nothing was processed, the
/// credential is fine) but named, since it usually means a wrong URL.
fn redirect_failure(status: u16, location: Option<&str>) -> Failure {
    let target = match location {
        Some(l) if !l.is_empty() => format!(" redirecting to {l}"),
        _ => " (a redirect without a Location)".to_owned(),
    };
    Failure {
        status: Some(status),
        ..Failure::transient(
            "redirect",
            format!(
                "upstream answered HTTP {status}{target}; redirects are not followed \
                 for token and usage requests: check the configured URL"
            ),
        )
    }
}

/// Names a transport error, separating "never reached upstream" from
/// "may have been processed upstream".
fn classify(e: ureq::Error) -> Failure {
    use ureq::Timeout as T;
    let (code, text) = match &e {
        ureq::Error::Timeout(T::Resolve | T::Connect) => {
            ("connect_timeout", "could not connect to upstream in time")
        }
        ureq::Error::Timeout(_) => (
            "timeout_after_send",
            "upstream did not answer in time; the request may have been processed (ambiguous)",
        ),
        ureq::Error::HostNotFound => ("dns_failed", "upstream host not found"),
        ureq::Error::ConnectionFailed => ("connect_failed", "could not connect to upstream"),
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::AddrNotAvailable
            | std::io::ErrorKind::NotFound => ("connect_failed", "could not connect to upstream"),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => (
                "timeout_after_send",
                "upstream did not answer in time; the request may have been processed (ambiguous)",
            ),
            _ => (
                "connection_lost",
                "the connection to upstream broke; the request may have been processed (ambiguous)",
            ),
        },
        ureq::Error::Protocol(_) => (
            "bad_response",
            "upstream's answer was not valid HTTP; the request may have been processed (ambiguous)",
        ),
        // The request was sent; only the answer's head was unreadable.
        ureq::Error::LargeResponseHeader(..) => (
            "bad_response",
            "upstream's answer headers were too large; the request may have been processed \
             (ambiguous)",
        ),
        ureq::Error::Decompress(..) => (
            "bad_response",
            "upstream's compressed answer could not be decoded; the request may have been \
             processed (ambiguous)",
        ),
        _ => ("transport_error", "talking to upstream failed"),
    };
    // ureq's own messages name the host but no secret; keep them for context.
    Failure::transient(code, format!("{text}: {e}"))
}

/// Whether a failure may have reached upstream and consumed the token.
pub fn is_ambiguous(f: &Failure) -> bool {
    matches!(
        f.code.as_str(),
        "timeout_after_send" | "connection_lost" | "bad_response"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More threads than slots: never more holders than slots at once, and
    /// every thread gets its turns.
    #[test]
    fn request_slots_are_never_held_by_more_than_their_limit() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let slots = RequestSlots::new(3);
        let (now, most, done) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let _slot = slots.take();
                        let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(held, Ordering::SeqCst);
                        std::thread::yield_now();
                        now.fetch_sub(1, Ordering::SeqCst);
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(done.load(Ordering::SeqCst), 400);
        assert!(most.load(Ordering::SeqCst) <= 3, "{most:?}");
        assert_eq!(*slots.free.lock(), 3, "every slot given back");
        assert_eq!(*RequestSlots::new(0).free.lock(), 1, "at least one slot");
    }

    #[test]
    fn a_redirect_target_is_shown_without_query_or_secrets() {
        let shown = shown_location(
            "https://auth.example.com/oauth/token?refresh_token=abc#frag",
            &[],
        );
        assert_eq!(shown, "https://auth.example.com/oauth/token");
        let shown = shown_location("https://x.example/eyJhbGciOiJSUzI1NiJ9abc123def456/t", &[]);
        assert_eq!(shown, "https://x.example/***/t");
        let long = format!("https://x.example/{}", "a/".repeat(200));
        assert!(shown_location(&long, &[]).len() <= MAX_LOCATION_CHARS + 3);
        assert_eq!(shown_location("http://h/\u{1b}[31m", &[]), "http://h/?[31m");
        // A piece of what was sent, percent-encoded or not.
        let sent = ["rt-0123456789abcdefghij"];
        assert_eq!(
            shown_location("https://h/denied/rt-0123456789ab/x", &sent),
            "https://h/denied/***/x"
        );
        assert_eq!(
            shown_location("https://h/denied/rt%2D0123456789ab/x", &sent),
            "https://h/denied/***/x"
        );
    }

    #[test]
    fn a_redirect_is_a_named_transient_failure() {
        let f = redirect_failure(307, Some("http://127.0.0.1:9/oauth/token"));
        assert_eq!(f.code, "redirect");
        assert_eq!(f.permanence, crate::provider::Permanence::Transient);
        assert_eq!(f.status, Some(307));
        assert!(f
            .message
            .contains("307 redirecting to http://127.0.0.1:9/oauth/token"));
        assert!(!is_ambiguous(&f), "a redirect was not processed");
        let f = redirect_failure(302, None);
        assert!(f.message.contains("without a Location"), "{}", f.message);
    }
}
