//! The exactly-once batch write.
//!
//! One transaction:
//! 1. drop in-batch repeats and, on a retry, the ids that already exist (one
//!    indexed probe; the first attempt is optimistic, see [`write_batch`]).
//!    A repeat with the same content is a redelivery and is skipped silently;
//!    one with *different* content is refused as a conflicting duplicate;
//! 2. `COPY` the new rows into `transactions` and `sessions` (binary format,
//!    as fast as a bulk load);
//! 3. fold *exactly those new rows* into the rollups, customers and products,
//!    aggregated here, and advance the partition offsets, in one statement;
//! 4. place the new orders among their customers' stored ones (one indexed
//!    read, after step 3 has locked those customers' rows, so that no other
//!    writer adds orders of theirs meanwhile) and fold the gaps between
//!    orders into `order_gaps`.
//!
//! If a row exists already (redelivery) or another writer inserts one of the
//! same ids concurrently, the `COPY` fails on the primary key, the transaction
//! rolls back, and the retry's probe sees the rows. A replayed batch therefore adds nothing, and a crash
//! at any point commits all of the batch or none of it.
//!
//! ## Poison records
//! When the database refuses the batch for its data (see [`Fault::Data`]),
//! the write starts again in *isolation*: the rows are `COPY`ed in halves,
//! each under a savepoint, and a half that fails is halved again, so `k` bad
//! rows among `n` cost `O(k log n)` statements; the accepted rows are then
//! folded into the rollups in one statement (should the rollups themselves
//! refuse a value, each part is folded under its savepoint instead). A single
//! row that still fails is refused with the database's message. That round
//! is rolled back, the refused records go to the caller's `before_commit`
//! (ingest dead-letters them there, outside any transaction), and the batch
//! is written again without them, offsets covering all of it. A refused
//! record is therefore never both lost and acknowledged, and no transaction
//! stays open while Kafka is waited on.
//!
//! If every record of a batch is refused for one reason that is not about
//! the values (SQLSTATE class 22), that is the schema or the server, not the
//! data: the write fails as a fault to be retried, and nothing is
//! dead-lettered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::{PgConnection, Postgres, Row, Transaction};
use uuid::Uuid;

use super::rollups::{
    CUSTOMERS, DAY_GAP_NEVER, GAP_DIMENSIONS, GAP_NEVER, GRAINS, LITE_GRAINS, ORDER_GAPS,
    ORDER_GAPS_DAILY, ORDER_GAPS_DAILY_BY, PRODUCTS, SALES_METRICS, SALES_METRICS_LITE,
    SESSION_METRICS, SHOP_TOTALS,
};
use super::{Fault, StoreError};
use crate::event::{to_cents, SaleEvent, SessionEvent, Status};

/// Rows to write in one transaction, each with its `(partition, offset)`, and
/// the next offset of every partition the batch covers.
#[derive(Debug, Default)]
pub struct Batch {
    /// Sale rows with their `(partition, offset)`.
    pub sales: Vec<(SaleEvent, i32, i64)>,
    /// Session rows with their `(partition, offset)`.
    pub sessions: Vec<(SessionEvent, i32, i64)>,
    /// `(partition, next offset)`.
    pub offsets: Vec<(i32, i64)>,
}

/// DLQ kind of a record the database refused.
pub(crate) const REJECTED_BY_DATABASE: &str = "rejected-by-database";
/// DLQ kind of a record whose id is stored already with different content.
pub(crate) const CONFLICTING_DUPLICATE: &str = "conflicting-duplicate";

/// A record of a batch that was not stored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// [`REJECTED_BY_DATABASE`] or [`CONFLICTING_DUPLICATE`].
    pub kind: &'static str,
    /// The database's message, or which fields differ.
    pub reason: String,
    /// The database's SQLSTATE, when it refused the record.
    pub sqlstate: Option<String>,
}

/// What one batch write did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Sale rows newly inserted (the rest were duplicates).
    pub sales: u64,
    /// Session rows newly inserted.
    pub sessions: u64,
    /// Identical redeliveries, skipped.
    pub duplicates: u64,
    /// Records refused (already handed to `before_commit`).
    pub refused: Vec<Refused>,
    /// Where the time went, summed over every round of the write.
    pub timings: WriteTimings,
}

/// Time spent in each step of a batch write (summed over its rounds), so
/// that a bench can say which step costs what.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteTimings {
    /// Probing for rows that exist already (retries only).
    pub probe: std::time::Duration,
    /// Encoding and `COPY`ing the rows.
    pub copy: std::time::Duration,
    /// Folding the new rows into per-batch aggregates (in this process).
    pub fold: std::time::Duration,
    /// The upsert of rollups, customers, products and offsets.
    pub upsert: std::time::Duration,
    /// Reading the new orders' neighbours and folding the order gaps.
    pub gaps: std::time::Duration,
    /// `BEGIN` and `COMMIT` (the commit waits for the WAL flush).
    pub commit: std::time::Duration,
}

impl WriteTimings {
    fn add(&mut self, o: &WriteTimings) {
        self.probe += o.probe;
        self.copy += o.copy;
        self.fold += o.fold;
        self.upsert += o.upsert;
        self.gaps += o.gaps;
        self.commit += o.commit;
    }
}

const UNIQUE_VIOLATION: &str = "23505";
const RACE_RETRIES: u32 = 5;

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Sql(sqlx::Error::Database(d)) if d.code().as_deref() == Some(UNIQUE_VIOLATION))
}

/// Called with refused records, outside any transaction, before the batch
/// that leaves them out commits (ingest dead-letters them here); an error
/// abandons the write (nothing is committed, the caller retries).
pub type BeforeCommit<'a> = &'a (dyn Fn(&[Refused]) -> Result<(), String> + Sync);

/// How a round writes the rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// All rows in one `COPY` and one upsert.
    Plain,
    /// Rows `COPY`ed in halves under savepoints, then one upsert of those
    /// that were accepted.
    IsolateRows,
    /// Each part `COPY`ed *and* folded into the rollups under its savepoint
    /// (when the rollups themselves refuse a value).
    IsolateAll,
}

/// Writes `batch` exactly once; see the module docs.
///
/// The first attempt is optimistic: it skips the existence probe, since
/// duplicates only arise on redelivery. If the primary key rejects a row, the
/// transaction rolls back and the batch is retried with the probe. If the
/// database refuses the data, the batch is written in isolation; the records
/// refused are rolled back, handed to `before_commit` outside the
/// transaction, and the batch is written again without them, until a round
/// refuses nothing and commits. Records refused for the database's reasons
/// go first: a later copy of a refused record is judged again without it.
pub async fn write_batch(
    pool: &sqlx::PgPool,
    group: &str,
    topic: &str,
    batch: &Batch,
    before_commit: BeforeCommit<'_>,
) -> Result<WriteOutcome, StoreError> {
    let mut attempt = 0;
    let mut mode = Mode::Plain;
    let mut excluded: HashSet<(i32, i64)> = HashSet::new();
    let mut refused: Vec<Refused> = Vec::new();
    let mut timings = WriteTimings::default();
    loop {
        let began = Instant::now();
        let mut tx = pool.begin().await?;
        timings.commit += began.elapsed();
        let probe = attempt > 0 || mode != Mode::Plain || !excluded.is_empty();
        let written = write_in(&mut tx, group, topic, batch, probe, mode, &excluded).await;
        if let Ok(out) = &written {
            timings.add(&out.timings);
        }
        match written {
            Ok(mut out) => {
                let by_db: Vec<Refused> = out
                    .refused
                    .iter()
                    .filter(|r| r.kind == REJECTED_BY_DATABASE)
                    .cloned()
                    .collect();
                let now = if by_db.is_empty() {
                    std::mem::take(&mut out.refused)
                } else {
                    by_db
                };
                if now.is_empty() {
                    let committing = Instant::now();
                    tx.commit().await?;
                    timings.commit += committing.elapsed();
                    refused.sort_by_key(|r| (r.partition, r.offset));
                    out.refused = refused;
                    out.timings = timings;
                    return Ok(out);
                }
                tx.rollback().await?;
                before_commit(&now).map_err(StoreError::BeforeCommit)?;
                excluded.extend(now.iter().map(|r| (r.partition, r.offset)));
                refused.extend(now);
            }
            Err(e) if is_unique_violation(&e) && attempt < RACE_RETRIES => {
                // Some rows exist already (redelivery, or another writer
                // inserted them concurrently): retry, skipping them.
                attempt += 1;
                tracing::debug!(
                    attempt,
                    "batch holds rows that exist already; retrying with a probe"
                );
            }
            Err(e)
                if mode != Mode::IsolateAll
                    && !is_unique_violation(&e)
                    && e.fault() == Fault::Data =>
            {
                tracing::warn!(
                    error = %e,
                    records = batch.sales.len() + batch.sessions.len(),
                    "the database refused a batch for its data; isolating the records it refuses"
                );
                mode = if mode == Mode::Plain {
                    Mode::IsolateRows
                } else {
                    Mode::IsolateAll
                };
            }
            Err(e) => return Err(e),
        }
    }
}

