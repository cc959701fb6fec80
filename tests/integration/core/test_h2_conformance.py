"""HTTP/2 conformance cases that h2spec (the HTTP/2 conformance suite, not
packaged in Debian) found failing, replayed here as raw frames so the suite
keeps them fixed:

- h2spec 5.1.1/2: after a HEADERS frame on stream 5, a HEADERS frame opening
  stream 3 (lower than one already opened) is a connection error of type
  PROTOCOL_ERROR (RFC 9113 5.1.1): GOAWAY(PROTOCOL_ERROR), then close.
- h2spec 3.5/2: an invalid connection preface on a listener that accepts
  HTTP/2 (h2c prior knowledge in clear text, ALPN h2 over TLS) gets GOAWAY
  or a close (RFC 9113 3.4), never an HTTP/1.1 400.

Alongside each, what must keep working: trailers on a lower stream that is
still open, HTTP/1.1 requests (and their 400s) on the same h2c listener.
"""
import socket
import ssl
import time

from conftest import RawConn, make_ca, make_cert
from test_http2 import (
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PREFACE,
    RawH2,
    frame,
    goaway_code,
    h2,  # noqa: F401 - fixture
    settings,
    well_behaved,
)

PROTOCOL_ERROR = 1


def read_all(c, timeout=5.0):
    """Frames until the server closes; (frames, closed) - closed is False when
    the server kept the connection open past TIMEOUT."""
    c.sock.settimeout(timeout)
    frames = []
    try:
        while True:
            f = c.read_frame()
            if f is None:
                return frames, True
            frames.append(f)
    except ConnectionResetError:
        return frames, True
    except socket.timeout:
        return frames, False


def response_status(c, frames, sid):
    """The :status of the response HEADERS on stream SID (None if absent)."""
    from hpack import Decoder

    dec = Decoder()
    status = None
    for ftype, _, fsid, payload in frames:
        if ftype == HEADERS:
            hdrs = dict(dec.decode(payload))
            if fsid == sid and ":status" in hdrs:
                status = int(hdrs[":status"])
    return status


# --------------------------------------------------------------------------
# h2spec 5.1.1/2


def test_headers_on_a_lower_stream_id_than_one_opened_is_a_protocol_error(h2):
    h = h2()
    c = RawH2(h.port)
    c.request(5, "/static")
    c.request(3, "/static")
    frames, closed = read_all(c)
    c.close()
    assert goaway_code(frames) == PROTOCOL_ERROR, frames
    assert closed, "the connection must be closed after the GOAWAY"
    # the GOAWAY's last stream id is 5: stream 3 was never processed
    last = [f for f in frames if f[0] == GOAWAY][0]
    assert int.from_bytes(last[3][:4], "big") & 0x7FFFFFFF == 5
    h.wait_stderr(r"stream id lower")
    well_behaved(h.port)


def test_skipped_stream_ids_stay_closed_later_on_the_connection(h2):
    """1 and 3 are skipped by opening 5; after 7, 9 and 11 are served, a
    HEADERS frame for 1 is still a protocol error."""
    h = h2()
    c = RawH2(h.port)
    for sid in (5, 7, 9, 11):
        c.request(sid, "/static")
    c.sock.settimeout(5)
    seen = set()
    while len(seen) < 4:
        f = c.read_frame()
        assert f is not None
        if f[0] == DATA and f[1] & END_STREAM:
            seen.add(f[2])
    c.request(1, "/static")
    frames, closed = read_all(c)
    c.close()
    assert goaway_code(frames) == PROTOCOL_ERROR and closed, frames


