//! `salespulse bench scale`: ingest throughput with 1, 2, 4… `salespulse
//! ingest` processes sharing one consumer group on a durable out-of-process
//! broker (tansu on SQLite storage).
//!
//! For each process count, on a fresh database and a fresh topic: N
//! generated events are produced first (not timed), then that many ingest
//! processes are started together and timed from their start to the last
//! offset committed (start-up, group joins and rebalances included; with a
//! stagger, later processes join mid-stream and partitions move while
//! records are in flight). Each
//! process is then stopped with SIGTERM and reports what it stored; the
//! bench checks that every event was stored exactly once (stored rows =
//! events, the processes' shares add up to the events, the derived tables
//! agree with the raw rows).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::chaos::{find_tansu, ingest_command, log_file, Broker, Proc, TempDir};
use crate::bus::{self, EventProducer, ProducerConfig};
use crate::config::Config;
use crate::pipeline::wait_for_offsets;
use crate::services::Services;
use crate::store::{self, Store};

/// What `bench scale` runs.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    /// Events per run.
    pub events: u64,
    /// Process counts, one run each.
    pub processes: Vec<usize>,
    /// Partitions of each run's topic.
    pub partitions: i32,
    /// Seed of the generator (the same events in every run).
    pub seed: u64,
    /// The tansu binary (default: TANSU_BIN, ~/.cargo/bin/tansu, tansu).
    pub tansu: Option<PathBuf>,
    /// The salespulse binary the processes run (default: this one).
    pub salespulse: Option<PathBuf>,
    /// Time between process starts: 0 starts them together; more makes
    /// each later one join mid-stream, so partitions move while records
    /// are in flight (a rebalance per join).
    pub stagger: Duration,
}

/// What one ingest process stored.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProcessShare {
    /// Sales it wrote.
    pub sales: u64,
    /// Sessions it wrote.
    pub sessions: u64,
    /// Records it skipped as already stored (redelivered after a rebalance).
    pub duplicates: u64,
}

impl ProcessShare {
    /// Parses the line `salespulse ingest` prints when it stops.
    fn parse(line: &str) -> Option<Self> {
        // "ingested 12 sales and 3 sessions (0 duplicates skipped, 0 dead-lettered)"
        let nums: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        match (line.starts_with("ingested "), nums.as_slice()) {
            (true, [sales, sessions, duplicates, _dead]) => Some(Self {
                sales: *sales,
                sessions: *sessions,
                duplicates: *duplicates,
            }),
            _ => None,
        }
    }
}

/// One run: `processes` ingest processes.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleRun {
    /// Ingest processes in the group.
    pub processes: usize,
    /// Seconds from their start to the last offset committed.
    pub secs: f64,
    /// Events stored per second, all processes together.
    pub events_per_sec: f64,
    /// Throughput against the run with the fewest processes.
    pub speedup: f64,
    /// What each process stored.
    pub shares: Vec<ProcessShare>,
    /// Events not stored (must be 0).
    pub lost: u64,
    /// Events written by more than one process (must be 0).
    pub doubled: u64,
}

/// What `bench scale` measured.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    /// Events per run.
    pub events: u64,
    /// Partitions of each topic.
    pub partitions: i32,
    /// CPU cores of this machine (processes beyond them share cores).
    pub cores: usize,
    /// Milliseconds between process starts.
    pub stagger_ms: u64,
    /// The runs, in the order asked.
    pub runs: Vec<ScaleRun>,
}

impl std::fmt::Display for ScaleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} events per run, {} partitions, tansu on SQLite storage, {} CPU cores, \
             processes started {}",
            self.events,
            self.partitions,
            self.cores,
            if self.stagger_ms == 0 {
                "together".to_owned()
            } else {
                format!("{} ms apart", self.stagger_ms)
            }
        )?;
        writeln!(
            f,
            "{:>9} {:>9} {:>10} {:>8}  {:<40} {:>5} {:>7}",
            "processes",
            "seconds",
            "events/s",
            "speedup",
            "share of events (duplicates skipped)",
            "lost",
            "doubled"
        )?;
        for r in &self.runs {
            let total: u64 = r.shares.iter().map(|s| s.sales + s.sessions).sum();
            let shares = r
                .shares
                .iter()
                .map(|s| {
                    let pct = 100.0 * (s.sales + s.sessions) as f64 / total.max(1) as f64;
                    format!("{pct:.0}% ({})", s.duplicates)
                })
                .collect::<Vec<_>>()
                .join(" ");
            writeln!(
                f,
                "{:>9} {:>9.2} {:>10.0} {:>7.2}x  {:<40} {:>5} {:>7}",
                r.processes, r.secs, r.events_per_sec, r.speedup, shares, r.lost, r.doubled
            )?;
        }
        Ok(())
    }
}

