//! Alert rules: what a file in `scripts/alerts/` says.
//!
//! A rule file is a Rhai script ending with a map (the sandbox of the
//! generator's scripts: no file, network or clock access):
//!
//! ```rhai
//! #{
//!     alert: "Payment failure rate",
//!     severity: "critical",            // info, warning or critical
//!     every: "1m",                     // evaluation interval
//!     pending: "2m",                   // Grafana's "for": breaching this long before firing
//!     repeat: "1h",                    // notify again while firing
//!     no_data: "no_data",              // no_data, ok, alerting or keep
//!     format: "percent",               // how the value is written
//!     fill: "zero",                    // a series' empty steps: zero or previous
//!     metric: `let t = transactions(#{ last: "15m" });
//!              if t.height == 0 { NO_DATA } else {
//!                  t.filter(col("status") == "failed").height.to_float() / t.height }`,
//!     condition: #{ above: 0.10 },
//! }
//! ```
//!
//! The metric is a metric script's body (every frame function; run like
//! the app's custom metrics, in their sandbox and child process) giving a
//! number, or a time series frame (a time column, a value column) whose
//! last row is the current value. `NO_DATA` (an empty frame) or an empty
//! frame means there is nothing to judge. `PIPELINE` is a map of the
//! pipeline's figures when the evaluator knows them (`lag`: records not
//! yet ingested; `dead_letters_per_min`), `()` otherwise.
//!
//! Conditions: `#{ above: x }`, `#{ below: x }`, `#{ change_pct: #{ below:
//! -30.0, steps: 12 } }` (the last value against the one `steps` rows
//! earlier of a series), `#{ outside_band: #{ level: 0.999, side:
//! "below" } }` (the last value of a series against the forecast band of
//! the rows before it; `side` "above", "below" or "both").

use std::time::Duration;

use serde::Deserialize;

use crate::script::{Limits, Sandbox, ScriptError};

/// How bad a firing rule is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Needs a look soon.
    Warning,
    /// Needs a look now.
    Critical,
}

impl Severity {
    /// `info`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What a rule does when its metric has nothing to judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    /// Goes to the NoData state (and says so once).
    NoData,
    /// Counts as normal.
    Ok,
    /// Counts as breaching.
    Alerting,
    /// Keeps the state it has.
    Keep,
}

/// Which side of a band breaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Above the band only.
    Above,
    /// Below the band only.
    Below,
    /// Either.
    Both,
}

/// When a value breaches.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum Condition {
    /// Above this value.
    Above(f64),
    /// Below this value.
    Below(f64),
    /// The change in percent from `steps` rows earlier is above `above`
    /// or below `below` (either may be absent).
    ChangePct {
        /// Rows back the comparison is with.
        steps: usize,
        /// Breaches above this change (%).
        above: Option<f64>,
        /// Breaches below this change (%).
        below: Option<f64>,
    },
    /// Outside the band at `level` forecast from the earlier rows.
    OutsideBand {
        /// The band's level.
        level: f64,
        /// Which side breaches.
        side: Side,
    },
}

impl Condition {
    /// Whether the metric must be a series (the band and change need one).
    pub fn needs_series(&self) -> bool {
        matches!(
            self,
            Condition::ChangePct { .. } | Condition::OutsideBand { .. }
        )
    }

    /// The condition in words ("above 0.1").
    pub fn describe(&self) -> String {
        match self {
            Condition::Above(x) => format!("above {x}"),
            Condition::Below(x) => format!("below {x}"),
            Condition::ChangePct {
                steps,
                above,
                below,
            } => {
                let mut parts = Vec::new();
                if let Some(a) = above {
                    parts.push(format!("up more than {a} %"));
                }
                if let Some(b) = below {
                    parts.push(format!("down more than {} %", b.abs()));
                }
                format!("{} over {steps} steps", parts.join(" or "))
            }
            Condition::OutsideBand { level, side } => {
                let side = match side {
                    Side::Above => "above",
                    Side::Below => "below",
                    Side::Both => "outside",
                };
                format!("{side} the {} % forecast band", level * 100.0)
            }
        }
    }
}

