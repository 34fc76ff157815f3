"""Each test here starts with nothing compiled before it.

patchc.run keeps what it compiled for a spec run again unchanged (patchc/compile_cache.py);
tests run the same specs on the same module-scoped models, so without this a test could be
handed what a test before it compiled (under its own monkeypatches, say). (Not a conftest
at tests/: that would put tests/ on sys.path, where tests/patchc would stand for patchc.)
"""

from __future__ import annotations

import pytest

from patchc import compile_cache


@pytest.fixture(autouse=True)
def _nothing_compiled_before():
    compile_cache.clear()
    yield
    compile_cache.clear()
