//! What a one-shot command (`token`, `refresh`, `sweep`, …) does on SIGTERM,
//! SIGINT or SIGHUP: a refresh this process has in flight may already have rotated
//! the refresh token upstream, and its commit is the only copy of the new
//! one. So the first signal starts no new refresh, waits for this process's
//! refresh leases to be committed (or lost; at most their TTL), and exits
//! with 128 + the signal's number; with no refresh in flight that is at
//! once. A second signal exits at once, with status 1. `serve` has its own
//! shutdown (`http::run_serve`), which also drains HTTP requests.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use crossbeam_channel::Receiver;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{IoError, Result};
use crate::warden::Warden;

/// Added to the lease TTL when waiting for leases on the way out.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// The stop signal a one-shot command received (0: none).
static STOPPED_BY: AtomicI32 = AtomicI32::new(0);

/// Exits with 128 + the stop signal if one arrived while this one-shot
/// command ran (see [`finish_refreshes_on_signal`]). Called when the
/// command returns: its refreshes are done by then, and the signal's exit
/// status is owed — else the command's own `exit(0)` could beat the exit
/// thread, which wakes only once the last lease is released.
pub fn exit_if_stopped() {
    let signal = STOPPED_BY.load(Ordering::SeqCst);
    if signal != 0 {
        std::process::exit(128 + signal);
    }
}

/// Takes over SIGTERM, SIGINT and SIGHUP (a closed terminal or a dropped
/// ssh session): the first one is handed to the receiver
/// (the caller shuts down in order); any later one exits the process at
/// once, with status 1. (One thread reads them in order: a flag set after
/// the first would race the signal handler that checks it.)
pub fn on_stop() -> Result<Receiver<i32>> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| IoError::new("cannot handle signals", e))?;
    let (first, stop) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = false;
            for signal in signals.forever() {
                if seen {
                    log::warn!("signal {signal} again: exiting at once");
                    std::process::exit(1);
                }
                seen = true;
                let _ = first.send(signal);
            }
        })
        .map_err(|e| IoError::new("cannot start the signal thread", e))?;
    Ok(stop)
}

/// Installs the handler for this process's `warden` (see the module doc).
/// Call it once, right after opening the warden.
pub fn finish_refreshes_on_signal(warden: &Warden) -> Result<()> {
    let stop = on_stop()?;
    let leases = warden.metrics().lease_book();
    let ttl = warden.config().lease_ttl + LEASE_MARGIN;
    std::thread::Builder::new()
        .name("exit".into())
        .spawn(move || {
            let Ok(signal) = stop.recv() else {
                return;
            };
            STOPPED_BY.store(signal, Ordering::SeqCst);
            leases.refuse();
            if leases.held() > 0 {
                log::warn!(
                    "signal {signal}: finishing {} refresh(es) in flight before exiting \
                     (a second signal exits at once)",
                    leases.held()
                );
            }
            let left = leases.wait(ttl);
            if left > 0 {
                log::error!("{left} refresh(es) still running past their lease; exiting anyway");
            }
            std::process::exit(128 + signal);
        })
        .map(drop)
        .map_err(|e| IoError::new("cannot start the exit thread", e).into())
}
