//! `md5_api_keys`: the keys as their SHA-256, their names, admin flags and quotas.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::quotas::QuotaOverrides;
use shared::schema::md5_api_keys;

/// One key, as the api replicas and `md5-api keys list` see it (never the key itself).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = md5_api_keys, check_for_backend(diesel::pg::Pg))]
pub struct KeyRow {
    /// Its id: the owner of its tasks.
    pub key_id: i64,
    /// Its unique name.
    pub name: String,
    /// SHA-256 of the key.
    pub key_hash: Vec<u8>,
    /// Sees every client's tasks.
    pub admin: bool,
    /// Its own quotas ([`QuotaOverrides`] as JSON).
    pub quotas: serde_json::Value,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used (written every few seconds, so up to that late).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl KeyRow {
    /// Its quotas; a value this build cannot read counts as none (and is logged).
    pub fn overrides(&self) -> QuotaOverrides {
        serde_json::from_value(self.quotas.clone()).unwrap_or_else(|err| {
            tracing::warn!(key = %self.name, error = %err, "unreadable quotas of a key; using the settings");
            QuotaOverrides::default()
        })
    }
}

/// Every key, revoked ones too.
pub async fn all(conn: &mut AsyncPgConnection) -> QueryResult<Vec<KeyRow>> {
    md5_api_keys::table.select(KeyRow::as_select()).order(md5_api_keys::key_id).load(conn).await
}

/// What changes when a key is created, revoked or updated: the number of keys and their latest
/// change.
pub async fn version(conn: &mut AsyncPgConnection) -> QueryResult<(i64, Option<DateTime<Utc>>)> {
    md5_api_keys::table
        .select((diesel::dsl::count_star(), diesel::dsl::max(md5_api_keys::changed_at)))
        .first(conn)
        .await
}

/// Adds a key; `false` when the name is taken (by a live or a revoked key).
pub async fn insert(
    conn: &mut AsyncPgConnection,
    name: &str,
    key_hash: &[u8; 32],
    admin: bool,
    quotas: &QuotaOverrides,
) -> QueryResult<bool> {
    let quotas = serde_json::to_value(quotas).expect("quotas serialize");
    let inserted = diesel::insert_into(md5_api_keys::table)
        .values((
            md5_api_keys::name.eq(name),
            md5_api_keys::key_hash.eq(key_hash.as_slice()),
            md5_api_keys::admin.eq(admin),
            md5_api_keys::quotas.eq(quotas),
        ))
        .on_conflict(md5_api_keys::name)
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}

/// Revokes the key named `name`; `None` when there is none, `Some(false)` when it was revoked already.
pub async fn revoke(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<Option<bool>> {
    let Some(row) = find(conn, name).await? else { return Ok(None) };
    if row.revoked_at.is_some() {
        return Ok(Some(false));
    }
    diesel::update(md5_api_keys::table.find(row.key_id))
        .set((md5_api_keys::revoked_at.eq(diesel::dsl::now), md5_api_keys::changed_at.eq(diesel::dsl::now)))
        .execute(conn)
        .await?;
    Ok(Some(true))
}

/// Sets the key's quotas; `false` when no live key has this name.
pub async fn set_quotas(
    conn: &mut AsyncPgConnection,
    name: &str,
    quotas: &QuotaOverrides,
) -> QueryResult<bool> {
    let quotas = serde_json::to_value(quotas).expect("quotas serialize");
    let updated = diesel::update(
        md5_api_keys::table.filter(md5_api_keys::name.eq(name)).filter(md5_api_keys::revoked_at.is_null()),
    )
    .set((md5_api_keys::quotas.eq(quotas), md5_api_keys::changed_at.eq(diesel::dsl::now)))
    .execute(conn)
    .await?;
    Ok(updated == 1)
}

/// The key named `name`.
pub async fn find(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<Option<KeyRow>> {
    md5_api_keys::table
        .filter(md5_api_keys::name.eq(name))
        .select(KeyRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Records that the keys `ids` were used now (does not count as a change).
pub async fn touch(conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<()> {
    diesel::update(md5_api_keys::table.filter(md5_api_keys::key_id.eq_any(ids)))
        .set(md5_api_keys::last_used_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    Ok(())
}
