#!/usr/bin/env python3
"""Runs onnxruntime and Palisade's runtime-bench on the same fixture models, on this machine, one after the other,
and prints latency ratios (Palisade / onnxruntime; below 1.0 means Palisade is faster).

  swift build -c release --product runtime-bench
  .venv-fixtures/bin/python Benchmarks/runtime/compare.py [--bench .build/release/runtime-bench] [--seconds 2]

Targets (issue 3): <= 0.8x onnxruntime at batch 1, <= 1.0x at batch 32. Both sides use the same thread count
(default: all cores) and random inputs of the model's shape; onnxruntime is timed through its Python API
(session.run on preallocated numpy inputs, ~5-10 us of binding overhead per call included).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
MODELS = ["mlp_digits", "mlp_torch", "cnn_torch", "encoder_torch"]


def ort_latency(path, batch, seconds, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = [batch if not isinstance(d, int) else d for d in i.shape]
        if i.type == "tensor(int64)":
            feeds[i.name] = rng.integers(0, 10, shape, dtype=np.int64)
        else:
            feeds[i.name] = rng.uniform(-1, 1, shape).astype(np.float32)
    end = time.perf_counter() + 0.2
    while time.perf_counter() < end:
        sess.run(None, feeds)
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 20:
        t0 = time.perf_counter()
        sess.run(None, feeds)
        samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    return samples[len(samples) // 2], sum(samples) / len(samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=os.path.join(ROOT, ".build", "release", "runtime-bench"))
    ap.add_argument("--fixtures", default=os.path.join(ROOT, "Tests", "Fixtures"))
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    load = os.getloadavg()
    # Interleave the two sides model by model, several rounds, and keep each side's best median: on a shared
    # machine this compares like with like instead of whichever side ran during a quiet moment.
    ours, ref = {}, {}
    for _ in range(args.rounds):
        for name in MODELS:
            out = subprocess.run([args.bench, "--json", "--fixtures", args.fixtures, "--seconds", str(args.seconds),
                                  "--threads", str(args.threads), "--model", name],
                                 check=True, capture_output=True, text=True).stdout
            for line in out.splitlines():
                if line.startswith("{"):
                    r = json.loads(line)
                    key = (r["model"], r["batch"])
                    ours[key] = min(ours.get(key, float("inf")), r["median_us"])
            for batch in (1, 32):
                m, _ = ort_latency(os.path.join(args.fixtures, name + ".onnx"), batch, args.seconds, args.threads)
                ref[(name, batch)] = min(ref.get((name, batch), float("inf")), m)
    print(f"threads: {args.threads}; rounds: {args.rounds}; load average before: {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; onnxruntime {ort.__version__}")
    print(f"{'model':<16}{'batch':>6}{'ORT median us':>15}{'ours median us':>16}{'ratio':>8}{'target':>8}  ok")
    misses = 0
    for name in MODELS:
        for batch in (1, 32):
            r, mine = ref[(name, batch)], ours[(name, batch)]
            ratio = mine / r
            target = 0.8 if batch == 1 else 1.0
            ok = ratio <= target
            misses += not ok
            print(f"{name:<16}{batch:>6}{r:>15.1f}{mine:>16.1f}{ratio:>8.2f}{target:>8.1f}  {'yes' if ok else 'NO'}")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; targets missed: {misses}")


if __name__ == "__main__":
    sys.exit(main())
