//! The event producer: idempotent, acks=all, lz4, batched by linger.
//!
//! librdkafka retries each message internally with exponential backoff
//! (`retry.backoff.ms` doubling up to `retry.backoff.max.ms`) until
//! `message.timeout.ms`. A message that still fails is handed back to us in the
//! delivery report; we re-enqueue it with our own exponential backoff, up to
//! [`ProducerConfig::max_attempts`] times, and only then count it as failed and
//! make [`EventProducer::flush`] return an error. Nothing is dropped silently.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::{base_config, BusError};

/// Settings of an [`EventProducer`].
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// How long librdkafka waits to fill a batch (`linger.ms`), in ms.
    pub linger_ms: u32,
    /// Idempotent producer (`enable.idempotence`).
    pub idempotence: bool,
    /// How long librdkafka retries one message (`message.timeout.ms`), in ms.
    pub message_timeout_ms: u32,
    /// Application-level attempts per message (each one a full librdkafka retry cycle).
    pub max_attempts: u32,
}

impl ProducerConfig {
    /// Settings from `cfg` for `brokers`, with 5 attempts per message.
    pub fn from_config(cfg: &crate::config::Config, brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            linger_ms: cfg.kafka_linger_ms,
            idempotence: cfg.kafka_idempotence,
            message_timeout_ms: cfg.kafka_message_timeout_ms,
            max_attempts: 5,
        }
    }
}

/// Live counters, shared with whoever reports on the producer.
#[derive(Debug, Default)]
pub struct ProducerStats {
    /// Records enqueued by a send (retries are not counted again).
    pub sent: AtomicU64,
    /// Messages acknowledged by the broker.
    pub delivered: AtomicU64,
    /// Failed deliveries re-enqueued for another attempt.
    pub retried: AtomicU64,
    /// Messages given up on: out of attempts, or a non-retriable error.
    pub failed: AtomicU64,
    /// Highest delivered offset per partition.
    high_offsets: Mutex<HashMap<i32, i64>>,
    last_error: Mutex<Option<String>>,
}

impl ProducerStats {
    /// Next offset after the last delivered message, per partition.
    pub fn delivered_end_offsets(&self) -> Vec<(i32, i64)> {
        let map = self.high_offsets.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map.iter().map(|(p, o)| (*p, o + 1)).collect();
        v.sort_unstable();
        v
    }

    /// The latest delivery error, if any (kept after later deliveries succeed).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

struct Retry {
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
    attempt: usize,
    ready_at: Instant,
}

/// The producer's context: counts deliveries into [`ProducerStats`] and
/// queues failed messages for another attempt after [`backoff`].
pub(crate) struct DeliveryTracker {
    stats: Arc<ProducerStats>,
    retries: Mutex<VecDeque<Retry>>,
    max_attempts: usize,
}

impl ClientContext for DeliveryTracker {}

/// Whether a send failed because the client's metadata lacks the topic or
/// the partition.
fn unknown_topic(e: &BusError) -> bool {
    matches!(
        e,
        BusError::Kafka(KafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::UnknownTopicOrPartition
        ))
    )
}

fn retriable(e: &KafkaError) -> bool {
    !matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::Fatal
        )
    )
}

/// Exponential backoff: 200 ms, 400 ms, 800 ms, … capped at 10 s.
pub fn backoff(attempt: usize) -> Duration {
    let ms = 200u64.saturating_mul(1 << attempt.min(16));
    Duration::from_millis(ms.min(10_000))
}

