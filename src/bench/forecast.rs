//! `salespulse bench forecast`: forecast accuracy on generated history.
//!
//! For each seed the shop generator (the built-in shop, simulated clock
//! from a fixed Monday) makes `days` of history; completed revenue is
//! summed per hour. The last `holdout_days` are held out: the model
//! (`script::forecast`, MSTL with seasons of 24 and 168 hours and an AutoETS
//! trend) is fitted on the rest and forecasts the holdout, hour by hour.
//! The report gives, per seed and on average:
//!
//! - **MASE**: the forecast's MAE over the in-sample MAE of the
//!   seasonal-naive forecast (repeating the value a week earlier); below 1
//!   is better than that baseline.
//! - **Relative MAE**: the forecast's MAE over the MAE of repeating the
//!   last week of history across the holdout; below 1 is better than
//!   repeating last week.
//! - MAPE of both, and the share of holdout hours inside the 80 % and 95 %
//!   bands (a well-calibrated 95 % band covers 90–98 %).
//!
//! Then anomaly detection ([`detect`]), per seed, in 5-minute steps, as an
//! alert rule would run while data arrives (`script::forecast::monitor`):
//! the payment-failure rate (failed sales out of all sales, against the
//! binomial band of the expected rate) and completed revenue (against the
//! forecast band). Two weeks of history, then:
//!
//! - **control**: the third week of the same seed with no scenario, every
//!   step checked: any alarm is a false alarm;
//! - **payment outage** scheduled from 14:07 on day 15 (generator time;
//!   payments made from then on fail, whenever their sessions began):
//!   minutes from its start to the failure-rate alarm;
//! - **flash sale** scheduled from 11:07 on day 15: minutes to the revenue
//!   alarm.

use std::time::Instant;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::Serialize;

use crate::event::{Event, Status};
use crate::generator::behaviour::{self, Behaviour};
use crate::generator::{self, Clock, Extent, Generator, GeneratorParams, Scenario};
use crate::script::forecast::{self, Monitor, Signal, Spec, Transform};

/// What `bench forecast` measures.
#[derive(Clone, Debug)]
pub struct ForecastBenchOptions {
    /// Generator seeds, one history each.
    pub seeds: Vec<u64>,
    /// Days of history generated.
    pub days: u32,
    /// Days held out at the end.
    pub holdout_days: u32,
    /// The transform the model works on.
    pub transform: Transform,
    /// Also run anomaly detection ([`detect`]) for each seed.
    pub detect: bool,
    /// Calibrate the bands (off: the model's own, for comparison).
    pub calibrate: bool,
}

impl Default for ForecastBenchOptions {
    fn default() -> Self {
        ForecastBenchOptions {
            seeds: vec![1, 2, 3],
            days: 90,
            holdout_days: 7,
            transform: Transform::Auto,
            detect: true,
            calibrate: true,
        }
    }
}

/// One seed's figures.
#[derive(Clone, Debug, Serialize)]
pub struct SeedAccuracy {
    /// The generator seed.
    pub seed: u64,
    /// Hours of history the model was fitted on.
    pub train_hours: usize,
    /// Hours forecast and scored.
    pub holdout_hours: usize,
    /// Mean completed revenue per hour over the holdout.
    pub mean_revenue: f64,
    /// The model chosen.
    pub model: String,
    /// MAE over the in-sample seasonal-naive MAE (< 1 beats the baseline).
    pub mase: f64,
    /// MAE over the MAE of repeating last week (< 1 beats it).
    pub relative_mae: f64,
    /// The forecast's MAPE (%).
    pub mape: f64,
    /// Repeating last week's MAPE (%).
    pub naive_mape: f64,
    /// Share of holdout hours inside the 80 % band.
    pub coverage_80: f64,
    /// Share of holdout hours inside the 95 % band.
    pub coverage_95: f64,
    /// Seconds to generate the history.
    pub generate_secs: f64,
    /// Seconds to fit and forecast.
    pub fit_secs: f64,
}

