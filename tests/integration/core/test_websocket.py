"""WebSocket proxying: an HTTP/1.1 `Upgrade: websocket`
request is forwarded with its upgrade headers, and after the backend's 101
the two connections become a byte tunnel with backpressure, an idle
timeout, a per-backend cap, half-close handling and one access log line.
Tunnels survive reloads.

Real peers only: the backend is tests/backend/ws_echo.py and the clients
are Debian's python3-websockets (asyncio API), through the real heliosd.
Messages are random bytes (or compression=None) so sizes on the wire are
the sizes written.
"""
import asyncio
import json
import os
import re
import resource
import signal
import ssl
import subprocess
import threading
import time

import pytest
import websockets

from conftest import (
    RawConn,
    SOURCE_DIR,
    free_port,
    http_request,
    is_sanitizer_build,
    make_ca,
    make_cert,
    make_config,
    proxy_config,
    proxy_route,
    request_bytes,
    rss_kb,
    static_route,
    upstream_conf,
    wait_for,
)

WS_ECHO = SOURCE_DIR / "tests" / "backend" / "ws_echo.py"
PYTHON = "/usr/bin/python3"
MiB = 1 << 20

# client options: no size limit, no compression (sizes on the wire are
# known), no keepalive pings that could hide an idle tunnel
CLIENT = dict(max_size=None, compression=None, ping_interval=None, open_timeout=20,
              close_timeout=10)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class WsBackend:
    """tests/backend/ws_echo.py as a subprocess; its stdout lines (`open
    PATH`, `closed PATH CODE`) are collected for the tests."""

    def __init__(self, tls=None):
        self.port = free_port()
        self.name = "ws"
        self.address = f"127.0.0.1:{self.port}"
        self.lines = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen([PYTHON, str(WS_ECHO), str(self.port), *map(str, tls or ())],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        wait_for(lambda: "ready" in self.snapshot() or self.proc.poll() is not None, 20,
                 what="ws_echo.py to print ready")
        assert self.proc.poll() is None, f"ws_echo.py exited: {self.snapshot()}"

    def _read(self):
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def snapshot(self):
        with self._lock:
            return list(self.lines)

    def closed(self, path=None):
        """Close codes the backend saw, in order (for PATH when given)."""
        out = []
        for line in self.snapshot():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "closed" and (path is None or parts[1] == path):
                out.append(int(parts[2]))
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def wsb():
    b = WsBackend()
    yield b
    b.stop()


def ws_config(port, be, workers=1, timeouts=None, upstream_extra=None, **top):
    t = {"shutdown": "3s"}  # teardown never waits long on a tunnel left open
    t.update(timeouts or {})
    return proxy_config(port, {"name": be.name, "address": be.address}, timeouts=t, upstream_extra=upstream_extra, workers=workers,
                        **top)


def start(heliosd, wsb, **kw):
    port = free_port()
    return heliosd(ws_config(port, wsb, **kw)), port


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# --------------------------------------------------------------------------
# echo


def test_text_and_binary_echo(heliosd, wsb):
    hd, port = start(heliosd, wsb)

    async def go():
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo", **CLIENT) as ws:
            await ws.send("héllo wörld")
            assert await ws.recv() == "héllo wörld"
            data = os.urandom(5000)
            await ws.send(data)
            got = await ws.recv()
            assert isinstance(got, bytes) and got == data
            for i in range(50):  # many small messages, in order
                await ws.send(f"m{i}")
            assert [await ws.recv() for _ in range(50)] == [f"m{i}" for i in range(50)]
        assert ws.close_code == 1000

    run(go())
    wait_for(lambda: wsb.closed("/echo") == [1000], 10, what="backend to see the close")


def test_16mib_messages_both_ways(heliosd, wsb):
    hd, port = start(heliosd, wsb)

    async def go():
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo", **CLIENT) as ws:
            big = os.urandom(16 * MiB)
            await ws.send(big)
            got = await ws.recv()
            assert len(got) == len(big) and got == big
            text = "x" * (8 * MiB) + "ü" * (4 * MiB)  # 16 MiB of UTF-8
            await ws.send(text)
            assert await ws.recv() == text

    run(go(), timeout=180)


def seen_headers(r):
    """hx_backend's /headers JSON as a lower-cased {name: value}."""
    return {k.lower(): v for k, v in json.loads(r.body)["headers"]}


def test_upgrade_headers_forwarded_and_other_upgrades_untouched(heliosd, backend):
    """The origin (hx_backend) answers a WebSocket upgrade with a plain 200:
    a normal response. Upgrade/Connection reach it only for websocket."""
    port = free_port()
    heliosd(proxy_config(port, backend))
    with RawConn(port) as c:
        c.send(request_bytes("GET", "/headers", headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]))
        r = c.read_response()
        assert r.status == 200
        seen = seen_headers(r)
        assert seen.get("upgrade") == "websocket" and seen.get("connection") == "upgrade", seen
        assert seen.get("sec-websocket-key") == "dGhlIHNhbXBsZSBub25jZQ==", seen
        c.wait_closed()  # an upgrade request is not kept alive
    with RawConn(port) as c:  # another protocol: no upgrade asked of the backend
        c.send(request_bytes("GET", "/headers", headers=[("Upgrade", "h2c"),
                                                          ("Connection", "Upgrade")]))
        r = c.read_response()
        assert r.status == 200
        assert "upgrade" not in seen_headers(r)
    with RawConn(port) as c:  # a body: never a tunnel
        c.send(request_bytes("POST", "/headers", body=b"abc", headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade")]))
        r = c.read_response(method="POST")
        assert r.status == 200
        assert "upgrade" not in seen_headers(r)


# --------------------------------------------------------------------------
# 1,000 tunnels and 10 reloads


def test_1000_tunnels_survive_10_reloads(heliosd, wsb):
    n_conns = 1000
    if raise_nofile() < n_conns + 200:
        pytest.skip("RLIMIT_NOFILE too low for 1000 client connections")
    port = free_port()
    cfg = ws_config(port, wsb, workers=2)
    hd = heliosd(cfg)

    def reload_to(gen_no):
        cfg2 = ws_config(port, wsb, workers=2)
        # every generation answers /gen with its own number: the new one
        # really serves while the old ones keep their tunnels
        cfg2["routes"].insert(0, static_route("gen", f"gen {gen_no}", match={"path": "/gen"}))
        mark = hd.err_mark()
        hd.reload(cfg2)
        hd.wait_stderr(rf"generation {gen_no} is live", since=mark, timeout=30)
        assert http_request(port, "/gen")[2] == f"gen {gen_no}".encode()

    async def go():
        sem = asyncio.Semaphore(100)

        async def open_one(i):
            async with sem:
                ws = await websockets.connect(f"ws://127.0.0.1:{port}/echo?c={i}", **CLIENT)
                await ws.send(f"hello {i}")
                assert await ws.recv() == f"hello {i}"
                return ws

        conns = await asyncio.gather(*(open_one(i) for i in range(n_conns)))
        assert len(conns) == n_conns
        wait_for(lambda: sum(1 for ln in wsb.snapshot() if ln.startswith("open ")) == n_conns,
                 20, what="backend to see 1000 connections")
        first_gen = int(re.findall(r"generation (\d+)", hd.stderr())[-1])
        for k in range(10):
            await asyncio.to_thread(reload_to, first_gen + k + 1)
            # a sample of tunnels echoes between reloads
            for ws in conns[k::100]:
                await ws.send(f"r{k}")
                assert await ws.recv() == f"r{k}"
        # none was closed, by heliosd or the backend, and every one echoes
        assert wsb.closed() == [], wsb.closed()
        assert all(ws.open and ws.close_code is None for ws in conns)

        async def echo(i, ws):
            async with sem:
                payload = os.urandom(64) + str(i).encode()
                await ws.send(payload)
                assert await ws.recv() == payload

        await asyncio.gather(*(echo(i, ws) for i, ws in enumerate(conns)))
        assert all(ws.open for ws in conns)

        async def close(ws):
            async with sem:
                await ws.close()

        await asyncio.gather(*(close(ws) for ws in conns))
        assert all(ws.close_code == 1000 for ws in conns)
        live = re.findall(r"generation (\d+) is live", hd.stderr())
        print(f"{n_conns} tunnels open across reloads to generations {live}")

    run(go(), timeout=240)
    wait_for(lambda: len(wsb.closed()) == n_conns, 30, what="backend to see 1000 closes")
    assert set(wsb.closed()) == {1000}
    # and new tunnels work on the latest generation
    run(new_echo(port))


async def new_echo(port, path="/echo"):
    async with websockets.connect(f"ws://127.0.0.1:{port}{path}", **CLIENT) as ws:
        await ws.send("again")
        assert await ws.recv() == "again"


# --------------------------------------------------------------------------
# timeouts, caps, refusals, closes


def test_idle_timeout_closes_idle_tunnel(heliosd, wsb):
    hd, port = start(heliosd, wsb, timeouts={"tunnel_idle": "1s"})

    async def go():
        # traffic every 0.3 s keeps a tunnel open past the idle timeout
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo", **CLIENT) as busy:
            for i in range(8):
                await busy.send(str(i))
                assert await busy.recv() == str(i)
                await asyncio.sleep(0.3)
            assert busy.open
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/echo", **CLIENT)
        await ws.send("once")
        assert await ws.recv() == "once"
        t0 = time.monotonic()
        await asyncio.wait_for(ws.wait_closed(), 10)
        took = time.monotonic() - t0
        assert 0.8 <= took < 6, took
        assert ws.close_code == 1006  # the tunnel was cut: no close frame

    run(go())
    wait_for(lambda: 1006 in wsb.closed("/echo"), 10, what="backend to see the cut")
    hd.wait_stderr(r"idle for 1 s: closed")


def test_max_tunnels_gives_503(heliosd, wsb):
    hd, port = start(heliosd, wsb, workers=2, upstream_extra={"max_tunnels": 2})

    async def go():
        a = await websockets.connect(f"ws://127.0.0.1:{port}/echo", **CLIENT)
        b = await websockets.connect(f"ws://127.0.0.1:{port}/echo", **CLIENT)
        with pytest.raises(websockets.InvalidStatusCode) as e:
            await websockets.connect(f"ws://127.0.0.1:{port}/echo", **CLIENT)
        assert e.value.status_code == 503
        # the backend prints its "open" lines asynchronously: wait for the two,
        # then the refused third must never have reached it
        opened = lambda: len([ln for ln in wsb.snapshot() if ln.startswith("open")])  # noqa: E731
        wait_for(lambda: opened() >= 2, 10, what="backend to see the two tunnels")
        await asyncio.sleep(0.2)
        assert opened() == 2  # the third never connected
        await a.send("still")  # the open ones are not affected
        assert await a.recv() == "still"
        await a.close()
        # the slot comes back when the tunnel ends
        deadline = time.monotonic() + 10
        while True:
            try:
                c = await websockets.connect(f"ws://127.0.0.1:{port}/echo", **CLIENT)
                break
            except websockets.InvalidStatusCode as e2:
                assert e2.status_code == 503
                assert time.monotonic() < deadline, "slot never released"
                await asyncio.sleep(0.1)
        await c.send("third")
        assert await c.recv() == "third"
        await b.close()
        await c.close()

    run(go())


@pytest.mark.parametrize("status", [400, 404])
def test_backend_refusal_passes_through(heliosd, wsb, status):
    hd, port = start(heliosd, wsb)

    async def go():
        with pytest.raises(websockets.InvalidStatusCode) as e:
            await websockets.connect(f"ws://127.0.0.1:{port}/status/{status}", **CLIENT)
        assert e.value.status_code == status

    run(go())
    with RawConn(port) as c:
        c.send(request_bytes("GET", f"/status/{status}", headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]))
        r = c.read_response()
        assert r.status == status
        assert r.header("x-backend") == "ws"
        assert r.body == f"refused {status}\n".encode()


def test_backend_close_reaches_client(heliosd, wsb):
    hd, port = start(heliosd, wsb)

    async def go():
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/close", **CLIENT)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 4001 and ws.close_reason == "backend says bye"

    run(go())


def test_client_close_reaches_backend(heliosd, wsb):
    hd, port = start(heliosd, wsb)

    async def go():
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/echo", **CLIENT)
        await ws.send("x")
        assert await ws.recv() == "x"
        await ws.close(code=4002, reason="client bye")
        assert ws.close_code == 4002
        # an abrupt end (no close frame, just the TCP close) reaches it too
        ws2 = await websockets.connect(f"ws://127.0.0.1:{port}/abrupt", **CLIENT)
        await ws2.send("y")
        assert await ws2.recv() == "y"
        ws2.transport.close()

    run(go())
    wait_for(lambda: wsb.closed("/echo") == [4002], 10, what="backend to see code 4002")
    wait_for(lambda: wsb.closed("/abrupt") == [1006], 15, what="backend to see the abrupt close")


def test_graceful_stop_keeps_tunnels_until_grace_ends(heliosd, wsb):
    hd, port = start(heliosd, wsb, timeouts={"shutdown": "3s"})

    async def go():
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/echo", **CLIENT)
        await ws.send("before")
        assert await ws.recv() == "before"
        t0 = time.monotonic()
        hd.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        await ws.send("during grace")  # still tunnelled after SIGTERM
        assert await ws.recv() == "during grace"
        await asyncio.wait_for(ws.wait_closed(), 15)
        took = time.monotonic() - t0
        assert 2.0 <= took < 12, took

    run(go())
    assert hd.wait_exit(20) == 0


# --------------------------------------------------------------------------
# TLS in front


def test_wss_through_tls_termination(heliosd, wsb, tmp_path):
    ca = make_ca(tmp_path, "ws-ca")
    cert, key = make_cert(tmp_path, ca, "ws.test", ["ws.test"])
    port = free_port()
    cfg = ws_config(port, wsb)
    cfg["listeners"] = [{"address": f"127.0.0.1:{port}",
                         "tls": {"certificates": [{"cert": str(cert), "key": str(key)}]}}]
    hd = heliosd(cfg)
    ctx = ssl.create_default_context(cafile=str(ca[1]))

    async def go():
        async with websockets.connect(f"wss://127.0.0.1:{port}/echo", ssl=ctx,
                                      server_hostname="ws.test", **CLIENT) as ws:
            await ws.send("over tls")
            assert await ws.recv() == "over tls"
            big = os.urandom(4 * MiB)
            await ws.send(big)
            assert await ws.recv() == big
        assert ws.close_code == 1000

    run(go())
    wait_for(lambda: wsb.closed("/echo") == [1000], 10, what="backend to see the close")


def test_wss_with_tls_on_both_sides(heliosd, tmp_path):
    """TLS termination in front and TLS to the backend (upstream `tls:`):
    the tunnel runs over two TLS connections."""
    ca = make_ca(tmp_path, "ws-ca")
    cert, key = make_cert(tmp_path, ca, "ws.test", ["ws.test"])
    bcert, bkey = make_cert(tmp_path, ca, "backend.test", ["backend.test"])
    be = WsBackend(tls=(bcert, bkey))
    try:
        port = free_port()
        cfg = ws_config(port, be, upstream_extra={"tls": {"ca": str(ca[1]),
                                                          "sni": "backend.test"}})
        cfg["listeners"] = [{"address": f"127.0.0.1:{port}",
                             "tls": {"certificates": [{"cert": str(cert), "key": str(key)}]}}]
        heliosd(cfg)
        ctx = ssl.create_default_context(cafile=str(ca[1]))

        async def go():
            async with websockets.connect(f"wss://127.0.0.1:{port}/echo", ssl=ctx,
                                          server_hostname="ws.test", **CLIENT) as ws:
                for size in (10, 70000, 3 * MiB):
                    data = os.urandom(size)
                    await ws.send(data)
                    assert await ws.recv() == data
            assert ws.close_code == 1000

        run(go())
        wait_for(lambda: be.closed("/echo") == [1000], 10, what="backend to see the close")
    finally:
        be.stop()


# --------------------------------------------------------------------------
# backpressure


def test_backpressure_slow_reader_keeps_rss_bounded(heliosd, wsb):
    total, size = 96 * MiB, 1 * MiB
    hd, port = start(heliosd, wsb)
    base = rss_kb(hd.pid)

    async def go():
        # max_queue=1: the client library itself holds at most ~2 messages
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/flood?n={total}&size={size}",
                                      max_queue=1, **CLIENT)
        peak = 0
        for _ in range(30):  # 3 s without reading while the backend pushes
            await asyncio.sleep(0.1)
            peak = max(peak, rss_kb(hd.pid))
        got = 0
        while got < total:
            msg = await asyncio.wait_for(ws.recv(), 30)
            assert isinstance(msg, bytes) and len(msg) == size
            # each message continues the byte pattern (i % 251)
            assert msg[0] == got % 251 and msg[-1] == (got + size - 1) % 251
            got += len(msg)
        assert await asyncio.wait_for(ws.recv(), 30) == f"sent {total}"
        await ws.close()
        return peak

    peak = run(go(), timeout=180)
    growth_mib = (peak - base) / 1024
    print(f"heliosd RSS: base {base} KiB, peak while stalled {peak} KiB "
          f"(+{growth_mib:.1f} MiB for a {total // MiB} MiB flood)")
    if not is_sanitizer_build():
        assert growth_mib < 24, f"heliosd grew {growth_mib:.1f} MiB: no backpressure"


