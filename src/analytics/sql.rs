//! The SQL of each view.
//!
//! Filters arrive as checked values and are written into the statement as
//! escaped literals (`E'...'`, valid whatever `standard_conforming_strings`
//! says), so that the same text can run as a plain query or inside
//! `COPY (...) TO STDOUT`, which takes no bind parameters.
//!
//! Rollup views read `sales_metrics` / `session_metrics` at the coarsest grain
//! that fits: a range is cut into whole days (day grain), whole hours at its
//! edges (hour grain) and whole minutes at the outer edges (minute grain). A
//! range is therefore exact to the minute and reads at most a few thousand
//! rows per day of data, however many events there were.
//!
//! Every column is cast to one of the loader's types (text, int8, float8, or a
//! timestamp sent as int8 microseconds since the epoch).

use chrono::{DateTime, Duration, DurationRound, SecondsFormat, Utc};

use super::load::{ColType, Column};
use super::request::{Filters, Granularity, ViewKind};

/// A resolved, minute-aligned `[from, to)`, or everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Start, inclusive.
    pub from: DateTime<Utc>,
    /// End, exclusive.
    pub to: DateTime<Utc>,
}

impl Span {
    /// The span's length.
    pub fn len(&self) -> Duration {
        self.to - self.from
    }

    /// The period of equal length just before this one.
    pub fn previous(&self) -> Span {
        Span {
            from: self.from - self.len(),
            to: self.from,
        }
    }
}

/// The rollup grains, finest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Grain {
    /// Per-minute buckets (`grain = 'minute'`).
    Minute,
    /// Per-hour buckets (`grain = 'hour'`).
    Hour,
    /// Per-day buckets, UTC (`grain = 'day'`).
    Day,
}

impl Grain {
    fn name(self) -> &'static str {
        match self {
            Grain::Minute => "minute",
            Grain::Hour => "hour",
            Grain::Day => "day",
        }
    }

    fn seconds(self) -> i64 {
        match self {
            Grain::Minute => 60,
            Grain::Hour => 3_600,
            Grain::Day => 86_400,
        }
    }

    /// The coarsest grain whose buckets nest in buckets of `g`.
    pub(crate) fn for_granularity(g: Granularity) -> Grain {
        match g {
            Granularity::Minute | Granularity::FiveMinutes | Granularity::FifteenMinutes => {
                Grain::Minute
            }
            Granularity::Hour => Grain::Hour,
            Granularity::Day | Granularity::Week => Grain::Day,
        }
    }
}

fn floor_to(t: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    let s = t.timestamp();
    DateTime::from_timestamp(s - s.rem_euclid(secs), 0).unwrap_or(t)
}

fn ceil_to(t: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    let f = floor_to(t, secs);
    if f == t && t.timestamp_subsec_nanos() == 0 {
        f
    } else {
        f + Duration::seconds(secs)
    }
}

/// Rounds `from` down and `to` up to whole minutes.
pub(crate) fn minute_span(from: DateTime<Utc>, to: DateTime<Utc>) -> Span {
    Span {
        from: floor_to(from, 60),
        to: ceil_to(to, 60),
    }
}

/// Cuts `span` into pieces of the coarsest grains up to `max`.
pub(crate) fn tiers(span: Span, max: Grain) -> Vec<(Grain, Span)> {
    fn cut(span: Span, grain: Grain, max: Grain, out: &mut Vec<(Grain, Span)>) {
        if span.from >= span.to {
            return;
        }
        let coarser = match grain {
            Grain::Minute => Grain::Hour,
            Grain::Hour => Grain::Day,
            Grain::Day => {
                out.push((grain, span));
                return;
            }
        };
        if coarser > max {
            out.push((grain, span));
            return;
        }
        let inner = Span {
            from: ceil_to(span.from, coarser.seconds()),
            to: floor_to(span.to, coarser.seconds()),
        };
        if inner.from >= inner.to {
            out.push((grain, span));
            return;
        }
        for edge in [
            Span {
                from: span.from,
                to: inner.from,
            },
            Span {
                from: inner.to,
                to: span.to,
            },
        ] {
            if edge.from < edge.to {
                out.push((grain, edge));
            }
        }
        cut(inner, coarser, max, out);
    }
    let mut out = Vec::new();
    cut(span, Grain::Minute, max, &mut out);
    out
}

/// An escaped string literal.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => {}
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A `timestamptz` literal of `t`, to the microsecond.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    format!(
        "'{}'::timestamptz",
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    )
}

pub(crate) fn epoch_us(expr: &str) -> String {
    format!("(extract(epoch FROM {expr}) * 1000000)::int8")
}

/// `AND col IN (...)` for each non-empty filter list; sessions only have
/// region and channel.
fn dims(f: &Filters, sessions: bool) -> String {
    let mut out = String::new();
    let mut add = |col: &str, vals: &[String]| {
        if !vals.is_empty() {
            let list: Vec<String> = vals.iter().map(|v| text(v)).collect();
            out.push_str(&format!(" AND {col} IN ({})", list.join(", ")));
        }
    };
    if !sessions {
        add("category", &f.categories);
        add("payment_method", &f.payment_methods);
        add("status", &f.statuses);
    }
    add("region", &f.regions);
    add("channel", &f.channels);
    out
}

/// The rollup pieces of `span`: each grain's part of it, or all of grain
/// `max` when there is no span.
fn pieces(span: Option<Span>, max: Grain) -> Vec<(Grain, Option<Span>)> {
    match span {
        None => vec![(max, None)],
        Some(span) => tiers(span, max)
            .into_iter()
            .map(|(g, s)| (g, Some(s)))
            .collect(),
    }
}

/// A WHERE condition selecting `pieces`.
fn piece_condition(pieces: &[(Grain, Option<Span>)]) -> String {
    let parts: Vec<String> = pieces
        .iter()
        .map(|(g, s)| match s {
            None => format!("(grain = '{}')", g.name()),
            Some(s) => format!(
                "(grain = '{}' AND bucket >= {} AND bucket < {})",
                g.name(),
                ts(s.from),
                ts(s.to)
            ),
        })
        .collect();
    if parts.is_empty() {
        "FALSE".into()
    } else {
        format!("({})", parts.join(" OR "))
    }
}

