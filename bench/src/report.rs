//! BENCHMARKS.md: an intro written once (machine, tools, common method),
//! then one `## ` section per benchmark. A benchmark replaces only its own
//! section, so l4, l7 and propagation can be rerun independently.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::{Context, Result};

use super::{
    cpu::{CLIENT_CPU, SERVER_CPU},
    procs::banner,
};

/// Facts about the machine and the tools, for the intro and each section.
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu: String,
    pub wrk: String,
    pub nginx: String,
    pub haproxy: String,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let first_line = |s: String| s.lines().next().unwrap_or("unknown").trim().to_string();
        Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            cpu,
            // "wrk debian/4.1.0-3+b2 [epoll] Copyright ..." -> up to "[epoll]".
            wrk: first_line(banner(Command::new("wrk").arg("-v")))
                .split(" Copyright")
                .next()
                .unwrap_or("wrk")
                .to_string(),
            nginx: first_line(banner(Command::new("nginx").arg("-v")))
                .trim_start_matches("nginx version: ")
                .to_string(),
            haproxy: first_line(banner(Command::new("haproxy").arg("-v")))
                .split(" - ")
                .next()
                .unwrap_or("haproxy")
                .to_string(),
        }
    }

    /// One line: "2 × AMD EPYC, Linux 6.1.0".
    pub fn short(&self) -> String {
        format!("{} × {}, Linux {}", self.nproc, self.cpu, self.kernel)
    }
}

/// Where a run's section goes: BENCHMARKS.md for full runs; quick runs
/// (CI's check that the benchmark works) go to target/BENCHMARKS.quick.md so
/// that their short, noisier figures never replace the real ones.
pub fn output_path(quick: bool) -> PathBuf {
    let root = crate::util::root();
    if quick {
        root.join("target/BENCHMARKS.quick.md")
    } else {
        root.join("BENCHMARKS.md")
    }
}

/// The intro of a new BENCHMARKS.md.
pub fn intro(m: &Machine, date: &str) -> String {
    format!(
        "# Benchmarks\n\n\
         Figures measured by `cargo xtask bench` (every benchmark, in one go) or \
         `cargo xtask bench <which>` (one of them: `l4`, `l7`, `accel`, `xfer`, `memory`, \
         `admin`, `propagation`), which rewrites only its own `## ` section of this file, \
         its entry of `docs/bench.json`, the chart `docs/bench.svg` and the summary. \
         Compare ratios measured in the same run, not absolute figures across machines or \
         sections.\n\n\
         - Machine: {} CPUs (`nproc`), {}, kernel {}.\n\
         - Tools: {}, {}, {} (Debian packages).\n\
         - Method: every configuration runs in the same benchmark run, \
         interleaved (A, B, C, A, B, C, ...), in rounds (3 unless a section \
         says otherwise); tables give the median and the min–max of the \
         rounds. On 2 CPUs the load generator \
         is pinned to CPU {CLIENT_CPU} and the servers to CPU {SERVER_CPU} (`taskset`), so client \
         and server do not steal each other's core. Each section says how \
         its own runs were made and when.\n\
         - File created: {date}.\n",
        m.nproc, m.cpu, m.kernel, m.wrk, m.nginx, m.haproxy
    )
}

/// Where a section goes when the document does not have it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// After the last section.
    End,
    /// Before the first section, after the intro (the summary).
    First,
}

/// Lines that start a `## ` section, outside fenced code (where "## " may
/// be a shell comment).
fn section_starts(lines: &[&str]) -> Vec<usize> {
    let mut in_fence = false;
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && l.starts_with("## ") {
            out.push(i);
        }
    }
    out
}

