#!/usr/bin/env python3
"""Cross-checks the manifests in deploy/k8s against each other and against the proxy.toml
their ConfigMap holds: every name one object refers to exists, every selector selects the
pods it is meant for, and the shutdown timings fit cachegate's 30 s drain.

    python3 scripts/check-k8s-refs.py [deploy/k8s] [--toml-out FILE]

With --toml-out, the ConfigMap's proxy.toml is written to FILE (for `cachegate check`).
Prints one line per finding and exits 1 when there is any.
"""

import argparse
import pathlib
import re
import sys
import tomllib

import yaml

# cachegate's drain after SIGTERM (DRAIN in src/app.rs).
DRAIN_SECONDS = 30


def load(root):
    docs = []
    for path in sorted(root.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.relative_to(root), doc))
    return docs


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="deploy/k8s", type=pathlib.Path)
    parser.add_argument("--toml-out", help="write the ConfigMap's proxy.toml here")
    opts = parser.parse_args(argv)
    root, toml_out = opts.root, opts.toml_out
    docs = load(root)
    found = []

    def fail(where, msg):
        found.append(f"{where}: {msg}")

    by_kind = {}
    for path, d in docs:
        by_kind.setdefault(d["kind"], []).append((path, d))

    def one(kind, name):
        hits = [(p, d) for p, d in by_kind.get(kind, []) if d["metadata"]["name"] == name]
        return hits[0] if hits else (None, None)

    def selects(selector, labels):
        return all(labels.get(k) == v for k, v in selector.items())

    # Every manifest but the example Secret and the ServiceMonitor is in a kustomization.
    listed = set()
    for kust in root.rglob("kustomization.yaml"):
        for r in yaml.safe_load(kust.read_text()).get("resources", []):
            target = kust.parent / r
            if not target.exists():
                fail(kust.relative_to(root), f"resource {r} does not exist")
            elif target.is_dir() and not (target / "kustomization.yaml").exists():
                fail(kust.relative_to(root), f"resource {r} is a directory without kustomization.yaml")
            listed.add(target.resolve())
    for path, _ in docs:
        if path.name not in ("secret.example.yaml", "servicemonitor.yaml") and (root / path).resolve() not in listed:
            fail(path, "not listed in any kustomization.yaml resources")

    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    pods = [(p, d, d["spec"]["template"]) for p, d in workloads]
    for path, d, tmpl in pods:
        name = d["metadata"]["name"]
        labels = tmpl["metadata"]["labels"]
        if not selects(d["spec"]["selector"]["matchLabels"], labels):
            fail(path, f"{name}: selector does not match its pod template's labels")
        spec = tmpl["spec"]
        for c in spec["containers"]:
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = (c.get(probe, {}).get("httpGet") or c.get(probe, {}).get("tcpSocket") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    fail(path, f"{name}: {probe} names port {port!r}, which the container does not declare")
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    sp, secret = one("Secret", ref["name"])
                    if secret is None:
                        fail(path, f"{name}: env {env['name']} reads Secret {ref['name']}, not in {root}")
                    elif ref["key"] not in secret.get("stringData", {}) | secret.get("data", {}):
                        fail(path, f"{name}: env {env['name']} reads key {ref['key']}, not in Secret {ref['name']}")
            sc = c.get("securityContext", {})
            for key, want in (("allowPrivilegeEscalation", False), ("readOnlyRootFilesystem", True)):
                if sc.get(key) is not want:
                    fail(path, f"{name}: container {c['name']} must set {key}: {str(want).lower()}")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                fail(path, f"{name}: container {c['name']} must drop ALL capabilities")
        if spec.get("securityContext", {}).get("runAsNonRoot") is not True:
            fail(path, f"{name}: pod must set runAsNonRoot: true")
        for v in spec.get("volumes", []):
            if "configMap" in v and one("ConfigMap", v["configMap"]["name"])[1] is None:
                fail(path, f"{name}: volume {v['name']} mounts ConfigMap {v['configMap']['name']}, not in {root}")

    for path, svc in by_kind.get("Service", []):
        name = svc["metadata"]["name"]
        sel = svc["spec"]["selector"]
        matched = [(d, t) for _, d, t in pods if selects(sel, t["metadata"]["labels"])]
        if len(matched) != 1:
            fail(path, f"Service {name} selects {len(matched)} workloads, expected 1")
            continue
        ports = {p["name"] for c in matched[0][1]["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            if isinstance(p["targetPort"], str) and p["targetPort"] not in ports:
                fail(path, f"Service {name} targets port {p['targetPort']!r}, not declared by its pods")

    for path, sts in by_kind.get("StatefulSet", []):
        if one("Service", sts["spec"]["serviceName"])[1] is None:
            fail(path, f"{sts['metadata']['name']}: serviceName {sts['spec']['serviceName']} is not a Service here")

    for kind in ("PodDisruptionBudget",):
        for path, d in by_kind.get(kind, []):
            if not any(selects(d["spec"]["selector"]["matchLabels"], t["metadata"]["labels"]) for _, _, t in pods):
                fail(path, f"{kind} {d['metadata']['name']} selects no pods")
    for path, d in by_kind.get("HorizontalPodAutoscaler", []):
        ref = d["spec"]["scaleTargetRef"]
        if one(ref["kind"], ref["name"])[1] is None:
            fail(path, f"HPA scales {ref['kind']}/{ref['name']}, which is not here")
        elif "replicas" in one(ref["kind"], ref["name"])[1]["spec"]:
            fail(path, f"{ref['kind']}/{ref['name']} sets replicas, which fights the HPA on every apply")

    for path, sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"]["matchLabels"]
        svcs = [s for _, s in by_kind.get("Service", []) if selects(sel, s["metadata"].get("labels", {}))]
        if len(svcs) != 1:
            fail(path, f"ServiceMonitor selects {len(svcs)} Services, expected 1")
        else:
            names = {p["name"] for p in svcs[0]["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in names:
                    fail(path, f"endpoint port {ep.get('port')!r} is not a port of Service {svcs[0]['metadata']['name']}")
                cred = ep.get("authorization", {}).get("credentials")
                if cred and one("Secret", cred["name"])[1] is None:
                    fail(path, f"authorization reads Secret {cred['name']}, not in {root}")

    # The proxy pods: timings, and the config they load.
    _, dep = one("Deployment", "cachegate")
    _, cm = one("ConfigMap", "cachegate-config")
    if dep is None or cm is None:
        fail(root, "Deployment cachegate and ConfigMap cachegate-config are both required")
    else:
        spec = dep["spec"]["template"]["spec"]
        c = spec["containers"][0]
        sleep = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre = int(sleep[1]) if sleep[:1] == ["sleep"] else 0
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace <= pre + DRAIN_SECONDS:
            fail("deployment.yaml", f"terminationGracePeriodSeconds {grace} leaves no room for preStop {pre} s + the {DRAIN_SECONDS} s drain")
        text = cm["data"]["proxy.toml"]
        if toml_out:
            pathlib.Path(toml_out).write_text(text)
        conf = tomllib.loads(text)
        listen = conf["server"]["admin_listen"]
        admin_port = int(listen.rsplit(":", 1)[1])
        declared = {p["name"]: p["containerPort"] for p in c["ports"]}
        if declared.get("admin") != admin_port or not listen.startswith("0.0.0.0:"):
            fail("configmap.yaml", f"admin_listen {listen} must be 0.0.0.0 on the container's admin port {declared.get('admin')}")
        if declared.get("http") != int(conf["server"]["listen"].rsplit(":", 1)[1]):
            fail("configmap.yaml", "[server] listen is not on the container's http port")
        env = {e["name"] for e in c.get("env", [])}
        for section, key in (("purge", "token_env"), ("purge", "hmac_secret_env"), ("admin", "token_env")):
            var = conf.get(section, {}).get(key)
            if var and var not in env:
                fail("configmap.yaml", f"[{section}] {key} = {var!r}, but the Deployment sets no such variable")
        url = conf.get("cache", {}).get("redis_url")
        host = re.match(r"rediss?://(?:[^@/]*@)?([^:/]+)", url or "")
        if host and "." not in host.group(1) and one("Service", host.group(1))[1] is None:
            fail("configmap.yaml", f"redis_url names {host.group(1)}, which is not a Service here")
        mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "config")
        if f"{mount}/proxy.toml" not in c.get("args", []):
            fail("deployment.yaml", f"the container does not run with --config {mount}/proxy.toml")

    for line in found:
        print(line)
    print(f"{root}: {len(docs)} objects cross-checked, {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
