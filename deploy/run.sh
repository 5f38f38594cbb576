#!/usr/bin/env bash
# `make run`: builds the services, starts them against local RabbitMQ and
# Redis, prints the API URL, a development API key and a curl line, sends a
# demo event and shows its status, then stays up until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR=.run
API=http://127.0.0.1:8080
ADMIN=http://127.0.0.1:9090
NORMALIZER_ADMIN=http://127.0.0.1:9091
CRM_WRITER_ADMIN=http://127.0.0.1:9092
EMAIL_WRITER_ADMIN=http://127.0.0.1:9093
DLQ_API=http://127.0.0.1:8095
DLQ_ADMIN=http://127.0.0.1:9094
SANDBOX=http://127.0.0.1:8090
SANDBOX_ADMIN=http://127.0.0.1:9190
mkdir -p "$RUN_DIR"

log() { printf '==> %s\n' "$*"; }

log "Building (release)"
# Only the services: the bench and test tools are not needed to run.
cargo build --release --quiet -p handoff-ingest -p handoff-normalizer -p handoff-crm-writer -p handoff-email-writer -p handoff-dead-letters -p handoff-sandbox

# A development key, made once and kept, so the printed curl line keeps working.
if [[ ! -s $RUN_DIR/dev-api-key ]]; then
  printf 'hoff_dev_%s\n' "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$RUN_DIR/dev-api-key"
fi
KEY=$(cat "$RUN_DIR/dev-api-key")
KEY_SHA=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
# And an operator token for the dead-letter handler (separate from publisher keys).
if [[ ! -s $RUN_DIR/dev-operator-token ]]; then
  printf 'hoff_op_%s\n' "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$RUN_DIR/dev-operator-token"
fi
OPERATOR_TOKEN=$(cat "$RUN_DIR/dev-operator-token")
OPERATOR_SHA=$(printf '%s' "$OPERATOR_TOKEN" | sha256sum | cut -d' ' -f1)

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

cat >"$RUN_DIR/normalizer.toml" <<TOML
# Written by deploy/run.sh for local development. The enum maps and field
# policies go under [normalize]; crates/normalize/normalize.example.toml
# lists every setting with its default.
namespace = "handoff"

[admin]
listen = "127.0.0.1:9091"

[telemetry]
log_format = "json"
TOML

cat >"$RUN_DIR/crm-writer.toml" <<TOML
# Written by deploy/run.sh for local development: the sandbox CRM on 8090.
# crates/crm-writer/crm-writer.example.toml lists every setting with its default.
namespace = "handoff"

[admin]
listen = "127.0.0.1:9092"

[telemetry]
log_format = "json"

[hubspot]
base_url = "$SANDBOX"
TOML

cat >"$RUN_DIR/email-writer.toml" <<TOML
# Written by deploy/run.sh for local development: the sandbox's Mailchimp on 8090.
# crates/email-writer/email-writer.example.toml lists every setting with its default.
namespace = "handoff"

[admin]
listen = "127.0.0.1:9093"

[telemetry]
log_format = "json"

[mailchimp]
base_url = "$SANDBOX"
list_id = "sandbox-list"
TOML

cat >"$RUN_DIR/dead-letters.toml" <<TOML
# Written by deploy/run.sh for local development.
# crates/dead-letters/dead-letters.example.toml lists every setting with its default.
namespace = "handoff"

[http]
listen = "127.0.0.1:8095"

[admin]
listen = "127.0.0.1:9094"

[telemetry]
log_format = "json"

# The local Redis keeps nothing on disk. In production the handler parks only into a
# Redis with appendonly yes and appendfsync always, and stays not-ready otherwise.
[store]
require_durable = false

[[operators]]
name = "dev-operator"
token_sha256 = "$OPERATOR_SHA"
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

# wait_ready NAME ADMIN_URL LOG
wait_ready() {
  for _ in $(seq 1 120); do
    curl -fsS "$2/readyz" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  log "$1 did not become ready; see $3"
  tail -20 "$3"
  exit 1
}

log "Starting the sandbox (HubSpot CRM v3 and Mailchimp Marketing v3 stand-ins; logs: $RUN_DIR/sandbox.log)"
target/release/handoff-sandbox >>"$RUN_DIR/sandbox.log" 2>&1 &
pids+=($!)
log "Starting ingest (logs: $RUN_DIR/ingest.log)"
HANDOFF_CONFIG=$RUN_DIR/handoff.toml target/release/handoff-ingest >>"$RUN_DIR/ingest.log" 2>&1 &
pids+=($!)
log "Starting normalizer (logs: $RUN_DIR/normalizer.log)"
HANDOFF_CONFIG=$RUN_DIR/normalizer.toml target/release/handoff-normalizer >>"$RUN_DIR/normalizer.log" 2>&1 &
pids+=($!)
log "Starting crm-writer (logs: $RUN_DIR/crm-writer.log)"
# The sandbox's development token; a real portal's private-app token goes here instead.
HUBSPOT_ACCESS_TOKEN=pat-local-dev HANDOFF_CONFIG=$RUN_DIR/crm-writer.toml \
  target/release/handoff-crm-writer >>"$RUN_DIR/crm-writer.log" 2>&1 &
