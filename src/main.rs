//! The `salespulse` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use salespulse::analytics::metrics::{self, Metric};
use salespulse::analytics::{export, AnalyticsError, ViewKind, ViewRequest};
use salespulse::api::{self, ApiState, HealthTargets, Telemetry};
use salespulse::bus::EmbeddedBroker;
use salespulse::config::Config;
use salespulse::generator::{self, Clock, Generator, GeneratorParams, OutputFormat};
use salespulse::pipeline::{
    self, bench, doctor, IngestSettings, IngestStats, RunOptions, Services,
};
use salespulse::ui::{self, log::LogBuffer};

#[derive(Parser)]
#[command(
    name = "salespulse",
    version,
    about = "Real-time sales analytics workbench"
)]
struct Cli {
    /// Config file (default: $SALESPULSE_CONFIG, else ./salespulse.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `salespulse=debug` (default: $RUST_LOG, else info).
    #[arg(long, global = true)]
    log: Option<String>,
    /// Without a command, the desktop workbench opens.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
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
        /// possible with --events, else 500.
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
        #[command(flatten)]
        behaviour: BehaviourArgs,
    },
    /// Custom metrics (Rhai scripts over Polars frames).
    Metric {
        #[command(subcommand)]
        which: MetricCommand,
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
    /// Writes generated events to stdout.
    Generate {
        #[arg(long)]
        count: u64,
        /// ndjson or csv.
        #[arg(long, default_value = "ndjson")]
        format: OutputFormat,
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
        #[arg(long, default_value_t = 100)]
        ingest_kills: usize,
        /// PostgreSQL restarts (alternating fast and immediate shutdown).
        #[arg(long, default_value_t = 6)]
        postgres_restarts: usize,
        #[arg(long, default_value_t = 6)]
        broker_restarts: usize,
        #[arg(long, default_value_t = 3)]
        redis_restarts: usize,
        /// Long outages of PostgreSQL and of the broker (each).
        #[arg(long, default_value_t = 1)]
        outages: usize,
        /// Seconds each long outage lasts.
        #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        outage_secs: u64,
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
        #[arg(long)]
        json: bool,
    },
    /// One or more ingest workers joining the consumer group (needs KAFKA_BROKERS).
    Ingest {
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// The HTTP generator API: GET /event, /stream?rate=R&count=N, /health.
    Serve {
        /// Address to bind (default from config: 127.0.0.1:8080).
        #[arg(long)]
        bind: Option<String>,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The embedded mock Kafka cluster, standalone on a fixed port, for
    /// several local processes.
    Broker {
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
struct BehaviourArgs {
    /// Shop script (default: the built-in scripts/generator/default.rhai);
    /// fields it leaves out keep the built-in values.
    #[arg(long, value_name = "FILE")]
    generator_script: Option<PathBuf>,
    /// Scenario script switched on from the start (repeatable), e.g.
    /// scripts/generator/flash_sale.rhai.
    #[arg(long, value_name = "FILE")]
    scenario: Vec<PathBuf>,
}

impl BehaviourArgs {
    fn load(&self) -> anyhow::Result<(GeneratorParams, Vec<generator::Scenario>)> {
        let params = match &self.generator_script {
            Some(p) => generator::behaviour::load_shop(p)?,
            None => GeneratorParams::default(),
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
enum MetricCommand {
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

/// View filters; lists take commas or repeated flags.
#[derive(clap::Args, Debug, Default)]
struct FilterArgs {
    /// Relative range ending at the newest event: 15m, 1h, 24h, 7d, all.
    #[arg(long)]
    last: Option<String>,
    /// Range start (RFC 3339 or YYYY-MM-DD, UTC), with --to.
    #[arg(long)]
    from: Option<String>,
    /// Range end, exclusive.
    #[arg(long)]
    to: Option<String>,
    #[arg(long)]
    category: Vec<String>,
    #[arg(long)]
    payment_method: Vec<String>,
    #[arg(long)]
    region: Vec<String>,
    #[arg(long)]
    channel: Vec<String>,
    #[arg(long)]
    status: Vec<String>,
    /// revenue_trend bucket: auto, minute, 5m, 15m, hour, day, week.
    #[arg(long)]
    granularity: Option<String>,
    /// Rows (top_products, top_customers, transactions).
    #[arg(long)]
    limit: Option<String>,
    /// Rows to skip (transactions).
    #[arg(long)]
    offset: Option<String>,
}

impl FilterArgs {
    fn request(&self, view: &str) -> Result<ViewRequest, AnalyticsError> {
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
enum CacheCommand {
    /// Deletes every cached frame.
    Clear,
    /// Shows whether Redis answers and the cache settings.
    Status,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Fuzz the event decoder and the COPY encoder with random and mutated
    /// payloads: no panic, accepted events round-trip and encode cleanly.
    Fuzz {
        /// Inputs to try.
        #[arg(long, default_value_t = 10_000_000)]
        inputs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[arg(long)]
        json: bool,
    },
    /// Generator speed on one thread with a shop script (default: the
    /// built-in one): events made, and events made and encoded as JSON.
    Generator {
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
        #[arg(long, value_name = "FILE")]
        script: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        #[arg(long)]
        json: bool,
    },
    /// Pipeline ingest rate against a raw COPY of the same events.
    Ingest {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Ingest workers (consumer-group members); each has
        /// `ingest_lanes` parallel write lanes.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Keep the bench database.
        #[arg(long)]
        keep: bool,
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
        #[arg(long)]
        json: bool,
    },
    /// Dashboard refresh (cold and warm) over N transactions against plain
    /// GROUP BY, and the two loaders. Loads the data once into its own
    /// database and reuses it on later runs with the same N and seed.
    Analytics {
        #[arg(long, default_value_t = 10_000_000)]
        transactions: u64,
        /// Days of history the transactions span.
        #[arg(long, default_value_t = 90)]
        days: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Timed repetitions of each measurement.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Reload the data even if the bench database has it.
        #[arg(long)]
        reload: bool,
        /// Database to load into (default salespulse_analytics_bench).
        #[arg(long)]
        database: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Logs to stderr, and into `app_log` (the app's log view) when given.
fn init_logging(filter: Option<&str>, app_log: Option<&LogBuffer>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        // librdkafka's own warnings include every refused lag-only offset
        // commit during a rebalance; its errors are still shown.
        .unwrap_or_else(|| {
            "info,librdkafka=error,rdkafka=warn,sqlx=warn,winit=error,eframe=warn".into()
        });
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(filter))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(app_log.map(LogBuffer::layer))
        .try_init();
}

/// Prints a report as pretty JSON, or as its text (ending in one newline).
fn print_report<R: serde::Serialize + std::fmt::Display>(
    report: &R,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        let text = report.to_string();
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
    }
    Ok(())
}

/// Prints an error as its chain of causes on one line, never a backtrace
/// (`RUST_BACKTRACE` is for panics, not for what the user did).
fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::App);
    if matches!(command, Command::ScriptHost) {
        // No configuration and no services: the parent answers for them.
        init_logging(Some("warn"), None);
        return salespulse::analytics::script_host::serve_child();
    }
    let app_log = matches!(
        command,
        Command::App
            | Command::Bench {
                which: BenchCommand::Idle { .. }
            }
    )
    .then(LogBuffer::default);
    init_logging(cli.log.as_deref(), app_log.as_ref());
    let mut cfg = Config::load(cli.config.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if let Command::Bench {
        which:
            BenchCommand::Ui {
                frames,
                last,
                database,
                json,
            },
    } = &command
    {
        // This thread plays the UI thread; the app's backend uses the runtime.
        let (base, _pg) = rt.block_on(pipeline::database_url(&cfg))?;
        cfg.database_url = Some(salespulse::store::with_database(&base, database)?);
        let opts = ui::bench::UiBenchOptions {
            frames: *frames,
            range: salespulse::analytics::TimeRange::parse_last(last)?,
        };
        let report = ui::bench::run(rt.handle().clone(), cfg, &opts)?;
        print_report(&report, *json)?;
        return Ok(());
    }
    if let Command::Bench {
        which:
            BenchCommand::Idle {
                seconds,
                settle,
                refresh,
                database,
                json,
            },
    } = &command
    {
        let (base, _pg) = rt.block_on(pipeline::database_url(&cfg))?;
        cfg.database_url = Some(salespulse::store::with_database(&base, database)?);
        let opts = ui::bench::IdleBenchOptions {
            seconds: *seconds,
            settle: *settle,
            refresh_secs: *refresh,
        };
        let logs = app_log.unwrap_or_default();
        let report = ui::bench::idle(rt.handle().clone(), cfg, logs, &opts)?;
        print_report(&report, *json)?;
        return Ok(());
    }
    match app_log {
        // The window runs on this (main) thread; the pipeline on the runtime.
        Some(log) => {
            let r = ui::run(rt.handle().clone(), cfg, log);
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            r
        }
        None => rt.block_on(dispatch(command, &mut cfg)),
    }
}

async fn dispatch(command: Command, cfg: &mut Config) -> anyhow::Result<()> {
    match command {
        Command::App
        | Command::ScriptHost
        | Command::Bench {
            which: BenchCommand::Ui { .. } | BenchCommand::Idle { .. },
        } => anyhow::bail!("this command runs on the main thread, not here"),
        Command::Run {
            events,
            rate,
            seed,
            workers,
            backfill_from,
            partitions,
            http,
            behaviour,
        } => {
            let (params, scenarios) = behaviour.load()?;
            if let Some(p) = partitions {
                cfg.partitions = p;
                cfg.check()?;
            }
            let rate = match (rate, events) {
                (Some(r), _) if r > 0.0 => Some(r),
                (Some(_), _) | (None, Some(_)) => None,
                (None, None) => Some(500.0),
            };
            let opts = RunOptions {
                events,
                rate,
                seed: seed.unwrap_or_else(rand::random),
                workers,
                clock: backfill_from.map_or(Clock::Wall, Clock::Simulated),
                params,
                scenarios,
                http,
            };
            let report = pipeline::run(cfg, opts).await?;
            println!(
                "produced {} events and committed them all in {:.2} s: {:.0} events/s \
                 ({} sales, {} sessions, {} duplicates skipped, {} dead-lettered, {} offsets lost at the broker)",
                report.produced,
                report.elapsed.as_secs_f64(),
                report.events_per_sec(),
                report.sales,
                report.sessions,
                report.duplicates,
                report.dead_lettered,
                report.offsets_skipped
            );
        }
        Command::Generate {
            count,
            format,
            seed,
            start,
            wall_clock,
            behaviour,
        } => {
            let (params, scenarios) = behaviour.load()?;
            let clock = if wall_clock {
                Clock::Wall
            } else {
                Clock::Simulated(start.unwrap_or_else(generator::default_simulated_start))
            };
            let board = generator::Switchboard::new();
            for sc in scenarios {
                board.switch_on(sc);
            }
            let mut g = Generator::new(params, seed, clock)?.with_switch(board);
            let stdout = std::io::stdout().lock();
            match generator::write_events(&mut g, count, format, stdout) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                r => r?,
            }
        }
        Command::Ingest { workers } => {
            anyhow::ensure!(
                cfg.kafka_brokers.is_some(),
                "`salespulse ingest` joins a consumer group on a shared broker: set KAFKA_BROKERS \
                 (for local use, start one with `salespulse broker` and set KAFKA_BROKERS=127.0.0.1:9092)"
            );
            let services = Services::resolve(cfg).await?;
            // A service that is down at start is waited for; only a
            // configuration error ends the command.
            let store = loop {
                match services.prepare(cfg).await {
                    Ok(store) => break store,
                    Err(e) if pipeline::is_config_error(&e) => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "waiting for the services; retrying in 2 s");
                        tokio::select! {
                            _ = pipeline::shutdown_signal() => return Ok(()),
                            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                        }
                    }
                }
            };
            let settings = IngestSettings::from_config(cfg, &services.brokers);
            let stop = Arc::new(AtomicBool::new(false));
            let stats = Arc::new(IngestStats::default());
            let handles = pipeline::spawn_workers(workers, &settings, &store, &stop, &stats)
                .context("starting ingest workers")?;
            tracing::info!(workers, group = %cfg.group_id, topic = %cfg.topic, "ingest running; Ctrl-C to stop");
            tokio::select! {
                _ = pipeline::shutdown_signal() => {}
                _ = pipeline::any_finished(&handles) => tracing::error!("an ingest worker stopped"),
            }
            stop.store(true, Ordering::Release);
            pipeline::join_workers(handles).await?;
            println!(
                "ingested {} sales and {} sessions ({} duplicates skipped, {} dead-lettered)",
                stats.sales.load(Ordering::Relaxed),
                stats.sessions.load(Ordering::Relaxed),
                stats.duplicates.load(Ordering::Relaxed),
                stats.dead_lettered.load(Ordering::Relaxed)
            );
        }
        Command::Chaos {
            rate,
            poison_every,
            ingest_kills,
            postgres_restarts,
            broker_restarts,
            redis_restarts,
            outages,
            outage_secs,
            seed,
            work_dir,
            tansu,
            recovery_limit_secs,
            time_limit_secs,
            json,
        } => {
            anyhow::ensure!(
                rate.is_finite() && (1.0..=100_000.0).contains(&rate),
                "--rate must be between 1 and 100000 events/s"
            );
            let opts = pipeline::chaos::ChaosOptions {
                rate,
                poison_every,
                ingest_kills,
                postgres_restarts,
                broker_restarts,
                redis_restarts,
                outages,
                outage: std::time::Duration::from_secs(outage_secs),
                partitions: 3,
                seed,
                work_dir,
                salespulse: None,
                tansu,
                recovery_limit: std::time::Duration::from_secs(recovery_limit_secs),
                time_limit: time_limit_secs.map(std::time::Duration::from_secs),
            };
            // Ctrl-C drops the run, and with it every private service and
            // ingest process it started (they are killed on drop).
            let report = tokio::select! {
                r = pipeline::chaos::run(&opts) => r?,
                _ = pipeline::shutdown_signal() => anyhow::bail!("chaos run interrupted; its services are stopped"),
            };
            print_report(&report, json)?;
            anyhow::ensure!(
                report.passed(),
                "the pipeline lost, doubled or miscomputed something (above)"
            );
        }
        Command::Serve { bind, seed } => {
            let services = Services::resolve(cfg).await?;
            let health = HealthTargets {
                kafka_brokers: Some(services.brokers.clone()),
                database_url: Some(services.database_url.clone()),
                redis_url: Some(cfg.redis_url.clone()),
            };
            let store = services.prepare(cfg).await?;
            let telemetry = Telemetry {
                analytics: Some(pipeline::analytics(cfg, &store)?),
                lag: Some(api::LagSource {
                    brokers: services.brokers.clone(),
                    topic: cfg.topic.clone(),
                    group: cfg.group_id.clone(),
                    store: store.clone(),
                }),
                ..Telemetry::default()
            };
            let state = Arc::new(
                ApiState::new(
                    GeneratorParams::default(),
                    seed.unwrap_or_else(rand::random),
                    health,
                )?
                .with_telemetry(telemetry)
                .with_token(api::token_from_env()),
            );
            let bind = bind.unwrap_or_else(|| cfg.http_bind.clone());
            api::serve(&bind, state, pipeline::shutdown_signal())
                .await
                .with_context(|| format!("serving on {bind}"))?;
        }
        Command::Query {
            view,
            filters,
            format,
            no_cache,
            raw_csv,
        } => {
            let req = filters.request(&view)?;
            let (store, _pg) = pipeline::open_store(cfg).await?;
            let analytics = pipeline::analytics(cfg, &store)?;
            let mut frame = if no_cache {
                let v = analytics.versions().await?;
                let (span, g) = salespulse::analytics::Analytics::resolve(&req, &v);
                analytics.compute(&req, span, g).await?
            } else {
                let r = analytics.view(&req).await?;
                tracing::debug!(outcome = ?r.outcome, elapsed = ?r.elapsed, "view answered");
                if let Some(e) = analytics.cache().status().error {
                    tracing::warn!("cache bypassed: {e}");
                }
                r.frame
            };
            write_frame(&mut frame, &format, raw_csv)?;
        }
        Command::Export {
            view,
            filters,
            format,
            out,
            raw_csv,
        } => {
            let req = filters.request(&view)?;
            let format: export::ExportFormat = match format {
                Some(f) => f.parse().map_err(anyhow::Error::msg)?,
                None => export::ExportFormat::from_path(&out).context(
                    "cannot tell the format from the file name: give --format csv or parquet",
                )?,
            };
            let format = match format {
                export::ExportFormat::Csv if raw_csv => export::ExportFormat::CsvRaw,
                f => f,
            };
            let (store, _pg) = pipeline::open_store(cfg).await?;
            let analytics = pipeline::analytics(cfg, &store)?;
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {wide_bar} {human_pos}/{human_len} rows ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let report = export::export_view(&analytics, &req, &out, format, |done, total| {
                if let Some(t) = total {
                    bar.set_length(t);
                }
                bar.set_position(done);
            })
            .await;
            bar.finish_and_clear();
            let report = report?;
            println!(
                "wrote {} rows ({} bytes) to {}",
                report.rows,
                report.bytes,
                report.path.display()
            );
        }
        Command::Metric {
            which:
                MetricCommand::Run {
                    file,
                    filters,
                    format,
                    no_cache,
                    raw_csv,
                },
        } => {
            let metric = Arc::new(Metric::load(&file)?);
            let f = filters.request("kpis")?.filters;
            let (store, _pg) = pipeline::open_store(cfg).await?;
            let analytics = pipeline::analytics(cfg, &store)?;
            let mut frame = if no_cache {
                analytics.run_script(metric, &f, None).await?
            } else {
                let r = analytics.metric(&metric, &f).await?;
                tracing::debug!(outcome = ?r.outcome, elapsed = ?r.elapsed, "metric answered");
                if let Some(p) = r.previous {
                    tracing::info!("previous period: {p}");
                }
                r.frame
            };
            write_frame(&mut frame, &format, raw_csv)?;
        }
        Command::Metric {
            which: MetricCommand::List { dir },
        } => {
            let mut failed = 0;
            for m in metrics::load_dir(&dir) {
                match m {
                    Ok(m) => println!(
                        "{:<34} {:<6} {:<9} {}",
                        m.info.file,
                        format!("{:?}", m.info.kind).to_lowercase(),
                        format!("{:?}", m.info.format).to_lowercase(),
                        m.info.name
                    ),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{e}");
                    }
                }
            }
            anyhow::ensure!(failed == 0, "{failed} metric scripts do not compile");
        }
        Command::Bench {
            which:
                BenchCommand::Fuzz {
                    inputs,
                    seed,
                    threads,
                    json,
                },
        } => {
            let report = pipeline::fuzz::run(&pipeline::fuzz::FuzzOptions {
                inputs,
                seed,
                threads,
            });
            print_report(&report, json)?;
            anyhow::ensure!(
                report.clean(),
                "the fuzzer found broken properties (listed above)"
            );
        }
        Command::Bench {
            which:
                BenchCommand::Generator {
                    events,
                    script,
                    repeat,
                    json,
                },
        } => {
            let params = match &script {
                Some(p) => generator::behaviour::load_shop(p)?,
                None => GeneratorParams::default(),
            };
            let report = bench::generator(params, events, repeat.max(1))?;
            print_report(&report, json)?;
        }
        Command::Cache { which } => {
            let cache = salespulse::cache::FrameCache::new(
                &cfg.redis_url,
                std::time::Duration::from_secs(cfg.cache_ttl_secs.max(1)),
            )?;
            match which {
                CacheCommand::Clear => {
                    let n = cache.clear().await?;
                    println!("deleted {n} cached frames");
                }
                CacheCommand::Status => {
                    let status = cache.probe().await;
                    println!("{}", serde_json::to_string_pretty(&status)?);
                }
            }
        }
        Command::Broker { port } => {
            let broker = EmbeddedBroker::start_on_port(port).await?;
            for t in [&cfg.topic, &cfg.dlq_topic] {
                broker.create_topic(t, cfg.partitions)?;
            }
            println!(
                "mock Kafka broker on {} (topics {} and {}, {} partitions; in memory). \
                 Use KAFKA_BROKERS={} ; Ctrl-C to stop.",
                broker.bootstrap_servers(),
                cfg.topic,
                cfg.dlq_topic,
                cfg.partitions,
                broker.bootstrap_servers()
            );
            pipeline::shutdown_signal().await;
        }
        Command::Doctor => {
            println!("configuration:\n{}\n", cfg.summary());
            let checks = doctor::diagnose(cfg).await;
            print!("{}", doctor::render(&checks));
            if checks.iter().any(|c| !c.ok) {
                anyhow::bail!("some dependencies are not available");
            }
        }
        Command::Bench {
            which:
                BenchCommand::Analytics {
                    transactions,
                    days,
                    seed,
                    repeat,
                    reload,
                    database,
                    json,
                },
        } => {
            let report = pipeline::analytics_bench::run(
                cfg,
                &pipeline::analytics_bench::AnalyticsBenchOptions {
                    transactions,
                    days,
                    seed,
                    repeat: repeat.max(1),
                    reload,
                    database,
                },
            )
            .await?;
            print_report(&report, json)?;
        }
        Command::Bench {
            which:
                BenchCommand::Ingest {
                    events,
                    workers,
                    seed,
                    keep,
                    json,
                },
        } => {
            let report = bench::ingest(
                cfg,
                &bench::IngestBenchOptions {
                    events,
                    workers,
                    seed,
                    keep,
                },
            )
            .await?;
            print_report(&report, json)?;
        }
    }
    Ok(())
}

/// Prints a frame to stdout as a table, CSV or JSON.
fn write_frame(
    frame: &mut polars::prelude::DataFrame,
    format: &str,
    raw_csv: bool,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout().lock();
    match format {
        "table" => print_table(frame),
        "csv" => export::write_csv(frame, stdout, raw_csv)?,
        "json" => {
            export::write_json(frame, stdout)?;
            println!();
        }
        f => anyhow::bail!("--format {f:?} is not table, csv or json"),
    }
    Ok(())
}

/// Prints a frame as a table, all rows and columns.
fn print_table(df: &polars::prelude::DataFrame) {
    // Polars reads its table settings from the environment.
    for (k, v) in [
        ("POLARS_FMT_MAX_ROWS", "-1"),
        ("POLARS_FMT_MAX_COLS", "-1"),
        ("POLARS_FMT_STR_LEN", "64"),
        ("POLARS_FMT_TABLE_HIDE_DATAFRAME_SHAPE_INFORMATION", "1"),
        ("POLARS_FMT_TABLE_HIDE_COLUMN_DATA_TYPES", "1"),
    ] {
        if std::env::var_os(k).is_none() {
            // SAFETY: called before any other thread reads the environment
            // for these keys (the runtime's workers never do).
            unsafe { std::env::set_var(k, v) };
        }
    }
    println!("{df}");
    println!("{} rows", df.height());
}
