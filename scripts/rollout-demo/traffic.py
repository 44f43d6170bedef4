#!/usr/bin/env python3
"""Rollout example traffic (docs/operations.md): each named caller (NAME.pem, NAME.key, NAME.token in DIR) sends N
digits rows to `digits` without a version, all callers at once. Usage: traffic.py DIR N NAME..."""
import csv, sys, threading, collections
import numpy as np, tritonclient.grpc as triton
d, n = sys.argv[1], int(sys.argv[2])
callers = sys.argv[3:]
rows = [np.array([float(x) for x in r], np.float32) for r in list(csv.reader(open("Tests/Fixtures/digits_stream.csv")))[1:]]
answered = collections.Counter(); failed = collections.Counter(); lock = threading.Lock()
def run(name):
    token = open(f"{d}/{name}.token").read().strip()
    c = triton.InferenceServerClient("localhost:8443", ssl=True, root_certificates="certs/out/ca-bundle.pem",
        private_key=f"{d}/{name}.key", certificate_chain=f"{d}/{name}.pem")
    for i in range(n):
        x = triton.InferInput("input", [1, 64], "FP32"); x.set_data_from_numpy(rows[i % len(rows)].reshape(1, 64))
        try:
            r = c.infer("digits", [x], headers={"authorization": "Bearer " + token})
            with lock: answered[r.get_response().model_version] += 1
        except Exception as e:
            with lock: failed[str(e)[:80]] += 1
ts = [threading.Thread(target=run, args=(c,)) for c in callers]
[t.start() for t in ts]; [t.join() for t in ts]
print("answered by version:", dict(sorted(answered.items())), "failed:", sum(failed.values()))
for k, v in failed.items(): print("  ", v, "x", k)