/// The rollup rows of `span` (or all of grain `max`), as a WHERE condition.
fn rollup_time(span: Option<Span>, max: Grain) -> String {
    piece_condition(&pieces(span, max))
}

/// The filtered rows of the sales rollups covering `span` (or all of grain
/// `max`), as a statement with the columns grain, bucket, category,
/// payment_method, status, orders, units, revenue and discount. Whole hours
/// and days come from `sales_metrics_lite` unless region or channel is
/// filtered on; minutes, and everything under such a filter, from
/// `sales_metrics`.
fn sales_rows(f: &Filters, span: Option<Span>, max: Grain) -> String {
    const COLS: &str =
        "grain, bucket, category, payment_method, status, orders, units, revenue, discount";
    let d = dims(f, false);
    let all = pieces(span, max);
    if !(f.regions.is_empty() && f.channels.is_empty()) {
        return format!(
            "SELECT {COLS} FROM sales_metrics WHERE {}{d}",
            piece_condition(&all)
        );
    }
    let (full, lite): (Vec<_>, Vec<_>) = all.into_iter().partition(|p| p.0 == Grain::Minute);
    let mut parts = Vec::new();
    if !full.is_empty() {
        parts.push(format!(
            "SELECT {COLS} FROM sales_metrics WHERE {}{d}",
            piece_condition(&full)
        ));
    }
    if !lite.is_empty() {
        parts.push(format!(
            "SELECT {COLS} FROM sales_metrics_lite WHERE {}{d}",
            piece_condition(&lite)
        ));
    }
    if parts.is_empty() {
        format!("SELECT {COLS} FROM sales_metrics WHERE FALSE")
    } else {
        parts.join(" UNION ALL ")
    }
}

/// Distinct customers with a sale in `span` (or ever) matching `f`, as a
/// scalar subquery. Without dimension filters they are counted from the
/// order gaps (`order_gaps` for spans within its reach, else
/// `order_gaps_daily`) and only the ragged edges from `transactions`; with
/// them, from the matching raw rows.
fn distinct_customers(f: &Filters, span: Option<Span>) -> String {
    let raw = |cond: String| {
        // GROUP BY hashes; count(DISTINCT) sorts (4x slower at 100k rows).
        format!(
            "(SELECT count(*) FROM (SELECT customer_id FROM transactions WHERE {cond}{} \
             GROUP BY 1) c)",
            dims(f, false)
        )
    };
    let by = gap_dimension(f);
    let Some(s) = span else {
        return if f.no_dimensions() {
            // Kept by ingest.
            "coalesce((SELECT buyers FROM shop_totals WHERE id = 1), 0)".into()
        } else if let Some((dim, value)) = by {
            // Each customer's first order with that value.
            format!(
                "coalesce((SELECT sum(orders) FROM order_gaps_daily_by \
                 WHERE dim = {} AND value = {} AND back = {}), 0)",
                text(dim),
                text(value),
                crate::store::rollups::DAY_GAP_NEVER
            )
        } else {
            raw("TRUE".into())
        };
    };
    if f.no_dimensions() {
        if let Some(q) = customers_by_gaps(s).or_else(|| customers_by_day_gaps(s, None)) {
            return q;
        }
    } else if by.is_some() {
        if let Some(q) = customers_by_day_gaps(s, by) {
            return q;
        }
    }
    raw(raw_time(Some(s), "occurred_at"))
}

/// The dimension and value of `f` when it filters on one value of one
/// dimension that `order_gaps_daily_by` keeps gaps for
/// (`store::rollups::GAP_DIMENSIONS`) and on nothing else.
fn gap_dimension(f: &Filters) -> Option<(&'static str, &str)> {
    if !(f.payment_methods.is_empty() && f.channels.is_empty() && f.statuses.is_empty()) {
        return None;
    }
    match (f.categories.as_slice(), f.regions.as_slice()) {
        ([c], []) => Some(("category", c.as_str())),
        ([], [r]) => Some(("region", r.as_str())),
        _ => None,
    }
}

