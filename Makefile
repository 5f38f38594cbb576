# Handoff — run `make help` for the targets.
.DEFAULT_GOAL := help
SHELL := bash

.PHONY: help run test lint fmt services bench build check-deploy

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

services: ## Start RabbitMQ and Redis if they are down (installs them with apt as root)
	@deploy/ensure-services.sh

build: ## Build every service (release)
	cargo build --release --bins

run: services ## Start everything locally, send a demo event, stay up until Ctrl-C
	@deploy/run.sh

test: services ## Lint, the unit and integration suites against the real broker and Redis, then check-deploy
	@deploy/test.sh

check-deploy: services ## The Dockerfile and the Helm chart: lint, schema validation, and each rendered service started as rendered (part of make test)
	@deploy/check-deploy.sh

lint: ## rustfmt check and clippy with warnings as errors
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	cargo fmt --all

bench: services ## Throughput, latency, CPU and RSS of every service beside the broker's own ceilings (prints figures, never fails on time)
	cargo build --release --bins && cargo run --release -p handoff-bench
