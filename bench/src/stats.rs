//! Medians and percentiles, summaries of repeated runs (median and
//! range), and the number formats the tables use.

/// The median of `values`: the middle one, or the mean of the middle two
/// for an even count; None for none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[mid]),
        _ => Some((v[mid - 1] + v[mid]) / 2.0),
    }
}

/// The nearest-rank percentile `q` (0 to 1) of `values`: the smallest
/// value that at least `q` of them do not exceed (`q` = 1: the maximum);
/// None for none.
/// p50, p99 and max of latencies (nearest rank).
#[derive(Debug, Clone, Copy)]
pub struct Latencies {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latencies {
    pub fn of(values: &[f64]) -> Option<Self> {
        Some(Self {
            p50: percentile(values, 0.5)?,
            p99: percentile(values, 0.99)?,
            max: percentile(values, 1.0)?,
        })
    }
}

/// Nanoseconds since the epoch (CLOCK_REALTIME: comparable with what other
/// processes write).
pub fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    let (_, x, _) = v.select_nth_unstable_by(rank, f64::total_cmp);
    Some(*x)
}

/// Median, minimum and maximum of a set of runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// None for no runs. An even count takes the mean of the middle two.
    pub fn of(values: &[f64]) -> Option<Self> {
        Some(Self {
            median: median(values)?,
            min: values.iter().copied().reduce(f64::min)?,
            max: values.iter().copied().reduce(f64::max)?,
        })
    }

    /// The range as a share of the median: how much the runs disagree.
    pub fn spread(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / self.median
        }
    }
}

/// A rate with thousands separators: 101234.5 -> "101,235".
pub fn rate(x: f64) -> String {
    let n = x.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds as "612 µs" or "1.15 ms".
pub fn micros(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// A goal judged from medians: met or not, and whether the runs' own
/// spread is wider than the margin to the goal (then the verdict is not
/// conclusive).
#[derive(Debug, Clone)]
pub struct Verdict {
    pub met: bool,
    /// Why the verdict is not conclusive, if it is not.
    pub inconclusive: Option<String>,
}

impl Verdict {
    pub fn new(met: bool, noise: f64, margin: f64, why: impl FnOnce() -> String) -> Self {
        Self {
            met,
            inconclusive: (noise > margin).then(why),
        }
    }

    /// "**met**" / "**not met** (not conclusive: ...)".
    pub fn long(&self) -> String {
        let v = if self.met { "met" } else { "not met" };
        match &self.inconclusive {
            Some(why) => format!("**{v}** (not conclusive: {why})"),
            None => format!("**{v}**"),
        }
    }

    /// "met" / "not met, not conclusive".
    pub fn short(&self) -> &'static str {
        match (self.met, self.inconclusive.is_some()) {
            (true, false) => "met",
            (false, false) => "not met",
            (true, true) => "met, not conclusive",
            (false, true) => "not met, not conclusive",
        }
    }
}

/// "+12 µs" / "−3 µs".
pub fn signed_micros(us: f64) -> String {
    if us < 0.0 {
        format!("−{}", micros(-us))
    } else {
        format!("+{}", micros(us))
    }
}

/// A rate summary as "median (min–max)".
pub fn rate_range(s: &Summary) -> String {
    format!("{} ({}–{})", rate(s.median), rate(s.min), rate(s.max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 0.999), Some(100.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 0.5), Some(5.0));
        assert_eq!(percentile(&ten, 0.99), Some(10.0));
        assert_eq!(percentile(&[2.5], 0.5), Some(2.5));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn summary_of_odd_and_even_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!(
            s,
            Some(Summary {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
        assert_eq!(
            Summary::of(&[4.0, 1.0, 2.0, 3.0]).map(|s| s.median),
            Some(2.5)
        );
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn spread_is_relative_to_the_median() {
        let s = Summary::of(&[99.0, 100.0, 101.0]).map(|s| s.spread());
        assert_eq!(s, Some(0.02));
    }

    #[test]
    fn formats() {
        assert_eq!(rate(101_234.5), "101,235");
        assert_eq!(rate(999.0), "999");
        assert_eq!(rate(1_000.0), "1,000");
        assert_eq!(micros(612.4), "612 µs");
        assert_eq!(micros(1150.0), "1.15 ms");
        assert_eq!(signed_micros(-3.0), "−3 µs");
        assert_eq!(signed_micros(12.0), "+12 µs");
    }

    #[test]
    fn verdicts() {
        let v = Verdict::new(true, 0.01, 0.05, || "noise".into());
        assert_eq!((v.short(), v.long()), ("met", "**met**".to_string()));
        let v = Verdict::new(false, 0.10, 0.05, || "spread 10%".into());
        assert_eq!(v.short(), "not met, not conclusive");
        assert_eq!(v.long(), "**not met** (not conclusive: spread 10%)");
    }
}
