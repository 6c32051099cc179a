//! The headline figures of every benchmark in one place. Each benchmark,
//! when it has written its section, records an [`Entry`]: its goals with
//! the verdicts its section gave, and the bars of its chart panels, all
//! from the figures it just measured. Entries live in `docs/bench.json`
//! (one per benchmark, replaced by its next run); from them come the chart
//! `docs/bench.svg` (see `chart`) and the `## Summary` section at the top
//! of BENCHMARKS.md. Quick runs keep their own set under target/, so they
//! never touch the real figures.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{
    ALL, chart,
    markdown::{Align, Table},
    report::{self, Machine, Placement},
};

/// One benchmark's latest headline.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Entry {
    /// When it was measured ("2026-01-31 14:05 UTC").
    pub date: String,
    /// A `--quick` run's figures.
    #[serde(default)]
    pub quick: bool,
    pub goals: Vec<Goal>,
    pub panels: Vec<Panel>,
}

/// A goal as the benchmark's section judged it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goal {
    /// What is wanted ("keep-alive req/s ≥ 0.99 × direct").
    pub goal: String,
    /// What was measured ("0.987 (per round 0.981–0.996)").
    pub measured: String,
    /// "met", "not met", "met, not conclusive", ...
    pub verdict: String,
}

impl Goal {
    pub fn new(goal: impl Into<String>, measured: impl Into<String>, verdict: &str) -> Self {
        Self {
            goal: goal.into(),
            measured: measured.into(),
            verdict: verdict.to_string(),
        }
    }
}

/// One panel of the chart: horizontal bars on one scale.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Panel {
    pub title: String,
    /// Under the bars: the unit, and how to read them.
    pub caption: String,
    pub bars: Vec<Bar>,
    /// A dashed line across the bars: a goal or a reference (direct = 1).
    #[serde(default)]
    pub reference: Option<Reference>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reference {
    pub value: f64,
    pub label: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    /// The value as the tables write it ("84 µs", "0.987").
    pub text: String,
    pub kind: Kind,
}

impl Bar {
    pub fn new(label: impl Into<String>, value: f64, text: impl Into<String>, kind: Kind) -> Self {
        Self {
            label: label.into(),
            value,
            text: text.into(),
            kind,
        }
    }
}

/// Whose figure a bar is (its colour).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// knit as shipped (sk_msg on).
    Knit,
    /// knit with `[datapath] accelerate = false`.
    KnitOff,
    /// No proxy, no VIP.
    Direct,
    /// HAProxy, nginx, sidecars.
    Other,
}

/// Where a run's entries, chart and summary go: docs/ for full runs,
/// target/ for quick ones (beside target/BENCHMARKS.quick.md).
struct Files {
    json: PathBuf,
    svg: PathBuf,
    /// The chart as BENCHMARKS.md (or the quick file) links it.
    svg_link: String,
}

fn files(quick: bool) -> Files {
    let root = crate::util::root();
    if quick {
        Files {
            json: root.join("target/bench.quick.json"),
            svg: root.join("target/bench.quick.svg"),
            svg_link: "bench.quick.svg".into(),
        }
    } else {
        Files {
            json: root.join("docs/bench.json"),
            svg: root.join("docs/bench.svg"),
            svg_link: "docs/bench.svg".into(),
        }
    }
}

fn load(path: &Path) -> Result<BTreeMap<String, Entry>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// Where a benchmark's results go: its section (printed, then into
/// BENCHMARKS.md, or the quick file), its entry (the summary and the
/// chart), and for full runs its README line.
pub fn publish(
    quick: bool,
    key: &str,
    machine: &Machine,
    date: &str,
    section: &str,
    entry: Entry,
    readme_line: impl FnOnce() -> Result<String>,
) -> Result<()> {
    println!("\n{section}");
    let path = report::output_path(quick);
    report::write_section(&path, machine, date, section)?;
    println!(
        "wrote the {} section of {}",
        section.lines().next().unwrap_or_default(),
        path.display()
    );
    record(quick, key, entry)?;
    if !quick {
        report::update_readme(key, &readme_line()?)?;
    }
    Ok(())
}

/// Replace benchmark `key`'s entry, then draw the chart and write the
/// summary again.
pub fn record(quick: bool, key: &str, entry: Entry) -> Result<()> {
    let f = files(quick);
    let mut entries = load(&f.json)?;
    entries.insert(key.to_string(), entry);
    write_atomic(&f.json, &(serde_json::to_string_pretty(&entries)? + "\n"))?;
    render(quick, &entries)
}

