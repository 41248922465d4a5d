//! k-means clustering of a frame's rows, seeded and reproducible.
//!
//! Features are log-scaled (`sign(x)·ln(1 + |x|)`, so money and counts with
//! long tails do not decide the clusters alone) and then standardised to
//! mean 0 and standard deviation 1. Centres start by k-means++ from a
//! ChaCha8 stream of the seed; Lloyd's iterations run until no row changes
//! cluster; the best of several starts (least within-cluster sum of
//! squares) is kept. Clusters are numbered by size, largest first (ties:
//! by their first row), so the same data and seed always give the same
//! labels.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Most rows clustered in one call.
pub const MAX_ROWS: usize = 1_000_000;
/// Most clusters.
pub const MAX_K: usize = 50;
/// Most features.
pub const MAX_FEATURES: usize = 16;
/// Lloyd's iterations per start at most.
pub const MAX_ITERATIONS: usize = 300;
/// Starts tried (the best is kept).
pub const STARTS: usize = 4;

/// A clustering.
#[derive(Clone, Debug, PartialEq)]
pub struct Clusters {
    /// Each row's cluster, from 0 (the largest).
    pub labels: Vec<usize>,
    /// Each row's distance to its cluster's centre (standardised units).
    pub distance: Vec<f64>,
    /// The centres in standardised units, one row per cluster.
    pub centres: Vec<Vec<f64>>,
    /// Rows per cluster.
    pub sizes: Vec<usize>,
    /// Within-cluster sum of squared distances.
    pub inertia: f64,
    /// Iterations the kept start took.
    pub iterations: usize,
}

/// `sign(x)·ln(1 + |x|)` of each value, then each column standardised.
/// `columns` holds one vector per feature, all of one length.
pub fn prepare(columns: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, String> {
    let n = columns.first().map_or(0, Vec::len);
    if columns.iter().any(|c| c.len() != n) {
        return Err("kmeans: the feature columns differ in length".into());
    }
    let mut rows = vec![Vec::with_capacity(columns.len()); n];
    for (j, c) in columns.iter().enumerate() {
        if let Some(i) = c.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "kmeans: feature {} of row {i} is missing or not a number (fill or drop it first)",
                j + 1
            ));
        }
        let logged: Vec<f64> = c.iter().map(|v| v.signum() * v.abs().ln_1p()).collect();
        let mean = logged.iter().sum::<f64>() / n.max(1) as f64;
        let var = logged.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n.max(1) as f64;
        let sd = var.sqrt();
        for (row, v) in rows.iter_mut().zip(logged) {
            row.push(if sd > 0.0 { (v - mean) / sd } else { 0.0 });
        }
    }
    Ok(rows)
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

fn nearest(p: &[f64], centres: &[Vec<f64>]) -> (usize, f64) {
    centres
        .iter()
        .enumerate()
        .map(|(j, c)| (j, dist2(p, c)))
        .fold(
            (0, f64::INFINITY),
            |best, cur| {
                if cur.1 < best.1 {
                    cur
                } else {
                    best
                }
            },
        )
}

