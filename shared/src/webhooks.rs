//! The webhook outbox (`md5_webhook_deliveries`): what an ended task's event is ([`EventType`],
//! [`Event`]), written by [`write_events`] in the transaction that ends the task (the worker's
//! result, the api's cancel, a resumable upload terminated), and the queries of its delivery by
//! the workers (`worker/src/webhooks/`). Every change is conditional on the row still being due
//! or claimed, so two workers never both record an outcome for one attempt.

use std::time::Duration;

use diesel::sql_types::{BigInt, Integer, Interval, Text};
use diesel::{ExpressionMethods as _, QueryDsl as _, QueryableByName};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use uuid::Uuid;

use crate::prepared::bind;
use crate::schema;
use crate::task_view::TaskView;
use crate::time::interval;
use crate::{Task, TaskStatus};

/// The kinds of event a receiver gets: one per way a task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventType {
    /// The task is `done`: `data.md5` and `data.digests` hold its digests.
    #[serde(rename = "task.done")]
    TaskDone,
    /// The task `failed`: `data.error` says why.
    #[serde(rename = "task.failed")]
    TaskFailed,
    /// The client cancelled the task.
    #[serde(rename = "task.cancelled")]
    TaskCancelled,
}

impl EventType {
    /// The event a task ending in `status` raises; `None` for a status that raises none (a
    /// task still running, or a resumable upload that `expired`).
    pub fn for_status(status: TaskStatus) -> Option<EventType> {
        match status {
            TaskStatus::Done => Some(EventType::TaskDone),
            TaskStatus::Failed => Some(EventType::TaskFailed),
            TaskStatus::Cancelled => Some(EventType::TaskCancelled),
            TaskStatus::Uploading | TaskStatus::Queued | TaskStatus::Processing | TaskStatus::Expired => None,
        }
    }
}

/// One event's body (Standard Webhooks' `type`, `timestamp`, `data`): `data` is the task exactly
/// as `GET /api/v1/hashes/{id}` shows it.
#[derive(Debug, Serialize)]
pub struct Event {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When it happened: the task's `finished_at`.
    #[serde(serialize_with = "crate::time::millis::serialize")]
    pub timestamp: chrono::DateTime<chrono::Utc>,
    /// The task.
    pub data: TaskView,
    /// The name of the API key whose client created the task (absent for an anonymous
    /// client's or the shared `API_KEY`'s): a receiver serving several clients can route by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Event {
    /// The event of `task`, which has just ended; `None` if its status raises none.
    pub fn of(task: &Task) -> Option<Event> {
        let kind = EventType::for_status(task.status)?;
        let timestamp = task.finished_at.unwrap_or_else(chrono::Utc::now);
        Some(Event { kind, timestamp, data: TaskView::from(task.clone()), key: None })
    }

    /// The `webhook-id` of this task's event: the task's and its status's, so one event can
    /// never go out under two ids.
    pub fn id(&self) -> String {
        format!("msg_{}_{}", self.data.id.simple(), self.data.status.as_str())
    }
}

