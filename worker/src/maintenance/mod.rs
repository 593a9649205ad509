//! The worker's maintenance services (the shape is `shared::maintenance`): one file each,
//! started in `lib.rs` and stopped with the worker.

pub mod cancellations;
pub mod log_rotation;
pub mod metrics_server;
pub mod sweeper;

pub use shared::maintenance::{Maintenance, Service};
