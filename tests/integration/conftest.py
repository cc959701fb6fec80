"""Fixtures and helpers for the heliosd integration tests.

Everything here drives real processes on the loopback interface: the heliosd
binary, the hx_backend test server and real clients (http.client, curl, raw
sockets, wrk). Nothing is mocked.

Rules every helper follows, so the suite stays robust on a loaded 2-core CI
machine:
  * every loop is bounded in count and in time;
  * readiness is detected by polling (a port accepting, a `ready` line, a log
    line), never by a fixed sleep;
  * only 127.0.0.1 and ::1 are used, on ports found by binding port 0.

Environment (set by ctest; defaults are relative to the repository root):
  HELIOSD            the binary             (build/heliosd)
  HELIOS_MODULE_DIR  passed as -m           (build/modules)
  HX_BACKEND         the test backend       (build/hx_backend)
  HELIOS_SOURCE_DIR  the repository root    (two levels above this file)
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
SOURCE_DIR = Path(os.environ.get("HELIOS_SOURCE_DIR") or HERE.parent.parent).resolve()


def _env_path(var, default):
    value = os.environ.get(var)
    return Path(value) if value else SOURCE_DIR / default


HELIOSD = _env_path("HELIOSD", "build/heliosd")
MODULE_DIR = _env_path("HELIOS_MODULE_DIR", "build/modules")
# tests/modules/*.c: broken modules and ABI probes, never installed
TEST_MODULE_DIR = _env_path("HELIOS_TEST_MODULE_DIR", "build/test-modules")
HX_BACKEND = _env_path("HX_BACKEND", "build/hx_backend")

# Generous on purpose: a loaded CI machine, maybe an ASan build.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 45.0
IO_TIMEOUT = 20.0

STARTED_RX = re.compile(r"\bstarted\b")
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "big: 1 GiB transfer acceptance tests (run in CI; each kept under ~60 s)",
    )


# --------------------------------------------------------------------------
# small utilities


def free_port(host="127.0.0.1"):
    """A port nothing listens on right now (bind port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def wait_for(predicate, timeout=10.0, interval=0.05, what="condition"):
    """Polls PREDICATE until it returns a truthy value; returns that value.
    Raises AssertionError after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - reported below
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def port_accepts(port, host="127.0.0.1", timeout=1.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def rss_kb(pid):
    """Resident set size of PID in KiB, from /proc/PID/status (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def thread_count(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Threads for pid {pid}")


def listening_sockets(port, v6=False):
    """Number of TCP sockets in LISTEN state on PORT (any address)."""
    path = "/proc/net/tcp6" if v6 else "/proc/net/tcp"
    n = 0
    with open(path) as f:
        next(f)
        for line in f:
            parts = line.split()
            local, state = parts[1], parts[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


def listening_inodes(port, v6=False):
    """Socket inodes of the TCP sockets in LISTEN state on PORT: the same
    inodes before and after a reload mean the sockets were kept open."""
    path = "/proc/net/tcp6" if v6 else "/proc/net/tcp"
    out = set()
    with open(path) as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                out.add(int(parts[9]))
    return out


def is_sanitizer_build():
    """True when HELIOSD is built with ASan (RSS numbers mean little then:
    ASan's quarantine keeps up to 256 MiB of freed memory resident)."""
    if os.environ.get("HELIOS_SANITIZE", "").lower() in ("1", "on", "true", "yes"):
        return True
    try:
        data = HELIOSD.read_bytes()
    except OSError:
        return False
    return b"__asan_init" in data or b"AddressSanitizer" in data


class RssSampler:
    """Samples VmRSS of a pid in a background thread; .max is the peak."""

    def __init__(self, pid, interval=0.05):
        self.pid = pid
        self.interval = interval
        self.max = 0
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.max = max(self.max, rss_kb(self.pid))
                self.samples += 1
            except (OSError, RuntimeError):
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=5)


# --------------------------------------------------------------------------
# the byte pattern of /bytes/N (byte i = i % 251) and the /sink checksum

PATTERN = bytes(i % 251 for i in range(251 * 4200))  # ~1 MiB + a period
PATTERN_PERIOD = 251
SINK_CHUNK = PATTERN[: 251 * 4096]  # whole periods, so chunks chain exactly


def pattern_bytes(offset, n):
    """N bytes of the /bytes pattern starting at stream offset OFFSET."""
    out = bytearray()
    while n > 0:
        start = offset % PATTERN_PERIOD
        take = min(n, len(PATTERN) - start)
        out += PATTERN[start : start + take]
        offset += take
        n -= take
    return bytes(out)


def pattern_ok(data, offset=0):
    """True when DATA equals the /bytes pattern at stream offset OFFSET."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        start = (offset + pos) % PATTERN_PERIOD
        take = min(len(view) - pos, len(PATTERN) - start)
        if view[pos : pos + take] != PATTERN[start : start + take]:
            return False
        pos += take
    return True


def pattern_sum(n):
    """Sum mod 2^32 of the first N pattern bytes (what /sink reports)."""
    full, rem = divmod(n, PATTERN_PERIOD)
    return (full * (250 * 251 // 2) + rem * (rem - 1) // 2) % (1 << 32)


# --------------------------------------------------------------------------
# raw sockets


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


# --------------------------------------------------------------------------
# http.client helpers


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


# --------------------------------------------------------------------------
# the test backend


class Backend:
    """One hx_backend process on 127.0.0.1."""

    def __init__(self, name, workdir, port=None, host="127.0.0.1"):
        self.name = name
        self.host = host
        self.port = port or free_port(host)
        self.workdir = Path(workdir)
        self.proc = None
        self.stdout_lines = []
        self.errfile = self.workdir / f"backend-{name}.stderr"
        self._reader = None

    @property
    def address(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self):
        if not HX_BACKEND.exists():
            pytest.fail(f"test backend not built: {HX_BACKEND}")
        err = open(self.errfile, "ab")
        self.proc = subprocess.Popen(
            [str(HX_BACKEND), "--listen", self.address, "--name", self.name],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        err.close()
        ready = threading.Event()
        saw_ready = []
        lines = self.stdout_lines
        proc = self.proc

        def reader():
            # Keeps draining stdout so the backend never blocks on a full pipe.
            for line in proc.stdout:
                lines.append(line.decode("utf-8", "replace").rstrip("\n"))
                if "ready" in lines[-1]:
                    saw_ready.append(True)
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=reader, daemon=True)
        self._reader.start()
        if not ready.wait(START_TIMEOUT) or not saw_ready or proc.poll() is not None:
            self.kill()
            raise AssertionError(
                f"backend {self.name} did not print 'ready' on {self.address}: "
                f"stdout={self.stdout_lines!r} stderr={self.errfile.read_text(errors='replace')[-2000:]!r}"
            )
        wait_for(lambda: port_accepts(self.port, self.host), START_TIMEOUT, what=f"backend {self.name} to accept")
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()

    def restart(self):
        """Kills the process (its connections die with it) and starts a new
        one on the same port."""
        self.kill()
        # The port may take a moment to be bindable again; retry a few times.
        last = None
        for _ in range(20):
            try:
                return self.start()
            except AssertionError as e:
                last = e
                time.sleep(0.2)
        raise last

    def stats(self):
        status, _, body = http_request(self.port, "/stats", host=self.host)
        assert status == 200, f"backend /stats answered {status}"
        return json.loads(body)

    def reset_stats(self):
        http_request(self.port, "/stats/reset", host=self.host)


@pytest.fixture
def backends(tmp_path):
    """Factory: backends("a", "b") starts and returns Backend objects; all are
    stopped at teardown."""
    started = []

    def make(*names):
        out = []
        for name in names:
            b = Backend(name, tmp_path)
            started.append(b)
            out.append(b.start())
        return out[0] if len(out) == 1 else out

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def backend(backends):
    return backends("a")


# --------------------------------------------------------------------------
# heliosd


class _NoAliasDumper(yaml.SafeDumper):
    # heliosd refuses YAML anchors/aliases; never emit them.
    def ignore_aliases(self, data):
        return True


def _str_representer(dumper, data):
    # Double quotes make escapes like "\n" explicit and keep one line.
    style = '"' if any(ch in data for ch in "\n\r\t\0") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_NoAliasDumper.add_representer(str, _str_representer)


def to_yaml(config):
    return yaml.dump(config, Dumper=_NoAliasDumper, default_flow_style=False, sort_keys=False)


def static(body, status=200, headers=None):
    cfg = {"status": status, "body": body}
    if headers:
        cfg["headers"] = headers
    return {"module": "static_response", "config": cfg}


def static_route(name, body, match=None, status=200, headers=None):
    return {"name": name, "match": match or {"prefix": "/"}, "handler": static(body, status, headers)}


def proxy_route(name, upstream, match=None):
    return {"name": name, "match": match or {"prefix": "/"}, "upstream": upstream}


def upstream_conf(*bks, balancer="round_robin", **extra):
    u = {
        "balancer": balancer,
        "backends": [
            {"name": b.name, "address": b.address} if isinstance(b, Backend) else b for b in bks
        ],
    }
    u.update(extra)
    return u


def make_config(port, routes, upstreams=None, workers=1, listeners=None, **top):
    """A complete config dict: one 127.0.0.1 listener on PORT by default."""
    cfg = {
        "workers": workers,
        "listeners": listeners if listeners is not None else [{"address": f"127.0.0.1:{port}"}],
    }
    if upstreams:
        cfg["upstreams"] = upstreams
    cfg["routes"] = routes
    cfg.setdefault("logging", {"level": "info"})
    for k, v in top.items():
        cfg[k] = v
    return cfg


def proxy_config(port, *bks, timeouts=None, upstream_extra=None, **top):
    """Everything proxied to an upstream `app` made of BKS."""
    return make_config(
        port,
        [proxy_route("app", "app")],
        {"app": upstream_conf(*bks, **(upstream_extra or {}))},
        **({"timeouts": timeouts} if timeouts else {}),
        **top,
    )


class Heliosd:
    """One heliosd process. stdout (access log) and stderr (error log) go to
    files under the test's tmp_path."""

    def __init__(self, workdir, config, port=None, name="heliosd"):
        self.dir = Path(workdir) / name
        self.confdir = self.dir / "conf.d"
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.conffile = self.confdir / "heliosd.yaml"
        self.stdout_path = self.dir / "stdout.log"
        self.stderr_path = self.dir / "stderr.log"
        self.proc = None
        self.rc = None
        self.expected_rc = 0  # what teardown accepts
        self.port = port
        self.write_config(config)

    # config --------------------------------------------------------------

    def write_config(self, config):
        text = config if isinstance(config, str) else to_yaml(config)
        if self.port is None and not isinstance(config, str):
            addr = config["listeners"][0]["address"]
            self.port = int(addr.rsplit(":", 1)[1])
        tmp = self.conffile.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.conffile)  # atomic: a reload never sees half a file
        self.config_text = text

    # process -------------------------------------------------------------

    @property
    def pid(self):
        return self.proc.pid

    def start(self, wait=True, extra_args=()):
        if not HELIOSD.exists():
            pytest.fail(f"heliosd not built: {HELIOSD}")
        self._start_mark = self.err_mark()
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [str(HELIOSD), "-c", str(self.confdir), "-m", str(MODULE_DIR), *extra_args],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        err.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, port=None, host="127.0.0.1"):
        port = port or self.port
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"heliosd exited with {self.proc.returncode} during start-up; stderr:\n{self.stderr()[-4000:]}"
                )
            if port_accepts(port, host, timeout=1.0):
                self._wait_started()
                return
            time.sleep(0.05)
        raise AssertionError(f"heliosd did not accept on {host}:{port} within {START_TIMEOUT}s; stderr:\n{self.stderr()[-4000:]}")

    def _wait_started(self, grace=3.0):
        """Listeners accept a little before the main thread handles
        signals; the "started" log line (level info) marks the end of the
        start-up. Without that line (quieter log level), wait GRACE s."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if STARTED_RX.search(self.stderr()[self._start_mark :]) or self.proc.poll() is not None:
                return
            time.sleep(0.02)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        assert self.alive(), f"heliosd is not running (rc={self.proc.returncode}); stderr:\n{self.stderr()[-3000:]}"
        self.proc.send_signal(sig)

    def reload(self, config=None):
        """Writes CONFIG (if given) and sends SIGHUP. Callers poll for the
        effect: a reload is asynchronous."""
        if config is not None:
            self.write_config(config)
        self.signal(signal.SIGHUP)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        try:
            self.rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.rc

    def stop(self, sig=None, timeout=STOP_TIMEOUT):
        """Sends SIG (SIGTERM) and waits; returns the exit code. Kills and
        fails when the process does not exit within TIMEOUT."""
        sig = sig if sig is not None else signal.SIGTERM
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.wait_exit(timeout)
        if rc is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.rc = "killed"
            raise AssertionError(f"heliosd did not exit within {timeout}s of signal {sig}")
        return rc

    # logs ----------------------------------------------------------------

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout(self):
        try:
            return self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def err_mark(self):
        return len(self.stderr())

    def wait_stderr(self, pattern, since=0, timeout=10.0, flags=re.I):
        """Polls the error log until PATTERN (regex) appears after offset
        SINCE; returns the match."""
        rx = re.compile(pattern, flags)
        return wait_for(
            lambda: rx.search(self.stderr()[since:]),
            timeout,
            what=f"error log to match {pattern!r} (log tail: {self.stderr()[-1500:]!r})",
        )

    def check_sane(self):
        """Teardown checks: no crash, no sanitizer report."""
        problems = []
        text = self.stderr()
        for marker in SANITIZER_MARKERS:
            if marker in text:
                i = text.index(marker)
                problems.append(f"stderr contains {marker!r}:\n{text[max(0, i - 500): i + 3000]}")
        if self.rc not in (None, "killed") and self.expected_rc is not None and self.rc != self.expected_rc:
            problems.append(f"heliosd exited with {self.rc} (expected {self.expected_rc}); stderr tail:\n{text[-3000:]}")
        return problems

    # client shortcuts ----------------------------------------------------

    def get(self, path, **kw):
        return http_request(self.port, path, **kw)

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def heliosd(tmp_path):
    """Factory: heliosd(config) writes CONFIG (dict or YAML text; give port=
    with text) and starts heliosd, waiting until the listener accepts.
    Teardown stops every instance with SIGTERM and fails on a crash, a
    non-zero exit or a sanitizer report."""
    instances = []

    def make(config, port=None, start=True, name=None, extra_args=()):
        h = Heliosd(tmp_path, config, port=port, name=name or f"heliosd{len(instances)}")
        instances.append(h)
        if start:
            h.start(extra_args=extra_args)
        return h

    yield make
    problems = []
    for h in instances:
        if h.proc is None:
            continue
        if h.proc.poll() is None:
            try:
                h.stop()
            except AssertionError as e:
                problems.append(str(e))
        elif h.rc is None:
            h.rc = h.proc.returncode
        if isinstance(h.rc, int) and h.rc < 0 and h.expected_rc is not None:
            problems.append(f"heliosd died from signal {-h.rc}")
        problems += h.check_sane()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)
