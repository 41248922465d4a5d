//! The ingest consumer: a group member that, on every partition assignment,
//! starts each partition at the offset its sink has durably stored, not at
//! Kafka's committed offset.
//!
//! Rebalancing is eager (range/roundrobin): every rebalance revokes all
//! partitions and assigns afresh, bumping [`IngestContext::generation`]. The
//! worker drops whatever it had buffered but not written when the generation
//! changes: the new assignment re-reads those records from the stored offsets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::{base_config, BusError};

/// Where a consumer's authoritative offsets live (PostgreSQL, for ingest).
pub trait OffsetSource: Send + Sync + 'static {
    /// Next offset to read per partition; partitions never written are absent.
    fn stored_offsets(&self, topic: &str, partitions: &[i32]) -> Result<HashMap<i32, i64>, String>;
}

/// The ingest consumer's context: on every assignment it starts each
/// partition at the offset its [`OffsetSource`] stored, and it counts
/// assignment changes ([`IngestContext::generation`]).
pub struct IngestContext {
    source: Box<dyn OffsetSource>,
    generation: AtomicU64,
    /// Start offsets of the latest assignment, where known.
    starts: Mutex<HashMap<i32, i64>>,
}

/// A consumer whose assignments go through [`IngestContext`].
pub type IngestConsumer = BaseConsumer<IngestContext>;

impl IngestContext {
    /// Bumped on every assignment change.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The offsets the latest assignment started from (partitions that start
    /// from the beginning are absent).
    pub(crate) fn assigned_starts(&self) -> HashMap<i32, i64> {
        self.starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl IngestContext {
    /// Sets each partition's start in `tpl` to the offset its sink stored
    /// (the beginning when none is stored, or when the stored one is past
    /// the end of the log), recording them in `starts`.
    fn set_start_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        starts: &mut HashMap<i32, i64>,
        by_topic: HashMap<String, Vec<i32>>,
        tpl: &mut TopicPartitionList,
    ) {
        for (topic, parts) in by_topic {
            match self.source.stored_offsets(&topic, &parts) {
                Ok(mut stored) => {
                    for p in parts {
                        // A stored offset past the end of the log means the
                        // topic was recreated or truncated: its records are
                        // new ones, so read them from the start (keys make
                        // re-reads harmless) rather than skip them.
                        if let Some(o) = stored.get(&p).copied() {
                            if let Ok((_, high)) =
                                consumer.fetch_watermarks(&topic, p, Duration::from_secs(5))
                            {
                                if o > high {
                                    tracing::error!(%topic, partition = p, stored = o, log_end = high,
                                        "stored offset is past the end of the log (topic recreated?); reading the partition from the beginning");
                                    stored.remove(&p);
                                }
                            }
                        }
                        let offset = stored
                            .get(&p)
                            .map_or(Offset::Beginning, |o| Offset::Offset(*o));
                        if let Some(o) = stored.get(&p) {
                            starts.insert(p, *o);
                        }
                        if let Err(e) = tpl.set_partition_offset(&topic, p, offset) {
                            tracing::error!(%topic, partition = p, error = %e, "cannot set start offset");
                        }
                    }
                    tracing::info!(%topic, partitions = ?stored, "assigned; starting from stored offsets");
                }
                Err(e) => {
                    // Kafka's committed offsets are only ever committed after the
                    // sink's transaction, so they are never ahead of it: starting
                    // there may re-read (deduplicated downstream) but never skips.
                    tracing::warn!(%topic, error = %e, "stored offsets unavailable; starting from Kafka's committed offsets");
                    for p in parts {
                        let _ = tpl.set_partition_offset(&topic, p, Offset::Stored);
                    }
                }
            }
        }
    }
}

impl ClientContext for IngestContext {}

impl ConsumerContext for IngestContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let mut starts = self.starts.lock().unwrap_or_else(|p| p.into_inner());
        starts.clear();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut by_topic: HashMap<String, Vec<i32>> = HashMap::new();
                for e in tpl.elements() {
                    by_topic
                        .entry(e.topic().to_owned())
                        .or_default()
                        .push(e.partition());
                }
                self.set_start_offsets(consumer, &mut starts, by_topic, tpl);
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping assignment");
                let _ = consumer.unassign();
            }
        }
        drop(starts);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

