#!/usr/bin/env python3
"""WebSocket test backend for test_websocket.py (Debian's python3-websockets,
asyncio API). Listens on 127.0.0.1:PORT and prints `ready` once it accepts.
Usage: ws_echo.py PORT [CERT KEY]   (with CERT and KEY: TLS, i.e. wss)

Paths:
  /status/N          refuses the handshake with HTTP status N (body "refused N")
  /close             closes right after the handshake with code 4001
  /flood?n=B&size=S  sends B bytes in binary messages of S bytes (byte i of
                     the stream is i % 251), then the text "sent B", then
                     echoes like any other path
  anything else      echoes every message, text as text and binary as binary

Every connection that ends is reported on stdout as
`closed PATH CODE` (the close code the client sent, 1006 when none), and
every open one as `open PATH`, so a test sees what the backend saw.
Messages have no size limit (max_size=None).
"""
import asyncio
import http
import resource
import ssl
import sys
from urllib.parse import parse_qs, urlsplit

import websockets

PERIOD = 251
PATTERN = bytes(i % PERIOD for i in range(PERIOD * 4200))


def log(*words):
    print(*words, flush=True)


def pattern(offset, n):
    out = bytearray()
    while n > 0:
        start = offset % PERIOD
        take = min(n, len(PATTERN) - start)
        out += PATTERN[start:start + take]
        offset += take
        n -= take
    return bytes(out)


async def process_request(path, headers):
    parts = urlsplit(path).path.split("/")
    if len(parts) == 3 and parts[1] == "status" and parts[2].isdigit():
        status = http.HTTPStatus(int(parts[2]))
        body = f"refused {status.value}\n".encode()
        return status, [("Content-Type", "text/plain"), ("X-Backend", "ws")], body
    return None


async def handler(ws, path):
    url = urlsplit(path)
    log("open", url.path)
    try:
        if url.path == "/close":
            await ws.close(code=4001, reason="backend says bye")
            return
        if url.path == "/flood":
            q = parse_qs(url.query)
            total = int(q.get("n", ["0"])[0])
            size = int(q.get("size", ["65536"])[0])
            sent = 0
            while sent < total:
                take = min(size, total - sent)
                await ws.send(pattern(sent, take))
                sent += take
            await ws.send(f"sent {sent}")
        async for msg in ws:
            await ws.send(msg)
    except websockets.ConnectionClosed:
        pass
    finally:
        await ws.wait_closed()
        code = ws.close_code if ws.close_code is not None else 1006
        log("closed", url.path, code)


async def main(port, tls):
    async with websockets.serve(handler, "127.0.0.1", port, max_size=None, max_queue=4,
                                process_request=process_request, ping_interval=None,
                                close_timeout=5, ssl=tls):
        log("ready")
        await asyncio.Future()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        tls = None
        if len(sys.argv) == 4:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(sys.argv[2], sys.argv[3])
        asyncio.run(main(int(sys.argv[1]), tls))
    except KeyboardInterrupt:
        pass
