#!/usr/bin/env bash
# Assembles the runtime root filesystem of the Palisade image: the `palisade` binary, the shared libraries it
# needs (per ldd, copied from the machine that built it, so glibc and the rest match exactly), the dynamic loader,
# the CA store, /etc/passwd and /etc/group lines for the two non-root users, and the empty directories the
# manifests mount over. Nothing else: no shell, no package manager. The Containerfile runs this in its builder stage and
# copies the result into `scratch`; the image runtime test runs it to build the same tree for a chroot.
#
#   deploy/container/make-rootfs.sh BINARY OUT_DIR
#
# Users: 65532 palisade (the server), 65533 palisade-egress (the sidecar; a different UID so that the pod's
# iptables rules can tell the two apart).
set -euo pipefail
binary=${1:?usage: make-rootfs.sh BINARY OUT_DIR}
out=${2:?usage: make-rootfs.sh BINARY OUT_DIR}
[ -x "$binary" ] || { echo "make-rootfs.sh: $binary is not an executable" >&2; exit 1; }
command -v ldd >/dev/null || { echo "make-rootfs.sh: ldd is required" >&2; exit 1; }

mkdir -p "$out"/usr/local/bin "$out"/etc/palisade "$out"/var/lib/palisade "$out"/models "$out"/tmp
install -m 0755 "$binary" "$out/usr/local/bin/palisade"
# Symbols off (about 185 MB to a fraction; crash reports lose names). STRIP=0 keeps them.
if [ "${STRIP:-1}" != 0 ] && command -v strip >/dev/null; then strip --strip-all "$out/usr/local/bin/palisade"; fi

# Every absolute path ldd names (libraries and the loader), at the same path, links resolved.
libs=$(ldd "$binary" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u)
# The TSS's TCTI loader opens the TPM transport library at run time (dlopen, invisible to ldd): the kernel device
# one (attestation.tpm.tcti device:/dev/tpmrm0, docs/attestation.md), and what it links.
tcti=$(ldconfig -p 2>/dev/null | awk '/libtss2-tcti-device\.so\.0 / { print $NF; exit }')
if [ -n "$tcti" ]; then
  libs=$(printf '%s\n' $libs "$tcti" $(ldd "$tcti" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }') | sort -u)
fi
if [ -z "$libs" ]; then echo "make-rootfs.sh: ldd found no libraries (is $binary static?)" >&2; fi
for lib in $libs; do
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
  chmod 0755 "$out$lib"
done
# The SBOM of exactly this tree (docs/release.md): the Swift packages and toolchain the binary was built from, the
# Debian packages of the files copied beside it, and the installed binary's digest. The server reports its SHA-256
# in attestation evidence (share/palisade beside bin/). SBOM=0 skips it (it needs python3, swift and dpkg).
if [ "${SBOM:-1}" != 0 ]; then
  mkdir -p "$out/usr/local/share/palisade"
  python3 "$(dirname "$0")/../release/sbom.py" --binary "$out/usr/local/bin/palisade" \
    --out "$out/usr/local/share/palisade/sbom.cdx.json" --libs $libs /etc/ssl/certs/ca-certificates.crt
  chmod 0644 "$out/usr/local/share/palisade/sbom.cdx.json"
fi

# The loader's cache for the copied libraries, when ldconfig can make one (the search falls back to the default
# directories without it).
if command -v ldconfig >/dev/null; then
  dirs=$(for lib in $libs; do dirname "$lib"; done | sort -u)
  mkdir -p "$out/etc"
  printf '%s\n' $dirs > "$out/etc/ld.so.conf"
  ldconfig -r "$out" 2>/dev/null || true
fi

# The CA store: the egress sidecar verifies the destinations it reaches with it (tls.ca_file unset), and the
# server's TLS library loads the platform trust store when it builds a context (without one, `serve` fails with
# "unknownError([])", although client certificates are verified only against client_ca_bundle).
ca_store=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca_store" ]; then
  mkdir -p "$out/etc/ssl/certs"
  cp -L "$ca_store" "$out$ca_store"
  chmod 0644 "$out$ca_store"
else
  echo "make-rootfs.sh: $ca_store not found (apt-get install ca-certificates): palisade serve needs a CA store" >&2
  exit 1
fi

cat > "$out/etc/passwd" <<PASSWD
root:x:0:0:root:/nonexistent:/sbin/nologin
palisade:x:65532:65532:palisade server:/nonexistent:/sbin/nologin
palisade-egress:x:65533:65533:palisade egress sidecar:/nonexistent:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
cat > "$out/etc/group" <<GROUP
root:x:0:
palisade:x:65532:
palisade-egress:x:65533:
nogroup:x:65534:
GROUP
printf 'hosts: files dns\n' > "$out/etc/nsswitch.conf"
chmod 1777 "$out/tmp"
chmod 0755 "$out/etc/palisade" "$out/var/lib/palisade" "$out/models"
echo "rootfs in $out: $(find "$out" -type f | wc -l) files, $(du -sh "$out" | cut -f1)"
