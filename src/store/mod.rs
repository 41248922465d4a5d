//! PostgreSQL: schema, the exactly-once batch write and the offset store.
//!
//! [`Store::write_batch`] is one transaction that inserts the batch's new rows
//! (duplicates by primary key are skipped), folds *only the rows actually
//! inserted* into the rollups, customers and products, and advances the
//! partition offsets. Replaying any batch therefore changes nothing, and a
//! crash at any point either commits all of it or none of it (see `write`).

pub mod changes;
mod embedded;
pub mod rollups;
mod write;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, PgPool, Row};

pub(crate) use embedded::find_pg_bin_dir;
pub use embedded::EmbeddedPostgres;
pub use write::{Batch, BeforeCommit, CopyRows, Refused, WriteOutcome, WriteTimings};
pub(crate) use write::{CONFLICTING_DUPLICATE, SESSION_COLUMNS, TRANSACTION_COLUMNS};

use crate::config::redact_url;

/// Failures of the store: connecting, migrating, writing and reading.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL does not parse; `url` has its password redacted.
    #[error("invalid database URL {url}: {reason}")]
    BadUrl {
        /// The URL, redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An error from the database or the connection to it.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// Applying the migrations failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Setting up, starting or stopping the embedded PostgreSQL cluster failed.
    #[error("embedded PostgreSQL: {0}")]
    Embedded(String),
    /// The `before_commit` hook of [`Store::write_batch_with`] failed (e.g. the
    /// dead-letter send); nothing of the batch was committed.
    #[error("before commit: {0}")]
    BeforeCommit(String),
    /// The database refused every record of a batch for one reason that is not
    /// about their values (schema or server trouble); retried as transient.
    #[error("{0}")]
    Systemic(String),
    /// The database was migrated by a newer salespulse: its schema version
    /// (`found`) is above the highest migration this build knows (`known`).
    #[error(
        "the database has schema version {found}, newer than this salespulse knows (up to {known}): \
         upgrade salespulse, or point DATABASE_URL at another database"
    )]
    NewerSchema {
        /// The database's schema version.
        found: i64,
        /// The highest version this build knows.
        known: i64,
    },
}

/// What kind of failure an error is, which decides what ingest does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Retrying later may succeed: a lost connection, a full pool, a lock or
    /// statement timeout, a deadlock, a server restarting or out of resources.
    Transient,
    /// The database refused the data itself (SQLSTATE classes 22, 23 and 54,
    /// and any other error that is not about the connection, resources,
    /// concurrency or configuration): retrying the same rows fails again.
    Data,
    /// Only a person can fix it: a bad URL, authentication, a missing
    /// database or permission, a schema that does not match.
    Config,
}

impl StoreError {
    /// Classifies this error; see [`Fault`].
    pub fn fault(&self) -> Fault {
        match self {
            StoreError::Sql(e) => match e {
                sqlx::Error::Database(db) => match db.code() {
                    Some(code) => fault_of_sqlstate(&code),
                    None => Fault::Transient,
                },
                sqlx::Error::Configuration(_) => Fault::Config,
                // I/O, pool, protocol and decoding trouble: the connection
                // or the server, not the rows.
                _ => Fault::Transient,
            },
            StoreError::BadUrl { .. }
            | StoreError::Migrate(_)
            | StoreError::Embedded(_)
            | StoreError::NewerSchema { .. } => Fault::Config,
            StoreError::BeforeCommit(_) | StoreError::Systemic(_) => Fault::Transient,
        }
    }

