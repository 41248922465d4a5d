//! The HTTP API: the generator (`GET /event`, `GET /stream`), `GET /health`,
//! `GET /metrics` (Prometheus) and `GET /view/{name}?filters` (a view as JSON
//! rows; same parameters as `salespulse query`).
//!
//! Bad parameters get `400` with a JSON body `{"error": "..."}`; unknown
//! paths get `404` the same way.
//!
//! Hardening (see SECURITY.md): the `Host` header must name the bound
//! address or `localhost` (no DNS rebinding); an optional bearer token
//! (`SALESPULSE_API_TOKEN`, required off loopback) guards `/view` and
//! `/metrics`; `/stream` has a minimum rate, a maximum duration and a cap on
//! concurrent streams (`429` beyond it); `/view` has a per-request timeout
//! and runs its computation detached from the client; `/health` answers
//! from a check at most a few seconds old and shows error details only to
//! loopback clients.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

mod prometheus;

pub use prometheus::Telemetry;

use crate::analytics::{ViewKind, ViewRequest};
use crate::generator::{Clock, Generator, GeneratorParams, ParamsError};
use crate::pipeline::doctor::{check_kafka, check_postgres, check_redis, Check};
use crate::pipeline::Pacer;

/// Largest `rate` accepted by `/stream`, events per second.
pub(crate) const MAX_STREAM_RATE: f64 = 100_000.0;
/// Largest `count` accepted by `/stream`.
pub(crate) const MAX_STREAM_COUNT: u64 = 10_000_000;
/// Default `rate` of `/stream`.
pub(crate) const DEFAULT_STREAM_RATE: f64 = 10.0;
/// Smallest `rate` accepted by `/stream` (one event per 10 s).
pub(crate) const MIN_STREAM_RATE: f64 = 0.1;
/// Longest a `/stream` response lasts, whatever its count.
pub(crate) const MAX_STREAM_DURATION: Duration = Duration::from_secs(3_600);
/// Streams served at once; more get `429`.
pub const MAX_CONCURRENT_STREAMS: usize = 8;
/// Longest a `/view` request waits for its answer (`503` after).
pub(crate) const VIEW_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `/health` answer is reused.
pub(crate) const HEALTH_CACHE: Duration = Duration::from_secs(3);

/// The API token from `SALESPULSE_API_TOKEN` (environment only: never
/// read from or written to a file).
pub(crate) fn token_from_env() -> Option<String> {
    std::env::var("SALESPULSE_API_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
}

/// Refuses to serve beyond loopback without a token: other machines could
/// read the user's views.
pub(crate) fn check_exposure(
    bound: std::net::SocketAddr,
    token: Option<&str>,
) -> std::io::Result<()> {
    if !bound.ip().is_loopback() && token.is_none_or(str::is_empty) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "refusing to serve on {bound} without a token: other machines could read \
                 your views; set SALESPULSE_API_TOKEN or bind to 127.0.0.1"
            ),
        ));
    }
    Ok(())
}

/// Whether a Host header names this machine's loopback (`localhost`, a
/// loopback address), with or without a port.
fn host_is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((n, p)) if !p.contains(']') => n,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// What `/health` checks.
#[derive(Clone, Debug, Default)]
pub struct HealthTargets {
    /// Kafka bootstrap servers to ping; `None` reports Kafka as not
    /// configured (unhealthy).
    pub kafka_brokers: Option<String>,
    /// PostgreSQL URL to connect to; `None` reports it as not configured.
    pub database_url: Option<String>,
    /// Redis URL to `PING`; `None` reports it as not configured.
    pub redis_url: Option<String>,
}

/// What the API serves from: the generator, the health targets, the
/// telemetry and the access rules.
pub struct ApiState {
    params: GeneratorParams,
    generator: Mutex<Generator>,
    base_seed: u64,
    streams: AtomicU64,
    open_streams: Arc<tokio::sync::Semaphore>,
    health: HealthTargets,
    last_health: tokio::sync::Mutex<Option<(std::time::Instant, [Check; 3])>>,
    telemetry: Telemetry,
    token: Option<String>,
}

