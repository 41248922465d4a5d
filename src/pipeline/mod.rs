//! The pipeline's middle layer: the generator's producer loop (paced,
//! pausable, held back by ingest) and the replay of recorded events
//! ([`replay_loop`]), the ingest workers and their lifecycle,
//! consumer lag, and the service probes. It returns handles and counters;
//! it starts no HTTP server and resolves no services (that is
//! [`crate::services`]).

pub mod doctor;
pub mod ingest;
pub mod lag;
pub mod latency;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use crate::bus::{self, EventProducer};
use crate::generator::Generator;
use crate::store::Store;

pub(crate) use ingest::run_worker;
pub use ingest::{IngestSettings, IngestStats, StepTimes};

/// The longest wait [`Pacer::delay_for`] gives at once.
pub const MAX_PACE_WAIT: Duration = Duration::from_secs(86_400);

/// Keeps a loop at `rate` iterations per second (no limit when `None`).
pub struct Pacer {
    start: Instant,
    rate: Option<f64>,
}

impl Pacer {
    /// Starts pacing now; `None`, zero, negative or non-finite rates mean no
    /// limit.
    pub fn new(rate: Option<f64>) -> Self {
        Self {
            start: Instant::now(),
            rate: rate.filter(|r| *r > 0.0 && r.is_finite()),
        }
    }

    /// How long to wait before item `n` (0-based) is due, at most
    /// [`MAX_PACE_WAIT`] (the caller asks again after it): a rate so low
    /// that the time overflows waits, it does not panic.
    pub(crate) fn delay_for(&self, n: u64) -> Duration {
        match self.rate {
            None => Duration::ZERO,
            Some(r) => Duration::try_from_secs_f64(n as f64 / r)
                .ok()
                .and_then(|after| self.start.checked_add(after))
                .map_or(MAX_PACE_WAIT, |due| {
                    due.saturating_duration_since(Instant::now())
                        .min(MAX_PACE_WAIT)
                }),
        }
    }
}

/// Holds the producer back while more than `max` produced records are not yet
/// committed by ingest. Needed with the embedded broker, which keeps only
/// 5 MiB per partition in memory and drops the oldest records beyond that.
pub struct Backpressure {
    /// Counters of the ingest that commits the produced records.
    pub stats: Arc<IngestStats>,
    /// Most records produced but not yet committed before the producer waits.
    pub max: u64,
}

impl Backpressure {
    /// Waits while more than `max` of the `produced` records (counted from
    /// when the counter stood at `committed_base`) are not yet committed,
    /// or until `stop`.
    fn wait_for_room(&self, produced: u64, committed_base: u64, stop: &AtomicBool) {
        while produced.saturating_sub(self.stats.committed().saturating_sub(committed_base))
            > self.max
            && !stop.load(Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Records per partition the embedded broker can safely hold (~100 B per
/// compressed event against its 5 MiB per-partition log).
pub(crate) const EMBEDDED_BACKLOG_PER_PARTITION: u64 = 20_000;

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
pub(crate) fn produce_paced(
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
            bp.wait_for_room(n, committed_base, stop);
        }
        let wait = pacer.delay_for(n - paced_from);
        if wait > Duration::from_millis(1) {
            // Sleep in short steps so that stop, pause and rate changes act quickly.
            std::thread::sleep(wait.min(Duration::from_millis(100)));
            continue;
        }
        let e = generator.next_event();
        match producer.send_patiently(e.customer_id().as_bytes(), &e.to_json(), &|| {
            stop.load(Ordering::Relaxed)
        }) {
            Ok(()) => n += 1,
            Err(bus::BusError::Cancelled) => break,
            Err(e) => return Err(e),
        }
    }
    producer.flush(Duration::from_secs(600))?;
    Ok(n)
}

/// The longest line [`replay_loop`] produces: the broker's default
/// largest record (1 MB), less room for the record's own framing.
pub const MAX_REPLAY_LINE: usize = 1_000_000 - 4_096;

/// Why a replay stopped before its input ended.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The input could not be read.
    #[error("reading line {line}: {source}; the lines before it were produced")]
    Read {
        /// 1-based line number.
        line: u64,
        /// What failed.
        source: std::io::Error,
    },
    /// A line is longer than a record may be.
    #[error(
        "line {line} is longer than {MAX_REPLAY_LINE} bytes, the most a record may hold; \
         the lines before it were produced, none from it on"
    )]
    TooLong {
        /// 1-based line number.
        line: u64,
    },
    /// The broker refused a line.
    #[error("producing line {line}: {source}")]
    Produce {
        /// 1-based line number.
        line: u64,
        /// What failed.
        source: bus::BusError,
    },
    /// The broker did not take what was produced.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
}

