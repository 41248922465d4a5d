//! One ingest worker: a consumer-group member on its own OS thread.
//!
//! It gathers records until the batch is full or its time is up, decodes and
//! validates each, sends rejects to the dead-letter topic (reason in headers)
//! and waits for their delivery, then writes the valid rows *and the partition
//! offsets* in one PostgreSQL transaction. Only after that commit are offsets
//! committed to Kafka, for lag monitoring; PostgreSQL stays the authority on
//! where each partition resumes (see [`crate::bus::IngestContext`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Message, OwnedHeaders};
use tokio::runtime::Handle;

use crate::bus::{self, BusError, EventProducer, OffsetSource, ProducerConfig};
use crate::event::{Event, Rejection};
use crate::store::{Batch, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gave up writing a batch after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
}

#[derive(Clone, Debug)]
pub struct IngestSettings {
    pub brokers: String,
    pub group_id: String,
    pub topic: String,
    pub dlq_topic: String,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    /// Parallel write lanes per worker.
    pub lanes: usize,
    pub session_timeout_ms: u32,
    pub dlq_producer: ProducerConfig,
}

impl IngestSettings {
    pub fn from_config(cfg: &crate::config::Config, brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            group_id: cfg.group_id.clone(),
            topic: cfg.topic.clone(),
            dlq_topic: cfg.dlq_topic.clone(),
            batch_size: cfg.batch_size,
            batch_timeout: Duration::from_millis(cfg.batch_timeout_ms),
            lanes: cfg.ingest_lanes,
            session_timeout_ms: cfg.kafka_session_timeout_ms,
            dlq_producer: ProducerConfig::from_config(cfg, brokers),
        }
    }
}

/// Live counters of one or more workers.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub consumed: AtomicU64,
    pub sales: AtomicU64,
    pub sessions: AtomicU64,
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub batches: AtomicU64,
    pub write_retries: AtomicU64,
    pub dropped_on_rebalance: AtomicU64,
    /// Offsets that were expected but never delivered (broker retention or
    /// compaction removed them before they were ingested). Always reported.
    pub offsets_skipped: AtomicU64,
}

impl IngestStats {
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

struct Reject {
    key: Vec<u8>,
    payload: Vec<u8>,
    partition: i32,
    offset: i64,
    why: Rejection,
}

#[derive(Default)]
struct Pending {
    batch: Batch,
    rejects: Vec<Reject>,
    next_offsets: BTreeMap<i32, i64>,
    records: usize,
    dlq_done: bool,
}

impl Pending {
    fn add(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>) {
        self.records += 1;
        let next = self.next_offsets.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
        let decoded = match payload {
            Some(p) => Event::decode(p, Utc::now()),
            None => Err(Rejection::Undecodable("empty payload".into())),
        };
        match decoded {
            Ok(Event::Sale(s)) => self.batch.sales.push((s, partition, offset)),
            Ok(Event::Session(s)) => self.batch.sessions.push((s, partition, offset)),
            Err(why) => self.rejects.push(Reject {
                key: key.unwrap_or_default().to_vec(),
                payload: payload.unwrap_or_default().to_vec(),
                partition,
                offset,
                why,
            }),
        }
    }

    fn is_empty(&self) -> bool {
        self.records == 0
    }
}

/// Writes batches for one worker: rejects to the DLQ, rows to the store,
/// retrying transient failures with exponential backoff.
struct Writer {
    settings: IngestSettings,
    dlq: EventProducer,
    store: Store,
    rt: Handle,
    stats: Arc<IngestStats>,
}

/// A batch being written on a blocking task.
type InFlight = tokio::task::JoinHandle<Result<Vec<(i32, i64)>, IngestError>>;

impl Writer {
    /// Writes `pending` (blocking), returning the offsets it committed.
    fn write(&self, mut pending: Pending) -> Result<Vec<(i32, i64)>, IngestError> {
        let mut attempt = 0u32;
        loop {
            match self.try_write(&mut pending) {
                Ok(()) => return Ok(pending.next_offsets.into_iter().collect()),
                Err(e) => {
                    attempt += 1;
                    let transient = match &e {
                        IngestError::Store(s) => s.is_transient(),
                        IngestError::Bus(_) => true,
                        IngestError::GaveUp { .. } => false,
                    };
                    if !transient || attempt >= MAX_ATTEMPTS {
                        return Err(IngestError::GaveUp {
                            attempts: attempt,
                            last: e.to_string(),
                        });
                    }
                    self.stats.write_retries.fetch_add(1, Ordering::Relaxed);
                    let wait = crate::bus::backoff(attempt as usize);
                    tracing::warn!(attempt, error = %e, ?wait, "batch not written, retrying");
                    std::thread::sleep(wait);
                }
            }
        }
    }

