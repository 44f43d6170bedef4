#!/usr/bin/env python3
"""Lists the ELF sections whose bytes differ between two builds of one binary (for make release-repro).

    elf_sections.py A B

Reads the section headers with `readelf -SW`, hashes each section's file bytes, prints the ones that differ with
their sizes. A section missing from one side is reported too.
"""
import hashlib
import re
import subprocess
import sys


def sections(path):
    out = subprocess.run(["readelf", "-SW", path], check=True, capture_output=True, text=True).stdout
    found = {}
    data = open(path, "rb").read()
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", line)
        if not m or m.group(2) == "NOBITS":
            continue
        name, offset, size = m.group(1), int(m.group(4), 16), int(m.group(5), 16)
        found[name] = (size, hashlib.sha256(data[offset:offset + size]).hexdigest())
    return found


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    a, b = sections(sys.argv[1]), sections(sys.argv[2])
    differing = 0
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            differing += 1
            sa = a.get(name, (None, None))[0]
            sb = b.get(name, (None, None))[0]
            print(f"  {name}: {sa} bytes vs {sb} bytes")
    print(f"{differing} of {len(set(a) | set(b))} sections differ")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
