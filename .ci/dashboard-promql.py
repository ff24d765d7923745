#!/usr/bin/env python3
"""Turns every query of the Grafana dashboard into a recording rule, so that
`promtool check rules` parses it as PromQL (for .ci/deploy-checks). Grafana's variables are
replaced first: $__rate_interval by 5m, the $job/$instance/$sink filters by .*; a template
variable's label_values(SELECTOR, LABEL) is checked as the SELECTOR. Anything else starting
with $ is reported, since Prometheus would not understand it.
Usage: dashboard-promql.py DASHBOARD.json OUT.rules.yml"""
import json
import re
import sys

SUBST = {"$__rate_interval": "5m", "$__interval": "1m", "$job": ".*", "$instance": ".*", "$sink": ".*"}


def queries(dash):
    def walk(panels):
        for p in panels:
            yield from walk(p.get("panels", []))
            for t in p.get("targets", []):
                yield f"panel {p['id']} ({p.get('title')}) {t.get('refId')}", t.get("expr", "")
    yield from walk(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
            m = re.fullmatch(r"label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\)", q.strip())
            yield f"variable {v['name']}", (m.group(1) if m else q)


def main(src, out):
    dash = json.load(open(src))
    problems, rules = [], []
    for i, (where, expr) in enumerate(queries(dash)):
        if not expr.strip():
            problems.append(f"{where}: empty query")
            continue
        for k, v in SUBST.items():
            expr = expr.replace(k, v)
        if "$" in expr:
            problems.append(f"{where}: unknown variable in {expr!r}")
            continue
        rules.append((f"dashboard:query_{i}", where, expr))
    with open(out, "w") as f:
        f.write("groups:\n  - name: dashboard-queries\n    rules:\n")
        for name, where, expr in rules:
            f.write(f"      # {where}\n      - record: {name}\n        expr: {json.dumps(expr)}\n")
    for p in problems:
        print(f"   {p}")
    print(f"   {len(rules)} dashboard queries written to {out}")
    return 1 if problems or not rules else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
