//! salespulse: a real-time sales analytics workbench.
//!
//! Data flows one way through the layers:
//! `generator` → `bus` (Kafka) → `pipeline::ingest` → `store` (PostgreSQL),
//! with `api` serving the generator over HTTP and `pipeline` wiring it all.
//! Library modules report errors with `thiserror` types; the binary uses
//! `anyhow` at the edge.

pub mod api;
pub mod bus;
pub mod config;
pub mod event;
pub mod generator;
pub mod pipeline;
pub mod store;
