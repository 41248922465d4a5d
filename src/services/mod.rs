//! The wiring layer, on top of everything but the app and the command
//! line: resolves the services (embedded or configured), builds telemetry
//! and health targets once, and runs the headless pipeline (`run`), the
//! ingest command, the HTTP server and the app's live pipeline
//! ([`live`]).

pub mod alerts;
pub mod live;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::analytics::{Analytics, LoadMode};
use crate::api::{self, ApiState, HealthTargets, Telemetry};
use crate::bus::{self, EmbeddedBroker, EventProducer, ProducerConfig};
use crate::cache::FrameCache;
use crate::config::{redact_url, Config};
use crate::generator::{Clock, Generator, GeneratorParams, Scenario, Switchboard};
use crate::pipeline::lag::LagSource;
use crate::pipeline::latency::LatencySummary;
use crate::pipeline::{
    produce_loop, replay_loop, wait_for_offsets, Backpressure, IngestSettings, IngestStats,
    Workers, EMBEDDED_BACKLOG_PER_PARTITION,
};
use crate::store::{EmbeddedPostgres, Store};

/// The services a command talks to, started in-process when not configured.
pub struct Services {
    /// Kafka bootstrap servers (the embedded broker's when it runs).
    pub brokers: String,
    /// PostgreSQL connection URL (the embedded cluster's when it runs).
    pub database_url: String,
    /// The in-process mock cluster, when `KAFKA_BROKERS` is not set.
    pub embedded_broker: Option<EmbeddedBroker>,
    /// The private PostgreSQL cluster, when `DATABASE_URL` is not set.
    pub embedded_pg: Option<EmbeddedPostgres>,
}

impl Services {
    /// Uses `KAFKA_BROKERS` / `DATABASE_URL` when set; otherwise starts an
    /// in-process mock cluster and/or the private PostgreSQL cluster.
    pub(crate) async fn resolve(cfg: &Config) -> anyhow::Result<Self> {
        let (brokers, embedded_broker) = match &cfg.kafka_brokers {
            Some(b) => (b.clone(), None),
            None => {
                let broker =
                    EmbeddedBroker::start(1).context("starting the embedded Kafka broker")?;
                tracing::info!(
                    bootstrap = broker.bootstrap_servers(),
                    "embedded Kafka (mock cluster) started"
                );
                (broker.bootstrap_servers().to_owned(), Some(broker))
            }
        };
        let (database_url, embedded_pg) = match &cfg.database_url {
            Some(u) => (u.clone(), None),
            None => {
                let pg = EmbeddedPostgres::ensure(cfg.data_dir.as_deref(), cfg.embedded_pg_port)
                    .await
                    .context("starting the embedded PostgreSQL")?;
                tracing::info!(dir = %pg.data_dir.display(), port = pg.port, "embedded PostgreSQL ready");
                (pg.url.clone(), Some(pg))
            }
        };
        Ok(Self {
            brokers,
            database_url,
            embedded_broker,
            embedded_pg,
        })
    }

    /// The config to run with: with the embedded broker, whose topics start
    /// empty at every start, the consumer group is suffixed with the broker's
    /// incarnation so that offsets stored by earlier runs are not applied to
    /// a new, unrelated log.
    pub(crate) fn scoped(&self, cfg: &Config) -> Config {
        let mut cfg = cfg.clone();
        if let Some(b) = &self.embedded_broker {
            cfg.group_id = format!("{}-{}", cfg.group_id, b.incarnation());
        }
        cfg
    }

    /// Connects and migrates the store, and creates the topics if missing.
    pub(crate) async fn prepare(&self, cfg: &Config) -> anyhow::Result<Store> {
        let store = Store::connect(
            &self.database_url,
            cfg.pg_pool_size,
            Duration::from_millis(cfg.pg_statement_timeout_ms),
        )
        .await
        .with_context(|| format!("connecting to {}", redact_url(&self.database_url)))?;
        store.migrate().await.context("applying migrations")?;
        self.ensure_topics(cfg).await?;
        Ok(store)
    }

    /// What `/health` checks: these services and the configured Redis.
    pub(crate) fn health_targets(&self, cfg: &Config) -> HealthTargets {
        HealthTargets {
            kafka_brokers: Some(self.brokers.clone()),
            database_url: Some(self.database_url.clone()),
            redis_url: Some(cfg.redis_url.clone()),
        }
    }