    fn try_write(&self, pending: &mut Pending) -> Result<(), IngestError> {
        let (settings, stats) = (&self.settings, &self.stats);
        if !pending.dlq_done && !pending.rejects.is_empty() {
            for r in &pending.rejects {
                let reason = r.why.to_string();
                let partition = r.partition.to_string();
                let offset = r.offset.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "salespulse.error",
                        value: Some(reason.as_str()),
                    })
                    .insert(Header {
                        key: "salespulse.error.kind",
                        value: Some(r.why.kind()),
                    })
                    .insert(Header {
                        key: "salespulse.source.topic",
                        value: Some(settings.topic.as_str()),
                    })
                    .insert(Header {
                        key: "salespulse.source.partition",
                        value: Some(partition.as_str()),
                    })
                    .insert(Header {
                        key: "salespulse.source.offset",
                        value: Some(offset.as_str()),
                    });
                self.dlq.send_with_headers(&r.key, &r.payload, headers)?;
            }
            // Rejects must be safely in the DLQ before their offsets are committed.
            self.dlq.flush(Duration::from_secs(120))?;
            pending.dlq_done = true;
            stats
                .dead_lettered
                .fetch_add(pending.rejects.len() as u64, Ordering::Relaxed);
            for r in &pending.rejects {
                tracing::warn!(partition = r.partition, offset = r.offset, reason = %r.why, "record dead-lettered");
            }
        }
        pending.batch.offsets = pending.next_offsets.iter().map(|(p, o)| (*p, *o)).collect();
        let started = Instant::now();
        let out = self.rt.block_on(self.store.write_batch(
            &settings.group_id,
            &settings.topic,
            &pending.batch,
        ))?;
        tracing::debug!(
            records = pending.records,
            sales = pending.batch.sales.len(),
            sessions = pending.batch.sessions.len(),
            write_ms = started.elapsed().as_millis() as u64,
            "batch written"
        );
        let valid = (pending.batch.sales.len() + pending.batch.sessions.len()) as u64;
        stats.sales.fetch_add(out.sales, Ordering::Relaxed);
        stats.sessions.fetch_add(out.sessions, Ordering::Relaxed);
        stats
            .duplicates
            .fetch_add(valid - out.sales - out.sessions, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
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
        let offsets = rt.block_on(h).map_err(|e| IngestError::GaveUp {
            attempts: 1,
            last: format!("writer task failed: {e}"),
        })??;
        if let Err(e) = bus::commit_async(consumer, topic, &offsets) {
            tracing::debug!(error = %e, "kafka offset commit failed");
        }
    }
    Ok(())
}

/// One write lane: the partitions `p` with `p % lanes == lane index`, their
/// buffered batch and at most one batch being written.
#[derive(Default)]
struct Lane {
    pending: Pending,
    deadline: Option<Instant>,
    in_flight: Option<InFlight>,
}

/// Runs one worker until `stop` is set; then writes what it holds and leaves
/// the group. Blocking: call it on a dedicated thread, with a handle to the
/// runtime the store lives on.
///
/// Partitions are spread over `lanes` write lanes. Each lane buffers its own
/// batch and has at most one batch being written (on a blocking task), so a
/// partition's offsets are committed in order while decoding overlaps writing
/// and lanes write in parallel. Lanes never share customers (they are keyed by
/// partition) and take shared rollup rows in the same sorted order.
pub fn run_worker(
    settings: &IngestSettings,
    store: Store,
    rt: Handle,
    stop: Arc<AtomicBool>,
    stats: Arc<IngestStats>,
) -> Result<(), IngestError> {
    let source = PgOffsets {
        store: store.clone(),
        rt: rt.clone(),
        group: settings.group_id.clone(),
    };
    let consumer = bus::ingest_consumer(
        &settings.brokers,
        &settings.group_id,
        &settings.topic,
        settings.session_timeout_ms,
        Box::new(source),
    )?;
    let writer = Arc::new(Writer {
        settings: settings.clone(),
        dlq: EventProducer::new(&settings.dlq_producer, &settings.dlq_topic)?,
        store,
        rt: rt.clone(),
        stats: Arc::clone(&stats),
    });
    let mut lanes: Vec<Lane> = (0..settings.lanes.max(1))
        .map(|_| Lane::default())
        .collect();
    let mut generation = consumer.context().generation();
    let mut expected = consumer.context().assigned_starts();
    let topic = settings.topic.as_str();

    loop {
        let stopping = stop.load(Ordering::Acquire);
        if !stopping {
            let now = Instant::now();
            let wait = lanes
                .iter()
                .filter_map(|l| l.deadline)
                .map(|d| d.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_millis(200))
                .min(Duration::from_millis(200));
            let polled = consumer.poll(wait);
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
                    let n = lanes.len();
                    let lane = &mut lanes[p.rem_euclid(n as i32) as usize];
                    lane.pending.add(p, o, m.key(), m.payload());
                    if lane.deadline.is_none() {
                        lane.deadline = Some(Instant::now() + settings.batch_timeout);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => {}
            }
        }
        let now = Instant::now();
        for lane in &mut lanes {
            let due = lane.deadline.is_some_and(|d| now >= d);
            let full = lane.pending.records >= settings.batch_size;
            if !lane.pending.is_empty() && (full || due || stopping) {
                finish_in_flight(&rt, &consumer, topic, &mut lane.in_flight)?;
                let batch = std::mem::take(&mut lane.pending);
                let w = Arc::clone(&writer);
                lane.in_flight = Some(rt.spawn_blocking(move || w.write(batch)));
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
    Ok(())
}

const MAX_ATTEMPTS: u32 = 40;
