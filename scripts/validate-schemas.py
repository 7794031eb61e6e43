#!/usr/bin/env python3
"""Validates JSON documents against the JSON Schemas in docs/schemas/.

Each schema must itself be valid (draft 2020-12). A document named
`<schema>.<anything>.json` or `<schema>.json` is checked against
docs/schemas/<schema>.schema.json (the longest matching schema name wins).

    validate-schemas.py [--invalid DIR] DIR...

Every document in each DIR must be valid; every document in an --invalid DIR must be
rejected. Exits 1 naming each document that breaks this.
"""
import json
import pathlib
import sys

from jsonschema import Draft202012Validator, FormatChecker

ROOT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "schemas"


def load_schemas():
    schemas = {}
    for p in sorted(ROOT.glob("*.schema.json")):
        schema = json.loads(p.read_text())
        Draft202012Validator.check_schema(schema)
        schemas[p.name[: -len(".schema.json")]] = Draft202012Validator(
            schema, format_checker=FormatChecker()
        )
    return schemas


def schema_for(name, schemas):
    stem = name[: -len(".json")]
    best = None
    for s in schemas:
        if stem == s or stem.startswith(s + "."):
            if best is None or len(s) > len(best):
                best = s
    return best


def main(argv):
    schemas = load_schemas()
    valid_dirs, invalid_dirs = [], []
    it = iter(argv)
    for a in it:
        if a == "--invalid":
            invalid_dirs.append(pathlib.Path(next(it)))
        else:
            valid_dirs.append(pathlib.Path(a))
    failures, checked = [], 0
    for d, must_pass in [(d, True) for d in valid_dirs] + [(d, False) for d in invalid_dirs]:
        files = sorted(d.glob("*.json"))
        if not files:
            failures.append(f"{d}: no documents to check")
        for f in files:
            s = schema_for(f.name, schemas)
            if s is None:
                failures.append(f"{f}: no schema named like it in {ROOT}")
                continue
            errors = list(schemas[s].iter_errors(json.loads(f.read_text())))
            checked += 1
            if must_pass and errors:
                for e in errors:
                    where = "/".join(str(x) for x in e.absolute_path) or "(root)"
                    failures.append(f"{f}: {where}: {e.message}")
            elif not must_pass and not errors:
                failures.append(f"{f}: accepted by {s}.schema.json but must be rejected")
    for line in failures:
        print(f"FAIL {line}")
    print(f"schemas: {len(schemas)} valid; documents: {checked} checked, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
