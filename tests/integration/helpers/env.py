"""Where the binaries are, how long to wait, and what kind of build runs.

Environment (set by ctest; defaults are relative to the repository root):
  HELIOSD            the binary             (build/heliosd)
  HELIOS_MODULE_DIR  passed as -m           (build/modules)
  HELIOS_TEST_MODULE_DIR  the test modules  (build/test-modules)
  HX_BACKEND         the test backend       (build/hx_backend)
  HELIOS_SOURCE_DIR  the repository root    (three levels above this file)
  HELIOS_SANITIZE    1 in an ASan build (ctest sets it from the CMake option)
"""

import os
import re
from pathlib import Path

SOURCE_DIR = Path(os.environ.get("HELIOS_SOURCE_DIR") or Path(__file__).resolve().parents[3]).resolve()


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
