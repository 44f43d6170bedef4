#!/usr/bin/env bash
# `make release-repro`: proves the release build reproducible (docs/release.md). Two clean clones of HEAD, in two
# directories of different lengths, each built with deploy/release/build.sh from nothing (their own build
# directories, dependencies fetched anew; build.sh mounts each on the canonical path /src in its own mount namespace);
# the stripped, normalised binaries must have the same SHA-256. On a difference it names the ELF sections that
# differ, so the cause can be found. Takes two full release builds (~15-30 min on 2 cores). WORK=DIR keeps the clones somewhere else than a new temporary directory; KEEP=1 keeps them afterwards.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${WORK:-$(mktemp -d /tmp/palisade-repro.XXXXXX)}
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
commit=$(git -C "$root" rev-parse HEAD)
[ -z "$(git -C "$root" status --porcelain --untracked-files=no)" ] || echo "repro.sh: note: uncommitted changes are not part of the check (HEAD $commit is)"
a="$work/a"
b="$work/second-clone-with-a-longer-path/b"
for dir in "$a" "$b"; do
  mkdir -p "$(dirname "$dir")"
  git clone -q --no-hardlinks "$root" "$dir"
  git -C "$dir" checkout -q "$commit"
done
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct "$commit")}
echo "repro.sh: building $commit in $a"
(cd "$a" && deploy/release/build.sh "$work/out-a" >/dev/null)
echo "repro.sh: building $commit in $b"
(cd "$b" && deploy/release/build.sh "$work/out-b" >/dev/null)
da=$(cut -d' ' -f1 "$work/out-a/palisade.sha256")
db=$(cut -d' ' -f1 "$work/out-b/palisade.sha256")
echo "first build:  $da"
echo "second build: $db"
if [ "$da" = "$db" ]; then
  echo "repro.sh: reproducible: both clones built palisade $da"
  exit 0
fi
echo "repro.sh: NOT reproducible; sections that differ:" >&2
python3 "$root/deploy/release/elf_sections.py" "$work/out-a/palisade" "$work/out-b/palisade" >&2 || true
exit 1
