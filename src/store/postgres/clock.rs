//! The lease clock of a PostgreSQL store: the server's `clock_timestamp()`,
//! so that every box agrees on when a lease ends whatever its own clock
//! says.
//!
//! Reading the server on every `now` would cost a round trip each time the
//! refresher looks at the clock. Instead every row read also returns the
//! server's clock (one column more, same round trip), and this keeps what
//! those readings prove about the offset between the server's clock and
//! this box's `CLOCK_BOOTTIME` (which no NTP step, operator or `faketime`
//! moves). A reading `s` taken by a statement sent at local `a` and
//! answered at local `b` proves `s - b ≤ offset ≤ s - a`: an interval,
//! however slow the answer. The clock keeps the tightest such interval,
//! widened by [`DRIFT_PER_S`] per second of age (the two clocks may run at
//! slightly different rates), and gives two readings:
//!
//! - [`ServerClock::now`], the interval's low end: the server's clock is at
//!   least this. Every lease is judged on it — another box's lease is never
//!   judged over early, and a claim's lease end (`now + ttl`) is never later
//!   on the server than the owner thinks.
//! - [`ServerClock::latest`], the high end: the server's clock is at most
//!   this. The owner judges the lease it holds on it, so it never believes
//!   it has more of its lease left than the server will grant it — a slow
//!   answer widens the interval instead of shifting the estimate.
//!
//! A reading outside the kept interval (allowing for drift) proves that the
//! server's clock stepped: the interval starts again from that reading. A
//! slow answer can never look like a step (its interval contains the
//! truth). And whatever the estimate, a takeover statement checks the
//! lease's end against `clock_timestamp()` on the server itself.

use parking_lot::Mutex;

use crate::state::LeaseTime;

/// The SQL of the server's lease clock reading, in ms.
pub(super) const SERVER_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::int8";

/// How far apart the two clocks may drift, in ms per second (1000 ppm:
/// twice the most NTP ever slews a clock, far beyond a quartz's error).
const DRIFT_PER_S: i64 = 1;

/// Both readings round to whole ms: each bound is widened by this.
const ROUNDING_MS: i64 = 1;

/// One bound on the offset (server ms minus local boot-time ms), proved by
/// a reading answered at local `at`.
#[derive(Debug, Clone, Copy)]
struct Bound {
    offset: i64,
    at: i64,
}

impl Bound {
    /// How much the bound has loosened by local time `t`.
    fn drift(self, t: i64) -> i64 {
        t.saturating_sub(self.at).max(0) / 1000 * DRIFT_PER_S
    }
}

/// The offset interval: `lo.offset ≤ offset ≤ hi.offset`, each loosened by
/// its age.
#[derive(Debug, Clone, Copy)]
struct Interval {
    lo: Bound,
    hi: Bound,
}

impl Interval {
    /// Lowest offset possible at local time `t`.
    fn lo(&self, t: i64) -> i64 {
        self.lo.offset.saturating_sub(self.lo.drift(t))
    }

    /// Highest offset possible at local time `t`.
    fn hi(&self, t: i64) -> i64 {
        self.hi.offset.saturating_add(self.hi.drift(t))
    }

    /// This interval narrowed by a reading's, or the reading's alone when
    /// the two do not meet (the server's clock stepped).
    fn with(self, new: Interval, t: i64) -> Interval {
        let (lo, hi) = (self.lo(t), self.hi(t));
        if new.lo.offset > hi || new.hi.offset < lo {
            return new;
        }
        Interval {
            lo: if new.lo.offset > lo { new.lo } else { self.lo },
            hi: if new.hi.offset < hi { new.hi } else { self.hi },
        }
    }
}

/// The server's clock as seen from this process.
#[derive(Debug)]
pub(super) struct ServerClock {
    /// Names the server's clock (one id per database, kept in `meta`).
    id: i64,
    /// `None` until the first reading.
    known: Mutex<Option<Interval>>,
}

/// This box's boot-time clock, ms (the monotonic base of the estimate).
pub(super) fn local_ms() -> i64 {
    crate::clock::lease_now().ms
}

impl ServerClock {
    pub(super) fn new(id: i64) -> ServerClock {
        ServerClock {
            id,
            known: Mutex::new(None),
        }
    }

    /// The id naming this database's lease clock.
    pub(super) fn id(&self) -> i64 {
        self.id
    }

    /// Takes note of `server_ms`, read by a statement sent at local
    /// [`local_ms`] `sent` that has just returned.
    pub(super) fn observe(&self, sent: i64, server_ms: i64) {
        self.observe_at(sent, server_ms, local_ms());
    }

