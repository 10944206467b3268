//! Tuning knobs, their defaults (DESIGN.md §4, §7) and the environment
//! variables that set them.

use std::time::Duration;

use crate::clock::millis as ms;
use crate::error::{Error, Result};
use crate::provider::Endpoints;
use crate::state::Policy;

/// How a [`crate::Warden`] behaves. `Config::default()` has the documented
/// defaults; [`Config::from_env`] applies `TOKENWARDEN_*` overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Whole-request timeout of one token-endpoint attempt.
    pub request_timeout: Duration,
    /// Token-endpoint attempts per refresh.
    pub attempts: u32,
    /// How long a claim on a refresh lasts; must cover every attempt.
    pub lease_ttl: Duration,
    /// Refresh window and cross-refresh backoff.
    pub policy: Policy,
    /// How long a caller waits on someone else's refresh before giving up
    /// (or being served the old token, if it is still usable).
    pub wait: Duration,
    /// Upstream URLs.
    pub endpoints: Endpoints,
    /// How long SQLite waits on a lock held by another connection.
    pub busy_timeout: Duration,
    /// Most connections the pool opens.
    pub pool_size: u32,
    /// How long quota snapshots are kept (the newest always is).
    pub quota_keep: Duration,
    /// The sweep refreshes credentials last refreshed longer ago than this,
    /// so rarely used refresh tokens do not lapse; `None` turns it off.
    pub max_token_age: Option<Duration>,
    /// Codex facade: at most one forced refresh per credential per this.
    pub facade_interval: Duration,
    /// Codex facade: answered tokens live at least this long (more than the
    /// Codex CLI's 5-minute proactive refresh window).
    pub facade_min_ttl: Duration,
    /// A credential whose refreshes have failed for this long gets a
    /// `failing` notification (`TOKENWARDEN_NOTIFY_FAILING_AFTER`).
    pub notify_failing_after: Duration,
    /// Base64 key sealing every secret column (`TOKENWARDEN_ENCRYPTION_KEY`).
    pub encryption_key: Option<crate::secret::Secret>,
    /// Who this process is in event rows (`cli`, `http`, `sweep`, …); the
    /// pid and thread are added per lease.
    pub actor: String,
}

impl Default for Config {
    fn default() -> Self {
        let request_timeout = Duration::from_secs(15);
        let lease_ttl = Duration::from_secs(60);
        Config {
            request_timeout,
            attempts: 3,
            lease_ttl,
            policy: Policy::default(),
            wait: lease_ttl + request_timeout,
            endpoints: Endpoints::default(),
            busy_timeout: Duration::from_secs(10),
            pool_size: 8,
            actor: "lib".into(),
            quota_keep: Duration::from_secs(30 * 86_400),
            max_token_age: Some(Duration::from_secs(7 * 86_400)),
            encryption_key: None,
            facade_interval: Duration::from_secs(30),
            facade_min_ttl: Duration::from_secs(6 * 60),
            notify_failing_after: Duration::from_secs(30 * 60),
        }
    }
}

/// Reads `name` as seconds (fractions allowed), if set.
fn env_secs(name: &str) -> Result<Option<Duration>> {
    let Ok(raw) = std::env::var(name) else {
        return Ok(None);
    };
    parse_secs(&raw)
        .map(Some)
        .ok_or_else(|| Error::Config(format!("{name}={raw:?} is not a number of seconds")))
}

