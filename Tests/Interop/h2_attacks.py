#!/usr/bin/env python3
"""Transport-level attacks against a running Palisade, from outside: mTLS and raw HTTP/2 frames (the `h2` library).

Each scenario prints one `RESULT <name> <json>` line; the Swift test that runs this script asserts on it.

  oversize      N streams each declaring a message over the limit: every one must end RESOURCE_EXHAUSTED.
  halfsent      streams declaring big messages and sending part of them: the in-flight budgets refuse the
                streams beyond them (per connection, then per principal), and the connection keeps working.
  bigheader     a 64 KiB header block on one stream: that stream is refused, the connection goes on.
  slowmessage   a message started and never finished: refused when the message deadline passes.
  streamunread  ModelStreamInfer from a client whose window is 0: the server must stop reading once answers pile up.
  resume        a TLS session resumed on reconnect: the server must not resume (no identity would follow), and a
                call on the new connection must succeed.
"""
import argparse
import json
import socket
import ssl
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

LIVE = "/inference.GRPCInferenceService/ServerLive"
INFER = "/inference.GRPCInferenceService/ModelInfer"


def tls_context(args):
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["h2"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class Client:
    def __init__(self, args, session=None, ctx=None):
        ctx = ctx or tls_context(args)
        raw = socket.create_connection(("127.0.0.1", args.port), timeout=30)
        self.tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.flush()
        self.streams = {}
        self.closed = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.tls.sendall(data)

    def open(self, path, token=None, extra=()):
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "https"), (":path", path), (":authority", "localhost"),
                   ("content-type", "application/grpc"), ("te", "trailers")]
        if token:
            headers.append(("authorization", "Bearer " + token))
        headers.extend(extra)
        self.conn.send_headers(sid, headers)
        self.streams[sid] = {"status": None, "message": None, "reset": None, "done": False}
        self.flush()
        return sid

    def send(self, sid, data, end=False):
        self.conn.send_data(sid, data, end_stream=end)
        self.flush()

    def send_when_possible(self, sid, data, timeout=10.0):
        """Sends `data` once flow control allows all of it."""
        deadline = time.time() + timeout
        while self.conn.local_flow_control_window(sid) < len(data):
            if time.time() > deadline or not self.read(0.2):
                return False
        self.send(sid, data)
        return True

    def read(self, timeout=5.0):
        """Reads once (up to `timeout`), handling events; returns False when the connection is gone."""
        self.tls.settimeout(timeout)
        try:
            data = self.tls.recv(1 << 20)
        except (socket.timeout, ssl.SSLWantReadError):
            return True
        except (ConnectionResetError, ssl.SSLError, OSError):
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        for event in self.conn.receive_data(data):
            self.handle(event)
        self.flush()
        return True

    def handle(self, event):
        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            s = self.streams.get(event.stream_id)
            if s is not None:
                for k, v in event.headers:
                    if k == "grpc-status":
                        s["status"] = int(v)
                    elif k == "grpc-message":
                        s["message"] = v
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            if event.stream_id in self.streams:
                self.streams[event.stream_id]["done"] = True
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.streams:
                self.streams[event.stream_id]["reset"] = int(event.error_code)
                self.streams[event.stream_id]["done"] = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    def wait(self, sids, timeout=15.0):
        deadline = time.time() + timeout
        while time.time() < deadline and not all(self.streams[s]["done"] for s in sids):
            if not self.read(0.5):
                break

    def push(self, sid, total, chunk=1 << 16, stop_when_done=True):
        """Sends `total` body bytes on `sid` as flow control allows; stops early if the stream is answered."""
        sent = 0
        idle = 0
        while sent < total:
            s = self.streams[sid]
            if stop_when_done and (s["done"] or s["status"] is not None):
                break
            try:
                window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            except Exception:
                break
            if window <= 0:
                if not self.read(0.5):
                    break
                idle += 1
                if idle > 40:
                    break
                continue
            idle = 0
            n = min(window, chunk, total - sent)
            try:
                self.send(sid, b"\0" * n)
            except Exception:
                break
            sent += n
        return sent

    def unary(self, path, message=b"", token=None, extra=()):
        sid = self.open(path, token, extra)
        self.send(sid, struct.pack(">BI", 0, len(message)) + message, end=True)
        self.wait([sid])
        return self.streams[sid]


def result(name, value):
    print("RESULT", name, json.dumps(value), flush=True)


def oversize(args):
    c = Client(args)
    codes = []
    for _ in range(args.repeat):
        sid = c.open(INFER, args.token)
        c.send(sid, struct.pack(">BI", 0, args.limit + 1) + b"\0" * 1024)
        c.wait([sid])
        codes.append(c.streams[sid]["status"])
    live = c.unary(LIVE)
    result("oversize", {"codes": codes, "live_after": live["status"], "connection_closed": c.closed})


