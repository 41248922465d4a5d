//! `salespulse bench ingest`: the pipeline against a raw `COPY`.
//!
//! In one run, on a fresh database: N generated events are produced to a fresh
//! topic; the ingest workers consume, validate and write them (rows, rollups,
//! customers, products and offsets, exactly once), timed from worker start to
//! the last offset committed; then the same N events are loaded with a plain
//! `COPY` into identical tables (same columns, constraints and indexes), timed
//! alone. Prints both rates and their ratio.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{TimeZone, Utc};
use serde::Serialize;

use crate::bus::{EventProducer, ProducerConfig};
use crate::config::Config;
use crate::event::Event;
use crate::generator::{Clock, Generator, GeneratorParams};
use crate::pipeline::{
    join_workers, produce_loop, spawn_workers, wait_for_offsets, IngestSettings, IngestStats,
    EMBEDDED_BACKLOG_PER_PARTITION,
};
use crate::services::Services;
use crate::store::{self, Store};

/// What `bench ingest` produces and measures.
#[derive(Clone, Debug)]
pub struct IngestBenchOptions {
    /// Events to produce.
    pub events: u64,
    /// Ingest workers.
    pub workers: usize,
    /// Seed of the generator.
    pub seed: u64,
    /// Keep the bench database afterwards (for inspection).
    pub keep: bool,
    /// Stamp the events as a shop with this many events per second would
    /// (`None`: the built-in shop's own traffic, about one session a
    /// second, so 200,000 events span two days). Denser time fills fewer
    /// rollup buckets per event.
    pub event_rate: Option<f64>,
}

/// What `bench ingest` measured: the pipeline against a raw COPY of the same rows.
#[derive(Clone, Debug, Serialize)]
pub struct IngestBenchReport {
    /// Events produced.
    pub events: u64,
    /// Sales among them.
    pub sales: u64,
    /// Sessions among them.
    pub sessions: u64,
    /// Ingest workers.
    pub workers: usize,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Most records per ingest batch.
    pub batch_size: usize,
    /// Events per second of event time (`None`: the built-in shop's).
    pub event_rate: Option<f64>,
    /// Seconds to produce every event (not compared).
    pub produce_secs: f64,
    /// Seconds from the first record read to the last commit.
    pub pipeline_secs: f64,
    /// Seconds to COPY the same rows into identical tables.
    pub copy_secs: f64,
    /// Pipeline throughput.
    pub pipeline_events_per_sec: f64,
    /// COPY throughput.
    pub copy_rows_per_sec: f64,
    /// Pipeline time over COPY time.
    pub ratio: f64,
    /// Batches committed.
    pub batches: u64,
    /// Seconds spent in each ingest step, summed over workers and lanes
    /// (parallel lanes overlap, so the sum can exceed `pipeline_secs`).
    pub steps: Vec<(String, f64)>,
}

impl std::fmt::Display for IngestBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "events            {} ({} sales, {} sessions)",
            self.events, self.sales, self.sessions
        )?;
        writeln!(
            f,
            "setup             {} partitions, {} ingest worker(s), batch {}",
            self.partitions, self.workers, self.batch_size
        )?;
        match self.event_rate {
            Some(r) => writeln!(f, "event time        {r:.0} events/s (--event-rate)")?,
            None => writeln!(f, "event time        the built-in shop's traffic")?,
        }
        writeln!(
            f,
            "produce           {:.2} s ({:.0} events/s, not part of the comparison)",
            self.produce_secs,
            self.events as f64 / self.produce_secs
        )?;
        writeln!(f, "pipeline ingest   {:.2} s  {:>10.0} events/s  (decode, validate, rows + rollups + customers + products + offsets)", self.pipeline_secs, self.pipeline_events_per_sec)?;
        writeln!(f, "raw COPY          {:.2} s  {:>10.0} rows/s    (same rows, identical tables and indexes)", self.copy_secs, self.copy_rows_per_sec)?;
        writeln!(f, "ratio             {:.2} × COPY", self.ratio)?;
        write!(
            f,
            "steps             {} batches; summed over lanes:",
            self.batches
        )?;
        for (step, secs) in &self.steps {
            write!(f, " {step} {secs:.2} s")?;
        }
        Ok(())
    }
}

