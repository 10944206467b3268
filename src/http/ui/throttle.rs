//! The sign-in form's brake on key guessing.
//!
//! Each wrong key costs the address it came from one slot of a bucket
//! ([`PER_PEER_BURST`] slots, one back every [`PER_PEER_REFILL`]), and
//! the whole server one slot of a larger one ([`GLOBAL_BURST`], one back
//! every [`GLOBAL_REFILL`]): many addresses cannot guess faster than one
//! can by much. A sign-in is refused (429, `Retry-After`) before its key
//! is even compared while either bucket is empty, so a refusal says
//! nothing about the key; a right key gives its slot back. A page reached
//! by DNS rebinding runs in the operator's own browser, so it shares the
//! operator's address and bucket: it can hold the console's sign-in shut
//! (the API and the CLI are not affected) but not guess faster.
//!
//! Kept as theoretical arrival times (GCRA): one instant per bucket, no
//! timer. Clocks are parameters, so the rules are unit-tested.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Wrong keys one address may send at once.
pub const PER_PEER_BURST: u32 = 10;
/// One more wrong key per address after this long.
pub const PER_PEER_REFILL: Duration = Duration::from_secs(6);
/// Wrong keys all addresses together may send at once.
pub const GLOBAL_BURST: u32 = 60;
/// One more wrong key for everyone after this long.
pub const GLOBAL_REFILL: Duration = Duration::from_secs(1);
/// Addresses remembered at most (each entry is dropped once its bucket is
/// full again; past this, only the global bucket counts for new ones).
pub const MAX_PEERS: usize = 4096;

/// One bucket: when it will be full again.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    burst: u32,
    refill: Duration,
}

impl Bucket {
    /// How long until a slot is free, given the bucket's full-again instant
    /// `tat` (None: full).
    fn wait(self, tat: Option<Instant>, now: Instant) -> Option<Duration> {
        let owed = tat?.saturating_duration_since(now);
        let room = self.refill * (self.burst - 1);
        (owed > room).then(|| owed - room)
    }

    /// The full-again instant after one more slot is taken at `now`.
    fn take(self, tat: Option<Instant>, now: Instant) -> Instant {
        tat.map_or(now, |t| t.max(now)) + self.refill
    }

    /// The full-again instant after a slot is given back.
    fn give_back(self, tat: Instant) -> Instant {
        tat.checked_sub(self.refill).unwrap_or(tat)
    }
}

const PEER: Bucket = Bucket {
    burst: PER_PEER_BURST,
    refill: PER_PEER_REFILL,
};
const GLOBAL: Bucket = Bucket {
    burst: GLOBAL_BURST,
    refill: GLOBAL_REFILL,
};

#[derive(Debug, Default)]
struct Buckets {
    global: Option<Instant>,
    peers: HashMap<IpAddr, Instant>,
}

/// The sign-in throttle of one server.
#[derive(Debug, Default)]
pub struct Throttle {
    inner: Mutex<Buckets>,
}

/// A sign-in let through: its slot is taken until it is known right.
#[must_use = "a right key gives its slot back with Throttle::right_key"]
#[derive(Debug)]
pub struct Attempt {
    peer: Option<IpAddr>,
}

