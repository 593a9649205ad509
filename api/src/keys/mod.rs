//! API keys: who a request comes from, what it may see, and its quotas.
//!
//! `md5-api keys create` ([`cli`]) draws a key of 256 random bits behind the prefix
//! [`KEY_PREFIX`] (so secret scanners can find a leaked one), prints it once and stores only its
//! SHA-256 ([`store`]). Every api replica holds all live keys in memory ([`Keys`]) and looks for
//! a change every [`REFRESH_EVERY`] ([`KeyRefresh`]), so a revoked key is refused by every
//! replica within a second and no request waits for a query. The shared `API_KEY`, if set, is one
//! more key: one client, seeing the tasks no key owns.
//!
//! Once a key exists (revoked ones count: revoking the last key does not open the service) or
//! `API_KEY` is set, every API route needs a valid `Authorization: Bearer <key>` (401 without);
//! before that, the service is open and each address is an anonymous client.
//!
//! `routes::identify` runs before every API route: it puts the request's [`ClientId`] (the key's, else
//! the anonymous address, forwarded through `TRUSTED_PROXIES`) and its [`Scope`] (the tasks it may
//! see) into the request, and the key's name into the request's log span. Every task records the
//! key that created it (`md5_tasks.owner`); another key's task answers as one that does not
//! exist, except to an admin key, which sees all.

pub mod cli;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;
use tokio_util::sync::CancellationToken;

use crate::client_id::ClientId;
use crate::database::{Database, DbError};
use crate::error::ApiError;
use crate::quotas::{QuotaOverrides, Quotas};
use shared::maintenance::Service;

/// What every key starts with.
pub const KEY_PREFIX: &str = "md5svc_";
/// How often each replica looks for created, revoked or changed keys.
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);
/// How often the keys used since are given a new `last_used_at`.
const TOUCH_EVERY: Duration = Duration::from_secs(2);

/// A new key: the prefix and 256 random bits, base64url.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random number generator");
    format!("{KEY_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// What is stored of a key.
pub fn hash(key: &str) -> [u8; 32] {
    sha2::Sha256::digest(key.as_bytes()).into()
}

/// One live key, as a replica holds it.
#[derive(Debug)]
pub struct Key {
    /// `md5_api_keys.key_id`: the owner of its tasks.
    pub id: i64,
    /// Its name, for logs and webhook events.
    pub name: Arc<str>,
    /// Sees every client's tasks.
    pub admin: bool,
    /// Its own quotas.
    pub quotas: QuotaOverrides,
    hash: [u8; 32],
}

#[derive(Debug, Default)]
struct Table {
    /// Whether any key was ever created (revoked ones count).
    exists: bool,
    by_hash: HashMap<[u8; 32], Arc<Key>>,
    by_id: HashMap<i64, Arc<Key>>,
    version: Option<(i64, Option<DateTime<Utc>>)>,
}

/// Every live key, shared by the handlers of one replica.
#[derive(Debug, Clone)]
pub struct Keys {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Option<String>,
    defaults: Quotas,
    table: RwLock<Arc<Table>>,
    used: Mutex<HashSet<i64>>,
}

/// The tasks a request may see, and the owner of those it creates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scope {
    /// The key whose tasks these are (`None`: an anonymous client's or the shared key's).
    pub owner: Option<i64>,
    /// An admin key: sees every task.
    pub sees_all: bool,
}

impl Scope {
    /// Every task: for reading again a task the request was already shown.
    pub const EVERY: Scope = Scope { owner: None, sees_all: true };

    /// Whether a task owned by `owner` is visible.
    pub fn may_see(&self, owner: Option<i64>) -> bool {
        self.sees_all || self.owner == owner
    }

    /// The owner a lookup filters by (`None`: every owner).
    pub fn filter(&self) -> Option<Option<i64>> {
        (!self.sees_all).then_some(self.owner)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Scope {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Scope>().copied().unwrap_or_default())
    }
}

/// The client and scope of a request, as handlers take them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Requester {
    /// The client its bounds count against.
    pub client: Option<ClientId>,
    /// What it may see, and the owner of what it creates.
    pub scope: Scope,
}

impl<S: Send + Sync> FromRequestParts<S> for Requester {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Requester {
            client: parts.extensions.get::<ClientId>().copied(),
            scope: parts.extensions.get::<Scope>().copied().unwrap_or_default(),
        })
    }
}

/// Who a request is, once its key (if any) was checked.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client its bounds count against (`None`: the anonymous client has no known address).
    pub client: Option<ClientId>,
    /// What it may see.
    pub scope: Scope,
    /// The key's name (`None`: anonymous, or the shared `API_KEY`).
    pub key_name: Option<Arc<str>>,
}

impl Keys {
    /// No keys yet (until [`Keys::load`]); `shared` is `API_KEY`, `defaults` the settings' quotas.
    pub fn new(shared: Option<String>, defaults: Quotas) -> Self {
        Keys {
            inner: Arc::new(Inner {
                shared: shared.filter(|key| !key.is_empty()),
                defaults,
                table: RwLock::default(),
                used: Mutex::default(),
            }),
        }
    }

