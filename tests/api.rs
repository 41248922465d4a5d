//! The HTTP generator API on a real socket, with real health targets.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use salespulse::api::{self, ApiState, HealthTargets};
use salespulse::bus::EmbeddedBroker;
use salespulse::event::Event;
use salespulse::generator::GeneratorParams;
use serde_json::Value;

struct Server {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn server(health: HealthTargets) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(ApiState::new(GeneratorParams::default(), 9, health).unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(api::serve_on(listener, state, async {
        let _ = rx.await;
    }));
    Server {
        base,
        stop: Some(tx),
    }
}

async fn get(url: &str) -> (u16, String, String) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (status, ctype, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_returns_one_valid_event() {
    let s = server(HealthTargets::default()).await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let (status, ctype, body) = get(&format!("{}/event", s.base)).await;
        assert_eq!(status, 200);
        assert!(ctype.starts_with("application/json"), "{ctype}");
        let e: Event = serde_json::from_str(&body).unwrap();
        assert_eq!(e.validate(Utc::now()), vec![]);
        ids.insert(body);
    }
    assert_eq!(ids.len(), 20, "each call yields a new event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_is_ndjson_counted_paced_and_seedable() {
    let s = server(HealthTargets::default()).await;
    let (status, ctype, body) = get(&format!("{}/stream?rate=5000&count=250", s.base)).await;
    assert_eq!(status, 200);
    assert_eq!(ctype, "application/x-ndjson");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 250);
    for l in &lines {
        let e: Event = serde_json::from_str(l).unwrap();
        assert_eq!(e.validate(Utc::now()), vec![]);
    }
    // Rate control: 100 events at 200/s cannot arrive in much under 0.5 s.
    let t = Instant::now();
    let (_, _, body) = get(&format!("{}/stream?rate=200&count=100", s.base)).await;
    assert_eq!(body.lines().count(), 100);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "stream not paced: {:?}",
        t.elapsed()
    );
    // Same seed, same events (ids, customers, products; timestamps are live).
    let ids = |body: &str| -> Vec<String> {
        body.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                format!("{}{}", v["transaction_id"], v["session_id"])
            })
            .collect()
    };
    let (_, _, a) = get(&format!("{}/stream?rate=10000&count=30&seed=5", s.base)).await;
    let (_, _, b) = get(&format!("{}/stream?rate=10000&count=30&seed=5", s.base)).await;
    assert_eq!(ids(&a), ids(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_get_400_with_a_json_error() {
    let s = server(HealthTargets::default()).await;
    for (query, mentions) in [
        ("rate=0", "rate"),
        ("rate=-3", "rate"),
        ("rate=fast", "rate"),
        ("rate=1e12", "rate"),
        ("count=0", "count"),
        ("count=-1", "count"),
        ("count=2.5", "count"),
        ("count=999999999999", "count"),
        ("seed=abc", "seed"),
        ("rat=10", "rat"),
    ] {
        let (status, ctype, body) = get(&format!("{}/stream?{query}", s.base)).await;
        assert_eq!(status, 400, "{query}");
        assert!(ctype.starts_with("application/json"), "{query}: {ctype}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(mentions), "{query}: {msg}");
    }
    let (status, _, body) = get(&format!("{}/no-such-thing", s.base)).await;
    assert_eq!(status, 404);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_each_service_with_its_error() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let up = server(HealthTargets {
        kafka_brokers: Some(broker.bootstrap_servers().to_owned()),
        database_url: Some(pg_server_url()),
        redis_url: Some(redis_url()),
    })
    .await;
    let (status, _, body) = get(&format!("{}/health", up.base)).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(v["status"], "ok");
    for c in ["kafka", "postgres", "redis"] {
        assert_eq!(v["components"][c]["ok"], true, "{c}: {body}");
    }

    let dead = free_port();
    let down = server(HealthTargets {
        kafka_brokers: Some(format!("127.0.0.1:{dead}")),
        database_url: Some(format!("postgres://u:hunter2@127.0.0.1:{dead}/x")),
        redis_url: Some(format!("redis://127.0.0.1:{dead}")),
    })
    .await;
    let (status, _, body) = get(&format!("{}/health", down.base)).await;
    assert_eq!(status, 503);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "degraded");
    for c in ["kafka", "postgres", "redis"] {
        assert_eq!(v["components"][c]["ok"], false, "{c}");
        let err = v["components"][c]["error"].as_str().unwrap_or_default();
        assert!(!err.is_empty(), "{c} has error text");
    }
    assert!(!body.contains("hunter2"), "password leaked: {body}");
}