/// One alert rule.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Rule {
    /// The file it came from (`payment_failure_rate.rhai`).
    pub file: String,
    /// Its name (`alert`).
    pub name: String,
    /// What it watches, for people (`description`).
    pub description: String,
    /// How bad firing is.
    pub severity: Severity,
    /// Time between evaluations.
    pub every: Duration,
    /// How long the condition must hold before firing.
    pub for_: Duration,
    /// Time between notifications while firing (zero: once).
    pub repeat: Duration,
    /// What nothing to judge means.
    pub no_data: NoData,
    /// How the value is written (`number`, `percent`, `currency`, `count`).
    pub format: String,
    /// The metric's Rhai source.
    pub metric: String,
    /// A series' steps with no row hold the step before's value (rates)
    /// instead of 0 (sums, counts).
    pub fill_previous: bool,
    /// When it breaches.
    pub condition: Condition,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    alert: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_severity")]
    severity: String,
    #[serde(default = "default_every")]
    every: String,
    #[serde(default, alias = "for")]
    pending: Option<String>,
    #[serde(default)]
    repeat: Option<String>,
    #[serde(default = "default_no_data")]
    no_data: String,
    #[serde(default = "default_format")]
    format: String,
    #[serde(default)]
    fill: Option<String>,
    metric: String,
    condition: serde_json::Map<String, serde_json::Value>,
}

fn default_severity() -> String {
    "warning".into()
}
fn default_every() -> String {
    "1m".into()
}
fn default_no_data() -> String {
    "no_data".into()
}
fn default_format() -> String {
    "number".into()
}

/// Shortest evaluation interval a rule may ask for.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// `"90s"`, `"5m"`, `"1h"`, `"2d"` or `"0s"` as a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (\"30s\", \"5m\", \"1h\", \"1d\")"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    n.checked_mul(secs)
        .filter(|s| *s <= 366 * 86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is longer than a year"))
}

fn number(v: &serde_json::Value, what: &str) -> Result<f64, String> {
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("{what} must be a number, got {v}"))
}

fn condition(m: &serde_json::Map<String, serde_json::Value>) -> Result<Condition, String> {
    let hint = "give one of #{ above: x }, #{ below: x }, #{ change_pct: #{ below: -30.0, steps: 12 } }, #{ outside_band: #{ level: 0.999 } }";
    let mut it = m.iter();
    let (Some((k, v)), None) = (it.next(), it.next()) else {
        return Err(format!("condition: {hint}"));
    };
    match k.as_str() {
        "above" => Ok(Condition::Above(number(v, "above")?)),
        "below" => Ok(Condition::Below(number(v, "below")?)),
        "change_pct" => {
            let o = v.as_object().ok_or("change_pct: give a map")?;
            let mut steps = 1;
            let (mut above, mut below) = (None, None);
            for (k, v) in o {
                match k.as_str() {
                    "steps" => {
                        steps = v
                            .as_u64()
                            .and_then(|s| usize::try_from(s).ok())
                            .filter(|s| (1..=10_000).contains(s))
                            .ok_or("change_pct: steps must be 1 to 10000")?
                    }
                    "above" => above = Some(number(v, "change_pct.above")?),
                    "below" => below = Some(number(v, "change_pct.below")?),
                    other => {
                        return Err(format!(
                            "change_pct: unknown `{other}` (steps, above, below)"
                        ))
                    }
                }
            }
            if above.is_none() && below.is_none() {
                return Err("change_pct: give `above`, `below` or both (in %)".into());
            }
            Ok(Condition::ChangePct {
                steps,
                above,
                below,
            })
        }
        "outside_band" => {
            let o = v.as_object().ok_or("outside_band: give a map")?;
            let (mut level, mut side) = (0.99, Side::Both);
            for (k, v) in o {
                match k.as_str() {
                    "level" => {
                        let x = number(v, "outside_band.level")?;
                        // 99.9 (%) is 0.999, not 0.9990000000000001.
                        level = if x >= 1.0 { (x * 1e7).round() / 1e9 } else { x };
                        if !(level > 0.0 && level < 1.0) {
                            return Err(format!("outside_band: level {x}; give 0.99 or 99"));
                        }
                    }
                    "side" => {
                        side = match v.as_str() {
                            Some("above") => Side::Above,
                            Some("below") => Side::Below,
                            Some("both") => Side::Both,
                            _ => {
                                return Err(format!(
                                    "outside_band: side {v}; give \"above\", \"below\" or \"both\""
                                ))
                            }
                        }
                    }
                    other => return Err(format!("outside_band: unknown `{other}` (level, side)")),
                }
            }
            Ok(Condition::OutsideBand { level, side })
        }
        other => Err(format!("condition: unknown `{other}`; {hint}")),
    }
}

