"""Hostile HTTP/1.x input against the real binary: a deterministic (seeded)
mutation fuzzer.

About fifteen valid requests (GET/POST with Content-Length, chunked bodies,
pipelined pairs, HTTP/1.0, absolute-form, long headers), for both a proxied
route (to hx_backend) and static routes, are mutated a few times each (bit
flips, byte insertion and deletion, duplicated header lines, CR/LF/NUL
injection, truncation, huge Content-Length and chunk sizes) and sent each on
its own connection in random-sized pieces with tiny delays. heliosd must
stay alive, every response must start with "HTTP/1.1 " and a 3-digit status,
and a normal request must still get 200 at the end. The conftest teardown
fails the test on any sanitizer report in heliosd's stderr (CI runs this
under ASan too).

Set HELIOS_FUZZ_SEED to replay another seed; HELIOS_FUZZ_CASES to change the
count. A failing case is written to the test's tmp dir as case-N.bin."""

import os
import random
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import free_port, http_request, make_config, proxy_route, static_route, upstream_conf

SEED = int(os.environ.get("HELIOS_FUZZ_SEED", "20240611"))
CASES = int(os.environ.get("HELIOS_FUZZ_CASES", "1500"))
TIME_BUDGET = 60.0  # seconds of sending, whatever CASES says
READ_TIMEOUT = 2.0
PARALLEL = 16  # connections in flight; each case still has its own
BATCH = 64  # cases between liveness checks
STATUS_RX = re.compile(rb"^HTTP/1\.1 [1-5]\d\d ")

LONG = "v" * 6000


def seeds():
    req = []
    for host, path in (("a", "/app/echo"), ("a", "/static/x"), ("a", "/app/headers?q=1")):
        req += [
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n",
            f"GET {path} HTTP/1.0\r\n\r\n",
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello",
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\nGET {path} HTTP/1.1\r\nHost: {host}\r\n"
            "Connection: close\r\n\r\n",
        ]
    req += [
        "GET http://a/app/echo HTTP/1.1\r\nHost: a\r\n\r\n",
        f"GET /app/headers HTTP/1.1\r\nHost: a\r\nX-Long: {LONG}\r\nCookie: {LONG[:3000]}\r\n\r\n",
        "PUT /app/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
        "HEAD /static/x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST /app/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcdPOST /static/y HTTP/1.1\r\n"
        "Host: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n",
    ]
    return [s.encode("latin-1") for s in req]


HUGE = [b"99999999999999999999", b"18446744073709551616", b"18446744073709551615",
        b"-1", b"+5", b"0x10", b"4294967296", b"9223372036854775808", b" 5", b"5 5", b"1e3"]
HUGE_HEX = [b"ffffffffffffffff", b"10000000000000000", b"fffffffffffffffffffff", b"-1",
            b"0x5", b"7fffffffffffffff", b"5;" + b"x" * 5000, b"  5", b"5 "]
INJECT = [b"\r", b"\n", b"\0", b"\r\n", b"\r\n\r\n", b" ", b"\t", b":", b"\x7f", b"\xff",
          b"\r\nTransfer-Encoding: chunked", b"\r\nContent-Length: 0", b"\r\nContent-Length: 99",
          b"\r\nHost: b", b"\r\n Folded: x"]


def mutate(rng, data):
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(10)
        if op == 0 and b:  # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # byte insert
            i = rng.randint(0, len(b))
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2 and b:  # byte delete
            i = rng.randrange(len(b))
            del b[i : i + rng.randint(1, 8)]
        elif op == 3:  # duplicate a header line
            lines = bytes(b).split(b"\r\n")
            if len(lines) > 2:
                i = rng.randrange(1, len(lines) - 1)
                lines.insert(i, lines[i])
                b = bytearray(b"\r\n".join(lines))
        elif op == 4:  # CR/LF/NUL and friends
            i = rng.randint(0, len(b))
            b[i:i] = rng.choice(INJECT)
        elif op == 5 and b:  # truncation
            del b[rng.randrange(len(b)) :]
        elif op == 6:  # huge or odd Content-Length
            m = re.search(rb"Content-Length: *([^\r]*)", b, re.I)
            v = rng.choice(HUGE)
            if m:
                b[m.start(1) : m.end(1)] = v
            else:
                i = b.find(b"\r\n")
                if i > 0:
                    b[i:i] = b"\r\nContent-Length: " + v
        elif op == 7:  # huge or odd chunk size
            m = re.search(rb"\r\n\r\n([0-9a-fA-F]+)", b)
            if m:
                b[m.start(1) : m.end(1)] = rng.choice(HUGE_HEX)
        elif op == 8:  # repeat a slice (long lines, many headers)
            if b:
                i = rng.randrange(len(b))
                j = min(len(b), i + rng.randint(1, 64))
                b[j:j] = bytes(b[i:j]) * rng.randint(2, 200)
        else:  # swap the case of a token / change the version
            b = bytearray(bytes(b).replace(b"HTTP/1.1", rng.choice(
                [b"HTTP/1.1", b"HTTP/2.0", b"HTTP/1.9", b"HTTP/0.9", b"HTTP/1.10", b"http/1.1", b"HTTP/1.1 "]), 1))
    return bytes(b[:200000])


