"""Differential tests: the optimized pipeline (passes + schedule + runtime/execute.py) gives
the tables of the reference interpreter (runtime/naive.py), on tiny random models of three
families: GPT-2, Llama with grouped-query attention, GPT-NeoX with parallel blocks.

Specs are generated with hypothesis (operations, site patterns, positions, groups, metrics)
plus fixed cases for what random specs reach rarely (noise samples, attribution, generation,
a tight memory budget). Prompts of one run differ in length, so left padding is always on.
Equality is per example: max |optimized - naive| <= 1e-5 x max(1, max |naive|) per column.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import patchc  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5
CONFIGS = {
    "gpt2": lambda: tf.GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=100,
                                  n_positions=64, bos_token_id=2, eos_token_id=3,
                                  pad_token_id=0),
    "llama": lambda: tf.LlamaConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=64,
                                    vocab_size=100, max_position_embeddings=64,
                                    pad_token_id=0),
    "neox": lambda: tf.GPTNeoXConfig(num_hidden_layers=3, hidden_size=32,
                                     num_attention_heads=4, intermediate_size=64,
                                     vocab_size=100, max_position_embeddings=64,
                                     rotary_pct=0.5, use_parallel_residual=True,
                                     pad_token_id=0),
}
FAMILIES = list(CONFIGS)
_MODELS: dict[str, torch.nn.Module] = {}

HEAD = '''model "tiny"
data d = [
  {"clean": "When Mark and Lucy went to the station , Lucy gave", "corrupt": "When James and Mary went to the station , David gave", "answer": " Mark", "distractor": " Lucy", "p": 2},
  {"clean": "Then , Emma and Sarah had a long day", "corrupt": "Then , Anna and Lucy had a long day", "answer": " Emma", "distractor": " Sarah", "p": 4},
  {"clean": "After Tom and Mark arrived at the", "corrupt": "After John and Emma arrived at the", "answer": " Tom", "distractor": " Mark", "p": 1}
]
run clean = d.clean
run corrupt = d.corrupt
metric ld = logit(d.answer) - logit(d.distractor)
vector v = mean(clean.L1.resid_post @ last) - mean(corrupt.L1.resid_post @ last)
'''  # noqa: E501


def model(family: str) -> torch.nn.Module:
    if family not in _MODELS:
        torch.manual_seed(0)
        m = tf.AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() == 1:  # norm weights and biases: make them non-trivial
                    p.add_(torch.randn_like(p) * 0.2)
        _MODELS[family] = m
    return _MODELS[family]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ROOT / "examples" / "models" / "tiny-gpt2")


def _close(what: str, x: np.ndarray, y: np.ndarray) -> None:
    assert x.shape == y.shape, what
    if x.dtype.kind != "f":
        assert (x == y).all(), what
        return
    assert (np.isnan(x) == np.isnan(y)).all(), (what, x, y)
    scale = max(1.0, float(np.nanmax(np.abs(x), initial=0.0)))
    diff = float(np.nanmax(np.abs(x - y), initial=0.0))
    assert diff <= TOL * scale, f"{what} differs by {diff} (scale {scale})"


def _array(value) -> np.ndarray:
    """A node's value as an array: a tensor, or text (a list of strings per example)."""
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value, dtype=object)


def _refs(results: patchc.Results, name: str) -> list[tuple[str, str]]:
    """(label, node id) of every value a table is computed from, in table order: measured
    columns and the reference metrics that `normalized` divides by."""
    table = next(t for t in results._ir.tables if t.name == name)
    out = []
    for i, row in enumerate(table.rows):
        out += [(f"row {i} {col}", nid) for col, nid in row.values]
        out += [(f"row {i} {col} ref", r) for col, pair in row.normalize for r in pair if r]
    out += [(f"pair {i}", r) for i, p in enumerate(table.pairs) for r in (p.estimate, p.metric)]
    for i, block in enumerate(table.sweeps):  # compact sweeps: [members, examples] values
        out += [(f"sweep {i} {col}", nid) for col, nid in block.values]
        out += [(f"sweep {i} {col} ref", r) for col, pair in block.normalize for r in pair if r]
    return out


def assert_same(family: str, body: str, tokenizer, **overrides) -> patchc.Results:
    """Run the spec naive and optimized; every per-example value a table uses must agree."""
    spec = HEAD + body
    m = model(family)
    naive = patchc.run(spec, model=m, tokenizer=tokenizer, naive=True, **overrides)
    fast = patchc.run(spec, model=m, tokenizer=tokenizer, **overrides)
    assert fast.manifest["interpreter"] == "optimized"
    for name in naive.tables:
        ra, rb = _refs(naive, name), _refs(fast, name)
        assert [label for label, _ in ra] == [label for label, _ in rb], name
        for (label, a), (_, b) in zip(ra, rb):
            _close(f"{family}: {name} {label}\n{body}", _array(naive._values[a]),
                   _array(fast._values[b]))
        ta, tb = naive[name], fast[name]
        assert list(ta.columns) == list(tb.columns) and ta.shape == tb.shape, name
        plain = [c for c in ta.columns if ta[c].dtype.kind != "f" or not _normalized(body, c)]
        for col in plain:  # normalized means divide by small differences: checked above
            _close(f"{family}: table {name}.{col}\n{body}", ta[col].to_numpy(),
                   tb[col].to_numpy())
    return fast