/// Runs the bench: one tansu broker, a scratch database per run on the
/// configured (or embedded) PostgreSQL.
pub async fn run(cfg: &Config, opts: &ScaleOptions) -> anyhow::Result<ScaleReport> {
    if opts.processes.is_empty() || opts.processes.contains(&0) {
        bail!("--processes takes counts of 1 or more");
    }
    if !(1..=1_000).contains(&opts.partitions) {
        bail!("--partitions must be between 1 and 1000");
    }
    // Its own tansu speaks plaintext, whatever the user's Kafka wants.
    bus::set_security(Vec::new());
    let mut pg_cfg = cfg.clone();
    // Only PostgreSQL comes from the configuration: the broker is ours.
    pg_cfg.kafka_brokers = Some("127.0.0.1:9".into());
    let services = Services::resolve(&pg_cfg).await?;
    let server = services.database_url.clone();
    let work = TempDir::new("salespulse-scale")?;
    let tansu = find_tansu(opts.tansu.as_deref());
    let dir = work.path().join("tansu");
    let broker = tokio::task::spawn_blocking(move || Broker::start(tansu, dir)).await??;
    let exe = match &opts.salespulse {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the salespulse binary")?,
    };
    let result = run_all(cfg, opts, &server, &broker.brokers(), &exe, work.path()).await;
    drop(broker);
    drop(services);
    match result {
        Ok(runs) => Ok(ScaleReport {
            events: opts.events,
            partitions: opts.partitions,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stagger_ms: u64::try_from(opts.stagger.as_millis()).unwrap_or(u64::MAX),
            runs,
        }),
        Err(e) => {
            // The processes' and the broker's logs, to be looked at.
            let dir = work.path().to_owned();
            work.keep();
            Err(e.context(format!("logs kept in {}", dir.display())))
        }
    }
}

/// One run per process count, each on its own scratch database.
async fn run_all(
    cfg: &Config,
    opts: &ScaleOptions,
    server: &str,
    brokers: &str,
    exe: &Path,
    work: &Path,
) -> anyhow::Result<Vec<ScaleRun>> {
    let mut runs: Vec<ScaleRun> = Vec::new();
    for &n in &opts.processes {
        let tag = format!(
            "{}_{}_{n}",
            std::process::id(),
            chrono::Utc::now().timestamp()
        );
        let db = format!("salespulse_scale_{tag}");
        store::create_database_if_missing(server, &db).await?;
        let url = store::with_database(server, &db)?;
        let result = one_run(cfg, opts, n, &tag, &url, brokers, exe, work).await;
        if let Err(e) = store::drop_database(server, &db).await {
            tracing::warn!(error = %e, "could not drop bench database {db}");
        }
        let mut run = result?;
        run.speedup = runs
            .first()
            .map_or(1.0, |first| run.events_per_sec / first.events_per_sec);
        eprintln!(
            "{n} process(es): {:.0} events/s in {:.2} s",
            run.events_per_sec, run.secs
        );
        runs.push(run);
    }
    Ok(runs)
}

