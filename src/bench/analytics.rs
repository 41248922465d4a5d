//! `salespulse bench analytics`: dashboard refresh over N transactions.
//!
//! Loads N generated transactions (default 10M over 90 days) and their
//! sessions (~3.5 per order) into a database of its own with a bulk `COPY`,
//! then builds exactly what ingest would have built from them: every
//! derived table by `store::rollups::rebuild` (the same definitions ingest's
//! upsert follows), and the watermarks. The load is kept and reused by later
//! runs with the same N, days, seed and loader version.
//!
//! Then, for three ranges (last 24 h, last 7 d, all):
//! - **cold**: the Redis frame cache emptied, a full dashboard refresh
//!   (kpis, revenue_trend, category_performance, payment_mix,
//!   status_breakdown; concurrently, as the app does);
//! - **warm**: the same refresh again, answered from Redis;
//! - **GROUP BY**: the same aggregates computed by plain `GROUP BY` over
//!   `transactions`, concurrently.
//!
//! And the two loaders on the same statement (100k raw transactions), and
//! every shipped metric over each range, cold: pushed down (to
//! PostgreSQL and the rollups) and over loaded rows.
//! PostgreSQL's own buffer cache is warm in every case (the bench cannot
//! drop the OS page cache).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use sqlx::Row;

use crate::analytics::{Analytics, Filters, LoadMode, TimeRange, ViewKind, ViewRequest};
use crate::config::Config;
use crate::event::Event;
use crate::generator::{Clock, Generator, GeneratorParams};
use crate::store::{self, Batch, CopyRows, Store, SESSION_COLUMNS, TRANSACTION_COLUMNS};

/// What `bench analytics` loads and measures.
#[derive(Clone, Debug)]
pub struct AnalyticsBenchOptions {
    /// Transactions to load (generated with the seed).
    pub transactions: u64,
    /// Days the transactions span.
    pub days: u32,
    /// Seed of the generator.
    pub seed: u64,
    /// Runs per measurement (the median and max are reported).
    pub repeat: usize,
    /// Load again even when the bench database holds the same data.
    pub reload: bool,
    /// Database to load into (default `salespulse_analytics_bench`).
    pub database: Option<String>,
}

/// Median and max of repeated runs.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// Median, ms.
    pub median_ms: f64,
    /// Max, ms.
    pub max_ms: f64,
}

impl Timing {
    fn of(mut v: Vec<Duration>) -> Self {
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Timing {
            median_ms: v.get(v.len() / 2).copied().map_or(0.0, ms),
            max_ms: v.last().copied().map_or(0.0, ms),
        }
    }
}

/// A dashboard refresh over one time range.
#[derive(Clone, Debug, Serialize)]
pub struct RangeResult {
    /// The range (`1h`, `24h`, `7d`, `all`).
    pub range: String,
    /// With the frame cache empty (rollups read from PostgreSQL).
    pub cold: Timing,
    /// Answered from the Redis frame cache.
    pub warm: Timing,
    /// The same figures by a plain GROUP BY over the raw transactions (the baseline).
    pub group_by: Timing,
}

/// What `bench analytics` measured.
#[derive(Clone, Debug, Serialize)]
pub struct AnalyticsBenchReport {
    /// Transactions in the bench database.
    pub transactions: u64,
    /// First event time.
    pub span_from: Option<DateTime<Utc>>,
    /// Last event time.
    pub span_to: Option<DateTime<Utc>>,
    /// Seconds the load took (`None`: the data was reused).
    pub load_secs: Option<f64>,
    /// Rows of `sales_metrics`, all grains.
    pub rollup_rows: i64,
    /// One result per range.
    pub ranges: Vec<RangeResult>,
    /// Raw transactions the loaders read.
    pub loader_rows: u64,
    /// Loading them row by row.
    pub loader_rows_mode: Timing,
    /// Loading them with COPY (CSV).
    pub loader_copy_mode: Timing,
    /// Every shipped metric over each range, cold: frames run in
    /// PostgreSQL where their plans allow, then every plan in Polars over
    /// loaded rows.
    pub metrics: Vec<MetricTiming>,
    /// Runs per measurement.
    pub repeat: usize,
}

