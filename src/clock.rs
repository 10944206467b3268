//! The shell's clock and unique ids. The pure core never reads the clock:
//! the shell reads it here and passes `now` in.
//!
//! This file is the only place that reads the wall clock and the lease
//! clock. The refresh protocol reads no clock at all, not even `Instant`:
//! it takes a `Clock` as a parameter, whose real implementation
//! (`SystemClock`) calls the functions below, `Instant::now` and real
//! sleeps, so that its tests can run it on simulated time (`SimClock`,
//! tests only) where a sleep moves the clock instead of the thread. (Other
//! shells — shutdown graces, the HTTP server, the sweep — still read
//! `Instant` themselves for their own timeouts.)

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, MutexGuard};

use crate::state::{LeaseTime, Now};

/// The clocks the refresh protocol runs on, and its ways of letting time
/// pass: taken as a parameter so that the protocol's timing rules (attempt
/// budgets, backoff, `Retry-After`, a caller's wait) can be tested on
/// simulated time, deterministically and without sleeping.
pub(crate) trait Clock: Send + Sync {
    /// Both clocks at one instant: what the pure core is handed.
    fn now(&self) -> Now;
    /// The lease clock now at the latest it can be (`now().lease` is the
    /// earliest): what a lease holder judges the time left in its own
    /// lease on. The same reading for a clock known exactly (this box's).
    fn lease_latest(&self) -> LeaseTime {
        self.now().lease
    }
    /// A monotonic instant, for the shell's own deadlines (a caller's wait,
    /// when an attempt may start, poll intervals).
    fn instant(&self) -> Instant;
    /// Lets `d` pass on this thread.
    fn sleep(&self, d: Duration);
    /// Waits on `cond` (whose mutex `guard` holds) until it is notified or
    /// `timeout` has passed; spurious wake-ups allowed, so callers re-check.
    fn wait_for(&self, cond: &Condvar, guard: &mut MutexGuard<'_, u64>, timeout: Duration);
}

/// The real clock: the functions of this file, `Instant`, and real sleeps
/// and condvar waits.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Now {
        now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn wait_for(&self, cond: &Condvar, guard: &mut MutexGuard<'_, u64>, timeout: Duration) {
        cond.wait_for(guard, timeout);
    }
}

/// The real clock of a store that keeps the lease clock itself
/// (`Backend::lease_now`: PostgreSQL's server clock, read through `lease`,
/// and `Backend::lease_latest`, through `latest`): the box's wall clock for
/// expiries and events, the store's for leases. Everything else as
/// [`SystemClock`].
pub(crate) struct KeptLeaseClock<F, G> {
    lease: F,
    latest: G,
}

impl<F, G> Clock for KeptLeaseClock<F, G>
where
    F: Fn() -> Option<LeaseTime> + Send + Sync,
    G: Fn() -> Option<LeaseTime> + Send + Sync,
{
    fn now(&self) -> Now {
        Now {
            wall_ms: now_ms(),
            lease: (self.lease)().unwrap_or_else(lease_now),
        }
    }

    fn lease_latest(&self) -> LeaseTime {
        (self.latest)()
            .or_else(&self.lease)
            .unwrap_or_else(lease_now)
    }

    fn instant(&self) -> Instant {
        SystemClock.instant()
    }

    fn sleep(&self, d: Duration) {
        SystemClock.sleep(d);
    }

    fn wait_for(&self, cond: &Condvar, guard: &mut MutexGuard<'_, u64>, timeout: Duration) {
        SystemClock.wait_for(cond, guard, timeout);
    }
}

/// The real clock over a lease clock source (its earliest and latest
/// readings): [`SystemClock`] when `lease` has none (the box's own lease
/// clock), else [`KeptLeaseClock`].
pub(crate) fn with_lease_source(
    lease: impl Fn() -> Option<LeaseTime> + Send + Sync + 'static,
    latest: impl Fn() -> Option<LeaseTime> + Send + Sync + 'static,
) -> std::sync::Arc<dyn Clock> {
    match lease() {
        Some(_) => std::sync::Arc::new(KeptLeaseClock { lease, latest }),
        None => std::sync::Arc::new(SystemClock),
    }
}

/// Both clocks at one instant: what the pure core is handed.
pub fn now() -> Now {
    Now {
        wall_ms: now_ms(),
        lease: lease_now(),
    }
}

/// The lease clock now: `CLOCK_BOOTTIME` (never stepped by NTP or an
/// operator, counts time spent suspended, shared by every process of the
/// box), named by this boot. Read through the vDSO, not libc, so even a
/// process under `faketime` agrees with the others. A time namespace
/// (`unshare --time`, a container restored by CRIU) offsets this clock for
/// its processes but not the boot id: the offset is taken back out, so
/// every namespace of the box reads the host's clock.
pub fn lease_now() -> LeaseTime {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let ms = t
        .tv_sec
        .saturating_mul(1000)
        .saturating_add(t.tv_nsec / 1_000_000);
    LeaseTime {
        clock: boot_clock(),
        ms: ms.saturating_sub(boottime_offset_ms()),
    }
}

