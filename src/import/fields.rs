//! Field readers shared by the three formats: typed, naming the field
//! (as a path) in errors, never quoting the value.

use serde_json::{Map, Value};

use super::error::{ImportError, Result};
use crate::rfc3339;
use crate::secret::Secret;

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn bad(field: &str, why: impl Into<String>) -> ImportError {
    ImportError::BadField {
        field: field.to_owned(),
        why: why.into(),
    }
}

/// An optional string field (`null`, absent and blank are all `None`),
/// trimmed. `path` names it in errors.
pub(super) fn opt_str<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim()).filter(|s| !s.is_empty())),
        Some(other) => Err(bad(
            path,
            format!("expected a string, found {}", type_name(other)),
        )),
    }
}

pub(super) fn opt_string(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>> {
    Ok(opt_str(map, key, path)?.map(str::to_owned))
}

pub(super) fn opt_secret(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<Secret>> {
    Ok(opt_str(map, key, path)?.map(Secret::new))
}

pub(super) fn req_secret(map: &Map<String, Value>, key: &str, path: &str) -> Result<Secret> {
    opt_secret(map, key, path)?.ok_or_else(|| ImportError::MissingField(path.to_owned()))
}

/// An optional RFC 3339 timestamp field.
pub(super) fn opt_time(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<i64>> {
    opt_str(map, key, path)?
        .map(|s| {
            rfc3339::parse(s).ok_or_else(|| {
                bad(
                    path,
                    "not an RFC 3339 timestamp (like 2025-01-31T12:00:00Z)",
                )
            })
        })
        .transpose()
}

/// An optional time in unix milliseconds, as a JSON number (how Claude Code
/// and Gemini CLI write expiries); `null`, absent and 0 are `None`.
pub(super) fn opt_ms(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<i64>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(0.0) => Ok(None),
            Some(ms) if ms.is_finite() && ms > 0.0 && ms < 1e15 => Ok(Some(ms as i64)),
            _ => Err(bad(path, "must be positive unix milliseconds")),
        },
        Some(other) => Err(bad(
            path,
            format!("expected unix milliseconds, found {}", type_name(other)),
        )),
    }
}
