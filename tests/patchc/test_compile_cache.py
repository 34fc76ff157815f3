"""patchc/compile_cache.py: a spec run again unchanged on the caller's model reuses its
checked form, graphs and plan; anything compiling read that changed compiles anew, and the
tables are those of a fresh compile either way. Runs the bundled tiny GPT-2."""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import patchc  # noqa: E402
import patchc.api  # noqa: E402
from patchc import compile_cache  # noqa: E402
from patchc.compiler import file_stamps  # noqa: E402
from patchc.compiler.errors import NO_SPAN  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "models" / "tiny-gpt2"
ROWS = [{"clean": "When Mary and John went to the store , John gave a drink to",
         "corrupt": "When Alice and Bob went to the store , Tom gave a drink to",
         "answer": " Mary", "distractor": " John"},
        {"clean": "When Kate and Paul went to the park , Paul gave a ring to",
         "corrupt": "When Anna and Mark went to the park , Lucy gave a ring to",
         "answer": " Kate", "distractor": " Paul"}]
BODY = """run clean = d.clean
run corrupt = d.corrupt
metric ld = logit(d.answer) - logit(d.distractor)
swap L0..1.H*.z @ last from clean into corrupt measure ld as heads
attribute L*.resid_pre @ each from clean into corrupt using atp measure ld as atp
"""


@pytest.fixture(scope="module")
def loaded():
    import transformers as tf

    return (tf.AutoModelForCausalLM.from_pretrained(MODEL).eval(),
            tf.AutoTokenizer.from_pretrained(MODEL))


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    compile_cache.clear()
    yield path
    compile_cache.clear()


def spec(data: Path) -> str:
    return f'model "{MODEL}"\ndata d = "{data}"\n' + BODY


def reused(res) -> bool:
    return res.manifest["compile_reused"]


def fresh(text: str, model, tok) -> dict[str, pd.DataFrame]:
    """The tables of a run that compiles from scratch (nothing kept)."""
    compile_cache.clear()
    res = patchc.run(text, model=model, tokenizer=tok)
    compile_cache.clear()
    return {name: res[name] for name in res}


def same_tables(res, expected: dict[str, pd.DataFrame]) -> None:
    assert list(res) == list(expected)
    for name, df in expected.items():
        pd.testing.assert_frame_equal(res[name], df)


def test_a_second_run_reuses_and_gives_the_same_tables(loaded, data):
    model, tok = loaded
    text = spec(data)
    expected = fresh(text, model, tok)
    first = patchc.run(text, model=model, tokenizer=tok)
    second = patchc.run(text, model=model, tokenizer=tok)
    assert not reused(first) and reused(second)
    same_tables(first, expected)
    same_tables(second, expected)
    # the naive interpreter is kept apart, and agrees
    naive = patchc.run(text, model=model, tokenizer=tok, naive=True)
    assert not reused(naive)
    assert reused(patchc.run(text, model=model, tokenizer=tok, naive=True))
    for name in expected:
        pd.testing.assert_frame_equal(naive[name], expected[name], atol=1e-5, rtol=1e-5)


def test_an_edited_data_file_compiles_anew(loaded, data):
    model, tok = loaded
    text = spec(data)
    patchc.run(text, model=model, tokenizer=tok)
    rows = [dict(ROWS[0]), dict(ROWS[1], answer=" Paul", distractor=" Kate")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = fresh(text, model, tok)
    patchc.run(text, model=model, tokenizer=tok)  # keeps the old file's entry out
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    patchc.run(text, model=model, tokenizer=tok)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = patchc.run(text, model=model, tokenizer=tok)
    assert reused(res)  # the edited file's entry, kept from two runs before
    same_tables(res, expected)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:1]))
    one = patchc.run(text, model=model, tokenizer=tok)
    assert not reused(one) and len(one["heads"]) == len(expected["heads"])


def test_another_model_tokenizer_or_option_compiles_anew(loaded, data):
    import transformers as tf

    model, tok = loaded
    text = spec(data)
    patchc.run(text, model=model, tokenizer=tok)
    other = tf.AutoModelForCausalLM.from_pretrained(MODEL).eval()
    assert not reused(patchc.run(text, model=other, tokenizer=tok))
    tok2 = tf.AutoTokenizer.from_pretrained(MODEL)
    assert not reused(patchc.run(text, model=model, tokenizer=tok2))
    assert not reused(patchc.run(text, model=model, tokenizer=tok, seed=7))
    assert reused(patchc.run(text, model=model, tokenizer=tok, seed=7))
    tok2.add_tokens(["zzqx"])  # a tokenizer edited in place: its size changed
    assert not reused(patchc.run(text, model=model, tokenizer=tok2))
    assert not reused(patchc.run(text + "\n", model=model, tokenizer=tok))


