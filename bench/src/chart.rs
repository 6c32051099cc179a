//! The benchmarks' chart: hand-written SVG (no plotting crate, no outside
//! tool) from the recorded entries (see `summary`). Panels of horizontal
//! bars, two per row, in the order of `bench::ALL`; a benchmark not
//! recorded yet gets a panel that says so. Every bar is a figure a
//! benchmark measured; nothing here knows a number of its own.
use std::{collections::BTreeMap, fmt::Write as _};

use super::{
    ALL,
    summary::{Entry, Kind, Panel},
};

const WIDTH: f64 = 1040.0;
const MARGIN: f64 = 20.0;
const GUTTER: f64 = 20.0;
const COL: f64 = (WIDTH - 2.0 * MARGIN - GUTTER) / 2.0;
const LABEL_W: f64 = 190.0;
const VALUE_W: f64 = 80.0;
const BAR_AREA: f64 = COL - LABEL_W - VALUE_W;
const ROW: f64 = 20.0;
const BAR_H: f64 = 14.0;
const TITLE_H: f64 = 26.0;
const LINE_H: f64 = 14.0;
const HEADER_H: f64 = 92.0;
/// Characters per caption line.
const WRAP: usize = 80;

fn colour(k: Kind) -> &'static str {
    match k {
        Kind::Knit => "#1f6feb",
        Kind::KnitOff => "#8cc4ff",
        Kind::Direct => "#8b949e",
        Kind::Other => "#e8833a",
    }
}

/// Text for an SVG text node or attribute.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Words into lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for w in text.split_whitespace() {
        if !cur.is_empty() && cur.chars().count() + 1 + w.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(w);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// A panel to draw: a recorded one, or the note that a benchmark has no
/// figures yet.
enum Item<'a> {
    Panel(&'a Panel),
    Missing { key: &'a str, what: &'a str },
}

impl Item<'_> {
    fn height(&self) -> f64 {
        match self {
            Item::Panel(p) => {
                let reference = if p.reference.is_some() { LINE_H } else { 0.0 };
                TITLE_H
                    + ROW * p.bars.len() as f64
                    + 6.0
                    + reference
                    + LINE_H * wrap(&p.caption, WRAP).len() as f64
                    + 14.0
            }
            Item::Missing { .. } => TITLE_H + ROW + 14.0,
        }
    }

    fn draw(&self, out: &mut String, x: f64, y: f64) {
        match self {
            Item::Missing { key, what } => {
                title(out, &format!("{key}: {what}"), x, y);
                let _ = writeln!(
                    out,
                    r##"<text x="{x}" y="{}" class="note">not measured yet: cargo xtask bench {}</text>"##,
                    y + TITLE_H + 12.0,
                    esc(key)
                );
            }
            Item::Panel(p) => draw_panel(out, p, x, y),
        }
    }
}

