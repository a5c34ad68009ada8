//! Inline SVG charts for the HTML report: plain markup, no script, readable without JavaScript.

use std::fmt::Write as _;

const W: f64 = 720.0;
const H: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn open(id: &str, title: &str) -> String {
    format!(
        "<svg id=\"{}\" class=\"chart\" role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {W} {H}\" \
         width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#ffffff\"/>\
         <text x=\"{LEFT}\" y=\"18\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        esc(id),
        esc(title),
        esc(title)
    )
}

fn axes(svg: &mut String) {
    let (x0, y0, x1, y1) = (LEFT, H - BOTTOM, W - RIGHT, TOP);
    let _ = write!(
        svg,
        "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#333\"/>\
         <line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"#333\"/>"
    );
}

fn empty(svg: &mut String, what: &str) {
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"#666\">{}</text>",
        LEFT + 10.0,
        H / 2.0,
        esc(what)
    );
}

/// A bar per bucket (`labels[i]`, `values[i]`).
pub fn bars(id: &str, title: &str, labels: &[String], values: &[u64], color: &str) -> String {
    let mut svg = open(id, title);
    axes(&mut svg);
    let peak = values.iter().copied().max().unwrap_or(0);
    if peak == 0 {
        empty(&mut svg, "no samples");
    } else {
        let n = values.len().max(1) as f64;
        let slot = (W - LEFT - RIGHT) / n;
        let plot_h = H - TOP - BOTTOM;
        for (i, (label, v)) in labels.iter().zip(values).enumerate() {
            let h = plot_h * (*v as f64) / peak as f64;
            let x = LEFT + slot * i as f64 + 1.0;
            let y = H - BOTTOM - h;
            let _ = write!(
                svg,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" \
                 fill=\"{color}\"><title>{}: {v}</title></rect>",
                (slot - 2.0).max(1.0),
                esc(label)
            );
            if labels.len() <= 24 || i % 2 == 0 {
                let _ = write!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\">{}</text>",
                    x + slot / 2.0,
                    H - BOTTOM + 12.0,
                    esc(label)
                );
            }
        }
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{TOP}\" font-size=\"10\">{peak}</text>\
             <text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">wakeup latency (µs, log2 buckets)</text>",
            W / 2.0,
            H - 6.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One named series of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// Lines over time (x in seconds since start).
pub fn lines(id: &str, title: &str, unit: &str, duration_s: f64, series: &[Series<'_>]) -> String {
    let mut svg = open(id, title);
    axes(&mut svg);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    if series.iter().all(|s| s.points.is_empty()) {
        empty(&mut svg, "no samples");
        svg.push_str("</svg>");
        return svg;
    }
    let y_max = if y_max <= 0.0 { 1.0 } else { y_max * 1.1 };
    let x_max = duration_s.max(1.0);
    let sx = |x: f64| LEFT + (W - LEFT - RIGHT) * (x / x_max).clamp(0.0, 1.0);
    let sy = |y: f64| H - BOTTOM - (H - TOP - BOTTOM) * (y / y_max).clamp(0.0, 1.0);
    for (k, s) in series.iter().enumerate() {
        if s.points.is_empty() {
            continue;
        }
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline class=\"series\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"><title>{}</title></polyline>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"{}\">{}</text>",
            s.color,
            pts.join(" "),
            esc(s.name),
            W - RIGHT - 200.0,
            TOP + 14.0 * (k as f64 + 1.0),
            s.color,
            esc(s.name)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"4\" y=\"{:.1}\" font-size=\"10\">{:.1} {}</text>\
         <text x=\"4\" y=\"{:.1}\" font-size=\"10\">0</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{:.0} s</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">time since start (s)</text>",
        TOP + 4.0,
        y_max,
        esc(unit),
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM + 12.0,
        x_max,
        W / 2.0,
        H - 6.0
    );
    svg.push_str("</svg>");
    svg
}

/// One mark on the time axis.
pub struct Mark {
    pub t_s: f64,
    pub lane: usize,
    pub color: &'static str,
    pub label: String,
}

/// Actions as marks on the time axis, one lane per kind of action (`lanes` names them).
pub fn timeline(id: &str, title: &str, duration_s: f64, lanes: &[&str], marks: &[Mark]) -> String {
    let mut svg = open(id, title);
    axes(&mut svg);
    if marks.is_empty() {
        empty(&mut svg, "no actions");
        svg.push_str("</svg>");
        return svg;
    }
    let x_max = duration_s.max(1.0);
    let lane_h = (H - TOP - BOTTOM) / lanes.len().max(1) as f64;
    for (i, lane) in lanes.iter().enumerate() {
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"10\">{}</text>",
            TOP + lane_h * (i as f64 + 0.6),
            esc(lane)
        );
    }
    for m in marks {
        let x = LEFT + (W - LEFT - RIGHT) * (m.t_s / x_max).clamp(0.0, 1.0);
        let y = TOP + lane_h * m.lane as f64 + 2.0;
        let _ = write!(
            svg,
            "<rect class=\"mark\" x=\"{:.1}\" y=\"{y:.1}\" width=\"3\" height=\"{:.1}\" fill=\"{}\"><title>{:.1} s: {}</title></rect>",
            x - 1.5,
            (lane_h - 4.0).max(2.0),
            m.color,
            m.t_s,
            esc(&m.label)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{:.0} s</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">time since start (s)</text>",
        W - RIGHT,
        H - BOTTOM + 12.0,
        x_max,
        W / 2.0,
        H - 6.0
    );
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let svg = bars("h", "<b>", &["1".into()], &[3], "#000");
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
    }

    #[test]
    fn empty_charts_say_so() {
        assert!(bars("h", "t", &[], &[], "#000").contains("no samples"));
        assert!(lines("l", "t", "µs", 10.0, &[]).contains("no samples"));
        assert!(timeline("t", "t", 10.0, &["a"], &[]).contains("no actions"));
    }
}
