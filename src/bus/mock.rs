//! The embedded broker: librdkafka's mock cluster, a real Kafka-protocol
//! server on loopback TCP, held in memory for the life of the process.
//!
//! It does not implement the CreateTopics admin API, so topics are created
//! through the mock API here. For `salespulse broker`, a TCP forwarder on a
//! fixed port sits in front of it and is advertised in metadata, so other
//! processes can find it at a stable address.

// librdkafka's mock-cluster API has no safe binding: each call below
// says why it is sound.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};

use rdkafka::config::ClientConfig;
use rdkafka::producer::BaseProducer;
use rdkafka_sys as rdsys;
use tokio::net::{TcpListener, TcpStream};

use super::BusError;

/// librdkafka's in-process mock Kafka cluster, optionally behind a TCP
/// forwarder on a fixed port; dropping it shuts both down.
pub struct EmbeddedBroker {
    /// Owns the mock cluster; dropping it shuts the cluster down.
    client: BaseProducer,
    bootstrap: String,
    /// Unique per start: its logs begin empty, so offsets stored against an
    /// earlier incarnation mean nothing here.
    incarnation: String,
    proxy: Option<tokio::task::JoinHandle<()>>,
}

// SAFETY: the mock cluster API only posts operations to the cluster's own
// thread (each call takes the cluster lock or an op queue), and the owning
// client handle is itself Send + Sync.
unsafe impl Send for EmbeddedBroker {}
unsafe impl Sync for EmbeddedBroker {}

impl EmbeddedBroker {
    /// Starts a mock cluster of `brokers` brokers on ephemeral loopback ports.
    pub fn start(brokers: u32) -> Result<Self, BusError> {
        let client: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.max(1).to_string())
            .set("log_level", "3")
            .create()?;
        let mut this = Self {
            client,
            bootstrap: String::new(),
            incarnation: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            proxy: None,
        };
        let cluster = this.cluster()?;
        // SAFETY: `cluster` is valid while `client` lives; the returned string
        // is owned by the cluster and copied at once.
        this.bootstrap = unsafe {
            let p = rdsys::rd_kafka_mock_cluster_bootstraps(cluster);
            if p.is_null() {
                return Err(BusError::Embedded(
                    "mock cluster has no bootstrap address".into(),
                ));
            }
            CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        // A new consumer group otherwise waits 3 s before its first assignment.
        // SAFETY: valid cluster pointer, plain integer argument.
        unsafe { rdsys::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0) };
        Ok(this)
    }

    /// Starts a single-broker mock cluster reachable at `127.0.0.1:port`.
    /// Must be called inside a tokio runtime (the forwarder runs on it).
    pub async fn start_on_port(port: u16) -> Result<Self, BusError> {
        let mut this = Self::start(1)?;
        let upstream = this.bootstrap.clone();
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| BusError::Embedded(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| BusError::Embedded(e.to_string()))?
            .port();
        let host = CString::new("127.0.0.1").map_err(|e| BusError::Embedded(e.to_string()))?;
        let cluster = this.cluster()?;
        // SAFETY: valid cluster pointer; librdkafka copies the host string.
        unsafe {
            rdsys::rd_kafka_mock_broker_set_host_port(cluster, 1, host.as_ptr(), i32::from(port))
        };
        this.proxy = Some(tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    match TcpStream::connect(&upstream).await {
                        Ok(mut out) => {
                            let _ = inbound.set_nodelay(true);
                            let _ = out.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "mock broker forwarder: upstream connect failed")
                        }
                    }
                });
            }
        }));
        this.bootstrap = format!("127.0.0.1:{port}");
        Ok(this)
    }

    fn cluster(&self) -> Result<*mut rdsys::rd_kafka_mock_cluster_t, BusError> {
        use rdkafka::producer::Producer;
        // SAFETY: the client pointer is valid for the life of `self.client`.
        let p = unsafe { rdsys::rd_kafka_handle_mock_cluster(self.client.client().native_ptr()) };
        if p.is_null() {
            Err(BusError::Embedded("client has no mock cluster".into()))
        } else {
            Ok(p)
        }
    }

    /// Identifies this start of the broker (see the field).
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// `bootstrap.servers` for clients of this broker.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (idempotent: an existing topic is left as it is).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), BusError> {
        let name = CString::new(topic).map_err(|e| BusError::Embedded(e.to_string()))?;
        let cluster = self.cluster()?;
        // SAFETY: valid cluster pointer and NUL-terminated name.
        let err =
            unsafe { rdsys::rd_kafka_mock_topic_create(cluster, name.as_ptr(), partitions, 1) };
        if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            || err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS
        {
            Ok(())
        } else {
            Err(BusError::CreateTopic {
                topic: topic.to_owned(),
                reason: format!("{err:?}"),
            })
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        if let Some(p) = self.proxy.take() {
            p.abort();
        }
    }
}
