//! tokenwarden keeps OAuth credentials and hands out access tokens that work,
//! refreshing each rotating refresh token exactly once across every thread
//! and process that shares one SQLite file.
//!
//! The pure core — [`state`] (the state machine) and [`provider`] (each
//! token endpoint's wire format) — does no I/O. The shells feed it:
//! the store (SQLite, compare-and-swap on a row version), [`upstream`]
//! (HTTP client), the refresh protocol, and the [`Warden`] API on top.
//! ARCHITECTURE.md draws the map and the invariants.

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
pub mod metrics;
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
pub use store::{EventRow, HandleRow, QuotaRow};
pub use warden::{Grant, Warden};

/// Not an API: the store below [`Warden`], for the integration tests that
/// play a second writer, inject faults or read rows directly. Everything
/// else reaches the store through `Warden` (ARCHITECTURE.md, invariant A3).
#[doc(hidden)]
pub mod testing {
    pub use crate::store::{
        Backend, Deleted, ErrorUpdate, EventRow, HandleRow, QuotaRow, Stamp, Store, Write,
    };
}
