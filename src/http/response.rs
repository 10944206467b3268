//! What the API answers: one [`Reply`] type, and [`ApiError`], the one
//! place where an error becomes a status and an `{"error":{…}}` body.

use serde::Serialize;

use crate::error::Error;

/// The largest request body read (DESIGN.md §5: over 1 MiB → 413).
pub const MAX_BODY: usize = 1 << 20;

/// A reply's body.
#[derive(Debug)]
pub enum Body {
    /// No body (204).
    Empty,
    /// `application/json`.
    Json(Vec<u8>),
    /// Prometheus text exposition format.
    Metrics(String),
    /// A page for a browser (the sign-in callback's, the console's).
    Html(String),
    /// A file embedded in the binary (the console's script and
    /// stylesheet), with its content type.
    Asset(&'static str, &'static str),
}

/// An answer, before it is sent.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers beyond `Content-Type`, which follows from the body.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Body,
}

impl Reply {
    /// `value` as JSON with `status`; a value that cannot be serialised
    /// (none of ours) becomes a 500.
    pub fn json(status: u16, value: &impl Serialize) -> Reply {
        match serde_json::to_vec(value) {
            Ok(bytes) => Reply {
                status,
                headers: Vec::new(),
                body: Body::Json(bytes),
            },
            Err(e) => ApiError::internal(format!("cannot encode the answer: {e}")).into_reply(),
        }
    }

    /// An already-encoded JSON body.
    pub fn raw_json(status: u16, bytes: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Json(bytes),
        }
    }

    /// A reply without a body.
    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    /// Prometheus text.
    pub fn metrics(text: String) -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: Body::Metrics(text),
        }
    }

    /// A page for a browser.
    pub fn html(status: u16, page: String) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Html(page),
        }
    }

    /// An embedded file with its content type.
    pub fn asset(content_type: &'static str, text: &'static str) -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: Body::Asset(content_type, text),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// The `Content-Type` this reply's body calls for, if it has one.
    pub fn content_type(&self) -> Option<&'static str> {
        match self.body {
            Body::Empty => None,
            Body::Json(_) => Some("application/json"),
            Body::Metrics(_) => Some("text/plain; version=0.0.4; charset=utf-8"),
            Body::Html(_) => Some("text/html; charset=utf-8"),
            Body::Asset(t, _) => Some(t),
        }
    }

    /// The body's bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        match self.body {
            Body::Empty => Vec::new(),
            Body::Json(b) => b,
            Body::Metrics(s) | Body::Html(s) => s.into_bytes(),
            Body::Asset(_, text) => text.as_bytes().to_vec(),
        }
    }
}

/// An error answer. Its message says what went wrong and what to do, and
/// never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code (`bad_request`, `not_found`, …).
    pub code: &'static str,
    /// What happened.
    pub message: String,
    /// For `credential_dead`: the upstream code that killed it.
    pub reason: Option<String>,
    /// For 503: whole seconds until a retry makes sense (`Retry-After`).
    pub retry_after_s: Option<u64>,
    /// For 405: the methods the path takes (`Allow`).
    pub allow: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with no extras.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            reason: None,
            retry_after_s: None,
            allow: None,
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "bad_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            401,
            "unauthorized",
            "missing or wrong API key: send `Authorization: Bearer KEY` with a key from \
             TOKENWARDEN_API_KEY or --api-key-file",
        )
    }

    /// 404 `not_found` for a path no route serves.
    pub fn no_route() -> ApiError {
        ApiError::new(
            404,
            "not_found",
            "no such route; the API lives under /v1/credentials (see DESIGN.md §5)",
        )
    }

    /// 405 `method_not_allowed`; `allow` lists the methods the path takes.
    pub fn method_not_allowed(allow: String) -> ApiError {
        ApiError {
            allow: Some(allow.clone()),
            ..ApiError::new(
                405,
                "method_not_allowed",
                format!("this path takes {allow}"),
            )
        }
    }

    /// 413 `too_large`.
    pub fn too_large() -> ApiError {
        ApiError::new(
            413,
            "too_large",
            format!("the request body is larger than {MAX_BODY} bytes"),
        )
    }

    /// 500, for what should not happen.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "internal", message)
    }

    /// The reply: status, headers and `{"error":{"code","message",…}}`.
    pub fn into_reply(self) -> Reply {
        let body = ErrorBody {
            error: ErrorObject {
                code: self.code,
                message: &self.message,
                reason: self.reason.as_deref(),
                retry_after: self.retry_after_s,
            },
        };
        let bytes = match serde_json::to_vec(&body) {
            Ok(b) => b,
            // Strings and integers always serialise; keep a body anyway.
            Err(_) => {
                br#"{"error":{"code":"internal","message":"cannot encode the error"}}"#.to_vec()
            }
        };
        let mut reply = Reply {
            status: self.status,
            headers: Vec::new(),
            body: Body::Json(bytes),
        };
        if let Some(s) = self.retry_after_s {
            reply = reply.with_header("Retry-After", s.to_string());
        }
        if let Some(allow) = self.allow {
            reply = reply.with_header("Allow", allow);
        }
        if self.status == 401 {
            reply = reply.with_header("WWW-Authenticate", "Bearer");
        }
        reply
    }
}

