//! Quota, drawn by the server: one gauge per window (`5h`, `weekly`, …)
//! with its reset time, and a small history chart of a credential's
//! snapshots. Inline SVG with presentation attributes only (no `style`).

use std::fmt::Write as _;

use super::{countdown, escape, time_el};

/// One window of a snapshot, as a gauge shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowData<'a> {
    /// Upstream's name (`primary`, `five_hour`, …).
    pub name: &'a str,
    /// Its length in seconds, when upstream said.
    pub seconds: Option<i64>,
    /// Percent used (may exceed 100, or be nonsense).
    pub used_percent: f64,
    /// When it resets (unix seconds).
    pub resets_at: Option<i64>,
}

/// The label of a window: `5h` and `weekly` for the windows Codex and
/// Claude report (by length when upstream says it, else by name: Codex's
/// `primary` is its 5-hour window and `secondary` its weekly one), else
/// upstream's name.
pub fn label(name: &str, seconds: Option<i64>) -> String {
    match (seconds, name) {
        (Some(18_000), _) | (None, "primary" | "five_hour") => "5h".into(),
        (Some(604_800), "primary" | "secondary" | "seven_day")
        | (None, "secondary" | "seven_day") => "weekly".into(),
        (_, n) if n.starts_with("seven_day_") => format!("weekly-{}", &n["seven_day_".len()..]),
        (Some(s), "primary" | "secondary") if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        (_, n) => n.to_owned(),
    }
}

/// A percentage fit to draw: NaN and negatives as 0.
fn sane(p: f64) -> f64 {
    if p.is_finite() && p > 0.0 {
        p
    } else {
        0.0
    }
}

/// The level class of a percentage: `ok` below 80, `warn` below 100,
/// `full` at 100, `over` past it.
pub fn level(p: f64) -> &'static str {
    let p = sane(p);
    if p < 80.0 {
        "ok"
    } else if p < 100.0 {
        "warn"
    } else if p == 100.0 {
        "full"
    } else {
        "over"
    }
}

/// Width of a gauge's bar, in SVG units.
const GAUGE_W: f64 = 120.0;

/// One gauge: `<svg class="gauge" data-window="5h">` (the bar filled to
/// the share used, capped at full) and its reset time.
pub fn gauge(w: &WindowData<'_>, now_ms: i64) -> String {
    let label = label(w.name, w.seconds);
    let p = sane(w.used_percent);
    let fill = (p.min(100.0) / 100.0 * GAUGE_W).round();
    let shown = format!("{}%", (p * 10.0).round() / 10.0);
    let reset = match w.resets_at {
        Some(r) => {
            let ms = r.saturating_mul(1000);
            format!(
                r#"<span class="reset">resets {}</span>"#,
                time_el(ms, &countdown(ms, now_ms).replace("expired", "reset"))
            )
        }
        None => String::new(),
    };
    format!(
        concat!(
            r#"<span class="window"><span class="window-name">{label}</span>"#,
            r#"<svg class="gauge level-{level}" data-window="{label}" data-used="{p}" "#,
            r#"viewBox="0 0 {w} 14" width="{w}" height="14" role="img" aria-label="{label}: {shown} used">"#,
            "<title>{label}: {shown} used</title>",
            r#"<rect class="track" x="0" y="0" width="{w}" height="14" rx="3"></rect>"#,
            r#"<rect class="fill" x="0" y="0" width="{fill}" height="14" rx="3"></rect>"#,
            "</svg>",
            r#"<span class="used">{shown}</span>{reset}</span>"#
        ),
        label = escape(&label),
        level = level(p),
        p = p,
        w = GAUGE_W,
        fill = fill,
        shown = shown,
        reset = reset,
    )
}

