//! The server: a tiny_http listener, a fixed pool of worker threads pulling
//! requests from it, and a supervisor that replaces a worker that dies and
//! stops them all on [`Server::shutdown`].
//!
//! Stopping closes the listening socket (new connections are refused),
//! answers requests not yet started with 503, and waits for the requests in
//! flight: each for the grace, and past it as long as this process holds a
//! refresh lease — a refresh cut short after upstream answered would lose
//! the rotated refresh token and burn the login.

use std::io::{Cursor, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use tiny_http::{Header, Request, Response};

use crate::error::{Error, IoError, Result};
use crate::warden::Warden;

use super::auth::{ApiKeys, API_KEY_ENV};
use super::origin::HostPolicy;
use super::response::{ApiError, Reply, MAX_BODY};
use super::routes::{self, App, BodyState, Handled};
use super::tls::{self, TlsFiles, TlsFront};

/// How long a caller waits on someone else's refresh unless `?wait=` says
/// otherwise (DESIGN.md §7).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// Most worker threads accepted.
const MAX_THREADS: usize = 1024;

/// Most bytes of an unwanted chunked body read (and thrown away) so that
/// the client, still sending it, gets to read the answer.
const DISCARD_MAX: u64 = 16 << 20;

/// How long dropping a [`Server`] that was not shut down waits for requests
/// in flight.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// How long past its TTL a refresh lease of this process is still waited
/// for at shutdown (its owner's commit, once its last attempt ended).
pub const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// How long the requests in flight get to send their answers once the
/// refresh leases that kept shutdown waiting have ended.
const ANSWER_TAIL: Duration = Duration::from_secs(1);

/// How often a stopping server looks at this process's refresh leases.
const LEASE_POLL: Duration = Duration::from_millis(20);

/// How a [`Server`] runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Worker threads answering requests (requests beyond that queue).
    pub threads: usize,
    /// Accepted API keys; none is allowed on a loopback address only.
    pub keys: ApiKeys,
    /// Default wait on a refresh in flight (`?wait=` overrides it).
    pub wait: Duration,
    /// Names answered as `Host` besides loopback ones when no API key is
    /// set (`--allow-host`, `TOKENWARDEN_ALLOW_HOST`).
    pub allow_hosts: Vec<String>,
    /// Serve HTTPS with this certificate and key (`--tls-cert`,
    /// `--tls-key`) instead of plain HTTP.
    pub tls: Option<TlsFiles>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            threads: 8,
            keys: ApiKeys::default(),
            wait: DEFAULT_WAIT,
            allow_hosts: Vec::new(),
            tls: None,
        }
    }
}

/// What workers tell the supervisor, and how it is told to stop.
enum Control {
    /// A worker returned (on stop).
    Exited,
    /// A worker thread died of a panic; its slot needs a new one.
    Died(usize),
    /// Stop, waiting at most this long for requests in flight.
    Stop(Duration),
}

/// Answers one request (the route table; tests swap in others).
type Handler = fn(&App, &mut Request) -> Handled;

struct Shared {
    http: tiny_http::Server,
    app: App,
    handler: Handler,
    stopping: AtomicBool,
    /// A second handle on the listening socket, shut down on stop so that
    /// new connections are refused (tiny_http keeps the first).
    listener: Mutex<Option<TcpListener>>,
    /// Told once when tiny_http's listener fails (its accept thread ends
    /// for good, out of descriptors): the server then answers no new
    /// client, and `serve` stops (see [`Server::failed`]).
    failed: Arc<Sender<String>>,
    /// The TLS listener in front of `http`, if serving HTTPS (dropped
    /// last: it stops accepting).
    _tls: Option<TlsFront>,
}

/// A running HTTP API. Dropping it shuts it down (briefly waiting for
/// requests in flight); [`Server::shutdown`] chooses how long.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tokenwarden::http::{Server, ServerOptions};
/// use tokenwarden::{Config, Warden};
///
/// let warden = Arc::new(Warden::open("tokenwarden.db", Config::from_env()?)?);
/// let server = Server::start(warden, "127.0.0.1:0", ServerOptions::default())?;
/// println!("serving on http://{}", server.addr());
/// server.shutdown(Duration::from_secs(10));
/// # Ok::<(), tokenwarden::Error>(())
/// ```
pub struct Server {
    addr: SocketAddr,
    control: Sender<Control>,
    supervisor: Option<JoinHandle<()>>,
    failed: Receiver<String>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// Listens on `listen` (`HOST:PORT`; port 0 picks a free one) and starts
    /// the workers. Without an API key only a loopback address is allowed
    /// (with a warning); anything else is a [`Error::Config`].
    pub fn start(warden: Arc<Warden>, listen: &str, options: ServerOptions) -> Result<Server> {
        Server::start_with(warden, listen, options, routes::handle)
    }