/// What `bench forecast` found.
#[derive(Clone, Debug, Serialize)]
pub struct ForecastReport {
    /// Days of history per seed.
    pub days: u32,
    /// Days held out.
    pub holdout_days: u32,
    /// The transform used.
    pub transform: String,
    /// Whether the bands were calibrated.
    pub calibrated: bool,
    /// Per seed.
    pub seeds: Vec<SeedAccuracy>,
    /// Mean MASE over the seeds.
    pub mean_mase: f64,
    /// Mean relative MAE over the seeds.
    pub mean_relative_mae: f64,
    /// 80 % band coverage over all seeds' holdout hours.
    pub coverage_80: f64,
    /// 95 % band coverage over all seeds' holdout hours.
    pub coverage_95: f64,
    /// Anomaly detection, per seed (empty when not asked for).
    pub detection: Vec<Detection>,
}

/// Start of every generated history: a Monday, midnight UTC.
pub fn history_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

/// Completed revenue per hour of the built-in shop for `hours` hours from
/// `start`, seed `seed`.
pub fn hourly_revenue(seed: u64, start: DateTime<Utc>, hours: usize) -> anyhow::Result<Vec<f64>> {
    let mut g = Generator::new(GeneratorParams::builtin(), seed, Clock::Simulated(start))
        .map_err(|e| anyhow::anyhow!("generator: {e}"))?;
    let until = start + Duration::hours(i64::try_from(hours).unwrap_or(i64::MAX / 4));
    let mut out = vec![0.0; hours];
    for e in generator::events(&mut g, Extent::Until(until)) {
        if let Event::Sale(s) = e {
            if s.status != Status::Completed {
                continue;
            }
            let h = (s.occurred_at - start).num_hours();
            if let Some(slot) = usize::try_from(h).ok().and_then(|h| out.get_mut(h)) {
                *slot += s.total_amount;
            }
        }
    }
    Ok(out)
}

/// Runs the bench.
pub fn run(opts: &ForecastBenchOptions) -> anyhow::Result<ForecastReport> {
    let hours = usize::try_from(opts.days)? * 24;
    let holdout = usize::try_from(opts.holdout_days)? * 24;
    anyhow::ensure!(
        holdout > 0 && holdout * 3 <= hours,
        "the holdout ({} days) must be at most a third of the history ({} days)",
        opts.holdout_days,
        opts.days
    );
    let spec = Spec {
        periods: forecast::periods_for_step(3600),
        transform: opts.transform,
        calibrate: opts.calibrate,
    };
    let mut seeds = Vec::with_capacity(opts.seeds.len());
    for &seed in &opts.seeds {
        let t0 = Instant::now();
        let y = hourly_revenue(seed, history_start(), hours)?;
        let generate_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let bt = forecast::backtest(&y, holdout, 1, &forecast::DEFAULT_LEVELS, &spec)
            .map_err(|e| anyhow::anyhow!(e))?;
        let fit_secs = t1.elapsed().as_secs_f64();
        let Some(f) = bt.folds.first() else {
            anyhow::bail!("the backtest gave no fold");
        };
        let held = y.get(f.start..).unwrap_or_default();
        seeds.push(SeedAccuracy {
            seed,
            train_hours: f.start,
            holdout_hours: f.len,
            mean_revenue: held.iter().sum::<f64>() / held.len().max(1) as f64,
            model: bt.model.clone(),
            mase: f.mase,
            relative_mae: f.relative_mae,
            mape: f.mape,
            naive_mape: f.naive_mape,
            coverage_80: bt.coverage(0.80),
            coverage_95: bt.coverage(0.95),
            generate_secs,
            fit_secs,
        });
    }
    let mean = |f: &dyn Fn(&SeedAccuracy) -> f64| {
        seeds.iter().map(f).sum::<f64>() / seeds.len().max(1) as f64
    };
    Ok(ForecastReport {
        days: opts.days,
        holdout_days: opts.holdout_days,
        transform: format!("{:?}", opts.transform).to_lowercase(),
        calibrated: opts.calibrate,
        mean_mase: mean(&|s| s.mase),
        mean_relative_mae: mean(&|s| s.relative_mae),
        coverage_80: mean(&|s| s.coverage_80),
        coverage_95: mean(&|s| s.coverage_95),
        seeds,
        detection: if opts.detect {
            opts.seeds
                .iter()
                .map(|s| detect(*s))
                .collect::<anyhow::Result<Vec<_>>>()?
        } else {
            Vec::new()
        },
    })
}

