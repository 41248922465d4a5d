//! One ingest worker: a consumer-group member on its own OS thread.
//!
//! It gathers records until the batch is full or its time is up, decodes and
//! validates each, sends rejects to the dead-letter topic (reason in headers)
//! and waits for their delivery, then writes the valid rows *and the partition
//! offsets* in one PostgreSQL transaction. Only after that commit are offsets
//! committed to Kafka, for lag monitoring; PostgreSQL stays the authority on
//! where each partition resumes (see [`crate::bus::IngestContext`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Message, OwnedHeaders};
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

use crate::bus::{self, BusError, EventProducer, OffsetSource, ProducerConfig};
use crate::event::{Event, Rejection};
use crate::store::{Batch, Fault, Refused, Store, StoreError};

/// Why an ingest worker stopped. Only a configuration problem (or a worker
/// that cannot start) ends one: data problems are dead-lettered and service
/// outages are retried until the service is back.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A Kafka client could not be created (the consumer, also on a rejoin,
    /// or the dead-letter producer).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A PostgreSQL error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A problem only a person can fix (e.g. credentials, a missing table or
    /// permission); retrying would not help.
    #[error("ingest cannot go on until this is fixed: {0}")]
    Config(String),
    /// A batch's blocking write task panicked or was cancelled.
    #[error("writer task failed: {0}")]
    Task(String),
}

/// Most payload bytes of a record copied to the dead-letter topic; a larger
/// record goes there truncated, with its size, SHA-256 and source position in
/// headers (it stays whole in the source topic).
pub const DLQ_MAX_PAYLOAD: usize = 64 * 1024;
/// Most key bytes copied to the dead-letter topic.
const DLQ_MAX_KEY: usize = 1024;
/// Most bytes of a rejection reason in a DLQ header.
const DLQ_MAX_REASON: usize = 4 * 1024;
/// How long a write may go on after a stop was asked for before it is
/// abandoned (rolled back; its records are read again on the next start).
const STOP_GRACE: Duration = Duration::from_millis(700);
/// Longest wait between two attempts to write a batch: a service that comes
/// back is noticed within this.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What one ingest worker reads, how it batches, and where rejects go.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// How far past the wall clock an event may be stamped.
    pub max_future_skew: chrono::Duration,
    /// Consumer group; also the key of the offsets stored in PostgreSQL.
    pub group_id: String,
    /// Topic to ingest.
    pub topic: String,
    /// Topic rejected records are sent to.
    pub dlq_topic: String,
    /// Records a lane buffers before it writes them as one batch.
    pub batch_size: usize,
    /// Longest a lane's batch waits to fill, from its first record.
    pub batch_timeout: Duration,
    /// Parallel write lanes per worker.
    pub lanes: usize,
    /// Consumer group session timeout, in ms; also paces the stall
    /// watchdog (three times this, at least 15 s).
    pub session_timeout_ms: u32,
    /// Consumer group, or partitions read without one.
    pub assignment: bus::Assignment,
    /// Without a group, this worker reads the partitions `p` with
    /// `p % share.1 == share.0` of those: `(i, n)` for the i-th of n workers
    /// of one process (see [`crate::pipeline::spawn_workers`]).
    pub share: (usize, usize),
    /// Producer settings for the dead-letter topic.
    pub dlq_producer: ProducerConfig,
}

impl IngestSettings {
    /// Settings from `cfg`, reading from `brokers`, as the only worker of its
    /// process (`share` is `(0, 1)`); an unparsable `ingest_partitions`
    /// (rejected earlier by [`crate::config::Config::check`]) means the group.
    pub fn from_config(cfg: &crate::config::Config, brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            max_future_skew: i64::try_from(cfg.max_future_skew_secs)
                .ok()
                .and_then(chrono::Duration::try_seconds)
                .unwrap_or(crate::event::DEFAULT_MAX_FUTURE_SKEW),
            group_id: cfg.group_id.clone(),
            topic: cfg.topic.clone(),
            dlq_topic: cfg.dlq_topic.clone(),
            batch_size: cfg.batch_size,
            batch_timeout: Duration::from_millis(cfg.batch_timeout_ms),
            lanes: cfg.ingest_lanes,
            session_timeout_ms: cfg.kafka_session_timeout_ms,
            // Checked when the configuration was loaded.
            assignment: cfg
                .ingest_partitions
                .parse()
                .unwrap_or(bus::Assignment::Group),
            share: (0, 1),
            dlq_producer: ProducerConfig::from_config(cfg, brokers),
        }
    }
}

