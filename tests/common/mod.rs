//! Helpers shared by the integration tests (`crate::common::…` from every
//! module of tests/tests.rs).

pub mod chaos;
pub mod fake_oauth;
pub mod http;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod scripted;
pub mod spec;
pub mod tw;
