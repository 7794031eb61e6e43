#!/usr/bin/env bash
# Runs the whole test suite: formatting and lint checks, then unit, property and
# integration tests against a real RabbitMQ on 127.0.0.1:5672 (started if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-rabbitmq.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-features
./scripts/test-ops.sh
