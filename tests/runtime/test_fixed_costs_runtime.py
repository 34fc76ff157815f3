"""Runtime-side costs of a small run made smaller without changing a number (issue 17, fifth
round): each change against what it replaced, on a tiny model.

- a run on the CPU seeds the CPU generator only (patchc/execution.seed_torch);
- a table of compact sweep blocks takes their means and errors in one stacked call and
  skips the key conversion it has nothing to do for (patchc/sweep_tables, tables.py).
"""

from __future__ import annotations

import pandas as pd
import patchc
import torch
from conftest import family
from ops_common import HEAD

from patchc.execution import seed_torch

EACH = HEAD + ("attribute L*.resid_pre @ each, L*.attn.out @ each, L*.mlp.out @ each\n"
               "    from clean into corrupt using atp measure ld as t\n")


def test_a_cpu_run_seeds_the_cpu_generator_alone(models_dir, monkeypatch) -> None:
    fam = family("gpt2", models_dir)
    calls: list[int] = []
    real = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda s: calls.append(s) or real(s))
    torch.default_generator.manual_seed(123)
    fam.run(HEAD + "set seed = 7\nswap L1.resid_post @ last from clean into corrupt "
            "measure ld as t\n", naive=False)
    assert calls == []  # no queued seeds for accelerator backends that never started
    assert torch.initial_seed() == 7
    # the CPU generator is where torch.manual_seed would have put it
    after = torch.rand(4)
    real(7)
    assert torch.equal(after, torch.rand(4))


def test_seed_torch_seeds_everything_once_an_accelerator_may_draw(models_dir,
                                                                   monkeypatch) -> None:
    fam = family("gpt2", models_dir)
    calls: list[int] = []
    monkeypatch.setattr(torch, "manual_seed", lambda s: calls.append(s))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    seed_torch(5, fam.model)
    assert calls == [5]


def test_block_statistics_together_equal_one_block_at_a_time() -> None:
    """sweep_tables._block_stats: the blocks' means and errors from one stacked call, each
    equal bit for bit to _mean_se of its own block (NaN examples, a block of one row)."""
    from types import SimpleNamespace

    from patchc.sweep_tables import _block_stats, _mean_se

    g = torch.Generator().manual_seed(0)
    values = {f"v{i}": torch.randn(m, 16, generator=g) * 10 ** i
              for i, m in enumerate((12, 1, 60))}
    values["v0"][3, [1, 5]] = float("nan")
    values["v1"][0, :] = float("nan")
    values["w"] = torch.randn(4, 7, dtype=torch.float64, generator=g)  # another length
    blocks = [SimpleNamespace(values=(("ld", "v0"), ("acc", "w"))),
              SimpleNamespace(values=(("ld", "v1"),)), SimpleNamespace(values=(("ld", "v2"),))]
    got = _block_stats(SimpleNamespace(sweeps=blocks), values)
    assert set(got) == set(values)
    for nid, v in values.items():
        want = _mean_se(v.double())
        for a, b in zip(got[nid][:2], want[:2]):
            assert a.tobytes() == b.tobytes()
        assert torch.equal(got[nid][2], want[2])