/// The gauges of a credential's newest snapshot:
/// `<div class="quota" data-id="ID">`, or nothing when it has none.
pub fn gauges(id: &str, windows: &[WindowData<'_>], now_ms: i64) -> String {
    if windows.is_empty() {
        return String::new();
    }
    let mut out = format!(r#"<div class="quota" data-id="{}">"#, escape(id));
    for w in windows {
        out.push_str(&gauge(w, now_ms));
    }
    out.push_str("</div>");
    out
}

/// One snapshot of the history: when, and each window's share used.
#[derive(Debug, Clone, PartialEq)]
pub struct Point<'a> {
    /// When it was fetched (unix ms).
    pub at_ms: i64,
    /// Its windows.
    pub windows: Vec<WindowData<'a>>,
}

/// Chart size, in SVG units.
const CHART_W: f64 = 480.0;
const CHART_H: f64 = 120.0;

/// The history chart, `<svg class="quota-history">`: one line per window
/// label over time, 0–100 % (higher values drawn at the top). Empty when
/// there are no snapshots with windows.
pub fn history(points: &[Point<'_>]) -> String {
    let points: Vec<&Point> = points.iter().filter(|p| !p.windows.is_empty()).collect();
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return r#"<p class="quota-history-empty">No quota history yet.</p>"#.into();
    };
    let (t0, t1) = (first.at_ms, last.at_ms);
    let x = |t: i64| -> f64 {
        match t1 - t0 {
            0 => CHART_W,
            span => ((t - t0) as f64 / span as f64 * CHART_W).round(),
        }
    };
    let y = |p: f64| -> f64 { (CHART_H - sane(p).min(100.0) / 100.0 * CHART_H).round() };
    // Labels in order of first appearance.
    let mut labels: Vec<String> = Vec::new();
    for p in &points {
        for w in &p.windows {
            let l = label(w.name, w.seconds);
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
    }
    let mut out = format!(
        concat!(
            r#"<svg class="quota-history" viewBox="-4 -4 {vw} {vh}" width="{vw}" height="{vh}" role="img" "#,
            r#"aria-label="quota used over time">"#,
            "<title>Quota used over time</title>",
            r#"<line class="axis" x1="0" y1="{h}" x2="{w}" y2="{h}"></line>"#,
            r#"<line class="limit" x1="0" y1="0" x2="{w}" y2="0"></line>"#
        ),
        vw = CHART_W + 8.0,
        vh = CHART_H + 8.0,
        w = CHART_W,
        h = CHART_H,
    );
    for (i, l) in labels.iter().enumerate() {
        let coords: Vec<String> = points
            .iter()
            .filter_map(|p| {
                p.windows
                    .iter()
                    .find(|w| &label(w.name, w.seconds) == l)
                    .map(|w| format!("{},{}", x(p.at_ms), y(w.used_percent)))
            })
            .collect();
        let _ = write!(
            out,
            r#"<polyline class="series series-{i}" data-window="{l}" fill="none" points="{}"><title>{l}</title></polyline>"#,
            coords.join(" "),
            i = i % 4,
            l = escape(l),
        );
    }
    out.push_str("</svg>");
    let _ = write!(
        out,
        r#"<p class="quota-history-range">{} snapshot(s), {} to {}</p>"#,
        points.len(),
        time_el(t0, &crate::rfc3339::format(t0.div_euclid(1000) * 1000)),
        time_el(t1, &crate::rfc3339::format(t1.div_euclid(1000) * 1000)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, seconds: Option<i64>, p: f64) -> WindowData<'_> {
        WindowData {
            name,
            seconds,
            used_percent: p,
            resets_at: None,
        }
    }

    #[test]
    fn labels_table() {
        for (name, secs, want) in [
            ("primary", Some(18_000), "5h"),
            ("primary", None, "5h"),
            ("secondary", Some(604_800), "weekly"),
            ("secondary", None, "weekly"),
            ("five_hour", None, "5h"),
            ("seven_day", None, "weekly"),
            ("seven_day_opus", None, "weekly-opus"),
            ("primary", Some(7_200), "2h"),
            ("<odd>", None, "<odd>"),
        ] {
            assert_eq!(label(name, secs), want, "{name} {secs:?}");
        }
    }

    #[test]
    fn gauges_for_0_50_100_and_over() {
        let now = 1_700_000_000_000;
        // (percent, level, filled width, shown text)
        for (p, lvl, fill, shown) in [
            (0.0, "ok", "0", "0%"),
            (50.0, "ok", "60", "50%"),
            (85.5, "warn", "103", "85.5%"),
            (100.0, "full", "120", "100%"),
            (130.0, "over", "120", "130%"),
            (-5.0, "ok", "0", "0%"),
            (f64::NAN, "ok", "0", "0%"),
        ] {
            let g = gauge(&w("primary", None, p), now);
            assert!(
                g.contains(&format!(r#"class="gauge level-{lvl}""#)),
                "{p}: {g}"
            );
            assert!(
                g.contains(&format!(r#"class="fill" x="0" y="0" width="{fill}""#)),
                "{p}: {g}"
            );
            assert!(g.contains(&format!(">{shown}</span>")), "{p}: {g}");
            assert!(g.contains(r#"data-window="5h""#));
            assert!(!g.contains("style="));
        }
        let reset = WindowData {
            resets_at: Some(now / 1000 + 3600),
            ..w("seven_day", None, 10.0)
        };
        let g = gauge(&reset, now);
        assert!(g.contains("resets <time") && g.contains("in 1h 0m"), "{g}");
    }

    #[test]
    fn gauges_escape_names_and_ids() {
        let g = gauges("<id>", &[w("\"><script>", None, 1.0)], 0);
        assert!(g.contains(r#"<div class="quota" data-id="&lt;id&gt;">"#));
        assert!(!g.contains("<script>") && g.contains("&quot;&gt;&lt;script&gt;"));
        assert_eq!(gauges("a", &[], 0), "");
    }

    #[test]
    fn history_draws_one_line_per_window() {
        let pts = vec![
            Point {
                at_ms: 1_000_000,
                windows: vec![w("primary", None, 0.0), w("secondary", None, 50.0)],
            },
            Point {
                at_ms: 2_000_000,
                windows: vec![],
            },
            Point {
                at_ms: 3_000_000,
                windows: vec![w("primary", None, 100.0), w("secondary", None, 150.0)],
            },
        ];
        let h = history(&pts);
        assert!(h.starts_with(r#"<svg class="quota-history""#), "{h}");
        assert!(
            h.contains(r#"data-window="5h" fill="none" points="0,120 480,0""#),
            "{h}"
        );
        assert!(
            h.contains(r#"data-window="weekly" fill="none" points="0,60 480,0""#),
            "{h}"
        );
        assert!(h.contains("2 snapshot(s)"));
        assert!(history(&[]).contains("No quota history"));
        let one = history(&pts[..1]);
        assert!(one.contains(r#"points="480,120""#), "{one}");
    }
}