# --------------------------------------------------------------------------
# access log


def test_access_log_line_for_tunnel(heliosd, wsb, tmp_path):
    log = tmp_path / "access.json"
    mod_log = tmp_path / "module.json"
    port = free_port()
    cfg = ws_config(port, wsb)
    cfg["logging"] = {"level": "info", "access_log": str(log), "access_log_format": "json"}
    # a filter's on_log runs for the tunnel too (the access_log module)
    cfg["modules"] = [{"module": "access_log", "config": {"format": "json",
                                                         "path": str(mod_log)}}]
    hd = heliosd(cfg)

    async def go():
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo?x=1", **CLIENT) as ws:
            for _ in range(3):
                data = os.urandom(10000)
                await ws.send(data)
                assert await ws.recv() == data
            await asyncio.sleep(0.3)

    run(go())

    def tunnel_line(f=log):
        if not f.exists():
            return None
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if rec["status"] == 101:
                return rec
        return None

    rec = wait_for(tunnel_line, 10, what="the tunnel's access log line")
    assert rec["method"] == "GET" and rec["path"] == "/echo?x=1"
    assert rec["protocol"] == "HTTP/1.1" and rec["route"] == "app"
    assert rec["upstream"] == wsb.address
    # 3 x 10000 payload bytes each way, plus framing and the close frames
    assert 30000 < rec["bytes_in"] < 31000, rec
    assert 30000 < rec["bytes_out"] < 31000, rec
    assert rec["duration_ms"] >= 250 and rec["aborted"] is False, rec
    mrec = wait_for(lambda: tunnel_line(mod_log), 10, what="the access_log module's line")
    assert mrec["bytes_in"] == rec["bytes_in"] and mrec["bytes_out"] == rec["bytes_out"], mrec


def test_config_errors_for_tunnel_keys(check_config):
    port = free_port()
    cfg = make_config(port, [proxy_route("app", "app")],
                      {"app": upstream_conf({"name": "a", "address": "127.0.0.1:9"},
                                            max_tunnels=-1)},
                      timeouts={"tunnel_idle": "0"})
    p = check_config(cfg)
    assert p.returncode == 1, p.stderr
    assert "max_tunnels" in p.stderr and "tunnel_idle" in p.stderr, p.stderr
