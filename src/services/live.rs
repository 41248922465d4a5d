//! The pipeline as a long-running service, for the desktop app: services are
//! opened once, then generation + produce + ingest can be started, paused,
//! re-rated and stopped any number of times while counters accumulate.
//!
//! Nothing here blocks a caller's thread on I/O except the `async` functions,
//! which the app runs on its tokio runtime.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{analytics, Services};
use crate::analytics::Analytics;
use crate::bus::{EventProducer, OffsetProbe, ProducerConfig};
use crate::config::Config;
use crate::generator::scenario::Active;
use crate::generator::{Clock, Generator, GeneratorParams, Scenario, Switchboard};
use crate::pipeline::doctor::{self, Check};
use crate::pipeline::lag;
use crate::pipeline::{
    produce_paced, Backpressure, IngestSettings, IngestStats, Workers,
    EMBEDDED_BACKLOG_PER_PARTITION,
};
use crate::store::Store;

/// Shared switches of a running producer loop.
#[derive(Debug)]
pub(crate) struct Control {
    stop: AtomicBool,
    paused: AtomicBool,
    /// Events per second as f64 bits; 0 = as fast as possible.
    rate: AtomicU64,
}

impl Control {
    /// Switches for a loop producing at `rate` events per second (`None` = as fast as possible).
    pub fn new(rate: Option<f64>) -> Self {
        let c = Self {
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            rate: AtomicU64::new(0),
        };
        c.set_rate(rate);
        c
    }

    /// `None` (or a non-positive rate) = as fast as possible.
    pub(crate) fn set_rate(&self, rate: Option<f64>) {
        let r = rate.filter(|r| r.is_finite() && *r > 0.0).unwrap_or(0.0);
        self.rate.store(r.to_bits(), Ordering::Release);
    }

    /// The rate set now (`None` = as fast as possible).
    pub fn rate(&self) -> Option<f64> {
        Some(f64::from_bits(self.rate.load(Ordering::Acquire))).filter(|r| *r > 0.0)
    }

    /// Pauses (`true`) or resumes the loop.
    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
    }

    /// Whether the loop is paused.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Asks the loop to end after the event in hand.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub(super) fn stop_flag(&self) -> &AtomicBool {
        &self.stop
    }

    pub(super) fn paused_flag(&self) -> &AtomicBool {
        &self.paused
    }
}

/// Where the generator stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Not started, or stopped on request.
    Stopped,
    /// Generating and ingesting.
    Running,
    /// Started, generation paused; ingest goes on.
    Paused,
    /// Stopped by an error (the text says which part and why).
    Failed(String),
}

impl RunState {
    /// A one-word name for the status bar.
    pub fn label(&self) -> &'static str {
        match self {
            RunState::Stopped => "stopped",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Failed(_) => "failed",
        }
    }
}

/// Cumulative counters since the services were opened.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    /// Events acknowledged by the broker.
    pub produced: u64,
    /// Events the broker did not acknowledge.
    pub produce_failed: u64,
    /// Rows written to PostgreSQL (sales + sessions).
    pub ingested: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Records skipped as already stored.
    pub duplicates: u64,
    /// Batches committed.
    pub batches: u64,
}

/// What the app shows about the services.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceHealth {
    /// One check per service: Kafka, PostgreSQL, Redis.
    pub checks: Vec<Check>,
    /// When the checks ran.
    pub checked_at: chrono::DateTime<chrono::Utc>,
}

/// How to run the generator.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// Events per second; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Seed of the generator (same seed, same events).
    pub seed: u64,
    /// Ingest workers to start.
    pub workers: usize,
    /// Where event times come from.
    pub clock: Clock,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            rate: Some(super::DEFAULT_RATE),
            seed: rand::random(),
            workers: 1,
            clock: Clock::Wall,
        }
    }
}

struct Running {
    control: Arc<Control>,
    /// Stopped and joined when dropped, too.
    workers: Workers,
    producing: tokio::task::JoinHandle<anyhow::Result<u64>>,
}

/// The services (broker, PostgreSQL, Redis) and, when started, the running
/// generator, producer and ingest workers.
pub struct LivePipeline {
    cfg: Config,
    services: Services,
    store: Store,
    analytics: Analytics,
    producer: Arc<EventProducer>,
    ingest: Arc<IngestStats>,
    probe: Option<Arc<OffsetProbe>>,
    running: Option<Running>,
    failure: Arc<Mutex<Option<String>>>,
    /// Shop and scenarios; kept across start and stop.
    board: Arc<Switchboard>,
    /// The shop the generator runs (the last one set or started with).
    shop: GeneratorParams,
}

