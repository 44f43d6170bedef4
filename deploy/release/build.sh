#!/usr/bin/env bash
# The release build of `palisade`, made to be reproducible (docs/release.md):
#
#   deploy/release/build.sh OUT_DIR      -> OUT_DIR/palisade (stripped) and OUT_DIR/palisade.sha256
#
# - the transitive package versions are checked against deploy/release/pins.json first (Package.swift pins the
#   direct ones with `exact:`);
# - the checkout's absolute path is mapped to /src in everything the compilers write (#file/#filePath strings,
#   debug info, C sources' __FILE__), so two clones in different directories build the same bytes;
# - the Swift standard library is linked statically, as in the image; symbols are stripped as the image strips them.
# SCRATCH=DIR uses another build directory (default .build-release-repro, kept apart from `make release`).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:?usage: deploy/release/build.sh OUT_DIR}
scratch=${SCRATCH:-$root/.build-release-repro}
cd "$root"
python3 deploy/release/check_pins.py
map="$root=/src"
flags=(-c release --static-swift-stdlib --product palisade --scratch-path "$scratch"
  -Xswiftc -file-prefix-map -Xswiftc "$map" -Xswiftc -debug-prefix-map -Xswiftc "$map"
  -Xcc "-ffile-prefix-map=$map" -Xcc "-fdebug-prefix-map=$map")
swift build "${flags[@]}"
bin=$(swift build "${flags[@]}" --show-bin-path)/palisade
mkdir -p "$out"
install -m 0755 "$bin" "$out/palisade"
strip --strip-all "$out/palisade"
(cd "$out" && sha256sum palisade > palisade.sha256)
cat "$out/palisade.sha256"