impl std::fmt::Display for ForecastReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "forecast accuracy: {} days of hourly completed revenue per seed, the last {} held out (transform: {}, bands {})",
            self.days,
            self.holdout_days,
            self.transform,
            if self.calibrated { "calibrated" } else { "as the model gives them" }
        )?;
        writeln!(
            f,
            "{:>5} {:>9} {:>6} {:>9} {:>7} {:>8} {:>8} {:>7} {:>7} {:>6} {:>6}  model",
            "seed",
            "revenue/h",
            "MASE",
            "rel. MAE",
            "MAPE %",
            "naive %",
            "cov 80",
            "cov 95",
            "gen s",
            "fit s",
            "hours"
        )?;
        for s in &self.seeds {
            writeln!(
                f,
                "{:>5} {:>9.0} {:>6.3} {:>9.3} {:>7.2} {:>8.2} {:>7.1}% {:>6.1}% {:>7.1} {:>6.2} {:>6}  {}",
                s.seed,
                s.mean_revenue,
                s.mase,
                s.relative_mae,
                s.mape,
                s.naive_mape,
                100.0 * s.coverage_80,
                100.0 * s.coverage_95,
                s.generate_secs,
                s.fit_secs,
                s.train_hours,
                s.model
            )?;
        }
        writeln!(
            f,
            "mean: MASE {:.3} (target < 1), relative MAE {:.3}, coverage 80 % band {:.1} %, 95 % band {:.1} % (target 90-98 %)",
            self.mean_mase,
            self.mean_relative_mae,
            100.0 * self.coverage_80,
            100.0 * self.coverage_95
        )?;
        if self.detection.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "\nanomaly detection, 5-minute steps, two weeks of history (target: within 15 min, no false alarm)"
        )?;
        writeln!(
            f,
            "{:>5} {:>24} {:>24} {:>22} {:>22} {:>18}",
            "seed",
            "outage: failure rate",
            "flash sale: revenue",
            "control: rate alarms",
            "control: rev. alarms",
            format!("rev. below x{BELOW_RUN}")
        )?;
        let after = |m: Option<f64>| {
            m.map_or_else(
                || "not detected".to_owned(),
                |m| format!("after {m:.0} min"),
            )
        };
        for d in &self.detection {
            writeln!(
                f,
                "{:>5} {:>24} {:>24} {:>15} of {:>4} {:>15} of {:>4} {:>18}",
                d.seed,
                after(d.outage_minutes),
                after(d.flash_sale_minutes),
                d.control_rate_alarms,
                d.control_steps,
                d.control_revenue_alarms,
                d.control_steps,
                d.control_revenue_below
            )?;
        }
        for d in self
            .detection
            .iter()
            .filter(|d| !d.control_revenue_below_at.is_empty())
        {
            let at: Vec<String> = d
                .control_revenue_below_at
                .iter()
                .map(|t| t.format("%a %H:%M").to_string())
                .collect();
            writeln!(
                f,
                "seed {}: revenue below the band x{BELOW_RUN} at {}",
                d.seed,
                at.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Steps in a row below the band that the shipped "revenue below
/// forecast" rule fires on: the first evaluation, then its `pending` of 10
/// minutes at one evaluation per 5-minute step (a test holds the rule to
/// it).
pub const BELOW_RUN: usize = 3;

/// Minutes per step of the detection series.
pub const STEP_MINUTES: i64 = 5;
const STEPS_PER_DAY: usize = 288;

/// One seed's anomaly detection.
#[derive(Clone, Debug, Serialize)]
pub struct Detection {
    /// The generator seed.
    pub seed: u64,
    /// Minutes from the payment outage's start to the failure-rate alarm
    /// (`None`: not detected within the hour).
    pub outage_minutes: Option<f64>,
    /// Alarms on the failure rate before the outage (false alarms).
    pub outage_early_alarms: usize,
    /// Minutes from the flash sale's start to the revenue alarm.
    pub flash_sale_minutes: Option<f64>,
    /// Alarms on revenue before the flash sale.
    pub flash_sale_early_alarms: usize,
    /// Steps checked in the control week.
    pub control_steps: usize,
    /// Failure-rate alarms in the control week.
    pub control_rate_alarms: usize,
    /// Revenue alarms (above the band) in the control week.
    pub control_revenue_alarms: usize,
    /// Revenue runs below the band in the control week, [`BELOW_RUN`]
    /// steps in a row (what the shipped "revenue below forecast" rule fires
    /// on: its `for` after the first evaluation).
    pub control_revenue_below: usize,
    /// When each of those runs was complete (generator time).
    pub control_revenue_below_at: Vec<DateTime<Utc>>,
}

/// Per 5-minute step: all sales, failed sales, completed revenue.
#[derive(Clone, Debug, Default)]
pub struct Steps {
    /// Sales per step.
    pub sales: Vec<f64>,
    /// Failed sales per step.
    pub failed: Vec<f64>,
    /// Completed revenue per step.
    pub revenue: Vec<f64>,
}

/// `days` of the built-in shop in 5-minute steps from `start`, with
/// `scenario` scheduled from the given instant (generator time).
pub fn five_minute_steps(
    seed: u64,
    start: DateTime<Utc>,
    days: usize,
    scenario: Option<(Scenario, DateTime<Utc>)>,
) -> anyhow::Result<Steps> {
    let mut g = Generator::new(GeneratorParams::builtin(), seed, Clock::Simulated(start))
        .map_err(|e| anyhow::anyhow!("generator: {e}"))?;
    if let Some((sc, at)) = scenario {
        g = g
            .with_scenario_at(sc, at)
            .map_err(|e| anyhow::anyhow!("scenario: {e}"))?;
    }
    let n = days * STEPS_PER_DAY;
    let until = start + Duration::days(i64::try_from(days)?);
    let mut out = Steps {
        sales: vec![0.0; n],
        failed: vec![0.0; n],
        revenue: vec![0.0; n],
    };
    // Events come in the order sessions start, each stamped later (a sale
    // during its session, a session when it ends): run an hour past the end
    // so that the last steps are complete, and drop what falls after it.
    let margin = until + Duration::hours(1);
    loop {
        let e = g.next_event();
        if e.timestamp() >= margin {
            break;
        }
        let Event::Sale(s) = e else { continue };
        let k = (s.occurred_at - start).num_minutes() / STEP_MINUTES;
        let Some(k) = usize::try_from(k).ok().filter(|k| *k < n) else {
            continue;
        };
        if let (Some(a), Some(f), Some(r)) = (
            out.sales.get_mut(k),
            out.failed.get_mut(k),
            out.revenue.get_mut(k),
        ) {
            *a += 1.0;
            match s.status {
                Status::Failed => *f += 1.0,
                Status::Completed => *r += s.total_amount,
                _ => {}
            }
        }
    }
    Ok(out)
}

fn shipped_scenario(file: &str) -> anyhow::Result<Scenario> {
    let src = behaviour::BUILTIN_SCENARIOS
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, s)| *s)
        .ok_or_else(|| anyhow::anyhow!("no shipped scenario {file}"))?;
    match behaviour::from_source(file, src).map_err(|e| anyhow::anyhow!("{e}"))? {
        Behaviour::Scenario(s) => Ok(*s),
        Behaviour::Shop(_) => anyhow::bail!("{file} is a shop"),
    }
}

