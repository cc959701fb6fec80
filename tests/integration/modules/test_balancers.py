"""Load-balancing strategies through the real binary with real backends:
every strategy serves and spreads, smooth weighted round robin keeps its
ratio, least_connections and power_of_two avoid a slow backend, the hash
strategies stick (client after trusted_proxies, header, cookie), and the
runtime control plane (add, remove, re-weight, drain, switch strategy) never
fails a request in flight or under load.

Runtime changes go through the test-only `ctl` handler module
(tests/modules/ctl.c, built into $HELIOS_TEST_MODULE_DIR) routed at /_ctl/:
heliosd runs with -m pointing at a directory of links to the shipped modules
plus ctl.so. The admin API of a later issue will expose the same host calls
over REST.

A slow backend is an hx_backend behind DelayRelay, a TCP relay that holds
everything the backend sends for a fixed time (a latency fault injector, like
toxiproxy's latency toxic): every answer of that backend is slow whatever the
path, while the client load stays the same for all backends.
"""

import http.client
import json
import os
import socket
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest

from conftest import (
    IO_TIMEOUT,
    MODULE_DIR,
    SOURCE_DIR,
    RawConn,
    free_port,
    http_request,
    make_config,
    proxy_route,
    request_bytes,
    upstream_conf,
    wait_for,
)

TEST_MODULE_DIR = Path(os.environ.get("HELIOS_TEST_MODULE_DIR") or SOURCE_DIR / "build" / "test-modules")

STRATEGIES = [
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "power_of_two",
    "ip_hash",
    "ip_hash_consistent",
    "maglev",
]
HASH_STRATEGIES = ["ip_hash", "ip_hash_consistent", "maglev"]


# --------------------------------------------------------------------------
# heliosd with the ctl module


@pytest.fixture
def module_dir(tmp_path):
    """The shipped modules plus ctl.so, as links in one directory."""
    ctl = TEST_MODULE_DIR / "ctl.so"
    if not ctl.exists():
        pytest.fail(f"test module not built: {ctl}")
    d = tmp_path / "modules"
    d.mkdir()
    for m in MODULE_DIR.glob("*.so"):
        (d / m.name).symlink_to(m.resolve())
    (d / "ctl.so").symlink_to(ctl.resolve())
    for name in STRATEGIES:
        if not (d / f"{name}.so").exists():
            pytest.fail(f"balancer module not built: {MODULE_DIR / (name + '.so')}")
    return d


@pytest.fixture
def lb(heliosd, module_dir):
    """Factory: lb(config) starts heliosd on CONFIG with the ctl module."""

    def make(config):
        # The fixture passes -m HELIOS_MODULE_DIR first; the last -m wins.
        return heliosd(config, extra_args=("-m", str(module_dir)))

    return make


def lb_config(port, backends, balancer="round_robin", workers=1):
    """Upstream `app` of BACKENDS (Backend objects or dicts) behind /, the
    ctl handler on /_ctl/, and 127.0.0.1 trusted as a proxy so that tests
    choose the client address with X-Forwarded-For."""
    routes = [
        {"name": "ctl", "match": {"prefix": "/_ctl/"}, "handler": "ctl"},
        proxy_route("app", "app"),
    ]
    return make_config(
        port,
        routes,
        {"app": upstream_conf(*backends, balancer=balancer)},
        workers=workers,
        trusted_proxies=["127.0.0.1/32"],
    )


def weighted(backend, weight):
    return {"name": backend.name, "address": backend.address, "weight": weight}


def ctl(h, op, **params):
    """GET /_ctl/OP?PARAMS; returns (status, body text)."""
    status, _, body = http_request(h.port, f"/_ctl/{op}?{urllib.parse.urlencode(params)}")
    return status, body.decode("utf-8", "replace")


def ctl_ok(h, op, **params):
    status, text = ctl(h, op, **params)
    assert status == 200, f"/_ctl/{op} {params}: {status} {text!r}"
    return text


def listing(h, upstream="app"):
    doc = json.loads(ctl_ok(h, "list", upstream=upstream))
    return doc["balancer"], {b["name"]: b for b in doc["backends"]}


