"""A model_type outside the family table, at `check`: a row inferred from the config
(compiler/family_inference.py), W210 at the `model` line; refused, with why, when it cannot
be inferred. (The runtime's check of the inferred layout on the weights:
tests/runtime/test_inferred_families.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchc.compiler import family_inference as families
from patchc.compiler.check import check
from patchc.compiler.errors import CheckError, SpecErrors
from patchc.compiler.family_inference import family_for, infer_family
from patchc.compiler.modelspec import spec_from_config
from patchc.compiler.parse import parse

LLAMA_LIKE = {
    "model_type": "brand_new_lm", "architectures": ["BrandNewForCausalLM"],
    "num_hidden_layers": 3, "hidden_size": 32, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 100,
    "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
}


def test_a_new_llama_like_config_gets_an_inferred_row() -> None:
    spec = spec_from_config(LLAMA_LIKE)
    assert spec.inferred and spec.family == "brand_new_lm"
    assert (spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_mlp) == (3, 4, 2, 64)
    assert (spec.norm, spec.positional, spec.parallel_attn) == ("rmsnorm", "rotary", False)
    assert not spec.missing("mlp.post") and spec.missing("router")


def test_what_the_config_says_of_the_block_is_read() -> None:
    neox_like = {**LLAMA_LIKE, "layer_norm_eps": 1e-5, "use_parallel_residual": True}
    del neox_like["rms_norm_eps"], neox_like["rope_theta"]
    fam = infer_family(neox_like)
    assert fam is not None and (fam.norm, fam.positional, fam.parallel) == \
        ("layernorm", "learned", True)
    no_length = {k: v for k, v in LLAMA_LIKE.items() if k != "max_position_embeddings"}
    assert spec_from_config(no_length).n_ctx == 1 << 20  # (ALiBi-like: no maximum)


def test_a_listed_family_keeps_its_row() -> None:
    fam = family_for("llama", {**LLAMA_LIKE, "model_type": "llama"})
    assert fam is not None and not fam.inferred


@pytest.mark.parametrize(("change", "words"), [
    ({"num_local_experts": 8}, "gives no experts per token"),
    ({"architectures": ["BrandNewForSequenceClassification"]}, "names no `...ForCausalLM`"),
    ({"architectures": None}, "names no `...ForCausalLM`"),
    ({"num_attention_heads": None}, "none of num_attention_heads"),
])
def test_what_cannot_be_inferred_is_refused_with_why(change: dict, words: str,
                                                     monkeypatch) -> None:
    monkeypatch.setattr(families, "installed_transformers", lambda: (5, 24))
    with pytest.raises(CheckError) as e:
        spec_from_config({**LLAMA_LIKE, **change})
    assert e.value.code == "E210" and words in e.value.message
    assert "not in patchc's family table" in e.value.message


def test_a_refused_kind_keeps_its_reason() -> None:
    with pytest.raises(CheckError) as e:
        spec_from_config({**LLAMA_LIKE, "model_type": "bert",
                          "architectures": ["BertForCausalLM"]})
    assert "encoder" in e.value.message


def test_check_warns_at_the_model_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_LIKE))
    text = f'model "{tmp_path}"\nrun r = ["a b c"]\nread L0.resid_pre in r as x\n'
    checked = check(parse(text, "new.patch"), tokenizer=None)
    w = [w for w in checked.warnings if w.code == "W210"]
    assert len(w) == 1 and "brand_new_lm" in w[0].message
    assert (w[0].span.line, w[0].span.col) == (1, 7)  # the model's path
    assert "rmsnorm, rotary positions, sequential blocks" in w[0].message


def test_a_new_mixture_of_experts_reads_its_experts_from_the_config(monkeypatch) -> None:
    moe = {**LLAMA_LIKE, "num_experts": 8, "num_experts_per_tok": 2,
           "moe_intermediate_size": 16, "shared_expert_intermediate_size": 32}
    monkeypatch.setattr(families, "installed_transformers", lambda: (5, 6))
    spec = spec_from_config(moe)
    assert spec.inferred and (spec.n_experts, spec.top_k, spec.d_mlp) == (8, 2, 16)
    assert not spec.missing("router") and not spec.missing("shared.out")
    assert spec.missing("mlp.post")  # (experts have their own: Ll.Ee.post)
    no_shared = {k: v for k, v in moe.items() if k != "shared_expert_intermediate_size"}
    assert spec_from_config(no_shared).missing("shared.out")
    monkeypatch.setattr(families, "installed_transformers", lambda: (5, 5))
    with pytest.raises(CheckError) as e:  # (routers return their logits from 5.6 on)
        spec_from_config(moe)
    assert "from transformers 5.6 on" in e.value.message


def test_check_refuses_what_cannot_be_inferred_at_the_model_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA_LIKE, "num_experts": 8}))
    text = f'model "{tmp_path}"\nrun r = ["a b c"]\nread L0.resid_pre in r as x\n'
    with pytest.raises(SpecErrors) as e:
        check(parse(text, "new.patch"), tokenizer=None)
    err = e.value.errors[0]
    assert err.code == "E210" and (err.span.line, err.span.col) == (1, 7)
