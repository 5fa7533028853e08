"""The master's own states: the transition table, without processes (daemon/master_state.py)."""

from __future__ import annotations

import itertools

import pytest

from daemon.master_state import ALLOWED, MasterState, transition

S = MasterState


def test_every_state_has_a_row() -> None:
    assert set(ALLOWED) == set(MasterState)


@pytest.mark.parametrize("old, new", [
    (S.SERVING, S.ROLLING),  # HUP
    (S.ROLLING, S.SERVING),  # the roll is done, or aborted
    (S.SERVING, S.UPGRADING),  # the new image of a USR2 rolls the adopted workers
    (S.UPGRADING, S.SERVING),
    (S.ROLLING, S.HELD),  # --reload: the app never booted, wait for a change
    (S.HELD, S.ROLLING),  # the change (a HUP)
    (S.SERVING, S.LEAVING),  # TERM with --shutdown-delay
    (S.ROLLING, S.LEAVING),  # ... during a roll: it goes on, the mode is leaving
    (S.LEAVING, S.STOPPING),  # the delay is over
    (S.SERVING, S.STOPPING),  # TERM
    (S.STOPPING, S.QUITTING),  # QUIT, or INT twice
    (S.HELD, S.QUITTING),
])
def test_legal_moves(old: MasterState, new: MasterState) -> None:
    assert transition(old, new) is new


@pytest.mark.parametrize("old, new", [
    (S.UPGRADING, S.ROLLING),  # a HUP during the upgrade's roll waits for its end
    (S.HELD, S.SERVING),  # only a new roll brings a held master back
    (S.LEAVING, S.ROLLING),  # no reload once a stop was asked
    (S.LEAVING, S.SERVING),
    (S.STOPPING, S.SERVING),
    (S.STOPPING, S.LEAVING),
    (S.QUITTING, S.STOPPING),  # QUIT wins over a later TERM
])
def test_illegal_moves_raise(old: MasterState, new: MasterState) -> None:
    with pytest.raises(ValueError, match=f"{old.value} -> {new.value}"):
        transition(old, new)


def test_staying_put_is_always_allowed() -> None:
    for state in MasterState:
        assert transition(state, state) is state


def test_nothing_leaves_quitting_and_stops_are_reachable_from_every_live_state() -> None:
    assert ALLOWED[S.QUITTING] == frozenset()
    for state in MasterState:
        if state is not S.QUITTING:
            assert S.QUITTING in ALLOWED[state]
        if not state.stopping:
            assert S.STOPPING in ALLOWED[state]


def test_no_way_back_from_a_stop() -> None:
    for old, new in itertools.product(MasterState, MasterState):
        if old.leaving and not new.leaving:
            assert new not in ALLOWED[old], (old, new)


def test_the_questions_the_master_asks() -> None:
    assert {s for s in MasterState if s.stopping} == {S.STOPPING, S.QUITTING}
    assert {s for s in MasterState if s.leaving} == {S.LEAVING, S.STOPPING, S.QUITTING}
    assert {s for s in MasterState if s.rolling} == {S.ROLLING, S.UPGRADING}
