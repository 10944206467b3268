//! A chaos controller: many threads and processes share one database —
//! library threads, `tokenwarden token|reject|refresh` CLI processes,
//! `tokenwarden sweep` passes and a `tokenwarden serve` (with its background
//! refresher) driven over HTTP — while random processes are SIGKILLed at
//! random moments (some aimed at the instant upstream has answered but the
//! owner has not committed yet), the fake OAuth server injects faults, and
//! access tokens live a few seconds so refreshes never stop. Among them, an
//! operator runs `import --replace` (with the current refresh token, a
//! spent one, another id's, or a new login), some CLI workers run with
//! their wall clock stepped ±60 s, one-shot CLI processes get SIGTERM as
//! well as SIGKILL, and `serve` gets SIGTERM in the middle of its refreshes.
//!
//! Everything any client was handed and everything it rejected is recorded;
//! at the end the fake's log and the database's events are checked against
//! DESIGN.md §3 (see [`run`]). Choices come from a seeded xorshift PRNG; the
//! seed is printed (`TOKENWARDEN_CHAOS_SEED` replays the choices, though not
//! the thread interleavings).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokenwarden::import::{parse_import, ImportOptions};
use tokenwarden::state::State;
use tokenwarden::{Error, Warden};

use super::fake_oauth::{Fault, Outcome, TokenRequest};
use super::tw::{Backend, Env, Tuning};

// ---------------------------------------------------------------------------
// Plan.

/// What a chaos run does.
#[derive(Clone, Debug)]
pub struct Plan {
    /// PRNG seed (printed).
    pub seed: u64,
    /// How long the workload runs (then: drain, wait for leases, check).
    pub duration: Duration,
    /// Credentials sharing the database.
    pub credentials: usize,
    /// Library threads in this process (over two `Warden`s).
    pub lib_threads: usize,
    /// Threads each running CLI processes back to back.
    pub cli_runners: usize,
    /// Run `tokenwarden sweep` passes back to back.
    pub sweeps: bool,
    /// Run a `tokenwarden serve` (restarted when killed).
    pub serve: bool,
    /// Threads calling the served HTTP API.
    pub http_clients: usize,
    /// Pause between two kill signals (ms, random in the range).
    pub kill_gap_ms: (u64, u64),
    /// Percent of upstream successes after which the lease owner is killed
    /// at once (aiming at the crash window between answer and commit).
    pub snipe_percent: u64,
    /// Pause between two injected faults (ms, random in the range).
    pub fault_gap_ms: (u64, u64),
    /// Percent of a CLI runner's turns that are an operator's `import
    /// --replace` instead (of the current refresh token, of a spent one, of
    /// another id's, or — rarely — of a new login).
    pub operator_percent: u64,
    /// Percent of an HTTP client's calls that are an import (`POST
    /// /v1/credentials?replace=true`) instead.
    pub http_operator_percent: u64,
    /// Percent of operator moves that import a brand-new upstream login.
    pub relogin_percent: u64,
    /// Percent of CLI worker processes run with their wall clock alone
    /// stepped 60 s ahead or behind (libfaketime).
    pub clock_step_percent: u64,
    /// Percent of the killer's signals to a one-shot CLI process that are
    /// SIGTERM rather than SIGKILL.
    pub cli_sigterm_percent: u64,
    /// Pause between two SIGTERMs to `serve`, each sent while it holds a
    /// live refresh lease (ms, random in the range); `None`: never.
    pub serve_sigterm_gap_ms: Option<(u64, u64)>,
}

impl Plan {
    /// The default CI-sized run (about 20 s of workload).
    pub fn ci(seed: u64) -> Plan {
        Plan {
            seed,
            duration: Duration::from_secs(16),
            credentials: 4,
            lib_threads: 3,
            cli_runners: 3,
            sweeps: true,
            serve: true,
            http_clients: 2,
            kill_gap_ms: (100, 700),
            snipe_percent: 8,
            fault_gap_ms: (250, 1000),
            operator_percent: 12,
            http_operator_percent: 3,
            relogin_percent: 10,
            clock_step_percent: 15,
            cli_sigterm_percent: 20,
            serve_sigterm_gap_ms: Some((2000, 4000)),
        }
    }

    /// The long run: more of everything, for `duration`.
    pub fn long(seed: u64, duration: Duration) -> Plan {
        Plan {
            duration,
            credentials: 6,
            lib_threads: 4,
            cli_runners: 4,
            http_clients: 3,
            ..Plan::ci(seed)
        }
    }
}

/// `TOKENWARDEN_CHAOS_SEED`, else a seed from the clock.
pub fn seed_from_env() -> u64 {
    if let Some(s) = std::env::var("TOKENWARDEN_CHAOS_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return s;
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    t ^ u64::from(std::process::id()).rotate_left(29)
}

/// Short timings so refreshes, failures, leases and takeovers happen every
/// few seconds.
pub fn tuning() -> Tuning {
    Tuning {
        request_timeout: 0.5,
        attempts: 2,
        lease_ttl: 2.5,
        backoff_min: 0.2,
    }
}

/// Access-token lifetime the fake issues (s).
const EXPIRES_IN: i64 = 4;
/// Refresh this long before expiry (s).
const REFRESH_AHEAD: f64 = 2.0;
/// Longest backoff between failed refreshes (s).
const BACKOFF_MAX: f64 = 1.0;
/// Fake upstream latency per token request.
const LATENCY: Duration = Duration::from_millis(20);
/// Longest "retry in" a correct clock can produce here (s): the backoff is
/// at most 1 s, `Retry-After` 1 s, a lease 2.5 s. A longer one was written
/// by a process whose wall clock runs ahead.
const LONG_WAIT_S: u64 = 3;

// ---------------------------------------------------------------------------
// PRNG.

/// Independent seeded streams of an xorshift64* generator.
pub struct Rng(u64);

impl Rng {
    /// Seeded; `stream` derives independent generators from one seed (a
    /// zero state is replaced: xorshift needs a non-zero one).
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng((seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)).max(1));
        r.next();
        r
    }

    /// The next 64 bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// In `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// In `lo..=hi`.
    pub fn between(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True `percent` % of the time.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ---------------------------------------------------------------------------
// Records.

/// The kinds of process the controller runs (and kills).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `tokenwarden token ID --json`.
    Token,
    /// `tokenwarden reject ID --token T --json`.
    Reject,
    /// `tokenwarden refresh ID --json`.
    Refresh,
    /// `tokenwarden sweep --json`.
    Sweep,
    /// `tokenwarden serve`.
    Serve,
    /// `tokenwarden import --replace FILE` (an operator's move).
    Import,
}

/// A token a client was handed.
#[derive(Clone, Debug)]
struct Served {
    cred: usize,
    token: String,
    start_us: u64,
    source: &'static str,
}

/// A token a client reported rejected, and when that report was settled.
#[derive(Clone, Debug)]
struct Rejected {
    cred: usize,
    token: String,
    done_us: u64,
}

/// A credential found dead (then re-imported, or at the end).
#[derive(Clone, Debug)]
struct Death {
    cred: usize,
    account: String,
    reason: String,
}

/// One child process, from its spawn to its end. Process ids come back
/// around in a long run (pid_max is 32768 here, and a 20-minute run starts
/// some 20,000 processes), so anything known about a process is looked up by
/// its pid *and* a moment of its life ([`Records::life_at`]).
#[derive(Clone, Debug)]
struct Life {
    pid: u32,
    kind: Kind,
    /// Test wall clock (ms) at its spawn, and when its end was seen
    /// (`i64::MAX` while it runs).
    start_ms: i64,
    end_ms: i64,
    /// How far its own wall clock runs off (ms; 0: not stepped).
    offset_ms: i64,
    /// Died of SIGKILL (or of a SIGTERM that came before its handler).
    killed: bool,
    /// Sent a SIGTERM (a `serve` then drains and is left alone; a
    /// one-shot process gets SIGKILL, not a second SIGTERM).
    termed: bool,
    /// Credentials it logged an ambiguous attempt for.
    ambiguous: HashSet<usize>,
}

/// Slack (ms) around a life's recorded start and end when matching an
/// event's time to it.
const LIFE_SLACK_MS: i64 = 200;

/// A SIGTERM sent to `serve` while it held a live refresh lease.
#[derive(Clone, Debug)]
struct Term {
    /// The server's life ([`Records::lives`]).
    life: usize,
    /// Wall ms when it was sent.
    at_ms: i64,
    sent: Instant,
    /// `(credential, lease owner)` of the live leases it held just before.
    held: Vec<(usize, String)>,
    /// Exit 0: wall ms when its end was seen, and how long after the signal.
    exited: Option<(i64, Duration)>,
    /// SIGKILLed while it drained (at the end of the run).
    killed: bool,
}

#[derive(Default)]
struct Records {
    served: Vec<Served>,
    rejected: Vec<Rejected>,
    recent: HashMap<usize, VecDeque<String>>,
    deaths: Vec<Death>,
    /// Every child process, in spawn order.
    lives: Vec<Life>,
    /// pid → its lives, oldest first.
    by_pid: HashMap<u32, Vec<usize>>,
    /// Processes killed so far (for the progress line).
    kills: u64,
    /// One-shot CLI processes stopped by a SIGTERM (exit 143; not kills).
    termed: u64,
    spawned: HashMap<Kind, u64>,
    violations: Vec<String>,
    lib_ops: u64,
    http_ops: u64,
    unavailable: u64,
    dead_answers: u64,
    /// SIGTERMs to `serve`.
    terms: Vec<Term>,
    /// Operator imports: (move, outcome) → count.
    ops: HashMap<(&'static str, String), u64>,
    /// CLI imports that were refused or killed and must have written
    /// nothing (lives).
    refused: HashSet<usize>,
    /// CLI imports of a new login (lives; they may write `re-imported`).
    relogins: HashSet<usize>,
    /// "Retry later" answers naming a wait over [`LONG_WAIT_S`].
    long_waits: u64,
    /// Refresh tokens seen in each credential's row, oldest first. Any but
    /// the one it holds now was rotated away or replaced: spent.
    held: HashMap<usize, (Vec<String>, HashSet<String>)>,
}

impl Records {
    /// The life of `pid` that is still running.
    fn running(&self, pid: u32) -> Option<usize> {
        let lives = self.by_pid.get(&pid)?;
        lives
            .last()
            .copied()
            .filter(|&l| self.lives[l].end_ms == i64::MAX)
    }

    /// Whether the running `serve` `pid` got its SIGTERM (it is draining).
    fn draining(&self, pid: u32) -> bool {
        self.running(pid).is_some_and(|l| self.lives[l].termed)
    }

    /// The life of `pid` at `real_ms` (test wall clock).
    fn life_at(&self, pid: u32, real_ms: i64) -> Option<usize> {
        self.by_pid.get(&pid)?.iter().rev().copied().find(|&l| {
            let life = &self.lives[l];
            life.start_ms - LIFE_SLACK_MS <= real_ms
                && real_ms <= life.end_ms.saturating_add(LIFE_SLACK_MS)
        })
    }

