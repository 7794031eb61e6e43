#!/usr/bin/env bash
# The demo: makes sure RabbitMQ is up, then runs `sca-dispatch demo` — the daemon and the
# APNs, FCM and SMS simulators in one process, playing the scenarios. Extra arguments go
# to `sca-dispatch demo` (e.g. --load 500).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-rabbitmq.sh
cargo build --release --quiet
exec ./target/release/sca-dispatch demo "$@"
