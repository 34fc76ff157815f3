"""What a notebook and a result folder get beyond the numbers: the plot facts a run records
(titles, normalization baselines, token labels, colour scales), `Results` as HTML and as
Figures, the `compare` scatter's points, and the `%%patch` magic on a model the notebook
already holds. Runs the bundled tiny GPT-2 (random weights) on two prompts."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import patchc  # noqa: E402
from patchc.magic import MagicUsageError, load_ipython_extension, run_cell  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "models" / "tiny-gpt2"
CLEAN = ["When Mary and John went to the store , John gave a drink to",
         "When Kate and Paul went to the park , Paul gave a ring to"]
CORRUPT = ["When Alice and Bob went to the store , Tom gave a drink to",
           "When Anna and Mark went to the park , Lucy gave a ring to"]
ANSWER, DISTRACTOR = [" Mary", " Kate"], [" John", " Paul"]
SPEC = f"""model "{MODEL}"
data d = [
    {{"clean": "{CLEAN[0]}", "corrupt": "{CORRUPT[0]}", "answer": " Mary", "distractor": " John"}},
    {{"clean": "{CLEAN[1]}", "corrupt": "{CORRUPT[1]}", "answer": " Kate", "distractor": " Paul"}}
]
run clean = d.clean
run corrupt = d.corrupt
run one = "{CLEAN[0]}"
metric ld = logit(d.answer) - logit(d.distractor)
swap L0..1.resid_pre @ each from clean into corrupt
    measure ld normalized
    as resid
swap L0..1.H0..1.z @ last from clean into corrupt
    measure ld normalized
    as heads
compare atp against swap on L0..1.H0..1.z @ last from clean into corrupt
    measure ld normalized
    as agree
scale L0.mlp.out @ last in clean by {{0, 2}}
    measure prob(d.answer), rank(d.answer)
    as gain
ablate L0.mlp.out @ each in one
    measure logit(" Mary")
    as one_prompt
