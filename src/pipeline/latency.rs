//! Event → commit latency: a lock-free histogram ingest writers record into
//! as each batch commits (now minus the event's own time), and the
//! percentiles read from it.
//!
//! Buckets are log-linear over microseconds: exact below 64 µs, then 64
//! buckets per power of two, so a reported value is within 1.6 % of the
//! true one, from 0 to about 51 days, in 18 KiB. Events whose own time is
//! before [`LatencyHistogram::count_from`] are not counted (a warm-up).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Sub-buckets per power of two (and the exact range below it).
const SUB: u64 = 64;
/// Powers of two covered above the exact range (64 µs · 2^36 ≈ 51 days).
const OCTAVES: u64 = 36;
const BUCKETS: usize = (SUB + SUB * OCTAVES) as usize;

/// Counts of latencies by bucket; every method takes `&self`.
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    max_us: AtomicU64,
    /// Events older than this (µs since the epoch) are not counted.
    from_us: AtomicI64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
            from_us: AtomicI64::new(i64::MIN),
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("summary", &self.summary())
            .finish()
    }
}

/// The bucket of `us` microseconds.
fn bucket(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let e = u64::from(63 - us.leading_zeros()); // 2^e <= us, e >= 6
    let shift = e - 6;
    let octave = shift.min(OCTAVES - 1);
    if shift > octave {
        return BUCKETS - 1;
    }
    let m = (us >> shift) - SUB; // 0..64
    (SUB + octave * SUB + m) as usize
}

/// The largest value that falls in bucket `i`, in microseconds.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let (octave, m) = ((i - SUB) / SUB, (i - SUB) % SUB);
    ((SUB + m + 1) << octave) - 1
}

/// Percentiles of the latencies recorded, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Latencies recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The largest (exact).
    pub max_ms: f64,
}

impl std::fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events)",
            self.p50_ms, self.p95_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

impl LatencyHistogram {
    /// Records one latency in microseconds.
    pub fn record_us(&self, us: u64) {
        if let Some(b) = self.buckets.get(bucket(us)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Records the time from `at` (an event's own time) to `now` (zero if
    /// `at` is later: a clock ahead of this one), unless `at` is before the
    /// time set by [`LatencyHistogram::count_from`].
    pub fn record_since(&self, at: DateTime<Utc>, now: DateTime<Utc>) {
        if at.timestamp_micros() < self.from_us.load(Ordering::Relaxed) {
            return;
        }
        let us = (now - at).num_microseconds().unwrap_or(i64::MAX).max(0);
        self.record_us(us as u64);
    }

    /// Counts from now on only events whose own time is `from` or later
    /// (a warm-up's events, however late they commit, stay out).
    pub fn count_from(&self, from: DateTime<Utc>) {
        self.from_us
            .store(from.timestamp_micros(), Ordering::Relaxed);
    }

    /// Forgets everything recorded (e.g. at the end of a warm-up).
    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
        self.max_us.store(0, Ordering::Relaxed);
    }

    /// The percentiles of what was recorded since the last reset; each is
    /// the upper edge of its bucket (at most 1.6 % above the true value).
    pub fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let max_us = self.max_us.load(Ordering::Relaxed);
        let at = |q: f64| -> f64 {
            // The smallest value with at least q of the count at or below it.
            let rank = ((q * count as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return upper(i).min(max_us) as f64 / 1_000.0;
                }
            }
            max_us as f64 / 1_000.0
        };
        if count == 0 {
            return LatencySummary::default();
        }
        LatencySummary {
            count,
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: max_us as f64 / 1_000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            63,
            64,
            65,
            127,
            128,
            1_000,
            99_999,
            3_600_000_000,
            u64::MAX,
        ] {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            last = b;
            assert!(b < BUCKETS);
            if us < 1 << 40 {
                assert!(upper(b) >= us, "{us} above its bucket's edge {}", upper(b));
                assert!(
                    (upper(b) - us) as f64 <= us as f64 / 64.0 + 1.0,
                    "{us}: edge {}",
                    upper(b)
                );
            }
        }
    }

    #[test]
    fn percentiles_agree_with_sorting_within_the_bucket_error() {
        let h = LatencyHistogram::default();
        // A skewed sample, deterministic.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut all = Vec::new();
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x % 1_000) * (x % 1_000) + x % 97;
            all.push(v);
            h.record_us(v);
        }
        all.sort_unstable();
        let s = h.summary();
        assert_eq!(s.count, 20_000);
        for (q, got) in [(0.50, s.p50_ms), (0.95, s.p95_ms), (0.99, s.p99_ms)] {
            let rank = (q * all.len() as f64).ceil() as usize - 1;
            let want = all[rank] as f64 / 1_000.0;
            assert!(
                got >= want && got <= want * (1.0 + 1.0 / 64.0) + 0.001,
                "q {q}: {got} ms, sorted {want} ms"
            );
        }
        assert_eq!(s.max_ms, *all.last().unwrap() as f64 / 1_000.0);
        h.reset();
        assert_eq!(h.summary(), LatencySummary::default());
    }

    #[test]
    fn events_made_before_the_cut_off_are_left_out() {
        let h = LatencyHistogram::default();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let ms = chrono::Duration::milliseconds;
        h.count_from(t0);
        h.record_since(t0 - ms(1), t0 + ms(500)); // a warm-up event, late
        h.record_since(t0 + ms(10), t0 + ms(30));
        h.record_since(t0 + ms(50), t0 + ms(40)); // a clock ahead: zero
        let s = h.summary();
        assert_eq!(s.count, 2);
        assert_eq!(s.max_ms, 20.0);
        assert_eq!(s.p50_ms, 0.0);
    }
}
