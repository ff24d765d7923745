#!/usr/bin/env python3
"""Checks the rendered base + deploy/kubernetes/monitoring (a multi-document YAML file), for
.ci/deploy-checks. kubernetes-validate has no schema for the PodMonitor CRD, so this does what
it cannot:
  1. the PodMonitor validates against deploy/kubernetes/monitoring/podmonitor.schema.json
     (strict: unknown fields are errors);
  2. it would find the pod: its selector matches the Deployment's pod labels, every endpoint
     port is a named container port, and jobLabel names a pod label whose value is
     "scenewatch" (the job deploy/prometheus/scenewatch.rules.yml expects);
  3. the Service selects the same pod and targets a named container port.
Usage: check-podmonitor.py RENDERED.yaml SCHEMA.json    Needs PyYAML and jsonschema (both come
with kubernetes-validate)."""
import json
import sys

import jsonschema
import yaml


def main(rendered, schema_path):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    schema = json.load(open(schema_path))
    problems = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    monitors = by_kind.get("PodMonitor", [])
    deployments = by_kind.get("Deployment", [])
    if len(monitors) != 1 or len(deployments) != 1:
        problems.append(f"expected one PodMonitor and one Deployment, found {len(monitors)} and {len(deployments)}")
        return problems
    pm, dep = monitors[0], deployments[0]

    validator = jsonschema.Draft202012Validator(schema)
    for e in sorted(validator.iter_errors(pm), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in e.path) or "(top)"
        problems.append(f"PodMonitor {where}: {e.message}")
    if problems:
        return problems

    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    ports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    for k, v in pm["spec"]["selector"].get("matchLabels", {}).items():
        if pod_labels.get(k) != v:
            problems.append(f"PodMonitor selector {k}={v} does not match the pod labels {pod_labels}")
    if pm["spec"]["selector"].get("matchExpressions"):
        problems.append("PodMonitor selector.matchExpressions: not checked here; use matchLabels")
    for ep in pm["spec"]["podMetricsEndpoints"]:
        if ep["port"] not in ports:
            problems.append(f"PodMonitor port {ep['port']!r} is not a named container port {sorted(ports)}")
    job_label = pm["spec"].get("jobLabel")
    if pod_labels.get(job_label) != "scenewatch":
        problems.append(f"PodMonitor jobLabel {job_label!r}: the pod's value is {pod_labels.get(job_label)!r}, the rules expect job=\"scenewatch\"")

    for svc in by_kind.get("Service", []):
        for k, v in svc["spec"].get("selector", {}).items():
            if pod_labels.get(k) != v:
                problems.append(f"Service {svc['metadata']['name']} selector {k}={v} does not match the pod labels")
        for p in svc["spec"].get("ports", []):
            if isinstance(p.get("targetPort"), str) and p["targetPort"] not in ports:
                problems.append(f"Service {svc['metadata']['name']} targetPort {p['targetPort']!r} is not a named container port")
    if not by_kind.get("Service"):
        problems.append("no Service in the rendered manifests")
    return problems


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    found = main(sys.argv[1], sys.argv[2])
    for p in found:
        print(f"   {p}")
    if found:
        sys.exit(1)
    print("   PodMonitor valid against the schema; PodMonitor and Service match the Deployment's pod")