impl ApiState {
    /// State for a generator of `params`: `/event` draws from one seeded with
    /// `seed`, and each `/stream` without a `seed` gets one derived from it.
    /// Open (no token) and without telemetry until the `with_*` calls.
    pub fn new(
        params: GeneratorParams,
        seed: u64,
        health: HealthTargets,
    ) -> Result<Self, ParamsError> {
        Ok(Self {
            generator: Mutex::new(Generator::new(params.clone(), seed, Clock::Wall)?),
            params,
            base_seed: seed,
            streams: AtomicU64::new(0),
            open_streams: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_STREAMS)),
            health,
            last_health: tokio::sync::Mutex::new(None),
            telemetry: Telemetry::default(),
            token: None,
        })
    }

    /// The three service checks, probed at most once per [`HEALTH_CACHE`]
    /// however many requests ask (they wait for the one probe in flight).
    async fn checks(&self) -> [Check; 3] {
        let mut last = self.last_health.lock().await;
        if let Some((at, c)) = last.as_ref() {
            if at.elapsed() < HEALTH_CACHE {
                return c.clone();
            }
        }
        let not_configured = |name: &'static str| Check {
            name,
            ok: false,
            detail: "not configured".into(),
            error: Some("not configured".into()),
            hint: None,
        };
        let (k, p, r) = tokio::join!(
            async {
                match &self.health.kafka_brokers {
                    Some(b) => check_kafka(b).await,
                    None => not_configured("kafka"),
                }
            },
            async {
                match &self.health.database_url {
                    Some(u) => check_postgres(u).await,
                    None => not_configured("postgres"),
                }
            },
            async {
                match &self.health.redis_url {
                    Some(u) => check_redis(u).await,
                    None => not_configured("redis"),
                }
            },
        );
        let c = [k, p, r];
        *last = Some((std::time::Instant::now(), c.clone()));
        c
    }

    /// Requires `Authorization: Bearer <token>` on `/view` and `/metrics`
    /// (`None` or an empty token: open on loopback).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// Adds what `/metrics` reports and `/view` answers from.
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }
}

/// The API's routes, guarded for a server bound to `bound`.
pub(crate) fn router(state: Arc<ApiState>, bound: std::net::SocketAddr) -> Router {
    let guard = Arc::new(Guard {
        bound,
        token: state.token.clone(),
    });
    Router::new()
        .route("/event", get(event))
        .route("/stream", get(stream))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/view/{name}", get(view))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; try /event, /stream, /health, /metrics, /view/{name}",
            )
        })
        .layer(axum::middleware::from_fn_with_state(guard, guard_layer))
        .with_state(state)
}

/// The access rules of one bound server.
struct Guard {
    bound: std::net::SocketAddr,
    token: Option<String>,
}

