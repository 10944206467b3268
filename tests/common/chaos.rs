//! A chaos controller: many threads and processes share one database —
//! library threads, `tokenwarden token|reject|refresh` CLI processes,
//! `tokenwarden sweep` passes and a `tokenwarden serve` (with its background
//! refresher) driven over HTTP — while random processes are SIGKILLed at
//! random moments (some aimed at the instant upstream has answered but the
//! owner has not committed yet), the fake OAuth server injects faults, and
//! access tokens live a few seconds so refreshes never stop.
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
use super::http::XorShift;
use super::tw::{Env, Tuning};

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

// ---------------------------------------------------------------------------
// PRNG.

/// Independent seeded streams of the shared xorshift64* generator.
pub struct Rng(XorShift);

impl Rng {
    /// Seeded; `stream` derives independent generators from one seed.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(XorShift::new(
            seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ));
        r.next();
        r
    }

    /// The next 64 bits.
    pub fn next(&mut self) -> u64 {
        self.0.next()
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

/// Log lines saying an attempt ended ambiguously: (credential, pid, thread
/// name if known).
type Ambiguous = HashSet<(usize, u32, Option<String>)>;

#[derive(Default)]
struct Records {
    served: Vec<Served>,
    rejected: Vec<Rejected>,
    recent: HashMap<usize, VecDeque<String>>,
    deaths: Vec<Death>,
    killed: HashMap<u32, Kind>,
    spawned: HashMap<Kind, u64>,
    violations: Vec<String>,
    ambiguous: Ambiguous,
    lib_ops: u64,
    http_ops: u64,
    unavailable: u64,
    dead_answers: u64,
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
            let msg = r.args().to_string();
            if msg.contains("ended ambiguously") {
                let name = thread::current().name().map(str::to_owned);
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

    fn evidence(&self, pid: u32, stderr: &str) {
        for line in stderr.lines().filter(|l| l.contains("ended ambiguously")) {
            for (i, id) in self.ids.iter().enumerate() {
                if line.contains(&format!("{id}: attempt")) {
                    self.records
                        .lock()
                        .unwrap()
                        .ambiguous
                        .insert((i, pid, None));
                }
            }
        }
    }
}

/// A child process's end.
struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ended {
    fn killed(&self) -> bool {
        self.status.signal() == Some(9)
    }

    fn last_line(&self) -> &str {
        self.stderr.trim_end().lines().last().unwrap_or_default()
    }
}

/// Runs `cmd` as a killable process of `kind` until it exits.
fn run_child(sh: &Shared, kind: Kind, mut cmd: Command) -> Option<Ended> {
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
    *sh.records.lock().unwrap().spawned.entry(kind).or_default() += 1;
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
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    if ended.killed() {
        sh.records.lock().unwrap().killed.insert(pid, kind);
    }
    if ended.stderr.contains("panicked") || ended.stderr.contains("RUST_BACKTRACE") {
        sh.violation(format!("{kind:?} pid {pid} panicked: {}", ended.stderr));
    }
    sh.evidence(pid, &ended.stderr);
    Some(ended)
}

fn cli_cmd(sh: &Shared) -> Command {
    let mut c = sh.env.cmd();
    c.env("TOKENWARDEN_BACKOFF_MAX", BACKOFF_MAX.to_string())
        .env("TOKENWARDEN_REFRESH_AHEAD", REFRESH_AHEAD.to_string())
        .env("TOKENWARDEN_LOG", "warn");
    c
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
            Err(Error::Unavailable { .. }) => Answer::Unavailable,
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

fn cli_runner(sh: &Shared, n: u64) {
    let mut rng = Rng::new(sh.plan.seed, 200 + n);
    while !sh.stopped() {
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
        let start = sh.now_us();
        let Some(end) = run_child(sh, kind, cmd) else {
            continue;
        };
        let answer = if end.killed() {
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
                Some(5) => Answer::Unavailable,
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
        if let Some(end) = run_child(sh, Kind::Sweep, cmd) {
            match end.status.code() {
                _ if end.killed() => {}
                Some(0 | 4 | 5) => {}
                other => sh.violation(format!("sweep exited {other:?}: {}", end.last_line())),
            }
        }
        thread::sleep(Duration::from_millis(rng.between((100, 500))));
    }
}

/// Keeps one `tokenwarden serve` running; restarts it after a kill.
fn serve_supervisor(sh: &Shared) {
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
        if let Some(end) = run_child(sh, Kind::Serve, cmd) {
            *sh.serve_addr.lock().unwrap() = None;
            if !end.killed() {
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

fn http_client(sh: &Shared, n: u64) {
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
        // The server lives longer than a CLI call: kill it less often.
        if *kind == Kind::Serve && !rng.chance(10) {
            continue;
        }
        let _ = child.kill();
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
            let Ok(row) = admin.get(&sh.ids[cred]) else {
                continue;
            };
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

/// Runs `plan` and checks the invariants:
///
/// 1. single flight: never two token requests of one family in flight;
/// 2. no reuse: a refresh token whose rotation was committed (its successor
///    was used later or is in the database) is never presented again;
/// 3. no lost rotation: every clean rotation upstream is in the database or
///    superseded — or its owner was SIGKILLed holding the lease (the
///    documented crash window, counted) or timed out on it (ambiguous,
///    counted); and no live process ever abandons a lease;
/// 4. no rejected token is handed out by a call started after the
///    rejection was settled;
/// 5. nothing stays `refreshing` past its lease; every credential is
///    usable or dead at the end, and a live one holds upstream's current
///    refresh token;
/// 6. credentials die only of reuse after a crash-window hit / ambiguous
///    fault, or of an injected permanent fault; nothing unknown is ever
///    sent upstream; no process panics; no client gets an unexpected error.
pub fn run(plan: &Plan) -> Report {
    let _ = log::set_logger(&CAPTURE).map(|()| log::set_max_level(log::LevelFilter::Warn));
    let env = Env::with(tuning());
    env.fake.set_expires_in(EXPIRES_IN);
    env.fake.set_latency(LATENCY);
    let ids: Vec<String> = (0..plan.credentials).map(|i| format!("c{i}")).collect();
    let sh = Shared {
        env: &env,
        plan,
        ids: ids.clone(),
        t0: Instant::now(),
        stop: AtomicBool::new(false),
        procs: Mutex::new(HashMap::new()),
        records: Mutex::new(Records::default()),
        accounts: Mutex::new(vec![Vec::new(); plan.credentials]),
        serve_addr: Mutex::new(None),
        snipes: AtomicU64::new(0),
        faults: Mutex::new(HashMap::new()),
        arrivals: Mutex::new(vec![(0, tokenwarden::clock::now_ms())]),
    };
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
        checks.rejections();
        (workload, checks.take())
    });
    report(&sh, found, workload)
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
                .spawn_scoped(s, move || cli_runner(sh, n as u64))
                .unwrap();
        }
        if plan.sweeps {
            named("chaos-sweep".into())
                .spawn_scoped(s, move || sweep_runner(sh))
                .unwrap();
        }
        if plan.serve {
            named("chaos-serve".into())
                .spawn_scoped(s, move || serve_supervisor(sh))
                .unwrap();
            for n in 0..plan.http_clients {
                named(format!("chaos-http-{n}"))
                    .spawn_scoped(s, move || http_client(sh, n as u64))
                    .unwrap();
            }
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
                            r.killed.len(),
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
    for kind in r.killed.values() {
        *killed.entry(*kind).or_default() += 1;
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
        }
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
        }
    }

    /// Invariant 5 and liveness: no live lease, effective state never
    /// `refreshing`; each credential ends usable (holding upstream's
    /// current refresh token) or dead.
    fn end_state(&mut self) {
        let now = tokenwarden::clock::now();
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
            let mut settled = false;
            for _ in 0..15 {
                match self.admin.token(id, Duration::ZERO) {
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

    /// The leases of every credential, from its events.
    fn read_leases(&mut self) {
        let mut all = Vec::new();
        for id in &self.sh.ids {
            let events = self.admin.events(id, None).expect("events");
            let mut spans: Vec<LeaseSpan> = Vec::new();
            let mut open: Option<LeaseSpan> = None;
            let mut epoch: Option<usize> = None;
            let mut generation = 0;
            for e in &events {
                let from = e.from.as_deref();
                let to = e.to.as_str();
                if e.reason == "imported" || e.reason == "re-imported" {
                    if let Some(mut l) = open.take() {
                        l.end = "reimport";
                        l.end_ms = e.at_ms;
                        spans.push(l);
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
                            l.end_ms = e.at_ms;
                            spans.push(l);
                        }
                        open = Some(LeaseSpan {
                            epoch: ep,
                            generation,
                            owner: e.actor.clone(),
                            start_ms: e.at_ms,
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
                            start_ms: e.at_ms,
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
                            l.end_ms = e.at_ms;
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

    fn killed(&self, owner: &str) -> bool {
        owner_of(owner)
            .is_some_and(|(pid, _)| self.sh.records.lock().unwrap().killed.contains_key(&pid))
    }

    fn ambiguous_evidence(&self, cred: usize, owner: &str) -> bool {
        let Some((pid, thread)) = owner_of(owner) else {
            return false;
        };
        if pid == std::process::id() {
            let id = &self.sh.ids[cred];
            return CAPTURE.lines.lock().unwrap().iter().any(|(name, msg)| {
                msg.starts_with(&format!("{id}: attempt")) && name.as_ref() == thread.as_ref()
            });
        }
        self.sh
            .records
            .lock()
            .unwrap()
            .ambiguous
            .contains(&(cred, pid, None))
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
        // A live process never abandons its lease.
        for (cred, spans) in self.leases.clone().iter().enumerate() {
            for l in spans.iter().filter(|l| l.end == "takeover") {
                if !self.killed(&l.owner) {
                    self.fail(format!(
                        "{}: the lease of {} (not killed) was taken over: a live owner let it \
                         run out",
                        self.sh.ids[cred], l.owner
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
                let kept = reqs
                    .iter()
                    .any(|x| x.arrival_tick > done && x.refresh_token.as_ref() == Some(next))
                    || (current_epoch && final_tokens[cred].as_ref() == Some(next));
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
                            l.end != "success" && l.end != "commit" && self.killed(&l.owner)
                        });
                        let timeout = spans
                            .iter()
                            .any(|l| l.end == "commit" && self.ambiguous_evidence(cred, &l.owner));
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

    /// Invariant 4: a call started after a rejection was settled never
    /// gets the rejected token.
    fn rejections(&mut self) {
        let r = self.sh.records.lock().unwrap();
        let mut settled: HashMap<(usize, &str), u64> = HashMap::new();
        for rej in &r.rejected {
            let e = settled
                .entry((rej.cred, rej.token.as_str()))
                .or_insert(rej.done_us);
            *e = (*e).min(rej.done_us);
        }
        let mut bad = Vec::new();
        for s in &r.served {
            if let Some(&done) = settled.get(&(s.cred, s.token.as_str())) {
                if s.start_us > done {
                    bad.push(format!(
                        "{}: a {} call started {} ms after the token was rejected got it again",
                        self.sh.ids[s.cred],
                        s.source,
                        (s.start_us - done) / 1000
                    ));
                }
            }
        }
        drop(r);
        for b in bad {
            self.fail(b);
        }
    }
}
