"""Test app for the systemd, upgrade and reload tests; tests copy it and rewrite its constants.

Paths:
    /          body "<worker pid>" (what tests/load.py counts)
    /version   the module-level VERSION
    /parent    the PID of the worker's parent (the master)
    /env       JSON of the systemd and hand-off variables the app can see (should be {})
With HANG = True, lifespan startup never completes (a boot that hangs); with
FAIL = True it fails (the worker exits with status 3 before it is ready).
"""

import asyncio
import json
import os

PRIVATE = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES",
           "CORRAL_HANDOFF")

VERSION = "1"
HANG = False
FAIL = False


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if HANG:
                await asyncio.Event().wait()
            if FAIL:
                await send({"type": "lifespan.startup.failed", "message": "sd_app: FAIL is set"})
                return
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
    if path == "/version":
        body = VERSION
    elif path == "/parent":
        body = str(os.getppid())
    elif path == "/env":
        body = json.dumps({name: os.environ[name] for name in PRIVATE if name in os.environ})
    else:
        body = str(os.getpid())
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body.encode()})
