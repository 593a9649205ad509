//! What the api learns about tasks without asking Postgres: every status change and the
//! workers' progress announcements (`shared::events`, one `LISTEN` connection per api process),
//! fanned out to `?wait=` requests and event streams, and the latest progress of each running
//! hash, which `GET` shows.
//!
//! Progress is held in memory only, for at most [`STALE_AFTER`] after its last announcement and
//! never for a task that left `processing`; at most [`MAX_TRACKED`] tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use shared::TaskStatus;
use shared::events::{Channels, Listener, TaskEvent, TaskEvents};
use shared::maintenance::Service;

/// A task's progress is forgotten this long after its last announcement (its worker stopped
/// announcing: it died, or the task ended and the change is on its way).
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// Most tasks whose progress is held (running hashes across every worker); beyond it, new ones
/// are not shown until older ones end.
const MAX_TRACKED: usize = 100_000;

/// Fills a [`TaskFeed`]: its `LISTEN` connection, and the progress of each running hash.
pub struct FeedService {
    listener: Listener,
    feed: TaskFeed,
}

impl Service for FeedService {
    fn name(&self) -> &'static str {
        "task feed"
    }

    async fn run(self, stop: CancellationToken) {
        let mut received = self.feed.events.subscribe();
        let recorder = async {
            let mut prune = tokio::time::interval(STALE_AFTER);
            loop {
                tokio::select! {
                    _ = prune.tick() => self.feed.prune(),
                    event = received.recv() => match event {
                        Ok(event) => self.feed.record(event),
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        };
        tokio::select! {
            () = self.listener.run(stop.clone()) => {}
            () = recorder => {}
            () = stop.cancelled() => {}
        }
    }
}

/// The api's task feed; cheap to clone.
#[derive(Clone)]
pub struct TaskFeed {
    events: TaskEvents,
    progress: Arc<Mutex<HashMap<Uuid, (u64, Instant)>>>,
}

impl TaskFeed {
    /// The feed of `database_url`'s status changes and progress, and the service that fills it
    /// once started (its `LISTEN` connection and the progress it records).
    pub fn listen(database_url: String) -> (Self, FeedService) {
        let (events, listener) = TaskEvents::listen(database_url, Channels::ChangesAndProgress);
        let feed = TaskFeed { events, progress: Arc::default() };
        (feed.clone(), FeedService { listener, feed })
    }

    /// A receiver of every task event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }

    /// Bytes hashed of `task_id`, as its worker last announced (within [`STALE_AFTER`]).
    pub fn progress(&self, task_id: Uuid) -> Option<u64> {
        let progress = self.progress.lock().expect("progress lock");
        progress.get(&task_id).filter(|(_, at)| at.elapsed() < STALE_AFTER).map(|(bytes, _)| *bytes)
    }

    fn record(&self, event: TaskEvent) {
        let mut progress = self.progress.lock().expect("progress lock");
        match event {
            TaskEvent::Progress(task_id, bytes) => {
                if progress.len() < MAX_TRACKED || progress.contains_key(&task_id) {
                    progress.insert(task_id, (bytes, Instant::now()));
                }
            }
            TaskEvent::Changed(task_id, status) if status != TaskStatus::Processing => {
                progress.remove(&task_id);
            }
            TaskEvent::Changed(..) | TaskEvent::Resync => {}
        }
    }

    fn prune(&self) {
        self.progress.lock().expect("progress lock").retain(|_, (_, at)| at.elapsed() < STALE_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn progress_is_kept_while_announced_and_forgotten_when_the_task_ends() {
        // Nothing listens here (no database): only the in-memory board is exercised.
        let (sender, _) = broadcast::channel(4);
        let feed = TaskFeed { events: TaskEvents::from_sender(sender), progress: Arc::default() };
        let id = Uuid::now_v7();
        assert_eq!(feed.progress(id), None);
        feed.record(TaskEvent::Progress(id, 10));
        feed.record(TaskEvent::Progress(id, 20));
        assert_eq!(feed.progress(id), Some(20));
        feed.record(TaskEvent::Changed(id, TaskStatus::Processing));
        assert_eq!(feed.progress(id), Some(20), "a claim does not forget it");
        feed.record(TaskEvent::Changed(id, TaskStatus::Cancelled));
        assert_eq!(feed.progress(id), None);
        feed.progress.lock().unwrap().insert(id, (5, Instant::now() - STALE_AFTER));
        assert_eq!(feed.progress(id), None, "stale");
        feed.prune();
        assert!(feed.progress.lock().unwrap().is_empty());
    }
}