    /// [`observe`](Self::observe) with the local time of the answer given.
    fn observe_at(&self, sent: i64, server_ms: i64, answered: i64) {
        let new = Interval {
            lo: Bound {
                offset: server_ms - answered.max(sent) - ROUNDING_MS,
                at: answered,
            },
            hi: Bound {
                offset: server_ms - sent + ROUNDING_MS,
                at: answered,
            },
        };
        let mut known = self.known.lock();
        *known = Some(match *known {
            Some(old) => old.with(new, answered),
            None => new,
        });
    }

    /// The reading at local time `t` with the offset `pick` chooses; before
    /// any reading, a reading of no clock (0), which no lease is judged on.
    fn reading(&self, t: i64, pick: fn(&Interval, i64) -> i64) -> LeaseTime {
        match *self.known.lock() {
            None => LeaseTime { clock: 0, ms: 0 },
            Some(i) => LeaseTime {
                clock: self.id,
                ms: t.saturating_add(pick(&i, t)),
            },
        }
    }

    /// The server's clock now, at the earliest it can be (see the module's
    /// comment): what every lease is judged on.
    pub(super) fn now(&self) -> LeaseTime {
        self.reading(local_ms(), Interval::lo)
    }

    /// The server's clock now, at the latest it can be: what an owner
    /// judges the lease it holds on.
    pub(super) fn latest(&self) -> LeaseTime {
        self.reading(local_ms(), Interval::hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(c: &ServerClock, t: i64) -> (i64, i64) {
        (c.reading(t, Interval::lo).ms, c.reading(t, Interval::hi).ms)
    }

    /// The estimate is the interval the readings prove: a fast reading
    /// pins it, a slow one (sent at 0, answered 4 s later) neither moves
    /// nor widens it, and the server's clock is always inside.
    #[test]
    fn a_slow_answer_never_moves_the_estimate() {
        let c = ServerClock::new(42);
        assert_eq!(c.now().clock, 0, "no reading yet");
        let off = 5_000_000;
        // Server read its clock at local 1000, answered at 1002.
        c.observe_at(999, 1000 + off, 1002);
        assert_eq!(c.now().clock, 42);
        let (lo, hi) = at(&c, 1002);
        assert!(lo <= 1002 + off && 1002 + off <= hi, "{lo} {hi}");
        assert!(hi - lo <= 5, "{lo} {hi}");
        // Read at local 2000 on the server, the answer took 4 s to come.
        c.observe_at(1999, 2000 + off, 6000);
        let (lo2, hi2) = at(&c, 6000);
        assert!(lo2 <= 6000 + off && 6000 + off <= hi2, "{lo2} {hi2}");
        assert!(hi2 - lo2 <= 5 + 2 * 4 * DRIFT_PER_S, "{lo2} {hi2}");
    }

    /// For every order of fast and slow readings of a server whose clock
    /// runs steadily, `now` is never after the server's clock and `latest`
    /// never before it.
    #[test]
    fn the_server_is_always_inside_the_interval() {
        let off = -123_456;
        for delays in [
            [0, 4000, 2, 0],
            [3000, 0, 0, 900],
            [1, 1, 1, 1],
            [5000, 5000, 0, 7],
        ] {
            let c = ServerClock::new(1);
            let mut t = 10_000;
            for d in delays {
                // The server reads its clock 1 ms after the send; the
                // answer comes `d` ms later.
                c.observe_at(t, t + 1 + off, t + 1 + d);
                t += 1 + d;
                let (lo, hi) = at(&c, t);
                assert!(lo <= t + off && t + off <= hi, "{delays:?}: {lo} {t} {hi}");
                t += 500;
            }
        }
    }

    /// A reading outside the interval is a step of the server's clock
    /// (either way): the estimate follows it at once.
    #[test]
    fn a_step_of_the_servers_clock_is_followed() {
        let c = ServerClock::new(7);
        c.observe_at(0, 1_000_000, 2);
        for step in [-60_000, 60_000, -1_500] {
            let (lo, _) = at(&c, 100);
            let server = lo + step;
            c.observe_at(100, server, 101);
            let (lo2, hi2) = at(&c, 101);
            assert!(
                lo2 <= server + 1 && server <= hi2,
                "{step}: {lo2} {server} {hi2}"
            );
            assert!(hi2 - lo2 <= 5, "{step}: {lo2} {hi2}");
            c.observe_at(0, 1_000_000, 2);
        }
    }

    /// Bounds loosen with age, so a server clock running at a slightly
    /// different rate (500 ppm) stays inside without any new reading
    /// narrowing it.
    #[test]
    fn bounds_loosen_with_age() {
        let c = ServerClock::new(3);
        c.observe_at(0, 0, 0);
        for s in [1, 10, 600, 86_400] {
            let t = s * 1000;
            let (lo, hi) = at(&c, t);
            assert!(lo <= t - s / 2 && t + s / 2 <= hi, "{s}: {lo} {hi}");
        }
    }
}
