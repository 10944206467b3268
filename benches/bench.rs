//! tokenwarden's benchmarks, each figure measured side by side with its
//! physical baseline in the same run and reported as a ratio. Writes
//! BENCHMARKS.md (figures, machine, the command that reproduces them).
//!
//! ```sh
//! cargo bench --bench bench              # the whole suite (a few minutes)
//! cargo bench --bench bench -- --smoke   # seconds; checks the harness, writes nothing
//! cargo bench --bench bench -- --only http,token   # some figures (not written)
//! cargo bench --bench bench -- --pg --only pg-flight # PostgreSQL single flight (not written)
//! cargo bench --bench bench -- --growth  # costs at 1k, 10k and 100k credentials
//! cargo bench --bench bench -- --growth --sizes 1000,10000   # some sizes (not written)
//! cargo bench --bench bench -- --pg      # Warden::token on PostgreSQL (tests/common/pg.rs's server)
//! cargo bench --bench bench -- --import  # import at 1k, 10k, 100k, with and without a key
//! ```
//!
//! Everything runs on loopback against the fake OAuth server of
//! tests/common. Processes the suite starts: `tokenwarden serve`, the
//! `tokenwarden` CLI, `wrk` (if installed) and this binary again in a child
//! role (`--child ROLE …`): the bare tiny_http baseline server, the Rust
//! load generator (when there is no wrk) and the single-flight callers.
//! `BENCH_TW_BIN=path` runs another build of `tokenwarden` under the same
//! harness (to compare two builds in one session).

/// The helpers of tests/common the benchmarks drive: the fake OAuth server,
/// a tokenwarden under test and its HTTP client. They are written for the
/// test binary, which uses all of them; here only a few items are, hence
/// the allowance on this module alone.
#[allow(dead_code)]
#[path = "../tests/common"]
mod common {
    pub mod fake_oauth;
    pub mod http;
    #[cfg(feature = "postgres")]
    pub mod pg;
    pub mod tw;
}

/// The `--import` pass (its own file: a pass with its own floor).
#[path = "support/import.rs"]
mod import;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::fake_oauth::FakeOAuth;
use common::http::{free_port, Client, Served};
use common::tw::BIN;
use serde_json::Value;
use tokenwarden::state::Need;
use tokenwarden::warden::Via;
use tokenwarden::{Config, Warden};

/// The API key of the served instance.
const KEY: &str = "bench-key-0123456789abcdef";

/// Sizes of one run.
#[derive(Clone, Copy)]
struct Sizes {
    smoke: bool,
    /// Seconds of load per HTTP round.
    http_secs: u64,
    /// Rounds per HTTP server (baseline and subject alternate).
    http_rounds: usize,
    /// HTTP keep-alive connections of the load generator.
    http_conns: usize,
    /// Server worker threads (the same for both servers).
    http_threads: usize,
    /// Credentials held by the served instance (memory figure).
    held: usize,
    /// In-process calls per batch.
    inproc_iters: u32,
    /// Batches per in-process figure.
    inproc_batches: usize,
    /// Runs of each command for the CLI figure.
    cli_runs: usize,
    /// Due credentials of the sweep figure.
    sweep_n: usize,
    /// Sweep workers.
    sweep_concurrency: usize,
    /// Single-flight processes and threads per process.
    sf_procs: usize,
    sf_threads: usize,
    /// Single-flight repetitions.
    sf_runs: usize,
}

const FULL: Sizes = Sizes {
    smoke: false,
    http_secs: 3,
    http_rounds: 8,
    http_conns: 16,
    http_threads: 8,
    held: 10_000,
    inproc_iters: 200_000,
    inproc_batches: 7,
    cli_runs: 300,
    sweep_n: 10_000,
    sweep_concurrency: 32,
    sf_procs: 4,
    sf_threads: 64,
    sf_runs: 3,
};

const SMOKE: Sizes = Sizes {
    smoke: true,
    http_secs: 1,
    http_rounds: 2,
    http_conns: 4,
    http_threads: 2,
    held: 200,
    inproc_iters: 2_000,
    inproc_batches: 3,
    cli_runs: 10,
    sweep_n: 100,
    sweep_concurrency: 8,
    sf_procs: 2,
    sf_threads: 8,
    sf_runs: 1,
};

/// One line of the results table.
struct Figure {
    name: &'static str,
    value: String,
    baseline: String,
    ratio: String,
    target: String,
    met: Option<bool>,
    notes: Vec<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1..]);
        return;
    }
    let sizes = if args.iter().any(|a| a == "--smoke") {
        SMOKE
    } else {
        FULL
    };
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_owned).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|n| n == name));
    let started = Instant::now();
    let machine = machine();
    eprintln!("{machine}");
    let dir = tempfile::Builder::new()
        .prefix("tokenwarden-bench")
        .tempdir()
        .expect("temp dir");
    let fake = FakeOAuth::start();
    let mut figures = Vec::new();

    let chosen: Option<Vec<usize>> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|s| {
            s.split(',')
                .map(|n| n.parse().expect("--sizes N,N,…"))
                .collect()
        });
    #[cfg(feature = "postgres")]
    if args.iter().any(|a| a == "--pg") {
        if only.is_some() {
            // `--pg --only pg-flight`: the single flight alone, printed.
            if wanted("pg-flight") {
                let db = common::pg::database().expect("a PostgreSQL server");
                for f in bench_single_flight_on(&fake, dir.path(), &sizes, Path::new(&db)) {
                    println!(
                        "{}: {} ({}) {}",
                        f.name,
                        f.value,
                        f.ratio,
                        f.notes.join(" ")
                    );
                }
            }
            return;
        }
        let report = bench_pg(&fake, dir.path(), &sizes, &machine);
        println!("{report}");
        if !sizes.smoke {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
            let text = merge_between(
                std::fs::read_to_string(&path).ok(),
                PG_BEGIN,
                PG_END,
                &report,
            );
            std::fs::write(&path, text).expect("write BENCHMARKS.md");
            eprintln!("wrote {}", path.display());
        }
        return;
    }
    if args.iter().any(|a| a == "--import") {
        let counts = chosen.clone().unwrap_or_else(|| match sizes.smoke {
            true => vec![40],
            false => GROWTH_SIZES.to_vec(),
        });
        let report =
            import::import_pass(&fake, dir.path(), &counts, sizes.smoke, &machine, started);
        println!("{report}");
        if !sizes.smoke && chosen.is_none() {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
            let text = merge_between(
                std::fs::read_to_string(&path).ok(),
                import::IMPORT_BEGIN,
                import::IMPORT_END,
                &report,
            );
            std::fs::write(&path, text).expect("write BENCHMARKS.md");
            eprintln!("wrote {}", path.display());
        }
        return;
    }
    if args.iter().any(|a| a == "--growth") {
        let counts = chosen.clone().unwrap_or_else(|| GROWTH_SIZES.to_vec());
        let report = growth(&fake, dir.path(), &counts, &sizes, &machine, started);
        println!("{report}");
        if !sizes.smoke && chosen.is_none() {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
            let text = merge_between(
                std::fs::read_to_string(&path).ok(),
                GROWTH_BEGIN,
                GROWTH_END,
                &report,
            );
            std::fs::write(&path, text).expect("write BENCHMARKS.md");
            eprintln!("wrote {}", path.display());
        }
        return;
    }

    // One database of `held` valid credentials: served over HTTP (and
    // measured for memory), read in-process and by the CLI.
    let held_db = dir.path().join("held.db");
    let t = Instant::now();
    import_creds(&held_db, &fake, "held", sizes.held, 6 * 3600, dir.path());
    eprintln!(
        "setup: {} credentials imported in {:.1} s",
        sizes.held,
        t.elapsed().as_secs_f64()
    );
    let probe = format!("held{}", sizes.held / 2);

    if wanted("http") || wanted("memory") {
        let (http, memory) = bench_http(&held_db, &probe, &sizes);
        figures.push(http);
        figures.push(memory);
    }
    if wanted("token") {
        figures.push(bench_inproc(&held_db, &probe, &sizes));
    }
    if wanted("cli") {
        figures.push(bench_cli(&held_db, &probe, &sizes));
    }
    if wanted("single-flight") {
        figures.extend(bench_single_flight(&fake, dir.path(), &sizes));
    }
    if wanted("sweep") {
        figures.push(bench_sweep(&fake, dir.path(), &sizes));
    }

    let report = render(&figures, &machine, &sizes, started.elapsed());
    println!("{report}");
    if sizes.smoke && only.is_none() {
        // The growth harness too, at tiny sizes.
        let counts = chosen.unwrap_or_else(|| vec![40]);
        println!(
            "{}",
            growth(&fake, dir.path(), &counts, &sizes, &machine, started)
        );
        println!(
            "{}",
            import::import_pass(&fake, dir.path(), &counts, true, &machine, started)
        );
    }
    if !sizes.smoke && only.is_none() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
        let text = merge(std::fs::read_to_string(&path).ok(), &report);
        std::fs::write(&path, text).expect("write BENCHMARKS.md");
        eprintln!("wrote {}", path.display());
    }
}

