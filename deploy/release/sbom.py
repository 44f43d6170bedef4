#!/usr/bin/env python3
"""Writes the CycloneDX 1.5 SBOM of a Palisade build (docs/release.md).

    deploy/release/sbom.py --binary BIN --out FILE [--libs LIB ...] [--package-dir DIR]

Components: the Swift packages of the resolved graph (`swift package show-dependencies`, each with its exact
version and repository URL), the Swift toolchain that built the binary, and the Debian packages that own the shared
libraries and files the image copies (`--libs`, looked up with dpkg). The metadata component is the binary itself
with its SHA-256. The output is deterministic: components sorted, the serial number derived from the content, the
timestamp from SOURCE_DATE_EPOCH (else the commit time), so two builds of one commit write the same file.
Fails (exit 1, naming the cause) when a library has no owning package or the package graph cannot be read.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timezone


def fail(message):
    print(f"sbom.py: {message}", file=sys.stderr)
    sys.exit(1)


def run(args, cwd=None):
    try:
        return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        fail(f"{' '.join(args)} failed: {detail.strip()}")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def swift_packages(package_dir):
    graph = json.loads(run([
        # --ignore-lock: a read of the graph; the test suite runs this while `swift test` holds the build lock.
        "swift", "package", "--ignore-lock", "show-dependencies", "--format", "json"], cwd=package_dir))
    found = {}

    def walk(node):
        for dep in node.get("dependencies", []):
            found[dep["identity"]] = (dep["name"], dep["url"], dep["version"])
            walk(dep)

    walk(graph)
    components = []
    for identity, (name, url, version) in sorted(found.items()):
        if version in ("unspecified", ""):
            fail(f"package {identity} has no exact version (pin it in Package.swift)")
        path = url.removeprefix("https://").removesuffix(".git")
        components.append({
            "type": "library", "bom-ref": f"swift:{identity}@{version}", "name": name, "version": version,
            "purl": f"pkg:swift/{path}@{version}",
            "externalReferences": [{"type": "vcs", "url": url}],
        })
    return components


# Files that packages generate at install time rather than ship, so dpkg does not list them.
GENERATED = {"/etc/ssl/certs/ca-certificates.crt": "ca-certificates"}


def debian_packages(paths):
    if not paths:
        return []
    if not os.path.exists("/usr/bin/dpkg-query"):
        fail("dpkg-query not found: the Debian packages of the image's libraries cannot be named")
    arch = run(["dpkg", "--print-architecture"]).strip()
    distro = "debian"
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("ID="):
                    distro = line.split("=", 1)[1].strip().strip('"') or distro
    except OSError:
        pass
    # The Swift runtime libraries of a build without --static-swift-stdlib belong to the toolchain component.
    swift = shutil.which("swift")
    toolchain_root = os.path.dirname(os.path.dirname(os.path.realpath(swift))) if swift else None
    owners = {}
    for path in paths:
        if toolchain_root and os.path.realpath(path).startswith(toolchain_root + os.sep):
            continue
        candidates = [path, os.path.realpath(path)]
        # usrmerge: dpkg may record /lib/... for a file reached as /usr/lib/... and the other way round.
        for p in list(candidates):
            if p.startswith("/usr/"):
                candidates.append(p[4:])
            else:
                candidates.append("/usr" + p)
        owner = GENERATED.get(path)
        for p in candidates if owner is None else []:
            r = subprocess.run(["dpkg-query", "-S", p], capture_output=True, text=True)
            if r.returncode == 0 and r.stdout:
                owner = r.stdout.split(":", 1)[0].split(",")[0].strip()
                break
        if owner is None:
            fail(f"{path}: no Debian package owns it (dpkg-query -S)")
        owners[owner] = True
    components = []
    for pkg in sorted(owners):
        version = run(["dpkg-query", "-W", "-f", "${Version}", pkg]).strip()
        components.append({
            "type": "library", "bom-ref": f"deb:{pkg}@{version}", "name": pkg, "version": version,
            "purl": f"pkg:deb/{distro}/{pkg}@{version}?arch={arch}",
        })
    return components


def toolchain():
    text = run(["swift", "--version"])
    first = text.strip().splitlines()[0] if text.strip() else "swift"
    version = first.split("version", 1)[1].split()[0] if "version" in first else "unknown"
    return {"type": "application", "bom-ref": f"toolchain:swift@{version}", "name": "swift", "version": version,
            "description": first, "purl": f"pkg:generic/swift@{version}"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True, help="the palisade executable the SBOM describes")
    ap.add_argument("--out", required=True, help="where to write the SBOM (JSON)")
    ap.add_argument("--libs", nargs="*", default=[], help="files copied into the image, mapped to Debian packages")
    ap.add_argument("--package-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."),
                    help="the Swift package root (default: this repository)")
    a = ap.parse_args()
    if not os.path.isfile(a.binary):
        fail(f"{a.binary}: no such file")
    package_dir = os.path.abspath(a.package_dir)
    epoch = os.environ.get("SOURCE_DATE_EPOCH") or subprocess.run(
        ["git", "log", "-1", "--format=%ct"], cwd=package_dir, capture_output=True, text=True).stdout.strip()
    if not epoch:
        fail("no SOURCE_DATE_EPOCH and no git history to take the commit time from: set SOURCE_DATE_EPOCH")
    try:
        stamp = datetime.fromtimestamp(int(epoch), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        fail(f"SOURCE_DATE_EPOCH {epoch!r} is not a number of seconds")
    version = os.environ.get("PALISADE_VERSION") or subprocess.run(
        ["git", "describe", "--tags", "--always", "--dirty"], cwd=package_dir,
        capture_output=True, text=True).stdout.strip() or "unknown"
    components = swift_packages(package_dir) + [toolchain()] + debian_packages(sorted(set(a.libs)))
    bom = {
        "bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1,
        "metadata": {
            "timestamp": stamp,
            "component": {"type": "application", "bom-ref": "palisade", "name": "palisade", "version": version,
                          "hashes": [{"alg": "SHA-256", "content": sha256(a.binary)}]},
        },
        "components": components,
        "dependencies": [{"ref": "palisade", "dependsOn": [c["bom-ref"] for c in components]}],
    }
    body = json.dumps(bom, sort_keys=True, separators=(",", ":")).encode()
    bom["serialNumber"] = "urn:uuid:" + str(uuid.UUID(bytes=hashlib.sha256(body).digest()[:16], version=5))
    with open(a.out, "w") as f:
        json.dump(bom, f, sort_keys=True, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
