#!/usr/bin/env python3
"""Checks the resolved Swift package graph against deploy/release/pins.json (docs/release.md).

Package.swift pins the direct dependencies with `exact:`; the transitive ones could still float within what their
parents allow, and Package.resolved cannot be committed on these machines (their package mirror has its own commit
ids). This check is the pin for the whole graph: every package resolved must be listed with the same version and
URL, and every listed package must be resolved. Exit 1 names each difference.
"""
import json
import os
import subprocess
import sys

root = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def main():
    # --pins FILE checks against another list (the test suite uses it to prove a drift is named).
    pins_path = os.path.join(root, "deploy", "release", "pins.json")
    if len(sys.argv) == 3 and sys.argv[1] == "--pins":
        pins_path = sys.argv[2]
    elif len(sys.argv) != 1:
        print("usage: check_pins.py [--pins FILE]", file=sys.stderr)
        return 2
    with open(pins_path) as f:
        pins = json.load(f)["packages"]
    r = subprocess.run([
        # --ignore-lock: a read of the graph; the test suite runs this while `swift test` holds the build lock.
        "swift", "package", "--ignore-lock", "show-dependencies", "--format", "json"], cwd=root,
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"check_pins.py: swift package show-dependencies failed: {r.stderr.strip()}", file=sys.stderr)
        return 1
    resolved = {}

    def walk(node):
        for dep in node.get("dependencies", []):
            resolved[dep["identity"]] = {"url": dep["url"], "version": dep["version"]}
            walk(dep)

    walk(json.loads(r.stdout[r.stdout.index("{"):]))
    problems = []
    with open(os.path.join(root, "Package.swift")) as f:
        for number, line in enumerate(f, 1):
            if ".package(" in line and "exact:" not in line:
                problems.append(f"Package.swift:{number}: a dependency without `exact:` ({line.strip()})")
    for name, got in sorted(resolved.items()):
        want = pins.get(name)
        if want is None:
            problems.append(f"{name} {got['version']} is resolved but not pinned in {pins_path}")
        elif want != got:
            problems.append(f"{name}: pinned {want['version']} ({want['url']}), resolved {got['version']} ({got['url']})")
    for name in sorted(set(pins) - set(resolved)):
        problems.append(f"{name} is pinned but no longer in the graph")
    for p in problems:
        print(f"check_pins.py: {p}", file=sys.stderr)
    if not problems:
        print(f"check_pins.py: {len(resolved)} packages match {pins_path}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
