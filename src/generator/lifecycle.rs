//! The customer base: customers who arrive, come back and leave.
//!
//! The model is the modified BG/NBD ("buy till you die") process of
//! Batislam, Denizel and Filiztekin (2007), driven by the shop's traffic:
//!
//! - **Arrival.** Every session belongs either to a known customer whose
//!   next visit is due or, when none is, to a new visitor. Traffic is what
//!   the clock (or the producer's rate) says; returning customers take their
//!   share of it and new visitors fill the rest, so acquisition is tied to
//!   traffic and a campaign (more traffic) brings new visitors.
//! - **Purchases.** A new visitor whose session orders becomes a customer.
//!   Each customer has a purchase rate `λ ~ Gamma(shape, mean / shape)` per
//!   year (the shop's `purchases_per_year` × the segment's `activity`) and
//!   a dropout probability `p ~ Beta` (mean: the segment's `dropout`).
//!   While active, the customer visits at rate `λ / c` where `c` is the
//!   probability that a visit of theirs orders, so purchases arrive at rate
//!   `λ` (a thinned Poisson process) and the visits that do not order are
//!   sessions without sales, as in a real shop.
//! - **Dropout.** After each purchase the customer leaves for good with
//!   probability `p` (× a scenario's `churn`), the first purchase included
//!   (that is the "modified" in MBG/NBD: most customers buy once). A
//!   customer who has not bought for `max_gap_days` has left too.
//! - **Rhythm.** Gaps between visits are drawn in traffic time (the shop's
//!   hour-of-day and weekday weights), so returning visits follow the day's
//!   rhythm like everyone else's.
//! - **Time.** Visits are scheduled on the generator's simulated clock. On
//!   the wall clock that clock still runs, at the shop's
//!   `sessions_per_hour`, and decides who comes back (events carry the wall
//!   time): a seeded stream stays the same stream at any pace, and a
//!   producer faster than the shop's traffic compresses weeks of customer
//!   life into hours. Set `sessions_per_hour` to the producer's pace for
//!   gaps true to the wall clock.
//!
//! Everything about a customer (segment, rates, region, country, spend)
//! derives from a hash of the customer's number, so memory holds only the
//! customers who will come back: their number, next visit and last
//! purchase (24 bytes each), in an hourly calendar queue. At most
//! `max_customers` are kept; beyond that the ones whose next visit is
//! farthest away are let go first (counted as `evicted`).
//!
//! A run does not start with an empty shop: the shop has been open for
//! `history_days` before the first event, and the customers of that
//! history who are still active at the start (the *existing base*) are
//! drawn by simulating each historic customer's purchases (no sessions),
//! in one pass, from the population seed (the same base whatever the run's
//! seed), at the shop's `sessions_per_hour`.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use rand::{Rng, RngCore};
use rand_distr::weighted::WeightedAliasIndex;
use rand_distr::{Beta, Distribution, Exp1, Gamma, Pareto};

use super::params::{GeneratorParams, LifecycleSpec, ParamsError};

/// Microseconds per hour.
const HOUR_US: i64 = 3_600_000_000;
/// Microseconds per day.
const DAY_US: i64 = 24 * HOUR_US;
/// Hours in a week.
const WEEK_HOURS: usize = 168;
/// Customer numbers at or above this were acquired during the run; below,
/// they belong to the existing base.
pub(crate) const RUN_BIT: u64 = 1 << 48;
/// Most purchases the existing base simulates (about 10 ns each): beyond
/// this the history is thinned (fewer existing customers than the traffic
/// implies), which bounds the start-up time whatever the shop.
const MAX_HISTORIC_WORK: f64 = 100_000_000.0;
/// Most purchases simulated per historic customer.
const MAX_PURCHASES: usize = 10_000;

/// SplitMix64: a tiny, fast generator for per-customer draws (each
/// customer's traits come from its own stream, seeded by its number).
pub(crate) struct Mix(u64);

impl Mix {
    /// The stream of customer `id` under `key`, for purpose `stream`. Each
    /// input is scrambled before they are combined: neighbouring ids (or a
    /// key with few bits set) must not give overlapping streams, as they
    /// would if the state were `key ^ id·step` (SplitMix steps by `step`).
    pub(crate) fn new(key: u64, id: u64, stream: u64) -> Self {
        Mix(fmix(
            key ^ fmix(id ^ fmix(stream.wrapping_add(0x5851_F42D_4C95_7F2D))),
        ))
    }
}

