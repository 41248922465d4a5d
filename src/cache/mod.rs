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
//! - **Authenticated values.** Redis may be shared and is not trusted: each
//!   value carries an HMAC-SHA256 over its key and bytes, with a key of this
//!   installation (`SALESPULSE_CACHE_KEY`, or a random key kept 0600 in the
//!   data folder). A value that fails the check — forged, copied from another
//!   key, truncated, written by another installation — is a miss, logged
//!   once, and recomputed over; decoding never panics the process.
//! - **Bounded lock waits.** A request waits at most [`LOCK_WAIT`] for
//!   another's computation (a dead holder or a planted lock key costs that
//!   much once), then computes and stores the value itself.
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
/// Longest a request waits for another process's computation of a frame.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);
/// First bytes of every value (format version 1).
const MAGIC: &[u8; 4] = b"SPF1";
/// Length of the HMAC-SHA256 tag after the magic.
const TAG_LEN: usize = 32;

/// A Redis client for `url`: `redis://` in the clear, or `rediss://` over
/// TLS. A TLS server's certificate is checked against the system's roots, or
/// against the PEM file named by the URL's `sslrootcert` query parameter
/// (`rediss://:pw@host:6380/0?sslrootcert=/etc/ssl/my-ca.pem`, as libpq
/// names it), which is read here and removed before the URL reaches the
/// driver. There is no way to turn verification off.
pub fn redis_client(url: &str) -> Result<redis::Client, redis::RedisError> {
    let invalid = |what: String| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "invalid Redis URL",
            what,
        ))
    };
    let Ok(mut parsed) = url::Url::parse(url) else {
        return redis::Client::open(url);
    };
    let mut ca = None;
    let rest: Vec<(String, String)> = parsed
        .query_pairs()
        .filter_map(|(k, v)| {
            if k == "sslrootcert" {
                ca = Some(v.into_owned());
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    // rustls picks its crypto provider from crate features; name it, so
    // that a second provider coming in with some dependency cannot make
    // TLS connections fail.
    if parsed.scheme() == "rediss" {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let Some(ca) = ca else {
        return redis::Client::open(url);
    };
    if parsed.scheme() != "rediss" {
        return Err(invalid(format!(
            "sslrootcert is for TLS: use rediss:// instead of {}://",
            parsed.scheme()
        )));
    }
    let root =
        std::fs::read(&ca).map_err(|e| invalid(format!("cannot read sslrootcert {ca}: {e}")))?;
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(rest);
    }
    redis::Client::build_with_tls(
        parsed.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root),
        },
    )
}

/// A Redis or encoding failure; a request that meets one computes without the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis refused a command or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the given time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A computed frame could not be encoded as Arrow IPC for storing.
    #[error("frame encoding: {0}")]
    Codec(#[from] PolarsError),
    /// Redis is left alone after a recent error (the text), or caching is off.
    #[error("redis is being skipped after an error: {0}")]
    BackingOff(String),
}

/// How a request was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// From Redis.
    Hit,
    /// From another request's computation, waited for (single flight).
    Joined,
    /// Computed here and stored.
    Miss,
    /// Computed here without the cache (Redis down, or caching off).
    Bypass,
}

/// Counters of one view.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ViewCounters {
    /// Requests answered from Redis or by joining another's computation.
    pub hits: u64,
    /// Requests computed here and stored in Redis.
    pub misses: u64,
    /// Requests computed without the cache (Redis failing or caching off).
    pub bypasses: u64,
    /// Redis errors (each also counts as a bypass).
    pub errors: u64,
    /// Requests that waited for another's computation.
    pub coalesced: u64,
}

/// What the UI and `/metrics` show about the cache.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CacheStatus {
    /// Whether caching is on (a TTL above zero).
    pub enabled: bool,
    /// `None` = working; else the last error.
    pub error: Option<String>,
    /// How long cached frames live, in seconds (0 when caching is off).
    pub ttl_secs: u64,
}

type Flight<E> = Shared<BoxFuture<'static, Result<(DataFrame, Outcome), E>>>;

struct Health {
    last_error: Option<(Instant, String)>,
}

