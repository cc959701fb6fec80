"""Clients: raw sockets, a hand-written HTTP/1.x connection with a
framing-exact response parser, http.client and curl."""

import http.client
import re
import socket
import subprocess
import time

from helpers.env import IO_TIMEOUT


def raw(port, data, timeout=5.0, host="127.0.0.1", half_close=False):
    """Sends DATA on a new connection and reads until the peer closes or
    TIMEOUT passes. Returns all bytes received (a reset ends the read)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    chunks = []
    try:
        s.connect((host, port))
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except (ConnectionResetError, BrokenPipeError):
                break
            if not b:
                break
            chunks.append(b)
    finally:
        s.close()
    return b"".join(chunks)


class Response:
    def __init__(self, version, status, reason, headers):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value), as received
        self.body = b""
        self.complete = True  # False: the peer closed before the framing said
        self.framing = None  # "length", "chunked", "close", "none"
        self.interim = []  # 1xx responses seen before this one
        self.trailers = []

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def __repr__(self):
        return f"<Response {self.status} {self.framing} {len(self.body)}B complete={self.complete}>"


class RawConn:
    """A client connection speaking HTTP/1.x by hand, with a real response
    parser so tests can check framing byte for byte."""

    def __init__(self, port, host="127.0.0.1", timeout=IO_TIMEOUT, rcvbuf=None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        """Reads more into buf. Returns False at EOF/reset; raises
        TimeoutError when DEADLINE passes."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("read timed out")
        self.sock.settimeout(left)
        try:
            b = self.sock.recv(262144)
        except socket.timeout:
            raise TimeoutError("read timed out") from None
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        if not b:
            self.eof = True
            return False
        self.buf += b
        return True

    def read_until(self, delim, timeout=None):
        """Bytes up to and including DELIM; None if the peer closed first."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            i = self.buf.find(delim)
            if i >= 0:
                out = bytes(self.buf[: i + len(delim)])
                del self.buf[: i + len(delim)]
                return out
            if not self._fill(deadline):
                return None

    def read_exact(self, n, timeout=None):
        """Up to N bytes; fewer only if the peer closed."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n:
            if not self._fill(deadline):
                break
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while self._fill(deadline):
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def wait_closed(self, timeout=10.0):
        """True when the peer closes (EOF or reset) within TIMEOUT; any
        bytes that arrive meanwhile are kept in .buf."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            return False
        except OSError:
            return True
        return True

    def read_head(self, timeout=None):
        head = self.read_until(b"\r\n\r\n", timeout)
        if head is None:
            return None
        lines = head[:-4].split(b"\r\n")
        m = re.match(rb"(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise AssertionError(f"malformed status line: {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise AssertionError(f"malformed header line: {line!r}")
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        return Response(m.group(1).decode(), int(m.group(2)), (m.group(3) or b"").decode("latin-1"), headers)

    def read_response(self, method="GET", timeout=None, skip_interim=True):
        """Parses one response (status, headers, body by its framing).
        Returns None if the peer closed before a status line."""
        timeout = timeout or self.timeout
        interim = []
        while True:
            r = self.read_head(timeout)
            if r is None:
                return None
            if 100 <= r.status < 200 and r.status != 101 and skip_interim:
                interim.append(r)
                continue
            break
        r.interim = interim
        te = (r.header("Transfer-Encoding") or "").lower()
        cl = r.header("Content-Length")
        if method == "HEAD" or 100 <= r.status < 200 or r.status in (204, 304):
            r.framing = "none"
        elif "chunked" in te:
            r.framing = "chunked"
            body = bytearray()
            while True:
                line = self.read_until(b"\r\n", timeout)
                if line is None:
                    r.complete = False
                    break
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        t = self.read_until(b"\r\n", timeout)
                        if t is None:
                            r.complete = False
                            break
                        if t == b"\r\n":
                            break
                        r.trailers.append(t)
                    break
                data = self.read_exact(size + 2, timeout)
                body += data[:size]
                if len(data) < size + 2:
                    r.complete = False
                    break
                assert data[size:] == b"\r\n", "chunk not followed by CRLF"
            r.body = bytes(body)
        elif cl is not None:
            r.framing = "length"
            n = int(cl)
            r.body = self.read_exact(n, timeout)
            r.complete = len(r.body) == n
        else:
            r.framing = "close"
            r.body = self.read_to_eof(timeout)
        return r


def request_bytes(method, path, host="t", headers=(), body=b"", version="HTTP/1.1"):
    """Builds a request. HEADERS is a sequence of (name, value)."""
    lines = [f"{method} {path} {version}", f"Host: {host}"] if host is not None else [f"{method} {path} {version}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_responses(data, methods=None):
    """Splits raw bytes received on one connection into Response objects
    (uses a socketpair to reuse RawConn's parser)."""
    a, b = socket.socketpair()
    try:
        out = []
        conn = RawConn.__new__(RawConn)
        conn.sock, conn.timeout, conn.buf, conn.eof, conn.reset = a, 2.0, bytearray(data), True, False
        i = 0
        while conn.buf:
            m = methods[i] if methods and i < len(methods) else "GET"
            r = conn.read_response(method=m)
            if r is None:
                break
            out.append(r)
            i += 1
        return out
    finally:
        a.close()
        b.close()


def http_request(port, path, method="GET", headers=None, body=None, host="127.0.0.1", timeout=IO_TIMEOUT):
    """One request on a fresh connection. Returns (status, headers, body)
    with header names lower-cased (the last value wins)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def curl(*args, timeout=60):
    """Runs curl; returns CompletedProcess (stdout bytes, stderr text)."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(int(timeout)), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=timeout + 15,
    )
