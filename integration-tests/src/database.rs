//! The test databases and services: where the shared Postgres and Redis are, and a fresh
//! database per test.

use anyhow::Context as _;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

/// Admin URL used to create and drop per-test databases.
pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Redis for tests.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A database created for one test and dropped with it.
pub struct TestDatabase {
    /// Its URL.
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// Creates an empty database on the test Postgres.
    pub async fn create() -> anyhow::Result<Self> {
        let name = format!("md5_test_{}", &Uuid::new_v4().simple().to_string()[..16]);
        let admin = admin_database_url();
        let mut conn = AsyncPgConnection::establish(&admin).await.with_context(|| {
            format!("cannot reach Postgres at {admin} (start it, or set TEST_DATABASE_URL)")
        })?;
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
        Ok(TestDatabase { url: replace_database(&admin, &name), name })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = admin_database_url();
        // Async I/O on a thread of its own, so Drop works inside or outside a runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut conn = AsyncPgConnection::establish(&admin).await.ok()?;
                diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// `url` with its database name replaced by `database` (query parameters kept).
pub fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match base.rsplit_once('/') {
        Some((host, _)) if host.contains("//") && host.len() > "postgres://".len() - 1 => host,
        _ => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}