    /// The life of `pid` that wrote an event stamped `at_ms` by its own
    /// (maybe stepped) wall clock.
    fn life_of_event(&self, pid: u32, at_ms: i64) -> Option<usize> {
        self.by_pid.get(&pid)?.iter().rev().copied().find(|&l| {
            let life = &self.lives[l];
            let real = at_ms - life.offset_ms;
            life.start_ms - LIFE_SLACK_MS <= real
                && real <= life.end_ms.saturating_add(LIFE_SLACK_MS)
        })
    }
}

/// The figures of one run.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Seed.
    pub seed: u64,
    /// Wall time of the workload.
    pub workload: Duration,
    /// Processes started, by kind.
    pub spawned: Vec<(Kind, u64)>,
    /// Processes that died of SIGKILL, by kind.
    pub killed: Vec<(Kind, u64)>,
    /// Kill signals aimed at lease owners right after upstream answered.
    pub snipes: u64,
    /// Faults queued, by name.
    pub faults: Vec<(String, u64)>,
    /// Token-endpoint requests.
    pub token_requests: u64,
    /// Successful refreshes upstream (each rotated the refresh token).
    pub rotations: u64,
    /// Reuse detected by the fake (each revoked a family).
    pub reuse_detected: u64,
    /// Most token requests in flight at once for one family.
    pub max_in_flight_per_family: u64,
    /// Tokens handed to clients (library, CLI, HTTP).
    pub served: u64,
    /// Rejections recorded.
    pub rejects: u64,
    /// Library calls made.
    pub lib_ops: u64,
    /// HTTP calls made.
    pub http_ops: u64,
    /// "Retry later" answers.
    pub unavailable: u64,
    /// "Dead" answers.
    pub dead_answers: u64,
    /// Dead credentials, by cause.
    pub deaths: Vec<(String, u64)>,
    /// Rotations whose answer a killed owner never committed (the
    /// documented crash window).
    pub crash_window_hits: u64,
    /// Rotations lost because the owner timed out on a processed request.
    pub ambiguous_timeouts: u64,
    /// Rotations lost to injected process-then-hang/drop faults.
    pub fault_lost_rotations: u64,
    /// Leases taken over after their owner died.
    pub takeovers: u64,
    /// Invariant violations found (must be 0).
    pub violations: usize,
    /// Whether `serve` took part.
    pub serve: bool,
    /// One-shot CLI processes stopped by a SIGTERM: they finished their
    /// refreshes in flight, then exited 143 (not kills).
    pub cli_sigterm_deaths: u64,
    /// Operator imports (`import --replace`, CLI and HTTP), by move and
    /// outcome.
    pub operator: Vec<(String, u64)>,
    /// Stale re-imports (and imports of another id's token) refused.
    pub stale_refused: u64,
    /// CLI processes run with the wall clock stepped +60 s and -60 s;
    /// `None`: libfaketime is not installed.
    pub stepped: Option<(u64, u64)>,
    /// SIGTERMs to `serve` mid-refresh and how they ended.
    pub serve_terms: ServeTerms,
    /// "Retry later" answers (library, CLI) naming a wait longer than any
    /// correct clock gives here: a backoff written by a process whose wall
    /// clock runs 60 s ahead.
    pub long_waits: u64,
    /// Credentials found at the end in such a backoff (then refreshed with
    /// `force` so that the end-state checks could run).
    pub stuck_by_step: u64,
}

/// SIGTERMs sent to `serve` while it held a live refresh lease.
#[derive(Clone, Debug, Default)]
pub struct ServeTerms {
    /// Signals sent.
    pub sent: u64,
    /// Exits with status 0 (the others were SIGKILLed at the end of the run).
    pub clean_exits: u64,
    /// Live leases it held when signalled.
    pub leases_held: u64,
    /// Of those, how many it committed as a rotation before exiting.
    pub committed: u64,
    /// Rotations it committed after the signal (any lease).
    pub rotations_after_signal: u64,
    /// Longest time from the signal to its exit.
    pub max_drain: Duration,
}

impl Figures {
    /// The figures as a printable block.
    pub fn render(&self) -> String {
        let list = |v: &[(String, u64)]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let kinds = |v: &[(Kind, u64)]| {
            let total: u64 = v.iter().map(|(_, n)| n).sum();
            let parts: Vec<(String, u64)> = v.iter().map(|(k, n)| (format!("{k:?}"), *n)).collect();
            format!("{total} ({})", list(&parts))
        };
        let mut s = String::new();
        let _ = writeln!(s, "chaos seed              {}", self.seed);
        let _ = writeln!(
            s,
            "workload                {:.1} s",
            self.workload.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "serve                   {}",
            if self.serve {
                "yes (HTTP clients + background refresher)"
            } else {
                "no"
            }
        );
        let _ = writeln!(s, "processes started       {}", kinds(&self.spawned));
        let _ = writeln!(s, "processes SIGKILLed     {}", kinds(&self.killed));
        let _ = writeln!(s, "  of which sniped       {}", self.snipes);
        let _ = writeln!(
            s,
            "one-shot CLIs SIGTERMed {} (finished their refreshes, then exited 143)",
            self.cli_sigterm_deaths
        );
        let t = &self.serve_terms;
        let _ = writeln!(
            s,
            "serve SIGTERMed         {} mid-refresh: {} exited 0 (longest drain {:.1} s), {} \
             killed draining at the end; {} leases held at the signal, {} of them committed \
             as rotations; {} rotations committed after a signal",
            t.sent,
            t.clean_exits,
            t.max_drain.as_secs_f64(),
            t.sent - t.clean_exits,
            t.leases_held,
            t.committed,
            t.rotations_after_signal
        );
        let _ = writeln!(
            s,
            "clock-stepped CLI       {}",
            match self.stepped {
                Some((ahead, behind)) => {
                    format!("{} ({ahead} at +60 s, {behind} at -60 s)", ahead + behind)
                }
                None => "none (libfaketime not installed)".into(),
            }
        );
        let _ = writeln!(
            s,
            "  backoffs they set     {} retry-later answers naming over {LONG_WAIT_S} s; {} \
             credentials still locked out at the end",
            self.long_waits, self.stuck_by_step
        );
        let _ = writeln!(
            s,
            "operator imports        {}",
            self.operator.iter().map(|(_, n)| n).sum::<u64>()
        );
        let mut moves: Vec<&str> = self
            .operator
            .iter()
            .filter_map(|(k, _)| k.split_once(": ").map(|(m, _)| m))
            .collect();
        moves.dedup();
        for m in moves {
            let outcomes: Vec<(String, u64)> = self
                .operator
                .iter()
                .filter_map(|(k, n)| {
                    let (what, outcome) = k.split_once(": ")?;
                    (what == m).then(|| (outcome.to_owned(), *n))
                })
                .collect();
            let total: u64 = outcomes.iter().map(|(_, n)| n).sum();
            let _ = writeln!(s, "  {m:<21} {total} ({})", list(&outcomes));
        }
        let _ = writeln!(s, "stale imports refused   {}", self.stale_refused);
        let _ = writeln!(
            s,
            "faults injected         {} ({})",
            self.faults.iter().map(|(_, n)| n).sum::<u64>(),
            list(&self.faults)
        );
        let _ = writeln!(s, "token requests          {}", self.token_requests);
        let _ = writeln!(s, "refreshes (rotations)   {}", self.rotations);
        let _ = writeln!(s, "lease takeovers         {}", self.takeovers);
        let _ = writeln!(
            s,
            "client calls            {} library, {} HTTP (+ CLI processes)",
            self.lib_ops, self.http_ops
        );
        let _ = writeln!(s, "tokens served           {}", self.served);
        let _ = writeln!(s, "rejects recorded        {}", self.rejects);
        let _ = writeln!(
            s,
            "answers                 {} retry-later, {} dead",
            self.unavailable, self.dead_answers
        );
        let _ = writeln!(s, "reuse detected upstream {}", self.reuse_detected);
        let _ = writeln!(s, "crash-window hits       {}", self.crash_window_hits);
        let _ = writeln!(s, "ambiguous timeouts      {}", self.ambiguous_timeouts);
        let _ = writeln!(s, "rotations lost to fault {}", self.fault_lost_rotations);
        let _ = writeln!(s, "dead credentials        {}", list(&self.deaths));
        let _ = writeln!(
            s,
            "max in flight / family  {}",
            self.max_in_flight_per_family
        );
        let _ = write!(s, "invariant violations    {}", self.violations);
        s
    }
}

/// The result of a run.
pub struct Report {
    /// The numbers.
    pub figures: Figures,
    /// Everything that broke an invariant (empty on success).
    pub violations: Vec<String>,
}

// ---------------------------------------------------------------------------
// Capturing this process's log (the library threads' "ended ambiguously").
// The logger is process-wide and the test binary runs other tests beside
// the chaos run, so only the run's threads are kept: its workers
// (`chaos-…`) and the test's own thread (`chaos::…`, where the end state
// is brought to rest).

struct Capture {
    lines: Mutex<Vec<(Option<String>, String)>>,
}

static CAPTURE: Capture = Capture {
    lines: Mutex::new(Vec::new()),
};

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn && m.target().starts_with("tokenwarden")
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let name = thread::current().name().map(str::to_owned);
            if !name.as_deref().is_some_and(|n| n.starts_with("chaos")) {
                return;
            }
            let msg = r.args().to_string();
            if msg.contains("ended ambiguously") {
                self.lines.lock().unwrap().push((name, msg));
            }
        }
    }

    fn flush(&self) {}
}

// ---------------------------------------------------------------------------
// The controller.

struct Shared<'a> {
    env: &'a Env,
    plan: &'a Plan,
    ids: Vec<String>,
    t0: Instant,
    /// The wall clock at `t0` (ms).
    t0_ms: i64,
    stop: AtomicBool,
    procs: Mutex<HashMap<u32, (Kind, Child)>>,
    records: Mutex<Records>,
    accounts: Mutex<Vec<Vec<String>>>,
    serve_addr: Mutex<Option<SocketAddr>>,
    snipes: AtomicU64,
    faults: Mutex<HashMap<&'static str, u64>>,
    /// `(token requests arrived so far, wall ms)` at each change seen: when
    /// request `seq` arrived, to within a poll.
    arrivals: Mutex<Vec<(u64, i64)>>,
    /// Held by whoever imports a new login for a credential (the resetter,
    /// an operator's re-login), so a death is recorded against the right
    /// login and `accounts` follows the database's order of imports.
    operator: Mutex<()>,
    /// Re-logins started (names their upstream accounts).
    relogins: AtomicU64,
    /// Import files written.
    files: AtomicU64,
    /// Whether libfaketime is installed (clock steps run).
    faketime: bool,
}

impl Shared<'_> {
    /// The wall-clock window (ms) in which request `seq` arrived.
    fn arrival_window(&self, seq: usize) -> (i64, i64) {
        let seq = seq as u64;
        let a = self.arrivals.lock().unwrap();
        let lo = a
            .iter()
            .rev()
            .find(|(n, _)| *n <= seq)
            .map_or(i64::MIN, |(_, t)| *t);
        let hi = a
            .iter()
            .find(|(n, _)| *n > seq)
            .map_or(i64::MAX, |(_, t)| *t);
        (lo, hi)
    }

    fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    /// A [`Shared::now_us`] time on the wall clock (ms).
    fn wall_ms(&self, us: u64) -> i64 {
        self.t0_ms + (us / 1000) as i64
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn violation(&self, v: String) {
        eprintln!("chaos: VIOLATION: {v}");
        self.records.lock().unwrap().violations.push(v);
    }

    fn served(&self, cred: usize, token: &str, start_us: u64, source: &'static str) {
        let mut r = self.records.lock().unwrap();
        r.served.push(Served {
            cred,
            token: token.to_owned(),
            start_us,
            source,
        });
        let recent = r.recent.entry(cred).or_default();
        if recent.back().map(String::as_str) != Some(token) {
            recent.push_back(token.to_owned());
            if recent.len() > 8 {
                recent.pop_front();
            }
        }
    }

    fn rejected(&self, cred: usize, token: &str) {
        let done_us = self.now_us();
        self.records.lock().unwrap().rejected.push(Rejected {
            cred,
            token: token.to_owned(),
            done_us,
        });
    }

    /// A token to report rejected: mostly the newest handed out, sometimes
    /// an older one (already rotated away: must change nothing).
    fn token_to_reject(&self, cred: usize, rng: &mut Rng) -> Option<String> {
        let r = self.records.lock().unwrap();
        let recent = r.recent.get(&cred)?;
        if recent.is_empty() {
            return None;
        }
        let i = if rng.chance(75) {
            recent.len() - 1
        } else {
            rng.below(recent.len() as u64) as usize
        };
        recent.get(i).cloned()
    }

    /// Notes a refresh token seen in credential `cred`'s row.
    fn observe(&self, cred: usize, refresh_token: &str) {
        let mut r = self.records.lock().unwrap();
        let (list, set) = r.held.entry(cred).or_default();
        if set.insert(refresh_token.to_owned()) {
            list.push(refresh_token.to_owned());
        }
    }

    /// Counts a "retry later" answer that names a wait no correct clock
    /// would give ([`LONG_WAIT_S`]).
    fn long_wait(&self, retry_after_s: u64) {
        if retry_after_s > LONG_WAIT_S {
            self.records.lock().unwrap().long_waits += 1;
        }
    }

    /// Counts an operator move's outcome.
    fn count(&self, what: &'static str, outcome: impl Into<String>) {
        *self
            .records
            .lock()
            .unwrap()
            .ops
            .entry((what, outcome.into()))
            .or_default() += 1;
    }

    /// Notes the credentials a child's log says ended ambiguously.
    fn evidence(&self, life: usize, stderr: &str) {
        for line in stderr.lines().filter(|l| l.contains("ended ambiguously")) {
            for (i, id) in self.ids.iter().enumerate() {
                if line.contains(&format!("{id}: attempt")) {
                    self.records.lock().unwrap().lives[life].ambiguous.insert(i);
                }
            }
        }
    }
}

