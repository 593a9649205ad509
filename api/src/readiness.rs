//! What `GET /readyz` checks (Postgres and Redis answer, `UPLOAD_DIR` takes a file), and the
//! gauges that show it to Prometheus between requests: [`ReadinessGauges`] checks every
//! [`EVERY`] and sets `md5_ready{check}` (1 or 0), the upload volume's free bytes beside its
//! reserve, and the api's bounds beside the gauges of what is in use, so that an alert can
//! compare the two without knowing the deployment's settings.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::state::AppState;
use shared::maintenance::Service;

/// How often the gauges are brought up to date.
pub const EVERY: Duration = Duration::from_secs(5);

/// The outcome of each check, with why it failed.
pub struct Readiness {
    /// `SELECT 1` through the pool.
    pub postgres: Result<(), String>,
    /// `PING`.
    pub redis: Result<(), String>,
    /// A small file created, written and removed in `UPLOAD_DIR`.
    pub upload_dir: Result<(), String>,
}

impl Readiness {
    /// Runs the three checks.
    pub async fn check(state: &AppState) -> Self {
        let postgres = state
            .db
            .run(async |conn| {
                use diesel_async::RunQueryDsl as _;
                diesel::sql_query("SELECT 1").execute(conn).await
            })
            .await
            .map(drop)
            .map_err(|err| format!("{:#}", anyhow::Error::new(err)));
        let redis = state.queue.ping().await.map_err(|err| err.to_string());
        let upload_dir = probe_upload_dir(state.config.storage.upload_dir.clone()).await;
        Readiness { postgres, redis, upload_dir }
    }

    /// Each check by the name `/readyz` and the `check` label give it.
    pub fn checks(&self) -> [(&'static str, &Result<(), String>); 3] {
        [("postgres", &self.postgres), ("redis", &self.redis), ("upload_dir", &self.upload_dir)]
    }

    /// Every check passed.
    pub fn ready(&self) -> bool {
        self.checks().iter().all(|(_, result)| result.is_ok())
    }
}

/// Creates, writes and removes a small file in `UPLOAD_DIR`: a read-only or full volume, or one
/// the api may not write, is caught here instead of by the next upload.
async fn probe_upload_dir(upload_dir: std::path::PathBuf) -> Result<(), String> {
    let probe = upload_dir.join(format!(".readyz-{}.probe", uuid::Uuid::new_v4().simple()));
    let display = upload_dir.display().to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let result = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .and_then(|mut file| file.write_all(b"ok"));
        let _ = std::fs::remove_file(&probe);
        result
    })
    .await
    .map_err(|err| err.to_string())?
    .map_err(|err| format!("cannot write to {display}: {err}"))
}

/// Sets the readiness, volume and bound gauges every [`EVERY`].
pub struct ReadinessGauges {
    /// The api's state: what is checked, and its settings.
    pub state: AppState,
}

impl Service for ReadinessGauges {
    fn name(&self) -> &'static str {
        "readiness gauges"
    }

    async fn run(self, stop: CancellationToken) {
        let config = &self.state.config;
        metrics::gauge!("md5_upload_volume_min_free_bytes").set(config.min_free_bytes as f64);
        metrics::gauge!("md5_upload_slots_max").set(f64::from(config.max_concurrent_uploads));
        metrics::gauge!("md5_event_streams_max").set(f64::from(config.max_event_streams));
        loop {
            let readiness = Readiness::check(&self.state).await;
            for (check, result) in readiness.checks() {
                metrics::gauge!("md5_ready", "check" => check).set(if result.is_ok() { 1.0 } else { 0.0 });
            }
            for slots in [&self.state.upload_slots, &self.state.event_streams, &self.state.long_polls] {
                slots.show();
            }
            if let Ok(free) = self.state.storage.free_bytes() {
                metrics::gauge!("md5_upload_volume_free_bytes").set(free as f64);
            }
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}
