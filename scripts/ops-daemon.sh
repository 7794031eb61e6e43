# Sourced by the operations checks: starts the built daemon with an API token, the FCM
# simulator as its push provider and queues/exchanges of its own namespace, and stops
# it again (deleting that namespace). Needs $TOOLS_BIN (scripts/setup-tools.sh) and a
# built target/debug/sca-dispatch.
#
#   start_ops_daemon NAME   sets OPS_API (http://127.0.0.1:PORT), OPS_METRICS, OPS_TOKEN,
#                           OPS_NS (queue prefix), OPS_DIR (config, logs)
#   stop_ops_daemon

OPS_BIN="${OPS_BIN:-target/debug/sca-dispatch}"

free_port() {
  "$TOOLS_BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_ops_daemon() {
  local name="$1"
  OPS_NS="ops-$name-$$"
  OPS_DIR="$(mktemp -d "/tmp/sca-$OPS_NS.XXXX")"
  OPS_TOKEN="tok-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  local http_port metrics_port fcm_port
  http_port="$(free_port)"; metrics_port="$(free_port)"; fcm_port="$(free_port)"
  "$OPS_BIN" simulate fcm --addr "127.0.0.1:$fcm_port" --dir "$OPS_DIR/fcm" >"$OPS_DIR/fcm.log" 2>&1 &
  OPS_SIM_PID=$!
  for _ in $(seq 1 100); do [ -f "$OPS_DIR/fcm/fcm-service-account.json" ] && break; sleep 0.1; done
  cat >"$OPS_DIR/config.toml" <<TOML
[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
prefetch = 200
consumers = 1
challenges_queue = "$OPS_NS.challenges"
responses_queue = "$OPS_NS.responses"
outcomes_exchange = "$OPS_NS.outcomes"
events_exchange = "$OPS_NS.events"
dead_exchange = "$OPS_NS.dead"
dead_queue = "$OPS_NS.dead"
control_exchange = "$OPS_NS.control"

[http]
addr = "127.0.0.1:$http_port"
api_tokens = "$OPS_TOKEN"
max_wait_seconds = 1

[metrics]
addr = "127.0.0.1:$metrics_port"

[log]
level = "warn"

[fcm]
endpoint = "http://127.0.0.1:$fcm_port"
service_account_file = "$OPS_DIR/fcm/fcm-service-account.json"

[shutdown]
grace_seconds = 2
TOML
  "$OPS_BIN" run --config "$OPS_DIR/config.toml" >"$OPS_DIR/daemon.log" 2>&1 &
  OPS_PID=$!
  OPS_API="http://127.0.0.1:$http_port"
  OPS_METRICS="http://127.0.0.1:$metrics_port"
  for _ in $(seq 1 150); do
    if "$TOOLS_BIN/python" -c "import sys,urllib.request; urllib.request.urlopen('$OPS_API/readyz', timeout=1)" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$OPS_PID" 2>/dev/null; then break; fi
    sleep 0.2
  done
  echo "error: the daemon did not become ready; its log:" >&2
  cat "$OPS_DIR/daemon.log" >&2
  stop_ops_daemon
  return 1
}

stop_ops_daemon() {
  if [ -n "${OPS_PID:-}" ]; then kill "$OPS_PID" 2>/dev/null || true; wait "$OPS_PID" 2>/dev/null || true; fi
  if [ -n "${OPS_SIM_PID:-}" ]; then kill "$OPS_SIM_PID" 2>/dev/null || true; wait "$OPS_SIM_PID" 2>/dev/null || true; fi
  OPS_PID=""; OPS_SIM_PID=""
  if [ -n "${OPS_NS:-}" ]; then
    "$TOOLS_BIN/python" - "$OPS_NS" <<'PY' || true
import sys, pika
ns = sys.argv[1]
c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672, "/", pika.PlainCredentials("guest", "guest")))
ch = c.channel()
for q in ("challenges", "responses", "dead"):
    ch.queue_delete(f"{ns}.{q}")
for e in ("outcomes", "events", "dead", "control"):
    ch.exchange_delete(f"{ns}.{e}")
c.close()
PY
    OPS_NS=""
  fi
  if [ -n "${OPS_DIR:-}" ]; then rm -rf "$OPS_DIR"; fi
  OPS_DIR=""
  return 0
}
