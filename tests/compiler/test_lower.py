"""lower.py: checked spec -> unoptimized IR. Node counts, row keys, normalized refs, sweeps,
groups, backpatch pairs, steering, attribution, verify(), determinism, experiment counts."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import dataclasses  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import transformers as T  # noqa: E402

from patchc.compiler import ast as A  # noqa: E402
from patchc.compiler.checked import CheckedSpec, DataTable, Options, RunInfo  # noqa: E402
from patchc.compiler.errors import PlanError  # noqa: E402
from patchc.compiler.ir import (  # noqa: E402
    Backward,
    Estimate,
    Forward,
    IRGraph,
    Metric,
    Read,
    Site,
    Vector,
    Write,
)
from patchc.compiler.ir_verify import verify  # noqa: E402
from patchc.compiler.lower import lower  # noqa: E402
from patchc.compiler.modelspec import spec_from_config  # noqa: E402
from patchc.compiler.parse import parse  # noqa: E402
from patchc.compiler.pipeline import PASSES, experiment_counts, optimize  # noqa: E402

try:  # prefer the real checker once it exists
    from patchc.compiler.check import check  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - until check.py lands
    check = None

ROOT = Path(__file__).resolve().parents[2]
MODEL = spec_from_config(T.GPT2Config(n_layer=4, n_head=4, n_embd=64).to_dict())
# The examples address layers up to 10 (GPT-2 small's shape, at a tiny width).
MODEL12 = spec_from_config(T.GPT2Config(n_layer=12, n_head=12, n_embd=96).to_dict())
NL, NH, NTOK = 4, 4, 5

HEADER = """
model "gpt2"
data ioi = [{"clean": "a b c d e", "corrupt": "a b x d e", "answer": " e", "distractor": " d",
             "pos": 2},
            {"clean": "f g h i j", "corrupt": "f g y i j", "answer": " j", "distractor": " i",
             "pos": 1}]
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
"""


def _texts(run: A.RunDecl, data: dict[str, DataTable]) -> tuple[str, ...]:
    if isinstance(run.text, A.ColumnRef):
        table = data.get(run.text.data)
        if table is None or not table.rows:  # a data file the tests do not read
            return ("x", "y")
        return tuple(str(r.get(run.text.column, "")) for r in table.rows)
    return run.text.texts


def checked(src: str, ntok: int = NTOK, options: Options | None = None,
            model=MODEL, use_check: bool = True, base_dir: str = ".") -> CheckedSpec:
    """A CheckedSpec for `src` against the 4-layer, 4-head GPT-2 shape; every run's prompts
    have `ntok` tokens (so that `@ each` sweeps are predictable). With check.py it checks
    `src` first (no tokenizer); `use_check=False` builds it by hand, for what check rejects."""
    spec = parse(src, "<spec>", base_dir)
    data = {s.name.value: DataTable(s.name.value, tuple(s.rows[0]) if s.rows else (),
                                    s.rows or ())
            for s in spec.statements if isinstance(s, A.DataDecl)}
    runs = {}
    for s in spec.statements:
        if isinstance(s, A.RunDecl):
            texts = _texts(s, data)
            runs[s.name.value] = RunInfo(s.name.value, texts, (ntok,) * len(texts))
    if check is not None and use_check:
        c = check(spec, model, tokenizer=None)
        return dataclasses.replace(c, runs=runs, options=options or c.options)
    return CheckedSpec(
        spec, model, options or Options(), data, runs,
        {s.name.value: s for s in spec.statements if isinstance(s, A.MetricDecl)},
        {s.name.value: s for s in spec.statements if isinstance(s, A.VectorDecl)},
    )


def low(body: str, **kw: object) -> IRGraph:
    ir = lower(checked(HEADER + body, **kw), compact=False)  # test_lower_sweep.py: compact
    verify(ir)
    return ir


def forwards(ir: IRGraph, experiment: bool) -> list[tuple[str, Forward]]:
    return [(i, f) for i, f in ir.of_type(Forward) if (f.experiment is not None) == experiment]


def base_of(ir: IRGraph, run: str) -> str:
    (fid,) = [i for i, f in forwards(ir, False) if f.run == run and f.writes == ()
              or f.run == run and f.samples > 1]
    return fid


# ---------------------------------------------------------------------------------------------
# §1: the head sweep


def test_head_sweep_forwards_rows_and_normalized_refs():
    ir = low("swap L*.H*.z from clean into corrupt\n    measure ld normalized\n    as heads\n")
    assert len(forwards(ir, True)) == NL * NH
    assert len(forwards(ir, False)) == 2
    (t,) = ir.tables
    assert t.name == "heads" and t.op == "swap"
    assert t.columns == ("layer", "head", "ld")
    assert [dict(r.key) for r in t.rows] == [{"layer": la, "head": h}
                                            for la in range(NL) for h in range(NH)]
    clean, corrupt = base_of(ir, "clean"), base_of(ir, "corrupt")
    for row in t.rows:
        (col, mid), = row.values
        m = ir.node(mid)
        assert col == "ld" and isinstance(m, Metric) and m.name == "ld"
        f = ir.node(m.forward)
        assert f.run == "corrupt" and f.experiment is not None
        (w,) = [ir.node(x) for x in f.writes]
        key = dict(row.key)
        assert w.mode == "replace" and w.site == Site("z", key["layer"], key["head"])
        r = ir.node(w.inputs[0])
        assert isinstance(r, Read) and r.forward == clean and r.site == w.site
        (col, (target, source)), = row.normalize
        assert ir.node(target).forward == corrupt and ir.node(source).forward == clean
    # one baseline metric per base forward, shared by every row
    assert len({r.normalize for r in t.rows}) == 1


def test_without_normalized_the_target_base_forward_only_measures_the_unpatched_baseline():
    ir = low("swap L*.H*.z from clean into corrupt measure ld\n")
    assert [f.run for _, f in forwards(ir, False)] == ["clean", "corrupt"]
    (t,) = ir.tables
    assert t.name == "op_10"
    # ld on both runs as they are (passes/drop_baselines.py drops one that costs a pass)
    ((col, (target, source)),) = t.unpatched
    assert col == "ld" and all(r.normalize == () for r in t.rows)
    assert ir.node(target).forward == base_of(ir, "corrupt")
    assert ir.node(source).forward == base_of(ir, "clean")


# ---------------------------------------------------------------------------------------------
# ablate, normalized without a source, groups


def test_ablate_zero_normalizes_by_target_only():
    ir = low("ablate L*.mlp.out in clean measure ld normalized as mlps\n")
    (t,) = ir.tables
    assert [dict(r.key) for r in t.rows] == [{"layer": la} for la in range(NL)]
    for row in t.rows:
        (_, (target, source)), = row.normalize
        assert source is None and ir.node(ir.node(target).forward).run == "clean"
        f = ir.node(ir.node(row.values[0][1]).forward)
        assert [ir.node(w).mode for w in f.writes] == ["zero"]


def test_group_is_one_experiment():
    ir = low("ablate all(L1.H2.z, L2.H0.z, L3.H3.z) in clean with mean(corrupt) "
             "measure ld normalized as circuit\n")
    (t,) = ir.tables
    assert len(t.rows) == 1 and t.rows[0].key == ()
    ((_, f),) = forwards(ir, True)
    writes = [ir.node(w) for w in f.writes]
    assert [w.mode for w in writes] == ["mean"] * 3
    assert [w.site for w in writes] == [Site("z", 1, 2), Site("z", 2, 0), Site("z", 3, 3)]
    corrupt = base_of(ir, "corrupt")
    assert all(ir.node(w.inputs[0]).forward == corrupt for w in writes)
    (_, (_, source)), = t.rows[0].normalize
    assert ir.node(source).forward == corrupt


def test_resample_uses_the_seed_option():
    ir = lower(checked(HEADER + "ablate L0.mlp.out in clean with resample(corrupt) measure ld\n",
                       options=Options(seed=7)), compact=False)
    (w,) = [w for _, w in ir.of_type(Write)]
    assert w.mode == "resample" and w.seed == 7


def test_several_site_items_get_a_site_column():
    ir = low("ablate L0.mlp.out, L1..2.attn.out in clean measure ld\n")
    keys = [r.key for r in ir.tables[0].rows]
    assert keys == [(("site", "L0.mlp.out"),), (("site", "L1..2.attn.out"), ("layer", 1)),
                    (("site", "L1..2.attn.out"), ("layer", 2))]
    assert ir.tables[0].columns == ("site", "layer", "ld")


# ---------------------------------------------------------------------------------------------
# positions, noise, trace


TRACE = """
run noisy = ioi.clean with noise(embed @ ioi.pos, std=3*std(embed), samples=10, seed=1)
trace L$l.resid_post @ each from clean into noisy
    measure prob(ioi.answer)
