//! Views as Polars DataFrames, cached in Redis.
//!
//! [`Analytics::view`] is the one entry point the CLI, the HTTP server, the
//! desktop app and scripts use. A request is resolved (relative ranges end at
//! the newest ingested event, rounded to whole minutes), keyed, and answered
//! from the frame cache or computed from PostgreSQL (see `sql` for the SQL,
//! `load` for how rows become columns).
//!
//! ## Cache keys and invalidation
//! Ingest keeps per-partition watermarks in the same transaction as the rows
//! (`ingest_watermarks`). From them:
//! - `commits`: changes with every commit — the *data version*;
//! - `late`: changes only when a commit wrote rows older than its partition's
//!   newest event minus one hour (or a new partition appeared);
//! - `closed_until`: the oldest partition's newest event minus one hour. No
//!   on-time row can land before it.
//!
//! A frame whose range ends at or before `closed_until` is keyed on `late`
//! only, so it survives new data; any other frame is keyed on `commits` too
//! and is recomputed after the next commit. The versions are read before the
//! query, so a cached frame is never older than its key says.

pub mod export;
pub mod load;
pub mod metrics;
pub(crate) mod pushdown;
pub mod request;
pub mod script_host;
pub mod segments;
pub mod sql;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use polars::prelude::{DataFrame, PolarsError};
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::cache::{frame_key, FrameCache, Outcome};
pub use load::LoadMode;
pub use request::{Filters, Granularity, TimeRange, ViewKind, ViewRequest};
pub use sql::Span;

/// Bumped when a view's definition or columns change (part of every key).
pub(crate) const VIEW_VERSION: u32 = 1;

/// Why a view, metric or export failed.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    /// The request is invalid (an unknown view, a bad filter or range, …); says why.
    #[error("{0}")]
    BadRequest(String),
    /// The database failed (a query over the statement timeout says how
    /// to raise it).
    #[error("database: {}", sql_message(.0))]
    Sql(#[from] sqlx::Error),
    /// Building or transforming a frame failed.
    #[error("dataframe: {0}")]
    Polars(#[from] PolarsError),
    /// A file could not be written (exports), or a shared computation was lost.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A metric script failed: its error, with the line when known.
    #[error("{0}")]
    Script(crate::script::ScriptError),
    /// The error of a computation shared with other requests (single flight).
    #[error("{0}")]
    Shared(Arc<AnalyticsError>),
}

impl From<crate::cache::FlightLost> for Arc<AnalyticsError> {
    fn from(e: crate::cache::FlightLost) -> Self {
        Arc::new(AnalyticsError::Io(std::io::Error::other(e.0)))
    }
}

/// A database error as the user reads it: PostgreSQL's text, and for a
/// query cancelled by the statement timeout what to do about it.
fn sql_message(e: &sqlx::Error) -> String {
    // query_canceled: a statement timeout (the app sends no cancel
    // requests); by code, since the text follows the server's language.
    let cancelled = e
        .as_database_error()
        .is_some_and(|d| d.code().as_deref() == Some("57014"));
    if cancelled {
        format!(
            "{e}: the query ran longer than the statement timeout; narrow the range or \
             filters, or raise pg_statement_timeout_ms (in the app: Settings, Query \
             timeout; salespulse.toml; or SALESPULSE_PG_STATEMENT_TIMEOUT_MS; default 10 s)"
        )
    } else {
        e.to_string()
    }
}

impl AnalyticsError {
    /// Whether the caller's input was at fault (HTTP 400, exit code 2).
    pub fn is_bad_request(&self) -> bool {
        match self {
            AnalyticsError::BadRequest(_) | AnalyticsError::Script(_) => true,
            AnalyticsError::Shared(e) => e.is_bad_request(),
            _ => false,
        }
    }
}

/// The state of the data, read before every keyed request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DataVersions {
    /// The database's identity (several may share one Redis).
    pub database: String,
    /// Ingest commits, summed over partitions: the data version, changed by every
    /// commit.
    pub commits: i64,
    /// Commits that wrote rows older than their partition's newest event minus one
    /// hour (or added a partition).
    pub late: i64,
    /// No on-time row can land before this: the oldest partition's newest event
    /// minus one hour. `None` before any data.
    pub closed_until: Option<DateTime<Utc>>,
    /// The newest event ingested, where relative ranges end; `None` before any data.
    pub newest: Option<DateTime<Utc>>,
}