/// A child process's end.
struct Ended {
    pid: u32,
    /// Its life ([`Records::lives`]).
    life: usize,
    kind: Kind,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ended {
    /// Died of SIGKILL; or, a one-shot process signalled before it
    /// installed its handler, of SIGTERM. `serve` must handle SIGTERM:
    /// dying of it is no kill.
    fn killed(&self) -> bool {
        match self.status.signal() {
            Some(9) => true,
            // A one-shot CLI signalled before it installed its handler
            // (it held no lease yet): a kill, like SIGKILL.
            Some(15) => self.kind != Kind::Serve,
            _ => false,
        }
    }

    /// A one-shot CLI that a SIGTERM stopped the way it must: it finished
    /// the refreshes it had in flight, then exited 128 + 15. It printed no
    /// answer, but lost nothing (its leases were committed), so it is no
    /// kill: a lease of it taken over is still a violation.
    fn stopped(&self) -> bool {
        self.kind != Kind::Serve && self.status.code() == Some(128 + 15)
    }

    fn last_line(&self) -> &str {
        self.stderr.trim_end().lines().last().unwrap_or_default()
    }
}

/// Runs `cmd` as a killable process of `kind` until it exits; `step`: its
/// wall clock runs this many ms off (see [`step_clock`]).
fn run_child(sh: &Shared, kind: Kind, mut cmd: Command, step: Option<i64>) -> Option<Ended> {
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            sh.violation(format!("cannot spawn {kind:?}: {e}"));
            return None;
        }
    };
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            String::from_utf8_lossy(&b).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let pid = child.id();
    let life = {
        let mut r = sh.records.lock().unwrap();
        *r.spawned.entry(kind).or_default() += 1;
        let life = r.lives.len();
        r.lives.push(Life {
            pid,
            kind,
            start_ms: tokenwarden::clock::now_ms(),
            end_ms: i64::MAX,
            offset_ms: step.unwrap_or(0),
            killed: false,
            termed: false,
            ambiguous: HashSet::new(),
        });
        r.by_pid.entry(pid).or_default().push(life);
        life
    };
    sh.procs.lock().unwrap().insert(pid, (kind, child));
    let status = loop {
        {
            let mut procs = sh.procs.lock().unwrap();
            let (_, child) = procs.get_mut(&pid).expect("registered child");
            match child.try_wait() {
                Ok(Some(status)) => {
                    procs.remove(&pid);
                    break status;
                }
                Ok(None) => {}
                Err(e) => {
                    procs.remove(&pid);
                    drop(procs);
                    sh.violation(format!("waiting for {kind:?} pid {pid}: {e}"));
                    return None;
                }
            }
        }
        thread::sleep(Duration::from_millis(4));
    };
    let ended = Ended {
        pid,
        life,
        kind,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    {
        let mut r = sh.records.lock().unwrap();
        r.lives[life].end_ms = tokenwarden::clock::now_ms();
        if ended.killed() {
            r.lives[life].killed = true;
            r.kills += 1;
        }
        if ended.stopped() {
            r.termed += 1;
        }
    }
    if ended.stderr.contains("panicked") || ended.stderr.contains("RUST_BACKTRACE") {
        sh.violation(format!("{kind:?} pid {pid} panicked: {}", ended.stderr));
    }
    sh.evidence(life, &ended.stderr);
    Some(ended)
}

fn cli_cmd(sh: &Shared) -> Command {
    let mut c = sh.env.cmd();
    c.env("TOKENWARDEN_BACKOFF_MAX", BACKOFF_MAX.to_string())
        .env("TOKENWARDEN_REFRESH_AHEAD", REFRESH_AHEAD.to_string())
        .env("TOKENWARDEN_LOG", "warn");
    c
}

/// libfaketime, which the clock steps need (CI installs it: `.ci/run`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Runs `cmd` with its wall clock alone `ms` off (monotonic and boot-time
/// clocks untouched), as after an NTP step or a VM resume; see
/// `tests/hardening.rs`.
fn step_clock(cmd: &mut Command, ms: i64) {
    cmd.env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME", format!("{:+}s", ms / 1000))
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("FAKETIME_DONT_RESET", "1");
}

/// Whether the next CLI worker runs with a stepped clock, and which way.
fn draw_clock_step(sh: &Shared, rng: &mut Rng) -> Option<i64> {
    let step = rng.chance(sh.plan.clock_step_percent);
    let ahead = rng.chance(50);
    (sh.faketime && step).then_some(if ahead { 60_000 } else { -60_000 })
}

/// Sends `sig` (`-TERM`) to `pid`. Call it holding `procs` with the child
/// registered: it is not reaped yet, so its pid cannot have been reused.
fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn library_warden(env: &Env) -> Warden {
    let mut c = env.config();
    c.policy.backoff_max_ms = (BACKOFF_MAX * 1000.0) as i64;
    c.policy.refresh_ahead_ms = (REFRESH_AHEAD * 1000.0) as i64;
    Warden::open(&env.db, c).expect("open warden")
}

/// Imports a fresh login for credential `cred` (epoch = how many it had).
fn fresh_login(sh: &Shared, admin: &Warden, cred: usize) {
    let id = &sh.ids[cred];
    let mut accounts = sh.accounts.lock().unwrap();
    let epoch = accounts[cred].len();
    let account = format!("{id}.e{epoch}");
    let grant = sh.env.fake.new_family(&account);
    let record = grant.import_json(id, "codex", &sh.env.fake.token_url());
    let creds = parse_import(
        record.to_string().as_bytes(),
        &ImportOptions::default(),
        tokenwarden::clock::now_ms(),
    )
    .expect("parse import");
    admin.import(&creds, true).expect("import");
    accounts[cred].push(account);
}

// ---------------------------------------------------------------------------
// An operator's imports.

/// How an operator's import is sent.
#[derive(Clone, Copy)]
enum Via<'a> {
    /// `tokenwarden import --replace FILE` (waits out a live lease, then
    /// gives up: exit 1).
    Cli,
    /// `POST /v1/credentials?replace=true` on the running `serve` (refuses
    /// at once during a live lease: 409 `refresh_in_progress`).
    Http(&'a ureq::Agent, SocketAddr),
}

impl Via<'_> {
    fn name(&self) -> &'static str {
        match self {
            Via::Cli => "cli",
            Via::Http(..) => "http",
        }
    }
}

/// How an import ended.
#[derive(Debug)]
enum Imported {
    Landed,
    /// Refused with this code (`refresh_token_spent`,
    /// `refresh_token_in_use`, `refresh_in_progress`, or `unavailable`: the
    /// server is shutting down) and message.
    Refused(&'static str, String),
    /// Killed, or the connection broke: nothing is known.
    Lost,
}

/// Sends `record` as an import of credential `cred` with `--replace`; the
/// CLI process's life ([`Records::lives`]) comes back too. An answer no import may give is a
/// violation (then `None`).
fn import_replace(
    sh: &Shared,
    via: Via,
    cred: usize,
    record: &Value,
) -> Option<(Imported, Option<usize>)> {
    let id = &sh.ids[cred];
    match via {
        Via::Cli => {
            let n = sh.files.fetch_add(1, Ordering::SeqCst);
            let path = sh.env.dir.path().join(format!("import-{n}.json"));
            std::fs::write(&path, record.to_string()).expect("write the import file");
            let mut cmd = cli_cmd(sh);
            cmd.arg("import").arg("--replace").arg(&path);
            let end = run_child(sh, Kind::Import, cmd, None);
            let _ = std::fs::remove_file(&path);
            let end = end?;
            let life = Some(end.life);
            if end.killed() || end.stopped() {
                return Some((Imported::Lost, life));
            }
            let err = end.stderr.trim().to_owned();
            let answer = match end.status.code() {
                Some(0) => Imported::Landed,
                Some(1) if err.contains("its refresh token is spent") => {
                    Imported::Refused("refresh_token_spent", err)
                }
                Some(1) if err.contains("already holds this refresh token") => {
                    Imported::Refused("refresh_token_in_use", err)
                }
                Some(1) if err.contains("is being refreshed right now") => {
                    Imported::Refused("refresh_in_progress", err)
                }
                other => {
                    sh.violation(format!(
                        "import --replace of {id} exited {other:?}: {}",
                        end.last_line()
                    ));
                    return None;
                }
            };
            Some((answer, life))
        }
        Via::Http(agent, addr) => {
            let result = agent
                .post(format!("http://{addr}/v1/credentials?replace=true"))
                .header("Content-Type", "application/json")
                .send(record.to_string().as_bytes());
            let mut resp = match result {
                Ok(r) => r,
                Err(_) => return Some((Imported::Lost, None)),
            };
            let status = resp.status().as_u16();
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            let error = serde_json::from_str::<Value>(&body).unwrap_or_default();
            let code = error["error"]["code"].as_str().unwrap_or_default();
            let message = error["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let answer = match (status, code) {
                (201, _) => Imported::Landed,
                (409, "refresh_token_spent") => Imported::Refused("refresh_token_spent", message),
                (409, "refresh_token_in_use") => Imported::Refused("refresh_token_in_use", message),
                (409, "refresh_in_progress") => Imported::Refused("refresh_in_progress", message),
                (503, "unavailable") => Imported::Refused("unavailable", message),
                _ => {
                    sh.violation(format!(
                        "POST /v1/credentials?replace=true for {id}: HTTP {status}: {body}"
                    ));
                    return None;
                }
            };
            Some((answer, None))
        }
    }
}

/// What a spent-token refusal says about how the token was spent.
fn spent_how(message: &str) -> &'static str {
    if message.contains("rotated away by a refresh") {
        "rotated"
    } else if message.contains("replaced by an import") {
        "replaced"
    } else {
        "?"
    }
}

/// An operator re-imports credential `cred` with the refresh token it holds
/// now (its current `auth.json`): a metadata-only replace that must never
/// disturb a refresh in flight (checks 1–3b catch one that does). Refused
/// because a refresh got there first, the operator exports again and
/// retries a moment later, up to five times.
fn replace_current(sh: &Shared, admin: &Warden, cred: usize, via: Via, rng: &mut Rng) {
    for _ in 0..5 {
        if sh.stopped() || !replace_current_once(sh, admin, cred, via) {
            break;
        }
        thread::sleep(Duration::from_millis(rng.between((50, 300))));
    }
}

/// One try of [`replace_current`]: whether it is worth another.
fn replace_current_once(sh: &Shared, admin: &Warden, cred: usize, via: Via) -> bool {
    const WHAT: &str = "replace (same token)";
    let id = &sh.ids[cred];
    let Ok(row) = admin.get(id) else {
        return false;
    };
    let token = row.refresh_token.expose().to_owned();
    sh.observe(cred, &token);
    let mut record = serde_json::json!({
        "id": id,
        "provider": "codex",
        "refresh_token": token,
        "token_url": sh.env.fake.token_url(),
    });
    if let Some(at) = &row.access_token {
        record["access_token"] = Value::from(at.expose());
    }
    if let Some(ms) = row.status.expires_at_ms {
        record["expires_at"] = Value::from(ms / 1000);
    }
    let Some((end, _)) = import_replace(sh, via, cred, &record) else {
        return false;
    };
    let via = via.name();
    match end {
        Imported::Landed => {
            sh.count(WHAT, format!("{via} replaced"));
            return false;
        }
        Imported::Refused("refresh_token_spent", message) => {
            // Rotated between our read and the import: then the row holds
            // another token now.
            let now = admin.get(id).ok();
            if now.is_some_and(|r| r.refresh_token.expose() == token) {
                sh.violation(format!(
                    "{via}: a replace of {id} with the refresh token it holds was refused as \
                     spent: {message}"
                ));
            } else {
                sh.count(WHAT, format!("{via} refused: rotated meanwhile"));
                return true;
            }
        }
        Imported::Refused("refresh_in_progress", _) => {
            sh.count(WHAT, format!("{via} refused: refresh in flight"));
            return true;
        }
        Imported::Refused("unavailable", _) => sh.count(WHAT, "http refused: serve stopping"),
        Imported::Refused(code, message) => sh.violation(format!(
            "{via}: a replace of {id} with the refresh token it holds was refused ({code}): \
             {message}"
        )),
        Imported::Lost => sh.count(WHAT, format!("{via} killed/lost")),
    }
    false
}

