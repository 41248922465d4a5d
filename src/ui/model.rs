//! What the UI draws, prepared off the UI thread from the analytics frames:
//! plain vectors and strings, so a frame only paints.

use std::collections::VecDeque;
use std::time::Duration;

use polars::prelude::{DataFrame, DataType};

use crate::analytics::metrics::{MetricInfo, MetricKind};
use crate::analytics::{Granularity, Span, ViewKind, ViewResult};
use crate::cache::Outcome;

/// A column of a frame as floats (nulls as `None`).
fn floats(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>, String> {
    let c = df
        .column(name)
        .map_err(|e| format!("column {name}: {e}"))?
        .cast(&DataType::Float64)
        .map_err(|e| format!("column {name}: {e}"))?;
    let ca = c.f64().map_err(|e| format!("column {name}: {e}"))?;
    Ok(ca.iter().collect())
}

fn texts(df: &DataFrame, name: &str) -> Result<Vec<String>, String> {
    let c = df
        .column(name)
        .map_err(|e| format!("column {name}: {e}"))?
        .cast(&DataType::String)
        .map_err(|e| format!("column {name}: {e}"))?;
    let ca = c.str().map_err(|e| format!("column {name}: {e}"))?;
    Ok(ca.iter().map(|s| s.unwrap_or("").to_owned()).collect())
}

/// The KPI tiles of one period.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Kpis {
    /// Revenue of completed sales.
    pub revenue: f64,
    /// Orders of any status (revenue counts completed ones only).
    pub orders: f64,
    /// Revenue per order (`None` without orders).
    pub avg_order_value: Option<f64>,
    /// Orders per session (`None` without sessions).
    pub conversion_rate: Option<f64>,
    /// Refunded share of orders (`None` without orders).
    pub refund_rate: Option<f64>,
    /// Distinct customers who ordered.
    pub customers: f64,
}

/// One labelled part of a whole (a bar, a slice of a donut).
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    /// What the part is (a category, a payment method, …).
    pub label: String,
    /// Its revenue.
    pub value: f64,
    /// Its orders.
    pub orders: f64,
    /// Share of the whole, 0..=1.
    pub share: f64,
}

/// A table of formatted cells, with sort keys for numeric columns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableData {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Row-major formatted cells.
    pub rows: Vec<Vec<String>>,
    /// Per column: the numeric value of each row, when the column is numeric.
    pub numeric: Vec<Option<Vec<f64>>>,
}

impl TableData {
    /// Formats every cell of `df` (money and rates with two decimals,
    /// timestamps as UTC).
    pub(crate) fn from_frame(df: &DataFrame) -> Result<Self, String> {
        let height = df.height();
        let mut columns = Vec::with_capacity(df.width());
        let mut cells: Vec<Vec<String>> = Vec::with_capacity(df.width());
        let mut numeric = Vec::with_capacity(df.width());
        for col in df.columns() {
            let name = col.name().to_string();
            let dtype = col.dtype().clone();
            let (formatted, keys) = match dtype {
                DataType::Float64 | DataType::Float32 => {
                    let v = floats(df, &name)?;
                    let f = v
                        .iter()
                        .map(|x| x.map(|x| format!("{x:.2}")).unwrap_or_default())
                        .collect();
                    (f, Some(v.iter().map(|x| x.unwrap_or(f64::NAN)).collect()))
                }
                d if d.is_integer() => {
                    let v = floats(df, &name)?;
                    let f = v
                        .iter()
                        .map(|x| x.map(|x| format!("{x:.0}")).unwrap_or_default())
                        .collect();
                    (f, Some(v.iter().map(|x| x.unwrap_or(f64::NAN)).collect()))
                }
                DataType::Datetime(_, _) => {
                    let us = col
                        .cast(&DataType::Int64)
                        .map_err(|e| format!("column {name}: {e}"))?;
                    let ca = us.i64().map_err(|e| format!("column {name}: {e}"))?;
                    let mut f = Vec::with_capacity(height);
                    let mut k = Vec::with_capacity(height);
                    for v in ca.iter() {
                        let t = v.and_then(chrono::DateTime::from_timestamp_micros);
                        f.push(
                            t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                                .unwrap_or_default(),
                        );
                        k.push(v.map_or(f64::NAN, |v| v as f64));
                    }
                    (f, Some(k))
                }
                _ => (texts(df, &name)?, None),
            };
            columns.push(name);
            cells.push(formatted);
            numeric.push(keys);
        }
        let rows = (0..height)
            .map(|r| {
                cells
                    .iter()
                    .map(|c| c.get(r).cloned().unwrap_or_default())
                    .collect()
            })
            .collect();
        Ok(Self {
            columns,
            rows,
            numeric,
        })
    }

