//! Delivering the outbox: take the due notifications under a hold, send
//! each to every configured target (an HTTP POST signed with HMAC-SHA-256,
//! and/or a command with the JSON on stdin), and record what came of it —
//! delivered, retry later with backoff, or given up. At least once: a row
//! is marked delivered only after every target took it, and a deliverer
//! that dies leaves a hold that runs out, so a notification written before
//! a crash is delivered after the restart. Runs on `serve`'s background
//! thread and at the end of `sweep`, never on a path that serves tokens.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock;
use crate::error::{Error, Result};
use crate::provider::{check_url, HttpRequest};
use crate::secret::Secret;
use crate::warden::Warden;
use crate::{Delivery, Notice};

/// Where notifications go.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// POST the JSON here (`--notify-url`, `TOKENWARDEN_NOTIFY_URL`).
    pub url: Option<String>,
    /// Run this with `sh -c`, the JSON on stdin (`--notify-exec`,
    /// `TOKENWARDEN_NOTIFY_EXEC`).
    pub exec: Option<String>,
    /// Signs each POST's body (`TOKENWARDEN_NOTIFY_SECRET`).
    pub secret: Option<Secret>,
    /// How long one attempt at one target may take
    /// (`TOKENWARDEN_NOTIFY_TIMEOUT`, default 10 s).
    pub timeout: Duration,
    /// The first pause after a failed attempt, doubling up to an hour
    /// (`TOKENWARDEN_NOTIFY_RETRY_MIN`, default 5 s).
    pub retry_min: Duration,
}

/// How long one attempt may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The first pause after a failed attempt by default.
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_secs(5);

impl Targets {
    /// The targets given by flags, else by `TOKENWARDEN_NOTIFY_URL` /
    /// `TOKENWARDEN_NOTIFY_EXEC`; the secret from
    /// `TOKENWARDEN_NOTIFY_SECRET`. The URL is checked like a token URL
    /// (`https://`, or `http://` to a loopback host).
    pub fn from_flags(url: Option<String>, exec: Option<String>) -> Result<Targets> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let url = url.or_else(|| env("TOKENWARDEN_NOTIFY_URL"));
        if let Some(u) = &url {
            check_url(u).map_err(|e| Error::Config(format!("--notify-url: {e}")))?;
        }
        let secs = |name: &str, default: Duration| -> Result<Duration> {
            match env(name) {
                None => Ok(default),
                Some(raw) => crate::config::parse_secs(&raw)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        Error::Config(format!("{name}={raw:?} is not a number of seconds above 0"))
                    }),
            }
        };
        Ok(Targets {
            url,
            exec: exec.or_else(|| env("TOKENWARDEN_NOTIFY_EXEC")),
            secret: env("TOKENWARDEN_NOTIFY_SECRET").map(Secret::new),
            timeout: secs("TOKENWARDEN_NOTIFY_TIMEOUT", DEFAULT_TIMEOUT)?,
            retry_min: secs("TOKENWARDEN_NOTIFY_RETRY_MIN", DEFAULT_RETRY_MIN)?,
        })
    }

    /// Whether any target is configured.
    pub fn any(&self) -> bool {
        self.url.is_some() || self.exec.is_some()
    }
}

/// Sends one notification to every target: `Err` with what failed (never
/// a secret) if any did.
pub fn send(warden: &Warden, targets: &Targets, n: &Notice) -> std::result::Result<(), String> {
    let mut errors = Vec::new();
    if let Some(url) = &targets.url {
        if let Err(e) = post(warden, targets, url, n) {
            errors.push(e);
        }
    }
    if let Some(cmd) = &targets.exec {
        if let Err(e) = exec(cmd, targets.timeout, n) {
            errors.push(e);
        }
    }
    match errors.is_empty() {
        true => Ok(()),
        false => Err(errors.join("; ")),
    }
}

fn post(
    warden: &Warden,
    targets: &Targets,
    url: &str,
    n: &Notice,
) -> std::result::Result<(), String> {
    let body = n.payload.as_bytes().to_vec();
    let mut headers = vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("X-Tokenwarden-Event".to_owned(), n.event_id.clone()),
    ];
    if let Some(secret) = &targets.secret {
        headers.push((
            super::SIGNATURE_HEADER.to_owned(),
            super::signature(secret.expose().as_bytes(), &body),
        ));
    }
    let request = HttpRequest {
        method: "POST",
        url: url.to_owned(),
        headers,
        body,
    };
    match warden.upstream().send(&request, targets.timeout) {
        Ok(resp) if (200..300).contains(&resp.status) => Ok(()),
        Ok(resp) => Err(format!("the receiver answered HTTP {}", resp.status)),
        Err(f) => Err(format!("the receiver could not be reached ({})", f.code)),
    }
}

