//! bench_detect: the quality of `analyst::detect` on labelled synthetic
//! series (issue #16), and its cost.
//!
//! The specification, fixed before any tuning:
//! - each series: 7 days of one-minute points (10 080), Gaussian noise of
//!   σ = 1 around a level of 100;
//! - half the series (even index) add a diurnal sine of amplitude 3σ;
//! - 30 % of the series (index % 10 < 3) are clean; the others carry 1 to 3
//!   anomalies, starting uniformly in days 3-7 (so the seasonal baseline
//!   has two earlier days), never overlapping (6 h apart at least):
//!   - step: +4σ for 30 to 120 minutes,
//!   - spike: +6σ for 3 to 10 minutes,
//!   - drift: rising linearly to +3σ over 6 hours, then back to normal;
//! - a detection is a true positive for the first anomaly whose onset it
//!   follows by at most 10 minutes (2 hours for a drift) and which is not
//!   yet detected; any other detection is a false positive;
//! - per kind: recall (anomalies detected / anomalies) and the median
//!   delay; overall precision (true / all detections);
//! - one series per seed; seeds 0-99 are for tuning, seeds 1000-1099 are
//!   held out and never used for tuning.
//!
//! ```sh
//! cargo build --release --bin bench_detect
//! target/release/bench_detect             # held-out seeds 1000-1099
//! target/release/bench_detect --tune      # seeds 0-99
//! ```

use std::time::Instant;

use opsloop::analyst::detect::{DAY, Params, detect};

/// SplitMix64: small, seeded, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    /// Box-Muller.
    fn gauss(&mut self) -> f64 {
        let u = self.unit().max(f64::MIN_POSITIVE);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Step,
    Spike,
    Drift,
}

struct Anomaly {
    kind: Kind,
    onset: usize,
}

fn series(seed: u64) -> (Vec<f64>, Vec<Anomaly>) {
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xA076_1D64_78BD_642F);
    let n = 7 * DAY;
    let seasonal = seed.is_multiple_of(2);
    let mut s: Vec<f64> = (0..n)
        .map(|t| {
            let season = if seasonal {
                3.0 * (t as f64 * std::f64::consts::TAU / DAY as f64).sin()
            } else {
                0.0
            };
            100.0 + season + rng.gauss()
        })
        .collect();
    let mut anomalies = Vec::new();
    if seed % 10 >= 3 {
        let count = rng.range(1, 3);
        let mut tries = 0;
        while anomalies.len() < count && tries < 100 {
            tries += 1;
            let onset = rng.range(2 * DAY, n - 7 * 60);
            if anomalies
                .iter()
                .any(|a: &Anomaly| a.onset.abs_diff(onset) < 6 * 60)
            {
                continue;
            }
            let kind = match rng.range(0, 2) {
                0 => Kind::Step,
                1 => Kind::Spike,
                _ => Kind::Drift,
            };
            match kind {
                Kind::Step => {
                    let len = rng.range(30, 120);
                    for x in &mut s[onset..(onset + len).min(n)] {
                        *x += 4.0;
                    }
                }
                Kind::Spike => {
                    let len = rng.range(3, 10);
                    for x in &mut s[onset..(onset + len).min(n)] {
                        *x += 6.0;
                    }
                }
                Kind::Drift => {
                    let len = 6 * 60;
                    for (i, x) in s[onset..(onset + len).min(n)].iter_mut().enumerate() {
                        *x += 3.0 * i as f64 / len as f64;
                    }
                }
            }
            anomalies.push(Anomaly { kind, onset });
        }
        anomalies.sort_by_key(|a| a.onset);
    }
    (s, anomalies)
}

#[derive(Default)]
struct Tally {
    anomalies: usize,
    found: usize,
    delays: Vec<usize>,
}

