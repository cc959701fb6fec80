"""The byte pattern of hx_backend's /bytes/N (byte i = i % 251) and the
checksum its /sink reports."""


PATTERN = bytes(i % 251 for i in range(251 * 4200))  # ~1 MiB + a period
PATTERN_PERIOD = 251
SINK_CHUNK = PATTERN[: 251 * 4096]  # whole periods, so chunks chain exactly


def pattern_bytes(offset, n):
    """N bytes of the /bytes pattern starting at stream offset OFFSET."""
    out = bytearray()
    while n > 0:
        start = offset % PATTERN_PERIOD
        take = min(n, len(PATTERN) - start)
        out += PATTERN[start : start + take]
        offset += take
        n -= take
    return bytes(out)


def pattern_ok(data, offset=0):
    """True when DATA equals the /bytes pattern at stream offset OFFSET."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        start = (offset + pos) % PATTERN_PERIOD
        take = min(len(view) - pos, len(PATTERN) - start)
        if view[pos : pos + take] != PATTERN[start : start + take]:
            return False
        pos += take
    return True


def pattern_sum(n):
    """Sum mod 2^32 of the first N pattern bytes (what /sink reports)."""
    full, rem = divmod(n, PATTERN_PERIOD)
    return (full * (250 * 251 // 2) + rem * (rem - 1) // 2) % (1 << 32)
