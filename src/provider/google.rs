//! Google's OAuth 2.0 server: a form refresh grant with the credential's own
//! client id (and secret); refresh tokens usually do not rotate. Claims come
//! from an OpenID id token when one is returned.

use super::{oidc_answer_claims, Dialect, Encoding, Endpoints};

/// Gemini CLI's installed-application OAuth client id. Public by design
/// (an installed app's "secret" is not one: Google's docs on installed
/// apps say so). Source: google-gemini/gemini-cli,
/// `packages/core/src/code_assist/oauth2.ts` (`OAUTH_CLIENT_ID`).
pub const GEMINI_CLI_CLIENT_ID: &str =
    "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com";

/// Gemini CLI's installed-application client secret, from the same file
/// (`OAUTH_CLIENT_SECRET`): Google refuses a refresh grant for this
/// client without it.
pub const GEMINI_CLI_CLIENT_SECRET: &str = "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";

/// The scopes Gemini CLI asks for (`OAUTH_SCOPE` in the same file), written
/// back by `export --format gemini` when the stored credential has none.
pub const GEMINI_CLI_SCOPES: &str = "https://www.googleapis.com/auth/cloud-platform \
    https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile";

/// Google's authorization endpoint, where Gemini CLI sends the browser
/// (google-auth-library's `generateAuthUrl`).
pub const AUTHORIZE_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";

/// The path of Gemini CLI's loopback redirect,
/// `http://localhost:{port}/oauth2callback` on any free port (the same
/// `oauth2.ts`): an installed-app client takes any loopback port.
pub const REDIRECT_PATH: &str = "/oauth2callback";

/// The authorize parameters Gemini CLI adds: `access_type=offline` (no
/// refresh token without it); `prompt=consent` is ours, so that signing
/// in again also brings one (Google sends a refresh token only with a
/// consent).
pub const AUTHORIZE_EXTRA: [(&str, &str); 2] = [("access_type", "offline"), ("prompt", "consent")];

fn token_url(endpoints: &Endpoints) -> Option<&str> {
    Some(&endpoints.google_token)
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
    use super::super::testkit::*;
    use super::super::*;
    use crate::credential::Claims;
    use crate::credential::ProviderConfig;

    const K: ProviderKind = ProviderKind::Google;

    fn cfg() -> ProviderConfig {
        ProviderConfig {
            client_id: Some("g-client.apps.googleusercontent.com".into()),
            ..ProviderConfig::new(K)
        }
    }

    #[test]
    fn requests() {
        let rt = [
            ("grant_type", "refresh_token"),
            ("refresh_token", OLD_REFRESH),
        ];
        let id = ("client_id", "g-client.apps.googleusercontent.com");
        let secret = Some(crate::secret::Secret::new("GOCSPX-secret"));
        // (config, content type, fields, has Authorization)
        let table = [
            (
                cfg(),
                "application/x-www-form-urlencoded",
                [&rt[..], &[id]].concat(),
                false,
            ),
            (
                ProviderConfig {
                    client_secret: secret.clone(),
                    ..cfg()
                },
                "application/x-www-form-urlencoded",
                [&rt[..], &[id, ("client_secret", "GOCSPX-secret")]].concat(),
                false,
            ),
            (
                ProviderConfig {
                    client_secret: secret,
                    client_auth: Some(ClientAuth::Basic),
                    ..cfg()
                },
                "application/x-www-form-urlencoded",
                rt.to_vec(),
                true,
            ),
        ];
        for (c, content_type, want, auth) in table {
            let req = build(&c);
            assert_eq!(req.url, "https://oauth2.googleapis.com/token");
            assert_eq!(header(&req, "Content-Type"), Some(content_type));
            assert_eq!(pairs(&req), expect(&want), "{c:?}");
            assert_eq!(header(&req, "Authorization").is_some(), auth);
        }
        let err = refresh_request(&ProviderConfig::new(K), &"rt".into(), &Endpoints::default());
        assert_eq!(err.unwrap_err(), "google credentials need a client_id");
    }

    #[test]
    fn success_keeps_refresh_token_and_reads_id_token() {
        let t = success(
            K,
            200,
            include_str!("../../fixtures/oauth/google_success.json"),
        );
        assert_eq!(t.access_token.expose(), "ya29.a0-test-access-token");
        assert_eq!(
            t.refresh_token.expose(),
            OLD_REFRESH,
            "Google does not rotate"
        );
        assert_eq!(t.expires_at_ms, NOW + 3_599_000);
        assert_eq!(
            t.claims,
            Claims {
                email: Some("dev@gmail.com".into()),
                user_id: Some("109876543210".into()),
                ..Claims::default()
            }
        );
    }

    #[test]
    fn invalid_grant_is_permanent() {
        let f = failure(
            K,
            400,
            include_str!("../../fixtures/oauth/rfc_invalid_grant.json"),
            None,
        );
        assert_eq!(
            (f.permanence, f.code.as_str()),
            (Permanence::Permanent, "invalid_grant")
        );
    }
}
