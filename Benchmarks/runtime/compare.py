#!/usr/bin/env python3
"""Runs onnxruntime and Palisade's runtime-bench on the same fixture models, on this machine, one after the other,
and prints latency ratios (Palisade / onnxruntime; below 1.0 means Palisade is faster).

  swift build -c release --product runtime-bench
  .venv-fixtures/bin/python Benchmarks/runtime/compare.py [--bench .build/release/runtime-bench] [--seconds 2]

Targets (issue 3): <= 0.8x onnxruntime at batch 1, <= 1.0x at batch 32. Both sides use the same thread count
(default: all cores) and random inputs of the model's shape; onnxruntime is timed through its Python API
(session.run on preallocated numpy inputs, ~5-10 us of binding overhead per call included).

  --cpu            time with each process's CPU clock instead of the wall clock (use with --threads 1): on a
                   machine shared with builds, CPU time is what a run costs; wall time also counts its waits.
  --extra F:BxD    also time the ONNX file F at input shape BxD (e.g. the peer benchmark's wide_mlp at 32x784),
                   with a plain numpy forward pass (Gemm/Relu/Softmax graphs) as a third peer.
  --models a,b     only these fixture models ("" for none).
  --before PATH    also time a second runtime-bench (e.g. the previous build) in the same interleaved rounds.
  --in-pool        run runtime-bench's timing loop on a pool thread (as the server does), so --threads N is N threads
                   in all on both sides; by default runtime-bench's calling thread joins N pool threads.
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


def clock(cpu):
    return time.process_time if cpu else time.perf_counter


def ort_latency(path, batch, seconds, threads, cpu=False, shape=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        dims = shape or [batch if not isinstance(d, int) else d for d in i.shape]
        if i.type == "tensor(int64)":
            feeds[i.name] = rng.integers(0, 10, dims, dtype=np.int64)
        else:
            feeds[i.name] = rng.uniform(-1, 1, dims).astype(np.float32)
    return timed(lambda: sess.run(None, feeds), seconds, cpu)


def timed(fn, seconds, cpu):
    now = clock(cpu)
    end = time.perf_counter() + 0.2
    while time.perf_counter() < end:
        fn()
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 20:
        t0 = now()
        fn()
        samples.append((now() - t0) * 1e6)
    samples.sort()
    return samples[len(samples) // 2], sum(samples) / len(samples)


def numpy_forward(path, shape, seconds, cpu):
    """A plain numpy forward pass of a Gemm/Relu/Softmax MLP (the peer benchmark's models), BLAS as configured."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(path)
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    layers = []
    for node in m.graph.node:
        if node.op_type == "Gemm":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            w = consts[node.input[1]]
            w = np.ascontiguousarray(w.T if attrs.get("transB", 0) else w, dtype=np.float32)
            layers.append((w, consts[node.input[2]].astype(np.float32)))
        elif node.op_type not in ("Relu", "Softmax"):
            return None
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)

    def fwd():
        h = x
        for j, (w, b) in enumerate(layers):
            h = h @ w + b
            if j < len(layers) - 1:
                np.maximum(h, 0, out=h)
        h = h - h.max(axis=1, keepdims=True)
        np.exp(h, out=h)
        return h / h.sum(axis=1, keepdims=True)

    return timed(fwd, seconds, cpu)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=os.path.join(ROOT, ".build", "release", "runtime-bench"))
    ap.add_argument("--fixtures", default=os.path.join(ROOT, "Tests", "Fixtures"))
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--extra", action="append", default=[])
    ap.add_argument("--before", default=None)
    ap.add_argument("--in-pool", action="store_true")
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    extras = []
    for spec in args.extra:
        path, dims = spec.rsplit(":", 1)
        extras.append((path, [int(d) for d in dims.split("x")]))
    cpu = (["--cpu"] if args.cpu else []) + (["--in-pool"] if args.in_pool else [])
    blas = None
    if extras:
        try:
            from threadpoolctl import threadpool_limits
            blas = threadpool_limits(limits=args.threads, user_api="blas")
        except ImportError:
            pass

    load = os.getloadavg()
    # Interleave the two sides model by model, several rounds, and keep each side's best median: on a shared
    # machine this compares like with like instead of whichever side ran during a quiet moment.
    ours, ref, nump, before = {}, {}, {}, {}

    def keep(table, key, value):
        table[key] = min(table.get(key, float("inf")), value)

    def run_ours(argv, bench=None, table=None):
        table = ours if table is None else table
        out = subprocess.run([bench or args.bench, "--json", "--seconds", str(args.seconds), "--threads", str(args.threads)]
                             + cpu + argv, check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                keep(table, (r["model"], r["batch"]), r["median_us"])

    for _ in range(args.rounds):
        for name in models:
            run_ours(["--fixtures", args.fixtures, "--model", name])
            if args.before:
                run_ours(["--fixtures", args.fixtures, "--model", name], args.before, before)
            for batch in (1, 32):
                m, _ = ort_latency(os.path.join(args.fixtures, name + ".onnx"), batch, args.seconds, args.threads,
                                   args.cpu)
                keep(ref, (name, batch), m)
        for path, dims in extras:
            name = os.path.splitext(os.path.basename(path))[0]
            if name == "model":
                name = os.path.basename(os.path.dirname(path))
            run_ours(["--onnx", path, "--input-shape", "x".join(map(str, dims))])
            if name != "model":
                ours[(name, dims[0])] = ours.pop((os.path.splitext(os.path.basename(path))[0], dims[0]))
            m, _ = ort_latency(path, dims[0], args.seconds, args.threads, args.cpu, dims)
            keep(ref, (name, dims[0]), m)
            f = numpy_forward(path, dims, args.seconds, args.cpu)
            if f:
                keep(nump, (name, dims[0]), f[0])
    unit = "CPU us" if args.cpu else "us"
    print(f"threads: {args.threads}; rounds: {args.rounds}; clock: {'process CPU' if args.cpu else 'wall'}; "
          f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; onnxruntime {ort.__version__}, "
          f"numpy {np.__version__}")
    print(f"{'model':<16}{'batch':>6}{'ORT ' + unit:>15}{'numpy ' + unit:>15}{'ours ' + unit:>15}{'ratio':>8}"
          f"{'target':>8}  ok" + (f"{'before ' + unit:>17}{'ratio':>8}" if before else ""))
    misses = 0
    keys = [(n, b) for n in models for b in (1, 32)] + [k for k in ours if k[0] not in models]
    for key in keys:
        name, batch = key
        r, mine = ref[key], ours[key]
        ratio = mine / r
        target = 0.8 if batch == 1 else 1.0
        ok = ratio <= target
        misses += not ok
        npy = f"{nump[key]:>15.1f}" if key in nump else f"{'':>15}"
        old = f"{before[key]:>15.1f}{before[key] / r:>8.2f}" if key in before else ""
        print(f"{name:<16}{batch:>6}{r:>15.1f}{npy}{mine:>15.1f}{ratio:>8.2f}{target:>8.1f}  {'yes' if ok else 'NO '}"
              + old)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; targets missed: {misses}")


if __name__ == "__main__":
    sys.exit(main())
