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
                    .map(|x| match x {
                        1 => "above",
                        -1 => "below",
                        _ => "",
                    })
                    .collect::<Vec<&str>>(),
            ),
        ],
    )
    .map_err(err)
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
