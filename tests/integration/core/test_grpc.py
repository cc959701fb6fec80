"""gRPC through heliosd: a real gRPC server and client
from Debian's python3-grpcio exchange unary, failing (trailers-only),
server-streaming and bidirectional-streaming calls through heliosd, with
the upstream marked `protocol: h2` (h2c, and h2 over TLS), the client
side on h2c and on TLS with ALPN h2. Many calls share few upstream
connections; trailers (grpc-status, custom ones) pass through.
"""
import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from conftest import SOURCE_DIR, free_port, make_ca, make_cert, make_config, proxy_route

SERVER = SOURCE_DIR / "tests" / "backend" / "grpc_server.py"


class GrpcServer:
    def __init__(self, cert=None, key=None):
        self.port = free_port()
        args = [sys.executable if "pytest" in sys.modules else "python3", str(SERVER), str(self.port)]
        args[0] = "/usr/bin/python3"
        if cert:
            args += [str(cert), str(key)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", self.proc.stderr.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def grpc_server():
    started = []

    def make(**kw):
        s = GrpcServer(**kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpcpki")
    ca = make_ca(d, "grpc-ca")
    return {"ca": ca[1], "edge": make_cert(d, ca, "edge.test", ["edge.test"]),
            "backend": make_cert(d, ca, "grpc.internal", ["grpc.internal"])}


def proxy(heliosd, backend_port, upstream_tls=None, listener_tls=None, workers=1):
    port = free_port()
    up = {"protocol": "h2", "backends": [{"name": "g", "address": f"127.0.0.1:{backend_port}"}]}
    if upstream_tls:
        up["tls"] = upstream_tls
    listener = {"address": f"127.0.0.1:{port}"}
    if listener_tls:
        listener["tls"] = listener_tls
    cfg = make_config(port, [proxy_route("grpc", "grpc")], {"grpc": up}, workers=workers,
                      listeners=[listener])
    return heliosd(cfg)


def calls(channel):
    ident = lambda b: b  # noqa: E731 - raw bytes on the wire
    kw = {"request_serializer": ident, "response_deserializer": ident}
    return {
        "unary": channel.unary_unary("/test.Echo/Unary", **kw),
        "fail": channel.unary_unary("/test.Echo/Fail", **kw),
        "chat": channel.stream_stream("/test.Echo/Chat", **kw),
        "count": channel.unary_stream("/test.Echo/Count", **kw),
        "peers": channel.unary_unary("/test.Echo/Peers", **kw),
    }


def exercise(channel):
    c = calls(channel)
    # unary, with initial metadata and trailers passed through
    resp, call = c["unary"].with_call(b"hello grpc", timeout=10)
    assert resp == b"cprg olleh"
    assert dict(call.initial_metadata()).get("x-peer", "").startswith("ipv4:127.0.0.1:")
    assert dict(call.trailing_metadata()).get("x-done") == "yes"
    assert call.code() == grpc.StatusCode.OK
    # an error status with details (a trailers-only response)
    with pytest.raises(grpc.RpcError) as e:
        c["fail"](b"widget", timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert e.value.details() == "no such thing: widget"
    # bidirectional streaming
    msgs = [f"message {i}".encode() for i in range(200)]
    assert list(c["chat"](iter(msgs), timeout=30)) == [m.upper() for m in msgs]
    # server streaming, 4 MiB in all
    got = list(c["count"](b"64,65536", timeout=30))
    assert len(got) == 64 and all(len(x) == 65536 for x in got)
    # a large unary message both ways
    big = os.urandom(3 * 1024 * 1024)
    assert c["unary"](big, timeout=30) == big[::-1]


def test_grpc_over_h2c_both_sides(heliosd, grpc_server):
    srv = grpc_server()
    h = proxy(heliosd, srv.port)
    with grpc.insecure_channel(f"127.0.0.1:{h.port}") as ch:
        exercise(ch)


def test_bidi_streams_interleave_messages(heliosd, grpc_server):
    """Each reply comes back before the next message is sent: the streams
    really flow both ways at once through heliosd."""
    srv = grpc_server()
    h = proxy(heliosd, srv.port)
    import queue
    with grpc.insecure_channel(f"127.0.0.1:{h.port}") as ch:
        q = queue.Queue()

        def gen():
            for i in range(20):
                yield f"ping {i}".encode()
                assert q.get(timeout=10) == f"PING {i}".encode()

        replies = calls(ch)["chat"](gen(), timeout=30)
        for r in replies:
            q.put(r)


def test_many_calls_share_few_upstream_connections(heliosd, grpc_server):
    srv = grpc_server()
    h = proxy(heliosd, srv.port, workers=1)
    errors = []
    with grpc.insecure_channel(f"127.0.0.1:{h.port}") as ch:
        c = calls(ch)

        def run():
            for i in range(25):
                try:
                    assert c["unary"](f"n{i}".encode(), timeout=10) == f"n{i}".encode()[::-1]
                except Exception as e:  # noqa: BLE001 - collected below
                    errors.append(repr(e))

        ts = [threading.Thread(target=run) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert not errors, errors[:3]
        peers = c["peers"](b"", timeout=10).decode().split()
    # 200 calls, 8 at a time, on one worker: one upstream connection
    assert 1 <= len(peers) <= 2, peers


def test_grpc_over_tls_on_both_sides(heliosd, grpc_server, pki):
    srv = grpc_server(cert=pki["backend"][0], key=pki["backend"][1])
    h = proxy(heliosd, srv.port,
              upstream_tls={"ca": str(pki["ca"]), "sni": "grpc.internal"},
              listener_tls={"certificates": [{"cert": str(pki["edge"][0]), "key": str(pki["edge"][1])}]})
    creds = grpc.ssl_channel_credentials(root_certificates=Path(pki["ca"]).read_bytes())
    opts = (("grpc.ssl_target_name_override", "edge.test"),)
    with grpc.secure_channel(f"127.0.0.1:{h.port}", creds, options=opts) as ch:
        exercise(ch)


def test_backend_going_away_fails_calls_cleanly_then_recovers(heliosd, grpc_server):
    srv = grpc_server()
    h = proxy(heliosd, srv.port)
    with grpc.insecure_channel(f"127.0.0.1:{h.port}") as ch:
        c = calls(ch)
        assert c["unary"](b"ab", timeout=10) == b"ba"
        port = srv.port
        srv.stop()
        with pytest.raises(grpc.RpcError) as e:
            c["unary"](b"ab", timeout=10)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.UNKNOWN)
        # a new server on the same port: calls work again
        srv2 = GrpcServer.__new__(GrpcServer)
        srv2.port = port
        srv2.proc = subprocess.Popen(["/usr/bin/python3", str(SERVER), str(port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert srv2.proc.stdout.readline().strip() == "ready"
            assert c["unary"](b"xy", timeout=10) == b"yx"
        finally:
            srv2.stop()
    assert h.alive()