pids+=($!)
log "Starting email-writer (logs: $RUN_DIR/email-writer.log)"
# The sandbox's development API key; a real account's key (ending -<dc>) goes here instead.
MAILCHIMP_API_KEY=sandbox-key-us1 HANDOFF_CONFIG=$RUN_DIR/email-writer.toml \
  target/release/handoff-email-writer >>"$RUN_DIR/email-writer.log" 2>&1 &
pids+=($!)
log "Starting the dead-letter handler (logs: $RUN_DIR/dead-letters.log)"
HANDOFF_CONFIG=$RUN_DIR/dead-letters.toml target/release/handoff-dlq serve >>"$RUN_DIR/dead-letters.log" 2>&1 &
pids+=($!)
wait_ready ingest "$ADMIN" "$RUN_DIR/ingest.log"
wait_ready normalizer "$NORMALIZER_ADMIN" "$RUN_DIR/normalizer.log"
wait_ready sandbox "$SANDBOX_ADMIN" "$RUN_DIR/sandbox.log"
wait_ready crm-writer "$CRM_WRITER_ADMIN" "$RUN_DIR/crm-writer.log"
wait_ready email-writer "$EMAIL_WRITER_ADMIN" "$RUN_DIR/email-writer.log"
wait_ready dead-letters "$DLQ_ADMIN" "$RUN_DIR/dead-letters.log"

EVENT_ID="evt_demo_$(date +%s)"
DEMO=$(sed "s/evt_2026_03_19_000123/$EVENT_ID/" deploy/demo-event.json)

cat <<INFO

  Handoff is running.
    API        $API
    Admin      ingest $ADMIN/metrics  $ADMIN/readyz
               normalizer $NORMALIZER_ADMIN/metrics  $NORMALIZER_ADMIN/readyz
               crm-writer $CRM_WRITER_ADMIN/metrics  $CRM_WRITER_ADMIN/readyz
               email-writer $EMAIL_WRITER_ADMIN/metrics  $EMAIL_WRITER_ADMIN/readyz
               dead-letters $DLQ_ADMIN/metrics  $DLQ_ADMIN/readyz
    API key    $KEY   (publisher "dev", development only)
    Dead letters  $DLQ_API  (operator token $OPERATOR_TOKEN, development only)
               export HANDOFF_DLQ_URL=$DLQ_API HANDOFF_DLQ_TOKEN=$OPERATOR_TOKEN
               target/release/handoff-dlq stats | groups | list | show ID | replay … | audit
    Sandbox    $SANDBOX  (HubSpot CRM v3 stand-in, token pat-local-dev; records: $SANDBOX/_sandbox/records/contacts)
               (Mailchimp Marketing v3 stand-in, key sandbox-key-us1, list sandbox-list; members: $SANDBOX/_sandbox/mailchimp/members)

  What happened to an event, or to a person:
    curl -sS $API/v1/events/<event_id> -H "Authorization: Bearer $KEY"
    curl -sS $API/v1/contacts/alex@example.com/events -H "Authorization: Bearer $KEY"

  Send an event:
    curl -sS -X POST $API/v1/events/customer.converted \\
      -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
      -d @deploy/demo-event.json

  Try a mapping offline (what the normalizer makes of a raw body):
    target/release/handoff-normalizer check lead.created deploy/demo-messy.json --config $RUN_DIR/normalizer.toml

INFO

log "Demo: POST /v1/events/customer.converted ($EVENT_ID)"
curl -sS -X POST "$API/v1/events/customer.converted" \
  -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$DEMO"
echo
log "Demo: the same event again (a safe retry)"
curl -sS -X POST "$API/v1/events/customer.converted" \
  -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$DEMO"
echo
# status EVENT_ID: polls the ledger until both writers and the write-back have had their say
# (or 15 s passed), then prints it.
status() {
  local body=""
  for _ in $(seq 1 60); do
    body=$(curl -sS "$API/v1/events/$1" -H "Authorization: Bearer $KEY")
    [[ $body == *'"crm-writer"'* && $body == *'"email-writer"'* ]] &&
      { [[ $body != *'"email-writer":{"status":"delivered"'* ]] || [[ $body == *'"crm-writer.write-back"'* ]]; } && break
    sleep 0.25
  done
  printf '%s\n' "$body"
}
log "Demo: GET /v1/events/$EVENT_ID (ingest accepted it, the normalizer published its canonical form, the crm-writer wrote it to the CRM, the email-writer upserted the member, and the crm-writer wrote the subscriber id back)"
status "$EVENT_ID"
echo
log "Demo: the CRM records it produced (the sandbox's view: GET $SANDBOX/_sandbox/records/{contacts,deals})"
curl -sS "$SANDBOX/_sandbox/records/contacts"
echo
curl -sS "$SANDBOX/_sandbox/records/deals"
echo
log "Demo: the email member it produced (the sandbox's view: GET $SANDBOX/_sandbox/mailchimp/members)"
curl -sS "$SANDBOX/_sandbox/mailchimp/members"
echo
log "(No plan on the contact: [ownership] says billing owns it, and this event's source is \"crm\". The writer's log says so at debug level.)"

