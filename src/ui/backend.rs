//! The app's background side: owns the services and the pipeline, runs
//! queries and exports on the tokio runtime, and sends what it learns to the
//! UI through a channel, waking the UI only when something arrived.
//!
//! The UI thread only ever calls [`BackendHandle::send`] (non-blocking) and
//! [`BackendHandle::poll`] (`try_recv`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::runtime::Handle;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use polars::prelude::DataFrame;

use super::model::{Dashboard, MetricPanel, MetricView, TableData, DASHBOARD_VIEWS};
use super::notebook_desk::{
    self, CellDone, CellJob, FileStamp, NotebookCatalog, NotebookDesk, Opened,
};
use super::scripting::{self, Catalog, ScriptKind};
use super::widgets::SortBy;
use crate::analytics::export::{self, ExportFormat, ExportReport};
use crate::analytics::metrics::{Metric, MetricInfo, MetricKind};
use crate::analytics::{Analytics, Dimensions, Filters, ViewRequest};
use crate::cache::CacheStatus;
use crate::config::secrets::Keyring;
use crate::config::{redact_url, Config};
use crate::notebook::Notebook;
use crate::script::ScriptError;
use crate::services::live::{Counters, LiveOptions, LivePipeline, RunState, ServiceHealth};

/// What the UI asks for.
pub enum Command {
    /// Show the dashboard for `filters`: computed now (the answer carries
    /// `seq`), then, with `every`, recomputed on that interval — sent again
    /// only when the numbers changed.
    Watch(Watch),
    /// One view (or raw transactions) for the explorer, in `sort`'s order
    /// when given.
    Explore {
        /// Answer tag: only the newest request's answer is shown.
        seq: u64,
        /// The view and its filters.
        req: ViewRequest,
        /// The order to return the rows in, if any.
        sort: Option<SortBy>,
    },
    /// The row order of `table` sorted by `sort` (computed off the UI
    /// thread: a table can hold a million rows).
    Sort {
        /// Answer tag (the table's explore request).
        seq: u64,
        /// The table shown.
        table: Arc<TableData>,
        /// Column and direction.
        sort: SortBy,
    },
    /// Starts generation and ingest.
    Start {
        /// Events per second; `None` = as fast as possible.
        rate: Option<f64>,
    },
    /// Pauses (`true`) or resumes generation.
    SetPaused(bool),
    /// Changes the generation rate (`None` = as fast as possible).
    SetRate(Option<f64>),
    /// Stops generation, lets ingest catch up, stops ingest.
    Stop,
    /// Writes every row of `req` to `path`.
    Export {
        /// The view to export (all its rows, not the explorer's page).
        req: ViewRequest,
        /// The file to write.
        path: PathBuf,
        /// CSV or Parquet.
        format: ExportFormat,
    },
    /// Writes a frame (a script's result) to `path`.
    ExportFrame {
        /// The frame to write.
        frame: Arc<DataFrame>,
        /// The file to write.
        path: PathBuf,
        /// CSV or Parquet.
        format: ExportFormat,
    },
    /// Awaits a native file dialog (created on the UI thread) and reports
    /// the chosen path.
    AwaitPath(BoxFuture<'static, Option<PathBuf>>),
    /// Runs a script's text as it is in the editor (not saved), under
    /// `filters`; the answer carries `seq`. A newer run cancels an older one.
    RunScript {
        /// Answer tag: only the newest run's answer is shown.
        seq: u64,
        /// The script's path inside the scripts folder (decides its kind).
        rel: String,
        /// The script's text.
        text: String,
        /// Filters a metric script runs under.
        filters: Filters,
    },
    /// Stops the script running.
    CancelScript,
    /// Writes a script to the scripts folder (`rel` inside it).
    SaveScript {
        /// The path inside the scripts folder.
        rel: String,
        /// The text to write.
        text: String,
    },
    /// Switches the scenario of script `rel` on or off.
    Scenario {
        /// The scenario script's path inside the scripts folder.
        rel: String,
        /// On (`true`) or off.
        on: bool,
    },
    /// Makes the shop script `rel` the generator's.
    UseShop(String),
    /// Reads a notebook of the notebooks folder for the panel.
    OpenNotebook(PathBuf),
    /// Runs cells of a notebook, in order, in its session (a fresh one
    /// when `fresh`), under `filters`; each answered when done.
    RunCells {
        /// The run's tag.
        seq: u64,
        /// The notebook (its session).
        path: PathBuf,
        /// The cells, in order.
        cells: Vec<CellJob>,
        /// Start a new session first.
        fresh: bool,
        /// Filters the frame functions read under.
        filters: Filters,
    },
    /// Stops the cell of a notebook running; its queued ones do not run.
    StopCells(PathBuf),
    /// Forgets a notebook's session (its variables).
    RestartNotebook(PathBuf),
    /// Writes a notebook, outputs included.
    SaveNotebook {
        /// Its file (in the notebooks folder).
        path: PathBuf,
        /// The document.
        notebook: Box<Notebook>,
    },
    /// Makes a new notebook from the name typed.
    NewNotebook(String),
    /// Writes a notebook's offline HTML report.
    NotebookReport {
        /// Its file (in the notebooks folder).
        path: PathBuf,
        /// The document as shown.
        notebook: Box<Notebook>,
    },
    /// Writes the rows a table output keeps (a notebook's table whose
    /// whole frame is not in memory).
    ExportTable {
        /// The output's data resource.
        resource: Arc<serde_json::Value>,
        /// The file to write.
        path: PathBuf,
        /// CSV or Parquet.
        format: ExportFormat,
    },
    /// Computes the customer segments now and `period_days` earlier.
    Segments {
        /// Answer tag: only the newest request's answer is shown.
        seq: u64,
        /// The period movement is measured over.
        period_days: u32,
    },
    /// Writes the customers of one segment to `path`.
    ExportSegment {
        /// Every customer with its segment (the panel's report).
        customers: Arc<DataFrame>,
        /// The segment.
        segment: String,
        /// The file to write.
        path: PathBuf,
        /// CSV or Parquet.
        format: ExportFormat,
    },
    /// Mutes an alert rule (`*`: all) for `minutes`.
    SilenceAlert {
        /// The rule's name.
        rule: String,
        /// For how long.
        minutes: u32,
    },
    /// Ends a silence.
    UnsilenceAlert(i64),
    /// Asks for the alert history (of one rule, or of all).
    AlertHistory(Option<String>),
    /// Stops the pipeline and ends the backend; `done` is sent when finished.
    Shutdown {
        /// Receives `()` once everything has stopped.
        done: mpsc::Sender<()>,
    },
}

/// What the dashboard watches.
#[derive(Clone, Debug, PartialEq)]
pub struct Watch {
    /// Answer tag: only the newest watch's answers are shown.
    pub seq: u64,
    /// The filters of every view on the dashboard.
    pub filters: Filters,
    /// Recompute on this interval and, sooner, when committed data changes
    /// (at most once per [`LIVE_REFRESH_GAP`]); `None` = once.
    pub every: Option<Duration>,
}

/// Where the services stand.
#[derive(Clone, Debug, PartialEq)]
pub enum ServiceState {
    /// Being opened (the embedded database can take seconds).
    Opening,
    /// Open; the addresses in use, passwords redacted.
    Ready {
        /// Kafka bootstrap servers.
        brokers: String,
        /// The database URL, redacted.
        database: String,
        /// The Redis URL, redacted.
        redis: String,
        /// Whether the broker is the in-process mock cluster.
        embedded_broker: bool,
    },
    /// Could not be opened (the text says which service and why).
    Failed(String),
}

/// One sample of everything the pipeline panel shows.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineSample {
    /// Seconds since the backend started.
    pub at: f64,
    /// Where the generator stands.
    pub state: RunState,
    /// Generation rate setting when running (`None` inside = unlimited).
    pub rate: Option<Option<f64>>,
    /// Counters since the services were opened.
    pub counters: Counters,
    /// Whether ingest writes succeed or are being retried.
    pub ingest: crate::pipeline::ingest::IngestHealth,
    /// Consumer lag per partition, or why it is unknown.
    pub lag: Result<Vec<(i32, i64)>, String>,
    /// Database connections open.
    pub pool_open: u32,
    /// Database connections open and idle.
    pub pool_idle: u32,
    /// Most database connections the pool opens.
    pub pool_max: u32,
    /// Whether the Redis frame cache is in use, and if not why.
    pub cache: CacheStatus,
    /// Frame cache hits since start.
    pub cache_hits: u64,
    /// Frame cache misses since start.
    pub cache_misses: u64,
    /// The last service checks, once they have run.
    pub health: Option<ServiceHealth>,
    /// The shop script in use (relative to the scripts folder).
    pub shop: String,
    /// Scenarios on: name, script and wall-clock seconds left (`None`:
    /// until switched off; 0: ended).
    pub scenarios: Vec<ScenarioOn>,
}

