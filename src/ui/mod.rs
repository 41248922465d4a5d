//! The desktop workbench (egui/eframe).
//!
//! Immediate mode over a store: every frame reads what the backend last sent
//! (dashboard, telemetry, explorer table, log) and paints it; nothing is
//! computed or fetched on the UI thread. The backend ([`backend`]) runs on
//! the tokio runtime and wakes the UI when something arrives, so an idle
//! window does no work between refreshes.

pub mod alert_desk;
mod alerts_panel;
pub mod backend;
pub mod code;
mod dashboard;
pub mod editor;
mod explorer;
pub mod log;
pub mod model;
pub mod notebook_desk;
pub mod notebook_out;
pub mod notebooks;
mod pipeline_panel;
pub mod scripting;
mod segments_panel;
pub mod settings;
mod toasts;
pub mod widgets;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use crate::analytics::export::ExportFormat;
use crate::analytics::{Dimensions, ViewKind};
use crate::config::secrets::Keyring;
use crate::config::Config;
use backend::{BackendHandle, Command, PipelineSample, ServiceState, Update, Watch};
use explorer::ExplorerState;
use log::LogBuffer;
use model::Dashboard;
use settings::{Settings, Theme};

/// The panels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Tab {
    /// Live KPIs and charts.
    Dashboard,
    /// Generator, broker, ingest and service health.
    Pipeline,
    /// Views as tables, with export.
    Explorer,
    /// The script editor.
    Scripts,
    /// Rhai + Polars notebooks.
    Notebooks,
    /// Alert rules, their states and history.
    Alerts,
    /// Customers by RFM segment.
    Segments,
    /// Services, theme and refresh settings.
    Settings,
}

impl Tab {
    /// Every tab, in the order shown.
    pub const ALL: [Tab; 8] = [
        Tab::Dashboard,
        Tab::Pipeline,
        Tab::Explorer,
        Tab::Segments,
        Tab::Scripts,
        Tab::Notebooks,
        Tab::Alerts,
        Tab::Settings,
    ];

    /// The name on the tab.
    pub fn label(self) -> &'static str {
        match self {
            Tab::Dashboard => "Dashboard",
            Tab::Pipeline => "Pipeline",
            Tab::Explorer => "Explorer",
            Tab::Scripts => "Scripts",
            Tab::Notebooks => "Notebooks",
            Tab::Segments => "Segments",
            Tab::Alerts => "Alerts",
            Tab::Settings => "Settings",
        }
    }
}

/// Per-frame timing for the debug overlay.
#[derive(Default)]
pub(crate) struct FrameStats {
    recent: VecDeque<f32>,
}

impl FrameStats {
    fn push(&mut self, ms: f32) {
        self.recent.push_back(ms);
        if self.recent.len() > 120 {
            self.recent.pop_front();
        }
    }

    /// Mean and max of the recent frames, ms.
    pub fn summary(&self) -> (f32, f32) {
        let n = self.recent.len().max(1) as f32;
        let mean = self.recent.iter().sum::<f32>() / n;
        let max = self.recent.iter().copied().fold(0.0, f32::max);
        (mean, max)
    }
}

