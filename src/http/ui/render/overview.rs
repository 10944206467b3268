//! The overview: every credential of one page as a row (state badge,
//! provider, account, expiry countdown, last refresh, failures, pools,
//! cooldown, quota gauges), dead and failing ones first with what fixes
//! them; the filters; the next-page link. The rows alone
//! (`<tbody id="credential-rows">`) are also the fragment the page's
//! script fetches every few seconds.

use std::fmt::Write as _;

use crate::login::shell_word;
use crate::provider::ProviderKind;
use crate::state::State;
use crate::view::Summary;

use super::quota::{gauges, WindowData};
use super::{ago, countdown, escape, flash, page, time_el, url_component, Chrome};
use crate::http::ui::session::Flash;

/// Rows per page of the overview.
pub const PAGE_ROWS: usize = 200;

/// The overview's filters and cursor (query parameters of `/ui` and
/// `/ui/overview`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Only this effective state.
    pub state: Option<State>,
    /// Only this provider.
    pub provider: Option<ProviderKind>,
    /// Only this pool's members.
    pub pool: Option<String>,
    /// Only ids after this one (the page cursor).
    pub after: Option<String>,
}

impl Filters {
    /// The query string of these filters (`state=dead&pool=p`), without
    /// the cursor; `&`-joined, each value URL-encoded.
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.state {
            parts.push(format!("state={}", s.as_str()));
        }
        if let Some(p) = self.provider {
            parts.push(format!("provider={}", p.as_str()));
        }
        if let Some(p) = &self.pool {
            parts.push(format!("pool={}", url_component(p)));
        }
        parts.join("&")
    }
}

/// Where a row sorts within its page: dead first, then failing (a
/// refresh failed since the last success), then the rest in id order.
pub fn rank(s: &Summary<'_>) -> u8 {
    match s.state {
        "dead" => 0,
        _ if s.failures > 0 => 1,
        _ => 2,
    }
}

/// What fixes a dead or failing credential: the reason and the exact
/// command, or `None` for a healthy one.
pub fn fix(s: &Summary<'_>) -> Option<(String, String)> {
    let error = s
        .last_error
        .as_ref()
        .map(|e| format!("{}: {}", e.code, e.message));
    if s.state == "dead" {
        let reason = match (s.dead_reason, &error) {
            (_, Some(e)) => e.clone(),
            (Some(r), None) => r.to_owned(),
            (None, None) => "the refresh token was refused".into(),
        };
        let command = s.relogin.clone().unwrap_or_else(|| {
            format!("tokenwarden login {} --id {}", s.provider, shell_word(s.id))
        });
        return Some((reason, command));
    }
    if s.failures > 0 {
        let reason = error.unwrap_or_else(|| format!("{} failed refresh(es)", s.failures));
        let id = match s.id.starts_with('-') {
            true => format!("-- {}", shell_word(s.id)),
            false => shell_word(s.id),
        };
        return Some((reason, format!("tokenwarden refresh --force {id}")));
    }
    None
}

