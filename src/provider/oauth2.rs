//! Any RFC 6749 server, configured per credential: its own token URL and
//! client id, form (default) or JSON body, client authentication none, post
//! or basic. Claims come from an OpenID id token when one is returned.

use super::{oidc_answer_claims, Dialect, Encoding, Endpoints};

/// There is no default endpoint: the credential must set `token_url`.
fn token_url(_endpoints: &Endpoints) -> Option<&str> {
    None
}

pub(crate) static DIALECT: Dialect = Dialect {
    token_url,
    client_id: None,
    needs_client_id: true,
    encoding: Encoding::Form,
    form_scope: None,
    claims: oidc_answer_claims,
};

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    use super::super::testkit::*;
    use super::super::*;
    use crate::credential::ProviderConfig;
    use crate::secret::Secret;

    const K: ProviderKind = ProviderKind::OAuth2;

    #[test]
    fn requests_by_encoding_and_client_auth() {
        let base = ProviderConfig {
            token_url: Some("https://idp.example.com/token".into()),
            client_id: Some("my client".into()),
            ..ProviderConfig::new(K)
        };
        let secret = Some(Secret::new("s3cr:et&/"));
        let basic = format!("Basic {}", STANDARD.encode("my+client:s3cr%3Aet%26%2F"));
        let rt = [
            ("grant_type", "refresh_token"),
            ("refresh_token", OLD_REFRESH),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = rt.to_vec();
            v.extend_from_slice(extra);
            expect(&v)
        };
        // (config, content type, fields, Authorization header)
        /// (config, content type, fields, Authorization header)
        type Row = (
            ProviderConfig,
            &'static str,
            Vec<(String, String)>,
            Option<String>,
        );
        let table: Vec<Row> = vec![
            (
                base.clone(),
                "application/x-www-form-urlencoded",
                with(&[("client_id", "my client")]),
                None,
            ),
            (
                ProviderConfig {
                    encoding: Some(Encoding::Json),
                    ..base.clone()
                },
                "application/json",
                with(&[("client_id", "my client")]),
                None,
            ),
            (
                ProviderConfig {
                    client_secret: secret.clone(),
                    ..base.clone()
                },
                "application/x-www-form-urlencoded",
                with(&[("client_id", "my client"), ("client_secret", "s3cr:et&/")]),
                None,
            ),
            (
                ProviderConfig {
                    client_secret: secret.clone(),
                    client_auth: Some(ClientAuth::None),
                    ..base.clone()
                },
                "application/x-www-form-urlencoded",
                with(&[("client_id", "my client")]),
                None,
            ),
            (
                ProviderConfig {
                    client_secret: secret.clone(),
                    client_auth: Some(ClientAuth::Basic),
                    ..base.clone()
                },
                "application/x-www-form-urlencoded",
                with(&[]),
                Some(basic.clone()),
            ),
            (
                ProviderConfig {
                    client_secret: secret.clone(),
                    client_auth: Some(ClientAuth::Basic),
                    encoding: Some(Encoding::Json),
                    scope: Some("offline_access api".into()),
                    ..base.clone()
                },
                "application/json",
                with(&[("scope", "offline_access api")]),
                Some(basic),
            ),
            (
                ProviderConfig {
                    scope: Some("a b".into()),
                    ..base.clone()
                },
                "application/x-www-form-urlencoded",
                with(&[("client_id", "my client"), ("scope", "a b")]),
                None,
            ),
        ];
        for (c, content_type, want, auth) in table {
            let req = build(&c);
            assert_eq!(header(&req, "Content-Type"), Some(content_type), "{c:?}");
            assert_eq!(pairs(&req), want, "{c:?}");
            assert_eq!(
                header(&req, "Authorization").map(str::to_owned),
                auth,
                "{c:?}"
            );
        }
        // The form body really is percent-encoded.
        let req = build(&ProviderConfig {
            client_secret: secret,
            ..base
        });
        let body = String::from_utf8(req.body).unwrap();
        assert!(
            body.contains("client_id=my+client") && body.contains("client_secret=s3cr%3Aet%26%2F"),
            "{body}"
        );
    }

    #[test]
    fn needs_token_url_and_client_id_and_allows_loopback_http() {
        let rt = Secret::new(OLD_REFRESH);
        let e = Endpoints::default();
        let url = |u: &str| ProviderConfig {
            token_url: Some(u.into()),
            client_id: Some("c".into()),
            ..ProviderConfig::new(K)
        };
        let table = [
            (
                ProviderConfig::new(K),
                Err("oauth2 credentials need a token_url"),
            ),
            (
                ProviderConfig {
                    token_url: Some("https://idp.example/t".into()),
                    ..ProviderConfig::new(K)
                },
                Err("oauth2 credentials need a client_id"),
            ),
            (
                url("http://127.0.0.1:4444/oauth/token"),
                Ok("http://127.0.0.1:4444/oauth/token"),
            ),
            (url("http://[::1]:4444/t"), Ok("http://[::1]:4444/t")),
            (url("http://localhost/t"), Ok("http://localhost/t")),
            (url("https://idp.example/t"), Ok("https://idp.example/t")),
        ];
        for (c, want) in table {
            let got = refresh_request(&c, &rt, &e).map(|r| r.url);
            assert_eq!(got.as_deref().map_err(String::as_str), want, "{c:?}");
        }
        let err = refresh_request(&url("http://idp.example/t"), &rt, &e).unwrap_err();
        assert!(
            err.contains("plain http://") && err.contains("idp.example"),
            "{err}"
        );
    }

    #[test]
    fn success_and_failures() {
        let t = success(
            K,
            200,
            r#"{"access_token":"a","refresh_token":"r2","expires_in":"60"}"#,
        );
        assert_eq!(
            (t.refresh_token.expose(), t.expires_at_ms),
            ("r2", NOW + 60_000)
        );
        for code in PERMANENT_CODES {
            let f = failure(K, 400, &format!(r#"{{"error":"{code}"}}"#), None);
            assert_eq!(
                (f.permanence, f.code.as_str()),
                (Permanence::Permanent, code)
            );
        }
    }
}
