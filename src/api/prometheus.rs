//! `/metrics` in the Prometheus text format (version 0.0.4).
//!
//! Counters are this process's own (Prometheus adds them up across
//! processes); consumer lag is read from the broker and the offsets stored in
//! PostgreSQL, so any process can report it for the whole group.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::analytics::{Analytics, LATENCY_BUCKETS};
use crate::bus::ProducerStats;
use crate::pipeline::lag::LagSource;
use crate::pipeline::IngestStats;

/// What this process can report on; absent parts are left out.
#[derive(Clone, Default)]
pub struct Telemetry {
    /// Producer counters (events produced, retries, failures).
    pub producer: Option<Arc<ProducerStats>>,
    /// Ingest counters and health; also adds an `ingest` component to
    /// `/health`.
    pub ingest: Option<Arc<IngestStats>>,
    /// PostgreSQL pool, cache and view-timing metrics; also what `/view`
    /// answers from (`None`: `/view` answers `503`).
    pub analytics: Option<Analytics>,
    /// Where consumer lag per partition is read from.
    pub lag: Option<LagSource>,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A counter family: one sample per `(labels, value)`, labels as `{k="v"}` or "".
fn counter(out: &mut String, name: &str, help: &str, samples: &[(&str, u64)]) {
    family(out, name, "counter", help);
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Telemetry {
    /// The metrics of every part present, in the Prometheus text format.
    /// Consumer lag is read afresh on each call (a comment line when it cannot be).
    pub async fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        if let Some(p) = &self.producer {
            for (name, help, v) in [
                (
                    "salespulse_events_produced_total",
                    "Events acknowledged by the broker.",
                    &p.delivered,
                ),
                (
                    "salespulse_produce_retries_total",
                    "Application-level produce retries.",
                    &p.retried,
                ),
                (
                    "salespulse_produce_failures_total",
                    "Events given up on after all retries.",
                    &p.failed,
                ),
            ] {
                counter(&mut out, name, help, &[("", v.load(Ordering::Relaxed))]);
            }
        }
        if let Some(s) = &self.ingest {
            let ingested = [
                ("{kind=\"sale\"}", s.sales.load(Ordering::Relaxed)),
                ("{kind=\"session\"}", s.sessions.load(Ordering::Relaxed)),
            ];
            counter(
                &mut out,
                "salespulse_events_ingested_total",
                "Rows written to PostgreSQL, by kind.",
                &ingested,
            );
            for (name, help, v) in [
                (
                    "salespulse_events_duplicate_total",
                    "Redelivered events skipped as duplicates.",
                    &s.duplicates,
                ),
                (
                    "salespulse_events_dead_lettered_total",
                    "Invalid events sent to the dead-letter topic.",
                    &s.dead_lettered,
                ),
                (
                    "salespulse_ingest_batches_total",
                    "Batches committed.",
                    &s.batches,
                ),
                (
                    "salespulse_ingest_write_retries_total",
                    "Batch writes retried after a transient error.",
                    &s.write_retries,
                ),
                (
                    "salespulse_ingest_offsets_skipped_total",
                    "Offsets the broker no longer had when ingest reached them.",
                    &s.offsets_skipped,
                ),
                (
                    "salespulse_ingest_refused_by_database_total",
                    "Valid-looking events the database refused, dead-lettered.",
                    &s.refused_by_database,
                ),
                (
                    "salespulse_ingest_conflicting_duplicates_total",
                    "Events whose id was stored with other content, dead-lettered.",
                    &s.conflicting_duplicates,
                ),
                (
                    "salespulse_ingest_dlq_truncated_total",
                    "Rejected events too large for the DLQ, dead-lettered truncated.",
                    &s.dlq_truncated,
                ),
                (
                    "salespulse_ingest_group_rejoins_total",
                    "Times a worker found itself stuck (records waiting, none arriving) and rejoined its consumer group.",
                    &s.rejoins,
                ),
            ] {
                counter(&mut out, name, help, &[("", v.load(Ordering::Relaxed))]);
            }
            let degraded_for = match s.health() {
                crate::pipeline::ingest::IngestHealth::Ok => None,
                crate::pipeline::ingest::IngestHealth::Degraded { for_secs, .. } => Some(for_secs),
            };
            family(
                &mut out,
                "salespulse_ingest_degraded",
                "gauge",
                "1 while batch writes or reads from Kafka are failing and being retried (a service is away).",
            );
            let _ = writeln!(
                out,
                "salespulse_ingest_degraded {}",
                u8::from(degraded_for.is_some())
            );
            family(
                &mut out,
                "salespulse_ingest_degraded_seconds",
                "gauge",
                "How long batch writes have been failing, 0 when healthy.",
            );
            let _ = writeln!(
                out,
                "salespulse_ingest_degraded_seconds {}",
                degraded_for.unwrap_or(0)
            );
        }
        if let Some(lag) = &self.lag {
            self.render_lag(&mut out, lag).await;
        }
        if let Some(a) = &self.analytics {
            let pool = a.pool();
            family(
                &mut out,
                "salespulse_pg_pool_connections",
                "gauge",
                "PostgreSQL pool connections, by state.",
            );
            let (size, idle) = (pool.size(), pool.num_idle() as u32);
            let _ = writeln!(
                out,
                "salespulse_pg_pool_connections{{state=\"open\"}} {size}"
            );
            let _ = writeln!(
                out,
                "salespulse_pg_pool_connections{{state=\"idle\"}} {idle}"
            );
            let _ = writeln!(
                out,
                "salespulse_pg_pool_connections{{state=\"max\"}} {}",
                pool.options().get_max_connections()
            );

            let cache = a.cache();
            let status = cache.status();
            family(
                &mut out,
                "salespulse_cache_up",
                "gauge",
                "1 when the Redis frame cache works, 0 when bypassed.",
            );
            let _ = writeln!(
                out,
                "salespulse_cache_up {}",
                u8::from(status.enabled && status.error.is_none())
            );
            let counters = cache.counters();
            for (name, help, get) in [
                (
                    "salespulse_cache_hits_total",
                    "Frames answered from Redis or a computation in flight.",
                    (|c: &crate::cache::ViewCounters| c.hits)
                        as fn(&crate::cache::ViewCounters) -> u64,
                ),
                (
                    "salespulse_cache_misses_total",
                    "Frames computed and stored.",
                    |c| c.misses,
                ),
                (
                    "salespulse_cache_bypasses_total",
                    "Frames computed without the cache.",
                    |c| c.bypasses,
                ),
                ("salespulse_cache_errors_total", "Redis errors.", |c| {
                    c.errors
                }),
                (
                    "salespulse_cache_coalesced_total",
                    "Requests that waited for another's computation of the same frame.",
                    |c| c.coalesced,
                ),
            ] {
                family(&mut out, name, "counter", help);
                for (view, c) in &counters {
                    let _ = writeln!(out, "{name}{{view=\"{}\"}} {}", label(view), get(c));
                }
            }
            let timings = a.timings();
            family(
                &mut out,
                "salespulse_view_computations_total",
                "counter",
                "View computations against PostgreSQL.",
            );
            for (view, t) in &timings {
                let _ = writeln!(
                    out,
                    "salespulse_view_computations_total{{view=\"{view}\"}} {}",
                    t.computations
                );
            }
            family(
                &mut out,
                "salespulse_view_seconds",
                "histogram",
                "View request latency, cache included.",
            );
            for (view, t) in &timings {
                for (bound, n) in LATENCY_BUCKETS.iter().zip(t.buckets) {
                    let _ = writeln!(
                        out,
                        "salespulse_view_seconds_bucket{{view=\"{view}\",le=\"{bound}\"}} {n}"
                    );
                }
                let _ = writeln!(
                    out,
                    "salespulse_view_seconds_bucket{{view=\"{view}\",le=\"+Inf\"}} {}",
                    t.count
                );
                let _ = writeln!(
                    out,
                    "salespulse_view_seconds_sum{{view=\"{view}\"}} {}",
                    t.sum_secs
                );
                let _ = writeln!(
                    out,
                    "salespulse_view_seconds_count{{view=\"{view}\"}} {}",
                    t.count
                );
            }
        }
        out
    }

    async fn render_lag(&self, out: &mut String, lag: &LagSource) {
        let lags = match lag.read().await {
            Ok(l) => l,
            Err(e) => {
                let _ = writeln!(out, "# consumer lag unavailable: {}", label(&e));
                return;
            }
        };
        family(
            out,
            "salespulse_consumer_lag",
            "gauge",
            "Records in the topic not yet committed to PostgreSQL, per partition.",
        );
        for (p, n) in lags {
            let _ = writeln!(
                out,
                "salespulse_consumer_lag{{topic=\"{}\",group=\"{}\",partition=\"{p}\"}} {n}",
                label(&lag.topic),
                label(&lag.group),
            );
        }
    }
}
