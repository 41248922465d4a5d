//! The `salespulse` command line: parses the arguments and calls the
//! library. Arguments are in [`args`], one short function per command in
//! [`commands`], printing in [`report`].

mod args;
mod commands;
mod report;

use std::process::ExitCode;

use clap::Parser;

use salespulse::ui::log::LogBuffer;

/// A mistake in how the command was called (a bad flag value): reported
/// with exit code 2, as clap reports the ones it finds.
#[derive(Debug)]
pub struct UsageError(String);

impl UsageError {
    /// The message says what was wrong and what is accepted.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; mistakes to stderr with 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    quiet_backtraces(cli.log.as_deref());
    report::set_table_format();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes on one line; never a backtrace.
            eprintln!("error: {e:#}");
            if e.chain().any(|c| c.is::<UsageError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Backtraces are for developers: only with `--log debug` (or `trace`) or
/// `SALESPULSE_BACKTRACE=1`. Otherwise `RUST_BACKTRACE`, often set on
/// developer machines, would make errors (ours and the libraries', such as
/// Polars') carry and print stack traces, and capturing them costs time on
/// every error. Runs before any other thread.
fn quiet_backtraces(log: Option<&str>) {
    let debug = log.is_some_and(|l| l.contains("debug") || l.contains("trace"))
        || std::env::var_os("SALESPULSE_BACKTRACE").is_some_and(|v| v == "1");
    if debug {
        std::env::set_var("RUST_BACKTRACE", "1");
    } else {
        for k in [
            "RUST_BACKTRACE",
            "RUST_LIB_BACKTRACE",
            "POLARS_BACKTRACE_IN_ERR",
        ] {
            std::env::remove_var(k);
        }
    }
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
