//! The derived tables, each defined once: every column of every rollup,
//! `order_gaps`, `order_gaps_daily`, `customers` and `products` is written here as what it is
//! over the raw `transactions` and `sessions` rows (an SQL expression under
//! `GROUP BY` of the key columns) and how two partial results of it combine
//! ([`Merge`]).
//!
//! From these definitions come:
//! - the `ON CONFLICT` clause of ingest's incremental upsert
//!   ([`on_conflict`], used by `write`), which folds each batch's partial
//!   aggregates into the tables;
//! - [`verify`]: every table compared with its recomputation from the raw
//!   rows (the tests run it after every pipeline run, `salespulse chaos`
//!   after its faults, `salespulse rollups verify` on demand);
//! - [`rebuild`]: every table recomputed from the raw rows in one
//!   transaction (the analytics bench's loader; `salespulse rollups
//!   rebuild` after raw rows were changed by hand).
//!
//! The writer aggregates each batch in Rust before the upsert (that is what
//! keeps ingest near `COPY` speed); that fold must give, per key, what the
//! expressions here give over the batch's rows. [`verify`] after every
//! pipeline test is what holds it to that.
//!
//! To add a column to a derived table: a migration, a [`Column`] here, the
//! writer's fold and its `INSERT` column list (`write::Aggregates`); the
//! tests' `verify` then checks the three agree.

use std::fmt::Write as _;

use sqlx::{Connection, Row};

use super::{Store, StoreError};

/// The rollup grains and their bucket widths in seconds. Every row is folded
/// into one bucket of each grain (UTC, what `date_trunc(grain, t, 'UTC')` gives).
pub const GRAINS: [(&str, i64); 3] = [("minute", 60), ("hour", 3_600), ("day", 86_400)];

/// The grains of `sales_metrics_lite` (no minutes: those come from
/// `sales_metrics`).
pub const LITE_GRAINS: [&str; 2] = ["hour", "day"];

/// How two partial results of a column combine (the stored value and a new
/// batch's), which is also how the incremental upsert updates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Part of the table's key.
    Key,
    /// Summed (counts and totals).
    Add,
    /// The smaller (first seen, a stable attribute).
    Min,
    /// The larger (last seen, highest price).
    Max,
    /// Not computable from the raw rows (a product's name, which only the
    /// event carries): the newest batch's value wins, [`verify`] skips it and
    /// [`rebuild`] keeps what the table holds.
    Latest,
}

/// One column of a derived table.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    /// The column's name in the table.
    pub name: &'static str,
    /// Its value over a group of raw rows of [`Rollup::source`]. `{grain}`
    /// stands for the grain, as a quoted literal. Empty for [`Merge::Latest`].
    pub from_raw: &'static str,
    /// How partial results combine.
    pub merge: Merge,
    /// Text ordered by its bytes (`COLLATE "C"`), as the writer's fold in
    /// Rust orders it, whatever the database's default collation.
    pub bytewise: bool,
}

/// One derived table and its definition over the raw rows.
#[derive(Clone, Copy, Debug)]
pub struct Rollup {
    /// The table.
    pub table: &'static str,
    /// The raw rows it is computed from: a table, or a subquery with an alias.
    pub source: &'static str,
    /// For tables with a `grain` column: the grains it holds, each computed
    /// by its own `GROUP BY`. Empty otherwise.
    pub grains: &'static [&'static str],
    /// The columns, keys first.
    pub columns: &'static [Column],
}

const fn key(name: &'static str, from_raw: &'static str) -> Column {
    Column {
        name,
        from_raw,
        merge: Merge::Key,
        bytewise: false,
    }
}

const fn col(name: &'static str, merge: Merge, from_raw: &'static str) -> Column {
    Column {
        name,
        from_raw,
        merge,
        bytewise: false,
    }
}

/// The smallest text of the group, by bytes.
const fn text_min(name: &'static str, from_raw: &'static str) -> Column {
    Column {
        name,
        from_raw,
        merge: Merge::Min,
        bytewise: true,
    }
}

const ALL_GRAINS: [&str; 3] = [GRAINS[0].0, GRAINS[1].0, GRAINS[2].0];

