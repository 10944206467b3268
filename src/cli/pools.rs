//! The pool, cooldown and notification subcommands (issue 15): `token
//! --pool`, `pool add|rm`, `cooldown`, `notifications`, `notify test`.

use std::time::Duration;

use super::args::{Cli, NotifyArgs};
use super::print::{print_grant, print_json};
use super::{open, open_for_reads};
use crate::clock;
use crate::error::{Error, Result};
use crate::notify::deliver::{self, Targets};
use crate::view::NotificationList;

/// `token --pool NAME [--sticky KEY]`.
pub(super) fn pool_token(
    cli: &Cli,
    pool: Option<&str>,
    sticky: Option<&str>,
    min_ttl: Duration,
    json: bool,
) -> Result<()> {
    let pool = pool.ok_or_else(|| Error::BadInput("give a credential id or --pool".into()))?;
    let warden = open_for_reads(cli, "cli")?;
    // The pick records what it handed out, and may refresh a member: the
    // handler that finishes a refresh in flight on SIGTERM comes first.
    crate::exit::finish_refreshes_on_signal(&warden)?;
    print_grant(&warden.pool_token(pool, min_ttl, sticky)?, json)
}

/// `pool add|rm ID NAME`.
pub(super) fn member(cli: &Cli, id: &str, pool: &str, add: bool) -> Result<()> {
    let warden = open(cli, "cli")?;
    let changed = warden.set_pool_member(id, pool, add)?;
    match (add, changed) {
        (true, true) => println!("added {id} to pool {pool}"),
        (true, false) => println!("{id} was already in pool {pool}"),
        (false, true) => println!("took {id} out of pool {pool}"),
        (false, false) => println!("{id} was not in pool {pool}"),
    }
    Ok(())
}

/// `cooldown ID --seconds N | --until T | --clear [--reason R]`.
pub(super) fn cooldown(
    cli: &Cli,
    id: &str,
    seconds: Option<Duration>,
    until: Option<&str>,
    reason: &str,
    clear: bool,
) -> Result<()> {
    let warden = open(cli, "cli")?;
    if clear {
        let cleared = warden.clear_cooldown(id, reason)?;
        println!(
            "{}",
            match cleared {
                true => format!("{id}: cooldown cleared"),
                false => format!("{id} had no cooldown"),
            }
        );
        return Ok(());
    }
    let now = clock::now_ms();
    let until_ms = match (seconds, until) {
        (Some(d), _) => now.saturating_add(clock::millis(d)),
        (None, Some(t)) => match t.parse::<i64>() {
            Ok(secs) => secs.saturating_mul(1000),
            Err(_) => crate::rfc3339::parse(t).ok_or_else(|| {
                Error::BadInput(format!(
                    "--until {t:?} is neither unix seconds nor an RFC 3339 time"
                ))
            })?,
        },
        (None, None) => return Err(Error::BadInput("give --seconds, --until or --clear".into())),
    };
    if until_ms <= now {
        return Err(Error::BadInput(
            "the cooldown must end in the future".into(),
        ));
    }
    warden.set_cooldown(id, until_ms, reason)?;
    println!(
        "{id}: cooling down until {} ({reason})",
        crate::rfc3339::format(until_ms.div_euclid(1000) * 1000)
    );
    Ok(())
}

/// `notifications [--pending] [--limit N] [--json]`.
pub(super) fn notifications(cli: &Cli, pending: bool, limit: u32, json: bool) -> Result<()> {
    let warden = open(cli, "cli")?;
    let rows = warden.notifications(pending, limit)?;
    let list = NotificationList::new(&rows);
    if json {
        return print_json(&list);
    }
    if list.notifications.is_empty() {
        eprintln!("no notifications");
    }
    for n in &list.notifications {
        println!(
            "{}  {:<9} {:<16} {:<24} attempts {}{}",
            crate::rfc3339::format(n.created_at * 1000),
            n.status,
            n.kind,
            n.credential_id.unwrap_or("-"),
            n.attempts,
            n.last_error.map(|e| format!("  ({e})")).unwrap_or_default()
        );
    }
    Ok(())
}

/// The targets of `--notify-url` / `--notify-exec` (or their variables).
pub(super) fn targets(args: &NotifyArgs) -> Result<Targets> {
    Targets::from_flags(args.notify_url.clone(), args.notify_exec.clone())
}

/// `notify test`: a sample to every configured target, now.
pub(super) fn notify_test(cli: &Cli, args: &NotifyArgs) -> Result<()> {
    let targets = targets(args)?;
    if !targets.any() {
        return Err(Error::BadInput(
            "no notification target: pass --notify-url or --notify-exec (or set \
             TOKENWARDEN_NOTIFY_URL / TOKENWARDEN_NOTIFY_EXEC)"
                .into(),
        ));
    }
    let warden = open(cli, "cli")?;
    let sample = crate::notify::sample(clock::now_ms());
    deliver::send(&warden, &targets, &sample).map_err(|e| Error::Unavailable {
        id: "notify".into(),
        message: e,
        retry_after_s: 1,
    })?;
    println!("sent {} to every target", sample.event_id);
    Ok(())
}