fn exec(cmd: &str, timeout: Duration, n: &Notice) -> std::result::Result<(), String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("TOKENWARDEN_EVENT_ID", &n.event_id)
        .env("TOKENWARDEN_EVENT_KIND", &n.kind)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("--notify-exec could not start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is its own business.
        let _ = stdin.write_all(n.payload.as_bytes());
    }
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("--notify-exec exited with {status}")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "--notify-exec ran past {} s; killed",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("--notify-exec: {e}")),
        }
    }
}

/// What one pass of [`deliver_due`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Delivered to every target.
    pub delivered: usize,
    /// Failed; tried again later.
    pub retried: usize,
    /// Failed for the last time.
    pub given_up: usize,
}

/// Notifications taken per round.
const BATCH: u32 = 4;

/// Delivers the notifications due now, in rounds, until none is due or
/// `budget` is spent (a round already started finishes) or `stop` is set
/// (the attempt under way finishes; the rows of the round not yet tried
/// are handed back, due at once, for the next deliverer). Nothing is
/// taken without a target.
pub fn deliver_due(
    warden: &Warden,
    targets: &Targets,
    budget: Duration,
    stop: &AtomicBool,
) -> Result<Report> {
    let mut report = Report::default();
    if !targets.any() {
        return Ok(report);
    }
    let started = Instant::now();
    // Long enough for every target of every row of a round to time out.
    let hold_ms = clock::millis(targets.timeout * 2 * BATCH) + 2_000;
    while started.elapsed() < budget && !stop.load(Ordering::Relaxed) {
        let now = clock::now_ms();
        let due = warden.take_notifications(now, now + hold_ms, BATCH)?;
        if due.is_empty() {
            break;
        }
        for row in due {
            if stop.load(Ordering::Relaxed) {
                let now = clock::now_ms();
                let back = Delivery::Retry {
                    at_ms: now,
                    error: "not tried: the deliverer stopped",
                };
                warden.notification_delivered(&row.notice.event_id, back, now)?;
                continue;
            }
            let outcome = send(warden, targets, &row.notice);
            let now = clock::now_ms();
            let delivery = match &outcome {
                Ok(()) => Delivery::Delivered,
                Err(e) => {
                    match super::retry_delay_ms(row.attempts, clock::millis(targets.retry_min)) {
                        Some(ms) => Delivery::Retry {
                            at_ms: now + ms,
                            error: e,
                        },
                        None => Delivery::GiveUp { error: e },
                    }
                }
            };
            match delivery {
                Delivery::Delivered => report.delivered += 1,
                Delivery::Retry { .. } => report.retried += 1,
                Delivery::GiveUp { .. } => report.given_up += 1,
            }
            if let Err(e) = &outcome {
                log::warn!(
                    "notification {} ({}) not delivered (attempt {}): {e}",
                    row.notice.event_id,
                    row.notice.kind,
                    row.attempts
                );
            }
            warden.notification_delivered(&row.notice.event_id, delivery, now)?;
            warden.metrics().notification(match delivery {
                Delivery::Delivered => "delivered",
                _ => "failed",
            });
        }
    }
    Ok(report)
}

/// How often the background deliverer looks at the outbox.
pub const POLL: Duration = Duration::from_secs(1);

/// `serve`'s background notifier: a thread that, every [`POLL`] until
/// `stop` is set, ends the cooldowns that are over and delivers what is
/// due. A receiver that is down or hangs holds up only this thread.
pub fn start_worker(
    warden: Arc<Warden>,
    targets: Targets,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tw-notify".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = warden.clear_ended_cooldowns() {
                    log::warn!("ending cooldowns: {e}");
                }
                if let Err(e) = deliver_due(&warden, &targets, Duration::from_secs(30), &stop) {
                    log::warn!("notification delivery: {e}");
                }
                let mut slept = Duration::ZERO;
                while slept < POLL && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    slept += Duration::from_millis(50);
                }
            }
        })
}