/// SplitMix64's finaliser: a bijective scramble of 64 bits.
fn fmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl RngCore for Mix {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        fmix(self.0)
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            for (d, s) in chunk.iter_mut().zip(v) {
                *d = s;
            }
        }
    }
}

/// How one segment's customers are drawn.
struct SegmentModel {
    /// Purchase rate per day.
    rate: Gamma<f64>,
    /// Dropout probability after a purchase.
    dropout: Beta<f64>,
    spend: f64,
    conversion: f64,
}

/// A customer's lifecycle traits (what the model needs to schedule them).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lifecycle {
    /// Purchases per day while active.
    pub rate: f64,
    /// Probability of leaving after a purchase.
    pub dropout: f64,
    /// Conversion multiplier of the segment.
    pub conversion: f64,
    /// Segment index (0 when the shop has none).
    pub segment: usize,
}

/// What a customer looks like (region, country, basket multiplier).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Looks {
    /// Index into the shop's regions.
    pub region: usize,
    /// Index into the region's countries.
    pub country: usize,
    /// Basket multiplier (Pareto × segment).
    pub spend: f64,
}

/// How customers of one shop are drawn, and the shop's traffic rhythm.
pub(crate) struct Population {
    segment_pick: Option<WeightedAliasIndex<f64>>,
    segments: Vec<SegmentModel>,
    region_pick: WeightedAliasIndex<f64>,
    country_picks: Vec<WeightedAliasIndex<f64>>,
    spend: Pareto<f64>,
    /// Mean probability that a session orders (channels, hours, segment 1).
    pub mean_conversion: f64,
    /// Cumulative traffic weight by hour of week (Monday 00:00 UTC first),
    /// twice over (337 values), each week summing to 168.
    cumulative: Vec<f64>,
    spec: LifecycleSpec,
}

fn alias(weights: Vec<f64>) -> Result<WeightedAliasIndex<f64>, ParamsError> {
    WeightedAliasIndex::new(weights).map_err(|e| ParamsError(format!("weights: {e}")))
}

/// Beta with mean `mean` and concentration `k` (`a + b`), kept away from
/// the degenerate ends.
fn beta(mean: f64, k: f64) -> Result<Beta<f64>, ParamsError> {
    let m = mean.clamp(1e-4, 1.0 - 1e-4);
    Beta::new(m * k, (1.0 - m) * k).map_err(|e| ParamsError(format!("dropout: {e}")))
}

