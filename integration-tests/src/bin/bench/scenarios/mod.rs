//! The benchmark's scenarios, one file each; `main.rs` runs them in order.

pub(crate) mod digests;
pub(crate) mod hostile;
pub(crate) mod large_file;
pub(crate) mod many_files;
pub(crate) mod memory;
pub(crate) mod retention;
pub(crate) mod scaling;
pub(crate) mod small_files;
