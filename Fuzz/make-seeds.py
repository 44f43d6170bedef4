#!/usr/bin/env python3
"""Makes the fuzz seed corpora (Fuzz/corpus/<target>/) and the public key material the targets check them against
(Sources/PalisadeFuzzTargets/FuzzKeys.swift).

Every key is a throwaway made here and dropped at exit: only public keys, certificates, signatures and tokens are
written, never a private key. Rerunning makes new keys, so the corpus and FuzzKeys.swift are remade together.
Needs the .venv (cryptography, tritonclient, model_signing) and the zstd command.

  .venv/bin/python Fuzz/make-seeds.py
"""
import base64, datetime, hashlib, json, os, shutil, struct, subprocess, sys, tarfile, tempfile, io

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
import tritonclient.grpc.service_pb2 as pb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "Fuzz", "corpus")
FIX = os.path.join(ROOT, "Tests", "Fixtures")
NOW = int(datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc).timestamp())
ISSUER, AUDIENCE, TRUST_DOMAIN = "https://issuer.fuzz.test", "palisade-fuzz", "fuzz.test"
CLIENT_ID = "spiffe://fuzz.test/ns/demo/sa/client"
THUMBPRINT = hashlib.sha256(b"palisade fuzz client certificate").digest()
CANARY, SECRET = "palisade-canary-7f3a9c2e", "fuzz-secret-value-0123456789"

shutil.rmtree(CORPUS, ignore_errors=True)


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def pub_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


# ---------------------------------------------------------------- ModelInfer requests
def tensor(name, dt, shape, **contents):
    t = pb.ModelInferRequest.InferInputTensor(name=name, datatype=dt, shape=shape)
    for k, v in contents.items():
        getattr(t.contents, k).extend(v)
    return t


def request(model, inputs, raw=None, outputs=(), rid="r1", params=None):
    r = pb.ModelInferRequest(model_name=model, model_version="1", id=rid)
    r.inputs.extend(inputs)
    if raw is not None:
        r.raw_input_contents.extend(raw)
    for o in outputs:
        r.outputs.append(pb.ModelInferRequest.InferRequestedOutputTensor(name=o))
    return r.SerializeToString()


digits = open(os.path.join(FIX, "mlp_digits.b1.input.bin"), "rb").read()[:256]
vals = list(struct.unpack("<64f", digits))
put("infer-request", "digits-typed", request("digits", [tensor("input", "FP32", [1, 64], fp32_contents=vals)], outputs=["label"]))
put("infer-request", "digits-raw", request("digits", [tensor("input", "FP32", [1, 64])], raw=[digits]))
put("infer-request", "digits-batch2-raw", request("digits", [tensor("input", "FP32", [2, 64])], raw=[digits * 2], outputs=["probabilities", "label"]))
half = struct.pack("<4e", 0.5, -0.25, 1.0, 0.0)
bf = b"".join(struct.pack("<f", v)[2:] for v in (0.5, -2.0, 3.0, 1.0))
put("infer-request", "half-bf16-raw", request("half", [tensor("x", "FP16", [1, 4]), tensor("y", "BF16", [1, 4])], raw=[half, bf]))
put("infer-request", "half-bf16-nan", request("half", [tensor("x", "FP16", [1, 4]), tensor("y", "BF16", [1, 4])], raw=[b"\x00\x7e" * 4, b"\x80\x7f" * 4]))
framed = b"".join(struct.pack("<I", len(s)) + s for s in (b"hello", b"", "wörld".encode()))
put("infer-request", "text-bytes-raw", request("text", [tensor("text", "BYTES", [3]), tensor("ids", "INT64", [1, 3])], raw=[framed, struct.pack("<3q", 1, -2, 3)]))
put("infer-request", "text-bytes-typed", request("text", [tensor("text", "BYTES", [2], bytes_contents=[b"a", b"bc"]), tensor("ids", "INT64", [1, 3], int64_contents=[1, 2, 3])]))
put("infer-request", "mixed-typed", request("mixed", [
    tensor("b", "BOOL", [2], bool_contents=[True, False]), tensor("u8", "UINT8", [3], uint_contents=[1, 2, 255]),
    tensor("i16", "INT16", [1, 2], int_contents=[-5, 7]), tensor("u32", "UINT32", [1], uint_contents=[4000000000]),
    tensor("u64", "UINT64", [1], uint64_contents=[2**63]), tensor("f64", "FP64", [1, 2], fp64_contents=[1.5, -2.5]),
    tensor("i8", "INT8", [2], int_contents=[-128, 127]), tensor("u16", "UINT16", [0]), tensor("i32", "INT32", [1], int_contents=[-1])]))