/// Sales per minute, hour and day by every dimension (revenue and units per
/// status, so that readers choose what counts).
pub const SALES_METRICS: Rollup = Rollup {
    table: "sales_metrics",
    source: "transactions",
    grains: &ALL_GRAINS,
    columns: &[
        key("grain", "{grain}"),
        key("bucket", "date_trunc({grain}, occurred_at, 'UTC')"),
        key("category", "category"),
        key("payment_method", "payment_method"),
        key("status", "status"),
        key("region", "region"),
        key("channel", "channel"),
        col("orders", Merge::Add, "count(*)"),
        col("units", Merge::Add, "sum(quantity)"),
        col("revenue", Merge::Add, "sum(total_amount)"),
        col("discount", Merge::Add, "sum(discount)"),
    ],
};

/// Sales per hour and day without region and channel (far fewer rows per
/// bucket, for views that neither group nor filter by them).
pub const SALES_METRICS_LITE: Rollup = Rollup {
    table: "sales_metrics_lite",
    source: "transactions",
    grains: &LITE_GRAINS,
    columns: &[
        key("grain", "{grain}"),
        key("bucket", "date_trunc({grain}, occurred_at, 'UTC')"),
        key("category", "category"),
        key("payment_method", "payment_method"),
        key("status", "status"),
        col("orders", Merge::Add, "count(*)"),
        col("units", Merge::Add, "sum(quantity)"),
        col("revenue", Merge::Add, "sum(total_amount)"),
        col("discount", Merge::Add, "sum(discount)"),
    ],
};

/// Sessions per minute, hour and day by region and channel.
pub const SESSION_METRICS: Rollup = Rollup {
    table: "session_metrics",
    source: "sessions",
    grains: &ALL_GRAINS,
    columns: &[
        key("grain", "{grain}"),
        key("bucket", "date_trunc({grain}, started_at, 'UTC')"),
        key("region", "region"),
        key("channel", "channel"),
        col("sessions", Merge::Add, "count(*)"),
        col(
            "converted_sessions",
            Merge::Add,
            "count(*) FILTER (WHERE orders > 0)",
        ),
        col("orders", Merge::Add, "sum(orders)"),
        col("page_views", Merge::Add, "sum(page_views)"),
    ],
};

/// One row per customer who has ordered: their lifetime totals. A visitor
/// whose sessions never led to an order is not a customer (schema v6);
/// their visits are in `sessions`.
pub const CUSTOMERS: Rollup = Rollup {
    table: "customers",
    source: "transactions",
    grains: &[],
    columns: &[
        key("customer_id", "customer_id"),
        text_min("region", "min(region COLLATE \"C\")"),
        text_min("country", "min(country COLLATE \"C\")"),
        col("first_seen", Merge::Min, "min(occurred_at)"),
        col("last_seen", Merge::Max, "max(occurred_at)"),
        col("orders", Merge::Add, "count(*)"),
        col(
            "completed_orders",
            Merge::Add,
            "count(*) FILTER (WHERE status = 'completed')",
        ),
        col("units", Merge::Add, "sum(quantity)"),
        col(
            "total_spent",
            Merge::Add,
            "coalesce(sum(total_amount) FILTER (WHERE status = 'completed'), 0)",
        ),
    ],
};

/// One row per product sold.
pub const PRODUCTS: Rollup = Rollup {
    table: "products",
    source: "transactions",
    grains: &[],
    columns: &[
        key("product_id", "product_id"),
        col("name", Merge::Latest, ""),
        text_min("category", "min(category COLLATE \"C\")"),
        col("list_price", Merge::Max, "max(unit_price)"),
        col("first_seen", Merge::Min, "min(occurred_at)"),
        col("last_seen", Merge::Max, "max(occurred_at)"),
        col("orders", Merge::Add, "count(*)"),
        col("units", Merge::Add, "sum(quantity)"),
        col(
            "revenue",
            Merge::Add,
            "coalesce(sum(total_amount) FILTER (WHERE status = 'completed'), 0)",
        ),
    ],
};