/// One shipped metric over one range.
#[derive(Clone, Debug, Serialize)]
pub struct MetricTiming {
    /// Its file.
    pub metric: String,
    /// The range.
    pub range: String,
    /// Frames pushed down where they can be: ms, or the error.
    pub pushed: Result<f64, String>,
    /// Frames the run pushed down (0: it read views or loaded rows only).
    pub pushed_frames: u64,
    /// Of those, frames answered from the sales rollups.
    pub from_rollups: u64,
    /// Rows it loaded for Polars.
    pub pushed_rows_loaded: u64,
    /// Every plan in Polars over loaded rows: ms, or the error.
    pub loaded: Result<f64, String>,
}

impl std::fmt::Display for AnalyticsBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "data              {} transactions, {} to {}{}",
            self.transactions,
            self.span_from.map(|t| t.to_rfc3339()).unwrap_or_default(),
            self.span_to.map(|t| t.to_rfc3339()).unwrap_or_default(),
            self.load_secs
                .map(|s| format!(" (loaded in {s:.0} s)"))
                .unwrap_or_else(|| " (reused)".into())
        )?;
        writeln!(
            f,
            "rollup rows       {} (sales_metrics, all grains)",
            self.rollup_rows
        )?;
        writeln!(
            f,
            "dashboard refresh = kpis + revenue_trend + category_performance + payment_mix + status_breakdown; median (max) of {} runs",
            self.repeat
        )?;
        writeln!(
            f,
            "{:<10} {:>22} {:>22} {:>22}",
            "range", "cold (cache empty)", "warm (Redis)", "plain GROUP BY"
        )?;
        for r in &self.ranges {
            let c = |t: &Timing| format!("{:.1} ms ({:.1})", t.median_ms, t.max_ms);
            writeln!(
                f,
                "{:<10} {:>22} {:>22} {:>22}",
                r.range,
                c(&r.cold),
                c(&r.warm),
                c(&r.group_by)
            )?;
        }
        writeln!(
            f,
            "loaders ({} raw transactions): rows {:.1} ms, COPY csv {:.1} ms (median)",
            self.loader_rows, self.loader_rows_mode.median_ms, self.loader_copy_mode.median_ms
        )?;
        write!(
            f,
            "shipped metrics, cold, one run each: pushed down (frames pushed, of them from rollups, rows loaded) | over loaded rows"
        )?;
        let t = |r: &Result<f64, String>| match r {
            Ok(ms) => format!("{ms:.0} ms"),
            Err(e) => {
                let short: String = e.chars().take(60).collect();
                format!("error: {short}")
            }
        };
        for m in &self.metrics {
            write!(
                f,
                "\n{:<30} {:<4} {:>9} ({}, {}, {:>7}) | {}",
                m.metric,
                m.range,
                t(&m.pushed),
                m.pushed_frames,
                m.from_rollups,
                m.pushed_rows_loaded,
                t(&m.loaded)
            )?;
        }
        Ok(())
    }
}

/// The bench database, loaded or reused.
pub(super) struct BenchData {
    /// Connected to it.
    pub(super) store: Store,
    /// Its name.
    pub(super) database: String,
    /// The server's URL (any database).
    pub(super) base_url: String,
    /// Seconds the load took (`None`: reused).
    pub(super) load_secs: Option<f64>,
    /// Keeps the embedded server up, when there is one.
    pub(super) _pg: Option<crate::store::EmbeddedPostgres>,
}