put("infer-request", "mixed-raw", request("mixed", [
    tensor("b", "BOOL", [2]), tensor("u8", "UINT8", [3]), tensor("i16", "INT16", [1, 2]), tensor("u32", "UINT32", [1]),
    tensor("u64", "UINT64", [1]), tensor("f64", "FP64", [1, 2]), tensor("i8", "INT8", [2]), tensor("u16", "UINT16", [1]),
    tensor("i32", "INT32", [1])],
    raw=[b"\x01\x00", b"\x01\x02\xff", struct.pack("<2h", -5, 7), struct.pack("<I", 7), struct.pack("<Q", 9),
         struct.pack("<2d", 1.5, -2.5), b"\x80\x7f", b"\x01\x00", struct.pack("<i", -1)]))
put("infer-request", "shape-mismatch", request("digits", [tensor("input", "FP32", [1, 63], fp32_contents=vals[:63])]))

# ---------------------------------------------------------------- ONNX models (the fixtures' small ones)
for name in ("glue_ops.onnx", "mlp_torch_ext.onnx", "mlp_digits.onnx", "cnn_torch.onnx"):
    put("onnx-model", name, open(os.path.join(FIX, name), "rb").read())

# ---------------------------------------------------------------- signed bundles
bundle_key = ec.generate_private_key(ec.SECP256R1())
work = tempfile.mkdtemp()
bundle = os.path.join(work, "bundle")
os.makedirs(bundle)
manifest = {
    "schema": "palisade.bundle/v1", "name": "digits", "version": 1, "created": "2026-01-01T00:00:00Z",
    "expires": "2099-01-01T00:00:00Z", "model_file": "model.onnx",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64],
                "feature_range": {"min": [0] * 64, "max": [16] * 64},
                "reference_statistics": {"mean": [1.0] * 64, "std": [2.0] * 64}}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}, {"name": "label", "datatype": "INT64", "shape": [-1]}],
    "labels": [str(i) for i in range(10)],
    "output_policy": {"top_k": 3, "round_decimals": 3, "label_only": False, "pad_to_bucket_bytes": 64},
    "screening_policy": {"ood_threshold": 6.5, "action": "flag"},
    "max_batch": 64, "canary_tokens": ["canary-digits-1"],
}
mjson = json.dumps(manifest, indent=2).encode()
open(os.path.join(bundle, "manifest.json"), "wb").write(mjson)
# A small model keeps the archive seed small; the signature covers it like any other.
shutil.copy(os.path.join(FIX, "glue_ops.onnx"), os.path.join(bundle, "model.onnx"))
keyfile = os.path.join(work, "key.pem")
open(keyfile, "wb").write(bundle_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
subprocess.run([sys.executable, "-m", "model_signing", "sign", "key", bundle, "--private_key", keyfile,
                "--signature", os.path.join(bundle, "model.sig")], check=True, capture_output=True)
os.remove(keyfile)
sig = open(os.path.join(bundle, "model.sig"), "rb").read()
put("bundle-signature", "model-sig-key", sig)
env = json.loads(sig)
put("bundle-signature", "statement-only", base64.b64decode(env["dsseEnvelope"]["payload"]))
put("bundle-manifest", "manifest-full", mjson)
minimal = {k: manifest[k] for k in ("schema", "name", "version", "created", "expires", "model_file", "inputs", "outputs")}
minimal["inputs"] = [{"name": "x", "datatype": "BYTES", "shape": [-1]}]
put("bundle-manifest", "manifest-minimal", json.dumps(minimal))
lo = dict(manifest, output_policy={"label_only": True}, screening_policy={"ood_threshold": 3, "action": "reject"}, allow_empty_dimensions=True)
put("bundle-manifest", "manifest-label-only", json.dumps(lo, separators=(",", ":")))

tar_bytes = io.BytesIO()
with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as t:
    for name in ("model.sig", "manifest.json", "model.onnx"):
        info = t.gettarinfo(os.path.join(bundle, name), arcname=name)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o644
        with open(os.path.join(bundle, name), "rb") as f:
            t.addfile(info, f)
raw_tar = tar_bytes.getvalue()
zst = subprocess.run(["zstd", "-q", "-c", "-3"], input=raw_tar, capture_output=True, check=True).stdout
put("bundle-archive", "signed-tar", b"\x01" + raw_tar)
put("bundle-archive", "signed-tar-zst", b"\x00" + zst)
shutil.rmtree(work)

# ---------------------------------------------------------------- tokens and JWKS
es256, es384, eddsa = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate()


def jwk(key, kid):
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw), "kid": kid, "use": "sig", "alg": "EdDSA"}
    n = key.curve.key_size // 8 + (1 if key.curve.key_size % 8 else 0)
    nums = key.public_key().public_numbers()
    crv, alg = ("P-256", "ES256") if key.curve.key_size == 256 else ("P-384", "ES384")
    return {"kty": "EC", "crv": crv, "x": b64u(nums.x.to_bytes(n, "big")), "y": b64u(nums.y.to_bytes(n, "big")), "kid": kid, "use": "sig", "alg": alg}