/// Counts a refusal of a token that must never be imported; an acceptance
/// is a violation.
fn expect_refusal(
    sh: &Shared,
    what: &'static str,
    via: Via,
    cred: usize,
    (end, life): (Imported, Option<usize>),
    holder: Option<&str>,
) {
    let id = &sh.ids[cred];
    let via = via.name();
    if let Some(life) = life {
        sh.records.lock().unwrap().refused.insert(life);
    }
    match end {
        Imported::Landed => sh.violation(format!(
            "{via}: {what} of {id} was ACCEPTED: the next refresh would send a spent or \
             foreign refresh token and the provider would revoke the login"
        )),
        Imported::Refused("refresh_token_spent", message) => {
            // The refusal must say when the token was spent and why that matters.
            let dated = message.contains(" at 20") && message.contains("revoke");
            if !dated {
                sh.violation(format!(
                    "{via}: {what} of {id} refused as spent without saying when and why: \
                     {message}"
                ));
            }
            sh.count(
                what,
                format!("{via} refused: spent ({})", spent_how(&message)),
            );
        }
        Imported::Refused("refresh_token_in_use", message) => match holder {
            Some(h) if message.contains(&format!("'{h}'")) => {
                sh.count(what, format!("{via} refused: held by another id"));
            }
            _ => sh.violation(format!(
                "{via}: {what} of {id} refused as held by another id (expected {holder:?}): \
                 {message}"
            )),
        },
        Imported::Refused("refresh_in_progress", _) => {
            sh.count(what, format!("{via} refused: refresh in flight"));
        }
        Imported::Refused("unavailable", _) => sh.count(what, "http refused: serve stopping"),
        Imported::Refused(code, message) => sh.violation(format!(
            "{via}: {what} of {id} refused with an unexpected code {code}: {message}"
        )),
        Imported::Lost => sh.count(what, format!("{via} killed/lost")),
    }
}

/// An operator imports an older copy of credential `cred` (a backup, a
/// synced folder): a refresh token the row held before and has since
/// rotated away or replaced. Refused every time; it must change nothing.
fn stale_import(sh: &Shared, admin: &Warden, cred: usize, via: Via, rng: &mut Rng) {
    const WHAT: &str = "stale re-import";
    let id = &sh.ids[cred];
    let Ok(row) = admin.get(id) else { return };
    let current = row.refresh_token.expose().to_owned();
    sh.observe(cred, &current);
    let old: Vec<String> = {
        let r = sh.records.lock().unwrap();
        r.held.get(&cred).map_or_else(Vec::new, |(list, _)| {
            list.iter().filter(|t| **t != current).cloned().collect()
        })
    };
    if old.is_empty() {
        replace_current(sh, admin, cred, via, rng);
        return;
    }
    // Mostly a recent backup, sometimes an old one.
    let token = if rng.chance(50) {
        old[old.len() - 1].clone()
    } else {
        old[rng.below(old.len() as u64) as usize].clone()
    };
    let record = serde_json::json!({
        "id": id,
        "provider": "codex",
        "refresh_token": token,
        "token_url": sh.env.fake.token_url(),
    });
    if let Some(end) = import_replace(sh, via, cred, &record) {
        expect_refusal(sh, WHAT, via, cred, end, None);
    }
}

/// An operator imports, under credential `cred`, the refresh token another
/// credential holds (`token a & token b` would send it twice). Refused,
/// naming the holder (or as spent, if the holder rotated it meanwhile).
fn foreign_import(sh: &Shared, admin: &Warden, cred: usize, via: Via, rng: &mut Rng) {
    const WHAT: &str = "another id's token";
    let n = sh.ids.len() as u64;
    if n < 2 {
        return;
    }
    let other = (cred + 1 + rng.below(n - 1) as usize) % n as usize;
    let (id, holder) = (&sh.ids[cred], &sh.ids[other]);
    let Ok(row) = admin.get(holder) else { return };
    let token = row.refresh_token.expose().to_owned();
    sh.observe(other, &token);
    let record = serde_json::json!({
        "id": id,
        "provider": "codex",
        "refresh_token": token,
        "token_url": sh.env.fake.token_url(),
    });
    if let Some(end) = import_replace(sh, via, cred, &record) {
        expect_refusal(sh, WHAT, via, cred, end, Some(holder));
    }
}

/// An operator logs credential `cred` in again upstream (a new token
/// family) and imports it with `--replace`, over whatever the row holds.
/// The new login becomes the credential's current one (a new epoch).
fn relogin(sh: &Shared, admin: &Warden, cred: usize) {
    const WHAT: &str = "replace (new login)";
    let _turn = sh.operator.lock().unwrap();
    let id = &sh.ids[cred];
    let n = sh.relogins.fetch_add(1, Ordering::SeqCst);
    let account = format!("{id}.relogin{n}");
    let grant = sh.env.fake.new_family(&account);
    let record = grant.import_json(id, "codex", &sh.env.fake.token_url());
    let Some((end, life)) = import_replace(sh, Via::Cli, cred, &record) else {
        return;
    };
    if let Some(life) = life {
        sh.records.lock().unwrap().relogins.insert(life);
    }
    // Whether it landed, from the row: only this import can bring a token
    // of the new family, and nothing else imports until `_turn` ends.
    let Ok(row) = admin.get(id) else { return };
    let issued = sh.env.fake.issued_refresh_tokens(&account);
    let landed = issued.iter().any(|t| t == row.refresh_token.expose());
    match (landed, end) {
        (true, end @ (Imported::Landed | Imported::Lost)) => {
            if let Some(life) = life {
                let pid = sh.records.lock().unwrap().lives[life].pid;
                record_revived_death(sh, admin, cred, pid);
            }
            sh.accounts.lock().unwrap()[cred].push(account);
            sh.count(
                WHAT,
                match end {
                    Imported::Landed => "cli replaced",
                    _ => "cli replaced (importer killed after its commit)",
                },
            );
        }
        (true, Imported::Refused(code, message)) => sh.violation(format!(
            "a new login for {id} was imported although the import was refused ({code}): \
             {message}"
        )),
        (false, Imported::Landed) => sh.violation(format!(
            "import --replace said it imported a new login for {id}, but the row does not \
             hold it"
        )),
        (false, Imported::Refused("refresh_in_progress", _)) => {
            sh.count(WHAT, "cli refused: refresh in flight");
        }
        (false, Imported::Lost) => sh.count(WHAT, "cli killed before its commit"),
        (false, Imported::Refused(code, message)) => sh.violation(format!(
            "a new login for {id} was refused ({code}): {message}"
        )),
    }
}

/// A re-login that replaced a dead row: records the death (as the resetter
/// would have) against the login it ended, from the events.
fn record_revived_death(sh: &Shared, admin: &Warden, cred: usize, pid: u32) {
    let id = &sh.ids[cred];
    let Ok(events) = admin.events(id, Some(200)) else {
        return;
    };
    let Some(i) = events.iter().rposition(|e| {
        e.reason == "re-imported" && owner_of(&e.actor).is_some_and(|(p, _)| p == pid)
    }) else {
        return;
    };
    if events[i].from.as_deref() != Some("dead") {
        return;
    }
    // The refusal that killed it (a replace with the same token since then
    // wrote dead -> dead).
    let reason = events[..i]
        .iter()
        .rev()
        .filter(|e| e.to == "dead")
        .find_map(|e| e.reason.strip_prefix("refresh refused: "))
        .unwrap_or("(no refusal among the last 200 events)")
        .to_owned();
    let account = sh.accounts.lock().unwrap()[cred].last().cloned().unwrap();
    sh.records.lock().unwrap().deaths.push(Death {
        cred,
        account,
        reason,
    });
}

/// One operator move on a random credential: mostly a replace with the
/// current token, a stale re-import or another id's token; rarely (CLI
/// only) a new login.
fn operator_move(sh: &Shared, admin: &Warden, via: Via, rng: &mut Rng) {
    let cred = rng.below(sh.ids.len() as u64) as usize;
    let roll = rng.below(100);
    let relogin_pct = if matches!(via, Via::Cli) {
        sh.plan.relogin_percent
    } else {
        0
    };
    if roll < relogin_pct {
        relogin(sh, admin, cred);
    } else if roll < relogin_pct + (100 - relogin_pct) * 45 / 100 {
        replace_current(sh, admin, cred, via, rng);
    } else if roll < relogin_pct + (100 - relogin_pct) * 85 / 100 {
        stale_import(sh, admin, cred, via, rng);
    } else {
        foreign_import(sh, admin, cred, via, rng);
    }
}

/// What one client call came to.
enum Answer {
    Token(String),
    Unavailable,
    Dead,
    /// The process died or the connection broke: nothing is known.
    Lost,
}

fn lib_worker(sh: &Shared, warden: &Warden, n: u64) {
    let mut rng = Rng::new(sh.plan.seed, 100 + n);
    while !sh.stopped() {
        let cred = rng.below(sh.ids.len() as u64) as usize;
        let id = &sh.ids[cred];
        let start = sh.now_us();
        let roll = rng.below(100);
        let (result, rejected) = if roll < 20 {
            match sh.token_to_reject(cred, &mut rng) {
                Some(t) => (warden.reject(id, &t), Some(t)),
                None => (warden.token(id, Duration::ZERO), None),
            }
        } else if roll < 35 {
            (warden.refresh(id, false), None)
        } else {
            (warden.token(id, Duration::ZERO), None)
        };
        let answer = match result {
            Ok(g) => Answer::Token(g.access_token.expose().to_owned()),
            Err(Error::Unavailable { retry_after_s, .. }) => {
                sh.long_wait(retry_after_s);
                Answer::Unavailable
            }
            Err(Error::Dead { .. }) => Answer::Dead,
            Err(e) => {
                sh.violation(format!("library call on {id} failed unexpectedly: {e}"));
                Answer::Lost
            }
        };
        settle(sh, cred, start, "library", answer, rejected);
        sh.records.lock().unwrap().lib_ops += 1;
        thread::sleep(Duration::from_millis(rng.below(25)));
    }
}

/// Records an answer (and a rejection it settled).
fn settle(
    sh: &Shared,
    cred: usize,
    start_us: u64,
    source: &'static str,
    answer: Answer,
    rejected: Option<String>,
) {
    let settled = !matches!(answer, Answer::Lost);
    match answer {
        Answer::Token(t) => {
            if rejected.as_deref() == Some(t.as_str()) {
                sh.violation(format!(
                    "{source}: reject on {} answered the rejected token",
                    sh.ids[cred]
                ));
            }
            sh.served(cred, &t, start_us, source);
        }
        Answer::Unavailable => sh.records.lock().unwrap().unavailable += 1,
        Answer::Dead => sh.records.lock().unwrap().dead_answers += 1,
        Answer::Lost => {}
    }
    if let (Some(t), true) = (rejected, settled) {
        sh.rejected(cred, &t);
    }
}

