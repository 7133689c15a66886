#!/usr/bin/python3
"""Parses Prometheus text exposition files with the prometheus_client
parser (Debian's python3-prometheus-client), independently of hsm-kms's own
writer, and prints one JSON object:

  {"families": {NAME: {"type": T, "value": V, "series": N}, ...},
   "samples": {"name{a=\"x\",b=\"y\"}": VALUE, ...},
   "series": TOTAL_DISTINCT_SERIES}

per file given (a JSON list, in argument order). NAME is the name as
exposed (counters with their _total suffix); V is the sum of a counter's or
gauge's samples, or of a histogram's _count samples (how many
observations), so that two scrapes tell whether a family moved. A file
that does not parse exits non-zero with the parser's message.
"""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def sample_key(s):
    if not s.labels:
        return s.name
    labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
    return "%s{%s}" % (s.name, labels)


def summarize(text):
    families = {}
    samples = {}
    series = set()
    for fam in text_string_to_metric_families(text):
        name = fam.name
        if fam.type == "counter" and any(s.name.endswith("_total") for s in fam.samples):
            name = fam.name + "_total"
        value = 0.0
        count = 0
        for s in fam.samples:
            series.add((s.name, tuple(sorted(s.labels.items()))))
            if not s.name.endswith("_bucket"):
                samples[sample_key(s)] = s.value
            if fam.type in ("histogram", "summary"):
                if s.name.endswith("_count"):
                    value += s.value
                    count += 1
            elif fam.type == "counter":
                if not s.name.endswith("_created"):
                    value += s.value
                    count += 1
            else:
                value += s.value
                count += 1
        families[name] = {"type": fam.type, "value": value, "series": count}
    return {"families": families, "samples": samples, "series": len(series)}


def main(paths):
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            out.append(summarize(f.read()))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
