"""Run ``server_core.worker.serve`` in this process, as a forked worker would.

Used by the worker-runtime tests (not an app)::

    python -m tests.apps.rt_runner SETTINGS_JSON LISTEN_FDS PIPE_FD

``SETTINGS_JSON`` holds ServerSettings keyword arguments, ``LISTEN_FDS`` is a
comma-separated list of inherited listening sockets (family and type are read
from each fd), ``PIPE_FD`` the write end of the control pipe (``-`` for none:
then the worker runs unsupervised, with a NullControl).
"""

from __future__ import annotations

import json
import socket
import sys

from server_core.control import PipeControl
from server_core.settings import ServerSettings
from server_core.worker import serve


def main() -> int:
    """Build the settings and sockets from argv and serve; return serve's status."""
    kwargs = json.loads(sys.argv[1])
    if "headers" in kwargs:
        kwargs["headers"] = tuple(tuple(pair) for pair in kwargs["headers"])
    if "forwarded_allow_ips" in kwargs:
        kwargs["forwarded_allow_ips"] = tuple(kwargs["forwarded_allow_ips"])
    sockets = [socket.socket(fileno=int(fd)) for fd in sys.argv[2].split(",") if fd]
    control = PipeControl(int(sys.argv[3])) if sys.argv[3] != "-" else None
    return serve(ServerSettings(**kwargs), sockets, control=control)


if __name__ == "__main__":
    sys.exit(main())