impl LivePipeline {
    /// Resolves (starts, when embedded) and prepares the services.
    pub async fn open(cfg: &Config) -> anyhow::Result<Self> {
        let services = Services::resolve(cfg).await?;
        let cfg = services.scoped(cfg);
        let store = services.prepare(&cfg).await?;
        let analytics = analytics(&cfg, &store)?;
        let producer = Arc::new(
            EventProducer::new(
                &ProducerConfig::from_config(&cfg, &services.brokers),
                &cfg.topic,
            )
            .context("creating the producer")?,
        );
        let probe = OffsetProbe::new(&services.brokers).ok().map(Arc::new);
        Ok(Self {
            cfg,
            services,
            store,
            analytics,
            producer,
            ingest: Arc::new(IngestStats::default()),
            probe,
            running: None,
            failure: Arc::new(Mutex::new(None)),
            board: Switchboard::new(),
            shop: GeneratorParams::builtin(),
        })
    }

    /// Replaces the shop: at once when running, else from the next start.
    pub(crate) fn set_shop(&mut self, params: GeneratorParams) {
        self.shop = params.clone();
        self.board.set_shop(params);
    }

    /// The shop the generator simulates now.
    pub fn shop(&self) -> &GeneratorParams {
        &self.shop
    }

    /// Switches a scenario on (at once when running, else from the start);
    /// refused when it names what the shop does not have.
    pub fn switch_on(&self, s: Scenario) -> Result<(), String> {
        crate::generator::check_scenario(&self.shop, &s)?;
        tracing::info!(scenario = %s.scenario, "scenario on");
        self.board.switch_on(s);
        Ok(())
    }

    /// Switches a scenario off; `false` when it was not on.
    pub(crate) fn switch_off(&self, name: &str) -> bool {
        let off = self.board.switch_off(name);
        if off {
            tracing::info!(scenario = %name, "scenario off");
        }
        off
    }

    /// The scenarios on.
    pub fn scenarios(&self) -> Vec<Active> {
        self.board.active()
    }

    /// The settings the services were opened with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Views and metrics over the store, cached.
    pub fn analytics(&self) -> &Analytics {
        &self.analytics
    }

    /// The PostgreSQL store ingest writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Bootstrap servers of the broker in use (the embedded one's, if any).
    pub fn brokers(&self) -> &str {
        &self.services.brokers
    }

    /// The database URL in use (it may hold a password: redact before showing).
    pub fn database_url(&self) -> &str {
        &self.services.database_url
    }

    /// Whether the broker is the in-process mock cluster.
    pub(crate) fn is_embedded_broker(&self) -> bool {
        self.services.embedded_broker.is_some()
    }

    /// Starts ingest workers and the generator; a no-op when running.
    pub fn start(&mut self, opts: LiveOptions) -> anyhow::Result<()> {
        self.reap();
        if self.running.is_some() {
            return Ok(());
        }
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let settings = IngestSettings::from_config(&self.cfg, &self.services.brokers);
        let workers = Workers::spawn(opts.workers, &settings, &self.store, &self.ingest)
            .context("starting ingest workers")?;
        let control = Arc::new(Control::new(opts.rate));
        let mut generator = Generator::new(self.shop.clone(), opts.seed, opts.clock)?
            .with_switch(Arc::clone(&self.board));
        let backpressure = self
            .services
            .embedded_broker
            .as_ref()
            .map(|_| Backpressure {
                stats: Arc::clone(&self.ingest),
                max: EMBEDDED_BACKLOG_PER_PARTITION * self.cfg.partitions.max(1) as u64,
            });
        // Backpressure compares produced-since-start against committed-since-start.
        let base = self.ingest.committed();
        let producing = {
            let (producer, control) = (Arc::clone(&self.producer), Arc::clone(&control));
            let failure = Arc::clone(&self.failure);
            tokio::task::spawn_blocking(move || {
                let r = produce_paced(
                    &mut generator,
                    &producer,
                    None,
                    control.stop_flag(),
                    control.paused_flag(),
                    &|| control.rate(),
                    backpressure.as_ref(),
                    base,
                )
                .context("producer");
                if let Err(e) = &r {
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
                }
                r
            })
        };
        self.running = Some(Running {
            control,
            workers,
            producing,
        });
        tracing::info!(rate = ?opts.rate, workers = opts.workers, "pipeline started");
        Ok(())
    }