    /// Where the consumer group's lag is read from.
    pub(crate) fn lag_source(&self, cfg: &Config, store: &Store) -> LagSource {
        LagSource {
            brokers: self.brokers.clone(),
            topic: cfg.topic.clone(),
            group: cfg.group_id.clone(),
            store: store.clone(),
        }
    }

    /// What `/metrics` reports without a producer or ingest in this
    /// process: the analytics layer (its cache) and the group's lag. A
    /// process that produces or ingests adds its counters.
    pub fn telemetry(&self, cfg: &Config, store: &Store) -> anyhow::Result<Telemetry> {
        let pool = store.pool().options().get_max_connections() as usize;
        Ok(Telemetry {
            // Clients poll: one read of the data versions serves them all
            // for `api_refresh_ms`, and a few computations at a time leave
            // the rest of the machine to ingest.
            analytics: Some(
                analytics_computing(cfg, store, api_compute_limit(cfg, pool))?
                    .with_versions_every(Duration::from_millis(cfg.api_refresh_ms)),
            ),
            lag: Some(self.lag_source(cfg, store)),
            ..Telemetry::default()
        })
    }

    /// Creates the topic and its dead-letter topic where missing.
    pub async fn ensure_topics(&self, cfg: &Config) -> anyhow::Result<()> {
        let topics = [
            (cfg.topic.as_str(), cfg.partitions),
            (cfg.dlq_topic.as_str(), cfg.partitions),
        ];
        match &self.embedded_broker {
            Some(b) => {
                for (t, p) in topics {
                    b.create_topic(t, p)?;
                }
            }
            None => bus::ensure_topics(&self.brokers, &topics, cfg.replication_factor)
                .await
                .with_context(|| format!("creating topics on {}", self.brokers))?,
        }
        Ok(())
    }
}

/// Connects to `DATABASE_URL` (or the embedded PostgreSQL, started if
/// needed) and applies migrations. Keep the returned handle alive as long as
/// the store is used.
pub async fn open_store(cfg: &Config) -> anyhow::Result<(Store, Option<EmbeddedPostgres>)> {
    let (url, embedded) = database_url(cfg).await?;
    let store = Store::connect(
        &url,
        cfg.pg_pool_size,
        Duration::from_millis(cfg.pg_statement_timeout_ms),
    )
    .await
    .with_context(|| format!("connecting to {}", redact_url(&url)))?;
    store.migrate().await.context("applying migrations")?;
    Ok((store, embedded))
}

/// `DATABASE_URL`, or the embedded PostgreSQL's (started if needed).
pub async fn database_url(cfg: &Config) -> anyhow::Result<(String, Option<EmbeddedPostgres>)> {
    Ok(match &cfg.database_url {
        Some(u) => (u.clone(), None),
        None => {
            let pg = EmbeddedPostgres::ensure(cfg.data_dir.as_deref(), cfg.embedded_pg_port)
                .await
                .context("starting the embedded PostgreSQL")?;
            (pg.url.clone(), Some(pg))
        }
    })
}

/// The analytics layer over `store`, cached in the configured Redis.
pub fn analytics(cfg: &Config, store: &Store) -> anyhow::Result<Analytics> {
    // One connection stays free for other reads (health checks, exports);
    // data versions are read on a connection of their own.
    let pool = store.pool().options().get_max_connections() as usize;
    analytics_computing(cfg, store, pool.saturating_sub(1))
}