async fn write_in(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    topic: &str,
    batch: &Batch,
    probe: bool,
    mode: Mode,
    excluded: &HashSet<(i32, i64)>,
) -> Result<WriteOutcome, StoreError> {
    let keep = |p: &i32, o: &i64| !excluded.contains(&(*p, *o));
    let mut out = WriteOutcome::default();
    let probing = Instant::now();
    let (stored_sales, stored_sessions) = if probe {
        stored_rows(tx, batch).await?
    } else {
        Default::default()
    };
    out.timings.probe = probing.elapsed();

    // First occurrence of each id in this batch (by index).
    let mut first_sale: HashMap<Uuid, usize> = HashMap::with_capacity(batch.sales.len());
    let mut sales: Vec<&(SaleEvent, i32, i64)> = Vec::with_capacity(batch.sales.len());
    for (i, row) in batch.sales.iter().enumerate() {
        let (s, p, o) = row;
        if !keep(p, o) {
            continue;
        }
        let earlier = match stored_sales.get(&s.transaction_id) {
            Some(stored) => Some(stored.clone()),
            None => first_sale
                .get(&s.transaction_id)
                .and_then(|j| batch.sales.get(*j))
                .map(|(e, _, _)| StoredSale::of(e)),
        };
        match earlier {
            None => {
                first_sale.insert(s.transaction_id, i);
                sales.push(row);
            }
            Some(earlier) => {
                let differ = earlier.differences(&StoredSale::of(s));
                if differ.is_empty() {
                    out.duplicates += 1;
                } else {
                    out.refused.push(conflict(
                        *p,
                        *o,
                        "transaction_id",
                        &s.transaction_id.to_string(),
                        &differ,
                    ));
                }
            }
        }
    }
    let mut first_session: HashMap<&str, usize> = HashMap::with_capacity(batch.sessions.len());
    let mut sessions: Vec<&(SessionEvent, i32, i64)> = Vec::with_capacity(batch.sessions.len());
    for (i, row) in batch.sessions.iter().enumerate() {
        let (s, p, o) = row;
        if !keep(p, o) {
            continue;
        }
        let earlier = match stored_sessions.get(&s.session_id) {
            Some(stored) => Some(stored.clone()),
            None => first_session
                .get(s.session_id.as_str())
                .and_then(|j| batch.sessions.get(*j))
                .map(|(e, _, _)| StoredSession::of(e)),
        };
        match earlier {
            None => {
                first_session.insert(&s.session_id, i);
                sessions.push(row);
            }
            Some(earlier) => {
                let differ = earlier.differences(&StoredSession::of(s));
                if differ.is_empty() {
                    out.duplicates += 1;
                } else {
                    out.refused
                        .push(conflict(*p, *o, "session_id", &s.session_id, &differ));
                }
            }
        }
    }

    match mode {
        Mode::Plain => {
            write_rows(
                tx,
                &sales,
                &sessions,
                group,
                topic,
                &batch.offsets,
                &mut out.timings,
            )
            .await?;
            out.sales = sales.len() as u64;
            out.sessions = sessions.len() as u64;
        }
        Mode::IsolateRows | Mode::IsolateAll => {
            let with_rollups = mode == Mode::IsolateAll;
            let mut by_db = Vec::new();
            let (s, m) = write_isolating(
                tx,
                &sales,
                &sessions,
                with_rollups,
                group,
                topic,
                &mut by_db,
                &mut out.timings,
            )
            .await?;
            systemic(&by_db, sales.len() + sessions.len())?;
            out.sales = s.len() as u64;
            out.sessions = m.len() as u64;
            let folding = Instant::now();
            let folded = if with_rollups {
                Aggregates::default()
            } else {
                Aggregates::of(&s, &m)
            };
            out.timings.fold += folding.elapsed();
            let upserting = Instant::now();
            folded.upsert(tx, group, topic, &batch.offsets).await?;
            out.timings.upsert += upserting.elapsed();
            let gaps = Instant::now();
            folded.fold_gaps(tx).await?;
            out.timings.gaps += gaps.elapsed();
            out.refused.extend(by_db);
        }
    }
    out.refused.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

fn conflict(partition: i32, offset: i64, id_field: &str, id: &str, differ: &[&str]) -> Refused {
    Refused {
        partition,
        offset,
        kind: CONFLICTING_DUPLICATE,
        sqlstate: None,
        reason: format!(
            "{id_field} {id:?} is stored already with different content ({} differ); \
             the stored record is kept",
            differ.join(", ")
        ),
    }
}

/// COPYs `sales` and `sessions` (binary format: the server parses no
/// timestamp or numeric text, and there is no escaping to get wrong).
async fn copy_rows(
    tx: &mut PgConnection,
    sales: &[&(SaleEvent, i32, i64)],
    sessions: &[&(SessionEvent, i32, i64)],
) -> Result<(), StoreError> {
    if !sales.is_empty() {
        copy_in(tx, COPY_TRANSACTIONS_BINARY, &binary::sales(sales)).await?;
    }
    if !sessions.is_empty() {
        copy_in(tx, COPY_SESSIONS_BINARY, &binary::sessions(sessions)).await?;
    }
    Ok(())
}

/// COPYs `sales` and `sessions` and folds them into the rollups (and the
/// offsets, when given).
async fn write_rows(
    tx: &mut PgConnection,
    sales: &[&(SaleEvent, i32, i64)],
    sessions: &[&(SessionEvent, i32, i64)],
    group: &str,
    topic: &str,
    offsets: &[(i32, i64)],
    timings: &mut WriteTimings,
) -> Result<(), StoreError> {
    let copying = Instant::now();
    copy_rows(tx, sales, sessions).await?;
    timings.copy += copying.elapsed();
    let folding = Instant::now();
    let folded = Aggregates::of(sales, sessions);
    timings.fold += folding.elapsed();
    let upserting = Instant::now();
    folded.upsert(tx, group, topic, offsets).await?;
    timings.upsert += upserting.elapsed();
    let gaps = Instant::now();
    folded.fold_gaps(tx).await?;
    timings.gaps += gaps.elapsed();
    Ok(())
}

/// Refuses to dead-letter a whole batch for one reason that is not about
/// the values themselves (a missing column default, a trigger, a dropped
/// function): that is the schema or the server, and is retried as a fault.
fn systemic(by_db: &[Refused], rows: usize) -> Result<(), StoreError> {
    let Some(first) = by_db.first() else {
        return Ok(());
    };
    let same = by_db.iter().all(|r| r.sqlstate == first.sqlstate);
    let values = first
        .sqlstate
        .as_deref()
        .is_some_and(|c| c.starts_with("22"));
    if rows >= 2 && by_db.len() == rows && same && !values {
        return Err(StoreError::Systemic(format!(
            "the database refused every one of {rows} records for the same reason, which is \
             not about their values: {}",
            first.reason
        )));
    }
    Ok(())
}

/// A stored row and what it came from.
type SaleRow<'b> = &'b (SaleEvent, i32, i64);
/// A stored session and what it came from.
type SessionRow<'b> = &'b (SessionEvent, i32, i64);

/// Writes the rows in order, halving every part the database refuses for its
/// data until the refused rows stand alone; returns the rows written and
/// adds the others to `refused`. With `with_rollups`, each part is folded
/// into the rollups under its savepoint too; otherwise the caller folds the
/// accepted rows in one statement.
#[expect(
    clippy::too_many_arguments,
    reason = "the write's context, passed through from write_in"
)]
async fn write_isolating<'b>(
    tx: &mut PgConnection,
    sales: &[SaleRow<'b>],
    sessions: &[SessionRow<'b>],
    with_rollups: bool,
    group: &str,
    topic: &str,
    refused: &mut Vec<Refused>,
    timings: &mut WriteTimings,
) -> Result<(Vec<SaleRow<'b>>, Vec<SessionRow<'b>>), StoreError> {
    // Rows are numbered sales first, then sessions; a part is a range.
    let n = sales.len() + sessions.len();
    let part = |lo: usize, hi: usize| {
        let s = sales
            .get(lo.min(sales.len())..hi.min(sales.len()))
            .unwrap_or_default();
        let m = sessions
            .get(lo.saturating_sub(sales.len())..hi.saturating_sub(sales.len()))
            .unwrap_or_default();
        (s, m)
    };
    let mut accepted = (
        Vec::with_capacity(sales.len()),
        Vec::with_capacity(sessions.len()),
    );
    let mut todo = vec![(0, n)];
    let mut statements = 0u32;
    while let Some((lo, hi)) = todo.pop() {
        if lo >= hi {
            continue;
        }
        let (s, m) = part(lo, hi);
        sqlx::query("SAVEPOINT isolate").execute(&mut *tx).await?;
        statements += 1;
        let written = if with_rollups {
            write_rows(tx, s, m, group, topic, &[], timings).await
        } else {
            let copying = Instant::now();
            let copied = copy_rows(tx, s, m).await;
            timings.copy += copying.elapsed();
            copied
        };
        match written {
            Ok(()) => {
                sqlx::query("RELEASE SAVEPOINT isolate")
                    .execute(&mut *tx)
                    .await?;
                accepted.0.extend_from_slice(s);
                accepted.1.extend_from_slice(m);
            }
            Err(e) if e.fault() == Fault::Data && !is_unique_violation(&e) => {
                sqlx::query("ROLLBACK TO SAVEPOINT isolate")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("RELEASE SAVEPOINT isolate")
                    .execute(&mut *tx)
                    .await?;
                if hi - lo == 1 {
                    let (partition, offset) = match (s.first(), m.first()) {
                        (Some((_, p, o)), _) | (None, Some((_, p, o))) => (*p, *o),
                        (None, None) => continue,
                    };
                    tracing::warn!(partition, offset, error = %e, "record refused by the database");
                    refused.push(Refused {
                        partition,
                        offset,
                        kind: REJECTED_BY_DATABASE,
                        reason: e.database_message(),
                        sqlstate: e.sqlstate(),
                    });
                } else {
                    let mid = lo + (hi - lo) / 2;
                    // Left half first: rows land in their order.
                    todo.push((mid, hi));
                    todo.push((lo, mid));
                }
            }
            Err(e) => return Err(e),
        }
    }
    tracing::info!(
        rows = n,
        refused = refused.len(),
        statements,
        "batch isolated"
    );
    Ok(accepted)
}

/// A sale as stored: what a redelivery is compared on.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredSale {
    occurred_at_us: i64,
    customer_id: String,
    session_id: String,
    product_id: String,
    category: String,
    quantity: i32,
    unit_price: i64,
    discount: i64,
    total_amount: i64,
    currency: String,
    payment_method: String,
    status: String,
    region: String,
    country: String,
    channel: String,
}

