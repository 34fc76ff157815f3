"""What the gradient estimates and direct logit attribution need from an interpreter.

runtime/estimates.py and runtime/dla.py evaluate Backward and Estimate nodes for both
interpreters (naive.py's Interpreter and execute.py's Executor, which extends it). They are
written against this Protocol instead of importing the interpreter, so the dependency points
one way: naive.py -> estimates.py / dla.py -> context.py.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    import torch

    from patchc.compiler import ast as A
    from patchc.compiler.checked import CheckedSpec
    from patchc.compiler.ir import Forward, IRGraph

    from .inputs import Batch


class RunContext(Protocol):
    """The interpreter as the estimates see it: the model and its adapter, the values of the
    nodes evaluated so far, and each run's inputs and hooks."""

    checked: CheckedSpec
    model: torch.nn.Module
    adapter: Any
    device: Any
    values: dict[str, Any]

    def run_inputs(self, name: str) -> Any:
        """The run's tokenized batch and data rows (naive.RunInputs)."""

    def columns_for(self, run: str) -> dict[tuple[str, str], list[int]]:
        """Integer data columns of a run's rows, for per-example positions."""

    def token_ids(self, run: str, n: int) -> Callable[[A.Tok], torch.Tensor]:
        """Token id per example of a metric's TOK, for n rows."""

    def hooks_for(self, ir: IRGraph, nid: str, node: Forward, batch: Batch,
                  reads: bool = True) -> list:
        """(kind, layer, head, fn) hooks: the Forward's writes in order, then its reads."""

    def model_pass(self) -> contextlib.AbstractContextManager[None]:
        """A context whose time counts as model compute (the run's timings)."""