/// The frame cache: Redis values with single flight, bypass on errors and a
/// bound on concurrent computations. Share it as `Arc<FrameCache>`.
pub struct FrameCache {
    client: Option<redis::Client>,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    ttl: Duration,
    lock_ttl: Duration,
    health: Mutex<Health>,
    counters: Mutex<BTreeMap<String, ViewCounters>>,
    inflight: Mutex<HashMap<String, Box<dyn std::any::Any + Send>>>,
    /// Computations allowed to run at once (each may hold a database
    /// connection); the rest wait up to [`COMPUTE_SLOT_WAIT`].
    compute_slots: Arc<tokio::sync::Semaphore>,
    /// The number of slots, for messages.
    compute_limit: usize,
    key: [u8; 32],
    /// Whether a rejected value was logged already (logged once).
    warned: std::sync::atomic::AtomicBool,
}

/// Computations run at once by default (see [`FrameCache::with_compute_limit`]).
pub(crate) const DEFAULT_COMPUTE_LIMIT: usize = 4;

/// How long a computation waits for a free slot before it fails as busy.
pub(crate) const COMPUTE_SLOT_WAIT: Duration = Duration::from_secs(20);

/// A shared computation that ended without an answer: it panicked, the
/// runtime shut down under it, or too many others were running.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct FlightLost(pub String);

/// Removes a key's single-flight entry when the computation's task ends.
struct RemoveOnDrop {
    cache: Arc<FrameCache>,
    key: String,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        self.cache
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// The digest part of a [`frame_key`] (its first 32 hex digits): names the
/// frame without the view or prefix, e.g. as an HTTP `ETag`.
pub(crate) fn frame_tag(key: &str) -> &str {
    let digest = key.rsplit(':').next().unwrap_or_default();
    digest.get(..32).unwrap_or(digest)
}

/// Hashes key material into the Redis key of a view's frame.
pub(crate) fn frame_key(view: &str, material: &str) -> String {
    let digest = Sha256::digest(material.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{KEY_PREFIX}{view}:{hex}")
}

/// HMAC-SHA256 (RFC 2104) of `parts`, concatenated, under `key`.
fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    for (b, k) in block.iter_mut().zip(key.iter()) {
        *b = *k;
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// A value as stored: magic, tag over (Redis key, 0, bytes), bytes.
fn seal(key: &[u8; 32], redis_key: &str, bytes: &[u8]) -> Vec<u8> {
    let tag = hmac(key, &[redis_key.as_bytes(), &[0], bytes]);
    let mut out = Vec::with_capacity(MAGIC.len() + TAG_LEN + bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&tag);
    out.extend_from_slice(bytes);
    out
}

/// The bytes of a sealed value if its tag holds for `redis_key`.
fn open<'a>(key: &[u8; 32], redis_key: &str, value: &'a [u8]) -> Option<&'a [u8]> {
    let rest = value.strip_prefix(MAGIC.as_slice())?;
    let (tag, bytes) = (rest.get(..TAG_LEN)?, rest.get(TAG_LEN..)?);
    let want = hmac(key, &[redis_key.as_bytes(), &[0], bytes]);
    // No early exit on the first differing byte.
    let diff = tag
        .iter()
        .zip(want.iter())
        .fold(0u8, |a, (x, y)| a | (x ^ y));
    (diff == 0).then_some(bytes)
}

/// This installation's cache key: from `SALESPULSE_CACHE_KEY` (any text;
/// set the same on every machine that should share cached frames), else
/// from `cache.key` in the data folder (`data_dir`, else
/// `SALESPULSE_DATA_DIR`, else the default; 32 random bytes, created 0600
/// on first use and refused unless private to this user), else a key of
/// this process only.
pub(crate) fn installation_key(data_dir: Option<&std::path::Path>) -> [u8; 32] {
    if let Some(k) = std::env::var_os("SALESPULSE_CACHE_KEY").filter(|k| !k.is_empty()) {
        return Sha256::digest(k.as_encoded_bytes()).into();
    }
    let dir = data_dir
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| {
            std::env::var_os("SALESPULSE_DATA_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(crate::config::default_data_dir)
        });
    match key_file(&dir.join("cache.key")) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(
                "cache key file in {}: {e}; using a key of this process only",
                dir.display()
            );
            rand::random()
        }
    }
}

