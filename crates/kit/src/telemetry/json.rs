//! The production log format: one JSON object per line.
//!
//! Every line has `timestamp` (RFC 3339, UTC), `level`, `target`, `message`, then the fields of
//! every span in scope (outermost first, inner spans overriding) and the event's own fields, all at
//! the top level, then `span` (the innermost span's name) and the OpenTelemetry `trace_id` /
//! `span_id` of the current span unless a field of that name was recorded already. So a handler
//! that opens `info_span!("ingest", event_id = %id)` gets `event_id` and `trace_id` on every line it
//! logs, and a log query is a plain `event_id = "..."` filter.
//!
//! The trace ids are read from the innermost span's OpenTelemetry context through the subscriber
//! ([`tracing_opentelemetry::get_otel_context`]), not from the thread's active context: services
//! do not activate a context on every span entry (it costs on every poll of every message), so
//! the formatter needs the subscriber it runs in, which [`JsonLines::dispatch_hook`] gives it.
//!
//! Span fields are taken from the `FormattedFields` the fmt layer stores on each span, written by
//! [`SpanFields`]: a JSON object of the span's fields minus the OpenTelemetry attributes
//! (`otel.*`, `messaging.*`, `http.*`, `db.*`), which belong to the trace and would otherwise be
//! formatted for every span of every message, logged or not.

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Keys written by the formatter itself; fields with these names are dropped, not duplicated.
const RESERVED: [&str; 5] = ["timestamp", "level", "target", "message", "span"];

/// [`FormatEvent`] implementation writing JSON lines (see the module docs). Install its
/// [`JsonLines::dispatch_hook`] in the same subscriber, or lines carry no `trace_id`.
#[derive(Debug, Clone, Default)]
pub struct JsonLines {
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl JsonLines {
    /// A layer that tells this formatter which subscriber it runs in, so it can read the
    /// OpenTelemetry context of the span an event is logged in.
    pub fn dispatch_hook(&self) -> DispatchHook {
        DispatchHook {
            dispatch: Arc::clone(&self.dispatch),
        }
    }

    /// The OpenTelemetry context of the innermost span in scope, if there is one.
    fn otel_context<S>(
        &self,
        ctx: &FmtContext<'_, S, impl for<'a> FormatFields<'a> + 'static>,
    ) -> Option<opentelemetry::Context>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let span = ctx.lookup_current()?;
        let dispatch = self.dispatch.get()?.upgrade()?;
        tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)
    }
}

/// See [`JsonLines::dispatch_hook`]: does nothing but remember the subscriber it is part of.
#[derive(Debug, Clone)]
pub struct DispatchHook {
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S: Subscriber> Layer<S> for DispatchHook {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        // Weak: the subscriber owns this layer, a strong reference would be a cycle.
        let _ = self.dispatch.set(subscriber.downgrade());
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        let mut span_name = None;

        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                span_name = Some(span.name());
                let ext = span.extensions();
                if let Some(formatted) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&formatted.fields)
                {
                    fields.extend(map);
                }
            }
        }

        let mut visitor = JsonVisitor::default();
        event.record(&mut visitor);
        let message = visitor.message.take().unwrap_or_default();
        fields.extend(visitor.fields);

        // Records bridged from the `log` crate arrive with target "log" and `log.*` fields.
        let mut target = event.metadata().target().to_owned();
        if let Some(Value::String(t)) = fields.get("log.target") {
            target = t.clone();
        }
        fields.retain(|k, _| !k.starts_with("log.") && !RESERVED.contains(&k.as_str()));

        let cx = self.otel_context(ctx).unwrap_or_default();
        let otel_span = cx.span();
        let sc = otel_span.span_context();
        if sc.is_valid() {
            fields
                .entry("trace_id")
                .or_insert_with(|| Value::String(sc.trace_id().to_string()));
            fields
                .entry("span_id")
                .or_insert_with(|| Value::String(sc.span_id().to_string()));
        }

        let timestamp = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();

        let mut line = String::with_capacity(256);
        line.push('{');
        push_pair(&mut line, "timestamp", &Value::String(timestamp));
        line.push(',');
        push_pair(
            &mut line,
            "level",
            &Value::String(event.metadata().level().to_string()),
        );
        line.push(',');
        push_pair(&mut line, "target", &Value::String(target));
        line.push(',');
        push_pair(&mut line, "message", &Value::String(message));
        for (key, value) in &fields {
            line.push(',');
            push_pair(&mut line, key, value);
        }
        if let Some(name) = span_name {
            line.push(',');
            push_pair(&mut line, "span", &Value::String(name.to_owned()));
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

fn push_pair(line: &mut String, key: &str, value: &Value) {
    // Serialising a string or a `Value` into JSON text cannot fail.
    line.push_str(&serde_json::to_string(key).unwrap_or_default());
    line.push(':');
    line.push_str(&serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned()));
}

