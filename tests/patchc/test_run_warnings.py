"""What used to be silently misleading now says so: answers outside the vocabulary (W380 naming
the rows, E380 when every answer is unknown, also with a tokenizer passed through the API),
a `normalized` with equal baselines (W470 naming the table and both values), a model passed
to `patchc.run` that is not the spec's (W471; the manifest records what ran), and plots of
tables holding NaN or inf (no matplotlib warnings)."""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import patchc  # noqa: E402
from patchc.api import PatchcWarning  # noqa: E402
from patchc.cli import main  # noqa: E402
from patchc.compiler.errors import PatchcError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "models" / "tiny-gpt2"


def spec(answers=(" Mary", " Kate"), corrupt: str = "corrupt", metric: str | None = None,
         model: str | Path = MODEL) -> str:
    rows = ",\n".join(
        f'    {{"clean": "When Mary and John went to the store , John gave a drink to", '
        f'"corrupt": "When Alice and Bob went to the park , Tom gave a drink to", '
        f'"answer": "{a}", "distractor": " John"}}' for a in answers)
    metric = metric or "logit(d.answer) - logit(d.distractor)"
    return (f'model "{model}"\ndata d = [\n{rows}\n]\nrun clean = d.clean\n'
            f"run corrupt = d.{corrupt}\nmetric ld = {metric}\n"
            "swap L0..1.H0..1.z @ last from clean into corrupt\n"
            "    measure ld normalized\n    as heads\n")


def test_an_answer_outside_the_vocabulary_warns_naming_its_rows():
    program = patchc.compile(spec(answers=(" Mary", " Maryy", " Kate", " Katee")))
    (w,) = [w for w in program.warnings if w.code == "W380"]
    assert "2 answer(s) in `d.answer`" in w.message
    assert "row 1 (' Maryy')" in w.message and "row 3 (' Katee')" in w.message
    assert "row 0" not in w.message and "row 2" not in w.message


@pytest.mark.parametrize("metric, answers", [
    ('logit(" Marry") - logit(d.distractor)', (" Mary",)),
    ("logit(d.answer) - logit(d.distractor)", (" Maryy", " Katee")),
])
def test_an_answer_unknown_for_every_row_is_an_error(metric, answers):
    with pytest.raises(PatchcError) as e:
        patchc.compile(spec(answers=answers, metric=metric))
    assert [x.code for x in e.value.errors] == ["E380"]
    assert "in the tokenizer's vocabulary" in e.value.render()


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(str(MODEL)),
            AutoTokenizer.from_pretrained(str(MODEL)))


def test_an_api_tokenizer_lacking_every_answer_is_an_error_not_a_nan_table(hf):
    model, tok = hf
    text = spec(answers=(" Maryy", " Katee"))
    with pytest.raises(PatchcError) as e:
        patchc.run(text, model=model, tokenizer=tok)
    assert e.value.code == "E380"


def test_equal_baselines_of_normalized_warn_naming_table_and_values(hf, capsys, tmp_path):
    model, tok = hf
    text = spec(corrupt="clean")  # the "corrupt" run is the clean prompts: no gap
    with pytest.warns(PatchcWarning, match="W470"):
        results = patchc.run(text, model=model, tokenizer=tok)
    (w,) = [w for w in results.warnings if w.code == "W470"]
    assert results["heads"]["ld"].isna().all()
    assert "table `heads`" in w.message
    found = re.search(r"both baselines are (\S+) \(target run\) and (\S+) \(source run\)",
                      w.message)
    assert found and found[1] == found[2] and math.isfinite(float(found[1]))
    assert "| swap L0..1.H0..1.z" in w.render().splitlines()[1]  # located at the operation
    (tmp_path / "s.patch").write_text(text)
    assert main(["run", str(tmp_path / "s.patch"), "--quiet"]) == 0
    assert "warning[W470]" in capsys.readouterr().err


def test_a_passed_model_other_than_the_specs_is_recorded_and_warned(hf):
    model, tok = hf
    with pytest.warns(PatchcWarning, match="W471"):
        results = patchc.run(spec(model="gpt2"), model=model, tokenizer=tok)
    assert results.manifest["model_id"] == "gpt2"
    assert results.manifest["model_path"] == str(MODEL.resolve())
    with warnings.catch_warnings():
        warnings.simplefilter("error", PatchcWarning)
        same = patchc.run(spec(), model=model, tokenizer=tok)
    assert same.manifest["model_path"] == str(MODEL.resolve())
    assert same.manifest["weights_sha256"] == results.manifest["weights_sha256"]


def test_plots_of_nan_and_inf_cells_emit_no_warnings(tmp_path):
    from patchc.plots import plot_table

    nan, inf = float("nan"), float("inf")
    grid = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1],
                         "ld": [0.5, nan, -inf, 0.25]})
    line = pd.DataFrame({"layer": [0, 1, 2], "ld": [inf, nan, -0.5]})
    blank = pd.DataFrame({"layer": [0, 1], "ld": [nan, nan]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(plot_table("grid", grid, ["layer", "head"], tmp_path)) == 1
        assert len(plot_table("line", line, ["layer"], tmp_path)) == 1
        # all NaN (a W470 table): drawn empty, the warning of the run says why
        assert len(plot_table("blank", blank, ["layer"], tmp_path)) == 1
