//! A second hostile review, of the fixes made after the first one
//! (`tests/attack.rs`). Each test here is a way the promise ("a rotating
//! refresh token is used exactly once and never lost; a rejected token is
//! never served; no secret leaks") still breaks. Each one FAILS on the tree
//! it was written against (2231e86), except those marked HELD (attacks that
//! did not break anything, kept as guards).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::scripted::{answer, import_at, wait_for_lease, Scripted};
use crate::common::tw::{code, text, Env, BIN};
use tokenwarden::state::State;

/// `cmd` (the env's binary and environment) run inside `wrapper`, which
/// ends by exec-ing `"$@"`: e.g. a fresh mount namespace.
fn wrapped(cmd: &Command, wrapper: &[&str], args: &[&str]) -> Command {
    let mut w = Command::new(wrapper[0]);
    w.args(&wrapper[1..]).arg(BIN).args(args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => w.env(k, v),
            None => w.env_remove(k),
        };
    }
    w.stdin(Stdio::null());
    w
}

/// systemd's `ProcSubset=pid` (a hardening `systemd-analyze security`
/// recommends), or a chroot or container without all of /proc: a fresh
/// procfs with only the process directories. `/proc/sys` is gone.
const PROC_SUBSET_PID: [&str; 9] = [
    "unshare",
    "-rm",
    "--pid",
    "--fork",
    "--kill-child",
    "sh",
    "-c",
    "mount -t proc -o subset=pid proc /proc && exec \"$@\"",
    "sh",
];

