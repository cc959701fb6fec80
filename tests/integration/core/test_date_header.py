"""Every response heliosd sends carries Date (RFC 9110 6.6.1), over
HTTP/1.1 and HTTP/2: proxied responses whose backend sent none, static
responses, core errors (404, 502) and refusals before routing (400); a
backend's own Date passes through unchanged. The value is the worker's
per-second string, so it is a valid IMF-fixdate close to now."""

import socket
import threading
import time
from email.utils import parsedate_to_datetime

import h2.config
import h2.connection
import h2.events

from conftest import (
    RawConn,
    free_port,
    make_config,
    proxy_route,
    request_bytes,
    static_route,
)

BACKEND_DATE = "Mon, 01 Jan 2001 00:00:00 GMT"


class DatelessBackend:
    """HTTP/1.1 backend answering every request with no Date header, or
    with a fixed one for /dated. Bounded: serves until stopped."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        c.settimeout(5)
        buf = b""
        try:
            while not self.stop:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                extra = f"Date: {BACKEND_DATE}\r\n" if b" /dated " in head else ""
                c.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n{extra}\r\nok\n".encode())
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop = True
        self.t.join(5)
        self.sock.close()


def check_date(value):
    assert value is not None, "no Date header"
    d = parsedate_to_datetime(value)
    assert value.endswith(" GMT") and abs(d.timestamp() - time.time()) < 30, value


def h2_get(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                             header_encoding="utf-8"))
    c.initiate_connection()
    c.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"),
                       (":authority", "t")], end_stream=True)
    s.sendall(c.data_to_send())
    headers, deadline = None, time.monotonic() + 5
    try:
        while headers is None and time.monotonic() < deadline:
            d = s.recv(65535)
            if not d:
                break
            for e in c.receive_data(d):
                if isinstance(e, h2.events.ResponseReceived):
                    headers = dict(e.headers)
            s.sendall(c.data_to_send())
    finally:
        s.close()
    assert headers is not None, f"no HTTP/2 response for {path}"
    return int(headers[":status"]), headers


def test_date_on_every_response_http1_and_http2(heliosd):
    be = DatelessBackend()
    dead = free_port()
    try:
        port = free_port()
        cfg = make_config(
            port,
            [
                proxy_route("app", "app", match={"prefix": "/app/"}),
                proxy_route("dated", "app", match={"prefix": "/dated"}),
                proxy_route("down", "down", match={"prefix": "/down/"}),
                static_route("static", "s\n", match={"prefix": "/static"}),
            ],
            {
                "app": {"balancer": "round_robin",
                        "backends": [{"name": "b1", "address": be.address}]},
                "down": {"balancer": "round_robin",
                         "backends": [{"name": "gone", "address": f"127.0.0.1:{dead}"}]},
            },
        )
        h = heliosd(cfg)
        cases = [("/app/x", 200), ("/static", 200), ("/nowhere", 404), ("/down/x", 502)]
        for path, want in cases:
            with RawConn(h.port) as c:
                c.send(request_bytes("GET", path))
                r = c.read_response()
            assert r.status == want, (path, r)
            check_date(r.header("date"))
            assert len(r.header_all("date")) == 1, r.headers
            st, hd = h2_get(h.port, path)
            assert st == want, (path, hd)
            check_date(hd.get("date"))
        # the backend's own Date is kept, not replaced or doubled
        with RawConn(h.port) as c:
            c.send(request_bytes("GET", "/dated"))
            r = c.read_response()
        assert r.header_all("date") == [BACKEND_DATE], r.headers
        assert h2_get(h.port, "/dated")[1]["date"] == BACKEND_DATE
        # a refusal before routing
        with RawConn(h.port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\nno colon\r\n\r\n")
            r = c.read_response()
        assert r.status == 400
        check_date(r.header("date"))
    finally:
        be.close()
