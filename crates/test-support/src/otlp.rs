//! [`OtlpReceiver`]: a small OTLP/HTTP trace receiver for tests that follow one trace across
//! services.
//!
//! It listens on `127.0.0.1:0`, accepts `POST /v1/traces` with `application/x-protobuf` bodies
//! (`ExportTraceServiceRequest`, what `opentelemetry-otlp`'s `http-proto` exporter sends) and
//! answers 200 with an empty `ExportTraceServiceResponse`. Every span is kept as a
//! [`ReceivedSpan`]: ids in lower-case hex, name, kind, the resource's `service.name` and its
//! attributes rendered as strings, so assertions need no protobuf types.
//!
//! Bodies are expected uncompressed: the exporter compresses only when asked
//! (`OTEL_EXPORTER_OTLP_COMPRESSION`) and only with its `gzip-http` or `zstd-http` feature, which the
//! workspace does not enable (asking without it fails when the exporter is built). A compressed
//! body is refused with 415, so a change there shows up as a failed export rather than as
//! missing spans. OTLP/JSON (`http-json`) is refused the same way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};

/// The OTLP content type for protobuf bodies.
const PROTOBUF: &str = "application/x-protobuf";

/// A span's kind, as OTLP encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpanKind {
    /// No kind given (or one this receiver does not know).
    Unspecified,
    /// Work inside a process (`otel.kind = "internal"`, and the default).
    Internal,
    /// An incoming request: ingest's HTTP requests.
    Server,
    /// An outgoing request: a writer's calls to its destination.
    Client,
    /// A message sent: every publish to the broker.
    Producer,
    /// A message received and handled: every consumed delivery.
    Consumer,
}

impl SpanKind {
    fn from_otlp(kind: i32) -> SpanKind {
        match span::SpanKind::try_from(kind) {
            Ok(span::SpanKind::Internal) => SpanKind::Internal,
            Ok(span::SpanKind::Server) => SpanKind::Server,
            Ok(span::SpanKind::Client) => SpanKind::Client,
            Ok(span::SpanKind::Producer) => SpanKind::Producer,
            Ok(span::SpanKind::Consumer) => SpanKind::Consumer,
            Ok(span::SpanKind::Unspecified) | Err(_) => SpanKind::Unspecified,
        }
    }
}

/// One exported span, reduced to what trace assertions look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits.
    pub span_id: String,
    /// 16 lower-case hex digits; empty for a root span.
    pub parent_span_id: String,
    /// The span's name (`otel.name` when the `tracing` span set one).
    pub name: String,
    /// The span's kind (`otel.kind`).
    pub kind: SpanKind,
    /// `service.name` of the resource the span was exported with; empty if it had none.
    pub service_name: String,
    /// Attributes with their values as strings: strings as they are, numbers and booleans in
    /// their usual text form, bytes in hex, arrays and key-value lists as `[a, b]` / `{k: v}`.
    pub attributes: BTreeMap<String, String>,
    /// When the span started, in nanoseconds since the Unix epoch, for assertions on order.
    pub start_unix_nanos: u64,
    /// When the span ended, in nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
}

impl ReceivedSpan {
    /// The attribute `key`, if the span has it.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// True when the span has no parent.
    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }
}

/// What [`OtlpReceiver::wait_for`] returns when the predicate never held: what had arrived.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the expected spans did not arrive within {waited:?}; received:\n{}", render_tree(.spans))]
pub struct WaitTimeout {
    /// The timeout that ran out.
    pub waited: Duration,
    /// Every span received by then.
    pub spans: Vec<ReceivedSpan>,
}

#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<ReceivedSpan>>,
    /// Woken after every accepted export.
    arrived: Notify,
}

