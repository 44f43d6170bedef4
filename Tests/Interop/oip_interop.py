#!/usr/bin/env python3
"""Unmodified Open Inference Protocol clients against Palisade over mTLS.

Drives tritonclient.grpc (binary/raw inputs, stream infer), plain grpcio stubs (typed `contents`), and the
standard grpc health checking client. Exits non-zero with a message on the first mismatch.
Usage: oip_interop.py --port P --cert C --key K --ca CA [--bad-cert C2 --bad-key K2]
"""
import argparse
import queue
import sys

import grpc
import numpy as np
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc


def check(condition, message):
    if not condition:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--bad-cert")
    ap.add_argument("--bad-key")
    args = ap.parse_args()
    url = f"localhost:{args.port}"
    auth = {"authorization": f"Bearer {args.token}"}
    grpc_auth = [("authorization", f"Bearer {args.token}")]
    client = triton.InferenceServerClient(
        url, ssl=True, root_certificates=args.ca, private_key=args.key, certificate_chain=args.cert)

    check(client.is_server_live(headers=auth), "is_server_live")
    check(client.is_server_ready(headers=auth), "is_server_ready")
    meta = client.get_server_metadata(headers=auth)
    check(meta.name == "palisade", f"server name {meta.name}")
    model = client.get_model_metadata("simple", headers=auth)
    check([i.name for i in model.inputs] == ["INPUT0", "INPUT1"], "model inputs")
    check(client.is_model_ready("simple", headers=auth), "is_model_ready")

    # Binary (raw_input_contents) inference, as tritonclient always sends.
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    inputs = [triton.InferInput("INPUT0", [1, 16], "INT32"), triton.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("simple", inputs, outputs=[triton.InferRequestedOutput("OUTPUT0")], headers=auth)
    check(np.array_equal(result.as_numpy("OUTPUT0"), a + b), "raw infer OUTPUT0")
    check(result.as_numpy("OUTPUT1") is None, "only the requested output returned")

    # FP16 and BYTES through tritonclient.
    h = np.array([[1.5, -2.0, 65504.0]], dtype=np.float16)
    fp16 = triton.InferInput("IN", [1, 3], "FP16")
    fp16.set_data_from_numpy(h)
    check(np.array_equal(client.infer("identity_fp16", [fp16], headers=auth).as_numpy("OUT"), h), "FP16 identity")
    s = np.array([[b"hello", b"", b"\x00\xff"]], dtype=np.object_)
    by = triton.InferInput("IN", [1, 3], "BYTES")
    by.set_data_from_numpy(s)
    check(list(client.infer("identity_bytes", [by], headers=auth).as_numpy("OUT").flatten()) == list(s.flatten()), "BYTES identity")

    # Without a token, or with a token for another certificate, calls are UNAUTHENTICATED.
    try:
        client.get_server_metadata()
        check(False, "call without a token accepted")
    except triton.InferenceServerException as e:
        check(e.status() == "StatusCode.UNAUTHENTICATED", f"no token: {e.status()}")
    check(client.is_server_live(), "ServerLive needs no token")

    # Errors arrive as the right status.
    try:
        client.infer("no-such-model", inputs, headers=auth)
        check(False, "unknown model accepted")
    except triton.InferenceServerException as e:
        check(e.status() == "StatusCode.NOT_FOUND", f"unknown model status {e.status()}")
    bad = triton.InferInput("INPUT0", [1, 16], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    try:
        client.infer("simple", [bad, inputs[1]], headers=auth)
        check(False, "wrong datatype accepted")
    except triton.InferenceServerException as e:
        check(e.status() == "StatusCode.INVALID_ARGUMENT" and "INPUT0" in e.message(), f"datatype: {e}")

    # Stream inference.
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)), headers=auth)
    for i in range(3):
        client.async_stream_infer("simple", inputs, request_id=str(i))
    got = [results.get(timeout=10) for _ in range(3)]
    client.stop_stream()
    for result, error in got:
        check(error is None, f"stream error {error}")
        check(np.array_equal(result.as_numpy("OUTPUT1"), a - b), "stream OUTPUT1")
    client.close()

    # Typed `contents` through plain grpcio stubs.
    credentials = grpc.ssl_channel_credentials(
        root_certificates=open(args.ca, "rb").read(), private_key=open(args.key, "rb").read(),
        certificate_chain=open(args.cert, "rb").read())
    with grpc.secure_channel(url, credentials) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="simple")
        for name, values in (("INPUT0", a), ("INPUT1", b)):
            tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            tensor.contents.int_contents.extend(values.flatten().tolist())
        response = stub.ModelInfer(request, metadata=grpc_auth)
        check(list(response.outputs[0].contents.int_contents) == (a + b).flatten().tolist(), "typed infer")
        check(len(response.raw_output_contents) == 0, "typed request gets typed response")
        health = health_pb2_grpc.HealthStub(channel)
        check(health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING, "health")
        check(health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")).status
              == health_pb2.HealthCheckResponse.SERVING, "health of the inference service")
        try:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
            check(False, "unknown health service answered")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, f"health unknown service {e.code()}")

    # A certificate without a SPIFFE identity: the handshake succeeds, every call is UNAUTHENTICATED.
    if args.bad_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=open(args.ca, "rb").read(), private_key=open(args.bad_key, "rb").read(),
            certificate_chain=open(args.bad_cert, "rb").read())
        with grpc.secure_channel(url, credentials) as channel:
            try:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerMetadata(service_pb2.ServerMetadataRequest(), metadata=grpc_auth)
                check(False, "identity-less certificate accepted")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.UNAUTHENTICATED, f"identity-less: {e.code()}")
    print("interop OK")


if __name__ == "__main__":
    main()
