#!/usr/bin/env bash
# Proves the Grafana dashboard against real data: starts Debian's Prometheus (1 s scrapes)
# on the daemon of a short `sca-dispatch demo --load` and on RabbitMQ's own
# rabbitmq_prometheus plugin (enabled here if needed, port 15692, /metrics/per-object),
# injects the rare events the load alone does not cause (one outcome to a `reply_to`
# queue that does not exist = an unroutable publish; one dropped connection of the
# demo's own daemon = a reconnect), then evaluates every panel query of
# deploy/grafana/sca-dispatch.json through Prometheus's HTTP API and fails naming each
# query that returns no series. Slow (about 2 minutes): not part of scripts/test.sh.
#   LOAD_RATE (default 40/s), LOAD_SECONDS (default 60), PROFILE (debug or release)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
./scripts/ensure-rabbitmq.sh
TOOLS_BIN="$(./scripts/setup-tools.sh | tail -1)"
PY="$TOOLS_BIN/python"
RATE="${LOAD_RATE:-40}"
SECS="${LOAD_SECONDS:-60}"
PROFILE="${PROFILE:-debug}"   # PROFILE=release for a faster daemon
BIN="target/$PROFILE/sca-dispatch"
if [ "$PROFILE" = release ]; then cargo build --release --locked --bin sca-dispatch; else cargo build --locked --bin sca-dispatch; fi

if ! rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_prometheus; then
  echo "enabling rabbitmq_prometheus" >&2
  rabbitmq-plugins enable rabbitmq_prometheus >/dev/null
fi
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/15692) 2>/dev/null && break; sleep 0.2; done

DIR="$(mktemp -d /tmp/sca-check-dashboard.XXXX)"
PROM_PID="" DEMO_PID=""
cleanup() {
  [ -n "$DEMO_PID" ] && kill "$DEMO_PID" 2>/dev/null || true
  [ -n "$PROM_PID" ] && kill "$PROM_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  "$PY" -c "import pika; c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1')); c.channel().queue_delete('check-dashboard-full-$$'); c.close()" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
PROM_PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
echo '[]' >"$DIR/daemon-targets.json"
cat >"$DIR/prometheus.yml" <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [$PWD/deploy/prometheus/alerts.yml]
scrape_configs:
  - job_name: sca-dispatch
    file_sd_configs: [{files: ["$DIR/daemon-targets.json"], refresh_interval: 1s}]
  - job_name: rabbitmq
    metrics_path: /metrics/per-object
    scrape_interval: 5s
    static_configs: [{targets: ["127.0.0.1:15692"]}]
YML
prometheus --config.file="$DIR/prometheus.yml" --storage.tsdb.path="$DIR/data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$DIR/prometheus.log" 2>&1 &
PROM_PID=$!
PROM="http://127.0.0.1:$PROM_PORT"
for _ in $(seq 1 100); do
  "$PY" -c "import urllib.request; urllib.request.urlopen('$PROM/-/ready', timeout=1)" 2>/dev/null && break
  sleep 0.2
done
echo "Prometheus $(prometheus --version 2>&1 | head -1 | cut -d' ' -f3) on $PROM"

"$BIN" demo --load "$RATE" --duration "$SECS" >"$DIR/demo.log" 2>&1 &
DEMO_PID=$!
METRICS=""
for _ in $(seq 1 300); do
  METRICS="$(grep -o 'metrics http://[0-9.:]*/metrics' "$DIR/demo.log" | head -1 | sed 's|metrics http://||; s|/metrics||')" || true
  [ -n "$METRICS" ] && break
  kill -0 "$DEMO_PID" 2>/dev/null || { cat "$DIR/demo.log"; echo "error: the demo stopped" >&2; exit 1; }
  sleep 0.2
done
[ -n "$METRICS" ] || { echo "error: the demo printed no metrics address" >&2; exit 1; }
echo "[{\"targets\": [\"$METRICS\"], \"labels\": {\"job\": \"sca-dispatch\"}}]" >"$DIR/daemon-targets.json"
echo "demo daemon metrics on $METRICS; load $RATE/s for ${SECS}s"

# Wait for the load phase, then inject the rare events.
for _ in $(seq 1 600); do grep -q '^Load:' "$DIR/demo.log" && break; sleep 0.2; done
sleep 5
"$PY" - "check-dashboard-full-$$" <<'PY'
import datetime, json, sys, pika
full = sys.argv[1]
c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672, "/", pika.PlainCredentials("guest", "guest")))
ch = c.channel()
ch.confirm_delivery()
now = datetime.datetime.now(datetime.timezone.utc).isoformat()
# No device, no SMS: ends undeliverable at once; its outcome to a missing reply_to queue is unroutable.
ch.basic_publish("", "sca-demo.challenges", json.dumps({
    "v": 1, "challenge_id": "check-dashboard-unroutable", "user_id": "check-dashboard", "kind": "other",
    "created_at": now, "ttl_seconds": 60, "devices": []}).encode(),
    pika.BasicProperties(content_type="application/json", reply_to="sca-demo.no-such-queue",
                         correlation_id="check-dashboard"))
