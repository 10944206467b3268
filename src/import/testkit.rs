//! Helpers shared by the import files' tests.

use super::*;
use crate::credential::Claims;

pub const NOW: i64 = 1_700_000_000_000;

pub fn import(text: &str) -> Result<Vec<NewCredential>> {
    parse_import(text.as_bytes(), &ImportOptions::default(), NOW)
}

pub fn import_with(
    text: &str,
    id: Option<&str>,
    provider: Option<ProviderKind>,
) -> Result<Vec<NewCredential>> {
    let opts = ImportOptions {
        id: id.map(str::to_owned),
        provider,
    };
    parse_import(text.as_bytes(), &opts, NOW)
}

pub fn one(text: &str) -> NewCredential {
    let mut v = import(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.len(), 1);
    v.remove(0)
}

pub fn codex_claims(account: &str) -> Claims {
    Claims {
        account_id: Some(account.into()),
        email: Some("dev@example.com".into()),
        plan_type: Some("plus".into()),
        user_id: Some("user-abcd".into()),
        organization_id: None,
    }
}