def pieces(rng, data):
    """Splits DATA into random-sized pieces (mostly whole, sometimes tiny)."""
    if rng.random() < 0.5:
        return [data]
    out, i = [], 0
    while i < len(data):
        n = rng.choice((1, 2, 3, 7, 64, 512, 4096))
        out.append(data[i : i + n])
        i += n
    return out[:200] + ([data[sum(map(len, out[:200])):]] if len(out) > 200 else [])


def case_bytes(base, n):
    rng = random.Random(SEED * 1_000_003 + n)
    seed_req = base[n % len(base)]
    return seed_req if n < len(base) else mutate(rng, seed_req)


def send_case(port, rng, data):
    """Returns the bytes received (until close or READ_TIMEOUT)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(READ_TIMEOUT)
    got = bytearray()
    try:
        s.connect(("127.0.0.1", port))
        parts = pieces(rng, data)
        delay = len(parts) > 1 and rng.random() < 0.3
        for p in parts:
            try:
                s.sendall(p)
            except (BrokenPipeError, ConnectionResetError):
                break
            if delay:
                time.sleep(0.001)
        try:
            s.shutdown(socket.SHUT_WR) if rng.random() < 0.3 else None
        except OSError:
            pass
        deadline = time.monotonic() + READ_TIMEOUT
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except (ConnectionResetError, BrokenPipeError):
                break
            if not b:
                break
            got += b
    finally:
        s.close()
    return bytes(got)


def test_mutated_requests_never_crash_and_get_wellformed_answers(heliosd, backend, tmp_path):
    port = free_port()
    cfg = make_config(
        port,
        [
            proxy_route("app", "app", match={"prefix": "/app/"}),
            static_route("static", "static body\n", match={"prefix": "/static/"}),
            static_route("root", "root\n"),
        ],
        {"app": upstream_conf(backend)},
        workers=2,
        # short timeouts: a case that leaves a request half-sent must not
        # hold heliosd's attention for long
        timeouts={"client_header": "1s", "client_body": "1s", "keepalive": "1s"},
    )
    h = heliosd(cfg)

    base = seeds()

    def case(n):
        # one generator per case: the bytes of case N do not depend on
        # thread scheduling, so a seed replays exactly
        rng = random.Random(SEED * 1_000_003 + n)
        seed_req = base[n % len(base)]
        data = seed_req if n < len(base) else mutate(rng, seed_req)
        return n, data, send_case(port, rng, data)

    start = time.monotonic()
    sent = answered = 0
    bad = []
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        for first in range(0, CASES, BATCH):
            if time.monotonic() - start > TIME_BUDGET:
                break
            for n, data, got in pool.map(case, range(first, min(CASES, first + BATCH))):
                sent += 1
                if got:
                    answered += 1
                    if not STATUS_RX.match(got):
                        (tmp_path / f"case-{n}.bin").write_bytes(data)
                        bad.append((n, data[:200], got[:200]))
                if n < len(base):
                    assert got.startswith(b"HTTP/1.1 "), f"valid seed {n} got {got[:200]!r}"
            if not h.alive():
                for n in range(first, min(CASES, first + BATCH)):
                    (tmp_path / f"case-{n}.bin").write_bytes(case_bytes(base, n))
                raise AssertionError(
                    f"heliosd died during cases {first}..{first + BATCH - 1} (seed {SEED}); their "
                    f"bytes are in {tmp_path}/case-N.bin\n{h.stderr()[-3000:]}")

    print(f"fuzz: seed {SEED}, {sent} cases, {answered} answered, {time.monotonic() - start:.1f}s")
    assert sent >= min(CASES, 300), f"only {sent} cases in {TIME_BUDGET}s"
    assert answered > sent // 4, f"only {answered} of {sent} cases got any answer"
    assert not bad, f"{len(bad)} malformed responses, first: {bad[:3]}"
    assert h.alive()
    assert http_request(port, "/app/echo", method="POST", body=b"ok")[0] == 200
    assert http_request(port, "/static/after")[0] == 200