def test_a_model_changed_in_place_runs_right(loaded, data):
    model, tok = loaded
    text = spec(data)
    patchc.run(text, model=model, tokenizer=tok)
    double = model.to(torch.float64)
    try:
        res = patchc.run(text, model=double, tokenizer=tok)
        assert reused(res)  # same object and shape: checked form kept, plan made anew
        assert res.manifest["dtype"] == "float64"
        expected = fresh(text, double, tok)
        same_tables(res, expected)
    finally:
        model.to(torch.float32)


def test_entries_hold_models_weakly_and_are_bounded(data):
    import transformers as tf

    text = spec(data)
    tok = tf.AutoTokenizer.from_pretrained(MODEL)
    model = tf.AutoModelForCausalLM.from_pretrained(MODEL).eval()
    patchc.run(text, model=model, tokenizer=tok)
    entry = next(iter(compile_cache._ENTRIES.values()))
    del model
    gc.collect()
    assert entry.model() is None
    for seed in range(compile_cache.SIZE + 3):
        m = tf.AutoModelForCausalLM.from_pretrained(MODEL).eval()
        patchc.run(text, model=m, tokenizer=tok, seed=seed)
    assert len(compile_cache._ENTRIES) == compile_cache.SIZE


def test_a_run_that_loads_its_model_is_not_kept(data):
    patchc.run(spec(data))
    assert not compile_cache._ENTRIES


def test_file_digests_follow_every_write(tmp_path, monkeypatch):
    import hashlib

    from patchc import manifest

    fresh = tmp_path / "g.txt"
    fresh.write_text("new")  # written just now: hashed, not kept
    assert manifest.sha256_file(fresh) == hashlib.sha256(b"new").hexdigest()
    assert str(fresh) not in manifest._FILE_DIGESTS
    monkeypatch.setattr(file_stamps, "SETTLED_SECONDS", -1.0)  # (every file has settled)
    path = tmp_path / "f.txt"
    path.write_text("one")
    first = manifest.sha256_file(path)
    assert manifest._FILE_DIGESTS[str(path)][1] == first
    assert manifest.sha256_file(path) == first
    stat = path.stat()
    time.sleep(0.05)  # past a coarse clock's tick (what SETTLED_SECONDS guards against)
    path.write_text("two")  # same size, new bytes
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the old modification time
    assert manifest.sha256_file(path) == hashlib.sha256(b"two").hexdigest()


IOI = ROOT / "examples" / "models" / "ioi-gpt2"
SAE = ROOT / "examples" / "saes" / "ioi-L1-resid_post"


def test_a_tokenizer_changed_in_place_compiles_anew(data):
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(IOI).eval()
    tok = tf.AutoTokenizer.from_pretrained(IOI)
    text = f'model "{IOI}"\ndata d = "{data}"\n' + BODY
    before = patchc.run(text, model=model, tokenizer=tok)
    # The same object, the same vocabulary size, another post-processor: a BOS in front.
    from tokenizers import processors

    eos = tok.eos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{eos} $A", special_tokens=[(eos, tok.eos_token_id)])
    after = patchc.run(text, model=model, tokenizer=tok)
    assert not reused(after)
    assert len(after["atp"]) == len(before["atp"]) + 4  # one more position, 4 layers
    same_tables(after, fresh(text, model, tok))


def test_an_sae_config_changed_in_place_compiles_anew(data):
    import transformers as tf
    from safetensors.torch import load_file

    model = tf.AutoModelForCausalLM.from_pretrained(IOI).eval()
    tok = tf.AutoTokenizer.from_pretrained(IOI)
    from types import SimpleNamespace

    # What patchc reads of an SAELens SAE object: `cfg.to_dict()` and `state_dict()`.
    cfg = dict(json.loads((SAE / "cfg.json").read_text()), architecture="topk", k=3)
    weights = load_file(SAE / "sae_weights.safetensors")
    sae = SimpleNamespace(cfg=SimpleNamespace(to_dict=lambda: dict(cfg)),
                          state_dict=lambda: dict(weights))
    text = (f'model "{IOI}"\ndata d = "{data}"\nrun clean = d.clean\n'
            'sae s1 = "elsewhere" at L1.resid_post\nread s1 @ last in clean as acts\n')

    def active(res) -> set[int]:
        (acts,) = res.activations("acts").values()
        return {int((row != 0).sum()) for row in acts.reshape(-1, acts.shape[-1])}

    first = patchc.run(text, model=model, tokenizer=tok, saes={"s1": sae})
    cfg["k"] = 10  # the object's config, changed in place
    second = patchc.run(text, model=model, tokenizer=tok, saes={"s1": sae})
    assert not reused(second)
    assert active(first) == {3} and active(second) == {10}