/// Produces `events` events of [`bench_generator`]`(seed, event_rate)` as fast as the
/// producer takes them, off the runtime's threads.
pub(super) async fn produce_bench_events(
    producer: &Arc<EventProducer>,
    seed: u64,
    events: u64,
    event_rate: Option<f64>,
) -> anyhow::Result<u64> {
    let p = Arc::clone(producer);
    tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut g = bench_generator(seed, event_rate)?;
        Ok(produce_loop(
            &mut g,
            &p,
            Some(events),
            None,
            &AtomicBool::new(false),
            None,
        )?)
    })
    .await?
}

/// The benches' generator: the built-in shop on a simulated clock from
/// 2026-01-05, so the same seed gives the same events; with `event_rate`,
/// its traffic scaled to about that many events per second of event time
/// (sessions and sales together).
fn bench_generator(seed: u64, event_rate: Option<f64>) -> anyhow::Result<Generator> {
    let start = Utc
        .with_ymd_and_hms(2026, 1, 5, 0, 0, 0)
        .single()
        .context("start time")?;
    let mut params = GeneratorParams::builtin();
    if let Some(rate) = event_rate {
        // About 0.29 sales per session in the built-in shop.
        params.sessions_per_hour = rate * 3_600.0 / 1.29;
    }
    let g = Generator::new(params, seed, Clock::Simulated(start));
    Ok(match event_rate {
        Some(rate) => g.with_context(|| format!("--event-rate {rate}: the shop it implies"))?,
        None => g?,
    })
}

/// Produces `opts.events` events to a fresh topic, ingests them into a fresh database and compares with COPY.
pub async fn ingest(cfg: &Config, opts: &IngestBenchOptions) -> anyhow::Result<IngestBenchReport> {
    if let Some(rate) = opts.event_rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--event-rate must be a positive number of events per second, not {rate}"
        );
    }
    let services = Services::resolve(cfg).await?;
    let tag = format!("{}_{}", std::process::id(), Utc::now().timestamp());
    let db = format!("salespulse_bench_{tag}");
    store::create_database_if_missing(&services.database_url, &db).await?;
    let url = store::with_database(&services.database_url, &db)?;
    let result = run(cfg, opts, &services, &url, &tag).await;
    if !opts.keep {
        if let Err(e) = store::drop_database(&services.database_url, &db).await {
            tracing::warn!(error = %e, "could not drop bench database {db}");
        }
    } else {
        eprintln!("bench database kept: {db}");
    }
    result
}

