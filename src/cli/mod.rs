//! The `tokenwarden` command line (DESIGN.md §5): parse, open the database
//! the CLI names, call the library, print. Every error ends as one line on
//! stderr and an exit code of [`Error::exit_code`].

use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use std::io::IsTerminal;

use crate::clock::{self, now_ms};
use crate::config::{parse_secs, Config};
use crate::error::{Error, Result};
use crate::facade;
use crate::import::{self, ImportOptions};
use crate::provider::ProviderKind;
use crate::quota;
use crate::seal::Sealer;
use crate::secret::Secret;
use crate::state::State;
use crate::sweep::{self, SweepOptions, SweepReport};
use crate::view::{
    EventList, EventView, HandleView, QuotaView, Summary, SummaryList, TokenResponse,
};
use crate::warden::{Grant, Warden};

mod serve;

pub use serve::run_serve;

/// Most bytes read from one import file or stdin.
const MAX_IMPORT: u64 = 1 << 20;

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

fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
    },
    /// Print a usable access token, refreshing first if needed.
    Token {
        /// Credential id.
        id: String,
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
    /// List credentials.
    List {
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
        /// Worker threads.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Only these credentials.
        #[arg(long, num_args = 1..)]
        only: Vec<String>,
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
    /// Serve the HTTP API (and refresh credentials in the background).
    Serve(ServeArgs),
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
}

fn provider(raw: &str) -> std::result::Result<ProviderKind, String> {
    ProviderKind::parse(raw)
        .ok_or_else(|| format!("unknown provider {raw:?}; use codex, claude, google or oauth2"))
}

impl Tuning {
    fn apply(&self, c: &mut Config) -> Result<()> {
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

/// Runs the CLI; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match execute(cli) {
        Ok(code) => code,
        Err(e) => {
            // Logs may precede it; the error is always the last line.
            eprintln!("tokenwarden: {e}");
            e.exit_code()
        }
    }
}

fn config(cli: &Cli, role: &str) -> Result<Config> {
    let mut config = Config::from_env()?;
    config.actor = role.to_owned();
    cli.tuning.apply(&mut config)?;
    if let Some(path) = &cli.encryption_key_file {
        config.encryption_key = Some(read_key(path)?);
    }
    Ok(config)
}

fn open(cli: &Cli, role: &str) -> Result<Warden> {
    Warden::open(&cli.db, config(cli, role)?)
}

fn read_key(path: &Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Io(format!("cannot read key file {}: {e}", path.display())))?;
    Ok(Secret::new(text.trim()))
}

fn sealer(key: Option<&Secret>, what: &str) -> Result<Sealer> {
    let key = key.ok_or_else(|| Error::Config(format!("{what}: no key given")))?;
    Sealer::from_base64(key.expose()).map_err(|e| Error::Config(format!("{what}: {e}")))
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Io(e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn print_grant(grant: &Grant, json: bool) -> Result<()> {
    if json {
        print_json(&TokenResponse::new(grant, clock::now_ms()))
    } else {
        println!("{}", grant.access_token.expose());
        Ok(())
    }
}

fn read_input(path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let shown = path.display();
    let n = if path.as_os_str() == "-" {
        std::io::stdin().take(MAX_IMPORT + 1).read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_IMPORT + 1).read_to_end(&mut buf))
    }
    .map_err(|e| Error::Io(format!("cannot read {shown}: {e}")))?;
    if n as u64 > MAX_IMPORT {
        return Err(Error::BadInput(format!(
            "{shown} is larger than 1 MiB; is it the right file?"
        )));
    }
    Ok(buf)
}

