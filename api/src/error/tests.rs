//! The problems' shapes and statuses.

use super::*;

#[test]
fn a_lost_database_connection_is_a_503_whose_log_line_keeps_the_diesel_message() {
    let lost = diesel::result::Error::DatabaseError(
        diesel::result::DatabaseErrorKind::ClosedConnection,
        Box::new("server closed the connection unexpectedly".to_owned()),
    );
    let err = ApiError::from(lost);
    assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(err.problem().detail, DATABASE_UNREACHABLE);
    let response = err.into_response();
    assert_eq!(response.headers()[header::RETRY_AFTER], "5");
    let logged = &response.extensions().get::<FailureCause>().unwrap().0;
    assert!(logged.contains("server closed the connection unexpectedly"), "{logged}");
}

#[test]
fn an_unexpected_error_is_an_opaque_500_whose_log_line_keeps_the_whole_chain() {
    let cause = anyhow::anyhow!("disk on fire").context("cannot insert the task");
    let response = ApiError::internal(cause).into_response();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let logged = &response.extensions().get::<FailureCause>().unwrap().0;
    assert_eq!(logged, "internal error: cannot insert the task: disk on fire");
}

#[test]
fn each_idempotency_problem_carries_its_own_type_and_headers() {
    let in_use = ApiError::idempotency_key_in_use().into_response();
    assert_eq!(in_use.status(), StatusCode::CONFLICT);
    assert_eq!(in_use.headers()[header::RETRY_AFTER], "1");
    let reused = ApiError::idempotency_key_reused("other file".into());
    assert_eq!(reused.problem().kind, "/problems/idempotency-key-reused");
    assert!(reused.into_response().headers().get(header::RETRY_AFTER).is_none());
}
