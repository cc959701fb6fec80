"""TLS handshakes on new connections: what a client sends together with its
Finished message is answered at once, and TLS 1.3 resumption hands out a new
ticket every time.

A TLS 1.3 client may send its first request in the same flight (often the
same TCP segment) as its Finished message. heliosd reads ahead, so that
request is already decrypted-to-be inside OpenSSL when the handshake ends,
where epoll cannot see it: it must be read then, not when some later event
(another packet, a timer) happens to wake the connection. The raw clients
here put Finished and the request into one send(2) through a memory BIO and
allow 1 s for the answer; heliosd's only timer that would answer otherwise
(client_header) is set to 30 s.

A TLS 1.3 ticket is used once (RFC 8446 C.4): a client that resumes each
connection from the previous one's session (as wrk and browsers do) resumes
every time only if every resumption brings a new ticket (docs/decisions.md
D65).
"""

import socket
import ssl
import time

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded

from conftest import free_port, make_ca, make_cert, make_config, static_route

ANSWER_WITHIN = 1.0  # seconds; client_header is 30 s


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "test-ca")
    return {"ca": ca[1], "cert": make_cert(d, ca, "a.test", ["a.test"])}


@pytest.fixture
def server(heliosd, pki):
    port = free_port()
    cert, key = pki["cert"]
    cfg = make_config(
        port, [static_route("hello", "hello over tls\n")],
        listeners=[{"address": f"127.0.0.1:{port}",
                    "tls": {"certificates": [{"cert": str(cert), "key": str(key)}]}}],
        timeouts={"client_header": "30s"})
    return heliosd(cfg)


def client_ctx(ca, alpn, tls13=True):
    ctx = ssl.create_default_context(cafile=str(ca))
    if tls13:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([alpn])
    return ctx


class MemTLS:
    """A TLS client on a memory BIO: what it writes leaves only when
    flush() sends it, so Finished and a request can share one send(2)."""

    def __init__(self, port, ctx):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname="a.test")

    def flush(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)
        return len(data)

    def handshake_but_hold_finished(self):
        """Runs the handshake up to the client's Finished, which is left
        in the memory BIO unsent."""
        while True:
            try:
                self.tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                self.flush()
                chunk = self.sock.recv(65536)
                assert chunk, "the server closed during the handshake"
                self.inc.write(chunk)

    def read_until(self, done, deadline):
        """Decrypted bytes until done(bytes) or EOF; fails at DEADLINE."""
        got = b""
        while not done(got):
            try:
                d = self.tls.read(65536)
                if not d:
                    break
                got += d
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                break
            left = deadline - time.monotonic()
            assert left > 0, f"no complete answer within {ANSWER_WITHIN}s: {got[:200]!r}"
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                chunk = None
            if chunk is None:
                pytest.fail(f"no complete answer within {ANSWER_WITHIN}s: {got[:200]!r}")
            if not chunk:
                self.inc.write_eof()
            else:
                self.inc.write(chunk)
        return got

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("tls13", [True, False], ids=["tls1.3", "tls1.2"])
def test_http1_request_in_the_finished_flight_is_answered_at_once(server, pki, tls13):
    c = MemTLS(server.port, client_ctx(pki["ca"], "http/1.1", tls13))
    try:
        c.handshake_but_hold_finished()
        if tls13:
            # TLS 1.3: the client is done once it has the server's flight;
            # its Finished is still in the BIO, the request goes behind it
            assert c.tls.version() == "TLSv1.3"
            assert c.out.pending > 0, "the client's Finished should be held back"
        c.tls.write(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        start = time.monotonic()
        assert c.flush() > 0
        data = c.read_until(lambda b: b.endswith(b"hello over tls\n"), start + ANSWER_WITHIN)
    finally:
        c.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert data.endswith(b"hello over tls\n")


def test_h2_request_in_the_finished_flight_is_answered_at_once(server, pki):
    c = MemTLS(server.port, client_ctx(pki["ca"], "h2"))
    try:
        c.handshake_but_hold_finished()
        assert c.tls.selected_alpn_protocol() == "h2"
        assert c.out.pending > 0
        h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        h2.initiate_connection()
        h2.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "https"),
                            (":authority", "a.test")], end_stream=True)
        c.tls.write(h2.data_to_send())  # preface, SETTINGS, HEADERS behind Finished
        start = time.monotonic()
        assert c.flush() > 0
        status, body, ended = None, b"", False
        deadline = start + ANSWER_WITHIN
        while not ended:
            chunk = c.read_until(lambda b: len(b) > 0, deadline)
            assert chunk, "the server closed the connection"
            for ev in h2.receive_data(chunk):
                if isinstance(ev, ResponseReceived) and ev.stream_id == 1:
                    status = dict(ev.headers)[":status"]
                elif isinstance(ev, DataReceived) and ev.stream_id == 1:
                    body += ev.data
                elif isinstance(ev, StreamEnded) and ev.stream_id == 1:
                    ended = True
            # nothing goes back (not even the SETTINGS ACK) before the
            # answer: a packet from the client would wake the connection
    finally:
        c.close()
    assert status == "200"
    assert body == b"hello over tls\n"


def chained(port, ctx, n):
    """N connections, each resuming from the session the previous one left
    (the session its last ticket made): (resumed, session id) of each."""
    sess, out = None, []
    for _ in range(n):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        s = ctx.wrap_socket(raw, server_hostname="a.test", session=sess)
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        data = b""
        while True:  # tickets come before the answer: all read by EOF
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:100]
        sess = s.session
        out.append((s.session_reused, sess.id))
        s.close()
    return out


def test_tls13_resumption_brings_a_new_ticket_every_time(server, pki):
    conns = chained(server.port, client_ctx(pki["ca"], "http/1.1"), 6)
    assert [r for r, _ in conns] == [False] + [True] * 5
    # OpenSSL's client names a TLS 1.3 session after its ticket: six
    # connections, six tickets (a client that uses a ticket once, as RFC
    # 8446 C.4 asks, has a fresh one for the next connection)
    assert len({i for _, i in conns}) == 6


def test_tls12_resumption_keeps_its_ticket(server, pki):
    # TLS 1.2 tickets may be reused: renewed only when sealed by an older key
    conns = chained(server.port, client_ctx(pki["ca"], "http/1.1", tls13=False), 4)
    assert [r for r, _ in conns] == [False, True, True, True]
