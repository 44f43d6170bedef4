#!/usr/bin/env python3
"""Peer SGEMM benchmark: numpy float32 matmul (OpenBLAS), same protocol as kernel-bench.

Prints one line per (threads, n): "sgemm threads=T n=N gflops=G best_ms=M" (best of --runs after a warm-up,
each run repeating the product until it takes ~50 ms). Threads are limited with threadpoolctl when installed;
run.sh also sets OPENBLAS_NUM_THREADS per invocation so the limit holds without it.
"""
import argparse
import time

import numpy as np

try:
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError:  # pragma: no cover - run.sh sets OPENBLAS_NUM_THREADS instead
    threadpool_limits = None
    threadpool_info = None


def bench(n: int, runs: int) -> float:
    rng = np.random.default_rng(n)
    a = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    c = np.empty((n, n), dtype=np.float32)
    flops = 2.0 * n * n * n
    reps = max(1, int(5e9 / flops))
    best = float("inf")
    for run in range(runs + 1):
        start = time.perf_counter()
        for _ in range(reps):
            np.matmul(a, b, out=c)
        elapsed = (time.perf_counter() - start) / reps
        if run > 0:
            best = min(best, elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="256,512,1024,2048")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--info", action="store_true", help="print the BLAS library threadpoolctl sees")
    args = parser.parse_args()
    if args.info and threadpool_info is not None:
        for lib in threadpool_info():
            print("# blas:", lib.get("internal_api"), lib.get("version"), lib.get("architecture"))
    for threads in [int(t) for t in args.threads.split(",")]:
        for n in [int(s) for s in args.sizes.split(",")]:
            if threadpool_limits is not None:
                with threadpool_limits(limits=threads, user_api="blas"):
                    best = bench(n, args.runs)
            else:
                best = bench(n, args.runs)
            print(f"sgemm threads={threads} n={n} gflops={2.0 * n ** 3 / best / 1e9:.2f} best_ms={best * 1e3:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
