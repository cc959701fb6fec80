"""The api_key_auth example, built out of tree the way a third party would:
the SDK is installed into a temporary prefix, the example is copied and
built there with CMake (find_package(HeliosPlugin)), with the sanitizer
flags of the heliosd under test, and loaded from a module directory that
holds it next to links to heliosd's own modules.

Behaviour: no key or a wrong key -> 401 with WWW-Authenticate; the right
key -> the request reaches the backend without the key header; a keys file
that cannot be read is a located configuration error naming the file."""

import json
import re
import shutil

import pytest

from conftest import (
    MODULE_DIR,
    SOURCE_DIR,
    curl,
    free_port,
    make_config,
    proxy_route,
    run_config_check,
    upstream_conf,
    write_config_file,
)
from test_sdk_out_of_tree import SAN_FLAGS, STEP_TIMEOUT, clean_env, need_tool, run, sanitizer_heliosd, sdk  # noqa: F401

EXAMPLE = SOURCE_DIR / "plugins-sdk" / "examples" / "api_key_auth"
KEYS = "# production keys\n\nk-alpha-0001\n   k-beta-0002  \n#k-commented\n"


@pytest.fixture(scope="module")
def moddir(sdk, tmp_path_factory):
    """Builds the example with CMake against SDK; returns a module dir."""
    need_tool("cmake")
    tmp = tmp_path_factory.mktemp("api_key_auth")
    src = tmp / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.so", "*.o"))
    bdir = tmp / "build"
    cmd = ["cmake", "-S", src, "-B", bdir, f"-DCMAKE_PREFIX_PATH={sdk}",
           "-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF"]
    if sanitizer_heliosd():
        cmd.append(f"-DCMAKE_C_FLAGS={SAN_FLAGS}")
    run(cmd, what="cmake configure")
    run(["cmake", "--build", bdir], what="cmake --build")
    found = sorted(bdir.rglob("api_key_auth.so"))
    assert found, f"no api_key_auth.so under {bdir}"
    d = tmp / "modules"
    d.mkdir()
    shutil.copy2(found[0], d / "api_key_auth.so")
    for m in MODULE_DIR.glob("*.so"):
        (d / m.name).symlink_to(m.resolve())
    return d


def start(heliosd, backend, moddir, tmp_path, **conf):
    keys = tmp_path / "conf-keys"
    keys.mkdir(exist_ok=True)
    (keys / "api.keys").write_text(KEYS)
    port = free_port()
    config = {"keys_file": "../../conf-keys/api.keys"}
    config.update(conf)
    cfg = make_config(port, [proxy_route("app", "app")], {"app": upstream_conf(backend)},
                      modules=[{"module": "api_key_auth", "config": config}])
    # the config file lives in tmp_path/heliosd0/conf.d/: the relative keys_file
    # resolves against it, not against heliosd's working directory
    h = heliosd(cfg, extra_args=("-m", str(moddir)))
    assert "api_key_auth: 2 keys loaded from" in h.stderr() or "2 keys loaded" in h.stderr(), h.stderr()
    return h


def get(h, *headers, path="/headers"):
    args = ["-i", h.url(path)]
    for hd in headers:
        args += ["-H", hd]
    r = curl(*args, timeout=20)
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs.setdefault(k.strip().lower(), v.strip())
    return status, hdrs, body


def backend_saw(body):
    return [k.lower() for k, _ in json.loads(body)["headers"]], json.loads(body)["headers"]


def test_missing_and_wrong_keys_get_401_with_www_authenticate(heliosd, backend, moddir, tmp_path):
    h = start(heliosd, backend, moddir, tmp_path)
    for hdrs in ((), ("X-API-Key: nope",), ("X-API-Key: k-alpha-000",), ("X-API-Key: k-alpha-00011",),
                 ("X-API-Key: #k-commented",), ("X-API-Key: k-commented",), ("X-API-Key:",),
                 ("Authorization: Bearer k-alpha-0001",)):
        status, rh, body = get(h, *hdrs)
        assert status == 401, (hdrs, status, body)
        assert rh.get("www-authenticate") == 'ApiKey realm="heliosd"', rh
        assert body.startswith(b"401 Unauthorized") and len(body) < 200, body


