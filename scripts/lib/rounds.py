"""Alternating benchmark rounds (scripts/bench-runtime.sh, scripts/bench-ab.sh).

    rounds.py row REPORT.json VARIANT ROUND [PERF_STAT]
        prints one run's line from a `sca-dispatch load --report` file (and the daemon's
        instructions from a `perf stat -x,` file)
    rounds.py summary RESULTS.jsonl OUT.json BASE TRIED WHAT [KEY=VALUE ...]

RESULTS.jsonl holds one line per run with "variant", "challenges_per_s",
"daemon_cpu_us_per_challenge", "publish_to_push_p99_ms" and "lost". Writes the medians per
variant, the ratios TRIED / BASE and every run to OUT.json (KEY=VALUE pairs are added as
they are, numbers as numbers); exits 1 when any run lost a challenge."""
import json
import statistics
import sys

FIGURES = ("challenges_per_s", "daemon_cpu_us_per_challenge", "daemon_instructions_per_challenge",
           "publish_to_push_p99_ms")


def instructions(stat):
    try:
        for line in open(stat):
            f = line.strip().split(",")
            if len(f) > 2 and f[2].startswith("instructions") and f[0].isdigit():
                return int(f[0])
    except OSError:
        pass
    return None


def row(report, variant, round_, stat=None):
    r = json.load(open(report))
    d = r.get("daemon") or {}
    ins = instructions(stat) if stat else None
    outcomes = r.get("outcomes") or 0
    print(json.dumps({"round": int(round_), "variant": variant,
                      "challenges_per_s": r["rates"]["outcomes_per_s"],
                      "daemon_cpu_us_per_challenge": d.get("cpu_us_per_challenge"),
                      "daemon_instructions_per_challenge": round(ins / outcomes) if ins and outcomes else None,
                      "daemon_cores": d.get("cpu_cores"),
                      "publish_to_push_p99_ms": r["latency"]["publish_to_push"]["p99_ms"],
                      "lost": r["lost"], "loadavg_end": r["machine"]["loadavg_end"]}))


def summary(results, out_path, base, tried, what, *pairs):
    extra = {}
    for kv in pairs:
        k, v = kv.split("=", 1)
        extra[k] = int(v) if v.isdigit() else v
    rows = [json.loads(l) for l in open(results) if l.strip()]

    def med(variant, key):
        v = [r[key] for r in rows if r["variant"] == variant and r[key] is not None]
        return statistics.median(v) if v else None

    summary = {v: {k: med(v, k) for k in FIGURES} for v in (base, tried)}
    b, t = summary[base], summary[tried]
    ratios = {k: round(t[k] / b[k], 2) if b[k] and t[k] else None for k in FIGURES}
    out = {"v": 1, "what": what, **extra, "median": summary, f"{tried}_vs_{base}": ratios, "runs": rows}
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(json.dumps(summary, indent=1))
    print(f"{tried} / {base}:", ratios)
    sys.exit(0 if all(r["lost"] == 0 for r in rows) else 1)


if __name__ == "__main__":
    {"row": row, "summary": summary}[sys.argv[1]](*sys.argv[2:])
