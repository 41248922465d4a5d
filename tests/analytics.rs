//! The analytics layer against a real PostgreSQL and Redis.
//!
//! Every view is compared with an independent SQL computation over the raw
//! `transactions` and `sessions` rows (never the rollups the views read), on
//! ~3 days of seeded data, for a range that cuts across minute, hour and day
//! grains, for all data, and with dimension filters.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use polars::prelude::{AnyValue, DataFrame};
use salespulse::analytics::{
    Analytics, Filters, Granularity, LoadMode, TimeRange, ViewKind, ViewRequest,
};
use salespulse::cache::{FrameCache, Outcome};
use salespulse::event::Event;
use salespulse::store::Store;

use common::*;

type Rows = Vec<Vec<Option<String>>>;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// ~12k events: ~2.8 days from 2026-03-02 00:00 UTC.
async fn seeded(tag: &str) -> (TestDb, HashMap<i32, i64>, salespulse::generator::Generator) {
    let db = TestDb::new(tag).await;
    let mut g = sparse_generator(7, 150.0);
    let events: Vec<Event> = (0..12_000).map(|_| g.next_event()).collect();
    let mut offsets = HashMap::new();
    write_events(&db.store, events, 1_500, &mut offsets).await;
    (db, offsets, g)
}

fn analytics(store: &Store, cache: FrameCache) -> Analytics {
    Analytics::new(store.pool().clone(), Arc::new(cache), LoadMode::Rows)
}

fn no_cache(store: &Store) -> Analytics {
    analytics(store, FrameCache::disabled())
}

fn cell(v: AnyValue) -> Option<String> {
    match v {
        AnyValue::Null => None,
        AnyValue::Int64(i) => Some(i.to_string()),
        AnyValue::Float64(f) => Some(format!("{f:.4}")),
        AnyValue::String(s) => Some(s.to_owned()),
        AnyValue::StringOwned(s) => Some(s.to_string()),
        AnyValue::Datetime(us, _, _) | AnyValue::DatetimeOwned(us, _, _) => Some(us.to_string()),
        other => panic!("unexpected value {other:?}"),
    }
}

fn frame_rows(df: &DataFrame) -> Rows {
    (0..df.height())
        .map(|i| {
            df.columns()
                .iter()
                .map(|c| cell(c.get(i).unwrap()))
                .collect()
        })
        .collect()
}

async fn reference(store: &Store, sql: &str) -> Rows {
    use sqlx::Row;
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|e| panic!("reference query failed: {e}\n{sql}"));
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i).unwrap())
                .collect()
        })
        .collect()
}