impl StoredSale {
    fn of(s: &SaleEvent) -> Self {
        Self {
            occurred_at_us: s.occurred_at.timestamp_micros(),
            customer_id: s.customer_id.clone(),
            session_id: s.session_id.clone(),
            product_id: s.product_id.clone(),
            category: s.category.clone(),
            quantity: s.quantity,
            unit_price: to_cents(s.unit_price),
            discount: to_cents(s.discount),
            total_amount: to_cents(s.total_amount),
            currency: s.currency.clone(),
            payment_method: s.payment_method.clone(),
            status: s.status.as_str().to_owned(),
            region: s.region.clone(),
            country: s.country.clone(),
            channel: s.channel.as_str().to_owned(),
        }
    }

    /// Names of the fields that differ.
    fn differences(&self, o: &Self) -> Vec<&'static str> {
        let checks = [
            ("occurred_at", self.occurred_at_us == o.occurred_at_us),
            ("customer_id", self.customer_id == o.customer_id),
            ("session_id", self.session_id == o.session_id),
            ("product_id", self.product_id == o.product_id),
            ("category", self.category == o.category),
            ("quantity", self.quantity == o.quantity),
            ("unit_price", self.unit_price == o.unit_price),
            ("discount", self.discount == o.discount),
            ("total_amount", self.total_amount == o.total_amount),
            ("currency", self.currency == o.currency),
            ("payment_method", self.payment_method == o.payment_method),
            ("status", self.status == o.status),
            ("region", self.region == o.region),
            ("country", self.country == o.country),
            ("channel", self.channel == o.channel),
        ];
        checks
            .iter()
            .filter(|(_, same)| !same)
            .map(|(f, _)| *f)
            .collect()
    }
}

/// A session as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredSession {
    customer_id: String,
    started_at_us: i64,
    ended_at_us: i64,
    region: String,
    country: String,
    channel: String,
    page_views: i32,
    orders: i32,
}

impl StoredSession {
    fn of(s: &SessionEvent) -> Self {
        Self {
            customer_id: s.customer_id.clone(),
            started_at_us: s.started_at.timestamp_micros(),
            ended_at_us: s.ended_at.timestamp_micros(),
            region: s.region.clone(),
            country: s.country.clone(),
            channel: s.channel.as_str().to_owned(),
            page_views: s.page_views,
            orders: s.orders,
        }
    }

    fn differences(&self, o: &Self) -> Vec<&'static str> {
        let checks = [
            ("customer_id", self.customer_id == o.customer_id),
            ("started_at", self.started_at_us == o.started_at_us),
            ("ended_at", self.ended_at_us == o.ended_at_us),
            ("region", self.region == o.region),
            ("country", self.country == o.country),
            ("channel", self.channel == o.channel),
            ("page_views", self.page_views == o.page_views),
            ("orders", self.orders == o.orders),
        ];
        checks
            .iter()
            .filter(|(_, same)| !same)
            .map(|(f, _)| *f)
            .collect()
    }
}

type StoredRows = (HashMap<Uuid, StoredSale>, HashMap<String, StoredSession>);

/// The stored rows with the batch's ids (one indexed probe per table).
async fn stored_rows(conn: &mut PgConnection, batch: &Batch) -> Result<StoredRows, StoreError> {
    let tx_ids: Vec<Uuid> = batch
        .sales
        .iter()
        .map(|(s, _, _)| s.transaction_id)
        .collect();
    let session_ids: Vec<&str> = batch
        .sessions
        .iter()
        .map(|(s, _, _)| s.session_id.as_str())
        .collect();
    let mut sales = HashMap::new();
    if !tx_ids.is_empty() {
        let rows = sqlx::query(
            "SELECT transaction_id, (extract(epoch FROM occurred_at) * 1000000)::int8, customer_id,
                    session_id, product_id, category, quantity, (unit_price * 100)::int8,
                    (discount * 100)::int8, (total_amount * 100)::int8, currency::text,
                    payment_method, status, region, country::text, channel
             FROM transactions WHERE transaction_id = ANY($1)",
        )
        .bind(tx_ids)
        .fetch_all(&mut *conn)
        .await?;
        for r in rows {
            sales.insert(
                r.try_get::<Uuid, _>(0)?,
                StoredSale {
                    occurred_at_us: r.try_get(1)?,
                    customer_id: r.try_get(2)?,
                    session_id: r.try_get(3)?,
                    product_id: r.try_get(4)?,
                    category: r.try_get(5)?,
                    quantity: r.try_get(6)?,
                    unit_price: r.try_get(7)?,
                    discount: r.try_get(8)?,
                    total_amount: r.try_get(9)?,
                    currency: r.try_get(10)?,
                    payment_method: r.try_get(11)?,
                    status: r.try_get(12)?,
                    region: r.try_get(13)?,
                    country: r.try_get(14)?,
                    channel: r.try_get(15)?,
                },
            );
        }
    }
    let mut sessions = HashMap::new();
    if !session_ids.is_empty() {
        let rows = sqlx::query(
            "SELECT session_id, customer_id, (extract(epoch FROM started_at) * 1000000)::int8,
                    (extract(epoch FROM ended_at) * 1000000)::int8, region, country::text, channel,
                    page_views, orders
             FROM sessions WHERE session_id = ANY($1)",
        )
        .bind(session_ids)
        .fetch_all(&mut *conn)
        .await?;
        for r in rows {
            sessions.insert(
                r.try_get::<String, _>(0)?,
                StoredSession {
                    customer_id: r.try_get(1)?,
                    started_at_us: r.try_get(2)?,
                    ended_at_us: r.try_get(3)?,
                    region: r.try_get(4)?,
                    country: r.try_get(5)?,
                    channel: r.try_get(6)?,
                    page_views: r.try_get(7)?,
                    orders: r.try_get(8)?,
                },
            );
        }
    }
    Ok((sales, sessions))
}

