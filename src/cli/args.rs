//! The command line's clap definitions: every flag, its help text and its
//! parser, and how the tuning flags override a [`Config`].

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::clock;
use crate::config::{parse_secs, Config};
use crate::error::Result;
use crate::provider::ProviderKind;
use crate::state::State;

/// Keeps OAuth credentials and prints access tokens that work, refreshing
/// each rotating refresh token exactly once across processes.
#[derive(Debug, Parser)]
#[command(name = "tokenwarden", version)]
pub struct Cli {
    /// The database file (created with mode 0600 on first use).
    #[arg(
        long,
        global = true,
        env = "TOKENWARDEN_DB",
        default_value = "tokenwarden.db"
    )]
    pub db: PathBuf,
    /// Tuning overrides.
    #[command(flatten)]
    pub tuning: Tuning,
    /// File holding the base64 key that seals secrets at rest
    /// [env: TOKENWARDEN_ENCRYPTION_KEY].
    #[arg(long, global = true)]
    pub encryption_key_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// This process's command line. `token ID` and `token ID --json`, what
    /// a script runs for every request, are read without clap, whose
    /// command tree (every subcommand, with the global flags copied into
    /// each) costs a one-shot `token` more than its database work; any
    /// other command line, and any variation of those two (another flag,
    /// `--db`, an id that starts with `-`, an empty `TOKENWARDEN_DB`), goes
    /// to clap. `the_token_shortcut_reads_what_clap_reads` keeps the two
    /// in agreement.
    pub fn parse_args() -> Cli {
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let db = std::env::var_os("TOKENWARDEN_DB");
        Cli::token_shortcut(&args, db.as_deref()).unwrap_or_else(Cli::parse)
    }

    /// `args` (without the program name) as clap would read them, if they
    /// are `token ID` or `token ID --json`; `db_env` is `TOKENWARDEN_DB`.
    fn token_shortcut(args: &[OsString], db_env: Option<&OsStr>) -> Option<Cli> {
        let (command, id, json) = match args {
            [command, id] => (command, id, false),
            [command, id, flag] if flag == "--json" => (command, id, true),
            _ => return None,
        };
        if command != "token" {
            return None;
        }
        let id = id
            .to_str()
            .filter(|id| !id.is_empty() && !id.starts_with('-'))?;
        let db = match db_env {
            None => PathBuf::from("tokenwarden.db"),
            Some(path) if !path.is_empty() => PathBuf::from(path),
            Some(_) => return None,
        };
        Some(Cli {
            db,
            tuning: Tuning {
                request_timeout: None,
                attempts: None,
                lease_ttl: None,
                refresh_ahead: None,
                backoff_min: None,
                backoff_max: None,
                wait: None,
            },
            encryption_key_file: None,
            command: Command::Token {
                id: Some(id.to_owned()),
                pool: None,
                sticky: None,
                min_ttl: Duration::ZERO,
                out: JsonFlag { json },
            },
        })
    }
}

/// Overrides of the `TOKENWARDEN_*` tuning variables (seconds).
#[derive(Debug, Args)]
pub struct Tuning {
    /// Timeout of one token-endpoint request [env: TOKENWARDEN_REQUEST_TIMEOUT=15]
    #[arg(long, global = true, value_parser = secs)]
    pub request_timeout: Option<Duration>,
    /// Token-endpoint attempts per refresh [env: TOKENWARDEN_ATTEMPTS=3]
    #[arg(long, global = true)]
    pub attempts: Option<u32>,
    /// Refresh lease length [env: TOKENWARDEN_LEASE_TTL=60]
    #[arg(long, global = true, value_parser = secs)]
    pub lease_ttl: Option<Duration>,
    /// Refresh this long before expiry [env: TOKENWARDEN_REFRESH_AHEAD=300]
    #[arg(long, global = true, value_parser = secs)]
    pub refresh_ahead: Option<Duration>,
    /// First backoff after a failed refresh [env: TOKENWARDEN_BACKOFF_MIN=5]
    #[arg(long, global = true, value_parser = secs)]
    pub backoff_min: Option<Duration>,
    /// Longest backoff after failed refreshes [env: TOKENWARDEN_BACKOFF_MAX=300]
    #[arg(long, global = true, value_parser = secs)]
    pub backoff_max: Option<Duration>,
    /// How long to wait on another process's refresh [env: TOKENWARDEN_WAIT]
    #[arg(long, global = true, value_parser = secs)]
    pub wait: Option<Duration>,
}

