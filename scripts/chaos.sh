#!/usr/bin/env bash
# The chaos run: `sca-dispatch chaos` starts the simulators and a daemon process on the
# local RabbitMQ (its own queues), puts a steady load through it, and runs every fault in
# turn — SIGKILL, broker restart (rabbitmqctl stop_app / start_app), connections closed
# by the broker, APNs 503 then stalled, FCM token endpoint down, SMS gateway down — then
# counts lost, duplicated and contradictory outcomes per fault and writes the JSON.
# Exit code 0 when nothing was lost or contradicted and every fault took effect.
#
#   scripts/chaos.sh [extra options of `sca-dispatch chaos`]
#
# Defaults: 500 challenges/s, 20 s faults (the broker down 5 s), 10 s of settling after
# each, release build, bench/results/chaos.json. Environment: CHAOS_RATE,
# CHAOS_FAULT_SECONDS, CHAOS_SETTLE_SECONDS, CHAOS_PROFILE (release or debug),
# CHAOS_OUT, CHAOS_KEEP=1 keeps the work directory (configurations, daemon logs).
# It stops and starts the shared broker: nothing else should be using it meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${CHAOS_RATE:-500}"
fault_seconds="${CHAOS_FAULT_SECONDS:-20}"
settle="${CHAOS_SETTLE_SECONDS:-10}"
profile="${CHAOS_PROFILE:-release}"
out="${CHAOS_OUT:-bench/results/chaos.json}"
./scripts/ensure-rabbitmq.sh
export PATH="$PATH:/usr/sbin"
if [ "$profile" = release ]; then cargo build --release --quiet --bin sca-dispatch; else cargo build --quiet --bin sca-dispatch; fi
bin="target/$profile/sca-dispatch"
dir="$(mktemp -d /tmp/sca-chaos.XXXX)"
cleanup() {
  # The runner starts the broker again itself; this covers a runner killed outright.
  rabbitmqctl -q start_app >/dev/null 2>&1 || true
  [ "${CHAOS_KEEP:-0}" = 1 ] && echo "work directory: $dir" || rm -rf "$dir"
  return 0
}
trap cleanup EXIT
"$bin" chaos --rate "$rate" --fault-seconds "$fault_seconds" --settle-seconds "$settle" \
  --dir "$dir" --out "$out" "$@"