/// A scenario that is on.
#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioOn {
    /// The scenario's name.
    pub name: String,
    /// Its script, relative to the scripts folder.
    pub rel: String,
    /// Wall-clock seconds left (`None`: until switched off; 0: ended).
    pub remaining_secs: Option<u64>,
}

/// A script run's result, ready to preview.
#[derive(Clone, Debug)]
pub struct ScriptOutput {
    /// Set for metric scripts.
    pub info: Option<MetricInfo>,
    /// The frame the script returned (or made of its value).
    pub frame: Arc<DataFrame>,
    /// How to show it.
    pub view: MetricView,
    /// One line about it (rows, what a generator script defines, timing).
    pub summary: String,
}

/// A table for the explorer, and its row order when it was asked sorted.
#[derive(Clone, Debug)]
pub struct Explored {
    /// The rows, formatted.
    pub table: Arc<TableData>,
    /// The sort asked for and the row order it gives.
    pub order: Option<(SortBy, Vec<usize>)>,
}

/// Sorts `table` by `sort` on a blocking thread (it can be large).
async fn sorted_order(table: Arc<TableData>, sort: SortBy) -> Vec<usize> {
    tokio::task::spawn_blocking(move || table.sorted_order(sort.column, sort.descending))
        .await
        .unwrap_or_default()
}

/// Answers [`Command::Sort`] from a task (it needs no service).
fn sort_in_background(out: &Outbox, seq: u64, table: Arc<TableData>, sort: SortBy) {
    let out = out.clone();
    tokio::spawn(async move {
        let order = sorted_order(table, sort).await;
        out.send(Update::Sorted { seq, sort, order });
    });
}