impl Shared {
    fn spans(&self) -> MutexGuard<'_, Vec<ReceivedSpan>> {
        // A panicking test thread cannot leave the list half-written (pushes are whole spans).
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An OTLP/HTTP trace receiver running on the current tokio runtime until dropped.
///
/// ```no_run
/// # async fn demo() {
/// use std::time::Duration;
/// use handoff_test_support::otlp::OtlpReceiver;
/// let receiver = OtlpReceiver::start().await;
/// // Give `receiver.endpoint()` to the exporter as OTEL_EXPORTER_OTLP_ENDPOINT, then:
/// let spans = receiver
///     .wait_for(|spans| spans.iter().any(|s| s.name == "publish"), Duration::from_secs(5))
///     .await
///     .expect("a publish span");
/// # }
/// ```
pub struct OtlpReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for OtlpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpReceiver")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl OtlpReceiver {
    /// Binds `127.0.0.1:0` and starts serving on the current runtime.
    pub async fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("the OTLP receiver's address");
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/traces", post(export))
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(err) = served {
                eprintln!("the OTLP receiver stopped: {err}");
            }
        });
        OtlpReceiver {
            addr,
            shared,
            stop: Some(stop),
        }
    }

    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://127.0.0.1:PORT`; the exporter
    /// appends `/v1/traces`). For `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or the exporter builder's
    /// `with_endpoint`, which take the full URL, use [`OtlpReceiver::traces_url`].
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The full URL spans are posted to: [`OtlpReceiver::endpoint`] + `/v1/traces`.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.endpoint())
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.spans().clone()
    }

    /// Waits until `predicate` holds for the spans received so far (checked now and after every
    /// export) and returns them; after `timeout`, the spans received by then as the error.
    pub async fn wait_for(
        &self,
        predicate: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ReceivedSpan>, WaitTimeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so an export between the check and the wait still wakes.
            let arrived = self.shared.arrived.notified();
            let spans = self.spans();
            if predicate(&spans) {
                return Ok(spans);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(WaitTimeout {
                    waited: timeout,
                    spans: self.spans(),
                });
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `POST /v1/traces`.
async fn export(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.split(';').next().map(str::trim) != Some(PROTOBUF) {
        let message = format!("only {PROTOBUF} is accepted, not {content_type:?}");
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, message).into_response();
    }
    if let Some(encoding) = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .filter(|e| !e.eq_ignore_ascii_case("identity"))
    {
        let message = format!("compressed bodies ({encoding}) are not accepted");
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, message).into_response();
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(err) => {
            let message = format!("not an ExportTraceServiceRequest: {err}");
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    let received = flatten(request);
    shared.spans().extend(received);
    shared.arrived.notify_waiters();
    (
        [(header::CONTENT_TYPE, PROTOBUF)],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

/// Every span of an export, each with its resource's `service.name`.
fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .map(render_value)
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                out.push(ReceivedSpan {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    kind: SpanKind::from_otlp(span.kind),
                    service_name: service_name.clone(),
                    attributes: attributes(&span.attributes),
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = kv.value.as_ref().map(render_value).unwrap_or_default();
            (kv.key.clone(), value)
        })
        .collect()
}

fn render_value(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex::encode(b),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(render_value).collect();
            format!("[{}]", items.join(", "))
        }
        Some(any_value::Value::KvlistValue(l)) => {
            let items: Vec<String> = l
                .values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().map(render_value).unwrap_or_default();
                    format!("{}: {v}", kv.key)
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        // A string-table reference (profiles only) or no value at all.
        _ => String::new(),
    }
}

/// The spans as indented trees, one per trace (children under their parent, in start order),
/// with kind and ids: for failure messages. A span whose parent was not received is shown as a
/// root with its parent id.
pub fn render_tree(spans: &[ReceivedSpan]) -> String {
    let mut sorted: Vec<&ReceivedSpan> = spans.iter().collect();
    sorted.sort_by_key(|s| (s.trace_id.clone(), s.start_unix_nanos));
    let known: std::collections::HashSet<(&str, &str)> = sorted
        .iter()
        .map(|s| (s.trace_id.as_str(), s.span_id.as_str()))
        .collect();
    let mut out = String::new();
    let mut trace = "";
    for root in sorted.iter().filter(|s| {
        s.is_root() || !known.contains(&(s.trace_id.as_str(), s.parent_span_id.as_str()))
    }) {
        if root.trace_id != trace {
            trace = &root.trace_id;
            out.push_str(&format!("trace {trace}\n"));
        }
        render_subtree(&sorted, root, 1, &mut out);
    }
    out
}

fn render_subtree(all: &[&ReceivedSpan], span: &ReceivedSpan, depth: usize, out: &mut String) {
    let parent = if span.is_root() {
        String::new()
    } else {
        format!(" parent={}", span.parent_span_id)
    };
    out.push_str(&format!(
        "{:indent$}{} [{:?}] span={}{parent} service={}\n",
        "",
        span.name,
        span.kind,
        span.span_id,
        span.service_name,
        indent = depth * 2
    ));
    for child in all
        .iter()
        .filter(|c| c.trace_id == span.trace_id && c.parent_span_id == span.span_id)
    {
        render_subtree(all, child, depth + 1, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue as OtelKeyValue;
    use opentelemetry::trace::{
        Span as _, SpanKind as OtelSpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _,
    };
    use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// A provider like the services' (batch OTLP/HTTP protobuf exporter with the workspace's
    /// features) sending to `receiver`.
    fn provider(receiver: &OtlpReceiver) -> SdkTracerProvider {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(receiver.traces_url())
            .build()
            .expect("an OTLP/HTTP exporter");
        SdkTracerProvider::builder()
            .with_resource(Resource::builder().with_service_name("otlp-test").build())
            .with_batch_exporter(exporter)
            .build()
    }

    #[tokio::test]
    async fn a_real_sdk_export_arrives_as_simple_spans() {
        let receiver = OtlpReceiver::start().await;
        let provider = provider(&receiver);
        let tracer = provider.tracer("otlp-test");

        let mut parent = tracer
            .span_builder("POST /things")
            .with_kind(OtelSpanKind::Server)
            .with_attributes([
                OtelKeyValue::new("http.request.method", "POST"),
                OtelKeyValue::new("http.response.status_code", 202_i64),
                OtelKeyValue::new("handoff.retried", false),
            ])
            .start(&tracer);
        let parent_ids = parent.span_context().clone();
        let cx = opentelemetry::Context::current().with_remote_span_context(parent_ids.clone());
        let mut child = tracer
            .span_builder("publish raw.thing")
            .with_kind(OtelSpanKind::Producer)
            .with_attributes([OtelKeyValue::new("messaging.system", "rabbitmq")])
            .start_with_context(&tracer, &cx);
        child.end();
        parent.end();

        // The batch processor exports from its own thread with a blocking client, which must
        // not run on (or block) this runtime's only thread: the receiver answers from it.
        tokio::task::spawn_blocking(move || provider.shutdown().expect("flushed"))
            .await
            .expect("join");

        let spans = receiver
            .wait_for(|s| s.len() >= 2, Duration::from_secs(10))
            .await
            .expect("both spans arrive");
        assert_eq!(spans.len(), 2, "{}", render_tree(&spans));
        let server = spans
            .iter()
            .find(|s| s.kind == SpanKind::Server)
            .expect("server span");
        let producer = spans
            .iter()
            .find(|s| s.kind == SpanKind::Producer)
            .expect("producer span");

        assert_eq!(server.name, "POST /things");
        assert_eq!(server.trace_id, parent_ids.trace_id().to_string());
        assert_eq!(server.span_id, parent_ids.span_id().to_string());
        assert!(server.is_root());
        assert_eq!(server.service_name, "otlp-test");
        assert_eq!(server.attr("http.request.method"), Some("POST"));
        assert_eq!(server.attr("http.response.status_code"), Some("202"));
        assert_eq!(server.attr("handoff.retried"), Some("false"));
        assert!(server.start_unix_nanos > 0 && server.end_unix_nanos >= server.start_unix_nanos);

        assert_eq!(producer.name, "publish raw.thing");
        assert_eq!(producer.trace_id, server.trace_id);
        assert_eq!(producer.parent_span_id, server.span_id);
        assert_eq!(producer.span_id.len(), 16);
        assert_eq!(producer.attr("messaging.system"), Some("rabbitmq"));

        let tree = render_tree(&spans);
        assert!(
            tree.contains("  POST /things [Server]") && tree.contains("    publish raw.thing"),
            "{tree}"
        );
    }

    #[tokio::test]
    async fn waiting_times_out_with_what_arrived_and_other_bodies_are_refused() {
        let receiver = OtlpReceiver::start().await;
        let Err(timeout) = receiver
            .wait_for(|s| !s.is_empty(), Duration::from_millis(50))
            .await
        else {
            panic!("nothing was exported");
        };
        assert!(timeout.spans.is_empty());

        let http = reqwest::Client::new();
        let json = http
            .post(receiver.traces_url())
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("send");
        assert_eq!(json.status(), 415);
        let gzip = http
            .post(receiver.traces_url())
            .header("content-type", PROTOBUF)
            .header("content-encoding", "gzip")
            .body(vec![0x1f, 0x8b])
            .send()
            .await
            .expect("send");
        assert_eq!(gzip.status(), 415);
        let garbage = http
            .post(receiver.traces_url())
            .header("content-type", PROTOBUF)
            .body(vec![0xff, 0xff, 0xff])
            .send()
            .await
            .expect("send");
        assert_eq!(garbage.status(), 400);
        let empty = http
            .post(receiver.traces_url())
            .header("content-type", PROTOBUF)
            .send()
            .await
            .expect("send");
        assert_eq!(empty.status(), 200);
        assert!(receiver.spans().is_empty());
    }
}
