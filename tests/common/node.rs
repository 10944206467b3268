//! The Node.js packages some tests drive (tests/oidc: a real OpenID
//! provider; tests/browser: playwright-core for headless Chromium),
//! installed from their lockfiles on first need.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Installs the npm package in `dir` from its lockfile once per test run
/// when `node_modules/{marker}` is not there yet (a new user's plain
/// `cargo test`; `.ci/run` installs both before): `npm ci`, which the npm
/// registry serves. The error says what is missing.
pub fn installed(dir: &Path, marker: &str) -> Result<(), String> {
    static DONE: OnceLock<Mutex<HashMap<PathBuf, Result<(), String>>>> = OnceLock::new();
    // Held while `npm ci` runs, so two tests never install into one
    // directory at once.
    let mut done = DONE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(r) = done.get(dir) {
        return r.clone();
    }
    let r = if dir.join("node_modules").join(marker).is_dir() {
        Ok(())
    } else {
        npm_ci(dir)
    };
    done.insert(dir.to_owned(), r.clone());
    r
}

fn npm_ci(dir: &Path) -> Result<(), String> {
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("{} needs Node.js 20+ and npm: {e}", dir.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`npm ci` in {} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
