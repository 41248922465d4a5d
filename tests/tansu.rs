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
    // The records come once both have taken their partitions (from the
    // stored offsets, none yet): had one committed partition 1 before the
    // other started, the other would rightly begin past it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let targets = produce(&brokers, &cfg.topic, 83, n);
    assert_eq!(targets.len(), 3, "{targets:?}");
    // Partition 1 was read by both (no group would have given it to two).
    let shared = targets
        .iter()
        .find(|(p, _)| *p == 1)
        .map_or(0, |(_, end)| *end as u64);
    assert!(shared > 0, "{targets:?}");
    // Stop only once both have read it to its end: the other's commit
    // alone would let a stop catch one of them half way.
    let read = Arc::clone(&stats);
    wait_until(
        Duration::from_secs(60),
        "both readers of partition 1",
        || {
            let read = Arc::clone(&read);
            async move { read.consumed.load(Ordering::Relaxed) >= n + shared }
        },
    )
    .await;
    drain_and_stop(&db.store, &cfg, &targets, &stop, workers).await;
    assert_eq!(stats.offsets_skipped.load(Ordering::Relaxed), 0);
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

/// benches/python-peer/run, small: both sides on one tansu broker store
/// every event they were given (the script checks the counts in the
/// databases), and the ratio printed is theirs.
#[test]
fn the_python_peer_bench_runs_both_sides_on_one_broker() {
    let out = std::process::Command::new("benches/python-peer/run")
        .args(["--events", "3000", "--partitions", "3"])
        .env("SALESPULSE_BIN", env!("CARGO_BIN_EXE_salespulse"))
        .env("TANSU_BIN", tansu_bin())
        .env("TEST_DATABASE_URL", pg_server_url())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("1 "))
        .unwrap_or_else(|| panic!("no result row:\n{stdout}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "3000");
    let (py_secs, rs_secs): (f64, f64) = (cols[2].parse().unwrap(), cols[4].parse().unwrap());
    assert!(py_secs > 0.0 && rs_secs > 0.0, "{row}");
    let ratio: f64 = cols[6].trim_end_matches('x').parse().unwrap();
    // From the printed (rounded) seconds: within rounding.
    assert!(
        (ratio - py_secs / rs_secs).abs() < 0.05 * ratio.max(1.0),
        "{row}"
    );
}

/// `bench scale`, small: one and two `salespulse ingest` processes in one
/// group on tansu (SQLite) store every event once, each process reports
/// its share, and the shares add up; the second joins mid-stream, so
/// partitions move between processes while records are in flight.
#[test]
fn the_scale_bench_shares_one_topic_between_ingest_processes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_salespulse"))
        .args([
            "bench",
            "scale",
            "--events",
            "20000",
            "--processes",
            "1,2",
            "--partitions",
            "4",
            "--stagger-ms",
            "400",
            "--json",
        ])
        .env("DATABASE_URL", pg_server_url())
        .env("TANSU_BIN", tansu_bin())
        .env("RUST_BACKTRACE", "0")
        .env_remove("KAFKA_BROKERS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (run, n) in runs.iter().zip([1, 2]) {
        assert_eq!(run["processes"], n);
        assert_eq!(run["lost"], 0);
        assert_eq!(run["doubled"], 0);
        let shares = run["shares"].as_array().unwrap();
        assert_eq!(shares.len(), n);
        let total: u64 = shares
            .iter()
            .map(|s| s["sales"].as_u64().unwrap() + s["sessions"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 20000);
        assert!(run["events_per_sec"].as_f64().unwrap() > 0.0);
    }
}
