#!/usr/bin/env bash
# One JSON log line, formatted now and as before (see main.swift). Builds against the release build's Logging and
# PalisadeSupport objects (`swift build -c release --product palisade` first); not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/../.."
r=.build/release
[ -d "$r/PalisadeSupport.build" ] || swift build -c release --product palisade >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# SwiftPM names the package after its directory: `package` declarations need the same name here.
swiftc -O -package-name "$(basename "$PWD" | tr "[:upper:]" "[:lower:]")" -I "$r/Modules" Benchmarks/logline/main.swift "$r"/Logging.build/*.o \
  "$r"/PalisadeSupport.build/*.o -o "$out/logline"
"$out/logline"
