//! Building the refresh grant (RFC 6749 §6) from a credential's settings:
//! the settings check, client authentication and body encoding.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

use super::kind::dialect;
use super::{check_url, form_component, form_encode, ClientAuth, Encoding, Endpoints, HttpRequest};
use crate::credential::ProviderConfig;
use crate::secret::Secret;

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.trim().is_empty())
}

/// The client authentication in effect: the configured one, else `post`
/// when a client secret is set, else `none`.
pub fn effective_client_auth(cfg: &ProviderConfig) -> ClientAuth {
    cfg.client_auth.unwrap_or(
        if non_empty(cfg.client_secret.as_ref().map(Secret::expose)).is_some() {
            ClientAuth::Post
        } else {
            ClientAuth::None
        },
    )
}

/// Checks a credential's token endpoint settings on their own: the
/// `token_url` rule of [`check_url`], `token_url` + `client_id` for
/// `oauth2`, `client_id` for `google`, and a client secret (plus a client
/// id for `basic`) when the client authentication needs one. The error
/// names the setting, never a secret.
pub fn check_config(cfg: &ProviderConfig) -> Result<(), String> {
    let (kind, d) = (cfg.kind, dialect(cfg.kind));
    match &cfg.token_url {
        Some(url) => check_url(url)?,
        None if (d.token_url)(&Endpoints::default()).is_none() => {
            return Err(format!("{kind} credentials need a token_url"));
        }
        None => {}
    }
    let client_id = non_empty(cfg.client_id.as_deref());
    if d.needs_client_id && client_id.is_none() {
        return Err(format!("{kind} credentials need a client_id"));
    }
    let has_secret = non_empty(cfg.client_secret.as_ref().map(Secret::expose)).is_some();
    match effective_client_auth(cfg) {
        ClientAuth::None => Ok(()),
        auth @ (ClientAuth::Post | ClientAuth::Basic) if !has_secret => Err(format!(
            "client_auth {} needs a client_secret",
            auth.as_str()
        )),
        ClientAuth::Basic if client_id.or(d.client_id).is_none() => {
            Err("client_auth basic needs a client_id".into())
        }
        _ => Ok(()),
    }
}

/// Builds the refresh grant (RFC 6749 §6) for a credential.
///
/// The token URL is the credential's `token_url`, else the provider's entry
/// in `endpoints` (`oauth2` has none). The body is the provider's encoding
/// unless the credential sets one; the client authenticates as
/// [`effective_client_auth`] says (`basic`:
/// `Authorization: Basic base64(urlenc(id):urlenc(secret))`, and then no
/// client id in the body). Every request carries `Content-Type` and
/// `Accept: application/json`.
///
/// The error explains a configuration problem (see [`check_config`]) and
/// never contains a secret.
pub fn refresh_request(
    cfg: &ProviderConfig,
    refresh_token: &Secret,
    endpoints: &Endpoints,
) -> Result<HttpRequest, String> {
    if refresh_token.expose().trim().is_empty() {
        check_config(cfg)?;
        return Err("the credential has no refresh token".into());
    }
    let grant = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose()),
    ];
    grant_request(cfg, &grant, endpoints, true)
}

