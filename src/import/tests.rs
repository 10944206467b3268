//! Tables over all three formats: ids and options, the JWT expiry rule,
//! and every error with what its message must say.

use super::*;
use crate::import::testkit::*;
use crate::provider::testkit::jwt;

#[test]
fn an_access_tokens_jwt_exp_stands_in_for_a_missing_expiry() {
    let at = jwt(r#"{"exp":1700003600}"#);
    for text in [
        format!(r#"{{"id":"x","provider":"codex","refresh_token":"r","access_token":"{at}"}}"#),
        format!(
            r#"{{"type":"codex","refresh_token":"r","access_token":"{at}","email":"x@example.com"}}"#
        ),
        format!(r#"{{"tokens":{{"refresh_token":"r","access_token":"{at}","account_id":"x"}}}}"#),
    ] {
        assert_eq!(one(&text).expires_at_ms, Some(1_700_003_600_000), "{text}");
    }
    // An expiry given in the file wins over the JWT's.
    let text = format!(
        r#"{{"id":"x","provider":"codex","refresh_token":"r","access_token":"{at}","expires_at":1700000000}}"#
    );
    assert_eq!(one(&text).expires_at_ms, Some(NOW));
    let text = format!(
        r#"{{"type":"codex","refresh_token":"r","access_token":"{at}","email":"x@example.com","expired":"2023-11-14T22:13:20Z"}}"#
    );
    assert_eq!(one(&text).expires_at_ms, Some(NOW));
    // An opaque access token has no known expiry.
    let text = r#"{"id":"x","provider":"codex","refresh_token":"r","access_token":"opaque"}"#;
    assert_eq!(one(text).expires_at_ms, None);
}

#[test]
fn ids_and_options() {
    let claude = r#"{"provider":"claude","refresh_token":"r"}"#;
    // (text, --id, --provider) → (id, provider)
    type Row = (
        &'static str,
        Option<&'static str>,
        Option<ProviderKind>,
        &'static str,
        ProviderKind,
    );
    let table: [Row; 6] = [
        (
            r#"{"id":"a","provider":"claude","refresh_token":"r"}"#,
            None,
            None,
            "a",
            ProviderKind::Claude,
        ),
        (
            r#"{"id":"a","provider":"claude","refresh_token":"r"}"#,
            Some("b"),
            None,
            "b",
            ProviderKind::Claude,
        ),
        (
            r#"{"id":"a","refresh_token":"r"}"#,
            None,
            Some(ProviderKind::Codex),
            "a",
            ProviderKind::Codex,
        ),
        (
            r#"{"id":"a","provider":"claude","refresh_token":"r"}"#,
            None,
            Some(ProviderKind::Codex),
            "a",
            ProviderKind::Codex,
        ),
        (
            include_str!("../../fixtures/import/codex_auth.json"),
            Some("work"),
            Some(ProviderKind::Codex),
            "work",
            ProviderKind::Codex,
        ),
        (
            claude,
            Some("me+1@x.io"),
            None,
            "me+1@x.io",
            ProviderKind::Claude,
        ),
    ];
    for (text, id, provider, want_id, want_kind) in table {
        let v = import_with(text, id, provider).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (v[0].id.as_str(), v[0].provider.kind),
            (want_id, want_kind),
            "{text}"
        );
    }
    // Account id when there is no e-mail.
    let text = r#"{"type":"claude","refresh_token":"r","account_id":"acct-7"}"#;
    assert_eq!(one(text).id, "acct-7");
}

/// Every error path, with what its message must say.
#[test]
fn errors() {
    use ImportError as E;
    let auth = include_str!("../../fixtures/import/codex_auth.json");
    let array = include_str!("../../fixtures/import/tokenwarden_array.json");
    let oauth2 = r#""provider":"oauth2","refresh_token":"r""#;
    let bad_field = |field: &str| -> Box<dyn Fn(&E) -> bool> {
        let field = field.to_owned();
        Box::new(move |e| matches!(e, E::BadField { field: f, .. } if *f == field))
    };
    let missing = |field: &'static str| -> Box<dyn Fn(&E) -> bool> {
        Box::new(move |e| matches!(e, E::MissingField(f) if f == field))
    };
    // (input, --id, --provider, matcher, text the message must contain)
    type Matcher = Box<dyn Fn(&E) -> bool>;
    type Row = (
        String,
        Option<&'static str>,
        Option<ProviderKind>,
        Matcher,
        &'static str,
    );
    let table: Vec<Row> = vec![
        ("not json".into(), None, None, Box::new(|e| matches!(e, E::NotJson(_))), "not JSON"),
        ("".into(), None, None, Box::new(|e| matches!(e, E::NotJson(_))), "Codex CLI auth.json"),
        ("42".into(), None, None, Box::new(|e| *e == E::UnknownFormat), "CLIProxyAPI"),
        (r#"{"foo":1}"#.into(), None, None, Box::new(|e| *e == E::UnknownFormat), "tokenwarden JSON"),
        ("[]".into(), None, None, Box::new(|e| *e == E::Empty), "nothing to import"),
        (array.into(), Some("x"), None, Box::new(|e| *e == E::IdForMany(2)), "--id"),
        (
            r#"[{"id":"a","provider":"codex","refresh_token":"r"},{"id":"a","provider":"codex","refresh_token":"s"}]"#.into(),
            None, None, Box::new(|e| *e == E::DuplicateId("a".into())), "more than once",
        ),
        (
            r#"[{"id":"a","provider":"codex","refresh_token":"r"},{"id":"b","provider":"codex"}]"#.into(),
            None, None,
            Box::new(|e| matches!(e, E::InRecord { index: 1, source } if **source == E::MissingField("refresh_token".into()))),
            "record 2 of the array: missing field \"refresh_token\"",
        ),
        (r#"[{"id":"a","provider":"codex","refresh_token":"r"}, 7]"#.into(), None, None, Box::new(|e| matches!(e, E::InRecord { index: 1, .. })), "record 2 of the array"),
        // tokenwarden JSON
        (r#"{"id":"a","provider":"codex"}"#.into(), None, None, missing("refresh_token"), "refresh_token"),
        (r#"{"id":"a","provider":"codex","refresh_token":""}"#.into(), None, None, missing("refresh_token"), "refresh_token"),
        (r#"{"id":"a","refresh_token":"r"}"#.into(), None, None, missing("provider (or pass --provider)"), "--provider"),
        (r#"{"id":"a","provider":"github","refresh_token":"r"}"#.into(), None, None, bad_field("provider"), "codex, claude, google or oauth2"),
        (r#"{"id":"a","provider":"codex","refresh_token":"r","expires":1}"#.into(), None, None, Box::new(|e| *e == E::UnknownField("expires".into())), "unknown field \"expires\""),
        (r#"{"id":"a","provider":"codex","refresh_token":7}"#.into(), None, None, bad_field("refresh_token"), "expected a string, found a number"),
        (r#"{"id":["a"],"provider":"codex","refresh_token":"r"}"#.into(), None, None, bad_field("id"), "found an array"),
        (r#"{"id":"a","provider":"codex","refresh_token":"r","encoding":"xml"}"#.into(), None, None, bad_field("encoding"), "form or json"),
        (r#"{"id":"a","provider":"codex","refresh_token":"r","client_auth":"jwt"}"#.into(), None, None, bad_field("client_auth"), "none, post or basic"),
        (r#"{"id":"a","provider":"codex","refresh_token":"r","expires_at":1700000000000}"#.into(), None, None, bad_field("expires_at"), "milliseconds"),
        (r#"{"id":"a","provider":"codex","refresh_token":"r","expires_at":-1}"#.into(), None, None, bad_field("expires_at"), "positive"),
        (r#"{"id":"a","provider":"codex","refresh_token":"r","expires_at":"tomorrow"}"#.into(), None, None, bad_field("expires_at"), "RFC 3339"),
        (r#"{"id":"a","provider":"codex","refresh_token":"r","expires_at":true}"#.into(), None, None, bad_field("expires_at"), "found true/false"),
        (format!("{{\"id\":\"a\",{oauth2}}}"), None, None, missing("token_url"), "token_url"),
        (format!("{{\"id\":\"a\",{oauth2},\"token_url\":\"https://i.example/t\"}}"), None, None, missing("client_id"), "client_id"),
        (r#"{"id":"a","provider":"google","refresh_token":"r"}"#.into(), None, None, missing("client_id"), "client_id"),
        (
            format!("{{\"id\":\"a\",{oauth2},\"token_url\":\"http://i.example/t\",\"client_id\":\"c\"}}"),
            None, None, bad_field("token_url"), "plain http://",
        ),
        (
            format!("{{\"id\":\"a\",{oauth2},\"token_url\":\"https://i.example/t\",\"client_id\":\"c\",\"client_auth\":\"basic\"}}"),
            None, None, Box::new(|e| matches!(e, E::BadSettings(_))), "needs a client_secret",
        ),
        // ids
        (r#"{"provider":"claude","refresh_token":"r"}"#.into(), None, None, Box::new(|e| *e == E::NoId), "pass --id"),
        (r#"{"id":"a/b","provider":"claude","refresh_token":"r"}"#.into(), None, None, Box::new(|e| matches!(e, E::BadId { .. })), "\"a/b\""),
        (r#"{"id":"a","provider":"claude","refresh_token":"r"}"#.into(), Some(".."), None, Box::new(|e| matches!(e, E::BadId { .. })), "--id"),
        (r#"{"type":"claude","refresh_token":"r","email":"o'neil@example.com"}"#.into(), None, None, Box::new(|e| matches!(e, E::BadId { .. })), "pass a valid one with --id"),
        // Codex auth.json
        (include_str!("../../fixtures/import/codex_auth_api_key_only.json").into(), None, None, Box::new(|e| *e == E::NoTokens), "codex login"),
        (r#"{"tokens":[]}"#.into(), None, None, bad_field("tokens"), "expected an object"),
        (r#"{"tokens":{"access_token":"a"}}"#.into(), None, None, missing("tokens.refresh_token"), "tokens.refresh_token"),
        (r#"{"tokens":{"refresh_token":"r","account_id":5}}"#.into(), None, None, bad_field("tokens.account_id"), "found a number"),
        (r#"{"tokens":{"refresh_token":"r"},"last_refresh":"yesterday"}"#.into(), Some("a"), None, bad_field("last_refresh"), "RFC 3339"),
        (auth.into(), None, Some(ProviderKind::Claude), Box::new(|e| matches!(e, E::ProviderMismatch { .. })), "--provider claude"),
        // CLIProxyAPI
        (include_str!("../../fixtures/import/cliproxy_gemini.json").into(), None, None, bad_field("type"), "codex and claude"),
        (r#"{"expired":"2023-11-14T22:13:20Z","refresh_token":"r"}"#.into(), None, None, missing("type"), "type"),
        (r#"{"type":"claude","refresh_token":"r","email":"a@b.c","expired":"later"}"#.into(), None, None, bad_field("expired"), "RFC 3339"),
        (r#"{"type":"claude","email":"a@b.c"}"#.into(), None, None, missing("refresh_token"), "refresh_token"),
        (
            include_str!("../../fixtures/import/cliproxy_claude.json").into(), None, Some(ProviderKind::Codex),
            Box::new(|e| matches!(e, E::ProviderMismatch { found: ProviderKind::Claude, .. })), "holds a claude credential",
        ),
    ];
    for (text, id, provider, matches, says) in table {
        let err = import_with(&text, id, provider).expect_err(&text);
        assert!(matches(&err), "{text}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(says), "{text}: {msg}");
    }
}

/// Secrets never reach an error message, even when they sit in the
/// offending field or were pasted as a field name.
#[test]
fn errors_never_quote_secrets() {
    let secret = "rt_SECRET_0123456789abcdefghijklmnop";
    let texts = [
        format!(r#"{{"id":"a","provider":"codex","refresh_token":"r","{secret}":1}}"#),
        format!(r#"{{"id":"a","provider":"{secret}","refresh_token":"r"}}"#),
        format!(r#"{{"id":"a","provider":"codex","refresh_token":"r","expires_at":"{secret}"}}"#),
        format!(r#"{{"id":"a","provider":"codex","refresh_token":"r","encoding":"{secret}"}}"#),
        format!(r#"{{"type":"{secret}","refresh_token":"r"}}"#),
        format!(
            r#"{{"id":"a","provider":"oauth2","refresh_token":"r","client_id":"c","token_url":"http://x.example/{secret}"}}"#
        ),
        format!(
            r#"{{"id":"a","provider":"oauth2","refresh_token":"r","client_id":"c","token_url":"https://x.example/t","client_secret":"{secret}","client_auth":"basic","scope":7}}"#
        ),
        format!(r#"{{"id":"a","provider":"codex","refresh_token":"{secret}" "#),
    ];
    for text in texts {
        let err = import(&text).expect_err(&text);
        assert!(!err.to_string().contains("SECRET"), "{err}");
        assert!(!format!("{err:?}").contains("SECRET"), "{err:?}");
    }
}