# --------------------------------------------------------------------------
# clients


def client_ip(i):
    """A distinct client address per I (IPv4; every fourth one IPv6)."""
    if i % 4 == 3:
        return f"2001:db8:{i % 65536:x}::{(i * 7919) % 65536:x}"
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def send_many(port, n, headers=lambda i: (), path=lambda i: "/"):
    """N requests on one keep-alive connection; returns the X-Backend of
    each, in order. Every answer must be a 200."""
    seen = []
    with RawConn(port) as c:
        for i in range(n):
            c.send(request_bytes("GET", path(i), headers=headers(i)))
            r = c.read_response()
            assert r is not None and r.status == 200, f"request {i}: {r}"
            seen.append(r.header("X-Backend"))
    return seen


def get_backend(port, path="/", headers=None):
    """One request on a new connection (so any worker may take it)."""
    status, hdrs, body = http_request(port, path, headers=headers or {})
    assert status == 200, f"{path} {headers}: {status} {body[:200]!r}"
    return hdrs.get("x-backend")


class Slow:
    """GET PATH in a thread, started now; .result() = (status, X-Backend)."""

    def __init__(self, port, path):
        self.out = {}
        self.t = threading.Thread(target=self._run, args=(port, path), daemon=True)
        self.t.start()

    def _run(self, port, path):
        t0 = time.monotonic()
        try:
            status, hdrs, _ = http_request(port, path, timeout=IO_TIMEOUT)
            self.out["r"] = (status, hdrs.get("x-backend"))
        except Exception as e:  # noqa: BLE001 - reported by result()
            self.out["r"] = (repr(e), None)
        self.out["elapsed"] = time.monotonic() - t0

    def result(self, timeout=IO_TIMEOUT):
        self.t.join(timeout)
        assert not self.t.is_alive(), "slow request did not finish"
        return self.out["r"]


class DelayRelay:
    """A TCP relay on 127.0.0.1 to TARGET_PORT that holds every chunk the
    backend sends for DELAY seconds before passing it on."""

    def __init__(self, target_port, delay):
        self.target_port = target_port
        self.delay = delay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                down, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                down.close()
                continue
            down.settimeout(None)
            up.settimeout(None)
            self.conns += [down, up]
            threading.Thread(target=self._pump, args=(down, up, 0), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, self.delay), daemon=True).start()

    @staticmethod
    def _pump(src, dst, delay):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.stopping.set()
        self.sock.close()
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass


class LoadRun:
    """THREADS clients, each on its own keep-alive connection, sending
    requests (every fifth one /slow?ms=40, so some are always in flight)
    with a per-request X-Forwarded-For until stop() or MAX_SECONDS. Records
    (start, end, status, X-Backend) per request and every client-side error."""

    def __init__(self, port, threads=6, max_seconds=20.0):
        self.port = port
        self.results = []
        self.errors = []
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, tid):
        conn = None
        i = 0
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=IO_TIMEOUT)
            path = "/slow?ms=40" if i % 5 == 4 else "/"
            t0 = time.monotonic()
            try:
                conn.request("GET", path, headers={"X-Forwarded-For": client_ip(tid * 100000 + i)})
                resp = conn.getresponse()
                resp.read()
                self.results.append((t0, time.monotonic(), resp.status, resp.getheader("X-Backend")))
                if resp.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every error is a test failure
                self.errors.append((t0, path, repr(e)))
                conn.close()
                conn = None
            i += 1
        if conn is not None:
            conn.close()

    def count(self):
        return len(self.results)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(IO_TIMEOUT + 5)
        assert not any(t.is_alive() for t in self.threads), "load clients did not stop"


