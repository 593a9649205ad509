//! What the api learns about tasks without asking Postgres: every status change and the
//! workers' progress announcements (`shared::events`, one `LISTEN` connection per api process),
//! fanned out to `?wait=` requests and event streams, and the latest progress of each running
//! hash, which `GET` shows.
//!
//! Each event goes only to those watching its task ([`TaskFeed::watch`]): a change or a progress
//! announcement costs one look-up, however many streams and long-polls wait on other tasks (every
//! one of them was woken for every event before). A `Resync` (the `LISTEN` connection came back,
//! or the feed fell behind) goes to every watcher, which then reads its task again.
//!
//! Progress is held in memory only, for at most [`STALE_AFTER`] after its last announcement and
//! never for a task that left `processing`; at most [`MAX_TRACKED`] tasks.
//!
//! The feed also knows the tasks this process inserted whose status has not changed since
//! ([`TaskFeed::inserted`]): a `?wait=` on one of them waits for its event without reading it
//! first, as if it had read it when it was inserted. Each is forgotten at its first event, at
//! every `Resync`, and by the prune that runs every [`STALE_AFTER`] once it is that old; at most
//! [`MAX_TRACKED`] are held (beyond, a `?wait=` reads first, as before). A notification
//! lost without a `Resync` (a connection silently gone) delays such an answer as it delays any
//! watcher's: until the waiter's next periodic read.

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

/// Events held for one task's slowest watcher before it lags (and reads its task again).
const WATCH_CAPACITY: usize = 16;

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
                        Ok(event) => {
                            self.feed.record(event);
                            self.feed.dispatch(event);
                        }
                        // Events were lost here: every watcher reads its task again.
                        Err(RecvError::Lagged(_)) => {
                            self.feed.record(TaskEvent::Resync);
                            self.feed.dispatch(TaskEvent::Resync);
                        }
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

/// A task's owner, and when this process inserted it.
type Inserted = (Option<i64>, Instant);

/// The api's task feed; cheap to clone.
#[derive(Clone)]
pub struct TaskFeed {
    events: TaskEvents,
    progress: Arc<Mutex<HashMap<Uuid, (u64, Instant)>>>,
    /// Tasks this process inserted that no event has changed since: their owner, and when.
    unchanged: Arc<Mutex<HashMap<Uuid, Inserted>>>,
    /// The tasks being watched, each with the sender its watchers receive from.
    watched: Arc<Mutex<HashMap<Uuid, broadcast::Sender<TaskEvent>>>>,
}

/// The events of one task (and every `Resync`), from [`TaskFeed::watch`]; unwatched when dropped.
pub struct TaskWatch {
    task_id: Uuid,
    receiver: broadcast::Receiver<TaskEvent>,
    watched: Arc<Mutex<HashMap<Uuid, broadcast::Sender<TaskEvent>>>>,
}

impl TaskWatch {
    /// The next event of the watched task, as a broadcast receiver gives it (`Lagged` when this
    /// watcher fell behind: it should read its task again).
    pub async fn recv(&mut self) -> Result<TaskEvent, RecvError> {
        self.receiver.recv().await
    }
}

impl Drop for TaskWatch {
    fn drop(&mut self) {
        let mut watched = self.watched.lock().expect("watched lock");
        // This watch's receiver still counts: the last watcher removes the task's sender.
        if watched.get(&self.task_id).is_some_and(|sender| sender.receiver_count() <= 1) {
            watched.remove(&self.task_id);
        }
    }
}

impl TaskFeed {
    /// The feed of `database_url`'s status changes and progress, and the service that fills it
    /// once started (its `LISTEN` connection and the progress it records).
    pub fn listen(database_url: String) -> (Self, FeedService) {
        let (events, listener) = TaskEvents::listen(database_url, Channels::ChangesAndProgress);
        let feed =
            TaskFeed { events, progress: Arc::default(), unchanged: Arc::default(), watched: Arc::default() };
        (feed.clone(), FeedService { listener, feed })
    }

    /// The events of `task_id` from now on (and every `Resync`).
    pub fn watch(&self, task_id: Uuid) -> TaskWatch {
        let mut watched = self.watched.lock().expect("watched lock");
        let receiver =
            watched.entry(task_id).or_insert_with(|| broadcast::channel(WATCH_CAPACITY).0).subscribe();
        TaskWatch { task_id, receiver, watched: self.watched.clone() }
    }

    /// Tasks watched now (for tests and metrics).
    pub fn watched_tasks(&self) -> usize {
        self.watched.lock().expect("watched lock").len()
    }

    /// Sends `event` to the watchers of its task, or a `Resync` to every watcher.
    fn dispatch(&self, event: TaskEvent) {
        let watched = self.watched.lock().expect("watched lock");
        match event {
            TaskEvent::Changed(task_id, _) | TaskEvent::Progress(task_id, _) => {
                if let Some(sender) = watched.get(&task_id) {
                    let _ = sender.send(event);
                }
            }
            TaskEvent::Resync => {
                for sender in watched.values() {
                    let _ = sender.send(TaskEvent::Resync);
                }
            }
        }
    }

