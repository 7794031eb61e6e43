#!/usr/bin/env bash
# Two builds of the daemon side by side: BASE and TRIED (paths to `sca-dispatch`
# binaries, e.g. a copy of target/release/sca-dispatch made before a change), flat out
# under the same `sca-dispatch load` (the current release build's), alternating for
# ROUNDS rounds in one run (a fresh daemon and load tool each time, the same machine
# state). Writes bench/results/ab.json: per round and build the challenges/s, the
# daemon's CPU µs and (with perf) instructions per challenge and the publish → push p99,
# their medians and the ratios TRIED / BASE. Rounds of one build against itself differ
# by up to ±10% in CPU seconds on a shared 2-core machine; instructions are steadier. Not part of the test command.
#
#   scripts/bench-ab.sh BASE_BIN TRIED_BIN [ROUNDS]        (default 3)
#
# Environment: BENCH_COUNT (challenges per run, default 30000), BENCH_AMQP_URL (another
# broker), BENCH_EXTRA_TOML (sections appended to both daemons' configuration).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 BASE_BIN TRIED_BIN [ROUNDS]" >&2; exit 2; }
base_bin="$(realpath "$1")"; tried_bin="$(realpath "$2")"
rounds="${3:-3}"
count="${BENCH_COUNT:-30000}"
for b in "$base_bin" "$tried_bin"; do [ -x "$b" ] || { echo "error: $b is not an executable" >&2; exit 2; }; done
. scripts/lib/live-daemon.sh
LIVE_AMQP_URL="${BENCH_AMQP_URL:-}"
live_init ab release
LIVE_EXTRA_TOML="$(printf '[limits]\nchallenges_per_minute = 1000000\nchallenge_burst = 1000000\n%b\n' "${BENCH_EXTRA_TOML:-}")"
results="$dir/results.jsonl"
perf_ok=0
command -v perf >/dev/null && perf stat -x, -e instructions true 2>&1 | grep -q '^[0-9]' && perf_ok=1
: >"$results"
for round in $(seq 1 "$rounds"); do
  for variant in base tried; do
    if [ "$variant" = base ]; then daemon_bin="$base_bin"; else daemon_bin="$tried_bin"; fi
    live_load --count "$count" --drain 60 --devices 2 --decide-after-ms 20 \
      --report "$dir/r$round-$variant" --quiet
    live_daemon
    # Instructions the daemon retires: steadier than CPU seconds on a shared machine.
    stat_pid=""
    if [ "$perf_ok" = 1 ]; then
      perf stat -x, -e instructions -p "$daemon_pid" -o "$dir/stat-$round-$variant" 2>/dev/null &
      stat_pid=$!
    fi
    wait "$load_pid" || { echo "error: load run failed ($variant, round $round):" >&2; tail -20 "$dir/load.log" >&2; exit 1; }
    load_pid=""
    [ -n "$stat_pid" ] && { kill -INT "$stat_pid"; wait "$stat_pid" || true; }
    live_stop_daemon
    python3 scripts/lib/rounds.py row "$dir/r$round-$variant.json" "$variant" "$round" "$dir/stat-$round-$variant" >>"$results"
    tail -1 "$results"
  done
done
mkdir -p bench/results
python3 scripts/lib/rounds.py summary "$results" bench/results/ab.json base tried \
  "two release builds of the daemon flat out under the same load tool, 2 devices per challenge (APNs and FCM), approvals 20 ms after the push, the broker, simulators and load tool on the same machine; rounds alternate the builds" \
  "challenges_per_run=$count" "base=$base_bin" "tried=$tried_bin"