# --------------------------------------------------------------------------
# every strategy


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_serves_spreads_and_skips_unusable_backends(lb, backends, strategy):
    a, b, c = backends("a", "b", "c")
    h = lb(lb_config(free_port(), [a, b, c], balancer=strategy))
    xff = lambda i: [("X-Forwarded-For", client_ip(i))]  # noqa: E731

    counts = Counter(send_many(h.port, 90, headers=xff))
    print(f"{strategy}: 90 requests from 90 clients: {dict(counts)}")
    assert set(counts) == {"a", "b", "c"}, counts
    assert min(counts.values()) >= 10, counts
    if strategy in ("round_robin", "weighted_round_robin", "least_connections"):
        # sequential requests: nothing in flight between them, equal weights
        assert counts == {"a": 30, "b": 30, "c": 30}, counts

    # what a health module would report: b is down
    ctl_ok(h, "health", upstream="app", name="b", on=0)
    counts = Counter(send_many(h.port, 60, headers=xff))
    assert "b" not in counts and set(counts) == {"a", "c"}, counts

    # and a is drained: everything goes to c
    ctl_ok(h, "drain", upstream="app", name="a", on=1)
    assert Counter(send_many(h.port, 30, headers=xff)) == {"c": 30}

    # nothing usable left: 503
    ctl_ok(h, "drain", upstream="app", name="c", on=1)
    status, _, _ = h.get("/", headers={"X-Forwarded-For": client_ip(1)})
    assert status == 503

    ctl_ok(h, "health", upstream="app", name="b", on=1)
    assert Counter(send_many(h.port, 10, headers=xff)) == {"b": 10}


def test_weighted_round_robin_5_2_1_interleaves_like_nginx(lb, backends):
    a, b, c = backends("a", "b", "c")
    h = lb(lb_config(free_port(), [weighted(a, 5), weighted(b, 2), weighted(c, 1)],
                     balancer="weighted_round_robin"))
    seen = send_many(h.port, 80)
    counts = Counter(seen)
    print("weighted_round_robin 5/2/1, 80 requests:", "".join(seen), dict(counts))
    assert counts == {"a": 50, "b": 20, "c": 10}, counts
    # nginx's smooth sequence for 5/2/1, ten times over: never a burst of a
    assert "".join(seen) == "abaacaba" * 10


@pytest.mark.parametrize("strategy", ["weighted_round_robin", "maglev"])
def test_runtime_weight_change_takes_effect(lb, backends, strategy):
    """/_ctl/weight: weighted_round_robin reads weights on every pick;
    maglev builds its table from them, and must notice that the core
    changed a weight in place (no new list, no backends_changed call)."""
    a, b = backends("a", "b")
    h = lb(lb_config(free_port(), [a, b], balancer=strategy))
    clients = 400
    xff = lambda i: [("X-Forwarded-For", client_ip(i))]  # noqa: E731
    before = Counter(send_many(h.port, clients, headers=xff))
    ctl_ok(h, "weight", upstream="app", name="b", weight=3)
    assert listing(h)[1]["b"]["weight"] == 3
    after = Counter(send_many(h.port, clients, headers=xff))
    print(f"{strategy}: weights 1/1 {dict(before)}, after b -> 3: {dict(after)}")
    assert 0.4 <= before["b"] / clients <= 0.6, before
    assert 0.68 <= after["b"] / clients <= 0.82, f"weight change ignored: {after}"


# --------------------------------------------------------------------------
# load-aware strategies


def slow_backend_share(lb, backends, strategy, clients=8, per_client=30, delay=0.2):
    """Share of requests the slow one of two backends (b, behind a relay
    adding DELAY to every answer) gets from CLIENTS concurrent keep-alive
    clients sending PER_CLIENT requests each."""
    a, b = backends("a", "b")
    relay = DelayRelay(b.port, delay)
    try:
        h = lb(lb_config(free_port(), [a, {"name": "b", "address": relay.address}], balancer=strategy))
        seen, errors = [], []

        def client(k):
            try:
                seen.extend(send_many(h.port, per_client))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(seen) == clients * per_client
        counts = Counter(seen)
        print(f"{strategy}: {clients} clients x {per_client}, b answers {delay * 1000:.0f} ms slower: {dict(counts)}")
        return counts["b"] / len(seen)
    finally:
        relay.close()


@pytest.mark.parametrize("strategy", ["least_connections", "power_of_two"])
def test_load_aware_strategies_send_fewer_requests_to_a_slow_backend(lb, backends, strategy):
    share = slow_backend_share(lb, backends, strategy)
    assert share < 0.2, f"{strategy} sent {share:.0%} of requests to the slow backend"


