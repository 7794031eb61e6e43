#!/usr/bin/env bash
# Fuzzing: builds the cargo-fuzz targets of fuzz/ (nightly toolchain, cargo-fuzz), runs
# each for SECONDS (default 600) one after the other at low priority, then minimizes its
# corpus (`cargo fuzz cmin`) into fuzz/corpus/<target>/, which is checked in and replayed
# on stable by `cargo test --test fuzz_corpus`. Figures go to bench/results/fuzz.json; a
# crash leaves its reproducer in fuzz/artifacts/<target>/ and makes the exit code 1.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (no TARGET: every target)
#
# Environment: FUZZ_NICE (niceness, default 10), FUZZ_SANITIZER (default `none`: the
# daemon has no unsafe code; `address` is slower), FUZZ_JOBS (workers per target, 1).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
shift || true
nice_level="${FUZZ_NICE:-10}"
sanitizer="${FUZZ_SANITIZER:-none}"
jobs="${FUZZ_JOBS:-1}"
# rustix 0.37 (under lapin) does not build on recent nightlies with its raw-syscall
# backend; its libc backend does.
export RUSTFLAGS="${RUSTFLAGS:-} --cfg rustix_use_libc"
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is needed: cargo install cargo-fuzz" >&2; exit 2; }
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi

