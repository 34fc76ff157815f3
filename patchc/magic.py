"""The `%%patch` Jupyter cell magic: write a spec in a cell, get Results back.

    %load_ext patchc.magic
    %%patch results
    model "examples/models/ioi-gpt2"
    ...

The optional word after `%%patch` names a notebook variable to store the Results in; the
cell's value is the Results either way. Relative paths resolve against the notebook's
working directory.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


def run_cell(line: str, cell: str, namespace: dict[str, Any] | None = None):
    """What the magic does, without IPython (tested directly)."""
    import patchc

    results = patchc.run(cell)
    name = line.strip()
    if name and namespace is not None:
        namespace[name] = results
    return results


def cell_magic(line: str, cell: str, namespace: dict[str, Any] | None = None,
               stream: TextIO | None = None):
    """The magic itself: run_cell, but a mistake in the spec is printed as its located
    diagnostic (as `patchc check` prints it), not raised into a notebook traceback."""
    from patchc.compiler.errors import PatchcError

    try:
        return run_cell(line, cell, namespace)
    except PatchcError as e:
        n = len(e.errors)
        print(e.render() + (f"\n{n} errors" if n > 1 else ""), file=stream or sys.stderr)
        return None


def load_ipython_extension(ipython) -> None:  # pragma: no cover - needs IPython
    def patch(line: str, cell: str):
        return cell_magic(line, cell, ipython.user_ns)

    ipython.register_magic_function(patch, magic_kind="cell", magic_name="patch")