impl Guard {
    /// Whether `host` (a Host header) names this server: its own address,
    /// or `localhost`/a loopback address when bound to loopback, on its
    /// port. A server bound to every interface (`0.0.0.0`) takes any host
    /// (it requires a token instead).
    fn host_ok(&self, host: &str) -> bool {
        if self.bound.ip().is_unspecified() {
            return true;
        }
        let port = self.bound.port().to_string();
        let (name, p) = match host.rsplit_once(':') {
            // `[::1]:8080`, `127.0.0.1:8080`, `localhost:8080`
            Some((n, p)) if !p.contains(']') => (n, Some(p)),
            _ => (host, None),
        };
        if p.is_some_and(|p| p != port) {
            return false;
        }
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let ip = self.bound.ip().to_string();
        name == ip
            || (self.bound.ip().is_loopback()
                && (name.eq_ignore_ascii_case("localhost")
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|a| a.is_loopback())))
    }

    fn token_ok(&self, header: Option<&str>) -> bool {
        let Some(want) = &self.token else {
            return true;
        };
        let got = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Compare digests: no early exit on the first differing byte.
        use sha2::{Digest, Sha256};
        let (a, b) = (
            Sha256::digest(got.as_bytes()),
            Sha256::digest(want.as_bytes()),
        );
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

async fn guard_layer(
    State(g): State<Arc<Guard>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !g.host_ok(host) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "Host {host:?} is not this server ({}); use its address or localhost",
                g.bound
            ),
        );
    }
    let path = req.uri().path();
    if path.starts_with("/view") || path == "/metrics" {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        if !g.token_ok(auth) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs Authorization: Bearer <SALESPULSE_API_TOKEN>",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    next.run(req).await
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

async fn event(State(s): State<Arc<ApiState>>) -> Response {
    let e = {
        let mut g = s.generator.lock().unwrap_or_else(|p| p.into_inner());
        g.next_event()
    };
    Json(e).into_response()
}

/// Parsed `/stream` parameters.
#[derive(Debug, PartialEq)]
pub(crate) struct StreamParams {
    /// Events per second, [`MIN_STREAM_RATE`]..=[`MAX_STREAM_RATE`]; default
    /// [`DEFAULT_STREAM_RATE`].
    pub rate: f64,
    /// Events to send, 1..=[`MAX_STREAM_COUNT`]; `None`: until
    /// [`MAX_STREAM_DURATION`].
    pub count: Option<u64>,
    /// Generator seed; `None`: one derived from the server's seed, new for
    /// each stream.
    pub seed: Option<u64>,
}

impl StreamParams {
    /// Parses and range-checks the query; the error names the parameter.
    pub fn parse(q: &HashMap<String, String>) -> Result<Self, String> {
        if let Some(k) = q
            .keys()
            .find(|k| !["rate", "count", "seed"].contains(&k.as_str()))
        {
            return Err(format!(
                "unknown parameter {k:?}; accepted: rate, count, seed"
            ));
        }
        let rate = match q.get("rate") {
            None => DEFAULT_STREAM_RATE,
            Some(v) => {
                let r: f64 = v
                    .parse()
                    .map_err(|_| format!("rate={v:?} is not a number"))?;
                if !(r.is_finite() && (MIN_STREAM_RATE..=MAX_STREAM_RATE).contains(&r)) {
                    return Err(format!(
                        "rate={v} is out of range [{MIN_STREAM_RATE}, {MAX_STREAM_RATE}] events/s"
                    ));
                }
                r
            }
        };
        let count = match q.get("count") {
            None => None,
            Some(v) => {
                let c: u64 = v
                    .parse()
                    .map_err(|_| format!("count={v:?} is not a whole number"))?;
                if !(1..=MAX_STREAM_COUNT).contains(&c) {
                    return Err(format!("count={v} is out of range 1..={MAX_STREAM_COUNT}"));
                }
                Some(c)
            }
        };
        let seed = match q.get("seed") {
            None => None,
            Some(v) => Some(
                v.parse()
                    .map_err(|_| format!("seed={v:?} is not an unsigned 64-bit integer"))?,
            ),
        };
        Ok(Self { rate, count, seed })
    }
}

async fn stream(
    State(s): State<Arc<ApiState>>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed query: {e}")),
    };
    let p = match StreamParams::parse(&q) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Ok(permit) = Arc::clone(&s.open_streams).try_acquire_owned() else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_CONCURRENT_STREAMS} streams are open already; try again later"),
        );
    };
    let seed = p.seed.unwrap_or_else(|| {
        s.base_seed
            ^ (s.streams.fetch_add(1, Ordering::Relaxed) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    });
    let generator = match Generator::new(s.params.clone(), seed, Clock::Wall) {
        Ok(g) => g,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    struct St {
        g: Generator,
        pacer: Pacer,
        sent: u64,
        limit: Option<u64>,
        until: tokio::time::Instant,
        // Held for as long as the response streams.
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    let init = St {
        g: generator,
        pacer: Pacer::new(Some(p.rate)),
        sent: 0,
        limit: p.count,
        until: tokio::time::Instant::now() + MAX_STREAM_DURATION,
        _permit: permit,
    };
    let body = futures::stream::unfold(init, |mut st| async move {
        if st.limit.is_some_and(|l| st.sent >= l) || tokio::time::Instant::now() >= st.until {
            return None;
        }
        let wait = st.pacer.delay_for(st.sent);
        if !wait.is_zero() {
            if tokio::time::Instant::now() + wait > st.until {
                return None;
            }
            tokio::time::sleep(wait).await;
        }
        // Send every event that is due now in one chunk (at most 1000).
        let mut chunk = Vec::with_capacity(4096);
        loop {
            let e = st.g.next_event();
            if serde_json::to_writer(&mut chunk, &e).is_err() {
                return None;
            }
            chunk.push(b'\n');
            st.sent += 1;
            let done = st.limit.is_some_and(|l| st.sent >= l);
            if done || chunk.len() > 256 * 1024 || st.pacer.delay_for(st.sent) > Duration::ZERO {
                break;
            }
        }
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), st))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn health(
    State(s): State<Arc<ApiState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Response {
    let [k, p, r] = s.checks().await;
    // Error texts name hosts, users and databases: loopback clients only,
    // asking for a loopback name (not a rebound one, not via a proxy).
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let local = peer.ip().is_loopback() && host_is_loopback(host);
    let component = |c: &Check| {
        if local {
            json!({ "ok": c.ok, "detail": c.detail, "error": c.error })
        } else {
            json!({ "ok": c.ok })
        }
    };
    let mut components =
        json!({ "kafka": component(&k), "postgres": component(&p), "redis": component(&r) });
    let mut all_ok = k.ok && p.ok && r.ok;
    if let Some(stats) = &s.telemetry.ingest {
        let ingest = match stats.health() {
            crate::pipeline::ingest::IngestHealth::Ok => {
                json!({ "ok": true, "detail": "writing", "error": null })
            }
            crate::pipeline::ingest::IngestHealth::Degraded { for_secs, reason } => {
                all_ok = false;
                if local {
                    json!({
                        "ok": false,
                        "detail": format!("retrying for {for_secs} s; resumes on its own"),
                        "error": reason,
                    })
                } else {
                    json!({ "ok": false })
                }
            }
        };
        if let Some(map) = components.as_object_mut() {
            map.insert("ingest".into(), ingest);
        }
    }
    let body = json!({
        "status": if all_ok { "ok" } else { "degraded" },
        "generator": "ok",
        "components": components,
    });
    let code = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics_text(State(s): State<Arc<ApiState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.telemetry.render().await,
    )
        .into_response()
}

async fn view(
    State(s): State<Arc<ApiState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(analytics) = &s.telemetry.analytics else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server has no database configured for views",
        );
    };
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed query: {e}")),
    };
    let req = name
        .parse::<ViewKind>()
        .and_then(|k| ViewRequest::parse(k, q.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
    let req = match req {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // One time limit covers the versions read too. The computation itself
    // goes on detached (and is shared with other requests for the same
    // view) if this one gives up or its client leaves.
    let answer = tokio::time::timeout(VIEW_TIMEOUT, async {
        let versions = analytics.versions().await?;
        // A client that names this frame's tag holds it already: told so
        // without a fetch from the cache (the tag names the request and the
        // data versions). Not for `*`, which names no frame: that one is
        // answered once the view is known to be computable.
        let tag = format!("\"{}\"", analytics.tag_at(&req, &versions)?);
        if names_tag(&headers, &tag) {
            return Ok(ViewAnswer::Held(tag));
        }
        analytics
            .view_at(&req, &versions)
            .await
            .map(ViewAnswer::Frame)
    })
    .await;
    let answer = match answer {
        Ok(Ok(ViewAnswer::Held(tag))) => return not_modified(tag, "not-modified", None),
        Ok(Ok(ViewAnswer::Frame(r))) => Ok(r),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the view took longer than {} s; try a shorter range or again later",
                    VIEW_TIMEOUT.as_secs()
                ),
            )
        }
    };
    match answer {
        Ok(r) => {
            let etag = format!("\"{}\"", r.tag);
            let cache_header = format!("{:?}", r.outcome).to_lowercase();
            let elapsed_header = format!("{:.3}", r.elapsed.as_secs_f64() * 1e3);
            if if_none_match(&headers, &etag) {
                return not_modified(etag, &cache_header, Some(elapsed_header));
            }
            let mut buf = Vec::new();
            let mut frame = r.frame;
            if let Err(e) = crate::analytics::export::write_json(&mut frame, &mut buf) {
                return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ETAG, etag)
                .header("x-salespulse-cache", cache_header)
                .header("x-salespulse-elapsed-ms", elapsed_header)
                .body(Body::from(buf))
                .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
        Err(e) if e.is_bad_request() => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// What a `/view` request comes to, short of an error.
enum ViewAnswer {
    /// The client holds the current frame: this tag.
    Held(String),
    /// The frame.
    Frame(crate::analytics::ViewResult),
}

/// A `304 Not Modified` with `etag`, how the frame was found (`cache`)
/// and, when it was looked up, how long that took.
fn not_modified(etag: String, cache: &str, elapsed_ms: Option<String>) -> Response {
    let mut r = Response::builder()
        .status(StatusCode::NOT_MODIFIED)
        .header(header::ETAG, etag)
        .header("x-salespulse-cache", cache);
    if let Some(ms) = elapsed_ms {
        r = r.header("x-salespulse-elapsed-ms", ms);
    }
    r.body(Body::empty())
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Whether the client's `If-None-Match` names `etag` (or is `*`): it holds
/// this frame already (RFC 9110 §13.1.2, weak comparison).
fn if_none_match(headers: &axum::http::HeaderMap, etag: &str) -> bool {
    if_none_match_tags(headers).any(|t| t == "*" || t == etag)
}

/// Whether the client's `If-None-Match` names `etag` itself (not `*`).
fn names_tag(headers: &axum::http::HeaderMap, etag: &str) -> bool {
    if_none_match_tags(headers).any(|t| t == etag)
}

/// The entity tags of `If-None-Match`, without their weak marks.
fn if_none_match_tags(headers: &axum::http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
}

/// Serves the API on `bind` until `shutdown` resolves.
pub async fn serve(
    bind: &str,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_on(listen(bind).await?, state, shutdown).await
}

/// Connections the kernel may queue for the API before it accepts them.
/// The standard library's 128 is less than 50 dashboards reconnecting at
/// once (five connections each): the rest have their SYN dropped and retry
/// a second later. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `bind` (an address, or a name that resolves to some)
/// with a queue of [`LISTEN_BACKLOG`] pending connections.
pub async fn listen(bind: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(bind).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std and tokio do: a restarted server can bind again at once
        // (not on Windows, where it would let another process take the port).
        #[cfg(not(windows))]
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{bind} names no address to listen on"),
        )
    }))
}