/// k-means++: the first centre uniformly, each next one with probability
/// proportional to the squared distance to the nearest centre so far.
fn seed_centres(rows: &[Vec<f64>], k: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<f64>> {
    let n = rows.len();
    let mut centres = Vec::with_capacity(k);
    let first = rng.random_range(0..n);
    if let Some(r) = rows.get(first) {
        centres.push(r.clone());
    }
    let mut d2: Vec<f64> = rows
        .iter()
        .map(|r| centres.first().map_or(0.0, |c| dist2(r, c)))
        .collect();
    while centres.len() < k {
        let total: f64 = d2.iter().sum();
        let pick = if total > 0.0 {
            let mut target = rng.random::<f64>() * total;
            let mut chosen = n - 1;
            for (i, d) in d2.iter().enumerate() {
                if target < *d {
                    chosen = i;
                    break;
                }
                target -= d;
            }
            chosen
        } else {
            // All rows sit on the centres already: any row will do.
            rng.random_range(0..n)
        };
        let Some(c) = rows.get(pick) else { break };
        for (d, r) in d2.iter_mut().zip(rows) {
            *d = d.min(dist2(r, c));
        }
        centres.push(c.clone());
    }
    centres
}

struct Run {
    labels: Vec<usize>,
    centres: Vec<Vec<f64>>,
    inertia: f64,
    iterations: usize,
}

fn lloyd(rows: &[Vec<f64>], mut centres: Vec<Vec<f64>>) -> Run {
    let dims = rows.first().map_or(0, Vec::len);
    let k = centres.len();
    let mut labels = vec![usize::MAX; rows.len()];
    let mut iterations = 0;
    while iterations < MAX_ITERATIONS {
        iterations += 1;
        let mut changed = false;
        for (l, r) in labels.iter_mut().zip(rows) {
            let (j, _) = nearest(r, &centres);
            if *l != j {
                *l = j;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        let mut sums = vec![vec![0.0; dims]; k];
        let mut counts = vec![0usize; k];
        for (l, r) in labels.iter().zip(rows) {
            if let (Some(s), Some(c)) = (sums.get_mut(*l), counts.get_mut(*l)) {
                *c += 1;
                for (a, v) in s.iter_mut().zip(r) {
                    *a += v;
                }
            }
        }
        for ((centre, s), c) in centres.iter_mut().zip(sums).zip(counts) {
            // An emptied cluster keeps its centre.
            if c > 0 {
                *centre = s.into_iter().map(|v| v / c as f64).collect();
            }
        }
    }
    let inertia = labels
        .iter()
        .zip(rows)
        .map(|(l, r)| centres.get(*l).map_or(0.0, |c| dist2(r, c)))
        .sum();
    Run {
        labels,
        centres,
        inertia,
        iterations,
    }
}

/// Clusters `rows` (already prepared, see [`prepare`]) into `k` groups.
pub fn kmeans(rows: &[Vec<f64>], k: usize, seed: u64) -> Result<Clusters, String> {
    let n = rows.len();
    if k == 0 || k > MAX_K {
        return Err(format!("kmeans: k = {k}; give 1 to {MAX_K} clusters"));
    }
    if n < k {
        return Err(format!("kmeans: {n} rows cannot make {k} clusters"));
    }
    if n > MAX_ROWS {
        return Err(format!(
            "kmeans: {n} rows; at most {MAX_ROWS} (sample or aggregate first)"
        ));
    }
    let dims = rows.first().map_or(0, Vec::len);
    if dims == 0 || dims > MAX_FEATURES {
        return Err(format!(
            "kmeans: {dims} features; give 1 to {MAX_FEATURES} numeric columns"
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut best: Option<Run> = None;
    for _ in 0..STARTS {
        let run = lloyd(rows, seed_centres(rows, k, &mut rng));
        if best.as_ref().is_none_or(|b| run.inertia < b.inertia) {
            best = Some(run);
        }
    }
    let Some(run) = best else {
        return Err("kmeans: no start ran".into());
    };
    // Number clusters by size, largest first; ties by their first row.
    let mut sizes = vec![0usize; k];
    let mut first_row = vec![usize::MAX; k];
    for (i, l) in run.labels.iter().enumerate() {
        if let (Some(s), Some(f)) = (sizes.get_mut(*l), first_row.get_mut(*l)) {
            *s += 1;
            *f = (*f).min(i);
        }
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by_key(|&j| {
        (
            std::cmp::Reverse(sizes.get(j).copied().unwrap_or(0)),
            first_row.get(j).copied().unwrap_or(usize::MAX),
        )
    });
    let mut new_label = vec![0usize; k];
    for (new, old) in order.iter().enumerate() {
        if let Some(slot) = new_label.get_mut(*old) {
            *slot = new;
        }
    }
    let labels: Vec<usize> = run
        .labels
        .iter()
        .map(|l| new_label.get(*l).copied().unwrap_or(0))
        .collect();
    let centres: Vec<Vec<f64>> = order
        .iter()
        .filter_map(|j| run.centres.get(*j).cloned())
        .collect();
    let distance = labels
        .iter()
        .zip(rows)
        .map(|(l, r)| centres.get(*l).map_or(0.0, |c| dist2(r, c).sqrt()))
        .collect();
    Ok(Clusters {
        labels,
        distance,
        sizes: order
            .iter()
            .map(|j| sizes.get(*j).copied().unwrap_or(0))
            .collect(),
        centres,
        inertia: run.inertia,
        iterations: run.iterations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three blobs far apart (before the log scale), 60/40/20 rows.
    fn blobs() -> (Vec<Vec<f64>>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let centres = [(5.0, 1.0), (200.0, 8.0), (5_000.0, 40.0)];
        let mut cols = vec![Vec::new(), Vec::new()];
        let mut truth = Vec::new();
        for (b, (n, (x, y))) in [60, 40, 20].iter().zip(centres).enumerate() {
            for _ in 0..*n {
                cols[0].push(x * (1.0 + 0.2 * (rng.random::<f64>() - 0.5)));
                cols[1].push(y * (1.0 + 0.2 * (rng.random::<f64>() - 0.5)));
                truth.push(b);
            }
        }
        (cols, truth)
    }

    #[test]
    fn separate_groups_are_found_and_numbered_by_size() {
        let (cols, truth) = blobs();
        let rows = prepare(&cols).unwrap();
        let c = kmeans(&rows, 3, 42).unwrap();
        assert_eq!(c.sizes, vec![60, 40, 20]);
        assert_eq!(c.labels, truth);
        // A fixed point of Lloyd's: every row is nearest its own centre,
        // every centre is the mean of its rows.
        for (r, l) in rows.iter().zip(&c.labels) {
            assert_eq!(nearest(r, &c.centres).0, *l);
        }
        for (j, centre) in c.centres.iter().enumerate() {
            let members: Vec<&Vec<f64>> = rows
                .iter()
                .zip(&c.labels)
                .filter(|(_, l)| **l == j)
                .map(|(r, _)| r)
                .collect();
            for d in 0..2 {
                let mean = members.iter().map(|r| r[d]).sum::<f64>() / members.len() as f64;
                assert!((mean - centre[d]).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_clusters() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let cols: Vec<Vec<f64>> = (0..3)
            .map(|_| (0..500).map(|_| rng.random::<f64>() * 100.0).collect())
            .collect();
        let rows = prepare(&cols).unwrap();
        let a = kmeans(&rows, 5, 1).unwrap();
        let b = kmeans(&rows, 5, 1).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.sizes.iter().sum::<usize>(), 500);
        assert!(a.sizes.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn features_are_log_scaled_and_standardised() {
        let rows = prepare(&[vec![0.0, 9.0, 99.0], vec![-3.0, -3.0, -3.0]]).unwrap();
        let x: Vec<f64> = rows.iter().map(|r| r[0]).collect();
        let mean = x.iter().sum::<f64>() / 3.0;
        let sd = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 3.0).sqrt();
        assert!(mean.abs() < 1e-12 && (sd - 1.0).abs() < 1e-12);
        // ln(1), ln(10), ln(100): evenly spaced after the log.
        assert!(((x[1] - x[0]) - (x[2] - x[1])).abs() < 1e-12);
        // A constant feature is all zeros.
        assert!(rows.iter().all(|r| r[1] == 0.0));
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let rows = prepare(&[vec![1.0, 2.0, 3.0]]).unwrap();
        assert!(kmeans(&rows, 0, 1).unwrap_err().contains("give 1 to"));
        assert!(kmeans(&rows, 4, 1).unwrap_err().contains("3 rows"));
        let e = prepare(&[vec![1.0, f64::NAN]]).unwrap_err();
        assert!(e.contains("row 1"), "{e}");
        // Identical rows: every start is the same and nothing panics.
        let same = prepare(&[vec![2.0; 10]]).unwrap();
        let c = kmeans(&same, 3, 1).unwrap();
        assert_eq!(c.sizes.iter().sum::<usize>(), 10);
        assert!(c.inertia.abs() < 1e-12);
    }
}
