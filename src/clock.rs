//! The shell's clock and unique ids. The pure core never reads the clock:
//! the shell reads it here and passes `now` in.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::state::{LeaseTime, Now};

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

/// Whether this process can name the lease clock: without the boot id its
/// leases could not be judged by the other processes of the box (nor
/// theirs by it), so it must not take one. The error says what to fix.
pub fn lease_clock_known() -> Result<(), String> {
    match boot_clock() {
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
    fn boot_ids_name_different_clocks() {
        assert_ne!(
            clock_id("1b2d0c4e-0000-4000-8000-000000000001"),
            clock_id("1b2d0c4e-0000-4000-8000-000000000002")
        );
        assert!(clock_id("") > 0);
    }
}
