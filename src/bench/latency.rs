//! `salespulse bench latency`: event → commit latency at set rates.
//!
//! For each rate, the headless pipeline (`services::run`: generator on the
//! wall clock, producer, one ingest worker) runs for a warm-up and then a
//! measured span, into a scratch database that is dropped afterwards; the
//! ingest workers record, for every stored record, the time from the
//! event's own time (when the generator made it) to its batch's commit.
//! The warm-up (consumer join, first statements) is not counted.
//!
//! Then, per rate, event → **visible in the app's dashboard**: the app's own
//! backend (`ui::backend`, as the window runs it, with the default settings'
//! dashboard: last hour, auto-refresh) generates at that rate into a fresh
//! scratch database while the bench reads its dashboard updates as the
//! window would. A transaction is visible from the first dashboard the
//! backend sent whose refresh began after the transaction's offset was seen
//! committed (`ingest_offsets`, polled every 5 ms; the offset commits with
//! the rows); its latency runs from the event's time to that dashboard's
//! arrival. The 5 ms poll can only make the figure larger, never smaller.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::secrets::Keyring;
use crate::config::Config;
use crate::generator::{Clock, GeneratorParams};
use crate::pipeline::latency::{LatencyHistogram, LatencySummary};
use crate::services::{self, RunOptions};
use crate::store;
use crate::ui::backend::{BackendHandle, Command, Secrets, ServiceState, Update, Watch};
use crate::ui::settings::Settings;

/// What `bench latency` measures.
#[derive(Clone, Debug)]
pub struct LatencyBenchOptions {
    /// Events per second, one run each.
    pub rates: Vec<f64>,
    /// Seconds measured per rate.
    pub secs: u64,
    /// Seconds per rate before measuring.
    pub warmup: u64,
}

/// One rate's figures.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyCase {
    /// Events per second asked for.
    pub rate: f64,
    /// Events per second produced and committed, start-up to last commit.
    pub achieved: f64,
    /// Event → commit, after the warm-up.
    pub commit: LatencySummary,
    /// Event → shown in the app's dashboard (transactions), after the
    /// warm-up.
    pub visible: LatencySummary,
}

/// What `bench latency` found.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyBenchReport {
    /// Batch size limit in effect.
    pub batch_size: usize,
    /// Batch timeout in effect (the longest a record waits while the
    /// writer is busy), ms.
    pub batch_timeout_ms: u64,
    /// Seconds measured per rate.
    pub secs: u64,
    /// The dashboard's auto-refresh interval (the default settings'), s.
    pub refresh_secs: f64,
    /// One per rate.
    pub cases: Vec<LatencyCase>,
}

impl std::fmt::Display for LatencyBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "event → commit, {} s per rate after the warm-up; batch ≤ {} records, timeout {} ms",
            self.secs, self.batch_size, self.batch_timeout_ms
        )?;
        writeln!(
            f,
            "{:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "rate/s", "achieved", "to", "p50 ms", "p95 ms", "p99 ms", "max ms", "events"
        )?;
        for c in &self.cases {
            for (what, l) in [("commit", &c.commit), ("dashboard", &c.visible)] {
                writeln!(
                    f,
                    "{:>10.0} {:>10.0} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10}",
                    c.rate, c.achieved, what, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, l.count
                )?;
            }
        }
        writeln!(
            f,
            "dashboard: the app's backend at the default settings (auto-refresh every {} s, \
             and on committed data at most every {} ms)",
            self.refresh_secs,
            crate::ui::backend::LIVE_REFRESH_GAP.as_millis()
        )?;
        Ok(())
    }
}

