"""crypto.subtle in the js module (issue 20), checked against Python's
hashlib, hmac and python3-cryptography: each test computes the reference
values here, sends keys and data to a real heliosd running a Workers-style
script, and checks what the script computed (and verifies, in Python, what
it signed or encrypted)."""

import base64
import hashlib
import hmac
import json
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from test_js_api import start_js

HELPERS = r"""
const hex = (b) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, '0')).join('');
const unhex = (s) => new Uint8Array(s.match(/../g).map((x) => parseInt(x, 16)));
const enc = (s) => new TextEncoder().encode(s);
async function run(fn, request) {
  try { return Response.json(await fn(await request.json())); }
  catch (e) { return Response.json({ error: e.name, message: e.message, code: e.code }, { status: 400 }); }
}
"""


def b64u(b):
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def unb64u(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def post(h, path, payload):
    status, _, body = h.get(path, method="POST", body=json.dumps(payload).encode(),
                            headers={"Content-Type": "application/json"})
    return status, json.loads(body)


def test_digest_matches_hashlib(heliosd, tmp_path):
    src = HELPERS + r"""
export default {
  fetch(request) {
    return run(async (p) => {
      const data = unhex(p.data);
      const out = {};
      for (const alg of ['SHA-1', 'SHA-256', 'SHA-384', 'SHA-512', 'MD5'])
        out[alg] = hex(await crypto.subtle.digest(alg, data));
      out.objectForm = hex(await crypto.subtle.digest({ name: 'sha-256' }, data.buffer));
      out.empty = hex(await crypto.subtle.digest('SHA-256', new Uint8Array(0)));
      out.view = hex(await crypto.subtle.digest('SHA-256', new DataView(data.buffer, 1, 2)));
      try { await crypto.subtle.digest('SHA-3', data); } catch (e) { out.unknown = e.name; }
      try { await crypto.subtle.digest('SHA-256', 'a string'); } catch (e) { out.string = e.name; }
      return out;
    }, request);
  },
};
"""
    h = start_js(heliosd, tmp_path, src)
    for data in (b"abc", os.urandom(1000), b"\x00" * 64):
        status, got = post(h, "/", {"data": data.hex()})
        assert status == 200, got
        assert got["SHA-1"] == hashlib.sha1(data).hexdigest()
        assert got["SHA-256"] == hashlib.sha256(data).hexdigest()
        assert got["SHA-384"] == hashlib.sha384(data).hexdigest()
        assert got["SHA-512"] == hashlib.sha512(data).hexdigest()
        assert got["MD5"] == hashlib.md5(data).hexdigest()
        assert got["objectForm"] == hashlib.sha256(data).hexdigest()
        assert got["empty"] == hashlib.sha256(b"").hexdigest()
        assert got["view"] == hashlib.sha256(data[1:3]).hexdigest()
        assert got["unknown"] == "NotSupportedError"
        assert got["string"] == "TypeError"


def test_hmac_sign_verify_and_key_formats(heliosd, tmp_path):
    src = HELPERS + r"""
export default {
  fetch(request) {
    return run(async (p) => {
      const out = {};
      const key = await crypto.subtle.importKey('raw', unhex(p.key), { name: 'HMAC', hash: p.hash }, true, ['sign', 'verify']);
      out.mac = hex(await crypto.subtle.sign('HMAC', key, enc(p.msg)));
      out.ok = await crypto.subtle.verify('HMAC', key, unhex(p.mac), enc(p.msg));
      out.bad = await crypto.subtle.verify('HMAC', key, unhex(p.mac), enc(p.msg + '!'));
      out.short = await crypto.subtle.verify({ name: 'HMAC' }, key, unhex(p.mac).slice(1), enc(p.msg));
      out.alg = key.algorithm;
      out.type = key.type;
      out.jwk = await crypto.subtle.exportKey('jwk', key);
      out.raw = hex(await crypto.subtle.exportKey('raw', key));
      const k2 = await crypto.subtle.importKey('jwk', out.jwk, { name: 'HMAC', hash: p.hash }, false, ['sign']);
      out.jwkMac = hex(await crypto.subtle.sign('HMAC', k2, enc(p.msg)));
      try { await crypto.subtle.exportKey('raw', k2); } catch (e) { out.notExtractable = e.name; }
      try { await crypto.subtle.verify('HMAC', k2, unhex(p.mac), enc(p.msg)); } catch (e) { out.noUsage = e.name; }
      try { await crypto.subtle.importKey('raw', unhex(p.key), { name: 'HMAC', hash: p.hash }, true, ['encrypt']); }
      catch (e) { out.badUsage = e.name; }
      const gen = await crypto.subtle.generateKey({ name: 'HMAC', hash: 'SHA-512' }, true, ['sign']);
      out.genLength = [gen.algorithm.length, (await crypto.subtle.exportKey('raw', gen)).byteLength];
      return out;
    }, request);
  },
};
"""
    h = start_js(heliosd, tmp_path, src)
    for name, hfn in (("SHA-256", hashlib.sha256), ("SHA-1", hashlib.sha1), ("SHA-384", hashlib.sha384),
                      ("SHA-512", hashlib.sha512)):
        key = os.urandom(32)
        msg = "message to authenticate é"
        mac = hmac.new(key, msg.encode(), hfn).digest()
        status, got = post(h, "/", {"key": key.hex(), "hash": name, "msg": msg, "mac": mac.hex()})
        assert status == 200, got
        assert got["mac"] == mac.hex()
        assert (got["ok"], got["bad"], got["short"]) == (True, False, False)
        assert got["alg"] == {"name": "HMAC", "hash": {"name": name}, "length": 256}
        assert got["type"] == "secret"
        jwk = got["jwk"]
        assert jwk["kty"] == "oct" and unb64u(jwk["k"]) == key and jwk["ext"] is True
        assert jwk["alg"] == {"SHA-1": "HS1", "SHA-256": "HS256", "SHA-384": "HS384", "SHA-512": "HS512"}[name]
        assert sorted(jwk["key_ops"]) == ["sign", "verify"]
        assert got["raw"] == key.hex()
        assert got["jwkMac"] == mac.hex()
        assert got["notExtractable"] == "InvalidAccessError"
        assert got["noUsage"] == "InvalidAccessError"
        assert got["badUsage"] == "SyntaxError"
        assert got["genLength"] == [1024, 128]


def test_timing_safe_equal(heliosd, tmp_path):
    src = HELPERS + r"""
export default {
  fetch(request) {
    return run(async (p) => {
      const t = crypto.subtle.timingSafeEqual;
      const out = {
        same: crypto.subtle.timingSafeEqual(enc('secret-token'), enc('secret-token')),
        differ: crypto.subtle.timingSafeEqual(enc('secret-token'), enc('secret-tokeN')),
        buffers: crypto.subtle.timingSafeEqual(new ArrayBuffer(4), new Uint32Array(1)),
        empty: crypto.subtle.timingSafeEqual(new Uint8Array(0), new Uint8Array(0)),
      };
      try { crypto.subtle.timingSafeEqual(enc('a'), enc('ab')); } catch (e) { out.lengths = e.name; }
      return out;
    }, request);
  },
};
"""
    h = start_js(heliosd, tmp_path, src)
    status, got = post(h, "/", {})
    assert status == 200, got
    assert got == {"same": True, "differ": False, "buffers": True, "empty": True, "lengths": "TypeError"}


def test_aes_gcm_round_trips_with_python(heliosd, tmp_path):
    src = HELPERS + r"""
export default {
  fetch(request) {
    return run(async (p) => {
      const out = {};
      const key = await crypto.subtle.importKey('raw', unhex(p.key), 'AES-GCM', true, ['encrypt', 'decrypt']);
      const params = { name: 'AES-GCM', iv: unhex(p.iv), additionalData: enc(p.aad) };
      out.plain = new TextDecoder().decode(await crypto.subtle.decrypt(params, key, unhex(p.ct)));
      out.ct = hex(await crypto.subtle.encrypt(params, key, enc(p.msg)));
      out.short = hex(await crypto.subtle.encrypt({ name: 'AES-GCM', iv: unhex(p.iv), tagLength: 96 }, key, enc(p.msg)));
      const tampered = unhex(p.ct); tampered[0] ^= 1;
      try { await crypto.subtle.decrypt(params, key, tampered); out.tampered = 'decrypted'; } catch (e) { out.tampered = e.name; }
      try { await crypto.subtle.decrypt({ name: 'AES-GCM', iv: unhex(p.iv) }, key, unhex(p.ct)); } catch (e) { out.noAad = e.name; }
      const jwk = await crypto.subtle.exportKey('jwk', key);
      out.jwk = [jwk.kty, jwk.alg, jwk.k];
      const k2 = await crypto.subtle.importKey('jwk', jwk, { name: 'AES-GCM' }, false, ['decrypt']);
      out.jwkPlain = new TextDecoder().decode(await crypto.subtle.decrypt(params, k2, unhex(p.ct)));
      try { await crypto.subtle.importKey('raw', new Uint8Array(15), 'AES-GCM', false, ['encrypt']); } catch (e) { out.badLength = e.name; }
      const gen = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, true, ['encrypt', 'decrypt']);
      const iv = crypto.getRandomValues(new Uint8Array(12));
      const round = await crypto.subtle.decrypt({ name: 'AES-GCM', iv }, gen,
        await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, gen, enc('round trip')));
      out.generated = [gen.algorithm.length, new TextDecoder().decode(round)];
      return out;
    }, request);
  },
};
"""
    h = start_js(heliosd, tmp_path, src)
    for bits in (128, 256):
        key = AESGCM.generate_key(bit_length=bits)
        iv = os.urandom(12)
        aad = "header-data"
        secret = "the secret message ✓"
        ct = AESGCM(key).encrypt(iv, secret.encode(), aad.encode())
        status, got = post(h, "/", {"key": key.hex(), "iv": iv.hex(), "aad": aad, "ct": ct.hex(), "msg": "from js"})
        assert status == 200, got
        assert got["plain"] == secret
        assert AESGCM(key).decrypt(iv, bytes.fromhex(got["ct"]), aad.encode()) == b"from js"
        short = bytes.fromhex(got["short"])
        assert len(short) == len(b"from js") + 12
        assert got["tampered"] == "OperationError" and got["noAad"] == "OperationError"
        assert got["jwk"] == ["oct", f"A{bits}GCM", b64u(key)]
        assert got["jwkPlain"] == secret
        assert got["badLength"] == "DataError"
        assert got["generated"] == [256, "round trip"]


def test_ecdsa_p256_sign_verify_import_export(heliosd, tmp_path):
    src = HELPERS + r"""
export default {
  fetch(request) {
    return run(async (p) => {
      const out = {};
      const alg = { name: 'ECDSA', namedCurve: 'P-256' };
      const sig = { name: 'ECDSA', hash: 'SHA-256' };
      const pubJwk = await crypto.subtle.importKey('jwk', p.pubJwk, alg, true, ['verify']);
      const pubRaw = await crypto.subtle.importKey('raw', unhex(p.pubRaw), alg, true, ['verify']);
      const pubSpki = await crypto.subtle.importKey('spki', unhex(p.spki), alg, true, ['verify']);
      out.verified = [
        await crypto.subtle.verify(sig, pubJwk, unhex(p.sig), enc(p.msg)),
        await crypto.subtle.verify(sig, pubRaw, unhex(p.sig), enc(p.msg)),
        await crypto.subtle.verify(sig, pubSpki, unhex(p.sig), enc(p.msg)),
        await crypto.subtle.verify(sig, pubRaw, unhex(p.sig), enc(p.msg + '.')),
        await crypto.subtle.verify({ name: 'ECDSA', hash: 'SHA-384' }, pubRaw, unhex(p.sig), enc(p.msg)),
        await crypto.subtle.verify(sig, pubRaw, new Uint8Array(10), enc(p.msg)),
      ];
      const priv = await crypto.subtle.importKey('jwk', p.privJwk, alg, false, ['sign']);
      out.sig = hex(await crypto.subtle.sign(sig, priv, enc(p.msg)));
      const priv8 = await crypto.subtle.importKey('pkcs8', unhex(p.pkcs8), alg, true, ['sign']);
      out.sig8 = hex(await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-512' }, priv8, enc(p.msg)));
      out.exportRaw = hex(await crypto.subtle.exportKey('raw', pubJwk));
      out.exportJwk = await crypto.subtle.exportKey('jwk', pubRaw);
      out.exportPrivJwk = await crypto.subtle.exportKey('jwk', priv8);
      out.exportSpki = hex(await crypto.subtle.exportKey('spki', pubJwk));
      out.exportPkcs8Ok = (await crypto.subtle.exportKey('pkcs8', priv8)).byteLength > 100;
      try { await crypto.subtle.sign(sig, pubRaw, enc('x')); } catch (e) { out.publicSign = e.name; }
      try { await crypto.subtle.importKey('raw', unhex(p.pubRaw), { name: 'ECDSA', namedCurve: 'P-384' }, true, ['verify']); }
      catch (e) { out.p384 = e.name; }
      const bad = unhex(p.pubRaw); bad[40] ^= 1;
      try { await crypto.subtle.importKey('raw', bad, alg, true, ['verify']); } catch (e) { out.offCurve = e.name; }
      const pair = await crypto.subtle.generateKey(alg, true, ['sign', 'verify']);
      const s2 = await crypto.subtle.sign(sig, pair.privateKey, enc('gen'));
      out.generated = [pair.publicKey.type, pair.privateKey.type, pair.publicKey.usages, pair.privateKey.usages,
                       await crypto.subtle.verify(sig, pair.publicKey, s2, enc('gen'))];
      return out;
    }, request);
  },
};
"""
    h = start_js(heliosd, tmp_path, src)
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    nums = pub.public_numbers()
    x, y = nums.x.to_bytes(32, "big"), nums.y.to_bytes(32, "big")
    d = key.private_numbers().private_value.to_bytes(32, "big")
    msg = "signed by python"
    r, s = decode_dss_signature(key.sign(msg.encode(), ec.ECDSA(hashes.SHA256())))
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    raw = pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    payload = {
        "pubJwk": {"kty": "EC", "crv": "P-256", "x": b64u(x), "y": b64u(y)},
        "privJwk": {"kty": "EC", "crv": "P-256", "x": b64u(x), "y": b64u(y), "d": b64u(d)},
        "pubRaw": raw.hex(), "spki": spki.hex(), "pkcs8": pkcs8.hex(), "sig": sig.hex(), "msg": msg,
    }
    status, got = post(h, "/", payload)
    assert status == 200, got
    assert got["verified"] == [True, True, True, False, False, False]

    def check(sig_hex, hash_alg):
        b = bytes.fromhex(sig_hex)
        assert len(b) == 64
        der = encode_dss_signature(int.from_bytes(b[:32], "big"), int.from_bytes(b[32:], "big"))
        pub.verify(der, msg.encode(), ec.ECDSA(hash_alg))  # raises when wrong

    check(got["sig"], hashes.SHA256())
    check(got["sig8"], hashes.SHA512())
    try:
        check(got["sig"], hashes.SHA384())
        raise AssertionError("a SHA-256 signature verified as SHA-384")
    except InvalidSignature:
        pass
    assert got["exportRaw"] == raw.hex()
    assert got["exportJwk"]["x"] == b64u(x) and got["exportJwk"]["y"] == b64u(y)
    assert got["exportJwk"]["kty"] == "EC" and "d" not in got["exportJwk"]
    assert got["exportPrivJwk"]["d"] == b64u(d)
    assert got["exportSpki"] == spki.hex()
    assert got["exportPkcs8Ok"] is True
    assert got["publicSign"] == "InvalidAccessError"
    assert got["p384"] == "NotSupportedError"
    assert got["offCurve"] == "DataError"
    assert got["generated"] == ["public", "private", ["verify"], ["sign"], True]


def test_ed25519_sign_verify_import_export(heliosd, tmp_path):
    src = HELPERS + r"""
export default {
  fetch(request) {
    return run(async (p) => {
      const out = {};
      const pub = await crypto.subtle.importKey('raw', unhex(p.pub), 'Ed25519', true, ['verify']);
      const legacy = await crypto.subtle.importKey('raw', unhex(p.pub), { name: 'NODE-ED25519', namedCurve: 'NODE-ED25519' },
                                                   false, ['verify']);
      out.verified = [
        await crypto.subtle.verify('Ed25519', pub, unhex(p.sig), enc(p.msg)),
        await crypto.subtle.verify({ name: 'NODE-ED25519' }, legacy, unhex(p.sig), enc(p.msg)),
        await crypto.subtle.verify('Ed25519', pub, unhex(p.sig), enc(p.msg + '?')),
      ];
      const priv = await crypto.subtle.importKey('jwk', p.privJwk, { name: 'Ed25519' }, true, ['sign']);
      out.sig = hex(await crypto.subtle.sign('Ed25519', priv, enc(p.msg)));
      const priv8 = await crypto.subtle.importKey('pkcs8', unhex(p.pkcs8), 'Ed25519', false, ['sign']);
      out.sig8 = hex(await crypto.subtle.sign('Ed25519', priv8, enc(p.msg)));
      out.jwk = await crypto.subtle.exportKey('jwk', priv);
      out.raw = hex(await crypto.subtle.exportKey('raw', pub));
      out.spki = hex(await crypto.subtle.exportKey('spki', pub));
      const wrong = { ...p.privJwk, x: p.otherX };
      try { await crypto.subtle.importKey('jwk', wrong, 'Ed25519', true, ['sign']); } catch (e) { out.mismatch = e.name; }
      try { await crypto.subtle.importKey('raw', new Uint8Array(31), 'Ed25519', true, ['verify']); } catch (e) { out.short = e.name; }
      try { await crypto.subtle.verify('ECDSA', pub, unhex(p.sig), enc(p.msg)); } catch (e) { out.wrongAlg = e.name; }
      return out;
    }, request);
  },
};
"""
    h = start_js(heliosd, tmp_path, src)
    key = ed25519.Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    d = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw,
                                                                           serialization.PublicFormat.Raw)
    msg = "ed25519 message"
    sig = key.sign(msg.encode())
    payload = {"pub": pub.hex(), "sig": sig.hex(), "msg": msg, "pkcs8": pkcs8.hex(), "otherX": b64u(other),
               "privJwk": {"kty": "OKP", "crv": "Ed25519", "x": b64u(pub), "d": b64u(d)}}
    status, got = post(h, "/", payload)
    assert status == 200, got
    assert got["verified"] == [True, True, False]
    # Ed25519 is deterministic: the same signature as Python's
    assert got["sig"] == sig.hex() and got["sig8"] == sig.hex()
    assert got["jwk"]["d"] == b64u(d) and got["jwk"]["x"] == b64u(pub) and got["jwk"]["crv"] == "Ed25519"
    assert got["raw"] == pub.hex()
    assert got["spki"] == key.public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo).hex()
    assert got["mismatch"] == "DataError"
    assert got["short"] == "DataError"
    assert got["wrongAlg"] == "InvalidAccessError"


