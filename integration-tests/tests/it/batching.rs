//! Group commit in the worker: jobs that reach a step together share one statement, and sharing
//! changes no job's outcome.

use std::collections::HashSet;
use std::time::Duration;

use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use futures_util::StreamExt as _;
use integration_tests::api_process::ApiProcess;
use integration_tests::launcher::free_port;
use integration_tests::{TestApp, TestOptions, eventually, random_bytes};
use serde_json::Value;
use shared::TaskStatus;
use shared::models::NewTask;
use shared::queries::{self, Completion, Outcome};
use uuid::Uuid;

const BACKLOG: usize = 400;

/// `<name>_sum` and `<name>_count` of a summary or histogram with `batch="<batch>"`.
fn batch_sizes(metrics: &str, batch: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        metrics
            .lines()
            .find(|line| line.starts_with(&format!("md5_batch_size_{suffix}{{batch=\"{batch}\"}}")))
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("sum"), value("count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_claimed_recorded_marked_and_acknowledged_in_shared_statements() {
    let mut app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let ids: HashSet<String> = futures_util::stream::iter(0..BACKLOG)
        .map(|n| {
            let app = &app;
            async move {
                let response = app.upload(&format!("f{n}.bin"), random_bytes(256, n as u64)).await;
                assert_eq!(response.status(), 202);
                response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    app.start_worker_process_with(32, &[("METRICS_ADDR", metrics_addr.as_str())]).unwrap();
    let started = std::time::Instant::now();

    eventually(Duration::from_secs(60), "every task logged and acknowledged", || async {
        (app.log_lines().len() >= BACKLOG && app.pending_count().await.ok()? == 0).then_some(())
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let lines = app.log_lines();
    assert_eq!(lines.len(), BACKLOG, "one line per task");
    let logged: HashSet<String> = lines.iter().map(|line| line.task_id.to_string()).collect();
    assert_eq!(logged, ids, "every task logged once");

    let metrics = eventually(Duration::from_secs(10), "every mark counted in /metrics", || async {
        let text =
            app.client.get(format!("http://{metrics_addr}/metrics")).send().await.ok()?.text().await.ok()?;
        (batch_sizes(&text, "mark").0 >= BACKLOG as f64).then_some(text)
    })
    .await
    .unwrap();
    // Small MD5-only files are quick jobs: each is claimed by its result's statement.
    assert_eq!(batch_sizes(&metrics, "claim"), (0.0, 0.0), "no claim of its own");
    for batch in ["complete", "mark", "ack"] {
        let (requests, statements) = batch_sizes(&metrics, batch);
        assert_eq!(requests, BACKLOG as f64, "{batch}: one request per job");
        // 32 jobs in flight: a backlog goes through in statements of several jobs each (about
        // 4-5 on 2 cores; alone, every job would take a statement of its own).
        assert!(
            statements > 0.0 && statements <= (BACKLOG / 2) as f64,
            "{batch}: {BACKLOG} jobs took {statements} statements"
        );
        println!("{batch}: {BACKLOG} jobs in {statements} statements");
    }
    // The marks wait 50 ms for each other (`worker/src/marks.rs`): at most one statement per
    // 50 ms the backlog took (and one for the stragglers).
    let (_, marks) = batch_sizes(&metrics, "mark");
    let most = (took.as_secs_f64() / 0.05).floor() + 2.0;
    assert!(marks <= most, "{marks} mark statements in {took:?}: more than one per 50 ms");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_share_the_folder_fsync_the_insert_and_the_xadd() {
    const UPLOADS: usize = 300;
    let stream = format!("test:{}:jobs", Uuid::new_v4().simple());
    let api = ApiProcess::start(|c| c.stream.jobs_stream = stream.clone()).await.unwrap();
    let accepted =
        futures_util::stream::iter(0..UPLOADS)
            .map(|n| {
                let api = &api;
                async move {
                    api.upload_with(&api.client, &format!("f{n}.bin"), random_bytes(512, n as u64)).await
                }
            })
            .buffer_unordered(32)
            .filter(|status| std::future::ready(*status == 202))
            .count()
            .await;
    assert_eq!(accepted, UPLOADS);

    // Every upload is whole: its file, its row and its job.
    let stored = api
        .upload_files()
        .iter()
        .filter(|f| !f.file_name().unwrap().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(stored, UPLOADS, "one stored file per upload, no partial file left");
    let mut conn = AsyncPgConnection::establish(api.database_url()).await.unwrap();
    let rows = queries::count_by_status(&mut conn).await.unwrap();
    assert_eq!(rows, vec![(TaskStatus::Queued, UPLOADS as i64)]);
    let mut redis = redis::Client::open(integration_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let length: usize = redis::cmd("XLEN").arg(&stream).query_async(&mut redis).await.unwrap();
    assert_eq!(length, UPLOADS, "one job per upload");
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut redis).await.unwrap();

    let metrics =
        api.client.get(format!("{}/metrics", api.base_url)).send().await.unwrap().text().await.unwrap();
    for batch in ["rename", "insert", "xadd"] {
        let (requests, statements) = batch_sizes(&metrics, batch);
        assert_eq!(requests, UPLOADS as f64, "{batch}: one request per upload");
        assert!(statements < requests, "{batch}: {UPLOADS} uploads took {statements} batches, none shared");
        println!("{batch}: {UPLOADS} uploads in {statements} batches");
    }
}

#[tokio::test]
async fn a_shared_statement_answers_each_job_as_if_it_ran_alone() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let mut conn = AsyncPgConnection::establish(&app.database_url).await.unwrap();
    let [a, b, c] = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    for id in [a, b, c] {
        insert_plain_task(&mut conn, id).await;
    }
    let lease = Duration::from_secs(60);
    let claimed = queries::claim_tasks(&mut conn, &[a, b, a], &[], "w1", lease).await.unwrap();
    assert_eq!(claimed.len(), 2, "a task listed twice is claimed once");
    assert!(
        queries::claim_tasks(&mut conn, &[b, c], &[], "w2", lease)
            .await
            .unwrap()
            .iter()
            .all(|t| t.task_id == c)
    );

    let done = |md5: &str| Outcome::Done { digests: shared::Digests::md5_only(md5.parse().unwrap()) };
    let failed = Outcome::Failed { error: "unreadable".into() };
    // `c` is held by w2: w1 records nothing for it; `a` listed twice is recorded once.
    let finished = queries::complete_tasks(
        &mut conn,
        "w1",
        &[
            Completion::claimed(a, done("00000000000000000000000000000001")),
            Completion::claimed(b, failed),
            Completion::claimed(c, done(&"0c".repeat(16))),
            Completion::claimed(a, done(&"ff".repeat(16))),
        ],
    )
    .await
    .unwrap();
    let mut finished_ids: Vec<Uuid> = finished.iter().map(|t| t.task_id).collect();
    finished_ids.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(finished_ids, expected);
    let (ra, rb, rc) = (row(&mut conn, a).await, row(&mut conn, b).await, row(&mut conn, c).await);
    assert_eq!(
        (ra.status, rb.status, rc.status),
        (TaskStatus::Done, TaskStatus::Failed, TaskStatus::Processing)
    );
    assert_eq!(rb.error.as_deref(), Some("unreadable"));
    assert!(ra.result.is_some() && rb.result.is_none() && rc.result.is_none());
    assert!(ra.finished_at.is_some() && ra.lease_until.is_none());

    queries::mark_all_logged(&mut conn, &[a, b, a]).await.unwrap();
    let marked = row(&mut conn, a).await.logged_at;
    assert!(marked.is_some());
    assert!(row(&mut conn, b).await.logged_at.is_some() && row(&mut conn, c).await.logged_at.is_none());
    queries::mark_all_logged(&mut conn, &[a]).await.unwrap();
    assert_eq!(row(&mut conn, a).await.logged_at, marked, "a mark is never moved");

    // The job's statements were prepared on this connection once each, and used again as such
    // (Postgres neither parses nor plans them again).
    queries::claim_tasks(&mut conn, &[c], &[], "w1", lease).await.unwrap();
    queries::complete_tasks(&mut conn, "w2", &[Completion::claimed(c, done(&"0c".repeat(16)))])
        .await
        .unwrap();
    for start in [
        "UPDATE md5_tasks SET status = 'processing'",
        "WITH w AS (SELECT",
        "INSERT INTO md5_webhook_deliveries",
        "UPDATE md5_tasks SET logged_at",
    ] {
        assert_eq!(prepared_count(&mut conn, start).await, 1, "statements starting {start:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_quick_job_is_claimed_by_its_result_only_while_its_row_is_what_the_job_said() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let mut conn = AsyncPgConnection::establish(&app.database_url).await.unwrap();
    let ids: [Uuid; 6] = std::array::from_fn(|_| Uuid::now_v7());
    let [plain, resized, sha, expecting, cancelled, held] = ids;
    let expected = serde_json::json!({"md5": "00".repeat(16)});
    for id in ids {
        let new = NewTask {
            task_id: id,
            file_name: "f",
            size_bytes: 1,
            request_id: None,
            algorithms: if id == sha { vec!["sha-256".to_owned()] } else { vec![] },
            expected: (id == expecting).then(|| expected.clone()),
            owner: None,
        };
        queries::insert_tasks(&mut conn, &[new]).await.unwrap();
    }
    queries::cancel_task(&mut conn, cancelled).await.unwrap().expect("cancelled while queued");
    let lease = Duration::from_secs(60);
    assert_eq!(queries::claim_tasks(&mut conn, &[held], &[], "w2", lease).await.unwrap().len(), 1);

    let md5 = |hex: &str| shared::Digests::md5_only(hex.parse().unwrap());
    let quick = |id, size| Completion::unclaimed(id, md5(&"0a".repeat(16)), size);
    let finished = queries::complete_tasks(
        &mut conn,
        "w1",
        &[
            quick(plain, 1),
            quick(resized, 2),
            quick(sha, 1),
            quick(expecting, 1),
            quick(cancelled, 1),
            quick(held, 1),
        ],
    )
    .await
    .unwrap();
    assert_eq!(finished.iter().map(|t| t.task_id).collect::<Vec<_>>(), vec![plain], "only the plain task");
    let done = row(&mut conn, plain).await;
    assert_eq!((done.status, done.attempts, done.worker.as_deref()), (TaskStatus::Done, 1, Some("w1")));
    assert!(done.started_at.is_some() && done.finished_at.is_some() && done.lease_until.is_none());
    let statuses = [row(&mut conn, resized).await.status, row(&mut conn, sha).await.status];
    assert_eq!(statuses, [TaskStatus::Queued, TaskStatus::Queued], "a row unlike the job records nothing");
    assert_eq!(row(&mut conn, cancelled).await.status, TaskStatus::Cancelled);
    let other = row(&mut conn, held).await;
    assert_eq!((other.status, other.worker.as_deref()), (TaskStatus::Processing, Some("w2")));

    // The claimed way, after a quick try that recorded nothing: a delivery taken over counts the
    // worker that received it before as an attempt; one not taken over does not.
    let claimed = queries::claim_tasks(&mut conn, &[resized, sha], &[resized], "w1", lease).await.unwrap();
    let mut attempts: Vec<(Uuid, i32)> = claimed.iter().map(|t| (t.task_id, t.attempts)).collect();
    attempts.sort();
    let mut want = vec![(resized, 2), (sha, 1)];
    want.sort();
    assert_eq!(attempts, want);
}

/// Records quick job `id`'s result (`md5` of its 1 byte) as a worker does: in
/// `shared::db::planned_once`'s transaction.
async fn record_quick(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    md5: &shared::Digests,
) -> diesel::QueryResult<Vec<shared::Task>> {
    let completion = [Completion::unclaimed(id, md5.clone(), 1)];
    shared::db::planned_once(conn, async |conn| queries::complete_tasks(conn, "w1", &completion).await).await
}

/// Pool settings for `app`'s database: one connection, as a test that reads one needs.
fn one_connection(app: &TestApp) -> shared::config::DatabaseArgs {
    shared::config::DatabaseArgs {
        database_url: app.database_url.clone(),
        db_pool_size: 1,
        db_timeout_ms: 5_000,
    }
}

/// Inserts a queued 1-byte task `id` computing MD5 alone.
pub(crate) async fn insert_plain_task(conn: &mut AsyncPgConnection, id: Uuid) {
    let new = NewTask {
        task_id: id,
        file_name: "f",
        size_bytes: 1,
        request_id: None,
        algorithms: vec![],
        expected: None,
        owner: None,
    };
    queries::insert_tasks(conn, &[new]).await.unwrap();
}

/// How many statements starting with `start` are prepared on `conn`'s session.
async fn prepared_count(conn: &mut AsyncPgConnection, start: &str) -> i64 {
    use diesel_async::RunQueryDsl as _;
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let count: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_prepared_statements WHERE NOT from_sql AND starts_with(statement, $1)",
    )
    .bind::<diesel::sql_types::Text, _>(start)
    .get_result(conn)
    .await
    .unwrap();
    count.n
}

/// A statement prepared on a session, and how Postgres has planned it so far.
#[derive(diesel::QueryableByName)]
struct PreparedStatement {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    generic_plans: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    custom_plans: i64,
}

/// The statement starting with `start` prepared on `conn`'s session.
async fn prepared_statement(conn: &mut AsyncPgConnection, start: &str) -> PreparedStatement {
    use diesel_async::RunQueryDsl as _;
    diesel::sql_query(
        "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements WHERE starts_with(statement, $1)",
    )
    .bind::<diesel::sql_types::Text, _>(start)
    .get_result(conn)
    .await
    .unwrap()
}

/// A line of `EXPLAIN`'s answer.
#[derive(diesel::QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
    line: String,
}

/// `EXPLAIN`'s lines as one text.
fn plan_text(lines: Vec<PlanLine>) -> String {
    lines.into_iter().map(|l| l.line).collect::<Vec<_>>().join("\n")
}

async fn row(conn: &mut AsyncPgConnection, id: Uuid) -> shared::Task {
    queries::find_task(conn, id).await.unwrap().unwrap()
}

#[tokio::test]
async fn every_pooled_connection_plans_each_statement_for_its_own_values() {
    use diesel_async::RunQueryDsl as _;
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let args = one_connection(&app);
    let durable = shared::db::build_pool(&args, "test").unwrap();
    let bookkeeping = shared::db::build_bookkeeping_pool(&args, "test").unwrap();
    for (pool, synchronous_commit) in [(durable, "on"), (bookkeeping, "off")] {
        let mut conn = shared::db::connection(&pool).await.unwrap();
        let show = |name: &str| diesel::sql_query(format!("SELECT current_setting('{name}') AS value"));
        let mode: Setting = show("plan_cache_mode").get_result(&mut conn).await.unwrap();
        let commit: Setting = show("synchronous_commit").get_result(&mut conn).await.unwrap();
        assert_eq!((mode.value.as_str(), commit.value.as_str()), ("force_custom_plan", synchronous_commit));
    }
    app.stop().await;
}

/// Marking tasks logged finds them by primary key alone, never through the index of unlogged
/// tasks: every task enters that index when it is created and leaves it as a dead entry when it
/// is marked, until a vacuum removes the entry, so a plan that reads the index (a bitmap AND with
/// the primary key, or a scan of the index, which the planner picks once statistics say few
/// tasks are unlogged) reads every task marked since the last vacuum, and each mark costs more
/// than the one before.
#[tokio::test]
async fn marking_tasks_logged_reads_the_primary_key_alone_however_many_were_marked_before() {
    use diesel_async::RunQueryDsl as _;
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let mut conn = AsyncPgConnection::establish(&app.database_url).await.unwrap();
    for sql in [
        // No vacuum comes to remove the dead entries (nor an analyze to change the statistics).
        "ALTER TABLE md5_tasks SET (autovacuum_enabled = false)",
        "INSERT INTO md5_tasks (task_id, file_name, size_bytes) \
         SELECT gen_random_uuid(), 'marked before', 1 FROM generate_series(1, 20000)",
        "UPDATE md5_tasks SET logged_at = now()",
        "ANALYZE md5_tasks",
    ] {
        diesel::sql_query(sql).execute(&mut conn).await.unwrap();
    }
    let fresh: Vec<Uuid> = (0..14).map(|_| Uuid::now_v7()).collect();
    for id in &fresh {
        insert_plain_task(&mut conn, *id).await;
    }
    queries::mark_all_logged(&mut conn, &fresh[..1]).await.unwrap();
    let mark = prepared_statement(&mut conn, "UPDATE md5_tasks SET logged_at").await;
    let ids = fresh.iter().map(Uuid::to_string).collect::<Vec<_>>().join(",");
    let plan = plan_text(
        diesel::sql_query(format!("EXPLAIN EXECUTE {}('{{{ids}}}')", mark.name))
            .load(&mut conn)
            .await
            .unwrap(),
    );
    assert!(plan.contains("md5_tasks_pkey") && !plan.contains("md5_tasks_unlogged"), "{plan}");
    queries::mark_all_logged(&mut conn, &fresh).await.unwrap();
    for id in &fresh {
        assert!(row(&mut conn, *id).await.logged_at.is_some(), "every task is marked");
    }
    app.stop().await;
}

/// A job's result transaction (`shared::db::planned_once`) plans its statements once per
/// connection, and the plan it keeps, made while `md5_tasks` holds a handful of rows, finds the
/// rows by primary key: a generic plan made from such a table would otherwise scan it (and
/// hash-join), on every result ever after. Nor is any of them compiled by JIT (a plan that keeps
/// a disabled scan is costed far above `jit_above_cost`).
#[tokio::test]
async fn the_result_transaction_is_planned_once_by_primary_key_even_on_a_small_table() {
    use diesel_async::RunQueryDsl as _;
    use shared::db::planned_once;
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let args = one_connection(&app);
    let pool = shared::db::build_pool(&args, "test").unwrap();
    let mut conn = shared::db::connection(&pool).await.unwrap();
    let md5 = shared::Digests::md5_only("0a".repeat(16).parse().unwrap());
    for _ in 0..8 {
        let id = Uuid::now_v7();
        insert_plain_task(&mut conn, id).await;
        let finished = record_quick(&mut conn, id, &md5).await.unwrap();
        assert_eq!(finished.len(), 1, "the result is recorded");
    }
    let result = prepared_statement(&mut conn, "WITH w AS (SELECT").await;
    let events = prepared_statement(&mut conn, "INSERT INTO md5_webhook_deliveries").await;
    for (what, planned) in [("result", &result), ("webhook events", &events)] {
        assert_eq!(
            (planned.generic_plans, planned.custom_plans),
            (8, 0),
            "{what}: planned once, used 8 times"
        );
    }
    let explain = async |conn: &mut AsyncPgConnection, sql: String| -> String {
        plan_text(planned_once(conn, async |conn| diesel::sql_query(sql).load(conn).await).await.unwrap())
    };
    let plan = explain(
        &mut conn,
        format!("EXPLAIN EXECUTE {}('w', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}')", result.name),
    )
    .await;
    assert!(plan.contains("Index Scan using md5_tasks_pkey on md5_tasks"), "{plan}");
    assert!(!plan.contains("Seq Scan on md5_tasks") && !plan.contains("JIT"), "{plan}");
    let plan =
        explain(&mut conn, format!("EXPLAIN EXECUTE {}('{{}}', '{{}}', '{{}}', '1 minute')", events.name))
            .await;
    assert!(!plan.contains("JIT"), "{plan}");
    app.stop().await;
}

/// A job's result transaction (`shared::db::planned_once` around `queries::complete_tasks`, as
/// the worker runs it): whichever of its statements fails (the results' update, or the webhook
/// events' insert after it), nothing is committed, the task stays as it was, the statement's
/// error is returned, and the connection is left outside any transaction, where the next result
/// commits as usual.
#[tokio::test]
async fn a_result_whose_update_or_event_fails_commits_nothing_and_leaves_the_connection_clean() {
    use diesel_async::RunQueryDsl as _;
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let mut conn = AsyncPgConnection::establish(&app.database_url).await.unwrap();
    // An endpoint seen now, so that each result writes an event.
    let sql = async |conn: &mut AsyncPgConnection, sql: &str| {
        diesel::sql_query(sql).execute(conn).await.unwrap();
    };
    sql(&mut conn, "INSERT INTO md5_webhook_endpoints (url) VALUES ('http://127.0.0.1:9/hook')").await;
    // Outside a transaction each statement is one of its own, with an id of its own (and in a
    // transaction left aborted, either would fail).
    let xid = async |conn: &mut AsyncPgConnection| -> i64 {
        diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT txid_current()").get_result(conn).await.unwrap()
    };
    let md5 = shared::Digests::md5_only("0a".repeat(16).parse().unwrap());
    for (refuse, undo, failing) in [
        (
            "ALTER TABLE md5_tasks ADD CONSTRAINT refuse CHECK (status <> 'done') NOT VALID",
            "ALTER TABLE md5_tasks DROP CONSTRAINT refuse",
            "the update",
        ),
        (
            "ALTER TABLE md5_webhook_deliveries ADD CONSTRAINT refuse CHECK (false) NOT VALID",
            "ALTER TABLE md5_webhook_deliveries DROP CONSTRAINT refuse",
            "the events' insert",
        ),
    ] {
        let (refused, later) = (Uuid::now_v7(), Uuid::now_v7());
        insert_plain_task(&mut conn, refused).await;
        insert_plain_task(&mut conn, later).await;
        sql(&mut conn, refuse).await;
        let err = record_quick(&mut conn, refused, &md5).await.expect_err(failing);
        assert!(err.to_string().contains("refuse"), "{failing}: its own error, not {err}");
        let (first, second) = (xid(&mut conn).await, xid(&mut conn).await);
        assert_ne!(first, second, "{failing}: the connection is left outside any transaction");
        assert_eq!(row(&mut conn, refused).await.status, TaskStatus::Queued, "{failing}: nothing committed");

        sql(&mut conn, undo).await;
        let finished = record_quick(&mut conn, later, &md5).await.unwrap();
        assert_eq!(finished.len(), 1, "{failing}: the next result");
        assert_eq!(row(&mut conn, later).await.status, TaskStatus::Done);
    }
    let events: i64 =
        diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT count(*) FROM md5_webhook_deliveries")
            .get_result(&mut conn)
            .await
            .unwrap();
    assert_eq!(events, 2, "each result committed with its event, and no other");
    app.stop().await;
}

/// A stop writes the marks recorded within the last linger (`worker::marks`): closing right
/// after recording leaves no finished task unmarked, so the sweeper has nothing to redo.
#[tokio::test]
async fn the_marks_recorded_just_before_a_stop_are_written_by_it() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let mut conn = AsyncPgConnection::establish(&app.database_url).await.unwrap();
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for &id in &ids {
        insert_plain_task(&mut conn, id).await;
    }
    let args = one_connection(&app);
    let marks = worker::marks::Marks::spawn(shared::db::build_bookkeeping_pool(&args, "test").unwrap());
    for &id in &ids {
        marks.record(id);
    }
    // At once: well within the 50 ms a first mark waits for others, so only the stop writes them.
    marks.close().await;
    for &id in &ids {
        assert!(row(&mut conn, id).await.logged_at.is_some(), "task {id} marked by the stop");
    }
    marks.record(Uuid::now_v7()); // after the stop: dropped quietly, no panic
}
