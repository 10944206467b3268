//! What a one-shot command (`token`, `refresh`, `sweep`, …) does on SIGTERM
//! or SIGINT: a refresh this process has in flight may already have rotated
//! the refresh token upstream, and its commit is the only copy of the new
//! one. So the first signal starts no new refresh, waits for this process's
//! refresh leases to be committed (or lost; at most their TTL), and exits
//! with 128 + the signal's number; with no refresh in flight that is at
//! once. A second signal exits at once, with status 1. `serve` has its own
//! shutdown (`http::run_serve`), which also drains HTTP requests.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{Error, Result};
use crate::warden::Warden;

/// Added to the lease TTL when waiting for leases on the way out.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// Installs the handler for this process's `warden` (see the module doc).
/// Call it once, right after opening the warden.
pub fn finish_refreshes_on_signal(warden: &Warden) -> Result<()> {
    let signal_error = |e: std::io::Error| Error::Io(format!("cannot handle signals: {e}"));
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(signal_error)?;
    let again = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, again.clone())
            .map_err(signal_error)?;
    }
    let leases = warden.metrics().lease_book();
    let ttl = warden.config().lease_ttl + LEASE_MARGIN;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Some(signal) = signals.forever().next() else {
                return;
            };
            again.store(true, std::sync::atomic::Ordering::SeqCst);
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
        .map_err(|e| Error::Io(format!("cannot start the signal thread: {e}")))
}
