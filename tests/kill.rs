//! Crash safety: `salespulse ingest` as a child process, SIGKILLed at random
//! points of a 60k-event run, restarted each time. Afterwards every event is
//! stored exactly once and every rollup equals its recomputation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use salespulse::bench::chaos::ChaosOptions;

const EVENTS: u64 = 60_000;
const MIN_KILLS: usize = 5;

fn spawn_ingest(brokers: &str, db_url: &str, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_salespulse"))
        .arg("ingest")
        .env("KAFKA_BROKERS", brokers)
        .env("DATABASE_URL", db_url)
        .env("SALESPULSE_BATCH_SIZE", "1000")
        .env("SALESPULSE_BATCH_TIMEOUT_MS", "100")
        .env("SALESPULSE_KAFKA_SESSION_TIMEOUT_MS", "2000")
        .env("RUST_LOG", "warn")
        .env_remove("SALESPULSE_CONFIG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn salespulse ingest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_ingest_neither_loses_nor_double_counts() {
    let db = TestDb::new("kill").await;
    let (broker, cfg) = mock_broker(&db.url, 6);
    let brokers = broker.bootstrap_servers().to_owned();
    let seed = 77;
    let targets = produce(&brokers, &cfg.topic, seed, EVENTS);
    let total: i64 = targets.iter().map(|t| t.1).sum();
    assert_eq!(total, EVENTS as i64);

    let rng_seed: u64 = rand::random();
    eprintln!("kill schedule seed: {rng_seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(rng_seed);
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("ingest.log");
    let mut kills_mid_run = 0;
    let mut rounds = 0;
    while kills_mid_run < MIN_KILLS {
        rounds += 1;
        assert!(rounds < 30, "could not land {MIN_KILLS} kills mid-run");
        let before = stored_total(&db.store, &cfg.group_id, &cfg.topic).await;
        let mut child = spawn_ingest(&brokers, &db.url, &log);
        // Wait for this process to commit something, then kill it at a random
        // moment (mid-batch, mid-transaction, mid-commit: wherever it is).
        let deadline = Instant::now() + Duration::from_secs(60);
        while stored_total(&db.store, &cfg.group_id, &cfg.topic).await == before {
            assert!(
                Instant::now() < deadline,
                "ingest child made no progress; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "ingest child exited; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..250))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let after = stored_total(&db.store, &cfg.group_id, &cfg.topic).await;
        if after < total {
            kills_mid_run += 1;
        }
        eprintln!("kill {rounds}: committed {after}/{total}");
    }

    // A last worker finishes the job.
    let mut child = spawn_ingest(&brokers, &db.url, &log);
    salespulse::pipeline::wait_for_offsets(
        &db.store,
        &cfg.group_id,
        &cfg.topic,
        &targets,
        Duration::from_secs(120),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    child.kill().unwrap();
    child.wait().unwrap();

    assert!(kills_mid_run >= MIN_KILLS);
    assert_exactly(&db.store, seed, EVENTS).await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !log_text.contains("offsets skipped"),
        "no record may be skipped: {log_text}"
    );
    db.drop().await;
}

/// Runs the shipped fault suite with `opts` over a random seed, against this
/// build's `salespulse` and tansu, logging each fault and its recovery to
/// stderr (a failure shows how far it got), and returns its report.
async fn run_chaos(what: &str, opts: ChaosOptions) -> salespulse::bench::chaos::ChaosReport {
    let seed: u64 = rand::random();
    eprintln!("{what} seed: {seed}");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "warn,salespulse::bench::chaos=info",
        ))
        .with_writer(std::io::stderr)
        .try_init();
    let report = salespulse::bench::chaos::run(&ChaosOptions {
        seed,
        salespulse: Some(env!("CARGO_BIN_EXE_salespulse").into()),
        tansu: Some(tansu_bin()),
        ..opts
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{report}");
    report
}

/// The shipped fault suite (`salespulse chaos`), shortened: ingest
/// SIGKILLed, PostgreSQL restarted fast and immediate, the broker SIGKILLed,
/// Redis stopped while views are served, poison records mixed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_suite_loses_doubles_and_miscomputes_nothing() {
    let report = run_chaos(
        "chaos",
        ChaosOptions {
            rate: 800.0,
            poison_every: 100,
            ingest_kills: 8,
            postgres_restarts: 2,
            broker_restarts: 2,
            redis_restarts: 1,
            outages: 0,
            partitions: 3,
            // The group path under kills; the full run (no group) is the
            // command's.
            consumer_group: true,
            recovery_limit: Duration::from_secs(60),
            // Below nextest's limit for this binary, so that a stuck run ends
            // with the phase and the services' logs rather than a kill.
            time_limit: Some(Duration::from_secs(330)),
            ..ChaosOptions::default()
        },
    )
    .await;
    assert!(report.passed(), "{report}");
    assert_eq!(report.faults(), 13, "{report}");
    assert!(report.produced_poison >= 5, "{report}");
    assert_eq!(report.dead_lettered, report.produced_poison, "{report}");
    assert!(report.answers_checked > 0);
}

/// Minutes, not seconds: PostgreSQL down for 150 s and the broker down for
/// 150 s, one after the other in either order (far past the retry budget
/// ingest once had). Ingest stays up, logs
/// itself degraded, and resumes on its own; nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_outages_are_ridden_out_and_reported() {
    let report = run_chaos(
        "outage",
        ChaosOptions {
            rate: 300.0,
            poison_every: 100,
            ingest_kills: 0,
            postgres_restarts: 0,
            broker_restarts: 0,
            redis_restarts: 0,
            outages: 1,
            outage: Duration::from_secs(150),
            partitions: 3,
            consumer_group: true,
            recovery_limit: Duration::from_secs(60),
            time_limit: Some(Duration::from_secs(560)),
            ..ChaosOptions::default()
        },
    )
    .await;
    assert!(report.passed(), "{report}");
    assert_eq!(report.faults(), 2, "{report}");
    assert_eq!(report.outages_unreported, 0, "{report}");
    assert!(report.produced_valid > 10_000, "{report}");
    assert_eq!(report.dead_lettered, report.produced_poison, "{report}");
}