// ---------------------------------------------------------------------------
// Set-up helpers

/// Unix milliseconds.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The medians of `batches` runs of `base` and `subject`, taken in turn
/// (after one warm-up run of each), so both see the same machine.
fn side_by_side(
    batches: usize,
    mut base: impl FnMut() -> f64,
    mut subject: impl FnMut() -> f64,
) -> (f64, f64) {
    base();
    subject();
    let (mut b, mut s) = (Vec::new(), Vec::new());
    for _ in 0..batches {
        b.push(base());
        s.push(subject());
    }
    (median(&mut b), median(&mut s))
}

/// `n` credentials `{prefix}{i}`, each a login of its own at `fake`, whose
/// access tokens expire in `expires_in` seconds, imported into `db` by the
/// real CLI (one process, one transaction per credential).
fn import_creds(db: &Path, fake: &FakeOAuth, prefix: &str, n: usize, expires_in: i64, dir: &Path) {
    let now = common::tw::now();
    let records: Vec<Value> = (0..n)
        .map(|i| {
            let id = format!("{prefix}{i}");
            let grant = fake.new_family(&id);
            let mut r = grant.import_json(&id, "codex", &fake.token_url());
            r["expires_at"] = Value::from(now + expires_in);
            r
        })
        .collect();
    // Import files are capped at 1 MiB each: several files, one process.
    let files: Vec<String> = records
        .chunks(250)
        .enumerate()
        .map(|(i, chunk)| {
            let file = dir.join(format!("{prefix}-{i}.json"));
            std::fs::write(&file, Value::Array(chunk.to_vec()).to_string())
                .expect("write import file");
            file.to_str().expect("utf-8 path").to_owned()
        })
        .collect();
    let out = tw(db)
        .arg("import")
        .args(&files)
        .output()
        .expect("run tokenwarden import");
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real binary on `db`, with a clean environment.
/// The tokenwarden binary under test: this build's, or the one
/// `BENCH_TW_BIN` names (to measure another build side by side with the
/// same harness).
fn tw(db: &Path) -> Command {
    let bin = std::env::var_os("BENCH_TW_BIN").unwrap_or_else(|| BIN.into());
    let mut c = Command::new(bin);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TOKENWARDEN_DB", db)
        .stdin(Stdio::null());
    c
}

/// This binary again, in a child role.
fn me(role: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("current exe"));
    c.arg("--child").arg(role);
    c
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(v, 50.0)
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

// ---------------------------------------------------------------------------
// HTTP: token route under keep-alive load vs a bare tiny_http server

/// Requests per second of `rounds` rounds against `addr`.
fn load(addr: SocketAddr, path: &str, sizes: &Sizes) -> (f64, String) {
    let url = format!("http://{addr}{path}");
    if which("wrk") {
        let out = Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{}", sizes.http_conns),
                &format!("-d{}s", sizes.http_secs),
                "-H",
                &format!("Authorization: Bearer {KEY}"),
                &url,
            ])
            .output()
            .expect("run wrk");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rps = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Requests/sec in wrk output: {text}"));
        assert!(
            !text.contains("Non-2xx"),
            "wrk saw errors against {url}: {text}"
        );
        (rps, "wrk".into())
    } else {
        let out = me("loadgen")
            .args([
                addr.to_string(),
                path.to_owned(),
                sizes.http_conns.to_string(),
                sizes.http_secs.to_string(),
            ])
            .output()
            .expect("run load generator");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut it = text.split_whitespace();
        let ok: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let bad: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(1);
        assert_eq!(bad, 0, "load generator saw errors against {url}");
        (ok / sizes.http_secs as f64, "Rust load generator".into())
    }
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