/// This process's time namespace's offset of `CLOCK_BOOTTIME` from the
/// host's (ms), read once; 0 outside a time namespace or on kernels
/// without them.
fn boottime_offset_ms() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::fs::read_to_string("/proc/self/timens_offsets")
            .ok()
            .and_then(|text| parse_boottime_offset(&text))
            .unwrap_or(0)
    })
}

/// The `boottime` line of `/proc/self/timens_offsets` (`boottime <s> <ns>`),
/// in ms.
fn parse_boottime_offset(text: &str) -> Option<i64> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("boottime"))?;
    let mut fields = line.split_whitespace().skip(1);
    let secs: i64 = fields.next()?.parse().ok()?;
    let nanos: i64 = fields.next().map_or(Some(0), |n| n.parse().ok())?;
    Some(secs.saturating_mul(1000).saturating_add(nanos / 1_000_000))
}

/// A number naming this boot of this machine: FNV-1a of the kernel's boot
/// id, so a lease written before a reboot (whose boot-time clock started
/// again from zero) is never judged on the new clock. 0 when the boot id
/// cannot be read (a sandbox hiding /proc/sys, systemd's `ProcSubset=pid`):
/// such a process cannot tell its clock from the others', so it takes no
/// lease (see [`lease_clock_known`]) — the boot time in /proc/stat is no
/// substitute, since it moves with the wall clock.
fn boot_clock() -> i64 {
    static CLOCK: OnceLock<i64> = OnceLock::new();
    *CLOCK.get_or_init(
        || match std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
            Ok(id) if !id.trim().is_empty() => clock_id(id.trim()),
            _ => 0,
        },
    )
}