/// What the backend tells the UI.
pub enum Update {
    /// The services changed state.
    Services(ServiceState),
    /// The dashboard for a [`Watch`].
    Dashboard {
        /// The watch's tag.
        seq: u64,
        /// The views, or why they could not be computed.
        result: Result<Arc<Dashboard>, String>,
    },
    /// The answer to [`Command::Explore`].
    Explore {
        /// The request's tag.
        seq: u64,
        /// The table, or why it could not be loaded.
        result: Result<Explored, String>,
    },
    /// The answer to [`Command::Sort`].
    Sorted {
        /// The request's tag.
        seq: u64,
        /// The sort that was asked for.
        sort: SortBy,
        /// Row indices in that order.
        order: Vec<usize>,
    },
    /// A new sample for the pipeline panel (about once a second).
    Telemetry(Box<PipelineSample>),
    /// The filter choices (categories, regions, …) in the data.
    Dimensions(Dimensions),
    /// Rows written so far by an export.
    ExportProgress {
        /// Rows written.
        done: u64,
        /// Rows in all, when known.
        total: Option<u64>,
    },
    /// An export ended: what was written, or why not.
    ExportDone(Result<ExportReport, String>),
    /// The path chosen in a file dialog (`None`: cancelled).
    ExportPath(Option<PathBuf>),
    /// The scripts folder, rescanned (sent at start and on every change).
    Scripts(Arc<Catalog>),
    /// The answer to [`Command::RunScript`].
    ScriptRun {
        /// The run's tag.
        seq: u64,
        /// The output, or the script's error with its position.
        result: Result<Arc<ScriptOutput>, ScriptError>,
    },
    /// A script was saved (its relative path) or could not be.
    ScriptSaved(Result<String, String>),
    /// The notebooks folder, read (at start and on every change).
    Notebooks(Arc<NotebookCatalog>),
    /// The answer to [`Command::OpenNotebook`].
    NotebookOpened {
        /// The file.
        path: PathBuf,
        /// The notebook, or why it cannot be read.
        result: Result<Box<Opened>, String>,
    },
    /// A notebook cell started running.
    NotebookCellStarted {
        /// The run's tag.
        seq: u64,
        /// The notebook.
        path: PathBuf,
        /// The cell's id.
        id: String,
    },
    /// A notebook cell ran.
    NotebookCell {
        /// The run's tag.
        seq: u64,
        /// The notebook.
        path: PathBuf,
        /// The cell's id.
        id: String,
        /// Its outputs.
        done: Box<CellDone>,
    },
    /// A run of notebook cells ended (`stopped`: by Stop).
    NotebookRunEnded {
        /// The run's tag.
        seq: u64,
        /// The notebook.
        path: PathBuf,
        /// Stopped by the user.
        stopped: bool,
    },
    /// A notebook was saved (the file's new stamp) or could not be.
    NotebookSaved {
        /// The file.
        path: PathBuf,
        /// Its stamp, or why not.
        result: Result<Option<FileStamp>, String>,
    },
    /// A new notebook was made (its file) or could not be.
    NotebookCreated(Result<PathBuf, String>),
    /// A notebook's report was written (its file) or could not be.
    NotebookReport(Result<PathBuf, String>),
    /// The answer to [`Command::Segments`].
    Segments {
        /// The request's tag.
        seq: u64,
        /// The report, or why not.
        result: Result<Arc<crate::analytics::segments::SegmentReport>, String>,
    },
    /// An alert rule notified (firing, resolved, …): a toast.
    AlertNotice(Box<crate::alerts::Notification>),
    /// The alert rules, their states and the silences (sent when they
    /// change).
    Alerts(Arc<super::alert_desk::AlertsSnapshot>),
    /// A silence was added or ended: the panel asks for its history again.
    AlertsChanged,
    /// The answer to [`Command::AlertHistory`].
    AlertHistory {
        /// The rule asked for (`None`: all).
        rule: Option<String>,
        /// Its rows, newest first.
        rows: Vec<crate::alerts::history::Event>,
    },
    /// A command failed (the text says which and why).
    Error(String),
    /// Something the user should know that did not fail a command.
    Warning(String),
}

impl Update {
    /// What kind of update this is (for the idle bench's account of what
    /// woke the window).
    pub fn kind(&self) -> &'static str {
        match self {
            Update::Services(_) => "services",
            Update::Dashboard { .. } => "dashboard",
            Update::Explore { .. } => "explore",
            Update::Sorted { .. } => "sorted",
            Update::Telemetry(_) => "telemetry",
            Update::Dimensions(_) => "dimensions",
            Update::ExportProgress { .. } => "export progress",
            Update::ExportDone(_) => "export done",
            Update::ExportPath(_) => "export path",
            Update::Scripts(_) => "scripts",
            Update::ScriptRun { .. } => "script run",
            Update::ScriptSaved(_) => "script saved",
            Update::Notebooks(_) => "notebooks",
            Update::NotebookOpened { .. } => "notebook opened",
            Update::NotebookCellStarted { .. } => "notebook cell started",
            Update::NotebookCell { .. } => "notebook cell",
            Update::NotebookRunEnded { .. } => "notebook run ended",
            Update::NotebookSaved { .. } => "notebook saved",
            Update::NotebookCreated(_) => "notebook created",
            Update::NotebookReport(_) => "notebook report",
            Update::Segments { .. } => "segments",
            Update::AlertNotice(_) => "alert notice",
            Update::Alerts(_) => "alerts",
            Update::AlertsChanged => "alerts changed",
            Update::AlertHistory { .. } => "alert history",
            Update::Error(_) => "error",
            Update::Warning(_) => "warning",
        }
    }
}

/// Passwords for the backend to keep and to fill in.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    /// Where passwords are kept.
    pub keyring: Keyring,
    /// Service URLs the user typed with a password, to keep.
    pub keep: Vec<String>,
}

/// `cfg` with passwords kept for its URLs filled in, after keeping those of
/// `secrets.keep`; what could not be kept is said once, as a warning. The
/// keyring may block (D-Bus, an unlock prompt), so it is used on a
/// blocking thread.
async fn with_kept_passwords(mut cfg: Config, secrets: Secrets, out: &Outbox) -> Config {
    let Secrets { keyring, keep } = secrets;
    let urls = (cfg.database_url.clone(), cfg.redis_url.clone());
    let done = tokio::task::spawn_blocking(move || {
        let mut warnings = Vec::new();
        for url in &keep {
            match keyring.remember(url) {
                Ok(true) => tracing::info!(
                    "kept the password for {} in the OS keyring",
                    redact_url(url)
                ),
                Ok(false) => {}
                Err(e) => warnings.push(format!(
                    "the password for {} is not saved: {e}. It is used for this run only; \
                     type it again next time, or set it in the environment",
                    redact_url(url)
                )),
            }
        }
        let recall = |url: &str| match keyring.recall(url) {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!("no kept password for {}: {e}", redact_url(url));
                None
            }
        };
        let database = urls.0.as_deref().and_then(recall);
        let redis = recall(&urls.1);
        (database, redis, warnings)
    })
    .await;
    match done {
        Ok((database, redis, warnings)) => {
            if let Some(url) = database {
                cfg.database_url = Some(url);
            }
            if let Some(url) = redis {
                cfg.redis_url = url;
            }
            for w in warnings {
                tracing::warn!("{w}");
                out.send(Update::Warning(w));
            }
        }
        Err(e) => tracing::warn!("the keyring could not be used: {e}"),
    }
    cfg
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
    /// Starts the backend on `rt`: keeps the passwords of the URLs in
    /// `secrets.keep` in the keyring and fills in kept passwords of URLs
    /// that lack one, opens the services (starting embedded ones), then,
    /// when `autostart` is given, starts generating at that rate.
    pub fn spawn(
        rt: &Handle,
        cfg: Config,
        ctx: egui::Context,
        autostart: Option<Option<f64>>,
        secrets: Secrets,
    ) -> Self {
        let (tx, cmds) = unbounded_channel();
        let (out_tx, rx) = mpsc::channel();
        let out = Outbox { tx: out_tx, ctx };
        rt.spawn(async move {
            let cfg = with_kept_passwords(cfg, secrets, &out).await;
            run(cfg, cmds, out, autostart).await
        });
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
        if let Some(wait) = self.begin_shutdown() {
            let _ = wait.recv_timeout(timeout);
        }
    }

    /// Asks the backend to stop the pipeline and end, without waiting:
    /// the returned receiver gets `()` once it has (`None`: it had ended).
    pub(crate) fn begin_shutdown(&self) -> Option<mpsc::Receiver<()>> {
        let (done, wait) = mpsc::channel();
        self.send(Command::Shutdown { done }).then_some(wait)
    }
}

