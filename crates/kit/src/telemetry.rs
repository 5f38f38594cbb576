//! Logs and traces: one [`init`] per process installs the global `tracing` subscriber and the
//! OpenTelemetry pipeline, and returns a [`TelemetryGuard`] that flushes spans when dropped.
//!
//! The subscriber has three parts:
//! - a filter built from `RUST_LOG` (if set) or [`TelemetryConfig::log_filter`], which decides
//!   which *events* are logged (the OpenTelemetry SDK's own messages are capped at `warn` unless the
//!   directive names them). Spans at `INFO` and above are always kept, whatever the filter
//!   says, so a `warn!` inside an `info_span!` still carries the span's `event_id`, and every
//!   request still has a trace. A directive of targets and levels (the usual case) is one filter
//!   for the whole subscriber, decided once per callsite; one that names spans or field values
//!   gets an `EnvFilter` per layer, which checks every span entered and exited;
//! - a formatting layer: JSON lines ([`json`]) in production, human-readable text otherwise;
//! - the `tracing-opentelemetry` layer, always, backed by an SDK tracer provider (parent-based,
//!   always-on sampler unless `OTEL_TRACES_SAMPLER` says otherwise) so spans have valid trace ids
//!   even when nothing is exported. A batch OTLP/HTTP exporter is added only when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set and
//!   `OTEL_SDK_DISABLED` is not `true`; the exporter reads the standard `OTEL_EXPORTER_OTLP_*`
//!   variables itself (headers, timeout, compression). Entering a span does not activate its
//!   OpenTelemetry context on the thread: nothing here reads `Context::current()`, and doing it on
//!   every poll of every message cost CPU for nothing.
//!
//! The global text-map propagator is W3C Trace Context, which the bus uses to carry the trace in
//! AMQP headers and ingest uses to read `traceparent` from HTTP requests.

pub mod json;

use std::sync::{Once, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::{Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (see [`json`]): what log collectors in production expect.
    #[default]
    Json,
    /// Human-readable lines for a terminal (`make run`).
    Text,
}

/// Logging settings shared by every service (`[telemetry]` in the TOML file). Tracing export is
/// configured with the standard `OTEL_*` environment variables instead, so it works the same way as
/// in every other OpenTelemetry-instrumented program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// `json` (default) or `text`.
    pub log_format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `info,handoff_bus=debug`. `RUST_LOG`, when set,
    /// overrides it so an SRE can raise verbosity without editing the config.
    pub log_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Json,
            log_filter: "info".to_owned(),
        }
    }
}

/// Why telemetry could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter directive does not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        /// The directive that was given (from `RUST_LOG` or `telemetry.log_filter`).
        filter: String,
        /// What is wrong with it.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP exporter could not be built (bad endpoint URL in `OTEL_EXPORTER_OTLP_*`, ...).
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Another global subscriber was installed first (telemetry is initialised twice).
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the tracer provider alive; dropping it flushes pending spans and shuts the provider down,
/// waiting at most [`TelemetryGuard::SHUTDOWN_TIMEOUT`].
#[must_use = "dropping the guard shuts tracing down"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// How long dropping the guard may wait for the exporter. Kept well inside Kubernetes' default
    /// 30 s grace period, which the service's own drain also has to fit into.
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard").finish_non_exhaustive()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // `shutdown` exports what is buffered first; a separate `force_flush` would wait a second
        // time on a collector that is not answering.
        if let Err(err) = self.provider.shutdown_with_timeout(Self::SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %err, "Tracer provider did not shut down cleanly; some spans may be lost.");
        }
    }
}

/// Installs logging and tracing for `service` (see the module docs). Call once, early in `main`, and
/// keep the guard until the service has drained; a second call fails with
/// [`TelemetryError::AlreadyInstalled`].
pub fn init(
    service: &'static str,
    cfg: &TelemetryConfig,
) -> Result<TelemetryGuard, TelemetryError> {
    let directive = env_nonempty("RUST_LOG").unwrap_or_else(|| cfg.log_filter.clone());
    let provider = tracer_provider(service, exporter_wanted())?;
    let format = json::JsonLines::default();

    match callsite_filter(&directive) {
        Some(filter) => tracing_subscriber::registry()
            .with(filter)
            .with(otel_layer(&provider, service))
            .with(format.dispatch_hook())
            .with(fmt_layer(cfg.log_format, format))
            .try_init()?,
        None => {
            // Span or field directives: decided per span at run time, each layer on its own.
            let log_filter = event_filter(&log_directive(&directive), &directive)?;
            let otel_filter = event_filter(&otel_directive(&directive), &directive)?;
            let hook = format.dispatch_hook().boxed();
            tracing_subscriber::registry()
                .with(vec![
                    otel_layer(&provider, service)
                        .with_filter(otel_filter)
                        .boxed(),
                    hook,
                    fmt_layer(cfg.log_format, format)
                        .with_filter(log_filter)
                        .boxed(),
                ])
                .try_init()?;
        }
    }

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(TelemetryGuard { provider })
}

