//! Customer statistics of a generated event stream: what `salespulse
//! generate --stats` prints and the lifecycle tests check.
//!
//! An *order* here is a checkout: the sales of one session together (a
//! session may place several order lines). Customers are those with at least
//! one order. "New" customers are those acquired during the run (their ids
//! carry the run's tag, `C<tag>-<n>`); the existing base (`C<n>`) never is.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::event::Event;

/// Weeks since the first order the cohort table follows.
pub const COHORT_WEEKS: usize = 13;
const DAY_US: i64 = 86_400_000_000;
const WEEK_US: i64 = 7 * DAY_US;

#[derive(Default)]
struct Customer {
    first: i64,
    last: i64,
    orders: u32,
    /// When the second order came (0: none yet).
    second: i64,
    last_session: u64,
    /// Weeks since the first order with an order, as bits.
    weeks: u64,
    new: bool,
}

/// Collects the statistics event by event (memory: one small record per
/// customer and one gap per repeat order).
#[derive(Default)]
pub struct CustomerStats {
    customers: HashMap<String, Customer>,
    visitors: HashSet<String>,
    gaps_days: Vec<f32>,
    /// Orders and orders that were a new customer's first, by UTC day.
    days: BTreeMap<i64, (u64, u64)>,
    sessions: u64,
    sales: u64,
    first: Option<i64>,
    last: Option<i64>,
}

fn hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// `q`-quantile (0..=1) of sorted values.
fn quantile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