# An FCM token the simulator answers UNREGISTERED: device.token_invalid.
ch.basic_publish("", "sca-demo.challenges", json.dumps({
    "v": 1, "challenge_id": "check-dashboard-gone", "user_id": "check-dashboard-2", "kind": "login",
    "created_at": now, "ttl_seconds": 60,
    "devices": [{"device_id": "d-gone", "platform": "fcm", "token": "sim-unregistered-check"}]}).encode(),
    pika.BasicProperties(content_type="application/json"))
# A reply_to queue of our own that refuses every message (max-length 0, reject-publish):
# the broker nacks the outcome, the daemon counts a publish failure and retries.
ch.queue_declare(full, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
ch.basic_publish("", "sca-demo.challenges", json.dumps({
    "v": 1, "challenge_id": "check-dashboard-nacked", "user_id": "check-dashboard-3", "kind": "other",
    "created_at": now, "ttl_seconds": 60, "devices": []}).encode(),
    pika.BasicProperties(content_type="application/json", reply_to=full, correlation_id="check-dashboard"))
# Not a valid challenge: dead-lettered (sca_challenges_rejected_total).
ch.basic_publish("", "sca-demo.challenges", b'{"v": 1, "challenge_id": "check-dashboard-bad"}',
                 pika.BasicProperties(content_type="application/json"))
c.close()
print("injected: an outcome to a missing reply_to queue, one to a queue that refuses it, a token gone, a malformed challenge")
PY
# The demo daemon's own connection, found by its name ("sca-dispatch <queue> pid <pid>").
conn="$(rabbitmqctl -q list_connections pid client_properties 2>/dev/null \
  | grep -F "\"connection_name\",\"sca-dispatch sca-demo.challenges pid $DEMO_PID\"" \
  | cut -f1 | head -1)"
if [ -n "$conn" ]; then
  rabbitmqctl -q close_connection "$conn" "check-dashboard: proving the reconnect panel" >/dev/null
  echo "injected: closed the demo daemon's AMQP connection (it reconnects)"
else
  echo "warning: the demo daemon's AMQP connection was not found" >&2
fi

# Evaluate while the load still runs (the demo's daemon disappears when it ends).
sleep "$(( SECS > 30 ? SECS - 25 : 5 ))"
"$PY" scripts/dashboard-queries.py deploy/grafana/sca-dispatch.json \
  --var instance=.+ --var 'queue=sca-demo[.].*' --var __rate_interval=30s --var __range=5m \
  >"$DIR/queries.jsonl"
"$PY" - "$PROM" "$DIR/queries.jsonl" <<'PY'
import json, sys, urllib.error, urllib.parse, urllib.request
prom, path = sys.argv[1], sys.argv[2]
missing, total = [], 0
for line in open(path):
    q = json.loads(line)
    total += 1
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q["expr"]})
    try:
        r = json.load(urllib.request.urlopen(url, timeout=10))
        n = len(r["data"]["result"]) if r.get("status") == "success" else 0
    except urllib.error.HTTPError as e:
        print(f"ERROR {q['panel']} [{q['ref']}]: {e.read().decode(errors='replace')}")
        n = 0
    mark = "ok  " if n else "NONE"
    print(f"{mark} {n:3d} series  {q['panel']} [{q['ref']}]: {q['expr']}")
    if not n:
        missing.append(f"{q['panel']} [{q['ref']}]: {q['expr']}")
print(f"\n{total - len(missing)} of {total} panel queries return series")
for m in missing:
    print(f"FAIL no series: {m}")
sys.exit(1 if missing else 0)
PY
echo "--- demo (tail)"
tail -5 "$DIR/demo.log"
