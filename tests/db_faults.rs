//! The database misbehaving under tokenwarden: locked by another writer past
//! the busy timeout, read-only, full, corrupt, foreign, from the future.
//! Each must give a clear error, never damage the file, and work again once
//! the fault is gone — and a rotated token that cannot be committed is an
//! error, never a token served from memory (DESIGN.md §3 invariant 3).
//!
//! Read-only and full file systems are real: a small tmpfs mounted in a
//! temporary directory (the tests run as root), remounted read-only or
//! filled up. Where mounting is not permitted those tests print why and
//! return early.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::tw::{code, text, Env, Tuning};
use rusqlite::{Connection, OpenFlags};
use tokenwarden::state::State;
use tokenwarden::{Config, Error, Warden};

fn last_line(out: &Output) -> String {
    text(&out.stderr)
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// `PRAGMA integrity_check` through a read-only connection of our own.
fn integrity(path: &Path) -> String {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Number of event rows, read directly (events hold no secret).
fn event_count(path: &Path) -> i64 {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap()
}

/// Polls `cond` every 5 ms; fails after `limit` (a bound on the wait).
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "gave up waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn assert_no_panic(out: &Output) {
    let err = text(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
}

/// Folds the WAL into the main file and closes the last connection, so no
/// `-wal` / `-shm` is left: a process that exits without closing its
/// connections leaves them behind.
fn checkpoint_and_close(db: &Path) {
    let c = Connection::open(db).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(c);
    assert!(!db.with_extension("db-wal").exists(), "WAL left behind");
}

// ---------------------------------------------------------------------------
// A small tmpfs of our own.

/// A tmpfs mounted on a temporary directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "2m"), or says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                text(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, mode: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount {mode}: {}",
            text(&out.stderr)
        );
    }

    /// Fills the file system up with a filler file; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // Whatever single bytes still fit.
        while let Ok(1) = f.write(&[0]) {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("mount")
            .args(["-o", "remount,rw"])
            .arg(self.path())
            .output();
        let _ = Command::new("umount").arg("-l").arg(self.path()).output();
    }
}