def test_round_robin_does_not_avoid_a_slow_backend(lb, backends):
    """The control for the test above: same load, same slow backend."""
    share = slow_backend_share(lb, backends, "round_robin", per_client=12)
    assert 0.4 <= share <= 0.6, share


# --------------------------------------------------------------------------
# hash strategies


@pytest.mark.parametrize("strategy", HASH_STRATEGIES)
@pytest.mark.parametrize("key", ["client", "header:X-User", "cookie:sid"])
def test_hash_strategies_stick_across_connections_and_workers(lb, backends, strategy, key):
    a, b, c = backends("a", "b", "c")
    h = lb(lb_config(free_port(), [a, b, c], balancer={"module": strategy, "config": {"key": key}}, workers=2))

    def headers(user, attempt):
        # the parts that are not the key vary between attempts
        if key == "client":
            return {"X-Forwarded-For": client_ip(user)}
        hdrs = {"X-Forwarded-For": client_ip(1000 + user * 3 + attempt)}
        if key.startswith("header:"):
            hdrs["X-User"] = f"user-{user}"
        else:
            hdrs["Cookie"] = f"theme=t{attempt}; sid=s{user:05d}; lang=en"
        return hdrs

    where = {}
    for attempt in range(3):
        for user in range(30):
            got = get_backend(h.port, headers=headers(user, attempt))
            assert where.setdefault(user, got) == got, f"user {user} moved from {where[user]} to {got}"
    spread = Counter(where.values())
    print(f"{strategy} key {key}: 30 users over 3 backends: {dict(spread)}")
    assert len(spread) >= 2, spread


@pytest.mark.parametrize("strategy", HASH_STRATEGIES)
def test_hash_strategies_ignore_forwarded_for_from_untrusted_peers(lb, backends, strategy):
    """The key is the client after trusted_proxies: with no trusted proxy,
    X-Forwarded-For is the client's own claim and changes nothing."""
    a, b, c = backends("a", "b", "c")
    cfg = lb_config(free_port(), [a, b, c], balancer=strategy)
    del cfg["trusted_proxies"]
    h = lb(cfg)
    seen = send_many(h.port, 40, headers=lambda i: [("X-Forwarded-For", client_ip(i))])
    assert len(set(seen)) == 1, Counter(seen)


# --------------------------------------------------------------------------
# draining and removing


def slow_request_on(h, name, other, ms):
    """Starts GET /slow?ms=MS that is sure to go to backend NAME (OTHER is
    drained meanwhile), and returns it once NAME has it in flight."""
    ctl_ok(h, "drain", upstream="app", name=other, on=1)
    slow = Slow(h.port, f"/slow?ms={ms}")
    wait_for(lambda: listing(h)[1][name]["inflight"] == 1, 10, what=f"the slow request to reach {name}")
    ctl_ok(h, "drain", upstream="app", name=other, on=0)
    return slow


def test_drained_backend_gets_no_new_requests_while_in_flight_ones_finish(lb, backends):
    a, b = backends("a", "b")
    h = lb(lb_config(free_port(), [a, b]))
    slow = slow_request_on(h, "b", "a", 1500)
    ctl_ok(h, "drain", upstream="app", name="b", on=1)
    _, state = listing(h)
    assert state["b"]["draining"] and state["b"]["inflight"] == 1, state

    seen = Counter(send_many(h.port, 20))
    assert seen == {"a": 20}, seen
    assert slow.result() == (200, "b")
    assert slow.out["elapsed"] >= 1.4
    assert listing(h)[1]["b"]["inflight"] == 0

    ctl_ok(h, "drain", upstream="app", name="b", on=0)
    assert Counter(send_many(h.port, 10)) == {"a": 5, "b": 5}


