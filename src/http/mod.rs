//! The blocking HTTP API (DESIGN.md §5) on tiny_http. Placeholder until the
//! HTTP issue lands.

use crate::cli::ServeArgs;
use crate::error::{Error, Result};
use crate::warden::Warden;

/// Runs `tokenwarden serve` until SIGTERM/SIGINT.
pub fn run_serve(_warden: Warden, _args: &ServeArgs) -> Result<()> {
    Err(Error::Config("serve is not built yet".into()))
}
