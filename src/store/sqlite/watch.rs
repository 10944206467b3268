//! The freshness watch: a lock-free read of SQLite's WAL-index header that
//! proves nothing was committed since a cached row was read.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;

use parking_lot::Mutex;
use rusqlite::Connection;

use super::Sqlite;
use crate::store::Stamp;

/// Size of one copy of the WAL-index header (`WalIndexHdr` in SQLite's
/// wal.c, documented in its file format as the wal-index header).
const WAL_HDR: usize = 48;
/// `WALINDEX_MAX_VERSION`, the header's first field.
const WAL_INDEX_VERSION: u32 = 3_007_000;

/// Reads the header of the database's WAL-index (`-shm` file) with one
/// `pread`.
///
/// SQLite keeps two copies of a 48-byte header at the start of the
/// wal-index, which every connection of every process maps shared. Each
/// commit, by any connection, bumps its `iChange` counter and `mxFrame`
/// (and a WAL restart its salts) and rewrites both copies (second, then
/// first) before the commit returns; readers compare the copies to detect
/// a write in progress. So two equal, consistent reads of the header mean
/// nothing was committed in between — the same proof `PRAGMA data_version`
/// gives, which reads the same header but only inside a read transaction
/// (two `fcntl` locks and an `fstat`: ~2 µs here, as long as a whole point
/// SELECT).
///
/// The descriptor is never closed (see [`shm_file`]): SQLite's locks are
/// POSIX advisory locks, which belong to the process, and closing any
/// descriptor of the `-shm` file would drop every one of them — the write
/// lock a connection of this process holds included.
pub(super) struct Watch {
    shm: &'static File,
}

/// This process's read-only descriptors of `-shm` files, by device and
/// inode: each opened once and never closed.
///
/// `close()` of any descriptor of a file releases every POSIX advisory lock
/// the process holds on it, whichever descriptor took them ("How To Corrupt
/// An SQLite Database File", §2.2). SQLite's own descriptors are safe (it
/// tracks its files by inode and defers closes while a connection of the
/// process holds a lock), but one opened beside SQLite is not: closing it
/// while another connection of this process — another store, or any
/// `rusqlite` connection — holds SQLite's write lock lets a second process
/// write at the same time, and one of the two commits is lost. No store
/// can know that no connection of its process is open, so the descriptor
/// is leaked on purpose: one per `-shm` inode the process ever watches (a
/// server watches one; the inode changes only when every connection of
/// every process has closed the database and SQLite deleted the file).
fn shm_file(path: &Path) -> Option<&'static File> {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    static FILES: OnceLock<Mutex<HashMap<(u64, u64), &'static File>>> = OnceLock::new();
    let key = |m: std::fs::Metadata| (m.dev(), m.ino());
    let mut files = FILES.get_or_init(Mutex::default).lock();
    // `stat` first: no descriptor is opened on a file already watched.
    let known = std::fs::metadata(path).ok().map(key);
    if let Some(file) = known.and_then(|k| files.get(&k)) {
        return Some(file);
    }
    let file: &'static File = Box::leak(Box::new(File::open(path).ok()?));
    // Keyed by what was opened (the path may have been replaced since the
    // `stat`). Should it already be known, this second descriptor stays
    // open all the same.
    if let Ok(k) = file.metadata().map(key) {
        files.entry(k).or_insert(file);
    }
    Some(file)
}

impl Watch {
    /// Opens the wal-index of the database `conn` has open, if it is in WAL
    /// mode; `None` otherwise (callers then simply never get a stamp). A
    /// header that does not read well now (a commit writing it, or not set
    /// up as SQLite sets it up) only means no stamp until it does.
    fn open(conn: &Connection) -> Option<Watch> {
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .ok()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return None;
        }
        // A read opens (and, if needed, initialises) the wal-index.
        conn.query_row("SELECT count(*) FROM meta", [], |r| r.get::<_, i64>(0))
            .ok()?;
        // The name SQLite itself derives the -shm name from.
        let db = conn.path().filter(|p| !p.is_empty())?;
        let shm = shm_file(Path::new(&format!("{db}-shm")))?;
        Some(Watch { shm })
    }

    fn read(&self) -> Option<Stamp> {
        let mut buf = [0u8; 2 * WAL_HDR];
        self.shm.read_exact_at(&mut buf, 0).ok()?;
        let (first, second) = buf.split_at(WAL_HDR);
        // Unequal copies: a commit is writing the header right now.
        if first != second {
            return None;
        }
        let version = u32::from_ne_bytes([first[0], first[1], first[2], first[3]]);
        let initialised = first[12] == 1;
        if version != WAL_INDEX_VERSION || !initialised {
            return None;
        }
        let mut stamp = [0u8; Stamp::LEN];
        stamp.copy_from_slice(first);
        Some(Stamp::new(stamp))
    }
}

/// A [`Stamp`] of the database's commit history: equal stamps taken at
/// two instants prove that no connection of any process committed
/// anything in between. `None` when it cannot be proven (not in WAL
/// mode, or a commit is writing the header at this instant): then
/// nothing may be assumed unchanged.
///
/// One `pread` of 96 bytes, no lock: this is how [`crate::Warden::token`]
/// knows its cached row is still the row.
pub(super) fn stamp(db: &Sqlite) -> Option<Stamp> {
    db.watch
        .get_or_init(|| db.conn().ok().and_then(|c| Watch::open(&c)))
        .as_ref()?
        .read()
}