def test_a_jwt_is_verified_the_way_workers_examples_do_it(heliosd, tmp_path):
    """An HS256 JWT check written as Workers examples write it: base64url
    with atob, importKey + verify, and a 401 for a bad token."""
    src = r"""
function b64urlDecode(s) {
  const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(s.length / 4) * 4, '='));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}
export default {
  async fetch(request, env) {
    const token = (request.headers.get('Authorization') || '').replace(/^Bearer /, '');
    const [h, p, s] = token.split('.');
    if (!s) return new Response('missing token', { status: 401 });
    const key = await crypto.subtle.importKey('raw', new TextEncoder().encode(env.JWT_SECRET),
                                              { name: 'HMAC', hash: 'SHA-256' }, false, ['verify']);
    const ok = await crypto.subtle.verify('HMAC', key, b64urlDecode(s), new TextEncoder().encode(h + '.' + p));
    if (!ok) return new Response('bad signature', { status: 401 });
    const claims = JSON.parse(new TextDecoder().decode(b64urlDecode(p)));
    return new Response('hello ' + claims.sub);
  },
};
"""
    secret = "s3cr3t-for-tests"
    h = start_js(heliosd, tmp_path, src, env={"JWT_SECRET": secret})
    head = b64u(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64u(json.dumps({"sub": "alice"}).encode())
    sig = b64u(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    status, _, resp = h.get("/", headers={"Authorization": f"Bearer {head}.{body}.{sig}"})
    assert (status, resp) == (200, b"hello alice")
    status, _, resp = h.get("/", headers={"Authorization": f"Bearer {head}.{body}.{sig[:-2]}AA"})
    assert (status, resp) == (401, b"bad signature")
