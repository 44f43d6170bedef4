#!/usr/bin/env python3
"""Palisade soak: a real server under steady load while everything that changes in production changes.

Started by Benchmarks/soak.sh (see there for usage). One server process (mTLS, JWT, policy, audit log, signed
bundles) serves a signed digits MLP. After a short closed-loop run measures capacity, three callers (separate
processes, each with its own client certificate and token) call ModelInfer at 80% of it, open loop, while:

- a new model version is signed (`palisade bundle init/sign`) into the model repository and loaded
  (RepositoryModelLoad, which retires the old version) every SWAP seconds; the old bundle is deleted;
- the server certificate is re-issued and swapped on disk (a symlinked directory, as Kubernetes mounts secrets)
  every CERT seconds;
- a new token-signing key is published in the JWKS beside the old one, the callers get tokens signed with it,
  and the old key is retired from the JWKS, every JWKS seconds;
- the policy file is rewritten (a real change: a rate limit) every POLICY seconds.

Callers retry only UNAVAILABLE caused by their connection closing (the server ages connections out at
max_age_seconds); every other error is a failure. Every second the orchestrator samples the server's RSS and open
file descriptors (/proc/PID/status, /proc/PID/fd), its admin metrics (models in memory, per-version states) and
the callers' latencies. Writes a CSV, a JSON summary and (with matplotlib) a PNG plot.
"""

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

MODEL = "soak"
AUDIENCE = "palisade"
ISSUER = "https://soak.palisade.dev"
TRUST_DOMAIN = "spiffe://palisade.dev/ns/soak/sa"
# UNAVAILABLE details grpc-core gives when the connection under a call closed (GOAWAY at max age, then the socket);
# the only UNAVAILABLE callers retry. Palisade's own UNAVAILABLE (model not ready, circuit open) is a failure.
CONNECTION_CLOSED = re.compile(
    r"GOAWAY|goaway|Socket closed|Connection reset|connection reset|Broken pipe|Connection closed|"
    r"connection closed|Stream removed|Transport closed",
)
# A GOAWAY with an error code (ENHANCE_YOUR_CALM, PROTOCOL_ERROR...) is not an orderly close at max age: not retried.
GOAWAY_ERROR = re.compile(r"Error code: [1-9]")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def write_atomic(path, data, mode=0o644):
    tmp = f"{path}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    with open(tmp, "w") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# Callers (one process each)


def caller_main(args):
    """Runs one caller; reports per-second aggregates on `args['queue']`."""
    asyncio.run(_caller(args))