fn cli_runner(sh: &Shared, admin: &Warden, n: u64) {
    let mut rng = Rng::new(sh.plan.seed, 200 + n);
    while !sh.stopped() {
        if rng.chance(sh.plan.operator_percent) {
            operator_move(sh, admin, Via::Cli, &mut rng);
            continue;
        }
        let cred = rng.below(sh.ids.len() as u64) as usize;
        let id = sh.ids[cred].clone();
        let roll = rng.below(100);
        let mut cmd = cli_cmd(sh);
        let (kind, rejected) = if roll < 25 {
            match sh.token_to_reject(cred, &mut rng) {
                Some(t) => {
                    cmd.args(["reject", &id, &format!("--token={t}"), "--json"]);
                    (Kind::Reject, Some(t))
                }
                None => {
                    cmd.args(["token", &id, "--json"]);
                    (Kind::Token, None)
                }
            }
        } else if roll < 45 {
            cmd.args(["refresh", &id, "--json"]);
            (Kind::Refresh, None)
        } else {
            cmd.args(["token", &id, "--json"]);
            (Kind::Token, None)
        };
        let step = draw_clock_step(sh, &mut rng);
        if let Some(ms) = step {
            step_clock(&mut cmd, ms);
        }
        let start = sh.now_us();
        let Some(end) = run_child(sh, kind, cmd, step) else {
            continue;
        };
        let answer = if end.killed() || end.stopped() {
            Answer::Lost
        } else {
            match end.status.code() {
                Some(0) => match serde_json::from_str::<Value>(&end.stdout) {
                    Ok(v) => match v["access_token"].as_str() {
                        Some(t) => Answer::Token(t.to_owned()),
                        None => {
                            sh.violation(format!("{kind:?} printed no token: {}", end.stdout));
                            Answer::Lost
                        }
                    },
                    Err(e) => {
                        sh.violation(format!("{kind:?} printed no JSON ({e}): {}", end.stdout));
                        Answer::Lost
                    }
                },
                Some(4) => Answer::Dead,
                Some(5) => {
                    let secs = end
                        .last_line()
                        .rsplit_once("retry in ")
                        .and_then(|(_, t)| t.split_whitespace().next()?.parse().ok());
                    sh.long_wait(secs.unwrap_or(0));
                    Answer::Unavailable
                }
                other => {
                    sh.violation(format!(
                        "{kind:?} {id} exited {other:?}: {}",
                        end.last_line()
                    ));
                    Answer::Lost
                }
            }
        };
        settle(sh, cred, start, "cli", answer, rejected);
    }
}

fn sweep_runner(sh: &Shared) {
    let mut rng = Rng::new(sh.plan.seed, 300);
    while !sh.stopped() {
        let mut cmd = cli_cmd(sh);
        cmd.args(["sweep", "--json", "--concurrency", "3"]);
        if let Some(end) = run_child(sh, Kind::Sweep, cmd, None) {
            match end.status.code() {
                _ if end.killed() || end.stopped() => {}
                Some(0 | 4 | 5) => {}
                other => sh.violation(format!("sweep exited {other:?}: {}", end.last_line())),
            }
        }
        thread::sleep(Duration::from_millis(rng.between((100, 500))));
    }
}

/// Keeps one `tokenwarden serve` running; restarts it after a kill, and
/// after it exited 0 on a SIGTERM — once its refreshes in flight committed.
fn serve_supervisor(sh: &Shared, admin: &Warden) {
    while !sh.stopped() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = cli_cmd(sh);
        cmd.args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--threads",
            "4",
            "--refresher-threads",
            "2",
        ]);
        *sh.serve_addr.lock().unwrap() = Some(addr);
        if let Some(end) = run_child(sh, Kind::Serve, cmd, None) {
            *sh.serve_addr.lock().unwrap() = None;
            let termed = sh.records.lock().unwrap().lives[end.life].termed;
            if termed {
                serve_stopped(sh, admin, &end);
            } else if !end.killed() {
                sh.violation(format!(
                    "serve exited by itself ({}): {}",
                    end.status,
                    end.last_line()
                ));
                return;
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A `serve` signalled once with SIGTERM has ended: it must have exited 0,
/// and only once no lease of its own was left (invariant 8).
fn serve_stopped(sh: &Shared, admin: &Warden, end: &Ended) {
    let pid = end.pid;
    let exited_ms = tokenwarden::clock::now_ms();
    {
        let mut r = sh.records.lock().unwrap();
        let t = r
            .terms
            .iter_mut()
            .find(|t| t.life == end.life)
            .expect("signalled");
        if end.killed() {
            t.killed = true;
            return;
        }
        if end.status.code() == Some(0) {
            t.exited = Some((exited_ms, t.sent.elapsed()));
        }
    }
    if end.status.code() != Some(0) {
        sh.violation(format!(
            "serve pid {pid} ended {} after one SIGTERM (must drain, then exit 0): {}",
            end.status,
            end.last_line()
        ));
        return;
    }
    let now = lease_clock(admin);
    for id in &sh.ids {
        let Ok(row) = admin.get(id) else { continue };
        let Some(lease) = row
            .status
            .lease
            .as_ref()
            .filter(|_| row.status.state == State::Refreshing)
        else {
            continue;
        };
        if owner_of(&lease.owner).is_some_and(|(p, _)| p == pid) {
            sh.violation(format!(
                "serve pid {pid} exited 0 after SIGTERM while {id} was still leased to it \
                 ({}, {:?} ms left): a refresh it started was neither committed nor released",
                lease.owner,
                row.status.lease_left_ms(now)
            ));
        }
    }
}

/// Sends `serve` a SIGTERM every so often, at a moment it holds a live
/// refresh lease (a caller's refresh in an HTTP worker, or its background
/// refresher's): it must stop taking work, let those refreshes commit, and
/// exit 0 (checked by [`serve_stopped`] and [`Checks::serve_terms`]).
fn terminator(sh: &Shared, admin: &Warden) {
    let Some(gap) = sh.plan.serve_sigterm_gap_ms else {
        return;
    };
    let mut rng = Rng::new(sh.plan.seed, 800);
    while !sh.stopped() {
        thread::sleep(Duration::from_millis(rng.between(gap)));
        let give_up = Instant::now() + Duration::from_secs(5);
        while !sh.stopped() && Instant::now() < give_up {
            thread::sleep(Duration::from_millis(2));
            let serve = sh
                .procs
                .lock()
                .unwrap()
                .iter()
                .find(|(_, (kind, _))| *kind == Kind::Serve)
                .map(|(pid, _)| *pid);
            let Some(pid) = serve else { continue };
            if sh.records.lock().unwrap().draining(pid) {
                continue;
            }
            let now = lease_clock(admin);
            let held: Vec<(usize, String)> = sh
                .ids
                .iter()
                .enumerate()
                .filter_map(|(cred, id)| {
                    let row = admin.get(id).ok()?;
                    row.status.lease_left_ms(now)?;
                    let owner = row.status.lease.as_ref()?.owner.clone();
                    (owner_of(&owner)?.0 == pid).then_some((cred, owner))
                })
                .collect();
            if held.is_empty() {
                continue;
            }
            let procs = sh.procs.lock().unwrap();
            if procs.contains_key(&pid) && signal(pid, "-TERM") {
                let mut r = sh.records.lock().unwrap();
                if let Some(life) = r.running(pid) {
                    r.lives[life].termed = true;
                    r.terms.push(Term {
                        life,
                        at_ms: tokenwarden::clock::now_ms(),
                        sent: Instant::now(),
                        held,
                        exited: None,
                        killed: false,
                    });
                }
            }
            break;
        }
    }
}

fn http_client(sh: &Shared, admin: &Warden, n: u64) {
    let mut rng = Rng::new(sh.plan.seed, 400 + n);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(15)))
        .build()
        .into();
    while !sh.stopped() {
        let Some(addr) = *sh.serve_addr.lock().unwrap() else {
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        if rng.chance(sh.plan.http_operator_percent) {
            operator_move(sh, admin, Via::Http(&agent, addr), &mut rng);
            sh.records.lock().unwrap().http_ops += 1;
            continue;
        }
        let cred = rng.below(sh.ids.len() as u64) as usize;
        let id = &sh.ids[cred];
        let base = format!("http://{addr}/v1/credentials/{id}");
        let roll = rng.below(100);
        let start = sh.now_us();
        let (result, rejected) = if roll < 20 {
            match sh.token_to_reject(cred, &mut rng) {
                Some(t) => {
                    let body = serde_json::json!({ "access_token": t }).to_string();
                    (
                        agent
                            .post(format!("{base}/reject"))
                            .header("Content-Type", "application/json")
                            .send(body.as_bytes()),
                        Some(t),
                    )
                }
                None => (agent.get(format!("{base}/token")).call(), None),
            }
        } else if roll < 30 {
            (agent.post(format!("{base}/refresh")).send(&[][..]), None)
        } else {
            (agent.get(format!("{base}/token")).call(), None)
        };
        let answer = match result {
            Err(_) => {
                // Not up yet, or killed mid-request.
                thread::sleep(Duration::from_millis(20));
                Answer::Lost
            }
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let body = resp.body_mut().read_to_string().unwrap_or_default();
                match status {
                    200 => match serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v["access_token"].as_str().map(str::to_owned))
                    {
                        Some(t) => Answer::Token(t),
                        None => {
                            sh.violation(format!("HTTP 200 without a token: {body}"));
                            Answer::Lost
                        }
                    },
                    // A stopping server refuses requests it had not started
                    // yet: a reject answered so was never recorded.
                    503 if rejected.is_some() && body.contains("shutting down") => Answer::Lost,
                    503 => Answer::Unavailable,
                    410 => Answer::Dead,
                    other => {
                        sh.violation(format!("HTTP {other} from {base}: {body}"));
                        Answer::Lost
                    }
                }
            }
        };
        settle(sh, cred, start, "http", answer, rejected);
        sh.records.lock().unwrap().http_ops += 1;
        thread::sleep(Duration::from_millis(rng.below(25)));
    }
}

fn killer(sh: &Shared) {
    let mut rng = Rng::new(sh.plan.seed, 500);
    while !sh.stopped() {
        thread::sleep(Duration::from_millis(rng.between(sh.plan.kill_gap_ms)));
        let mut procs = sh.procs.lock().unwrap();
        if procs.is_empty() {
            continue;
        }
        let mut pids: Vec<u32> = procs.keys().copied().collect();
        pids.sort_unstable();
        let pid = pids[rng.below(pids.len() as u64) as usize];
        let (kind, child) = procs.get_mut(&pid).unwrap();
        // The server lives longer than a CLI call: kill it less often; and
        // never while it drains after a SIGTERM (that is checked).
        if *kind == Kind::Serve && (!rng.chance(10) || sh.records.lock().unwrap().draining(pid)) {
            continue;
        }
        // A one-shot CLI finishes its refreshes on SIGTERM, then exits
        // 143; a second SIGTERM would exit at once, so a process already
        // sent one gets SIGKILL instead (a kill: the crash window).
        let life = sh.records.lock().unwrap().running(pid);
        let first_term = life.is_some_and(|l| !sh.records.lock().unwrap().lives[l].termed);
        if *kind != Kind::Serve && first_term && rng.chance(sh.plan.cli_sigterm_percent) {
            if signal(pid, "-TERM") {
                if let Some(l) = life {
                    sh.records.lock().unwrap().lives[l].termed = true;
                }
            }
        } else {
            let _ = child.kill();
        }
    }
}

