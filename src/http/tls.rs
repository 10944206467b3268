//! `serve --tls-cert FILE --tls-key FILE`: HTTPS with rustls in front of the
//! same tiny_http server.
//!
//! tiny_http's own TLS features are not used: `ssl-rustls` pins rustls 0.20
//! and ring 0.16 (RUSTSEC-2024-0336, RUSTSEC-2025-0009), and with either
//! feature tiny_http makes the TLS handshake on its single accept thread,
//! so one client that connects and sends nothing stops every other
//! connection. Here, instead:
//!
//! - tokenwarden accepts on the public address itself and hands each
//!   connection to a thread of its own, which makes the handshake within
//!   [`HANDSHAKE_TIMEOUT`] (rustls 0.23 with ring, TLS 1.2 and 1.3, ALPN
//!   `http/1.1`);
//! - the decrypted bytes go to tiny_http over an internal loopback TCP
//!   connection, so tiny_http, the workers and the route table are exactly
//!   those of plain HTTP; two threads per connection copy the bytes each
//!   way. Each relay registers its end of the internal hop with the client
//!   it carries (`Relayed`): the routes learn the client's address from
//!   it (the sign-in throttle counts by address), and a request on the
//!   internal port from anything but a relay is refused (421) before it is
//!   routed — the port is no plain-HTTP back door;
//! - at most [`MAX_CONNECTIONS`] TLS connections are open at once, fewer
//!   when the process may hold few descriptors ([`connection_cap`]: each
//!   relayed connection holds about six, and tiny_http's accept thread
//!   ends for good on the first accept that finds none left; more are
//!   closed at once), and one idle for [`IDLE_TIMEOUT`] is closed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::error::{Error, IoError, Result};

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a TLS connection may stay silent (longer than the longest
/// `?wait=`, so a caller waiting on a refresh is never cut off).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(330);

/// Most TLS connections open at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// Descriptors kept for everything but TLS connections (the database's
/// files and pool, listeners, logs, notification deliveries).
const RESERVED_FDS: u64 = 96;

/// Descriptors one relayed TLS connection holds: the client's socket and
/// its clone, the hop's two ends (one here, one in tiny_http) and their
/// clones.
const FDS_PER_CONNECTION: u64 = 6;

/// The most TLS connections open at once when the process may hold
/// `nofile` descriptors (`None`: no limit known): [`MAX_CONNECTIONS`], or
/// fewer, so that a flood of idle connections runs out of slots before
/// the process runs out of descriptors — at least one.
pub fn connection_cap(nofile: Option<u64>) -> usize {
    let fit = nofile.map_or(u64::MAX, |n| {
        n.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION
    });
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_CONNECTIONS)
}

/// How long a write to a client may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// The certificate chain and private key files of `--tls-cert`/`--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Reads the PEM files into a rustls server configuration. Errors name the
/// file and what is wrong with it, never key material.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let (cert, key) = (files.cert.display(), files.key.display());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| Error::Config(format!("--tls-cert {cert}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "--tls-cert {cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    if let Ok(meta) = std::fs::metadata(&files.key) {
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "the TLS key {key} is readable by others (mode {:o}); run `chmod 600` on it",
                meta.permissions().mode() & 0o777
            );
        }
    }
    let private = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        Error::Config(format!(
            "--tls-key {key}: {e}; expected a PEM private key (PKCS#8, RSA or EC)"
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| {
            Error::Config(format!(
                "--tls-cert {cert} and --tls-key {key} do not make a usable pair: {e}"
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client behind each relayed connection, by the relay's own address
/// on the internal hop (what tiny_http sees as the request's peer).
#[derive(Debug, Default)]
pub(crate) struct Relayed(Mutex<HashMap<SocketAddr, SocketAddr>>);

impl Relayed {
    /// The client a relay whose end of the internal hop is `hop` carries;
    /// `None` for a connection no relay made.
    pub(crate) fn client_of(&self, hop: SocketAddr) -> Option<SocketAddr> {
        self.0.lock().get(&hop).copied()
    }
}

/// One relay's entry in [`Relayed`], removed when the relay ends.
struct Registered<'a>(&'a Relayed, SocketAddr);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0 .0.lock().remove(&self.1);
    }
}

/// Binds the internal loopback listener tiny_http accepts relays on.
pub(crate) fn internal_listener() -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .or_else(|_| TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)))
        .map_err(|e| IoError::new("cannot listen on an internal loopback port", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| IoError::new("cannot read the internal listening address", e))?;
    Ok((listener, addr))
}

