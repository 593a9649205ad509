//! The `md5-worker` binary: parse the configuration, start telemetry, work until SIGTERM.

use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    worker::runtime()?.block_on(async_main())
}

async fn async_main() -> anyhow::Result<()> {
    // First: a SIGTERM during start-up then stops the process gracefully instead of killing it,
    // and a SIGHUP (logrotate's) rotates the log once the worker runs instead of killing it.
    let shutdown = shared::telemetry::shutdown_signal();
    let hangups = worker::Hangups::listen();
    let config = worker::Config::parse();
    shared::telemetry::init(&config.telemetry)?;
    worker::run(config, shutdown, hangups).await
}
