//! The `md5-api` binary: parse the configuration, start telemetry, serve.

use anyhow::Context as _;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // First: a SIGTERM during start-up then stops the process gracefully instead of killing it.
    let shutdown = shared::telemetry::shutdown_signal();
    let config = api::Config::parse();
    shared::telemetry::init(&config.telemetry)?;
    if let Some(command) = &config.command {
        return api::keys::cli::run(&config, command).await;
    }
    let listener = tokio::net::TcpListener::bind(config.bind_addr)
        .await
        .with_context(|| format!("cannot listen on BIND_ADDR {}", config.bind_addr))?;
    api::run(config, listener, shutdown).await
}
