//! Integration tests against real Postgres and Redis, compiled as one binary.
//!
//! Needs a Postgres that accepts `postgres@127.0.0.1:5432` (or `TEST_DATABASE_URL`) and a
//! Redis at `127.0.0.1:6379` (or `TEST_REDIS_URL`); `.ci/run` starts both if they are down.
//! Tests that start worker processes need `cargo build --release --bins` first (the README's
//! test command does it).

mod batching;
mod client;
mod client_distrust;
mod compat;
mod config_docs;
mod digests;
mod edge;
mod errors;
mod exactly_once;
mod faults;
mod following;
mod helper_clis;
mod hostile;
mod idempotency;
mod keys;
mod lanes;
mod lifecycle;
mod live;
mod log_writers;
mod long_polls;
mod monitoring;
mod partial_uploads;
mod raw_http;
mod resumable;
mod resumable_faults;
mod stalled_peers_and_services;
mod unanswered_commits;
mod v1;
mod webhooks;
mod workers;
