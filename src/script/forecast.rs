//! Forecasts of one regular time series, their backtest against a
//! seasonal-naive baseline, and anomalies: points outside the interval
//! forecast from what came before them.
//!
//! The model is MSTL (seasonal-trend decomposition by LOESS, one season per
//! period) with an automatically chosen exponential-smoothing model of the
//! deseasonalised series (AutoETS), as Grafana's forecasting does, from
//! `augurs`. Hourly data has seasons of 24 and 168 points, daily data of 7;
//! a season needs two whole cycles of history or it is left out, and a
//! series too short for any is forecast by AutoETS alone.
//!
//! Everything here works on plain `f64` slices in time order, one value per
//! step, no gaps: the frame functions ([`super::frames`]) put a frame's
//! time series into that shape.

use augurs::ets::trend::AutoETSTrendModel;
use augurs::ets::{AutoETS, FittedAutoETS};
use augurs::mstl::{FittedMSTLModel, MSTLModel};
use augurs::{Fit, Forecast, Predict};

/// The interval levels a forecast gives unless asked otherwise.
pub const DEFAULT_LEVELS: [f64; 2] = [0.80, 0.95];

/// Fewest points a forecast is made from.
pub const MIN_POINTS: usize = 8;

/// Most points a forecast is made from or made for (a year of minutes is
/// about half a million): bounds the work one script call can ask for.
pub const MAX_POINTS: usize = 200_000;

/// How values are transformed before the model sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    /// As they are.
    None,
    /// `ln(1 + y)`, back with `exp(y) − 1`: for counts and money, whose
    /// seasonal swings and noise grow with the level. Needs `y > −1`.
    Log,
    /// [`Transform::Log`] when no value is negative, else none (the
    /// default: revenue, orders and rates are never negative).
    Auto,
}

/// What to fit.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    /// Season lengths in steps (e.g. 24 and 168 for hourly data).
    pub periods: Vec<usize>,
    /// The transform of the values.
    pub transform: Transform,
    /// Calibrate the bands on the end of the history (see
    /// [`forecast`]); off, they are the model's own.
    pub calibrate: bool,
}

impl Spec {
    /// `self` with [`Transform::Auto`] decided for `y`.
    pub fn resolved(&self, y: &[f64]) -> Spec {
        let transform = match self.transform {
            Transform::Auto if y.iter().all(|v| *v >= 0.0) => Transform::Log,
            Transform::Auto => Transform::None,
            t => t,
        };
        Spec {
            transform,
            ..self.clone()
        }
    }
}

/// The seasons of a series sampled every `step_secs` seconds: a day and a
/// week where they are whole numbers of steps longer than one (hourly: 24
/// and 168; 5-minute: 288 and 2016), a week for daily data, none for
/// anything coarser.
pub fn periods_for_step(step_secs: i64) -> Vec<usize> {
    const DAY: i64 = 86_400;
    if step_secs <= 0 {
        return Vec::new();
    }
    [DAY, 7 * DAY]
        .iter()
        .filter(|&&p| p % step_secs == 0 && p / step_secs > 1)
        .filter_map(|&p| usize::try_from(p / step_secs).ok())
        .collect()
}

/// An interval at one level.
#[derive(Clone, Debug, PartialEq)]
pub struct Band {
    /// Its level, in (0, 1).
    pub level: f64,
    /// Lower bounds, one per point.
    pub lower: Vec<f64>,
    /// Upper bounds, one per point.
    pub upper: Vec<f64>,
}

/// A forecast.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The point forecast of each step ahead (the median when the values
    /// were log-transformed).
    pub point: Vec<f64>,
    /// One band per level asked for, in the order asked.
    pub bands: Vec<Band>,
    /// The model's one-step fit of the history (NaN where it has none).
    pub fitted: Vec<f64>,
    /// The seasons the model used (those the history was long enough for).
    pub periods: Vec<usize>,
    /// The model, e.g. "MSTL(24,168) + ETS(A,N,N)".
    pub model: String,
}

enum Fitted {
    Mstl(Box<FittedMSTLModel>),
    Ets(Box<FittedAutoETS>),
}

impl Fitted {
    fn predict(&self, horizon: usize, level: Option<f64>) -> Result<Forecast, String> {
        match self {
            Fitted::Mstl(m) => m.predict(horizon, level).map_err(|e| e.to_string()),
            Fitted::Ets(m) => m.predict(horizon, level).map_err(|e| e.to_string()),
        }
    }

    fn in_sample(&self) -> Result<Forecast, String> {
        match self {
            Fitted::Mstl(m) => m.predict_in_sample(None::<f64>).map_err(|e| e.to_string()),
            Fitted::Ets(m) => m.predict_in_sample(None::<f64>).map_err(|e| e.to_string()),
        }
    }
}

fn check(y: &[f64], spec: &Spec) -> Result<(), String> {
    if y.len() < MIN_POINTS {
        return Err(format!(
            "forecast: {} points of history; it needs at least {MIN_POINTS}",
            y.len()
        ));
    }
    if y.len() > MAX_POINTS {
        return Err(format!(
            "forecast: {} points of history; at most {MAX_POINTS} (aggregate to a coarser step)",
            y.len()
        ));
    }
    if let Some(i) = y.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "forecast: value {i} is not a number (fill or drop the gaps first)"
        ));
    }
    if spec.transform == Transform::Log {
        if let Some(v) = y.iter().find(|v| **v <= -1.0) {
            return Err(format!(
                "forecast: the log transform needs values above -1; {v} is not"
            ));
        }
    }
    Ok(())
}

fn forward(t: Transform, v: f64) -> f64 {
    match t {
        Transform::None | Transform::Auto => v,
        Transform::Log => v.ln_1p(),
    }
}

fn back(t: Transform, v: f64) -> f64 {
    match t {
        Transform::None | Transform::Auto => v,
        // Bounds far out in log space stay finite in the original one.
        Transform::Log => v.clamp(-700.0, 700.0).exp_m1(),
    }
}

/// The seasons of `spec` that `n` points of history hold two cycles of.
pub fn usable_periods(spec: &Spec, n: usize) -> Vec<usize> {
    let mut p: Vec<usize> = spec
        .periods
        .iter()
        .copied()
        .filter(|&p| p >= 2 && p.saturating_mul(2) <= n)
        .collect();
    p.sort_unstable();
    p.dedup();
    p
}

