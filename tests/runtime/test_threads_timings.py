"""`set threads` / `--threads`: torch's CPU threads during a run, and the default choice; the
run's timings in the manifest (model passes vs overhead), per-table seconds, and the overhead
estimate of `compile --emit plan`."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import family
from ops_common import HEAD

from patchc.compiler.errors import PatchcError
from patchc.runtime.threads import default_threads

BODY = HEAD + "swap L1.resid_post @ last from clean into corrupt\n    measure ld\n"


@pytest.mark.parametrize("d_model, cores, load, want", [
    (128, 8, 0.0, 1),     # small matrices: one thread
    (4096, 16, 0.0, 8),   # wide model on an idle machine: one per 512 dimensions
    (4096, 4, 0.0, 4),    # never more than the cores
    (4096, 2, 2.0, 1),    # a loaded 2-core machine: the cores others leave free, at least 1
    (4096, 8, 3.4, 5),
])
def test_default_threads(d_model, cores, load, want):
    assert default_threads(d_model, cores=cores, load=load) == want


def test_set_threads_is_used_and_restored(models_dir):
    fam = family("gpt2", models_dir)
    seen: list[int] = []
    handle = fam.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        res = fam.run("set threads = 2\n" + BODY)
    finally:
        handle.remove()
    assert set(seen) == {2} and res.manifest["threads"] == 2
    assert torch.get_num_threads() == before
    res = fam.run(BODY, threads=3)  # the API's override (as --threads / --set threads=3)
    assert res.manifest["threads"] == 3


def test_the_default_is_recorded(models_dir):
    res = family("gpt2", models_dir).run(BODY)
    assert res.manifest["threads"] == default_threads(32)
    assert res.manifest["options"]["threads"] is None


def test_threads_below_one_is_a_check_error(models_dir):
    with pytest.raises(PatchcError, match="threads must be from 1 to 1024"):
        family("gpt2", models_dir).run("set threads = 0\n" + BODY)


def test_the_manifest_times_model_passes_and_overhead(models_dir):
    fam = family("gpt2", models_dir)
    body = BODY + "swap L*.H*.z @ last from clean into corrupt\n    measure ld\n    as heads\n"
    res = fam.run(body)
    t = res.manifest["timings"]
    assert t["model"] > 0 and t["overhead"] > 0 and 0 < t["overhead_share"] < 1
    assert abs(t["overhead"] - (t["plan"] + t["execute"] - t["model"] + t["assemble"])) < 1e-3
    assert t["total"] >= t["load"] + t["plan"] + t["execute"] - 1e-3
    # Each node's seconds count once, toward the first table that needs it.
    tables = sum(v["seconds"] for v in res.manifest["tables"].values())
    assert tables <= t["execute"] + 1e-3


def test_table_seconds_charge_each_node_once():
    from patchc.compiler.ir import IRGraph, Row, Table
    from patchc.execution import _table_seconds

    ir = IRGraph()
    for n in ("f1", "m1", "m2"):
        ir.g.add_node(n)
    ir.g.add_edges_from([("f1", "m1"), ("f1", "m2")])
    ir.g.graph["tables"] = [Table("a", "swap", ("x",), (Row((), (("x", "m1"),)),)),
                            Table("b", "swap", ("x",), (Row((), (("x", "m2"),)),))]
    got = _table_seconds(ir, {"f1": 2.0, "m1": 0.5, "m2": 0.25})
    assert got == {"a": 2.5, "b": 0.25}


def test_emit_plan_estimates_the_overhead(models_dir):
    import patchc
    from patchc.compiler.costs import ASSUMED_FLOPS_PER_SECOND
    from patchc.compiler.dump_plan import emit_plan

    fam = family("gpt2", models_dir)
    prog = patchc.compile(fam.spec(BODY))
    text = emit_plan(prog.checked, prog.ir, prog.optimized)
    assert "overhead: ~" in text and f"for {prog.ir.g.number_of_nodes()} graph nodes" in text
    rate = re.escape(f"{ASSUMED_FLOPS_PER_SECOND:.0e}")
    assert re.search(rf"model passes .*: ~\d+\.\d% of the run at {rate} FLOP/s", text), text
