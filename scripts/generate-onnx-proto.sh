#!/usr/bin/env bash
# Regenerates Sources/PalisadeONNXProto/onnx.pb.swift from proto/onnx.proto (the ONNX subset the model runtime
# reads). The output is committed; CI never runs this. Builds swift-protobuf's protoc plugin in its own scratch
# path (.build-plugins, shared with scripts/generate-protos.sh) and needs Debian's protobuf-compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler" >&2; exit 1; }
scratch=.build-plugins
swift build --scratch-path "$scratch" --product protoc-gen-swift
bin=$(swift build --scratch-path "$scratch" --show-bin-path)
out=Sources/PalisadeONNXProto
mkdir -p "$out"
rm -f "$out"/*.pb.swift
protoc --proto_path=proto \
  --plugin=protoc-gen-swift="$bin/protoc-gen-swift" \
  --swift_opt=Visibility=Public --swift_out="$out" \
  proto/onnx.proto
echo "generated: $(ls "$out")"