/// The WHERE fragments of a range and filters, over the raw tables.
struct Where {
    tx: String,
    sessions: String,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

fn lit(v: &[String]) -> String {
    v.iter()
        .map(|s| format!("'{}'", s.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(",")
}

fn where_of(f: &Filters, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Where {
    let mut tx = String::from("TRUE");
    let mut sessions = String::from("TRUE");
    if let (Some(a), Some(b)) = (from, to) {
        tx += &format!(
            " AND occurred_at >= '{}' AND occurred_at < '{}'",
            a.to_rfc3339(),
            b.to_rfc3339()
        );
        sessions += &format!(
            " AND started_at >= '{}' AND started_at < '{}'",
            a.to_rfc3339(),
            b.to_rfc3339()
        );
    }
    for (col, v, both) in [
        ("category", &f.categories, false),
        ("payment_method", &f.payment_methods, false),
        ("status", &f.statuses, false),
        ("region", &f.regions, true),
        ("channel", &f.channels, true),
    ] {
        if !v.is_empty() {
            tx += &format!(" AND {col} IN ({})", lit(v));
            if both {
                sessions += &format!(" AND {col} IN ({})", lit(v));
            }
        }
    }
    Where {
        tx,
        sessions,
        from,
        to,
    }
}

const C: &str = "FILTER (WHERE status = 'completed')";

fn us(t: Option<DateTime<Utc>>) -> String {
    match t {
        Some(t) => format!("'{}'", t.timestamp_micros()),
        None => "NULL".into(),
    }
}

fn kpis_sql(w: &Where, label: &str) -> String {
    format!(
        "SELECT '{label}', {f}, {to},
            round(coalesce(sum(total_amount) {C}, 0), 4)::text, count(*)::text,
            (count(*) {C})::text, coalesce(sum(quantity) {C}, 0)::text,
            round(sum(total_amount) {C} / nullif(count(*) {C}, 0), 4)::text,
            (SELECT count(*) FROM sessions WHERE {s})::text,
            round(count(*)::numeric / nullif((SELECT count(*) FROM sessions WHERE {s}), 0), 4)::text,
            (count(*) FILTER (WHERE status = 'refunded'))::text,
            round((count(*) FILTER (WHERE status = 'refunded'))::numeric / nullif(count(*), 0), 4)::text,
            count(DISTINCT customer_id)::text
         FROM transactions WHERE {tx}",
        f = us(w.from),
        to = us(w.to),
        s = w.sessions,
        tx = w.tx,
    )
}

fn trend_sql(w: &Where, g: &str, step: &str) -> String {
    let b = |col: &str| {
        if g.ends_with("minutes") {
            format!("date_bin('{g}', {col}, TIMESTAMPTZ '2000-01-01 00:00:00+00')")
        } else {
            format!("date_trunc('{g}', {col}, 'UTC')")
        }
    };
    format!(
        "WITH s AS (SELECT {bt} b, sum(total_amount) {C} rev, count(*) o, count(*) {C} c,
                           sum(quantity) {C} u
                    FROM transactions WHERE {tx} GROUP BY 1),
              v AS (SELECT {bs} b, count(*) n FROM sessions WHERE {s} GROUP BY 1)
         SELECT (extract(epoch FROM g.b) * 1000000)::int8::text, round(coalesce(s.rev, 0), 4)::text,
            coalesce(s.o, 0)::text, coalesce(s.c, 0)::text, coalesce(s.u, 0)::text,
            round(s.rev / nullif(s.c, 0), 4)::text, coalesce(v.n, 0)::text,
            round(coalesce(s.o, 0)::numeric / nullif(v.n, 0), 4)::text
         FROM generate_series({lo}, {hi}, interval '{step}') g(b)
         LEFT JOIN s ON s.b = g.b LEFT JOIN v ON v.b = g.b ORDER BY g.b",
        bt = b("occurred_at"),
        bs = b("started_at"),
        tx = w.tx,
        s = w.sessions,
        lo = b(&format!("'{}'::timestamptz", w.from.unwrap().to_rfc3339())),
        hi = b(&format!(
            "('{}'::timestamptz - interval '1 microsecond')",
            w.to.unwrap().to_rfc3339()
        )),
    )
}

fn reference_sql(view: ViewKind, w: &Where, limit: u64) -> String {
    let tx = &w.tx;
    match view {
        ViewKind::Kpis => unreachable!(),
        ViewKind::RevenueTrend => unreachable!(),
        ViewKind::CategoryPerformance => format!(
            "SELECT category, round(coalesce(rev, 0), 4)::text, o::text, coalesce(c, 0)::text,
                coalesce(u, 0)::text, round(rev / nullif(c, 0), 4)::text,
                round(rev / nullif(sum(rev) OVER (), 0), 4)::text
             FROM (SELECT category, sum(total_amount) {C} rev, count(*) o, count(*) {C} c,
                          sum(quantity) {C} u FROM transactions WHERE {tx} GROUP BY 1) x
             ORDER BY coalesce(rev, 0) DESC, category"
        ),
        ViewKind::PaymentMix => format!(
            "SELECT payment_method, o::text, c::text, fl::text, round(coalesce(rev, 0), 4)::text,
                round(o::numeric / sum(o) OVER (), 4)::text,
                round(rev / nullif(sum(rev) OVER (), 0), 4)::text,
                round(fl::numeric / o, 4)::text
             FROM (SELECT payment_method, count(*) o, count(*) {C} c,
                          count(*) FILTER (WHERE status = 'failed') fl, sum(total_amount) {C} rev
                   FROM transactions WHERE {tx} GROUP BY 1) x
             ORDER BY x.o DESC, payment_method"
        ),
        ViewKind::StatusBreakdown => format!(
            "SELECT status, o::text, round(a, 4)::text, u::text,
                round(o::numeric / sum(o) OVER (), 4)::text,
                round(a / nullif(sum(a) OVER (), 0), 4)::text
             FROM (SELECT status, count(*) o, sum(total_amount) a, sum(quantity) u
                   FROM transactions WHERE {tx} GROUP BY 1) x
             ORDER BY x.o DESC, status"
        ),
        ViewKind::RegionBreakdown => format!(
            "SELECT region, round(coalesce(s.rev, 0), 4)::text, coalesce(s.o, 0)::text,
                coalesce(s.c, 0)::text, coalesce(v.n, 0)::text,
                round(coalesce(s.o, 0)::numeric / nullif(v.n, 0), 4)::text,
                round(s.rev / nullif(sum(s.rev) OVER (), 0), 4)::text
             FROM (SELECT region, sum(total_amount) {C} rev, count(*) o, count(*) {C} c
                   FROM transactions WHERE {tx} GROUP BY 1) s
             FULL JOIN (SELECT region, count(*) n FROM sessions WHERE {s} GROUP BY 1) v USING (region)
             ORDER BY coalesce(s.rev, 0) DESC, region",
            s = w.sessions
        ),
        ViewKind::TopProducts => format!(
            "SELECT t.product_id, p.name, t.category, t.o::text, t.u::text, round(t.rev, 4)::text
             FROM (SELECT product_id, min(category) category, count(*) o, sum(quantity) u,
                          coalesce(sum(total_amount) {C}, 0) rev
                   FROM transactions WHERE {tx} GROUP BY 1) t JOIN products p USING (product_id)
             ORDER BY t.rev DESC, t.product_id LIMIT {limit}"
        ),
        ViewKind::TopCustomers => format!(
            "SELECT customer_id, min(region), count(*)::text, (count(*) {C})::text,
                sum(quantity)::text, round(coalesce(sum(total_amount) {C}, 0), 4)::text
             FROM transactions WHERE {tx} GROUP BY 1
             ORDER BY coalesce(sum(total_amount) {C}, 0) DESC, customer_id LIMIT {limit}"
        ),
        ViewKind::WeekdayHour => format!(
            "WITH x AS (SELECT extract(isodow FROM occurred_at AT TIME ZONE 'UTC') wd,
                               extract(hour FROM occurred_at AT TIME ZONE 'UTC') hr,
                               count(*) o, sum(total_amount) {C} rev
                        FROM transactions WHERE {tx} GROUP BY 1, 2)
             SELECT d::text, h::text, coalesce(o, 0)::text, round(coalesce(rev, 0), 4)::text
             FROM generate_series(1, 7) d CROSS JOIN generate_series(0, 23) h
             LEFT JOIN x ON x.wd = d AND x.hr = h ORDER BY d.d, h.h"
        ),
        ViewKind::Transactions => format!(
            "SELECT transaction_id::text, (extract(epoch FROM occurred_at) * 1000000)::int8::text,
                customer_id, session_id, product_id, category, quantity::text,
                round(unit_price, 4)::text, round(discount, 4)::text, round(total_amount, 4)::text,
                currency::text, payment_method, status, region, country::text, channel
             FROM transactions WHERE {tx}
             ORDER BY occurred_at DESC, transaction_id DESC LIMIT {limit} OFFSET 10"
        ),
    }
}

async fn assert_view(a: &Analytics, store: &Store, req: ViewRequest, expected_sql: &str) {
    let got = a.view(&req).await.unwrap();
    let want = reference(store, expected_sql).await;
    let have = frame_rows(&got.frame);
    assert!(!want.is_empty(), "{}: reference has no rows", req.view);
    assert_eq!(
        have.len(),
        want.len(),
        "{} row count, request {req:?}",
        req.view
    );
    for (i, (h, w)) in have.iter().zip(&want).enumerate() {
        assert!(
            same_row(h, w),
            "{} row {i} differs, request {req:?}\n  view: {h:?}\n   sql: {w:?}",
            req.view
        );
    }
}

/// Cells are equal as text, or both numbers within the 4-decimal rounding
/// of each side (a float64 ratio and a numeric one can round a final 5
/// differently).
fn same_row(h: &[Option<String>], w: &[Option<String>]) -> bool {
    h.len() == w.len()
        && h.iter().zip(w).all(|(a, b)| match (a, b) {
            (Some(a), Some(b)) if a != b => match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(x), Ok(y)) => (x - y).abs() <= 1.5e-4,
                _ => false,
            },
            _ => a == b,
        })
}

