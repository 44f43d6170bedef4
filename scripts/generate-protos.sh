#!/usr/bin/env bash
# Regenerates the Swift code for proto/*.proto into Sources/PalisadeProto and Sources/PalisadeRuntimeProto.
# The output is committed; CI never runs this. It builds swift-protobuf's and grpc-swift-protobuf's protoc
# plugins in their own scratch path (about 2 minutes the first time) and needs Debian's protobuf-compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler" >&2; exit 1; }
scratch=.build-plugins
swift build --scratch-path "$scratch" --product protoc-gen-swift
swift build --scratch-path "$scratch" --product protoc-gen-grpc-swift-2
bin=$(swift build --scratch-path "$scratch" --show-bin-path)
out=Sources/PalisadeProto
rm -f "$out"/*.pb.swift "$out"/*.grpc.swift
protoc --proto_path=proto \
  --plugin=protoc-gen-swift="$bin/protoc-gen-swift" \
  --plugin=protoc-gen-grpc-swift-2="$bin/protoc-gen-grpc-swift-2" \
  --swift_opt=Visibility=Public --swift_out="$out" \
  --grpc-swift-2_opt=Visibility=Public,Server=true,Client=true --grpc-swift-2_out="$out" \
  proto/grpc_service.proto proto/health.proto proto/palisade.proto
echo "generated: $(ls "$out")"
