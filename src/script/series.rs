//! Frames in and out of the time-series and clustering functions: a
//! frame's time column and value column made into one value per step
//! ([`Series`]), and the frames `forecast`, `backtest`, `anomalies` and
//! `kmeans` give back ([`super::forecast`], [`super::kmeans`]).

use polars::prelude::*;

use super::forecast::{self, Spec, Transform};
use super::kmeans;

fn err(e: PolarsError) -> String {
    // Polars appends hints and plan dumps after the first paragraph.
    let text = e.to_string();
    text.split("\n\n").next().unwrap_or(&text).trim().to_owned()
}

/// What fills a step that has no row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fill {
    /// This value (0, the default: a sum or count over no rows).
    Value(f64),
    /// The value of the step before (rates, levels).
    Previous,
}

/// How a frame is read as a series, and what to fit.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesOpts {
    /// The time column (default: the first date or datetime column).
    pub time: Option<String>,
    /// The value column (default: the first numeric column after it).
    pub value: Option<String>,
    /// Seconds per step (default: the smallest gap between two times).
    pub every_secs: Option<i64>,
    /// What fills missing steps.
    pub fill: Fill,
    /// Seasons in steps (default: from the step, see
    /// [`forecast::periods_for_step`]).
    pub periods: Option<Vec<usize>>,
    /// The transform (default: auto, the log when no value is negative).
    pub transform: Transform,
}

impl Default for SeriesOpts {
    fn default() -> Self {
        SeriesOpts {
            time: None,
            value: None,
            every_secs: None,
            fill: Fill::Value(0.0),
            periods: None,
            transform: Transform::Auto,
        }
    }
}

/// One value per step, in time order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Name of the time column.
    pub time_name: String,
    /// Name of the value column.
    pub value_name: String,
    /// Start of each step, microseconds since the epoch (UTC).
    pub times: Vec<i64>,
    /// The values.
    pub values: Vec<f64>,
    /// Microseconds per step.
    pub step_us: i64,
    /// Steps that had no row and were filled.
    pub filled: usize,
}

impl Series {
    /// The model to fit to this series under `opts`.
    pub fn spec(&self, opts: &SeriesOpts) -> Spec {
        Spec {
            periods: opts
                .periods
                .clone()
                .unwrap_or_else(|| forecast::periods_for_step(self.step_us / 1_000_000)),
            transform: opts.transform,
            calibrate: true,
        }
    }

    /// The time `k` steps after the first.
    fn time_at(&self, k: usize) -> i64 {
        let first = self.times.first().copied().unwrap_or(0);
        i64::try_from(k)
            .ok()
            .and_then(|k| k.checked_mul(self.step_us))
            .and_then(|d| first.checked_add(d))
            .unwrap_or(i64::MAX)
    }
}

fn is_time(dt: &DataType) -> bool {
    matches!(dt, DataType::Datetime(_, _) | DataType::Date)
}