    fn start_with(
        warden: Arc<Warden>,
        listen: &str,
        options: ServerOptions,
        handler: Handler,
    ) -> Result<Server> {
        if options.threads == 0 || options.threads > MAX_THREADS {
            return Err(Error::Config(format!(
                "--threads must be between 1 and {MAX_THREADS}"
            )));
        }
        let addrs: Vec<SocketAddr> = listen
            .to_socket_addrs()
            .map_err(|e| {
                Error::Config(format!(
                    "--listen {listen:?}: {e}; use HOST:PORT, such as 127.0.0.1:8719"
                ))
            })?
            .collect();
        if addrs.is_empty() {
            return Err(Error::Config(format!(
                "--listen {listen:?} names no address; use HOST:PORT, such as 127.0.0.1:8719"
            )));
        }
        let loopback = addrs.iter().all(|a| a.ip().is_loopback());
        if options.keys.is_empty() && !loopback {
            return Err(Error::Config(format!(
                "refusing to serve on {listen} without an API key: anyone who can reach it \
                 could take access tokens. Set {API_KEY_ENV}=KEY (several: KEY1,KEY2) or pass \
                 --api-key-file FILE, or listen on 127.0.0.1"
            )));
        }
        raise_fd_limit();
        let tls_config = options.tls.as_ref().map(tls::server_config).transpose()?;
        let listener = TcpListener::bind(&addrs[..])
            .map_err(|e| IoError::new(format!("cannot listen on {listen}"), e))?;
        let listener = no_delay(listener);
        let second = listener.try_clone().ok();
        let addr = listener
            .local_addr()
            .map_err(|e| IoError::new(format!("cannot listen on {listen}"), e))?;
        let cannot = |e| IoError::new(format!("cannot listen on {listen}"), e);
        let (http, front, relayed) = match tls_config {
            None => (
                tiny_http::Server::from_listener(listener, None).map_err(cannot)?,
                None,
                None,
            ),
            Some(config) => {
                let (internal, hop) = tls::internal_listener()?;
                let http = tiny_http::Server::from_listener(internal, None).map_err(cannot)?;
                let relayed = Arc::new(tls::Relayed::default());
                let front = TlsFront::start(listener, config, hop, relayed.clone())?;
                (http, Some(front), Some(relayed))
            }
        };
        let scheme = if front.is_some() { "https" } else { "http" };
        if options.keys.is_empty() {
            log::warn!(
                "no API key configured: serving {scheme}://{addr} without authentication \
                 (loopback only); set {API_KEY_ENV} or --api-key-file to require one"
            );
        }
        let weak = options.keys.weak();
        if weak > 0 {
            log::warn!(
                "{} API key(s) shorter than {} characters: wrong keys are not throttled on \
                 the API (a web page reached by DNS rebinding can try keys as fast as it \
                 sends requests), so only a key's length stands against guessing; use \
                 random keys, such as the output of `openssl rand -hex 32`",
                weak,
                super::auth::MIN_STRONG_KEY
            );
        }
        if front.is_none() && !loopback {
            log::warn!(
                "serving plain http:// on {addr}, which is not a loopback address: API keys, \
                 facade handles and access tokens cross the network in clear text. Pass \
                 --tls-cert FILE --tls-key FILE, or put a TLS-terminating reverse proxy in \
                 front and listen on 127.0.0.1"
            );
        }
        let (failed_tx, failed) = crossbeam_channel::bounded(1);
        let failed_tx = Arc::new(failed_tx);
        watch_tiny_http_panics(&failed_tx);
        let shared = Arc::new(Shared {
            failed: failed_tx,
            http,
            app: App {
                hosts: HostPolicy::new(
                    !options.keys.is_empty(),
                    &options.allow_hosts,
                    front.is_some(),
                ),
                warden,
                keys: options.keys,
                wait: options.wait,
                tls: front.is_some(),
                relayed,
                logins: Default::default(),
                console: Default::default(),
            },
            handler,
            stopping: AtomicBool::new(false),
            listener: Mutex::new(second),
            _tls: front,
        });
        let (control, inbox) = crossbeam_channel::unbounded();
        let mut workers = Vec::with_capacity(options.threads);
        for slot in 0..options.threads {
            match spawn_worker(&shared, slot, &control) {
                Ok(h) => workers.push(h),
                Err(e) => {
                    release(&shared, workers.len());
                    return Err(IoError::new("cannot start an HTTP worker thread", e).into());
                }
            }
        }
        let (ours, tx) = (shared.clone(), control.clone());
        let supervisor = thread::Builder::new()
            .name("tokenwarden-http-supervisor".into())
            .spawn(move || supervise(&ours, workers, &tx, &inbox))
            .map_err(|e| {
                release(&shared, options.threads);
                IoError::new("cannot start the HTTP supervisor thread", e)
            })?;
        log::info!(
            "serving the HTTP API on {scheme}://{addr} with {} worker(s)",
            options.threads
        );
        Ok(Server {
            addr,
            control,
            supervisor: Some(supervisor),
            failed,
        })
    }

