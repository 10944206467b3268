//! The space reserve: a file kept beside the database so that committing
//! rotated tokens, which exist nowhere else, can still go through on a full
//! disk.

use std::path::{Path, PathBuf};

use super::Sqlite;

/// Space kept next to the database for the one write that must not fail
/// for want of space: committing rotated tokens, which exist nowhere else.
const RESERVE_BYTES: usize = 256 * 1024;

fn reserve_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-reserve");
    PathBuf::from(name)
}

/// Creates the reserve file if it is missing (best effort: on a full disk
/// there is nothing to reserve).
pub(super) fn ensure_reserve(db: &Path) {
    let path = reserve_path(db);
    if path.exists() {
        return;
    }
    if let Err(e) = std::fs::write(&path, vec![0u8; RESERVE_BYTES]) {
        log::debug!("no space reserve next to {}: {e}", db.display());
        let _ = std::fs::remove_file(&path);
    }
}

/// Frees the space reserve, so that a commit of rotated tokens that hit
/// a full disk can go through; `false` if there was none left.
pub(super) fn release_reserve(db: &Sqlite) -> bool {
    std::fs::remove_file(reserve_path(&db.path)).is_ok()
}