/// The application state.
pub struct App {
    rt: Handle,
    base_config: Config,
    backend: Option<BackendHandle>,
    /// What is in effect (persisted).
    pub settings: Settings,
    /// What the settings panel edits.
    draft: Settings,
    /// The panel shown.
    pub tab: Tab,
    /// Where the services stand.
    pub services: ServiceState,
    dims: Dimensions,
    /// The dashboard's state.
    dash: dashboard::DashboardState,
    /// Updates received from the backend, and log lines, by kind: what
    /// woke the window (the idle bench reports it).
    received: std::collections::BTreeMap<&'static str, u64>,
    next_seq: u64,
    /// The pipeline panel's state.
    pipeline: pipeline_panel::PipelineState,
    // Explorer.
    /// The explorer's state.
    pub explorer: ExplorerState,
    /// Load the explorer's view once the services are up.
    explorer_autoload: bool,
    scripts: editor::ScriptsState,
    notebooks: notebooks::NotebooksState,
    alerts: alerts_panel::AlertsState,
    segments: segments_panel::SegmentsState,
    /// From the environment: a script to open and run, scenarios to switch
    /// on, once the scripts folder has been read.
    startup_script: Option<String>,
    startup_scenarios: Vec<String>,
    // Log and toasts.
    logs: LogBuffer,
    log_seen: u64,
    toasts: toasts::Toasts,
    frames: FrameStats,
    /// Where typed passwords are kept between runs.
    keyring: Keyring,
    /// URLs whose password the next backend keeps in the keyring.
    keep_passwords: Vec<String>,
}

impl App {
    /// An app over `cfg` (services) with `settings` (persisted choices);
    /// the backend starts on the first frame, on `rt`.
    pub fn new(rt: Handle, base_config: Config, settings: Settings, logs: LogBuffer) -> Self {
        let rate_input = settings.rate;
        Self {
            rt,
            base_config,
            backend: None,
            draft: settings.clone(),
            settings,
            tab: Tab::Dashboard,
            services: ServiceState::Opening,
            dims: Dimensions::default(),
            dash: dashboard::DashboardState {
                refresh_wanted: true,
                ..Default::default()
            },
            received: Default::default(),
            next_seq: 1,
            pipeline: pipeline_panel::PipelineState {
                rate_input,
                ..Default::default()
            },
            explorer: ExplorerState {
                limit: 1_000,
                export_all: true,
                ..ExplorerState::default()
            },
            explorer_autoload: false,
            scripts: editor::ScriptsState::default(),
            notebooks: notebooks::NotebooksState::default(),
            alerts: alerts_panel::AlertsState::default(),
            segments: segments_panel::SegmentsState::default(),
            startup_script: None,
            startup_scenarios: Vec::new(),
            logs,
            log_seen: 0,
            toasts: toasts::Toasts::default(),
            frames: FrameStats::default(),
            keyring: Keyring::os(),
            keep_passwords: Vec::new(),
        }
    }

    /// Keeps typed passwords in `keyring` instead of the OS keyring.
    pub fn with_keyring(mut self, keyring: Keyring) -> Self {
        self.keyring = keyring;
        self
    }

    /// The Scripts panel's state.
    pub fn scripts(&self) -> &editor::ScriptsState {
        &self.scripts
    }

    /// The script editor's state (for tests and benches).
    pub fn scripts_mut(&mut self) -> &mut editor::ScriptsState {
        &mut self.scripts
    }

    /// The dashboard last received.
    pub fn dashboard(&self) -> Option<&Dashboard> {
        self.dash.shown.as_deref()
    }

    /// How many dashboards have arrived (each refresh adds one).
    pub fn dashboards_received(&self) -> u64 {
        self.dash.received
    }