impl CustomerStats {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one event into account (events of a session come together, as
    /// the generator makes them).
    pub fn observe(&mut self, e: &Event) {
        match e {
            Event::Session(s) => {
                self.sessions += 1;
                if !self.visitors.contains(&s.customer_id) {
                    self.visitors.insert(s.customer_id.clone());
                }
                let t = s.started_at.timestamp_micros();
                self.first = Some(self.first.map_or(t, |f| f.min(t)));
                self.last = Some(self.last.map_or(t, |l| l.max(t)));
            }
            Event::Sale(s) => {
                self.sales += 1;
                let t = s.occurred_at.timestamp_micros();
                let session = hash(&s.session_id);
                let new_id = s.customer_id.contains('-');
                let c = match self.customers.get_mut(&s.customer_id) {
                    Some(c) => c,
                    None => self
                        .customers
                        .entry(s.customer_id.clone())
                        .or_insert(Customer {
                            first: t,
                            last: t,
                            new: new_id,
                            ..Customer::default()
                        }),
                };
                if c.orders > 0 && c.last_session == session {
                    return; // another line of the same checkout
                }
                let first_order = c.orders == 0;
                if !first_order {
                    self.gaps_days
                        .push(((t - c.last) as f64 / DAY_US as f64) as f32);
                }
                c.orders += 1;
                if c.orders == 2 {
                    c.second = t;
                }
                c.last = t;
                c.last_session = session;
                let week = (t - c.first).div_euclid(WEEK_US);
                if (0..64).contains(&week) {
                    c.weeks |= 1 << week;
                }
                let day = self.days.entry(t.div_euclid(DAY_US)).or_insert((0, 0));
                day.0 += 1;
                if first_order && c.new {
                    day.1 += 1;
                }
            }
        }
    }

    /// The statistics so far.
    pub fn report(&self) -> StatsReport {
        let mut orders: Vec<u32> = self.customers.values().map(|c| c.orders).collect();
        orders.sort_unstable();
        let n = orders.len().max(1) as f64;
        let total: u64 = orders.iter().map(|&o| u64::from(o)).sum();
        let one = orders.iter().filter(|&&o| o == 1).count() as f64 / n;
        let mut gaps = self.gaps_days.clone();
        gaps.sort_unstable_by(f32::total_cmp);
        let end = self.last.unwrap_or(0);
        // Customers first seen at least 30 days before the end.
        let (mut seen30, mut back30) = (0u64, 0u64);
        for c in self.customers.values() {
            if end - c.first >= 30 * DAY_US {
                seen30 += 1;
                if c.orders > 1 && c.second - c.first <= 30 * DAY_US {
                    back30 += 1;
                }
            }
        }
        // New-customer share of daily orders, whole days only.
        let days: Vec<(i64, (u64, u64))> = self.days.iter().map(|(d, v)| (*d, *v)).collect();
        let inner: Vec<f64> = days
            .iter()
            .skip(1)
            .take(days.len().saturating_sub(2))
            .filter(|(_, (o, _))| *o > 0)
            .map(|(_, (o, n))| *n as f64 / *o as f64)
            .collect();
        let mut daily = inner.clone();
        daily.sort_unstable_by(f64::total_cmp);
        let mean_new = if inner.is_empty() {
            0.0
        } else {
            inner.iter().sum::<f64>() / inner.len() as f64
        };
        // Weekly cohorts of new customers × weeks since their first order:
        // the share of the cohort ordering in that week.
        let start = self.first.unwrap_or(0);
        let mut cohorts: BTreeMap<i64, (u64, [u64; COHORT_WEEKS])> = BTreeMap::new();
        for c in self.customers.values().filter(|c| c.new) {
            let w = (c.first - start).div_euclid(WEEK_US);
            let e = cohorts.entry(w).or_insert((0, [0; COHORT_WEEKS]));
            e.0 += 1;
            for (k, slot) in e.1.iter_mut().enumerate() {
                if c.weeks & (1 << k) != 0 {
                    *slot += 1;
                }
            }
        }
        let weeks_seen = (end - start).div_euclid(WEEK_US);
        let cohorts = cohorts
            .into_iter()
            .map(|(w, (size, k))| Cohort {
                week: w,
                customers: size,
                // Only weeks that ended within the data.
                retention: k
                    .iter()
                    .enumerate()
                    // A first order late in week w: its week i ends by the
                    // end of week w + i + 1.
                    .take_while(|(i, _)| w + (*i as i64) + 1 < weeks_seen)
                    .map(|(_, x)| *x as f64 / size.max(1) as f64)
                    .collect(),
            })
            .collect();
        StatsReport {
            from: DateTime::from_timestamp_micros(start).unwrap_or_default(),
            to: DateTime::from_timestamp_micros(end).unwrap_or_default(),
            sessions: self.sessions,
            order_lines: self.sales,
            orders: total,
            visitors: self.visitors.len() as u64,
            customers: orders.len() as u64,
            new_customers: self.customers.values().filter(|c| c.new).count() as u64,
            one_order_share: one,
            repeat_rate: 1.0 - one,
            back_within_30_days: if seen30 > 0 {
                back30 as f64 / seen30 as f64
            } else {
                0.0
            },
            orders_per_customer: Spread {
                mean: total as f64 / n,
                p50: f64::from(quantile(&orders, 0.5)),
                p99: f64::from(quantile(&orders, 0.99)),
                max: f64::from(orders.last().copied().unwrap_or(0)),
            },
            days_between_orders: Spread {
                mean: if gaps.is_empty() {
                    0.0
                } else {
                    gaps.iter().map(|&g| f64::from(g)).sum::<f64>() / gaps.len() as f64
                },
                p50: f64::from(quantile(&gaps, 0.5)),
                p99: f64::from(quantile(&gaps, 0.99)),
                max: f64::from(gaps.last().copied().unwrap_or(0.0)),
            },
            days_between_orders_p10: f64::from(quantile(&gaps, 0.1)),
            days_between_orders_p90: f64::from(quantile(&gaps, 0.9)),
            new_customer_share_of_daily_orders: Spread {
                mean: mean_new,
                p50: quantile(&daily, 0.5),
                p99: quantile(&daily, 0.99),
                max: daily.last().copied().unwrap_or(0.0),
            },
            new_customer_share_min: daily.first().copied().unwrap_or(0.0),
            cohorts,
            lifecycle: None,
        }
    }
}

/// Mean, median, 99th percentile and maximum of a distribution.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// A weekly cohort of new customers.
#[derive(Clone, Debug, Serialize)]
pub struct Cohort {
    /// Week of the first order, counted from the start of the data.
    pub week: i64,
    /// Customers whose first order fell in it.
    pub customers: u64,
    /// Share of them ordering in week k after their first order (k = 0
    /// first; only weeks that ended within the data).
    pub retention: Vec<f64>,
}

/// Customer statistics of a stream (see the module docs for what counts).
#[derive(Clone, Debug, Serialize)]
pub struct StatsReport {
    /// First session start.
    pub from: DateTime<Utc>,
    /// Last session start.
    pub to: DateTime<Utc>,
    /// Sessions.
    pub sessions: u64,
    /// Sale events (order lines).
    pub order_lines: u64,
    /// Orders (checkouts: one session's sales).
    pub orders: u64,
    /// Distinct visitors (ids in sessions).
    pub visitors: u64,
    /// Customers: visitors with at least one order.
    pub customers: u64,
    /// Of them, acquired during the run.
    pub new_customers: u64,
    /// Share of customers with exactly one order.
    pub one_order_share: f64,
    /// Share of customers with two or more orders in the data.
    pub repeat_rate: f64,
    /// Of customers first seen at least 30 days before the end, the share
    /// who ordered again within 30 days.
    pub back_within_30_days: f64,
    /// Orders per customer.
    pub orders_per_customer: Spread,
    /// Days between a customer's consecutive orders.
    pub days_between_orders: Spread,
    /// 10th percentile of those days.
    pub days_between_orders_p10: f64,
    /// 90th percentile of those days.
    pub days_between_orders_p90: f64,
    /// Share of a day's orders that were a new customer's first, over whole
    /// days.
    pub new_customer_share_of_daily_orders: Spread,
    /// The smallest day's share.
    pub new_customer_share_min: f64,
    /// Weekly cohorts × weeks since first order.
    pub cohorts: Vec<Cohort>,
    /// What the generator's lifecycle did (when the stream came from one).
    pub lifecycle: Option<super::LifecycleCounts>,
}

impl std::fmt::Display for StatsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |x: f64| format!("{:.1} %", x * 100.0);
        writeln!(
            f,
            "{} to {}: {} sessions, {} orders ({} order lines)",
            self.from.format("%Y-%m-%d %H:%M"),
            self.to.format("%Y-%m-%d %H:%M"),
            self.sessions,
            self.orders,
            self.order_lines
        )?;
        writeln!(
            f,
            "visitors {}, customers {} ({} new in the run, {} existing)",
            self.visitors,
            self.customers,
            self.new_customers,
            self.customers - self.new_customers
        )?;
        writeln!(
            f,
            "one order {}, repeat {}, back within 30 days {}",
            pct(self.one_order_share),
            pct(self.repeat_rate),
            pct(self.back_within_30_days)
        )?;
        let o = &self.orders_per_customer;
        writeln!(
            f,
            "orders per customer: mean {:.2}, p50 {}, p99 {}, max {}",
            o.mean, o.p50, o.p99, o.max
        )?;
        let g = &self.days_between_orders;
        writeln!(
            f,
            "days between orders: p10 {:.1}, p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}",
            self.days_between_orders_p10, g.p50, self.days_between_orders_p90, g.p99, g.max
        )?;
        let n = &self.new_customer_share_of_daily_orders;
        writeln!(
            f,
            "new-customer share of daily orders: mean {}, min {}, max {}",
            pct(n.mean),
            pct(self.new_customer_share_min),
            pct(n.max)
        )?;
        if let Some(l) = &self.lifecycle {
            writeln!(
                f,
                "lifecycle: {} existing customers at the start, {} new visitors, {} acquired, \
                 {} returning visits, {} left after a purchase, {} lapsed, {} let go for memory, \
                 {} kept in memory now",
                l.existing,
                l.new_visitors,
                l.acquired,
                l.returning_visits,
                l.dropped,
                l.lapsed,
                l.evicted,
                l.tracked
            )?;
        }
        writeln!(
            f,
            "weekly cohorts of new customers, share ordering in week k after the first order:"
        )?;
        write!(f, "{:>6} {:>9}", "week", "customers")?;
        for k in 0..COHORT_WEEKS {
            write!(f, " {:>6}", format!("k={k}"))?;
        }
        writeln!(f)?;
        for c in &self.cohorts {
            write!(f, "{:>6} {:>9}", c.week, c.customers)?;
            for r in &c.retention {
                write!(f, " {:>6}", format!("{:.1}%", r * 100.0))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
