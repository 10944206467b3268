//! `tokenwarden serve`: the HTTP API of [`crate::http`] and the background
//! refresher of [`crate::sweep`], until SIGTERM or SIGINT, then a shutdown
//! that waits for this process's refresh leases.

use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT};

use crate::error::{Error, Result};
use crate::http::{
    self, ApiKeys, Server, ServerOptions, DEFAULT_WAIT, SHUTDOWN_GRACE, SHUTDOWN_GRACE_ENV,
};
use crate::sweep;
use crate::warden::Warden;

use super::{open, Cli, ServeArgs};

/// `serve`: opens the database as the `http` actor, then [`run_serve`].
pub(super) fn serve(cli: &Cli, args: &ServeArgs) -> Result<()> {
    run_serve(open(cli, "http")?, args)
}

/// Runs `tokenwarden serve`: the HTTP API and, unless `--no-refresher`, the
/// background refresher, until SIGTERM or SIGINT. Then it stops taking
/// requests and starting refreshes, lets the requests in flight finish (at
/// most the grace, [`SHUTDOWN_GRACE`] unless `TOKENWARDEN_SHUTDOWN_GRACE`
/// says otherwise) and waits until every refresh lease this process holds
/// is committed or over (its TTL + [`http::server::LEASE_MARGIN`]), then
/// returns (exit 0). A second signal exits at once, with status 1.
pub fn run_serve(warden: Warden, args: &ServeArgs) -> Result<()> {
    let keys = ApiKeys::load(args.api_key_file.as_deref())?;
    let targets = super::pools::targets(&args.notify)?;
    let grace = match std::env::var(SHUTDOWN_GRACE_ENV) {
        Ok(raw) => crate::config::parse_secs(&raw).ok_or_else(|| {
            Error::Config(format!(
                "{SHUTDOWN_GRACE_ENV}={raw:?} is not a number of seconds"
            ))
        })?,
        Err(_) => SHUTDOWN_GRACE,
    };
    // Installed first, so a signal during start-up is not lost.
    let stop = crate::exit::on_stop()?;
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
        allow_hosts: http::allowed_hosts(&args.allow_host),
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
    // Collects cooldowns ended a day ago and delivers the outbox, on a thread of
    // its own: a receiver that is down or hangs never holds up a token.
    let notify_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let notifier =
        crate::notify::deliver::start_worker(warden.clone(), targets, notify_stop.clone())
            .map_err(|e| crate::error::IoError::new("cannot start the notification thread", e))?;
    // A signal, or the listener failing for good (out of descriptors:
    // tiny_http's accept thread is gone, no new client would be answered).
    let failed = crossbeam_channel::select! {
        recv(stop) -> signal => {
            let name = match signal {
                Ok(SIGINT) => "SIGINT",
                Ok(SIGHUP) => "SIGHUP",
                _ => "SIGTERM",
            };
            log::info!("{name}: shutting down (a second signal exits at once)");
            None
        }
        recv(server.failed()) -> why => {
            let why = why.unwrap_or_default();
            log::error!(
                "the HTTP listener failed ({why}): shutting down, to be started again \
                 (a second signal exits at once)"
            );
            Some(why)
        }
    };
    // No refresh starts from here on; those in flight are waited for.
    warden.metrics().refuse_leases();
    server.shutdown(grace);
    if let Some(background) = background {
        background.stop(grace);
    }
    notify_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // At most one attempt's timeout per target: what is not delivered
    // stays in the outbox for the next start.
    let _ = notifier.join();
    let metrics = warden.metrics();
    if metrics.leases_held() > 0 {
        log::info!(
            "waiting for {} refresh(es) in flight to commit",
            metrics.leases_held()
        );
    }
    let left = metrics.wait_for_leases(warden.config().lease_ttl + http::server::LEASE_MARGIN);
    if left > 0 {
        log::warn!("{left} refresh(es) still running past their lease; exiting anyway");
    }
    log::info!("stopped");
    match failed {
        None => Ok(()),
        Some(why) => Err(crate::error::IoError::new(
            "the HTTP listener failed (out of descriptors? raise `ulimit -n` / LimitNOFILE=)",
            why,
        )
        .into()),
    }
}
