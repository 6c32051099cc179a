//! Interleaved rounds: every cell (a scenario in a mode) once per round, in
//! the same order, so slow drift of the machine touches all cells alike. A
//! run during which processes outside the benchmark used the CPUs (see
//! `cpu`) is measured again once the machine is quiet, within a deadline.
use std::time::{Duration, Instant};

use anyhow::Result;

use super::cpu::{self, Usage};

/// Other processes may use this much CPU (in CPUs) during a run before the
/// run counts as disturbed: idle Debian stays well under it, a build or a
/// VM test is far above.
pub const MAX_OTHERS: f64 = 0.05;

/// How long and how often.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Seconds per measured run (a benchmark may scale it per cell).
    pub secs: u32,
    /// A discarded run per cell before round 1 (0: none).
    pub warmup_secs: u32,
    pub rounds: usize,
}

/// A measured run's view of the CPUs.
pub trait Disturbance {
    /// CPU that processes outside the benchmark used during the run.
    fn others(&self) -> &Usage;
}

/// One kept run.
pub struct Kept<C, S> {
    pub cell: C,
    /// 1-based.
    pub round: usize,
    pub sample: S,
}

pub struct Rounds<C, S> {
    pub runs: Vec<Kept<C, S>>,
    /// Disturbed runs measured again and left out.
    pub repeated: usize,
    /// Disturbed runs kept, for want of a quiet one before the deadline.
    pub disturbed_used: usize,
}

/// Wait up to `secs` for other processes to go quiet; measure anyway after.
pub fn settle(secs: u64) -> Result<()> {
    let limit = Duration::from_secs(secs);
    let u = cpu::wait_quiet(MAX_OTHERS, limit)?;
    if u.cpus > MAX_OTHERS {
        println!(
            "  WARNING: after {limit:?} other processes still use {}; measuring anyway",
            u.describe()
        );
    } else {
        println!("  quiet: other processes use {}", u.describe());
    }
    Ok(())
}

/// `rounds` rounds of every cell in `cells`' order. A disturbed run did not
/// get the machine the others got, so it is measured again after
/// [`settle`] (at most `settle_secs`), until the measuring has taken
/// `budget_secs`; after that a disturbed run is kept and counted in
/// `disturbed_used`. `progress` prints a run (its label says which round).
pub fn measure<C: Copy, S: Disturbance>(
    cells: &[C],
    rounds: usize,
    budget_secs: u64,
    settle_secs: u64,
    mut measure: impl FnMut(C) -> Result<S>,
    progress: impl Fn(&str, C, &S),
) -> Result<Rounds<C, S>> {
    let deadline = Instant::now() + Duration::from_secs(budget_secs);
    let mut out = Rounds {
        runs: Vec::new(),
        repeated: 0,
        disturbed_used: 0,
    };
    for round in 1..=rounds {
        for &cell in cells {
            let label = format!("round {round}/{rounds}");
            let mut s = measure(cell)?;
            progress(&label, cell, &s);
            while s.others().cpus > MAX_OTHERS {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    println!("  disturbed, but out of time for repeats: kept and reported");
                    out.disturbed_used += 1;
                    break;
                }
                println!(
                    "  disturbed: other processes used {}; measuring it again",
                    s.others().describe()
                );
                settle(settle_secs.min(left.as_secs().max(1)))?;
                s = measure(cell)?;
                progress(&label, cell, &s);
                out.repeated += 1;
            }
            out.runs.push(Kept {
                cell,
                round,
                sample: s,
            });
        }
    }
    Ok(out)
}

/// The warning at the top of a section whose table holds disturbed runs
/// (empty when none did).
pub fn disturbed_warning(quick: bool, used: usize, total: usize) -> String {
    match (used, quick) {
        (0, _) => String::new(),
        (_, true) => format!(
            "**Warning: a --quick run: {used} of the {total} runs ran while other processes used \
             the CPUs (quick runs do not wait for a quiet machine). These figures only show that \
             the benchmark works.**\n\n"
        ),
        (_, false) => format!(
            "**Warning: {used} of the {total} runs in this section ran while other processes \
             used the CPUs, and no quiet repeat came in time; figures from a busy machine are \
             noisy. Rerun on a quiet machine.**\n\n"
        ),
    }
}

/// How much other processes used the CPUs during the kept runs, for the
/// "Checks" paragraph of a section.
pub fn quiet_note<'a>(others: impl Iterator<Item = &'a Usage>, repeated: usize) -> String {
    let worst = others.max_by(|a, b| a.cpus.total_cmp(&b.cpus));
    let repeated = match repeated {
        0 => String::new(),
        n => format!(" {n} disturbed run(s) were measured again and left out."),
    };
    match worst {
        Some(w) => format!(
            "Processes outside the benchmark used at most {} during a run in the table \
             (counted from /proc; a run above {:.0}% of a CPU is measured again).{repeated}",
            w.describe(),
            MAX_OTHERS * 100.0
        ),
        None => String::new(),
    }
}
