"""Test app for the master tests: answers its PID, sleeps, blocks, leaks on request.

Paths:
    /            body "<pid>" (load clients count distinct workers)
    /sleep?2     awaits 2 seconds, then answers (a long in-flight request)
    /block?30    time.sleep()s in the event loop: the worker's heartbeat stops
    /leak?8      keeps 8 MiB more for the worker's life, then answers
    /version     the module-level VERSION (rewritten by tests that change code)
Environment: MASTER_APP_STARTUP=2 makes lifespan startup take 2 seconds.
"""

import asyncio
import os
import sys
import time

VERSION = "1"
_leaked: list[bytes] = []
# Tests check which processes import the app: workers only (the master with --preload).
print(f"master_app: imported in {os.getpid()}", file=sys.stderr, flush=True)


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await asyncio.sleep(float(os.environ.get("MASTER_APP_STARTUP", "0")))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    arg = scope["query_string"].decode() or "0"
    if path == "/sleep":
        # An observable event for tests: the request is in flight now.
        print(f"master_app: sleeping {arg}s in {os.getpid()}", file=sys.stderr, flush=True)
        await asyncio.sleep(float(arg))
    elif path == "/block":
        time.sleep(float(arg))
    elif path == "/leak":
        # Touch every page so the memory really counts in the RSS.
        _leaked.append(b"x" * int(float(arg) * 1024 * 1024))
    body = (VERSION if path == "/version" else str(os.getpid())).encode()
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