/// The one mapping from library errors to HTTP statuses.
impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let message = e.to_string();
        match e {
            // The cause's status and code, with the record's position.
            Error::InRecord { source, .. } => ApiError {
                message,
                ..ApiError::from(*source)
            },
            Error::BadInput(_) => ApiError::bad_request(message),
            // No member will come back by itself: look again in a minute.
            Error::PoolUnavailable { retry_after_s, .. } => ApiError {
                retry_after_s: Some(retry_after_s.unwrap_or(60)),
                ..ApiError::new(503, "pool_unavailable", message)
            },
            Error::NotFound(_)
            | Error::NoQuota(_)
            | Error::QuotaUnsupported { .. }
            | Error::EmptyPool(_) => ApiError::new(404, e.code(), message),
            Error::Exists(_) => ApiError::new(409, "exists", message),
            // A sign-in's upstream did not answer (over the API: the
            // issuer's discovery): worth retrying, like a refresh's.
            Error::Login { .. } => ApiError {
                retry_after_s: Some(5),
                ..ApiError::new(503, "unavailable", message)
            },
            Error::RefreshInProgress { retry_after_s, .. } => ApiError {
                retry_after_s: Some(retry_after_s),
                ..ApiError::new(409, e.code(), message)
            },
            Error::SpentToken { .. }
            | Error::TokenHeldElsewhere { .. }
            | Error::PartlyImported { .. } => ApiError::new(409, e.code(), message),
            Error::Dead { reason, .. } => ApiError {
                reason: Some(reason),
                ..ApiError::new(410, "credential_dead", message)
            },
            Error::Unavailable { retry_after_s, .. } => ApiError {
                retry_after_s: Some(retry_after_s),
                ..ApiError::new(503, "unavailable", message)
            },
            // The database cannot be reached (restarting, failing over): the
            // credential is fine, ask again shortly.
            Error::Db(ref d) if d.kind() == crate::error::DbKind::NoConnection => ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(503, "store_unavailable", message)
            },
            Error::Db(_)
            | Error::DiskFull(_)
            | Error::Internal(_)
            | Error::Io(_)
            | Error::Config(_) => {
                log::error!("answering 500: {message}");
                ApiError::new(500, e.code(), message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{DbError, DbKind, IoError};

    fn body(reply: Reply) -> serde_json::Value {
        serde_json::from_slice(&reply.into_bytes()).expect("JSON body")
    }

    #[test]
    fn maps_every_error() {
        let cases = [
            (Error::BadInput("x".into()), 400, "bad_request"),
            (
                Error::Login {
                    code: "upstream_unreachable",
                    message: "x".into(),
                },
                503,
                "unavailable",
            ),
            (Error::NotFound("a".into()), 404, "not_found"),
            (Error::NoQuota("a".into()), 404, "no_quota"),
            (
                Error::QuotaUnsupported {
                    id: "a".into(),
                    provider: "google".into(),
                },
                404,
                "quota_unsupported",
            ),
            (Error::Exists("a".into()), 409, "exists"),
            (
                Error::RefreshInProgress {
                    id: "a".into(),
                    retry_after_s: 3,
                },
                409,
                "refresh_in_progress",
            ),
            (
                Error::SpentToken {
                    id: "a".into(),
                    spent_by: "a".into(),
                    at: "2025-01-01T00:00:00Z".into(),
                    how: crate::error::Spent::Rotated,
                },
                409,
                "refresh_token_spent",
            ),
            (
                Error::TokenHeldElsewhere {
                    id: "b".into(),
                    holder: "a".into(),
                },
                409,
                "refresh_token_in_use",
            ),
            (
                Error::Db(DbError::caused_by(DbKind::Busy, "locked")),
                500,
                "database",
            ),
            (Error::Internal("vanished"), 500, "database"),
            (IoError::new("cannot read", "disk").into(), 500, "io"),
            (Error::Config("bad".into()), 500, "config_error"),
        ];
        for (e, status, code) in cases {
            let a = ApiError::from(e);
            assert_eq!((a.status, a.code), (status, code));
        }
        assert!(ApiError::from(Error::Exists("a".into()))
            .message
            .contains("replace=1"));
    }

    #[test]
    fn dead_and_unavailable_carry_their_extras() {
        let dead = ApiError::from(Error::Dead {
            id: "a".into(),
            provider: crate::credential::ProviderKind::Codex,
            reason: "refresh_token_reused".into(),
        })
        .into_reply();
        assert_eq!(dead.status, 410);
        let b = body(dead);
        assert_eq!(b["error"]["code"], "credential_dead");
        assert_eq!(b["error"]["reason"], "refresh_token_reused");

        let busy = ApiError::from(Error::Unavailable {
            id: "a".into(),
            message: "backing off".into(),
            retry_after_s: 7,
        })
        .into_reply();
        assert_eq!(busy.status, 503);
        assert!(busy
            .headers
            .iter()
            .any(|(n, v)| *n == "Retry-After" && v == "7"));
        assert_eq!(body(busy)["error"]["code"], "unavailable");
    }

    #[test]
    fn method_not_allowed_names_the_methods() {
        let r = ApiError::method_not_allowed("GET, POST".into()).into_reply();
        assert_eq!(r.status, 405);
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| *n == "Allow" && v == "GET, POST"));
    }
}
