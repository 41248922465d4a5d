//! The desktop app driven headless with egui_kittest, against real services:
//! PostgreSQL, Redis and the embedded Kafka-protocol broker the app starts.
//! Assertions are on what the UI shows, checked against SQL over the raw rows.

mod common;

use std::time::{Duration, Instant};

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use polars::prelude::SerReader;
use salespulse::analytics::Span;
use salespulse::ui::log::LogBuffer;
use salespulse::ui::model::money;
use salespulse::ui::settings::Settings;
use salespulse::ui::App;

use common::{redis_url, TestDb};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn settings(db_url: &str) -> Settings {
    Settings {
        kafka_brokers: String::new(), // embedded
        database_url: db_url.to_owned(),
        redis_url: redis_url(),
        partitions: 2,
        batch_size: 500,
        refresh_secs: 1.0,
        rate: 3_000.0,
        autostart: true,
        ..Settings::default()
    }
}

/// The app over a fresh database, at the smallest supported window size
/// and up (1280×800), autostarting the pipeline.
fn open_app(rt: &tokio::runtime::Runtime, tag: &str) -> (TestDb, Harness<'static, App>) {
    open_app_with(rt, tag, [1280.0, 800.0], 1.0, settings)
}

fn open_app_with(
    rt: &tokio::runtime::Runtime,
    tag: &str,
    size: [f32; 2],
    scale: f32,
    settings: impl Fn(&str) -> Settings,
) -> (TestDb, Harness<'static, App>) {
    let db = rt.block_on(TestDb::new(tag));
    let app = App::new(
        rt.handle().clone(),
        common::test_config(&db.url, None),
        settings(&db.url),
        LogBuffer::default(),
    );
    let h = Harness::builder()
        .with_size(size)
        .with_pixels_per_point(scale)
        .build_ui_state(|ui, app: &mut App| app.ui(ui), app);
    (db, h)
}

/// Stops the app's pipeline and drops the database.
fn close_app(rt: &tokio::runtime::Runtime, db: TestDb, h: Harness<'static, App>) {
    let mut app = h.into_state();
    app.shutdown(Duration::from_secs(20));
    rt.block_on(db.drop());
}

