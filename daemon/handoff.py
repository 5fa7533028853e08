"""The USR2 hand-off: what the old image leaves in ``$CORRAL_HANDOFF`` for the new one.

The listening sockets and the live workers' control pipes keep their
descriptor numbers across ``execve``; this describes which is which (JSON,
versioned). A master of one release writes it and a master of the next
reads it: a change of its fields is a change of ``HANDOFF_VERSION``. ``daemon.upgrade``
builds and execs; this module is the format alone, imported by the preflight
too (``daemon.upgrade_check``, to keep the variable from the check process).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass, field

from daemon.listeners import Handed

HANDOFF_VAR = "CORRAL_HANDOFF"
HANDOFF_VERSION = 1


@dataclass(frozen=True)
class ListenerHandoff:
    """One listening socket crossing the exec."""

    fd: int
    address: str  # the key open_listeners looks up (daemon.listeners.address_key or the bind)
    owned: bool  # we bound it (a UNIX path we created is ours to unlink at exit)


@dataclass(frozen=True)
class WorkerHandoff:
    """One live worker crossing the exec: still our child afterwards."""

    pid: int
    control_fd: int  # read end of its control pipe
    generation: int
    started_at: float  # time.monotonic(): CLOCK_MONOTONIC is system-wide, so it survives exec
    serial: int = 0
    state: str = "ready"  # a daemon.workers.State value


@dataclass(frozen=True)
class Handoff:
    """Everything the new image needs to carry on where the old one stopped."""

    listeners: tuple[ListenerHandoff, ...]
    workers: tuple[WorkerHandoff, ...]
    generation: int
    socket_activated: bool = False  # listeners came from systemd: do not bind the implicit default
    upgraded_at: float = field(default_factory=time.monotonic)

    def to_json(self) -> str:
        """The handoff as the JSON text of ``$CORRAL_HANDOFF``."""
        data = asdict(self)
        data["v"] = HANDOFF_VERSION
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Handoff:
        """Parse ``$CORRAL_HANDOFF``; ``ValueError`` when it is not ours or malformed."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.pop("v", None) != HANDOFF_VERSION:
            raise ValueError("unknown CORRAL_HANDOFF version")
        try:
            return cls(
                listeners=tuple(ListenerHandoff(**item) for item in data["listeners"]),
                workers=tuple(WorkerHandoff(**item) for item in data["workers"]),
                generation=int(data["generation"]),
                socket_activated=bool(data.get("socket_activated", False)),
                upgraded_at=float(data.get("upgraded_at", time.monotonic())),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed CORRAL_HANDOFF: {exc}") from None

    def handed(self) -> Handed:
        """The listeners as sockets for ``daemon.listeners.open_listeners`` (the same descriptors)."""
        return Handed(sockets={item.address: socket.socket(fileno=item.fd) for item in self.listeners},
                      owned=frozenset(item.address for item in self.listeners if item.owned),
                      socket_activated=self.socket_activated)


def read_handoff(environ: MutableMapping[str, str] | None = None) -> Handoff | None:
    """The handoff left by the previous image, removed from the environment; None on a first start.

    A malformed value is dropped with ``None``: starting fresh is safer than
    guessing which descriptors are which.
    """
    env = os.environ if environ is None else environ
    text = env.pop(HANDOFF_VAR, None)
    os.environ.pop(HANDOFF_VAR, None)
    if not text:
        return None
    try:
        handoff = Handoff.from_json(text)
    except ValueError:
        return None
    # The exec made them inheritable; the app's own subprocesses must not get them.
    for fd in [item.fd for item in handoff.listeners] + [w.control_fd for w in handoff.workers]:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass
    return handoff