/// The `tracing-opentelemetry` layer of a service.
fn otel_layer<S>(provider: &SdkTracerProvider, service: &'static str) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        // Busy/idle timing reads the clock on every poll of every instrumented future, and
        // thread ids and names say nothing in an async service: both cost per message and
        // tell an SRE nothing that the span's own duration does not.
        .with_tracked_inactivity(false)
        .with_threads(false)
        // Activating the span's OpenTelemetry context on every entry (every poll of every
        // instrumented future) is for other OpenTelemetry instrumentation reading
        // `Context::current()`. There is none here: parents come from the span tree, the bus
        // and ingest read `Span::context()`, and the JSON log lines ask the subscriber.
        .with_context_activation(false)
}

/// The log lines' layer: JSON (`format`) or text.
fn fmt_layer<S>(format: LogFormat, json: json::JsonLines) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(json)
            .fmt_fields(json::SpanFields::default())
            .with_writer(std::io::stdout)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stdout)
            .boxed(),
    }
}

/// The usual case, a directive of targets and levels only (`info`, `info,handoff_bus=debug`): one
/// filter for the whole subscriber, decided once per callsite. Spans at `INFO` and above pass,
/// events as the directive says (the SDK's own capped at `warn`). `None` when the directive filters
/// on spans or field values, which [`Targets`] cannot express: then each layer gets an
/// `EnvFilter` ([`event_filter`]), which also tracks every span entered and exited, a cost on
/// every poll of every message that the usual case does without.
fn callsite_filter<S: tracing::Subscriber>(directive: &str) -> Option<impl Layer<S>> {
    // `[...]` is how a directive names spans and fields. What `EnvFilter` rejects takes the
    // other path too, to be reported from there (`Targets` is laxer).
    if directive.contains('[') || EnvFilter::builder().parse(directive).is_err() {
        return None;
    }
    let events: Targets = log_directive(directive).parse().ok()?;
    let max_level = events
        .default_level()
        .into_iter()
        .chain(events.iter().map(|(_, level)| level))
        .chain([LevelFilter::INFO])
        .max()
        .unwrap_or(LevelFilter::INFO);
    let filter = filter_fn(move |meta| {
        (meta.is_span() && *meta.level() <= Level::INFO)
            || events.would_enable(meta.target(), meta.level())
    })
    .with_max_level_hint(max_level);
    Some(filter)
}

/// For tests: installs (once per process) the same OpenTelemetry layer without an exporter and text
/// logs to the test writer, filtered by `RUST_LOG` (default `warn`). Later calls do nothing; if
/// another global subscriber is already installed it is left in place.
pub fn init_for_tests() {
    static ONCE: Once = Once::new();
    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
    ONCE.call_once(|| {
        let directive = env_nonempty("RUST_LOG").unwrap_or_else(|| "warn".to_owned());
        let (Ok(log_filter), Ok(otel_filter)) = (
            event_filter(&log_directive(&directive), &directive),
            event_filter(&otel_directive(&directive), &directive),
        ) else {
            eprintln!("init_for_tests: RUST_LOG={directive:?} does not parse; test logs are off");
            return;
        };
        let Ok(provider) = tracer_provider("handoff-test", false) else {
            return;
        };
        let provider = PROVIDER.get_or_init(|| provider);
        // The services' OpenTelemetry layer, so tests see what production does.
        let otel_layer = otel_layer(provider, "handoff-test")
            .with_filter(otel_filter)
            .boxed();
        let fmt_layer = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(log_filter)
            .boxed();
        // An error only means another subscriber won the race; tests keep that one.
        let _ = tracing_subscriber::registry()
            .with(vec![otel_layer, fmt_layer])
            .try_init();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
    });
}

/// The W3C trace id (32 hex digits) of the current span, if there is a current span with a valid
/// OpenTelemetry context: what the status ledger and error bodies record as `trace_id`.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The directive for log output: the OpenTelemetry SDK's own chatter ("global tracer provider is
/// set", export retries) is capped at `warn` unless the directive mentions it explicitly.
fn log_directive(directive: &str) -> String {
    if directive.contains("opentelemetry") {
        directive.to_owned()
    } else {
        join_directives(directive, "opentelemetry=warn")
    }
}

