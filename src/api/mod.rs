//! The HTTP API: the generator (`GET /event`, `GET /stream`), `GET /health`,
//! `GET /metrics` (Prometheus) and `GET /view/{name}?filters` (a view as JSON
//! rows; same parameters as `salespulse query`).
//!
//! Bad parameters get `400` with a JSON body `{"error": "..."}`; unknown
//! paths get `404` the same way.

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

mod metrics;

pub use metrics::{LagSource, Telemetry};

use crate::analytics::{ViewKind, ViewRequest};
use crate::generator::{Clock, Generator, GeneratorParams, ParamsError};
use crate::pipeline::doctor::{check_kafka, check_postgres, check_redis, Check};
use crate::pipeline::Pacer;

/// Largest `rate` accepted by `/stream`, events per second.
pub const MAX_STREAM_RATE: f64 = 100_000.0;
/// Largest `count` accepted by `/stream`.
pub const MAX_STREAM_COUNT: u64 = 10_000_000;
/// Default `rate` of `/stream`.
pub const DEFAULT_STREAM_RATE: f64 = 10.0;

/// What `/health` checks.
#[derive(Clone, Debug, Default)]
pub struct HealthTargets {
    pub kafka_brokers: Option<String>,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
}

pub struct ApiState {
    params: GeneratorParams,
    generator: Mutex<Generator>,
    base_seed: u64,
    streams: AtomicU64,
    health: HealthTargets,
    telemetry: Telemetry,
}

impl ApiState {
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
            health,
            telemetry: Telemetry::default(),
        })
    }

    /// Adds what `/metrics` reports and `/view` answers from.
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
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
        .with_state(state)
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
pub struct StreamParams {
    pub rate: f64,
    pub count: Option<u64>,
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
                if !(r.is_finite() && r > 0.0 && r <= MAX_STREAM_RATE) {
                    return Err(format!(
                        "rate={v} is out of range (0, {MAX_STREAM_RATE}] events/s"
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
    }
    let init = St {
        g: generator,
        pacer: Pacer::new(Some(p.rate)),
        sent: 0,
        limit: p.count,
    };
    let body = futures::stream::unfold(init, |mut st| async move {
        if st.limit.is_some_and(|l| st.sent >= l) {
            return None;
        }
        let wait = st.pacer.delay_for(st.sent);
        if !wait.is_zero() {
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

async fn health(State(s): State<Arc<ApiState>>) -> Response {
    let not_configured = |name: &'static str| Check {
        name,
        ok: false,
        detail: "not configured".into(),
        error: Some("not configured".into()),
        hint: None,
    };
    let (k, p, r) = tokio::join!(
        async {
            match &s.health.kafka_brokers {
                Some(b) => check_kafka(b).await,
                None => not_configured("kafka"),
            }
        },
        async {
            match &s.health.database_url {
                Some(u) => check_postgres(u).await,
                None => not_configured("postgres"),
            }
        },
        async {
            match &s.health.redis_url {
                Some(u) => check_redis(u).await,
                None => not_configured("redis"),
            }
        },
    );
    let component = |c: &Check| json!({ "ok": c.ok, "detail": c.detail, "error": c.error });
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
                json!({
                    "ok": false,
                    "detail": format!("retrying for {for_secs} s; resumes on its own"),
                    "error": reason,
                })
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
    match analytics.view(&req).await {
        Ok(r) => {
            let mut buf = Vec::new();
            let mut frame = r.frame;
            if let Err(e) = crate::analytics::export::write_json(&mut frame, &mut buf) {
                return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .header(
                    "x-salespulse-cache",
                    format!("{:?}", r.outcome).to_lowercase(),
                )
                .header(
                    "x-salespulse-elapsed-ms",
                    format!("{:.3}", r.elapsed.as_secs_f64() * 1e3),
                )
                .body(Body::from(buf))
                .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
        Err(e) if e.is_bad_request() => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Serves the API on `bind` until `shutdown` resolves.
pub async fn serve(
    bind: &str,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    serve_on(listener, state, shutdown).await
}

/// Serves the API on an already bound listener until `shutdown` resolves.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "HTTP API listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

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