    /// Receives (once) what went wrong when the listener failed for good:
    /// the server then answers no new client, so its owner should stop it
    /// and exit with an error, for a supervisor to start it again.
    pub fn failed(&self) -> &Receiver<String> {
        &self.failed
    }

    /// The address listened on (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking requests (new connections are refused, requests not yet
    /// started get 503) and returns once those in flight are done: each gets
    /// at most `grace`, except that while this process holds a refresh lease
    /// (a refresh in flight) the wait goes on until it is committed or the
    /// lease is over (its TTL + [`LEASE_MARGIN`]).
    pub fn shutdown(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        if let Some(supervisor) = self.supervisor.take() {
            // The supervisor only ends after a Stop: it is alive to get it.
            let _ = self.control.send(Control::Stop(grace));
            let _ = supervisor.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(DROP_GRACE);
    }
}

/// Sets `TCP_NODELAY` on the listening socket, which every accepted socket
/// inherits. tiny_http writes an answer through a 1 KiB buffer, so a token
/// answer (about 1 KiB) leaves in two segments; without this, Nagle's
/// algorithm holds the second until the client's delayed ACK, 40 ms later,
/// on every keep-alive request. Best effort: a socket that refuses the
/// option is served as it is.
fn no_delay(listener: TcpListener) -> TcpListener {
    let socket = TcpStream::from(OwnedFd::from(listener));
    if let Err(e) = socket.set_nodelay(true) {
        log::debug!("cannot set TCP_NODELAY on the listener: {e}");
    }
    TcpListener::from(OwnedFd::from(socket))
}

/// Tells the supervisor when a worker thread ends: `Died` if by a panic.
struct Sentinel {
    slot: usize,
    control: Sender<Control>,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let msg = if thread::panicking() {
            Control::Died(self.slot)
        } else {
            Control::Exited
        };
        // The supervisor may be gone already (after a stop).
        let _ = self.control.send(msg);
    }
}

/// The `failed` senders of the servers of this process, told when a
/// thread panics inside tiny_http.
static LISTENER_WATCH: Mutex<Vec<std::sync::Weak<Sender<String>>>> = Mutex::new(Vec::new());

/// Makes the death of tiny_http's accept thread tell `failed`. That
/// thread `unwrap`s a `try_clone` of each accepted socket (in
/// `refined_tcp_stream.rs`, reached from nowhere else), so out of
/// descriptors it panics and is gone, with nothing sent to its queue: the
/// server looks alive and answers no new client. The process-wide panic
/// hook (installed once, chained to the previous one) is the one place
/// that sees that thread end. Only that panic counts: tiny_http's
/// connection threads also panic, on input a client controls (a reset
/// before its address is read), and must not stop anything. A `dup` fails
/// only for want of descriptors or memory, which every server of the
/// process shares, so each is told. Only the panic's location is passed
/// on. (A hook set later by the application replaces this one.)
fn watch_tiny_http_panics(failed: &Arc<Sender<String>>) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let accept_thread =
                |file: &str| file.contains("tiny_http") && file.ends_with("refined_tcp_stream.rs");
            if let Some(at) = info.location().filter(|l| accept_thread(l.file())) {
                let why = format!("a tiny_http thread panicked at {at}");
                for tx in LISTENER_WATCH
                    .lock()
                    .iter()
                    .filter_map(std::sync::Weak::upgrade)
                {
                    let _ = tx.try_send(why.clone());
                }
            }
            previous(info);
        }));
    });
    let mut watch = LISTENER_WATCH.lock();
    // Servers gone since are forgotten.
    watch.retain(|tx| tx.strong_count() > 0);
    watch.push(Arc::downgrade(failed));
}

