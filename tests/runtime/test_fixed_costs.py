"""What a small run pays besides its model passes, made smaller without changing a number:
prompts tokenized in one call (runtime/inputs.encode), each metric token's ids made once
per run (Executor.token_lookup), a table of compact sweep rows alone assembled without an
empty frame of rows to join (patchc/tables.build_table); each against what it replaced."""

from __future__ import annotations

import math

import pandas as pd
import patchc
import torch
from conftest import family, make_tokenizer
from ops_common import CLEAN, CORRUPT, HEAD, ROWS

from patchc.compiler import ast as A
from patchc.compiler.check import check
from patchc.compiler.ir import Metric
from patchc.compiler.lower import lower
from patchc.compiler.parse import parse
from patchc.runtime.adapters import adapter_for
from patchc.runtime.execute import Executor
from patchc.runtime.inputs import encode
from patchc.runtime.naive import Interpreter
from patchc.tables import (_int_keys, _rows_table, _se, _stats, _ZeroGaps, build_table,
                           example_mean)
from patchc.sweep_tables import sweep_frame


class _Counting:
    """A tokenizer that counts its calls."""

    def __init__(self, tok) -> None:
        self.tok, self.calls = tok, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tok(*args, **kwargs)


def test_encode_is_one_call_with_the_ids_of_one_call_per_prompt() -> None:
    for bos in (False, True):
        tok = make_tokenizer(bos)
        counting = _Counting(tok)
        texts = CLEAN + CORRUPT + ["the", "when Mary and John went to the store"]
        got = encode(counting, texts)
        assert got == [list(tok(t, add_special_tokens=True)["input_ids"]) for t in texts]
        assert counting.calls == 1
        assert encode(counting, []) == []


def test_token_ids_are_made_once_per_run_and_equal_the_naive_ones(models_dir) -> None:
    fam = family("gpt2", models_dir)
    body = HEAD + "swap L1.resid_post @ last from clean into corrupt\n    measure ld\n"
    checked = check(parse(fam.spec(body), "<spec>", "."), adapter_for(fam.model).spec(),
                    tokenizer=fam.tok)
    ex = Executor(checked, fam.model, fam.tok, adapter_for(fam.model))
    naive = Interpreter(checked, fam.model, fam.tok, adapter_for(fam.model))
    n = len(ROWS)
    metric = next(m for _, m in lower(checked).of_type(Metric))
    toks = [e.tok for e in A.metric_nodes(metric.expr) if isinstance(e, A.MCall)]
    assert len(toks) == 2  # answer, distractor: data columns
    for tok in toks:
        first = ex.token_ids("clean", n)(tok)
        assert torch.equal(first, naive.token_ids("clean", n)(tok))
        assert ex.token_ids("clean", n)(tok) is first  # made once
        assert torch.equal(ex.token_ids("clean", 2 * n)(tok),
                           naive.token_ids("clean", 2 * n)(tok))


def test_a_table_of_sweep_rows_alone_equals_the_joined_frame(models_dir) -> None:
    fam = family("gpt2", models_dir)
    res = fam.run(HEAD + "ablate L*.mlp.out in clean measure ld normalized as t\n"
                  "swap L*.H*.z @ last from clean into corrupt measure ld as h\n")
    tables = [t for t in res._ir.tables if t.sweeps and not t.rows]
    assert tables, "the spec lowered no compact sweep"
    for table in tables:
        # what build_table did before: an empty frame of the table's rows, reindexed
        old = sweep_frame(table, res._values, _ZeroGaps().check).reindex(
            columns=_rows_table(table, res._values, {}, _ZeroGaps()).columns)
        old = _int_keys(old, table)
        reindexed: list = []
        real = pd.DataFrame.reindex
        pd.DataFrame.reindex = lambda self, *a, seen=reindexed, real=real, **k: (
            seen.append(1) or real(self, *a, **k))
        try:
            new = build_table(table, res._values)
        finally:
            pd.DataFrame.reindex = real
        assert not reindexed  # one frame, built in the table's columns and types
        pd.testing.assert_frame_equal(new, old, check_exact=True)
        assert list(new.columns) == list(old.columns)
        assert new.dtypes.tolist() == old.dtypes.tolist()
        assert len(new) == table.n_rows()


def test_a_run_with_the_callers_model_maps_its_modules_once(models_dir, monkeypatch) -> None:
    import patchc.runtime.adapters as adapters

    fam = family("gpt2", models_dir)
    made = []
    real = adapters.adapter_for
    monkeypatch.setattr(adapters, "adapter_for", lambda m: made.append(m) or real(m))
    body = HEAD + "swap L1.resid_post @ last from clean into corrupt\n    measure ld\n"
    res = fam.run(body, naive=False)
    assert made == [fam.model]
    assert [len(df) for df in res.tables.values()] == [1]


