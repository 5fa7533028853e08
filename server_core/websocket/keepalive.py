"""The server's keep-alive ping for one WebSocket (``--ws-ping-interval/-timeout``).

Every ``interval`` seconds a ping goes out; if no pong arrives within
``timeout`` seconds of the first unanswered ping, the peer is declared dead and
``timed_out`` is called (the session closes with 1011). Any pong counts as an
answer: it proves the peer reads and writes, which is all the check is for.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


class KeepAlive:
    """Timers for pings and for the pong deadline; the session supplies the actions."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float | None, timeout: float | None,
                 send_ping: Callable[[bytes], None], timed_out: Callable[[], None]) -> None:
        self._loop = loop
        self._interval = interval or None
        self._timeout = timeout or None
        self._send_ping = send_ping
        self._timed_out = timed_out
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        # Counters, for observability and tests.
        self.pings = 0
        self.pongs = 0

    @property
    def awaiting_pong(self) -> bool:
        """True while a ping is unanswered and its deadline runs."""
        return self._pong_timer is not None

    def start(self) -> None:
        """Schedule the first ping (no-op without an interval)."""
        if self._interval is not None:
            self._ping_timer = self._loop.call_later(self._interval, self._ping)

    def _ping(self) -> None:
        self.pings += 1
        self._send_ping(os.urandom(4))
        # One deadline per silence: a later ping must not push back the
        # deadline of an unanswered one, or a dead peer would never time out
        # whenever the interval is shorter than the timeout.
        if self._timeout is not None and self._pong_timer is None:
            self._pong_timer = self._loop.call_later(self._timeout, self._expire)
        self.start()

    def _expire(self) -> None:
        self._pong_timer = None
        self.stop()
        self._timed_out()

    def pong(self) -> None:
        """The peer answered: clear the deadline."""
        self.pongs += 1
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None

    def stop(self) -> None:
        """No more pings (closing or closed)."""
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None