def test_removed_backend_finishes_its_request_in_flight(lb, backends):
    a, b = backends("a", "b")
    h = lb(lb_config(free_port(), [a, b]))
    slow = slow_request_on(h, "b", "a", 1500)
    ctl_ok(h, "remove", upstream="app", name="b")
    assert set(listing(h)[1]) == {"a"}
    assert Counter(send_many(h.port, 20)) == {"a": 20}
    assert slow.result() == (200, "b")
    # the name is free again, and the backend comes back
    ctl_ok(h, "add", upstream="app", name="b", address=b.address)
    assert Counter(send_many(h.port, 10)) == {"a": 5, "b": 5}


def test_every_backend_drained_is_503_until_one_comes_back(lb, backends):
    a, b = backends("a", "b")
    h = lb(lb_config(free_port(), [a, b], balancer="least_connections"))
    for name in ("a", "b"):
        ctl_ok(h, "drain", upstream="app", name=name, on=1)
    for _ in range(5):
        status, _, _ = h.get("/")
        assert status == 503
    ctl_ok(h, "drain", upstream="app", name="b", on=0)
    assert Counter(send_many(h.port, 5)) == {"b": 5}


def test_removing_every_backend_is_503_and_adding_one_serves_again(lb, backends):
    a, b = backends("a", "b")
    h = lb(lb_config(free_port(), [a], balancer="maglev"))
    ctl_ok(h, "remove", upstream="app", name="a")
    status, _, _ = h.get("/")
    assert status == 503
    ctl_ok(h, "add", upstream="app", name="b", address=b.address, weight=2)
    assert Counter(send_many(h.port, 5)) == {"b": 5}


# --------------------------------------------------------------------------
# runtime changes under load


def test_switching_strategy_and_adding_removing_backends_under_load_fails_nothing(lb, backends):
    a, b, c = backends("a", "b", "c")
    h = lb(lb_config(free_port(), [a, b], workers=2))
    load = LoadRun(h.port, threads=6)
    try:
        wait_for(lambda: load.count() >= 200, 20, what="the load to get going")
        ctl_ok(h, "add", upstream="app", name="c", address=c.address)
        added = time.monotonic()
        time.sleep(0.5)
        for strategy in STRATEGIES[1:] + STRATEGIES[:1]:
            ctl_ok(h, "balancer", upstream="app", module=strategy)
            time.sleep(0.5)
        ctl_ok(h, "weight", upstream="app", name="b", weight=3)
        ctl_ok(h, "remove", upstream="app", name="a")
        removed = time.monotonic()
        time.sleep(1.0)
    finally:
        load.stop()

    assert listing(h)[0] == "round_robin"
    statuses = Counter(r[2] for r in load.results)
    print(f"{len(load.results)} requests, statuses {dict(statuses)}, errors {len(load.errors)}; "
          f"by backend {dict(Counter(r[3] for r in load.results))}")
    assert not load.errors, load.errors[:10]
    assert statuses == {200: len(load.results)}, statuses
    after_add = Counter(r[3] for r in load.results if r[0] > added)
    after_remove = Counter(r[3] for r in load.results if r[0] > removed)
    assert after_add["c"] > 0, after_add
    assert after_remove["a"] == 0, f"the removed backend got requests: {after_remove}"
    assert after_remove["b"] > 0 and after_remove["c"] > 0, after_remove


def test_in_flight_counts_return_to_zero_after_aborts_and_failures(lb, backends):
    """least_connections and power_of_two act on the core's in-flight
    counts: a count left behind by an aborted or failed request would steer
    traffic away from a backend forever."""
    a, b = backends("a", "b")
    h = lb(lb_config(free_port(), [a, b], balancer="least_connections", workers=2))
    # a backend that refuses connections: attempts fail over to a or b
    ctl_ok(h, "add", upstream="app", name="dead", address=f"127.0.0.1:{free_port()}")
    socks = []
    for i in range(8):  # clients that give up on a slow answer
        s = socket.create_connection(("127.0.0.1", h.port), timeout=IO_TIMEOUT)
        s.sendall(request_bytes("GET", "/slow?ms=3000"))
        socks.append(s)
    wait_for(lambda: sum(x["inflight"] for x in listing(h)[1].values()) >= 8, 10,
             what="8 slow requests in flight")
    for s in socks:
        s.close()
    for _ in range(4):
        assert h.get("/reset")[0] == 502  # the backend resets the connection
        assert h.get("/status/503")[0] == 503  # an error answer is still an answer
        assert h.get("/close")[0] == 200
        with RawConn(h.port) as c:  # the backend dies 100 bytes into the body
            c.send(request_bytes("GET", "/die?after=100"))
            r = c.read_response()
            assert r is None or not r.complete, r
    wait_for(lambda: all(x["inflight"] == 0 for x in listing(h)[1].values()), 15,
             what=f"in-flight counts to return to 0: {listing(h)[1]}")
    state = listing(h)[1]
    assert state["dead"]["failures"] > 0, state
    assert state["a"]["failures"] + state["b"]["failures"] > 0, state


