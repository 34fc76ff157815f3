"""The unpatched baseline of a raw intervention table: each raw column measured on the
target run (and the source run) as they are, in the same plan, without a model pass of its
own. Checked against a plain transformers forward computed here, and against the plan
lowered without the baselines."""

from __future__ import annotations

import dataclasses
import io
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import patchc  # noqa: E402
from test_plot_centre import CLEAN, CORRUPT, MODEL, ROOT  # noqa: E402
from patchc.compiler.passes._graph import nodes_of, rebuild  # noqa: E402
from patchc.compiler.pipeline import PASSES, optimize  # noqa: E402
from patchc.compiler.schedule import run_shapes, schedule  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error")



def _spec(ops: str) -> str:
    rows = ",\n".join(f'  {{"clean": "{a}", "corrupt": "{b}", "answer": " Mary", '
                      f'"distractor": " John"}}' for a, b in zip(CLEAN, CORRUPT))
    return (f'model "{MODEL}"\ndata d = [\n{rows}\n]\nrun clean = d.clean\n'
            "run corrupt = d.corrupt\nmetric ld = logit(d.answer) - logit(d.distractor)\n"
            "vector v = mean(clean.L1.resid_post @ last)\n" + ops)


def _plain(texts: list[str]) -> tuple[float, float]:
    """The mean logit difference and the mean prob(" Mary") of prompts, with transformers
    alone (float64 from the logits on)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL).eval()
    (mary,), (john,) = tok.encode(" Mary"), tok.encode(" John")
    lds, probs = [], []
    with torch.no_grad():
        for text in texts:
            logits = model(torch.tensor([tok.encode(text)])).logits[0, -1].double()
            lds.append(float(logits[mary] - logits[john]))
            probs.append(float(logits.softmax(-1)[mary]))
    return sum(lds) / len(lds), sum(probs) / len(probs)


OPS = ("swap L*.H*.z from clean into corrupt  measure ld, p = prob(d.answer)  as heads\n"
       "steer L1.resid_post @ last in corrupt by {0, 2} * v  measure ld  as steered\n"
       "ablate L1.H*.z in clean with mean(corrupt)  measure ld  as ablated\n"
       "swap L1.H*.z from clean into corrupt  measure ld normalized, p = prob(d.answer)"
       "  as mixed\n")


@pytest.fixture(scope="module")
def results():
    return patchc.run(_spec(OPS))


def test_the_unpatched_values_are_a_plain_forwards(results):
    ld_clean, p_clean = _plain(CLEAN)
    ld_corrupt, p_corrupt = _plain(CORRUPT)

    def side(run, value):
        return {"run": run, "value": pytest.approx(value, abs=1e-4)}

    assert results.unpatched("heads") == {
        "ld": {"target": side("corrupt", ld_corrupt), "source": side("clean", ld_clean)},
        "p": {"target": side("corrupt", p_corrupt), "source": side("clean", p_clean)}}
    assert results.unpatched("steered") == {"ld": {"target": side("corrupt", ld_corrupt)}}
    # an ablation's source is the run its mean comes from
    assert results.unpatched("ablated") == {
        "ld": {"target": side("clean", ld_clean), "source": side("corrupt", ld_corrupt)}}
    # the steer's coefficient 0 changes nothing: its rows equal the target's baseline
    zero = results["steered"].query("scale == 0")["ld"]
    assert zero.tolist() == [pytest.approx(ld_corrupt, abs=1e-4)]


def test_the_manifest_holds_them_and_a_normalized_column_has_none(results):
    tables = json.loads(json.dumps(results.manifest, allow_nan=False))["tables"]
    assert tables["heads"]["unpatched"] == results.unpatched("heads")
    # the normalized column keeps its baselines; the raw one beside it gets its own
    assert set(results.unpatched("mixed")) == {"p"}
    assert tables["mixed"]["baselines"] == results.baselines("mixed")
    assert set(tables["mixed"]["baselines"]) == {"ld"}
    assert tables["mixed"]["plot"]["columns"]["ld"] == {
        "scale": "signed", "zero": "corrupt", "one": "clean",
        "baselines": {"corrupt": results.baselines("mixed")["ld"]["0"]["value"],
                      "clean": results.baselines("mixed")["ld"]["1"]["value"]}}


def test_the_heatmap_is_centred_on_the_targets_unpatched_value(results):
    ld_corrupt = results.unpatched("heads")["ld"]["target"]["value"]
    ld_clean = results.unpatched("heads")["ld"]["source"]["value"]
    columns = results.manifest["tables"]["heads"]["plot"]["columns"]
    assert columns["ld"] == {"scale": "signed", "centre": ld_corrupt, "centre_run": "corrupt",
                             "unpatched": results.unpatched("heads")["ld"]}
    # a probability keeps its sequential scale; its title still says the unpatched values
    assert columns["p"] == {"scale": "probability", "unpatched": results.unpatched("heads")["p"]}
    fig = results.plot("heads", "ld")
    fig.savefig(io.BytesIO(), format="png")
    (im,) = fig.axes[0].images
    lo, hi = im.get_clim()
    assert im.get_cmap().name == "RdBu_r" and (lo + hi) / 2 == pytest.approx(ld_corrupt)
    number = f"{ld_corrupt:.3g}".replace("-", "\u2212")
    assert im.colorbar.ax.get_ylabel() == f"ld\ncentred on the unpatched ld(corrupt) = {number}"
    clean = f"{ld_clean:.3g}".replace("-", "\u2212")
    assert fig.axes[0].get_title().endswith(
        f"\nunpatched: ld(corrupt) = {number}, ld(clean) = {clean}")


def test_the_cli_prints_them(tmp_path, capsys):
    from patchc.cli import main

    spec = tmp_path / "raw.patch"
    spec.write_text(_spec("swap L1.H*.z from clean into corrupt  measure ld  as heads\n"))
    assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "   ld unpatched: ld(corrupt) = " in out and "(target, no effect), ld(clean) = " in out
    # `patchc plot DIR` redraws the centred figure from the folder alone
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tables"]["heads"]["plot"]["columns"]["ld"]["centre_run"] == "corrupt"
    assert main(["plot", str(tmp_path / "out")]) == 0


def _passes(program) -> int:
    c = program.checked
    plan = schedule(program.optimized, c.model, run_shapes(c), None, c.options.batch_size, 4,
                    passes=tuple(p.__name__ for p in PASSES))
    return plan.optimized.forwards


@pytest.mark.parametrize("spec", ["examples/language/ioi_heads.patch",
                                  "examples/language/steering.patch",
                                  "examples/language/causal_tracing.patch",
                                  "examples/language/circuit_ablation.patch",
                                  "examples/steering.patch"])
def test_the_baselines_cost_no_model_pass(spec, monkeypatch):
    """The plan's model passes and experiments, with and without the baselines (the same
    lowering with every Table.unpatched emptied before the passes, which then prune them)."""
    monkeypatch.chdir(ROOT)
    program = patchc.compile(spec)
    ir = program.ir
    bare = optimize(rebuild(nodes_of(ir), [dataclasses.replace(t, unpatched=())
                                           for t in ir.tables]))
    without = dataclasses.replace(program, optimized=bare)
    assert _passes(program) == _passes(without)
    if spec.endswith("ioi_heads.patch"):
        assert _passes(program) == 14  # every column is normalized: nothing to add


def test_the_ir_says_them_in_every_form():
    """`patchc compile --emit ir` and `--emit json` show a table's unpatched refs."""
    from patchc.compiler.dump import dump_ir
    from patchc.compiler.ir_json import ir_to_json

    program = patchc.compile(_spec("swap L1.H*.z from clean into corrupt  measure ld  as heads\n"))
    (table,) = program.optimized.tables
    ((col, (target, source)),) = table.unpatched
    assert f"  unpatched ld=({target}, {source})" in dump_ir(program.optimized).splitlines()
    (heads,) = json.loads(ir_to_json(program.optimized))["tables"]
    assert heads["unpatched"] == {"ld": [target, source]}