fn execute(cli: Cli) -> Result<i32> {
    let now = now_ms;
    match &cli.command {
        Command::Init => {
            open(&cli, "cli")?;
            println!("database ready: {}", cli.db.display());
        }
        Command::Import {
            files,
            id,
            provider,
            replace,
        } => {
            let warden = open(&cli, "cli")?;
            let opts = ImportOptions {
                id: id.clone(),
                provider: *provider,
            };
            if id.is_some() && files.len() > 1 {
                return Err(Error::BadInput(
                    "--id names one credential; import one file at a time with it".into(),
                ));
            }
            // Parse everything first, so a bad file imports nothing.
            let mut creds = Vec::new();
            for file in files {
                let parsed = import::parse_import(&read_input(file)?, &opts, now())
                    .map_err(|e| Error::BadInput(format!("{}: {e}", file.display())))?;
                creds.extend(parsed);
            }
            // One at a time, so that the ones imported before a refusal are
            // reported as such.
            for c in &creds {
                for row in warden.import(std::slice::from_ref(c), *replace)? {
                    println!("imported {} ({})", row.id, row.provider.kind);
                    if row.status.state == State::Dead {
                        // A replace with the refresh token that was refused.
                        eprintln!(
                            "note: {} is still dead ({}): this file holds the refresh token \
                             that was refused; log in again and import the new file",
                            row.id,
                            row.status.dead_reason.as_deref().unwrap_or("dead")
                        );
                    }
                }
            }
        }
        Command::Token { id, min_ttl, out } => {
            let warden = open(&cli, "cli")?;
            print_grant(&warden.token(id, *min_ttl)?, out.json)?;
        }
        Command::Reject { id, token, out } => {
            let token = if token == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .take(64 * 1024)
                    .read_to_string(&mut s)
                    .map_err(|e| Error::Io(format!("cannot read the token from stdin: {e}")))?;
                s.trim().to_owned()
            } else {
                token.clone()
            };
            if token.is_empty() {
                return Err(Error::BadInput("--token is empty".into()));
            }
            let warden = open(&cli, "cli")?;
            print_grant(&warden.reject(id, &token)?, out.json)?;
        }
        Command::Refresh { id, force, out } => {
            let warden = open(&cli, "cli")?;
            print_grant(&warden.refresh(id, *force)?, out.json)?;
        }
        Command::List { out } => {
            let warden = open(&cli, "cli")?;
            let rows = warden.list_without_secrets()?;
            let quotas = warden.store().latest_quotas()?;
            let policy = warden.config().policy;
            let t = clock::now();
            let credentials: Vec<_> = rows
                .iter()
                .map(|c| Summary::new(c, t, &policy).with_quota(quotas.get(&c.id)))
                .collect();
            if out.json {
                print_json(&SummaryList { credentials })?;
            } else {
                print_table(&credentials, t.wall_ms);
            }
        }
        Command::Show { id, out } => {
            let warden = open(&cli, "cli")?;
            let row = warden.get(id)?;
            let quota = warden.store().latest_quota(id)?;
            let summary = Summary::new(&row, clock::now(), &warden.config().policy)
                .with_quota(quota.as_ref());
            if out.json {
                print_json(&summary)?;
            } else {
                print_summary(&summary);
            }
        }
        Command::Events { id, limit, out } => {
            let warden = open(&cli, "cli")?;
            let rows = warden.events(id, *limit)?;
            let events: Vec<EventView> = rows.iter().map(EventView::from).collect();
            if out.json {
                print_json(&EventList { events })?;
            } else {
                for e in &events {
                    println!(
                        "{:>6}  {}  {:>10} -> {:<10} v{:<4} {}  {}",
                        e.seq,
                        crate::rfc3339::format(e.at * 1000),
                        e.from.unwrap_or("-"),
                        e.to,
                        e.version,
                        e.actor,
                        e.reason
                    );
                }
            }
        }
        Command::Delete { id } => {
            open(&cli, "cli")?.delete(id)?;
            println!("deleted {id}");
        }
        Command::Sweep {
            quota,
            concurrency,
            only,
            out,
        } => {
            let warden = open(&cli, "sweep")?;
            let opts = SweepOptions {
                concurrency: *concurrency,
                only: only.clone(),
                max_age: warden.config().max_token_age,
                wait: warden.config().wait,
                quota: *quota,
            };
            let tty = std::io::stderr().is_terminal() && !out.json;
            let progress = |done: usize, total: usize| {
                if tty {
                    eprint!("\rrefreshing {done}/{total}");
                    if done == total {
                        eprintln!();
                    }
                }
            };
            let report = sweep::sweep(&warden, &opts, &progress)?;
            if out.json {
                print_json(&report)?;
            } else {
                print_sweep(&warden, &report)?;
            }
            return Ok(report.exit_code());
        }
        Command::Quota { id, refresh, out } => {
            let warden = open(&cli, "cli")?;
            let row = if *refresh {
                quota::fetch(&warden, id)?
            } else {
                quota::latest(&warden, id)?
            };
            if out.json {
                print_json(&QuotaView::new(&row))?;
            } else {
                print_quota(&QuotaView::new(&row));
            }
        }
        Command::Handle(HandleCommand::Create { id, label }) => {
            let warden = open(&cli, "cli")?;
            println!("{}", facade::create_handle(&warden, id, label)?.expose());
        }
        Command::Handle(HandleCommand::List { id, out }) => {
            let warden = open(&cli, "cli")?;
            warden.get(id)?;
            let rows = warden.store().handles(id)?;
            let views: Vec<HandleView> = rows.iter().map(HandleView::from).collect();
            if out.json {
                print_json(&serde_json::json!({ "handles": views }))?;
            } else {
                println!(
                    "{:<14} {:<24} {:<22} {:<22} REVOKED",
                    "ID", "LABEL", "CREATED", "LAST USED"
                );
                for h in &views {
                    println!(
                        "{:<14} {:<24} {:<22} {:<22} {}",
                        h.id,
                        h.label,
                        when(Some(h.created_at)),
                        when(h.last_used_at),
                        when(h.revoked_at)
                    );
                }
            }
        }
        Command::Handle(HandleCommand::Revoke { handle }) => {
            let warden = open(&cli, "cli")?;
            facade::revoke_handle(&warden, handle)?;
            println!("revoked");
        }
        Command::Keygen => println!("{}", crate::seal::generate_key()),
        Command::Encrypt => {
            let c = config(&cli, "cli")?;
            let key = sealer(
                c.encryption_key.as_ref(),
                "set TOKENWARDEN_ENCRYPTION_KEY or --encryption-key-file",
            )?;
            let n = crate::store::encrypt_in_place(&cli.db, millis_u64(c.busy_timeout), &key)?;
            println!("encrypted {n} credentials in {}", cli.db.display());
        }
        Command::Rekey { new_key_file } => {
            let c = config(&cli, "cli")?;
            let old = sealer(
                c.encryption_key.as_ref(),
                "the current key (TOKENWARDEN_ENCRYPTION_KEY or --encryption-key-file)",
            )?;
            let new_key = match new_key_file {
                Some(path) => Some(read_key(path)?),
                None => std::env::var("TOKENWARDEN_NEW_ENCRYPTION_KEY")
                    .ok()
                    .map(Secret::new),
            };
            let new = sealer(
                new_key.as_ref(),
                "the new key (--new-key-file or TOKENWARDEN_NEW_ENCRYPTION_KEY)",
            )?;
            let n = crate::store::rekey(&cli.db, millis_u64(c.busy_timeout), &old, &new)?;
            println!("re-keyed {n} credentials in {}", cli.db.display());
        }
        Command::Serve(args) => {
            let warden = open(&cli, "http")?;
            run_serve(warden, args)?;
        }
        Command::Export {
            id,
            format,
            out,
            handle,
        } => {
            let warden = open(&cli, "cli")?;
            let mut row = warden.get(id)?;
            if let Some(label) = handle {
                if !matches!(format, ExportFormat::Codex) {
                    return Err(Error::BadInput("--handle goes with --format codex".into()));
                }
                row.refresh_token = facade::create_handle(&warden, id, label)?;
            }
            let text = match format {
                ExportFormat::Codex => import::export_codex(&row),
                ExportFormat::Cliproxy => import::export_cliproxy(&row),
            }
            .map_err(|e| Error::BadInput(e.to_string()))?;
            match out {
                Some(path) => write_private(path, text.as_bytes())?,
                None => println!("{text}"),
            }
        }
    }
    Ok(0)
}

