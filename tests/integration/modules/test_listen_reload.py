"""The metrics and admin API listeners across reloads (D76).

Both run their own libmicrohttpd listener per configuration generation. A
reload that keeps a listener's address hands the listening socket from the
old instance to the new one (never closed, never bound again), so a client
that opens a connection at any moment of a reload is answered: clients
hammer /metrics and the admin API (fresh connection per request) through
SIGHUP reloads and POST /v1/reload, and every request must be a 200 (no
refused or reset connection). A changed address moves the listener (the
old one refuses), a removed module closes it, and a refused reload leaves
both serving.
"""

import http.client
import json
import re
import threading
import time

from conftest import free_port, make_config, static_route, wait_for
from test_admin_api import admin_module, mint, write_secret

N_MAX = 600  # requests per client at most (paced: 2 ms apart)
TOKEN = mint()


def config(port, mport, aport, secret, metrics=True, admin=True, on_admin=False):
    modules = []
    if metrics and not on_admin:
        modules.append({"module": "metrics", "config": {"listen": f"127.0.0.1:{mport}"}})
    if admin:
        modules.append(admin_module(aport, secret))
    if on_admin:  # after admin_api: started after it, stopped before it
        modules.append({"module": "metrics", "config": {"listen": "admin"}})
    return make_config(port, [static_route("s", "ok\n")], {}, workers=1, modules=modules)


def call(port, path, method="GET", token=TOKEN, timeout=15):
    """One request on a fresh connection: (status, headers, body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def generation(aport):
    return json.loads(call(aport, "/v1/health", token=None)[2])["generation"]


def refused(port):
    try:
        call(port, "/", timeout=3)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


class Hammer:
    """Clients on PORT/PATH, one fresh connection per request, until
    stopped or N_MAX requests each; statuses and errors are counted."""

    def __init__(self, targets):
        self.stop = threading.Event()
        self.codes = {t: {} for t in targets}
        self.errors = []
        self.spanned = []  # clients still running when stopped
        self.threads = [threading.Thread(target=self.run, args=(t,)) for t in targets]

    def run(self, target):
        port, path = target
        deadline = time.monotonic() + 60
        for _ in range(N_MAX):
            if self.stop.is_set() or time.monotonic() > deadline:
                break
            time.sleep(0.002)
            try:
                st = call(port, path)[0]
            except OSError as e:
                self.errors.append(f"{path}: {e!r}")
                continue
            self.codes[target][st] = self.codes[target].get(st, 0) + 1
        self.spanned.append(self.stop.is_set())

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(90)

    def check(self):
        print("requests per client:", self.codes, "errors:", len(self.errors))
        assert not self.errors, self.errors[:5]
        # the traffic covered every reload
        assert len(self.spanned) == len(self.threads) and all(self.spanned), self.codes
        for target, codes in self.codes.items():
            assert set(codes) == {200}, (target, codes)
            assert codes[200] >= 10, (target, codes)


def start(tmp_path, heliosd, **kw):
    port, mport, aport = free_port(), free_port(), free_port()
    secret = write_secret(tmp_path)
    h = heliosd(config(port, mport, aport, secret, **kw))
    wait_for(lambda: call(aport, "/v1/health", token=None)[0] == 200, what="admin API up")
    return h, port, mport, aport, secret


def test_clients_see_no_error_across_reloads(tmp_path, heliosd):
    h, port, mport, aport, secret = start(tmp_path, heliosd)
    gen = generation(aport)
    with Hammer([(mport, "/metrics"), (aport, "/v1/backends"), (aport, "/v1/health")]) as hm:
        for i in range(6):
            if i % 2 == 0:
                mark = h.err_mark()
                h.reload()
                h.wait_stderr(r"admin_api: listening on .* \(generation %d\)" % (gen + 1),
                              since=mark)
                gen += 1
            else:
                # an automated client: reload, then at once reload again on a
                # new connection; both are answered by a live instance
                for _ in range(2):
                    st, hdrs, body = call(aport, "/v1/reload", method="POST")
                    assert st == 200, body
                    assert json.loads(body)["generation"] == gen + 1
                    # the old instance's answer closes its connection: a
                    # keep-alive client's next request reaches the new one
                    assert hdrs.get("connection", "").lower() == "close", hdrs
                    gen += 1
            time.sleep(0.1)
        time.sleep(0.2)
    hm.check()
    assert generation(aport) == gen
    log = h.stderr()
    # every new instance served on the socket it was handed, none bound again
    assert len(re.findall(r"metrics: serving /metrics on .*kept across the reload", log)) == 9
    assert len(re.findall(r"admin_api: listening socket on .* kept across the reload", log)) == 9
    assert "cannot listen" not in log
    assert h.alive()


def test_changed_address_moves_and_removed_module_closes(tmp_path, heliosd):
    h, port, mport, aport, secret = start(tmp_path, heliosd)
    mport2, aport2 = free_port(), free_port()
    mark = h.err_mark()
    h.reload(config(port, mport2, aport2, secret))
    h.wait_stderr(r"admin_api: listening on .* \(generation 2\)", since=mark)
    assert call(mport2, "/metrics")[0] == 200
    assert call(aport2, "/v1/backends")[0] == 200
    assert refused(mport) and refused(aport)
    # the module removed: its port refuses; the admin API keeps its socket
    mark = h.err_mark()
    h.reload(config(port, mport2, aport2, secret, metrics=False))
    h.wait_stderr(r"admin_api: listening on .* \(generation 3\)", since=mark)
    assert refused(mport2)
    assert call(aport2, "/v1/backends")[0] == 200
    # and back: a fresh bind on the address it left
    mark = h.err_mark()
    h.reload(config(port, mport2, aport2, secret))
    h.wait_stderr(r"admin_api: listening on .* \(generation 4\)", since=mark)
    assert call(mport2, "/metrics")[0] == 200
    assert h.alive()


def test_refused_reload_keeps_both_serving(tmp_path, heliosd):
    h, port, mport, aport, secret = start(tmp_path, heliosd)
    good = h.config_text
    bad = good.replace("module: metrics", "module: no_such_module")
    assert bad != good
    with Hammer([(mport, "/metrics"), (aport, "/v1/backends")]) as hm:
        mark = h.err_mark()
        h.reload(bad)
        h.wait_stderr(r"reload failed", since=mark)
        st, _, body = call(aport, "/v1/reload", method="POST")
        assert st == 422, body
        time.sleep(0.3)
    hm.check()
    assert generation(aport) == 1
    # the listeners are the first generation's, untouched
    assert "kept across the reload" not in h.stderr()
    h.write_config(good)
    st, _, body = call(aport, "/v1/reload", method="POST")
    assert st == 200 and json.loads(body)["generation"] == 2, body
    wait_for(lambda: call(mport, "/metrics")[0] == 200, what="metrics after the good reload")
    assert h.alive()


def test_metrics_on_admin_listener_across_reloads(tmp_path, heliosd):
    """`listen: admin`: /metrics on the admin listener through reloads,
    with metrics listed after admin_api (its service starts later)."""
    h, port, mport, aport, secret = start(tmp_path, heliosd, on_admin=True)
    assert call(aport, "/metrics")[0] == 200
    with Hammer([(aport, "/metrics")]) as hm:
        for gen in range(2, 6):
            mark = h.err_mark()
            if gen % 2:
                h.reload()
            else:
                assert call(aport, "/v1/reload", method="POST")[0] == 200
            h.wait_stderr(r"metrics offered to admin_api", since=mark)
            time.sleep(0.1)
    hm.check()
    assert h.alive()
