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
./scripts/ensure-rabbitmq.sh
if [ "$profile" = release ]; then cargo build --release --quiet --bin sca-dispatch; else cargo build --quiet --bin sca-dispatch; fi
bin="target/$profile/sca-dispatch"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ns="abuse-$$"
dir="$(mktemp -d "/tmp/sca-$ns.XXXX")"
token="tok-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
http_port="$(free_port)"; metrics_port="$(free_port)"
load_pid=""; daemon_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null && wait "$load_pid" 2>/dev/null
  if command -v rabbitmqctl >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmqctl ]; then
    for q in challenges responses dead; do
      PATH="$PATH:/usr/sbin" rabbitmqctl -q delete_queue "$ns.$q" >/dev/null 2>&1 || true
    done
  fi
  [ "${ABUSE_KEEP:-0}" = 1 ] && echo "work directory: $dir" || rm -rf "$dir"
  return 0
}
trap cleanup EXIT

SCA_LOAD_API_TOKEN="$token" "$bin" load --abuse "$per_kind" \
  --api "http://127.0.0.1:$http_port" --rate "$rate" --duration "$duration" --drain 75 \
  --challenges-queue "$ns.challenges" --outcomes-exchange "$ns.outcomes" \
  --sim-dir "$dir/sims" --report "$dir/abuse" --quiet >"$dir/load.log" 2>&1 &
load_pid=$!
for _ in $(seq 1 300); do grep -q "^Waiting for" "$dir/load.log" && break; sleep 0.1; done
grep -q "^Waiting for" "$dir/load.log" || { echo "error: the load tool did not start:" >&2; cat "$dir/load.log" >&2; exit 1; }

{
  cat <<TOML
[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
challenges_queue = "$ns.challenges"
responses_queue = "$ns.responses"
outcomes_exchange = "$ns.outcomes"
events_exchange = "$ns.events"
dead_exchange = "$ns.dead"
dead_queue = "$ns.dead"
control_exchange = "$ns.control"

[http]
addr = "127.0.0.1:$http_port"
api_tokens = "$token"

[metrics]
addr = "127.0.0.1:$metrics_port"

[log]
level = "warn"

TOML
  # The simulators' [apns], [fcm] and [sms] sections, as the load tool printed them.
  sed -n '/^Configure the daemon/,/^Waiting for/p' "$dir/load.log" | sed '1d;$d'
} >"$dir/config.toml"
RUST_BACKTRACE=1 "$bin" run --config "$dir/config.toml" >"$dir/daemon.log" 2>&1 &
daemon_pid=$!

rc=0
wait "$load_pid" || rc=$?
load_pid=""
kill "$daemon_pid" 2>/dev/null || true
wait "$daemon_pid" 2>/dev/null || true
daemon_pid=""
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
