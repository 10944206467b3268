//! Which stored credential a sign-in is for: the same account is updated
//! in place, never stored a second time under another id.

use crate::credential::{Claims, Credential, ProviderConfig, ProviderKind};

/// Whether two sets of claims name the same account: the first of account
/// id, subject (user id) and e-mail that both know decides (an account id
/// first: one e-mail can hold several ChatGPT workspaces). `None` when they
/// share none.
pub fn same_account(a: &Claims, b: &Claims) -> Option<bool> {
    let keys: [fn(&Claims) -> Option<&str>; 3] = [
        |c| c.account_id.as_deref(),
        |c| c.user_id.as_deref(),
        |c| c.email.as_deref(),
    ];
    keys.iter().find_map(|key| match (key(a), key(b)) {
        (Some(x), Some(y)) => Some(x.eq_ignore_ascii_case(y)),
        _ => None,
    })
}

/// Whether a stored credential talks to the same server as a sign-in's
/// settings: same provider, and for `oauth2` the same token endpoint and
/// client (accounts of two servers may share an e-mail).
pub fn same_server(stored: &ProviderConfig, login: &ProviderConfig) -> bool {
    stored.kind == login.kind
        && (stored.kind != ProviderKind::OAuth2
            || (stored.token_url == login.token_url && stored.client_id == login.client_id))
}

/// Whether a stored credential is the signed-in account: the same account
/// ([`same_account`]) of the same server ([`same_server`]) — or, for
/// `oauth2`, the same subject of the same client when the token URLs
/// differ: a credential refreshed through a proxy or mirror (its own
/// `token_url`) is still that server's account. An e-mail alone never
/// joins two token URLs (two servers' accounts may share one).
pub fn is_account(stored: &Credential, provider: &ProviderConfig, claims: &Claims) -> bool {
    let same_subject = || {
        stored.provider.kind == ProviderKind::OAuth2
            && provider.kind == ProviderKind::OAuth2
            && stored.provider.client_id.is_some()
            && stored.provider.client_id == provider.client_id
            && matches!(
                (stored.claims.user_id.as_deref(), claims.user_id.as_deref()),
                (Some(a), Some(b)) if a == b
            )
            && same_account(&stored.claims, claims) == Some(true)
    };
    (same_server(&stored.provider, provider) && same_account(&stored.claims, claims) == Some(true))
        || same_subject()
}

/// The stored credentials that are the signed-in account ([`is_account`]).
pub fn matching<'a>(
    stored: &'a [Credential],
    provider: &ProviderConfig,
    claims: &Claims,
) -> Vec<&'a Credential> {
    stored
        .iter()
        .filter(|c| is_account(c, provider, claims))
        .collect()
}

/// The id of a new credential when `--id` names none: the e-mail, else the
/// account id, else the subject, else the provider's name.
pub fn default_id(kind: ProviderKind, claims: &Claims) -> String {
    claims
        .email
        .clone()
        .or_else(|| claims.account_id.clone())
        .or_else(|| claims.user_id.clone())
        .filter(|id| crate::credential::validate_id(id).is_ok())
        .unwrap_or_else(|| kind.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(account: Option<&str>, user: Option<&str>, email: Option<&str>) -> Claims {
        Claims {
            account_id: account.map(str::to_owned),
            user_id: user.map(str::to_owned),
            email: email.map(str::to_owned),
            ..Claims::default()
        }
    }

    #[test]
    fn accounts() {
        // (a, b, same)
        let table = [
            (
                c(Some("acc-1"), None, None),
                c(Some("acc-1"), None, None),
                Some(true),
            ),
            (
                c(Some("acc-1"), None, Some("x@e")),
                c(Some("acc-2"), None, Some("x@e")),
                Some(false),
            ),
            (
                c(None, Some("sub-1"), None),
                c(None, Some("sub-1"), Some("y@e")),
                Some(true),
            ),
            (
                c(None, None, Some("X@E")),
                c(None, None, Some("x@e")),
                Some(true),
            ),
            (
                c(None, None, Some("x@e")),
                c(None, None, Some("z@e")),
                Some(false),
            ),
            (
                c(Some("acc-1"), None, None),
                c(None, None, Some("x@e")),
                None,
            ),
            (Claims::default(), Claims::default(), None),
        ];
        for (a, b, want) in table {
            assert_eq!(same_account(&a, &b), want, "{a:?} {b:?}");
        }
        // (claims, id)
        let table = [
            (
                c(Some("acc"), Some("sub"), Some("x@example.com")),
                "x@example.com",
            ),
            (c(Some("acc"), Some("sub"), None), "acc"),
            (c(None, Some("sub"), None), "sub"),
            (c(None, Some("a/b"), None), "oauth2"),
        ];
        for (claims, want) in table {
            assert_eq!(default_id(ProviderKind::OAuth2, &claims), want);
        }
        let p = |url: &str| ProviderConfig {
            token_url: Some(url.into()),
            client_id: Some("c".into()),
            ..ProviderConfig::new(ProviderKind::OAuth2)
        };
        assert!(same_server(&p("https://a/t"), &p("https://a/t")));
        assert!(!same_server(&p("https://a/t"), &p("https://b/t")));
        assert!(same_server(
            &ProviderConfig::new(ProviderKind::Codex),
            &ProviderConfig::new(ProviderKind::Codex)
        ));
    }
}