def test_sweep_tables_skip_the_key_conversion_only_when_it_has_nothing_to_do(
        models_dir) -> None:
    """A table of sweep rows alone comes out with its keys typed; _int_keys after it (what
    build_table did before) changes nothing, also for float (`scale`) and text keys."""
    from patchc.tables import _int_keys, build_table

    fam = family("gpt2", models_dir)
    res = fam.run(EACH + "scale L*.attn.out @ last in clean by {0, 1, 2.5} measure ld as s\n"
                  "ablate L*.mlp.out in clean measure ld normalized as u\n", naive=False)
    assert {t.name for t in res._ir.tables if t.sweeps and not t.rows} >= {"t", "s"}
    for table in res._ir.tables:
        new = build_table(table, res._values)
        old = _int_keys(new.copy(), table)
        pd.testing.assert_frame_equal(new, old, check_exact=True)
        assert new.dtypes.tolist() == old.dtypes.tolist()


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_adapter_hooks_are_the_nested_hook_contexts(models_dir) -> None:
    """Adapter.hooks installs in order and removes everything, also when a later site is
    bad (E403 raised before the forward, no hook left behind), with the values that nested
    `hook` contexts give (two writes on one site compose in order)."""
    import contextlib

    from patchc.compiler.errors import RuntimeInterventionError
    from patchc.runtime.adapters import adapter_for

    fam = family("gpt2", models_dir)
    ad = adapter_for(fam.model)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    seen: dict = {}

    def sites(tag: str) -> list:
        return [("resid_pre", 1, None, lambda a: a * 2),
                ("resid_pre", 1, None, lambda a: a + 1),
                ("attn.out", 0, None, lambda a, t=tag: seen.__setitem__(t, a.clone())),
                ("z", 1, 0, lambda a: a * 0)]

    before = _hook_count(fam.model)
    with torch.no_grad(), ad.hooks(sites("all")):
        got = fam.model(ids).logits
    assert _hook_count(fam.model) == before
    with torch.no_grad(), contextlib.ExitStack() as stack:
        for s in sites("nested"):
            stack.enter_context(ad.hook(*s))
        want = fam.model(ids).logits
    assert torch.equal(got, want) and torch.equal(seen["all"], seen["nested"])
    try:
        with ad.hooks(sites("bad") + [("resid_pre", 99, None, lambda a: None)]):
            raise AssertionError("a bad site must raise before the body")
    except RuntimeInterventionError as e:
        assert e.code == "E403"
    assert _hook_count(fam.model) == before


def test_a_read_of_every_position_is_a_copy_equal_to_the_gather() -> None:
    """make_reader stores a read of all positions as a copy of the activation (what gather
    gives for the in-order index), without comparing the index each call."""
    from patchc.compiler.ir import Positions, Read, Site
    from patchc.runtime.inputs import make_batch
    from patchc.runtime.writes import gather, make_reader

    batch = make_batch([[5, 6, 7, 8], [9, 10, 11, 12]], 0)
    act = torch.randn(2, 4, 8)
    got: list = []
    for pos in (Positions("all"), Positions("last")):
        fn = make_reader(Read("f0", Site("resid_pre", 0, None), pos), batch, {}, got.append)
        assert fn(act) is None
    every, last = got
    assert torch.equal(every.value, act) and every.value.data_ptr() != act.data_ptr()
    assert torch.equal(last.value, gather(act, torch.tensor([[3], [3]])))


def test_the_manifest_is_assembled_when_first_read_and_pins_the_run(models_dir,
                                                                    monkeypatch) -> None:
    """A run that never reads its manifest does not describe its tables for it; reading it
    assembles it once, in the order and with the content of the eager assembly, while what
    pins the run (the weights' hash, the timings) was taken at the end of the run."""
    import copy

    import patchc.plotinfo as plotinfo
    from patchc.runtime.loading import weights_hash

    fam = family("gpt2", models_dir)
    model = copy.deepcopy(fam.model)
    described: list[int] = []
    real = plotinfo.describe_tables
    monkeypatch.setattr(plotinfo, "describe_tables",
                        lambda *a: described.append(1) or real(*a))
    body = HEAD + "swap L*.resid_pre @ last from clean into corrupt measure ld normalized as t\n"
    res = patchc.run(fam.spec(body), model=model, tokenizer=fam.tok)
    assert described == []
    before = weights_hash(model)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # changed after the run
    manifest = res.manifest
    assert described == [1] and res.manifest is manifest  # once
    assert manifest["weights_sha256"] == before != weights_hash(model)
    info = manifest["tables"]["t"]
    assert list(info) == ["rows", "columns", "keys", "seconds", "plot", "op", "baselines",
                          "unpatched"][:len(info)]
    assert info["op"] == "swap" and info["baselines"] == res.baselines("t")
    assert info["plot"] == real(res._ir, patchc.compile(fam.spec(body)).checked, fam.tok,
                                res._values)["t"]
    assert manifest["timings"]["total"] == manifest["total_seconds"] > 0
    assert list(manifest)[-4:] == ["total_seconds", "timings", "compile_reused", "files"]


