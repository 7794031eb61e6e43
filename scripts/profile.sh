#!/usr/bin/env bash
# Where the release daemon spends its CPU: `perf record` (call graphs) of the daemon
# flat out under `sca-dispatch load` (two devices per challenge, approvals 20 ms after
# the push), then `perf report` folded by symbol into $OUT/report.txt. Not part of the
# test command; needs perf (Debian's linux-perf) and kernel.perf_event_paranoid <= 1 or
# root.
#
#   scripts/profile.sh [COUNT]        (default 30000 challenges)
#
# Environment: PROFILE_OUT (default /tmp/sca-profile), PROFILE_FREQ (samples/s, default
# 199), PROFILE_AMQP_URL (another broker), PROFILE_EXTRA_TOML (sections appended to the
# daemon's configuration, e.g. `[runtime]\nflavor = "thread-per-core"`).
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-30000}"
out="${PROFILE_OUT:-/tmp/sca-profile}"
freq="${PROFILE_FREQ:-199}"
command -v perf >/dev/null || { echo "error: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
mkdir -p "$out"
. scripts/lib/live-daemon.sh
LIVE_AMQP_URL="${PROFILE_AMQP_URL:-}"
live_init profile release
LIVE_EXTRA_TOML="$(printf '[limits]\nchallenges_per_minute = 1000000\nchallenge_burst = 1000000\n%b\n' "${PROFILE_EXTRA_TOML:-}")"
live_load --count "$count" --drain 60 --devices 2 --decide-after-ms 20 --report "$out/load" --quiet
live_daemon
perf record -F "$freq" -g --call-graph dwarf,8192 -p "$daemon_pid" -o "$out/perf.data" 2>"$out/perf.log" &
perf_pid=$!
wait "$load_pid" || { echo "error: the load run failed:" >&2; tail -20 "$dir/load.log" >&2; kill -INT "$perf_pid"; exit 1; }
load_pid=""
kill -INT "$perf_pid"; wait "$perf_pid" || true
live_stop_daemon
perf report -i "$out/perf.data" --no-children --sort symbol --stdio --percent-limit 0.5 -g none >"$out/report.txt" 2>/dev/null
perf report -i "$out/perf.data" --children --sort symbol --stdio --percent-limit 2 -g none >"$out/report-children.txt" 2>/dev/null
python3 - "$out/load.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
d = r.get("daemon") or {}
print(f"{r['rates']['outcomes_per_s']:.0f} challenges/s, daemon {d.get('cpu_us_per_challenge')} µs CPU per challenge, lost {r['lost']}")
PY
echo "self time by symbol: $out/report.txt; with callees: $out/report-children.txt"
head -40 "$out/report.txt"
