//! The integration tests: one binary (`cargo test --test tests`), each file
//! of tests/ a module of it, so tests/common is compiled and linked once.
//! Run one file's tests with its module path, e.g.
//! `cargo test --test tests chaos::`, and one test with its full path and
//! `--exact`.

// Helpers: the fake OAuth server, a tokenwarden under test, HTTP clients,
// the scripted token endpoint, docs/openapi.yaml's validator, the chaos run;
// `on_both_backends!`, which makes one test source a SQLite and a PostgreSQL test.
#[macro_use]
mod common;

// The import-graph rules of ARCHITECTURE.md, read from the sources.
mod architecture;
// First hostile review: ways the exactly-once promise broke (issue 11).
mod attack;
// Second hostile review: ways the fixes of the first one broke.
mod attack2;
// Third hostile review: the Backend store, typed errors, the clock seam,
// pagination and streaming import (issue 13).
mod attack3;
// Attacks on the token cold-start change (a33b4c4): shortcut parser, deferred start-up.
mod attack4;
// Hostile review of issue 13's fast streaming import (f56b299): splitter,
// batches, SIGKILL; holes are `#[ignore = "HOLE: …"]`.
mod attack13;
// Hostile review of issue 14 (the PostgreSQL backend): lease clocks across
// roles, TLS refusal, secrets in messages, schemas; holes are
// `#[ignore = "HOLE: …"]`.
#[cfg(feature = "postgres")]
mod attack14;
// Second hostile review of issue 14 after its mend (the server clock as an
// interval, one lease clock id per database): foreign clock ids, a restart
// between upstream's answer and the commit, migrate under a live box, slow
// and jittery paths, a killed listener. Holes are `#[ignore = "HOLE: …"]`.
#[cfg(feature = "postgres")]
mod attack14b;
// Hostile review of issue 15 (e14fc48): pools, cooldowns, the notifications
// outbox; holes are `#[ignore = "HOLE: …"]`.
mod attack15;
// Attacks on 251fb5a: the token shortcut wired in main, signals kept only
// while held, the serve scheduler's quiet mark.
mod attack5;
// Attacks on issue 16, `tokenwarden login`: store_login, the flows, the
// API sign-in, the Claude Code and Gemini importers, the relogin command.
mod attack16;
// Hostile review of issue 17, the operator's console under /ui: sessions,
// CSRF, read-only escalation, XSS, redirects, secrets, the promise kept by
// its actions (browser part: tests/browser/attack17.mjs); holes are
// `#[ignore = "HOLE: …"]`.
mod attack17;
// Second hostile review of issue 17 after its mend (156bf9d): the sign-in
// throttle, the reject fingerprint, session caps and cookie picking, scrub.
mod attack17b;
// Hostile review of b112590 (shared reads of a row), 82e3413 (the TLS
// front's internal TCP hop) and f6e0e09 (scrub's marks); holes are
// `#[ignore = "HOLE: …"]`.
mod attack3c;
// Hostile review of d3e606e (serve exits 1 when tiny_http's listener is
// gone), the TLS front's descriptor cap and shared_read's patience on the
// refresher's clock; holes are `#[ignore = "HOLE: …"]`.
mod attack4d;
// Hostile review of ea569c6 (shared_read refactored, the console reject
// form fingerprint from the one detail read); holes are
// `#[ignore = "HOLE: …"]`.
mod attack5e;
// The operator's console (issue 17) in headless Chromium, driven by
// playwright-core on Node.js (tests/browser): live states, actions,
// read-only keys, CSRF and foreign origins, no secret in any traffic.
mod browser;
// The in-memory row cache never serves a token committed over.
mod cache;
// Threads, processes, kills, faults and clock steps on one database.
mod chaos;
// The command line: formats, flags, exit codes, errors.
mod cli;
// A locked, read-only, full, corrupt or foreign database.
mod db_faults;
// The Codex token-endpoint facade under a fleet of clients.
mod facade;
// The fake OAuth server itself behaves like the real ones.
mod fake_oauth_selftest;
// Property-based fuzzing of the HTTP API (proptest).
mod fuzz_http;
// Regressions of an outside review: clocks, leases, signals.
mod hardening;
// The HTTP API end to end, in-process and as `tokenwarden serve`.
mod http;
// The operator's console under /ui (issue 17): sessions, CSRF, actions,
// headers and secrets, over loopback against the real `serve`.
mod ui;
// `tokenwarden login` against a real OpenID provider (oidc-provider on Node.js).
mod login;
// Imports that could burn a login: replace, stale, duplicate.
mod import_replace;
// One test or more per invariant of DESIGN.md §3.
mod invariants;
// The notifications outbox (issue 15): real receivers on loopback, a
// SIGKILL between the change and its delivery.
mod notify;
// docs/openapi.yaml against the running server, one test per route group.
mod openapi;
// Pools and cooldowns (issue 15): the pick, the pool route, many
// threads and processes asking one pool.
mod pools;
// Issue 13 at test scale: pages, a large streaming import, a short sweep.
mod scale;
// The PostgreSQL backend: several boxes on one database, its faults, its clock.
#[cfg(feature = "postgres")]
mod postgres;
// Secrets at rest and in output; encrypt and rekey under SIGKILL.
mod security;
// SQLite's process-wide POSIX locks are never dropped by tokenwarden.
mod shm_locks;
// `serve` stopping on SIGTERM with a refresh in flight.
mod shutdown;
// `tokenwarden sweep` and quota snapshots.
mod sweep;
// `serve` over HTTPS, and the warning for plain HTTP off loopback.
mod tls;
// A token endpoint that misbehaves at the HTTP level.
mod upstream_abuse;
