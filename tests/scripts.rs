//! Rhai scripts against a real PostgreSQL and Redis: every shipped metric
//! pinned by a golden result on a fixed seeded dataset, every example of the
//! scripting reference run, caching of metric results, and the sandbox
//! stopping runaway scripts with clear errors.
//!
//! Golden files live in `tests/golden/metrics/`; regenerate them only on
//! purpose: `UPDATE_GOLDEN=1 cargo nextest run --release -E 'binary(scripts)'`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use polars::prelude::{AnyValue, DataFrame};
use salespulse::analytics::metrics::{Metric, MetricKind, BUILTIN_METRICS};
use salespulse::analytics::{Analytics, Filters, LoadMode, TimeRange};
use salespulse::cache::{FrameCache, Outcome};
use salespulse::event::Event;

use common::*;

/// The golden dataset: 12,000 seeded events (~2.8 days from 2026-03-02).
async fn seeded(tag: &str) -> TestDb {
    let db = TestDb::new(tag).await;
    let mut g = sparse_generator(7, 150.0);
    let events: Vec<Event> = (0..12_000).map(|_| g.next_event()).collect();
    let mut offsets = HashMap::new();
    write_events(&db.store, events, 1_500, &mut offsets).await;
    db
}

fn analytics(db: &TestDb, cache: FrameCache) -> Analytics {
    Analytics::new(db.store.pool().clone(), Arc::new(cache), LoadMode::Rows)
}

