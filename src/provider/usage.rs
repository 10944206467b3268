//! Quota (usage) endpoints of Codex and Claude (DESIGN.md §6), as pure
//! functions: build the request, read the answer into a [`Quota`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ProviderKind;
use super::{check_url, parse_retry_after, Endpoints, Failure, HttpRequest, HttpResponse};
use crate::rfc3339;

/// The `anthropic-beta` header value Claude's usage endpoint requires.
pub const ANTHROPIC_BETA: &str = "oauth-2025-04-20";

/// One rate-limit window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// `primary`/`secondary` (Codex) or `five_hour`/`seven_day`/… (Claude).
    pub name: String,
    /// Percent of the window's allowance used.
    pub used_percent: f64,
    /// Length of the window in seconds, when upstream says.
    pub window_seconds: Option<i64>,
    /// When the window resets (unix seconds).
    pub resets_at: Option<i64>,
}

/// Prepaid credits (Codex).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credits {
    /// Whether the account has credits.
    pub has_credits: Option<bool>,
    /// Unlimited credits.
    pub unlimited: Option<bool>,
    /// Balance, as upstream writes it.
    pub balance: Option<String>,
}

/// A quota snapshot as read from upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    /// ChatGPT plan.
    pub plan_type: Option<String>,
    /// Whether a limit is reached now.
    pub limit_reached: Option<bool>,
    /// The windows, in upstream's order.
    pub windows: Vec<Window>,
    /// Credits, when upstream reports them.
    pub credits: Option<Credits>,
}

/// The classified answer of a usage endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum UsageOutcome {
    /// A snapshot.
    Ok(Quota),
    /// 401: the access token was rejected (go through the reject path).
    Unauthorized,
    /// Anything else; always transient.
    Failed(Failure),
}

/// Whether `kind` has a usage endpoint.
pub fn supported(kind: ProviderKind) -> bool {
    matches!(kind, ProviderKind::Codex | ProviderKind::Claude)
}

/// The usage request for a credential, or `None` if its provider has no
/// usage endpoint. `Err` for an unusable URL.
pub fn usage_request(
    kind: ProviderKind,
    access_token: &str,
    account_id: Option<&str>,
    endpoints: &Endpoints,
) -> Option<Result<HttpRequest, String>> {
    let (url, extra) = match kind {
        ProviderKind::Codex => (
            &endpoints.codex_usage,
            account_id.map(|a| ("ChatGPT-Account-Id", a.to_owned())),
        ),
        ProviderKind::Claude => (
            &endpoints.claude_usage,
            Some(("anthropic-beta", ANTHROPIC_BETA.to_owned())),
        ),
        ProviderKind::Google | ProviderKind::OAuth2 => return None,
    };
    Some(check_url(url).map(|()| {
        let mut headers = vec![
            ("Authorization".to_owned(), format!("Bearer {access_token}")),
            ("Accept".to_owned(), "application/json".to_owned()),
        ];
        headers.extend(extra.map(|(k, v)| (k.to_owned(), v)));
        HttpRequest {
            method: "GET",
            url: url.clone(),
            headers,
            body: Vec::new(),
        }
    }))
}

fn num(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn int(v: Option<&Value>) -> Option<i64> {
    num(v).filter(|f| f.is_finite()).map(|f| f as i64)
}

/// The latest reset a snapshot may name: ten years from now. Upstream's
/// windows are hours or a week; anything much later is a lie, clamped
/// (never wrapped into the past, which would free an exhausted member;
/// the next snapshot decides again).
pub const MAX_RESET_S: i64 = 3653 * 24 * 60 * 60;

/// A reset time (unix seconds): unix seconds, an RFC 3339 string, or now +
/// seconds (a negative delay counts as now); clamped to at most
/// [`MAX_RESET_S`] from now, with saturating arithmetic throughout.
fn reset(at: Option<&Value>, after: Option<&Value>, now_ms: i64) -> Option<i64> {
    let now_s = now_ms.div_euclid(1000);
    match at {
        Some(Value::String(s)) => rfc3339::parse(s).map(|ms| ms.div_euclid(1000)),
        other => int(other),
    }
    .or_else(|| int(after).map(|secs| now_s.saturating_add(secs.max(0))))
    .map(|at| at.min(now_s.saturating_add(MAX_RESET_S)))
}

fn codex(body: &Value, now_ms: i64) -> Quota {
    let rate = body.get("rate_limit");
    let windows = ["primary_window", "secondary_window"]
        .iter()
        .filter_map(|key| {
            let w = rate?.get(*key)?;
            Some(Window {
                name: key.trim_end_matches("_window").to_owned(),
                used_percent: num(w.get("used_percent"))?,
                window_seconds: int(w.get("limit_window_seconds")),
                resets_at: reset(w.get("reset_at"), w.get("reset_after_seconds"), now_ms),
            })
        })
        .collect();
    let credits = body
        .get("credits")
        .filter(|c| c.is_object())
        .map(|c| Credits {
            has_credits: c.get("has_credits").and_then(Value::as_bool),
            unlimited: c.get("unlimited").and_then(Value::as_bool),
            balance: match c.get("balance") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            },
        });
    Quota {
        plan_type: body
            .get("plan_type")
            .and_then(Value::as_str)
            .map(str::to_owned),
        limit_reached: rate
            .and_then(|r| r.get("limit_reached"))
            .and_then(Value::as_bool),
        windows,
        credits,
    }
}