jwks = {"keys": [jwk(es256, "es256-1"), jwk(es384, "es384-1"), jwk(eddsa, "ed-1")]}


def mint(key, kid, claims, header=None):
    if isinstance(key, ed25519.Ed25519PrivateKey):
        alg = "EdDSA"
    else:
        alg = "ES256" if key.curve.key_size == 256 else "ES384"
    h = {"alg": alg, "typ": "JWT", "kid": kid}
    h.update(header or {})
    signing_input = (b64u(json.dumps(h, separators=(",", ":")).encode()) + "." + b64u(json.dumps(claims, separators=(",", ":")).encode())).encode()
    if alg == "EdDSA":
        sig = key.sign(signing_input)
    else:
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256() if alg == "ES256" else hashes.SHA384())))
        n = 32 if alg == "ES256" else 48
        sig = r.to_bytes(n, "big") + s.to_bytes(n, "big")
    return signing_input.decode() + "." + b64u(sig)


base = {"iss": ISSUER, "sub": "client-a", "aud": AUDIENCE, "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 600,
        "jti": "t-1", "scope": "inference:demo read", "cnf": {"x5t#S256": b64u(THUMBPRINT)}}
put("jwt", "es256-oauth", mint(es256, "es256-1", base))
put("jwt", "es384-oauth-aud-list", mint(es384, "es384-1", dict(base, aud=["other", AUDIENCE], scp=["a", "b"]) ))
put("jwt", "eddsa-oauth", mint(eddsa, "ed-1", base, {"typ": "at+jwt"}))
spiffe = {"sub": CLIENT_ID, "aud": [AUDIENCE], "iat": NOW - 10, "exp": NOW + 300}
put("jwt", "eddsa-spiffe-no-iss", mint(eddsa, "ed-1", spiffe))
put("jwt", "es256-spiffe", mint(es256, "es256-1", dict(spiffe, iss="spiffe://" + TRUST_DOMAIN)))
put("jwt", "expired", mint(es256, "es256-1", dict(base, exp=NOW - 3600, iat=NOW - 3700, nbf=NOW - 3700)))
put("jwt", "wrong-binding", mint(es256, "es256-1", dict(base, cnf={"x5t#S256": b64u(b"\x00" * 32)})))
put("jwt", "alg-none", b64u(b'{"alg":"none","typ":"JWT"}') + "." + b64u(json.dumps(base).encode()) + ".")
put("jwks", "three-keys", json.dumps(jwks, indent=1))
put("jwks", "one-key", json.dumps({"keys": [jwk(es384, "k")]}))
put("jwks", "private-key-refused", json.dumps({"keys": [dict(jwk(eddsa, "d"), d="AAAA")]}))

# ---------------------------------------------------------------- YAML files
for src, target in (("deploy/policy.example.yaml", "policy"), ("deploy/local/policy.yaml", "policy"),
                    ("deploy/palisade.example.yaml", "server-config"), ("deploy/local/palisade.yaml", "server-config"),
                    ("deploy/local/palisade-netns.yaml", "server-config"),
                    ("deploy/egress.example.yaml", "egress-config"), ("deploy/local/egress.yaml", "egress-config"),
                    ("deploy/local/egress-netns.yaml", "egress-config")):
    put(target, os.path.basename(src), open(os.path.join(ROOT, src), "rb").read())