async fn copy_in(conn: &mut PgConnection, statement: &str, data: &[u8]) -> Result<(), StoreError> {
    let mut copy = conn.copy_in_raw(statement).await?;
    if let Err(e) = copy.send(data).await {
        let _ = copy.abort("send failed").await;
        return Err(e.into());
    }
    copy.finish().await?;
    Ok(())
}

macro_rules! transaction_columns {
    () => {
        "transaction_id, occurred_at, customer_id, session_id, product_id, category, quantity, \
         unit_price, discount, total_amount, currency, payment_method, status, region, country, \
         channel, kafka_partition, kafka_offset"
    };
}

macro_rules! session_columns {
    () => {
        "session_id, customer_id, started_at, ended_at, region, country, channel, page_views, \
         orders, kafka_partition, kafka_offset"
    };
}

/// Columns of [`CopyRows::transactions`], in order.
pub(crate) const TRANSACTION_COLUMNS: &str = transaction_columns!();
/// Columns of [`CopyRows::sessions`], in order.
pub(crate) const SESSION_COLUMNS: &str = session_columns!();

const COPY_TRANSACTIONS_BINARY: &str = concat!(
    "COPY transactions (",
    transaction_columns!(),
    ") FROM STDIN (FORMAT binary)"
);
const COPY_SESSIONS_BINARY: &str = concat!(
    "COPY sessions (",
    session_columns!(),
    ") FROM STDIN (FORMAT binary)"
);

/// `COPY … (FORMAT binary)` data: each value in PostgreSQL's own binary form,
/// so the server converts nothing from text (no timestamp or numeric parsing).
mod binary {
    use chrono::{DateTime, Utc};

    use crate::event::{to_cents, SaleEvent, SessionEvent};

    /// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
    const PG_EPOCH_US: i64 = 946_684_800_000_000;
    const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

    struct Writer(Vec<u8>);

    impl Writer {
        fn new(capacity: usize) -> Self {
            let mut b = Vec::with_capacity(capacity + 32);
            b.extend_from_slice(SIGNATURE);
            b.extend_from_slice(&0i32.to_be_bytes()); // flags
            b.extend_from_slice(&0i32.to_be_bytes()); // header extension
            Writer(b)
        }
        fn row(&mut self, fields: i16) {
            self.0.extend_from_slice(&fields.to_be_bytes());
        }
        fn field(&mut self, bytes: &[u8]) {
            // A field longer than 2 GiB cannot reach here: a Kafka record is
            // far smaller. Saturating keeps the length honest regardless.
            let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
            self.0.extend_from_slice(&len.to_be_bytes());
            self.0.extend_from_slice(bytes);
        }
        fn text(&mut self, s: &str) {
            self.field(s.as_bytes());
        }
        fn int4(&mut self, n: i32) {
            self.field(&n.to_be_bytes());
        }
        fn int8(&mut self, n: i64) {
            self.field(&n.to_be_bytes());
        }
        fn time(&mut self, t: DateTime<Utc>) {
            self.int8(t.timestamp_micros() - PG_EPOCH_US);
        }
        /// `numeric` with two decimals from a number of cents.
        fn money(&mut self, cents: i64) {
            let digits = money_digits(cents);
            let n = digits.digits.len();
            self.0.extend_from_slice(&(8 + 2 * n as i32).to_be_bytes());
            self.0.extend_from_slice(&(n as i16).to_be_bytes());
            self.0.extend_from_slice(&digits.weight.to_be_bytes());
            self.0.extend_from_slice(&digits.sign.to_be_bytes());
            self.0.extend_from_slice(&2u16.to_be_bytes());
            for d in digits.digits {
                self.0.extend_from_slice(&d.to_be_bytes());
            }
        }
        fn finish(mut self) -> Vec<u8> {
            self.0.extend_from_slice(&(-1i16).to_be_bytes());
            self.0
        }
    }

    /// A `numeric` in base-10000 digits, most significant first.
    pub(super) struct Digits {
        pub(super) weight: i16,
        pub(super) sign: u16,
        pub(super) digits: Vec<i16>,
    }

    /// `cents / 100` as PostgreSQL's `numeric` digits (trailing and leading
    /// zero digits dropped, as the server stores them).
    pub(super) fn money_digits(cents: i64) -> Digits {
        let sign = if cents < 0 { 0x4000 } else { 0 };
        let c = cents.unsigned_abs();
        let (mut int, frac) = (c / 100, (c % 100) as i16 * 100);
        // At most 5 base-10000 digits hold u64::MAX / 100.
        let mut int_digits: Vec<i16> = Vec::with_capacity(5);
        while int > 0 {
            int_digits.push((int % 10_000) as i16);
            int /= 10_000;
        }
        int_digits.reverse();
        let weight = int_digits.len() as i16 - 1;
        let mut digits = int_digits;
        digits.push(frac);
        while digits.last() == Some(&0) {
            digits.pop();
        }
        // Leading zeros only arise when there is no integer part.
        let mut weight = weight;
        while digits.first() == Some(&0) {
            digits.remove(0);
            weight -= 1;
        }
        if digits.is_empty() {
            return Digits {
                weight: 0,
                sign: 0,
                digits,
            };
        }
        Digits {
            weight,
            sign,
            digits,
        }
    }

    /// Binary `COPY` data of sale rows, in `TRANSACTION_COLUMNS` order.
    pub(super) fn sales(rows: &[&(SaleEvent, i32, i64)]) -> Vec<u8> {
        let mut w = Writer::new(rows.len() * 260);
        for (s, p, o) in rows {
            w.row(18);
            w.field(s.transaction_id.as_bytes());
            w.time(s.occurred_at);
            for f in [&s.customer_id, &s.session_id, &s.product_id, &s.category] {
                w.text(f);
            }
            w.int4(s.quantity);
            for m in [s.unit_price, s.discount, s.total_amount] {
                w.money(to_cents(m));
            }
            w.text(&s.currency);
            w.text(&s.payment_method);
            w.text(s.status.as_str());
            w.text(&s.region);
            w.text(&s.country);
            w.text(s.channel.as_str());
            w.int4(*p);
            w.int8(*o);
        }
        w.finish()
    }

    /// Binary `COPY` data of session rows, in `SESSION_COLUMNS` order.
    pub(super) fn sessions(rows: &[&(SessionEvent, i32, i64)]) -> Vec<u8> {
        let mut w = Writer::new(rows.len() * 170);
        for (s, p, o) in rows {
            w.row(11);
            w.text(&s.session_id);
            w.text(&s.customer_id);
            w.time(s.started_at);
            w.time(s.ended_at);
            w.text(&s.region);
            w.text(&s.country);
            w.text(s.channel.as_str());
            w.int4(s.page_views);
            w.int4(s.orders);
            w.int4(*p);
            w.int8(*o);
        }
        w.finish()
    }
}

/// A batch as `COPY ... FROM STDIN` text-format data (what `pg_dump` writes;
/// the bench baselines and the analytics bench's loader send it; ingest
/// sends the same values in binary format).
pub struct CopyRows {
    /// Rows for `transactions`, one line each, in [`TRANSACTION_COLUMNS`] order.
    pub transactions: Vec<u8>,
    /// Rows for `sessions`, one line each, in [`SESSION_COLUMNS`] order.
    pub sessions: Vec<u8>,
}

impl CopyRows {
    /// Encodes every row of `batch` (amounts rounded to cents), without dropping
    /// repeats or rows that exist already.
    pub fn of(batch: &Batch) -> Self {
        let sales: Vec<_> = batch.sales.iter().collect();
        let sessions: Vec<_> = batch.sessions.iter().collect();
        Self {
            transactions: encode_sales(&sales),
            sessions: encode_sessions(&sessions),
        }
    }
}

/// Appends a COPY text-format field (escaping backslash, tab, newline, CR).
fn text(buf: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(b),
        }
    }
}