    /// Bytes hashed of `task_id`, as its worker last announced (within [`STALE_AFTER`]).
    pub fn progress(&self, task_id: Uuid) -> Option<u64> {
        let progress = self.progress.lock().expect("progress lock");
        progress.get(&task_id).filter(|(_, at)| at.elapsed() < STALE_AFTER).map(|(bytes, _)| *bytes)
    }

    /// Notes that this process committed task `task_id` (`queued`, belonging to `owner`); call it
    /// before its job is enqueued, so that no change of it can come before.
    pub fn inserted(&self, task_id: Uuid, owner: Option<i64>) {
        let mut unchanged = self.unchanged.lock().expect("unchanged lock");
        if unchanged.len() < MAX_TRACKED {
            unchanged.insert(task_id, (owner, Instant::now()));
        }
    }

    /// `Some(owner)` if this process inserted `task_id` and no event has changed it since: it
    /// is still `queued` but for a change whose event is on its way (a watcher subscribed
    /// before asking gets it).
    pub fn unchanged_since_inserted(&self, task_id: Uuid) -> Option<Option<i64>> {
        self.unchanged.lock().expect("unchanged lock").get(&task_id).map(|(owner, _)| *owner)
    }

    fn record(&self, event: TaskEvent) {
        match event {
            TaskEvent::Changed(task_id, _) => {
                self.unchanged.lock().expect("unchanged lock").remove(&task_id);
            }
            TaskEvent::Resync => self.unchanged.lock().expect("unchanged lock").clear(),
            TaskEvent::Progress(..) => {}
        }
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
        self.unchanged.lock().expect("unchanged lock").retain(|_, (_, at)| at.elapsed() < STALE_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feed that nothing fills from Postgres (no database): only its in-memory parts run.
    fn unlistened() -> TaskFeed {
        let (sender, _) = broadcast::channel(4);
        TaskFeed {
            events: TaskEvents::from_sender(sender),
            progress: Arc::default(),
            unchanged: Arc::default(),
            watched: Arc::default(),
        }
    }

    #[test]
    fn an_inserted_task_is_unchanged_until_its_first_event_or_a_resync() {
        let feed = unlistened();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(feed.unchanged_since_inserted(a), None, "not inserted here");
        feed.inserted(a, Some(7));
        feed.inserted(b, None);
        feed.record(TaskEvent::Progress(a, 10));
        assert_eq!(feed.unchanged_since_inserted(a), Some(Some(7)), "progress is no change");
        feed.record(TaskEvent::Changed(a, TaskStatus::Processing));
        assert_eq!(feed.unchanged_since_inserted(a), None, "any status change, not only the end");
        assert_eq!(feed.unchanged_since_inserted(b), Some(None));
        feed.record(TaskEvent::Resync);
        assert_eq!(feed.unchanged_since_inserted(b), None, "events may have been missed");
        feed.inserted(c, None);
        feed.unchanged.lock().unwrap().insert(c, (None, Instant::now() - STALE_AFTER));
        feed.prune();
        assert_eq!(feed.unchanged_since_inserted(c), None, "forgotten after STALE_AFTER");
        // However many uploads a client makes, the feed holds at most MAX_TRACKED of them.
        for _ in 0..=MAX_TRACKED {
            feed.inserted(Uuid::now_v7(), None);
        }
        assert_eq!(feed.unchanged.lock().unwrap().len(), MAX_TRACKED);
    }

    #[tokio::test]
    async fn progress_is_kept_while_announced_and_forgotten_when_the_task_ends() {
        // Nothing listens here (no database): only the in-memory board is exercised.
        let feed = unlistened();
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

    #[tokio::test]
    async fn an_event_reaches_the_watchers_of_its_task_only_and_a_resync_every_watcher() {
        let feed = unlistened();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (mut on_a, mut also_on_a, mut on_b) = (feed.watch(a), feed.watch(a), feed.watch(b));
        assert_eq!(feed.watched_tasks(), 2);
        feed.dispatch(TaskEvent::Progress(a, 7));
        feed.dispatch(TaskEvent::Changed(Uuid::now_v7(), TaskStatus::Done));
        feed.dispatch(TaskEvent::Resync);
        assert_eq!(on_a.recv().await.unwrap(), TaskEvent::Progress(a, 7));
        assert_eq!(also_on_a.recv().await.unwrap(), TaskEvent::Progress(a, 7));
        assert_eq!(on_b.recv().await.unwrap(), TaskEvent::Resync, "b's watcher got nothing of a's");
        assert_eq!(on_a.recv().await.unwrap(), TaskEvent::Resync);
        drop(on_a);
        assert_eq!(feed.watched_tasks(), 2, "a still has a watcher");
        drop(also_on_a);
        drop(on_b);
        assert_eq!(feed.watched_tasks(), 0, "a task nobody watches is forgotten");
    }
}
