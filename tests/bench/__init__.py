"""Benchmarks for corral (``make bench``, ``python -m tests.bench.run``).

Never collected by pytest (``tests/bench`` is in ``norecursedirs``): these modules start
real servers and a real load generator, and their figures are reported, never asserted.
"""
