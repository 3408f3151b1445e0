"""A real WebSocket server and client (the `websockets` package) for
tests/streams.rs.

  ws.py serve PORT
      An echo server on 127.0.0.1:PORT; prints "ready" once listening.

  ws.py call URL TOKEN SECONDS [COOKIE]
      Connects to URL with `Authorization: Bearer TOKEN` (none when TOKEN is
      "-") and `Cookie: COOKIE` (when given), sends "m<N>" every
      100 ms for at most SECONDS and reads the echoes; prints one JSON line:
      {"connected": bool, "echoes": n, "closed": bool, "ended_at": unix seconds,
       "error": text}
"""

import asyncio
import json
import sys
import time

import websockets


async def serve(port):
    async def echo(ws):
        try:
            async for m in ws:
                await ws.send(m)
        except websockets.ConnectionClosed:
            pass

    async with websockets.serve(echo, "127.0.0.1", port):
        print("ready", flush=True)
        await asyncio.Future()


async def call(url, token, seconds, cookie):
    out = {"connected": False, "echoes": 0, "closed": False, "error": ""}
    headers = {}
    if token != "-":
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = cookie
    try:
        async with websockets.connect(url, additional_headers=headers, open_timeout=5) as ws:
            out["connected"] = True
            deadline = time.monotonic() + seconds
            n = 0
            while time.monotonic() < deadline:
                await ws.send(f"m{n}")
                await asyncio.wait_for(ws.recv(), timeout=5)
                out["echoes"] += 1
                n += 1
                await asyncio.sleep(0.1)
    except websockets.ConnectionClosed as e:
        out["closed"] = True
        out["error"] = str(e)
    except Exception as e:  # refused handshake, timeouts: reported, not raised
        out["error"] = f"{type(e).__name__}: {e}"
    out["ended_at"] = time.time()
    print(json.dumps(out), flush=True)


def main():
    if sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2])))
    else:
        cookie = sys.argv[5] if len(sys.argv) > 5 else None
        asyncio.run(call(sys.argv[2], sys.argv[3], float(sys.argv[4]), cookie))


if __name__ == "__main__":
    main()
