#!/usr/bin/env bash
# `make test`: lint, then every test of the workspace against the real
# RabbitMQ and Redis (each test isolates itself with its own namespace), then
# the container image's and the Helm chart's checks (deploy/check-deploy.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --profile ci
else
  cargo test --workspace
fi
bash deploy/check-deploy.sh
