"""Compact edge sweeps in the compiler (compiler/ir_edges.py, lower_edges.py): `swap`/`ablate`
over single edges lower to one sweep Forward per receiver group and run of positions, whatever
the number of edges (golden dump in tests/fixtures/edges/; `PATCHC_UPDATE_GOLDEN=1` rewrites
it). The passes start each at its receivers' layer (the logits' after the last block), and the
plan counts the same experiments and, receiver group for receiver group, the same FLOPs as the
per-edge lowering; a memory budget cuts a sweep into chunks."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from checkmodels import Models, build  # noqa: E402

from patchc.compiler.dump import dump_ir  # noqa: E402
from patchc.compiler.dump_plan import emit_plan, ir_dot  # noqa: E402
from patchc.compiler.ir import Forward, Read  # noqa: E402
from patchc.compiler.ir_verify import verify  # noqa: E402
from patchc.compiler.lower import count_rows  # noqa: E402
from patchc.compiler.pipeline import optimize  # noqa: E402
from patchc.compiler.schedule import run_shapes, schedule  # noqa: E402

from test_dump import ROOT, golden  # noqa: E402
from test_lower_edges_compact import _lower  # noqa: E402

GOLDEN = """swap L0.H$h.out -> L$l.H$h.q, L1.mlp.out -> L*.mlp.in, L0.H0.out -> logits @ last
    from clean into corrupt measure ld normalized as t where $h <= 1
ablate L2.H*.out -> L3.H0.v in corrupt with zero measure ld as z
"""


@pytest.fixture(scope="session")
def models() -> Models:
    return build()


def _sweeps(ir) -> list[Forward]:
    return [f for _, f in ir.of_type(Forward) if f.sweep is not None]


def test_golden_edge_sweep_lowering(models: Models) -> None:
    checked, ir = _lower(models, GOLDEN)
    verify(ir)
    golden(ROOT / "tests" / "fixtures" / "edges" / "swap_compact.txt", dump_ir(ir))
    t, z = ir.tables
    assert not t.rows and not z.rows
    # t: L0 senders into layers 1-3 q (one sweep per layer), L1.mlp.out into L2/L3 mlp.in
    # (MLP inputs: a group of their own per layer), the logits edge @ last (its own run)
    found = [(f.sweep.mode, f.sweep.space.receivers[0].kind, f.sweep.space.receivers[0].layer,
              len(f.sweep)) for f in _sweeps(ir)]
    assert found == [("edge", "q.in", 1, 2), ("edge", "q.in", 2, 2), ("edge", "mlp.in", 2, 1),
                     ("edge", "q.in", 3, 2), ("edge", "mlp.in", 3, 1),
                     ("edge", "logits.in", 4, 1), ("edge_zero", "v.in", 3, 4)]
    # members keep their table rows (sender-major: head 0 into L1..L3, then head 1): the
    # groups interleave in row order
    assert [b.space.rows for b in t.sweeps] == [(0, 3), (1, 4), (6,), (2, 5), (7,), (8,)]
    # a zero ablation reads only the target's senders
    (zs,) = [f for f in _sweeps(ir) if f.sweep.mode == "edge_zero"]
    assert len(zs.inputs) == len(zs.sweep.space.senders) == 4


def test_every_edge_is_a_few_nodes(models: Models) -> None:
    """`swap * -> *` (479 edges of the 4-layer model): a sweep per receiver group, the graph
    the size of the model's sites; the per-edge lowering has a Forward per edge."""
    checked, ir = _lower(models, "swap * -> * from clean into corrupt measure ld as e\n")
    n = count_rows(checked)["e"]
    assert ir.tables[0].n_rows() == n > 400
    assert len(_sweeps(ir)) == 2 * 4 + 1  # attention and MLP inputs per layer, the logits
    assert ir.g.number_of_nodes() < 2 * 21 + 2 * 9 + 10
    _, per_edge = _lower(models, "swap * -> * from clean into corrupt measure ld as e\n",
                         compact=False)
    assert per_edge.count(Forward) == n + 2


def test_passes_start_each_sweep_at_its_receivers(models: Models) -> None:
    checked, ir = _lower(models, "swap * -> * from clean into corrupt measure ld as e\n")
    opt = optimize(ir)
    verify(opt)
    for f in _sweeps(opt):
        r = f.sweep.space.receivers[0]
        start: Read = opt.node(f.start) if f.start else None  # type: ignore[assignment]
        if r.layer == 0:
            assert f.start is None  # nothing to skip, every position written
        elif r.kind == "logits.in":  # after the last block: only the norm and unembedding
            assert f.start_layer == 4 and start.site.kind == "logits.in"
        else:
            assert f.start_layer == r.layer and start.site.kind == "resid_pre"
        assert f.group is None and f.logit_positions is not None
        # dead_positions: the last block's MLP at the measured positions, unless a member
        # writes that MLP's input (or the logits)
        dead = r.kind != "logits.in" and (r.kind, r.layer) != ("mlp.in", 3)
        assert (f.live_from is not None and f.live_from <= 3) == dead
    text = emit_plan(checked, ir, opt, workers=2)
    assert "sweep" in ir_dot(opt) and "worker 1" in text


def _plan(checked, ir, memory: int | None = None):
    opt = optimize(ir)
    return schedule(opt, checked.model, run_shapes(checked), memory, naive_ir=ir)


def test_plan_counts_what_per_edge_counts(models: Models) -> None:
    """Without MLP-input receivers the compact and per-edge forwards start at the same layers
    with the same trims: the same experiments and passes, about the same FLOPs. With them,
    the compact plan computes the last block's MLP at the measured position for the head
    receivers there (per edge they are batched with that MLP's own input receivers)."""
    body = "swap * -> L*.H*.q, * -> logits from clean into corrupt measure ld as e\n"
    checked, ir = _lower(models, body)
    _, per = _lower(models, body, compact=False)
    a, b = _plan(checked, ir).optimized, _plan(checked, per).optimized
    assert (a.experiments, a.forwards) == (b.experiments, b.forwards)
    # (the per-edge batch counts one set of measured token ids per member, a sweep one set
    # for all its members, as the runtime unembeds them: a few % of unembedding apart)
    assert b.flops * 0.95 < a.flops <= b.flops
    body = "swap * -> * from clean into corrupt measure ld as e\n"
    checked, ir = _lower(models, body)
    _, per = _lower(models, body, compact=False)
    a, b = _plan(checked, ir).optimized, _plan(checked, per).optimized
    assert a.experiments == b.experiments == count_rows(checked)["e"] + 2
    assert a.flops < b.flops


def test_a_budget_cuts_sweeps_into_chunks(models: Models) -> None:
    checked, ir = _lower(models, "swap * -> * from clean into corrupt measure ld as e\n")
    free = _plan(checked, ir)
    budget = free.weights_bytes + 60 * 2**20
    tight = _plan(checked, ir, budget)
    assert not tight.over_budget and tight.optimized.peak_bytes <= budget
    assert tight.optimized.forwards > free.optimized.forwards
    assert tight.optimized.experiments == free.optimized.experiments
    steps = [s for s in tight.forward_steps() if s.sweep is not None]
    assert sum(s.sweep[1] - s.sweep[0] for s in steps) == count_rows(checked)["e"]
