//! Wakes `?wait=` requests when a task finishes, from Postgres `LISTEN` on the channel a trigger
//! notifies. Waiters also re-read their row now and then, so a lost notification only delays
//! an answer, never loses it.

use std::time::Duration;

use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use futures_util::StreamExt as _;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use shared::db::TASK_FINISHED_CHANNEL;

/// Fan-out of "task X finished" events inside the api process.
#[derive(Clone)]
pub struct FinishedTasks {
    sender: broadcast::Sender<Uuid>,
}

impl FinishedTasks {
    /// Starts listening on `database_url`, reconnecting until `stop` is cancelled.
    pub fn listen(database_url: String, stop: CancellationToken) -> Self {
        let (sender, _) = broadcast::channel(4096);
        let events = sender.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                tokio::select! {
                    () = stop.cancelled() => break,
                    result = listen_once(&database_url, &events) => {
                        if let Err(err) = result {
                            tracing::warn!(error = %err, "task notifications interrupted; reconnecting");
                        }
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        FinishedTasks { sender }
    }

    /// A receiver of every task id that finishes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.sender.subscribe()
    }
}

async fn listen_once(database_url: &str, events: &broadcast::Sender<Uuid>) -> anyhow::Result<()> {
    let mut conn = AsyncPgConnection::establish(database_url).await?;
    diesel::sql_query(format!("LISTEN {TASK_FINISHED_CHANNEL}")).execute(&mut conn).await?;
    let mut notifications = std::pin::pin!(conn.notifications_stream());
    while let Some(notification) = notifications.next().await {
        let notification = notification?;
        if let Ok(task_id) = Uuid::parse_str(&notification.payload) {
            // No receivers is normal: nobody is waiting.
            let _ = events.send(task_id);
        }
    }
    anyhow::bail!("notification stream ended")
}
