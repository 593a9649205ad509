//! The queries of idempotency keys: reserved before an upload's body is read, completed in the
//! transaction that inserts its task, purged once they can no longer be replayed.

use diesel::dsl::now;
use diesel::prelude::*;
use diesel::sql_types::Timestamptz;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::time::Duration;
use uuid::Uuid;

use crate::models::IdempotencyRecord;
use crate::time::interval;

/// Reserves `key` for the upload that will create `task_id`, until `lease` from now: a new key,
/// a completed key older than `ttl`, or a reservation whose time has passed (its api died
/// mid-upload). `None` when the key is now ours; otherwise the row that holds it.
pub async fn reserve_key(
    conn: &mut AsyncPgConnection,
    key: &str,
    task_id: Uuid,
    lease: Duration,
    ttl: Duration,
) -> QueryResult<Option<IdempotencyRecord>> {
    use crate::schema::md5_idempotency_keys::dsl as keys;
    use diesel::sql_types::{Interval, Text};
    // A row deleted by the janitor between the two statements makes the second find nothing:
    // look again (twice is enough; the janitor deletes each row once).
    for _ in 0..3 {
        let reserved: Vec<IdempotencyRecord> = diesel::sql_query(
            "INSERT INTO md5_idempotency_keys AS k (key, task_id, reserved_until) \
             VALUES ($1, $2, now() + $3) \
             ON CONFLICT (key) DO UPDATE \
             SET task_id = EXCLUDED.task_id, file_name = NULL, size_bytes = NULL, \
                 created_at = now(), reserved_until = EXCLUDED.reserved_until \
             WHERE (k.reserved_until IS NULL AND k.created_at < now() - $4) OR k.reserved_until < now() \
             RETURNING k.*",
        )
        .bind::<Text, _>(key)
        .bind::<diesel::sql_types::Uuid, _>(task_id)
        .bind::<Interval, _>(interval(lease))
        .bind::<Interval, _>(interval(ttl))
        .load(conn)
        .await?;
        if !reserved.is_empty() {
            return Ok(None);
        }
        let existing = keys::md5_idempotency_keys
            .find(key)
            .select(IdempotencyRecord::as_select())
            .first(conn)
            .await
            .optional()?;
        if existing.is_some() {
            return Ok(existing);
        }
    }
    Err(diesel::result::Error::NotFound)
}

/// Extends the reservation of `key` by the upload of `task_id` to `lease` from now; false if
/// it is no longer that upload's.
pub async fn extend_key_reservation(
    conn: &mut AsyncPgConnection,
    key: &str,
    task_id: Uuid,
    lease: Duration,
) -> QueryResult<bool> {
    use crate::schema::md5_idempotency_keys::dsl as keys;
    let updated = diesel::update(
        keys::md5_idempotency_keys
            .find(key)
            .filter(keys::task_id.eq(task_id))
            .filter(keys::reserved_until.is_not_null()),
    )
    .set(keys::reserved_until.eq((now.into_sql::<Timestamptz>() + interval(lease)).nullable()))
    .execute(conn)
    .await?;
    Ok(updated == 1)
}

/// Gives up the reservation of `key` by the upload of `task_id` (the upload failed), so the
/// client can try again with the same key at once.
pub async fn release_key(conn: &mut AsyncPgConnection, key: &str, task_id: Uuid) -> QueryResult<()> {
    use crate::schema::md5_idempotency_keys::dsl as keys;
    diesel::delete(
        keys::md5_idempotency_keys
            .find(key)
            .filter(keys::task_id.eq(task_id))
            .filter(keys::reserved_until.is_not_null()),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Completes reserved keys with the request they were used for, as `(key, task_id, file_name,
/// size_bytes)`; run it in the transaction that inserts the tasks. The retention window starts
/// again here (`created_at`): a key is good for `IDEMPOTENCY_TTL_SECONDS` after its upload
/// completed, however long the upload took. Returns the keys it completed:
/// a key not returned was no longer reserved by that task (its reservation passed and another
/// upload took the key over).
pub async fn complete_keys(
    conn: &mut AsyncPgConnection,
    completed: &[(&str, Uuid, &str, i64)],
) -> QueryResult<Vec<String>> {
    use diesel::sql_types::{Array, BigInt, Text};
    #[derive(QueryableByName)]
    struct Completed {
        #[diesel(sql_type = Text)]
        key: String,
    }
    let rows: Vec<Completed> = diesel::sql_query(
        "UPDATE md5_idempotency_keys AS k \
         SET file_name = v.file_name, size_bytes = v.size_bytes, reserved_until = NULL, created_at = now() \
         FROM unnest($1::text[], $2::uuid[], $3::text[], $4::int8[]) AS v(key, task_id, file_name, size_bytes) \
         WHERE k.key = v.key AND k.task_id = v.task_id AND k.reserved_until IS NOT NULL \
         RETURNING k.key",
    )
    .bind::<Array<Text>, _>(completed.iter().map(|c| c.0).collect::<Vec<_>>())
    .bind::<Array<diesel::sql_types::Uuid>, _>(completed.iter().map(|c| c.1).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(completed.iter().map(|c| c.2).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(completed.iter().map(|c| c.3).collect::<Vec<_>>())
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|row| row.key).collect())
}

/// Deletes keys that can no longer be replayed: completed more than `ttl` ago, or reserved by an
/// upload whose api died more than `ttl` ago. Returns how many.
pub async fn purge_keys(conn: &mut AsyncPgConnection, ttl: Duration) -> QueryResult<usize> {
    use crate::schema::md5_idempotency_keys::dsl as keys;
    let cutoff = now.into_sql::<Timestamptz>() - interval(ttl);
    diesel::delete(keys::md5_idempotency_keys.filter(keys::created_at.lt(cutoff)).filter(
        keys::reserved_until.is_null().or(keys::reserved_until.lt(now.into_sql::<Timestamptz>().nullable())),
    ))
    .execute(conn)
    .await
}