fn bench_http(db: &Path, id: &str, sizes: &Sizes) -> (Figure, Figure) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut cmd = tw(db);
    cmd.env("TOKENWARDEN_API_KEY", KEY).args([
        "serve",
        "--listen",
        &addr.to_string(),
        "--threads",
        &sizes.http_threads.to_string(),
    ]);
    let served = Served::spawn(cmd, addr);
    let pid = served.child.id();
    // Let the background refresher make its first round over every row.
    thread::sleep(Duration::from_secs(1));
    let after_start = memory_kib(pid);
    let client = Client::new(addr, Some(KEY));
    let path = format!("/v1/credentials/{id}/token");
    let answer = client.get(&path);
    assert_eq!(answer.status, 200, "token route: {}", answer.body);
    let body = answer.body.clone();

    let mut bare = me("bare-server")
        .args([sizes.http_threads.to_string(), body.len().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the bare server");
    let bare_addr: SocketAddr = {
        let mut line = String::new();
        BufReader::new(bare.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("bare server address");
        line.trim().parse().expect("bare server address")
    };

    let mut subject = Vec::new();
    let mut baseline = Vec::new();
    let mut ratios = Vec::new();
    let mut tool = String::new();
    // Warm both up, then pairs of rounds, alternating which goes first, so
    // that drift and other load on the machine hit both alike; the figure
    // is the median of the pairs' ratios.
    let warm = Sizes {
        http_secs: 1,
        ..*sizes
    };
    load(bare_addr, &path, &warm);
    load(addr, &path, &warm);
    for round in 0..sizes.http_rounds {
        let (b, s) = if round % 2 == 0 {
            let (b, t) = load(bare_addr, &path, sizes);
            tool = t;
            (b, load(addr, &path, sizes).0)
        } else {
            let s = load(addr, &path, sizes).0;
            (load(bare_addr, &path, sizes).0, s)
        };
        baseline.push(b);
        subject.push(s);
        ratios.push(s / b);
        eprintln!("http: baseline {b:.0}/s, tokenwarden {s:.0}/s");
    }
    drop(bare.stdin.take());
    let _ = bare.wait();
    let after_load = memory_kib(pid);
    // The listing and metrics routes read every row.
    assert_eq!(client.get("/v1/credentials").status, 200);
    assert_eq!(client.get("/metrics").status, 200);
    let after_list = memory_kib(pid);
    drop(served);

    let ratio = median(&mut ratios.clone());
    let (s, b) = (median(&mut subject.clone()), median(&mut baseline.clone()));
    let http = Figure {
        name: "HTTP `GET /v1/credentials/{id}/token`, keep-alive",
        value: format!("{s:.0} req/s"),
        baseline: format!(
            "{b:.0} req/s (bare tiny_http, {} threads)",
            sizes.http_threads
        ),
        ratio: format!("{ratio:.2}×"),
        target: "≥ 0.90×".into(),
        met: Some(ratio >= 0.9),
        notes: vec![format!(
            "{tool}, {} connections, {} rounds of {} s each, alternating; medians shown, \
             ratio = median of the rounds' ratios {:?} (tokenwarden {:?}, baseline {:?}); \
             `serve --threads {}` holding {} credentials; body {} bytes",
            sizes.http_conns,
            sizes.http_rounds,
            sizes.http_secs,
            ratios
                .iter()
                .map(|v| (v * 100.0).round() / 100.0)
                .collect::<Vec<_>>(),
            subject.iter().map(|v| v.round()).collect::<Vec<_>>(),
            baseline.iter().map(|v| v.round()).collect::<Vec<_>>(),
            sizes.http_threads,
            sizes.held,
            body.len()
        )],
    };
    let mib = |k: u64| k as f64 / 1024.0;
    let steady = after_list.0.max(after_load.0);
    let memory = Figure {
        name: "resident memory of `serve`",
        value: format!("{:.1} MiB", mib(steady)),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "≤ 30 MiB".into(),
        met: Some(mib(steady) <= 30.0),
        notes: vec![format!(
            "holding {} credentials: VmRSS {:.1} MiB after start-up and a refresher round, \
             {:.1} MiB after the HTTP load, {:.1} MiB after `GET /v1/credentials` and \
             `/metrics`; peak (VmHWM) {:.1} MiB",
            sizes.held,
            mib(after_start.0),
            mib(after_load.0),
            mib(after_list.0),
            mib(after_list.1)
        )],
    };
    (http, memory)
}

// ---------------------------------------------------------------------------
// Warden::token on PostgreSQL vs one prepared point SELECT to the same server

#[cfg(feature = "postgres")]
const PG_BEGIN: &str = "<!-- generated by benches/bench.rs --pg: begin -->";
#[cfg(feature = "postgres")]
const PG_END: &str = "<!-- generated by benches/bench.rs --pg: end -->";

/// `Warden::token` of a valid credential on a PostgreSQL database (the
/// tests' throwaway server, or `TOKENWARDEN_TEST_PG_URL`), against one
/// round trip of a prepared point SELECT of the same row's columns on a
/// connection of its own: the physical floor of a read that cannot be
/// cached (no stamp on PostgreSQL).
#[cfg(feature = "postgres")]
fn bench_pg(fake: &FakeOAuth, dir: &Path, sizes: &Sizes, machine: &str) -> String {
    let url = common::pg::database().expect("a PostgreSQL server (see tests/common/pg.rs)");
    let db = Path::new(&url);
    let held = sizes.held.min(1000);
    import_creds(db, fake, "pg", held, 6 * 3600, dir);
    let id = format!("pg{}", held / 2);
    let warden = Warden::open(db, Config::default()).expect("open warden");
    let mut client = common::pg::client(&url);
    let stmt = client
        .prepare(
            "SELECT access_token, expires_at_ms, state, version FROM credentials WHERE id = $1",
        )
        .expect("prepare");
    let n = (sizes.inproc_iters / 20).max(100);
    let select = || {
        let t = Instant::now();
        for _ in 0..n {
            let row = client.query_one(&stmt, &[&id]).expect("select");
            let v: (String, i64, String, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
            std::hint::black_box(v);
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    };
    let token = || {
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(warden.token(&id, Duration::ZERO).expect("token"));
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    };
    let (b, s) = side_by_side(sizes.inproc_batches, select, token);
    let ratio = s / b;
    let sweep_db = common::pg::database().expect("a second database");
    let sweep = bench_sweep_on(
        fake,
        dir,
        sizes,
        Path::new(&sweep_db),
        "sweep of due credentials on PostgreSQL",
        0.9,
    );
    let flight_db = common::pg::database().expect("a third database");
    let flight = bench_single_flight_on(fake, dir, sizes, Path::new(&flight_db));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Reproduce: `cargo bench --bench bench -- --pg` (a throwaway PostgreSQL 15 started \
         by the harness on loopback, fsync off; or `TOKENWARDEN_TEST_PG_URL`).\n"
    );
    let _ = writeln!(out, "| figure | value | baseline | ratio | target |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| `Warden::token` on PostgreSQL, valid credential | {s:.1} µs/call | {b:.1} µs \
         (prepared point SELECT, same server) | {ratio:.2}× | ≤ 1.5× {} |",
        if ratio <= 1.5 { "(met)" } else { "(NOT met)" }
    );
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} {} |",
        sweep.name,
        sweep.value,
        sweep.baseline,
        sweep.ratio,
        sweep.target,
        if sweep.met == Some(true) {
            "(met)"
        } else {
            "(NOT met)"
        }
    );
    for f in &flight {
        let _ = writeln!(
            out,
            "| {} on PostgreSQL | {} | {} | {} | {} {} |",
            f.name,
            f.value,
            f.baseline,
            f.ratio,
            f.target,
            if f.met == Some(true) {
                "(met)"
            } else {
                "(NOT met)"
            }
        );
    }
    let _ = writeln!(
        out,
        "\nSingle flight: {} Each process stands for a box (its own pool and \
         LISTEN connection); a waiter in another process is woken by NOTIFY, \
         polling being the fallback. {}",
        flight[0].notes.join(" "),
        flight
            .iter()
            .skip(1)
            .map(|f| format!("{}: {}.", f.name, f.notes.join(" ")))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        out,
        "\none thread, median of {} batches of {n} calls, {held} credentials in the \
         database. `token` is one round trip too: the point read on a prepared statement, \
         which also returns the server's clock (the lease clock).\n\nThe sweep: {}\n\n{machine}",
        sizes.inproc_batches,
        sweep.notes.join(" ")
    );
    out
}

// ---------------------------------------------------------------------------
// In-process Warden::token vs one prepared point SELECT

fn bench_inproc(db: &Path, id: &str, sizes: &Sizes) -> Figure {
    let warden = Warden::open(db, Config::default()).expect("open warden");
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.busy_timeout(Duration::from_secs(10)).expect("busy");
    let mut stmt = conn
        .prepare(
            "SELECT access_token, expires_at_ms, state, version FROM credentials WHERE id = ?1",
        )
        .expect("prepare");
    let n = sizes.inproc_iters;
    let select = || {
        let t = Instant::now();
        for _ in 0..n {
            let row: (String, i64, String, i64) = stmt
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .expect("select");
            std::hint::black_box(row);
        }
        t.elapsed().as_secs_f64() * 1e9 / f64::from(n)
    };
    let token = || {
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(warden.token(id, Duration::ZERO).expect("token"));
        }
        t.elapsed().as_secs_f64() * 1e9 / f64::from(n)
    };
    let (b, s) = side_by_side(sizes.inproc_batches, select, token);
    let ratio = s / b;
    Figure {
        name: "in-process `Warden::token`, valid credential",
        value: format!("{s:.0} ns/call"),
        baseline: format!("{b:.0} ns (prepared point SELECT)"),
        ratio: format!("{ratio:.2}×"),
        target: "≤ 0.25×".into(),
        met: Some(ratio <= 0.25),
        notes: vec![format!(
            "one thread, median of {} batches of {} calls; the baseline reads \
             `access_token, expires_at_ms, state, version` of the same row through its own \
             connection; {} credentials in the file",
            sizes.inproc_batches, n, sizes.held
        )],
    }
}

// ---------------------------------------------------------------------------
// `tokenwarden token ID` whole-process time vs `true`

fn bench_cli(db: &Path, id: &str, sizes: &Sizes) -> Figure {
    let (s, b, p90) = token_vs_true(db, id, sizes.cli_runs);
    Figure {
        name: "`tokenwarden token ID` whole process",
        value: format!("{:.2} ms median", s),
        baseline: format!("{:.2} ms (`true`)", b),
        ratio: format!("+{:.2} ms", s - b),
        target: "≤ `true` + 1.0 ms".into(),
        met: Some(s - b <= 1.0),
        notes: vec![format!(
            "{} runs each, alternating, spawned and waited for by this process with output \
             captured, both by absolute path (a program looked up in `PATH` under a cleared \
             environment is started with fork and exec rather than posix_spawn, which in this \
             large process costs milliseconds: it made `true` look slower than `token`); p90 \
             {:.2} ms (`true` {:.2} ms); {} credentials in the file",
            sizes.cli_runs, p90.0, p90.1, sizes.held
        )],
    }
}

/// `true`, found on `PATH`, by absolute path.
fn true_path() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("true"))
                .find(|f| f.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("/bin/true"))
}

/// Medians of `runs` alternating runs of `tokenwarden token ID` and of
/// `true` (ms), and their p90s.
fn token_vs_true(db: &Path, id: &str, runs: usize) -> (f64, f64, (f64, f64)) {
    let run = |cmd: &mut Command| {
        let t = Instant::now();
        let out = cmd.output().expect("run");
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ms
    };
    let truth = true_path();
    let mut subject = Vec::new();
    let mut baseline = Vec::new();
    for i in 0..runs + 10 {
        let b = run(Command::new(&truth).env_clear().stdin(Stdio::null()));
        let s = run(tw(db).args(["token", id]));
        if i >= 10 {
            baseline.push(b);
            subject.push(s);
        }
    }
    subject.sort_by(f64::total_cmp);
    baseline.sort_by(f64::total_cmp);
    (
        percentile(&subject, 50.0),
        percentile(&baseline, 50.0),
        (percentile(&subject, 90.0), percentile(&baseline, 90.0)),
    )
}

// ---------------------------------------------------------------------------
// Single flight across threads and processes

fn bench_single_flight(fake: &FakeOAuth, dir: &Path, sizes: &Sizes) -> Vec<Figure> {
    bench_single_flight_on(fake, dir, sizes, &dir.join("single-flight.db"))
}

