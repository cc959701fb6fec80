"""Ports and listening sockets on the loopback interface."""

import socket


def free_port(host="127.0.0.1"):
    """A port nothing listens on right now (bind port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def port_accepts(port, host="127.0.0.1", timeout=1.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listening_sockets(port, v6=False):
    """Number of TCP sockets in LISTEN state on PORT (any address)."""
    path = "/proc/net/tcp6" if v6 else "/proc/net/tcp"
    n = 0
    with open(path) as f:
        next(f)
        for line in f:
            parts = line.split()
            local, state = parts[1], parts[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


def listening_inodes(port, v6=False):
    """Socket inodes of the TCP sockets in LISTEN state on PORT: the same
    inodes before and after a reload mean the sockets were kept open."""
    path = "/proc/net/tcp6" if v6 else "/proc/net/tcp"
    out = set()
    with open(path) as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                out.add(int(parts[9]))
    return out
