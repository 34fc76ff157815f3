"""Sparse latent sweeps in the plan interpreter: skip the forwards whose latents are
inactive, and pack the rest into full batches.

The IR marks a skippable experiment forward with `sparse` (Reads of the whole latent vector
at each written position, on the target's and source's base forwards) and `same_as` (the
target's base forward): see compiler/lower_latents.py. When the plan reaches a step of such
forwards, the `sparse` Reads have been taken (they are inputs of the step), and for each member:

- inactive (every latent its own writes touch is zero in every `sparse` Read at those
  positions, all rows): its writes replace zero by zero, so its output is `same_as`'s. It
  costs no forward: its value is `same_as`'s output (with its own valid rows), whose logits
  trim_logits kept at the member's metric positions.
- active: it runs. The active members of this step and of later steps of the same shape
  (run, width, start layer, narrowing, logits) whose inputs are ready are packed into chunks
  as large as the largest of those steps (which the schedule sized under the memory budget),
  so a 16k-latent sweep with a handful of active latents costs a handful of rows, not one
  pass per planned chunk. Steps whose members ran earlier then have nothing left to do.

A member whose metrics generate text, need the loss, or that has Reads of its own always
runs (its base forward's output does not hold what they need).

A compact latent sweep (one Forward for every latent x position of a statement; its chunks
are steps with `sweep` ranges) is decided member by member when its first chunk is reached
(runtime/sparse_sweeps.py): the inactive members take their base forward's values, and the
active ones of all its chunks of one shape are packed into passes as large as the largest
of those chunks, each run by runtime/sweeps.run_chunk on those members (`rows`).
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

import numpy as np
import torch

from patchc.compiler import ast as A
from patchc.compiler.ir import Forward, IRGraph, Metric, Read, Write
from patchc.compiler.ir_sweep import execution_order
from patchc.compiler.lower_latents import is_latent
from patchc.compiler.schedule import ForwardStep, Plan

from .sparse_sweeps import active_members, stand_in
from .writes import ReadValue

_PLAIN_SKIP = (A.MLoss, A.MSeqLogProb, A.MText) + tuple(A.GENERATING)
# What steps must share for one pass to run their members.
_SHAPE = ("run", "samples", "width", "p0", "start_layer", "start", "twin", "logit_positions",
          "logit_tokens")


class Sparse:
    """The sparse-sweep state of one plan's run: which members are done, and counts."""

    def __init__(self, interp: Any, ir: IRGraph, plan: Plan) -> None:
        # interp: the plan interpreter (execute.Executor, which imports this module)
        self.interp = interp
        self.ir = ir
        self.steps = plan.forward_steps()
        self.order = {id(s): k for k, s in enumerate(self.steps)}
        self.done: set[str] = set()
        self.skipped = 0  # experiments that cost no forward
        self.packed = 0  # passes the active members took
        self.planned = 0  # the plan's passes for those experiments
        # Compact sweeps: per sweep, its active members (row indices) by chunk shape, and
        # the members each packed pass runs (by id of the step yielded for it).
        self.sweeps: dict[str, dict[tuple, tuple[list[np.ndarray], int]]] = {}
        self.rows: dict[int, np.ndarray] = {}

    def gated(self, step: ForwardStep) -> bool:
        return not step.generate and not step.keep_kv and \
            any(self._forward(m).sparse for m in step.members)

    def parts(self, step: ForwardStep) -> Iterator[ForwardStep]:
        """The steps to run in place of `step` (itself when it is no sparse sweep)."""
        if not self.gated(step):
            yield step
            return
        self.planned += 1
        if step.sweep is not None:
            yield from self._sweep_parts(step)
            return
        if all(m in self.done for m in step.members):
            return  # run (or skipped) with an earlier step's pass
        later = self.steps[self.order.get(id(step), len(self.steps)):]
        group = [s for s in later if s is step or self._joins(step, s)]
        size = max(len(s.members) for s in group)
        active: list[str] = []
        for s in group:
            for fid in s.members:
                if fid in self.done or (s is not step and not self._ready(fid)):
                    continue
                if self._inactive(fid):
                    self._stand_in(fid)
                else:
                    active.append(fid)
                self.done.add(fid)
        for k in range(0, len(active), size):
            chunk = active[k:k + size]
            self.packed += 1
            yield step.model_copy(update={"members": chunk,
                                          "rows": step.rows // len(step.members) * len(chunk)})

    def _sweep_parts(self, step: ForwardStep) -> Iterator[ForwardStep]:
        fid = step.members[0]
        if fid not in self.sweeps:
            self.sweeps[fid] = self._decide(fid)
        group = self.sweeps[fid].pop(self._shape(step), None)
        if group is None:
            return  # this chunk's active members ran with an earlier chunk's passes
        parts, size = group
        active = np.concatenate(parts)
        per = step.rows // (step.sweep[1] - step.sweep[0])  # type: ignore[index]
        for k in range(0, active.size, size):
            rows = active[k:k + size]
            self.packed += 1
            part = step.model_copy(update={"sweep": (0, rows.size), "rows": per * rows.size})
            self.rows[id(part)] = rows
            yield part

    def chunk_rows(self, step: ForwardStep) -> np.ndarray | None:
        """The members a packed pass of a compact sweep runs (None: the step's own range)."""
        return self.rows.pop(id(step), None)

    def _decide(self, fid: str) -> dict[tuple, tuple[list[np.ndarray], int]]:
        """Skip the sweep's inactive members; its active ones by chunk shape, in execution
        order, with the largest chunk of that shape (members per pass)."""
        f = self._forward(fid)
        active = active_members(self.interp, self.ir, f)
        stand_in(self.interp, self.ir, fid, f, np.flatnonzero(~active))
        self.skipped += int((~active).sum())
        order = execution_order(f.sweep.space)
        out: dict[tuple, tuple[list[np.ndarray], int]] = {}
        for s in self.steps:
            if s.members == [fid] and s.sweep is not None:
                rows = order[s.sweep[0]:s.sweep[1]]
                parts, size = out.get(self._shape(s), ([], 0))
                parts.append(rows[active[rows]])
                out[self._shape(s)] = (parts, max(size, s.sweep[1] - s.sweep[0]))
        return out

    @staticmethod
    def _shape(step: ForwardStep) -> tuple:
        return tuple(getattr(step, k) for k in _SHAPE)

    def counts(self) -> dict[str, int]:
        """For the manifest: sparse-sweep experiments skipped, and the passes the rest took
        against the passes the plan had for them."""
        return {"skipped": self.skipped, "passes": self.packed, "planned": self.planned}

    # ---- helpers ------------------------------------------------------------------------
    def _forward(self, fid: str) -> Forward:
        return self.ir.node(fid)  # type: ignore[return-value]

    def _joins(self, step: ForwardStep, other: ForwardStep) -> bool:
        """Can `other`'s members run in `step`'s pass (one shape, nothing else needed)?"""
        return self.gated(other) and other.sweep is None and \
            all(getattr(step, k) == getattr(other, k) for k in _SHAPE)

    def _ready(self, fid: str) -> bool:
        f = self._forward(fid)
        values = self.interp.values
        needs = [i for w in f.writes for i in self.ir.node(w).inputs]  # type: ignore[union-attr]
        needs += list(f.sparse) + [x for x in (f.same_as, f.start) if x]
        if f.narrow and f.twin and f.twin not in self.interp.kv:
            return False
        return all(n in values for n in needs)

    def _inactive(self, fid: str) -> bool:
        f = self._forward(fid)
        if not f.sparse or f.same_as is None or f.same_as not in self.interp.values:
            return False
        for c in self.ir.g.successors(fid):
            node = self.ir.node(c)
            if isinstance(node, Read):
                return False
            if isinstance(node, Metric) and node.forward == fid and (node.lens is not None or any(
                    isinstance(e, _PLAIN_SKIP) for e in A.metric_nodes(node.expr))):
                return False
        base: Forward = self._forward(f.same_as)
        gates = [self.ir.node(g) for g in f.sparse]
        for wid in f.writes[len(base.writes):]:
            w: Write = self.ir.node(wid)  # type: ignore[assignment]
            lo, hi = w.site.features or (0, None)
            matching = [(g, r) for g, r in zip(f.sparse, gates)
                        if r.site.kind == w.site.kind and r.pos == w.pos]  # type: ignore[union-attr]
            if not matching:
                return False
            for gid, _ in matching:
                value: ReadValue = self.interp.values[gid]
                if bool(torch.any(value.value[..., lo:hi] != 0)):
                    return False
        return True

    def _stand_in(self, fid: str) -> None:
        """The skipped forward's value: its base forward's output, with its own valid rows
        (a row without a written position is NaN, as if the forward had run)."""
        f = self._forward(fid)
        out = copy.copy(self.interp.values[f.same_as])  # type: ignore[index]
        out.valid = self.interp.valid_rows(self.ir, f, out.batch)
        self.interp.values[fid] = out
        self.skipped += 1


def borrowed_metrics(ir: IRGraph, fid: str) -> list[Metric]:
    """The metrics of the forwards that name `fid` as `same_as`: a skipped one reads them
    from `fid`'s logits, so `fid`'s output holds their positions too."""
    out = []
    for g in ir.g.successors(fid):
        f = ir.node(g)
        if isinstance(f, Forward) and f.same_as == fid:
            out += [m for m in (ir.node(c) for c in ir.g.successors(g))
                    if isinstance(m, Metric) and m.forward == g and m.lens is None]
    return out


def zero_path_gradients(interp: Any, ir: IRGraph, pairs: list[tuple[str, str]]
                        ) -> dict[str, torch.Tensor] | None:
    """Integrated gradients of latents inactive in both runs: when every (A, B) Read pair of
    an ig Estimate is of latents that are zero in both runs at all its positions, the path
    a_B + alpha (a_A - a_B) is that zero, every term (a_A - a_B) * g is exactly 0 and the
    estimate is m_B: zero gradients stand in for the ig passes (None: they must run)."""
    for ra, rb in pairs:
        read: Read = ir.node(rb)  # type: ignore[assignment]
        if not is_latent(read.site):
            return None
        if bool(torch.any(interp.values[ra].value != 0)) or \
                bool(torch.any(interp.values[rb].value != 0)):
            return None
    return {rb: torch.zeros_like(interp.values[rb].value, dtype=torch.float32)
            for _, rb in pairs}
