#!/usr/bin/env bash
# Runs the example integrations against a local daemon (FCM simulator as provider):
#  1. Python backend (pika) publishes a payment challenge with a device key, confirms,
#     reply_to and correlation_id; the device example signs an approval and sends it
#     without a bearer token; the backend reads outcome `approved` on its reply queue.
#  2. The same with the Java backend (RabbitMQ Java client, built with javac) and a
#     signed denial: outcome `denied`.
#  3. A decision with a wrong signature is refused (403) and decides nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_BIN="${TOOLS_BIN:-$(./scripts/setup-tools.sh | tail -1)}"
PY="$TOOLS_BIN/python"
. scripts/ops-daemon.sh
trap stop_ops_daemon EXIT
start_ops_daemon examples
W="$OPS_DIR/examples"
mkdir -p "$W"
pass=0 fail=0
ok() { echo "ok   $*"; pass=$((pass + 1)); }
ko() { echo "FAIL $*"; fail=$((fail + 1)); }

PUB="$("$PY" examples/device/device.py keygen "$W/device.pem")"

# 1. Python backend, signed approval of a payment.
id="ex-py-$$"
"$PY" examples/python/backend.py --queue "$OPS_NS.challenges" --challenge-id "$id" --user-id u-py \
  --public-key "$PUB" --payment 125.40 EUR "Mario Rossi" --expect approved >"$W/py.out" 2>"$W/py.err" &
backend=$!
if "$PY" examples/device/device.py decide --api "$OPS_API" --challenge-id "$id" --device-id d-pixel \
     --key "$W/device.pem" --decision approve --payment 125.40 EUR "Mario Rossi" >"$W/dev1.out" \
   && wait "$backend"; then
  ok "python backend + signed device approval: $(cat "$W/py.out")"
else
  ko "python backend + signed device approval: $(cat "$W/dev1.out" "$W/py.out" "$W/py.err" 2>/dev/null)"
fi

# 2. Java backend, signed denial.
CP=/usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-nop.jar
javac -d "$W/classes" -cp "$CP" examples/java/Backend.java
id="ex-java-$$"
java -cp "$CP:$W/classes" Backend "amqp://guest:guest@127.0.0.1:5672/%2f" "$OPS_NS.challenges" \
  "$id" u-java "$PUB" denied >"$W/java.out" 2>"$W/java.err" &
backend=$!
if "$PY" examples/device/device.py decide --api "$OPS_API" --challenge-id "$id" --device-id d-pixel \
     --key "$W/device.pem" --decision deny >"$W/dev2.out" && wait "$backend"; then
  ok "java backend + signed device denial: $(cat "$W/java.out")"
else
  ko "java backend + signed device denial: $(cat "$W/dev2.out" "$W/java.out" "$W/java.err" 2>/dev/null)"
fi

# 3. A signature over the wrong transaction is refused and decides nothing.
id="ex-bad-$$"
"$PY" examples/python/backend.py --queue "$OPS_NS.challenges" --challenge-id "$id" --user-id u-bad \
  --public-key "$PUB" --payment 125.40 EUR "Mario Rossi" --expect cancelled >"$W/bad.out" 2>"$W/bad.err" &
backend=$!
"$PY" examples/device/device.py decide --api "$OPS_API" --challenge-id "$id" --device-id d-pixel \
  --key "$W/device.pem" --decision approve --payment 9999.00 EUR "Mallory" >"$W/dev3.out" || true
if grep -q '"status": 403' "$W/dev3.out"; then
  "$PY" - "$OPS_API" "$OPS_TOKEN" "$id" <<'PY'
import sys, urllib.request
api, token, cid = sys.argv[1:]
req = urllib.request.Request(f"{api}/v1/challenges/{cid}", method="DELETE",
                             headers={"authorization": f"Bearer {token}"})
urllib.request.urlopen(req, timeout=10)
PY
  if wait "$backend"; then ok "bad signature refused (403), challenge still open until cancelled"; else ko "bad signature: $(cat "$W/bad.out" "$W/bad.err")"; fi
else
  ko "bad signature was not refused: $(cat "$W/dev3.out")"
  kill "$backend" 2>/dev/null || true
fi

echo "examples: $pass passed, $fail failed"
[ "$fail" = 0 ]