def test_the_weights_hash_is_remembered_until_a_tensor_changes(models_dir) -> None:
    """patchc/run_record.weights_hash: the same digest as hashing the weights, recomputed
    after an in-place change, a replaced parameter, a replaced module or a changed buffer."""
    import copy

    from patchc.run_record import weights_hash as _weights_hash
    from patchc.runtime.loading import weights_hash

    model = copy.deepcopy(family("gpt2", models_dir).model)
    first = _weights_hash(model)
    assert first == weights_hash(model) == _weights_hash(model)
    edits = [
        lambda m: next(m.parameters()).mul_(2.0),  # (in place: its version counter moves)
        lambda m: setattr(m.lm_head, "weight", torch.nn.Parameter(m.lm_head.weight * 1.5)),
        lambda m: m.transformer.h.__setitem__(0, copy.deepcopy(m.transformer.h[1])),
        lambda m: m.transformer.h[0].register_buffer("extra", torch.zeros(3)),
    ]
    seen = {first}
    for edit in edits:
        with torch.no_grad():
            edit(model)
        got = _weights_hash(model)
        assert got == weights_hash(model) and got not in seen
        seen.add(got)


def test_available_ram_is_what_psutil_reports() -> None:
    import pytest

    psutil = pytest.importorskip("psutil")
    from patchc.runtime.memory import available_ram

    got, want = available_ram(), psutil.virtual_memory().available
    assert abs(got - want) < max(want // 50, 64 << 20)  # (memory moves between the reads)


def test_frozen_turns_every_flag_off_and_back_with_tied_weights(models_dir) -> None:
    import copy

    from patchc.runtime.estimates import frozen

    model = copy.deepcopy(family("gpt2", models_dir).model)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: two modules hold it
    model.transformer.h[0].mlp.c_fc.weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)}
    with frozen(model):
        assert not any(p.requires_grad for p in model.parameters())
    assert before == {n: p.requires_grad
                      for n, p in model.named_parameters(remove_duplicate=False)}
    assert before["transformer.h.0.mlp.c_fc.weight"] is False


def test_features_of_a_whole_site_is_the_activation_itself() -> None:
    from patchc.compiler.ir import Site
    from patchc.runtime.writes import features_of

    act = torch.randn(2, 3, 8)
    assert features_of(Site("resid_pre", 0, None), act) is act
    part = features_of(Site("mlp.post", 0, None, (2, 5)), act)
    assert torch.equal(part, act[..., 2:5]) and part.data_ptr() == act[..., 2:].data_ptr()


