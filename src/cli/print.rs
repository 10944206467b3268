//! The command line's printers: tables and summaries for people, pretty
//! JSON with `--json`, and the sweep's report. What is printed is the
//! [`crate::view`] shapes, so nothing secret fits in it.

use std::collections::HashMap;
use std::io::Write;

use crate::clock;
use crate::error::{IoError, Result};
use crate::sweep::SweepReport;
use crate::view::{EventView, HandleView, QuotaView, Summary, TokenResponse};
use crate::warden::{Grant, Warden};

pub(super) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| IoError::new("", e))?;
    println!("{text}");
    Ok(())
}

pub(super) fn print_grant(grant: &Grant, json: bool) -> Result<()> {
    if json {
        print_json(&TokenResponse::new(grant, clock::now_ms()))
    } else {
        println!("{}", grant.access_token.expose());
        Ok(())
    }
}

fn when(secs: Option<i64>) -> String {
    secs.map_or_else(|| "-".into(), |s| crate::rfc3339::format(s * 1000))
}

/// `list`'s table, written one row at a time as the rows are read.
pub(super) struct TableWriter<W: Write> {
    out: W,
    now_ms: i64,
    failed: Option<std::io::Error>,
}

impl<W: Write> TableWriter<W> {
    /// Writes the header.
    pub(super) fn new(mut out: W, now_ms: i64) -> std::io::Result<Self> {
        writeln!(
            out,
            "{:<32} {:<8} {:<10} {:>9}  {:<32} {:>3}",
            "ID", "PROVIDER", "STATE", "EXPIRES", "ACCOUNT", "ERR"
        )?;
        Ok(TableWriter {
            out,
            now_ms,
            failed: None,
        })
    }