/// The values of each filterable dimension that occur in the data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dimensions {
    /// Product categories, sorted.
    pub categories: Vec<String>,
    /// Payment methods, sorted.
    pub payment_methods: Vec<String>,
    /// Regions (of sessions), sorted.
    pub regions: Vec<String>,
    /// Channels (of sessions), sorted.
    pub channels: Vec<String>,
    /// Order statuses, sorted.
    pub statuses: Vec<String>,
}

/// A view's frame and how it was obtained.
#[derive(Clone, Debug)]
pub struct ViewResult {
    /// The view asked for.
    pub view: ViewKind,
    /// Its rows.
    pub frame: DataFrame,
    /// How the cache answered (hit, miss or bypass).
    pub outcome: Outcome,
    /// Wall time of the request, cache included.
    pub elapsed: Duration,
    /// The resolved range (`None` = all data).
    pub span: Option<Span>,
    /// The granularity used (`revenue_trend`).
    pub granularity: Option<Granularity>,
    /// What identifies this frame (view, resolved filters, data version):
    /// equal tags, equal frames. The HTTP API sends it as the `ETag`.
    pub tag: String,
}

/// The newest migration (part of every key).
pub(crate) fn schema_version() -> i64 {
    crate::store::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// The dimension filters of a key (the range is keyed as its resolved span).
pub(crate) fn filters_key(f: &Filters) -> serde_json::Value {
    serde_json::json!({
        "categories": f.categories,
        "payment_methods": f.payment_methods,
        "regions": f.regions,
        "channels": f.channels,
        "statuses": f.statuses,
    })
}

/// Latency histogram bucket bounds, seconds (Prometheus style).
pub(crate) const LATENCY_BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Counters and latencies of one view since the process started.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ViewTimings {
    /// Computations against PostgreSQL.
    pub computations: u64,
    /// Requests answered, by how many fell into each [`LATENCY_BUCKETS`] bound.
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    /// Requests answered (failures not counted).
    pub count: u64,
    /// Total latency of the requests answered, in seconds.
    pub sum_secs: f64,
    /// Requests that failed.
    pub errors: u64,
}

#[derive(Default)]
struct Timings(Mutex<BTreeMap<&'static str, ViewTimings>>);

impl Timings {
    fn with(&self, view: ViewKind, f: impl FnOnce(&mut ViewTimings)) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(view.as_str()).or_default());
    }
}

/// The views over one database and frame cache. Cheap to clone (shared pool,
/// cache and timings).
#[derive(Clone)]
pub struct Analytics {
    pool: PgPool,
    /// One connection of its own for data-version reads, so that a request
    /// answered from the cache never queues behind computations.
    versions_pool: PgPool,
    cache: Arc<FrameCache>,
    mode: LoadMode,
    timings: Arc<Timings>,
    isolation: script_host::Isolation,
    /// Whether script frames may run in the database.
    pushdown: bool,
    reads: Arc<ReadCounters>,
    /// Data versions read this recently are used again (zero: read for
    /// every request); see [`Analytics::with_versions_every`].
    versions_every: Duration,
    /// The last versions read, and when the read began.
    last_versions: Arc<std::sync::Mutex<Option<(Instant, DataVersions)>>>,
    /// Held by the request reading them anew; holds the error of the last
    /// read when it failed (shared with the requests that waited for it).
    versions_turn: Arc<tokio::sync::Mutex<Option<Arc<AnalyticsError>>>>,
    /// Reads of them ended (either way), counted under `versions_turn`.
    versions_reads: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Default)]
