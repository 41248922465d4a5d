//! The ingest spine against a real PostgreSQL and the in-process mock
//! Kafka cluster (a real Kafka-protocol broker on loopback TCP).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use salespulse::bus::{EventProducer, ProducerConfig};
use salespulse::event::{Event, Status};
use salespulse::pipeline::{self, IngestSettings, IngestStats};
use salespulse::services;
use salespulse::store::Batch;

fn producer(brokers: &str, topic: &str) -> EventProducer {
    EventProducer::new(&producer_config(brokers), topic).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ingests_everything_exactly_once_with_exact_rollups() {
    let db = TestDb::new("run").await;
    let cfg = test_config(&db.url, None); // embedded mock broker
    let opts = run_options(20_000, 11);
    let report = services::run(&cfg, opts).await.unwrap();
    assert_eq!(report.produced, 20_000);
    assert_eq!(report.sales + report.sessions, 20_000);
    assert_eq!(
        (
            report.duplicates,
            report.dead_lettered,
            report.offsets_skipped
        ),
        (0, 0, 0)
    );
    // `run` scopes its group to the embedded broker's incarnation.
    let stored: i64 =
        sqlx::query_scalar("SELECT sum(next_offset)::int8 FROM ingest_offsets WHERE topic = $1")
            .bind(&cfg.topic)
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!(stored, 20_000);
    assert_exactly(&db.store, 11, 20_000).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_replays_a_file_exactly_once_and_dead_letters_its_bad_lines() {
    let db = TestDb::new("replay").await;
    let cfg = test_config(&db.url, None);
    // The events `run_options(3_000, 21)` would generate, as `generate`
    // writes them, with a blank line, a CRLF line end, a line that is no
    // JSON and one that is JSON but no event mixed in.
    let mut g = sim_generator(21);
    let mut text = String::new();
    for i in 0..3_000 {
        text.push_str(std::str::from_utf8(&g.next_event().to_json()).unwrap());
        text.push_str(if i == 5 { "\r\n" } else { "\n" });
        match i {
            10 => text.push_str("{not json\n"),
            20 => text.push_str("\n   \n"),
            30 => text.push_str("{\"type\":\"sale\",\"customer_id\":\"c-1\"}\n"),
            _ => {}
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, text.trim_end()).unwrap();
    let opts = services::RunOptions {
        replay: Some(file),
        events: None,
        ..run_options(0, 0)
    };
    let report = services::run(&cfg, opts).await.unwrap();
    assert_eq!(report.produced, 3_002, "every line but the blank ones");
    assert_eq!(report.sales + report.sessions, 3_000);
    assert_eq!((report.duplicates, report.dead_lettered), (0, 2));
    assert!(
        report.latency.is_none(),
        "a replay's event times are the file's"
    );
    assert_exactly(&db.store, 21, 3_000).await;

    // Replayed again (a new embedded broker, so from offset 0), nothing is
    // stored twice.
    let again = services::RunOptions {
        replay: Some(dir.path().join("events.ndjson")),
        events: Some(1_000),
        ..run_options(0, 0)
    };
    let report = services::run(&cfg, again).await.unwrap();
    assert_eq!(report.produced, 1_000, "--events caps the lines replayed");
    assert_eq!(report.sales + report.sessions, 0);
    assert_eq!((report.duplicates, report.dead_lettered), (998, 2));
    assert_exactly(&db.store, 21, 3_000).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_refuses_an_overlong_line_and_a_folder_with_clear_errors() {
    let db = TestDb::new("replay_bad").await;
    let cfg = test_config(&db.url, None);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("long.ndjson");
    let mut g = sim_generator(3);
    let mut text = String::from_utf8(g.next_event().to_json()).unwrap();
    text.push('\n');
    text.push_str(&"x".repeat(pipeline::MAX_REPLAY_LINE + 10));
    std::fs::write(&file, text).unwrap();
    let opts = |path: std::path::PathBuf| services::RunOptions {
        replay: Some(path),
        events: None,
        ..run_options(0, 0)
    };
    let e = services::run(&cfg, opts(file)).await.unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("line 2 is longer than"), "{msg}");
    let e = services::run(&cfg, opts(dir.path().to_path_buf()))
        .await
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("is a folder, not a file"), "{msg}");
    let e = services::run(&cfg, opts(dir.path().join("missing.ndjson")))
        .await
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("opening the events to replay"), "{msg}");
    db.drop().await;
}

#[test]
fn a_replayed_line_is_keyed_by_its_customer() {
    assert_eq!(
        pipeline::replay_key(br#"{"customer_id":"c-7","x":1}"#),
        b"c-7"
    );
    assert_eq!(
        pipeline::replay_key(br#"{"customer_id":"c\u002d8"}"#),
        b"c-8"
    );
    assert!(pipeline::replay_key(b"{not json").is_empty());
    assert!(pipeline::replay_key(br#"{"customer_id":7}"#).is_empty());
    assert!(pipeline::replay_key(br#"[1,2]"#).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_records_go_to_the_dlq_with_reasons_and_neighbours_land() {
    let db = TestDb::new("dlq").await;
    let (broker, cfg) = mock_broker(&db.url, 2);
    let brokers = broker.bootstrap_servers().to_owned();

    let mut g = sim_generator(5);
    let mut valid = Vec::new();
    for _ in 0..40 {
        valid.push(g.next_event());
    }
    let sale = valid
        .iter()
        .find_map(|e| match e {
            Event::Sale(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    let json = |s: &salespulse::event::SaleEvent| Event::Sale(s.clone()).to_json();
    let mut negative = sale.clone();
    negative.transaction_id = uuid::Uuid::new_v4();
    negative.unit_price = -3.0;
    negative.total_amount = -5.0;
    let mut inconsistent = sale.clone();
    inconsistent.transaction_id = uuid::Uuid::new_v4();
    inconsistent.total_amount = sale.total_amount + 7.5;
    let mut unknown_status = sale.clone();
    unknown_status.transaction_id = uuid::Uuid::new_v4();
    unknown_status.status = Status::parse("lost-in-mail");
    let wrong_types = String::from_utf8(json(&sale)).unwrap().replace(
        &format!("\"quantity\":{}", sale.quantity),
        "\"quantity\":\"three\"",
    );
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (
            b"{\"type\":\"sale\",\"transaction_id\":".to_vec(),
            "undecodable",
        ),
        (b"not json at all".to_vec(), "undecodable"),
        (wrong_types.into_bytes(), "undecodable: invalid type"),
        (json(&negative), "unit_price: is negative"),
        (json(&inconsistent), "total_amount"),
        (json(&unknown_status), "unknown status \"lost-in-mail\""),
        (Vec::new(), "undecodable"),
    ];

    let p = producer(&brokers, &cfg.topic);
    let mut bad_iter = bad.iter();
    for (i, e) in valid.iter().enumerate() {
        p.send(e.customer_id().as_bytes(), &e.to_json()).unwrap();
        if i % 5 == 0 {
            if let Some((payload, _)) = bad_iter.next() {
                p.send(b"bad-key", payload).unwrap();
            }
        }
    }
    for (payload, _) in bad_iter {
        p.send(b"bad-key", payload).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let targets = p.stats().delivered_end_offsets();

    let settings = IngestSettings::from_config(&cfg, &brokers);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(IngestStats::default());
    let workers = pipeline::spawn_workers(1, &settings, &db.store, &stop, &stats).unwrap();
    drain_and_stop(&db.store, &cfg, &targets, &stop, workers).await;

    assert_eq!(
        stats.dead_lettered.load(Ordering::Relaxed),
        bad.len() as u64
    );
    let sales = valid.iter().filter(|e| matches!(e, Event::Sale(_))).count() as i64;
    assert_eq!(
        count(&db.store, "SELECT count(*) FROM transactions").await,
        sales
    );
    assert_eq!(
        count(&db.store, "SELECT count(*) FROM sessions").await,
        valid.len() as i64 - sales
    );
    assert_consistent(&db.store).await;

    // Every bad record is in the DLQ, untouched, with its reason and origin.
    let consumer: BaseConsumer = salespulse::bus::base_config(&brokers)
        .set("group.id", "dlq-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for part in 0..2 {
        tpl.add_partition_offset(&cfg.dlq_topic, part, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut got: Vec<(Vec<u8>, String, String)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < bad.len() && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m.headers().expect("DLQ record has headers");
            let header = |k: &str| {
                headers
                    .iter()
                    .find(|h| h.key == k)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            assert_eq!(header("salespulse.source.topic"), cfg.topic);
            assert!(header("salespulse.source.offset").parse::<i64>().is_ok());
            got.push((
                m.payload().unwrap_or_default().to_vec(),
                header("salespulse.error"),
                header("salespulse.error.kind"),
            ));
        }
    }
    assert_eq!(got.len(), bad.len(), "DLQ holds every rejected record");
    for (payload, reason) in &bad {
        let (_, error, kind) = got
            .iter()
            .find(|(p, _, _)| p == payload)
            .unwrap_or_else(|| {
                panic!(
                    "record {:?} missing from the DLQ",
                    String::from_utf8_lossy(payload)
                )
            });
        assert!(
            error.contains(reason),
            "DLQ reason {error:?} should mention {reason:?}"
        );
        assert!(kind == "undecodable" || kind == "invalid");
    }
    // The negative one reports every problem, not just the first.
    let (_, error, _) = got.iter().find(|(p, _, _)| *p == json(&negative)).unwrap();
    assert!(
        error.contains("unit_price") && error.contains("total_amount"),
        "{error}"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_overlapping_batches_change_nothing() {
    let db = TestDb::new("replay").await;
    let mut g = sim_generator(21);
    let events: Vec<Event> = (0..3_000).map(|_| g.next_event()).collect();
    let batch_of = |range: std::ops::Range<usize>, next: i64| {
        let mut b = Batch::default();
        for (i, e) in events[range].iter().enumerate() {
            match e {
                Event::Sale(s) => b.sales.push((s.clone(), 0, i as i64)),
                Event::Session(s) => b.sessions.push((s.clone(), 0, i as i64)),
            }
        }
        b.offsets = vec![(0, next)];
        b
    };
    let first = batch_of(0..2_000, 2_000);
    let out = db.store.write_batch("g", "t", &first).await.unwrap();
    assert_eq!(out.sales + out.sessions, 2_000);
    let snapshot = |store: salespulse::store::Store| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT md5(string_agg(x, ',' ORDER BY x)) FROM (
                SELECT format('%s', m) x FROM sales_metrics m UNION ALL
                SELECT format('%s', s) FROM session_metrics s UNION ALL
                SELECT format('%s', c) FROM customers c UNION ALL
                SELECT format('%s', p) FROM products p) all_rows",
        )
        .fetch_one(store.pool())
        .await
        .unwrap()
    };
    let before = snapshot(db.store.clone()).await;

    // Exact replay: nothing new, nothing counted twice.
    let again = db.store.write_batch("g", "t", &first).await.unwrap();
    assert_eq!((again.sales, again.sessions), (0, 0));
    assert_eq!(snapshot(db.store.clone()).await, before);

    // Overlap plus in-batch repeats: only the new third lands, once.
    let mut overlap = batch_of(1_000..3_000, 3_000);
    let dup = overlap.sales.last().unwrap().clone();
    overlap.sales.push(dup);
    let out = db.store.write_batch("g", "t", &overlap).await.unwrap();
    assert_eq!(out.sales + out.sessions, 1_000);
    assert_exactly(&db.store, 21, 3_000).await;

    // A stale writer cannot move the stored offset backwards.
    db.store
        .write_batch("g", "t", &batch_of(0..10, 10))
        .await
        .unwrap();
    let stored = db.store.stored_offsets("g", "t", &[0]).await.unwrap();
    assert_eq!(stored.get(&0), Some(&3_000));
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_in_one_group_survive_rebalances_exactly_once() {
    let db = TestDb::new("group").await;
    let (broker, cfg) = mock_broker(&db.url, 6);
    let brokers = broker.bootstrap_servers().to_owned();
    let n = 40_000;
    let targets = produce(&brokers, &cfg.topic, 31, n);

    let settings = IngestSettings::from_config(&cfg, &brokers);
    let stats = Arc::new(IngestStats::default());
    let stop_first = Arc::new(AtomicBool::new(false));
    let first = pipeline::spawn_workers(1, &settings, &db.store, &stop_first, &stats).unwrap();
    wait_until(Duration::from_secs(30), "first progress", || async {
        stored_total(&db.store, &cfg.group_id, &cfg.topic).await > 2_000
    })
    .await;
    // Two more members join: the group rebalances mid-stream.
    let stop_rest = Arc::new(AtomicBool::new(false));
    let rest = pipeline::spawn_workers(2, &settings, &db.store, &stop_rest, &stats).unwrap();
    let progress = stored_total(&db.store, &cfg.group_id, &cfg.topic).await;
    wait_until(
        Duration::from_secs(60),
        "progress after the join",
        || async { stored_total(&db.store, &cfg.group_id, &cfg.topic).await > progress + 2_000 },
    )
    .await;
    // The first member leaves: another rebalance.
    stop_first.store(true, Ordering::Release);
    pipeline::join_workers(first).await.unwrap();
    drain_and_stop(&db.store, &cfg, &targets, &stop_rest, rest).await;

    assert_eq!(stats.offsets_skipped.load(Ordering::Relaxed), 0);
    assert_exactly(&db.store, 31, n).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_database_loses_nothing_and_ingest_resumes() {
    // While the table is locked every write hits the statement timeout: the
    // worker retries with backoff, commits nothing, and lands everything once
    // the lock is released.
    let db = TestDb::new("pgdown").await;
    let (broker, cfg) = mock_broker(&db.url, 3);
    let brokers = broker.bootstrap_servers().to_owned();
    produce(&brokers, &cfg.topic, 41, 5_000);

    // Lock the transactions table so every write blocks, then times out.
    let mut locker = db.store.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let settings = IngestSettings::from_config(&cfg, &brokers);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(IngestStats::default());
    let store = salespulse::store::Store::connect(&db.url, 3, Duration::from_millis(300))
        .await
        .unwrap();
    let workers = pipeline::spawn_workers(1, &settings, &store, &stop, &stats).unwrap();
    wait_until(
        Duration::from_secs(30),
        "a failed write attempt",
        || async { stats.write_retries.load(Ordering::Relaxed) > 0 },
    )
    .await;
    assert_eq!(stored_total(&db.store, &cfg.group_id, &cfg.topic).await, 0);
    // It reports itself degraded, with the reason, and keeps retrying past
    // what used to be its retry budget.
    match stats.health() {
        pipeline::ingest::IngestHealth::Degraded { reason, .. } => {
            assert!(reason.contains("statement timeout"), "{reason}")
        }
        h => panic!("expected degraded, got {h:?}"),
    }
    // So do /health and /metrics, and they turn back once it resumes.
    let api = api_with_ingest(
        &stats,
        salespulse::api::HealthTargets {
            kafka_brokers: Some(brokers.clone()),
            database_url: Some(db.url.clone()),
            redis_url: Some(redis_url()),
        },
    )
    .await;
    let health = api_get(&api, "/health").await;
    assert_eq!(health.0, 503, "{}", health.1);
    let v: serde_json::Value = serde_json::from_str(&health.1).unwrap();
    assert_eq!(v["components"]["ingest"]["ok"], false, "{}", health.1);
    let why = v["components"]["ingest"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("statement timeout"), "{}", health.1);
    let metrics = api_get(&api, "/metrics").await.1;
    assert!(
        metrics.contains("\nsalespulse_ingest_degraded 1\n"),
        "{metrics}"
    );
    wait_until(Duration::from_secs(60), "more retries", || async {
        stats.write_retries.load(Ordering::Relaxed) > 4
    })
    .await;
    locker.rollback().await.unwrap();
    wait_until(Duration::from_secs(60), "recovery", || async {
        stats.health() == pipeline::ingest::IngestHealth::Ok
    })
    .await;
    let (code, body) = api_get(&api, "/health").await;
    assert_eq!(code, 200, "{body}");
    let metrics = api_get(&api, "/metrics").await.1;
    assert!(
        metrics.contains("\nsalespulse_ingest_degraded 0\n"),
        "{metrics}"
    );

    // A full pool: every connection held elsewhere. Ingest waits out the
    // acquire timeout, says so, and resumes once one is free.
    let before = stored_total(&db.store, &cfg.group_id, &cfg.topic).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(store.pool().acquire().await.unwrap());
    }
    // Something to write, so that ingest needs a connection (it may have
    // caught up already): the first events again. They are stored, so
    // neither rows nor totals may change.
    let targets = produce(&brokers, &cfg.topic, 41, 500);
    wait_until(Duration::from_secs(60), "degraded on a full pool", || async {
        matches!(
            stats.health(),
            pipeline::ingest::IngestHealth::Degraded { ref reason, .. } if reason.contains("pool")
        )
    })
    .await;
    drop(held);
    wait_until(
        Duration::from_secs(60),
        "recovery from a full pool",
        || async { stats.health() == pipeline::ingest::IngestHealth::Ok },
    )
    .await;
    assert!(stored_total(&db.store, &cfg.group_id, &cfg.topic).await >= before);
    drain_and_stop(&db.store, &cfg, &targets, &stop, workers).await;
    assert_exactly(&db.store, 41, 5_000).await;
    db.drop().await;
}

#[test]
fn undeliverable_messages_are_retried_counted_and_reported() {
    let dead = free_port();
    let cfg = ProducerConfig {
        brokers: format!("127.0.0.1:{dead}"),
        linger_ms: 1,
        idempotence: true,
        message_timeout_ms: 300,
        max_attempts: 2,
    };
    let p = EventProducer::new(&cfg, "sales-events").unwrap();
    for i in 0..10 {
        p.send(format!("c{i}").as_bytes(), b"{}").unwrap();
    }
    let err = p.flush(Duration::from_secs(30)).unwrap_err();
    assert!(
        err.to_string()
            .contains("10 message(s) could not be delivered"),
        "{err}"
    );
    let s = p.stats();
    assert_eq!(s.failed.load(Ordering::Relaxed), 10);
    assert_eq!(
        s.retried.load(Ordering::Relaxed),
        10,
        "each message retried once with backoff"
    );
    assert_eq!(s.delivered.load(Ordering::Relaxed), 0);
    assert!(s.last_error().is_some());
}

// ---- poison records, conflicting duplicates, a DLQ that never blocks ----

/// A batch of `events` on partition 0, offsets from `first`.
fn batch_at(events: &[Event], first: i64) -> Batch {
    let mut b = Batch::default();
    for (i, e) in events.iter().enumerate() {
        let o = first + i as i64;
        match e {
            Event::Sale(s) => b.sales.push((s.clone(), 0, o)),
            Event::Session(s) => b.sessions.push((s.clone(), 0, o)),
        }
    }
    b.offsets = vec![(0, first + events.len() as i64)];
    b
}

fn first_sale(events: &[Event]) -> salespulse::event::SaleEvent {
    events
        .iter()
        .find_map(|e| match e {
            Event::Sale(s) => Some(s.clone()),
            Event::Session(_) => None,
        })
        .unwrap()
}

/// The two records that stopped ingest for good (they bypass `validate`
/// here, as a record the validation misses would): a NUL in a text field
/// and an amount past numeric(12,2); and a session with a NUL.
fn poison_kinds(events: &[Event]) -> Vec<(Event, &'static str)> {
    let sale = first_sale(events);
    let mut nul = sale.clone();
    nul.transaction_id = uuid::Uuid::new_v4();
    nul.category = "Books\u{0}Evil".into();
    let mut overflow = sale.clone();
    overflow.transaction_id = uuid::Uuid::new_v4();
    overflow.quantity = 10_000;
    overflow.unit_price = 1_000_000.0;
    overflow.discount = 0.0;
    overflow.total_amount = 1e10;
    let mut session = events
        .iter()
        .find_map(|e| match e {
            Event::Session(s) => Some(s.clone()),
            Event::Sale(_) => None,
        })
        .unwrap();
    session.session_id = "poison-session".into();
    session.region = "Europe\u{0}".into();
    vec![
        (Event::Sale(nul), "0x00"),
        (Event::Sale(overflow), "numeric field overflow"),
        (Event::Session(session), "0x00"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_isolated_and_the_rest_commits_exactly_once() {
    let db = TestDb::new("poison").await;
    let mut g = sim_generator(61);
    let valid: Vec<Event> = (0..400).map(|_| g.next_event()).collect();
    let poison = poison_kinds(&valid);
    let mut next = 0i64;
    let mut stored_valid = 0usize;

    // Each kind alone, in the middle of valid records.
    for (p, why) in &poison {
        let mut events: Vec<Event> = valid[stored_valid..stored_valid + 50].to_vec();
        events.insert(20, p.clone());
        let b = batch_at(&events, next);
        let out = db.store.write_batch("g", "t", &b).await.unwrap();
        assert_eq!(out.refused.len(), 1, "{why}: {:?}", out.refused);
        let r = &out.refused[0];
        assert_eq!((r.partition, r.offset), (0, next + 20));
        assert_eq!(r.kind, "rejected-by-database");
        assert!(
            r.reason.contains(why),
            "{:?} should mention {why}",
            r.reason
        );
        assert!(r.reason.contains("SQLSTATE"), "{}", r.reason);
        assert_eq!(out.sales + out.sessions, 50);
        next += events.len() as i64;
        stored_valid += 50;
    }
    // Several in one batch, spread out.
    let mut events: Vec<Event> = valid[stored_valid..stored_valid + 200].to_vec();
    for (i, (p, _)) in poison.iter().enumerate() {
        let mut p = p.clone();
        if let Event::Session(s) = &mut p {
            s.session_id = format!("poison-session-{i}");
        }
        if let Event::Sale(s) = &mut p {
            s.transaction_id = uuid::Uuid::new_v4();
        }
        events.insert(i * 70 + 3, p);
    }
    let out = db
        .store
        .write_batch("g", "t", &batch_at(&events, next))
        .await
        .unwrap();
    assert_eq!(out.refused.len(), 3, "{:?}", out.refused);
    assert_eq!(out.sales + out.sessions, 200);
    next += events.len() as i64;
    stored_valid += 200;

    // A batch that is all poison: nothing stored, the offsets still advance.
    let all: Vec<Event> = (0..5)
        .map(|i| {
            let mut s = first_sale(&valid);
            s.transaction_id = uuid::Uuid::new_v4();
            s.product_id = format!("p\u{0}{i}");
            Event::Sale(s)
        })
        .collect();
    let out = db
        .store
        .write_batch("g", "t", &batch_at(&all, next))
        .await
        .unwrap();
    assert_eq!(out.refused.len(), 5);
    assert_eq!(out.sales + out.sessions, 0);
    next += all.len() as i64;

    let stored = db.store.stored_offsets("g", "t", &[0]).await.unwrap();
    assert_eq!(stored.get(&0), Some(&next), "offsets cover every record");
    let rows = count(&db.store, "SELECT count(*) FROM transactions").await
        + count(&db.store, "SELECT count(*) FROM sessions").await;
    assert_eq!(rows, stored_valid as i64, "exactly the valid records, once");
    assert_consistent(&db.store).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_stay_silent_and_conflicting_duplicates_are_refused() {
    let db = TestDb::new("conflict").await;
    let mut g = sim_generator(62);
    let events: Vec<Event> = (0..100).map(|_| g.next_event()).collect();
    db.store
        .write_batch("g", "t", &batch_at(&events, 0))
        .await
        .unwrap();
    let original = first_sale(&events);
    let mut changed = original.clone();
    changed.quantity = 100;
    changed.total_amount = 50_000.0;
    // Against a stored row: identical is a duplicate, different is refused.
    let out = db
        .store
        .write_batch(
            "g",
            "t",
            &batch_at(
                &[Event::Sale(original.clone()), Event::Sale(changed.clone())],
                100,
            ),
        )
        .await
        .unwrap();
    assert_eq!(out.duplicates, 1);
    assert_eq!(out.refused.len(), 1, "{:?}", out.refused);
    assert_eq!(out.refused[0].kind, "conflicting-duplicate");
    assert_eq!(out.refused[0].offset, 101);
    assert!(
        out.refused[0].reason.contains("quantity")
            && out.refused[0].reason.contains("total_amount"),
        "{}",
        out.refused[0].reason
    );
    // Within one batch: the first occurrence wins.
    let mut fresh = original.clone();
    fresh.transaction_id = uuid::Uuid::new_v4();
    let mut fresh_changed = fresh.clone();
    fresh_changed.payment_method = format!("{}-changed", fresh.payment_method);
    let out = db
        .store
        .write_batch(
            "g",
            "t",
            &batch_at(
                &[
                    Event::Sale(fresh.clone()),
                    Event::Sale(fresh_changed),
                    Event::Sale(fresh.clone()),
                ],
                102,
            ),
        )
        .await
        .unwrap();
    assert_eq!((out.sales, out.duplicates, out.refused.len()), (1, 1, 1));
    assert!(
        out.refused[0].reason.contains("payment_method"),
        "{:?}",
        out.refused
    );
    let stored: i32 =
        sqlx::query_scalar("SELECT quantity FROM transactions WHERE transaction_id = $1")
            .bind(original.transaction_id)
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!(stored, original.quantity, "the stored record is kept");
    assert_consistent(&db.store).await;
    db.drop().await;
}

/// Every record in the DLQ: (payload, headers by key).
fn read_dlq(
    brokers: &str,
    topic: &str,
    partitions: i32,
    want: usize,
) -> Vec<(Vec<u8>, std::collections::HashMap<String, String>)> {
    let consumer: BaseConsumer = salespulse::bus::base_config(brokers)
        .set("group.id", "dlq-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for part in 0..partitions {
        tpl.add_partition_offset(topic, part, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < want && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            got.push((m.payload().unwrap_or_default().to_vec(), headers));
        }
    }
    // Nothing more than expected arrives.
    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
        panic!("unexpected extra DLQ record at offset {}", m.offset());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_dead_letters_refused_conflicting_and_oversized_records_and_goes_on() {
    let db = TestDb::new("poisoningest").await;
    // A rule the validation does not know: the database refuses these rows.
    sqlx::query(
        "ALTER TABLE transactions ADD CONSTRAINT test_poison CHECK (payment_method <> 'poison')",
    )
    .execute(db.store.pool())
    .await
    .unwrap();
    let (broker, cfg) = mock_broker(&db.url, 2);
    let brokers = broker.bootstrap_servers().to_owned();
    let mut g = sim_generator(63);
    let valid: Vec<Event> = (0..300).map(|_| g.next_event()).collect();
    let mut poison = first_sale(&valid);
    poison.transaction_id = uuid::Uuid::new_v4();
    poison.payment_method = "poison".into();
    let mut conflict = first_sale(&valid);
    conflict.quantity += 1;
    conflict.total_amount += conflict.unit_price;
    // Undecodable (an unterminated string) and too large for the DLQ.
    let mut oversized = b"{\"type\":\"sale\",\"junk\":\"".to_vec();
    oversized.resize(900_000, b'x');

    let p = producer(&brokers, &cfg.topic);
    for (i, e) in valid.iter().enumerate() {
        p.send(e.customer_id().as_bytes(), &e.to_json()).unwrap();
        match i {
            50 => p
                .send(
                    poison.customer_id.as_bytes(),
                    &Event::Sale(poison.clone()).to_json(),
                )
                .unwrap(),
            150 => p
                .send(
                    conflict.customer_id.as_bytes(),
                    &Event::Sale(conflict.clone()).to_json(),
                )
                .unwrap(),
            250 => p.send(b"big", &oversized).unwrap(),
            _ => {}
        }
    }
    // A redelivery of the first sale: silent.
    let again = Event::Sale(first_sale(&valid));
    p.send(again.customer_id().as_bytes(), &again.to_json())
        .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
    let targets = p.stats().delivered_end_offsets();

    let settings = IngestSettings::from_config(&cfg, &brokers);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(IngestStats::default());
    let workers = pipeline::spawn_workers(1, &settings, &db.store, &stop, &stats).unwrap();
    drain_and_stop(&db.store, &cfg, &targets, &stop, workers).await;

    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 3);
    assert_eq!(stats.refused_by_database.load(Ordering::Relaxed), 1);
    assert_eq!(stats.conflicting_duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(stats.dlq_truncated.load(Ordering::Relaxed), 1);
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 1);
    let rows = count(&db.store, "SELECT count(*) FROM transactions").await
        + count(&db.store, "SELECT count(*) FROM sessions").await;
    assert_eq!(rows, valid.len() as i64);
    assert_consistent(&db.store).await;

    let dlq = read_dlq(&brokers, &cfg.dlq_topic, 2, 3);
    assert_eq!(dlq.len(), 3);
    let by_kind = |k: &str| {
        dlq.iter()
            .find(|(_, h)| h.get("salespulse.error.kind").map(String::as_str) == Some(k))
            .unwrap_or_else(|| panic!("no {k} record in the DLQ"))
    };
    let (payload, h) = by_kind("rejected-by-database");
    assert_eq!(payload, &Event::Sale(poison).to_json(), "original bytes");
    assert!(h["salespulse.error"].contains("test_poison"), "{h:?}");
    let (payload, h) = by_kind("conflicting-duplicate");
    assert_eq!(payload, &Event::Sale(conflict).to_json());
    assert!(h["salespulse.error"].contains("quantity"), "{h:?}");
    let (payload, h) = by_kind("undecodable");
    assert_eq!(h["salespulse.payload.truncated"], "true");
    assert_eq!(h["salespulse.payload.size"], oversized.len().to_string());
    assert!(payload.len() <= salespulse::pipeline::ingest::DLQ_MAX_PAYLOAD);
    assert_eq!(payload[..], oversized[..payload.len()]);
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&oversized)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(h["salespulse.payload.sha256"], sha);
    assert_eq!(h["salespulse.source.topic"], cfg.topic);
    // Its source position finds the whole record.
    let partition: i32 = h["salespulse.source.partition"].parse().unwrap();
    let offset: i64 = h["salespulse.source.offset"].parse().unwrap();
    assert!(targets
        .iter()
        .any(|(p, end)| *p == partition && offset < *end));
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_is_honoured_within_a_second_while_retrying() {
    let db = TestDb::new("stopretry").await;
    let (broker, cfg) = mock_broker(&db.url, 2);
    let brokers = broker.bootstrap_servers().to_owned();
    produce(&brokers, &cfg.topic, 64, 2_000);
    let mut locker = db.store.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let store = salespulse::store::Store::connect(&db.url, 3, Duration::from_secs(5))
        .await
        .unwrap();
    let settings = IngestSettings::from_config(&cfg, &brokers);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(IngestStats::default());
    let workers = pipeline::spawn_workers(1, &settings, &store, &stop, &stats).unwrap();
    // Wait until a write is blocked on the lock (inside its 5 s statement).
    wait_until(Duration::from_secs(30), "a blocked write", || async {
        count(
            &db.store,
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'transactions'::regclass",
        )
        .await
            > 0
    })
    .await;
    let asked = std::time::Instant::now();
    stop.store(true, Ordering::Release);
    pipeline::join_workers(workers).await.unwrap();
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(1_500),
        "stopped after {took:?}"
    );
    locker.rollback().await.unwrap();
    // Nothing half-written: the abandoned batch left no rows and no offsets.
    assert_eq!(
        count(&db.store, "SELECT count(*) FROM transactions").await,
        0
    );
    assert_eq!(stored_total(&db.store, &cfg.group_id, &cfg.topic).await, 0);
    db.drop().await;
}

#[test]
fn fuzzing_the_decoder_and_the_copy_encoder_breaks_nothing() {
    let r = salespulse::bench::fuzz::run(&salespulse::bench::fuzz::FuzzOptions {
        inputs: 300_000,
        seed: 12,
        threads: 2,
    });
    assert!(r.clean(), "{r}");
    assert_eq!(r.inputs, 300_000);
    // The mutations reach every outcome, not just the parser's errors.
    for (what, n) in [
        ("accepted", r.accepted),
        ("invalid", r.invalid),
        ("undecodable", r.undecodable),
    ] {
        assert!(n > r.inputs / 50, "{what}: {n} of {}", r.inputs);
    }
}

/// A string of at most `max` bytes (non-blank, no control characters) from
/// characters that stress escaping and byte lengths.
fn edge_text(rng: &mut rand_chacha::ChaCha8Rng, max: usize, unique: usize) -> String {
    use rand::Rng;
    const POOL: &[char] = &[
        'a', 'Z', '0', ' ', '\\', '"', '\'', ',', '%', 'é', 'ß', '€', '😀', '\u{200b}', '\u{feff}',
        '\u{2028}', '\u{fffd}', '|', '=', '{',
    ];
    let target = match rng.random_range(0..4) {
        0 => max,
        1 => max.saturating_sub(1),
        2 => 1,
        _ => rng.random_range(1..=max),
    };
    let mut s = format!("#{unique}#");
    while s.len() < target {
        let c = POOL[rng.random_range(0..POOL.len())];
        if s.len() + c.len_utf8() > target {
            break;
        }
        s.push(c);
    }
    s
}

fn edge_event(
    rng: &mut rand_chacha::ChaCha8Rng,
    now: chrono::DateTime<chrono::Utc>,
    i: usize,
) -> Event {
    use chrono::TimeZone;
    use rand::Rng;
    use salespulse::event::{Channel, SaleEvent, SessionEvent, Status};
    let earliest = chrono::Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap();
    let latest = now + chrono::Duration::seconds(299);
    let mut time = || match rng.random_range(0..4) {
        0 => earliest,
        1 => latest,
        _ => {
            earliest
                + chrono::Duration::nanoseconds(
                    rng.random_range(0..(latest - earliest).num_nanoseconds().unwrap()),
                )
        }
    };
    let (t1, t2) = (time(), time());
    let upper = |rng: &mut rand_chacha::ChaCha8Rng, n: usize| -> String {
        (0..n)
            .map(|_| char::from(rng.random_range(b'A'..=b'Z')))
            .collect()
    };
    let channel = Channel::ALL[rng.random_range(0..Channel::ALL.len())].clone();
    if rng.random_bool(0.2) {
        return Event::Session(SessionEvent {
            session_id: edge_text(rng, 64, i),
            customer_id: edge_text(rng, 64, i),
            started_at: t1.min(t2),
            ended_at: t1.max(t2),
            region: edge_text(rng, 64, i),
            country: upper(rng, 2),
            channel,
            page_views: [0, 1, 10_000][rng.random_range(0..3)],
            orders: [0, 1, 1_000][rng.random_range(0..3)],
        });
    }
    let quantity = [1, 2, 9_999, 10_000, rng.random_range(1..=10_000)][rng.random_range(0..5)];
    let unit_price: f64 = [
        0.0,
        0.01,
        0.005,
        0.125,
        999_999.99,
        1_000_000.0,
        rng.random_range(0.0..1_000_000.0),
    ][rng.random_range(0..7)];
    let gross = f64::from(quantity) * unit_price;
    let discount = [
        0.0,
        gross,
        (gross - 0.01).max(0.0),
        rng.random_range(0.0..=gross),
    ][rng.random_range(0..4)];
    let total = (gross - discount + [0.0, 0.01, -0.01][rng.random_range(0..3)]).max(0.0);
    Event::Sale(SaleEvent {
        transaction_id: uuid::Uuid::new_v4(),
        occurred_at: t1,
        customer_id: edge_text(rng, 64, i),
        session_id: edge_text(rng, 64, i),
        product_id: edge_text(rng, 64, i),
        product_name: edge_text(rng, 256, i),
        category: edge_text(rng, 64, i),
        quantity,
        unit_price,
        discount,
        total_amount: total,
        currency: upper(rng, 3),
        payment_method: edge_text(rng, 32, i),
        status: Status::ALL[rng.random_range(0..Status::ALL.len())].clone(),
        region: edge_text(rng, 64, i),
        country: upper(rng, 2),
        channel,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_that_passes_validation_is_accepted_by_postgresql() {
    use rand::SeedableRng;
    let db = TestDb::new("validprop").await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    let now = chrono::Utc::now();
    let (mut valid, mut tried) = (Vec::new(), 0usize);
    while valid.len() < 3_000 {
        let e = edge_event(&mut rng, now, tried);
        tried += 1;
        if e.validate(now).is_empty() {
            valid.push(e);
        }
    }
    assert!(
        tried < 4 * valid.len(),
        "the generator mostly makes valid edge events ({tried} tried)"
    );
    for (i, chunk) in valid.chunks(100).enumerate() {
        let first = (i * 100) as i64;
        let out = db
            .store
            .write_batch("g", "t", &batch_at(chunk, first))
            .await
            .unwrap();
        if let Some(r) = out.refused.first() {
            let e = &chunk[(r.offset - first) as usize];
            panic!("PostgreSQL refused a valid event: {}\n{e:?}", r.reason);
        }
        assert_eq!(out.sales + out.sessions, chunk.len() as u64);
    }
    // What PostgreSQL stored is exactly what was sent (ingest's binary COPY
    // encodes every value itself: times, numerics, texts).
    let sales = sqlx::query_as::<_, (uuid::Uuid, String)>(
        "SELECT transaction_id, concat_ws('|', (extract(epoch FROM occurred_at) * 1000000)::int8,
            customer_id, session_id, product_id, category, quantity, unit_price::text,
            discount::text, total_amount::text, currency, payment_method, status, region,
            country, channel) FROM transactions",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    let sessions = sqlx::query_as::<_, (String, String)>(
        "SELECT session_id, concat_ws('|', customer_id,
            (extract(epoch FROM started_at) * 1000000)::int8,
            (extract(epoch FROM ended_at) * 1000000)::int8, region, country, channel, page_views,
            orders) FROM sessions",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    let (sales, sessions): (
        std::collections::HashMap<_, _>,
        std::collections::HashMap<_, _>,
    ) = (sales.into_iter().collect(), sessions.into_iter().collect());
    let money = |x: f64| {
        // Whole cents, half away from zero (as the event format says).
        let c = (x * 100.0).round() as i64;
        format!(
            "{}{}.{:02}",
            if c < 0 { "-" } else { "" },
            c.abs() / 100,
            c.abs() % 100
        )
    };
    for e in &valid {
        match e {
            Event::Sale(s) => {
                let want = [
                    s.occurred_at.timestamp_micros().to_string(),
                    s.customer_id.clone(),
                    s.session_id.clone(),
                    s.product_id.clone(),
                    s.category.clone(),
                    s.quantity.to_string(),
                    money(s.unit_price),
                    money(s.discount),
                    money(s.total_amount),
                    s.currency.clone(),
                    s.payment_method.clone(),
                    s.status.as_str().to_owned(),
                    s.region.clone(),
                    s.country.clone(),
                    s.channel.as_str().to_owned(),
                ]
                .join("|");
                assert_eq!(sales.get(&s.transaction_id), Some(&want), "{s:?}");
            }
            Event::Session(s) => {
                let want = [
                    s.customer_id.clone(),
                    s.started_at.timestamp_micros().to_string(),
                    s.ended_at.timestamp_micros().to_string(),
                    s.region.clone(),
                    s.country.clone(),
                    s.channel.as_str().to_owned(),
                    s.page_views.to_string(),
                    s.orders.to_string(),
                ]
                .join("|");
                assert_eq!(sessions.get(&s.session_id), Some(&want), "{s:?}");
            }
        }
    }
    assert_consistent(&db.store).await;
    db.drop().await;
}

/// An API server reporting `stats` in /health and /metrics.
async fn api_with_ingest(
    stats: &Arc<IngestStats>,
    targets: salespulse::api::HealthTargets,
) -> String {
    use salespulse::api::{self, ApiState};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = ApiState::new(
        salespulse::generator::GeneratorParams::builtin(),
        1,
        targets,
    )
    .unwrap()
    .with_telemetry(salespulse::api::Telemetry {
        ingest: Some(Arc::clone(stats)),
        ..Default::default()
    });
    tokio::spawn(api::serve_on(
        listener,
        Arc::new(state),
        std::future::pending(),
    ));
    base
}

async fn api_get(base: &str, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Small batches over TCP commit in a few milliseconds: no statement of the
/// write waits out a delayed ACK (Nagle's algorithm on the client socket
/// held the tail of each large message for ~40 ms, so every batch took
/// 45 ms or more whatever its size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_batch_commits_without_waiting_for_a_delayed_ack() {
    let db = TestDb::new("nodelay").await;
    assert!(
        db.url.contains("127.0.0.1") || db.url.contains("localhost"),
        "the test needs PostgreSQL over TCP: {}",
        db.url
    );
    let mut g = sim_generator(33);
    let mut took = Vec::new();
    for i in 0..41i64 {
        let events: Vec<Event> = (0..60).map(|_| g.next_event()).collect();
        let batch = batch_at(&events, i * 60);
        let t = std::time::Instant::now();
        db.store.write_batch("g", "t", &batch).await.unwrap();
        if i > 0 {
            took.push(t.elapsed());
        }
    }
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median < std::time::Duration::from_millis(20),
        "median write of 60 events took {median:?} (all: {took:?})"
    );
    db.drop().await;
}

/// `rollups rebuild` while ingest is committing: each rebuild waits for the
/// batch in flight and holds the next one off, so nothing is lost, nothing
/// counts twice, and the tables end equal to their recomputation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilds_during_ingest_lose_and_double_nothing() {
    let db = TestDb::new("rebuildlive").await;
    let cfg = test_config(&db.url, None);
    let run = tokio::spawn(async move { services::run(&cfg, run_options(40_000, 13)).await });
    while common::count(&db.store, "SELECT count(*) FROM transactions").await == 0 {
        assert!(!run.is_finished(), "the run ended before any row landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rebuilds = 0;
    while !run.is_finished() {
        salespulse::store::rollups::rebuild(&db.store)
            .await
            .unwrap();
        rebuilds += 1;
    }
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.sales + report.sessions, 40_000);
    assert!(rebuilds >= 2, "only {rebuilds} rebuilds overlapped the run");
    eprintln!("{rebuilds} rebuilds during the run");
    assert_exactly(&db.store, 13, 40_000).await;
    db.drop().await;
}