fn claude(body: &Value, now_ms: i64) -> Quota {
    let windows: Vec<Window> = body
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, w)| {
            Some(Window {
                name: name.clone(),
                used_percent: num(w.get("utilization"))?,
                window_seconds: match name.as_str() {
                    "five_hour" => Some(5 * 3600),
                    n if n.starts_with("seven_day") => Some(7 * 86_400),
                    _ => None,
                },
                resets_at: reset(w.get("resets_at"), None, now_ms),
            })
        })
        .collect();
    Quota {
        plan_type: None,
        limit_reached: Some(windows.iter().any(|w| w.used_percent >= 100.0)),
        windows,
        credits: None,
    }
}

/// Reads a usage answer.
pub fn parse_usage(kind: ProviderKind, resp: &HttpResponse, now_ms: i64) -> UsageOutcome {
    let failed = |code: String, message: String| {
        UsageOutcome::Failed(Failure {
            retry_after_ms: resp
                .retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, now_ms)),
            status: Some(resp.status),
            ..Failure::transient(code, message)
        })
    };
    match resp.status {
        401 => return UsageOutcome::Unauthorized,
        200..=299 => {}
        s => {
            return failed(
                format!("http_{s}"),
                format!("usage endpoint answered HTTP {s}"),
            )
        }
    }
    let body: Value = match serde_json::from_slice(&resp.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return failed(
                "bad_json".into(),
                "usage endpoint answered with no JSON object".into(),
            )
        }
    };
    let quota = match kind {
        ProviderKind::Claude => claude(&body, now_ms),
        _ => codex(&body, now_ms),
    };
    if quota.windows.is_empty() {
        return failed(
            "no_windows".into(),
            "usage answer names no rate-limit window".into(),
        );
    }
    UsageOutcome::Ok(quota)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_000_000_000;

    fn resp(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            retry_after: None,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn codex_usage() {
        let body = include_str!("../../fixtures/fake/codex_usage.json");
        let UsageOutcome::Ok(q) = parse_usage(ProviderKind::Codex, &resp(200, body), NOW) else {
            panic!("not ok");
        };
        assert_eq!(q.plan_type.as_deref(), Some("plus"));
        assert_eq!(q.limit_reached, Some(false));
        assert_eq!(
            q.windows,
            [
                Window {
                    name: "primary".into(),
                    used_percent: 42.0,
                    window_seconds: Some(18000),
                    resets_at: Some(1_767_225_600)
                },
                Window {
                    name: "secondary".into(),
                    used_percent: 17.0,
                    window_seconds: Some(604_800),
                    resets_at: Some(1_767_657_600)
                },
            ]
        );
        assert_eq!(q.credits.unwrap().balance.as_deref(), Some("0"));
        // reset_after_seconds when reset_at is missing.
        let body =
            r#"{"rate_limit":{"primary_window":{"used_percent":"5","reset_after_seconds":60}}}"#;
        let UsageOutcome::Ok(q) = parse_usage(ProviderKind::Codex, &resp(200, body), NOW) else {
            panic!("not ok");
        };
        assert_eq!(q.windows[0].resets_at, Some(NOW / 1000 + 60));
        assert_eq!(q.windows[0].used_percent, 5.0);
    }

    /// Absurd resets (delays past i64, huge absolute times, negative
    /// delays): clamped to ten years from now or to now, never wrapped.
    #[test]
    fn absurd_resets_are_clamped() {
        let year = NOW / 1000 + MAX_RESET_S;
        for (window, want) in [
            (r#""reset_after_seconds":1e19"#, year),
            (r#""reset_after_seconds":9223372036854775807"#, year),
            (r#""reset_after_seconds":"1e300""#, year),
            (r#""reset_at":1e30"#, year),
            (r#""reset_at":9223372036854775807"#, year),
            (r#""reset_after_seconds":-1e19"#, NOW / 1000),
            (r#""reset_after_seconds":-5"#, NOW / 1000),
        ] {
            let body =
                format!(r#"{{"rate_limit":{{"primary_window":{{"used_percent":100,{window}}}}}}}"#);
            let UsageOutcome::Ok(q) = parse_usage(ProviderKind::Codex, &resp(200, &body), NOW)
            else {
                panic!("{window}: not ok");
            };
            assert_eq!(q.windows[0].resets_at, Some(want), "{window}");
        }
    }

    #[test]
    fn claude_usage() {
        let body = include_str!("../../fixtures/fake/claude_usage.json");
        let UsageOutcome::Ok(q) = parse_usage(ProviderKind::Claude, &resp(200, body), NOW) else {
            panic!("not ok");
        };
        let names: Vec<&str> = q.windows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["five_hour", "seven_day", "seven_day_opus"]);
        assert_eq!(q.windows[0].used_percent, 12.0);
        assert_eq!(q.windows[0].resets_at, Some(1_893_474_000));
        assert_eq!(q.windows[2].resets_at, None);
        assert_eq!(q.limit_reached, Some(false));
    }

    #[test]
    fn failures() {
        let table = [
            (401, "{}", None),
            (500, "{}", Some("http_500")),
            (429, "{}", Some("http_429")),
            (200, "<html>", Some("bad_json")),
            (200, "[]", Some("bad_json")),
            (200, "{}", Some("no_windows")),
        ];
        for (status, body, code) in table {
            match (
                parse_usage(ProviderKind::Codex, &resp(status, body), NOW),
                code,
            ) {
                (UsageOutcome::Unauthorized, None) => {}
                (UsageOutcome::Failed(f), Some(c)) => assert_eq!(f.code, c),
                (other, _) => panic!("{status} {body}: {other:?}"),
            }
        }
        let mut r = resp(429, "{}");
        r.retry_after = Some("30".into());
        let UsageOutcome::Failed(f) = parse_usage(ProviderKind::Codex, &r, NOW) else {
            panic!()
        };
        assert_eq!(f.retry_after_ms, Some(30_000));
    }

    /// Usage failures name a status or a shape, never a piece of the body.
    #[test]
    fn failures_quote_nothing() {
        const FRAG: &str = "at_FrAgMeNt";
        for status in [200, 400, 403, 500, 502] {
            for body in [
                format!(r#"{{"access_token":"{FRAG}"#),
                format!("<html>{FRAG}</html>"),
                format!(r#"{{"error":{{"message":"{FRAG}","code":"{FRAG}"}}}}"#),
                format!(r#"{{"detail":"{FRAG}"}}"#),
            ] {
                if let UsageOutcome::Failed(f) =
                    parse_usage(ProviderKind::Codex, &resp(status, &body), NOW)
                {
                    assert!(
                        !f.message.contains(FRAG) && !f.code.contains(FRAG),
                        "{status} {body}: {f:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn requests() {
        let e = Endpoints::default();
        let r = usage_request(ProviderKind::Codex, "AT", Some("acct"), &e)
            .unwrap()
            .unwrap();
        assert_eq!(r.url, "https://chatgpt.com/backend-api/wham/usage");
        assert!(r
            .headers
            .contains(&("Authorization".into(), "Bearer AT".into())));
        assert!(r
            .headers
            .contains(&("ChatGPT-Account-Id".into(), "acct".into())));
        let r = usage_request(ProviderKind::Claude, "AT", None, &e)
            .unwrap()
            .unwrap();
        assert!(r
            .headers
            .contains(&("anthropic-beta".into(), ANTHROPIC_BETA.into())));
        assert!(usage_request(ProviderKind::Google, "AT", None, &e).is_none());
        let bad = Endpoints {
            codex_usage: "http://example.com/usage".into(),
            ..Endpoints::default()
        };
        assert!(usage_request(ProviderKind::Codex, "AT", None, &bad)
            .unwrap()
            .is_err());
    }
}