impl Rule {
    /// A rule from its file's evaluated map.
    fn from_json(file: &str, v: serde_json::Value) -> Result<Rule, String> {
        let raw: RawRule = serde_json::from_value(v).map_err(|e| {
            let e = e.to_string();
            if e.contains("missing field") || e.contains("unknown field") {
                format!("{e} (a rule has alert, metric and condition; optional: description, severity, every, pending, repeat, no_data, format, fill)")
            } else {
                e
            }
        })?;
        if raw.alert.trim().is_empty() || raw.alert.len() > 200 {
            return Err("alert: give the rule a name (at most 200 characters)".into());
        }
        let severity = match raw.severity.as_str() {
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            "critical" => Severity::Critical,
            other => return Err(format!("severity {other:?}: info, warning or critical")),
        };
        let no_data = match raw.no_data.as_str() {
            "no_data" => NoData::NoData,
            "ok" => NoData::Ok,
            "alerting" => NoData::Alerting,
            "keep" => NoData::Keep,
            other => return Err(format!("no_data {other:?}: no_data, ok, alerting or keep")),
        };
        if !["number", "percent", "currency", "count"].contains(&raw.format.as_str()) {
            return Err(format!(
                "format {:?}: number, percent, currency or count",
                raw.format
            ));
        }
        let every = parse_duration(&raw.every).map_err(|e| format!("every: {e}"))?;
        if every < MIN_EVERY {
            return Err("every: at least 1s".into());
        }
        let dur = |o: &Option<String>, what: &str| -> Result<Duration, String> {
            o.as_deref()
                .map_or(Ok(Duration::ZERO), parse_duration)
                .map_err(|e| format!("{what}: {e}"))
        };
        let fill_previous = match raw.fill.as_deref() {
            None | Some("zero") => false,
            Some("previous") => true,
            Some(other) => return Err(format!("fill {other:?}: zero or previous")),
        };
        if raw.metric.trim().is_empty() {
            return Err("metric: give the Rhai that computes the value".into());
        }
        Ok(Rule {
            file: file.to_owned(),
            name: raw.alert.trim().to_owned(),
            description: raw.description,
            severity,
            every,
            for_: dur(&raw.pending, "pending")?,
            repeat: dur(&raw.repeat, "repeat")?,
            no_data,
            format: raw.format,
            metric: raw.metric,
            fill_previous,
            condition: condition(&raw.condition)?,
        })
    }
}

/// The rules shipped with salespulse: (file name, source).
pub const BUILTIN_RULES: [(&str, &str); 5] = [
    (
        "payment_failure_rate.rhai",
        include_str!("../../scripts/alerts/payment_failure_rate.rhai"),
    ),
    (
        "revenue_below_forecast.rhai",
        include_str!("../../scripts/alerts/revenue_below_forecast.rhai"),
    ),
    (
        "dead_letter_rate.rhai",
        include_str!("../../scripts/alerts/dead_letter_rate.rhai"),
    ),
    (
        "consumer_lag.rhai",
        include_str!("../../scripts/alerts/consumer_lag.rhai"),
    ),
    (
        "conversion_drop.rhai",
        include_str!("../../scripts/alerts/conversion_drop.rhai"),
    ),
];

/// Writes the shipped rules into `dir` when it does not exist yet (a
/// folder the user emptied stays empty). Returns how many were written.
pub fn seed(dir: &std::path::Path) -> std::io::Result<usize> {
    if dir.exists() {
        return Ok(0);
    }
    std::fs::create_dir_all(dir)?;
    for (file, text) in BUILTIN_RULES {
        std::fs::write(dir.join(file), text)?;
    }
    Ok(BUILTIN_RULES.len())
}

fn sandbox() -> &'static Sandbox {
    static S: std::sync::OnceLock<Sandbox> = std::sync::OnceLock::new();
    // A rule file is a map: it needs few operations, and one that loops
    // must not hold the evaluator (reloads run on its task).
    S.get_or_init(|| {
        Sandbox::new(Limits {
            max_operations: 1_000_000,
            timeout: std::time::Duration::from_secs(1),
            ..Limits::default()
        })
    })
}

/// Evaluates a rule file's text.
pub fn from_source(file: &str, source: &str) -> Result<Rule, ScriptError> {
    let s = sandbox();
    let ast = s.compile(file, source)?;
    let v = s.eval_ast(file, &ast, None)?;
    let json = crate::script::to_json(file, &v)?;
    Rule::from_json(file, json).map_err(|e| ScriptError::new(file, e))
}