    /// Updates received so far by kind (see [`Update::kind`]), and
    /// `"log line"`.
    pub fn received(&self) -> &std::collections::BTreeMap<&'static str, u64> {
        &self.received
    }

    /// The last pipeline sample, once one came.
    pub fn telemetry(&self) -> Option<&PipelineSample> {
        self.pipeline.telemetry.as_deref()
    }

    /// The alert rules and their states as last sent (for tests).
    pub fn alerts(&self) -> Option<&alert_desk::AlertsSnapshot> {
        self.alerts.snapshot.as_deref()
    }

    /// The customer segments as last computed (for tests).
    pub fn segments(&self) -> Option<&crate::analytics::segments::SegmentReport> {
        self.segments.report.as_ref()?.as_ref().ok().map(|r| &**r)
    }

    fn send(&mut self, c: Command) {
        if let Some(b) = &self.backend {
            if !b.send(c) {
                self.toast(
                    tracing::Level::ERROR,
                    "the background worker has stopped".into(),
                );
            }
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn toast(&mut self, level: tracing::Level, text: String) {
        self.toasts.push(level, text, Instant::now());
    }

    /// The service config these settings mean.
    fn config(&self) -> Result<Config, String> {
        self.settings.apply_to(&self.base_config)
    }

    fn start_backend(&mut self, ctx: &egui::Context) {
        self.logs.attach(ctx);
        match self.config() {
            Ok(cfg) => {
                let autostart = self
                    .settings
                    .autostart
                    .then_some(Some(self.settings.rate).filter(|r| *r > 0.0));
                let secrets = backend::Secrets {
                    keyring: self.keyring.clone(),
                    keep: std::mem::take(&mut self.keep_passwords),
                };
                self.backend = Some(BackendHandle::spawn(
                    &self.rt,
                    cfg,
                    ctx.clone(),
                    autostart,
                    secrets,
                ));
                self.services = ServiceState::Opening;
            }
            Err(e) => {
                self.services = ServiceState::Failed(format!("invalid settings: {e}"));
            }
        }
    }

    /// Ends the backend (stopping the pipeline) and starts a new one with the
    /// current settings.
    pub fn reconnect(&mut self, ctx: &egui::Context) {
        if let Some(b) = self.backend.take() {
            // Stopping happens in the background; the old services go with it.
            let (done, _wait) = std::sync::mpsc::channel();
            b.send(Command::Shutdown { done });
        }
        self.pipeline.telemetry = None;
        self.notebooks.reset_in_flight();
        self.dash = dashboard::DashboardState {
            custom_from: std::mem::take(&mut self.dash.custom_from),
            custom_to: std::mem::take(&mut self.dash.custom_to),
            refresh_wanted: true,
            ..Default::default()
        };
        self.start_backend(ctx);
    }

    /// Stops the pipeline, waiting up to `timeout` (benches and tests; the
    /// window uses [`App::begin_shutdown`]).
    pub fn shutdown(&mut self, timeout: Duration) {
        if let Some(b) = self.backend.take() {
            b.shutdown(timeout);
        }
    }

    /// Asks the backend to stop the pipeline without waiting; the receiver
    /// gets `()` once it has.
    pub(crate) fn begin_shutdown(&mut self) -> Option<std::sync::mpsc::Receiver<()>> {
        self.backend.take().and_then(|b| b.begin_shutdown())
    }

    /// Applies what the backend sent since the last frame.
    fn drain_updates(&mut self) {
        let Some(b) = &self.backend else { return };
        let mut updates = Vec::new();
        while let Some(u) = b.poll() {
            updates.push(u);
        }
        for u in updates {
            *self.received.entry(u.kind()).or_default() += 1;
            match u {
                Update::Services(s) => {
                    if let ServiceState::Failed(e) = &s {
                        self.toast(tracing::Level::ERROR, format!("services unavailable: {e}"));
                    }
                    if matches!(s, ServiceState::Ready { .. }) {
                        self.dash.refresh_wanted = true;
                        if std::mem::take(&mut self.explorer_autoload) {
                            self.services = s;
                            self.load_explorer();
                            continue;
                        }
                    }
                    self.services = s;
                }
                Update::Dashboard { seq, result } => self.dash.apply(seq, result),
                Update::Explore { seq, result } => self.explorer.apply_explored(seq, result),
                Update::Sorted { seq, sort, order } => {
                    if !self.notebooks.apply_sorted(seq, &order) {
                        self.explorer.apply_sorted(seq, sort, order);
                    }
                }
                Update::Telemetry(t) => self.pipeline.apply(t),
                Update::Dimensions(d) => self.dims = d,
                Update::ExportProgress { done, total } => {
                    self.explorer.export_progress = Some((done, total));
                }
                Update::ExportDone(r) if self.notebooks.exporting => {
                    self.notebooks.exporting = false;
                    self.notebooks.export_result = Some(self.export_done(r));
                }
                Update::ExportDone(r) if self.segments.exporting => {
                    self.segments.exporting = false;
                    self.segments.export_result = Some(self.export_done(r));
                }
                Update::ExportDone(r) if self.scripts.exporting => {
                    self.scripts.exporting = false;
                    self.scripts.export_result = Some(self.export_done(r));
                }
                Update::ExportDone(r) => {
                    self.explorer.export_progress = None;
                    self.explorer.export_result = Some(self.export_done(r));
                }
                Update::ExportPath(p) if self.scripts.browsing => {
                    self.scripts.browsing = false;
                    if let Some(p) = p {
                        self.scripts.export_path = p.display().to_string();
                    }
                }
                Update::Scripts(c) => {
                    self.scripts.set_catalog(c);
                    for s in std::mem::take(&mut self.startup_scenarios) {
                        let rel = if s.contains('/') {
                            s
                        } else {
                            format!("generator/{s}")
                        };
                        self.send(Command::Scenario { rel, on: true });
                    }
                    if let Some(rel) = self.startup_script.take() {
                        self.scripts.open_script(&rel);
                        self.run_script();
                    }
                }
                Update::ScriptRun { seq, result } => self.scripts.apply_run(seq, result),
                Update::ScriptSaved(r) => match r {
                    Ok(rel) => {
                        if let Some((r, _)) = self.scripts.saving.take() {
                            self.scripts.drafts.remove(&r);
                        }
                        self.toast(tracing::Level::INFO, format!("saved {rel}"));
                    }
                    Err(e) => {
                        self.scripts.saving = None;
                        self.toast(tracing::Level::ERROR, e);
                    }
                },
                Update::ExportPath(p) => {
                    if let Some(p) = p {
                        self.explorer.export_path = p.display().to_string();
                    }
                }
                Update::Notebooks(c) => {
                    if let Some(path) = self.notebooks.set_catalog(c) {
                        // Changed on disk, no edits here: follow the file.
                        self.send(Command::OpenNotebook(path));
                    }
                    self.notebooks_startup();
                }
                Update::NotebookOpened { path, result } => match result {
                    Ok(o) => {
                        self.notebooks.apply_opened(path, *o);
                        self.notebooks_startup();
                    }
                    Err(e) => {
                        if self.notebooks.loading.as_ref() == Some(&path) {
                            self.notebooks.loading = None;
                        }
                        // A notebook asked for at start that cannot be read
                        // is not asked for again.
                        self.notebooks.startup = None;
                        self.toast(tracing::Level::ERROR, format!("{}: {e}", path.display()));
                    }
                },
                Update::NotebookCellStarted { path, id, .. } => {
                    self.notebooks.apply_started(&path, &id)
                }
                Update::NotebookCell { path, id, done, .. } => {
                    self.notebooks.apply_cell(&path, &id, *done)
                }
                Update::NotebookRunEnded { seq, path, stopped } => {
                    self.notebooks.apply_run_ended(&path, seq);
                    if stopped {
                        self.toast(tracing::Level::INFO, "stopped the notebook's cells".into());
                    }
                }
                Update::NotebookSaved { path, result } => {
                    self.notebooks.apply_saved(&path, &result);
                    match result {
                        Ok(_) => {
                            self.toast(tracing::Level::INFO, format!("saved {}", path.display()))
                        }
                        Err(e) => self.toast(tracing::Level::ERROR, e),
                    }
                }
                Update::NotebookCreated(r) => match r {
                    Ok(p) => self.open_notebook(p),
                    Err(e) => self.toast(tracing::Level::ERROR, e),
                },
                Update::NotebookReport(r) => {
                    if let Err(e) = &r {
                        self.toast(tracing::Level::ERROR, format!("report: {e}"));
                    }
                    self.notebooks.apply_report(r);
                }
                Update::AlertNotice(n) => {
                    use crate::alerts::{Reason, Severity};
                    let level = match (n.reason, n.severity) {
                        (Reason::Resolved | Reason::NoData, _) | (_, Severity::Info) => {
                            tracing::Level::INFO
                        }
                        (_, Severity::Warning) => tracing::Level::WARN,
                        (_, Severity::Critical) => tracing::Level::ERROR,
                    };
                    self.toast(level, format!("alert: {}", n.summary));
                }
                Update::Alerts(s) => self.alerts.apply(s),
                Update::Segments { seq, result } => self.segments.apply(seq, result),
                Update::AlertsChanged => self.alerts.history_wanted = true,
                Update::AlertHistory { rule, rows } => {
                    if rule == self.alerts.selected {
                        self.alerts.history = Some((rule, rows));
                    }
                }
                Update::Error(e) => self.toast(tracing::Level::ERROR, e),
                Update::Warning(w) => self.toast(tracing::Level::WARN, w),
            }
        }
    }

    /// An export's outcome as the line the panel shows, also as a toast.
    fn export_done(
        &mut self,
        r: Result<crate::analytics::export::ExportReport, String>,
    ) -> Result<String, String> {
        let r = r.map(|rep| {
            format!(
                "wrote {} rows ({} bytes) to {}",
                rep.rows,
                rep.bytes,
                rep.path.display()
            )
        });
        match &r {
            Ok(m) => self.toast(tracing::Level::INFO, m.clone()),
            Err(e) => self.toast(tracing::Level::ERROR, format!("export failed: {e}")),
        }
        r
    }

    /// Opens the native save dialog, suggesting the file name of `current`;
    /// the path chosen arrives as [`Update::ExportPath`]. The dialog is
    /// created here (some platforms need the UI thread) and awaited in the
    /// background.
    fn browse_save_path(&mut self, current: &str) {
        let name = PathBuf::from(current)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dialog = rfd::AsyncFileDialog::new()
            .set_file_name(name)
            .add_filter("CSV", &["csv"])
            .add_filter("Parquet", &["parquet"])
            .save_file();
        self.send(Command::AwaitPath(Box::pin(async move {
            dialog.await.map(|h| h.path().to_path_buf())
        })));
    }

    fn drain_log(&mut self) {
        let new = self.logs.since(self.log_seen);
        for l in new {
            self.log_seen = l.seq + 1;
            // Log lines stay in the log (the pipeline panel shows it): an
            // error reaches the user once, as a toast or a panel's state,
            // from the update that carries it.
            *self.received.entry("log line").or_default() += 1;
        }
    }

    /// Tells the backend what the dashboard shows when that changed or a
    /// refresh was asked for. The backend refreshes on the interval by itself
    /// and sends only changes, so an idle window is not woken.
    fn sync_watch(&mut self) {
        if !matches!(self.services, ServiceState::Ready { .. }) {
            return;
        }
        let every = self
            .settings
            .auto_refresh
            .then(|| Duration::from_secs_f64(self.settings.refresh_secs.max(1.0)));
        let want = (self.settings.filters.clone(), every);
        if self.dash.refresh_wanted || self.dash.watching.as_ref() != Some(&want) {
            let seq = self.seq();
            self.send(Command::Watch(Watch {
                seq,
                filters: want.0.clone(),
                every,
            }));
            self.dash.pending = Some(seq);
            self.dash.watch_seq = seq;
            self.dash.watching = Some(want);
            self.dash.refresh_wanted = false;
        }
    }

    /// Asks for a refresh now (filters changed, or the user asked).
    pub(crate) fn request_refresh(&mut self) {
        self.dash.refresh_wanted = true;
    }

    fn apply_theme(&self, ctx: &egui::Context) {
        ctx.set_theme(match self.settings.theme {
            Theme::Dark => egui::Theme::Dark,
            Theme::Light => egui::Theme::Light,
        });
    }

    /// One frame of the whole app.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let started = Instant::now();
        let ctx = ui.ctx().clone();
        if self.backend.is_none() && !matches!(self.services, ServiceState::Failed(_)) {
            self.apply_theme(&ctx);
            self.start_backend(&ctx);
        }
        self.drain_updates();
        self.drain_log();
        self.sync_watch();

        egui::Panel::top("top_bar").show(ui, |ui| self.top_bar_ui(ui));
        egui::Panel::bottom("status_bar").show(ui, |ui| self.status_bar_ui(ui));
        egui::CentralPanel::default_margins().show(ui, |ui| match self.tab {
            Tab::Dashboard => self.dashboard_ui(ui),
            Tab::Pipeline => self.pipeline_ui(ui),
            Tab::Explorer => self.explorer_ui(ui),
            Tab::Scripts => self.scripts_ui(ui),
            Tab::Notebooks => self.notebooks_ui(ui),
            Tab::Alerts => self.alerts_ui(ui),
            Tab::Segments => self.segments_ui(ui),
            Tab::Settings => {
                let current = self.settings.clone();
                if settings::settings_ui(ui, &mut self.draft, &current) {
                    let reconnect = self.draft.services_differ(&current);
                    self.keep_passwords = settings::typed_passwords(&self.draft, &current, |var| {
                        std::env::var(var).ok()
                    });
                    self.settings = self.draft.clone();
                    self.apply_theme(&ctx);
                    if reconnect {
                        self.reconnect(&ctx);
                    } else {
                        self.request_refresh();
                    }
                }
            }
        });
        self.toasts.toasts_ui(&ctx);
        if self.settings.debug_overlay {
            self.debug_overlay_ui(&ctx);
        }

        // Wake for toasts to expire; otherwise only when the backend sends
        // something.
        let now = Instant::now();
        if let Some(d) = self.toasts.expire(now) {
            ctx.request_repaint_after(d.max(Duration::from_millis(50)));
        }
        self.frames.push(started.elapsed().as_secs_f32() * 1e3);
    }

    fn top_bar_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading("salespulse");
            ui.separator();
            for t in Tab::ALL {
                if ui.selectable_label(self.tab == t, t.label()).clicked() {
                    self.tab = t;
                    if t == Tab::Settings {
                        self.draft = self.settings.clone();
                    }
                }
                let firing = self.alerts.firing();
                if t == Tab::Alerts && firing > 0 {
                    ui.label(
                        egui::RichText::new(format!("{firing} firing"))
                            .color(widgets::RED)
                            .strong(),
                    )
                    .on_hover_text("alert rules firing now");
                }
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let (text, color) = match self.pipeline.telemetry.as_ref().map(|t| &t.state) {
                    Some(s) => (
                        format!("pipeline {}", s.label()),
                        match s {
                            crate::services::live::RunState::Running => widgets::GREEN,
                            crate::services::live::RunState::Failed(_) => widgets::RED,
                            _ => ui.visuals().weak_text_color(),
                        },
                    ),
                    None => ("pipeline —".to_owned(), ui.visuals().weak_text_color()),
                };
                ui.label(egui::RichText::new(text).color(color));
            });
        });
    }

    fn status_bar_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            match &self.services {
                ServiceState::Opening => {
                    ui.spinner();
                    ui.label("starting services…");
                }
                ServiceState::Ready {
                    brokers,
                    database,
                    embedded_broker,
                    ..
                } => {
                    ui.label(format!(
                        "Kafka {}{} · PostgreSQL {}",
                        brokers,
                        if *embedded_broker { " (embedded)" } else { "" },
                        database
                    ));
                }
                ServiceState::Failed(e) => {
                    ui.colored_label(widgets::RED, format!("services unavailable: {e}"));
                    if ui.button("Retry").clicked() {
                        let ctx = ui.ctx().clone();
                        self.reconnect(&ctx);
                    }
                }
            }
            if let Some(t) = &self.pipeline.telemetry {
                ui.separator();
                if let Some(e) = &t.cache.error {
                    ui.colored_label(widgets::AMBER, format!("frame cache bypassed: {e}"));
                }
                let total = t.cache_hits + t.cache_misses;
                if total > 0 {
                    ui.label(format!(
                        "cache hit rate {}",
                        model::percent(t.cache_hits as f64 / total as f64)
                    ));
                }
            }
        });
    }

    fn debug_overlay_ui(&mut self, ctx: &egui::Context) {
        let (mean, max) = self.frames.summary();
        egui::Area::new(egui::Id::unique("frame_time"))
            .anchor(egui::Align2::RIGHT_TOP, egui::vec2(-8.0, 40.0))
            .order(egui::Order::Foreground)
            .show(ctx, |ui| {
                egui::Frame::popup(ui.style()).show(ui, |ui| {
                    ui.monospace(format!("frame {mean:.2} ms (max {max:.2})"));
                });
            });
    }

    /// `SALESPULSE_TAB` (a panel's label: dashboard, pipeline, explorer,
    /// segments, alerts, scripts, notebooks, settings) opens a panel, `SALESPULSE_EXPLORE` (a view name) loads it
    /// in the explorer,
    /// `SALESPULSE_LAST` (15m, 1h, 24h, 7d, all) sets the range and
    /// `SALESPULSE_RATE` the generation rate and `SALESPULSE_AUTOSTART=0`
    /// keeps the generator off; `SALESPULSE_SCRIPT` (e.g.
    /// `metrics/basket_size_distribution.rhai`) opens and runs a script and
    /// `SALESPULSE_SCENARIOS` (comma-separated scenario files) switches
    /// scenarios on; `SALESPULSE_NOTEBOOK` (a file of the notebooks folder)
    /// opens a notebook and `SALESPULSE_NOTEBOOK_RUN=1` runs it: for demos,
    /// measurements and the screenshot script.
    pub(crate) fn apply_startup_env(&mut self) {
        if let Ok(v) = std::env::var("SALESPULSE_SCRIPT") {
            self.startup_script = Some(v.trim().to_owned()).filter(|v| !v.is_empty());
        }
        if let Ok(v) = std::env::var("SALESPULSE_SCENARIOS") {
            self.startup_scenarios = v
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Ok(v) = std::env::var("SALESPULSE_NOTEBOOK") {
            let run = std::env::var("SALESPULSE_NOTEBOOK_RUN")
                .is_ok_and(|r| matches!(r.trim(), "1" | "true" | "yes"));
            let v = v.trim().to_owned();
            if !v.is_empty() {
                self.notebooks.startup = Some((v, run));
            }
        }
        if let Ok(v) = std::env::var("SALESPULSE_AUTOSTART") {
            self.settings.autostart = !matches!(v.trim(), "0" | "false" | "no");
        }
        if let Ok(v) = std::env::var("SALESPULSE_LAST") {
            match crate::analytics::TimeRange::parse_last(&v) {
                Ok(r) => self.settings.filters.range = r,
                Err(e) => tracing::warn!("SALESPULSE_LAST: {e}"),
            }
        }
        if let Ok(v) = std::env::var("SALESPULSE_RATE") {
            match v.trim().parse::<f64>() {
                Ok(r) if r >= 0.0 => {
                    self.settings.rate = r;
                    self.pipeline.rate_input = r;
                }
                _ => tracing::warn!("SALESPULSE_RATE={v:?} is not a rate"),
            }
        }
        if let Ok(t) = std::env::var("SALESPULSE_TAB") {
            match Tab::ALL
                .into_iter()
                .find(|x| x.label().eq_ignore_ascii_case(t.trim()))
            {
                Some(tab) => self.tab = tab,
                None => tracing::warn!("SALESPULSE_TAB={t:?} is not a panel"),
            }
        }
        if let Ok(v) = std::env::var("SALESPULSE_EXPLORE") {
            match v.parse::<ViewKind>() {
                Ok(v) => {
                    self.explorer.view = Some(v);
                    self.explorer_autoload = true;
                }
                Err(e) => tracing::warn!("SALESPULSE_EXPLORE: {e}"),
            }
        }
    }

    /// Where the export of the explorer goes by default.
    fn default_export_path(&self, format: ExportFormat) -> PathBuf {
        let view = self.explorer.view.map_or("transactions", |v| v.as_str());
        let ext = match format {
            ExportFormat::Csv | ExportFormat::CsvRaw => "csv",
            ExportFormat::Parquet => "parquet",
        };
        dirs_home().join(format!("salespulse-{view}.{ext}"))
    }
}