    fn table(&self) -> Arc<Table> {
        self.inner.table.read().expect("key table lock").clone()
    }

    /// Reads the keys again if any changed since the last read; true if they did.
    pub async fn load(&self, db: &Database) -> Result<bool, DbError> {
        let version = db.run(async |conn| store::version(conn).await).await?;
        if self.table().version == Some(version) {
            return Ok(false);
        }
        let rows = db.run(async |conn| store::all(conn).await).await?;
        let mut table = Table { exists: !rows.is_empty(), version: Some(version), ..Table::default() };
        for row in rows.into_iter().filter(|row| row.revoked_at.is_none()) {
            let Ok(hash) = <[u8; 32]>::try_from(row.key_hash.as_slice()) else { continue };
            let key = Arc::new(Key {
                id: row.key_id,
                name: Arc::from(row.name.as_str()),
                admin: row.admin,
                quotas: row.overrides(),
                hash,
            });
            table.by_hash.insert(hash, key.clone());
            table.by_id.insert(key.id, key);
        }
        *self.inner.table.write().expect("key table lock") = Arc::new(table);
        Ok(true)
    }

    /// Whether a request needs a key.
    pub fn required(&self) -> bool {
        self.required_with(&self.table())
    }

    fn required_with(&self, table: &Table) -> bool {
        self.inner.shared.is_some() || table.exists
    }

    /// The caller of a request with `headers` whose anonymous client would be `anonymous`; 401
    /// when a key is required and none valid was given. (A key given while none is required is
    /// ignored, as before keys existed.)
    pub fn authenticate(&self, headers: &HeaderMap, anonymous: Option<ClientId>) -> Result<Caller, ApiError> {
        let table = self.table();
        let anonymous = Caller { client: anonymous, scope: Scope::default(), key_name: None };
        if !self.required_with(&table) {
            return Ok(anonymous);
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(ApiError::unauthorized)?;
        if let Some(shared) = &self.inner.shared
            && bool::from(presented.as_bytes().ct_eq(shared.as_bytes()))
        {
            return Ok(Caller { client: Some(ClientId::SharedKey), ..anonymous });
        }
        let hash = hash(presented);
        let key = table.by_hash.get(&hash).filter(|key| bool::from(key.hash.ct_eq(&hash)));
        let key = key.ok_or_else(ApiError::unauthorized)?;
        self.inner.used.lock().expect("used keys lock").insert(key.id);
        Ok(Caller {
            client: Some(ClientId::Key(key.id)),
            scope: Scope { owner: Some(key.id), sees_all: key.admin },
            key_name: Some(key.name.clone()),
        })
    }

    /// The quotas of `client`: its key's own where it has them, else the settings'.
    pub fn quotas(&self, client: Option<ClientId>) -> Quotas {
        let defaults = self.inner.defaults;
        match client {
            Some(ClientId::Key(id)) => {
                self.table().by_id.get(&id).map_or(defaults, |key| defaults.with(&key.quotas))
            }
            _ => defaults,
        }
    }

    /// The name of the key `id`, if it is live.
    pub fn name_of(&self, id: i64) -> Option<Arc<str>> {
        self.table().by_id.get(&id).map(|key| key.name.clone())
    }

    fn take_used(&self) -> Vec<i64> {
        self.inner.used.lock().expect("used keys lock").drain().collect()
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110, section 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start())
}

/// Keeps a replica's keys current: looks for changes every [`REFRESH_EVERY`], and records which
/// keys were used every [`TOUCH_EVERY`].
pub struct KeyRefresh {
    /// The replica's keys.
    pub keys: Keys,
    /// Where they are.
    pub db: Database,
}

impl Service for KeyRefresh {
    fn name(&self) -> &'static str {
        "API key refresh"
    }

    async fn run(self, stop: CancellationToken) {
        let mut touched_at = tokio::time::Instant::now();
        let mut failing = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(REFRESH_EVERY) => {}
                () = stop.cancelled() => return,
            }
            match self.keys.load(&self.db).await {
                Ok(changed) => {
                    if changed || failing {
                        tracing::info!("API keys read again");
                    }
                    failing = false;
                }
                Err(err) => {
                    if !failing {
                        let err = anyhow::Error::new(err);
                        tracing::warn!(
                            error = format!("{err:#}"),
                            "cannot read the API keys; keeping the last ones read"
                        );
                    }
                    failing = true;
                }
            }
            if touched_at.elapsed() >= TOUCH_EVERY {
                touched_at = tokio::time::Instant::now();
                let used = self.keys.take_used();
                if !used.is_empty() {
                    let _ = self.db.run(async |conn| store::touch(conn, &used).await).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_has_the_prefix_and_256_random_bits_and_only_its_hash_is_kept() {
        let (a, b) = (generate(), generate());
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 43);
        assert_ne!(a, b);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
