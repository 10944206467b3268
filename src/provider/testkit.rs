//! Helpers shared by the provider files' tests.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use super::*;
use crate::credential::ProviderConfig;
use crate::secret::Secret;

/// The clock of every test: 2023-11-14T22:13:20Z.
pub const NOW: i64 = 1_700_000_000_000;
/// The refresh token every test sends.
pub const OLD_REFRESH: &str = "rt_old_secret";

pub fn resp(status: u16, body: &str, retry_after: Option<&str>) -> HttpResponse {
    HttpResponse {
        status,
        retry_after: retry_after.map(str::to_owned),
        body: body.as_bytes().to_vec(),
    }
}

pub fn outcome(kind: ProviderKind, status: u16, body: &str, retry_after: Option<&str>) -> Outcome {
    parse_refresh(
        kind,
        &resp(status, body, retry_after),
        &Secret::new(OLD_REFRESH),
        NOW,
    )
}

pub fn success(kind: ProviderKind, status: u16, body: &str) -> Tokens {
    match outcome(kind, status, body, None) {
        Outcome::Success(t) => t,
        Outcome::Failure(f) => panic!("expected success, got {f:?}"),
    }
}

pub fn failure(kind: ProviderKind, status: u16, body: &str, retry_after: Option<&str>) -> Failure {
    match outcome(kind, status, body, retry_after) {
        Outcome::Failure(f) => f,
        Outcome::Success(t) => panic!("expected failure, got {t:?}"),
    }
}

/// An unsigned JWT carrying `payload`.
pub fn jwt(payload: &str) -> String {
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

pub fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The body's fields, decoded according to its Content-Type.
pub fn fields(req: &HttpRequest) -> BTreeMap<String, String> {
    let body = String::from_utf8(req.body.clone()).expect("utf-8 body");
    match header(req, "Content-Type") {
        Some("application/x-www-form-urlencoded") => form_decode(&body).into_iter().collect(),
        Some("application/json") => {
            let v: Map<String, Value> = serde_json::from_str(&body).expect("JSON object body");
            v.into_iter()
                .map(|(k, v)| (k, v.as_str().expect("string field").to_owned()))
                .collect()
        }
        other => panic!("unexpected content type {other:?}"),
    }
}

/// `fields` as a sorted list of `(name, value)` for comparisons.
pub fn pairs(req: &HttpRequest) -> Vec<(String, String)> {
    fields(req).into_iter().collect()
}

/// Builds the expected `pairs`.
pub fn expect(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    v.sort();
    v
}

/// Builds a request for `cfg`, or panics with the error.
pub fn build(cfg: &ProviderConfig) -> HttpRequest {
    refresh_request(cfg, &Secret::new(OLD_REFRESH), &Endpoints::default())
        .unwrap_or_else(|e| panic!("{e}"))
}
