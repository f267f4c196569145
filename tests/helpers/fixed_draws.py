"""Hypothesis draws that depend on the seed alone, not on which modules a session imported.

Besides its seeded choices, Hypothesis (6.131 and later) now and then draws a constant found
in the source of the project's modules imported so far (`_get_local_constants` in
hypothesis/internal/conjecture/providers.py). Which those are depends on the tests that ran
before and on what the code under test imports lazily, so `derandomize=True` alone gave the
fuzzed specs other cases in `make test` than in a run of the file alone (1331/669 invalid/
accepted after tests/unit/test_contract.py, 1323/677 alone): a failure of the full run did not
reproduce. Inside `local_constants_off()` that pool is empty.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from hypothesis.internal.conjecture import providers
from hypothesis.internal.constants_ast import Constants


@contextlib.contextmanager
def local_constants_off() -> Iterator[None]:
    saved = providers._get_local_constants
    providers._get_local_constants = Constants  # an empty pool, whatever is imported
    providers.CONSTANTS_CACHE.cache.clear()  # per choice type, built from the old pool
    try:
        yield
    finally:
        providers._get_local_constants = saved
        providers.CONSTANTS_CACHE.cache.clear()
