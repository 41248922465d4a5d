//! What a caller asks for: a view, filters, a time range and a granularity,
//! parsed from `key=value` pairs (the CLI and HTTP share one parser) and
//! checked before anything touches the database.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::AnalyticsError;
use crate::event::{Channel, Status, MAX_TEXT_LEN};

/// The views. Names are the CLI and HTTP spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewKind {
    /// Headline numbers (revenue, orders, sessions, conversion, refunds, customers)
    /// for the range and for the period of the same length before it.
    Kpis,
    /// Revenue, orders, sessions and conversion per time bucket of the granularity.
    RevenueTrend,
    /// Revenue, orders, units and revenue share per product category.
    CategoryPerformance,
    /// Orders, revenue, their shares and the failure rate per payment method.
    PaymentMix,
    /// Orders, amount and units per order status.
    StatusBreakdown,
    /// Revenue, orders, sessions and conversion per region.
    RegionBreakdown,
    /// The products with the most revenue from completed orders (limit 10 by default).
    TopProducts,
    /// The customers with the most revenue from completed orders (limit 10 by default).
    TopCustomers,
    /// Orders and revenue per ISO weekday (1 = Monday) and UTC hour: a 7 × 24 grid.
    WeekdayHour,
    /// Raw order lines, newest first (limit 1,000 by default; takes an offset).
    Transactions,
}

impl ViewKind {
    /// Every view.
    pub const ALL: [ViewKind; 10] = [
        ViewKind::Kpis,
        ViewKind::RevenueTrend,
        ViewKind::CategoryPerformance,
        ViewKind::PaymentMix,
        ViewKind::StatusBreakdown,
        ViewKind::RegionBreakdown,
        ViewKind::TopProducts,
        ViewKind::TopCustomers,
        ViewKind::WeekdayHour,
        ViewKind::Transactions,
    ];

    /// The views of one dashboard refresh.
    pub(crate) const DASHBOARD: [ViewKind; 5] = [
        ViewKind::Kpis,
        ViewKind::RevenueTrend,
        ViewKind::CategoryPerformance,
        ViewKind::PaymentMix,
        ViewKind::StatusBreakdown,
    ];

    /// The view's name as the CLI and HTTP spell it (`revenue_trend`).
    pub fn as_str(self) -> &'static str {
        match self {
            ViewKind::Kpis => "kpis",
            ViewKind::RevenueTrend => "revenue_trend",
            ViewKind::CategoryPerformance => "category_performance",
            ViewKind::PaymentMix => "payment_mix",
            ViewKind::StatusBreakdown => "status_breakdown",
            ViewKind::RegionBreakdown => "region_breakdown",
            ViewKind::TopProducts => "top_products",
            ViewKind::TopCustomers => "top_customers",
            ViewKind::WeekdayHour => "weekday_hour",
            ViewKind::Transactions => "transactions",
        }
    }

    /// Default and largest row limit, for views that take one.
    pub(crate) fn limits(self) -> Option<(u64, u64)> {
        match self {
            ViewKind::TopProducts | ViewKind::TopCustomers => Some((10, 100_000)),
            ViewKind::Transactions => Some((1_000, 1_000_000)),
            _ => None,
        }
    }
}

impl fmt::Display for ViewKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ViewKind {
    type Err = AnalyticsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().replace('-', "_");
        ViewKind::ALL
            .into_iter()
            .find(|v| v.as_str() == norm)
            .ok_or_else(|| {
                AnalyticsError::BadRequest(format!(
                    "unknown view {s:?}; views: {}",
                    ViewKind::ALL.map(ViewKind::as_str).join(", ")
                ))
            })
    }
}

/// Most buckets a trend may have (granularity over range).
pub(crate) const MAX_BUCKETS: i64 = 100_000;
/// Longest "last N minutes" range: 100 years.
pub(crate) const MAX_LAST_MINUTES: i64 = 100 * 366 * 24 * 60;

/// Bucket width of a time series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One minute (`minute`; also `1m`, `min`).
    Minute,
    /// Five minutes (`5m`).
    FiveMinutes,
    /// Fifteen minutes (`15m`).
    FifteenMinutes,
    /// One hour (`hour`; also `1h`, `h`).
    Hour,
    /// One UTC day (`day`; also `1d`, `d`).
    Day,
    /// One week from Monday 00:00 UTC (`week`; also `1w`, `w`).
    Week,
}

impl Granularity {
    /// Every granularity, finest first.
    pub const ALL: [Granularity; 6] = [
        Granularity::Minute,
        Granularity::FiveMinutes,
        Granularity::FifteenMinutes,
        Granularity::Hour,
        Granularity::Day,
        Granularity::Week,
    ];

