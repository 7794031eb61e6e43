#!/usr/bin/env bash
# Property-based tests of the HTTP API against a live daemon with schemathesis: every
# operation of docs/openapi.yaml, checked for no 5xx, documented status codes and
# content types, and bodies that match the documented schemas.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_BIN="${TOOLS_BIN:-$(./scripts/setup-tools.sh | tail -1)}"
. scripts/ops-daemon.sh
trap stop_ops_daemon EXIT
start_ops_daemon schemathesis
# Live challenges, so that generated requests also reach the decision/OTP/SMS/cancel logic
# (half of the generated ids are these, half random ones that answer 404).
ids=()
for i in $(seq 1 40); do ids+=("st-live-$i"); done
"$TOOLS_BIN/python" - "$OPS_NS.challenges" "${ids[@]}" <<'PY'
import datetime, json, sys, pika
queue, ids = sys.argv[1], sys.argv[2:]
c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672, "/", pika.PlainCredentials("guest", "guest")))
ch = c.channel()
ch.confirm_delivery()
now = datetime.datetime.now(datetime.timezone.utc).isoformat()
for n, cid in enumerate(ids):
    body = {"v": 1, "challenge_id": cid, "user_id": f"st-user-{n}", "kind": "login",
            "created_at": now, "ttl_seconds": 900, "number_match": n % 3 == 0,
            "devices": [{"device_id": "d-pixel", "platform": "fcm", "token": f"fcm-{cid}"}]}
    if n % 4 == 1:
        body["kind"] = "payment"
        body["transaction"] = {"amount": "10.00", "currency": "EUR", "payee": "Shop"}
    ch.basic_publish("", queue, json.dumps(body).encode(),
                     pika.BasicProperties(content_type="application/json"), mandatory=True)
c.close()
PY
{
  echo '[dictionaries.live]'
  printf 'values = [%s]\n' "$(printf '"%s",' "${ids[@]}" | sed 's/,$//')"
  echo '[parameters]'
  echo '"path.id" = { dictionary = "live", probability = 0.5 }'
} >"$OPS_DIR/schemathesis.toml"
# One worker: with two, hypothesis's strategy descriptions run CPython 3.11's ast.parse on
# two threads at once and it fails ("AST constructor recursion depth mismatch") as soon
# as the document has a dozen operations.
# Fewer examples by default keep the test command short; SCHEMATHESIS_EXAMPLES=200 digs deeper.
spec="$PWD/docs/openapi.yaml"
cd "$OPS_DIR"   # schemathesis keeps a .schemathesis/ cache in the working directory
"$TOOLS_BIN/schemathesis" --no-color --config-file "$OPS_DIR/schemathesis.toml" run "$spec" \
  --url "$OPS_API" \
  -H "Authorization: Bearer $OPS_TOKEN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-30}" \
  --request-timeout 10 \
  --workers 1 \
  --seed 1 2>&1 | tail -60
