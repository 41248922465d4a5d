//! RFM segmentation: per customer, recency (days since the last order),
//! frequency (orders) and monetary value (their total), each scored 1–5 by
//! quintile exactly as PostgreSQL's `ntile(5)` over the customers in that
//! order (ties broken by customer id), and the usual named segments.
//!
//! Scores: R 5 = the most recent fifth, F 5 = the most orders, M 5 = the
//! most spent. The named segment follows from R and F (the grid most RFM
//! tools use): Champions (R ≥ 4, F ≥ 4), Loyal (R ≥ 3, F ≥ 3), New
//! (R ≥ 4, F = 1), Promising (R ≥ 4), Need attention (R = 3), At risk
//! (R ≤ 2, F ≥ 3), Hibernating (the rest).

use chrono::{DateTime, Utc};
use polars::prelude::*;

/// The named segments, best first.
pub const SEGMENTS: [&str; 7] = [
    "Champions",
    "Loyal",
    "New",
    "Promising",
    "Need attention",
    "At risk",
    "Hibernating",
];

/// The segment of R and F scores (1–5).
pub fn segment(r: u8, f: u8) -> &'static str {
    let name = match (r, f) {
        (4.., 4..) => 0,
        (3.., 3..) => 1,
        (4.., 1) => 2,
        (4.., _) => 3,
        (3, _) => 4,
        (_, 3..) => 5,
        _ => 6,
    };
    SEGMENTS.get(name).copied().unwrap_or("Hibernating")
}

/// The `ntile(tiles)` bucket (from 1) of the row at `pos` (from 0) of `n`
/// rows, as PostgreSQL assigns it: the first `n % tiles` buckets hold one
/// row more than the others.
pub fn ntile(pos: usize, n: usize, tiles: usize) -> usize {
    let tiles = tiles.max(1);
    let (q, r) = (n / tiles, n % tiles);
    let big = r * (q + 1);
    if pos < big {
        pos / (q + 1) + 1
    } else {
        // Past the larger buckets there are rows only when q > 0.
        (pos - big).checked_div(q).map_or(tiles, |k| r + k + 1)
    }
}

fn err(e: PolarsError) -> String {
    e.to_string()
}

/// Scores of rows ordered by `key` then by customer id.
fn scores<K: Ord + Copy>(keys: &[K], ids: &[String]) -> Vec<u8> {
    let n = keys.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        keys.get(a).cmp(&keys.get(b)).then_with(|| {
            ids.get(a)
                .map(String::as_bytes)
                .cmp(&ids.get(b).map(String::as_bytes))
        })
    });
    let mut out = vec![0u8; n];
    for (pos, row) in order.into_iter().enumerate() {
        if let Some(s) = out.get_mut(row) {
            *s = u8::try_from(ntile(pos, n, 5)).unwrap_or(5);
        }
    }
    out
}

/// RFM of `tx` (rows with `customer_id`, `occurred_at` and `total_amount`:
/// one per order), as of `as_of` (default: the last order in `tx`). One
/// row per customer, by customer id: `customer_id`, `last_order`,
/// `recency_days`, `frequency`, `monetary`, `r_score`, `f_score`,
/// `m_score`, `rfm` (e.g. `"545"`) and `segment`.
pub fn rfm(tx: &DataFrame, as_of: Option<DateTime<Utc>>) -> Result<DataFrame, String> {
    for c in ["customer_id", "occurred_at", "total_amount"] {
        if tx.column(c).is_err() {
            return Err(format!(
                "rfm: the frame needs a `{c}` column (give it transactions)"
            ));
        }
    }
    let agg = tx
        .clone()
        .lazy()
        .group_by([col("customer_id").cast(DataType::String)])
        .agg([
            col("occurred_at")
                .cast(DataType::Datetime(
                    TimeUnit::Microseconds,
                    Some(TimeZone::UTC),
                ))
                .max()
                .alias("last_order"),
            len().cast(DataType::Int64).alias("frequency"),
            col("total_amount")
                .cast(DataType::Float64)
                .sum()
                .alias("monetary"),
        ])
        .sort(["customer_id"], SortMultipleOptions::default())
        .collect()
        .map_err(err)?;
    let ids = strings(&agg, "customer_id")?;
    let last = int64s(&agg, "last_order", i64::MIN)?;
    let freq = int64s(&agg, "frequency", 0)?;
    let money = float64s(&agg, "monetary", 0.0)?;
    from_aggregates(ids, last, freq, money, as_of.map(|t| t.timestamp_micros()))
}