struct ReadCounters {
    pushed: std::sync::atomic::AtomicU64,
    rollups: std::sync::atomic::AtomicU64,
    loads: std::sync::atomic::AtomicU64,
    rows: std::sync::atomic::AtomicU64,
}

/// How metric scripts have read raw tables since these views were made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScriptReads {
    /// Frames whose whole plan ran in PostgreSQL (only the answer loaded).
    pub pushed: u64,
    /// Of those, the ones answered from kept aggregates (the sales rollups,
    /// or the per-customer and per-product totals) instead of raw rows.
    pub rollups: u64,
    /// Raw-table loads (columns of rows, for Polars to work on).
    pub loads: u64,
    /// Rows those loads brought.
    pub rows: u64,
}

impl Analytics {
    /// Views over `pool`, cached in `cache`, loading rows by `mode`; metric
    /// scripts run in the default isolation (a child process).
    pub fn new(pool: PgPool, cache: Arc<FrameCache>, mode: LoadMode) -> Self {
        let versions_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            // No reaper task: this may be built outside a runtime. The one
            // connection is checked before each use (and reopened if dead).
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(pool.connect_options().as_ref().clone());
        Self {
            versions_pool,
            pool,
            cache,
            mode,
            timings: Arc::default(),
            isolation: script_host::Isolation::default(),
            pushdown: true,
            reads: Arc::default(),
            versions_every: Duration::ZERO,
            last_versions: Arc::default(),
            versions_turn: Arc::default(),
            versions_reads: Arc::default(),
        }
    }

    /// Reads the data versions at most once per `every` and answers from
    /// that read meanwhile: a frame over a range that reaches live data is
    /// then at most `every` (plus its computation) behind the committed
    /// data, and is computed at most once per `every` however many
    /// commits land, instead of once per commit. For the HTTP API, whose
    /// clients poll; zero (the default) reads them for every request.
    pub fn with_versions_every(mut self, every: Duration) -> Self {
        self.versions_every = every;
        self
    }

    /// Where metric scripts run (a child process with a memory cap, by
    /// default; see [`script_host`]).
    pub(crate) fn isolation(&self) -> &script_host::Isolation {
        &self.isolation
    }

    /// Lets (`true`, the default) or stops script frames running in the
    /// database (see [`crate::script::pushdown`]); off, every plan runs in
    /// Polars over loaded rows. For comparing the two.
    pub fn with_pushdown(mut self, on: bool) -> Self {
        self.pushdown = on;
        self
    }

    /// How metric scripts have read raw tables so far.
    pub fn script_reads(&self) -> ScriptReads {
        use std::sync::atomic::Ordering::Relaxed;
        ScriptReads {
            pushed: self.reads.pushed.load(Relaxed),
            rollups: self.reads.rollups.load(Relaxed),
            loads: self.reads.loads.load(Relaxed),
            rows: self.reads.rows.load(Relaxed),
        }
    }

    pub(crate) fn count_read(&self, pushed: bool, rollup: bool, rows: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if pushed {
            self.reads.pushed.fetch_add(1, Relaxed);
            self.reads.rollups.fetch_add(u64::from(rollup), Relaxed);
        } else {
            self.reads.loads.fetch_add(1, Relaxed);
            self.reads.rows.fetch_add(rows as u64, Relaxed);
        }
    }

    pub(crate) fn pushdown(&self) -> bool {
        self.pushdown
    }

    /// Runs metric scripts as `isolation` says.
    pub fn with_isolation(mut self, isolation: script_host::Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// A counter that moves when committed data may have changed (see
    /// [`crate::store::changes`]): wait on it to refresh at once rather
    /// than on a timer. Each call starts a listener of its own.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        crate::store::changes::listen(&self.pool)
    }

    /// The database pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The frame cache.
    pub fn cache(&self) -> &Arc<FrameCache> {
        &self.cache
    }

    /// How query results are loaded into frames.
    pub(crate) fn load_mode(&self) -> LoadMode {
        self.mode
    }

    /// Loads query results by `mode` instead.
    pub fn with_load_mode(mut self, mode: LoadMode) -> Self {
        self.mode = mode;
        self
    }

