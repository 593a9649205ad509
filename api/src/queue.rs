//! Adding jobs to the Redis stream. Failures are not fatal: the row is already committed, and
//! the workers' sweeper re-enqueues any queued task that has no stream entry.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use shared::JobMessage;
use shared::batch::{BatchError, Batcher};

/// XADDs every job in one pipeline (one round trip).
async fn add_all(mut connection: ConnectionManager, stream: &str, jobs: &[JobMessage]) -> anyhow::Result<()> {
    let mut pipe = redis::pipe();
    for job in jobs {
        let add = pipe.cmd("XADD").arg(stream).arg("*");
        for (field, value) in job.to_fields() {
            add.arg(field).arg(value);
        }
        add.ignore();
    }
    match tokio::time::timeout(ENQUEUE_TIMEOUT, pipe.query_async::<()>(&mut connection)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Err(anyhow::anyhow!("XADD timed out after {ENQUEUE_TIMEOUT:?}")),
    }
}

/// Bound on one XADD, so an unreachable Redis never holds an upload's answer for long.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most jobs one pipelined round of XADDs carries.
const MAX_BATCH: usize = 256;

/// The api's handle on the jobs stream.
#[derive(Clone)]
pub struct JobQueue {
    connection: ConnectionManager,
    stream: String,
    /// XADDs of uploads that finish together, pipelined in one round trip.
    adds: Batcher<JobMessage, ()>,
}

impl JobQueue {
    /// A queue that connects lazily, so the api starts (and accepts uploads) while Redis is down.
    pub fn new(redis_url: &str, stream: String) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis_url)
            .map_err(|err| anyhow::anyhow!("invalid REDIS_URL {redis_url:?}: {err}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(ENQUEUE_TIMEOUT))
            .set_response_timeout(Some(ENQUEUE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|err| anyhow::anyhow!("cannot set up the Redis connection: {err}"))?;
        let adds = {
            let (connection, stream) = (connection.clone(), stream.clone());
            Batcher::spawn("xadd", MAX_BATCH, move |jobs: Vec<JobMessage>| {
                let (connection, stream) = (connection.clone(), stream.clone());
                async move { add_all(connection, &stream, &jobs).await.map(|()| vec![(); jobs.len()]) }
            })
        };
        Ok(JobQueue { connection, stream, adds })
    }

    /// The connection and the stream's name, for the announcements of `crate::follow`.
    pub fn connection(&self) -> (ConnectionManager, String) {
        (self.connection.clone(), self.stream.clone())
    }

    /// XADDs the job (pipelined with other uploads' jobs); an error means the sweeper will
    /// have to enqueue it later.
    pub async fn enqueue(&self, job: &JobMessage) -> Result<(), BatchError> {
        self.adds.call(job.clone()).await
    }

    /// The stream's length and the group's pending entries (for metrics); a missing stream or
    /// group counts as empty.
    pub async fn stream_stats(&self, group: &str) -> anyhow::Result<(u64, u64)> {
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN").arg(&self.stream).cmd("XPENDING").arg(&self.stream).arg(group);
        let stats = pipe.query_async::<(u64, redis::Value)>(&mut connection);
        match tokio::time::timeout(ENQUEUE_TIMEOUT, stats).await {
            Ok(Ok((length, redis::Value::Array(summary)))) => match summary.as_slice() {
                [redis::Value::Int(pending), ..] => Ok((length, *pending as u64)),
                _ => Ok((length, 0)),
            },
            Ok(Ok((length, _))) => Ok((length, 0)),
            Ok(Err(err)) if err.code() == Some("NOGROUP") => Ok((0, 0)),
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(anyhow::anyhow!("stream stats timed out")),
        }
    }

    /// PING, for readiness.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut connection);
        match tokio::time::timeout(ENQUEUE_TIMEOUT, ping).await {
            Ok(result) => result.map(drop).map_err(Into::into),
            Err(_) => Err(anyhow::anyhow!("PING timed out")),
        }
    }
}