/// A fitted model, with what the bands need.
struct Model {
    m: Fitted,
    /// The seasons used.
    periods: Vec<usize>,
    /// Its name.
    name: String,
    /// Points of history.
    n: usize,
    /// The one-step fit of the history, in the model's space.
    fitted: Vec<f64>,
    /// Per step of the shortest season: how wide the errors run at that
    /// time of the cycle against the cycle's median (nights with few
    /// orders are noisier than evenings with many).
    spread: Option<Vec<f64>>,
}

fn fit(y: &[f64], spec: &Spec) -> Result<Model, String> {
    check(y, spec)?;
    let z: Vec<f64> = y.iter().map(|v| forward(spec.transform, *v)).collect();
    let periods = usable_periods(spec, z.len());
    let ets = AutoETS::non_seasonal();
    let (m, name) = if periods.is_empty() {
        let m = ets
            .fit(&z)
            .map_err(|e| format!("forecast: the model did not fit: {e}"))?;
        let name = format!("ETS({})", ets_name(&m));
        (Fitted::Ets(Box::new(m)), name)
    } else {
        let m = MSTLModel::new(periods.clone(), AutoETSTrendModel::from(ets))
            .fit(&z)
            .map_err(|e| format!("forecast: the model did not fit: {e}"))?;
        let seasons: Vec<String> = periods.iter().map(ToString::to_string).collect();
        (
            Fitted::Mstl(Box::new(m)),
            format!("MSTL({}) + AutoETS", seasons.join(",")),
        )
    };
    let fitted = m.in_sample()?.point;
    let spread = periods
        .first()
        .and_then(|p| seasonal_spread(&z, &fitted, *p));
    Ok(Model {
        m,
        periods,
        name,
        n: z.len(),
        fitted,
        spread,
    })
}

/// Most a step of the cycle's spread may differ from the cycle's median.
const SPREAD_RANGE: (f64, f64) = (0.25, 4.0);

/// The mean absolute one-step error at each step of a cycle of `period`
/// steps (pooled with its neighbours: ±1/24 of the cycle, at least one
/// step), over the cycle's median; `None` with under three cycles.
fn seasonal_spread(z: &[f64], fitted: &[f64], period: usize) -> Option<Vec<f64>> {
    if period < 2 || z.len() < 3 * period {
        return None;
    }
    let mut sum = vec![0.0; period];
    let mut count = vec![0usize; period];
    for (t, (a, f)) in z.iter().zip(fitted).enumerate() {
        let e = (a - f).abs();
        if e.is_finite() {
            if let (Some(s), Some(c)) = (sum.get_mut(t % period), count.get_mut(t % period)) {
                *s += e;
                *c += 1;
            }
        }
    }
    let w = (period / 24).max(1);
    let pooled: Vec<f64> = (0..period)
        .map(|k| {
            let (mut s, mut c) = (0.0, 0usize);
            for d in 0..=2 * w {
                let j = (k + period + d - w) % period;
                s += sum.get(j).copied().unwrap_or(0.0);
                c += count.get(j).copied().unwrap_or(0);
            }
            if c == 0 {
                f64::NAN
            } else {
                s / c as f64
            }
        })
        .collect();
    let mut sorted: Vec<f64> = pooled.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied()?;
    if median <= 0.0 {
        return None;
    }
    Some(
        pooled
            .iter()
            .map(|v| {
                if v.is_finite() {
                    (v / median).clamp(SPREAD_RANGE.0, SPREAD_RANGE.1)
                } else {
                    1.0
                }
            })
            .collect(),
    )
}

/// A point forecast with its band: (point, lower, upper).
type Bands = (Vec<f64>, Vec<f64>, Vec<f64>);

impl Model {
    /// The point forecast and the band at `level` of `horizon` steps, in
    /// the model's space, the band's half-widths scaled by the cycle's
    /// spread (and by `scale`).
    fn bands(&self, horizon: usize, level: f64, scale: f64) -> Result<Bands, String> {
        let point = self.m.predict(horizon, None)?.point;
        let f = self.m.predict(horizon, Some(level))?;
        let Some(iv) = f.intervals else {
            return Err("forecast: the model gave no interval".into());
        };
        let factor = |h: usize| {
            self.spread.as_ref().map_or(1.0, |s| {
                s.get((self.n + h) % s.len().max(1)).copied().unwrap_or(1.0)
            })
        };
        let lower = point
            .iter()
            .zip(&iv.lower)
            .enumerate()
            .map(|(h, (p, l))| p + scale * factor(h) * (l - p))
            .collect();
        let upper = point
            .iter()
            .zip(&iv.upper)
            .enumerate()
            .map(|(h, (p, u))| p + scale * factor(h) * (u - p))
            .collect();
        Ok((point, lower, upper))
    }
}

fn ets_name(m: &FittedAutoETS) -> String {
    m.model().model_type().to_string()
}

/// Forecasts `horizon` steps after `y` with bands at `levels` (each in
/// (0, 1)).
pub fn forecast(
    y: &[f64],
    horizon: usize,
    levels: &[f64],
    spec: &Spec,
) -> Result<Prediction, String> {
    if horizon == 0 || horizon > MAX_POINTS {
        return Err(format!(
            "forecast: horizon {horizon}; give 1 to {MAX_POINTS} steps"
        ));
    }
    if let Some(l) = levels.iter().find(|l| !(**l > 0.0 && **l < 1.0)) {
        return Err(format!(
            "forecast: level {l}; give a level between 0 and 1 (0.8) or a percentage (80)"
        ));
    }
    let spec = &spec.resolved(y);
    let model = fit(y, spec)?;
    let t = spec.transform;
    // In the log, a band may reach down to -1 (exp(z) - 1): a history that
    // is never negative (revenue, orders) is not forecast below zero.
    let floor = if t == Transform::Log && y.iter().all(|v| *v >= 0.0) {
        0.0
    } else {
        f64::NEG_INFINITY
    };
    // (Not `max`: a missing value, NaN, stays missing.)
    let out = |v: f64| {
        let b = back(t, v);
        if b < floor {
            floor
        } else {
            b
        }
    };
    let point_z = model.m.predict(horizon, None)?.point;
    let scales = calibration(y, horizon, levels, spec, &model.periods);
    let mut bands = Vec::with_capacity(levels.len());
    for (&level, scale) in levels.iter().zip(&scales) {
        let (_, lower, upper) = model.bands(horizon, level, *scale)?;
        bands.push(Band {
            level,
            lower: lower.into_iter().map(out).collect(),
            upper: upper.into_iter().map(out).collect(),
        });
    }
    let point = point_z.into_iter().map(out).collect();
    let fitted = model.fitted.iter().map(|v| out(*v)).collect();
    Ok(Prediction {
        point,
        bands,
        fitted,
        periods: model.periods,
        model: model.name,
    })
}

