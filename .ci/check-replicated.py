#!/usr/bin/env python3
"""Checks the rendered overlay deploy/kubernetes/replicated (a multi-document YAML file), for
.ci/deploy-checks: kubernetes-validate checks each object against its schema, this checks that
the objects make a working replicated deployment together:
  1. no PersistentVolumeClaim, no volume claiming one, and state_dir on an emptyDir;
  2. the Deployment runs 2 or more replicas with a RollingUpdate that keeps some of them up;
  3. a PodDisruptionBudget selects the pod and lets one go at a time, no more, no fewer;
  4. topologySpreadConstraints on kubernetes.io/hostname and on topology.kubernetes.io/zone
     (ScheduleAnyway), selecting the pod;
  5. the ConfigMap's scenewatch.toml says [state] backend = "postgres", replicated = true, and
     has a sink that is not a file on the pod (each replica delivers its own shards);
  6. the ledger's URL comes from a Secret, every *PASSWORD_ENV names a variable of the
     container that comes from a Secret, and no literal value holds a password;
  7. terminationGracePeriodSeconds above the config's shutdown_timeout; readiness on /readyz.
Usage: check-replicated.py RENDERED.yaml    Needs PyYAML (it comes with kubernetes-validate)
and Python 3.11 or later (tomllib)."""
import re
import sys
import tomllib
from urllib.parse import urlsplit

import yaml

CONFIG_MAP = "scenewatch-config"
CONFIG_KEY = "scenewatch.toml"


