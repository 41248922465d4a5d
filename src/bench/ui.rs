//! `salespulse bench ui`: CPU time of an app frame (layout + tessellation,
//! everything but the GPU upload) on each panel, at several window sizes and
//! scales (sizes in physical pixels), with a full log, against a database of the user's choice (the analytics bench's
//! 10M transactions by default), and the process's resident memory.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::runtime::Handle;

use super::{process_cpu, rss_mib};
use crate::analytics::TimeRange;
use crate::config::Config;
use crate::ui::log::LogBuffer;
use crate::ui::settings::Settings;
use crate::ui::{App, Tab};

/// What `bench ui` draws.
#[derive(Clone, Debug)]
pub struct UiBenchOptions {
    /// Timed frames per case.
    pub frames: usize,
    /// Dashboard range.
    pub range: TimeRange,
}

/// Frame times of one panel at one window size.
#[derive(Clone, Debug, Serialize)]
pub struct UiCase {
    /// The panel.
    pub panel: String,
    /// Window size, points.
    pub size: [f32; 2],
    /// Pixels per point.
    pub scale: f32,
    /// Mean frame time, ms.
    pub mean_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest frame, ms.
    pub max_ms: f64,
}

/// What `bench ui` measured.
#[derive(Clone, Debug, Serialize)]
pub struct UiBenchReport {
    /// Transactions in the database.
    pub transactions: i64,
    /// Timed frames per case.
    pub frames: usize,
    /// From start until the dashboard had its data, ms.
    pub dashboard_load_ms: f64,
    /// Custom metrics on the dashboard, and when all had their values.
    pub metrics: usize,
    /// From start until every custom metric had its value, ms.
    pub metrics_load_ms: f64,
    /// One case per panel and size.
    pub cases: Vec<UiCase>,
    /// Resident memory at the end, MiB (Unix only).
    pub rss_mib: Option<f64>,
}

impl std::fmt::Display for UiBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "database          {} transactions; first dashboard in {:.0} ms, its {} custom metrics by {:.0} ms",
            self.transactions, self.dashboard_load_ms, self.metrics, self.metrics_load_ms
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

/// The window size the loading phases draw at.
const DEFAULT_SIZE: [f32; 2] = [1280.0, 800.0];

/// Draws frames back to back at 60 frames a second of simulated time.
struct Frames {
    ctx: egui::Context,
    /// Simulated time, seconds.
    t: f64,
}

impl Frames {
    /// Draws and tessellates one frame; returns how long it took.
    fn draw(&mut self, app: &mut App, size: [f32; 2], scale: f32) -> Duration {
        self.t += 1.0 / 60.0;
        let s = Instant::now();
        let out = self.ctx.run_ui(input(size, scale, self.t), |ui| app.ui(ui));
        let _ = self.ctx.tessellate(out.shapes, out.pixels_per_point);
        s.elapsed()
    }