/// Writes the events of `ended` (tasks whose status just became terminal) to the outbox, one
/// row per enabled endpoint that a running worker registered within [`SEEN_FOR`], with their bodies fixed now so that every retry sends the same
/// bytes. Call it in the transaction that ended them, so an event exists if and only if its
/// task's end was committed. An event already written (the same id) is left as it is.
pub async fn write_events(conn: &mut AsyncPgConnection, ended: &[Task]) -> diesel::QueryResult<()> {
    use diesel::sql_types::Array;
    let mut events: Vec<Event> = ended.iter().filter_map(Event::of).collect();
    if events.is_empty() {
        return Ok(());
    }
    let owners: Vec<i64> = ended.iter().filter_map(|task| task.owner).collect();
    if !owners.is_empty() {
        let names: std::collections::HashMap<i64, String> = schema::md5_api_keys::table
            .filter(schema::md5_api_keys::key_id.eq_any(&owners))
            .select((schema::md5_api_keys::key_id, schema::md5_api_keys::name))
            .load::<(i64, String)>(conn)
            .await?
            .into_iter()
            .collect();
        let owner_of: std::collections::HashMap<Uuid, i64> =
            ended.iter().filter_map(|task| Some((task.task_id, task.owner?))).collect();
        for event in &mut events {
            event.key = owner_of.get(&event.data.id).and_then(|owner| names.get(owner)).cloned();
        }
    }
    let ids: Vec<String> = events.iter().map(Event::id).collect();
    let tasks: Vec<Uuid> = events.iter().map(|event| event.data.id).collect();
    let payloads: Vec<String> =
        events.iter().map(|event| serde_json::to_string(event).expect("an event serializes")).collect();
    crate::prepared::prepared(
        "INSERT INTO md5_webhook_deliveries (event_id, endpoint_id, task_id, payload) \
         SELECT v.event_id, e.endpoint_id, v.task_id, v.payload \
         FROM unnest($1::text[], $2::uuid[], $3::text[]) AS v(event_id, task_id, payload) \
         CROSS JOIN md5_webhook_endpoints AS e WHERE e.disabled_at IS NULL AND e.seen_at > now() - $4 \
         ON CONFLICT DO NOTHING",
        (
            bind::<Array<Text>, _>(ids),
            bind::<Array<diesel::sql_types::Uuid>, _>(tasks),
            bind::<Array<Text>, _>(payloads),
            bind::<Interval, _>(interval(SEEN_FOR)),
        ),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A delivery claimed for one attempt.
#[derive(Debug, Clone, QueryableByName)]
pub struct Delivery {
    /// The `webhook-id`.
    #[diesel(sql_type = Text)]
    pub event_id: String,
    /// The endpoint's row.
    #[diesel(sql_type = Integer)]
    pub endpoint_id: i32,
    /// Where to send it.
    #[diesel(sql_type = Text)]
    pub url: String,
    /// The JSON body, the same bytes on every attempt.
    #[diesel(sql_type = Text)]
    pub payload: String,
    /// This attempt's number, from 1.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
}

/// How long after a worker last registered an endpoint events are still written for it (its
/// workers register every [`REGISTER_EVERY`]); after that, a URL no running worker names gets
/// no new events.
pub const SEEN_FOR: Duration = Duration::from_secs(300);

/// How often a delivering worker registers its endpoints again.
pub const REGISTER_EVERY: Duration = Duration::from_secs(60);

/// Registers `urls` as endpoints seen now (an endpoint a 410 disabled stays disabled).
pub async fn register_endpoints(conn: &mut AsyncPgConnection, urls: &[String]) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO md5_webhook_endpoints (url) SELECT unnest($1::text[]) \
         ON CONFLICT (url) DO UPDATE SET seen_at = now()",
    )
    .bind::<diesel::sql_types::Array<Text>, _>(urls)
    .execute(conn)
    .await?;
    Ok(())
}

/// Claims up to `limit` due deliveries to `urls` (the claiming worker's own endpoints: nothing
/// is delivered to a URL no running worker is configured with) for one attempt each: their
/// attempt count goes up and they are not due again for `lease` (longer than an attempt can
/// take), so another worker leaves them alone meanwhile and takes them over if this one dies.
pub async fn claim_due(
    conn: &mut AsyncPgConnection,
    urls: &[String],
    limit: i64,
    lease: Duration,
) -> diesel::QueryResult<Vec<Delivery>> {
    diesel::sql_query(
        "WITH due AS ( \
             SELECT d.event_id, d.endpoint_id FROM md5_webhook_deliveries AS d \
             JOIN md5_webhook_endpoints AS e ON e.endpoint_id = d.endpoint_id \
             WHERE d.delivered_at IS NULL AND d.gave_up_at IS NULL AND d.next_attempt_at <= now() \
                   AND e.url = ANY($3::text[]) \
             ORDER BY d.next_attempt_at LIMIT $1 FOR UPDATE OF d SKIP LOCKED), \
         claimed AS ( \
             UPDATE md5_webhook_deliveries AS d \
             SET attempts = d.attempts + 1, next_attempt_at = now() + $2 \
             FROM due WHERE d.event_id = due.event_id AND d.endpoint_id = due.endpoint_id \
             RETURNING d.event_id, d.endpoint_id, d.payload, d.attempts) \
         SELECT c.event_id, c.endpoint_id, e.url, c.payload, c.attempts \
         FROM claimed AS c JOIN md5_webhook_endpoints AS e ON e.endpoint_id = c.endpoint_id",
    )
    .bind::<BigInt, _>(limit)
    .bind::<Interval, _>(interval(lease))
    .bind::<diesel::sql_types::Array<Text>, _>(urls)
    .load(conn)
    .await
}

