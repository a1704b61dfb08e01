//! Charts as hand-written SVG: panels of lines (with markers) over rounds or steps, and
//! grouped bars with a list of pass/fail checks.
//!
//! - Text is SVG `<text>` in the viewer's sans-serif font; the check and cross marks are
//!   drawn as paths, so they never depend on a font having the glyph.
//! - Every range is computed in halves (`hi / 2 - lo / 2`), so values up to ±`f64::MAX`
//!   never overflow, and every tick loop is bounded: no input can hang a plot.
//! - Non-finite points are skipped (and counted in a note on the panel).
//! - Every string is escaped, so the SVG can be inlined in HTML as it is.

use std::fmt::Write;

/// The font stack of every label.
pub const FONT: &str = "DejaVu Sans, Liberation Sans, Arial, Helvetica, sans-serif";
/// Line colours, in order.
pub const PALETTE: [&str; 8] = [
    "#1f77b4", "#d95f02", "#2ca02c", "#7b3fa0", "#c62828", "#8c564b", "#d6336c", "#00838f",
];
/// The colour of a starting model's bar.
pub const START_GREY: &str = "#9aa0a6";
const AXIS: &str = "#444";
const GRID: &str = "#e3e3e3";
const PASS: &str = "#1b873f";
const FAIL: &str = "#c62828";

/// `s` with `& < > " '` escaped (for SVG and HTML text and attributes).
/// Every plot ponder writes carries this element, so that a later run can tell its own
/// plot (safe to replace) from a user's file of the same name.
const MARK: &str = "<desc>ponder plot</desc>";

/// Whether `path` holds something other than a ponder plot: a file ponder must not
/// overwrite. Plots from before the mark are recognised by their opening tag.
pub fn foreign_file(path: &std::path::Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false; // absent (or unreadable, and then the write reports it)
    };
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    let older = r#"<svg xmlns="http://www.w3.org/2000/svg" width="#;
    let ours = head.contains(MARK) || (head.starts_with(older) && head.contains(FONT));
    !ours
}

pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A value as a short label: integers whole, others to three decimals below 10 (trailing
/// zeros dropped) and one from 10 on, very large or small ones in scientific notation.
pub fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else {
            format!("{v}")
        };
    }
    let a = v.abs();
    if a >= 1e6 || (a < 1e-3 && a > 0.0) {
        format!("{v:.3e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        let t = format!("{v:.3}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// One number of decimals for every value label of a series, so they line up: none for
/// whole numbers, one from 10 on, else three; None (each value on its own) for very large
/// or small values.
fn series_decimals(vals: impl Iterator<Item = f64> + Clone) -> Option<usize> {
    if vals
        .clone()
        .any(|v| v.abs() >= 1e6 || (v != 0.0 && v.abs() < 1e-3))
    {
        None
    } else if vals.clone().all(|v| v.fract() == 0.0) {
        Some(0)
    } else if vals.clone().all(|v| v.abs() >= 10.0) {
        Some(1)
    } else {
        Some(3)
    }
}

/// Clamp to the finite range (an overflowed bound becomes ±`f64::MAX`).
fn sat(x: f64) -> f64 {
    x.clamp(-f64::MAX, f64::MAX)
}

/// A linear axis over `[lo, hi]` (finite, `lo < hi`) and its tick values.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<f64>,
    step: f64,
}

impl Axis {
    /// An axis over `[lo, hi]` with at most about `max_ticks` ticks at 1, 2 or 5 times a
    /// power of ten. `lo` and `hi` must be finite; an empty or reversed range is widened.
    pub fn new(lo: f64, hi: f64, max_ticks: usize) -> Axis {
        let (lo, hi) = if lo.is_finite() && hi.is_finite() && lo < hi {
            (lo, hi)
        } else {
            let m = if lo.is_finite() { lo } else { 0.0 };
            (m - 0.5, m + 0.5)
        };
        let n = max_ticks.max(2) as f64 - 1.0;
        // the span divided first: finite even for -MAX..MAX
        let raw = hi / n - lo / n;
        let mut step = f64::NAN;
        if raw > 0.0 && raw.is_finite() {
            let base = 10f64.powf(raw.log10().floor());
            let f = raw / base;
            let nice = if f <= 1.0 {
                1.0
            } else if f <= 2.0 {
                2.0
            } else if f <= 5.0 {
                5.0
            } else {
                10.0
            };
            step = nice * base;
        }
        let mut ticks = Vec::new();
        if step.is_finite() && step > 0.0 {
            let first = (lo / step).ceil() * step;
            // bounded: never more than a few times the ticks asked for
            for k in 0..(4 * max_ticks.max(2) + 4) {
                let mut t = first + k as f64 * step;
                if !t.is_finite() || t > hi {
                    break;
                }
                if t.abs() < step * 1e-9 {
                    t = 0.0;
                }
                if ticks.last() != Some(&t) && t >= lo {
                    ticks.push(t);
                }
            }
        }
        Axis {
            lo,
            hi,
            ticks,
            step,
        }
    }

    /// An axis over the finite `values` (None when there is none), padded by `pad` of
    /// the span on each side. Equal values (or a span below a billionth of their size)
    /// get a range of ±5% around them (±0.5 around 0).
    pub fn fit(values: impl IntoIterator<Item = f64>, pad: f64, max_ticks: usize) -> Option<Axis> {
        let (lo, hi) = values.into_iter().filter(|v| v.is_finite()).fold(
            None,
            |acc: Option<(f64, f64)>, v| match acc {
                None => Some((v, v)),
                Some((a, b)) => Some((a.min(v), b.max(v))),
            },
        )?;
        let half = hi / 2.0 - lo / 2.0;
        let mid = lo / 2.0 + hi / 2.0;
        let (lo, hi) = if half <= mid.abs() * 1e-9 || half == 0.0 {
            let h = if mid.abs() * 0.05 > f64::MIN_POSITIVE {
                mid.abs() * 0.05
            } else {
                0.5
            };
            (sat(mid - h), sat(mid + h))
        } else {
            let p = half * 2.0 * pad.clamp(0.0, 0.5);
            (sat(lo - p), sat(hi + p))
        };
        Some(Axis::new(lo, hi, max_ticks))
    }

    /// Where `v` falls: 0 at `lo`, 1 at `hi` (in halves, so nothing overflows).
    pub fn frac(&self, v: f64) -> f64 {
        let d = self.hi / 2.0 - self.lo / 2.0;
        if d > 0.0 {
            (v / 2.0 - self.lo / 2.0) / d
        } else {
            0.5
        }
    }

    /// A tick's label, with as many decimals as the tick step needs.
    pub fn label(&self, v: f64) -> String {
        if v == 0.0 {
            return "0".into();
        }
        let a = v.abs();
        if self.step.is_finite() && self.step >= 1e-3 && a < 1e6 {
            let d = (-(self.step.log10() + 1e-9).floor()).max(0.0) as usize;
            format!("{v:.d$}")
        } else {
            let s = if self.step.is_finite() && self.step > 0.0 {
                self.step
            } else {
                a
            };
            let p = (a.log10().floor() - s.log10().floor()).clamp(0.0, 12.0) as usize;
            format!("{v:.p$e}")
        }
    }
}

/// An SVG document being written.
struct Svg {
    s: String,
}

impl Svg {
    fn new(w: f64, h: f64) -> Svg {
        let mut s = String::new();
        let _ = write!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{FONT}">"##
        );
        let _ = write!(s, "{MARK}");
        let _ = write!(s, r##"<rect width="{w}" height="{h}" fill="#ffffff"/>"##);
        Svg { s }
    }

    /// Text at (x, y); `anchor` is start, middle or end.
    fn text(&mut self, x: f64, y: f64, size: f64, anchor: &str, attrs: &str, t: &str) {
        let _ = write!(
            self.s,
            r##"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}" {attrs}>{}</text>"##,
            escape(t)
        );
    }

    fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str, width: f64) {
        let _ = write!(
            self.s,
            r##"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="{width}"/>"##
        );
    }

    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str) {
        let _ = write!(
            self.s,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}"/>"##
        );
    }

    /// A filled circle with a check (`ok`) or a cross in white, centred at (x, y).
    fn mark(&mut self, x: f64, y: f64, r: f64, ok: bool) {
        let (fill, d) = if ok {
            (
                PASS,
                format!(
                    "M{:.1},{:.1} L{:.1},{:.1} L{:.1},{:.1}",
                    x - 0.5 * r,
                    y + 0.05 * r,
                    x - 0.12 * r,
                    y + 0.45 * r,
                    x + 0.55 * r,
                    y - 0.4 * r
                ),
            )
        } else {
            let k = 0.42 * r;
            (
                FAIL,
                format!(
                    "M{:.1},{:.1} L{:.1},{:.1} M{:.1},{:.1} L{:.1},{:.1}",
                    x - k,
                    y - k,
                    x + k,
                    y + k,
                    x - k,
                    y + k,
                    x + k,
                    y - k
                ),
            )
        };
        let _ = write!(
            self.s,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="{r}" fill="{fill}"/><path d="{d}" stroke="#ffffff" stroke-width="{:.1}" fill="none" stroke-linecap="round" stroke-linejoin="round"/>"##,
            r * 0.28
        );
    }

    fn finish(mut self) -> String {
        self.s.push_str("</svg>");
        self.s
    }
}

