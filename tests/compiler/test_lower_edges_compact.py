"""Compact edge attribution in the compiler (compiler/ir_edges.py): an `attribute EDGES ...`
lowers to one Estimate per measure and position run whose EdgeSet stands for every edge
(golden dump in tests/fixtures/edges/; `PATCHC_UPDATE_GOLDEN=1` rewrites it), whatever the
number of edges; the passes, verify, the plan, shards, the DOT and JSON forms take it."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from checkmodels import Models, build  # noqa: E402

from patchc.compiler.check import check  # noqa: E402
from patchc.compiler.dump import dump_ir  # noqa: E402
from patchc.compiler.dump_plan import emit_plan, ir_dot  # noqa: E402
from patchc.compiler.edges import EdgeRef  # noqa: E402
from patchc.compiler.ir import Estimate, Site  # noqa: E402
from patchc.compiler.ir_verify import verify  # noqa: E402
from patchc.compiler.ir_edges import edge_set  # noqa: E402
from patchc.compiler.ir_json import ir_to_json  # noqa: E402
from patchc.compiler.lower import count_rows, lower  # noqa: E402
from patchc.compiler.parse import parse  # noqa: E402
from patchc.compiler.pipeline import optimize  # noqa: E402

from test_dump import ROOT, golden  # noqa: E402

HEAD = '''model "./gpt2"
data ioi = "data/ioi.jsonl"
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
'''
GOLDEN = """attribute L$l.H$h.out -> L2.H$h.q, all(embed -> L1.mlp.in, L0.mlp.out -> L2.H1.k) @ last
    from clean into corrupt using eap_ig(steps=2) measure ld as t where $l >= 1
"""


@pytest.fixture(scope="session")
def models() -> Models:
    return build()


def _lower(models: Models, body: str, compact: bool = True):
    checked = check(parse(HEAD + body, "case.patch", models.spec_dir()))
    return checked, lower(checked, compact=compact)


def test_golden_compact_edge_lowering(models: Models) -> None:
    _, ir = _lower(models, GOLDEN)
    verify(ir)
    golden(ROOT / "tests" / "fixtures" / "edges" / "attribute_compact.txt", dump_ir(ir))
    # Two position runs (all positions; the group @ last): one Estimate each.
    est = [e for _, e in ir.of_type(Estimate)]
    assert [e.edges.count for e in est] == [4, 1]
    assert est[1].edges.pairs == ((0, 0), (1, 1)) and est[1].edges.ends == (2,)


def test_every_edge_is_a_few_nodes(models: Models) -> None:
    """`* -> *` (479 edges of the 4-layer model): one Estimate per measure, whatever the
    number of edges, and the graph stays the size of the model's sites."""
    checked, ir = _lower(models, "attribute * -> * from clean into corrupt using eap "
                                 "measure ld, logit(ioi.answer) as e\n")
    (table,) = ir.tables
    n = count_rows(checked)["e"]
    assert table.n_rows() == n > 400 and not table.rows
    assert ir.count(Estimate) == 2
    # 21 senders read on both runs, 53 receivers on B; a few forwards, metrics (the
    # unpatched baselines of both measures on A among them), backwards
    assert ir.g.number_of_nodes() < 2 * 21 + 53 + 12
    _, per_edge = _lower(models, "attribute * -> * from clean into corrupt using eap "
                                 "measure ld, logit(ioi.answer) as e\n", compact=False)
    assert per_edge.count(Estimate) == 2 * n


def test_passes_plan_shards_dot_and_json_take_it(models: Models) -> None:
    checked, ir = _lower(models, "attribute * -> * from clean into corrupt using relp "
                                 "measure ld as e\n")
    opt = optimize(ir)
    verify(opt)
    assert opt.count(Estimate) == 1
    (est,) = [e for _, e in opt.of_type(Estimate)]
    assert est.edges == next(e for _, e in ir.of_type(Estimate)).edges
    plan = emit_plan(checked, ir, opt, workers=2)
    assert "estimate" in plan and "worker 1" in plan
    n = count_rows(checked)["e"]
    assert f"{n} edges" in ir_dot(opt)
    data = json.loads(ir_to_json(opt))
    (node,) = [x for x in data["nodes"] if x["type"] == "Estimate"]
    assert len(node["fields"]["edges"]["sender_of"]) == n
    (sweep,) = data["tables"][0]["sweeps"]
    assert sweep["count"] == n and sweep["values"] == {"ld": node["id"]}


def test_edge_set_members_and_keys() -> None:
    a, b, c = Site("embed"), Site("out", 0, 1), Site("q.in", 1, 0)
    d = Site("logits.in", 2)
    es = edge_set([((("sender", "embed"), ("receiver", "L1.H0.q")), (EdgeRef(a, c),)),
                   ((("site", "g"),), (EdgeRef(a, d), EdgeRef(b, d))),
                   ((("sender", "L0.H1.out"), ("receiver", "logits")), (EdgeRef(b, d),))])
    assert es.senders == (a, b) and es.receivers == (c, d)
    assert [es.member(j) for j in range(3)] == [((0, 0),), ((0, 1), (1, 1)), ((1, 1),)]
    assert es.member_of() == [0, 1, 1, 2]
    cols = es.key_columns()
    assert list(cols) == ["sender", "receiver", "site"]
    assert list(cols["sender"]) == ["embed", None, "L0.H1.out"]
    assert es.pos_keys == (None,)
    assert es.row_keys()[1] == (("site", "g"),) and es.n_edges == 4


def test_eap_ig_costs_its_steps(models: Models) -> None:
    """The plan counts eap_ig's interpolation steps: each a forward and backward of B (check's
    time estimate and the manifest's counts come from it)."""
    from patchc.compiler.schedule import run_shapes, schedule

    def plan(method: str):
        checked, ir = _lower(models, f"attribute * -> * from clean into corrupt using {method} "
                                     "measure ld as e\n")
        return schedule(optimize(ir), checked.model, run_shapes(checked), None).optimized

    eap, ig = plan("eap"), plan("eap_ig(steps=20)")
    assert ig.backwards == eap.backwards + 20
    # 20 forward+backward passes of B (3 forwards' FLOPs each) against eap's ~5 forwards
    assert ig.flops > 8 * eap.flops
