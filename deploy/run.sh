#!/usr/bin/env bash
# `make run`: builds the services, starts them against local RabbitMQ and
# Redis, prints the API URL, a development API key and a curl line, sends a
# demo event and shows its status, then stays up until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR=.run
API=http://127.0.0.1:8080
ADMIN=http://127.0.0.1:9090
mkdir -p "$RUN_DIR"

log() { printf '==> %s\n' "$*"; }

log "Building (release)"
cargo build --release --bins --quiet

# A development key, made once and kept, so the printed curl line keeps working.
if [[ ! -s $RUN_DIR/dev-api-key ]]; then
  printf 'hoff_dev_%s\n' "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$RUN_DIR/dev-api-key"
fi
KEY=$(cat "$RUN_DIR/dev-api-key")
KEY_SHA=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)

cat >"$RUN_DIR/handoff.toml" <<TOML
# Written by deploy/run.sh for local development.
namespace = "handoff"

[http]
listen = "127.0.0.1:8080"

[admin]
listen = "127.0.0.1:9090"

[telemetry]
log_format = "json"

[[publishers]]
id = "dev"
key_sha256 = "$KEY_SHA"
event_types = ["*"]
TOML

pids=()
stop() {
  trap - INT TERM EXIT
  if ((${#pids[@]})); then
    log "Stopping services (SIGTERM)"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  log "Stopped."
  exit 0
}
trap stop INT TERM EXIT

log "Starting ingest (logs: $RUN_DIR/ingest.log)"
HANDOFF_CONFIG=$RUN_DIR/handoff.toml target/release/handoff-ingest >>"$RUN_DIR/ingest.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 120); do
  curl -fsS "$ADMIN/readyz" >/dev/null 2>&1 && break
  sleep 0.25
done
curl -fsS "$ADMIN/readyz" >/dev/null || { log "ingest did not become ready; see $RUN_DIR/ingest.log"; tail -20 "$RUN_DIR/ingest.log"; exit 1; }

EVENT_ID="evt_demo_$(date +%s)"
DEMO=$(sed "s/evt_2026_03_19_000123/$EVENT_ID/" deploy/demo-event.json)

cat <<INFO

  Handoff is running.
    API        $API
    Admin      $ADMIN/metrics  $ADMIN/readyz
    API key    $KEY   (publisher "dev", development only)

  Send an event:
    curl -sS -X POST $API/v1/events/customer.converted \\
      -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
      -d @deploy/demo-event.json

INFO

log "Demo: POST /v1/events/customer.converted ($EVENT_ID)"
curl -sS -X POST "$API/v1/events/customer.converted" \
  -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$DEMO"
echo
log "Demo: the same event again (a safe retry)"
curl -sS -X POST "$API/v1/events/customer.converted" \
  -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$DEMO"
echo
log "Demo: GET /v1/events/$EVENT_ID"
curl -sS "$API/v1/events/$EVENT_ID" -H "Authorization: Bearer $KEY"
echo
echo
log "Running. Press Ctrl-C to stop."
wait "${pids[@]}"