/// Runs the pipeline at each rate into a scratch database (dropped after).
pub async fn run(cfg: &Config, opts: &LatencyBenchOptions) -> anyhow::Result<LatencyBenchReport> {
    anyhow::ensure!(!opts.rates.is_empty(), "no rate to measure");
    anyhow::ensure!(opts.secs > 0, "--secs must be at least 1");
    for r in &opts.rates {
        anyhow::ensure!(
            r.is_finite() && *r >= 1.0,
            "rate {r}: at least 1 event per second"
        );
    }
    let (base, _pg) = services::database_url(cfg).await?;
    let db = format!(
        "salespulse_latency_{}_{}",
        std::process::id(),
        Utc::now().timestamp()
    );
    store::create_database_if_missing(&base, &db).await?;
    let mut cfg = cfg.clone();
    cfg.database_url = Some(store::with_database(&base, &db)?);
    // Its own topics and group: never the configured ones, whose records
    // (and members) are someone's real data.
    let tag = db.trim_start_matches("salespulse_latency_");
    cfg.topic = format!("bench-latency-{tag}");
    cfg.dlq_topic = format!("bench-latency-dlq-{tag}");
    cfg.group_id = format!("bench-latency-{tag}");
    let result = cases(&cfg, opts).await;
    if let Err(e) = store::drop_database(&base, &db).await {
        tracing::warn!(error = %e, "could not drop bench database {db}");
    }
    let mut cases = result?;
    for (i, case) in cases.iter_mut().enumerate() {
        let db = format!("{db}_app{i}");
        store::create_database_if_missing(&base, &db).await?;
        let mut app_cfg = cfg.clone();
        app_cfg.database_url = Some(store::with_database(&base, &db)?);
        app_cfg.topic = format!("{}-app{i}", cfg.topic);
        app_cfg.dlq_topic = format!("{}-app{i}", cfg.dlq_topic);
        app_cfg.group_id = format!("{}-app{i}", cfg.group_id);
        eprintln!(
            "{:.0} events/s through the app's backend for {} s ...",
            case.rate,
            opts.warmup + opts.secs
        );
        let r = visible(&app_cfg, case.rate, opts).await;
        if let Err(e) = store::drop_database(&base, &db).await {
            tracing::warn!(error = %e, "could not drop bench database {db}");
        }
        case.visible = r.with_context(|| format!("the app at {} events/s", case.rate))?;
    }
    Ok(LatencyBenchReport {
        batch_size: cfg.batch_size,
        batch_timeout_ms: cfg.batch_timeout_ms,
        secs: opts.secs,
        refresh_secs: Settings::default().refresh_secs,
        cases,
    })
}

/// Event → visible in the dashboard of the app's backend at `rate`.
async fn visible(
    cfg: &Config,
    rate: f64,
    opts: &LatencyBenchOptions,
) -> anyhow::Result<LatencySummary> {
    // A scripts folder of its own: no metric tiles, the built-in shop.
    let scripts = std::env::temp_dir().join(format!(
        "salespulse-bench-scripts-{}-{}",
        std::process::id(),
        Utc::now().timestamp_micros()
    ));
    std::fs::create_dir_all(scripts.join("metrics")).context("a scripts folder")?;
    let mut cfg = cfg.clone();
    cfg.scripts_dir = Some(scripts.clone());
    let result = visible_in(&cfg, rate, opts).await;
    let _ = std::fs::remove_dir_all(&scripts);
    result
}

