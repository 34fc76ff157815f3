"""The `%%patch` Jupyter cell magic: write a spec in a cell, get Results back.

    %load_ext patchc.magic
    %%patch results --model model --tokenizer tok
    model "gpt2"
    ...

The optional word after `%%patch` names a notebook variable to store the Results in; the
cell's value is the Results either way (shown as HTML tables; `results.plot("heads")` draws
one). `--model NAME` runs on a model object already loaded in the notebook (the variable
NAME, with its tokenizer from `--tokenizer NAME`), so a notebook loads its model once; the
spec's `model` line then only names it. Relative paths resolve against the notebook's
working directory. A mistake in the spec prints the located diagnostic, not a traceback.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any, TextIO


class MagicUsageError(ValueError):
    """A bad `%%patch` line (an unknown option, a variable the notebook does not have)."""


def _parse_line(line: str) -> tuple[str | None, str | None, str | None]:
    """(result variable, model variable, tokenizer variable) of a `%%patch` line."""
    words = shlex.split(line)
    name = model = tokenizer = None
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("--model", "--tokenizer"):
            if i + 1 >= len(words):
                raise MagicUsageError(f"%%patch: {w} needs a variable name")
            if w == "--model":
                model = words[i + 1]
            else:
                tokenizer = words[i + 1]
            i += 2
        elif w.startswith("-"):
            raise MagicUsageError(f"%%patch: unknown option {w} (options: --model NAME, "
                                  "--tokenizer NAME)")
        elif name is None:
            name = w
            i += 1
        else:
            raise MagicUsageError(f"%%patch: one result name only, got {name!r} and {w!r}")
    return name, model, tokenizer


def _lookup(namespace: dict[str, Any] | None, var: str | None, what: str) -> Any:
    if var is None:
        return None
    if namespace is None or var not in namespace:
        raise MagicUsageError(f"%%patch: no variable {var!r} in the notebook for {what}")
    return namespace[var]


def run_cell(line: str, cell: str, namespace: dict[str, Any] | None = None):
    """What the magic does, without IPython (tested directly). Raises PatchcError for a
    spec mistake and MagicUsageError for a bad `%%patch` line."""
    import patchc

    name, model_var, tok_var = _parse_line(line)
    model = _lookup(namespace, model_var, "--model")
    tokenizer = _lookup(namespace, tok_var, "--tokenizer")
    if model is not None and tokenizer is None:
        raise MagicUsageError("%%patch: --model needs --tokenizer (the model's tokenizer)")
    results = patchc.run(cell, model=model, tokenizer=tokenizer)
    if name and namespace is not None:
        namespace[name] = results
    return results


def cell_magic(line: str, cell: str, namespace: dict[str, Any] | None = None,
               stream: TextIO | None = None):
    """The magic itself: run_cell, but a mistake in the spec or the `%%patch` line is printed
    as its located diagnostic (as `patchc check` prints it), not raised into a traceback."""
    from patchc.compiler.errors import PatchcError

    try:
        return run_cell(line, cell, namespace)
    except PatchcError as e:
        n = len(e.errors)
        print(e.render() + (f"\n{n} errors" if n > 1 else ""), file=stream or sys.stderr)
        return None
    except MagicUsageError as e:
        print(e, file=stream or sys.stderr)
        return None


def load_ipython_extension(ipython) -> None:  # pragma: no cover - needs IPython
    def patch(line: str, cell: str):
        return cell_magic(line, cell, ipython.user_ns)

    ipython.register_magic_function(patch, magic_kind="cell", magic_name="patch")