/// Reads and evaluates a rule file.
pub fn load(path: &std::path::Path) -> Result<Rule, ScriptError> {
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let source =
        crate::script::read_source(path, 256 * 1024).map_err(|e| ScriptError::new(&file, e))?;
    from_source(&file, &source)
}

/// The rule files of a folder, sorted by file name: each rule, or the
/// error that stopped it. Two rules with one name: the second is an error.
pub fn load_dir(dir: &std::path::Path) -> Vec<Result<Rule, ScriptError>> {
    let files = match crate::script::rhai_files(dir) {
        Ok(f) => f,
        Err(e) => return vec![Err(e)],
    };
    let mut names = std::collections::HashSet::new();
    files
        .iter()
        .map(|p| {
            let r = load(p)?;
            if !names.insert(r.name.clone()) {
                return Err(ScriptError::new(
                    &r.file,
                    format!("another rule is already named {:?}", r.name),
                ));
            }
            Ok(r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: &str = r#"#{
        alert: "Failures",
        every: "30s",
        pending: "2m",
        repeat: "1h",
        metric: "0.5",
        condition: #{ above: 0.1 },
    }"#;

    #[test]
    fn a_rule_file_reads_with_its_defaults() {
        let r = from_source("f.rhai", RULE).unwrap();
        assert_eq!(r.name, "Failures");
        assert_eq!(r.severity, Severity::Warning);
        assert_eq!(r.every, Duration::from_secs(30));
        assert_eq!(r.for_, Duration::from_secs(120));
        assert_eq!(r.repeat, Duration::from_secs(3600));
        assert_eq!(r.no_data, NoData::NoData);
        assert_eq!(r.condition, Condition::Above(0.1));
        let band = from_source(
            "b.rhai",
            r#"#{ alert: "b", metric: "1", condition: #{ outside_band: #{ level: 99.9, side: "below" } } }"#,
        )
        .unwrap();
        assert_eq!(
            band.condition,
            Condition::OutsideBand {
                level: 0.999,
                side: Side::Below
            }
        );
        assert!(band.condition.needs_series());
    }

    #[test]
    fn bad_rules_say_what_to_fix() {
        let cases = [
            (
                r#"#{ metric: "1", condition: #{ above: 1 } }"#,
                "missing field `alert`",
            ),
            (
                r#"#{ alert: "a", metric: "1", condition: #{ abvoe: 1 } }"#,
                "unknown `abvoe`",
            ),
            (
                r#"#{ alert: "a", metric: "1", condition: #{ above: "x" } }"#,
                "must be a number",
            ),
            (
                r#"#{ alert: "a", metric: "1", condition: #{ above: 1 }, every: "5x" }"#,
                "unit",
            ),
            (
                r#"#{ alert: "a", metric: "1", condition: #{ above: 1 }, every: "0s" }"#,
                "at least 1s",
            ),
            (
                r#"#{ alert: "a", metric: "1", condition: #{ above: 1 }, severity: "huge" }"#,
                "severity",
            ),
            (
                r#"#{ alert: "a", metric: "1", condition: #{ above: 1 }, colour: 1 }"#,
                "unknown field",
            ),
            (
                r#"#{ alert: "a", metric: "1", condition: #{ change_pct: #{ steps: 3 } } }"#,
                "give `above`",
            ),
            (
                r#"#{ alert: "a", metric: "1", condition: #{ above: 1, below: 0 } }"#,
                "give one of",
            ),
            ("42", "invalid type"),
            ("loop {}", "stopped"),
        ];
        for (src, says) in cases {
            let e = from_source("r.rhai", src).unwrap_err().to_string();
            assert!(e.contains(says), "{src}\n=> {e}");
        }
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("400d").is_err());
    }

    #[test]
    fn every_shipped_rule_loads() {
        for (file, text) in BUILTIN_RULES {
            let r = from_source(file, text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!r.description.is_empty(), "{file}");
            // Its metric compiles as a metric script would.
            let header = "const NAME = \"x\"; const KIND = \"table\"; const NO_DATA = 0; const PIPELINE = ();\n";
            crate::script::Sandbox::new(Limits::default())
                .compile(file, &format!("{header}{}", r.metric))
                .unwrap_or_else(|e| panic!("{file} metric: {e}"));
        }
    }
}
