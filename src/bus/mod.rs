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

pub(crate) use consumer::{assign_partitions, commit_async, ingest_consumer};
pub use consumer::{Assignment, IngestConsumer, IngestContext, OffsetSource};
pub use mock::EmbeddedBroker;
pub use producer::{backoff, EventProducer, ProducerConfig, ProducerStats};

/// Errors of the Kafka layer.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// An error from librdkafka.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A topic could not be created, or did not show in metadata with
    /// leaders within 30 s.
    #[error("creating topic {topic}: {reason}")]
    CreateTopic {
        /// The topic's name.
        topic: String,
        /// The broker's error code, or what did not happen in time.
        reason: String,
    },
    /// The brokers did not answer a metadata request ([`ping`]).
    #[error("broker at {brokers} unreachable: {reason}")]
    Unreachable {
        /// The bootstrap servers asked.
        brokers: String,
        /// The client's error.
        reason: String,
    },
    /// Messages were given up on after all attempts, or a flush timed out
    /// with messages still in flight.
    #[error("{failed} message(s) could not be delivered after retries: {last_error}")]
    Undelivered {
        /// Messages failed since the last flush (on a timeout: still in flight).
        failed: u64,
        /// The latest delivery error, or that the flush timed out.
        last_error: String,
    },
    /// The embedded mock broker failed; the text says how.
    #[error("embedded broker: {0}")]
    Embedded(String),
    /// Given up because a stop was asked for.
    #[error("cancelled: stopping")]
    Cancelled,
}

/// Security properties every client gets (`security.protocol`, `ssl.*`).
static SECURITY: std::sync::RwLock<Vec<(String, String)>> = std::sync::RwLock::new(Vec::new());

/// Sets how every Kafka client made from now on talks to the brokers:
/// librdkafka security properties such as `security.protocol=ssl` and
/// `ssl.ca.location` (see [`crate::config::Config::kafka_security`]). Set
/// once at startup, from the configuration.
pub fn set_security(props: Vec<(String, String)>) {
    *SECURITY.write().unwrap_or_else(|p| p.into_inner()) = props;
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
    for (k, v) in SECURITY.read().unwrap_or_else(|p| p.into_inner()).iter() {
        c.set(k, v);
    }
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
pub(crate) fn end_offsets(brokers: &str, topic: &str) -> Result<Vec<(i32, i64)>, BusError> {
    OffsetProbe::new(brokers)?.end_offsets(topic)
}

/// A long-lived client for reading high watermarks (consumer lag), so that a
/// dashboard polling every second does not open a connection each time.
pub struct OffsetProbe {
    client: BaseProducer,
}

impl OffsetProbe {
    /// Creates the client for `brokers` (3 s connection setup timeout).
    pub fn new(brokers: &str) -> Result<Self, BusError> {
        Ok(Self {
            client: base_config(brokers)
                .set("socket.connection.setup.timeout.ms", "3000")
                .create()?,
        })
    }

    /// High watermark of every partition of `topic`, by partition.
    pub(crate) fn end_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, BusError> {
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