/// Column `name` of `df` as text, nulls as "".
pub(crate) fn strings(df: &DataFrame, name: &str) -> Result<Vec<String>, String> {
    df.column(name)
        .and_then(|c| {
            c.str()
                .map(|s| s.iter().map(|v| v.unwrap_or("").to_owned()).collect())
        })
        .map_err(err)
}

/// Column `name` of `df` cast to 64-bit integers, nulls as `null`.
pub(crate) fn int64s(df: &DataFrame, name: &str, null: i64) -> Result<Vec<i64>, String> {
    df.column(name)
        .and_then(|c| c.cast(&DataType::Int64))
        .and_then(|c| {
            c.i64()
                .map(|a| a.iter().map(|v| v.unwrap_or(null)).collect())
        })
        .map_err(err)
}

/// Column `name` of `df` cast to 64-bit floats, nulls as `null`.
pub(crate) fn float64s(df: &DataFrame, name: &str, null: f64) -> Result<Vec<f64>, String> {
    df.column(name)
        .and_then(|c| c.cast(&DataType::Float64))
        .and_then(|c| {
            c.f64()
                .map(|a| a.iter().map(|v| v.unwrap_or(null)).collect())
        })
        .map_err(err)
}

/// RFM from per-customer aggregates: `ids` (customer ids), `last` (each
/// one's last order, microseconds since the epoch), `freq` (orders) and
/// `money` (their total), as of `as_of_us` (default: the last order of
/// all). The columns of [`rfm`], one row per customer in the order given.
pub fn from_aggregates(
    ids: Vec<String>,
    last: Vec<i64>,
    freq: Vec<i64>,
    money: Vec<f64>,
    as_of_us: Option<i64>,
) -> Result<DataFrame, String> {
    let n = ids.len();
    if last.len() != n || freq.len() != n || money.len() != n {
        return Err("rfm: the aggregates differ in length".into());
    }
    // Money is ordered in whole cents: sums that are equal in cents are
    // equal, whatever order the floats were added in.
    let cents: Vec<i64> = money.iter().map(|m| (m * 100.0).round() as i64).collect();
    let as_of = as_of_us.unwrap_or_else(|| last.iter().copied().max().unwrap_or(0));
    let r = scores(&last, &ids);
    let f = scores(&freq, &ids);
    let m = scores(&cents, &ids);
    let recency: Vec<f64> = last
        .iter()
        .map(|l| as_of.saturating_sub(*l) as f64 / 86_400e6)
        .collect();
    let code: Vec<String> = r
        .iter()
        .zip(&f)
        .zip(&m)
        .map(|((r, f), m)| format!("{r}{f}{m}"))
        .collect();
    let seg: Vec<&str> = r.iter().zip(&f).map(|(r, f)| segment(*r, *f)).collect();
    let small = |v: &[u8]| v.iter().map(|x| i64::from(*x)).collect::<Vec<_>>();
    let last_order = Column::new("last_order".into(), last)
        .cast(&DataType::Datetime(
            TimeUnit::Microseconds,
            Some(TimeZone::UTC),
        ))
        .map_err(err)?;
    DataFrame::new(
        n,
        vec![
            Column::new("customer_id".into(), ids),
            last_order,
            Column::new("recency_days".into(), recency),
            Column::new("frequency".into(), freq),
            Column::new("monetary".into(), money),
            Column::new("r_score".into(), small(&r)),
            Column::new("f_score".into(), small(&f)),
            Column::new("m_score".into(), small(&m)),
            Column::new("rfm".into(), code),
            Column::new("segment".into(), seg),
        ],
    )
    .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntile_gives_the_first_buckets_the_extra_rows_as_postgresql_does() {
        // 12 rows in 5 buckets: sizes 3, 3, 2, 2, 2.
        let b: Vec<usize> = (0..12).map(|p| ntile(p, 12, 5)).collect();
        assert_eq!(b, vec![1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5]);
        // Fewer rows than buckets: one each.
        let b: Vec<usize> = (0..3).map(|p| ntile(p, 3, 5)).collect();
        assert_eq!(b, vec![1, 2, 3]);
        let b: Vec<usize> = (0..10).map(|p| ntile(p, 10, 5)).collect();
        assert_eq!(b, vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
    }

    #[test]
    fn segments_follow_recency_and_frequency() {
        assert_eq!(segment(5, 5), "Champions");
        assert_eq!(segment(3, 4), "Loyal");
        assert_eq!(segment(5, 1), "New");
        assert_eq!(segment(4, 2), "Promising");
        assert_eq!(segment(3, 1), "Need attention");
        assert_eq!(segment(1, 5), "At risk");
        assert_eq!(segment(2, 1), "Hibernating");
    }
}