def test_a_concrete_item_beside_a_pattern_has_its_layer():
    """`L1.mlp.post` beside `L*.resid_post`: its row's layer is 1, not empty (and its head
    beside `L*.H*.z`), so grouping by layer keeps it."""
    res = patchc.run(_spec("read L*.resid_post, L1.mlp.post in clean as r\n"
                           "swap L*.H*.z, L2.H1.z, L1.mlp.out from clean into corrupt  "
                           "measure ld as s\n"))
    r = res["r"].set_index("site")
    assert r.loc["L1.mlp.post", "layer"] == 1 and r["layer"].notna().all()
    s = res["s"]
    row = s[s["site"] == "L2.H1.z"].iloc[0]
    assert (row["layer"], row["head"]) == (2, 1)
    assert s[s["site"] == "L1.mlp.out"]["head"].isna().all()
    assert (res.per_example("s").groupby("site")["layer"].first()["L1.mlp.out"]) == 1


def test_a_left_out_baseline_is_said_under_its_table(tmp_path, capsys):
    """A steer that generates text has no plain forward of its target: its baseline would
    cost a pass of its own, is left out, and `patchc run` says so with the statement that
    adds it (the column used to vanish from the table's baselines without a word)."""
    from patchc.cli import main

    spec = tmp_path / "s.patch"
    spec.write_text(_spec("steer L1.resid_post in corrupt by {1, 2} * v  measure ld, "
                          "says = text(2)  as steered\n"), "utf-8")
    assert main(["run", str(spec), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ld unpatched: the value on corrupt as it is was left out" in out
    assert "`measure ld in corrupt` adds it" in out
    res = patchc.run(spec)
    assert res.left_out("steered") == {"ld": "corrupt"} and res.unpatched("steered") == {}
