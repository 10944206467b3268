//! The blocking HTTP API of DESIGN.md §5 on tiny_http, and `tokenwarden
//! serve`.
//!
//! - [`server`]: the listener, a fixed pool of workers (a panic answers 500
//!   and the worker carries on; a dead worker is replaced), shutdown.
//! - `routes`: the one route table; auth, size, id, route, method, query
//!   and body checks in that order; thin handlers over [`crate::Warden`].
//! - [`auth`]: API keys and their constant-time check.
//! - [`response`]: replies, and the one mapping from [`crate::Error`] to
//!   statuses and `{"error":{"code","message"}}` bodies.
//! - [`quota`]: the quota routes' seam.
//!
//! Every answer is counted in [`crate::metrics::Metrics::http`] by route
//! pattern and logged at debug level as method, pattern, status and time —
//! never a header, query value or body.

pub mod auth;
mod origin;
pub mod quota;
pub mod response;
mod routes;
pub mod server;
pub mod tls;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::ServeArgs;
use crate::error::{Error, Result};
use crate::sweep;
use crate::warden::Warden;

pub use auth::ApiKeys;
pub use origin::ALLOW_HOST_ENV;
pub use response::{ApiError, Reply, MAX_BODY};
pub use routes::MAX_WAIT_S;
pub use server::{Server, ServerOptions, DEFAULT_WAIT};
pub use tls::TlsFiles;

/// How long shutdown waits for requests and refreshes in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs `tokenwarden serve`: the HTTP API and, unless `--no-refresher`, the
/// background refresher, until SIGTERM or SIGINT; then stops taking
/// requests, lets those in flight finish (at most [`SHUTDOWN_GRACE`] each
/// for the API and the refresher) and returns. A second signal exits at
/// once.
pub fn run_serve(warden: Warden, args: &ServeArgs) -> Result<()> {
    let keys = ApiKeys::load(args.api_key_file.as_deref())?;
    let signal_error = |e: std::io::Error| Error::Io(format!("cannot handle signals: {e}"));
    // Installed first, so a signal during start-up is not lost.
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(signal_error)?;
    let again = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, again.clone())
            .map_err(signal_error)?;
    }
    let warden = Arc::new(warden);
    // `?wait=` defaults to 30 s for HTTP callers, unless TOKENWARDEN_WAIT
    // sets the wait for every caller.
    let wait = match std::env::var_os("TOKENWARDEN_WAIT") {
        Some(_) => warden.config().wait,
        None => DEFAULT_WAIT,
    };
    let options = ServerOptions {
        threads: args.threads,
        keys,
        wait,
        allow_hosts: origin::allowed_hosts(&args.allow_host),
        tls: args.tls_files(),
    };
    let server = Server::start(warden.clone(), &args.listen, options)?;
    let background = match args.no_refresher {
        true => None,
        false => Some(sweep::start_background(
            warden.clone(),
            args.refresher_threads,
        )),
    };
    let signal = signals.forever().next();
    again.store(true, std::sync::atomic::Ordering::SeqCst);
    let name = match signal {
        Some(SIGINT) => "SIGINT",
        _ => "SIGTERM",
    };
    log::info!("{name}: shutting down (a second signal exits at once)");
    server.shutdown(SHUTDOWN_GRACE);
    if let Some(background) = background {
        background.stop(SHUTDOWN_GRACE);
    }
    log::info!("stopped");
    Ok(())
}
