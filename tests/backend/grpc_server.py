"""A real gRPC server (Debian's python3-grpcio) for the gRPC proxy tests.

Generic handlers on raw bytes, so no generated code is needed:
  /test.Echo/Unary      answers the request reversed, with metadata
                        x-peer (the calling connection) and trailer x-done
  /test.Echo/Fail       aborts with NOT_FOUND and details (trailers-only)
  /test.Echo/Chat       bidirectional: each message back upper-cased
  /test.Echo/Count      server streaming: N messages of M bytes (N,M from "N,M")
  /test.Echo/Peers      the distinct connections seen so far, as text

usage: grpc_server.py PORT [CERT KEY]   (with CERT and KEY: TLS, h2 by ALPN)
Prints "ready" once serving; SIGTERM stops it.
"""
import signal
import sys
import threading
from concurrent import futures

import grpc

PEERS = set()
LOCK = threading.Lock()


def seen(ctx):
    with LOCK:
        PEERS.add(ctx.peer())


def unary(req, ctx):
    seen(ctx)
    ctx.send_initial_metadata((("x-peer", ctx.peer()),))
    ctx.set_trailing_metadata((("x-done", "yes"),))
    return req[::-1]


def fail(req, ctx):
    seen(ctx)
    ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + req.decode(errors="replace"))


def chat(it, ctx):
    seen(ctx)
    for msg in it:
        yield msg.upper()


def count(req, ctx):
    seen(ctx)
    n, m = (int(x) for x in req.decode().split(","))
    for i in range(n):
        yield bytes([65 + i % 26]) * m


def peers(req, ctx):
    with LOCK:
        return ("\n".join(sorted(PEERS))).encode()


def main():
    port = int(sys.argv[1])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32),
                         options=[("grpc.max_receive_message_length", 64 << 20),
                                  ("grpc.max_send_message_length", 64 << 20)])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Peers": grpc.unary_unary_rpc_method_handler(peers),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    if len(sys.argv) > 3:
        with open(sys.argv[2], "rb") as f:
            cert = f.read()
        with open(sys.argv[3], "rb") as f:
            key = f.read()
        server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials(((key, cert),)))
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *a: server.stop(0))
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
