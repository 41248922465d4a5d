//! Telling readers that committed data changed: PostgreSQL `NOTIFY`.
//!
//! Every transaction that changes what the views read (an ingest batch, a
//! rollup rebuild) sends a notification on [`CHANNEL`] in the same
//! transaction, so it is delivered when — and only if — the data is
//! committed, to every process reading that database (apps on other
//! machines included). [`listen`] turns those notifications into a counter
//! readers can wait on; the views' data version stays the source of truth
//! (a notification says "look again", never what changed).

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::watch;

/// The notification channel.
pub const CHANNEL: &str = "salespulse_data";

/// The SQL that notifies (part of a statement of the writing transaction).
pub(crate) const NOTIFY_SQL: &str = "SELECT pg_notify('salespulse_data', '')";

/// A counter that moves when committed data may have changed: on each
/// notification, and on each (re)connection of the listener (notifications
/// sent while it was away are lost). A background task holds its own
/// connection (not one of the pool's) and ends when every receiver is gone;
/// while PostgreSQL is away it retries with capped backoff.
pub fn listen(pool: &PgPool) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    let options = pool.connect_options().as_ref().clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        loop {
            let connected = async {
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .min_connections(0)
                    .acquire_timeout(Duration::from_secs(10))
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(options.clone())
                    .await?;
                let mut l = PgListener::connect_with(&pool).await?;
                l.ignore_pool_close_event(true);
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = tokio::select! {
                _ = tx.closed() => return,
                l = connected => match l {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::debug!("data-change listener cannot connect: {e}");
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                },
            };
            backoff = Duration::from_millis(250);
            // Anything may have been committed while not listening.
            tx.send_modify(|n| *n += 1);
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    r = listener.try_recv() => match r {
                        Ok(Some(_)) => {
                            while listener.next_buffered().is_some() {}
                            tx.send_modify(|n| *n += 1);
                        }
                        // Lost and reconnected: something may have been missed.
                        Ok(None) => tx.send_modify(|n| *n += 1),
                        Err(e) => {
                            tracing::debug!("data-change listener lost: {e}");
                            break;
                        }
                    },
                }
            }
        }
    });
    rx
}
