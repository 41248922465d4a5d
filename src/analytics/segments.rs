//! Customer segments: RFM segments ([`crate::script::rfm`]) as of a time
//! and as of a period earlier, each segment's size and revenue, and how
//! customers moved between segments over the period.
//!
//! One statement reads every customer's completed orders up to the time
//! (last order, orders, spend) and the same up to the period's start; the
//! scores and segments are computed here, as `rfm()` in scripts computes
//! them.

use chrono::{DateTime, Utc};
use polars::prelude::*;
use sqlx::PgPool;

use super::AnalyticsError;
use crate::script::rfm::{self, SEGMENTS};

/// Segments now and a period before.
#[derive(Clone, Debug)]
pub struct SegmentReport {
    /// The time the segments are as of.
    pub as_of: DateTime<Utc>,
    /// The start of the period: the earlier segments are as of then.
    pub previous: DateTime<Utc>,
    /// One row per segment, best first: `segment`, `customers`,
    /// `customer_share`, `revenue`, `revenue_share`, `avg_recency_days`,
    /// `avg_orders`, `before` (customers in it at the period's start),
    /// `stayed`, `moved_in`, `new` (no order before the period),
    /// `moved_out`.
    pub summary: DataFrame,
    /// One row per customer: the columns of `rfm()` and
    /// `previous_segment` (empty for a customer new in the period).
    pub customers: DataFrame,
}

fn pe(e: PolarsError) -> AnalyticsError {
    AnalyticsError::BadRequest(e.to_string())
}

type Row = (String, i64, i64, f64, Option<i64>, i64, f64);

/// The segments as of `as_of`, and as of `as_of − period`.
pub async fn segments(
    pool: &PgPool,
    as_of: DateTime<Utc>,
    period: chrono::Duration,
) -> Result<SegmentReport, AnalyticsError> {
    let previous = as_of - period;
    let rows: Vec<Row> = sqlx::query_as(
        r#"SELECT customer_id,
                  (extract(epoch FROM max(occurred_at)) * 1000000)::int8,
                  count(*)::int8,
                  sum(total_amount)::float8,
                  (extract(epoch FROM max(occurred_at) FILTER (WHERE occurred_at < $2)) * 1000000)::int8,
                  (count(*) FILTER (WHERE occurred_at < $2))::int8,
                  coalesce(sum(total_amount) FILTER (WHERE occurred_at < $2), 0)::float8
           FROM transactions
           WHERE status = 'completed' AND occurred_at < $1
           GROUP BY customer_id
           ORDER BY customer_id COLLATE "C""#,
    )
    .bind(as_of)
    .bind(previous)
    .fetch_all(pool)
    .await
    .map_err(|e| AnalyticsError::BadRequest(format!("segments: {e}")))?;
    tokio::task::spawn_blocking(move || report(rows, as_of, previous))
        .await
        .map_err(|e| AnalyticsError::BadRequest(format!("segments: {e}")))?
}

fn strings(df: &DataFrame, c: &str) -> Result<Vec<String>, AnalyticsError> {
    rfm::strings(df, c).map_err(AnalyticsError::BadRequest)
}