/// The TLS side of a server: the public listener's accept thread. Dropping
/// it stops accepting.
pub(crate) struct TlsFront {
    stop: Arc<AtomicBool>,
    wake: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TlsFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFront")
            .field("wake", &self.wake)
            .finish()
    }
}

impl TlsFront {
    /// Accepts TLS connections on `listener` and relays each one to the
    /// internal listener at `internal`, registering each in `relayed`.
    pub(crate) fn start(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        internal: SocketAddr,
        relayed: Arc<Relayed>,
    ) -> Result<TlsFront> {
        let local = listener
            .local_addr()
            .map_err(|e| IoError::new("cannot read the listening address", e))?;
        let wake = match local.ip() {
            ip if ip.is_unspecified() && local.is_ipv4() => {
                SocketAddr::from(([127, 0, 0, 1], local.port()))
            }
            ip if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, local.port()))
            }
            _ => local,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let theirs = stop.clone();
        let accept = thread::Builder::new()
            .name("tokenwarden-tls-accept".into())
            .spawn(move || accept_loop(&listener, &config, internal, &relayed, &theirs))
            .map_err(|e| IoError::new("cannot start the TLS accept thread", e))?;
        Ok(TlsFront {
            stop,
            wake,
            accept: Some(accept),
        })
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept thread with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.wake, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Counts one open connection of a front (its count of open ones is
/// shared by its accept loop and relays); uncounts it when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, cap: usize) -> Option<Slot> {
        let n = open.fetch_add(1, Ordering::SeqCst);
        if n >= cap {
            open.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: &TcpListener,
    config: &Arc<ServerConfig>,
    internal: SocketAddr,
    relayed: &Arc<Relayed>,
    stop: &AtomicBool,
) {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let cap = connection_cap(nofile);
    if cap < MAX_CONNECTIONS {
        log::warn!(
            "TLS: at most {cap} connections at once, as this process may open only {} \
             descriptors (raise `ulimit -n` / LimitNOFILE= for more)",
            nofile.unwrap_or_default()
        );
    }
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors, a connection reset before accept, …:
                // keep listening, without spinning.
                log::warn!("TLS listener: cannot accept a connection: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Some(slot) = Slot::take(&open, cap) else {
            log::warn!("{cap} TLS connections are open; closing a new one");
            continue;
        };
        let (config, relayed) = (config.clone(), relayed.clone());
        let spawned = thread::Builder::new()
            .name("tokenwarden-tls".into())
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = relay(tcp, config, internal, &relayed) {
                    log::debug!("TLS connection ended: {e}");
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a TLS connection thread: {e}");
        }
    }
}

/// Sends whatever TLS records the connection has queued.
fn flush_tls(conn: &mut ServerConnection, mut tcp: &TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(&mut tcp)?;
    }
    tcp.flush()
}

