//! tokenwarden's own JSON record: strict (an unknown field is an error),
//! with every provider setting.

use serde_json::{Map, Value};

use super::error::{ImportError, Result};
use super::fields::{bad, opt_secret, opt_str, opt_string, opt_time, req_secret, type_name};
use super::{Draft, ImportOptions};
use crate::credential::{Claims, NewCredential, ProviderConfig};
use crate::provider::{self, codex, ClientAuth, Encoding, ProviderKind};

pub(super) const TOKENWARDEN_FIELDS: [&str; 12] = [
    "id",
    "provider",
    "refresh_token",
    "access_token",
    "id_token",
    "expires_at",
    "token_url",
    "client_id",
    "client_secret",
    "scope",
    "encoding",
    "client_auth",
];

/// Latest unix second accepted for `expires_at` (9999-12-31T23:59:59Z):
/// anything larger is probably milliseconds.
const MAX_UNIX_SECS: f64 = 253_402_300_799.0;

/// `expires_at`: unix seconds (number or digits) or an RFC 3339 string; 0
/// means unknown.
fn expires_at(map: &Map<String, Value>) -> Result<Option<i64>> {
    const FIELD: &str = "expires_at";
    let secs = match map.get(FIELD) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) if s.trim().bytes().all(|b| b.is_ascii_digit()) => {
            if s.trim().is_empty() {
                return Ok(None);
            }
            s.trim().parse::<f64>().ok()
        }
        Some(Value::String(_)) => return opt_time(map, FIELD, FIELD),
        Some(other) => {
            return Err(bad(
                FIELD,
                format!(
                    "expected unix seconds or an RFC 3339 string, found {}",
                    type_name(other)
                ),
            ))
        }
    };
    match secs {
        Some(0.0) => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_UNIX_SECS => Ok(Some((s * 1000.0) as i64)),
        Some(s) if s > MAX_UNIX_SECS => Err(bad(
            FIELD,
            "too large for unix seconds (milliseconds?); give unix seconds or an RFC 3339 string",
        )),
        _ => Err(bad(
            FIELD,
            "must be positive unix seconds or an RFC 3339 string",
        )),
    }
}

/// A key name fit to quote in an error: short, and scrubbed in case
/// someone pasted a token where a name belongs.
fn quote_key(key: &str) -> String {
    provider::scrub(&key.chars().take(64).collect::<String>(), &[])
}

pub(super) fn tokenwarden(map: &Map<String, Value>, opts: &ImportOptions) -> Result<Draft> {
    if let Some(key) = map
        .keys()
        .find(|k| !TOKENWARDEN_FIELDS.contains(&k.as_str()))
    {
        return Err(ImportError::UnknownField(quote_key(key)));
    }
    let named = opt_str(map, "provider", "provider")?
        .map(|name| {
            ProviderKind::parse(name).ok_or_else(|| {
                bad(
                    "provider",
                    "unknown provider; use codex, claude, google or oauth2",
                )
            })
        })
        .transpose()?;
    let kind = opts
        .provider
        .or(named)
        .ok_or_else(|| ImportError::MissingField("provider (or pass --provider)".into()))?;
    let encoding = opt_str(map, "encoding", "encoding")?
        .map(|s| Encoding::parse(s).ok_or_else(|| bad("encoding", "use form or json")))
        .transpose()?;
    let client_auth = opt_str(map, "client_auth", "client_auth")?
        .map(|s| ClientAuth::parse(s).ok_or_else(|| bad("client_auth", "use none, post or basic")))
        .transpose()?;
    let provider = ProviderConfig {
        kind,
        token_url: opt_string(map, "token_url", "token_url")?,
        client_id: opt_string(map, "client_id", "client_id")?,
        client_secret: opt_secret(map, "client_secret", "client_secret")?,
        scope: opt_string(map, "scope", "scope")?,
        encoding,
        client_auth,
    };
    check_settings(&provider)?;

    let id_token = opt_secret(map, "id_token", "id_token")?;
    let claims = match (&id_token, kind) {
        (Some(t), ProviderKind::Codex) => codex::id_token_claims(t.expose()),
        (Some(t), _) => provider::oidc_claims(t.expose()),
        (None, _) => Claims::default(),
    };
    Ok(Draft {
        record_id: opt_string(map, "id", "id")?,
        cred: NewCredential {
            id: String::new(),
            provider,
            refresh_token: req_secret(map, "refresh_token", "refresh_token")?,
            access_token: opt_secret(map, "access_token", "access_token")?,
            id_token,
            expires_at_ms: expires_at(map)?,
            claims,
            last_refresh_ms: None,
            api_key: None,
        },
    })
}