"""


def test_each_sweeps_positions_and_noise_is_baked():
    ir = low(TRACE)
    (t,) = ir.tables
    assert t.op == "trace" and t.columns == ("l", "pos", "prob(ioi.answer)")
    assert [dict(r.key) for r in t.rows] == [{"l": la, "pos": p}
                                            for la in range(NL) for p in range(NTOK)]
    exp = forwards(ir, True)
    assert len(exp) == NL * NTOK
    noise = [(i, w) for i, w in ir.of_type(Write) if w.mode == "noise"]
    assert len(noise) == 1  # baked once, shared by the base and every experiment forward
    nid, w = noise[0]
    assert w.scale == 3.0 and w.seed == 1 and w.pos.kind == "column"
    std = ir.node(w.inputs[0])
    assert std.stat == "std" and std.site == Site("embed")
    bare = ir.node(std.forward)
    assert bare.run == "noisy" and bare.writes == () and bare.samples == 1
    for _, f in exp:
        assert f.run == "noisy" and f.samples == 10 and f.writes[0] == nid
        w2 = ir.node(f.writes[1])
        assert w2.pos.kind == "index"
    assert base_of(ir, "clean")


def test_metric_position_from_the_declaration():
    ir = low("metric early = logit(ioi.answer) @ 2\nablate L0.mlp.out in clean measure early\n")
    # the experiment's, and the unpatched baseline's on clean's base forward
    assert len(list(ir.of_type(Metric))) == 2
    for _, m in ir.of_type(Metric):
        assert (m.pos.kind, m.pos.lo, m.name) == ("index", 2, "early")


def test_kl_metric_references_the_runs_base_forward():
    ir = low("ablate L0.mlp.out in clean measure kl(corrupt)\n")
    (_, m), = [(i, m) for i, m in ir.of_type(Metric)
               if ir.node(m.forward).experiment is not None]  # (not clean's unpatched one)
    assert m.reference == base_of(ir, "corrupt") and m.name == "kl(corrupt)"
    assert ir.tables[0].columns == ("kl(corrupt)",)


# ---------------------------------------------------------------------------------------------
# backpatch, steer, scale, subspaces, where


def test_backpatch_where_gives_n_choose_2_pairs():
    ir = low("run q = ioi.clean\nbackpatch L$j.resid_post -> L$i.resid_post @ last in q\n"
             "    where $j > $i\n    measure generate(10) contains ioi.answer\n")
    (t,) = ir.tables
    assert len(t.rows) == NL * (NL - 1) // 2
    q = base_of(ir, "q")
    for row in t.rows:
        key = dict(row.key)
        assert key["j"] > key["i"]
        f = ir.node(ir.node(row.values[0][1]).forward)
        (w,) = [ir.node(x) for x in f.writes]
        r = ir.node(w.inputs[0])
        assert w.site == Site("resid_post", key["i"]) and w.pos.kind == "last"
        assert r.site == Site("resid_post", key["j"]) and r.forward == q
        assert r.pos.kind == "last"  # the trailing @ applies to both sides


def test_backpatch_joins_shared_columns():
    ir = low("backpatch L$l.resid_post @ each -> L$l.resid_pre in clean from corrupt "
             "measure ld normalized\n")
    rows = ir.tables[0].rows
    assert len(rows) == NL * NTOK
    (_, (_, source)), = rows[0].normalize
    assert ir.node(ir.node(source).forward).run == "corrupt"


STEER = """
run pos = ["I love this", "What a delight"]
run neg = ["I hate this", "What a disaster"]
run neutral = ["I think this movie is"]
vector love = mean(pos.L2.resid_post @ last) - mean(neg.L2.resid_post @ last)
steer L2.resid_post in neutral by {1, 4, 8} * love
    measure logprob(" great") normalized