fn report(
    rows: Vec<Row>,
    as_of: DateTime<Utc>,
    previous: DateTime<Utc>,
) -> Result<SegmentReport, AnalyticsError> {
    let mut ids = Vec::with_capacity(rows.len());
    let (mut last, mut freq, mut money) = (Vec::new(), Vec::new(), Vec::new());
    let (mut p_ids, mut p_last, mut p_freq, mut p_money) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, l, f, m, pl, pf, pm) in rows {
        if let (Some(pl), true) = (pl, pf > 0) {
            p_ids.push(id.clone());
            p_last.push(pl);
            p_freq.push(pf);
            p_money.push(pm);
        }
        ids.push(id);
        last.push(l);
        freq.push(f);
        money.push(m);
    }
    let now = rfm::from_aggregates(ids, last, freq, money, Some(as_of.timestamp_micros()))
        .map_err(AnalyticsError::BadRequest)?;
    let before = rfm::from_aggregates(
        p_ids,
        p_last,
        p_freq,
        p_money,
        Some(previous.timestamp_micros()),
    )
    .map_err(AnalyticsError::BadRequest)?;
    let was: std::collections::HashMap<String, String> = strings(&before, "customer_id")?
        .into_iter()
        .zip(strings(&before, "segment")?)
        .collect();
    let ids = strings(&now, "customer_id")?;
    let seg_now = strings(&now, "segment")?;
    let prev_seg: Vec<String> = ids
        .iter()
        .map(|id| was.get(id).cloned().unwrap_or_default())
        .collect();
    let money = rfm::float64s(&now, "monetary", 0.0).map_err(AnalyticsError::BadRequest)?;
    let recency = rfm::float64s(&now, "recency_days", 0.0).map_err(AnalyticsError::BadRequest)?;
    let orders = rfm::int64s(&now, "frequency", 0).map_err(AnalyticsError::BadRequest)?;
    let total_customers = ids.len().max(1) as f64;
    let total_revenue = money.iter().sum::<f64>();
    let mut s = Summary::default();
    for name in SEGMENTS {
        let mut row = SegmentRow::default();
        for (i, seg) in seg_now.iter().enumerate() {
            if seg != name {
                continue;
            }
            row.customers += 1;
            row.revenue += money.get(i).copied().unwrap_or(0.0);
            row.recency += recency.get(i).copied().unwrap_or(0.0);
            row.orders += orders.get(i).copied().unwrap_or(0);
            match prev_seg.get(i).map(String::as_str) {
                Some("") | None => row.new += 1,
                Some(p) if p == name => row.stayed += 1,
                Some(_) => row.moved_in += 1,
            }
        }
        row.before = was.values().filter(|v| *v == name).count() as i64;
        row.moved_out = row.before - row.stayed;
        s.push(name, &row, total_customers, total_revenue);
    }
    let mut customers = now;
    customers
        .with_column(Column::new("previous_segment".into(), prev_seg))
        .map_err(pe)?;
    Ok(SegmentReport {
        as_of,
        previous,
        summary: s.frame()?,
        customers,
    })
}

#[derive(Default)]
struct SegmentRow {
    customers: i64,
    revenue: f64,
    recency: f64,
    orders: i64,
    before: i64,
    stayed: i64,
    moved_in: i64,
    new: i64,
    moved_out: i64,
}

#[derive(Default)]
struct Summary {
    segment: Vec<&'static str>,
    customers: Vec<i64>,
    customer_share: Vec<f64>,
    revenue: Vec<f64>,
    revenue_share: Vec<f64>,
    avg_recency_days: Vec<Option<f64>>,
    avg_orders: Vec<Option<f64>>,
    before: Vec<i64>,
    stayed: Vec<i64>,
    moved_in: Vec<i64>,
    new: Vec<i64>,
    moved_out: Vec<i64>,
}

impl Summary {
    fn push(&mut self, name: &'static str, r: &SegmentRow, customers: f64, revenue: f64) {
        let n = r.customers as f64;
        self.segment.push(name);
        self.customers.push(r.customers);
        self.customer_share.push(n / customers);
        self.revenue.push(r.revenue);
        self.revenue_share.push(if revenue > 0.0 {
            r.revenue / revenue
        } else {
            0.0
        });
        self.avg_recency_days
            .push((r.customers > 0).then(|| r.recency / n));
        self.avg_orders
            .push((r.customers > 0).then(|| r.orders as f64 / n));
        self.before.push(r.before);
        self.stayed.push(r.stayed);
        self.moved_in.push(r.moved_in);
        self.new.push(r.new);
        self.moved_out.push(r.moved_out);
    }

    fn frame(self) -> Result<DataFrame, AnalyticsError> {
        let n = self.segment.len();
        DataFrame::new(
            n,
            vec![
                Column::new("segment".into(), self.segment),
                Column::new("customers".into(), self.customers),
                Column::new("customer_share".into(), self.customer_share),
                Column::new("revenue".into(), self.revenue),
                Column::new("revenue_share".into(), self.revenue_share),
                Column::new("avg_recency_days".into(), self.avg_recency_days),
                Column::new("avg_orders".into(), self.avg_orders),
                Column::new("before".into(), self.before),
                Column::new("stayed".into(), self.stayed),
                Column::new("moved_in".into(), self.moved_in),
                Column::new("new".into(), self.new),
                Column::new("moved_out".into(), self.moved_out),
            ],
        )
        .map_err(pe)
    }
}

/// The customers of `segment` in a report's customer frame.
pub fn customers_of(customers: &DataFrame, segment: &str) -> Result<DataFrame, AnalyticsError> {
    customers
        .clone()
        .lazy()
        .filter(col("segment").eq(lit(segment)))
        .collect()
        .map_err(pe)
}
