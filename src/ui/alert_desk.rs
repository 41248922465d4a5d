//! The backend's side of alerts: the engine evaluating the rules of the
//! scripts folder's `alerts/` while the app is open, its notifications
//! turned into updates (toasts), its rules and states sent to the Alerts
//! panel, and the panel's silences and history requests answered.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;

use super::backend::Update;
use crate::alerts::history;
use crate::analytics::Analytics;
use crate::services::alerts::{self as wiring, AlertsOptions, KafkaFigures};
use crate::services::live::LivePipeline;
use crate::services::AbortOnDrop;

/// What the Alerts panel shows: the rules with their states and the
/// silences in force.
#[derive(Clone, Debug, Default)]
pub struct AlertsSnapshot {
    /// Rules in file order, with states.
    pub rules: Vec<crate::alerts::RuleView>,
    /// Silences in force.
    pub silences: Vec<history::Silence>,
    /// Rule files that do not load, and why.
    pub errors: Vec<String>,
    /// The rules folder.
    pub dir: PathBuf,
}

/// The engine's tasks and what the commands need.
pub(crate) struct AlertDesk {
    analytics: Analytics,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    _tasks: Vec<AbortOnDrop<()>>,
}

impl AlertDesk {
    /// Starts evaluating the rules of `scripts/alerts` (written from the
    /// shipped ones when the folder does not exist).
    pub(crate) async fn open(
        live: &LivePipeline,
        scripts_dir: &std::path::Path,
        send: impl Fn(Update) + Clone + Send + Sync + 'static,
    ) -> Self {
        let dir = scripts_dir.join("alerts");
        match crate::alerts::rule::seed(&dir) {
            Ok(0) => {}
            Ok(n) => tracing::info!("wrote {n} shipped alert rules to {}", dir.display()),
            Err(e) => tracing::warn!("cannot write the alert rules to {}: {e}", dir.display()),
        }
        let analytics = live.analytics().clone();
        let mut desk = AlertDesk {
            analytics: analytics.clone(),
            stop: None,
            _tasks: Vec::new(),
        };
        let webhook = match wiring::webhook(live.config()) {
            Ok(w) => w,
            Err(e) => {
                send(Update::Error(e));
                None
            }
        };
        let opts = AlertsOptions {
            dir: dir.clone(),
            webhook,
            desktop: true,
        };
        let lag = crate::pipeline::lag::LagSource {
            brokers: live.brokers().to_owned(),
            topic: live.config().topic.clone(),
            group: live.config().group_id.clone(),
            store: live.store().clone(),
        };
        let (figures, figures_task) = KafkaFigures::spawn(lag, live.config().dlq_topic.clone());
        desk._tasks.push(AbortOnDrop(figures_task));
        let (notes_tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
        let engine = match wiring::engine(analytics, &opts, Some(notes_tx), Some(figures)).await {
            Ok(e) => e,
            Err(e) => {
                send(Update::Error(format!("alerts do not run: {e:#}")));
                return desk;
            }
        };
        let s = send.clone();
        desk._tasks.push(AbortOnDrop(tokio::spawn(async move {
            while let Some(n) = notes.recv().await {
                s(Update::AlertNotice(Box::new(n)));
            }
        })));
        let (views_tx, mut views) = tokio::sync::watch::channel((Vec::new(), Vec::new()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        desk._tasks
            .push(AbortOnDrop(wiring::spawn(engine, stopped, Some(views_tx))));
        let pool = desk.analytics.pool().clone();
        desk._tasks.push(AbortOnDrop(tokio::spawn(async move {
            // Only a change the panel shows wakes the window.
            let mut last = None;
            while views.changed().await.is_ok() {
                let (rules, errors) = views.borrow_and_update().clone();
                let silences = history::silences(&pool, Utc::now())
                    .await
                    .unwrap_or_default();
                let key = (
                    rules
                        .iter()
                        .map(|v| {
                            (
                                v.rule.clone(),
                                v.state.state,
                                v.state.since,
                                v.detail.clone(),
                                v.silenced,
                            )
                        })
                        .collect::<Vec<_>>(),
                    silences.clone(),
                    errors.clone(),
                );
                if last.as_ref() == Some(&key) {
                    continue;
                }
                last = Some(key);
                send(Update::Alerts(Arc::new(AlertsSnapshot {
                    rules,
                    silences,
                    errors,
                    dir: dir.clone(),
                })));
            }
        })));
        desk.stop = Some(stop);
        desk
    }

    /// Mutes `rule` (`*`: all) for `minutes`.
    pub(crate) fn silence(
        &self,
        rule: String,
        minutes: u32,
        send: impl Fn(Update) + Send + 'static,
    ) {
        let pool = self.analytics.pool().clone();
        tokio::spawn(async move {
            let until = Utc::now() + chrono::Duration::minutes(i64::from(minutes));
            match history::silence(&pool, &rule, until, "from the app").await {
                Ok(_) => send(Update::AlertsChanged),
                Err(e) => send(Update::Error(format!("silencing {rule:?}: {e}"))),
            }
        });
    }

    /// Ends silence `id`.
    pub(crate) fn unsilence(&self, id: i64, send: impl Fn(Update) + Send + 'static) {
        let pool = self.analytics.pool().clone();
        tokio::spawn(async move {
            match history::unsilence(&pool, id).await {
                Ok(_) => send(Update::AlertsChanged),
                Err(e) => send(Update::Error(format!("ending silence {id}: {e}"))),
            }
        });
    }

    /// Sends the history (of `rule`, or of all), newest first.
    pub(crate) fn history(&self, rule: Option<String>, send: impl Fn(Update) + Send + 'static) {
        let pool = self.analytics.pool().clone();
        tokio::spawn(async move {
            match history::history(&pool, rule.as_deref(), 200).await {
                Ok(rows) => send(Update::AlertHistory { rule, rows }),
                Err(e) => send(Update::Error(format!("alert history: {e}"))),
            }
        });
    }

    /// Stops the engine.
    pub(crate) fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
    }
}