def test_row_statistics_together_equal_one_row_at_a_time() -> None:
    g = torch.Generator().manual_seed(0)
    values: dict = {f"m{i}": torch.randn(8, generator=g) * 10 ** i for i in range(6)}
    values["m1"][[2, 5]] = float("nan")  # examples without the position
    values["m2"][:] = float("nan")  # none: NaN mean and se
    values["m3"] = values["m3"][:1]  # one example: NaN se
    values["b"] = torch.tensor([True, False, True, True])  # acc = rank(...) == 0
    values["e"] = torch.randn(8, dtype=torch.float64, generator=g)
    values["t"] = ["a", "b"]  # text(N)
    values["w"] = torch.randn(3, 2, generator=g)  # not one value per example
    got = _stats(list(values), values)
    assert list(got) != [] and set(got) == set(values)
    for nid, v in values.items():
        m, se = got[nid]
        for a, b in ((m, example_mean(v)), (se, _se(v))):
            assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12)


def test_check_encodes_each_answer_text_once(models_dir) -> None:
    fam = family("gpt2", models_dir)

    class Encoding:
        def __init__(self) -> None:
            self.plain: list[str] = []

        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            if not add_special_tokens:
                self.plain.append(text)
            return fam.tok.encode(text, add_special_tokens=add_special_tokens)

    counting = Encoding()
    body = HEAD + "swap L1.resid_post @ last from clean into corrupt\n    measure ld\n"
    checked = check(parse(fam.spec(body), "<spec>", "."), adapter_for(fam.model).spec(),
                    tokenizer=counting)
    answers = [r[c] for r in ROWS for c in ("answer", "distractor")]
    assert len(set(answers)) < len(answers)  # (names repeat: Mary, John)
    assert sorted(counting.plain) == sorted(set(answers))
    assert checked.runs["clean"].lengths == tuple(len(fam.tok(t)["input_ids"]) for t in CLEAN)


