//! One short function per command: each turns its arguments into the
//! library's options, calls the library, and prints the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use salespulse::analytics::metrics::{self, Metric};
use salespulse::analytics::{export, Analytics};
use salespulse::bench;
use salespulse::bus::EmbeddedBroker;
use salespulse::config::Config;
use salespulse::generator::{self, Clock, Generator, GeneratorParams};
use salespulse::notebook;
use salespulse::pipeline::doctor;
use salespulse::services::{self, RunOptions};
use salespulse::ui::{self, log::LogBuffer};

use crate::args::{
    AlertsCommand, BehaviourArgs, BenchCommand, CacheCommand, Cli, Command, FilterArgs,
    KernelCommand, MetricCommand, NotebookCommand, RollupsCommand,
};
use crate::report::{print_report, write_frame};
use crate::UsageError;

/// Sets up logging, the configuration and the runtime, and runs `cli`'s
/// command (the app when none is given).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::App);
    if matches!(command, Command::ScriptHost) {
        // No configuration and no services: the parent answers for them.
        crate::init_logging(Some("warn"), None);
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
    crate::init_logging(cli.log.as_deref(), app_log.as_ref());
    let mut cfg = Config::load(cli.config.as_deref())?;
    salespulse::bus::set_security(cfg.kafka_security());
    // The key password is now in the Kafka settings: the programs this one
    // starts (ingest children, brokers, servers) do not inherit it. No
    // other thread runs yet.
    std::env::remove_var("SALESPULSE_KAFKA_SSL_KEY_PASSWORD");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // These run on this (main) thread, which plays the UI thread; the
    // pipeline and the app's backend run on the runtime.
    match command {
        Command::App => {
            let r = ui::run(rt.handle().clone(), cfg, app_log.unwrap_or_default());
            rt.shutdown_timeout(Duration::from_secs(5));
            r
        }
        Command::Bench {
            which:
                BenchCommand::Ui {
                    frames,
                    last,
                    database,
                    json,
                },
        } => {
            use_bench_database(&rt, &mut cfg, &database)?;
            let opts = bench::ui::UiBenchOptions {
                frames,
                range: salespulse::analytics::TimeRange::parse_last(&last)
                    .map_err(|e| UsageError::new(format!("--last: {e}")))?,
            };
            print_report(&bench::ui::run(rt.handle().clone(), cfg, &opts)?, json)
        }
        Command::Bench {
            which:
                BenchCommand::Idle {
                    seconds,
                    settle,
                    refresh,
                    database,
                    json,
                },
        } => {
            use_bench_database(&rt, &mut cfg, &database)?;
            let opts = bench::ui::IdleBenchOptions {
                seconds,
                settle,
                refresh_secs: refresh,
            };
            let logs = app_log.unwrap_or_default();
            print_report(
                &bench::ui::idle(rt.handle().clone(), cfg, logs, &opts)?,
                json,
            )
        }
        command => rt.block_on(dispatch(command, &mut cfg)),
    }
}

/// Points `cfg` at `database` on the configured (or embedded) server.
fn use_bench_database(
    rt: &tokio::runtime::Runtime,
    cfg: &mut Config,
    database: &str,
) -> anyhow::Result<()> {
    let (base, _pg) = rt.block_on(services::database_url(cfg))?;
    cfg.database_url = Some(salespulse::store::with_database(&base, database)?);
    Ok(())
}

