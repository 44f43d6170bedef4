#!/usr/bin/env python3
"""A minimal OTLP/gRPC trace receiver for the tracing tests (opentelemetry-proto + grpcio).

Listens on 127.0.0.1 (an ephemeral port unless --port), prints "otlp receiver listening port N", and for every
Export request appends the request's serialized bytes (length-prefixed) to --raw and one JSON line per span to
--out: trace_id, span_id, parent_span_id (hex), name, kind, status_code, status_message and attributes
({key: value}); resource attributes go into "resource". Runs until killed.
Usage: otlp_receiver.py --out SPANS.jsonl --raw REQUESTS.bin [--port P]
"""
import argparse
import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out, raw):
        self.out = out
        self.raw = raw
        self.lock = threading.Lock()

    def Export(self, request, context):
        data = request.SerializeToString()
        lines = []
        for rs in request.resource_spans:
            resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    lines.append(json.dumps({
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": s.kind,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "status_code": s.status.code,
                        "status_message": s.status.message,
                        "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                        "resource": resource,
                    }))
        with self.lock:
            with open(self.raw, "ab") as f:
                f.write(len(data).to_bytes(4, "big") + data)
            with open(self.out, "a") as f:
                for line in lines:
                    f.write(line + "\n")
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(args.out, args.raw), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"otlp receiver listening port {port}", flush=True)
    sys.stdout.flush()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