def _normalized(body: str, col: str) -> bool:
    return "normalized" in body or col in ("pearson", "spearman")


# ---------------------------------------------------------------------------------------------
# Random specs

POSITIONS = ["", " @ last", " @ 2", " @ each", " @ d.p", " @ 1..2"]
SITES = ["L*.H*.z", "L{0,2}.H1.z", "L*.resid_pre", "L1.resid_post", "L*.mlp.out",
         "L*.attn.out", "L1.mlp.post[3]", "L0.mlp.post[0:4]", "L*.H0.v", "L2.H1.q",
         "L1.H2.k", "embed", "L0.attn.z", "L1.H3.pattern", "L2.ln1.scale", "L2.H1.out"]
SMALL = ["L{0,2}.H1.z", "L1.resid_post", "L2.H1.q", "L1.H2.k", "embed", "L1.mlp.post[3]",
         "L0.H1.out", "L2.ln2.scale"]  # few matches: fine with @ each
D_MODEL = ["L*.resid_pre", "L1.resid_post", "L*.attn.out", "L2.mlp.out", "embed",
           "L0.H1.out"]
METRICS = ["ld", "logprob(d.answer)", "prob(d.distractor)", "kl(clean)", "loss",
           "logit(d.answer)", "rank(d.answer)"]


@st.composite
def site_items(draw, pool: list[str]) -> str:
    pos = draw(st.sampled_from(POSITIONS))
    choices = SMALL if pos == " @ each" else pool
    if draw(st.integers(0, 4)) == 0:  # a group: one joint intervention
        a, b = draw(st.lists(st.sampled_from([s for s in SMALL if "*" not in s]),
                             min_size=2, max_size=2, unique=True))
        return f"all({a}, {b}){pos if pos != ' @ each' else ' @ last'}"
    site = draw(st.sampled_from([s for s in choices if s in pool] or choices))
    if "pattern" in site and pos in ("", " @ 1..2"):
        pos = " @ last"  # a pattern's width is the key axis: keep the default writes simple
    return site + pos


@st.composite
def specs(draw) -> tuple[str, str]:
    family = draw(st.sampled_from(FAMILIES))
    op = draw(st.sampled_from(["swap", "ablate", "steer", "scale", "backpatch"]))
    metrics = draw(st.lists(st.sampled_from(METRICS), min_size=1, max_size=3, unique=True))
    if op in ("steer", "scale"):  # no source run: kl against the clean run it steers
        metrics = [m for m in metrics if m != "kl(clean)"] or ["ld"]
    norm = " normalized" if draw(st.booleans()) and op in ("swap", "ablate") else ""
    measure = f"measure {metrics[0]}{norm}" + "".join(f", {m}" for m in metrics[1:])
    pool = [s for s in SITES if not (family == "neox" and "resid_mid" in s)]
    if op == "swap":
        body = f"swap {draw(site_items(pool))} from clean into corrupt"
    elif op == "ablate":
        how = draw(st.sampled_from(["", " with zero", " with mean(clean)",
                                    " with resample(clean)"]))
        body = f"ablate {draw(site_items(pool))} in corrupt{how}"
    elif op == "steer":
        body = f"steer {draw(site_items(D_MODEL))} in clean by {{1, 3}} * v"
    elif op == "scale":
        body = f"scale {draw(site_items(pool))} in clean by {{0, 0.5}}"
    else:
        pos = draw(st.sampled_from([" @ last", " @ 2", " @ d.p"]))
        body = (f"backpatch L$j.resid_post -> L$i.resid_pre{pos} in clean from corrupt"
                " where $j >= $i")
    return family, f"{body}\n    {measure}\n    as t\n"


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(specs())
def test_random_specs_match_naive(tokenizer, case) -> None:
    family, body = case
    if os.environ.get("PATCHC_DIFF_VERBOSE"):
        print(family, body.replace("\n", " "))
    try:
        assert_same(family, body, tokenizer)
    except patchc.PatchcError as e:  # a spec the checker rejects is not a counterexample
        if e.code.startswith("E3"):
            if os.environ.get("PATCHC_DIFF_VERBOSE"):
                print("rejected:", e)
            return
        raise


# ---------------------------------------------------------------------------------------------
# Fixed cases


