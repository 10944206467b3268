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

/// How long shutdown waits for requests in flight that hold no refresh
/// lease (`TOKENWARDEN_SHUTDOWN_GRACE` overrides it). Refreshes in flight
/// are waited for until they commit, however long that takes within their
/// lease.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The environment variable that sets the shutdown grace (seconds).
pub const SHUTDOWN_GRACE_ENV: &str = "TOKENWARDEN_SHUTDOWN_GRACE";

/// Runs `tokenwarden serve`: the HTTP API and, unless `--no-refresher`, the
/// background refresher, until SIGTERM or SIGINT. Then it stops taking
/// requests and starting refreshes, lets the requests in flight finish (at
/// most the grace, [`SHUTDOWN_GRACE`] unless `TOKENWARDEN_SHUTDOWN_GRACE`
/// says otherwise) and waits until every refresh lease this process holds
/// is committed or over (its TTL + [`server::LEASE_MARGIN`]), then returns
/// (exit 0). A second signal exits at once, with status 1.
pub fn run_serve(warden: Warden, args: &ServeArgs) -> Result<()> {
    let keys = ApiKeys::load(args.api_key_file.as_deref())?;
    let grace = match std::env::var(SHUTDOWN_GRACE_ENV) {
        Ok(raw) => crate::config::parse_secs(&raw).ok_or_else(|| {
            Error::Config(format!(
                "{SHUTDOWN_GRACE_ENV}={raw:?} is not a number of seconds"
            ))
        })?,
        Err(_) => SHUTDOWN_GRACE,
    };
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
    // No refresh starts from here on; those in flight are waited for.
    warden.metrics().refuse_leases();
    server.shutdown(grace);
    if let Some(background) = background {
        background.stop(grace);
    }
    let metrics = warden.metrics();
    if metrics.leases_held() > 0 {
        log::info!(
            "waiting for {} refresh(es) in flight to commit",
            metrics.leases_held()
        );
    }
    let left = metrics.wait_for_leases(warden.config().lease_ttl + server::LEASE_MARGIN);
    if left > 0 {
        log::warn!("{left} refresh(es) still running past their lease; exiting anyway");
    }
    log::info!("stopped");
    Ok(())
}