/// Deletes up to `limit` deliveries that are over (delivered, or given up) of tasks created
/// before `before` (a UUIDv7), oldest first; how many it deleted. An event's id begins with its
/// task's id in hex, so those deliveries are a range at the start of the primary key.
pub async fn forget_deliveries(
    conn: &mut AsyncPgConnection,
    before: Uuid,
    limit: i64,
) -> diesel::QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM md5_webhook_deliveries WHERE (event_id, endpoint_id) IN ( \
             SELECT event_id, endpoint_id FROM md5_webhook_deliveries \
             WHERE event_id < $1 AND (delivered_at IS NOT NULL OR gave_up_at IS NOT NULL) \
             ORDER BY event_id LIMIT $2)",
    )
    .bind::<Text, _>(format!("msg_{}", before.simple()))
    .bind::<BigInt, _>(limit)
    .execute(conn)
    .await
}

/// Records the outcome of an attempt at `delivery`.
pub async fn record(
    conn: &mut AsyncPgConnection,
    delivery: &Delivery,
    outcome: &AttemptOutcome,
) -> diesel::QueryResult<()> {
    let (event_id, endpoint_id) = (delivery.event_id.as_str(), delivery.endpoint_id);
    match outcome {
        AttemptOutcome::Delivered => {
            diesel::sql_query(
                "UPDATE md5_webhook_deliveries SET delivered_at = now(), last_error = NULL \
                 WHERE event_id = $1 AND endpoint_id = $2 AND delivered_at IS NULL",
            )
            .bind::<Text, _>(event_id)
            .bind::<Integer, _>(endpoint_id)
            .execute(conn)
            .await?;
        }
        AttemptOutcome::RetryIn(delay, error) => {
            diesel::sql_query(
                "UPDATE md5_webhook_deliveries SET next_attempt_at = now() + $3, last_error = $4 \
                 WHERE event_id = $1 AND endpoint_id = $2 AND delivered_at IS NULL AND gave_up_at IS NULL",
            )
            .bind::<Text, _>(event_id)
            .bind::<Integer, _>(endpoint_id)
            .bind::<Interval, _>(interval(*delay))
            .bind::<Text, _>(error)
            .execute(conn)
            .await?;
        }
        AttemptOutcome::GiveUp(error) => {
            diesel::sql_query(
                "UPDATE md5_webhook_deliveries SET gave_up_at = now(), last_error = $3 \
                 WHERE event_id = $1 AND endpoint_id = $2 AND delivered_at IS NULL AND gave_up_at IS NULL",
            )
            .bind::<Text, _>(event_id)
            .bind::<Integer, _>(endpoint_id)
            .bind::<Text, _>(error)
            .execute(conn)
            .await?;
        }
        AttemptOutcome::EndpointGone => {
            diesel::sql_query("UPDATE md5_webhook_endpoints SET disabled_at = now() WHERE endpoint_id = $1")
                .bind::<Integer, _>(endpoint_id)
                .execute(conn)
                .await?;
            diesel::sql_query(
                "UPDATE md5_webhook_deliveries SET gave_up_at = now(), last_error = 'the endpoint answered 410 Gone' \
                 WHERE endpoint_id = $1 AND delivered_at IS NULL AND gave_up_at IS NULL",
            )
            .bind::<Integer, _>(endpoint_id)
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx answer.
    Delivered,
    /// Failed (the reason); try again after this long.
    RetryIn(Duration, String),
    /// Failed (the reason) and the schedule is spent.
    GiveUp(String),
    /// 410 Gone: the endpoint is disabled, its pending deliveries dropped.
    EndpointGone,
}
