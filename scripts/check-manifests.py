#!/usr/bin/env python3
"""Checks what the schemas cannot: the properties the deployment files promise.

- Kubernetes: terminationGracePeriodSeconds above the ConfigMap's shutdown.grace_seconds,
  liveness/readiness probes on /healthz and /readyz, non-root, read-only root file
  system, the Secrets referenced (not inlined), the PDB and ServiceMonitor selecting the
  Deployment's pods, ports named as the Service expects;
- container file: multi-stage, non-root USER, HEALTHCHECK on /healthz;
- compose: read-only daemon with the simulators' endpoints, RabbitMQ plugins enabled.
"""
import pathlib
import re
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
K = ROOT / "deploy" / "kubernetes"
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def load(p):
    return yaml.safe_load((K / p).read_text())


cm = load("configmap.yaml")
cfg = tomllib.loads(cm["data"]["sca-dispatch.toml"])
dep = load("deployment.yaml")
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
grace = cfg.get("shutdown", {}).get("grace_seconds", 10)
check(pod["terminationGracePeriodSeconds"] > grace,
      f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} must exceed shutdown.grace_seconds {grace}")
check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe on /healthz")
check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe on /readyz")
check(pod["securityContext"].get("runAsNonRoot") is True, "pod runs as non-root")
check(c["securityContext"].get("readOnlyRootFilesystem") is True, "read-only root file system")
check(c["securityContext"].get("allowPrivilegeEscalation") is False, "no privilege escalation")
env = {e["name"]: e for e in c.get("env", [])}
for name in ("SCA_AMQP_URL", "SCA_HTTP_API_TOKENS"):
    check(name in env and "secretKeyRef" in env[name].get("valueFrom", {}), f"{name} from a Secret")
for e in c.get("env", []):
    check("value" not in e or not re.search(r"(?i)token|key|secret|password|url", e["name"]),
          f"{e['name']} must come from a Secret, not inline")
vols = {v["name"]: v for v in pod["volumes"]}
mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
for key_path in (cfg["apns"]["key_file"], cfg["fcm"]["service_account_file"]):
    d = str(pathlib.PurePosixPath(key_path).parent)
    check(d in mounts and "secret" in vols[mounts[d]], f"{key_path} mounted from a Secret")
labels = dep["spec"]["template"]["metadata"]["labels"]
for f in ("pdb.yaml", "servicemonitor.yaml", "service.yaml"):
    doc = load(f)
    sel = doc["spec"]["selector"]
    sel = sel.get("matchLabels", sel)
    target = labels if f != "servicemonitor.yaml" else load("service.yaml")["metadata"]["labels"]
    check(all(target.get(k) == v for k, v in sel.items()), f"{f} selects the pods/service")
ports = {p["name"] for p in c["ports"]}
svc_ports = {p["targetPort"] for p in load("service.yaml")["spec"]["ports"]}
check(svc_ports <= ports, "Service targets the container's named ports")
sm = load("servicemonitor.yaml")
check(sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in load("service.yaml")["spec"]["ports"]},
      "ServiceMonitor scrapes a Service port")

df = (ROOT / "deploy" / "container" / "Dockerfile").read_text()
check(len(re.findall(r"(?m)^FROM ", df)) >= 2, "Dockerfile is multi-stage")
user = re.findall(r"(?m)^USER\s+(\S+)", df)
check(bool(user) and not user[-1].startswith(("root", "0")), "Dockerfile runs as non-root")
check(re.search(r"(?m)^HEALTHCHECK .*", df) and "/healthz" in df, "Dockerfile HEALTHCHECK on /healthz")

comp = yaml.safe_load((ROOT / "deploy" / "compose" / "docker-compose.yml").read_text())
svc = comp["services"]
check(svc["sca-dispatch"].get("read_only") is True, "compose daemon has a read-only root fs")
plugins = (ROOT / "deploy" / "compose" / "rabbitmq" / "enabled_plugins").read_text()
for p in ("rabbitmq_management", "rabbitmq_prometheus"):
    check(p in plugins, f"compose RabbitMQ enables {p}")
check({"rabbitmq", "simulators", "sca-dispatch", "prometheus", "grafana"} <= set(svc), "compose services")

for f in failures:
    print(f"FAIL {f}")
print(f"deployment properties: {len(failures)} failed")
sys.exit(1 if failures else 0)
