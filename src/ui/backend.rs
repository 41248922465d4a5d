//! The app's background side: owns the services and the pipeline, runs
//! queries and exports on the tokio runtime, and sends what it learns to the
//! UI through a channel, waking the UI only when something arrived.
//!
//! The UI thread only ever calls [`BackendHandle::send`] (non-blocking) and
//! [`BackendHandle::poll`] (`try_recv`).

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::runtime::Handle;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::model::{Dashboard, TableData, DASHBOARD_VIEWS};
use crate::analytics::export::{self, ExportFormat, ExportReport};
use crate::analytics::{Analytics, Dimensions, Filters, ViewRequest};
use crate::cache::CacheStatus;
use crate::config::{redact_url, Config};
use crate::pipeline::live::{Counters, LiveOptions, LivePipeline, RunState, ServiceHealth};

/// What the UI asks for.
pub enum Command {
    /// Show the dashboard for `filters`: computed now (the answer carries
    /// `seq`), then, with `every`, recomputed on that interval — sent again
    /// only when the numbers changed.
    Watch(Watch),
    /// One view (or raw transactions) for the explorer.
    Explore {
        seq: u64,
        req: ViewRequest,
    },
    Start {
        rate: Option<f64>,
    },
    SetPaused(bool),
    SetRate(Option<f64>),
    Stop,
    /// Writes every row of `req` to `path`.
    Export {
        req: ViewRequest,
        path: PathBuf,
        format: ExportFormat,
    },
    /// Awaits a native file dialog (created on the UI thread) and reports
    /// the chosen path.
    AwaitPath(BoxFuture<'static, Option<PathBuf>>),
    /// Stops the pipeline and ends the backend; `done` is sent when finished.
    Shutdown {
        done: mpsc::Sender<()>,
    },
}

/// What the dashboard watches.
#[derive(Clone, Debug, PartialEq)]
pub struct Watch {
    pub seq: u64,
    pub filters: Filters,
    pub every: Option<Duration>,
}

/// Where the services stand.
#[derive(Clone, Debug, PartialEq)]
pub enum ServiceState {
    Opening,
    Ready {
        brokers: String,
        database: String,
        redis: String,
        embedded_broker: bool,
    },
    Failed(String),
}

/// One sample of everything the pipeline panel shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Telemetry {
    /// Seconds since the backend started.
    pub at: f64,
    pub state: RunState,
    /// Generation rate setting when running (`None` inside = unlimited).
    pub rate: Option<Option<f64>>,
    pub counters: Counters,
    pub lag: Result<Vec<(i32, i64)>, String>,
    pub pool_open: u32,
    pub pool_idle: u32,
    pub pool_max: u32,
    pub cache: CacheStatus,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub health: Option<ServiceHealth>,
}

/// What the backend tells the UI.
pub enum Update {
    Services(ServiceState),
    Dashboard {
        seq: u64,
        result: Result<Arc<Dashboard>, String>,
    },
    Explore {
        seq: u64,
        result: Result<Arc<TableData>, String>,
    },
    Telemetry(Box<Telemetry>),
    Dimensions(Dimensions),
    ExportProgress {
        done: u64,
        total: Option<u64>,
    },
    ExportDone(Result<ExportReport, String>),
    ExportPath(Option<PathBuf>),
    /// A command failed (the text says which and why).
    Error(String),
}

/// Sends updates and wakes the UI.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Update>,
    ctx: egui::Context,
}

impl Outbox {
    fn send(&self, u: Update) {
        if self.tx.send(u).is_ok() {
            self.ctx.request_repaint();
        }
    }
}

/// The UI's end of the backend.
pub struct BackendHandle {
    tx: UnboundedSender<Command>,
    rx: mpsc::Receiver<Update>,
}

