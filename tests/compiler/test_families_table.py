"""The one family table: check reads it from the config alone, the runtime from the same rows.

Unsupported kinds of model fail with a message naming what they lack; sites a family lacks are
E209 with the reason; expert sites parse, resolve and sweep over the `expert` column.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import transformers as T  # noqa: E402

from patchc.compiler.errors import CheckError  # noqa: E402
from patchc.compiler.families import FAMILIES, SINCE, lookup  # noqa: E402
from patchc.compiler.modelspec import spec_from_config  # noqa: E402
from patchc.runtime.adapters import SUPPORTED_FAMILIES  # noqa: E402


def test_check_and_runtime_share_one_table() -> None:
    assert SUPPORTED_FAMILIES == tuple(sorted(FAMILIES))
    assert len(FAMILIES) >= 40


@pytest.mark.parametrize(("config", "words"), [
    (T.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4),
     ["bert", "encoder", "not a decoder-only"]),
    (T.MambaConfig(num_hidden_layers=2, hidden_size=32), ["mamba", "state-space",
                                                          "no attention heads"]),
    (T.T5Config(num_layers=2, d_model=32), ["t5", "encoder-decoder"]),
])
def test_unsupported_models_say_what_is_missing(config: T.PretrainedConfig,
                                                words: list[str]) -> None:
    with pytest.raises(CheckError) as ei:
        spec_from_config(config.to_dict())
    assert ei.value.code == "E210"
    for w in words:
        assert w in ei.value.message
    assert "llama" in ei.value.message  # the supported families are listed


def test_config_names_differ_per_family() -> None:
    """n_embd (GPT-2), hidden_size (Llama), d_model (MPT) give the same d_model."""
    gpt2 = spec_from_config(T.GPT2Config(n_layer=2, n_head=4, n_embd=32).to_dict())
    mpt = spec_from_config(T.MptConfig(n_layers=2, n_heads=4, d_model=32).to_dict())
    assert gpt2.d_model == mpt.d_model == 32
    assert (mpt.n_layers, mpt.n_heads, mpt.d_mlp, mpt.positional) == (2, 4, 128, "alibi")
    if lookup("xglm") is None:  # needs a newer transformers (SINCE); tested below
        return
    xglm = spec_from_config(T.XGLMConfig(num_layers=2, attention_heads=4, d_model=32,
                                         ffn_dim=64).to_dict())
    assert xglm.d_model == 32 and (xglm.n_layers, xglm.n_heads, xglm.d_mlp) == (2, 4, 64)


def test_multi_query_and_falcon_kv_heads() -> None:
    big = T.GPTBigCodeConfig(n_layer=2, n_head=4, n_embd=32, multi_query=True).to_dict()
    assert spec_from_config(big).n_kv_heads == 1
    falcon = dict(T.FalconConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                 num_kv_heads=2).to_dict())
    assert spec_from_config({**falcon, "multi_query": True}).n_kv_heads == 1
    assert spec_from_config({**falcon, "multi_query": False}).n_kv_heads == 4
    assert spec_from_config({**falcon, "new_decoder_architecture": True}).n_kv_heads == 2
    assert spec_from_config({**falcon, "alibi": True}).positional == "alibi"


@pytest.fixture
def newest(monkeypatch) -> None:
    """The family table as on the newest transformers: what `check` says of a family's config
    does not depend on the installed release, except for SINCE (tested on its own below)."""
    import patchc.compiler.families as F

    monkeypatch.setattr(F, "installed_transformers", lambda: (99, 0))


def test_moe_spec(newest) -> None:
    cfg = T.Qwen2MoeConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                           num_key_value_heads=2,
                           num_experts=6, num_experts_per_tok=2, moe_intermediate_size=16)
    s = spec_from_config(cfg.to_dict())
    assert (s.n_experts, s.top_k, s.d_mlp) == (6, 2, 16)
    assert s.missing("router") is None and s.missing("shared.out") is None
    assert "mixture of experts" in (s.missing("mlp.post") or "")
    dense = spec_from_config(T.LlamaConfig(num_hidden_layers=2, hidden_size=32,
                                           num_attention_heads=4).to_dict())
    assert dense.n_experts == 0 and "no mixture-of-experts" in (dense.missing("router") or "")


def _default_config(family: str) -> dict:
    """A family's default config, with every layer an expert layer where the default keeps
    some dense (ERNIE 4.5 MoE's layer 0, Flint's first two, Hunyuan V3's first: refused,
    test_moe_with_dense_layers_is_refused)."""
    cfg = T.AutoConfig.for_model(family).to_dict()
    if cfg.get("mlp_layer_types"):
        cfg["mlp_layer_types"] = ["sparse"] * len(cfg["mlp_layer_types"])
    if cfg.get("moe_layer_start_index"):
        cfg["moe_layer_start_index"] = 0
    if cfg.get("mlp_only_layers"):
        cfg["mlp_only_layers"] = []
    return cfg


def test_a_shared_expert_configured_away_is_unavailable(newest) -> None:
    """ERNIE 4.5 MoE with no shared experts: check says so, and the runtime agrees."""
    kw = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
              moe_num_experts=4, moe_k=2, moe_intermediate_size=16, moe_layer_start_index=0,
              vocab_size=64)
    with_shared = spec_from_config(T.Ernie4_5_MoeConfig(**kw, moe_num_shared_experts=1).to_dict())
    assert with_shared.missing("shared.out") is None and with_shared.top_k == 2
    cfg = T.Ernie4_5_MoeConfig(**kw, moe_num_shared_experts=0)
    assert "no shared expert" in (spec_from_config(cfg.to_dict()).missing("shared.out") or "")
    from patchc.runtime.adapters import adapter_for
    from patchc.runtime.compat import VERSION

    if VERSION < SINCE["ernie4_5_moe"][0]:  # the runtime maps the newer module layout only
        return
    assert "no shared expert" in (adapter_for(T.AutoModelForCausalLM.from_config(cfg))
                                  .missing("shared.out") or "")


def test_every_row_builds_a_spec_from_its_default_config() -> None:
    for family in FAMILIES:
        if lookup(family) is None:  # needs a newer transformers (SINCE); tested below
            continue
        s = spec_from_config(_default_config(family))
        assert s.family == family and s.n_layers > 0 and s.d_head > 0


# ---- expert sites through check ---------------------------------------------------------------

SPEC = """model "m"
data d = [{"a": "x y z", "b": "x y w", "ans": "z"}]
run A = d.a
run B = d.b
metric m = logit(d.ans)
"""


def _check(body: str, config: T.PretrainedConfig):
    from patchc.compiler.check import check
    from patchc.compiler.parse import parse

    return check(parse(SPEC + body, "moe.patch"), spec_from_config(config.to_dict()),
                 tokenizer=None)


MIXTRAL = T.MixtralConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=16, num_local_experts=4,
                          num_experts_per_tok=2)


def test_expert_sites_sweep_the_expert_column(newest) -> None:
    checked = _check("swap L*.E*.out from A into B measure m as ex\n"
                     "ablate L1.E$e.post in B measure m as post\n"
                     "swap L0.router @ last from A into B measure m as route\n", MIXTRAL)
    from patchc.compiler.dump import dump_ir
    from patchc.compiler.lower import lower

    text = dump_ir(lower(checked))
    assert "L1.E3.out" in text and "L0.router" in text and "L1.E0.post" in text


@pytest.mark.parametrize(("body", "code", "words"), [
    ("swap L0.E4.out from A into B measure m", "E202", "4 experts (E0..E3)"),
    ("swap L0.mlp.post from A into B measure m", "E209", "mixture of experts"),
    ("swap L0.shared.out from A into B measure m", "E209", "no shared expert"),
])
def test_expert_site_errors(body: str, code: str, words: str, newest) -> None:
    from patchc.compiler.errors import SpecErrors

    with pytest.raises(SpecErrors) as ei:
        _check(body + "\n", MIXTRAL)
    assert any(e.code == code and words in e.message for e in ei.value.errors), ei.value


def test_an_expert_named_twice_counts_once(newest) -> None:
    """Expert sets count against the experts (8 here), not the heads (4)."""
    eight = T.MixtralConfig(**{**MIXTRAL.to_dict(), "num_local_experts": 8})
    checked = _check("swap L0.E{1, -7}.out from A into B measure m as t\n"
                     "swap L0.E{0, -4}.out from A into B measure m as u\n", eight)
    [w] = [w for w in checked.warnings if w.code == "W303"]
    assert w.message == "E1 named twice in E{1, -7}: each counts once" and w.span.line == 6


def test_dense_model_has_no_router() -> None:
    from patchc.compiler.errors import SpecErrors

    llama = T.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4)
    with pytest.raises(SpecErrors) as ei:
        _check("swap L0.router from A into B measure m\n", llama)
    assert any(e.code == "E209" and "no mixture-of-experts" in e.message
               for e in ei.value.errors)


def test_one_norm_blocks_have_no_ln2_scale() -> None:
    phi = spec_from_config(T.PhiConfig(num_hidden_layers=2, hidden_size=32,
                                       num_attention_heads=4).to_dict())
    assert "ln1.scale" in (phi.missing("ln2.scale") or "")
    falcon = T.FalconConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                            num_kv_heads=2).to_dict()
    assert spec_from_config({**falcon, "new_decoder_architecture": False}).missing("ln2.scale")
    assert spec_from_config({**falcon, "new_decoder_architecture": True}).missing(
        "ln2.scale") is None
    assert spec_from_config({**falcon, "parallel_attn": False}).missing("ln2.scale") is None
    olmo2 = spec_from_config(T.Olmo2Config(num_hidden_layers=2, hidden_size=32,
                                           num_attention_heads=4).to_dict())
    from patchc.compiler.lower_ops import norm_sites

    assert {s.kind for s in norm_sites(olmo2)} == {"ln_final.scale"}
    assert {s.kind for s in norm_sites(phi)} == {"ln1.scale", "ln_final.scale"}


def test_models_doc_lists_every_family() -> None:
    """docs/models.md is generated from this table (tools/gen_models_doc.py): in sync."""
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "models.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip() for line in doc.splitlines()
            if line.startswith("| ") and "|" in line[2:]}
    assert set(FAMILIES) <= rows
    assert "**failed" not in doc


@pytest.mark.parametrize(("field", "value"), [
    ("mlp_only_layers", [1]), ("first_k_dense_replace", 1),
    ("mlp_layer_types", ["dense", "sparse"]), ("moe_layer_start_index", 1),
    ("moe_layer_interval", 2), ("moe_layer_end_index", 0),
])
def test_moe_with_dense_layers_is_refused(field: str, value, newest) -> None:
    cfg = T.Qwen2MoeConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                           num_key_value_heads=2).to_dict()
    with pytest.raises(CheckError) as ei:
        spec_from_config({**cfg, field: value})
    assert ei.value.code == "E210" and field in ei.value.message
    assert spec_from_config({**cfg, "mlp_layer_types": ["sparse", "sparse"]}).n_experts


@pytest.mark.parametrize("family", sorted(SINCE))
def test_each_since_row_is_refused_before_its_release(family: str, monkeypatch) -> None:
    """Every family of SINCE: refused (E210 naming the release) on the release before it,
    supported from it on."""
    import patchc.compiler.families as F

    (major, minor), _ = F.SINCE[family]
    try:
        config = _default_config(family)
    except ValueError:  # a model type the installed transformers does not know
        config = None
    monkeypatch.setattr(F, "installed_transformers", lambda: (major, minor - 1))
    with pytest.raises(CheckError) as e:
        spec_from_config(config or {"model_type": family})
    assert e.value.code == "E210" and f"transformers {major}.{minor}" in str(e.value)
    monkeypatch.setattr(F, "installed_transformers", lambda: (major, minor))
    assert F.lookup(family) is not None
    if config is not None:
        assert spec_from_config(config).n_layers > 0


def test_a_family_newer_than_the_installed_transformers_is_refused_with_why(monkeypatch):
    """GPT-J before transformers 5.24 computes attention in its own `_attn`: check refuses it
    (E210 naming the release) instead of tapping heads that never see the hooks."""
    import patchc.compiler.families as F
    from patchc.compiler.errors import CheckError

    monkeypatch.setattr(F, "installed_transformers", lambda: (5, 15))
    assert F.lookup("gptj") is None and F.lookup("llama") is not None
    with pytest.raises(CheckError) as e:
        spec_from_config(T.GPTJConfig(n_layer=2, n_embd=32, n_head=4).to_dict())
    assert e.value.code == "E210" and "transformers 5.24" in str(e.value)
    monkeypatch.setattr(F, "installed_transformers", lambda: (5, 24))
    assert F.lookup("gptj") is not None


@pytest.mark.parametrize("op", [
    "attribute L*.E*.out from a into b using relp  measure m",
    "attribute * -> logits from a into b using relp  measure m",
    "compare atp, relp against swap on L*.mlp.out from a into b  measure m",
])
def test_relp_on_a_mixture_of_experts_is_a_check_error(op: str) -> None:
    """RelP's rules replace the MLP activation's backward, which experts do not have: check
    says so at the method, before any weight is loaded."""
    from patchc.compiler.check import check
    from patchc.compiler.errors import SpecErrors
    from patchc.compiler.families import lookup
    from patchc.compiler.parse import parse

    if lookup("mixtral") is None:
        pytest.skip("mixtral is mapped from transformers 5.0 on")
    moe = spec_from_config(T.MixtralConfig(num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=2, hidden_size=32,
                                           intermediate_size=48, num_local_experts=4).to_dict())
    text = ('model "m"\nrun a = ["x y"]\nrun b = ["x z"]\nmetric m = logit(id(1))\n' + op
            + "\n")
    with pytest.raises(SpecErrors) as info:
        check(parse(text, "case.patch"), model=moe, tokenizer=None)
    (e,) = [e for e in info.value.errors if e.code == "E357"]
    assert e.line == 5 and text.splitlines()[4][e.col - 1:].startswith("relp")
    plain = "eap" if "->" in op else "ig" if "compare" in op else "atp"
    check(parse(text.replace("relp", plain), "case.patch"), model=moe, tokenizer=None)


@pytest.mark.parametrize(("family", "method", "words"), [
    ("bitnet", "relp", "a norm sits between its MLP's gated product"),
    ("bloom", "relp(ah=true)", "bloom has none to detach"),
    ("gpt_neo", "relp(ah=true)", "gpt_neo has none to detach"),
])
def test_relp_where_its_rules_do_not_fit_is_a_check_error(family: str, method: str,
                                                          words: str) -> None:
    """BitNet's MLP sub-norm sits where the half-rule goes; the AH-rule needs patterns."""
    from patchc.compiler.check import check
    from patchc.compiler.errors import SpecErrors
    from patchc.compiler.families import lookup
    from patchc.compiler.parse import parse

    if lookup(family) is None:
        pytest.skip(f"{family} needs a newer transformers")
    spec = spec_from_config(_default_config(family))
    text = ('model "m"\nrun a = ["x y"]\nrun b = ["x z"]\nmetric m = logit(id(1))\n'
            f"attribute L*.resid_pre from a into b using {method}  measure m\n")
    with pytest.raises(SpecErrors) as info:
        check(parse(text, "case.patch"), model=spec, tokenizer=None)
    (e,) = [e for e in info.value.errors if e.code == "E357"]
    assert e.line == 5 and words in e.message
    check(parse(text.replace(method, "atp"), "case.patch"), model=spec, tokenizer=None)