/// Loads the bench data into its database unless it holds it already.
pub(super) async fn prepare(
    cfg: &Config,
    opts: &AnalyticsBenchOptions,
) -> anyhow::Result<BenchData> {
    let (base_url, pg) = crate::services::database_url(cfg).await?;
    let db = opts
        .database
        .clone()
        .unwrap_or_else(|| "salespulse_analytics_bench".into());
    store::create_database_if_missing(&base_url, &db).await?;
    let url = store::with_database(&base_url, &db)?;
    // Loading runs statements of minutes at 10M rows.
    let store = Store::connect(&url, cfg.pg_pool_size.max(5), Duration::from_secs(3_600)).await?;
    store.migrate().await?;
    let pool = store.pool();
    let foreign: bool = sqlx::query_scalar(
        "SELECT to_regclass('bench_meta') IS NULL AND EXISTS (SELECT 1 FROM transactions)",
    )
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        !foreign,
        "database {db} holds transactions that no bench loaded; the bench replaces \
         everything in its database, so name another one with --database"
    );
    sqlx::query(BENCH_META).execute(pool).await?;
    sqlx::query("ALTER TABLE bench_meta ADD COLUMN IF NOT EXISTS loader int4")
        .execute(pool)
        .await?;
    let meta = sqlx::query("SELECT transactions, days, seed, loader FROM bench_meta")
        .fetch_optional(pool)
        .await?;
    let reusable = meta.as_ref().is_some_and(|r| {
        r.try_get::<i64, _>(0).ok() == Some(opts.transactions as i64)
            && r.try_get::<i32, _>(1).ok() == Some(opts.days as i32)
            && r.try_get::<i64, _>(2).ok() == Some(opts.seed as i64)
            && r.try_get::<Option<i32>, _>(3).ok() == Some(Some(LOADER_VERSION))
    });
    let load_secs = if reusable && !opts.reload {
        eprintln!("reusing the data loaded earlier in database {db}");
        // Loaded before the history's watermark became partition -1.
        sqlx::query("UPDATE ingest_watermarks SET partition = -1 WHERE topic = 'bench'")
            .execute(pool)
            .await?;
        // A table a later migration made (and filled) has no statistics yet.
        let unanalyzed: Vec<String> = sqlx::query_scalar(
            "SELECT quote_ident(relname) FROM pg_stat_user_tables
             WHERE last_analyze IS NULL AND last_autoanalyze IS NULL AND n_live_tup > 0",
        )
        .fetch_all(pool)
        .await?;
        for t in unanalyzed {
            sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {t}")))
                .execute(pool)
                .await?;
        }
        None
    } else {
        eprintln!(
            "loading {} transactions into database {db} ...",
            opts.transactions
        );
        let started = Instant::now();
        // Not reusable from here on, whatever happens to the load.
        sqlx::query("DELETE FROM bench_meta").execute(pool).await?;
        load(&store, opts).await.context("loading the bench data")?;
        let secs = started.elapsed().as_secs_f64();
        sqlx::query(BENCH_META).execute(pool).await?;
        sqlx::query(
            "INSERT INTO bench_meta (transactions, days, seed, load_secs, loader) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(opts.transactions as i64)
        .bind(opts.days as i32)
        .bind(opts.seed as i64)
        .bind(secs)
        .bind(LOADER_VERSION)
        .execute(pool)
        .await?;
        Some(secs)
    };
    Ok(BenchData {
        store,
        database: db,
        base_url,
        load_secs,
        _pg: pg,
    })
}

/// The ranges every figure is taken over.
const RANGES: [(&str, TimeRange); 3] = [
    ("24h", TimeRange::Last { minutes: 1_440 }),
    ("7d", TimeRange::Last { minutes: 7 * 1_440 }),
    ("all", TimeRange::All),
];

