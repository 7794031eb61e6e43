#!/usr/bin/env bash
# Instructions per challenge, engine against the bare relay's own work, counted by
# valgrind's callgrind: the path of `cargo bench --bench allocs` (accept, two push
# payloads, decision, withdrawal, confirmed outcome, ack; no I/O), each side run alone
# (`ALLOCS_ONLY`) with collection only inside `count_allocations`. Instruction counts do
# not depend on the machine's noise, so a change's effect can be read from one run
# before and one after. Not part of the test command; needs valgrind.
#
#   scripts/callgrind.sh [COUNT]        (default 3000 challenges per side)
#
# Writes bench/results/callgrind.json (instructions per challenge, the ratio, the
# engine's costliest functions) and leaves callgrind's own files in $CALLGRIND_OUT
# (default /tmp/sca-callgrind) for callgrind_annotate or kcachegrind. The allocator is
# the system one under the counting wrapper, not the daemon's mimalloc. CALLGRIND_BIN
# runs an allocs bench binary built earlier (e.g. a copy from before a change) instead of
# building one; CALLGRIND_RESULT names the JSON written (default
# bench/results/callgrind.json).
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-3000}"
out="${CALLGRIND_OUT:-/tmp/sca-callgrind}"
command -v valgrind >/dev/null || { echo "error: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
mkdir -p "$out"
bin="${CALLGRIND_BIN:-}"
[ -n "$bin" ] || bin=$(cargo bench --locked --bench allocs --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "allocs" and m.get("executable"):
        print(m["executable"])')
[ -x "$bin" ] || { echo "error: the allocs bench did not build" >&2; exit 1; }
for side in engine relay; do
  echo "callgrind: $side, $count challenges" >&2
  ALLOCS_N="$count" ALLOCS_ONLY="$side" valgrind --tool=callgrind --collect-atstart=no \
    --toggle-collect='*count_allocations*' --callgrind-out-file="$out/$side.out" \
    "$bin" >"$out/$side.log" 2>&1 || { echo "error: callgrind run of $side failed:" >&2; tail -20 "$out/$side.log" >&2; exit 1; }
  callgrind_annotate --inclusive=yes --threshold=100 "$out/$side.out" >"$out/$side-inclusive.txt" 2>/dev/null
  callgrind_annotate --inclusive=no --threshold=100 "$out/$side.out" >"$out/$side-self.txt" 2>/dev/null
done
python3 - "$out" "$count" "${CALLGRIND_RESULT:-bench/results/callgrind.json}" <<'PY'
import json, os, re, sys
out, n, result = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def total(side):
    for line in open(os.path.join(out, f"{side}.out")):
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    raise SystemExit(f"no total in {side}.out")

def top(side, kind, k=15):
    """The costliest functions, without the wrappers that hold nearly everything."""
    whole = total(side)
    rows = []
    for line in open(os.path.join(out, f"{side}-{kind}.txt")):
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        ir = int(m.group(1).replace(",", ""))
        if ir >= 0.9 * whole:
            continue
        name = re.sub(r" \[[^\]]*\]$", "", m.group(2).strip())
        name = re.sub(r"^(\?\?\?|[^ ]*\.(rs|c|S|h)):", "", name)
        if any(r["function"] == name[:160] for r in rows):
            continue
        rows.append({"function": name[:160], "instructions_per_challenge": round(ir / n)})
    return rows[:k]

e, r = total("engine"), total("relay")
res = {
    "v": 1,
    "challenges": n,
    "what": "instructions per challenge counted by callgrind inside count_allocations: the engine's path of benches/allocs.rs (accept, APNs and FCM payloads, decision, withdrawal, confirmed outcome, ack; no I/O) against the relay's own work (parse, two payloads, outcome body); system allocator",
    "engine_instructions_per_challenge": round(e / n),
    "relay_instructions_per_challenge": round(r / n),
    "ratio": round(e / r, 2),
    "engine_top_self": top("engine", "self"),
    "engine_top_inclusive": top("engine", "inclusive", 25),
}
os.makedirs(os.path.dirname(result) or ".", exist_ok=True)
with open(result, "w") as f:
    json.dump(res, f, indent=2, ensure_ascii=False)
    f.write("\n")
print(f"engine {res['engine_instructions_per_challenge']:,} instructions per challenge, relay's own work {res['relay_instructions_per_challenge']:,} ({res['ratio']}x)")
print("engine, self cost per challenge:")
for row in res["engine_top_self"]:
    print(f"  {row['instructions_per_challenge']:>8,}  {row['function']}")
PY
echo "callgrind files: $out (callgrind_annotate $out/engine.out)" >&2