/// The commands that run on the runtime.
async fn dispatch(command: Command, cfg: &mut Config) -> anyhow::Result<()> {
    match command {
        Command::App | Command::ScriptHost => {
            anyhow::bail!("this command runs on the main thread, not here")
        }
        Command::Run {
            events,
            rate,
            seed,
            workers,
            backfill_from,
            partitions,
            http,
            alerts,
            replay,
            behaviour,
        } => {
            if let Some(p) = partitions {
                cfg.partitions = p;
                cfg.check()
                    .map_err(|e| UsageError::new(format!("--partitions: {e}")))?;
            }
            let (params, scenarios) = behaviour.load()?;
            let opts = RunOptions {
                events,
                // A replay goes as fast as it can unless paced.
                rate: if replay.is_some() {
                    rate
                } else {
                    services::default_rate(rate, events)
                },
                seed: seed.unwrap_or_else(rand::random),
                workers,
                clock: backfill_from.map_or(Clock::Wall, Clock::Simulated),
                params,
                scenarios,
                http,
                measure_after: Duration::ZERO,
                alerts: if alerts {
                    Some(services::alerts::AlertsOptions {
                        dir: services::alerts::rules_dir(cfg),
                        webhook: services::alerts::webhook(cfg).map_err(UsageError::new)?,
                        desktop: false,
                    })
                } else {
                    None
                },
                replay,
            };
            println!("{}", services::run(cfg, opts).await?);
            Ok(())
        }
        Command::Generate {
            count,
            days,
            stats,
            json,
            format,
            seed,
            start,
            wall_clock,
            behaviour,
        } => {
            let start = start.unwrap_or_else(generator::default_simulated_start);
            let clock = if wall_clock {
                Clock::Wall
            } else {
                Clock::Simulated(start)
            };
            let extent = match (count, days) {
                (Some(n), _) => generator::Extent::Events(n),
                (None, Some(d)) if d.is_finite() && d > 0.0 && d <= 36_500.0 => {
                    generator::Extent::Until(
                        start + chrono::Duration::seconds((d * 86_400.0) as i64),
                    )
                }
                (None, _) => return Err(UsageError::new("--days must be within (0, 36500]").into()),
            };
            generate(
                &behaviour,
                extent,
                format,
                seed,
                clock,
                stats.then_some(json),
            )
        }
        Command::Ingest { workers } => {
            println!("{}", services::ingest(cfg, workers).await?);
            Ok(())
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
            consumer_group,
            seed,
            work_dir,
            tansu,
            recovery_limit_secs,
            time_limit_secs,
            json,
        } => {
            if !(rate.is_finite() && (1.0..=100_000.0).contains(&rate)) {
                return Err(UsageError::new("--rate must be between 1 and 100000 events/s").into());
            }
            let opts = bench::chaos::ChaosOptions {
                rate,
                poison_every,
                ingest_kills,
                postgres_restarts,
                broker_restarts,
                redis_restarts,
                outages,
                outage: Duration::from_secs(outage_secs),
                partitions: 3,
                consumer_group,
                seed,
                work_dir,
                salespulse: None,
                tansu,
                recovery_limit: Duration::from_secs(recovery_limit_secs),
                time_limit: time_limit_secs.map(Duration::from_secs),
            };
            chaos(&opts, json).await
        }
        Command::Serve { bind, seed } => {
            let bind = bind.unwrap_or_else(|| cfg.http_bind.clone());
            services::serve(cfg, &bind, seed.unwrap_or_else(rand::random)).await
        }
        Command::Query {
            view,
            filters,
            format,
            no_cache,
            raw_csv,
        } => query(cfg, &view, &filters, &format, no_cache, raw_csv).await,
        Command::Export {
            view,
            filters,
            format,
            out,
            raw_csv,
        } => export(cfg, &view, &filters, format.as_deref(), out, raw_csv).await,
        Command::Metric {
            which:
                MetricCommand::Run {
                    file,
                    filters,
                    format,
                    no_cache,
                    raw_csv,
                },
        } => metric_run(cfg, file, &filters, &format, no_cache, raw_csv).await,
        Command::Metric {
            which: MetricCommand::List { dir },
        } => metric_list(&dir),
        Command::Alerts { which } => alerts_command(cfg, which).await,
        Command::Segments {
            as_of,
            period,
            format,
            export,
            out,
        } => segments_command(cfg, as_of, &period, &format, export, out).await,
        Command::Notebook {
            which:
                NotebookCommand::Run {
                    files,
                    params,
                    out,
                    html,
                    filters,
                },
        } => notebook_run(cfg, &files, &params, out, html, &filters).await,
        Command::Notebook {
            which: NotebookCommand::List { dir },
        } => notebook_list(&dir),
        Command::Notebook {
            which:
                NotebookCommand::Schedule {
                    file,
                    every,
                    off: _,
                },
        } => notebook_schedule(&file, every.as_deref()),
        Command::Notebook {
            which: NotebookCommand::History { file },
        } => notebook_history(&file),
        Command::Kernel {
            which: Some(KernelCommand::Install { user: _, prefix }),
            ..
        } => kernel_install(prefix),
        Command::Kernel {
            connection_file: Some(file),
            which: None,
        } => kernel(cfg, &file).await,
        Command::Kernel { .. } => Err(UsageError::new(
            "`salespulse kernel` needs -f CONNECTION_FILE (Jupyter passes it) or `install`",
        )
        .into()),
        Command::Cache { which } => cache(cfg, which).await,
        Command::Rollups { which } => rollups(cfg, which).await,
        Command::Broker { port } => broker(cfg, port).await,
        Command::Doctor => {
            println!("configuration:\n{}\n", cfg.summary());
            let checks = doctor::diagnose(cfg).await;
            print!("{}", doctor::render(&checks));
            anyhow::ensure!(
                checks.iter().all(|c| c.ok),
                "some dependencies are not available"
            );
            Ok(())
        }
        Command::Bench { which } => bench_command(cfg, which).await,
    }
}