#[allow(clippy::too_many_arguments)]
async fn one_run(
    base: &Config,
    opts: &ScaleOptions,
    n: usize,
    tag: &str,
    url: &str,
    brokers: &str,
    exe: &Path,
    work: &Path,
) -> anyhow::Result<ScaleRun> {
    let mut cfg = base.clone();
    cfg.kafka_brokers = Some(brokers.to_owned());
    cfg.topic = format!("scale-events-{tag}");
    cfg.dlq_topic = format!("scale-events-dlq-{tag}");
    cfg.group_id = format!("scale-ingest-{tag}");
    cfg.partitions = opts.partitions;
    let store = Store::connect(url, 4, Duration::from_secs(60)).await?;
    store.migrate().await?;
    bus::ensure_topics(
        brokers,
        &[
            (cfg.topic.as_str(), cfg.partitions),
            (cfg.dlq_topic.as_str(), cfg.partitions),
        ],
        1,
    )
    .await?;

    eprintln!("{n} process(es): producing {} events…", opts.events);
    let producer = Arc::new(EventProducer::new(
        &ProducerConfig::from_config(&cfg, brokers),
        &cfg.topic,
    )?);
    let events = opts.events;
    super::pipeline::produce_bench_events(&producer, opts.seed, events, None).await?;
    let targets = producer.stats().delivered_end_offsets();
    drop(producer);

    let dir = work.join(tag);
    std::fs::create_dir_all(&dir)?;
    let env = [
        ("KAFKA_BROKERS", brokers.to_owned()),
        ("DATABASE_URL", url.to_owned()),
        ("SALESPULSE_TOPIC", cfg.topic.clone()),
        ("SALESPULSE_DLQ_TOPIC", cfg.dlq_topic.clone()),
        ("SALESPULSE_GROUP_ID", cfg.group_id.clone()),
        ("SALESPULSE_PARTITIONS", cfg.partitions.to_string()),
        ("SALESPULSE_INGEST_PARTITIONS", "group".to_owned()),
    ];
    eprintln!("{n} process(es): ingesting…");
    let started = Instant::now();
    let mut procs = Vec::with_capacity(n);
    for i in 0..n {
        if i > 0 && !opts.stagger.is_zero() {
            tokio::time::sleep(opts.stagger).await;
        }
        let mut c = ingest_command(exe, &dir, &env);
        c.stdout(log_file(&dir, &format!("ingest-{i}.out"))?)
            .stderr(log_file(&dir, &format!("ingest-{i}.log"))?);
        procs.push(Proc::new(c.spawn().context("starting salespulse ingest")?));
    }
    // Stored everything, or a process died (then it never will).
    let caught_up = tokio::select! {
        r = wait_for_offsets(
            &store,
            &cfg.group_id,
            &cfg.topic,
            &targets,
            Duration::from_secs(3600),
        ) => r,
        i = async {
            loop {
                if let Some(i) = procs.iter_mut().position(|p| p.exited()) {
                    break i;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        } => Err(anyhow::anyhow!("ingest process {i} exited before storing everything")),
    };
    let secs = started.elapsed().as_secs_f64();
    tokio::task::spawn_blocking(move || {
        for p in &mut procs {
            p.terminate(Duration::from_secs(20));
        }
    })
    .await?;
    caught_up.with_context(|| {
        format!(
            "{n} ingest process(es) did not store every event; their logs: {}",
            dir.display()
        )
    })?;
    let mut shares = Vec::with_capacity(n);
    for i in 0..n {
        let out = std::fs::read_to_string(dir.join(format!("ingest-{i}.out")))?;
        let share = out.lines().find_map(ProcessShare::parse).with_context(|| {
            format!(
                "ingest process {i} did not report what it stored: {:?}; log {}",
                out,
                dir.join(format!("ingest-{i}.log")).display()
            )
        })?;
        shares.push(share);
    }

    let stored: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM transactions) + (SELECT count(*) FROM sessions)",
    )
    .fetch_one(store.pool())
    .await?;
    let stored = u64::try_from(stored).unwrap_or(0);
    let written: u64 = shares.iter().map(|s| s.sales + s.sessions).sum();
    let lost = events.saturating_sub(stored);
    let doubled = written.saturating_sub(stored) + stored.saturating_sub(events);
    let mismatches = store::rollups::verify(&store).await?;
    if !mismatches.is_empty() {
        bail!(
            "the derived tables disagree with the raw rows after {n} process(es): {mismatches:?}"
        );
    }
    if lost > 0 || doubled > 0 || written != events {
        bail!(
            "{n} process(es): {events} events, {stored} stored, {written} written by the processes \
             ({lost} lost, {doubled} doubled)"
        );
    }
    store.pool().close().await;
    Ok(ScaleRun {
        processes: n,
        secs,
        events_per_sec: events as f64 / secs,
        speedup: 1.0,
        shares,
        lost,
        doubled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ingest_report_line_parses() {
        assert_eq!(
            ProcessShare::parse(
                "ingested 120 sales and 33 sessions (4 duplicates skipped, 0 dead-lettered)"
            ),
            Some(ProcessShare {
                sales: 120,
                sessions: 33,
                duplicates: 4
            })
        );
        assert_eq!(ProcessShare::parse("waiting for the services"), None);
    }
}