    /// Records a failure of a worker or of the producer, if one ended.
    fn reap(&mut self) {
        let Some(r) = &self.running else { return };
        let worker_died = r.workers.any_ended();
        if worker_died || r.producing.is_finished() {
            let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(if worker_died {
                    "an ingest worker stopped (see the log)".into()
                } else {
                    "the producer stopped (see the log)".into()
                });
            }
        }
    }

    /// Where the generator stands (a failed worker or producer shows here).
    pub fn state(&mut self) -> RunState {
        self.reap();
        if let Some(f) = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return RunState::Failed(f);
        }
        match &self.running {
            None => RunState::Stopped,
            Some(r) if r.control.is_paused() => RunState::Paused,
            Some(_) => RunState::Running,
        }
    }

    /// Pauses or resumes generation when running; ingest goes on.
    pub(crate) fn set_paused(&self, paused: bool) {
        if let Some(r) = &self.running {
            r.control.set_paused(paused);
            tracing::info!(
                paused,
                "generator {}",
                if paused { "paused" } else { "resumed" }
            );
        }
    }

    /// Changes the rate of a running generator (`None` = as fast as possible).
    pub(crate) fn set_rate(&self, rate: Option<f64>) {
        if let Some(r) = &self.running {
            r.control.set_rate(rate);
        }
    }

    /// Current generation rate setting (`None` = unlimited), when running.
    pub fn rate(&self) -> Option<Option<f64>> {
        self.running.as_ref().map(|r| r.control.rate())
    }

    /// Stops the generator, flushes the producer, lets ingest catch up (up
    /// to `drain`), then stops the workers.
    pub async fn stop(&mut self, drain: Duration) -> anyhow::Result<()> {
        let Some(r) = self.running.take() else {
            return Ok(());
        };
        r.control.stop();
        let produced = r.producing.await.context("producer task")?;
        let deadline = Instant::now() + drain;
        let targets = self.producer.stats().delivered_end_offsets();
        while Instant::now() < deadline && !r.workers.any_ended() {
            let parts: Vec<i32> = targets.iter().map(|t| t.0).collect();
            let stored = self
                .store
                .stored_offsets(&self.cfg.group_id, &self.cfg.topic, &parts)
                .await?;
            if targets
                .iter()
                .all(|(p, o)| stored.get(p).is_some_and(|s| s >= o))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let joined = r.workers.finish().await;
        tracing::info!("pipeline stopped");
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
        produced?;
        joined
    }

    /// Counters accumulated since the services were opened.
    pub fn counters(&self) -> Counters {
        let p = self.producer.stats();
        let i = &self.ingest;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            produced: l(&p.delivered),
            produce_failed: l(&p.failed),
            ingested: l(&i.sales) + l(&i.sessions),
            dead_lettered: l(&i.dead_lettered),
            duplicates: l(&i.duplicates),
            batches: l(&i.batches),
        }
    }

    /// Whether ingest writes are succeeding or being retried.
    pub(crate) fn ingest_health(&self) -> crate::pipeline::ingest::IngestHealth {
        self.ingest.health()
    }

    /// Consumer lag per partition (blocking broker calls run off the runtime).
    pub async fn lag(&self) -> Result<Vec<(i32, i64)>, String> {
        let ends = match &self.probe {
            Some(p) => {
                let (p, topic) = (Arc::clone(p), self.cfg.topic.clone());
                tokio::task::spawn_blocking(move || p.end_offsets(&topic))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
            }
            None => return Err("no connection to the broker".into()),
        };
        lag::lag_against(&self.store, &self.cfg.group_id, &self.cfg.topic, ends).await
    }

    /// Checks Kafka, PostgreSQL and Redis.
    pub async fn health(&self) -> ServiceHealth {
        let (k, p, r) = tokio::join!(
            doctor::check_kafka(&self.services.brokers),
            doctor::check_postgres(&self.services.database_url),
            doctor::check_redis(&self.cfg.redis_url),
        );
        ServiceHealth {
            checks: vec![k, p, r],
            checked_at: chrono::Utc::now(),
        }
    }
}