    /// The granularity's name in requests (`minute`, `5m`, `15m`, `hour`, `day`, `week`).
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::FiveMinutes => "5m",
            Granularity::FifteenMinutes => "15m",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Week => "week",
        }
    }

    /// Bucket width in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Granularity::Minute => 60,
            Granularity::FiveMinutes => 300,
            Granularity::FifteenMinutes => 900,
            Granularity::Hour => 3_600,
            Granularity::Day => 86_400,
            Granularity::Week => 7 * 86_400,
        }
    }

    /// The granularity chosen for a range of `span`: at most a few hundred
    /// points, read from the coarsest rollup grain that can give them.
    pub fn auto(span: Option<Duration>) -> Self {
        match span {
            Some(s) if s <= Duration::hours(2) => Granularity::Minute,
            Some(s) if s <= Duration::hours(6) => Granularity::FiveMinutes,
            Some(s) if s <= Duration::days(3) => Granularity::Hour,
            Some(s) if s <= Duration::days(180) => Granularity::Day,
            Some(_) => Granularity::Week,
            None => Granularity::Day,
        }
    }
}

impl FromStr for Granularity {
    type Err = AnalyticsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Granularity::ALL
            .into_iter()
            .find(|g| g.as_str() == s)
            .or(match s {
                "1m" | "min" => Some(Granularity::Minute),
                "1h" | "h" => Some(Granularity::Hour),
                "1d" | "d" => Some(Granularity::Day),
                "1w" | "w" => Some(Granularity::Week),
                _ => None,
            })
            .ok_or_else(|| {
                AnalyticsError::BadRequest(format!(
                    "granularity={s:?} is not one of auto, {}",
                    Granularity::ALL.map(Granularity::as_str).join(", ")
                ))
            })
    }
}

/// The time range of a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeRange {
    /// All data.
    #[default]
    All,
    /// The last `minutes` up to the newest ingested event (or the wall
    /// clock, when the newest event is stamped later).
    Last {
        /// How far back, minutes.
        minutes: i64,
    },
    /// `[from, to)`.
    Between {
        /// First instant included.
        from: DateTime<Utc>,
        /// First instant excluded.
        to: DateTime<Utc>,
    },
}

impl TimeRange {
    /// Parses `15m`, `1h`, `24h`, `7d`, `2w` or `all`.
    pub fn parse_last(s: &str) -> Result<Self, AnalyticsError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(TimeRange::All);
        }
        let bad = || {
            AnalyticsError::BadRequest(format!(
                "last={s:?} is not a duration like 15m, 1h, 24h, 7d, 2w or all"
            ))
        };
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
        let n: i64 = num.parse().map_err(|_| bad())?;
        let minutes = match unit {
            "m" | "min" => n,
            "h" => n.checked_mul(60).ok_or_else(bad)?,
            "d" => n.checked_mul(1_440).ok_or_else(bad)?,
            "w" => n.checked_mul(10_080).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        if !(1..=100 * 366 * 1_440).contains(&minutes) {
            return Err(bad());
        }
        Ok(TimeRange::Last { minutes })
    }
}

/// Filters on the dimensions; an empty list means "any". Within a list the
/// values are alternatives (OR); lists combine with AND.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Filters {
    /// The time range (all data by default).
    pub range: TimeRange,
    /// Product categories (`category=`).
    pub categories: Vec<String>,
    /// Payment methods (`payment_method=`).
    pub payment_methods: Vec<String>,
    /// Regions (`region=`).
    pub regions: Vec<String>,
    /// Channels (`channel=`): `web`, `mobile`, `store`.
    pub channels: Vec<String>,
    /// Order statuses (`status=`): `completed`, `pending`, `failed`, `refunded`.
    pub statuses: Vec<String>,
}

impl Filters {
    /// True when no dimension filter is set (the range may be anything).
    pub(crate) fn no_dimensions(&self) -> bool {
        self.categories.is_empty()
            && self.payment_methods.is_empty()
            && self.regions.is_empty()
            && self.channels.is_empty()
            && self.statuses.is_empty()
    }

    /// Sorts and de-duplicates the lists, so equal filters hash equally.
    fn normalize(&mut self) {
        for l in [
            &mut self.categories,
            &mut self.payment_methods,
            &mut self.regions,
            &mut self.channels,
            &mut self.statuses,
        ] {
            l.sort();
            l.dedup();
        }
    }
}