/// The directive for the OpenTelemetry layer when each layer filters on its own: the SDK's own
/// events are never turned into span events. (With the one filter of the usual case the layer
/// sees the SDK's warnings too; they could only become events of an application span, and the
/// batch exporter runs on its own thread, outside any span, so exporting still cannot feed back
/// into what is exported.)
fn otel_directive(directive: &str) -> String {
    join_directives(directive, "opentelemetry=off")
}

fn join_directives(a: &str, b: &str) -> String {
    if a.trim().is_empty() {
        b.to_owned()
    } else {
        format!("{a},{b}")
    }
}

/// Events pass when `directive` enables them; spans at `INFO` and above always pass, so their fields
/// (`event_id`, ...) stay available to every log line inside them and every request gets a trace.
/// `given` is what the operator wrote, for the error message. (Each layer builds its own filter:
/// `EnvFilter` is not `Clone`.)
fn event_filter(
    directive: &str,
    given: &str,
) -> Result<impl Filter<Registry> + Send + Sync + 'static, TelemetryError> {
    let env = EnvFilter::builder()
        .parse(directive)
        .map_err(|source| TelemetryError::Filter {
            filter: given.to_owned(),
            source,
        })?;
    let spans = filter_fn(|meta| meta.is_span() && *meta.level() <= Level::INFO)
        .with_max_level_hint(Level::INFO);
    Ok(env.or(spans))
}

/// True when an OTLP endpoint is configured and the SDK is not disabled.
fn exporter_wanted() -> bool {
    let disabled =
        env_nonempty("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let endpoint = env_nonempty("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env_nonempty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    endpoint && !disabled
}

/// The SDK tracer provider: resource `service.name = service` (plus `OTEL_RESOURCE_ATTRIBUTES`),
/// the SDK's default sampler (parent-based always-on, or whatever `OTEL_TRACES_SAMPLER` picks),
/// and, when `export` is true, a batch OTLP/HTTP (protobuf) exporter.
fn tracer_provider(
    service: &'static str,
    export: bool,
) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder().with_service_name(service).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if export {
        // HTTP/protobuf with the blocking reqwest client: the batch processor exports from its own
        // thread, where the async client has no runtime (see NOTES.md).
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_tame_the_sdk_unless_asked() {
        assert_eq!(log_directive("info"), "info,opentelemetry=warn");
        assert_eq!(
            log_directive("debug,opentelemetry=debug"),
            "debug,opentelemetry=debug"
        );
        assert_eq!(log_directive(""), "opentelemetry=warn");
        assert_eq!(otel_directive("info"), "info,opentelemetry=off");
    }

    /// Counts the spans and events that get past the subscriber's filter.
    #[derive(Clone, Default)]
    struct Seen(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Seen {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let name = format!("span {}", attrs.metadata().name());
            self.0.lock().unwrap().push(name);
        }
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let meta = event.metadata();
            let seen = format!("{} {}", meta.level(), meta.target());
            self.0.lock().unwrap().push(seen);
        }
    }

    #[test]
    fn target_directives_filter_once_per_callsite_and_keep_info_spans() {
        let seen = Seen::default();
        let filter = callsite_filter("warn,chatty=debug").expect("targets and levels only");
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            let _span = tracing::info_span!("consume").entered();
            tracing::debug_span!("detail").in_scope(|| {});
            tracing::info!("dropped");
            tracing::warn!("kept");
            tracing::debug!(target: "chatty", "kept, the directive asks for it");
            tracing::trace!(target: "chatty", "dropped");
            tracing::info!(target: "opentelemetry_sdk", "dropped, the SDK is capped at warn");
            tracing::warn!(target: "opentelemetry_sdk", "kept");
        });
        let module = module_path!();
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "span consume".to_owned(),
                format!("WARN {module}"),
                "DEBUG chatty".to_owned(),
                "WARN opentelemetry_sdk".to_owned(),
            ]
        );
    }

    #[test]
    fn span_and_field_directives_fall_back_to_env_filters() {
        assert!(callsite_filter::<Registry>("info").is_some());
        assert!(callsite_filter::<Registry>("info,handoff_bus::consumer=trace").is_some());
        assert!(callsite_filter::<Registry>("info,[consume{event_id=e-1}]=debug").is_none());
        assert!(callsite_filter::<Registry>("info,[[").is_none());
        assert!(callsite_filter::<Registry>("info,a=b=c").is_none());
        // The fallback takes what the fast path cannot.
        assert!(
            event_filter(
                &log_directive("info,[consume{event_id=e-1}]=debug"),
                "info,[consume{event_id=e-1}]=debug"
            )
            .is_ok()
        );
    }

    #[test]
    fn a_bad_filter_names_what_was_given() {
        let Err(err) = event_filter(&log_directive("info,[["), "info,[[") else {
            panic!("the directive does not parse");
        };
        assert!(err.to_string().contains("\"info,[[\""), "{err}");
    }
}