/// `salespulse generate`: events to stdout.
fn generate(
    behaviour: &BehaviourArgs,
    extent: generator::Extent,
    format: generator::OutputFormat,
    seed: u64,
    clock: Clock,
    stats_json: Option<bool>,
) -> anyhow::Result<()> {
    let (params, scenarios) = behaviour.load()?;
    let board = generator::Switchboard::new();
    for sc in scenarios {
        board.switch_on(sc);
    }
    let mut g = Generator::new(params, seed, clock)?.with_switch(board);
    if let Some(json) = stats_json {
        let report = generator::customer_stats(&mut g, extent);
        return print_report(&report, json);
    }
    let stdout = std::io::stdout().lock();
    match generator::write_events(&mut g, extent, format, stdout) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// `salespulse chaos`: the fault suite; fails when anything was lost,
/// doubled or miscomputed.
async fn chaos(opts: &bench::chaos::ChaosOptions, json: bool) -> anyhow::Result<()> {
    // Ctrl-C drops the run, and with it every private service and ingest
    // process it started (they are killed on drop).
    let report = tokio::select! {
        r = bench::chaos::run(opts) => r?,
        _ = services::shutdown_signal() => anyhow::bail!("chaos run interrupted; its services are stopped"),
    };
    print_report(&report, json)?;
    anyhow::ensure!(
        report.passed(),
        "the pipeline lost, doubled or miscomputed something (above)"
    );
    Ok(())
}

/// The analytics layer over the configured (or embedded) database. Keep
/// the returned handle alive while it is used.
async fn open_analytics(
    cfg: &Config,
) -> anyhow::Result<(Analytics, Option<salespulse::store::EmbeddedPostgres>)> {
    let (store, pg) = services::open_store(cfg).await?;
    Ok((services::analytics(cfg, &store)?, pg))
}

/// A view's request from its name and filter flags (a usage error when
/// they do not parse).
fn request(filters: &FilterArgs, view: &str) -> anyhow::Result<salespulse::analytics::ViewRequest> {
    filters
        .request(view)
        .map_err(|e| UsageError::new(e.to_string()).into())
}

/// `salespulse query`: a view to stdout.
async fn query(
    cfg: &Config,
    view: &str,
    filters: &FilterArgs,
    format: &str,
    no_cache: bool,
    raw_csv: bool,
) -> anyhow::Result<()> {
    let req = request(filters, view)?;
    let (analytics, _pg) = open_analytics(cfg).await?;
    let mut frame = if no_cache {
        analytics.compute_uncached(&req).await?
    } else {
        let r = analytics.view(&req).await?;
        tracing::debug!(outcome = ?r.outcome, elapsed = ?r.elapsed, "view answered");
        if let Some(e) = analytics.cache().status().error {
            tracing::warn!("cache bypassed: {e}");
        }
        r.frame
    };
    write_frame(&mut frame, format, raw_csv)
}

/// `salespulse export`: a view to a CSV or Parquet file, with progress.
async fn export(
    cfg: &Config,
    view: &str,
    filters: &FilterArgs,
    format: Option<&str>,
    out: PathBuf,
    raw_csv: bool,
) -> anyhow::Result<()> {
    let req = request(filters, view)?;
    let format: export::ExportFormat = match format {
        Some(f) => f
            .parse()
            .map_err(|e: String| UsageError::new(format!("--format: {e}")))?,
        None => export::ExportFormat::from_path(&out).ok_or_else(|| {
            UsageError::new(
                "cannot tell the format from the file name: give --format csv or parquet",
            )
        })?,
    };
    let format = match format {
        export::ExportFormat::Csv if raw_csv => export::ExportFormat::CsvRaw,
        f => f,
    };
    let (analytics, _pg) = open_analytics(cfg).await?;
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
    Ok(())
}

/// `salespulse metric run`: a metric script's frame to stdout.
async fn metric_run(
    cfg: &Config,
    file: PathBuf,
    filters: &FilterArgs,
    format: &str,
    no_cache: bool,
    raw_csv: bool,
) -> anyhow::Result<()> {
    let metric = Arc::new(Metric::load(&file)?);
    let f = request(filters, "kpis")?.filters;
    let (analytics, _pg) = open_analytics(cfg).await?;
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
    write_frame(&mut frame, format, raw_csv)
}

/// `salespulse notebook run`: runs each notebook in turn; fails naming
/// the first failing cell of each notebook that failed.
async fn notebook_run(
    cfg: &Config,
    files: &[PathBuf],
    params: &[(String, String)],
    out: Option<PathBuf>,
    html: bool,
    filters: &FilterArgs,
) -> anyhow::Result<()> {
    let f = request(filters, "kpis")?.filters;
    let (analytics, _pg) = open_analytics(cfg).await?;
    let target = notebook::RunTarget { out_dir: out, html };
    let mut failed = Vec::new();
    for file in files {
        let source = analytics.frame_source(&f).await?;
        let (file2, params2, target2) = (file.clone(), params.to_vec(), target.clone());
        let done = tokio::task::spawn_blocking(move || {
            notebook::run_file(&file2, &params2, Some(source), &target2, None)
        })
        .await??;
        match &done.run.failed {
            None => println!(
                "{}: {} code cells in {:.1} s -> {}{}",
                file.display(),
                done.run.executed,
                done.run.elapsed.as_secs_f64(),
                done.notebook.display(),
                done.report
                    .as_ref()
                    .map_or_else(String::new, |r| format!(", {}", r.display()))
            ),
            Some(f) => {
                eprintln!(
                    "{}: cell {} failed: {} (written with the error: {})",
                    file.display(),
                    f.cell,
                    f.error,
                    done.notebook.display()
                );
                failed.push(format!("{} (cell {})", file.display(), f.cell));
            }
        }
    }
    anyhow::ensure!(failed.is_empty(), "notebooks failed: {}", failed.join(", "));
    Ok(())
}

/// `salespulse segments`.
async fn segments_command(
    cfg: &Config,
    as_of: Option<chrono::DateTime<chrono::Utc>>,
    period: &str,
    format: &str,
    export: Option<String>,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    use salespulse::analytics::segments;
    let d = salespulse::alerts::rule::parse_duration(period)
        .map_err(|e| UsageError::new(format!("--period: {e}")))?;
    if let Some(s) = &export {
        if !salespulse::script::rfm::SEGMENTS.contains(&s.as_str()) {
            return Err(UsageError::new(format!(
                "--export {s:?}: one of {}",
                salespulse::script::rfm::SEGMENTS.join(", ")
            ))
            .into());
        }
    }
    let (analytics, _pg) = open_analytics(cfg).await?;
    let as_of = as_of.unwrap_or_else(chrono::Utc::now);
    let r = segments::segments(analytics.pool(), as_of, chrono::Duration::from_std(d)?).await?;
    if let (Some(seg), Some(path)) = (export, out) {
        let fmt = export::ExportFormat::from_path(&path).ok_or_else(|| {
            UsageError::new(format!("--out {}: .csv or .parquet", path.display()))
        })?;
        let rows = segments::customers_of(&r.customers, &seg)?;
        let done = export::write_frame(&rows, &path, fmt)?;
        eprintln!(
            "{} customers of {seg} -> {} ({} bytes)",
            done.rows,
            path.display(),
            done.bytes
        );
        return Ok(());
    }
    eprintln!(
        "segments as of {}, movement since {}",
        r.as_of.to_rfc3339(),
        r.previous.to_rfc3339()
    );
    let mut summary = r.summary;
    write_frame(&mut summary, format, false)
}

/// `salespulse alerts …`.
async fn alerts_command(cfg: &Config, which: AlertsCommand) -> anyhow::Result<()> {
    use salespulse::alerts::{self, history};
    use services::alerts as wiring;
    let dir_or = |d: Option<PathBuf>| d.unwrap_or_else(|| wiring::rules_dir(cfg));
    match which {
        AlertsCommand::Test { file } => {
            let rule = alerts::rule::load(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
            let (analytics, _pg) = open_analytics(cfg).await?;
            let now = chrono::Utc::now();
            let ev = alerts::evaluate_with(&analytics, &rule, now, "()", std::time::Instant::now())
                .await;
            let mut state = alerts::RuleState::new(now);
            state.step(&rule, now, &ev.outcome);
            println!(
                "{} ({}): {}",
                rule.name,
                rule.file,
                rule.condition.describe()
            );
            match &ev.outcome {
                alerts::Outcome::Value { breach, .. } => println!(
                    "value: {} -> {} (now {}; fires after {:?} of this)",
                    ev.detail,
                    if *breach { "breaches" } else { "normal" },
                    state.state.as_str(),
                    rule.for_
                ),
                alerts::Outcome::NoData => println!("no data -> {}", state.state.as_str()),
                alerts::Outcome::Error(e) => anyhow::bail!("the rule's metric failed: {e}"),
            }
            println!("evaluated in {:.2} s", ev.secs);
            Ok(())
        }
        AlertsCommand::List { dir } => {
            let dir = dir_or(dir);
            let (rules, errors) = wiring::load_rules(&dir);
            let (analytics, _pg) = open_analytics(cfg).await?;
            let latest = history::latest(analytics.pool()).await?;
            let now = chrono::Utc::now();
            let silences = history::silences(analytics.pool(), now).await?;
            println!("{} rules in {}", rules.len(), dir.display());
            for r in &rules {
                let last = latest.iter().find(|e| e.rule == r.name);
                println!(
                    "  {:<28} {:<9} {:<9} every {:?}, for {:?}: {}{}",
                    r.name,
                    r.severity.as_str(),
                    last.map_or("normal", |e| e.state.as_str()),
                    r.every,
                    r.for_,
                    r.condition.describe(),
                    if history::is_silenced(&silences, &r.name, now) {
                        " (silenced)"
                    } else {
                        ""
                    }
                );
            }
            for e in &errors {
                println!("  error: {e}");
            }
            for s in &silences {
                println!(
                    "silence {}: {} until {} {}",
                    s.id,
                    s.rule,
                    s.until.to_rfc3339(),
                    s.reason
                );
            }
            anyhow::ensure!(errors.is_empty(), "{} rule files do not load", errors.len());
            Ok(())
        }
        AlertsCommand::History { rule, limit } => {
            let (analytics, _pg) = open_analytics(cfg).await?;
            for e in history::history(analytics.pool(), rule.as_deref(), limit).await? {
                println!(
                    "{}  {:<28} {:>9} -> {:<9} {}{}{}",
                    e.at.format("%Y-%m-%d %H:%M:%S"),
                    e.rule,
                    e.previous.map_or("", |p| p.as_str()),
                    e.state.as_str(),
                    e.notified
                        .map_or_else(String::new, |n| format!("[{}] ", n.as_str())),
                    if e.silenced { "(silenced) " } else { "" },
                    e.message
                );
            }
            Ok(())
        }
        AlertsCommand::Silence {
            rule,
            duration,
            reason,
        } => {
            let d = alerts::rule::parse_duration(&duration)
                .map_err(|e| UsageError::new(format!("--for: {e}")))?;
            let until = chrono::Utc::now() + chrono::Duration::from_std(d)?;
            let (analytics, _pg) = open_analytics(cfg).await?;
            let id = history::silence(analytics.pool(), &rule, until, &reason).await?;
            println!("silence {id}: {rule} until {}", until.to_rfc3339());
            Ok(())
        }
        AlertsCommand::Unsilence { id } => {
            let (analytics, _pg) = open_analytics(cfg).await?;
            anyhow::ensure!(
                history::unsilence(analytics.pool(), id).await?,
                "no silence {id}"
            );
            println!("silence {id} ended");
            Ok(())
        }
        AlertsCommand::Run { dir, desktop, once } => {
            let opts = wiring::AlertsOptions {
                dir: dir_or(dir),
                webhook: wiring::webhook(cfg).map_err(UsageError::new)?,
                desktop,
            };
            let (analytics, _pg) = open_analytics(cfg).await?;
            let mut engine = wiring::engine(analytics, &opts, None, None).await?;
            if once {
                let now = chrono::Utc::now();
                engine.tick(now).await;
                for v in engine.views(now) {
                    println!(
                        "{:<28} {:<9} {}",
                        v.rule.name,
                        v.state.state.as_str(),
                        v.detail
                    );
                }
                // Webhook deliveries end (sent, or given up after their
                // retries) before the process does.
                if !engine.settle(Duration::from_secs(60)).await {
                    eprintln!("some notifications were still being sent after 60 s");
                }
                return Ok(());
            }
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let task = wiring::spawn(engine, stopped, None);
            services::shutdown_signal().await;
            let _ = stop.send(true);
            task.await?;
            Ok(())
        }
    }
}

/// `salespulse kernel install`: the kernelspec for this binary.
fn kernel_install(prefix: Option<PathBuf>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("where is this binary?")?;
    let data = match prefix {
        Some(p) => p.join("share").join("jupyter"),
        None => notebook::kernel::user_data_dir()
            .context("no Jupyter data directory: set JUPYTER_DATA_DIR or use --prefix")?,
    };
    let dir = notebook::kernel::install(&data, &exe)
        .with_context(|| format!("cannot write the kernelspec into {}", data.display()))?;
    println!("installed kernelspec salespulse in {}", dir.display());
    Ok(())
}

/// `salespulse kernel -f FILE`: a Jupyter kernel over this database (the
/// data versions are read again before each cell).
async fn kernel(cfg: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the connection file {}", file.display()))?;
    let conn: jupyter_protocol::ConnectionInfo = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a Jupyter connection file", file.display()))?;
    // The database is opened when a cell first reads data, so that the
    // kernel answers Jupyter at once; if it cannot be, each cell that reads
    // data says why (restart the kernel once it is fixed).
    type Opened = (
        Result<Analytics, String>,
        Option<salespulse::store::EmbeddedPostgres>,
    );
    let opened: Arc<tokio::sync::OnceCell<Opened>> = Arc::default();
    let cfg = cfg.clone();
    let sources: notebook::kernel::SourceFactory = Arc::new(move || {
        let (opened, cfg) = (Arc::clone(&opened), cfg.clone());
        Box::pin(async move {
            let (analytics, _) = opened
                .get_or_init(|| async {
                    match open_analytics(&cfg).await {
                        Ok((a, pg)) => (Ok(a), pg),
                        Err(e) => (Err(format!("{e:#}")), None),
                    }
                })
                .await;
            match analytics {
                Ok(a) => a
                    .frame_source(&salespulse::analytics::Filters::default())
                    .await
                    .map_err(|e| e.to_string()),
                Err(why) => Err(why.clone()),
            }
        })
    });
    notebook::kernel::serve(conn, sources).await
}

/// `salespulse notebook schedule`: sets or removes a notebook's schedule.
fn notebook_schedule(file: &std::path::Path, every: Option<&str>) -> anyhow::Result<()> {
    use notebook::schedule;
    let every = every
        .map(schedule::Every::parse)
        .transpose()
        .map_err(|e| UsageError::new(format!("--every {e}")))?;
    let mut nb = notebook::Notebook::load(file)?;
    schedule::set_schedule(&mut nb, every.as_ref());
    nb.save(file)?;
    match every {
        Some(e) => {
            let next = e
                .next(
                    schedule::history(file).first().map(|r| r.started),
                    chrono::Utc::now(),
                )
                .map_or_else(
                    || "never".to_owned(),
                    |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
                );
            println!(
                "{}: every {e}; next run {next} (while `salespulse run` or the app runs); \
                 reports kept in {}",
                file.display(),
                schedule::runs_dir(file).display()
            );
        }
        None => println!("{}: no schedule", file.display()),
    }
    Ok(())
}

/// `salespulse notebook history`: a notebook's kept runs.
fn notebook_history(file: &std::path::Path) -> anyhow::Result<()> {
    use notebook::schedule;
    let runs = schedule::history(file);
    if runs.is_empty() {
        println!("{}: no kept runs", file.display());
    }
    let dir = schedule::runs_dir(file);
    for r in runs {
        let outcome = match (&r.failed_cell, &r.error) {
            (Some(c), Some(e)) => format!("failed at cell {c}: {e}"),
            _ => format!("ok, {} code cells", r.executed),
        };
        println!(
            "{}  {:>6.1} s  {outcome}  {}",
            r.started.format("%Y-%m-%d %H:%M:%S UTC"),
            r.seconds,
            dir.join(&r.report).display()
        );
    }
    Ok(())
}

/// `salespulse notebook list`: the notebooks of a folder.
fn notebook_list(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut broken = 0;
    for n in notebook::list(dir)? {
        let file = n
            .path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        match n.info {
            Ok(i) => println!(
                "{file:<28} {:>2} code {:>2} text  {:<9} {:<28} {:<14} {:<24} {}",
                i.cells.0,
                i.cells.1,
                if i.has_outputs { "outputs" } else { "not run" },
                if i.parameters.is_empty() {
                    "-".to_owned()
                } else {
                    i.parameters.join(",")
                },
                i.schedule.as_deref().unwrap_or("-"),
                i.last_run.map_or_else(
                    || "-".to_owned(),
                    |(t, failed)| format!(
                        "{}{}",
                        t.format("%Y-%m-%d %H:%M"),
                        if failed { " failed" } else { "" }
                    )
                ),
                i.title
            ),
            Err(e) => {
                broken += 1;
                eprintln!("{e}");
            }
        }
    }
    anyhow::ensure!(broken == 0, "{broken} notebooks cannot be read");
    Ok(())
}

/// `salespulse metric list`: compiles a folder's metric scripts.
fn metric_list(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut failed = 0;
    for m in metrics::load_dir(dir) {
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
    Ok(())
}

/// `salespulse cache clear|status`.
async fn cache(cfg: &Config, which: CacheCommand) -> anyhow::Result<()> {
    let cache = salespulse::cache::FrameCache::new(
        &cfg.redis_url,
        Duration::from_secs(cfg.cache_ttl_secs.max(1)),
    )?;
    match which {
        CacheCommand::Clear => println!("deleted {} cached frames", cache.clear().await?),
        CacheCommand::Status => println!("{}", serde_json::to_string_pretty(&cache.probe().await)?),
    }
    Ok(())
}

/// `salespulse rollups verify|rebuild`.
async fn rollups(cfg: &Config, which: RollupsCommand) -> anyhow::Result<()> {
    let (store, _pg) = services::open_store(cfg).await?;
    match which {
        RollupsCommand::Verify => {
            let mismatches = salespulse::store::rollups::verify(&store).await?;
            for m in &mismatches {
                println!("{m}");
            }
            anyhow::ensure!(
                mismatches.is_empty(),
                "{} derived tables differ from the raw rows; \
                 `salespulse rollups rebuild` recomputes them",
                mismatches.len()
            );
            println!("every derived table matches the raw rows");
        }
        RollupsCommand::Rebuild => {
            for (table, rows) in salespulse::store::rollups::rebuild(&store).await? {
                println!("{table}: {rows} rows");
            }
        }
    }
    Ok(())
}

/// `salespulse broker`: the mock cluster on a fixed port until Ctrl-C.
async fn broker(cfg: &Config, port: u16) -> anyhow::Result<()> {
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
    services::shutdown_signal().await;
    Ok(())
}

/// `salespulse bench …` (the UI benches run on the main thread instead).
async fn bench_command(cfg: &Config, which: BenchCommand) -> anyhow::Result<()> {
    match which {
        BenchCommand::Ui { .. } | BenchCommand::Idle { .. } => {
            anyhow::bail!("this command runs on the main thread, not here")
        }
        BenchCommand::Fuzz {
            inputs,
            seed,
            threads,
            json,
        } => {
            let report = bench::fuzz::run(&bench::fuzz::FuzzOptions {
                inputs,
                seed,
                threads,
            });
            print_report(&report, json)?;
            anyhow::ensure!(
                report.clean(),
                "the fuzzer found broken properties (listed above)"
            );
            Ok(())
        }
        BenchCommand::Forecast {
            seeds,
            days,
            holdout_days,
            transform,
            raw_bands,
            no_detect,
            json,
        } => {
            let opts = bench::forecast::ForecastBenchOptions {
                detect: !no_detect,
                calibrate: !raw_bands,
                seeds,
                days,
                holdout_days,
                transform: match transform.as_str() {
                    "log" => salespulse::script::forecast::Transform::Log,
                    "none" => salespulse::script::forecast::Transform::None,
                    _ => salespulse::script::forecast::Transform::Auto,
                },
            };
            let report = tokio::task::spawn_blocking(move || bench::forecast::run(&opts)).await??;
            print_report(&report, json)
        }
        BenchCommand::Generator {
            events,
            script,
            repeat,
            json,
        } => {
            let params = match &script {
                Some(p) => generator::behaviour::load_shop(p)?,
                None => GeneratorParams::builtin(),
            };
            let report = bench::pipeline::generator(params, events, repeat.max(1))?;
            print_report(&report, json)
        }
        BenchCommand::Ingest {
            events,
            workers,
            seed,
            keep,
            event_rate,
            json,
        } => {
            let opts = bench::pipeline::IngestBenchOptions {
                events,
                workers,
                seed,
                keep,
                event_rate,
            };
            print_report(&bench::pipeline::ingest(cfg, &opts).await?, json)
        }
        BenchCommand::Scale {
            events,
            processes,
            partitions,
            stagger_ms,
            seed,
            tansu,
            json,
        } => {
            let opts = bench::scale::ScaleOptions {
                events,
                processes,
                partitions,
                seed,
                tansu,
                salespulse: None,
                stagger: Duration::from_millis(stagger_ms),
            };
            print_report(&bench::scale::run(cfg, &opts).await?, json)
        }
        BenchCommand::Latency {
            rates,
            secs,
            warmup,
            json,
        } => {
            let opts = bench::latency::LatencyBenchOptions {
                rates,
                secs,
                warmup,
            };
            print_report(&bench::latency::run(cfg, &opts).await?, json)
        }
        BenchCommand::Analytics {
            data,
            repeat,
            reload,
            json,
        } => {
            let opts = data.options(repeat, reload);
            print_report(&bench::analytics::run(cfg, &opts).await?, json)
        }
        BenchCommand::Readers {
            clients,
            secs,
            warmup,
            rate,
            interval_ms,
            refreshes_per_filter,
            data,
            json,
        } => {
            let opts = bench::readers::ReadersBenchOptions {
                clients,
                secs,
                warmup,
                rate,
                interval_ms,
                refreshes_per_filter,
                data: data.options(1, false),
            };
            print_report(&bench::readers::run(cfg, &opts).await?, json)
        }
    }
}
