//! Reading (never verifying) JWT payloads: the expiry of an access token and
//! the claims of an id token. Signatures are not checked: the tokens came
//! from the token endpoint over TLS, and only the upstream API judges them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

/// The decoded payload (second segment) of a JWT, if it is one.
pub fn payload(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_header, body) = (parts.next()?, parts.next()?);
    parts.next()?; // a JWT has a signature segment, even if empty
                   // Some issuers pad; the URL-safe alphabet is the same either way.
    let bytes = URL_SAFE_NO_PAD.decode(body.trim_end_matches('=')).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.is_object().then_some(value)
}

/// The `exp` claim of a JWT, as unix milliseconds.
pub fn expiry_ms(token: &str) -> Option<i64> {
    let exp = payload(token)?.get("exp")?.as_f64()?;
    (exp.is_finite() && exp > 0.0 && exp < 1e13).then_some((exp * 1000.0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_exp() {
        assert_eq!(
            expiry_ms(&jwt(r#"{"exp":1700000000}"#)),
            Some(1_700_000_000_000)
        );
        assert_eq!(expiry_ms(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(expiry_ms(&jwt(r#"{"exp":-1}"#)), None);
        assert_eq!(expiry_ms(&jwt(r#"{}"#)), None);
    }

    #[test]
    fn garbage_is_none() {
        for t in [
            "",
            "abc",
            "a.b",
            "a.!!!.c",
            "a..c",
            &jwt("[1,2]"),
            &jwt("not json"),
        ] {
            assert_eq!(payload(t), None, "{t}");
        }
    }
}
