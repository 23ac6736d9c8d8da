//! Inline SVG charts: the version distribution and telemetry sparklines. No script, no assets.

use maud::{html, Markup, PreEscaped};

/// Bar colours, cycled.
const PALETTE: [&str; 6] = [
    "#2f6fdf", "#2e9d5b", "#c9852b", "#8a4fc7", "#c44949", "#4a9aa8",
];

/// A horizontal bar per version (label, count), longest bar for the largest count.
pub fn version_bars(versions: &[(String, u64)]) -> Markup {
    let shown: Vec<&(String, u64)> = versions.iter().take(8).collect();
    let max = shown.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let row_h = 22;
    let height = row_h * shown.len().max(1);
    let label_w = 120.0;
    let bar_w = 300.0;
    html! {
        svg.chart role="img" aria-label="Devices by release" width="480" height=(height)
            viewBox=(format!("0 0 480 {height}")) {
            @for (i, (label, n)) in shown.iter().enumerate() {
                @let y = i * row_h;
                @let w = (*n as f64 / max as f64 * bar_w).max(1.0);
                text x="0" y=(y + 15) class="mono" { (label) }
                rect x=(label_w) y=(y + 3) width=(format!("{w:.1}")) height="16"
                    fill=(PALETTE[i % PALETTE.len()]) { title { (label) ": " (n) " devices" } }
                text x=(format!("{:.1}", label_w + w + 6.0)) y=(y + 15) { (n) }
            }
            @if shown.is_empty() {
                text x="0" y="15" { "no devices yet" }
            }
        }
    }
}

/// The points of a sparkline over `values` in a `w`×`h` box (the minimum at the bottom).
pub fn sparkline_points(values: &[f64], w: f64, h: f64) -> String {
    if values.is_empty() {
        return String::new();
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let step = if values.len() > 1 {
        w / (values.len() - 1) as f64
    } else {
        0.0
    };
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = i as f64 * step;
            let y = if hi > lo {
                h - 1.0 - (v - lo) / span * (h - 2.0)
            } else {
                h / 2.0
            };
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A sparkline with its name and latest value.
pub fn sparkline(name: &str, values: &[f64], latest: &str) -> Markup {
    let (w, h) = (160.0, 32.0);
    html! {
        figure.spark data-metric=(name) {
            figcaption { (name) " " strong { (latest) } }
            @if values.len() < 2 {
                span.muted { "not enough samples yet" }
            } @else {
                svg role="img" aria-label=(format!("{name} over time")) width="160" height="32" viewBox="0 0 160 32" {
                    polyline fill="none" stroke="#2f6fdf" stroke-width="1.5"
                        points=(PreEscaped(sparkline_points(values, w, h))) {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_count() {
        let svg = version_bars(&[("aaa".into(), 10), ("bbb".into(), 5)]).into_string();
        assert!(svg.contains(r#"width="300.0""#), "{svg}");
        assert!(svg.contains(r#"width="150.0""#), "{svg}");
        assert!(svg.contains("bbb: 5 devices"));
        assert!(version_bars(&[]).into_string().contains("no devices yet"));
    }

    #[test]
    fn sparkline_spans_the_box_min_at_bottom() {
        let p = sparkline_points(&[0.0, 50.0, 100.0], 160.0, 32.0);
        assert_eq!(p, "0.0,31.0 80.0,16.0 160.0,1.0");
        assert_eq!(
            sparkline_points(&[5.0, 5.0], 160.0, 32.0),
            "0.0,16.0 160.0,16.0"
        );
        assert!(sparkline("cpu", &[1.0], "1 %")
            .into_string()
            .contains("not enough samples"));
    }
}
