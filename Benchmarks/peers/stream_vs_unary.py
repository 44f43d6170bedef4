#!/usr/bin/env python3
"""ModelStreamInfer per message against ModelInfer per call on one mTLS connection, the same request, `--window`
calls or messages in flight; prints throughput and the server's CPU per message (from /proc/PID/stat).

Usage (against a Palisade started by palisade_up.sh, which prints PAL_PID and PEERS_TOKEN):
  stream_vs_unary.py --target 127.0.0.1:18311 --ca $P/certs/ca.crt --cert $P/certs/client.crt \
      --key $P/certs/client.key --token $PEERS_TOKEN --server-pid $PAL_PID [--model digits_mlp --features 64]
      [--n 20000] [--window 32] [--only unary|stream]
"""
import argparse, asyncio, os, sys, time
import grpc, numpy as np
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pbg

def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

def request(model, features):
    r = pb.ModelInferRequest(model_name=model)
    t = r.inputs.add(); t.name = "input"; t.datatype = "FP32"; t.shape.extend([1, features])
    r.raw_input_contents.append(np.random.rand(1, features).astype(np.float32).tobytes())
    return r

async def main():
    a = argparse.ArgumentParser()
    for k in ["target", "ca", "cert", "key", "token"]: a.add_argument("--" + k, required=True)
    a.add_argument("--server-pid", type=int, required=True)
    a.add_argument("--model", default="digits_mlp"); a.add_argument("--features", type=int, default=64)
    a.add_argument("--n", type=int, default=20000); a.add_argument("--window", type=int, default=32)
    a.add_argument("--only", choices=["unary", "stream"])
    args = a.parse_args()
    creds = grpc.ssl_channel_credentials(open(args.ca, "rb").read(), open(args.key, "rb").read(), open(args.cert, "rb").read())
    md = (("authorization", "Bearer " + args.token),)
    req = request(args.model, args.features)
    async with grpc.aio.secure_channel(args.target, creds) as ch:
        stub = pbg.GRPCInferenceServiceStub(ch)
        await stub.ModelInfer(req, metadata=md)
        # unary: window concurrent calls
        sem = asyncio.Semaphore(args.window)
        async def one():
            async with sem: await stub.ModelInfer(req, metadata=md)
        if args.only != "stream":
          c0, t0 = cpu(args.server_pid), time.time()
          await asyncio.gather(*[one() for _ in range(args.n)])
          c1, t1 = cpu(args.server_pid), time.time()
          print(f"unary   calls/s={args.n/(t1-t0):.0f} server_cpu_us_per_msg={(c1-c0)/args.n*1e6:.1f}")
        if args.only == "unary": return
        # stream: window in flight on one stream
        call = stub.ModelStreamInfer(metadata=md)
        c0, t0 = cpu(args.server_pid), time.time()
        async def writer():
            for _ in range(args.n):
                await call.write(req)
            await call.done_writing()
        w = asyncio.ensure_future(writer())
        got = 0
        async for resp in call:
            if resp.error_message: print("error", resp.error_message); break
            got += 1
            if got == args.n: break
        await w
        c1, t1 = cpu(args.server_pid), time.time()
        print(f"stream  msgs/s={got/(t1-t0):.0f} server_cpu_us_per_msg={(c1-c0)/max(got,1)*1e6:.1f}")
asyncio.run(main())