impl BackendHandle {
    /// Starts the backend on `rt`: opens the services (starting embedded
    /// ones), then, when `autostart` is given, starts generating at that rate.
    pub fn spawn(
        rt: &Handle,
        cfg: Config,
        ctx: egui::Context,
        autostart: Option<Option<f64>>,
    ) -> Self {
        let (tx, cmds) = unbounded_channel();
        let (out_tx, rx) = mpsc::channel();
        let out = Outbox { tx: out_tx, ctx };
        rt.spawn(run(cfg, cmds, out, autostart));
        Self { tx, rx }
    }

    /// Queues a command; never blocks. False when the backend has ended.
    pub fn send(&self, c: Command) -> bool {
        self.tx.send(c).is_ok()
    }

    /// The next update, if one is waiting; never blocks.
    pub fn poll(&self) -> Option<Update> {
        self.rx.try_recv().ok()
    }

    /// Stops the pipeline and waits up to `timeout` for it (app exit).
    pub fn shutdown(&self, timeout: Duration) {
        let (done, wait) = mpsc::channel();
        if self.send(Command::Shutdown { done }) {
            let _ = wait.recv_timeout(timeout);
        }
    }
}

/// How often the pipeline panel's numbers are sampled while the pipeline
/// runs or drains, and while it is stopped.
const TELEMETRY_EVERY: Duration = Duration::from_secs(1);
const TELEMETRY_IDLE_EVERY: Duration = Duration::from_secs(5);
/// Service checks and dimension values: at most this often.
const SLOW_EVERY: Duration = Duration::from_secs(5);

async fn run(
    cfg: Config,
    mut cmds: UnboundedReceiver<Command>,
    out: Outbox,
    autostart: Option<Option<f64>>,
) {
    out.send(Update::Services(ServiceState::Opening));
    let mut live = match LivePipeline::open(&cfg).await {
        Ok(l) => l,
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("services unavailable: {msg}");
            out.send(Update::Services(ServiceState::Failed(msg.clone())));
            // Answer what can be answered until told to stop.
            while let Some(c) = cmds.recv().await {
                match c {
                    Command::Shutdown { done } => {
                        let _ = done.send(());
                        return;
                    }
                    Command::Watch(w) => out.send(Update::Dashboard {
                        seq: w.seq,
                        result: Err(format!("services unavailable: {msg}")),
                    }),
                    Command::Explore { seq, .. } => out.send(Update::Explore {
                        seq,
                        result: Err(format!("services unavailable: {msg}")),
                    }),
                    Command::AwaitPath(f) => {
                        let out = out.clone();
                        tokio::spawn(async move { out.send(Update::ExportPath(f.await)) });
                    }
                    _ => out.send(Update::Error(format!("services unavailable: {msg}"))),
                }
            }
            return;
        }
    };
    out.send(Update::Services(ServiceState::Ready {
        brokers: live.brokers().to_owned(),
        database: redact_url(live.database_url()),
        redis: redact_url(&live.config().redis_url),
        embedded_broker: live.is_embedded_broker(),
    }));
    let dims = Arc::new(Mutex::new(None));
    send_dimensions(live.analytics(), &out, &dims);
    if let Some(rate) = autostart {
        start(&mut live, rate, &out);
    }
    let started = Instant::now();
    let (watch_tx, watch_rx) = tokio::sync::watch::channel(None);
    tokio::spawn(watch_dashboard(
        live.analytics().clone(),
        watch_rx,
        out.clone(),
    ));
    let mut sent: Option<Telemetry> = None;
    let mut health: Option<ServiceHealth> = None;
    let mut health_at: Option<Instant> = None;
    let mut dims_at = Instant::now();
    let mut next_sample = tokio::time::Instant::now();
    loop {
        tokio::select! {
            c = cmds.recv() => {
                let Some(c) = c else { break };
                match c {
                    Command::Shutdown { done } => {
                        if let Err(e) = live.stop(Duration::from_secs(5)).await {
                            tracing::warn!("stopping the pipeline: {e:#}");
                        }
                        let _ = done.send(());
                        return;
                    }
                    Command::Watch(w) => {
                        watch_tx.send_replace(Some(w));
                    }
                    c => {
                        handle(c, &mut live, &out).await;
                        // Show the effect of start / pause / stop at once.
                        next_sample = tokio::time::Instant::now();
                    }
                }
            }
            _ = tokio::time::sleep_until(next_sample) => {
                if health_at.is_none_or(|t| t.elapsed() >= SLOW_EVERY) {
                    health_at = Some(Instant::now());
                    let h = live.health().await;
                    // Keep the time of the first identical check: the panel
                    // shows how long the services have been in this state.
                    if health.as_ref().is_none_or(|old| old.checks != h.checks) {
                        health = Some(h);
                    }
                }
                if dims_at.elapsed() >= SLOW_EVERY {
                    dims_at = Instant::now();
                    send_dimensions(live.analytics(), &out, &dims);
                }
                let t = telemetry(&mut live, started, health.clone()).await;
                let every = match t.state {
                    RunState::Running | RunState::Paused => TELEMETRY_EVERY,
                    RunState::Stopped | RunState::Failed(_) => TELEMETRY_IDLE_EVERY,
                };
                next_sample = tokio::time::Instant::now() + every;
                // Only a change wakes the UI: an idle window stays idle.
                if sent.as_ref().is_none_or(|s| !same_sample(s, &t)) {
                    sent = Some(t.clone());
                    out.send(Update::Telemetry(Box::new(t)));
                }
            }
        }
    }
    // The UI went away without a shutdown: still stop cleanly.
    let _ = live.stop(Duration::from_secs(5)).await;
}