/// Writes `bytes` to `path` with mode 0600 (also when the file existed).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |e: std::io::Error| Error::Io(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.write_all(b"\n").map_err(err)?;
    f.sync_all().map_err(err)
}

fn when(secs: Option<i64>) -> String {
    secs.map_or_else(|| "-".into(), |s| crate::rfc3339::format(s * 1000))
}

fn print_table(rows: &[Summary], now_ms: i64) {
    println!(
        "{:<32} {:<8} {:<10} {:>9}  {:<32} {:>3}",
        "ID", "PROVIDER", "STATE", "EXPIRES", "ACCOUNT", "ERR"
    );
    for s in rows {
        let expires = s.expires_at.map_or_else(
            || "-".into(),
            |e| {
                let left = e - now_ms / 1000;
                if left <= 0 {
                    "expired".into()
                } else if left < 3600 {
                    format!("{}m", left / 60)
                } else {
                    format!("{}h{}m", left / 3600, left % 3600 / 60)
                }
            },
        );
        let account = s.email.or(s.account_id).unwrap_or("-");
        println!(
            "{:<32} {:<8} {:<10} {:>9}  {:<32} {:>3}",
            s.id, s.provider, s.state, expires, account, s.failures
        );
    }
}

fn print_summary(s: &Summary) {
    let opt = |v: Option<&str>| v.unwrap_or("-").to_owned();
    println!("id:           {}", s.id);
    println!("provider:     {}", s.provider);
    println!("state:        {}", s.state);
    println!("version:      {}", s.version);
    println!("expires at:   {}", when(s.expires_at));
    println!("account:      {}", opt(s.account_id));
    println!("email:        {}", opt(s.email));
    println!("plan:         {}", opt(s.plan_type));
    println!("refreshed at: {}", when(s.last_refresh_at));
    println!("failures:     {}", s.failures);
    println!("next attempt: {}", when(s.next_attempt_at));
    if let Some(reason) = s.dead_reason {
        println!("dead reason:  {reason}");
    }
    if let Some(e) = &s.last_error {
        println!(
            "last error:   {} at {}: {}",
            e.code,
            when(Some(e.at)),
            e.message
        );
    }
    if let Some(q) = &s.quota {
        println!("quota:        {}", q.line());
    }
}

