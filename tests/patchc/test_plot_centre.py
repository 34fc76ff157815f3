"""Where a diverging colour scale is centred: on the value that means "no effect". A raw
measure of an operation on run B sits around B's own unpatched value (a logit difference of
3.2 swapped head by head moves by tenths), so its heatmap is centred there and the colorbar
says so; a normalized column stays centred on 0; without B's unpatched value in the plan,
the colours span the data. Asserted on colour limits and labels, never pixels."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402

import patchc  # noqa: E402
from patchc import plot_style as S  # noqa: E402
from patchc.plots import figure  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error")

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "models" / "tiny-gpt2"
CLEAN = ["When Mary and John went to the store , John gave a drink to",
         "When Tom and Kate went to the park , Kate gave a book to"]
CORRUPT = ["When Alice and Bob went to the park , Tom gave a drink to",
           "When Anna and Paul went to the store , Mark gave a book to"]
RAW = {"title": "swap L*.H*.z clean → corrupt",
       "columns": {"ld": {"scale": "signed", "centre": 3.2, "centre_run": "corrupt"}}}


def _heads() -> pd.DataFrame:
    # 3.2 (no effect) give or take a few tenths: every value on one side of 0
    return pd.DataFrame([{"layer": lyr, "head": h, "ld": 3.2 + (lyr - h) / 10}
                         for lyr in range(3) for h in range(4)])


def test_limits_are_symmetric_about_the_given_centre():
    assert S.limits("signed", [3.0, 3.5], 3.2) == ("signed", pytest.approx(2.9),
                                                   pytest.approx(3.5), "RdBu_r")
    assert S.limits("signed", [3.0, 3.5]) == ("signed", -3.5, 3.5, "RdBu_r")  # no centre: 0
    assert S.centre("signed", RAW["columns"]["ld"]) == 3.2
    assert S.centre("signed", {"scale": "signed", "zero": "corrupt", "one": "clean"}) == 0.0
    assert S.centre("ratio", {"centre": 3.2}) == 1.0
    assert S.centre("probability", {"centre": 3.2}) is None


def test_a_raw_heatmap_is_centred_on_the_target_runs_own_value_and_says_so():
    fig = figure("heads", _heads(), ["layer", "head"], RAW)
    fig.savefig(io.BytesIO(), format="png")
    (im,) = fig.axes[0].images
    lo, hi = im.get_clim()
    assert (lo + hi) / 2 == pytest.approx(3.2) and hi == pytest.approx(3.5)
    label = im.colorbar.ax.get_ylabel()
    assert label.split("\n")[0] == "ld"
    assert " ".join(label.split()[1:]) == "centred on the unpatched ld(corrupt) = 3.2"
    # wrapped to the colorbar's length (a little past its ends at most), not past the figure
    length = im.colorbar.ax.get_position().height * fig.get_figheight()
    assert len(label.split("\n")) == 3
    assert max(len(line) for line in label.split("\n")) * S.CHAR_IN <= 1.25 * length


def test_raw_bars_run_from_the_no_effect_value_coloured_by_their_side_of_it():
    df = pd.DataFrame([{"layer": i, "ld": v} for i, v in enumerate([3.5, 3.0, 3.3])])
    fig = figure("mlps", df, ["layer"], RAW)
    fig.savefig(io.BytesIO(), format="png")
    ax = fig.axes[0]
    (bars,) = ax.containers
    assert [b.get_y() for b in bars] == [pytest.approx(3.2)] * 3
    assert [b.get_y() + b.get_height() for b in bars] == [pytest.approx(v) for v in
                                                          (3.5, 3.0, 3.3)]
    colours = [b.get_facecolor() for b in bars]
    assert colours[0] != colours[1] and colours[0] == colours[2]
    assert (3.2, 3.2) in {tuple(line.get_ydata()) for line in ax.get_lines()}


def test_a_raw_heatmap_without_a_no_effect_value_spans_its_data_and_says_so():
    info = {"columns": {"ld": {"scale": "signed", "uncentred": "corrupt"}}}
    fig = figure("heads", _heads(), ["layer", "head"], info)
    fig.savefig(io.BytesIO(), format="png")
    (im,) = fig.axes[0].images
    assert im.get_cmap().name == "viridis"
    assert im.get_clim() == (pytest.approx(2.9), pytest.approx(3.4))
    assert " ".join(im.colorbar.ax.get_ylabel().split()) == \
        "ld (not centred: corrupt unpatched is not measured)"


def _spec(ops: str) -> str:
    rows = ",\n".join(f'  {{"clean": "{a}", "corrupt": "{b}", "answer": " Mary", '
                      f'"distractor": " John"}}' for a, b in zip(CLEAN, CORRUPT))
    return (f'model "{MODEL}"\ndata d = [\n{rows}\n]\nrun clean = d.clean\n'
            "run corrupt = d.corrupt\nmetric ld = logit(d.answer) - logit(d.distractor)\n"
            + ops)


def _plain_corrupt_ld() -> float:
    """The corrupt run's mean logit difference, with transformers alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL).eval()
    (mary,), (john,) = tok.encode(" Mary"), tok.encode(" John")
    lds = []
    with torch.no_grad():
        for text in CORRUPT:
            logits = model(torch.tensor([tok.encode(text)])).logits[0, -1].double()
            lds.append(float(logits[mary] - logits[john]))
    return sum(lds) / len(lds)


