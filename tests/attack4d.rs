//! Hostile review of d3e606e (`serve` exits 1 when tiny_http's listener is
//! gone: a process-wide panic hook and `Server::failed`), the TLS front's
//! descriptor cap (`tls::connection_cap`) and `shared_read`'s patience on
//! the refresher's clock. Holes were `#[ignore = "HOLE: …"]` until mended
//! (then marked "(Mended: …)"), or kept as documented known limits.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokenwarden::http::tls::connection_cap;

use crate::common::http::{free_port, Client, InProcess, Served};
use crate::common::tw::{code, json, text, Env, Tuning};

/// Closes `sock` with a reset (SO_LINGER 0): what any client on the
/// network can do.
fn reset(sock: TcpStream) {
    #[repr(C)]
    struct Linger {
        l_onoff: i32,
        l_linger: i32,
    }
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, val: *const Linger, len: u32) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let l = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor and a `struct linger` of the right size.
    let rc = unsafe {
        setsockopt(
            sock.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            &l,
            std::mem::size_of::<Linger>() as u32,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER)");
    drop(sock);
}

/// Bursts of connections that send a whole request head and reset at once,
/// without any key: tiny_http takes the peer's address right after
/// accept (`ClientConnection::new`), gets ENOTCONN for a connection reset
/// in the accept queue, and `unwrap`s it on the connection's thread once
/// the head (already in the socket's buffer) is read (client.rs:153).
fn reset_flood(addr: SocketAddr, bursts: usize) {
    for _ in 0..bursts {
        let socks: Vec<TcpStream> = (0..64)
            .filter_map(|_| {
                let mut s = TcpStream::connect(addr).ok()?;
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    .ok()?;
                Some(s)
            })
            .collect();
        for s in socks {
            reset(s);
        }
    }
}

/// An unauthenticated client that resets its connections must not make a
/// library `Server` report its listener failed (in `serve`: exit 1, every
/// lease refused, every waiting caller dropped — a remote kill switch).
///
/// (Mended: the hook counts only the accept thread's death — a panic in `refined_tcp_stream.rs`.)
#[test]
fn attack4d_reset_connections_do_not_fail_an_in_process_server() {
    let env = Env::new();
    let srv = InProcess::start(&env, &["attack4d-key-0123456789"], 2);
    let addr = srv.addr();
    let start = Instant::now();
    let mut failed = None;
    while start.elapsed() < Duration::from_secs(10) && failed.is_none() {
        reset_flood(addr, 4);
        failed = srv.server.failed().try_recv().ok();
    }
    if failed.is_none() {
        failed = srv
            .server
            .failed()
            .recv_timeout(Duration::from_millis(500))
            .ok();
    }
    assert_eq!(failed, None, "a reset connection failed the server");
    // And it still answers.
    assert_eq!(srv.client.get("/healthz").status, 200);
}

/// The same flood against `tokenwarden serve`, from a client with no key:
/// serve must keep running (it shuts down, refuses every lease and exits 1
/// on the first reset that wins the race — under systemd a restart loop
/// that anyone who reaches the port can drive).
///
/// (Mended: the hook counts only the accept thread's death — a panic in `refined_tcp_stream.rs`.)
#[test]
fn attack4d_reset_connections_do_not_make_serve_exit() {
    let env = Env::new();
    env.login("rst", 3000);
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = env.cmd();
    cmd.env("TOKENWARDEN_API_KEY", "attack4d-key-0123456789")
        .args(["serve", "--listen", &addr.to_string(), "--threads", "2"])
        .arg("--no-refresher");
    let mut served = Served::spawn(cmd, addr);
    let start = Instant::now();
    let mut exited = None;
    while start.elapsed() < Duration::from_secs(10) && exited.is_none() {
        reset_flood(addr, 4);
        exited = served.child.try_wait().expect("try_wait");
    }
    if exited.is_none() {
        std::thread::sleep(Duration::from_secs(1));
        exited = served.child.try_wait().expect("try_wait");
    }
    assert_eq!(exited, None, "serve exited on reset connections");
    let c = Client::new(addr, Some("attack4d-key-0123456789"));
    assert_eq!(c.get("/healthz").status, 200);
}