/// A checked request for one view.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ViewRequest {
    /// The view asked for.
    pub view: ViewKind,
    /// The range and dimension filters.
    pub filters: Filters,
    /// `None` = automatic for the range.
    pub granularity: Option<Granularity>,
    /// Row limit of `top_*` and `transactions` (others ignore it).
    pub limit: Option<u64>,
    /// Rows to skip (`transactions` only).
    pub offset: u64,
}

impl ViewRequest {
    /// A request for `view` over all data: no filters, automatic granularity,
    /// the view's default limit.
    pub fn new(view: ViewKind) -> Self {
        Self {
            view,
            filters: Filters::default(),
            granularity: None,
            limit: None,
            offset: 0,
        }
    }

    /// The request with its range replaced by `range`.
    pub fn with_range(mut self, range: TimeRange) -> Self {
        self.filters.range = range;
        self
    }

    /// The request with its filters (range included) replaced by `filters`.
    pub fn with_filters(mut self, filters: Filters) -> Self {
        self.filters = filters;
        self
    }

    /// The accepted keys of [`ViewRequest::parse`].
    pub const KEYS: [&'static str; 12] = [
        "last",
        "from",
        "to",
        "category",
        "payment_method",
        "region",
        "channel",
        "status",
        "granularity",
        "limit",
        "offset",
        "view",
    ];

    /// Builds a request from `key=value` pairs. List values may repeat the key
    /// or separate values with commas. Every error names the parameter.
    pub fn parse<'a>(
        view: ViewKind,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, AnalyticsError> {
        let bad = |m: String| AnalyticsError::BadRequest(m);
        let mut req = ViewRequest::new(view);
        let (mut last, mut from, mut to) = (None, None, None);
        for (k, v) in pairs {
            let list = |out: &mut Vec<String>| -> Result<(), AnalyticsError> {
                for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if item.len() > MAX_TEXT_LEN || item.chars().any(char::is_control) {
                        return Err(bad(format!(
                            "{k}={item:?}: values are at most {MAX_TEXT_LEN} bytes of printable text"
                        )));
                    }
                    out.push(item.to_owned());
                }
                Ok(())
            };
            match k {
                "last" => last = Some(TimeRange::parse_last(v)?),
                "from" => from = Some(parse_time("from", v)?),
                "to" => to = Some(parse_time("to", v)?),
                "category" => list(&mut req.filters.categories)?,
                "payment_method" | "payment" => list(&mut req.filters.payment_methods)?,
                "region" => list(&mut req.filters.regions)?,
                "channel" => list(&mut req.filters.channels)?,
                "status" => list(&mut req.filters.statuses)?,
                "granularity" => {
                    req.granularity = match v.trim() {
                        "auto" | "" => None,
                        g => Some(g.parse()?),
                    }
                }
                "limit" => {
                    req.limit = Some(
                        v.trim()
                            .parse()
                            .map_err(|_| bad(format!("limit={v:?} is not a whole number")))?,
                    )
                }
                "offset" => {
                    req.offset = v
                        .trim()
                        .parse()
                        .map_err(|_| bad(format!("offset={v:?} is not a whole number")))?
                }
                "view" => {}
                _ => {
                    return Err(bad(format!(
                        "unknown parameter {k:?}; accepted: {}",
                        Self::KEYS.join(", ")
                    )))
                }
            }
        }
        req.filters.range = match (last, from, to) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(bad("give either last or from/to, not both".into()))
            }
            (Some(r), None, None) => r,
            (None, Some(f), Some(t)) => TimeRange::Between { from: f, to: t },
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(bad("from and to go together".into()))
            }
            (None, None, None) => TimeRange::All,
        };
        req.check()?;
        Ok(req)
    }

    /// Checks ranges, limits and vocabularies; normalizes list order.
    pub fn check(&mut self) -> Result<(), AnalyticsError> {
        let bad = |m: String| Err(AnalyticsError::BadRequest(m));
        if let TimeRange::Between { from, to } = &self.filters.range {
            if from >= to {
                return bad(format!("from ({from}) must be before to ({to})"));
            }
        }
        if let TimeRange::Last { minutes } = self.filters.range {
            if !(1..=MAX_LAST_MINUTES).contains(&minutes) {
                return bad(format!(
                    "last = {minutes} minutes is out of range 1..={MAX_LAST_MINUTES} (100 years)"
                ));
            }
        }
        // A trend of a fixed granularity over a long range is a bucket per
        // step: capped, so one request cannot ask for millions of them.
        if let Some(g) = self.granularity {
            let secs = match &self.filters.range {
                TimeRange::Between { from, to } => Some((*to - *from).num_seconds()),
                TimeRange::Last { minutes } => Some(minutes.saturating_mul(60)),
                TimeRange::All => None,
            };
            if let Some(secs) = secs {
                let buckets = secs / g.seconds().max(1);
                if buckets > MAX_BUCKETS {
                    return bad(format!(
                        "granularity={} over this range makes {buckets} buckets; at most \
                         {MAX_BUCKETS}: choose a coarser granularity or a shorter range",
                        g.as_str()
                    ));
                }
            }
        }
        for s in &self.filters.statuses {
            if !Status::parse(s).is_known() {
                return bad(format!(
                    "status={s:?} is not one of completed, pending, failed, refunded"
                ));
            }
        }
        for c in &self.filters.channels {
            if !Channel::parse(c).is_known() {
                return bad(format!("channel={c:?} is not one of web, mobile, store"));
            }
        }
        match (self.view.limits(), self.limit) {
            (Some((_, max)), Some(l)) if l == 0 || l > max => {
                return bad(format!("limit={l} is out of range 1..={max}"))
            }
            (None, Some(_)) => return bad(format!("{} takes no limit", self.view)),
            _ => {}
        }
        if self.offset > 0 && self.view != ViewKind::Transactions {
            return bad(format!("{} takes no offset", self.view));
        }
        if self.granularity.is_some() && self.view != ViewKind::RevenueTrend {
            return bad(format!("{} takes no granularity", self.view));
        }
        self.filters.normalize();
        Ok(())
    }

    /// The effective row limit.
    pub(crate) fn effective_limit(&self) -> Option<u64> {
        self.view.limits().map(|(d, _)| self.limit.unwrap_or(d))
    }
}