    /// Per-view computation counts and latencies.
    pub fn timings(&self) -> BTreeMap<&'static str, ViewTimings> {
        self.timings
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The data versions: one small query, or the last one's answer when
    /// it began less than [`Analytics::with_versions_every`] ago (or while
    /// another request reads them anew).
    pub async fn versions(&self) -> Result<DataVersions, AnalyticsError> {
        use std::sync::atomic::Ordering::{Acquire, Release};
        if self.versions_every.is_zero() {
            return self.read_versions().await;
        }
        let last = |this: &Self| {
            this.last_versions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        };
        if let Some((at, v)) = last(self) {
            if at.elapsed() < self.versions_every {
                return Ok(v);
            }
        }
        // One request reads them anew; the others answer from the last
        // read meanwhile (looked up once the reader is known, so the newest
        // stored) rather than queue for the same row — unless there is none
        // yet, or it is three intervals old (a slow or failing read): then
        // they wait for the read under way and take its outcome, success
        // or failure, rather than each read again in turn.
        let seen = self.versions_reads.load(Acquire);
        let mut turn = match self.versions_turn.try_lock() {
            Ok(turn) => turn,
            Err(_) => {
                if let Some((at, v)) = last(self) {
                    if at.elapsed() < self.versions_every.saturating_mul(3) {
                        return Ok(v);
                    }
                }
                self.versions_turn.lock().await
            }
        };
        if self.versions_reads.load(Acquire) != seen {
            // A read ended while this request waited.
            if let Some(e) = turn.as_ref() {
                return Err(AnalyticsError::Shared(Arc::clone(e)));
            }
            if let Some((_, v)) = last(self) {
                return Ok(v);
            }
        }
        if let Some((at, v)) = last(self) {
            if at.elapsed() < self.versions_every {
                return Ok(v);
            }
        }
        let began = Instant::now();
        let read = self.read_versions().await;
        // Under the turn: the outcome and the count change together.
        *turn = None;
        let out = match read {
            Ok(v) => {
                let mut slot = self.last_versions.lock().unwrap_or_else(|p| p.into_inner());
                if slot.as_ref().is_none_or(|(at, _)| *at < began) {
                    *slot = Some((began, v.clone()));
                }
                Ok(v)
            }
            Err(e) => {
                let e = Arc::new(e);
                *turn = Some(Arc::clone(&e));
                Err(AnalyticsError::Shared(e))
            }
        };
        self.versions_reads.fetch_add(1, Release);
        out
    }

    /// Reads of the data versions that [`Analytics::versions`] has made so
    /// far under an interval (see [`Analytics::with_versions_every`]),
    /// whether they succeeded or failed.
    pub fn versions_reads(&self) -> u64 {
        self.versions_reads
            .load(std::sync::atomic::Ordering::Acquire)
    }

    async fn read_versions(&self) -> Result<DataVersions, AnalyticsError> {
        let row = sqlx::query(
            "SELECT coalesce(sum(commits), 0)::int8, coalesce(sum(late_commits), 0)::int8,
                    min(max_event_at) FILTER (WHERE partition >= 0) - interval '1 hour',
                    max(max_event_at),
                    (SELECT min(id::text) FROM database_identity)
             FROM ingest_watermarks",
        )
        .fetch_one(&self.versions_pool)
        .await?;
        Ok(DataVersions {
            commits: row.try_get(0)?,
            late: row.try_get(1)?,
            closed_until: row.try_get(2)?,
            newest: row.try_get(3)?,
            database: row.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
        })
    }

    /// The range and granularity `req` means given the data's state.
    pub(crate) fn resolve(req: &ViewRequest, v: &DataVersions) -> (Option<Span>, Granularity) {
        let span = match &req.filters.range {
            TimeRange::All => None,
            TimeRange::Between { from, to } => Some(sql::minute_span(*from, *to)),
            TimeRange::Last { minutes } => {
                // One event with a clock ahead of ours must not push "the
                // last hour" past today's data.
                let now = Utc::now();
                let anchor = v.newest.map_or(now, |n| n.min(now));
                let to = sql::minute_span(anchor, anchor).from + chrono::Duration::minutes(1);
                Some(Span {
                    from: to - chrono::Duration::minutes(*minutes),
                    to,
                })
            }
        };
        let g = req
            .granularity
            .unwrap_or_else(|| Granularity::auto(span.map(|s| s.len())));
        (span, g)
    }