/// Reads `df` as a series: its rows sorted by time, one per step, the
/// missing steps filled.
pub fn series(df: &DataFrame, opts: &SeriesOpts) -> Result<Series, String> {
    let time_name = match &opts.time {
        Some(t) => t.clone(),
        None => df
            .columns()
            .iter()
            .find(|c| is_time(c.dtype()))
            .map(|c| c.name().to_string())
            .ok_or("the frame has no date or time column (give `time`)")?,
    };
    let value_name = match &opts.value {
        Some(v) => v.clone(),
        None => df
            .columns()
            .iter()
            .find(|c| c.name().as_str() != time_name && c.dtype().is_primitive_numeric())
            .map(|c| c.name().to_string())
            .ok_or("the frame has no numeric column to forecast (give `value`)")?,
    };
    let tcol = df
        .column(&time_name)
        .map_err(|_| format!("no column `{time_name}`"))?;
    if !is_time(tcol.dtype()) {
        return Err(format!(
            "`{time_name}` is {}, not a date or time",
            tcol.dtype()
        ));
    }
    let vcol = df
        .column(&value_name)
        .map_err(|_| format!("no column `{value_name}`"))?;
    if !vcol.dtype().is_primitive_numeric() {
        return Err(format!("`{value_name}` is {}, not a number", vcol.dtype()));
    }
    let times: Vec<Option<i64>> = tcol
        .cast(&DataType::Datetime(TimeUnit::Microseconds, None))
        .and_then(|c| c.cast(&DataType::Int64))
        .and_then(|c| c.i64().map(|a| a.iter().collect()))
        .map_err(err)?;
    let values: Vec<Option<f64>> = vcol
        .cast(&DataType::Float64)
        .and_then(|c| c.f64().map(|a| a.iter().collect()))
        .map_err(err)?;
    let mut pairs: Vec<(i64, f64)> = Vec::with_capacity(times.len());
    for (i, (t, v)) in times.into_iter().zip(values).enumerate() {
        let t = t.ok_or_else(|| format!("row {i} has no `{time_name}`"))?;
        // A null value is a step without a figure: filled like a missing one.
        if let Some(v) = v {
            pairs.push((t, v));
        }
    }
    pairs.sort_by_key(|p| p.0);
    if let Some(w) = pairs
        .windows(2)
        .find(|w| w.first().map(|a| a.0) == w.get(1).map(|b| b.0))
    {
        let t = w.first().map_or(0, |a| a.0);
        return Err(format!(
            "two rows at {}: give one row per time (group_by the time first)",
            show_time(t)
        ));
    }
    let step_us = match opts.every_secs {
        Some(s) if s > 0 => s.saturating_mul(1_000_000),
        Some(s) => return Err(format!("every: {s} s; give a positive step")),
        None => pairs
            .windows(2)
            .filter_map(|w| Some(w.get(1)?.0 - w.first()?.0))
            .min()
            .ok_or("a series needs at least two times")?,
    };
    let first = pairs.first().map_or(0, |p| p.0);
    let last = pairs.last().map_or(0, |p| p.0);
    let steps = usize::try_from((last - first) / step_us)
        .ok()
        .and_then(|s| s.checked_add(1))
        .filter(|s| *s <= forecast::MAX_POINTS)
        .ok_or_else(|| {
            format!(
                "more than {} steps from the first time to the last: aggregate to a coarser step",
                forecast::MAX_POINTS
            )
        })?;
    let mut vals: Vec<Option<f64>> = vec![None; steps];
    for (t, v) in &pairs {
        let off = t - first;
        if off % step_us != 0 {
            return Err(format!(
                "{} is not a whole number of steps ({} s) after {}: truncate the times first",
                show_time(*t),
                step_us / 1_000_000,
                show_time(first)
            ));
        }
        let k = usize::try_from(off / step_us).unwrap_or(usize::MAX);
        if let Some(slot) = vals.get_mut(k) {
            *slot = Some(*v);
        }
    }
    let filled = vals.iter().filter(|v| v.is_none()).count();
    let mut prev = 0.0;
    let values = vals
        .into_iter()
        .map(|v| {
            let out = match (v, opts.fill) {
                (Some(v), _) => v,
                (None, Fill::Value(x)) => x,
                (None, Fill::Previous) => prev,
            };
            prev = out;
            out
        })
        .collect::<Vec<f64>>();
    let times = (0..steps)
        .map(|k| {
            i64::try_from(k)
                .ok()
                .and_then(|k| k.checked_mul(step_us))
                .map_or(i64::MAX, |d| first.saturating_add(d))
        })
        .collect();
    Ok(Series {
        time_name,
        value_name,
        times,
        values,
        step_us,
        filled,
    })
}

fn show_time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(|| us.to_string(), |t| t.to_rfc3339())
}

/// Column suffix of a level: 0.8 → "80", 0.975 → "97.5".
pub fn level_name(level: f64) -> String {
    let pct = (level * 1000.0).round() / 10.0;
    if pct.fract() == 0.0 {
        format!("{pct:.0}")
    } else {
        format!("{pct}")
    }
}