/// A frame as CSV text with floats to 6 places (sums may differ in the last
/// bits with the order Polars adds in) and times as RFC 3339.
fn golden_text(df: &DataFrame) -> String {
    let mut out = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for r in 0..df.height() {
        let cells: Vec<String> = df
            .columns()
            .iter()
            .map(|c| match c.get(r).unwrap() {
                AnyValue::Null => String::new(),
                AnyValue::Float64(f) => format!("{f:.6}"),
                AnyValue::Float32(f) => format!("{f:.6}"),
                AnyValue::String(s) => s.to_owned(),
                AnyValue::StringOwned(s) => s.to_string(),
                AnyValue::Datetime(us, _, _) | AnyValue::DatetimeOwned(us, _, _) => {
                    chrono::DateTime::from_timestamp_micros(us)
                        .unwrap()
                        .to_rfc3339()
                }
                other => other.to_string(),
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

fn golden_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/metrics")
        .join(file.replace(".rhai", ".csv"))
}

fn check_golden(file: &str, actual: &str) {
    let path = golden_path(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (create it with UPDATE_GOLDEN=1, then review it)",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "{file} differs from {} (UPDATE_GOLDEN=1 rewrites it: only on purpose)",
        path.display()
    );
}

#[test]
fn every_shipped_metric_matches_its_golden_result_cached_or_not() {
    let rt = runtime();
    rt.block_on(async {
        let db = seeded("metrics_golden").await;
        let plain = analytics(&db, FrameCache::disabled());
        let cache = FrameCache::new(&redis_url(), std::time::Duration::from_secs(60)).unwrap();
        let cached = analytics(&db, cache);
        assert_eq!(BUILTIN_METRICS.len(), 6);
        for (file, src) in BUILTIN_METRICS {
            // The shipped copy is the file on disk.
            let on_disk = std::fs::read_to_string(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("scripts/metrics")
                    .join(file),
            )
            .unwrap();
            assert_eq!(on_disk, src, "{file}");
            let m = Arc::new(Metric::compile(file, src).unwrap());
            let df = plain
                .run_script(Arc::clone(&m), &Filters::default(), None)
                .await
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(df.height() > 0, "{file} gave no rows");
            let text = golden_text(&df);
            check_golden(file, &text);
            // Through the cache: computed once, then a hit, same frame.
            let a = cached.metric(&m, &Filters::default()).await.unwrap();
            let b = cached.metric(&m, &Filters::default()).await.unwrap();
            assert_eq!(golden_text(&a.frame), text, "{file} via the cache");
            assert_eq!(b.outcome, Outcome::Hit, "{file}");
            assert_eq!(golden_text(&b.frame), text);
        }
        db.drop().await;
    });
}

#[test]
fn a_kpi_metric_compares_with_the_previous_period_and_follows_the_filters() {
    let rt = runtime();
    rt.block_on(async {
        let db = seeded("metrics_kpi").await;
        let a = analytics(&db, FrameCache::disabled());
        let (file, src) = BUILTIN_METRICS
            .iter()
            .find(|(f, _)| *f == "revenue_per_session.rhai")
            .unwrap();
        let m = Arc::new(Metric::compile(file, src).unwrap());
        assert_eq!(m.info.kind, MetricKind::Kpi);
        let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let day2 = Filters {
            range: TimeRange::Between {
                from: t("2026-03-03T00:00:00Z"),
                to: t("2026-03-04T00:00:00Z"),
            },
            ..Filters::default()
        };
        let r = a.metric(&m, &day2).await.unwrap();
        let day1 = Filters {
            range: TimeRange::Between {
                from: t("2026-03-02T00:00:00Z"),
                to: t("2026-03-03T00:00:00Z"),
            },
            ..Filters::default()
        };
        let first = a.metric(&m, &day1).await.unwrap();
        assert_eq!(r.previous, first.value(), "previous period = the day before");
        // Independently: completed revenue ÷ sessions of day 2.
        let row = sqlx::query_as::<_, (f64, i64)>(
            "SELECT (SELECT coalesce(sum(total_amount), 0)::float8 FROM transactions
                     WHERE status = 'completed' AND occurred_at >= '2026-03-03' AND occurred_at < '2026-03-04'),
                    (SELECT count(*) FROM sessions WHERE started_at >= '2026-03-03' AND started_at < '2026-03-04')",
        )
        .fetch_one(db.store.pool())
        .await
        .unwrap();
        let want = row.0 / row.1 as f64;
        let got = r.value().unwrap();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // A category filter reaches the views the script reads.
        let books = Filters {
            categories: vec!["Books".into()],
            ..day2.clone()
        };
        let b = a.metric(&m, &books).await.unwrap().value().unwrap();
        assert!(b < got, "books only {b} < all {got}");
        db.drop().await;
    });
}

/// Renders a script value as the reference's `// =>` lines write it.
fn render(v: &rhai::Dynamic) -> String {
    use salespulse::script::frames::{Frame, ScriptSeries};
    if let Some(f) = v.read_lock::<Frame>() {
        let df = f.collect().unwrap();
        return format!("shape ({}, {})", df.height(), df.width());
    }
    if let Some(s) = v.read_lock::<ScriptSeries>() {
        return format!("series {}", s.0.len());
    }
    if let Some(a) = v.read_lock::<rhai::Array>() {
        return format!("[{}]", a.iter().map(render).collect::<Vec<_>>().join(", "));
    }
    if let Ok(f) = v.as_float() {
        return format!("{f:?}");
    }
    if v.is_string() {
        return format!("{:?}", v.to_string());
    }
    v.to_string()
}

#[test]
fn every_example_of_the_scripting_reference_runs_and_gives_its_value() {
    let rt = runtime();
    let db = rt.block_on(seeded("metrics_reference"));
    let a = analytics(&db, FrameCache::disabled());
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/README.md"),
    )
    .unwrap();
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in doc.lines() {
        match (&mut cur, line.trim()) {
            (None, "```rhai") => cur = Some(String::new()),
            (Some(_), "```") => blocks.push(cur.take().unwrap()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    assert!(blocks.len() >= 30, "{} examples", blocks.len());
    let mut checked = 0;
    for (i, src) in blocks.iter().enumerate() {
        // Generator examples are behaviour scripts.
        if src.contains("scenario:") || src.contains("sessions_per_hour") {
            salespulse::generator::behaviour::from_source("example.rhai", src)
                .unwrap_or_else(|e| panic!("example {i}:\n{src}\n{e}"));
            continue;
        }
        let expect = src
            .lines()
            .find_map(|l| l.trim().strip_prefix("// => "))
            .map(str::to_owned);
        let v = rt
            .block_on(a.eval_script(&format!("example{i}.rhai"), src, &Filters::default()))
            .unwrap_or_else(|e| panic!("example {i}:\n{src}\n{e}"));
        if let Some(want) = expect {
            assert_eq!(render(&v), want, "example {i}:\n{src}");
            checked += 1;
        }
    }
    assert!(checked >= 27, "{checked} examples with a value");
    rt.block_on(db.drop());
}

#[test]
fn runaway_and_forbidden_scripts_stop_with_clear_errors_and_the_engine_goes_on() {
    let rt = runtime();
    let db = rt.block_on(seeded("metrics_sandbox"));
    let a = analytics(&db, FrameCache::disabled());
    let head = "const NAME = \"x\";\nconst KIND = \"kpi\";\n";
    let cases = [
        // A tight loop meets the operation limit or the clock, whichever
        // is first on this machine ...
        ("loop.rhai", "let n = 0;\nloop { n += 1; }", "stopped", 4),
        // ... a loop of slow calls (few operations) meets the clock.
        (
            "slow.rhai",
            "let n = 0;\nloop { n += transactions().height; }",
            "ran longer than",
            4,
        ),
        (
            "recurse.rhai",
            "fn f(n) { f(n + 1) }\nf(0)",
            "nested deeper than",
            4,
        ),
        (
            "string.rhai",
            "let s = \"x\";\nwhile true { s += s; }",
            "over the limit",
            4,
        ),
        (
            "file.rhai",
            "import \"/etc/passwd\" as p;\n1",
            "cannot load files",
            3,
        ),
        (
            "open.rhai",
            "\nopen_file(\"/etc/passwd\")",
            "Function not found",
            4,
        ),
        (
            "column.rhai",
            "\ntransactions().select([col(\"nope\")]).height",
            "nope",
            4,
        ),
        // sql() reads the script's frames and the raw tables, nothing else:
        // no file, no URL, no other statement.
        (
            "read_csv.rhai",
            "\nsql(\"SELECT * FROM read_csv('SECRET')\").height",
            "table functions are not allowed",
            4,
        ),
        (
            "read_parquet.rhai",
            "\nsql(\"SELECT t.* FROM transactions t JOIN read_parquet('http://127.0.0.1:9/x.parquet') p ON true\").height",
            "table functions are not allowed",
            4,
        ),
        (
            "path.rhai",
            "\nsql(\"SELECT * FROM \\\"SECRET\\\"\").height",
            "unknown table",
            4,
        ),
        (
            "subquery.rhai",
            "\nsql(\"SELECT * FROM transactions WHERE customer_id IN (SELECT * FROM read_ndjson('SECRET'))\").height",
            "table functions are not allowed",
            4,
        ),
        (
            "statement.rhai",
            "\nsql(\"CREATE TABLE x AS SELECT * FROM read_csv('SECRET')\").height",
            "one SELECT query",
            4,
        ),
        (
            "two.rhai",
            "\nsql(\"SELECT 1; SELECT 2\").height",
            "exactly one SELECT query",
            4,
        ),
    ];
    // A file the scripts must not be able to read.
    let secret = std::env::temp_dir().join(format!("{}_secret.csv", db.name));
    std::fs::write(&secret, "token\nhunter2-secret\n").unwrap();
    let secret_path = secret.display().to_string();
    for (file, body, says, line) in cases {
        let body = body.replace("SECRET", &secret_path);
        let src = format!("{head}{body}");
        let m = Arc::new(Metric::compile(file, &src).unwrap());
        let t = std::time::Instant::now();
        let e = rt
            .block_on(a.run_script(m, &Filters::default(), None))
            .expect_err(file);
        let text = e.to_string();
        assert!(text.contains(says), "{file}: {text}");
        assert!(!text.contains("hunter2"), "{file}: {text}");
        assert!(
            text.starts_with(&format!("{file}:{line}")),
            "{file}: {text}"
        );
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "{file}");
    }
    let _ = std::fs::remove_file(&secret);
    // What sql() may do still works: CTEs, joins and subqueries over raw tables.
    let ok = format!(
        "{head}let f = sql(\"WITH big AS (SELECT * FROM transactions WHERE total_amount > 10) \
         SELECT count(*) AS n FROM big JOIN customers c ON big.customer_id = c.customer_id \
         WHERE big.product_id IN (SELECT product_id FROM products)\");\nf.height"
    );
    let m = Arc::new(Metric::compile("ok.rhai", &ok).unwrap());
    rt.block_on(a.run_script(m, &Filters::default(), None))
        .unwrap_or_else(|e| panic!("{e}"));
    // head(n) and LIMIT are honoured on raw tables (pushed into the scan).
    for (body, want) in [
        ("transactions().head(5)", 5),
        ("sql(\"SELECT * FROM transactions LIMIT 3\")", 3),
        ("transactions().select([col(\"customer_id\")]).head(7)", 7),
    ] {
        let src = format!("const NAME = \"x\";\nconst KIND = \"table\";\n{body}");
        let m = Arc::new(Metric::compile("head.rhai", &src).unwrap());
        let df = rt
            .block_on(a.run_script(m, &Filters::default(), None))
            .unwrap_or_else(|e| panic!("{body}: {e}"));
        assert_eq!(df.height(), want, "{body}");
    }
    // Still working.
    let (file, src) = BUILTIN_METRICS[0];
    let m = Arc::new(Metric::compile(file, src).unwrap());
    assert!(rt
        .block_on(a.run_script(m, &Filters::default(), None))
        .is_ok());
    rt.block_on(db.drop());
}

/// Finding 5 of the security review: a script that exhausts memory (a join
/// that explodes) or nests data deep enough to overflow the stack dies
/// alone in its script process, with a clear error; this process and the
/// next script go on.
#[test]
fn memory_and_nesting_bombs_die_in_their_own_process() {
    use salespulse::analytics::script_host::Isolation;
    let rt = runtime();
    let db = rt.block_on(seeded("metrics_bombs"));
    let a = analytics(&db, FrameCache::disabled()).with_isolation(Isolation {
        host: Some(env!("CARGO_BIN_EXE_salespulse").into()),
        memory_mb: 512,
    });
    let head = "const NAME = \"x\";\nconst KIND = \"kpi\";\n";
    let cases = [
        // 60,000 equal keys joined with themselves: 3.6 billion rows.
        (
            "join.rhai",
            "let k = [];\nfor i in 0..60000 { k.push(1); }\nlet f = frame(#{ k: k });\nf.join(f, \"k\").height",
            "MiB of memory",
        ),
        (
            "nest.rhai",
            "let a = [];\nfor i in 0..200000 { a = [a]; }\n1",
            "nested too deep",
        ),
    ];
    for (file, body, says) in cases {
        let m = Arc::new(Metric::compile(file, &format!("{head}{body}")).unwrap());
        let t = std::time::Instant::now();
        let e = rt
            .block_on(a.run_script(m, &Filters::default(), None))
            .expect_err(file);
        let text = e.to_string();
        assert!(text.contains(says), "{file}: {text}");
        assert!(text.starts_with(file), "{file}: {text}");
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "{file}");
    }
    // A result too large to hand back (288 MB of one column) is refused
    // in the child: the parent never holds it.
    let big = Analytics::new(
        db.store.pool().clone(),
        Arc::new(FrameCache::disabled()),
        LoadMode::Rows,
    )
    .with_isolation(Isolation {
        host: Some(env!("CARGO_BIN_EXE_salespulse").into()),
        memory_mb: 4096,
    });
    let src = "const NAME = \"x\";\nconst KIND = \"table\";\nlet k = [];\nfor i in 0..6000 { k.push(1); }\nlet f = frame(#{ k: k });\nf.join(f, \"k\")";
    let m = Arc::new(Metric::compile("big.rhai", src).unwrap());
    let text = rt
        .block_on(big.run_script(m, &Filters::default(), None))
        .expect_err("big.rhai")
        .to_string();
    assert!(text.contains("at most 256 MiB"), "{text}");
    // The parent still works, and so does the next script (over the
    // database, through the parent).
    let (file, src) = BUILTIN_METRICS[0];
    let m = Arc::new(Metric::compile(file, src).unwrap());
    rt.block_on(a.run_script(m, &Filters::default(), None))
        .unwrap_or_else(|e| panic!("{e}"));
    let m = Arc::new(
        Metric::compile(
            "rows.rhai",
            &format!("{head}transactions().height + sql(\"SELECT * FROM products\").height"),
        )
        .unwrap(),
    );
    let df = rt
        .block_on(a.run_script(m, &Filters::default(), None))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(df.height(), 1);
    rt.block_on(db.drop());
}

/// Scripts reach no file or network through Polars because the code is not
/// there: Polars is built without its streaming engine, `object_store` and
/// an HTTP client (checked on the dependency graph the binary is built
/// from for this host — `--target all` would need every platform's crates
/// downloaded, which `--offline` on a fresh machine does not have;
/// `polars-io` is the control that the query finds crates at all).
#[test]
fn polars_is_built_without_cloud_or_http_io() {
    let tree = |krate: &str| {
        let out = std::process::Command::new(env!("CARGO"))
            .args(["tree", "--offline", "--edges", "normal,build"])
            .args([
                "--manifest-path",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ])
            .args(["--invert", krate])
            .output()
            .expect("cargo tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        tree("polars-io").contains("salespulse"),
        "the query finds nothing"
    );
    for krate in ["object_store", "polars-stream"] {
        let found = tree(krate);
        assert!(found.trim().is_empty(), "{krate} is built in:\n{found}");
    }
    // reqwest is the alert webhook's client (salespulse's own dependency,
    // never reachable from a script); no Polars crate may pull it in.
    let found = tree("reqwest");
    assert!(
        !found.contains("polars"),
        "Polars pulls in reqwest:\n{found}"
    );
}

/// Equal frames: names, types, every cell; floats to 1e-9 relative (the
/// database adds in another order than Polars does), NaN and ±inf alike.
fn assert_same_frame(a: &DataFrame, b: &DataFrame, what: &str) {
    assert_eq!(a.schema(), b.schema(), "{what}: columns");
    assert_eq!(a.height(), b.height(), "{what}: rows");
    for (ca, cb) in a.columns().iter().zip(b.columns()) {
        for r in 0..a.height() {
            let (x, y) = (ca.get(r).unwrap(), cb.get(r).unwrap());
            let close = match (&x, &y) {
                (AnyValue::Float64(x), AnyValue::Float64(y)) => {
                    (x.is_nan() && y.is_nan())
                        || x == y
                        || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
                }
                _ => x == y,
            };
            assert!(close, "{what}: {} row {r}: {x} vs {y}\n{a}\n{b}", ca.name());
        }
    }
}

/// Scripts whose frames run in PostgreSQL (`script::pushdown`) give what
/// the same plan gives in Polars over loaded rows: every shipped metric and
/// scripts written to reach each translated construct (nulls, division by
/// zero, medians, distinct counts, byte-wise text order, time parts in
/// UTC, `is_in`, a top-k, `sql()` with HAVING and LIMIT, another table),
/// under no filter and under a range and category filter. A plan whose
/// answer depends on load order (a stable sort over raw rows) must not be
/// pushed, and still agrees.
#[test]
fn frames_pushed_to_postgresql_match_the_same_plans_over_loaded_rows() {
    let rt = runtime();
    rt.block_on(async {
        let db = seeded("metrics_pushdown").await;
        let pushed = analytics(&db, FrameCache::disabled());
        let loaded = analytics(&db, FrameCache::disabled()).with_pushdown(false);
        let written: [(&str, &str, bool); 13] = [
            (
                "aggregates.rhai",
                r#"const NAME = "Pushdown case";
const KIND = "table";
transactions()
    .with_column(when(col("status") == "refunded").then(col("total_amount")).otherwise(()).alias("refunded"))
    .group_by(["category", "region"])
    .agg([
        len().alias("n"),
        col("refunded").count().alias("refunds"),
        col("refunded").sum().alias("refunded_sum"),
        (col("total_amount").sum() / col("quantity").sum()).alias("per_unit"),
        (col("refunded").count() / (col("quantity").sum() - col("quantity").sum())).alias("by_zero"),
        col("unit_price").mean().alias("mean_price"),
        col("unit_price").median().alias("median_price"),
        col("unit_price").std().alias("sd_price"),
        col("customer_id").n_unique().alias("buyers"),
        col("payment_method").min().alias("first_method"),
        col("payment_method").max().alias("last_method"),
        col("occurred_at").max().alias("last_at"),
    ])
    .sort(["category", "region"])"#,
                true,
            ),
            (
                "time_parts.rhai",
                r#"const NAME = "Pushdown case";
const KIND = "table";
transactions()
    .filter(col("payment_method").is_in(["paypal", "credit_card"]) & !(col("status") == "failed"))
    .with_columns([col("occurred_at").weekday().alias("wd"), col("occurred_at").hour().alias("h")])
    .group_by(["wd", "h"])
    .agg([col("total_amount").sum().alias("revenue"), (-col("discount")).abs().max().alias("top_discount")])
    .sort(["revenue", "wd", "h"], [true, false, false])
    .head(20)"#,
                true,
            ),
            (
                "having.rhai",
                r#"const NAME = "Pushdown case";
const KIND = "table";
sql(`SELECT region, channel, count(*) AS orders, sum(total_amount) AS revenue,
            avg(quantity) AS mean_qty, max(category) AS last_category
     FROM transactions WHERE status <> 'failed'
     GROUP BY region, channel HAVING count(*) > 5
     ORDER BY revenue DESC, region, channel LIMIT 7`)"#,
                true,
            ),
            (
                "sessions.rhai",
                r#"const NAME = "Pushdown case";
const KIND = "table";
sessions()
    .group_by(["region", "channel"])
    .agg([len().alias("n"), col("page_views").sum().alias("views"), col("orders").mean().alias("orders_per_session")])
    .sort(["region", "channel"])"#,
                true,
            ),
            (
                "kpi.rhai",
                r#"const NAME = "Pushdown case";
const KIND = "kpi";
let t = transactions(#{ status: "completed" })
    .select([col("total_amount").sum().alias("revenue"), len().alias("n")]);
t.value("revenue", 0) / t.value("n", 0).to_float()"#,
                true,
            ),
            (
                "rollup_shapes.rhai",
                r#"const NAME = "Pushdown case";
const KIND = "table";
transactions()
    .filter(!(col("status") == "failed") | col("payment_method").is_in(["paypal"]))
    .with_columns([
        col("occurred_at").weekday().alias("wd"),
        (col("occurred_at").month().cast("int") * 100 + col("occurred_at").day()).alias("md"),
        when(col("category") == "Books").then(1.5).otherwise(0.5).alias("w"),
    ])
    .group_by(["wd", "md", "region"])
    .agg([
        len().alias("n"),
        col("quantity").sum().alias("units"),
        col("quantity").mean().alias("mean_units"),
        col("total_amount").mean().alias("mean_amount"),
        col("discount").count().alias("discounts"),
        col("w").sum().alias("w_sum"),
        col("w").mean().alias("w_mean"),
        col("category").n_unique().alias("categories"),
        col("channel").max().alias("last_channel"),
        (col("total_amount").sum() / len()).alias("per_order"),
    ])
    .sort(["wd", "md", "region"])"#,
                true,
            ),
            (
                "review_cases.rhai",
                r#"const NAME = "Pushdown case";
const KIND = "table";
transactions()
    .with_column(col("total_amount").alias("rev"))
    .group_by("category")
    .agg([
        len().alias("c2"),
        col("rev").sum().alias("c1"),
        (col("discount") / col("discount")).max().alias("nan_max"),
        (col("unit_price") * 1e17).cast("int").max().alias("big"),
    ])
    .sort("c1", true)
    .head(3)"#,
                true,
            ),
            (
                "hostile_names.rhai",
                r#"const NAME = "Pushdown case";
const KIND = "table";
transactions()
    .filter(col("category") != "O'Brien'); DROP TABLE transactions; --")
    .with_column(col("region").alias("r\"; DROP TABLE customers; --"))
    .group_by(["category", "r\"; DROP TABLE customers; --"])
    .agg([len().alias("c0"), col("total_amount").sum().alias("\\'\"")])
    .sort(["category", "r\"; DROP TABLE customers; --"])"#,
                true,
            ),
            (
                "customer_totals.rhai",
                r#"const NAME = "Pushdown case";
const KIND = "table";
transactions()
    .group_by("customer_id")
    .agg([len().alias("n"), col("quantity").sum().alias("units"), col("session_id").count().alias("rows"),
          col("occurred_at").min().alias("first"), col("occurred_at").max().alias("last")])
    .filter(col("n") >= 2)
    .sort(["units", "customer_id"], [true, false])
    .head(20)"#,
                true,
            ),
            (
                "completed_buyers.rhai",
                r#"const NAME = "Pushdown case";
const KIND = "table";
let buyers = transactions()
    .filter(col("status") == "completed")
    .group_by("customer_id")
    .agg([col("total_amount").sum().alias("spent"), len().alias("orders")]);
let repeat = buyers.filter(col("orders") >= 2).height;
buyers
    .select([len().alias("buyers"), col("spent").sum().alias("spent"), col("orders").max().alias("most")])
    .with_column(lit(repeat).alias("repeat"))"#,
                true,
            ),
            (
                "product_totals.rhai",
                r#"const NAME = "Pushdown case";
const KIND = "table";
transactions()
    .group_by("product_id")
    .agg([len().alias("n"), col("quantity").sum().alias("units"),
          col("occurred_at").min().alias("first"), col("occurred_at").max().alias("last")])
    .sort("product_id")"#,
                true,
            ),
            (
                "wrapping.rhai",
                r#"const NAME = "Pushdown case";
const KIND = "table";
transactions()
    .with_column((col("occurred_at").month() * 100 + col("occurred_at").day()).alias("md"))
    .group_by("md")
    .agg([len().alias("n")])"#,
                false,
            ),
            (
                "load_order.rhai",
                r#"const NAME = "Pushdown case";
const KIND = "table";
transactions().sort("total_amount", true).head(3).select(["transaction_id", "total_amount"])"#,
                false,
            ),
        ];
        let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        // Ranges with partial hours at both edges (rollups answer the
        // whole hours, raw rows the rest), one with region filters (the
        // full rollup, not the lite one).
        let filtered = Filters {
            range: TimeRange::Between {
                from: t("2026-03-03T06:17:00Z"),
                to: t("2026-03-04T12:43:00Z"),
            },
            categories: vec!["Books".into(), "Electronics".into()],
            ..Filters::default()
        };
        let by_region = Filters {
            range: TimeRange::Between {
                from: t("2026-03-02T13:30:00Z"),
                to: t("2026-03-04T08:10:00Z"),
            },
            regions: vec!["Europe".into(), "North America".into()],
            ..Filters::default()
        };
        // What the sales rollups answer: groups and filters on what they
        // keep, counts, sums and means of what they sum.
        let from_rollups = [
            "refund_rate_by_category.rhai",
            "revenue_by_weekday_hour.rhai",
            "rollup_shapes.rhai",
            "having.rhai",
            "kpi.rhai",
            "hostile_names.rhai",
        ];
        // What the per-customer and per-product totals answer over the
        // whole history (no range, no filter).
        let from_totals = [
            "repeat_customer_rate.rhai",
            "customer_totals.rhai",
            "completed_buyers.rhai",
            "product_totals.rhai",
        ];
        let scripts = BUILTIN_METRICS
            .iter()
            .map(|(f, s)| {
                // The five shipped metrics over raw rows are pushed whole
                // (top customers: a stable sort by the table's unique key).
                let raw = !matches!(*f, "revenue_per_session.rhai");
                (*f, *s, raw)
            })
            .chain(written);
        for (file, src, expect_pushed) in scripts {
            let m = Arc::new(Metric::compile(file, src).unwrap_or_else(|e| panic!("{file}: {e}")));
            for filters in [Filters::default(), filtered.clone(), by_region.clone()] {
                let before = pushed.script_reads();
                let a = pushed
                    .run_script(Arc::clone(&m), &filters, None)
                    .await
                    .unwrap_or_else(|e| panic!("{file} pushed: {e}"));
                let after = pushed.script_reads();
                let b = loaded
                    .run_script(Arc::clone(&m), &filters, None)
                    .await
                    .unwrap_or_else(|e| panic!("{file} loaded: {e}"));
                assert!(a.height() > 0, "{file}: no rows");
                assert_same_frame(&a, &b, &format!("{file} under {filters:?}"));
                if expect_pushed && after.pushed == before.pushed {
                    // Say why: the frame's own explanation.
                    let body: Vec<&str> =
                        src.lines().filter(|l| !l.starts_with("const ")).collect();
                    let why = pushed
                        .eval_script(
                            "explain.rhai",
                            &format!("let f = {{ {} }}; f.explain()", body.join("\n")),
                            &filters,
                        )
                        .await
                        .map(|v| v.to_string())
                        .unwrap_or_else(|e| e.to_string());
                    panic!("{file} was not pushed down: {why}");
                }
                if expect_pushed {
                    assert_eq!(after.loads, before.loads, "{file} loaded raw rows");
                    let rollups = after.rollups > before.rollups;
                    let kept = from_rollups.contains(&file)
                        || (filters == Filters::default() && from_totals.contains(&file));
                    assert_eq!(rollups, kept, "{file} from kept aggregates");
                } else {
                    assert_eq!(after.pushed, before.pushed, "{file} must not be pushed");
                }
            }
        }
        // The hostile names went through as names: every table is there.
        for t in ["transactions", "customers", "sessions", "products"] {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {t}")))
                .fetch_one(db.store.pool())
                .await
                .unwrap();
            assert!(n > 0, "{t} is empty");
        }
        let l = loaded.script_reads();
        assert_eq!(l.pushed, 0, "pushdown off pushes nothing");
        assert!(l.loads > 0 && l.rows > 1_000, "{l:?}");
        db.drop().await;
    });
}

/// RFM scores and segments against an independent computation in
/// PostgreSQL: `ntile(5)` over the same customers' completed orders, and
/// the segment rules written again as SQL.
#[test]
fn rfm_scores_and_segments_match_ntile_in_postgresql() {
    let rt = runtime();
    rt.block_on(async {
        let db = seeded("rfm").await;
        let a = analytics(&db, FrameCache::disabled());
        let v = a
            .eval_script(
                "rfm.rhai",
                r#"rfm(transactions(#{ last: "all", status: "completed" }), #{ as_of: "2026-03-05T00:00:00Z" })"#,
                &Filters::default(),
            )
            .await
            .unwrap();
        let df = v
            .try_cast::<salespulse::script::frames::Frame>()
            .unwrap()
            .collect()
            .unwrap();
        let want: Vec<(String, i64, i64, i64, i64, f64, String)> = sqlx::query_as(
            r#"WITH c AS (
                   SELECT customer_id, max(occurred_at) AS last_order, count(*) AS frequency,
                          round(sum(total_amount), 2) AS spent
                   FROM transactions WHERE status = 'completed' GROUP BY customer_id),
               s AS (
                   SELECT customer_id, frequency, last_order,
                          ntile(5) OVER (ORDER BY last_order, customer_id COLLATE "C") AS r,
                          ntile(5) OVER (ORDER BY frequency, customer_id COLLATE "C") AS f,
                          ntile(5) OVER (ORDER BY spent, customer_id COLLATE "C") AS m
                   FROM c)
               SELECT customer_id, frequency, r::int8, f::int8, m::int8,
                      extract(epoch FROM (timestamptz '2026-03-05T00:00:00Z' - last_order))::float8 / 86400,
                      CASE WHEN r >= 4 AND f >= 4 THEN 'Champions'
                           WHEN r >= 3 AND f >= 3 THEN 'Loyal'
                           WHEN r >= 4 AND f = 1 THEN 'New'
                           WHEN r >= 4 THEN 'Promising'
                           WHEN r = 3 THEN 'Need attention'
                           WHEN f >= 3 THEN 'At risk'
                           ELSE 'Hibernating' END
               FROM s ORDER BY customer_id COLLATE "C""#,
        )
        .fetch_all(db.store.pool())
        .await
        .unwrap();
        assert!(want.len() > 100, "{} customers", want.len());
        assert_eq!(df.height(), want.len());
        let text = |c: &str, r: usize| match df.column(c).unwrap().get(r).unwrap() {
            polars::prelude::AnyValue::String(s) => s.to_owned(),
            other => panic!("{c}: {other:?}"),
        };
        let int = |c: &str, r: usize| df.column(c).unwrap().get(r).unwrap().extract::<i64>().unwrap();
        let float = |c: &str, r: usize| df.column(c).unwrap().get(r).unwrap().extract::<f64>().unwrap();
        let mut segments = std::collections::BTreeSet::new();
        for (i, (id, frequency, r, f, m, recency, segment)) in want.iter().enumerate() {
            assert_eq!(&text("customer_id", i), id);
            assert_eq!(int("frequency", i), *frequency, "{id}");
            assert_eq!(
                (int("r_score", i), int("f_score", i), int("m_score", i)),
                (*r, *f, *m),
                "{id}"
            );
            assert!((float("recency_days", i) - recency).abs() < 1e-6, "{id}");
            assert_eq!(&text("segment", i), segment, "{id}");
            assert_eq!(text("rfm", i), format!("{r}{f}{m}"));
            segments.insert(segment.clone());
        }
        assert!(segments.len() >= 4, "{segments:?}");
        db.drop().await;
    });
}

/// A frame a script returned, collected.
fn frame_of(v: rhai::Dynamic) -> DataFrame {
    v.try_cast::<salespulse::script::frames::Frame>()
        .unwrap()
        .collect()
        .unwrap()
}

#[test]
fn forecasts_read_the_hourly_series_postgresql_makes_and_refuse_bad_options() {
    let rt = runtime();
    rt.block_on(async {
        let db = seeded("forecast").await;
        let a = analytics(&db, FrameCache::disabled());
        let hourly = r#"let hourly = transactions(#{ last: "all", status: "completed" })
            .group_by(col("occurred_at").truncate("1h").alias("hour"))
            .agg([col("total_amount").sum().alias("revenue")]);
        "#;
        let run = |src: String| {
            let a = &a;
            async move { a.eval_script("forecast.rhai", &src, &Filters::default()).await }
        };
        let df = frame_of(run(format!("{hourly} forecast(hourly, #{{ horizon: 12, level: [80, 99] }})")).await.unwrap());
        // The history is every hour from the first order's to the last
        // one's, the hours without an order as 0: as generate_series and a
        // left join make it in PostgreSQL.
        let want: Vec<(f64,)> = sqlx::query_as(
            r#"WITH h AS (
                   SELECT date_trunc('hour', occurred_at) AS hour, sum(total_amount)::float8 AS revenue
                   FROM transactions WHERE status = 'completed' GROUP BY 1),
               s AS (SELECT generate_series(min(hour), max(hour), interval '1 hour') AS hour FROM h)
               SELECT coalesce(h.revenue, 0) FROM s LEFT JOIN h USING (hour) ORDER BY s.hour"#,
        )
        .fetch_all(db.store.pool())
        .await
        .unwrap();
        assert!(want.len() > 48, "{} hours", want.len());
        assert_eq!(df.height(), want.len() + 12);
        let revenue = df.column("revenue").unwrap().f64().unwrap();
        for (i, (w,)) in want.iter().enumerate() {
            assert!((revenue.get(i).unwrap() - w).abs() < 1e-6 * w.abs().max(1.0), "hour {i}");
        }
        assert_eq!(revenue.null_count(), 12);
        let lo = df.column("lower_99").unwrap().f64().unwrap();
        let lo80 = df.column("lower_80").unwrap().f64().unwrap();
        let point = df.column("forecast").unwrap().f64().unwrap();
        let hi = df.column("upper_99").unwrap().f64().unwrap();
        for i in want.len()..df.height() {
            let (l, l80, p, h) = (lo.get(i).unwrap(), lo80.get(i).unwrap(), point.get(i).unwrap(), hi.get(i).unwrap());
            assert!(l <= l80 && l80 <= p && p <= h, "step {i}: {l} {l80} {p} {h}");
        }

        // A backtest's baseline is the seasonal-naive forecast: checked
        // here against the series itself.
        let bt = frame_of(run(format!("{hourly} backtest(hourly, #{{ horizon: 6, folds: 2, season: 24 }})")).await.unwrap());
        assert_eq!(bt.height(), 2);
        let ys: Vec<f64> = want.iter().map(|w| w.0).collect();
        let n = ys.len();
        for (k, start) in [n - 12, n - 6].into_iter().enumerate() {
            let naive: f64 = (0..6).map(|i| (ys[start + i] - ys[start + i - 24]).abs()).sum::<f64>() / 6.0;
            let got = bt.column("naive_mae").unwrap().f64().unwrap().get(k).unwrap();
            assert!((got - naive).abs() < 1e-6 * naive.max(1.0), "fold {k}: {got} vs {naive}");
            let rel = bt.column("relative_mae").unwrap().f64().unwrap().get(k).unwrap();
            let mae = bt.column("mae").unwrap().f64().unwrap().get(k).unwrap();
            assert!((rel - mae / naive).abs() < 1e-9);
        }

        let an = frame_of(run(format!("{hourly} anomalies(hourly, #{{ last: 6 }})")).await.unwrap());
        assert_eq!(an.height(), 6);
        assert_eq!(an.column("side").unwrap().dtype(), &polars::prelude::DataType::String);

        // Segments clustered: reproducible with a seed, every customer once.
        let km = "let c = rfm(transactions(#{ last: \"all\", status: \"completed\" }));\n\
                  kmeans(c, 4, #{ seed: 11, columns: [\"recency_days\", \"frequency\", \"monetary\"] })";
        let k1 = frame_of(run(km.to_owned()).await.unwrap());
        let k2 = frame_of(run(km.to_owned()).await.unwrap());
        assert!(k1.equals(&k2));
        let clusters = k1.column("cluster").unwrap().i64().unwrap();
        let mut sizes = [0usize; 4];
        for c in clusters.iter() {
            sizes[c.unwrap() as usize] += 1;
        }
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]) && sizes[3] > 0, "{sizes:?}");

        // Bad options and series say what to fix; nothing panics.
        for (src, says) in [
            (format!("{hourly} forecast(hourly, #{{ horizon: -1 }})"), "whole number"),
            (format!("{hourly} forecast(hourly, #{{ level: 150 }})"), "level"),
            (format!("{hourly} forecast(hourly, #{{ colour: 1 }})"), "unknown option `colour`"),
            (format!("{hourly} forecast(hourly, #{{ every: \"7q\" }})"), "every"),
            (format!("{hourly} forecast(hourly.sort(\"hour\").head(3))"), "at least 8"),
            ("forecast(frame(#{ x: [1, 2, 3] }))".to_owned(), "no date or time column"),
            (format!("{hourly} backtest(hourly, #{{ horizon: 1000 }})"), "need more than"),
            (format!("{hourly} anomalies(hourly, #{{ last: 100000 }})"), "check the last"),
            ("kmeans(frame(#{ x: [1.0, 2.0] }), 5)".to_owned(), "2 rows cannot make 5"),
            ("kmeans(frame(#{ x: [\"a\"] }), 1)".to_owned(), "no numeric column"),
        ] {
            let e = run(src.clone()).await.unwrap_err().to_string();
            assert!(e.contains(says), "{src}\n=> {e}");
        }
        db.drop().await;
    });
}