/// Field name prefixes of OpenTelemetry span attributes: they describe the span to the tracing
/// backend, and log lines get `trace_id` / `span_id` to find them there.
const TRACE_ONLY_PREFIXES: [&str; 4] = ["otel.", "messaging.", "http.", "db."];

/// The fmt layer's field formatter for spans: a JSON object of the fields a log line needs.
///
/// Cheap on purpose, since it runs for every span whether or not anything is logged inside it:
/// trace-only attributes are skipped, and a later `record` appends to the object's text instead
/// of parsing and rewriting it (the reader keeps the last of duplicate keys).
#[derive(Debug, Clone, Default)]
pub struct SpanFields {
    _private: (),
}

impl<'writer> FormatFields<'writer> for SpanFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut pairs = SpanPairs::default();
        fields.record(&mut pairs);
        writer.write_char('{')?;
        writer.write_str(&pairs.into_text())?;
        writer.write_char('}')
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut pairs = SpanPairs::default();
        fields.record(&mut pairs);
        let added = pairs.into_text();
        if added.is_empty() {
            return Ok(());
        }
        if current.fields.ends_with('}') && current.fields.len() > 2 {
            // `{"a":1}` + `"b":2` → `{"a":1,"b":2}`
            current.fields.pop();
            current.fields.push(',');
        } else {
            // Empty (`{}` or nothing yet): start a fresh object.
            current.fields.clear();
            current.fields.push('{');
        }
        current.fields.push_str(&added);
        current.fields.push('}');
        Ok(())
    }
}

/// A span's fields as JSON text, `"key":value` pairs joined by commas, written straight from
/// the values: no map of owned keys and values in between, since this runs for every span.
/// Trace-only attributes are left out before their value is rendered.
#[derive(Default)]
struct SpanPairs {
    text: Vec<u8>,
}

impl SpanPairs {
    /// Appends `"name":value` for a field a log line wants; nothing for a trace-only one, whose
    /// value is then never rendered.
    fn pair<T: serde::Serialize + ?Sized>(&mut self, field: &Field, value: &T) {
        if !is_logged(field) {
            return;
        }
        let name = field.name();
        if !self.text.is_empty() {
            self.text.push(b',');
        }
        self.value(name);
        self.text.push(b':');
        self.value(value);
    }

    fn value<T: serde::Serialize + ?Sized>(&mut self, value: &T) {
        // Into a Vec, serialising a string, number or bool cannot fail.
        if serde_json::to_writer(&mut self.text, value).is_err() {
            self.text.extend_from_slice(b"null");
        }
    }

    fn into_text(self) -> String {
        // serde_json writes UTF-8 only.
        String::from_utf8(self.text).unwrap_or_default()
    }
}

