"""A WebSocket test app: echo plus one route per behaviour under test.

Routes (by path, after any root path):
    /echo (any other path)  accept (``?subprotocol=X`` picks X) and echo; the text
                            ``close:CODE:REASON`` makes the app close, ``raise`` crashes it
    /headers                accept with an extra ``x-extra: 1`` header, then echo
    /scope                  accept and send the scope as JSON
    /deny, /deny-length     denial response 403 (chunked / with content-length)
    /reject                 websocket.close before accept (403)
    /crash                  raise before accept (500)
    /gate                   accept, wait until state["gate"] is set, then echo
    /gate-accept            wait until state["gate"] is set, then accept and echo
    /flood?n=N&size=S       accept and send N binary messages of S bytes, then "done"
    /wait                   accept and wait for the disconnect

Every disconnect is recorded: appended to ``state["log"]`` when the lifespan
state has one (in-process tests) and printed as ``ws-disconnect CODE REASON``
(process tests read it from the log).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "http":
        await http(scope, receive, send)
    else:
        await websocket(scope, receive, send)


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = f"plain http {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def record(scope: dict[str, Any], item: Any) -> None:
    log = scope["state"].get("log")
    if log is not None:
        log.append(item)
    if item[0] == "disconnect":
        print(f"ws-disconnect {item[1]} {item[2]}", flush=True)


async def wait_gate(scope: dict[str, Any]) -> None:
    gate = scope["state"]["gate"]  # a threading.Event set by the test thread
    while not gate.is_set():
        await asyncio.sleep(0.01)


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            record(scope, ("disconnect", message["code"], message.get("reason", "")))
            return
        text = message.get("text")
        if text is not None and text.startswith("close:"):
            _, code, reason = text.split(":", 2)
            await send({"type": "websocket.close", "code": int(code), "reason": reason})
            continue
        if text == "raise":
            raise RuntimeError("the app failed on purpose")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"].removeprefix(scope["root_path"])
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    connect = await receive()
    assert connect["type"] == "websocket.connect", connect
    if path == "/deny" or path == "/deny-length":
        headers = [(b"content-type", b"text/plain"), (b"x-denied", b"yes")]
        if path == "/deny-length":
            headers.append((b"content-length", b"15"))
        await send({"type": "websocket.http.response.start", "status": 403, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": b"denied: ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"go away"})
        return
    if path == "/reject":
        await send({"type": "websocket.close"})
        return
    if path == "/crash":
        raise RuntimeError("crash before accept")
    if path == "/gate-accept":
        await wait_gate(scope)
    accept: dict[str, Any] = {"type": "websocket.accept", "subprotocol": query.get("subprotocol")}
    if path == "/headers":
        accept["headers"] = [(b"x-extra", b"1")]
    await send(accept)
    record(scope, ("accepted", path))
    if path == "/scope":
        view = {key: scope[key] for key in ("type", "asgi", "http_version", "scheme", "root_path", "path",
                                            "subprotocols", "extensions", "client", "server")}
        view["raw_path"] = scope["raw_path"].decode()
        view["query_string"] = scope["query_string"].decode()
        view["headers"] = [[k.decode(), v.decode()] for k, v in scope["headers"]]
        view["state_keys"] = sorted(scope["state"])
        await send({"type": "websocket.send", "text": json.dumps(view)})
    elif path == "/gate":
        await wait_gate(scope)
    elif path == "/flood":
        chunk = b"f" * int(query.get("size", "65536"))
        for _ in range(int(query.get("n", "100"))):
            await send({"type": "websocket.send", "bytes": chunk})
        record(scope, ("flood-done",))
        await send({"type": "websocket.send", "text": "done"})
    elif path == "/wait":
        message = await receive()
        record(scope, ("disconnect", message["code"], message.get("reason", "")))
        return
    await echo(scope, receive, send)
