"""What became of each reload and upgrade: the record corralctl waits on.

A HUP (or ``corralctl reload``) and a USR2 (or ``corralctl upgrade``) are
recorded as an :class:`Action` the moment they arrive, then finished by the
master when their outcome is known: ``done``, ``refused`` (the new
configuration is invalid: nothing changed), ``rolled-back`` (the new
generation could not become ready: the old one keeps serving), ``ignored``
(the master is stopping, or an upgrade is already in flight), ``interrupted``
(the master began to stop before the roll ended), or ``superseded`` (a later reload took over; ``by`` names it). ``corralctl``
polls ``status`` for its action's result; ``status`` also shows the last one.
Pure bookkeeping: no I/O.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

RUNNING, DONE, REFUSED, ROLLED_BACK, IGNORED, SUPERSEDED, INTERRUPTED = (
    "running", "done", "refused", "rolled-back", "ignored", "superseded", "interrupted")
# Results after which the action is over (and whether that is a success).
FINISHED = {DONE: True, SUPERSEDED: True, REFUSED: False, ROLLED_BACK: False, IGNORED: False, INTERRUPTED: False}
KEEP = 20  # actions remembered


@dataclass
class Action:
    """One reload or upgrade and its outcome."""

    id: int
    kind: str  # "reload" | "upgrade"
    origin: str  # "signal" | "corralctl" | "handoff" (an upgrade finishing in the new image)
    started: float = field(default_factory=time.time)  # wall clock, for people
    result: str = RUNNING
    reason: str = ""
    generation: int | None = None  # the generation of its roll, once started
    finished: float | None = None
    by: int | None = None  # superseded by this action id

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Actions:
    """The recent reloads and upgrades of this master image, newest last."""

    def __init__(self) -> None:
        self.items: list[Action] = []
        self.serial = 0

    def begin(self, kind: str, origin: str = "signal") -> Action:
        self.serial += 1
        action = Action(id=self.serial, kind=kind, origin=origin)
        self.items.append(action)
        del self.items[:-KEEP]
        return action

    def finish(self, action: Action | None, result: str, reason: str = "") -> None:
        if action is None or action.result != RUNNING:
            return
        action.result, action.reason, action.finished = result, reason, time.time()

    def get(self, action_id: int) -> Action | None:
        return next((a for a in self.items if a.id == action_id), None)

    @property
    def last(self) -> Action | None:
        return self.items[-1] if self.items else None

    def running(self, kind: str) -> Action | None:
        """The newest unfinished action of ``kind``."""
        return next((a for a in reversed(self.items) if a.kind == kind and a.result == RUNNING), None)

    def roll_ended(self, generation: int, ok: bool, error: str, superseded: bool) -> None:
        """A roll ended: finish the action that started it."""
        action = next((a for a in reversed(self.items) if a.generation == generation and a.result == RUNNING),
                      None)
        if action is None:
            return
        if superseded:
            newer = self.last if self.last is not action else None
            self.finish(action, SUPERSEDED, "a later reload took over")
            action.by = newer.id if newer is not None else None
        elif ok:
            self.finish(action, DONE)
        else:
            self.finish(action, ROLLED_BACK, error)