async def _caller(a):
    import grpc
    import numpy as np
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    rows = np.load(a["rows"]).astype(np.float32)
    with open(a["ca"], "rb") as f:
        ca = f.read()
    with open(a["cert"], "rb") as f:
        cert = f.read()
    with open(a["key"], "rb") as f:
        key = f.read()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    channel = grpc.aio.secure_channel(f"127.0.0.1:{a['port']}", creds)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    token = {"value": "", "mtime": 0.0}

    def load_token():
        m = os.stat(a["token"]).st_mtime
        if m != token["mtime"]:
            with open(a["token"]) as f:
                token["value"] = f.read().strip()
            token["mtime"] = m

    load_token()
    q = a["queue"]
    stats = {"ok": 0, "failed": 0, "retries": 0, "lat": [], "errors": []}
    index = [a["id"] * 997]

    def request():
        i = index[0] % len(rows)
        index[0] += 1
        r = service_pb2.ModelInferRequest(model_name=MODEL)
        t = r.inputs.add()
        t.name = a["input"]
        t.datatype = "FP32"
        t.shape.extend([1, rows.shape[1]])
        r.raw_input_contents.append(rows[i].tobytes())
        return r

    async def one():
        req = request()
        start = time.perf_counter()
        for attempt in range(4):
            try:
                await stub.ModelInfer(req, metadata=(("authorization", "Bearer " + token["value"]),), timeout=10)
                stats["ok"] += 1
                stats["lat"].append((time.perf_counter() - start) * 1000)
                return
            except grpc.aio.AioRpcError as e:
                details = e.details() or ""
                if (e.code() == grpc.StatusCode.UNAVAILABLE and CONNECTION_CLOSED.search(details)
                        and not GOAWAY_ERROR.search(details) and attempt < 3):
                    stats["retries"] += 1
                    continue
                stats["failed"] += 1
                if len(stats["errors"]) < 5:
                    stats["errors"].append(f"{e.code().name}: {details[:200]}")
                return
            except Exception as e:  # noqa: BLE001 - a client-side failure is a failure too
                stats["failed"] += 1
                if len(stats["errors"]) < 5:
                    stats["errors"].append(f"client: {e!r}"[:200])
                return

    # Every caller starts at the same moment, once its process is up (spawning takes seconds).
    await asyncio.sleep(max(0, a["start_at"] - time.time()))
    stop_at = time.monotonic() + a["duration"]
    next_report = math.floor(time.time()) + 1

    async def reporter():
        nonlocal next_report
        while True:
            await asyncio.sleep(max(0, next_report - time.time()))
            try:
                load_token()
            except OSError:
                pass
            q.put((a["id"], next_report - 1, stats["ok"], stats["failed"], stats["retries"], stats["lat"], stats["errors"]))
            stats.update(ok=0, failed=0, retries=0, lat=[], errors=[])
            next_report += 1

    rep = asyncio.create_task(reporter())
    # The same `concurrency` workers in both modes: unpaced they measure capacity; paced, each sends its next call
    # at its next slot (rate / concurrency per worker), or at once when it is behind. A Python client spawning a
    # task per call falls over long before the server does (measured: it drowned in its own backlog at 80%).
    n = a["concurrency"]

    async def worker(w):
        if a["mode"] == "closed":
            while time.monotonic() < stop_at:
                await one()
            return
        interval = n / a["rate"]
        due = time.monotonic() + w * interval / n
        while due < stop_at:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await one()
            due += interval

    await asyncio.gather(*(worker(w) for w in range(n)))
    # Last partial second.
    await asyncio.sleep(max(0, next_report - time.time()) + 0.05)
    rep.cancel()
    q.put((a["id"], next_report - 1, stats["ok"], stats["failed"], stats["retries"], stats["lat"], stats["errors"]))
    q.put((a["id"], None, 0, 0, 0, [], []))
    await channel.close()


# ---------------------------------------------------------------------------------------------------------------
# The soak


