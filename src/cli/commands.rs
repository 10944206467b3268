//! One function per subcommand that works on credentials: open the
//! database, call the library, print. `serve` is in `serve`, and the key
//! commands (`keygen`, `encrypt`, `rekey`) are in `keys`.

use std::collections::HashSet;
use std::io::{IsTerminal, Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::admin::PageQuery;
use crate::clock;
use crate::credential::NewCredential;
use crate::error::{Error, IoError, Result};
use crate::facade;
use crate::import::{self, ImportOptions};
use crate::provider::ProviderKind;
use crate::quota;
use crate::state::State;
use crate::sweep::{self, SweepOptions};
use crate::view::{EventList, EventView, HandleView, QuotaView, SummaryWriter};

use super::print::{
    print_events, print_grant, print_handles, print_json, print_quota, print_summary, print_sweep,
    TableWriter,
};
use super::{open, Cli, ExportFormat};

/// `init`.
pub(super) fn init(cli: &Cli) -> Result<()> {
    open(cli, "cli")?;
    println!("database ready: {}", crate::Warden::shown_database(&cli.db));
    Ok(())
}

/// `migrate --to DB`: copies the database, then says what it copied.
pub(super) fn migrate(cli: &Cli, to: &std::path::Path) -> Result<()> {
    let warden = open(cli, "cli")?;
    let counts = warden.migrate_to(to)?;
    for (table, n) in &counts {
        println!("{table}: {n}");
    }
    println!(
        "migrated {} to {}",
        crate::Warden::shown_database(&cli.db),
        crate::Warden::shown_database(to)
    );
    Ok(())
}

/// Records committed per transaction by `import` (one fsync each): the
/// fsync is about a fifth of an import's time at 1,000, a tenth at 2,000;
/// memory holds the batch (about 2.5 KiB a record) and its pages.
const IMPORT_BATCH: usize = 2_000;

/// `import FILE...`: each file read as a stream (a JSON array, JSON Lines,
/// or one object, of any size) and committed in batches. Each record is
/// checked and refused on its own, named by its file and position; the
/// others are imported.
///
/// Files are read twice: first to the end without writing (their JSON
/// only, not each record's fields: [`import::check_stream`]), so that a
/// truncated or malformed file (or one holding a record over the bound)
/// imports nothing from any file, as a file read whole would; then to
/// import. Standard input can be read once only: records before a syntax
/// error in it stay imported, and the error says how many.
///
/// The command's error: none when nothing was refused; when nothing was
/// imported, a single refusal's own error (so a one-record file keeps its
/// exit code and message), or "none could be imported" (exit 2) when every
/// refusal was about the input; otherwise [`Error::PartlyImported`]
/// (exit 1).
pub(super) fn import(
    cli: &Cli,
    files: &[PathBuf],
    id: Option<&str>,
    provider: Option<ProviderKind>,
    replace: bool,
    pool: Option<&str>,
) -> Result<()> {
    let warden = open(cli, "cli")?;
    let opts = ImportOptions {
        id: id.map(str::to_owned),
        provider,
    };
    if id.is_some() && files.len() > 1 {
        return Err(Error::BadInput(
            "--id names one credential; import one file at a time with it".into(),
        ));
    }
    let read = |file: &Path| -> Result<Box<dyn Read>> {
        Ok(if file.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(
                std::fs::File::open(file)
                    .map_err(|e| IoError::with_path("cannot read", file, e))?,
            )
        })
    };
    for file in files.iter().filter(|f| f.as_os_str() != "-") {
        import::check_stream(read(file)?, &opts)
            .map_err(|e| Error::BadInput(format!("{}: {e}", file.display())))?;
    }
    let mut run = ImportRun {
        warden: &warden,
        replace,
        pool,
        out: std::io::BufWriter::new(std::io::stdout().lock()),
        batch: Vec::with_capacity(IMPORT_BATCH),
        batch_at: Vec::with_capacity(IMPORT_BATCH),
        total: 0,
        imported: 0,
        first_refusal: None,
        refused: 0,
        all_bad_input: true,
        failed: None,
    };
    // One set of ids for every file: an id twice in one command is refused
    // the second time, whichever files hold it.
    let mut seen = HashSet::new();
    for file in files {
        let shown = file.display();
        let streamed = import::stream_import(read(file)?, &opts, &mut seen, |index, record| {
            run.total += 1;
            match record {
                Ok(c) => run.push(c, format!("{shown}: record {}", index + 1)),
                // The parser's refusal names its record itself.
                Err(e) => run.refuse(Error::BadInput(format!("{shown}: {e}")), None),
            }
        });
        run.flush();
        if let Some(e) = run.failed.take() {
            return Err(e);
        }
        streamed.map_err(|e| match run.imported {
            0 => Error::BadInput(format!("{shown}: {e}")),
            n => Error::BadInput(format!(
                "{shown}: {e}; the {n} records before it were imported"
            )),
        })?;
    }
    run.out
        .flush()
        .map_err(|e| IoError::new("cannot write to stdout", e))?;
    if let (1, 1.., Some((at, e))) = (run.refused, run.imported, &run.first_refusal) {
        // The only refusal, beside imported records: named here, as the
        // summary below says.
        say_refusal(at.as_deref(), e);
    }
    match (run.refused, run.imported, run.first_refusal) {
        (0, _, _) => Ok(()),
        // The input's only record: the command's error.
        (1, 0, Some((_, e))) => Err(e),
        // Nothing imported, and only for what the input says: bad input.
        (refused, 0, _) if run.all_bad_input => Err(Error::BadInput(format!(
            "none of the {refused} records could be imported (each is named above)"
        ))),
        (refused, imported, _) => Err(Error::PartlyImported {
            refused,
            imported,
            total: run.total,
        }),
    }
}

