"""The example specs on the bundled dictionaries (examples/saes/): each passes `patchc check`;
the cheap ones run, and what they report is recomputed here with plain forward hooks on the
HF modules and the independent SAELens reference of tests/runtime/saelens_reference.py."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from patchc.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT / "tests" / "runtime"))
from saelens_reference import Reference  # noqa: E402

SPECS = ["ioi_features.patch", "ioi_feature_circuit.patch", "sae_steering.patch",
         "ioi_feature_dla.patch"]


@pytest.fixture(scope="module")
def gpt2():
    path = EXAMPLES / "models" / "ioi-gpt2"
    return (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(path))


@pytest.mark.parametrize("name", SPECS)
def test_example_checks(capsys, name):
    assert main(["check", str(EXAMPLES / name)]) == 0, capsys.readouterr().err
    assert "ok:" in capsys.readouterr().out


def block_edit(model, layer: int, fn):
    """A forward hook replacing block `layer`'s output y (the residual stream after it) by
    fn(y)."""
    def hook(module, args, output):
        y = output[0] if isinstance(output, tuple) else output
        new = fn(y)
        return (new, *output[1:]) if isinstance(output, tuple) else new
    return model.transformer.h[layer].register_forward_hook(hook)


@torch.no_grad()
def resid(model, ids, layer: int) -> torch.Tensor:
    return model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]


def test_sae_steering_runs_as_hand_hooks_compute(capsys, tmp_path, gpt2):
    model, tok = gpt2
    out = tmp_path / "out"
    assert main(["run", str(EXAMPLES / "sae_steering.patch"), "--out", str(out),
                 "--quiet"]) == 0, capsys.readouterr().err
    ref = Reference.load(EXAMPLES / "saes" / "ioi-L1-resid_post")
    rows = [json.loads(line) for line in (EXAMPLES / "data" / "sentiment.jsonl").open()]
    mean_act = {}
    for key, latent in [("positive", 157), ("negative", 109)]:
        ids = tok([r[key] for r in rows], return_tensors="pt")["input_ids"]
        f, _ = ref.encode(resid(model, ids, 1)[:, -1])
        mean_act[latent] = f[:, latent].mean().item()
        table = pd.read_csv(out / f"on_{key}.csv").set_index("feature")
        assert table.loc[latent, "mean"] == pytest.approx(mean_act[latent], rel=1e-4)
    # steering: the site gains (scale x mean activation) x the latent's decoder row at every
    # prompt token; the sentiment is read at the last token
    neutral = ["I saw this movie . It is", "We watched this film . It is",
               "They tried this meal . It is"]
    ids = tok(neutral, return_tensors="pt")["input_ids"]
    great, terrible = (tok.convert_tokens_to_ids(w) for w in ("great", "terrible"))
    for table, latent in [("toward_positive", 157), ("toward_negative", 109)]:
        got = pd.read_csv(out / f"{table}.csv").set_index("scale")["sentiment"]
        for scale in (1, 2, 4):
            shift = scale * mean_act[latent] * ref.w["W_dec"][latent]
            handle = block_edit(model, 1, lambda y, s=shift: y + s)
            try:
                with torch.no_grad():
                    logp = model(input_ids=ids).logits[:, -1].log_softmax(-1)
            finally:
                handle.remove()
            hand = (logp[:, great] - logp[:, terrible]).mean().item()
            assert got[scale] == pytest.approx(hand, abs=1e-4)
    says = pd.read_csv(out / "toward_negative.examples.csv")["says"]
    assert says.str.len().min() > 0


def test_ioi_features_compare_matches_hand_patching(capsys, tmp_path, gpt2):
    model, tok = gpt2
    out = tmp_path / "out"
    assert main(["run", str(EXAMPLES / "ioi_features.patch"), "--out", str(out),
                 "--quiet"]) == 0, capsys.readouterr().err
    pairs = pd.read_csv(out / "agreement.pairs.csv")
    table = pd.read_csv(out / "agreement.csv")
    # the reported Pearson r is that of the pairs written beside it
    for (kind, method), group in pairs.groupby(["site_kind", "method"]):
        r = group["estimate"].corr(group["exact"])
        row = table[(table.site_kind == kind) & (table.method == method)].iloc[0]
        assert row["pearson"] == pytest.approx(r, abs=1e-6) and row["n"] == 512
    # the exact side: swap one s1 latent at the last token from clean into corrupt, by hand
    rows = [json.loads(line) for line in (EXAMPLES / "data" / "ioi.jsonl").open()]
    clean = tok([r["clean"] for r in rows], return_tensors="pt")["input_ids"]
    corrupt = tok([r["corrupt"] for r in rows], return_tensors="pt")["input_ids"]
    a = [tok.convert_tokens_to_ids(r["answer"].strip()) for r in rows]
    d = [tok.convert_tokens_to_ids(r["distractor"].strip()) for r in rows]
    ref = Reference.load(EXAMPLES / "saes" / "ioi-L1-resid_post")
    f_clean, _ = ref.encode(resid(model, clean, 1)[:, -1])
    f_corrupt, _ = ref.encode(resid(model, corrupt, 1)[:, -1])

    def ld(ids, hook=None):
        handle = block_edit(model, 1, hook) if hook else None
        try:
            with torch.no_grad():
                last = model(input_ids=ids).logits[:, -1]
        finally:
            if handle:
                handle.remove()
        return (last[range(16), a] - last[range(16), d]).mean().item()

    base, top = ld(corrupt), ld(clean)
    exact = pairs[(pairs.site_kind == "s1") & (pairs.method == "atp")].set_index("site")["exact"]
    biggest = exact.abs().idxmax()
    latent = int(biggest.split("[")[1].split("]")[0])

    def swap(y):
        y = y.clone()
        y[:, -1] += (f_clean[:, latent] - f_corrupt[:, latent])[:, None] * ref.w["W_dec"][latent]
        return y

    hand = (ld(corrupt, swap) - base) / (top - base)
    assert exact[biggest] == pytest.approx(hand, abs=1e-4)
    # a latent zero in both runs at the last token has no effect at all
    dead = next(i for i in range(512) if f_clean[:, i].eq(0).all() and f_corrupt[:, i].eq(0).all())
    assert math.isclose(exact[f"s1[{dead}] @ last"], 0.0, abs_tol=1e-6)
