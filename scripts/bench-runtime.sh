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
    python3 - "$dir/r$round-$flavor.json" "$flavor" "$round" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
d = r.get("daemon") or {}
print(json.dumps({"round": int(sys.argv[3]), "flavor": sys.argv[2],
                  "challenges_per_s": r["rates"]["outcomes_per_s"],
                  "daemon_cpu_us_per_challenge": d.get("cpu_us_per_challenge"),
                  "daemon_cores": d.get("cpu_cores"),
                  "publish_to_push_p99_ms": r["latency"]["publish_to_push"]["p99_ms"],
                  "lost": r["lost"], "loadavg_end": r["machine"]["loadavg_end"]}))
PY
    tail -1 "$results"
  done
done
mkdir -p bench/results
python3 - "$results" "$count" "$workers" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(flavor, key):
    v = [r[key] for r in rows if r["flavor"] == flavor and r[key] is not None]
    return statistics.median(v) if v else None
summary = {f: {k: med(f, k) for k in ("challenges_per_s", "daemon_cpu_us_per_challenge", "publish_to_push_p99_ms")}
           for f in ("multi-thread", "thread-per-core")}
m, t = summary["multi-thread"], summary["thread-per-core"]
ratio = lambda k: round(t[k] / m[k], 2) if m[k] and t[k] else None
out = {"v": 1, "what": "release daemon flat out, 2 devices per challenge (APNs and FCM), approvals 20 ms after the push, the broker, simulators and load tool on the same machine; rounds alternate the flavors",
       "challenges_per_run": int(sys.argv[2]), "worker_threads": int(sys.argv[3]),
       "median": summary,
       "thread_per_core_vs_multi_thread": {k: ratio(k) for k in ("challenges_per_s", "daemon_cpu_us_per_challenge", "publish_to_push_p99_ms")},
       "runs": rows}
json.dump(out, open("bench/results/runtime-flavors.json", "w"), indent=1)
open("bench/results/runtime-flavors.json", "a").write("\n")
print(json.dumps(out["median"], indent=1))
print("thread-per-core / multi-thread:", out["thread_per_core_vs_multi_thread"])
sys.exit(0 if all(r["lost"] == 0 for r in rows) else 1)
PY
