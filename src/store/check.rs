//! Consistency of the derived tables: every rollup, customer and product
//! row must equal its recomputation from the raw `transactions` and
//! `sessions` rows. Used by the tests after every pipeline run and by
//! `salespulse chaos` after its faults.

use sqlx::Row;

use super::{Store, StoreError};

/// One derived table that differs from its recomputation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The table.
    pub table: &'static str,
    /// Recomputed rows the table lacks.
    pub missing: i64,
    /// Table rows the recomputation does not give.
    pub extra: i64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} recomputed rows missing from the table, {} table rows not recomputed",
            self.table, self.missing, self.extra
        )
    }
}

/// Compares every derived table with the same aggregates recomputed from
/// the raw rows (both directions of `EXCEPT ALL`); empty when all agree.
pub async fn derived_tables(store: &Store) -> Result<Vec<Mismatch>, StoreError> {
    let checks: [(&'static str, &str, &str); 6] = [
        (
            "sales_metrics_lite",
            "SELECT g, date_trunc(g, occurred_at, 'UTC'), category, payment_method, status,
                    count(*), sum(quantity), sum(total_amount), sum(discount)
             FROM transactions, unnest(ARRAY['hour', 'day']) g GROUP BY 1, 2, 3, 4, 5",
            "SELECT grain, bucket, category, payment_method, status, orders, units, revenue, discount
             FROM sales_metrics_lite",
        ),
        (
            "customer_days",
            "SELECT DISTINCT date_trunc('day', occurred_at, 'UTC'), customer_id FROM transactions",
            "SELECT day, customer_id FROM customer_days",
        ),
        (
            "sales_metrics",
            "SELECT g, date_trunc(g, occurred_at, 'UTC'), category, payment_method, status, region, channel,
                    count(*), sum(quantity), sum(total_amount), sum(discount)
             FROM transactions, unnest(ARRAY['minute', 'hour', 'day']) g GROUP BY 1, 2, 3, 4, 5, 6, 7",
            "SELECT grain, bucket, category, payment_method, status, region, channel, orders, units, revenue, discount
             FROM sales_metrics",
        ),
        (
            "session_metrics",
            "SELECT g, date_trunc(g, started_at, 'UTC'), region, channel, count(*),
                    count(*) FILTER (WHERE orders > 0), sum(orders), sum(page_views)
             FROM sessions, unnest(ARRAY['minute', 'hour', 'day']) g GROUP BY 1, 2, 3, 4",
            "SELECT grain, bucket, region, channel, sessions, converted_sessions, orders, page_views FROM session_metrics",
        ),
        (
            "customers",
            "WITH t AS (SELECT customer_id, min(region) r, min(country) c, min(occurred_at) f, max(occurred_at) l,
                           count(*) o, count(*) FILTER (WHERE status = 'completed') co, sum(quantity) u,
                           coalesce(sum(total_amount) FILTER (WHERE status = 'completed'), 0) s
                        FROM transactions GROUP BY 1),
                  s AS (SELECT customer_id, min(region) r, min(country) c, min(started_at) f, max(ended_at) l,
                           count(*) n FROM sessions GROUP BY 1)
             SELECT customer_id, coalesce(t.r, s.r), coalesce(t.c, s.c), least(t.f, s.f), greatest(t.l, s.l),
                    coalesce(s.n, 0), coalesce(t.o, 0), coalesce(t.co, 0), coalesce(t.u, 0), coalesce(t.s, 0)
             FROM t FULL JOIN s USING (customer_id)",
            "SELECT customer_id, region, country, first_seen, last_seen, sessions, orders, completed_orders,
                    units, total_spent FROM customers",
        ),
        (
            "products",
            "SELECT product_id, min(category), max(unit_price), min(occurred_at), max(occurred_at), count(*),
                    sum(quantity), coalesce(sum(total_amount) FILTER (WHERE status = 'completed'), 0)
             FROM transactions GROUP BY 1",
            "SELECT product_id, category, list_price, first_seen, last_seen, orders, units, revenue FROM products",
        ),
    ];
    let mut out = Vec::new();
    for (table, recomputed, stored) in checks {
        let sql = format!(
            "SELECT (SELECT count(*) FROM (({recomputed}) EXCEPT ALL ({stored})) a),
                    (SELECT count(*) FROM (({stored}) EXCEPT ALL ({recomputed})) b)"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(store.pool())
            .await?;
        let (missing, extra): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        if missing != 0 || extra != 0 {
            out.push(Mismatch {
                table,
                missing,
                extra,
            });
        }
    }
    Ok(out)
}
