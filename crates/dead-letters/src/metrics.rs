//! The numbers an alert rule needs, refreshed from the store every few seconds (so
//! every replica reports the same, whoever parked what):
//!
//! - `handoff_dlq_parked{stage, error_class}`: parked dead letters;
//! - `handoff_dlq_oldest_parked_age_seconds{stage, error_class}` and, over all,
//!   `handoff_dlq_oldest_parked_age_seconds_max`;
//! - `handoff_dlq_replay_remaining{job}` and `handoff_dlq_replay_sent{job}` per
//!   unfinished job; `handoff_dlq_replays_running`;
//!
//! plus counters the parker and the runners keep: `handoff_dlq_parked_total`,
//! `handoff_dlq_park_failures_total`, `handoff_dlq_replayed_total{mode}`.

use std::collections::BTreeSet;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::record::Status;
use crate::replay::Replayer;
use crate::store::{DeadLetterStore, Filter};

pub async fn refresh_loop(
    store: DeadLetterStore,
    replayer: Replayer,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut known: BTreeSet<(String, String)> = BTreeSet::new();
    let mut known_jobs: BTreeSet<String> = BTreeSet::new();
    loop {
        if let Err(err) = refresh(&store, &replayer, &mut known, &mut known_jobs).await {
            debug!(error = %err, "Could not refresh the dead-letter gauges.");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

async fn refresh(
    store: &DeadLetterStore,
    replayer: &Replayer,
    known: &mut BTreeSet<(String, String)>,
    known_jobs: &mut BTreeSet<String>,
) -> anyhow::Result<()> {
    let facets = store
        .facets(&Filter {
            status: Some(Status::Parked),
            ..Filter::default()
        })
        .await?;
    let now = OffsetDateTime::now_utc();
    let mut seen = BTreeSet::new();
    let mut oldest_overall = 0.0_f64;
    for row in &facets.parked {
        let labels = [
            ("stage", row.stage.clone()),
            ("error_class", row.error_class.clone()),
        ];
        metrics::gauge!("handoff_dlq_parked", &labels).set(row.count as f64);
        let age = OffsetDateTime::parse(&row.oldest, &Rfc3339)
            .map(|t| (now - t).as_seconds_f64().max(0.0))
            .unwrap_or_default();
        oldest_overall = oldest_overall.max(age);
        metrics::gauge!("handoff_dlq_oldest_parked_age_seconds", &labels).set(age);
        seen.insert((row.stage.clone(), row.error_class.clone()));
    }
    // A stage and class with nothing parked any more reads 0, not its last count.
    for (stage, class) in known.difference(&seen) {
        let labels = [("stage", stage.clone()), ("error_class", class.clone())];
        metrics::gauge!("handoff_dlq_parked", &labels).set(0.0);
        metrics::gauge!("handoff_dlq_oldest_parked_age_seconds", &labels).set(0.0);
    }
    known.extend(seen);
    metrics::gauge!("handoff_dlq_oldest_parked_age_seconds_max").set(oldest_overall);

    let jobs = replayer.jobs(100).await?;
    let mut running = 0;
    let mut live = BTreeSet::new();
    for job in jobs.iter().filter(|j| !j.state.is_finished()) {
        running += 1;
        let labels = [("job", job.id.clone())];
        metrics::gauge!("handoff_dlq_replay_sent", &labels).set(job.sent as f64);
        metrics::gauge!("handoff_dlq_replay_remaining", &labels)
            .set(job.total.saturating_sub(job.sent + job.skipped) as f64);
        live.insert(job.id.clone());
    }
    for gone in known_jobs.difference(&live) {
        let labels = [("job", gone.clone())];
        metrics::gauge!("handoff_dlq_replay_remaining", &labels).set(0.0);
    }
    *known_jobs = live;
    metrics::gauge!("handoff_dlq_replays_running").set(f64::from(running));
    Ok(())
}