/// A series taken apart: `trend + Σ seasonal + remainder` is the series
/// (ln(1 + y) under [`Transform::Log`], and under [`Transform::Auto`] when
/// no value is negative).
#[derive(Clone, Debug, PartialEq)]
pub struct Components {
    /// The slow movement.
    pub trend: Vec<f64>,
    /// One cycle per season: (its length, its values).
    pub seasonal: Vec<(usize, Vec<f64>)>,
    /// What is left.
    pub remainder: Vec<f64>,
}

/// The MSTL decomposition of `y` under `spec` (what [`forecast`] models).
pub fn decompose(y: &[f64], spec: &Spec) -> Result<Components, String> {
    let spec = &spec.resolved(y);
    let Model { m, periods, .. } = fit(y, spec)?;
    let Fitted::Mstl(m) = m else {
        return Err(format!(
            "decompose: {} points hold no two whole cycles of any season ({})",
            y.len(),
            spec.periods
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let r = m.fit();
    let wide = |v: &[f32]| v.iter().map(|x| f64::from(*x)).collect::<Vec<f64>>();
    Ok(Components {
        trend: wide(r.trend()),
        seasonal: periods
            .iter()
            .copied()
            .zip(r.seasonal().iter().map(|s| wide(s)))
            .collect(),
        remainder: wide(r.remainder()),
    })
}

/// Most a calibration may narrow (×0.5) or widen (×4) the model's bands.
const SCALE_RANGE: (f64, f64) = (0.5, 4.0);

/// How much to widen (or narrow) the model's bands so that they hold what
/// they claim to, per level: the model is fitted again without the last
/// `max(horizon, 24)` points (at most a fifth of the history), forecasts
/// them, and the scale is the `level` quantile of each error over its
/// band's half-width (split-conformal calibration). The model's own bands
/// come from the deseasonalised series' one-step errors, and MSTL's
/// seasons absorb part of the noise they are fitted on, so they are too
/// narrow out of sample. 1 (no change) when the history is too short, or
/// when the shorter history would give the model other seasons.
fn calibration(
    y: &[f64],
    horizon: usize,
    levels: &[f64],
    spec: &Spec,
    periods: &[usize],
) -> Vec<f64> {
    let ones = vec![1.0; levels.len()];
    if !spec.calibrate || levels.is_empty() {
        return ones;
    }
    let n = y.len();
    let cal = horizon.max(24).min(n / 5);
    let Some(train) = n.checked_sub(cal).and_then(|k| y.get(..k)) else {
        return ones;
    };
    if cal < 12 || usable_periods(spec, train.len()) != periods {
        return ones;
    }
    let Ok(m) = fit(train, spec) else {
        return ones;
    };
    let actual: Vec<f64> = y
        .iter()
        .skip(train.len())
        .map(|v| forward(spec.transform, *v))
        .collect();
    levels
        .iter()
        .map(|&level| {
            let Ok((point, lower, upper)) = m.bands(cal, level, 1.0) else {
                return 1.0;
            };
            let mut ratios: Vec<f64> = actual
                .iter()
                .zip(&point)
                .zip(lower.iter().zip(&upper))
                .filter_map(|((a, pt), (l, u))| {
                    let half = (u - l) / 2.0;
                    (half > 0.0 && half.is_finite()).then(|| (a - pt).abs() / half)
                })
                .filter(|r| r.is_finite())
                .collect();
            if ratios.len() < 12 {
                return 1.0;
            }
            ratios.sort_by(f64::total_cmp);
            // The smallest ratio with `level` of them at or below it.
            let k = ((level * ratios.len() as f64).ceil() as usize).clamp(1, ratios.len());
            ratios
                .get(k - 1)
                .copied()
                .unwrap_or(1.0)
                .clamp(SCALE_RANGE.0, SCALE_RANGE.1)
        })
        .collect()
}

/// The seasonal-naive forecast of `horizon` steps after `y`: each step
/// repeats the value one `period` earlier (last week's, for hourly data
/// and a period of 168); a period of 1 repeats the last value.
pub fn seasonal_naive(y: &[f64], period: usize, horizon: usize) -> Vec<f64> {
    let n = y.len();
    let m = period.max(1);
    (0..horizon)
        .map(|i| {
            let back_by = m * (i / m + 1);
            n.checked_add(i)
                .and_then(|t| t.checked_sub(back_by))
                .and_then(|t| y.get(t))
                .copied()
                .unwrap_or(f64::NAN)
        })
        .collect()
}

/// Mean absolute error of `forecast` against `actual`.
pub fn mae(actual: &[f64], forecast: &[f64]) -> f64 {
    let (sum, n) = actual
        .iter()
        .zip(forecast)
        .filter(|(a, f)| a.is_finite() && f.is_finite())
        .fold((0.0, 0usize), |(s, n), (a, f)| (s + (a - f).abs(), n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// Mean absolute percentage error, in percent, over the points whose
/// actual value is not zero.
pub fn mape(actual: &[f64], forecast: &[f64]) -> f64 {
    let (sum, n) = actual
        .iter()
        .zip(forecast)
        .filter(|(a, f)| a.is_finite() && f.is_finite() && **a != 0.0)
        .fold((0.0, 0usize), |(s, n), (a, f)| {
            (s + ((a - f) / a).abs(), n + 1)
        });
    if n == 0 {
        f64::NAN
    } else {
        100.0 * sum / n as f64
    }
}

/// The MASE scale of a training series: the mean absolute difference
/// between each value and the one a `period` before (the in-sample error
/// of the seasonal-naive forecast, Hyndman & Koehler 2006).
pub fn mase_scale(train: &[f64], period: usize) -> f64 {
    let m = period.max(1);
    let diffs: Vec<f64> = train
        .iter()
        .zip(train.iter().skip(m))
        .map(|(a, b)| (b - a).abs())
        .collect();
    if diffs.is_empty() {
        f64::NAN
    } else {
        diffs.iter().sum::<f64>() / diffs.len() as f64
    }
}

/// Share of `actual` inside `[lower, upper]`.
pub fn coverage(actual: &[f64], lower: &[f64], upper: &[f64]) -> f64 {
    let mut inside = 0usize;
    let mut n = 0usize;
    for ((a, l), u) in actual.iter().zip(lower).zip(upper) {
        n += 1;
        if l <= a && a <= u {
            inside += 1;
        }
    }
    if n == 0 {
        f64::NAN
    } else {
        inside as f64 / n as f64
    }
}

/// One fold of a backtest: the model fitted on everything before a window
/// of `horizon` points, then scored on the window.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Fold {
    /// Index of the window's first point.
    pub start: usize,
    /// Points in the window.
    pub len: usize,
    /// Mean absolute error of the forecast.
    pub mae: f64,
    /// Its mean absolute percentage error (%).
    pub mape: f64,
    /// Its mean absolute scaled error: MAE over the in-sample MAE of the
    /// seasonal-naive forecast; below 1 beats that baseline.
    pub mase: f64,
    /// MAE of the seasonal-naive forecast of the same window.
    pub naive_mae: f64,
    /// MAPE of the seasonal-naive forecast (%).
    pub naive_mape: f64,
    /// MASE of the seasonal-naive forecast.
    pub naive_mase: f64,
    /// The forecast's MAE over the seasonal-naive one's on the window:
    /// below 1 is better than repeating the last season.
    pub relative_mae: f64,
    /// Share of the window inside each band, by level.
    pub coverage: Vec<(f64, f64)>,
}

/// A backtest: folds in time order, each forecasting the window after
/// everything before it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Backtest {
    /// The folds, oldest window first.
    pub folds: Vec<Fold>,
    /// The season the baseline repeats (the longest the model used).
    pub naive_period: usize,
    /// The model of the last fold.
    pub model: String,
}

impl Backtest {
    /// The mean of one figure over the folds.
    pub fn mean(&self, f: impl Fn(&Fold) -> f64) -> f64 {
        if self.folds.is_empty() {
            return f64::NAN;
        }
        self.folds.iter().map(f).sum::<f64>() / self.folds.len() as f64
    }

    /// The share of all windows' points inside the band at `level`.
    pub fn coverage(&self, level: f64) -> f64 {
        let (inside, n) = self.folds.iter().fold((0.0, 0usize), |(s, n), f| {
            let c = f
                .coverage
                .iter()
                .find(|(l, _)| (l - level).abs() < 1e-9)
                .map_or(f64::NAN, |(_, c)| *c);
            (s + c * f.len as f64, n + f.len)
        });
        if n == 0 {
            f64::NAN
        } else {
            inside / n as f64
        }
    }
}

/// Backtests the model on `y`: `folds` windows of `horizon` points at the
/// end of the series, each forecast from all the points before it and
/// scored against the seasonal-naive forecast of the same window.
pub fn backtest(
    y: &[f64],
    horizon: usize,
    folds: usize,
    levels: &[f64],
    spec: &Spec,
) -> Result<Backtest, String> {
    if folds == 0 || folds > 100 {
        return Err(format!("backtest: folds {folds}; give 1 to 100"));
    }
    let tested = horizon
        .checked_mul(folds)
        .filter(|t| *t < y.len())
        .ok_or_else(|| {
            format!(
                "backtest: {folds} folds of {horizon} points need more than {} points; the series has {}",
                horizon.saturating_mul(folds),
                y.len()
            )
        })?;
    let first = y.len() - tested;
    let mut out = Vec::with_capacity(folds);
    let mut model = String::new();
    let mut naive_period = 1;
    for k in 0..folds {
        let start = first + k * horizon;
        let (train, rest) = y.split_at(start);
        let actual = rest.get(..horizon).unwrap_or(rest);
        let p = forecast(train, actual.len(), levels, spec)?;
        naive_period = p.periods.last().copied().unwrap_or(1);
        let naive = seasonal_naive(train, naive_period, actual.len());
        let scale = mase_scale(train, naive_period);
        let e = mae(actual, &p.point);
        let ne = mae(actual, &naive);
        out.push(Fold {
            start,
            len: actual.len(),
            mae: e,
            mape: mape(actual, &p.point),
            mase: e / scale,
            naive_mae: ne,
            naive_mape: mape(actual, &naive),
            naive_mase: ne / scale,
            relative_mae: e / ne,
            coverage: p
                .bands
                .iter()
                .map(|b| (b.level, coverage(actual, &b.lower, &b.upper)))
                .collect(),
        });
        model = p.model;
    }
    Ok(Backtest {
        folds: out,
        naive_period,
        model,
    })
}

/// Points checked for anomalies against a forecast made before them.
#[derive(Clone, Debug, PartialEq)]
pub struct Scan {
    /// Index of the first point checked.
    pub start: usize,
    /// What the model expected at each point checked.
    pub expected: Vec<f64>,
    /// The band's lower bounds.
    pub lower: Vec<f64>,
    /// The band's upper bounds.
    pub upper: Vec<f64>,
    /// Per point checked: −1 below the band, 1 above, 0 inside.
    pub side: Vec<i8>,
}

/// A lasting change in the level of a series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change {
    /// Index of the first point at the new level.
    pub at: usize,
    /// Mean level of the segment before it.
    pub before: f64,
    /// Mean level of the segment from it on.
    pub after: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v.get(n / 2).copied().unwrap_or(0.0),
        _ => {
            (v.get(n / 2 - 1).copied().unwrap_or(0.0) + v.get(n / 2).copied().unwrap_or(0.0)) / 2.0
        }
    }
}

/// The noise's standard deviation, robustly: from the median absolute
/// deviation of the first differences (so level changes and outliers do
/// not inflate it).
fn noise_sd(y: &[f64]) -> f64 {
    let mut d: Vec<f64> = y
        .windows(2)
        .filter_map(|w| Some(w.get(1)? - w.first()?))
        .collect();
    let m = median(&mut d);
    let mut dev: Vec<f64> = d.iter().map(|x| (x - m).abs()).collect();
    1.4826 * median(&mut dev) / std::f64::consts::SQRT_2
}

/// Where the level of `y` changes: the segmentation minimising the squared
/// deviations from each segment's mean, scaled by the noise's variance,
/// plus `penalty` per change (default 3·ln n, the modified BIC R's
/// `changepoint` package uses for a change in mean), with segments of
/// at least `min_size` points. PELT (Killick, Fearnhead and Eckley 2012):
/// exact, and close to linear time on series with changes.
pub fn changepoints(
    y: &[f64],
    penalty: Option<f64>,
    min_size: usize,
) -> Result<Vec<Change>, String> {
    let n = y.len();
    let min_size = min_size.max(1);
    if n < 2 * min_size {
        return Err(format!(
            "changepoints: {n} points; it needs at least {} (two segments of min_size {min_size})",
            2 * min_size
        ));
    }
    if let Some(i) = y.iter().position(|v| !v.is_finite()) {
        return Err(format!("changepoints: point {i} is not a finite number"));
    }
    let penalty = penalty.unwrap_or(3.0 * (n as f64).ln());
    if !(penalty.is_finite() && penalty >= 0.0) {
        return Err(format!("changepoints: penalty {penalty}; give 0 or more"));
    }
    // A series without noise: every step is a change; scale by a tiny
    // variance instead of dividing by zero.
    let var = noise_sd(y)
        .powi(2)
        .max(1e-12 * (1.0 + y.iter().map(|v| v * v).sum::<f64>() / n as f64));
    let mut s1 = vec![0.0; n + 1];
    let mut s2 = vec![0.0; n + 1];
    for (i, v) in y.iter().enumerate() {
        let (a, b) = (
            s1.get(i).copied().unwrap_or(0.0),
            s2.get(i).copied().unwrap_or(0.0),
        );
        if let (Some(x), Some(z)) = (s1.get_mut(i + 1), s2.get_mut(i + 1)) {
            *x = a + v;
            *z = b + v * v;
        }
    }
    let sum = |p: &[f64], a: usize, b: usize| {
        p.get(b).copied().unwrap_or(0.0) - p.get(a).copied().unwrap_or(0.0)
    };
    let cost = |a: usize, b: usize| {
        let len = (b - a) as f64;
        let m = sum(&s1, a, b);
        ((sum(&s2, a, b) - m * m / len) / var).max(0.0)
    };
    let mut best = vec![f64::INFINITY; n + 1];
    let mut last = vec![0usize; n + 1];
    if let Some(b) = best.first_mut() {
        *b = -penalty;
    }
    let mut candidates = vec![0usize];
    for t in min_size..=n {
        let (mut f, mut arg) = (f64::INFINITY, 0);
        for &c in candidates.iter().filter(|c| t - **c >= min_size) {
            let v = best.get(c).copied().unwrap_or(f64::INFINITY) + cost(c, t) + penalty;
            if v < f {
                (f, arg) = (v, c);
            }
        }
        if let (Some(b), Some(l)) = (best.get_mut(t), last.get_mut(t)) {
            (*b, *l) = (f, arg);
        }
        // Pruning: a start that cannot beat the best now never will.
        candidates.retain(|&c| {
            t - c < min_size || best.get(c).copied().unwrap_or(f64::INFINITY) + cost(c, t) <= f
        });
        if f.is_finite() && t + min_size <= n {
            candidates.push(t);
        }
    }
    let mut cuts = Vec::new();
    let mut t = n;
    while t > 0 {
        let s = last.get(t).copied().unwrap_or(0);
        if s > 0 {
            cuts.push(s);
        }
        t = s;
    }
    cuts.reverse();
    let mean = |a: usize, b: usize| sum(&s1, a, b) / (b - a).max(1) as f64;
    let bounds: Vec<usize> = std::iter::once(0)
        .chain(cuts.iter().copied())
        .chain(std::iter::once(n))
        .collect();
    Ok(bounds
        .windows(3)
        .filter_map(|w| {
            let (a, b, c) = (*w.first()?, *w.get(1)?, *w.get(2)?);
            Some(Change {
                at: b,
                before: mean(a, b),
                after: mean(b, c),
            })
        })
        .collect())
}

/// Checks the points of `y` from `start` on against the band at `level`
/// forecast from the points before `start`.
pub fn anomalies(y: &[f64], start: usize, level: f64, spec: &Spec) -> Result<Scan, String> {
    let (history, checked) = y.split_at(start.min(y.len()));
    if checked.is_empty() {
        return Err("anomalies: no point to check after the history".into());
    }
    let p = forecast(history, checked.len(), &[level], spec)?;
    let Some(band) = p.bands.into_iter().next() else {
        return Err("anomalies: the model gave no interval".into());
    };
    let side = checked
        .iter()
        .zip(band.lower.iter().zip(&band.upper))
        .map(|(v, (l, u))| {
            if v < l {
                -1
            } else if v > u {
                1
            } else {
                0
            }
        })
        .collect();
    Ok(Scan {
        start: history.len(),
        expected: p.point,
        lower: band.lower,
        upper: band.upper,
        side,
    })
}

/// The central interval at `level` of the share of `n` trials that
/// succeed when each does with probability `p`: exact binomial quantiles
/// (the normal approximation past 5,000 trials). Small counts get the wide
/// band they need: 3 failures in 15 orders is no surprise at a 3.5 % rate.
pub fn binomial_band(p: f64, n: u64, level: f64) -> (f64, f64) {
    let p = if p.is_finite() {
        p.clamp(0.0, 1.0)
    } else {
        0.0
    };
    if n == 0 {
        return (0.0, 1.0);
    }
    let nf = n as f64;
    let tail = (1.0 - level.clamp(0.0, 1.0)) / 2.0;
    if p <= 0.0 || p >= 1.0 {
        return (p, p);
    }
    if n > 5_000 {
        let z = normal_quantile(1.0 - tail);
        let sd = (p * (1.0 - p) / nf).sqrt();
        return ((p - z * sd).max(0.0), (p + z * sd).min(1.0));
    }
    // Walk the pmf from its mode outwards in log space (no underflow).
    let ln_pmf = |k: f64| ln_choose(nf, k) + k * p.ln() + (nf - k) * (1.0 - p).ln();
    let mut lo_k = 0u64;
    let mut cum = 0.0;
    for k in 0..=n {
        cum += ln_pmf(k as f64).exp();
        if cum > tail {
            lo_k = k;
            break;
        }
    }
    let mut hi_k = n;
    let mut cum = 0.0;
    for k in (0..=n).rev() {
        cum += ln_pmf(k as f64).exp();
        if cum > tail {
            hi_k = k;
            break;
        }
    }
    (lo_k as f64 / nf, hi_k as f64 / nf)
}

/// ln C(n, k) through the log-gamma function.
fn ln_choose(n: f64, k: f64) -> f64 {
    ln_gamma(n + 1.0) - ln_gamma(k + 1.0) - ln_gamma(n - k + 1.0)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; about 15 digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1 − x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The standard normal quantile (Acklam's rational approximation, refined
/// by one Newton step; about 1e-9).
pub fn normal_quantile(q: f64) -> f64 {
    let q = q.clamp(1e-300, 1.0 - 1e-16);
    let a = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    let b = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    let c = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    let d = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let poly = |cs: &[f64], x: f64| cs.iter().fold(0.0, |acc, c| acc * x + c);
    let x = if q < 0.02425 {
        let r = (-2.0 * q.ln()).sqrt();
        poly(&c, r) / (poly(&d, r) * r + 1.0)
    } else if q <= 1.0 - 0.02425 {
        let r = q - 0.5;
        let s = r * r;
        poly(&a, s) * r / (poly(&b, s) * s + 1.0)
    } else {
        let r = (-2.0 * (1.0 - q).ln()).sqrt();
        -poly(&c, r) / (poly(&d, r) * r + 1.0)
    };
    // One Newton step on Φ(x) = q.
    let e = normal_cdf(x) - q;
    let pdf = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    if pdf > 0.0 {
        x - e / pdf
    } else {
        x
    }
}

/// The standard normal distribution function (erfc by W. J. Cody's
/// rational Chebyshev fit as in Numerical Recipes' `erfcc`, 1.2e-7).
pub fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - r / 2.0
    } else {
        r / 2.0
    }
}

/// What a monitor watches.
#[derive(Clone, Copy, Debug)]
pub enum Signal<'a> {
    /// A value per step (revenue, orders).
    Values(&'a [f64]),
    /// A share: `hits` out of `totals` per step (failed payments out of
    /// orders). The rate expected at a step is the history's, pooled over
    /// the same time of day (the shortest season) and weighted by trials;
    /// the band is the binomial spread of the share at that rate, so
    /// quiet steps with few trials are not alarms.
    Rate {
        /// Successes (the counted outcome) per step.
        hits: &'a [f64],
        /// Trials per step.
        totals: &'a [f64],
    },
}

impl Signal<'_> {
    fn len(&self) -> usize {
        match self {
            Signal::Values(v) => v.len(),
            Signal::Rate { hits, totals } => hits.len().min(totals.len()),
        }
    }
}

/// How a monitor evaluates a series, as an alert rule does while data
/// arrives: every `refit_every` steps the model is fitted on the last
/// `history` steps and forecasts the next `refit_every`; each step is
/// checked against the band at `level` when it is complete, and an alarm
/// is raised when `run` steps in a row are outside (on the same side).
#[derive(Clone, Debug)]
pub struct Monitor {
    /// The model.
    pub spec: Spec,
    /// The band's level (0.999: one ordinary step in a thousand outside).
    pub level: f64,
    /// Steps between refits.
    pub refit_every: usize,
    /// Steps of history each fit uses.
    pub history: usize,
    /// Steps in a row outside the band that raise an alarm.
    pub run: usize,
    /// The side that alarms: 1 above the band, −1 below, 0 either.
    pub side: i8,
}

/// One step a monitor checked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Check {
    /// Its index in the series.
    pub at: usize,
    /// Its value (the share, for a rate).
    pub value: f64,
    /// What the model expected.
    pub expected: f64,
    /// The band.
    pub lower: f64,
    /// The band.
    pub upper: f64,
    /// −1 below the band, 1 above, 0 inside.
    pub side: i8,
    /// Whether an alarm was raised at this step.
    pub alarm: bool,
}

