//! Issue 13 at test scale: pages that cover every credential once, a
//! streaming import bigger than the old 1 MiB bound with records refused
//! on their own, and a sweep whose output stays a few lines. (The figures
//! at 100k credentials are benchmarks: BENCHMARKS.md.)

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::common::http::InProcess;
use crate::common::tw::{code, now, text, Env};

const KEY: &str = "test-key-0123456789";

/// A tokenwarden record of `provider` whose access token is valid for an
/// hour (never refreshed by these tests).
fn record(id: &str, provider: &str) -> Value {
    json!({
        "id": id,
        "provider": provider,
        "refresh_token": format!("rt-{id}"),
        "access_token": format!("at-{id}"),
        "expires_at": now() + 3600,
    })
}

/// Imports `n` Codex credentials `c0000`… and `n` Claude ones `k0000`…
/// through the CLI, as JSON Lines on stdin.
fn import_lines(env: &Env, n: usize) {
    let mut lines = String::new();
    for i in 0..n {
        lines.push_str(&record(&format!("c{i:04}"), "codex").to_string());
        lines.push('\n');
        lines.push_str(&record(&format!("k{i:04}@example.com"), "claude").to_string());
        lines.push('\n');
    }
    let out = env.run_stdin(&["import", "-"], lines.as_bytes());
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
}

/// Follows `next` from `first` to the last page; every id seen, in order.
fn walk(client: &crate::common::http::Client, first: &str) -> (Vec<String>, usize) {
    let (mut ids, mut pages, mut path) = (Vec::new(), 0, first.to_owned());
    loop {
        let page = client.get(&path).expect(200).json();
        pages += 1;
        let got = page["credentials"].as_array().unwrap();
        ids.extend(got.iter().map(|s| s["id"].as_str().unwrap().to_owned()));
        match page.get("next").and_then(Value::as_str) {
            Some(next) => {
                assert_eq!(
                    Some(next),
                    ids.last().map(String::as_str),
                    "the cursor is the last id"
                );
                let sep = if first.contains('?') { '&' } else { '?' };
                let after = next.replace('@', "%40");
                path = format!("{first}{sep}after={after}");
            }
            None => return (ids, pages),
        }
    }
}

/// `GET /v1/credentials` pages follow each other by cursor over every
/// credential once, in id order; a percent-encoded cursor is decoded;
/// filters apply before the limit; bad parameters are a 400 naming them.
#[test]
fn http_pages_cover_every_credential_once_and_refuse_bad_parameters() {
    let env = Env::new();
    import_lines(&env, 120);
    let srv = InProcess::start(&env, &[KEY], 4);
    let c = &srv.client;

    let (ids, pages) = walk(c, "/v1/credentials?limit=50");
    assert_eq!(pages, 5, "240 credentials in pages of 50");
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "id order");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        240,
        "no repeats, no gaps"
    );

    // Without a limit: the default page holds them all here, and no next.
    let all = c.get("/v1/credentials").expect(200).json();
    assert_eq!(all["credentials"].as_array().unwrap().len(), 240);
    assert!(all.get("next").is_none(), "{}", all["next"]);

    // Filters before the limit.
    let (claude, _) = walk(c, "/v1/credentials?provider=claude&limit=7");
    assert_eq!(claude.len(), 120);
    assert!(claude.iter().all(|id| id.starts_with('k')), "{claude:?}");
    let valid = c
        .get("/v1/credentials?state=valid&limit=3&after=c0117")
        .expect(200)
        .json();
    let got: Vec<&str> = valid["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["c0118", "c0119", "k0000@example.com"]);
    let dead = c.get("/v1/credentials?state=dead").expect(200).json();
    assert_eq!(dead["credentials"], json!([]));

    for (query, names) in [
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("state=sleepy", "state"),
        ("provider=nope", "provider"),
        ("after=a&after=b", "after"),
        ("page=2", "page"),
    ] {
        let a = c.get(&format!("/v1/credentials?{query}")).expect(400);
        assert!(a.message().contains(names), "{query}: {}", a.message());
    }
}

/// A credential's events page forward by sequence number over HTTP; the
/// tail (no `after`) has no cursor.
#[test]
fn http_event_pages_follow_the_sequence() {
    let env = Env::new();
    import_lines(&env, 1);
    for n in 0..4 {
        let mut r = record("c0000", "codex");
        r["refresh_token"] = json!(format!("rt-relogin-{n}"));
        let out = env.run_stdin(&["import", "-", "--replace"], r.to_string().as_bytes());
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    }
    let srv = InProcess::start(&env, &[KEY], 2);
    let c = &srv.client;
    let all = c.get("/v1/credentials/c0000/events").expect(200).json();
    let seqs: Vec<i64> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 5, "{all}");
    let first = c
        .get("/v1/credentials/c0000/events?after=0&limit=3")
        .expect(200)
        .json();
    assert_eq!(first["events"].as_array().unwrap().len(), 3);
    assert_eq!(first["next"], json!(seqs[2]));
    let rest = c
        .get(&format!(
            "/v1/credentials/c0000/events?after={}&limit=3",
            seqs[2]
        ))
        .expect(200)
        .json();
    let rest: Vec<i64> = rest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(rest, seqs[3..]);
    let tail = c
        .get("/v1/credentials/c0000/events?limit=2")
        .expect(200)
        .json();
    assert!(tail.get("next").is_none());
    assert_eq!(tail["events"].as_array().unwrap().len(), 2);
    c.get("/v1/credentials/c0000/events?limit=0").expect(400);
    c.get("/v1/credentials/nobody/events?after=0").expect(404);
}