/// The monitors of the detection bench: 5-minute steps, two weeks of
/// history, a refit every hour, the 99.9 % band, two steps in a row above
/// it (a failure rate or revenue jumping).
pub fn detection_monitor() -> Monitor {
    Monitor {
        spec: Spec {
            periods: forecast::periods_for_step(STEP_MINUTES * 60),
            transform: Transform::Auto,
            calibrate: true,
        },
        level: 0.999,
        refit_every: 12,
        history: 14 * STEPS_PER_DAY,
        run: 2,
        side: 1,
    }
}

/// The end of step `at` of a series of 5-minute steps from `start`.
fn step_end(start: DateTime<Utc>, at: usize) -> DateTime<Utc> {
    start + Duration::minutes(STEP_MINUTES * (i64::try_from(at).unwrap_or(0) + 1))
}

/// Minutes from `from` to the first alarm at or after it, and the
/// alarms before it.
fn delay(
    checks: &[forecast::Check],
    start: DateTime<Utc>,
    from: DateTime<Utc>,
) -> (Option<f64>, usize) {
    let mut early = 0;
    for c in checks.iter().filter(|c| c.alarm) {
        let known = step_end(start, c.at);
        if known <= from {
            early += 1;
        } else {
            return (Some((known - from).num_seconds() as f64 / 60.0), early);
        }
    }
    (None, early)
}

