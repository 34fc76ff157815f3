"""The optimizer pipeline: the ordered optimization passes over the IR (docs/architecture.md,
"The optimizer"), each a pure function IRGraph -> IRGraph in compiler/passes/<name>.py.

`optimize` verifies the graph before the first pass and after every pass, so a pass that
breaks an invariant is named in the error. `experiment_counts` gives the rows each result
table will have, from the sweeps alone (no graph is built).
"""

from __future__ import annotations

from typing import Callable

from .checked import CheckedSpec
from .errors import PlanError
from .ir import IRGraph, verify
from .lower import count_rows
from .passes.batch import batch
from .passes.dead_positions import dead_positions
from .passes.dedupe import dedupe
from .passes.fuse_attribution import fuse_attribution
from .passes.narrow_positions import narrow_positions
from .passes.prune_reads import prune_reads
from .passes.share_prefix import share_prefix
from .passes.trim_logits import trim_logits

Pass = Callable[[IRGraph], IRGraph]

# In the order docs/architecture.md explains. Each pass's docstring says what it changes
# and why results stay equal.
PASSES: tuple[Pass, ...] = (dedupe, prune_reads, share_prefix, narrow_positions, batch,
                            fuse_attribution, trim_logits, dead_positions)


def optimize(ir: IRGraph, passes: tuple[Pass, ...] | None = None) -> IRGraph:
    """Run `passes` (default PASSES) in order, verifying the graph before and after each."""
    verify(ir)
    for p in PASSES if passes is None else passes:
        ir = p(ir)
        try:
            verify(ir)
        except PlanError as e:
            name = getattr(p, "__module__", "?").rsplit(".", 1)[-1] + "." + \
                getattr(p, "__name__", "?")
            raise PlanError(e.code, f"after pass {name}: {e.message}", e.span) from None
    return ir


def experiment_counts(checked: CheckedSpec) -> dict[str, int]:
    """Rows per result table, by table name (equal to `len(table.rows)` of lower())."""
    return count_rows(checked)