fn time_column(name: &str, times: Vec<i64>) -> Result<Column, String> {
    Column::new(name.into(), times)
        .cast(&DataType::Datetime(
            TimeUnit::Microseconds,
            Some(TimeZone::UTC),
        ))
        .map_err(err)
}

/// The frame of a forecast: the history (its value, the model's fit) and
/// then `horizon` steps ahead (the forecast and its bands; the value null).
/// Columns: the time, the value, `forecast`, and `lower_NN`/`upper_NN`
/// per level (null over the history).
pub fn forecast_frame(
    s: &Series,
    horizon: usize,
    levels: &[f64],
    spec: &Spec,
) -> Result<DataFrame, String> {
    let p = forecast::forecast(&s.values, horizon, levels, spec)?;
    let n = s.values.len();
    let total = n + horizon;
    let times: Vec<i64> = (0..total).map(|k| s.time_at(k)).collect();
    let actual: Vec<Option<f64>> = s
        .values
        .iter()
        .map(|v| Some(*v))
        .chain(std::iter::repeat_n(None, horizon))
        .collect();
    let point: Vec<Option<f64>> = p
        .fitted
        .iter()
        .map(|v| v.is_finite().then_some(*v))
        .chain(p.point.iter().map(|v| Some(*v)))
        .collect();
    let mut cols = vec![
        time_column(&s.time_name, times)?,
        Column::new(s.value_name.as_str().into(), actual),
        Column::new("forecast".into(), point),
    ];
    for b in &p.bands {
        let ahead = |v: &[f64]| -> Vec<Option<f64>> {
            std::iter::repeat_n(None, n)
                .chain(v.iter().map(|x| Some(*x)))
                .collect()
        };
        let l = level_name(b.level);
        cols.push(Column::new(format!("lower_{l}").into(), ahead(&b.lower)));
        cols.push(Column::new(format!("upper_{l}").into(), ahead(&b.upper)));
    }
    DataFrame::new(total, cols).map_err(err)
}

/// The frame of a decomposition: the time, the value, `trend`,
/// `seasonal_N` per season of N steps, and `remainder`.
pub fn decompose_frame(s: &Series, spec: &Spec) -> Result<DataFrame, String> {
    let c = forecast::decompose(&s.values, spec)?;
    let n = s.values.len();
    let mut cols = vec![
        time_column(&s.time_name, (0..n).map(|k| s.time_at(k)).collect())?,
        Column::new(s.value_name.as_str().into(), s.values.clone()),
        Column::new("trend".into(), c.trend),
    ];
    for (p, v) in c.seasonal {
        cols.push(Column::new(format!("seasonal_{p}").into(), v));
    }
    cols.push(Column::new("remainder".into(), c.remainder));
    DataFrame::new(n, cols).map_err(err)
}

/// The frame of a backtest: one row per fold (`fold`, the window's first
/// time `start`, `points`, `mae`, `mape`, `mase`, `naive_mae`,
/// `naive_mape`, `naive_mase`, `relative_mae`, `coverage_NN` per level).
pub fn backtest_frame(
    s: &Series,
    horizon: usize,
    folds: usize,
    levels: &[f64],
    spec: &Spec,
) -> Result<DataFrame, String> {
    let bt = forecast::backtest(&s.values, horizon, folds, levels, spec)?;
    let f = &bt.folds;
    let num = |name: &str, get: &dyn Fn(&forecast::Fold) -> f64| {
        Column::new(name.into(), f.iter().map(get).collect::<Vec<f64>>())
    };
    let mut cols = vec![
        Column::new(
            "fold".into(),
            (1..=f.len()).map(|k| k as i64).collect::<Vec<i64>>(),
        ),
        time_column("start", f.iter().map(|x| s.time_at(x.start)).collect())?,
        Column::new(
            "points".into(),
            f.iter().map(|x| x.len as i64).collect::<Vec<i64>>(),
        ),
        num("mae", &|x| x.mae),
        num("mape", &|x| x.mape),
        num("mase", &|x| x.mase),
        num("naive_mae", &|x| x.naive_mae),
        num("naive_mape", &|x| x.naive_mape),
        num("naive_mase", &|x| x.naive_mase),
        num("relative_mae", &|x| x.relative_mae),
    ];
    for &level in levels {
        let get = move |x: &forecast::Fold| {
            x.coverage
                .iter()
                .find(|(l, _)| (*l - level).abs() < 1e-12)
                .map_or(f64::NAN, |(_, c)| *c)
        };
        cols.push(num(&format!("coverage_{}", level_name(level)), &get));
    }
    DataFrame::new(f.len(), cols).map_err(err)
}