fn secs(raw: &str) -> std::result::Result<Duration, String> {
    parse_secs(raw).ok_or_else(|| format!("{raw:?} is not a number of seconds"))
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database (idempotent).
    Init,
    /// Import credentials: tokenwarden JSON, Codex auth.json or CLIProxyAPI
    /// files (auto-detected); '-' reads stdin.
    Import {
        /// Files to import.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The id to store it under (default: from the file, else the e-mail).
        #[arg(long)]
        id: Option<String>,
        /// The provider, where the file does not say.
        #[arg(long, value_parser = provider)]
        provider: Option<ProviderKind>,
        /// Overwrite an existing credential with the same id.
        #[arg(long)]
        replace: bool,
        /// Also add each imported credential to this pool.
        #[arg(long, value_parser = pool_name)]
        pool: Option<String>,
    },
    /// Print a usable access token, refreshing first if needed: of
    /// credential ID, or of the best member of a pool (--pool).
    Token {
        /// Credential id (or --pool).
        #[arg(required_unless_present = "pool", conflicts_with = "pool")]
        id: Option<String>,
        /// The best member of this pool right now (most quota left, least
        /// recently handed out; never dead, rejected or cooling down).
        #[arg(long, value_parser = pool_name)]
        pool: Option<String>,
        /// With --pool: the same member for the same key while it stays usable.
        #[arg(long, requires = "pool")]
        sticky: Option<String>,
        /// The token must stay valid this many more seconds.
        #[arg(long, value_parser = secs, default_value = "0")]
        min_ttl: Duration,
        /// Output format.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Report that upstream answered 401 for a token; prints a different,
    /// fresh one.
    Reject {
        /// Credential id.
        id: String,
        /// The rejected token ('-' reads it from stdin, out of the process list).
        #[arg(long, allow_hyphen_values = true)]
        token: String,
        /// Output format.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Refresh now even if the token is valid, and print the new token.
    Refresh {
        /// Credential id.
        id: String,
        /// Also retry a dead credential, and ignore the backoff.
        #[arg(long)]
        force: bool,
        /// Output format.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// List credentials, in id order (every one, or a page of them).
    List {
        /// At most this many (a page); the next page's `--after` is printed
        /// when more follow (on stderr, or as `next` with --json).
        #[arg(long, value_parser = page_limit)]
        limit: Option<usize>,
        /// Only ids after this one (a page's cursor).
        #[arg(long)]
        after: Option<String>,
        /// Only credentials in this effective state (valid, expiring,
        /// refreshing, rejected, dead).
        #[arg(long, value_parser = state)]
        state: Option<State>,
        /// Only this provider's credentials.
        #[arg(long, value_parser = provider)]
        provider: Option<ProviderKind>,
        /// Only the members of this pool.
        #[arg(long, value_parser = pool_name)]
        pool: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Show one credential.
    Show {
        /// Credential id.
        id: String,
        /// Output format.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Show a credential's state changes.
    Events {
        /// Credential id.
        id: String,
        /// Only the newest N.
        #[arg(long)]
        limit: Option<u32>,
        /// Output format.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Delete a credential (its events stay).
    Delete {
        /// Credential id.
        id: String,
    },
    /// One pass for cron: refresh every credential that is due (and fetch
    /// quota with --quota). Exit 4 if some credential is dead, else 5 if
    /// some refresh failed, else 0.
    Sweep {
        /// Also fetch quota snapshots (Codex, Claude).
        #[arg(long)]
        quota: bool,
        /// Refresh requests in flight at once (on twice as many threads, so
        /// that database writes overlap requests).
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Only these credentials.
        #[arg(long, num_args = 1..)]
        only: Vec<String>,
        /// List every credential, the fresh ones too (without it, only
        /// those refreshed, failed or dead get a line).
        #[arg(long, short)]
        verbose: bool,
        /// Where notifications go; the pending ones are delivered at the
        /// end of the pass.
        #[command(flatten)]
        notify: NotifyArgs,
        /// Output format.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Show a credential's latest quota snapshot (--refresh fetches one now).
    Quota {
        /// Credential id.
        id: String,
        /// Fetch a snapshot now.
        #[arg(long)]
        refresh: bool,
        /// Output format.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Handles for the Codex token-endpoint facade (`POST /oauth/token`).
    #[command(subcommand)]
    Handle(HandleCommand),
    /// Print a new random encryption key (base64) for
    /// TOKENWARDEN_ENCRYPTION_KEY or --encryption-key-file.
    Keygen,
    /// Seal every secret of a plain database with the configured key, in
    /// one transaction (stop other tokenwarden processes first).
    Encrypt,
    /// Re-seal every secret with a new key, in one transaction.
    Rekey {
        /// File holding the new base64 key [env: TOKENWARDEN_NEW_ENCRYPTION_KEY].
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
    /// Copy everything to another database (a SQLite file or a
    /// postgres:// URL), which must be empty; counts are checked after.
    /// Stop the other tokenwarden processes on this database first.
    Migrate {
        /// The target database: a file path or postgres://… URL.
        #[arg(long)]
        to: PathBuf,
    },
    /// Serve the HTTP API (and refresh credentials in the background).
    Serve(ServeArgs),
    /// Sign in (or back in) to a provider and keep the login: codex,
    /// claude, or any oauth2 server.
    Login(LoginArgs),
    /// Pool membership: `pool add ID NAME`, `pool rm ID NAME`.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Cool a credential down (no pool hands it out until then), e.g. after
    /// upstream answered 429 usage_limit_reached; --clear ends it.
    Cooldown {
        /// Credential id.
        id: String,
        /// For this many seconds.
        #[arg(long, value_parser = secs, conflicts_with_all = ["until", "clear"],
              required_unless_present_any = ["until", "clear"])]
        seconds: Option<Duration>,
        /// Until this time (unix seconds or RFC 3339).
        #[arg(long, conflicts_with = "clear")]
        until: Option<String>,
        /// Why (shown in events and summaries).
        #[arg(long, default_value = "cooldown")]
        reason: String,
        /// End the cooldown now.
        #[arg(long)]
        clear: bool,
    },
    /// List the notifications outbox (newest last).
    Notifications {
        /// Only those not delivered yet.
        #[arg(long)]
        pending: bool,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Output format.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Notification targets: `notify test` sends a sample to each.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Write a credential back as a Codex auth.json or CLIProxyAPI file.
    Export {
        /// Credential id.
        id: String,
        /// Output format.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Write to this file (mode 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Codex format only: put a new facade handle with this label in
        /// place of the refresh token (for another machine or container).
        #[arg(long)]
        handle: Option<String>,
    },
}

/// `tokenwarden login PROVIDER …`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// codex, claude or oauth2.
    #[arg(value_parser = provider)]
    pub provider: ProviderKind,
    /// The credential to store it as (default: the account's existing
    /// credential, else its e-mail or account id).
    #[arg(long)]
    pub id: Option<String>,
    /// Print the URL only; do not try to open a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// Listen for the redirect on this loopback port (default: the
    /// provider's registered one, else any free one).
    #[arg(long)]
    pub redirect_port: Option<u16>,
    /// Sign in with the device flow: a code to type in on any device.
    #[arg(long, conflicts_with_all = ["manual", "redirect_port"])]
    pub device: bool,
    /// claude: open the URL anywhere and paste back the `code#state` the
    /// page shows.
    #[arg(long, conflicts_with = "redirect_port")]
    pub manual: bool,
    /// How long to wait for the sign-in, in seconds.
    #[arg(long, value_parser = secs, default_value = "600")]
    pub timeout: Duration,
    /// oauth2: the OpenID issuer (endpoints by discovery; asks for
    /// offline_access with consent).
    #[arg(long)]
    pub issuer: Option<String>,
    /// oauth2: the authorization endpoint.
    #[arg(long)]
    pub authorize_url: Option<String>,
    /// oauth2: the token endpoint.
    #[arg(long)]
    pub token_url: Option<String>,
    /// oauth2: the device authorization endpoint (RFC 8628).
    #[arg(long)]
    pub device_url: Option<String>,
    /// oauth2: the client id (registered with the redirect
    /// http://127.0.0.1/callback, any port).
    #[arg(long)]
    pub client_id: Option<String>,
    /// oauth2: a file holding the client secret (confidential clients).
    #[arg(long)]
    pub client_secret_file: Option<PathBuf>,
    /// oauth2: the scopes, space-separated.
    #[arg(long)]
    pub scope: Option<String>,
}

/// `tokenwarden pool …`.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Add credential ID to pool NAME.
    Add {
        /// Credential id.
        id: String,
        /// Pool name.
        #[arg(value_parser = pool_name)]
        name: String,
    },
    /// Take credential ID out of pool NAME.
    Rm {
        /// Credential id.
        id: String,
        /// Pool name.
        #[arg(value_parser = pool_name)]
        name: String,
    },
}

/// Where notifications go (`serve`, `sweep`, `notify test`).
#[derive(Debug, Args, Clone, Default)]
pub struct NotifyArgs {
    /// POST each notification's JSON here, signed with
    /// TOKENWARDEN_NOTIFY_SECRET [env: TOKENWARDEN_NOTIFY_URL].
    #[arg(long, value_name = "URL")]
    pub notify_url: Option<String>,
    /// Run this command (with sh -c) with each notification's JSON on
    /// stdin [env: TOKENWARDEN_NOTIFY_EXEC].
    #[arg(long, value_name = "CMD")]
    pub notify_exec: Option<String>,
}

/// `tokenwarden notify …`.
#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send a sample notification to every configured target, now.
    Test {
        /// The targets.
        #[command(flatten)]
        targets: NotifyArgs,
    },
}

/// `tokenwarden handle …`.
#[derive(Debug, Subcommand)]
pub enum HandleCommand {
    /// Make a handle for one client of credential ID; printed once.
    Create {
        /// Credential id.
        id: String,
        /// Who the handle is for (a machine, a container…).
        #[arg(long)]
        label: String,
    },
    /// List a credential's handles (never the handles themselves).
    List {
        /// Credential id.
        id: String,
        /// Output format.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Revoke a handle, named by itself or by its id from `handle list`.
    Revoke {
        /// The handle (twh_…) or its 12-digit id.
        #[arg(allow_hyphen_values = true)]
        handle: String,
    },
}

/// `tokenwarden serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; a non-loopback address needs an API key.
    #[arg(long, default_value = "127.0.0.1:8719")]
    pub listen: String,
    /// Worker threads answering requests.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// File with the API key(s), one per line [env: TOKENWARDEN_API_KEY, comma-separated].
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Do not refresh credentials in the background.
    #[arg(long)]
    pub no_refresher: bool,
    /// Worker threads of the background refresher.
    #[arg(long, default_value_t = 4)]
    pub refresher_threads: usize,
    /// Where notifications go (delivered by a background thread).
    #[command(flatten)]
    pub notify: NotifyArgs,
    /// Also answer requests sent to this Host name when no API key is set
    /// (repeatable; loopback names are always answered) [env:
    /// TOKENWARDEN_ALLOW_HOST, comma-separated, adds to these].
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_host: Vec<String>,
    /// Serve HTTPS: PEM certificate chain, the server's certificate first
    /// (needs --tls-key).
    #[arg(
        long,
        value_name = "FILE",
        env = "TOKENWARDEN_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (keep it 0600).
    #[arg(
        long,
        value_name = "FILE",
        env = "TOKENWARDEN_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

impl ServeArgs {
    /// `--tls-cert` and `--tls-key`, when both are given (clap requires
    /// one with the other).
    pub fn tls_files(&self) -> Option<crate::http::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::http::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

/// `--json`.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Export formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// Codex CLI `auth.json`.
    Codex,
    /// CLIProxyAPI auth file.
    Cliproxy,
    /// Claude Code `~/.claude/.credentials.json`.
    ClaudeCode,
    /// Gemini CLI `~/.gemini/oauth_creds.json`.
    Gemini,
}

fn provider(raw: &str) -> std::result::Result<ProviderKind, String> {
    ProviderKind::parse(raw)
        .ok_or_else(|| format!("unknown provider {raw:?}; use codex, claude, google or oauth2"))
}

/// A pool name (the rules of a credential id).
fn pool_name(raw: &str) -> std::result::Result<String, String> {
    crate::credential::validate_pool_name(raw).map(|()| raw.to_owned())
}

/// A page size: a whole number, at least 1 (a page of none would read as
/// "nothing more").
fn page_limit(raw: &str) -> std::result::Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{raw:?} is not a page size; use a whole number from 1"
        )),
    }
}

fn state(raw: &str) -> std::result::Result<State, String> {
    State::parse(raw).ok_or_else(|| {
        format!(
            "unknown state {raw:?}; use one of {}",
            State::ALL.map(State::as_str).join(", ")
        )
    })
}

impl Tuning {
    /// Applies the overrides to `c` and checks the result.
    pub(super) fn apply(&self, c: &mut Config) -> Result<()> {
        if let Some(d) = self.request_timeout {
            c.request_timeout = d;
        }
        if let Some(n) = self.attempts {
            c.attempts = n;
        }
        if let Some(d) = self.lease_ttl {
            c.lease_ttl = d;
        }
        let ms = clock::millis;
        if let Some(d) = self.backoff_min {
            c.policy.backoff_min_ms = ms(d);
        }
        if let Some(d) = self.backoff_max {
            c.policy.backoff_max_ms = ms(d);
        }
        if let Some(d) = self.refresh_ahead {
            c.policy.refresh_ahead_ms = ms(d);
        }
        match self.wait {
            Some(d) => c.wait = d,
            // The wait follows the lease unless set: a caller blocked behind
            // a crashed owner must live long enough to take over.
            None if std::env::var_os("TOKENWARDEN_WAIT").is_none() => {
                c.wait = c.lease_ttl + c.request_timeout;
            }
            None => {}
        }
        c.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// The shortcut takes exactly what it should, and reads it as clap
    /// does (same `Cli`, compared whole through its Debug form).
    #[test]
    fn the_token_shortcut_reads_what_clap_reads() {
        let env = std::env::var_os("TOKENWARDEN_DB");
        for args in [
            &["token", "me@example.com"][..],
            &["token", "a", "--json"],
            &["token", "help"],
            &["token", "an id with spaces"],
            &["token", "token"],
        ] {
            let fast = Cli::token_shortcut(&os(args), env.as_deref())
                .unwrap_or_else(|| panic!("{args:?} not taken"));
            let clap =
                Cli::try_parse_from(std::iter::once("tokenwarden").chain(args.iter().copied()))
                    .unwrap();
            assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{args:?}");
        }
        for args in [
            &[][..],
            &["token"],
            &["token", "-x"],
            &["token", "--", "a"],
            &["token", "--json", "a"],
            &["token", "a", "--min-ttl", "5"],
            &["token", "a", "--json", "--json"],
            &["token", "a", "--db", "x.db"],
            &["--db", "x.db", "token", "a"],
            &["token", ""],
            &["show", "a"],
            &["reject", "a", "--json"],
        ] {
            assert!(
                Cli::token_shortcut(&os(args), env.as_deref()).is_none(),
                "{args:?} taken"
            );
        }
        let not_utf8 = vec![
            OsString::from("token"),
            OsString::from_vec(vec![b'a', 0xff]),
        ];
        assert!(Cli::token_shortcut(&not_utf8, None).is_none());
    }

    /// `TOKENWARDEN_DB` as clap reads it: the default when unset, the path
    /// when set, and clap's own error when empty.
    #[test]
    fn the_token_shortcut_takes_the_database_from_the_environment() {
        let args = os(&["token", "a"]);
        let db =
            |env: Option<&str>| Cli::token_shortcut(&args, env.map(OsStr::new)).map(|cli| cli.db);
        assert_eq!(db(None), Some(PathBuf::from("tokenwarden.db")));
        assert_eq!(
            db(Some("/var/lib/tw.db")),
            Some(PathBuf::from("/var/lib/tw.db"))
        );
        assert_eq!(db(Some("")), None);
    }
}