/// Loads (or reuses) the bench database and times dashboard refreshes and loaders.
pub async fn run(
    cfg: &Config,
    opts: &AnalyticsBenchOptions,
) -> anyhow::Result<AnalyticsBenchReport> {
    let data = prepare(cfg, opts).await?;
    let (store, load_secs) = (&data.store, data.load_secs);
    let pool = store.pool();

    let mut cache_cfg = cfg.clone();
    if cache_cfg.cache_ttl_secs == 0 {
        cache_cfg.cache_ttl_secs = 3_600;
    }
    let analytics = crate::services::analytics(&cache_cfg, store)?;
    anyhow::ensure!(
        analytics.cache().probe().await.error.is_none(),
        "the bench needs Redis at {} for its warm figures",
        crate::config::redact_url(&cfg.redis_url)
    );
    let versions = analytics.versions().await?;
    let (span_from, span_to): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        match sqlx::query("SELECT min(occurred_at), max(occurred_at) FROM transactions")
            .fetch_one(pool)
            .await
        {
            Ok(r) => (r.try_get(0)?, r.try_get(1)?),
            Err(e) => return Err(e.into()),
        };
    let rollup_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM sales_metrics")
        .fetch_one(pool)
        .await?;

    let mut ranges = Vec::new();
    for (name, range) in RANGES {
        let filters = Filters {
            range,
            ..Filters::default()
        };
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        for _ in 0..opts.repeat {
            analytics.cache().clear().await?;
            let t = Instant::now();
            let r = analytics.dashboard(&filters).await?;
            cold.push(t.elapsed());
            anyhow::ensure!(r.iter().all(|v| v.outcome == crate::cache::Outcome::Miss));
            let t = Instant::now();
            let r = analytics.dashboard(&filters).await?;
            warm.push(t.elapsed());
            anyhow::ensure!(r.iter().all(|v| v.outcome == crate::cache::Outcome::Hit));
        }
        let req = ViewRequest::new(ViewKind::Kpis).with_filters(filters.clone());
        let (span, g) = Analytics::resolve(&req, &versions);
        let mut group_by = Vec::new();
        for _ in 0..opts.repeat {
            let t = Instant::now();
            plain_group_by(pool, span, g).await?;
            group_by.push(t.elapsed());
        }
        ranges.push(RangeResult {
            range: name.into(),
            cold: Timing::of(cold),
            warm: Timing::of(warm),
            group_by: Timing::of(group_by),
        });
    }

    let loader_rows = opts.transactions.min(100_000);
    let mut req = ViewRequest::new(ViewKind::Transactions);
    req.limit = Some(loader_rows.max(1));
    let mut by_mode = Vec::new();
    for mode in [LoadMode::Rows, LoadMode::Copy] {
        let a = analytics.clone().with_load_mode(mode);
        let mut times = Vec::new();
        for _ in 0..opts.repeat {
            let t = Instant::now();
            let df = a
                .compute(&req, None, crate::analytics::Granularity::Day)
                .await?;
            times.push(t.elapsed());
            anyhow::ensure!(df.height() as u64 == loader_rows.max(1).min(opts.transactions));
        }
        by_mode.push(Timing::of(times));
    }
    let loader_copy_mode = by_mode.pop().context("copy timing")?;
    let loader_rows_mode = by_mode.pop().context("rows timing")?;
    let metrics = time_metrics(&analytics).await?;
    Ok(AnalyticsBenchReport {
        transactions: opts.transactions,
        span_from,
        span_to,
        load_secs,
        rollup_rows,
        ranges,
        loader_rows,
        loader_rows_mode,
        loader_copy_mode,
        metrics,
        repeat: opts.repeat,
    })
}

/// Every shipped metric over the three ranges, pushed down and not.
async fn time_metrics(analytics: &Analytics) -> anyhow::Result<Vec<MetricTiming>> {
    use crate::analytics::metrics::{Metric, BUILTIN_METRICS};
    let pushed = analytics.clone().with_pushdown(true);
    let loaded = analytics.clone().with_pushdown(false);
    let mut out = Vec::new();
    for (file, src) in BUILTIN_METRICS {
        let m =
            std::sync::Arc::new(Metric::compile(file, src).map_err(|e| anyhow::anyhow!("{e}"))?);
        for (name, range) in RANGES {
            let filters = Filters {
                range,
                ..Filters::default()
            };
            let time = |a: &Analytics| {
                let (a, m, filters) = (a.clone(), std::sync::Arc::clone(&m), filters.clone());
                async move {
                    // Cold: views a script reads are cached too.
                    a.cache().clear().await.map_err(|e| e.to_string())?;
                    let t = Instant::now();
                    a.run_script(m, &filters, None)
                        .await
                        .map(|_| t.elapsed().as_secs_f64() * 1e3)
                        .map_err(|e| e.to_string())
                }
            };
            let before = pushed.script_reads();
            let p = time(&pushed).await;
            let after = pushed.script_reads();
            let l = time(&loaded).await;
            out.push(MetricTiming {
                metric: file.trim_end_matches(".rhai").to_owned(),
                range: name.into(),
                pushed: p,
                pushed_frames: after.pushed - before.pushed,
                from_rollups: after.rollups - before.rollups,
                pushed_rows_loaded: after.rows - before.rows,
                loaded: l,
            });
        }
    }
    Ok(out)
}

