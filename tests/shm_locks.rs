//! SQLite's locks are POSIX advisory locks, which belong to the process:
//! closing *any* descriptor the process has on a file drops every lock the
//! process holds on it, whichever connection took them ("How To Corrupt An
//! SQLite Database File", §2.2). In WAL mode the write lock lives in the
//! `-shm` file, so a descriptor of its own on `<db>-shm` (the row cache's
//! WAL-index reader, `Store::stamp`) must never be closed while the process
//! has connections — or another process gets the write lock while one of
//! ours holds it, and one of the two commits is lost.
//!
//! Each test holds a write transaction on a connection of this process,
//! makes tokenwarden do what used to close such a descriptor, and shows that
//! another process still cannot write.
//!
//! Nothing here opens the `-shm` file in the test process itself (that would
//! drop the locks just the same): a child `dd` reads and writes it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::tw::{code, text, Env};
use rusqlite::{Connection, OpenFlags};

const ZERO: Duration = Duration::ZERO;

/// A connection of this process holding SQLite's write lock (in WAL mode,
/// a lock on the `-shm` file).
fn hold_write_lock(db: &Path) -> Connection {
    let c = Connection::open(db).expect("open");
    c.execute_batch(
        "BEGIN IMMEDIATE; \
         UPDATE credentials SET updated_ms = updated_ms WHERE 0;",
    )
    .expect("BEGIN IMMEDIATE");
    c
}

/// Another process writes (imports a new credential), giving up on a busy
/// database after half a second.
fn import_from_another_process(env: &Env, id: &str) -> Output {
    let grant = env.fake.new_family(id);
    let record = grant.import_json(id, "codex", &env.fake.token_url());
    let path = env.dir.path().join(format!("{id}.json"));
    std::fs::write(&path, record.to_string()).expect("write import file");
    env.cmd()
        .env("TOKENWARDEN_BUSY_TIMEOUT", "0.5")
        .args(["import", path.to_str().expect("utf-8 path")])
        .output()
        .expect("run tokenwarden import")
}

/// Asserts that the other process was kept out by the lock.
fn assert_locked_out(out: &Output, what: &str) {
    let err = text(&out.stderr);
    assert_eq!(
        code(out),
        1,
        "{what}: another process wrote while this process held the write lock \
         (SQLite's locks were dropped): {err}"
    );
    assert!(err.contains("locked"), "{what}: {err}");
}

fn integrity(path: &Path) -> String {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

fn ids(path: &Path) -> Vec<String> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    let mut st = c
        .prepare("SELECT id FROM credentials ORDER BY id")
        .expect("prepare");
    let rows = st.query_map([], |r| r.get(0)).expect("query");
    rows.collect::<rusqlite::Result<_>>().expect("rows")
}

fn shm(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-shm");
    PathBuf::from(name)
}

/// Dropping one of two wardens on a database keeps this process's SQLite write lock: another process still cannot write.
#[test]
fn dropping_one_of_two_wardens_on_a_database_keeps_the_processs_locks() {
    let env = Env::new();
    env.login("a", 3600);
    let first = env.warden();
    let second = env.warden();
    for w in [&first, &second] {
        w.token("a", ZERO).expect("token");
        // Opens the WAL-index reader behind the row cache.
        assert!(w.store().stamp().is_some(), "a WAL database gives stamps");
        w.token("a", ZERO).expect("token");
    }

    let held = hold_write_lock(&env.db);
    drop(first);
    let out = import_from_another_process(&env, "intruder");
    assert_locked_out(&out, "after dropping a warden");
    // The warden still open works, and so does this process's transaction.
    second
        .token("a", ZERO)
        .expect("token from the other warden");
    held.execute_batch("INSERT INTO meta (key, value) VALUES ('held', 'x'); COMMIT;")
        .expect("commit of the held transaction");

    // Once the lock is released, the other process writes as usual.
    let out = import_from_another_process(&env, "later");
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(ids(&env.db), ["a", "later"]);
    assert_eq!(integrity(&env.db), "ok");
}