/// The single-flight figures on the database `db` (a SQLite file, or a
/// PostgreSQL URL: then each process stands for a box).
fn bench_single_flight_on(fake: &FakeOAuth, dir: &Path, sizes: &Sizes, db: &Path) -> Vec<Figure> {
    let latency = Duration::from_millis(50);
    let db = db.to_path_buf();
    // A running system keeps the database open: its WAL is not deleted when
    // the importing process exits (else each run's claim, the first write to
    // a new WAL, also pays the fsync of the WAL's header: ~5 ms here).
    import_creds(&db, fake, "sf-warm", 1, 3600, dir);
    let _open = Warden::open(&db, Config::default()).expect("open warden");
    let mut in_proc: Vec<f64> = Vec::new();
    let mut cross: Vec<f64> = Vec::new();
    let mut owners = Vec::new();
    let mut owners_ms: Vec<f64> = Vec::new();
    let mut calls = Vec::new();
    for run in 0..sizes.sf_runs {
        let id = format!("sf{run}");
        // Inside the refresh window: every caller wants it refreshed.
        import_creds(&db, fake, &id, 1, 60, dir);
        let id = format!("{id}0");
        fake.set_latency(latency);
        fake.reset_stats();
        let start_at = now_ms() + 1500;
        let children: Vec<Child> = (0..sizes.sf_procs)
            .map(|_| {
                me("single-flight")
                    .args([
                        db.to_str().expect("utf-8"),
                        &id,
                        &sizes.sf_threads.to_string(),
                        &start_at.to_string(),
                    ])
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("spawn single-flight child")
            })
            .collect();
        let mut results: Vec<Vec<(String, f64)>> = Vec::new();
        for c in children {
            let out = c.wait_with_output().expect("single-flight child");
            assert!(out.status.success(), "single-flight child failed");
            results.push(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| {
                        let (via, ms) = l.split_once(' ')?;
                        Some((via.to_owned(), ms.parse().ok()?))
                    })
                    .collect(),
            );
        }
        fake.set_latency(Duration::ZERO);
        let stats = fake.stats();
        calls.push(stats.token_requests);
        let owner_proc: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.iter().any(|(via, _)| via == "refreshed"))
            .map(|(i, _)| i)
            .collect();
        let refreshed: usize = results
            .iter()
            .map(|r| r.iter().filter(|(v, _)| v == "refreshed").count())
            .sum();
        owners.push(refreshed);
        for (p, r) in results.iter().enumerate() {
            for (via, ms) in r {
                if via == "refreshed" {
                    continue;
                }
                if owner_proc.contains(&p) {
                    in_proc.push(*ms);
                } else {
                    cross.push(*ms);
                }
            }
        }
        let owner_ms: Vec<f64> = results
            .iter()
            .flatten()
            .filter(|(v, _)| v == "refreshed")
            .map(|(_, ms)| *ms)
            .collect();
        eprintln!(
            "single flight run {run}: {} upstream call(s), {} refresher(s), took {owner_ms:?} ms",
            stats.token_requests, refreshed
        );
        owners_ms.extend(owner_ms.iter().map(|ms| (ms * 10.0).round() / 10.0));
    }
    in_proc.sort_by(f64::total_cmp);
    cross.sort_by(f64::total_cmp);
    let lat = latency.as_secs_f64() * 1e3;
    let single = calls.iter().all(|&c| c == 1) && owners.iter().all(|&o| o == 1);
    let p99_in = percentile(&in_proc, 99.0);
    let p99_x = percentile(&cross, 99.0);
    let shape = format!(
        "{} processes × {} threads (each has read the credential once: connections open; \
         this process keeps the database open throughout, as a running system does), \
         released at one instant on one credential inside its refresh window, fake upstream \
         latency {lat:.0} ms; {} run(s), waiters pooled; the refresher itself took \
         {owners_ms:?} ms",
        sizes.sf_procs, sizes.sf_threads, sizes.sf_runs
    );
    vec![
        Figure {
            name: "single flight: upstream calls",
            value: format!("{calls:?} call(s) per run"),
            baseline: "—".into(),
            ratio: "—".into(),
            target: "exactly 1".into(),
            met: Some(single),
            notes: vec![shape.clone()],
        },
        Figure {
            name: "single flight: waiter p99, same process as the refresher",
            value: format!("{p99_in:.1} ms"),
            baseline: format!("{lat:.0} ms (upstream latency)"),
            ratio: format!("+{:.1} ms", p99_in - lat),
            target: "≤ latency + 10 ms".into(),
            met: Some(p99_in <= lat + 10.0),
            notes: vec![format!(
                "{} waiters: p50 {:.1} ms, max {:.1} ms",
                in_proc.len(),
                percentile(&in_proc, 50.0),
                percentile(&in_proc, 100.0)
            )],
        },
        Figure {
            name: "single flight: waiter p99, other processes",
            value: format!("{p99_x:.1} ms"),
            baseline: format!("{lat:.0} ms (upstream latency)"),
            ratio: format!("+{:.1} ms", p99_x - lat),
            target: "≤ latency + 50 ms".into(),
            met: Some(p99_x <= lat + 50.0),
            notes: vec![format!(
                "{} waiters: p50 {:.1} ms, max {:.1} ms",
                cross.len(),
                percentile(&cross, 50.0),
                percentile(&cross, 100.0)
            )],
        },
    ]
}

// ---------------------------------------------------------------------------
// Sweep of due credentials vs concurrency / upstream latency

fn bench_sweep(fake: &FakeOAuth, dir: &Path, sizes: &Sizes) -> Figure {
    bench_sweep_on(
        fake,
        dir,
        sizes,
        &dir.join("sweep.db"),
        "sweep of due credentials",
        0.95,
    )
}

