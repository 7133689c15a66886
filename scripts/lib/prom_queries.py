#!/usr/bin/python3
"""Runs every query of a Grafana dashboard and every expression of a
Prometheus rules file against a running Prometheus, through its HTTP API
(/api/v1/query), and fails when one returns no data.

  prom_queries.py PROMETHEUS_URL DASHBOARD_JSON RULES_YML [FAMILIES_JSON] [--job JOB]

- the scrape job JOB (default hsm-kms) must be up (every target of it);
- every `expr` of the dashboard's panels (and their `targets`) must return
  at least one series;
- every alert's expression is `<query> <op> <number>` (the convention of
  docker/prometheus/rules.yml): `<query>` alone must return data;
- every recording rule must have a series under its record name;
- FAMILIES_JSON (the output of metrics_families.py for one scrape), when
  given: fewer than 10,000 distinct series.

Used by scripts/test-observability.sh (a native Prometheus) and
scripts/test-compose.sh (the compose `observability` profile's).
"""
import json
import re
import sys
import urllib.parse
import urllib.request

import yaml

args = [a for a in sys.argv[1:]]
job = "hsm-kms"
if "--job" in args:
    i = args.index("--job")
    job = args[i + 1]
    del args[i : i + 2]
if len(args) not in (3, 4):
    raise SystemExit(__doc__)
prom, dashboard, rules_path = args[:3]
families_path = args[3] if len(args) == 4 else None


def query(expr):
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise SystemExit(f"query failed: {expr}: {body}")
    return body["data"]["result"]


failed = []
up = query(f'up{{job="{job}"}}')
if not up or any(u["value"][1] != "1" for u in up):
    raise SystemExit(f"the {job} target is not up: {up}")


def exprs(node):
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node.get("title", ""), node["expr"]
        for k, v in node.items():
            if k == "targets":
                for t in v:
                    yield node.get("title", ""), t["expr"]
            elif isinstance(v, (dict, list)):
                yield from exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from exprs(v)


with open(dashboard) as f:
    dash = json.load(f)
seen = set()
n = 0
for title, e in exprs(dash.get("panels", [])):
    if e in seen:
        continue
    seen.add(e)
    n += 1
    if not query(e):
        failed.append(f"dashboard '{title}': {e}")
print(f"dashboard: {n} queries", file=sys.stderr)

with open(rules_path) as f:
    rules = yaml.safe_load(f)
na = nr = 0
for g in rules["groups"]:
    for r in g["rules"]:
        e = " ".join(r["expr"].split())
        if "alert" in r:
            na += 1
            m = re.match(r"^(.*\S)\s+(>|<|>=|<=|==|!=)\s+([0-9.eE+-]+)$", e)
            if not m:
                failed.append(f"alert {r['alert']}: expression does not end in '<op> <number>': {e}")
                continue
            if not query(m.group(1)):
                failed.append(f"alert {r['alert']}: {m.group(1)}")
        else:
            nr += 1
            if not query(r["record"]):
                failed.append(f"recording rule {r['record']} has no series")
print(f"rules: {na} alerts, {nr} recording rules", file=sys.stderr)

if families_path:
    with open(families_path) as f:
        fam = json.load(f)[0]
    print(f"/metrics: {len(fam['families'])} families, {fam['series']} series", file=sys.stderr)
    if fam["series"] >= 10000:
        failed.append(f"{fam['series']} series (bound: 10,000)")
if failed:
    print("returned no data:", file=sys.stderr)
    for x in failed:
        print("  " + x, file=sys.stderr)
    raise SystemExit(1)
