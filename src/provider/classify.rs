//! Reading a token endpoint's answer: tokens and expiry out of a success,
//! and the one classification table (permanent or transient, and which
//! code) for every provider's failures.

use serde_json::{Map, Value};

use super::kind::dialect;
use super::scrub::{clean, scrub};
use super::{
    default_lifetime_secs, parse_retry_after, Failure, HttpResponse, Outcome, Permanence,
    ProviderKind, Tokens,
};
use crate::jwt;
use crate::secret::Secret;

/// Upstream codes that refuse a refresh token for good (→ `dead`) when they
/// come with status 400 or 401 (or in a 200 with an `error` field).
pub const PERMANENT_CODES: [&str; 9] = [
    "invalid_grant",
    "refresh_token_reused",
    "refresh_token_expired",
    "refresh_token_invalidated",
    "refresh_token_revoked",
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
];

/// Upstream codes that mean "try again later", whatever the status: RFC
/// 6749's `temporarily_unavailable`/`server_error`, RFC 8628's `slow_down`,
/// and the rate-limit / overload codes and error types of OpenAI and
/// Anthropic.
pub const TRANSIENT_CODES: [&str; 9] = [
    "temporarily_unavailable",
    "server_error",
    "slow_down",
    "rate_limit_exceeded",
    "rate_limit_error",
    "overloaded_error",
    "api_error",
    "internal_server_error",
    "service_unavailable",
];

/// Whether `code` is one of [`PERMANENT_CODES`].
pub fn is_permanent_code(code: &str) -> bool {
    PERMANENT_CODES.contains(&code)
}

/// Whether `code` is one of [`TRANSIENT_CODES`].
pub fn is_transient_code(code: &str) -> bool {
    TRANSIENT_CODES.contains(&code)
}

/// The longest upstream message kept in a [`Failure`] (characters).
const MAX_MESSAGE_CHARS: usize = 200;
/// The longest excerpt of a non-JSON body kept in a [`Failure`].
const MAX_EXCERPT_CHARS: usize = 100;
/// A non-JSON body longer than this is described by its size only.
const MAX_EXCERPT_BODY: usize = 200;

/// The longest `expires_in` believed (ten years); longer values are capped.
const MAX_LIFETIME_SECS: f64 = 10.0 * 365.0 * 86_400.0;

/// Reads a token endpoint's answer.
///
/// Success is a 2xx JSON object with a non-empty string `access_token` and
/// no (non-null) `error` field. A missing or empty `refresh_token` keeps
/// `old_refresh`. The expiry is `expires_in` (number or numeric string) if
/// positive, floored at 1 s and capped at ten years; else the access
/// token's JWT `exp`; else [`default_lifetime_secs`]. Claims come from the
/// provider's reader (id token or body).
///
/// Anything else is a [`Failure`], classified once for every provider:
///
/// | status | body | outcome |
/// |---|---|---|
/// | 2xx | not a JSON object | transient `bad_json` |
/// | 2xx | a known code (permanent or transient list), with `error` or without `access_token` | as a 400 with that code |
/// | 2xx | `error` with no code or an unknown one | transient `upstream_error` |
/// | 2xx | no usable `access_token` | transient `no_access_token` |
/// | 400 | permanent code | permanent, that code |
/// | 400 | other code | transient, that code |
/// | 400 | no code / not JSON | transient `http_400` / `bad_json` |
/// | 401 | known transient code | transient, that code |
/// | 401 | any other code | permanent, that code |
/// | 401 | JSON with no code, or an empty body | permanent `unauthorized` |
/// | 401 | a non-empty body that is not JSON | transient `bad_json` |
/// | 408, 429, 5xx, other | anything | transient `http_<status>` |
///
/// The 401 rule (DESIGN.md §6, §7): a JSON 401 is the token endpoint
/// itself refusing the grant, so it is final even without a code (as the
/// Codex CLI treats it), and so is a bare 401 with nothing in its body. A
/// 401 whose body is an HTML (or any other non-JSON) page comes from a
/// gateway, proxy or captive portal in front of it, which says nothing
/// about the refresh token: killing the credential over it would force a
/// human to log in again for a network problem, so it backs off instead.
///
/// The code is read from `error.code`, then `error` (a string), then a
/// top-level `code`; `error.type` counts only when it is a known transient
/// code (Anthropic's `rate_limit_error`, `overloaded_error`, …), since
/// OpenAI's `invalid_request_error` says nothing about the token. Codes are
/// lower-cased. A `Retry-After` header, when present and readable, is
/// attached to every failure.
///
/// Nothing of a 2xx body reaches the failure (it may carry new tokens, even
/// when truncated or malformed): no excerpt, no upstream message, and a
/// code only when it is one of ours ([`PERMANENT_CODES`],
/// [`TRANSIENT_CODES`]). For other statuses the message quotes
/// `error_description` / `error.message` / `message` (200 characters at
/// most), or a short non-JSON body (printable ASCII, 100 characters), after
/// [`scrub`] has replaced `old_refresh`, the values of `access_token`,
/// `refresh_token` and `id_token`, and anything that looks like a token
/// with `***`.
pub fn parse_refresh(
    kind: ProviderKind,
    resp: &HttpResponse,
    old_refresh: &Secret,
    now_ms: i64,
) -> Outcome {
    parse_answer(kind, resp, old_refresh, &[], now_ms)
}