/// Equal but for when it was taken.
fn same_sample(a: &Telemetry, b: &Telemetry) -> bool {
    a == &Telemetry {
        at: a.at,
        ..b.clone()
    }
}

/// Keeps the watched dashboard current: recomputes it when the data or the
/// minute changed (relative ranges slide by whole minutes), and sends it when
/// it was asked for anew or its numbers changed.
async fn watch_dashboard(
    a: Analytics,
    mut rx: tokio::sync::watch::Receiver<Option<Watch>>,
    out: Outbox,
) {
    let mut sent_seq = None;
    let mut sent: Option<Result<Arc<Dashboard>, String>> = None;
    let mut computed_at: Option<(crate::analytics::DataVersions, i64)> = None;
    loop {
        let w = rx.borrow_and_update().clone();
        if let Some(w) = &w {
            let fresh = sent_seq != Some(w.seq);
            let minute = chrono::Utc::now().timestamp().div_euclid(60);
            let result = match a.versions().await {
                Ok(v) => {
                    let key = (v, minute);
                    if fresh || computed_at.as_ref() != Some(&key) {
                        let r = refresh_at(&a, &w.filters, &key.0).await;
                        computed_at = r.is_ok().then_some(key);
                        Some(r)
                    } else {
                        None
                    }
                }
                Err(e) => {
                    computed_at = None;
                    Some(Err(e.to_string()))
                }
            };
            if let Some(result) = result {
                if let Err(e) = &result {
                    tracing::warn!("dashboard refresh failed: {e}");
                }
                let changed = match (&sent, &result) {
                    (Some(Ok(a)), Ok(b)) => !a.same_content(b),
                    (Some(Err(a)), Err(b)) => a != b,
                    _ => true,
                };
                if fresh || changed {
                    let result = result.map(Arc::new);
                    sent = Some(result.clone());
                    sent_seq = Some(w.seq);
                    out.send(Update::Dashboard { seq: w.seq, result });
                }
            }
        }
        let every = w.and_then(|w| w.every);
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(every.unwrap_or(Duration::from_secs(3600))), if every.is_some() => {}
        }
    }
}

fn start(live: &mut LivePipeline, rate: Option<f64>, out: &Outbox) {
    let opts = LiveOptions {
        rate,
        ..LiveOptions::default()
    };
    if let Err(e) = live.start(opts) {
        let msg = format!("starting the pipeline: {e:#}");
        tracing::error!("{msg}");
        out.send(Update::Error(msg));
    }
}

