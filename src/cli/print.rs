//! The command line's printers: tables and summaries for people, pretty
//! JSON with `--json`, and the sweep's report. What is printed is the
//! [`crate::view`] shapes, so nothing secret fits in it.

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

pub(super) fn print_table(rows: &[Summary], now_ms: i64) {
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

pub(super) fn print_sweep(warden: &Warden, report: &SweepReport) -> Result<()> {
    let listing = warden.listing()?;
    let (t, policy) = (listing.now(), listing.policy());
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
    for c in listing.credentials().iter().filter(|c| {
        report.refreshed.contains(&c.id)
            || report.skipped.contains(&c.id)
            || report.dead.contains(&c.id)
            || report.failed.iter().any(|f| f.id == c.id)
    }) {
        let window = listing
            .quota(&c.id)
            .and_then(|q| q.quota.as_ref())
            .and_then(|q| q.windows.first());
        let left = window.map_or_else(
            || "-".into(),
            |w| format!("{:.0}%", (100.0 - w.used_percent).max(0.0)),
        );
        println!(
            "{:<32} {:<10} {:<10} {:>10}  {:<20}",
            c.id,
            c.status.effective(t, policy).as_str(),
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