    /// Row order for sorting by column `col` (numbers numerically, text
    /// lexically; ties keep their order).
    pub(crate) fn sorted_order(&self, col: usize, descending: bool) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        match self.numeric.get(col).and_then(|k| k.as_ref()) {
            Some(keys) => order.sort_by(|&a, &b| {
                let key = |i: usize| keys.get(i).copied().unwrap_or(f64::NAN);
                let o = key(a).total_cmp(&key(b));
                if descending {
                    o.reverse()
                } else {
                    o
                }
            }),
            None => order.sort_by(|&a, &b| {
                let cell = |i: usize| self.rows.get(i).and_then(|r| r.get(col));
                let o = cell(a).cmp(&cell(b));
                if descending {
                    o.reverse()
                } else {
                    o
                }
            }),
        }
        order
    }
}

/// Everything the dashboard shows, from one refresh.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dashboard {
    /// KPIs of the period filtered.
    pub current: Kpis,
    /// KPIs of the period before it, of the same length, for the deltas.
    pub previous: Option<Kpis>,
    /// `[unix seconds, revenue]` per bucket.
    pub trend_revenue: Vec<[f64; 2]>,
    /// `[unix seconds, orders]` per bucket.
    pub trend_orders: Vec<[f64; 2]>,
    /// Bucket size of the trends (`None` without data).
    pub granularity: Option<Granularity>,
    /// Where revenue is heading after the range shown, and the buckets of
    /// the range it did not expect (`None`: too few buckets to tell).
    pub trend_forecast: Option<TrendForecast>,
    /// Revenue by category.
    pub categories: Vec<Part>,
    /// Revenue by payment method.
    pub payments: Vec<Part>,
    /// Orders by status.
    pub statuses: Vec<Part>,
    /// Best-selling products.
    pub top_products: TableData,
    /// Customers who spent most.
    pub top_customers: TableData,
    /// First and last event time in the data.
    pub span: Option<Span>,
    /// Wall time of the whole refresh.
    pub elapsed: Duration,
    /// Views answered from the cache, of all views.
    pub cached: usize,
    /// Views computed, of all kinds.
    pub views: usize,
    /// The custom metrics (scripts), in file order.
    pub metrics: Vec<MetricPanel>,
    /// When the refresh began: every transaction committed before then is
    /// in these figures.
    pub as_of: Option<chrono::DateTime<chrono::Utc>>,
}

/// How a custom metric's value is drawn.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricView {
    /// One number, with the previous period's for the delta.
    Kpi {
        /// The value (`None`: no data).
        value: Option<f64>,
        /// The previous period's value, when the metric has one.
        previous: Option<f64>,
    },
    /// Lines: `[x, y]` points per named series; x is unix seconds when
    /// `x_time`.
    Line {
        /// The x column's name.
        x_name: String,
        /// Whether x is a time (drawn as dates).
        x_time: bool,
        /// Series name and its points.
        series: Vec<(String, Vec<[f64; 2]>)>,
    },
    /// Bars, one per labelled part.
    Bar(Vec<Part>),
    /// A table.
    Table(TableData),
}

