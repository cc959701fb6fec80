"""Helpers of the heliosd integration tests, one module per concern:

  env        binaries, directories, timeouts, sanitizer detection
  wait       wait_for: bounded polling instead of sleeps
  ports      free ports, listening sockets
  procfs     RSS and thread counts of a running process
  pattern    hx_backend's /bytes pattern and /sink checksum
  clients    raw sockets, RawConn (HTTP/1.x by hand), http.client, curl
  config     config builders, writing a config, `heliosd -t`
  processes  Backend (hx_backend) and Heliosd
  tls        a private CA and certificates (openssl CLI)
  fixtures   the pytest fixtures (registered by conftest.py)

The names below are the public API; conftest.py re-exports them, so test
files write `from conftest import Heliosd, free_port`.
"""

from helpers.clients import (
    RawConn,
    Response,
    curl,
    http_request,
    parse_responses,
    raw,
    request_bytes,
)
from helpers.config import (
    ConfigCheck,
    make_config,
    proxy_config,
    proxy_route,
    run_config_check,
    static,
    static_route,
    to_yaml,
    upstream_conf,
    write_config_file,
)
from helpers.env import (
    HELIOSD,
    HX_BACKEND,
    IO_TIMEOUT,
    MODULE_DIR,
    SANITIZER_MARKERS,
    SOURCE_DIR,
    START_TIMEOUT,
    STOP_TIMEOUT,
    TEST_MODULE_DIR,
    is_sanitizer_build,
)
from helpers.pattern import PATTERN, PATTERN_PERIOD, SINK_CHUNK, pattern_bytes, pattern_ok, pattern_sum
from helpers.ports import free_port, ipv6_available, listening_inodes, listening_sockets, port_accepts
from helpers.processes import Backend, Heliosd
from helpers.procfs import RssSampler, rss_kb, thread_count
from helpers.tls import make_ca, make_cert
from helpers.wait import wait_for

__all__ = [
    "Backend",
    "ConfigCheck",
    "HELIOSD",
    "HX_BACKEND",
    "Heliosd",
    "IO_TIMEOUT",
    "MODULE_DIR",
    "PATTERN",
    "PATTERN_PERIOD",
    "RawConn",
    "Response",
    "RssSampler",
    "SANITIZER_MARKERS",
    "SINK_CHUNK",
    "SOURCE_DIR",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "TEST_MODULE_DIR",
    "curl",
    "free_port",
    "http_request",
    "ipv6_available",
    "is_sanitizer_build",
    "listening_inodes",
    "listening_sockets",
    "make_ca",
    "make_cert",
    "make_config",
    "parse_responses",
    "pattern_bytes",
    "pattern_ok",
    "pattern_sum",
    "port_accepts",
    "proxy_config",
    "proxy_route",
    "raw",
    "request_bytes",
    "rss_kb",
    "run_config_check",
    "static",
    "static_route",
    "thread_count",
    "to_yaml",
    "upstream_conf",
    "wait_for",
    "write_config_file",
]