/// Put `section` (starting with its `## ` heading line) into `doc`: in
/// place of the section with the same heading, else where `place` says.
pub fn replace_section_at(doc: &str, section: &str, place: Placement) -> String {
    let heading = section.lines().next().unwrap_or_default().trim_end();
    let lines: Vec<&str> = doc.lines().collect();
    let starts = section_starts(&lines);
    let start = starts
        .iter()
        .copied()
        .find(|&i| lines[i].trim_end() == heading);
    let mut out = String::new();
    let push_section = |out: &mut String| {
        out.push_str(section.trim_end());
        out.push('\n');
    };
    match start {
        Some(start) => {
            // The section runs to the next `## ` heading (not `###`).
            let end = starts
                .iter()
                .copied()
                .find(|&i| i > start)
                .unwrap_or(lines.len());
            for l in &lines[..start] {
                out.push_str(l);
                out.push('\n');
            }
            push_section(&mut out);
            if end < lines.len() {
                out.push('\n');
                for l in &lines[end..] {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        None => match starts.first() {
            Some(&first) if place == Placement::First => {
                for l in &lines[..first] {
                    out.push_str(l);
                    out.push('\n');
                }
                push_section(&mut out);
                out.push('\n');
                for l in &lines[first..] {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            _ => {
                out.push_str(doc.trim_end());
                out.push_str("\n\n");
                push_section(&mut out);
            }
        },
    }
    out
}

/// Write `section` into the file at `path`, creating it with an intro.
pub fn write_section(path: &Path, m: &Machine, date: &str, section: &str) -> Result<()> {
    write_section_at(path, m, date, section, Placement::End)
}

/// As [`write_section`], a new section going where `place` says.
pub fn write_section_at(
    path: &Path,
    m: &Machine,
    date: &str,
    section: &str,
    place: Placement,
) -> Result<()> {
    let doc = match std::fs::read_to_string(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => intro(m, date),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let new = replace_section_at(&doc, section, place);
    // Write then rename, so an interrupted run never leaves half a file.
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, new).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// README.md's "## Benchmarks" section has one bullet per benchmark,
/// "- `<key>`: ...": a full run replaces its own with `line`, whose figures
/// come from the section it just wrote, so the README never quotes numbers
/// BENCHMARKS.md does not hold. A README without that section is left
/// alone (with a note).
pub fn update_readme(key: &str, line: &str) -> Result<()> {
    let path = crate::util::root().join("README.md");
    let doc =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let Some(new) = replace_bullet(&doc, key, line) else {
        println!(
            "README.md has no \"## Benchmarks\" section; not adding the `{key}` line:\n{line}"
        );
        return Ok(());
    };
    if new != doc {
        let tmp = path.with_extension("md.tmp");
        std::fs::write(&tmp, new).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        println!("updated the `{key}` line of {}", path.display());
    }
    Ok(())
}

/// `doc` with the bullet "- `<key>`..." of its "## Benchmarks" section
/// (up to a blank line, the next bullet or heading) replaced by `line`, or
/// `line` added after the section's last line; None without the section.
pub fn replace_bullet(doc: &str, key: &str, line: &str) -> Option<String> {
    let lines: Vec<&str> = doc.lines().collect();
    let start = lines.iter().position(|l| l.trim_end() == "## Benchmarks")?;
    let end = lines
        .iter()
        .enumerate()
        .skip(start + 1)
        .find(|(_, l)| l.starts_with("## "))
        .map_or(lines.len(), |(i, _)| i);
    let prefix = format!("- `{key}`");
    let mut out: Vec<&str> = Vec::with_capacity(lines.len() + 1);
    match (start + 1..end).find(|&i| lines[i].starts_with(&prefix)) {
        Some(b) => {
            let after = (b + 1..end)
                .find(|&i| {
                    let l = lines[i];
                    l.trim().is_empty() || l.starts_with("- ") || l.starts_with('#')
                })
                .unwrap_or(end);
            out.extend(&lines[..b]);
            out.push(line);
            out.extend(&lines[after..]);
        }
        None => {
            // After the section's last non-blank line.
            let last = (start..end)
                .rev()
                .find(|&i| !lines[i].trim().is_empty())
                .unwrap_or(start);
            out.extend(&lines[..=last]);
            if !lines[last].starts_with("- ") {
                out.push("");
            }
            out.push(line);
            out.extend(&lines[last + 1..]);
        }
    }
    let mut s = out.join("\n");
    if doc.ends_with('\n') {
        s.push('\n');
    }
    Some(s)
}

/// Words joined for a shell, single-quoted where they hold anything but
/// plain characters ($DIR is left bare so that it expands).
pub fn shell_words(words: &[String]) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=$".contains(c);
    words
        .iter()
        .map(|w| {
            if w.chars().all(plain) {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Now, in UTC, as "2025-01-31 14:05 UTC".
pub fn now_utc() -> String {
    utc_minute(SystemTime::now())
}

/// `t` to the minute, in UTC, as "2025-01-31 14:05 UTC".
fn utc_minute(t: SystemTime) -> String {
    // "2025-01-31T14:05:09Z"
    let rfc3339 = humantime::format_rfc3339_seconds(t).to_string();
    let (date, time) = rfc3339.split_once('T').unwrap_or((&rfc3339, ""));
    format!("{date} {} UTC", time.get(..5).unwrap_or(time))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replace_section(doc: &str, section: &str) -> String {
        replace_section_at(doc, section, Placement::End)
    }

    const DOC: &str = "# Benchmarks\n\nintro\n\n## L4\n\nold l4\n```sh\n## not a heading\n```\n\n## L7\n\nl7 figures\n";

    #[test]
    fn replaces_only_its_own_section() {
        let out = replace_section(DOC, "## L4\n\nnew l4\n");
        assert_eq!(
            out,
            "# Benchmarks\n\nintro\n\n## L4\n\nnew l4\n\n## L7\n\nl7 figures\n"
        );
    }

    #[test]
    fn appends_a_new_section() {
        let out = replace_section(DOC, "## Propagation\n\np\n");
        assert!(out.starts_with(DOC));
        assert!(out.ends_with("l7 figures\n\n## Propagation\n\np\n"));
    }

    #[test]
    fn a_first_section_goes_after_the_intro_and_stays_there() {
        let out = replace_section_at(DOC, "## Summary\n\ns\n", Placement::First);
        assert!(out.starts_with("# Benchmarks\n\nintro\n\n## Summary\n\ns\n\n## L4\n"));
        let again = replace_section_at(&out, "## Summary\n\nt\n", Placement::First);
        assert!(again.starts_with("# Benchmarks\n\nintro\n\n## Summary\n\nt\n\n## L4\n"));
        assert!(again.ends_with("l7 figures\n"));
        // A file with no section yet: at the end.
        let bare = replace_section_at("# B\n\nintro\n", "## Summary\n\ns\n", Placement::First);
        assert_eq!(bare, "# B\n\nintro\n\n## Summary\n\ns\n");
    }

    #[test]
    fn last_section_is_replaced_to_the_end() {
        let out = replace_section(DOC, "## L7\n\nnew l7\n");
        assert!(out.contains("old l4"));
        assert!(out.ends_with("## L7\n\nnew l7\n"));
        assert!(!out.contains("l7 figures"));
    }

    const README: &str = "# knit\n\n## Benchmarks\n\nIntro.\n\n- `l4`: old l4\n  continued\n- `l7`: old l7\n\n## Next\n\ntext\n";

    #[test]
    fn replaces_its_own_bullet() {
        let out = replace_bullet(README, "l4", "- `l4`: new").expect("section");
        assert_eq!(
            out,
            "# knit\n\n## Benchmarks\n\nIntro.\n\n- `l4`: new\n- `l7`: old l7\n\n## Next\n\ntext\n"
        );
        let out = replace_bullet(README, "l7", "- `l7`: new").expect("section");
        assert!(out.contains("- `l4`: old l4\n  continued\n- `l7`: new\n\n## Next"));
    }

    #[test]
    fn adds_a_missing_bullet_at_the_end_of_the_section() {
        let out = replace_bullet(README, "prop", "- `prop`: p").expect("section");
        assert!(out.contains("- `l7`: old l7\n- `prop`: p\n\n## Next"));
        let bare = "## Benchmarks\n\nSome text.\n";
        assert_eq!(
            replace_bullet(bare, "l7", "- `l7`: x").as_deref(),
            Some("## Benchmarks\n\nSome text.\n\n- `l7`: x\n")
        );
        assert_eq!(replace_bullet("# no section\n", "l7", "x"), None);
    }

    #[test]
    fn shell_quoting() {
        let w = ["nginx", "-g", "daemon off;", "$DIR/x", "it's"].map(String::from);
        assert_eq!(shell_words(&w), r"nginx -g 'daemon off;' $DIR/x 'it'\''s'");
    }

    #[test]
    fn dates() {
        use std::time::{Duration, UNIX_EPOCH};
        let day = |d: u64, secs: u64| UNIX_EPOCH + Duration::from_secs(d * 86_400 + secs);
        assert_eq!(utc_minute(day(0, 0)), "1970-01-01 00:00 UTC");
        assert_eq!(utc_minute(day(19_723, 59)), "2024-01-01 00:00 UTC");
        assert_eq!(
            utc_minute(day(19_782, 14 * 3600 + 5 * 60 + 9)),
            "2024-02-29 14:05 UTC"
        );
        assert!(now_utc().ends_with(" UTC"));
    }
}