/// A refresh in flight (upstream answers after 3 s) when a flood makes
/// `serve` give up its listener, the flood going on through the shutdown:
/// serve waits for the refresh to commit before it exits 1, and the login
/// survives. (Since the hook counts only the accept thread's death, the
/// flood that does it is one of idle connections under a 64-descriptor
/// limit: resets no longer stop anything.)
#[test]
fn attack4d_a_refresh_in_flight_is_committed_before_the_failure_exit() {
    let env = Env::with(Tuning {
        request_timeout: 6.0,
        attempts: 1,
        lease_ttl: 8.0,
        backoff_min: 5.0,
    });
    let old = env.login("slow", 100);
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = env.cmd_under_prlimit(64);
    cmd.env("TOKENWARDEN_SHUTDOWN_GRACE", "0.5")
        .env("TOKENWARDEN_LOG", "info")
        .args(["serve", "--listen", &addr.to_string(), "--threads", "4"])
        .arg("--no-refresher");
    let mut served = Served::spawn(cmd, addr);
    env.fake.set_latency(Duration::from_secs(3));
    let pending = thread::spawn(move || Client::new(addr, None).get("/v1/credentials/slow/token"));
    let start = Instant::now();
    while env.fake.stats().token_requests == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no refresh began"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = {
        let flooding = flooding.clone();
        thread::spawn(move || {
            let mut held = Vec::new();
            while flooding.load(Ordering::SeqCst) {
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                    Ok(c) if held.len() < 400 => held.push(c),
                    _ => thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    let began = Instant::now();
    let status = served.child.wait().expect("wait serve");
    let took = began.elapsed();
    flooding.store(false, Ordering::SeqCst);
    flood.join().expect("flood");
    let mut err = String::new();
    if let Some(mut e) = served.child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    // The flood is how it stopped; what matters here is what it did with
    // the refresh in flight.
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("the HTTP listener failed"), "{err}");
    assert!(
        took >= Duration::from_millis(1000) || err.contains("waiting for 1 refresh"),
        "exited after {took:?}: {err}"
    );
    let _ = pending.join();
    let show = env.run(&["show", "slow", "--json"]);
    assert_eq!(code(&show), 0, "{}", text(&show.stderr));
    assert_eq!(
        json(&show)["state"],
        "valid",
        "the refresh was committed: {err}"
    );
    let upstream = env.fake.family_state("slow");
    assert!(!upstream.revoked);
    assert_ne!(upstream.current_access_token, old.access_token);
    env.fake.set_latency(Duration::ZERO);
    let out = env.run(&["refresh", "slow"]);
    assert_eq!(code(&out), 0, "the login survived: {}", text(&out.stderr));
    env.fake.assert_no_reuse_after_success();
    // No secret in what serve wrote on its way out.
    for secret in [&old.access_token, &old.refresh_token]
        .into_iter()
        .chain(upstream.issued_refresh_tokens.iter())
    {
        assert!(!err.contains(secret.as_str()), "a secret in the log: {err}");
    }
}

/// Two servers in one process (library use): a panic on one's connection
/// thread must not report the other's listener failed.
///
/// (Mended: connection-thread panics no longer count; only a failed `dup` in an accept thread, which every server of the process shares, is told to all.)
#[test]
fn attack4d_one_servers_panic_does_not_fail_another_server() {
    let env = Env::new();
    let a = InProcess::start(&env, &["attack4d-key-0123456789"], 2);
    let b = InProcess::start(&env, &["attack4d-key-0123456789"], 2);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) && a.server.failed().is_empty() {
        reset_flood(a.addr(), 2);
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        b.server.failed().try_recv().ok(),
        None,
        "server b told its listener failed (a's listener: {:?})",
        a.server.failed().try_recv().ok()
    );
}

/// A library user's own tiny_http server in the same process (tokenwarden
/// depends on tiny_http, an application embedding it may too): a panic
/// there is nothing to do with tokenwarden's listener.
///
/// (Mended: only the accept thread's death counts.)
#[test]
fn attack4d_an_unrelated_tiny_http_panic_does_not_fail_the_server() {
    let env = Env::new();
    let ours = InProcess::start(&env, &["attack4d-key-0123456789"], 2);
    let theirs = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("their server"));
    let their_addr = theirs.server_addr().to_ip().expect("ip");
    {
        let theirs = theirs.clone();
        thread::spawn(move || {
            while let Ok(rq) = theirs.recv() {
                let _ = rq.respond(tiny_http::Response::empty(204));
            }
        });
    }
    let start = Instant::now();
    let mut failed = None;
    while start.elapsed() < Duration::from_secs(5) && failed.is_none() {
        reset_flood(their_addr, 2);
        failed = ours.server.failed().try_recv().ok();
    }
    theirs.unblock();
    assert_eq!(
        failed, None,
        "tokenwarden's server told its listener failed"
    );
}

