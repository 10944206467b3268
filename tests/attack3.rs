//! A third hostile review, of the store behind `Backend`, the typed errors,
//! the injectable clock and issue 13 (pagination, streaming import,
//! `Warden::import_batch` → `Backend::insert_many`). Each test marked HOLE
//! FAILS on the tree it was written against (7e6414a); those marked HELD
//! are attacks that did not break anything, kept as guards.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use tokenwarden::admin::PageQuery;
use tokenwarden::credential::{NewCredential, ProviderConfig};
use tokenwarden::http::{ApiKeys, Server, ServerOptions};
use tokenwarden::provider::ProviderKind;
use tokenwarden::{Config, Error, Secret, Warden};

use crate::common::http::Client;
use crate::common::tw::{code, json as out_json, text, Env, BIN};

/// A Codex credential `id` holding refresh token `rt`, its access token
/// good for an hour.
fn cred(id: &str, rt: &str) -> NewCredential {
    NewCredential {
        id: id.into(),
        provider: ProviderConfig::new(ProviderKind::Codex),
        refresh_token: Secret::new(rt),
        access_token: Some(Secret::new(format!("at-{id}"))),
        id_token: None,
        expires_at_ms: Some(tokenwarden::clock::now_ms() + 3_600_000),
        claims: Default::default(),
        last_refresh_ms: None,
        api_key: None,
    }
}

/// `n` credentials `c00000`… imported through the batch path.
fn fill(w: &Warden, n: usize) {
    let creds: Vec<NewCredential> = (0..n)
        .map(|i| cred(&format!("c{i:05}"), &format!("rt-c{i:05}")))
        .collect();
    for chunk in creds.chunks(1000) {
        for r in w.import_batch(chunk, false, Duration::ZERO).unwrap() {
            r.unwrap();
        }
    }
}

