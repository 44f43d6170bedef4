#!/usr/bin/env python3
"""Renders deploy/kubernetes (base, every overlay, and the KServe runtime) with `kubectl kustomize`, validates
every manifest against the Kubernetes OpenAPI schemas offline (kubernetes-validate bundles them; strict: unknown
fields are errors) and the custom resources (cert-manager Certificate, prometheus-operator PrometheusRule and
PodMonitor, KServe ClusterServingRuntime) against the schemas kept in Tests/Deploy/schemas, then asserts the
security properties the deployment promises: among them the audit log on a PersistentVolume with sync durability,
the private keys from Secrets with a tight mode, the sidecar's reports on a Unix socket in a shared emptyDir, the
rollback state off emptyDir, a shutdown budget inside the grace period, and alerts and dashboard panels that name
only metrics the server and the sidecar export (grepped from Sources/). `--selftest` breaks each property in a copy
of the rendered overlay and expects the check to catch it.
Prints "manifests OK" (and "selftest OK") and exits 0, or lists every problem and exits 1.
"""
import copy
import json
import os
import re
import shutil
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

try:
    # A real PromQL parser (PyPI promql-parser, Tests/Interop/requirements.txt); without it only brackets are checked.
    import promql_parser
except ImportError:
    promql_parser = None

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KUBE = os.path.join(ROOT, "deploy", "kubernetes")
SCHEMAS = os.path.join(ROOT, "Tests", "Deploy", "schemas")
# The oldest Kubernetes the manifests are meant for, and the newest schemas bundled.
VERSIONS = ["1.29", kubernetes_validate.latest_version()]
SERVER_UID, EGRESS_UID = 65532, 65533
INIT_CAPABILITIES = {"NET_ADMIN", "NET_RAW"}
# Custom resources and the schema file each is checked against (hand-written subsets of their CRDs).
CRD_SCHEMAS = {
    ("cert-manager.io/v1", "Certificate"): "certificate-cert-manager-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-coreos-v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-monitoring-coreos-v1.json",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "clusterservingruntime-serving-kserve-v1alpha1.json",
}
# swift-service-lifecycle's maximumCancellationDuration after the drain (ServerRuntime.run), and a margin for the
# final audit checkpoint (one fsync) and process exit.
CANCELLATION_SECONDS, CLOSE_MARGIN_SECONDS = 5, 2
# The signals the alerts must cover (issue 16), each as the metric (and label matcher) an alert must use.
REQUIRED_SIGNALS = {
    "token refusals": ("palisade_token_refusals_total", None),
    "policy denials": ("palisade_policy_denials_total", None),
    "extraction alarms": ("palisade_extraction_alarms_total", None),
    "quarantines": ("palisade_quarantines_total", None),
    "integrity failures": ("palisade_integrity_failures_total", None),
    "audit write failures": ("palisade_audit_failures_total", None),
    "egress blocks": ("palisade_egress_requests_total", 'result="blocked"'),
    "certificate expiry": ("palisade_server_certificate_expiry_seconds", None),
    "breaker open": ("palisade_circuit_breaker_state", None),
    "shedding": ("palisade_rejections_total", "queue_full"),
    "rollout rollbacks": ("palisade_rollout_events_total", 'event="rollback"'),
}
# Functions, keywords and aggregations that may appear in a PromQL expression beside metric names.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "rate", "irate", "increase", "offset", "and", "or", "unless",
    "on", "ignoring", "group_left", "group_right", "histogram_quantile", "max_over_time", "min_over_time", "changes",
    "absent", "bool", "le", "time", "vector", "scalar", "clamp_min", "clamp_max", "label_values",
}


def exported_metrics():
    """Metric names the server and the sidecar export, from their Swift sources, and the reason label values of
    palisade_rejections_total."""
    names, reasons = set(), set()
    for directory, _, files in os.walk(os.path.join(ROOT, "Sources")):
        for f in files:
            if not f.endswith(".swift"):
                continue
            text = open(os.path.join(directory, f), encoding="utf-8").read()
            for m in re.finditer(r'MetricNameDescriptor\(\s*namespace:\s*"([a-z_]+)",\s*metricName:\s*"([a-z_]+)"'
                                 r'(?:,\s*unitName:\s*"([a-z_]*)")?', text):
                names.add("_".join(x for x in m.groups() if x))
            # ServerMetrics' counter(name, ...) helper: namespace palisade, unit total.
            if 'metricName: name, unitName: "total"' in text:
                names.update(f"palisade_{m.group(1)}_total" for m in re.finditer(r'\bcounter\(\s*"([a-z_]+)"', text))
            # The sidecar's swift-metrics labels are the full names.
            names.update(re.findall(r'label:\s*"(palisade_[a-z_]+)"', text))
            for call in re.findall(r'recordRejection\(reason:([^)]*)\)', text):
                reasons.update(re.findall(r'"([a-z_]+)"', re.sub(r'contains\("[^"]*"', "", call)))
    return names, reasons


def metric_problems(where, expr, exported, reasons):
    """Names in a PromQL expression that are not exported metrics; rejection reasons that are never recorded."""
    p = []
    stripped = re.sub(r'\{[^}]*\}', "", re.sub(r'"[^"]*"', '""', expr))
    stripped = re.sub(r'\[[^\]]*\]', "", stripped)
    # Label lists of aggregations and vector matching, and durations (offset 5m).
    stripped = re.sub(r'\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)', "", stripped)
    stripped = re.sub(r'\b\d+(ms|s|m|h|d|w|y)\b', "", stripped)
    for word in re.findall(r'[a-zA-Z_:][a-zA-Z0-9_:]*', stripped):
        if not word.startswith("palisade_"):
            if word not in PROMQL_WORDS:
                p.append(f"{where}: '{word}' is neither a PromQL word nor a palisade_ metric")
            continue
        base = re.sub(r'_(bucket|sum|count)$', "", word)
        if word not in exported and base not in exported:
            p.append(f"{where}: metric {word} is not exported by the server or the sidecar (Sources/)")
    for selector in re.findall(r'palisade_rejections_total\{([^}]*)\}', expr):
        for m in re.finditer(r'reason=~?"([^"]*)"', selector):
            for value in m.group(1).split("|"):
                if value not in reasons:
                    p.append(f"{where}: palisade_rejections_total has no reason \"{value}\" (recordRejection in Sources/)")
    if promql_parser is not None:
        try:
            promql_parser.parse(expr)
        except Exception as e:  # the binding raises a plain ValueError-like error with the parser's message
            p.append(f"{where}: not PromQL ({e}): {expr!r}")
    elif expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}") or expr.count("[") != expr.count("]"):
        p.append(f"{where}: unbalanced brackets in {expr!r}")
    return p