fn dirs_home() -> PathBuf {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

impl Drop for App {
    /// Stops the pipeline if nobody did (a window closed without `on_exit`,
    /// a test that failed half-way): its threads would otherwise keep the
    /// runtime alive.
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(10));
    }
}

/// The eframe shell around [`App`]: persistence and exit.
pub(crate) struct Workbench {
    /// The app in the window.
    pub app: App,
    /// Where `on_exit` leaves the signal that the pipeline has stopped.
    exit: Arc<std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>>,
}

impl eframe::App for Workbench {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.app.ui(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        settings::save(storage, &self.app.settings, |var| std::env::var(var).ok());
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        // The window thread does not wait: `run` waits for the pipeline to
        // stop once the window is gone.
        let wait = self.app.begin_shutdown();
        *self.exit.lock().unwrap_or_else(|p| p.into_inner()) = wait;
    }
}

/// The window's icon (the same drawing as the desktop entry's).
const WINDOW_ICON: &[u8] = include_bytes!("../../assets/salespulse.png");

/// Opens the window and runs until it is closed.
pub fn run(rt: Handle, base_config: Config, logs: LogBuffer) -> anyhow::Result<()> {
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("salespulse")
        // The desktop entry's StartupWMClass (assets/salespulse.desktop).
        .with_app_id("salespulse")
        .with_inner_size([1280.0, 800.0])
        .with_min_inner_size([1024.0, 640.0]);
    match eframe::icon_data::from_png_bytes(WINDOW_ICON) {
        Ok(icon) => viewport = viewport.with_icon(icon),
        Err(e) => tracing::warn!(error = %e, "the window icon could not be decoded"),
    }
    let options = eframe::NativeOptions {
        viewport,
        persist_window: true,
        ..Default::default()
    };
    let exit = Arc::new(std::sync::Mutex::new(None));
    let exit_slot = Arc::clone(&exit);
    let opened = eframe::run_native(
        "salespulse",
        options,
        Box::new(move |cc| {
            let settings = settings::load(cc.storage, &base_config, |var| std::env::var(var).ok());
            let mut app = App::new(rt, base_config, settings, logs);
            app.apply_startup_env();
            Ok(Box::new(Workbench {
                app,
                exit: Arc::clone(&exit_slot),
            }))
        }),
    )
    .map_err(|e| anyhow::anyhow!("the window could not be opened: {e}"));
    let wait = exit.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(wait) = wait {
        if wait.recv_timeout(Duration::from_secs(8)).is_err() {
            tracing::warn!("the pipeline did not stop within 8 s; exiting anyway");
        }
    }
    opened
}

#[cfg(test)]
mod tests {
    use super::WINDOW_ICON;

    #[test]
    fn the_window_icon_is_a_square_png_with_transparent_corners() {
        let icon = eframe::icon_data::from_png_bytes(WINDOW_ICON).unwrap();
        assert_eq!((icon.width, icon.height), (256, 256));
        assert_eq!(icon.rgba.len(), 256 * 256 * 4);
        // The rounded corner is transparent, the middle is opaque.
        assert_eq!(icon.rgba[3], 0);
        let mid = (128 * 256 + 128) * 4 + 3;
        assert_eq!(icon.rgba[mid], 255);
    }
}