/// The rate expected at step `k`: successes over trials in `window`,
/// pooled over the same time of the cycle of `period` steps (±1/48 of it,
/// at least one step) or over all of `window` without a period; half a
/// success and one trial are added, so a rate never seen fail is not
/// expected to be exactly 0.
fn pooled_rate(
    hits: &[f64],
    totals: &[f64],
    window: std::ops::Range<usize>,
    k: usize,
    period: Option<usize>,
) -> f64 {
    let (mut h, mut n) = (0.5, 1.0);
    for t in window {
        let near = period.is_none_or(|p| {
            let w = (p / 48).max(1);
            let d = (k + p - t % p) % p;
            d <= w || p - d <= w
        });
        if near {
            h += hits.get(t).copied().unwrap_or(0.0);
            n += totals.get(t).copied().unwrap_or(0.0);
        }
    }
    (h / n).clamp(0.0, 1.0)
}

/// Runs `m` over the steps of `signal` from `from` on (the steps before are
/// history only). Every step checked comes back, in order.
pub fn monitor(signal: Signal<'_>, from: usize, m: &Monitor) -> Result<Vec<Check>, String> {
    let n = signal.len();
    if m.refit_every == 0 || m.run == 0 {
        return Err("monitor: refit_every and run must be at least 1".into());
    }
    if from < m.history || m.history < MIN_POINTS {
        return Err(format!(
            "monitor: {} steps of history asked, {from} before the first step checked",
            m.history
        ));
    }
    let share = |h: f64, t: f64| if t > 0.0 { h / t } else { 0.0 };
    let mut out = Vec::with_capacity(n.saturating_sub(from));
    let (mut streak, mut streak_side) = (0usize, 0i8);
    let mut at = from;
    while at < n {
        let end = (at + m.refit_every).min(n);
        let past = at - m.history..at;
        let steps = end - at;
        let (expected, lower, upper, values): (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) =
            match signal {
                Signal::Values(y) => {
                    let hist = y.get(past).unwrap_or_default();
                    let p = forecast(hist, steps, &[m.level], &m.spec)?;
                    let band = p.bands.into_iter().next().ok_or("monitor: no band")?;
                    let vals = y.get(at..end).unwrap_or_default().to_vec();
                    (p.point, band.lower, band.upper, vals)
                }
                Signal::Rate { hits, totals } => {
                    let period = m.spec.periods.iter().copied().filter(|p| *p >= 2).min();
                    let mut lo = Vec::with_capacity(steps);
                    let mut hi = Vec::with_capacity(steps);
                    let mut vals = Vec::with_capacity(steps);
                    let mut exp = Vec::with_capacity(steps);
                    for k in at..end {
                        let e = pooled_rate(hits, totals, past.clone(), k, period);
                        let t = totals.get(k).copied().unwrap_or(0.0);
                        let h = hits.get(k).copied().unwrap_or(0.0);
                        let (l, u) = binomial_band(e, t.max(0.0).round() as u64, m.level);
                        lo.push(l);
                        hi.push(u);
                        vals.push(share(h, t));
                        exp.push(e);
                    }
                    (exp, lo, hi, vals)
                }
            };
        for (k, (((v, e), l), u)) in values
            .iter()
            .zip(&expected)
            .zip(&lower)
            .zip(&upper)
            .enumerate()
        {
            let side = if v < l {
                -1
            } else if v > u {
                1
            } else {
                0
            };
            let counts = side != 0 && (m.side == 0 || m.side == side);
            if counts && side == streak_side {
                streak += 1;
            } else {
                streak = usize::from(counts);
                streak_side = if counts { side } else { 0 };
            }
            out.push(Check {
                at: at + k,
                value: *v,
                expected: *e,
                lower: *l,
                upper: *u,
                side,
                alarm: counts && streak == m.run,
            });
        }
        at = end;
    }
    Ok(out)
}