/// Each customer's RFM segment as of `cutoff`, computed in PostgreSQL
/// (`ntile(5)`), by customer id.
async fn sql_segments(
    db: &TestDb,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> HashMap<String, (String, f64)> {
    let rows: Vec<(String, String, f64)> = sqlx::query_as(
        r#"WITH c AS (
               SELECT customer_id, max(occurred_at) AS last_order, count(*) AS frequency,
                      round(sum(total_amount), 2) AS spent, sum(total_amount)::float8 AS revenue
               FROM transactions WHERE status = 'completed' AND occurred_at < $1 GROUP BY customer_id),
           s AS (
               SELECT customer_id, revenue,
                      ntile(5) OVER (ORDER BY last_order, customer_id COLLATE "C") AS r,
                      ntile(5) OVER (ORDER BY frequency, customer_id COLLATE "C") AS f
               FROM c)
           SELECT customer_id,
                  CASE WHEN r >= 4 AND f >= 4 THEN 'Champions'
                       WHEN r >= 3 AND f >= 3 THEN 'Loyal'
                       WHEN r >= 4 AND f = 1 THEN 'New'
                       WHEN r >= 4 THEN 'Promising'
                       WHEN r = 3 THEN 'Need attention'
                       WHEN f >= 3 THEN 'At risk'
                       ELSE 'Hibernating' END,
                  revenue
           FROM s"#,
    )
    .bind(cutoff)
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    rows.into_iter().map(|(id, s, r)| (id, (s, r))).collect()
}