/// The sweep figure on the database `db` (a SQLite file or a PostgreSQL
/// URL), judged against `target` × the latency-bound limit.
fn bench_sweep_on(
    fake: &FakeOAuth,
    dir: &Path,
    sizes: &Sizes,
    db: &Path,
    name: &'static str,
    target: f64,
) -> Figure {
    let latency = Duration::from_millis(20);
    let db = db.to_path_buf();
    let t = Instant::now();
    import_creds(&db, fake, "due", sizes.sweep_n, 60, dir);
    eprintln!(
        "sweep setup: {} due credentials in {:.1} s",
        sizes.sweep_n,
        t.elapsed().as_secs_f64()
    );
    fake.set_latency(latency);
    let probe = upstream_alone(
        fake,
        sizes.sweep_concurrency,
        if sizes.smoke { 5 } else { 100 },
    );
    fake.reset_stats();
    let ran = run_measured(
        tw(&db).args([
            "sweep",
            "--concurrency",
            &sizes.sweep_concurrency.to_string(),
            "--json",
        ]),
        dir,
    );
    let (out, secs) = (ran.out, ran.secs);
    fake.set_latency(Duration::ZERO);
    assert!(
        out.status.success(),
        "sweep failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("sweep --json");
    let refreshed = report["refreshed"].as_array().map_or(0, Vec::len);
    let calls = fake.stats().token_requests;
    assert_eq!(refreshed, sizes.sweep_n, "every due credential refreshed");
    assert_eq!(calls as usize, sizes.sweep_n, "one upstream call each");
    let in_flight = fake.stats().max_in_flight;
    assert!(
        in_flight as usize <= sizes.sweep_concurrency,
        "{in_flight} requests in flight at once with --concurrency {}",
        sizes.sweep_concurrency
    );
    let rate = refreshed as f64 / secs;
    let limit = sizes.sweep_concurrency as f64 / latency.as_secs_f64();
    let ratio = rate / limit;
    Figure {
        name,
        value: format!("{rate:.0} refreshes/s"),
        baseline: format!(
            "{limit:.0}/s ({} workers / {} ms)",
            sizes.sweep_concurrency,
            latency.as_millis()
        ),
        ratio: format!("{ratio:.2}×"),
        target: format!("≥ {target}×"),
        met: Some(ratio >= target),
        notes: vec![format!(
            "`tokenwarden sweep --concurrency {} --json` over {} due credentials: {:.2} s \
             wall time for the whole process, {} upstream calls. For scale: the fake upstream \
             and an HTTP client alone ({} threads posting to it back to back, nothing else) \
             reach {probe:.0}/s ({:.2}× the limit) on this machine. The sweep process used \
             {} of CPU per refresh (user + system) and {} of memory at its peak. {}",
            sizes.sweep_concurrency,
            sizes.sweep_n,
            secs,
            calls,
            sizes.sweep_concurrency,
            probe / limit,
            ran.cpu_secs.map_or_else(
                || "?".into(),
                |c| format!("{:.2} ms", c * 1e3 / refreshed.max(1) as f64)
            ),
            ran.hwm_kib
                .map_or_else(|| "?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            cycle_breakdown(&db),
        )],
    }
}

/// Where a sweep thread's time went, from the events it wrote: each
/// refresh writes a claim event (stamped before the claim's write) and a
/// success event (stamped after the upstream answer, before the commit's
/// write), and the actor names the thread. Milliseconds, means over every
/// thread's consecutive refreshes.
fn cycle_breakdown(db: &Path) -> String {
    let Ok(conn) = rusqlite::Connection::open(db) else {
        return String::new();
    };
    let Ok(mut stmt) = conn.prepare(
        "SELECT actor, credential_id, at_ms, to_state FROM events \
         WHERE actor LIKE 'sweep %' ORDER BY seq",
    ) else {
        return String::new();
    };
    let mut by_thread: std::collections::HashMap<String, Vec<(String, i64, String)>> =
        std::collections::HashMap::new();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map(|rows| rows.flatten().collect::<Vec<_>>())
        .unwrap_or_default();
    for (actor, id, at, to) in rows {
        by_thread.entry(actor).or_default().push((id, at, to));
    }
    let (mut lease, mut between, mut n) = (0i64, 0i64, 0i64);
    for events in by_thread.values() {
        for w in events.windows(3) {
            let [(id, claim, a), (id2, done, b), (_, next, c)] = w else {
                continue;
            };
            if a == "refreshing" && b == "valid" && c == "refreshing" && id == id2 {
                lease += done - claim;
                between += next - done;
                n += 1;
            }
        }
    }
    if n == 0 {
        return String::new();
    }
    format!(
        "Per thread, from the events it wrote ({n} cycles): {:.1} ms from a claim to its \
         refresh's commit (the claim's write, the upstream round trip), {:.1} ms from that \
         commit to the thread's next claim (the commit's write, reading the next row)",
        lease as f64 / n as f64,
        between as f64 / n as f64
    )
}

/// Requests per second of `threads` threads posting refresh requests to
/// the fake back to back with ureq (refused refresh tokens, answered after
/// the same latency): the upstream round trip with no tokenwarden at all.
fn upstream_alone(fake: &FakeOAuth, threads: usize, per_thread: usize) -> f64 {
    let url = fake.token_url();
    let body = r#"{"grant_type":"refresh_token","refresh_token":"bench-probe","client_id":"app"}"#;
    let t = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                for _ in 0..per_thread {
                    if let Ok(mut r) = agent
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .send(body)
                    {
                        let _ = r.body_mut().read_to_string();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    (threads * per_thread) as f64 / t.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------
// Growth: what each cost does from 1k to 100k credentials

/// The sizes of `--growth`.
const GROWTH_SIZES: [usize; 3] = [1_000, 10_000, 100_000];

/// Where the growth section of BENCHMARKS.md begins and ends.
const GROWTH_BEGIN: &str = "<!-- generated by benches/bench.rs --growth: begin -->";
const GROWTH_END: &str = "<!-- generated by benches/bench.rs --growth: end -->";

/// A finished child process: its output, wall time, and peak resident
/// memory when GNU time could report it.
struct Ran {
    out: std::process::Output,
    secs: f64,
    hwm_kib: Option<u64>,
    /// User + system CPU seconds, when GNU time could report them.
    cpu_secs: Option<f64>,
}

/// Runs `cmd` to completion with its output captured, under GNU
/// `/usr/bin/time` when there is one (for the child's peak RSS, which
/// only its parent's `wait4` sees: a finished process has no `/proc`
/// memory figures left).
fn run_measured(cmd: &mut Command, dir: &Path) -> Ran {
    let time = Path::new("/usr/bin/time");
    let report = dir.join("time.out");
    let _ = std::fs::remove_file(&report);
    let t = Instant::now();
    let out = if time.is_file() {
        let mut wrapped = Command::new(time);
        wrapped
            .arg("-f")
            .arg("%M %U %S")
            .arg("-o")
            .arg(&report)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped.env_clear();
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                wrapped.env(k, v);
            }
        }
        wrapped
            .stdin(Stdio::null())
            .output()
            .expect("run under /usr/bin/time")
    } else {
        cmd.output().expect("run")
    };
    let secs = t.elapsed().as_secs_f64();
    let report = std::fs::read_to_string(&report).unwrap_or_default();
    let fields: Vec<f64> = report
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let (hwm_kib, cpu_secs) = match fields[..] {
        [kib, user, sys] => (Some(kib as u64), Some(user + sys)),
        _ => (None, None),
    };
    Ran {
        out,
        secs,
        hwm_kib,
        cpu_secs,
    }
}

/// User + system CPU time of a live process, in ms.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 here.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 * 10.0
}

/// Latencies (µs) of `n` requests `GET path`, one after another on one
/// keep-alive connection; and the last body's length.
fn http_latencies(addr: SocketAddr, path: &str, n: usize) -> (Vec<f64>, usize) {
    let stream = TcpStream::connect(addr).expect("connect");
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\r\n");
    let mut out = Vec::with_capacity(n);
    let mut line = String::new();
    let mut body = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        writer.write_all(request.as_bytes()).expect("send");
        let status = read_http_answer(&mut reader, &mut line, &mut body).expect("answer");
        assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    (out, body.len())
}

/// Reads one HTTP/1.1 answer: returns its status line, with its body in
/// `body` (by Content-Length, or chunked).
fn read_http_answer(
    reader: &mut impl BufRead,
    line: &mut String,
    body: &mut Vec<u8>,
) -> std::io::Result<String> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    line.clear();
    reader.read_line(line)?;
    let status = line.trim_end().to_owned();
    let mut len = 0usize;
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(line)? == 0 {
            return Err(bad("the connection closed in the headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().map_err(|_| bad("Content-Length"))?;
            }
            if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                chunked = true;
            }
        }
    }
    body.clear();
    if !chunked {
        body.resize(len, 0);
        reader.read_exact(body)?;
        return Ok(status);
    }
    loop {
        line.clear();
        reader.read_line(line)?;
        let size = usize::from_str_radix(line.trim(), 16).map_err(|_| bad("chunk size"))?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        if size == 0 {
            return Ok(status);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// One size's measurements.
#[derive(Default)]
struct Grown {
    n: usize,
    import_secs: f64,
    import_hwm: Option<u64>,
    db_bytes: u64,
    token_inproc_ns: f64,
    token_cli_ms: f64,
    true_ms: f64,
    token_cli_hwm: Option<u64>,
    token_http_us: f64,
    token_http_p99_us: f64,
    list_http_ms: f64,
    list_http_bytes: usize,
    list_cli_ms: f64,
    list_cli_hwm: Option<u64>,
    serve_idle_kib: u64,
    serve_idle_cpu_ms: f64,
    idle_window_s: f64,
    serve_hwm: u64,
    sweep_idle_s: f64,
    sweep_idle_hwm: Option<u64>,
    sweep_idle_out: usize,
    sweep_due_s: f64,
    sweep_due_hwm: Option<u64>,
    sweep_due_calls: u64,
}

/// The `--growth` pass. For each count, a database of that many valid
/// credentials (each its own login at the fake), imported by the CLI from
/// one JSON array. Then the per-call figures, taken side by side: every
/// round measures every size in turn (a `Warden` each, a `serve` each),
/// so that load on the machine hits all sizes alike and the ratios to the
/// smallest size mean something. Then, size by size, the whole-table
/// figures; the sweep of everything due last, since it rewrites every row.
fn growth(
    fake: &FakeOAuth,
    dir: &Path,
    counts: &[usize],
    sizes: &Sizes,
    machine: &str,
    started: Instant,
) -> String {
    let smoke = sizes.smoke;
    let mut rows: Vec<Grown> = counts
        .iter()
        .map(|&n| {
            let t = Instant::now();
            let g = grow_import(fake, dir, n);
            eprintln!(
                "growth: {n} credentials imported in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            g
        })
        .collect();
    let db = |g: &Grown| dir.join(format!("growth-{}.db", g.n));
    let probe = |g: &Grown| format!("g{}-{}", g.n, g.n / 2);

    // In-process token: a warden on each database, batches in turn.
    {
        let wardens: Vec<Warden> = rows
            .iter()
            .map(|g| Warden::open(db(g), Config::default()).expect("open warden"))
            .collect();
        let iters: u32 = if smoke { 2_000 } else { 100_000 };
        let mut ns: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
        for _ in 0..if smoke { 2 } else { 7 } {
            for ((w, g), out) in wardens.iter().zip(&rows).zip(&mut ns) {
                let id = probe(g);
                let t = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(w.token(&id, Duration::ZERO).expect("token"));
                }
                out.push(t.elapsed().as_secs_f64() * 1e9 / f64::from(iters));
            }
        }
        for (g, mut v) in rows.iter_mut().zip(ns) {
            g.token_inproc_ns = median(&mut v);
        }
    }

    // The CLI's token (against `true`) and list page, in turn.
    {
        let truth = true_path();
        let runs = if smoke { 5 } else { 200 };
        let mut truth_ms = Vec::new();
        let mut token_ms: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
        let mut list_ms: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
        let time = |cmd: &mut Command| {
            let t = Instant::now();
            let out = cmd.output().expect("run");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            t.elapsed().as_secs_f64() * 1e3
        };
        for i in 0..runs + 5 {
            let b = time(Command::new(&truth).env_clear().stdin(Stdio::null()));
            let mut per: Vec<f64> = Vec::new();
            for g in rows.iter() {
                per.push(time(tw(&db(g)).args(["token", &probe(g)])));
            }
            if i >= 5 {
                truth_ms.push(b);
                for (v, ms) in token_ms.iter_mut().zip(per) {
                    v.push(ms);
                }
            }
            if i % 10 == 0 {
                for (g, v) in rows.iter().zip(&mut list_ms) {
                    v.push(time(tw(&db(g)).args(["list", "--limit", "100"])));
                }
            }
        }
        let truth_median = median(&mut truth_ms);
        for ((g, mut t), mut l) in rows.iter_mut().zip(token_ms).zip(list_ms) {
            g.token_cli_ms = median(&mut t);
            g.true_ms = truth_median;
            g.list_cli_ms = median(&mut l);
            g.token_cli_hwm = run_measured(tw(&db(g)).args(["token", &probe(g)]), dir).hwm_kib;
            g.list_cli_hwm = run_measured(tw(&db(g)).args(["list", "--limit", "100"]), dir).hwm_kib;
        }
    }

    // A `serve` on each database: idle memory and CPU over one window for
    // all, then the token and list routes in turn.
    {
        let served: Vec<(Served, SocketAddr)> = rows
            .iter()
            .map(|g| {
                let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
                let mut cmd = tw(&db(g));
                cmd.env("TOKENWARDEN_API_KEY", KEY).args([
                    "serve",
                    "--listen",
                    &addr.to_string(),
                    "--threads",
                    "8",
                ]);
                (Served::spawn(cmd, addr), addr)
            })
            .collect();
        let pids: Vec<u32> = served.iter().map(|(s, _)| s.child.id()).collect();
        // Start-up and the background refresher's first round are over when
        // half a second passes without 10 ms of CPU in any of them.
        let settle = Instant::now();
        loop {
            let before: Vec<f64> = pids.iter().map(|&p| cpu_ms(p)).collect();
            thread::sleep(Duration::from_millis(500));
            let busy = pids
                .iter()
                .zip(&before)
                .any(|(&p, b)| cpu_ms(p) - b >= 10.0);
            if !busy || settle.elapsed() > Duration::from_secs(90) {
                break;
            }
        }
        // Idle: over a whole period of the scheduler (30 s) in a full run.
        let window = if smoke { 1.0 } else { 31.0 };
        let before: Vec<f64> = pids.iter().map(|&p| cpu_ms(p)).collect();
        thread::sleep(Duration::from_secs_f64(window));
        for ((g, &pid), b) in rows.iter_mut().zip(&pids).zip(before) {
            g.serve_idle_cpu_ms = cpu_ms(pid) - b;
            g.idle_window_s = window;
            g.serve_idle_kib = memory_kib(pid).0;
        }
        let mut lat: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
        let mut list: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
        for _ in 0..if smoke { 1 } else { 6 } {
            for ((g, (_, addr)), out) in rows.iter().zip(&served).zip(&mut lat) {
                let path = format!("/v1/credentials/{}/token", probe(g));
                out.extend(http_latencies(*addr, &path, if smoke { 50 } else { 500 }).0);
            }
            for ((g, (_, addr)), out) in rows.iter_mut().zip(&served).zip(&mut list) {
                let (ms, bytes) = http_latencies(
                    *addr,
                    "/v1/credentials?limit=100",
                    if smoke { 3 } else { 10 },
                );
                out.extend(ms);
                g.list_http_bytes = bytes;
            }
        }
        for (((g, mut l), mut p), &pid) in rows.iter_mut().zip(lat).zip(list).zip(&pids) {
            l.sort_by(f64::total_cmp);
            g.token_http_us = percentile(&l, 50.0);
            g.token_http_p99_us = percentile(&l, 99.0);
            g.list_http_ms = median(&mut p) / 1e3;
            g.serve_hwm = memory_kib(pid).1;
        }
    }

    // Size by size: the sweep with nothing due, then with everything due.
    for g in &mut rows {
        let t = Instant::now();
        grow_sweeps(fake, dir, g, &db(g));
        eprintln!(
            "growth: {} credentials swept in {:.0} s",
            g.n,
            t.elapsed().as_secs_f64()
        );
        let _ = std::fs::remove_file(db(g));
    }
    render_growth(&rows, sizes, machine, started.elapsed())
}

/// An import file of `n` credentials `{prefix}{i}`, each its own login at
/// `fake` with an access token valid 6 h: one JSON array, written as it is
/// made.
fn write_import_file(fake: &FakeOAuth, file: &Path, prefix: &str, n: usize) {
    let now = common::tw::now();
    let mut w = std::io::BufWriter::new(std::fs::File::create(file).expect("create"));
    w.write_all(b"[").expect("write");
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let grant = fake.new_family(&id);
        let mut r = grant.import_json(&id, "codex", &fake.token_url());
        r["expires_at"] = Value::from(now + 6 * 3600);
        if i > 0 {
            w.write_all(b",").expect("write");
        }
        serde_json::to_writer(&mut w, &r).expect("write");
    }
    w.write_all(b"]").expect("write");
    w.flush().expect("flush");
}

/// A database of `n` valid credentials, imported by the CLI from one JSON
/// array: the import's figures and the file's size.
fn grow_import(fake: &FakeOAuth, dir: &Path, n: usize) -> Grown {
    let db = dir.join(format!("growth-{n}.db"));
    let file = dir.join(format!("growth-{n}.json"));
    write_import_file(fake, &file, &format!("g{n}-"), n);
    let ran = run_measured(tw(&db).arg("import").arg(&file).stdout(Stdio::null()), dir);
    assert!(
        ran.out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&ran.out.stderr)
    );
    let _ = std::fs::remove_file(&file);
    Grown {
        n,
        import_secs: ran.secs,
        import_hwm: ran.hwm_kib,
        db_bytes: std::fs::metadata(&db).map_or(0, |m| m.len()),
        ..Grown::default()
    }
}

/// The sweeps of one size: nothing due (the whole process with its
/// report, median of three), then everything due.
fn grow_sweeps(fake: &FakeOAuth, dir: &Path, g: &mut Grown, db: &Path) {
    let mut idle: Vec<f64> = (0..3)
        .map(|_| {
            let r = run_measured(tw(db).arg("sweep"), dir);
            assert!(
                r.out.status.success(),
                "sweep: {}",
                String::from_utf8_lossy(&r.out.stderr)
            );
            g.sweep_idle_hwm = g.sweep_idle_hwm.max(r.hwm_kib);
            g.sweep_idle_out = r.out.stdout.len();
            r.secs
        })
        .collect();
    g.sweep_idle_s = median(&mut idle);

    // Everything due: a refresh window longer than the tokens' six hours
    // makes every credential due (the same claim, call and commit as an
    // expiring token), upstream answering after 20 ms.
    fake.set_latency(Duration::from_millis(20));
    fake.reset_stats();
    let r = run_measured(
        tw(db)
            .env("TOKENWARDEN_REFRESH_AHEAD", "86400")
            .args(["sweep", "--concurrency", "32"]),
        dir,
    );
    fake.set_latency(Duration::ZERO);
    assert!(
        r.out.status.success(),
        "sweep: {}",
        String::from_utf8_lossy(&r.out.stderr)
    );
    g.sweep_due_s = r.secs;
    g.sweep_due_hwm = r.hwm_kib;
    g.sweep_due_calls = fake.stats().token_requests;
    assert_eq!(
        g.sweep_due_calls as usize, g.n,
        "one upstream call per credential"
    );
    assert!(
        fake.stats().max_in_flight <= 32,
        "at most --concurrency requests in flight"
    );
}

/// How a cost grows from the smallest size to the largest: the exponent
/// of `cost ∝ n^k`.
fn growth_kind(first: (usize, f64), last: (usize, f64)) -> String {
    if first.0 == last.0 || first.1 <= 0.0 || last.1 <= 0.0 {
        return "—".into();
    }
    let k = (last.1 / first.1).ln() / (last.0 as f64 / first.0 as f64).ln();
    let kind = if k < 0.1 {
        "flat"
    } else if k < 0.85 {
        "sub-linear"
    } else if k < 1.15 {
        "linear"
    } else {
        "**worse than linear**"
    };
    format!("{kind} (n^{k:.2})")
}

/// Whether a growth line meets its target, from the smallest and the
/// largest size's measurements.
type Met = Box<dyn Fn(&Grown, &Grown) -> bool>;

fn render_growth(rows: &[Grown], sizes: &Sizes, machine: &str, took: Duration) -> String {
    fn mib(k: u64) -> f64 {
        k as f64 / 1024.0
    }
    fn hwm(k: Option<u64>) -> String {
        k.map_or_else(|| "?".into(), |k| format!("{:.1} MiB", mib(k)))
    }
    let limit = 32.0 / 0.020;
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return String::new();
    };
    struct Line {
        name: &'static str,
        cell: Box<dyn Fn(&Grown) -> String>,
        cost: Box<dyn Fn(&Grown) -> f64>,
        target: &'static str,
        met: Option<Met>,
    }
    // A command's peak RSS, against the 64 MiB every command must stay under.
    let rss = |name: &'static str, f: fn(&Grown) -> Option<u64>| Line {
        name,
        cell: Box::new(move |g| hwm(f(g))),
        cost: Box::new(move |g| f(g).unwrap_or(0) as f64),
        target: "≤ 64 MiB",
        met: Some(Box::new(move |_, l| f(l).is_some_and(|k| mib(k) <= 64.0))),
    };
    let lines: Vec<Line> = vec![
        Line {
            name: "`Warden::token` in-process (ns/call)",
            cell: Box::new(|g| format!("{:.0} ns", g.token_inproc_ns)),
            cost: Box::new(|g| g.token_inproc_ns),
            target: "within 10 % of the smallest",
            met: Some(Box::new(|f, l| {
                l.token_inproc_ns <= 1.1 * f.token_inproc_ns
            })),
        },
        Line {
            name: "HTTP `GET …/token`, one keep-alive client (median; p99)",
            cell: Box::new(|g| format!("{:.0} µs; {:.0} µs", g.token_http_us, g.token_http_p99_us)),
            cost: Box::new(|g| g.token_http_us),
            target: "within 10 % of the smallest",
            met: Some(Box::new(|f, l| l.token_http_us <= 1.1 * f.token_http_us)),
        },
        Line {
            name: "`tokenwarden token ID` whole process (median; `true` beside it)",
            cell: Box::new(|g| format!("{:.2} ms; {:.2} ms", g.token_cli_ms, g.true_ms)),
            cost: Box::new(|g| g.token_cli_ms),
            target: "within 10 % of the smallest",
            met: Some(Box::new(|f, l| {
                l.token_cli_ms - l.true_ms <= 1.1 * (f.token_cli_ms - f.true_ms)
            })),
        },
        rss("RSS of `tokenwarden token ID`", |g| g.token_cli_hwm),
        Line {
            name: "`tokenwarden sweep`, nothing due: whole process with its report",
            cell: Box::new(|g| format!("{:.3} s ({} bytes out)", g.sweep_idle_s, g.sweep_idle_out)),
            cost: Box::new(|g| g.sweep_idle_s),
            target: "≤ 0.5 s",
            met: Some(Box::new(|_, l| l.sweep_idle_s <= 0.5)),
        },
        rss("RSS of `tokenwarden sweep`, nothing due", |g| {
            g.sweep_idle_hwm
        }),
        Line {
            name: "`tokenwarden sweep --concurrency 32`, everything due, upstream 20 ms",
            cell: Box::new(move |g| {
                let rate = g.n as f64 / g.sweep_due_s;
                format!(
                    "{:.1} s, {rate:.0}/s = {:.2}× of 1600/s",
                    g.sweep_due_s,
                    rate / limit
                )
            }),
            cost: Box::new(|g| g.sweep_due_s),
            target: "—",
            met: None,
        },
        rss("RSS of `tokenwarden sweep`, everything due", |g| {
            g.sweep_due_hwm
        }),
        Line {
            name: "HTTP `GET /v1/credentials?limit=100` (median)",
            cell: Box::new(|g| format!("{:.2} ms ({} bytes)", g.list_http_ms, g.list_http_bytes)),
            cost: Box::new(|g| g.list_http_ms),
            target: "—",
            met: None,
        },
        Line {
            name: "`tokenwarden list --limit 100` whole process (median)",
            cell: Box::new(|g| format!("{:.1} ms", g.list_cli_ms)),
            cost: Box::new(|g| g.list_cli_ms),
            target: "—",
            met: None,
        },
        rss("RSS of `tokenwarden list --limit 100`", |g| g.list_cli_hwm),
        Line {
            name: "`tokenwarden import` of one JSON array (streamed)",
            cell: Box::new(|g| {
                format!(
                    "{:.1} s, {:.0} records/s",
                    g.import_secs,
                    g.n as f64 / g.import_secs
                )
            }),
            cost: Box::new(|g| g.import_secs),
            target: "—",
            met: None,
        },
        rss("RSS of `tokenwarden import`", |g| g.import_hwm),
        Line {
            name: "`serve` idle: RSS; CPU over the idle window",
            cell: Box::new(move |g| {
                format!(
                    "{:.1} MiB; {:.0} ms in {:.0} s",
                    mib(g.serve_idle_kib),
                    g.serve_idle_cpu_ms,
                    g.idle_window_s
                )
            }),
            cost: Box::new(|g| g.serve_idle_kib as f64),
            target: "≤ 64 MiB",
            met: Some(Box::new(move |_, l| mib(l.serve_idle_kib) <= 64.0)),
        },
        Line {
            name: "RSS peak of `serve` (after the routes above)",
            cell: Box::new(move |g| format!("{:.1} MiB", mib(g.serve_hwm))),
            cost: Box::new(|g| g.serve_hwm as f64),
            target: "≤ 64 MiB",
            met: Some(Box::new(move |_, l| mib(l.serve_hwm) <= 64.0)),
        },
        Line {
            name: "database file",
            cell: Box::new(|g| format!("{:.1} MiB", g.db_bytes as f64 / 1048576.0)),
            cost: Box::new(|g| g.db_bytes as f64),
            target: "—",
            met: None,
        },
    ];
    let mut s = String::new();
    let counts: Vec<String> = rows.iter().map(|g| g.n.to_string()).collect();
    let _ = writeln!(
        s,
        "Reproduce (about {} minutes here; the section between these markers is rewritten \
         by it):\n\n```sh\ncargo bench --bench bench -- --growth\n```\n",
        took.as_secs().div_ceil(60)
    );
    if sizes.smoke {
        let _ = writeln!(s, "**Smoke run: tiny sizes, figures not meaningful.**\n");
    }
    let _ = writeln!(
        s,
        "| figure | {} | grows | target at {} | met |",
        counts.join(" | "),
        last.n
    );
    let _ = writeln!(s, "|---|{}---|---|---|", "---|".repeat(rows.len()));
    for line in &lines {
        let cells: Vec<String> = rows.iter().map(|g| (line.cell)(g)).collect();
        let kind = growth_kind((first.n, (line.cost)(first)), (last.n, (line.cost)(last)));
        let met = match &line.met {
            Some(f) if f(first, last) => "yes",
            Some(_) => "**no**",
            None => "—",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {kind} | {} | {met} |",
            line.name,
            cells.join(" | "),
            line.target
        );
    }
    let _ = writeln!(
        s,
        "\nEach size is a database of that many valid credentials (each its own login at the \
         fake OAuth server, access tokens valid 6 h), made by `tokenwarden import` of one JSON \
         array (the import figure). The per-call figures are taken side by side, each round \
         measuring every size in turn, so that load on the machine hits all sizes alike: \
         `Warden::token` in this process (a warden on each database; median of batches); \
         `tokenwarden token ID`, alternating with `true` (median), and `tokenwarden list \
         --limit 100` (median of runs); a `serve --threads 8` on each database, idle once half \
         a second passes without 10 ms of CPU in any (then RSS and CPU over one idle window \
         for all), then one keep-alive client's sequential `GET …/token` and `GET \
         /v1/credentials?limit=100`, in rounds. Then, size by size, `tokenwarden sweep` with \
         nothing due (median of 3, stdout a pipe) and `tokenwarden sweep --concurrency 32` \
         with everything due (`TOKENWARDEN_REFRESH_AHEAD` longer than the tokens' life), the \
         fake answering each refresh after 20 ms; one upstream call per credential, and never \
         more than 32 in flight, checked. RSS is the peak (VmHWM; GNU time's maximum resident \
         set for a finished command). \"grows\" is the exponent k of cost ∝ n^k from the \
         smallest size to the largest (flat < 0.1 ≤ sub-linear < 0.85 ≤ linear < 1.15 ≤ \
         worse)."
    );
    let _ = writeln!(s, "\n### Machine\n\n{machine}");
    let _ = writeln!(s, "- growth pass wall time: {:.0} s", took.as_secs_f64());
    s
}