impl ProducerContext for DeliveryTracker {
    /// The attempt number of the message (0 for the first).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, attempt: usize) {
        match result {
            Ok(m) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                let mut high = self
                    .stats
                    .high_offsets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let e = high.entry(m.partition()).or_insert(-1);
                *e = (*e).max(m.offset());
            }
            Err((e, m)) => {
                *self
                    .stats
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                let next = attempt + 1;
                if next < self.max_attempts && retriable(e) {
                    tracing::warn!(attempt = next, error = %e, "delivery failed, retrying");
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    self.retries
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back(Retry {
                            key: m.key().unwrap_or_default().to_vec(),
                            payload: m.payload().unwrap_or_default().to_vec(),
                            headers: m.headers().map(|h| h.detach()),
                            attempt: next,
                            ready_at: Instant::now() + backoff(next),
                        });
                } else {
                    tracing::error!(attempts = next, error = %e, "delivery failed for good");
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A producer for one topic: acks=all, lz4, idempotent when configured, with
/// application-level retries on top of librdkafka's (see the module docs).
pub struct EventProducer {
    inner: ThreadedProducer<DeliveryTracker>,
    topic: String,
    stats: Arc<ProducerStats>,
    /// How long a message may take (`message.timeout.ms`).
    message_timeout: Duration,
    /// Failures already reported by a flush.
    failed_reported: AtomicU64,
}

impl EventProducer {
    /// Creates a producer for `topic` with `cfg`'s settings.
    pub fn new(cfg: &ProducerConfig, topic: &str) -> Result<Self, BusError> {
        let stats = Arc::new(ProducerStats::default());
        let ctx = DeliveryTracker {
            stats: Arc::clone(&stats),
            retries: Mutex::new(VecDeque::new()),
            max_attempts: cfg.max_attempts.max(1) as usize,
        };
        let mut c = base_config(&cfg.brokers);
        c.set("acks", "all")
            .set("enable.idempotence", cfg.idempotence.to_string())
            .set("compression.type", "lz4")
            .set("linger.ms", cfg.linger_ms.to_string())
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "500000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("retry.backoff.ms", "100")
            .set("retry.backoff.max.ms", "5000")
            .set("message.timeout.ms", cfg.message_timeout_ms.to_string());
        let inner = c.create_with_context(ctx)?;
        Ok(Self {
            inner,
            topic: topic.to_owned(),
            stats,
            message_timeout: Duration::from_millis(u64::from(cfg.message_timeout_ms)),
            failed_reported: AtomicU64::new(0),
        })
    }

    /// The live counters, to share with whoever reports on them.
    pub fn stats(&self) -> &Arc<ProducerStats> {
        &self.stats
    }

    /// The topic this producer writes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Enqueues one record; blocks (briefly) while the local queue is full.
    pub fn send(&self, key: &[u8], payload: &[u8]) -> Result<(), BusError> {
        self.resend_ready()?;
        self.enqueue(key, payload, 0, None)?;
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// [`EventProducer::send`] that rides out a broker restart: while the
    /// client's metadata lacks a topic this producer has delivered to
    /// before (a restarting broker can answer metadata before it has
    /// loaded its topics, and librdkafka then refuses sends to the topic),
    /// it waits and tries again, for as long as a message may take
    /// (`message.timeout.ms`), or until `cancel` returns true
    /// ([`BusError::Cancelled`]). A topic never delivered to fails at once.
    pub(crate) fn send_patiently(
        &self,
        key: &[u8],
        payload: &[u8],
        cancel: &dyn Fn() -> bool,
    ) -> Result<(), BusError> {
        let mut since: Option<Instant> = None;
        loop {
            match self.send(key, payload) {
                Err(e) if unknown_topic(&e) && self.stats.delivered.load(Ordering::Relaxed) > 0 => {
                    let first = *since.get_or_insert_with(|| {
                        tracing::warn!(topic = %self.topic, error = %e, "the broker does not know the topic for now; waiting");
                        Instant::now()
                    });
                    if first.elapsed() >= self.message_timeout {
                        return Err(e);
                    }
                    if cancel() {
                        return Err(BusError::Cancelled);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                done => {
                    if since.is_some() && done.is_ok() {
                        tracing::info!(topic = %self.topic, "the broker knows the topic again");
                    }
                    return done;
                }
            }
        }
    }

    /// Enqueues one record with headers (used for the dead-letter topic).
    pub(crate) fn send_with_headers(
        &self,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), BusError> {
        self.resend_ready()?;
        self.enqueue(key, payload, 0, Some(headers))?;
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn enqueue(
        &self,
        key: &[u8],
        payload: &[u8],
        attempt: usize,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), BusError> {
        let mut record = BaseRecord::with_opaque_to(&self.topic, attempt)
            .key(key)
            .payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Re-enqueues failed messages whose backoff has elapsed.
    fn resend_ready(&self) -> Result<(), BusError> {
        let ready: Vec<Retry> = {
            let mut q = self
                .inner
                .context()
                .retries
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if q.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            let (ready, waiting): (VecDeque<_>, VecDeque<_>) =
                q.drain(..).partition(|r| r.ready_at <= now);
            *q = waiting;
            ready.into_iter().collect()
        };
        let mut ready = ready.into_iter();
        while let Some(r) = ready.next() {
            if let Err(e) = self.enqueue(&r.key, &r.payload, r.attempt, r.headers.clone()) {
                // Not sent: it and the rest go back to wait, nothing is dropped.
                let mut q = self
                    .inner
                    .context()
                    .retries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                q.push_back(r);
                q.extend(ready);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Waits until every message is delivered or has failed for good.
    /// Returns an error naming how many failed since the last flush.
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.flush_unless(timeout, &|| false)
    }

    /// [`EventProducer::flush`] that gives up with [`BusError::Cancelled`]
    /// as soon as `cancel` returns true (checked every 200 ms at most).
    pub(crate) fn flush_unless(
        &self,
        timeout: Duration,
        cancel: &dyn Fn() -> bool,
    ) -> Result<(), BusError> {
        let deadline = Instant::now() + timeout;
        loop {
            if cancel() {
                return Err(BusError::Cancelled);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // A flush error here is only a timeout; the loop decides.
            let _ = self.inner.flush(left.min(Duration::from_millis(200)));
            // In flight first: a failed delivery moves from in flight to the
            // retry queue, never back.
            let in_flight = self.inner.in_flight_count();
            let pending_retries = !self
                .inner
                .context()
                .retries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty();
            if pending_retries {
                self.resend_ready()?;
                if in_flight == 0 {
                    // Only retries waiting out their backoff.
                    std::thread::sleep(Duration::from_millis(20));
                }
            } else if in_flight == 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(BusError::Undelivered {
                    failed: self.inner.in_flight_count() as u64,
                    last_error: "flush timed out with messages in flight".into(),
                });
            }
        }
        let total = self.stats.failed.load(Ordering::Relaxed);
        let failed = total.saturating_sub(self.failed_reported.swap(total, Ordering::Relaxed));
        if failed > 0 {
            return Err(BusError::Undelivered {
                failed,
                last_error: self.stats.last_error().unwrap_or_default(),
            });
        }
        Ok(())
    }
}
