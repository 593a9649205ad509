//! `Idempotency-Key` on `POST /api/v1/hashes` (the IETF httpapi draft's header): a client that
//! lost the answer to an upload sends it again with the same key and gets the original task.
//!
//! The key lives in Postgres (`md5_idempotency_keys`), not in this process, so it holds across
//! api replicas and restarts:
//! 1. Before the body is read the key is *reserved* for the new task id ([`begin`]); the
//!    reservation is refreshed while the body streams, and given up if the upload fails.
//! 2. The transaction that inserts the task *completes* the key with the file name and size
//!    (`commits.rs`): key and row commit together or not at all.
//! 3. A repeat finds the key: still reserved → 409; completed with the same file name and size
//!    → the original task, nothing stored; anything else → 422.

use std::time::Duration;

use crate::database::Database;
use axum::http::HeaderMap;
use shared::maintenance::Service;
use shared::models::IdempotencyRecord;
use shared::queries;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::ApiError;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Longest accepted key, in characters.
pub const MAX_KEY_CHARS: usize = 255;
/// How long a reservation holds without being refreshed: after an api dies mid-upload, a retry
/// with the same key waits at most this long (answered 409 meanwhile).
pub const RESERVATION_LEASE: Duration = Duration::from_secs(15);
/// How often a live upload refreshes its reservation.
const RESERVATION_REFRESH: Duration = Duration::from_secs(5);
/// How often the janitor deletes keys past the retention window.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// A valid `Idempotency-Key` value: 1 to [`MAX_KEY_CHARS`] visible ASCII characters, sent bare
/// or as a structured-field string (`"…"`, as the draft writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of a request: `None` without the header, 400 when it is malformed or repeated.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else { return Ok(None) };
        if values.next().is_some() {
            return Err(ApiError::bad_request("send one Idempotency-Key header, not several"));
        }
        let invalid = || {
            ApiError::bad_request(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters (a UUID is a good key)"
            ))
        };
        let raw = value.to_str().map_err(|_| invalid())?;
        let key = match raw.strip_prefix('"').and_then(|inner| inner.strip_suffix('"')) {
            Some(quoted) if !quoted.contains(['"', '\\']) => quoted,
            Some(_) => return Err(invalid()),
            None => raw,
        };
        let valid = (1..=MAX_KEY_CHARS).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(invalid());
        }
        Ok(Some(IdempotencyKey(key.to_owned())))
    }

    /// The key as stored for the client of the API key `owner`: a key of its own, which no
    /// other client's can equal (a client's key has no space; this one starts with the owner and
    /// one).
    pub fn scoped(self, owner: Option<i64>) -> Self {
        match owner {
            None => self,
            Some(owner) => IdempotencyKey(format!("{owner} {}", self.0)),
        }
    }

    /// The key as sent (without the quotes of a structured-field string).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the key says about a new upload.
pub enum Begin {
    /// The key is new (or free again): the upload goes ahead under this reservation.
    Reserved(Reservation),
    /// The key's first upload is complete: a repeat with the same request gets its task.
    Completed(IdempotencyRecord),
    /// The key's first upload is still streaming: 409.
    InProgress,
}

/// Looks the key up and reserves it for the upload that will create `task_id` if it is free.
pub async fn begin(
    db: &Database,
    key: IdempotencyKey,
    task_id: Uuid,
    ttl: Duration,
) -> Result<Begin, ApiError> {
    let existing = db
        .run(async |conn| queries::reserve_key(conn, key.as_str(), task_id, RESERVATION_LEASE, ttl).await)
        .await?;
    let outcome = match existing {
        None => Begin::Reserved(Reservation::hold(db.clone(), key, task_id)),
        Some(record) if record.reserved_until.is_some() => Begin::InProgress,
        Some(record) => Begin::Completed(record),
    };
    let label = match outcome {
        Begin::Reserved(_) => "new",
        Begin::Completed(_) => "repeat",
        Begin::InProgress => "in_progress",
    };
    metrics::counter!("md5_idempotency_keys_total", "outcome" => label).increment(1);
    Ok(outcome)
}

