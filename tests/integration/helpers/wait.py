"""Polling: the suite waits for conditions, never for fixed times."""

import time


def wait_for(predicate, timeout=10.0, interval=0.05, what="condition"):
    """Polls PREDICATE until it returns a truthy value; returns that value.
    Raises AssertionError after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - reported below
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)
