//! tokenwarden keeps OAuth credentials and hands out access tokens that work,
//! refreshing each rotating refresh token exactly once across every thread
//! and process that shares one SQLite file — or, with the `postgres`
//! feature (on by default), across every box that shares one PostgreSQL
//! database (`postgres://…` wherever a database path goes).
//!
//! # Embedding it
//!
//! [`Warden`] is the library: blocking, `Send + Sync`, one handle for every
//! thread of a service. Open it on a database file, import a login once,
//! then ask for a token whenever you call the API it is for:
//!
//! ```
//! use std::time::Duration;
//! use tokenwarden::import::{parse_import, ImportOptions};
//! use tokenwarden::{Config, Warden};
//!
//! # fn main() -> tokenwarden::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let db = dir.path().join("tokenwarden.db");
//! let warden = Warden::open(&db, Config::default())?;
//!
//! // A login, in tokenwarden's own import format (`tokenwarden import`
//! // also reads Codex CLI's auth.json and CLIProxyAPI's files).
//! let file = br#"{"id": "me", "provider": "codex", "refresh_token": "rt-1",
//!                "access_token": "at-1", "expires_at": 4102444800}"#;
//! let creds = parse_import(file, &ImportOptions::default(), 0)
//!     .map_err(|e| tokenwarden::Error::BadInput(e.to_string()))?;
//! warden.import(&creds, false)?;
//!
//! // A token good for at least another minute: served from the row while
//! // it is, refreshed first (by exactly one caller) when it is not.
//! let grant = warden.token("me", Duration::from_secs(60))?;
//! assert_eq!(grant.access_token.expose(), "at-1");
//!
//! // The API answered 401: report the token, get a new one. The rejected
//! // token is never served again, by this process or any other.
//! // let grant = warden.reject("me", grant.access_token.expose())?;
//! # Ok(())
//! # }
//! ```
//!
//! What to know:
//!
//! - **Share the file, not the handle.** Threads share one `Warden`;
//!   processes (the CLI, cron's `sweep`, `serve`, other services) open the
//!   same database and take part in the same single-flight refreshes —
//!   whoever wins the compare-and-swap into `refreshing` holds a lease and
//!   is the only caller of the token endpoint.
//! - **Errors say what to do.** [`Error`] maps onto the CLI's exit codes
//!   ([`Error::exit_code`]) and the API's error codes ([`Error::code`]); a
//!   [`Error::Dead`] login needs a human (log in again and re-import), an
//!   [`Error::Unavailable`] one a retry after `retry_after_s`.
//! - **Secrets are [`Secret`]s**: their `Debug` and `Display` print
//!   `***`, so logging a grant never leaks its token.
//! - `examples/embed.rs` is a whole threaded service (`cargo run --example
//!   embed`).
//!
//! # The map
//!
//! The pure core — [`state`] (the state machine) and [`provider`] (each
//! token endpoint's wire format) — does no I/O and reads no clock. The
//! shells feed it: the store (one `Backend` trait for the compare-and-swap
//! protocol, SQLite or PostgreSQL behind it), [`upstream`] (HTTP client), the refresh
//! protocol, and the [`Warden`] API on top; [`cli`] and [`http`] are thin
//! shells over `Warden`. ARCHITECTURE.md draws the map and the invariants
//! that keep it true.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credential;
pub mod error;
pub mod exit;
pub mod facade;
pub mod http;
pub mod import;
pub mod jwt;
pub mod login;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod provider;
pub mod quota;
mod refresh;
pub mod rfc3339;
pub mod seal;
pub mod secret;
pub mod state;
pub(crate) mod store;
pub mod sweep;
pub mod upstream;
pub mod view;
pub mod warden;

pub use config::Config;
pub use error::{Error, Result};
pub use secret::Secret;
/// The database's commit mark, for the background scheduler (see
/// [`Warden::stamp`](warden::Warden)).
pub(crate) use store::Stamp;
pub use store::{
    Cooldown, CooldownSource, Delivery, EventRow, HandleRow, Notice, NotificationCounts,
    NotificationRow, QuotaRow,
};
pub use warden::{Grant, Warden};

/// Not an API: the store below [`Warden`], for the integration tests that
/// play a second writer, inject faults or read rows directly. Everything
/// else reaches the store through `Warden` (ARCHITECTURE.md, invariant A3).
#[doc(hidden)]
pub mod testing {
    pub use crate::store::{
        Backend, Cooldown, CooldownSource, CooldownWrite, Deleted, Delivery, ErrorUpdate, EventRow,
        HandleRow, Notice, NotificationCounts, NotificationRow, PoolMember, PoolRead, QuotaRow,
        Stamp, Store, Write,
    };
}