def doc_anchors(path):
    """GitHub's anchors for the headings of a Markdown file."""
    if not os.path.exists(path):
        return set()
    anchors = set()
    for line in open(path, encoding="utf-8"):
        m = re.match(r'#+\s+(.*)', line)
        if m:
            anchors.add(re.sub(r'[^a-z0-9 _-]', "", m.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def kubectl():
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not found:
        sys.exit("kubectl not found: `make deps` installs it (Debian package kubernetes-client)")
    return found


def render(directory):
    r = subprocess.run([kubectl(), "kustomize", directory], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed: {r.stderr.strip()}")
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def validate_schema(doc):
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    group = doc.get("apiVersion", "").split("/")[0]
    if "." in group and not group.endswith(".k8s.io"):
        name = CRD_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
        if name is None:
            return [f"{where}: no schema for {doc.get('apiVersion')} {doc.get('kind')} in {SCHEMAS}"]
        try:
            jsonschema.validate(doc, json.load(open(os.path.join(SCHEMAS, name))))
        except jsonschema.ValidationError as e:
            return [f"{where}: {e.message} at {'/'.join(map(str, e.absolute_path))}"]
        if doc.get("kind") == "ClusterServingRuntime":
            # Its containers and volumes are core/v1 types: validate them as a Pod's.
            spec = doc["spec"]
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "servingruntime"},
                   "spec": {"containers": spec["containers"], "volumes": spec.get("volumes", [])}}
            return [x.replace("Pod/servingruntime", f"{where} (as a Pod)") for x in validate_schema(pod)]
        return []
    problems = []
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{where} (Kubernetes {version}): {e.message} at {'/'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no Kubernetes {version} schema for {doc.get('apiVersion')} {doc.get('kind')}")
    return problems


def one(docs, kind, problems):
    found = [d for d in docs if d.get("kind") == kind]
    if len(found) != 1:
        problems.append(f"expected exactly one {kind}, found {len(found)}")
        return None
    return found[0]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_properties(docs, overlay=True):
    """Every security property the deployment promises; returns the problems found."""
    p = []
    dep = one(docs, "StatefulSet", p)
    if dep is None:
        return p
    if [d for d in docs if d.get("kind") == "Deployment"]:
        p.append("the server runs as a StatefulSet (a volume of its own per pod), not a Deployment")
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    psc = pod.get("securityContext", {})
    names = {c["name"]: c for c in running_containers(pod)}

    # Pod level: no API token, no host namespaces, non-root, seccomp.
    if pod.get("automountServiceAccountToken") is not False:
        p.append("pod: automountServiceAccountToken must be false")
    sa = [d for d in docs if d.get("kind") == "ServiceAccount" and d["metadata"]["name"] == pod.get("serviceAccountName")]
    if not sa or sa[0].get("automountServiceAccountToken") is not False:
        p.append("the pod's ServiceAccount must exist and set automountServiceAccountToken: false")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            p.append(f"pod: {key} must not be set")
    if psc.get("runAsNonRoot") is not True:
        p.append("pod: securityContext.runAsNonRoot must be true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        p.append("pod: seccompProfile must be RuntimeDefault")

    # Containers: the server and the sidecar from one image, non-root, read-only, no capabilities.
    if set(names) != {"server", "egress"}:
        p.append(f"containers must be exactly server and egress, are {sorted(names)}")
    # The sidecar outlives the server: a native sidecar gets SIGTERM only after the server has exited, so the
    # checkpoint the server writes at shutdown still leaves through it (a regular container stops with the server).
    init_names = [c["name"] for c in pod.get("initContainers", [])]
    if "egress" in names and names["egress"].get("restartPolicy") != "Always":
        p.append("egress must be a native sidecar (an init container with restartPolicy: Always): as a regular "
                 "container it stops with the server and the final audit checkpoint cannot leave")
    elif "egress" in init_names and "netinit" in init_names and init_names.index("egress") < init_names.index("netinit"):
        p.append("the egress sidecar must start after netinit (the pod's iptables rules first)")
    for c in running_containers(pod):
        sc = c.get("securityContext", {})
        n = f"container {c['name']}"
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            p.append(f"{n}: runAsNonRoot must be true")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        if not isinstance(uid, int) or uid == 0:
            p.append(f"{n}: runAsUser must be a non-zero UID")
        if sc.get("readOnlyRootFilesystem") is not True:
            p.append(f"{n}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            p.append(f"{n}: allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            p.append(f"{n}: must not be privileged")
        caps = sc.get("capabilities", {})
        if caps.get("drop") != ["ALL"]:
            p.append(f"{n}: capabilities must drop ALL")
        if caps.get("add"):
            p.append(f"{n}: must add no capabilities, adds {caps['add']}")
        if sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") != "RuntimeDefault":
            p.append(f"{n}: seccompProfile must be RuntimeDefault")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                p.append(f"{n}: hostPort must not be used")
    server, egress = names.get("server"), names.get("egress")
    if server and egress:
        if server["image"] != egress["image"]:
            p.append("server and egress must run the same image (one image, two entry points)")
        if server.get("args", [None])[0] != "serve" or egress.get("args", [None])[0] != "egress":
            p.append("server must run `serve`, egress `egress`")
        suid = server.get("securityContext", {}).get("runAsUser", psc.get("runAsUser"))
        euid = egress.get("securityContext", {}).get("runAsUser", psc.get("runAsUser"))
        if suid != SERVER_UID or euid != EGRESS_UID:
            p.append(f"server must run as {SERVER_UID} and egress as {EGRESS_UID} (the iptables rules tell them apart)")
        # Probes: never the mTLS port; the admin port through the binary (or httpGet on the admin port).
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            spec = server.get(probe)
            if not spec:
                p.append(f"server: {probe} is missing")
                continue
            command = spec.get("exec", {}).get("command", [])
            http = spec.get("httpGet", {})
            if command[:4] == ["/usr/local/bin/palisade", "call", "health", "--quiet"] or command[:3] == [
                "/usr/local/bin/palisade", "call", "health"]:
                continue
            if http and http.get("port") in (9464, "admin"):
                continue
            p.append(f"server: {probe} must probe the admin port (palisade call health or httpGet :9464)")

    # The init container: the one place with a capability, and only the network ones.
    inits = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") != "Always"]
    if len(inits) != 1:
        p.append(f"expected one init container (netinit), found {len(inits)}")
    for c in inits:
        sc = c.get("securityContext", {})
        caps = sc.get("capabilities", {})
        n = f"init container {c['name']}"
        if caps.get("drop") != ["ALL"]:
            p.append(f"{n}: capabilities must drop ALL")
        added = set(caps.get("add", []))
        if "NET_ADMIN" not in added or not added <= INIT_CAPABILITIES:
            p.append(f"{n}: must add NET_ADMIN (and at most NET_RAW), adds {sorted(added)}")
        if sc.get("allowPrivilegeEscalation") is not False or sc.get("privileged"):
            p.append(f"{n}: no privilege escalation, not privileged")
        if sc.get("readOnlyRootFilesystem") is not True:
            p.append(f"{n}: readOnlyRootFilesystem must be true")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        if env.get("SERVER_UID") != str(SERVER_UID):
            p.append(f"{n}: SERVER_UID must be {SERVER_UID}")

    # Volumes: bundles, config, policy, trust and credentials read-only; only emptyDirs and the pod's own
    # PersistentVolumes (volumeClaimTemplates) writable.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {t["metadata"]["name"]: t for t in dep["spec"].get("volumeClaimTemplates", [])}
    for name in set(volumes) & set(claims):
        p.append(f"volume {name} is both a pod volume and a volumeClaimTemplate")
    for c in running_containers(pod):
        for m in c.get("volumeMounts", []):
            v = volumes.get(m["name"])
            if v is None and m["name"] not in claims:
                p.append(f"container {c['name']}: mount {m['name']} has no volume")
            elif v is not None and "emptyDir" not in v and m.get("readOnly") is not True:
                p.append(f"container {c['name']}: {m['name']} must be mounted read-only")
            if m.get("subPath"):
                p.append(f"container {c['name']}: {m['name']} uses subPath (kubelet never updates it: no rotation)")
    models = volumes.get("models", {})
    if models.get("persistentVolumeClaim", {}).get("readOnly") is not True and "image" not in models:
        p.append("the models volume must be read-only")
    certs = [d for d in docs if d.get("kind") == "Certificate"]
    tls = volumes.get("server-tls", {}).get("secret", {})
    if not certs or not tls or tls.get("secretName") not in {c["spec"]["secretName"] for c in certs}:
        p.append("the server-tls volume must be the Secret a cert-manager Certificate issues")
    for c in certs:
        if c["spec"].get("privateKey", {}).get("rotationPolicy") != "Always":
            p.append(f"Certificate {c['metadata']['name']}: privateKey.rotationPolicy must be Always (new key on renewal)")
    for name in ("config", "policy"):
        if "configMap" not in volumes.get(name, {}):
            p.append(f"the {name} volume must be a ConfigMap")

    # The server config the ConfigMap carries points at those mounts.
    config = None
    if server:
        mounts = {m["name"]: m["mountPath"] for m in server.get("volumeMounts", [])}
        cm_name = volumes.get("config", {}).get("configMap", {}).get("name")
        cms = [d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == cm_name]
        if not cms:
            p.append(f"the config ConfigMap {cm_name} is not among the manifests")
        else:
            config = yaml.safe_load(next(iter(cms[0]["data"].values())))
            t = config["server"]["tls"]
            for key in ("certificate_chain", "private_key", "client_ca_bundle"):
                if not t[key].startswith(mounts.get("server-tls", "?") + "/"):
                    p.append(f"config server.tls.{key} must be in the server-tls mount")
            if not config["policy"]["file"].startswith(mounts.get("policy", "?") + "/"):
                p.append("config policy.file must be in the policy mount")
            if config.get("models", {}).get("directories") != [mounts.get("models")]:
                p.append("config models.directories must be the read-only models mount")
    if server and egress and config is not None:
        p += check_every_control(dep, pod, psc, server, egress, volumes, claims, config, docs)

    # NetworkPolicy: ingress only from labelled callers (and Prometheus on the admin port); egress DNS + CIDRs.
    np = one(docs, "NetworkPolicy", p)
    if np:
        spec = np["spec"]
        if not selects(spec.get("podSelector", {}).get("matchLabels", {}), labels):
            p.append("NetworkPolicy must select the Palisade pods")
        if sorted(spec.get("policyTypes", [])) != ["Egress", "Ingress"]:
            p.append("NetworkPolicy must restrict both Ingress and Egress")
        for rule in spec.get("ingress", []):
            sources = rule.get("from", [])
            if not sources or not rule.get("ports"):
                p.append("NetworkPolicy ingress rules must name their sources and ports (none is 'everyone')")
            for s in sources:
                if "ipBlock" in s or not s.get("podSelector", {}).get("matchLabels"):
                    p.append("NetworkPolicy ingress sources must be labelled pods")
            ports = {x.get("port") for x in rule.get("ports", [])}
            if 8443 in ports:
                caller = any(s.get("podSelector", {}).get("matchLabels", {}).get("palisade.dev/caller") == "true"
                             for s in sources)
                if not caller:
                    p.append("NetworkPolicy: the gRPC port only from pods labelled palisade.dev/caller=true")
        if not spec.get("egress"):
            p.append("NetworkPolicy must allow DNS egress (and nothing unlisted)")
        for rule in spec.get("egress", []):
            ports = {x.get("port") for x in rule.get("ports", [])}
            targets = rule.get("to", [])
            if not targets or not ports:
                p.append("NetworkPolicy egress rules must name destinations and ports")
            if ports == {53}:
                continue
            for t in targets:
                cidr = t.get("ipBlock", {}).get("cidr")
                if not cidr:
                    p.append("NetworkPolicy egress beyond DNS only to allowlisted CIDRs (ipBlock)")
                elif cidr.endswith("/0") or int(cidr.split("/")[1]) < 8:
                    p.append(f"NetworkPolicy egress CIDR {cidr} is too broad")

    pdb = one(docs, "PodDisruptionBudget", p)
    if pdb and (not selects(pdb["spec"].get("selector", {}).get("matchLabels", {}), labels)
                or not (pdb["spec"].get("minAvailable", 0) or pdb["spec"].get("maxUnavailable"))):
        p.append("PodDisruptionBudget must select the pods and keep at least one")
    hpa = one(docs, "HorizontalPodAutoscaler", p)
    if hpa:
        ref = hpa["spec"]["scaleTargetRef"]
        if ref.get("kind") != "StatefulSet" or ref.get("name") != dep["metadata"]["name"]:
            p.append("HorizontalPodAutoscaler must scale the StatefulSet")
        if hpa["spec"].get("minReplicas", 1) < 2:
            p.append("HorizontalPodAutoscaler minReplicas must be at least 2 (the PDB needs a spare)")
    services = [d for d in docs if d.get("kind") == "Service"]
    if dep["spec"].get("serviceName") not in {s["metadata"]["name"] for s in services}:
        p.append("the StatefulSet's serviceName must be one of the Services")
    for svc in services:
        n = svc["metadata"]["name"]
        if not selects(svc["spec"].get("selector", {}), labels):
            p.append(f"Service {n} must select the Palisade pods")
        if {x["port"] for x in svc["spec"].get("ports", [])} != {8443}:
            p.append(f"Service {n} must expose only the mTLS port")
        if svc["spec"].get("type", "ClusterIP") != "ClusterIP":
            p.append(f"Service {n} must be ClusterIP (no NodePort or LoadBalancer in the base)")
    if overlay:
        p += check_monitoring(docs, pod)
    if overlay:
        for d in docs:
            if d["kind"] != "Namespace" and not d["metadata"].get("namespace"):
                p.append(f"{d['kind']}/{d['metadata']['name']}: the overlay must set a namespace")
    return p


def mount_of(container, path):
    """The volumeMount of `container` whose mountPath holds `path` (the longest), or None."""
    best = None
    for m in container.get("volumeMounts", []):
        root = m["mountPath"].rstrip("/") + "/"
        if path.startswith(root) and (best is None or len(m["mountPath"]) > len(best["mountPath"])):
            best = m
    return best


def secret_mode_problems(what, volume):
    """A Secret volume whose files only the owner (root) and the fsGroup may read, and nobody write."""
    secret = volume.get("secret")
    if secret is None:
        return [f"{what} must come from a Secret volume"]
    p = []
    modes = [secret.get("defaultMode", 0o644)] + [i["mode"] for i in secret.get("items", []) if "mode" in i]
    for mode in modes:
        if mode & 0o337 or not mode & 0o040:
            p.append(f"{what}: Secret mode {oct(mode)} must be 0440 or tighter for others (group read, no write)")
    return p


def check_every_control(dep, pod, psc, server, egress, volumes, claims, config, docs):
    """The controls issue 16 turns on in the pods: audit on a PersistentVolume with sync durability, private keys
    from Secrets, the sidecar's reports on a Unix socket in a shared emptyDir, checkpoints shipped through the
    sidecar, the rollback state off emptyDir, and a shutdown budget inside the grace period."""
    p = []
    fs_group = psc.get("fsGroup")
    if fs_group != psc.get("runAsGroup", SERVER_UID) or fs_group != SERVER_UID:
        p.append(f"pod: fsGroup must be the server's group {SERVER_UID} (Secrets mounted 0440 root:fsGroup)")

    def durable(what, path):
        m = mount_of(server, path or "")
        if m is None:
            p.append(f"{what} ({path}) is in no mount of the server")
            return None
        if m["name"] in volumes:
            kind = next((k for k in volumes[m["name"]] if k != "name"), "?")
            p.append(f"{what} is on the {kind} volume {m['name']}: it must be the pod's own PersistentVolume "
                     f"(a volumeClaimTemplate)")
            return None
        claim = claims.get(m["name"])
        if claim is None:
            p.append(f"{what}: mount {m['name']} is no volumeClaimTemplate")
            return None
        spec = claim["spec"]
        if spec.get("accessModes") != ["ReadWriteOnce"] and spec.get("accessModes") != ["ReadWriteOncePod"]:
            p.append(f"{what}: claim {m['name']} must be ReadWriteOnce(Pod): one writer")
        if not spec.get("resources", {}).get("requests", {}).get("storage"):
            p.append(f"{what}: claim {m['name']} must request storage")
        if m.get("readOnly"):
            p.append(f"{what}: mount {m['name']} must be writable")
        return m

    audit = config.get("audit")
    if not isinstance(audit, dict):
        p.append("config: the audit section is missing (no audit log)")
        audit = {}
    else:
        durable("the audit log (audit.directory)", audit.get("directory"))
        if audit.get("durability", "sync") != "sync":
            p.append("config audit.durability must be sync (a response only after its record is fsynced)")
    durable("the rollback state (models.state_file)", config.get("models", {}).get("state_file"))

    # The private keys: from Secrets, 0440 for the fsGroup, mounted only in the server.
    secret_volumes = {n for n, v in volumes.items() if "secret" in v or "projected" in v}
    for what, path in (("attestation.key", config.get("attestation", {}).get("key")), ("audit.key", audit.get("key"))):
        if not path:
            p.append(f"config {what} is not set")
            continue
        m = mount_of(server, path)
        if m is None or m["name"] not in volumes:
            p.append(f"config {what} ({path}) is in no volume of the server")
            continue
        p += secret_mode_problems(f"config {what}", volumes[m["name"]])
    for m in egress.get("volumeMounts", []):
        if m["name"] in secret_volumes:
            p.append(f"container egress: mounts the Secret volume {m['name']} (it shares the server's fsGroup)")

    # The sidecar's reports: a Unix socket in an emptyDir both containers mount, only the sidecar's UID heard.
    out = config.get("egress") or {}
    socket = out.get("report_socket")
    egress_config = {}
    ecm = volumes.get("egress-config", {}).get("configMap", {}).get("name")
    ecms = [d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == ecm]
    if ecms:
        egress_config = yaml.safe_load(next(iter(ecms[0]["data"].values())))
    else:
        p.append("the egress sidecar's config ConfigMap is not among the manifests")
    if not socket:
        p.append("config egress.report_socket is not set: the sidecar's block reports are not audited")
    else:
        sm, em = mount_of(server, socket), mount_of(egress, egress_config.get("report_socket") or "")
        if sm is None or "emptyDir" not in volumes.get(sm["name"], {}):
            p.append("config egress.report_socket must be in an emptyDir mounted by the server")
        elif em is None or em["name"] != sm["name"]:
            p.append("the sidecar's report_socket must be in the same emptyDir as the server's egress.report_socket")
        elif socket[len(sm["mountPath"]):] != egress_config["report_socket"][len(em["mountPath"]):]:
            p.append("the sidecar's report_socket and the server's egress.report_socket name different files")
        if out.get("report_sender_uids") != [EGRESS_UID]:
            p.append(f"config egress.report_sender_uids must be [{EGRESS_UID}] (the sidecar's UID only)")
        if int(str(out.get("report_socket_mode", "0660")), 8) & 0o007:
            p.append("config egress.report_socket_mode must give others nothing")
    # Checkpoints through the sidecar to an allowlisted collector.
    listen = egress_config.get("listen", {})
    if out.get("proxy") != f"{listen.get('host', '127.0.0.1')}:{listen.get('port', 3128)}" or not str(
            out.get("proxy", "")).startswith("127.0.0.1:"):
        p.append("config egress.proxy must be the sidecar's loopback listener")
    url = out.get("checkpoint_url") or ""
    m = re.match(r'https://([^/:]+)(?::(\d+))?(/.*)', url)
    if not m:
        p.append("config egress.checkpoint_url must be an https URL (checkpoints shipped off the pod)")
    else:
        host, port, path = m.group(1), int(m.group(2) or 443), m.group(3)
        if not any(d.get("host") == host and d.get("port", 443) == port and d.get("scheme", "https") == "https"
                   and "POST" in d.get("methods", ["POST"]) and any(path.startswith(x) for x in d.get("path_prefixes", ["/"]))
                   for d in egress_config.get("destinations", [])):
            p.append(f"the sidecar's allowlist must let POST {url} out (egress.checkpoint_url)")

    # Shutdown: drain, cancellation and the final checkpoint inside the grace period.
    grace = pod.get("terminationGracePeriodSeconds", 30)
    drain = config.get("server", {}).get("shutdown_grace_seconds", 20)
    if drain + CANCELLATION_SECONDS + CLOSE_MARGIN_SECONDS > grace:
        p.append(f"terminationGracePeriodSeconds {grace} < server.shutdown_grace_seconds {drain} + "
                 f"{CANCELLATION_SECONDS} s cancellation + {CLOSE_MARGIN_SECONDS} s for the final checkpoint")
    return p


def running_containers(pod):
    """The containers that run for the pod's life: the regular ones and the native sidecars (init containers with
    restartPolicy: Always)."""
    return pod.get("containers", []) + [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]


def check_monitoring(docs, pod):
    """The PodMonitor scrapes both admin ports; the alerts cover every required signal and name only exported
    metrics; the dashboard shows the same metrics."""
    p = []
    exported, reasons = exported_metrics()
    ports = {port["name"]: port["containerPort"] for c in running_containers(pod) for port in c.get("ports", [])}
    pm = one(docs, "PodMonitor", p)
    if pm:
        scraped = {e.get("port") for e in pm["spec"].get("podMetricsEndpoints", [])}
        if not {"admin", "egress-admin"} <= scraped or not scraped <= set(ports):
            p.append(f"PodMonitor must scrape the ports admin and egress-admin of the pod, scrapes {sorted(map(str, scraped))}")
    rule = one(docs, "PrometheusRule", p)
    alert_exprs = []
    if rule:
        anchors = doc_anchors(os.path.join(ROOT, "docs", "operations.md"))
        for group in rule["spec"].get("groups", []):
            for r in group.get("rules", []):
                name = r.get("alert") or r.get("record")
                where = f"PrometheusRule {name}"
                expr = str(r.get("expr", ""))
                alert_exprs.append(expr)
                p += metric_problems(where, expr, exported, reasons)
                if r.get("alert"):
                    if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                        p.append(f"{where}: needs a severity label (critical, warning or info)")
                    notes = r.get("annotations", {})
                    if not notes.get("summary") or not notes.get("description"):
                        p.append(f"{where}: needs summary and description annotations")
                    runbook = notes.get("runbook", "")
                    if not runbook.startswith("docs/operations.md#") or runbook.split("#", 1)[1] not in anchors:
                        p.append(f"{where}: runbook must name its section of docs/operations.md (### {name})")
        for signal, (metric, matcher) in REQUIRED_SIGNALS.items():
            if not any(metric in e and (matcher is None or matcher in e) for e in alert_exprs):
                p.append(f"PrometheusRule: no alert on {signal} ({metric}{' ' + matcher if matcher else ''})")
    dashboards = [d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard")]
    if len(dashboards) != 1:
        p.append(f"expected one Grafana dashboard ConfigMap (label grafana_dashboard), found {len(dashboards)}")
    else:
        try:
            dash = json.loads(next(iter(dashboards[0]["data"].values())))
        except ValueError as e:
            return p + [f"the Grafana dashboard is not JSON: {e}"]
        exprs = [t.get("expr", "") for panel in dash.get("panels", []) for t in panel.get("targets", [])]
        if not exprs:
            p.append("the Grafana dashboard has no queries")
        ids = [panel.get("id") for panel in dash.get("panels", [])]
        if len(ids) != len(set(ids)):
            p.append("the Grafana dashboard's panel ids must be unique")
        for e in exprs:
            # Grafana's variables, as Prometheus would see them after interpolation.
            e = e.replace("$__rate_interval", "5m").replace("$namespace", "palisade").replace("$pod", ".*")
            p += metric_problems("Grafana dashboard", e, exported, reasons)
        shown = " ".join(exprs)
        for e in alert_exprs:
            for metric in set(re.findall(r'palisade_[a-z_]+', e)):
                if metric not in shown:
                    p.append(f"the Grafana dashboard shows no panel of {metric}, which an alert uses")
    return p


def check_kserve(docs):
    """The KServe ClusterServingRuntime: gRPC (grpc-v2) only, hardened container, bundles from the model storage
    mount, the TLS Secret 0440."""
    p = []
    runtime = one(docs, "ClusterServingRuntime", p)
    if runtime is None:
        return p
    spec = runtime["spec"]
    if runtime["metadata"].get("namespace"):
        p.append("ClusterServingRuntime is cluster-scoped: no namespace")
    if spec.get("protocolVersions") != ["grpc-v2"]:
        p.append("ClusterServingRuntime protocolVersions must be [grpc-v2] (Palisade serves the OIP over gRPC only)")
    containers = {c["name"]: c for c in spec.get("containers", [])}
    server = containers.get("kserve-container")
    if server is None:
        return p + ["ClusterServingRuntime: the runtime container must be named kserve-container (KServe mounts "
                    "/mnt/models into it)"]
    sc = server.get("securityContext", {})
    if (sc.get("runAsNonRoot") is not True or sc.get("runAsUser") != SERVER_UID or sc.get("readOnlyRootFilesystem") is not True
            or sc.get("allowPrivilegeEscalation") is not False or sc.get("capabilities", {}).get("drop") != ["ALL"]
            or sc.get("capabilities", {}).get("add") or sc.get("seccompProfile", {}).get("type") != "RuntimeDefault"):
        p.append("kserve-container: non-root (65532), read-only root, no escalation, drop ALL, RuntimeDefault seccomp")
    if server.get("args", [None])[0] != "serve" or [x.get("containerPort") for x in server.get("ports", [])] != [8443]:
        p.append("kserve-container: must run `serve` and expose only the mTLS port 8443")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["name"]: m["mountPath"] for m in server.get("volumeMounts", [])}
    cm = volumes.get("palisade-config", {}).get("configMap", {}).get("name")
    cms = [d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == cm]
    if not cms:
        return p + [f"the KServe config ConfigMap {cm} is not among the manifests"]
    config = yaml.safe_load(next(iter(cms[0]["data"].values())))
    if config.get("models", {}).get("directories") != ["/mnt/models"]:
        p.append("KServe config models.directories must be [/mnt/models] (the storage initializer's download)")
    if not config.get("models", {}).get("trust"):
        p.append("KServe config models.trust must name the bundle publishers")
    tls = config["server"]["tls"]
    tls_mount = mount_of(server, tls["private_key"])
    if tls_mount is None or tls_mount["name"] not in volumes:
        p.append("KServe config server.tls.private_key must be in a mounted volume")
    else:
        p += secret_mode_problems("KServe server.tls.private_key", volumes[tls_mount["name"]])
    for m in server.get("volumeMounts", []):
        v = volumes.get(m["name"], {})
        if "emptyDir" not in v and m.get("readOnly") is not True:
            p.append(f"kserve-container: {m['name']} must be mounted read-only")
    if not config["policy"]["file"].startswith(mounts.get("palisade-policy", "?") + "/"):
        p.append("KServe config policy.file must be in the policy mount")
    return p


def selftest(docs):
    """Each broken property must be caught."""
    def sts(d):
        return next(x for x in d if x["kind"] == "StatefulSet")

    def pod(d):
        return sts(d)["spec"]["template"]["spec"]

    def volume(d, name):
        return next(v for v in pod(d)["volumes"] if v["name"] == name)

    def cm(d, prefix):
        return next(x for x in d if x["kind"] == "ConfigMap" and x["metadata"]["name"].startswith(prefix))

    def edit_config(d, prefix, change):
        data = cm(d, prefix)["data"]
        key = next(iter(data))
        config = yaml.safe_load(data[key])
        change(config)
        data[key] = yaml.safe_dump(config)

    def rule(d, alert):
        return next(r for x in d if x["kind"] == "PrometheusRule" for g in x["spec"]["groups"] for r in g["rules"]
                    if r.get("alert") == alert)

    def dashboard(d, change):
        data = next(x for x in d if x["kind"] == "ConfigMap" and x["metadata"].get("labels", {}).get("grafana_dashboard"))["data"]
        key = next(iter(data))
        dash = json.loads(data[key])
        change(dash)
        data[key] = json.dumps(dash)

    def state_on_emptydir(d):
        sts(d)["spec"]["volumeClaimTemplates"] = [t for t in sts(d)["spec"]["volumeClaimTemplates"]
                                                   if t["metadata"]["name"] != "state"]
        pod(d)["volumes"].append({"name": "state", "emptyDir": {}})

    def unaudited(d):
        sts(d)["spec"]["volumeClaimTemplates"] = [t for t in sts(d)["spec"]["volumeClaimTemplates"]
                                                   if t["metadata"]["name"] != "audit"]
        pod(d)["volumes"].append({"name": "audit", "emptyDir": {}})

    def container(d, name):
        return next(c for c in running_containers(pod(d)) if c["name"] == name)

    def sidecar_as_container(d):
        egress = container(d, "egress")
        pod(d)["initContainers"].remove(egress)
        egress.pop("restartPolicy")
        pod(d)["containers"].append(egress)

    def sidecar_before_netinit(d):
        inits = pod(d)["initContainers"]
        inits.insert(0, inits.pop(inits.index(container(d, "egress"))))

    def np(d):
        return next(x for x in d if x["kind"] == "NetworkPolicy")["spec"]

    breaks = {
        "token automounted": lambda d: pod(d).__setitem__("automountServiceAccountToken", True),
        "host network": lambda d: pod(d).__setitem__("hostNetwork", True),
        "writable root": lambda d: container(d, "server")["securityContext"].__setitem__("readOnlyRootFilesystem", False),
        "a capability added": lambda d: container(d, "egress")["securityContext"]["capabilities"].__setitem__(
            "add", ["NET_BIND_SERVICE"]),
        "root server": lambda d: container(d, "server")["securityContext"].__setitem__("runAsUser", 0),
        "same UID for both": lambda d: container(d, "egress")["securityContext"].__setitem__("runAsUser", SERVER_UID),
        "init gets SYS_ADMIN": lambda d: pod(d)["initContainers"][0]["securityContext"]["capabilities"]["add"].append(
            "SYS_ADMIN"),
        "no seccomp": lambda d: (pod(d)["securityContext"].pop("seccompProfile"),
                                 container(d, "server")["securityContext"].pop("seccompProfile")),
        "probe on the mTLS port": lambda d: container(d, "server").__setitem__(
            "readinessProbe", {"tcpSocket": {"port": 8443}}),
        "models writable": lambda d: next(m for m in container(d, "server")["volumeMounts"]
                                         if m["name"] == "models").__setitem__("readOnly", False),
        "ingress from anyone": lambda d: np(d)["ingress"].append({"ports": [{"port": 8443}]}),
        "egress anywhere": lambda d: np(d)["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                                                              "ports": [{"port": 443}]}),
        "no egress policy": lambda d: np(d).__setitem__("policyTypes", ["Ingress"]),
        "key reuse on renewal": lambda d: next(x for x in d if x["kind"] == "Certificate")["spec"]["privateKey"].pop(
            "rotationPolicy"),
        "a Deployment again": lambda d: sts(d).__setitem__("kind", "Deployment"),
        "rollback state on an emptyDir": state_on_emptydir,
        "audit log on an emptyDir": unaudited,
        "no audit section": lambda d: edit_config(d, "palisade-config", lambda c: c.pop("audit")),
        "batched audit": lambda d: edit_config(d, "palisade-config", lambda c: c["audit"].__setitem__("durability", "batched")),
        "attestation key world-readable": lambda d: volume(d, "attestation-key")["secret"].__setitem__("defaultMode", 0o444),
        "audit key group-writable": lambda d: volume(d, "audit-key")["secret"]["items"][0].__setitem__("mode", 0o460),
        "attestation key from a ConfigMap": lambda d: volume(d, "attestation-key").update(
            {"configMap": {"name": "palisade-trust"}}) or volume(d, "attestation-key").pop("secret"),
        "sidecar mounts a key": lambda d: container(d, "egress")["volumeMounts"].append(
            {"name": "audit-key", "mountPath": "/keys", "readOnly": True}),
        "no fsGroup": lambda d: pod(d)["securityContext"].pop("fsGroup"),
        "reports not received": lambda d: edit_config(d, "palisade-config", lambda c: c["egress"].pop("report_socket")),
        "reports from any UID": lambda d: edit_config(d, "palisade-config", lambda c: c["egress"].pop("report_sender_uids")),
        "report socket not shared": lambda d: container(d, "egress").__setitem__(
            "volumeMounts", [m for m in container(d, "egress")["volumeMounts"] if m["name"] != "egress-reports"]),
        "report socket on a PersistentVolume": lambda d: edit_config(
            d, "palisade-config", lambda c: c["egress"].__setitem__("report_socket", "/var/lib/palisade/state/r.sock")),
        "checkpoints not shipped": lambda d: edit_config(d, "palisade-config", lambda c: c["egress"].pop("checkpoint_url")),
        "collector not allowlisted": lambda d: edit_config(d, "palisade-egress", lambda c: c.__setitem__(
            "destinations", [x for x in c["destinations"] if x["name"] != "audit-collector"])),
        "grace period too short": lambda d: pod(d).__setitem__("terminationGracePeriodSeconds", 20),
        "alert on a metric nobody exports": lambda d: rule(d, "PalisadeShedding").__setitem__(
            "expr", "rate(palisade_requests_shed_total[5m]) > 0"),
        "alert on a rejection reason never recorded": lambda d: rule(d, "PalisadeShedding").__setitem__(
            "expr", 'rate(palisade_rejections_total{reason="overloaded"}[5m]) > 0'),
        "no alert on integrity failures": lambda d: next(g for x in d if x["kind"] == "PrometheusRule"
                                                         for g in x["spec"]["groups"]).__setitem__(
            "rules", [r for r in next(g for x in d if x["kind"] == "PrometheusRule" for g in x["spec"]["groups"])["rules"]
                      if r.get("alert") != "PalisadeIntegrityFailure"]),
        "alert without a runbook": lambda d: rule(d, "PalisadeEgressBlocked")["annotations"].pop("runbook"),
        "alert that is not PromQL": lambda d: rule(d, "PalisadeShedding").__setitem__(
            "expr", "sum(rate(palisade_rejections_total[5m]) > 0"),
        "dashboard on a metric nobody exports": lambda d: dashboard(d, lambda j: j["panels"][1]["targets"][0].__setitem__(
            "expr", "sum(rate(palisade_grpc_calls_total[5m]))")),
        "sidecar stops with the server": sidecar_as_container,
        "sidecar before the iptables rules": sidecar_before_netinit,
        "sidecar metrics not scraped": lambda d: next(x for x in d if x["kind"] == "PodMonitor")["spec"].__setitem__(
            "podMetricsEndpoints", [{"port": "admin"}]),
    }
    failures = []
    for name, breaker in breaks.items():
        broken = copy.deepcopy(docs)
        breaker(broken)
        if not check_properties(broken):
            failures.append(f"selftest: '{name}' was not caught")
    # The schemas catch what the property checks do not look at.
    schema_breaks = {
        "unknown Deployment field": lambda d: pod(d).__setitem__("hostNetwrk", True),
        "wrong type": lambda d: sts(d)["spec"].__setitem__("replicas", "two"),
        "unknown Certificate field": lambda d: next(x for x in d if x["kind"] == "Certificate")["spec"].__setitem__(
            "dnsName", ["x"]),
        "unknown PrometheusRule field": lambda d: rule(d, "PalisadeShedding").__setitem__("severity", "warning"),
        "bad alert duration": lambda d: rule(d, "PalisadeShedding").__setitem__("for", "5 minutes"),
        "unknown PodMonitor field": lambda d: next(x for x in d if x["kind"] == "PodMonitor")["spec"].__setitem__(
            "endpoints", []),
    }
    for name, breaker in schema_breaks.items():
        broken = copy.deepcopy(docs)
        breaker(broken)
        if not any(validate_schema(d) for d in broken):
            failures.append(f"selftest: schema break '{name}' was not caught")
    return failures


def selftest_kserve(docs):
    """Each broken property of the KServe runtime must be caught, by the properties or the schemas."""
    def runtime(d):
        return next(x for x in d if x["kind"] == "ClusterServingRuntime")["spec"]

    breaks = {
        "REST protocol listed": lambda d: runtime(d)["protocolVersions"].append("v2"),
        "root container": lambda d: runtime(d)["containers"][0]["securityContext"].__setitem__("runAsUser", 0),
        "TLS key world-readable": lambda d: next(v for v in runtime(d)["volumes"] if v["name"] == "palisade-server-tls")[
            "secret"].__setitem__("defaultMode", 0o444),
        "renamed container": lambda d: runtime(d)["containers"][0].__setitem__("name", "palisade"),
    }
    schema_breaks = {
        "unknown runtime field": lambda d: runtime(d).__setitem__("protocols", ["grpc-v2"]),
        "unknown protocol": lambda d: runtime(d).__setitem__("protocolVersions", ["grpc-v3"]),
        "unknown container field": lambda d: runtime(d)["containers"][0].__setitem__("argz", []),
    }
    failures = []
    for name, breaker in breaks.items():
        broken = copy.deepcopy(docs)
        breaker(broken)
        if not check_kserve(broken):
            failures.append(f"selftest: KServe '{name}' was not caught")
    for name, breaker in schema_breaks.items():
        broken = copy.deepcopy(docs)
        breaker(broken)
        if not any(validate_schema(d) for d in broken):
            failures.append(f"selftest: KServe schema break '{name}' was not caught")
    return failures


def main():
    problems = []
    directories = [os.path.join(KUBE, "base")] + sorted(
        os.path.join(KUBE, "overlays", o) for o in os.listdir(os.path.join(KUBE, "overlays")))
    rendered = {}
    for directory in directories:
        rel = os.path.relpath(directory, ROOT)
        try:
            docs = render(directory)
        except RuntimeError as e:
            problems.append(str(e))
            continue
        rendered[rel] = docs
        for d in docs:
            problems += [f"{rel}: {x}" for x in validate_schema(d)]
        problems += [f"{rel}: {x}" for x in check_properties(docs, overlay="overlays" in rel)]
        print(f"{rel}: {len(docs)} manifests ({', '.join(sorted({d['kind'] for d in docs}))})")
    kserve = os.path.join(KUBE, "kserve")
    kserve_docs = None
    try:
        kserve_docs = render(kserve)
    except RuntimeError as e:
        problems.append(str(e))
    if kserve_docs is not None:
        rel = os.path.relpath(kserve, ROOT)
        for d in kserve_docs:
            problems += [f"{rel}: {x}" for x in validate_schema(d)]
        problems += [f"{rel}: {x}" for x in check_kserve(kserve_docs)]
        print(f"{rel}: {len(kserve_docs)} manifests ({', '.join(sorted({d['kind'] for d in kserve_docs}))})")
    netinit = open(os.path.join(ROOT, "deploy", "container", "netinit.sh"), encoding="utf-8").read()
    if not re.search(r"--uid-owner", netinit) or "-o lo -j ACCEPT" not in netinit or "-j REJECT" not in netinit:
        problems.append("netinit.sh must let the server UID reach only loopback (owner match, lo accepted, rest rejected)")
    if "ip6tables" not in netinit:
        problems.append("netinit.sh must install the rules for IPv6 too")
    if "--selftest" in sys.argv:
        overlay = next((docs for rel, docs in rendered.items() if "overlays" in rel), None)
        if overlay is None:
            problems.append("selftest: no overlay rendered")
        else:
            problems += selftest(overlay)
        if kserve_docs is not None:
            problems += selftest_kserve(kserve_docs)
    for x in problems:
        print(x)
    if problems:
        return 1
    print("manifests OK")
    if "--selftest" in sys.argv:
        print("selftest OK")
    print("PromQL parsed with promql-parser" if promql_parser else "PromQL: brackets only (pip install promql-parser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