/// [`parse_refresh`], given `sent`: every other secret the request carried
/// (the client secret; a code exchange's code and PKCE verifier), which a
/// token endpoint — or a gateway in front of it — may echo in its error:
/// each is replaced with `***` like `old_refresh` before anything is
/// quoted.
pub fn parse_answer(
    kind: ProviderKind,
    resp: &HttpResponse,
    old_refresh: &Secret,
    sent: &[&str],
    now_ms: i64,
) -> Outcome {
    let body = match serde_json::from_slice::<Value>(&resp.body) {
        Ok(Value::Object(map)) => Body::Object(map),
        Ok(_) => Body::OtherJson,
        Err(_) => Body::NotJson,
    };
    if let (true, Body::Object(map)) = ((200..300).contains(&resp.status), &body) {
        if !has_error(map) {
            if let Some(tokens) = read_tokens(kind, map, old_refresh, now_ms) {
                return Outcome::Success(tokens);
            }
        }
        // No usable access token, and no error — but a new refresh token:
        // upstream has rotated, the old one is spent, and this is the only
        // copy of the login. It is kept (with no usable access token, so the
        // next caller refreshes with it) rather than thrown away. A body that
        // names an error is judged by it, as a 400 would be (DESIGN §7).
        if let (false, Some(rotated)) = (has_error(map), new_refresh_token(map, old_refresh)) {
            return Outcome::Success(Tokens {
                access_token: Secret::new(String::new()),
                refresh_token: rotated,
                id_token: None,
                expires_at_ms: now_ms,
                claims: Default::default(),
            });
        }
    }
    let mut failure = classify(resp.status, &body, &resp.body, old_refresh, sent);
    failure.retry_after_ms = resp
        .retry_after
        .as_deref()
        .and_then(|v| parse_retry_after(v, now_ms));
    Outcome::Failure(failure)
}

/// What the body of an answer turned out to be.
enum Body {
    Object(Map<String, Value>),
    OtherJson,
    NotJson,
}

/// Whether a 2xx body says it failed: an `error` member that holds
/// something (`null`, `""`, `{}` and `[]` say nothing).
fn has_error(map: &Map<String, Value>) -> bool {
    map.get("error").is_some_and(|e| match e {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => true,
    })
}

/// A refresh token in a 2xx body that is not the one sent.
fn new_refresh_token(map: &Map<String, Value>, old_refresh: &Secret) -> Option<Secret> {
    map.get("refresh_token")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != old_refresh.expose())
        .map(Secret::new)
}

fn read_tokens(
    kind: ProviderKind,
    map: &Map<String, Value>,
    old_refresh: &Secret,
    now_ms: i64,
) -> Option<Tokens> {
    let string = |key: &str| {
        map.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
    };
    let access = string("access_token")?;
    let id_token = string("id_token");
    let expires_at_ms = match expires_in_secs(map.get("expires_in")) {
        Some(secs) => now_ms.saturating_add((secs * 1000.0) as i64),
        None => jwt::expiry_ms(access)
            .unwrap_or_else(|| now_ms.saturating_add(default_lifetime_secs(kind) * 1000)),
    };
    Some(Tokens {
        access_token: Secret::new(access),
        refresh_token: string("refresh_token").map_or_else(|| old_refresh.clone(), Secret::new),
        id_token: id_token.map(Secret::new),
        expires_at_ms,
        claims: (dialect(kind).claims)(map, id_token),
    })
}

