//! Pools and cooldowns (issue 15): the schema upgrade of a database written
//! by an older build, memberships and cooldowns as rows with events, the
//! pool route end to end, and many threads and processes asking one pool.

use std::time::Duration;

use crate::common::tw::{now, Env};
use tokenwarden::testing::{CooldownSource, CooldownWrite};
use tokenwarden::{Config, Warden};

/// A database file written by main at 251fb5a (schema version 2: two
/// credentials, `old-a` codex and `old-b` claude, with their import
/// events), as `tokenwarden init` and `import` left it.
const MAIN_V2_DB: &[u8] = include_bytes!("fixtures/schema_v2_main_251fb5a.db");

/// An old database upgrades in place: its rows, tokens and events are all
/// there, and pools and cooldowns work on it at once.
#[test]
fn a_database_written_by_main_upgrades_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    std::fs::write(&db, MAIN_V2_DB).unwrap();
    let version = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(version(&db), 2, "the fixture is a schema-2 file");
    let w = Warden::open(&db, Config::default()).unwrap();
    assert_eq!(version(&db), 3, "migrated at open");
    let grant = w.token("old-a", Duration::ZERO).unwrap();
    assert_eq!(grant.access_token.expose(), "at-old-a");
    assert_eq!(
        w.events("old-b", None).unwrap().len(),
        1,
        "import event kept"
    );
    let store = w.store();
    assert!(store
        .set_pool_member("old-a", "team", true, "t", 1)
        .unwrap());
    assert!(store
        .set_pool_member("old-b", "team", true, "t", 1)
        .unwrap());
    let pool = store.pool("team", None).unwrap();
    let ids: Vec<_> = pool
        .members
        .iter()
        .map(|m| m.credential.id.as_str())
        .collect();
    assert_eq!(ids, ["old-a", "old-b"]);
    assert_eq!(pool.members[0].credential.failing_since_ms, None);
    drop(w);
    // Opening again is a no-op (already at version 3).
    let w = Warden::open(&db, Config::default()).unwrap();
    assert_eq!(w.store().memberships().unwrap().len(), 2);
}

/// Joining and leaving a pool, and setting and clearing a cooldown, each
/// append an event row without bumping the version; repeats write
/// nothing; deleting the credential takes its memberships and cooldown.
#[test]
fn memberships_and_cooldowns_are_rows_with_events() {
    let env = Env::new();
    env.login("m1", 3600);
    let w = env.warden();
    let store = w.store();
    let version = store.version("m1").unwrap();
    let events = || w.events("m1", None).unwrap();
    let before = events().len();
    assert!(store.set_pool_member("m1", "p", true, "t", 10).unwrap());
    assert!(
        !store.set_pool_member("m1", "p", true, "t", 11).unwrap(),
        "already a member"
    );
    let set = CooldownWrite::Set {
        until_ms: 5_000_000,
        reason: "usage_limit_reached",
        source: CooldownSource::Manual,
    };
    assert!(store.cooldown("m1", set, None, "t", 20).unwrap());
    assert!(
        !store.cooldown("m1", set, None, "t", 21).unwrap(),
        "the same cooldown"
    );
    let clear_old = CooldownWrite::Clear {
        set_before_ms: 19,
        reason: "snapshot",
    };
    assert!(
        !store.cooldown("m1", clear_old, None, "t", 22).unwrap(),
        "set after it"
    );
    assert_eq!(store.cooldowns().unwrap().len(), 1);
    let clear = CooldownWrite::Clear {
        set_before_ms: 20,
        reason: "window reset",
    };
    assert!(store.cooldown("m1", clear, None, "t", 23).unwrap());
    assert!(store.cooldowns().unwrap().is_empty());
    assert!(store.set_pool_member("m1", "p", false, "t", 30).unwrap());
    let reasons: Vec<String> = events()[before..]
        .iter()
        .map(|e| e.reason.clone())
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert_eq!(reasons[0], "joined pool p");
    assert!(
        reasons[1].starts_with("cooldown (manual) until "),
        "{reasons:?}"
    );
    assert!(reasons[1].ends_with(": usage_limit_reached"), "{reasons:?}");
    assert_eq!(reasons[2], "cooldown cleared: window reset");
    assert_eq!(reasons[3], "left pool p");
    assert_eq!(store.version("m1").unwrap(), version, "no version bump");
    // Unknown credential: NotFound, nothing written.
    assert!(matches!(
        store.set_pool_member("nope", "p", true, "t", 40),
        Err(tokenwarden::Error::NotFound(_))
    ));
    store.set_pool_member("m1", "p", true, "t", 50).unwrap();
    store.cooldown("m1", set, None, "t", 51).unwrap();
    w.delete("m1").unwrap();
    assert!(store.memberships().unwrap().is_empty());
    assert!(store.cooldowns().unwrap().is_empty());
    assert!(store.pool("p", None).unwrap().members.is_empty());
    let _ = now();
}