"""


@pytest.fixture(scope="module")
def loaded():
    import transformers as tf

    return (tf.AutoModelForCausalLM.from_pretrained(MODEL).eval(),
            tf.AutoTokenizer.from_pretrained(MODEL))


@pytest.fixture(scope="module")
def results(loaded):
    model, tok = loaded
    return patchc.run(SPEC, model=model, tokenizer=tok)


def _ld(model, tok, texts: list[str]) -> float:
    """The mean logit difference by a plain forward, one prompt at a time."""
    out = []
    for text, a, d in zip(texts, ANSWER, DISTRACTOR):
        with torch.no_grad():
            logits = model(torch.tensor([tok(text)["input_ids"]])).logits[0, -1]
        out.append(float(logits[tok(a, add_special_tokens=False)["input_ids"][0]]
                         - logits[tok(d, add_special_tokens=False)["input_ids"][0]]))
    return sum(out) / len(out)


def test_a_run_records_titles_baselines_and_scales(results, loaded):
    plot = {name: entry["plot"] for name, entry in results.manifest["tables"].items()}
    assert plot["resid"]["title"] == "swap L0..1.resid_pre @ each clean → corrupt"
    ld = plot["resid"]["columns"]["ld"]
    assert (ld["scale"], ld["zero"], ld["one"]) == ("signed", "corrupt", "clean")
    model, tok = loaded
    assert ld["baselines"]["clean"] == pytest.approx(_ld(model, tok, CLEAN), abs=1e-5)
    assert ld["baselines"]["corrupt"] == pytest.approx(_ld(model, tok, CORRUPT), abs=1e-5)
    gain = plot["gain"]
    assert gain["numeric_keys"] == ["scale"]
    assert gain["key_labels"] == {"scale": "scale factor"}
    assert gain["columns"]["prob(d.answer)"]["scale"] == "probability"
    assert gain["columns"]["rank(d.answer)"]["scale"] == "rank"
    assert plot["one_prompt"]["columns"]['logit(" Mary")']["scale"] == "level"
    assert plot["agree"]["columns"]["pearson"]["scale"] == "correlation"


def test_positions_are_labelled_with_the_prompt_tokens(results, loaded):
    _, tok = loaded
    words = [tok.decode([i]) for i in tok(CLEAN[0])["input_ids"]]
    differ = [w != v for w, v in zip(words, [tok.decode([i]) for i in tok(CLEAN[1])["input_ids"]])]
    plot = {name: entry["plot"] for name, entry in results.manifest["tables"].items()}
    assert plot["one_prompt"]["positions"] == {"run": "one", "tokens": words}
    resid = plot["resid"]["positions"]
    assert resid["run"] == "corrupt"
    corrupt = [tok.decode([i]) for i in tok(CORRUPT[0])["input_ids"]]
    same = [all(tok(t)["input_ids"][p] == tok(CORRUPT[0])["input_ids"][p] for t in CORRUPT)
            for p in range(len(corrupt))]
    assert resid["tokens"] == [w if s else w.strip() + "*" for w, s in zip(corrupt, same)]
    assert any(differ) and not all(same)
    fig = results.plot("one_prompt")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [w.strip() for w in words]


def test_compare_points_are_the_swaps_and_the_folder_redraws_them(results, tmp_path):
    pairs = results.pairs("agree")
    assert list(pairs.columns) == ["site_kind", "method", "site", "estimate", "exact"]
    heads = results["heads"]
    exact = {f"L{r.layer}.H{r.head}.z @ last": r.ld for r in heads.itertuples()}
    assert dict(zip(pairs["site"], pairs["exact"])) == pytest.approx(exact, abs=1e-6)
    r = pairs["estimate"].corr(pairs["exact"])
    assert results["agree"]["pearson"].iloc[0] == pytest.approx(r, abs=1e-6)
    assert results.pairs("heads").empty

    written = results.save(tmp_path)
    assert tmp_path / "agree.pairs.csv" in written
    from patchc.plots import plot_dir

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # drawing never warns
        pngs = {p.name for p in plot_dir(tmp_path)}
    assert pngs == {"resid.png", "heads.png", "agree.png", "gain_prob_d_answer_.png",
                    "gain_rank_d_answer_.png", "one_prompt.png"}
    fig = results.plot("agree")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == [f"atp (r = {r:.2f})"]
    info = results.manifest["tables"]["agree"]["plot"]
    assert info["measures"] == ["ld"] and info["columns"]["ld"]["zero"] == "corrupt"
    assert fig.axes[0].get_xlabel().startswith("exact swap: ld normalized:\n0 = corrupt (")
    assert fig.get_suptitle().endswith("ld normalized: 0 = corrupt, 1 = clean")


def test_results_render_as_html_tables(results):
    html = results._repr_html_()
    assert html.count("<table") == len(results)
    assert "<h4>resid <small>(28 rows)</small></h4>" in html
    assert html.count("<small>ld normalized: 0 = corrupt (") == 2  # resid, heads
    # a raw column: its run as it is (scale's target, clean; no source run)
    value = results.unpatched("gain")["prob(d.answer)"]["target"]["value"]
    assert (f"<small>prob(d.answer) unpatched: prob(d.answer) on clean = {value:.4g} "
            "(target, no effect)</small>") in html


def test_plot_of_a_chosen_column_and_bad_names_say_so(results):
    fig = results.plot("gain", "rank(d.answer)")
    assert fig.axes[0].get_xlabel() == "scale factor"
    with pytest.raises(KeyError, match="no table 'nope'"):
        results.plot("nope")
    with pytest.raises(KeyError, match="has no measured column 'ld'"):
        results.plot("gain", "ld")


def test_magic_runs_on_the_notebook_model_without_loading(loaded, monkeypatch):
    import patchc.runtime.loading as loading

    def no_load(*args, **kwargs):
        raise AssertionError("the magic loaded the model from disk")

    monkeypatch.setattr(loading, "load", no_load)
    model, tok = loaded
    ns = {"m": model, "t": tok}
    res = run_cell("res --model m --tokenizer t", SPEC, ns)
    assert ns["res"] is res and len(res["heads"]) == 4
    with pytest.raises(MagicUsageError, match="no variable 'x'"):
        run_cell("--model x --tokenizer t", SPEC, ns)
    with pytest.raises(MagicUsageError, match="--model needs --tokenizer"):
        run_cell("--model m", SPEC, ns)
    with pytest.raises(MagicUsageError, match="unknown option --device"):
        run_cell("--device cpu", SPEC, ns)


class _FakeIPython:
    def __init__(self) -> None:
        self.user_ns: dict = {}
        self.magics: dict = {}

    def register_magic_function(self, fn, magic_kind: str, magic_name: str) -> None:
        self.magics[(magic_kind, magic_name)] = fn


def test_a_spec_error_in_a_cell_prints_the_located_diagnostic_only(capsys):
    ip = _FakeIPython()
    load_ipython_extension(ip)
    cell = ip.magics[("cell", "patch")]
    bad = SPEC.replace("L0..1.resid_pre", "L99.resid_pre")
    assert cell("", bad) is None
    err = capsys.readouterr().err
    assert "error[E201]" in err and "L99" in err and "^" in err
    assert "Traceback" not in err
    assert cell("--nope", SPEC) is None
    assert "unknown option --nope" in capsys.readouterr().err


def test_lens_figure_and_token_text(loaded):
    """Results.plot of a lens table is the lens figure (metric against the layer), and the
    tokens a read/lens records are text as it reads (a BPE tokenizer's 'Ġ' decoded)."""
    model, tok = loaded
    spec = SPEC.split("swap ")[0] + "lens L*.resid_post in clean\n    measure ld\n    as lensed\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = patchc.run(spec, model=model, tokenizer=tok)
        fig = res.plot("lensed")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "layer" and "logit lens" in ax.get_title()
    with pytest.raises(KeyError):
        res.plot("lensed", "nope")
    ids = tok(CLEAN[0])["input_ids"]
    assert res.tokens("lensed")[0] == [tok.decode([i]) for i in ids]
