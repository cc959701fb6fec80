"""Configurations: builders of the Python dicts that become heliosd YAML,
writing them, and `heliosd -t` on them."""

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from helpers.env import HELIOSD, MODULE_DIR


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
    """An upstream of BKS: Backend objects (anything with .name and .address)
    or backend dicts, taken as they are."""
    u = {
        "balancer": balancer,
        "backends": [
            b if isinstance(b, dict) else {"name": b.name, "address": b.address} for b in bks
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


def write_config_file(directory, config, name="heliosd.yaml"):
    """Writes CONFIG (a dict, or YAML text as it is) to DIRECTORY/NAME,
    creating DIRECTORY; returns the file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(config if isinstance(config, str) else to_yaml(with_test_io(config)))
    return path


def with_test_io(config):
    """HELIOS_TEST_IO=uring runs a whole test file on the io_uring data path
    (ctest's integration.uring.* variants): a complete configuration (one
    with listeners) that does not choose `io:` itself gets it."""
    io = os.environ.get("HELIOS_TEST_IO")
    if io and isinstance(config, dict) and "listeners" in config and "io" not in config:
        config = {**config, "io": io}
    return config


@dataclass(frozen=True)
class ConfigCheck:
    """What `heliosd -t` said about a configuration: unpacks as
    (returncode, stdout, stderr), and .path is what -c was given."""

    returncode: int
    stdout: str
    stderr: str
    path: Path

    def __iter__(self):
        return iter((self.returncode, self.stdout, self.stderr))

    @property
    def output(self):
        return self.stdout + self.stderr


def run_config_check(path, module_dir=MODULE_DIR, env=None, timeout=60, cwd=None):
    """Runs `heliosd -t -c PATH -m MODULE_DIR` (PATH: a file or a directory
    of fragments) and returns a ConfigCheck; output is decoded as text.
    The `check_config` fixture is the usual way in; this is for helpers
    that are not fixtures."""
    if not HELIOSD.exists():
        pytest.fail(f"heliosd not built: {HELIOSD}")
    p = subprocess.run(
        [str(HELIOSD), "-t", "-c", str(path), "-m", str(module_dir)],
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
    return ConfigCheck(p.returncode, p.stdout, p.stderr, Path(path))
