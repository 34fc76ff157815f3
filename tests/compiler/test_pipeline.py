"""compiler/pipeline.optimize: the graph the passes return is verified, and a broken graph
is traced to the pass that broke it, also when a later pass fails on it, or to the input
when the lowering broke it."""

from __future__ import annotations

import pytest
from passes.passcases import lowered

from patchc.compiler.errors import PlanError
from patchc.compiler.ir import IRGraph, Read
from patchc.compiler.pipeline import PASSES, optimize

BODY = "swap L0.H0.z from clean into corrupt\n    measure ld\n"


def broken(ir: IRGraph) -> IRGraph:
    """Drops a Read that a Write still refers to."""
    ir = ir.copy()
    ir.g.remove_node(next(i for i, _ in ir.of_type(Read)))
    return ir


def crashes_on_missing_reads(ir: IRGraph) -> IRGraph:
    """Looks up every Write's inputs: a KeyError on the graph `broken` left."""
    for w in [ir.node(nid) for nid in ir.g.nodes if nid.startswith("w")]:
        for i in w.inputs:  # type: ignore[union-attr]
            ir.g.nodes[i]["node"]
    return ir


def test_a_broken_result_names_its_pass() -> None:
    with pytest.raises(PlanError, match="after pass test_pipeline.broken"):
        optimize(lowered(BODY), (PASSES[0], broken, PASSES[1]))


def test_a_pass_failing_on_an_earlier_pass_breakage_names_that_pass() -> None:
    with pytest.raises(PlanError, match="after pass test_pipeline.broken"):
        optimize(lowered(BODY), (broken, crashes_on_missing_reads))


def test_a_pass_failing_by_itself_raises_its_own_error() -> None:
    def fails(ir: IRGraph) -> IRGraph:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        optimize(lowered(BODY), (PASSES[0], fails))


def test_a_good_graph_is_verified_once(monkeypatch) -> None:
    """After the last pass, not before the first nor after each (verify is linear in the
    graph, as a pass is)."""
    import patchc.compiler.pipeline as pipeline

    calls: list[int] = []
    real = pipeline.verify
    monkeypatch.setattr(pipeline, "verify", lambda ir: calls.append(1) or real(ir))
    optimize(lowered(BODY))
    assert len(calls) == 1


def test_a_broken_input_is_named_as_it_is_not_after_a_pass() -> None:
    bad = broken(lowered(BODY))
    with pytest.raises(PlanError) as e:
        optimize(bad)
    assert e.value.code == "E503" and "after pass" not in e.value.message
    with pytest.raises(PlanError) as e:  # also when a pass fails on it first
        optimize(bad, (crashes_on_missing_reads,))
    assert e.value.code == "E503" and "after pass" not in e.value.message