/// The provider settings a tokenwarden record needs, with the field named.
fn check_settings(cfg: &ProviderConfig) -> Result<()> {
    let needs_url = cfg.kind == ProviderKind::OAuth2;
    let needs_id = matches!(cfg.kind, ProviderKind::OAuth2 | ProviderKind::Google);
    if needs_url && cfg.token_url.is_none() {
        return Err(ImportError::MissingField("token_url".into()));
    }
    if needs_id && cfg.client_id.is_none() {
        return Err(ImportError::MissingField("client_id".into()));
    }
    if let Some(url) = &cfg.token_url {
        provider::check_url(url).map_err(|why| bad("token_url", why))?;
    }
    provider::check_config(cfg).map_err(ImportError::BadSettings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::testkit::*;
    use crate::secret::Secret;

    #[test]
    fn tokenwarden_records() {
        let c = one(include_str!(
            "../../fixtures/import/tokenwarden_oauth2.json"
        ));
        assert_eq!(c.id, "my-idp");
        assert_eq!(
            c.provider,
            ProviderConfig {
                kind: ProviderKind::OAuth2,
                token_url: Some("https://idp.example.com/oauth/token".into()),
                client_id: Some("cli".into()),
                client_secret: Some(Secret::new("s3cret")),
                scope: Some("offline_access".into()),
                encoding: Some(Encoding::Form),
                client_auth: Some(ClientAuth::Basic),
            }
        );
        assert_eq!(c.expires_at_ms, Some(1_700_003_600_000));
        assert_eq!(
            c.access_token.as_ref().map(Secret::expose),
            Some("at-oauth2")
        );

        let v = import(include_str!("../../fixtures/import/tokenwarden_array.json")).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].id.as_str(), v[0].provider.kind),
            ("a", ProviderKind::Claude)
        );
        assert_eq!(
            (v[0].access_token.as_ref(), v[0].expires_at_ms),
            (None, None)
        );
        assert_eq!(
            (v[1].id.as_str(), v[1].provider.kind),
            ("b", ProviderKind::Google)
        );
        assert_eq!(v[1].expires_at_ms, Some(NOW + 3_600_000));
        assert_eq!(v[1].claims.email.as_deref(), Some("dev@gmail.com"));
        assert_eq!(v[1].claims.user_id.as_deref(), Some("109876543210"));

        // expires_at forms; dropped without an access token.
        let table = [
            (r#"1700003600"#, Some(1_700_003_600_000)),
            (r#"1700003600.5"#, Some(1_700_003_600_500)),
            (r#""1700003600""#, Some(1_700_003_600_000)),
            (r#""2023-11-14T23:13:20+01:00""#, Some(NOW)),
            (r#"0"#, None),
            (r#""""#, None),
            (r#"null"#, None),
        ];
        for (value, want) in table {
            let text = format!(
                r#"{{"id":"x","provider":"codex","refresh_token":"r","access_token":"a","expires_at":{value}}}"#
            );
            assert_eq!(one(&text).expires_at_ms, want, "{value}");
            let text = format!(
                r#"{{"id":"x","provider":"codex","refresh_token":"r","expires_at":{value}}}"#
            );
            assert_eq!(one(&text).expires_at_ms, None, "{value}");
        }
        // A UTF-8 byte order mark is fine; blank strings are absent.
        let c = one("\u{feff}{\"id\":\"x\",\"provider\":\"codex\",\"refresh_token\":\" r \",\"access_token\":\"  \"}");
        assert_eq!((c.refresh_token.expose(), c.access_token), ("r", None));
    }
}
