//! The values that cross the boundary between the pure core and the shell:
//! the request to send, the answer read back, and what it was classified as.

use std::fmt;

use crate::credential::Claims;
use crate::secret::Secret;

/// An HTTP request to send upstream, built purely.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `POST` or `GET`.
    pub method: &'static str,
    /// Absolute URL; `http://` only for loopback hosts.
    pub url: String,
    /// Header name/value pairs (may hold secrets: never log them).
    pub headers: Vec<(String, String)>,
    /// Request body (holds the refresh token: never log it).
    pub body: Vec<u8>,
}

impl fmt::Debug for HttpRequest {
    // The headers and body carry secrets; only the target is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpRequest({} {})", self.method, self.url)
    }
}

impl HttpRequest {
    /// Every value the request carries that may be secret, for scrubbing
    /// whatever upstream says back: each header's value (and its last
    /// word: `Bearer X` gives `X`), each value of a form body, each string
    /// of a JSON body — all but those of [`PUBLIC_FIELDS`] (a grant type,
    /// a client id, a redirect URI, a content type: scrubbing them would
    /// hide what a message says and keep nothing secret). Values are taken
    /// whole, whatever they look like.
    pub fn secrets(&self) -> Vec<String> {
        let public = |name: &str| {
            PUBLIC_FIELDS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(name.trim()))
        };
        let mut out = Vec::new();
        for (_, v) in self.headers.iter().filter(|(k, _)| !public(k)) {
            out.push(v.clone());
            if let Some((_, last)) = v.rsplit_once(' ') {
                out.push(last.to_owned());
            }
        }
        let body = String::from_utf8_lossy(&self.body);
        match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(json) => strings_of(&json, &public, &mut out),
            Err(_) => out.extend(
                super::form_decode(&body)
                    .into_iter()
                    .filter(|(k, _)| !public(k))
                    .map(|(_, v)| v),
            ),
        }
        out.retain(|v| !v.is_empty());
        out
    }
}

/// Request fields and headers whose values are never secret.
pub const PUBLIC_FIELDS: [&str; 9] = [
    "grant_type",
    "client_id",
    "redirect_uri",
    "scope",
    "response_type",
    "content-type",
    "accept",
    "user-agent",
    "content-length",
];

/// Every string value in `v`, depth first, but those of members `public`
/// names.
fn strings_of(v: &serde_json::Value, public: &dyn Fn(&str) -> bool, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings_of(v, public, out)),
        serde_json::Value::Object(m) => m
            .iter()
            .filter(|(k, _)| !public(k))
            .for_each(|(_, v)| strings_of(v, public, out)),
        _ => {}
    }
}

/// What came back from upstream, read by the shell with a size cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// The raw `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The body (possibly truncated at the shell's cap).
    pub body: Vec<u8>,
}

/// A successful refresh, ready to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// The new access token.
    pub access_token: Secret,
    /// The rotated refresh token, or the old one when none came back.
    pub refresh_token: Secret,
    /// New id token, if one came back.
    pub id_token: Option<Secret>,
    /// Absolute expiry of the access token (unix ms).
    pub expires_at_ms: i64,
    /// Claims found in the answer (unset fields: keep the stored ones).
    pub claims: Claims,
}

/// Whether a failure may clear up by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permanence {
    /// The refresh token is refused for good: the credential is dead.
    Permanent,
    /// Worth retrying later, with backoff.
    Transient,
}

/// A refresh that did not produce tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Permanent or transient.
    pub permanence: Permanence,
    /// Machine-readable code: the upstream's (`invalid_grant`, …) or ours
    /// (`http_503`, `bad_json`, `connect_failed`, `timeout_after_send`, …).
    pub code: String,
    /// Human-readable text; never contains a secret.
    pub message: String,
    /// From `Retry-After`, relative to the answer (ms).
    pub retry_after_ms: Option<i64>,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
}

impl Failure {
    /// A transient failure with no answer from upstream.
    pub fn transient(code: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            permanence: Permanence::Transient,
            code: code.into(),
            message: message.into(),
            retry_after_ms: None,
            status: None,
        }
    }
}

/// The classified answer of a token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// New tokens.
    Success(Tokens),
    /// No tokens, and why.
    Failure(Failure),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)], body: &str) -> HttpRequest {
        HttpRequest {
            method: "POST",
            url: "https://auth.example/oauth/token".into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_requests_secrets_are_its_values() {
        let form = request(
            &[
                ("Authorization", "Bearer at-1"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            "grant_type=refresh_token&refresh_token=rt%2F1&client_id=app&client_secret=",
        );
        assert_eq!(form.secrets(), ["Bearer at-1", "at-1", "rt/1"]);
        let json = request(
            &[],
            r#"{"refresh_token":"rt-2","extra":["a b"],"n":1,"client_id":"app"}"#,
        );
        let mut got = json.secrets();
        got.sort();
        assert_eq!(got, ["a b", "rt-2"]);
        assert!(request(&[], "").secrets().is_empty());
    }
}
