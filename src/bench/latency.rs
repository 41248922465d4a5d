//! `salespulse bench latency`: event → commit latency at set rates.
//!
//! For each rate, the headless pipeline (`services::run`: generator on the
//! wall clock, producer, one ingest worker) runs for a warm-up and then a
//! measured span, into a scratch database that is dropped afterwards; the
//! ingest workers record, for every stored record, the time from the
//! event's own time (when the generator made it) to its batch's commit.
//! The warm-up (consumer join, first statements) is not counted.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;

use crate::config::Config;
use crate::generator::{Clock, GeneratorParams};
use crate::pipeline::latency::LatencySummary;
use crate::services::{self, RunOptions};
use crate::store;

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
            "{:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "rate/s", "achieved", "p50 ms", "p95 ms", "p99 ms", "max ms", "events"
        )?;
        for c in &self.cases {
            writeln!(
                f,
                "{:>10.0} {:>10.0} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10}",
                c.rate,
                c.achieved,
                c.commit.p50_ms,
                c.commit.p95_ms,
                c.commit.p99_ms,
                c.commit.max_ms,
                c.commit.count
            )?;
        }
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
    Ok(LatencyBenchReport {
        batch_size: cfg.batch_size,
        batch_timeout_ms: cfg.batch_timeout_ms,
        secs: opts.secs,
        cases: result?,
    })
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
            },
        )
        .await
        .with_context(|| format!("the run at {rate} events/s"))?;
        out.push(LatencyCase {
            rate,
            achieved: report.events_per_sec(),
            commit: report.latency.unwrap_or_default(),
        });
    }
    Ok(out)
}
