//! The Postgres connection pool and the migration runner.

use std::time::Duration;

use anyhow::Context as _;
use diesel::connection::SimpleConnection as _;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness as _, embed_migrations};

use crate::config::DatabaseArgs;

/// The pool both binaries use.
pub type Pool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;
/// A connection borrowed from [`Pool`].
pub type PooledConnection = diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>;
/// Why a connection could not be had from the pool.
pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;

/// The migrations in `shared/migrations`, compiled into both binaries.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The channel a trigger notifies at every status change of a task, with "<task id> <status>" as
/// payload (see [`crate::events`]).
pub const TASK_CHANGED_CHANNEL: &str = "md5_task_changed";

/// The channel the same trigger also notifies when a task ends `cancelled` or `expired` (the
/// changes that stop a hash), with the same payload: the one workers listen to, so that a task
/// ending as it should wakes no worker.
pub const TASK_STOPPED_CHANNEL: &str = "md5_task_stopped";

/// The channel workers notify, about once a second per running hash, with "<task id> <bytes
/// hashed>": progress travels as notifications only, never as a row update.
pub const TASK_PROGRESS_CHANNEL: &str = "md5_task_progress";

/// Key of the advisory lock that serializes migration runs across processes.
const MIGRATION_LOCK_KEY: i64 = 0x6d64_355f_6d69_6772; // "md5_migr"

/// A connection from `pool`, or an error that says there is none (its cause attached).
pub async fn connection(pool: &Pool) -> anyhow::Result<PooledConnection> {
    pool.get().await.context("no Postgres connection")
}

/// Builds the pool: at most `db_pool_size` connections, each tagged with `application_name`,
/// and no wait (for a connection or a free slot) longer than `db_timeout_ms`.
pub fn build_pool(args: &DatabaseArgs, application_name: &str) -> anyhow::Result<Pool> {
    build_pool_with(args, application_name, false)
}

/// A pool whose transactions commit without waiting for the WAL flush
/// (`synchronous_commit=off`). Only for state that is safe to lose in a Postgres crash because
/// it is rebuilt from durable state: a worker's claim and lease, and the "logged" mark.
pub fn build_bookkeeping_pool(args: &DatabaseArgs, application_name: &str) -> anyhow::Result<Pool> {
    build_pool_with(args, application_name, true)
}

fn build_pool_with(
    args: &DatabaseArgs,
    application_name: &str,
    asynchronous_commit: bool,
) -> anyhow::Result<Pool> {
    let mut url = connection_url(&args.database_url, application_name, args.timeout());
    url.push_str(&session_options(asynchronous_commit));
    // No test query on every checkout (a round trip per query otherwise): a connection whose
    // server went away is closed, is not recycled, and its first use fails like any other error.
    let mut manager_config = ManagerConfig::default();
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup = Box::new(|url| Box::pin(establish(url)));
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config);
    let timeout = Some(args.timeout());
    Pool::builder(manager)
        .max_size(args.db_pool_size as usize)
        .wait_timeout(timeout)
        .create_timeout(timeout)
        .recycle_timeout(timeout)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .context("cannot build the Postgres pool (check DATABASE_URL)")
}

/// The `options` URL parameter of every pooled connection. Each statement is planned for its
/// own values (`plan_cache_mode=force_custom_plan`): a job's statements are prepared once per
/// connection (`crate::prepared`), and Postgres would otherwise settle, after five runs, on a
/// generic plan made from the statistics of that moment; one made while `md5_tasks` was small
/// or not yet analyzed scans the whole table on every claim ever after (measured: 4.5 ms a
/// claim instead of 0.1 at 20,000 rows). The one exception is [`planned_once`], whose plans
/// cannot fall into it. With `asynchronous_commit`, commits do not wait for the WAL flush.
fn session_options(asynchronous_commit: bool) -> String {
    let mut options = "&options=-c%20plan_cache_mode%3Dforce_custom_plan".to_owned();
    if asynchronous_commit {
        options.push_str("%20-c%20synchronous_commit%3Doff");
    }
    options
}

/// How [`planned_once`] begins its transaction.
const PLANNED_ONCE: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; \
     SET LOCAL enable_seqscan = off; SET LOCAL jit = off";

/// Runs `statements` in a transaction whose statements Postgres plans once per connection
/// (a generic plan, `force_generic_plan`) instead of on every run, with no sequential scan
/// where an index can serve (`enable_seqscan=off`), all three settings for this transaction only. For the
/// statements that find their rows by primary key, such as a job's result: planning each run
/// cost more than executing it, and the generic plan a table still small would give them
/// otherwise (a scan and a hash join) is the trap [`session_options`] names; with index paths
/// only, the plan is the same whatever the table's size. Without JIT (`jit=off`): a plan that
/// must keep a sequential scan (a table with no fitting index) counts it at Postgres' "disabled"
/// cost, far above `jit_above_cost`, and was compiled on every run (measured: 50–100 ms a
/// statement instead of 0.02). One round trip, as a plain `BEGIN`.
pub async fn planned_once<R>(
    conn: &mut AsyncPgConnection,
    statements: impl AsyncFnOnce(&mut AsyncPgConnection) -> diesel::QueryResult<R>,
) -> diesel::QueryResult<R> {
    use diesel_async::AnsiTransactionManager;
    use diesel_async::TransactionManager as _;
    AnsiTransactionManager::begin_transaction_sql(conn, PLANNED_ONCE).await?;
    match statements(conn).await {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(conn).await?;
            Ok(value)
        }
        // As diesel-async's own `transaction`: the statements' error, unless the rollback
        // itself failed for another reason than a transaction already broken.
        Err(err) => match AnsiTransactionManager::rollback_transaction(conn).await {
            Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(err),
            Err(rollback) => Err(rollback),
        },
    }
}

