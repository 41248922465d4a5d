//! The pipeline against tansu, an independent Kafka-compatible broker running
//! as a separate process with durable SQLite storage.

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
use salespulse::bus::{self, EventProducer};
use salespulse::pipeline::{self, IngestSettings, IngestStats};
use salespulse::services;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_against_an_out_of_process_broker() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start(dir.path());
    let db = TestDb::new("tansu").await;
    let mut cfg = test_config(&db.url, Some(&tansu.brokers()));
    cfg.partitions = 3;
    // Topics are created through the admin API (tansu does not auto-create).
    let opts = run_options(4_000, 61);
    let report = services::run(&cfg, opts).await.unwrap();
    assert_eq!(report.produced, 4_000);
    assert_eq!(report.sales + report.sessions, 4_000);
    assert_exactly(&db.store, 61, 4_000).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut tansu = Tansu::start(dir.path());
    let brokers = tansu.brokers();
    let db = TestDb::new("tansukill").await;
    let cfg = test_config(&db.url, Some(&brokers));
    bus::ensure_topics(
        &brokers,
        &[(cfg.topic.as_str(), 3), (cfg.dlq_topic.as_str(), 3)],
        1,
    )
    .await
    .unwrap();

    let settings = IngestSettings::from_config(&cfg, &brokers);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(IngestStats::default());
    let workers = pipeline::spawn_workers(1, &settings, &db.store, &stop, &stats).unwrap();

    // Produce at a steady rate on a thread while the broker dies and returns.
    let n = 6_000;
    let producer = Arc::new(EventProducer::new(&producer_config(&brokers), &cfg.topic).unwrap());
    let p = Arc::clone(&producer);
    let producing = tokio::task::spawn_blocking(move || {
        let mut g = sim_generator(71);
        pipeline::produce_loop(
            &mut g,
            &p,
            Some(n),
            Some(2_000.0),
            &AtomicBool::new(false),
            None,
        )
    });
    wait_until(
        Duration::from_secs(30),
        "some ingest before the crash",
        || async { stored_total(&db.store, &cfg.group_id, &cfg.topic).await > 500 },
    )
    .await;
    tansu.kill(); // SIGKILL, mid-stream
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    tansu.restart();
    let produced = producing
        .await
        .unwrap()
        .expect("every event delivered despite the crash");
    assert_eq!(produced, n);
    let targets = producer.stats().delivered_end_offsets();
    drain_and_stop(&db.store, &cfg, &targets, &stop, workers).await;

    assert_eq!(stats.offsets_skipped.load(Ordering::Relaxed), 0);
    assert_exactly(&db.store, 71, n).await;
    db.drop().await;
}

/// Without a consumer group (`ingest_partitions = "0,1"`, `"1,2"`): each
/// worker reads its own partitions from the offsets stored in PostgreSQL,
/// the group coordinator is not involved, and two workers given the same
/// partition still store each record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_without_a_group_read_their_partitions_even_overlapping() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start(dir.path());
    let brokers = tansu.brokers();
    let db = TestDb::new("tansustatic").await;
    let cfg = test_config(&db.url, Some(&brokers));
    bus::ensure_topics(
        &brokers,
        &[(cfg.topic.as_str(), 3), (cfg.dlq_topic.as_str(), 3)],
        1,
    )
    .await
    .unwrap();
    let n = 6_000;
    let targets = produce(&brokers, &cfg.topic, 83, n);
    assert_eq!(targets.len(), 3, "{targets:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(IngestStats::default());
    let mut workers = Vec::new();
    for parts in ["0,1", "1,2"] {
        let mut c = cfg.clone();
        c.ingest_partitions = parts.into();
        c.check().unwrap();
        let settings = IngestSettings::from_config(&c, &brokers);
        assert!(matches!(
            settings.assignment,
            bus::Assignment::Static(Some(_))
        ));
        workers.extend(pipeline::spawn_workers(1, &settings, &db.store, &stop, &stats).unwrap());
    }
    drain_and_stop(&db.store, &cfg, &targets, &stop, workers).await;
    assert_eq!(stats.offsets_skipped.load(Ordering::Relaxed), 0);
    // Partition 1 was read by both (no group would have given it to two).
    let shared = targets
        .iter()
        .find(|(p, _)| *p == 1)
        .map_or(0, |(_, end)| *end as u64);
    assert!(shared > 0, "{targets:?}");
    let consumed = stats.consumed.load(Ordering::Relaxed);
    assert!(consumed >= n + shared, "consumed {consumed}, produced {n}");
    assert_exactly(&db.store, 83, n).await;
    // A bad list is a configuration error that says what is expected.
    let mut bad = cfg.clone();
    bad.ingest_partitions = "0,x".into();
    let err = bad.check().unwrap_err().to_string();
    assert!(err.contains("group, all, or partitions"), "{err}");
    db.drop().await;
}