impl Visit for SpanPairs {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // Not finite → `null`, as serde_json writes it.
        self.pair(field, &value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.pair(field, &value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.pair(field, &value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.pair(field, &value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.pair(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if is_logged(field) {
            self.pair(field, &value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if is_logged(field) {
            self.pair(field, &format!("{value:?}"));
        }
    }
}

/// Whether a span field goes into log lines (not a trace-only attribute); checked before a
/// value is rendered to a string, so trace-only ones cost nothing.
fn is_logged(field: &Field) -> bool {
    !TRACE_ONLY_PREFIXES
        .iter()
        .any(|p| field.name().starts_with(p))
}

/// Collects an event's fields as JSON values, keeping `message` apart.
#[derive(Default)]
struct JsonVisitor {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl JsonVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for JsonVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(
            field,
            serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number),
        );
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn lines(buf: &Buf) -> Vec<Value> {
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn span_fields_and_trace_id_are_flattened() {
        let buf = Buf::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let format = JsonLines::default();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("test"))
                    .with_context_activation(false),
            )
            .with(format.dispatch_hook())
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(format)
                    .fmt_fields(SpanFields::default())
                    .with_writer(buf.clone()),
            );
        let ids = tracing::subscriber::with_default(subscriber, || {
            tracing::info!(answer = 42, "outside");
            let outer = tracing::info_span!(
                "request",
                otel.name = "POST /v1/events",
                otel.kind = "server",
                messaging.system = "rabbitmq",
                db.system.name = "redis",
                event_id = "ev-1",
                stage = "outer",
                attempt = 2u64,
                ratio = 0.5,
                retried = true,
                note = "say \"hi\"\nthen go",
                kind = ?Some(3),
                publisher_id = tracing::field::Empty,
            );
            outer.record("publisher_id", "acme");
            outer.record("otel.kind", "client");
            let _o = outer.enter();
            // Only trace-only fields at first: what is recorded later starts the object.
            let claim = tracing::info_span!(
                "claim",
                otel.kind = "client",
                result = tracing::field::Empty
            );
            claim.record("result", "acquired");
            let _c = claim.enter();
            let inner = tracing::info_span!(
                "publish",
                stage = "inner",
                record_id = tracing::field::Empty
            );
            let _i = inner.enter();
            inner.record("record_id", "crm-9");
            tracing::warn!(error = %"boom", http.status = 503, "Destination refused the upsert.");
            let cx = inner.context();
            let sc = cx.span().span_context().clone();
            (sc.trace_id().to_string(), sc.span_id().to_string())
        });
        let lines = lines(&buf);
        assert_eq!(lines.len(), 2);

        let first = &lines[0];
        assert_eq!(first["message"], "outside");
        assert_eq!(first["answer"], 42);
        assert_eq!(first["level"], "INFO");
        assert!(first.get("trace_id").is_none());
        assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));

        let second = &lines[1];
        assert_eq!(second["message"], "Destination refused the upsert.");
        assert_eq!(second["level"], "WARN");
        assert_eq!(second["event_id"], "ev-1");
        assert_eq!(second["stage"], "inner", "inner spans override outer ones");
        assert_eq!(second["record_id"], "crm-9", "fields recorded later appear");
        assert_eq!(
            second["publisher_id"], "acme",
            "recorded into a span with fields"
        );
        assert_eq!(second["attempt"], 2);
        assert_eq!(second["ratio"], 0.5);
        assert_eq!(second["retried"], true);
        assert_eq!(second["note"], "say \"hi\"\nthen go", "escaped as JSON");
        assert_eq!(second["kind"], "Some(3)");
        assert_eq!(second["result"], "acquired");
        for trace_only in [
            "otel.name",
            "otel.kind",
            "messaging.system",
            "db.system.name",
        ] {
            assert!(
                second.get(trace_only).is_none(),
                "{trace_only} is for the trace, not the log"
            );
        }
        assert_eq!(second["error"], "boom");
        assert_eq!(
            second["http.status"], 503,
            "an event keeps every field it logs"
        );
        assert_eq!(second["span"], "publish");
        let trace_id = second["trace_id"].as_str().unwrap();
        assert_eq!(trace_id.len(), 32);
        assert_ne!(trace_id, "00000000000000000000000000000000");
        assert_eq!(
            (trace_id, second["span_id"].as_str().unwrap()),
            (ids.0.as_str(), ids.1.as_str()),
            "the innermost span's ids, with no OpenTelemetry context active on the thread"
        );
        assert_eq!(second["target"], module_path!());
    }
}