/// Shop-wide totals: customers who have ever ordered (one row, once there
/// is a sale). The writer adds each batch's first-time buyers.
pub const SHOP_TOTALS: Rollup = Rollup {
    table: "shop_totals",
    source: "transactions",
    grains: &[],
    columns: &[
        key("id", "1"),
        col("buyers", Merge::Add, "count(DISTINCT customer_id)"),
    ],
};

/// Hours back to a customer's previous order that [`ORDER_GAPS`] tells
/// apart; further back, or no earlier order, is [`GAP_NEVER`].
pub const GAP_HOURS: i32 = 744;

/// The [`ORDER_GAPS`] bucket of orders with no previous order by their
/// customer within [`GAP_HOURS`] (or none at all).
pub const GAP_NEVER: i32 = GAP_HOURS + 1;

/// Orders per UTC hour by how many hours back (between the hours' starts,
/// at most [`GAP_NEVER`]) their customer's previous order was: an order
/// is its customer's first in a range exactly when that previous order is
/// before the range, so distinct customers over up to [`GAP_HOURS`] hours
/// are a sum over these rows (`analytics::sql`). Orders are in the order
/// of (time, transaction id).
pub const ORDER_GAPS: Rollup = Rollup {
    table: "order_gaps",
    // `745` is GAP_NEVER (a test holds them together).
    source: "(SELECT date_trunc('hour', occurred_at, 'UTC') AS hour,
                     CASE WHEN prev IS NULL THEN 745
                          ELSE least(745, (extract(epoch FROM date_trunc('hour', occurred_at, 'UTC')
                                    - date_trunc('hour', prev, 'UTC')) / 3600)::int4) END AS back
              FROM (SELECT occurred_at, lag(occurred_at) OVER (PARTITION BY customer_id
                                ORDER BY occurred_at, transaction_id) AS prev
                    FROM transactions) ordered) AS raw",
    grains: &[],
    columns: &[
        key("hour", "hour"),
        key("back", "back"),
        col("orders", Merge::Add, "count(*)"),
    ],
};

/// The [`ORDER_GAPS_DAILY`] bucket of orders with no previous order by
/// their customer (or one further back than any range is long).
pub const DAY_GAP_NEVER: i32 = 100_000;

/// [`ORDER_GAPS`] by UTC day: orders per day by how many days back
/// (between the days' starts) their customer's previous order was, so
/// that distinct customers over whole days of any length are a sum over
/// these rows (`analytics::sql`), without a cap below [`DAY_GAP_NEVER`].
pub const ORDER_GAPS_DAILY: Rollup = Rollup {
    table: "order_gaps_daily",
    // `100000` is DAY_GAP_NEVER (a test holds them together).
    source: "(SELECT date_trunc('day', occurred_at, 'UTC') AS day,
                     CASE WHEN prev IS NULL THEN 100000
                          ELSE least(100000, (extract(epoch FROM date_trunc('day', occurred_at, 'UTC')
                                    - date_trunc('day', prev, 'UTC')) / 86400)::int4) END AS back
              FROM (SELECT occurred_at, lag(occurred_at) OVER (PARTITION BY customer_id
                                ORDER BY occurred_at, transaction_id) AS prev
                    FROM transactions) ordered) AS raw",
    grains: &[],
    columns: &[
        key("day", "day"),
        key("back", "back"),
        col("orders", Merge::Add, "count(*)"),
    ],
};

/// The dimensions [`ORDER_GAPS_DAILY_BY`] keeps gaps for, with the
/// column of `transactions` that holds each.
pub const GAP_DIMENSIONS: [&str; 2] = ["category", "region"];

