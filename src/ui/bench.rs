//! `salespulse bench ui`: CPU time of an app frame (layout + tessellation,
//! everything but the GPU upload) on each panel, at several window sizes and
//! scales (sizes in physical pixels), with a full log, against a database of the user's choice (the analytics bench's
//! 10M transactions by default), and the process's resident memory.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::runtime::Handle;

use super::log::LogBuffer;
use super::settings::Settings;
use super::{App, Tab};
use crate::analytics::TimeRange;
use crate::config::Config;

#[derive(Clone, Debug)]
pub struct UiBenchOptions {
    /// Timed frames per case.
    pub frames: usize,
    /// Dashboard range.
    pub range: TimeRange,
}

#[derive(Clone, Debug, Serialize)]
pub struct UiCase {
    pub panel: String,
    pub size: [f32; 2],
    pub scale: f32,
    pub mean_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct UiBenchReport {
    pub transactions: i64,
    pub frames: usize,
    pub dashboard_load_ms: f64,
    pub cases: Vec<UiCase>,
    pub rss_mib: Option<f64>,
}

impl std::fmt::Display for UiBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "database          {} transactions; first dashboard in {:.0} ms",
            self.transactions, self.dashboard_load_ms
        )?;
        writeln!(
            f,
            "frame CPU time (layout + tessellation), {} frames per case:",
            self.frames
        )?;
        writeln!(
            f,
            "{:<10} {:>11} {:>6} {:>10} {:>10} {:>10}",
            "panel", "size", "scale", "mean", "p99", "max"
        )?;
        for c in &self.cases {
            writeln!(
                f,
                "{:<10} {:>11} {:>5}x {:>7.2} ms {:>7.2} ms {:>7.2} ms",
                c.panel,
                format!("{}x{}", c.size[0], c.size[1]),
                c.scale,
                c.mean_ms,
                c.p99_ms,
                c.max_ms
            )?;
        }
        match self.rss_mib {
            Some(r) => writeln!(f, "resident memory   {r:.0} MiB"),
            None => writeln!(f, "resident memory   (not available on this platform)"),
        }
    }
}

/// Resident set size of this process, MiB (Linux).
pub fn rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn input(size: [f32; 2], scale: f32, t: f64) -> egui::RawInput {
    let mut i = egui::RawInput {
        // The window's size in points: physical pixels over the scale.
        screen_rect: Some(egui::Rect::from_min_size(
            egui::Pos2::ZERO,
            egui::vec2(size[0] / scale, size[1] / scale),
        )),
        time: Some(t),
        ..Default::default()
    };
    if let Some(v) = i.viewports.get_mut(&egui::ViewportId::ROOT) {
        v.native_pixels_per_point = Some(scale);
    }
    i
}

/// Runs the benchmark. Blocks the calling thread (which plays the UI
/// thread); the app's backend runs on `rt`.
pub fn run(rt: Handle, cfg: Config, opts: &UiBenchOptions) -> anyhow::Result<UiBenchReport> {
    let settings = Settings {
        autostart: false,
        auto_refresh: false,
        filters: crate::analytics::Filters {
            range: opts.range.clone(),
            ..Default::default()
        },
        ..Settings::from_config(&cfg)
    };
    let transactions = {
        let cfg = cfg.clone();
        rt.block_on(async move {
            let (store, _pg) = crate::pipeline::open_store(&cfg).await?;
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
                .fetch_one(store.pool())
                .await?;
            anyhow::Ok(n)
        })?
    };
    let ctx = egui::Context::default();
    // A full log, as after a long session (the pipeline panel shows it).
    let logs = LogBuffer::default();
    for i in 0..super::log::LOG_LINES {
        let level = if i % 10 == 0 {
            tracing::Level::WARN
        } else {
            tracing::Level::INFO
        };
        logs.push(level, "bench", format!("log line {i} of a long session"));
    }
    let mut app = App::new(rt, cfg, settings, logs);
    let started = Instant::now();
    let mut t = 0.0;
    let frame = |app: &mut App, size: [f32; 2], scale: f32, t: f64| -> Duration {
        let s = Instant::now();
        let out = ctx.run_ui(input(size, scale, t), |ui| app.ui(ui));
        let _ = ctx.tessellate(out.shapes, out.pixels_per_point);
        s.elapsed()
    };
    // Wait for the services, the first dashboard and a telemetry sample.
    while app.dashboard().is_none() || app.telemetry().is_none() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the dashboard did not load within 5 minutes ({:?})",
            app.services
        );
        if let super::backend::ServiceState::Failed(e) = &app.services {
            anyhow::bail!("services unavailable: {e}");
        }
        frame(&mut app, [1280.0, 800.0], 1.0, t);
        t += 0.05;
        std::thread::sleep(Duration::from_millis(20));
    }
    let dashboard_load_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut cases = Vec::new();
    for tab in [Tab::Dashboard, Tab::Pipeline, Tab::Explorer] {
        app.tab = tab;
        if tab == Tab::Explorer {
            // The largest table the explorer loads by default, x10.
            app.explorer.view = Some(crate::analytics::ViewKind::Transactions);
            app.explorer.limit = 10_000;
            app.load_explorer();
            let asked = Instant::now();
            while app.explorer.table.is_none() {
                anyhow::ensure!(
                    asked.elapsed() < Duration::from_secs(120),
                    "the explorer table did not load: {:?}",
                    app.explorer.error
                );
                frame(&mut app, [1280.0, 800.0], 1.0, t);
                t += 0.05;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Physical pixels and scale: the smallest window, a common monitor,
        // a Retina laptop, 4K at 2x and 4K at 1x (the largest layout).
        for (size, scale) in [
            ([1024.0, 640.0], 1.0),
            ([1920.0, 1080.0], 1.0),
            ([2560.0, 1600.0], 2.0),
            ([3840.0, 2160.0], 2.0),
            ([3840.0, 2160.0], 1.0),
        ] {
            // Settle the layout (first frames size grids and tables).
            for _ in 0..5 {
                frame(&mut app, size, scale, t);
                t += 1.0 / 60.0;
            }
            let mut ms: Vec<f64> = (0..opts.frames.max(1))
                .map(|_| {
                    t += 1.0 / 60.0;
                    frame(&mut app, size, scale, t).as_secs_f64() * 1e3
                })
                .collect();
            ms.sort_by(f64::total_cmp);
            let n = ms.len();
            cases.push(UiCase {
                panel: tab.label().to_owned(),
                size,
                scale,
                mean_ms: ms.iter().sum::<f64>() / n as f64,
                p99_ms: ms[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1],
                max_ms: ms[n - 1],
            });
        }
    }
    app.shutdown(Duration::from_secs(10));
    Ok(UiBenchReport {
        transactions,
        frames: opts.frames,
        dashboard_load_ms,
        cases,
        rss_mib: rss_mib(),
    })
}