/// A panel's title, squeezed to the column when it would run past it
/// (about 8 px per character of bold 14 px text).
fn title(out: &mut String, text: &str, x: f64, y: f64) {
    let fit = if text.chars().count() as f64 * 8.0 > COL {
        format!(r#" textLength="{COL}" lengthAdjust="spacingAndGlyphs""#)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        r##"<text x="{x}" y="{}" class="title"{fit}>{}</text>"##,
        y + 16.0,
        esc(text)
    );
}

fn draw_panel(out: &mut String, p: &Panel, x: f64, y: f64) {
    title(out, &p.title, x, y);
    let max = p
        .bars
        .iter()
        .map(|b| b.value)
        .chain(p.reference.as_ref().map(|r| r.value))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let scale = if max > 0.0 {
        BAR_AREA / (max * 1.08)
    } else {
        0.0
    };
    let x0 = x + LABEL_W;
    let top = y + TITLE_H;
    for (i, b) in p.bars.iter().enumerate() {
        let ry = top + ROW * i as f64;
        let w = if b.value.is_finite() && b.value > 0.0 {
            (b.value * scale).max(1.0)
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" class="label" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            ry + 11.0,
            esc(&b.label)
        );
        let _ = writeln!(
            out,
            r##"<rect x="{x0}" y="{}" width="{w:.1}" height="{BAR_H}" fill="{}"/>"##,
            ry + 1.0,
            colour(b.kind)
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{}" class="value">{}</text>"##,
            x0 + w + 4.0,
            ry + 11.0,
            esc(&b.text)
        );
    }
    let mut below = top + ROW * p.bars.len() as f64 + 6.0;
    if let Some(r) = &p.reference {
        let rx = x0 + r.value * scale;
        let _ = writeln!(
            out,
            r##"<line x1="{rx:.1}" y1="{}" x2="{rx:.1}" y2="{}" class="ref"/>"##,
            top - 2.0,
            below - 2.0
        );
        let _ = writeln!(
            out,
            r##"<text x="{rx:.1}" y="{}" class="note" text-anchor="middle">{}</text>"##,
            below + 9.0,
            esc(&r.label)
        );
        below += LINE_H;
    }
    for line in wrap(&p.caption, WRAP) {
        let _ = writeln!(
            out,
            r##"<text x="{x}" y="{}" class="note">{}</text>"##,
            below + 10.0,
            esc(&line)
        );
        below += LINE_H;
    }
}

/// The chart of `entries` (benchmark -> its latest headline).
pub fn svg(entries: &BTreeMap<String, Entry>) -> String {
    let mut items = Vec::new();
    for (key, what) in ALL {
        match entries.get(*key) {
            Some(e) if !e.panels.is_empty() => items.extend(e.panels.iter().map(Item::Panel)),
            _ => items.push(Item::Missing { key, what }),
        }
    }
    let mut body = String::new();
    let mut y = HEADER_H;
    for pair in items.chunks(2) {
        let h = pair.iter().map(Item::height).fold(0.0_f64, f64::max);
        for (i, item) in pair.iter().enumerate() {
            item.draw(&mut body, MARGIN + i as f64 * (COL + GUTTER), y);
        }
        y += h + 10.0;
    }
    let height = y + MARGIN;
    let quick = entries.values().any(|e| e.quick);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif">
<style>
.h1 {{ font-size: 18px; font-weight: bold; fill: #1f2328; }}
.sub {{ font-size: 12px; fill: #59636e; }}
.title {{ font-size: 14px; font-weight: bold; fill: #1f2328; }}
.label {{ font-size: 12px; fill: #1f2328; }}
.value {{ font-size: 12px; fill: #1f2328; }}
.note {{ font-size: 11px; fill: #59636e; }}
.warn {{ font-size: 12px; font-weight: bold; fill: #cf222e; }}
.ref {{ stroke: #cf222e; stroke-width: 1.5; stroke-dasharray: 4 3; }}
</style>
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{MARGIN}" y="28" class="h1">knit benchmarks</text>
<text x="{MARGIN}" y="46" class="sub">The latest run of each benchmark (dates and methods in BENCHMARKS.md); every figure measured by cargo xtask bench.</text>
<text x="{MARGIN}" y="62" class="warn">{}</text>"##,
        if quick {
            "--quick figures: short, noisy runs that only show the benchmarks work."
        } else {
            ""
        }
    );
    let legend = [
        (Kind::Knit, "knit (sk_msg on, the default)"),
        (Kind::KnitOff, "knit, sk_msg off"),
        (Kind::Direct, "direct (no proxy, no VIP)"),
        (Kind::Other, "HAProxy, nginx, sidecars"),
    ];
    let mut lx = MARGIN;
    for (k, text) in legend {
        let _ = writeln!(
            out,
            r##"<rect x="{lx}" y="70" width="12" height="12" fill="{}"/><text x="{}" y="80" class="label">{}</text>"##,
            colour(k),
            lx + 16.0,
            esc(text)
        );
        lx += 16.0 + 7.0 * text.chars().count() as f64 + 24.0;
    }
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{Bar, Reference};

    #[test]
    fn wraps_words() {
        assert_eq!(wrap("a bb ccc dddd", 6), vec!["a bb", "ccc", "dddd"]);
        assert!(wrap("", 10).is_empty());
    }

    #[test]
    fn draws_recorded_panels_and_notes_missing_ones() {
        let mut entries = BTreeMap::new();
        entries.insert(
            "xfer".to_string(),
            Entry {
                date: "d".into(),
                quick: false,
                goals: vec![],
                panels: vec![Panel {
                    title: "1 GiB <through> L4".into(),
                    caption: "GiB/s, median of 3".into(),
                    bars: vec![
                        Bar::new("direct", 2.0, "2.00", Kind::Direct),
                        Bar::new("knit", 3.0, "3.00", Kind::Knit),
                    ],
                    reference: Some(Reference {
                        value: 2.0,
                        label: "direct".into(),
                    }),
                }],
            },
        );
        let s = svg(&entries);
        assert!(s.starts_with("<svg "));
        assert!(s.trim_end().ends_with("</svg>"));
        assert!(s.contains("1 GiB &lt;through&gt; L4"));
        assert!(s.contains("not measured yet: cargo xtask bench l4"));
        assert!(!s.contains("not measured yet: cargo xtask bench xfer"));
        // The longest bar (with the 8% headroom) fills the bar area.
        let full = format!("width=\"{:.1}\"", BAR_AREA / 1.08);
        assert!(s.contains(&full), "{full} in {s}");
        assert!(!s.contains("--quick figures"));
    }
}