/// A custom metric on the dashboard: what it is, and its value or why there
/// is none (`None`: not computed yet).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricPanel {
    /// The metric's name, kind and script.
    pub info: MetricInfo,
    /// Its value drawn, or why not (`None`: not computed yet).
    pub view: Option<Result<MetricView, String>>,
}

impl MetricView {
    /// Prepares `df` (shaped by its metric's kind) for drawing.
    pub(crate) fn from_frame(
        kind: MetricKind,
        df: &DataFrame,
        previous: Option<f64>,
    ) -> Result<Self, String> {
        let cols = df.columns();
        match kind {
            MetricKind::Kpi => Ok(MetricView::Kpi {
                value: cols
                    .first()
                    .map(|c| floats(df, c.name().as_str()))
                    .transpose()?
                    .and_then(|v| v.first().copied().flatten()),
                previous,
            }),
            MetricKind::Line => {
                let (x_name, x_time, xs, ys) = match cols {
                    [] => return Err("a line metric needs at least one column".to_owned()),
                    [_] => {
                        let xs = (0..df.height()).map(|i| Some(i as f64)).collect::<Vec<_>>();
                        ("row".to_owned(), false, xs, cols)
                    }
                    [x, ys @ ..] => {
                        let time = matches!(x.dtype(), DataType::Datetime(_, _));
                        let mut xs = floats(df, x.name().as_str())?;
                        if time {
                            // Microseconds → seconds (the time axis).
                            for v in xs.iter_mut().flatten() {
                                *v /= 1e6;
                            }
                        }
                        (x.name().to_string(), time, xs, ys)
                    }
                };
                let series = ys
                    .iter()
                    .map(|c| {
                        let y = floats(df, c.name().as_str())?;
                        Ok((
                            c.name().to_string(),
                            xs.iter()
                                .zip(&y)
                                .filter_map(|(x, y)| Some([(*x)?, (*y)?]))
                                .collect(),
                        ))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(MetricView::Line {
                    x_name,
                    x_time,
                    series,
                })
            }
            MetricKind::Bar => {
                let (labels, values) = match cols {
                    [] => return Err("a bar metric needs at least one column".to_owned()),
                    [only] => (
                        (1..=df.height()).map(|i| i.to_string()).collect(),
                        floats(df, only.name().as_str())?,
                    ),
                    [label, value, ..] => (
                        texts(df, label.name().as_str())?,
                        floats(df, value.name().as_str())?,
                    ),
                };
                let total: f64 = values.iter().flatten().sum();
                Ok(MetricView::Bar(
                    labels
                        .into_iter()
                        .zip(values)
                        .map(|(label, v)| {
                            let value = v.unwrap_or(0.0);
                            Part {
                                label,
                                value,
                                orders: 0.0,
                                share: if total > 0.0 { value / total } else { 0.0 },
                            }
                        })
                        .collect(),
                ))
            }
            MetricKind::Table => TableData::from_frame(df).map(MetricView::Table),
        }
    }
}

/// The views of a dashboard refresh.
pub(crate) const DASHBOARD_VIEWS: [ViewKind; 7] = [
    ViewKind::Kpis,
    ViewKind::RevenueTrend,
    ViewKind::CategoryPerformance,
    ViewKind::PaymentMix,
    ViewKind::StatusBreakdown,
    ViewKind::TopProducts,
    ViewKind::TopCustomers,
];

fn kpis_row(df: &DataFrame, row: usize) -> Result<Option<Kpis>, String> {
    let get = |name: &str| -> Result<Option<f64>, String> {
        Ok(floats(df, name)?.get(row).copied().flatten())
    };
    // A previous period of "all data" is all nulls.
    let Some(revenue) = get("revenue")? else {
        return Ok(None);
    };
    Ok(Some(Kpis {
        revenue,
        orders: get("orders")?.unwrap_or(0.0),
        avg_order_value: get("avg_order_value")?,
        conversion_rate: get("conversion_rate")?,
        refund_rate: get("refund_rate")?,
        customers: get("customers")?.unwrap_or(0.0),
    }))
}

/// The `i`th value of a column, 0 when null or missing.
fn nth(column: &[Option<f64>], i: usize) -> f64 {
    column.get(i).copied().flatten().unwrap_or(0.0)
}

fn parts(df: &DataFrame, label: &str, value: &str, share: &str) -> Result<Vec<Part>, String> {
    let labels = texts(df, label)?;
    let values = floats(df, value)?;
    let orders = floats(df, "orders")?;
    let shares = floats(df, share)?;
    Ok(labels
        .into_iter()
        .enumerate()
        .map(|(i, label)| Part {
            label,
            value: nth(&values, i),
            orders: nth(&orders, i),
            share: nth(&shares, i),
        })
        .collect())
}

fn series(df: &DataFrame, y: &str) -> Result<Vec<[f64; 2]>, String> {
    let x = floats(df, "bucket")?;
    let y = floats(df, y)?;
    Ok(x.iter()
        .zip(&y)
        .filter_map(|(x, y)| Some([(*x)? / 1e6, y.unwrap_or(0.0)]))
        .collect())
}

/// The revenue trend's forecast: a few buckets past the last complete one,
/// with its 80 % and 95 % bands, and the recent buckets outside the 99 %
/// band forecast from the buckets before them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrendForecast {
    /// `[unix seconds, revenue]` per bucket ahead.
    pub point: Vec<[f64; 2]>,
    /// The 80 % band: `[unix seconds, low, high]`.
    pub band80: Vec<[f64; 3]>,
    /// The 95 % band.
    pub band95: Vec<[f64; 3]>,
    /// Buckets outside the band expected of them: `[unix seconds, revenue]`.
    pub anomalies: Vec<[f64; 2]>,
    /// The model, e.g. "MSTL(24) + AutoETS".
    pub model: String,
}

/// The forecast of a revenue trend of buckets of `step` seconds, made from
/// its buckets that were complete at `now` (the one still filling is left
/// out). `None` with fewer than 12 complete buckets.
pub fn trend_forecast(trend: &[[f64; 2]], step: i64, now: f64) -> Option<TrendForecast> {
    use crate::script::forecast::{self, Spec, Transform};
    let complete: Vec<[f64; 2]> = trend
        .iter()
        .copied()
        .filter(|[t, _]| t + step as f64 <= now)
        .collect();
    let n = complete.len();
    if n < 12 || step <= 0 {
        return None;
    }
    let y: Vec<f64> = complete.iter().map(|p| p[1]).collect();
    let spec = Spec {
        periods: forecast::periods_for_step(step),
        transform: Transform::Auto,
        calibrate: true,
    };
    let horizon = (n / 4).clamp(3, 48);
    let p = forecast::forecast(&y, horizon, &[0.80, 0.95], &spec).ok()?;
    let last = complete.last()?[0];
    let at = |k: usize| last + step as f64 * (k + 1) as f64;
    let band = |i: usize| -> Vec<[f64; 3]> {
        p.bands.get(i).map_or_else(Vec::new, |b| {
            b.lower
                .iter()
                .zip(&b.upper)
                .enumerate()
                .map(|(k, (l, u))| [at(k), l.max(0.0), u.max(0.0)])
                .collect()
        })
    };
    // The last quarter of the range, each checked against the forecast
    // from the buckets before it.
    let checked = (n / 4).clamp(1, 48);
    let anomalies = forecast::anomalies(&y, n - checked, 0.99, &spec)
        .map(|scan| {
            scan.side
                .iter()
                .enumerate()
                .filter(|(_, s)| **s != 0)
                .filter_map(|(k, _)| complete.get(n - checked + k).copied())
                .collect()
        })
        .unwrap_or_default();
    Some(TrendForecast {
        point: p
            .point
            .iter()
            .enumerate()
            .map(|(k, v)| [at(k), v.max(0.0)])
            .collect(),
        band80: band(0),
        band95: band(1),
        anomalies,
        model: p.model,
    })
}

impl Dashboard {
    /// Whether `other` shows the same numbers (how long the refresh took and
    /// how much came from the cache aside).
    pub(crate) fn same_content(&self, other: &Dashboard) -> bool {
        let strip = |d: &Dashboard| Dashboard {
            elapsed: Duration::ZERO,
            cached: 0,
            as_of: None,
            ..d.clone()
        };
        strip(self) == strip(other)
    }

