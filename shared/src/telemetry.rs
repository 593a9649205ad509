//! Tracing set-up shared by both binaries.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;

use crate::config::{LogFormat, TelemetryArgs};

/// Installs the global subscriber: an `EnvFilter` from `RUST_LOG`, text or JSON lines on stderr.
///
/// Fails if the filter does not parse, so a typo in `RUST_LOG` is reported at start.
pub fn init(args: &TelemetryArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log_filter)
        .map_err(|err| anyhow::anyhow!("invalid RUST_LOG {:?}: {err}", args.log_filter))?;
    // Colour only on a terminal: a log file or a collector gets plain text.
    use std::io::IsTerminal as _;
    let builder =
        fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    result.map_err(|err| anyhow::anyhow!("cannot install the tracing subscriber: {err}"))
}

/// A future that completes on SIGTERM or SIGINT (Ctrl-C), whichever comes first.
///
/// The handlers are installed by this call, not when the future is first polled: a signal that
/// arrives while the process is still starting (migrations, connections) is not lost and does
/// not kill it, it stops the process as soon as start-up is over. Call it first thing in `main`,
/// inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (mut terminate, mut interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let terminate = async {
                match terminate.as_mut() {
                    Some(signal) => drop(signal.recv().await),
                    None => std::future::pending::<()>().await,
                }
            };
            let interrupt = async {
                match interrupt.as_mut() {
                    Some(signal) => drop(signal.recv().await),
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = terminate => {}
                () = interrupt => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    }
}

/// A token cancelled when `shutdown` completes: the one shutdown signal of a process, watched
/// from the moment this is called.
pub fn watch_shutdown(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    let cancel = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        cancel.cancel();
    });
    stop
}

/// The process's Prometheus recorder, installed on first use; `render()` gives the text format.
///
/// Latency histograms (metric names ending in `_seconds`) share buckets from 1 ms to 10 min.
pub fn metrics() -> metrics_exporter_prometheus::PrometheusHandle {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            const BUCKETS: &[f64] = &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0, 600.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("non-empty buckets")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}
