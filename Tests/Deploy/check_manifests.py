#!/usr/bin/env python3
"""Renders deploy/kubernetes (base and every overlay) with `kubectl kustomize`, validates every manifest against
the Kubernetes OpenAPI schemas offline (kubernetes-validate bundles them; strict: unknown fields are errors) and
the cert-manager Certificate against Tests/Deploy/schemas, then asserts the security properties the deployment
promises. `--selftest` breaks each property in a copy of the rendered overlay and expects the check to catch it.
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

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KUBE = os.path.join(ROOT, "deploy", "kubernetes")
SCHEMAS = os.path.join(ROOT, "Tests", "Deploy", "schemas")
# The oldest Kubernetes the manifests are meant for, and the newest schemas bundled.
VERSIONS = ["1.29", kubernetes_validate.latest_version()]
SERVER_UID, EGRESS_UID = 65532, 65533
INIT_CAPABILITIES = {"NET_ADMIN", "NET_RAW"}


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
    if doc.get("apiVersion") == "cert-manager.io/v1":
        path = os.path.join(SCHEMAS, f"{doc['kind'].lower()}-cert-manager-v1.json")
        if not os.path.exists(path):
            return [f"{where}: no schema for cert-manager {doc['kind']} in {SCHEMAS}"]
        try:
            jsonschema.validate(doc, json.load(open(path)))
        except jsonschema.ValidationError as e:
            return [f"{where}: {e.message} at {'/'.join(map(str, e.absolute_path))}"]
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
    dep = one(docs, "Deployment", p)
    if dep is None:
        return p
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    psc = pod.get("securityContext", {})
    names = {c["name"]: c for c in pod.get("containers", [])}

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
    for c in pod.get("containers", []):
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
    inits = pod.get("initContainers", [])
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

    # Volumes: bundles, config, policy, trust and credentials read-only; only emptyDirs writable.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for c in pod.get("containers", []):
        for m in c.get("volumeMounts", []):
            v = volumes.get(m["name"])
            if v is None:
                p.append(f"container {c['name']}: mount {m['name']} has no volume")
            elif "emptyDir" not in v and m.get("readOnly") is not True:
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
        if ref.get("kind") != "Deployment" or ref.get("name") != dep["metadata"]["name"]:
            p.append("HorizontalPodAutoscaler must scale the Deployment")
        if hpa["spec"].get("minReplicas", 1) < 2:
            p.append("HorizontalPodAutoscaler minReplicas must be at least 2 (the PDB needs a spare)")
    svc = one(docs, "Service", p)
    if svc and not selects(svc["spec"].get("selector", {}), labels):
        p.append("Service must select the Palisade pods")
    if svc and {x["port"] for x in svc["spec"].get("ports", [])} != {8443}:
        p.append("Service must expose only the mTLS port")
    if overlay:
        for d in docs:
            if d["kind"] != "Namespace" and not d["metadata"].get("namespace"):
                p.append(f"{d['kind']}/{d['metadata']['name']}: the overlay must set a namespace")
    return p


def selftest(docs):
    """Each broken property must be caught."""
    def pod(d):
        return next(x for x in d if x["kind"] == "Deployment")["spec"]["template"]["spec"]

    def container(d, name):
        return next(c for c in pod(d)["containers"] if c["name"] == name)

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
        "wrong type": lambda d: next(x for x in d if x["kind"] == "Deployment")["spec"].__setitem__("replicas", "two"),
        "unknown Certificate field": lambda d: next(x for x in d if x["kind"] == "Certificate")["spec"].__setitem__(
            "dnsName", ["x"]),
    }
    for name, breaker in schema_breaks.items():
        broken = copy.deepcopy(docs)
        breaker(broken)
        if not any(validate_schema(d) for d in broken):
            failures.append(f"selftest: schema break '{name}' was not caught")
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
    for x in problems:
        print(x)
    if problems:
        return 1
    print("manifests OK")
    if "--selftest" in sys.argv:
        print("selftest OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
