"""The two ABI 1.3 pattern examples of the module guide, built out of tree
the way a third party would (the SDK installed into a temporary prefix,
each example copied and built with CMake against it, with the sanitizer
flags of the heliosd under test), and loaded through a `module_path` list
that names their build directories after the shipped one: no symlinks.

hmac_verify (hold until verified): a POST with Content-Length: 0 and a
wrong signature, an HTTP/2 GET with a wrong signature, and an oversize
body are refused (401, 401, 413) without the backend ever seeing a
request; right signatures pass on HTTP/1.1 and HTTP/2.

latency_balancer (per-attempt hook): with two backends, one of which adds
50 ms to every answer, at least 90 % of 200 requests go to the fast one."""

import hashlib
import hmac
import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import SOURCE_DIR, curl, free_port, make_config, proxy_route, upstream_conf
from helpers.clients import RawConn, http_request, request_bytes
from test_sdk_out_of_tree import SAN_FLAGS, clean_env, need_tool, run, sanitizer_heliosd, sdk  # noqa: F401

EXAMPLES = SOURCE_DIR / "plugins-sdk" / "examples"
SECRET = "correct horse battery staple"


def build_example(name, sdk, tmp_path_factory):
    need_tool("cmake")
    tmp = tmp_path_factory.mktemp(name)
    src = tmp / "src"
    shutil.copytree(EXAMPLES / name, src, ignore=shutil.ignore_patterns("build", "*.so", "*.o"))
    bdir = tmp / "build"
    cmd = ["cmake", "-S", src, "-B", bdir, f"-DCMAKE_PREFIX_PATH={sdk}",
           "-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF"]
    if sanitizer_heliosd():
        cmd.append(f"-DCMAKE_C_FLAGS={SAN_FLAGS}")
    run(cmd, what=f"cmake configure {name}", env=clean_env())
    run(["cmake", "--build", bdir], what=f"cmake --build {name}", env=clean_env())
    found = sorted(bdir.rglob(f"{name}.so"))
    assert found, f"no {name}.so under {bdir}"
    return found[0].parent


@pytest.fixture(scope="module")
def moddirs(sdk, tmp_path_factory):
    return [str(build_example(n, sdk, tmp_path_factory)) for n in ("hmac_verify", "latency_balancer")]


def sign(method, target, body=b""):
    return hmac.new(SECRET.encode(), method.encode() + b"\n" + target.encode() + b"\n" + body,
                    hashlib.sha256).hexdigest()


def backend_requests(b):
    return json.loads(http_request(b.port, "/stats")[2])["requests"]


def start_hmac(heliosd, backend, moddirs):
    port = free_port()
    cfg = make_config(
        port, [{**proxy_route("app", "app"),
                "filters": [{"module": "hmac_verify",
                             "config": {"secret": SECRET, "max_body": "1k"}}]}],
        {"app": upstream_conf(backend)}, module_path=moddirs)
    return heliosd(cfg)


def test_hmac_refusals_never_reach_the_backend(heliosd, backend, moddirs):
    h = start_hmac(heliosd, backend, moddirs)
    before = backend_requests(backend)
    wrong = "0" * 64
    # POST with Content-Length: 0 and a wrong signature (the bodiless LAST call)
    status, _, _ = h.get("/echo", method="POST", body=b"",
                         headers={"Content-Length": "0", "X-Signature": wrong})
    assert status == 401
    # HTTP/2 GET (END_STREAM on HEADERS) with a wrong signature
    url = f"http://127.0.0.1:{h.port}/headers"
    p = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
             "-H", f"X-Signature: {wrong}", url)
    assert p.stdout == b"401 2", (p.stdout, p.stderr)
    # a right signature over the wrong body, chunked in pieces
    with RawConn(h.port) as c:
        sig = sign("POST", "/echo", b"hello")
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
               b"X-Signature: " + sig.encode() + b"\r\n\r\n3\r\nhel\r\n3\r\nlo!\r\n0\r\n\r\n")
        assert c.read_response().status == 401
    # no signature at all: refused before the body is read
    assert h.get("/echo", method="POST", body=b"abc")[0] == 401
    # oversize (over max_body: 1k) with a right signature: 413
    big = b"b" * 2048
    status, _, _ = h.get("/echo", method="POST", body=big,
                         headers={"X-Signature": sign("POST", "/echo", big)})
    assert status == 413
    assert backend_requests(backend) == before, "a refused request reached the backend"


def test_hmac_right_signatures_pass_on_both_protocols(heliosd, backend, moddirs):
    h = start_hmac(heliosd, backend, moddirs)
    body = b"x" * 1000
    status, _, out = h.get("/echo", method="POST", body=body,
                           headers={"X-Signature": sign("POST", "/echo", body)})
    assert (status, out) == (200, body)
    status, _, _ = h.get("/echo", method="POST", body=b"",
                         headers={"Content-Length": "0", "X-Signature": sign("POST", "/echo")})
    assert status == 200
    p = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
             "-H", f"X-Signature: {sign('GET', '/headers')}", f"http://127.0.0.1:{h.port}/headers")
    assert p.stdout == b"200 2", (p.stdout, p.stderr)
    p = curl("--http2-prior-knowledge", "-sS", "--data-binary", "signed body",
             "-H", f"X-Signature: {sign('POST', '/echo', b'signed body')}",
             f"http://127.0.0.1:{h.port}/echo")
    assert p.stdout == b"signed body", (p.stdout, p.stderr)


class SlowHandler(BaseHTTPRequestHandler):
    """A backend that answers every request after 50 ms."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's naming
        time.sleep(0.05)
        body = b"hello from slow\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_backend():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield {"name": "slow", "address": f"127.0.0.1:{srv.server_address[1]}"}
    srv.shutdown()
    srv.server_close()


def test_latency_balancer_prefers_the_fast_backend(heliosd, backends, slow_backend, moddirs):
    fast = backends("fast")
    port = free_port()
    cfg = make_config(port, [proxy_route("app", "app")],
                      {"app": upstream_conf(slow_backend, fast, balancer="latency_balancer")},
                      module_path=moddirs)
    h = heliosd(cfg)
    counts = {"fast": 0, "slow": 0}
    deadline = time.monotonic() + 60
    with RawConn(h.port) as c:
        for _ in range(200):
            assert time.monotonic() < deadline, f"200 requests took over 60 s: {counts}"
            c.send(request_bytes("GET", "/"))
            r = c.read_response()
            assert r.status == 200
            name = bytes(r.body).decode().split()[-1]
            counts[name] += 1
    assert counts["fast"] >= 180, counts
    assert counts["slow"] >= 1, f"the slow backend was never measured: {counts}"