/// Parses a non-negative number of seconds, e.g. `15` or `0.25`.
pub fn parse_secs(raw: &str) -> Option<Duration> {
    let secs: f64 = raw.trim().parse().ok()?;
    (secs.is_finite() && (0.0..1e9).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

impl Config {
    /// The defaults, overridden by `TOKENWARDEN_*` environment variables.
    pub fn from_env() -> Result<Config> {
        let mut c = Config::default();
        if let Some(d) = env_secs("TOKENWARDEN_REQUEST_TIMEOUT")? {
            c.request_timeout = d;
        }
        if let Ok(raw) = std::env::var("TOKENWARDEN_ATTEMPTS") {
            c.attempts = raw.trim().parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                Error::Config(format!(
                    "TOKENWARDEN_ATTEMPTS={raw:?} is not a whole number >= 1"
                ))
            })?;
        }
        if let Some(d) = env_secs("TOKENWARDEN_LEASE_TTL")? {
            c.lease_ttl = d;
        }
        if let Some(d) = env_secs("TOKENWARDEN_BACKOFF_MIN")? {
            c.policy.backoff_min_ms = ms(d);
        }
        if let Some(d) = env_secs("TOKENWARDEN_BACKOFF_MAX")? {
            c.policy.backoff_max_ms = ms(d);
        }
        if let Some(d) = env_secs("TOKENWARDEN_REFRESH_AHEAD")? {
            c.policy.refresh_ahead_ms = ms(d);
        }
        if let Some(d) = env_secs("TOKENWARDEN_BUSY_TIMEOUT")? {
            c.busy_timeout = d;
        }
        if let Some(d) = env_secs("TOKENWARDEN_QUOTA_KEEP")? {
            c.quota_keep = d;
        }
        if let Some(d) = env_secs("TOKENWARDEN_MAX_TOKEN_AGE")? {
            c.max_token_age = (!d.is_zero()).then_some(d);
        }
        if let Some(d) = env_secs("TOKENWARDEN_FACADE_INTERVAL")? {
            c.facade_interval = d;
        }
        if let Some(d) = env_secs("TOKENWARDEN_FACADE_MIN_TTL")? {
            c.facade_min_ttl = d;
        }
        if let Some(d) = env_secs("TOKENWARDEN_NOTIFY_FAILING_AFTER")? {
            c.notify_failing_after = d;
        }
        c.encryption_key = std::env::var("TOKENWARDEN_ENCRYPTION_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty())
            .map(crate::secret::Secret::new);
        c.wait = match env_secs("TOKENWARDEN_WAIT")? {
            Some(d) => d,
            None => c.lease_ttl + c.request_timeout,
        };
        let url = |name: &str, slot: &mut String| {
            if let Ok(v) = std::env::var(name) {
                *slot = v;
            }
        };
        let e = &mut c.endpoints;
        url("TOKENWARDEN_CODEX_TOKEN_URL", &mut e.codex_token);
        url("TOKENWARDEN_CODEX_USAGE_URL", &mut e.codex_usage);
        url("TOKENWARDEN_CLAUDE_TOKEN_URL", &mut e.claude_token);
        url("TOKENWARDEN_CLAUDE_USAGE_URL", &mut e.claude_usage);
        url("TOKENWARDEN_GOOGLE_TOKEN_URL", &mut e.google_token);
        c.validate()?;
        Ok(c)
    }

    /// The longest a refresh can take: every attempt's timeout plus the
    /// linear backoff between them (1 s, 2 s, …).
    pub fn refresh_budget(&self) -> Duration {
        let n = self.attempts.max(1);
        let backoff: u64 = (1..n as u64).sum();
        self.request_timeout * n + Duration::from_secs(backoff)
    }

    /// How much of the lease an attempt leaves for committing its answer:
    /// an attempt starts only if its timeout plus this fits in what is left
    /// of the lease. Two seconds, or the lease's slack over
    /// [`Config::refresh_budget`] if that is less.
    pub fn commit_margin(&self) -> Duration {
        (self.lease_ttl.saturating_sub(self.refresh_budget()) / 4).min(Duration::from_secs(2))
    }

    /// Refuses a configuration under which a lease could run out while its
    /// owner still works, which would let a second refresher in, and
    /// endpoint URLs no request could be sent to (named by their variable:
    /// a process with a bad setting fails alone, at start-up, instead of
    /// failing refreshes of credentials others use).
    pub fn validate(&self) -> Result<()> {
        if self.attempts == 0 {
            return Err(Error::Config("attempts must be at least 1".into()));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::Config("request timeout must be above 0".into()));
        }
        if self.lease_ttl <= self.refresh_budget() {
            return Err(Error::Config(format!(
                "lease TTL ({:?}) must exceed attempts × request timeout + backoff ({:?}); \
                 raise TOKENWARDEN_LEASE_TTL or lower TOKENWARDEN_ATTEMPTS / TOKENWARDEN_REQUEST_TIMEOUT",
                self.lease_ttl,
                self.refresh_budget()
            )));
        }
        if self.policy.backoff_min_ms > self.policy.backoff_max_ms {
            return Err(Error::Config(
                "TOKENWARDEN_BACKOFF_MIN must not exceed TOKENWARDEN_BACKOFF_MAX".into(),
            ));
        }
        if self.pool_size == 0 {
            return Err(Error::Config("pool size must be at least 1".into()));
        }
        if self.lease_ttl > Duration::from_millis(crate::state::MAX_LEASE_MS as u64) {
            return Err(Error::Config(format!(
                "lease TTL ({:?}) must not exceed {} s (TOKENWARDEN_LEASE_TTL)",
                self.lease_ttl,
                crate::state::MAX_LEASE_MS / 1000
            )));
        }
        let e = &self.endpoints;
        for (name, url) in [
            ("TOKENWARDEN_CODEX_TOKEN_URL", &e.codex_token),
            ("TOKENWARDEN_CODEX_USAGE_URL", &e.codex_usage),
            ("TOKENWARDEN_CLAUDE_TOKEN_URL", &e.claude_token),
            ("TOKENWARDEN_CLAUDE_USAGE_URL", &e.claude_usage),
            ("TOKENWARDEN_GOOGLE_TOKEN_URL", &e.google_token),
        ] {
            crate::provider::check_url(url)
                .map_err(|why| Error::Config(format!("{name}: {why}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.refresh_budget(), Duration::from_secs(48));
        assert_eq!(c.wait, Duration::from_secs(75));
    }

    #[test]
    fn a_lease_shorter_than_the_refresh_budget_is_refused() {
        let c = Config {
            lease_ttl: Duration::from_secs(48),
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("TOKENWARDEN_LEASE_TTL"), "{err}");
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_secs("15"), Some(Duration::from_secs(15)));
        assert_eq!(parse_secs("0.25"), Some(Duration::from_millis(250)));
        for bad in ["", "-1", "abc", "NaN", "inf", "1e30"] {
            assert_eq!(parse_secs(bad), None, "{bad}");
        }
    }
}