/// `cargo xtask bench chart`: the chart and the summary from the recorded
/// entries, measuring nothing.
pub fn redraw(quick: bool) -> Result<()> {
    let f = files(quick);
    let entries = load(&f.json)?;
    render(quick, &entries)?;
    println!(
        "drew {} and the summary of {} from {} ({} of {} benchmarks recorded)",
        f.svg.display(),
        report::output_path(quick).display(),
        f.json.display(),
        entries.len(),
        ALL.len()
    );
    Ok(())
}

fn render(quick: bool, entries: &BTreeMap<String, Entry>) -> Result<()> {
    let f = files(quick);
    write_atomic(&f.svg, &chart::svg(entries))?;
    let machine = Machine::probe();
    let date = report::now_utc();
    report::write_section_at(
        &report::output_path(quick),
        &machine,
        &date,
        &section(entries, &f.svg_link),
        Placement::First,
    )
}

/// The `## Summary` section: the chart, then every benchmark's goals.
fn section(entries: &BTreeMap<String, Entry>, svg_link: &str) -> String {
    let mut s = String::from("## Summary\n\n");
    let _ = writeln!(
        s,
        "![Headline figures of the latest run of each benchmark]({svg_link})\n"
    );
    s.push_str(
        "The goals of issue #7 and PERF-ANCHORS.md, as each benchmark's latest run judged them \
         from its medians (its section below has the tables, the checks and the method). \
         `cargo xtask bench` runs every benchmark; `cargo xtask bench <name>` reruns one and \
         replaces its rows here, its bars in the chart and its section.\n\n",
    );
    let mut t = Table::new(&[
        ("benchmark", Align::Left),
        ("goal", Align::Left),
        ("measured", Align::Left),
        ("verdict", Align::Left),
        ("run", Align::Left),
    ]);
    for (key, what) in ALL {
        let name = format!("`{key}`");
        match entries.get(*key) {
            Some(e) if !e.goals.is_empty() => {
                for g in &e.goals {
                    t.row([
                        name.clone(),
                        g.goal.clone(),
                        g.measured.clone(),
                        format!("**{}**", g.verdict),
                        format!("{}{}", e.date, if e.quick { " (--quick)" } else { "" }),
                    ]);
                }
            }
            Some(e) => {
                t.row([
                    name,
                    format!("{what}: no goal"),
                    "see its section".into(),
                    "—".into(),
                    e.date.clone(),
                ]);
            }
            None => {
                t.row([
                    name,
                    what.to_string(),
                    format!("not measured by this version yet (`cargo xtask bench {key}`)"),
                    "—".into(),
                    "—".into(),
                ]);
            }
        }
    }
    s.push_str(&t.to_string());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::markdown::unpadded;

    #[test]
    fn the_summary_lists_every_benchmark() {
        let mut entries = BTreeMap::new();
        entries.insert(
            "l4".to_string(),
            Entry {
                date: "2026-01-01 00:00 UTC".into(),
                quick: false,
                goals: vec![Goal::new("keep-alive ≥ 0.99 × direct", "0.995", "met")],
                panels: vec![],
            },
        );
        let s = section(&entries, "docs/bench.svg");
        assert!(s.starts_with("## Summary\n\n![Headline"));
        // The rows as written, less comfy-table's padding.
        let s = unpadded(&s);
        assert!(s.contains(
            "| `l4` | keep-alive ≥ 0.99 × direct | 0.995 | **met** | 2026-01-01 00:00 UTC |"
        ));
        for (key, _) in ALL {
            assert!(s.contains(&format!("| `{key}` |")), "{key} missing");
        }
        assert!(s.contains("not measured by this version yet (`cargo xtask bench xfer`)"));
    }

    #[test]
    fn entries_round_trip_through_json() -> Result<()> {
        let e = Entry {
            date: "d".into(),
            quick: true,
            goals: vec![],
            panels: vec![Panel {
                title: "t".into(),
                caption: "c".into(),
                bars: vec![Bar::new("knit", 1.5, "1.5", Kind::KnitOff)],
                reference: Some(Reference {
                    value: 1.0,
                    label: "direct".into(),
                }),
            }],
        };
        let text = serde_json::to_string(&e)?;
        assert!(text.contains("\"knit-off\""));
        let back: Entry = serde_json::from_str(&text)?;
        assert_eq!(back.panels[0].bars[0].kind, Kind::KnitOff);
        Ok(())
    }
}
