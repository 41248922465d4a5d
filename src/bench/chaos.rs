//! `salespulse chaos`: a fault suite a user runs on their own machine.
//!
//! It starts private instances of everything — a PostgreSQL cluster (the
//! machine's `initdb`/`pg_ctl`), a tansu broker on SQLite (out of process,
//! durable across `kill -9`) and a Redis server — produces generated events
//! with poison records mixed in, runs `salespulse ingest` as child
//! processes, and while they work:
//! - SIGKILLs an ingest process at a random moment and starts it again;
//! - restarts PostgreSQL with fast and with immediate shutdown;
//! - SIGKILLs the broker and starts it again on the same storage;
//!
//! then, with everything drained, stops and starts Redis while views are
//! served (answers must stay correct: uncached while it is away, cached
//! again once it is back).
//!
//! Afterwards it checks that every valid record is stored exactly once,
//! every poison record is in the dead-letter topic and nothing else is,
//! and every rollup, customer and product row equals its recomputation; it
//! reports those figures and the recovery time of each fault (fault →
//! ingest committing again), p50 and max.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::analytics::request::{TimeRange, ViewKind, ViewRequest};
use crate::analytics::{Analytics, LoadMode};
use crate::bus::{self, EventProducer, ProducerConfig};
use crate::cache::{FrameCache, Outcome};
use crate::event::Event;
use crate::generator::{Clock, Generator, GeneratorParams};
use crate::store::{EmbeddedPostgres, Store};

