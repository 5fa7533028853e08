"""Test app for the log tests.

Paths:
    /            body "hello" (5 bytes)
    /bytes?N     a body of N bytes
    /applog?msg  the app logs a WARNING with its own ``logging`` logger, then answers "ok"
    other        404 "not found"
"""

import logging

logger = logging.getLogger("log_app")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = scope["query_string"].decode("latin-1")
    status = 200
    if path == "/":
        body = b"hello"
    elif path == "/bytes":
        body = b"x" * int(query or "0")
    elif path == "/applog":
        logger.warning("app_message %s", query, extra={"user_id": 42})
        body = b"ok"
    else:
        status, body = 404, b"not found"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