def test_right_key_passes_and_is_stripped_before_the_backend(heliosd, backend, moddir, tmp_path):
    h = start(heliosd, backend, moddir, tmp_path)
    for key in ("k-alpha-0001", "k-beta-0002"):
        status, _, body = get(h, f"X-API-Key: {key}", "X-Other: kept")
        assert status == 200, body
        names, pairs = backend_saw(body)
        assert "x-api-key" not in names, pairs
        assert "x-other" in names, pairs


def test_strip_false_forwards_the_header(heliosd, backend, moddir, tmp_path):
    h = start(heliosd, backend, moddir, tmp_path, strip=False, header="X-Token", realm="api")
    status, rh, _ = get(h, "X-API-Key: k-alpha-0001")
    assert status == 401 and rh["www-authenticate"] == 'ApiKey realm="api"'
    status, _, body = get(h, "x-token: k-alpha-0001")
    assert status == 200
    names, pairs = backend_saw(body)
    assert ["X-Token", "k-alpha-0001"] in [[k.title(), v] for k, v in pairs] or "x-token" in names, pairs


def test_authorization_header_takes_a_bearer_key(heliosd, backend, moddir, tmp_path):
    h = start(heliosd, backend, moddir, tmp_path, header="Authorization")
    status, _, body = get(h, "Authorization: bearer k-beta-0002")
    assert status == 200, body
    assert "authorization" not in backend_saw(body)[0]
    for bad in ("Authorization: k-beta-0002", "Authorization: Basic k-beta-0002",
                "Authorization: Bearer k-beta-0003", "Authorization: Bearerk-beta-0002"):
        status, rh, _ = get(h, bad)
        assert status == 401, bad
        assert rh["www-authenticate"] == 'ApiKey realm="heliosd"'


def check(tmp_path, moddir, keys_file, keys_text=None):
    if keys_text is not None:
        (tmp_path / "k.keys").write_text(keys_text)
    text = (
        f"listeners:\n  - address: 127.0.0.1:{free_port()}\n"
        "modules:\n"
        "  - module: api_key_auth\n"
        "    config:\n"
        f"      keys_file: {keys_file}\n"
        "routes:\n"
        "  - handler: static_response\n"
    )
    cfg = write_config_file(tmp_path, text, "auth.yaml")
    return run_config_check(cfg, module_dir=moddir, env=clean_env(), timeout=STEP_TIMEOUT), cfg


def test_unreadable_keys_file_is_a_located_config_error(moddir, tmp_path):
    p, cfg = check(tmp_path, moddir, "missing.keys")
    assert p.returncode == 1, p.stderr
    assert re.search(
        re.escape(f"{cfg}:6:18: ") + r"\S*keys_file: cannot read keys file "
        + re.escape(f"{tmp_path}/missing.keys") + ": No such file or directory", p.stderr), p.stderr


def test_bad_keys_file_contents_are_located_config_errors(moddir, tmp_path):
    p, cfg = check(tmp_path, moddir, "k.keys", "# nothing here\n\n")
    assert p.returncode == 1 and f"{cfg}:6:18: " in p.stderr and "holds no keys" in p.stderr, p.stderr
    p, cfg = check(tmp_path, moddir, "k.keys", "good-key\nbad key\n")
    assert p.returncode == 1, p.stderr
    assert f"{cfg}:6:18: " in p.stderr and f"{tmp_path}/k.keys:2: invalid key" in p.stderr, p.stderr
    p, _ = check(tmp_path, moddir, "k.keys", "good-key\n")
    assert p.returncode == 0, p.stderr
