//! The state of one rule, stepped by each evaluation's outcome, as
//! Grafana's alerting does: Normal → Pending (the condition holds, not yet
//! for its `for`) → Firing → Resolved (the first evaluation it no longer
//! holds) → Normal; NoData when the metric has nothing to judge (under the
//! `no_data` policy), Error when the metric fails. The clock is given, so
//! tests drive it.

use chrono::{DateTime, Utc};

use super::rule::{NoData, Rule};

/// A rule's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The condition does not hold.
    Normal,
    /// The condition holds, for less than the rule's `for`.
    Pending,
    /// The condition has held for the rule's `for`.
    Firing,
    /// The evaluation after firing found the condition no longer holds.
    Resolved,
    /// The metric had nothing to judge.
    NoData,
    /// The metric failed.
    Error,
}

impl State {
    /// Its name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Normal => "normal",
            State::Pending => "pending",
            State::Firing => "firing",
            State::Resolved => "resolved",
            State::NoData => "no_data",
            State::Error => "error",
        }
    }

    /// The state a stored name stands for.
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "normal" => State::Normal,
            "pending" => State::Pending,
            "firing" => State::Firing,
            "resolved" => State::Resolved,
            "no_data" => State::NoData,
            "error" => State::Error,
            _ => return None,
        })
    }
}

/// What one evaluation found.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A value, and whether it breaches the condition.
    Value {
        /// The current value.
        value: f64,
        /// Whether the condition holds.
        breach: bool,
    },
    /// Nothing to judge.
    NoData,
    /// The metric failed with this message.
    Error(String),
}

/// Why a notification goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The rule started firing.
    Firing,
    /// Still firing, `repeat` after the last notification.
    Repeat,
    /// It stopped firing.
    Resolved,
    /// Its metric has nothing to judge (policy `no_data`).
    NoData,
    /// Its metric fails.
    Error,
}

impl Reason {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Firing => "firing",
            Reason::Repeat => "repeat",
            Reason::Resolved => "resolved",
            Reason::NoData => "no_data",
            Reason::Error => "error",
        }
    }
}

/// What a step did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    /// The state before, when it changed.
    pub changed_from: Option<State>,
    /// A notification to send (unless silenced).
    pub notify: Option<Reason>,
}

/// One rule's state between evaluations.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RuleState {
    /// The state.
    pub state: State,
    /// Since when.
    pub since: DateTime<Utc>,
    /// When the condition started to hold (Pending and Firing).
    pub breach_since: Option<DateTime<Utc>>,
    /// When the last notification of this firing went out.
    pub notified_at: Option<DateTime<Utc>>,
    /// The last value.
    pub value: Option<f64>,
    /// The last error.
    pub error: Option<String>,
    /// When last evaluated.
    pub evaluated_at: Option<DateTime<Utc>>,
}

impl RuleState {
    /// A rule not evaluated yet: Normal.
    pub fn new(now: DateTime<Utc>) -> Self {
        RuleState {
            state: State::Normal,
            since: now,
            breach_since: None,
            notified_at: None,
            value: None,
            error: None,
            evaluated_at: None,
        }
    }

    fn go(&mut self, to: State, now: DateTime<Utc>, step: &mut Step) {
        if self.state != to {
            step.changed_from = Some(self.state);
            self.state = to;
            self.since = now;
        }
    }