/// The `.fix` element of a dead or failing credential (empty for a
/// healthy one): the reason, the command, and for a dead `oauth2`
/// credential, when `relogin` holds an admin session's CSRF token, the
/// button that signs it in again over the API. `id` gives it `id="fix"`.
pub fn fix_html(s: &Summary<'_>, relogin: Option<&str>, id: bool) -> String {
    let Some((reason, command)) = fix(s) else {
        return String::new();
    };
    let button = match relogin {
        Some(csrf) if s.state == "dead" && s.provider == "oauth2" => {
            super::credential::action_form(
                &url_component(s.id),
                "relogin",
                csrf,
                "",
                "Sign in again",
                &format!("Sign {} in again in this browser?", s.id),
            )
        }
        _ => String::new(),
    };
    format!(
        concat!(
            r#"<div class="fix"{}><span class="reason">{}</span> "#,
            r#"<span class="fix-label">Fix:</span> <code class="command">{}</code>{}</div>"#
        ),
        if id { r#" id="fix""# } else { "" },
        escape(&reason),
        escape(&command),
        button
    )
}

/// The windows of a summary's newest snapshot.
fn windows<'a>(s: &'a Summary<'a>) -> Vec<WindowData<'a>> {
    s.quota
        .iter()
        .flat_map(|q| &q.windows)
        .map(|w| WindowData {
            name: w.name,
            seconds: None,
            used_percent: w.used_percent,
            resets_at: w.resets_at,
        })
        .collect()
}

/// One credential's row; `relogin` as in [`fix_html`].
pub fn row(s: &Summary<'_>, now_ms: i64, relogin: Option<&str>) -> String {
    let id = escape(s.id);
    let href = format!("/ui/credentials/{}", url_component(s.id));
    let state = escape(s.state);
    let fix = fix_html(s, relogin, false);
    let account = match (s.email, s.account_id) {
        (Some(e), _) => escape(e),
        (None, Some(a)) => escape(a),
        (None, None) => String::new(),
    };
    let plan = s
        .plan_type
        .map(|p| format!(r#" <span class="plan">{}</span>"#, escape(p)))
        .unwrap_or_default();
    let (expires_ms, expires) = match s.expires_at {
        Some(e) => {
            let ms = e.saturating_mul(1000);
            (ms.to_string(), time_el(ms, &countdown(ms, now_ms)))
        }
        None => (String::new(), "unknown".into()),
    };
    let last = match s.last_refresh_at {
        Some(t) => time_el(t * 1000, &ago(t * 1000, now_ms)),
        None => "never".into(),
    };
    let retry = match s.next_attempt_at {
        Some(t) => format!(
            r#" <span class="retry">retry {}</span>"#,
            time_el(t * 1000, &countdown(t * 1000, now_ms))
        ),
        None => String::new(),
    };
    let pools = s
        .pools
        .iter()
        .map(|p| {
            format!(
                r#"<a class="pool" href="/ui?pool={}">{}</a>"#,
                url_component(p),
                escape(p)
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    let cooldown = match &s.cooldown {
        Some(c) => format!(
            r#"until {} <span class="cooldown-reason">{}</span>"#,
            time_el(c.until * 1000, &countdown(c.until * 1000, now_ms)),
            escape(c.reason)
        ),
        None => String::new(),
    };
    let quota = gauges(s.id, &windows(s), now_ms);
    format!(
        concat!(
            r#"<tr class="credential" data-id="{id}" data-state="{state}">"#,
            r#"<td class="id"><a class="credential-link" href="{href}">{id}</a></td>"#,
            r#"<td class="state"><span class="badge state-{state}">{state}</span>{fix}</td>"#,
            r#"<td class="provider">{provider}</td>"#,
            r#"<td class="account">{account}{plan}</td>"#,
            r#"<td class="expires" data-expires-ms="{expires_ms}">{expires}</td>"#,
            r#"<td class="last-refresh">{last}</td>"#,
            r#"<td class="failures">{failures}{retry}</td>"#,
            r#"<td class="pools">{pools}</td>"#,
            r#"<td class="cooldown">{cooldown}</td>"#,
            r#"<td class="quota-cell">{quota}</td>"#,
            "</tr>"
        ),
        id = id,
        href = escape(&href),
        state = state,
        fix = fix,
        provider = escape(s.provider),
        account = account,
        plan = plan,
        expires_ms = expires_ms,
        expires = expires,
        last = last,
        failures = s.failures,
        retry = retry,
        pools = pools,
        cooldown = cooldown,
        quota = quota,
    )
}

/// The rows of one page, each with its [`rank`]: sorted (stable, so id
/// order within a rank) into `<tbody id="credential-rows">`.
pub fn rows(mut ranked: Vec<(u8, String)>) -> String {
    ranked.sort_by_key(|(r, _)| *r);
    let mut out = String::from(r#"<tbody id="credential-rows">"#);
    if ranked.is_empty() {
        out.push_str(r#"<tr class="empty"><td colspan="10">No credentials match.</td></tr>"#);
    }
    for (_, r) in ranked {
        out.push_str(&r);
    }
    out.push_str("</tbody>");
    out
}

/// Everything the overview page shows beside its rows.
#[derive(Debug)]
pub struct Overview<'a> {
    /// The rows (`<tbody>`), from [`rows`].
    pub rows: String,
    /// The filters in force.
    pub filters: &'a Filters,
    /// Every pool name, for the pool filter.
    pub pools: &'a [String],
    /// Credentials per effective state, over the whole table.
    pub counts: &'a [(&'static str, u64)],
    /// The next page's cursor, if more rows follow.
    pub next: Option<&'a str>,
    /// Who is signed in.
    pub chrome: Chrome<'a>,
    /// The last action's message.
    pub flash: Option<&'a Flash>,
}

fn select(name: &str, label: &str, options: &[String], chosen: Option<&str>) -> String {
    let mut out = format!(
        r#"<label>{label} <select name="{name}" id="filter-{name}"><option value="">all</option>"#
    );
    for o in options {
        let sel = if chosen == Some(o.as_str()) {
            " selected"
        } else {
            ""
        };
        let o = escape(o);
        let _ = write!(out, r#"<option value="{o}"{sel}>{o}</option>"#);
    }
    out.push_str("</select></label>");
    out
}

/// The overview page.
pub fn page_html(o: &Overview<'_>) -> String {
    let f = o.filters;
    let states: Vec<String> = State::ALL.iter().map(|s| s.as_str().to_owned()).collect();
    let providers: Vec<String> = ["codex", "claude", "google", "oauth2"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let counts = o
        .counts
        .iter()
        .map(|(s, n)| {
            format!(
                r#"<a class="count" href="/ui?state={s}" data-state="{s}"><span class="badge state-{s}">{s}</span> <span class="n">{n}</span></a>"#
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    let filters = format!(
        concat!(
            r#"<form id="filters" method="get" action="/ui">{}{}{}"#,
            r#"<button type="submit" id="filters-apply">Filter</button></form>"#
        ),
        select("state", "State", &states, f.state.map(State::as_str)),
        select(
            "provider",
            "Provider",
            &providers,
            f.provider.map(ProviderKind::as_str)
        ),
        select("pool", "Pool", o.pools, f.pool.as_deref()),
    );
    let next = match o.next {
        Some(n) => {
            let q = f.query();
            let sep = if q.is_empty() { "" } else { "&" };
            let href = format!("/ui?{q}{sep}after={}", url_component(n));
            format!(
                r#"<nav class="pages"><a id="next-page" href="{}">Next {PAGE_ROWS} →</a></nav>"#,
                escape(&href),
            )
        }
        None => String::new(),
    };
    let first = match f.after {
        Some(_) => {
            let q = f.query();
            format!(
                r#"<nav class="pages"><a id="first-page" href="/ui?{}">← First page</a></nav>"#,
                escape(&q)
            )
        }
        None => String::new(),
    };
    let body = format!(
        concat!(
            "{flash}<h1>Credentials</h1>",
            r#"<p class="counts" id="counts">{counts}</p>"#,
            "{filters}{first}",
            r#"<table id="credentials"><thead><tr>"#,
            "<th>Id</th><th>State</th><th>Provider</th><th>Account</th><th>Expires</th>",
            "<th>Last refresh</th><th>Failures</th><th>Pools</th><th>Cooldown</th><th>Quota</th>",
            "</tr></thead>{rows}</table>{next}"
        ),
        flash = flash(o.flash),
        counts = counts,
        filters = filters,
        first = first,
        rows = o.rows,
        next = next,
    );
    page("Credentials", Some(o.chrome), &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::ui::render::testkit::{credential, summary_of};

    #[test]
    fn badge_per_state_and_cells() {
        let now = 1_700_000_000_000;
        for state in ["valid", "expiring", "refreshing", "rejected", "dead"] {
            let c = credential("<id>", state, now);
            let html = row(&summary_of(&c, now, state), now, None);
            assert!(
                html.contains(&format!(
                    r#"<span class="badge state-{state}">{state}</span>"#
                )),
                "{html}"
            );
            assert!(html.contains(&format!(
                r#"<tr class="credential" data-id="&lt;id&gt;" data-state="{state}">"#
            )));
            assert!(
                html.contains(r#"href="/ui/credentials/%3Cid%3E""#),
                "{html}"
            );
            for cell in [
                "td class=\"id\"",
                "td class=\"provider\"",
                "td class=\"account\"",
                "td class=\"expires\" data-expires-ms=",
                "td class=\"last-refresh\"",
                "td class=\"failures\"",
                "td class=\"pools\"",
                "td class=\"cooldown\"",
            ] {
                assert!(html.contains(cell), "{cell} in {html}");
            }
            assert!(!html.contains("<id>"));
            for secret in crate::http::ui::render::testkit::SECRETS {
                assert!(!html.contains(secret), "{secret} in {html}");
            }
            assert_eq!(html.contains(r#"class="fix""#), state == "dead", "{state}");
        }
    }

    #[test]
    fn dead_and_failing_rows_come_first() {
        let now = 1_700_000_000_000;
        let mut ranked = Vec::new();
        for (id, state, failures) in [
            ("a", "valid", 0),
            ("b", "dead", 0),
            ("c", "rejected", 0),
            ("d", "expiring", 2),
            ("e", "dead", 1),
            ("f", "refreshing", 0),
        ] {
            let mut c = credential(id, state, now);
            c.status.failures = failures;
            let s = summary_of(&c, now, state);
            ranked.push((rank(&s), row(&s, now, None)));
        }
        let html = rows(ranked);
        let order: Vec<&str> = html
            .split(r#"<tr class="credential" data-id=""#)
            .skip(1)
            .map(|r| &r[..1])
            .collect();
        assert_eq!(order, ["b", "e", "d", "a", "c", "f"]);
        assert!(html.starts_with(r#"<tbody id="credential-rows">"#) && html.ends_with("</tbody>"));
        assert!(rows(Vec::new()).contains("No credentials match"));
    }

    #[test]
    fn fixes_name_the_reason_and_the_command() {
        let now = 1_700_000_000_000;
        let c = credential("-odd id", "dead", now);
        let s = summary_of(&c, now, "dead");
        let (reason, command) = fix(&s).expect("a fix");
        assert!(reason.contains("refresh_token_reused"), "{reason}");
        assert_eq!(command, "tokenwarden login codex --id='-odd id'");
        let mut f = credential("x", "valid", now);
        f.status.failures = 3;
        let s = summary_of(&f, now, "valid");
        let (reason, command) = fix(&s).expect("a fix");
        assert!(reason.contains("refresh_token_reused"), "{reason}");
        assert_eq!(command, "tokenwarden refresh --force x");
        let html = row(&s, now, None);
        assert!(html.contains(r#"<code class="command">tokenwarden refresh --force x</code>"#));
        let ok = credential("y", "valid", now);
        assert!(fix(&summary_of(&ok, now, "valid")).is_none());
    }

    #[test]
    fn a_relogin_button_for_dead_oauth2_rows_of_admins_only() {
        let now = 1_700_000_000_000;
        let mut c = credential("o", "dead", now);
        c.provider.kind = ProviderKind::OAuth2;
        let s = summary_of(&c, now, "dead");
        let admin = row(&s, now, Some("CSRF"));
        assert!(
            admin.contains(r#"data-action="relogin" action="/ui/credentials/o/relogin""#),
            "{admin}"
        );
        assert!(admin.contains(r#"name="csrf" value="CSRF""#));
        assert!(
            !row(&s, now, None).contains("relogin"),
            "read-only: no button"
        );
        let codex = credential("k", "dead", now);
        assert!(!row(&summary_of(&codex, now, "dead"), now, Some("CSRF")).contains("relogin"));
        let mut alive = credential("o", "valid", now);
        alive.provider.kind = ProviderKind::OAuth2;
        assert!(!row(&summary_of(&alive, now, "valid"), now, Some("CSRF")).contains("relogin"));
    }

    #[test]
    fn the_page_has_filters_counts_and_paging() {
        let filters = Filters {
            state: Some(State::Dead),
            provider: None,
            pool: Some("p&q".into()),
            after: Some("m".into()),
        };
        let pools = vec!["p&q".to_owned(), "<pool>".to_owned()];
        let html = page_html(&Overview {
            rows: rows(Vec::new()),
            filters: &filters,
            pools: &pools,
            counts: &[("valid", 3), ("dead", 1)],
            next: Some("z@x"),
            chrome: Chrome {
                csrf: "c",
                admin: true,
            },
            flash: None,
        });
        assert!(html.contains(r#"<form id="filters" method="get" action="/ui">"#));
        for name in ["state", "provider", "pool"] {
            assert!(
                html.contains(&format!(r#"<select name="{name}""#)),
                "{name}"
            );
        }
        assert!(html.contains(r#"<option value="dead" selected>dead</option>"#));
        assert!(html.contains(r#"<option value="p&amp;q" selected>p&amp;q</option>"#));
        assert!(html.contains(r#"<option value="&lt;pool&gt;">"#));
        assert!(
            html.contains(r#"href="/ui?state=dead&amp;pool=p%26q&amp;after=z%40x""#),
            "{html}"
        );
        assert!(html.contains(r#"id="first-page""#));
        assert!(html.contains(r#"<tbody id="credential-rows">"#));
        assert!(!html.contains("<pool>"));
        assert!(
            !html.contains("class=\"action\""),
            "the overview has no action forms"
        );
    }
}
