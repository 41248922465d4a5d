//! The Redis frame cache.
//!
//! - A value is a DataFrame as Arrow IPC with zstd-compressed buffers, stored
//!   under `salespulse:frame:<view>:<sha256 of the key material>` with a TTL.
//! - **Single flight.** Within a process, concurrent requests for one key share
//!   one future. Across processes, the first takes a Redis lock
//!   (`SET ... NX PX`) and computes; the others poll for the value until it
//!   appears or the lock goes away (holder died: they take over).
//! - **Bypass.** Any Redis error makes the request compute directly; Redis is
//!   then left alone for a few seconds (so a dead Redis costs one failed
//!   connect, not one per query) and [`FrameCache::status`] says why.
//!
//! What goes into the key (view, parameters, data versions) is the caller's
//! business; see `analytics`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use polars::prelude::*;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};

const KEY_PREFIX: &str = "salespulse:frame:";
/// How long Redis is left alone after an error.
const BACKOFF: Duration = Duration::from_secs(5);
/// Longest one Redis command may take before the cache is bypassed.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// Failed commands in a row tolerated while another process holds the lock.
const WAIT_RETRIES: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("frame encoding: {0}")]
    Codec(#[from] PolarsError),
    #[error("redis is being skipped after an error: {0}")]
    BackingOff(String),
}

/// How a request was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// From Redis (or from another request's computation in flight).
    Hit,
    /// Computed here and stored.
    Miss,
    /// Computed here without the cache (Redis down, or caching off).
    Bypass,
}

/// Counters of one view.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ViewCounters {
    pub hits: u64,
    pub misses: u64,
    pub bypasses: u64,
    /// Redis errors (each also counts as a bypass).
    pub errors: u64,
    /// Requests that waited for another's computation.
    pub coalesced: u64,
}

/// What the UI and `/metrics` show about the cache.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CacheStatus {
    pub enabled: bool,
    /// `None` = working; else the last error.
    pub error: Option<String>,
    pub ttl_secs: u64,
}

type Flight<E> = Shared<BoxFuture<'static, Result<(DataFrame, Outcome), E>>>;

struct Health {
    last_error: Option<(Instant, String)>,
}

pub struct FrameCache {
    client: Option<redis::Client>,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    ttl: Duration,
    lock_ttl: Duration,
    health: Mutex<Health>,
    counters: Mutex<BTreeMap<String, ViewCounters>>,
    inflight: Mutex<HashMap<String, Box<dyn std::any::Any + Send>>>,
}

