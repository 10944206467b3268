//! Cross-box wake-ups: every change's statement also sends
//! `NOTIFY <channel>, '<id> <version>'` (delivered at its commit, to every
//! box listening), and one thread per process listens and wakes the
//! waiters of that credential. A hint only: waiters re-read the row, which
//! is the truth, and keep polling (more slowly) in case a notification is
//! lost — while the listener reconnects, say.
//!
//! The listener starts with the first wait of the process (a one-shot
//! command that never waits opens no second connection) and stops when
//! the store is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use postgres::fallible_iterator::FallibleIterator;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::Wake;

/// The listener of one store.
pub(super) struct Listener {
    config: postgres::Config,
    tls: MakeRustlsConnect,
    channel: String,
    subscribers: Arc<Mutex<Vec<Weak<Wake>>>>,
    started: AtomicBool,
    stop: Arc<AtomicBool>,
}

impl Listener {
    pub(super) fn new(
        config: postgres::Config,
        tls: MakeRustlsConnect,
        channel: String,
    ) -> Listener {
        Listener {
            config,
            tls,
            channel,
            subscribers: Arc::default(),
            started: AtomicBool::new(false),
            stop: Arc::default(),
        }
    }

    /// Adds a subscriber, kept while someone else holds it.
    pub(super) fn subscribe(&self, wake: &Arc<Wake>) {
        let mut subs = self.subscribers.lock();
        subs.retain(|w| w.strong_count() > 0);
        subs.push(Arc::downgrade(wake));
    }

    /// Starts listening, once (no-op if nobody subscribed).
    pub(super) fn start(&self) {
        if self.subscribers.lock().is_empty() || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let (config, tls, channel) = (self.config.clone(), self.tls.clone(), self.channel.clone());
        let (subs, stop) = (self.subscribers.clone(), self.stop.clone());
        let spawned = std::thread::Builder::new()
            .name("pg-listen".into())
            .spawn(move || listen(&config, tls, &channel, &subs, &stop));
        if let Err(e) = spawned {
            log::warn!("cannot start the PostgreSQL listener ({e}); waiters poll instead");
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The `id` of a `<id> <version>` payload.
pub(super) fn payload_id(payload: &str) -> Option<&str> {
    let (id, version) = payload.rsplit_once(' ')?;
    version.parse::<i64>().ok().map(|_| id)
}

fn listen(
    config: &postgres::Config,
    tls: MakeRustlsConnect,
    channel: &str,
    subs: &Mutex<Vec<Weak<Wake>>>,
    stop: &AtomicBool,
) {
    let mut pause = Duration::from_millis(100);
    while !stop.load(Ordering::Acquire) {
        let mut client = match config.connect(tls.clone()) {
            Ok(c) => c,
            Err(e) => {
                log::debug!("PostgreSQL listener: cannot connect ({e}); retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")) {
            log::debug!("PostgreSQL listener: LISTEN failed ({e}); retrying");
            std::thread::sleep(pause);
            continue;
        }
        pause = Duration::from_millis(100);
        loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let next = client
                .notifications()
                .timeout_iter(Duration::from_millis(500))
                .next();
            match next {
                Ok(Some(note)) => {
                    if let Some(id) = payload_id(note.payload()) {
                        let live: Vec<Arc<Wake>> =
                            subs.lock().iter().filter_map(Weak::upgrade).collect();
                        if live.is_empty() {
                            return;
                        }
                        for wake in live {
                            wake(id);
                        }
                    }
                }
                Ok(None) if client.is_closed() => break,
                Ok(None) => {}
                Err(e) => {
                    log::debug!("PostgreSQL listener: connection lost ({e}); reconnecting");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Payloads are `<id> <version>`; ids may hold spaces, versions not.
    #[test]
    fn payloads_name_the_credential() {
        assert_eq!(super::payload_id("a 3"), Some("a"));
        assert_eq!(super::payload_id("me@x.com 12"), Some("me@x.com"));
        assert_eq!(super::payload_id("a b 7"), Some("a b"));
        assert_eq!(super::payload_id("a"), None);
        assert_eq!(super::payload_id("a x"), None);
    }
}
