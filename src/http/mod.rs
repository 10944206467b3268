//! The blocking HTTP API of DESIGN.md §5 on tiny_http. `tokenwarden
//! serve` (signals, the shutdown sequence) belongs to the CLI, which
//! builds a [`ServerOptions`] and drives a [`Server`]; nothing here names
//! the CLI (ARCHITECTURE.md, architecture invariants).
//!
//! - [`server`]: the listener, a fixed pool of workers (a panic answers 500
//!   and the worker carries on; a dead worker is replaced), shutdown.
//! - `routes`: the one route table; auth, size, id, route, method, query
//!   and body checks in that order; thin handlers over [`crate::Warden`].
//! - [`auth`]: API keys and their constant-time check.
//! - [`response`]: replies, and the one mapping from [`crate::Error`] to
//!   statuses and `{"error":{"code","message"}}` bodies.
//! - [`quota`]: the quota routes' seam.
//! - [`ui`]: the operator's console under `/ui` (sessions, CSRF, pages).
//!
//! Every answer is counted in [`crate::metrics::Metrics::http`] by route
//! pattern and logged at debug level as method, pattern, status and time —
//! never a header, query value or body.

pub mod auth;
mod login;
mod origin;
pub mod quota;
pub mod response;
mod routes;
pub mod server;
pub mod tls;
pub mod ui;

use std::time::Duration;

pub use auth::ApiKeys;
pub(crate) use origin::allowed_hosts;
pub use origin::ALLOW_HOST_ENV;
pub use response::{ApiError, Reply, MAX_BODY};
pub use routes::MAX_WAIT_S;
pub use server::{Server, ServerOptions, DEFAULT_WAIT};
pub use tls::TlsFiles;

/// How long `serve`'s shutdown waits for requests in flight that hold no
/// refresh lease (`TOKENWARDEN_SHUTDOWN_GRACE` overrides it). Refreshes in
/// flight are waited for until they commit, however long that takes within
/// their lease.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The environment variable that sets the shutdown grace (seconds).
pub const SHUTDOWN_GRACE_ENV: &str = "TOKENWARDEN_SHUTDOWN_GRACE";