    /// Draws frames until `done`, failing after `limit` with `what` did not load.
    fn until(
        &mut self,
        app: &mut App,
        limit: Duration,
        what: &str,
        done: impl Fn(&App) -> bool,
    ) -> anyhow::Result<()> {
        let asked = Instant::now();
        while !done(app) {
            anyhow::ensure!(
                asked.elapsed() < limit,
                "{what} did not load within {} s",
                limit.as_secs()
            );
            self.draw(app, DEFAULT_SIZE, 1.0);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// Runs `step` until the app has its services, a dashboard and a pipeline
/// sample; fails when the services do, or after 5 minutes.
fn wait_for_dashboard(
    app: &mut App,
    started: Instant,
    mut step: impl FnMut(&mut App),
) -> anyhow::Result<()> {
    while app.dashboard().is_none() || app.telemetry().is_none() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the dashboard did not load within 5 minutes ({:?})",
            app.services
        );
        if let crate::ui::backend::ServiceState::Failed(e) = &app.services {
            anyhow::bail!("services unavailable: {e}");
        }
        step(app);
    }
    Ok(())
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
            let (store, _pg) = crate::services::open_store(&cfg).await?;
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
                .fetch_one(store.pool())
                .await?;
            anyhow::Ok(n)
        })?
    };
    // A full log, as after a long session (the pipeline panel shows it).
    let logs = LogBuffer::default();
    for i in 0..crate::ui::log::LOG_LINES {
        let level = if i % 10 == 0 {
            tracing::Level::WARN
        } else {
            tracing::Level::INFO
        };
        logs.push(level, "bench", format!("log line {i} of a long session"));
    }
    let mut app = App::new(rt, cfg, settings, logs);
    let started = Instant::now();
    let mut frames = Frames {
        ctx: egui::Context::default(),
        t: 0.0,
    };
    wait_for_dashboard(&mut app, started, |app| {
        frames.draw(app, DEFAULT_SIZE, 1.0);
    })?;
    let dashboard_load_ms = started.elapsed().as_secs_f64() * 1e3;
    // The custom metrics (scripts) too: they are part of the dashboard's layout.
    frames.until(
        &mut app,
        Duration::from_secs(600),
        "the custom metrics",
        |app| {
            app.dashboard()
                .is_none_or(|d| d.metrics.iter().all(|m| m.view.is_some()))
        },
    )?;
    let metrics_load_ms = started.elapsed().as_secs_f64() * 1e3;
    let metrics = app.dashboard().map_or(0, |d| d.metrics.len());
    let mut cases = Vec::new();
    for tab in [Tab::Dashboard, Tab::Pipeline, Tab::Explorer, Tab::Scripts] {
        app.tab = tab;
        if tab == Tab::Scripts {
            // The editor with the largest shipped metric's table previewed.
            app.scripts_mut()
                .open_script("metrics/revenue_by_weekday_hour.rhai");
            app.run_script();
            frames.until(
                &mut app,
                Duration::from_secs(300),
                "the script preview",
                |app| app.scripts().result.is_some(),
            )?;
        }
        if tab == Tab::Explorer {
            // The largest table the explorer loads by default, x10.
            app.explorer.view = Some(crate::analytics::ViewKind::Transactions);
            app.explorer.limit = 10_000;
            app.load_explorer();
            frames.until(
                &mut app,
                Duration::from_secs(120),
                "the explorer table",
                |app| app.explorer.table.is_some() || app.explorer.error.is_some(),
            )?;
            if let Some(e) = &app.explorer.error {
                anyhow::bail!("the explorer table did not load: {e}");
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
                frames.draw(&mut app, size, scale);
            }
            let mut ms: Vec<f64> = (0..opts.frames.max(1))
                .map(|_| frames.draw(&mut app, size, scale).as_secs_f64() * 1e3)
                .collect();
            ms.sort_by(f64::total_cmp);
            let n = ms.len();
            let nth = |i: usize| ms.get(i).copied().unwrap_or(0.0);
            cases.push(UiCase {
                panel: tab.label().to_owned(),
                size,
                scale,
                mean_ms: ms.iter().sum::<f64>() / n as f64,
                p99_ms: nth(((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1),
                max_ms: nth(n - 1),
            });
        }
    }
    app.shutdown(Duration::from_secs(10));
    Ok(UiBenchReport {
        transactions,
        frames: opts.frames,
        dashboard_load_ms,
        metrics,
        metrics_load_ms,
        cases,
        rss_mib: rss_mib(),
    })
}

/// How long to watch an idle app.
#[derive(Clone, Debug)]
pub struct IdleBenchOptions {
    /// Measured seconds per panel.
    pub seconds: u64,
    /// Seconds to let each panel settle before measuring.
    pub settle: u64,
    /// Dashboard auto-refresh interval.
    pub refresh_secs: f64,
}

/// One panel left idle.
#[derive(Clone, Debug, Serialize)]
pub struct IdleCase {
    /// The panel.
    pub panel: String,
    /// Seconds measured.
    pub seconds: f64,
    /// Frames the app asked for (what a window would repaint).
    pub frames: u64,
    /// Frames asked for, per minute.
    pub frames_per_minute: f64,
    /// CPU time of the whole process (UI, backend, embedded broker) over the
    /// window, as a share of one core.
    pub cpu_percent: Option<f64>,
    /// What arrived in the window, by kind (each may wake the window).
    pub received: std::collections::BTreeMap<String, u64>,
}

/// What `bench idle` measured.
#[derive(Clone, Debug, Serialize)]
pub struct IdleBenchReport {
    /// The dashboard's auto-refresh interval.
    pub refresh_secs: f64,
    /// One case per panel.
    pub cases: Vec<IdleCase>,
}

impl std::fmt::Display for IdleBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "idle app (pipeline stopped, auto-refresh every {} s): frames it asked for, process CPU",
            self.refresh_secs
        )?;
        writeln!(
            f,
            "{:<10} {:>8} {:>8} {:>11} {:>10}",
            "panel", "seconds", "frames", "frames/min", "CPU"
        )?;
        for c in &self.cases {
            let cpu = c
                .cpu_percent
                .map_or("n/a".to_owned(), |p| format!("{p:.2} %"));
            let received = c
                .received
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                f,
                "{:<10} {:>8.0} {:>8} {:>11.1} {:>10}   received: {}",
                c.panel,
                c.seconds,
                c.frames,
                c.frames_per_minute,
                cpu,
                if received.is_empty() {
                    "nothing"
                } else {
                    &received
                }
            )?;
        }
        Ok(())
    }
}