/// Seeded, roughly normal noise for tests (a sum of twelve uniforms):
/// mean 0, sd 1.
#[cfg(test)]
pub(crate) fn noise(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            (0..12)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (s >> 11) as f64 / (1u64 << 53) as f64
                })
                .sum::<f64>()
                - 6.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_changes_are_found_where_they_are_and_noise_has_none() {
        // Levels 10, 14, 9 (changes of 4 and 5 noise sds) at 120 and 250.
        let y: Vec<f64> = noise(400, 3)
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e + if i < 120 {
                    10.0
                } else if i < 250 {
                    14.0
                } else {
                    9.0
                }
            })
            .collect();
        let c = changepoints(&y, None, 5).unwrap();
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(
            c[0].at.abs_diff(120) <= 2 && c[1].at.abs_diff(250) <= 2,
            "{c:?}"
        );
        assert!((c[0].before - 10.0).abs() < 0.5 && (c[0].after - 14.0).abs() < 0.5);
        assert!((c[1].after - 9.0).abs() < 0.5);
        // The same against an exhaustive search over one and two cuts.
        let cost = |a: usize, b: usize| {
            let m = y[a..b].iter().sum::<f64>() / (b - a) as f64;
            y[a..b].iter().map(|v| (v - m).powi(2)).sum::<f64>()
        };
        let mut best = (f64::INFINITY, 0, 0);
        for i in 5..=395 {
            for j in i + 5..=395 {
                let v = cost(0, i) + cost(i, j) + cost(j, 400);
                if v < best.0 {
                    best = (v, i, j);
                }
            }
        }
        assert_eq!((c[0].at, c[1].at), (best.1, best.2));
        // Pure noise on ten seeds: no change.
        for seed in 0..10 {
            let c = changepoints(&noise(500, seed), None, 5).unwrap();
            assert!(c.is_empty(), "seed {seed}: {c:?}");
        }
        // Bad input is named.
        assert!(changepoints(&[1.0, 2.0], None, 2)
            .unwrap_err()
            .contains("at least 4"));
        assert!(changepoints(&[1.0, f64::NAN, 1.0, 1.0], None, 1)
            .unwrap_err()
            .contains("point 1"));
        assert!(changepoints(&y, Some(-1.0), 5)
            .unwrap_err()
            .contains("penalty"));
        // A constant series, then a step: one change, no division by zero.
        let step: Vec<f64> = (0..20).map(|i| if i < 10 { 1.0 } else { 2.0 }).collect();
        let c = changepoints(&step, None, 2).unwrap();
        assert_eq!(c.iter().map(|c| c.at).collect::<Vec<_>>(), vec![10]);
    }

    /// Hourly: a daily and a weekly cycle, a slow trend and seeded noise.
    fn hourly(n: usize, seed: u64) -> Vec<f64> {
        let e = noise(n, seed);
        (0..n)
            .map(|t| {
                let h = (t % 24) as f64;
                let d = ((t / 24) % 7) as f64;
                100.0
                    + 0.02 * t as f64
                    + 30.0 * (std::f64::consts::TAU * h / 24.0).sin()
                    + 8.0 * (std::f64::consts::TAU * d / 7.0).cos()
                    + 3.0 * e.get(t).copied().unwrap_or(0.0)
            })
            .collect()
    }

    fn hourly_spec() -> Spec {
        Spec {
            periods: periods_for_step(3600),
            transform: Transform::None,
            calibrate: true,
        }
    }

    #[test]
    fn a_never_negative_series_is_not_forecast_below_zero() {
        // Mostly empty hours with a rare sale: in the log, the band reaches
        // below zero, which money and counts never do.
        let y: Vec<f64> = (0..200)
            .map(|t| if t % 7 == 0 { 3.0 } else { 0.0 })
            .collect();
        let spec = Spec {
            periods: Vec::new(),
            transform: Transform::Auto,
            calibrate: true,
        };
        let p = forecast(&y, 12, &[0.95], &spec).unwrap();
        let band = &p.bands[0];
        assert!(band.lower.iter().all(|l| *l >= 0.0), "{:?}", band.lower);
        assert!(
            band.lower.contains(&0.0),
            "the floor is met: {:?}",
            band.lower
        );
        assert!(p.point.iter().all(|v| *v >= 0.0));
        assert!(p.fitted.iter().filter(|v| !v.is_nan()).all(|v| *v >= 0.0));
        // A series that goes negative keeps its band as fitted.
        let z: Vec<f64> = y.iter().map(|v| v - 1.0).collect();
        let q = forecast(&z, 12, &[0.95], &spec).unwrap();
        assert!(q.bands[0].lower.iter().any(|l| *l < 0.0));
    }

    #[test]
    fn seasons_follow_the_step() {
        assert_eq!(periods_for_step(3600), vec![24, 168]);
        assert_eq!(periods_for_step(86_400), vec![7]);
        assert_eq!(periods_for_step(300), vec![288, 2016]);
        assert!(periods_for_step(7 * 86_400).is_empty());
        assert!(periods_for_step(0).is_empty());
        // Too little history for a week: only the day is used.
        assert_eq!(usable_periods(&hourly_spec(), 24 * 10), vec![24]);
    }

    #[test]
    fn seasonal_naive_repeats_the_last_season() {
        let y = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(seasonal_naive(&y, 3, 5), vec![4.0, 5.0, 6.0, 4.0, 5.0]);
        assert_eq!(seasonal_naive(&y, 1, 2), vec![6.0, 6.0]);
        assert!((mase_scale(&y, 3) - 3.0).abs() < 1e-12);
        assert!((mape(&[2.0, 0.0], &[1.0, 5.0]) - 50.0).abs() < 1e-12);
        assert!((coverage(&[1.0, 5.0], &[0.0, 0.0], &[2.0, 2.0]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn a_seasonal_series_is_forecast_better_than_last_week() {
        let y = hourly(24 * 42, 7);
        let bt = backtest(&y, 168, 2, &DEFAULT_LEVELS, &hourly_spec()).unwrap();
        assert_eq!(bt.naive_period, 168);
        assert_eq!(bt.folds.len(), 2);
        let rel = bt.mean(|f| f.relative_mae);
        let mase = bt.mean(|f| f.mase);
        assert!(rel < 0.9, "relative MAE {rel}");
        assert!(mase < 1.0, "MASE {mase}");
        let c95 = bt.coverage(0.95);
        assert!((0.85..=1.0).contains(&c95), "95 % coverage {c95}");
        assert!(bt.coverage(0.80) <= c95);
    }

    #[test]
    fn bands_nest_and_contain_the_point() {
        let y = hourly(24 * 21, 3);
        let p = forecast(&y, 48, &[0.8, 0.95], &hourly_spec()).unwrap();
        assert_eq!(p.point.len(), 48);
        assert_eq!(p.fitted.len(), y.len());
        assert_eq!(p.periods, vec![24, 168]);
        let [b80, b95] = [&p.bands[0], &p.bands[1]];
        for i in 0..48 {
            assert!(b95.lower[i] <= b80.lower[i] && b80.lower[i] <= p.point[i]);
            assert!(p.point[i] <= b80.upper[i] && b80.upper[i] <= b95.upper[i]);
        }
        // The log transform gives positive bounds for positive data.
        let spec = Spec {
            transform: Transform::Log,
            calibrate: true,
            ..hourly_spec()
        };
        let p = forecast(&y, 24, &[0.95], &spec).unwrap();
        assert!(p.bands[0].lower.iter().all(|v| *v > 0.0));
    }

    #[test]
    fn a_jump_is_flagged_and_ordinary_points_are_not() {
        let mut y = hourly(24 * 21, 11);
        let start = y.len() - 24;
        let quiet = anomalies(&y, start, 0.99, &hourly_spec()).unwrap();
        assert!(quiet.side.iter().filter(|s| **s != 0).count() <= 1);
        for v in y.iter_mut().skip(start + 10).take(3) {
            *v += 60.0;
        }
        let loud = anomalies(&y, start, 0.99, &hourly_spec()).unwrap();
        assert_eq!(&loud.side[10..13], &[1, 1, 1]);
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let spec = hourly_spec();
        let e = forecast(&[1.0, 2.0], 3, &[0.9], &spec).unwrap_err();
        assert!(e.contains("at least"), "{e}");
        let mut y = hourly(100, 1);
        y[5] = f64::NAN;
        let e = forecast(&y, 3, &[0.9], &spec).unwrap_err();
        assert!(e.contains("value 5"), "{e}");
        let y = hourly(100, 1);
        assert!(forecast(&y, 0, &[0.9], &spec).is_err());
        assert!(forecast(&y, 3, &[1.5], &spec).is_err());
        assert!(backtest(&y, 60, 2, &[0.9], &spec).is_err());
        let e = forecast(
            &[-2.0; 20],
            3,
            &[0.9],
            &Spec {
                transform: Transform::Log,
                calibrate: true,
                ..spec
            },
        )
        .unwrap_err();
        assert!(e.contains("above -1"), "{e}");
        // A constant series forecasts itself.
        let p = forecast(&[5.0; 50], 4, &[0.9], &hourly_spec()).unwrap();
        assert!(
            p.point.iter().all(|v| (v - 5.0).abs() < 1e-4),
            "{:?}",
            p.point
        );
    }

    #[test]
    fn binomial_bands_match_exact_quantiles() {
        // Binomial(15, 0.035): P(X = 0) = 0.586, P(X <= 1) = 0.905,
        // P(X <= 2) = 0.985, P(X <= 3) = 0.998: the 99 % band is 0..3.
        let (lo, hi) = binomial_band(0.035, 15, 0.99);
        assert_eq!((lo, hi), (0.0, 3.0 / 15.0));
        // Large n: close to the normal interval.
        let (lo, hi) = binomial_band(0.5, 10_000, 0.95);
        assert!((hi - 0.5 - 1.959_964 * 0.005).abs() < 1e-4, "{hi}");
        assert!((0.5 - lo - 1.959_964 * 0.005).abs() < 1e-4, "{lo}");
        assert_eq!(binomial_band(0.1, 0, 0.99), (0.0, 1.0));
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-5);
        assert!((normal_quantile(0.0005) + 3.290_527).abs() < 1e-5);
        assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-10);
    }

    #[test]
    fn a_monitor_alarms_on_a_run_outside_and_not_before() {
        // Failures out of orders: 3.5 % for 30 days of hours, then 25 %.
        let hours = 24 * 30;
        let totals: Vec<f64> = (0..hours + 6)
            .map(|t| 40.0 + 30.0 * ((t % 24) as f64 / 24.0 * std::f64::consts::TAU).sin())
            .collect();
        let hits: Vec<f64> = totals
            .iter()
            .enumerate()
            .map(|(t, n)| (n * if t < hours { 0.035 } else { 0.25 }).round())
            .collect();
        let m = Monitor {
            spec: Spec {
                periods: vec![24],
                transform: Transform::None,
                calibrate: true,
            },
            level: 0.999,
            refit_every: 6,
            history: 24 * 14,
            run: 2,
            side: 0,
        };
        let checks = monitor(
            Signal::Rate {
                hits: &hits,
                totals: &totals,
            },
            24 * 14,
            &m,
        )
        .unwrap();
        let alarms: Vec<usize> = checks.iter().filter(|c| c.alarm).map(|c| c.at).collect();
        assert_eq!(alarms, vec![hours + 1]);
    }

    #[test]
    fn the_components_add_up_to_the_series() {
        let y = hourly(24 * 21, 5);
        let c = decompose(&y, &hourly_spec()).unwrap();
        assert_eq!(
            c.seasonal.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![24, 168]
        );
        for (i, v) in y.iter().enumerate() {
            let sum = c.trend[i] + c.seasonal.iter().map(|s| s.1[i]).sum::<f64>() + c.remainder[i];
            // MSTL works in f32.
            assert!(
                (sum - v).abs() < 1e-3 * v.abs().max(1.0),
                "{i}: {sum} vs {v}"
            );
        }
        // The daily cycle is the one with the 30-unit swing.
        let swing = |s: &[f64]| {
            s.iter().cloned().fold(f64::MIN, f64::max) - s.iter().cloned().fold(f64::MAX, f64::min)
        };
        assert!(
            swing(&c.seasonal[0].1) > 45.0,
            "{}",
            swing(&c.seasonal[0].1)
        );
        assert!(decompose(&y[..30], &hourly_spec())
            .unwrap_err()
            .contains("no two whole cycles"));
    }
}