/// Opens a connection to `url`. A failure keeps its whole cause in its message (diesel-async's
/// own `establish` keeps only "error connecting to server", not the operating system's
/// "Connection refused" behind it).
pub async fn establish(url: &str) -> diesel::ConnectionResult<AsyncPgConnection> {
    match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            AsyncPgConnection::try_from_client_and_connection(client, connection).await
        }
        Err(err) => {
            let mut message = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            Err(diesel::ConnectionError::BadConnection(message))
        }
    }
}

/// Applies pending migrations, once, even when several processes start together: each run
/// holds a Postgres advisory lock, so the second process finds nothing left to apply.
pub async fn run_migrations(args: &DatabaseArgs, application_name: &str) -> anyhow::Result<()> {
    let url = connection_url(&args.database_url, application_name, args.timeout());
    let conn = establish(&url)
        .await
        .context("cannot connect to Postgres to apply migrations (check DATABASE_URL)")?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
            .context("cannot take the migration lock")?;
        let applied = conn.run_pending_migrations(MIGRATIONS).map(|versions| versions.len());
        // The lock is released with the session too; unlocking explicitly keeps it short.
        let _ = conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"));
        let applied = applied.map_err(|err| anyhow::anyhow!("cannot apply migrations: {err}"))?;
        if applied > 0 {
            tracing::info!(migrations.applied = applied, "database schema migrated");
        }
        Ok(())
    })
    .await
    .context("migration thread panicked")?
}

/// [`run_migrations_when_ready`], unless `stop` is cancelled first (a SIGTERM while Postgres is
/// not up yet): then `Ok(false)`, and the process should end.
pub async fn run_migrations_unless_stopped(
    args: &DatabaseArgs,
    application_name: &str,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<bool> {
    tokio::select! {
        migrated = run_migrations_when_ready(args, application_name) => migrated.map(|()| true),
        () = stop.cancelled() => {
            tracing::info!("stopped during start-up");
            Ok(false)
        }
    }
}

/// How long start-up keeps retrying a Postgres that is not up yet, so any start order works.
const STARTUP_RETRY: Duration = Duration::from_secs(60);

/// [`run_migrations`], retried every second for up to a minute while Postgres is not up yet,
/// so the processes of a deployment can start in any order. An error that waiting cannot heal
/// (a malformed URL, an unknown role or database, a refused password) fails at once.
pub async fn run_migrations_when_ready(args: &DatabaseArgs, application_name: &str) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let server = server_address(&args.database_url);
    loop {
        match run_migrations(args, application_name).await {
            Ok(()) => return Ok(()),
            Err(err) if format!("{err:#}").contains("invalid connection string") => {
                return Err(err.context(
                    "DATABASE_URL is not a valid Postgres URL (postgres://user@host:port/database)",
                ));
            }
            Err(err) if is_permanent(&err) => {
                return Err(err.context(format!("Postgres at {server} refused DATABASE_URL")));
            }
            Err(err) if started.elapsed() < STARTUP_RETRY => {
                tracing::warn!(error = format!("{err:#}"), "Postgres at {server} not ready; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => {
                return Err(err.context(format!(
                    "Postgres at {server} did not answer for {} s",
                    STARTUP_RETRY.as_secs()
                )));
            }
        }
    }
}

/// True for connection errors that no amount of waiting heals.
fn is_permanent(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}");
    ["invalid configuration", "does not exist", "authentication failed", "no pg_hba.conf entry", "password"]
        .iter()
        .any(|needle| text.contains(needle))
}

/// `host:port` of a Postgres URL, for messages (never the password).
pub fn server_address(database_url: &str) -> String {
    let rest = database_url.split_once("://").map_or(database_url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    match host_port {
        "" => "the default socket".to_owned(),
        host if host.contains(':') && !host.ends_with(']') => host.to_owned(),
        host => format!("{host}:5432"),
    }
}

/// Adds `application_name` and a connect timeout to `database_url` unless it sets them itself.
fn connection_url(database_url: &str, application_name: &str, timeout: Duration) -> String {
    let mut url = database_url.to_owned();
    let mut separator = if url.contains('?') { '&' } else { '?' };
    if !url.contains("application_name=") {
        url.push_str(&format!("{separator}application_name={application_name}"));
        separator = '&';
    }
    if !url.contains("connect_timeout=") {
        let seconds = timeout.as_secs().max(1);
        url.push_str(&format!("{separator}connect_timeout={seconds}"));
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_address_names_host_and_port_and_never_the_password() {
        assert_eq!(server_address("postgres://u:secret@db.example:6543/md5?x=1"), "db.example:6543");
        assert_eq!(server_address("postgres://postgres@127.0.0.1/md5"), "127.0.0.1:5432");
        assert_eq!(server_address("postgres:///md5"), "the default socket");
    }

    #[test]
    fn connection_url_keeps_what_the_user_set() {
        let t = Duration::from_secs(3);
        assert_eq!(
            connection_url("postgres://h/db", "md5-api", t),
            "postgres://h/db?application_name=md5-api&connect_timeout=3"
        );
        assert_eq!(
            connection_url("postgres://h/db?application_name=x", "md5-api", t),
            "postgres://h/db?application_name=x&connect_timeout=3"
        );
    }
}

#[cfg(test)]
mod establish_tests {
    #[tokio::test]
    async fn a_refused_connection_says_why_down_to_the_operating_system() {
        let err =
            super::establish("postgres://postgres@127.0.0.1:1/x?connect_timeout=2").await.err().unwrap();
        let message = err.to_string();
        assert!(message.contains("error connecting to server"), "{message}");
        assert!(message.contains("Connection refused"), "{message}");
    }
}
