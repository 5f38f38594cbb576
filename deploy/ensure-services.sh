#!/usr/bin/env bash
# Makes sure RabbitMQ (5672) and Redis (6379) answer on localhost: starts them
# when installed but down, installs them with apt when missing and running as
# root, otherwise says exactly what to install. Used by `make run` and `make test`.
set -euo pipefail

# shellcheck source=deploy/apt.sh
source "$(dirname "$0")/apt.sh"
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port seconds
  local i
  for ((i = 0; i < $2 * 4; i++)); do port_open "$1" && return 0; sleep 0.25; done
  return 1
}

ensure_redis() {
  if port_open 6379; then return 0; fi
  command -v redis-server >/dev/null || apt_install redis-server
  log "Starting Redis on 6379"
  redis-server --daemonize yes --port 6379 --save "" --appendonly no >/dev/null
  wait_port 6379 30 || { log "Redis did not come up on 6379"; exit 1; }
}

ensure_rabbitmq() {
  if ! port_open 5672; then
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    log "Starting RabbitMQ on 5672"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_port 5672 120 || { log "RabbitMQ did not come up on 5672"; exit 1; }
  fi
  # The port opens before the broker has finished booting; wait until it has.
  if command -v rabbitmqctl >/dev/null; then
    timeout 120 rabbitmqctl await_startup >/dev/null 2>&1 || true
    # At-least-once dead-lettering needs every feature flag (stream_queue) on.
    rabbitmqctl enable_feature_flag all >/dev/null 2>&1 || true
  fi
}

ensure_tool() { command -v "$1" >/dev/null || apt_install "$2"; }

ensure_tool curl curl
ensure_redis
ensure_rabbitmq
log "RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) are up"
