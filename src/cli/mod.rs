//! The `tokenwarden` command line (DESIGN.md §5): parse, open the database
//! the CLI names, call the library, print. Every error ends as one line on
//! stderr and an exit code of [`Error::exit_code`](crate::Error::exit_code).
//!
//! Laid out the way ripgrep's is:
//!
//! - `args`: the clap definitions ([`Cli`], [`Command`], …) and how the
//!   tuning flags override the [`Config`].
//! - this file: [`run`], which dispatches each subcommand to one small
//!   function, and opening the database with the flags' configuration.
//! - `commands`: the subcommands that work on credentials; `keys`:
//!   `keygen`, `encrypt`, `rekey`; `serve`: [`run_serve`], the HTTP API
//!   and its signal-driven shutdown.
//! - `pools`: `token --pool`, `pool add|rm`, `cooldown`, `notifications`,
//!   `notify test` (issue 15).
//! - `print`: tables, summaries, `--json` and the sweep's report.

use crate::admin::PageQuery;
use crate::config::Config;
use crate::error::Result;
use crate::warden::Warden;

mod args;
mod commands;
mod keys;
mod login;
mod pools;
mod print;
mod serve;

pub use args::{
    Cli, Command, ExportFormat, HandleCommand, JsonFlag, NotifyArgs, NotifyCommand, PoolCommand,
    ServeArgs, Tuning,
};
pub use commands::write_private;
pub use serve::run_serve;

/// Runs the CLI; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let result = execute(cli);
    // A one-shot command that got SIGTERM/SIGINT/SIGHUP exits 128 + the
    // signal once it is done, whatever it returned.
    crate::exit::exit_if_stopped();
    match result {
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
        config.encryption_key = Some(keys::read_key(path)?);
    }
    Ok(config)
}

fn open(cli: &Cli, role: &str) -> Result<Warden> {
    let warden = Warden::open(&cli.db, config(cli, role)?)?;
    // `serve` has its own shutdown; one-shot commands finish their
    // refreshes in flight on SIGTERM/SIGINT.
    if role != "http" {
        crate::exit::finish_refreshes_on_signal(&warden)?;
    }
    Ok(warden)
}

/// Opens for `token`, which most often serves the stored token and writes
/// nothing: the start-up work only writes need is deferred to the first
/// write ([`Warden::open_for_reads`]), and no signal handler is installed
/// yet — `token` installs it ([`crate::exit::finish_refreshes_on_signal`])
/// before it does anything more than read, as every other one-shot
/// command does at open.
fn open_for_reads(cli: &Cli, role: &str) -> Result<Warden> {
    Warden::open_for_reads(&cli.db, config(cli, role)?)
}

fn execute(cli: Cli) -> Result<i32> {
    match &cli.command {
        Command::Init => commands::init(&cli)?,
        Command::Import {
            files,
            id,
            provider,
            replace,
            pool,
        } => commands::import(
            &cli,
            files,
            id.as_deref(),
            *provider,
            *replace,
            pool.as_deref(),
        )?,
        Command::Token {
            id: Some(id),
            min_ttl,
            out,
            ..
        } => commands::token(&cli, id, *min_ttl, out.json)?,
        Command::Token {
            id: None,
            pool,
            sticky,
            min_ttl,
            out,
        } => pools::pool_token(&cli, pool.as_deref(), sticky.as_deref(), *min_ttl, out.json)?,
        Command::Pool(PoolCommand::Add { id, name }) => pools::member(&cli, id, name, true)?,
        Command::Pool(PoolCommand::Rm { id, name }) => pools::member(&cli, id, name, false)?,
        Command::Cooldown {
            id,
            seconds,
            until,
            reason,
            clear,
        } => pools::cooldown(&cli, id, *seconds, until.as_deref(), reason, *clear)?,
        Command::Notifications {
            pending,
            limit,
            out,
        } => pools::notifications(&cli, *pending, *limit, out.json)?,
        Command::Notify(NotifyCommand::Test { targets }) => pools::notify_test(&cli, targets)?,
        Command::Reject { id, token, out } => commands::reject(&cli, id, token, out.json)?,
        Command::Refresh { id, force, out } => commands::refresh(&cli, id, *force, out.json)?,
        Command::List {
            limit,
            after,
            state,
            provider,
            pool,
            out,
        } => {
            let page = PageQuery {
                after: after.clone(),
                limit: limit.unwrap_or(usize::MAX),
                state: *state,
                provider: *provider,
                pool: pool.clone(),
            };
            commands::list(&cli, &page, out.json)?
        }
        Command::Show { id, out } => commands::show(&cli, id, out.json)?,
        Command::Events { id, limit, out } => commands::events(&cli, id, *limit, out.json)?,
        Command::Delete { id } => commands::delete(&cli, id)?,
        Command::Sweep {
            quota,
            concurrency,
            only,
            verbose,
            notify,
            out,
        } => return commands::sweep(&cli, *quota, *concurrency, only, *verbose, notify, out.json),
        Command::Quota { id, refresh, out } => commands::quota(&cli, id, *refresh, out.json)?,
        Command::Handle(HandleCommand::Create { id, label }) => {
            commands::handle_create(&cli, id, label)?
        }
        Command::Handle(HandleCommand::List { id, out }) => {
            commands::handle_list(&cli, id, out.json)?
        }
        Command::Handle(HandleCommand::Revoke { handle }) => commands::handle_revoke(&cli, handle)?,
        Command::Keygen => keys::keygen(),
        Command::Encrypt => keys::encrypt(&cli)?,
        Command::Rekey { new_key_file } => keys::rekey(&cli, new_key_file.as_deref())?,
        Command::Migrate { to } => commands::migrate(&cli, to)?,
        Command::Serve(args) => serve::serve(&cli, args)?,
        Command::Login(args) => login::login(&cli, args)?,
        Command::Export {
            id,
            format,
            out,
            handle,
        } => commands::export(&cli, id, *format, out.as_deref(), handle.as_deref())?,
    }
    Ok(0)
}
