"""A raw HTTP/2 client (the `h2` package, hyper's) for the hostile-input
tests of tests/http2.rs. Each scenario talks h2c (prior knowledge) to ADDR
and prints one JSON line saying what the server did.

  h2_raw.py request ADDR PATH AUTHORITY [NAME=VALUE ...]
      One GET with these pseudo-headers and fields (`:path` PATH, as given).
      -> {"status": int|null, "reset": code|null, "goaway": code|null}
  h2_raw.py big-headers ADDR BYTES
      One GET with a header field of BYTES bytes.
  h2_raw.py rapid-reset ADDR N
      Opens N streams, resetting each at once (CVE-2023-44487).
      -> {"sent": n, "goaway": code|null, "closed": bool}
  h2_raw.py settings-flood ADDR N
      Sends N SETTINGS frames without reading.
  h2_raw.py streams ADDR N PATH
      Opens N streams on PATH at once, ignoring the server's
      MAX_CONCURRENT_STREAMS, and ends none of their bodies.
      -> {"refused": n, "goaway": code|null, "max_concurrent_streams": n}
  h2_raw.py stall ADDR BYTES tls|h2c
      Opens a connection (over TLS with ALPN h2, certificate unchecked, or
      plain), sends the first BYTES bytes of the connection preface and then
      nothing; waits up to 20 s for the server to close it.
      -> {"alpn": "h2"|null, "closed_after": seconds|null}
"""

import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


def connect(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    cfg = h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
        normalize_outbound_headers=False, validate_inbound_headers=False,
    )
    c = h2.connection.H2Connection(config=cfg)
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c


def pump(s, c, out, until, rounds=200):
    """Reads events into `out` until `until(out)` or the connection ends."""
    for _ in range(rounds):
        if until(out):
            return
        try:
            data = s.recv(65536)
        except (socket.timeout, ConnectionResetError, BrokenPipeError):
            out["closed"] = True
            return
        if not data:
            out["closed"] = True
            return
        try:
            events = c.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            out["protocol_error"] = str(e)
            return
        for e in events:
            if isinstance(e, h2.events.ResponseReceived):
                for k, v in e.headers:
                    if k == ":status":
                        out.setdefault("statuses", {})[e.stream_id] = int(v)
            elif isinstance(e, h2.events.StreamReset):
                out.setdefault("resets", {})[e.stream_id] = int(e.error_code)
            elif isinstance(e, h2.events.ConnectionTerminated):
                out["goaway"] = int(e.error_code)
            elif isinstance(e, h2.events.RemoteSettingsChanged):
                m = e.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                if m is not None:
                    out["max_concurrent_streams"] = m.new_value
        try:
            s.sendall(c.data_to_send())
        except OSError:
            out["closed"] = True
            return


def one(addr, headers):
    s, c = connect(addr)
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, headers, end_stream=True)
    s.sendall(c.data_to_send())
    out = {}
    pump(s, c, out, lambda o: sid in o.get("statuses", {}) or sid in o.get("resets", {})
         or "goaway" in o)
    return {
        "status": out.get("statuses", {}).get(sid),
        "reset": out.get("resets", {}).get(sid),
        "goaway": out.get("goaway"),
    }


def base(path, authority):
    return [(":method", "GET"), (":scheme", "http"), (":path", path), (":authority", authority)]


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def stall(addr, n, mode):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    alpn = None
    if mode == "tls":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        s = ctx.wrap_socket(s, server_hostname="localhost")
        alpn = s.selected_alpn_protocol()
    s.sendall(PREFACE[:n])
    start = time.monotonic()
    s.settimeout(20)
    closed = None
    try:
        while True:
            data = s.recv(4096)
            if not data:
                closed = time.monotonic() - start
                break
    except (socket.timeout, ssl.SSLError, OSError) as e:
        if not isinstance(e, socket.timeout):
            closed = time.monotonic() - start
    return {"alpn": alpn, "closed_after": closed}


def main():
    cmd, addr = sys.argv[1], sys.argv[2]
    if cmd == "stall":
        print(json.dumps(stall(addr, int(sys.argv[3]), sys.argv[4])))
        return
    if cmd == "request":
        path, authority = sys.argv[3], sys.argv[4]
        extra = [tuple(kv.split("=", 1)) for kv in sys.argv[5:]]
        print(json.dumps(one(addr, base(path, authority) + extra)))
    elif cmd == "big-headers":
        n = int(sys.argv[3])
        print(json.dumps(one(addr, base("/api/x", "localhost") + [("x-big", "a" * n)])))
    elif cmd == "rapid-reset":
        n = int(sys.argv[3])
        s, c = connect(addr)
        out = {"sent": 0}
        try:
            for _ in range(n):
                sid = c.get_next_available_stream_id()
                c.send_headers(sid, base("/api/x", "localhost"), end_stream=False)
                c.reset_stream(sid)
                s.sendall(c.data_to_send())
                out["sent"] += 1
        except (OSError, h2.exceptions.ProtocolError):
            pass
        pump(s, c, out, lambda o: "goaway" in o)
        print(json.dumps({"sent": out["sent"], "goaway": out.get("goaway"),
                          "closed": out.get("closed", False) or "goaway" in out}))
    elif cmd == "settings-flood":
        n = int(sys.argv[3])
        s, c = connect(addr)
        out = {"sent": 0}
        try:
            for _ in range(n):
                c.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
                s.sendall(c.data_to_send())
                out["sent"] += 1
        except (OSError, h2.exceptions.ProtocolError):
            pass
        pump(s, c, out, lambda o: "goaway" in o, rounds=50)
        print(json.dumps({"sent": out["sent"], "goaway": out.get("goaway"),
                          "closed": out.get("closed", False) or "goaway" in out}))
    elif cmd == "streams":
        n, path = int(sys.argv[3]), sys.argv[4]
        s, c = connect(addr)
        out = {}
        pump(s, c, out, lambda o: "max_concurrent_streams" in o, rounds=5)
        # ignore the server's limit (as a hostile client would)
        c.remote_settings.max_concurrent_streams = 2**31 - 1
        c.remote_settings.acknowledge()
        for _ in range(n):
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, [(":method", "POST")] + base(path, "localhost")[1:]
                           + [("content-length", "10")], end_stream=False)
        s.sendall(c.data_to_send())
        pump(s, c, out, lambda o: len(o.get("resets", {})) >= n - 100 or "goaway" in o)
        refused = sum(1 for v in out.get("resets", {}).values() if v == 7)
        print(json.dumps({"refused": refused, "goaway": out.get("goaway"),
                          "max_concurrent_streams": out.get("max_concurrent_streams")}))


if __name__ == "__main__":
    main()