/// `expires_in` as seconds, if it is a positive number (or numeric string);
/// floored at 1 s, capped at [`MAX_LIFETIME_SECS`].
fn expires_in_secs(value: Option<&Value>) -> Option<f64> {
    let secs = match value? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0).then(|| secs.clamp(1.0, MAX_LIFETIME_SECS))
}

/// An error code as upstream sent it, normalised: trimmed, lower-cased,
/// characters outside `a-z 0-9 _ . : -` replaced by `_`, at most 64 long.
fn normalize_code(raw: &str) -> Option<String> {
    let code: String = raw
        .trim()
        .chars()
        .take(64)
        .map(|c| c.to_ascii_lowercase())
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '.' | ':' | '-' => c,
            _ => '_',
        })
        .collect();
    (!code.is_empty()).then_some(code)
}

/// The code and message of an error body, in any of the three shapes.
fn upstream_error(map: &Map<String, Value>, secrets: &[&str]) -> (Option<String>, Option<String>) {
    let err = map.get("error");
    let nested = |key: &str| err.and_then(|e| e.get(key)).and_then(Value::as_str);
    let code_of = |s: &str| normalize_code(&scrub(s, secrets));
    let code = nested("code")
        .and_then(code_of)
        .or_else(|| err.and_then(Value::as_str).and_then(code_of))
        .or_else(|| map.get("code").and_then(Value::as_str).and_then(code_of))
        .or_else(|| {
            nested("type")
                .and_then(code_of)
                .filter(|t| is_transient_code(t))
        });
    let message = map
        .get("error_description")
        .and_then(Value::as_str)
        .or_else(|| nested("message"))
        .or_else(|| map.get("message").and_then(Value::as_str))
        .map(|m| clean(&scrub(m, secrets), MAX_MESSAGE_CHARS, false))
        .filter(|m| !m.is_empty());
    (code, message)
}