async fn visible_in(
    cfg: &Config,
    rate: f64,
    opts: &LatencyBenchOptions,
) -> anyhow::Result<LatencySummary> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(cfg.database_url.as_deref().unwrap_or_default())
        .await?;
    let settings = Settings::default();
    let every = settings
        .auto_refresh
        .then(|| Duration::from_secs_f64(settings.refresh_secs));
    let backend = BackendHandle::spawn(
        &tokio::runtime::Handle::current(),
        cfg.clone(),
        egui::Context::default(),
        Some(Some(rate)),
        Secrets {
            keyring: Keyring::in_memory(),
            keep: Vec::new(),
        },
    );
    // The measured span starts a warm-up after the services are open (the
    // embedded database and broker take seconds to start).
    let open_by = Utc::now() + chrono::Duration::seconds(120);
    let mut span: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    // A few seconds more, for the last events to show.
    let end = |span: &Option<(DateTime<Utc>, DateTime<Utc>)>| {
        span.map_or(open_by, |(_, to)| to + chrono::Duration::seconds(3))
    };
    let mut watching = false;
    // (arrival, as_of) of each dashboard sent; (seen at, partition, next offset).
    let mut shown: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    let mut offsets: HashMap<i32, Vec<(DateTime<Utc>, i64)>> = HashMap::new();
    let mut failure = None;
    while Utc::now() < end(&span) {
        while let Some(u) = backend.poll() {
            let now = Utc::now();
            match u {
                Update::Services(ServiceState::Ready { .. }) if !watching => {
                    watching = backend.send(Command::Watch(Watch {
                        seq: 1,
                        filters: settings.filters.clone(),
                        every,
                    }));
                    let from = now + chrono::Duration::seconds(opts.warmup as i64);
                    span = Some((from, from + chrono::Duration::seconds(opts.secs as i64)));
                }
                Update::Services(ServiceState::Failed(e)) => failure = Some(e),
                Update::Dashboard { result: Ok(d), .. } => {
                    if let Some(as_of) = d.as_of {
                        shown.push((now, as_of));
                    }
                }
                _ => {}
            }
        }
        if let Some(e) = failure {
            backend.shutdown(Duration::from_secs(10));
            anyhow::bail!("the app's services did not open: {e}");
        }
        let rows: Result<Vec<(i32, i64)>, _> = sqlx::query_as(
            // The app scopes its group to the embedded broker's incarnation:
            // the scratch database holds this run's only group.
            "SELECT partition, max(next_offset) FROM ingest_offsets WHERE topic = $1 GROUP BY partition",
        )
        .bind(&cfg.topic)
        .fetch_all(&pool)
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            // The backend creates the schema as it opens.
            Err(_) if !watching => Vec::new(),
            Err(e) => {
                tokio::task::spawn_blocking(move || backend.shutdown(Duration::from_secs(20)))
                    .await?;
                return Err(e.into());
            }
        };
        let seen = Utc::now();
        for (p, next) in rows {
            let o = offsets.entry(p).or_default();
            if o.last().is_none_or(|(_, n)| *n != next) {
                o.push((seen, next));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Stopping waits for the pipeline; done on a blocking thread.
    tokio::task::spawn_blocking(move || backend.shutdown(Duration::from_secs(20))).await?;
    let Some((measure_from, measure_to)) = span else {
        anyhow::bail!("the app's services did not open within 120 s");
    };
    let made: Vec<(DateTime<Utc>, i32, i64)> = sqlx::query_as(
        "SELECT occurred_at, kafka_partition, kafka_offset FROM transactions \
         WHERE occurred_at >= $1 AND occurred_at < $2 AND kafka_partition IS NOT NULL",
    )
    .bind(measure_from)
    .bind(measure_to)
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    anyhow::ensure!(
        !made.is_empty(),
        "no transaction was stored in the measured span"
    );
    let hist = LatencyHistogram::default();
    let mut unseen = 0u64;
    for (at, p, offset) in made {
        // Both lists only grow: offsets commit forward, refreshes follow
        // one another.
        let committed = offsets.get(&p).and_then(|o| {
            o.get(o.partition_point(|(_, next)| *next <= offset))
                .map(|(seen, _)| *seen)
        });
        let shown_at = committed.and_then(|c| {
            shown
                .get(shown.partition_point(|(_, as_of)| *as_of < c))
                .map(|(arrived, _)| *arrived)
        });
        match shown_at {
            Some(t) => hist.record_since(at, t),
            None => unseen += 1,
        }
    }
    anyhow::ensure!(
        unseen == 0,
        "{unseen} transactions of the measured span never showed on the dashboard"
    );
    Ok(hist.summary())
}

async fn cases(cfg: &Config, opts: &LatencyBenchOptions) -> anyhow::Result<Vec<LatencyCase>> {
    let mut out = Vec::new();
    for (i, rate) in opts.rates.iter().copied().enumerate() {
        let events = (rate * (opts.warmup + opts.secs) as f64).ceil() as u64;
        eprintln!("{rate:.0} events/s for {} s ...", opts.warmup + opts.secs);
        let report = services::run(
            cfg,
            RunOptions {
                events: Some(events),
                rate: Some(rate),
                seed: 1 + i as u64,
                workers: 1,
                clock: Clock::Wall,
                params: GeneratorParams::builtin(),
                scenarios: Vec::new(),
                http: None,
                measure_after: Duration::from_secs(opts.warmup),
                alerts: None,
                replay: None,
            },
        )
        .await
        .with_context(|| format!("the run at {rate} events/s"))?;
        out.push(LatencyCase {
            rate,
            achieved: report.events_per_sec(),
            commit: report.latency.unwrap_or_default(),
            visible: LatencySummary::default(),
        });
    }
    Ok(out)
}
