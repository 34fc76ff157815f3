"""Compact `compare` in the compiler (compiler/lower_compare.py): golden dump in
tests/fixtures/ir/compare_compact.txt (`PATCHC_UPDATE_GOLDEN=1` rewrites it); the graph's
size follows the site items and layers, not the experiments; the per-experiment lowering
stays where the compact forms do not apply; rows_of agrees with what is built; the passes,
verify, plan and JSON take it."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from checkmodels import Models, build  # noqa: E402

from patchc.compiler.check import check  # noqa: E402
from patchc.compiler.dump import dump_ir  # noqa: E402
from patchc.compiler.dump_plan import emit_plan  # noqa: E402
from patchc.compiler.ir import Estimate, Forward  # noqa: E402
from patchc.compiler.ir_json import ir_to_json  # noqa: E402
from patchc.compiler.ir_verify import verify  # noqa: E402
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
GOLDEN = """compare atp, ig(steps=2) against swap on L$l.resid_pre @ each, L$l.H*.z @ last,
        L$l.mlp.out from clean into corrupt where $l != 2
    measure ld normalized, logit(ioi.answer) as agree
"""


@pytest.fixture(scope="session")
def models() -> Models:
    return build()


def _lower(models: Models, body: str, compact: bool = True):
    checked = check(parse(HEAD + body, "case.patch", models.spec_dir()))
    return checked, lower(checked, compact=compact)


def test_golden_compact_compare_lowering(models: Models) -> None:
    checked, ir = _lower(models, GOLDEN)
    verify(ir)
    golden(ROOT / "tests" / "fixtures" / "ir" / "compare_compact.txt", dump_ir(ir))
    (table,) = ir.tables
    assert len(table.rows) == count_rows(checked)["agree"] == 3 * 2 * 2
    # resid_pre @ each and heads: one sweep Forward per kept layer (3); mlp.out, one member a
    # layer: a Forward per member; one Estimate per item, method and measure
    sweeps = [f for _, f in ir.of_type(Forward) if f.sweep is not None]
    assert len(sweeps) == 3 + 3 and ir.count(Estimate) == 3 * 2 * 2
    assert all(p.members is not None for p in table.pairs)
    _, per_exp = _lower(models, GOLDEN, compact=False)
    (old,) = per_exp.tables
    assert old.rows == table.rows and all(p.members is None for p in old.pairs)
    # every experiment paired once per method and measure, in both lowerings
    assert sum(p.members[1] - p.members[0] for p in table.pairs) == len(old.pairs)


def test_graph_follows_layers_not_experiments(models: Models) -> None:
    """Every (layer, position) and (head, position): the graph is a few nodes per layer."""
    body = ("compare atp, relp against swap on L*.resid_pre @ each, L*.H*.z @ each "
            "from clean into corrupt measure ld as c\n")
    checked, ir = _lower(models, body)
    _, per_exp = _lower(models, body, compact=False)
    experiments = sum(1 for _, f in per_exp.of_type(Forward) if f.experiment is not None)
    assert experiments == (4 + 16) * 14  # 4 layers, 16 heads, 14 positions
    assert ir.g.number_of_nodes() < 100
    opt = optimize(ir)
    verify(opt)
    assert f"for {experiments + 2} forwards" in emit_plan(checked, ir, opt)  # + clean, corrupt
    doc = json.loads(ir_to_json(opt))
    assert sum(p["members"][1] - p["members"][0] for t in doc["tables"]
               for p in t["pairs"]) == 2 * experiments


def test_per_experiment_where_compact_forms_do_not_apply(models: Models) -> None:
    """An `all(...)` group, or a `kl` metric: one Estimate and Forward per experiment."""
    for body in ("compare atp against swap on all(L0.mlp.out, L1.mlp.out) "
                 "from clean into corrupt measure ld as c\n",
                 "compare atp against swap on L*.resid_pre @ each from clean into corrupt "
                 "measure kl(clean) as c\n"):
        _, ir = _lower(models, body)
        assert all(p.members is None for t in ir.tables for p in t.pairs)
        assert all(e.space is None for _, e in ir.of_type(Estimate))
