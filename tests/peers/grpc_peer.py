"""A real gRPC server and client (grpcio) for tests/grpc.rs, without
generated code: methods take and return raw bytes.

  grpc_peer.py serve PORT
      Serves, in plaintext HTTP/2 (h2c), until killed:
      /authgate.test.Echo/Unary         answers the request metadata it saw, as JSON
      /authgate.test.Echo/ServerStream  sends b"tick N" every 100 ms, COUNT times
                                        (COUNT = the request body as a number)
      /authgate.test.Echo/Bidi          answers each message with b"echo: " + message
      Prints "ready" once listening.

  grpc_peer.py call ADDR METHOD [--token T] [--body B] [--messages M1,M2]
                [--metadata K=V] [--ca CA.pem]
      Calls METHOD (of the service $AUTHGATE_GRPC_SERVICE, default
      authgate.test.Echo) on ADDR over plaintext HTTP/2 (over TLS trusting CA.pem,
      for the name "localhost", with --ca) and prints one JSON line:
      {"code": "OK"|..., "details": ..., "responses": [...], "elapsed": seconds,
       "received_before_end": n, "ended_at": unix seconds}
"""

import json
import os
import sys
import time
from concurrent import futures

import grpc


def serve(port):
    def unary(request, context):
        md = {k: v for k, v in context.invocation_metadata()}
        return json.dumps(md).encode()

    def server_stream(request, context):
        count = int(request.decode() or "10")
        for i in range(count):
            if not context.is_active():
                return
            yield f"tick {i}".encode()
            time.sleep(0.1)

    def bidi(requests, context):
        for r in requests:
            yield b"echo: " + r

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("authgate.test.Echo", handlers),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def channel(addr, ca):
    if not ca:
        return grpc.insecure_channel(addr)
    with open(ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(f.read())
    return grpc.secure_channel(
        addr, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def call(addr, method, token, body, messages, extra, ca):
    md = [("authorization", f"Bearer {token}")] if token else []
    md += extra
    out = {"responses": [], "received_before_end": 0}
    start = time.monotonic()
    with channel(addr, ca) as ch:
        service = os.environ.get("AUTHGATE_GRPC_SERVICE", "authgate.test.Echo")
        path = f"/{service}/{method}"
        try:
            if method == "Unary":
                r = ch.unary_unary(path)(body.encode(), metadata=md, timeout=10)
                out["responses"].append(r.decode())
            elif method == "ServerStream":
                for r in ch.unary_stream(path)(body.encode(), metadata=md, timeout=30):
                    out["responses"].append(r.decode())
                    out["received_before_end"] += 1
            else:
                it = iter([m.encode() for m in messages])
                for r in ch.stream_stream(path)(it, metadata=md, timeout=10):
                    out["responses"].append(r.decode())
            out["code"] = "OK"
            out["details"] = ""
        except grpc.RpcError as e:
            out["code"] = e.code().name
            out["details"] = e.details()
    out["elapsed"] = time.monotonic() - start
    out["ended_at"] = time.time()
    print(json.dumps(out), flush=True)


def main():
    args = sys.argv[1:]
    if args[0] == "serve":
        serve(int(args[1]))
        return
    addr, method = args[1], args[2]
    token, body, messages, extra, ca = None, "", [], [], None
    rest = args[3:]
    while rest:
        k, v, rest = rest[0], rest[1], rest[2:]
        if k == "--token":
            token = v
        elif k == "--body":
            body = v
        elif k == "--messages":
            messages = v.split(",")
        elif k == "--metadata":
            key, _, val = v.partition("=")
            extra.append((key, val))
        elif k == "--ca":
            ca = v
    call(addr, method, token, body, messages, extra, ca)


if __name__ == "__main__":
    main()
