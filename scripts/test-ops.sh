#!/usr/bin/env bash
# The operations checks of the test command (scripts/test.sh runs this last):
# alert rules (promtool), manifests (kubernetes-validate, docker-compose config), the
# OpenAPI document and the JSON Schemas with their examples and the daemon's real bodies,
# schemathesis against a live daemon, and the example integrations.
# Installs its tools when missing (scripts/setup-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-rabbitmq.sh
TOOLS_BIN="$(./scripts/setup-tools.sh | tail -1)"
export TOOLS_BIN
# Where cargo puts binaries and integration-test scratch files (CARGO_TARGET_DIR aware).
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps \
  | "$TOOLS_BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
export OPS_BIN="$TARGET_DIR/debug/sca-dispatch"
step() { printf '\n== %s\n' "$*"; }

step "alert rules: promtool check rules + test rules"
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml

step "Kubernetes manifests (kubernetes-validate --strict)"
manifests=(deploy/kubernetes/configmap.yaml deploy/kubernetes/deployment.yaml
  deploy/kubernetes/service.yaml deploy/kubernetes/pdb.yaml)
"$TOOLS_BIN/kubernetes-validate" --strict "${manifests[@]}"
"$TOOLS_BIN/kubernetes-validate" --strict -k 1.29.0 "${manifests[@]}"
"$TOOLS_BIN/check-jsonschema" --schemafile deploy/kubernetes/schemas/servicemonitor.schema.json \
  deploy/kubernetes/servicemonitor.yaml
"$TOOLS_BIN/python" scripts/check-manifests.py

step "compose file (docker-compose config)"
docker-compose -f deploy/compose/docker-compose.yml config -q && echo "deploy/compose/docker-compose.yml: valid"

step "Grafana dashboard (structure)"
"$TOOLS_BIN/python" scripts/dashboard-queries.py deploy/grafana/sca-dispatch.json >/dev/null \
  && echo "deploy/grafana/sca-dispatch.json: valid"

step "OpenAPI: docs/openapi.json generated from docs/openapi.yaml"
./scripts/gen-openapi.sh --check

step "JSON Schemas: examples (valid and invalid)"
"$TOOLS_BIN/python" scripts/validate-schemas.py docs/schemas/examples --invalid docs/schemas/examples/invalid

step "JSON Schemas: bodies the daemon publishes"
cargo test --locked --all-features --test ops_contract
"$TOOLS_BIN/python" scripts/validate-schemas.py "$TARGET_DIR/tmp/captured-bodies"

step "schemathesis against a live daemon"
cargo build --locked --bin sca-dispatch
./scripts/run-schemathesis.sh

step "example integrations (Python, Java, device)"
./examples/test-examples.sh
