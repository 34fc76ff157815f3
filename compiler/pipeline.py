"""The optimizer pipeline: the ordered optimization passes over the IR (docs/architecture.md,
"The optimizer"), each a pure function IRGraph -> IRGraph in compiler/passes/<name>.py.

`optimize` verifies the graph the passes return; a broken result (or a pass that fails on a
graph an earlier pass broke) is traced to the pass that broke it, which the error names, or
to the input when that is broken already. `experiment_counts` gives the rows each result
table will have, from the sweeps alone (no graph is built).
"""

from __future__ import annotations

from typing import Callable

from .checked import CheckedSpec
from .errors import PlanError
from .ir import IRGraph
from .ir_verify import verify
from .lower import count_rows
from .passes.batch import batch
from .passes.dead_positions import dead_positions
from .passes.dedupe import dedupe
from .passes.drop_baselines import drop_baselines
from .passes.fuse_attribution import fuse_attribution
from .passes.narrow_positions import narrow_positions
from .passes.prune_reads import prune_reads
from .passes.share_prefix import share_prefix
from .passes.trim_logits import trim_logits

Pass = Callable[[IRGraph], IRGraph]

# In the order docs/architecture.md explains. Each pass's docstring says what it changes
# and why results stay equal.
PASSES: tuple[Pass, ...] = (dedupe, prune_reads, share_prefix, drop_baselines,
                            narrow_positions, batch, fuse_attribution, trim_logits,
                            dead_positions)


def optimize(ir: IRGraph, passes: tuple[Pass, ...] | None = None) -> IRGraph:
    """Run `passes` (default PASSES) in order and verify the result. Verifying is linear
    in the graph, as a pass is: after every pass (and before the first) it was a large part
    of planning a small run. When the result is broken, or a pass fails, the input is
    verified and the passes are run again from it, verifying after each, to name the pass
    that broke the graph (or the lowering, when the input is broken already)."""
    chosen = PASSES if passes is None else passes
    out = ir
    for k, p in enumerate(chosen):
        try:
            out = p(out)
        except Exception:
            _find_broken_pass(ir, chosen[:k])  # a broken input, or an earlier pass's graph?
            raise
    try:
        verify(out)
    except PlanError:
        _find_broken_pass(ir, chosen)
        raise
    return out


def _find_broken_pass(ir: IRGraph, passes: tuple[Pass, ...]) -> None:
    """Raise verify's PlanError for the input as it is, or the PlanError of the first pass
    whose output fails verify (passes are pure functions, so a rerun breaks the graph where
    the first run did)."""
    verify(ir)
    for p in passes:
        ir = p(ir)
        try:
            verify(ir)
        except PlanError as e:
            name = getattr(p, "__module__", "?").rsplit(".", 1)[-1] + "." + \
                getattr(p, "__name__", "?")
            raise PlanError(e.code, f"after pass {name}: {e.message}", e.span) from None


def experiment_counts(checked: CheckedSpec) -> dict[str, int]:
    """Rows per result table, by table name (equal to `len(table.rows)` of lower())."""
    return count_rows(checked)
