//! PostgreSQL: schema, the exactly-once batch write and the offset store.
//!
//! [`Store::write_batch`] is one transaction that inserts the batch's new rows
//! (duplicates by primary key are skipped), folds *only the rows actually
//! inserted* into the rollups, customers and products, and advances the
//! partition offsets. Replaying any batch therefore changes nothing, and a
//! crash at any point either commits all of it or none of it.

mod embedded;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, PgPool, Row};
use uuid::Uuid;

pub use embedded::{find_pg_bin_dir, EmbeddedPostgres};

use crate::config::redact_url;
use crate::event::{to_cents, SaleEvent, SessionEvent};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("embedded PostgreSQL: {0}")]
    Embedded(String),
}

impl StoreError {
    /// Whether retrying the same operation may succeed (lost connection,
    /// deadlock, serialization failure, server restarting, timeouts).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sql(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_) => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                    c.starts_with("40")
                        || c.starts_with("08")
                        || c.starts_with("53")
                        || c.starts_with("57P")
                        || c == "57014"
                }),
                _ => false,
            },
            _ => false,
        }
    }
}

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Rows to write in one transaction, with the next offset of every partition
/// the batch covers.
#[derive(Debug, Default)]
pub struct Batch {
    pub sales: Vec<(SaleEvent, i32, i64)>,
    pub sessions: Vec<(SessionEvent, i32, i64)>,
    /// `(partition, next offset)`.
    pub offsets: Vec<(i32, i64)>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Sale rows newly inserted (the rest were duplicates).
    pub sales: u64,
    /// Session rows newly inserted.
    pub sessions: u64,
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

pub fn connect_options(
    url: &str,
    statement_timeout: Duration,
) -> Result<PgConnectOptions, StoreError> {
    let opts = PgConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl {
        url: redact_url(url),
        reason: e.to_string(),
    })?;
    Ok(opts
        .application_name("salespulse")
        .options([(
            "statement_timeout",
            format!("{}", statement_timeout.as_millis()),
        )])
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2)))
}

