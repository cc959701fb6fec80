#!/usr/bin/env python3
"""Hold N idle keep-alive connections to a server and report its RSS growth.

Used by bench/memory.sh. It opens N connections to 127.0.0.1:PORT in batches,
sends one request on each (HTTP/1.1, or h2c with prior knowledge) and reads
the answer, so each connection is a kept-alive client that has been served
once and now sits idle. It reads the server's RSS (/proc/PID/status) before
and after, waits --settle seconds, reads it again, then sends a second
request on every connection and counts the ones that answer 200. One line
of JSON on stdout:

    {"conns": N, "rss_before": B, "rss_after": A, "bytes_per_conn": (A-B)/N,
     "answered": K, "failed": N-K, "seconds": S}

Every socket operation has a timeout and the whole run a deadline
(--deadline), so a server that stops answering ends the run, not the bench.

    idle_client.py --port P --pid PID --conns 15000 [--proto h1|h2c]
"""
import argparse
import json
import selectors
import socket
import struct
import sys
import time

BATCH = 500


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS for pid %d" % pid)


# ---- HTTP/1.1 ----------------------------------------------------------------

H1_REQ = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def h1_done(buf):
    """(complete, status) for one Content-Length framed answer in BUF."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False, 0
    head = buf[:end].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return len(buf) >= end + 4 + length, status


# ---- h2c (prior knowledge), frames by hand ---------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def h2_headers(stream):
    # :method GET, :scheme http, :path / (static table), :authority literal
    # without indexing: nothing enters the dynamic tables.
    block = b"\x82\x86\x84\x01\x09127.0.0.1"
    return frame(1, 0x5, stream, block)  # END_STREAM | END_HEADERS


class Conn:
    __slots__ = ("sock", "buf", "done", "status", "stream")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.done = False
        self.status = 0
        self.stream = 0


def h2_feed(c, out):
    """Parses frames in c.buf: acknowledges SETTINGS, finds the answer's
    status and END_STREAM on c.stream. OUT collects bytes to send."""
    while len(c.buf) >= 9:
        length = int.from_bytes(c.buf[0:3], "big")
        if len(c.buf) < 9 + length:
            return
        ftype, flags = c.buf[3], c.buf[4]
        sid = int.from_bytes(c.buf[5:9], "big") & 0x7FFFFFFF
        payload = c.buf[9 : 9 + length]
        c.buf = c.buf[9 + length :]
        if ftype == 4 and not flags & 1:
            out.append(frame(4, 1, 0))
        elif ftype == 7:
            raise ConnectionError("GOAWAY")
        elif sid == c.stream and ftype == 1:
            # the status is the first field: an indexed :status (0x88 = 200)
            # or a literal; 200 is all this client expects
            c.status = 200 if payload[:1] == b"\x88" else -1
            if flags & 1:
                c.done = True
        elif sid == c.stream and ftype == 0 and flags & 1:
            c.done = True
        elif sid == c.stream and ftype == 3:
            raise ConnectionError("RST_STREAM")


def request_all(conns, proto, first, deadline):
    """Sends one request on every connection and waits for the answers;
    returns how many were 200."""
    sel = selectors.DefaultSelector()
    for c in conns:
        c.done, c.status, c.buf = False, 0, b""
        if proto == "h1":
            data = H1_REQ
        else:
            c.stream = 1 if first else c.stream + 2
            data = (PREFACE + frame(4, 0, 0) if first else b"") + h2_headers(c.stream)
        try:
            c.sock.sendall(data)
            sel.register(c.sock, selectors.EVENT_READ, c)
        except OSError:
            c.status = -1
            c.done = True
    pending = sum(1 for c in conns if not c.done)
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            c = key.data
            try:
                chunk = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                c.done, c.status = True, -1
            else:
                c.buf += chunk
                if proto == "h1":
                    c.done, c.status = h1_done(c.buf)
                else:
                    out = []
                    try:
                        h2_feed(c, out)
                        if out:
                            c.sock.sendall(b"".join(out))
                    except OSError:
                        c.done, c.status = True, -1
            if c.done:
                sel.unregister(c.sock)
                pending -= 1
    sel.close()
    return sum(1 for c in conns if c.done and c.status == 200)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="the server process whose RSS is read")
    ap.add_argument("--conns", type=int, default=15000)
    ap.add_argument("--proto", choices=("h1", "h2c"), default="h1")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds idle before the second RSS reading")
    ap.add_argument("--deadline", type=float, default=240.0, help="seconds for the whole run")
    a = ap.parse_args()
    t0 = time.monotonic()
    deadline = t0 + a.deadline
    before = rss_bytes(a.pid)
    conns = []
    answered_first = 0
    try:
        for start in range(0, a.conns, BATCH):
            batch = []
            for _ in range(min(BATCH, a.conns - start)):
                s = socket.create_connection(("127.0.0.1", a.port), timeout=10)
                s.setblocking(False)
                batch.append(Conn(s))
            conns.extend(batch)
            answered_first += request_all(batch, a.proto, True, deadline)
            if time.monotonic() > deadline:
                break
        time.sleep(a.settle)
        after = rss_bytes(a.pid)
        answered = request_all(conns, a.proto, False, deadline)
    finally:
        for c in conns:
            c.sock.close()
    n = len(conns)
    print(json.dumps({
        "proto": a.proto,
        "conns": n,
        "rss_before": before,
        "rss_after": after,
        "bytes_per_conn": round((after - before) / n) if n else 0,
        "answered_first": answered_first,
        "answered": answered,
        "failed": n - answered,
        "seconds": round(time.monotonic() - t0, 1),
    }))
    return 0 if n == a.conns and answered == n and answered_first == n else 1


if __name__ == "__main__":
    sys.exit(main())
