#!/usr/bin/env python3
"""Structural lint of deploy/container/Containerfile (no container engine runs here).

Checks what the image promises: a Swift 6.3 builder doing a static-stdlib release build, a runtime stage from
scratch (or distroless) holding only the assembled root filesystem, a numeric non-root USER, exec-form ENTRYPOINT,
CMD and HEALTHCHECK (there is no shell to run a shell form), no RUN in the runtime stage, and a .dockerignore that
keeps build outputs and keys out of the context. Prints "containerfile OK" and exits 0, or lists every problem.
"""
import json
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def instructions(text):
    """(line, KEYWORD, arguments) with continuations joined and comments dropped."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment lines inside a continuation are ignored by the parser
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        out.append((start, keyword.upper(), args.strip()))
        buf = ""
    if buf:
        out.append((start, "UNTERMINATED", buf))
    return out


def is_exec_form(args):
    try:
        value = json.loads(args)
    except ValueError:
        return False
    return isinstance(value, list) and value and all(isinstance(v, str) for v in value)


def check(path, dockerignore):
    problems = []
    text = open(path, encoding="utf-8").read()
    ins = instructions(text)
    if any(k == "UNTERMINATED" for _, k, _ in ins):
        problems.append("a line continuation runs off the end of the file")
    args = {}
    stages = []  # [name, base, [(line, keyword, args)]]
    for line, keyword, rest in ins:
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
            continue
        if keyword == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", rest, re.IGNORECASE)
            if not m:
                problems.append(f"line {line}: FROM '{rest}' is not understood")
                continue
            base = re.sub(r"\$\{?(\w+)\}?", lambda v: args.get(v.group(1), v.group(0)), m.group(1))
            if not m.group(2):
                problems.append(f"line {line}: every stage must be named (FROM ... AS name)")
            stages.append([m.group(2) or f"stage{len(stages)}", base, []])
            continue
        if not stages:
            problems.append(f"line {line}: {keyword} before the first FROM")
            continue
        stages[-1][2].append((line, keyword, rest))

    names = [s[0] for s in stages]
    if len(stages) < 2:
        problems.append("needs a multi-stage build (a builder and a runtime stage)")
        return problems
    build = next((s for s in stages if s[1].startswith("swift:")), None)
    if build is None:
        problems.append("no builder stage FROM swift:<version>")
    else:
        if not re.match(r"swift:6\.3(\b|-)", build[1]):
            problems.append(f"the builder must use Swift 6.3, uses {build[1]}")
        runs = " ".join(r for _, k, r in build[2] if k == "RUN")
        if "deploy/release/build.sh" not in runs:
            problems.append("the builder must build with deploy/release/build.sh (the reproducible release build)")
        if "libzstd-dev" not in runs:
            problems.append("the builder must install libzstd-dev (the bundle unpacker links libzstd)")
        if "make-rootfs.sh" not in runs:
            problems.append("the builder must assemble the runtime tree with deploy/container/make-rootfs.sh")

    # Bases by digest: a tag can be re-pointed to other bytes, a digest cannot (docs/release.md).
    for name, base, _ in stages:
        if base != "scratch" and not re.search(r"@sha256:[0-9a-f]{64}$", base):
            problems.append(f"stage {name}: base image {base} is not pinned by digest (@sha256:...)")

    runtime = stages[-1]
    if runtime[1] != "scratch" and not runtime[1].startswith("gcr.io/distroless/"):
        problems.append(f"the last (default) stage must be minimal (scratch or distroless), is {runtime[1]}")
    body = runtime[2]
    kinds = [k for _, k, _ in body]
    for line, keyword, rest in body:
        if keyword in ("RUN", "ADD"):
            problems.append(f"line {line}: {keyword} in the runtime stage (it has no shell; copy from the builder)")
        if keyword == "COPY":
            m = re.search(r"--from=(\S+)", rest)
            if not m or m.group(1) not in names:
                problems.append(f"line {line}: the runtime stage copies only from a named build stage")
    users = [r for _, k, r in body if k == "USER"]
    if not users:
        problems.append("the runtime stage sets no USER (it would run as root)")
    else:
        user = users[-1]
        if not re.fullmatch(r"\d+(:\d+)?", user):
            problems.append(f"USER must be numeric uid[:gid] (runAsNonRoot checks it), is '{user}'")
        elif any(int(part) == 0 for part in user.split(":")):
            problems.append(f"USER must not be root, is '{user}'")
        elif int(user.split(":")[0]) != 65532:
            problems.append(f"USER is expected to be 65532 (the manifests and rules use it), is '{user}'")
    for keyword in ("ENTRYPOINT", "CMD"):
        values = [(line, r) for line, k, r in body if k == keyword]
        if not values:
            problems.append(f"the runtime stage has no {keyword}")
        for line, r in values:
            if not is_exec_form(r):
                problems.append(f"line {line}: {keyword} must be the exec (JSON) form: there is no shell")
    entry = [json.loads(r) for _, k, r in body if k == "ENTRYPOINT" and is_exec_form(r)]
    cmd = [json.loads(r) for _, k, r in body if k == "CMD" and is_exec_form(r)]
    if entry and entry[-1] != ["/usr/local/bin/palisade"]:
        problems.append(f"ENTRYPOINT must be the palisade binary alone (serve and egress are its arguments), is {entry[-1]}")
    if cmd and cmd[-1][:1] != ["serve"]:
        problems.append(f"the default CMD must be `serve ...`, is {cmd[-1]}")
    health = [(line, r) for line, k, r in body if k == "HEALTHCHECK"]
    if not health:
        problems.append("the runtime stage has no HEALTHCHECK")
    for line, r in health:
        m = re.search(r"\bCMD\s+(.*)$", r)
        if not m or not is_exec_form(m.group(1)):
            problems.append(f"line {line}: HEALTHCHECK must use CMD in exec form")
        elif json.loads(m.group(1))[0] != "/usr/local/bin/palisade":
            problems.append(f"line {line}: HEALTHCHECK must probe with the binary itself")
    # Exec form everywhere: a shell form anywhere in the file would break if used as a target.
    for name, _, body_ in stages:
        for line, k, r in body_:
            if k in ("ENTRYPOINT", "CMD") and not is_exec_form(r):
                problems.append(f"line {line}: {k} in stage {name} must be the exec form")

    if not os.path.exists(dockerignore):
        problems.append(".dockerignore is missing")
    else:
        patterns = {l.strip() for l in open(dockerignore, encoding="utf-8") if l.strip() and not l.startswith("#")}
        for needed in (".build*", "certs/out", ".git", "**/*.key"):
            if needed not in patterns:
                problems.append(f".dockerignore must exclude {needed}")
        for kept in ("Sources", "Tests", "Package.swift", "deploy", "Benchmarks"):
            if kept in patterns:
                problems.append(f".dockerignore must not exclude {kept} (the build needs it)")
    rootfs = os.path.join(ROOT, "deploy", "container", "make-rootfs.sh")
    if "65532" not in open(rootfs, encoding="utf-8").read():
        problems.append("make-rootfs.sh must write the passwd entry for UID 65532")
    return problems


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "deploy", "container", "Containerfile")
    ignore = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, ".dockerignore")
    problems = check(path, ignore)
    for p in problems:
        print(f"{path}: {p}")
    if problems:
        return 1
    print("containerfile OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
