//! The Kafka layer: producer, consumer context, topic admin and the embedded
//! mock broker. Knows nothing about PostgreSQL: where offsets come from on
//! assignment is abstracted by [`OffsetSource`].

mod consumer;
mod mock;
mod producer;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};

pub use consumer::{commit_async, ingest_consumer, IngestConsumer, IngestContext, OffsetSource};
pub use mock::EmbeddedBroker;
pub use producer::{backoff, EventProducer, ProducerConfig, ProducerStats};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("broker at {brokers} unreachable: {reason}")]
    Unreachable { brokers: String, reason: String },
    #[error("{failed} message(s) could not be delivered after retries: {last_error}")]
    Undelivered { failed: u64, last_error: String },
    #[error("embedded broker: {0}")]
    Embedded(String),
    #[error("cancelled: stopping")]
    Cancelled,
}

/// Settings shared by every client of this project.
pub fn base_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "salespulse")
        // Reconnects back off exponentially instead of hammering a dead broker.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000")
        .set("socket.keepalive.enable", "true");
    c
}

/// Creates each topic that does not exist yet. Existing topics are left as
/// they are (partitions are never changed here), so this also works against
/// brokers without the CreateTopics API once the topics exist.
pub async fn ensure_topics(
    brokers: &str,
    topics: &[(&str, i32)],
    replication: i32,
) -> Result<(), BusError> {
    let probe: BaseProducer = base_config(brokers).create()?;
    let visible = |name: &str| -> bool {
        probe
            .client()
            .fetch_metadata(Some(name), Duration::from_secs(5))
            .map(|m| {
                m.topics().iter().any(|t| {
                    t.name() == name
                        && t.error().is_none()
                        && !t.partitions().is_empty()
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            })
            .unwrap_or(false)
    };
    let missing: Vec<(&str, i32)> = topics
        .iter()
        .copied()
        .filter(|(name, _)| !visible(name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = base_config(brokers).create()?;
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(replication))
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new, &opts).await?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    // Wait until metadata shows every topic with leaders, so that the first
    // produce does not race topic creation.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for (name, _) in missing {
        while !visible(name) {
            if std::time::Instant::now() > deadline {
                return Err(BusError::CreateTopic {
                    topic: name.to_owned(),
                    reason: "not visible in metadata after 30 s".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Checks that the brokers answer a metadata request; returns the broker count.
pub fn ping(brokers: &str, timeout: Duration) -> Result<usize, BusError> {
    let probe: BaseProducer = base_config(brokers)
        .set("socket.connection.setup.timeout.ms", "3000")
        .create()?;
    probe
        .client()
        .fetch_metadata(None, timeout)
        .map(|m| m.brokers().len())
        .map_err(|e| BusError::Unreachable {
            brokers: brokers.to_owned(),
            reason: e.to_string(),
        })
}

/// High watermark (next offset to be written) of every partition of a topic.
pub fn end_offsets(brokers: &str, topic: &str) -> Result<Vec<(i32, i64)>, BusError> {
    OffsetProbe::new(brokers)?.end_offsets(topic)
}

/// A long-lived client for reading high watermarks (consumer lag), so that a
/// dashboard polling every second does not open a connection each time.
pub struct OffsetProbe {
    client: BaseProducer,
}

impl OffsetProbe {
    pub fn new(brokers: &str) -> Result<Self, BusError> {
        Ok(Self {
            client: base_config(brokers)
                .set("socket.connection.setup.timeout.ms", "3000")
                .create()?,
        })
    }

    /// High watermark of every partition of `topic`, by partition.
    pub fn end_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, BusError> {
        let client = self.client.client();
        let md = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut out = Vec::new();
        for t in md.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                let (_, high) = client.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                out.push((p.id(), high));
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}
