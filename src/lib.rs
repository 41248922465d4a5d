//! salespulse: a real-time sales analytics workbench.
//!
//! Data flows one way through the layers:
//! `generator` → `bus` (Kafka) → `pipeline::ingest` → `store` (PostgreSQL)
//! → `analytics` (Polars views, cached by `cache` in Redis), with `api`
//! serving the generator and metrics over HTTP and `pipeline` wiring it all.
//! Library modules report errors with `thiserror` types; the binary uses
//! `anyhow` at the edge.

pub mod analytics;
pub mod api;
pub mod bus;
pub mod cache;
pub mod config;
pub mod event;
pub mod generator;
pub mod pipeline;
pub mod script;
pub mod store;
pub mod ui;
