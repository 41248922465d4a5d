//! salespulse: a real-time sales analytics workbench.
//!
//! Layers, each importing only those below it (see ARCHITECTURE.md; checked
//! by `tests/layers.rs`):
//!
//! 0. `event`, `config`, `script`: data types, settings, the Rhai sandbox.
//! 1. `generator`, `bus` (Kafka), `store` (PostgreSQL), `cache` (Redis).
//! 2. `analytics` (Polars views and metrics over `store`, cached by `cache`)
//!    and `pipeline` (producer loop, ingest workers, lag, service probes).
//! 3. `api`: the HTTP server over the generator, views and telemetry;
//!    `notebook`: Rhai notebooks (`.ipynb`), their outputs and reports;
//!    `alerts`: alert rules, their states and history, notifications.
//! 4. `services`: the wiring — resolves services, builds telemetry once,
//!    runs the headless pipeline, ingest, the server and the app's live
//!    pipeline.
//! 5. `ui`: the egui app.
//! 6. `bench`: benchmarks, the fault suite, the fuzzer.
//!
//! The binary (`src/bin/salespulse/`) only parses arguments and calls.
//!
//! Data flows one way: `generator` → `bus` → `pipeline::ingest` → `store`
//! → `analytics` → `api`/`ui`. Library modules report errors with
//! `thiserror` types; the wiring and the binary use `anyhow`.

pub mod alerts;
pub mod analytics;
pub mod api;
pub mod bench;
pub mod bus;
pub mod cache;
pub mod config;
pub mod event;
pub mod generator;
pub mod notebook;
pub mod pipeline;
pub mod script;
pub mod services;
pub mod store;
pub mod ui;
