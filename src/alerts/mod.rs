//! Alerts on Grafana's model: rules in `scripts/alerts/*.rhai` ([`rule`]),
//! each a metric and a condition, evaluated at the rule's interval; each
//! rule's state steps Normal → Pending → Firing → Resolved (and NoData,
//! Error) ([`state`]); every change and notification is kept in PostgreSQL
//! with the silences ([`history`]); notifications go to the app, the
//! desktop, a webhook and the log ([`notify`]).
//!
//! The [`Engine`] is what runs them: the app's backend, `salespulse alerts
//! run` and `salespulse run --alerts` each drive one. A metric runs as the
//! app's custom metrics do (their sandbox, in a child process when there is
//! one), so a broken or hostile rule ends in its Error state and nothing
//! else. Time is given to [`Engine::tick`], so tests drive it.

pub mod history;
pub mod notify;
pub mod rule;
pub mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use polars::prelude::DataFrame;

use crate::analytics::metrics::{Metric, MetricFormat};
use crate::analytics::{Analytics, Filters};
use crate::script::forecast::{self, Spec, Transform};
use crate::script::series::{self, Fill, SeriesOpts};

pub use notify::{Notification, Notifier};
pub use rule::{Condition, Rule, Severity};
pub use state::{Outcome, Reason, RuleState, State};

/// Figures of the pipeline a rule's metric can read as `PIPELINE`.
pub trait PipelineFigures: Send + Sync {
    /// Records in the topic not yet ingested, over all partitions.
    fn lag(&self) -> Option<i64>;
    /// Records ever sent to the dead-letter topic.
    fn dead_letters(&self) -> Option<u64>;
}

/// A step counts as complete this long after it ends (ingest's delay).
pub const GRACE: chrono::Duration = chrono::Duration::seconds(30);

/// Most steps a series metric may give (two weeks of minutes).
const MAX_SERIES: usize = 20_160;

/// What one evaluation of a rule found.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The outcome the state steps with.
    pub outcome: Outcome,
    /// How it was judged, for people ("24.1 % above 10 %").
    pub detail: String,
    /// Seconds the metric and the condition took.
    pub secs: f64,
}

/// A rule with its state, as the app shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RuleView {
    /// The rule.
    pub rule: Rule,
    /// Its state.
    pub state: RuleState,
    /// The last evaluation's detail.
    pub detail: String,
    /// Whether a silence mutes it now.
    pub silenced: bool,
}

fn format_value(format: &str, v: f64) -> String {
    let f = match format {
        "percent" => MetricFormat::Percent,
        "currency" => MetricFormat::Currency,
        "count" => MetricFormat::Count,
        _ => MetricFormat::Number,
    };
    f.render_compact(v, "USD")
}

/// The metric script of a rule: a header naming it and defining
/// `NO_DATA` and `PIPELINE` on the first line, then the rule's text (so
/// an error's line is one more than in the rule's `metric`).
fn metric_source(rule: &Rule, pipeline: &str) -> String {
    let name = serde_json::to_string(&rule.name).unwrap_or_else(|_| "\"alert\"".into());
    format!(
        "const NAME = {name}; const KIND = \"table\"; const NO_DATA = frame(#{{ no_data: [0.0] }}).head(0); const PIPELINE = {pipeline};\n{}",
        rule.metric
    )
}

/// The value (and series) a metric's frame gives.
enum Measured {
    Nothing,
    Value(f64),
    Series(Vec<f64>, i64),
}

