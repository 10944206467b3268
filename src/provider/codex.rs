//! OpenAI's auth server, as the Codex CLI uses it: a JSON refresh grant with
//! the CLI's public client id (a form grant with `scope=openid profile
//! email` is accepted too), and account details in the id token.

use serde_json::{Map, Value};

use super::{str_at, Dialect, Encoding, Endpoints};
use crate::credential::Claims;
use crate::jwt;

/// The Codex CLI's public OAuth client id.
pub const CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";

/// The scope sent with a form-encoded grant when the credential sets none.
pub const FORM_SCOPE: &str = "openid profile email";

// Sign-in as the Codex CLI does it (`tokenwarden login codex`). Source:
// openai/codex, `codex-rs/login/src/server.rs` (`DEFAULT_ISSUER`,
// `DEFAULT_PORT`, `FALLBACK_PORT`, the redirect URI and
// `build_authorize_url`'s query, `exchange_code_for_tokens`' form body) and
// `codex-rs/login/src/device_code_auth.rs` (the device flow); the
// originator is `DEFAULT_ORIGINATOR` of its default client. The fixture
// `fixtures/login/codex_authorize.txt` is the authorize URL they build.

/// The Codex CLI's issuer: `/oauth/authorize`, `/oauth/token` and the
/// device endpoints hang off it.
pub const ISSUER: &str = "https://auth.openai.com";

/// The loopback port registered for the Codex client id (`DEFAULT_PORT`);
/// the redirect URI must name exactly it (or [`FALLBACK_PORT`]).
pub const REDIRECT_PORT: u16 = 1455;
/// The second registered port (`FALLBACK_PORT`), tried when 1455 is busy.
pub const FALLBACK_PORT: u16 = 1457;
/// The redirect URI's host: `localhost`, as registered.
pub const REDIRECT_HOST: &str = "localhost";
/// The redirect URI's path.
pub const REDIRECT_PATH: &str = "/auth/callback";

/// The scopes the Codex CLI asks for.
pub const SCOPES: &str =
    "openid profile email offline_access api.connectors.read api.connectors.invoke";

/// The extra authorize parameters, in the Codex CLI's order (after
/// `code_challenge_method`; `state` goes between them and `originator`).
pub const AUTHORIZE_EXTRA: [(&str, &str); 2] = [
    ("id_token_add_organizations", "true"),
    ("codex_cli_simplified_flow", "true"),
];

/// The `originator` the Codex CLI names itself by.
pub const ORIGINATOR: &str = "codex_cli_rs";

/// The id token claim that holds the ChatGPT account details.
const AUTH_CLAIM: &str = "https://api.openai.com/auth";
/// The id token claim that holds the profile (e-mail) on some tokens.
const PROFILE_CLAIM: &str = "https://api.openai.com/profile";

fn token_url(endpoints: &Endpoints) -> Option<&str> {
    Some(&endpoints.codex_token)
}

fn answer_claims(_body: &Map<String, Value>, id_token: Option<&str>) -> Claims {
    id_token.map(id_token_claims).unwrap_or_default()
}

pub(crate) static DIALECT: Dialect = Dialect {
    token_url,
    client_id: Some(CLIENT_ID),
    needs_client_id: false,
    encoding: Encoding::Json,
    form_scope: Some(FORM_SCOPE),
    claims: answer_claims,
};