def test_trailers_on_a_lower_stream_that_is_still_open_are_fine(h2):
    """Stream 1 sends its body and trailers after stream 3 was opened: the
    lower id is an open stream, not a new one."""
    h = h2()
    c = RawH2(h.port)
    c.send(frame(HEADERS, END_HEADERS, 1,
                 c.enc.encode([(":method", "POST"), (":scheme", "http"), (":path", "/echo"),
                               (":authority", "t")])))
    c.request(3, "/static")
    c.send(frame(DATA, 0, 1, b"hello"))
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, c.enc.encode([("x-trailer", "1")])))
    c.sock.settimeout(10)
    frames, done = [], set()
    while len(done) < 2:
        f = c.read_frame()
        assert f is not None, frames
        frames.append(f)
        if f[0] in (DATA, HEADERS) and f[1] & END_STREAM:
            done.add(f[2])
    c.close()
    assert goaway_code(frames) is None, frames
    assert response_status(c, frames, 1) == 200 and response_status(c, frames, 3) == 200
    assert b"".join(f[3] for f in frames if f[0] == DATA and f[2] == 1) == b"hello"


# --------------------------------------------------------------------------
# h2spec 3.5/2


def plain_exchange(port, data, timeout=5.0):
    """Sends DATA on a fresh connection; (bytes received, closed by server)."""
    with RawConn(port, timeout=timeout) as c:
        c.send(data)
        closed = c.wait_closed(timeout)
        return bytes(c.buf), closed


def test_invalid_preface_on_an_h2c_listener_is_closed_without_an_http1_answer(h2):
    h = h2()
    # exactly what h2spec 3.5/2 sends
    got, closed = plain_exchange(h.port, b"INVALID CONNECTION PREFACE\r\n\r\n")
    assert closed and got == b"", got
    # a preface broken after its first line is no HTTP/1.1 request either
    got, closed = plain_exchange(h.port, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + settings())
    assert closed and not got.startswith(b"HTTP/1.1"), got
    # the same bytes sent one at a time
    s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    for b in b"INVALID CONNECTION PREFACE\r\n":
        s.sendall(bytes([b]))
        time.sleep(0.002)
    assert s.recv(100) == b""
    s.close()
    h.wait_stderr(r"neither an HTTP/1\.x request line nor the HTTP/2 preface")
    well_behaved(h.port)


def test_http1_on_an_h2c_listener_still_gets_its_answers_and_400s(h2):
    h = h2()
    got, _ = plain_exchange(h.port, b"GET /static HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"hello static\n"), got
    # empty lines before a request are allowed (RFC 9112 2.2)
    got, _ = plain_exchange(h.port, b"\r\n\r\nGET /static HTTP/1.1\r\nHost: t\r\n"
                                    b"Connection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200"), got
    # an HTTP/1.1 request line with a malformed head is an HTTP/1.1 error
    got, _ = plain_exchange(h.port, b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 400"), got
    # a request line split across reads is waited for, not judged early
    with RawConn(h.port) as c:
        c.send(b"GET /sta")
        time.sleep(0.1)
        c.send(b"tic HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        got = c.read_to_eof()
    assert got.startswith(b"HTTP/1.1 200"), got


def test_without_h2c_the_same_bytes_are_an_http1_400(h2):
    h = h2(h2c_on=False)
    got, closed = plain_exchange(h.port, b"INVALID CONNECTION PREFACE\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 400") and closed, got


def test_invalid_preface_over_tls_with_alpn_h2_gets_goaway(h2, tmp_path):
    ca = make_ca(tmp_path, "ca")
    cert, key = make_cert(tmp_path, ca, "h2.test", ["h2.test"])
    h = h2(tls={"certificates": [{"cert": str(cert), "key": str(key)}]})
    ctx = ssl.create_default_context(cafile=str(ca[1]))
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname="h2.test")
    assert s.selected_alpn_protocol() == "h2"
    s.sendall(b"INVALID CONNECTION PREFACE\r\n\r\n")
    got = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    except (ConnectionResetError, ssl.SSLError):
        pass
    s.close()
    assert not got.startswith(b"HTTP/1.1"), got
    # what came back is frames: the server's SETTINGS, then GOAWAY(PROTOCOL_ERROR)
    frames = []
    while len(got) >= 9:
        n = int.from_bytes(got[:3], "big")
        frames.append((got[3], got[4], int.from_bytes(got[5:9], "big"), got[9:9 + n]))
        got = got[9 + n:]
    assert goaway_code(frames) == PROTOCOL_ERROR, frames
    # and a valid client on the same listener is served
    raw = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname="h2.test")
    s.sendall(PREFACE + settings())
    s.close()
