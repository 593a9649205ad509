//! Scenario 4: throughput as workers are added.

use crate::prelude::*;
use crate::scenarios::small_files::many_small;

pub(crate) async fn scaling(root: &Path, sizes: &Sizes, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut one = None;
    for workers in [1usize, 2, 4] {
        let service = Service::start(&root.join(format!("scale-{workers}")), workers).await?;
        let before = service.cpu();
        let (rate, _) = many_small(&service, sizes.scaling_count, sizes.small_size, sizes.clients).await?;
        let (_, machine) = service.cpu().per_job_since(&before, sizes.scaling_count);
        let base = *one.get_or_insert(rate);
        rows.push(Row {
            scenario: format!("4. {} × 1 KiB with {workers} worker process(es)", sizes.scaling_count),
            figure: format!("{rate:.0} jobs/s ({machine:.2} ms CPU per job)"),
            baseline: format!("1 worker {base:.0} jobs/s"),
            ratio: ratio(rate, base),
            target: if workers == 2 { "> 1.00× (rises from 1 to 2)".into() } else { "—".into() },
        });
    }
    Ok(())
}