/// Views the HTTP API computes at once: `api_compute_limit`, or one per
/// CPU core when it is 0; never more than `pool` less one (a connection
/// stays free for health checks and version reads).
pub fn api_compute_limit(cfg: &Config, pool: usize) -> usize {
    let wanted = match cfg.api_compute_limit {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    wanted.min(pool.saturating_sub(1)).max(1)
}

/// [`analytics`] computing at most `limit` views at once.
fn analytics_computing(cfg: &Config, store: &Store, limit: usize) -> anyhow::Result<Analytics> {
    let cache = FrameCache::new_in(
        &cfg.redis_url,
        Duration::from_secs(cfg.cache_ttl_secs),
        cfg.data_dir.as_deref(),
    )
    .with_context(|| format!("redis_url {}", redact_url(&cfg.redis_url)))?
    .with_compute_limit(limit);
    Ok(Analytics::new(
        store.pool().clone(),
        Arc::new(cache),
        LoadMode::default(),
    ))
}

/// Events per second when nothing says otherwise (the app and `run`
/// without `--events`).
pub(crate) const DEFAULT_RATE: f64 = 500.0;

/// The rate `run` uses: the one given when positive; as fast as possible
/// when 0 is given or a number of events is (a backfill);
/// [`DEFAULT_RATE`] otherwise.
pub fn default_rate(rate: Option<f64>, events: Option<u64>) -> Option<f64> {
    match (rate, events) {
        (Some(r), _) if r > 0.0 => Some(r),
        (Some(_), _) | (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_RATE),
    }
}

/// What the headless pipeline ([`run`]) does.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Stop after producing this many events (`None`: until Ctrl-C).
    pub events: Option<u64>,
    /// Events per second (`None`: as fast as possible).
    pub rate: Option<f64>,
    /// Seed of the generated behaviour.
    pub seed: u64,
    /// Ingest workers in this process.
    pub workers: usize,
    /// Wall clock, or a simulated one (a backfill).
    pub clock: Clock,
    /// The shop the generator simulates.
    pub params: GeneratorParams,
    /// Scenarios on from the start.
    pub scenarios: Vec<Scenario>,
    /// Serve the HTTP API (with this run's `/metrics`) on this address.
    pub http: Option<String>,
    /// Event → commit latency counts events made this long after the start
    /// or later (the warm-up's are left out); only on the wall clock.
    pub measure_after: Duration,
    /// Evaluate alert rules while the pipeline runs.
    pub alerts: Option<alerts::AlertsOptions>,
    /// Produce the events of this file (one JSON event per line; `-`:
    /// standard input) instead of generating them
    /// ([`crate::pipeline::replay_loop`]).
    pub replay: Option<std::path::PathBuf>,
}

/// Where `run` takes its events from.
enum Source {
    /// Lines of a file or standard input (`--replay`).
    Replay(Box<dyn std::io::BufRead + Send>),
    /// The generator.
    Generate(Box<Generator>),
}

/// Opens what `run --replay` reads: a file, or standard input for `-`.
fn open_replay(path: &std::path::Path) -> anyhow::Result<Box<dyn std::io::BufRead + Send>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            std::io::stdin(),
        )));
    }
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening the events to replay, {}", path.display()))?;
    anyhow::ensure!(
        !file.metadata()?.is_dir(),
        "the events to replay, {}, is a folder, not a file",
        path.display()
    );
    Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, file)))
}

/// What a headless run did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Events produced (and delivered).
    pub produced: u64,
    /// Sales stored.
    pub sales: u64,
    /// Sessions stored.
    pub sessions: u64,
    /// Records skipped as already stored.
    pub duplicates: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Offsets the broker no longer had when ingest reached them (records
    /// lost at the broker, e.g. beyond the embedded broker's retention).
    pub offsets_skipped: u64,
    /// From the start of production to the last commit.
    pub elapsed: Duration,
    /// Event → commit latency of the records made after
    /// [`RunOptions::measure_after`]; `None` on a simulated clock.
    pub latency: Option<LatencySummary>,
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "produced {} events and committed them all in {:.2} s: {:.0} events/s \
             ({} sales, {} sessions, {} duplicates skipped, {} dead-lettered, {} offsets lost at the broker)",
            self.produced,
            self.elapsed.as_secs_f64(),
            self.events_per_sec(),
            self.sales,
            self.sessions,
            self.duplicates,
            self.dead_lettered,
            self.offsets_skipped
        )?;
        if let Some(l) = &self.latency {
            write!(f, "; event → commit {l}")?;
        }
        Ok(())
    }
}