"""


def test_steer_sweeps_scales_with_one_vector():
    ir = low(STEER)
    (t,) = ir.tables
    assert [r.key for r in t.rows] == [(("scale", 1.0),), (("scale", 4.0),), (("scale", 8.0),)]
    ((vid, v),) = list(ir.of_type(Vector))
    assert v.name == "love" and v.dim == 64
    assert [ir.node(ir.node(r).forward).run for r in v.inputs] == ["pos", "neg"]
    writes = [w for _, w in ir.of_type(Write)]
    assert [(w.mode, w.scale, w.inputs) for w in writes] == [("add", s, (vid,)) for s in
                                                             (1.0, 4.0, 8.0)]
    (_, (_, source)), = t.rows[0].normalize
    assert source is None


def test_scale_sweep_and_subspace_swap():
    ir = low("vector v = mean(clean.L1.resid_post @ last)\n"
             "scale L0..1.mlp.out in clean by {0, 2} measure ld\n"
             "swap L1.resid_post[v] @ last from clean into corrupt measure ld\n")
    scale, swap = ir.tables
    assert [dict(r.key) for r in scale.rows] == [{"layer": la, "scale": s}
                                                for la in (0, 1) for s in (0.0, 2.0)]
    (w,) = [w for _, w in ir.of_type(Write) if w.mode == "project"]
    assert isinstance(ir.node(w.inputs[0]), Read) and isinstance(ir.node(w.inputs[1]), Vector)


def test_where_filters_a_swap_sweep():
    ir = low("swap L$l.H$h.z from clean into corrupt where $l >= 2 and $h != $l measure ld\n")
    keys = [dict(r.key) for r in ir.tables[0].rows]
    assert keys == [{"l": la, "h": h} for la in (2, 3) for h in range(NH) if h != la]


def test_where_on_an_unknown_column_is_an_error():
    src = HEADER + "swap L$l.H*.z from clean into corrupt where $k > 1 measure ld\n"
    with pytest.raises(PlanError, match=r"\$k"):  # check.py says so first (E325)
        lower(checked(src, use_check=False))


def test_freeze_ln_reads_every_scale_of_the_source():
    ir = low("run frozen = ioi.corrupt with freeze ln from clean\n"
             "dla L*.attn.out in frozen measure ld\n")
    writes = [w for _, w in ir.of_type(Write)]
    assert len(writes) == 2 * NL + 1 and {w.mode for w in writes} == {"freeze_ln"}
    clean = base_of(ir, "clean")
    assert all(ir.node(w.inputs[0]).forward == clean for w in writes)


# ---------------------------------------------------------------------------------------------
# attribute, compare, dla


def test_attribute_builds_one_backward_per_metric_and_rules():
    ir = low("metric p = prob(ioi.answer)\n"
             "attribute L*.mlp.out @ each from clean into corrupt using relp "
             "measure ld normalized, p as relp_mlp\n")
    backs = [b for _, b in ir.of_type(Backward)]
    assert len(backs) == 2 and {b.rules for b in backs} == {"lrp"}
    corrupt, clean = base_of(ir, "corrupt"), base_of(ir, "clean")
    assert all(ir.node(b.metric).forward == corrupt for b in backs)
    assert all(len(b.wrt) == NL * NTOK for b in backs)
    assert not forwards(ir, True)  # 2 forwards + backward: no experiment forwards
    (t,) = ir.tables
    assert t.columns == ("layer", "pos", "ld", "p") and len(t.rows) == NL * NTOK
    for row in t.rows:
        for _, eid in row.values:
            e = ir.node(eid)
            a, b, back = (ir.node(x) for x in e.inputs)
            assert isinstance(e, Estimate) and e.method == "relp"
            assert a.forward == clean and b.forward == corrupt and a.site == e.site
            assert isinstance(back, Backward)
        (_, (target, source)), = row.normalize
        assert ir.node(target).forward == corrupt and ir.node(source).forward == clean


def test_attribute_methods():
    ir = low("attribute L0.H*.z from clean into corrupt using ig(steps=8) measure ld\n"
             "attribute L0.H*.z from clean into corrupt using relp(ah=true) measure ld\n")
    ests = [e for _, e in ir.of_type(Estimate)]
    assert [(e.method, e.steps) for e in ests] == [("ig", 8)] * NH + [("relp", 0)] * NH
    assert sorted(b.rules for _, b in ir.of_type(Backward)) == ["grad", "lrp_ah"]


COMPARE = """
compare atp, relp against swap on L*.mlp.out, L*.attn.out, L*.resid_pre from clean into corrupt
    measure ld normalized