def seconds(text):
    """A humantime duration as scenewatch writes them ("20s", "1m 30s"), in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)\s*(ms|s|m|h|d)", text)
    if not parts or re.sub(r"(\d+)\s*(ms|s|m|h|d)|\s", "", text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def selects(selector, labels):
    ml = selector.get("matchLabels", {})
    return bool(ml) and not selector.get("matchExpressions") and all(labels.get(k) == v for k, v in ml.items())


def main(rendered):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    problems = []
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        return [f"expected one Deployment, found {len(deployments)}"]
    dep = deployments[0]
    spec = dep["spec"]
    pod = spec["template"]
    pod_labels = pod["metadata"].get("labels", {})
    pod_spec = pod["spec"]
    containers = pod_spec["containers"]
    if len(containers) != 1:
        return [f"expected one container, found {len(containers)}"]
    c = containers[0]

    # 1. No PVC; state_dir on an emptyDir.
    for pvc in by_kind.get("PersistentVolumeClaim", []):
        problems.append(f"PersistentVolumeClaim {pvc['metadata']['name']} is still rendered (the ledger is in PostgreSQL)")
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for v in volumes.values():
        if "persistentVolumeClaim" in v:
            problems.append(f"volume {v['name']} claims a PVC; replicas share no volume")
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts", [])}

    # 2. Replicas and the rollout.
    replicas = spec.get("replicas", 1)
    if replicas < 2:
        problems.append(f"replicas: {replicas}; a replicated deployment runs 2 or more")
    strategy = spec.get("strategy", {})
    if strategy.get("type") != "RollingUpdate":
        problems.append(f"strategy {strategy.get('type')!r}: replicas roll one by one (RollingUpdate)")
    else:
        ru = strategy.get("rollingUpdate", {})
        mu, ms = ru.get("maxUnavailable"), ru.get("maxSurge")
        if not isinstance(mu, int) or not 0 <= mu < replicas:
            problems.append(f"rollingUpdate.maxUnavailable {mu!r}: a number below replicas ({replicas}), so some keep polling")
        if not isinstance(ms, int) or (mu == 0 and ms == 0):
            problems.append(f"rollingUpdate.maxSurge {ms!r}: a number, not 0 together with maxUnavailable 0")

    # 3. The PodDisruptionBudget.
    pdbs = [p for p in by_kind.get("PodDisruptionBudget", []) if selects(p["spec"].get("selector", {}), pod_labels)]
    if len(pdbs) != 1:
        problems.append(f"expected one PodDisruptionBudget selecting the pod {pod_labels}, found {len(pdbs)}")
    else:
        ps = pdbs[0]["spec"]
        if "maxUnavailable" in ps:
            allowed = ps["maxUnavailable"]
        else:
            allowed = replicas - ps.get("minAvailable", replicas) if isinstance(ps.get("minAvailable"), int) else None
        if allowed != 1:
            problems.append(f"PodDisruptionBudget lets {allowed!r} of {replicas} replicas go at once; one at a time")

    # 4. Topology spread.
    spread = {t.get("topologyKey"): t for t in pod_spec.get("topologySpreadConstraints", [])}
    for key, when in [("kubernetes.io/hostname", None), ("topology.kubernetes.io/zone", "ScheduleAnyway")]:
        t = spread.get(key)
        if t is None:
            problems.append(f"no topologySpreadConstraint on {key}")
            continue
        if not selects(t.get("labelSelector", {}), pod_labels):
            problems.append(f"the topologySpreadConstraint on {key} does not select the pod {pod_labels}")
        if when and t.get("whenUnsatisfiable") != when:
            problems.append(f"the topologySpreadConstraint on {key}: whenUnsatisfiable {t.get('whenUnsatisfiable')!r}, expected {when}")

    # 5. The configuration.
    maps = [m for m in by_kind.get("ConfigMap", []) if m["metadata"]["name"] == CONFIG_MAP]
    config = {}
    if len(maps) != 1 or CONFIG_KEY not in maps[0].get("data", {}):
        problems.append(f"no ConfigMap {CONFIG_MAP} with {CONFIG_KEY}")
    else:
        try:
            config = tomllib.loads(maps[0]["data"][CONFIG_KEY])
        except tomllib.TOMLDecodeError as e:
            problems.append(f"{CONFIG_KEY}: {e}")
    state = config.get("state", {})
    if config and state.get("backend") != "postgres":
        problems.append(f"{CONFIG_KEY}: [state] backend = {state.get('backend')!r}, expected \"postgres\"")
    if config and state.get("replicated") is not True:
        problems.append(f"{CONFIG_KEY}: [state] replicated = {state.get('replicated')!r}, expected true")
    state_dir = config.get("state_dir", "/var/lib/scenewatch").rstrip("/")
    state_volume = volumes.get(mounts.get(state_dir, ""), {})
    if config and "emptyDir" not in state_volume:
        problems.append(f"state_dir {state_dir} is not on an emptyDir volume (mounts: {mounts})")
    on_pod = [p for p, name in mounts.items() if "emptyDir" in volumes.get(name, {})]
    sinks = config.get("sink", [])
    if config and not sinks:
        problems.append(f"{CONFIG_KEY} has no [[sink]]: the default file sink would write into the pod's {state_dir}")
    for i, s in enumerate(sinks):
        where = s.get("dir") or s.get("path") or (f"{state_dir}/results" if s.get("type") == "file" else None)
        if s.get("type") in ("file", "jsonl") and where and any(where == p or where.startswith(p + "/") for p in on_pod):
            problems.append(f"[[sink]] {i} ({s.get('type')}) writes to {where}, on the pod's emptyDir: each replica would keep only its own shards' results, lost with the pod")

    # 6. Secrets in the environment.
    env = {e["name"]: e for e in c.get("env", [])}
    if c.get("envFrom"):
        problems.append("envFrom: list each variable, so this check sees where it comes from")

    def from_secret(name):
        return "secretKeyRef" in env.get(name, {}).get("valueFrom", {})

    if not from_secret("SCENEWATCH__STATE__URL"):
        problems.append("SCENEWATCH__STATE__URL does not come from a Secret (secretKeyRef)")
    for name, e in env.items():
        value = e.get("value")
        if name.endswith("PASSWORD_ENV"):
            if value not in env:
                problems.append(f"{name}={value!r} names no variable of the container")
            elif not from_secret(value):
                problems.append(f"{name}={value!r}: that variable does not come from a Secret")
        if isinstance(value, str) and "://" in value and urlsplit(value).password:
            problems.append(f"{name} holds a URL with a password in the manifest")

    # 7. Shutdown and readiness.
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    try:
        shutdown = seconds(config.get("shutdown_timeout", "20s"))
        if config and grace <= shutdown:
            problems.append(f"terminationGracePeriodSeconds {grace} is not above shutdown_timeout ({shutdown:g} s)")
    except ValueError as e:
        problems.append(f"shutdown_timeout: {e}")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problems.append("the readiness probe is not /readyz (a replica without its leases must leave the Service)")
    return problems


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    found = main(sys.argv[1])
    for p in found:
        print(f"   {p}")
    if found:
        sys.exit(1)
    print("   replicas, rollout, PodDisruptionBudget, topology spread, volumes, Secrets and config fit together")
