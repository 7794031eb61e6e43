#!/usr/bin/env bash
# Soak: a daemon (release build) under `sca-dispatch load` at half its measured capacity
# for an hour, its RSS, in-flight challenges, open file descriptors, threads and runtime
# tasks sampled every 10 s into bench/results/soak.json, with each one's slope per hour
# (least squares over the samples after the warm-up: decided challenges are retained for
# `challenge.retain_completed_seconds`, 10 minutes by default, so memory climbs for that
# long before it can be flat). Not part of the test command. Exit code 0 when nothing was
# lost and the daemon's log has no panic.
#
#   scripts/soak.sh [MINUTES]        (default 60)
#
# Environment: SOAK_RATE (challenges/s; default half of `e2e_challenges_per_s` in
# bench/results/latest.json), SOAK_INTERVAL (seconds between samples, 10), SOAK_WARMUP
# (seconds left out of the slopes, default 900, at most a quarter of the run), SOAK_PROFILE
# (release or debug, default release), SOAK_KEEP=1 keeps the work directory, SOAK_AMQP_URL
# (a broker of its own, so that nothing else on the machine restarts it under the soak),
# SOAK_USERS (the user population the challenges go to in turn, default 100000, so the
# daemon's per-user state reaches its steady size; 0: a new user for every challenge).
# The traffic mixes every path a long run should exercise: pushes to APNs, FCM and Push
# Kit, approvals, denials, ignored pushes that go to SMS codes or expire.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-60}"
interval="${SOAK_INTERVAL:-10}"
profile="${SOAK_PROFILE:-release}"
rate="${SOAK_RATE:-$(python3 -c '
import json
try: print(int(json.load(open("bench/results/latest.json"))["e2e_challenges_per_s"] / 2))
except Exception: print(500)')}"
. scripts/lib/live-daemon.sh
LIVE_KEEP="${SOAK_KEEP:-0}"
LIVE_AMQP_URL="${SOAK_AMQP_URL:-}"
users="${SOAK_USERS:-100000}"
users_opt=()
[ "$users" != 0 ] && users_opt=(--users "$users")
live_init soak "$profile"
live_load "${users_opt[@]}" --rate "$rate" --duration "$((minutes * 60))" --drain 45 --ttl 30 \
  --platforms apns=2,fcm=2,hms=1 --answers approve=8,deny=1,ignore=1 --sms-share 20 \
  --report "$dir/load" --quiet
live_daemon
echo "soak: $minutes min at $rate challenges/s ($profile build), a sample every $interval s"

python3 - "$daemon_pid" "$load_pid" "$metrics_port" "$interval" "$dir/samples.jsonl" <<'PY' &
import json, os, sys, time, urllib.request
pid, load_pid, port, every, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
t0 = time.time()
def alive(p):
    try: os.kill(p, 0); return True
    except OSError: return False
def status(key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"): return int(line.split()[1])
def metric(text, name):
    vals = [float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + " ") or l.startswith(name + "{")]
    return sum(vals) if vals else None
with open(out, "w") as f:
    while alive(load_pid) and alive(pid):
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except Exception:
            text = ""
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        s = {"t": round(time.time() - t0, 1),
             "rss_bytes": status("VmRSS") * 1024,
             "threads": status("Threads"),
             "fds": len(os.listdir(f"/proc/{pid}/fd")),
             "cpu_s": (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"),
             "in_flight": metric(text, "sca_challenges_in_flight"),
             "tasks": metric(text, "sca_runtime_alive_tasks"),
             "outcomes": metric(text, "sca_outcomes_total")}
        f.write(json.dumps(s) + "\n"); f.flush()
        time.sleep(every)
PY
sampler_pid=$!

rc=0
wait "$load_pid" || rc=$?
load_pid=""
wait "$sampler_pid" 2>/dev/null || true
panics=$(grep -c "panicked" "$dir/daemon.log" || true)
live_stop_daemon
tail -25 "$dir/load.log"
[ -f "$dir/load.json" ] || { echo "error: no load report (load tool exit $rc)" >&2; tail -20 "$dir/daemon.log" >&2; exit 1; }
mkdir -p bench/results
python3 - "$dir/samples.jsonl" "$dir/load.json" "$rate" "$minutes" "$profile" "$panics" "${SOAK_WARMUP:-900}" "$users" <<'PY'
import json, sys
samples = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
load = json.load(open(sys.argv[2]))
rate, minutes, profile, panics = float(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
warm = [s for s in samples if s["t"] >= min(float(sys.argv[7]), 60 * minutes / 4)]
def slope(key):
    pts = [(s["t"] / 3600, s[key]) for s in warm if s.get(key) is not None]
    if len(pts) < 3: return None
    mx = sum(x for x, _ in pts) / len(pts); my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return round(sum((x - mx) * (y - my) for x, y in pts) / den, 1) if den else None
def span(key):
    v = [s[key] for s in warm if s.get(key) is not None]
    return {"min": min(v), "max": max(v), "mean": round(sum(v) / len(v), 1)} if v else None
keys = ["rss_bytes", "in_flight", "fds", "threads", "tasks"]
summary = {k: {"per_hour_slope": slope(k), **(span(k) or {})} for k in keys}
rss = summary["rss_bytes"]
flat = rss["per_hour_slope"] is not None and abs(rss["per_hour_slope"]) <= 0.05 * rss["mean"]
cpu = [s["cpu_s"] for s in samples]
lost = load.get("lost")
users = int(sys.argv[8])
result = {"v": 1, "build": profile, "rate_per_s": rate, "minutes": minutes,
          "users": users if users else "a new user per challenge",
          "interval_s": samples[1]["t"] - samples[0]["t"] if len(samples) > 1 else None,
          "warm_up_s": warm[0]["t"] if warm else None,
          "daemon_cores": round((cpu[-1] - cpu[0]) / (samples[-1]["t"] - samples[0]["t"]), 3) if len(samples) > 1 else None,
          "summary": summary, "rss_flat": flat, "log_panics": panics,
          "load": {k: load[k] for k in ("published", "lost", "unfinished", "outcomes", "rates", "latency", "errors", "daemon") if k in load},
          "samples": samples}
json.dump(result, open("bench/results/soak.json", "w"), indent=1)
open("bench/results/soak.json", "a").write("\n")
mb = lambda b: f"{b / 2**20:.1f} MiB"
print(f"\nbench/results/soak.json: {len(samples)} samples over {samples[-1]['t']:.0f} s at {rate:.0f}/s")
print(f"  RSS {mb(rss['min'])}..{mb(rss['max'])}, slope {rss['per_hour_slope'] / 2**20:+.2f} MiB/h ({'flat' if flat else 'NOT flat'}: within 5% of the mean per hour)")
for k in ["in_flight", "fds", "threads", "tasks"]:
    s = summary[k]
    if s.get("min") is not None:
        print(f"  {k}: {s['min']:.0f}..{s['max']:.0f} (mean {s['mean']}), slope {s['per_hour_slope']:+} per hour")
print(f"  daemon cores {result['daemon_cores']}, panics in log {panics}, lost {lost}")
sys.exit(0 if (lost in (0, None)) and panics == 0 else 1)
PY