/// Drives an app the way a window's event loop does: a frame runs only when
/// egui or the backend asked for one (at the time asked for).
struct EventLoop {
    ctx: egui::Context,
    wake: std::sync::Arc<(std::sync::Mutex<Option<Instant>>, std::sync::Condvar)>,
    started: Instant,
    frames: u64,
}

impl EventLoop {
    fn new() -> Self {
        let ctx = egui::Context::default();
        let wake = std::sync::Arc::new((std::sync::Mutex::new(None), std::sync::Condvar::new()));
        let w = wake.clone();
        ctx.set_request_repaint_callback(move |info| {
            let at = Instant::now() + info.delay;
            let (lock, cv) = &*w;
            let mut next = lock.lock().unwrap_or_else(|p| p.into_inner());
            *next = Some(next.map_or(at, |n: Instant| n.min(at)));
            cv.notify_one();
        });
        Self {
            ctx,
            wake,
            started: Instant::now(),
            frames: 0,
        }
    }

    fn schedule(&self, at: Instant) {
        let mut next = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
        *next = Some(next.map_or(at, |n| n.min(at)));
    }

    fn frame(&mut self, app: &mut App) {
        let t = self.started.elapsed().as_secs_f64();
        let out = self
            .ctx
            .run_ui(input(DEFAULT_SIZE, 1.0, t), |ui| app.ui(ui));
        let _ = self.ctx.tessellate(out.shapes, out.pixels_per_point);
        self.frames += 1;
        if let Some(v) = out.viewport_output.get(&egui::ViewportId::ROOT) {
            if v.repaint_delay < Duration::from_secs(3600) {
                self.schedule(Instant::now() + v.repaint_delay);
            }
        }
    }

    /// Runs the frames asked for until `until`.
    fn run_until(&mut self, app: &mut App, until: Instant) {
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            let due = {
                let (lock, cv) = &*self.wake;
                let mut next = lock.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    let now = Instant::now();
                    match *next {
                        Some(at) if at <= now => {
                            *next = None;
                            break true;
                        }
                        _ if now >= until => break false,
                        Some(at) => {
                            next = cv
                                .wait_timeout(next, at.min(until) - now)
                                .map(|r| r.0)
                                .unwrap_or_else(|p| p.into_inner().0);
                        }
                        None => {
                            next = cv
                                .wait_timeout(next, until - now)
                                .map(|r| r.0)
                                .unwrap_or_else(|p| p.into_inner().0);
                        }
                    }
                }
            };
            if due {
                self.frame(app);
            }
        }
    }
}

/// Runs the idle benchmark: the app with the pipeline stopped, on the
/// dashboard and on the pipeline panel, counting the frames it asks for and
/// the process's CPU time. Blocks the calling thread (the UI thread).
pub fn idle(
    rt: Handle,
    cfg: Config,
    logs: LogBuffer,
    opts: &IdleBenchOptions,
) -> anyhow::Result<IdleBenchReport> {
    let settings = Settings {
        autostart: false,
        auto_refresh: true,
        refresh_secs: opts.refresh_secs,
        ..Settings::from_config(&cfg)
    };
    let mut ev = EventLoop::new();
    logs.attach(&ev.ctx);
    let mut app = App::new(rt, cfg, settings, logs);
    let started = Instant::now();
    ev.frame(&mut app);
    wait_for_dashboard(&mut app, started, |app| {
        ev.run_until(app, Instant::now() + Duration::from_millis(100));
    })?;
    let mut cases = Vec::new();
    for tab in [Tab::Dashboard, Tab::Pipeline] {
        app.tab = tab;
        ev.frame(&mut app);
        ev.run_until(&mut app, Instant::now() + Duration::from_secs(opts.settle));
        let (frames0, cpu0, t0) = (ev.frames, process_cpu(), Instant::now());
        let before = app.received().clone();
        ev.run_until(&mut app, t0 + Duration::from_secs(opts.seconds.max(1)));
        let received = app
            .received()
            .iter()
            .filter_map(|(k, n)| {
                let d = n - before.get(k).copied().unwrap_or(0);
                (d > 0).then(|| ((*k).to_owned(), d))
            })
            .collect();
        let seconds = t0.elapsed().as_secs_f64();
        let frames = ev.frames - frames0;
        cases.push(IdleCase {
            panel: tab.label().to_owned(),
            seconds,
            frames,
            frames_per_minute: frames as f64 * 60.0 / seconds,
            cpu_percent: cpu0
                .zip(process_cpu())
                .map(|(a, b)| (b - a).as_secs_f64() / seconds * 100.0),
            received,
        });
    }
    app.shutdown(Duration::from_secs(10));
    Ok(IdleBenchReport {
        refresh_secs: opts.refresh_secs,
        cases,
    })
}
