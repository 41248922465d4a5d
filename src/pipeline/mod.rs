//! Wires the layers together: resolves services (embedded or configured),
//! runs generator → producer and ingest workers, and reports.

pub mod analytics_bench;
pub mod bench;
pub mod chaos;
pub mod doctor;
pub mod fuzz;
pub mod ingest;
pub mod lag;
pub mod live;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::runtime::Handle;

use crate::analytics::{Analytics, LoadMode};
use crate::api::{self, ApiState, HealthTargets, LagSource, Telemetry};
use crate::bus::{self, EmbeddedBroker, EventProducer, ProducerConfig};
use crate::cache::FrameCache;
use crate::config::{redact_url, Config};
use crate::generator::{Clock, Generator, GeneratorParams, Scenario, Switchboard};
use crate::store::{EmbeddedPostgres, Store};

pub use ingest::{run_worker, IngestSettings, IngestStats};

/// The services a command talks to, started in-process when not configured.
pub struct Services {
    pub brokers: String,
    pub database_url: String,
    pub embedded_broker: Option<EmbeddedBroker>,
    pub embedded_pg: Option<EmbeddedPostgres>,
}

impl Services {
    /// Uses `KAFKA_BROKERS` / `DATABASE_URL` when set; otherwise starts an
    /// in-process mock cluster and/or the private PostgreSQL cluster.
    pub async fn resolve(cfg: &Config) -> anyhow::Result<Self> {
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
    pub fn scoped(&self, cfg: &Config) -> Config {
        let mut cfg = cfg.clone();
        if let Some(b) = &self.embedded_broker {
            cfg.group_id = format!("{}-{}", cfg.group_id, b.incarnation());
        }
        cfg
    }

    /// Connects and migrates the store, and creates the topics if missing.
    pub async fn prepare(&self, cfg: &Config) -> anyhow::Result<Store> {
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
    let cache = FrameCache::new_in(
        &cfg.redis_url,
        Duration::from_secs(cfg.cache_ttl_secs),
        cfg.data_dir.as_deref(),
    )
    .with_context(|| format!("redis_url {}", redact_url(&cfg.redis_url)))?
    // One connection stays free for data-version reads and health checks.
    .with_compute_limit(
        store
            .pool()
            .options()
            .get_max_connections()
            .saturating_sub(1) as usize,
    );
    Ok(Analytics::new(
        store.pool().clone(),
        Arc::new(cache),
        LoadMode::default(),
    ))
}

/// Keeps a loop at `rate` iterations per second (no limit when `None`).
pub struct Pacer {
    start: Instant,
    rate: Option<f64>,
}

impl Pacer {
    pub fn new(rate: Option<f64>) -> Self {
        Self {
            start: Instant::now(),
            rate: rate.filter(|r| *r > 0.0 && r.is_finite()),
        }
    }

    /// How long to wait before item `n` (0-based) is due.
    pub fn delay_for(&self, n: u64) -> Duration {
        match self.rate {
            None => Duration::ZERO,
            Some(r) => {
                let due = self.start + Duration::from_secs_f64(n as f64 / r);
                due.saturating_duration_since(Instant::now())
            }
        }
    }
}

/// Holds the producer back while more than `max` produced records are not yet
/// committed by ingest. Needed with the embedded broker, which keeps only
/// 5 MiB per partition in memory and drops the oldest records beyond that.
pub struct Backpressure {
    pub stats: Arc<IngestStats>,
    pub max: u64,
}

/// Records per partition the embedded broker can safely hold (~100 B per
/// compressed event against its 5 MiB per-partition log).
pub const EMBEDDED_BACKLOG_PER_PARTITION: u64 = 20_000;

/// Generates and produces until `limit` events or `stop`, then flushes.
/// Returns how many events were produced.
pub fn produce_loop(
    generator: &mut Generator,
    producer: &EventProducer,
    limit: Option<u64>,
    rate: Option<f64>,
    stop: &AtomicBool,
    backpressure: Option<&Backpressure>,
) -> Result<u64, bus::BusError> {
    let never = AtomicBool::new(false);
    produce_paced(
        generator,
        producer,
        limit,
        stop,
        &never,
        &|| rate,
        backpressure,
        0,
    )
}

/// [`produce_loop`] with a pause switch and a rate read before each event
/// (a change of rate, or a resume, restarts the pacing from that moment).
/// `committed_base` is what `backpressure`'s counter stood at when this loop
/// began.
#[allow(clippy::too_many_arguments)]
pub fn produce_paced(
    generator: &mut Generator,
    producer: &EventProducer,
    limit: Option<u64>,
    stop: &AtomicBool,
    paused: &AtomicBool,
    rate: &dyn Fn() -> Option<f64>,
    backpressure: Option<&Backpressure>,
    committed_base: u64,
) -> Result<u64, bus::BusError> {
    let mut current = rate().map(|r| r * generator.traffic());
    let mut pacer = Pacer::new(current);
    let mut paced_from = 0u64;
    let mut n = 0u64;
    while limit.is_none_or(|l| n < l) && !stop.load(Ordering::Relaxed) {
        if paused.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            paced_from = n;
            pacer = Pacer::new(current);
            continue;
        }
        // Scenarios may multiply the traffic.
        let r = rate().map(|r| r * generator.traffic());
        if r != current {
            current = r;
            paced_from = n;
            pacer = Pacer::new(r);
        }
        if let Some(bp) = backpressure {
            while n.saturating_sub(bp.stats.committed().saturating_sub(committed_base)) > bp.max
                && !stop.load(Ordering::Relaxed)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let wait = pacer.delay_for(n - paced_from);
        if wait > Duration::from_millis(1) {
            // Sleep in short steps so that stop, pause and rate changes act quickly.
            std::thread::sleep(wait.min(Duration::from_millis(100)));
            continue;
        }
        let e = generator.next_event();
        producer.send(e.customer_id().as_bytes(), &e.to_json())?;
        n += 1;
    }
    producer.flush(Duration::from_secs(600))?;
    Ok(n)
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub events: Option<u64>,
    pub rate: Option<f64>,
    pub seed: u64,
    pub workers: usize,
    pub clock: Clock,
    pub params: GeneratorParams,
    /// Scenarios on from the start.
    pub scenarios: Vec<Scenario>,
    /// Serve the HTTP API (with this run's `/metrics`) on this address.
    pub http: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub produced: u64,
    pub sales: u64,
    pub sessions: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub offsets_skipped: u64,
    pub elapsed: Duration,
}

impl RunReport {
    pub fn events_per_sec(&self) -> f64 {
        self.produced as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Spawns `n` ingest workers on their own threads.
pub fn spawn_workers(
    n: usize,
    settings: &IngestSettings,
    store: &Store,
    stop: &Arc<AtomicBool>,
    stats: &Arc<IngestStats>,
) -> std::io::Result<Vec<std::thread::JoinHandle<Result<(), ingest::IngestError>>>> {
    (0..n.max(1))
        .map(|i| {
            let (settings, store, stop, stats) = (
                settings.clone(),
                store.clone(),
                Arc::clone(stop),
                Arc::clone(stats),
            );
            let rt = Handle::current();
            std::thread::Builder::new()
                .name(format!("ingest-{i}"))
                .spawn(move || run_worker(&settings, store, rt, stop, stats))
        })
        .collect()
}

/// Resolves when any of the worker threads has ended (normally only on error).
pub async fn any_finished<T>(workers: &[std::thread::JoinHandle<T>]) {
    while !workers.iter().any(|w| w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Joins worker threads without blocking the runtime they depend on.
pub async fn join_workers(
    workers: Vec<std::thread::JoinHandle<Result<(), ingest::IngestError>>>,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        for w in workers {
            match w.join() {
                Ok(r) => r?,
                Err(_) => anyhow::bail!("an ingest worker panicked"),
            }
        }
        Ok(())
    })
    .await?
}

/// Waits until the stored offsets reach `targets` (partition, next offset).
pub async fn wait_for_offsets(
    store: &Store,
    group: &str,
    topic: &str,
    targets: &[(i32, i64)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let parts: Vec<i32> = targets.iter().map(|t| t.0).collect();
    let deadline = Instant::now() + timeout;
    loop {
        let stored = store.stored_offsets(group, topic, &parts).await?;
        if targets
            .iter()
            .all(|(p, o)| stored.get(p).is_some_and(|s| s >= o))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("ingest did not catch up within {timeout:?} (stored {stored:?}, target {targets:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `e` is something only a person can fix (a bad URL, credentials,
/// a missing database or permission, a schema from a newer version), as
/// opposed to a service that is away for now.
pub fn is_config_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<crate::store::StoreError>()
            .is_some_and(|s| s.fault() == crate::store::Fault::Config)
            || c.downcast_ref::<crate::config::ConfigError>().is_some()
    })
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

/// The headless main job: generator + producer + ingest workers. With
/// `events`, stops after producing them and returns once all are committed;
/// otherwise runs until Ctrl-C, then drains what was produced.
pub async fn run(cfg: &Config, opts: RunOptions) -> anyhow::Result<RunReport> {
    let services = Services::resolve(cfg).await?;
    let cfg = &services.scoped(cfg);
    let store = services.prepare(cfg).await?;
    let settings = IngestSettings::from_config(cfg, &services.brokers);
    let stop_ingest = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(IngestStats::default());
    let workers = spawn_workers(opts.workers, &settings, &store, &stop_ingest, &stats)
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
            let telemetry = Telemetry {
                producer: Some(Arc::clone(producer.stats())),
                ingest: Some(Arc::clone(&stats)),
                analytics: Some(analytics(cfg, &store)?),
                lag: Some(LagSource {
                    brokers: services.brokers.clone(),
                    topic: cfg.topic.clone(),
                    group: cfg.group_id.clone(),
                    store: store.clone(),
                }),
            };
            let health = HealthTargets {
                kafka_brokers: Some(services.brokers.clone()),
                database_url: Some(services.database_url.clone()),
                redis_url: Some(cfg.redis_url.clone()),
            };
            let state = ApiState::new(opts.params.clone(), opts.seed, health)?
                .with_telemetry(telemetry)
                .with_token(api::token_from_env());
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .with_context(|| format!("binding the HTTP API to {bind}"))?;
            api::check_exposure(listener.local_addr()?, api::token_from_env().as_deref())?;
            Some(tokio::spawn(api::serve_on(
                listener,
                Arc::new(state),
                std::future::pending(),
            )))
        }
        None => None,
    };
    let board = Switchboard::new();
    for s in &opts.scenarios {
        crate::generator::check_scenario(&opts.params, s)
            .map_err(|e| anyhow::anyhow!("scenario {:?} ({}): {e}", s.scenario, s.file))?;
        board.switch_on(s.clone());
    }
    let mut generator =
        Generator::new(opts.params.clone(), opts.seed, opts.clock)?.with_switch(board);
    let stop_producing = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let backpressure = services.embedded_broker.as_ref().map(|_| Backpressure {
        stats: Arc::clone(&stats),
        max: EMBEDDED_BACKLOG_PER_PARTITION * cfg.partitions as u64,
    });
    let mut producing = {
        let (producer, stop) = (Arc::clone(&producer), Arc::clone(&stop_producing));
        let (events, rate) = (opts.events, opts.rate);
        tokio::task::spawn_blocking(move || {
            produce_loop(
                &mut generator,
                &producer,
                events,
                rate,
                &stop,
                backpressure.as_ref(),
            )
        })
    };
    let progress = {
        let (producer, stats) = (Arc::clone(&producer), Arc::clone(&stats));
        tokio::spawn(async move {
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
        })
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
        _ = any_finished(&workers) => Err(anyhow::anyhow!("an ingest worker stopped before everything was committed")),
    };
    let elapsed = started.elapsed();
    progress.abort();
    if let Some(h) = http {
        h.abort();
    }
    stop_ingest.store(true, Ordering::Release);
    join_workers(workers).await?;
    caught_up?;
    Ok(RunReport {
        produced,
        sales: stats.sales.load(Ordering::Relaxed),
        sessions: stats.sessions.load(Ordering::Relaxed),
        duplicates: stats.duplicates.load(Ordering::Relaxed),
        dead_lettered: stats.dead_lettered.load(Ordering::Relaxed),
        offsets_skipped: stats.offsets_skipped.load(Ordering::Relaxed),
        elapsed,
    })
}
