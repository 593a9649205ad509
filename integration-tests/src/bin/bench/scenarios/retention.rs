//! Scenario 8: retention forgetting a large backlog of finished tasks while small uploads arrive
//! at a fixed rate: their latency with the purge running against without, and the purge's rate.

use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};

use crate::prelude::*;
use crate::scenarios::small_files::{Timed, fixed_load};

pub(crate) async fn retention(root: &Path, sizes: &Sizes, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    // The api's own retention is off: the purge below is the one measured (the same batches).
    let service =
        Service::start_with(&root.join("retention"), 2, |c| c.api.task_retention_seconds = 0).await?;
    // Finished, logged tasks created long ago (UUIDv7 ids of 1970), each with its MD5 indexed as
    // the worker indexes it.
    let mut conn = AsyncPgConnection::establish(&service.pg.url()).await?;
    let seeded = Instant::now();
    diesel::sql_query(format!(
        "INSERT INTO md5_tasks (task_id, status, result, file_name, size_bytes, finished_at, logged_at, algorithms) \
         SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'done', md5(i::text), 'old', i, \
             now() - interval '40 days', now() - interval '40 days', '{{}}' \
         FROM generate_series(1, {}) AS i",
        sizes.purge_rows
    ))
    .execute(&mut conn)
    .await?;
    diesel::sql_query(
        "INSERT INTO md5_task_digests (algorithm, digest, finished_at, task_id) \
         SELECT 'md5', decode(result, 'hex'), finished_at, task_id FROM md5_tasks WHERE file_name = 'old'",
    )
    .execute(&mut conn)
    .await?;
    // Old rows were vacuumed and checkpointed long ago in a real table: without this, the
    // seeding's own checkpoint and autovacuum land in the measured loads (a baseline p99 of
    // 241 ms at 500/s, where a settled table gives tens of ms).
    diesel::sql_query("VACUUM ANALYZE md5_tasks, md5_task_digests").execute(&mut conn).await?;
    diesel::sql_query("CHECKPOINT").execute(&mut conn).await?;
    let seeded = seeded.elapsed();

    let p99 = |timed: &[Timed]| {
        let mut totals: Vec<f64> = timed.iter().map(|(total, _, _)| *total).collect();
        totals.sort_by(f64::total_cmp);
        (percentile(&totals, 0.5), percentile(&totals, 0.99))
    };
    // Twice: the noise of the baseline itself.
    let (quiet, _) = fixed_load(&service, sizes.fixed_rate, sizes.fixed_seconds, sizes.small_size).await?;
    let (quiet_p50, quiet_p99) = p99(&quiet);
    let (again, _) = fixed_load(&service, sizes.fixed_rate, sizes.fixed_seconds, sizes.small_size).await?;
    let (again_p50, again_p99) = p99(&again);

    // The purge, as the api's retention service runs it (the same batches), from here.
    let db = api::database::Database::new(
        shared::db::build_pool(&service.config.api.database, "bench-retention")?,
        Duration::from_secs(30),
    );
    let before = api::retention::first_id_at(std::time::SystemTime::now() - Duration::from_secs(30 * 86_400));
    let purge = tokio::spawn(async move {
        let started = Instant::now();
        let forgotten =
            api::retention::forget_due(&db, before, &tokio_util::sync::CancellationToken::new()).await?;
        anyhow::Ok((forgotten, started.elapsed()))
    });
    let (busy, _) = fixed_load(&service, sizes.fixed_rate, sizes.fixed_seconds, sizes.small_size).await?;
    let purge_running = !purge.is_finished();
    let (busy_p50, busy_p99) = p99(&busy);
    let (forgotten, took) = purge.await??;
    anyhow::ensure!(forgotten == sizes.purge_rows, "forgot {forgotten} of {} tasks", sizes.purge_rows);
    let left: i64 = diesel::sql_query("SELECT count(*) AS n FROM md5_task_digests")
        .get_result::<Count>(&mut conn)
        .await?
        .n;
    anyhow::ensure!(
        left <= (quiet.len() + again.len() + busy.len()) as i64,
        "{left} digest rows left after the purge"
    );
    rows.push(Row {
        scenario: format!(
            "8. {} uploads/s offered while retention forgets {} old tasks: upload → done seen, p50 / p99{}",
            sizes.fixed_rate,
            sizes.purge_rows,
            if purge_running { "" } else { " (the purge ended before the load)" }
        ),
        figure: format!("{busy_p50:.1} / {busy_p99:.1} ms"),
        baseline: format!(
            "without the purge {quiet_p50:.1} / {quiet_p99:.1} ms, again {again_p50:.1} / {again_p99:.1} ms"
        ),
        ratio: ratio(busy_p99, (quiet_p99 + again_p99) / 2.0),
        target: "p99 ≤ 1.50×".into(),
    });
    rows.push(Row {
        scenario: format!(
            "8. the purge: {} tasks and their digests, {} per statement",
            sizes.purge_rows,
            api::retention::BATCH
        ),
        figure: format!("{:.0} tasks/s ({:.1} s)", forgotten as f64 / took.as_secs_f64(), took.as_secs_f64()),
        baseline: format!("seeding took {:.0} s", seeded.as_secs_f64()),
        ratio: "—".into(),
        target: "—".into(),
    });
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}
