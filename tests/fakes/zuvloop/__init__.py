"""A stand-in for zuvloop, which has no wheel here: ``new_event_loop`` makes a marked asyncio loop.

tests/test_startup_refusals.py puts tests/fakes on PYTHONPATH to check that
``--loop zuvloop`` runs the worker on the loop this function returns.
"""

import asyncio


class ZuvLoop(asyncio.SelectorEventLoop):
    """The loop ``--loop zuvloop`` must run on."""


def new_event_loop() -> asyncio.AbstractEventLoop:
    return ZuvLoop()