impl RunReport {
    /// Events produced and committed per second.
    pub(crate) fn events_per_sec(&self) -> f64 {
        self.produced as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Resolves when Ctrl-C or SIGTERM arrives.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The notebooks folder whose schedules are honoured: the configured one,
/// else `./notebooks` when it exists.
pub fn notebooks_dir(cfg: &Config) -> Option<PathBuf> {
    match &cfg.notebooks_dir {
        Some(d) => Some(d.clone()),
        None => Some(PathBuf::from("notebooks")).filter(|d| d.is_dir()),
    }
}

/// How often scheduled notebooks are checked for being due.
pub const NOTEBOOK_CHECK: Duration = Duration::from_secs(30);

/// Reruns the scheduled notebooks of `dir` as they fall due, one at a
/// time, for ever (abort the task to stop), on a pool of their own opened
/// when the first one is due (ingest never waits behind a notebook). Each
/// run is kept in the notebook's history; a failing one is logged, and
/// the schedule goes on.
pub async fn run_notebook_schedules(dir: PathBuf, cfg: Config, database_url: String) {
    let mut tick = tokio::time::interval(NOTEBOOK_CHECK);
    let mut opened: Option<(Analytics, Store)> = None;
    loop {
        tick.tick().await;
        let d = dir.clone();
        let due = tokio::task::spawn_blocking(move || {
            crate::notebook::schedule::due(&d, chrono::Utc::now())
        })
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(
                "scheduled notebooks: checking {} failed: {e}",
                dir.display()
            );
            Vec::new()
        });
        if due.is_empty() {
            continue;
        }
        if opened.is_none() {
            let store = Store::connect(
                &database_url,
                2,
                Duration::from_millis(cfg.pg_statement_timeout_ms),
            )
            .await;
            match store
                .map_err(anyhow::Error::from)
                .and_then(|s| analytics_computing(&cfg, &s, 1).map(|a| (a, s)))
            {
                Ok(o) => opened = Some(o),
                Err(e) => {
                    tracing::warn!("scheduled notebooks wait for the database: {e:#}");
                    continue;
                }
            }
        }
        let Some((analytics, _)) = &opened else {
            continue;
        };
        for path in due {
            let source = match analytics
                .frame_source(&crate::analytics::Filters::default())
                .await
            {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("scheduled notebooks wait: {e}");
                    break;
                }
            };
            let p = path.clone();
            let done = tokio::task::spawn_blocking(move || {
                crate::notebook::run_scheduled(&p, source, None)
            })
            .await;
            match done {
                Ok(Ok(r)) => match (&r.failed_cell, &r.error) {
                    (Some(c), Some(e)) => tracing::warn!(
                        "scheduled notebook {}: cell {c} failed: {e}",
                        path.display()
                    ),
                    _ => tracing::info!(
                        "scheduled notebook {} ran in {:.1} s",
                        path.display(),
                        r.seconds
                    ),
                },
                Ok(Err(e)) => tracing::warn!("scheduled notebook {}: {e:#}", path.display()),
                Err(e) => tracing::warn!("scheduled notebook {}: {e}", path.display()),
            }
        }
    }
}