// ---------------------------------------------------------------------------
// Report

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let tmp = std::env::temp_dir();
    let fs = filesystem_of(&tmp);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "- nproc: {nproc}\n- CPU: {model}\n- memory: {:.1} GiB\n- kernel: Linux {}\n\
         - {rustc}; SQLite {} (bundled)\n- databases in {} ({fs})\n- load generator: {}\n\
         - load average when the suite started: {} (other work on the machine skews every \
         figure; the ratios, taken side by side, less so)",
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim(),
        rusqlite::version(),
        tmp.display(),
        if which("wrk") {
            "wrk"
        } else {
            "Rust (this binary, `--child loadgen`)"
        },
        load.join(" ")
    )
}

/// The type of the filesystem holding `path` (longest matching mount).
fn filesystem_of(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && path.starts_with(f[1])).then(|| (f[1].len(), f[2].to_owned()))
        })
        .max()
        .map_or_else(|| "unknown filesystem".into(), |(_, t)| t)
}

/// Where the generated part of BENCHMARKS.md begins and ends; the text
/// around it is written by hand and kept.
const BEGIN: &str = "<!-- generated by benches/bench.rs: begin -->";
const END: &str = "<!-- generated by benches/bench.rs: end -->";

/// BENCHMARKS.md with `results` between the markers (a new file if there
/// is none, or it has no markers).
fn merge(old: Option<String>, results: &str) -> String {
    merge_between(old, BEGIN, END, results)
}