/// The bucket an address counts against: an IPv4 address (IPv4-mapped
/// IPv6 ones too) by itself; an IPv6 address by its /64, the block one
/// host is usually handed whole.
pub fn bucket_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Throttle {
    /// Lets a sign-in from `peer` at `now` try its key, taking a slot of
    /// each bucket; `Err` is how long to wait before trying again.
    pub fn attempt(&self, peer: Option<IpAddr>, now: Instant) -> Result<Attempt, Duration> {
        let peer = peer.map(bucket_of);
        let mut b = self.inner.lock();
        let peer_tat = peer.and_then(|p| b.peers.get(&p).copied());
        let wait = [GLOBAL.wait(b.global, now), PEER.wait(peer_tat, now)]
            .into_iter()
            .flatten()
            .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        b.global = Some(GLOBAL.take(b.global, now));
        if let Some(p) = peer {
            // A new address past the bound: forget the full buckets first.
            if peer_tat.is_none() && b.peers.len() >= MAX_PEERS {
                b.peers.retain(|_, tat| *tat > now);
            }
            if peer_tat.is_some() || b.peers.len() < MAX_PEERS {
                b.peers.insert(p, PEER.take(peer_tat, now));
            }
        }
        Ok(Attempt { peer })
    }

    /// The key of `attempt` was right: its slots go back.
    pub fn right_key(&self, attempt: Attempt) {
        let mut b = self.inner.lock();
        b.global = b.global.map(|t| GLOBAL.give_back(t));
        if let Some(tat) = attempt.peer.and_then(|p| b.peers.get_mut(&p)) {
            *tat = PEER.give_back(*tat);
        }
    }

    /// How many addresses are remembered.
    pub fn peers(&self) -> usize {
        self.inner.lock().peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn one_address_gets_its_burst_then_one_per_refill() {
        let t = Throttle::default();
        let t0 = Instant::now();
        for i in 0..PER_PEER_BURST {
            assert!(t.attempt(ip(1), t0).is_ok(), "attempt {i}");
        }
        let wait = t.attempt(ip(1), t0).expect_err("burst spent");
        assert_eq!(wait, PER_PEER_REFILL);
        // Another address is not held by this one's bucket.
        assert!(t.attempt(ip(2), t0).is_ok());
        // Just before the refill: still shut; at it: one more, then shut.
        assert!(t
            .attempt(ip(1), t0 + PER_PEER_REFILL - Duration::from_millis(1))
            .is_err());
        let later = t0 + PER_PEER_REFILL;
        assert!(t.attempt(ip(1), later).is_ok());
        assert_eq!(t.attempt(ip(1), later), Err(PER_PEER_REFILL));
        // Long after: the whole burst again.
        let much_later = later + PER_PEER_REFILL * (PER_PEER_BURST + 1);
        for _ in 0..PER_PEER_BURST {
            assert!(t.attempt(ip(1), much_later).is_ok());
        }
        assert!(t.attempt(ip(1), much_later).is_err());
    }

    #[test]
    fn addresses_count_by_host() {
        use std::net::{Ipv4Addr, Ipv6Addr};
        let v6 = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, last));
        let table = [
            (v6(1), v6(0xffff), true),
            (
                v6(1),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1)),
                false,
            ),
            (
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
                true,
            ),
            (
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                false,
            ),
        ];
        for (a, b, same) in table {
            assert_eq!(bucket_of(a) == bucket_of(b), same, "{a} {b}");
        }
    }

    #[test]
    fn right_keys_cost_nothing() {
        let t = Throttle::default();
        let t0 = Instant::now();
        for _ in 0..PER_PEER_BURST * 3 {
            let a = t.attempt(ip(1), t0).expect("a right key always gets in");
            t.right_key(a);
        }
        for _ in 0..PER_PEER_BURST {
            assert!(t.attempt(ip(1), t0).is_ok());
        }
        assert!(t.attempt(ip(1), t0).is_err());
    }

    #[test]
    fn many_addresses_share_the_global_bucket() {
        let t = Throttle::default();
        let t0 = Instant::now();
        let mut let_in = 0;
        for n in 0..=u8::MAX {
            for _ in 0..PER_PEER_BURST {
                if t.attempt(ip(n), t0).is_ok() {
                    let_in += 1;
                }
            }
        }
        assert_eq!(let_in, GLOBAL_BURST);
        assert_eq!(t.attempt(ip(200), t0), Err(GLOBAL_REFILL));
        assert!(t.attempt(None, t0 + GLOBAL_REFILL).is_ok());
    }

    #[test]
    fn remembered_addresses_are_bounded() {
        let t = Throttle::default();
        let mut now = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 10) {
            // Past the global burst, step time on so only peers count.
            now += GLOBAL_REFILL;
            let peer = Some(IpAddr::from(i.to_be_bytes()));
            assert!(t.attempt(peer, now).is_ok());
        }
        assert!(t.peers() <= MAX_PEERS);
    }

    impl PartialEq for Attempt {
        fn eq(&self, other: &Self) -> bool {
            self.peer == other.peer
        }
    }
}