/// A key reserved for an upload in progress. While it lives, a task refreshes the reservation;
/// dropped before [`Reservation::completed`], it gives the key up so the client may retry.
pub struct Reservation {
    key: IdempotencyKey,
    task_id: Uuid,
    db: Database,
    refresh: CancellationToken,
    completed: bool,
}

impl Reservation {
    fn hold(db: Database, key: IdempotencyKey, task_id: Uuid) -> Self {
        let refresh = CancellationToken::new();
        let (stop, refresh_db, refresh_key) = (refresh.clone(), db.clone(), key.0.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(RESERVATION_REFRESH) => {}
                    () = stop.cancelled() => return,
                }
                // A refresh that fails is tried again at the next tick; if the database stays
                // away, the upload fails at its commit anyway.
                let refreshed = refresh_db
                    .run(async |conn| {
                        queries::extend_key_reservation(conn, &refresh_key, task_id, RESERVATION_LEASE).await
                    })
                    .await;
                match refreshed {
                    Ok(true) => {}
                    // Taken over after it ran out: the upload's commit will find that out.
                    Ok(false) => return,
                    Err(err) => {
                        let err = anyhow::Error::new(err);
                        tracing::warn!(task.id = %task_id, error = format!("{err:#}"), "cannot refresh an idempotency key's reservation")
                    }
                }
            }
        });
        Reservation { key, task_id, db, refresh, completed: false }
    }

    /// The reserved key.
    pub fn key(&self) -> &str {
        self.key.as_str()
    }

    /// The key is completed with its task's row: nothing to give up any more.
    pub fn completed(mut self) {
        self.completed = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.refresh.cancel();
        if self.completed {
            return;
        }
        let (db, key, task_id) = (self.db.clone(), self.key.0.clone(), self.task_id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // If this fails the reservation simply runs out after RESERVATION_LEASE.
                let _ = db.run(async |conn| queries::release_key(conn, &key, task_id).await).await;
            });
        }
    }
}

/// Deletes keys past the retention window at start, then every [`PURGE_INTERVAL`], as a
/// maintenance service: the table holds at most the keys of the last `ttl`.
pub struct PurgeKeys {
    /// Where the keys are.
    pub db: Database,
    /// How long a key is kept.
    pub ttl: Duration,
}

impl Service for PurgeKeys {
    fn name(&self) -> &'static str {
        "idempotency key purge"
    }

    async fn run(self, stop: CancellationToken) {
        loop {
            match self.db.run(async |conn| queries::purge_keys(conn, self.ttl).await).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(keys.purged = purged, "deleted expired idempotency keys"),
                Err(err) => {
                    let err = anyhow::Error::new(err);
                    tracing::warn!(error = format!("{err:#}"), "cannot delete expired idempotency keys")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(PURGE_INTERVAL) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn key(values: &[&str]) -> Result<Option<IdempotencyKey>, ApiError> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(HEADER, HeaderValue::from_str(value).unwrap());
        }
        IdempotencyKey::from_headers(&headers)
    }

    #[test]
    fn keys_are_bare_or_structured_field_strings_of_visible_ascii() {
        assert_eq!(key(&[]).unwrap(), None);
        assert_eq!(key(&["8e03978e-40d5"]).unwrap().unwrap().as_str(), "8e03978e-40d5");
        assert_eq!(key(&["\"8e03978e-40d5\""]).unwrap().unwrap().as_str(), "8e03978e-40d5");
        assert_eq!(key(&[&"k".repeat(MAX_KEY_CHARS)]).unwrap().unwrap().as_str().len(), MAX_KEY_CHARS);
        for bad in ["", "\"\"", "a b", "\"a\\\"b\"", &"k".repeat(MAX_KEY_CHARS + 1)] {
            assert!(key(&[bad]).is_err(), "{bad:?} must be refused");
        }
        assert!(key(&["a", "b"]).is_err(), "two keys must be refused");
    }
}
