#!/usr/bin/env python3
"""Start the peer V2 gRPC servers, run bench_v2_grpc.py over a matrix, stop them.

Servers (each on 127.0.0.1; '-mtls' variants use certs from make_certs.sh):
  kserve       KServe Python ModelServer (venv-kserve), onnxruntime inside a kserve.Model
  null         C++ null server (no model; client-ceiling / protocol floor reference)
  ... plus any already-running server given with --external / --external-mtls (Palisade).

Matrix: server x model x batch {1,32} x encoding {raw,typed} (+ mTLS rows: raw only),
repeated --rounds times, round-robin (so drift hits every config alike).
Every row appends JSON lines to OUT/results.jsonl; report.py turns them into the
median-of-rounds table. Benchmarks/peers.sh runs it with --tls-only and Palisade external.

Usage:
  run_peers.py [--rounds 3] [--calls 1000] [--duration 8] [--concurrency 32] [--out /tmp/peers/results]
               [--servers kserve,null] [--no-tls] [--tls-only] [--batches 1,32] [--encodings raw,typed]
               [--external LABEL=127.0.0.1:9000[@PID]] [--external-mtls LABEL=127.0.0.1:9443[@PID]]
Only PIDs started here are stopped (SIGTERM, then SIGKILL of their own process group after 15 s).
(From the shared peer harness; the MLServer variants are left out of this copy.)
"""
import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.environ.get("PEERS_DIR", "/tmp/peers")
VENV = os.path.join(PEERS, "venv", "bin", "python")  # the client's venv (peers.sh links it to venv-kserve)
VENV_KS = os.path.join(PEERS, "venv-kserve", "bin", "python")
CERTS = os.path.join(PEERS, "certs")
MODELS_DIR = os.path.join(PEERS, "models")
NULL_BIN = os.path.join(PEERS, "null_server", "null_v2_server")

# label -> dict(port, models, start(tls)->(cmd, env, cwd))
PORTS = {"kserve": 18091, "null": 18101}
TLS_OFFSET = 100


def tls_env(tls):
    if not tls:
        return {}
    return {"PEERS_GRPC_TLS_CERT": f"{CERTS}/server.crt", "PEERS_GRPC_TLS_KEY": f"{CERTS}/server.key",
            "PEERS_GRPC_TLS_CA": f"{CERTS}/ca.crt"}


