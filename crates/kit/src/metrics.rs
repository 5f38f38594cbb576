//! The process-wide Prometheus recorder behind the `metrics` facade.
//!
//! Services record with `metrics::counter!` / `histogram!` anywhere; [`install`] makes those land in
//! one Prometheus registry that [`crate::admin::serve`] renders on `GET /metrics`. Names follow
//! `handoff_<name>_<unit>_total` for counters and `handoff_<name>_seconds` for histograms, with
//! bounded labels only (service, queue, outcome, destination, status class), never an event id.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for every metric whose name ends in `_seconds`: from 0.5 ms (a Redis round
/// trip) to 30 s (a destination call that waited out a `Retry-After`), so `histogram_quantile`
/// works in dashboards and alerts instead of client-side summaries that cannot be aggregated.
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// How often pending histogram samples are folded in when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder once per process and returns its handle; later calls return the
/// same handle. If some other recorder was installed first (a library or test did it), a warning is
/// logged and the returned handle renders an empty registry rather than failing the service.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
                // Only an empty bucket list is refused, and ours is a non-empty constant.
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(err) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %err, "A metrics recorder was already installed; /metrics will be empty.");
            }
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// Without the exporter's HTTP listener nothing drains histogram samples between scrapes; a small
/// thread does it so memory stays bounded even if Prometheus never comes.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "Could not start the metrics upkeep thread.");
    }
}
