//! The `md5-worker` binary: parse the configuration, start telemetry, work until SIGTERM.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = worker::Config::parse();
    shared::telemetry::init(&config.telemetry)?;
    worker::run(config, shared::telemetry::shutdown_signal()).await
}
