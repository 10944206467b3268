//! A credential's page: its state, what fixes it, its quota (gauges and
//! history chart), its event timeline (who changed what, when, from which
//! process), refresh latency, facade handles (by the short id of their
//! hash, never the handle), the notifications sent about it, and — for
//! admin sessions only — the action forms.

use std::fmt::Write as _;

use crate::view::Summary;
use crate::{EventRow, HandleRow, NotificationRow, QuotaRow};

use super::overview::fix_html;
use super::quota::{gauges, history, Point, WindowData};
use super::{ago, countdown, csrf_input, escape, flash, hidden_input, page, time_el, Chrome};
use crate::http::ui::session::Flash;

/// Everything the page shows.
#[derive(Debug)]
pub struct CredentialView<'a> {
    /// The credential (never a secret).
    pub summary: &'a Summary<'a>,
    /// Its newest events, oldest first.
    pub events: &'a [EventRow],
    /// Its facade handles.
    pub handles: &'a [HandleRow],
    /// The notifications about it, oldest first.
    pub notifications: &'a [&'a NotificationRow],
    /// Its newest quota snapshot.
    pub quota: Option<&'a QuotaRow>,
    /// Its quota history, oldest first.
    pub history: &'a [QuotaRow],
    /// Who is signed in.
    pub chrome: Chrome<'a>,
    /// The last action's message.
    pub flash: Option<&'a Flash>,
    /// Now (unix ms).
    pub now_ms: i64,
    /// The fingerprint ([`crate::facade::fingerprint`]) of the access
    /// token current when the page was drawn, if it has one: the reject
    /// form names it, so a second click (another tab, a retry) on the
    /// same page rejects nothing newer.
    pub token_fingerprint: Option<&'a str>,
}

/// How long each successful refresh took, oldest first: `(ended at,
/// milliseconds)` from a claim (an event into `refreshing`) to the next
/// event out of `refreshing`, when that is the success
/// ([`crate::state::REFRESHED`]; a transient failure also goes back to
/// `valid`, with another reason).
pub fn latencies(events: &[EventRow]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut claimed: Option<i64> = None;
    for e in events {
        let from = e.from.as_deref() == Some("refreshing");
        let to = e.to == "refreshing";
        match (from, to) {
            // A takeover, or a rejection recorded meanwhile: the same
            // refresh goes on, timed from its first claim.
            (true, true) => {}
            (true, false) => {
                if let Some(start) = claimed.take() {
                    if e.reason == crate::state::REFRESHED {
                        out.push((e.at_ms, (e.at_ms - start).max(0)));
                    }
                }
            }
            (false, true) => claimed = Some(e.at_ms),
            (false, false) => {}
        }
    }
    out
}

/// The latency line: the last refresh's time and the median of those
/// shown.
pub fn latency_text(l: &[(i64, i64)]) -> String {
    let Some((_, last)) = l.last() else {
        return "No completed refresh in the events shown.".into();
    };
    let mut ms: Vec<i64> = l.iter().map(|(_, m)| *m).collect();
    ms.sort_unstable();
    let median = ms[ms.len() / 2];
    format!(
        "Last refresh took {last} ms; median of {}: {median} ms; slowest: {} ms.",
        ms.len(),
        ms[ms.len() - 1]
    )
}

/// An action form: `<form class="action" data-action=NAME>` with the CSRF
/// token, `extra` inputs and a submit button; the script asks `confirm`
/// with `data-confirm` first.
pub fn action_form(
    id_path: &str,
    name: &str,
    csrf: &str,
    extra: &str,
    button: &str,
    confirm: &str,
) -> String {
    format!(
        concat!(
            r#"<form class="action" method="post" data-action="{name}" "#,
            r#"action="/ui/credentials/{id}/{name}" data-confirm="{confirm}">{csrf}{extra}"#,
            r#"<button type="submit">{button}</button></form>"#
        ),
        name = name,
        id = escape(id_path),
        confirm = escape(confirm),
        csrf = csrf_input(csrf),
        extra = extra,
        button = escape(button),
    )
}

