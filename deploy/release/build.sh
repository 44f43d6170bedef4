#!/usr/bin/env bash
# The release build of `palisade`, made to be reproducible (docs/release.md):
#
#   deploy/release/build.sh OUT_DIR      -> OUT_DIR/palisade (stripped, normalised) and OUT_DIR/palisade.sha256
#
# - the transitive package versions are checked against deploy/release/pins.json first (Package.swift pins the
#   direct ones with `exact:`);
# - the build runs with the checkout at the canonical path /src, whatever directory it was cloned into. Swift 6.3's
#   -file-prefix-map rewrites debug info but not the `#file`/`#filePath` strings (and the lengths the optimiser
#   folds from them) that Swift code, ours and our dependencies', carries into messages, so a checkout path would
#   otherwise end up in the code. The image build works in /src already; elsewhere the checkout is bind-mounted on
#   /src in a private mount namespace (`unshare`: root, or a user namespace), which nobody else sees. The prefix maps
#   stay on for the C targets and for debug info;
# - the Swift standard library is linked statically, as in the image; symbols are stripped as the image strips
#   them; then normalize_elf.py removes `.swift_modhash` (swiftc's incremental-build cache key, a hash of the
#   compiler invocation that nothing reads at run time) and recomputes the build-id from the content.
# SCRATCH=DIR uses another build directory (default .build-release-repro, kept apart from `make release`); it must
# be inside the checkout for the build to be reproducible (its path is compiled in as well).
# PALISADE_REPRO_PATH=DIR uses another canonical path than /src (both builds to compare must use the same one).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:?usage: deploy/release/build.sh OUT_DIR}
canonical=${PALISADE_REPRO_PATH:-/src}
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ "${PALISADE_REPRO_INSIDE:-}" != 1 ] && [ "$root" != "$canonical" ]; then
  # Re-run this script inside a private mount namespace where the checkout is $canonical. The mount point must
  # exist: as root, an empty directory is made once; otherwise say what to do.
  if [ ! -d "$canonical" ]; then
    if [ "$(id -u)" = 0 ]; then
      mkdir -p "$canonical"
    else
      echo "build.sh: the reproducible build mounts the checkout on $canonical, which does not exist;" \
        "create it once (sudo mkdir $canonical) or set PALISADE_REPRO_PATH to an existing empty directory" >&2
      exit 2
    fi
  fi
  command -v unshare >/dev/null || { echo "build.sh: unshare (util-linux) is needed to build at $canonical" >&2; exit 2; }
  ns=(unshare --mount --propagation private)
  [ "$(id -u)" = 0 ] || ns=(unshare --user --map-root-user --mount --propagation private)
  # OUT_DIR may sit under the checkout or anywhere else: the namespace only adds a mount, it hides nothing.
  exec "${ns[@]}" -- bash -c 'mount --bind "$1" "$2" && cd "$2" && PALISADE_REPRO_INSIDE=1 exec deploy/release/build.sh "$3"' \
    build.sh "$root" "$canonical" "$out"
fi

cd "$root"
scratch=${SCRATCH:-$root/.build-release-repro}
case "$scratch" in
  "$root"/*) ;;
  *) echo "build.sh: note: SCRATCH=$scratch is outside the checkout; its path is compiled in, so this build is" \
    "reproducible only from the same SCRATCH" >&2 ;;
esac
python3 deploy/release/check_pins.py
map="$root=$canonical"
flags=(-c release --static-swift-stdlib --product palisade --scratch-path "$scratch"
  -Xswiftc -file-prefix-map -Xswiftc "$map" -Xswiftc -debug-prefix-map -Xswiftc "$map"
  -Xcc "-ffile-prefix-map=$map" -Xcc "-fdebug-prefix-map=$map")
swift build "${flags[@]}"
bin=$(swift build "${flags[@]}" --show-bin-path)/palisade
install -m 0755 "$bin" "$out/palisade"
strip --strip-all "$out/palisade"
python3 deploy/release/normalize_elf.py "$out/palisade" >&2
(cd "$out" && sha256sum palisade > palisade.sha256)
cat "$out/palisade.sha256"