/// The whole batch in one statement: rows, rollups, customers, products and
/// offsets. Every aggregate reads only `tx` / `ss`, the rows this statement
/// actually inserted, so a replayed batch adds nothing.
const WRITE_BATCH: &str = r#"
WITH s_in AS (
    SELECT * FROM UNNEST(
        $1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::text[], $8::int4[], $9::int8[], $10::int8[], $11::int8[], $12::text[],
        $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::int4[], $19::int8[]
    ) AS t(transaction_id, occurred_at, customer_id, session_id, product_id, product_name,
           category, quantity, unit_price_cents, discount_cents, total_cents, currency,
           payment_method, status, region, country, channel, kafka_partition, kafka_offset)
),
tx AS (
    INSERT INTO transactions (transaction_id, occurred_at, customer_id, session_id, product_id,
        category, quantity, unit_price, discount, total_amount, currency, payment_method, status,
        region, country, channel, kafka_partition, kafka_offset)
    SELECT transaction_id, occurred_at, customer_id, session_id, product_id, category, quantity,
        unit_price_cents / 100.0, discount_cents / 100.0, total_cents / 100.0, currency,
        payment_method, status, region, country, channel, kafka_partition, kafka_offset
    FROM s_in
    ON CONFLICT (transaction_id) DO NOTHING
    RETURNING occurred_at, customer_id, product_id, category, quantity, unit_price, discount,
        total_amount, payment_method, status, region, country, channel
),
ss AS (
    INSERT INTO sessions (session_id, customer_id, started_at, ended_at, region, country, channel,
        page_views, orders, kafka_partition, kafka_offset)
    SELECT * FROM UNNEST($20::text[], $21::text[], $22::timestamptz[], $23::timestamptz[],
        $24::text[], $25::text[], $26::text[], $27::int4[], $28::int4[], $29::int4[], $30::int8[])
    ON CONFLICT (session_id) DO NOTHING
    RETURNING customer_id, started_at, ended_at, region, country, channel, page_views, orders
),
sales_rollup AS (
    INSERT INTO sales_metrics AS m (bucket, category, payment_method, status, region, channel,
        orders, units, revenue, discount)
    SELECT date_trunc('minute', occurred_at), category, payment_method, status, region, channel,
        count(*), sum(quantity), sum(total_amount), sum(discount)
    FROM tx
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (bucket, category, payment_method, status, region, channel) DO UPDATE SET
        orders = m.orders + EXCLUDED.orders,
        units = m.units + EXCLUDED.units,
        revenue = m.revenue + EXCLUDED.revenue,
        discount = m.discount + EXCLUDED.discount
),
session_rollup AS (
    INSERT INTO session_metrics AS m (bucket, region, channel, sessions, converted_sessions,
        orders, page_views)
    SELECT date_trunc('minute', started_at), region, channel, count(*),
        count(*) FILTER (WHERE orders > 0), sum(orders), sum(page_views)
    FROM ss
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (bucket, region, channel) DO UPDATE SET
        sessions = m.sessions + EXCLUDED.sessions,
        converted_sessions = m.converted_sessions + EXCLUDED.converted_sessions,
        orders = m.orders + EXCLUDED.orders,
        page_views = m.page_views + EXCLUDED.page_views
),
cust AS (
    INSERT INTO customers AS c (customer_id, region, country, first_seen, last_seen, sessions,
        orders, completed_orders, units, total_spent)
    SELECT customer_id, min(region), min(country), min(first_seen), max(last_seen),
        sum(sessions), sum(orders), sum(completed), sum(units), sum(spent)
    FROM (
        SELECT customer_id, region, country, occurred_at AS first_seen, occurred_at AS last_seen,
            0 AS sessions, 1 AS orders, (status = 'completed')::int AS completed,
            quantity AS units,
            CASE WHEN status = 'completed' THEN total_amount ELSE 0 END AS spent
        FROM tx
        UNION ALL
        SELECT customer_id, region, country, started_at, ended_at, 1, 0, 0, 0, 0
        FROM ss
    ) u
    GROUP BY customer_id
    ORDER BY customer_id
    ON CONFLICT (customer_id) DO UPDATE SET
        first_seen = least(c.first_seen, EXCLUDED.first_seen),
        last_seen = greatest(c.last_seen, EXCLUDED.last_seen),
        sessions = c.sessions + EXCLUDED.sessions,
        orders = c.orders + EXCLUDED.orders,
        completed_orders = c.completed_orders + EXCLUDED.completed_orders,
        units = c.units + EXCLUDED.units,
        total_spent = c.total_spent + EXCLUDED.total_spent
),
prod AS (
    INSERT INTO products AS p (product_id, name, category, list_price, first_seen, last_seen,
        orders, units, revenue)
    SELECT a.product_id, n.name, a.category, a.list_price, a.first_seen, a.last_seen, a.orders,
        a.units, a.revenue
    FROM (
        SELECT product_id, min(category) AS category, max(unit_price) AS list_price,
            min(occurred_at) AS first_seen, max(occurred_at) AS last_seen, count(*) AS orders,
            sum(quantity) AS units,
            coalesce(sum(total_amount) FILTER (WHERE status = 'completed'), 0) AS revenue
        FROM tx
        GROUP BY product_id
    ) a
    JOIN (SELECT product_id, max(product_name) AS name FROM s_in GROUP BY product_id) n
        USING (product_id)
    ORDER BY a.product_id
    ON CONFLICT (product_id) DO UPDATE SET
        name = EXCLUDED.name,
        list_price = EXCLUDED.list_price,
        first_seen = least(p.first_seen, EXCLUDED.first_seen),
        last_seen = greatest(p.last_seen, EXCLUDED.last_seen),
        orders = p.orders + EXCLUDED.orders,
        units = p.units + EXCLUDED.units,
        revenue = p.revenue + EXCLUDED.revenue
),
offsets AS (
    INSERT INTO ingest_offsets AS o (consumer_group, topic, partition, next_offset, updated_at)
    SELECT $31, $32, p, n, now() FROM UNNEST($33::int4[], $34::int8[]) AS t(p, n)
    ORDER BY p
    ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET
        next_offset = greatest(o.next_offset, EXCLUDED.next_offset),
        updated_at = now()
)
SELECT (SELECT count(*) FROM tx), (SELECT count(*) FROM ss)
"#;