/// Anomaly detection for one seed (see the module's documentation).
pub fn detect(seed: u64) -> anyhow::Result<Detection> {
    let start = history_start();
    let m = detection_monitor();
    let from = m.history;
    let rate = |s: &Steps, upto: usize| {
        forecast::monitor(
            Signal::Rate {
                hits: s.failed.get(..upto).unwrap_or_default(),
                totals: s.sales.get(..upto).unwrap_or_default(),
            },
            from,
            &m,
        )
        .map_err(|e| anyhow::anyhow!(e))
    };
    let revenue = |s: &Steps, upto: usize| {
        forecast::monitor(
            Signal::Values(s.revenue.get(..upto).unwrap_or_default()),
            from,
            &m,
        )
        .map_err(|e| anyhow::anyhow!(e))
    };
    let control = five_minute_steps(seed, start, 21, None)?;
    let n = control.sales.len();
    let c_rate = rate(&control, n)?;
    let c_rev = revenue(&control, n)?;
    let below = Monitor {
        side: -1,
        run: BELOW_RUN,
        ..m.clone()
    };
    let c_below = forecast::monitor(Signal::Values(&control.revenue), from, &below)
        .map_err(|e| anyhow::anyhow!(e))?;
    // Day 15, then an hour after the start.
    let day15 = start + Duration::days(14);
    let outage_at = day15 + Duration::minutes(14 * 60 + 7);
    let flash_at = day15 + Duration::minutes(11 * 60 + 7);
    let upto = |t: DateTime<Utc>| {
        usize::try_from((t - start).num_minutes() / STEP_MINUTES + 12).unwrap_or(0)
    };
    let o = five_minute_steps(
        seed,
        start,
        15,
        Some((shipped_scenario("payment_outage.rhai")?, outage_at)),
    )?;
    let (outage_minutes, outage_early_alarms) =
        delay(&rate(&o, upto(outage_at))?, start, outage_at);
    let fs = five_minute_steps(
        seed,
        start,
        15,
        Some((shipped_scenario("flash_sale.rhai")?, flash_at)),
    )?;
    let (flash_sale_minutes, flash_sale_early_alarms) =
        delay(&revenue(&fs, upto(flash_at))?, start, flash_at);
    Ok(Detection {
        seed,
        outage_minutes,
        outage_early_alarms,
        flash_sale_minutes,
        flash_sale_early_alarms,
        control_steps: c_rate.len(),
        control_rate_alarms: c_rate.iter().filter(|c| c.alarm).count(),
        control_revenue_alarms: c_rev.iter().filter(|c| c.alarm).count(),
        control_revenue_below: c_below.iter().filter(|c| c.alarm).count(),
        control_revenue_below_at: c_below
            .iter()
            .filter(|c| c.alarm)
            .map(|c| step_end(start, c.at))
            .collect(),
    })
}