EGRESS_YAML = f"""listen:
  host: 127.0.0.1
  port: 3128
destinations:
  - name: collector
    scheme: https
    host: collector.example.com
    methods: [POST, PUT]
    path_prefixes: [/v1/checkpoints/]
    byte_budget:
      bytes: 1048576
      window_seconds: 60
  - name: tunnel
    host: 10.0.0.7
    port: 8443
    allow_private: true
    allow_connect: true
inspection:
  canary_tokens: []
  block_private_keys: true
  block_jwts: true
  decode_base64: true
  decode_hex: true
  high_entropy:
    enabled: true
    min_length: 128
    min_bits_per_char: 5.0
"""
put("egress-config", "fuzz-egress", EGRESS_YAML)

# ---------------------------------------------------------------- egress requests and bodies
pem_key_text = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA" + "A" * 42 + "\n-----END PRIVATE KEY-----\n"
der_like = bytes.fromhex("302e020100300506032b657004220420") + bytes(range(32))
token = mint(es256, "es256-1", base)


def http(method, uri, body=b"", headers=()):
    h = [f"{method} {uri} HTTP/1.1", "Host: collector.example.com"] + list(headers)
    if body:
        h.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(h) + "\r\n\r\n").encode() + body


put("egress-http", "post-json", http("POST", "https://collector.example.com/v1/checkpoints/1", b'{"size":3,"root":"abc"}', ["Content-Type: application/json"]))
put("egress-http", "connect", http("CONNECT", "10.0.0.7:8443"))
put("egress-http", "chunked", b"PUT http://collector.example.com/v1/checkpoints/x?y=1 HTTP/1.1\r\nHost: collector.example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
put("egress-http", "gzip-refused", http("POST", "https://collector.example.com/v1/checkpoints/", b"\x1f\x8b\x08\x00", ["Content-Encoding: gzip, br"]))
put("egress-http", "pipelined", http("GET", "https://collector.example.com/v1/checkpoints/%2e%2e/a") + http("POST", "https://user@collector.example.com:99999/", b"x"))
put("egress-http", "leak-key-b64", http("POST", "https://collector.example.com/v1/checkpoints/", base64.b64encode(der_like), [f"Authorization: Bearer {token}"]))
put("egress-http", "origin-form", b"GET /v1/checkpoints/ HTTP/1.0\r\n\r\n")
put("egress-inspector", "pem-private-key", pem_key_text)
put("egress-inspector", "der-key-hex", der_like.hex())
put("egress-inspector", "der-key-hex-colons", ":".join(f"{b:02x}" for b in der_like))
put("egress-inspector", "jwt", "token=" + token)
put("egress-inspector", "canary-b64", base64.b64encode(("x" + CANARY + "y").encode()))
put("egress-inspector", "secret", "value: " + SECRET)
put("egress-inspector", "private-jwk", json.dumps(dict(jwk(eddsa, "k"), d="nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")))
put("egress-inspector", "high-entropy", base64.b64encode(hashlib.sha512(b"a").digest() * 8))

# ---------------------------------------------------------------- audit log
audit_key = ed25519.Ed25519PrivateKey.generate()
audit_pub = audit_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
AUDIT_NAME = "palisade-fuzz-audit"
key_hash = hashlib.sha256(AUDIT_NAME.encode() + b"\n\x01" + audit_pub).digest()[:4]
vk_blob = base64.b64encode(bytes([1]) + audit_pub).decode()
verifier_key = f"{AUDIT_NAME}+{key_hash.hex()}+{vk_blob}"


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def frame(index, payload):
    body = struct.pack(">IQ", len(payload), index) + payload
    return b"PAL1" + body + struct.pack(">I", crc32c(body))


def rfc3339(micros):
    s, us = divmod(micros, 1_000_000)
    return datetime.datetime.fromtimestamp(s, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{us:06d}Z"


records = [
    {"cert_sha256": THUMBPRINT.hex(), "input_sha256": hashlib.sha256(b"in").hexdigest(), "kind": "call", "latency_us": 812,
     "manifest_sha256": hashlib.sha256(mjson).hexdigest(), "model": "digits", "output_sha256": hashlib.sha256(b"out").hexdigest(),
     "principal": CLIENT_ID, "request_id": "req-1", "rpc": "ModelInfer", "status": "OK", "time": rfc3339(NOW * 10**6 + 1), "token_id": "t-1", "version": "1"},
    {"details": {"reason": "signature", "path": "/models/x"}, "kind": "model_refused", "model": "x", "reason": "no trust rule \"x\"\n", "time": rfc3339(NOW * 10**6 + 2)},
    {"kind": "policy_reload", "principal": "operator", "time": rfc3339(NOW * 10**6 + 3)},
]
payloads = [json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() for r in records]
for i, p in enumerate(payloads):
    put("audit-record", f"record-{i}", p)
segment = b"PALAUDIT" + struct.pack(">Q", 0) + b"".join(frame(i, p) for i, p in enumerate(payloads))
put("audit-segment", "three-records", segment)
put("audit-segment", "torn-tail", segment[:-7])
put("audit-segment", "empty", b"PALAUDIT" + struct.pack(">Q", 0))


def leaf(d):
    return hashlib.sha256(b"\x00" + d).digest()


def node(a, b):
    return hashlib.sha256(b"\x01" + a + b).digest()


def mth(leaves):
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


def note(size):
    text = f"{AUDIT_NAME}\n{size}\n{base64.b64encode(mth([leaf(p) for p in payloads[:size]])).decode()}\ntime {rfc3339(NOW * 10**6 + 5)}\n"
    sig = audit_key.sign(text.encode())
    blob = base64.b64encode(key_hash + sig).decode()
    return text + "\n" + "\u2014 " + AUDIT_NAME + " " + blob + "\n"


put("audit-checkpoint", "size-3", note(3))
put("audit-checkpoint", "size-1-cosigned", note(1) + "\u2014 other " + base64.b64encode(b"abcd" + bytes(64)).decode() + "\n")
put("audit-checkpoint", "verifier-key", verifier_key)

# ---------------------------------------------------------------- PEM and certificates
ca_key = ec.generate_private_key(ec.SECP384R1())
leaf_key = ec.generate_private_key(ec.SECP256R1())
start = datetime.datetime.fromtimestamp(NOW - 86400, datetime.timezone.utc)
end = datetime.datetime.fromtimestamp(NOW + 365 * 86400, datetime.timezone.utc)
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Palisade fuzz CA")])
ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
      .serial_number(1).not_valid_before(start).not_valid_after(end)
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
      .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
      .sign(ca_key, hashes.SHA384()))
leaf_cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz")])).issuer_name(ca_name)
             .public_key(leaf_key.public_key()).serial_number(2).not_valid_before(start).not_valid_after(end)
             .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(CLIENT_ID)]), critical=False)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .sign(ca_key, hashes.SHA384()))
ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
leaf_pem = leaf_cert.public_bytes(serialization.Encoding.PEM).decode()
put("pem", "chain", leaf_pem + ca_pem)
put("pem", "ca", ca_pem)
put("pem", "p256-public", pub_pem(leaf_key))
put("pem", "p384-public-certtool-preamble", "Public Key Info:\n\tPublic Key Algorithm: EC/ECDSA\n\tCurve:\tSECP384R1\n\n" + pub_pem(ca_key))
put("pem", "ed25519-public", pub_pem(audit_key))
put("pem", "spiffe-id", CLIENT_ID)

