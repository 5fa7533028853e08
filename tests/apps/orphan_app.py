"""Test app for corral as PID 1: abandons grandchildren the kernel hands to the master.

    /spawn?N   double-forks N processes that outlive their parent (re-parented to PID 1,
               the master in a PID namespace) and exit with status 3 a moment later
    /          body "<pid>"
"""

import os
import time


def _abandon(count: int) -> None:
    for _ in range(count):
        child = os.fork()
        if child == 0:
            # The intermediate child: fork the orphan-to-be and leave at once.
            try:
                if os.fork() == 0:
                    time.sleep(0.2)
                    os._exit(3)  # a status that would mean "cannot boot" from a worker
            finally:
                os._exit(0)
        os.waitpid(child, 0)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/spawn":
        _abandon(int(scope["query_string"].decode() or "1"))
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