/// Live counters of one or more workers.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Records received from Kafka (re-reads after a rebalance count again).
    pub consumed: AtomicU64,
    /// Sale rows newly inserted.
    pub sales: AtomicU64,
    /// Session rows newly inserted.
    pub sessions: AtomicU64,
    /// Identical redeliveries, skipped by the store.
    pub duplicates: AtomicU64,
    /// Records sent to the dead-letter topic (invalid, or refused by the
    /// database).
    pub dead_lettered: AtomicU64,
    /// Batches committed to PostgreSQL.
    pub batches: AtomicU64,
    /// Batch writes that failed transiently and were tried again.
    pub write_retries: AtomicU64,
    /// Buffered records dropped on an assignment change or a rejoin; they are
    /// read again from the stored offsets.
    pub dropped_on_rebalance: AtomicU64,
    /// Times a worker found itself stuck (records waiting and none arriving,
    /// or nobody in the group holding a partition) and rejoined its group.
    pub rejoins: AtomicU64,
    /// Offsets that were expected but never delivered (broker retention or
    /// compaction removed them before they were ingested). Always reported.
    pub offsets_skipped: AtomicU64,
    /// Records the database refused (dead-lettered as `rejected-by-database`).
    pub refused_by_database: AtomicU64,
    /// Records whose id was stored with other content (dead-lettered as
    /// `conflicting-duplicate`).
    pub conflicting_duplicates: AtomicU64,
    /// Records dead-lettered truncated (too large for the DLQ).
    pub dlq_truncated: AtomicU64,
    /// Event → commit latency of every record of a committed batch
    /// (redeliveries included): the time from the event's own time (a
    /// sale's, a session's end) to the commit.
    pub latency: super::latency::LatencyHistogram,
    /// Where the time of committed writes went, step by step.
    pub steps: StepTimes,
    health: Mutex<Health>,
}

/// Time spent in each step of ingest, summed over every worker and lane, in
/// nanoseconds (steps in parallel lanes overlap, so the sum can exceed the
/// wall time). `bench ingest` prints them.
#[derive(Debug, Default)]
pub struct StepTimes {
    /// Decoding and validating records (on the consumer's thread).
    pub decode_ns: AtomicU64,
    /// Probing for rows that exist already (retries only).
    pub probe_ns: AtomicU64,
    /// Encoding and `COPY`ing rows.
    pub copy_ns: AtomicU64,
    /// Folding rows into per-batch aggregates.
    pub fold_ns: AtomicU64,
    /// Upserting rollups, customers, products and offsets.
    pub upsert_ns: AtomicU64,
    /// Placing the new orders among their customers' and folding the gaps.
    pub gaps_ns: AtomicU64,
    /// `BEGIN` and `COMMIT`.
    pub commit_ns: AtomicU64,
}

impl StepTimes {
    fn add_write(&self, t: &crate::store::WriteTimings) {
        for (counter, d) in [
            (&self.probe_ns, t.probe),
            (&self.copy_ns, t.copy),
            (&self.fold_ns, t.fold),
            (&self.upsert_ns, t.upsert),
            (&self.gaps_ns, t.gaps),
            (&self.commit_ns, t.commit),
        ] {
            counter.fetch_add(nanos(d), Ordering::Relaxed);
        }
    }

    /// `(step, seconds)` of every step, in pipeline order.
    pub fn seconds(&self) -> Vec<(&'static str, f64)> {
        [
            ("decode", &self.decode_ns),
            ("probe", &self.probe_ns),
            ("copy", &self.copy_ns),
            ("fold", &self.fold_ns),
            ("upsert", &self.upsert_ns),
            ("gaps", &self.gaps_ns),
            ("commit", &self.commit_ns),
        ]
        .into_iter()
        .map(|(name, c)| (name, c.load(Ordering::Relaxed) as f64 / 1e9))
        .collect()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug, Default)]
struct Health {
    /// Per write lane that is failing: since when, and the latest reason.
    failing: std::collections::HashMap<u64, (Instant, String)>,
}

/// Whether ingest is keeping up or retrying a service that is away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngestHealth {
    /// Writes succeed.
    Ok,
    /// Writes have been failing for `for_secs` seconds; ingest retries with
    /// capped backoff and resumes on its own.
    Degraded {
        /// How long it has been failing, in whole seconds.
        for_secs: u64,
        /// The latest error.
        reason: String,
    },
}

impl IngestStats {
    /// Degraded while any write lane is failing (since the oldest failure,
    /// with the latest reason).
    pub fn health(&self) -> IngestHealth {
        let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = h.failing.values().map(|(since, _)| *since).min();
        let latest = h
            .failing
            .values()
            .max_by_key(|(since, _)| *since)
            .map(|(_, r)| r.clone());
        match (oldest, latest) {
            (Some(since), Some(reason)) => IngestHealth::Degraded {
                for_secs: since.elapsed().as_secs(),
                reason,
            },
            _ => IngestHealth::Ok,
        }
    }

    fn degraded(&self, lane: u64, reason: String) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        match h.failing.get_mut(&lane) {
            Some((_, r)) => *r = reason,
            None => {
                tracing::warn!(reason = ?reason, "ingest degraded: retrying until the service is back");
                h.failing.insert(lane, (Instant::now(), reason));
            }
        }
    }

    fn recovered(&self, lane: u64) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((since, _)) = h.failing.remove(&lane) {
            tracing::info!(
                after_ms = since.elapsed().as_millis() as u64,
                "ingest recovered"
            );
        }
    }

    /// Records durably processed: written, skipped as duplicates, or dead-lettered.
    pub fn committed(&self) -> u64 {
        self.sales.load(Ordering::Relaxed)
            + self.sessions.load(Ordering::Relaxed)
            + self.duplicates.load(Ordering::Relaxed)
            + self.dead_lettered.load(Ordering::Relaxed)
    }
}