/// One TLS connection: handshake, then bytes both ways until either side
/// is done.
fn relay(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    internal: SocketAddr,
    relayed: &Relayed,
) -> io::Result<()> {
    let _ = tcp.set_nodelay(true);
    tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "handshake timed out",
            ));
        }
        tcp.set_read_timeout(Some(left))?;
        conn.complete_io(&mut &tcp)?;
    }
    tcp.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let client = tcp.peer_addr()?;
    let plain = TcpStream::connect(internal)?;
    let _ = plain.set_nodelay(true);
    // Registered before a byte is relayed, so every request tiny_http
    // reads on this hop finds its client; removed when the relay ends.
    let hop = plain.local_addr()?;
    relayed.0.lock().insert(hop, client);
    let _registered = Registered(relayed, hop);
    let conn = Arc::new(Mutex::new(conn));

    // tiny_http → client.
    let (out_conn, out_tcp, out_plain) = (conn.clone(), tcp.try_clone()?, plain.try_clone()?);
    let outbound = thread::Builder::new()
        .name("tokenwarden-tls-out".into())
        .spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match (&out_plain).read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut c = out_conn.lock();
                if c.writer().write_all(&buf[..n]).is_err() || flush_tls(&mut c, &out_tcp).is_err()
                {
                    break;
                }
            }
            let mut c = out_conn.lock();
            c.send_close_notify();
            let _ = flush_tls(&mut c, &out_tcp);
            let _ = out_tcp.shutdown(Shutdown::Both);
            let _ = out_plain.shutdown(Shutdown::Both);
        })?;

    // Client → tiny_http.
    let result = inbound(&tcp, &conn, &plain);
    let _ = plain.shutdown(Shutdown::Write);
    if result.is_err() {
        // A broken or foreign stream: stop answering it as well.
        let _ = tcp.shutdown(Shutdown::Both);
        let _ = plain.shutdown(Shutdown::Both);
    }
    let _ = outbound.join();
    result
}

fn inbound(
    tcp: &TcpStream,
    conn: &Mutex<ServerConnection>,
    mut plain: &TcpStream,
) -> io::Result<()> {
    let mut raw = vec![0u8; 16 * 1024];
    let mut text = vec![0u8; 16 * 1024];
    let mut reader = tcp;
    // Nothing read yet: the handshake may already have buffered the
    // request (sent together with the client's Finished), so drain first.
    let mut fresh: Option<usize> = None;
    loop {
        let mut decrypted = Vec::new();
        let mut closed = false;
        {
            let mut c = conn.lock();
            let mut rest = &raw[..fresh.unwrap_or(0)];
            loop {
                if fresh.is_some() {
                    // At EOF one call with the empty slice tells rustls so.
                    if c.read_tls(&mut rest)? == 0 && !rest.is_empty() {
                        return Err(io::Error::other("TLS input not consumed"));
                    }
                    match c.process_new_packets() {
                        Ok(state) => closed |= state.peer_has_closed(),
                        Err(e) => {
                            let _ = flush_tls(&mut c, tcp);
                            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                        }
                    }
                }
                closed |= drain(&mut c, &mut text, &mut decrypted);
                if rest.is_empty() {
                    break;
                }
            }
            // Alerts, session tickets, key updates.
            flush_tls(&mut c, tcp)?;
        }
        plain.write_all(&decrypted)?;
        if closed {
            return Ok(());
        }
        fresh = Some(reader.read(&mut raw)?);
    }
}

/// Moves the plaintext rustls holds into `out`; true when the client will
/// send no more (close_notify, or the connection ended).
fn drain(c: &mut ServerConnection, buf: &mut [u8], out: &mut Vec<u8>) -> bool {
    loop {
        match c.reader().read(buf) {
            Ok(0) => return true,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            // EOF without close_notify: nothing more will come.
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_descriptors() {
        // (descriptors the process may hold, connections at once)
        let table = [
            (None, MAX_CONNECTIONS),
            (Some(1 << 20), MAX_CONNECTIONS),
            (Some(1024), (1024 - 96) / 6),
            (Some(256), (256 - 96) / 6),
            (Some(100), 1),
            (Some(0), 1),
        ];
        for (nofile, cap) in table {
            assert_eq!(connection_cap(nofile), cap, "{nofile:?}");
        }
        // 150 connections of six descriptors do not fit in 256.
        assert!(connection_cap(Some(256)) * 6 + 96 <= 256);
    }
}