def _columns(results, table: str) -> dict:
    return results.manifest["tables"][table]["plot"]["columns"]["ld"]


def test_run_centres_raw_attribution_and_swap_on_the_unpatched_target():
    results = patchc.run(_spec(
        "attribute L0.H*.z from clean into corrupt using atp  measure ld  as atp\n"
        "swap L0.H*.z from clean into corrupt  measure ld  as heads\n"
        "swap L0.H*.z from clean into corrupt  measure ld normalized  as norm\n"
        "trace L0.H*.z from clean into corrupt  measure ld  as traced\n"))
    expected = _plain_corrupt_ld()
    atp = _columns(results, "atp")  # the gradient is taken on corrupt unpatched: m_B
    assert atp["scale"] == "signed" and atp["centre_run"] == "corrupt"
    assert atp["centre"] == pytest.approx(expected, abs=1e-4)
    heads = _columns(results, "heads")  # its own unpatched baseline (the same metric)
    assert heads["centre"] == pytest.approx(expected, abs=1e-4)
    assert _columns(results, "traced")["centre"] == pytest.approx(expected, abs=1e-4)
    assert "centre" not in _columns(results, "norm")  # 0 = corrupt already
    assert S.centre("signed", _columns(results, "norm")) == 0.0


def test_a_raw_swap_without_the_unpatched_target_in_the_plan_spans_its_data():
    # Writes at layer 0 at every position start from no twin: corrupt's base forward would
    # be a pass of its own, so the plan leaves its baseline out (passes/drop_baselines.py)
    results = patchc.run(_spec("swap L0.H*.z from clean into corrupt  measure ld  as heads\n"))
    heads = _columns(results, "heads")
    assert heads == {"scale": "signed", "uncentred": "corrupt",  # clean's is read anyway
                     "unpatched": {"source": results.unpatched("heads")["ld"]["source"]}}
    assert results.unpatched("heads")["ld"]["source"]["run"] == "clean"
    fig = results.plot("heads")  # bars: from 0 as before, nothing to say
    fig.savefig(io.BytesIO(), format="png")
    (bars,) = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    assert [b.get_y() for b in bars] == [0.0] * len(bars)
    assert fig.axes[0].get_ylabel() == "ld"
    # `measure ld in corrupt` puts it in the plan: then the swap is centred on it; a text
    # column beside it has no mean, so no centre (and the manifest stays strict JSON)
    results = patchc.run(_spec("measure ld, says = text(1) in corrupt as base\n"
                               "swap L0.H*.z from clean into corrupt  measure ld, says = text(1)"
                               "  as heads\n"))
    assert _columns(results, "heads")["centre"] == pytest.approx(
        float(results["base"]["ld"].iloc[0]))
    says = results.manifest["tables"]["heads"]["plot"]["columns"]["says"]
    assert "centre" not in says
    json.dumps(results.manifest, allow_nan=False)


def test_a_sequential_lines_chart_marks_the_unpatched_run_with_a_line_of_its_own():
    """A log-probability has no centre: the unpatched run's value (where a steering
    coefficient's effect starts from) is a dotted line the legend names."""
    df = pd.DataFrame([{"scale": s, "lp": -4.85 + s / 40} for s in (1.0, 4.0, 8.0)])
    info = {"title": "steer L6.resid_post in neutral by {1, 4, 8} * love",
            "numeric_keys": ["scale"],
            "columns": {"lp": {"scale": "level", "unpatched": {
                "target": {"run": "neutral", "value": -4.93}}}}}
    fig = figure("steered", df, ["scale"], info)
    fig.savefig(io.BytesIO(), format="png")
    ax = fig.axes[0]
    (line,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert tuple(line.get_ydata()) == (-4.93, -4.93)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["unpatched neutral"]
    assert ax.get_title().endswith("\nunpatched: lp(neutral) = \u22124.93")


def test_a_wrapped_label_keeps_each_run_and_its_value_together():
    # balanced wrapping once broke `1 = corrupt` after the `1`
    assert S.wrap("0 = clean (7.12), 1 = corrupt (-0.679)", 25) == \
        ["0 = clean (7.12),", "1 = corrupt (-0.679)"]
