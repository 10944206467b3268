//! A token endpoint that misbehaves at the HTTP level: huge bodies, bodies
//! and headers that trickle or never end, redirects, invalid UTF-8, wrong
//! content types, broken framing. For each: no panic, a bounded wait, a
//! clear `last_error`, nothing from the answer committed, and no more of the
//! body in any message than a short sanitized excerpt.
//!
//! The fake OAuth server cannot misbehave like this, so each case runs its
//! own tiny raw TCP server ([`RawServer`]) whose URL is the credential's
//! `token_url`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::fake_oauth::Grant;
use crate::common::tw::{code, json, now, text, Env, Tuning};
use serde_json::Value;

/// A marker repeated through abusive bodies: it must never reach a message.
const MARKER: &str = "QQBODYMARKERQQ";
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------
// The raw server.

/// One accepted connection, after its request was read.
struct Conn {
    stream: TcpStream,
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Conn {
    /// Writes `bytes`, counting what the kernel accepted.
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.written.fetch_add(bytes.len() as u64, Ordering::SeqCst);
        Ok(())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `d`, in small steps, unless the server is stopping.
    fn pause(&self, d: Duration) -> std::io::Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.stopped() {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

type Handler = dyn Fn(&mut Conn) -> std::io::Result<()> + Send + Sync;

/// A loopback server that reads each request (head + Content-Length body)
/// and then lets `handler` write whatever it likes.
struct RawServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl RawServer {
    fn start(handler: impl Fn(&mut Conn) -> std::io::Result<()> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (h, w, s) = (hits.clone(), written.clone(), stop.clone());
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (h, w, s, handler) = (h.clone(), w.clone(), s.clone(), handler.clone());
                thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    if read_request(&mut reader).is_none() {
                        return;
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let mut conn = Conn {
                        stream,
                        written: w,
                        stop: s,
                    };
                    // A write error means the client gave up: that is the point.
                    let _ = handler(&mut conn);
                    let _ = conn.stream.shutdown(Shutdown::Both);
                });
            }
        });
        RawServer {
            addr,
            hits,
            written,
            stop,
            accept: Some(accept),
        }
    }

    fn token_url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Reads a request head and its Content-Length body; `None` if the client
/// went away first.
fn read_request(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(body)
}