/// The ids in the database, in order.
fn ids(w: &Warden) -> Vec<String> {
    w.list_without_secrets()
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// A server on `w`, no key, `threads` workers.
fn serve(w: Arc<Warden>, threads: usize) -> (Server, Client) {
    let options = ServerOptions {
        threads,
        keys: ApiKeys::default(),
        ..ServerOptions::default()
    };
    let server = Server::start(w, "127.0.0.1:0", options).expect("start server");
    let client = Client::new(server.addr(), None);
    (server, client)
}

// ---------------------------------------------------------------------------
// Pagination
// ---------------------------------------------------------------------------

/// HOLE. Ids may contain `+` (DESIGN §7). `GET /v1/credentials` hands back
/// the last id of a page as `next`, "the `after` of the next page", and a
/// client passes it back as `?after=NEXT`. The server percent-decodes
/// `after` the form way, `+` as a space (`Query::text` → `form_unescape`),
/// while every other query value is "used as sent" (`?id=a+b` imports the
/// id `a+b`). So a cursor `a+1` comes back as `a 1`, which sorts before
/// `a+1`: the next page starts again at `a+1`. A client that follows
/// `next` as documented pages the same page forever.
#[test]
fn a_cursor_with_a_plus_sign_repeats_its_page_forever() {
    let env = Env::new();
    let w = Arc::new(env.warden());
    w.import(
        &[
            cred("a+1", "rt-1"),
            cred("a+2", "rt-2"),
            cred("a+3", "rt-3"),
        ],
        false,
    )
    .unwrap();
    let (_server, client) = serve(w, 2);
    let mut seen: Vec<String> = Vec::new();
    let mut path = "/v1/credentials?limit=1".to_owned();
    for _ in 0..6 {
        let page = client.get(&path).expect(200).json();
        for c in page["credentials"].as_array().unwrap() {
            seen.push(c["id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            // As the answer gives it: `+` is a legal query character.
            Some(next) => path = format!("/v1/credentials?limit=1&after={next}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["a+1", "a+2", "a+3"],
        "following `next` as given must visit every credential once"
    );
}

/// HOLE. `list --limit 0` prints an empty table (or `{"credentials":[]}`
/// with no `next`) and exits 0 on a database that holds credentials: a
/// script paging with it reads "no credentials, last page". HTTP refuses
/// `limit=0` with 400; the CLI should refuse it too (exit 2, usage).
#[test]
fn list_limit_zero_says_there_is_nothing_and_exits_0() {
    let env = Env::new();
    env.warden()
        .import(&[cred("x1", "rt-x1"), cred("x2", "rt-x2")], false)
        .unwrap();
    let out = env.run(&["list", "--limit", "0", "--json"]);
    let said = text(&out.stdout);
    let empty_last_page = code(&out) == 0
        && out_json(&out)["credentials"]
            .as_array()
            .is_some_and(Vec::is_empty)
        && out_json(&out).get("next").is_none();
    assert!(
        !empty_last_page,
        "`list --limit 0 --json` on 2 credentials answered an empty last page, exit 0: {said}"
    );
    assert_eq!(code(&out), 2, "a limit of 0 is a usage error: {said}");
}

/// HOLE. `Warden::each_summary_page` reads the page through a cursor on one
/// pooled connection (`Backend::scan`) and, inside it, each row's newest
/// quota through a second one (`latest_quota`). With as many listings at
/// once as the store has connections (the pool size, 8 by default, is also
/// `serve`'s default thread count), each holds one connection and waits for
/// another that never comes: every listing fails after the busy timeout
/// ("no database connection", HTTP 500), and meanwhile every other read of
/// the process — a `token` call not served from memory, the refresher's
/// re-read before its commit — waits for a connection too.
#[test]
fn concurrent_listings_deadlock_the_connection_pool() {
    let env = Env::new();
    let config = Config {
        busy_timeout: Duration::from_secs(2),
        ..env.config()
    };
    let pool = config.pool_size as usize;
    let w = Arc::new(Warden::open(&env.db, config).unwrap());
    fill(&w, 3000);
    let (_server, client) = serve(w.clone(), pool);
    let statuses: Vec<u16> = (0..2)
        .flat_map(|_| {
            let start = Arc::new(Barrier::new(pool));
            let clients: Vec<_> = (0..pool)
                .map(|_| {
                    let (client, start) = (client.clone(), start.clone());
                    thread::spawn(move || {
                        start.wait();
                        client.get("/v1/credentials?limit=10000").status
                    })
                })
                .collect();
            clients
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} listings of {pool} at once failed: {statuses:?}",
        statuses.len()
    );
}

/// HOLE (library). The same, deterministic: with a pool of 2, a listing whose
/// consumer is slow (the CLI's writes to a pipe, an embedder streaming to a
/// socket) holds one connection, and a second listing then cannot get the
/// two it needs: it fails with "no database connection" although nothing
/// but reads is going on.
#[test]
fn a_slow_listing_makes_a_second_listing_fail() {
    let env = Env::new();
    let config = Config {
        busy_timeout: Duration::from_secs(1),
        pool_size: 2,
        ..env.config()
    };
    let w = Arc::new(Warden::open(&env.db, config).unwrap());
    fill(&w, 10);
    let (inside_tx, inside_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let slow = {
        let w = w.clone();
        thread::spawn(move || {
            let mut first = true;
            w.each_summary_page(&PageQuery::default(), |_| {
                if std::mem::take(&mut first) {
                    inside_tx.send(()).unwrap();
                    let _ = done_rx.recv_timeout(Duration::from_secs(10));
                }
            })
        })
    };
    inside_rx.recv().unwrap();
    let mut n = 0;
    let second = w.each_summary_page(&PageQuery::default(), |_| n += 1);
    done_tx.send(()).unwrap();
    slow.join().unwrap().unwrap();
    assert!(
        second.is_ok(),
        "a second listing during a slow one failed: {:?}",
        second.err().map(|e| e.to_string())
    );
    assert_eq!(n, 10);
}

/// HOLE (the promise). The pool starvation above reaches the refresher: the
/// lease owner re-reads its row before it commits (`try_commit` →
/// `get_without_secrets`, a pooled read), so while listings hold every
/// connection the rotated tokens sit in memory, waiting for a connection
/// for up to the busy timeout. If that is longer than what is left of the
/// lease, another process takes the lease over and sends the refresh token
/// upstream already rotated: `refresh_token_reused`, the login is burnt.
/// Here: pool of 2, one listing with a slow consumer and one ordinary
/// listing (which then waits for a third connection), a 3.5 s lease, an
/// 8 s busy timeout, and a `tokenwarden token` from another process after
/// the lease ran out. (With the defaults — pool 8, `serve --threads 8`,
/// busy timeout 10 s, lease 60 s — eight listings at once hold the pool
/// for 10 s per wave, as `concurrent_listings_deadlock_the_connection_pool`
/// shows; a lease shorter than the starvation, or waves kept up, burn the
/// login the same way.)
#[test]
fn listings_starve_the_owners_commit_until_another_process_reuses_the_token() {
    let env = Env::new();
    let _grant = env.login("burn", 60);
    let config = Config {
        busy_timeout: Duration::from_secs(8),
        pool_size: 2,
        ..env.config()
    };
    let w = Arc::new(Warden::open(&env.db, config).unwrap());
    fill(&w, 5);
    env.fake.set_latency(Duration::from_millis(1500));
    let owner = {
        let w = w.clone();
        thread::spawn(move || w.refresh("burn", false).map(|g| g.version))
    };
    let until = Instant::now() + Duration::from_secs(5);
    while env.fake.token_requests().is_empty() {
        assert!(Instant::now() < until, "the refresh never reached upstream");
        thread::sleep(Duration::from_millis(2));
    }
    let claimed = Instant::now();
    // A listing whose consumer is slow: it holds one connection.
    let (inside_tx, inside_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let slow = {
        let w = w.clone();
        thread::spawn(move || {
            let mut first = true;
            w.each_summary_page(&PageQuery::default(), |_| {
                if std::mem::take(&mut first) {
                    inside_tx.send(()).unwrap();
                    let _ = done_rx.recv_timeout(Duration::from_secs(20));
                }
            })
        })
    };
    inside_rx.recv().unwrap();
    // An ordinary listing: it takes the other connection for its cursor and
    // waits for a third to read a quota snapshot.
    let lister = {
        let w = w.clone();
        thread::spawn(move || w.each_summary_page(&PageQuery::default(), |_| {}))
    };
    // Upstream answers at 1.5 s; the owner's commit waits for a connection.
    // The 3.5 s lease runs out; another process needs a token.
    thread::sleep(Duration::from_millis(4200).saturating_sub(claimed.elapsed()));
    let other = env.run(&["token", "burn", "--json"]);
    let _ = done_tx.send(());
    let _ = slow.join().unwrap();
    let _ = lister.join().unwrap();
    let owned = owner.join().unwrap();
    eprintln!(
        "owner: {:?}; other process: exit {} {}",
        owned.as_ref().map_err(Error::to_string),
        code(&other),
        text(&other.stderr)
    );
    env.fake.assert_no_reuse_after_success();
    let row = w.get("burn").unwrap();
    assert_ne!(
        row.status.state,
        tokenwarden::state::State::Dead,
        "the login was burnt: {:?}",
        row.status.dead_reason
    );
}

// ---------------------------------------------------------------------------
// Streaming import: exit codes and memory
// ---------------------------------------------------------------------------

/// One tokenwarden record per line.
fn jsonl(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| {
            json!({"id": id, "provider": "codex", "refresh_token": format!("rt-{id}")}).to_string()
                + "\n"
        })
        .collect()
}

/// HOLE. DESIGN §5: exit 2 is a usage error, and the commit that made import
/// stream says "input that yields nothing importable stays exit 2". But a
/// file cut short (a JSON Lines file whose last line is partial, an array
/// whose `]` never came: a copy interrupted, a disk that filled while the
/// export was written) is read record by record, its complete records are
/// committed, and then the command fails exit 2 "input is not JSON" — the
/// files named after it are never read. A script that takes exit 2 as "the
/// input was refused, nothing happened" fixes the file and imports it
/// again: every record already in is now refused as existing (exit 1).
/// Likewise one bad record among many: the others are committed and the
/// command exits 2 with that record's error. (Before the stream, `import`
/// parsed everything first "so a bad file imports nothing".)
#[test]
fn a_file_cut_short_is_half_imported_and_exits_2() {
    let env = Env::new();
    env.run(&["init"]);
    let dir = env.dir.path();
    let cut = dir.join("cut.jsonl");
    let mut body = jsonl(&["a", "b", "c"]);
    body.push_str(r#"{"id":"d","provider":"codex","refresh_tok"#);
    std::fs::write(&cut, body).unwrap();
    let later = dir.join("later.jsonl");
    std::fs::write(&later, jsonl(&["z"])).unwrap();
    let out = env.run(&["import", cut.to_str().unwrap(), later.to_str().unwrap()]);
    let imported = ids(&env.warden());
    eprintln!(
        "exit {}; imported {imported:?}; stderr: {}",
        code(&out),
        text(&out.stderr)
    );
    assert!(
        !(code(&out) == 2 && !imported.is_empty()),
        "exit 2 (usage: nothing done) but {imported:?} were committed"
    );

    // One bad record among good ones.
    let env = Env::new();
    env.run(&["init"]);
    let mixed = env.dir.path().join("mixed.jsonl");
    let mut body = jsonl(&["m1", "m2"]);
    body.push_str("{\"id\":\"m3\",\"provider\":\"codex\"}\n");
    body.push_str(&jsonl(&["m4"]));
    std::fs::write(&mixed, body).unwrap();
    let out = env.run(&["import", mixed.to_str().unwrap()]);
    let imported = ids(&env.warden());
    assert!(
        !(code(&out) == 2 && !imported.is_empty()),
        "exit 2 (usage: nothing done) but {imported:?} were committed: {}",
        text(&out.stderr)
    );
}

/// HOLE. `stream_import` promises that "memory holds one record, never the
/// file" and that a record over 1 MiB "is refused without being parsed". But
/// the record is first read whole into a `Box<RawValue>` (serde_json buffers
/// every byte of it) and only then measured: a 2 GiB single-object file
/// (one record) takes 2 GiB of memory before it is refused, and a process
/// under a memory limit (a systemd `MemoryMax`, a container, `ulimit -v`)
/// aborts instead of saying "larger than 1 MiB". Here: a 56 MiB record
/// under an 80 MiB address-space limit (the CLI needs about 40 MiB).
#[test]
fn an_oversized_record_is_read_whole_before_it_is_refused() {
    use std::io::Write;
    let env = Env::new();
    env.run(&["init"]);
    // `tokenwarden import -` under an 80 MiB address-space limit.
    let limited = || {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "ulimit -v 81920 && exec \"$@\"",
            "sh",
            BIN,
            "import",
            "-",
        ]);
        for (k, v) in env.cmd().get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.env("MALLOC_ARENA_MAX", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    // The control: a small record imports fine under that limit.
    let mut small = limited().spawn().unwrap();
    let record = jsonl(&["small"]);
    small
        .stdin
        .take()
        .unwrap()
        .write_all(record.as_bytes())
        .unwrap();
    let out = small.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "control: {}", text(&out.stderr));

    let mut child = limited().spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        let _ = stdin.write_all(br#"{"id":"big","provider":"codex","refresh_token":""#);
        for _ in 0..56 {
            if stdin.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = stdin.write_all(b"\"}");
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let err = text(&out.stderr);
    assert!(
        code(&out) == 2 && err.contains("larger than 1 MiB"),
        "a 56 MiB record under an 80 MiB limit: {:?}, stderr: {}",
        out.status,
        err.lines().take(3).collect::<Vec<_>>().join(" | ")
    );
}