/// One `import` run: the batch being filled, and what became of the
/// records so far.
struct ImportRun<'w, W: std::io::Write> {
    warden: &'w crate::Warden,
    replace: bool,
    /// `--pool`: each imported credential joins it.
    pool: Option<&'w str>,
    out: W,
    batch: Vec<NewCredential>,
    /// Where each record of `batch` stands in the input (`FILE: record N`).
    batch_at: Vec<String>,
    total: usize,
    imported: usize,
    first_refusal: Option<(Option<String>, Error)>,
    refused: usize,
    /// Whether every refusal so far was for the input itself (exit 2).
    all_bad_input: bool,
    /// The database's own trouble: nothing more is imported.
    failed: Option<Error>,
}

impl<W: std::io::Write> ImportRun<'_, W> {
    fn push(&mut self, c: NewCredential, at: String) {
        self.batch.push(c);
        self.batch_at.push(at);
        if self.batch.len() == IMPORT_BATCH {
            self.flush();
        }
    }

    /// A record refused, counted. The first is kept to be the command's
    /// error if it stays the only one; from the second on, each is said on
    /// stderr (one line each, the first one too).
    /// `at` is where the record stands, for a refusal that does not say.
    fn refuse(&mut self, e: Error, at: Option<String>) {
        self.refused += 1;
        self.all_bad_input &= matches!(e, Error::BadInput(_));
        match (&self.first_refusal, self.refused) {
            (None, _) => self.first_refusal = Some((at, e)),
            (Some((first_at, first)), 2) => {
                say_refusal(first_at.as_deref(), first);
                say_refusal(at.as_deref(), &e);
            }
            (Some(_), _) => say_refusal(at.as_deref(), &e),
        }
    }

    /// Commits the batch and reports each record.
    fn flush(&mut self) {
        if self.batch.is_empty() || self.failed.is_some() {
            self.batch.clear();
            self.batch_at.clear();
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let batch_at = std::mem::take(&mut self.batch_at);
        let results =
            match self
                .warden
                .import_batch(&batch, self.replace, self.warden.config().wait)
            {
                Ok(results) => results,
                Err(e) => {
                    self.failed = Some(e);
                    return;
                }
            };
        for (result, at) in results.into_iter().zip(batch_at) {
            match result {
                Ok(row) => {
                    if let Some(pool) = self.pool {
                        if let Err(e) = self.warden.set_pool_member(&row.id, pool, true) {
                            self.failed = Some(e);
                            return;
                        }
                    }
                    self.imported += 1;
                    let _ = writeln!(self.out, "imported {} ({})", row.id, row.provider.kind);
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
                Err(e) => self.refuse(e, Some(at)),
            }
        }
    }
}

/// One refused record on stderr, with where it stands when the refusal
/// does not say.
fn say_refusal(at: Option<&str>, e: &Error) {
    match at {
        Some(at) => eprintln!("{at}: {e}"),
        None => eprintln!("{e}"),
    }
}

/// `token ID`.
pub(super) fn token(cli: &Cli, id: &str, min_ttl: Duration, json: bool) -> Result<()> {
    // Most calls find the stored token good: one read serves it, with no
    // signal thread and none of what only a write needs. Anything more (a
    // refresh, a wait on one) takes the whole path, with the handler that
    // finishes a refresh in flight on SIGTERM installed first.
    let warden = super::open_for_reads(cli, "cli")?;
    let grant = match warden.stored_token(id, min_ttl)? {
        Some(grant) => grant,
        None => {
            crate::exit::finish_refreshes_on_signal(&warden)?;
            warden.token(id, min_ttl)?
        }
    };
    print_grant(&grant, json)
}

/// `reject ID --token T`.
pub(super) fn reject(cli: &Cli, id: &str, token: &str, json: bool) -> Result<()> {
    let token = if token == "-" {
        let mut s = String::new();
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut s)
            .map_err(|e| IoError::new("cannot read the token from stdin", e))?;
        s.trim().to_owned()
    } else {
        token.to_owned()
    };
    if token.is_empty() {
        return Err(Error::BadInput("--token is empty".into()));
    }
    let warden = open(cli, "cli")?;
    print_grant(&warden.reject(id, &token)?, json)
}