/// Raises the soft limit on open descriptors to the hard one: every
/// connection holds descriptors, and tiny_http's accept thread ends for
/// good on an accept that finds none left (the server then answers no new
/// client), so the more a server may hold, the larger a flood it takes.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            ..limit
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => log::debug!(
                "open descriptors: soft limit raised from {:?} to {:?}",
                limit.current,
                limit.maximum
            ),
            Err(e) => log::debug!("cannot raise the soft limit on open descriptors: {e}"),
        }
    }
}

fn spawn_worker(
    shared: &Arc<Shared>,
    slot: usize,
    control: &Sender<Control>,
) -> std::io::Result<JoinHandle<()>> {
    let shared = shared.clone();
    let sentinel = Sentinel {
        slot,
        control: control.clone(),
    };
    thread::Builder::new()
        .name(format!("tokenwarden-http-{slot}"))
        .spawn(move || {
            let _sentinel = sentinel;
            work(&shared);
        })
}

fn supervise(
    shared: &Arc<Shared>,
    mut workers: Vec<JoinHandle<()>>,
    control: &Sender<Control>,
    inbox: &Receiver<Control>,
) {
    // Slots whose worker died and could not be replaced.
    let mut lost = 0;
    let grace = loop {
        match inbox.recv() {
            Ok(Control::Died(slot)) => {
                log::error!("HTTP worker {slot} died; starting a new one");
                match spawn_worker(shared, slot, control) {
                    Ok(h) => {
                        if let Some(old) = workers.get_mut(slot) {
                            // The old thread is gone: joining returns at once.
                            let _ = std::mem::replace(old, h).join();
                        }
                    }
                    Err(e) => {
                        lost += 1;
                        log::error!("cannot start an HTTP worker thread: {e}");
                    }
                }
            }
            Ok(Control::Exited) => {}
            Ok(Control::Stop(grace)) => break grace,
            // Cannot happen: this thread holds a sender.
            Err(_) => break DROP_GRACE,
        }
    };
    let grace_end = Instant::now() + grace;
    release(shared, workers.len());
    let warden = &shared.app.warden;
    let lease_ttl = warden.config().lease_ttl + LEASE_MARGIN;
    // Past the grace, requests are waited for while this process holds a
    // refresh lease that is not over, and then for ANSWER_TAIL (the owner's
    // answer still has to be sent).
    let mut leased_at: Option<Instant> = None;
    let mut told = false;
    // Every slot's current thread sends exactly one Exited or Died when it
    // ends (a replaced thread's Died was handled above).
    let mut running = workers.len() - lost;
    while running > 0 {
        let now = Instant::now();
        if let Some(taken) = warden.metrics().newest_lease() {
            if now < taken + lease_ttl {
                if !told && now >= grace_end {
                    told = true;
                    log::info!(
                        "waiting for {} refresh(es) in flight to commit",
                        warden.metrics().leases_held()
                    );
                }
                leased_at = Some(now);
            }
        }
        let end = leased_at.map_or(grace_end, |t| grace_end.max(t + ANSWER_TAIL));
        if now >= end {
            break;
        }
        match inbox.recv_deadline(end.min(now + LEASE_POLL)) {
            Ok(Control::Exited | Control::Died(_)) => running -= 1,
            Ok(Control::Stop(_)) | Err(_) => {}
        }
    }
    if running > 0 {
        log::warn!(
            "{running} HTTP request(s) still running after {grace:?} (none holding a refresh \
             lease); not waiting for them"
        );
    }
    log::info!("HTTP API stopped");
}

