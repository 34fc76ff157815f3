"""Fixtures for every test: each test starts with nothing compiled before it.

patchc.run keeps what it compiled for a spec run again unchanged (patchc/compile_cache.py).
Tests run the same specs on the same module-scoped models, so without this a test would be
handed graphs a test before it made (under its own monkeypatches, say).
"""

from __future__ import annotations

import pytest

from patchc import compile_cache


@pytest.fixture(autouse=True)
def _nothing_compiled_before():
    compile_cache.clear()
    yield
    compile_cache.clear()
