"""The master's own mode: named states and the legal moves between them.

The workers have their states (``daemon.workers.State``); this is the same
idea for the master itself. At any moment it is in exactly one
:class:`MasterState`, and :func:`transition` is the only way to change it:
``daemon.pool.Pool.set_state`` calls it and logs every change
(``master_state``), so a reader follows the master through one event.

* ``serving`` → ``rolling`` on HUP, back to ``serving`` when the roll is done or aborted;
* ``upgrading``: the new image of a USR2 rolls the workers it adopted, then ``serving``;
* ``held``: ``--reload`` and the app never booted; the next HUP (a changed file) rolls again;
* ``leaving``: TERM with ``--shutdown-delay``; when the delay ends, ``stopping``;
* ``stopping`` (TERM, INT) and ``quitting`` (QUIT, a second INT, the app cannot start)
  are reachable from every other state, and nothing leaves ``quitting``.

What is not a mode stays a plain fact of the pool: whether any worker was
ever ready (``ever_ready``: from then on a failed boot is retried, not
fatal) and whether ``READY=1`` was sent (``announced_ready``); both only ever
go from False to True, whatever the mode. The old image's half of a USR2
(the preflight, then the exec) does not change the master's mode: it keeps
serving and the upgrader (``daemon.upgrade.Upgrader``) holds that state.

Pure: no I/O, no clock, so ``tests/test_master_state.py`` walks the table.
"""

from __future__ import annotations

import enum


class MasterState(enum.Enum):
    """What the master is doing as a whole."""

    SERVING = "serving"  # keeping --workers workers ready (also while the first ones boot)
    ROLLING = "rolling"  # a HUP roll: new workers replace the old ones, readiness-gated
    UPGRADING = "upgrading"  # the new image of a USR2 rolls the adopted workers onto the new code
    HELD = "held"  # --reload and the app never booted: spawn nothing until the next change (HUP)
    LEAVING = "leaving"  # TERM with --shutdown-delay: /readyz says 503, workers still serve
    STOPPING = "stopping"  # graceful stop: workers drain, then the master exits
    QUITTING = "quitting"  # immediate stop: workers exit at once (QUIT, a second INT, exit 3)

    @property
    def stopping(self) -> bool:
        """The workers are being stopped (no more spawning, health checks off, exits expected)."""
        return self in (MasterState.STOPPING, MasterState.QUITTING)

    @property
    def leaving(self) -> bool:
        """A stop was asked (TERM, INT, QUIT, or the shutdown delay runs): no reload, no upgrade, not ready."""
        return self in (MasterState.LEAVING, MasterState.STOPPING, MasterState.QUITTING)

    @property
    def rolling(self) -> bool:
        """A roll (HUP's or the upgrade's) is the master's business right now."""
        return self in (MasterState.ROLLING, MasterState.UPGRADING)


_S = MasterState
_STOPS = frozenset({_S.LEAVING, _S.STOPPING, _S.QUITTING})

# The legal moves; anything else is a bug in the master. A move to the same
# state is always allowed and changes nothing (a second TERM while stopping,
# a HUP superseding a running roll).
ALLOWED: dict[MasterState, frozenset[MasterState]] = {
    # ROLLING on HUP, UPGRADING when the new image of a USR2 starts its roll.
    _S.SERVING: frozenset({_S.ROLLING, _S.UPGRADING, _S.HELD}) | _STOPS,
    # SERVING when the roll is done or aborted; HELD when its app never booted.
    _S.ROLLING: frozenset({_S.SERVING, _S.HELD}) | _STOPS,
    # A HUP during the upgrade's roll waits for its end (Arbiter.request_reload): no ROLLING here.
    _S.UPGRADING: frozenset({_S.SERVING, _S.HELD}) | _STOPS,
    # Only a HUP (a changed file under --reload) brings a held master back.
    _S.HELD: frozenset({_S.ROLLING}) | _STOPS,
    # The delay ends in the graceful stop (or a QUIT cuts it short); a roll running
    # when the delay began goes on, but the mode stays LEAVING.
    _S.LEAVING: frozenset({_S.STOPPING, _S.QUITTING}),
    _S.STOPPING: frozenset({_S.QUITTING}),
    _S.QUITTING: frozenset(),
}


def transition(old: MasterState, new: MasterState) -> MasterState:
    """The state after moving from ``old`` to ``new`` (that is, ``new``); an illegal move raises ValueError."""
    if new is not old and new not in ALLOWED[old]:
        raise ValueError(f"master: illegal transition {old.value} -> {new.value}")
    return new
