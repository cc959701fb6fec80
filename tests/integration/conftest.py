"""The heliosd integration suite's conftest, shared by the tests in core/,
modules/ and sdk/: it registers the fixtures and re-exports the helpers
(tests write `from conftest import Heliosd, free_port`). The code lives in
helpers/, one module per concern (see helpers/__init__.py); pytest.ini
makes this folder the rootdir and puts it on sys.path.

Everything drives real processes on the loopback interface: the heliosd
binary, the hx_backend test server and real clients (http.client, curl, raw
sockets, wrk). Nothing is mocked.

Rules every helper follows, so the suite stays robust on a loaded 2-core CI
machine:
  * every loop is bounded in count and in time;
  * readiness is detected by polling (a port accepting, a `ready` line, a log
    line), never by a fixed sleep;
  * only 127.0.0.1 and ::1 are used, on ports found by binding port 0.

Environment: see helpers/env.py (ctest sets it; the defaults are relative to
the repository root).
"""

from helpers import *  # noqa: F401,F403 - the helpers' public API, for test files
from helpers.fixtures import backend, backends, check_config, heliosd, small_quarantine  # noqa: F401 - registers them