/// Dropping one store keeps the write lock another store of this process holds.
#[test]
fn dropping_a_store_keeps_the_locks_of_another_store_of_the_process() {
    let env = Env::new();
    env.login("a", 3600);
    let config = env.config();
    let open = || {
        tokenwarden::testing::Store::open(&env.db, config.busy_timeout, config.pool_size)
            .expect("open store")
    };
    let (first, second) = (open(), open());
    assert!(first.stamp().is_some() && second.stamp().is_some());
    let held = hold_write_lock(&env.db);
    drop(first);
    let out = import_from_another_process(&env, "intruder");
    assert_locked_out(&out, "after dropping a store");
    assert!(second.get("a").expect("read").is_some());
    held.execute_batch("ROLLBACK").expect("rollback");
    drop(second);
    assert_eq!(ids(&env.db), ["a"]);
    assert_eq!(integrity(&env.db), "ok");
}

/// The first 96 bytes of the `-shm` file (both copies of the WAL-index
/// header), read by a child process.
fn read_shm_header(db: &Path) -> Vec<u8> {
    let out = Command::new("dd")
        .arg(format!("if={}", shm(db).display()))
        .args(["bs=96", "count=1", "status=none"])
        .output()
        .expect("run dd");
    assert!(out.status.success(), "dd: {}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 96);
    out.stdout
}

/// Writes `bytes` at the start of the `-shm` file, from a child process.
fn write_shm_header(db: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut child = Command::new("dd")
        .arg(format!("of={}", shm(db).display()))
        .args(["bs=96", "count=1", "conv=notrunc", "status=none"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run dd");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("feed dd");
    assert!(child.wait().expect("wait dd").success());
}

/// The WAL-index header's checksum (SQLite's `walChecksumBytes`, native
/// byte order, over the first 40 bytes).
fn header_checksum(h: &[u8]) -> (u32, u32) {
    let (mut s1, mut s2) = (0u32, 0u32);
    for pair in h[..40].chunks(8) {
        let x0 = u32::from_ne_bytes(pair[..4].try_into().expect("4 bytes"));
        let x1 = u32::from_ne_bytes(pair[4..].try_into().expect("4 bytes"));
        s1 = s1.wrapping_add(x0).wrapping_add(s2);
        s2 = s2.wrapping_add(x1).wrapping_add(s1);
    }
    (s1, s2)
}

/// A WAL-index header SQLite accepts but the stamp reader cannot read keeps this process's write lock.
#[test]
fn a_wal_index_header_the_watch_cannot_read_keeps_the_processs_locks() {
    let env = Env::new();
    env.login("a", 3600);
    let w = env.warden();
    w.token("a", ZERO).expect("token");

    let held = hold_write_lock(&env.db);
    // A header SQLite accepts (it only wants `isInit` non-zero and a good
    // checksum) but the stamp reader does not (it wants `isInit == 1`): the
    // reader's very first read fails, which used to close its descriptor.
    let mut hdr = read_shm_header(&env.db);
    assert_eq!(hdr[..48], hdr[48..], "a settled header");
    assert_eq!(hdr[12], 1, "isInit");
    hdr[12] = 2;
    let (s1, s2) = header_checksum(&hdr[..48]);
    hdr[40..44].copy_from_slice(&s1.to_ne_bytes());
    hdr[44..48].copy_from_slice(&s2.to_ne_bytes());
    let copy = hdr[..48].to_vec();
    hdr[48..].copy_from_slice(&copy);
    write_shm_header(&env.db, &hdr);

    assert_eq!(
        w.store().stamp(),
        None,
        "the header does not read as a stamp"
    );
    w.token("a", ZERO)
        .expect("SQLite itself reads the header fine");
    let out = import_from_another_process(&env, "intruder");
    assert_locked_out(&out, "after a failed first header read");
    held.execute_batch("ROLLBACK").expect("rollback");

    let out = import_from_another_process(&env, "later");
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        w.store().stamp().is_some(),
        "the next commit rewrote the header"
    );
    w.token("a", ZERO).expect("token");
    assert_eq!(ids(&env.db), ["a", "later"]);
    assert_eq!(integrity(&env.db), "ok");
}
