#!/usr/bin/env bash
# The runtime flavors side by side: the release daemon flat out under `sca-dispatch load`
# with `runtime.flavor = "multi-thread"` and with `"thread-per-core"`, alternating for
# ROUNDS rounds in one run (a fresh daemon and load tool each time, the same machine
# state), and writes bench/results/runtime-flavors.json: per round and flavor the
# challenges/s, the daemon's CPU µs per challenge and the publish → push p99. Not part of
# the test command.
#
#   scripts/bench-runtime.sh [ROUNDS]        (default 3)
#
# Environment: BENCH_COUNT (challenges per run, default 30000), BENCH_AMQP_URL (another
# broker), BENCH_WORKERS (`runtime.worker_threads`, default 0: one per core).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
count="${BENCH_COUNT:-30000}"
workers="${BENCH_WORKERS:-0}"
. scripts/lib/live-daemon.sh
LIVE_AMQP_URL="${BENCH_AMQP_URL:-}"
live_init flavors release
results="$dir/results.jsonl"
: >"$results"
for round in $(seq 1 "$rounds"); do
  for flavor in multi-thread thread-per-core; do
    LIVE_EXTRA_TOML="$(printf '[runtime]\nflavor = "%s"\nworker_threads = %s\n\n[limits]\nchallenges_per_minute = 1000000\nchallenge_burst = 1000000\n' "$flavor" "$workers")"
    live_load --count "$count" --drain 60 --devices 2 --decide-after-ms 20 \
      --report "$dir/r$round-$flavor" --quiet
    live_daemon
    wait "$load_pid" || { echo "error: load run failed ($flavor, round $round):" >&2; tail -20 "$dir/load.log" >&2; exit 1; }
    load_pid=""
    live_stop_daemon
    python3 scripts/lib/rounds.py row "$dir/r$round-$flavor.json" "$flavor" "$round" >>"$results"
    tail -1 "$results"
  done
done
mkdir -p bench/results
python3 scripts/lib/rounds.py summary "$results" bench/results/runtime-flavors.json multi-thread thread-per-core \
  "release daemon flat out, 2 devices per challenge (APNs and FCM), approvals 20 ms after the push, the broker, simulators and load tool on the same machine; rounds alternate the flavors" \
  "challenges_per_run=$count" "worker_threads=$workers"