/// The frame of an anomaly scan: the last `last` points, each with what
/// the model expected from the points before them, the band at `level`,
/// `anomaly` (outside it) and `side` (`"above"`, `"below"` or `""`).
pub fn anomalies_frame(
    s: &Series,
    last: usize,
    level: f64,
    spec: &Spec,
) -> Result<DataFrame, String> {
    let n = s.values.len();
    if last == 0 || last >= n {
        return Err(format!(
            "anomalies: check the last 1 to {} points (the rest is the history); {last} asked",
            n.saturating_sub(1)
        ));
    }
    let start = n - last;
    let scan = forecast::anomalies(&s.values, start, level, spec)?;
    let times: Vec<i64> = (start..n).map(|k| s.time_at(k)).collect();
    let values: Vec<f64> = s.values.iter().skip(start).copied().collect();
    DataFrame::new(
        last,
        vec![
            time_column(&s.time_name, times)?,
            Column::new(s.value_name.as_str().into(), values),
            Column::new("expected".into(), scan.expected),
            Column::new("lower".into(), scan.lower),
            Column::new("upper".into(), scan.upper),
            Column::new(
                "anomaly".into(),
                scan.side.iter().map(|x| *x != 0).collect::<Vec<bool>>(),
            ),
            Column::new(
                "side".into(),
                scan.side
                    .iter()
                    .map(|x| side_name(*x))
                    .collect::<Vec<&str>>(),
            ),
        ],
    )
    .map_err(err)
}

/// The frame of the lasting changes in the level of `s`
/// ([`forecast::changepoints`]): one row per change with its time (the
/// first step at the new level), the mean level `before` and `after` it,
/// `change` and `change_pct`. With `deseason` and three cycles of a season
/// in the data, the seasons (a fixed shape per season, shortest first; in
/// the log for non-negative values under the default transform) are taken
/// out first, so a quiet night is not a change and a shift is measured on
/// the level.
pub fn changepoints_frame(
    s: &Series,
    spec: &Spec,
    penalty: Option<f64>,
    min_size: usize,
    deseason: bool,
) -> Result<DataFrame, String> {
    let spec = spec.resolved(&s.values);
    let log = spec.transform == Transform::Log;
    let periods = forecast::usable_periods(&spec, s.values.len());
    let level: Vec<f64> = if deseason && !periods.is_empty() {
        // Seasons that scale with the level (revenue) come out in the log.
        let mut r: Vec<f64> = if log {
            s.values.iter().map(|v| (1.0 + v).ln()).collect()
        } else {
            s.values.clone()
        };
        for p in periods {
            remove_season(&mut r, p);
        }
        if log {
            r.iter().map(|v| v.exp() - 1.0).collect()
        } else {
            r
        }
    } else {
        s.values.clone()
    };
    let changes = forecast::changepoints(&level, penalty, min_size)?;
    let pct = |c: &forecast::Change| {
        if c.before.abs() > f64::EPSILON {
            Some(100.0 * (c.after - c.before) / c.before.abs())
        } else {
            None
        }
    };
    DataFrame::new(
        changes.len(),
        vec![
            time_column(
                &s.time_name,
                changes.iter().map(|c| s.time_at(c.at)).collect(),
            )?,
            Column::new(
                "before".into(),
                changes.iter().map(|c| c.before).collect::<Vec<f64>>(),
            ),
            Column::new(
                "after".into(),
                changes.iter().map(|c| c.after).collect::<Vec<f64>>(),
            ),
            Column::new(
                "change".into(),
                changes
                    .iter()
                    .map(|c| c.after - c.before)
                    .collect::<Vec<f64>>(),
            ),
            Column::new(
                "change_pct".into(),
                changes.iter().map(pct).collect::<Vec<Option<f64>>>(),
            ),
        ],
    )
    .map_err(err)
}