async fn run(
    base: &Config,
    opts: &IngestBenchOptions,
    services: &Services,
    url: &str,
    tag: &str,
) -> anyhow::Result<IngestBenchReport> {
    let mut cfg = base.clone();
    cfg.topic = format!("bench-events-{tag}");
    cfg.dlq_topic = format!("bench-events-dlq-{tag}");
    cfg.group_id = format!("bench-ingest-{tag}");
    if services.embedded_broker.is_some() {
        // The embedded broker holds ~5 MiB per partition; all N events are
        // produced before ingest starts, so spread them wide enough.
        let needed = opts.events.div_ceil(EMBEDDED_BACKLOG_PER_PARTITION) as i32;
        cfg.partitions = cfg.partitions.max(needed);
    }
    let store = Store::connect(
        url,
        cfg.pg_pool_size.max(opts.workers as u32 + 2),
        Duration::from_millis(cfg.pg_statement_timeout_ms.max(60_000)),
    )
    .await?;
    store.migrate().await?;
    services.ensure_topics(&cfg).await?;

    // 1. Produce the events (not part of the comparison).
    eprintln!("producing {} events…", opts.events);
    let producer = Arc::new(EventProducer::new(
        &ProducerConfig::from_config(&cfg, &services.brokers),
        &cfg.topic,
    )?);
    let t = Instant::now();
    let (events, seed) = (opts.events, opts.seed);
    let event_rate = opts.event_rate;
    produce_bench_events(&producer, seed, events, event_rate).await?;
    let produce_secs = t.elapsed().as_secs_f64();
    let targets = producer.stats().delivered_end_offsets();

    // 2. The pipeline (both timed phases start from a fresh checkpoint, so
    //    neither pays for the other's dirty pages).
    checkpoint(&store).await;
    eprintln!("ingesting through the pipeline…");
    let settings = IngestSettings::from_config(&cfg, &services.brokers);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(IngestStats::default());
    let t = Instant::now();
    let workers = spawn_workers(opts.workers, &settings, &store, &stop, &stats)?;
    let caught_up = wait_for_offsets(
        &store,
        &cfg.group_id,
        &cfg.topic,
        &targets,
        Duration::from_secs(3600),
    )
    .await;
    let pipeline_secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    join_workers(workers).await?;
    caught_up?;
    let sales = stats.sales.load(Ordering::Relaxed);
    let sessions = stats.sessions.load(Ordering::Relaxed);
    let skipped = stats.offsets_skipped.load(Ordering::Relaxed);
    let batches = stats.batches.load(Ordering::Relaxed);
    let steps = stats
        .steps
        .seconds()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    anyhow::ensure!(
        skipped == 0,
        "the broker dropped {skipped} records before ingest read them"
    );
    anyhow::ensure!(
        sales + sessions == opts.events,
        "pipeline wrote {} rows for {} events",
        sales + sessions,
        opts.events
    );

    // 3. Raw COPY of the same rows into identical tables.
    eprintln!("loading the same rows with COPY…");
    let rows = tokio::task::spawn_blocking(move || copy_rows(seed, events, event_rate)).await??;
    let mut conn = store.pool().acquire().await?;
    sqlx::query("CREATE TABLE copy_transactions (LIKE transactions INCLUDING ALL)")
        .execute(&mut *conn)
        .await?;
    sqlx::query("CREATE TABLE copy_sessions (LIKE sessions INCLUDING ALL)")
        .execute(&mut *conn)
        .await?;
    checkpoint(&store).await;
    let t = Instant::now();
    let mut copied = 0;
    for (table, columns, data) in [
        (
            "copy_transactions",
            store::TRANSACTION_COLUMNS,
            &rows.transactions,
        ),
        ("copy_sessions", store::SESSION_COLUMNS, &rows.sessions),
    ] {
        let sql = format!("COPY {table} ({columns}) FROM STDIN");
        let mut copy = conn.copy_in_raw(&sql).await?;
        copy.send(data.as_slice()).await?;
        copied += copy.finish().await?;
    }
    let copy_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        copied == opts.events,
        "COPY loaded {copied} rows for {} events",
        opts.events
    );

    let pipeline_rate = opts.events as f64 / pipeline_secs;
    let copy_rate = opts.events as f64 / copy_secs;
    Ok(IngestBenchReport {
        events: opts.events,
        sales,
        sessions,
        workers: opts.workers,
        partitions: cfg.partitions,
        batch_size: cfg.batch_size,
        event_rate: opts.event_rate,
        produce_secs,
        pipeline_secs,
        copy_secs,
        pipeline_events_per_sec: pipeline_rate,
        copy_rows_per_sec: copy_rate,
        ratio: pipeline_rate / copy_rate,
        batches,
        steps,
    })
}

/// Flushes dirty pages (needs superuser or pg_checkpoint; skipped otherwise).
async fn checkpoint(store: &Store) {
    if let Err(e) = sqlx::query("CHECKPOINT").execute(store.pool()).await {
        tracing::warn!(error = %e, "CHECKPOINT not allowed; timings may include checkpoint work");
    }
}

