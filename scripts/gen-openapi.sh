#!/usr/bin/env bash
# Regenerates docs/openapi.json (served at GET /openapi.json) from docs/openapi.yaml.
# `--check` only verifies that the two agree (scripts/test-ops.sh runs that).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$(./scripts/setup-tools.sh | tail -1)"
"$BIN/python" - "${1:-}" <<'PY'
import json, sys, yaml
spec = yaml.safe_load(open("docs/openapi.yaml"))
text = json.dumps(spec, indent=2, ensure_ascii=False) + "\n"
if sys.argv[1] == "--check":
    if json.load(open("docs/openapi.json")) != spec:
        sys.exit("docs/openapi.json is stale: run scripts/gen-openapi.sh")
    print("docs/openapi.json matches docs/openapi.yaml")
else:
    open("docs/openapi.json", "w").write(text)
    print("wrote docs/openapi.json")
PY