    /// The part of a key that tracks the data: a frame whose range ends
    /// before `closed_until` changes only with late commits.
    pub(crate) fn data_version_key(span: Option<Span>, v: &DataVersions) -> serde_json::Value {
        let closed = matches!((span, v.closed_until), (Some(s), Some(c)) if s.to <= c);
        if closed {
            serde_json::json!({ "late": v.late })
        } else {
            serde_json::json!({ "late": v.late, "commits": v.commits })
        }
    }

    /// What identifies a frame: the request as resolved, the schema, and the
    /// data version that can change it.
    fn key_material(
        req: &ViewRequest,
        span: Option<Span>,
        g: Granularity,
        v: &DataVersions,
    ) -> String {
        serde_json::json!({
            "database": v.database,
            "schema": schema_version(),
            "views": VIEW_VERSION,
            "view": req.view,
            "filters": filters_key(&req.filters),
            "span": span.map(|s| (s.from.timestamp(), s.to.timestamp())),
            "granularity": (req.view == ViewKind::RevenueTrend).then_some(g),
            "limit": req.effective_limit(),
            "offset": req.offset,
            "version": Self::data_version_key(span, v),
        })
        .to_string()
    }

    /// A view, from the cache when it holds it.
    pub async fn view(&self, req: &ViewRequest) -> Result<ViewResult, AnalyticsError> {
        let v = self.versions().await?;
        self.view_at(req, &v).await
    }

    /// The cache key of `req` under `v` (checked and resolved already).
    fn key_of(req: &ViewRequest, span: Option<Span>, g: Granularity, v: &DataVersions) -> String {
        frame_key(req.view.as_str(), &Self::key_material(req, span, g, v))
    }

    /// The tag ([`ViewResult::tag`]) that `req` would have under `v`,
    /// without computing or fetching it: a client that holds a frame with
    /// this tag holds exactly what [`Analytics::view_at`] would answer (a
    /// frame's key names its request and the data versions).
    pub(crate) fn tag_at(
        &self,
        req: &ViewRequest,
        v: &DataVersions,
    ) -> Result<String, AnalyticsError> {
        let mut req = req.clone();
        req.check()?;
        let (span, g) = Self::resolve(&req, v);
        Ok(crate::cache::frame_tag(&Self::key_of(&req, span, g, v)).to_owned())
    }

    /// A view under versions already read (one read serves a whole dashboard).
    pub(crate) async fn view_at(
        &self,
        req: &ViewRequest,
        v: &DataVersions,
    ) -> Result<ViewResult, AnalyticsError> {
        let started = Instant::now();
        let mut req = req.clone();
        req.check()?;
        let (span, g) = Self::resolve(&req, v);
        let key = Self::key_of(&req, span, g, v);
        let this = self.clone();
        let creq = req.clone();
        let ckey = key.clone();
        let result = self
            .cache
            .get_or_compute(req.view.as_str(), &key, move || async move {
                // Abandoned requests cannot pile up on the pool: at most the
                // cache's compute limit run at once.
                let _slot = this
                    .cache
                    .compute_slot::<Arc<AnalyticsError>>(&ckey)
                    .await?;
                this.compute(&creq, span, g).await.map_err(Arc::new)
            })
            .await;
        let elapsed = started.elapsed();
        match result {
            Ok((frame, outcome)) => {
                self.timings.with(req.view, |t| {
                    t.count += 1;
                    t.sum_secs += elapsed.as_secs_f64();
                    let secs = elapsed.as_secs_f64();
                    for (b, bound) in t.buckets.iter_mut().zip(LATENCY_BUCKETS) {
                        if secs <= bound {
                            *b += 1;
                        }
                    }
                });
                Ok(ViewResult {
                    view: req.view,
                    frame,
                    outcome,
                    elapsed,
                    span,
                    granularity: (req.view == ViewKind::RevenueTrend).then_some(g),
                    tag: crate::cache::frame_tag(&key).to_owned(),
                })
            }
            Err(e) => {
                self.timings.with(req.view, |t| t.errors += 1);
                Err(match Arc::try_unwrap(e) {
                    Ok(e) => e,
                    Err(shared) => AnalyticsError::Shared(shared),
                })
            }
        }
    }