fn proc_subset_available() -> bool {
    Command::new(PROC_SUBSET_PID[0])
        .args(&PROC_SUBSET_PID[1..])
        .args(["test", "!", "-e", "/proc/sys/kernel/random/boot_id"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The lease clock is named by the boot id (`/proc/sys/kernel/random/
/// boot_id`); a process that cannot read it (systemd `ProcSubset=pid`,
/// `ProtectProc`-style sandboxes, a chroot without /proc) names its clock
/// `1`. Readings of different clocks "never compare", so such a process
/// judges every live lease written by an ordinary process of the same box
/// as expired — and takes it over at once, sending the refresh token that
/// is in flight a second time (and the ordinary processes do the same to
/// its leases). A `serve` hardened with `ProcSubset=pid` plus a cron job or
/// a shell `token` burn the login on the first overlap.
#[test]
fn a_process_without_proc_sys_takes_over_a_live_lease() {
    if !proc_subset_available() {
        eprintln!("cannot mount a procfs with subset=pid here; skipped");
        return;
    }
    let env = Env::new();
    let g = env.login("hardened", 60);
    let warden = Arc::new(env.warden());

    // An ordinary process (this one) holds a live lease, its request in
    // flight for 1.5 s of a 3 s lease.
    env.fake.set_latency(Duration::from_millis(1500));
    let w = warden.clone();
    let owner = thread::spawn(move || w.token("hardened", Duration::ZERO).map(|g| g.version));
    wait_for_lease(&warden, "hardened");

    // Moments later, a `token` run under ProcSubset=pid.
    let mut child = wrapped(&env.cmd(), &PROC_SUBSET_PID, &["token", "hardened"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Two processes that each see the other's lease as expired keep taking
    // it over from each other (a storm of refreshes with a spent token):
    // look for 6 s, then stop it.
    let until = Instant::now() + Duration::from_secs(6);
    let sent_twice = || {
        env.fake
            .presented_refresh_tokens("hardened")
            .iter()
            .filter(|t| **t == g.refresh_token)
            .count()
            > 1
    };
    while Instant::now() < until && !sent_twice() && child.try_wait().unwrap().is_none() {
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert_ne!(code(&out), 127, "the wrapper failed: {}", text(&out.stderr));
    env.fake.set_latency(Duration::ZERO);
    let presented = env.fake.presented_refresh_tokens("hardened");
    let stats = env.fake.stats();
    drop(owner);
    assert_eq!(
        presented.iter().filter(|t| **t == g.refresh_token).count(),
        1,
        "the refresh token in flight was sent again by the process without /proc/sys \
         ({}); presented {presented:?}; {stats:?}",
        text(&out.stderr).trim(),
    );
}

/// Sends `signal` (a `kill` name, e.g. "HUP") to `pid`.
fn kill(signal: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// One-shot commands finish their refresh in flight on SIGTERM and SIGINT
/// only. SIGHUP — what a one-shot `tokenwarden token`/`refresh` typed in an
/// ssh session or a terminal tab gets when the connection drops or the tab
/// is closed, and what `nohup`-less scripts get when their session ends —
/// still has its default action: the process dies mid-request, after
/// upstream rotated, and the rotated token is gone. The next refresh sends
/// the spent one: `refresh_token_reused`, login burned. (SIGQUIT likewise.)
#[test]
fn sighup_to_a_one_shot_command_mid_refresh_loses_the_rotation() {
    let env = Env::new();
    let g = env.login("hup", 60);
    let warden = env.warden();
    env.fake.set_latency(Duration::from_millis(1500));
    let mut child = env
        .cmd()
        .args(["refresh", "hup"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_lease(&warden, "hup");
    // The request has reached upstream; the terminal goes away.
    thread::sleep(Duration::from_millis(500));
    kill("HUP", child.id());
    let status = child.wait().unwrap();
    env.fake.set_latency(Duration::ZERO);
    // After the lease (3 s), any caller.
    thread::sleep(Duration::from_millis(3200));
    let r = warden.token("hup", Duration::ZERO);
    let presented = env.fake.presented_refresh_tokens("hup");
    assert_eq!(
        env.fake.stats().reuse_detected,
        0,
        "refresh exited {status:?} on SIGHUP; then token: {:?}; presented {presented:?} \
         (first {})",
        r.map(|g| g.version),
        g.refresh_token
    );
}

/// The fix for "delete during a refresh" records the refresh token of a
/// row left `refreshing` as spent, "so an old file holding it must not come
/// back under this or another id". The record never lands: `spent_tokens`
/// has `CHECK (reason IN ('rotated', 'replaced'))` (migration 0002) and the
/// delete writes reason `'deleted during a refresh'` with `INSERT OR
/// IGNORE` — which in SQLite also skips rows that fail a CHECK, silently.
/// A refresher killed after upstream rotated (the crash window) leaves the
/// row `refreshing`; the operator deletes the stuck credential once its
/// lease is over and imports the login file again: accepted, and the next
/// refresh sends the spent token — login burned.
#[test]
fn delete_of_a_row_left_refreshing_records_nothing_as_spent() {
    let env = Env::new();
    let g = env.login("stuck", 60);
    let file = env.dir.path().join("stuck.json");
    let warden = env.warden();
    // Upstream rotates at once, then is slow to answer; the refresher is
    // killed meanwhile (OOM killer, power cut: the documented crash window).
    env.fake
        .push_fault(crate::common::fake_oauth::Fault::ProcessThenHang(
            Duration::from_secs(10),
        ));
    let mut child = env
        .cmd()
        .args(["refresh", "stuck"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_lease(&warden, "stuck");
    let until = Instant::now() + Duration::from_secs(5);
    while env.fake.stats().successful_refreshes == 0 {
        assert!(Instant::now() < until, "upstream never rotated");
        thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The lease (3 s) runs out; the operator clears the stuck credential
    // and imports the login file again.
    thread::sleep(Duration::from_millis(3200));
    let del = env.run(&["delete", "stuck"]);
    assert_eq!(code(&del), 0, "{}", text(&del.stderr));
    let imp = env.run(&["import", file.to_str().unwrap()]);
    let _ = warden.token("stuck", Duration::ZERO);
    let presented = env.fake.presented_refresh_tokens("stuck");
    assert!(
        code(&imp) != 0 && env.fake.stats().reuse_detected == 0,
        "the refresh token the deleted row was refreshing with was imported again (exit {}: \
         {}) and sent again: presented {presented:?} (first {}); {:?}",
        code(&imp),
        text(&imp.stderr).trim(),
        g.refresh_token,
        env.fake.stats()
    );
}

/// The fix "a replace with the same refresh token never takes the file's
/// access token (it may be one reported rejected)" does not survive a
/// delete: the memory of the rejection goes with the row. A provider that
/// does not rotate refresh tokens (Google-style); the client reports AT1
/// rejected, tokenwarden refreshes to AT2. The operator then "resets" the
/// credential the way the first review's operator did — `delete`, then
/// `import` of the login file — and AT1 (still far from its `exp`) is
/// served again.
#[test]
fn delete_then_reimport_brings_back_a_rejected_access_token() {
    let env = Env::new();
    env.fake.set_rotation(false);
    let g = env.login("goog2", 3600);
    let file = env.dir.path().join("goog2.json");
    let warden = env.warden();
    env.fake.set_expires_in(1800);
    let fresh = warden.reject("goog2", &g.access_token).unwrap();
    assert_ne!(fresh.access_token.expose(), g.access_token);

    let del = env.run(&["delete", "goog2"]);
    assert_eq!(code(&del), 0, "{}", text(&del.stderr));
    let imp = env.run(&["import", file.to_str().unwrap()]);
    eprintln!("import: exit {} {}", code(&imp), text(&imp.stderr));

    let served = warden.token("goog2", Duration::ZERO);
    assert!(
        served
            .as_ref()
            .map_or(true, |s| s.access_token.expose() != g.access_token),
        "the access token reported rejected is served again after delete + import"
    );
}

/// A 2xx answer whose `error` member says `invalid_grant` (DESIGN §7: "a
/// 200 with an `error` field is classified by its code as if it were a
/// 400": permanent, dead) is now taken as a rotation whenever it also holds
/// a `refresh_token` string other than the one sent — whatever that string
/// is (an echo of some other value, a proxy's or another server's field).
/// The credential is not dead: it reads `valid`, its refresh token is
/// replaced by that string, and the token the server refused is recorded as
/// rotated away (so `import` of the login file is refused as "spent"). The
/// next caller sends the string upstream.
#[test]
fn a_2xx_invalid_grant_with_a_refresh_token_member_is_stored_as_a_rotation() {
    let env = Env::new();
    let up = Scripted::start(vec![Box::new(|_rt, conn| {
        answer(
            conn,
            "200 OK",
            r#"{"error":"invalid_grant","error_description":"bad","refresh_token":"not-a-token"}"#,
        )
    })]);
    import_at(&env, "lie3", "rt-1-original", 60, &up.url());
    let warden = env.warden();
    let r = warden.token("lie3", Duration::ZERO);
    let row = warden.get("lie3").unwrap();
    assert!(
        row.status.state == State::Dead && row.refresh_token.expose() == "rt-1-original",
        "a 200 saying invalid_grant left the credential {:?} holding {:?} (token call: {:?}); \
         presented {:?}",
        row.status.state,
        row.refresh_token.expose(),
        r.map(|g| g.version),
        up.presented()
    );
}

/// HELD (passes; kept as a guard): SIGTERM to a one-shot `token` that is
/// waiting on another process's lease (it holds none itself) exits at once
/// with 128 + 15, and the other process's refresh is untouched.
#[test]
fn sigterm_to_a_one_shot_waiting_on_another_lease_exits_at_once() {
    let env = Env::new();
    env.login("waiter", 60);
    let warden = Arc::new(env.warden());
    env.fake.set_latency(Duration::from_millis(1800));
    let w = warden.clone();
    let owner = thread::spawn(move || w.token("waiter", Duration::ZERO).map(|g| g.version));
    wait_for_lease(&warden, "waiter");
    let mut child = env
        .cmd()
        .args(["token", "waiter"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    kill("TERM", child.id());
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    assert!(owner.join().unwrap().is_ok());
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(took < Duration::from_millis(700), "took {took:?}");
    assert_eq!(env.fake.stats().reuse_detected, 0);
}