/// The dashboard's aggregates straight from `transactions`, concurrently.
async fn plain_group_by(
    pool: &sqlx::PgPool,
    span: Option<crate::analytics::Span>,
    g: crate::analytics::Granularity,
) -> anyhow::Result<()> {
    let w = match span {
        Some(s) => format!(
            "occurred_at >= {} AND occurred_at < {}",
            crate::analytics::sql::ts(s.from),
            crate::analytics::sql::ts(s.to)
        ),
        None => "TRUE".into(),
    };
    let trunc = match g {
        crate::analytics::Granularity::Week => "week",
        crate::analytics::Granularity::Day => "day",
        crate::analytics::Granularity::Hour => "hour",
        _ => "minute",
    };
    let c = "FILTER (WHERE status = 'completed')";
    let queries = [
        format!(
            "SELECT sum(total_amount) {c}, count(*), count(*) {c}, sum(quantity) {c},
                    count(*) FILTER (WHERE status = 'refunded'), count(DISTINCT customer_id)
             FROM transactions WHERE {w}"
        ),
        format!(
            "SELECT date_trunc('{trunc}', occurred_at, 'UTC'), sum(total_amount) {c}, count(*),
                    count(*) {c}, sum(quantity) {c}
             FROM transactions WHERE {w} GROUP BY 1 ORDER BY 1"
        ),
        format!(
            "SELECT category, sum(total_amount) {c}, count(*), count(*) {c}, sum(quantity) {c}
             FROM transactions WHERE {w} GROUP BY 1"
        ),
        format!(
            "SELECT payment_method, count(*), count(*) {c},
                    count(*) FILTER (WHERE status = 'failed'), sum(total_amount) {c}
             FROM transactions WHERE {w} GROUP BY 1"
        ),
        format!(
            "SELECT status, count(*), sum(total_amount), sum(quantity)
             FROM transactions WHERE {w} GROUP BY 1"
        ),
    ];
    futures::future::try_join_all(
        queries
            .iter()
            .map(|q| sqlx::query(sqlx::AssertSqlSafe(q.clone())).fetch_all(pool)),
    )
    .await?;
    Ok(())
}

/// What the loader builds; a bench database loaded by another version is
/// loaded again (3: customers who arrive, come back and leave).
const LOADER_VERSION: i32 = 3;

/// What was loaded (a load starts with a fresh schema, so it is made again).
const BENCH_META: &str = "CREATE TABLE IF NOT EXISTS bench_meta \
    (transactions int8, days int4, seed int8, load_secs float8, loader int4)";

