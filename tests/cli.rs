//! The `salespulse` binary end to end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]
// Signals to the child processes under test, and the effective uid.
#![allow(unsafe_code)]

mod common;

use std::process::{Command, Output};

use common::*;
use salespulse::event::Event;

fn salespulse(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_salespulse"));
    c.args(args)
        .env_remove("KAFKA_BROKERS")
        .env_remove("DATABASE_URL")
        .env_remove("SALESPULSE_CONFIG")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run salespulse")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn generate_is_deterministic_and_valid_in_both_formats() {
    let args = [
        "generate",
        "--count",
        "300",
        "--seed",
        "3",
        "--start",
        "2026-01-01T00:00:00Z",
    ];
    let a = salespulse(&args, &[]);
    let b = salespulse(&args, &[]);
    assert!(a.status.success(), "{}", text(&a));
    assert_eq!(a.stdout, b.stdout);
    let now = chrono::Utc::now();
    let lines: Vec<&[u8]> = a
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 300);
    for l in lines {
        assert_eq!(Event::decode(l, now).map(|_| ()), Ok(()));
    }
    let csv = salespulse(&["generate", "--count", "50", "--format", "csv"], &[]);
    assert!(csv.status.success());
    let out = String::from_utf8(csv.stdout).unwrap();
    let mut rows = out.lines();
    assert!(rows
        .next()
        .unwrap()
        .starts_with("type,transaction_id,occurred_at"));
    assert_eq!(rows.count(), 50);
    let bad = salespulse(&["generate", "--count", "5", "--format", "xml"], &[]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("xml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_events_exits_after_committing_them_all() {
    let db = TestDb::new("clirun").await;
    let out = tokio::task::spawn_blocking({
        let url = db.url.clone();
        move || {
            salespulse(
                &["run", "--events", "3000", "--seed", "8"],
                &[("DATABASE_URL", &url)],
            )
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("produced 3000 events and committed them all"),
        "{stdout}"
    );
    assert!(stdout.contains("events/s"));
    let rows = count(
        &db.store,
        "SELECT (SELECT count(*) FROM transactions) + (SELECT count(*) FROM sessions)",
    )
    .await;
    assert_eq!(rows, 3000);
    assert_consistent(&db.store).await;
    db.drop().await;
}

#[test]
fn replay_refuses_the_generator_options_it_would_ignore() {
    for extra in [
        ["--seed", "7"],
        ["--scenario", "scripts/generator/flash_sale.rhai"],
        ["--generator-script", "scripts/generator/default.rhai"],
    ] {
        let mut args = vec!["run", "--replay", "events.ndjson"];
        args.extend(extra);
        let o = salespulse(&args, &[]);
        assert!(!o.status.success(), "{extra:?}");
        let t = text(&o);
        assert!(t.contains("cannot be used with"), "{extra:?}: {t}");
    }
}

#[test]
fn bad_configuration_is_reported_clearly_and_secrets_stay_hidden() {
    let o = salespulse(&["doctor"], &[("SALESPULSE_PARTITIONS", "many")]);
    assert!(!o.status.success());
    assert!(text(&o).contains("SALESPULSE_PARTITIONS"), "{}", text(&o));

    let port = free_port();
    let url = format!("postgres://alice:supersecret@127.0.0.1:{port}/x");
    let o = salespulse(&["run", "--events", "10"], &[("DATABASE_URL", &url)]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("alice:***@127.0.0.1"), "{t}");
    assert!(!t.contains("supersecret"), "password leaked: {t}");

    let o = salespulse(&["ingest"], &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("KAFKA_BROKERS"), "{}", text(&o));
}

#[test]
fn doctor_names_what_is_broken_and_how_to_fix_it() {
    let dead = free_port();
    let o = salespulse(
        &["doctor"],
        &[
            ("KAFKA_BROKERS", &format!("127.0.0.1:{dead}")),
            ("DATABASE_URL", &pg_server_url()),
            ("REDIS_URL", &redis_url()),
        ],
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("[FAIL] kafka"), "{t}");
    assert!(t.contains("fix:"), "{t}");
    assert!(t.contains("[ok  ] postgres"), "{t}");
    assert!(t.contains("[ok  ] redis"), "{t}");
}

#[test]
fn embedded_defaults_start_a_private_postgres_cluster() {
    // No DATABASE_URL, no KAFKA_BROKERS: the mock broker and a private
    // PostgreSQL cluster made with initdb in a fresh data directory.
    let top = tempfile::tempdir().unwrap();
    // A space in the path, as in macOS's "Application Support".
    let dir_path = top.path().join("Application Support");
    std::fs::create_dir_all(&dir_path).unwrap();
    #[cfg(unix)]
    {
        // As root the cluster runs as the postgres user, who must reach it.
        use std::os::unix::fs::PermissionsExt;
        for d in [top.path(), dir_path.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    struct D(std::path::PathBuf);
    impl D {
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    let dir = D(dir_path);
    let port = free_port().to_string();
    let data = dir.path().to_string_lossy().into_owned();
    let env = [
        ("SALESPULSE_DATA_DIR", data.as_str()),
        ("SALESPULSE_PG_PORT", port.as_str()),
    ];
    let o = salespulse(&["run", "--events", "2000"], &env);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("produced 2000 events and committed them all"),
        "{t}"
    );
    assert!(dir.path().join("postgres/PG_VERSION").is_file());
    // A second run reuses the running cluster and adds to it. Its embedded
    // broker is new and empty: offsets stored by the first run must not make
    // it skip or stop early.
    let o = salespulse(&["run", "--events", "1000"], &env);
    assert!(o.status.success(), "{}", text(&o));
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Private: no password, no entry — over TCP as any role, or over the
    // socket; the password is in a file only the user can read.
    for role in ["salespulse", "postgres"] {
        let open = format!("postgres://{role}@127.0.0.1:{port}/salespulse");
        let err = rt
            .block_on(salespulse::store::Store::connect(
                &open,
                1,
                std::time::Duration::from_secs(10),
            ))
            .err()
            .unwrap_or_else(|| panic!("{role} got in without a password"));
        assert!(!err.to_string().contains("refused"), "{role}: {err}");
    }
    let pwfile = dir.path().join("postgres.password");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pwfile).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{pwfile:?} is {mode:o}");
        let data_mode = std::fs::metadata(dir.path().join("postgres"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(data_mode & 0o077, 0, "the cluster folder is {data_mode:o}");
        // Another local user (as root we can be one): neither the socket
        // nor TCP without the password.
        if unsafe { libc::geteuid() } == 0 {
            let sock = dir.path().join("postgres").to_string_lossy().into_owned();
            for host in [sock.as_str(), "127.0.0.1"] {
                let o = Command::new("runuser")
                    .args(["-u", "nobody", "--", "psql", "-w", "-h", host, "-p", &port])
                    .args(["-U", "salespulse", "-d", "salespulse", "-c", "select 1"])
                    .output()
                    .unwrap();
                assert!(!o.status.success(), "nobody connected via {host}");
            }
        }
    }
    let url = rt
        .block_on(salespulse::store::EmbeddedPostgres::ensure(
            Some(dir.path()),
            port.parse().unwrap(),
        ))
        .unwrap()
        .url;
    let pw = std::fs::read_to_string(&pwfile).unwrap();
    assert!(url.contains(pw.trim()));
    let rows: i64 = rt.block_on(async {
        let store = salespulse::store::Store::connect(&url, 1, std::time::Duration::from_secs(10))
            .await
            .unwrap();
        sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM transactions) + (SELECT count(*) FROM sessions)",
        )
        .fetch_one(store.pool())
        .await
        .unwrap()
    });
    assert_eq!(rows, 3_000, "both runs' events are all stored");
    let pg = salespulse::store::EmbeddedPostgres {
        url: String::new(),
        data_dir: dir.path().join("postgres"),
        port: 0,
    };
    pg.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_flushes_the_producer_and_commits_the_last_batch() {
    let db = TestDb::new("ctrlc").await;
    let child = Command::new(env!("CARGO_BIN_EXE_salespulse"))
        .args(["run", "--rate", "3000", "--seed", "4"])
        .env_remove("KAFKA_BROKERS")
        .env_remove("SALESPULSE_CONFIG")
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        std::time::Duration::from_secs(60),
        "rows to land",
        || async { count(&db.store, "SELECT count(*) FROM sessions").await > 1_000 },
    )
    .await;
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    // "produced N events and committed them all": N must be what is stored.
    let produced: i64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {stdout:?}"));
    let rows = count(
        &db.store,
        "SELECT (SELECT count(*) FROM transactions) + (SELECT count(*) FROM sessions)",
    )
    .await;
    assert_eq!(rows, produced, "{stdout}");
    assert_consistent(&db.store).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_broker_serves_other_processes_on_a_fixed_port() {
    let db = TestDb::new("brokercmd").await;
    let port = free_port().to_string();
    let mut broker = Command::new(env!("CARGO_BIN_EXE_salespulse"))
        .args(["broker", "--port", &port])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let brokers = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while salespulse::bus::ping(&brokers, std::time::Duration::from_secs(1)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "broker did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A separate ingest process and a separate producer process.
    let mut ingest = Command::new(env!("CARGO_BIN_EXE_salespulse"))
        .arg("ingest")
        .env("KAFKA_BROKERS", &brokers)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = db.url.clone();
    let b = brokers.clone();
    let out = tokio::task::spawn_blocking(move || {
        salespulse(
            &["run", "--events", "4000", "--seed", "6"],
            &[("KAFKA_BROKERS", &b), ("DATABASE_URL", &url)],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rows = count(
        &db.store,
        "SELECT (SELECT count(*) FROM transactions) + (SELECT count(*) FROM sessions)",
    )
    .await;
    assert_eq!(rows, 4_000);
    assert_consistent(&db.store).await;
    // SAFETY: plain signals to our own children.
    unsafe { libc::kill(ingest.id() as i32, libc::SIGTERM) };
    assert!(
        ingest.wait().unwrap().success(),
        "ingest exits cleanly on SIGTERM"
    );
    broker.kill().unwrap();
    broker.wait().unwrap();
    db.drop().await;
}

fn sales(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("an event per line"))
        .filter(|e| e["type"] == "sale")
        .collect()
}

/// `generate` and `run` follow `--generator-script` (a shop of one's own,
/// merged over the built-in one) and `--scenario`; a broken script, a
/// scenario given as the shop, and a scenario naming what the shop lacks
/// are refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_scripts_and_scenarios_drive_generate_and_run() {
    let dir = std::env::temp_dir().join(format!("sp_cli_scripts_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shop = dir.join("garden_shop.rhai");
    std::fs::write(
        &shop,
        r#"// A shop that sells one thing.
#{ categories: [#{ name: "Garden", weight: 1.0, products: 12, median_price: 30.0,
                   price_sigma: 0.3, items: ["Rake", "Hose"] }] }
"#,
    )
    .unwrap();
    let shop_arg = shop.to_str().unwrap();
    let scenario = |f: &str| format!("{}/scripts/generator/{f}", env!("CARGO_MANIFEST_DIR"));

    let o = salespulse(
        &[
            "generate",
            "--count",
            "2000",
            "--seed",
            "3",
            "--generator-script",
            shop_arg,
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let s = sales(&o);
    assert!(s.len() > 100, "{} sales", s.len());
    assert!(s.iter().all(|e| e["category"] == "Garden"), "{:?}", s[0]);

    // --days and --stats: what the stream says about the shop's customers,
    // checked against the events themselves.
    let days = [
        "generate",
        "--days",
        "2",
        "--seed",
        "3",
        "--start",
        "2026-01-06T00:00:00Z",
    ];
    let events = salespulse(&days, &[]);
    assert!(events.status.success(), "{}", text(&events));
    let all: Vec<serde_json::Value> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let time = |e: &serde_json::Value| {
        e.get("started_at")
            .or(e.get("occurred_at"))
            .and_then(|t| t.as_str())
            .unwrap()
            .to_owned()
    };
    assert!(all.iter().all(|e| time(e).as_str() < "2026-01-08T00:00"));
    assert!(all.iter().any(|e| time(e).as_str() > "2026-01-07T23:00"));
    let checkouts: std::collections::HashSet<&str> = all
        .iter()
        .filter(|e| e.get("transaction_id").is_some())
        .map(|e| e["session_id"].as_str().unwrap())
        .collect();
    let mut stats_args = days.to_vec();
    stats_args.extend(["--stats", "--json"]);
    let st = salespulse(&stats_args, &[]);
    assert!(st.status.success(), "{}", text(&st));
    let r: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(r["orders"].as_u64().unwrap(), checkouts.len() as u64, "{r}");
    let one = r["one_order_share"].as_f64().unwrap();
    assert!((0.8..1.0).contains(&one), "{r}");
    assert!(r["lifecycle"]["existing"].as_u64().unwrap() > 0, "{r}");
    let st = salespulse(&["generate", "--days", "1", "--stats"], &[]);
    assert!(
        text(&st).contains("new-customer share of daily orders"),
        "{}",
        text(&st)
    );
    let bad = salespulse(&["generate", "--days=0"], &[]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("--days"), "{}", text(&bad));

    // The payment outage: PayPal fails 90 % of the time for 30 minutes.
    let args = [
        "generate",
        "--count",
        "6000",
        "--seed",
        "3",
        "--start",
        "2026-01-06T12:00:00Z",
    ];
    let paypal_failed = |o: &Output| {
        let s = sales(o);
        let in_window: Vec<_> = s
            .iter()
            .filter(|e| {
                e["payment_method"] == "paypal"
                    && e["occurred_at"].as_str().unwrap() < "2026-01-06T12:30"
            })
            .collect();
        assert!(in_window.len() >= 50, "{} paypal sales", in_window.len());
        in_window.iter().filter(|e| e["status"] == "failed").count() as f64 / in_window.len() as f64
    };
    let base = salespulse(&args, &[]);
    assert!(base.status.success(), "{}", text(&base));
    let outage_file = scenario("payment_outage.rhai");
    let mut with: Vec<&str> = args.to_vec();
    with.extend(["--scenario", &outage_file]);
    let outage = salespulse(&with, &[]);
    assert!(outage.status.success(), "{}", text(&outage));
    let (b, o) = (paypal_failed(&base), paypal_failed(&outage));
    assert!(b < 0.2, "failed share without the outage {b}");
    assert!(o > 0.75, "failed share in the outage {o}");

    // Errors name the file and line, or what is wrong.
    let bad = dir.join("bad.rhai");
    std::fs::write(&bad, "// oops\nlet x = ;\n").unwrap();
    let o = salespulse(
        &[
            "generate",
            "--count",
            "5",
            "--generator-script",
            bad.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("bad.rhai:2:"), "{}", text(&o));
    let o = salespulse(
        &[
            "generate",
            "--count",
            "5",
            "--generator-script",
            &outage_file,
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("--scenario"), "{}", text(&o));
    let flash = scenario("flash_sale.rhai");
    let o = salespulse(
        &[
            "generate",
            "--count",
            "5",
            "--generator-script",
            shop_arg,
            "--scenario",
            &flash,
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("Electronics"), "{}", text(&o));

    // The headless pipeline with the script: every stored sale is Garden.
    let db = TestDb::new("cligenscript").await;
    let out = tokio::task::spawn_blocking({
        let url = db.url.clone();
        let shop = shop_arg.to_owned();
        move || {
            salespulse(
                &[
                    "run",
                    "--events",
                    "2000",
                    "--seed",
                    "4",
                    "--generator-script",
                    &shop,
                ],
                &[("DATABASE_URL", &url)],
            )
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let other = count(
        &db.store,
        "SELECT count(*) FROM transactions WHERE category <> 'Garden'",
    )
    .await;
    let garden = count(
        &db.store,
        "SELECT count(*) FROM transactions WHERE category = 'Garden'",
    )
    .await;
    assert_eq!(other, 0);
    assert!(garden > 100, "{garden}");
    assert_consistent(&db.store).await;
    db.drop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_stops_only_for_configuration_errors_and_waits_out_a_down_database() {
    // A schema from a newer salespulse: stop, and say what to do.
    let db = TestDb::new("newer").await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from the future', true, '\\x00', 0)",
    )
    .execute(db.store.pool())
    .await
    .unwrap();
    let url = db.url.clone();
    let o = tokio::task::spawn_blocking(move || {
        salespulse(
            &["ingest"],
            &[("DATABASE_URL", &url), ("KAFKA_BROKERS", "127.0.0.1:1")],
        )
    })
    .await
    .unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("schema version 9999, newer than this salespulse knows"),
        "{t}"
    );
    assert!(
        !t.contains("panicked") && !t.contains("backtrace"),
        "reads cleanly: {t}"
    );
    db.drop().await;

    // A database that is not there (yet): wait, retrying, until stopped.
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_salespulse"))
        .args(["ingest"])
        .env_remove("SALESPULSE_CONFIG")
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        )
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let pid = child.id() as i32;
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let asked = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let t = text(&out);
    assert!(asked.elapsed() < std::time::Duration::from_secs(2), "{t}");
    assert!(out.status.success(), "still waiting when stopped: {t}");
    assert!(t.contains("waiting for the services"), "{t}");
}