/// `refresh ID`.
pub(super) fn refresh(cli: &Cli, id: &str, force: bool, json: bool) -> Result<()> {
    let warden = open(cli, "cli")?;
    print_grant(&warden.refresh(id, force)?, json)
}

/// `list`.
pub(super) fn list(cli: &Cli, page: &PageQuery, json: bool) -> Result<()> {
    let warden = open(cli, "cli")?;
    let stdout = std::io::stdout();
    let out = std::io::BufWriter::new(stdout.lock());
    let io = |e: std::io::Error| IoError::new("cannot write the listing", e);
    let next = if json {
        let mut list = SummaryWriter::new(out).map_err(io)?;
        let next = warden.each_summary_page(page, |s| list.push(&s))?;
        let mut out = list
            .finish(next.as_deref())
            .map_err(|e| IoError::new("cannot write the listing", e))?;
        writeln!(out).and_then(|()| out.flush()).map_err(io)?;
        next
    } else {
        let mut table = TableWriter::new(out, clock::now_ms()).map_err(io)?;
        let next = warden.each_summary_page(page, |s| table.push(&s))?;
        table.finish().map_err(io)?;
        next
    };
    if let (Some(next), false) = (&next, json) {
        eprintln!("more follow: --after {next}");
    }
    Ok(())
}

/// `show ID`.
pub(super) fn show(cli: &Cli, id: &str, json: bool) -> Result<()> {
    let detail = open(cli, "cli")?.detail(id)?;
    let summary = detail.summary();
    if json {
        print_json(&summary)?;
    } else {
        print_summary(&summary);
    }
    Ok(())
}

/// `events ID`.
pub(super) fn events(cli: &Cli, id: &str, limit: Option<u32>, json: bool) -> Result<()> {
    let warden = open(cli, "cli")?;
    let rows = warden.events(id, limit)?;
    let events: Vec<EventView> = rows.iter().map(EventView::from).collect();
    if json {
        print_json(&EventList { events, next: None })?;
    } else {
        print_events(&events);
    }
    Ok(())
}