/// Generates and bulk-loads the data set; see the module docs.
async fn load(store: &Store, opts: &AnalyticsBenchOptions) -> anyhow::Result<()> {
    let pool = store.pool();
    // A fresh schema: whatever an interrupted load left (dropped keys and
    // indexes, half-loaded tables) goes, and every index the migrations
    // define is there to be dropped and built again below.
    sqlx::query("DROP SCHEMA public CASCADE")
        .execute(pool)
        .await?;
    sqlx::query("CREATE SCHEMA public").execute(pool).await?;
    store.migrate().await?;
    // Still marked as the bench's own, should this load be interrupted.
    sqlx::query(BENCH_META).execute(pool).await?;
    // Bulk load without the secondary indexes and the keys; rebuilt after.
    let raw = [
        ("transactions", "transaction_id"),
        ("sessions", "session_id"),
    ];
    let mut indexes: Vec<(String, String)> = Vec::new();
    for (table, _) in raw {
        indexes.extend(
            sqlx::query_as::<_, (String, String)>(
                "SELECT indexname::text, indexdef FROM pg_indexes WHERE tablename::text = $1 \
                 AND indexname::text <> $1 || '_pkey'",
            )
            .bind(table)
            .fetch_all(pool)
            .await?,
        );
    }
    for (name, _) in &indexes {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX {name}")))
            .execute(pool)
            .await?;
    }
    for (table, _) in raw {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {table} DROP CONSTRAINT {table}_pkey"
        )))
        .execute(pool)
        .await?;
    }

    // Sessions per hour so that N sales span `days` (about 0.28 orders per session).
    let params = GeneratorParams {
        sessions_per_hour: (opts.transactions as f64 / 0.28 / (f64::from(opts.days.max(1)) * 24.0))
            .max(1.0),
        ..GeneratorParams::builtin()
    };
    let start = Utc
        .with_ymd_and_hms(2026, 1, 5, 0, 0, 0)
        .single()
        .context("start time")?;
    let mut generator = Generator::new(params, opts.seed, Clock::Simulated(start))?;
    let target = opts.transactions;
    let (sales_tx, sales_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let (sessions_tx, sessions_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let mut product_names: HashMap<String, String> = HashMap::new();
        let (mut min_t, mut max_t) = (i64::MAX, i64::MIN);
        let mut made = 0u64;
        let mut batch = Batch::default();
        let send = |batch: &mut Batch| {
            let rows = CopyRows::of(&std::mem::take(batch));
            sales_tx.blocking_send(rows.transactions).is_ok()
                && sessions_tx.blocking_send(rows.sessions).is_ok()
        };
        while made < target {
            match generator.next_event() {
                Event::Sale(s) => {
                    made += 1;
                    let t = s.occurred_at.timestamp();
                    min_t = min_t.min(t);
                    max_t = max_t.max(t);
                    if !product_names.contains_key(&s.product_id) {
                        product_names.insert(s.product_id.clone(), s.product_name.clone());
                    }
                    batch.sales.push((s, 0, 0));
                }
                Event::Session(s) => batch.sessions.push((s, 0, 0)),
            }
            if batch.sales.len() + batch.sessions.len() >= 100_000 && !send(&mut batch) {
                break;
            }
        }
        send(&mut batch);
        (product_names, min_t, max_t)
    });
    let copy = move |table: &'static str,
                     columns: &'static str,
                     mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>| async move {
        let mut conn = pool.acquire().await?;
        let mut copy = conn
            .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN"))
            .await?;
        while let Some(buf) = rx.recv().await {
            copy.send(buf).await?;
        }
        copy.finish().await?;
        anyhow::Ok(())
    };
    let (sales, sessions) = tokio::join!(
        copy("transactions", TRANSACTION_COLUMNS, sales_rx),
        copy("sessions", SESSION_COLUMNS, sessions_rx)
    );
    sales?;
    sessions?;
    let (product_names, min_t, max_t) = producer.await?;
    anyhow::ensure!(min_t <= max_t, "no transactions generated");

    for (table, key) in raw {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {table} ADD PRIMARY KEY ({key})"
        )))
        .execute(pool)
        .await?;
    }
    for (_, def) in &indexes {
        sqlx::query(sqlx::AssertSqlSafe(def.clone()))
            .execute(pool)
            .await?;
    }

    // Product names are carried by events only: a rebuild keeps what the
    // table holds, so they go in first.
    let names: (Vec<String>, Vec<String>) = product_names.into_iter().unzip();
    sqlx::query(
        "INSERT INTO products (product_id, name, category, list_price, first_seen, last_seen)
         SELECT id, name, '', 0, now(), now() FROM UNNEST($1::text[], $2::text[]) AS p(id, name)",
    )
    .bind(names.0)
    .bind(names.1)
    .execute(pool)
    .await?;
    // Every derived table from the raw rows, as ingest defines them.
    store::rollups::rebuild(store).await?;

    let ts = |t: i64| DateTime::from_timestamp(t, 0).unwrap_or_default();
    // Loaded history, not a live partition (as the migration's row): a
    // negative partition, so it does not hold back the range that live
    // partitions have closed (see `Analytics::versions`).
    sqlx::query(
        "INSERT INTO ingest_watermarks (topic, partition, commits, late_commits, max_event_at,
             last_min_at)
         VALUES ('bench', -1, 1, 1, $1, $2)",
    )
    .bind(ts(max_t))
    .bind(ts(min_t))
    .execute(pool)
    .await?;
    for t in [
        "transactions",
        "sessions",
        "sales_metrics",
        "sales_metrics_lite",
        "session_metrics",
        "order_gaps",
        "order_gaps_daily",
        "order_gaps_daily_by",
        "customers",
        "products",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {t}")))
            .execute(pool)
            .await?;
    }
    Ok(())
}