/// [`ORDER_GAPS_DAILY`] per value of a dimension ([`GAP_DIMENSIONS`]):
/// orders per (dimension, value, UTC day) by how many days back the same
/// customer's previous order *with the same value* was, so that distinct
/// customers under a one-value filter on that dimension, over whole days,
/// are a sum over these rows (`analytics::sql`).
pub const ORDER_GAPS_DAILY_BY: Rollup = Rollup {
    table: "order_gaps_daily_by",
    // `100000` is DAY_GAP_NEVER and the dimensions are GAP_DIMENSIONS (a
    // test holds them together).
    source: "(SELECT dim, value, date_trunc('day', occurred_at, 'UTC') AS day,
                     CASE WHEN prev IS NULL THEN 100000
                          ELSE least(100000, (extract(epoch FROM date_trunc('day', occurred_at, 'UTC')
                                    - date_trunc('day', prev, 'UTC')) / 86400)::int4) END AS back
              FROM (SELECT 'category' AS dim, category AS value, occurred_at,
                           lag(occurred_at) OVER (PARTITION BY customer_id, category
                                                  ORDER BY occurred_at, transaction_id) AS prev
                    FROM transactions
                    UNION ALL
                    SELECT 'region', region, occurred_at,
                           lag(occurred_at) OVER (PARTITION BY customer_id, region
                                                  ORDER BY occurred_at, transaction_id)
                    FROM transactions) ordered) AS raw",
    grains: &[],
    columns: &[
        key("dim", "dim"),
        key("value", "value"),
        key("day", "day"),
        key("back", "back"),
        col("orders", Merge::Add, "count(*)"),
    ],
};

/// Every derived table.
pub const ROLLUPS: [Rollup; 9] = [
    SALES_METRICS,
    SALES_METRICS_LITE,
    SESSION_METRICS,
    CUSTOMERS,
    PRODUCTS,
    SHOP_TOTALS,
    ORDER_GAPS,
    ORDER_GAPS_DAILY,
    ORDER_GAPS_DAILY_BY,
];

