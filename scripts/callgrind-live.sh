#!/usr/bin/env bash
# Instructions per challenge of the whole daemon process against the bare relay's
# (`sca-dispatch simulate relay`), both with their real I/O: each runs under valgrind's
# callgrind against the load tool's simulators and the local broker, flat out on two
# devices per challenge (APNs over TLS/HTTP/2 and FCM over TLS), devices approving 20 ms
# after their push, the daemon with `dispatched_events = false` (as in the e2e bench).
# Each side runs twice, on SMALL and on LARGE challenges, and the difference of the two
# totals over LARGE - SMALL is its instructions per challenge: start-up, connections and
# shutdown cancel out, and so does the idle time between runs (quanta's clock
# calibration at start, which spins for a stretch of time and so runs a different number
# of instructions each time, is taken out of each total). Instruction counts do not
# depend on the machine's noise, unlike the CPU seconds of the e2e bench; what they leave
# out is what an instruction costs (cache misses, page faults, the kernel's side of a
# system call). Not part of the test command; needs valgrind.
#
#   scripts/callgrind-live.sh [SMALL [LARGE]]     (default 400 and 1600)
#
# Writes bench/results/callgrind-live.json (or CALLGRIND_LIVE_RESULT); callgrind's own
# files stay in CALLGRIND_LIVE_OUT (default /tmp/sca-callgrind-live) for
# callgrind_annotate. CALLGRIND_LIVE_BIN runs the daemon side from another build (e.g. a
# copy from before a change) against this build's relay and load tool;
# CALLGRIND_LIVE_SIDES=daemon runs the daemon side alone and reuses the relay's files of
# an earlier run in the same directory.
set -euo pipefail
cd "$(dirname "$0")/.."
small="${1:-400}"
large="${2:-1600}"
out="${CALLGRIND_LIVE_OUT:-/tmp/sca-callgrind-live}"
result="${CALLGRIND_LIVE_RESULT:-bench/results/callgrind-live.json}"
command -v valgrind >/dev/null || { echo "error: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
[ "$large" -gt "$small" ] || { echo "error: LARGE ($large) must be more than SMALL ($small)" >&2; exit 2; }
mkdir -p "$out"
. scripts/lib/live-daemon.sh

# One side (relay or daemon) on COUNT challenges, in a subshell of its own (its own
# namespace, work directory and clean-up).
one_run() (
  local side="$1" count="$2"
  live_init "callgrind-$side-$count" release
  export LIVE_AMQP_TOML='dispatched_events = false'
  export LIVE_EXTRA_TOML="$(printf '[limits]\nchallenges_per_minute = 1000000\nchallenge_burst = 1000000\n')"
  if [ "$side" = relay ]; then
    export LIVE_DAEMON_CMD="simulate relay"
  else
    daemon_bin="${CALLGRIND_LIVE_BIN:-}"
  fi
  # In flight at most 200: under valgrind the process takes a challenge in milliseconds,
  # and none may reach its ttl waiting in the queue.
  live_load --count "$count" --devices 2 --platforms apns=1,fcm=1 --fcm-tls \
    --decide-after-ms 20 --ttl 600 --drain 600 --max-in-flight 200 --ready-timeout 300 \
    --report "$out/$side-$count-load" --quiet
  export LIVE_WRAP="valgrind --tool=callgrind --callgrind-out-file=$out/$side-$count.out"
  live_daemon
  wait "$load_pid" || { echo "error: the load run ($side, $count) failed:" >&2; tail -20 "$dir/load.log" >&2; exit 1; }
  load_pid=""
  live_stop_daemon
  [ -s "$out/$side-$count.out" ] || { echo "error: callgrind wrote nothing for $side ($count):" >&2; tail -20 "$dir/daemon.log" >&2; exit 1; }
  callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$out/$side-$count.out" >"$out/$side-$count-inclusive.txt" 2>/dev/null
  callgrind_annotate --auto=no --inclusive=no --threshold=100 "$out/$side-$count.out" >"$out/$side-$count-self.txt" 2>/dev/null
)

for side in ${CALLGRIND_LIVE_SIDES:-relay daemon}; do
  for count in "$small" "$large"; do
    echo "callgrind-live: $side, $count challenges" >&2
    one_run "$side" "$count"
  done
done

python3 - "$out" "$small" "$large" "$result" <<'PY'
import json, re, sys
out, small, large, result = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def total(side, n):
    """The run's instructions less quanta's clock calibration (inclusive)."""
    all_, calibration = None, 0
    for line in open(f"{out}/{side}-{n}-inclusive.txt"):
        m = re.match(r"^\s*([\d,]+)\s+\([\s\d.]+%\)\s+(.*)$", line)
        if not m:
            continue
        count, what = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in what:
            all_ = count
        elif what.split(":", 1)[-1].startswith("quanta::Clock::new ["):
            calibration = max(calibration, count)
    if all_ is None:
        raise SystemExit(f"error: no instruction total for {side} ({n})")
    return all_ - calibration

def lost(side, n):
    r = json.load(open(f"{out}/{side}-{n}-load.json"))
    return r.get("lost", 0)

per = {}
for side in ("relay", "daemon"):
    a, b = total(side, small), total(side, large)
    for n in (small, large):
        if lost(side, n):
            raise SystemExit(f"error: the {side} run on {n} challenges lost some")
    per[side] = {"instructions_small": a, "instructions_large": b,
                 "instructions_per_challenge": round((b - a) / (large - small))}
ratio = per["daemon"]["instructions_per_challenge"] / per["relay"]["instructions_per_challenge"]
doc = {
    "v": 1,
    "what": "instructions per challenge of the whole process (every thread, user space), counted by callgrind with real I/O: the load tool flat out (at most 200 in flight) on two devices per challenge (APNs over TLS/HTTP/2, FCM over TLS), approvals 20 ms after the push, dispatched_events = false; each side run on two counts, the difference of the totals over the difference of the counts",
    "counts": [small, large],
    "relay": per["relay"],
    "daemon": per["daemon"],
    "ratio": round(ratio, 3),
}
with open(result, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
print(f"instructions per challenge: relay {per['relay']['instructions_per_challenge']}, daemon {per['daemon']['instructions_per_challenge']} ({ratio:.3f}x)")
print(f"written to {result}")
PY