/// The ChatGPT account details in a Codex id token (payload read, signature
/// not checked): `email` (or the profile claim's `email`), and from the
/// `https://api.openai.com/auth` claim `chatgpt_account_id`,
/// `chatgpt_plan_type` and `chatgpt_user_id` (or `user_id`). Anything that is
/// not a JWT gives empty claims.
pub fn id_token_claims(id_token: &str) -> Claims {
    let Some(p) = jwt::payload(id_token) else {
        return Claims::default();
    };
    Claims {
        email: str_at(&p, &["email"]).or_else(|| str_at(&p, &[PROFILE_CLAIM, "email"])),
        account_id: str_at(&p, &[AUTH_CLAIM, "chatgpt_account_id"]),
        plan_type: str_at(&p, &[AUTH_CLAIM, "chatgpt_plan_type"]),
        user_id: str_at(&p, &[AUTH_CLAIM, "chatgpt_user_id"])
            .or_else(|| str_at(&p, &[AUTH_CLAIM, "user_id"])),
        organization_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::*;
    use super::*;
    use crate::credential::ProviderConfig;

    const K: ProviderKind = ProviderKind::Codex;

    #[test]
    fn requests() {
        let base = || ProviderConfig::new(K);
        let rt = [
            ("grant_type", "refresh_token"),
            ("refresh_token", OLD_REFRESH),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = rt.to_vec();
            v.extend_from_slice(extra);
            expect(&v)
        };
        // (config, content type, fields)
        let table = [
            (
                base(),
                "application/json",
                with(&[("client_id", CLIENT_ID)]),
            ),
            (
                ProviderConfig {
                    encoding: Some(Encoding::Form),
                    ..base()
                },
                "application/x-www-form-urlencoded",
                with(&[("client_id", CLIENT_ID), ("scope", "openid profile email")]),
            ),
            (
                ProviderConfig {
                    encoding: Some(Encoding::Form),
                    scope: Some("openid".into()),
                    client_id: Some("app_other".into()),
                    ..base()
                },
                "application/x-www-form-urlencoded",
                with(&[("client_id", "app_other"), ("scope", "openid")]),
            ),
            (
                ProviderConfig {
                    encoding: Some(Encoding::Json),
                    ..base()
                },
                "application/json",
                with(&[("client_id", CLIENT_ID)]),
            ),
        ];
        for (c, content_type, want) in table {
            let req = build(&c);
            assert_eq!(req.url, "https://auth.openai.com/oauth/token");
            assert_eq!(header(&req, "Content-Type"), Some(content_type));
            assert_eq!(pairs(&req), want, "{c:?}");
        }
        let body = String::from_utf8(
            build(&ProviderConfig {
                encoding: Some(Encoding::Form),
                ..base()
            })
            .body,
        )
        .unwrap();
        assert!(body.ends_with("scope=openid+profile+email"), "{body}");
    }

    #[test]
    fn success_with_rotation_and_claims() {
        let t = success(
            K,
            200,
            include_str!("../../fixtures/oauth/codex_success.json"),
        );
        assert_eq!(t.refresh_token.expose(), "rt_rotated_2");
        assert!(t.access_token.expose().starts_with("eyJ"));
        assert!(t.id_token.is_some());
        assert_eq!(
            t.expires_at_ms,
            NOW + 864_000_000,
            "expires_in wins over the JWT exp"
        );
        assert_eq!(
            t.claims,
            Claims {
                account_id: Some("acc-1234".into()),
                email: Some("dev@example.com".into()),
                plan_type: Some("plus".into()),
                user_id: Some("user-abcd".into()),
                organization_id: None,
            }
        );
    }

    #[test]
    fn success_without_refresh_token_keeps_the_old_one() {
        let t = success(
            K,
            200,
            include_str!("../../fixtures/oauth/codex_success_no_refresh.json"),
        );
        assert_eq!(t.refresh_token.expose(), OLD_REFRESH);
        assert_eq!(
            t.expires_at_ms, 1_700_860_000_000,
            "the access token's JWT exp"
        );
        assert_eq!(t.claims.account_id.as_deref(), Some("acc-1234"));
    }

    #[test]
    fn reuse_is_permanent() {
        let body = include_str!("../../fixtures/oauth/openai_refresh_token_reused.json");
        for status in [400, 401] {
            let f = failure(K, status, body, None);
            assert_eq!(
                (f.permanence, f.code.as_str()),
                (Permanence::Permanent, "refresh_token_reused")
            );
        }
    }

    #[test]
    fn id_token_claim_variants() {
        let auth = AUTH_CLAIM;
        // (payload, expected claims)
        let table = [
            (
                format!(
                    r#"{{"{PROFILE_CLAIM}":{{"email":"p@example.com"}},"{auth}":{{"user_id":"u-2"}}}}"#
                ),
                Claims {
                    email: Some("p@example.com".into()),
                    user_id: Some("u-2".into()),
                    ..Claims::default()
                },
            ),
            (
                format!(
                    r#"{{"email":"top@example.com","{PROFILE_CLAIM}":{{"email":"p@example.com"}}}}"#
                ),
                Claims {
                    email: Some("top@example.com".into()),
                    ..Claims::default()
                },
            ),
            (
                format!(
                    r#"{{"email":"","{auth}":{{"chatgpt_account_id":7,"chatgpt_plan_type":"pro"}}}}"#
                ),
                Claims {
                    plan_type: Some("pro".into()),
                    ..Claims::default()
                },
            ),
            (r#"{"sub":"x"}"#.to_owned(), Claims::default()),
        ];
        for (payload, want) in table {
            assert_eq!(id_token_claims(&jwt(&payload)), want, "{payload}");
        }
        assert_eq!(id_token_claims("garbage"), Claims::default());
        // A success without an id token has no claims (the stored ones stay).
        assert_eq!(
            success(K, 200, r#"{"access_token":"a"}"#).claims,
            Claims::default()
        );
    }
}