fn parse_time(key: &str, v: &str) -> Result<DateTime<Utc>, AnalyticsError> {
    let v = v.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    Err(AnalyticsError::BadRequest(format!(
        "{key}={v:?} is not an RFC 3339 time (2026-11-24T10:00:00Z) or a date (2026-11-24)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(view: ViewKind, q: &[(&str, &str)]) -> Result<ViewRequest, AnalyticsError> {
        ViewRequest::parse(view, q.iter().copied())
    }

    #[test]
    fn parses_filters_and_ranges() {
        let r = parse(
            ViewKind::RevenueTrend,
            &[
                ("last", "24h"),
                ("category", "Books,Toys"),
                ("category", "Books"),
                ("status", "completed"),
                ("granularity", "15m"),
            ],
        )
        .unwrap();
        assert_eq!(r.filters.range, TimeRange::Last { minutes: 1_440 });
        assert_eq!(r.filters.categories, ["Books", "Toys"]);
        assert_eq!(r.granularity, Some(Granularity::FifteenMinutes));
        let r = parse(
            ViewKind::Kpis,
            &[("from", "2026-11-01"), ("to", "2026-11-02T00:00:00Z")],
        )
        .unwrap();
        assert!(matches!(r.filters.range, TimeRange::Between { .. }));
    }

    #[test]
    fn rejects_bad_parameters_by_name() {
        for (q, needle) in [
            (vec![("last", "3x")], "last="),
            (vec![("from", "yesterday"), ("to", "2026-01-01")], "from="),
            (vec![("from", "2026-01-02"), ("to", "2026-01-01")], "before"),
            (vec![("from", "2026-01-02")], "together"),
            (vec![("status", "lost")], "status="),
            (vec![("channel", "fax")], "channel="),
            (vec![("limit", "5")], "no limit"),
            (vec![("colour", "red")], "unknown parameter"),
            (vec![("granularity", "fortnight")], "granularity="),
            (vec![("category", "a\u{1}b")], "category="),
        ] {
            let e = parse(ViewKind::Kpis, &q).unwrap_err().to_string();
            assert!(e.contains(needle), "{q:?}: {e}");
        }
        let e = parse(ViewKind::Transactions, &[("limit", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("limit=0"), "{e}");
        assert!("nope".parse::<ViewKind>().is_err());
        assert_eq!(
            "top-products".parse::<ViewKind>().unwrap(),
            ViewKind::TopProducts
        );
    }

    #[test]
    fn auto_granularity_grows_with_the_range() {
        assert_eq!(
            Granularity::auto(Some(Duration::minutes(15))),
            Granularity::Minute
        );
        assert_eq!(
            Granularity::auto(Some(Duration::hours(24))),
            Granularity::Hour
        );
        assert_eq!(Granularity::auto(Some(Duration::days(7))), Granularity::Day);
        assert_eq!(
            Granularity::auto(Some(Duration::days(400))),
            Granularity::Week
        );
    }
}
