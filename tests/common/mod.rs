//! Helpers shared by the integration tests. Each `tests/*.rs` file that needs
//! them starts with `mod common;`, so this module is compiled into every test
//! crate; most crates use only part of it, hence the blanket `dead_code`
//! allowance.

#![allow(dead_code)]

pub mod chaos;
pub mod fake_oauth;
pub mod http;
pub mod scripted;
pub mod tw;