class Soak:
    def __init__(self, o):
        self.o = o
        self.bin = o.bin
        self.w = o.workdir
        self.pki = o.pki
        self.events = []  # (t, kind)
        self.lock = threading.Lock()
        self.version = 0
        self.cert_gen = 0
        self.key_gen = 0
        self.policy_gen = 0
        self.problems = []

    # -- setup ---------------------------------------------------------------------------------------------------
    def path(self, *p):
        return os.path.join(self.w, *p)

    def leaf(self, name, subject, ext):
        d = self.path("pki")
        key, csr, extf, out = (os.path.join(d, f"{name}.{s}") for s in ("key", "csr", "ext", "leaf"))
        run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key])
        os.chmod(key, 0o600)
        run(["openssl", "req", "-new", "-key", key, "-subj", subject, "-out", csr])
        with open(extf, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nauthorityKeyIdentifier=keyid\n")
            f.write("\n".join(ext) + "\n")
        run(["openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(self.pki, "intermediate-ca.pem"),
             "-CAkey", os.path.join(self.pki, "intermediate-ca.key"), "-CAcreateserial", "-CAserial",
             os.path.join(d, "ca.srl"), "-days", "2", "-sha256", "-extfile", extf, "-out", out])
        with open(out) as f, open(os.path.join(self.pki, "intermediate-ca.pem")) as i:
            chain = f.read() + i.read()
        for p in (csr, extf, out):
            os.remove(p)
        return chain, key

    def setup(self):
        shutil.rmtree(self.w, ignore_errors=True)
        for d in ("pki", "tokens", "models/" + MODEL, "state", "audit", "keys"):
            os.makedirs(self.path(d), exist_ok=True)
        os.chmod(self.path("keys"), 0o700)
        shutil.copy(os.path.join(self.pki, "ca-bundle.pem"), self.path("pki", "ca.pem"))
        shutil.copy(os.path.join(self.pki, "publisher.pub.pem"), self.path("keys", "publisher.pub.pem"))
        shutil.copy(os.path.join(self.pki, "audit.key"), self.path("keys", "audit.key"))
        # Callers and the operator that loads models: one certificate each.
        self.clients = {}
        for name in ["caller-1", "caller-2", "caller-3", "operator"]:
            chain, key = self.leaf(name, f"/O=Palisade Soak/CN={name}",
                                   ["extendedKeyUsage=clientAuth", f"subjectAltName=URI:{TRUST_DOMAIN}/{name}"])
            cert = self.path("pki", f"{name}.pem")
            with open(cert, "w") as f:
                f.write(chain)
            os.rename(key, self.path("pki", f"{name}.key"))
            self.clients[name] = (cert, self.path("pki", f"{name}.key"))
        self.rotate_server_cert(initial=True)
        self.rotate_jwks_add(initial=True)
        self.write_policy()
        # The model rows the callers send (the digits sample the bundle's statistics come from).
        import numpy as np
        csv = os.path.join(self.o.root, "Tests/Fixtures/digits_stream.csv")
        rows = np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.float32)
        np.save(self.path("rows.npy"), rows)
        self.sign_version(1)
        self.grpc_port, self.admin_port = free_port(), free_port()
        o = self.o
        with open(self.path("palisade.yaml"), "w") as f:
            f.write(f"""server:
  listen: "127.0.0.1:{self.grpc_port}"
  tls:
    certificate_chain: {self.path('tls', 'server.pem')}
    private_key: {self.path('tls', 'server.key')}
    client_ca_bundle: {self.path('pki', 'ca.pem')}
  connection:
    max_age_seconds: {o.max_age}
    max_age_grace_seconds: 5
# Queues deep enough that a stall of a second or two (a bundle verified and warmed on the same two cores) delays
# calls instead of shedding them: the soak looks for leaks and lost calls, not for the shedding threshold.
scheduling:
  queue_limit: 4096
  model_queue_limit: 2048
  principal_queue_share: 0.5
auth:
  audience: {AUDIENCE}
  issuers:
    - issuer: {ISSUER}
      jwks: {self.path('keys', 'jwks.json')}
policy:
  file: {self.path('policy.yaml')}
models:
  directories: [{self.path('models')}]
  state_file: {self.path('state', 'accepted.json')}
  unpack_directory: {self.path('state')}
  required: [{MODEL}]
  trust:
    - models: "{MODEL}"
      public_keys: [{self.path('keys', 'publisher.pub.pem')}]
audit:
  directory: {self.path('audit')}
  key: {self.path('keys', 'audit.key')}
  durability: batched
reload:
  interval_seconds: 1
admin:
  listen: "127.0.0.1:{self.admin_port}"
logging:
  format: json
  level: warning
""")

    def sign_version(self, v):
        out = self.path("models", MODEL, str(v))
        run([self.bin, "bundle", "init", "--model", os.path.join(self.o.root, "Tests/Fixtures/mlp_digits.onnx"),
             "--name", MODEL, "--version", str(v), "--max-batch", "64",
             "--stats", os.path.join(self.o.root, "Tests/Fixtures/digits_reference.npy"), "--out", out])
        run([self.bin, "bundle", "sign", out, "--key", os.path.join(self.pki, "publisher.key")])
        self.version = v

    def rotate_server_cert(self, initial=False):
        self.cert_gen += 1
        g = self.cert_gen
        d = self.path(f"tls-v{g}")
        os.makedirs(d)
        chain, key = self.leaf(f"server-{g}", "/O=Palisade Soak/CN=localhost",
                               ["extendedKeyUsage=serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        write_atomic(os.path.join(d, "server.pem"), chain)
        os.rename(key, os.path.join(d, "server.key"))
        link = self.path("tls")
        tmp = f"{link}.tmp"
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.symlink(d, tmp)
        os.rename(tmp, link)
        if g > 2:
            shutil.rmtree(self.path(f"tls-v{g - 2}"), ignore_errors=True)
        if not initial:
            self.event("cert")

    def jwks_of(self, gens):
        keys = []
        for g in gens:
            keys += json.loads(run([self.bin, "token", "jwks", "--key", self.path("keys", f"issuer-{g}.key"),
                                    "--kid", f"soak-{g}"]))["keys"]
        return json.dumps({"keys": keys})

    def rotate_jwks_add(self, initial=False):
        """Publishes a new key beside the current one and moves every caller to tokens signed with it."""
        self.key_gen += 1
        g = self.key_gen
        k = self.path("keys", f"issuer-{g}.key")
        run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", k])
        os.chmod(k, 0o600)
        before = None if initial else self.reloads("jwks")
        write_atomic(self.path("keys", "jwks.json"), self.jwks_of([g] if initial else [g - 1, g]))
        if not initial:
            self.wait_reload("jwks", before)
        self.mint_tokens(g)
        if not initial:
            self.event("jwks")

    def rotate_jwks_retire(self):
        g = self.key_gen
        before = self.reloads("jwks")
        write_atomic(self.path("keys", "jwks.json"), self.jwks_of([g]))
        self.wait_reload("jwks", before)
        os.remove(self.path("keys", f"issuer-{g - 1}.key"))

    def mint_tokens(self, g):
        for name, (cert, _) in self.clients.items():
            tok = run([self.bin, "token", "mint", "--key", self.path("keys", f"issuer-{g}.key"), "--kid", f"soak-{g}",
                       "--issuer", ISSUER, "--aud", AUDIENCE, "--bind-cert", cert, "--ttl", "600"]).strip()
            write_atomic(self.path("tokens", f"{name}.jwt"), tok + "\n", 0o600)

    def write_policy(self):
        self.policy_gen += 1
        # A real change each time: the callers' rate limit alternates between two values far above the load.
        limit = 100000 + (self.policy_gen % 2) * 1000
        write_atomic(self.path("policy.yaml"), f"""# generation {self.policy_gen}
version: 1
containment: {{screening: manifest, extraction: alert, quarantine_seconds: 60}}
rules:
  - name: operator
    principals: [{{spiffe: {TRUST_DOMAIN}/operator}}]
    rpcs: [RepositoryModelLoad, RepositoryModelUnload]
  - name: callers
    principals: [{{spiffe_prefix: {TRUST_DOMAIN}}}]
    rpcs: ["*"]
    rate_limit: {{per_second: {limit}, burst: {limit}}}
""")

    # -- server --------------------------------------------------------------------------------------------------
    def start_server(self):
        self.log = open(self.path("server.log"), "w")
        self.server = subprocess.Popen([self.bin, "serve", "--config", self.path("palisade.yaml")],
                                       stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise SystemExit(f"server exited at start; see {self.path('server.log')}")
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1).status == 200:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.2)
        raise SystemExit("server not ready within 120 s")

    def metrics(self):
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=2).read().decode()
        except Exception:  # noqa: BLE001
            return {}
        out = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out

    def reloads(self, kind, result="success"):
        return self.metrics().get(f'palisade_credential_reloads_total{{kind="{kind}",result="{result}"}}', 0)

    def wait_reload(self, kind, before, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.reloads(kind) > before:
                return
            time.sleep(0.1)
        self.problems.append(f"no successful {kind} reload within {timeout} s")

    def load_model(self):
        """RepositoryModelLoad as the operator: the server verifies the newest bundle and retires the old one."""
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        cert, key = self.clients["operator"]
        with open(self.path("pki", "ca.pem"), "rb") as f:
            ca = f.read()
        with open(cert, "rb") as f:
            c = f.read()
        with open(key, "rb") as f:
            k = f.read()
        with open(self.path("tokens", "operator.jwt")) as f:
            token = f.read().strip()
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=k, certificate_chain=c)
        with grpc.secure_channel(f"127.0.0.1:{self.grpc_port}", creds) as ch:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
            stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name=MODEL),
                                     metadata=(("authorization", "Bearer " + token),), timeout=60)
            if not hasattr(self, "input_name"):
                md = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=MODEL),
                                        metadata=(("authorization", "Bearer " + token),), timeout=10)
                self.input_name = md.inputs[0].name

    def swap_model(self):
        old = self.version
        self.sign_version(old + 1)
        self.load_model()
        shutil.rmtree(self.path("models", MODEL, str(old)), ignore_errors=True)
        self.event("swap")

    def event(self, kind):
        with self.lock:
            self.events.append((time.time(), kind))

    # -- sampling ------------------------------------------------------------------------------------------------
    def sample(self):
        pid = self.server.pid
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        m = self.metrics()
        return {
            "rss_kib": rss, "fds": fds,
            "models_in_memory": m.get("palisade_models_in_memory", -1),
            "queues": m.get('palisade_model_version_states{cache="scheduler"}', -1),
            "screens": m.get('palisade_model_version_states{cache="screening"}', -1),
            "connections": m.get("palisade_connections_open", -1),
        }

    # -- phases --------------------------------------------------------------------------------------------------
    def start_callers(self, mode, duration, rate=0.0, concurrency=4):
        """Starts the three callers; returns their queue, processes and the time they start calling."""
        ctx = mp.get_context("spawn")
        start_at = time.time() + 5
        q = ctx.Queue()
        procs = []
        for i in range(3):
            name = f"caller-{i + 1}"
            cert, key = self.clients[name]
            args = dict(id=i, cert=cert, key=key, token=self.path("tokens", f"{name}.jwt"), ca=self.path("pki", "ca.pem"),
                        port=self.grpc_port, rows=self.path("rows.npy"), input=self.input_name, mode=mode,
                        duration=duration, rate=rate, concurrency=concurrency, queue=q, start_at=start_at)
            p = ctx.Process(target=caller_main, args=(args,), daemon=True)
            p.start()
            procs.append(p)
        return q, procs, start_at

    def measure_capacity(self, seconds):
        q, procs, _ = self.start_callers("closed", seconds, concurrency=self.o.concurrency)
        per_sec = {}
        failed = 0
        done = 0
        while done < 3:
            cid, sec, ok, bad, _, _, _ = q.get(timeout=seconds + 60)
            if sec is None:
                done += 1
                continue
            per_sec[sec] = per_sec.get(sec, 0) + ok
            failed += bad
        for p in procs:
            p.join()
        secs = sorted(per_sec)[1:-1]  # drop the partial first and last seconds
        cap = sum(per_sec[s] for s in secs) / max(1, len(secs))
        if failed:
            self.problems.append(f"{failed} failures while measuring capacity")
        return cap

    def soak(self):
        o = self.o
        self.setup()
        self.start_server()
        self.load_model()  # learns the input name (and loads version 1 again: harmless)
        base = self.sample()
        print(f"server up: pid {self.server.pid}, RSS {base['rss_kib'] / 1024:.1f} MiB, {base['fds']} fds", flush=True)
        capacity = self.measure_capacity(o.capacity_seconds)
        rate = capacity * o.load
        print(f"capacity {capacity:.0f} calls/s (closed loop, 3 callers x {o.concurrency}); soaking at {rate:.0f} calls/s "
              f"for {o.duration} s", flush=True)
        q, procs, start = self.start_callers("open", o.duration, rate=rate / 3, concurrency=o.concurrency)
        time.sleep(max(0, start - time.time()))
        agg = {}  # second -> [ok, failed, retries, latencies]
        errors = []
        done = [0]

        def drain(block_until):
            while True:
                timeout = block_until - time.time()
                try:
                    cid, sec, ok, bad, retries, lat, errs = q.get(timeout=max(0.01, timeout)) if timeout > 0 else q.get_nowait()
                except Exception:  # noqa: BLE001 - queue.Empty
                    return
                if sec is None:
                    done[0] += 1
                    continue
                a = agg.setdefault(sec, [0, 0, 0, []])
                a[0] += ok
                a[1] += bad
                a[2] += retries
                a[3].extend(lat)
                errors.extend(errs)

        timers = {"swap": start + o.swap, "cert": start + o.cert, "jwks": start + o.jwks, "policy": start + o.policy}
        samples = []
        next_sample = math.floor(start) + 1
        # Events run on a thread of their own, so that sampling stays on time while a bundle is signed and loaded.
        actions = []
        action_lock = threading.Condition()

        def event_worker():
            while True:
                with action_lock:
                    while not actions:
                        action_lock.wait()
                    kind = actions.pop(0)
                if kind is None:
                    return
                try:
                    if kind == "swap":
                        self.swap_model()
                    elif kind == "cert":
                        before = self.reloads("server_certificate")
                        self.rotate_server_cert()
                        self.wait_reload("server_certificate", before)
                    elif kind == "jwks":
                        self.rotate_jwks_add()
                        # The old key is retired once the callers had time to pick up their new tokens.
                        def retire():
                            with action_lock:
                                actions.append("retire")
                                action_lock.notify()
                        threading.Timer(o.jwks_overlap, retire).start()
                    elif kind == "retire":
                        self.rotate_jwks_retire()
                    elif kind == "policy":
                        before = self.reloads("policy")
                        self.write_policy()
                        self.wait_reload("policy", before)
                        self.event("policy")
                except Exception as e:  # noqa: BLE001 - reported, the soak goes on
                    self.problems.append(f"{kind}: {e!r}"[:300])

        worker = threading.Thread(target=event_worker, daemon=True)
        worker.start()
        end = start + o.duration
        while time.time() < end:
            drain(next_sample)
            now = time.time()
            if now >= next_sample:
                s = self.sample()
                s["sec"] = next_sample
                s["t"] = round(next_sample - start, 3)
                samples.append(s)
                next_sample += 1
            for kind, due in list(timers.items()):
                if now >= due and now < end - 2:
                    with action_lock:
                        actions.append(kind)
                        action_lock.notify()
                    period = {"swap": o.swap, "cert": o.cert, "jwks": o.jwks, "policy": o.policy}.get(kind)
                    timers[kind] = due + period
        with action_lock:
            actions.append(None)
            action_lock.notify()
        worker.join(timeout=120)
        while done[0] < 3:
            drain(time.time() + 20)
            if all(not p.is_alive() for p in procs):
                drain(time.time() + 1)
                break
        for p in procs:
            p.join(timeout=10)
        # Load has stopped: every retired version must be gone from memory once its last calls ended.
        settled = {}
        for _ in range(50):
            settled = self.sample()
            if settled["models_in_memory"] <= 1 and settled["queues"] <= 1 and settled["screens"] <= 1:
                break
            time.sleep(0.1)
        final_metrics = self.metrics()
        self.server.send_signal(signal.SIGTERM)
        try:
            code = self.server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.server.kill()
            code = "killed"
        return self.report(base, capacity, rate, start, samples, agg, errors, settled, final_metrics, code)

    # -- results -------------------------------------------------------------------------------------------------
    @staticmethod
    def pct(values, p):
        if not values:
            return float("nan")
        v = sorted(values)
        return v[min(len(v) - 1, max(0, math.ceil(p / 100 * len(v)) - 1))]

    def report(self, base, capacity, rate, start, samples, agg, errors, settled, final_metrics, exit_code):
        o = self.o
        rows = []
        for s in samples:
            a = agg.get(s["sec"] - 1, [0, 0, 0, []])
            kinds = [k for (t, k) in self.events if math.floor(t) == s["sec"] - 1]
            rows.append(dict(s, calls=a[0], failures=a[1], retries=a[2], p50_ms=self.pct(a[3], 50),
                             p99_ms=self.pct(a[3], 99), events="+".join(kinds)))
        with open(o.csv, "w") as f:
            cols = ["t", "rss_kib", "fds", "calls", "failures", "retries", "p50_ms", "p99_ms", "models_in_memory",
                    "queues", "screens", "connections", "events"]
            f.write(",".join(cols) + "\n")
            for r in rows:
                f.write(",".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + "\n")
        calls = sum(a[0] for a in agg.values())
        failures = sum(a[1] for a in agg.values())
        retries = sum(a[2] for a in agg.values())
        lat = [x for a in agg.values() for x in a[3]]
        warm = [r for r in rows if r["t"] > o.warmup]
        warm_start = [r["rss_kib"] for r in warm[:10]]
        warm_end = [r["rss_kib"] for r in warm[-10:]]
        rss_warm = sum(warm_start) / max(1, len(warm_start))
        rss_end = sum(warm_end) / max(1, len(warm_end))
        growth = (rss_end - rss_warm) / rss_warm * 100 if rss_warm else float("nan")
        fds_all = [r["fds"] for r in rows]
        fds_warm = [r["fds"] for r in warm]
        windows = []
        w = o.window
        for i in range(0, len(rows), w):
            chunk = rows[i:i + w]
            ls = [x for r in chunk for x in agg.get(r["sec"] - 1, [0, 0, 0, []])[3]]
            if ls:
                windows.append((chunk[0]["t"], self.pct(ls, 99)))
        reload_failures = sum(v for k, v in final_metrics.items()
                              if k.startswith("palisade_credential_reloads_total") and 'result="failure"' in k)
        kinds = {}
        for _, k in self.events:
            kinds[k] = kinds.get(k, 0) + 1
        summary = {
            "duration_s": o.duration, "capacity_calls_per_s": round(capacity, 1), "load_calls_per_s": round(rate, 1),
            "load_share": o.load, "calls": calls, "failures": failures, "retries_connection_closed": retries,
            "error_samples": sorted(set(errors))[:10],
            "latency_ms": {"p50": round(self.pct(lat, 50), 2), "p99": round(self.pct(lat, 99), 2),
                           "p999": round(self.pct(lat, 99.9), 2), "max": round(max(lat), 2) if lat else None},
            f"p99_per_{w}s_window_ms": {"min": round(min(p for _, p in windows), 2) if windows else None,
                                        "median": round(self.pct([p for _, p in windows], 50), 2) if windows else None,
                                        "max": round(max(p for _, p in windows), 2) if windows else None},
            "rss_mib": {"start": round(base["rss_kib"] / 1024, 1), "after_warmup": round(rss_warm / 1024, 1),
                        "end": round(rss_end / 1024, 1), "max": round(max(r["rss_kib"] for r in rows) / 1024, 1)},
            "rss_growth_after_warmup_pct": round(growth, 2), "warmup_s": o.warmup,
            "fds": {"start": base["fds"], "min": min(fds_all), "max": max(fds_all),
                    "after_warmup_min": min(fds_warm) if fds_warm else None,
                    "after_warmup_max": max(fds_warm) if fds_warm else None,
                    "first_10s_after_warmup_max": max(fds_warm[:10]) if fds_warm else None,
                    "last_10s_max": max(fds_warm[-10:]) if fds_warm else None},
            "events": kinds, "model_versions_loaded": self.version,
            "models_in_memory_max": max(r["models_in_memory"] for r in rows),
            "after_load": {"models_in_memory": settled["models_in_memory"], "queues": settled["queues"],
                           "screens": settled["screens"]},
            "reload_failures": reload_failures, "problems": self.problems, "server_exit": exit_code,
        }
        checks = {
            "no failed calls": failures == 0 and calls > 0,
            "fds stable (last 10 s max <= first 10 s after warm-up max + 8)":
                bool(fds_warm) and max(fds_warm[-10:]) <= max(fds_warm[:10]) + 8,
            "unloaded versions released (1 model in memory, 1 queue, 1 screen once load stopped)":
                settled["models_in_memory"] == 1 and settled["queues"] <= 1 and settled["screens"] <= 1,
            # Events run one at a time; on a loaded machine (a debug build signing and loading bundles) they may
            # fall behind their period, but they must keep happening.
            "swaps and rotations happened": kinds.get("swap", 0) >= max(1, int(o.duration // o.swap) // 2)
                and kinds.get("cert", 0) >= 1 and kinds.get("jwks", 0) >= 1 and kinds.get("policy", 0) >= 1,
            "no reload failures or event problems": reload_failures == 0 and not self.problems,
            "server exited cleanly on SIGTERM": exit_code == 0,
        }
        if o.check_rss:
            checks["RSS growth after warm-up < 5%"] = growth < 5
        summary["checks"] = checks
        summary["passed"] = all(checks.values())
        with open(o.summary, "w") as f:
            json.dump(summary, f, indent=2)
        print(json.dumps(summary, indent=2))
        if o.plot:
            self.plot(rows, windows, start)
        return 0 if summary["passed"] else 1

    def plot(self, rows, windows, start):
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("no plot: matplotlib is missing (.venv/bin/pip install matplotlib)", file=sys.stderr)
            return
        t = [r["t"] for r in rows]
        fig, ax = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
        ax[0].plot(t, [r["rss_kib"] / 1024 for r in rows], color="tab:blue")
        ax[0].set_ylabel("RSS (MiB)")
        ax[0].axvline(self.o.warmup, color="gray", linestyle=":", linewidth=1)
        ax[1].plot(t, [r["fds"] for r in rows], color="tab:green")
        ax[1].set_ylabel("open fds")
        ax[2].plot([x for x, _ in windows], [p for _, p in windows], color="tab:red", drawstyle="steps-post",
                   label=f"p99 per {self.o.window} s")
        ax[2].plot(t, [r["p99_ms"] for r in rows], color="tab:red", alpha=0.25, linewidth=0.7, label="p99 per second")
        ax[2].set_ylabel("latency (ms)")
        ax[2].set_xlabel("seconds")
        ax[2].legend(loc="upper right", fontsize=8)
        colors = {"swap": "tab:purple", "cert": "tab:orange", "jwks": "tab:brown", "policy": "tab:olive"}
        seen = set()
        for when, kind in self.events:
            x = when - start
            for a in ax:
                a.axvline(x, color=colors.get(kind, "gray"), alpha=0.35, linewidth=0.8,
                          label=None if kind in seen or a is not ax[0] else kind)
            seen.add(kind)
        ax[0].legend(loc="lower right", fontsize=8, ncol=4)
        calls = sum(r["calls"] for r in rows)
        fails = sum(r["failures"] for r in rows)
        ax[0].set_title(f"Palisade soak: {self.o.duration} s, {calls} calls, {fails} failed; model swap every "
                        f"{self.o.swap} s, cert and JWKS rotation every {self.o.cert}/{self.o.jwks} s, policy every {self.o.policy} s",
                        fontsize=9)
        fig.tight_layout()
        fig.savefig(self.o.plot, dpi=110)
        print(f"plot: {self.o.plot}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("duration", type=int, nargs="?", default=600)
    p.add_argument("--bin", required=True)
    p.add_argument("--root", required=True, help="the repository (fixtures)")
    p.add_argument("--pki", required=True, help="the dev PKI (certs/out): CA, intermediate, publisher and audit keys")
    p.add_argument("--workdir", default="/tmp/palisade-soak")
    p.add_argument("--quick", action="store_true", help="short periods for a 60-second run (make test)")
    p.add_argument("--load", type=float, help="share of the measured capacity (default 0.8; 0.5 with --quick)")
    p.add_argument("--concurrency", type=int, default=4, help="calls in flight per caller while measuring capacity")
    p.add_argument("--csv")
    p.add_argument("--summary")
    p.add_argument("--plot")
    p.add_argument("--check-rss", action="store_true", help="fail when RSS grows 5%% or more after warm-up")
    o = p.parse_args()
    if o.quick:
        o.swap, o.cert, o.jwks, o.policy, o.jwks_overlap = 8, 15, 15, 20, 4
        o.capacity_seconds, o.warmup, o.window, o.max_age = 4, 15, 5, 12
    else:
        o.swap, o.cert, o.jwks, o.policy, o.jwks_overlap = 30, 60, 60, 90, 10
        o.capacity_seconds, o.warmup, o.window, o.max_age = 10, 60, 10, 45
    if o.load is None:
        o.load = 0.5 if o.quick else 0.8
    o.csv = o.csv or os.path.join(o.workdir + "-out", "soak.csv")
    o.summary = o.summary or os.path.join(o.workdir + "-out", "soak.json")
    for f in (o.csv, o.summary, o.plot):
        if f:
            os.makedirs(os.path.dirname(os.path.abspath(f)), exist_ok=True)
    soak = Soak(o)
    try:
        code = soak.soak()
    finally:
        srv = getattr(soak, "server", None)
        if srv is not None and srv.poll() is None:
            srv.kill()
    sys.exit(code)


if __name__ == "__main__":
    main()