fn num(buf: &mut Vec<u8>, n: impl itoa_like::Int) {
    n.write(buf);
}

fn money(buf: &mut Vec<u8>, cents: i64) {
    if cents < 0 {
        buf.push(b'-');
    }
    let c = cents.unsigned_abs();
    num(buf, c / 100);
    buf.push(b'.');
    let frac = (c % 100) as u8;
    buf.push(b'0' + frac / 10);
    buf.push(b'0' + frac % 10);
}

fn time(buf: &mut Vec<u8>, t: DateTime<Utc>) {
    buf.extend_from_slice(t.to_rfc3339_opts(SecondsFormat::Micros, true).as_bytes());
}

mod itoa_like {
    /// Integer formatting without allocation.
    pub trait Int {
        /// Appends the number in decimal to `buf`.
        fn write(self, buf: &mut Vec<u8>);
    }

    macro_rules! impl_int {
        ($($t:ty),*) => {$(
            impl Int for $t {
                fn write(self, buf: &mut Vec<u8>) {
                    use std::io::Write;
                    let _ = write!(buf, "{self}");
                }
            }
        )*};
    }
    impl_int!(i32, i64, u64);
}

fn encode_sales(rows: &[&(SaleEvent, i32, i64)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(rows.len() * 220);
    for (s, p, o) in rows {
        text(&mut b, &s.transaction_id.to_string());
        b.push(b'\t');
        time(&mut b, s.occurred_at);
        for f in [&s.customer_id, &s.session_id, &s.product_id, &s.category] {
            b.push(b'\t');
            text(&mut b, f);
        }
        b.push(b'\t');
        num(&mut b, s.quantity);
        for m in [s.unit_price, s.discount, s.total_amount] {
            b.push(b'\t');
            money(&mut b, to_cents(m));
        }
        for f in [&s.currency, &s.payment_method] {
            b.push(b'\t');
            text(&mut b, f);
        }
        b.push(b'\t');
        text(&mut b, s.status.as_str());
        for f in [&s.region, &s.country] {
            b.push(b'\t');
            text(&mut b, f);
        }
        b.push(b'\t');
        text(&mut b, s.channel.as_str());
        b.push(b'\t');
        num(&mut b, *p);
        b.push(b'\t');
        num(&mut b, *o);
        b.push(b'\n');
    }
    b
}

fn encode_sessions(rows: &[&(SessionEvent, i32, i64)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(rows.len() * 140);
    for (s, p, o) in rows {
        text(&mut b, &s.session_id);
        b.push(b'\t');
        text(&mut b, &s.customer_id);
        b.push(b'\t');
        time(&mut b, s.started_at);
        b.push(b'\t');
        time(&mut b, s.ended_at);
        for f in [&s.region, &s.country] {
            b.push(b'\t');
            text(&mut b, f);
        }
        b.push(b'\t');
        text(&mut b, s.channel.as_str());
        for n in [s.page_views, s.orders, *p] {
            b.push(b'\t');
            num(&mut b, n);
        }
        b.push(b'\t');
        num(&mut b, *o);
        b.push(b'\n');
    }
    b
}

/// `UNNEST($a::type[], $b::type[], …) AS t(name, …)` over the rows of a
/// map (or slice): one array per named column, each bound from its
/// closure over the `(key, value)` items.
macro_rules! unnest {
    ($args:expr, $rows:expr, $($name:ident : $ty:literal = $f:expr),+ $(,)?) => {{
        let arrays = [$(
            format!("{}::{}[]", $args.bind($rows.iter().map($f).collect::<Vec<_>>())?, $ty)
        ),+];
        format!(
            "UNNEST({}) AS t({})",
            arrays.join(", "),
            [$(stringify!($name)),+].join(", ")
        )
    }};
}

/// Truncates to a multiple of `width` seconds since the epoch.
fn truncate(t: DateTime<Utc>, width: i64) -> DateTime<Utc> {
    let s = t.timestamp();
    DateTime::from_timestamp(s - s.rem_euclid(width), 0).unwrap_or(t)
}

#[derive(Default)]
struct SalesCell {
    orders: i64,
    units: i64,
    revenue: i64,
    discount: i64,
}

#[derive(Default)]
struct SessionCell {
    sessions: i64,
    converted: i64,
    orders: i64,
    page_views: i64,
}

/// A buyer's orders in the batch (a session makes no customer: `customers`
/// holds the people who ordered).
struct CustomerCell<'a> {
    region: &'a str,
    country: &'a str,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    orders: i64,
    completed: i64,
    units: i64,
    spent: i64,
}

struct ProductCell<'a> {
    name: &'a str,
    category: &'a str,
    price: i64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    orders: i64,
    units: i64,
    revenue: i64,
}

type SalesKey<'a> = (
    &'static str,
    DateTime<Utc>,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
);
type SessionKey<'a> = (&'static str, DateTime<Utc>, &'a str, &'a str);
/// `sales_metrics_lite`: grain, bucket, category, payment method, status.
type LiteKey<'a> = (&'static str, DateTime<Utc>, &'a str, &'a str, &'a str);

/// Per partition: the oldest and newest bucket time of the rows inserted.
#[derive(Clone, Copy)]
struct Span {
    min: DateTime<Utc>,
    max: DateTime<Utc>,
}

/// The new rows, folded into what the upserts need. Sorted maps give every
/// writer the same lock order.
#[derive(Default)]
struct Aggregates<'a> {
    sales: BTreeMap<SalesKey<'a>, SalesCell>,
    lite: BTreeMap<LiteKey<'a>, SalesCell>,
    sessions: BTreeMap<SessionKey<'a>, SessionCell>,
    spans: BTreeMap<i32, Span>,
    customers: BTreeMap<&'a str, CustomerCell<'a>>,
    products: BTreeMap<&'a str, ProductCell<'a>>,
    /// Per customer: the transaction ids of their new orders, and the
    /// earliest and latest of their times.
    orders: BTreeMap<&'a str, NewOrders>,
    /// The same per (dimension, value, customer), for
    /// `order_gaps_daily_by` (`rollups::GAP_DIMENSIONS`).
    orders_by: BTreeMap<(&'static str, &'a str, &'a str), NewOrders>,
}

/// A customer's new orders in a batch.
struct NewOrders {
    ids: Vec<Uuid>,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

impl NewOrders {
    /// Adds the order `id` at `at` to `entry`.
    fn add<K: Ord>(
        entry: std::collections::btree_map::Entry<'_, K, NewOrders>,
        id: Uuid,
        at: DateTime<Utc>,
    ) {
        let o = entry.or_insert_with(|| NewOrders {
            ids: Vec::new(),
            first: at,
            last: at,
        });
        o.ids.push(id);
        o.first = o.first.min(at);
        o.last = o.last.max(at);
    }
}

impl<'a> Aggregates<'a> {
    fn of(sales: &[&'a (SaleEvent, i32, i64)], sessions: &[&'a (SessionEvent, i32, i64)]) -> Self {
        let mut a = Aggregates::default();
        for (s, p, _) in sales.iter().copied() {
            let completed = s.status == Status::Completed;
            let total = to_cents(s.total_amount);
            a.span(*p, s.occurred_at);
            for (grain, width) in GRAINS {
                let key = (
                    grain,
                    truncate(s.occurred_at, width),
                    s.category.as_str(),
                    s.payment_method.as_str(),
                    s.status.as_str(),
                    s.region.as_str(),
                    s.channel.as_str(),
                );
                let cells = [
                    Some(a.sales.entry(key).or_default()),
                    LITE_GRAINS.contains(&grain).then(|| {
                        a.lite
                            .entry((key.0, key.1, key.2, key.3, key.4))
                            .or_default()
                    }),
                ];
                for c in cells.into_iter().flatten() {
                    c.orders += 1;
                    c.units += i64::from(s.quantity);
                    c.revenue += total;
                    c.discount += to_cents(s.discount);
                }
            }

            let (id, at) = (s.transaction_id, s.occurred_at);
            NewOrders::add(a.orders.entry(s.customer_id.as_str()), id, at);
            for (dim, value) in GAP_VALUES {
                let key = (dim, value(s), s.customer_id.as_str());
                NewOrders::add(a.orders_by.entry(key), id, at);
            }
            let cu = a.customer(&s.customer_id, &s.region, &s.country, s.occurred_at);
            cu.orders += 1;
            cu.units += i64::from(s.quantity);
            if completed {
                cu.completed += 1;
                cu.spent += total;
            }

            let p = a
                .products
                .entry(&s.product_id)
                .or_insert_with(|| ProductCell {
                    name: &s.product_name,
                    category: &s.category,
                    price: 0,
                    first: s.occurred_at,
                    last: s.occurred_at,
                    orders: 0,
                    units: 0,
                    revenue: 0,
                });
            p.name = p.name.max(s.product_name.as_str());
            p.category = p.category.min(s.category.as_str());
            p.price = p.price.max(to_cents(s.unit_price));
            p.first = p.first.min(s.occurred_at);
            p.last = p.last.max(s.occurred_at);
            p.orders += 1;
            p.units += i64::from(s.quantity);
            if completed {
                p.revenue += total;
            }
        }
        for (s, p, _) in sessions.iter().copied() {
            a.span(*p, s.started_at);
            for (grain, width) in GRAINS {
                let key = (
                    grain,
                    truncate(s.started_at, width),
                    s.region.as_str(),
                    s.channel.as_str(),
                );
                let c = a.sessions.entry(key).or_default();
                c.sessions += 1;
                c.converted += i64::from(s.orders > 0);
                c.orders += i64::from(s.orders);
                c.page_views += i64::from(s.page_views);
            }
        }
        a
    }

