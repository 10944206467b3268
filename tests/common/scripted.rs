//! Hostile-review helpers shared by tests/attack.rs and tests/attack2.rs: a
//! scripted token endpoint (each request answered by the next step of a
//! script, every presented refresh token logged), and small import and
//! lease helpers.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokenwarden::state::State;
use tokenwarden::Warden;

use super::tw::{code, now, text, Env};

/// Writes `value` to a file in the env's directory.
pub fn write(env: &Env, name: &str, value: &Value) -> PathBuf {
    let path = env.dir.path().join(name);
    std::fs::write(&path, value.to_string()).unwrap();
    path
}

/// Waits until `id` is held by a refresh lease.
pub fn wait_for_lease(warden: &Warden, id: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    while warden.store().get(id).unwrap().map(|r| r.status.state) != Some(State::Refreshing) {
        assert!(Instant::now() < until, "the refresh never started");
        thread::sleep(Duration::from_millis(2));
    }
}

/// One step of a [`Scripted`] endpoint: answers one request, given the
/// refresh token it presented.
pub type Step = Box<dyn FnOnce(&str, &mut std::net::TcpStream) + Send>;

/// A scripted token endpoint: each request is answered by the next step,
/// every presented refresh token is logged; past the script, 503.
pub struct Scripted {
    addr: std::net::SocketAddr,
    presented: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl Scripted {
    pub fn start(steps: Vec<Step>) -> Scripted {
        use std::io::{BufRead, BufReader, Read};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let presented = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let log = presented.clone();
        let steps = Arc::new(parking_lot::Mutex::new(std::collections::VecDeque::from(
            steps,
        )));
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let log = log.clone();
                let steps = steps.clone();
                thread::spawn(move || loop {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let text = String::from_utf8_lossy(&body).into_owned();
                    let rt = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["refresh_token"].as_str().map(str::to_owned))
                        .or_else(|| {
                            text.split('&')
                                .find_map(|p| p.strip_prefix("refresh_token=").map(str::to_owned))
                        })
                        .unwrap_or_default();
                    log.lock().push(rt.clone());
                    let step = steps.lock().pop_front();
                    match step {
                        Some(step) => step(&rt, &mut conn),
                        None => {
                            let _ = std::io::Write::write_all(
                                &mut conn,
                                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                            );
                        }
                    }
                });
            }
        });
        Scripted { addr, presented }
    }

    pub fn url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }

    pub fn presented(&self) -> Vec<String> {
        self.presented.lock().clone()
    }
}

pub fn answer(conn: &mut std::net::TcpStream, status: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = std::io::Write::write_all(conn, head.as_bytes());
    let _ = std::io::Write::write_all(conn, body.as_bytes());
}

/// Imports a Codex credential `id` holding `rt`, whose access token
/// expires in `expires_in` s, pointing at `url`.
pub fn import_at(env: &Env, id: &str, rt: &str, expires_in: i64, url: &str) {
    let record = serde_json::json!({
        "id": id,
        "provider": "codex",
        "refresh_token": rt,
        "access_token": format!("at-{id}-0"),
        "expires_at": now() + expires_in,
        "token_url": url,
    });
    let path = write(env, &format!("{id}.json"), &record);
    let out = env.run(&["import", path.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
}