struct PgOffsets {
    store: Store,
    rt: Handle,
    group: String,
}

impl OffsetSource for PgOffsets {
    fn stored_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<std::collections::HashMap<i32, i64>, String> {
        let fut = self.store.stored_offsets(&self.group, topic, partitions);
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(15), fut).await })
            .map_err(|_| "timed out reading stored offsets".to_owned())?
            .map_err(|e| e.to_string())
    }
}

/// A record on its way to the dead-letter topic.
struct Reject {
    key: Vec<u8>,
    payload: Vec<u8>,
    partition: i32,
    offset: i64,
    kind: &'static str,
    reason: String,
}

/// Logs a dead-lettered record. The reason quotes the record's own text,
/// so it is logged quoted (`?`): a newline in it cannot start a forged log
/// line.
fn log_dead_lettered(r: &Reject) {
    tracing::warn!(partition = r.partition, offset = r.offset, kind = r.kind, reason = ?clip(&r.reason, 512), "record dead-lettered");
}

/// A valid record's original bytes, kept until its batch is committed in
/// case the database refuses it.
struct Raw {
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Pending {
    batch: Batch,
    rejects: Vec<Reject>,
    raw: Vec<Raw>,
    next_offsets: BTreeMap<i32, i64>,
    records: usize,
    dlq_done: bool,
}

impl Pending {
    fn add(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        max_skew: chrono::Duration,
    ) {
        self.records += 1;
        let next = self.next_offsets.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
        let decoded = match payload {
            Some(p) => Event::decode_with(p, Utc::now(), max_skew),
            None => Err(Rejection::Undecodable("empty payload".into())),
        };
        let event = match decoded {
            Ok(e) => e,
            Err(why) => {
                self.rejects.push(Reject {
                    key: key.unwrap_or_default().to_vec(),
                    payload: payload.unwrap_or_default().to_vec(),
                    partition,
                    offset,
                    kind: why.kind(),
                    reason: why.to_string(),
                });
                return;
            }
        };
        match event {
            Event::Sale(s) => self.batch.sales.push((s, partition, offset)),
            Event::Session(s) => self.batch.sessions.push((s, partition, offset)),
        }
        self.raw.push(Raw {
            partition,
            offset,
            key: key.unwrap_or_default().to_vec(),
            payload: payload.unwrap_or_default().to_vec(),
        });
    }

    fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The records the store refused, with their original bytes.
    fn refused(&self, refused: &[Refused]) -> Vec<Reject> {
        let by_position: std::collections::HashMap<(i32, i64), &Raw> = self
            .raw
            .iter()
            .map(|w| ((w.partition, w.offset), w))
            .collect();
        refused
            .iter()
            .map(|r| {
                let raw = by_position.get(&(r.partition, r.offset));
                Reject {
                    key: raw.map(|w| w.key.clone()).unwrap_or_default(),
                    payload: raw.map(|w| w.payload.clone()).unwrap_or_default(),
                    partition: r.partition,
                    offset: r.offset,
                    kind: r.kind,
                    reason: r.reason.clone(),
                }
            })
            .collect()
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// The DLQ record of `r`: payload (truncated when too large), key, and
/// headers with the reason, kind, source position, size and SHA-256.
fn dlq_record<'a>(r: &'a Reject, source_topic: &str) -> (&'a [u8], &'a [u8], OwnedHeaders, bool) {
    let truncated = r.payload.len() > DLQ_MAX_PAYLOAD;
    let payload = r
        .payload
        .get(..DLQ_MAX_PAYLOAD.min(r.payload.len()))
        .unwrap_or_default();
    let key = r
        .key
        .get(..DLQ_MAX_KEY.min(r.key.len()))
        .unwrap_or_default();
    let sha: String = Sha256::digest(&r.payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (partition, offset, size) = (
        r.partition.to_string(),
        r.offset.to_string(),
        r.payload.len().to_string(),
    );
    let mut headers = OwnedHeaders::new();
    for (k, v) in [
        ("salespulse.error", clip(&r.reason, DLQ_MAX_REASON)),
        ("salespulse.error.kind", r.kind),
        ("salespulse.source.topic", source_topic),
        ("salespulse.source.partition", &partition),
        ("salespulse.source.offset", &offset),
        ("salespulse.payload.size", &size),
        ("salespulse.payload.sha256", &sha),
        (
            "salespulse.payload.truncated",
            if truncated { "true" } else { "false" },
        ),
    ] {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    (key, payload, headers, truncated)
}

/// Writes batches for one worker: rejects to the DLQ, rows to the store,
/// retrying what is not about the data with capped backoff, for as long as
/// it takes, and giving up a batch only when asked to stop.
struct Writer {
    settings: IngestSettings,
    dlq: EventProducer,
    store: Store,
    rt: Handle,
    stats: Arc<IngestStats>,
    stop: Arc<AtomicBool>,
    /// When the stop was first seen.
    stopped_at: OnceLock<Instant>,
    /// One lane at a time sends and flushes dead letters, so that a flush
    /// accounts exactly for its own records.
    dlq_lock: Mutex<()>,
}

/// Why a write did not happen.
enum WriteFailure {
    /// Asked to stop: the batch was abandoned, nothing of it committed.
    Abandoned,
    /// Retrying may help (a service is away).
    Transient(String),
    /// Only a person can fix it.
    Config(String),
}

impl From<StoreError> for WriteFailure {
    fn from(e: StoreError) -> Self {
        match e.fault() {
            Fault::Config => WriteFailure::Config(e.to_string()),
            // Data faults are isolated inside the store; one that still
            // escapes (e.g. the offsets row) is retried rather than lost.
            Fault::Transient | Fault::Data => WriteFailure::Transient(e.to_string()),
        }
    }
}

impl From<BusError> for WriteFailure {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Cancelled => WriteFailure::Abandoned,
            e => WriteFailure::Transient(e.to_string()),
        }
    }
}

/// A batch being written on a blocking task: the offsets it committed, or
/// `None` when it was abandoned on stop.
type InFlight = tokio::task::JoinHandle<Result<Option<Vec<(i32, i64)>>, IngestError>>;

impl Writer {
    /// Whether a stop was asked for more than [`STOP_GRACE`] ago.
    fn must_stop(&self) -> bool {
        if !self.stop.load(Ordering::Acquire) {
            return false;
        }
        self.stopped_at.get_or_init(Instant::now).elapsed() >= STOP_GRACE
    }