/// Takes a season of `period` steps out of `r`: the seasonal shape is, per
/// phase, the median over whole cycles of the value less its cycle's mean.
/// A fixed shape centred cycle by cycle does not follow a change in level
/// (a fitted, evolving season would absorb part of it).
fn remove_season(r: &mut [f64], period: usize) {
    // Three cycles at least: the median then outvotes the one a change
    // falls in.
    let cycles = r.len() / period.max(1);
    if period < 2 || cycles < 3 {
        return;
    }
    let mut centred: Vec<Vec<f64>> = vec![Vec::with_capacity(cycles); period];
    for cycle in r.chunks_exact(period) {
        let mean = cycle.iter().sum::<f64>() / period as f64;
        for (slot, v) in centred.iter_mut().zip(cycle) {
            slot.push(v - mean);
        }
    }
    let shape: Vec<f64> = centred
        .iter_mut()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            if n % 2 == 1 {
                v.get(n / 2).copied().unwrap_or(0.0)
            } else {
                (v.get(n / 2 - 1).copied().unwrap_or(0.0) + v.get(n / 2).copied().unwrap_or(0.0))
                    / 2.0
            }
        })
        .collect();
    // The medians need not average to 0: the level keeps its mean.
    let offset = shape.iter().sum::<f64>() / period as f64;
    for (k, v) in r.iter_mut().enumerate() {
        *v -= shape.get(k % period).copied().unwrap_or(0.0) - offset;
    }
}

/// The frame of an anomaly scan of a share: `hits` out of `totals` per step
/// (failed payments out of sales). Each of the last `last` steps is checked
/// against the rate the history had at the same time of day (pooled,
/// weighted by trials) and its binomial band at `level`, so a quiet step
/// with few trials is not an anomaly. Columns: the time, both counts,
/// `rate`, `expected`, `lower`, `upper`, `anomaly` and `side`.
pub fn rate_anomalies_frame(
    hits: &Series,
    totals: &Series,
    last: usize,
    level: f64,
    spec: &Spec,
) -> Result<DataFrame, String> {
    let n = hits.values.len();
    if hits.times.first() != totals.times.first()
        || n != totals.values.len()
        || hits.step_us != totals.step_us
    {
        return Err(format!(
            "anomalies: `{}` and `{}` cover different steps: give both on every row",
            hits.value_name, totals.value_name
        ));
    }
    if last == 0 || last >= n {
        return Err(format!(
            "anomalies: check the last 1 to {} points (the rest is the history); {last} asked",
            n.saturating_sub(1)
        ));
    }
    if let Some(k) = (0..n).find(|k| {
        let (h, t) = (
            hits.values.get(*k).copied().unwrap_or(0.0),
            totals.values.get(*k).copied().unwrap_or(0.0),
        );
        !(h >= 0.0 && h <= t)
    }) {
        return Err(format!(
            "anomalies: at {}: `{}` must be between 0 and `{}` (a count out of a count)",
            show_time(hits.time_at(k)),
            hits.value_name,
            totals.value_name
        ));
    }
    let start = n - last;
    if start < forecast::MIN_POINTS {
        return Err(format!(
            "anomalies: {start} steps of history; a rate needs at least {}",
            forecast::MIN_POINTS
        ));
    }
    let m = forecast::Monitor {
        spec: spec.clone(),
        level,
        refit_every: last,
        history: start,
        run: 1,
        side: 0,
    };
    let checks = forecast::monitor(
        forecast::Signal::Rate {
            hits: &hits.values,
            totals: &totals.values,
        },
        start,
        &m,
    )?;
    let times: Vec<i64> = (start..n).map(|k| hits.time_at(k)).collect();
    let tail = |v: &[f64]| v.iter().skip(start).copied().collect::<Vec<f64>>();
    let pick = |f: fn(&forecast::Check) -> f64| checks.iter().map(f).collect::<Vec<f64>>();
    DataFrame::new(
        last,
        vec![
            time_column(&hits.time_name, times)?,
            Column::new(hits.value_name.as_str().into(), tail(&hits.values)),
            Column::new(totals.value_name.as_str().into(), tail(&totals.values)),
            Column::new("rate".into(), pick(|c| c.value)),
            Column::new("expected".into(), pick(|c| c.expected)),
            Column::new("lower".into(), pick(|c| c.lower)),
            Column::new("upper".into(), pick(|c| c.upper)),
            Column::new(
                "anomaly".into(),
                checks.iter().map(|c| c.side != 0).collect::<Vec<bool>>(),
            ),
            Column::new(
                "side".into(),
                checks
                    .iter()
                    .map(|c| side_name(c.side))
                    .collect::<Vec<&str>>(),
            ),
        ],
    )
    .map_err(err)
}