fn main() {
    let tune = std::env::args().any(|a| a == "--tune");
    let seeds: Vec<u64> = if tune {
        (0..100).collect()
    } else {
        (1000..1100).collect()
    };
    // Overrides for tuning runs (on the tuning seeds).
    let arg = |name: &str| {
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let mut p = Params::default();
    if let Some(v) = arg("--k") {
        p.k = v.parse().expect("--k: a number");
    }
    if let Some(v) = arg("--persist") {
        p.persist = v.parse().expect("--persist: minutes");
    }
    if let Some(v) = arg("--k-slow") {
        p.k_slow = v.parse().expect("--k-slow: a number");
    }
    if let Some(v) = arg("--window") {
        p.window = v.parse().expect("--window: minutes");
    }
    if let Some(v) = arg("--slow") {
        p.slow = v.parse().expect("--slow: minutes");
    }
    let kinds = [Kind::Step, Kind::Spike, Kind::Drift];
    let mut tallies: Vec<Tally> = kinds.iter().map(|_| Tally::default()).collect();
    let (mut tp, mut fp) = (0usize, 0usize);
    // Where the false detections fall: late in a drift (past its 2 h),
    // late in a step or spike (past 10 min, or in its tail), or elsewhere.
    let (mut fp_drift, mut fp_late, mut fp_clean) = (0usize, 0usize, 0usize);
    let mut points = 0usize;
    let mut spent = std::time::Duration::ZERO;
    for &seed in &seeds {
        let (s, anomalies) = series(seed);
        points += s.len();
        let started = Instant::now();
        let fired = detect(&s, &p);
        spent += started.elapsed();
        let mut detected = vec![false; anomalies.len()];
        for &t in &fired {
            let hit = anomalies.iter().enumerate().find(|(i, a)| {
                let reach = if a.kind == Kind::Drift { 120 } else { 10 };
                !detected[*i] && t >= a.onset && t <= a.onset + reach
            });
            match hit {
                Some((i, a)) => {
                    detected[i] = true;
                    tp += 1;
                    let k = kinds.iter().position(|k| *k == a.kind).unwrap_or(0);
                    tallies[k].delays.push(t - a.onset);
                }
                None => {
                    fp += 1;
                    let near = anomalies
                        .iter()
                        .find(|a| t >= a.onset && t <= a.onset + 7 * 60);
                    match near.map(|a| a.kind) {
                        Some(Kind::Drift) => fp_drift += 1,
                        Some(_) => fp_late += 1,
                        None => fp_clean += 1,
                    }
                }
            }
        }
        for (a, d) in anomalies.iter().zip(&detected) {
            let k = kinds.iter().position(|k| *k == a.kind).unwrap_or(0);
            tallies[k].anomalies += 1;
            tallies[k].found += usize::from(*d);
        }
    }
    println!(
        "bench_detect: seeds {}-{} ({}), {} series of 7 days; params {p:?}",
        seeds[0],
        seeds[seeds.len() - 1],
        if tune { "tuning" } else { "held out" },
        seeds.len()
    );
    println!(
        "precision {:.3} ({tp} true, {fp} false detections: {fp_drift} late in a drift, {fp_late} late in a step or spike, {fp_clean} away from any anomaly)",
        tp as f64 / (tp + fp).max(1) as f64
    );
    for (k, t) in kinds.iter().zip(&mut tallies) {
        t.delays.sort_unstable();
        let median = t.delays.get(t.delays.len() / 2).copied();
        println!(
            "{k:?}: recall {:.3} ({} of {}), median delay {} min",
            t.found as f64 / t.anomalies.max(1) as f64,
            t.found,
            t.anomalies,
            median.map_or("-".into(), |m| m.to_string())
        );
    }
    // Cost: the whole history is scanned here (an offline pass); per
    // series-minute it bounds what an incremental detector would pay.
    let per_point = spent.as_secs_f64() / points as f64;
    println!(
        "cost: {:.2} µs per point; 10 000 series x 1 minute of data = {:.1} ms of one core",
        per_point * 1e6,
        per_point * 10_000.0 * 1e3
    );
}