    /// Steps the state with one evaluation's `outcome` at `now`.
    pub fn step(&mut self, rule: &Rule, now: DateTime<Utc>, outcome: &Outcome) -> Step {
        let mut step = Step::default();
        self.evaluated_at = Some(now);
        let breach = match outcome {
            Outcome::Value { value, breach } => {
                self.value = Some(*value);
                self.error = None;
                Some(*breach)
            }
            Outcome::Error(e) => {
                self.error = Some(e.clone());
                if self.state != State::Error {
                    self.breach_since = None;
                    self.go(State::Error, now, &mut step);
                    step.notify = Some(Reason::Error);
                }
                return step;
            }
            Outcome::NoData => {
                self.value = None;
                self.error = None;
                match rule.no_data {
                    NoData::Keep => return step,
                    NoData::Ok => Some(false),
                    NoData::Alerting => Some(true),
                    NoData::NoData => None,
                }
            }
        };
        let Some(breach) = breach else {
            if self.state == State::Firing {
                // Firing ends: say it resolved, then wait in NoData.
                step.notify = Some(Reason::Resolved);
            } else if self.state != State::NoData {
                step.notify = Some(Reason::NoData);
            }
            self.breach_since = None;
            self.notified_at = None;
            self.go(State::NoData, now, &mut step);
            return step;
        };
        if breach {
            let since = *self.breach_since.get_or_insert(now);
            let held = (now - since).to_std().unwrap_or_default();
            match self.state {
                State::Firing => {
                    let due = self.notified_at.is_none_or(|t| {
                        !rule.repeat.is_zero()
                            && (now - t).to_std().unwrap_or_default() >= rule.repeat
                    });
                    if due && !rule.repeat.is_zero() {
                        self.notified_at = Some(now);
                        step.notify = Some(Reason::Repeat);
                    }
                }
                _ if held >= rule.for_ => {
                    self.go(State::Firing, now, &mut step);
                    self.notified_at = Some(now);
                    step.notify = Some(Reason::Firing);
                }
                _ => self.go(State::Pending, now, &mut step),
            }
        } else {
            self.breach_since = None;
            match self.state {
                State::Firing => {
                    self.notified_at = None;
                    self.go(State::Resolved, now, &mut step);
                    step.notify = Some(Reason::Resolved);
                }
                _ => self.go(State::Normal, now, &mut step),
            }
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;
    use crate::alerts::rule::{Condition, Severity};

    fn rule(for_secs: u64, repeat_secs: u64, no_data: NoData) -> Rule {
        Rule {
            file: "r.rhai".into(),
            name: "r".into(),
            description: String::new(),
            severity: Severity::Critical,
            every: Duration::from_secs(60),
            for_: Duration::from_secs(for_secs),
            repeat: Duration::from_secs(repeat_secs),
            no_data,
            format: "number".into(),
            metric: "1".into(),
            fill_previous: false,
            condition: Condition::Above(1.0),
        }
    }

    fn at(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::minutes(min)
    }

    fn hot() -> Outcome {
        Outcome::Value {
            value: 2.0,
            breach: true,
        }
    }
    fn cold() -> Outcome {
        Outcome::Value {
            value: 0.0,
            breach: false,
        }
    }

    /// Drives the rule minute by minute; returns (state, notification) per step.
    fn drive(r: &Rule, outcomes: &[Outcome]) -> Vec<(State, Option<Reason>)> {
        let mut s = RuleState::new(at(0));
        outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let step = s.step(r, at(i as i64), o);
                (s.state, step.notify)
            })
            .collect()
    }

    #[test]
    fn pending_fires_after_for_then_repeats_and_resolves() {
        let r = rule(120, 180, NoData::NoData);
        let got = drive(
            &r,
            &[hot(), hot(), hot(), hot(), hot(), hot(), cold(), cold()],
        );
        use Reason as N;
        use State as S;
        assert_eq!(
            got,
            vec![
                (S::Pending, None),
                (S::Pending, None),
                (S::Firing, Some(N::Firing)), // held 2 min = for
                (S::Firing, None),
                (S::Firing, None),
                (S::Firing, Some(N::Repeat)), // 3 min after the first
                (S::Resolved, Some(N::Resolved)),
                (S::Normal, None),
            ]
        );
    }

    #[test]
    fn a_short_breach_never_fires() {
        let r = rule(120, 0, NoData::NoData);
        let got = drive(&r, &[hot(), hot(), cold(), hot(), cold()]);
        assert!(
            got.iter().all(|(s, n)| *s != State::Firing && n.is_none()),
            "{got:?}"
        );
        assert_eq!(got[2].0, State::Normal);
    }

    #[test]
    fn no_data_follows_the_policy() {
        let nd = Outcome::NoData;
        let got = drive(
            &rule(0, 0, NoData::NoData),
            &[nd.clone(), nd.clone(), cold()],
        );
        assert_eq!(got[0], (State::NoData, Some(Reason::NoData)));
        assert_eq!(got[1], (State::NoData, None));
        assert_eq!(got[2], (State::Normal, None));
        let got = drive(&rule(0, 0, NoData::Alerting), std::slice::from_ref(&nd));
        assert_eq!(got[0], (State::Firing, Some(Reason::Firing)));
        let got = drive(&rule(0, 0, NoData::Ok), &[hot(), nd.clone()]);
        assert_eq!(got[1], (State::Resolved, Some(Reason::Resolved)));
        let got = drive(&rule(0, 0, NoData::Keep), &[hot(), nd.clone()]);
        assert_eq!(got[1], (State::Firing, None));
        // Firing into NoData says it resolved.
        let got = drive(&rule(0, 0, NoData::NoData), &[hot(), nd]);
        assert_eq!(got[1], (State::NoData, Some(Reason::Resolved)));
    }

    #[test]
    fn errors_are_a_state_said_once() {
        let e = Outcome::Error("boom".into());
        let got = drive(&rule(0, 0, NoData::NoData), &[e.clone(), e, cold()]);
        assert_eq!(
            got,
            vec![
                (State::Error, Some(Reason::Error)),
                (State::Error, None),
                (State::Normal, None)
            ]
        );
    }

    #[test]
    fn without_repeat_a_firing_rule_notifies_once() {
        let got = drive(&rule(0, 0, NoData::NoData), &[hot(), hot(), hot()]);
        assert_eq!(got.iter().filter(|(_, n)| n.is_some()).count(), 1);
    }
}
