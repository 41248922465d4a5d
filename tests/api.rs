//! The HTTP generator API on a real socket, with real health targets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

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
    server_with(ApiState::new(GeneratorParams::builtin(), 9, health).unwrap()).await
}

async fn server_with(state: ApiState) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(state);
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
        // A rate so small the pacer's sleep overflowed, or held the
        // connection for ever.
        ("rate=1e-20", "rate"),
        ("rate=1e-8", "rate"),
        ("rate=0.05", "rate"),
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

/// A TCP port that accepts and counts connections, then drops them.
fn counting_listener() -> (u16, Arc<std::sync::atomic::AtomicU64>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = Arc::clone(&n);
    std::thread::spawn(move || {
        for c in l.incoming() {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(c);
        }
    });
    (port, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_checks_host_and_token_and_caps_streams_and_probes() {
    let (port, probes) = counting_listener();
    let s = server_with(
        ApiState::new(
            GeneratorParams::builtin(),
            9,
            HealthTargets {
                redis_url: Some(format!("redis://127.0.0.1:{port}")),
                ..HealthTargets::default()
            },
        )
        .unwrap()
        .with_token(Some("s3cret-token".into())),
    )
    .await;
    let client = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();

    // 200 parallel health checks probe each service about once.
    let calls = (0..200).map(|_| client.get(format!("{}/health", s.base)).send());
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap().status().as_u16(), 503);
    }
    let n = probes.load(std::sync::atomic::Ordering::Relaxed);
    assert!((1..=3).contains(&n), "{n} probes for 200 /health calls");

    // DNS rebinding: a page from another origin that resolves to 127.0.0.1
    // sends its own Host. Refused; the bound address and localhost pass.
    let port = s.base.rsplit(':').next().unwrap().to_owned();
    for (host, want) in [
        ("evil.example".to_owned(), 421),
        (format!("evil.example:{port}"), 421),
        (format!("localhost:{port}"), 200),
        (format!("127.0.0.1:{port}"), 200),
        (
            format!("localhost:{}", port.parse::<u16>().unwrap() ^ 1),
            421,
        ),
    ] {
        let r = client
            .get(format!("{}/event", s.base))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(status(r), want, "Host: {host}");
    }

    // /view and /metrics need the token; the generator does not.
    for path in ["/metrics", "/view/kpis"] {
        let r = client
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(status(r), 401, "{path}");
        let r = client
            .get(format!("{}{path}", s.base))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(status(r), 401, "{path}");
    }
    let r = client
        .get(format!("{}/metrics", s.base))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 200);
    // No database here: past the guard, the view says so.
    let r = client
        .get(format!("{}/view/kpis", s.base))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 503);

    // Streams: at most MAX_CONCURRENT_STREAMS at once, 429 beyond.
    let mut open = Vec::new();
    for _ in 0..api::MAX_CONCURRENT_STREAMS {
        let r = client
            .get(format!("{}/stream?rate=1", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        open.push(r);
    }
    let r = client
        .get(format!("{}/stream?rate=1&count=1", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 429);
    // One closes: a new one may open.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client
            .get(format!("{}/stream?rate=100&count=1", s.base))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 200 {
            assert_eq!(r.text().await.unwrap().lines().count(), 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a closed stream's place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_beyond_loopback_needs_a_token() {
    let state =
        Arc::new(ApiState::new(GeneratorParams::builtin(), 9, HealthTargets::default()).unwrap());
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = api::serve_on(listener, state, async {}).await.unwrap_err();
    assert!(err.to_string().contains("SALESPULSE_API_TOKEN"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_heavy_views_do_not_exhaust_the_pool() {
    let db = TestDb::new("api_abandon").await;
    let mut g = sparse_generator(3, 300.0);
    let events: Vec<Event> = (0..4_000).map(|_| g.next_event()).collect();
    let mut offsets = std::collections::HashMap::new();
    write_events(&db.store, events, 2_000, &mut offsets).await;
    let cfg = test_config(&db.url, None);
    // A small pool, as a user's server would have under load.
    let store = salespulse::store::Store::connect(&db.url, 3, Duration::from_secs(30))
        .await
        .unwrap();
    let analytics = salespulse::services::analytics(&cfg, &store).unwrap();
    let s = server_with(
        ApiState::new(GeneratorParams::builtin(), 9, HealthTargets::default())
            .unwrap()
            .with_telemetry(api::Telemetry {
                analytics: Some(analytics),
                ..api::Telemetry::default()
            }),
    )
    .await;
    // Fresh keys each run, so that nothing comes from the shared cache.
    let to = format!("2026-03-0{}", 1 + rand::random::<u8>() % 4);
    let heavy = format!(
        "{}/view/revenue_trend?from=2025-12-25&to={to}&granularity=minute",
        s.base
    );
    // Clients that give up at once, more of them than the pool has
    // connections.
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(30))
        .build()
        .unwrap();
    for _ in 0..6 {
        let _ = quick.get(&heavy).send().await;
    }
    let client = reqwest::Client::new();
    let t = Instant::now();
    let r = client
        .get(format!("{}/view/kpis?last=1h", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The heavy one is still answered (its computation went on), and a
    // range too long for its granularity gets a 400 naming the limit.
    let r = client.get(&heavy).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client
        .get(format!(
            "{}/view/revenue_trend?from=0001-01-01&to=9999-12-31&granularity=minute",
            s.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("at most 100000"), "{body}");

    // The frame's tag is its ETag: a client that holds it gets 304 and no
    // body; new data makes a new tag and a 200.
    let kpis = format!("{}/view/kpis?last=7d", s.base);
    let r = client.get(&kpis).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
    let again = |tag: String| {
        let (client, kpis) = (client.clone(), kpis.clone());
        async move {
            client
                .get(&kpis)
                .header("if-none-match", tag)
                .send()
                .await
                .unwrap()
        }
    };
    let r = again(format!("\"nope\", W/{etag}")).await;
    assert_eq!(r.status().as_u16(), 304);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    // Told from the tag alone: nothing fetched from the cache.
    assert_eq!(r.headers()["x-salespulse-cache"], "not-modified");
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(again("\"other\"".into()).await.status().as_u16(), 200);
    // `*` names no frame: answered once the view is known to compute, and
    // a bad request stays a 400.
    let r = again("*".into()).await;
    assert_eq!(r.status().as_u16(), 304);
    assert_ne!(r.headers()["x-salespulse-cache"], "not-modified");
    let r = client
        .get(format!(
            "{}/view/kpis?from=2026-03-02&to=2026-03-01",
            s.base
        ))
        .header("if-none-match", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let more: Vec<Event> = (0..500).map(|_| g.next_event()).collect();
    write_events(&db.store, more, 5_000, &mut offsets).await;
    let r = again(etag.clone()).await;
    assert_eq!(r.status().as_u16(), 200, "new data, new frame");
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);

    store.pool().close().await;
    db.drop().await;
}
