//! A plain threaded service embedding tokenwarden: worker threads each take
//! a token for one credential, call an upstream API with it, and report a
//! 401 back so that the rejected token is never handed out again.
//!
//! ```sh
//! tokenwarden import ~/.codex/auth.json --id me
//! cargo run --example embed -- tokenwarden.db me 4
//! ```
//!
//! The upstream call here is a stand-in (`call_upstream`) that answers 401
//! now and then; a real service sends the token as `Authorization: Bearer`.
//! `Warden` is `Send + Sync`: one handle serves every thread, and other
//! processes on the same database (the CLI, cron's `sweep`, `serve`) share
//! its single-flight refreshes.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokenwarden::{Config, Error, Warden};

/// What an upstream API said.
enum Answer {
    Ok,
    Unauthorized,
}

/// Stands in for an HTTP call with `token` as its Bearer token.
fn call_upstream(request: u32, _token: &str) -> Answer {
    if request % 7 == 3 {
        Answer::Unauthorized
    } else {
        Answer::Ok
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (db, id) = match (args.get(1), args.get(2)) {
        (Some(db), Some(id)) => (db.clone(), id.clone()),
        _ => {
            eprintln!("usage: embed DB CREDENTIAL_ID [THREADS]");
            std::process::exit(2);
        }
    };
    let threads: u32 = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(4);
    let warden = match Config::from_env().and_then(|c| Warden::open(&db, c)) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            eprintln!("embed: {e}");
            std::process::exit(e.exit_code());
        }
    };
    let workers: Vec<_> = (0..threads)
        .map(|n| {
            let (warden, id) = (warden.clone(), id.clone());
            thread::spawn(move || worker(&warden, &id, n))
        })
        .collect();
    let mut failed = false;
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("embed: {e}");
                failed = true;
            }
            Err(_) => failed = true,
        }
    }
    std::process::exit(i32::from(failed));
}

/// Ten requests, each with a token good for at least a minute.
fn worker(warden: &Warden, id: &str, n: u32) -> Result<(), Error> {
    for request in 0..10 {
        let grant = warden.token(id, Duration::from_secs(60))?;
        match call_upstream(n * 10 + request, grant.access_token.expose()) {
            Answer::Ok => {}
            // The API refused this token: say so, and carry on with the
            // fresh one (a refresh happens once, however many threads and
            // processes report the same token).
            Answer::Unauthorized => {
                let fresh = warden.reject(id, grant.access_token.expose())?;
                println!("worker {n}: 401 reported; now on version {}", fresh.version);
            }
        }
    }
    Ok(())
}
