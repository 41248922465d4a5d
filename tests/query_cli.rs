//! `salespulse query`, `export`, `cache` and `bench analytics` end to end,
//! and `run --http` serving `/metrics` and `/view` from a live pipeline.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]
// Signals to the child processes under test, and the effective uid.
#![allow(unsafe_code)]

mod common;

use std::collections::HashMap;
use std::process::{Command, Output};

use common::*;
use salespulse::event::Event;

fn salespulse(args: &[&str], db_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_salespulse"))
        .args(args)
        .env_remove("KAFKA_BROKERS")
        .env_remove("SALESPULSE_CONFIG")
        .env("DATABASE_URL", db_url)
        .env("REDIS_URL", redis_url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run salespulse")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn seeded(tag: &str) -> TestDb {
    let db = TestDb::new(tag).await;
    let mut g = sparse_generator(5, 300.0);
    let events: Vec<Event> = (0..6_000).map(|_| g.next_event()).collect();
    write_events(&db.store, events, 2_000, &mut HashMap::new()).await;
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_prints_views_in_three_formats() {
    let db = seeded("cliquery").await;
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(db.store.pool())
        .await
        .unwrap();

    let json = salespulse(&["query", "kpis", "--format", "json"], &db.url);
    assert!(json.status.success(), "{}", text(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v[0]["period"], "current");
    assert_eq!(v[0]["orders"], orders);
    assert!(
        v[1]["orders"].is_null(),
        "no previous period for all data: {v}"
    );

    let csv = salespulse(
        &[
            "query",
            "category-performance",
            "--last",
            "24h",
            "--format",
            "csv",
            "--status",
            "completed",
        ],
        &db.url,
    );
    assert!(csv.status.success(), "{}", text(&csv));
    let out = String::from_utf8(csv.stdout).unwrap();
    assert!(out.starts_with("category,revenue,orders,"), "{out}");
    assert!(out.lines().count() > 2);

    let table = salespulse(
        &[
            "query",
            "revenue_trend",
            "--from",
            "2026-03-02",
            "--to",
            "2026-03-03",
            "--granularity",
            "hour",
        ],
        &db.url,
    );
    assert!(table.status.success(), "{}", text(&table));
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("24 rows"),
        "{}",
        text(&table)
    );

    // Bad input: a clear error naming the parameter, non-zero exit.
    for (args, needle) in [
        (vec!["query", "kpis", "--status", "lost"], "status=\"lost\""),
        (vec!["query", "kpis", "--last", "soon"], "last="),
        (vec!["query", "nope"], "unknown view"),
        (vec!["query", "kpis", "--format", "xml"], "--format"),
    ] {
        let o = salespulse(&args, &db.url);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(text(&o).contains(needle), "{args:?}: {}", text(&o));
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_files_and_cache_clear_empties_the_cache() {
    let db = seeded("cliexport").await;
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("tx.parquet");
    let o = salespulse(
        &["export", "transactions", "--out", pq.to_str().unwrap()],
        &db.url,
    );
    assert!(o.status.success(), "{}", text(&o));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert!(
        text(&o).contains(&format!("wrote {n} rows")),
        "{}",
        text(&o)
    );
    assert!(pq.metadata().unwrap().len() > 0);
    let csv = dir.path().join("mix.csv");
    let o = salespulse(
        &["export", "payment_mix", "--out", csv.to_str().unwrap()],
        &db.url,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read_to_string(&csv)
        .unwrap()
        .starts_with("payment_method,"));
    let o = salespulse(
        &[
            "export",
            "kpis",
            "--out",
            dir.path().join("k.txt").to_str().unwrap(),
        ],
        &db.url,
    );
    assert!(
        !o.status.success() && text(&o).contains("--format"),
        "{}",
        text(&o)
    );

    let o = salespulse(&["cache", "clear"], &db.url);
    assert!(o.status.success(), "{}", text(&o));
    let o = salespulse(&["cache", "status"], &db.url);
    assert!(
        o.status.success() && text(&o).contains("\"error\": null"),
        "{}",
        text(&o)
    );
    db.drop().await;
}

/// `bench ingest`, small, with events as dense as a 2,000 events/s shop's:
/// every event stored once, in time that dense, and a bad rate refused
/// with a message rather than a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ingest_runs_small_at_a_given_event_rate() {
    let db = TestDb::new("cliingest").await;
    let o = salespulse(
        &[
            "bench",
            "ingest",
            "--events",
            "4000",
            "--event-rate",
            "2000",
            "--json",
        ],
        &db.url,
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["events"], 4000, "{v}");
    assert_eq!(
        v["sales"].as_u64().unwrap() + v["sessions"].as_u64().unwrap(),
        4000,
        "{v}"
    );
    assert_eq!(v["event_rate"], 2000.0, "{v}");
    assert!(v["ratio"].as_f64().unwrap() > 0.0, "{v}");
    for bad in ["0", "-5", "NaN"] {
        let rate = format!("--event-rate={bad}");
        let o = salespulse(&["bench", "ingest", "--events", "10", &rate], &db.url);
        let t = text(&o);
        assert!(!o.status.success(), "{bad}: {t}");
        assert!(t.contains("--event-rate must be a positive"), "{bad}: {t}");
        assert!(!t.contains("panicked"), "{bad}: {t}");
    }
    // Beyond the busiest shop the generator allows: said in its terms.
    let o = salespulse(
        &[
            "bench",
            "ingest",
            "--events",
            "10",
            "--event-rate",
            "1000000",
        ],
        &db.url,
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("--event-rate 1000000"), "{t}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_analytics_runs_small() {
    let db = TestDb::new("clibench").await;
    let bench_db = format!("{}_bench", db.name);
    let o = salespulse(
        &[
            "bench",
            "analytics",
            "--transactions",
            "20000",
            "--days",
            "10",
            "--repeat",
            "1",
            "--database",
            &bench_db,
            "--json",
        ],
        &db.url,
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["transactions"], 20000);
    assert_eq!(v["ranges"].as_array().unwrap().len(), 3);
    for r in v["ranges"].as_array().unwrap() {
        assert!(r["cold"]["median_ms"].as_f64().unwrap() > 0.0, "{r}");
    }
    // Dashboard clients over HTTP on a copy of it while ingest runs.
    let o = salespulse(
        &[
            "bench",
            "readers",
            "--transactions",
            "20000",
            "--days",
            "10",
            "--database",
            &bench_db,
            "--clients",
            "6",
            "--secs",
            "4",
            "--warmup",
            "1",
            "--rate",
            "300",
            "--interval-ms",
            "200",
            "--json",
        ],
        &db.url,
    );
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["errors"], 0, "{r}");
    let count = |answer: &str| {
        r["by_answer"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["answer"] == answer)
            .unwrap()["latency"]["count"]
            .as_u64()
            .unwrap()
    };
    // Not computed by the request itself: from Redis, 304 or a shared flight.
    assert!(count("cached") + count("joined") > 20, "{r}");
    assert_eq!(count("cached"), count("hit") + count("not-modified"), "{r}");
    let frames = r["frames"].as_u64().unwrap();
    assert!(frames >= 5, "{r}");
    assert!(r["computations"].as_u64().unwrap() >= 5, "{r}");
    assert_eq!(r["max_computations_per_frame"], 1, "single flight: {r}");
    assert!(r["ingest_commit"]["count"].as_u64().unwrap() > 0, "{r}");
    assert!(r["ingest_achieved"].as_f64().unwrap() > 100.0, "{r}");
    // The loaded data is consistent with the raw rows.
    let url = salespulse::store::with_database(&pg_server_url(), &bench_db).unwrap();
    let store = salespulse::store::Store::connect(&url, 2, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let (a, b): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM transactions), (SELECT sum(orders)::int8 FROM sales_metrics WHERE grain = 'day')",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((a, b), (20_000, 20_000));
    store.pool().close().await;
    salespulse::store::drop_database(&pg_server_url(), &bench_db)
        .await
        .unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_metrics_and_views() {
    let db = TestDb::new("climetrics").await;
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_salespulse"))
        .args([
            "run",
            "--rate",
            "400",
            "--seed",
            "9",
            "--http",
            &format!("127.0.0.1:{port}"),
        ])
        .env_remove("KAFKA_BROKERS")
        .env_remove("SALESPULSE_CONFIG")
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_until(
        std::time::Duration::from_secs(60),
        "events ingested in /metrics",
        || {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let Ok(r) = client.get(format!("{base}/metrics")).send().await else {
                    return false;
                };
                let m = r.text().await.unwrap_or_default();
                m.lines()
                    .find(|l| l.starts_with("salespulse_events_ingested_total{kind=\"session\"}"))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                    .is_some_and(|n| n > 50)
            }
        },
    )
    .await;
    let r = client
        .get(format!("{base}/view/kpis?last=1h"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-salespulse-cache"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v[0]["sessions"].as_i64().unwrap() > 0, "{v}");
    let r = client
        .get(format!("{base}/view/kpis?last=1h&status=lost"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("status"));
    let m = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "salespulse_events_produced_total",
        "salespulse_events_dead_lettered_total",
        "salespulse_consumer_lag{",
        "salespulse_pg_pool_connections{state=\"idle\"}",
        "salespulse_cache_hits_total",
        "salespulse_cache_misses_total{view=\"kpis\"} 1",
        "salespulse_view_seconds_bucket{view=\"kpis\",le=\"+Inf\"} 1",
        "salespulse_view_seconds_count{view=\"kpis\"}",
    ] {
        assert!(m.contains(family), "missing {family} in\n{m}");
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "run exited with {status}");
    db.drop().await;
}

/// `metric run` prints a script's result in each format, equal to SQL over
/// the raw rows; `metric list` shows what each shipped script declares; a
/// broken script, a runaway one and a bad filter fail with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_run_and_list_work_headless() {
    let db = seeded("climetric").await;
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/metrics");
    let script = |f: &str| scripts.join(f).display().to_string();

    // A bar metric as CSV: the refund rate per category.
    let refund = script("refund_rate_by_category.rhai");
    let csv = salespulse(&["metric", "run", &refund, "--format", "csv"], &db.url);
    assert!(csv.status.success(), "{}", text(&csv));
    let out = String::from_utf8(csv.stdout).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("category,refund_rate"));
    let got: HashMap<String, f64> = lines
        .map(|l| {
            let (c, r) = l.rsplit_once(',').unwrap();
            (c.trim_matches('"').to_owned(), r.parse().unwrap())
        })
        .collect();
    let want: Vec<(String, f64)> = sqlx::query_as(
        "SELECT category, avg(CASE WHEN status = 'refunded' THEN 1.0 ELSE 0.0 END)::float8
         FROM transactions GROUP BY category",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    assert_eq!(got.len(), want.len(), "{out}");
    for (c, r) in want {
        assert!((got[&c] - r).abs() < 1e-9, "{c}: {} vs {r}", got[&c]);
    }

    // A KPI as JSON: revenue per session over all data.
    let rps = script("revenue_per_session.rhai");
    let json = salespulse(&["metric", "run", &rps, "--format", "json"], &db.url);
    assert!(json.status.success(), "{}", text(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let got = v[0]["value"].as_f64().unwrap_or_else(|| panic!("{v}"));
    let want: f64 = sqlx::query_scalar(
        "SELECT ((SELECT sum(total_amount) FROM transactions WHERE status = 'completed')
                 / (SELECT count(*) FROM sessions))::float8",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");

    // A table, under a filter, uncached.
    let top = script("top_customers_ltv.rhai");
    let t = salespulse(
        &["metric", "run", &top, "--region", "Europe", "--no-cache"],
        &db.url,
    );
    assert!(t.status.success(), "{}", text(&t));
    assert!(text(&t).contains("lifetime_value"), "{}", text(&t));

    let list = salespulse(&["metric", "list", scripts.to_str().unwrap()], &db.url);
    assert!(list.status.success(), "{}", text(&list));
    let listed = String::from_utf8(list.stdout).unwrap();
    assert_eq!(listed.lines().count(), 6, "{listed}");
    assert!(
        listed.contains("refund_rate_by_category.rhai")
            && listed.contains("Refund rate by category"),
        "{listed}"
    );

    // Errors: where and why.
    let dir = std::env::temp_dir().join(format!("{}_metrics", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad_metric.rhai");
    std::fs::write(
        &bad,
        "const NAME = \"bad\";\nconst KIND = \"kpi\";\ntransactions().select([col(\"nope\").sum()]).item()\n",
    )
    .unwrap();
    let o = salespulse(&["metric", "run", bad.to_str().unwrap()], &db.url);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("bad_metric.rhai:3:") && t.contains("nope"),
        "{t}"
    );
    let spin = dir.join("spin.rhai");
    std::fs::write(
        &spin,
        "const NAME = \"spin\";\nconst KIND = \"kpi\";\nloop {}\n",
    )
    .unwrap();
    let o = salespulse(&["metric", "run", spin.to_str().unwrap()], &db.url);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("spin.rhai:3:") && t.contains("stopped"), "{t}");
    let o = salespulse(&["metric", "run", &rps, "--last", "forever"], &db.url);
    assert!(!o.status.success());
    assert!(text(&o).contains("last"), "{}", text(&o));
    let o = salespulse(&["metric", "run", "no/such/metric.rhai"], &db.url);
    assert!(!o.status.success());
    assert!(text(&o).contains("metric.rhai"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
    db.drop().await;
}

/// A digest of every derived table's rows, in a fixed order.
async fn derived_digest(db: &TestDb) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for r in salespulse::store::rollups::ROLLUPS {
        let sql = format!(
            "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t",
            r.table
        );
        let d: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(db.store.pool())
            .await
            .unwrap();
        out.push((r.table.to_owned(), d));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_verify_finds_drift_and_rebuild_gives_back_what_ingest_wrote() {
    let db = seeded("clirollups").await;
    let pool = db.store.pool();
    let written = derived_digest(&db).await;

    let ok = salespulse(&["rollups", "verify"], &db.url);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("every derived table matches the raw rows"));

    // Recomputed from the raw rows, the tables are exactly what the writer's
    // incremental upserts left, and cached frames go stale.
    let late = "SELECT sum(late_commits)::int8 FROM ingest_watermarks";
    let late_before: i64 = sqlx::query_scalar(late).fetch_one(pool).await.unwrap();
    let partitions: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest_watermarks")
        .fetch_one(pool)
        .await
        .unwrap();
    let rebuilt = salespulse(&["rollups", "rebuild"], &db.url);
    assert!(rebuilt.status.success(), "{}", text(&rebuilt));
    assert!(
        text(&rebuilt).contains("sales_metrics: "),
        "{}",
        text(&rebuilt)
    );
    assert_eq!(derived_digest(&db).await, written);
    let late_after: i64 = sqlx::query_scalar(late).fetch_one(pool).await.unwrap();
    assert!(partitions > 0);
    assert_eq!(late_after, late_before + partitions);

    // Drift: a rollup cell off by one, a customer gone, a product's category
    // changed; and a product renamed, which is not drift (names come only
    // with events).
    let (product, name): (String, String) =
        sqlx::query_as("SELECT product_id, name FROM products ORDER BY product_id LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap();
    for sql in [
        "UPDATE sales_metrics SET orders = orders + 1 WHERE (grain, bucket, category, \
         payment_method, status, region, channel) IN (SELECT grain, bucket, category, \
         payment_method, status, region, channel FROM sales_metrics ORDER BY bucket, category \
         LIMIT 1)",
        "DELETE FROM customers WHERE customer_id = (SELECT min(customer_id) FROM customers)",
        "UPDATE products SET name = 'renamed' WHERE product_id = \
         (SELECT min(product_id) FROM products)",
        "UPDATE products SET category = category || '!' WHERE product_id = \
         (SELECT max(product_id) FROM products)",
    ] {
        let done = sqlx::query(sql).execute(pool).await.unwrap();
        assert_eq!(done.rows_affected(), 1, "{sql}");
    }
    let bad = salespulse(&["rollups", "verify"], &db.url);
    let out = text(&bad);
    assert_eq!(bad.status.code(), Some(1), "{out}");
    assert!(
        out.contains(
            "sales_metrics: 1 recomputed rows missing from the table, 1 table rows not recomputed"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "customers: 1 recomputed rows missing from the table, 0 table rows not recomputed"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "products: 1 recomputed rows missing from the table, 1 table rows not recomputed"
        ),
        "{out}"
    );
    assert!(out.contains("3 derived tables differ"), "{out}");
    assert!(!out.contains("stack backtrace"), "{out}");

    let rebuilt = salespulse(&["rollups", "rebuild"], &db.url);
    assert!(rebuilt.status.success(), "{}", text(&rebuilt));
    let ok = salespulse(&["rollups", "verify"], &db.url);
    assert!(ok.status.success(), "{}", text(&ok));
    let kept: String = sqlx::query_scalar("SELECT name FROM products WHERE product_id = $1")
        .bind(&product)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(kept, "renamed");
    sqlx::query("UPDATE products SET name = $2 WHERE product_id = $1")
        .bind(&product)
        .bind(&name)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(derived_digest(&db).await, written);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_latency_reports_event_to_commit_percentiles() {
    let db = TestDb::new("clilatency").await;
    let o = salespulse(
        &[
            "bench", "latency", "--rates", "150,400", "--secs", "2", "--warmup", "1", "--json",
        ],
        &db.url,
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2, "{v}");
    for (c, rate) in cases.iter().zip([150.0, 400.0]) {
        assert_eq!(c["rate"].as_f64(), Some(rate), "{c}");
        let l = &c["commit"];
        // Events stored after the one-second warm-up: about two seconds'
        // worth (the drain at the end adds none; the rate is a target).
        let n = l["count"].as_u64().unwrap();
        assert!(n as f64 >= rate && n as f64 <= rate * 3.0, "{c}");
        let p = |k: &str| l[k].as_f64().unwrap();
        assert!(p("p50_ms") > 0.0, "{c}");
        assert!(
            p("p50_ms") <= p("p95_ms") && p("p95_ms") <= p("p99_ms") && p("p99_ms") <= p("max_ms"),
            "{c}"
        );
        // To the app's dashboard: every transaction of the span showed (the
        // bench fails otherwise), and well before the 5 s auto-refresh
        // timer would have brought it — the commit notification did.
        let l = &c["visible"];
        let p = |k: &str| l[k].as_f64().unwrap();
        assert!(l["count"].as_u64().unwrap() > 0, "{c}");
        assert!(
            p("p50_ms") > 0.0
                && p("p50_ms") <= p("p95_ms")
                && p("p95_ms") <= p("p99_ms")
                && p("p99_ms") <= p("max_ms"),
            "{c}"
        );
        assert!(p("p99_ms") < 3_000.0, "{c}");
    }
    // The scratch database is gone.
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'salespulse_latency_%'",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(left, 0);
    db.drop().await;
}