/// Serves the API on an already bound listener until `shutdown` resolves.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let bound = listener.local_addr()?;
    check_exposure(bound, state.token.as_deref())?;
    tracing::info!(addr = %bound, "HTTP API listening");
    axum::serve(
        listener,
        router(state, bound).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of connections beyond the standard library's backlog of 128
    /// is queued by the kernel, not dropped (a dropped SYN costs the client
    /// a one-second retry). Linux only: other systems cap the backlog at
    /// their own `somaxconn` (128 on macOS).
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_connections_waits_in_the_queue_instead_of_being_dropped() {
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if somaxconn < 400 {
            eprintln!("skipped: net.core.somaxconn is {somaxconn}");
            return;
        }
        let listener = listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Nobody accepts: every connection must wait in the queue.
        let connects = (0..300).map(|_| async move {
            tokio::time::timeout(
                std::time::Duration::from_millis(700),
                tokio::net::TcpStream::connect(addr),
            )
            .await
        });
        let results = futures::future::join_all(connects).await;
        let late = results.iter().filter(|r| !matches!(r, Ok(Ok(_)))).count();
        assert_eq!(late, 0, "{late} of 300 connections were not queued");
        drop(listener);
        assert!(listen("no-such-host.invalid:80").await.is_err());
    }

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn stream_params() {
        assert_eq!(
            StreamParams::parse(&q(&[])).unwrap(),
            StreamParams {
                rate: DEFAULT_STREAM_RATE,
                count: None,
                seed: None
            }
        );
        assert_eq!(
            StreamParams::parse(&q(&[("rate", "250"), ("count", "3")]))
                .unwrap()
                .count,
            Some(3)
        );
        for bad in [
            &[("rate", "0")][..],
            &[("rate", "-1")],
            &[("rate", "NaN")],
            &[("rate", "1e9")],
            &[("rate", "fast")],
            &[("count", "0")],
            &[("count", "-5")],
            &[("count", "1.5")],
            &[("count", "99999999999")],
            &[("seed", "x")],
            &[("limit", "3")],
        ] {
            assert!(StreamParams::parse(&q(bad)).is_err(), "{bad:?}");
        }
    }
}