/// Reads the key file, or creates it atomically (written aside, then
/// hard-linked into place, so a reader never sees it half-written).
#[allow(unsafe_code)] // geteuid, below
fn key_file(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    let read = |p: &std::path::Path| -> std::io::Result<[u8; 32]> {
        #[cfg(unix)]
        {
            // A key someone else could have written (or can read) is no key.
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(p)?;
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if m.uid() != me || m.mode() & 0o077 != 0 {
                return Err(std::io::Error::other(format!(
                    "{} is not private to this user (owner {}, mode {:o}); delete it",
                    p.display(),
                    m.uid(),
                    m.mode() & 0o777
                )));
            }
        }
        let b = std::fs::read(p)?;
        b.as_slice().try_into().map_err(|_| {
            std::io::Error::other(format!("{} is not 32 bytes; delete it", p.display()))
        })
    };
    if path.exists() {
        return read(path);
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let key: [u8; 32] = rand::random();
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u64>()));
    {
        use std::io::Write;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let mut f = o.open(&tmp)?;
        f.write_all(&key)?;
        f.sync_all()?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(e),
    }
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

/// Decodes [`encode`]'s bytes. Malformed input is an error, never a panic
/// of the caller (the Arrow reader's panics are caught here).
pub fn decode(bytes: &[u8]) -> Result<DataFrame, PolarsError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        IpcReader::new(Cursor::new(bytes)).finish()
    }))
    .unwrap_or_else(|_| Err(polars_err!(ComputeError: "malformed frame (the reader panicked)")))
}

impl FrameCache {
    /// A cache on `url` keeping frames `ttl`; `ttl` zero disables caching.
    /// Does not connect yet: the first request does, so a dead Redis never
    /// stops startup. Values are authenticated with the key of the default
    /// data folder ([`installation_key`]).
    pub fn new(url: &str, ttl: Duration) -> Result<Self, CacheError> {
        Self::new_in(url, ttl, None)
    }