/// The headless main job: generator + producer + ingest workers. With
/// `events`, stops after producing them and returns once all are committed;
/// otherwise runs until Ctrl-C, then drains what was produced.
pub async fn run(cfg: &Config, opts: RunOptions) -> anyhow::Result<RunReport> {
    let replay = opts.replay.as_deref().map(open_replay).transpose()?;
    let services = Services::resolve(cfg).await?;
    let cfg = &services.scoped(cfg);
    let store = services.prepare(cfg).await?;
    let settings = IngestSettings::from_config(cfg, &services.brokers);
    let stats = Arc::new(IngestStats::default());
    let workers = Workers::spawn(opts.workers, &settings, &store, &stats)
        .context("starting ingest workers")?;

    let producer = Arc::new(
        EventProducer::new(
            &ProducerConfig::from_config(cfg, &services.brokers),
            &cfg.topic,
        )
        .context("creating the producer")?,
    );
    let http = match &opts.http {
        Some(bind) => {
            // Readers get a pool of their own: however many views compute,
            // ingest never waits for a connection behind them.
            let readers = Store::connect(
                &services.database_url,
                cfg.pg_pool_size,
                Duration::from_millis(cfg.pg_statement_timeout_ms),
            )
            .await
            .context("connecting the HTTP API's pool")?;
            let telemetry = Telemetry {
                producer: Some(Arc::clone(producer.stats())),
                ingest: Some(Arc::clone(&stats)),
                ..services.telemetry(cfg, &readers)?
            };
            let state =
                ApiState::new(opts.params.clone(), opts.seed, services.health_targets(cfg))?
                    .with_telemetry(telemetry)
                    .with_token(api::token_from_env());
            let listener = api::listen(bind)
                .await
                .with_context(|| format!("binding the HTTP API to {bind}"))?;
            api::check_exposure(listener.local_addr()?, api::token_from_env().as_deref())?;
            Some(AbortOnDrop(tokio::spawn(api::serve_on(
                listener,
                Arc::new(state),
                std::future::pending(),
            ))))
        }
        None => None,
    };
    // Scheduled notebooks rerun while the pipeline runs.
    let _notebooks = match notebooks_dir(cfg) {
        Some(dir) => Some(AbortOnDrop(tokio::spawn(run_notebook_schedules(
            dir,
            cfg.clone(),
            services.database_url.clone(),
        )))),
        None => None,
    };
    // Alert rules are evaluated while the pipeline runs, on a pool of
    // their own (ingest never waits behind a rule's metric).
    let (_alerts, _stop_alerts) = match &opts.alerts {
        Some(a) => {
            let readers = Store::connect(
                &services.database_url,
                2,
                Duration::from_millis(cfg.pg_statement_timeout_ms),
            )
            .await
            .context("connecting the alerts' pool")?;
            let lag = crate::pipeline::lag::LagSource {
                brokers: services.brokers.clone(),
                topic: cfg.topic.clone(),
                group: cfg.group_id.clone(),
                store: readers.clone(),
            };
            let (figures, figures_task) = alerts::KafkaFigures::spawn(lag, cfg.dlq_topic.clone());
            let engine = alerts::engine(
                analytics_computing(cfg, &readers, 1)?,
                a,
                None,
                Some(figures),
            )
            .await?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            (
                Some((
                    AbortOnDrop(alerts::spawn(engine, stopped, None)),
                    AbortOnDrop(figures_task),
                )),
                Some(stop),
            )
        }
        None => (None, None),
    };
    let board = Switchboard::new();
    for s in &opts.scenarios {
        crate::generator::check_scenario(&opts.params, s)
            .map_err(|e| anyhow::anyhow!("scenario {:?} ({}): {e}", s.scenario, s.file))?;
        board.switch_on(s.clone());
    }
    let source = match replay {
        Some(input) => Source::Replay(input),
        None => Source::Generate(Box::new(
            Generator::new(opts.params.clone(), opts.seed, opts.clock)?.with_switch(board),
        )),
    };
    let stop_producing = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    if let Ok(after) = chrono::Duration::from_std(opts.measure_after) {
        stats.latency.count_from(chrono::Utc::now() + after);
    }
    let backpressure = services.embedded_broker.as_ref().map(|_| Backpressure {
        stats: Arc::clone(&stats),
        max: EMBEDDED_BACKLOG_PER_PARTITION * cfg.partitions as u64,
    });
    let mut producing = {
        let (producer, stop) = (Arc::clone(&producer), Arc::clone(&stop_producing));
        let (events, rate) = (opts.events, opts.rate);
        tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            let bp = backpressure.as_ref();
            Ok(match source {
                Source::Replay(input) => replay_loop(input, &producer, events, rate, &stop, bp)?,
                Source::Generate(mut g) => {
                    produce_loop(&mut g, &producer, events, rate, &stop, bp)?
                }
            })
        })
    };
    let progress = {
        let (producer, stats) = (Arc::clone(&producer), Arc::clone(&stats));
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                tracing::info!(
                    produced = producer.stats().delivered.load(Ordering::Relaxed),
                    ingested = stats.sales.load(Ordering::Relaxed)
                        + stats.sessions.load(Ordering::Relaxed),
                    dead_lettered = stats.dead_lettered.load(Ordering::Relaxed),
                    "progress"
                );
            }
        }))
    };

    let produced = tokio::select! {
        r = &mut producing => r.context("producer task")??,
        _ = shutdown_signal() => {
            tracing::info!("shutting down: stopping the generator, flushing the producer");
            stop_producing.store(true, Ordering::Release);
            producing.await.context("producer task")??
        }
    };

    let targets = producer.stats().delivered_end_offsets();
    tracing::info!(produced, "waiting for ingest to commit everything produced");
    let caught_up = tokio::select! {
        r = wait_for_offsets(&store, &cfg.group_id, &cfg.topic, &targets, Duration::from_secs(3600)) => r,
        _ = shutdown_signal() => Err(anyhow::anyhow!("interrupted while draining")),
        _ = workers.any_finished() => Err(anyhow::anyhow!("an ingest worker stopped before everything was committed")),
    };
    let elapsed = started.elapsed();
    drop(progress);
    drop(http);
    workers.finish().await?;
    caught_up?;
    Ok(RunReport {
        produced,
        sales: stats.sales.load(Ordering::Relaxed),
        sessions: stats.sessions.load(Ordering::Relaxed),
        duplicates: stats.duplicates.load(Ordering::Relaxed),
        dead_lettered: stats.dead_lettered.load(Ordering::Relaxed),
        offsets_skipped: stats.offsets_skipped.load(Ordering::Relaxed),
        elapsed,
        // A replay's event times are the file's, not this run's.
        latency: (matches!(opts.clock, Clock::Wall) && opts.replay.is_none())
            .then(|| stats.latency.summary()),
    })
}

