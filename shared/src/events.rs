//! Task events from Postgres `LISTEN`: status changes (a trigger notifies every one) and the
//! progress workers announce. The api fans them out to `?wait=` requests and event streams; a
//! worker hears only the changes that stop a hash (a task cancelled or expired, which the
//! trigger also notifies on a channel of their own) and stops it.
//!
//! Notifications sent while the listening connection is down are lost; after every
//! (re)connection a [`TaskEvent::Resync`] tells receivers to re-read what they watch, so a lost
//! notification delays a change, never loses it.

use std::time::Duration;

use diesel_async::RunQueryDsl as _;
use futures_util::StreamExt as _;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::TaskStatus;
use crate::db::{TASK_CHANGED_CHANNEL, TASK_PROGRESS_CHANNEL, TASK_STOPPED_CHANNEL};

/// Events a receiver has not taken yet before it lags (and then re-reads, as after a resync).
const CAPACITY: usize = 4096;

/// One notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEvent {
    /// The task's status became this.
    Changed(Uuid, TaskStatus),
    /// A worker has hashed this many bytes of the task's file.
    Progress(Uuid, u64),
    /// The listener (re)connected: notifications may have been missed; re-read.
    Resync,
}

impl TaskEvent {
    /// Parses a notification's payload on `channel`; `None` for anything else.
    pub fn parse(channel: &str, payload: &str) -> Option<TaskEvent> {
        let (id, value) = payload.split_once(' ')?;
        let id = Uuid::parse_str(id).ok()?;
        match channel {
            TASK_CHANGED_CHANNEL | TASK_STOPPED_CHANNEL => {
                TaskStatus::parse(value).map(|status| TaskEvent::Changed(id, status))
            }
            TASK_PROGRESS_CHANNEL => value.parse().ok().map(|bytes| TaskEvent::Progress(id, bytes)),
            _ => None,
        }
    }

    /// The payload announcing `bytes` hashed of `task_id`.
    pub fn progress_payload(task_id: Uuid, bytes: u64) -> String {
        format!("{task_id} {bytes}")
    }
}

/// What to listen to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// The changes that stop a hash: a task `cancelled` or `expired` (workers).
    Stops,
    /// Every status change, and progress (the api).
    ChangesAndProgress,
}

impl Channels {
    /// The Postgres channels to `LISTEN` to.
    fn names(self) -> &'static [&'static str] {
        match self {
            Channels::Stops => &[TASK_STOPPED_CHANNEL],
            Channels::ChangesAndProgress => &[TASK_CHANGED_CHANNEL, TASK_PROGRESS_CHANNEL],
        }
    }
}

/// Fan-out of task events inside one process; cheap to clone.
#[derive(Clone)]
pub struct TaskEvents {
    sender: broadcast::Sender<TaskEvent>,
}

impl TaskEvents {
    /// The events of `channels`, and the [`Listener`] (a maintenance service) that receives
    /// them from Postgres once started, reconnecting until it is stopped.
    pub fn listen(database_url: String, channels: Channels) -> (Self, Listener) {
        let (sender, _) = broadcast::channel(CAPACITY);
        (TaskEvents { sender: sender.clone() }, Listener { database_url, channels, sender })
    }

    /// Events sent on `sender` only (for tests of what consumes them).
    pub fn from_sender(sender: broadcast::Sender<TaskEvent>) -> Self {
        TaskEvents { sender }
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.sender.subscribe()
    }
}

/// The `LISTEN` connection of one process: one connection, reconnecting a second after it
/// fails, every notification sent to the [`TaskEvents`] it was made with.
pub struct Listener {
    database_url: String,
    channels: Channels,
    sender: broadcast::Sender<TaskEvent>,
}

impl crate::maintenance::Service for Listener {
    fn name(&self) -> &'static str {
        "task notifications"
    }

    async fn run(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            tokio::select! {
                () = stop.cancelled() => break,
                result = listen_once(&self.database_url, self.channels, &self.sender) => {
                    if let Err(err) = result {
                        tracing::warn!(error = format!("{err:#}"), "task notifications interrupted; reconnecting");
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

async fn listen_once(
    database_url: &str,
    channels: Channels,
    events: &broadcast::Sender<TaskEvent>,
) -> anyhow::Result<()> {
    let mut conn = crate::db::establish(database_url).await?;
    for channel in channels.names() {
        diesel::sql_query(format!("LISTEN {channel}")).execute(&mut conn).await?;
    }
    // No receivers is normal: nobody is watching.
    let _ = events.send(TaskEvent::Resync);
    let mut notifications = std::pin::pin!(conn.notifications_stream());
    while let Some(notification) = notifications.next().await {
        let notification = notification?;
        if let Some(event) = TaskEvent::parse(&notification.channel, &notification.payload) {
            let _ = events.send(event);
        }
    }
    anyhow::bail!("notification stream ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_into_events_and_anything_else_is_ignored() {
        let id = Uuid::now_v7();
        assert_eq!(
            TaskEvent::parse(TASK_CHANGED_CHANNEL, &format!("{id} cancelled")),
            Some(TaskEvent::Changed(id, TaskStatus::Cancelled))
        );
        assert_eq!(
            TaskEvent::parse(TASK_PROGRESS_CHANNEL, &TaskEvent::progress_payload(id, 42)),
            Some(TaskEvent::Progress(id, 42))
        );
        assert_eq!(
            TaskEvent::parse(TASK_STOPPED_CHANNEL, &format!("{id} expired")),
            Some(TaskEvent::Changed(id, TaskStatus::Expired))
        );
        assert_eq!(TaskEvent::parse(TASK_CHANGED_CHANNEL, &format!("{id} sleeping")), None);
        assert_eq!(TaskEvent::parse(TASK_PROGRESS_CHANNEL, &format!("{id} -1")), None);
        assert_eq!(TaskEvent::parse(TASK_CHANGED_CHANNEL, "not-a-uuid done"), None);
        assert_eq!(TaskEvent::parse("other", &format!("{id} done")), None);
    }
}