/// `old` with `results` between the markers `begin` and `end`; appended
/// with them if `old` has none (a new file if there is no `old`).
fn merge_between(old: Option<String>, begin: &str, end: &str, results: &str) -> String {
    let block = format!("{begin}\n{results}{end}\n");
    if let Some(old) = old {
        if let (Some(b), Some(e)) = (old.find(begin), old.find(end)) {
            if b < e {
                let rest = old[e + end.len()..].trim_start_matches('\n');
                let gap = if rest.is_empty() { "" } else { "\n" };
                return format!("{}{block}{gap}{rest}", &old[..b]);
            }
        }
        return format!("{}\n{block}", old.trim_end_matches('\n').to_owned() + "\n");
    }
    format!(
        "# Benchmarks\n\nEach figure is measured side by side with its physical baseline in \
         the same run and judged as a ratio against it (or against the absolute target the \
         issue sets).\n\n{block}"
    )
}

fn render(figures: &[Figure], machine: &str, sizes: &Sizes, took: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Reproduce (the whole suite, about {} minutes here; the section between the \
         markers is rewritten by it):\n",
        took.as_secs().div_ceil(60)
    );
    let _ = writeln!(s, "```sh\ncargo bench --bench bench\n```\n");
    if sizes.smoke {
        let _ = writeln!(s, "**Smoke run: tiny sizes, figures not meaningful.**\n");
    }
    let _ = writeln!(
        s,
        "| figure | value | baseline (same run) | ratio | target | met |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for f in figures {
        let met = match f.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            f.name, f.value, f.baseline, f.ratio, f.target, met
        );
    }
    let _ = writeln!(s, "\n## How each figure was taken\n");
    for f in figures {
        for n in &f.notes {
            let _ = writeln!(s, "- **{}**: {n}", f.name);
        }
    }
    let _ = writeln!(s, "\n## Machine\n\n{machine}");
    let _ = writeln!(s, "- suite wall time: {:.0} s", took.as_secs_f64());
    s
}

