//! A tokenwarden under test: a temporary database, the fake OAuth server,
//! and ways to drive both the library and the real binary against them.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokenwarden::{Config, Warden};

use super::fake_oauth::{FakeOAuth, Grant};

/// The `tokenwarden` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_tokenwarden");

/// Seconds since the epoch.
pub fn now() -> i64 {
    super::fake_oauth::now_unix()
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the env's temporary directory.
    Sqlite,
    /// A database of its own on the tests' PostgreSQL (common/pg.rs).
    Postgres,
}

/// A database (a SQLite file in a temporary directory, or a PostgreSQL
/// database), wired to a fake OAuth server.
pub struct Env {
    /// Holds the directory alive (import files, logs; the SQLite file).
    pub dir: tempfile::TempDir,
    /// The database: a SQLite file, or a `postgres://` URL (what `--db`
    /// and `TOKENWARDEN_DB` take either way).
    pub db: PathBuf,
    /// Which kind `db` is.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub backend: Backend,
    /// The upstream.
    pub fake: FakeOAuth,
    /// Tuning for every warden and CLI process of this env.
    pub tuning: Tuning,
}

/// Short timeouts, so failure paths run in seconds.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Request timeout (s).
    pub request_timeout: f64,
    /// Attempts per refresh.
    pub attempts: u32,
    /// Lease (s).
    pub lease_ttl: f64,
    /// Backoff min (s).
    pub backoff_min: f64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            request_timeout: 2.0,
            attempts: 1,
            // 1.5 s over the one attempt's 2 s timeout: the commit margin
            // (a quarter of that) plus room for a slow claim on a loaded
            // machine.
            lease_ttl: 3.5,
            backoff_min: 5.0,
        }
    }
}

impl Env {
    /// A fresh env with default test tuning.
    pub fn new() -> Env {
        Env::with(Tuning::default())
    }

    /// A fresh env with `tuning`.
    pub fn with(tuning: Tuning) -> Env {
        Env::with_on(tuning, Backend::Sqlite).expect("SQLite is always there")
    }

    /// A fresh env on `backend` with default test tuning; `None` when it is
    /// PostgreSQL and there is none here (see common/pg.rs: skipped loudly,
    /// or a failure where PostgreSQL is required).
    pub fn on(backend: Backend) -> Option<Env> {
        Env::with_on(Tuning::default(), backend)
    }

    /// A fresh env on `backend` with `tuning` (see [`Env::on`]).
    pub fn with_on(tuning: Tuning, backend: Backend) -> Option<Env> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = match backend {
            Backend::Sqlite => dir.path().join("tw.db"),
            #[cfg(feature = "postgres")]
            Backend::Postgres => PathBuf::from(super::pg::database()?),
            // A SQLite-only build (`--no-default-features`): said loudly,
            // and a failure where PostgreSQL is required.
            #[cfg(not(feature = "postgres"))]
            Backend::Postgres => {
                assert!(
                    std::env::var("TOKENWARDEN_REQUIRE_PG").as_deref() != Ok("1"),
                    "TOKENWARDEN_REQUIRE_PG=1 in a build without the postgres feature"
                );
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED a PostgreSQL test: built without the `postgres` feature ***\n"
                );
                return None;
            }
        };
        Some(Env {
            dir,
            db,
            backend,
            fake: FakeOAuth::start(),
            tuning,
        })
    }

    /// A fresh env with `tuning` on the PostgreSQL database at `url`.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub fn on_url(tuning: Tuning, url: String) -> Env {
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
            db: PathBuf::from(url),
            backend: Backend::Postgres,
            fake: FakeOAuth::start(),
            tuning,
        }
    }

    /// The PostgreSQL URL of a PostgreSQL env.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub fn pg_url(&self) -> &str {
        assert_eq!(self.backend, Backend::Postgres);
        self.db.to_str().expect("a URL")
    }

    /// The library configuration matching the CLI processes' environment.
    pub fn config(&self) -> Config {
        let t = &self.tuning;
        let request_timeout = Duration::from_secs_f64(t.request_timeout);
        let lease_ttl = Duration::from_secs_f64(t.lease_ttl);
        let mut c = Config {
            request_timeout,
            attempts: t.attempts,
            lease_ttl,
            wait: lease_ttl + request_timeout,
            actor: "test".into(),
            ..Config::default()
        };
        c.policy.backoff_min_ms = (t.backoff_min * 1000.0) as i64;
        c.endpoints.codex_token = self.fake.token_url();
        c.endpoints.claude_token = self.fake.claude_token_url();
        c.endpoints.codex_usage = self.fake.codex_usage_url();
        c.endpoints.claude_usage = self.fake.claude_usage_url();
        c
    }

    /// A warden on this env's database.
    pub fn warden(&self) -> Warden {
        Warden::open(&self.db, self.config()).expect("open warden")
    }

    /// The binary with this env's database and upstream.
    pub fn cmd(&self) -> Command {
        let t = &self.tuning;
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TOKENWARDEN_DB", &self.db)
            .env("TOKENWARDEN_CODEX_TOKEN_URL", self.fake.token_url())
            .env("TOKENWARDEN_CLAUDE_TOKEN_URL", self.fake.claude_token_url())
            .env("TOKENWARDEN_CODEX_USAGE_URL", self.fake.codex_usage_url())
            .env("TOKENWARDEN_CLAUDE_USAGE_URL", self.fake.claude_usage_url())
            .env("TOKENWARDEN_REQUEST_TIMEOUT", t.request_timeout.to_string())
            .env("TOKENWARDEN_ATTEMPTS", t.attempts.to_string())
            .env("TOKENWARDEN_LEASE_TTL", t.lease_ttl.to_string())
            .env("TOKENWARDEN_BACKOFF_MIN", t.backoff_min.to_string())
            .stdin(Stdio::null());
        c
    }

    /// [`Env::cmd`] run by `prlimit` (util-linux) with at most `nofile`
    /// open descriptors, soft and hard; the binary's arguments follow.
    pub fn cmd_under_prlimit(&self, nofile: u32) -> Command {
        let plain = self.cmd();
        let mut cmd = Command::new("prlimit");
        cmd.env_clear();
        for (k, v) in plain.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg(BIN)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the binary to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run tokenwarden")
    }

    /// Runs the binary with `input` on stdin.
    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tokenwarden");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().expect("wait tokenwarden")
    }

    /// A new upstream login imported as `id`, whose access token expires in
    /// `expires_in` seconds (inside the 300 s refresh window if < 300).
    pub fn login(&self, id: &str, expires_in: i64) -> Grant {
        let grant = self.fake.new_family(id);
        let mut record = grant.import_json(id, "codex", &self.fake.token_url());
        record["expires_at"] = Value::from(now() + expires_in);
        let path = self.dir.path().join(format!("{id}.json"));
        std::fs::write(&path, record.to_string()).unwrap();
        let out = self.run(&["import", path.to_str().unwrap()]);
        assert!(out.status.success(), "import failed: {}", text(&out.stderr));
        grant
    }
}

/// Lossy UTF-8 of a process's output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON a process printed on stdout.
pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// The process's exit code.
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}