def start_server(kind, tls, logdir):
    off = TLS_OFFSET if tls else 0
    env = dict(os.environ)
    env["PEERS_GRPC_BIND_HOST"] = "127.0.0.1"
    env.update(tls_env(tls))
    sdir = os.path.join(HERE, "servers")
    if kind == "kserve":
        cmd = [VENV_KS, os.path.join(sdir, "serve_kserve.py"), "--models", MODELS_DIR,
               "--grpc-port", str(18091 + off), "--http-port", str(18090 + off)]
        port = 18091 + off
    elif kind == "null":
        port = 18101 + off
        cmd = [NULL_BIN, "--addr", f"127.0.0.1:{port}"]
        if tls:
            cmd += ["--tls-cert", f"{CERTS}/server.crt", "--tls-key", f"{CERTS}/server.key", "--tls-ca", f"{CERTS}/ca.crt"]
    else:
        raise ValueError(kind)
    log = open(os.path.join(logdir, f"{kind}{'-mtls' if tls else ''}.log"), "w")
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=PEERS, start_new_session=True)
    return p, port


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + 15
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            # kill the process group we created (start_new_session) - only our own children
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def bench(args, label, target, model, batch, enc, mtls, spid, extra=()):
    cmd = [VENV, os.path.join(HERE, "bench_v2_grpc.py"), "--target", target, "--model", model,
           "--batch", str(batch), "--calls", str(args.calls), "--warmup", str(args.warmup),
           "--concurrency", str(args.concurrency), "--duration", str(args.duration),
           "--label", label, "--json", os.path.join(args.out, "results.jsonl"), *extra]
    if args.distinct_rows:
        cmd += ["--distinct-rows", str(args.distinct_rows)]
    if enc == "raw":
        cmd.append("--raw")
    if mtls:
        cmd += ["--tls-ca", f"{CERTS}/ca.crt", "--tls-cert", f"{CERTS}/client.crt", "--tls-key", f"{CERTS}/client.key"]
    if spid:
        cmd += ["--server-pid", str(spid)]
    if mtls and os.environ.get("PEERS_TOKEN"):  # same metadata to every mTLS server (Palisade needs it)
        cmd += ["--token", os.environ["PEERS_TOKEN"]]
    if args.wait_ready:
        cmd += ["--wait-ready", str(args.wait_ready)]
    print(f"$ {label} {model} b={batch} {enc}{' mTLS' if mtls else ''}", flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write("".join(l + "\n" for l in r.stdout.splitlines() if l.startswith("  ")))
    if r.returncode != 0:
        print(f"  !! rc={r.returncode} {r.stderr.strip()[-400:]}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--out", default=os.path.join(PEERS, "results"))
    ap.add_argument("--servers", default="kserve,null")
    ap.add_argument("--no-tls", action="store_true")
    ap.add_argument("--tls-only", action="store_true")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--encodings", default="raw,typed")
    ap.add_argument("--models", default="digits_mlp,wide_mlp")
    ap.add_argument("--external", action="append", default=[], help="LABEL=HOST:PORT[@PID], plaintext, already running")
    ap.add_argument("--external-mtls", action="append", default=[], help="LABEL=HOST:PORT[@PID], mTLS with certs/")
    ap.add_argument("--wait-ready", type=float, default=60)
    ap.add_argument("--distinct-rows", type=int, default=0, help="passed to bench_v2_grpc.py")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    logdir = os.path.join(args.out, "logs")
    os.makedirs(logdir, exist_ok=True)

    wanted = args.servers.split(",") if args.servers else []
    kind_of = lambda w: w  # noqa: E731
    kinds = sorted({kind_of(w) for w in wanted})
    tls_modes = [] if args.no_tls else [True]
    if not args.tls_only:
        tls_modes = [False] + tls_modes
    procs, running = [], {}
    try:
        for kind in kinds:
            for tls in tls_modes:
                p, port = start_server(kind, tls, logdir)
                procs.append(p)
                running[(kind, tls)] = (p.pid, port)
                print(f"started {kind}{' mTLS' if tls else ''} pid={p.pid} port={port}", flush=True)
        # targets: (label, target, model, mtls, pid)
        targets = []
        for w in wanted:
            kind = kind_of(w)
            suffix = ""
            for tls in tls_modes:
                pid, port = running[(kind, tls)]
                for m in args.models.split(","):
                    targets.append((w + ("-mtls" if tls else ""), f"127.0.0.1:{port}", m + suffix, tls, pid))
        for spec, mt in [(e, False) for e in args.external] + [(e, True) for e in args.external_mtls]:
            label, _, rest = spec.partition("=")
            tgt, _, pid = rest.partition("@")
            for m in args.models.split(","):
                targets.append((label, tgt, m, mt, int(pid) if pid else None))

        batches = [int(b) for b in args.batches.split(",")]
        encs = args.encodings.split(",")
        meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": vars(args),
                "servers": {f"{k}{'-mtls' if t else ''}": v for (k, t), v in running.items()}}
        with open(os.path.join(args.out, "run_meta.jsonl"), "a") as f:
            f.write(json.dumps(meta) + "\n")
        for rnd in range(args.rounds):
            print(f"=== round {rnd + 1}/{args.rounds} loadavg={os.getloadavg()}", flush=True)
            for (label, tgt, model, mtls, pid), batch, enc in itertools.product(targets, batches, encs):
                if mtls and enc != "raw" and len(encs) > 1:
                    continue  # mTLS rows: raw encoding only (the TLS cost is what differs)
                bench(args, label, tgt, model, batch, enc, mtls, pid)
    finally:
        stop(procs)
        print("stopped: " + ", ".join(str(p.pid) for p in procs), flush=True)


if __name__ == "__main__":
    main()