/// How often the pipeline panel's numbers are sampled while the pipeline
/// runs or drains, and while it is stopped.
const TELEMETRY_EVERY: Duration = Duration::from_secs(1);
const TELEMETRY_IDLE_EVERY: Duration = Duration::from_secs(5);
/// Service checks and dimension values: at most this often.
const SLOW_EVERY: Duration = Duration::from_secs(5);
/// How often the scripts folder is checked for changes.
const SCRIPTS_EVERY: Duration = Duration::from_secs(1);

/// The scripts folder and what the pipeline runs from it.
struct ScriptDesk {
    dir: PathBuf,
    stamp: scripting::Stamp,
    catalog: Arc<Catalog>,
    catalog_tx: tokio::sync::watch::Sender<Arc<Catalog>>,
    /// The shop script in use.
    shop: String,
    /// Cancels the editor's script run in progress.
    running: Option<Arc<AtomicBool>>,
}

const DEFAULT_SHOP: &str = "generator/default.rhai";

async fn scan(dir: PathBuf) -> Catalog {
    let d = dir.clone();
    tokio::task::spawn_blocking(move || Catalog::scan(&d))
        .await
        .unwrap_or_else(|e| Catalog {
            dir,
            files: Vec::new(),
            error: Some(format!("scanning failed: {e}")),
        })
}

impl ScriptDesk {
    /// Finds (and on first use fills) the scripts folder, reads it and puts
    /// its shop script in effect.
    async fn open(cfg: &Config, live: &mut LivePipeline, out: &Outbox) -> Self {
        let dir = scripting::default_dir(cfg.scripts_dir.as_deref());
        if !dir.join("generator").is_dir() && !dir.join("metrics").is_dir() {
            match scripting::seed(&dir) {
                Ok(n) => tracing::info!("wrote {n} shipped scripts to {}", dir.display()),
                Err(e) => tracing::warn!("cannot write the scripts folder {}: {e}", dir.display()),
            }
        }
        let stamp = scripting::stamp(&dir);
        let catalog = Arc::new(scan(dir.clone()).await);
        let (catalog_tx, _) = tokio::sync::watch::channel(Arc::clone(&catalog));
        let mut desk = Self {
            dir,
            stamp,
            catalog,
            catalog_tx,
            shop: DEFAULT_SHOP.to_owned(),
            running: None,
        };
        desk.apply_shop(live, out);
        out.send(Update::Scripts(Arc::clone(&desk.catalog)));
        desk
    }

    fn changed_on_disk(&self) -> bool {
        scripting::stamp(&self.dir) != self.stamp
    }

    /// Rereads the folder; a changed shop script takes effect, and the
    /// scenarios that are on follow their scripts.
    async fn rescan(&mut self, live: &mut LivePipeline, out: &Outbox) {
        self.stamp = scripting::stamp(&self.dir);
        let old = std::mem::replace(&mut self.catalog, Arc::new(scan(self.dir.clone()).await));
        let text = |c: &Catalog, rel: &str| c.get(rel).map(|f| f.text.clone());
        if text(&old, &self.shop) != text(&self.catalog, &self.shop) {
            self.apply_shop(live, out);
        }
        for a in live.scenarios() {
            let rel = format!("generator/{}", a.scenario.file);
            if text(&old, &rel) == text(&self.catalog, &rel) {
                continue;
            }
            match self.catalog.get(&rel).map(|f| &f.kind) {
                Some(ScriptKind::Scenario(s)) => {
                    let name = a.scenario.scenario.clone();
                    if s.scenario != name {
                        live.switch_off(&name);
                    }
                    if let Err(e) = live.switch_on((**s).clone()) {
                        tracing::warn!("scenario {rel} changed and cannot apply: {e}");
                    }
                }
                Some(ScriptKind::Broken(e)) => {
                    tracing::warn!(
                        "scenario {rel} changed and no longer runs (it stays as it was): {e}"
                    )
                }
                _ => {
                    live.switch_off(&a.scenario.scenario);
                }
            }
        }
        self.catalog_tx.send_replace(Arc::clone(&self.catalog));
        out.send(Update::Scripts(Arc::clone(&self.catalog)));
    }

    /// Puts the shop script in effect (or says why not; the shop stays).
    fn apply_shop(&mut self, live: &mut LivePipeline, out: &Outbox) {
        let Some(f) = self.catalog.get(&self.shop) else {
            // No shop script: the built-in shop.
            return;
        };
        let file = f.rel.rsplit('/').next().unwrap_or(&f.rel);
        match crate::generator::behaviour::shop_from_source(file, &f.text) {
            Ok(p) => {
                if &p != live.shop() {
                    tracing::info!("shop script {} in effect", f.rel);
                    live.set_shop(p);
                }
            }
            Err(e) => {
                let msg = format!("the shop script does not run; the shop stays as it was: {e}");
                tracing::warn!("{msg}");
                out.send(Update::Error(msg));
            }
        }
    }