# Seeds from the contract's examples and the tests' fixtures, for a corpus not there yet.
seed() {
  local t="$1" d="fuzz/corpus/$1"
  mkdir -p "$d"
  [ -n "$(ls -A "$d")" ] && return 0
  case "$t" in
    challenge)
      cp docs/schemas/examples/challenge.*.json "$d/"
      for f in docs/schemas/examples/invalid/*; do cp "$f" "$d/invalid-$(basename "$f")"; done ;;
    responses)
      cp docs/schemas/examples/responses-{decision,otp,sms,cancel}.json "$d/" ;;
    http_ops)
      printf '\x00{"device_id":"d-pixel","decision":"approve","signature":"MEUCIQ=="}' >"$d/decision"
      printf '\x01{"code":"123456"}' >"$d/otp"
      printf '\x02/v1/challenges/01JD3F6Y8W0QZ5N4B7K2M9XH1C/decision' >"$d/path"
      printf '\x03wait=5&x=1' >"$d/query" ;;
    control)
      printf '{"t":"hello","from":"i-1"}' >"$d/hello"
      printf '{"t":"req","from":"i-1","corr":"00ff","req":{"challenge_id":"c1","ask":"operate","op":{"op":"otp","code":"123456"},"authority":"queue"}}' >"$d/req-op"
      printf '{"t":"req","from":"i-1","corr":"00ff","req":{"challenge_id":"c1","ask":"view","wait_ms":30000}}' >"$d/req-view"
      printf '{"t":"rep","from":"i-2","corr":"00ff","answer":{"a":"op","v":{"result":"wrong_code","attempts_left":3}}}' >"$d/rep-op"
      printf '{"t":"rep","from":"i-2","corr":"00ff","answer":{"a":"view","v":{"challenge_id":"c1","user_id":"u","kind":"login","state":"completed","expires_at":"2026-11-23T19:42:00.000Z","devices":[{"device_id":"d","platform":"fcm","push":"delivered","withdrawn":false}],"outcome":"approved","channel":"push","device_id":"d","reason":null,"decided_at":"2026-11-23T19:40:07.113Z","sms":{"state":"sent","phone":"+39340****567","sent":1,"attempts_left":5},"number":42}}}' >"$d/rep-view"
      printf '{"t":"note","from":"i-1","note":{"kind":"sms_sent","user":"u1","at":1795462800000}}' >"$d/note" ;;
    config)
      { cat config/sca-dispatch.example.toml; printf '\0SCA_HTTP_API_TOKENS=Tok3nX9abc\nSCA_AMQP_PREFETCH=10\n'; } >"$d/example"
      printf '[sms]\ngateway = "twilio"\nendpoint = "https://api.twilio.com"\naccount_sid = "AC1"\nauth_token = "S3cretT0ken"\nfrom = "+15550001"\n\0SCA_HTTP_API_TOKENS=Tok3nX9abc\n' >"$d/twilio" ;;
    answers)
      printf '\x00\x01\x02\x00{"reason":"BadDeviceToken"}' >"$d/apns"
      printf '\x01\x01\x06\x01\x05{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}' >"$d/fcm"
      printf '\x02\x01\x00\x00{"code":"80100000","msg":"{\\"success\\":0,\\"failure\\":1,\\"illegal_tokens\\":[\\"t\\"]}","requestId":"1"}' >"$d/hms"
      printf '\x03\x01\x02\x00{"code":21211,"message":"The To number +393401234567 is not a valid phone number.","more_info":"https://www.twilio.com/docs/errors/21211"}' >"$d/twilio"
      printf '\x04\x01\x0a\x01\x10{"error":"busy, code 123456 for +393401234567"}' >"$d/webhook"
      printf '\x05\x00\x00\x00Wed, 21 Oct 2026 07:28:00 GMT' >"$d/retry-after" ;;
    machine|core)
      head -c 256 /dev/urandom >"$d/random-1"; head -c 1024 /dev/urandom >"$d/random-2" ;;
  esac
}

max_len() {
  case "$1" in challenge) echo 20000 ;; config) echo 8192 ;; *) echo 4096 ;; esac
}

mkdir -p bench/results fuzz/logs
nice -n "$nice_level" cargo +nightly fuzz build -s "$sanitizer" >/dev/null
failed=0
results=()
for t in "${targets[@]}"; do
  seed "$t"
  log="fuzz/logs/$t.log"
  echo "== $t: $secs s"
  rc=0
  nice -n "$nice_level" cargo +nightly fuzz run -s "$sanitizer" --jobs "$jobs" "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  stat() { grep -h "^stat::$1:" "$log" | awk '{s+=$2} END {print s+0}'; }
  runs=$(stat number_of_executed_units)
  eps=$(stat average_exec_per_sec)
  crashes=$(find "fuzz/artifacts/$t" -type f 2>/dev/null | wc -l)
  if [ "$rc" -ne 0 ]; then
    failed=1
    echo "   $t FAILED (exit $rc); see $log and fuzz/artifacts/$t/" >&2
    grep -m3 -E "panicked|ERROR|SUMMARY" "$log" >&2 || true
  fi
  before=$(ls "fuzz/corpus/$t" | wc -l)
  nice -n "$nice_level" cargo +nightly fuzz cmin -s "$sanitizer" "$t" "fuzz/corpus/$t" -- \
    -max_len="$(max_len "$t")" -use_counters=0 >>"$log" 2>&1 || true
  after=$(ls "fuzz/corpus/$t" | wc -l)
  echo "   $runs runs, $eps exec/s, exit $rc, artifacts $crashes, corpus $before -> $after files"
  results+=("{\"target\":\"$t\",\"seconds\":$secs,\"runs\":$runs,\"exec_per_s\":$eps,\"exit\":$rc,\"artifacts\":$crashes,\"corpus_files\":$after}")
done
# Merged into the figures of earlier runs (a run of some targets keeps the others').
python3 - "$sanitizer" "${results[@]}" <<'PY'
import json, os, sys, time
path = "bench/results/fuzz.json"
old = json.load(open(path)) if os.path.exists(path) else {"targets": []}
new = [json.loads(r) for r in sys.argv[2:]]
for r in new:
    r["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    r["sanitizer"] = sys.argv[1]
names = {r["target"] for r in new}
targets = [r for r in old["targets"] if r["target"] not in names] + new
json.dump({"v": 1, "targets": targets}, open(path, "w"), indent=1)
open(path, "a").write("\n")
PY
echo "figures: bench/results/fuzz.json"
exit "$failed"