fn actions(s: &Summary<'_>, csrf: &str, token_fingerprint: Option<&str>) -> String {
    let id = s.id;
    let path = super::url_component(id);
    let mut out = String::from(r#"<section id="actions"><h2>Actions</h2>"#);
    out.push_str(&action_form(
        &path,
        "refresh",
        csrf,
        "",
        "Force refresh",
        &format!("Force a refresh of {id} now?"),
    ));
    if let Some(fp) = token_fingerprint {
        out.push_str(&action_form(
            &path,
            "reject",
            csrf,
            &hidden_input("token", fp),
            "Reject current token",
            &format!("Reject the current access token of {id}? It will never be served again."),
        ));
    }
    out.push_str(&action_form(
        &path,
        "cooldown",
        csrf,
        r#"<label>Seconds <input type="number" name="seconds" min="1" max="31622400" value="3600" required></label>"#,
        "Set cooldown",
        &format!("Cool {id} down? No pool will hand it out meanwhile."),
    ));
    out.push_str(&action_form(
        &path,
        "clear-cooldown",
        csrf,
        "",
        "Clear cooldown",
        &format!("Clear the cooldown of {id}?"),
    ));
    out.push_str(&action_form(
        &path,
        "delete",
        csrf,
        "",
        "Delete",
        &format!("Delete {id}? Its refresh token is gone for good; its events stay."),
    ));
    out.push_str("</section>");
    out
}

fn events_html(events: &[EventRow], now_ms: i64) -> String {
    let mut out = String::from(r#"<ol id="events" reversed>"#);
    for e in events.iter().rev() {
        let from = e.from.as_deref().unwrap_or("—");
        let _ = write!(
            out,
            concat!(
                r#"<li class="event" data-seq="{seq}" data-to="{to}">"#,
                r#"<span class="when">{when}</span> "#,
                r#"<span class="what"><span class="from">{from}</span> → <span class="to">{to}</span> (v{version})</span> "#,
                r#"<span class="reason">{reason}</span> "#,
                r#"<span class="actor">{actor}</span></li>"#
            ),
            seq = e.seq,
            when = time_el(e.at_ms, &ago(e.at_ms, now_ms)),
            from = escape(from),
            to = escape(&e.to),
            version = e.version,
            reason = escape(&e.reason),
            actor = escape(&e.actor),
        );
    }
    if events.is_empty() {
        out.push_str(r#"<li class="none">No events.</li>"#);
    }
    out.push_str("</ol>");
    out
}

fn handles_html(
    handles: &[HandleRow],
    admin: bool,
    id_path: &str,
    csrf: &str,
    now_ms: i64,
) -> String {
    let mut out = String::from(concat!(
        r#"<table id="handles"><thead><tr><th>Handle</th><th>Label</th><th>Created</th>"#,
        "<th>Last used</th><th>Revoked</th><th></th></tr></thead><tbody>"
    ));
    for h in handles {
        let v = crate::view::HandleView::from(h);
        let when = |ms: Option<i64>| match ms {
            Some(ms) => time_el(ms, &ago(ms, now_ms)),
            None => "—".into(),
        };
        let revoke = match (admin, h.revoked_ms) {
            (true, None) => action_form(
                id_path,
                "revoke-handle",
                csrf,
                &hidden_input("handle", v.id),
                "Revoke",
                &format!(
                    "Revoke handle {} ({})? Its client must sign in again.",
                    v.id, h.label
                ),
            ),
            _ => String::new(),
        };
        let _ = write!(
            out,
            concat!(
                r#"<tr class="handle{revoked}" data-handle-id="{id}"><td class="handle-id"><code>{id}</code></td>"#,
                "<td>{label}</td><td>{created}</td><td>{used}</td><td>{rev}</td><td>{revoke}</td></tr>"
            ),
            revoked = if h.revoked_ms.is_some() { " revoked" } else { "" },
            id = escape(v.id),
            label = escape(&h.label),
            created = when(Some(h.created_ms)),
            used = when(h.last_used_ms),
            rev = when(h.revoked_ms),
            revoke = revoke,
        );
    }
    if handles.is_empty() {
        out.push_str(r#"<tr class="none"><td colspan="6">No handles.</td></tr>"#);
    }
    out.push_str("</tbody></table>");
    out
}

fn notifications_html(rows: &[&NotificationRow], now_ms: i64) -> String {
    let mut out = String::from(concat!(
        r#"<table id="notifications"><thead><tr><th>When</th><th>Kind</th><th>Status</th>"#,
        "<th>Attempts</th><th>Message</th></tr></thead><tbody>"
    ));
    for r in rows.iter().rev() {
        let status = match (r.delivered_ms, r.failed_ms) {
            (Some(_), _) => "delivered",
            (None, Some(_)) => "failed",
            (None, None) => "pending",
        };
        let message = serde_json::from_str::<serde_json::Value>(&r.notice.payload)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let error = r
            .last_error
            .as_deref()
            .map(|e| format!(r#" <span class="error">{}</span>"#, escape(e)))
            .unwrap_or_default();
        let _ = write!(
            out,
            concat!(
                r#"<tr class="notification" data-kind="{kind}"><td>{when}</td><td>{kind}</td>"#,
                r#"<td class="status-{status}">{status}{error}</td><td>{attempts}</td><td>{message}</td></tr>"#
            ),
            kind = escape(&r.notice.kind),
            when = time_el(r.notice.at_ms, &ago(r.notice.at_ms, now_ms)),
            status = status,
            error = error,
            attempts = r.attempts,
            message = escape(&message),
        );
    }
    if rows.is_empty() {
        out.push_str(r#"<tr class="none"><td colspan="5">No notifications.</td></tr>"#);
    }
    out.push_str("</tbody></table>");
    out
}

fn windows_of(q: &QuotaRow) -> Vec<WindowData<'_>> {
    q.quota
        .iter()
        .flat_map(|q| &q.windows)
        .map(|w| WindowData {
            name: &w.name,
            seconds: w.window_seconds,
            used_percent: w.used_percent,
            resets_at: w.resets_at,
        })
        .collect()
}

/// The page a re-login button answers: the authorize URL to follow in
/// this browser (a link, not a redirect: the page's policy allows forms to
/// post to this server only).
pub fn relogin_page(id: &str, authorize_url: &str, chrome: Chrome<'_>) -> String {
    let body = format!(
        concat!(
            r#"<h1>Sign {id} in again</h1>"#,
            r#"<p>Open the provider's sign-in page and approve; it sends the browser back to this "#,
            r#"server's <code>/oauth/callback</code>, which stores the new tokens under {id}.</p>"#,
            r#"<p><a id="relogin-link" href="{url}" rel="noreferrer">Continue to the sign-in page</a></p>"#,
            r#"<p><a href="/ui/credentials/{path}">Back to {id}</a></p>"#
        ),
        id = escape(id),
        url = escape(authorize_url),
        path = escape(&super::url_component(id)),
    );
    page("Sign in again", Some(chrome), &body)
}

/// The credential page.
pub fn page_html(v: &CredentialView<'_>) -> String {
    let s = v.summary;
    let id_path = super::url_component(s.id);
    let state = escape(s.state);
    let mut facts = String::from(r#"<dl id="facts">"#);
    let mut fact = |name: &str, value: String| {
        let _ = write!(facts, "<dt>{}</dt><dd>{value}</dd>", escape(name));
    };
    fact("Provider", escape(s.provider));
    fact(
        "Account",
        escape(s.email.or(s.account_id).unwrap_or("unknown")),
    );
    if let Some(p) = s.plan_type {
        fact("Plan", escape(p));
    }
    fact("Version", s.version.to_string());
    fact(
        "Expires",
        match s.expires_at {
            Some(e) => format!(
                r#"<span class="expires" data-expires-ms="{}">{}</span>"#,
                e * 1000,
                time_el(e * 1000, &countdown(e * 1000, v.now_ms))
            ),
            None => "unknown".into(),
        },
    );
    fact(
        "Last refresh",
        s.last_refresh_at.map_or("never".into(), |t| {
            time_el(t * 1000, &ago(t * 1000, v.now_ms))
        }),
    );
    fact("Failures", s.failures.to_string());
    if let Some(t) = s.next_attempt_at {
        fact(
            "Next attempt",
            time_el(t * 1000, &countdown(t * 1000, v.now_ms)),
        );
    }
    if let Some(e) = &s.last_error {
        fact(
            "Last error",
            format!(
                r#"<code>{}</code> {} ({})"#,
                escape(e.code),
                escape(e.message),
                time_el(e.at * 1000, &ago(e.at * 1000, v.now_ms))
            ),
        );
    }
    fact("Pools", escape(&s.pools.join(", ")));
    fact(
        "Cooldown",
        match &s.cooldown {
            Some(c) => format!(
                r#"<span id="cooldown">until {} ({}, {})</span>"#,
                time_el(c.until * 1000, &countdown(c.until * 1000, v.now_ms)),
                escape(c.reason),
                c.source
            ),
            None => r#"<span id="cooldown">none</span>"#.into(),
        },
    );
    facts.push_str("</dl>");
    let relogin = v.chrome.admin.then_some(v.chrome.csrf);
    let fix = fix_html(s, relogin, true);
    let quota = match v.quota {
        Some(q) if q.quota.is_some() => gauges(s.id, &windows_of(q), v.now_ms),
        Some(q) => format!(
            r#"<p class="quota-failed">Last quota fetch: <code>{}</code> {}</p>"#,
            escape(&q.status),
            escape(q.error_message.as_deref().unwrap_or(""))
        ),
        None => r#"<p class="quota-none">No quota snapshot.</p>"#.into(),
    };
    let points: Vec<Point> = v
        .history
        .iter()
        .map(|q| Point {
            at_ms: q.fetched_at_ms,
            windows: windows_of(q),
        })
        .collect();
    let admin_actions = match v.chrome.admin {
        true => actions(s, v.chrome.csrf, v.token_fingerprint),
        false => {
            r#"<p class="read-only-note">Signed in with a read-only key: no actions.</p>"#.into()
        }
    };
    let body = format!(
        concat!(
            "{flash}",
            r#"<p class="crumbs"><a href="/ui">← Credentials</a></p>"#,
            r#"<h1 id="credential-id">{id}</h1>"#,
            r#"<p><span id="credential-state" class="badge state-{state}">{state}</span></p>"#,
            "{fix}{facts}{actions}",
            r#"<section id="quota"><h2>Quota</h2>{quota}{history}</section>"#,
            r#"<section id="latency"><h2>Refresh latency</h2><p id="refresh-latency">{latency}</p></section>"#,
            r#"<section><h2>Events (newest first)</h2>{events}</section>"#,
            r#"<section><h2>Handles</h2>{handles}</section>"#,
            r#"<section><h2>Notifications</h2>{notifications}</section>"#
        ),
        flash = flash(v.flash),
        id = escape(s.id),
        state = state,
        fix = fix,
        facts = facts,
        actions = admin_actions,
        quota = quota,
        history = history(&points),
        latency = escape(&latency_text(&latencies(v.events))),
        events = events_html(v.events, v.now_ms),
        handles = handles_html(v.handles, v.chrome.admin, &id_path, v.chrome.csrf, v.now_ms),
        notifications = notifications_html(v.notifications, v.now_ms),
    );
    page(s.id, Some(v.chrome), &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::ui::render::testkit::{credential, summary_of, SECRETS};
    use crate::provider::usage::{Quota, Window};
    use crate::{Notice, NotificationRow};

    fn event(seq: i64, at_ms: i64, from: Option<&str>, to: &str) -> EventRow {
        let reason = match (from, to) {
            (Some("refreshing"), "valid") => crate::state::REFRESHED.to_owned(),
            _ => "why <i>not</i>".to_owned(),
        };
        EventRow {
            seq,
            credential_id: "a".into(),
            at_ms,
            from: from.map(str::to_owned),
            to: to.into(),
            version: seq,
            actor: "serve pid:42 thread:<w>".into(),
            reason,
        }
    }

    #[test]
    fn latency_pairs_claims_with_successes() {
        let events = [
            event(1, 0, None, "valid"),
            event(2, 1_000, Some("valid"), "refreshing"),
            event(3, 1_250, Some("refreshing"), "valid"),
            event(4, 5_000, Some("expiring"), "refreshing"),
            event(5, 5_900, Some("refreshing"), "expiring"),
            event(6, 9_000, Some("rejected"), "refreshing"),
            event(7, 9_100, Some("refreshing"), "refreshing"),
            event(8, 9_400, Some("refreshing"), "valid"),
            event(9, 10_000, Some("valid"), "refreshing"),
            EventRow {
                reason: "refresh failed transiently; retry in 5 s".into(),
                ..event(10, 13_000, Some("refreshing"), "valid")
            },
        ];
        assert_eq!(latencies(&events), vec![(1_250, 250), (9_400, 400)]);
        let l = [(1, 100), (2, 300), (3, 200)];
        assert_eq!(
            latency_text(&l),
            "Last refresh took 200 ms; median of 3: 200 ms; slowest: 300 ms."
        );
        assert!(latency_text(&[]).starts_with("No completed refresh"));
    }

    fn view_html(admin: bool) -> String {
        let now = 1_700_000_000_000;
        let c = credential("a<script>", "dead", now);
        let s = summary_of(&c, now, "dead");
        let events = [
            event(1, now - 5000, None, "valid"),
            event(2, now - 4000, Some("valid"), "refreshing"),
            event(3, now - 3000, Some("refreshing"), "valid"),
        ];
        let handles = [
            HandleRow {
                hash: "0123456789abcdef".repeat(4),
                credential_id: c.id.clone(),
                label: "laptop <1>".into(),
                created_ms: now - 1000,
                last_used_ms: None,
                served_token: Some("SERVED-FP".into()),
                revoked_ms: None,
            },
            HandleRow {
                hash: "fedcba9876543210".repeat(4),
                credential_id: c.id.clone(),
                label: "old".into(),
                created_ms: now - 1000,
                last_used_ms: Some(now - 10),
                served_token: None,
                revoked_ms: Some(now - 5),
            },
        ];
        let n = NotificationRow {
            seq: 1,
            notice: Notice {
                event_id: "e1".into(),
                kind: "dead".into(),
                credential_id: Some(c.id.clone()),
                payload: r#"{"message":"it died <b>"}"#.into(),
                at_ms: now - 100,
            },
            attempts: 2,
            next_attempt_ms: 0,
            delivered_ms: Some(now - 50),
            failed_ms: None,
            last_error: None,
        };
        let q = QuotaRow {
            credential_id: c.id.clone(),
            fetched_at_ms: now - 60_000,
            status: "ok".into(),
            http_status: Some(200),
            quota: Some(Quota {
                plan_type: None,
                limit_reached: None,
                windows: vec![Window {
                    name: "primary".into(),
                    used_percent: 42.0,
                    window_seconds: Some(18_000),
                    resets_at: Some(now / 1000 + 100),
                }],
                credits: None,
            }),
            error_message: None,
        };
        let history = [q.clone(), q.clone()];
        page_html(&CredentialView {
            summary: &s,
            events: &events,
            handles: &handles,
            notifications: &[&n],
            quota: Some(&q),
            history: &history,
            chrome: Chrome {
                csrf: "CSRF1",
                admin,
            },
            flash: None,
            now_ms: now,
            token_fingerprint: Some("0123456789abcdef"),
        })
    }

    #[test]
    fn the_page_shows_everything_and_no_secret() {
        let html = view_html(true);
        for want in [
            r#"<h1 id="credential-id">a&lt;script&gt;</h1>"#,
            r#"<span id="credential-state" class="badge state-dead">dead</span>"#,
            r#"<ol id="events" reversed>"#,
            r#"<li class="event" data-seq="3" data-to="valid">"#,
            "serve pid:42 thread:&lt;w&gt;",
            "why &lt;i&gt;not&lt;/i&gt;",
            r#"<p id="refresh-latency">Last refresh took 1000 ms"#,
            r#"<table id="handles">"#,
            r#"<tr class="handle" data-handle-id="0123456789ab">"#,
            r#"<tr class="handle revoked" data-handle-id="fedcba987654">"#,
            "laptop &lt;1&gt;",
            r#"<table id="notifications">"#,
            "it died &lt;b&gt;",
            r#"<svg class="gauge level-ok" data-window="5h""#,
            r#"<svg class="quota-history""#,
            r#"<div class="fix" id="fix">"#,
            "tokenwarden login codex --id &#39;a&lt;script&gt;&#39;",
        ] {
            assert!(html.contains(want), "{want} missing in {html}");
        }
        for secret in SECRETS {
            assert!(!html.contains(secret), "{secret} rendered");
        }
        assert!(!html.contains("<script>"), "markup from data is escaped");
        assert!(!html.contains("SERVED-FP"));
        assert!(
            !html.contains(&"0123456789abcdef".repeat(2)),
            "only the short id of a handle"
        );
        assert!(!html.contains("style="));
    }

    #[test]
    fn actions_for_admin_sessions_only() {
        let admin = view_html(true);
        for name in [
            "refresh",
            "reject",
            "cooldown",
            "clear-cooldown",
            "delete",
            "revoke-handle",
        ] {
            assert!(
                admin.contains(&format!(r#"<form class="action" method="post" data-action="{name}" action="/ui/credentials/a%3Cscript%3E/{name}""#)),
                "{name} in {admin}"
            );
        }
        assert_eq!(
            admin.matches(r#"data-action="revoke-handle""#).count(),
            1,
            "active handles only"
        );
        assert!(admin.contains(r#"<input type="number" name="seconds""#));
        assert!(admin.contains(r#"<input type="hidden" name="handle" value="0123456789ab">"#));
        assert!(admin.contains(r#"<input type="hidden" name="csrf" value="CSRF1">"#));
        let read = view_html(false);
        assert!(!read.contains(r#"class="action""#), "{read}");
        assert!(!read.contains("data-action"));
        assert!(read.contains("read-only"));
    }
}
