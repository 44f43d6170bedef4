#!/usr/bin/env python3
"""grpcio calls to Palisade that carry W3C `traceparent` headers, for the tracing tests.

Sends, over mTLS with the bearer token:
  1. ModelInfer on MODEL with raw input bytes --input-hex and `traceparent: --traceparent-ok` (must succeed),
  2. ModelInfer on an unknown model with `traceparent: --traceparent-missing` (must be NOT_FOUND),
  3. ModelStreamInfer with one MODEL request and `traceparent: --traceparent-stream` (must succeed),
  4. ModelInfer on MODEL without a traceparent (must succeed),
  5. ModelInfer on MODEL with a malformed traceparent and a tracestate (must succeed).
Prints "traced calls OK"; exits non-zero with a message on the first surprise.
Usage: traced_call.py --port P --cert C --key K --ca CA --token T --model M --input NAME --shape 1,64
       --input-hex HEX --traceparent-ok TP1 --traceparent-missing TP2 --traceparent-stream TP3
"""
import argparse
import sys

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc


def check(condition, message):
    if not condition:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    for name in ["port", "cert", "key", "ca", "token", "model", "input", "shape", "input-hex", "traceparent-ok",
                 "traceparent-missing", "traceparent-stream"]:
        ap.add_argument(f"--{name}", required=True)
    args = ap.parse_args()
    with open(args.ca, "rb") as f:
        ca = f.read()
    with open(args.key, "rb") as f:
        key = f.read()
    with open(args.cert, "rb") as f:
        cert = f.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    channel = grpc.secure_channel(f"localhost:{args.port}", credentials)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    auth = ("authorization", f"Bearer {args.token}")

    def request(model):
        r = service_pb2.ModelInferRequest(model_name=model, id="traced-call")
        r.inputs.add(name=args.input, datatype="FP32", shape=[int(d) for d in args.shape.split(",")])
        r.raw_input_contents.append(bytes.fromhex(args.input_hex))
        return r

    reply = stub.ModelInfer(request(args.model), metadata=[auth, ("traceparent", args.traceparent_ok)], timeout=30)
    check(reply.model_name == args.model, f"ModelInfer answered for {reply.model_name}")

    try:
        stub.ModelInfer(request("absent"), metadata=[auth, ("traceparent", args.traceparent_missing)], timeout=30)
        check(False, "ModelInfer on an unknown model succeeded")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.NOT_FOUND, f"unknown model: {e.code()}")

    replies = list(stub.ModelStreamInfer(
        iter([request(args.model)]), metadata=[auth, ("traceparent", args.traceparent_stream)], timeout=30))
    check(len(replies) == 1 and replies[0].error_message == "", f"stream replies {replies}")

    reply = stub.ModelInfer(request(args.model), metadata=[auth], timeout=30)
    check(reply.model_name == args.model, "ModelInfer without traceparent")

    # A malformed traceparent (and a tracestate) must not fail the call: it starts a new trace.
    reply = stub.ModelInfer(request(args.model), metadata=[
        auth, ("traceparent", "00-not-a-trace-context-SECRET"), ("tracestate", "vendor=SECRET")], timeout=30)
    check(reply.model_name == args.model, "ModelInfer with a malformed traceparent")
    print("traced calls OK")


if __name__ == "__main__":
    main()
