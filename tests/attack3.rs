//! A third hostile review, of the store behind `Backend`, the typed errors,
//! the injectable clock and issue 13 (pagination, streaming import,
//! `Warden::import_batch` → `Backend::insert_many`). Each test marked HOLE
//! FAILS on the tree it was written against (7e6414a); those marked HELD
//! are attacks that did not break anything, kept as guards.

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

/// A listing whose consumer stalls on its first row (for at most `hold`,
/// or until the sender is used or dropped); returns once it is stalled.
fn slow_listing(
    w: &Arc<Warden>,
    hold: Duration,
) -> (
    thread::JoinHandle<tokenwarden::Result<Option<String>>>,
    std::sync::mpsc::Sender<()>,
) {
    let (inside_tx, inside_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let w = w.clone();
    let slow = thread::spawn(move || {
        let mut first = true;
        w.each_summary_page(&PageQuery::default(), |_| {
            if std::mem::take(&mut first) {
                inside_tx.send(()).unwrap();
                let _ = done_rx.recv_timeout(hold);
            }
        })
    });
    inside_rx.recv().unwrap();
    (slow, done_tx)
}

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
    let statuses: Vec<u16> = (0..3)
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
    let (slow, done_tx) = slow_listing(&w, Duration::from_secs(10));
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
    let (slow, done_tx) = slow_listing(&w, Duration::from_secs(20));
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
        code(&out) != 2 || imported.is_empty(),
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
        code(&out) != 2 || imported.is_empty(),
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

// ---------------------------------------------------------------------------
// Batch import: refusals per record, atomicity, concurrency (HELD guards)
// ---------------------------------------------------------------------------

/// HELD: one batch (one transaction, a savepoint per record) holding the same
/// new refresh token under two ids, a token spent by a rotation, a token
/// another id holds, and good records between them. The first holder of the
/// new token gets it, each other one is refused with its own reason, no
/// refusal undoes another record's write, a refused record writes no event,
/// nothing quotes a token, and the exit code is 1 (some imported, some
/// refused).
#[test]
fn held_a_batch_refuses_each_bad_record_alone_and_quotes_no_token() {
    let env = Env::new();
    let g = env.login("old", 60);
    let w = env.warden();
    w.refresh("old", false).unwrap();
    let current = env.fake.family_state("old").current_refresh_token;
    assert_ne!(current, g.refresh_token);
    let rec = |id: &str, rt: &str| {
        json!({"id": id, "provider": "codex", "refresh_token": rt,
               "token_url": env.fake.token_url()})
        .to_string()
            + "\n"
    };
    let fresh = "rt-fresh-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
    let body = [
        rec("n1", fresh),
        rec("n2", fresh),
        rec("n3", &g.refresh_token),
        rec("n4", &current),
        rec("n5", "rt-fresh-5-AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
    ]
    .concat();
    let file = env.dir.path().join("batch.jsonl");
    std::fs::write(&file, body).unwrap();
    let out = env.run(&["import", file.to_str().unwrap()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(code(&out), 1, "{stdout}{stderr}");
    assert_eq!(ids(&w), ["n1", "n5", "old"], "{stderr}");
    assert_eq!(w.get("n1").unwrap().refresh_token.expose(), fresh);
    for secret in [fresh, g.refresh_token.as_str(), current.as_str()] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a token was quoted: {stdout}{stderr}"
        );
    }
    assert!(stderr.contains("n2") && stderr.contains("n1"), "{stderr}");
    assert!(
        stderr.contains("n3") && stderr.contains("spent"),
        "{stderr}"
    );
    assert!(stderr.contains("n4") && stderr.contains("old"), "{stderr}");
    for id in ["n2", "n3", "n4"] {
        assert!(
            matches!(w.events(id, None), Err(Error::NotFound(_))),
            "refused {id} left events"
        );
    }
    for id in ["n1", "n5"] {
        assert_eq!(w.events(id, None).unwrap().len(), 1);
    }
    // Nothing was sent upstream by the import.
    assert_eq!(env.fake.token_requests().len(), 1);
}

/// HELD: `Backend::insert_many` through the store door directly — a refusal
/// rolls back only its own savepoint, every refusal kind is returned in
/// place, and a later batch after refusals still commits.
#[test]
fn held_insert_many_rolls_back_only_the_refused_record() {
    let env = Env::new();
    let w = env.warden();
    w.import(&[cred("held", "rt-held")], false).unwrap();
    let store = w.store();
    let batch = [
        cred("b1", "rt-b1"),
        cred("held", "rt-other"),
        cred("b2", "rt-held"),
        cred("b3", "rt-b1"),
        cred("b4", "rt-b4"),
    ];
    let results = store
        .insert_many(
            &batch.iter().collect::<Vec<_>>(),
            false,
            "t",
            tokenwarden::clock::now_ms(),
        )
        .unwrap();
    let kinds: Vec<&str> = results
        .iter()
        .map(|r| match r {
            Ok(_) => "ok",
            Err(Error::Exists(_)) => "exists",
            Err(Error::TokenHeldElsewhere { .. }) => "held",
            Err(Error::SpentToken { .. }) => "spent",
            Err(_) => "other",
        })
        .collect();
    assert_eq!(kinds, ["ok", "exists", "held", "held", "ok"]);
    assert_eq!(ids(&w), ["b1", "b4", "held"]);
    assert_eq!(w.get("held").unwrap().refresh_token.expose(), "rt-held");
    let again = store
        .insert_many(
            &[&cred("b5", "rt-b5")],
            false,
            "t",
            tokenwarden::clock::now_ms(),
        )
        .unwrap();
    assert!(again[0].is_ok());
}

/// HELD: `import` SIGKILLed at several points of a 5,000-record file leaves
/// whole batches only (one transaction per 2,000 records): every stored
/// credential has exactly its one `imported` event, no event names a
/// credential that is not stored, and importing the file again completes
/// it without a second event for anyone.
#[test]
fn held_import_killed_mid_batch_leaves_whole_batches() {
    let env = Env::new();
    env.run(&["init"]);
    let file = env.dir.path().join("k.jsonl");
    let names: Vec<String> = (0..5000).map(|i| format!("k{i:05}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    std::fs::write(&file, jsonl(&refs)).unwrap();
    let check = |when: &str| -> i64 {
        let c = rusqlite::Connection::open(&env.db).unwrap();
        let rows: i64 = c
            .query_row("SELECT count(*) FROM credentials", [], |r| r.get(0))
            .unwrap();
        let events: i64 = c
            .query_row(
                "SELECT count(*) FROM events WHERE reason = 'imported'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let orphans: i64 = c
            .query_row(
                "SELECT count(*) FROM events WHERE credential_id NOT IN \
                 (SELECT id FROM credentials)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            rows % 2000 == 0 || rows == 5000,
            "{when}: {rows} rows is not whole batches"
        );
        assert_eq!(
            events, rows,
            "{when}: {events} import events for {rows} rows"
        );
        assert_eq!(orphans, 0, "{when}: events of credentials never stored");
        rows
    };
    let mut killed_mid = 0;
    for delay_ms in [120, 350, 600, 900] {
        let mut child = env
            .cmd()
            .args(["import", file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(delay_ms));
        let running = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        let rows = check(&format!("killed after {delay_ms} ms"));
        killed_mid += usize::from(running && rows < 5000);
    }
    let out = env.run(&["import", file.to_str().unwrap()]);
    assert!(matches!(code(&out), 0 | 1), "{}", text(&out.stderr));
    assert_eq!(check("after the last import"), 5000);
    eprintln!("{killed_mid} kills landed mid-import");
}

/// HELD: `import --replace` of a 2,000-record file, holding the six live
/// credentials' current tokens (or older, spent ones), run three times while
/// two library threads on another handle refresh those six back to back.
/// Each replace waits out the live lease and lands by CAS or is refused as
/// spent: no token is sent twice, no refresh runs beside another, none dies,
/// and every row ends holding the refresh token upstream accepts now.
#[test]
fn held_import_replace_of_a_big_file_during_refreshes_never_resends_a_token() {
    let env = Env::new();
    let live: Vec<String> = (0..6).map(|i| format!("live{i}")).collect();
    for id in &live {
        env.login(id, 3600);
    }
    env.fake.set_latency(Duration::from_millis(60));
    let w = Arc::new(env.warden());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refreshers: Vec<_> = (0..2)
        .map(|t| {
            let (w, stop, live) = (w.clone(), stop.clone(), live.clone());
            thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let id = &live[(n + t) % live.len()];
                    w.refresh(id, false).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut refused = 0;
    for round in 0..3 {
        thread::sleep(Duration::from_millis(300));
        let mut body = String::new();
        for id in &live {
            let row = w.get(id).unwrap();
            let rt = match round {
                // A stale copy: the first token of the family, long spent.
                1 => env.fake.family_state(id).issued_refresh_tokens[0].clone(),
                _ => row.refresh_token.expose().to_owned(),
            };
            body.push_str(
                &(json!({"id": id, "provider": "codex", "refresh_token": rt,
                         "token_url": env.fake.token_url()})
                .to_string()
                    + "\n"),
            );
        }
        for i in 0..2000 {
            let id = format!("r{round}-{i:04}");
            body.push_str(&jsonl(&[&id]));
        }
        let file = env.dir.path().join(format!("big{round}.jsonl"));
        std::fs::write(&file, body).unwrap();
        let out = env.run(&["import", "--replace", file.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert!(matches!(code(&out), 0 | 1), "{err}");
        refused += err.lines().filter(|l| l.contains("spent")).count();
        if round == 1 {
            assert!(
                live.iter().all(|id| err.contains(id.as_str())),
                "every stale copy is refused: {err}"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let done: usize = refreshers.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!("{done} refreshes, {refused} replaces refused as spent");
    env.fake.assert_no_reuse_after_success();
    env.fake.assert_single_flight();
    for id in &live {
        let row = w.get(id).unwrap();
        assert_ne!(row.status.state, tokenwarden::state::State::Dead, "{id}");
        assert_eq!(
            row.refresh_token.expose(),
            env.fake.family_state(id).current_refresh_token,
            "{id} holds a token upstream no longer accepts"
        );
    }
}

// ---------------------------------------------------------------------------
// Hostile HTTP on the paginated routes (HELD guards)
// ---------------------------------------------------------------------------

/// HELD: hostile `limit`/`after`/`state`/`provider` values on `GET
/// /v1/credentials` and `…/events`, sent as raw request lines (odd bytes,
/// bad percent-escapes, huge numbers, repeated names): each is a 400 or a
/// page, never a 500, a hang or a crash; an answer never echoes more than a
/// short excerpt of the value; and a foreign `Host` or `Origin` is refused
/// before any of it is read.
#[test]
fn held_hostile_pagination_parameters_are_400_or_a_page() {
    use crate::common::http::{raw, raw_request};
    let env = Env::new();
    let w = Arc::new(env.warden());
    fill(&w, 5);
    let options = ServerOptions {
        threads: 2,
        keys: ApiKeys::new(["k"]),
        ..ServerOptions::default()
    };
    let server = Server::start(w.clone(), "127.0.0.1:0", options).unwrap();
    let long = "A".repeat(6000);
    let cases: Vec<(String, &[u16])> = vec![
        ("?limit=0".into(), &[400]),
        ("?limit=-1".into(), &[400]),
        ("?limit=10001".into(), &[400]),
        ("?limit=4294967296".into(), &[400]),
        ("?limit=18446744073709551617".into(), &[400]),
        ("?limit=1e3".into(), &[400]),
        ("?limit=".into(), &[400]),
        ("?limit=1&limit=2".into(), &[400]),
        ("?limit=%31".into(), &[400]),
        ("?after=%00".into(), &[200]),
        ("?after=%FF%FE".into(), &[200]),
        ("?after=%ZZ%".into(), &[200]),
        ("?after=%2e%2e%2f".into(), &[200]),
        (format!("?after={long}"), &[200, 400, 413, 414, 431]),
        ("?after=c00001&after=c00002".into(), &[400]),
        ("?state=VALID".into(), &[400]),
        ("?state=valid%00".into(), &[400]),
        ("?state=".into(), &[400]),
        (format!("?state={long}"), &[400, 413, 414, 431]),
        ("?provider=codex%20".into(), &[400]),
        ("?provider=".into(), &[400]),
        // Issue 15 made `pool` a filter (DESIGN §7): a pool name is
        // checked like an id, never decoded.
        ("?pool=x".into(), &[200]),
        ("?pool=".into(), &[400]),
        ("?pool=a%2fb".into(), &[400]),
        ("?pool=..".into(), &[400]),
        (
            "?limit=2&after=c00001&state=valid&provider=codex".into(),
            &[200],
        ),
    ];
    for (query, ok) in &cases {
        let req = raw_request(
            "GET",
            &format!("/v1/credentials{query}"),
            Some("k"),
            &[],
            b"",
        );
        let a = raw(server.addr(), &req, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{query:.80}: no answer"));
        assert!(
            ok.contains(&a.status),
            "{query:.80}: {} {}",
            a.status,
            a.body
        );
        assert!(
            a.body.len() < 4000,
            "{query:.80}: echoed {} bytes",
            a.body.len()
        );
    }
    let ev = [
        ("?after=-1", &[400][..]),
        ("?after=abc", &[400]),
        // A sequence number is an i64 (it was parsed as u32 when this
        // guard was written; the review listed that among its findings).
        ("?after=4294967296", &[200]),
        ("?after=9223372036854775808", &[400]),
        ("?limit=0&after=0", &[400]),
        ("?after=0&limit=1", &[200]),
        ("?after=9223372036854775807", &[200]),
    ];
    for (query, ok) in ev {
        let req = raw_request(
            "GET",
            &format!("/v1/credentials/c00001/events{query}"),
            Some("k"),
            &[],
            b"",
        );
        let a = raw(server.addr(), &req, Duration::from_secs(10)).unwrap();
        assert!(
            ok.contains(&a.status),
            "events{query}: {} {}",
            a.status,
            a.body
        );
    }
    // Non-UTF-8 bytes in the request line.
    let mut req = b"GET /v1/credentials?after=\xff\xfe&limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k\r\nConnection: close\r\n\r\n".to_vec();
    let a = raw(server.addr(), &req, Duration::from_secs(10));
    assert!(a.as_ref().is_none_or(|a| a.status != 500), "{a:?}");
    // Foreign Host (no key configured) and a foreign Origin (key or not).
    let open = serve(w.clone(), 2).0;
    req = raw_request("GET", "/v1/credentials?limit=1&after=%00", None, &[], b"");
    let a = raw(open.addr(), &req, Duration::from_secs(10)).unwrap();
    assert_eq!(a.status, 403, "{}", a.body);
    let origin = ["Origin: http://evil.example".to_owned()];
    req = raw_request("GET", "/v1/credentials?limit=1", Some("k"), &origin, b"");
    let a = raw(server.addr(), &req, Duration::from_secs(10)).unwrap();
    assert_eq!(a.status, 403, "{}", a.body);
    // The server still answers.
    Client::new(server.addr(), Some("k"))
        .get("/v1/credentials?limit=1")
        .expect(200);
}

// ---------------------------------------------------------------------------
// Clocks (HELD guard)
// ---------------------------------------------------------------------------

/// HELD: `import --replace` of a new login, from a process whose wall clock
/// alone is 60 s ahead, while this process's refresh of that credential is
/// in flight: the replace's wait (now on the refresher's clock) judges the
/// lease on the lease clock, waits for the owner's commit and only then
/// lands. The rotation is committed first, nothing is sent twice, and the
/// row ends holding the new login.
#[test]
fn held_a_replace_from_a_process_with_a_stepped_clock_waits_for_the_lease() {
    const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    if !std::path::Path::new(LIBFAKETIME).exists() {
        assert!(std::env::var_os("CI").is_none(), "CI must install faketime");
        eprintln!("skipped: {LIBFAKETIME} not installed");
        return;
    }
    let env = Env::new();
    env.login("clk", 60);
    let relogin = env.fake.new_family("clk-relogin");
    let file = env.dir.path().join("relogin.json");
    std::fs::write(
        &file,
        relogin
            .import_json("clk", "codex", &env.fake.token_url())
            .to_string(),
    )
    .unwrap();
    env.fake.set_latency(Duration::from_millis(1500));
    let w = Arc::new(env.warden());
    let owner = {
        let w = w.clone();
        thread::spawn(move || w.refresh("clk", false).map(|g| g.version))
    };
    crate::common::scripted::wait_for_lease(&w, "clk");
    let out = env
        .cmd()
        .args(["import", "--replace", file.to_str().unwrap()])
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME", "+60s")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("FAKETIME_DONT_RESET", "1")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let owned = owner.join().unwrap();
    assert!(owned.is_ok(), "{owned:?}");
    env.fake.assert_no_reuse_after_success();
    env.fake.assert_single_flight();
    let old = env.fake.family_state("clk");
    assert_eq!(old.rotations, 1, "the owner's rotation happened once");
    let reasons: Vec<String> = w
        .events("clk", None)
        .unwrap()
        .into_iter()
        .map(|e| e.reason)
        .collect();
    let refreshed = reasons.iter().rposition(|r| r.contains("refresh"));
    let replaced = reasons.iter().rposition(|r| r == "re-imported");
    assert!(
        matches!((refreshed, replaced), (Some(a), Some(b)) if a < b),
        "the rotation must be committed before the replace: {reasons:?}"
    );
    assert_eq!(
        w.get("clk").unwrap().refresh_token.expose(),
        relogin.refresh_token
    );
}

/// HOLE (HTTP import of an array, not new in this diff but left behind by
/// it). `POST /v1/credentials` with an array still goes through
/// `import_within`, which stops at the first refusal: the records before it
/// are committed, the ones after it are never tried, and the answer is the
/// refusal alone (409) — the client is told its import failed and is not
/// told that some of it landed. The CLI now refuses each record on its own
/// and says which were imported; the route should answer per record too
/// (or commit nothing).
#[test]
fn an_http_array_import_answers_409_after_committing_part_of_it() {
    let env = Env::new();
    let w = Arc::new(env.warden());
    w.import(&[cred("holder", "rt-held")], false).unwrap();
    let (_server, client) = serve(w.clone(), 2);
    let body = json!([
        {"id": "h1", "provider": "codex", "refresh_token": "rt-h1"},
        {"id": "h2", "provider": "codex", "refresh_token": "rt-held"},
        {"id": "h3", "provider": "codex", "refresh_token": "rt-h3"},
    ]);
    let a = client.post("/v1/credentials", &body.to_string());
    let stored = ids(&w);
    assert!(
        !(a.status >= 400 && stored.contains(&"h1".to_owned())),
        "answered {} {} but committed {stored:?}",
        a.status,
        a.body
    );
}

/// HOLE (minor). Within one file a repeated id is refused ("appears more
/// than once in the input"), but the id set starts afresh with each file of
/// one `import` command. With `--replace`, `import --replace new.json
/// old.json` holding one account twice (a fresh login and an older copy
/// whose token another tool already rotated — tokenwarden cannot know)
/// replaces the fresh login with the older file within the same command:
/// the fresh refresh token is recorded as spent ("replaced") and can never
/// be imported again, though it was never sent anywhere.
#[test]
fn one_id_in_two_files_of_one_import_replaces_itself() {
    let env = Env::new();
    env.run(&["init"]);
    let dir = env.dir.path();
    let fresh = dir.join("fresh.json");
    let older = dir.join("older.json");
    std::fs::write(&fresh, jsonl(&["dup"]).replace("rt-dup", "rt-dup-fresh")).unwrap();
    std::fs::write(&older, jsonl(&["dup"]).replace("rt-dup", "rt-dup-older")).unwrap();
    let out = env.run(&[
        "import",
        "--replace",
        fresh.to_str().unwrap(),
        older.to_str().unwrap(),
    ]);
    let row = env.warden().get("dup").unwrap();
    assert_eq!(
        row.refresh_token.expose(),
        "rt-dup-fresh",
        "one command imported id 'dup' twice and kept the second (exit {}): {}{}",
        code(&out),
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// HELD: two processes import the same 3,000 ids at once, each with its own
/// tokens. Each id is imported once (one event), holds one of the two
/// tokens, and no refresh token ends under two ids.
#[test]
fn held_two_processes_importing_the_same_ids_at_once() {
    let env = Env::new();
    env.run(&["init"]);
    let names: Vec<String> = (0..3000).map(|i| format!("p{i:05}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let a = env.dir.path().join("a.jsonl");
    let b = env.dir.path().join("b.jsonl");
    std::fs::write(&a, jsonl(&refs).replace("\"rt-", "\"rtA-")).unwrap();
    std::fs::write(&b, jsonl(&refs).replace("\"rt-", "\"rtB-")).unwrap();
    let spawn = |f: &std::path::Path| {
        env.cmd()
            .args(["import", f.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (spawn(&a), spawn(&b));
    let (oa, ob) = (
        pa.wait_with_output().unwrap(),
        pb.wait_with_output().unwrap(),
    );
    for o in [&oa, &ob] {
        assert!(matches!(code(o), 0 | 1), "{}", text(&o.stderr));
    }
    let c = rusqlite::Connection::open(&env.db).unwrap();
    let q = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(q("SELECT count(*) FROM credentials"), 3000);
    assert_eq!(
        q("SELECT count(*) FROM events WHERE reason = 'imported'"),
        3000
    );
    assert_eq!(
        q("SELECT count(DISTINCT refresh_fp) FROM credentials WHERE refresh_fp IS NOT NULL"),
        3000
    );
    let w = env.warden();
    for id in ["p00000", "p01500", "p02999"] {
        let rt = w.get(id).unwrap().refresh_token.expose().to_owned();
        assert!(
            rt == format!("rtA-{id}") || rt == format!("rtB-{id}"),
            "{id}: {rt}"
        );
    }
}

/// HELD: the new outputs at `TOKENWARDEN_LOG=trace` — a streamed batch
/// import with refusals (same token twice, a spent token, a token another
/// id holds), `list --limit/--after/--state` in both forms, `sweep` and
/// `sweep --verbose` with a refresh and a failure, and the HTTP list and
/// events pages — never carry a token upstream issued or the import held.
#[test]
fn held_no_secret_in_batch_import_paged_list_or_sweep_output() {
    let env = Env::new();
    let g = env.login("s1", 60);
    let g2 = env.login("s2", 60);
    let w = Arc::new(env.warden());
    w.refresh("s1", false).unwrap();
    let lines = [
        json!({"id": "b1", "provider": "codex", "refresh_token": "rt-NEW-ZXCVBNMASDFGHJKLQWERTYUIOP123456", "access_token": "at-NEW-QWERTYUIOPASDFGHJKLZXCVBNM98765"}),
        json!({"id": "b2", "provider": "codex", "refresh_token": "rt-NEW-ZXCVBNMASDFGHJKLQWERTYUIOP123456"}),
        json!({"id": "b3", "provider": "codex", "refresh_token": g.refresh_token}),
        json!({"id": "b4", "provider": "codex", "refresh_token": g2.refresh_token}),
    ];
    let file = env.dir.path().join("batch.jsonl");
    std::fs::write(
        &file,
        lines
            .iter()
            .map(|l| l.to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let mut outputs = vec![];
    let mut run = |args: &[&str]| {
        let out = env
            .cmd()
            .env("TOKENWARDEN_LOG", "trace")
            .args(args)
            .output()
            .unwrap();
        outputs.push((args.join(" "), text(&out.stdout), text(&out.stderr)));
    };
    run(&["import", file.to_str().unwrap()]);
    run(&["list", "--limit", "1", "--after", "b1"]);
    run(&["list", "--limit", "2", "--json", "--state", "expiring"]);
    env.fake
        .push_fault(crate::common::fake_oauth::Fault::status(500, "{}"));
    run(&["sweep"]);
    run(&["sweep", "--verbose", "--json"]);
    run(&["sweep", "--verbose"]);
    let (_server, client) = serve(w.clone(), 2);
    for path in [
        "/v1/credentials?limit=2",
        "/v1/credentials?limit=2&after=b1&state=valid",
        "/v1/credentials/s1/events?after=0&limit=2",
    ] {
        let a = client.get(path).expect(200);
        outputs.push((path.to_owned(), a.body, String::new()));
    }
    let mut secrets: Vec<String> = vec![
        "rt-NEW-ZXCVBNMASDFGHJKLQWERTYUIOP123456".into(),
        "at-NEW-QWERTYUIOPASDFGHJKLZXCVBNM98765".into(),
        g.access_token.clone(),
        g.id_token.clone(),
        g2.access_token.clone(),
    ];
    for id in ["s1", "s2"] {
        let f = env.fake.family_state(id);
        secrets.extend(f.issued_refresh_tokens);
        secrets.push(f.current_access_token);
    }
    for (what, stdout, stderr) in &outputs {
        for s in &secrets {
            assert!(
                !stdout.contains(s.as_str()) && !stderr.contains(s.as_str()),
                "`{what}` printed a secret: {stdout}{stderr}"
            );
        }
    }
}

/// HELD: a rejected access token does not come back through the batch path:
/// `reject` it (a refresh follows), delete the credential, and batch-import
/// an old file holding that access token (with the current refresh token)
/// under another id among other records: the import leaves the access token
/// out, and the first `token` refreshes instead of serving it.
#[test]
fn held_a_batch_import_never_brings_back_a_rejected_access_token() {
    let env = Env::new();
    let g = env.login("r", 3600);
    let w = env.warden();
    let fresh = w.reject("r", &g.access_token).unwrap();
    assert_ne!(fresh.access_token.expose(), g.access_token);
    let current = w.get("r").unwrap().refresh_token.expose().to_owned();
    w.delete("r").unwrap();
    let lines = [
        jsonl(&["other1"]),
        json!({"id": "r2", "provider": "codex", "refresh_token": current,
               "access_token": g.access_token, "expires_at": g.expires_at,
               "token_url": env.fake.token_url()})
        .to_string()
            + "\n",
        jsonl(&["other2"]),
    ]
    .concat();
    let file = env.dir.path().join("old.jsonl");
    std::fs::write(&file, lines).unwrap();
    let out = env.run(&["import", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let served = w.token("r2", Duration::ZERO).unwrap();
    assert_ne!(
        served.access_token.expose(),
        g.access_token,
        "the rejected token was served"
    );
}
