"""The IR dump (`patchc compile --emit ir`) and the IR's JSON form.

Golden files live in tests/fixtures/ir/<spec>.txt: dump_ir of every spec in
examples/language/, lowered through patchc.api.compile. Regenerate them after an intended
change with `PATCHC_UPDATE_GOLDEN=1 pytest tests/compiler/test_dump.py` and review the diff.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from patchc.api import compile as compile_spec  # noqa: E402
from patchc.compiler import ast as A  # noqa: E402
from patchc.compiler.dump import dump_ir, summary  # noqa: E402
from patchc.compiler.errors import NO_SPAN, Span  # noqa: E402
from patchc.compiler.ir import (  # noqa: E402
    Backward,
    Estimate,
    Forward,
    IRGraph,
    Metric,
    Pair,
    Positions,
    Read,
    Row,
    Site,
    Table,
    Vector,
    Write,
)
from patchc.compiler.ir_verify import verify  # noqa: E402
from patchc.compiler.ir_json import ir_to_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "ir"
EXAMPLES = sorted((ROOT / "examples" / "language").glob("*.patch"))
UPDATE = os.environ.get("PATCHC_UPDATE_GOLDEN") == "1"


def golden(path: Path, actual: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, "utf-8")
        return
    assert path.exists(), f"missing golden file {path}; run with PATCHC_UPDATE_GOLDEN=1"
    assert actual == path.read_text("utf-8"), f"{path} differs; PATCHC_UPDATE_GOLDEN=1 rewrites"


def test_examples_found():
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_golden_ir(path: Path):
    golden(FIXTURES / f"{path.stem}.txt", dump_ir(compile_spec(path).ir))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_dump_is_deterministic_and_complete(path: Path):
    ir = compile_spec(path).ir
    text = dump_ir(ir)
    assert dump_ir(compile_spec(path).ir) == text == dump_ir(ir.copy())
    # Every node is on exactly one line, defined before any line that uses it.
    defined = [line.split(" = ", 1)[0] for line in text.splitlines() if " = " in line
               and not line.startswith(("table ", "  "))]
    assert sorted(defined) == sorted(ir.g.nodes)
    order = {nid: i for i, nid in enumerate(defined)}
    assert all(order[a] < order[b] for a, b in ir.g.edges)
    assert text.rstrip("\n").splitlines()[-1] == summary(ir)


def test_dump_does_not_depend_on_hash_seed():
    # Set iteration order changes with PYTHONHASHSEED; the dump must not.
    code = ("import sys; from patchc.api import compile; from patchc.compiler.dump import dump_ir;"
            " sys.stdout.write(dump_ir(compile(sys.argv[1]).ir))")
    spec = str(ROOT / "examples" / "language" / "circuit_ablation.patch")
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"}
        run = subprocess.run([sys.executable, "-c", code, spec], capture_output=True,
                             text=True, env=env, check=True)
        outs.add(run.stdout)
    assert len(outs) == 1


# ---- every node kind and table shape, on a hand-built graph ----------------------------------


def _every_kind() -> IRGraph:
    ir = IRGraph()
    f0 = ir.add(Forward("clean"))
    f1 = ir.add(Forward("noisy", samples=10))
    r0 = ir.add(Read(f0, Site("z", 3, 2), Positions("all")), [f0])
    r1 = ir.add(Read(f0, Site("embed"), Positions("all"), stat="std"), [f0])
    r2 = ir.add(Read(f1, Site("mlp.post", 1, features=(5, 6)), Positions("range", 2, 4)), [f1])
    love = A.VBin("-", A.VRef("a", NO_SPAN), A.VRef("b", NO_SPAN), NO_SPAN)
    v0 = ir.add(Vector("love", love, 48, ()))
    w0 = ir.add(Write(Site("z", 3, 2), Positions("all"), "replace", (r0,)), [r0])
    w1 = ir.add(Write(Site("embed"), Positions("column", column=("facts", "pos")), "noise",
                      (r1,), 3.0, 1), [r1])
    w2 = ir.add(Write(Site("resid_post", 6), Positions("last"), "add", (v0,), 0.5), [v0])
    w3 = ir.add(Write(Site("mlp.out", 0), Positions("index", 3), "zero"))
    f2 = ir.add(Forward("noisy", (w0, w1, w2, w3), 0, 10), [w0, w1, w2, w3])
    ld = A.MBin("-", A.MCall("logit", A.ColumnRef("d", "a", NO_SPAN), NO_SPAN),
                A.MCall("logit", A.ColumnRef("d", "b", NO_SPAN), NO_SPAN), NO_SPAN)
    m0 = ir.add(Metric(f0, "ld", ld), [f0])
    m1 = ir.add(Metric(f1, "ld", ld), [f1])
    m2 = ir.add(Metric(f2, "ld", ld), [f2])
    m3 = ir.add(Metric(f2, "kl(clean) * 2", A.MBin("*", A.MKL("clean", NO_SPAN),
                                                    A.MNum(2.0, NO_SPAN), NO_SPAN),
                       Positions("last"), f0), [f2, f0])
    b0 = ir.add(Backward(m1, (r2,), "lrp"), [m1, r2])
    e0 = ir.add(Estimate("ig", Site("mlp.post", 1, features=(5, 6)), Positions("range", 2, 4),
                         (r0, r2, b0), steps=16), [r0, r2, b0])
    ir.tables.append(Table("t", "swap", ("layer", "site", "ld", "kl(clean) * 2"), (
        Row((("layer", 3), ("site", "L3.H2.z")), (("ld", m2), ("kl(clean) * 2", m3)),
            (("ld", (m1, m0)),)),
        Row((), (("ld", m2),), (("ld", (m1, None)),)),
    ), Span(7, 1, 8, 5)))
    ir.tables.append(Table("cmp", "compare", ("site_kind", "method", "pearson", "spearman"),
                           (Row((("site_kind", "mlp.post"), ("method", "ig")), ()),),
                           pairs=(Pair((("site_kind", "mlp.post"), ("method", "ig")), e0, m2,
                                       (m1, m0)),
                                  Pair((("site_kind", "mlp.post"),), e0, m2))))
    verify(ir)
    return ir


def test_dump_every_kind():
    assert dump_ir(_every_kind()).splitlines() == [
        # generation 0, by kind: nothing feeds these
        "f0 = forward clean",
        "f1 = forward noisy samples=10",
        "",
        "v0 = vector love d=48 := a - b",
        "",
        "w3 = zero L0.mlp.out @ 3",
        "",
        # generation 1
        "r0 = read L3.H2.z @ * <- f0",
        "r1 = read std embed @ * <- f0",
        "r2 = read L1.mlp.post[5] @ 2..4 <- f1",
        "",
        "w2 = add L6.resid_post @ last <- v0 scale=0.5",
        "",
        "m0 = metric ld @ last <- f0 := logit(d.a) - logit(d.b)",
        "m1 = metric ld @ last <- f1 := logit(d.a) - logit(d.b)",
        "",
        "w0 = replace L3.H2.z @ * <- r0",
        "w1 = noise embed @ facts.pos <- r1 scale=3 seed=1",
        "",
        "b0 = backward lrp <- m1 wrt r2",
        "",
        "f2 = forward noisy exp=0 samples=10 <- w0, w1, w2, w3",
        "",
        "e0 = ig L1.mlp.post[5] @ 2..4 steps=16 <- r0, r2, b0",
        "",
        "m2 = metric ld @ last <- f2 := logit(d.a) - logit(d.b)",
        'm3 = metric "kl(clean) * 2" @ last <- f2 ref f0 := kl(clean) * 2',
        "",
        "table t = swap line 7: 2 rows, columns layer, site, ld, kl(clean) * 2",
        '  layer=3 site="L3.H2.z" -> ld=m2, kl(clean) * 2=m3 normalize ld=(m1, m0)',
        "  () -> ld=m2 normalize ld=(m1, -)",
        "",
        "table cmp = compare line 1: 1 row, columns site_kind, method, pearson, spearman",
        '  site_kind="mlp.post" method="ig"',
        '  pair site_kind="mlp.post" method="ig": e0 ~ m2 normalize (m1, m0)',
        '  pair site_kind="mlp.post": e0 ~ m2',
        "",
        "3 forwards, 3 reads, 1 vector, 4 writes, 4 metrics, 1 backward, 1 estimate; "
        "2 tables, 3 rows",
    ]


def test_dump_empty_graph():
    assert dump_ir(IRGraph()) == (
        "\n0 forwards, 0 reads, 0 vectors, 0 writes, 0 metrics, 0 backwards, 0 estimates; "
        "0 tables, 0 rows\n")


# ---- the JSON form -------------------------------------------------------------------------------


def test_json_has_compare_pairs_and_every_node():
    ir = _every_kind()
    data = json.loads(ir_to_json(ir))
    assert sorted(n["id"] for n in data["nodes"]) == sorted(ir.g.nodes)
    assert sorted(map(tuple, data["edges"])) == sorted(ir.g.edges)
    cmp = {t["name"]: t for t in data["tables"]}["cmp"]
    assert cmp["pairs"] == [
        {"key": {"site_kind": "mlp.post", "method": "ig"}, "estimate": "e0", "metric": "m2",
         "normalize": ["m1", "m0"], "members": None},
        {"key": {"site_kind": "mlp.post"}, "estimate": "e0", "metric": "m2",
         "normalize": None, "members": None},  # (a compact compare's: [start, stop])
    ]
    t = {t["name"]: t for t in data["tables"]}["t"]
    assert t["pairs"] == [] and t["rows"][1]["normalize"] == {"ld": ["m1", None]}
    assert "span" not in json.dumps(data)


def test_json_of_compare_example_lists_its_pairs():
    ir = compile_spec(ROOT / "examples" / "language" / "attribution.patch").ir
    tables = {t["name"]: t for t in json.loads(ir_to_json(ir))["tables"]}
    (cmp,) = [t for t in ir.tables if t.op == "compare"]
    assert len(tables[cmp.name]["pairs"]) == len(cmp.pairs) > 0