@pytest.mark.parametrize("family", FAMILIES)
def test_sweeps_match_naive(family: str, tokenizer) -> None:
    """The three benchmark shapes, at every family: all positions, `@ last`, `@ each`."""
    assert_same(family, """
swap L*.H*.z from clean into corrupt
    measure ld normalized, prob(d.answer)
    as heads
swap L*.H*.z @ last from clean into corrupt
    measure ld, kl(clean)
    as heads_last
swap L*.resid_pre @ each from clean into corrupt
    measure ld normalized, logprob(d.answer)
    as resid
""", tokenizer)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_noise_samples_and_trace_match_naive(family: str, tokenizer) -> None:
    assert_same(family, """
run noisy = d.clean with noise(embed @ d.p, std=3*std(embed), samples=3, seed=1)
trace L$l.resid_post @ each from clean into noisy
    measure prob(d.answer)
    as traced
""", tokenizer)


def test_baked_runs_and_attribution_match_naive(tokenizer) -> None:
    assert_same("gpt2", """
run ablated = d.corrupt with ablate L0.mlp.out, steer L1.resid_post @ last by 0.5 * v
swap L*.H{1,2}.z @ last from clean into ablated
    measure ld normalized
    as heads
attribute L*.mlp.out from clean into corrupt using atp
    measure ld normalized
    as atp_mlp
compare atp against swap on L*.attn.out from clean into corrupt
    measure ld
""", tokenizer)


def test_generation_matches_naive(tokenizer) -> None:
    assert_same("llama", """
backpatch L$j.resid_post -> L$i.resid_post @ last in clean
    where $j > $i
    measure generate(3) contains d.answer
""", tokenizer)


@pytest.mark.parametrize("body", [
    "measure text(2) in clean  as g\nablate L0.H*.z @ last in clean  measure ld  as t\n",
    "measure seqlogprob(d.answer) in corrupt  as g\n"
    "swap L*.H*.z @ last from clean into corrupt  measure ld  as t\n",
    "measure generate(2) contains d.answer in clean  as g\n"
    "scale L1.H*.z @ last in clean by 0.5  measure ld  as t\n",
])
def test_generation_beside_last_token_sweep_matches_naive(body: str, tokenizer) -> None:
    """A generating (or whole-sequence) forward of a run is never the twin whose key/value
    cache a narrowed `@ last` sweep of that run reuses: it keeps no cache."""
    fast = assert_same("gpt2", body, tokenizer)
    assert set(fast.tables) == {"g", "t"}


def test_tight_memory_budget_splits_and_matches(tokenizer) -> None:
    """The smallest budget that fits (E422 names it: 35 MB here, mostly the fixed reserve)
    forces about one experiment per pass: same numbers."""
    fast = assert_same("gpt2", "swap L*.H*.z @ 3 from clean into corrupt\n    measure ld\n"
                       "    as t\n", tokenizer, memory="35MB", batch_size=6)
    assert fast.manifest["plan"]["passes"] > 3


def test_every_pass_prefix_keeps_naive_results(tokenizer) -> None:
    """The naive interpreter ignores the optimizer's Forward fields, so it can run the graph
    after any prefix of PASSES: every prefix must give the tables of the lowered graph."""
    from patchc.compiler.check import check
    from patchc.compiler.lower import lower
    from patchc.compiler.parse import parse
    from patchc.compiler.pipeline import PASSES, optimize
    from patchc.results import Results
    from patchc.runtime.adapters import adapter_for
    from patchc.runtime.naive import Interpreter

    body = """
swap L*.H{0,3}.z @ last, L1.resid_pre @ d.p from clean into corrupt
    measure ld normalized, kl(clean)
    as t
attribute L{1,2}.mlp.out from clean into corrupt using atp
    measure ld
    as a1
attribute L{0,1}.mlp.out from clean into corrupt using atp
    measure ld
    as a2
"""
    m = model("gpt2")
    checked = check(parse(HEAD + body, "<spec>", str(ROOT)), adapter_for(m).spec(),
                    tokenizer=tokenizer)
    ir = lower(checked)
    reference = None
    for k in range(len(PASSES) + 1):
        graph = optimize(ir, PASSES[:k])
        values = Interpreter(checked, m, tokenizer, adapter_for(m)).run(graph)
        res = Results(graph, values, {})
        tables = {n: res[n] for n in res.tables}
        if reference is None:
            reference = tables
            continue
        for name, df in tables.items():
            for col in df.columns:
                _close(f"after {PASSES[k - 1].__name__}: {name}.{col}",
                       reference[name][col].to_numpy(), df[col].to_numpy())


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_with_unequal_prompt_lengths(family: str, tokenizer) -> None:
    """Prompts of 11, 9 and 7 tokens, left padded to 11: narrowed and batched forwards cut
    at padded indices common to all rows; `@ each` past a short prompt's end is NaN there."""
    lengths = [len(tokenizer(t)["input_ids"]) for t in
               ("When Mark and Lucy went to the station , Lucy gave",
                "Then , Emma and Sarah had a long day", "After Tom and Mark arrived at the")]
    assert lengths == [11, 9, 7]
    fast = assert_same(family, """
swap L{0,2}.H1.z @ each from clean into corrupt
    measure ld
    as each_pos
swap L1.mlp.out @ d.p, L2.resid_pre @ d.p from clean into corrupt
    measure ld, logprob(d.answer)
    as column
""", tokenizer)
    per = fast.per_example("each_pos")
    assert per["ld"].isna().sum() == 2 * ((11 - 9) + (11 - 7))  # 2 heads x missing positions


