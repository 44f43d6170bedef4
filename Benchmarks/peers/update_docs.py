#!/usr/bin/env python3
"""Replaces the generated part of the "Peers" section of docs/benchmarks.md (between the peers:begin and
peers:end markers) with a table from report.py, headed by the date, load average and revision of the run.

Usage: update_docs.py docs/benchmarks.md TABLE.md --started ISO --load "a b c" --load-after "a b c" --rounds N
                      --revision REV
"""
import argparse
import sys

BEGIN = "<!-- peers:begin (written by Benchmarks/peers.sh) -->"
END = "<!-- peers:end -->"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("doc")
    ap.add_argument("table")
    ap.add_argument("--started", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--load-after", required=True)
    ap.add_argument("--rounds", required=True)
    ap.add_argument("--revision", required=True)
    a = ap.parse_args()
    doc = open(a.doc).read()
    table = open(a.table).read().strip()
    block = (f"{BEGIN}\nRun {a.started}, revision {a.revision}, {a.rounds} rounds; load average {a.load} before, "
             f"{a.load_after} after (1, 5, 15 min).\n\n{table}\n{END}")
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc = head + block + tail
    else:
        doc = doc.rstrip() + "\n\n## Peers: KServe and a C++ null server over mTLS\n\n" + block + "\n"
    open(a.doc, "w").write(doc)
    print(f"updated {a.doc}")


if __name__ == "__main__":
    sys.exit(main())
