//! One function per subcommand that works on credentials: open the
//! database, call the library, print. `serve` is in `serve`, and the key
//! commands (`keygen`, `encrypt`, `rekey`) are in `keys`.

use std::io::{IsTerminal, Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clock::now_ms;
use crate::error::{Error, IoError, Result};
use crate::facade;
use crate::import::{self, ImportOptions};
use crate::provider::ProviderKind;
use crate::quota;
use crate::state::State;
use crate::sweep::{self, SweepOptions};
use crate::view::{EventList, EventView, HandleView, QuotaView, SummaryList};

use super::print::{
    print_events, print_grant, print_handles, print_json, print_quota, print_summary, print_sweep,
    print_table,
};
use super::{open, Cli, ExportFormat};

/// Most bytes read from one import file or stdin.
const MAX_IMPORT: u64 = 1 << 20;

/// `init`.
pub(super) fn init(cli: &Cli) -> Result<()> {
    open(cli, "cli")?;
    println!("database ready: {}", cli.db.display());
    Ok(())
}

/// `import FILE…`.
pub(super) fn import(
    cli: &Cli,
    files: &[PathBuf],
    id: Option<&str>,
    provider: Option<ProviderKind>,
    replace: bool,
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
    // Parse everything first, so a bad file imports nothing.
    let mut creds = Vec::new();
    for file in files {
        let parsed = import::parse_import(&read_input(file)?, &opts, now_ms())
            .map_err(|e| Error::BadInput(format!("{}: {e}", file.display())))?;
        creds.extend(parsed);
    }
    // One at a time, so that the ones imported before a refusal are
    // reported as such.
    for c in &creds {
        for row in warden.import(std::slice::from_ref(c), replace)? {
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
    Ok(())
}

/// `token ID`.
pub(super) fn token(cli: &Cli, id: &str, min_ttl: Duration, json: bool) -> Result<()> {
    let warden = open(cli, "cli")?;
    print_grant(&warden.token(id, min_ttl)?, json)
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
pub(super) fn list(cli: &Cli, json: bool) -> Result<()> {
    let listing = open(cli, "cli")?.listing()?;
    let credentials = listing.summaries();
    if json {
        print_json(&SummaryList { credentials })?;
    } else {
        print_table(&credentials, listing.now().wall_ms);
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
        print_json(&EventList { events })?;
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
    json: bool,
) -> Result<i32> {
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
    if json {
        print_json(&report)?;
    } else {
        print_sweep(&warden, &report)?;
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
    }
    .map_err(|e| Error::BadInput(e.to_string()))?;
    match out {
        Some(path) => write_private(path, text.as_bytes())?,
        None => println!("{text}"),
    }
    Ok(())
}

fn read_input(path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let shown = path.display();
    let n = if path.as_os_str() == "-" {
        std::io::stdin().take(MAX_IMPORT + 1).read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_IMPORT + 1).read_to_end(&mut buf))
    }
    .map_err(|e| IoError::with_path("cannot read", path, e))?;
    if n as u64 > MAX_IMPORT {
        return Err(Error::BadInput(format!(
            "{shown} is larger than 1 MiB; is it the right file?"
        )));
    }
    Ok(buf)
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
