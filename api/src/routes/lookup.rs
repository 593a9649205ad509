//! `GET /api/v1/digests/{algorithm}/{hex}`: the done tasks whose file had this digest ("have you
//! seen these bytes?"), newest first, a page at a time.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use shared::Algorithm;
use shared::queries::{self, FoundTask};

use crate::digests::AlgorithmName;
use crate::error::{ApiError, Problem};
use crate::keys::Scope;
use crate::refusals::Refusals;
use crate::state::AppState;

/// Tasks a page lists unless `limit` says otherwise.
const DEFAULT_LIMIT: u32 = 50;
/// Most tasks a page lists.
const MAX_LIMIT: u32 = 100;

/// Query of the lookup.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LookupQuery {
    /// Tasks per page (1–100, default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// Where the page starts: the `next` of the page before (opaque).
    #[param(pattern = "^[0-9]{1,16}\\.[0-9a-f]{32}$")]
    pub cursor: Option<String>,
}

/// One page of the tasks that had a digest.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LookupPage {
    /// The algorithm, as named in the path.
    pub algorithm: String,
    /// The digest, lowercase hex.
    pub digest: String,
    /// Done tasks whose file had that digest, most recently hashed first.
    pub tasks: Vec<FoundView>,
    /// The URL of the next page; `null` on the last.
    pub next: Option<String>,
}

/// A task found by content.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FoundView {
    /// Its id (`GET /api/v1/hashes/{id}` has the rest).
    pub id: Uuid,
    /// Its file name.
    pub file_name: String,
    /// Its file's size.
    pub size_bytes: i64,
    /// When it was hashed.
    #[serde(serialize_with = "shared::time::millis::serialize")]
    pub finished_at: DateTime<Utc>,
}

impl From<FoundTask> for FoundView {
    fn from(found: FoundTask) -> Self {
        FoundView {
            id: found.task_id,
            file_name: found.file_name,
            size_bytes: found.size_bytes,
            finished_at: found.finished_at,
        }
    }
}

/// `GET /api/v1/digests/{algorithm}/{hex}`.
#[utoipa::path(
    get,
    path = "/api/v1/digests/{algorithm}/{hex}",
    operation_id = "find_by_digest",
    tag = "v1",
    params(
        ("algorithm" = inline(AlgorithmName), Path, description = "The algorithm", example = "sha-256"),
        ("hex" = String, Path, description = "The digest in hex (either case), as many digits as the algorithm's \
            digests have (`/assets/algorithms.json` lists each one's `hex_len`)",
            pattern = "^[0-9a-fA-F]{8,128}$", example = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"),
        LookupQuery,
    ),
    responses(
        (status = 200, description = "The done tasks whose file had this digest (none: an empty list); \
            a task is found under every digest it computed", body = LookupPage),
        (status = 400, description = "A bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such digest can exist: an unknown algorithm (the detail lists the known ones), \
            or a digest that is not hex or not that algorithm's length", body = Problem, content_type = "application/problem+json"),
        Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn find_by_digest(
    State(state): State<AppState>,
    scope: Scope,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<LookupQuery>, QueryRejection>,
) -> Result<Json<LookupPage>, ApiError> {
    let Path((name, hex)) = path.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let Query(query) = query.map_err(|err| ApiError::bad_request(err.body_text()))?;
    // A path that cannot name a digest names no resource: 404, saying why.
    let algorithm = Algorithm::from_name(&name).ok_or_else(|| {
        ApiError::not_found(format!("unknown digest algorithm {name:?}; known: {}", Algorithm::names()))
    })?;
    let hex = hex.to_ascii_lowercase();
    let digest = hex::decode(&hex).ok().filter(|_| hex.len() == algorithm.hex_len()).ok_or_else(|| {
        ApiError::not_found(format!("a {algorithm} digest is {} hex digits", algorithm.hex_len()))
    })?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be 1 to {MAX_LIMIT}")));
    }
    let after = query.cursor.as_deref().map(parse_cursor).transpose()?;
    let found = state
        .db
        .run(async |conn| {
            queries::find_by_digest(conn, algorithm, &digest, scope.filter(), after, i64::from(limit)).await
        })
        .await?;
    let next = (found.len() == limit as usize).then(|| {
        let last = found.last().expect("a full page has a last task");
        format!(
            "/api/v1/digests/{algorithm}/{hex}?limit={limit}&cursor={}",
            cursor(last.finished_at, last.task_id)
        )
    });
    Ok(Json(LookupPage {
        algorithm: algorithm.name().to_owned(),
        digest: hex,
        tasks: found.into_iter().map(FoundView::from).collect(),
        next,
    }))
}

/// The cursor after a task: its finish time in microseconds and its id.
fn cursor(finished_at: DateTime<Utc>, task_id: Uuid) -> String {
    format!("{}.{}", finished_at.timestamp_micros(), task_id.simple())
}

fn parse_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::bad_request("cursor: use the `next` link of the page before");
    let (micros, id) = cursor.split_once('.').ok_or_else(bad)?;
    let finished_at = micros.parse().ok().and_then(DateTime::from_timestamp_micros).ok_or_else(bad)?;
    Ok((finished_at, Uuid::parse_str(id).map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_a_forged_one_is_refused() {
        let at = DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let id = Uuid::now_v7();
        assert_eq!(parse_cursor(&cursor(at, id)).unwrap(), (at, id));
        for bad in ["", "12", "x.y", "12.not-a-uuid", "99999999999999999999.0"] {
            assert!(parse_cursor(bad).is_err(), "{bad:?}");
        }
    }
}