class _Recording:
    """An HF tokenizer that records every text it encodes, with or without special tokens
    (everything else is the tokenizer's own)."""

    def __init__(self, tok) -> None:
        self.tok, self.calls, self.texts = tok, 0, []

    def _seen(self, text, kw) -> None:
        self.calls += 1
        special = kw.get("add_special_tokens", True)
        self.texts += [(t, special) for t in ([text] if isinstance(text, str) else text)]

    def __call__(self, text, **kw):
        self._seen(text, kw)
        return self.tok(text, **kw)

    def encode(self, text, **kw):
        self._seen(text, kw)
        return self.tok.encode(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_a_run_tokenizes_each_text_once_one_call_per_column(models_dir) -> None:
    """check tokenizes the prompts (one call per run) and the answers (one call per
    column); the runtime and the tables reuse those ids when they run with the same
    tokenizer, and the numbers are those of a run with a fresh tokenizer per stage."""
    fam = family("gpt2", models_dir)
    body = HEAD + "swap L1.resid_post @ each from clean into corrupt measure ld as t\n"
    rec = _Recording(fam.tok)
    got = patchc.run(fam.spec(body), model=fam.model, tokenizer=rec)
    assert sorted(rec.texts) == sorted(set(rec.texts))  # no text twice
    assert {t for t, _ in rec.texts} == set(CLEAN + CORRUPT) | \
        {r[c] for r in ROWS for c in ("answer", "distractor")}
    assert rec.calls == 4  # clean, corrupt (with BOS rules), answer, distractor (without)
    ref = fam.run(body)
    pd.testing.assert_frame_equal(got.tables["t"], ref.tables["t"], check_exact=True)
    assert got.manifest["tables"]["t"]["plot"] == ref.manifest["tables"]["t"]["plot"]


def test_positions_index_and_valid_equal_one_position_at_a_time() -> None:
    """An `@ each` estimate's token indices and valid rows in one operation (each
    position's own computation, concatenated), rows of different lengths included."""
    from patchc.compiler.ir import Positions
    from patchc.runtime.inputs import (make_batch, position_index, position_valid,
                                       positions_index, positions_valid)

    batch = make_batch([[5, 6, 7, 8], [9, 10], [11, 12, 13]], 0)
    each = tuple(Positions("index", lo=i) for i in range(4))
    mixed = (Positions("last"), Positions("index", lo=1), Positions("range", lo=0, hi=1))
    for positions in (each, mixed):
        index, sizes = positions_index(batch, positions, {})
        parts = [position_index(batch, p, {}) for p in positions]
        assert torch.equal(index, torch.cat(parts, 1))
        assert sizes == [int(p.shape[1]) for p in parts]
        assert torch.equal(positions_valid(batch, positions),
                           torch.stack([position_valid(batch, p) for p in positions]))


def test_make_batch_equals_the_row_by_row_padding() -> None:
    from patchc.runtime.inputs import make_batch

    rows = [[5, 6, 7, 8], [9], [11, 12, 13], [4, 4, 4, 4]]
    got = make_batch(rows, 1)
    width = 4
    for i, row in enumerate(rows):  # what make_batch did row by row
        off = width - len(row)
        assert got.input_ids[i].tolist() == [1] * off + row
        assert got.attention_mask[i].tolist() == [0] * off + [1] * len(row)
        assert got.position_ids[i].tolist() == [0] * off + list(range(len(row)))
    assert got.lengths == [4, 1, 3, 4]
    assert got.input_ids.dtype == got.attention_mask.dtype == got.position_ids.dtype == \
        torch.long


def test_an_attribution_pass_hooks_each_site_once(models_dir, monkeypatch) -> None:
    """With no writes in the gradient pass, each site's read and its zero leaf are one torch
    hook: the clean pass and the gradient pass install one hook per site each (they
    installed three per site together). The numbers stay the naive interpreter's."""
    from patchc.runtime.estimates import by_site

    fam = family("gpt2", models_dir)
    inside = {id(m) for m in fam.model.transformer.h.modules()}
    made: list[str] = []
    for name in ("register_forward_hook", "register_forward_pre_hook"):
        real = getattr(torch.nn.Module, name)
        monkeypatch.setattr(torch.nn.Module, name, lambda self, *a, real=real, **k: (
            made.append(type(self).__name__) if id(self) in inside else None,
            real(self, *a, **k))[1])
    body = HEAD + ("attribute L*.resid_pre @ each, L*.mlp.out @ each from clean into corrupt"
                   " using atp measure ld as e\n")
    got = fam.run(body, naive=False)
    sites = 2 * len(fam.model.transformer.h)
    # (+2 a pass: dead_positions' gather and widening around the last block's MLP)
    assert len(made) == 2 * sites + 2 * 2
    monkeypatch.undo()
    ref = fam.run(body, naive=True)
    pd.testing.assert_frame_equal(got.tables["e"], ref.tables["e"], atol=1e-5, rtol=1e-5)
    a, b = ("resid_pre", 0, None), ("mlp.out", 0, None)
    hooks = [(*a, 1), (*b, 2), (*a, 3), (*b, 4)]
    assert by_site(hooks) == [(*a, 1), (*a, 3), (*b, 2), (*b, 4)]


def test_ids_are_shared_only_with_the_tokenizer_check_used() -> None:
    from patchc.compiler.tokens import as_tokenizer, encode_many, plain_many, shared

    tok, other = make_tokenizer(True), make_tokenizer(False)
    checked = as_tokenizer(tok)
    texts = CLEAN + ["the"]
    assert encode_many(checked, texts) == [tok(t)["input_ids"] for t in texts]
    assert plain_many(checked, texts) == [tok(t, add_special_tokens=False)["input_ids"]
                                          for t in texts]
    assert shared(checked, tok) is checked
    fresh = shared(checked, other)  # another tokenizer: its own ids, not check's
    assert fresh is not checked and fresh.tok is other
    assert fresh.encode_many(texts) == [other(t)["input_ids"] for t in texts]
    assert shared(None, tok).tok is tok  # check read no tokenizer: the run's own


def test_a_runs_passes_share_their_logit_token_ids(models_dir, monkeypatch) -> None:
    """Every pass of a swap sweep (a pass per layer and chunk, and the corrupt run) measures
    the same tokens: their ids and column map are made once per run (clean is measured
    too, its unpatched baseline), and the table is the naive interpreter's."""
    import patchc.runtime.pass_plan as pp

    fam = family("gpt2", models_dir)
    made, passes = [], []
    real = pp._token_columns
    monkeypatch.setattr(pp, "_token_columns", lambda *a: made.append(1) or real(*a))
    handle = fam.model.register_forward_pre_hook(lambda *_: passes.append(1))
    body = "set batch_size = 12\n" + HEAD + \
        "swap L*.H*.z @ last from clean into corrupt measure ld as t\n"
    try:
        got = fam.run(body, naive=False)
    finally:
        handle.remove()
    assert len(made) == 2 and len(passes) > 3  # once per run measured: clean, corrupt
    ref = fam.run(body, naive=True)
    pd.testing.assert_frame_equal(got.tables["t"], ref.tables["t"], atol=1e-5, rtol=1e-5)