/// An import file over the old 1 MiB bound is read as a stream: every good
/// record lands, each bad one is refused on its own with its position (a
/// malformed record, a repeated id, another id's refresh token), exit 1,
/// and the refusals never quote a token.
#[test]
fn a_large_import_lands_every_good_record_and_names_each_refusal() {
    let env = Env::new();
    let n = 10_000;
    let mut records: Vec<Value> = (0..n)
        .map(|i| record(&format!("r{i:05}"), "codex"))
        .collect();
    records[10] = json!({"id": "broken", "provider": "codex"});
    records[20] = record("r00003", "codex");
    let mut twin = record("twin", "codex");
    twin["refresh_token"] = records[30]["refresh_token"].clone();
    records.push(twin);
    let body = serde_json::to_vec(&records).unwrap();
    assert!(body.len() > 1 << 20, "{} bytes", body.len());
    let path = env.dir.path().join("big.json");
    std::fs::write(&path, &body).unwrap();

    let out = env.run(&["import", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    assert!(
        stderr.contains("record 11 of the array: missing field"),
        "{stderr}"
    );
    assert!(
        stderr.contains("record 21 of the array: id \"r00003\" appears more than once"),
        "{stderr}"
    );
    assert!(
        stderr.contains("already holds this refresh token"),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .contains("3 of 10001 records were refused"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("rt-r000"),
        "a refusal quoted a token: {stderr}"
    );
    let imported = text(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("imported "))
        .count();
    assert_eq!(imported, n - 2);

    let list = env.run(&["list", "--json"]);
    let ids = serde_json::from_slice::<Value>(&list.stdout).unwrap();
    assert_eq!(ids["credentials"].as_array().unwrap().len(), n - 2);
    assert_eq!(
        env.warden().get("r00003").unwrap().refresh_token.expose(),
        "rt-r00003",
        "the first r00003 stays; the repeat was refused"
    );
}

/// `list` pages on the command line: `--limit` says on stderr where the
/// next page starts, `--json` carries it as `next`.
#[test]
fn cli_list_pages_and_filters() {
    let env = Env::new();
    import_lines(&env, 30);
    let out = env.run(&["list", "--limit", "25", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["credentials"].as_array().unwrap().len(), 25);
    assert_eq!(page["next"], json!("c0024"));
    let out = env.run(&["list", "--after", "c0024", "--provider", "codex"]);
    let rows: Vec<String> = text(&out.stdout)
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect();
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(rows[0].starts_with("c0025"), "{rows:?}");
    let out = env.run(&["list", "--limit", "2"]);
    assert!(
        text(&out.stderr).contains("--after c0001"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(code(&env.run(&["list", "--state", "sleepy"])), 2);
}

/// A sweep over many fresh credentials prints its summary, not a line per
/// credential; `--verbose` lists them all.
#[test]
fn a_sweep_over_many_fresh_credentials_prints_a_few_lines() {
    let env = Env::new();
    import_lines(&env, 150);
    let out = env.run(&["sweep"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout, "refreshed  0\nfresh      300\nfailed     0\ndead       0\n",
        "{stdout}"
    );
    let out = env.run(&["sweep", "--verbose"]);
    let stdout = text(&out.stdout);
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains(" fresh ")).collect();
    assert_eq!(rows.len(), 300, "{stdout}");
}

/// Concurrent pages on a small connection pool: a page must not hold one
/// connection for its scan while it waits for another for each row's
/// quota — with every connection held by a scan, every page would wait
/// out the pool's timeout and answer 500.
#[test]
fn concurrent_pages_do_not_wait_on_each_other_for_connections() {
    use std::sync::Arc;
    use tokenwarden::http::{ApiKeys, Server, ServerOptions};
    let env = Env::new();
    import_lines(&env, 100);
    let config = tokenwarden::Config {
        pool_size: 2,
        ..env.config()
    };
    let warden = tokenwarden::Warden::open(&env.db, config).unwrap();
    let options = ServerOptions {
        threads: 4,
        keys: ApiKeys::new([KEY]),
        ..ServerOptions::default()
    };
    let server = Server::start(Arc::new(warden), "127.0.0.1:0", options).unwrap();
    let addr = server.addr();
    let statuses: Vec<Vec<u16>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(move || {
                    let client = crate::common::http::Client::new(addr, Some(KEY));
                    (0..5)
                        .map(|_| client.get("/v1/credentials?limit=150").status)
                        .collect()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert!(statuses.iter().flatten().all(|&s| s == 200), "{statuses:?}");
}
