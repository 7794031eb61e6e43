#!/usr/bin/env bash
# The HTTP API under abuse: starts the load tool's simulators and a daemon on them (its
# own queues and exchanges, a bearer token), runs `sca-dispatch load --abuse N` — real
# traffic alone, then again with N requests of each kind of abuse — stops the daemon,
# counts panics in its log and writes bench/results/abuse.json. Exit code 0 when the
# targets are met: no 5xx, no panic, nothing lost, no challenge decided by the abuse,
# real traffic's p99 within twice its value without the abuse.
#
#   scripts/abuse.sh [N]            (default 10000 of each kind)
#
# A challenge whose decision request went unanswered under the abuse ends `expired` at
# its ttl (60 s), within the drain (75 s), so "lost" counts only challenges without any
# outcome. Environment: ABUSE_RATE (challenges/s of the real traffic, default 100),
# ABUSE_DURATION (seconds of each phase, default 60), ABUSE_PROFILE (debug or release,
# default debug), ABUSE_KEEP=1 keeps the work directory (config, logs).
set -euo pipefail
cd "$(dirname "$0")/.."
per_kind="${1:-10000}"
rate="${ABUSE_RATE:-100}"
duration="${ABUSE_DURATION:-60}"
profile="${ABUSE_PROFILE:-debug}"
. scripts/lib/live-daemon.sh
LIVE_KEEP="${ABUSE_KEEP:-0}"
live_init abuse "$profile"
live_load --abuse "$per_kind" --rate "$rate" --duration "$duration" --drain 75 \
  --report "$dir/abuse" --quiet
live_daemon

rc=0
wait "$load_pid" || rc=$?
load_pid=""
live_stop_daemon
cat "$dir/load.log"
[ -f "$dir/abuse.json" ] || { echo "error: no report (load tool exit $rc)" >&2; tail -20 "$dir/daemon.log" >&2; exit 1; }
panics=$(grep -c "panicked" "$dir/daemon.log" || true)
errors=$(grep -c " ERROR " "$dir/daemon.log" || true)
mkdir -p bench/results
python3 - "$dir/abuse.json" "$panics" "$errors" "$profile" "$rate" "$duration" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
panics, errors = int(sys.argv[2]), int(sys.argv[3])
r["daemon"] = {"build": sys.argv[4], "log_panics": panics, "log_error_lines": errors}
r["real_traffic"]["rate_per_s"] = float(sys.argv[5])
r["real_traffic"]["phase_seconds"] = int(sys.argv[6])
r["targets"]["panics"] = panics
r["targets"]["met"] = bool(r["targets"]["met"]) and panics == 0
json.dump(r, open("bench/results/abuse.json", "w"), indent=2)
open("bench/results/abuse.json", "a").write("\n")
t = r["targets"]
print(f"\nbench/results/abuse.json: 5xx {t['five_xx']}, panics {panics}, lost {t['lost']}, "
      f"p99 within 2x: {t['p99_within_2x']}, targets met: {t['met']}")
sys.exit(0 if t["met"] else 1)
PY