    /// The SQLSTATE of a database error.
    pub(crate) fn sqlstate(&self) -> Option<String> {
        match self {
            StoreError::Sql(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }

    /// The database's own words for a refusal: message, detail and
    /// SQLSTATE; for other errors, the error as displayed.
    pub(crate) fn database_message(&self) -> String {
        if let StoreError::Sql(sqlx::Error::Database(db)) = self {
            let mut m = db.message().to_owned();
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(d) = pg.detail() {
                    m.push_str(": ");
                    m.push_str(d);
                }
                if let Some(c) = pg.column() {
                    m.push_str(&format!(" (column {c})"));
                }
            }
            if let Some(code) = db.code() {
                m.push_str(&format!(" [SQLSTATE {code}]"));
            }
            m
        } else {
            self.to_string()
        }
    }
}

/// [`Fault`] of a SQLSTATE code. Data is an allow-list: data exceptions
/// (22), integrity constraints (23), program limits such as an index row
/// too large (54) and errors raised by triggers (P0). Configuration: invalid
/// authorization (28), a missing database or schema (3D, 3F), syntax or
/// access rules — permission, missing table or column (42), role and
/// configuration-file errors (0L, 0P, F0). Everything else (connection,
/// rollback, resources, lock not available, shutdown, timeouts, internal
/// errors, a cached plan after a migration …) may pass: retried.
fn fault_of_sqlstate(code: &str) -> Fault {
    match code.get(..2).unwrap_or_default() {
        "22" | "23" | "54" | "P0" => Fault::Data,
        "28" | "3D" | "3F" | "42" | "0L" | "0P" | "F0" => Fault::Config,
        _ => Fault::Transient,
    }
}

/// The migrations in `migrations/`, embedded in the binary.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A handle on the database: a connection pool (cheap to clone).
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

/// Connection options for `url`: application name `salespulse`, the given
/// statement timeout, JIT off and `work_mem` 64 MB.
pub(crate) fn connect_options(
    url: &str,
    statement_timeout: Duration,
) -> Result<PgConnectOptions, StoreError> {
    let opts = PgConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl {
        url: redact_url(url),
        reason: e.to_string(),
    })?;
    Ok(opts
        .application_name("salespulse")
        // JIT compiling costs 100+ ms per statement and the statements here
        // (batch writes, rollup reads) finish in less.
        .options([
            (
                "statement_timeout",
                format!("{}", statement_timeout.as_millis()),
            ),
            ("jit", "off".to_owned()),
            // Distinct-customer counts hash a few hundred thousand ids; with
            // the default 4 MB they sort on disk instead (2x slower).
            ("work_mem", "64MB".to_owned()),
        ])
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2)))
}

impl Store {
    /// Connects a pool of `pool_size` connections, each with the statement timeout set.
    pub async fn connect(
        url: &str,
        pool_size: u32,
        statement_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let opts = connect_options(url, statement_timeout)?;
        // One direct attempt first: a dead or misconfigured server is reported
        // at once, instead of after the pool's acquire timeout of retries.
        PgConnection::connect_with(&opts).await?.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        Ok(Self { pool })
    }

    /// The underlying connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations (safe to run from several processes at once:
    /// sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match MIGRATOR.run(&self.pool).await {
            Ok(()) => Ok(()),
            Err(sqlx::migrate::MigrateError::VersionMissing(v)) => {
                let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
                Err(StoreError::NewerSchema { found: v, known })
            }
            // Lost the connection while migrating: the server, not the schema.
            Err(
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
            ) => Err(StoreError::Sql(e)),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes one batch exactly once; see [`write`](self::write) for how.
    /// Records the database refuses are returned in the outcome, not stored.
    pub async fn write_batch(
        &self,
        group: &str,
        topic: &str,
        batch: &Batch,
    ) -> Result<WriteOutcome, StoreError> {
        write::write_batch(&self.pool, group, topic, batch, &|_| Ok(())).await
    }

    /// [`Store::write_batch`], handing the refused records to `before_commit`
    /// inside the transaction, before it commits (ingest dead-letters them
    /// there); if it fails, nothing is committed.
    pub(crate) async fn write_batch_with(
        &self,
        group: &str,
        topic: &str,
        batch: &Batch,
        before_commit: BeforeCommit<'_>,
    ) -> Result<WriteOutcome, StoreError> {
        write::write_batch(&self.pool, group, topic, batch, before_commit).await
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

    /// How long ago `group` last committed offsets of `topic` (`None`:
    /// never), by the database's clock.
    pub(crate) async fn last_commit_age(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Option<Duration>, StoreError> {
        let secs: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM now() - max(updated_at))::float8 FROM ingest_offsets \
             WHERE consumer_group = $1 AND topic = $2",
        )
        .bind(group)
        .bind(topic)
        .fetch_one(&self.pool)
        .await?;
        Ok(secs.map(|s| Duration::from_secs_f64(s.clamp(0.0, 1e9))))
    }

    /// `SELECT 1` round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
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