    /// Computes `req` from PostgreSQL as the data stands now, bypassing the
    /// cache (what `--no-cache` asks for).
    pub async fn compute_uncached(&self, req: &ViewRequest) -> Result<DataFrame, AnalyticsError> {
        let v = self.versions().await?;
        let (span, g) = Self::resolve(req, &v);
        self.compute(req, span, g).await
    }

    /// Computes a view from PostgreSQL, bypassing the cache.
    pub async fn compute(
        &self,
        req: &ViewRequest,
        span: Option<Span>,
        g: Granularity,
    ) -> Result<DataFrame, AnalyticsError> {
        self.timings.with(req.view, |t| t.computations += 1);
        let q = sql::view_query(
            req.view,
            &req.filters,
            span,
            g,
            req.effective_limit(),
            req.offset,
        );
        if q.parts.is_empty() {
            return load::load(&self.pool, &q.sql, &q.columns, self.mode).await;
        }
        // Independent parts (e.g. the two periods of `kpis`) on separate
        // connections: on several cores they finish in the time of one.
        let frames = futures::future::try_join_all(
            q.parts
                .iter()
                .map(|sql| load::load(&self.pool, sql, &q.columns, self.mode)),
        )
        .await?;
        let mut frames = frames.into_iter();
        let mut df = frames.next().unwrap_or_default();
        for f in frames {
            df.vstack_mut(&f)?;
        }
        Ok(df)
    }

    /// The values of each dimension present in the data (for filter pickers),
    /// from the day-grain rollups (a few thousand rows however much data).
    pub(crate) async fn dimensions(&self) -> Result<Dimensions, AnalyticsError> {
        let rows = sqlx::query(
            "SELECT 0, category FROM sales_metrics_lite WHERE grain = 'day' GROUP BY 2
             UNION ALL
             SELECT 1, payment_method FROM sales_metrics_lite WHERE grain = 'day' GROUP BY 2
             UNION ALL
             SELECT 2, status FROM sales_metrics_lite WHERE grain = 'day' GROUP BY 2
             UNION ALL
             SELECT 3, region FROM session_metrics WHERE grain = 'day' GROUP BY 2
             UNION ALL
             SELECT 4, channel FROM session_metrics WHERE grain = 'day' GROUP BY 2",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut d = Dimensions::default();
        for r in &rows {
            let list = match r.try_get::<i32, _>(0)? {
                0 => &mut d.categories,
                1 => &mut d.payment_methods,
                2 => &mut d.statuses,
                3 => &mut d.regions,
                _ => &mut d.channels,
            };
            list.push(r.try_get(1)?);
        }
        for l in [
            &mut d.categories,
            &mut d.payment_methods,
            &mut d.statuses,
            &mut d.regions,
            &mut d.channels,
        ] {
            l.sort();
        }
        Ok(d)
    }

    /// The five views of a dashboard refresh, concurrently, under one read of
    /// the versions.
    pub async fn dashboard(&self, filters: &Filters) -> Result<Vec<ViewResult>, AnalyticsError> {
        let v = self.versions().await?;
        let reqs: Vec<ViewRequest> = ViewKind::DASHBOARD
            .iter()
            .map(|&k| ViewRequest::new(k).with_filters(filters.clone()))
            .collect();
        futures::future::try_join_all(reqs.iter().map(|r| self.view_at(r, &v))).await
    }
}
