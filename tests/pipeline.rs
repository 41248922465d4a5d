//! The ingest spine against a real PostgreSQL and the in-process mock
//! Kafka cluster (a real Kafka-protocol broker on loopback TCP).

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
use salespulse::store::Batch;

fn producer(brokers: &str, topic: &str) -> EventProducer {
    EventProducer::new(&producer_config(brokers), topic).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ingests_everything_exactly_once_with_exact_rollups() {
    let db = TestDb::new("run").await;
    let cfg = test_config(&db.url, None); // embedded mock broker
    let opts = run_options(20_000, 11);
    let report = pipeline::run(&cfg, opts).await.unwrap();
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
    let targets = produce(&brokers, &cfg.topic, 41, 5_000);

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
    locker.rollback().await.unwrap();
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
