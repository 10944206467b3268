//! tokenwarden keeps OAuth credentials and hands out access tokens that work,
//! refreshing each rotating refresh token exactly once across every thread
//! and process that shares one SQLite file.
//!
//! See ARCHITECTURE.md for the map of modules and the invariants.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod credential;
pub mod jwt;
pub mod provider;
pub mod secret;
pub mod state;