pub use crate::config::Assignment;

/// For [`Assignment::Static`]: assigns `consumer` the partitions of `topic`
/// that exist and `keep` accepts, each from its stored offset, unless that
/// is what it reads already (then [`IngestContext::generation`] stays).
/// Returns every partition the topic has. A metadata answer with an error,
/// or without the topic, is an error (the assignment stays as it was).
/// `timeout` bounds the metadata request.
pub(crate) fn assign_partitions(
    consumer: &IngestConsumer,
    topic: &str,
    keep: impl Fn(i32) -> bool,
    timeout: Duration,
) -> Result<Vec<i32>, BusError> {
    let meta = consumer.fetch_metadata(Some(topic), timeout)?;
    let t = meta
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or(BusError::Kafka(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        )))?;
    if let Some(e) = t.error() {
        return Err(BusError::Kafka(KafkaError::MetadataFetch(e.into())));
    }
    let mut all: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    all.sort_unstable();
    let parts: Vec<i32> = all.iter().copied().filter(|p| keep(*p)).collect();
    let mut current: Vec<i32> = consumer
        .assignment()?
        .elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect();
    current.sort_unstable();
    if parts == current {
        return Ok(all);
    }
    let ctx = consumer.context();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition(topic, *p);
    }
    {
        let mut starts = ctx.starts.lock().unwrap_or_else(|p| p.into_inner());
        starts.clear();
        let by_topic = HashMap::from([(topic.to_owned(), parts.clone())]);
        ctx.set_start_offsets(consumer, &mut starts, by_topic, &mut tpl);
        consumer.assign(&tpl)?;
    }
    ctx.generation.fetch_add(1, Ordering::AcqRel);
    tracing::info!(%topic, partitions = ?parts, "reading assigned partitions (no consumer group)");
    Ok(all)
}

/// A consumer in `group_id` for `topic`, with manual commits: subscribed
/// (the group assigns partitions) for [`Assignment::Group`]; for
/// [`Assignment::Static`] it reads nothing until [`assign_partitions`].
pub(crate) fn ingest_consumer(
    brokers: &str,
    group_id: &str,
    topic: &str,
    session_timeout_ms: u32,
    assignment: &Assignment,
    source: Box<dyn OffsetSource>,
) -> Result<IngestConsumer, BusError> {
    let ctx = IngestContext {
        source,
        generation: AtomicU64::new(0),
        starts: Mutex::new(HashMap::new()),
    };
    // Members learn of a rebalance through heartbeats: keep them frequent so a
    // joining worker waits at most about a second.
    let heartbeat = (session_timeout_ms / 3).clamp(100, 1_000);
    let consumer: IngestConsumer = base_config(brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "roundrobin")
        .set("session.timeout.ms", session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", heartbeat.to_string())
        // A broker that answers an empty fetch only when this expires (the
        // embedded mock cluster does) delays each record by up to this
        // much; a real one answers as soon as data arrives.
        .set("fetch.wait.max.ms", "10")
        .set("queued.max.messages.kbytes", "65536")
        .create_with_context(ctx)?;
    if *assignment == Assignment::Group {
        consumer.subscribe(&[topic])?;
    }
    Ok(consumer)
}

/// Commits `next offsets` to Kafka (asynchronously), for lag monitoring only.
pub(crate) fn commit_async(
    consumer: &IngestConsumer,
    topic: &str,
    offsets: &[(i32, i64)],
) -> KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
    }
    consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async)
}

#[cfg(test)]
mod tests {
    use super::Assignment;

    #[test]
    fn assignments_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!("group".parse(), Ok(Assignment::Group));
        assert_eq!("all".parse(), Ok(Assignment::Static(None)));
        assert_eq!(
            " 4, 0,2,2 ".parse(),
            Ok(Assignment::Static(Some(vec![0, 2, 4])))
        );
        for bad in ["", "0,", "-1", "x", "0;1", "groups"] {
            let err = bad.parse::<Assignment>().unwrap_err();
            assert!(err.contains("group, all, or partitions"), "{bad}: {err}");
        }
    }
}
