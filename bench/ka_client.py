#!/usr/bin/env python3
"""Send sequential keep-alive GETs over one TCP connection and check each reply.

Used by bench/callgrind.sh as a client small enough to drive a proxy running
under valgrind: one request in flight at a time, every socket operation under a
timeout, and a hard cap on the response size. It waits (bounded) for the port
to accept, reconnects if the server closes the connection, and exits non-zero
if any response is not a 200 with the expected body.

    ka_client.py --port 18080 --requests 2000 [--path /] [--expect-file FILE]
"""
import argparse
import socket
import sys
import time

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024


def connect(host, port, deadline):
    while True:
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_response(sock, buf):
    """Read one Content-Length framed response; return (status, body, rest, close)."""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            raise ValueError("response head larger than %d bytes" % MAX_HEAD)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before a full response head")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = None
    close = lines[0].startswith("HTTP/1.0")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "connection":
            close = "close" in value.lower()
        elif name == "transfer-encoding":
            raise ValueError("chunked responses are not handled by this client")
    if length is None or length > MAX_BODY:
        raise ValueError("missing or oversized Content-Length: %r" % length)
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed mid-body")
        buf += chunk
    return status, buf[:length], buf[length:], close


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--expect-file", default=None,
                    help="file holding the exact body every response must carry")
    ap.add_argument("--connect-wait", type=float, default=120.0,
                    help="seconds to keep retrying the first connect")
    ap.add_argument("--timeout", type=float, default=60.0, help="per socket operation")
    a = ap.parse_args()

    req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: ka_client\r\n\r\n"
           % (a.path, a.host, a.port)).encode()
    expect = open(a.expect_file, "rb").read() if a.expect_file else None
    sock = connect(a.host, a.port, time.monotonic() + a.connect_wait)
    sock.settimeout(a.timeout)
    buf = b""
    reconnects = 0
    for i in range(a.requests):
        sock.sendall(req)
        status, body, buf, close = read_response(sock, buf)
        if status != 200 or (expect is not None and body != expect):
            print("request %d: status %d, body %r" % (i, status, body[:80]), file=sys.stderr)
            return 1
        if close and i + 1 < a.requests:
            sock.close()
            sock = connect(a.host, a.port, time.monotonic() + 10)
            sock.settimeout(a.timeout)
            buf = b""
            reconnects += 1
    sock.close()
    print("%d requests ok, %d reconnects" % (a.requests, reconnects))
    return 0


if __name__ == "__main__":
    sys.exit(main())
