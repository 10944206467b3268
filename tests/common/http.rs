//! Driving tokenwarden's HTTP API in tests: the server in-process or as the
//! real binary, a ureq client that returns every status as an answer, and
//! raw sockets for what a well-behaved client would never send.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokenwarden::http::{ApiKeys, Server, ServerOptions};

use super::tw::Env;

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body, lossy UTF-8.
    pub body: String,
}

impl Answer {
    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `error.code` of an error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {} {}", self.status, self.body))
            .to_owned()
    }

    /// `error.message` of an error body.
    pub fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Panics unless the status is `status`, showing the body.
    pub fn expect(self, status: u16) -> Answer {
        assert_eq!(self.status, status, "body: {}", self.body);
        self
    }
}

/// A client of one server, with (or without) an API key.
#[derive(Clone)]
pub struct Client {
    base: String,
    key: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client of `addr` sending `key` as a Bearer token, if any.
    pub fn new(addr: SocketAddr, key: Option<&str>) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Client {
            base: format!("http://{addr}"),
            key: key.map(str::to_owned),
            agent,
        }
    }

    /// The same server with another key.
    pub fn with_key(&self, key: Option<&str>) -> Client {
        Client {
            key: key.map(str::to_owned),
            ..self.clone()
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None)
    }

    /// `POST path` with a body.
    pub fn post(&self, path: &str, body: &str) -> Answer {
        self.send("POST", path, Some(body.as_bytes()))
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Answer {
        self.send("DELETE", path, None)
    }

    /// Any method, with an optional body (sent with a Content-Length).
    pub fn send(&self, method: &str, path: &str, body: Option<&[u8]>) -> Answer {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            builder = builder.header("Authorization", format!("Bearer {key}"));
        }
        let result = match body {
            Some(b) => self.agent.run(builder.body(b.to_vec()).expect("request")),
            None => self.agent.run(builder.body(()).expect("request")),
        };
        answer(result.unwrap_or_else(|e| panic!("{method} {path}: {e}")))
    }

    /// `POST path` with a chunked body read from `body`.
    pub fn post_chunked(&self, path: &str, body: Vec<u8>) -> Answer {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        let body = ureq::SendBody::from_owned_reader(std::io::Cursor::new(body));
        answer(req.send(body).expect("chunked POST"))
    }
}

/// Reads a ureq response into an [`Answer`]; `Err` if its body cannot be
/// read (cut short, not UTF-8, over 64 MiB).
pub fn read_answer(mut resp: ureq::http::Response<ureq::Body>) -> Result<Answer, ureq::Error> {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn answer(resp: ureq::http::Response<ureq::Body>) -> Answer {
    let status = resp.status().as_u16();
    read_answer(resp).unwrap_or_else(|e| Answer {
        status,
        headers: Vec::new(),
        body: format!("<unreadable body: {e}>"),
    })
}

/// Sends raw bytes, half-closes, and reads the answer up to EOF (or
/// `timeout`); `None` if nothing came back.
pub fn raw(addr: SocketAddr, request: &[u8], timeout: Duration) -> Option<Answer> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s.set_write_timeout(Some(timeout)).expect("timeout");
    // The server may stop reading early (and answer 413): that is fine.
    let _ = s.write_all(request);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    parse_raw(&bytes)
}

/// Parses the first final (non-1xx) HTTP answer in `bytes`.
pub fn parse_raw(bytes: &[u8]) -> Option<Answer> {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    while text.starts_with("HTTP/1.1 1") {
        let (_, rest) = text.split_once("\r\n\r\n")?;
        text = rest.to_owned();
    }
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(rest.len())
        .min(rest.len());
    Some(Answer {
        status,
        headers,
        body: rest[..len].to_owned(),
    })
}

/// A raw `METHOD path` request with `Connection: close`, the key (if any),
/// extra header lines and a body with its Content-Length.
pub fn raw_request(
    method: &str,
    path: &str,
    key: Option<&str>,
    extra: &[String],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(key) = key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The server started in-process on an ephemeral loopback port.
pub struct InProcess {
    /// The running server (shut down on drop).
    pub server: Server,
    /// A client with the first key (or none).
    pub client: Client,
}

impl InProcess {
    /// Serves `env`'s database with `keys` and `threads` workers.
    pub fn start(env: &Env, keys: &[&str], threads: usize) -> InProcess {
        let options = ServerOptions {
            threads,
            keys: ApiKeys::new(keys.iter().copied()),
            ..ServerOptions::default()
        };
        let server =
            Server::start(Arc::new(env.warden()), "127.0.0.1:0", options).expect("start server");
        let client = Client::new(server.addr(), keys.first().copied());
        InProcess { server, client }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `tokenwarden serve` as a child process.
pub struct Served {
    /// The child (killed on drop if still running).
    pub child: Child,
}

impl Served {
    /// Spawns `cmd` (already holding `serve` and its flags, listening on
    /// `addr`) and waits until `/healthz` answers.
    pub fn spawn(mut cmd: Command, addr: SocketAddr) -> Served {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tokenwarden serve");
        let mut served = Served { child };
        let client = Client::new(addr, None);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = served.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = served.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("serve exited early ({status}): {err}");
            }
            if TcpStream::connect(addr).is_ok() && client.get("/healthz").status == 200 {
                return served;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "serve did not come up on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(mut self) -> (Option<i32>, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let status = self.child.wait().expect("wait serve");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.code(), err)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