fn classify(status: u16, body: &Body, raw: &[u8], old_refresh: &Secret, sent: &[&str]) -> Failure {
    use Permanence::{Permanent, Transient};
    let secrets: Vec<&str> = std::iter::once(old_refresh.expose())
        .chain(sent.iter().copied())
        .collect();
    let success = (200..300).contains(&status);
    let (code, message) = match body {
        Body::Object(map) => upstream_error(map, &secrets),
        _ => (None, None),
    };
    // A 2xx body may hold new tokens: only a code we know, which is our own
    // constant rather than upstream's text, comes out of it.
    let (code, message) = match success {
        true => (
            code.filter(|c| is_permanent_code(c) || is_transient_code(c)),
            None,
        ),
        false => (code, message),
    };
    let is_object = matches!(body, Body::Object(_));
    let by_400 = |c: &String| {
        let p = if is_permanent_code(c) {
            Permanent
        } else {
            Transient
        };
        (p, c.clone())
    };
    let blank = raw.iter().all(u8::is_ascii_whitespace);
    let (permanence, our_code) = match status {
        200..=299 if !is_object => (Transient, "bad_json".to_owned()),
        200..=299 => match (&code, body) {
            (Some(c), _) => by_400(c),
            (None, Body::Object(map)) if has_error(map) => (Transient, "upstream_error".into()),
            (None, _) => (Transient, "no_access_token".into()),
        },
        400 => match &code {
            Some(c) => by_400(c),
            None if !is_object => (Transient, "bad_json".into()),
            None => (Transient, "http_400".into()),
        },
        401 => match &code {
            Some(c) if is_transient_code(c) => (Transient, c.clone()),
            Some(c) => (Permanent, c.clone()),
            // A gateway's or proxy's page, not the token endpoint's answer.
            None if matches!(body, Body::NotJson) && !blank => (Transient, "bad_json".into()),
            None => (Permanent, "unauthorized".into()),
        },
        _ => (Transient, format!("http_{status}")),
    };

    let mut text = format!("token endpoint answered HTTP {status}");
    match body {
        Body::NotJson if blank => text.push_str(" with an empty body"),
        Body::NotJson if success => text.push_str(&format!(
            " with a {}-byte body that is not JSON (not quoted: a 2xx body may hold new tokens)",
            raw.len()
        )),
        Body::NotJson if raw.len() <= MAX_EXCERPT_BODY => {
            let excerpt = clean(
                &scrub(&String::from_utf8_lossy(raw), &secrets),
                MAX_EXCERPT_CHARS,
                true,
            );
            text.push_str(&format!(" with a body that is not JSON: {excerpt:?}"));
        }
        Body::NotJson => {
            text.push_str(&format!(" with a {}-byte body that is not JSON", raw.len()))
        }
        Body::OtherJson => text.push_str(" with JSON that is not an object"),
        Body::Object(_) if our_code == "no_access_token" => {
            text.push_str(" without an access_token")
        }
        Body::Object(_) if success && code.is_none() => text.push_str(
            " with an error and no known code (not quoted: a 2xx body may hold new tokens)",
        ),
        Body::Object(_) => {}
    }
    if let Some(c) = &code {
        text.push_str(&format!(" ({c})"));
    }
    if let Some(m) = message {
        text.push_str(": ");
        text.push_str(&m);
    }
    Failure {
        permanence,
        code: our_code,
        message: text,
        retry_after_ms: None,
        status: Some(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Claims;
    use crate::provider::oidc_claims;
    use crate::provider::testkit::*;

    const K: ProviderKind = ProviderKind::OAuth2;

    /// Every permanent code, in every error shape, at 400 and 401 (and in a
    /// 200 with an `error` field), kills the credential with that code.
    #[test]
    fn permanent_codes_in_every_shape() {
        let shapes: [fn(&str) -> String; 4] = [
            |c| {
                format!(
                    r#"{{"error":{{"message":"nope","type":"invalid_request_error","param":null,"code":"{c}"}}}}"#
                )
            },
            |c| format!(r#"{{"error":"{c}","error_description":"nope"}}"#),
            |c| format!(r#"{{"code":"{c}"}}"#),
            |c| {
                format!(
                    r#"{{"error":"{}","error_description":"nope"}}"#,
                    c.to_uppercase()
                )
            },
        ];
        for code in PERMANENT_CODES {
            for (i, shape) in shapes.iter().enumerate() {
                let body = shape(code);
                for status in [400, 401, 200] {
                    if status == 200 && i == 2 {
                        continue; // no `error` field: covered below
                    }
                    let f = failure(K, status, &body, None);
                    assert_eq!(
                        (f.permanence, f.code.as_str(), f.status),
                        (Permanence::Permanent, code, Some(status)),
                        "{status} {body}"
                    );
                    assert!(
                        f.message.contains(&format!("HTTP {status}")),
                        "{}",
                        f.message
                    );
                }
            }
        }
    }

    #[test]
    fn classification() {
        use Permanence::{Permanent as P, Transient as T};
        let reused = include_str!("../../fixtures/oauth/openai_refresh_token_reused.json");
        let expired = include_str!("../../fixtures/oauth/openai_refresh_token_expired.json");
        let no_code = include_str!("../../fixtures/oauth/openai_401_no_code.json");
        let grant = include_str!("../../fixtures/oauth/rfc_invalid_grant.json");
        let invalid_request = include_str!("../../fixtures/oauth/rfc_invalid_request.json");
        let unavailable = include_str!("../../fixtures/oauth/rfc_temporarily_unavailable.json");
        let code_only = include_str!("../../fixtures/oauth/code_refresh_token_expired.json");
        let in_200 = include_str!("../../fixtures/oauth/error_in_200.json");
        let no_token = include_str!("../../fixtures/oauth/no_access_token.json");
        let rate = include_str!("../../fixtures/oauth/anthropic_rate_limit.json");
        let garbage = include_str!("../../fixtures/oauth/garbage.html");
        // (status, body, Retry-After) → (permanence, code, retry_after_ms)
        type Row = (
            u16,
            &'static str,
            Option<&'static str>,
            Permanence,
            &'static str,
            Option<i64>,
        );
        let table: &[Row] = &[
            (401, reused, None, P, "refresh_token_reused", None),
            (400, reused, None, P, "refresh_token_reused", None),
            (401, expired, None, P, "refresh_token_expired", None),
            (400, grant, None, P, "invalid_grant", None),
            (401, code_only, None, P, "refresh_token_expired", None),
            (200, code_only, None, P, "refresh_token_expired", None),
            (200, in_200, None, P, "refresh_token_revoked", None),
            // 401 without a code, or with one nobody knows: permanent.
            (401, no_code, None, P, "unauthorized", None),
            (401, "{}", None, P, "unauthorized", None),
            (401, "", None, P, "unauthorized", None),
            (401, " \r\n", None, P, "unauthorized", None),
            (401, "null", None, P, "unauthorized", None),
            (401, "[]", None, P, "unauthorized", None),
            // ... but a page that is not JSON comes from a gateway or proxy
            // in front of the token endpoint: transient.
            (401, garbage, None, T, "bad_json", None),
            (401, "Unauthorized", None, T, "bad_json", None),
            (401, r#"{"error":"invalid_gr"#, None, T, "bad_json", None),
            (401, invalid_request, None, P, "invalid_request", None),
            (
                401,
                r#"{"error":"weird_new_code"}"#,
                None,
                P,
                "weird_new_code",
                None,
            ),
            // ... unless the code is a known transient one.
            (
                401,
                unavailable,
                Some("7"),
                T,
                "temporarily_unavailable",
                Some(7_000),
            ),
            (401, rate, None, T, "rate_limit_error", None),
            (
                401,
                r#"{"error":{"code":"server_error"}}"#,
                None,
                T,
                "server_error",
                None,
            ),
            // 400 with an unknown code, or none: transient.
            (400, invalid_request, None, T, "invalid_request", None),
            (400, no_code, None, T, "http_400", None),
            (400, unavailable, None, T, "temporarily_unavailable", None),
            (400, garbage, None, T, "bad_json", None),
            (400, "[1,2]", None, T, "bad_json", None),
            // 2xx without a usable token.
            (200, no_token, None, T, "no_access_token", None),
            (200, "{}", None, T, "no_access_token", None),
            (
                200,
                r#"{"access_token":42}"#,
                None,
                T,
                "no_access_token",
                None,
            ),
            (
                200,
                r#"{"access_token":"ok","error":{"message":"hm"}}"#,
                None,
                T,
                "upstream_error",
                None,
            ),
            (
                200,
                r#"{"error":"slow_down"}"#,
                Some("3"),
                T,
                "slow_down",
                Some(3_000),
            ),
            (200, garbage, None, T, "bad_json", None),
            (201, "null", None, T, "bad_json", None),
            // A 2xx names a known code, or none of its text counts.
            (
                200,
                r#"{"error":"weird_new_code"}"#,
                None,
                T,
                "upstream_error",
                None,
            ),
            // Status-driven transients, whatever the body says.
            (408, "", None, T, "http_408", None),
            (429, rate, Some("120"), T, "http_429", Some(120_000)),
            (
                429,
                "",
                Some("Tue, 14 Nov 2023 22:14:20 GMT"),
                T,
                "http_429",
                Some(60_000),
            ),
            (500, grant, None, T, "http_500", None),
            (502, garbage, None, T, "http_502", None),
            (503, "", Some("bogus"), T, "http_503", None),
            (529, rate, None, T, "http_529", None),
            (403, grant, None, T, "http_403", None),
            (404, "", None, T, "http_404", None),
            (302, "", None, T, "http_302", None),
            // Retry-After rides along on permanent failures too.
            (
                401,
                reused,
                Some("30"),
                P,
                "refresh_token_reused",
                Some(30_000),
            ),
        ];
        for &(status, body, retry_after, permanence, code, retry_ms) in table {
            let f = failure(K, status, body, retry_after);
            assert_eq!(
                (f.permanence, f.code.as_str(), f.retry_after_ms, f.status),
                (permanence, code, retry_ms, Some(status)),
                "{status} {body:?} {retry_after:?}: {}",
                f.message
            );
            assert!(!f.message.contains(OLD_REFRESH), "{}", f.message);
        }
    }

    #[test]
    fn messages_quote_upstream_but_no_secrets() {
        let reused = include_str!("../../fixtures/oauth/openai_refresh_token_reused.json");
        let f = failure(K, 401, reused, None);
        assert_eq!(
            f.message,
            "token endpoint answered HTTP 401 (refresh_token_reused): Your refresh token has \
             already been used to generate a new access token. Please try signing in again."
        );

        let leaky = include_str!("../../fixtures/oauth/leaky_description.json");
        let f = failure(K, 400, leaky, None);
        assert!(
            f.message
                .contains("refresh_token *** is malformed near ***"),
            "{}",
            f.message
        );
        assert!(!f.message.contains("eyJ"), "{}", f.message);

        let garbage = include_str!("../../fixtures/oauth/garbage.html");
        let f = failure(K, 502, garbage, None);
        assert_eq!(
            f.message,
            "token endpoint answered HTTP 502 with a body that is not JSON: \
             \"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>\""
        );

        // Short garbage that echoes the token: scrubbed, ASCII only, cut.
        let body = format!("oops {OLD_REFRESH}\u{1}\u{e9}{}", "x ".repeat(75));
        let f = failure(K, 400, &body, None);
        assert!(f.message.contains("oops *** ?"), "{}", f.message);
        assert!(f.message.ends_with("...\""), "{}", f.message);
        assert!(!f.message.contains(OLD_REFRESH));

        // Long garbage: only its size.
        let f = failure(K, 503, &"<p>".repeat(100), None);
        assert!(
            f.message.ends_with("with a 300-byte body that is not JSON"),
            "{}",
            f.message
        );

        // Long upstream descriptions are cut at 200 characters.
        let body = format!(
            r#"{{"error":"invalid_request","error_description":"{}"}}"#,
            "word ".repeat(100)
        );
        let f = failure(K, 400, &body, None);
        let quoted = f.message.split(": ").nth(1).unwrap();
        assert!(
            quoted.chars().count() <= 203 && quoted.ends_with("..."),
            "{quoted}"
        );

        // A code carrying the token is scrubbed too.
        let body = format!(r#"{{"error":"{OLD_REFRESH}"}}"#);
        let f = failure(K, 401, &body, None);
        assert!(
            !f.code.contains(OLD_REFRESH) && !f.message.contains(OLD_REFRESH),
            "{f:?}"
        );
    }

    /// A 2xx body may carry new tokens, so no part of it reaches a failure:
    /// not truncated JSON, not HTML, not an `error` field's text, not an
    /// unknown code.
    #[test]
    fn a_2xx_body_is_never_quoted() {
        const FRAG: &str = "at_FRAG7q"; // short: no "looks like a token" rule catches it
        let bodies = [
            format!(r#"{{"access_token":"{FRAG}"#),
            format!(r#"{{"refresh_token":"{FRAG}","access_tok"#),
            format!("<html>{FRAG}</html>"),
            FRAG.to_string(),
            format!(r#"["{FRAG}"]"#),
            format!(r#""{FRAG}""#),
            format!(r#"{{"error":"{FRAG}","access_token":"{FRAG}"}}"#),
            format!(r#"{{"error":{{"message":"{FRAG}"}},"access_token":"{FRAG}"}}"#),
            format!(r#"{{"error":"invalid_grant","error_description":"{FRAG}"}}"#),
            format!(r#"{{"message":"{FRAG}","id_token":"{FRAG}"}}"#),
            format!(r#"{{"code":"{FRAG}"}}"#),
        ];
        for status in [200, 201, 204, 299] {
            for body in &bodies {
                let f = failure(K, status, body, None);
                assert!(
                    !f.message.to_lowercase().contains(&FRAG.to_lowercase())
                        && !f.code.contains(&FRAG.to_lowercase()),
                    "{status} {body}: {f:?}"
                );
            }
        }
        // A 2xx that carries a new refresh token but no usable access token
        // (or an `error` that says nothing): upstream has rotated, so the new
        // refresh token is kept — with no usable access token.
        for body in [
            format!(r#"{{"error_description":"{FRAG}","refresh_token":"{FRAG}"}}"#),
            format!(r#"{{"access_token":"","refresh_token":"{FRAG}"}}"#),
        ] {
            let resp = HttpResponse {
                status: 200,
                body: body.clone().into_bytes(),
                retry_after: None,
            };
            match parse_refresh(K, &resp, &Secret::new("rt-old"), 1_000) {
                Outcome::Success(t) => {
                    assert_eq!(t.refresh_token.expose(), FRAG, "{body}");
                    assert!(t.access_token.expose().is_empty(), "{body}");
                    assert_eq!(t.expires_at_ms, 1_000, "{body}");
                }
                other => panic!("{body}: the rotated refresh token was dropped: {other:?}"),
            }
        }
        // A body that names an error is judged by it, new refresh token or
        // not (attack2::a_2xx_invalid_grant_with_a_refresh_token_member_…).
        let resp = HttpResponse {
            status: 200,
            body: br#"{"error":"invalid_grant","refresh_token":"not-a-token"}"#.to_vec(),
            retry_after: None,
        };
        match parse_refresh(K, &resp, &Secret::new("rt-old"), 1_000) {
            Outcome::Failure(f) => assert_eq!(
                (f.permanence, f.code.as_str()),
                (Permanence::Permanent, "invalid_grant")
            ),
            other => panic!("a 2xx invalid_grant was taken as tokens: {other:?}"),
        }
        // The same refresh token back with nothing usable is no rotation.
        let resp = HttpResponse {
            status: 200,
            body: br#"{"access_token":"","refresh_token":"rt-old"}"#.to_vec(),
            retry_after: None,
        };
        assert!(matches!(
            parse_refresh(K, &resp, &Secret::new("rt-old"), 1_000),
            Outcome::Failure(_)
        ));
        // An empty `error` beside complete tokens says nothing.
        let resp = HttpResponse {
            status: 200,
            body: br#"{"access_token":"at-1","refresh_token":"rt-2","error":""}"#.to_vec(),
            retry_after: None,
        };
        assert!(matches!(
            parse_refresh(K, &resp, &Secret::new("rt-old"), 1_000),
            Outcome::Success(t) if t.access_token.expose() == "at-1"
        ));
        // A known code still classifies (it is our constant, not their text).
        let f = failure(
            K,
            200,
            &format!(r#"{{"error":"invalid_grant","error_description":"{FRAG}"}}"#),
            None,
        );
        assert_eq!(
            (f.permanence, f.code.as_str()),
            (Permanence::Permanent, "invalid_grant")
        );
        assert!(
            f.message.contains("HTTP 200") && f.message.contains("invalid_grant"),
            "{}",
            f.message
        );
    }

    /// Bodies of other statuses are quoted, with token values redacted.
    #[test]
    fn excerpts_redact_token_values() {
        let jwtish = jwt(r#"{"sub":"1"}"#);
        let cases = [
            (
                502,
                r#"{"access_token":"short1","refresh_token":"x"#.to_owned(),
            ),
            (
                502,
                "access_token=abc&refresh_token=def&id_token=ghi".to_owned(),
            ),
            (502, format!("<p>{}</p>", &jwtish[..12])),
            (
                502,
                format!("<p>{}</p>", "Abc-def_GhiJklMnoPqrStuVwxYzAbcDef"),
            ),
            (
                400,
                r#"{"error":"invalid_request","error_description":"bad access_token: short1"}"#
                    .to_owned(),
            ),
            (
                401,
                r#"{"error":"invalid_grant","error_description":"id_token='zz9' refused"}"#
                    .to_owned(),
            ),
        ];
        for (status, body) in cases {
            let f = failure(K, status, &body, None);
            for leak in ["short1", "=abc", "=def", "=ghi", "eyJ", "GhiJkl", "zz9"] {
                assert!(!f.message.contains(leak), "{body}: {}", f.message);
            }
            assert!(f.message.contains("***"), "{body}: {}", f.message);
        }
    }

    #[test]
    fn success_and_expiry() {
        let opaque = r#""access_token":"opaque""#;
        let with_exp = jwt(r#"{"exp":1700007200}"#);
        // (body, expected expires_at_ms)
        let table = [
            (
                format!(r#"{{{opaque},"expires_in":3600}}"#),
                NOW + 3_600_000,
            ),
            (format!(r#"{{{opaque},"expires_in":"120"}}"#), NOW + 120_000),
            (format!(r#"{{{opaque},"expires_in":" 90 "}}"#), NOW + 90_000),
            (format!(r#"{{{opaque},"expires_in":1.5}}"#), NOW + 1_500),
            // Floored at one second.
            (format!(r#"{{{opaque},"expires_in":0.2}}"#), NOW + 1_000),
            (format!(r#"{{{opaque},"expires_in":"0.001"}}"#), NOW + 1_000),
            // Capped at ten years.
            (
                format!(r#"{{{opaque},"expires_in":1e300}}"#),
                NOW + 315_360_000_000,
            ),
            // Unusable expires_in: the JWT exp, else the default.
            (
                format!(r#"{{"access_token":"{with_exp}","expires_in":0}}"#),
                1_700_007_200_000,
            ),
            (
                format!(r#"{{"access_token":"{with_exp}","expires_in":-5}}"#),
                1_700_007_200_000,
            ),
            (
                format!(r#"{{"access_token":"{with_exp}","expires_in":"soon"}}"#),
                1_700_007_200_000,
            ),
            (
                format!(r#"{{"access_token":"{with_exp}","expires_in":null}}"#),
                1_700_007_200_000,
            ),
            (
                format!(r#"{{"access_token":"{with_exp}"}}"#),
                1_700_007_200_000,
            ),
            (format!(r#"{{{opaque}}}"#), NOW + 3_600_000),
            (
                format!(r#"{{{opaque},"expires_in":"NaN"}}"#),
                NOW + 3_600_000,
            ),
            (
                format!(r#"{{{opaque},"expires_in":true}}"#),
                NOW + 3_600_000,
            ),
        ];
        for (body, want) in table {
            assert_eq!(success(K, 200, &body).expires_at_ms, want, "{body}");
        }
        for kind in ProviderKind::ALL {
            assert_eq!(default_lifetime_secs(kind), 3600);
        }
        let minimal = include_str!("../../fixtures/oauth/oauth2_minimal.json");
        let t = success(K, 200, minimal);
        assert_eq!(t.expires_at_ms, NOW + default_lifetime_secs(K) * 1000);
        assert_eq!(t.access_token.expose(), "opaque-access-token");
        assert_eq!((t.id_token, t.claims), (None, Claims::default()));
        // Any 2xx is a success; `error: null` is no error.
        success(K, 201, r#"{"access_token":"a","error":null}"#);
    }

    #[test]
    fn refresh_token_rotation() {
        // (body, refresh token after)
        let table = [
            (r#"{"access_token":"a","refresh_token":"rt_new"}"#, "rt_new"),
            (r#"{"access_token":"a"}"#, OLD_REFRESH),
            (r#"{"access_token":"a","refresh_token":""}"#, OLD_REFRESH),
            (r#"{"access_token":"a","refresh_token":null}"#, OLD_REFRESH),
            (r#"{"access_token":"a","refresh_token":7}"#, OLD_REFRESH),
        ];
        for (body, want) in table {
            assert_eq!(success(K, 200, body).refresh_token.expose(), want, "{body}");
        }
    }

    #[test]
    fn oidc_claims_from_id_token() {
        let id = jwt(r#"{"sub":"u-1","email":"a@example.com"}"#);
        let t = success(
            K,
            200,
            &format!(r#"{{"access_token":"a","id_token":"{id}"}}"#),
        );
        assert_eq!(t.id_token.as_ref().map(Secret::expose), Some(id.as_str()));
        assert_eq!(t.claims.email.as_deref(), Some("a@example.com"));
        assert_eq!(t.claims.user_id.as_deref(), Some("u-1"));
        assert_eq!(oidc_claims("not-a-jwt"), Claims::default());
    }

    /// A refusal that echoes the request (a gateway's, or a server's
    /// debug text) quotes none of the secrets it carried: the refresh
    /// token and every one given in `sent` (the client secret).
    #[test]
    fn an_echoed_refresh_request_is_scrubbed() {
        let resp = HttpResponse {
            status: 401,
            body: br#"{"error":"invalid_client","error_description":"client_secret hunter2 with rt-echo"}"#
                .to_vec(),
            retry_after: None,
        };
        match parse_answer(K, &resp, &Secret::new("rt-echo"), &["hunter2"], 1_000) {
            Outcome::Failure(f) => {
                assert_eq!(f.code, "invalid_client");
                assert!(
                    !f.message.contains("hunter2") && !f.message.contains("rt-echo"),
                    "{}",
                    f.message
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