/// Steps frames in real time until `cond` holds.
fn wait_for(
    h: &mut Harness<'_, App>,
    what: &str,
    secs: u64,
    cond: impl Fn(&Harness<'_, App>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        h.step();
        if cond(h) {
            // One more frame so that the UI shows what the state holds.
            h.step();
            return;
        }
        if Instant::now() >= deadline {
            let a = h.state();
            panic!(
                "timed out waiting for {what}; filters {:?}, explorer view {:?} error {:?} rows {:?}, dashboard error {:?}",
                a.settings.filters,
                a.explorer.view,
                a.explorer.error,
                a.explorer.table.as_ref().map(|t| (t.rows.len(), t.columns.len())),
                a.dashboard().map(|d| d.categories.iter().map(|c| c.label.clone()).collect::<Vec<_>>()),
            );
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn has_label(h: &Harness<'_, App>, label: &str) -> bool {
    h.query_by_label(label).is_some()
}

/// Completed revenue over raw rows in `span`, optionally of one category.
async fn sql_revenue(db: &TestDb, span: Span, category: Option<&str>) -> f64 {
    sqlx::query_scalar::<_, Option<f64>>(
        "SELECT (sum(total_amount) FILTER (WHERE status = 'completed'))::float8
         FROM transactions WHERE occurred_at >= $1 AND occurred_at < $2
           AND ($3::text IS NULL OR category = $3)",
    )
    .bind(span.from)
    .bind(span.to)
    .bind(category)
    .fetch_one(db.store.pool())
    .await
    .unwrap()
    .unwrap_or(0.0)
}

#[test]
fn dashboard_follows_the_live_pipeline_range_and_filters() {
    let rt = runtime();
    let (db, mut h) = open_app(&rt, "app_dash");

    // The pipeline starts by itself and data reaches the dashboard.
    wait_for(&mut h, "the pipeline to run", 60, |h| {
        has_label(h, "pipeline running")
    });
    wait_for(&mut h, "ingested rows", 60, |h| {
        h.state()
            .telemetry()
            .is_some_and(|t| t.counters.ingested > 3_000)
    });

    // Pause from the pipeline panel; ingest drains the backlog.
    h.get_by_label("Pipeline").click();
    h.step();
    h.get_by_label("Pause").click();
    wait_for(&mut h, "paused", 20, |h| has_label(h, "pipeline paused"));
    wait_for(&mut h, "lag to drain", 60, |h| {
        has_label(h, "0 records behind in total")
    });
    let ingested = h.state().telemetry().unwrap().counters.ingested;
    assert!(has_label(&h, "Consumer lag"));
    assert!(has_label(&h, "Services"));

    // Back on the dashboard, a refresh shows exactly what SQL says.
    h.get_by_label("Dashboard").click();
    h.step();
    let refreshed_after = |h: &Harness<'_, App>, n: u64| {
        h.state()
            .telemetry()
            .is_some_and(|t| t.counters.ingested == n)
            && h.state().dashboard().is_some()
    };
    wait_for(&mut h, "a dashboard", 30, |h| refreshed_after(h, ingested));
    let seen = h.state().dashboards_received();
    h.get_by_label("Refresh now").click();
    wait_for(&mut h, "the refresh", 30, |h| {
        h.state().dashboards_received() > seen
    });
    let d = h.state().dashboard().unwrap().clone();
    let span = d.span.expect("the 1 h range has a span");
    assert_eq!(span.len(), chrono::Duration::hours(1));
    let want = rt.block_on(sql_revenue(&db, span, None));
    assert!(want > 0.0);
    assert_eq!(
        money(d.current.revenue),
        money(want),
        "dashboard vs SQL over {span:?}"
    );
    assert!(
        has_label(&h, &money(want)),
        "the Revenue tile shows {}",
        money(want)
    );
    assert!(has_label(&h, "Revenue"));
    assert!(has_label(&h, "Top products"));
    assert!(has_label(&h, "Payment methods (orders)"));

    // Another range.
    h.get_by_label("15 min").click();
    wait_for(&mut h, "the 15 min range", 30, |h| {
        h.state()
            .dashboard()
            .and_then(|d| d.span)
            .is_some_and(|s| s.len() == chrono::Duration::minutes(15))
    });

    // A category filter: the tile shows that category's revenue.
    let category = d.categories.first().expect("categories").label.clone();
    h.get_by_value("Category: any").click();
    wait_for(&mut h, "the category choices", 30, |h| {
        h.query_by_role_and_label(egui::accesskit::Role::CheckBox, &category)
            .is_some()
    });
    h.get_by_role_and_label(egui::accesskit::Role::CheckBox, &category)
        .click_accesskit();
    h.step();
    let label = format!("Category: {category}");
    wait_for(&mut h, "the filtered dashboard", 30, |h| {
        h.query_by_value(&label).is_some()
            && h.state()
                .dashboard()
                .is_some_and(|d| d.categories.len() == 1 && d.categories[0].label == category)
    });
    let d = h.state().dashboard().unwrap().clone();
    let want = rt.block_on(sql_revenue(&db, d.span.unwrap(), Some(&category)));
    assert_eq!(money(d.current.revenue), money(want));
    assert!(has_label(&h, &money(want)));

    // Resume: events flow again.
    h.get_by_label("Pipeline").click();
    h.step();
    h.get_by_label("Resume").click();
    wait_for(&mut h, "running again", 20, |h| {
        has_label(h, "pipeline running")
    });
    wait_for(&mut h, "more rows", 60, |h| {
        h.state()
            .telemetry()
            .is_some_and(|t| t.counters.ingested > ingested)
    });

    close_app(&rt, db, h);
}

#[test]
fn explorer_loads_sorts_and_exports_and_settings_persist_choices() {
    let rt = runtime();
    let (db, mut h) = open_app(&rt, "app_explore");
    wait_for(&mut h, "ingested rows", 60, |h| {
        h.state()
            .telemetry()
            .is_some_and(|t| t.counters.ingested > 2_000)
    });
    // Stop the pipeline so that the data holds still.
    h.get_by_label("Pipeline").click();
    h.step();
    h.get_by_label("Stop").click();
    wait_for(&mut h, "stopped", 30, |h| has_label(h, "pipeline stopped"));
    let total: i64 = rt.block_on(common::count(
        &db.store,
        "SELECT count(*) FROM transactions",
    ));
    assert!(total > 0);

    // Explorer: raw transactions of all time.
    h.get_by_label("Dashboard").click();
    h.step();
    h.get_by_label("All").click();
    h.step();
    h.get_by_label("Explorer").click();
    h.step();
    h.get_by_value("choose…").click();
    h.run_steps(3);
    h.get_by_label("transactions").click_accesskit();
    let shown = (total.min(1_000)) as usize;
    let label = format!(
        "{} rows × 16 columns",
        salespulse::ui::model::count(shown as f64)
    );
    wait_for(&mut h, "the transactions table", 30, |h| {
        has_label(h, &label)
    });

    // Sorting by a header orders the rows.
    h.get_by_label("total_amount").click();
    h.run_steps(2);
    {
        let e = &h.state().explorer;
        let t = e.table.as_ref().unwrap();
        let col = t.columns.iter().position(|c| c == "total_amount").unwrap();
        let keys = t.numeric[col].as_ref().unwrap();
        let order = e.order.as_ref().expect("sorted");
        assert!(
            order.windows(2).all(|w| keys[w[0]] >= keys[w[1]]),
            "descending"
        );
        assert!(has_label(&h, "total_amount (desc)"));
    }

    // Export every matching row to Parquet through the path field.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("all.parquet");
    let field = h.get_by_role(egui::accesskit::Role::TextInput);
    field.focus();
    h.step();
    h.key_combination_modifiers(egui::Modifiers::COMMAND, &[egui::Key::A]);
    h.step();
    h.get_by_role(egui::accesskit::Role::TextInput)
        .type_text(&out.display().to_string());
    h.step();
    h.get_by_label("Export").click();
    let done = format!("wrote {total} rows");
    wait_for(&mut h, "the export", 60, |h| {
        h.state()
            .explorer
            .export_result
            .as_ref()
            .is_some_and(|r| r.as_ref().is_ok_and(|m| m.starts_with(&done)))
    });
    let df = polars::prelude::ParquetReader::new(std::fs::File::open(&out).unwrap())
        .finish()
        .unwrap();
    assert_eq!(df.height() as i64, total);

    // Settings: a theme change applies and is what gets persisted.
    h.get_by_label("Settings").click();
    h.step();
    h.get_by_label("Light").click();
    h.step();
    h.get_by_label("Apply").click();
    h.step();
    h.step();
    assert_eq!(
        h.state().settings.theme,
        salespulse::ui::settings::Theme::Light
    );
    assert_eq!(h.ctx.theme(), egui::Theme::Light);
    let saved = serde_json::to_string(&h.state().settings).unwrap();
    let back: Settings = serde_json::from_str(&saved).unwrap();
    assert_eq!(back, h.state().settings);

    close_app(&rt, db, h);
}

#[test]
fn the_smallest_window_shows_every_tile_and_panel_at_1x_and_2x() {
    let rt = runtime();
    for scale in [1.0, 2.0] {
        // 1024x640 points: the minimum window (2048x1280 pixels at 2x).
        let (db, mut h) = open_app_with(&rt, "app_small", [1024.0, 640.0], scale, |url| Settings {
            autostart: false,
            ..settings(url)
        });
        wait_for(&mut h, "a dashboard", 60, |h| {
            h.state().dashboard().is_some()
        });
        for tile in [
            "Revenue",
            "Orders",
            "Average order value",
            "Conversion rate",
            "Refund rate",
            "Customers",
        ] {
            let r = h.get_by_label(tile).rect();
            assert!(
                r.max.x <= 1024.0 && r.min.x >= 0.0,
                "{tile} at {r:?} is outside a 1024-point window at {scale}x"
            );
        }
        for (tab, shows) in [
            ("Pipeline", "Rate (events/s, 0 = max)"),
            ("Explorer", "choose a view to load it"),
            ("Settings", "Apply"),
        ] {
            h.get_by_label(tab).click();
            h.run_steps(2);
            let r = h.get_by_label(shows).rect();
            assert!(
                r.max.x <= 1024.0 && r.max.y <= 640.0,
                "{shows} at {r:?} ({scale}x)"
            );
        }
        close_app(&rt, db, h);
    }
}