MESSY_ID="evt_messy_$(date +%s)"
MESSY=$(sed "s/evt_2026_03_19_000124/$MESSY_ID/" deploy/demo-messy.json)
log "Demo: a messy lead.created ($MESSY_ID):"
printf '%s\n' "$MESSY"
curl -sS -X POST "$API/v1/events/lead.created" \
  -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$MESSY"
echo
status "$MESSY_ID"
log "Demo: Alex's timeline, GET /v1/contacts/alex@example.com/events (every event about one person, newest first)"
curl -sS "$API/v1/contacts/alex@example.com/events" -H "Authorization: Bearer $KEY"
echo
log "Its canonical form (handoff-normalizer check, the same code and maps as the running service):"
printf '%s' "$MESSY" | target/release/handoff-normalizer check lead.created --config "$RUN_DIR/normalizer.toml" || true
echo
# The 3 a.m. workflow, on a real failure: a lifecycle stage nobody mapped.
export HANDOFF_DLQ_URL=$DLQ_API HANDOFF_DLQ_TOKEN=$OPERATOR_TOKEN
DLQ=target/release/handoff-dlq
BAD_ID="evt_unmapped_$(date +%s)"
BAD=$(sed -e "s/evt_2026_03_19_000123/$BAD_ID/" -e 's/"lifecycle_stage":"customer"/"lifecycle_stage":"Champion"/' \
  -e 's/alex@example.com/jo@example.com/' -e 's/"12345"/"12346"/' deploy/demo-event.json)
log "Demo: a customer.converted whose lifecycle stage \"Champion\" the normalizer does not map ($BAD_ID)"
curl -sS -X POST "$API/v1/events/customer.converted" \
  -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$BAD"
echo
for _ in $(seq 1 40); do
  [[ $($DLQ list --event-id "$BAD_ID" --json 2>/dev/null) == *'"total": 1'* ]] && break
  sleep 0.25
done
log "Demo: handoff-dlq stats (what is parked, where, since when)"
$DLQ stats || true
log "Demo: handoff-dlq groups (one row per cause)"
$DLQ groups || true
log "Demo: handoff-dlq list --stage normalizer"
$DLQ list --stage normalizer || true
DL_ID=$($DLQ list --event-id "$BAD_ID" --json | sed -n 's/.*"id": "\(dl-[0-9a-f]*\)".*/\1/p' | head -1)
GROUP=$($DLQ list --event-id "$BAD_ID" --json | sed -n 's/.*"fingerprint": "\(fp-[0-9a-f]*\)".*/\1/p' | head -1)
log "Demo: handoff-dlq show $DL_ID"
$DLQ show "$DL_ID" || true
log "Demo: fix the mapping (Champion -> evangelist in [normalize.lifecycle_stage.values]) and restart the normalizer"
# A table given in the file replaces the default one, so copy the example's and add to it.
{
  echo
  sed -n '/^\[normalize.lifecycle_stage\]/,/^$/p' crates/normalize/normalize.example.toml
  sed -n '/^\[normalize.lifecycle_stage.values\]/,/^$/p' crates/normalize/normalize.example.toml | sed '/^$/d'
  echo 'champion = "evangelist"'
} >>"$RUN_DIR/normalizer.toml"
kill -TERM "${pids[2]}" 2>/dev/null || true
wait "${pids[2]}" 2>/dev/null || true
HANDOFF_CONFIG=$RUN_DIR/normalizer.toml target/release/handoff-normalizer >>"$RUN_DIR/normalizer.log" 2>&1 &
pids[2]=$!
wait_ready normalizer "$NORMALIZER_ADMIN" "$RUN_DIR/normalizer.log"
log "Demo: handoff-dlq replay --group $GROUP --mode renormalize --dry-run"
$DLQ replay --group "$GROUP" --mode renormalize --dry-run || true
log "Demo: handoff-dlq replay --group $GROUP --mode renormalize --reason 'mapped Champion'"
$DLQ replay --group "$GROUP" --mode renormalize --reason "mapped Champion to evangelist" || true
log "Demo: the event's status after the replay"
status "$BAD_ID"
echo
log "Demo: handoff-dlq audit"
$DLQ audit || true
log "Running. Press Ctrl-C to stop."
wait "${pids[@]}"
