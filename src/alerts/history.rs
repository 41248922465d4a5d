//! Alert history and silences in PostgreSQL (`migrations/0008_alerts.sql`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::state::{Reason, RuleState, State};

/// One row of a rule's history.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Event {
    /// The rule's name.
    pub rule: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The state after.
    pub state: State,
    /// The state before, when it changed.
    pub previous: Option<State>,
    /// Since when the rule is in `state`.
    pub since: DateTime<Utc>,
    /// The value evaluated.
    pub value: Option<f64>,
    /// The notification this step made, if any.
    pub notified: Option<Reason>,
    /// Whether a silence held the notification back.
    pub silenced: bool,
    /// The error, or what the notification said.
    pub message: String,
}

type Row = (
    String,
    DateTime<Utc>,
    String,
    Option<String>,
    DateTime<Utc>,
    Option<f64>,
    Option<String>,
    bool,
    String,
);

fn event(r: Row) -> Event {
    let reason = |s: &str| match s {
        "firing" => Some(Reason::Firing),
        "repeat" => Some(Reason::Repeat),
        "resolved" => Some(Reason::Resolved),
        "no_data" => Some(Reason::NoData),
        "error" => Some(Reason::Error),
        _ => None,
    };
    Event {
        rule: r.0,
        at: r.1,
        state: State::parse(&r.2).unwrap_or(State::Normal),
        previous: r.3.as_deref().and_then(State::parse),
        since: r.4,
        value: r.5,
        notified: r.6.as_deref().and_then(reason),
        silenced: r.7,
        message: r.8,
    }
}

/// Records one step of a rule.
pub async fn record(pool: &PgPool, e: &Event) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO alert_events (rule, at, state, previous, since, value, notified, silenced, message)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&e.rule)
    .bind(e.at)
    .bind(e.state.as_str())
    .bind(e.previous.map(State::as_str))
    .bind(e.since)
    .bind(e.value.filter(|v| v.is_finite()))
    .bind(e.notified.map(Reason::as_str))
    .bind(e.silenced)
    .bind(&e.message)
    .execute(pool)
    .await?;
    Ok(())
}

const COLUMNS: &str = "rule, at, state, previous, since, value, notified, silenced, message";

/// The history, newest first: of one rule or all, at most `limit` rows.
pub async fn history(
    pool: &PgPool,
    rule: Option<&str>,
    limit: i64,
) -> Result<Vec<Event>, sqlx::Error> {
    // The columns are a constant; the values are bound.
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM alert_events
         WHERE $1::text IS NULL OR rule = $1
         ORDER BY at DESC, id DESC LIMIT $2"
    )))
    .bind(rule)
    .bind(limit.clamp(1, 100_000))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(event).collect())
}

/// Each rule's latest row (its current state as last recorded).
pub async fn latest(pool: &PgPool) -> Result<Vec<Event>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT DISTINCT ON (rule) {COLUMNS} FROM alert_events ORDER BY rule, at DESC, id DESC"
    )))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(event).collect())
}

/// A rule's state as its latest row left it (`None`: no row).
pub fn restore(e: &Event) -> RuleState {
    RuleState {
        state: e.state,
        since: e.since,
        breach_since: matches!(e.state, State::Pending | State::Firing).then_some(e.since),
        // A firing rule restored does not announce itself again at once.
        notified_at: (e.state == State::Firing).then_some(e.at),
        value: e.value,
        error: (e.state == State::Error).then(|| e.message.clone()),
        evaluated_at: Some(e.at),
    }
}

/// A silence.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Silence {
    /// Its id.
    pub id: i64,
    /// The rule it mutes (`*`: all).
    pub rule: String,
    /// Until when.
    pub until: DateTime<Utc>,
    /// Why.
    pub reason: String,
}

/// Mutes `rule` (`*`: every rule) until `until`.
pub async fn silence(
    pool: &PgPool,
    rule: &str,
    until: DateTime<Utc>,
    reason: &str,
) -> Result<i64, sqlx::Error> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO alert_silences (rule, until, reason) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(rule)
    .bind(until)
    .bind(reason)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// Ends a silence now; false if there was none with that id.
pub async fn unsilence(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE alert_silences SET until = least(until, now()) WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Silences in force at `now`.
pub async fn silences(pool: &PgPool, now: DateTime<Utc>) -> Result<Vec<Silence>, sqlx::Error> {
    let rows: Vec<(i64, String, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT id, rule, until, reason FROM alert_silences WHERE until > $1 ORDER BY until, id",
    )
    .bind(now)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, rule, until, reason)| Silence {
            id,
            rule,
            until,
            reason,
        })
        .collect())
}

/// Whether `silences` mute `rule`.
pub fn is_silenced(silences: &[Silence], rule: &str, now: DateTime<Utc>) -> bool {
    silences
        .iter()
        .any(|s| s.until > now && (s.rule == "*" || s.rule == rule))
}
