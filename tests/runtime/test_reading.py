"""`read`, `lens`, `measure ... in RUN` and the metrics and positions of the language's
§11-12, with every number recomputed by hand: plain torch hooks on the HF modules
(conftest.Fam.forward), HF's own eager attention weights for patterns, and the family's
final norm and output embedding written out here for the lens. Reads are compared bit for
bit; lens values and metrics to 1e-5. Each test runs under both interpreters (the
`interpreter` fixture), so optimized == naive follows.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import Fam, inline
from ops_common import CLEAN, CORRUPT, ROWS, close, hand_ld, ld_of, per_example, row

SPANS = [(1, 2), (0, 0), (2, 4), (3, 3)]  # per-example (a, b): inclusive position spans
TWO = ["and John", "the mat", "the red", "on the"]  # answers of two tokens
XROWS = [dict(r, a=a, b=b, p=i + 1, two=t) for i, (r, (a, b), t) in
         enumerate(zip(ROWS, SPANS, TWO))]
HEAD = f"""
data d = {inline(XROWS)}
run clean = d.clean
run corrupt = d.corrupt
metric ld = logit(d.answer) - logit(d.distractor)
"""
FAMILIES = ["gpt2", "llama", "neox"]
FINAL_NORM = {"gpt2": "transformer.ln_f", "llama": "model.norm",
              "neox": "gpt_neox.final_layer_norm"}


def _get(model: torch.nn.Module, path: str) -> torch.nn.Module:
    for part in path.split("."):
        model = getattr(model, part)
    return model


def _span_values(x: torch.Tensor) -> torch.Tensor:
    """x [n, T, d] at each row's span, NaN after a shorter span's end."""
    k = max(b - a + 1 for a, b in SPANS)
    out = torch.full((x.shape[0], k, x.shape[-1]), torch.nan)
    for i, (a, b) in enumerate(SPANS):
        out[i, : b - a + 1] = x[i, a:b + 1]
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


# ---- read ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fam_name", FAMILIES)
def test_read_is_bit_exact(fam_name: str, get_family) -> None:
    fam: Fam = get_family(fam_name)
    res = fam.run(HEAD + "read L1.resid_post, L0.mlp.out @ last, L2.H1.z @ {1, 3}, "
                  "embed @ 2..4, L1.attn.out @ d.p, L0.resid_post @ d.a..d.b in clean as acts\n")
    got = res.activations("acts")
    hand = fam.read(CLEAN, "L1.resid_post", "L0.mlp.out", "L2.H1.z", "embed", "L1.attn.out",
                    "L0.resid_post")
    assert list(got) == ["L1.resid_post", "L0.mlp.out", "L2.H1.z", "embed", "L1.attn.out",
                         "L0.resid_post"]
    _same(got["L1.resid_post"], hand["L1.resid_post"])
    _same(got["L0.mlp.out"], hand["L0.mlp.out"][:, -1:])
    _same(got["L2.H1.z"], hand["L2.H1.z"][:, [1, 3]])
    _same(got["embed"], hand["embed"][:, 2:5])
    rows = torch.arange(len(ROWS))
    _same(got["L1.attn.out"], hand["L1.attn.out"][rows, rows + 1][:, None])
    _same(got["L0.resid_post"], _span_values(hand["L0.resid_post"]))
    summary = row(res, "acts", site="L1.resid_post")
    assert summary["shape"] == "4x6x32"
    close(summary["mean"], hand["L1.resid_post"].mean())
    close(summary["norm"], hand["L1.resid_post"].norm(dim=-1).mean())


def _eager_patterns(fam: Fam, texts: list[str], layer: int) -> list[torch.Tensor]:
    """HF's own attention weights ([heads, q, k] per prompt), each prompt run alone."""
    model = copy.deepcopy(fam.model)
    model.set_attn_implementation("eager")
    out = []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([fam.tok(t)["input_ids"]])
            out.append(model(ids, output_attentions=True).attentions[layer][0])
    return out


def close_pattern(a: torch.Tensor, b: torch.Tensor) -> None:
    """Patterns are recomputed by the adapter's attention function (the kernel that runs
    the model need not expose them): HF's eager weights to float32 rounding."""
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fam_name", FAMILIES)
def test_read_patterns_match_hf_attention(fam_name: str, get_family) -> None:
    fam: Fam = get_family(fam_name)
    texts = ["the cat sat", "a bird was on the tree"]  # 3 and 6 tokens: padded run
    res = fam.run(f'run r = {inline(texts).replace("{", "").replace("}", "")}\n'
                  "read L1.H*.pattern in r as pats\n")
    got = res.activations("pats")
    hand = _eager_patterns(fam, texts, 1)
    assert len(got) == 4
    for h in range(4):
        t = got[f"L1.H{h}.pattern"]
        assert t.shape == (2, 6, 6)
        close_pattern(t[1], hand[1][h])
        close_pattern(t[0, :3, :3], hand[0][h])
        assert torch.isnan(t[0, 3:]).all() and torch.isnan(t[0, :, 3:]).all()