    /// Builds the dashboard from the results of [`DASHBOARD_VIEWS`].
    pub(crate) fn from_results(results: &[ViewResult], elapsed: Duration) -> Result<Self, String> {
        let mut d = Dashboard {
            elapsed,
            views: results.len(),
            cached: results
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::Hit | Outcome::Joined))
                .count(),
            ..Dashboard::default()
        };
        for r in results {
            let df = &r.frame;
            match r.view {
                ViewKind::Kpis => {
                    d.span = r.span;
                    d.current = kpis_row(df, 0)?.unwrap_or_default();
                    d.previous = kpis_row(df, 1)?;
                }
                ViewKind::RevenueTrend => {
                    d.granularity = r.granularity;
                    d.trend_revenue = series(df, "revenue")?;
                    d.trend_orders = series(df, "orders")?;
                }
                ViewKind::CategoryPerformance => {
                    d.categories = parts(df, "category", "revenue", "revenue_share")?;
                }
                ViewKind::PaymentMix => {
                    d.payments = parts(df, "payment_method", "orders", "order_share")?;
                }
                ViewKind::StatusBreakdown => {
                    d.statuses = parts(df, "status", "orders", "order_share")?;
                }
                ViewKind::TopProducts => d.top_products = TableData::from_frame(df)?,
                ViewKind::TopCustomers => d.top_customers = TableData::from_frame(df)?,
                _ => {}
            }
        }
        Ok(d)
    }
}