#[test]
fn segment_sizes_revenue_and_movement_match_postgresql() {
    let rt = runtime();
    rt.block_on(async {
        let db = seeded("segments").await;
        let (lo, hi): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
            sqlx::query_as("SELECT min(occurred_at), max(occurred_at) FROM transactions")
                .fetch_one(db.store.pool())
                .await
                .unwrap();
        let as_of = hi + chrono::Duration::seconds(1);
        let period = (hi - lo) / 3;
        let r = salespulse::analytics::segments::segments(db.store.pool(), as_of, period)
            .await
            .unwrap();
        let now = sql_segments(&db, as_of).await;
        let before = sql_segments(&db, as_of - period).await;
        assert!(
            before.len() > 50 && now.len() > before.len(),
            "{} {}",
            before.len(),
            now.len()
        );
        let total: f64 = now.values().map(|v| v.1).sum();
        let s = &r.summary;
        let col_i = |c: &str| {
            s.column(c)
                .unwrap()
                .i64()
                .unwrap()
                .into_no_null_iter()
                .collect::<Vec<_>>()
        };
        let col_f = |c: &str| {
            s.column(c)
                .unwrap()
                .f64()
                .unwrap()
                .into_no_null_iter()
                .collect::<Vec<_>>()
        };
        let names: Vec<String> = s
            .column("segment")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|v| v.unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            salespulse::script::rfm::SEGMENTS
                .map(str::to_owned)
                .to_vec()
        );
        let (customers, revenue_share) = (col_i("customers"), col_f("revenue_share"));
        let (stayed, moved_in, new, moved_out) = (
            col_i("stayed"),
            col_i("moved_in"),
            col_i("new"),
            col_i("moved_out"),
        );
        for (i, name) in names.iter().enumerate() {
            let members: Vec<&String> = now
                .iter()
                .filter(|(_, v)| &v.0 == name)
                .map(|(k, _)| k)
                .collect();
            assert_eq!(customers[i], members.len() as i64, "{name}");
            let rev: f64 = members.iter().map(|k| now[*k].1).sum();
            assert!((revenue_share[i] - rev / total).abs() < 1e-9, "{name}");
            let was = |k: &String| before.get(k).map(|v| v.0.as_str());
            assert_eq!(
                stayed[i],
                members.iter().filter(|k| was(k) == Some(name)).count() as i64,
                "{name}"
            );
            assert_eq!(
                new[i],
                members.iter().filter(|k| was(k).is_none()).count() as i64,
                "{name}"
            );
            assert_eq!(
                moved_in[i],
                members
                    .iter()
                    .filter(|k| was(k).is_some_and(|w| w != name))
                    .count() as i64,
                "{name}"
            );
            let left = before
                .iter()
                .filter(|(k, v)| &v.0 == name && now.get(*k).is_some_and(|n| &n.0 != name))
                .count();
            assert_eq!(moved_out[i], left as i64, "{name}");
        }
        // Exporting a segment gives exactly its customers.
        let at_risk =
            salespulse::analytics::segments::customers_of(&r.customers, "At risk").unwrap();
        assert_eq!(
            at_risk.height(),
            now.values().filter(|v| v.0 == "At risk").count()
        );
        db.drop().await;
    });
}