fn side_name(side: i8) -> &'static str {
    match side {
        1 => "above",
        -1 => "below",
        _ => "",
    }
}

/// `df` with `cluster` (0 = the largest) and `distance` (to the cluster's
/// centre, in standardised units) from k-means on `features` (default:
/// every numeric column).
pub fn kmeans_frame(
    df: &DataFrame,
    k: usize,
    seed: u64,
    features: Option<&[String]>,
) -> Result<DataFrame, String> {
    let names: Vec<String> = match features {
        Some(f) => f.to_vec(),
        None => df
            .columns()
            .iter()
            .filter(|c| c.dtype().is_primitive_numeric())
            .map(|c| c.name().to_string())
            .collect(),
    };
    if names.is_empty() {
        return Err("kmeans: the frame has no numeric column (give `columns`)".into());
    }
    let mut cols = Vec::with_capacity(names.len());
    for n in &names {
        let c = df
            .column(n)
            .map_err(|_| format!("kmeans: no column `{n}`"))?;
        if !c.dtype().is_primitive_numeric() {
            return Err(format!("kmeans: `{n}` is {}, not a number", c.dtype()));
        }
        let v: Vec<f64> = c
            .cast(&DataType::Float64)
            .and_then(|c| {
                c.f64()
                    .map(|a| a.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
            })
            .map_err(err)?;
        cols.push(v);
    }
    let rows = kmeans::prepare(&cols)?;
    let c = kmeans::kmeans(&rows, k, seed)?;
    let mut out = df.clone();
    let labels: Vec<i64> = c.labels.iter().map(|l| *l as i64).collect();
    for col in [
        Column::new("cluster".into(), labels),
        Column::new("distance".into(), c.distance),
    ] {
        out.with_column(col).map_err(err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hourly(times: &[i64], values: &[f64]) -> DataFrame {
        let t = Column::new(
            "hour".into(),
            times
                .iter()
                .map(|h| h * 3_600_000_000)
                .collect::<Vec<i64>>(),
        )
        .cast(&DataType::Datetime(
            TimeUnit::Microseconds,
            Some(TimeZone::UTC),
        ))
        .unwrap();
        DataFrame::new(
            times.len(),
            vec![t, Column::new("revenue".into(), values.to_vec())],
        )
        .unwrap()
    }

    #[test]
    fn a_frame_becomes_one_value_per_step_with_gaps_filled() {
        let df = hourly(&[3, 0, 1, 5], &[3.0, 0.5, 1.0, 5.0]);
        let s = series(&df, &SeriesOpts::default()).unwrap();
        assert_eq!(s.step_us, 3_600_000_000);
        assert_eq!(s.values, vec![0.5, 1.0, 0.0, 3.0, 0.0, 5.0]);
        assert_eq!(s.filled, 2);
        assert_eq!(s.spec(&SeriesOpts::default()).periods, vec![24, 168]);
        let prev = SeriesOpts {
            fill: Fill::Previous,
            ..SeriesOpts::default()
        };
        assert_eq!(
            series(&df, &prev).unwrap().values,
            vec![0.5, 1.0, 1.0, 3.0, 3.0, 5.0]
        );
    }

    #[test]
    fn series_that_cannot_be_read_say_why() {
        let e = series(&hourly(&[0, 0], &[1.0, 2.0]), &SeriesOpts::default()).unwrap_err();
        assert!(e.contains("one row per time"), "{e}");
        let every = SeriesOpts {
            every_secs: Some(7200),
            ..SeriesOpts::default()
        };
        let e = series(&hourly(&[0, 1, 2], &[1.0; 3]), &every).unwrap_err();
        assert!(e.contains("whole number of steps"), "{e}");
        let no_time = DataFrame::new(1, vec![Column::new("x".into(), vec![1.0])]).unwrap();
        assert!(series(&no_time, &SeriesOpts::default())
            .unwrap_err()
            .contains("no date or time column"));
        // A step of a microsecond over ten years is refused, not allocated.
        let e = series(
            &hourly(&[0, 87_600], &[1.0, 2.0]),
            &SeriesOpts {
                every_secs: Some(1),
                ..SeriesOpts::default()
            },
        )
        .unwrap_err();
        assert!(e.contains("coarser step"), "{e}");
    }

    /// Two weeks of hourly sales, 3 % failing, then a last day where the
    /// 14:00 hour fails 30 % and a 03:00 hour with 2 sales fails one.
    #[test]
    fn a_rate_is_checked_against_its_binomial_band() {
        let hours: Vec<i64> = (0..24 * 15).collect();
        let quiet = |h: i64| (2..6).contains(&(h % 24));
        let sales: Vec<f64> = hours
            .iter()
            .map(|h| if quiet(*h) { 2.0 } else { 200.0 })
            .collect();
        let mut failed: Vec<f64> = sales
            .iter()
            .zip(&hours)
            .map(|(n, h)| {
                if quiet(*h) {
                    f64::from(*h % 7 == 0)
                } else {
                    n * 0.03
                }
            })
            .collect();
        let day = 24 * 14;
        failed[day + 14] = 60.0;
        failed[day + 3] = 1.0;
        let frame = |failed: &[f64], sales: &[f64]| {
            let mut df = hourly(&hours, failed);
            df.rename("revenue", "failed".into()).unwrap();
            df.with_column(Column::new("sales".into(), sales.to_vec()))
                .unwrap();
            df
        };
        let df = frame(&failed, &sales);
        let opts = SeriesOpts {
            value: Some("failed".into()),
            ..SeriesOpts::default()
        };
        let h = series(&df, &opts).unwrap();
        let t = series(
            &df,
            &SeriesOpts {
                value: Some("sales".into()),
                ..SeriesOpts::default()
            },
        )
        .unwrap();
        let f = rate_anomalies_frame(&h, &t, 24, 0.999, &h.spec(&opts)).unwrap();
        assert_eq!(f.height(), 24);
        let flagged: Vec<bool> = f
            .column("anomaly")
            .unwrap()
            .bool()
            .unwrap()
            .iter()
            .map(|b| b.unwrap())
            .collect();
        let at: Vec<usize> = (0..24).filter(|k| flagged[*k]).collect();
        assert_eq!(at, vec![14], "only the 30 % hour");
        let rate = f.column("rate").unwrap().f64().unwrap().get(14).unwrap();
        assert!((rate - 0.3).abs() < 1e-12);
        let expected = f
            .column("expected")
            .unwrap()
            .f64()
            .unwrap()
            .get(14)
            .unwrap();
        assert!((expected - 0.03).abs() < 0.005, "{expected}");
        // Counts that are not a count out of a count, and too little history.
        let mut bad = failed.clone();
        bad[5] = 500.0;
        let hb = series(&frame(&bad, &sales), &opts).unwrap();
        let e = rate_anomalies_frame(&hb, &t, 24, 0.999, &h.spec(&opts)).unwrap_err();
        assert!(e.contains("between 0 and `sales`"), "{e}");
        let e =
            rate_anomalies_frame(&h, &t, h.values.len() - 3, 0.999, &h.spec(&opts)).unwrap_err();
        assert!(e.contains("needs at least"), "{e}");
    }

    /// Hourly revenue with a daily cycle that drops by a third for good
    /// on day 10: one change, there, measured on the level; a quiet night
    /// is not one.
    #[test]
    fn a_lasting_drop_is_one_change_and_the_daily_cycle_is_none() {
        let hours: Vec<i64> = (0..24 * 20).collect();
        // Seeded noise of about 5 %, as orders vary.
        let e = forecast::noise(hours.len(), 7);
        let values: Vec<f64> = hours
            .iter()
            .zip(&e)
            .map(|(h, e)| {
                let day = 100.0 + 60.0 * ((*h % 24) as f64 / 24.0 * std::f64::consts::TAU).sin();
                day * (1.0 + 0.05 * e) * if *h >= 24 * 10 { 2.0 / 3.0 } else { 1.0 }
            })
            .collect();
        let df = hourly(&hours, &values);
        let opts = SeriesOpts::default();
        let s = series(&df, &opts).unwrap();
        let f = changepoints_frame(&s, &s.spec(&opts), None, 6, true).unwrap();
        assert_eq!(f.height(), 1, "{f}");
        let at = f.column("hour").unwrap().cast(&DataType::Int64).unwrap();
        let at = at.i64().unwrap().get(0).unwrap() / 3_600_000_000;
        assert!(at.abs_diff(240) <= 2, "{at}");
        let pct = f
            .column("change_pct")
            .unwrap()
            .f64()
            .unwrap()
            .get(0)
            .unwrap();
        assert!((pct + 33.3).abs() < 5.0, "{pct}");
        // Without taking the seasons out, the cycle itself is "changes".
        let raw = changepoints_frame(&s, &s.spec(&opts), None, 6, false).unwrap();
        assert!(raw.height() > 5, "{raw}");
    }

    #[test]
    fn level_names_are_percentages() {
        assert_eq!(level_name(0.8), "80");
        assert_eq!(level_name(0.95), "95");
        assert_eq!(level_name(0.975), "97.5");
    }

    #[test]
    fn the_forecast_frame_has_the_history_then_the_horizon() {
        let hours: Vec<i64> = (0..24 * 15).collect();
        let values: Vec<f64> = hours
            .iter()
            .map(|h| 10.0 + 5.0 * ((*h % 24) as f64 / 24.0 * std::f64::consts::TAU).sin())
            .collect();
        let df = hourly(&hours, &values);
        let s = series(&df, &SeriesOpts::default()).unwrap();
        let f = forecast_frame(&s, 24, &[0.8, 0.95], &s.spec(&SeriesOpts::default())).unwrap();
        assert_eq!(f.height(), hours.len() + 24);
        let names: Vec<&str> = f.get_column_names().iter().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            ["hour", "revenue", "forecast", "lower_80", "upper_80", "lower_95", "upper_95"]
        );
        assert_eq!(f.column("revenue").unwrap().null_count(), 24);
        assert_eq!(f.column("upper_95").unwrap().null_count(), hours.len());
    }
}