/// `delete ID`.
pub(super) fn delete(cli: &Cli, id: &str) -> Result<()> {
    open(cli, "cli")?.delete(id)?;
    println!("deleted {id}");
    Ok(())
}

/// `sweep`: returns the exit code of the report (4 dead, 5 failed, else 0).
pub(super) fn sweep(
    cli: &Cli,
    quota: bool,
    concurrency: usize,
    only: &[String],
    verbose: bool,
    notify: &super::args::NotifyArgs,
    json: bool,
) -> Result<i32> {
    let targets = super::pools::targets(notify)?;
    let warden = open(cli, "sweep")?;
    let opts = SweepOptions {
        concurrency,
        only: only.to_vec(),
        max_age: warden.config().max_token_age,
        wait: warden.config().wait,
        quota,
    };
    let tty = std::io::stderr().is_terminal() && !json;
    let progress = |done: usize, total: usize| {
        if tty {
            eprint!("\rrefreshing {done}/{total}");
            if done == total {
                eprintln!();
            }
        }
    };
    let report = sweep::sweep(&warden, &opts, &progress)?;
    // Cron-only deployments: cooldowns ended a day ago are collected here, and the
    // outbox is delivered before the pass ends (a bounded time: a receiver
    // that hangs costs at most that).
    warden.clear_ended_cooldowns()?;
    let never = std::sync::atomic::AtomicBool::new(false);
    match crate::notify::deliver::deliver_due(&warden, &targets, Duration::from_secs(30), &never) {
        Ok(r) if r.delivered + r.retried + r.given_up > 0 => log::info!(
            "notifications: {} delivered, {} to retry, {} given up",
            r.delivered,
            r.retried,
            r.given_up
        ),
        Ok(_) => {}
        Err(e) => log::warn!("notification delivery: {e}"),
    }
    if json {
        print_json(&report)?;
    } else {
        print_sweep(&warden, &report, verbose)?;
    }
    Ok(report.exit_code())
}

/// `quota ID`.
pub(super) fn quota(cli: &Cli, id: &str, refresh: bool, json: bool) -> Result<()> {
    let warden = open(cli, "cli")?;
    let row = if refresh {
        quota::fetch(&warden, id)?
    } else {
        quota::latest(&warden, id)?
    };
    if json {
        print_json(&QuotaView::new(&row))?;
    } else {
        print_quota(&QuotaView::new(&row));
    }
    Ok(())
}

/// `handle create ID --label L`.
pub(super) fn handle_create(cli: &Cli, id: &str, label: &str) -> Result<()> {
    let warden = open(cli, "cli")?;
    println!("{}", facade::create_handle(&warden, id, label)?.expose());
    Ok(())
}

/// `handle list ID`.
pub(super) fn handle_list(cli: &Cli, id: &str, json: bool) -> Result<()> {
    let rows = open(cli, "cli")?.handles(id)?;
    let views: Vec<HandleView> = rows.iter().map(HandleView::from).collect();
    if json {
        print_json(&serde_json::json!({ "handles": views }))?;
    } else {
        print_handles(&views);
    }
    Ok(())
}

/// `handle revoke HANDLE`.
pub(super) fn handle_revoke(cli: &Cli, handle: &str) -> Result<()> {
    let warden = open(cli, "cli")?;
    facade::revoke_handle(&warden, handle)?;
    println!("revoked");
    Ok(())
}

/// `export ID --format F`.
pub(super) fn export(
    cli: &Cli,
    id: &str,
    format: ExportFormat,
    out: Option<&Path>,
    handle: Option<&str>,
) -> Result<()> {
    let warden = open(cli, "cli")?;
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
        ExportFormat::ClaudeCode => import::export_claude_code(&row),
        ExportFormat::Gemini => import::export_gemini(&row),
    }
    .map_err(|e| Error::BadInput(e.to_string()))?;
    match out {
        Some(path) => write_private(path, text.as_bytes())?,
        None => println!("{text}"),
    }
    Ok(())
}

/// Writes `bytes` to `path` with mode 0600 (also when the file existed).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |e: std::io::Error| Error::from(IoError::with_path("cannot write", path, e));
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