/// One sample of the pipeline's counters, for rates and sparklines.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Seconds since the app started.
    pub t: f64,
    /// Events acknowledged by the broker so far.
    pub produced: u64,
    /// Rows ingested so far.
    pub ingested: u64,
    /// Records dead-lettered so far.
    pub dead_lettered: u64,
}

/// Rates over the last few minutes, from counter samples.
#[derive(Clone, Debug, Default)]
pub struct RateHistory {
    samples: VecDeque<Sample>,
}

/// Samples kept: 5 minutes at one per second.
pub(crate) const HISTORY_SAMPLES: usize = 300;

impl RateHistory {
    /// Adds a sample; one not newer than the last is ignored.
    pub fn push(&mut self, s: Sample) {
        if self.samples.back().is_some_and(|b| s.t <= b.t) {
            return;
        }
        self.samples.push_back(s);
        while self.samples.len() > HISTORY_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// `[t, per second]` points of one counter.
    pub(crate) fn rates(&self, get: impl Fn(&Sample) -> u64) -> Vec<[f64; 2]> {
        self.samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .map(|(a, b)| {
                let dt = (b.t - a.t).max(1e-6);
                [b.t, get(b).saturating_sub(get(a)) as f64 / dt]
            })
            .collect()
    }

    #[cfg(test)]
    /// The latest rate of one counter, averaged over up to `window` seconds.
    pub(crate) fn latest_rate(&self, window: f64, get: impl Fn(&Sample) -> u64) -> Option<f64> {
        let last = self.samples.back()?;
        let first = self
            .samples
            .iter()
            .find(|s| last.t - s.t <= window)
            .filter(|s| s.t < last.t)?;
        Some(get(last).saturating_sub(get(first)) as f64 / (last.t - first.t))
    }
}

/// Formats money with thousands separators.
pub fn money(v: f64) -> String {
    let neg = v < 0.0;
    let cents = (v.abs() * 100.0).round() as u128;
    let (whole, frac) = (cents / 100, cents % 100);
    format!(
        "{}${}.{frac:02}",
        if neg { "-" } else { "" },
        thousands(whole)
    )
}

/// Money short enough for a tile or an axis: `$1.24B` from 100,000 up
/// ([`crate::analytics::metrics::compact`]), else [`money`].
pub fn money_compact(v: f64) -> String {
    match crate::analytics::metrics::compact(v) {
        Some(c) => match c.strip_prefix('-') {
            Some(abs) => format!("-${abs}"),
            None => format!("${c}"),
        },
        None => money(v),
    }
}

/// A count short enough for a tile: `12.3M` from 100,000 up, else [`count`].
pub fn count_compact(v: f64) -> String {
    crate::analytics::metrics::compact(v).unwrap_or_else(|| count(v))
}

/// An integer with thousands separators.
pub fn count(v: f64) -> String {
    let s = thousands(v.abs().round() as u128);
    if v < 0.0 {
        format!("-{s}")
    } else {
        s
    }
}

fn thousands(n: u128) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A share (0..=1) as a percentage with one decimal.
pub(crate) fn percent(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// Relative change of `now` against `before`, when `before` is not zero.
pub(crate) fn delta(now: f64, before: f64) -> Option<f64> {
    (before.abs() > f64::EPSILON).then(|| (now - before) / before.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_for_people() {
        assert_eq!(money(1234567.891), "$1,234,567.89");
        assert_eq!(money(-5.0), "-$5.00");
        assert_eq!(money(0.0), "$0.00");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(1000.0), "1,000");
        assert_eq!(count(-12345.0), "-12,345");
        assert_eq!(percent(0.1234), "12.3%");
        assert_eq!(delta(110.0, 100.0), Some(0.1));
        assert_eq!(delta(5.0, 0.0), None);
    }

    #[test]
    fn rates_come_from_counter_differences() {
        let mut h = RateHistory::default();
        for i in 0..5u64 {
            h.push(Sample {
                t: i as f64,
                produced: i * 100,
                ingested: i * 50,
                dead_lettered: 0,
            });
        }
        // Out-of-order samples are ignored.
        h.push(Sample {
            t: 1.0,
            produced: 0,
            ingested: 0,
            dead_lettered: 0,
        });
        let r = h.rates(|s| s.produced);
        assert_eq!(r.len(), 4);
        assert!(r.iter().all(|p| (p[1] - 100.0).abs() < 1e-9));
        assert_eq!(h.latest_rate(2.0, |s| s.ingested), Some(50.0));
    }

    #[test]
    fn tables_sort_numbers_numerically() {
        let df = polars::df! {
            "name" => ["b", "a", "c"],
            "n" => [10i64, 9, 100],
        }
        .unwrap();
        let t = TableData::from_frame(&df).unwrap();
        assert_eq!(t.rows[0], vec!["b".to_string(), "10".to_string()]);
        assert_eq!(t.sorted_order(1, false), vec![1, 0, 2]);
        assert_eq!(t.sorted_order(1, true), vec![2, 0, 1]);
        assert_eq!(t.sorted_order(0, false), vec![1, 0, 2]);
    }

    #[test]
    fn a_line_metric_without_columns_is_an_error() {
        let empty = DataFrame::empty();
        let e = MetricView::from_frame(MetricKind::Line, &empty, None).unwrap_err();
        assert!(e.contains("at least one column"), "{e}");
        let one = polars::df! { "y" => [1.0f64, 2.0] }.unwrap();
        assert!(MetricView::from_frame(MetricKind::Line, &one, None).is_ok());
    }
}