/// The customers with an order in `[from, to)` (an edge of a range, under
/// an hour or a day) and none in `[none_from, none_to)`, from the raw rows:
/// one indexed probe per customer (`transactions_customer_time_idx`),
/// written as a `LATERAL` with a `LIMIT` so that the planner cannot turn it
/// into hashing every row of the probed range (it did, misjudging the
/// edge's size at the end of the data: 64 ms instead of 1 ms).
fn edge_customers(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    none_from: DateTime<Utc>,
    none_to: DateTime<Utc>,
    by: Option<(&'static str, &str)>,
) -> String {
    if from >= to {
        return "0".into();
    }
    // Orders with that value of the dimension only, on both sides (`dim`
    // is a column name: one of ours, never a request's text).
    let only = |alias: &str| {
        by.map(|(dim, value)| format!(" AND {alias}{dim} = {}", text(value)))
            .unwrap_or_default()
    };
    format!(
        "(SELECT count(*) FROM (SELECT DISTINCT customer_id FROM transactions \
         WHERE occurred_at >= {} AND occurred_at < {}{}) e \
         CROSS JOIN LATERAL (SELECT count(*) AS n FROM (SELECT 1 FROM transactions x \
         WHERE x.customer_id = e.customer_id AND x.occurred_at >= {} AND x.occurred_at < {}{} \
         LIMIT 1) y) p WHERE p.n = 0)",
        ts(from),
        ts(to),
        only(""),
        ts(none_from),
        ts(none_to),
        only("x.")
    )
}

/// Distinct customers with an order in `s`, from `order_gaps_daily` for
/// its whole UTC days `[d1, d2)` and the raw rows for the edges under a day
/// (`L = [s.from, d1)`, `R = [d2, s.to)`): the customers of the whole days
/// (their first order there has its previous order before `d1`), those of
/// `L` with no order in the whole days, and those of `R` with no order
/// earlier in `s`. `None` when `s` has no whole day. With `by` (a dimension
/// and value), only orders with that value count, from
/// `order_gaps_daily_by`.
fn customers_by_day_gaps(s: Span, by: Option<(&'static str, &str)>) -> Option<String> {
    let day = Grain::Day.seconds();
    let (d1, d2) = (ceil_to(s.from, day), floor_to(s.to, day));
    let days = (d2 - d1).num_days();
    if d1 >= d2 || days >= i64::from(crate::store::rollups::DAY_GAP_NEVER) {
        return None;
    }
    let (table, only) = match by {
        None => ("order_gaps_daily", String::new()),
        Some((dim, value)) => (
            "order_gaps_daily_by",
            format!("dim = {} AND value = {} AND ", text(dim), text(value)),
        ),
    };
    Some(format!(
        "(coalesce((SELECT sum(orders) FROM {table} WHERE {only}day >= {a} AND day < {b} \
            AND back > (extract(epoch FROM day - {a}) / 86400)::int4), 0) \
          + {leading} + {trailing})",
        a = ts(d1),
        b = ts(d2),
        leading = edge_customers(s.from, d1, d1, d2, by),
        trailing = edge_customers(d2, s.to, s.from, d2, by),
    ))
}

/// Distinct customers with an order in `s` (every order counts), from
/// `order_gaps` for the whole hours and the raw rows for the minutes at the
/// edges; `None` when `s` has no whole hour or reaches further back than
/// `order_gaps` tells (see `store::rollups::ORDER_GAPS`).
///
/// A customer is counted by their first order in `s`, the one whose
/// previous order is before `s.from`:
/// - in the whole hours, from `order_gaps`: the orders whose previous order
///   is in an hour before `s.from`'s (`s.from` on the hour), or before or in
///   that hour (otherwise: that also counts the orders whose previous order
///   is in the leading minutes);
/// - in the leading minutes, the customers with no order in the whole hours
///   (so that those just counted are not counted twice);
/// - in the trailing minutes, the customers with no order earlier in `s`.
fn customers_by_gaps(s: Span) -> Option<String> {
    let hour = Grain::Hour.seconds();
    let (first, last, lead) = (
        ceil_to(s.from, hour),
        floor_to(s.to, hour),
        floor_to(s.from, hour),
    );
    let reach = (last - lead).num_hours();
    if first >= last || reach > i64::from(crate::store::rollups::GAP_HOURS) {
        return None;
    }
    // Hours back an order's previous one must be, at least, from each hour.
    let beyond = i32::from(first == s.from);
    Some(format!(
        "(coalesce((SELECT sum(orders) FROM order_gaps WHERE hour >= {f} AND hour < {l} \
            AND back >= (extract(epoch FROM hour - {lead}) / 3600)::int4 + {beyond}), 0) \
          + {leading} + {trailing})",
        f = ts(first),
        l = ts(last),
        lead = ts(lead),
        leading = edge_customers(s.from, first, first, last, None),
        trailing = edge_customers(last, s.to, s.from, last, None),
    ))
}

fn raw_time(span: Option<Span>, col: &str) -> String {
    match span {
        None => "TRUE".into(),
        Some(s) => format!("{col} >= {} AND {col} < {}", ts(s.from), ts(s.to)),
    }
}

const COMPLETED: &str = "FILTER (WHERE status = 'completed')";

/// A statement and the columns it returns.
#[derive(Clone, Debug)]
pub struct Query {
    /// The statement, filters written in as literals.
    pub sql: String,
    /// Its result columns, in order.
    pub columns: Vec<Column>,
    /// When not empty: statements whose rows, in this order, are the rows of
    /// `sql` (its `UNION ALL` parts), to be run concurrently.
    pub parts: Vec<String>,
}

fn cols(spec: &[(&'static str, ColType)]) -> Vec<Column> {
    spec.iter().map(|&(name, ty)| Column { name, ty }).collect()
}

impl Query {
    /// One statement returning the columns of `spec`.
    fn new(sql: String, spec: &[(&'static str, ColType)]) -> Self {
        Query {
            sql,
            columns: cols(spec),
            parts: Vec::new(),
        }
    }
}

use ColType::{Float as F, Int as I, Text as T, Time as TS};

/// The `kpis` view: a `current` row for `span` and a `previous` row for the
/// period of the same length before it (all nulls when there is no span).
/// Revenue, units and average order value count completed orders only.
pub fn kpis(f: &Filters, span: Option<Span>) -> Query {
    let period = |label: &str, span: Option<Span>| {
        let customers = distinct_customers(f, span);
        let (lo, hi) = match span {
            Some(s) => (epoch_us(&ts(s.from)), epoch_us(&ts(s.to))),
            None => ("NULL::int8".into(), "NULL::int8".into()),
        };
        let t = rollup_time(span, Grain::Day);
        format!(
            "SELECT {label} AS period, {lo} AS range_from, {hi} AS range_to,
                coalesce(s.revenue, 0)::float8 AS revenue,
                coalesce(s.orders, 0)::int8 AS orders,
                coalesce(s.completed, 0)::int8 AS completed_orders,
                coalesce(s.units, 0)::int8 AS units,
                (s.revenue / nullif(s.completed, 0))::float8 AS avg_order_value,
                coalesce(v.sessions, 0)::int8 AS sessions,
                (coalesce(s.orders, 0)::numeric / nullif(v.sessions, 0))::float8 AS conversion_rate,
                coalesce(s.refunded, 0)::int8 AS refunded_orders,
                (coalesce(s.refunded, 0)::numeric / nullif(s.orders, 0))::float8 AS refund_rate,
                {customers}::int8 AS customers
            FROM (SELECT sum(revenue) {COMPLETED} AS revenue, sum(orders) AS orders,
                         sum(orders) {COMPLETED} AS completed, sum(units) {COMPLETED} AS units,
                         sum(orders) FILTER (WHERE status = 'refunded') AS refunded
                  FROM ({rows}) m) s,
                 (SELECT sum(sessions) AS sessions FROM session_metrics WHERE {t}{vd}) v",
            label = text(label),
            rows = sales_rows(f, span, Grain::Day),
            vd = dims(f, true),
        )
    };
    let current = period("current", span);
    let previous = match span {
        Some(s) => period("previous", Some(s.previous())),
        None => "SELECT E'previous', NULL::int8, NULL::int8, NULL::float8, NULL::int8, \
                 NULL::int8, NULL::int8, NULL::float8, NULL::int8, NULL::float8, NULL::int8, \
                 NULL::float8, NULL::int8"
            .into(),
    };
    Query {
        sql: format!("{current}\nUNION ALL\n{previous}"),
        parts: vec![current, previous],
        columns: cols(&[
            ("period", T),
            ("range_from", TS),
            ("range_to", TS),
            ("revenue", F),
            ("orders", I),
            ("completed_orders", I),
            ("units", I),
            ("avg_order_value", F),
            ("sessions", I),
            ("conversion_rate", F),
            ("refunded_orders", I),
            ("refund_rate", F),
            ("customers", I),
        ]),
    }
}

fn bucket_expr(g: Granularity, x: &str) -> String {
    match g {
        Granularity::FiveMinutes => {
            format!("date_bin('5 minutes', {x}, TIMESTAMPTZ '2000-01-01 00:00:00+00')")
        }
        Granularity::FifteenMinutes => {
            format!("date_bin('15 minutes', {x}, TIMESTAMPTZ '2000-01-01 00:00:00+00')")
        }
        Granularity::Minute => format!("date_trunc('minute', {x}, 'UTC')"),
        Granularity::Hour => format!("date_trunc('hour', {x}, 'UTC')"),
        Granularity::Day => format!("date_trunc('day', {x}, 'UTC')"),
        Granularity::Week => format!("date_trunc('week', {x}, 'UTC')"),
    }
}

/// The `revenue_trend` view: one row per bucket of `g` (empty buckets
/// included), oldest first; revenue counts completed orders.
pub fn revenue_trend(f: &Filters, span: Option<Span>, g: Granularity) -> Query {
    let grain = Grain::for_granularity(g);
    let b = bucket_expr(g, "bucket");
    let (lo, hi) = match span {
        Some(s) => (
            bucket_expr(g, &ts(s.from)),
            bucket_expr(g, &format!("({} - interval '1 microsecond')", ts(s.to))),
        ),
        None => (
            "least((SELECT min(b) FROM s), (SELECT min(b) FROM v))".into(),
            "greatest((SELECT max(b) FROM s), (SELECT max(b) FROM v))".into(),
        ),
    };
    let sql = format!(
        "WITH s AS (
            SELECT {b} AS b, sum(revenue) {COMPLETED} AS revenue, sum(orders) AS orders,
                   sum(orders) {COMPLETED} AS completed, sum(units) {COMPLETED} AS units
            FROM ({rows}) m GROUP BY 1),
        v AS (
            SELECT {b} AS b, sum(sessions) AS sessions
            FROM session_metrics WHERE {st}{vd} GROUP BY 1),
        series AS (
            SELECT generate_series({lo}, {hi}, interval '{step} seconds') AS b)
        SELECT {bucket} AS bucket,
            coalesce(s.revenue, 0)::float8 AS revenue,
            coalesce(s.orders, 0)::int8 AS orders,
            coalesce(s.completed, 0)::int8 AS completed_orders,
            coalesce(s.units, 0)::int8 AS units,
            (s.revenue / nullif(s.completed, 0))::float8 AS avg_order_value,
            coalesce(v.sessions, 0)::int8 AS sessions,
            (coalesce(s.orders, 0)::numeric / nullif(v.sessions, 0))::float8 AS conversion_rate
        FROM series LEFT JOIN s USING (b) LEFT JOIN v USING (b)
        ORDER BY 1",
        st = rollup_time(span, grain),
        rows = sales_rows(f, span, grain),
        vd = dims(f, true),
        step = g.seconds(),
        bucket = epoch_us("b"),
    );
    Query::new(
        sql,
        &[
            ("bucket", TS),
            ("revenue", F),
            ("orders", I),
            ("completed_orders", I),
            ("units", I),
            ("avg_order_value", F),
            ("sessions", I),
            ("conversion_rate", F),
        ],
    )
}

/// The `category_performance` view: one row per category, most revenue first.
pub fn category_performance(f: &Filters, span: Option<Span>) -> Query {
    let sql = format!(
        "SELECT category, coalesce(rev, 0)::float8 AS revenue, o::int8 AS orders,
            coalesce(c, 0)::int8 AS completed_orders, coalesce(u, 0)::int8 AS units,
            (rev / nullif(c, 0))::float8 AS avg_order_value,
            (rev / nullif(sum(rev) OVER (), 0))::float8 AS revenue_share
        FROM (SELECT category, sum(revenue) {COMPLETED} AS rev, sum(orders) AS o,
                     sum(orders) {COMPLETED} AS c, sum(units) {COMPLETED} AS u
              FROM ({}) m GROUP BY 1) x
        ORDER BY 2 DESC, 1",
        sales_rows(f, span, Grain::Day),
    );
    Query::new(
        sql,
        &[
            ("category", T),
            ("revenue", F),
            ("orders", I),
            ("completed_orders", I),
            ("units", I),
            ("avg_order_value", F),
            ("revenue_share", F),
        ],
    )
}

/// The `payment_mix` view: one row per payment method, most orders first.
pub fn payment_mix(f: &Filters, span: Option<Span>) -> Query {
    let sql = format!(
        "SELECT payment_method, o::int8 AS orders, coalesce(c, 0)::int8 AS completed_orders,
            coalesce(fl, 0)::int8 AS failed_orders, coalesce(rev, 0)::float8 AS revenue,
            (o::numeric / nullif(sum(o) OVER (), 0))::float8 AS order_share,
            (rev / nullif(sum(rev) OVER (), 0))::float8 AS revenue_share,
            (coalesce(fl, 0)::numeric / nullif(o, 0))::float8 AS failure_rate
        FROM (SELECT payment_method, sum(orders) AS o, sum(orders) {COMPLETED} AS c,
                     sum(orders) FILTER (WHERE status = 'failed') AS fl,
                     sum(revenue) {COMPLETED} AS rev
              FROM ({}) m GROUP BY 1) x
        ORDER BY 2 DESC, 1",
        sales_rows(f, span, Grain::Day),
    );
    Query::new(
        sql,
        &[
            ("payment_method", T),
            ("orders", I),
            ("completed_orders", I),
            ("failed_orders", I),
            ("revenue", F),
            ("order_share", F),
            ("revenue_share", F),
            ("failure_rate", F),
        ],
    )
}

/// The `status_breakdown` view: one row per status, most orders first;
/// `amount` sums every order of the status, not only completed ones.
pub fn status_breakdown(f: &Filters, span: Option<Span>) -> Query {
    let sql = format!(
        "SELECT status, o::int8 AS orders, amt::float8 AS amount, u::int8 AS units,
            (o::numeric / nullif(sum(o) OVER (), 0))::float8 AS order_share,
            (amt / nullif(sum(amt) OVER (), 0))::float8 AS amount_share
        FROM (SELECT status, sum(orders) AS o, sum(revenue) AS amt, sum(units) AS u
              FROM ({}) m GROUP BY 1) x
        ORDER BY 2 DESC, 1",
        sales_rows(f, span, Grain::Day),
    );
    Query::new(
        sql,
        &[
            ("status", T),
            ("orders", I),
            ("amount", F),
            ("units", I),
            ("order_share", F),
            ("amount_share", F),
        ],
    )
}

/// The `region_breakdown` view: one row per region with sales or sessions,
/// most revenue first.
pub fn region_breakdown(f: &Filters, span: Option<Span>) -> Query {
    let t = rollup_time(span, Grain::Day);
    let sql = format!(
        "SELECT region, coalesce(s.rev, 0)::float8 AS revenue, coalesce(s.o, 0)::int8 AS orders,
            coalesce(s.c, 0)::int8 AS completed_orders, coalesce(v.n, 0)::int8 AS sessions,
            (coalesce(s.o, 0)::numeric / nullif(v.n, 0))::float8 AS conversion_rate,
            (s.rev / nullif(sum(s.rev) OVER (), 0))::float8 AS revenue_share
        FROM (SELECT region, sum(revenue) {COMPLETED} AS rev, sum(orders) AS o,
                     sum(orders) {COMPLETED} AS c
              FROM sales_metrics WHERE {t}{sd} GROUP BY 1) s
        FULL JOIN (SELECT region, sum(sessions) AS n
              FROM session_metrics WHERE {t}{vd} GROUP BY 1) v USING (region)
        ORDER BY 2 DESC, 1",
        sd = dims(f, false),
        vd = dims(f, true),
    );
    Query::new(
        sql,
        &[
            ("region", T),
            ("revenue", F),
            ("orders", I),
            ("completed_orders", I),
            ("sessions", I),
            ("conversion_rate", F),
            ("revenue_share", F),
        ],
    )
}

/// The `top_products` view: the `limit` products with the most completed
/// revenue. All time and unfiltered, it reads the `products` totals instead
/// of `transactions`.
pub fn top_products(f: &Filters, span: Option<Span>, limit: u64) -> Query {
    let sql = if span.is_none() && f.no_dimensions() {
        // All time, unfiltered: the running totals ingest keeps per product.
        format!(
            "SELECT product_id, name, category, orders::int8, units::int8, revenue::float8
            FROM products WHERE orders > 0
            ORDER BY revenue DESC, product_id LIMIT {limit}"
        )
    } else {
        format!(
            "SELECT t.product_id, coalesce(p.name, '') AS name, t.category, t.orders::int8,
                t.units::int8, t.revenue::float8
            FROM (SELECT product_id, min(category) AS category, count(*) AS orders,
                         sum(quantity) AS units,
                         coalesce(sum(total_amount) {COMPLETED}, 0) AS revenue
                  FROM transactions WHERE {}{} GROUP BY 1) t
            LEFT JOIN products p USING (product_id)
            ORDER BY t.revenue DESC, t.product_id LIMIT {limit}",
            raw_time(span, "occurred_at"),
            dims(f, false),
        )
    };
    Query::new(
        sql,
        &[
            ("product_id", T),
            ("name", T),
            ("category", T),
            ("orders", I),
            ("units", I),
            ("revenue", F),
        ],
    )
}

/// The `top_customers` view: the `limit` customers with the most completed
/// revenue. All time and unfiltered, it reads the paying customers' totals
/// in `customers` in the order of their index (`customers_top_value`),
/// instead of `transactions`; customers without a completed order then
/// come after them, only if there are fewer than `limit` paying ones.
pub fn top_customers(f: &Filters, span: Option<Span>, limit: u64) -> Query {
    let sql = if span.is_none() && f.no_dimensions() {
        format!(
            "SELECT * FROM (
            (SELECT customer_id, region, orders::int8, completed_orders::int8, units::int8,
                total_spent::float8 AS revenue
            FROM customers WHERE completed_orders > 0
            ORDER BY total_spent::float8 DESC NULLS LAST, customer_id COLLATE \"C\" NULLS LAST
            LIMIT {limit})
            UNION ALL
            (SELECT customer_id, region, orders::int8, completed_orders::int8, units::int8,
                total_spent::float8 AS revenue
            FROM customers WHERE orders > 0 AND completed_orders = 0
                AND (SELECT count(*) FROM (SELECT 1 FROM customers WHERE completed_orders > 0
                     LIMIT {limit}) p) < {limit}
            ORDER BY customer_id COLLATE \"C\" LIMIT {limit})) u
            ORDER BY revenue DESC NULLS LAST, customer_id COLLATE \"C\" LIMIT {limit}"
        )
    } else {
        format!(
            "SELECT customer_id, min(region) AS region, count(*)::int8 AS orders,
                (count(*) {COMPLETED})::int8 AS completed_orders, sum(quantity)::int8 AS units,
                coalesce(sum(total_amount) {COMPLETED}, 0)::float8 AS revenue
            FROM transactions WHERE {}{} GROUP BY 1
            ORDER BY 6 DESC, 1 LIMIT {limit}",
            raw_time(span, "occurred_at"),
            dims(f, false),
        )
    };
    Query::new(
        sql,
        &[
            ("customer_id", T),
            ("region", T),
            ("orders", I),
            ("completed_orders", I),
            ("units", I),
            ("revenue", F),
        ],
    )
}

/// The `weekday_hour` view: all 7 × 24 cells of ISO weekday (1 = Monday) and
/// UTC hour, empty ones as zeros.
pub fn weekday_hour(f: &Filters, span: Option<Span>) -> Query {
    let sql = format!(
        "WITH x AS (
            SELECT extract(isodow FROM bucket AT TIME ZONE 'UTC')::int8 AS wd,
                   extract(hour FROM bucket AT TIME ZONE 'UTC')::int8 AS hr,
                   sum(orders) AS o, sum(revenue) {COMPLETED} AS rev
            FROM ({}) m GROUP BY 1, 2)
        SELECT d.wd::int8 AS weekday, h.hr::int8 AS hour, coalesce(x.o, 0)::int8 AS orders,
            coalesce(x.rev, 0)::float8 AS revenue
        FROM generate_series(1, 7) d(wd) CROSS JOIN generate_series(0, 23) h(hr)
        LEFT JOIN x ON x.wd = d.wd AND x.hr = h.hr
        ORDER BY 1, 2",
        sales_rows(f, span, Grain::Hour),
    );
    Query::new(
        sql,
        &[("weekday", I), ("hour", I), ("orders", I), ("revenue", F)],
    )
}

/// A raw table's columns as scripts see them: name, the expression that
/// reads it, its type (times as `timestamptz` here; [`select_list`] sends
/// them as microseconds).
type Spec = [(&'static str, &'static str, ColType)];

const TRANSACTION_COLUMNS: [(&str, &str, ColType); 16] = [
    ("transaction_id", "transaction_id::text", T),
    ("occurred_at", "occurred_at", TS),
    ("customer_id", "customer_id", T),
    ("session_id", "session_id", T),
    ("product_id", "product_id", T),
    ("category", "category", T),
    ("quantity", "quantity::int8", I),
    ("unit_price", "unit_price::float8", F),
    ("discount", "discount::float8", F),
    ("total_amount", "total_amount::float8", F),
    ("currency", "currency::text", T),
    ("payment_method", "payment_method", T),
    ("status", "status", T),
    ("region", "region", T),
    ("country", "country::text", T),
    ("channel", "channel", T),
];

const SESSION_COLUMNS: [(&str, &str, ColType); 9] = [
    ("session_id", "session_id", T),
    ("customer_id", "customer_id", T),
    ("started_at", "started_at", TS),
    ("ended_at", "ended_at", TS),
    ("region", "region", T),
    ("country", "country::text", T),
    ("channel", "channel", T),
    ("page_views", "page_views::int8", I),
    ("orders", "orders::int8", I),
];

const CUSTOMER_COLUMNS: [(&str, &str, ColType); 9] = [
    ("customer_id", "customer_id", T),
    ("region", "region", T),
    ("country", "country::text", T),
    ("first_seen", "first_seen", TS),
    ("last_seen", "last_seen", TS),
    ("orders", "orders::int8", I),
    ("completed_orders", "completed_orders::int8", I),
    ("units", "units::int8", I),
    ("lifetime_value", "total_spent::float8", F),
];

const PRODUCT_COLUMNS: [(&str, &str, ColType); 9] = [
    ("product_id", "product_id", T),
    ("name", "name", T),
    ("category", "category", T),
    ("list_price", "list_price::float8", F),
    ("first_seen", "first_seen", TS),
    ("last_seen", "last_seen", TS),
    ("orders", "orders::int8", I),
    ("units", "units::int8", I),
    ("revenue", "revenue::float8", F),
];

/// `expr AS name, …` of a table's columns; times as microseconds unless
/// `raw_times`.
fn select_list(spec: &Spec, raw_times: bool) -> String {
    spec.iter()
        .map(|&(name, expr, ty)| {
            if ty == TS && !raw_times {
                format!("{} AS {name}", epoch_us(expr))
            } else {
                format!("{expr} AS {name}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn spec_query(sql: String, spec: &Spec) -> Query {
    Query {
        sql,
        columns: spec
            .iter()
            .map(|&(name, _, ty)| Column { name, ty })
            .collect(),
        parts: Vec::new(),
    }
}

fn transactions_where(f: &Filters, span: Option<Span>) -> String {
    format!("{}{}", raw_time(span, "occurred_at"), dims(f, false))
}

fn sessions_where(f: &Filters, span: Option<Span>) -> String {
    format!("{}{}", raw_time(span, "started_at"), dims(f, true))
}

fn customers_where(f: &Filters) -> String {
    if f.regions.is_empty() {
        "TRUE".into()
    } else {
        let list: Vec<String> = f.regions.iter().map(|v| text(v)).collect();
        format!("region IN ({})", list.join(", "))
    }
}

fn products_where(f: &Filters) -> String {
    if f.categories.is_empty() {
        "TRUE".into()
    } else {
        let list: Vec<String> = f.categories.iter().map(|v| text(v)).collect();
        format!("category IN ({})", list.join(", "))
    }
}

/// Raw rows, newest first. `after` = the `(occurred_at µs, id)` of the last
/// row of the previous page, for keyset paging (exports).
pub fn transactions(
    f: &Filters,
    span: Option<Span>,
    limit: u64,
    offset: u64,
    after: Option<(i64, &str)>,
) -> Query {
    let keyset = match after {
        Some((us, id)) => format!(
            " AND (occurred_at, transaction_id) < \
             ('epoch'::timestamptz + {us} * interval '1 microsecond', {}::uuid)",
            text(id)
        ),
        None => String::new(),
    };
    let sql = format!(
        "SELECT {} FROM transactions WHERE {}{keyset}
        ORDER BY transactions.occurred_at DESC, transaction_id DESC LIMIT {limit} OFFSET {offset}",
        select_list(&TRANSACTION_COLUMNS, false),
        transactions_where(f, span),
    );
    spec_query(sql, &TRANSACTION_COLUMNS)
}

/// Raw session rows of `span` (region and channel filters apply), newest
/// first, at most `limit`.
pub fn sessions(f: &Filters, span: Option<Span>, limit: u64) -> Query {
    let sql = format!(
        "SELECT {} FROM sessions WHERE {}
        ORDER BY sessions.started_at DESC, session_id DESC LIMIT {limit}",
        select_list(&SESSION_COLUMNS, false),
        sessions_where(f, span),
    );
    spec_query(sql, &SESSION_COLUMNS)
}

/// Customer rows with their lifetime counters (region filter applies; the
/// range does not: these are totals), at most `limit`.
pub fn customers(f: &Filters, limit: u64) -> Query {
    let sql = format!(
        "SELECT {} FROM customers WHERE {} ORDER BY customer_id LIMIT {limit}",
        select_list(&CUSTOMER_COLUMNS, false),
        customers_where(f),
    );
    spec_query(sql, &CUSTOMER_COLUMNS)
}

/// Product rows with their lifetime counters (category filter applies).
pub fn products(f: &Filters, limit: u64) -> Query {
    let sql = format!(
        "SELECT {} FROM products WHERE {} ORDER BY product_id LIMIT {limit}",
        select_list(&PRODUCT_COLUMNS, false),
        products_where(f),
    );
    spec_query(sql, &PRODUCT_COLUMNS)
}

/// The rows of a raw table under the filters, in no order and with times
/// as `timestamptz`: what a pushed-down script query reads
/// (`analytics::pushdown`). The same columns, filters and range as the
/// table's paged query above.
pub fn table_rows(name: &str, f: &Filters, span: Option<Span>) -> Option<Query> {
    let (spec, table, filter): (&Spec, &str, String) = match name {
        "transactions" => (
            &TRANSACTION_COLUMNS,
            "transactions",
            transactions_where(f, span),
        ),
        "sessions" => (&SESSION_COLUMNS, "sessions", sessions_where(f, span)),
        "customers" => (&CUSTOMER_COLUMNS, "customers", customers_where(f)),
        "products" => (&PRODUCT_COLUMNS, "products", products_where(f)),
        _ => return None,
    };
    Some(spec_query(
        format!(
            "SELECT {} FROM {table} WHERE {filter}",
            select_list(spec, true)
        ),
        spec,
    ))
}

/// Sales as weighted rows, for script queries a rollup can answer
/// (`analytics::pushdown::from_rollups`): one row per rollup group — the
/// dimensions, the bucket's start as `occurred_at`, `__n` raw rows and the
/// sums of their `quantity`, `total_amount` and `discount` under those
/// names — over the whole buckets of `span` (`grain`: `hour` or `day`),
/// and the raw rows themselves (weight 1) over its partial hours at the
/// edges. `None` when the span has no whole hour. `lite`: from
/// `sales_metrics_lite` (no region or channel columns; only when the
/// filters have neither).
pub fn weighted_sales(f: &Filters, span: Option<Span>, grain: &str, lite: bool) -> Option<Query> {
    let table = if lite {
        "sales_metrics_lite"
    } else {
        "sales_metrics"
    };
    let dim_cols = if lite {
        "category, payment_method, status"
    } else {
        "category, payment_method, status, region, channel"
    };
    let rollup = |cond: String| {
        format!(
            "SELECT {dim_cols}, bucket AS occurred_at, orders::int8 AS __n, units::int8 AS quantity, \
             revenue::float8 AS total_amount, discount::float8 AS discount \
             FROM {table} WHERE grain = {} AND {cond}{}",
            text(grain),
            dims(f, false)
        )
    };
    let raw = |from: DateTime<Utc>, to: DateTime<Utc>| {
        format!(
            "SELECT {dim_cols}, occurred_at, 1::int8 AS __n, quantity::int8 AS quantity, \
             total_amount::float8 AS total_amount, discount::float8 AS discount \
             FROM transactions WHERE occurred_at >= {} AND occurred_at < {}{}",
            ts(from),
            ts(to),
            dims(f, false)
        )
    };
    let sql = match span {
        None => rollup("TRUE".into()),
        Some(s) => {
            let hour = Duration::hours(1);
            let first = s.from.duration_trunc(hour).ok()?;
            let first = if first < s.from { first + hour } else { first };
            let last = s.to.duration_trunc(hour).ok()?;
            if grain != "hour" || first >= last {
                return None;
            }
            let mut parts = vec![rollup(format!(
                "bucket >= {} AND bucket < {}",
                ts(first),
                ts(last)
            ))];
            if s.from < first {
                parts.push(raw(s.from, first));
            }
            if last < s.to {
                parts.push(raw(last, s.to));
            }
            parts.join(" UNION ALL ")
        }
    };
    let mut columns = cols(&[("category", T), ("payment_method", T), ("status", T)]);
    if !lite {
        columns.extend(cols(&[("region", T), ("channel", T)]));
    }
    columns.extend(cols(&[
        ("occurred_at", TS),
        ("__n", I),
        ("quantity", I),
        ("total_amount", F),
        ("discount", F),
    ]));
    Some(Query {
        sql,
        columns,
        parts: Vec::new(),
    })
}

/// The query of a view.
pub(crate) fn view_query(
    view: ViewKind,
    f: &Filters,
    span: Option<Span>,
    granularity: Granularity,
    limit: Option<u64>,
    offset: u64,
) -> Query {
    let limit = limit.unwrap_or(10);
    match view {
        ViewKind::Kpis => kpis(f, span),
        ViewKind::RevenueTrend => revenue_trend(f, span, granularity),
        ViewKind::CategoryPerformance => category_performance(f, span),
        ViewKind::PaymentMix => payment_mix(f, span),
        ViewKind::StatusBreakdown => status_breakdown(f, span),
        ViewKind::RegionBreakdown => region_breakdown(f, span),
        ViewKind::TopProducts => top_products(f, span, limit),
        ViewKind::TopCustomers => top_customers(f, span, limit),
        ViewKind::WeekdayHour => weekday_hour(f, span),
        ViewKind::Transactions => transactions(f, span, limit, offset, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn distinct_customers_read_order_gaps_within_their_reach() {
        let f = Filters::default();
        let span = |a: &str, b: &str| Some(minute_span(t(a), t(b)));
        // Off the hour: gaps for the whole hours, raw rows at the edges.
        let q = distinct_customers(&f, span("2026-11-01T22:17:00Z", "2026-11-08T22:17:00Z"));
        assert!(q.contains("FROM order_gaps WHERE hour >= "), "{q}");
        assert!(q.contains("/ 3600)::int4 + 0"), "{q}");
        // On the hour: an order counts when its previous one is in an
        // earlier hour than the range's first.
        let q = distinct_customers(&f, span("2026-11-01T22:00:00Z", "2026-11-02T05:00:00Z"));
        assert!(q.contains("/ 3600)::int4 + 1"), "{q}");
        // Further back than the hourly gaps tell: the daily ones for the
        // whole days, raw rows for the edges under a day.
        let q = distinct_customers(&f, span("2026-10-01T00:00:00Z", "2026-11-01T01:00:00Z"));
        assert!(q.contains("FROM order_gaps_daily WHERE day >= "), "{q}");
        assert!(!q.contains("FROM order_gaps WHERE"), "{q}");
        assert_eq!(q.matches("SELECT DISTINCT customer_id").count(), 1, "{q}");
        let q = distinct_customers(&f, span("2026-01-05T13:10:00Z", "2026-04-01T07:00:00Z"));
        assert!(q.contains("FROM order_gaps_daily WHERE day >= "), "{q}");
        assert_eq!(q.matches("SELECT DISTINCT customer_id").count(), 2, "{q}");
        // One category or one region: the daily gaps by dimension, whole
        // days only, and edges under that filter.
        let books = Filters {
            categories: vec!["Books".into()],
            ..Filters::default()
        };
        let q = distinct_customers(&books, span("2026-11-01T22:17:00Z", "2026-11-08T22:17:00Z"));
        assert!(
            q.contains(
                "FROM order_gaps_daily_by WHERE dim = E'category' AND value = E'Books' AND day >= "
            ),
            "{q}"
        );
        assert_eq!(q.matches(" AND category = E'Books'").count(), 2, "{q}");
        assert_eq!(q.matches(" AND x.category = E'Books'").count(), 2, "{q}");
        let north = Filters {
            regions: vec!["North".into()],
            ..Filters::default()
        };
        let q = distinct_customers(&north, None);
        assert!(
            q.contains("WHERE dim = E'region' AND value = E'North' AND back = 100000"),
            "{q}"
        );
        // No whole hour; no whole day under a filter; two values, two
        // dimensions, or a dimension without gaps: not gaps.
        let two_cats = Filters {
            categories: vec!["Books".into(), "Toys".into()],
            ..Filters::default()
        };
        let cat_and_region = Filters {
            regions: vec!["North".into()],
            ..books.clone()
        };
        let channel = Filters {
            channels: vec!["web".into()],
            ..Filters::default()
        };
        for (f, a, b) in [
            (&f, "2026-11-01T22:17:00Z", "2026-11-01T23:59:00Z"),
            (&books, "2026-11-01T22:17:00Z", "2026-11-02T22:17:00Z"),
            (&two_cats, "2026-11-01T22:17:00Z", "2026-11-08T22:17:00Z"),
            (
                &cat_and_region,
                "2026-11-01T22:17:00Z",
                "2026-11-08T22:17:00Z",
            ),
            (&channel, "2026-11-01T22:17:00Z", "2026-11-08T22:17:00Z"),
        ] {
            let q = distinct_customers(f, span(a, b));
            assert!(!q.contains("order_gaps"), "{a}..{b}: {q}");
        }
        for f in [&two_cats, &cat_and_region, &channel] {
            assert!(!distinct_customers(f, None).contains("order_gaps"));
        }
        // 744 hours back from the last whole hour is the reach.
        let q = distinct_customers(&f, span("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"));
        assert!(q.contains("order_gaps"), "{q}");
    }

    #[test]
    fn tiers_cover_the_span_exactly_with_coarse_middles() {
        let span = minute_span(t("2026-11-01T22:17:30Z"), t("2026-11-04T01:02:00Z"));
        assert_eq!(span.from, t("2026-11-01T22:17:00Z"));
        let parts = tiers(span, Grain::Day);
        let mut covered: Vec<Span> = parts.iter().map(|p| p.1).collect();
        covered.sort_by_key(|s| s.from);
        assert_eq!(covered.first().unwrap().from, span.from);
        assert_eq!(covered.last().unwrap().to, span.to);
        for w in covered.windows(2) {
            assert_eq!(w[0].to, w[1].from, "gap or overlap in {parts:?}");
        }
        let days: Vec<_> = parts.iter().filter(|p| p.0 == Grain::Day).collect();
        assert_eq!(days.len(), 1);
        assert_eq!(days[0].1.len(), Duration::days(2));
        // Nothing coarser than allowed.
        assert!(tiers(span, Grain::Hour).iter().all(|p| p.0 <= Grain::Hour));
        assert!(tiers(span, Grain::Minute)
            .iter()
            .all(|p| p.0 == Grain::Minute));
        // A short span stays at minutes.
        let short = minute_span(t("2026-11-01T10:05:00Z"), t("2026-11-01T10:50:00Z"));
        assert_eq!(tiers(short, Grain::Day), vec![(Grain::Minute, short)]);
    }

    #[test]
    fn literals_are_escaped() {
        assert_eq!(text("O'Brien \\ x"), "E'O\\'Brien \\\\ x'");
        assert_eq!(text("a\0b"), "E'ab'");
    }
}