/// What to do to the pipeline.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// Events produced per second while faults are injected.
    pub rate: f64,
    /// One poison record after this many valid events.
    pub poison_every: u64,
    /// SIGKILLs of an ingest process.
    pub ingest_kills: usize,
    /// PostgreSQL restarts, alternating fast and immediate shutdown.
    pub postgres_restarts: usize,
    /// SIGKILLs (and restarts) of the broker.
    pub broker_restarts: usize,
    /// Redis stops and starts while views are served.
    pub redis_restarts: usize,
    /// Long outages of each of PostgreSQL and the broker: the service is
    /// down for [`ChaosOptions::outage`], ingest must ride it out.
    pub outages: usize,
    /// How long one long outage lasts.
    pub outage: Duration,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Ingest shares partitions through a consumer group (`group`), as
    /// several processes would. Off by default: tansu 0.6's group
    /// coordinator can leave a lone member with a stale or empty
    /// assignment after a dead member expires (it keeps the old assignment
    /// in a formed group, and keeps a leader that has left), which stalls a
    /// run of a hundred kills for reasons that are the broker's; without a
    /// group, ingest reads every partition itself (`all`), from the offsets
    /// stored in PostgreSQL, as it does in a group.
    pub consumer_group: bool,
    /// Seed of the events and of the fault schedule.
    pub seed: u64,
    /// Where the private services keep their data (a fresh folder by default).
    pub work_dir: Option<PathBuf>,
    /// The `salespulse` binary that runs ingest (default: this one).
    pub salespulse: Option<PathBuf>,
    /// The `tansu` binary (default: `TANSU_BIN`, `~/.cargo/bin/tansu`, `tansu`).
    pub tansu: Option<PathBuf>,
    /// How long one fault may keep ingest from committing before the fault
    /// counts as unrecovered and no further fault is injected.
    pub recovery_limit: Duration,
    /// The whole run, setup to verdict (`None`: no limit). A run that
    /// reaches it stops with an error naming the phase and the last lines
    /// of the services' logs, instead of hanging.
    pub time_limit: Option<Duration>,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        Self {
            rate: 300.0,
            poison_every: 100,
            ingest_kills: 100,
            postgres_restarts: 6,
            broker_restarts: 6,
            redis_restarts: 3,
            outages: 1,
            outage: Duration::from_secs(180),
            partitions: 3,
            consumer_group: false,
            seed: 1,
            work_dir: None,
            salespulse: None,
            tansu: None,
            recovery_limit: Duration::from_secs(120),
            time_limit: None,
        }
    }
}

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9` of an ingest process, then a new one.
    IngestKill,
    /// `pg_ctl restart -m fast`.
    PostgresFast,
    /// `pg_ctl restart -m immediate` (crash recovery on start).
    PostgresImmediate,
    /// `kill -9` of the broker, then a new one on the same storage.
    BrokerKill,
    /// Redis stopped and started while views are served.
    RedisRestart,
    /// PostgreSQL stopped for minutes, then started.
    PostgresOutage,
    /// The broker killed, left down for minutes, then started.
    BrokerOutage,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::IngestKill => "ingest SIGKILL",
            FaultKind::PostgresFast => "PostgreSQL restart (fast)",
            FaultKind::PostgresImmediate => "PostgreSQL restart (immediate)",
            FaultKind::BrokerKill => "broker SIGKILL",
            FaultKind::RedisRestart => "Redis stop/start",
            FaultKind::PostgresOutage => "PostgreSQL down for minutes",
            FaultKind::BrokerOutage => "broker down for minutes",
        })
    }
}

/// Recovery times of one kind of fault.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Recovery {
    /// Faults injected.
    pub faults: usize,
    /// Faults after which the pipeline did not recover in time.
    pub unrecovered: usize,
    /// Median recovery, in ms.
    pub p50_ms: u64,
    /// Slowest recovery, in ms.
    pub max_ms: u64,
}

/// What a chaos run did and found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChaosReport {
    /// Valid events produced (each a distinct record).
    pub produced_valid: u64,
    /// Poison records produced.
    pub produced_poison: u64,
    /// Rows stored (transactions + sessions).
    pub stored: u64,
    /// Distinct poison records in the dead-letter topic.
    pub dead_lettered: u64,
    /// DLQ records beyond one per poison record (redeliveries after a crash
    /// between the DLQ write and the commit).
    pub dead_letter_repeats: u64,
    /// Valid events not stored plus poison records not dead-lettered.
    pub lost: u64,
    /// Rows stored more than once.
    pub duplicated: u64,
    /// Stored rows or DLQ records that were never produced.
    pub unexpected: u64,
    /// Derived tables that differ from their recomputation.
    pub inconsistent_tables: Vec<String>,
    /// View answers that differed from an uncached computation.
    pub wrong_answers: u64,
    /// View answers checked during the Redis faults.
    pub answers_checked: u64,
    /// Long outages during which ingest did not log itself degraded.
    pub outages_unreported: u64,
    /// Times an ingest process found itself stuck (records waiting, none
    /// stored) and started a new Kafka consumer (from its log).
    pub stuck_consumer_restarts: u64,
    /// Whether ingest shared partitions through a consumer group (else it
    /// read every partition itself; see [`ChaosOptions::consumer_group`]).
    pub consumer_group: bool,
    /// Per kind of fault.
    pub recovery: BTreeMap<FaultKind, Recovery>,
    /// Every recovery, in ms, in the order the faults came (`None`: none).
    pub recoveries_ms: Vec<(FaultKind, Option<u64>)>,
    /// After each long outage: ms from the service being back to ingest
    /// having stored the backlog and keeping up again (the next fault
    /// waits for it).
    pub catch_up_ms: Vec<(FaultKind, u64)>,
    /// Wall time of the run, in seconds.
    pub seconds: f64,
}

impl ChaosReport {
    /// Whether nothing was lost, duplicated or wrong, and every fault was
    /// recovered from.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.unexpected == 0
            && self.inconsistent_tables.is_empty()
            && self.wrong_answers == 0
            && self.outages_unreported == 0
            && self.recovery.values().all(|r| r.unrecovered == 0)
    }

    /// Faults injected, all kinds.
    pub fn faults(&self) -> usize {
        self.recovery.values().map(|r| r.faults).sum()
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos: {} faults survived in {:.0} s: {}",
            self.faults(),
            self.seconds,
            if self.passed() { "PASSED" } else { "FAILED" }
        )?;
        writeln!(
            f,
            "  ingest read {}",
            if self.consumer_group {
                "through a consumer group"
            } else {
                "every partition itself (no consumer group)"
            }
        )?;
        writeln!(
            f,
            "  produced {} valid + {} poison; stored {}, dead-lettered {} (+{} repeats)",
            self.produced_valid,
            self.produced_poison,
            self.stored,
            self.dead_lettered,
            self.dead_letter_repeats
        )?;
        writeln!(
            f,
            "  lost {}, duplicated {}, unexpected {}, inconsistent tables {}, wrong answers {} of {}",
            self.lost,
            self.duplicated,
            self.unexpected,
            self.inconsistent_tables.len(),
            self.wrong_answers,
            self.answers_checked
        )?;
        for t in &self.inconsistent_tables {
            writeln!(f, "    {t}")?;
        }
        if self.stuck_consumer_restarts > 0 {
            writeln!(
                f,
                "  ingest found itself stuck and started a new Kafka consumer {} time(s)",
                self.stuck_consumer_restarts
            )?;
        }
        for (k, ms) in &self.catch_up_ms {
            writeln!(
                f,
                "  after \"{k}\": backlog stored, keeping up again after {:.1} s",
                *ms as f64 / 1000.0
            )?;
        }
        if self.outages_unreported > 0 {
            writeln!(
                f,
                "  {} long outage(s) during which ingest did not report itself degraded",
                self.outages_unreported
            )?;
        }
        writeln!(
            f,
            "  recovery (fault, or end of an outage -> committing again):"
        )?;
        for (k, r) in &self.recovery {
            writeln!(
                f,
                "    {k:<32} x{:<4} p50 {:>6} ms  max {:>6} ms{}",
                r.faults,
                r.p50_ms,
                r.max_ms,
                if r.unrecovered > 0 {
                    format!("  ({} NOT recovered)", r.unrecovered)
                } else {
                    String::new()
                }
            )?;
        }
        Ok(())
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(super) fn find_tansu(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cargo_bin = home.join(".cargo/bin/tansu");
    if cargo_bin.is_file() {
        cargo_bin
    } else {
        PathBuf::from("tansu")
    }
}

/// A child process killed on drop.
pub(super) struct Proc(Option<Child>);

impl Proc {
    /// Owns `child` (killed on drop).
    pub(super) fn new(child: Child) -> Self {
        Self(Some(child))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    #[allow(unsafe_code)] // kill(2) on our own child
    pub(super) fn terminate(&mut self, grace: Duration) {
        if let Some(c) = &mut self.0 {
            #[cfg(unix)]
            // SAFETY: a plain signal to our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let until = Instant::now() + grace;
            while Instant::now() < until {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    self.0 = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }

    pub(super) fn exited(&mut self) -> bool {
        self.0
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(super) fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .with_context(|| format!("opening {}", dir.join(name).display()))
}

/// The broker: tansu on SQLite in its own folder.
pub(super) struct Broker {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    proc: Proc,
}

impl Broker {
    pub(super) fn start(bin: PathBuf, dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut b = Self {
            bin,
            dir,
            port: free_port()?,
            proc: Proc(None),
        };
        b.spawn()?;
        Ok(b)
    }

    pub(super) fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // tansu resolves absolute SQLite paths wrongly: a relative one,
            // run from its folder.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir, "tansu.log")?)
            .spawn()
            .with_context(|| {
                format!(
                    "starting tansu ({}); install it with `cargo install tansu --version 0.6.0 \
                     --locked --features dynostore,postgres,libsql` or set TANSU_BIN",
                    self.bin.display()
                )
            })?;
        self.proc = Proc(Some(child));
        let deadline = Instant::now() + Duration::from_secs(30);
        while bus::ping(&self.brokers(), Duration::from_secs(1)).is_err() {
            if Instant::now() > deadline || self.proc.exited() {
                bail!("tansu did not come up on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.proc.kill();
        self.spawn()
    }
}

/// A private Redis server.
struct Redis {
    dir: PathBuf,
    port: u16,
    proc: Proc,
}

impl Redis {
    fn start(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut r = Self {
            dir,
            port: free_port()?,
            proc: Proc(None),
        };
        r.spawn()?;
        Ok(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(&self.dir)
            .stdout(log_file(&self.dir, "redis.log")?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is Redis installed? see README)")?;
        self.proc = Proc(Some(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline || self.proc.exited() {
                bail!("redis-server did not come up on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// `salespulse ingest` as a child process.
struct Ingest {
    exe: PathBuf,
    env: Vec<(&'static str, String)>,
    dir: PathBuf,
    proc: Proc,
}

/// `exe ingest` run in `dir` with only `env` for its services: nothing from
/// the caller's environment (`SALESPULSE_*`, service URLs) or a
/// salespulse.toml in its folder may point the child elsewhere. Logs at
/// `warn` unless `env` says otherwise.
pub(super) fn ingest_command<'a>(
    exe: &Path,
    dir: &Path,
    env: impl IntoIterator<Item = &'a (&'static str, String)>,
) -> Command {
    let mut c = Command::new(exe);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("SALESPULSE_")
            || ["KAFKA_BROKERS", "DATABASE_URL", "REDIS_URL"].contains(&k.as_ref())
        {
            c.env_remove(k.as_ref());
        }
    }
    c.arg("ingest")
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

impl Ingest {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut c = ingest_command(&self.exe, &self.dir, &self.env);
        c.stdout(Stdio::null())
            .stderr(log_file(&self.dir, "ingest.log")?);
        self.proc = Proc(Some(c.spawn().context("starting salespulse ingest")?));
        Ok(())
    }
}

/// What the producer sent.
#[derive(Default)]
struct Produced {
    sales: HashSet<Uuid>,
    sessions: HashSet<String>,
    poison: HashSet<String>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `n`-th poison record: each kind of bad input ingest must
/// dead-letter, each payload unique.
fn poison(n: u64, last_sale: Option<&crate::event::SaleEvent>) -> Vec<u8> {
    let Some(sale) = last_sale else {
        return format!("{{\"type\":\"sale\",\"broken\":{n}").into_bytes();
    };
    let mut s = sale.clone();
    match n % 6 {
        0 => format!("{{\"type\":\"sale\",\"broken\":{n}").into_bytes(),
        1 => {
            s.transaction_id = Uuid::new_v4();
            s.category = format!("Books\u{0}Evil{n}");
            Event::Sale(s).to_json()
        }
        2 => {
            s.transaction_id = Uuid::new_v4();
            s.quantity = 10_000;
            s.unit_price = 1_000_000.0;
            s.discount = 0.0;
            s.total_amount = 1e10;
            s.product_name = format!("overflow {n}");
            Event::Sale(s).to_json()
        }
        3 => {
            // Too large for the DLQ: it goes there truncated.
            let mut b = format!("{{\"type\":\"sale\",\"n\":{n},\"junk\":\"").into_bytes();
            b.resize(200_000, b'x');
            b
        }
        4 => {
            // The id of a stored sale with other content.
            s.quantity += 1;
            s.total_amount += s.unit_price;
            Event::Sale(s).to_json()
        }
        _ => {
            s.transaction_id = Uuid::new_v4();
            s.occurred_at = chrono::Utc::now() + chrono::Duration::hours(23);
            s.product_name = format!("from the future {n}");
            Event::Sale(s).to_json()
        }
    }
}

/// Produces at `rate` until `stop`, one poison record after every
/// `poison_every` valid ones; flushes at the end (within the run's budget).
#[allow(clippy::too_many_arguments)]
fn produce(
    producer: &EventProducer,
    seed: u64,
    rate: f64,
    poison_every: u64,
    stop: &AtomicBool,
    abort: &AtomicBool,
    sent: &AtomicU64,
    deadline: Deadline,
) -> anyhow::Result<Produced> {
    let start = chrono::Utc::now() - chrono::Duration::days(30);
    let mut g = Generator::new(GeneratorParams::builtin(), seed, Clock::Simulated(start))?;
    let mut out = Produced::default();
    let mut last_sale = None;
    let pacer = crate::pipeline::Pacer::new(Some(rate));
    let mut n = 0u64;
    let mut poisoned = 0u64;
    let cancel = || stop.load(Ordering::Relaxed) || abort.load(Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        let wait = pacer.delay_for(n);
        if !wait.is_zero() {
            std::thread::sleep(wait.min(Duration::from_millis(50)));
            continue;
        }
        n += 1;
        if n.is_multiple_of(poison_every.max(1)) {
            let p = poison(poisoned, last_sale.as_ref());
            poisoned += 1;
            let key = last_sale
                .as_ref()
                .map(|s: &crate::event::SaleEvent| s.customer_id.clone())
                .unwrap_or_default();
            match producer.send_patiently(key.as_bytes(), &p, &cancel) {
                Err(bus::BusError::Cancelled) => break,
                sent => sent?,
            }
            out.poison.insert(sha256_hex(&p));
        } else {
            let e = g.next_event();
            // Events stamped after now would be (rightly) dead-lettered.
            if e.timestamp() > chrono::Utc::now() {
                bail!("the generated history reached the present; lower --rate");
            }
            match producer.send_patiently(e.customer_id().as_bytes(), &e.to_json(), &cancel) {
                Err(bus::BusError::Cancelled) => break,
                sent => sent?,
            }
            match e {
                Event::Sale(s) => {
                    out.sales.insert(s.transaction_id);
                    last_sale = Some(s);
                }
                Event::Session(s) => {
                    out.sessions.insert(s.session_id);
                }
            }
        }
        sent.fetch_add(1, Ordering::Relaxed);
    }
    producer
        .flush_unless(deadline.left(Duration::from_secs(600)), &|| {
            abort.load(Ordering::Relaxed)
        })
        .context("flushing the producer")?;
    Ok(out)
}

/// How long ingest may take to store the backlog of a long outage.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(900);

/// Waits until the producer holds fewer than `max_pending` records back and
/// ingest has stored everything delivered, in a round that took under 2 s
/// (so it keeps up, rather than chases a backlog).
async fn catch_up(
    store: &Store,
    group: &str,
    topic: &str,
    producer: &EventProducer,
    max_pending: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    loop {
        let round = Instant::now();
        let stats = producer.stats();
        let pending = stats.sent.load(Ordering::Relaxed).saturating_sub(
            stats.delivered.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed),
        );
        let targets = stats.delivered_end_offsets();
        crate::pipeline::wait_for_offsets(
            store,
            group,
            topic,
            &targets,
            until.saturating_duration_since(Instant::now()),
        )
        .await?;
        if pending < max_pending && round.elapsed() < Duration::from_secs(2) {
            return Ok(());
        }
        if Instant::now() >= until {
            bail!("the producer still holds {pending} records back after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn committed(store: &Store, group: &str, topic: &str) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(
        "SELECT sum(next_offset)::int8 FROM ingest_offsets WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(group)
    .bind(topic)
    .fetch_one(store.pool())
    .await
    .ok()
    .flatten()
    .unwrap_or(-1)
}

/// Waits until ingest commits past what it had committed when called;
/// `None` after `timeout`.
async fn progress_after(
    store: &Store,
    group: &str,
    topic: &str,
    started: Instant,
    timeout: Duration,
    alive: &mut dyn FnMut() -> bool,
) -> Option<Duration> {
    let mut base = committed(store, group, topic).await;
    while started.elapsed() < timeout && alive() {
        let now = committed(store, group, topic).await;
        if base < 0 {
            // The database was not answering yet: take the first answer.
            base = now;
        } else if now > base {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// Every DLQ record: (sha256 header, kind header).
fn read_dlq(
    brokers: &str,
    topic: &str,
    partitions: i32,
    wait: Duration,
) -> anyhow::Result<Vec<(String, String)>> {
    let ends = bus::end_offsets(brokers, topic)?;
    let consumer: BaseConsumer = bus::base_config(brokers)
        .set("group.id", format!("chaos-dlq-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let want: i64 = ends.iter().map(|e| e.1).sum();
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    while (out.len() as i64) < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let mut sha = String::new();
            let mut kind = String::new();
            if let Some(h) = m.headers() {
                for h in h.iter() {
                    let v = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                    match h.key {
                        "salespulse.payload.sha256" => sha = v,
                        "salespulse.error.kind" => kind = v,
                        _ => {}
                    }
                }
            }
            out.push((sha, kind));
        }
    }
    if (out.len() as i64) < want {
        bail!("read {} of {want} DLQ records", out.len());
    }
    Ok(out)
}

fn summarize(recoveries: &[(FaultKind, Option<u64>)]) -> BTreeMap<FaultKind, Recovery> {
    let mut by: BTreeMap<FaultKind, Vec<Option<u64>>> = BTreeMap::new();
    for (k, r) in recoveries {
        by.entry(*k).or_default().push(*r);
    }
    by.into_iter()
        .map(|(k, v)| {
            let mut ok: Vec<u64> = v.iter().flatten().copied().collect();
            ok.sort_unstable();
            let r = Recovery {
                faults: v.len(),
                unrecovered: v.len() - ok.len(),
                p50_ms: ok.get(ok.len() / 2).copied().unwrap_or(0),
                max_ms: ok.last().copied().unwrap_or(0),
            };
            (k, r)
        })
        .collect()
}

/// Views compared with an uncached computation during the Redis faults.
fn checked_views() -> Vec<ViewRequest> {
    [
        ViewKind::Kpis,
        ViewKind::CategoryPerformance,
        ViewKind::PaymentMix,
    ]
    .into_iter()
    .map(|v| ViewRequest::new(v).with_range(TimeRange::All))
    .collect()
}

/// Serves the checked views once through the cache; returns the outcomes
/// and how many answers differed from `truth`.
async fn serve_views(
    cached: &Analytics,
    truth: &[polars::prelude::DataFrame],
) -> (Vec<Outcome>, u64) {
    let mut outcomes = Vec::new();
    let mut wrong = 0;
    for (req, want) in checked_views().iter().zip(truth) {
        match cached.view(req).await {
            Ok(r) => {
                if !r.frame.equals_missing(want) {
                    wrong += 1;
                }
                outcomes.push(r.outcome);
            }
            Err(e) => {
                tracing::warn!(error = %e, "view failed during a Redis fault");
                wrong += 1;
            }
        }
    }
    (outcomes, wrong)
}

/// The end of a run's time budget.
#[derive(Clone, Copy)]
struct Deadline(Option<Instant>);

impl Deadline {
    /// What is left, capped at `most`.
    fn left(self, most: Duration) -> Duration {
        self.0.map_or(most, |t| {
            t.saturating_duration_since(Instant::now()).min(most)
        })
    }

    /// An error naming `phase` once the budget is spent.
    fn check(self, phase: &str) -> anyhow::Result<()> {
        if self.left(Duration::MAX).is_zero() {
            bail!("the run reached its time limit while {phase}");
        }
        Ok(())
    }
}

fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// What was appended to a log after `offset`.
fn log_since(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut out);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The last `n` lines of a log file, indented, or a note that there is none.
fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(b) => {
            let text = String::from_utf8_lossy(&b);
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            lines
                .get(from..)
                .unwrap_or_default()
                .iter()
                .map(|l| format!("    {l}\n"))
                .collect()
        }
        Err(e) => format!("    ({e})\n"),
    }
}

/// Runs the suite; see the module docs. On an error the work folder is kept
/// and the error ends with the last lines of the ingest and broker logs.
pub async fn run(opts: &ChaosOptions) -> anyhow::Result<ChaosReport> {
    let (keep, root) = match &opts.work_dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = TempDir::new("salespulse-chaos")?;
            let p = t.path().to_owned();
            (Some(t), p)
        }
    };
    match run_in(opts, &root).await {
        Ok(r) => Ok(r),
        Err(e) => {
            if let Some(t) = keep {
                t.keep();
            }
            Err(anyhow::anyhow!(
                "{e:#}\n(the services' folders are kept in {})\nlast lines of ingest.log:\n{}\
                 last lines of tansu.log:\n{}",
                root.display(),
                log_tail(&root.join("ingest.log"), 25),
                log_tail(&root.join("tansu").join("tansu.log"), 10),
            ))
        }
    }
}

async fn run_in(opts: &ChaosOptions, root: &Path) -> anyhow::Result<ChaosReport> {
    let started = Instant::now();
    // Its own tansu speaks plaintext, whatever the user's Kafka wants.
    bus::set_security(Vec::new());
    let deadline = Deadline(opts.time_limit.map(|t| started + t));
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let root = root.to_owned();
    std::fs::create_dir_all(&root)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The embedded cluster runs as `postgres` when we are root: it must
        // be able to reach its folder.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
    }
    tracing::info!(dir = %root.display(), "chaos: starting private PostgreSQL, tansu and Redis");
    let pg = EmbeddedPostgres::ensure(Some(&root.join("pg")), free_port()?)
        .await
        .context("starting a private PostgreSQL cluster")?;
    let _pg_guard = StopOnDrop(pg.clone());
    let tansu_bin = find_tansu(opts.tansu.as_deref());
    let broker_dir = root.join("tansu");
    let mut broker =
        tokio::task::spawn_blocking(move || Broker::start(tansu_bin, broker_dir)).await??;
    let mut redis = Redis::start(root.join("redis"))?;
    let brokers = broker.brokers();

    let cfg = crate::config::Config {
        kafka_brokers: Some(brokers.clone()),
        database_url: Some(pg.url.clone()),
        redis_url: redis.url(),
        partitions: opts.partitions,
        group_id: format!("chaos-{}", opts.seed),
        ..crate::config::Config::default()
    };
    let store = Store::connect(&pg.url, 4, Duration::from_secs(30)).await?;
    store.migrate().await?;
    bus::ensure_topics(
        &brokers,
        &[
            (cfg.topic.as_str(), cfg.partitions),
            (cfg.dlq_topic.as_str(), cfg.partitions),
        ],
        1,
    )
    .await?;

    let exe = match &opts.salespulse {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the salespulse binary")?,
    };
    let mut ingest = Ingest {
        exe,
        env: vec![
            ("KAFKA_BROKERS", brokers.clone()),
            ("DATABASE_URL", pg.url.clone()),
            ("SALESPULSE_GROUP_ID", cfg.group_id.clone()),
            ("SALESPULSE_PARTITIONS", cfg.partitions.to_string()),
            ("SALESPULSE_BATCH_SIZE", "1000".into()),
            ("SALESPULSE_BATCH_TIMEOUT_MS", "100".into()),
            ("SALESPULSE_KAFKA_SESSION_TIMEOUT_MS", "6000".into()),
            (
                "SALESPULSE_INGEST_PARTITIONS",
                if opts.consumer_group { "group" } else { "all" }.into(),
            ),
            // The dead-letter producer, too, without idempotence: tansu 0.6
            // stops answering InitProducerId after clients are SIGKILLed,
            // and an idempotent producer then waits for a producer id for
            // ever. A repeated DLQ record is harmless (the DLQ is
            // at-least-once; records are counted by payload hash).
            ("SALESPULSE_KAFKA_IDEMPOTENCE", "false".into()),
        ],
        dir: root.clone(),
        proc: Proc(None),
    };
    ingest.spawn()?;

    // Produce on a thread for as long as the faults go on.
    let producer = Arc::new(EventProducer::new(
        &ProducerConfig {
            brokers: brokers.clone(),
            linger_ms: 5,
            // With tansu SIGKILLed under an idempotent producer, librdkafka
            // was seen spinning on resends and the broker stalling; a
            // producer-side duplicate is harmless here (rows are keyed, and
            // DLQ records are counted by payload hash).
            idempotence: false,
            message_timeout_ms: 300_000,
            max_attempts: 10,
        },
        &cfg.topic,
    )?);
    let stop_producing = Arc::new(AtomicBool::new(false));
    let abort_producing = Arc::new(AtomicBool::new(false));
    // On any early return the producer thread stops at once.
    let _stop_guard = SetOnDrop(vec![
        Arc::clone(&stop_producing),
        Arc::clone(&abort_producing),
    ]);
    let sent = Arc::new(AtomicU64::new(0));
    let producing = {
        let (p, stop, abort, sent) = (
            Arc::clone(&producer),
            Arc::clone(&stop_producing),
            Arc::clone(&abort_producing),
            Arc::clone(&sent),
        );
        let (seed, rate, every) = (opts.seed, opts.rate, opts.poison_every);
        tokio::task::spawn_blocking(move || {
            produce(&p, seed, rate, every, &stop, &abort, &sent, deadline)
        })
    };

    let mut faults: Vec<FaultKind> = Vec::new();
    faults.extend(std::iter::repeat_n(
        FaultKind::IngestKill,
        opts.ingest_kills,
    ));
    for i in 0..opts.postgres_restarts {
        faults.push(if i % 2 == 0 {
            FaultKind::PostgresFast
        } else {
            FaultKind::PostgresImmediate
        });
    }
    faults.extend(std::iter::repeat_n(
        FaultKind::BrokerKill,
        opts.broker_restarts,
    ));
    for _ in 0..opts.outages {
        faults.extend([FaultKind::PostgresOutage, FaultKind::BrokerOutage]);
    }
    faults.shuffle(&mut rng);
    let ingest_log = root.join("ingest.log");
    let mut outages_unreported = 0u64;

    let group = cfg.group_id.clone();
    let topic = cfg.topic.clone();
    let recovery_limit = opts.recovery_limit;
    // Ingest is working before the first fault.
    if progress_after(
        &store,
        &group,
        &topic,
        Instant::now(),
        deadline.left(recovery_limit),
        &mut || !ingest.proc.exited(),
    )
    .await
    .is_none()
    {
        bail!(
            "ingest made no progress before the first fault; see {}",
            root.join("ingest.log").display()
        );
    }
    let mut recoveries = Vec::new();
    let mut catch_ups = Vec::new();
    for (i, fault) in faults.iter().enumerate() {
        // Hit it at a random moment of its work.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        let mut t0 = Instant::now();
        match fault {
            FaultKind::IngestKill => {
                ingest.proc.kill();
                ingest.spawn()?;
            }
            FaultKind::PostgresFast | FaultKind::PostgresImmediate => {
                let mode = if *fault == FaultKind::PostgresFast {
                    "fast"
                } else {
                    "immediate"
                };
                let pg = pg.clone();
                tokio::task::spawn_blocking(move || pg.restart(mode))
                    .await?
                    .with_context(|| format!("restarting PostgreSQL ({mode})"))?;
            }
            FaultKind::BrokerKill => {
                broker =
                    tokio::task::spawn_blocking(move || broker.kill_and_restart().map(|()| broker))
                        .await??;
            }
            FaultKind::PostgresOutage | FaultKind::BrokerOutage => {
                let mark = log_len(&ingest_log);
                if *fault == FaultKind::PostgresOutage {
                    let pg = pg.clone();
                    tokio::task::spawn_blocking(move || pg.stop())
                        .await?
                        .context("stopping PostgreSQL")?;
                } else {
                    broker.proc.kill();
                }
                tracing::info!(fault = %fault, secs = opts.outage.as_secs(), "chaos: service down");
                // Ingest must stay up, retrying, the whole time.
                let until = Instant::now() + deadline.left(opts.outage);
                while Instant::now() < until {
                    if ingest.proc.exited() {
                        bail!(
                            "an ingest process exited during the outage ({fault}); see {}",
                            ingest_log.display()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // ... and say it is degraded.
                if !log_since(&ingest_log, mark).contains("ingest degraded") {
                    tracing::warn!(fault = %fault, "chaos: ingest did not report itself degraded during the outage");
                    outages_unreported += 1;
                }
                if *fault == FaultKind::PostgresOutage {
                    let pg = pg.clone();
                    tokio::task::spawn_blocking(move || pg.start_again())
                        .await?
                        .context("starting PostgreSQL again")?;
                } else {
                    broker = tokio::task::spawn_blocking(move || broker.spawn().map(|()| broker))
                        .await??;
                }
                // Recovery counts from the service being back.
                t0 = Instant::now();
            }
            FaultKind::RedisRestart => {}
        }
        if ingest.proc.exited() {
            bail!(
                "an ingest process exited by itself; see {}",
                root.join("ingest.log").display()
            );
        }
        let r = progress_after(
            &store,
            &group,
            &topic,
            t0,
            deadline.left(recovery_limit),
            &mut || !ingest.proc.exited(),
        )
        .await;
        if ingest.proc.exited() {
            bail!(
                "an ingest process exited by itself; see {}",
                root.join("ingest.log").display()
            );
        }
        let mut ms = r.map(|d| d.as_millis() as u64);
        if ms.is_some() && matches!(fault, FaultKind::PostgresOutage | FaultKind::BrokerOutage) {
            // The next fault hits a pipeline that has caught up, as the
            // others do; how long that took is a figure of its own.
            let max_pending = (opts.rate * 5.0) as u64;
            match catch_up(
                &store,
                &group,
                &topic,
                &producer,
                max_pending,
                deadline.left(CATCH_UP_LIMIT),
            )
            .await
            {
                Ok(()) => {
                    let c = t0.elapsed().as_millis() as u64;
                    tracing::info!(fault = %fault, catch_up_ms = c, "chaos: caught up after the outage");
                    catch_ups.push((*fault, c));
                }
                Err(e) => {
                    tracing::warn!(fault = %fault, error = %e, "chaos: ingest did not catch up after the outage");
                    ms = None;
                }
            }
        }
        tracing::info!(n = i + 1, of = faults.len(), fault = %fault, recovery_ms = ?ms, "chaos: fault");
        recoveries.push((*fault, ms));
        deadline.check("injecting faults")?;
        if ms.is_none() {
            // Further faults would only pile onto one that was not survived:
            // drain and report.
            tracing::warn!(fault = %fault, limit_s = recovery_limit.as_secs(), "chaos: no recovery in time; no further faults");
            break;
        }
    }

    // Drain: stop producing, wait until everything sent is committed.
    stop_producing.store(true, Ordering::Release);
    let produced = producing.await??;
    let targets = producer.stats().delivered_end_offsets();
    crate::pipeline::wait_for_offsets(
        &store,
        &group,
        &topic,
        &targets,
        deadline.left(Duration::from_secs(600)),
    )
    .await
    .context("draining what was produced")?;
    ingest.proc.terminate(Duration::from_secs(10));

    // Redis faults while views are served, on data that no longer moves.
    let truth = {
        let plain = Analytics::new(
            store.pool().clone(),
            Arc::new(FrameCache::disabled()),
            LoadMode::default(),
        );
        let mut frames = Vec::new();
        for req in checked_views() {
            frames.push(plain.view(&req).await?.frame);
        }
        frames
    };
    let cached = Analytics::new(
        store.pool().clone(),
        Arc::new(FrameCache::new(&redis.url(), Duration::from_secs(3_600))?),
        LoadMode::default(),
    );
    let (mut checked, mut wrong) = (0u64, 0u64);
    for _ in 0..opts.redis_restarts {
        let (_, w) = serve_views(&cached, &truth).await;
        checked += truth.len() as u64;
        wrong += w;
        redis.proc.kill();
        let t0 = Instant::now();
        for _ in 0..3 {
            let (outcomes, w) = serve_views(&cached, &truth).await;
            checked += truth.len() as u64;
            wrong += w;
            if outcomes.iter().any(|o| *o != Outcome::Bypass) {
                tracing::warn!(
                    ?outcomes,
                    "an answer claimed the cache while Redis was down"
                );
                wrong += 1;
            }
        }
        redis.spawn()?;
        // Cached again: the first answer after the restart is stored, the
        // next comes from Redis.
        let mut recovered = None;
        while t0.elapsed() < recovery_limit && !deadline.left(recovery_limit).is_zero() {
            let (outcomes, w) = serve_views(&cached, &truth).await;
            checked += truth.len() as u64;
            wrong += w;
            if outcomes.iter().all(|o| *o == Outcome::Hit) {
                recovered = Some(t0.elapsed().as_millis() as u64);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        recoveries.push((FaultKind::RedisRestart, recovered));
    }

    // The verdict.
    let stored_ids: Vec<Uuid> = sqlx::query_scalar("SELECT transaction_id FROM transactions")
        .fetch_all(store.pool())
        .await?;
    let session_ids: Vec<String> = sqlx::query_scalar("SELECT session_id FROM sessions")
        .fetch_all(store.pool())
        .await?;
    let session_set: HashSet<String> = session_ids.iter().cloned().collect();
    let stored_set: HashSet<Uuid> = stored_ids.iter().copied().collect();
    let dlq = {
        let (b, t, n) = (brokers.clone(), cfg.dlq_topic.clone(), cfg.partitions);
        let wait = deadline.left(Duration::from_secs(60));
        tokio::task::spawn_blocking(move || read_dlq(&b, &t, n, wait)).await??
    };
    let mut dlq_set: HashMap<String, u64> = HashMap::new();
    for (sha, _) in &dlq {
        *dlq_set.entry(sha.clone()).or_default() += 1;
    }
    let missing_sales = produced.sales.difference(&stored_set).count() as u64;
    let extra_sales = stored_set.difference(&produced.sales).count() as u64;
    let missing_poison = produced
        .poison
        .iter()
        .filter(|p| !dlq_set.contains_key(*p))
        .count() as u64;
    let extra_dlq = dlq_set
        .keys()
        .filter(|k| !produced.poison.contains(*k))
        .count() as u64;
    let sessions_short = produced.sessions.difference(&session_set).count() as u64;
    let sessions_extra = session_set.difference(&produced.sessions).count() as u64;
    let inconsistent = crate::store::rollups::verify(&store)
        .await?
        .iter()
        .map(ToString::to_string)
        .collect();

    let report = ChaosReport {
        produced_valid: (produced.sales.len() + produced.sessions.len()) as u64,
        produced_poison: produced.poison.len() as u64,
        stored: (stored_ids.len() + session_ids.len()) as u64,
        dead_lettered: dlq_set.len() as u64,
        dead_letter_repeats: dlq.len() as u64 - dlq_set.len() as u64,
        lost: missing_sales + sessions_short + missing_poison,
        duplicated: (stored_ids.len() - stored_set.len() + session_ids.len() - session_set.len())
            as u64,
        unexpected: extra_sales + sessions_extra + extra_dlq,
        inconsistent_tables: inconsistent,
        wrong_answers: wrong,
        answers_checked: checked,
        outages_unreported,
        stuck_consumer_restarts: log_since(&ingest_log, 0).matches("ingest is stuck").count()
            as u64,
        consumer_group: opts.consumer_group,
        recovery: summarize(&recoveries),
        recoveries_ms: recoveries,
        catch_up_ms: catch_ups,
        seconds: started.elapsed().as_secs_f64(),
    };
    store.pool().close().await;
    drop(broker);
    drop(redis);
    Ok(report)
}

/// Sets its flags on drop.
struct SetOnDrop(Vec<Arc<AtomicBool>>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        for f in &self.0 {
            f.store(true, Ordering::Release);
        }
    }
}

/// Stops the private cluster on drop (before its folder is removed).
struct StopOnDrop(EmbeddedPostgres);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Err(e) = self.0.stop() {
            tracing::warn!(error = %e, "stopping the chaos PostgreSQL cluster");
        }
    }
}

/// Removes its folder on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    /// A fresh folder `<prefix>-<random>` under the system's temporary
    /// directory.
    pub(super) fn new(prefix: &str) -> anyhow::Result<Self> {
        let d = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d)?;
        Ok(Self(d))
    }

    /// The folder.
    pub(super) fn path(&self) -> &Path {
        &self.0
    }

    /// Leaves the folder in place (to be looked at after a failure).
    pub(super) fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