impl Store {
    /// Connects a pool of `pool_size` connections, each with the statement timeout set.
    pub async fn connect(
        url: &str,
        pool_size: u32,
        statement_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let opts = connect_options(url, statement_timeout)?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        Ok(Self { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations (safe to run from several processes at once:
    /// sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Writes one batch exactly once, in one statement (hence one implicit
    /// transaction); see the module docs.
    pub async fn write_batch(
        &self,
        group: &str,
        topic: &str,
        batch: &Batch,
    ) -> Result<WriteOutcome, StoreError> {
        let q = bind_sales(sqlx::query(WRITE_BATCH), &batch.sales);
        let q = bind_sessions(q, &batch.sessions);
        let (parts, next): (Vec<i32>, Vec<i64>) = batch.offsets.iter().copied().unzip();
        let row = q
            .bind(group)
            .bind(topic)
            .bind(parts)
            .bind(next)
            .fetch_one(&self.pool)
            .await?;
        Ok(WriteOutcome {
            sales: row.try_get::<i64, _>(0)? as u64,
            sessions: row.try_get::<i64, _>(1)? as u64,
        })
    }

    /// Next offset to read per partition, as durably stored with the data.
    pub async fn stored_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT partition, next_offset FROM ingest_offsets \
             WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)",
        )
        .bind(group)
        .bind(topic)
        .bind(partitions)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i32, _>(0)?, r.try_get::<i64, _>(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// `SELECT 1` round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind_sales<'q>(q: PgQuery<'q>, rows: &'q [(SaleEvent, i32, i64)]) -> PgQuery<'q> {
    let n = rows.len();
    let mut ids: Vec<Uuid> = Vec::with_capacity(n);
    let mut at: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    let mut customer = Vec::with_capacity(n);
    let mut session = Vec::with_capacity(n);
    let mut product = Vec::with_capacity(n);
    let mut product_name = Vec::with_capacity(n);
    let mut category = Vec::with_capacity(n);
    let mut quantity: Vec<i32> = Vec::with_capacity(n);
    let mut price: Vec<i64> = Vec::with_capacity(n);
    let mut discount: Vec<i64> = Vec::with_capacity(n);
    let mut total: Vec<i64> = Vec::with_capacity(n);
    let mut currency = Vec::with_capacity(n);
    let mut payment = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut region = Vec::with_capacity(n);
    let mut country = Vec::with_capacity(n);
    let mut channel = Vec::with_capacity(n);
    let mut partition: Vec<i32> = Vec::with_capacity(n);
    let mut offset: Vec<i64> = Vec::with_capacity(n);
    for (s, p, o) in rows {
        ids.push(s.transaction_id);
        at.push(s.occurred_at);
        customer.push(s.customer_id.as_str());
        session.push(s.session_id.as_str());
        product.push(s.product_id.as_str());
        product_name.push(s.product_name.as_str());
        category.push(s.category.as_str());
        quantity.push(s.quantity);
        price.push(to_cents(s.unit_price));
        discount.push(to_cents(s.discount));
        total.push(to_cents(s.total_amount));
        currency.push(s.currency.as_str());
        payment.push(s.payment_method.as_str());
        status.push(s.status.as_str());
        region.push(s.region.as_str());
        country.push(s.country.as_str());
        channel.push(s.channel.as_str());
        partition.push(*p);
        offset.push(*o);
    }
    q.bind(ids)
        .bind(at)
        .bind(customer)
        .bind(session)
        .bind(product)
        .bind(product_name)
        .bind(category)
        .bind(quantity)
        .bind(price)
        .bind(discount)
        .bind(total)
        .bind(currency)
        .bind(payment)
        .bind(status)
        .bind(region)
        .bind(country)
        .bind(channel)
        .bind(partition)
        .bind(offset)
}

fn bind_sessions<'q>(q: PgQuery<'q>, rows: &'q [(SessionEvent, i32, i64)]) -> PgQuery<'q> {
    let n = rows.len();
    let mut id = Vec::with_capacity(n);
    let mut customer = Vec::with_capacity(n);
    let mut started: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    let mut ended: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    let mut region = Vec::with_capacity(n);
    let mut country = Vec::with_capacity(n);
    let mut channel = Vec::with_capacity(n);
    let mut views: Vec<i32> = Vec::with_capacity(n);
    let mut orders: Vec<i32> = Vec::with_capacity(n);
    let mut partition: Vec<i32> = Vec::with_capacity(n);
    let mut offset: Vec<i64> = Vec::with_capacity(n);
    for (s, p, o) in rows {
        id.push(s.session_id.as_str());
        customer.push(s.customer_id.as_str());
        started.push(s.started_at);
        ended.push(s.ended_at);
        region.push(s.region.as_str());
        country.push(s.country.as_str());
        channel.push(s.channel.as_str());
        views.push(s.page_views);
        orders.push(s.orders);
        partition.push(*p);
        offset.push(*o);
    }
    q.bind(id)
        .bind(customer)
        .bind(started)
        .bind(ended)
        .bind(region)
        .bind(country)
        .bind(channel)
        .bind(views)
        .bind(orders)
        .bind(partition)
        .bind(offset)
}

/// Replaces the database name in a PostgreSQL URL.
pub fn with_database(url: &str, db: &str) -> Result<String, StoreError> {
    let bad = |reason: &str| StoreError::BadUrl {
        url: redact_url(url),
        reason: reason.to_owned(),
    };
    let scheme_end = url.find("://").ok_or_else(|| bad("no scheme"))? + 3;
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    Ok(format!("{}/{}{}", &base[..path_start], db, query))
}

/// Creates database `db` on the server of `url` unless it exists.
pub async fn create_database_if_missing(url: &str, db: &str) -> Result<(), StoreError> {
    let admin_url = with_database(url, "postgres")?;
    let mut conn =
        PgConnection::connect_with(&connect_options(&admin_url, Duration::from_secs(30))?).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(db)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", db.replace('"', "\"\""));
        match conn.execute(sqlx::AssertSqlSafe(sql)).await {
            Ok(_) => {}
            // Lost a race with another process creating it: fine.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(())
}

/// Drops database `db` on the server of `url` (terminating its sessions).
pub async fn drop_database(url: &str, db: &str) -> Result<(), StoreError> {
    let admin_url = with_database(url, "postgres")?;
    let mut conn =
        PgConnection::connect_with(&connect_options(&admin_url, Duration::from_secs(30))?).await?;
    let sql = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        db.replace('"', "\"\"")
    );
    conn.execute(sqlx::AssertSqlSafe(sql)).await?;
    conn.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_database_name() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/old?sslmode=disable", "new").unwrap(),
            "postgres://u:p@h:5432/new?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h", "x").unwrap(),
            "postgres://h/x"
        );
        assert!(with_database("nonsense", "x").is_err());
    }
}
