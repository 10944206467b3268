//! A real PostgreSQL for the tests: `TOKENWARDEN_TEST_PG_URL` when set (a
//! role that may create databases), else a throwaway cluster started here
//! with the installed server binaries (`initdb`, `postgres`), as `nobody`
//! when the tests run as root, with its socket in /tmp and a free port on
//! loopback. One cluster serves the whole test binary; every test gets a
//! database of its own. The server is started under `setpriv
//! --pdeathsig`, from a thread that lives as long as the test binary: when
//! the binary exits, the server gets SIGINT (a fast shutdown) and its data
//! directory is removed by the next run.
//!
//! A test that stops and starts its server gets a cluster of its own
//! (`private_server`), never the shared one.
//!
//! Without a server, PostgreSQL tests print a loud SKIPPED line and pass;
//! with `TOKENWARDEN_REQUIRE_PG=1` (`.ci/run` sets it) they fail instead.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The server the tests use.
pub struct Cluster {
    /// `postgres://user@host:port` (no database).
    pub base: String,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();

/// Where the server binaries are: on PATH, or Debian's versioned directory.
fn server_bin(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    on_path.or_else(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin").join(name))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop()
    })
}

fn is_root() -> bool {
    // The owner of /proc/self is this process's effective user.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// `cmd` run as `nobody` when this process is root (the server refuses to
/// run as root), dying with this process.
fn as_server_user(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    if is_root() {
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
    }
    c.arg("--pdeathsig=INT").arg(program);
    c
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Removes data directories of earlier runs whose server is gone.
fn sweep_old(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("tw-pg-test-") {
            if pid == std::process::id().to_string() {
                continue;
            }
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A server started here: its binaries, data directory and port. It can
/// be stopped and started again (a restart under load).
pub struct Local {
    postgres: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    pid: std::sync::Mutex<Option<u32>>,
}

/// A new cluster in a directory of its own (`name` tells it apart),
/// started.
fn init_local(name: &str) -> Result<Local, String> {
    let initdb = server_bin("initdb").ok_or("initdb not found")?;
    let postgres = server_bin("postgres").ok_or("postgres not found")?;
    let tmp = std::env::temp_dir();
    sweep_old(&tmp);
    let root = tmp
        .join(format!("tw-pg-test-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let socket_dir = root.join("sock");
    std::fs::create_dir_all(&socket_dir).map_err(|e| e.to_string())?;
    if is_root() {
        for d in [root.parent().unwrap_or(&root), &root, &socket_dir] {
            std::os::unix::fs::chown(d, Some(65534), Some(65534)).map_err(|e| e.to_string())?;
        }
    }
    let data = root.join("data");
    let out = as_server_user(&initdb)
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let local = Local {
        postgres,
        data,
        socket_dir,
        port: free_port(),
        pid: std::sync::Mutex::new(None),
    };
    local.start()?;
    Ok(local)
}

impl Local {
    /// `postgres://postgres@127.0.0.1:PORT` (no database).
    pub fn base(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it takes connections.
    pub fn start(&self) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (postgres, data, sock, port) = (
            self.postgres.clone(),
            self.data.clone(),
            self.socket_dir.clone(),
            self.port,
        );
        // The spawning thread waits for the server (reaping it) and then
        // parks for ever: `--pdeathsig` fires when this thread ends, so the
        // server dies with the test binary.
        std::thread::Builder::new()
            .name("pg-server".into())
            .spawn(move || {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(data.parent().unwrap().join("server.log"));
                let child = as_server_user(&postgres)
                    .arg("-D")
                    .arg(&data)
                    .arg("-p")
                    .arg(port.to_string())
                    .arg("-k")
                    .arg(&sock)
                    .args([
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        "fsync=off",
                        "-c",
                        "max_connections=300",
                        "-c",
                        "shared_buffers=32MB",
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log.map(Stdio::from).unwrap_or(Stdio::null()))
                    .spawn();
                match child {
                    Ok(mut c) => {
                        let _ = tx.send(Ok(c.id()));
                        let _ = c.wait();
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
                loop {
                    std::thread::park();
                }
            })
            .map_err(|e| e.to_string())?;
        let pid = rx.recv().map_err(|e| e.to_string())??;
        *self.pid.lock().unwrap() = Some(pid);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            match postgres::Client::connect(&format!("{}/postgres", self.base()), postgres::NoTls) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > end => return Err(format!("server never came up: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Stops the server (a fast shutdown: every connection is closed) and
    /// waits until it is gone.
    pub fn stop(&self) {
        let Some(pid) = self.pid.lock().unwrap().take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < end, "the server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A cluster of its own for one test that stops and starts its server
/// (never the shared one: the other tests use it); `None` as [`cluster`].
pub fn private_server(name: &str) -> Option<Local> {
    cluster()?;
    match std::env::var("TOKENWARDEN_TEST_PG_URL") {
        // A server given from outside cannot be restarted by the tests.
        Ok(url) if !url.is_empty() => None,
        _ => Some(init_local(name).expect("a private PostgreSQL cluster")),
    }
}

/// A new database on `server`: its URL.
pub fn database_on(server: &Local) -> String {
    let mut admin =
        postgres::Client::connect(&format!("{}/postgres", server.base()), postgres::NoTls)
            .expect("connect to the test server");
    admin
        .batch_execute("CREATE DATABASE tw")
        .expect("create a test database");
    format!("{}/tw", server.base())
}

fn loud(line: &str) {
    // Straight to the process's stderr: the test harness captures only
    // the print macros, and this line must be seen.
    let _ = writeln!(std::io::stderr(), "\n*** {line} ***\n");
}

/// The server, started on first use; `None` when there is none (after a
/// loud SKIPPED line), or a panic under `TOKENWARDEN_REQUIRE_PG=1`.
pub fn cluster() -> Option<&'static Cluster> {
    CLUSTER
        .get_or_init(|| {
            let got = match std::env::var("TOKENWARDEN_TEST_PG_URL") {
                Ok(url) if !url.is_empty() => Ok(Cluster {
                    base: url.trim_end_matches('/').to_owned(),
                }),
                // Kept for the whole test binary (a static).
                _ => init_local("shared").map(|l| {
                    let base = l.base();
                    std::mem::forget(l);
                    Cluster { base }
                }),
            };
            match got {
                Ok(c) => Some(c),
                Err(why) => {
                    if std::env::var("TOKENWARDEN_REQUIRE_PG").as_deref() == Ok("1") {
                        panic!("TOKENWARDEN_REQUIRE_PG=1 and no PostgreSQL: {why}");
                    }
                    loud(&format!(
                        "SKIPPED the PostgreSQL tests: {why} (install postgresql or set \
                         TOKENWARDEN_TEST_PG_URL)"
                    ));
                    None
                }
            }
        })
        .as_ref()
}

/// A new, empty database of its own for one test: its URL.
pub fn database() -> Option<String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let c = cluster()?;
    let name = format!(
        "tw_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = postgres::Client::connect(&format!("{}/postgres", c.base), postgres::NoTls)
        .expect("connect to the test server");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create a test database");
    Some(format!("{}/{name}", c.base))
}

/// A client of the test database `url` working in tokenwarden's schema,
/// for tests that look at or change rows behind tokenwarden's back.
pub fn client(url: &str) -> postgres::Client {
    let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    c.batch_execute("SET search_path = tokenwarden").unwrap();
    c
}