/// Hashes key material into the Redis key of a view's frame.
pub fn frame_key(view: &str, material: &str) -> String {
    let digest = Sha256::digest(material.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{KEY_PREFIX}{view}:{hex}")
}

/// Arrow IPC, zstd-compressed buffers.
pub fn encode(df: &DataFrame) -> Result<Vec<u8>, PolarsError> {
    let mut buf = Vec::new();
    let mut df = df.clone();
    IpcWriter::new(&mut buf)
        .with_compression(Some(IpcCompression::ZSTD(Default::default())))
        .finish(&mut df)?;
    Ok(buf)
}

pub fn decode(bytes: &[u8]) -> Result<DataFrame, PolarsError> {
    IpcReader::new(Cursor::new(bytes)).finish()
}

impl FrameCache {
    /// A cache on `url` keeping frames `ttl`; `ttl` zero disables caching.
    /// Does not connect yet: the first request does, so a dead Redis never
    /// stops startup.
    pub fn new(url: &str, ttl: Duration) -> Result<Self, CacheError> {
        let client = if ttl.is_zero() {
            None
        } else {
            Some(redis::Client::open(url)?)
        };
        Ok(Self {
            client,
            conn: tokio::sync::Mutex::new(None),
            ttl,
            lock_ttl: Duration::from_secs(30),
            health: Mutex::new(Health { last_error: None }),
            counters: Mutex::new(BTreeMap::new()),
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// A cache that never uses Redis (every request is a bypass).
    pub fn disabled() -> Self {
        Self {
            client: None,
            conn: tokio::sync::Mutex::new(None),
            ttl: Duration::ZERO,
            lock_ttl: Duration::from_secs(30),
            health: Mutex::new(Health { last_error: None }),
            counters: Mutex::new(BTreeMap::new()),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    pub fn status(&self) -> CacheStatus {
        let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        CacheStatus {
            enabled: self.client.is_some(),
            error: h.last_error.as_ref().map(|(_, e)| e.clone()),
            ttl_secs: self.ttl.as_secs(),
        }
    }

    pub fn counters(&self) -> BTreeMap<String, ViewCounters> {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn count(&self, view: &str, f: impl FnOnce(&mut ViewCounters)) {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        f(c.entry(view.to_owned()).or_default());
    }

    fn note_error(&self, view: &str, e: &CacheError) {
        if !matches!(e, CacheError::BackingOff(_)) {
            tracing::warn!("frame cache bypassed: {e}");
            let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
            h.last_error = Some((Instant::now(), e.to_string()));
            self.count(view, |c| c.errors += 1);
        }
    }

    fn note_ok(&self) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        h.last_error = None;
    }

    async fn connection(&self) -> Result<ConnectionManager, CacheError> {
        let Some(client) = &self.client else {
            return Err(CacheError::BackingOff("caching is off".into()));
        };
        {
            let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, e)) = &h.last_error {
                if at.elapsed() < BACKOFF {
                    return Err(CacheError::BackingOff(e.clone()));
                }
            }
        }
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1);
        let c = timeout(ConnectionManager::new_with_config(client.clone(), cfg)).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The cached frame of `key`, or `compute()`'s, stored for next time.
    /// `view` names the counters. Errors of `compute` are returned as they are
    /// (and not cached).
    pub async fn get_or_compute<E, F, Fut>(
        self: &Arc<Self>,
        view: &str,
        key: &str,
        compute: F,
    ) -> Result<(DataFrame, Outcome), E>
    where
        E: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<DataFrame, E>> + Send + 'static,
    {
        let (flight, leader) = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight
                .get(key)
                .and_then(|f| f.downcast_ref::<Flight<E>>())
            {
                Some(f) => (f.clone(), false),
                None => {
                    let this = Arc::clone(self);
                    let (view_s, key_s) = (view.to_owned(), key.to_owned());
                    let f: Flight<E> = async move { this.fetch(&view_s, &key_s, compute).await }
                        .boxed()
                        .shared();
                    inflight.insert(key.to_owned(), Box::new(f.clone()));
                    (f, true)
                }
            }
        };
        let out = flight.await;
        if leader {
            self.inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
        } else if let Ok((_, o)) = &out {
            self.count(view, |c| {
                c.coalesced += 1;
                match o {
                    Outcome::Bypass => c.bypasses += 1,
                    _ => c.hits += 1,
                }
            });
            return out.map(|(df, o)| {
                (
                    df,
                    if o == Outcome::Bypass {
                        o
                    } else {
                        Outcome::Hit
                    },
                )
            });
        }
        out
    }

    async fn fetch<E, F, Fut>(
        &self,
        view: &str,
        key: &str,
        compute: F,
    ) -> Result<(DataFrame, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<DataFrame, E>>,
    {
        let conn = match self.connection().await {
            Ok(c) => c,
            Err(e) => return self.bypass(view, &e, compute).await,
        };
        let lock_key = format!("{key}:lock");
        let token = format!("{:032x}", rand::random::<u128>());
        let deadline = Instant::now() + self.lock_ttl;
        // Once another process is known to hold the lock, a slow or failed
        // command (a loaded Redis) is retried a few times before bypassing:
        // bypassing there means computing the same frame twice.
        let mut waiting = false;
        let mut strikes = 0;
        loop {
            let got = match self.try_get(conn.clone(), key).await {
                Ok(Some(df)) => {
                    self.note_ok();
                    self.count(view, |c| c.hits += 1);
                    return Ok((df, Outcome::Hit));
                }
                Ok(None) => {
                    let mut c = conn.clone();
                    timeout(
                        redis::cmd("SET")
                            .arg(&lock_key)
                            .arg(&token)
                            .arg("NX")
                            .arg("PX")
                            .arg(self.lock_ttl.as_millis() as u64)
                            .query_async::<Option<String>>(&mut c),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match got {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    // Another process is computing it: wait for its value.
                    waiting = true;
                    strikes = 0;
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                Ok(None) => {
                    let e = CacheError::Timeout(self.lock_ttl);
                    return self.bypass(view, &e, compute).await;
                }
                Err(e) if waiting && strikes < WAIT_RETRIES && Instant::now() < deadline => {
                    strikes += 1;
                    tracing::debug!("retrying while another process computes {key}: {e}");
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                Err(e) => return self.bypass(view, &e, compute).await,
            }
        }
        // We hold the lock: compute, store, release.
        let result = compute().await;
        let stored = match &result {
            Ok(df) => self.store(conn.clone(), key, df).await,
            Err(_) => Ok(()),
        };
        let release = self.release(conn, &lock_key, &token).await;
        match stored.and(release) {
            Ok(()) => self.note_ok(),
            Err(e) => self.note_error(view, &e),
        }
        let df = result?;
        self.count(view, |c| c.misses += 1);
        Ok((df, Outcome::Miss))
    }

    async fn bypass<E, F, Fut>(
        &self,
        view: &str,
        e: &CacheError,
        compute: F,
    ) -> Result<(DataFrame, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<DataFrame, E>>,
    {
        self.note_error(view, e);
        let df = compute().await?;
        self.count(view, |c| c.bypasses += 1);
        Ok((df, Outcome::Bypass))
    }

    async fn try_get(
        &self,
        mut c: ConnectionManager,
        key: &str,
    ) -> Result<Option<DataFrame>, CacheError> {
        let bytes: Option<Vec<u8>> = timeout(c.get(key)).await?;
        match bytes {
            None => Ok(None),
            Some(b) => match decode(&b) {
                Ok(df) => Ok(Some(df)),
                Err(e) => {
                    // Unreadable (another version wrote it?): recompute over it.
                    tracing::warn!("dropping unreadable cached frame {key}: {e}");
                    Ok(None)
                }
            },
        }
    }

    async fn store(
        &self,
        mut c: ConnectionManager,
        key: &str,
        df: &DataFrame,
    ) -> Result<(), CacheError> {
        let bytes = encode(df)?;
        let ms = self.ttl.as_millis().max(1) as u64;
        timeout(c.pset_ex::<_, _, ()>(key, bytes, ms)).await
    }

    async fn release(
        &self,
        mut c: ConnectionManager,
        lock_key: &str,
        token: &str,
    ) -> Result<(), CacheError> {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        );
        timeout(script.key(lock_key).arg(token).invoke_async::<i64>(&mut c)).await?;
        Ok(())
    }

    /// Pings Redis now (ignoring any back-off) and returns the status.
    pub async fn probe(&self) -> CacheStatus {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = None;
        let r = match self.connection().await {
            Ok(mut c) => timeout(redis::cmd("PING").query_async::<String>(&mut c)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            self.note_error("probe", &e);
        }
        self.status()
    }

    /// Deletes every cached frame (all views, all versions), with SCAN so that
    /// a shared Redis is never blocked.
    pub async fn clear(&self) -> Result<u64, CacheError> {
        let mut c = self.connection().await?;
        let (mut cursor, mut n) = (0u64, 0u64);
        loop {
            let (next, keys): (u64, Vec<String>) = timeout(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{KEY_PREFIX}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut c),
            )
            .await?;
            if !keys.is_empty() {
                n += timeout(c.del::<_, u64>(keys)).await?;
            }
            if next == 0 {
                return Ok(n);
            }
            cursor = next;
        }
    }
}

async fn timeout<T>(
    f: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, CacheError> {
    match tokio::time::timeout(COMMAND_TIMEOUT * 2, f).await {
        Ok(r) => r.map_err(CacheError::from),
        Err(_) => Err(CacheError::Timeout(COMMAND_TIMEOUT * 2)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_ipc() {
        let df = df!(
            "a" => [Some(1i64), None, Some(3)],
            "b" => ["x", "", "z"],
            "c" => [1.5f64, f64::NAN, -0.0],
        )
        .unwrap();
        let back = decode(&encode(&df).unwrap()).unwrap();
        assert!(back.equals_missing(&df));
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(frame_key("kpis", "a"), frame_key("kpis", "a"));
        assert_ne!(frame_key("kpis", "a"), frame_key("kpis", "b"));
        assert!(frame_key("kpis", "a").starts_with("salespulse:frame:kpis:"));
    }
}