impl Population {
    /// The population model of `params`.
    pub(crate) fn new(params: &GeneratorParams) -> Result<Self, ParamsError> {
        let l = &params.lifecycle;
        let shape = l.rate_shape;
        let segment = |activity: f64, dropout: f64, spend: f64, conversion: f64| {
            let mean_per_day = l.purchases_per_year * activity / 365.0;
            Ok::<_, ParamsError>(SegmentModel {
                rate: Gamma::new(shape, mean_per_day / shape)
                    .map_err(|e| ParamsError(format!("lifecycle rates: {e}")))?,
                dropout: beta(dropout, l.dropout_concentration)?,
                spend,
                conversion,
            })
        };
        let (segment_pick, segments) = if params.segments.is_empty() {
            (None, vec![segment(1.0, l.dropout, 1.0, 1.0)?])
        } else {
            (
                Some(alias(params.segments.iter().map(|s| s.share).collect())?),
                params
                    .segments
                    .iter()
                    .map(|s| {
                        segment(
                            s.activity,
                            s.dropout.unwrap_or(l.dropout),
                            s.spend,
                            s.conversion,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let region_pick = alias(params.regions.iter().map(|r| r.weight).collect())?;
        let country_picks = params
            .regions
            .iter()
            .map(|r| alias(r.countries.iter().map(|c| c.weight).collect()))
            .collect::<Result<Vec<_>, _>>()?;
        let spend = Pareto::new(1.0, params.spend_pareto_shape)
            .map_err(|e| ParamsError(format!("spend_pareto_shape: {e}")))?;

        // Traffic by hour of week, normalised to a mean of 1.
        let mean = |w: &[f64]| w.iter().sum::<f64>() / w.len().max(1) as f64;
        let (hm, dm) = (mean(&params.hour_weights), mean(&params.weekday_weights));
        let mut week = Vec::with_capacity(WEEK_HOURS);
        for d in &params.weekday_weights {
            for h in &params.hour_weights {
                week.push((h / hm) * (d / dm));
            }
        }
        let total: f64 = week.iter().sum();
        let scale = if total > 0.0 {
            WEEK_HOURS as f64 / total
        } else {
            1.0
        };
        let mut cumulative = Vec::with_capacity(2 * WEEK_HOURS + 1);
        let mut acc = 0.0;
        cumulative.push(0.0);
        for w in week.iter().chain(week.iter()) {
            acc += w * scale;
            cumulative.push(acc);
        }

        // Mean conversion of a session: channels, the hour's lift weighted
        // by traffic, segment 1 (a segment's own multiplier scales its
        // visit rate back, see `visit_rate`).
        let ch_total: f64 = params.channels.iter().map(|c| c.weight).sum();
        let channel_mean = if ch_total > 0.0 {
            params
                .channels
                .iter()
                .map(|c| c.weight * c.conversion)
                .sum::<f64>()
                / ch_total
        } else {
            0.0
        };
        let hour_norm: Vec<f64> = params.hour_weights.iter().map(|h| h / hm).collect();
        let hour_total: f64 = hour_norm.iter().sum();
        let lift = if hour_total > 0.0 {
            hour_norm
                .iter()
                .map(|w| w * (1.0 + params.seasonal_conversion_lift * (w - 1.0)))
                .sum::<f64>()
                / hour_total
        } else {
            1.0
        };
        Ok(Self {
            segment_pick,
            segments,
            region_pick,
            country_picks,
            spend,
            mean_conversion: (channel_mean * lift).clamp(1e-6, 1.0),
            cumulative,
            spec: l.clone(),
        })
    }

    /// The lifecycle spec this population follows.
    pub(crate) fn spec(&self) -> &LifecycleSpec {
        &self.spec
    }

    /// Customer `id`'s lifecycle traits under `key`.
    pub(crate) fn lifecycle(&self, key: u64, id: u64) -> Lifecycle {
        let mut r = Mix::new(key, id, 1);
        let segment = self.segment_pick.as_ref().map_or(0, |p| p.sample(&mut r));
        let Some(s) = self.segments.get(segment).or(self.segments.first()) else {
            return Lifecycle {
                rate: 0.0,
                dropout: 1.0,
                conversion: 1.0,
                segment,
            };
        };
        Lifecycle {
            dropout: s.dropout.sample(&mut r),
            rate: s.rate.sample(&mut r),
            conversion: s.conversion,
            segment,
        }
    }

    /// Customer `id`'s looks under `key`.
    pub(crate) fn looks(&self, key: u64, id: u64, segment: usize) -> Looks {
        let mut r = Mix::new(key, id, 2);
        let region = self.region_pick.sample(&mut r);
        let country = self
            .country_picks
            .get(region)
            .map_or(0, |p| p.sample(&mut r));
        let seg = self
            .segments
            .get(segment)
            .map_or(1.0, |s: &SegmentModel| s.spend);
        Looks {
            region,
            country,
            spend: self.spend.sample(&mut r).min(8.0) * seg,
        }
    }

    /// Visits per day of a customer with `traits`, so that their purchases
    /// arrive at `traits.rate` per day.
    pub(crate) fn visit_rate(&self, traits: &Lifecycle) -> f64 {
        traits.rate / (self.mean_conversion * traits.conversion).clamp(1e-6, 1.0)
    }

    /// `from` plus `gap_hours` of traffic time: busy hours pass quickly,
    /// quiet ones slowly, so visits scheduled this way follow the shop's
    /// rhythm. Saturates far in the future.
    pub(crate) fn after(&self, from: i64, gap_hours: f64) -> i64 {
        if gap_hours == f64::INFINITY {
            // Never (a rate of zero): beyond any gap allowed.
            return i64::MAX / 4;
        }
        if !(gap_hours.is_finite() && gap_hours > 0.0) {
            return from;
        }
        let c = &self.cumulative;
        let at = |i: usize| c.get(i).copied().unwrap_or(0.0);
        // Monday 00:00 UTC of `from`'s week (1970-01-01 was a Thursday).
        let day = from.div_euclid(DAY_US);
        let weekday = (day + 3).rem_euclid(7);
        let week_start = (day - weekday) * DAY_US;
        let into = (from - week_start) as f64 / HOUR_US as f64; // 0..168
        let h0 = (into.floor() as usize).min(WEEK_HOURS - 1);
        let base = at(h0) + (at(h0 + 1) - at(h0)) * (into - h0 as f64);
        let week = WEEK_HOURS as f64;
        let weeks = (gap_hours / week).floor();
        let target = base + gap_hours - weeks * week; // within base..base+168
                                                      // First hour whose end reaches the target (cumulative is increasing).
        let (mut lo, mut hi) = (h0, 2 * WEEK_HOURS - 1);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if at(mid + 1) >= target {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let w = at(lo + 1) - at(lo);
        let within = if w > 0.0 {
            ((target - at(lo)) / w).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let hours = weeks * week + lo as f64 + within;
        let us = hours * HOUR_US as f64;
        if us >= (i64::MAX / 4) as f64 {
            return i64::MAX / 4;
        }
        week_start.saturating_add(us as i64)
    }
}

/// A customer who will come back: their number, next visit and last
/// purchase (microseconds since the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Due {
    /// When the next visit is due.
    pub at: i64,
    /// The customer's number.
    pub id: u64,
    /// When they last bought.
    pub last: i64,
}

/// An hourly calendar queue of [`Due`] visits: O(1) to add, each hour
/// sorted once when it comes up, and the farthest visits easy to find.
#[derive(Clone, Default)]
pub(crate) struct Calendar {
    /// The hour (since the epoch) of `buckets[0]`.
    first: i64,
    buckets: VecDeque<Vec<Due>>,
    /// Whether `buckets[0]` is sorted (latest first).
    sorted: bool,
    /// Visits added to the current hour after it was sorted.
    late: BinaryHeap<std::cmp::Reverse<Due>>,
    len: usize,
}

impl Calendar {
    /// Visits waiting.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds a visit. The lifecycle never schedules one more than
    /// `max_gap_days` (at most ten years) after a purchase that is not in
    /// the future, so the hours between the first and the last are bounded.
    pub(crate) fn push(&mut self, d: Due) {
        let hour = d.at.div_euclid(HOUR_US);
        if self.buckets.is_empty() {
            self.first = hour;
            self.sorted = false;
        }
        self.len += 1;
        let i = usize::try_from(hour - self.first).unwrap_or(0);
        if i == 0 && self.sorted {
            self.late.push(std::cmp::Reverse(d));
            return;
        }
        while self.buckets.len() <= i {
            self.buckets.push_back(Vec::new());
        }
        if let Some(b) = self.buckets.get_mut(i) {
            b.push(d);
        }
    }

    /// The earliest visit due at or before `now`, if any.
    pub(crate) fn pop_due(&mut self, now: i64) -> Option<Due> {
        loop {
            let front = self.buckets.front_mut()?;
            if !self.sorted {
                front.sort_unstable_by(|a, b| b.cmp(a));
                self.sorted = true;
            }
            let from_vec = front.last().copied();
            let from_late = self.late.peek().map(|r| r.0);
            let next = match (from_vec, from_late) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match next {
                Some(d) if d.at <= now => {
                    if from_late == Some(d) {
                        self.late.pop();
                    } else {
                        front.pop();
                    }
                    self.len -= 1;
                    return Some(d);
                }
                Some(_) => return None,
                None => {
                    // The current hour is done: move on (an empty hour may
                    // be dropped early; visits added later for an hour
                    // before `first` go into the current one).
                    if self.buckets.len() == 1 {
                        return None;
                    }
                    self.buckets.pop_front();
                    self.first += 1;
                    self.sorted = false;
                }
            }
        }
    }

    /// Removes one of the visits due farthest ahead (to keep memory bounded).
    pub(crate) fn evict_farthest(&mut self) -> Option<Due> {
        while self.buckets.len() > 1 && self.buckets.back().is_some_and(Vec::is_empty) {
            self.buckets.pop_back();
        }
        let only_front = self.buckets.len() == 1;
        let d = match self.buckets.back_mut() {
            Some(b) if only_front && self.sorted => {
                if b.is_empty() {
                    None
                } else {
                    Some(b.remove(0))
                }
            }
            Some(b) => b.pop(),
            None => None,
        };
        let d = d.or_else(|| {
            // Only late additions to the current hour are left.
            let mut v = std::mem::take(&mut self.late).into_vec();
            let farthest = v
                .iter()
                .enumerate()
                .max_by_key(|(_, r)| r.0)
                .map(|(i, _)| i);
            let d = farthest.map(|i| v.swap_remove(i).0);
            self.late = v.into();
            d
        });
        if d.is_some() {
            self.len -= 1;
        }
        d
    }
}

/// What the lifecycle did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LifecycleCounts {
    /// Customers of the existing base (active when the run started).
    pub existing: u64,
    /// New visitors (sessions that were nobody's return).
    pub new_visitors: u64,
    /// New visitors who ordered: customers acquired during the run.
    pub acquired: u64,
    /// Sessions of returning customers.
    pub returning_visits: u64,
    /// Customers who left after a purchase (dropout).
    pub dropped: u64,
    /// Customers who left after `max_gap_days` without a purchase.
    pub lapsed: u64,
    /// Customers let go early to keep memory within `max_customers`.
    pub evicted: u64,
    /// Customers kept in memory now (they will come back).
    pub tracked: u64,
}

/// The existing base of a shop, relative to the start of a run: (first
/// visit after the start in traffic hours, customer number, last purchase
/// in microseconds before the start).
type Base = Arc<Vec<(f64, u64, i64)>>;

/// Bases computed in this process, by population seed and shop (a shop's
/// base is the same for every run and stream).
fn bases() -> &'static Mutex<HashMap<u64, Base>> {
    static B: OnceLock<Mutex<HashMap<u64, Base>>> = OnceLock::new();
    B.get_or_init(Mutex::default)
}

/// The customers of `history_days` of the shop who are still active when a
/// run starts (see the module docs), simulated from `key`.
pub(crate) fn existing_base(pop: &Population, params: &GeneratorParams, key: u64) -> Base {
    let cache_key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        serde_json::to_string(params)
            .unwrap_or_default()
            .hash(&mut h);
        h.finish()
    };
    if let Some(b) = bases()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&cache_key)
    {
        return Arc::clone(b);
    }
    let base = Arc::new(simulate_base(pop, params, key));
    let mut m = bases().lock().unwrap_or_else(|p| p.into_inner());
    if m.len() >= 8 {
        m.clear();
    }
    m.insert(cache_key, Arc::clone(&base));
    base
}

/// Expected returning visits and purchases of one acquired customer over
/// their active life (a pilot sample, to size the acquisition rate of the
/// history and the work of simulating it): the visits before each repeat
/// purchase and, for those who lapse, the visits of the `max_gap_days`
/// without one.
fn pilot(pop: &Population, key: u64) -> (f64, f64) {
    const PILOT: u64 = 20_000;
    let max_gap = pop.spec.max_gap_days;
    let mut visits = 0.0;
    let mut purchases = 0u64;
    for i in 0..PILOT {
        let t = pop.lifecycle(key ^ 0x5eed, i);
        let mut r = Mix::new(key ^ 0x5eed, i, 3);
        let mut days = 0.0;
        for _ in 0..MAX_PURCHASES {
            purchases += 1;
            if r.random::<f64>() < t.dropout {
                break;
            }
            let e: f64 = Exp1.sample(&mut r);
            if t.rate <= 0.0 || e / t.rate > max_gap {
                days += max_gap;
                break;
            }
            days += e / t.rate;
        }
        visits += pop.visit_rate(&t) * days;
    }
    (visits / PILOT as f64, purchases as f64 / PILOT as f64)
}

fn simulate_base(pop: &Population, params: &GeneratorParams, key: u64) -> Vec<(f64, u64, i64)> {
    let spec = &pop.spec;
    if spec.history_days <= 0.0 {
        return Vec::new();
    }
    // Stationary acquisition: new visitors are the traffic T returning
    // customers leave, and a share c of them buys; each customer then makes
    // m returning visits, so A = c (T - A m), A = c T / (1 + c m).
    let traffic_per_day = params.sessions_per_hour * 24.0;
    let c = pop.mean_conversion;
    let (visits, purchases) = pilot(pop, key);
    let per_day = c * traffic_per_day / (1.0 + c * visits);
    let wanted = per_day * spec.history_days;
    let customers = wanted.min(MAX_HISTORIC_WORK / purchases.max(1.0)).floor() as u64;
    let span = spec.history_days;
    let mut out = Vec::new();
    for id in 0..customers {
        let t = pop.lifecycle(key, id);
        let mut r = Mix::new(key, id, 3);
        // Acquired uniformly over the history (days before the start).
        let mut last = -span * (1.0 - (id as f64 + r.random::<f64>()) / customers as f64);
        let mut active = true;
        for _ in 0..MAX_PURCHASES {
            if r.random::<f64>() < t.dropout {
                active = false;
                break;
            }
            let e: f64 = Exp1.sample(&mut r);
            let next = if t.rate > 0.0 {
                last + e / t.rate
            } else {
                f64::INFINITY
            };
            if next >= 0.0 || next - last > spec.max_gap_days {
                break;
            }
            last = next;
        }
        // No purchase between the last one and the start (or the most a
        // customer is simulated for): still active, visiting, if the start
        // is within the gap allowed.
        if active && last + spec.max_gap_days >= 0.0 {
            let v = pop.visit_rate(&t);
            let first: f64 = Exp1.sample(&mut r);
            out.push((first / v * 24.0, id, (last * DAY_US as f64) as i64));
        }
    }
    out
}

/// Clamps a duration in days to microseconds that cannot overflow a time.
pub(crate) fn days_us(days: f64) -> i64 {
    let us = days * DAY_US as f64;
    if us.is_finite() {
        us.clamp(-(i64::MAX / 4) as f64, (i64::MAX / 4) as f64) as i64
    } else {
        i64::MAX / 4
    }
}

/// Draws an exponential gap in hours for `visits_per_day`.
pub(crate) fn gap_hours(rng: &mut impl Rng, visits_per_day: f64) -> f64 {
    if visits_per_day > 0.0 {
        let e: f64 = Exp1.sample(rng);
        e / visits_per_day * 24.0
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use chrono::{TimeZone, Timelike, Utc};

    #[test]
    fn the_calendar_pops_in_time_order_and_evicts_the_farthest() {
        let mut c = Calendar::default();
        let mut r = Mix::new(1, 2, 3);
        let mut all = Vec::new();
        for id in 0..5_000u64 {
            let at = (r.next_u64() % (400 * HOUR_US as u64)) as i64;
            all.push(Due { at, id, last: 0 });
            c.push(Due { at, id, last: 0 });
        }
        assert_eq!(c.len(), 5_000);
        all.sort();
        let far = c.evict_farthest().unwrap();
        assert!(far.at >= all[all.len() - 1].at - HOUR_US, "{far:?}");
        all.retain(|d| *d != far);
        let mut out = Vec::new();
        let mut now = 0;
        while out.len() < all.len() {
            now += HOUR_US / 3;
            while let Some(d) = c.pop_due(now) {
                assert!(d.at <= now);
                out.push(d);
                // Some come back within the hour (the late heap).
                if d.id % 7 == 0 && d.id < 1_000_000 {
                    let again = Due {
                        at: now + 60_000_000,
                        id: d.id + 1_000_000,
                        last: 0,
                    };
                    all.push(again);
                    all.sort();
                    c.push(again);
                }
            }
        }
        assert_eq!(out, all);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn traffic_time_follows_the_shop_rhythm() {
        let p = GeneratorParams::builtin();
        let pop = Population::new(&p).unwrap();
        let start = Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap();
        let t0 = start.timestamp_micros();
        // A customer who never visits is never due; no gap is no wait.
        assert_eq!(pop.after(t0, f64::INFINITY), i64::MAX / 4);
        assert_eq!(pop.after(t0, 0.0), t0);
        assert_eq!(pop.after(t0, f64::NAN), t0);
        // A week of traffic time is a week.
        assert_eq!(pop.after(t0, 168.0), t0 + 168 * HOUR_US);
        assert_eq!(pop.after(t0 + 5, 3.0 * 168.0), t0 + 5 + 3 * 168 * HOUR_US);
        // Monotonic, and busy hours get more of the visits.
        let mut by_hour = [0u32; 24];
        let mut r = Mix::new(9, 9, 9);
        let mut prev = t0;
        for _ in 0..100_000 {
            let g: f64 = Exp1.sample(&mut r);
            let t = pop.after(prev, g * 0.5);
            assert!(t >= prev);
            prev = t;
            let h = Utc.timestamp_micros(t).unwrap().hour() as usize;
            by_hour[h] += 1;
        }
        assert!(by_hour[20] > 3 * by_hour[3], "{by_hour:?}");
    }
}