# ---- lens ----------------------------------------------------------------------------------


def _decode(fam: Fam, x: torch.Tensor) -> torch.Tensor:
    """Final norm, then the output embedding: the model's own path to its logits."""
    with torch.no_grad():
        norm = _get(fam.model, FINAL_NORM[fam.name])
        return fam.model.get_output_embeddings()(norm(x)).float()


def _head_out(fam: Fam, z: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """z_h @ W_O[h]: GPT-2's Conv1D stores [in, out], the others' Linear [out, in]."""
    proj = fam.where(f"L{layer}.z")[0]
    cols = slice(head * 8, (head + 1) * 8)
    w = proj.weight[cols, :] if fam.name == "gpt2" else proj.weight[:, cols].T
    return z @ w


@pytest.mark.parametrize("fam_name", FAMILIES)
def test_lens_matches_hand_decoding(fam_name: str, get_family) -> None:
    fam: Fam = get_family(fam_name)
    res = fam.run(HEAD + "lens L*.resid_post, L1.mlp.out, L0.H2.out, embed @ 2 in clean\n"
                  "    measure ld, lp = logprob(d.answer), top = rank(d.answer) == 0, "
                  "kl(corrupt)\n    as lenses\n")
    ids = fam.ids(CLEAN)
    logits, got = fam.forward(ids, reads=("L0.resid_post", "L1.resid_post", "L2.resid_post",
                                          "L1.mlp.out", "L0.z", "embed"))
    ref_all = fam.forward(fam.ids(CORRUPT))[0]  # kl(corrupt): at the lens's position
    answers = torch.tensor([fam.tid(r["answer"]) for r in ROWS])
    n = torch.arange(len(ROWS))
    cases = [("L*.resid_post", {"layer": i}, got[f"L{i}.resid_post"][:, -1], -1)
             for i in range(3)]
    cases += [("L1.mlp.out", {}, got["L1.mlp.out"][:, -1], -1),
              ("L0.H2.out", {}, _head_out(fam, got["L0.z"][:, -1, 16:24], 0, 2), -1),
              ("embed @ 2", {}, got["embed"][:, 2], 2)]
    for site, key, x, pos in cases:
        ref = ref_all[:, pos]
        lg = _decode(fam, x)
        close(per_example(res, "lenses", "ld", site=site, **key), ld_of(fam, lg[:, None]))
        lp = torch.log_softmax(lg, -1)[n, answers]
        close(per_example(res, "lenses", "lp", site=site, **key), lp)
        top = (lg > lg[n, answers][:, None]).sum(-1) == 0
        close(per_example(res, "lenses", "top", site=site, **key), top.float())
        p, q = torch.log_softmax(ref, -1), torch.log_softmax(lg, -1)
        close(per_example(res, "lenses", "kl(corrupt)", site=site, **key),
              (p.exp() * (p - q)).sum(-1))
    # The last layer's lens is the model's own output.
    close(per_example(res, "lenses", "ld", site="L*.resid_post", layer=2),
          ld_of(fam, logits))


def test_lens_each_position(gpt2: Fam) -> None:
    res = gpt2.run(HEAD + "lens L1.resid_post @ each in clean measure ld as lp\n")
    x = gpt2.read(CLEAN, "L1.resid_post")["L1.resid_post"]
    assert len(res["lp"]) == 6
    for p in range(6):
        close(per_example(res, "lp", "ld", pos=p), ld_of(gpt2, _decode(gpt2, x[:, p])[:, None]))


# ---- measure ... in RUN and the new metrics -------------------------------------------------


def _greedy(fam: Fam, texts: list[str], n: int) -> list[str]:
    out = []
    with torch.no_grad():
        for t in texts:
            ids = fam.tok(t)["input_ids"]
            new: list[int] = []
            for _ in range(n):
                logits = fam.model(torch.tensor([ids + new])).logits
                new.append(int(logits[0, -1].argmax()))
            out.append(fam.tok.decode(new, skip_special_tokens=True))
    return out


def _seqlogprob(fam: Fam, texts: list[str], answers: list[str]) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for t, a in zip(texts, answers):
            p = fam.tok(t)["input_ids"]
            ans = fam.tok(a, add_special_tokens=False)["input_ids"]
            lp = torch.log_softmax(fam.model(torch.tensor([p + ans])).logits[0].float(), -1)
            out.append(sum(float(lp[len(p) - 1 + j, tok]) for j, tok in enumerate(ans)))
    return torch.tensor(out)


@pytest.mark.parametrize("fam_name", FAMILIES)
def test_measure_in_run(fam_name: str, get_family) -> None:
    fam: Fam = get_family(fam_name)
    res = fam.run(HEAD + "measure ld, acc = rank(d.answer) == 0, pos = ld > 0, "
                  "s = seqlogprob(d.two), s2 = seqlogprob(\"the mat\"), t = text(3) in clean "
                  "as base\n")
    logits = fam.forward(fam.ids(CLEAN))[0]
    ld = ld_of(fam, logits)
    answers = torch.tensor([fam.tid(r["answer"]) for r in ROWS])
    last = logits[:, -1]
    acc = ((last > last[torch.arange(4), answers][:, None]).sum(-1) == 0).float()
    close(per_example(res, "base", "ld"), ld)
    close(per_example(res, "base", "acc"), acc)
    close(per_example(res, "base", "pos"), (ld > 0).float())
    close(per_example(res, "base", "s"), _seqlogprob(fam, CLEAN, TWO))
    close(per_example(res, "base", "s2"), _seqlogprob(fam, CLEAN, ["the mat"] * 4))
    texts = res.per_example("base").sort_values("example")["t"].tolist()
    assert texts == _greedy(fam, CLEAN, 3)
    table = res["base"]
    assert len(table) == 1 and "t" not in table.columns  # text is per example only
    close(table["ld"].iloc[0], ld.mean())
    close(table["ld_se"].iloc[0], ld.std() / 2)  # n = 4 examples
    close(table["acc"].iloc[0], acc.mean())


def test_normalized_between_and_baselines(gpt2: Fam) -> None:
    res = gpt2.run(HEAD + "scale L1.mlp.out in clean by 0\n"
                   "    measure ld normalized between corrupt and clean, ld2 = ld normalized\n"
                   "    as z\n")
    m = hand_ld(gpt2, CLEAN, {"L1.mlp.out": lambda x: x * 0})
    m_clean, m_corrupt = hand_ld(gpt2, CLEAN), hand_ld(gpt2, CORRUPT)
    r = res["z"].iloc[0]
    denom = m_clean.mean() - m_corrupt.mean()
    close(r["ld"], (m.mean() - m_corrupt.mean()) / denom, atol=1e-4)
    close(r["ld_se"], m.std() / 2 / denom.abs(), atol=1e-4)
    close(r["ld2"], m.mean() / m_clean.mean(), atol=1e-4)  # bare: m / m_target
    b = res.baselines("z")
    assert b["ld"]["0"]["run"] == "corrupt" and b["ld"]["1"]["run"] == "clean"
    close(b["ld"]["0"]["value"], m_corrupt.mean())
    close(b["ld"]["1"]["value"], m_clean.mean())
    assert b["ld2"]["0"] == {"run": None, "value": 0.0} and b["ld2"]["1"]["run"] == "clean"


# ---- positions: sets and per-example spans --------------------------------------------------


def _at_spans(value: torch.Tensor | None):
    """Write `value` [n, T, d] (None: zeros) at each row's span."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        for i, (a, b) in enumerate(SPANS):
            out[i, a:b + 1] = 0 if value is None else value[i, a:b + 1]
        return out
    return fn


@pytest.mark.parametrize("fam_name", ["gpt2", "llama"])
def test_position_sets_and_spans(fam_name: str, get_family) -> None:
    fam: Fam = get_family(fam_name)
    res = fam.run(HEAD + "run noisy = d.clean with noise(embed @ d.a..d.b, std=0.5, seed=3)\n"
                  "swap L0.resid_post @ d.a..d.b from clean into corrupt measure ld as sp\n"
                  "swap L1.mlp.out @ {1, 3} from clean into corrupt measure ld as st\n"
                  "ablate embed @ d.a..d.b in clean measure ld as za\n"
                  "measure ld in noisy as nz\n")
    clean = fam.read(CLEAN, "L0.resid_post", "L1.mlp.out")
    close(per_example(res, "sp", "ld"),
          hand_ld(fam, CORRUPT, {"L0.resid_post": _at_spans(clean["L0.resid_post"])}))

    def put(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[:, [1, 3]] = clean["L1.mlp.out"][:, [1, 3]]
        return out
    close(per_example(res, "st", "ld"), hand_ld(fam, CORRUPT, {"L1.mlp.out": put}))
    close(per_example(res, "za", "ld"), hand_ld(fam, CLEAN, {"embed": _at_spans(None)}))
    # noise(...): one N(0, 1) draw of shape [examples, longest span, d] from the seed; a
    # row's slot j is its position a + j (docs/reading.md).
    k = max(b - a + 1 for a, b in SPANS)
    noise = torch.randn((4, k, 32), generator=torch.Generator().manual_seed(3))

    def noisy(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        for i, (a, b) in enumerate(SPANS):
            out[i, a:b + 1] += 0.5 * noise[i, : b - a + 1]
        return out
    close(per_example(res, "nz", "ld"), hand_ld(fam, CLEAN, {"embed": noisy}))


# ---- outputs --------------------------------------------------------------------------------


def test_outputs_written(gpt2: Fam, tmp_path) -> None:
    import pandas as pd
    from safetensors.torch import load_file

    res = gpt2.run(HEAD + "read L0.H1.pattern, L1.resid_post @ last in clean as acts\n"
                   "measure ld, t = text(2) in clean as base\n")
    written = {p.name for p in res.save(tmp_path)}
    assert {"acts.csv", "acts.safetensors", "base.csv", "base.examples.csv"} <= written
    saved = load_file(str(tmp_path / "acts.safetensors"))
    for k, v in res.activations("acts").items():
        _same(saved[k], v)
    examples = pd.read_csv(tmp_path / "base.examples.csv")
    assert list(examples.columns) == ["example", "ld", "t"] and len(examples) == 4
    assert list(pd.read_csv(tmp_path / "base.csv").columns) == ["ld", "ld_se"]


def test_read_of_a_padded_run_and_of_noise_samples(gpt2: Fam) -> None:
    """Prompts of different lengths: positions count from each prompt's first token, NaN
    past its end. Noise samples: rows are examples x samples, samples consecutive."""
    texts = ["the cat sat", "a bird was on the tree"]
    res = gpt2.run(f'run r = {inline(texts).replace("{", "").replace("}", "")}\n'
                   "run noisy = \"the cat sat\" with noise(embed @ 1, std=1, samples=3, seed=2)\n"
                   "read L1.resid_post, L0.mlp.out @ last in r as acts\n"
                   "read embed in noisy as noisy_embed\n")
    acts = res.activations("acts")
    assert acts["L1.resid_post"].shape == (2, 6, 32)
    for i, t in enumerate(texts):
        alone = gpt2.read([t], "L1.resid_post", "L0.mlp.out")
        n = len(t.split())
        close(acts["L1.resid_post"][i, :n], alone["L1.resid_post"][0])
        close(acts["L0.mlp.out"][i, 0], alone["L0.mlp.out"][0, -1])
    assert torch.isnan(acts["L1.resid_post"][0, 3:]).all()
    noisy = res.activations("noisy_embed")["embed"]
    assert noisy.shape == (3, 3, 32)
    clean = gpt2.read(["the cat sat"], "embed")["embed"][0]
    _same(noisy[:, 0], clean[None, 0].expand(3, -1))  # position 0 is not noised
    assert not torch.equal(noisy[0, 1], noisy[1, 1])  # each sample its own draw


def test_read_each_position_past_a_short_prompt_is_nan(gpt2: Fam) -> None:
    """`read SITE @ each` over prompts of different lengths: position p of a prompt shorter
    than p + 1 tokens has nothing there (NaN, as for a read of every position), never a
    copy of another position; the longer prompt's values are its own, bit for bit."""
    texts = ["the cat sat", "a bird was on the tree"]
    res = gpt2.run(f'run r = {inline(texts).replace("{", "").replace("}", "")}\n'
                   "read L1.resid_post @ each in r as byposition\n"
                   "read L1.H0.pattern @ each in r as pat\n")
    each, pat = res.activations("byposition"), res.activations("pat")
    alone = [gpt2.read([t], "L1.resid_post")["L1.resid_post"][0] for t in texts]
    for p in range(6):
        value = each[f"L1.resid_post @ {p}"]
        assert value.shape == (2, 1, 32)
        close(value[1, 0], alone[1][p])
        if p < 3:
            close(value[0, 0], alone[0][p])
        else:
            assert torch.isnan(value[0]).all() and torch.isnan(pat[f"L1.H0.pattern @ {p}"][0]).all()
        assert not torch.isnan(pat[f"L1.H0.pattern @ {p}"][1, 0, : p + 1]).any()


def test_read_keys_the_whole_site_by_its_bare_text(gpt2: Fam) -> None:
    """One statement reading a site at a position and at every position: the bare text is
    the whole site's tensor (whatever the order), the other carries its `@ POS`."""
    res = gpt2.run('run r = "the cat sat"\n'
                   "read L0.resid_pre @ 1, L0.resid_pre, L1.resid_pre @ 2 in r as acts\n")
    acts = res.activations("acts")
    assert list(acts) == ["L0.resid_pre @ 1", "L0.resid_pre", "L1.resid_pre"]
    assert acts["L0.resid_pre"].shape == (1, 3, 32) and acts["L0.resid_pre @ 1"].shape == (1, 1, 32)
    close(acts["L0.resid_pre @ 1"][0, 0], acts["L0.resid_pre"][0, 1])