    /// [`FrameCache::new`] with the key kept in `data_dir`.
    pub fn new_in(
        url: &str,
        ttl: Duration,
        data_dir: Option<&std::path::Path>,
    ) -> Result<Self, CacheError> {
        let client = if ttl.is_zero() {
            None
        } else {
            Some(redis_client(url)?)
        };
        Ok(Self {
            client,
            conn: tokio::sync::Mutex::new(None),
            ttl,
            lock_ttl: Duration::from_secs(30),
            health: Mutex::new(Health { last_error: None }),
            counters: Mutex::new(BTreeMap::new()),
            inflight: Mutex::new(HashMap::new()),
            compute_slots: Arc::new(tokio::sync::Semaphore::new(DEFAULT_COMPUTE_LIMIT)),
            compute_limit: DEFAULT_COMPUTE_LIMIT,
            key: if ttl.is_zero() {
                [0; 32]
            } else {
                installation_key(data_dir)
            },
            warned: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Lets at most `n` (at least 1) computations run at once: views asked
    /// for and then abandoned in bulk cannot hold every database connection.
    /// Keep it below the database pool's size.
    pub(crate) fn with_compute_limit(mut self, n: usize) -> Self {
        let n = n.max(1);
        self.compute_slots = Arc::new(tokio::sync::Semaphore::new(n));
        self.compute_limit = n;
        self
    }

    /// A compute slot (see [`FrameCache::with_compute_limit`]), to hold while
    /// a view is computed; waits up to [`COMPUTE_SLOT_WAIT`] for one. Taken
    /// inside the computation a cache miss runs, so a hit needs none. (Not
    /// for computations that ask for views themselves: they could wait on
    /// each other.)
    ///
    /// `key` is the computation's key, and `E` its error type (as given to
    /// [`FrameCache::get_or_compute`]): a computation still waiting for a
    /// slot when every caller has gone away gives up, so abandoned requests
    /// do not queue work for nobody.
    pub(crate) async fn compute_slot<E: 'static>(
        &self,
        key: &str,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, FlightLost> {
        let deadline = Instant::now() + COMPUTE_SLOT_WAIT;
        let acquire = Arc::clone(&self.compute_slots).acquire_owned();
        tokio::pin!(acquire);
        loop {
            tokio::select! {
                p = &mut acquire => {
                    return p.map_err(|_| FlightLost("the cache is shutting down".into()));
                }
                () = tokio::time::sleep(Duration::from_millis(25)) => {
                    if !self.awaited::<E>(key) {
                        return Err(FlightLost("abandoned: nobody waits for it any more".into()));
                    }
                    if Instant::now() >= deadline {
                        return Err(FlightLost(format!(
                            "busy: {} views are being computed already; try again shortly",
                            self.compute_limit
                        )));
                    }
                }
            }
        }
    }

    /// Whether any caller still waits for the computation of `key` (true
    /// when it cannot be told). When none does, the entry is removed at
    /// once, under the same lock: a caller arriving later starts afresh
    /// instead of joining a computation that is giving up.
    fn awaited<E: 'static>(&self, key: &str) -> bool {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let awaited = inflight
            .get(key)
            .and_then(|f| f.downcast_ref::<Flight<E>>())
            .and_then(Shared::strong_count)
            // The table holds one handle; each waiting caller another.
            .is_none_or(|n| n > 1);
        if !awaited {
            inflight.remove(key);
        }
        awaited
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
            compute_slots: Arc::new(tokio::sync::Semaphore::new(DEFAULT_COMPUTE_LIMIT)),
            compute_limit: DEFAULT_COMPUTE_LIMIT,
            key: [0; 32],
            warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The current status, from the last request's outcome (no Redis round trip;
    /// see [`FrameCache::probe`]).
    pub fn status(&self) -> CacheStatus {
        let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        CacheStatus {
            enabled: self.client.is_some(),
            error: h.last_error.as_ref().map(|(_, e)| e.clone()),
            ttl_secs: self.ttl.as_secs(),
        }
    }

    /// A snapshot of the counters, by view name.
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
    ///
    /// The computation runs as a task of its own: a caller that goes away
    /// (a client that disconnects) neither cancels it half-way nor leaves
    /// it suspended holding a database connection, and the single-flight
    /// entry is removed by a guard inside the task when it ends, however it
    /// ends.
    pub async fn get_or_compute<E, F, Fut>(
        self: &Arc<Self>,
        view: &str,
        key: &str,
        compute: F,
    ) -> Result<(DataFrame, Outcome), E>
    where
        E: Clone + Send + Sync + From<FlightLost> + 'static,
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

                    let task = tokio::spawn(async move {
                        let _entry = RemoveOnDrop {
                            cache: Arc::clone(&this),
                            key: key_s.clone(),
                        };
                        this.fetch(&view_s, &key_s, compute).await
                    });
                    let f: Flight<E> = async move {
                        match task.await {
                            Ok(r) => r,
                            Err(e) => Err(E::from(FlightLost(if e.is_panic() {
                                "the computation panicked".into()
                            } else {
                                "the computation was cancelled (shutting down)".into()
                            }))),
                        }
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key.to_owned(), Box::new(f.clone()));
                    (f, true)
                }
            }
        };
        let out = flight.await;
        // The leader's task removes its entry itself; followers count.
        if let (false, Ok((_, o))) = (leader, &out) {
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
                        Outcome::Joined
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
        let deadline = Instant::now() + LOCK_WAIT.min(self.lock_ttl);
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
                    // The holder is slow, dead, or not one of us (a planted
                    // lock key): compute and store it here, once.
                    tracing::debug!("gave up waiting for the lock of {key}");
                    let df = compute().await?;
                    match self.store(conn.clone(), key, &df).await {
                        Ok(()) => self.note_ok(),
                        Err(e) => self.note_error(view, &e),
                    }
                    // Our locks always expire; one that never does was
                    // planted: remove it, so it costs this one wait only.
                    let mut c = conn;
                    if let Ok(-1) =
                        timeout(redis::cmd("PTTL").arg(&lock_key).query_async::<i64>(&mut c)).await
                    {
                        let _ = timeout(c.del::<_, i64>(&lock_key)).await;
                    }
                    self.count(view, |c| c.misses += 1);
                    return Ok((df, Outcome::Miss));
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
        let Some(b) = bytes else {
            return Ok(None);
        };
        let why = match open(&self.key, key, &b) {
            None => "its authentication tag does not match (written by another \
                     installation or version, or tampered with)"
                .to_owned(),
            Some(frame) => match decode(frame) {
                Ok(df) => return Ok(Some(df)),
                Err(e) => format!("it does not decode: {e}"),
            },
        };
        // Recompute over it; say so once per process, not per request.
        if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!("ignoring cached frame {key:?}: {why}");
        } else {
            tracing::debug!("ignoring cached frame {key:?}: {why}");
        }
        Ok(None)
    }

    async fn store(
        &self,
        mut c: ConnectionManager,
        key: &str,
        df: &DataFrame,
    ) -> Result<(), CacheError> {
        let bytes = seal(&self.key, key, &encode(df)?);
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
    fn a_frame_tag_is_the_keys_digest_prefix() {
        let a = frame_key("kpis", "x");
        let tag = frame_tag(&a);
        assert_eq!(tag.len(), 32);
        assert!(a.ends_with(&format!(":{tag}{}", &a[a.len() - 32..])));
        assert_ne!(tag, frame_tag(&frame_key("kpis", "y")));
        assert_eq!(frame_tag("short"), "short");
    }

    #[derive(Clone, Debug)]
    struct Lost;

    impl From<FlightLost> for Lost {
        fn from(_: FlightLost) -> Self {
            Lost
        }
    }

    /// Distinct computations asked for and abandoned at once: at most the
    /// limit run together, and those still queued when their callers left
    /// never run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_computations_are_capped_and_dropped_from_the_queue() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let cache = Arc::new(FrameCache::disabled().with_compute_limit(2));
        let (running, most, started) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        for i in 0..6 {
            let key = format!("k{i}");
            let (c, r, m, st) = (
                Arc::clone(&cache),
                Arc::clone(&running),
                Arc::clone(&most),
                Arc::clone(&started),
            );
            let k2 = key.clone();
            let call = cache.get_or_compute("v", &key, move || async move {
                let _slot = c.compute_slot::<Lost>(&k2).await?;
                st.fetch_add(1, SeqCst);
                let now = r.fetch_add(1, SeqCst) + 1;
                m.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(400)).await;
                r.fetch_sub(1, SeqCst);
                Ok::<_, Lost>(DataFrame::empty())
            });
            // The caller gives up almost at once.
            let _ = tokio::time::timeout(Duration::from_millis(20), call).await;
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(most.load(SeqCst) <= 2, "{} ran at once", most.load(SeqCst));
        assert_eq!(started.load(SeqCst), 2, "queued work ran for nobody");
        assert_eq!(running.load(SeqCst), 0);
        // A caller that waits is served once a slot is free.
        let c = Arc::clone(&cache);
        let got = cache
            .get_or_compute("v", "k9", move || async move {
                let _slot = c.compute_slot::<Lost>("k9").await?;
                Ok::<_, Lost>(DataFrame::empty())
            })
            .await;
        assert!(got.is_ok());
    }

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
    fn sealed_values_open_only_under_their_key_and_name() {
        let k: [u8; 32] = [7; 32];
        let v = seal(&k, "salespulse:frame:kpis:a", b"payload");
        assert_eq!(
            open(&k, "salespulse:frame:kpis:a", &v),
            Some(&b"payload"[..])
        );
        assert_eq!(open(&k, "salespulse:frame:kpis:b", &v), None);
        assert_eq!(open(&[8; 32], "salespulse:frame:kpis:a", &v), None);
        for n in 0..v.len() {
            assert_eq!(
                open(
                    &k,
                    "salespulse:frame:kpis:a",
                    v.get(..n).unwrap_or_default()
                ),
                None
            );
            let mut bad = v.clone();
            if let Some(b) = bad.get_mut(n) {
                *b ^= 1;
            }
            assert_eq!(open(&k, "salespulse:frame:kpis:a", &bad), None, "byte {n}");
        }
        // RFC 4231 test case 2 has a short key; ours are 32 bytes, so check
        // against an independent computation of the construction instead:
        // HMAC(k, m) = H((k^opad) || H((k^ipad) || m)).
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for i in 0..32 {
            ipad[i] ^= 7;
            opad[i] ^= 7;
        }
        let inner = Sha256::new()
            .chain_update(ipad)
            .chain_update(b"m")
            .finalize();
        let want: [u8; 32] = Sha256::new()
            .chain_update(opad)
            .chain_update(inner)
            .finalize()
            .into();
        assert_eq!(hmac(&k, &[b"m"]), want);
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_is_made_private_and_a_readable_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sp-key-{}", rand::random::<u64>()));
        let path = dir.join("cache.key");
        let k = key_file(&path).unwrap();
        assert_eq!(
            key_file(&path).unwrap(),
            k,
            "the same key on the next start"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        // Planted or loosened: anyone could know it, so it is no key.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(key_file(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(frame_key("kpis", "a"), frame_key("kpis", "a"));
        assert_ne!(frame_key("kpis", "a"), frame_key("kpis", "b"));
        assert!(frame_key("kpis", "a").starts_with("salespulse:frame:kpis:"));
    }
}