/// Whether `at`, a reading of this process's lease clock, names its clock:
/// without the boot id (clock 0) this process's leases could not be judged
/// by the other processes of the box (nor theirs by it), so it must not
/// take one. The error says what to fix.
pub fn lease_clock_known(at: LeaseTime) -> Result<(), String> {
    match at.clock {
        0 => Err(
            "cannot read /proc/sys/kernel/random/boot_id, which names the clock refresh \
                  leases count on; without it this process cannot take a lease safely. Give it \
                  /proc/sys (systemd: drop ProcSubset=pid)"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// FNV-1a of `s`, as a positive number (0 is never a clock).
fn clock_id(s: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    ((h >> 1) as i64).max(1)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A duration in whole milliseconds, saturating (the unit of every time
/// the core compares).
pub fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A 64-bit value unique to this process and call: lease ids and jitter.
/// Not for secrets (std's hasher keys are random per process, but this is
/// no CSPRNG).
pub fn unique_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_i64(now_ms());
    h.finish()
}

/// Who is acting, for events and lease owners: `ACTOR pid:N thread:NAME`.
pub fn actor(role: &str) -> String {
    let t = std::thread::current();
    match t.name() {
        Some(name) => format!("{role} pid:{} thread:{name}", std::process::id()),
        None => format!("{role} pid:{} {:?}", std::process::id(), t.id()),
    }
}

/// Simulated time, for tests of the code that takes a [`Clock`]: the wall
/// clock, the lease clock and the monotonic instant start at fixed readings
/// and move together, only when the code under test sleeps or waits (by
/// exactly that long, at once) or the test moves them. So a test of a
/// 60-second lease runs in microseconds and reads exact times, never
/// "about". Meant for one thread: nobody can notify a simulated condvar
/// wait, which therefore lasts its whole timeout.
///
/// Handles made by [`SimClock::with_wall_ahead`] share the timeline (and
/// the lease clock) but read the wall clock stepped, like two processes of
/// one box whose wall clocks disagree.
#[cfg(test)]
#[derive(Clone)]
pub(crate) struct SimClock {
    shared: std::sync::Arc<SimShared>,
    /// Added to the wall clock this handle reads.
    wall_ahead_ms: i64,
}

#[cfg(test)]
struct SimShared {
    /// What `instant()` reads at simulated time zero.
    base: Instant,
    time: parking_lot::Mutex<SimTime>,
    /// Run after every pause (see [`SimClock::on_pause`]).
    hook: parking_lot::Mutex<Option<PauseHook>>,
}

/// What a test runs after each simulated pause, given the time elapsed.
#[cfg(test)]
type PauseHook = Box<dyn FnMut(Duration) + Send>;

#[cfg(test)]
struct SimTime {
    /// Simulated time since the start.
    elapsed: Duration,
    /// Both clocks at the start.
    start: Now,
    /// Every sleep and condvar wait the code under test made, in order.
    pauses: Vec<Duration>,
}

#[cfg(test)]
impl SimClock {
    /// Simulated time starting at `start` on both clocks.
    pub(crate) fn new(start: Now) -> SimClock {
        SimClock {
            shared: std::sync::Arc::new(SimShared {
                base: Instant::now(),
                time: parking_lot::Mutex::new(SimTime {
                    elapsed: Duration::ZERO,
                    start,
                    pauses: Vec::new(),
                }),
                hook: parking_lot::Mutex::new(None),
            }),
            wall_ahead_ms: 0,
        }
    }

    /// Another handle on the same simulated time whose wall clock reads
    /// `ms` ahead (behind if negative); the lease clock is the same.
    pub(crate) fn with_wall_ahead(&self, ms: i64) -> SimClock {
        SimClock {
            shared: self.shared.clone(),
            wall_ahead_ms: self.wall_ahead_ms + ms,
        }
    }

    /// Lets `d` pass, as the world outside the code under test does (an
    /// upstream that takes its time, a test waiting for something).
    pub(crate) fn advance(&self, d: Duration) {
        self.shared.time.lock().elapsed += d;
    }

    /// Simulated time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        self.shared.time.lock().elapsed
    }

    /// Every sleep and condvar wait so far, in order.
    pub(crate) fn pauses(&self) -> Vec<Duration> {
        self.shared.time.lock().pauses.clone()
    }

    /// Runs `f` (with the time elapsed) after each pause of the code under
    /// test: the world changing while it sleeps.
    pub(crate) fn on_pause(&self, f: impl FnMut(Duration) + Send + 'static) {
        *self.shared.hook.lock() = Some(Box::new(f));
    }

    fn pause(&self, d: Duration) {
        let elapsed = {
            let mut time = self.shared.time.lock();
            time.elapsed += d;
            time.pauses.push(d);
            time.elapsed
        };
        // Taken out while it runs, so that it may use this clock.
        let hook = self.shared.hook.lock().take();
        if let Some(mut f) = hook {
            f(elapsed);
            self.shared.hook.lock().get_or_insert(f);
        }
    }
}

#[cfg(test)]
impl Clock for SimClock {
    fn now(&self) -> Now {
        let time = self.shared.time.lock();
        let at = time.start.plus(millis(time.elapsed));
        Now {
            wall_ms: at.wall_ms.saturating_add(self.wall_ahead_ms),
            ..at
        }
    }

    fn instant(&self) -> Instant {
        self.shared.base + self.elapsed()
    }

    fn sleep(&self, d: Duration) {
        self.pause(d);
    }

    fn wait_for(&self, _cond: &Condvar, _guard: &mut MutexGuard<'_, u64>, timeout: Duration) {
        self.pause(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_clock_is_one_clock_for_the_process_and_moves_forward() {
        let a = lease_now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = lease_now();
        assert_eq!(a.clock, b.clock);
        assert!(a.clock > 0);
        assert!(b.ms >= a.ms + 5, "{a:?} {b:?}");
    }

    #[test]
    fn a_time_namespace_offset_is_read_from_its_line() {
        let text = "monotonic  0 0\nboottime  -600 250000000\n";
        assert_eq!(parse_boottime_offset(text), Some(-600_000 + 250));
        assert_eq!(parse_boottime_offset("monotonic 5 0\n"), None);
        assert_eq!(parse_boottime_offset("boottime x 0\n"), None);
        assert_eq!(parse_boottime_offset("boottime 3 0"), Some(3000));
    }

    #[test]
    fn simulated_time_moves_only_when_slept_waited_or_advanced() {
        let start = Now {
            wall_ms: 1_700_000_000_000,
            lease: LeaseTime {
                clock: 9,
                ms: 5_000,
            },
        };
        let sim = SimClock::new(start);
        let ahead = sim.with_wall_ahead(60_000);
        let t0 = sim.instant();
        assert_eq!(sim.now(), start);
        sim.sleep(Duration::from_millis(1500));
        let cond = Condvar::new();
        let lock = parking_lot::Mutex::new(0u64);
        sim.wait_for(&cond, &mut lock.lock(), Duration::from_millis(20));
        sim.advance(Duration::from_millis(480));
        assert_eq!(sim.now(), start.plus(2000));
        assert_eq!(sim.instant() - t0, Duration::from_secs(2));
        assert_eq!(
            sim.pauses(),
            [Duration::from_millis(1500), Duration::from_millis(20)]
        );
        // Another process of the box: its wall clock alone is ahead.
        assert_eq!(ahead.now().wall_ms, start.wall_ms + 62_000);
        assert_eq!(ahead.now().lease, sim.now().lease);
    }

    #[test]
    fn boot_ids_name_different_clocks() {
        assert_ne!(
            clock_id("1b2d0c4e-0000-4000-8000-000000000001"),
            clock_id("1b2d0c4e-0000-4000-8000-000000000002")
        );
        assert!(clock_id("") > 0);
    }
}