/// Reads the filter values; sends them when they differ from `last`.
fn send_dimensions(analytics: &Analytics, out: &Outbox, last: &Arc<Mutex<Option<Dimensions>>>) {
    let (a, out, last) = (analytics.clone(), out.clone(), last.clone());
    tokio::spawn(async move {
        match a.dimensions().await {
            Ok(d) => {
                let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
                if l.as_ref() != Some(&d) {
                    *l = Some(d.clone());
                    out.send(Update::Dimensions(d));
                }
            }
            Err(e) => tracing::warn!("reading filter values: {e}"),
        }
    });
}

async fn handle(c: Command, live: &mut LivePipeline, out: &Outbox) {
    match c {
        Command::Explore { seq, req } => {
            let (a, out) = (live.analytics().clone(), out.clone());
            tokio::spawn(async move {
                let result = match a.view(&req).await {
                    Ok(r) => TableData::from_frame(&r.frame).map(Arc::new),
                    Err(e) => Err(e.to_string()),
                };
                out.send(Update::Explore { seq, result });
            });
        }
        Command::Start { rate } => start(live, rate, out),
        Command::SetPaused(p) => live.set_paused(p),
        Command::SetRate(r) => live.set_rate(r),
        Command::Stop => {
            if let Err(e) = live.stop(Duration::from_secs(10)).await {
                let msg = format!("stopping the pipeline: {e:#}");
                tracing::error!("{msg}");
                out.send(Update::Error(msg));
            }
        }
        Command::Export { req, path, format } => {
            let (a, out) = (live.analytics().clone(), out.clone());
            tokio::spawn(async move {
                let mut last = Instant::now();
                let p = out.clone();
                let r = export::export_view(&a, &req, &path, format, move |done, total| {
                    // At most ~20 progress updates a second.
                    if last.elapsed() >= Duration::from_millis(50) || total == Some(done) {
                        last = Instant::now();
                        p.send(Update::ExportProgress { done, total });
                    }
                })
                .await
                .map_err(|e| e.to_string());
                match &r {
                    Ok(rep) => {
                        tracing::info!(rows = rep.rows, path = %rep.path.display(), "exported")
                    }
                    Err(e) => tracing::error!("export failed: {e}"),
                }
                out.send(Update::ExportDone(r));
            });
        }
        Command::AwaitPath(f) => {
            let out = out.clone();
            tokio::spawn(async move { out.send(Update::ExportPath(f.await)) });
        }
        Command::Watch(_) | Command::Shutdown { .. } => {}
    }
}

/// The dashboard's views, concurrently, under one read of the data versions.
async fn refresh_at(
    a: &Analytics,
    filters: &Filters,
    v: &crate::analytics::DataVersions,
) -> Result<Dashboard, String> {
    let t = Instant::now();
    let reqs: Vec<ViewRequest> = DASHBOARD_VIEWS
        .iter()
        .map(|&k| ViewRequest::new(k).with_filters(filters.clone()))
        .collect();
    let results = futures::future::try_join_all(reqs.iter().map(|r| a.view_at(r, v)))
        .await
        .map_err(|e| e.to_string())?;
    Dashboard::from_results(&results, t.elapsed())
}

async fn telemetry(
    live: &mut LivePipeline,
    started: Instant,
    health: Option<ServiceHealth>,
) -> Telemetry {
    let lag = live.lag().await;
    let state = live.state();
    let pool = live.store().pool();
    let cache = live.analytics().cache();
    let counters = cache.counters();
    Telemetry {
        at: started.elapsed().as_secs_f64(),
        state,
        rate: live.rate(),
        counters: live.counters(),
        lag,
        pool_open: pool.size(),
        pool_idle: pool.num_idle() as u32,
        pool_max: pool.options().get_max_connections(),
        cache: cache.status(),
        cache_hits: counters.values().map(|c| c.hits).sum(),
        cache_misses: counters.values().map(|c| c.misses + c.bypasses).sum(),
        health,
    }
}
