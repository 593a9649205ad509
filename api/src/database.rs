//! The api's Postgres: a pool whose every use is bounded in time.
//!
//! The wait for a connection and the statements run on it share one deadline,
//! `DB_TIMEOUT_MS`: a Postgres that is down, stopped (`SIGSTOP`) or behind a network path that
//! stopped answering gives the request a 503 within that time instead of holding it. A
//! connection whose statement timed out is taken out of the pool rather than reused (its answer
//! may still come, into a connection nobody waits on); the pool opens fresh ones when Postgres
//! answers again.
//!
//! A write whose outcome the caller must know ([`Database::write`]) runs in a transaction: its
//! statements are bounded like any other, and a deadline that passes before `COMMIT` leaves the
//! transaction open on a dropped connection, which Postgres rolls back. The `COMMIT` has a
//! deadline of its own (the same length): past it, or if the connection breaks, the outcome is
//! unknown ([`DbError::CommitUnknown`]), and a caller whose rows must not be left half-known
//! settles it with `shared::queries::settle_insert` (`crate::intake`).

use std::time::Duration;

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use diesel_async::SimpleAsyncConnection as _;
use shared::db::{Pool, PoolError, PooledConnection};

/// Takes `conn` out of the pool for good: its state is unknown (a statement or a transaction may
/// still be open on it).
fn discard(conn: PooledConnection) {
    drop(deadpool::managed::Object::take(conn));
}

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had (the pool's own wait or create timeout, or a refused connection).
    #[error("no Postgres connection")]
    Pool(#[source] PoolError),
    /// The statement failed.
    #[error("the statement failed")]
    Query(#[source] diesel::result::Error),
    /// Postgres did not answer in time.
    #[error("Postgres did not answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
    /// The `COMMIT` was sent, and no answer came in time (or the connection broke): the rows may
    /// exist or not.
    #[error("Postgres did not confirm the commit within {} ms", .0.as_millis())]
    CommitUnknown(Duration),
}

/// The pool and its deadline; cheap to clone.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    timeout: Duration,
}

impl Database {
    /// `pool`, every use of which ends within `timeout`.
    pub fn new(pool: Pool, timeout: Duration) -> Self {
        Database { pool, timeout }
    }

    /// Runs `query` on a pooled connection; the wait for the connection and the query together
    /// take at most [`Database::timeout`].
    pub async fn run<T>(
        &self,
        query: impl AsyncFnOnce(&mut AsyncPgConnection) -> QueryResult<T>,
    ) -> Result<T, DbError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut conn = self.connection(deadline).await?;
        match tokio::time::timeout_at(deadline, query(&mut conn)).await {
            Ok(result) => result.map_err(DbError::Query),
            Err(_) => {
                // Its statement may still be running: never hand this connection out again.
                discard(conn);
                Err(DbError::TimedOut(self.timeout))
            }
        }
    }

    /// A pooled connection, by `deadline`.
    async fn connection(&self, deadline: tokio::time::Instant) -> Result<PooledConnection, DbError> {
        tokio::time::timeout_at(deadline, self.pool.get())
            .await
            .map_err(|_| DbError::TimedOut(self.timeout))?
            .map_err(DbError::Pool)
    }

    /// Runs `statements` in a transaction and commits it. `BEGIN` and the statements must finish
    /// within [`Database::timeout`] (else nothing is committed, ever); the `COMMIT` within as
    /// long again, else [`DbError::CommitUnknown`].
    pub async fn write<T>(
        &self,
        statements: impl AsyncFnOnce(&mut AsyncPgConnection) -> QueryResult<T>,
    ) -> Result<T, DbError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut conn = self.connection(deadline).await?;
        let done = tokio::time::timeout_at(deadline, async {
            conn.batch_execute("BEGIN").await?;
            statements(&mut conn).await
        })
        .await;
        match done {
            Ok(Ok(value)) => match tokio::time::timeout(self.timeout, conn.batch_execute("COMMIT")).await {
                Ok(Ok(())) => Ok(value),
                // Postgres answered: the transaction rolled back.
                Ok(Err(err)) if !is_connection_lost(&err) => {
                    discard(conn);
                    Err(DbError::Query(err))
                }
                Ok(Err(_)) | Err(_) => {
                    discard(conn);
                    Err(DbError::CommitUnknown(self.timeout))
                }
            },
            // The transaction is left open on a connection nobody will use again: Postgres
            // rolls it back when the connection closes, however late it gets to it.
            Ok(Err(err)) => {
                discard(conn);
                Err(DbError::Query(err))
            }
            Err(_) => {
                discard(conn);
                Err(DbError::TimedOut(self.timeout))
            }
        }
    }

    /// Fails when no connection can be had within the deadline (the pool holds warm ones, so
    /// this costs no round trip when Postgres is up).
    pub async fn check_available(&self) -> Result<(), DbError> {
        tokio::time::timeout(self.timeout, self.pool.get())
            .await
            .map_err(|_| DbError::TimedOut(self.timeout))?
            .map(drop)
            .map_err(DbError::Pool)
    }
}

/// True when the statement failed because the connection to Postgres was lost, not on a working
/// connection.
pub fn is_connection_lost(err: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    matches!(
        err,
        Error::DatabaseError(DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand, _)
    )
}