/// Builds any grant to a credential's token endpoint: `grant` (the
/// grant's own fields, in order), then the client authentication of
/// [`effective_client_auth`], then — `with_scope` — the scope, all in the
/// credential's encoding, as [`refresh_request`] describes. The
/// authorization-code exchange of `tokenwarden login` is built here too, so
/// client authentication and encoding are decided in one place.
pub fn grant_request(
    cfg: &ProviderConfig,
    grant: &[(&str, &str)],
    endpoints: &Endpoints,
    with_scope: bool,
) -> Result<HttpRequest, String> {
    check_config(cfg)?;
    let (kind, d) = (cfg.kind, dialect(cfg.kind));
    let url = match &cfg.token_url {
        Some(url) => url.as_str(),
        None => (d.token_url)(endpoints)
            .ok_or_else(|| format!("{kind} credentials need a token_url"))?,
    };
    check_url(url)?;
    let client_id = non_empty(cfg.client_id.as_deref()).or(d.client_id);
    let secret = non_empty(cfg.client_secret.as_ref().map(Secret::expose));
    let encoding = cfg.encoding.unwrap_or(d.encoding);

    let mut fields = grant.to_vec();
    let mut headers = vec![];
    match (effective_client_auth(cfg), client_id, secret) {
        (ClientAuth::Basic, Some(id), Some(secret)) => {
            let pair = format!("{}:{}", form_component(id), form_component(secret));
            headers.push((
                "Authorization".to_owned(),
                format!("Basic {}", STANDARD.encode(pair)),
            ));
        }
        (ClientAuth::Post, id, Some(secret)) => {
            fields.extend(id.map(|id| ("client_id", id)));
            fields.push(("client_secret", secret));
        }
        // `check_config` has refused `basic`/`post` without what they need.
        (_, id, _) => fields.extend(id.map(|id| ("client_id", id))),
    }
    let default_scope = if encoding == Encoding::Form {
        d.form_scope
    } else {
        None
    };
    if with_scope {
        fields.extend(
            non_empty(cfg.scope.as_deref())
                .or(default_scope)
                .map(|s| ("scope", s)),
        );
    }

    let (content_type, body) = match encoding {
        Encoding::Form => (
            "application/x-www-form-urlencoded",
            form_encode(&fields).into_bytes(),
        ),
        Encoding::Json => {
            let map: Map<String, Value> = fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect();
            (
                "application/json",
                Value::Object(map).to_string().into_bytes(),
            )
        }
    };
    headers.insert(0, ("Content-Type".to_owned(), content_type.to_owned()));
    headers.insert(1, ("Accept".to_owned(), "application/json".to_owned()));
    Ok(HttpRequest {
        method: "POST",
        url: url.to_owned(),
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::testkit::*;
    use crate::provider::ProviderKind;

    const K: ProviderKind = ProviderKind::OAuth2;

    fn cfg(kind: ProviderKind) -> ProviderConfig {
        ProviderConfig::new(kind)
    }

    #[test]
    fn config_errors() {
        let url = Some("https://idp.example.com/token".to_owned());
        let id = Some("client".to_owned());
        let secret = Some(Secret::new("s3cret-value"));
        let table: Vec<(ProviderConfig, Option<&str>)> = vec![
            (cfg(ProviderKind::Codex), None),
            (cfg(ProviderKind::Claude), None),
            (
                cfg(ProviderKind::Google),
                Some("google credentials need a client_id"),
            ),
            (
                ProviderConfig {
                    client_id: id.clone(),
                    ..cfg(ProviderKind::Google)
                },
                None,
            ),
            (cfg(K), Some("oauth2 credentials need a token_url")),
            (
                ProviderConfig {
                    token_url: url.clone(),
                    ..cfg(K)
                },
                Some("oauth2 credentials need a client_id"),
            ),
            (
                ProviderConfig {
                    token_url: url.clone(),
                    client_id: Some("  ".into()),
                    ..cfg(K)
                },
                Some("need a client_id"),
            ),
            (
                ProviderConfig {
                    token_url: url.clone(),
                    client_id: id.clone(),
                    ..cfg(K)
                },
                None,
            ),
            (
                ProviderConfig {
                    token_url: url.clone(),
                    client_id: id.clone(),
                    client_auth: Some(ClientAuth::Basic),
                    ..cfg(K)
                },
                Some("client_auth basic needs a client_secret"),
            ),
            (
                ProviderConfig {
                    token_url: url.clone(),
                    client_id: id.clone(),
                    client_auth: Some(ClientAuth::Post),
                    ..cfg(K)
                },
                Some("client_auth post needs a client_secret"),
            ),
            (
                ProviderConfig {
                    token_url: url.clone(),
                    client_id: id.clone(),
                    client_secret: secret.clone(),
                    client_auth: Some(ClientAuth::Basic),
                    ..cfg(K)
                },
                None,
            ),
            (
                ProviderConfig {
                    token_url: Some("http://idp.example.com/token".into()),
                    client_id: id.clone(),
                    ..cfg(K)
                },
                Some("plain http://"),
            ),
            (
                ProviderConfig {
                    token_url: Some("not a url".into()),
                    ..cfg(ProviderKind::Codex)
                },
                Some("whitespace"),
            ),
            (
                ProviderConfig {
                    token_url: Some("http://127.0.0.1:9/t".into()),
                    ..cfg(ProviderKind::Codex)
                },
                None,
            ),
        ];
        for (c, want) in table {
            let got = check_config(&c);
            match want {
                None => assert!(got.is_ok(), "{c:?}: {got:?}"),
                Some(text) => {
                    let err = got.expect_err(text);
                    assert!(err.contains(text), "{err}");
                    assert!(!err.contains("s3cret"), "{err}");
                    let built =
                        refresh_request(&c, &Secret::new(OLD_REFRESH), &Endpoints::default());
                    assert_eq!(built.err(), Some(err));
                }
            }
        }
    }

    #[test]
    fn request_url_and_headers() {
        let endpoints = Endpoints {
            codex_token: "http://127.0.0.1:1/codex".into(),
            claude_token: "http://127.0.0.1:1/claude".into(),
            google_token: "http://127.0.0.1:1/google".into(),
            ..Endpoints::default()
        };
        let rt = Secret::new(OLD_REFRESH);
        let google = ProviderConfig {
            client_id: Some("g".into()),
            ..cfg(ProviderKind::Google)
        };
        for (c, url) in [
            (cfg(ProviderKind::Codex), "http://127.0.0.1:1/codex"),
            (cfg(ProviderKind::Claude), "http://127.0.0.1:1/claude"),
            (google.clone(), "http://127.0.0.1:1/google"),
            (
                ProviderConfig {
                    token_url: Some("https://mirror.example/t".into()),
                    ..google
                },
                "https://mirror.example/t",
            ),
        ] {
            let req = refresh_request(&c, &rt, &endpoints).unwrap();
            assert_eq!((req.method, req.url.as_str()), ("POST", url));
            assert_eq!(header(&req, "Accept"), Some("application/json"));
            assert!(header(&req, "Content-Type").is_some());
            assert!(!format!("{req:?}").contains(OLD_REFRESH));
        }
        // An environment override that is not https for a remote host is refused.
        let bad = Endpoints {
            codex_token: "http://example.com/t".into(),
            ..Endpoints::default()
        };
        assert!(refresh_request(&cfg(ProviderKind::Codex), &rt, &bad).is_err());
        // No refresh token, no request.
        let err =
            refresh_request(&cfg(ProviderKind::Codex), &Secret::new(" "), &endpoints).unwrap_err();
        assert!(err.contains("no refresh token"), "{err}");
    }
}
