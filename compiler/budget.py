"""`set memory`: refusing a plan that cannot fit its budget, before anything runs.

The schedule (compiler/schedule.py) cuts every batch group and compact sweep into chunks
that fit the budget beside the weights, a fixed reserve and the values alive at that step.
One experiment is the smallest chunk: when even that does not fit, the plan lists the step
under `over_budget`. `check_budget` turns that into error E422 at the `set memory` line,
naming the smallest budget that would fit: the peak of the plan made of one-experiment
chunks (the least any schedule of this graph can hold at once), rounded up to a megabyte.
"""

from __future__ import annotations

import math

from . import ast as A
from .costs import parse_bytes
from .errors import NO_SPAN, CheckError, Span
from .ir import IRGraph
from .modelspec import ModelSpec
from .schedule import Plan, schedule


def smallest_budget(ir: IRGraph, model: ModelSpec, runs, batch_size: int | None,
                    dtype_bytes: int, weights_bytes: int | None = None) -> int:
    """Bytes of the smallest `set memory` under which every step of the plan fits."""
    tight = schedule(ir, model, runs, 1, batch_size, dtype_bytes, weights_bytes)
    # (+2%: the slack the schedule keeps inside a sweep; whole megabytes)
    return math.ceil(tight.optimized.peak_bytes * 1.02 / 1e6) * 1_000_000


def memory_span(spec: A.Spec) -> Span:
    found = [s for s in spec.statements if isinstance(s, A.SetDecl) and s.name.value == "memory"]
    return found[0].span if found else NO_SPAN


def budget_error(plan: Plan, need: int, span: Span) -> CheckError:
    budget = plan.budget_bytes or 0
    steps = len(plan.over_budget)
    return CheckError(
        "E422", f"the plan cannot fit `set memory` = {_size(budget)}: {steps} model "
        "pass(es) need more, even with one experiment per pass; the smallest budget that "
        f"fits is {_size(need)}", span,
        hint=f'set memory = "{-(-need // 1_000_000)}MB" (or more), or fewer prompts per run')


def _size(n: int) -> str:
    """Bytes as people write them: MB from 1 MB up, else KB (or B)."""
    return f"{-(-n // 10**6)} MB" if n >= 10**6 else f"{-(-n // 10**3)} KB" if n >= 10**3 \
        else f"{n} B"


def check_budget(checked, ir: IRGraph, runs, dtype_bytes: int,
                 weights_bytes: int | None = None, plan: Plan | None = None) -> None:
    """Raise E422 when `set memory` is given and the plan does not fit it."""
    memory = checked.options.memory
    if memory is None:
        return
    if plan is None:
        plan = schedule(ir, checked.model, runs, parse_bytes(memory),
                        checked.options.batch_size, dtype_bytes, weights_bytes)
    if not plan.over_budget:
        return
    need = smallest_budget(ir, checked.model, runs, checked.options.batch_size, dtype_bytes,
                           weights_bytes)
    raise budget_error(plan, need, memory_span(checked.spec)).with_source(checked.spec.source)
