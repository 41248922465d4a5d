//! The command line's arguments (clap), and the small conversions from
//! them to the library's option types.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use salespulse::analytics::{AnalyticsError, ViewKind, ViewRequest};
use salespulse::generator::{self, GeneratorParams, OutputFormat};

#[derive(Parser)]
#[command(
    name = "salespulse",
    version,
    about = "Real-time sales analytics workbench"
)]
pub struct Cli {
    /// Config file (default: $SALESPULSE_CONFIG, else ./salespulse.toml if present).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `salespulse=debug` (default: $RUST_LOG, else info).
    #[arg(long, global = true)]
    pub log: Option<String>,
    /// Without a command, the desktop workbench opens.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// The desktop workbench (the default): dashboard, pipeline, explorer.
    App,
    /// Internal: runs one metric script for a parent process (stdin/stdout).
    #[command(hide = true)]
    ScriptHost,
    /// Generator + producer + ingest, headless. Uses embedded Kafka and
    /// PostgreSQL unless KAFKA_BROKERS / DATABASE_URL are set.
    Run {
        /// Stop generating after N events; exit once all are committed.
        #[arg(long)]
        events: Option<u64>,
        /// Events per second (0 = as fast as possible). Default: as fast as
        /// possible with --events or --replay, else 500.
        #[arg(long)]
        rate: Option<f64>,
        /// Behaviour seed (default: random, so reruns add new data).
        #[arg(long)]
        seed: Option<u64>,
        /// Ingest workers in this process (one consumer-group member each).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Stamp events with a simulated clock starting here (RFC 3339)
        /// instead of the wall clock: backfills history with seasonality.
        #[arg(long)]
        backfill_from: Option<DateTime<Utc>>,
        /// Partitions of the topic if it is created (overrides config).
        #[arg(long)]
        partitions: Option<i32>,
        /// Also serve the HTTP API, with this run's /metrics, on this address
        /// (e.g. 127.0.0.1:8080).
        #[arg(long)]
        http: Option<String>,
        /// Also evaluate the alert rules (scripts/alerts/*.rhai) while
        /// the pipeline runs; notifications are also POSTed to
        /// SALESPULSE_ALERT_WEBHOOK when it is set (the environment only: a
        /// command line is visible to every local user).
        #[arg(long)]
        alerts: bool,
        /// Produce the events of this file instead of generating them: one
        /// JSON event per line, as `salespulse generate` writes them (`-`:
        /// standard input). Each line goes to the topic as it is, keyed by
        /// its customer_id; a line that is not a valid event is
        /// dead-lettered by ingest with its reason.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with_all = ["seed", "backfill_from", "generator_script", "scenario"]
        )]
        replay: Option<PathBuf>,
        #[command(flatten)]
        behaviour: BehaviourArgs,
    },
    /// Customer segments (RFM: recency, frequency, monetary quintiles):
    /// sizes, revenue share and movement since a period earlier; the
    /// customers of one segment to a file.
    Segments {
        /// The time the segments are as of (RFC 3339; default: now).
        #[arg(long)]
        as_of: Option<DateTime<Utc>>,
        /// The period movement is measured over: 7d, 30d, 90d.
        #[arg(long, default_value = "30d")]
        period: String,
        /// table, csv or json.
        #[arg(long, default_value = "table")]
        format: String,
        /// Write this segment's customers (e.g. "At risk") to --out.
        #[arg(long, requires = "out")]
        export: Option<String>,
        /// The file --export writes (.csv or .parquet).
        #[arg(long, requires = "export")]
        out: Option<PathBuf>,
    },
    /// Alert rules (scripts/alerts/*.rhai): evaluate them, list them and
    /// their states, read their history, test one, silence one.
    Alerts {
        #[command(subcommand)]
        which: AlertsCommand,
    },
    /// Custom metrics (Rhai scripts over Polars frames).
    Metric {
        #[command(subcommand)]
        which: MetricCommand,
    },
    /// Notebooks (Jupyter `.ipynb` files of Rhai cells, in `notebooks/`).
    Notebook {
        #[command(subcommand)]
        which: NotebookCommand,
    },
    /// The Jupyter kernel: `kernel -f CONNECTION_FILE` serves one (Jupyter
    /// starts it so); `kernel install` writes its kernelspec.
    #[command(args_conflicts_with_subcommands = true)]
    Kernel {
        /// The connection file Jupyter wrote.
        #[arg(short = 'f', long = "connection-file")]
        connection_file: Option<PathBuf>,
        #[command(subcommand)]
        which: Option<KernelCommand>,
    },
    /// Prints a view (kpis, revenue_trend, category_performance, payment_mix,
    /// status_breakdown, region_breakdown, top_products, top_customers,
    /// weekday_hour, transactions).
    Query {
        view: String,
        #[command(flatten)]
        filters: FilterArgs,
        /// table, csv or json.
        #[arg(long, default_value = "table")]
        format: String,
        /// Compute from PostgreSQL without the Redis cache.
        #[arg(long)]
        no_cache: bool,
        /// CSV cells exactly as stored: text starting with = + - @ is not
        /// defused for spreadsheets (default: prefixed with ').
        #[arg(long)]
        raw_csv: bool,
    },
    /// Writes a view to a CSV or Parquet file (all matching rows for
    /// `transactions` unless --limit is given).
    Export {
        view: String,
        #[command(flatten)]
        filters: FilterArgs,
        /// csv or parquet (default: from the file extension).
        #[arg(long)]
        format: Option<String>,
        #[arg(long)]
        out: PathBuf,
        /// CSV cells exactly as stored: text starting with = + - @ is not
        /// defused for spreadsheets (default: prefixed with ').
        #[arg(long)]
        raw_csv: bool,
    },
    /// The Redis frame cache.
    Cache {
        #[command(subcommand)]
        which: CacheCommand,
    },
    /// The derived tables (rollups, customer days, customers, products)
    /// against the raw rows.
    Rollups {
        #[command(subcommand)]
        which: RollupsCommand,
    },
    /// Writes generated events to stdout (or, with --stats, what they say
    /// about the shop's customers).
    Generate {
        /// Events to make.
        #[arg(long, required_unless_present = "days", conflicts_with = "days")]
        count: Option<u64>,
        /// Simulated days of events to make instead (from --start).
        #[arg(long, conflicts_with = "wall_clock")]
        days: Option<f64>,
        /// Print customer statistics of the events instead of the events:
        /// one-order share, repeat rate, orders per customer, days between
        /// orders, new customers' share of daily orders, weekly cohorts.
        #[arg(long)]
        stats: bool,
        /// With --stats: print them as JSON.
        #[arg(long, requires = "stats")]
        json: bool,
        /// ndjson or csv.
        #[arg(long, default_value = "ndjson")]
        format: OutputFormat,
        /// Seed (same seed, same events).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Start of the simulated clock (RFC 3339; default: midnight UTC 7 days ago).
        #[arg(long, conflicts_with = "wall_clock")]
        start: Option<DateTime<Utc>>,
        /// Stamp events with the wall clock instead of a simulated one.
        #[arg(long)]
        wall_clock: bool,
        #[command(flatten)]
        behaviour: BehaviourArgs,
    },
    /// Fault suite: private PostgreSQL, tansu and Redis; ingest processes
    /// SIGKILLed, PostgreSQL restarted, the broker killed, Redis stopped,
    /// with poison records mixed in; then checks nothing was lost or doubled.
    Chaos {
        /// Events produced per second during the faults (tansu on SQLite
        /// keeps up with a few hundred on two cores).
        #[arg(long, default_value_t = 300.0)]
        rate: f64,
        /// One poison record after this many valid events.
        #[arg(long, default_value_t = 100)]
        poison_every: u64,
        /// Ingest processes SIGKILLed mid-batch.
        #[arg(long, default_value_t = 100)]
        ingest_kills: usize,
        /// PostgreSQL restarts (alternating fast and immediate shutdown).
        #[arg(long, default_value_t = 6)]
        postgres_restarts: usize,
        /// Broker kills and restarts.
        #[arg(long, default_value_t = 6)]
        broker_restarts: usize,
        /// Redis stops and restarts.
        #[arg(long, default_value_t = 3)]
        redis_restarts: usize,
        /// Long outages of PostgreSQL and of the broker (each).
        #[arg(long, default_value_t = 1)]
        outages: usize,
        /// Run ingest as a consumer-group member (as several processes
        /// would) instead of reading every partition itself. tansu 0.6's
        /// group coordinator can strand partitions after many kills.
        #[arg(long)]
        consumer_group: bool,
        /// Seconds each long outage lasts.
        #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        outage_secs: u64,
        /// Seed of the generator and of the fault schedule.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Keep the services' data here (default: a temporary folder, removed).
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// The tansu binary (default: TANSU_BIN, ~/.cargo/bin/tansu, tansu).
        #[arg(long, value_name = "FILE")]
        tansu: Option<PathBuf>,
        /// Seconds one fault may stop ingest from committing before it counts
        /// as not survived (and no further fault is injected).
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        recovery_limit_secs: u64,
        /// Seconds for the whole run; past it, it stops with the services' logs.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=604_800))]
        time_limit_secs: Option<u64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One or more ingest workers joining the consumer group (needs KAFKA_BROKERS).
    Ingest {
        /// Ingest workers in this process.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// The HTTP generator API: GET /event, /stream?rate=R&count=N, /health.
    Serve {
        /// Address to bind (default from config: 127.0.0.1:8080).
        #[arg(long)]
        bind: Option<String>,
        /// Seed of the generator behind /event and /stream (default: random).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The embedded mock Kafka cluster, standalone on a fixed port, for
    /// several local processes.
    Broker {
        /// Port to listen on.
        #[arg(long, default_value_t = 9092)]
        port: u16,
    },
    /// Checks each dependency and says how to fix what is missing.
    Doctor,
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

/// The generator's behaviour scripts.
#[derive(clap::Args, Debug, Default)]
pub struct BehaviourArgs {
    /// Shop script (default: the built-in scripts/generator/default.rhai);
    /// fields it leaves out keep the built-in values.
    #[arg(long, value_name = "FILE")]
    pub generator_script: Option<PathBuf>,
    /// Scenario script switched on from the start (repeatable), e.g.
    /// scripts/generator/flash_sale.rhai.
    #[arg(long, value_name = "FILE")]
    pub scenario: Vec<PathBuf>,
}

impl BehaviourArgs {
    pub fn load(&self) -> anyhow::Result<(GeneratorParams, Vec<generator::Scenario>)> {
        let params = match &self.generator_script {
            Some(p) => generator::behaviour::load_shop(p)?,
            None => GeneratorParams::builtin(),
        };
        let scenarios = self
            .scenario
            .iter()
            .map(|p| {
                let s = generator::behaviour::load_scenario(p)?;
                generator::check_scenario(&params, &s)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                Ok(s)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((params, scenarios))
    }
}

#[derive(Subcommand)]
// Parsed once at start; its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum MetricCommand {
    /// Runs a metric script against the database and prints its result.
    Run {
        file: PathBuf,
        /// The filters the script runs under (default: all data).
        #[command(flatten)]
        filters: FilterArgs,
        /// table, csv or json.
        #[arg(long, default_value = "table")]
        format: String,
        /// Compute without the Redis cache.
        #[arg(long)]
        no_cache: bool,
        /// CSV cells exactly as stored: text starting with = + - @ is not
        /// defused for spreadsheets (default: prefixed with ').
        #[arg(long)]
        raw_csv: bool,
    },
    /// Compiles every metric script of a folder and lists what each declares.
    List {
        #[arg(default_value = "scripts/metrics")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
// Parsed once at start; its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum NotebookCommand {
    /// Runs notebooks headless and writes them with their outputs (in
    /// place, or into --out); exits non-zero naming the failing cell.
    Run {
        /// Notebook files (`.ipynb`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// A parameter over the `parameters` cell's default: name=value
        /// (numbers, true/false, else text). Repeat for more.
        #[arg(short = 'p', long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Write the executed notebooks (and reports) into this folder
        /// instead of over the files.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write one self-contained offline HTML report per notebook.
        #[arg(long)]
        html: bool,
        /// The filters views run under unless a cell names its own
        /// (default: all data).
        #[command(flatten)]
        filters: FilterArgs,
    },
    /// Sets when a notebook reruns (`salespulse run` and the app honour
    /// it), keeping each run's report in its history.
    Schedule {
        file: PathBuf,
        /// An interval (15m, 1h, 1d, 1w) or a cron expression in UTC
        /// ("0 6 * * 1-5").
        #[arg(long, required_unless_present = "off", conflicts_with = "off")]
        every: Option<String>,
        /// Removes the schedule.
        #[arg(long)]
        off: bool,
    },
    /// The kept runs of a scheduled notebook, newest first.
    History { file: PathBuf },
    /// Lists the notebooks of a folder: title, cells, parameters.
    List {
        #[arg(default_value = "notebooks")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum KernelCommand {
    /// Writes the kernelspec so Jupyter (JupyterLab, VS Code, nbclient,
    /// papermill) offers "salespulse (Rhai)".
    Install {
        /// Into the user's Jupyter data directory (default unless --prefix).
        #[arg(long, conflicts_with = "prefix")]
        user: bool,
        /// Into PREFIX/share/jupyter (an environment), instead.
        #[arg(long)]
        prefix: Option<PathBuf>,
    },
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: a parameter is name=value"))?;
    let k = k.trim();
    let ok = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(format!("{k:?}: a parameter's name is a Rhai variable name"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// View filters; lists take commas or repeated flags.
#[derive(clap::Args, Debug, Default)]
pub struct FilterArgs {
    /// Relative range ending at the newest event: 15m, 1h, 24h, 7d, all.
    #[arg(long)]
    pub last: Option<String>,
    /// Range start (RFC 3339 or YYYY-MM-DD, UTC), with --to.
    #[arg(long)]
    pub from: Option<String>,
    /// Range end, exclusive.
    #[arg(long)]
    pub to: Option<String>,
    /// Only these categories (repeat the flag for several).
    #[arg(long)]
    pub category: Vec<String>,
    /// Only these payment methods (repeatable).
    #[arg(long)]
    pub payment_method: Vec<String>,
    /// Only these regions (repeatable).
    #[arg(long)]
    pub region: Vec<String>,
    /// Only these channels (repeatable).
    #[arg(long)]
    pub channel: Vec<String>,
    /// Only these statuses (repeatable).
    #[arg(long)]
    pub status: Vec<String>,
    /// revenue_trend bucket: auto, minute, 5m, 15m, hour, day, week.
    #[arg(long)]
    pub granularity: Option<String>,
    /// Rows (top_products, top_customers, transactions).
    #[arg(long)]
    pub limit: Option<String>,
    /// Rows to skip (transactions).
    #[arg(long)]
    pub offset: Option<String>,
}

impl FilterArgs {
    pub fn request(&self, view: &str) -> Result<ViewRequest, AnalyticsError> {
        let kind: ViewKind = view.parse()?;
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for (k, v) in [
            ("last", &self.last),
            ("from", &self.from),
            ("to", &self.to),
            ("granularity", &self.granularity),
            ("limit", &self.limit),
            ("offset", &self.offset),
        ] {
            if let Some(v) = v {
                pairs.push((k, v));
            }
        }
        for (k, vs) in [
            ("category", &self.category),
            ("payment_method", &self.payment_method),
            ("region", &self.region),
            ("channel", &self.channel),
            ("status", &self.status),
        ] {
            pairs.extend(vs.iter().map(|v| (k, v.as_str())));
        }
        ViewRequest::parse(kind, pairs)
    }
}

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Deletes every cached frame.
    Clear,
    /// Shows whether Redis answers and the cache settings.
    Status,
}

#[derive(Subcommand)]
pub enum RollupsCommand {
    /// Compares every derived table with its recomputation from the raw
    /// rows; fails if any differs.
    Verify,
    /// Recomputes every derived table from the raw rows (ingest waits
    /// meanwhile); product names are kept.
    Rebuild,
}

/// What `salespulse alerts` does.
#[derive(Subcommand, Debug)]
pub enum AlertsCommand {
    /// Evaluates the rules at their intervals until Ctrl-C, recording
    /// their history and sending notifications (headless); each is also
    /// POSTed as JSON to SALESPULSE_ALERT_WEBHOOK when it is set (the
    /// environment only: a command line is visible to every local user).
    Run {
        /// The rules folder (default: alerts/ in the scripts folder).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also show desktop notifications.
        #[arg(long)]
        desktop: bool,
        /// Evaluate every rule once, print what happened, and exit.
        #[arg(long)]
        once: bool,
    },
    /// The rules, their last recorded state, and the silences in force.
    List {
        /// The rules folder (default: alerts/ in the scripts folder).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// State changes and notifications, newest first.
    History {
        /// Only this rule's.
        rule: Option<String>,
        /// Rows at most.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        limit: i64,
    },
    /// Evaluates one rule file now: its value, whether it breaches, and
    /// what its state would do (nothing is recorded or sent).
    Test {
        /// The rule file.
        file: PathBuf,
    },
    /// Mutes a rule's notifications (or every rule's: "*") for a while;
    /// its state is still kept and recorded.
    Silence {
        /// The rule's name, or "*".
        rule: String,
        /// How long: 30m, 2h, 1d.
        #[arg(long = "for")]
        duration: String,
        /// Why (shown in `alerts list`).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Ends a silence early.
    Unsilence {
        /// The silence's id (`alerts list` shows it).
        id: i64,
    },
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Fuzz the event decoder and the COPY encoder with random and mutated
    /// payloads: no panic, accepted events round-trip and encode cleanly.
    Fuzz {
        /// Inputs to try.
        #[arg(long, default_value_t = 10_000_000)]
        inputs: u64,
        /// Seed of the inputs.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Generator speed on one thread with a shop script (default: the
    /// built-in one): events made, and events made and encoded as JSON.
    Generator {
        /// Events per run.
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
        /// A shop script to measure instead of the built-in one.
        #[arg(long, value_name = "FILE")]
        script: Option<PathBuf>,
        /// Runs (each figure is reported per run).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Event → commit latency at set rates (the headless pipeline on the
    /// wall clock, one ingest worker, a scratch database).
    Latency {
        /// Events per second, one run each (commas or repeated flags).
        #[arg(long, value_delimiter = ',', default_values_t = [200.0, 2_000.0, 20_000.0])]
        rates: Vec<f64>,
        /// Seconds measured per rate.
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// Seconds per rate before measuring (consumer join, first statements).
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forecast accuracy on generated history: per seed, days of hourly
    /// completed revenue, the last days held out; MASE and relative MAE
    /// against repeating last week, and how often the bands cover.
    Forecast {
        /// Generator seeds, one history each (commas or repeated flags).
        #[arg(long, value_delimiter = ',', default_values_t = [1u64, 2, 3])]
        seeds: Vec<u64>,
        /// Days of history per seed.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(21..=3650))]
        days: u32,
        /// Days held out at the end and forecast.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=365))]
        holdout_days: u32,
        /// What the model fits: auto (ln(1 + revenue), as revenue is never
        /// negative), log or none (revenue as it is).
        #[arg(long, default_value = "auto", value_parser = ["auto", "log", "none"])]
        transform: String,
        /// The model's own bands, not calibrated (for comparison).
        #[arg(long)]
        raw_bands: bool,
        /// Skip anomaly detection (the payment outage, the flash sale and
        /// a control week per seed).
        #[arg(long)]
        no_detect: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ingest scale-out: 1, 2, 4… `salespulse ingest` processes in one
    /// consumer group on tansu (SQLite storage): throughput, each process's
    /// share, nothing lost or doubled across rebalances.
    Scale {
        /// Events per run (produced before ingest starts).
        #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
        events: u64,
        /// Process counts, one run each (commas or repeated flags).
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4])]
        processes: Vec<usize>,
        /// Partitions of each run's topic.
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// Milliseconds between process starts (0: together); later
        /// processes then join mid-stream and take partitions over.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=600_000))]
        stagger_ms: u64,
        /// Seed of the generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The tansu binary (default: TANSU_BIN, ~/.cargo/bin/tansu, tansu).
        #[arg(long, value_name = "FILE")]
        tansu: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pipeline ingest rate against a raw COPY of the same events.
    Ingest {
        /// Events to produce and ingest.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Ingest workers (consumer-group members); each has
        /// `ingest_lanes` parallel write lanes.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Seed of the generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Keep the bench database.
        #[arg(long)]
        keep: bool,
        /// Stamp the events as a shop with this many events per second
        /// would (default: the built-in shop's traffic, ~1 session/s, so
        /// 200,000 events span two days of event time).
        #[arg(long)]
        event_rate: Option<f64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// App frame time (layout + tessellation) on each panel at several
    /// window sizes and scales, and resident memory, against DATABASE_URL
    /// (default: the analytics bench's database).
    Ui {
        /// Timed frames per case.
        #[arg(long, default_value_t = 200)]
        frames: usize,
        /// Dashboard range: 15m, 1h, 24h, 7d or all.
        #[arg(long, default_value = "7d")]
        last: String,
        /// Database on the DATABASE_URL server (default salespulse_analytics_bench).
        #[arg(long, default_value = "salespulse_analytics_bench")]
        database: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// CPU and frames of an idle app (pipeline stopped, auto-refresh on) on
    /// the dashboard and the pipeline panel, against DATABASE_URL (default:
    /// the analytics bench's database).
    Idle {
        /// Measured seconds per panel.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Seconds each panel settles before it is measured.
        #[arg(long, default_value_t = 10)]
        settle: u64,
        /// Dashboard auto-refresh interval, seconds.
        #[arg(long, default_value_t = 5.0)]
        refresh: f64,
        /// Database on the DATABASE_URL server (default salespulse_analytics_bench).
        #[arg(long, default_value = "salespulse_analytics_bench")]
        database: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Dashboard refresh (cold and warm) over N transactions against plain
    /// GROUP BY, and the two loaders. Loads the data once into its own
    /// database and reuses it on later runs with the same N and seed.
    Analytics {
        #[command(flatten)]
        data: BenchData,
        /// Timed repetitions of each measurement.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Reload the data even if the bench database has it.
        #[arg(long)]
        reload: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Many dashboard clients over HTTP (the dashboard's views, mixed
    /// filters, ETags) on a copy of the analytics bench data while ingest
    /// runs: latency by answer, single flight, ingest latency meanwhile.
    Readers {
        /// Concurrent dashboard clients.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// Seconds the clients run.
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// Seconds of ingest before the clients start.
        #[arg(long, default_value_t = 10)]
        warmup: u64,
        /// Events per second ingested meanwhile.
        #[arg(long, default_value_t = 2_000.0)]
        rate: f64,
        /// Each client's refresh interval in ms (0: as fast as answered).
        #[arg(long, default_value_t = 1_000)]
        interval_ms: u64,
        /// Refreshes before a client picks other filters.
        #[arg(long, default_value_t = 3)]
        refreshes_per_filter: u32,
        /// The history the dashboards read (the analytics bench's data,
        /// loaded once).
        #[command(flatten)]
        data: BenchData,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The analytics bench's data set (`bench analytics`, `bench readers`).
#[derive(clap::Args, Debug)]
pub struct BenchData {
    /// Transactions to load.
    #[arg(long, default_value_t = 10_000_000)]
    pub transactions: u64,
    /// Days of history the transactions span.
    #[arg(long, default_value_t = 90)]
    pub days: u32,
    /// Seed of the generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Database it lives in (default salespulse_analytics_bench).
    #[arg(long)]
    pub database: Option<String>,
}

impl BenchData {
    /// The bench options for this data set.
    pub fn options(
        self,
        repeat: usize,
        reload: bool,
    ) -> salespulse::bench::analytics::AnalyticsBenchOptions {
        salespulse::bench::analytics::AnalyticsBenchOptions {
            transactions: self.transactions,
            days: self.days,
            seed: self.seed,
            repeat: repeat.max(1),
            reload,
            database: self.database,
        }
    }
}
