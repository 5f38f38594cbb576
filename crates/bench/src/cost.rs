//! The pure normalization cost ([6/10]): what `handoff_normalize` spends on one
//! event, in-process, without a broker, Redis or the service around it.
//!
//! [`Normalizer::new`] with the default config, then `normalize(customer.converted,
//! v1, body)` in a loop over the seed body and over a messy variant of it
//! ([`payload::messy_body`]: every field the normalizer repairs). After a
//! warm-up, a tight loop gives the mean; a second pass times each call on its
//! own for the p50 and p99 (`Instant::now` costs tens of nanoseconds, far below
//! one call). One core, on a blocking thread so the runtime stays free.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use handoff_events::CURRENT_SCHEMA_VERSION;
use handoff_normalize::{NormalizeConfig, Normalizer};
use tokio_util::sync::CancellationToken;

use crate::measure::Latencies;
use crate::payload;

/// Calls made before anything is timed: caches, branch predictors, the allocator.
const WARMUP: usize = 20_000;

/// The cost of normalizing one body.
#[derive(Debug, Clone)]
pub struct Cost {
    /// Which body: "seed" or "messy".
    pub name: &'static str,
    /// Size of the raw JSON body.
    pub bytes: usize,
    /// Calls in the timed loop.
    pub iterations: usize,
    /// Wall time of the timed loop divided by `iterations`.
    pub mean: Duration,
    /// Percentiles of individually timed calls (`iterations / 4` of them, at least 1,000).
    pub p50: Duration,
    pub p99: Duration,
}

/// Measures both bodies, `iterations` timed calls each.
pub async fn run(iterations: usize, interrupted: &CancellationToken) -> anyhow::Result<Vec<Cost>> {
    let normalizer =
        Normalizer::new(&NormalizeConfig::default()).context("compiling the default config")?;
    let bodies = [
        ("seed", payload::single_body("evt_2026_03_19_000123")),
        ("messy", payload::messy_body("evt_2026_03_19_000124")),
    ];
    let mut costs = Vec::with_capacity(bodies.len());
    for (name, body) in bodies {
        if interrupted.is_cancelled() {
            bail!("interrupted");
        }
        let normalizer = normalizer.clone();
        let cost =
            tokio::task::spawn_blocking(move || measure(&normalizer, name, &body, iterations))
                .await
                .context("the measuring thread panicked")??;
        costs.push(cost);
    }
    Ok(costs)
}

fn measure(
    normalizer: &Normalizer,
    name: &'static str,
    body: &[u8],
    iterations: usize,
) -> anyhow::Result<Cost> {
    let event_type = payload::EVENT_TYPE;
    let once = || {
        normalizer.normalize(
            black_box(event_type),
            CURRENT_SCHEMA_VERSION,
            black_box(body),
        )
    };
    // A rejected body would measure the error path, not normalization.
    if let Err(rejection) = once() {
        bail!("the {name} body was rejected: {rejection}");
    }
    for _ in 0..WARMUP {
        let _ = black_box(once());
    }
    let started = Instant::now();
    for _ in 0..iterations {
        let _ = black_box(once());
    }
    let mean = started.elapsed() / u32::try_from(iterations.max(1)).unwrap_or(u32::MAX);

    let samples = (iterations / 4).max(1_000);
    let mut timings = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let _ = black_box(once());
        timings.push(started.elapsed());
    }
    let timings = Latencies::merge([timings]);
    Ok(Cost {
        name,
        bytes: body.len(),
        iterations,
        mean,
        p50: timings.percentile(50.0),
        p99: timings.percentile(99.0),
    })
}
