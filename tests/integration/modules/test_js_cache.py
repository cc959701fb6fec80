"""The Cache API in the js module (issue 20): caches.default and
caches.open(name), put/match/delete, Cache-Control (max-age, s-maxage,
no-store, private) and Expires, the cache_size bound with LRU eviction,
and the cache-aside pattern of the Workers examples, through a real
heliosd with one worker (the cache is per worker)."""

import json
import time
from email.utils import formatdate

from conftest import upstream_conf, wait_for
from test_js_api import get_json, start_js

SCRIPT = r"""
export default {
  async fetch(request, env, ctx) {
    const u = new URL(request.url);
    const q = (k) => u.searchParams.get(k);
    const cache = q('ns') ? await caches.open(q('ns')) : caches.default;
    const key = 'http://cache.test/' + q('k');
    try {
      if (u.pathname === '/put') {
        const headers = new Headers();
        for (const [k, v] of u.searchParams) if (k.startsWith('h-')) headers.append(k.slice(2), v);
        const body = q('size') ? 'x'.repeat(Number(q('size'))) : 'body of ' + q('k');
        await cache.put(q('method') ? new Request(key, { method: q('method') }) : key,
                        new Response(body, { status: Number(q('status') || 200), headers }));
        return new Response('stored?');
      }
      if (u.pathname === '/match') {
        const r = await cache.match(new Request(key, { headers: request.headers }));
        if (!r) return new Response('miss', { status: 404 });
        return new Response(r.status === 304 ? '' : await r.text(),
                            { status: r.status === 304 ? 200 : r.status,
                              headers: { 'x-age': r.headers.get('age'), 'x-status': String(r.status) } });
      }
      if (u.pathname === '/delete') return Response.json(await cache.delete(key));
    } catch (e) {
      return new Response(e.name + ': ' + e.message, { status: 400 });
    }
    return new Response('?', { status: 404 });
  },
};
"""


def put(h, k, **params):
    qs = "&".join(f"{a.replace('_', '-')}={b}" for a, b in params.items())
    status, _, body = h.get(f"/put?k={k}&{qs}")
    return status, body


def hit(h, k, **kw):
    status, headers, body = h.get(f"/match?k={k}", **kw)
    return (status, body, headers.get("x-age"), headers.get("x-status")) if status == 200 else None


def test_cache_control_decides_what_is_stored_and_for_how_long(heliosd, tmp_path):
    h = start_js(heliosd, tmp_path, SCRIPT)
    assert put(h, "a", h_cache_control="max-age=60")[0] == 200
    assert hit(h, "a")[:2] == (200, b"body of a")
    assert hit(h, "a")[2] == "0"  # Age
    # s-maxage wins over max-age (a shared cache)
    put(h, "s", h_cache_control="max-age=0,%20s-maxage=60")
    assert hit(h, "s") is not None
    # not stored: no-store, no-cache, private, Set-Cookie, no freshness at all
    for k, params in (("ns", {"h_cache_control": "no-store"}), ("nc", {"h_cache_control": "no-cache"}),
                      ("p", {"h_cache_control": "private,%20max-age=60"}),
                      ("sc", {"h_cache_control": "max-age=60", "h_set_cookie": "id=1"}), ("none", {})):
        assert put(h, k, **params)[0] == 200
        assert hit(h, k) is None, k
    # Expires (relative to Date)
    now = time.time()
    put(h, "e", h_date=formatdate(now, usegmt=True).replace(" ", "%20"),
        h_expires=formatdate(now + 60, usegmt=True).replace(" ", "%20"))
    assert hit(h, "e") is not None
    # max-age=1 expires
    put(h, "short", h_cache_control="max-age=1")
    assert hit(h, "short") is not None
    time.sleep(1.3)
    assert hit(h, "short") is None
    # delete
    assert get_json(h, "/delete?k=a") is True
    assert hit(h, "a") is None
    assert get_json(h, "/delete?k=a") is False
    # caches.open(name) is another namespace
    put(h, "shared", h_cache_control="max-age=60", ns="other")
    assert hit(h, "shared") is None
    status, _, body = h.get("/match?k=shared&ns=other")
    assert (status, body) == (200, b"body of shared")


def test_put_refusals_and_conditional_match(heliosd, tmp_path):
    h = start_js(heliosd, tmp_path, SCRIPT)
    status, body = put(h, "post", method="POST", h_cache_control="max-age=60")
    assert status == 400 and body.startswith(b"TypeError: Cache.put: only GET")
    status, body = put(h, "partial", status=206, h_cache_control="max-age=60")
    assert status == 400 and b"206" in body
    status, body = put(h, "vary", h_cache_control="max-age=60", h_vary="*")
    assert status == 400 and b"Vary: *" in body
    put(h, "tagged", h_cache_control="max-age=60", h_etag='"v1"')
    assert hit(h, "tagged", headers={"If-None-Match": '"v1"'})[3] == "304"
    assert hit(h, "tagged", headers={"If-None-Match": '"v2"'})[:2] == (200, b"body of tagged")


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(heliosd, tmp_path):
    h = start_js(heliosd, tmp_path, SCRIPT, cache_size="64KiB")
    for i in range(10):
        put(h, f"k{i}", size=10_000, h_cache_control="max-age=600")
        assert hit(h, "k0") is not None, i  # k0 stays the most recently used
    present = [i for i in range(10) if hit(h, f"k{i}") is not None]
    assert 0 in present and 9 in present
    assert 1 not in present and 2 not in present
    assert 3 <= len(present) <= 6, present
    # an entry larger than the whole cache is not stored
    put(h, "huge", size=70_000, h_cache_control="max-age=600")
    assert hit(h, "huge") is None
    # cache_size 0 turns the cache off
    off = tmp_path / "off"
    off.mkdir()
    h2 = start_js(heliosd, off, SCRIPT, cache_size=0)
    put(h2, "k", h_cache_control="max-age=600")
    assert hit(h2, "k") is None


def test_the_cache_aside_pattern_of_the_workers_examples(heliosd, tmp_path, backends):
    origin = backends("origin")
    src = """
export default {
  async fetch(request, env, ctx) {
    const cache = caches.default;
    let response = await cache.match(request);
    if (!response) {
      response = await fetch('http://origin/bytes/20000');
      response = new Response(response.body, response);
      response.headers.append('Cache-Control', 's-maxage=30');
      response.headers.set('x-cache', 'MISS');
      ctx.waitUntil(cache.put(request, response.clone()));
    } else {
      response = new Response(response.body, response);
      response.headers.set('x-cache', 'HIT');
    }
    return response;
  },
};
"""
    h = start_js(heliosd, tmp_path, src, upstreams={"origin": upstream_conf(origin)})
    status, headers, body = h.get("/asset?v=1")
    assert status == 200 and headers["x-cache"] == "MISS" and len(body) == 20000

    def cached():
        s, hd, b = h.get("/asset?v=1")
        return s == 200 and hd["x-cache"] == "HIT" and b == body

    wait_for(cached, 10, what="a cache hit")
    for _ in range(5):
        assert cached()
    assert origin.stats()["requests"] == 1
    # another URL is another entry
    assert h.get("/asset?v=2")[1]["x-cache"] == "MISS"