def test_a_dtype_the_model_passed_in_lacks_is_warned_about(loaded, data):
    model, tok = loaded
    text = f'model "{MODEL}"\nset dtype = "bfloat16"\ndata d = "{data}"\n' + BODY
    with pytest.warns(patchc.api.PatchcWarning, match="W476"):
        res = patchc.run(text, model=model, tokenizer=tok)
    (w,) = [w for w in res.warnings if w.code == "W476"]
    assert w.span.line == 2 and "float32" in w.message and res.manifest["dtype"] == "float32"
    with pytest.warns(patchc.api.PatchcWarning, match="W476"):  # an option asks the same
        patchc.run(spec(data), model=model, tokenizer=tok, dtype="float16")
    with pytest.warns(patchc.api.PatchcWarning, match="W476"):  # the option, not the line
        over = patchc.run(text, model=model, tokenizer=tok, dtype="float16")
    (w,) = [w for w in over.warnings if w.code == "W476"]
    assert "float16 was asked" in w.message and w.span == NO_SPAN
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model's own dtype, or nothing asked: silent
        patchc.run(spec(data), model=model, tokenizer=tok)
        patchc.run(text.replace("bfloat16", "float32"), model=model, tokenizer=tok)


def test_a_vector_file_replaced_keeping_its_time_is_read_again(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from patchc.compiler import check_vectors
    from patchc.compiler.check_vectors import tensor_shapes

    monkeypatch.setattr(file_stamps, "SETTLED_SECONDS", -1.0)  # (every file has settled)
    path = tmp_path / "v.safetensors"
    save_file({"v": torch.zeros(64, 128)}, str(path))
    st = path.stat()

    class Ctx:
        base_dir = str(tmp_path)

    try:
        assert tensor_shapes(Ctx(), "v.safetensors", None)["v"] == (64, 128)
        assert tensor_shapes(Ctx(), "v.safetensors", None)["v"] == (64, 128)  # kept
        time.sleep(0.05)
        save_file({"v": torch.zeros(128, 64)}, str(path))  # same size, another shape
        assert path.stat().st_size == st.st_size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # `cp -p`: the old time
        assert tensor_shapes(Ctx(), "v.safetensors", None)["v"] == (128, 64)
    finally:
        check_vectors._shapes.cache_clear()


def test_a_tokenizer_without_a_pad_token_reuses_from_the_second_run(data):
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(MODEL).eval()
    tok = tf.AutoTokenizer.from_pretrained(MODEL)
    tok.pad_token = None  # (the hub's GPT-2: the run gives it EOS as its pad token)
    runs = [reused(patchc.run(spec(data), model=model, tokenizer=tok)) for _ in range(3)]
    assert runs == [False, True, True] and len(compile_cache._ENTRIES) == 1


def test_a_file_edited_while_it_is_checked_is_not_kept(loaded, data, monkeypatch):
    from patchc import execution

    model, tok = loaded
    real = execution.check

    def check_then_edit(*a, **k):
        out = real(*a, **k)
        rows = [dict(ROWS[0], answer=" John", distractor=" Mary"), ROWS[1]]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return out

    monkeypatch.setattr(execution, "check", check_then_edit)
    patchc.run(spec(data), model=model, tokenizer=tok)
    assert not compile_cache._ENTRIES  # its rows are the old file's, its digest the new one


def test_one_plan_is_kept_per_entry(loaded, data, monkeypatch):
    from patchc.runtime.execute import Executor

    model, tok = loaded
    budgets = iter([1 << 30, 1 << 30, 2 << 30, 2 << 30])
    monkeypatch.setattr(Executor, "budget", lambda self, share=1: next(budgets))
    made = []
    real = Executor.prepare
    monkeypatch.setattr(Executor, "prepare",
                        lambda self, *a, **k: made.append(k["budget"]) or real(self, *a, **k))
    tables = [patchc.run(spec(data), model=model, tokenizer=tok) for _ in range(4)]
    assert made == [1 << 30, 2 << 30]  # a budget seen last time reuses its plan
    (entry,) = compile_cache._ENTRIES.values()
    assert entry.made["plan"][0][0] == 2 << 30
    for res in tables[1:]:
        same_tables(res, {name: tables[0][name] for name in tables[0]})


def test_parse_keeps_asts_and_not_errors():
    from patchc.compiler.errors import PatchcError
    from patchc.compiler.parse import parse

    text = 'model "m"\nrun a = "x"\n'
    assert parse(text) is parse(text)
    for _ in range(2):  # an error is raised again, not kept
        with pytest.raises(PatchcError):
            parse('model "m"\nrun = "x"\n')


def test_the_free_memory_budget_is_rounded_down(monkeypatch):
    from patchc.runtime import memory

    monkeypatch.setattr(memory, "available_ram", lambda: 2 * (memory.QUANTUM * 5 + 12345))
    got = memory.memory_budget(None, torch.device("cpu"), weights=100)
    assert got == 100 + 5 * memory.QUANTUM
    monkeypatch.setattr(memory, "available_ram", lambda: memory.QUANTUM)  # under one quantum
    assert memory.memory_budget(None, torch.device("cpu"), weights=0) == memory.QUANTUM // 2
    assert memory.memory_budget("80MB", torch.device("cpu"), weights=7) == 80_000_000