// ---------------------------------------------------------------------------
// Child roles

fn child(args: &[String]) {
    match args.first().map(String::as_str) {
        Some("bare-server") => bare_server(&args[1..]),
        Some("loadgen") => loadgen(&args[1..]),
        Some("single-flight") => single_flight(&args[1..]),
        Some("import-floor") => import::floor(&args[1..]),
        other => panic!("unknown child role {other:?}"),
    }
}

/// A bare tiny_http server: `threads` workers answering every request with
/// a constant JSON body of `len` bytes; prints its address, runs until its
/// stdin closes.
fn bare_server(args: &[String]) {
    let threads: usize = args[0].parse().expect("threads");
    let len: usize = args[1].parse().expect("len");
    let mut body = String::from("{\"access_token\":\"");
    while body.len() + 2 < len {
        body.push('x');
    }
    body.push_str("\"}");
    let body: Arc<[u8]> = body.into_bytes().into();
    // TCP_NODELAY on the listener, inherited by every accepted socket:
    // tiny_http writes a response of more than 1 KiB in two segments, and
    // without it Nagle's algorithm holds the second one until the client's
    // delayed ACK (40 ms). tokenwarden's server does the same.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let stream = TcpStream::from(std::os::fd::OwnedFd::from(listener));
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let listener = std::net::TcpListener::from(std::os::fd::OwnedFd::from(stream));
    let server =
        Arc::new(tiny_http::Server::from_listener(listener, None).expect("tiny_http server"));
    let addr = server.server_addr().to_ip().expect("ip address");
    println!("{addr}");
    let _ = std::io::stdout().flush();
    for _ in 0..threads {
        let (server, body) = (server.clone(), body.clone());
        thread::spawn(move || {
            let header =
                tiny_http::Header::from_bytes("Content-Type", "application/json").expect("header");
            while let Ok(rq) = server.recv() {
                let response =
                    tiny_http::Response::from_data(body.to_vec()).with_header(header.clone());
                let _ = rq.respond(response);
            }
        });
    }
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// A keep-alive HTTP/1.1 load generator: `conns` connections, each sending
/// `GET path` back to back for `secs` seconds; prints "ok errors".
fn loadgen(args: &[String]) {
    let addr: SocketAddr = args[0].parse().expect("addr");
    let path = args[1].clone();
    let conns: usize = args[2].parse().expect("conns");
    let secs: u64 = args[3].parse().expect("secs");
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\r\n");
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let (ok, bad, stop, request) = (ok.clone(), bad.clone(), stop.clone(), request.clone());
            thread::spawn(move || {
                let Ok(stream) = TcpStream::connect(addr) else {
                    bad.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let _ = stream.set_nodelay(true);
                let mut writer = stream.try_clone().expect("clone");
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                let mut body = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let answered = writer.write_all(request.as_bytes()).is_ok()
                        && read_http_answer(&mut reader, &mut line, &mut body)
                            .is_ok_and(|status| status.starts_with("HTTP/1.1 200"));
                    if !answered {
                        bad.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(secs));
    let done = ok.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    println!("{done} {}", bad.load(Ordering::Relaxed));
}

/// `threads` threads of one process ask for one credential at the same
/// wall-clock instant; prints "via milliseconds" per thread.
fn single_flight(args: &[String]) {
    let db = PathBuf::from(&args[0]);
    let id = args[1].clone();
    let threads: usize = args[2].parse().expect("threads");
    let start_at: i64 = args[3].parse().expect("start");
    let config = Config {
        actor: "bench".into(),
        ..Config::default()
    };
    let warden = Arc::new(Warden::open(&db, config).expect("open warden"));
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (warden, barrier, id) = (warden.clone(), barrier.clone(), id.clone());
            thread::spawn(move || {
                // A running process: its connections are open. (Reading the
                // row does not make the refresh any less due.)
                warden.get(&id).expect("warm-up read");
                barrier.wait();
                loop {
                    let left = start_at - now_ms();
                    if left <= 0 {
                        break;
                    }
                    thread::sleep(Duration::from_millis(left.min(2) as u64));
                }
                let t = Instant::now();
                let need = Need::Token { min_ttl_ms: 0 };
                let (_, via) = warden
                    .ensure(&id, need, Duration::from_secs(30))
                    .expect("token");
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let via = match via {
                    Via::Refreshed => "refreshed",
                    Via::Adopted => "adopted",
                    Via::Stored => "stored",
                };
                (via, ms)
            })
        })
        .collect();
    let mut out = String::new();
    for h in handles {
        let (via, ms) = h.join().expect("thread");
        let _ = writeln!(out, "{via} {ms:.3}");
    }
    print!("{out}");
}
