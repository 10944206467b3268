//! The key commands: `keygen`, `encrypt` and `rekey`, and reading a key
//! file.

use std::path::Path;

use crate::error::{Error, IoError, Result};
use crate::seal::Sealer;
use crate::secret::Secret;
use crate::warden::Warden;

use super::{config, Cli};

/// `keygen`.
pub(super) fn keygen() {
    println!("{}", crate::seal::generate_key());
}

/// `encrypt`.
pub(super) fn encrypt(cli: &Cli) -> Result<()> {
    let c = config(cli, "cli")?;
    let key = sealer(
        c.encryption_key.as_ref(),
        "set TOKENWARDEN_ENCRYPTION_KEY or --encryption-key-file",
    )?;
    let n = Warden::encrypt(&cli.db, c.busy_timeout, &key)?;
    println!(
        "encrypted {n} credentials in {}",
        Warden::shown_database(&cli.db)
    );
    Ok(())
}

/// `rekey`.
pub(super) fn rekey(cli: &Cli, new_key_file: Option<&Path>) -> Result<()> {
    let c = config(cli, "cli")?;
    let old = sealer(
        c.encryption_key.as_ref(),
        "the current key (TOKENWARDEN_ENCRYPTION_KEY or --encryption-key-file)",
    )?;
    let new_key = match new_key_file {
        Some(path) => Some(read_key(path)?),
        None => std::env::var("TOKENWARDEN_NEW_ENCRYPTION_KEY")
            .ok()
            .map(Secret::new),
    };
    let new = sealer(
        new_key.as_ref(),
        "the new key (--new-key-file or TOKENWARDEN_NEW_ENCRYPTION_KEY)",
    )?;
    let n = Warden::rekey(&cli.db, c.busy_timeout, &old, &new)?;
    println!(
        "re-keyed {n} credentials in {}",
        Warden::shown_database(&cli.db)
    );
    Ok(())
}

/// Reads a base64 key from a file (surrounding white space dropped).
pub(super) fn read_key(path: &Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| IoError::with_path("cannot read key file", path, e))?;
    Ok(Secret::new(text.trim()))
}

fn sealer(key: Option<&Secret>, what: &str) -> Result<Sealer> {
    let key = key.ok_or_else(|| Error::Config(format!("{what}: no key given")))?;
    Sealer::from_base64(key.expose()).map_err(|e| Error::Config(format!("{what}: {e}")))
}
