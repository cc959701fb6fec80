"""Listener `dispatch:` policies: which worker serves an accepted connection.

reuseport leaves it to the kernel's SO_REUSEPORT hash; round_robin,
least_loaded and power_of_two make the worker that accepted hand the
descriptor to the chosen worker. The access log's `worker` field says which
worker served each request, so every test reads the distribution from it.
"""
import collections
import json
import socket
import ssl
import uuid

import pytest

from conftest import (
    RawConn,
    curl,
    free_port,
    http_request,
    listening_sockets,
    make_ca,
    make_cert,
    make_config,
    request_bytes,
    static_route,
    wait_for,
)


def config(port, policy, workers=2, tls=None, h2c=None):
    listener = {"address": f"127.0.0.1:{port}"}
    if policy is not None:
        listener["dispatch"] = policy
    if tls:
        listener["tls"] = tls
    if h2c is not None:
        listener["h2c"] = h2c
    logging = {"level": "info", "access_log": "stdout", "access_log_format": "json"}
    return make_config(port, [static_route("hello", "hi\n")], workers=workers,
                       listeners=[listener], logging=logging)


def settled(port):
    """True when no connection to PORT is left but the listening sockets:
    the start-up readiness probe (connected, then closed by the client) is
    accepted and closed, so it cannot take a turn or count as load later."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] != "0A":
                    return False
    return True


def start(heliosd, port, *args, **kw):
    h = heliosd(config(port, *args, **kw))
    wait_for(lambda: settled(port), 15, what="the start-up probe connection to be closed")
    return h


def workers_of(h, paths):
    """The worker that served each of PATHS, from the access log."""
    want = set(paths)

    def lines():
        recs = [json.loads(x) for x in h.stdout().splitlines() if x.strip()]
        got = {r["path"]: r for r in recs if r["path"] in want}
        return got if len(got) == len(want) else None

    got = wait_for(lines, 15, what=f"access log lines for {len(want)} requests")
    return [got[p]["worker"] for p in paths]


def tag():
    return f"/{uuid.uuid4().hex}"


def fresh_connections(port, n):
    """N requests, each on a new connection closed before the next one."""
    paths = []
    for _ in range(n):
        p = tag()
        status, _, body = http_request(port, p)
        assert (status, body) == (200, b"hi\n")
        paths.append(p)
    return paths


def open_connections(port, n):
    """N keep-alive connections opened one after the other and left open,
    each answered once (so its worker took it before the next one opens)."""
    conns, paths = [], []
    for _ in range(n):
        c = RawConn(port)
        p = tag()
        c.send(request_bytes("GET", p))
        r = c.read_response()
        assert r is not None and r.status == 200
        conns.append(c)
        paths.append(p)
    return conns, paths


def close_via_server(conn):
    """Ends CONN with `Connection: close` and reads to EOF: the server has
    closed its side (and counted the connection gone) when this returns."""
    conn.send(request_bytes("GET", tag(), headers=[("Connection", "close")]))
    assert conn.read_response().status == 200
    assert conn.read_to_eof(10) == b""
    conn.close()


def test_reuseport_is_the_default_and_spreads_by_the_kernel_hash(heliosd):
    port = free_port()
    h = start(heliosd, port, None)
    paths = fresh_connections(port, 40)
    count = collections.Counter(workers_of(h, paths))
    # 40 connections from as many source ports: all on one of two sockets
    # would mean the hash is not spreading (odds 2**-39)
    assert set(count) == {0, 1}, count
    assert listening_sockets(port) == 2


@pytest.mark.parametrize("workers", [2, 3])
def test_round_robin_takes_turns(heliosd, workers):
    port = free_port()
    h = start(heliosd, port, "round_robin", workers=workers)
    paths = fresh_connections(port, 6 * workers)
    seq = workers_of(h, paths)
    # each worker in turn, whichever socket the kernel picked
    assert all(seq[i] == (seq[0] + i) % workers for i in range(len(seq))), seq
    assert collections.Counter(seq) == {w: 6 for w in range(workers)}


@pytest.mark.parametrize("policy", ["least_loaded", "power_of_two"])
def test_load_aware_policies_fill_the_worker_with_fewest_connections(heliosd, policy):
    port = free_port()
    h = start(heliosd, port, policy)
    conns, paths = open_connections(port, 10)
    try:
        seq = workers_of(h, paths)
        # with 2 workers power_of_two compares both: it is least_loaded
        assert collections.Counter(seq) == {0: 5, 1: 5}, seq
        # free three slots on worker 0: the next three connections go there
        on0 = [c for c, w in zip(conns, seq) if w == 0][:3]
        for c in on0:
            close_via_server(c)
            conns.remove(c)
        more, more_paths = open_connections(port, 3)
        conns += more
        assert workers_of(h, more_paths) == [0, 0, 0]
    finally:
        for c in conns:
            c.close()


@pytest.mark.parametrize("policy", ["least_loaded", "power_of_two"])
def test_each_connection_goes_by_the_load_it_sees_with_three_workers(heliosd, policy):
    port = free_port()
    h = start(heliosd, port, policy, workers=3)
    conns, paths = open_connections(port, 24)
    try:
        seq = workers_of(h, paths)
        load = [0, 0, 0]
        for i, w in enumerate(seq):
            if policy == "least_loaded":
                assert load[w] == min(load), (i, load, seq)
            else:
                # two distinct random workers, the less loaded: never the
                # one worker more loaded than both others
                top = max(load)
                assert not (load[w] == top and load.count(top) == 1), (i, load, seq)
            load[w] += 1
        if policy == "least_loaded":
            assert max(load) - min(load) <= 1, seq
    finally:
        for c in conns:
            c.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "dispatch-ca")
    cert, key = make_cert(d, ca, "a.test", ["a.test"])
    return {"ca": ca[1], "cert": cert, "key": key}


def test_tls_connections_are_handed_over_before_the_handshake(heliosd, pki):
    port = free_port()
    tls = {"certificates": [{"cert": str(pki["cert"]), "key": str(pki["key"])}]}
    h = start(heliosd, port, "round_robin", tls=tls)
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    socks, paths = [], []
    try:
        for _ in range(8):
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=15),
                                server_hostname="a.test")
            p = tag()
            s.sendall(request_bytes("GET", p, host="a.test"))
            data = b""
            while b"hi\n" not in data:
                chunk = s.recv(4096)
                assert chunk, data
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")
            socks.append(s)
            paths.append(p)
        seq = workers_of(h, paths)
        assert all(seq[i] != seq[i + 1] for i in range(7)), seq
    finally:
        for s in socks:
            s.close()
    # HTTP/2 over TLS (ALPN) goes through the same hand-over
    paths = [tag() for _ in range(6)]
    for p in paths:
        r = curl("--http2", "--cacert", str(pki["ca"]), "--resolve", f"a.test:{port}:127.0.0.1",
                 f"https://a.test:{port}{p}")
        assert r.returncode == 0 and r.stdout == b"hi\n", r.stderr
    recs = [json.loads(x) for x in h.stdout().splitlines() if x.strip()]
    assert {r["protocol"] for r in recs if r["path"] in paths} == {"HTTP/2"}
    seq = workers_of(h, paths)
    assert all(seq[i] != seq[i + 1] for i in range(5)), seq


def test_h2c_prior_knowledge_round_robin(heliosd):
    port = free_port()
    h = start(heliosd, port, "round_robin", h2c=True)
    paths = [tag() for _ in range(8)]
    for p in paths:
        r = curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}{p}")
        assert r.returncode == 0 and r.stdout == b"hi\n", r.stderr
    seq = workers_of(h, paths)
    assert all(seq[i] != seq[i + 1] for i in range(7)), seq


def test_reload_switches_the_policy_on_the_same_sockets(heliosd):
    port = free_port()
    h = start(heliosd, port, "reuseport")
    mark = h.err_mark()
    h.reload(config(port, "round_robin"))
    h.wait_stderr(r"configuration generation 2 is live", since=mark, timeout=15)
    seq = workers_of(h, fresh_connections(port, 8))
    assert all(seq[i] != seq[i + 1] for i in range(7)), seq
    assert listening_sockets(port) == 2


@pytest.mark.parametrize(
    "value, message",
    [
        ("round-robin", "invalid value 'round-robin' (did you mean 'round_robin'?): expected one of "
                        "reuseport, round_robin, least_loaded, power_of_two"),
        ("power-of-two", "did you mean 'power_of_two'?"),
        ("fastest", "invalid value 'fastest': expected one of reuseport, round_robin, least_loaded, "
                    "power_of_two"),
    ],
)
def test_unknown_policy_is_a_config_error_with_a_hint(check_config, value, message):
    cfg = config(8080, value)
    rc, out, err = check_config(cfg)
    assert rc != 0
    assert "listeners[0].dispatch" in err and message in err, err