/// A spawned task that is aborted when this is dropped (however the scope
/// that owns it ends).
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What `salespulse ingest` did.
#[derive(Clone, Debug, Default)]
pub struct IngestReport {
    /// Sales stored.
    pub sales: u64,
    /// Sessions stored.
    pub sessions: u64,
    /// Records skipped as already stored.
    pub duplicates: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
}

impl std::fmt::Display for IngestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ingested {} sales and {} sessions ({} duplicates skipped, {} dead-lettered)",
            self.sales, self.sessions, self.duplicates, self.dead_lettered
        )
    }
}

/// `salespulse ingest`: `workers` ingest workers on a shared broker until
/// Ctrl-C/SIGTERM. Services that are down at start are waited for; only a
/// configuration error ends it early.
pub async fn ingest(cfg: &Config, workers: usize) -> anyhow::Result<IngestReport> {
    anyhow::ensure!(
        cfg.kafka_brokers.is_some(),
        "`salespulse ingest` joins a consumer group on a shared broker: set KAFKA_BROKERS \
         (for local use, start one with `salespulse broker` and set KAFKA_BROKERS=127.0.0.1:9092)"
    );
    let services = Services::resolve(cfg).await?;
    let store = loop {
        match services.prepare(cfg).await {
            Ok(store) => break store,
            Err(e) if crate::pipeline::is_config_error(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "waiting for the services; retrying in 2 s");
                tokio::select! {
                    _ = shutdown_signal() => return Ok(IngestReport::default()),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    let settings = IngestSettings::from_config(cfg, &services.brokers);
    let stats = Arc::new(IngestStats::default());
    let running =
        Workers::spawn(workers, &settings, &store, &stats).context("starting ingest workers")?;
    tracing::info!(workers, group = %cfg.group_id, topic = %cfg.topic, "ingest running; Ctrl-C to stop");
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = running.any_finished() => tracing::error!("an ingest worker stopped"),
    }
    running.finish().await?;
    Ok(IngestReport {
        sales: stats.sales.load(Ordering::Relaxed),
        sessions: stats.sessions.load(Ordering::Relaxed),
        duplicates: stats.duplicates.load(Ordering::Relaxed),
        dead_lettered: stats.dead_lettered.load(Ordering::Relaxed),
    })
}

/// `salespulse serve`: the HTTP API (generator, views, health, metrics) on
/// `bind` until Ctrl-C/SIGTERM.
pub async fn serve(cfg: &Config, bind: &str, seed: u64) -> anyhow::Result<()> {
    let services = Services::resolve(cfg).await?;
    let store = services.prepare(cfg).await?;
    let state = Arc::new(
        ApiState::new(
            GeneratorParams::builtin(),
            seed,
            services.health_targets(cfg),
        )?
        .with_telemetry(services.telemetry(cfg, &store)?)
        .with_token(api::token_from_env()),
    );
    api::serve(bind, state, shutdown_signal())
        .await
        .with_context(|| format!("serving on {bind}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_computes_what_its_setting_and_pool_allow() {
        let with = |n| Config {
            api_compute_limit: n,
            ..Config::default()
        };
        assert_eq!(api_compute_limit(&with(3), 10), 3);
        // Never the whole pool: one connection stays free.
        assert_eq!(api_compute_limit(&with(8), 5), 4);
        // Never none, even with a pool of one.
        assert_eq!(api_compute_limit(&with(2), 1), 1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(api_compute_limit(&with(0), cores + 1), cores);
    }
}
