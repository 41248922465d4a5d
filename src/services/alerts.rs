//! Alerts wired to the services: the rules folder, the pipeline's figures
//! read from Kafka and PostgreSQL, and the evaluator's loop for `alerts
//! run`, `run --alerts` and the app.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::alerts::{self, Engine, Notifier, PipelineFigures, Rule};
use crate::analytics::Analytics;
use crate::config::Config;
use crate::pipeline::lag::LagSource;
use crate::script::ScriptError;

/// Where alert rules are read from: `alerts/` in the scripts folder
/// (`SALESPULSE_SCRIPTS`, else `./scripts` when present, else the user's
/// data directory).
pub fn rules_dir(cfg: &Config) -> PathBuf {
    let scripts = match &cfg.scripts_dir {
        Some(d) => d.clone(),
        None => {
            let local = PathBuf::from("scripts");
            if local.is_dir() {
                local
            } else {
                crate::config::default_data_dir().join("scripts")
            }
        }
    };
    scripts.join("alerts")
}

/// The rules of `dir` that load, and the errors of those that do not.
pub fn load_rules(dir: &Path) -> (Vec<Rule>, Vec<ScriptError>) {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for r in alerts::rule::load_dir(dir) {
        match r {
            Ok(r) => rules.push(r),
            Err(e) => errors.push(e),
        }
    }
    (rules, errors)
}

/// The pipeline's figures, read every few seconds in the background
/// (−1: not known).
#[derive(Default)]
pub struct KafkaFigures {
    lag: AtomicI64,
    dead_letters: AtomicI64,
}

impl PipelineFigures for KafkaFigures {
    fn lag(&self) -> Option<i64> {
        Some(self.lag.load(Ordering::Relaxed)).filter(|v| *v >= 0)
    }
    fn dead_letters(&self) -> Option<u64> {
        u64::try_from(self.dead_letters.load(Ordering::Relaxed)).ok()
    }
}

impl KafkaFigures {
    /// Figures read from `lag` (the topic against the offsets stored with
    /// the data) and the dead-letter topic's end offsets, every 5 s, while
    /// the returned task runs.
    pub fn spawn(lag: LagSource, dlq_topic: String) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let figures = Arc::new(KafkaFigures {
            lag: AtomicI64::new(-1),
            dead_letters: AtomicI64::new(-1),
        });
        let f = Arc::clone(&figures);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let l = lag
                    .read()
                    .await
                    .map(|p| p.iter().map(|(_, l)| (*l).max(0)).sum::<i64>())
                    .unwrap_or(-1);
                f.lag.store(l, Ordering::Relaxed);
                let (brokers, topic) = (lag.brokers.clone(), dlq_topic.clone());
                let dead =
                    tokio::task::spawn_blocking(move || crate::bus::end_offsets(&brokers, &topic))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .map_or(-1, |ends| {
                            ends.iter().map(|(_, e)| (*e).max(0)).sum::<i64>()
                        });
                f.dead_letters.store(dead, Ordering::Relaxed);
            }
        });
        (figures, task)
    }
}

/// How alerts run beside the pipeline or alone.
#[derive(Clone, Debug, Default)]
pub struct AlertsOptions {
    /// The rules folder.
    pub dir: PathBuf,
    /// POST each notification here.
    pub webhook: Option<url::Url>,
    /// Show desktop notifications.
    pub desktop: bool,
}

/// An engine over the rules of `opts.dir` (the ones that fail to load are
/// logged and left out).
pub async fn engine(
    analytics: Analytics,
    opts: &AlertsOptions,
    app: Option<tokio::sync::mpsc::UnboundedSender<alerts::Notification>>,
    pipeline: Option<Arc<dyn PipelineFigures>>,
) -> anyhow::Result<Engine> {
    let (rules, errors) = load_rules(&opts.dir);
    for e in &errors {
        tracing::warn!("alert rule left out: {e}");
    }
    tracing::info!("alerts: {} rules from {}", rules.len(), opts.dir.display());
    let notifier =
        Notifier::new(app, opts.webhook.clone(), opts.desktop).map_err(|e| anyhow::anyhow!(e))?;
    let errors = errors.iter().map(ToString::to_string).collect();
    Ok(
        Engine::new(analytics, rules, notifier, pipeline, Utc::now())
            .await?
            .reload_from(opts.dir.clone(), errors),
    )
}

/// The webhook URL of `cfg` (`SALESPULSE_ALERT_WEBHOOK`: the environment,
/// not a file, so a token in it stays off disk). The error does not repeat
/// the URL.
pub fn webhook(cfg: &Config) -> Result<Option<url::Url>, String> {
    match &cfg.alert_webhook {
        Some(v) => url::Url::parse(v.trim()).map(Some).map_err(|e| {
            format!("SALESPULSE_ALERT_WEBHOOK is not a URL ({e}); alerts go without it")
        }),
        None => Ok(None),
    }
}

/// Runs an engine until `stop` turns true; its views go to `views`.
pub fn spawn(
    engine: Engine,
    stop: tokio::sync::watch::Receiver<bool>,
    views: Option<tokio::sync::watch::Sender<alerts::Views>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(engine.run(stop, views))
}