    /// Writes `pending` (blocking), returning the offsets it committed, or
    /// `None` when it was abandoned because of a stop.
    fn write(
        &self,
        mut pending: Pending,
        lane: u64,
    ) -> Result<Option<Vec<(i32, i64)>>, IngestError> {
        let mut attempt = 0usize;
        loop {
            match self.try_write(&mut pending) {
                Ok(()) => {
                    self.stats.recovered(lane);
                    return Ok(Some(pending.next_offsets.into_iter().collect()));
                }
                Err(WriteFailure::Abandoned) => {
                    tracing::info!(
                        records = pending.records,
                        "stopping: batch abandoned, it is read again on the next start"
                    );
                    return Ok(None);
                }
                Err(WriteFailure::Config(e)) => return Err(IngestError::Config(e)),
                Err(WriteFailure::Transient(e)) => {
                    attempt += 1;
                    self.stats.write_retries.fetch_add(1, Ordering::Relaxed);
                    self.stats.degraded(lane, e.clone());
                    let wait = crate::bus::backoff(attempt).min(MAX_BACKOFF);
                    tracing::warn!(attempt, error = ?e.to_string(), ?wait, "batch not written, retrying");
                    let until = Instant::now() + wait;
                    while Instant::now() < until {
                        if self.must_stop() {
                            return Ok(None);
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }

    /// Sends rejects to the DLQ and waits for them to be stored there,
    /// giving up (as abandoned) when a stop has been asked for.
    fn dead_letter(&self, rejects: &[Reject]) -> Result<(), WriteFailure> {
        let _one_at_a_time = self.dlq_lock.lock().unwrap_or_else(|p| p.into_inner());
        let topic = self.settings.topic.as_str();
        for r in rejects {
            let (key, payload, headers, truncated) = dlq_record(r, topic);
            self.dlq.send_with_headers(key, payload, headers)?;
            if truncated {
                self.stats.dlq_truncated.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Rejects must be safely in the DLQ before their offsets are committed.
        let stopping = || self.must_stop();
        self.dlq.flush_unless(Duration::from_secs(120), &stopping)?;
        for r in rejects {
            log_dead_lettered(r);
        }
        Ok(())
    }

    fn try_write(&self, pending: &mut Pending) -> Result<(), WriteFailure> {
        if self.must_stop() {
            return Err(WriteFailure::Abandoned);
        }
        let (settings, stats) = (&self.settings, &self.stats);
        if !pending.dlq_done && !pending.rejects.is_empty() {
            self.dead_letter(&pending.rejects)?;
            pending.dlq_done = true;
            stats
                .dead_lettered
                .fetch_add(pending.rejects.len() as u64, Ordering::Relaxed);
        }
        pending.batch.offsets = pending.next_offsets.iter().map(|(p, o)| (*p, *o)).collect();
        let started = Instant::now();
        let pending_ref: &Pending = pending;
        let before_commit = |refused: &[Refused]| {
            self.dead_letter(&pending_ref.refused(refused))
                .map_err(|e| match e {
                    WriteFailure::Abandoned => "stopping".to_owned(),
                    WriteFailure::Transient(m) | WriteFailure::Config(m) => {
                        format!("dead-lettering refused records: {m}")
                    }
                })
        };
        let write = self.store.write_batch_with(
            &settings.group_id,
            &settings.topic,
            &pending_ref.batch,
            &before_commit,
        );
        let out = self.rt.block_on(async {
            tokio::select! {
                r = write => r.map(Some),
                () = async {
                    while !self.must_stop() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                } => Ok(None),
            }
        });
        let out = match out {
            Ok(Some(out)) => out,
            // Dropping the write rolls its transaction back.
            Ok(None) => return Err(WriteFailure::Abandoned),
            Err(StoreError::BeforeCommit(m)) if self.must_stop() => {
                tracing::debug!(reason = %m, "dead-lettering interrupted by a stop");
                return Err(WriteFailure::Abandoned);
            }
            Err(e) => return Err(e.into()),
        };
        tracing::debug!(
            records = pending.records,
            sales = pending.batch.sales.len(),
            sessions = pending.batch.sessions.len(),
            write_ms = started.elapsed().as_millis() as u64,
            "batch written"
        );
        let now = chrono::Utc::now();
        for (s, _, _) in &pending.batch.sales {
            stats.latency.record_since(s.occurred_at, now);
        }
        for (s, _, _) in &pending.batch.sessions {
            stats.latency.record_since(s.ended_at, now);
        }
        stats.sales.fetch_add(out.sales, Ordering::Relaxed);
        stats.sessions.fetch_add(out.sessions, Ordering::Relaxed);
        stats
            .duplicates
            .fetch_add(out.duplicates, Ordering::Relaxed);
        let refused = out.refused.len() as u64;
        let conflicts = out
            .refused
            .iter()
            .filter(|r| r.kind == crate::store::CONFLICTING_DUPLICATE)
            .count() as u64;
        stats.dead_lettered.fetch_add(refused, Ordering::Relaxed);
        stats
            .conflicting_duplicates
            .fetch_add(conflicts, Ordering::Relaxed);
        stats
            .refused_by_database
            .fetch_add(refused - conflicts, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.steps.add_write(&out.timings);
        Ok(())
    }
}

/// Waits for the batch in flight, if any, and commits its offsets to Kafka
/// (for lag monitoring only: PostgreSQL already holds them).
fn finish_in_flight(
    rt: &Handle,
    consumer: &bus::IngestConsumer,
    topic: &str,
    in_flight: &mut Option<InFlight>,
) -> Result<(), IngestError> {
    if let Some(h) = in_flight.take() {
        let offsets = rt
            .block_on(h)
            .map_err(|e| IngestError::Task(e.to_string()))??;
        if let Some(offsets) = offsets {
            if let Err(e) = bus::commit_async(consumer, topic, &offsets) {
                tracing::debug!(error = %e, "kafka offset commit failed");
            }
        }
    }
    Ok(())
}

/// One write lane: the partitions `p` with `p % lanes == lane index`, their
/// buffered batch and at most one batch being written.
struct Lane {
    /// Unique in the process (health is kept per lane).
    id: u64,
    pending: Pending,
    deadline: Option<Instant>,
    in_flight: Option<InFlight>,
}

/// A process-unique id under which a lane (or a worker's consumer) keeps
/// its health.
fn health_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// How often a consumer that has seen a broker error checks whether the
/// broker answers again.
const BROKER_PROBE_EVERY: Duration = Duration::from_secs(2);

/// How often a worker without a group looks for partitions added to its
/// topic.
const REASSIGN_EVERY: Duration = Duration::from_secs(10);

/// How long a worker without a group waits for the topic's metadata while
/// it reads nothing yet (a busy broker can take seconds to answer a new
/// client).
const FIRST_ASSIGN_TIMEOUT: Duration = Duration::from_secs(5);

impl Lane {
    fn new() -> Self {
        Self {
            id: health_id(),
            pending: Pending::default(),
            deadline: None,
            in_flight: None,
        }
    }

    /// No write of this lane is running (none started, or it has finished).
    fn writer_free(&self) -> bool {
        self.in_flight.as_ref().is_none_or(|h| h.is_finished())
    }
}

/// How often a worker holding records looks whether their lane's write in
/// flight has finished, so that the next batch follows it at once.
const WRITER_CHECK: Duration = Duration::from_millis(2);

/// Runs one worker until `stop` is set; then writes what it holds and leaves
/// the group. Blocking: call it on a dedicated thread, with a handle to the
/// runtime the store lives on.
///
/// Partitions are spread over `lanes` write lanes. Each lane buffers its own
/// batch and has at most one batch being written (on a blocking task), so a
/// partition's offsets are committed in order while decoding overlaps writing
/// and lanes write in parallel. Lanes never share customers (they are keyed by
/// partition) and take shared rollup rows in the same sorted order.
pub(crate) fn run_worker(
    settings: &IngestSettings,
    store: Store,
    rt: Handle,
    stop: Arc<AtomicBool>,
    stats: Arc<IngestStats>,
) -> Result<(), IngestError> {
    let offsets_store = store.clone();
    let new_consumer = || {
        let source = PgOffsets {
            store: offsets_store.clone(),
            rt: rt.clone(),
            group: settings.group_id.clone(),
        };
        bus::ingest_consumer(
            &settings.brokers,
            &settings.group_id,
            &settings.topic,
            settings.session_timeout_ms,
            &settings.assignment,
            Box::new(source),
        )
    };
    // Without a group, the partitions to read; and when to check them next
    // (at once, then whenever the check failed or partitions may have been
    // added).
    let wanted = match &settings.assignment {
        bus::Assignment::Group => None,
        bus::Assignment::Static(parts) => Some(parts.clone()),
    };
    let mut next_assign: Option<Instant> = wanted.as_ref().map(|_| Instant::now());
    let (share, of) = (settings.share.0, settings.share.1.max(1));
    // Whether this worker reads partition `p` (every one in a group: the
    // coordinator decides there).
    let reads = |p: i32| -> bool {
        match &wanted {
            None => true,
            Some(list) => {
                list.as_ref().is_none_or(|l| l.contains(&p))
                    && usize::try_from(p).is_ok_and(|p| p % of == share)
            }
        }
    };
    let mut missing_reported: Vec<i32> = Vec::new();
    if wanted.is_none() {
        settle_before_joining(settings, &offsets_store, &rt, &stop);
    }
    let mut consumer = new_consumer()?;
    let writer = Arc::new(Writer {
        settings: settings.clone(),
        dlq: EventProducer::new(&settings.dlq_producer, &settings.dlq_topic)?,
        store,
        rt: rt.clone(),
        stats: Arc::clone(&stats),
        stop: Arc::clone(&stop),
        stopped_at: OnceLock::new(),
        dlq_lock: Mutex::new(()),
    });
    let mut lanes: Vec<Lane> = (0..settings.lanes.max(1)).map(|_| Lane::new()).collect();
    // The consumer's own health: degraded on a consumer error (the broker
    // away), Ok again on the next record or once the broker answers a
    // metadata request (an idle topic brings no record).
    let consumer_health = health_id();
    let mut broker_failing_probe: Option<Instant> = None;
    // The stall watchdog: every `stall_wait` it samples, for every
    // partition of the topic, the offset stored in PostgreSQL and the log
    // end; a partition with records waiting whose stored offset has not
    // moved since the last sample is stuck (whoever holds it, if anyone),
    // and the worker leaves the group and joins afresh, which makes the
    // group rebalance. Each rejoin that does not help doubles the wait.
    let stall_after =
        Duration::from_millis(u64::from(settings.session_timeout_ms) * 3).max(MIN_STALL_WAIT);
    let mut stall_wait = stall_after;
    let mut next_stall_check = Instant::now() + stall_wait;
    let mut last_sample: Option<HashMap<i32, i64>> = None;
    let mut generation = consumer.context().generation();
    let mut expected = consumer.context().assigned_starts();
    let topic = settings.topic.as_str();

    // The last poll found nothing more waiting.
    let mut caught_up = false;
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if !stopping {
            let now = Instant::now();
            // Records waiting: look once more without blocking when their
            // lane's writer is free (they are written as soon as nothing
            // more has arrived), and check back on a busy writer often.
            let waiting = lanes.iter().filter(|l| !l.pending.is_empty());
            let cap = waiting
                .map(|l| {
                    if l.writer_free() {
                        Duration::ZERO
                    } else {
                        WRITER_CHECK
                    }
                })
                .min()
                .unwrap_or(Duration::from_millis(200));
            let wait = lanes
                .iter()
                .filter_map(|l| l.deadline)
                .map(|d| d.saturating_duration_since(now))
                .min()
                .unwrap_or(cap)
                .min(cap);
            if let (Some(parts), Some(at)) = (&wanted, next_assign) {
                if Instant::now() >= at {
                    // A new client's first metadata request waits for its
                    // connection: give it time while nothing is read yet
                    // (a stop then waits for it); later checks are short.
                    let unassigned = !consumer.assignment().is_ok_and(|a| a.count() > 0);
                    let timeout = if unassigned {
                        FIRST_ASSIGN_TIMEOUT
                    } else {
                        Duration::from_secs(1)
                    };
                    next_assign = Some(
                        match bus::assign_partitions(&consumer, topic, reads, timeout) {
                            Ok(all) => {
                                let missing: Vec<i32> = parts
                                    .iter()
                                    .flatten()
                                    .copied()
                                    .filter(|p| !all.contains(p))
                                    .collect();
                                if !missing.is_empty() && missing != missing_reported {
                                    tracing::warn!(%topic, partitions = ?missing, "ingest_partitions names partitions the topic does not have (yet)");
                                }
                                missing_reported = missing;
                                Instant::now() + REASSIGN_EVERY
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot assign partitions yet; retrying");
                                Instant::now()
                                    + if unassigned {
                                        Duration::from_millis(100)
                                    } else {
                                        BROKER_PROBE_EVERY
                                    }
                            }
                        },
                    );
                }
            }
            let polled = consumer.poll(wait);
            caught_up = polled.is_none();
            let g = consumer.context().generation();
            if g != generation {
                let buffered: usize = lanes.iter().map(|l| l.pending.records).sum();
                if buffered > 0 {
                    tracing::info!(
                        records = buffered,
                        "assignment changed: dropping buffered records, they are re-read from stored offsets"
                    );
                    stats
                        .dropped_on_rebalance
                        .fetch_add(buffered as u64, Ordering::Relaxed);
                    for l in &mut lanes {
                        l.pending = Pending::default();
                        l.deadline = None;
                    }
                }
                generation = g;
                expected = consumer.context().assigned_starts();
            }
            match polled {
                Some(Ok(m)) => {
                    if broker_failing_probe.take().is_some() {
                        stats.recovered(consumer_health);
                    }
                    stats.consumed.fetch_add(1, Ordering::Relaxed);
                    let (p, o) = (m.partition(), m.offset());
                    if let Some(gap) = expected.insert(p, o + 1).map(|e| o - e).filter(|g| *g > 0) {
                        tracing::error!(
                            partition = p,
                            missing_from = o - gap,
                            missing = gap,
                            "offsets skipped: the broker no longer holds them (retention); those records were never ingested"
                        );
                        stats
                            .offsets_skipped
                            .fetch_add(gap as u64, Ordering::Relaxed);
                    }
                    let n = lanes.len().max(1);
                    // `lanes` has at least one lane (built with `max(1)`),
                    // so the index is always in range.
                    let Some(lane) = lanes.get_mut(p.rem_euclid(n as i32) as usize) else {
                        continue;
                    };
                    let decoding = Instant::now();
                    lane.pending
                        .add(p, o, m.key(), m.payload(), settings.max_future_skew);
                    stats
                        .steps
                        .decode_ns
                        .fetch_add(nanos(decoding.elapsed()), Ordering::Relaxed);
                    if lane.deadline.is_none() {
                        lane.deadline = Some(Instant::now() + settings.batch_timeout);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    // The broker away (not a one-off error): degraded until
                    // a record arrives or the broker answers again.
                    if broker_unreachable(&e) {
                        stats.degraded(consumer_health, format!("reading from Kafka: {e}"));
                        broker_failing_probe = Some(Instant::now() + BROKER_PROBE_EVERY);
                    }
                }
                None => {}
            }
            // Not while a service is away (this worker degraded): that is an
            // outage, not a stall, and a rejoin would not help.
            if Instant::now() >= next_stall_check
                && (broker_failing_probe.is_some() || stats.health() != IngestHealth::Ok)
            {
                last_sample = None;
                next_stall_check = Instant::now() + stall_wait;
            }
            if Instant::now() >= next_stall_check {
                let sample = sample_progress(
                    &consumer,
                    &rt,
                    &offsets_store,
                    &settings.group_id,
                    topic,
                    reads,
                );
                let stuck = match (&last_sample, &sample) {
                    (Some(before), Some(now)) => stuck_partitions(before, now),
                    _ => Vec::new(),
                };
                if stuck.is_empty() {
                    stall_wait = stall_after;
                    last_sample = sample;
                } else {
                    tracing::warn!(
                        group = %settings.group_id,
                        partitions = ?stuck,
                        idle_s = stall_wait.as_secs(),
                        "ingest is stuck (records wait, none stored): starting a new Kafka consumer (a group member rejoins)"
                    );
                    for lane in &mut lanes {
                        finish_in_flight(&rt, &consumer, topic, &mut lane.in_flight)?;
                        // Re-read from stored offsets once assigned.
                        stats
                            .dropped_on_rebalance
                            .fetch_add(lane.pending.records as u64, Ordering::Relaxed);
                        lane.pending = Pending::default();
                        lane.deadline = None;
                    }
                    stats.rejoins.fetch_add(1, Ordering::Relaxed);
                    // Dropping it closes it: it leaves the group.
                    drop(consumer);
                    consumer = new_consumer()?;
                    next_assign = wanted.as_ref().map(|_| Instant::now());
                    generation = consumer.context().generation();
                    expected = consumer.context().assigned_starts();
                    stall_wait = (stall_wait * 2).min(MAX_STALL_WAIT);
                    last_sample = sample;
                    next_stall_check = Instant::now() + stall_wait;
                    continue;
                }
                next_stall_check = Instant::now() + stall_wait;
            }
            if broker_failing_probe.is_some_and(|t| Instant::now() >= t) {
                if consumer
                    .fetch_metadata(Some(topic), Duration::from_millis(500))
                    .is_ok()
                {
                    broker_failing_probe = None;
                    stats.recovered(consumer_health);
                } else {
                    broker_failing_probe = Some(Instant::now() + BROKER_PROBE_EVERY);
                }
            }
        }
        let now = Instant::now();
        for lane in &mut lanes {
            let due = lane.deadline.is_some_and(|d| now >= d);
            let full = lane.pending.records >= settings.batch_size;
            // Nothing more was immediately available and the writer is free:
            // waiting for the timeout would only add latency.
            let ready = caught_up && lane.writer_free();
            if !lane.pending.is_empty() && (full || due || ready || stopping) {
                finish_in_flight(&rt, &consumer, topic, &mut lane.in_flight)?;
                let batch = std::mem::take(&mut lane.pending);
                let (w, id) = (Arc::clone(&writer), lane.id);
                lane.in_flight = Some(rt.spawn_blocking(move || w.write(batch, id)));
                lane.deadline = None;
            } else if stopping || lane.in_flight.as_ref().is_some_and(|h| h.is_finished()) {
                finish_in_flight(&rt, &consumer, topic, &mut lane.in_flight)?;
            }
        }
        if stopping {
            for lane in &mut lanes {
                finish_in_flight(&rt, &consumer, topic, &mut lane.in_flight)?;
            }
            break;
        }
    }
    consumer.unsubscribe();
    stats.recovered(consumer_health);
    Ok(())
}

/// Waits, before the first join, until a session timeout has passed since
/// the group last committed: a member that committed less than a session
/// ago may still be in the group, alive or SIGKILLed (it never left). A
/// joiner that comes after the broker has expired a dead member is not
/// made to share partitions with it; tansu 0.6 otherwise hands the dead
/// member partitions and does not rebalance when it expires it, and they
/// wait until the stall watchdog notices. A live member costs the joiner
/// at most one session timeout. Returns early on stop.
fn settle_before_joining(settings: &IngestSettings, store: &Store, rt: &Handle, stop: &AtomicBool) {
    let session = Duration::from_millis(u64::from(settings.session_timeout_ms));
    let age = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            store.last_commit_age(&settings.group_id, &settings.topic),
        )
        .await
    });
    let Ok(Ok(Some(age))) = age else {
        return;
    };
    let Some(wait) = (session + Duration::from_millis(500)).checked_sub(age) else {
        return;
    };
    tracing::info!(
        wait_ms = wait.as_millis() as u64,
        "the group committed less than a session ago: letting the broker expire a member that may be gone before joining"
    );
    let until = Instant::now() + wait;
    while Instant::now() < until && !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The shortest interval of the stall watchdog (see `run_worker`).
const MIN_STALL_WAIT: Duration = Duration::from_secs(15);

/// The longest: a rejoin that did not help doubles the wait up to this.
const MAX_STALL_WAIT: Duration = Duration::from_secs(600);

/// The partitions of `topic` this worker `reads` (in a group: all of them,
/// whoever holds them) with records past the offset stored for `group`
/// (its log end is further), each with that stored offset; `None`
/// when either side cannot be read now (then there is no judgement).
fn sample_progress(
    consumer: &bus::IngestConsumer,
    rt: &Handle,
    store: &Store,
    group: &str,
    topic: &str,
    reads: impl Fn(i32) -> bool,
) -> Option<HashMap<i32, i64>> {
    let timeout = Duration::from_secs(2);
    let meta = consumer.fetch_metadata(Some(topic), timeout).ok()?;
    let partitions: Vec<i32> = meta
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .filter(|p| reads(*p))
        .collect();
    let stored = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                store.stored_offsets(group, topic, &partitions),
            )
            .await
        })
        .ok()?
        .ok()?;
    let mut waiting = HashMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout).ok()?;
        let at = stored.get(&p).copied().unwrap_or(low);
        if high > at {
            waiting.insert(p, at);
        }
    }
    Some(waiting)
}

/// Partitions that had records waiting at both samples (`partition →
/// stored offset`) without their stored offset moving.
fn stuck_partitions(before: &HashMap<i32, i64>, now: &HashMap<i32, i64>) -> Vec<i32> {
    let mut stuck: Vec<i32> = now
        .iter()
        .filter(|(p, at)| before.get(p) == Some(at))
        .map(|(p, _)| *p)
        .collect();
    stuck.sort_unstable();
    stuck
}

/// Whether a consumer error means the broker cannot be reached (as opposed
/// to a one-off error on a connection that comes back by itself).
fn broker_unreachable(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    matches!(
        e,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure
        ) | KafkaError::MessageConsumptionFatal(_)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A log writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_newline_in_a_record_cannot_forge_a_log_line() {
        let payload = br#"{"type":"sale\n2026-12-06T00:00:00Z  INFO forged: all good","x":1}"#;
        let reason = match crate::event::Event::decode(payload, chrono::Utc::now()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("decoded"),
        };
        assert!(
            reason.contains('\n'),
            "the reason quotes the type: {reason:?}"
        );
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, || {
            log_dead_lettered(&Reject {
                key: Vec::new(),
                payload: payload.to_vec(),
                partition: 0,
                offset: 7,
                kind: "invalid",
                reason,
            })
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("record dead-lettered"), "{text}");
        assert!(text.contains("forged"), "{text}");
    }
}