/// A panel's title, centred at `cx`, and its horizontal grid lines with their y labels
/// from `x0` across `w` (`py` maps a value to its y coordinate).
#[allow(clippy::too_many_arguments)]
fn title_and_grid(
    svg: &mut Svg,
    cx: f64,
    oy: f64,
    title: &str,
    yaxis: &Axis,
    x0: f64,
    w: f64,
    py: impl Fn(f64) -> f64,
) {
    svg.text(
        cx,
        oy + 26.0,
        16.0,
        "middle",
        r##"font-weight="bold" fill="#222""##,
        title,
    );
    for &t in &yaxis.ticks {
        let y = py(t);
        svg.line(x0, y, x0 + w, y, GRID, 1.0);
        svg.text(
            x0 - 8.0,
            y + 4.0,
            12.0,
            "end",
            r##"fill="#333""##,
            &yaxis.label(t),
        );
    }
}

/// One line of a panel.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart of a [`line_panels`] figure.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Label points with their values up to this many points per series.
const VALUE_LABELS_UP_TO: usize = 12;
/// Draw markers up to this many points per series.
const MARKERS_UP_TO: usize = 60;

/// Panels of lines with markers over one shared x axis named `x_label`: stacked, in two
/// columns from three panels on. With `integer_x` and few distinct whole x values (rounds),
/// every whole value is a tick. Returns None when no panel has a finite point.
pub fn line_panels(panels: &[Panel], x_label: &str, integer_x: bool) -> Option<String> {
    let finite = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let panels: Vec<&Panel> = panels
        .iter()
        .filter(|p| p.series.iter().any(|s| s.points.iter().any(finite)))
        .collect();
    if panels.is_empty() {
        return None;
    }
    let xs = || {
        panels
            .iter()
            .flat_map(|p| &p.series)
            .flat_map(|s| &s.points)
            .filter(|p| finite(p))
            .map(|p| p.0)
    };
    let (xmin, xmax) = xs().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let whole = integer_x && xs().all(|x| x.fract() == 0.0) && xmax / 2.0 - xmin / 2.0 <= 15.0;
    let xaxis = if whole {
        let mut a = Axis::new(xmin - 0.4, xmax + 0.4, 2);
        a.ticks = (0..=(xmax - xmin) as usize)
            .map(|k| xmin + k as f64)
            .collect();
        a
    } else {
        Axis::fit(xs(), 0.03, 8)?
    };
    let cols = if panels.len() >= 3 { 2 } else { 1 };
    let rows = panels.len().div_ceil(cols);
    let (pw, ph) = (if cols == 2 { 560.0 } else { 900.0 }, 320.0);
    let (ml, mr, mt, mb) = (88.0, 24.0, 44.0, 58.0);
    let mut svg = Svg::new(pw * cols as f64, ph * rows as f64);
    for (i, p) in panels.iter().enumerate() {
        let (ox, oy) = ((i % cols) as f64 * pw, (i / cols) as f64 * ph);
        // a panel of several lines has its legend in a row under the title
        let legend = if p.series.len() > 1 { 20.0 } else { 0.0 };
        let (x0, y0, w, h) = (
            ox + ml,
            oy + mt + legend,
            pw - ml - mr,
            ph - mt - mb - legend,
        );
        let pts: Vec<Vec<(f64, f64)>> = p
            .series
            .iter()
            .map(|s| {
                let mut v: Vec<(f64, f64)> = s.points.iter().copied().filter(finite).collect();
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                v
            })
            .collect();
        let skipped: usize = p
            .series
            .iter()
            .map(|s| s.points.iter().filter(|q| !finite(q)).count())
            .sum();
        let Some(yaxis) = Axis::fit(pts.iter().flatten().map(|q| q.1), 0.15, 7) else {
            continue;
        };
        let px = |x: f64| x0 + xaxis.frac(x) * w;
        let py = |y: f64| y0 + h - yaxis.frac(y) * h;
        title_and_grid(&mut svg, ox + pw / 2.0, oy, &p.title, &yaxis, x0, w, py);
        for &t in &xaxis.ticks {
            let x = px(t);
            svg.line(x, y0 + h, x, y0 + h + 5.0, AXIS, 1.0);
            svg.text(
                x,
                y0 + h + 19.0,
                12.0,
                "middle",
                r##"fill="#333""##,
                &xaxis.label(t),
            );
        }
        svg.line(x0, y0 + h, x0 + w, y0 + h, AXIS, 1.2);
        svg.line(x0, y0, x0, y0 + h, AXIS, 1.2);
        svg.text(
            x0 + w / 2.0,
            y0 + h + 42.0,
            13.0,
            "middle",
            r##"fill="#222""##,
            x_label,
        );
        let (lx, ly) = (ox + 20.0, y0 + h / 2.0);
        svg.text(
            lx,
            ly,
            13.0,
            "middle",
            &format!(r##"fill="#222" transform="rotate(-90 {lx:.1} {ly:.1})""##),
            &p.y_label,
        );
        for (k, v) in pts.iter().enumerate() {
            let c = PALETTE[k % PALETTE.len()];
            if v.len() >= 2 {
                let d: Vec<String> = v
                    .iter()
                    .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                    .collect();
                let _ = write!(
                    svg.s,
                    r##"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2.2" stroke-linejoin="round"/>"##,
                    d.join(" ")
                );
            }
            if v.len() <= MARKERS_UP_TO {
                for &(x, y) in v {
                    let _ = write!(
                        svg.s,
                        r##"<circle cx="{:.1}" cy="{:.1}" r="4.5" fill="{c}" stroke="#ffffff" stroke-width="1.5"/>"##,
                        px(x),
                        py(y)
                    );
                }
            }
            if v.len() <= VALUE_LABELS_UP_TO {
                let decimals = series_decimals(v.iter().map(|q| q.1));
                for (j, &(x, y)) in v.iter().enumerate() {
                    // on the side away from the neighbouring points (whose lines leave
                    // this one), above when level, and where there is room
                    let near: Vec<f64> = [j.checked_sub(1), Some(j + 1)]
                        .into_iter()
                        .flatten()
                        .filter_map(|k| v.get(k))
                        .map(|q| yaxis.frac(q.1) - yaxis.frac(y))
                        .collect();
                    let rise = near.iter().sum::<f64>() / near.len().max(1) as f64;
                    let up = if rise.abs() > 1e-9 { rise < 0.0 } else { true };
                    let below = yaxis.frac(y) * h;
                    let up = if up { h - below >= 16.0 } else { below < 22.0 };
                    let yy = py(y);
                    let ty = if up { yy - 10.0 } else { yy + 21.0 };
                    svg.text(
                        px(x),
                        ty,
                        12.0,
                        "middle",
                        &format!(
                            r##"fill="{c}" font-weight="bold" stroke="#ffffff" stroke-width="3" paint-order="stroke""##
                        ),
                        &match decimals {
                            Some(d) => format!("{y:.d$}"),
                            None => fmt_value(y),
                        },
                    );
                }
            }
        }
        if p.series.len() > 1 {
            let mut lx = x0;
            let ly = oy + mt + 2.0;
            for (k, s) in p.series.iter().enumerate() {
                let c = PALETTE[k % PALETTE.len()];
                svg.line(lx, ly + 6.0, lx + 18.0, ly + 6.0, c, 2.5);
                let _ = write!(
                    svg.s,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{c}"/>"##,
                    lx + 9.0,
                    ly + 6.0
                );
                svg.text(
                    lx + 24.0,
                    ly + 10.0,
                    12.0,
                    "start",
                    r##"fill="#222""##,
                    &s.name,
                );
                lx += 40.0 + 7.0 * s.name.chars().count() as f64;
            }
        }
        if skipped > 0 {
            svg.text(
                x0 + w,
                y0 - 6.0,
                11.0,
                "end",
                r##"fill="#a33""##,
                &format!("{skipped} non-finite value(s) not drawn"),
            );
        }
    }
    Some(svg.finish())
}

/// One bar: a label under it, its value above it, and an optional note under the value
/// (a change against a starting model, say).
#[derive(Clone, Debug)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub color: String,
    pub note: Option<String>,
}

