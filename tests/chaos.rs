//! Chaos: threads, CLI processes, sweeps and a server sharing one database
//! while processes are SIGKILLed and SIGTERMed, upstream misbehaves, an
//! operator runs `import --replace` (current, stale and foreign refresh
//! tokens, new logins) and some processes' wall clocks are stepped ±60 s;
//! then every invariant of DESIGN.md §3 is checked from the fake's and the
//! database's records (see `common::chaos::run_on`).
//!
//! The default run takes about half a minute. The long run:
//!
//! ```sh
//! TOKENWARDEN_CHAOS_LONG=1 cargo test --release --test tests chaos:: -- --nocapture
//! ```
//!
//! `chaos::chaos` runs it on a SQLite file; `chaos::chaos_on_postgres`, on
//! a PostgreSQL database (tests/common/pg.rs), is long mode only:
//!
//! ```sh
//! TOKENWARDEN_CHAOS_LONG=1 cargo test --release --test tests chaos::chaos_on_postgres -- --include-ignored --nocapture
//! ```
//!
//! (`TOKENWARDEN_CHAOS_SECS` sets its length, default 480;
//! `TOKENWARDEN_CHAOS_SEED` replays a seed's choices.)

use std::time::Duration;

use crate::common::chaos::{self, Plan};
use crate::common::tw::{Backend, Env};

/// Every invariant of DESIGN.md §3 holds through the chaos run (kills, SIGTERMs, faults, stale imports, clock steps), and the run did enough of each to mean something.
#[test]
fn chaos() {
    chaos_on(Backend::Sqlite);
}

/// The same chaos run, every process on one PostgreSQL database (the
/// processes stand for boxes: leases on the server's clock, wake-ups by
/// NOTIFY). Long mode only: at CI size, on a loaded 2-core machine that
/// also runs the server, the run's own "did enough of each" checks (a
/// replace landed, …) are not reliably met in 16 s, and the extra load
/// makes the suite's timing-sensitive tests flaky; CI runs the invariant
/// suite and tests/postgres.rs on PostgreSQL instead.
#[test]
#[ignore = "long mode: TOKENWARDEN_CHAOS_LONG=1 cargo test --release --test tests \
            chaos::chaos_on_postgres -- --include-ignored --nocapture"]
fn chaos_on_postgres() {
    chaos_on(Backend::Postgres);
}

fn chaos_on(backend: Backend) {
    let seed = chaos::seed_from_env();
    let plan = if std::env::var_os("TOKENWARDEN_CHAOS_LONG").is_some_and(|v| v != "0") {
        let secs = std::env::var("TOKENWARDEN_CHAOS_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(480);
        Plan::long(seed, Duration::from_secs(secs))
    } else {
        Plan::ci(seed)
    };
    let Some(report) = chaos::run_on(&plan, backend) else {
        return;
    };
    eprintln!("{}", report.figures.render());
    assert!(
        report.violations.is_empty(),
        "{} invariant violation(s) with seed {seed} on {backend:?}:\n{}",
        report.violations.len(),
        report.violations.join("\n")
    );
    // The run did what it is for.
    let f = &report.figures;
    assert!(
        f.rotations > 20,
        "too few refreshes to mean anything: {}",
        f.rotations
    );
    assert!(f.served > 50, "too few tokens served: {}", f.served);
    let killed: u64 = f.killed.iter().map(|(_, n)| n).sum();
    assert!(killed > 3, "too few processes killed: {killed}");
    assert!(
        f.stale_refused > 0,
        "no stale or foreign import was refused: {:?}",
        f.operator
    );
    let replaced: u64 = f
        .operator
        .iter()
        .filter(|(k, _)| k.starts_with("replace") && k.ends_with(" replaced"))
        .map(|(_, n)| n)
        .sum();
    assert!(replaced > 0, "no replace landed: {:?}", f.operator);
    if let Some((ahead, behind)) = f.stepped {
        assert!(ahead + behind > 0, "no process ran with a stepped clock");
    }
    assert!(
        f.serve_terms.clean_exits > 0,
        "no serve was SIGTERMed mid-refresh and drained: {:?}",
        f.serve_terms
    );
}

/// `refresh` returns the token of a refresh that committed after it was
/// asked; a refresh that this very call ran and committed must count, even
/// when it all happened within the clock's millisecond.
#[test]
fn a_successful_refresh_is_never_reported_as_failed() {
    let env = Env::new();
    env.login("fast", 3600);
    let warden = env.warden();
    let mut failed = Vec::new();
    for i in 0..400 {
        if let Err(e) = warden.refresh("fast", false) {
            failed.push(format!("#{i}: {e}"));
        }
    }
    assert_eq!(env.fake.stats().successful_refreshes, 400);
    assert!(
        failed.is_empty(),
        "{} of 400 refreshes that succeeded upstream and were committed were reported as \
         failures, e.g. {}",
        failed.len(),
        failed[0]
    );
}
