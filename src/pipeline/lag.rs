//! Consumer lag: records in the topic not yet committed to PostgreSQL.
//!
//! Read from the broker's high watermarks and the offsets ingest stores with
//! the data, so any process can report it for the whole group.

use crate::bus;
use crate::store::Store;

/// Where a consumer group's lag is read from.
#[derive(Clone)]
pub struct LagSource {
    /// Kafka bootstrap servers the high watermarks are read from.
    pub brokers: String,
    /// The topic whose lag is reported.
    pub topic: String,
    /// The consumer group whose stored offsets count as committed.
    pub group: String,
    /// The store holding the offsets ingest writes with the data.
    pub store: Store,
}

impl LagSource {
    /// Records in the topic not yet committed to PostgreSQL, per partition
    /// (high watermark minus the offset stored with the data).
    pub async fn read(&self) -> Result<Vec<(i32, i64)>, String> {
        let (brokers, topic) = (self.brokers.clone(), self.topic.clone());
        let ends = tokio::task::spawn_blocking(move || bus::end_offsets(&brokers, &topic))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        lag_against(&self.store, &self.group, &self.topic, ends).await
    }
}

/// Lag per partition, given the topic's high watermarks.
pub(crate) async fn lag_against(
    store: &Store,
    group: &str,
    topic: &str,
    ends: Vec<(i32, i64)>,
) -> Result<Vec<(i32, i64)>, String> {
    let parts: Vec<i32> = ends.iter().map(|(p, _)| *p).collect();
    let stored = store
        .stored_offsets(group, topic, &parts)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ends
        .into_iter()
        .map(|(p, end)| (p, (end - stored.get(&p).copied().unwrap_or(0)).max(0)))
        .collect())
}