def halfsent(args):
    outcomes = []
    conns = [Client(args) for _ in range(args.connections)]
    for c in conns:
        for _ in range(args.streams):
            sid = c.open(INFER, args.token)
            if c.send_when_possible(sid, struct.pack(">BI", 0, args.declared)):
                c.push(sid, args.send)
    for c in conns:
        c.wait([s for s in c.streams], timeout=5)
        for sid, s in sorted(c.streams.items()):
            outcomes.append({"status": s["status"], "message": s["message"]})
    lives = [c.unary(LIVE)["status"] for c in conns]
    result("halfsent", {"streams": outcomes, "live_after": lives})


def heldwhole(args):
    """Streams whose one message is whole but whose request never ends (no END_STREAM), without a token."""
    c = Client(args)
    sids = []
    for _ in range(args.streams):
        sid = c.open(INFER, None)
        if c.send_when_possible(sid, struct.pack(">BI", 0, args.send)):
            c.push(sid, args.send, stop_when_done=False)
        sids.append(sid)
    c.wait(sids, timeout=args.wait)
    outcomes = [{"status": c.streams[s]["status"], "message": c.streams[s]["message"]} for s in sids]
    live = c.unary(LIVE)
    result("heldwhole", {"streams": outcomes, "live_after": live["status"]})


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def streamunread(args):
    """ModelStreamInfer with the client's stream window at 0 (no answer can reach it), sending --size byte messages
    for as long as the server's flow control lets it, up to --send bytes or --wait seconds; reports how much got
    through."""
    c = Client(args)
    c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    c.flush()
    sid = c.open("/inference.GRPCInferenceService/ModelStreamInfer", args.token)
    # model_name "simple", no inputs (each answered with an error message on the stream), padded to --size bytes
    # with an unknown field (15, bytes), which protobuf readers skip.
    pad = max(0, args.size - 8 - 1 - 4)
    body = b"\x0a\x06simple" + b"\x7a" + varint(pad) + b"x" * pad
    message = struct.pack(">BI", 0, len(body)) + body
    sent = 0
    deadline = time.time() + args.wait
    # In DATA frames of at most the peer's frame size, each sent once flow control allows it.
    while sent < args.send and not c.closed and not c.streams[sid]["done"]:
        chunk = message[sent % len(message):][:c.conn.max_outbound_frame_size]
        left = deadline - time.time()
        try:
            if left <= 0 or not c.send_when_possible(sid, chunk, timeout=left):
                break
        except h2.exceptions.StreamClosedError:
            break  # the server ended the stream (its answer waits behind the zero window)
        sent += len(chunk)
    s = c.streams[sid]
    result("streamunread", {"sent": sent, "connection_closed": c.closed, "status": s["status"], "reset": s["reset"]})


def bigheader(args):
    c = Client(args)
    first = c.unary(LIVE)
    big = c.unary(LIVE, extra=[("x-padding", "a" * (64 << 10))])
    after = c.unary(LIVE)
    result("bigheader", {"first": first["status"], "big": big["status"], "big_message": big["message"],
                         "after": after["status"], "connection_closed": c.closed})


def slowmessage(args):
    c = Client(args)
    sid = c.open(INFER, args.token)
    c.send(sid, struct.pack(">BI", 0, 100) + b"\0" * 10)
    c.wait([sid], timeout=args.wait)
    s = c.streams[sid]
    result("slowmessage", {"status": s["status"], "message": s["message"]})


def resume(args):
    ctx = tls_context(args)  # one context: Python resumes only sessions of the same context
    first = Client(args, ctx=ctx)
    ok1 = first.unary(LIVE)
    # Give the server the chance to send session tickets, then keep whatever session the client has.
    first.read(0.5)
    session = first.tls.session
    first.tls.close()
    second = Client(args, session=session, ctx=ctx)
    ok2 = second.unary(LIVE)
    result("resume", {"first": ok1["status"], "second": ok2["status"], "reused": second.tls.session_reused,
                      "tickets": bool(session is not None and session.has_ticket)})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["oversize", "halfsent", "heldwhole", "streamunread", "bigheader", "slowmessage", "resume"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--token")
    p.add_argument("--limit", type=int, default=64 << 20)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--declared", type=int, default=60 << 20)
    p.add_argument("--send", type=int, default=16 << 20)
    p.add_argument("--size", type=int, default=1024, help="streamunread: bytes per message body")
    p.add_argument("--wait", type=float, default=10)
    args = p.parse_args()
    globals()[args.scenario](args)


if __name__ == "__main__":
    sys.exit(main())