    fn span(&mut self, partition: i32, t: DateTime<Utc>) {
        let sp = self
            .spans
            .entry(partition)
            .or_insert(Span { min: t, max: t });
        sp.min = sp.min.min(t);
        sp.max = sp.max.max(t);
    }

    fn customer(
        &mut self,
        id: &'a str,
        region: &'a str,
        country: &'a str,
        at: DateTime<Utc>,
    ) -> &mut CustomerCell<'a> {
        let c = self.customers.entry(id).or_insert_with(|| CustomerCell {
            region,
            country,
            first: at,
            last: at,
            orders: 0,
            completed: 0,
            units: 0,
            spent: 0,
        });
        c.region = c.region.min(region);
        c.country = c.country.min(country);
        c.first = c.first.min(at);
        c.last = c.last.max(at);
        c
    }

    /// Folds the aggregates into the derived tables and advances the
    /// offsets and watermarks, in one statement (the order gaps follow, in
    /// [`Aggregates::fold_gaps`]). Each table's new rows go in
    /// as one array per column, bound where the column is named (see
    /// [`Arrays`] and [`unnest!`]).
    async fn upsert(
        &self,
        conn: &mut PgConnection,
        group: &str,
        topic: &str,
        offsets: &[(i32, i64)],
    ) -> Result<(), StoreError> {
        let mut a = Arrays::default();
        let sales = unnest!(a, self.sales,
            grain: "text" = |(k, _)| k.0,
            bucket: "timestamptz" = |(k, _)| k.1,
            category: "text" = |(k, _)| k.2,
            payment_method: "text" = |(k, _)| k.3,
            status: "text" = |(k, _)| k.4,
            region: "text" = |(k, _)| k.5,
            channel: "text" = |(k, _)| k.6,
            orders: "int8" = |(_, v)| v.orders,
            units: "int8" = |(_, v)| v.units,
            revenue: "int8" = |(_, v)| v.revenue,
            discount: "int8" = |(_, v)| v.discount,
        );
        let lite = unnest!(a, self.lite,
            grain: "text" = |(k, _)| k.0,
            bucket: "timestamptz" = |(k, _)| k.1,
            category: "text" = |(k, _)| k.2,
            payment_method: "text" = |(k, _)| k.3,
            status: "text" = |(k, _)| k.4,
            orders: "int8" = |(_, v)| v.orders,
            units: "int8" = |(_, v)| v.units,
            revenue: "int8" = |(_, v)| v.revenue,
            discount: "int8" = |(_, v)| v.discount,
        );
        let sessions = unnest!(a, self.sessions,
            grain: "text" = |(k, _)| k.0,
            bucket: "timestamptz" = |(k, _)| k.1,
            region: "text" = |(k, _)| k.2,
            channel: "text" = |(k, _)| k.3,
            sessions: "int8" = |(_, v)| v.sessions,
            converted: "int8" = |(_, v)| v.converted,
            orders: "int8" = |(_, v)| v.orders,
            page_views: "int8" = |(_, v)| v.page_views,
        );
        let customers = unnest!(a, self.customers,
            id: "text" = |(k, _)| *k,
            region: "text" = |(_, v)| v.region,
            country: "text" = |(_, v)| v.country,
            first_seen: "timestamptz" = |(_, v)| v.first,
            last_seen: "timestamptz" = |(_, v)| v.last,
            orders: "int8" = |(_, v)| v.orders,
            completed: "int8" = |(_, v)| v.completed,
            units: "int8" = |(_, v)| v.units,
            spent: "int8" = |(_, v)| v.spent,
        );
        let products = unnest!(a, self.products,
            id: "text" = |(k, _)| *k,
            name: "text" = |(_, v)| v.name,
            category: "text" = |(_, v)| v.category,
            price: "int8" = |(_, v)| v.price,
            first_seen: "timestamptz" = |(_, v)| v.first,
            last_seen: "timestamptz" = |(_, v)| v.last,
            orders: "int8" = |(_, v)| v.orders,
            units: "int8" = |(_, v)| v.units,
            revenue: "int8" = |(_, v)| v.revenue,
        );
        let spans = unnest!(a, self.spans,
            partition: "int4" = |(p, _)| *p,
            min_at: "timestamptz" = |(_, s)| s.min,
            max_at: "timestamptz" = |(_, s)| s.max,
        );
        let next = unnest!(a, offsets,
            partition: "int4" = |(p, _)| *p,
            next_offset: "int8" = |(_, o)| *o,
        );
        let (group, topic) = (a.bind(group)?, a.bind(topic)?);
        let [sales_conflict, lite_conflict, session_conflict, customers_conflict, products_conflict, totals_conflict] =
            &*CONFLICTS;
        let notify = super::changes::NOTIFY_SQL;
        let sql = format!(
            r#"
WITH sales_rollup AS (
    INSERT INTO sales_metrics AS m (grain, bucket, category, payment_method, status, region,
        channel, orders, units, revenue, discount)
    SELECT grain, bucket, category, payment_method, status, region, channel, orders, units,
        revenue / 100.0, discount / 100.0
    FROM {sales}
    {sales_conflict}
),
lite_rollup AS (
    INSERT INTO sales_metrics_lite AS m (grain, bucket, category, payment_method, status,
        orders, units, revenue, discount)
    SELECT grain, bucket, category, payment_method, status, orders, units, revenue / 100.0,
        discount / 100.0
    FROM {lite}
    {lite_conflict}
),
session_rollup AS (
    INSERT INTO session_metrics AS m (grain, bucket, region, channel, sessions,
        converted_sessions, orders, page_views)
    SELECT grain, bucket, region, channel, sessions, converted, orders, page_views
    FROM {sessions}
    {session_conflict}
),
cust AS (
    INSERT INTO customers AS c (customer_id, region, country, first_seen, last_seen, orders,
        completed_orders, units, total_spent)
    SELECT id, region, country, first_seen, last_seen, orders, completed, units, spent / 100.0
    FROM {customers}
    {customers_conflict}
    RETURNING c.customer_id, c.orders
),
-- First-time buyers (every row of customers has ordered): their order
-- count after this batch is the batch's own.
buyers AS (
    INSERT INTO shop_totals AS s (id, buyers)
    SELECT 1, n FROM (
        SELECT count(*) AS n FROM cust JOIN {customers} ON t.id = cust.customer_id
        WHERE cust.orders = t.orders
    ) first_time
    WHERE n > 0
    {totals_conflict}
),
prod AS (
    INSERT INTO products AS p (product_id, name, category, list_price, first_seen, last_seen,
        orders, units, revenue)
    SELECT id, name, category, price / 100.0, first_seen, last_seen, orders, units,
        revenue / 100.0
    FROM {products}
    {products_conflict}
),
watermarks AS (
    INSERT INTO ingest_watermarks AS w (topic, partition, commits, late_commits, max_event_at,
        last_min_at, updated_at)
    SELECT {topic}, partition, 1, 1, max_at, min_at, now()
    FROM {spans}
    -- Readers are told at commit (store::changes).
    CROSS JOIN ({notify}) AS notified
    ON CONFLICT (topic, partition) DO UPDATE SET
        commits = w.commits + 1,
        late_commits = w.late_commits
            + CASE WHEN EXCLUDED.last_min_at < w.max_event_at - interval '1 hour' THEN 1 ELSE 0 END,
        max_event_at = greatest(w.max_event_at, EXCLUDED.max_event_at),
        last_min_at = EXCLUDED.last_min_at,
        updated_at = now()
)
INSERT INTO ingest_offsets AS o (consumer_group, topic, partition, next_offset, updated_at)
SELECT {group}, {topic}, partition, next_offset, now()
FROM {next}
ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET
    next_offset = greatest(o.next_offset, EXCLUDED.next_offset),
    updated_at = now()
"#
        );
        // The text is the same for every batch (only the bound values
        // change), so the prepared statement is reused.
        sqlx::query_with(sqlx::AssertSqlSafe(sql), a.args)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Folds the new orders into `order_gaps`, `order_gaps_daily` and
    /// `order_gaps_daily_by` (see `rollups::ORDER_GAPS`): each new order
    /// counts in its hour (day) at the distance back to its customer's
    /// previous order (with the same category or region, by dimension); a
    /// stored order whose previous order is now a new (late) one moves from
    /// its old distance to the new one. One read gives each customer's
    /// neighbouring orders; a second, for customers with orders before this
    /// batch only, their neighbours with the same category and region. Runs
    /// after the upsert, whose `customers` rows stay locked until commit: a
    /// writer of the same customers' orders (another lane or process,
    /// whatever the producer keyed them by) waits for this one, and this
    /// read sees every order committed before.
    async fn fold_gaps(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        if self.orders.is_empty() {
            return Ok(());
        }
        let customers: Vec<GapKey<'_>> = self.orders.iter().map(|(c, o)| ("", "", *c, o)).collect();
        let seqs = neighbours(conn, &customers).await?;
        let mut hourly: BTreeMap<(DateTime<Utc>, i32), i64> = BTreeMap::new();
        let mut daily: BTreeMap<(DateTime<Utc>, i32), i64> = BTreeMap::new();
        // The customers with no order but this batch's: their orders with a
        // value are the new ones with it, without another read.
        let mut only_new: HashMap<&str, &[(DateTime<Utc>, Uuid)]> = HashMap::new();
        for (&(_, _, customer, new), seq) in customers.iter().zip(&seqs) {
            gap_deltas(seq, &new.ids, HOURLY, &mut hourly);
            gap_deltas(seq, &new.ids, DAILY, &mut daily);
            if seq.len() == new.ids.len() {
                only_new.insert(customer, seq);
            }
        }
        let mut local: Vec<(GapKey<'_>, OrderSeq)> = Vec::new();
        let mut probe: Vec<GapKey<'_>> = Vec::new();
        for ((dim, value, customer), new) in &self.orders_by {
            let key = (*dim, *value, *customer, new);
            match only_new.get(customer) {
                Some(seq) => {
                    let with: Vec<_> = seq
                        .iter()
                        .filter(|(_, id)| new.ids.contains(id))
                        .copied()
                        .collect();
                    local.push((key, with));
                }
                None => probe.push(key),
            }
        }
        let probed = if probe.is_empty() {
            Vec::new()
        } else {
            neighbours(conn, &probe).await?
        };
        let mut daily_by: BTreeMap<(&str, &str, DateTime<Utc>, i32), i64> = BTreeMap::new();
        let mut one: BTreeMap<(DateTime<Utc>, i32), i64> = BTreeMap::new();
        for ((dim, value, _, new), seq) in local
            .iter()
            .map(|(k, s)| (k, s))
            .chain(probe.iter().zip(&probed))
        {
            gap_deltas(seq, &new.ids, DAILY, &mut one);
            for ((day, back), n) in std::mem::take(&mut one) {
                *daily_by.entry((*dim, *value, day, back)).or_default() += n;
            }
        }
        hourly.retain(|_, n| *n != 0);
        daily.retain(|_, n| *n != 0);
        daily_by.retain(|_, n| *n != 0);
        if hourly.is_empty() && daily.is_empty() && daily_by.is_empty() {
            return Ok(());
        }
        let mut a = Arrays::default();
        let hours = unnest!(a, hourly,
            hour: "timestamptz" = |(k, _)| k.0,
            back: "int4" = |(k, _)| k.1,
            orders: "int8" = |(_, n)| *n,
        );
        let days = unnest!(a, daily,
            day: "timestamptz" = |(k, _)| k.0,
            back: "int4" = |(k, _)| k.1,
            orders: "int8" = |(_, n)| *n,
        );
        let days_by = unnest!(a, daily_by,
            dim: "text" = |(k, _)| k.0,
            value: "text" = |(k, _)| k.1,
            day: "timestamptz" = |(k, _)| k.2,
            back: "int4" = |(k, _)| k.3,
            orders: "int8" = |(_, n)| *n,
        );
        let [hours_conflict, days_conflict, by_conflict] = &*GAPS_CONFLICTS;
        let sql = format!(
            "WITH hourly AS (
                INSERT INTO order_gaps AS g (hour, back, orders)
                SELECT hour, back, orders FROM {hours} {hours_conflict}),
             daily AS (
                INSERT INTO order_gaps_daily AS g (day, back, orders)
                SELECT day, back, orders FROM {days} {days_conflict})
             INSERT INTO order_gaps_daily_by AS g (dim, value, day, back, orders)
             SELECT dim, value, day, back, orders FROM {days_by} {by_conflict}"
        );
        sqlx::query_with(sqlx::AssertSqlSafe(sql), a.args)
            .execute(&mut *conn)
            .await?;
        let left = |delta: &BTreeMap<(DateTime<Utc>, i32), i64>| -> Vec<DateTime<Utc>> {
            delta
                .iter()
                .filter(|(_, n)| **n < 0)
                .map(|(k, _)| k.0)
                .collect()
        };
        let (hours_left, days_left) = (left(&hourly), left(&daily));
        let by_left: Vec<(&str, &str, DateTime<Utc>)> = daily_by
            .iter()
            .filter(|(_, n)| **n < 0)
            .map(|(k, _)| (k.0, k.1, k.2))
            .collect();
        if !(hours_left.is_empty() && days_left.is_empty() && by_left.is_empty()) {
            // A late order moved a stored one: a bucket it left may be empty
            // (after the upsert above, which this statement would not see).
            sqlx::query(
                "WITH h AS (DELETE FROM order_gaps WHERE hour = ANY($1) AND orders = 0),
                      d AS (DELETE FROM order_gaps_daily WHERE day = ANY($2) AND orders = 0)
                 DELETE FROM order_gaps_daily_by
                 WHERE (dim, value, day) IN (SELECT * FROM unnest($3::text[], $4::text[],
                                                                   $5::timestamptz[]))
                   AND orders = 0",
            )
            .bind(hours_left)
            .bind(days_left)
            .bind(by_left.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(by_left.iter().map(|k| k.1).collect::<Vec<_>>())
            .bind(by_left.iter().map(|k| k.2).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// Each of `rollups::GAP_DIMENSIONS` (a unit test holds them together) and
/// its value in a sale.
const GAP_VALUES: [(&str, ValueOf); 2] = [
    ("category", |s| s.category.as_str()),
    ("region", |s| s.region.as_str()),
];

/// A customer's orders as [`gap_deltas`] reads them: (time, id), sorted.
type OrderSeq = Vec<(DateTime<Utc>, Uuid)>;

/// Where a sale holds its value of a dimension.
type ValueOf = fn(&SaleEvent) -> &str;

/// What [`neighbours`] reads for: a dimension (`''`: none) and its value,
/// a customer, and their new orders in the batch.
type GapKey<'k> = (&'k str, &'k str, &'k str, &'k NewOrders);

/// Per key, sorted, the customer's stored orders (with the key's value of
/// its dimension, when it has one) from the last one before the new ones
/// to the first one after, the new ones (stored already) included.
async fn neighbours(
    conn: &mut PgConnection,
    keys: &[GapKey<'_>],
) -> Result<Vec<OrderSeq>, StoreError> {
    let mut a = Arrays::default();
    let dims = a.bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())?;
    let values = a.bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())?;
    let ids = a.bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())?;
    let firsts = a.bind(keys.iter().map(|k| k.3.first).collect::<Vec<_>>())?;
    let lasts = a.bind(keys.iter().map(|k| k.3.last).collect::<Vec<_>>())?;
    // Same value: the dimension names the column (another dimension, none).
    let same = format!(
        "CASE c.dim WHEN '' THEN TRUE {} ELSE FALSE END",
        GAP_DIMENSIONS
            .iter()
            .map(|d| format!("WHEN '{d}' THEN t.{d} = c.value"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let sql = format!(
        "SELECT c.ord, x.transaction_id, x.occurred_at
         FROM unnest({dims}::text[], {values}::text[], {ids}::text[],
                     {firsts}::timestamptz[], {lasts}::timestamptz[])
             WITH ORDINALITY AS c(dim, value, id, first_at, last_at, ord)
         CROSS JOIN LATERAL (
             (SELECT transaction_id, occurred_at FROM transactions t
              WHERE customer_id = c.id AND occurred_at < c.first_at AND {same}
              ORDER BY occurred_at DESC, transaction_id DESC LIMIT 1)
             UNION ALL
             (SELECT transaction_id, occurred_at FROM transactions t
              WHERE customer_id = c.id AND occurred_at >= c.first_at
                  AND occurred_at <= c.last_at AND {same})
             UNION ALL
             (SELECT transaction_id, occurred_at FROM transactions t
              WHERE customer_id = c.id AND occurred_at > c.last_at AND {same}
              ORDER BY occurred_at, transaction_id LIMIT 1)
         ) x"
    );
    let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), a.args)
        .fetch_all(&mut *conn)
        .await?;
    let mut out = vec![Vec::new(); keys.len()];
    for r in &rows {
        let ord: i64 = r.try_get(0)?;
        // `ord` numbers the keys from 1.
        if let Some(seq) = usize::try_from(ord - 1).ok().and_then(|i| out.get_mut(i)) {
            seq.push((r.try_get(2)?, r.try_get(1)?));
        }
    }
    for seq in &mut out {
        seq.sort_unstable();
    }
    Ok(out)
}

/// One of the order-gap tables: its bucket width in seconds and the
/// bucket of an order with no previous one (or one further back).
#[derive(Clone, Copy)]
struct GapGrain {
    width: i64,
    never: i32,
}

/// `order_gaps` (`rollups::ORDER_GAPS`).
const HOURLY: GapGrain = GapGrain {
    width: 3_600,
    never: GAP_NEVER,
};

/// `order_gaps_daily` (`rollups::ORDER_GAPS_DAILY`).
const DAILY: GapGrain = GapGrain {
    width: 86_400,
    never: DAY_GAP_NEVER,
};

/// The bucket (buckets back, between the buckets' starts) of an order at
/// `at` whose customer's previous order was at `prev`.
fn gap_back(g: GapGrain, at: DateTime<Utc>, prev: Option<DateTime<Utc>>) -> i32 {
    match prev {
        None => g.never,
        Some(p) => {
            let n = (truncate(at, g.width) - truncate(p, g.width)).num_seconds() / g.width;
            i32::try_from(n.clamp(0, i64::from(g.never))).unwrap_or(g.never)
        }
    }
}

/// Adds to `delta` what one customer's new orders (`new`, among `seq`: their
/// stored orders from the last before the new ones to the first after,
/// new ones included, sorted) change in the gap table of grain `g`.
fn gap_deltas(
    seq: &[(DateTime<Utc>, Uuid)],
    new: &[Uuid],
    g: GapGrain,
    delta: &mut BTreeMap<(DateTime<Utc>, i32), i64>,
) {
    // The previous order of any kind, and the previous one stored before
    // this batch (what a stored order's previous order was).
    let mut prev: Option<DateTime<Utc>> = None;
    let mut prev_old: Option<DateTime<Utc>> = None;
    for &(at, id) in seq {
        let bucket = truncate(at, g.width);
        if new.contains(&id) {
            *delta.entry((bucket, gap_back(g, at, prev))).or_default() += 1;
        } else {
            if prev != prev_old {
                *delta
                    .entry((bucket, gap_back(g, at, prev_old)))
                    .or_default() -= 1;
                *delta.entry((bucket, gap_back(g, at, prev))).or_default() += 1;
            }
            prev_old = Some(at);
        }
        prev = Some(at);
    }
}

/// How the upsert folds each table's new partial aggregates into it: the
/// `ON CONFLICT` clauses, from the tables' definitions in `rollups`.
static CONFLICTS: LazyLock<[String; 6]> = LazyLock::new(|| {
    [
        SALES_METRICS.on_conflict("m"),
        SALES_METRICS_LITE.on_conflict("m"),
        SESSION_METRICS.on_conflict("m"),
        CUSTOMERS.on_conflict("c"),
        PRODUCTS.on_conflict("p"),
        SHOP_TOTALS.on_conflict("s"),
    ]
});

/// How `fold_gaps` adds its counts (from `rollups::ORDER_GAPS`,
/// `rollups::ORDER_GAPS_DAILY` and `rollups::ORDER_GAPS_DAILY_BY`).
static GAPS_CONFLICTS: LazyLock<[String; 3]> = LazyLock::new(|| {
    [
        ORDER_GAPS.on_conflict("g"),
        ORDER_GAPS_DAILY.on_conflict("g"),
        ORDER_GAPS_DAILY_BY.on_conflict("g"),
    ]
});

/// The arguments of one statement, bound one by one where they are named,
/// so that no placeholder is numbered by hand.
#[derive(Default)]
struct Arrays {
    args: sqlx::postgres::PgArguments,
}

impl Arrays {
    /// Binds `value` as the next argument; returns its placeholder (`$n`).
    fn bind<'t, T>(&mut self, value: T) -> Result<String, StoreError>
    where
        T: sqlx::Encode<'t, Postgres> + sqlx::Type<Postgres>,
    {
        use sqlx::Arguments;
        self.args
            .add(value)
            .map_err(|e| StoreError::Systemic(format!("binding an upsert argument: {e}")))?;
        Ok(format!("${}", self.args.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_values_are_the_gap_dimensions_columns() {
        let names: Vec<&str> = GAP_VALUES.iter().map(|(d, _)| *d).collect();
        assert_eq!(names, GAP_DIMENSIONS);
        // Every text field a different value: each function reads its own.
        let sale = SaleEvent {
            transaction_id: Uuid::from_u128(1),
            occurred_at: DateTime::<Utc>::UNIX_EPOCH,
            customer_id: "customer".into(),
            session_id: "session".into(),
            product_id: "product".into(),
            product_name: "name".into(),
            category: "Home".into(),
            quantity: 1,
            unit_price: 1.0,
            discount: 0.0,
            total_amount: 1.0,
            currency: "EUR".into(),
            payment_method: "card".into(),
            status: Status::Completed,
            region: "Europe".into(),
            country: "DE".into(),
            channel: crate::event::Channel::Web,
        };
        let json = serde_json::to_value(&sale).unwrap();
        for (dim, value) in GAP_VALUES {
            assert_eq!(json[dim].as_str(), Some(value(&sale)), "{dim}");
        }
    }

    #[test]
    fn copy_text_escapes() {
        let mut b = Vec::new();
        text(&mut b, "a\tb\\c\nd\re");
        assert_eq!(b, b"a\\tb\\\\c\\nd\\re");
        let mut b = Vec::new();
        money(&mut b, 123_405);
        b.push(b' ');
        money(&mut b, 7);
        assert_eq!(b, b"1234.05 0.07");
    }

    #[test]
    fn binary_numeric_digits() {
        let d = |c: i64| {
            let d = binary::money_digits(c);
            (d.weight, d.sign, d.digits)
        };
        assert_eq!(d(123_405), (0, 0, vec![1234, 500]));
        assert_eq!(d(7), (-1, 0, vec![700]));
        assert_eq!(d(0), (0, 0, vec![]));
        assert_eq!(d(100_000_000), (1, 0, vec![100]));
        assert_eq!(d(100_000_001), (1, 0, vec![100, 0, 100]));
        assert_eq!(d(-250), (0, 0x4000, vec![2, 5000]));
        assert_eq!(d(i64::MIN).2.len(), 6);
    }

    #[test]
    fn bucket_truncation() {
        let t = DateTime::from_timestamp(1_700_000_059, 999).unwrap();
        assert_eq!(truncate(t, 60).timestamp(), 1_700_000_040);
        assert_eq!(truncate(t, 3_600).timestamp(), 1_699_999_200);
        assert_eq!(truncate(t, 86_400).timestamp(), 1_699_920_000);
    }
}