impl Rollup {
    /// The columns computable from the raw rows (all but [`Merge::Latest`]).
    fn computed(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.merge != Merge::Latest)
    }

    /// The `SELECT` of the computed columns over all raw rows, one
    /// `GROUP BY` per grain joined by `UNION ALL`.
    pub fn recompute(&self) -> String {
        let one = |grain: Option<&str>| {
            let literal = grain.map(|g| format!("'{g}'")).unwrap_or_default();
            let mut select = Vec::new();
            let mut group = Vec::new();
            for (i, c) in self.computed().enumerate() {
                select.push(format!(
                    "{} AS {}",
                    c.from_raw.replace("{grain}", &literal),
                    c.name
                ));
                if c.merge == Merge::Key && c.from_raw != "{grain}" {
                    group.push((i + 1).to_string());
                }
            }
            format!(
                "SELECT {} FROM {} GROUP BY {}",
                select.join(", "),
                self.source,
                group.join(", ")
            )
        };
        if self.grains.is_empty() {
            one(None)
        } else {
            self.grains
                .iter()
                .map(|g| format!("({})", one(Some(g))))
                .collect::<Vec<_>>()
                .join(" UNION ALL ")
        }
    }

    /// `ON CONFLICT (keys) DO UPDATE SET …` for an `INSERT INTO table AS
    /// {alias}` of partial results: how the incremental upsert folds them in.
    pub(crate) fn on_conflict(&self, alias: &str) -> String {
        let keys: Vec<&str> = self
            .columns
            .iter()
            .filter(|c| c.merge == Merge::Key)
            .map(|c| c.name)
            .collect();
        let mut sets = Vec::new();
        for c in self.columns {
            let n = c.name;
            let set = match c.merge {
                Merge::Key => continue,
                Merge::Add => format!("{n} = {alias}.{n} + EXCLUDED.{n}"),
                Merge::Min if c.bytewise => {
                    format!("{n} = least({alias}.{n} COLLATE \"C\", EXCLUDED.{n})")
                }
                Merge::Min => format!("{n} = least({alias}.{n}, EXCLUDED.{n})"),
                Merge::Max => format!("{n} = greatest({alias}.{n}, EXCLUDED.{n})"),
                Merge::Latest => format!("{n} = EXCLUDED.{n}"),
            };
            sets.push(set);
        }
        let mut out = format!("ON CONFLICT ({}) DO ", keys.join(", "));
        if sets.is_empty() {
            out.push_str("NOTHING");
        } else {
            let _ = write!(out, "UPDATE SET {}", sets.join(", "));
        }
        out
    }

    fn computed_names(&self) -> String {
        self.computed()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

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

/// Compares every derived table with its recomputation from the raw rows
/// (both directions of `EXCEPT ALL`, so a changed row counts as one missing
/// and one extra); empty when all agree. Reads a snapshot of each table
/// while ingest may go on writing.
pub async fn verify(store: &Store) -> Result<Vec<Mismatch>, StoreError> {
    let mut conn = store.pool().acquire().await?;
    let mut tx = conn.begin().await?;
    // One snapshot for every table, so that concurrent batches cannot make
    // a table and the raw rows disagree.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    // Whole-table scans: the pool's statement timeout is for queries.
    sqlx::query("SET LOCAL statement_timeout = 0")
        .execute(&mut *tx)
        .await?;
    let mut out = Vec::new();
    for r in ROLLUPS {
        let recomputed = r.recompute();
        let stored = format!("SELECT {} FROM {}", r.computed_names(), r.table);
        let sql = format!(
            "SELECT (SELECT count(*) FROM (({recomputed}) EXCEPT ALL ({stored})) a),
                    (SELECT count(*) FROM (({stored}) EXCEPT ALL ({recomputed})) b)"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *tx)
            .await?;
        let (missing, extra): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        if missing != 0 || extra != 0 {
            out.push(Mismatch {
                table: r.table,
                missing,
                extra,
            });
        }
    }
    tx.commit().await?;
    Ok(out)
}

/// Recomputes every derived table from the raw rows, in one transaction
/// that holds off writers of raw rows meanwhile (ingest waits, then goes on
/// folding its batches into the rebuilt tables); readers see the old tables
/// until it commits (rows are deleted, not truncated, so snapshots hold). Columns not computable from
/// raw rows ([`Merge::Latest`]) keep their stored values, or `''` for a key
/// the table did not have. Frames cached from the old tables go stale (the
/// data version moves, as a late commit would move it). Returns the rows
/// written per table.
pub async fn rebuild(store: &Store) -> Result<Vec<(&'static str, u64)>, StoreError> {
    let mut conn = store.pool().acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL statement_timeout = 0")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SET LOCAL work_mem = '256MB'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("LOCK TABLE transactions, sessions IN SHARE MODE")
        .execute(&mut *tx)
        .await?;
    let mut written = Vec::new();
    for r in ROLLUPS {
        let keys: Vec<&str> = r
            .columns
            .iter()
            .filter(|c| c.merge == Merge::Key)
            .map(|c| c.name)
            .collect();
        let latest: Vec<&str> = r
            .columns
            .iter()
            .filter(|c| c.merge == Merge::Latest)
            .map(|c| c.name)
            .collect();
        let (names, select) = if latest.is_empty() {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {}", r.table)))
                .execute(&mut *tx)
                .await?;
            (r.computed_names(), r.recompute())
        } else {
            // Keep what only the events carried, keyed as the table is.
            let kept = format!("kept_{}", r.table);
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE TEMP TABLE {kept} ON COMMIT DROP AS SELECT {}, {} FROM {}",
                keys.join(", "),
                latest.join(", "),
                r.table
            )))
            .execute(&mut *tx)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {}", r.table)))
                .execute(&mut *tx)
                .await?;
            let coalesced: Vec<String> = latest
                .iter()
                .map(|n| format!("coalesce(k.{n}, '')"))
                .collect();
            (
                format!("{}, {}", r.computed_names(), latest.join(", ")),
                format!(
                    "SELECT r.*, {} FROM ({}) r LEFT JOIN {kept} k USING ({})",
                    coalesced.join(", "),
                    r.recompute(),
                    keys.join(", ")
                ),
            )
        };
        // In key order, as ingest writes them (bucket by bucket): a range
        // of buckets is then a few pages, not one row on each of many.
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} ({names}) SELECT * FROM ({select}) o ORDER BY {}",
            r.table,
            keys.join(", ")
        )))
        .execute(&mut *tx)
        .await?;
        written.push((r.table, done.rows_affected()));
    }
    // Cached frames were computed from the old tables: counted as a late
    // commit on every partition, the rebuild changes every frame's key.
    sqlx::query(
        "UPDATE ingest_watermarks SET commits = commits + 1, late_commits = late_commits + 1, \
         updated_at = now()",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(super::changes::NOTIFY_SQL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upsert_clause_follows_the_merge_rules() {
        assert_eq!(
            PRODUCTS.on_conflict("p"),
            "ON CONFLICT (product_id) DO UPDATE SET name = EXCLUDED.name, \
             category = least(p.category COLLATE \"C\", EXCLUDED.category), \
             list_price = greatest(p.list_price, EXCLUDED.list_price), \
             first_seen = least(p.first_seen, EXCLUDED.first_seen), \
             last_seen = greatest(p.last_seen, EXCLUDED.last_seen), \
             orders = p.orders + EXCLUDED.orders, units = p.units + EXCLUDED.units, \
             revenue = p.revenue + EXCLUDED.revenue"
        );
        assert_eq!(
            ORDER_GAPS_DAILY.on_conflict("g"),
            "ON CONFLICT (day, back) DO UPDATE SET orders = g.orders + EXCLUDED.orders"
        );
    }

    #[test]
    fn the_order_gaps_definition_uses_the_writers_bounds() {
        let never = format!("THEN {GAP_NEVER}");
        assert!(ORDER_GAPS.source.contains(&never));
        assert!(ORDER_GAPS.source.contains(&format!("least({GAP_NEVER}, ")));
        let migration = include_str!("../../migrations/0005_order_gaps.sql");
        assert!(migration.contains(&never), "the migration's bound");
        assert!(migration.contains(&format!("BETWEEN 0 AND {GAP_NEVER}")));
        let never = format!("THEN {DAY_GAP_NEVER}");
        assert!(ORDER_GAPS_DAILY.source.contains(&never));
        assert!(ORDER_GAPS_DAILY
            .source
            .contains(&format!("least({DAY_GAP_NEVER}, ")));
        let migration = include_str!("../../migrations/0006_buyers_and_daily_gaps.sql");
        assert!(migration.contains(&never), "the migration's bound");
        assert!(migration.contains(&format!("BETWEEN 0 AND {DAY_GAP_NEVER}")));
        // Per dimension: the same bound, and the dimensions the writer folds.
        let migration = include_str!("../../migrations/0007_order_gaps_by_dimension.sql");
        for text in [ORDER_GAPS_DAILY_BY.source, migration] {
            assert!(text.contains(&never));
            assert!(text.contains(&format!("least({DAY_GAP_NEVER}, ")));
            for d in GAP_DIMENSIONS {
                assert!(
                    text.contains(&format!("PARTITION BY customer_id, {d}\n")),
                    "{d}"
                );
                assert!(text.contains(&format!("'{d}'")), "{d}");
            }
            assert_eq!(text.matches("PARTITION BY").count(), GAP_DIMENSIONS.len());
        }
        // The migration fills the table with this very definition.
        let words = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
        let inner = words(ORDER_GAPS_DAILY_BY.source);
        let inner = inner
            .strip_prefix('(')
            .and_then(|i| i.strip_suffix(") AS raw"))
            .unwrap_or("not the expected shape");
        assert!(words(migration).contains(inner), "{inner}");
        let listed: Vec<String> = GAP_DIMENSIONS.iter().map(|d| format!("'{d}'")).collect();
        assert!(migration.contains(&format!("CHECK (dim IN ({}))", listed.join(", "))));
        assert!(migration.contains(&format!("BETWEEN 0 AND {DAY_GAP_NEVER}")));
    }

    #[test]
    fn a_grained_rollup_groups_each_grain_apart_by_its_keys() {
        let sql = SALES_METRICS_LITE.recompute();
        assert_eq!(sql.matches(" UNION ALL ").count(), 1);
        assert!(sql.starts_with(
            "(SELECT 'hour' AS grain, date_trunc('hour', occurred_at, 'UTC') AS bucket, "
        ));
        assert!(sql.contains("FROM transactions GROUP BY 2, 3, 4, 5)"));
        assert!(!PRODUCTS.recompute().contains("name"));
    }
}