def test_binary_computes_only_its_operation(monkeypatch) -> None:
    """metrics.binary: each operator's value, NaN kept out of comparisons, and the other
    operations not computed (a table of all of them was built per call)."""
    from patchc.runtime.metrics import binary

    a = torch.tensor([1.0, 2.0, float("nan"), -3.0])
    b = torch.tensor([1.0, 0.5, 1.0, 2.0])
    want = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}
    for op, w in want.items():
        assert torch.equal(binary(op, a, b).nan_to_num(7.0), w.nan_to_num(7.0))
    cmp = {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}
    for op, hit in cmp.items():
        got = binary(op, a, b)
        assert torch.isnan(got[2]) and torch.equal(got[[0, 1, 3]], hit.float()[[0, 1, 3]])
    calls: list[str] = []

    class Probe(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            calls.append(getattr(func, "__name__", str(func)))
            return super().__torch_function__(func, types, args, kwargs or {})

    binary("-", a.as_subclass(Probe), b.as_subclass(Probe))
    assert [c for c in calls if c in ("__add__", "__mul__", "__truediv__", "add", "mul",
                                      "div")] == []


def test_a_single_full_pass_feeds_the_runs_own_tensors(models_dir) -> None:
    """Executor.pass_inputs: one member from position 0 takes the batch as it is (the
    model only reads it); several members or a narrowed pass get their repeated copies."""
    from patchc.compiler.check import check
    from patchc.compiler.parse import parse
    from patchc.compiler.schedule import ForwardStep
    from patchc.runtime.adapters import adapter_for
    from patchc.runtime.execute import Executor

    fam = family("gpt2", models_dir)
    body = HEAD + "swap L1.resid_post @ last from clean into corrupt measure ld as t\n"
    checked = check(parse(fam.spec(body), "<spec>", "."), adapter_for(fam.model).spec(),
                    tokenizer=fam.tok)
    ex = Executor(checked, fam.model, fam.tok, adapter_for(fam.model))
    batch = ex.run_inputs("clean").batch
    step = ForwardStep(members=["f0"], run="clean", rows=batch.n, width=batch.width)
    one = ex.pass_inputs(step, batch, 1, False)
    assert one["input_ids"] is batch.input_ids and one["use_cache"] is False
    assert one["attention_mask"] is batch.attention_mask
    assert one["position_ids"] is batch.position_ids
    two = ex.pass_inputs(step, batch, 2, True)
    assert torch.equal(two["input_ids"], batch.input_ids.repeat(2, 1))
    assert torch.equal(two["position_ids"], batch.position_ids.repeat(2, 1))
    assert two["input_ids"].data_ptr() != batch.input_ids.data_ptr()


def test_what_ran_resolves_the_spec_model_once_when_it_is_the_one_passed(models_dir,
                                                                        monkeypatch) -> None:
    import os

    import patchc.run_record as RR
    from patchc.api import load_spec

    fam = family("gpt2", models_dir)
    calls: list[tuple] = []
    real = RR._where
    monkeypatch.setattr(RR, "_where", lambda *a: calls.append(a) or real(*a))
    body = HEAD + "swap L1.resid_post @ last from clean into corrupt measure ld as t\n"
    spec = load_spec(fam.spec(body))
    decl = next(s for s in spec.statements if type(s).__name__ == "ModelDecl")
    assert spec.source.base_dir == os.getcwd()
    monkeypatch.setattr(fam.model, "name_or_path", decl.model_id)  # (from_pretrained(path))
    ran = RR.what_ran(spec, decl, fam.model, fam.tok, given=True)
    assert calls == [(decl.model_id, spec.source.base_dir)]
    assert ran.model_path == real(decl.model_id, os.getcwd()) and not ran.warnings
    monkeypatch.setattr(fam.model, "name_or_path", "elsewhere/model")  # its own lookup, W471
    calls.clear()
    ran = RR.what_ran(spec, decl, fam.model, fam.tok, given=True)
    assert len(calls) == 2 and ran.model_path == "elsewhere/model"
    assert [w.code for w in ran.warnings] == ["W471"]


def test_token_columns_through_a_remap_are_made_once_per_remap(models_dir) -> None:
    """Executor.token_ids under a logit remap: each token's columns computed once per
    remap and run, equal to indexing the remap, and a new remap gets its own."""
    from patchc.compiler import ast as A
    from patchc.compiler.check import check
    from patchc.compiler.errors import NO_SPAN
    from patchc.compiler.parse import parse
    from patchc.runtime.adapters import adapter_for
    from patchc.runtime.execute import Executor

    fam = family("gpt2", models_dir)
    body = HEAD + "swap L1.resid_post @ last from clean into corrupt measure ld as t\n"
    checked = check(parse(fam.spec(body), "<spec>", "."), adapter_for(fam.model).spec(),
                    tokenizer=fam.tok)
    ex = Executor(checked, fam.model, fam.tok, adapter_for(fam.model))
    ids = ex.token_lookup("clean", 4)
    toks = [A.ColumnRef("d", "answer", NO_SPAN), A.TokId(3, NO_SPAN)]
    for remap in (torch.arange(200).flip(0), torch.arange(200) * 2):
        ex._remap = remap
        for t in toks:
            first = ex.token_ids("clean", 4)(t)
            assert torch.equal(first, remap[ids(t)])
            assert ex.token_ids("clean", 4)(t) is first
    ex._remap = None
    assert ex.token_ids("clean", 4)(toks[0]) is ids(toks[0])
