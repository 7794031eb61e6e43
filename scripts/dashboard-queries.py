#!/usr/bin/env python3
"""Checks the Grafana dashboard's structure and prints every panel query as JSON lines
({"panel", "ref", "expr"}), with template variables replaced by --var NAME=VALUE.

Structure: a `datasource` variable of type datasource; every panel and target uses
`${datasource}`; panel ids unique; every query non-empty; no `or vector(...)` fallback
(it would hide a wrong metric name from scripts/check-dashboard.sh).
"""
import argparse
import json
import re
import sys

ap = argparse.ArgumentParser()
ap.add_argument("dashboard")
ap.add_argument("--var", action="append", default=[], help="NAME=VALUE")
args = ap.parse_args()
d = json.load(open(args.dashboard))
values = dict(v.split("=", 1) for v in args.var)
errors = []
tvars = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
if tvars.get("datasource", {}).get("type") != "datasource":
    errors.append("no `datasource` variable of type datasource")
ids = set()
queries = []
for p in d["panels"]:
    if p["id"] in ids:
        errors.append(f"panel id {p['id']} used twice")
    ids.add(p["id"])
    if p["type"] == "row":
        continue
    if p.get("datasource", {}).get("uid") != "${datasource}":
        errors.append(f"panel {p['title']!r} does not use ${{datasource}}")
    if not p.get("targets"):
        errors.append(f"panel {p['title']!r} has no query")
    for t in p.get("targets", []):
        e = t.get("expr", "").strip()
        if not e:
            errors.append(f"panel {p['title']!r} {t.get('refId')}: empty query")
        if re.search(r"\bor\s+vector\(", e):
            errors.append(f"panel {p['title']!r} {t.get('refId')}: `or vector()` hides missing series")
        if t.get("datasource", {}).get("uid") != "${datasource}":
            errors.append(f"panel {p['title']!r} {t.get('refId')}: target does not use ${{datasource}}")

        def sub(m):
            name = m.group(1) or m.group(2)
            if name not in values:
                errors.append(f"panel {p['title']!r}: no value given for ${name}")
                return m.group(0)
            return values[name]

        if values:
            e = re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, e)
        queries.append({"panel": p["title"], "ref": t.get("refId"), "expr": e})
if errors:
    for e in sorted(set(errors)):
        print(f"FAIL {e}", file=sys.stderr)
    sys.exit(1)
for q in queries:
    print(json.dumps(q))