def test_runtime_changes_are_re_applied_after_a_reload(lb, backends):
    a, b, c = backends("a", "b", "c")
    h = lb(lb_config(free_port(), [a, b]))
    ctl_ok(h, "balancer", upstream="app", module="maglev")
    ctl_ok(h, "add", upstream="app", name="c", address=c.address)
    ctl_ok(h, "drain", upstream="app", name="a", on=1)
    assert listing(h)[0] == "maglev"
    mark = h.err_mark()
    h.reload()
    h.wait_stderr(r"generation 2 is live", since=mark)
    # the core re-applies ctl_* changes on top of the files (state_file)
    bal, state = listing(h)
    assert bal == "maglev" and set(state) == {"a", "b", "c"}, (bal, state)
    assert state["a"]["draining"] and not state["c"]["draining"]
    got = Counter(send_many(h.port, 10))
    assert sum(got.values()) == 10 and "a" not in got, got


# --------------------------------------------------------------------------
# refused control calls


@pytest.mark.parametrize(
    "op, params, message",
    [
        ("add", {"upstream": "nope", "name": "x", "address": "127.0.0.1:1"}, "no upstream named 'nope'"),
        ("add", {"upstream": "app", "name": "a", "address": "127.0.0.1:1"}, "already has a backend named 'a'"),
        ("add", {"upstream": "app", "name": "x", "address": "not an address"}, "address 'not an address'"),
        ("add", {"upstream": "app", "name": "x", "address": "127.0.0.1:0"}, "address '127.0.0.1:0'"),
        ("add", {"upstream": "app", "name": "x", "address": "127.0.0.1:1", "weight": 0}, "weight 0"),
        ("add", {"upstream": "app", "name": "", "address": "127.0.0.1:1"}, "name"),
        ("remove", {"upstream": "app", "name": "zz"}, "no backend named 'zz'"),
        ("weight", {"upstream": "app", "name": "a", "weight": 10001}, "weight 10001"),
        ("drain", {"upstream": "nope", "name": "a", "on": 1}, "no upstream named 'nope'"),
        ("balancer", {"upstream": "app", "module": "nosuch"}, "nosuch"),
        ("balancer", {"upstream": "app", "module": "static_response"}, "static_response"),
        ("balancer", {"upstream": "nope", "module": "maglev"}, "no upstream named 'nope'"),
        # the ctl module's own checks
        ("list", {}, "missing upstream="),
        ("weight", {"upstream": "app", "name": "a", "weight": "heavy"}, "weight= must be a number"),
        ("frobnicate", {"upstream": "app"}, "unknown control call 'frobnicate'"),
    ],
)
def test_refused_control_calls_are_400_with_a_message_and_change_nothing(lb, backends, op, params, message):
    a, b = backends("a", "b")
    h = lb(lb_config(free_port(), [a, b]))
    before = listing(h)
    status, text = ctl(h, op, **params)
    print(f"/_ctl/{op} {params} -> {status} {text.strip()}")
    assert status == 400, text
    assert message in text, text
    assert text.endswith("\n") and len(text) < 1024
    bal, state = listing(h)
    assert bal == before[0] and set(state) == set(before[1])
    assert {n: (s["weight"], s["draining"]) for n, s in state.items()} == {
        n: (s["weight"], s["draining"]) for n, s in before[1].items()
    }
    assert Counter(send_many(h.port, 4)) == {"a": 2, "b": 2}
