//! `handoff-kit`: the runtime every Handoff service shares, and nothing domain-specific.
//!
//! - [`config`]: defaults in code -> optional TOML file -> `HANDOFF_*` environment, validated at load;
//!   [`config::load_or_exit`] is the one call a `main.rs` makes.
//! - [`telemetry`]: JSON logs carrying span fields and `trace_id`, the `tracing-opentelemetry`
//!   layer, optional OTLP export, the W3C propagator; [`telemetry::init_for_tests`] for tests.
//! - [`metrics`]: the process-wide Prometheus recorder behind the `metrics` macros.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz` and the [`admin::Readiness`] checks behind them.
//! - [`shutdown`]: SIGTERM/SIGINT to a `CancellationToken`, and bounded drains.
//!
//! A service's `main` typically reads: load config, `telemetry::init`, build components and register
//! their readiness checks, `shutdown::cancel_on_signal(token)`, spawn `admin::serve`, run until the
//! token is cancelled, `readiness.set_draining()`, `shutdown::drain(...)` each component, drop the
//! telemetry guard.

pub mod admin;
pub mod config;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;

pub use tokio_util::sync::CancellationToken;

/// Every service allocates through mimalloc: per message they build and drop
/// many small buffers (JSON values, protobuf, span data) from several threads,
/// where glibc's malloc spent about a sixth of ingest's CPU (measured with
/// `perf` under `make bench`). Linking this crate is enough. It is built with
/// `no_thp` (see the workspace manifest): with transparent huge pages every region
/// it touched became resident 2 MiB at a time, and the normalizer peaked at 70 MiB
/// instead of about 40 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(test)]
mod tests {
    /// Kernel-side size of this process's anonymous memory in transparent huge pages, KiB.
    fn anon_huge_pages_kib() -> u64 {
        let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").expect("smaps_rollup");
        rollup
            .lines()
            .find(|line| line.starts_with("AnonHugePages:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .expect("an AnonHugePages line")
    }

    /// The allocator asks for no transparent huge pages (`no_thp`). It only matters where the
    /// kernel gives them on request (`madvise`, Debian's default and this machine's): there,
    /// nothing this process allocates becomes a huge page. Built without `no_thp`, this test
    /// found 72 MiB of its 64 MiB of small allocations in huge pages.
    #[test]
    fn the_allocator_asks_for_no_huge_pages() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !mode.contains("[madvise]") {
            eprintln!("transparent huge pages are {mode:?} here, not on request: nothing to see");
            return;
        }
        // 64 MiB in 4 KiB blocks, each written, as a busy service's heap is.
        let blocks: Vec<Vec<u8>> = (0..16_384_u32)
            .map(|i| vec![(i % 255 + 1) as u8; 4096])
            .collect();
        let huge = anon_huge_pages_kib();
        assert_eq!(blocks.iter().map(Vec::len).sum::<usize>(), 64 << 20);
        assert_eq!(
            huge, 0,
            "{huge} KiB of this process is in transparent huge pages"
        );
    }
}