/// The TLS front's connection cap at the edges: no limit known, an
/// unlimited soft limit, limits at and around the reserve.
#[test]
fn attack4d_connection_cap_edges() {
    assert_eq!(connection_cap(None), 1024);
    assert_eq!(connection_cap(Some(u64::MAX)), 1024);
    assert_eq!(connection_cap(Some(0)), 1);
    assert_eq!(connection_cap(Some(96)), 1);
    assert_eq!(connection_cap(Some(101)), 1);
    assert_eq!(connection_cap(Some(102)), 1);
    assert_eq!(connection_cap(Some(107)), 1);
    assert_eq!(connection_cap(Some(108)), 2);
    assert_eq!(connection_cap(Some(256)), 26);
    assert_eq!(connection_cap(Some(96 + 6 * 1024)), 1024);
    assert_eq!(connection_cap(Some(96 + 6 * 1024 - 1)), 1023);
}

/// Plain HTTP has no connection cap (the TLS front has `connection_cap`):
/// idle connections from one unauthenticated client, held two seconds,
/// run the process out of descriptors (or, under systemd's TasksMax, of
/// threads: one per connection) and `serve` exits 1 — a remote kill
/// switch whose price is the descriptor limit (here 256; under the unit's
/// LimitNOFILE=65536 about 32 000 connections, or TasksMax threads).
/// Refusing connections past a cap would leave the server up.
#[test]
#[ignore = "KNOWN LIMIT (documented): tiny_http accepts plain HTTP without a cap; a flood that exhausts the descriptor limit ends its accept thread, and serve then exits 1 to be restarted (the alternative is a server that answers no one); serve raises its soft limit, the unit sets LimitNOFILE=65536, the TLS front caps connections"]
fn attack4d_an_idle_flood_on_plain_http_does_not_make_serve_exit() {
    let env = Env::new();
    env.login("plain", 3000);
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = env
        .cmd_under_prlimit(256)
        .env("TOKENWARDEN_API_KEY", "attack4d-key-0123456789")
        .args(["serve", "--listen", &addr.to_string()])
        .args(["--no-refresher", "--threads", "2"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn serve under prlimit");
    let c = Client::new(addr, Some("attack4d-key-0123456789"));
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() || c.get("/healthz").status != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serve did not come up"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let held: Vec<_> = (0..200)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
        .collect();
    thread::sleep(Duration::from_secs(2));
    drop(held);
    thread::sleep(Duration::from_secs(3));
    let exited = child.try_wait().expect("try_wait");
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(exited, None, "serve exited after an idle-connection flood");
}

/// A TCP relay to the tests' PostgreSQL that counts the statements run
/// (Bind messages of the extended protocol) and, when `slow`, holds each
/// answer `delay` before passing it on: a database that answers slowly.
#[cfg(feature = "postgres")]
struct SlowProxy {
    addr: SocketAddr,
    binds: Arc<std::sync::atomic::AtomicUsize>,
    slow: Arc<AtomicBool>,
}

#[cfg(feature = "postgres")]
impl SlowProxy {
    fn start(target: SocketAddr, delay: Duration) -> SlowProxy {
        use std::io::Read;
        use std::sync::atomic::AtomicUsize;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let binds = Arc::new(AtomicUsize::new(0));
        let slow = Arc::new(AtomicBool::new(false));
        let (counted, slowed) = (binds.clone(), slow.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { continue };
                let Ok(mut server) = TcpStream::connect(target) else {
                    continue;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let counted = counted.clone();
                thread::spawn(move || {
                    // Client to server: untyped messages (SSL/GSS requests,
                    // the startup message), then typed ones.
                    let mut buf = Vec::new();
                    let mut typed = false;
                    let mut chunk = [0u8; 16384];
                    loop {
                        let n = match client.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        loop {
                            let head = if typed { 5 } else { 8 };
                            if buf.len() < head {
                                break;
                            }
                            let at = usize::from(typed);
                            let len =
                                u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                            if buf.len() < at + len {
                                break;
                            }
                            if typed {
                                if buf[0] == b'B' {
                                    counted.fetch_add(1, Ordering::SeqCst);
                                }
                            } else {
                                let code = u32::from_be_bytes(buf[4..8].try_into().unwrap());
                                typed = code == 196_608;
                            }
                            buf.drain(..at + len);
                        }
                        if s2.write_all(&chunk[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s2.shutdown(std::net::Shutdown::Both);
                });
                let slowed = slowed.clone();
                thread::spawn(move || {
                    let mut chunk = [0u8; 16384];
                    loop {
                        let n = match server.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if slowed.load(Ordering::SeqCst) {
                            thread::sleep(delay);
                        }
                        if c2.write_all(&chunk[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        SlowProxy { addr, binds, slow }
    }
}

/// PostgreSQL answering in 150 ms: a crowd of 32 callers of one valid
/// credential, all at once. Shared reads are there so that a crowd costs
/// two reads, not one each (b112590: "so the owner's claim and commit do
/// not queue behind them for connections"); but a waiter's patience (250
/// ms) runs from its arrival across both the running read and the next,
/// so with reads over 125 ms every waiter gives up during the second read
/// and reads alone, at the same instant: the crowd costs one read each,
/// exactly when the database is slow. Counted in statements: the slow
/// crowd may cost at most 8 more than the same crowd on a quick database.
///
/// (Mended: a waiter's patience counts from the running read's own start.)
#[test]
#[cfg(feature = "postgres")]
fn attack4d_a_crowd_on_a_slow_database_still_shares_its_reads() {
    let Some(env) = Env::on(crate::common::tw::Backend::Postgres) else {
        return;
    };
    env.login("herd", 3600);
    let url = env.pg_url().to_owned();
    let (head, rest) = url.split_once('@').unwrap();
    let (hostport, db) = rest.split_once('/').unwrap();
    let proxy = SlowProxy::start(hostport.parse().unwrap(), Duration::from_millis(150));
    let proxied = format!("{head}@{}/{db}", proxy.addr);
    let warden = Arc::new(tokenwarden::Warden::open(&proxied, env.config()).unwrap());
    warden.token("herd", Duration::ZERO).unwrap();
    let crowd = |warden: &Arc<tokenwarden::Warden>| {
        let before = proxy.binds.load(Ordering::SeqCst);
        let barrier = Arc::new(std::sync::Barrier::new(32));
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let (w, barrier) = (warden.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    w.token("herd", Duration::ZERO).map(|_| ())
                })
            })
            .collect();
        for t in threads {
            t.join().expect("caller").expect("token");
        }
        proxy.binds.load(Ordering::SeqCst) - before
    };
    // Warm the pool's connections, then a crowd on a quick database.
    crowd(&warden);
    let quick = crowd(&warden);
    proxy.slow.store(true, Ordering::SeqCst);
    let t = Instant::now();
    warden.token("herd", Duration::ZERO).unwrap();
    println!("one call alone on the slow database: {:?}", t.elapsed());
    let slow = crowd(&warden);
    proxy.slow.store(false, Ordering::SeqCst);
    println!("statements: quick crowd {quick}, slow crowd {slow}");
    assert!(quick > 0, "the proxy counted no statement");
    assert!(
        slow <= quick + 8,
        "a crowd of 32 on a slow database ran {slow} statements, on a quick one {quick}"
    );
}

/// Over TLS tiny_http accepts only the front's internal hop, which the
/// front closes without a reset: clients that reset (before the handshake,
/// and after sending a whole request over TLS) leave `serve` running.
#[test]
fn attack4d_reset_connections_over_tls_leave_serve_running() {
    use crate::tls::{agent, make_pki, spawn_tls, terminate, wait_up};
    let env = Env::new();
    env.login("tls", 3000);
    let pki = make_pki(env.dir.path());
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = spawn_tls(&env, &pki, port, &[]);
    let trusted = agent(Some(&pki.ca_der));
    wait_up(&mut child, &trusted, &format!("https://127.0.0.1:{port}"));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        reset_flood(addr, 1);
        let streams: Vec<_> = (0..16)
            .filter_map(|_| {
                let mut s = crate::tls::tls_connect(port, &pki.ca_der)?;
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    .ok()?;
                s.flush().ok()?;
                Some(s.sock)
            })
            .collect();
        for s in streams {
            reset(s);
        }
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "serve over TLS exited on reset connections"
        );
    }
    thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().expect("try_wait").is_none());
    let (status, log) = terminate(child);
    assert_eq!(status, Some(0), "{log}");
}

/// The TLS front's cap counts connections that finished a handshake and
/// then say nothing (closed only after `IDLE_TIMEOUT`, 330 s, and a byte
/// now and then restarts it), with no key asked: under a 256-descriptor
/// limit (cap 26) 26 idle TLS connections from one unauthenticated client
/// shut every other client out — under the default cap, 1024 do.
#[test]
#[ignore = "KNOWN LIMIT (documented): the TLS front's slots are held by idle connections for up to 330 s (long enough for a ?wait= caller) and are not counted per address; a client that takes them all locks others out until they idle out"]
fn attack4d_idle_tls_connections_do_not_lock_out_other_clients() {
    use crate::tls::{agent, get, make_pki, KEY};
    let env = Env::new();
    env.login("tls", 3000);
    let pki = make_pki(env.dir.path());
    let port = free_port();
    let mut child = crate::tls::tls_serve(env.cmd_under_prlimit(256), KEY, &pki, port)
        .env_remove("TOKENWARDEN_LOG")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn serve under prlimit");
    let trusted = agent(Some(&pki.ca_der));
    let base = format!("https://127.0.0.1:{port}");
    let start = Instant::now();
    while get(&trusted, &format!("{base}/healthz"), &[]).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serve did not come up"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let idle: Vec<_> = (0..connection_cap(Some(256)))
        .filter_map(|_| crate::tls::tls_connect(port, &pki.ca_der))
        .collect();
    println!("{} idle TLS connections", idle.len());
    thread::sleep(Duration::from_millis(500));
    // A new client (the first agent keeps its connection, and a slot).
    let fresh = agent(Some(&pki.ca_der));
    let answered = get(&fresh, &format!("{base}/healthz"), &[]).map(|a| a.status);
    drop(idle);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        answered.as_ref().ok(),
        Some(&200),
        "a client shut out by idle connections: {answered:?}"
    );
}