fn measure(
    df: &DataFrame,
    series_wanted: bool,
    fill_previous: bool,
    now: DateTime<Utc>,
) -> Result<Measured, String> {
    if df.height() == 0 {
        return Ok(Measured::Nothing);
    }
    if series_wanted {
        let mut s = series::series(
            df,
            &SeriesOpts {
                fill: if fill_previous {
                    Fill::Previous
                } else {
                    Fill::Value(0.0)
                },
                ..SeriesOpts::default()
            },
        )?;
        // Complete steps only, and every complete step up to now: a step
        // still filling is not judged, and steps with no row at the end
        // (nothing sold lately) count as their fill, not as missing.
        let step = s.step_us;
        let now_us = (now - GRACE).timestamp_micros();
        while s
            .times
            .last()
            .is_some_and(|t| t.saturating_add(step) > now_us)
        {
            s.times.pop();
            s.values.pop();
        }
        while let Some(&t) = s.times.last() {
            let next = t.saturating_add(step);
            if next.saturating_add(step) > now_us || s.values.len() >= MAX_SERIES {
                break;
            }
            let v = if fill_previous {
                s.values.last().copied().unwrap_or(0.0)
            } else {
                0.0
            };
            s.times.push(next);
            s.values.push(v);
        }
        if s.values.is_empty() {
            return Ok(Measured::Nothing);
        }
        return Ok(Measured::Series(s.values, step));
    }
    // One number: the last row's last numeric column.
    let col = df
        .columns()
        .iter()
        .rev()
        .find(|c| c.dtype().is_primitive_numeric())
        .ok_or("the metric gave no number")?;
    let v = col
        .cast(&polars::prelude::DataType::Float64)
        .map_err(|e| e.to_string())?
        .f64()
        .map_err(|e| e.to_string())?
        .get(df.height() - 1);
    Ok(match v {
        Some(v) if v.is_finite() => Measured::Value(v),
        _ => Measured::Nothing,
    })
}

/// Judges a measurement against a condition: the outcome and its words.
fn judge(rule: &Rule, m: Measured) -> (Outcome, String) {
    let show = |v: f64| format_value(&rule.format, v);
    let value =
        |v: f64, breach: bool, detail: String| (Outcome::Value { value: v, breach }, detail);
    match (&rule.condition, m) {
        (_, Measured::Nothing) => (Outcome::NoData, "no data".into()),
        (Condition::Above(x), Measured::Value(v)) => {
            value(v, v > *x, format!("{} (above {} breaches)", show(v), show(*x)))
        }
        (Condition::Below(x), Measured::Value(v)) => {
            value(v, v < *x, format!("{} (below {} breaches)", show(v), show(*x)))
        }
        (Condition::Above(_) | Condition::Below(_), Measured::Series(s, _)) => {
            let v = s.last().copied().unwrap_or(f64::NAN);
            judge(rule, Measured::Value(v))
        }
        (Condition::ChangePct { .. } | Condition::OutsideBand { .. }, Measured::Value(_)) => (
            Outcome::Error("this condition needs a time series: end the metric with a frame of a time column and a value column".into()),
            String::new(),
        ),
        (Condition::ChangePct { steps, above, below }, Measured::Series(s, _)) => {
            let n = s.len();
            let (Some(last), Some(then)) = (s.last().copied(), n.checked_sub(steps + 1).and_then(|i| s.get(i).copied())) else {
                return (Outcome::NoData, format!("fewer than {} steps", steps + 1));
            };
            if then == 0.0 {
                return (Outcome::NoData, "no change from zero".into());
            }
            let pct = 100.0 * (last - then) / then.abs();
            let breach = above.is_some_and(|a| pct > a) || below.is_some_and(|b| pct < b);
            value(last, breach, format!("{} ({pct:+.1} % over {steps} steps)", show(last)))
        }
        (Condition::OutsideBand { .. }, Measured::Series(s, _))
            if s.len() <= forecast::MIN_POINTS =>
        {
            (Outcome::NoData, format!("{} steps of history: too few for a band", s.len()))
        }
        (Condition::OutsideBand { level, side }, Measured::Series(s, step)) => {
            let spec = Spec {
                periods: forecast::periods_for_step(step / 1_000_000),
                transform: Transform::Auto,
                calibrate: true,
            };
            match forecast::anomalies(&s, s.len().saturating_sub(1), *level, &spec) {
                Ok(scan) => {
                    let v = s.last().copied().unwrap_or(f64::NAN);
                    let (lo, hi, exp) = (
                        scan.lower.first().copied().unwrap_or(f64::NAN),
                        scan.upper.first().copied().unwrap_or(f64::NAN),
                        scan.expected.first().copied().unwrap_or(f64::NAN),
                    );
                    let breach = match side {
                        rule::Side::Above => v > hi,
                        rule::Side::Below => v < lo,
                        rule::Side::Both => v > hi || v < lo,
                    };
                    value(
                        v,
                        breach,
                        format!("{} (expected {}, band {} – {})", show(v), show(exp), show(lo), show(hi)),
                    )
                }
                Err(e) => (Outcome::Error(e), String::new()),
            }
        }
    }
}