MLP_INNER = {"gpt2": lambda m: m.transformer.h[-1].mlp.c_fc,
             "llama": lambda m: m.model.layers[-1].mlp.gate_proj,
             "neox": lambda m: m.gpt_neox.layers[-1].mlp.dense_h_to_4h}


@pytest.mark.parametrize("family", FAMILIES)
def test_dead_positions_match_naive(family: str, tokenizer) -> None:
    """dead_positions: the last block's MLP runs at the measured positions only (one at
    `last`; two where a metric also reads d.p, a position that differs per row), and every
    value equals the naive interpreter's; a write to that MLP keeps it whole."""
    widths: list[int] = []
    inner = MLP_INNER[family](model(family))
    handle = inner.register_forward_pre_hook(lambda _m, args: widths.append(args[0].shape[1]))
    try:
        assert_same(family, """
metric at_p = logit(d.answer) @ d.p
ablate L*.mlp.out in clean
    measure ld, at_p
    as zeroed
ablate L*.attn.out in clean with mean(corrupt)
    measure ld normalized, kl(clean)
    as meaned
swap L*.H{0,2}.z from clean into corrupt
    measure prob(d.answer)
    as heads
""", tokenizer)
    finally:
        handle.remove()
    # Each run also ran in the naive interpreter (width 11 every time); the optimized one
    # computed the last MLP at 1 or 2 positions for every forward that measures.
    assert 11 in widths and 1 in widths and 2 in widths


COMPACT = """
swap L$l.mlp.post[{1,5,9}] @ each from clean into corrupt
    where $l >= 1
    measure ld normalized
    as neurons
ablate L*.H*.z @ {1, 3} in corrupt with mean(clean)
    measure ld normalized
    as mean_heads
ablate L1.H{0,2}.z @ last in corrupt with resample(clean)
    measure logprob(d.answer)
    as resampled
ablate L*.H{0,1}.z @ 1..2 in corrupt
    measure ld
    as zeroed
scale L$l.mlp.out @ d.p in clean by {0, 2}
    where $l != 1
    measure ld
    as scaled
steer L*.resid_pre @ last in clean by {1, -1} * v
    measure prob(d.answer), rank(d.answer)
    as steered
"""


@pytest.mark.parametrize("family", FAMILIES)
def test_compact_sweeps_match_naive_and_per_experiment_lowering(family: str, tokenizer
                                                                ) -> None:
    """Every form that lowers to compact sweeps (compiler/lower_sweep.py): the batched
    runtime (runtime/sweeps.py) equals the naive interpreter's member-by-member expansion,
    and both equal the per-experiment lowering run by the naive interpreter."""
    from patchc.compiler.check import check
    from patchc.compiler.lower import lower
    from patchc.compiler.parse import parse
    from patchc.results import Results
    from patchc.runtime.adapters import adapter_for
    from patchc.runtime.naive import Interpreter

    assert_same(family, COMPACT, tokenizer)
    m = model(family)
    checked = check(parse(HEAD + COMPACT, "<spec>", str(ROOT)), adapter_for(m).spec(),
                    tokenizer=tokenizer)
    tables = {}
    for compact in (True, False):
        ir = lower(checked, compact=compact)
        assert all(bool(t.sweeps) == compact and bool(t.rows) != compact for t in ir.tables)
        values = Interpreter(checked, m, tokenizer, adapter_for(m)).run(ir)
        tables[compact] = Results(ir, values, {})
    new, old = tables[True], tables[False]
    for name in old.tables:  # the same forwards: equal to float64 rounding of the means
        for a, b in ((old[name], new[name]), (old.per_example(name), new.per_example(name))):
            assert list(a.columns) == list(b.columns) and a.shape == b.shape, name
            for col in a.columns:
                x, y = a[col].to_numpy(dtype=float), b[col].to_numpy(dtype=float)
                assert (np.isnan(x) == np.isnan(y)).all(), (family, name, col)
                np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9,
                                           err_msg=f"{family}: {name}.{col}")