# ---------------------------------------------------------------- the public half, for the targets
def swift_string(s):
    return '"""\n' + s.replace("\\", "\\\\") + '"""'


swift = f"""// Generated by Fuzz/make-seeds.py with the seed corpora in Fuzz/corpus: the public halves of the throwaway keys
// that signed them (the private halves were never written). Regenerate both together.
import Foundation

enum FuzzKeys {{
  /// The instant every time check uses (2026-12-01T00:00:00Z).
  static let now = {NOW}
  static let bundlePublicKeyPEM = {swift_string(pub_pem(bundle_key))}
  static let jwks = #\"\"\"
{json.dumps(jwks)}
\"\"\"#
  static let issuer = "{ISSUER}"
  static let audience = "{AUDIENCE}"
  static let trustDomain = "{TRUST_DOMAIN}"
  static let clientSPIFFEID = "{CLIENT_ID}"
  static let clientThumbprint: [UInt8] = [{", ".join(str(b) for b in THUMBPRINT)}]
  static let auditVerifierKey = "{verifier_key}"
  static let canary = "{CANARY}"
  static let secret = "{SECRET}"
  static let egressConfigYAML = #\"\"\"
{EGRESS_YAML}\"\"\"#
}}
"""
with open(os.path.join(ROOT, "Sources", "PalisadeFuzzTargets", "FuzzKeys.swift"), "w") as f:
    f.write(swift)
total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(CORPUS) for fn in fns)
print(f"corpus: {sum(len(f) for _, _, f in os.walk(CORPUS))} files, {total} bytes")
