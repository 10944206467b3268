//! The lease clock of a PostgreSQL store: the server's `clock_timestamp()`,
//! so that every box agrees on when a lease ends whatever its own clock
//! says.
//!
//! Reading the server on every `now` would cost a round trip each time the
//! refresher looks at the clock. Instead every row read also returns the
//! server's clock (one column more, same round trip), and this keeps the
//! offset between it and this box's `CLOCK_BOOTTIME` (which no NTP step,
//! operator or `faketime` moves): `now` is the boot-time clock plus that
//! offset. The offset is measured as server time minus the local reading
//! taken *after* the answer, a lower bound: the estimate runs behind the
//! server by at most one round trip, so a lease held by another box is
//! never judged over early by more than that — and the takeover statement
//! itself checks the lease's end against `clock_timestamp()` on the
//! server, so an estimate can delay a takeover but never allow an early
//! one.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use crate::state::LeaseTime;

/// The SQL of the server's lease clock reading, in ms.
pub(super) const SERVER_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::int8";

/// Offsets closer than this to the last one keep the larger (the tighter
/// lower bound); a larger change is a step of the server's clock, taken
/// as it is.
const SAME_MS: i64 = 1000;

/// The server's clock as seen from this process.
#[derive(Debug)]
pub(super) struct ServerClock {
    /// Names the server's clock (its cluster's system identifier).
    id: i64,
    /// Server ms minus local boot-time ms.
    offset: AtomicI64,
    known: AtomicBool,
}

/// This box's boot-time clock, ms (the monotonic base of the estimate).
fn local_ms() -> i64 {
    crate::clock::lease_now().ms
}

impl ServerClock {
    pub(super) fn new(id: i64) -> ServerClock {
        ServerClock {
            id,
            offset: AtomicI64::new(0),
            known: AtomicBool::new(false),
        }
    }

    /// Takes note of `server_ms`, read by a statement that has just
    /// returned.
    pub(super) fn observe(&self, server_ms: i64) {
        let offset = server_ms - local_ms();
        let old = self.offset.load(Ordering::Relaxed);
        let keep = self.known.load(Ordering::Relaxed) && (offset - old).abs() < SAME_MS;
        self.offset.store(
            if keep { old.max(offset) } else { offset },
            Ordering::Relaxed,
        );
        self.known.store(true, Ordering::Relaxed);
    }

    /// The server's clock now (estimated; see the module's comment). Before
    /// any reading, a reading of no clock (0), which no lease is judged on.
    pub(super) fn now(&self) -> LeaseTime {
        if !self.known.load(Ordering::Relaxed) {
            return LeaseTime { clock: 0, ms: 0 };
        }
        LeaseTime {
            clock: self.id,
            ms: local_ms() + self.offset.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The estimate follows the server's readings, keeps the tighter of
    /// two close ones, takes a step of the server's clock, and names the
    /// server's clock only once it has a reading.
    #[test]
    fn the_estimate_follows_the_server() {
        let c = ServerClock::new(42);
        assert_eq!(c.now().clock, 0, "no reading yet");
        let server = local_ms() + 5_000_000;
        c.observe(server);
        let now = c.now();
        assert_eq!(now.clock, 42);
        assert!((now.ms - server).abs() < 50, "{} vs {server}", now.ms);
        // A reading slightly behind (a slower round trip) does not pull it back.
        c.observe(server - 200);
        assert!(c.now().ms >= server);
        // The server's clock stepped back a minute: followed.
        c.observe(server - 60_000);
        assert!((c.now().ms - (server - 60_000)).abs() < 50);
    }
}
