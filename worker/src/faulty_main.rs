//! `md5-worker` built with the `fault-injection` feature, for the fault tests only: the same
//! code, plus crash points selected with `FAULT_CRASH_AT`. Release images never contain it.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = worker::Config::parse();
    shared::telemetry::init(&config.telemetry)?;
    worker::run(config, shared::telemetry::shutdown_signal()).await
}