"""


def test_compare_pairs_estimates_with_swap_metrics():
    ir = low(COMPARE)
    (t,) = ir.tables
    assert t.columns == ("site_kind", "method", "pearson", "spearman")
    assert [dict(r.key) for r in t.rows] == [{"site_kind": k, "method": m}
                                            for k in ("mlp.out", "attn.out", "resid_pre")
                                            for m in ("atp", "relp")]
    assert all(r.values == () for r in t.rows)
    assert len(forwards(ir, True)) == 3 * NL
    assert len(t.pairs) == 3 * NL * 2
    assert sorted(b.rules for _, b in ir.of_type(Backward)) == ["grad", "lrp"]
    for p in t.pairs:
        e, m = ir.node(p.estimate), ir.node(p.metric)
        key = dict(p.key)
        assert e.method == key["method"] and e.site.kind == key["site_kind"]
        f = ir.node(m.forward)
        assert f.experiment is not None and ir.node(f.writes[0]).site == e.site
        assert p.normalize is not None


def test_dla_reads_site_and_final_scale():
    ir = low("dla L*.H*.out in clean measure ld as dla_heads\n")
    (t,) = ir.tables
    assert len(t.rows) == NL * NH and not forwards(ir, True)
    for row in t.rows:
        e = ir.node(row.values[0][1])
        site, scale, metric = (ir.node(x) for x in e.inputs)
        assert e.method == "dla" and site.site == e.site
        assert scale.site == Site("ln_final.scale") and isinstance(metric, Metric)


# ---------------------------------------------------------------------------------------------
# every example: verify, determinism, experiment counts, the pipeline


def _examples() -> list[tuple[str, str, str]]:
    files = sorted((ROOT / "examples").rglob("*.patch"))
    files.append(ROOT / "tests/fixtures/specs/tour.patch")
    out = [(p.name, p.read_text("utf-8"), str(p.parent)) for p in files]
    inline = {"trace": HEADER + TRACE, "steer": HEADER + STEER, "compare": HEADER + COMPARE}
    return out + [(k, v, ".") for k, v in sorted(inline.items())]


def _checkable(spec_text: str, base_dir: str) -> bool:
    """Can check.py take this spec? Not the tour (it loads files that do not exist on
    purpose), nor an example whose data files are not there."""
    spec = parse(spec_text, "<spec>", base_dir)
    paths = [s.path for s in spec.statements if isinstance(s, A.DataDecl) and s.path]
    return "tour.patch" not in spec_text and all(
        (Path(base_dir) / p).is_file() for p in paths)


def _shape_for(spec_text: str, base_dir: str):
    """The 12-layer shape, except for a spec that attaches a dictionary: a dictionary has the
    width of the model it was trained on, so that spec is checked against its own model's
    config."""
    spec = parse(spec_text, "<spec>", base_dir)
    if not any(isinstance(s, A.DictDecl) for s in spec.statements):
        return MODEL12
    model, = (s for s in spec.statements if isinstance(s, A.ModelDecl))
    config = json.loads((Path(base_dir) / model.model_id / "config.json").read_text("utf-8"))
    return spec_from_config(config)


@pytest.mark.parametrize("name,src,base_dir", _examples())
def test_examples_lower_verify_and_are_deterministic(name, src, base_dir):
    # 14 tokens: the prompts of examples/data/ioi.jsonl (positions such as `@ {1, 3, 9}`)
    c = checked(src, ntok=14, model=_shape_for(src, base_dir), base_dir=base_dir,
                use_check=_checkable(src, base_dir))
    a, b = lower(c), lower(c)
    verify(a)
    assert dict(a.g.nodes(data="node")) == dict(b.g.nodes(data="node"))
    assert list(a.g.nodes) == list(b.g.nodes) and sorted(a.g.edges) == sorted(b.g.edges)
    assert a.tables == b.tables
    assert experiment_counts(c) == {t.name: t.n_rows() for t in a.tables}
    assert optimize(a) is a or PASSES


def test_verify_fails_on_a_cycle():
    ir = low("swap L0.H0.z from clean into corrupt measure ld\n")
    (fid, f), = forwards(ir, True)
    ir.g.add_edge(fid, f.writes[0])
    with pytest.raises(PlanError) as e:
        verify(ir)
    assert e.value.code == "E501"


def test_optimize_names_a_pass_that_breaks_the_graph():
    def broken(ir: IRGraph) -> IRGraph:
        ir = ir.copy()
        ir.g.remove_node(next(i for i, _ in ir.of_type(Read)))
        return ir

    ir = low("swap L0.H0.z from clean into corrupt measure ld\n")
    with pytest.raises(PlanError, match="after pass test_lower.broken"):
        optimize(ir, (broken,))


def test_runs_that_read_each_other_are_an_error():
    src = HEADER + ("run a = ioi.clean with swap L0.mlp.out from b\n"
                    "run b = ioi.clean with swap L0.mlp.out from a\n"
                    "ablate L1.mlp.out in a measure ld\n")
    with pytest.raises(PlanError) as e:  # check.py rejects it first (E344); lower is safe too
        lower(checked(src, use_check=False))
    assert e.value.code == "E510"


def test_backpatch_source_position_applies_to_destination():
    ir = low("backpatch L2.resid_post @ last -> L1.resid_pre in clean measure ld\n")
    (w,) = [w for _, w in ir.of_type(Write)]
    assert w.pos.kind == "last" and ir.node(w.inputs[0]).pos.kind == "last"


def test_where_leaves_items_that_do_not_bind_its_columns():
    ir = low("swap L$l.H0.z, L0.mlp.out from clean into corrupt where $l > 2 measure ld\n")
    keys = [dict(r.key) for r in ir.tables[0].rows]
    assert keys == [{"site": "L$l.H0.z", "l": 3}, {"site": "L0.mlp.out"}]


def test_baked_writes_are_shared_and_applied_first():
    ir = low("run steered = ioi.corrupt with scale L0.mlp.out by 0.5\n"
             "swap L1.mlp.out from clean into steered measure ld normalized\n")
    (mul,) = [i for i, w in ir.of_type(Write) if w.mode == "mul"]
    steered = [f for _, f in ir.of_type(Forward) if f.run == "steered"]
    assert len(steered) == 2 and all(f.writes[0] == mul for f in steered)
    assert [ir.node(w).mode for w in steered[0].writes] == ["mul", "replace"]