/// A status line and headers (each `k: v`), then the blank line.
fn head(status: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Sends `total` bytes of JSON-ish filler (the marker over and over) in
/// 64 KiB writes, until done or the client hangs up.
fn stream_filler(c: &mut Conn, total: u64) -> std::io::Result<()> {
    let chunk = MARKER.repeat(64 * 1024 / MARKER.len());
    let mut sent = 0u64;
    while sent < total && !c.stopped() {
        let n = (total - sent).min(chunk.len() as u64) as usize;
        c.send(&chunk.as_bytes()[..n])?;
        sent += n as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Driving tokenwarden at it.

fn tuning() -> Tuning {
    Tuning {
        request_timeout: 1.0,
        attempts: 1,
        lease_ttl: 3.0,
        backoff_min: 5.0,
    }
}

/// Imports `id` as a Codex login whose token endpoint is `token_url` and
/// whose access token has expired, so the next `token` must refresh.
fn import_expired(env: &Env, id: &str, token_url: &str) -> Grant {
    let grant = env.fake.new_family(id);
    let mut record = grant.import_json(id, "codex", token_url);
    record["expires_at"] = Value::from(now() - 10);
    let path = env.dir.path().join(format!("{id}.json"));
    std::fs::write(&path, record.to_string()).unwrap();
    let out = env.run(&["import", path.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "import: {}", text(&out.stderr));
    grant
}

/// Runs the binary, killing it and failing if it is still running after
/// `limit` (a bound on the wait, not a timing assertion).
fn run_bounded(env: &Env, args: &[&str], limit: Duration) -> Output {
    let child = env
        .cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tokenwarden");
    wait_bounded(child, limit, &args.join(" "))
}

fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> Output {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_t = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`tokenwarden {what}` still running after {limit:?}: it hangs");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

fn last_line(out: &Output) -> String {
    text(&out.stderr)
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// What one abuse case must end as.
struct Expect {
    /// `last_error.code`.
    code: &'static str,
    /// Something the message must say.
    says: &'static str,
}

/// Drives `tokenwarden <verb> ID` against `server` and checks the common
/// promises: exit 5 with a one-line error, no panic, the row's tokens
/// unchanged, one failure recorded with a clear, short, sanitized error.
fn abuse(verb: &str, server: &RawServer, expect: Expect) -> (Env, Grant, String) {
    let env = Env::with(tuning());
    let id = "abused";
    let grant = import_expired(&env, id, &server.token_url());
    if verb == "refresh" {
        // A credential whose token is fine: `refresh` still asks upstream.
        let mut record = grant.import_json(id, "codex", &server.token_url());
        record["expires_at"] = Value::from(now() + 3600);
        let path = env.dir.path().join("valid.json");
        std::fs::write(&path, record.to_string()).unwrap();
        let out = env.run(&["import", path.to_str().unwrap(), "--replace"]);
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    }
    let out = run_bounded(&env, &[verb, id], Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "panic: {stderr}"
    );
    assert_eq!(code(&out), 5, "exit code; stderr: {stderr}");
    assert!(
        text(&out.stdout).trim().is_empty(),
        "no token printed: {}",
        text(&out.stdout)
    );
    let line = last_line(&out);
    assert!(
        line.contains("temporarily unavailable") && line.contains("retry"),
        "{line}"
    );
    assert!(line.contains(expect.code), "names the failure: {line}");
    assert!(line.len() < 600, "one short line: {} bytes", line.len());
    assert!(!stderr.contains(MARKER), "body bytes leaked to stderr");
    assert_eq!(server.hits(), 1, "exactly one request to the endpoint");

    // Nothing committed from the answer; one failure recorded.
    let warden = env.warden();
    let row = warden.get(id).unwrap();
    assert_eq!(
        row.access_token.as_ref().map(|t| t.expose()),
        Some(grant.access_token.as_str())
    );
    assert_eq!(row.refresh_token.expose(), grant.refresh_token);
    assert_eq!(row.status.failures, 1);
    assert!(row.status.next_attempt_at_ms.is_some());
    assert!(row.status.lease.is_none(), "the lease was released");
    let summary = json(&env.run(&["show", id, "--json"]));
    let err = &summary["last_error"];
    assert_eq!(err["code"], expect.code, "{summary}");
    let message = err["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains(expect.says),
        "message says {:?}: {message}",
        expect.says
    );
    assert_clean(&message);
    eprintln!("{verb}: last_error {}: {message}", expect.code);
    assert_eq!(
        env.fake.stats().token_requests,
        0,
        "nothing went to the real endpoint"
    );
    (env, grant, message)
}

/// A message fit for a log line: short, printable, free of abusive bytes.
fn assert_clean(message: &str) {
    assert!(message.len() <= 400, "short: {} bytes", message.len());
    assert!(
        !message.chars().any(|c| c.is_control()),
        "no control characters: {message:?}"
    );
    assert!(!message.contains(MARKER), "no body bytes: {message}");
    assert!(!message.contains('\u{fffd}'), "no mangled bytes: {message}");
}

// ---------------------------------------------------------------------------
// Huge answers: the client reads at most BODY_CAP.

/// A 50 MiB token answer is cut at the body cap (`response_too_large`), not read whole.
#[test]
fn a_50_mib_body_is_capped_not_buffered() {
    let server = RawServer::start(|c| {
        let total = 50 * MIB;
        c.send(&head(
            "200 OK",
            &[
                "Content-Type: application/json",
                &format!("Content-Length: {total}"),
            ],
        ))?;
        c.send(b"{\"access_token\":\"")?;
        stream_filler(c, total - 17)
    });
    abuse(
        "token",
        &server,
        Expect {
            code: "response_too_large",
            says: "bytes",
        },
    );
    // The client hung up after the cap: the server could not write it all.
    assert!(
        server.written() < 50 * MIB,
        "the client read the whole 50 MiB ({} bytes written)",
        server.written()
    );
}

/// A close-delimited huge error body is cut at the body cap.
#[test]
fn a_huge_body_without_length_is_capped() {
    // Close-delimited: no Content-Length, no chunking.
    let server = RawServer::start(|c| {
        c.send(&head(
            "503 Service Unavailable",
            &["Content-Type: application/json", "Connection: close"],
        ))?;
        stream_filler(c, 50 * MIB)
    });
    abuse(
        "refresh",
        &server,
        Expect {
            code: "response_too_large",
            says: "503",
        },
    );
    assert!(server.written() < 50 * MIB);
}

/// A 200 holding a 10 MB access token is refused whole, its tokens never stored.
#[test]
fn a_200_with_a_10_mb_access_token_is_refused_whole() {
    let server = RawServer::start(|c| {
        let token = MARKER.repeat(10_000_000 / MARKER.len());
        let body = format!(
            r#"{{"access_token":"{token}","refresh_token":"rt-{MARKER}","expires_in":3600,"token_type":"Bearer"}}"#
        );
        c.send(&head(
            "200 OK",
            &[
                "Content-Type: application/json",
                &format!("Content-Length: {}", body.len()),
            ],
        ))?;
        c.send(body.as_bytes())
    });
    abuse(
        "token",
        &server,
        Expect {
            code: "response_too_large",
            says: "200",
        },
    );
}

/// A gzip stream that inflates to `inflated` bytes of `b'A'` (fixed-Huffman
/// DEFLATE: one literal, then length-258 copies at distance 1, 13 bits
/// each), without the trailer: the reader must stop at the cap long before.
fn gzip_bomb(inflated: u64) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u32,
        n: u32,
    }
    impl Bits {
        /// Writes `len` bits of `v`, least significant first.
        fn put(&mut self, v: u32, len: u32) {
            for i in 0..len {
                self.acc |= ((v >> i) & 1) << self.n;
                self.n += 1;
                if self.n == 8 {
                    self.out.push(self.acc as u8);
                    self.acc = 0;
                    self.n = 0;
                }
            }
        }
        /// Writes a Huffman code, most significant bit first.
        fn code(&mut self, v: u32, len: u32) {
            for i in (0..len).rev() {
                self.put((v >> i) & 1, 1);
            }
        }
    }
    let mut b = Bits {
        out: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
        acc: 0,
        n: 0,
    };
    b.put(1, 1); // BFINAL
    b.put(1, 2); // fixed Huffman
    b.code(0x30 + u32::from(b'A'), 8); // literal 'A'
    for _ in 0..inflated / 258 {
        b.code(0b1100_0101, 8); // length code 285 = 258
        b.code(0, 5); // distance code 0 = 1
    }
    b.out
}

/// A gzip bomb under the cap compressed is cut at the cap after inflating.
#[test]
fn a_gzip_bomb_is_capped_after_inflating() {
    // Smaller than the cap compressed, 128 times larger inflated: only a
    // cap on the inflated bytes stops it.
    let bomb = gzip_bomb(32 * MIB);
    assert!((bomb.len() as u64) < tokenwarden::upstream::BODY_CAP);
    let server = RawServer::start(move |c| {
        c.send(&head(
            "200 OK",
            &[
                "Content-Type: application/json",
                "Content-Encoding: gzip",
                &format!("Content-Length: {}", bomb.len()),
            ],
        ))?;
        c.send(&bomb)
    });
    abuse(
        "token",
        &server,
        Expect {
            code: "response_too_large",
            says: "bytes",
        },
    );
}

/// A chunked body that never ends is cut at the body cap.
#[test]
fn chunked_encoding_that_never_ends_is_capped() {
    let server = RawServer::start(|c| {
        c.send(&head(
            "200 OK",
            &[
                "Content-Type: application/json",
                "Transfer-Encoding: chunked",
            ],
        ))?;
        c.send(b"11\r\n{\"access_token\":\"\r\n")?;
        let chunk = MARKER.repeat(1000);
        let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
        while !c.stopped() {
            c.send(framed.as_bytes())?;
        }
        Ok(())
    });
    abuse(
        "token",
        &server,
        Expect {
            code: "response_too_large",
            says: "bytes",
        },
    );
}

// ---------------------------------------------------------------------------
// Answers that trickle or never end: bounded by the request timeout.

/// A body that trickles one byte a second ends in the request timeout, reported as ambiguous.
#[test]
fn a_slow_loris_body_times_out() {
    // Headers at once, then one byte of body per second.
    let server = RawServer::start(|c| {
        c.send(&head(
            "200 OK",
            &["Content-Type: application/json", "Content-Length: 1000"],
        ))?;
        for b in format!("{{\"access_token\":\"{}", MARKER.repeat(100)).bytes() {
            c.send(&[b])?;
            c.pause(Duration::from_secs(1))?;
        }
        Ok(())
    });
    let (_, _, message) = abuse(
        "token",
        &server,
        Expect {
            code: "timeout_after_send",
            says: "ambiguous",
        },
    );
    assert!(message.contains("in time"), "{message}");
}

/// Headers that trickle forever end in the request timeout, reported as ambiguous.
#[test]
fn headers_that_trickle_forever_time_out() {
    let server = RawServer::start(|c| {
        c.send(b"HTTP/1.1 200 OK\r\n")?;
        let mut n = 0u64;
        loop {
            c.send(format!("X-Slow-{n}: {MARKER}\r\n").as_bytes())?;
            n += 1;
            c.pause(Duration::from_millis(100))?;
        }
    });
    abuse(
        "token",
        &server,
        Expect {
            code: "timeout_after_send",
            says: "ambiguous",
        },
    );
}

/// Headers that flood forever are refused as not valid HTTP.
#[test]
fn headers_that_flood_forever_are_refused() {
    let server = RawServer::start(|c| {
        c.send(b"HTTP/1.1 200 OK\r\n")?;
        let mut n = 0u64;
        while !c.stopped() {
            c.send(format!("X-Flood-{n}: {}\r\n", MARKER.repeat(20)).as_bytes())?;
            n += 1;
        }
        Ok(())
    });
    abuse(
        "token",
        &server,
        Expect {
            code: "bad_response",
            says: "not valid HTTP",
        },
    );
    assert!(
        server.written() < 50 * MIB,
        "the client stopped reading the headers"
    );
}

/// A header line that never ends is refused as too large.
#[test]
fn a_header_line_that_never_ends_is_refused() {
    let server = RawServer::start(|c| {
        c.send(b"HTTP/1.1 200 OK\r\nX-Endless: ")?;
        while !c.stopped() {
            c.send(MARKER.repeat(1000).as_bytes())?;
        }
        Ok(())
    });
    abuse(
        "token",
        &server,
        Expect {
            code: "bad_response",
            says: "headers were too large",
        },
    );
    assert!(server.written() < 50 * MIB);
}

/// A chunked body that trickles forever ends in the request timeout, reported as ambiguous.
#[test]
fn chunked_encoding_that_trickles_forever_times_out() {
    let server = RawServer::start(|c| {
        c.send(&head(
            "200 OK",
            &[
                "Content-Type: application/json",
                "Transfer-Encoding: chunked",
            ],
        ))?;
        loop {
            c.send(format!("{:x}\r\n{MARKER}\r\n", MARKER.len()).as_bytes())?;
            c.pause(Duration::from_millis(100))?;
        }
    });
    abuse(
        "token",
        &server,
        Expect {
            code: "timeout_after_send",
            says: "ambiguous",
        },
    );
}

/// An answer that never comes ends in the request timeout, reported as ambiguous.
#[test]
fn an_answer_that_never_comes_times_out() {
    let server = RawServer::start(|c| c.pause(Duration::from_secs(30)));
    abuse(
        "token",
        &server,
        Expect {
            code: "timeout_after_send",
            says: "ambiguous",
        },
    );
}

// ---------------------------------------------------------------------------
// Redirects: never followed for a token request.

fn redirect_case(status: &'static str, verb: &str) {
    // The target is a real token endpoint where this refresh would succeed.
    let env_target = Env::with(tuning());
    let target = env_target.fake.token_url();
    let location = format!("{target}?next={MARKER}");
    let server = RawServer::start(move |c| {
        c.send(&head(
            status,
            &[
                &format!("Location: {location}"),
                "Content-Length: 0",
                "Content-Type: text/html",
            ],
        ))
    });
    let (_, _, message) = abuse(
        verb,
        &server,
        Expect {
            code: "redirect",
            says: "not followed",
        },
    );
    assert_eq!(
        env_target.fake.stats().token_requests,
        0,
        "the redirect target got a request"
    );
    assert!(
        message.contains(&status[..3]),
        "names the status: {message}"
    );
    assert!(
        message.contains(&env_target.fake.addr().to_string()),
        "names where it pointed: {message}"
    );
}

/// A 302 from the token endpoint is not followed, and the error names the status and the target.
#[test]
fn a_302_redirect_is_not_followed() {
    redirect_case("302 Found", "token");
}

/// A 307 from the token endpoint is not followed, and the error names the status and the target.
#[test]
fn a_307_redirect_is_not_followed() {
    redirect_case("307 Temporary Redirect", "refresh");
}

/// A 308 from the token endpoint is not followed, and the error names the status and the target.
#[test]
fn a_308_redirect_is_not_followed() {
    redirect_case("308 Permanent Redirect", "token");
}

// ---------------------------------------------------------------------------
// Bodies that are not what they claim.

fn body_case(status: &'static str, content_type: &'static str, body: &'static [u8]) -> RawServer {
    RawServer::start(move |c| {
        c.send(&head(
            status,
            &[
                &format!("Content-Type: {content_type}"),
                &format!("Content-Length: {}", body.len()),
            ],
        ))?;
        c.send(body)
    })
}

/// A token answer of invalid UTF-8 is a transient `bad_json` failure whose bytes are not quoted.
#[test]
fn an_invalid_utf8_body_is_a_transient_failure_and_not_quoted() {
    let server = body_case(
        "200 OK",
        "application/json",
        b"{\"access_token\":\"\xff\xfe\xc3\x28ab\x00\x1b[31m\"}",
    );
    let (_, _, message) = abuse(
        "token",
        &server,
        Expect {
            code: "bad_json",
            says: "not JSON",
        },
    );
    // A 2xx body may hold new tokens: nothing of it is quoted.
    assert!(!message.contains("access_token"), "{message}");
    assert!(message.contains("not quoted"), "{message}");
}

/// An error answer of invalid UTF-8 is a transient `bad_json` failure naming the status.
#[test]
fn an_invalid_utf8_error_body_is_a_transient_failure() {
    let server = body_case("400 Bad Request", "application/json", b"\xc0\xc1\xf5\xff");
    abuse(
        "refresh",
        &server,
        Expect {
            code: "bad_json",
            says: "400",
        },
    );
}

/// A large non-JSON answer is described by its size only, never quoted.
#[test]
fn a_large_non_json_body_is_described_by_its_size_only() {
    let server = RawServer::start(|c| {
        let body = format!("<html>{}</html>", MARKER.repeat(5000));
        c.send(&head(
            "200 OK",
            &[
                "Content-Type: text/html",
                &format!("Content-Length: {}", body.len()),
            ],
        ))?;
        c.send(body.as_bytes())
    });
    abuse(
        "token",
        &server,
        Expect {
            code: "bad_json",
            says: "-byte body",
        },
    );
}

/// A body cut short is an ambiguous connection loss (it may have been processed).
#[test]
fn a_truncated_body_is_an_ambiguous_connection_loss() {
    let server = RawServer::start(|c| {
        c.send(&head(
            "200 OK",
            &["Content-Type: application/json", "Content-Length: 5000"],
        ))?;
        c.send(format!("{{\"access_token\":\"{MARKER}").as_bytes())
        // …and the connection closes.
    });
    abuse(
        "token",
        &server,
        Expect {
            code: "connection_lost",
            says: "may have been processed",
        },
    );
}

/// A connection closed without an answer is an ambiguous connection loss.
#[test]
fn a_closed_connection_without_answer_is_ambiguous() {
    let server = RawServer::start(|_| Ok(()));
    abuse(
        "token",
        &server,
        Expect {
            code: "connection_lost",
            says: "ambiguous",
        },
    );
}

/// An answer that is not HTTP is refused as `bad_response`.
#[test]
fn an_answer_that_is_not_http_is_refused() {
    let server = RawServer::start(|c| c.send(format!("SSH-2.0-{MARKER}\r\n\r\n").as_bytes()));
    abuse(
        "token",
        &server,
        Expect {
            code: "bad_response",
            says: "not valid HTTP",
        },
    );
}

/// A token answer labelled `text/html` is still a token answer. The parser
/// reads the body as JSON whatever the content type says, and that is
/// right: upstream has already rotated the refresh token when it sends this
/// body, so refusing it over a header would throw the only copy of the new
/// refresh token away and burn the login on the next attempt. (A real HTML
/// page is not JSON and is refused as `bad_json`, see above.)
#[test]
fn a_token_answer_with_a_wrong_content_type_is_accepted() {
    let body = br#"{"access_token":"at-from-html-labelled-answer","refresh_token":"rt-from-html-labelled-answer","expires_in":3600,"token_type":"Bearer"}"#;
    for content_type in [
        "text/html; charset=utf-8",
        "text/plain",
        "application/octet-stream",
    ] {
        let server = body_case("200 OK", content_type, body);
        let env = Env::with(tuning());
        import_expired(&env, "ct", &server.token_url());
        let out = run_bounded(&env, &["token", "ct"], Duration::from_secs(30));
        assert_eq!(code(&out), 0, "{content_type}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "at-from-html-labelled-answer");
        let row = env.warden().get("ct").unwrap();
        assert_eq!(
            row.refresh_token.expose(),
            "rt-from-html-labelled-answer",
            "{content_type}: the rotated refresh token is committed"
        );
        assert_eq!(row.status.failures, 0);
        assert_eq!(server.hits(), 1);
    }
}

/// The library sees the same outcomes: a typed, retryable error.
#[test]
fn the_library_gets_an_unavailable_error_not_a_panic() {
    use tokenwarden::Error;
    let server = RawServer::start(|c| {
        c.send(&head(
            "200 OK",
            &[
                "Content-Type: application/json",
                "Content-Length: 1000000000",
            ],
        ))?;
        stream_filler(c, 1_000_000_000)
    });
    let env = Env::with(tuning());
    let grant = import_expired(&env, "lib", &server.token_url());
    let warden = env.warden();
    match warden.token("lib", Duration::ZERO) {
        Err(Error::Unavailable { message, .. }) => {
            assert!(message.contains("response_too_large"), "{message}");
            assert_clean(&message);
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    let row = warden.get("lib").unwrap();
    assert_eq!(row.refresh_token.expose(), grant.refresh_token);
    assert_eq!(row.last_error.unwrap().code, "response_too_large");
}