/// Only the key of an event line.
#[derive(serde::Deserialize)]
struct KeyOnly<'a> {
    #[serde(borrow)]
    customer_id: Option<std::borrow::Cow<'a, str>>,
}

/// The record key of an event line: its `customer_id`, or empty when the
/// line is not a JSON object with a string `customer_id` (ingest then
/// dead-letters it with its reason).
pub fn replay_key(line: &[u8]) -> Vec<u8> {
    serde_json::from_slice::<KeyOnly<'_>>(line)
        .ok()
        .and_then(|k| k.customer_id)
        .map(|c| c.as_bytes().to_vec())
        .unwrap_or_default()
}

/// What the replay's reader thread hands on.
enum ReplayLine {
    /// A line that is not blank: its 1-based number and its bytes, without
    /// the line end.
    Body(u64, Vec<u8>),
    /// The input failed; nothing follows.
    Failed(ReplayError),
}

/// Reads the lines of `input` into `to` until its end, a failure, or the
/// receiver is gone. At most two bytes past [`MAX_REPLAY_LINE`] are read
/// for a line, whatever the input.
fn read_replay_lines(
    mut input: Box<dyn std::io::BufRead + Send>,
    to: &std::sync::mpsc::SyncSender<ReplayLine>,
) {
    use std::io::{BufRead, Read};
    let mut number = 0u64;
    loop {
        number += 1;
        let mut line = Vec::new();
        match (&mut input)
            .take(MAX_REPLAY_LINE as u64 + 2)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => return,
            Ok(_) => {}
            Err(source) => {
                let _ = to.send(ReplayLine::Failed(ReplayError::Read {
                    line: number,
                    source,
                }));
                return;
            }
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        // A line cut at the limit keeps at least one byte too many.
        if body.len() > MAX_REPLAY_LINE {
            let _ = to.send(ReplayLine::Failed(ReplayError::TooLong { line: number }));
            return;
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if to.send(ReplayLine::Body(number, body.to_vec())).is_err() {
            return;
        }
    }
}

/// Produces the lines of `input` (one event per line, as `salespulse
/// generate` writes them) as they are, keyed by their `customer_id`,
/// until the input ends, `limit` lines or `stop`, at most `rate` per
/// second; then flushes, whatever ended it. Blank lines are skipped; a
/// line that is not a valid event is produced all the same, so that
/// ingest dead-letters it with its reason and nothing of the input is
/// silently dropped. The input is read on a thread of its own, so a stop
/// ends the replay even while a pipe or a terminal has nothing to read.
/// Returns how many records were produced.
pub fn replay_loop(
    input: Box<dyn std::io::BufRead + Send>,
    producer: &EventProducer,
    limit: Option<u64>,
    rate: Option<f64>,
    stop: &AtomicBool,
    backpressure: Option<&Backpressure>,
) -> Result<u64, ReplayError> {
    use std::sync::mpsc::RecvTimeoutError;
    let (to, lines) = std::sync::mpsc::sync_channel(4_096);
    std::thread::Builder::new()
        .name("replay-reader".into())
        .spawn(move || read_replay_lines(input, &to))
        .map_err(|source| ReplayError::Read { line: 1, source })?;
    let pacer = Pacer::new(rate);
    let mut n = 0u64;
    let mut failed = None;
    while limit.is_none_or(|l| n < l) && !stop.load(Ordering::Relaxed) {
        let (number, body) = match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(ReplayLine::Body(number, body)) => (number, body),
            Ok(ReplayLine::Failed(e)) => {
                failed = Some(e);
                break;
            }
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(bp) = backpressure {
            bp.wait_for_room(n, 0, stop);
        }
        loop {
            let wait = pacer.delay_for(n);
            if wait <= Duration::from_millis(1) || stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(wait.min(Duration::from_millis(100)));
        }
        match producer.send_patiently(&replay_key(&body), &body, &|| stop.load(Ordering::Relaxed)) {
            Ok(()) => n += 1,
            Err(bus::BusError::Cancelled) => break,
            Err(source) => {
                failed = Some(ReplayError::Produce {
                    line: number,
                    source,
                });
                break;
            }
        }
    }
    // What was produced before a failure still reaches the broker.
    let flushed = producer.flush(Duration::from_secs(600));
    match failed {
        Some(e) => Err(e),
        None => {
            flushed?;
            Ok(n)
        }
    }
}

/// Spawns `n` ingest workers on their own threads. In a consumer group
/// they are members like any other; without one they split the partitions
/// they were given (`p % n`).
pub fn spawn_workers(
    n: usize,
    settings: &IngestSettings,
    store: &Store,
    stop: &Arc<AtomicBool>,
    stats: &Arc<IngestStats>,
) -> std::io::Result<Vec<WorkerHandle>> {
    let n = n.max(1);
    let started: std::io::Result<Vec<WorkerHandle>> = (0..n)
        .map(|i| {
            let (mut settings, store, stop, stats) = (
                settings.clone(),
                store.clone(),
                Arc::clone(stop),
                Arc::clone(stats),
            );
            // Without a group, the workers split the partitions between
            // them (in a group the coordinator does).
            settings.share = (i, n);
            let rt = Handle::current();
            std::thread::Builder::new()
                .name(format!("ingest-{i}"))
                .spawn(move || run_worker(&settings, store, rt, stop, stats))
        })
        .collect();
    if started.is_err() {
        // The ones that did start stop on their own.
        stop.store(true, Ordering::Release);
    }
    started
}

/// Resolves when any of the worker threads has ended (normally only on error).
pub(crate) async fn any_finished<T>(workers: &[std::thread::JoinHandle<T>]) {
    while !workers.iter().any(|w| w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Joins worker threads without blocking the runtime they depend on.
pub async fn join_workers(workers: Vec<WorkerHandle>) -> anyhow::Result<()> {
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

/// A worker thread's handle.
pub(crate) type WorkerHandle = std::thread::JoinHandle<Result<(), ingest::IngestError>>;

/// Running ingest workers that are stopped and joined however their owner
/// ends: [`Workers::finish`] on the normal path, and on drop (an early
/// return, a `?`, a cancelled future) `stop` is set and the threads are
/// joined as well, so no worker outlives the command that started it.
pub struct Workers {
    stop: Arc<AtomicBool>,
    handles: Vec<WorkerHandle>,
}

impl Workers {
    /// Starts `n` workers ([`spawn_workers`]) on the current runtime.
    pub fn spawn(
        n: usize,
        settings: &IngestSettings,
        store: &Store,
        stats: &Arc<IngestStats>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Self {
            stop: Arc::clone(&stop),
            handles: Vec::new(),
        };
        // Pushed one by one: a failed spawn still stops the ones started.
        for h in spawn_workers(n, settings, store, &stop, stats)? {
            workers.handles.push(h);
        }
        Ok(workers)
    }

    /// Whether any worker has ended (normally only on an error).
    pub(crate) fn any_ended(&self) -> bool {
        self.handles.iter().any(|h| h.is_finished())
    }

    /// Resolves when any worker has ended (normally only on an error).
    pub(crate) async fn any_finished(&self) {
        any_finished(&self.handles).await;
    }

    /// Stops the workers, waits for them to write what they hold and
    /// leave, and returns the first error one of them ended with.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Release);
        join_workers(std::mem::take(&mut self.handles)).await
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let handles = std::mem::take(&mut self.handles);
        if handles.is_empty() {
            return;
        }
        let join = move || {
            for h in handles {
                let _ = h.join();
            }
        };
        // The workers use the runtime to write: join off its worker threads
        // where it has others to drive them.
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(join);
            }
            _ => join(),
        }
    }
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
pub(crate) fn is_config_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<crate::store::StoreError>()
            .is_some_and(|s| s.fault() == crate::store::Fault::Config)
            || c.downcast_ref::<crate::config::ConfigError>().is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_rate_waits_and_does_not_panic() {
        let p = Pacer::new(Some(1e-300));
        assert_eq!(p.delay_for(0), Duration::ZERO);
        assert_eq!(p.delay_for(1), MAX_PACE_WAIT);
        assert_eq!(p.delay_for(u64::MAX), MAX_PACE_WAIT);
        let p = Pacer::new(Some(10.0));
        let w = p.delay_for(10);
        assert!(
            w > Duration::from_millis(900) && w <= Duration::from_secs(1),
            "{w:?}"
        );
        assert_eq!(Pacer::new(None).delay_for(5), Duration::ZERO);
        assert_eq!(Pacer::new(Some(f64::NAN)).delay_for(5), Duration::ZERO);
    }
}