/// Bars side by side, named underneath.
#[derive(Clone, Debug)]
pub struct BarGroup {
    pub name: String,
    pub bars: Vec<Bar>,
}

/// One chart of a [`grouped_bars`] figure.
#[derive(Clone, Debug)]
pub struct BarPanel {
    pub title: String,
    pub y_label: String,
    pub groups: Vec<BarGroup>,
    /// Decimals of the value labels.
    pub decimals: usize,
}

/// A claim checked against the numbers, drawn with a check mark or a cross.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub ok: bool,
    pub text: String,
}

/// A figure of bar panels, stacked, each with its groups of bars, then a legend
/// (colour, meaning) and the checks, one per line.
pub fn grouped_bars(
    title: &str,
    panels: &[BarPanel],
    legend: &[(String, String)],
    checks: &[Check],
) -> String {
    let w = 1000.0;
    let ph = 330.0;
    let (ml, mr, mt, mb) = (88.0, 24.0, 40.0, 70.0);
    let top = 44.0;
    let legend_h = if legend.is_empty() { 0.0 } else { 34.0 };
    let checks_h = if checks.is_empty() {
        0.0
    } else {
        34.0 + 28.0 * checks.len() as f64
    };
    let total_h = top + ph * panels.len() as f64 + legend_h + checks_h + 12.0;
    let mut svg = Svg::new(w, total_h);
    svg.text(
        w / 2.0,
        28.0,
        19.0,
        "middle",
        r##"font-weight="bold" fill="#111""##,
        title,
    );
    for (i, p) in panels.iter().enumerate() {
        let oy = top + ph * i as f64;
        let (x0, y0, pw, h) = (ml, oy + mt, w - ml - mr, ph - mt - mb);
        let vals: Vec<f64> = p
            .groups
            .iter()
            .flat_map(|g| &g.bars)
            .map(|b| b.value)
            .filter(|v| v.is_finite())
            .collect();
        let lo = vals.iter().copied().fold(0.0f64, f64::min);
        let hi = vals.iter().copied().fold(0.0f64, f64::max);
        let (lo, hi) = if hi / 2.0 - lo / 2.0 > 0.0 {
            // room above the bars for their labels
            let half = hi / 2.0 - lo / 2.0;
            (
                if lo < 0.0 { sat(lo - half * 0.36) } else { 0.0 },
                sat(hi + half * 0.44),
            )
        } else {
            (0.0, 1.0)
        };
        let yaxis = Axis::new(lo, hi, 6);
        let py = |y: f64| y0 + h - yaxis.frac(y) * h;
        title_and_grid(&mut svg, w / 2.0, oy, &p.title, &yaxis, x0, pw, py);
        let (lx, ly) = (22.0, y0 + h / 2.0);
        svg.text(
            lx,
            ly,
            13.0,
            "middle",
            &format!(r##"fill="#222" transform="rotate(-90 {lx:.1} {ly:.1})""##),
            &p.y_label,
        );
        // slots: one per bar, one empty between groups
        let nbars: usize = p.groups.iter().map(|g| g.bars.len()).sum();
        let slots = nbars + p.groups.len().saturating_sub(1);
        let slot = pw / slots.max(1) as f64;
        let bw = (slot * 0.66).min(90.0);
        let base = py(0.0f64.clamp(yaxis.lo, yaxis.hi));
        let mut k = 0usize;
        for g in &p.groups {
            let first = k;
            for b in &g.bars {
                let cx = x0 + slot * (k as f64 + 0.5);
                if b.value.is_finite() {
                    let y = py(b.value);
                    let (top_y, hh) = if y < base {
                        (y, base - y)
                    } else {
                        (base, y - base)
                    };
                    svg.rect(cx - bw / 2.0, top_y, bw, hh.max(1.0), &b.color);
                    let vy = if b.value >= 0.0 {
                        top_y - if b.note.is_some() { 22.0 } else { 7.0 }
                    } else {
                        top_y + hh + 16.0
                    };
                    svg.text(
                        cx,
                        vy,
                        13.0,
                        "middle",
                        r##"font-weight="bold" fill="#111""##,
                        &format!("{:.*}", p.decimals, b.value),
                    );
                    if let Some(n) = &b.note {
                        svg.text(cx, vy + 15.0, 11.0, "middle", r##"fill="#555""##, n);
                    }
                } else {
                    svg.text(cx, base - 8.0, 12.0, "middle", r##"fill="#a33""##, "n/a");
                }
                svg.text(
                    cx,
                    y0 + h + 18.0,
                    13.0,
                    "middle",
                    r##"fill="#111""##,
                    &b.label,
                );
                k += 1;
            }
            // the group's bracket and name under its bars
            let (gx0, gx1) = (
                x0 + slot * first as f64 + slot * 0.12,
                x0 + slot * k as f64 - slot * 0.12,
            );
            let by = y0 + h + 30.0;
            svg.line(gx0, by, gx1, by, "#888", 1.0);
            svg.line(gx0, by - 4.0, gx0, by, "#888", 1.0);
            svg.line(gx1, by - 4.0, gx1, by, "#888", 1.0);
            svg.text(
                (gx0 + gx1) / 2.0,
                by + 17.0,
                12.5,
                "middle",
                r##"fill="#333" font-style="italic""##,
                &g.name,
            );
            k += 1;
        }
        svg.line(x0, base, x0 + pw, base, AXIS, 1.2);
        svg.line(x0, y0, x0, y0 + h, AXIS, 1.2);
    }
    let mut y = top + ph * panels.len() as f64;
    if !legend.is_empty() {
        let mut x = ml;
        for (c, t) in legend {
            svg.rect(x, y + 8.0, 14.0, 14.0, c);
            svg.text(x + 20.0, y + 20.0, 13.0, "start", r##"fill="#222""##, t);
            x += 28.0 + 7.5 * t.chars().count() as f64;
        }
        y += legend_h;
    }
    if !checks.is_empty() {
        svg.text(
            ml,
            y + 22.0,
            15.0,
            "start",
            r##"font-weight="bold" fill="#222""##,
            "Paper-shape checks",
        );
        for (i, c) in checks.iter().enumerate() {
            let cy = y + 46.0 + 28.0 * i as f64;
            svg.mark(ml + 9.0, cy - 4.5, 9.0, c.ok);
            svg.text(
                ml + 26.0,
                cy,
                13.5,
                "start",
                &format!(r#"fill="{}""#, if c.ok { "#111" } else { FAIL }),
                &c.text,
            );
        }
    }
    svg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_ticks_are_nice_and_bounded() {
        let a = Axis::new(0.0, 1.0, 6);
        assert_eq!(a.ticks, vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        assert_eq!(a.label(0.6000000000000001), "0.6");
        let a = Axis::fit([3.0, 3.0], 0.1, 6).unwrap();
        assert!(a.lo < 3.0 && a.hi > 3.0 && !a.ticks.is_empty());
        // the extremes: finite, ordered, a handful of ticks, nothing overflowed
        for (lo, hi) in [
            (-f64::MAX, f64::MAX),
            (-1e308, 1e308),
            (1e308, f64::MAX),
            (f64::MIN_POSITIVE, 2.0 * f64::MIN_POSITIVE),
            (5e-324, 1e-323),
            (1.0, 1.0 + f64::EPSILON),
            (-0.0, 0.0),
        ] {
            let a = Axis::fit([lo, hi], 0.1, 6).unwrap();
            assert!(
                a.lo.is_finite() && a.hi.is_finite() && a.lo < a.hi,
                "{lo} {hi}: {a:?}"
            );
            assert!(a.ticks.len() <= 30, "{lo} {hi}: {a:?}");
            for t in &a.ticks {
                let f = a.frac(*t);
                assert!(
                    (-1e-9..=1.0 + 1e-9).contains(&f),
                    "{lo} {hi}: tick {t} at {f}"
                );
            }
        }
        assert!(Axis::fit([f64::NAN, f64::INFINITY], 0.1, 6).is_none());
    }

    #[test]
    fn bars_escape_text_and_mark_checks() {
        let s = grouped_bars(
            "a < b & c",
            &[BarPanel {
                title: "t".into(),
                y_label: "y".into(),
                decimals: 3,
                groups: vec![BarGroup {
                    name: "g".into(),
                    bars: vec![
                        Bar {
                            label: "x".into(),
                            value: 0.5,
                            color: START_GREY.into(),
                            note: None,
                        },
                        Bar {
                            label: "z".into(),
                            value: f64::NAN,
                            color: PALETTE[0].into(),
                            note: Some("+0.1".into()),
                        },
                    ],
                }],
            }],
            &[],
            &[
                Check {
                    ok: true,
                    text: "x > y".into(),
                },
                Check {
                    ok: false,
                    text: "y > x".into(),
                },
            ],
        );
        assert!(s.contains("a &lt; b &amp; c") && s.contains("x &gt; y"));
        assert!(s.contains(PASS) && s.contains(FAIL) && s.contains("n/a"));
        assert!(s.ends_with("</svg>"));
    }
}
