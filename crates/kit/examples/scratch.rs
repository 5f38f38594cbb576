//! scratch
use handoff_kit::config::*;
use handoff_kit::telemetry::*;
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct C { telemetry: TelemetryConfig, admin: handoff_kit::admin::AdminConfig, n: u16 }
impl Validate for C { fn validate(&self) -> Result<(), ConfigError> { Ok(()) } }
#[tokio::main]
async fn main() {
    for env in [vec![("HANDOFF_N", "x")], vec![("HANDOFF_ADMIN__LISTEN", "nope")], vec![("HANDOFF_TELEMETRY__LOG_FORMAT", "xml")], vec![("HANDOFF_ZZ", "1")]] {
        eprintln!("{}", load_with_env::<C>(None, &env).unwrap_err());
    }
    std::fs::write("/tmp/scratch.toml", "[admin\nlisten = 3").unwrap();
    eprintln!("{}", load_with_env::<C>(Some(std::path::Path::new("/tmp/scratch.toml")), &[]).unwrap_err());
    std::fs::write("/tmp/scratch.toml", "[admin]\nlisten = 3").unwrap();
    eprintln!("{}", load_with_env::<C>(Some(std::path::Path::new("/tmp/scratch.toml")), &[]).unwrap_err());
    let cfg: C = load_or_exit("scratch");
    let _g = init("scratch", &cfg.telemetry).unwrap();
    tracing::info!(x = 1, "hello");
    let span = tracing::info_span!("req", event_id = "e1", trace_id = tracing::field::Empty);
    async {
        tracing::warn!(error = %"bad", "inside");
        tracing::debug!("hidden");
    }.instrument_me(span).await;
}
trait I: std::future::Future + Sized { fn instrument_me(self, s: tracing::Span) -> tracing::instrument::Instrumented<Self> { tracing::Instrument::instrument(self, s) } }
impl<F: std::future::Future> I for F {}