async fn all_views_match(a: &Analytics, store: &Store, f: Filters) {
    let (from, to) = match &f.range {
        TimeRange::Between { from, to } => (Some(*from), Some(*to)),
        _ => (None, None),
    };
    let w = where_of(&f, from, to);
    let req = |v: ViewKind| ViewRequest::new(v).with_filters(f.clone());

    // kpis: current and previous period (or no previous for all data).
    let prev = match (from, to) {
        (Some(a), Some(b)) => kpis_sql(&where_of(&f, Some(a - (b - a)), Some(a)), "previous"),
        _ => "SELECT 'previous', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
              NULL, NULL"
            .into(),
    };
    assert_view(
        a,
        store,
        req(ViewKind::Kpis),
        &format!("{} UNION ALL {prev}", kpis_sql(&w, "current")),
    )
    .await;

    if from.is_some() {
        for (g, name, step) in [
            (Granularity::Hour, "hour", "1 hour"),
            (Granularity::FifteenMinutes, "15 minutes", "15 minutes"),
            (Granularity::Day, "day", "1 day"),
        ] {
            let mut r = req(ViewKind::RevenueTrend);
            r.granularity = Some(g);
            assert_view(a, store, r, &trend_sql(&w, name, step)).await;
        }
    }
    for v in [
        ViewKind::CategoryPerformance,
        ViewKind::PaymentMix,
        ViewKind::StatusBreakdown,
        ViewKind::RegionBreakdown,
        ViewKind::TopProducts,
        ViewKind::TopCustomers,
        ViewKind::WeekdayHour,
    ] {
        assert_view(a, store, req(v), &reference_sql(v, &w, 10)).await;
    }
    let mut r = req(ViewKind::Transactions);
    r.limit = Some(50);
    r.offset = 10;
    assert_view(a, store, r, &reference_sql(ViewKind::Transactions, &w, 50)).await;
}

