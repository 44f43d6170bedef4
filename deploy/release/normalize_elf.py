#!/usr/bin/env python3
"""Removes what the Swift compiler writes into a binary that is not a function of the sources (docs/release.md).

    normalize_elf.py BINARY          rewrites BINARY in place (run after `strip`)

1. `.swift_modhash`: swiftc's IRGen puts a 16-byte hash of each object's LLVM module there, for one purpose: on an
   incremental rebuild it compares the hash with the one in the existing object file and skips code generation when
   they are equal. The hash covers the compiler's invocation (the object file's path, the build directory), so two
   clones in different directories, or even two `swiftc` runs with different temporary files, get different bytes.
   Nothing reads the section at run time (the linker keeps it only because it is marked "used"), so it is removed,
   as embedded Swift toolchains do.
2. `.note.gnu.build-id`: the linker hashes the output *with* the module hashes in it, so its value follows them.
   It is recomputed here as SHA-1 over the normalised file with the build-id bytes zeroed (the same construction as
   `debugedit --build-id`), so it still names the binary's content, and two equal builds carry equal ids.

Exit status 0 on success; 2 with a message naming the problem for a file that is not a 64-bit little-endian ELF.
"""
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile


def fail(message):
    print(f"normalize_elf.py: {message}", file=sys.stderr)
    sys.exit(2)


def sections(data):
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        fail("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shoff == 0 or shentsize != 64 or shstrndx >= shnum or shoff + shnum * 64 > len(data):
        fail("no usable section header table")
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * 64) for i in range(shnum)]
    names_offset = headers[shstrndx][4]

    def name(h):
        start = names_offset + h[0]
        return data[start:data.index(b"\0", start)].decode("ascii", "replace")

    # (name, type, file offset, size)
    return [(name(h), h[1], h[4], h[5]) for h in headers]


def recompute_build_id(path):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    note = [s for s in sections(data) if s[0] == ".note.gnu.build-id"]
    if not note:
        return None
    _, _, offset, size = note[0]
    namesz, descsz, kind = struct.unpack_from("<III", data, offset)
    desc = offset + 12 + (namesz + 3) // 4 * 4
    if kind != 3 or desc + descsz > offset + size:
        fail(".note.gnu.build-id is not an NT_GNU_BUILD_ID note")
    data[desc:desc + descsz] = bytes(descsz)
    digest = hashlib.sha1(data).digest()
    while len(digest) < descsz:  # an id longer than SHA-1 (e.g. --build-id=0x... with 32 bytes)
        digest += hashlib.sha1(digest).digest()
    data[desc:desc + descsz] = digest[:descsz]
    with open(path, "r+b") as f:
        f.write(data)
    return digest[:descsz].hex()


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = sys.argv[1]
    with open(path, "rb") as f:
        names = {s[0] for s in sections(f.read())}
    if ".swift_modhash" in names:
        objcopy = shutil.which("objcopy") or shutil.which("llvm-objcopy")
        if objcopy is None:
            fail("objcopy (binutils) or llvm-objcopy is needed to remove .swift_modhash")
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)))
        os.close(fd)
        try:
            subprocess.run([objcopy, "--remove-section", ".swift_modhash", path, tmp], check=True)
            shutil.copymode(path, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    build_id = recompute_build_id(path)
    print(f"normalize_elf.py: {path}: .swift_modhash removed, build-id {build_id or 'absent'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