/// An env whose database lives on a fresh tmpfs, or `None` (printed) when
/// this sandbox cannot mount one.
fn env_on_tmpfs(test: &str, size: &str, tuning: Tuning) -> Option<(Env, Tmpfs)> {
    match Tmpfs::mount(size) {
        Ok(fs) => {
            let mut env = Env::with(tuning);
            env.db = fs.path().join("tw.db");
            Some((env, fs))
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: cannot mount a tmpfs here: {why}");
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Writers contending past the busy timeout.

/// A second connection holding the write lock (as `sqlite3` left at a
/// `BEGIN IMMEDIATE` prompt, or a backup tool, would).
fn hold_write_lock(db: &Path) -> Connection {
    let c = Connection::open(db).unwrap();
    c.execute_batch(
        "BEGIN IMMEDIATE; \
         UPDATE credentials SET updated_ms = updated_ms WHERE 0;",
    )
    .unwrap();
    c
}

fn busy_config(env: &Env, busy: Duration) -> Config {
    Config {
        busy_timeout: busy,
        ..env.config()
    }
}

/// A claim that cannot get the write lock within the busy timeout fails
/// with a clear, retryable database error; nothing is written and nothing
/// is sent upstream; once the lock is gone the same call succeeds.
#[test]
fn a_claim_blocked_past_the_busy_timeout_fails_cleanly_and_retry_works() {
    let env = Env::new();
    let old = env.login("busy", 60);
    let warden = Warden::open(&env.db, busy_config(&env, Duration::from_millis(300))).unwrap();
    let before = warden.get("busy").unwrap();
    let events = event_count(&env.db);

    let lock = hold_write_lock(&env.db);
    let err = warden.token("busy", Duration::ZERO).unwrap_err();
    let Error::Db(db) = &err else {
        panic!("expected a database error, got {err:?}");
    };
    let message = db.to_string();
    assert!(message.contains("locked"), "{message}");
    assert!(message.contains("retry"), "{message}");
    assert_eq!(err.exit_code(), 1);
    assert_eq!(env.fake.stats().token_requests, 0, "nothing sent upstream");
    drop(lock);

    let row = warden.get("busy").unwrap();
    assert_eq!(row.status.version, before.status.version, "nothing written");
    assert_eq!(row.status.state, State::Valid);
    assert!(row.status.lease.is_none());
    assert_eq!(event_count(&env.db), events);
    assert_eq!(integrity(&env.db), "ok");

    let g = warden.token("busy", Duration::ZERO).expect("retry works");
    assert_ne!(g.access_token.expose(), old.access_token);
    assert_eq!(
        g.access_token.expose(),
        env.fake.family_state("busy").current_access_token
    );
    assert_eq!(env.fake.stats().token_requests, 1);
}

/// The lock is taken while the refresh is in flight and held past the
/// busy timeout but released within the lease: the owner keeps retrying
/// the commit of the rotated tokens, which lands — nothing is lost.
#[test]
fn a_commit_blocked_for_a_while_is_retried_within_the_lease() {
    let env = Env::with(Tuning {
        lease_ttl: 4.0,
        ..Tuning::default()
    });
    env.login("slow", 60);
    env.fake.set_latency(Duration::from_millis(500));
    let warden =
        Arc::new(Warden::open(&env.db, busy_config(&env, Duration::from_millis(200))).unwrap());
    let w = warden.clone();
    let caller = thread::spawn(move || w.token("slow", Duration::ZERO));
    wait_until("the claim", Duration::from_secs(5), || {
        warden.get("slow").unwrap().status.state == State::Refreshing
    });
    let lock = hold_write_lock(&env.db);
    wait_until("the upstream answer", Duration::from_secs(5), || {
        env.fake.stats().successful_refreshes == 1
    });
    // Several commit attempts hit the lock (busy timeout 200 ms each).
    thread::sleep(Duration::from_millis(900));
    drop(lock);
    let g = caller
        .join()
        .unwrap()
        .expect("the commit landed after the lock");
    let family = env.fake.family_state("slow");
    assert_eq!(g.access_token.expose(), family.current_access_token);
    let row = warden.get("slow").unwrap();
    assert_eq!(row.refresh_token.expose(), family.current_refresh_token);
    assert_eq!(row.status.state, State::Valid);
    assert_eq!(integrity(&env.db), "ok");
}

/// The CLI blocked by another writer past its busy timeout: one clear line,
/// exit 1, nothing written; the same command works once the lock is gone.
/// (The CLI has no busy-timeout knob yet, so this waits the default 10 s;
/// `TOKENWARDEN_BUSY_TIMEOUT` is set for when it exists.)
#[test]
fn the_cli_blocked_by_a_writer_fails_with_one_clear_line() {
    let env = Env::new();
    env.login("cli-busy", 60);
    let events = event_count(&env.db);
    let lock = hold_write_lock(&env.db);
    let out = env
        .cmd()
        .env("TOKENWARDEN_BUSY_TIMEOUT", "0.5")
        .args(["token", "cli-busy"])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    let line = last_line(&out);
    assert!(line.starts_with("tokenwarden: database"), "{line}");
    assert!(line.contains("locked"), "{line}");
    assert!(text(&out.stdout).is_empty());
    drop(lock);
    assert_eq!(event_count(&env.db), events, "nothing written");
    assert_eq!(integrity(&env.db), "ok");
    assert_eq!(env.fake.stats().token_requests, 0);

    let out = env.run(&["token", "cli-busy"]);
    assert_eq!(code(&out), 0, "retry works: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        env.fake.family_state("cli-busy").current_access_token
    );
}

/// The lock-timeout message must say what happened and what to do: the
/// file is fine and busy, so "retry" — not "not a usable tokenwarden
/// database … pass another --db", which sends the user after the wrong
/// problem.
#[test]
fn the_cli_lock_timeout_message_says_retry_not_another_db() {
    let env = Env::new();
    env.login("wording", 60);
    let lock = hold_write_lock(&env.db);
    let out = env
        .cmd()
        .env("TOKENWARDEN_BUSY_TIMEOUT", "0.5")
        .args(["token", "wording"])
        .output()
        .unwrap();
    drop(lock);
    assert_eq!(code(&out), 1);
    let line = last_line(&out);
    assert!(line.contains("locked") && line.contains("retry"), "{line}");
    assert!(
        !line.contains("not a usable") && !line.contains("another --db"),
        "{line}"
    );
}

/// In WAL mode readers never wait for a writer: `list`, `show` and a `token`
/// whose stored token is fine need no write lock and must work while another
/// process holds one.
#[test]
fn readers_are_not_blocked_by_a_writer() {
    let env = Env::new();
    let g = env.login("reader", 3600);
    let lock = hold_write_lock(&env.db);
    for args in [
        &["list", "--json"][..],
        &["show", "reader", "--json"],
        &["token", "reader"],
    ] {
        let out = env
            .cmd()
            .env("TOKENWARDEN_BUSY_TIMEOUT", "0.5")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{args:?}: {}", last_line(&out));
        if args[0] == "token" {
            assert_eq!(text(&out.stdout).trim(), g.access_token);
        }
    }
    drop(lock);
}

// ---------------------------------------------------------------------------
// Read-only storage.

/// The whole file system turns read-only (a remounted tmpfs: chmod does not
/// stop root). Every command fails with one clear line and exit 1, the file
/// is untouched; remounted read-write, the same command works.
#[test]
fn a_read_only_file_system_gives_a_clear_error_and_changes_nothing() {
    let Some((env, fs)) = env_on_tmpfs("read_only_fs", "4m", Tuning::default()) else {
        return;
    };
    env.login("ro", 60);
    let bytes = std::fs::read(&env.db).unwrap();
    fs.remount("ro");
    for args in [&["token", "ro"][..], &["refresh", "ro"], &["list"]] {
        let out = env.run(args);
        assert_no_panic(&out);
        assert_eq!(code(&out), 1, "{args:?}: {}", text(&out.stderr));
        let line = last_line(&out);
        assert!(
            line.starts_with("tokenwarden: database") && line.contains("open"),
            "{args:?}: {line}"
        );
        assert!(text(&out.stdout).is_empty(), "{args:?}");
    }
    assert_eq!(std::fs::read(&env.db).unwrap(), bytes, "file untouched");
    assert_eq!(env.fake.stats().token_requests, 0, "nothing sent upstream");
    fs.remount("rw");
    assert_eq!(integrity(&env.db), "ok");
    let out = env.run(&["token", "ro"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        env.fake.family_state("ro").current_access_token
    );
}

/// The file itself is immutable (`chattr +i`, which stops root too) while
/// its directory is writable: SQLite opens it read-only, reads work, and the
/// first write fails with the read-only hint — before anything is sent
/// upstream.
#[test]
fn an_immutable_database_file_reads_but_refuses_writes_clearly() {
    let env = Env::new();
    let g = env.login("imm", 3600);
    let due = env.login("imm-due", 60);
    let chattr = |flag: &str| {
        Command::new("chattr")
            .arg(flag)
            .arg(&env.db)
            .stderr(Stdio::piped())
            .output()
    };
    match chattr("+i") {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "SKIPPED immutable_file: chattr +i failed: {}",
                text(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED immutable_file: no chattr: {e}");
            return;
        }
    }
    struct Unchattr<'a>(&'a Path);
    impl Drop for Unchattr<'_> {
        fn drop(&mut self) {
            let _ = Command::new("chattr").arg("-i").arg(self.0).output();
        }
    }
    let _guard = Unchattr(&env.db);
    let bytes = std::fs::read(&env.db).unwrap();

    let out = env.run(&["token", "imm"]);
    assert_eq!(code(&out), 0, "reads work: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), g.access_token);

    let out = env.run(&["token", "imm-due"]);
    assert_no_panic(&out);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    let line = last_line(&out);
    assert!(line.contains("read-only"), "{line}");
    assert_eq!(env.fake.stats().token_requests, 0, "nothing sent upstream");
    assert_eq!(std::fs::read(&env.db).unwrap(), bytes, "file untouched");

    chattr("-i").unwrap();
    let out = env.run(&["token", "imm-due"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_ne!(text(&out.stdout).trim(), due.access_token);
    assert_eq!(integrity(&env.db), "ok");
}

// ---------------------------------------------------------------------------
// Disk full.

/// The disk is full before a refresh: the claim cannot be written, so the
/// refresh token is never sent; a clear "disk is full" error; free space
/// and the retry refreshes.
#[test]
fn a_full_disk_before_the_claim_sends_nothing_and_retry_works() {
    let Some((env, fs)) = env_on_tmpfs("disk_full_claim", "2m", Tuning::default()) else {
        return;
    };
    env.login("full", 60);
    let warden = env.warden();
    let before = warden.get("full").unwrap();
    let filler = fs.fill();

    let err = warden.token("full", Duration::ZERO).unwrap_err();
    assert!(
        matches!(err, Error::DiskFull(_)),
        "expected disk full, got {err:?}"
    );
    assert!(err.to_string().contains("disk is full"), "{err}");
    assert_eq!(env.fake.stats().token_requests, 0, "nothing sent upstream");
    let row = warden.get("full").unwrap();
    assert_eq!(row.status.version, before.status.version);
    assert_eq!(row.access_token, before.access_token);
    assert_eq!(integrity(&env.db), "ok");

    std::fs::remove_file(filler).unwrap();
    let g = warden.token("full", Duration::ZERO).expect("retry works");
    assert_eq!(
        g.access_token.expose(),
        env.fake.family_state("full").current_access_token
    );
    assert_eq!(integrity(&env.db), "ok");
}

/// The disk fills while the refresh is in flight, so the commit of the
/// rotated tokens fails; space comes back within the lease: the owner's
/// commit retry lands, and nothing is lost.
#[test]
fn a_disk_full_at_commit_that_clears_within_the_lease_loses_nothing() {
    let tuning = Tuning {
        lease_ttl: 4.0,
        ..Tuning::default()
    };
    let Some((env, fs)) = env_on_tmpfs("disk_full_commit_clears", "2m", tuning) else {
        return;
    };
    env.login("blip", 60);
    env.fake.set_latency(Duration::from_millis(500));
    let warden = Arc::new(env.warden());
    let w = warden.clone();
    let caller = thread::spawn(move || w.token("blip", Duration::ZERO));
    wait_until("the claim", Duration::from_secs(5), || {
        warden.get("blip").unwrap().status.state == State::Refreshing
    });
    let filler = fs.fill();
    wait_until("the upstream answer", Duration::from_secs(5), || {
        env.fake.stats().successful_refreshes == 1
    });
    thread::sleep(Duration::from_millis(700));
    std::fs::remove_file(filler).unwrap();
    let g = caller.join().unwrap().expect("the commit landed");
    let family = env.fake.family_state("blip");
    assert_eq!(g.access_token.expose(), family.current_access_token);
    assert_eq!(
        warden.get("blip").unwrap().refresh_token.expose(),
        family.current_refresh_token
    );
    assert_eq!(integrity(&env.db), "ok");
}

/// The disk stays full past the lease's end and the space reserve next to
/// the database is already spent. Upstream has rotated, so the new tokens
/// exist only in the owner's memory: the owner keeps trying to commit them
/// — past the lease's end, which is safe because the write is fenced by the
/// lease id — and the new token is never served (nor stored) while the disk
/// is full. Once space is back the commit lands, the caller gets the new
/// token, and the login lives on: no refresh token is sent twice.
/// (Before, the owner gave up at the lease's end and the login was lost.)
#[test]
fn a_commit_on_a_full_disk_is_retried_past_the_lease_until_it_lands() {
    let tuning = Tuning {
        lease_ttl: 2.0,
        request_timeout: 1.0,
        ..Tuning::default()
    };
    let Some((env, fs)) = env_on_tmpfs("disk_full_commit", "2m", tuning) else {
        return;
    };
    let old = env.login("lost", 60);
    env.fake.set_latency(Duration::from_millis(300));
    let warden = Arc::new(env.warden());
    let w = warden.clone();
    let caller = thread::spawn(move || w.token("lost", Duration::ZERO));
    wait_until("the claim", Duration::from_secs(5), || {
        warden.get("lost").unwrap().status.state == State::Refreshing
    });
    let lease = warden.get("lost").unwrap().status.lease.unwrap();
    spend_reserve(&env);
    let filler = fs.fill();
    wait_until("the upstream answer", Duration::from_secs(5), || {
        env.fake.stats().successful_refreshes == 1
    });
    let family = env.fake.family_state("lost");
    assert_eq!(family.rotations, 1, "upstream did rotate");
    let new_token = family.current_access_token.clone();

    // Past the lease's end the owner is still at it; nothing new is stored
    // or served meanwhile.
    wait_until("the lease to end", Duration::from_secs(5), || {
        lease.left_ms(tokenwarden::clock::lease_now()).is_none()
    });
    thread::sleep(Duration::from_millis(300));
    assert!(
        !caller.is_finished(),
        "the owner gave up on the rotated tokens"
    );
    let row = warden.get("lost").unwrap();
    assert_eq!(row.refresh_token.expose(), old.refresh_token);
    let out = env.run(&["show", "lost", "--json"]);
    assert!(!text(&out.stdout).contains(&new_token));

    // Space is back: the commit lands and the caller gets the new token.
    std::fs::remove_file(filler).unwrap();
    let g = caller
        .join()
        .unwrap()
        .expect("the commit landed once space was back");
    assert_eq!(g.access_token.expose(), new_token);
    let family = env.fake.family_state("lost");
    assert_eq!(
        warden.get("lost").unwrap().refresh_token.expose(),
        family.current_refresh_token
    );
    let out = env.run(&["token", "lost"]);
    assert_no_panic(&out);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(
        env.fake.stats().reuse_detected,
        0,
        "no refresh token sent twice"
    );
    assert_eq!(integrity(&env.db), "ok");
}

/// Removes the space reserve next to the database, as if an earlier
/// disk-full commit had already used it.
fn spend_reserve(env: &Env) {
    let mut reserve = env.db.as_os_str().to_owned();
    reserve.push("-reserve");
    std::fs::remove_file(reserve).expect("a space reserve next to the database");
}

/// Same, without rotation (Google-style): nothing is lost upstream, so once
/// space is back a retry simply works.
#[test]
fn without_rotation_a_failed_commit_is_retried_successfully_later() {
    let tuning = Tuning {
        lease_ttl: 2.0,
        request_timeout: 1.0,
        ..Tuning::default()
    };
    let Some((env, fs)) = env_on_tmpfs("disk_full_no_rotation", "2m", tuning) else {
        return;
    };
    env.fake.set_rotation(false);
    env.login("keep", 60);
    env.fake.set_latency(Duration::from_millis(300));
    let warden = Arc::new(env.warden());
    let w = warden.clone();
    let caller = thread::spawn(move || w.token("keep", Duration::ZERO));
    wait_until("the claim", Duration::from_secs(5), || {
        warden.get("keep").unwrap().status.state == State::Refreshing
    });
    spend_reserve(&env);
    let filler = fs.fill();
    assert!(matches!(caller.join().unwrap(), Err(Error::DiskFull(_))));
    std::fs::remove_file(filler).unwrap();
    env.fake.set_latency(Duration::ZERO);
    let g = warden.token("keep", Duration::ZERO).expect("retry works");
    assert_eq!(
        g.access_token.expose(),
        env.fake.family_state("keep").current_access_token
    );
    assert_eq!(integrity(&env.db), "ok");
}

/// Disk full when a CLI process starts: its shared-memory file cannot be
/// sized. One line, exit 1, nothing sent upstream; works once space is back.
#[test]
fn the_cli_on_a_full_disk_fails_with_one_line_and_recovers() {
    let Some((env, fs)) = env_on_tmpfs("disk_full_cli", "2m", Tuning::default()) else {
        return;
    };
    env.login("cli-full", 60);
    checkpoint_and_close(&env.db);
    let bytes = std::fs::read(&env.db).unwrap();
    let filler = fs.fill();
    let out = env.run(&["token", "cli-full"]);
    assert_no_panic(&out);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    let line = last_line(&out);
    eprintln!("{line}");
    assert!(line.starts_with("tokenwarden: database"), "{line}");
    assert!(
        text(&out.stderr).lines().count() <= 2,
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.fake.stats().token_requests, 0);
    assert_eq!(std::fs::read(&env.db).unwrap(), bytes, "file untouched");
    std::fs::remove_file(filler).unwrap();
    assert_eq!(integrity(&env.db), "ok");
    let out = env.run(&["token", "cli-full"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
}

/// The disk-full message should say the disk is full, whichever of
/// SQLite's files hit it: at open that is the shared-memory file, which
/// SQLite reports as an I/O error (SQLITE_IOERR_SHMSIZE).
#[test]
fn the_cli_on_a_full_disk_says_the_disk_is_full() {
    let Some((env, fs)) = env_on_tmpfs("disk_full_cli_wording", "2m", Tuning::default()) else {
        return;
    };
    env.login("wording", 60);
    checkpoint_and_close(&env.db);
    let _filler = fs.fill();
    let out = env.run(&["token", "wording"]);
    assert_eq!(code(&out), 1);
    assert!(
        last_line(&out).contains("disk is full"),
        "{}",
        last_line(&out)
    );
}

/// The disk is nearly full and the WAL file is being reused from its start
/// (it was checkpointed but is still there — as a long-running `serve`, or
/// a process that exited without closing, leaves it). The claim overwrites
/// old WAL frames and needs no new space, so it lands; the refresh token is
/// sent; the commit of the rotated tokens needs new space and fails; the
/// lease runs out and the login is lost. tokenwarden must not get there:
/// either refuse to send the refresh token when a commit could not land, or
/// hold space back for that commit.
#[test]
fn a_nearly_full_disk_must_not_spend_a_refresh_token_it_cannot_commit() {
    let Some((env, fs)) = env_on_tmpfs("disk_nearly_full", "2m", Tuning::default()) else {
        return;
    };
    // Our connection keeps the WAL file alive across processes.
    let keeper = Connection::open(&env.db).unwrap();
    keeper.execute_batch("PRAGMA journal_mode = WAL").unwrap();
    env.login("edge", 60);
    let checkpoint = |mode: &str| -> (i64, i64) {
        keeper
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .unwrap()
    };
    checkpoint("TRUNCATE");
    // Six one-page commits, all backfilled: a WAL of six frames that the
    // next writer reuses from frame 1. A claim writes four frames (fits),
    // the commit of the rotated tokens four more (does not).
    for _ in 0..6 {
        keeper
            .execute_batch("UPDATE credentials SET updated_ms = updated_ms + 1")
            .unwrap();
    }
    assert_eq!(checkpoint("PASSIVE"), (6, 6), "WAL frames, backfilled");
    assert!(env.db.with_extension("db-wal").exists());
    let filler = fs.fill();

    let out = env.run(&["token", "edge"]);
    assert_no_panic(&out);
    std::fs::remove_file(filler).unwrap();
    let spent = env.fake.stats().token_requests > 0;
    let family = env.fake.family_state("edge");
    let row = env.warden().get("edge").unwrap();
    assert!(
        !spent || row.refresh_token.expose() == family.current_refresh_token,
        "the refresh token was spent upstream ({} rotation(s)) but the rotated one was not \
         committed (exit {}: {}): the login is lost",
        family.rotations,
        code(&out),
        last_line(&out)
    );
    drop(keeper);
}

// ---------------------------------------------------------------------------
// Files that are not (our) databases.

/// Runs commands that would write against `path` and checks each refuses
/// with one clear line and exit 1, and that the file and its directory are
/// left exactly as they were.
fn refuse_unchanged(env: &Env, path: &Path, says: &[&str]) {
    let bytes = std::fs::read(path).unwrap();
    let listing = |dir: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let db = path.to_str().unwrap();
    let import = env.dir.path().join("import.json");
    let grant = env.fake.new_family("victim");
    std::fs::write(
        &import,
        grant
            .import_json("victim", "codex", &env.fake.token_url())
            .to_string(),
    )
    .unwrap();
    let dir = path.parent().unwrap();
    let files = listing(dir);
    let requests = env.fake.stats().token_requests;
    for args in [
        &["--db", db, "list"][..],
        &["--db", db, "token", "victim"],
        &["--db", db, "import", import.to_str().unwrap()],
        &["--db", db, "sweep"],
        &["--db", db, "init"],
    ] {
        let out = env.run(args);
        assert_no_panic(&out);
        assert_eq!(code(&out), 1, "{args:?}: {}", text(&out.stderr));
        let line = last_line(&out);
        assert!(
            line.starts_with("tokenwarden: database"),
            "{args:?}: {line}"
        );
        for s in says {
            assert!(line.contains(s), "{args:?} should say {s:?}: {line}");
        }
        assert!(text(&out.stdout).is_empty(), "{args:?}");
    }
    assert!(
        bytes == std::fs::read(path).unwrap(),
        "the file was changed"
    );
    assert_eq!(listing(dir), files, "files appeared or vanished");
    assert_eq!(env.fake.stats().token_requests, requests);
}

/// A file of random bytes given as the database is refused as not ours and left byte-for-byte unchanged.
#[test]
fn random_bytes_are_refused_and_left_alone() {
    let env = Env::new();
    let path = env.dir.path().join("random.db");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..16 * 1024)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    std::fs::write(&path, bytes).unwrap();
    refuse_unchanged(&env, &path, &["not a tokenwarden database"]);
}

/// A text file given as the database is refused as not ours and left byte-for-byte unchanged.
#[test]
fn a_text_file_is_refused_and_left_alone() {
    let env = Env::new();
    let path = env.dir.path().join("notes.txt");
    std::fs::write(&path, "these are my notes, not a database\n".repeat(300)).unwrap();
    refuse_unchanged(&env, &path, &["not a tokenwarden database"]);
}

/// A real tokenwarden database with several credentials, cut short at
/// several points (as a copy interrupted mid-way would leave it).
#[test]
fn a_truncated_database_is_refused_and_left_alone() {
    let env = Env::new();
    for i in 0..40 {
        env.login(&format!("t{i}"), 60);
    }
    // Refreshed once each: more rows, events and pages.
    let warden = env.warden();
    for i in 0..40 {
        warden.token(&format!("t{i}"), Duration::ZERO).unwrap();
    }
    drop(warden);
    let full = std::fs::read(&env.db).unwrap();
    assert!(
        !env.db.with_extension("db-wal").exists(),
        "checkpointed on close"
    );
    let page = 4096;
    assert!(full.len() > 8 * page, "{} bytes", full.len());
    for cut in [page, 2 * page, full.len() / 2] {
        let path = env.dir.path().join(format!("cut{cut}.db"));
        std::fs::write(&path, &full[..cut]).unwrap();
        refuse_unchanged(&env, &path, &["corrupt"]);
    }
}

/// Another application's SQLite database: refused with a clear line naming
/// the problem.
#[test]
fn a_foreign_database_is_refused_with_a_clear_error() {
    let env = Env::new();
    let path = env.dir.path().join("other-app.db");
    let c = Connection::open(&path).unwrap();
    c.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes (body) VALUES ('hello');").unwrap();
    drop(c);
    for args in [&["list"][..], &["token", "x"], &["init"]] {
        let mut all = vec!["--db", path.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = env.run(&all);
        assert_no_panic(&out);
        assert_eq!(code(&out), 1, "{args:?}");
        let line = last_line(&out);
        assert!(
            line.contains("another application") && line.contains("--db"),
            "{line}"
        );
    }
    let c = Connection::open(&path).unwrap();
    let body: String = c
        .query_row("SELECT body FROM notes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(body, "hello", "the other application's data is intact");
    let tables: i64 = c
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 1, "no tables of ours were added");
}

/// …and left byte for byte as it was: refusing it must not switch its
/// journal mode to WAL (which rewrites the header and changes how the other
/// application's file behaves).
#[test]
fn a_foreign_database_is_left_byte_for_byte_unchanged() {
    let env = Env::new();
    let path = env.dir.path().join("other-app.db");
    let c = Connection::open(&path).unwrap();
    c.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes (body) VALUES ('hello');").unwrap();
    drop(c);
    refuse_unchanged(&env, &path, &["another application"]);
    let c = Connection::open(&path).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
}

/// A database written by a newer tokenwarden: refused, naming the upgrade,
/// and left exactly as it was.
#[test]
fn a_database_from_a_future_version_is_refused_and_left_alone() {
    let env = Env::new();
    env.login("future", 3600);
    let c = Connection::open(&env.db).unwrap();
    c.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(c);
    refuse_unchanged(&env, &env.db, &["schema version 99", "upgrade tokenwarden"]);
    let c = Connection::open(&env.db).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
}

/// The library refuses the same files with the same typed error.
#[test]
fn the_library_refuses_bad_files_with_a_database_error() {
    let env = Env::new();
    let path = env.dir.path().join("junk.db");
    std::fs::write(&path, vec![0xa5u8; 8192]).unwrap();
    match Warden::open(&path, env.config()) {
        Err(Error::Db(m)) => assert!(m.to_string().contains("not a tokenwarden database"), "{m}"),
        Err(other) => panic!("expected a database error, got {other:?}"),
        Ok(_) => panic!("opened junk as a database"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), vec![0xa5u8; 8192]);
}