/// Stops listening and tells `workers` worker threads to refuse what is
/// queued and return.
fn release(shared: &Shared, workers: usize) {
    shared.stopping.store(true, Ordering::SeqCst);
    // Shutting the socket down (not just closing this handle) ends the
    // listening for tiny_http's handle too: connections are refused from
    // now on, and its accept thread ends.
    if let Some(listener) = shared.listener.lock().take() {
        let socket = TcpStream::from(OwnedFd::from(listener));
        if let Err(e) = socket.shutdown(Shutdown::Both) {
            log::debug!("cannot shut the listening socket down: {e}");
        }
    }
    for _ in 0..workers {
        shared.http.unblock();
    }
}

fn work(shared: &Shared) {
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            // Refuse what is queued (no request starts once stopping), then
            // go. An empty pop may have eaten another worker's wake-up
            // marker: one is put back, at the end of the queue, so requests
            // queued behind markers (at most one per worker, plus the
            // listener's closing error) are still reached.
            let mut empty = 0;
            while empty <= MAX_THREADS {
                match shared.http.try_recv() {
                    Ok(Some(rq)) => {
                        empty = 0;
                        refuse(rq);
                    }
                    _ => {
                        shared.http.unblock();
                        empty += 1;
                    }
                }
            }
            return;
        }
        match shared.http.recv() {
            // Stopping began while this worker waited: no request starts.
            Ok(rq) if shared.stopping.load(Ordering::SeqCst) => refuse(rq),
            Ok(rq) => serve(shared, rq),
            Err(e) if !shared.stopping.load(Ordering::SeqCst) => {
                log::error!("the HTTP listener failed: {e}");
                let _ = shared.failed.try_send(e.to_string());
            }
            Err(_) => {}
        }
    }
}

/// Answers a request that arrived too late: the server is stopping.
fn refuse(rq: Request) {
    let reply = ApiError {
        retry_after_s: Some(1),
        ..ApiError::new(
            503,
            "unavailable",
            "the server is shutting down; retry (on another instance)",
        )
    }
    .into_reply();
    send(rq, reply, BodyState::Unread);
}

/// Answers one request; a panic anywhere in its handling becomes a 500 and
/// the worker carries on.
fn serve(shared: &Shared, mut rq: Request) {
    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| (shared.handler)(&shared.app, &mut rq)));
    let Handled { route, reply, body } = outcome.unwrap_or_else(|_| {
        log::error!("an HTTP handler panicked; answered 500");
        Handled {
            route: "unknown",
            reply: ApiError::internal("internal error").into_reply(),
            body: BodyState::Unread,
        }
    });
    shared.app.warden.metrics().http(route, reply.status);
    // A request id ties a client's answer to the server's log line.
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let request_id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let reply = reply.with_header("X-Request-Id", request_id.to_string());
    if log::log_enabled!(log::Level::Debug) {
        let method: String = rq
            .method()
            .as_str()
            .chars()
            .filter(char::is_ascii_graphic)
            .take(16)
            .collect();
        log::debug!(
            "request {request_id}: {method} {route} {} {}ms",
            reply.status,
            started.elapsed().as_millis()
        );
    }
    send(rq, reply, body);
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

/// What is left of a request's body when its answer is ready.
enum Leftover {
    /// Nothing: answer on the worker.
    Nothing,
    /// This many declared bytes, which tiny_http reads (to keep the
    /// connection usable) when the request is dropped.
    Declared(usize),
    /// Chunks of unknown length.
    Chunked,
}

fn leftover(rq: &Request, body: BodyState) -> Leftover {
    let chunked = rq
        .headers()
        .iter()
        .any(|h| h.field.equiv("Transfer-Encoding"));
    match (body, rq.body_length()) {
        (BodyState::Done, _) => Leftover::Nothing,
        (BodyState::Truncated, _) => Leftover::Chunked,
        (BodyState::Unread, Some(n)) if n > 0 => Leftover::Declared(n),
        (BodyState::Unread, _) if chunked => Leftover::Chunked,
        (BodyState::Unread, _) => Leftover::Nothing,
    }
}