    /// `rel` as a path inside the folder, if it names a script there.
    fn path_of(&self, rel: &str) -> Result<PathBuf, String> {
        let (sub, name) = rel
            .split_once('/')
            .ok_or_else(|| format!("{rel:?}: scripts live in generator/ or metrics/"))?;
        let clean = scripting::file_name(name);
        if !["generator", "metrics"].contains(&sub) || clean.as_deref() != Some(name) {
            return Err(format!(
                "{rel:?}: a script is generator/NAME.rhai or metrics/NAME.rhai (letters, digits, _)"
            ));
        }
        Ok(self.dir.join(sub).join(name))
    }
}

/// Runs a script's editor text once: a metric over the data, a shop or a
/// scenario evaluated and summarised.
async fn run_script(
    a: &Analytics,
    rel: &str,
    text: &str,
    filters: &Filters,
    cancel: Arc<AtomicBool>,
    shop: &crate::generator::GeneratorParams,
) -> Result<ScriptOutput, ScriptError> {
    use crate::generator::behaviour::{self, Behaviour};
    let file = rel.rsplit('/').next().unwrap_or(rel).to_owned();
    let t = Instant::now();
    if rel.starts_with("metrics/") {
        let m = Arc::new(Metric::compile(&file, text)?);
        let info = m.info.clone();
        let df = a
            .run_script(m, filters, Some(cancel))
            .await
            .map_err(|e| match e {
                crate::analytics::AnalyticsError::Script(e) => e,
                other => ScriptError::new(&file, other.to_string()),
            })?;
        let view =
            MetricView::from_frame(info.kind, &df, None).map_err(|e| ScriptError::new(&file, e))?;
        return Ok(ScriptOutput {
            summary: format!(
                "{}: {} rows × {} columns in {:.0} ms",
                info.name,
                df.height(),
                df.width(),
                t.elapsed().as_secs_f64() * 1e3
            ),
            info: Some(info),
            frame: Arc::new(df),
            view,
        });
    }
    let (f2, t2) = (file.clone(), text.to_owned());
    let b = tokio::task::spawn_blocking(move || behaviour::from_source(&f2, &t2))
        .await
        .map_err(|e| ScriptError::new(&file, format!("the script's thread failed: {e}")))??;
    let err = |e: polars::prelude::PolarsError| ScriptError::new(&file, e.to_string());
    let (frame, summary) = match b {
        Behaviour::Shop(p) => {
            let df = polars::df!(
                "category" => p.categories.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                "weight" => p.categories.iter().map(|c| c.weight).collect::<Vec<_>>(),
                "products" => p.categories.iter().map(|c| i64::from(c.products)).collect::<Vec<_>>(),
                "median_price" => p.categories.iter().map(|c| c.median_price).collect::<Vec<_>>(),
            )
            .map_err(err)?;
            let summary = format!(
                "shop: customers in {} segments ({} purchases a year while active, {:.0} % leave \
                 after a purchase), {} categories, {} regions, {} sessions/hour",
                p.segments.len().max(1),
                p.lifecycle.purchases_per_year,
                p.lifecycle.dropout * 100.0,
                p.categories.len(),
                p.regions.len(),
                p.sessions_per_hour
            );
            (df, summary)
        }
        Behaviour::Scenario(s) => {
            crate::generator::check_scenario(shop, &s).map_err(|e| ScriptError::new(&file, e))?;
            let fx = serde_json::to_value(&s.effects).unwrap_or_default();
            let mut names = Vec::new();
            let mut values = Vec::new();
            if let Some(m) = fx.as_object() {
                for (k, v) in m {
                    if !v.is_null() {
                        names.push(k.clone());
                        values.push(v.to_string());
                    }
                }
            }
            let df = polars::df!("effect" => names, "value" => values).map_err(err)?;
            let lasts = s
                .duration_minutes
                .map_or("until switched off".to_owned(), |m| format!("for {m} min"));
            (
                df,
                format!("scenario {:?} ({lasts}): {}", s.scenario, s.description),
            )
        }
    };
    let view =
        MetricView::Table(TableData::from_frame(&frame).map_err(|e| ScriptError::new(&file, e))?);
    Ok(ScriptOutput {
        info: None,
        frame: Arc::new(frame),
        view,
        summary,
    })
}

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
                    Command::Sort { seq, table, sort } => {
                        sort_in_background(&out, seq, table, sort)
                    }
                    Command::AwaitPath(f) => {
                        let out = out.clone();
                        tokio::spawn(async move { out.send(Update::ExportPath(f.await)) });
                    }
                    c => refuse(c, &format!("services unavailable: {msg}"), &out),
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
    let mut desk = ScriptDesk::open(&cfg, &mut live, &out).await;
    let send = |u| out.send(u);
    let mut notebooks =
        NotebookDesk::open(crate::services::notebooks_dir(live.config()), &send).await;
    let mut alerts = {
        let o = out.clone();
        super::alert_desk::AlertDesk::open(&live, &desk.dir, move |u| o.send(u)).await
    };
    if let Some(rate) = autostart {
        start(&mut live, rate, &out);
    }
    // Scheduled notebooks rerun while the app is open (as under `run`).
    let _notebooks = crate::services::notebooks_dir(live.config()).map(|dir| {
        let task = tokio::spawn(crate::services::run_notebook_schedules(
            dir,
            live.config().clone(),
            live.database_url().to_owned(),
        ));
        crate::services::AbortOnDrop(task)
    });
    let started = Instant::now();
    let (watch_tx, watch_rx) = tokio::sync::watch::channel(None);
    tokio::spawn(watch_dashboard(
        live.analytics().clone(),
        watch_rx,
        desk.catalog_tx.subscribe(),
        out.clone(),
    ));
    let mut script_tick = tokio::time::interval(SCRIPTS_EVERY);
    script_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent: Option<PipelineSample> = None;
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
                        notebooks.stop_all();
                        alerts.stop();
                        if let Err(e) = live.stop(Duration::from_secs(5)).await {
                            tracing::warn!("stopping the pipeline: {e:#}");
                        }
                        let _ = done.send(());
                        return;
                    }
                    Command::Watch(w) => {
                        watch_tx.send_replace(Some(w));
                    }
                    Command::SilenceAlert { rule, minutes } => {
                        let o = out.clone();
                        alerts.silence(rule, minutes, move |u| o.send(u));
                    }
                    Command::UnsilenceAlert(id) => {
                        let o = out.clone();
                        alerts.unsilence(id, move |u| o.send(u));
                    }
                    Command::AlertHistory(rule) => {
                        let o = out.clone();
                        alerts.history(rule, move |u| o.send(u));
                    }
                    c => {
                        handle(c, &mut live, &mut desk, &mut notebooks, &out).await;
                        // Show the effect of start / pause / stop at once.
                        next_sample = tokio::time::Instant::now();
                    }
                }
            }
            _ = script_tick.tick() => {
                if desk.changed_on_disk() {
                    desk.rescan(&mut live, &out).await;
                    next_sample = tokio::time::Instant::now();
                }
                if notebooks.changed_on_disk() {
                    notebooks.rescan(&send).await;
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
                let t = telemetry(&mut live, &desk, started, health.clone()).await;
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

/// Answers `c` with `why` it cannot be done, in the update that ends
/// what the UI waits for (a run, a save, an export).
fn refuse(c: Command, why: &str, out: &Outbox) {
    let why = why.to_owned();
    out.send(match c {
        Command::RunCells { seq, path, .. } => {
            out.send(Update::Error(why));
            Update::NotebookRunEnded {
                seq,
                path,
                stopped: false,
            }
        }
        Command::OpenNotebook(path) => Update::NotebookOpened {
            path,
            result: Err(why),
        },
        Command::SaveNotebook { path, .. } => Update::NotebookSaved {
            path,
            result: Err(why),
        },
        Command::NewNotebook(_) => Update::NotebookCreated(Err(why)),
        Command::NotebookReport { .. } => Update::NotebookReport(Err(why)),
        Command::Segments { seq, .. } => Update::Segments {
            seq,
            result: Err(why),
        },
        Command::ExportSegment { .. } => Update::ExportDone(Err(why)),
        Command::AlertHistory(rule) => {
            out.send(Update::Error(why));
            Update::AlertHistory {
                rule,
                rows: Vec::new(),
            }
        }
        Command::Export { .. } | Command::ExportFrame { .. } | Command::ExportTable { .. } => {
            Update::ExportDone(Err(why))
        }
        _ => Update::Error(why),
    });
}

/// Equal but for when it was taken, and, with the pipeline stopped, for the
/// pool's open and idle counts (which only flicker with the app's own
/// polling then): an idle window is not woken for them.
fn same_sample(a: &PipelineSample, b: &PipelineSample) -> bool {
    let idle = matches!(b.state, RunState::Stopped) && a.state == b.state;
    let (pool_open, pool_idle) = if idle {
        (a.pool_open, a.pool_idle)
    } else {
        (b.pool_open, b.pool_idle)
    };
    a == &PipelineSample {
        at: a.at,
        pool_open,
        pool_idle,
        ..b.clone()
    }
}

/// Keeps the watched dashboard current: recomputes it when the data, the
/// minute (relative ranges slide by whole minutes) or the metric scripts
/// changed, and sends it when it was asked for anew or its numbers changed.
/// The built-in views go out first; the custom metrics follow when done
/// (a slow script never holds the built-in views back).
async fn watch_dashboard(
    a: Analytics,
    mut rx: tokio::sync::watch::Receiver<Option<Watch>>,
    mut scripts: tokio::sync::watch::Receiver<Arc<Catalog>>,
    out: Outbox,
) {
    let mut sent_seq = None;
    let mut sent: Option<Result<Arc<Dashboard>, String>> = None;
    let mut computed_at: Option<(crate::analytics::DataVersions, i64, usize)> = None;
    let send = |sent: &mut Option<Result<Arc<Dashboard>, String>>,
                sent_seq: &mut Option<u64>,
                seq: u64,
                result: Result<Dashboard, String>| {
        let fresh = *sent_seq != Some(seq);
        let changed = match (&*sent, &result) {
            (Some(Ok(a)), Ok(b)) => !a.same_content(b),
            (Some(Err(a)), Err(b)) => a != b,
            _ => true,
        };
        if fresh || changed {
            if let Err(e) = &result {
                tracing::warn!("dashboard refresh failed: {e}");
            }
            let result = result.map(Arc::new);
            *sent = Some(result.clone());
            *sent_seq = Some(seq);
            out.send(Update::Dashboard { seq, result });
        }
    };
    // Committed data changing wakes the loop at once (at most once per
    // LIVE_REFRESH_GAP); the watch's interval stays as the fallback.
    let mut changes = a.changes();
    let mut changes_alive = true;
    let mut last_start = tokio::time::Instant::now();
    loop {
        let w = rx.borrow_and_update().clone();
        let catalog = scripts.borrow_and_update().clone();
        if let Some(w) = &w {
            let fresh = sent_seq != Some(w.seq);
            last_start = tokio::time::Instant::now();
            let as_of = chrono::Utc::now();
            let minute = as_of.timestamp().div_euclid(60);
            match a.versions().await {
                Ok(v) => {
                    let key = (v, minute, Arc::as_ptr(&catalog) as usize);
                    if fresh || computed_at.as_ref() != Some(&key) {
                        match refresh_at(&a, &w.filters, &key.0).await {
                            Ok(mut d) => {
                                d.as_of = Some(as_of);
                                // Last values (or placeholders) until the scripts are done.
                                let before: Vec<MetricPanel> = match &sent {
                                    Some(Ok(p)) if !fresh => p.metrics.clone(),
                                    _ => Vec::new(),
                                };
                                d.metrics = catalog
                                    .files
                                    .iter()
                                    .filter(|f| f.is_metric_file())
                                    .map(|f| {
                                        before
                                            .iter()
                                            .find(|p| p.info.file == f.rel || f.rel.ends_with(&format!("/{}", p.info.file)))
                                            .cloned()
                                            .unwrap_or_else(|| MetricPanel {
                                                info: match &f.kind {
                                                    ScriptKind::Metric(m) => m.info.clone(),
                                                    _ => MetricInfo {
                                                        file: f.rel.clone(),
                                                        name: f.rel.clone(),
                                                        kind: MetricKind::Table,
                                                        format: crate::analytics::metrics::MetricFormat::Number,
                                                        description: String::new(),
                                                    },
                                                },
                                                view: None,
                                            })
                                    })
                                    .collect();
                                send(&mut sent, &mut sent_seq, w.seq, Ok(d.clone()));
                                d.metrics = metric_panels(&a, &catalog, &w.filters, &key.0).await;
                                for p in &d.metrics {
                                    if let Some(Err(e)) = &p.view {
                                        let known = before.iter().any(|b| {
                                            b.info.file == p.info.file && b.view == p.view
                                        });
                                        if !known {
                                            tracing::warn!("metric {}: {e}", p.info.file);
                                        }
                                    }
                                }
                                send(&mut sent, &mut sent_seq, w.seq, Ok(d));
                                computed_at = Some(key);
                            }
                            Err(e) => {
                                computed_at = None;
                                send(&mut sent, &mut sent_seq, w.seq, Err(e));
                            }
                        }
                    }
                }
                Err(e) => {
                    computed_at = None;
                    send(&mut sent, &mut sent_seq, w.seq, Err(e.to_string()));
                }
            }
        }
        let every = w.and_then(|w| w.every);
        let timer = tokio::time::sleep(every.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(timer);
        let mut pending = false;
        loop {
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return } else { break },
                changed = scripts.changed() => if changed.is_err() { return } else { break },
                _ = &mut timer, if every.is_some() => break,
                c = changes.changed(), if every.is_some() && changes_alive && !pending => {
                    match c {
                        Ok(()) => {
                            changes.borrow_and_update();
                            pending = true;
                        }
                        Err(_) => changes_alive = false,
                    }
                }
                _ = tokio::time::sleep_until(last_start + LIVE_REFRESH_GAP), if pending => break,
            }
        }
    }
}

/// The shortest time between two dashboard refreshes that committed data
/// set off: new data shows within about this (plus the refresh itself),
/// and a busy pipeline costs at most a few refreshes a second.
pub const LIVE_REFRESH_GAP: Duration = Duration::from_millis(400);

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

async fn handle(
    c: Command,
    live: &mut LivePipeline,
    desk: &mut ScriptDesk,
    notebooks: &mut NotebookDesk,
    out: &Outbox,
) {
    let send = |u| out.send(u);
    match c {
        Command::OpenNotebook(path) => notebooks.load(path, &send).await,
        Command::RunCells {
            seq,
            path,
            cells,
            fresh,
            filters,
        } => {
            let source = notebook_desk::source_for(live.analytics(), &filters).await;
            let o = out.clone();
            notebooks
                .run(seq, path, cells, fresh, source, move |u| o.send(u))
                .await;
        }
        Command::StopCells(path) => notebooks.stop(&path),
        Command::RestartNotebook(path) => notebooks.restart(&path),
        Command::SaveNotebook { path, notebook } => notebooks.save(path, notebook, &send).await,
        Command::NewNotebook(name) => notebooks.create(name, &send).await,
        Command::NotebookReport { path, notebook } => notebooks.report(path, notebook, &send).await,
        Command::ExportTable {
            resource,
            path,
            format,
        } => {
            let out = out.clone();
            tokio::task::spawn_blocking(move || {
                let r = crate::notebook::render::frame_from_resource(&resource).and_then(|df| {
                    export::write_frame(&df, &path, format).map_err(|e| e.to_string())
                });
                out.send(Update::ExportDone(r));
            });
        }
        Command::RunScript {
            seq,
            rel,
            text,
            filters,
        } => {
            if let Some(c) = desk.running.take() {
                c.store(true, Ordering::Relaxed);
            }
            let cancel = Arc::new(AtomicBool::new(false));
            desk.running = Some(Arc::clone(&cancel));
            let (a, out, shop) = (live.analytics().clone(), out.clone(), live.shop().clone());
            tokio::spawn(async move {
                let result = run_script(&a, &rel, &text, &filters, cancel, &shop)
                    .await
                    .map(Arc::new);
                out.send(Update::ScriptRun { seq, result });
            });
        }
        Command::CancelScript => {
            if let Some(c) = desk.running.take() {
                c.store(true, Ordering::Relaxed);
            }
        }
        Command::SaveScript { rel, text } => {
            let r = desk
                .path_of(&rel)
                .and_then(|p| scripting::save(&p, &text).map_err(|e| format!("saving {rel}: {e}")));
            match r {
                Ok(()) => {
                    desk.rescan(live, out).await;
                    out.send(Update::ScriptSaved(Ok(rel)));
                }
                Err(e) => {
                    tracing::error!("{e}");
                    out.send(Update::ScriptSaved(Err(e)));
                }
            }
        }
        Command::Scenario { rel, on } => match desk.catalog.get(&rel).map(|f| f.kind.clone()) {
            Some(ScriptKind::Scenario(s)) => {
                if on {
                    if let Err(e) = live.switch_on((*s).clone()) {
                        out.send(Update::Error(format!("scenario {:?}: {e}", s.scenario)));
                    }
                } else {
                    live.switch_off(&s.scenario);
                }
            }
            Some(ScriptKind::Broken(e)) => out.send(Update::Error(format!("{e}"))),
            _ => out.send(Update::Error(format!("{rel} is not a scenario script"))),
        },
        Command::UseShop(rel) => match desk.catalog.get(&rel).map(|f| &f.kind) {
            Some(ScriptKind::Shop) => {
                desk.shop = rel;
                desk.apply_shop(live, out);
            }
            _ => out.send(Update::Error(format!("{rel} is not a shop script"))),
        },
        Command::Segments { seq, period_days } => {
            let (pool, out) = (live.analytics().pool().clone(), out.clone());
            tokio::spawn(async move {
                let result = crate::analytics::segments::segments(
                    &pool,
                    chrono::Utc::now(),
                    chrono::Duration::days(i64::from(period_days.max(1))),
                )
                .await
                .map(Arc::new)
                .map_err(|e| e.to_string());
                out.send(Update::Segments { seq, result });
            });
        }
        Command::ExportSegment {
            customers,
            segment,
            path,
            format,
        } => {
            let out = out.clone();
            tokio::task::spawn_blocking(move || {
                let r = crate::analytics::segments::customers_of(&customers, &segment)
                    .map_err(|e| e.to_string())
                    .and_then(|rows| {
                        export::write_frame(&rows, &path, format).map_err(|e| e.to_string())
                    });
                out.send(Update::ExportDone(r));
            });
        }
        Command::ExportFrame {
            frame,
            path,
            format,
        } => {
            let out = out.clone();
            tokio::task::spawn_blocking(move || {
                let r = export::write_frame(&frame, &path, format).map_err(|e| e.to_string());
                out.send(Update::ExportDone(r));
            });
        }
        Command::Explore { seq, req, sort } => {
            let (a, out) = (live.analytics().clone(), out.clone());
            tokio::spawn(async move {
                let table = match a.view(&req).await {
                    Ok(r) => {
                        // Formatting a large frame is CPU work too.
                        tokio::task::spawn_blocking(move || TableData::from_frame(&r.frame))
                            .await
                            .unwrap_or_else(|e| Err(format!("formatting the table: {e}")))
                            .map(Arc::new)
                    }
                    Err(e) => Err(e.to_string()),
                };
                let result = match table {
                    Ok(table) => {
                        let order = match sort.filter(|s| s.column < table.columns.len()) {
                            Some(s) => Some((s, sorted_order(Arc::clone(&table), s).await)),
                            None => None,
                        };
                        Ok(Explored { table, order })
                    }
                    Err(e) => Err(e),
                };
                out.send(Update::Explore { seq, result });
            });
        }
        Command::Sort { seq, table, sort } => sort_in_background(out, seq, table, sort),
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
        // Answered by the loop itself.
        Command::Watch(_)
        | Command::Shutdown { .. }
        | Command::SilenceAlert { .. }
        | Command::UnsilenceAlert(_)
        | Command::AlertHistory(_) => {}
    }
}

/// The custom metrics under `filters`, concurrently; scripts that do not
/// compile show their error.
async fn metric_panels(
    a: &Analytics,
    catalog: &Catalog,
    filters: &Filters,
    v: &crate::analytics::DataVersions,
) -> Vec<MetricPanel> {
    let runs = catalog
        .files
        .iter()
        .filter(|f| f.is_metric_file())
        .map(|f| async move {
            match &f.kind {
                ScriptKind::Metric(m) => {
                    let view = match a.metric_at(m, filters, v).await {
                        Ok(r) => MetricView::from_frame(m.info.kind, &r.frame, r.previous),
                        Err(e) => Err(e.to_string()),
                    };
                    MetricPanel {
                        info: m.info.clone(),
                        view: Some(view),
                    }
                }
                other => MetricPanel {
                    info: MetricInfo {
                        file: f.rel.clone(),
                        name: f.rel.clone(),
                        kind: MetricKind::Table,
                        format: crate::analytics::metrics::MetricFormat::Number,
                        description: String::new(),
                    },
                    view: Some(Err(match other {
                        ScriptKind::Broken(e) => e.to_string(),
                        _ => "not a metric script".into(),
                    })),
                },
            }
        });
    futures::future::join_all(runs).await
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
    let now = chrono::Utc::now().timestamp() as f64;
    let results = futures::future::try_join_all(reqs.iter().map(|r| a.view_at(r, v)))
        .await
        .map_err(|e| e.to_string())?;
    let mut d = Dashboard::from_results(&results, t.elapsed())?;
    // Where revenue is heading: fitted off the runtime's threads.
    if let Some(g) = d.granularity {
        let trend = d.trend_revenue.clone();
        d.trend_forecast = tokio::task::spawn_blocking(move || {
            super::model::trend_forecast(&trend, g.seconds(), now)
        })
        .await
        .unwrap_or_default();
    }
    d.elapsed = t.elapsed();
    Ok(d)
}

async fn telemetry(
    live: &mut LivePipeline,
    desk: &ScriptDesk,
    started: Instant,
    health: Option<ServiceHealth>,
) -> PipelineSample {
    let lag = live.lag().await;
    let state = live.state();
    let pool = live.store().pool();
    let cache = live.analytics().cache();
    let counters = cache.counters();
    PipelineSample {
        at: started.elapsed().as_secs_f64(),
        state,
        rate: live.rate(),
        counters: live.counters(),
        ingest: live.ingest_health(),
        lag,
        pool_open: pool.size(),
        pool_idle: pool.num_idle() as u32,
        pool_max: pool.options().get_max_connections(),
        cache: cache.status(),
        cache_hits: counters.values().map(|c| c.hits).sum(),
        cache_misses: counters.values().map(|c| c.misses + c.bypasses).sum(),
        health,
        shop: desk.shop.clone(),
        scenarios: live
            .scenarios()
            .iter()
            .map(|a| ScenarioOn {
                name: a.scenario.scenario.clone(),
                rel: format!("generator/{}", a.scenario.file),
                remaining_secs: a.remaining().map(|d| d.as_secs()),
            })
            .collect(),
    }
}
