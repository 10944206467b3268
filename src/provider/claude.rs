//! Anthropic's OAuth server, as Claude Code uses it: a JSON refresh grant
//! with Claude Code's public client id; account details in the answer's
//! `account` and `organization` objects.

use serde_json::{Map, Value};

use super::{str_at, Dialect, Encoding, Endpoints};
use crate::credential::Claims;

/// Claude Code's public OAuth client id.
///
/// This and the sign-in constants below are read from Claude Code's
/// published package (npm `@anthropic-ai/claude-code` 1.0.100, `cli.js`:
/// the production OAuth config object with `CLIENT_ID`,
/// `CLAUDE_AI_AUTHORIZE_URL`, `TOKEN_URL`, `MANUAL_REDIRECT_URL`, `SCOPES`,
/// and the functions that build the authorize URL and the code exchange).
pub const CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";

/// Where Claude Code sends a claude.ai subscriber to sign in.
pub const AUTHORIZE_URL: &str = "https://claude.ai/oauth/authorize";

/// The redirect of the manual variant: the page shows `code#state` for the
/// user to paste back, for a machine whose browser cannot reach loopback.
pub const MANUAL_REDIRECT_URL: &str = "https://console.anthropic.com/oauth/code/callback";

/// The scopes Claude Code asks for (`SCOPES`), space-separated.
pub const SCOPES: &str = "org:create_api_key user:profile user:inference";

/// The loopback redirect's host and path: Claude Code redirects to
/// `http://localhost:{port}/callback` on a port of its choosing.
pub const REDIRECT_HOST: &str = "localhost";
/// See [`REDIRECT_HOST`].
pub const REDIRECT_PATH: &str = "/callback";

/// The extra authorize parameter Claude Code sends (`code=true`: the
/// consent page shows the code in the manual variant).
pub const AUTHORIZE_EXTRA: [(&str, &str); 1] = [("code", "true")];

fn token_url(endpoints: &Endpoints) -> Option<&str> {
    Some(&endpoints.claude_token)
}

/// `account.uuid`, `account.email_address` and `organization.uuid`.
fn answer_claims(body: &Map<String, Value>, _id_token: Option<&str>) -> Claims {
    let at = |object: &str, key: &str| body.get(object).and_then(|o| str_at(o, &[key]));
    Claims {
        account_id: at("account", "uuid"),
        email: at("account", "email_address"),
        organization_id: at("organization", "uuid"),
        ..Claims::default()
    }
}

pub(crate) static DIALECT: Dialect = Dialect {
    token_url,
    client_id: Some(CLIENT_ID),
    needs_client_id: false,
    encoding: Encoding::Json,
    form_scope: None,
    claims: answer_claims,
};

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::*;
    use super::*;
    use crate::credential::ProviderConfig;

    const K: ProviderKind = ProviderKind::Claude;

    #[test]
    fn requests() {
        let rt = [
            ("grant_type", "refresh_token"),
            ("refresh_token", OLD_REFRESH),
        ];
        // (config, content type, fields)
        let table = [
            (
                ProviderConfig::new(K),
                "application/json",
                [&rt[..], &[("client_id", CLIENT_ID)]].concat(),
            ),
            (
                ProviderConfig {
                    encoding: Some(Encoding::Form),
                    scope: Some("user:inference".into()),
                    ..ProviderConfig::new(K)
                },
                "application/x-www-form-urlencoded",
                [
                    &rt[..],
                    &[("client_id", CLIENT_ID), ("scope", "user:inference")],
                ]
                .concat(),
            ),
        ];
        for (c, content_type, want) in table {
            let req = build(&c);
            assert_eq!(req.url, "https://console.anthropic.com/v1/oauth/token");
            assert_eq!(header(&req, "Content-Type"), Some(content_type));
            assert_eq!(pairs(&req), expect(&want), "{c:?}");
        }
    }

    #[test]
    fn success_reads_account_and_organization() {
        let t = success(
            K,
            200,
            include_str!("../../fixtures/oauth/claude_success.json"),
        );
        assert_eq!(t.access_token.expose(), "sk-ant-oat01-test-access-token");
        assert_eq!(
            t.refresh_token.expose(),
            "sk-ant-ort01-test-refresh-token-2"
        );
        assert_eq!(t.expires_at_ms, NOW + 28_800_000);
        assert_eq!(
            t.claims,
            Claims {
                account_id: Some("acct-uuid-1".into()),
                email: Some("dev@example.com".into()),
                organization_id: Some("org-uuid-1".into()),
                ..Claims::default()
            }
        );
        let t = success(
            K,
            200,
            r#"{"access_token":"a","account":"odd","organization":{"uuid":1}}"#,
        );
        assert_eq!(t.claims, Claims::default());
    }

    #[test]
    fn failures() {
        use Permanence::{Permanent as P, Transient as T};
        let grant = include_str!("../../fixtures/oauth/rfc_invalid_grant.json");
        let rate = include_str!("../../fixtures/oauth/anthropic_rate_limit.json");
        let table = [
            (400, grant, P, "invalid_grant"),
            (401, grant, P, "invalid_grant"),
            (429, rate, T, "http_429"),
            (400, rate, T, "rate_limit_error"),
            (529, rate, T, "http_529"),
        ];
        for (status, body, permanence, code) in table {
            let f = failure(K, status, body, None);
            assert_eq!(
                (f.permanence, f.code.as_str()),
                (permanence, code),
                "{status} {body}"
            );
        }
    }
}