/// Runs rules and keeps their states.
pub struct Engine {
    analytics: Analytics,
    rules: Vec<Rule>,
    states: HashMap<String, RuleState>,
    details: HashMap<String, String>,
    due: HashMap<String, DateTime<Utc>>,
    notifier: Notifier,
    pipeline: Option<Arc<dyn PipelineFigures>>,
    dlq: Option<(DateTime<Utc>, u64)>,
    silences: Vec<history::Silence>,
    /// The folder the rules came from, reread when it changes.
    reload: Option<(std::path::PathBuf, Stamp)>,
    errors: Vec<String>,
}

/// What the engine shows: the rules with their states, and the rule
/// files that do not load.
pub type Views = (Vec<RuleView>, Vec<String>);

/// Names, sizes and modification times of a folder's rule files.
type Stamp = Vec<(String, u64, Option<std::time::SystemTime>)>;

/// The [`Stamp`] of `dir`.
fn stamp(dir: &std::path::Path) -> Stamp {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "rhai"))
                .map(|e| {
                    let m = e.metadata().ok();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        m.as_ref().map_or(0, |m| m.len()),
                        m.and_then(|m| m.modified().ok()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

impl Engine {
    /// An engine over `rules`, each in the state its latest history row
    /// left it (Normal without one).
    pub async fn new(
        analytics: Analytics,
        rules: Vec<Rule>,
        notifier: Notifier,
        pipeline: Option<Arc<dyn PipelineFigures>>,
        now: DateTime<Utc>,
    ) -> Result<Self, sqlx::Error> {
        let latest = history::latest(analytics.pool()).await?;
        let mut states = HashMap::new();
        for r in &rules {
            let s = latest
                .iter()
                .find(|e| e.rule == r.name)
                .map_or_else(|| RuleState::new(now), history::restore);
            states.insert(r.name.clone(), s);
        }
        Ok(Engine {
            analytics,
            rules,
            states,
            details: HashMap::new(),
            due: HashMap::new(),
            notifier,
            pipeline,
            dlq: None,
            silences: Vec::new(),
            reload: None,
            errors: Vec::new(),
        })
    }

    /// Rereads the rules from `dir` whenever its files change (checked
    /// every few seconds by [`Engine::run`]); a rule keeps its state
    /// across a reload when its name stays.
    pub fn reload_from(mut self, dir: std::path::PathBuf, errors: Vec<String>) -> Self {
        let s = stamp(&dir);
        self.reload = Some((dir, s));
        self.errors = errors;
        self
    }

    fn reload_if_changed(&mut self, now: DateTime<Utc>) {
        let Some((dir, old)) = &self.reload else {
            return;
        };
        let new = stamp(dir);
        if &new == old {
            return;
        }
        let dir = dir.clone();
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for r in rule::load_dir(&dir) {
            match r {
                Ok(r) => rules.push(r),
                Err(e) => {
                    tracing::warn!("alert rule left out: {e}");
                    errors.push(e.to_string());
                }
            }
        }
        tracing::info!(
            "alert rules reloaded: {} from {}",
            rules.len(),
            dir.display()
        );
        self.states
            .retain(|name, _| rules.iter().any(|r| &r.name == name));
        for r in &rules {
            self.states
                .entry(r.name.clone())
                .or_insert_with(|| RuleState::new(now));
            // A changed rule is evaluated at once.
            if self.rules.iter().find(|o| o.name == r.name) != Some(r) {
                self.due.remove(&r.name);
            }
        }
        self.rules = rules;
        self.errors = errors;
        self.reload = Some((dir, new));
    }

    /// Waits for the notifications under way (webhook retries, desktop) to
    /// end, at most `max`; false if some were still under way then.
    pub async fn settle(&self, max: std::time::Duration) -> bool {
        self.notifier.settle(max).await
    }

    /// The rules with their states, in file order.
    pub fn views(&self, now: DateTime<Utc>) -> Vec<RuleView> {
        self.rules
            .iter()
            .map(|r| RuleView {
                rule: r.clone(),
                state: self
                    .states
                    .get(&r.name)
                    .cloned()
                    .unwrap_or_else(|| RuleState::new(now)),
                detail: self.details.get(&r.name).cloned().unwrap_or_default(),
                silenced: history::is_silenced(&self.silences, &r.name, now),
            })
            .collect()
    }

    /// The `PIPELINE` map as Rhai text.
    fn pipeline_text(&mut self, now: DateTime<Utc>) -> String {
        let Some(p) = &self.pipeline else {
            return "()".into();
        };
        let lag = p.lag().map_or_else(|| "()".to_owned(), |l| l.to_string());
        let dead = p.dead_letters();
        let per_min = match (dead, self.dlq) {
            (Some(d), Some((t, before))) if now > t => {
                let mins = (now - t).num_milliseconds() as f64 / 60_000.0;
                format!("{:?}", d.saturating_sub(before) as f64 / mins.max(1e-3))
            }
            _ => "()".into(),
        };
        if let Some(d) = dead {
            // The rate is over the time since the sample a minute or more back.
            if self.dlq.is_none_or(|(t, _)| (now - t).num_seconds() >= 60) {
                self.dlq = Some((now, d));
            }
        }
        let total = dead.map_or_else(|| "()".to_owned(), |d| d.to_string());
        format!("#{{ lag: {lag}, dead_letters: {total}, dead_letters_per_min: {per_min} }}")
    }

    /// Evaluates `rule` once at `now` (its metric and condition), without
    /// stepping its state.
    pub async fn evaluate(&mut self, rule: &Rule, now: DateTime<Utc>) -> Evaluation {
        let started = Instant::now();
        let pipeline = self.pipeline_text(now);
        evaluate_with(&self.analytics, rule, now, &pipeline, started).await
    }

    /// Evaluates every rule due at `now`, steps its state, records and
    /// sends what that calls for. Returns the notifications made (sent or
    /// silenced).
    pub async fn tick(&mut self, now: DateTime<Utc>) -> Vec<(Notification, bool)> {
        let due: Vec<Rule> = self
            .rules
            .iter()
            .filter(|r| self.due.get(&r.name).is_none_or(|t| *t <= now))
            .cloned()
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        match history::silences(self.analytics.pool(), now).await {
            Ok(s) => self.silences = s,
            Err(e) => tracing::warn!("alert silences: {e}"),
        }
        let mut out = Vec::new();
        for rule in due {
            let next = now
                + chrono::Duration::from_std(rule.every).unwrap_or(chrono::Duration::minutes(1));
            self.due.insert(rule.name.clone(), next);
            let ev = self.evaluate(&rule, now).await;
            let state = self
                .states
                .entry(rule.name.clone())
                .or_insert_with(|| RuleState::new(now));
            let step = state.step(&rule, now, &ev.outcome);
            let detail = match &ev.outcome {
                Outcome::Error(e) => e.clone(),
                _ => ev.detail.clone(),
            };
            self.details.insert(rule.name.clone(), detail.clone());
            if step.changed_from.is_none() && step.notify.is_none() {
                continue;
            }
            let silenced = history::is_silenced(&self.silences, &rule.name, now);
            let state = state.clone();
            let n = step.notify.map(|reason| {
                let value_text = state
                    .value
                    .map_or_else(String::new, |v| format_value(&rule.format, v));
                let what = match reason {
                    Reason::Firing => "is firing",
                    Reason::Repeat => "is still firing",
                    Reason::Resolved => "is resolved",
                    Reason::NoData => "has no data",
                    Reason::Error => "fails",
                };
                Notification {
                    rule: rule.name.clone(),
                    file: rule.file.clone(),
                    severity: rule.severity,
                    reason,
                    state: state.state,
                    value: state.value,
                    value_text,
                    summary: format!("{} {what}: {detail}", rule.name),
                    at: now,
                }
            });
            let e = history::Event {
                rule: rule.name.clone(),
                at: now,
                state: state.state,
                previous: step.changed_from,
                since: state.since,
                value: state.value,
                notified: step.notify,
                silenced: silenced && n.is_some(),
                message: detail,
            };
            if let Err(err) = history::record(self.analytics.pool(), &e).await {
                tracing::warn!("alert history of {:?}: {err}", rule.name);
            }
            if let Some(n) = n {
                if !silenced {
                    self.notifier.send(&n);
                }
                out.push((n, silenced));
            }
        }
        out
    }

    /// Ticks every second of wall-clock time until `stop` turns true,
    /// sending the views whenever they change.
    pub async fn run(
        mut self,
        mut stop: tokio::sync::watch::Receiver<bool>,
        views: Option<tokio::sync::watch::Sender<Views>>,
    ) {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                // Deliveries under way get a moment to end.
                self.settle(std::time::Duration::from_secs(10)).await;
                return;
            }
            let now = Utc::now();
            if now.timestamp() % 5 == 0 {
                self.reload_if_changed(now);
            }
            self.tick(now).await;
            if let Some(v) = &views {
                // Watchers (the app) wake only when something changed.
                let fresh = (self.views(now), self.errors.clone());
                v.send_if_modified(|old| {
                    let changed = *old != fresh;
                    if changed {
                        *old = fresh;
                    }
                    changed
                });
            }
        }
    }
}

/// [`Engine::evaluate`] without an engine (for `alerts test`).
pub async fn evaluate_with(
    analytics: &Analytics,
    rule: &Rule,
    now: DateTime<Utc>,
    pipeline: &str,
    started: Instant,
) -> Evaluation {
    let done = |outcome: Outcome, detail: String| Evaluation {
        outcome,
        detail,
        secs: started.elapsed().as_secs_f64(),
    };
    let metric = match Metric::compile(&rule.file, &metric_source(rule, pipeline)) {
        Ok(m) => Arc::new(m),
        Err(e) => return done(Outcome::Error(shift(e)), String::new()),
    };
    let df = match analytics
        .run_script(metric, &Filters::default(), None)
        .await
    {
        Ok(df) => df,
        Err(crate::analytics::AnalyticsError::Script(e)) => {
            return done(Outcome::Error(shift(e)), String::new())
        }
        Err(e) => return done(Outcome::Error(e.to_string()), String::new()),
    };
    let wanted = rule.condition.needs_series();
    let r = rule.clone();
    let judged =
        tokio::task::spawn_blocking(move || match measure(&df, wanted, r.fill_previous, now) {
            Ok(m) => judge(&r, m),
            Err(e) => (
                Outcome::Error(format!("the metric's frame: {e}")),
                String::new(),
            ),
        })
        .await;
    match judged {
        Ok((o, d)) => done(o, d),
        Err(e) => done(
            Outcome::Error(format!("the evaluation failed: {e}")),
            String::new(),
        ),
    }
}

/// A metric error with the line of the rule's `metric` text (the header
/// is one line).
fn shift(mut e: crate::script::ScriptError) -> String {
    e.line = e.line.map(|l| l.saturating_sub(1)).filter(|l| *l > 0);
    e.to_string()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use polars::prelude::*;

    use super::*;

    fn rule(condition: Condition) -> Rule {
        rule::from_source(
            "r.rhai",
            r#"#{ alert: "r", metric: "1", condition: #{ above: 1 } }"#,
        )
        .map(|r| Rule { condition, ..r })
        .unwrap()
    }

    #[test]
    fn a_series_is_judged_on_complete_steps_with_silent_ones_as_zero() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let times: Vec<i64> = (0..3)
            .map(|k| (t0 + chrono::Duration::minutes(5 * k)).timestamp_micros())
            .collect();
        let df = DataFrame::new(
            3,
            vec![
                Column::new("t".into(), times)
                    .cast(&DataType::Datetime(
                        TimeUnit::Microseconds,
                        Some(polars::prelude::TimeZone::UTC),
                    ))
                    .unwrap(),
                Column::new("v".into(), vec![1.0, 2.0, 3.0]),
            ],
        )
        .unwrap();
        // At 00:14:40 the 00:10 step is still filling: two steps judged.
        let now = t0 + chrono::Duration::seconds(14 * 60 + 40);
        let Measured::Series(s, step) = measure(&df, true, false, now).unwrap() else {
            panic!()
        };
        assert_eq!((s, step), (vec![1.0, 2.0], 300_000_000));
        // At 00:31 steps 00:15, 00:20 (complete, no row) count as 0.
        let now = t0 + chrono::Duration::minutes(31);
        let Measured::Series(s, _) = measure(&df, true, false, now).unwrap() else {
            panic!()
        };
        assert_eq!(s, vec![1.0, 2.0, 3.0, 0.0, 0.0, 0.0]);
        // A number: the last row's last numeric column.
        let Measured::Value(v) = measure(&df, false, false, now).unwrap() else {
            panic!()
        };
        assert_eq!(v, 3.0);
    }

    #[test]
    fn conditions_judge_values_and_changes() {
        let (o, _) = judge(&rule(Condition::Above(0.1)), Measured::Value(0.2));
        assert_eq!(
            o,
            Outcome::Value {
                value: 0.2,
                breach: true
            }
        );
        let (o, _) = judge(&rule(Condition::Below(0.1)), Measured::Value(0.2));
        assert_eq!(
            o,
            Outcome::Value {
                value: 0.2,
                breach: false
            }
        );
        let drop = Condition::ChangePct {
            steps: 2,
            above: None,
            below: Some(-30.0),
        };
        let (o, d) = judge(
            &rule(drop.clone()),
            Measured::Series(vec![10.0, 9.0, 6.0], 60_000_000),
        );
        assert_eq!(
            o,
            Outcome::Value {
                value: 6.0,
                breach: true
            },
            "{d}"
        );
        let (o, _) = judge(
            &rule(drop.clone()),
            Measured::Series(vec![10.0, 9.0, 8.0], 60_000_000),
        );
        assert_eq!(
            o,
            Outcome::Value {
                value: 8.0,
                breach: false
            }
        );
        let (o, _) = judge(&rule(drop), Measured::Value(1.0));
        assert!(matches!(o, Outcome::Error(_)));
        let (o, _) = judge(&rule(Condition::Above(1.0)), Measured::Nothing);
        assert_eq!(o, Outcome::NoData);
    }

    #[test]
    fn the_header_keeps_the_rules_lines_one_down() {
        let r = rule(Condition::Above(1.0));
        let src = metric_source(&r, "()");
        assert_eq!(src.lines().count(), 2);
        assert!(src.lines().nth(1) == Some("1"));
        assert!(Metric::compile("r.rhai", &src).is_ok());
    }
}
