//! Export round trips: every column type through CSV and Parquet, read back
//! by Polars and (when installed, as `scripts/setup --test` does) by pyarrow
//! and DuckDB.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use polars::prelude::*;
use salespulse::analytics::export::{export_view_paged, write_frame, ExportFormat};
use salespulse::analytics::{Analytics, LoadMode, TimeRange, ViewKind, ViewRequest};
use salespulse::cache::FrameCache;
use salespulse::event::Event;

use common::*;

fn read_back(path: &std::path::Path, format: ExportFormat, schema: &Schema) -> DataFrame {
    match format {
        ExportFormat::Parquet => ParquetReader::new(std::fs::File::open(path).unwrap())
            .finish()
            .unwrap(),
        ExportFormat::Csv | ExportFormat::CsvRaw => CsvReadOptions::default()
            .with_has_header(true)
            .with_schema(Some(Arc::new(schema.clone())))
            .try_into_reader_with_file_path(Some(path.to_owned()))
            .unwrap()
            .finish()
            .unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_round_trip_through_csv_and_parquet() {
    let db = TestDb::new("export").await;
    let mut g = sparse_generator(11, 400.0);
    let events: Vec<Event> = (0..8_000).map(|_| g.next_event()).collect();
    write_events(&db.store, events, 2_000, &mut HashMap::new()).await;
    let a = Analytics::new(
        db.store.pool().clone(),
        Arc::new(FrameCache::disabled()),
        LoadMode::Rows,
    );
    let dir = tempfile::tempdir().unwrap();

    // All transactions (text, int, float, timestamp columns), paged 500 rows
    // at a time, against the same rows as one frame.
    let mut all = ViewRequest::new(ViewKind::Transactions);
    all.limit = Some(1_000_000);
    let want = a.view(&all).await.unwrap().frame;
    assert!(want.height() > 1_000, "{}", want.height());
    for format in [ExportFormat::Csv, ExportFormat::Parquet] {
        let path = dir.path().join(format!("tx.{format:?}").to_lowercase());
        let mut calls = Vec::new();
        let report = export_view_paged(
            &a,
            &ViewRequest::new(ViewKind::Transactions),
            &path,
            format,
            500,
            |done, total| calls.push((done, total)),
        )
        .await
        .unwrap();
        assert_eq!(report.rows as usize, want.height());
        assert!(calls.len() > 3, "progress per page: {calls:?}");
        assert_eq!(calls.last().unwrap().0, report.rows);
        let back = read_back(&path, format, want.schema());
        assert_eq!(back.schema(), want.schema(), "{format:?}");
        assert!(back.equals_missing(&want), "{format:?} round trip differs");
        // No partial files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.to_string_lossy().ends_with(".partial")),
            "{names:?}"
        );
    }

    // Nulls (kpis over all data has no previous period) and a time series.
    for view in [
        ViewKind::Kpis,
        ViewKind::RevenueTrend,
        ViewKind::TopProducts,
    ] {
        let req = ViewRequest::new(view).with_range(if view == ViewKind::RevenueTrend {
            TimeRange::Last { minutes: 24 * 60 }
        } else {
            TimeRange::All
        });
        let frame = a.view(&req).await.unwrap().frame;
        for format in [ExportFormat::Csv, ExportFormat::Parquet] {
            let path = dir.path().join(format!("{view}.{format:?}").to_lowercase());
            write_frame(&frame, &path, format).unwrap();
            let back = read_back(&path, format, frame.schema());
            assert!(
                back.equals_missing(&frame),
                "{view} {format:?}\n{frame}\n{back}"
            );
        }
    }

    // Other tools: pyarrow and DuckDB read the types as documented.
    let script = format!(
        r#"
import pyarrow.parquet as pq, duckdb, sys
t = pq.read_table("{p}")
assert str(t.schema.field("occurred_at").type) == "timestamp[us, tz=UTC]", t.schema
assert str(t.schema.field("total_amount").type) == "double", t.schema
assert str(t.schema.field("quantity").type) == "int64", t.schema
n = t.num_rows
con = duckdb.connect()
pq_types = dict(con.execute("DESCRIBE SELECT * FROM read_parquet('{p}')").fetchall() and
                [(r[0], r[1]) for r in con.execute("DESCRIBE SELECT * FROM read_parquet('{p}')").fetchall()])
assert pq_types["occurred_at"] == "TIMESTAMP WITH TIME ZONE", pq_types
csv = con.execute("SELECT count(*), sum(total_amount) FROM read_csv('{c}')").fetchone()
par = con.execute("SELECT count(*), sum(total_amount) FROM read_parquet('{p}')").fetchone()
assert csv[0] == par[0] == n, (csv, par, n)
assert abs(csv[1] - par[1]) < 1e-6, (csv, par)
csv_types = dict((r[0], r[1]) for r in con.execute("DESCRIBE SELECT * FROM read_csv('{c}')").fetchall())
assert csv_types["occurred_at"] == "TIMESTAMP WITH TIME ZONE", csv_types
print(n)
"#,
        p = dir.path().join("tx.parquet").display(),
        c = dir.path().join("tx.csv").display(),
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pyarrow/DuckDB could not read the exports (scripts/setup --test installs them):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        want.height().to_string()
    );
    db.drop().await;
}