/// The COPY half's data: the same events the pipeline ingested, as the
/// text-format data `pg_dump` would write (the "dump and COPY";
/// ingest itself sends binary, which the server converts with less work).
fn copy_rows(seed: u64, events: u64, event_rate: Option<f64>) -> anyhow::Result<store::CopyRows> {
    let mut g = bench_generator(seed, event_rate)?;
    let mut batch = store::Batch::default();
    for i in 0..events as i64 {
        match g.next_event() {
            Event::Sale(s) => batch.sales.push((s, 0, i)),
            Event::Session(s) => batch.sessions.push((s, 0, i)),
        }
    }
    Ok(store::CopyRows::of(&batch))
}

/// What `bench generator` measured: one thread, simulated clock.
#[derive(Clone, Debug, Serialize)]
pub struct GeneratorBenchReport {
    /// Events made per run.
    pub events: u64,
    /// Building the shop (catalogue, and its existing customers simulated
    /// over its history) from its parameters, ms.
    pub build_ms: f64,
    /// Events made per second, each run.
    pub make_per_sec: Vec<f64>,
    /// Events made and encoded as the JSON the producer sends, each run.
    pub make_and_encode_per_sec: Vec<f64>,
    /// The same with every shipped scenario on (flash sale, payment outage,
    /// product launch, campaign, bad experience).
    pub with_scenarios_per_sec: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

impl std::fmt::Display for GeneratorBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "generator, one thread, {} events per run", self.events)?;
        writeln!(f, "  shop built in {:.1} ms", self.build_ms)?;
        for (what, v) in [
            ("make", &self.make_per_sec),
            ("make + JSON", &self.make_and_encode_per_sec),
            ("make + JSON, scenarios on", &self.with_scenarios_per_sec),
        ] {
            let runs: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
            writeln!(
                f,
                "  {what:<28} median {:>10.0} events/s  (runs: {})",
                median(v),
                runs.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Measures the generator on this thread: `repeat` runs of `events` events.
pub fn generator(
    params: GeneratorParams,
    events: u64,
    repeat: usize,
) -> anyhow::Result<GeneratorBenchReport> {
    let start = Utc
        .with_ymd_and_hms(2026, 3, 2, 0, 0, 0)
        .single()
        .context("start time")?;
    let t = Instant::now();
    let mut g = Generator::new(params.clone(), 1, Clock::Simulated(start))?;
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut make = Vec::new();
    let mut encode = Vec::new();
    let mut scenarios = Vec::new();
    let board = crate::generator::Switchboard::new();
    for s in crate::generator::behaviour::builtin_scenarios() {
        let s = s?;
        if crate::generator::check_scenario(&params, &s).is_ok() {
            board.switch_on(s);
        }
    }
    for run in 0..repeat {
        let t = Instant::now();
        let mut sales = 0u64;
        for _ in 0..events {
            if matches!(std::hint::black_box(g.next_event()), Event::Sale(_)) {
                sales += 1;
            }
        }
        make.push(events as f64 / t.elapsed().as_secs_f64());
        std::hint::black_box(sales);
        for (out, gen) in [(&mut encode, None), (&mut scenarios, Some(&board))] {
            let mut g = Generator::new(params.clone(), run as u64 + 2, Clock::Simulated(start))?;
            if let Some(b) = gen {
                g = g.with_switch(Arc::clone(b));
            }
            let t = Instant::now();
            let mut bytes = 0usize;
            for _ in 0..events {
                bytes += g.next_event().to_json().len();
            }
            std::hint::black_box(bytes);
            out.push(events as f64 / t.elapsed().as_secs_f64());
        }
    }
    Ok(GeneratorBenchReport {
        events,
        build_ms,
        make_per_sec: make,
        make_and_encode_per_sec: encode,
        with_scenarios_per_sec: scenarios,
    })
}