/// Notes when each token request arrived (by polling the fake's counter
/// every millisecond) until `done`.
fn timer(sh: &Shared, done: &AtomicBool) {
    let mut arrived = 0;
    while !done.load(Ordering::SeqCst) {
        let n = sh.env.fake.stats().token_requests;
        if n != arrived {
            arrived = n;
            sh.arrivals
                .lock()
                .unwrap()
                .push((n, tokenwarden::clock::now_ms()));
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Kills the lease owner right after upstream answered: the documented
/// crash window (after the answer, before the commit).
fn sniper(sh: &Shared, admin: &Warden) {
    let mut rng = Rng::new(sh.plan.seed, 600);
    let mut last = 0;
    while !sh.stopped() {
        thread::sleep(Duration::from_millis(1));
        let now = sh.env.fake.stats().successful_refreshes;
        if now == last {
            continue;
        }
        last = now;
        if !rng.chance(sh.plan.snipe_percent) {
            continue;
        }
        for id in &sh.ids {
            let Ok(row) = admin.get(id) else { continue };
            let Some(lease) = row
                .status
                .lease
                .filter(|_| row.status.state == State::Refreshing)
            else {
                continue;
            };
            let Some((pid, _)) = owner_of(&lease.owner) else {
                continue;
            };
            if sh.records.lock().unwrap().draining(pid) {
                continue; // draining after a SIGTERM: that is checked
            }
            if let Some((_, child)) = sh.procs.lock().unwrap().get_mut(&pid) {
                let _ = child.kill();
                sh.snipes.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn fault_injector(sh: &Shared) {
    let mut rng = Rng::new(sh.plan.seed, 700);
    let fake = &sh.env.fake;
    while !sh.stopped() {
        thread::sleep(Duration::from_millis(rng.between(sh.plan.fault_gap_ms)));
        if fake.pending_faults() >= 2 {
            continue;
        }
        let (name, fault) = match rng.below(100) {
            0..=19 => {
                let status = [500, 502, 503][rng.below(3) as usize];
                ("5xx", Fault::status(status, r#"{"error":"server_error"}"#))
            }
            20..=29 => (
                "429+Retry-After",
                Fault::retry_after(429, r#"{"error":"rate_limit_exceeded"}"#, "1"),
            ),
            30..=41 => ("HangBefore", Fault::HangBefore(Duration::from_secs(1))),
            42..=47 => (
                "ProcessThenHang",
                Fault::ProcessThenHang(Duration::from_secs(1)),
            ),
            48..=61 => ("Garbage", Fault::Garbage),
            62..=67 => ("ProcessThenDrop", Fault::ProcessThenDrop),
            68..=81 => ("Drop", Fault::Drop),
            82..=83 => (
                "invalid_grant (permanent)",
                Fault::status(
                    400,
                    r#"{"error":"invalid_grant","error_description":"chaos"}"#,
                ),
            ),
            _ => continue,
        };
        fake.push_fault(fault);
        *sh.faults.lock().unwrap().entry(name).or_default() += 1;
    }
}

fn resetter(sh: &Shared, admin: &Warden) {
    while !sh.stopped() {
        thread::sleep(Duration::from_millis(100));
        for cred in 0..sh.ids.len() {
            let _turn = sh.operator.lock().unwrap();
            let Ok(row) = admin.get(&sh.ids[cred]) else {
                continue;
            };
            sh.observe(cred, row.refresh_token.expose());
            if row.status.state == State::Dead {
                let account = sh.accounts.lock().unwrap()[cred].last().cloned().unwrap();
                sh.records.lock().unwrap().deaths.push(Death {
                    cred,
                    account,
                    reason: row.status.dead_reason.clone().unwrap_or_default(),
                });
                fresh_login(sh, admin, cred);
            }
        }
    }
}

/// `(pid, thread name)` of an actor / lease owner `ROLE pid:N thread:NAME`.
fn owner_of(actor: &str) -> Option<(u32, Option<String>)> {
    let rest = actor.split("pid:").nth(1)?;
    let pid = rest.split_whitespace().next()?.parse().ok()?;
    let thread = rest.split("thread:").nth(1).map(|t| t.trim().to_owned());
    Some((pid, thread))
}

// ---------------------------------------------------------------------------
// The run.

/// Runs `plan` and checks the invariants (numbered as in RELIABILITY.md):
///
/// 1. single flight: never two token requests of one family in flight;
/// 2. no reuse: a refresh token whose rotation was committed (its successor
///    was used later, is in the database, or was in it when an import
///    replaced that login) is never presented again;
/// 3. no lost rotation: every clean rotation upstream is in the database or
///    superseded — or its owner was killed holding the lease (the
///    documented crash window, counted) or timed out on it (ambiguous,
///    counted); and no live process (one stopping after a SIGTERM
///    included) ever abandons a lease, nor has an import replace the row
///    under it (3b);
/// 4. no rejected token is handed out by a call started after the
///    rejection was settled;
/// 5. nothing stays `refreshing` past its lease; every credential is
///    usable or dead at the end, and a live one holds upstream's current
///    refresh token;
/// 6. credentials die only of reuse after a crash-window hit / ambiguous
///    fault, or of an injected permanent fault; nothing unknown is ever
///    sent upstream;
/// 7. no process panics; no client gets an unexpected error;
/// 8. a `serve` SIGTERMed while it holds refresh leases exits 0, and only
///    after each of those leases ended in its own commit;
/// 9. an import of a spent refresh token (stale re-import) or of another
///    id's is refused every time, saying why, and writes nothing; a replace
///    with the current token is never refused as spent.
///
/// Some CLI workers run with their wall clock alone stepped ±60 s; their
/// events' times are corrected by the step before leases are matched to
/// upstream requests.
/// The lease clock `admin`'s store judges leases on: the box's boot-time
/// clock, or PostgreSQL's server clock.
fn lease_clock(admin: &Warden) -> tokenwarden::state::LeaseTime {
    admin
        .store()
        .lease_now()
        .unwrap_or_else(tokenwarden::clock::lease_now)
}

/// The chaos run on `backend`; `None` where there is no PostgreSQL (see
/// common/pg.rs).
pub fn run_on(plan: &Plan, backend: Backend) -> Option<Report> {
    let _ = log::set_logger(&CAPTURE).map(|()| log::set_max_level(log::LevelFilter::Warn));
    let env = Env::with_on(tuning(), backend)?;
    env.fake.set_expires_in(EXPIRES_IN);
    env.fake.set_latency(LATENCY);
    let ids: Vec<String> = (0..plan.credentials).map(|i| format!("c{i}")).collect();
    let sh = Shared {
        env: &env,
        plan,
        ids: ids.clone(),
        t0: Instant::now(),
        t0_ms: tokenwarden::clock::now_ms(),
        stop: AtomicBool::new(false),
        procs: Mutex::new(HashMap::new()),
        records: Mutex::new(Records::default()),
        accounts: Mutex::new(vec![Vec::new(); plan.credentials]),
        serve_addr: Mutex::new(None),
        snipes: AtomicU64::new(0),
        faults: Mutex::new(HashMap::new()),
        arrivals: Mutex::new(vec![(0, tokenwarden::clock::now_ms())]),
        operator: Mutex::new(()),
        relogins: AtomicU64::new(0),
        files: AtomicU64::new(0),
        faketime: std::path::Path::new(LIBFAKETIME).exists(),
    };
    if !sh.faketime {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the faketime package (.ci/run does)"
        );
        eprintln!("chaos: {LIBFAKETIME} not installed: no clock steps (apt-get install faketime)");
    }
    let admin = library_warden(&env);
    for cred in 0..ids.len() {
        fresh_login(&sh, &admin, cred);
    }
    let wardens = [library_warden(&env), library_warden(&env)];
    eprintln!(
        "chaos: seed {} for {:?} ({} credentials; replay the choices with TOKENWARDEN_CHAOS_SEED={})",
        plan.seed, plan.duration, plan.credentials, plan.seed
    );

    let timing_done = AtomicBool::new(false);
    let (workload, found) = thread::scope(|outer| {
        outer.spawn(|| timer(&sh, &timing_done));
        let started = Instant::now();
        workload(&sh, &admin, &wardens, started);
        let workload = started.elapsed();
        // Every process is gone: let every lease run out.
        thread::sleep(Duration::from_secs_f64(tuning().lease_ttl + 1.0));
        let mut checks = Checks::new(&sh, &admin);
        checks.end_state();
        timing_done.store(true, Ordering::SeqCst);
        checks.fake_log();
        checks.serve_terms();
        checks.imports();
        checks.rejections();
        (workload, checks.take())
    });
    Some(report(&sh, found, workload))
}

/// The threads of the workload, until the plan's duration is over and every
/// one of them has finished.
fn workload(sh: &Shared, admin: &Warden, wardens: &[Warden; 2], started: Instant) {
    let plan = sh.plan;
    thread::scope(|s| {
        let named = |name: String| thread::Builder::new().name(name);
        for n in 0..plan.lib_threads {
            let w = &wardens[n % 2];
            named(format!("chaos-lib-{n}"))
                .spawn_scoped(s, move || lib_worker(sh, w, n as u64))
                .unwrap();
        }
        for n in 0..plan.cli_runners {
            named(format!("chaos-cli-{n}"))
                .spawn_scoped(s, move || cli_runner(sh, admin, n as u64))
                .unwrap();
        }
        if plan.sweeps {
            named("chaos-sweep".into())
                .spawn_scoped(s, move || sweep_runner(sh))
                .unwrap();
        }
        if plan.serve {
            named("chaos-serve".into())
                .spawn_scoped(s, move || serve_supervisor(sh, admin))
                .unwrap();
            for n in 0..plan.http_clients {
                named(format!("chaos-http-{n}"))
                    .spawn_scoped(s, move || http_client(sh, admin, n as u64))
                    .unwrap();
            }
            named("chaos-sigterm".into())
                .spawn_scoped(s, move || terminator(sh, admin))
                .unwrap();
        }
        named("chaos-killer".into())
            .spawn_scoped(s, move || killer(sh))
            .unwrap();
        named("chaos-sniper".into())
            .spawn_scoped(s, move || sniper(sh, admin))
            .unwrap();
        named("chaos-faults".into())
            .spawn_scoped(s, move || fault_injector(sh))
            .unwrap();
        named("chaos-reset".into())
            .spawn_scoped(s, move || resetter(sh, admin))
            .unwrap();
        named("chaos-progress".into())
            .spawn_scoped(s, move || {
                let mut last = Instant::now();
                while started.elapsed() < plan.duration {
                    thread::sleep(Duration::from_millis(50));
                    if last.elapsed() >= Duration::from_secs(30) {
                        last = Instant::now();
                        let st = sh.env.fake.stats();
                        let r = sh.records.lock().unwrap();
                        eprintln!(
                            "chaos: {:>4} s: {} refreshes, {} killed, {} served, {} deaths, {} violations",
                            started.elapsed().as_secs(),
                            st.successful_refreshes,
                            r.kills,
                            r.served.len(),
                            r.deaths.len(),
                            r.violations.len()
                        );
                    }
                }
                sh.stop.store(true, Ordering::SeqCst);
                // The server has no natural end: stop it.
                for (kind, child) in sh.procs.lock().unwrap().values_mut() {
                    if *kind == Kind::Serve {
                        let _ = child.kill();
                    }
                }
            })
            .unwrap();
    });
}

/// What the checks found, moved out of [`Checks`].
struct Found {
    violations: Vec<String>,
    causes: HashMap<String, u64>,
    crash_window_hits: u64,
    ambiguous_timeouts: u64,
    fault_lost: u64,
    takeovers: u64,
    serve_terms: ServeTerms,
    stuck_by_step: u64,
}

fn report(sh: &Shared, mut checks: Found, workload: Duration) -> Report {
    let plan = sh.plan;
    let env = sh.env;
    let r = sh.records.lock().unwrap();
    let mut violations = r.violations.clone();
    violations.append(&mut checks.violations);
    let stats = env.fake.stats();
    let count_by = |m: &HashMap<Kind, u64>| {
        let mut v: Vec<(Kind, u64)> = m.iter().map(|(k, n)| (*k, *n)).collect();
        v.sort();
        v
    };
    let mut killed: HashMap<Kind, u64> = HashMap::new();
    for life in r.lives.iter().filter(|l| l.killed) {
        *killed.entry(life.kind).or_default() += 1;
    }
    let mut faults: Vec<(String, u64)> = sh
        .faults
        .lock()
        .unwrap()
        .iter()
        .map(|(k, n)| ((*k).to_owned(), *n))
        .collect();
    faults.sort();
    let mut deaths: Vec<(String, u64)> = checks.causes.into_iter().collect();
    deaths.sort();
    let mut operator: Vec<(String, u64)> = r
        .ops
        .iter()
        .map(|((what, outcome), n)| (format!("{what}: {outcome}"), *n))
        .collect();
    operator.sort();
    let stale_refused = r
        .ops
        .iter()
        .filter(|((what, outcome), _)| {
            what.starts_with("stale") || what.starts_with("another id")
        } && (outcome.contains("refused: spent") || outcome.contains("held by another id")))
        .map(|(_, n)| n)
        .sum();
    let ahead = r.lives.iter().filter(|l| l.offset_ms > 0).count() as u64;
    let behind = r.lives.iter().filter(|l| l.offset_ms < 0).count() as u64;
    let figures = Figures {
        seed: plan.seed,
        workload,
        spawned: count_by(&r.spawned),
        killed: count_by(&killed),
        snipes: sh.snipes.load(Ordering::SeqCst),
        faults,
        token_requests: stats.token_requests,
        rotations: stats.successful_refreshes,
        reuse_detected: stats.reuse_detected,
        max_in_flight_per_family: stats.max_in_flight_per_family,
        served: r.served.len() as u64,
        rejects: r.rejected.len() as u64,
        lib_ops: r.lib_ops,
        http_ops: r.http_ops,
        unavailable: r.unavailable,
        dead_answers: r.dead_answers,
        deaths,
        crash_window_hits: checks.crash_window_hits,
        ambiguous_timeouts: checks.ambiguous_timeouts,
        fault_lost_rotations: checks.fault_lost,
        takeovers: checks.takeovers,
        violations: violations.len(),
        serve: plan.serve,
        cli_sigterm_deaths: r.termed,
        operator,
        stale_refused,
        stepped: sh.faketime.then_some((ahead, behind)),
        serve_terms: checks.serve_terms,
        long_waits: r.long_waits,
        stuck_by_step: checks.stuck_by_step,
    };
    Report {
        figures,
        violations,
    }
}

// ---------------------------------------------------------------------------
// The checks.

/// A lease read back from the events.
#[derive(Debug, Clone)]
struct LeaseSpan {
    epoch: usize,
    generation: usize,
    owner: String,
    /// When it was claimed and when it ended (wall ms; open: `i64::MAX`).
    start_ms: i64,
    end_ms: i64,
    /// How it ended: `commit`, `success`, `takeover`, `reimport`, `open`.
    end: &'static str,
}

struct Checks<'a, 'b> {
    sh: &'a Shared<'b>,
    admin: &'a Warden,
    violations: Vec<String>,
    /// Per credential: its leases.
    leases: Vec<Vec<LeaseSpan>>,
    causes: HashMap<String, u64>,
    crash_window_hits: u64,
    ambiguous_timeouts: u64,
    fault_lost: u64,
    takeovers: u64,
    /// Rotations (request seq) already classified as lost.
    lost: HashMap<usize, &'static str>,
    /// `(credential, epoch)` → how many rotations that login had committed
    /// when an import replaced it: the refresh token it then held.
    replaced_at: HashMap<(usize, usize), usize>,
    serve_terms: ServeTerms,
    /// Credentials found at the end in a backoff a clock-stepped process
    /// wrote.
    stuck_by_step: u64,
}

impl<'a, 'b> Checks<'a, 'b> {
    fn new(sh: &'a Shared<'b>, admin: &'a Warden) -> Self {
        Checks {
            sh,
            admin,
            violations: Vec::new(),
            leases: Vec::new(),
            causes: HashMap::new(),
            crash_window_hits: 0,
            ambiguous_timeouts: 0,
            fault_lost: 0,
            takeovers: 0,
            lost: HashMap::new(),
            replaced_at: HashMap::new(),
            serve_terms: ServeTerms::default(),
            stuck_by_step: 0,
        }
    }

    /// An event's time on the test's wall clock: a clock-stepped process
    /// wrote its own, which is off by its step.
    fn real_ms(&self, at_ms: i64, actor: &str) -> i64 {
        let r = self.sh.records.lock().unwrap();
        let offset = owner_of(actor)
            .and_then(|(pid, _)| r.life_of_event(pid, at_ms))
            .map_or(0, |l| r.lives[l].offset_ms);
        at_ms - offset
    }

    fn fail(&mut self, v: String) {
        eprintln!("chaos: VIOLATION: {v}");
        self.violations.push(v);
    }

    fn take(&mut self) -> Found {
        Found {
            violations: std::mem::take(&mut self.violations),
            causes: std::mem::take(&mut self.causes),
            crash_window_hits: self.crash_window_hits,
            ambiguous_timeouts: self.ambiguous_timeouts,
            fault_lost: self.fault_lost,
            takeovers: self.takeovers,
            serve_terms: std::mem::take(&mut self.serve_terms),
            stuck_by_step: self.stuck_by_step,
        }
    }

    /// Invariant 5 and liveness: no live lease, effective state never
    /// `refreshing`; each credential ends usable (holding upstream's
    /// current refresh token) or dead.
    fn end_state(&mut self) {
        let now = tokenwarden::state::Now {
            wall_ms: tokenwarden::clock::now_ms(),
            lease: lease_clock(self.admin),
        };
        let policy = self.admin.config().policy;
        for (cred, id) in self.sh.ids.iter().enumerate() {
            let row = self.admin.get(id).expect("row");
            // lease_left_ms is None unless the row is refreshing.
            if row.status.lease_left_ms(now.lease).is_some() {
                self.fail(format!(
                    "{id} holds a live lease after every process stopped"
                ));
            }
            if row.status.effective(now, &policy) == State::Refreshing {
                self.fail(format!("{id} reads as refreshing past its lease"));
            }
            // Bring it to rest: usable, or dead. Faults may still be queued.
            // A backoff that a process 60 s ahead wrote keeps everyone else
            // out for a minute (a known flaw, RELIABILITY.md): counted, then
            // overridden by a forced refresh so that the checks below run.
            let mut settled = false;
            let mut forced = false;
            for _ in 0..15 {
                let answer = if forced {
                    self.admin.refresh(id, true)
                } else {
                    self.admin.token(id, Duration::ZERO)
                };
                match answer {
                    Ok(_) => {
                        settled = true;
                        break;
                    }
                    Err(Error::Dead { reason, .. }) => {
                        let account = self.sh.accounts.lock().unwrap()[cred]
                            .last()
                            .cloned()
                            .unwrap();
                        self.sh.records.lock().unwrap().deaths.push(Death {
                            cred,
                            account,
                            reason,
                        });
                        settled = true;
                        break;
                    }
                    Err(Error::Unavailable { retry_after_s, .. }) => {
                        if !forced && retry_after_s > LONG_WAIT_S {
                            if let Some(actor) = self.stepped_backoff(id) {
                                eprintln!(
                                    "chaos: {id} is backing off for {retry_after_s} s after a \
                                     failure recorded by {actor}, whose clock runs 60 s ahead; \
                                     forcing a refresh"
                                );
                                self.stuck_by_step += 1;
                                forced = true;
                                continue;
                            }
                        }
                        thread::sleep(Duration::from_secs(retry_after_s.clamp(1, 2)));
                    }
                    Err(e) => {
                        self.fail(format!("{id}: final token call failed: {e}"));
                        break;
                    }
                }
            }
            if !settled {
                self.fail(format!(
                    "{id} never became usable again (stuck unavailable)"
                ));
            }
            let row = self.admin.get(id).expect("row");
            if row.status.state != State::Dead {
                let account = self.sh.accounts.lock().unwrap()[cred]
                    .last()
                    .cloned()
                    .unwrap();
                let family = self.sh.env.fake.family_state(&account);
                if row.refresh_token.expose() != family.current_refresh_token {
                    self.fail(format!(
                        "{id} is usable but does not hold the refresh token upstream accepts \
                         now ({} rotations upstream): the next refresh would burn the login",
                        family.rotations
                    ));
                }
            }
        }
    }

    /// The actor of the last transient failure of `id`, if a process whose
    /// wall clock runs ahead recorded it (its backoff deadline is then that
    /// far in everyone else's future).
    fn stepped_backoff(&self, id: &str) -> Option<String> {
        let events = self.admin.events(id, Some(50)).ok()?;
        let e = events
            .iter()
            .rev()
            .find(|e| e.reason.starts_with("refresh failed transiently"))?;
        let (pid, _) = owner_of(&e.actor)?;
        let r = self.sh.records.lock().unwrap();
        let life = r.life_of_event(pid, e.at_ms)?;
        (r.lives[life].offset_ms > 0).then(|| e.actor.clone())
    }

    /// The leases of every credential, from its events.
    fn read_leases(&mut self) {
        let mut all = Vec::new();
        for (cred, id) in self.sh.ids.iter().enumerate() {
            let events = self.admin.events(id, None).expect("events");
            let mut spans: Vec<LeaseSpan> = Vec::new();
            let mut open: Option<LeaseSpan> = None;
            let mut epoch: Option<usize> = None;
            let mut generation = 0;
            for e in &events {
                let from = e.from.as_deref();
                let to = e.to.as_str();
                let at_ms = self.real_ms(e.at_ms, &e.actor);
                if e.reason == "imported" || e.reason == "re-imported" {
                    if let Some(mut l) = open.take() {
                        l.end = "reimport";
                        l.end_ms = at_ms;
                        spans.push(l);
                    }
                    if let Some(ep) = epoch {
                        self.replaced_at.insert((cred, ep), generation);
                    }
                    epoch = Some(epoch.map_or(0, |x| x + 1));
                    generation = 0;
                    continue;
                }
                let ep = epoch.unwrap_or(0);
                match (from, to) {
                    (Some("refreshing"), "refreshing") if e.reason.contains("taken over") => {
                        self.takeovers += 1;
                        if let Some(mut l) = open.take() {
                            l.end = "takeover";
                            l.end_ms = at_ms;
                            spans.push(l);
                        }
                        open = Some(LeaseSpan {
                            epoch: ep,
                            generation,
                            owner: e.actor.clone(),
                            start_ms: at_ms,
                            end_ms: i64::MAX,
                            end: "open",
                        });
                    }
                    (Some("refreshing"), "refreshing") => {}
                    (_, "refreshing") => {
                        open = Some(LeaseSpan {
                            epoch: ep,
                            generation,
                            owner: e.actor.clone(),
                            start_ms: at_ms,
                            end_ms: i64::MAX,
                            end: "open",
                        });
                    }
                    (Some("refreshing"), _) => {
                        if let Some(mut l) = open.take() {
                            l.end = if e.reason == "refreshed" {
                                "success"
                            } else {
                                "commit"
                            };
                            l.end_ms = at_ms;
                            spans.push(l);
                        }
                        if e.reason == "refreshed" {
                            generation += 1;
                        }
                    }
                    _ => {}
                }
            }
            if let Some(l) = open.take() {
                spans.push(l);
            }
            all.push(spans);
        }
        self.leases = all;
    }

    /// Whether `owner` (an actor string) was a process that was killed —
    /// the one with that pid alive at `at_ms` (test wall clock).
    fn killed(&self, owner: &str, at_ms: i64) -> bool {
        let r = self.sh.records.lock().unwrap();
        owner_of(owner)
            .and_then(|(pid, _)| r.life_at(pid, at_ms))
            .is_some_and(|l| r.lives[l].killed)
    }

    fn ambiguous_evidence(&self, cred: usize, owner: &str, at_ms: i64) -> bool {
        let Some((pid, thread)) = owner_of(owner) else {
            return false;
        };
        if pid == std::process::id() {
            let id = &self.sh.ids[cred];
            return CAPTURE.lines.lock().unwrap().iter().any(|(name, msg)| {
                msg.starts_with(&format!("{id}: attempt")) && name.as_ref() == thread.as_ref()
            });
        }
        let r = self.sh.records.lock().unwrap();
        r.life_at(pid, at_ms)
            .is_some_and(|l| r.lives[l].ambiguous.contains(&cred))
    }

    /// Invariants 1–3 and 6 from the fake's log and the events.
    fn fake_log(&mut self) {
        self.read_leases();
        let fake = &self.sh.env.fake;
        let stats = fake.stats();
        if stats.max_in_flight_per_family > 1 {
            self.fail(format!(
                "single flight violated: {} token requests of one family in flight at once",
                stats.max_in_flight_per_family
            ));
        }
        // A live process never abandons its lease; and an import never
        // replaces a row under a live lease (it waits, or refuses).
        for (cred, spans) in self.leases.clone().iter().enumerate() {
            for l in spans.iter().filter(|l| l.end == "takeover") {
                if !self.killed(&l.owner, l.start_ms) {
                    self.fail(format!(
                        "{}: the lease of {} (not killed) was taken over: a live owner let it \
                         run out",
                        self.sh.ids[cred], l.owner
                    ));
                }
            }
            for l in spans.iter().filter(|l| l.end == "reimport") {
                if !self.killed(&l.owner, l.start_ms) {
                    self.fail(format!(
                        "{}: an import replaced the row while {} (not killed) held its lease \
                         (claimed at {} ms, replaced at {} ms)",
                        self.sh.ids[cred], l.owner, l.start_ms, l.end_ms
                    ));
                }
            }
        }
        let log = fake.token_requests();
        let accounts = self.sh.accounts.lock().unwrap().clone();
        let mut account_of: HashMap<String, (usize, usize)> = HashMap::new();
        for (cred, list) in accounts.iter().enumerate() {
            for (epoch, a) in list.iter().enumerate() {
                account_of.insert(a.clone(), (cred, epoch));
            }
        }
        let final_tokens: Vec<Option<String>> = self
            .sh
            .ids
            .iter()
            .map(|id| {
                self.admin
                    .get(id)
                    .ok()
                    .map(|r| r.refresh_token.expose().to_owned())
            })
            .collect();
        for r in &log {
            if r.account.is_none() && r.refresh_token.is_some() && r.fault.is_none() {
                self.fail(format!(
                    "request #{} presented a refresh token upstream never issued ({:?})",
                    r.seq, r.outcome
                ));
            }
        }
        let mut by_account: HashMap<&str, Vec<&TokenRequest>> = HashMap::new();
        for r in &log {
            if let Some(a) = &r.account {
                by_account.entry(a.as_str()).or_default().push(r);
            }
        }
        for (account, reqs) in &by_account {
            let Some(&(cred, epoch)) = account_of.get(*account) else {
                self.fail(format!("requests for an account never imported: {account}"));
                continue;
            };
            let issued = fake.issued_refresh_tokens(account);
            let current_epoch = accounts[cred].len() - 1 == epoch;
            for r in reqs.iter().filter(|r| r.outcome == Outcome::Rotated) {
                let presented = r.refresh_token.clone().unwrap_or_default();
                let Some(g) = issued.iter().position(|t| *t == presented) else {
                    continue;
                };
                let Some(next) = issued.get(g + 1) else {
                    continue;
                };
                let done = r.done_tick.unwrap_or(u64::MAX);
                // The token the row held when an import replaced this login.
                let replaced = self
                    .replaced_at
                    .get(&(cred, epoch))
                    .and_then(|&g| issued.get(g));
                let kept = reqs
                    .iter()
                    .any(|x| x.arrival_tick > done && x.refresh_token.as_ref() == Some(next))
                    || (current_epoch && final_tokens[cred].as_ref() == Some(next))
                    || (!current_epoch && replaced == Some(next));
                let reused = reqs
                    .iter()
                    .find(|x| x.arrival_tick > done && x.refresh_token == r.refresh_token);
                if r.fault.is_some() {
                    if !kept {
                        self.fault_lost += 1;
                        self.lost.insert(r.seq, "injected ambiguous fault");
                    }
                    continue;
                }
                match (kept, reused) {
                    (true, Some(x)) => self.fail(format!(
                        "{account}: refresh token of generation {g} was sent again (request #{}) \
                         after its rotation (request #{}) was committed",
                        x.seq, r.seq
                    )),
                    (true, None) => {}
                    (false, _) => {
                        // The lease(s) live when the request arrived.
                        let (lo, hi) = self.sh.arrival_window(r.seq);
                        let spans: Vec<LeaseSpan> = self.leases[cred]
                            .iter()
                            .filter(|l| l.epoch == epoch && l.generation == g)
                            .filter(|l| l.start_ms <= hi && l.end_ms >= lo)
                            .cloned()
                            .collect();
                        let crash = spans.iter().any(|l| {
                            l.end != "success"
                                && l.end != "commit"
                                && self.killed(&l.owner, l.start_ms)
                        });
                        let timeout = spans.iter().any(|l| {
                            l.end == "commit" && self.ambiguous_evidence(cred, &l.owner, l.start_ms)
                        });
                        if crash {
                            self.crash_window_hits += 1;
                            self.lost.insert(r.seq, "crash window (owner killed)");
                        } else if timeout {
                            self.ambiguous_timeouts += 1;
                            self.lost.insert(r.seq, "ambiguous timeout");
                        } else {
                            self.fail(format!(
                                "{account}: the rotation of generation {g} (request #{}, arrived \
                                 {lo}..{hi} ms) was answered cleanly but never committed, and its \
                                 lease's owner was neither killed nor timed out: leases {spans:?} \
                                 (all of generation {g}: {:?})",
                                r.seq,
                                self.leases[cred]
                                    .iter()
                                    .filter(|l| l.epoch == epoch && l.generation == g)
                                    .collect::<Vec<_>>()
                            ));
                        }
                    }
                }
            }
        }
        // Why each credential died.
        let deaths = self.sh.records.lock().unwrap().deaths.clone();
        for d in deaths {
            let cause = self.cause(&d, &by_account);
            *self.causes.entry(cause).or_default() += 1;
        }
    }

    fn cause(&mut self, d: &Death, by_account: &HashMap<&str, Vec<&TokenRequest>>) -> String {
        let id = &self.sh.ids[d.cred];
        let reqs = by_account
            .get(d.account.as_str())
            .cloned()
            .unwrap_or_default();
        match d.reason.as_str() {
            "refresh_token_reused" | "refresh_token_invalidated" => {
                let Some(reuse) = reqs.iter().find(|r| r.outcome == Outcome::Reused) else {
                    self.fail(format!(
                        "{id} ({}) died of {} but upstream saw no reuse",
                        d.account, d.reason
                    ));
                    return "unexplained".into();
                };
                let rotation = reqs.iter().find(|r| {
                    r.outcome == Outcome::Rotated && r.refresh_token == reuse.refresh_token
                });
                match rotation.and_then(|r| self.lost.get(&r.seq)) {
                    Some(why) => format!("reuse after {why}"),
                    None => {
                        self.fail(format!(
                            "{id} ({}) died of reuse (request #{}) with no lost rotation behind it",
                            d.account, reuse.seq
                        ));
                        "unexplained".into()
                    }
                }
            }
            "invalid_grant" => {
                let injected = reqs.iter().any(|r| {
                    matches!(&r.fault, Some(Fault::Status { status: 400, body, .. }) if body.contains("invalid_grant"))
                });
                if injected {
                    "injected permanent fault".into()
                } else {
                    self.fail(format!(
                        "{id} ({}) died of invalid_grant not injected",
                        d.account
                    ));
                    "unexplained".into()
                }
            }
            other => {
                self.fail(format!("{id} ({}) died of {other}", d.account));
                "unexplained".into()
            }
        }
    }

    /// Invariant 9: a refused (or killed) stale or foreign import wrote
    /// nothing — no event names its process; and no import but a new login
    /// (the resetter's, in this process, or an operator's re-login) ever
    /// put another refresh token in a row: a replace with the current token
    /// that lands must land as "same refresh token", or it carried a token
    /// that was rotated away while it waited.
    fn imports(&mut self) {
        let me = std::process::id();
        for id in &self.sh.ids {
            let events = self.admin.events(id, None).expect("events");
            for e in events {
                let pid = owner_of(&e.actor).map(|(pid, _)| pid);
                let (refused, relogin) = {
                    let r = self.sh.records.lock().unwrap();
                    let life = pid.and_then(|p| r.life_of_event(p, e.at_ms));
                    (
                        life.is_some_and(|l| r.refused.contains(&l)),
                        life.is_some_and(|l| r.relogins.contains(&l)),
                    )
                };
                if refused {
                    self.fail(format!(
                        "{id}: a stale or foreign import that must have been refused wrote an \
                         event: {} -> {} by {} ({})",
                        e.from.as_deref().unwrap_or("-"),
                        e.to,
                        e.actor,
                        e.reason
                    ));
                }
                let new_token = e.reason == "imported" || e.reason == "re-imported";
                if new_token && pid != Some(me) && !relogin {
                    self.fail(format!(
                        "{id}: {} put a new refresh token in the row (event {}: {}) but was no \
                         new login: a spent or foreign refresh token was accepted",
                        e.actor, e.seq, e.reason
                    ));
                }
            }
        }
    }

    /// Invariant 8: every lease `serve` held when it got its SIGTERM ended
    /// in a commit (a rotation, or a released failure) before it exited 0 —
    /// never taken over, replaced or left open.
    fn serve_terms(&mut self) {
        let terms: Vec<(Life, Term)> = {
            let r = self.sh.records.lock().unwrap();
            r.terms
                .iter()
                .map(|t| (r.lives[t.life].clone(), t.clone()))
                .collect()
        };
        let mut f = ServeTerms::default();
        for (life, t) in terms {
            let pid = life.pid;
            f.sent += 1;
            f.leases_held += t.held.len() as u64;
            let Some((exit_ms, took)) = t.exited else {
                continue;
            };
            f.clean_exits += 1;
            f.max_drain = f.max_drain.max(took);
            let of_pid = |l: &&LeaseSpan| {
                owner_of(&l.owner).is_some_and(|(p, _)| p == pid)
                    && l.start_ms >= life.start_ms - LIFE_SLACK_MS
            };
            f.rotations_after_signal += self
                .leases
                .iter()
                .flatten()
                .filter(of_pid)
                .filter(|l| l.end == "success" && l.end_ms >= t.at_ms)
                .count() as u64;
            for (cred, owner) in &t.held {
                let id = &self.sh.ids[*cred];
                let span = self.leases[*cred]
                    .iter()
                    .rfind(|l| {
                        l.owner == *owner
                            && l.start_ms <= t.at_ms + 5
                            && l.start_ms >= life.start_ms - LIFE_SLACK_MS
                    })
                    .cloned();
                let Some(l) = span else {
                    self.fail(format!(
                        "{id}: no lease of {owner} found, though it held one when SIGTERMed"
                    ));
                    continue;
                };
                match l.end {
                    "success" => f.committed += 1,
                    "commit" => {}
                    other => self.fail(format!(
                        "{id}: the lease {owner} held when SIGTERMed ended by {other}, not by \
                         its own commit: {l:?}"
                    )),
                }
                if l.end_ms > exit_ms {
                    self.fail(format!(
                        "{id}: serve pid {pid} exited 0 at {exit_ms} ms, before its lease \
                         ended ({l:?})"
                    ));
                }
            }
        }
        self.serve_terms = f;
    }

    /// Invariant 4: a call started after a rejection was settled never
    /// gets the rejected token.
    fn rejections(&mut self) {
        // (credential, token, source, call start, rejection settled)
        let mut bad: Vec<(usize, String, &'static str, u64, u64)> = Vec::new();
        {
            let r = self.sh.records.lock().unwrap();
            let mut settled: HashMap<(usize, &str), u64> = HashMap::new();
            for rej in &r.rejected {
                let e = settled
                    .entry((rej.cred, rej.token.as_str()))
                    .or_insert(rej.done_us);
                *e = (*e).min(rej.done_us);
            }
            for s in &r.served {
                if let Some(&done) = settled.get(&(s.cred, s.token.as_str())) {
                    if s.start_us > done {
                        bad.push((s.cred, s.token.clone(), s.source, s.start_us, done));
                    }
                }
            }
        }
        let mut shown: HashSet<(usize, String)> = HashSet::new();
        for (cred, token, source, start_us, done) in bad {
            // The first time for a token: what the row went through from a
            // second before the rejection to the call.
            let story = if shown.insert((cred, token)) {
                let from = self.sh.wall_ms(done) - 1000;
                let to = self.sh.wall_ms(start_us) + 200;
                format!(
                    "; events of {} around it (ms after the rejection settled): {}",
                    self.sh.ids[cred],
                    self.story(cred, from, to, self.sh.wall_ms(done))
                )
            } else {
                String::new()
            };
            self.fail(format!(
                "{}: a {source} call started {} ms after the token was rejected got it again{story}",
                self.sh.ids[cred],
                (start_us - done) / 1000
            ));
        }
    }

    /// Credential `cred`'s events between `from_ms` and `to_ms` (wall),
    /// with their times relative to `zero_ms`, for a violation's message.
    fn story(&self, cred: usize, from_ms: i64, to_ms: i64, zero_ms: i64) -> String {
        let events = self
            .admin
            .events(&self.sh.ids[cred], None)
            .unwrap_or_default();
        let lines: Vec<String> = events
            .iter()
            .map(|e| (self.real_ms(e.at_ms, &e.actor), e))
            .filter(|(at, _)| (from_ms..=to_ms).contains(at))
            .map(|(at, e)| {
                format!(
                    "[#{} {:+} ms v{} {} -> {} by {}: {}]",
                    e.seq,
                    at - zero_ms,
                    e.version,
                    e.from.as_deref().unwrap_or("-"),
                    e.to,
                    e.actor,
                    e.reason
                )
            })
            .collect();
        lines.join(" ")
    }
}
