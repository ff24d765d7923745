#!/usr/bin/env python3
"""Writes what the rendered Deployment's container would start with, for .ci/deploy-checks to
run `scenewatch check` on it: OUTDIR/scenewatch.toml (the ConfigMap's file mounted at the
--config path) and OUTDIR/env (the container's environment, NAME=VALUE, NUL-separated).
Values the cluster fills in are replaced by stand-ins: a secretKeyRef by the value listed in
PLACEHOLDERS (an unknown Secret key is an error: add its stand-in here), a path inside a mounted
Secret by a file under OUTDIR holding a stand-in. Nothing real is needed or read.
Usage: pod-config.py RENDERED.yaml OUTDIR    Needs PyYAML (it comes with kubernetes-validate)."""
import os
import sys

import yaml

# (Secret, key) -> the stand-in value. The Secrets are the ones the manifests' comments tell
# the operator to create.
PLACEHOLDERS = {
    ("scenewatch-ledger", "url"): "postgres://scenewatch@db.example:5432/media?sslmode=verify-full",
    ("scenewatch-ledger", "password"): "stand-in-password",
}
FILE_PLACEHOLDER = "stand-in-secret"


def main(rendered, outdir):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    deps = [d for d in docs if d.get("kind") == "Deployment"]
    if len(deps) != 1:
        return f"expected one Deployment, found {len(deps)}"
    pod = deps[0]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = c.get("args", [])
    if "--config" not in args[:-1]:
        return f"the container's args {args} name no --config"
    config_path = args[args.index("--config") + 1]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    config_text = None
    secret_dirs = []
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"], {})
        path = m["mountPath"].rstrip("/")
        if "secret" in v:
            secret_dirs.append(path)
        if "configMap" in v and os.path.dirname(config_path) == path:
            name = v["configMap"]["name"]
            maps = [d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == name]
            key = os.path.basename(config_path)
            if len(maps) != 1 or key not in maps[0].get("data", {}):
                return f"{config_path}: the ConfigMap {name} has no key {key}"
            config_text = maps[0]["data"][key]
    if config_text is None:
        return f"{config_path}: no ConfigMap is mounted there"
    with open(os.path.join(outdir, "scenewatch.toml"), "w") as f:
        f.write(config_text)

    env = []
    for e in c.get("env", []):
        name = e["name"]
        if "value" in e:
            value = str(e["value"])
            inside = [d for d in secret_dirs if value.startswith(d + "/")]
            if inside:
                stand_in = os.path.join(outdir, "secrets", value[len(inside[0]) + 1:])
                os.makedirs(os.path.dirname(stand_in), exist_ok=True)
                with open(stand_in, "w") as f:
                    f.write(FILE_PLACEHOLDER)
                value = stand_in
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            if (ref["name"], ref["key"]) not in PLACEHOLDERS:
                return f"{name}: no stand-in for Secret {ref['name']} key {ref['key']} in {__file__}"
            value = PLACEHOLDERS[(ref["name"], ref["key"])]
        else:
            return f"{name}: a valueFrom other than secretKeyRef is not handled here"
        env.append(f"{name}={value}")
    with open(os.path.join(outdir, "env"), "w") as f:
        f.write("".join(v + "\0" for v in env))
    return None


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    problem = main(sys.argv[1], sys.argv[2])
    if problem:
        print(f"   {problem}")
        sys.exit(1)