fn cross_grain_range() -> TimeRange {
    // Minute edges, hour edges and one whole day in the middle.
    TimeRange::Between {
        from: t("2026-03-02T10:13:00Z"),
        to: t("2026-03-04T15:47:00Z"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_matches_sql_over_raw_rows() {
    let (db, _, _) = seeded("views").await;
    let a = no_cache(&db.store);
    all_views_match(
        &a,
        &db.store,
        Filters {
            range: cross_grain_range(),
            ..Filters::default()
        },
    )
    .await;
    all_views_match(&a, &db.store, Filters::default()).await;
    // Dimension filters (two values for some, one for others).
    let cats: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT category FROM transactions ORDER BY 1 LIMIT 2")
            .fetch_all(db.store.pool())
            .await
            .unwrap();
    let region: String = sqlx::query_scalar("SELECT min(region) FROM transactions")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    let f = Filters {
        range: cross_grain_range(),
        categories: cats,
        statuses: vec!["completed".into(), "refunded".into()],
        channels: vec!["web".into(), "mobile".into()],
        regions: vec![region],
        payment_methods: vec![],
    };
    all_views_match(&a, &db.store, f).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_loaders_give_the_same_frames() {
    let (db, _, _) = seeded("loaders").await;
    let rows = no_cache(&db.store);
    let copy = no_cache(&db.store).with_load_mode(LoadMode::Copy);
    for v in ViewKind::ALL {
        for range in [TimeRange::All, cross_grain_range()] {
            let mut req = ViewRequest::new(v).with_range(range);
            if v == ViewKind::Transactions {
                req.limit = Some(5_000);
            }
            let a = rows.view(&req).await.unwrap().frame;
            let b = copy.view(&req).await.unwrap().frame;
            assert_eq!(a.schema(), b.schema(), "{v}");
            assert!(
                a.equals_missing(&b),
                "{v}: rows and COPY loaders differ\n{a}\n{b}"
            );
            assert!(a.height() > 0, "{v}");
        }
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_ranges_end_at_the_newest_event() {
    let (db, _, _) = seeded("relative").await;
    let a = no_cache(&db.store);
    let newest: DateTime<Utc> = sqlx::query_scalar(
        "SELECT greatest((SELECT max(occurred_at) FROM transactions), (SELECT max(started_at) FROM sessions))",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    let r = a
        .view(&ViewRequest::new(ViewKind::RevenueTrend).with_range(TimeRange::Last { minutes: 60 }))
        .await
        .unwrap();
    let span = r.span.unwrap();
    assert!(
        span.from <= newest && newest < span.to,
        "{span:?} vs {newest}"
    );
    assert_eq!(span.len(), chrono::Duration::minutes(60));
    assert_eq!(r.granularity, Some(Granularity::Minute));
    assert_eq!(r.frame.height(), 60);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_from_a_clock_ahead_cannot_move_relative_ranges_past_now() {
    // Data from a clock ahead of ours (stored directly: ingest would now
    // dead-letter it) must not push "the last hour" past the wall clock.
    let db = TestDb::new("skew").await;
    let mut g = salespulse::generator::Generator::new(
        salespulse::generator::GeneratorParams::builtin(),
        3,
        salespulse::generator::Clock::Simulated(Utc::now() - chrono::Duration::minutes(30)),
    )
    .unwrap();
    let mut events: Vec<Event> = (0..200).map(|_| g.next_event()).collect();
    let mut ahead = events
        .iter()
        .find_map(|e| match e {
            Event::Sale(s) => Some(s.clone()),
            Event::Session(_) => None,
        })
        .unwrap();
    ahead.transaction_id = uuid::Uuid::new_v4();
    ahead.occurred_at = Utc::now() + chrono::Duration::hours(23);
    events.push(Event::Sale(ahead));
    let mut offsets = HashMap::new();
    write_events(&db.store, events, 500, &mut offsets).await;
    let a = no_cache(&db.store);
    let before = Utc::now();
    let r = a
        .view(&ViewRequest::new(ViewKind::Kpis).with_range(TimeRange::Last { minutes: 60 }))
        .await
        .unwrap();
    let span = r.span.unwrap();
    assert!(
        span.to <= Utc::now() + chrono::Duration::minutes(1) && span.to > before,
        "the last hour ends at the wall clock, not 23 h ahead: {span:?}"
    );
    // Today's orders are in it (all but the one from the future).
    let in_range: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM transactions WHERE occurred_at >= $1 AND occurred_at < $2",
    )
    .bind(span.from)
    .bind(span.to)
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert!(in_range > 1, "{in_range}");
    assert_eq!(orders(&r.frame), in_range);
    db.drop().await;
}

// ---- cache -------------------------------------------------------------

fn redis_cache(ttl: Duration) -> FrameCache {
    FrameCache::new(&redis_url(), ttl).unwrap()
}

fn orders(df: &DataFrame) -> i64 {
    df.column("orders").unwrap().i64().unwrap().get(0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_misses_and_expires() {
    let (db, _, _) = seeded("cachettl").await;
    let a = analytics(&db.store, redis_cache(Duration::from_millis(1_500)));
    let req = ViewRequest::new(ViewKind::CategoryPerformance).with_range(cross_grain_range());
    let first = a.view(&req).await.unwrap();
    assert_eq!(first.outcome, Outcome::Miss);
    let second = a.view(&req).await.unwrap();
    assert_eq!(second.outcome, Outcome::Hit);
    assert!(first.frame.equals_missing(&second.frame));
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    assert_eq!(
        a.view(&req).await.unwrap().outcome,
        Outcome::Miss,
        "TTL passed"
    );
    let c = a.cache().counters()["category_performance"].clone();
    assert_eq!((c.hits, c.misses, c.errors), (1, 2, 0));
    assert_eq!(a.timings()["category_performance"].computations, 2);
    db.drop().await;
}

/// With `with_versions_every` (the HTTP API's), the data versions are read
/// once per interval: a view over live data is computed once per interval
/// however many commits land, and moves on after it; without, a commit
/// shows at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_read_once_per_interval_bound_recomputation_and_staleness() {
    let (db, mut offsets, mut g) = seeded("versions_every").await;
    let held = analytics(&db.store, redis_cache(Duration::from_secs(60)))
        .with_versions_every(Duration::from_secs(3_600));
    let brief = no_cache(&db.store).with_versions_every(Duration::from_millis(300));
    let exact = no_cache(&db.store);
    let req = ViewRequest::new(ViewKind::Kpis).with_filters(Filters {
        range: TimeRange::Last { minutes: 60 },
        ..Filters::default()
    });
    let first = held.view(&req).await.unwrap();
    assert_eq!(first.outcome, Outcome::Miss);
    let (v_held, v_brief) = (
        held.versions().await.unwrap(),
        brief.versions().await.unwrap(),
    );
    let more: Vec<Event> = (0..300).map(|_| g.next_event()).collect();
    write_events(&db.store, more, 5_000, &mut offsets).await;
    // Within the interval: the same versions, so the same frame, cached.
    assert_eq!(held.versions().await.unwrap(), v_held);
    let again = held.view(&req).await.unwrap();
    assert_eq!(again.outcome, Outcome::Hit);
    assert!(again.frame.equals_missing(&first.frame));
    // Read for every request: the commit shows at once.
    assert!(exact.versions().await.unwrap().commits > v_held.commits);
    // After the interval: the new commit.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(brief.versions().await.unwrap().commits > v_brief.commits);
    db.drop().await;
}

/// Many requests at once with no versions read yet: one read serves them
/// all, and a failing read fails them all at once instead of being tried
/// again by each in turn (a minute of queueing when the database is away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_version_read_and_its_failure() {
    let (db, _, _) = seeded("versions_herd").await;
    let every = Duration::from_secs(1);
    let ok = no_cache(&db.store).with_versions_every(every);
    let got = futures::future::join_all((0..40).map(|_| ok.versions())).await;
    let first = got[0].as_ref().unwrap().clone();
    assert!(got.iter().all(|v| v.as_ref().ok() == Some(&first)));
    assert_eq!(ok.versions_reads(), 1);
    // A database that is not there: one failed read, every caller told.
    let url = salespulse::store::with_database(&pg_server_url(), "salespulse_no_such_db").unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&url)
        .unwrap();
    let away = Analytics::new(pool, Arc::new(FrameCache::disabled()), LoadMode::Rows)
        .with_versions_every(every);
    let t = std::time::Instant::now();
    let got = futures::future::join_all((0..40).map(|_| away.versions())).await;
    assert!(got.iter().all(|r| r.is_err()));
    let e = got[0].as_ref().unwrap_err().to_string();
    assert!(e.contains("salespulse_no_such_db"), "{e}");
    assert_eq!(away.versions_reads(), 1, "{e}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    // The next request after a failure reads again.
    assert!(away.versions().await.is_err());
    assert_eq!(away.versions_reads(), 2);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_data_invalidates_the_open_bucket_only() {
    let (db, mut offsets, mut g) = seeded("cacheinval").await;
    let a = analytics(&db.store, redis_cache(Duration::from_secs(600)));
    let fresh = no_cache(&db.store);
    // A fixed range that reaches past the newest event: the open bucket.
    let open = ViewRequest::new(ViewKind::Kpis).with_range(TimeRange::Between {
        from: t("2026-03-04T12:00:00Z"),
        to: t("2026-03-06T00:00:00Z"),
    });
    let closed = ViewRequest::new(ViewKind::Kpis).with_range(cross_grain_range());
    let v = a.versions().await.unwrap();
    assert!(
        v.closed_until.unwrap() >= t("2026-03-04T15:47:00Z"),
        "{v:?}"
    );

    let open1 = a.view(&open).await.unwrap();
    let closed1 = a.view(&closed).await.unwrap();
    assert_eq!(
        (open1.outcome, closed1.outcome),
        (Outcome::Miss, Outcome::Miss)
    );
    assert_eq!(a.view(&open).await.unwrap().outcome, Outcome::Hit);

    // New, on-time events: the open frame is recomputed, the closed one kept.
    let more: Vec<Event> = (0..600).map(|_| g.next_event()).collect();
    let new_sales = more.iter().filter(|e| matches!(e, Event::Sale(_))).count();
    assert!(new_sales > 0);
    write_events(&db.store, more, 600, &mut offsets).await;
    let open2 = a.view(&open).await.unwrap();
    assert_eq!(
        open2.outcome,
        Outcome::Miss,
        "open bucket must be invalidated"
    );
    let want = fresh.view(&open).await.unwrap().frame;
    assert!(open2.frame.equals_missing(&want));
    assert_ne!(orders(&open2.frame), orders(&open1.frame));
    let closed2 = a.view(&closed).await.unwrap();
    assert_eq!(
        closed2.outcome,
        Outcome::Hit,
        "closed buckets must stay cached"
    );
    assert!(closed2
        .frame
        .equals_missing(&fresh.view(&closed).await.unwrap().frame));

    // A late event inside the closed range: that frame is recomputed too.
    let Event::Sale(mut late) = (0..)
        .map(|_| g.next_event())
        .find(|e| matches!(e, Event::Sale(_)))
        .unwrap()
    else {
        unreachable!()
    };
    late.transaction_id = uuid::Uuid::new_v4();
    late.occurred_at = t("2026-03-03T12:00:00Z");
    write_events(&db.store, vec![Event::Sale(late)], 1, &mut offsets).await;
    let closed3 = a.view(&closed).await.unwrap();
    assert_eq!(
        closed3.outcome,
        Outcome::Miss,
        "a late write must invalidate closed frames"
    );
    assert_eq!(orders(&closed3.frame), orders(&closed1.frame) + 1);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_compute_once_across_processes() {
    let (db, _, _) = seeded("cacheflight").await;
    // Two caches = two processes: they share only Redis.
    let a = analytics(&db.store, redis_cache(Duration::from_secs(600)));
    let b = analytics(&db.store, redis_cache(Duration::from_secs(600)));
    let req = ViewRequest::new(ViewKind::TopCustomers).with_range(cross_grain_range());
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (x, req) = (if i % 2 == 0 { a.clone() } else { b.clone() }, req.clone());
            tokio::spawn(async move { x.view(&req).await.unwrap() })
        })
        .collect();
    let results: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let computations =
        a.timings()["top_customers"].computations + b.timings()["top_customers"].computations;
    assert_eq!(computations, 1, "50 concurrent requests must compute once");
    assert_eq!(
        results
            .iter()
            .filter(|r| r.outcome == Outcome::Miss)
            .count(),
        1
    );
    for r in &results {
        assert!(r.frame.equals_missing(&results[0].frame));
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_means_bypass_with_correct_answers() {
    let (db, _, _) = seeded("cachedown").await;
    let port = free_port();
    let redis = PrivateRedis::start(port);
    let a = analytics(
        &db.store,
        FrameCache::new(&redis.url(), Duration::from_secs(600)).unwrap(),
    );
    let fresh = no_cache(&db.store);
    let req = ViewRequest::new(ViewKind::PaymentMix).with_range(cross_grain_range());
    let want = fresh.view(&req).await.unwrap().frame;
    assert_eq!(a.view(&req).await.unwrap().outcome, Outcome::Miss);
    assert_eq!(a.view(&req).await.unwrap().outcome, Outcome::Hit);
    assert!(a.cache().status().error.is_none());

    drop(redis); // Redis stops.
    for _ in 0..3 {
        let r = a.view(&req).await.unwrap();
        assert_eq!(r.outcome, Outcome::Bypass);
        assert!(r.frame.equals_missing(&want), "answers must stay correct");
        assert!(
            r.elapsed < Duration::from_secs(3),
            "bypass took {:?}",
            r.elapsed
        );
    }
    let status = a.cache().status();
    assert!(
        status.error.is_some(),
        "status must say Redis is down: {status:?}"
    );
    assert!(a.cache().counters()["payment_mix"].errors >= 1);

    // Redis comes back (empty): after the back-off the cache works again.
    let _redis = PrivateRedis::start(port);
    wait_until(Duration::from_secs(15), "the cache to recover", || async {
        a.view(&req).await.unwrap().outcome != Outcome::Bypass
    })
    .await;
    assert_eq!(a.view(&req).await.unwrap().outcome, Outcome::Hit);
    assert!(a.cache().status().error.is_none());
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_sharing_one_redis_do_not_share_frames() {
    let (db1, _, _) = seeded("cacheshare1").await;
    let db2 = TestDb::new("cacheshare2").await;
    let a = analytics(&db1.store, redis_cache(Duration::from_secs(600)));
    let b = analytics(&db2.store, redis_cache(Duration::from_secs(600)));
    let req = ViewRequest::new(ViewKind::Kpis);
    assert!(orders(&a.view(&req).await.unwrap().frame) > 0);
    let r = b.view(&req).await.unwrap();
    assert_eq!(r.outcome, Outcome::Miss);
    assert_eq!(orders(&r.frame), 0);
    db1.drop().await;
    db2.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_rejected_before_the_database() {
    let db = TestDb::new("badreq").await;
    let a = no_cache(&db.store);
    let mut req = ViewRequest::new(ViewKind::Kpis);
    req.filters.statuses = vec!["stolen".into()];
    let e = a.view(&req).await.unwrap_err();
    assert!(
        e.is_bad_request() && e.to_string().contains("stolen"),
        "{e}"
    );
    let mut req = ViewRequest::new(ViewKind::TopProducts);
    req.limit = Some(0);
    assert!(a.view(&req).await.unwrap_err().is_bad_request());
    // Quotes and backslashes in a filter are data, not SQL.
    let mut req = ViewRequest::new(ViewKind::CategoryPerformance);
    req.filters.categories = vec!["x') OR TRUE --".into(), "a\\'b".into()];
    assert_eq!(a.view(&req).await.unwrap().frame.height(), 0);
    db.drop().await;
}

/// Every key of a private Redis under `pattern`.
async fn redis_keys(c: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_mutated_and_locked_cache_values_give_correct_answers() {
    let (db, _, _) = seeded("cacheforge").await;
    let redis = PrivateRedis::start(free_port());
    let a = analytics(
        &db.store,
        FrameCache::new(&redis.url(), Duration::from_secs(600)).unwrap(),
    );
    let fresh = no_cache(&db.store);
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let kpis = ViewRequest::new(ViewKind::Kpis).with_range(cross_grain_range());
    let mix = ViewRequest::new(ViewKind::PaymentMix).with_range(cross_grain_range());
    let (want_kpis, want_mix) = (
        fresh.view(&kpis).await.unwrap().frame,
        fresh.view(&mix).await.unwrap().frame,
    );
    assert_eq!(a.view(&kpis).await.unwrap().outcome, Outcome::Miss);
    assert_eq!(a.view(&mix).await.unwrap().outcome, Outcome::Miss);
    let kpis_key = redis_keys(&mut c, "salespulse:frame:kpis:*")
        .await
        .pop()
        .unwrap();
    let mix_key = redis_keys(&mut c, "salespulse:frame:payment_mix:*")
        .await
        .pop()
        .unwrap();

    // A value copied from another key is not served as this view.
    let mix_value: Vec<u8> = redis::cmd("GET")
        .arg(&mix_key)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&kpis_key)
        .arg(&mix_value)
        .query_async(&mut c)
        .await
        .unwrap();
    let r = a.view(&kpis).await.unwrap();
    assert_eq!(r.outcome, Outcome::Miss, "a forged value must not be a hit");
    assert!(r.frame.equals_missing(&want_kpis));

    // Mutated values (and a bare, unsealed frame) never panic, never answer
    // wrongly.
    let good: Vec<u8> = redis::cmd("GET")
        .arg(&mix_key)
        .query_async(&mut c)
        .await
        .unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut bad_values = vec![
        Vec::new(),
        b"SPF1".to_vec(),
        good.get(36..).unwrap().to_vec(),
    ];
    for _ in 0..60 {
        let mut b = good.clone();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = (rng as usize) % b.len();
        b[i] ^= 1 << (rng % 8);
        bad_values.push(b);
    }
    for b in bad_values {
        let _: () = redis::cmd("SET")
            .arg(&mix_key)
            .arg(b)
            .query_async(&mut c)
            .await
            .unwrap();
        let r = a.view(&mix).await.unwrap();
        assert_ne!(r.outcome, Outcome::Hit);
        assert!(r.frame.equals_missing(&want_mix));
    }

    // A planted lock with no expiry costs one bounded wait, not 30 s a query.
    let _: () = redis::cmd("DEL")
        .arg(&kpis_key)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{kpis_key}:lock"))
        .arg("someone-else")
        .query_async(&mut c)
        .await
        .unwrap();
    let t = std::time::Instant::now();
    let r = a.view(&kpis).await.unwrap();
    assert!(r.frame.equals_missing(&want_kpis));
    assert!(
        t.elapsed() < salespulse::cache::LOCK_WAIT + Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    let t = std::time::Instant::now();
    let r = a.view(&kpis).await.unwrap();
    assert_eq!(r.outcome, Outcome::Hit);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    db.drop().await;
}

/// A query cancelled by the statement timeout says so and how to raise it;
/// other database errors read as PostgreSQL wrote them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_the_statement_timeout_says_how_to_raise_it() {
    let db = TestDb::new("stmt_timeout").await;
    let store = Store::connect(&db.url, 1, Duration::from_millis(50))
        .await
        .unwrap();
    let e = sqlx::query("SELECT pg_sleep(2)")
        .execute(store.pool())
        .await
        .unwrap_err();
    let msg = salespulse::analytics::AnalyticsError::from(e).to_string();
    assert!(
        msg.contains("canceling statement due to statement timeout"),
        "{msg}"
    );
    assert!(msg.contains("raise pg_statement_timeout_ms"), "{msg}");
    let e = sqlx::query("SELECT * FROM no_such_table")
        .execute(store.pool())
        .await
        .unwrap_err();
    let msg = salespulse::analytics::AnalyticsError::from(e).to_string();
    assert!(msg.starts_with("database: "), "{msg}");
    assert!(!msg.contains("pg_statement_timeout_ms"), "{msg}");
    store.pool().close().await;
    db.drop().await;
}

/// A cached frame is answered while every connection of the pool is held
/// (as when computations or ingest occupy it): data versions are read on a
/// connection of their own, so the answer does not wait for the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_view_answers_while_the_pool_is_exhausted() {
    let (db, _, _) = seeded("pooldry").await;
    let store = Store::connect(&db.url, 2, Duration::from_secs(30))
        .await
        .unwrap();
    let a = analytics(&store, redis_cache(Duration::from_secs(60)));
    let req = ViewRequest::new(ViewKind::CategoryPerformance).with_range(cross_grain_range());
    let first = a.view(&req).await.unwrap();
    assert_eq!(first.outcome, Outcome::Miss);
    // Hold every connection of the views' pool.
    let held = [
        store.pool().acquire().await.unwrap(),
        store.pool().acquire().await.unwrap(),
    ];
    let t = std::time::Instant::now();
    let again = tokio::time::timeout(Duration::from_secs(5), a.view(&req))
        .await
        .expect("a cached view must not wait for the pool")
        .unwrap();
    assert_eq!(again.outcome, Outcome::Hit);
    assert_eq!(again.tag, first.tag, "same frame, same tag");
    assert!(first.frame.equals_missing(&again.frame));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(held);
    store.pool().close().await;
    db.drop().await;
}

/// A category and a region only the tests' late copies carry, spelled to
/// break SQL quoting if any path pasted them in raw.
const GARDEN: &str = "Garden's \\ \"best\" %_ E'x'";
const ANTARCTICA: &str = "Ant'arctica\\'; --";

/// Distinct customers (the `customers` of `kpis`, current and previous
/// period) are exact over any range while orders arrive late, out of order
/// and in ties: ranges on the hour and off it, within one hour, across
/// many hours and longer than `order_gaps` tells (then from
/// `order_gaps_daily`, with ragged days at either end), each against
/// `count(DISTINCT customer_id)` over the raw rows; and both gap tables
/// agree with their recomputation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_customers_hold_with_late_out_of_order_and_tied_orders() {
    let db = TestDb::new("order_gaps").await;
    let mut g = sparse_generator(11, 150.0);
    let events: Vec<Event> = (0..12_000).map(|_| g.next_event()).collect();
    // Returning orders of the same customers, written after the originals:
    // hours earlier (late), minutes later, and at the same instant (a tie
    // broken by the transaction id), two of them in one batch.
    let mut again = Vec::new();
    let mut n = 0u128;
    for (i, e) in events.iter().enumerate() {
        let Event::Sale(s) = e else { continue };
        if i % 3 != 0 {
            continue;
        }
        let shifts: &[i64] = match i % 4 {
            0 => &[-60, -37 * 60],
            1 => &[0],
            2 => &[17, -200 * 60],
            _ => &[-3],
        };
        for m in shifts {
            n += 1;
            let mut c = s.clone();
            c.transaction_id = uuid::Uuid::from_u128(0x5eed_0000_0000_0000_0000_0000_0000_0000 + n);
            c.occurred_at += chrono::Duration::minutes(*m);
            // The same customer in another category or region now and then
            // (the gaps by dimension count per value).
            if n.is_multiple_of(3) {
                c.category = GARDEN.into();
            }
            if n.is_multiple_of(5) {
                c.region = ANTARCTICA.into();
            }
            again.push(Event::Sale(c));
        }
    }
    assert!(again.len() > 1_000, "{} returning orders", again.len());
    let mut offsets = HashMap::new();
    write_events(&db.store, events, 1_500, &mut offsets).await;
    write_events(&db.store, again, 400, &mut offsets).await;
    let off = salespulse::store::rollups::verify(&db.store).await.unwrap();
    assert!(off.is_empty(), "{off:?}");
    let gaps: i64 = sqlx::query_scalar("SELECT count(*) FROM order_gaps WHERE back < 745")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert!(gaps > 100, "{gaps} buckets of returning orders");

    let (lo, hi): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("SELECT min(occurred_at), max(occurred_at) FROM transactions")
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    let at = |minutes: i64| {
        let h = lo.timestamp() - lo.timestamp().rem_euclid(3_600);
        DateTime::from_timestamp(h + minutes * 60, 0).unwrap()
    };
    let mut ranges = vec![
        (at(3 * 60), at(20 * 60)),                         // on the hour
        (at(3 * 60 + 17), at(41 * 60 + 43)),               // off it at both ends
        (at(5 * 60), at(9 * 60 + 30)),                     // on it at the start only
        (at(5 * 60 + 10), at(5 * 60 + 50)),                // within one hour
        (at(7 * 60 + 59), at(8 * 60 + 1)),                 // two minutes across an hour
        (at(-40 * 24 * 60), at(2 * 24 * 60 + 7)),          // longer than order_gaps tells
        (at(5 * 60 + 13), at(40 * 24 * 60 + 5 * 60 + 13)), // and starting in the data
        (at(-31 * 24 * 60 - 7), at(26 * 60 + 31)),         // ragged days at both ends
        (lo, hi + chrono::Duration::minutes(1)),           // all of it
    ];
    // And pseudo-random ones over the data.
    let span_min = (hi - lo).num_minutes() + 120;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..16 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let from = (x % span_min as u64) as i64;
        let len = 1 + ((x >> 20) % 3_000) as i64;
        ranges.push((at(from), at(from + len)));
    }
    let a = no_cache(&db.store);
    // Under one category or one region too (from `order_gaps_daily_by`
    // for whole days), including the values only the copies carry.
    let category: String = sqlx::query_scalar("SELECT min(category) FROM transactions")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    let region: String = sqlx::query_scalar("SELECT min(region) FROM transactions")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    let dims = [
        ("category", category.as_str()),
        ("category", GARDEN),
        ("region", region.as_str()),
        ("region", ANTARCTICA),
    ];
    for &(from, to) in &ranges {
        assert_distinct_customers(&a, &db.store, from, to).await;
        for by in dims {
            assert_distinct_customers_by(&a, &db.store, Some((from, to)), Some(by)).await;
        }
    }
    for by in dims {
        assert_distinct_customers_by(&a, &db.store, None, Some(by)).await;
    }
    db.drop().await;
}

/// The `customers` of `kpis` over `[from, to)` and the period before it,
/// against `count(DISTINCT customer_id)` over the raw rows.
async fn assert_distinct_customers(
    a: &Analytics,
    store: &Store,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) {
    assert_distinct_customers_by(a, store, Some((from, to)), None).await;
}

/// [`assert_distinct_customers`] under a filter on one value of a
/// dimension (`category` or `region`), over `range` (`None`: all data, one
/// period).
async fn assert_distinct_customers_by(
    a: &Analytics,
    store: &Store,
    range: Option<(DateTime<Utc>, DateTime<Utc>)>,
    by: Option<(&str, &str)>,
) {
    let mut filters = Filters {
        range: range.map_or(TimeRange::All, |(from, to)| TimeRange::Between { from, to }),
        ..Filters::default()
    };
    let (dim, value) = by.unwrap_or(("", ""));
    match dim {
        "category" => filters.categories = vec![value.to_owned()],
        "region" => filters.regions = vec![value.to_owned()],
        _ => {}
    }
    let req = ViewRequest::new(ViewKind::Kpis).with_filters(filters);
    let got = a.view(&req).await.unwrap().frame;
    let col = got.column("customers").unwrap().i64().unwrap().clone();
    let periods = match range {
        Some((from, to)) => vec![
            (Some(from), Some(to)),
            (Some(from - (to - from)), Some(from)),
        ],
        None => vec![(None, None)],
    };
    for (row, (f, t)) in periods.into_iter().enumerate() {
        let want: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT customer_id) FROM transactions \
             WHERE ($1::timestamptz IS NULL OR occurred_at >= $1) \
               AND ($2::timestamptz IS NULL OR occurred_at < $2) \
               AND CASE $3 WHEN 'category' THEN category = $4 \
                           WHEN 'region' THEN region = $4 ELSE TRUE END",
        )
        .bind(f)
        .bind(t)
        .bind(dim)
        .bind(value)
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(
            col.get(row),
            Some(want),
            "customers in [{f:?}, {t:?}) with {dim} = {value:?}"
        );
    }
}

/// `order_gaps` holds however the producer keyed the events: two writers
/// (two partitions, as two lanes or processes would) write orders of the
/// same customers at the same time, including late and tied ones, and the
/// table still equals its rebuild from the raw rows. A transient failure
/// (a deadlock, say) is retried as ingest retries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_gaps_hold_when_two_writers_share_customers() {
    let db = TestDb::new("order_gaps_lanes").await;
    let mut g = sparse_generator(12, 150.0);
    let mut events: Vec<Event> = Vec::new();
    let mut n = 0u128;
    for i in 0..10_000usize {
        let e = g.next_event();
        let copy = match &e {
            Event::Sale(s) if i % 2 == 0 => Some(s.clone()),
            _ => None,
        };
        events.push(e);
        // The same customer's returning orders right behind the original,
        // so that the other writer has them in the same round: late by
        // hours and minutes, tied to the second, and later.
        if let Some(s) = copy {
            for m in [-90i64, 0, -2, 45] {
                n += 1;
                let mut c = s.clone();
                c.transaction_id =
                    uuid::Uuid::from_u128(0x1a2e_0000_0000_0000_0000_0000_0000_0000 + n);
                c.occurred_at += chrono::Duration::minutes(m);
                if n.is_multiple_of(3) {
                    c.category = GARDEN.into();
                }
                events.push(Event::Sale(c));
            }
        }
    }
    let mut lanes: [Vec<Event>; 2] = [Vec::new(), Vec::new()];
    for (i, e) in events.into_iter().enumerate() {
        lanes[i % 2].push(e);
    }
    let batch_of = |p: i32, chunk: &[Event], next: &mut i64| {
        let mut b = salespulse::store::Batch::default();
        for e in chunk {
            match e {
                Event::Sale(s) => b.sales.push((s.clone(), p, *next)),
                Event::Session(s) => b.sessions.push((s.clone(), p, *next)),
            }
            *next += 1;
        }
        b.offsets = vec![(p, *next)];
        b
    };
    let write = |b: salespulse::store::Batch| {
        let store = &db.store;
        async move {
            let mut retries = 0u32;
            loop {
                match store.write_batch("test-group", "test-topic", &b).await {
                    Ok(out) => {
                        assert!(out.refused.is_empty(), "{:?}", out.refused);
                        return retries;
                    }
                    Err(e) if e.fault() == salespulse::store::Fault::Transient && retries < 20 => {
                        retries += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    };
    let (mut next_a, mut next_b) = (0i64, 0i64);
    let mut retried = 0;
    let rounds = lanes[0].chunks(250).zip(lanes[1].chunks(250));
    let mut written = 0;
    for (a, b) in rounds {
        let (ba, bb) = (batch_of(0, a, &mut next_a), batch_of(1, b, &mut next_b));
        let (ra, rb) = tokio::join!(write(ba), write(bb));
        retried += ra + rb;
        written += a.len() + b.len();
    }
    assert!(written > 12_000, "{written} events written");
    eprintln!("{written} events by two writers, {retried} transient retries");

    let off = salespulse::store::rollups::verify(&db.store).await.unwrap();
    assert!(off.is_empty(), "{off:?}");
    let returning: i64 =
        sqlx::query_scalar("SELECT sum(orders)::int8 FROM order_gaps WHERE back < 745")
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert!(returning > 2_000, "{returning} returning orders");
    let a = no_cache(&db.store);
    let (lo, hi): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("SELECT min(occurred_at), max(occurred_at) FROM transactions")
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    let h = |t: DateTime<Utc>| {
        DateTime::from_timestamp(t.timestamp() - t.timestamp().rem_euclid(3_600), 0).unwrap()
    };
    for (from, to) in [
        (h(lo), h(hi) + chrono::Duration::hours(1)),
        (
            h(lo) + chrono::Duration::hours(5),
            h(lo) + chrono::Duration::hours(29),
        ),
    ] {
        assert_distinct_customers(&a, &db.store, from, to).await;
    }
    db.drop().await;
}

/// Copies the rows of `select` in `from` into `into` (a table and its
/// columns) in `to`, as COPY text.
async fn copy_rows(from: &Store, to: &Store, select: &str, into: &str) -> u64 {
    use futures::TryStreamExt;
    let mut src = from.pool().acquire().await.unwrap();
    let mut bytes = Vec::new();
    {
        let mut out = src
            .copy_out_raw(&format!("COPY ({select}) TO STDOUT"))
            .await
            .unwrap();
        while let Some(chunk) = out.try_next().await.unwrap() {
            bytes.extend_from_slice(&chunk);
        }
    }
    let mut dst = to.pool().acquire().await.unwrap();
    let mut copy = dst
        .copy_in_raw(&format!("COPY {into} FROM STDIN"))
        .await
        .unwrap();
    copy.send(bytes).await.unwrap();
    copy.finish().await.unwrap()
}

/// A database that schema v5 wrote (every visitor a row of `customers`,
/// with a visit count and first/last seen and region widened by their
/// sessions, `customer_days` kept) upgrades to the current schema (v6:
/// buyers only, daily gaps; v7: daily gaps by category and region) with
/// every derived table equal to its recomputation from the raw rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_v5_database_upgrades_to_the_current_schema() {
    use salespulse::store;
    // What ingest wrote: raw rows and the derived tables v5 shares with v6.
    let (src, _, _) = seeded("upgsrc").await;
    let name = format!(
        "sp_test_upgv5_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    store::create_database_if_missing(&pg_server_url(), &name)
        .await
        .unwrap();
    let url = store::with_database(&pg_server_url(), &name).unwrap();
    let old = Store::connect(&url, 2, Duration::from_secs(60))
        .await
        .unwrap();
    let migrator = sqlx::migrate!("./migrations");
    migrator.run_to(5, old.pool()).await.unwrap();
    for table in [
        "transactions",
        "sessions",
        "sales_metrics",
        "sales_metrics_lite",
        "session_metrics",
        "products",
        "order_gaps",
        "shop_totals",
        "ingest_watermarks",
        "ingest_offsets",
    ] {
        copy_rows(&src.store, &old, &format!("SELECT * FROM {table}"), table).await;
    }
    let cols = "customer_id, region, country, first_seen, last_seen, orders, \
                completed_orders, units, total_spent";
    copy_rows(
        &src.store,
        &old,
        &format!("SELECT {cols} FROM customers"),
        &format!("customers ({cols})"),
    )
    .await;
    sqlx::raw_sql(
        "-- v5: visits widened a buyer's first and last seen and region, and
         -- were counted per customer; every visitor had a row.
         UPDATE customers c SET sessions = s.n,
             first_seen = least(c.first_seen, s.first_at),
             last_seen = greatest(c.last_seen, s.last_at),
             region = least(c.region COLLATE \"C\", s.region),
             country = least(c.country COLLATE \"C\", s.country)
         FROM (SELECT customer_id, count(*) AS n, min(started_at) AS first_at,
                      max(started_at) AS last_at, min(region COLLATE \"C\") AS region,
                      min(country COLLATE \"C\") AS country
               FROM sessions GROUP BY customer_id) s
         WHERE s.customer_id = c.customer_id;
         INSERT INTO customers (customer_id, region, country, first_seen, last_seen, sessions)
         SELECT customer_id, min(region COLLATE \"C\"), min(country COLLATE \"C\"),
                min(started_at), max(started_at), count(*)
         FROM sessions s
         WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = s.customer_id)
         GROUP BY customer_id;
         INSERT INTO customer_days (day, customer_id)
         SELECT DISTINCT date_trunc('day', occurred_at, 'UTC'), customer_id FROM transactions;",
    )
    .execute(old.pool())
    .await
    .unwrap();
    // The upgrade has work to do: visitors to drop, buyers to narrow.
    let (visitors, widened): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE orders = 0),
                count(*) FILTER (WHERE orders > 0 AND (first_seen, last_seen) <>
                    (SELECT min(occurred_at), max(occurred_at) FROM transactions t
                     WHERE t.customer_id = c.customer_id))
         FROM customers c",
    )
    .fetch_one(old.pool())
    .await
    .unwrap();
    assert!(visitors > 100 && widened > 100, "{visitors} {widened}");

    old.migrate().await.unwrap();
    let mismatches = store::rollups::verify(&old).await.unwrap();
    assert!(mismatches.is_empty(), "{mismatches:?}");
    let left: (i64, Option<String>, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM customers), to_regclass('customer_days')::text,
                (SELECT buyers FROM shop_totals WHERE id = 1)",
    )
    .fetch_one(old.pool())
    .await
    .unwrap();
    let buyers = count(&src.store, "SELECT count(*) FROM customers").await;
    assert_eq!(left, (buyers, None, buyers));
    // And every view of the upgraded database matches SQL over its raw rows,
    // unfiltered and under one category or region (the v7 table).
    let a = no_cache(&old);
    all_views_match(&a, &old, Filters::default()).await;
    all_views_match(
        &a,
        &old,
        Filters {
            range: cross_grain_range(),
            ..Filters::default()
        },
    )
    .await;
    let (category, region): (String, String) =
        sqlx::query_as("SELECT min(category), max(region) FROM transactions")
            .fetch_one(old.pool())
            .await
            .unwrap();
    for by in [("category", category.as_str()), ("region", region.as_str())] {
        assert_distinct_customers_by(&a, &old, None, Some(by)).await;
        let range = match cross_grain_range() {
            TimeRange::Between { from, to } => (from, to),
            _ => unreachable!(),
        };
        assert_distinct_customers_by(&a, &old, Some(range), Some(by)).await;
    }
    old.pool().close().await;
    store::drop_database(&pg_server_url(), &name).await.unwrap();
    src.drop().await;
}