    /// Writes one row (after a failure, nothing more).
    pub(super) fn push(&mut self, s: &Summary) {
        if self.failed.is_some() {
            return;
        }
        let expires = s.expires_at.map_or_else(
            || "-".into(),
            |e| {
                let left = e - self.now_ms / 1000;
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
        if let Err(e) = writeln!(
            self.out,
            "{:<32} {:<8} {:<10} {:>9}  {:<32} {:>3}",
            s.id, s.provider, s.state, expires, account, s.failures
        ) {
            self.failed = Some(e);
        }
    }

    /// Flushes the table; the first failure of any write, if there was one.
    pub(super) fn finish(mut self) -> std::io::Result<()> {
        match self.failed.take() {
            Some(e) => Err(e),
            None => self.out.flush(),
        }
    }
}

pub(super) fn print_summary(s: &Summary) {
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
    if let Some(command) = &s.relogin {
        println!("sign in again: {command}");
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

pub(super) fn print_events(events: &[EventView]) {
    for e in events {
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

pub(super) fn print_handles(views: &[HandleView]) {
    println!(
        "{:<14} {:<24} {:<22} {:<22} REVOKED",
        "ID", "LABEL", "CREATED", "LAST USED"
    );
    for h in views {
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

pub(super) fn print_quota(q: &QuotaView) {
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

/// What a sweep did to one credential, as its table shows it.
fn sweep_actions(report: &SweepReport, verbose: bool) -> HashMap<&str, &'static str> {
    let mut actions = HashMap::new();
    if verbose {
        actions.extend(report.skipped.iter().map(|id| (id.as_str(), "fresh")));
    }
    actions.extend(report.refreshed.iter().map(|id| (id.as_str(), "refreshed")));
    actions.extend(report.failed.iter().map(|f| (f.id.as_str(), "failed")));
    actions.extend(report.dead.iter().map(|id| (id.as_str(), "dead")));
    actions
}

/// The sweep's summary: one line per outcome, and per quota outcome with
/// `--quota`. Cron mails what a job prints, so this stays a few lines
/// however many credentials there are.
fn write_sweep_summary(out: &mut impl Write, report: &SweepReport) -> std::io::Result<()> {
    for (label, n) in [
        ("refreshed", report.refreshed.len()),
        ("fresh", report.skipped.len()),
        ("failed", report.failed.len()),
        ("dead", report.dead.len()),
    ] {
        writeln!(out, "{label:<10} {n}")?;
    }
    if !report.quota.is_empty() {
        let mut by_status: Vec<(&str, usize)> = Vec::new();
        for q in &report.quota {
            let status = if q.status.starts_with("error") {
                "error"
            } else {
                q.status.as_str()
            };
            match by_status.iter_mut().find(|(s, _)| *s == status) {
                Some((_, n)) => *n += 1,
                None => by_status.push((status, 1)),
            }
        }
        let parts: Vec<String> = by_status.iter().map(|(s, n)| format!("{s} {n}")).collect();
        writeln!(out, "{:<10} {}", "quota", parts.join(", "))?;
    }
    Ok(())
}

/// `sweep` without `--json`: the summary, then a table row for each
/// credential the sweep refreshed, saw fail or found dead — every one with
/// `verbose` — and each failure's message on stderr. Linear in the number
/// of credentials: the rows are streamed and looked up by id.
pub(super) fn print_sweep(warden: &Warden, report: &SweepReport, verbose: bool) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let io = |e: std::io::Error| IoError::new("cannot write the sweep's report", e);
    write_sweep_summary(&mut out, report).map_err(io)?;
    let actions = sweep_actions(report, verbose);
    if !actions.is_empty() {
        writeln!(
            out,
            "\n{:<32} {:<10} {:<10} {:>10}  {:<20}",
            "ID", "STATE", "ACTION", "QUOTA LEFT", "NEXT RESET"
        )
        .map_err(io)?;
        let mut written = Ok(());
        warden.each_summary(|s| {
            let Some(action) = actions.get(s.id) else {
                return;
            };
            if written.is_ok() {
                written = write_sweep_row(&mut out, &s, action);
            }
        })?;
        written.map_err(io)?;
    }
    out.flush().map_err(io)?;
    for f in &report.failed {
        eprintln!("{}: {}", f.id, f.error);
    }
    Ok(())
}

/// One row of the sweep's table.
fn write_sweep_row(out: &mut impl Write, s: &Summary, action: &str) -> std::io::Result<()> {
    let window = s.quota.as_ref().and_then(|q| q.windows.first());
    let left = window.map_or_else(
        || "-".into(),
        |w| format!("{:.0}%", (100.0 - w.used_percent).max(0.0)),
    );
    writeln!(
        out,
        "{:<32} {:<10} {:<10} {:>10}  {:<20}",
        s.id,
        s.state,
        action,
        left,
        when(window.and_then(|w| w.resets_at))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::{Failed, QuotaStatus};

    fn report() -> SweepReport {
        SweepReport {
            refreshed: vec!["r1".into(), "r2".into()],
            skipped: (0..1000).map(|n| format!("s{n:04}")).collect(),
            failed: vec![Failed {
                id: "f1".into(),
                error: "upstream 503".into(),
            }],
            dead: vec!["d1".into()],
            quota: vec![
                QuotaStatus {
                    id: "r1".into(),
                    status: "ok".into(),
                },
                QuotaStatus {
                    id: "r2".into(),
                    status: "ok".into(),
                },
                QuotaStatus {
                    id: "d1".into(),
                    status: "skipped".into(),
                },
                QuotaStatus {
                    id: "f1".into(),
                    status: "error: credential 'f1' is temporarily unavailable".into(),
                },
            ],
        }
    }

    /// The summary is one line per outcome (and one for quota), however
    /// many credentials the sweep saw.
    #[test]
    fn the_summary_counts_each_outcome_in_a_few_lines() {
        let mut out = Vec::new();
        write_sweep_summary(&mut out, &report()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "refreshed  2\nfresh      1000\nfailed     1\ndead       1\n\
             quota      ok 2, skipped 1, error 1\n"
        );
        let mut out = Vec::new();
        write_sweep_summary(&mut out, &SweepReport::default()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "refreshed  0\nfresh      0\nfailed     0\ndead       0\n"
        );
    }

    /// Without --verbose only the credentials that changed, failed or died
    /// get a row; with it, every one, the fresh ones as `fresh`.
    #[test]
    fn rows_go_to_what_changed_failed_or_died_and_to_all_when_verbose() {
        let r = report();
        let quiet = sweep_actions(&r, false);
        let mut ids: Vec<(&str, &str)> = quiet.iter().map(|(k, v)| (*k, *v)).collect();
        ids.sort();
        assert_eq!(
            ids,
            [
                ("d1", "dead"),
                ("f1", "failed"),
                ("r1", "refreshed"),
                ("r2", "refreshed")
            ]
        );
        let all = sweep_actions(&r, true);
        assert_eq!(all.len(), 1004);
        assert_eq!(all.get("s0999"), Some(&"fresh"));
        assert_eq!(all.get("r1"), Some(&"refreshed"));
    }
}
