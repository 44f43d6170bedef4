#!/usr/bin/env python3
"""An independent check of Palisade's audit log, standard library only (hashlib, base64, json, struct).

It shares no code with the Swift implementation and follows RFC 6962's recursive definitions (MTH, PATH,
SUBPROOF) rather than the bit-walking verifiers of RFC 9162.

  rfc6962_check.py inclusion FILE|-     verify `palisade audit prove` output
  rfc6962_check.py consistency FILE|-   verify `palisade audit consistency` output
  rfc6962_check.py log LOGDIR           re-read the segments (frames, CRC-32C), recompute MTH for every
                                        checkpoint's size and compare with its signed root (the Ed25519
                                        signature itself is checked by `openssl pkeyutl`, see docs/audit.md)
  rfc6962_check.py roots HEX...         print MTH of each prefix of the given leaf data (hex), one per line

Exit status 0 when everything verifies, 1 otherwise.
"""
import base64
import hashlib
import json
import os
import struct
import sys


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2), by counting."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: list) -> bytes:
    """MTH over leaf hashes."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = split(n)
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def root_from_path(m: int, n: int, leaf: bytes, path: list) -> bytes:
    """Inverts PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])  or  PATH(m-k, D[k:n]) : MTH(D[0:k])."""
    if n == 1:
        if path:
            raise ValueError("proof too long")
        return leaf
    if not path:
        raise ValueError("proof too short")
    k = split(n)
    if m < k:
        return node_hash(root_from_path(m, k, leaf, path[:-1]), path[-1])
    return node_hash(path[-1], root_from_path(m - k, n - k, leaf, path[:-1]))


def roots_from_consistency(m: int, n: int, old_root: bytes, proof: list):
    """Inverts SUBPROOF(m, D[n], true); returns (MTH(D[0:m]), MTH(D[0:n])) as the proof implies them."""
    stack = list(proof)

    def sub(m, n, complete):
        if m == n:
            if complete:
                return old_root, old_root
            if not stack:
                raise ValueError("proof too short")
            h = stack.pop()
            return h, h
        if not stack:
            raise ValueError("proof too short")
        k = split(n)
        if m <= k:
            right = stack.pop()
            old, new = sub(m, k, complete)
            return old, node_hash(new, right)
        left = stack.pop()
        old, new = sub(m - k, n - k, False)
        return node_hash(left, old), node_hash(left, new)

    old, new = sub(m, n, True)
    if stack:
        raise ValueError("proof too long")
    return old, new


def checkpoint_fields(note: str):
    lines = note.split("\n")
    return lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)


def load(arg: str) -> dict:
    return json.load(sys.stdin if arg == "-" else open(arg))


def check_inclusion(doc: dict) -> None:
    record = doc["record"].encode("utf-8")
    leaf = leaf_hash(record)
    assert leaf.hex() == doc["leaf_hash"], "leaf hash is not SHA-256(0x00 || record)"
    path = [bytes.fromhex(h) for h in doc["audit_path"]]
    m, n = doc["leaf_index"], doc["tree_size"]
    assert 0 <= m < n, "index outside the tree"
    root = root_from_path(m, n, leaf, path)
    assert root.hex() == doc["root_hash"], "audit path does not lead to the root"
    _, size, signed_root = checkpoint_fields(doc["checkpoint"])
    assert size == n and signed_root == root, "root or size differs from the checkpoint"


def check_consistency(doc: dict) -> None:
    m, n = doc["first_size"], doc["second_size"]
    first, second = bytes.fromhex(doc["first_root"]), bytes.fromhex(doc["second_root"])
    proof = [bytes.fromhex(h) for h in doc["proof"]]
    if m == n:
        assert not proof and first == second
    elif m == 0:
        assert not proof and first == hashlib.sha256(b"").digest()
    else:
        old, new = roots_from_consistency(m, n, first, proof)
        assert old == first, "proof does not reproduce the first root"
        assert new == second, "proof does not reproduce the second root"
    for key, size, root in (("first_checkpoint", m, first), ("second_checkpoint", n, second)):
        if key in doc:
            _, s, r = checkpoint_fields(doc[key])
            assert s == size and r == root, f"{key} differs"


CRC_TABLE = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    CRC_TABLE.append(c)


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def frames(path: str, magic: bytes):
    data = open(path, "rb").read()
    assert data[:8] == magic, f"{path}: bad header"
    first = struct.unpack(">Q", data[8:16])[0]
    off, expected = 16, first
    while off < len(data):
        assert data[off:off + 4] == b"PAL1", f"{path}@{off}: bad frame magic"
        length, index = struct.unpack(">IQ", data[off + 4:off + 16])
        end = off + 20 + length
        assert end <= len(data), f"{path}@{off}: incomplete frame"
        (crc,) = struct.unpack(">I", data[end - 4:end])
        assert crc == crc32c(data[off + 4:end - 4]), f"{path}@{off}: CRC mismatch"
        assert index == expected, f"{path}@{off}: index {index}, expected {expected}"
        yield index, data[off + 16:end - 4]
        off, expected = end, expected + 1


def check_log(directory: str) -> None:
    leaves = []
    for name in sorted(os.listdir(directory)):
        if name.startswith("segment-") and name.endswith(".log"):
            for index, payload in frames(os.path.join(directory, name), b"PALAUDIT"):
                assert index == len(leaves), f"{name}: record {index} out of sequence"
                json.loads(payload)
                leaves.append(leaf_hash(payload))
    checkpoints = 0
    cp_path = os.path.join(directory, "checkpoints.log")
    if os.path.exists(cp_path) and os.path.getsize(cp_path) > 0:
        for _, note in frames(cp_path, b"PALCHKPT"):
            _, size, root = checkpoint_fields(note.decode("utf-8"))
            assert size <= len(leaves), f"checkpoint of size {size} but only {len(leaves)} records"
            assert mth(leaves[:size]) == root, f"checkpoint of size {size}: root differs from the records"
            checkpoints += 1
    print(f"OK: {len(leaves)} records, {checkpoints} checkpoints match, root {mth(leaves).hex()}")


def main(argv: list) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if argv[1] == "inclusion":
            check_inclusion(load(argv[2]))
            print("inclusion OK")
        elif argv[1] == "consistency":
            check_consistency(load(argv[2]))
            print("consistency OK")
        elif argv[1] == "log":
            sys.setrecursionlimit(10000)
            check_log(argv[2])
        elif argv[1] == "roots":
            leaves = [leaf_hash(bytes.fromhex(h)) for h in argv[2:]]
            for n in range(len(leaves) + 1):
                print(mth(leaves[:n]).hex())
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (AssertionError, ValueError, KeyError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