/// Sends `reply`. An unread body is dealt with off the worker pool, since
/// reading it waits on the client: a chunked one is read (at most
/// [`DISCARD_MAX`] bytes) so a client still sending it gets to read the
/// answer; a declared one tiny_http reads itself when the request is
/// dropped, into a buffer of the declared length allocated at once — a
/// length that cannot be allocated would abort the process, so such a
/// connection is abandoned without an answer instead.
fn send(rq: Request, reply: Reply, body: BodyState) {
    let leftover = leftover(&rq, body);
    if let Leftover::Declared(n) = leftover {
        if n > MAX_BODY && Vec::<u8>::new().try_reserve_exact(n).is_err() {
            log::warn!(
                "abandoning a connection that declared a {n}-byte body: it cannot be \
                 answered without allocating that much"
            );
            std::mem::forget(rq);
            return;
        }
    }
    let status = reply.status;
    let mut headers: Vec<Header> = reply
        .headers
        .iter()
        .filter_map(|(n, v)| header(n, v))
        .collect();
    headers.extend(reply.content_type().and_then(|t| header("Content-Type", t)));
    headers.extend(header("Cache-Control", "no-store"));
    let bytes = reply.into_bytes();
    let len = bytes.len();
    let response = Response::new(status.into(), headers, Cursor::new(bytes), Some(len), None);
    let discard = matches!(leftover, Leftover::Chunked);
    let finish = move |mut rq: Request, response| {
        if discard {
            let _ = std::io::copy(&mut rq.as_reader().take(DISCARD_MAX), &mut std::io::sink());
        }
        respond(rq, response);
    };
    if matches!(leftover, Leftover::Nothing) {
        finish(rq, response);
        return;
    }
    let job = Arc::new(Mutex::new(Some((rq, response))));
    let theirs = job.clone();
    let spawned = thread::Builder::new()
        .name("tokenwarden-http-drain".into())
        .spawn(move || {
            if let Some((rq, response)) = theirs.lock().take() {
                finish(rq, response);
            }
        });
    if spawned.is_err() {
        if let Some((rq, response)) = job.lock().take() {
            finish(rq, response);
        }
    }
}

fn respond(rq: Request, response: Response<Cursor<Vec<u8>>>) {
    if let Err(e) = rq.respond(response) {
        log::debug!("could not send an answer: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::io::Write as _;
    use std::net::TcpStream;

    /// Panics whose payload panics again when dropped: that second panic
    /// escapes `catch_unwind` and kills the worker thread.
    struct Bomb;

    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("the payload went off");
        }
    }

    fn handler(app: &App, rq: &mut Request) -> Handled {
        match rq.url() {
            "/panic" => panic!("a handler bug"),
            "/die" => std::panic::panic_any(Bomb),
            _ => routes::handle(app, rq),
        }
    }

    fn status(addr: SocketAddr, path: &str) -> Option<u16> {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.split(' ').nth(1)?.parse().ok()
    }

    #[test]
    fn a_panic_is_a_500_and_a_dead_worker_is_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let warden = Warden::open(dir.path().join("t.db"), Config::default()).expect("open");
        let options = ServerOptions {
            threads: 1,
            ..ServerOptions::default()
        };
        let server =
            Server::start_with(Arc::new(warden), "127.0.0.1:0", options, handler).expect("start");
        let addr = server.addr();
        for _ in 0..3 {
            assert_eq!(status(addr, "/panic"), Some(500));
            assert_eq!(status(addr, "/healthz"), Some(200));
        }
        // The only worker dies (the request still gets tiny_http's 500);
        // its replacement answers the next one.
        assert_eq!(status(addr, "/die"), Some(500));
        assert_eq!(status(addr, "/healthz"), Some(200));
        server.shutdown(Duration::from_secs(5));
        assert_eq!(status(addr, "/healthz"), None, "stopped listening");
    }

    #[test]
    fn no_key_is_refused_off_loopback() {
        let dir = tempfile::tempdir().expect("temp dir");
        let warden =
            Arc::new(Warden::open(dir.path().join("t.db"), Config::default()).expect("open"));
        for listen in ["0.0.0.0:0", "[::]:0"] {
            let e = Server::start(warden.clone(), listen, ServerOptions::default())
                .expect_err("refused");
            assert!(matches!(e, Error::Config(_)), "{e}");
            assert!(e.to_string().contains(API_KEY_ENV));
        }
        let zero = ServerOptions {
            threads: 0,
            ..ServerOptions::default()
        };
        assert!(Server::start(warden.clone(), "127.0.0.1:0", zero).is_err());
        assert!(Server::start(warden, "not an address", ServerOptions::default()).is_err());
    }
}