fn print_quota(q: &QuotaView) {
    println!("credential:   {}", q.credential_id);
    println!("fetched at:   {}", when(Some(q.fetched_at)));
    println!("status:       {}", q.status);
    if let Some(plan) = q.plan_type {
        println!("plan:         {plan}");
    }
    if let Some(reached) = q.limit_reached {
        println!("limit hit:    {reached}");
    }
    for w in q.windows {
        let length = w
            .window_seconds
            .map_or_else(String::new, |s| format!(" ({}h)", s / 3600));
        println!(
            "window:       {}{length}: {}% used, resets {}",
            w.name,
            w.used_percent,
            when(w.resets_at)
        );
    }
    if let Some(e) = q.error {
        println!("error:        {e}");
    }
}

fn print_sweep(warden: &Warden, report: &SweepReport) -> Result<()> {
    let rows = warden.list_without_secrets()?;
    let quotas = warden.store().latest_quotas()?;
    let policy = warden.config().policy;
    let t = clock::now();
    let action = |id: &String| {
        if report.refreshed.contains(id) {
            "refreshed".to_owned()
        } else if report.dead.contains(id) {
            "dead".to_owned()
        } else if report.failed.iter().any(|f| &f.id == id) {
            "failed".to_owned()
        } else {
            "fresh".to_owned()
        }
    };
    println!(
        "{:<32} {:<10} {:<10} {:>10}  {:<20}",
        "ID", "STATE", "ACTION", "QUOTA LEFT", "NEXT RESET"
    );
    for c in rows.iter().filter(|c| {
        report.refreshed.contains(&c.id)
            || report.skipped.contains(&c.id)
            || report.dead.contains(&c.id)
            || report.failed.iter().any(|f| f.id == c.id)
    }) {
        let window = quotas
            .get(&c.id)
            .and_then(|q| q.quota.as_ref())
            .and_then(|q| q.windows.first());
        let left = window.map_or_else(
            || "-".into(),
            |w| format!("{:.0}%", (100.0 - w.used_percent).max(0.0)),
        );
        println!(
            "{:<32} {:<10} {:<10} {:>10}  {:<20}",
            c.id,
            c.status.effective(t, &policy).as_str(),
            action(&c.id),
            left,
            when(window.and_then(|w| w.resets_at))
        );
    }
    for f in &report.failed {
        eprintln!("{}: {}", f.id, f.error);
    }
    Ok(())
}
