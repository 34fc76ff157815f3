"""The checker on valid specs: every worked example of docs/language.md (adapted to tiny
models), what a CheckedSpec holds, warnings, and the light tokenizer."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from checkmodels import Models, build  # noqa: E402

from patchc.compiler.check import check  # noqa: E402
from patchc.compiler.check_names import keywords  # noqa: E402
from patchc.compiler.checked import CheckedSpec, Options  # noqa: E402
from patchc.compiler.modelspec import load_model_spec  # noqa: E402
from patchc.compiler.parse import parse  # noqa: E402
from patchc.compiler.tokens import load_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

IOI = '''model "./gpt2"
data ioi = "data/ioi.jsonl"
run clean   = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
'''

# docs/language.md §1 and §17, with layers that exist in a 4-layer model (L9 -> L3, L6 -> L2).
EXAMPLES = {
    "ioi_heads": IOI + '''
swap L*.H*.z from clean into corrupt
    measure ld normalized
    as heads
''',
    "causal_tracing": '''model "./llama"
data facts = "data/facts.jsonl"
run clean = facts.prompt
run noisy = facts.prompt with noise(embed @ facts.subject_pos, std=3*std(embed), samples=10, seed=1)
trace L$l.resid_post @ last from clean into noisy
    measure prob(facts.answer)
''',
    "circuit_ablation": IOI + '''
ablate all(L3.H2.z, L3.H3.z, L2.H0.z) in clean with mean(corrupt)  measure ld  as circuit
ablate L*.mlp.out in clean  measure ld  as mlps
''',
    "backpatch": '''model "./gpt2"
data hops = [
    {"question": "The capital of the city of Paris is", "answer": " Paris"},
    {"question": "The capital of Rome is", "answer": " Rome"}
]
run q = hops.question
backpatch L$j.resid_post -> L$i.resid_post @ last in q
    where $j > $i
    measure generate(10) contains hops.answer
''',
    "steering": '''model "./gpt2"
run pos = ["I love this", "What a delight"]
run neg = ["I hate this", "What a disaster"]
run neutral = ["I think this movie is"]
vector love = mean(pos.L2.resid_post @ last) - mean(neg.L2.resid_post @ last)
steer L2.resid_post in neutral by {1, 4, 8} * love
    measure logprob(" great")
''',
    "attribution": IOI + '''
attribute L*.mlp.out @ each from clean into corrupt using relp  measure ld normalized  as relp_mlp
compare atp, relp against swap on L*.mlp.out, L*.attn.out, L*.resid_pre from clean into corrupt
    measure ld normalized
''',
}


@pytest.fixture(scope="session")
def models() -> Models:
    return build()


def ok(models: Models, text: str, **kw) -> CheckedSpec:
    return check(parse(text, "ok.patch", models.spec_dir()), **kw)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_language_examples_check(models: Models, name: str):
    checked = ok(models, EXAMPLES[name])
    assert checked.warnings == ()
    assert checked.runs


def test_ioi_contents(models: Models):
    c = ok(models, EXAMPLES["ioi_heads"])
    assert c.model.family == "gpt2" and c.model.n_layers == 4
    assert c.options == Options()
    assert list(c.data) == ["ioi"]
    table = c.data["ioi"]
    assert table.columns == ("clean", "corrupt", "answer", "distractor")
    assert len(table.rows) == 3 and table.path and table.path.endswith("ioi.jsonl")
    assert table.where(1) == "row 1 (line 2 of ioi.jsonl)"
    assert set(c.runs) == {"clean", "corrupt"}
    clean = c.runs["clean"]
    assert clean.data == "ioi" and clean.n_examples == 3
    assert clean.lengths == (14, 14, 14) and clean.n_tokens == 14  # GPT-2 style: no BOS
    assert clean.texts[0].startswith("When Mary and John")
    assert list(c.metrics) == ["ld"] and c.vectors == {}


def test_bos_is_counted(models: Models):
    c = ok(models, EXAMPLES["causal_tracing"])
    # "The Eiffel Tower is in the city of" is 8 words; the Llama tokenizer adds BOS.
    assert c.runs["clean"].lengths == (9, 8)
    assert c.runs["noisy"].lengths == (9, 8)


def test_steering_vector_dims(models: Models):
    c = ok(models, EXAMPLES["steering"])
    assert c.vector_dims == {"love": 64}
    assert list(c.vectors) == ["love"]
    assert c.runs["neutral"].data is None and c.runs["neutral"].texts == (
        "I think this movie is",)


def test_options(models: Models):
    c = ok(models, '''model "./gpt2"
set dtype = bfloat16
set device = "cuda:1"
set batch_size = 8
set seed = 3
set memory = "8GB"
set device_map = "auto"
''')
    assert c.options == Options(dtype="bfloat16", device="cuda:1", batch_size=8, seed=3,
                                memory="8GB", device_map="auto")


def test_more_valid_forms(models: Models):
    """Sites, positions and operations beyond the examples."""
    ok(models, IOI + '''
data facts = "data/facts.jsonl"
run f = facts.prompt
vector v = load("vecs.safetensors", key="love")
vector w = normalize(0.5 * v + sae("sae.safetensors", feature=3))
swap blocks.1.attn.hook_z @ last from clean into corrupt  measure ld
swap L-1.mlp.post[0:128] @ 2..4 from clean into corrupt  measure ld normalized
swap L$l.mlp.post[$n] @ last from clean into corrupt  measure ld  where $l >= 2 and $n < 3
swap L1.resid_post[v] @ -1 from clean into corrupt  measure ld
steer L0.resid_post in clean by {1, 2} * w  measure ld normalized
scale L*.mlp.out in clean by {0, 0.5}  measure ld
ablate L0.mlp.out @ each in corrupt with resample(clean)  measure ld, kl(corrupt)
ablate embed @ facts.subject_pos in f  measure logprob(facts.answer)
dla embed, L*.attn.out, L*.mlp.out, L1.H*.out in clean  measure ld
attribute L*.resid_pre from clean into corrupt using ig(steps=8)  measure ld
attribute L*.resid_pre from clean into corrupt using relp(ah=true)  measure loss
backpatch L$j.resid_post @ 5 -> L$i.resid_post @ 3 in clean from corrupt  measure ld
metric at3 = logit(id(5)) @ 3
ablate L0.mlp.out in clean  measure at3, rank(" Mary")
''')


def test_negative_slice_bounds_count_from_the_end(models: Models):
    """`[-4:-1]` is the slice [width-4:width-1], as a negative index counts from the end;
    the lowered sites equal those of the same slice written with positive bounds."""
    from patchc.compiler.errors import PatchcError
    from patchc.compiler.ir import Write
    from patchc.compiler.lower import lower

    def sites(text: str) -> set:
        ir = lower(ok(models, IOI + text))
        return {n.site for _, n in ir.of_type(Write)}
    neg = sites("swap L0.mlp.post[-4:-1] @ last from clean into corrupt  measure ld\n")
    pos = sites("swap L0.mlp.post[252:255] @ last from clean into corrupt  measure ld\n")
    assert neg == pos and {s.features for s in neg} == {(252, 255)}
    with pytest.raises(PatchcError) as info:
        ok(models, IOI + "swap L0.mlp.post[-300:-1] from clean into corrupt  measure ld\n")
    assert [e.code for e in info.value.errors] == ["E203"]


def test_baked_interventions(models: Models):
    c = ok(models, IOI + '''
vector v = load("vecs.safetensors", key="love")
run a = ioi.clean with ablate all(L*.mlp.out) with mean(corrupt), steer L0.resid_post by v
run b = ioi.clean with swap L1.H2.z from corrupt, freeze ln from clean, scale L0.mlp.out by 2
run c = ioi.clean with ablate L*.mlp.out, swap L*.attn.out[v] from corrupt
swap L0.mlp.out from a into b  measure ld
''')
    # A pattern in a run is one joint write of all its matches (lower.py's `joint`).
    assert set(c.runs) == {"clean", "corrupt", "a", "b", "c"}


def test_gqa_warns_on_kv_writes(models: Models):
    c = ok(models, '''model "./llama"
run a = ["I love this"]
run b = ["I hate this"]
swap L0.H5.k from a into b  measure logit(" great")
ablate L1.H*.v in b  measure logit(" great")
swap L0.H5.q from a into b  measure logit(" great")
attribute L0.H*.k from a into b using atp  measure logit(" great")
''')
    got = [(w.code, w.line) for w in c.warnings]
    assert got == [("W302", 4), ("W302", 5)]
    first = c.warnings[0]
    assert first.message == ("writing L0.H5.k writes the shared kv head 1, shared by query "
                             "heads 4, 5, 6, 7")
    assert "warning[W302]" in first.render()


def test_no_gqa_warning_without_gqa(models: Models):
    c = ok(models, IOI + "swap L0.H1.k from clean into corrupt  measure ld\n")
    assert c.warnings == ()


def test_multi_token_answer_warns(models: Models):
    c = ok(models, '''model "./gpt2"
data m = "data/multi.jsonl"
run r = m.prompt
ablate L0.mlp.out in r  measure logit(m.answer), logit(" New York")
''')
    assert [w.code for w in c.warnings] == ["W301", "W301"]
    assert "tokenizes to 2 tokens; the first one is used" in c.warnings[0].message
    # Each names its answer once: a column by name, row and text, a literal by its text.
    assert c.warnings[0].message.startswith("answer `m.answer` in row 0 (' New York') ")
    assert c.warnings[1].message.startswith("answer ' New York' tokenizes")
    assert c.warnings[1].message.count("New York") == 1


def test_without_tokenizer_token_checks_are_skipped(models: Models):
    c = ok(models, EXAMPLES["attribution"], tokenizer=None)
    assert all(r.lengths is None for r in c.runs.values())
    assert [w.code for w in c.warnings] == ["W300"]


def test_explicit_model_and_hf_tokenizer(models: Models):
    from transformers import AutoTokenizer

    spec = parse(EXAMPLES["ioi_heads"], "ok.patch", models.spec_dir())
    llama = load_model_spec(str(models.llama))
    hf = AutoTokenizer.from_pretrained(str(models.gpt2))
    c = check(spec, llama, tokenizer=hf)
    assert c.model is llama  # the given ModelSpec wins over the model statement
    assert c.runs["clean"].lengths == (14, 14, 14)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_light_tokenizer_matches_autotokenizer(models: Models, which: str):
    from transformers import AutoTokenizer

    path = str(getattr(models, which))
    light = load_tokenizer(path)
    hf = AutoTokenizer.from_pretrained(path)
    assert light is not None
    for text in ["When Mary and John went to the store", " Paris", "unknown words here", ""]:
        assert light.encode(text) == hf(text, add_special_tokens=True)["input_ids"]
        assert light.encode_plain(text) == hf(text, add_special_tokens=False)["input_ids"]


def test_tokenizer_config_add_bos_overrides(tmp_path: Path, models: Models):
    """transformers rebuilds the template when tokenizer_config sets add_bos_token."""
    import json
    import shutil

    shutil.copy(models.gpt2 / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": True, "bos_token": "[BOS]"}))
    tok = load_tokenizer(str(tmp_path))
    assert tok is not None
    assert tok.encode("I love this")[0] == 2 and len(tok.encode("I love this")) == 4


def test_no_tokenizer_for_unknown_places(tmp_path: Path):
    assert load_tokenizer(str(tmp_path)) is None  # a directory without tokenizer.json
    assert load_tokenizer("nobody/no-such-model-xyz") is None  # not in the offline cache


def test_keywords_come_from_the_grammar():
    kws = keywords()
    assert {"swap", "from", "into", "normalized", "measure", "all", "each", "last"} <= kws
    assert "ld" not in kws and "L0" not in kws


def test_check_imports_no_torch_and_is_fast(models: Models):
    code = (
        "import sys, time; t = time.time()\n"
        "from patchc.compiler.parse import parse\n"
        "from patchc.compiler.check import check\n"
        f"check(parse(open({str(models.root / 'spec.patch')!r}).read(), 's', "
        f"{models.spec_dir()!r}))\n"
        "assert time.time() - t < 3, time.time() - t  # ~0.5 s; generous for busy machines\n"
        "bad = [m for m in ('torch', 'transformers', 'pandas') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    (models.root / "spec.patch").write_text(EXAMPLES["attribution"])
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
