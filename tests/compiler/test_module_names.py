"""A HuggingFace module path written as a site (as nnsight and hook users address a model)
is refused with the site that is that module's output in the hint."""

from __future__ import annotations

import pytest
from checkmodels import Models, build

from patchc.compiler.check import check
from patchc.compiler.errors import PatchcError
from patchc.compiler.module_names import site_of_module
from patchc.compiler.parse import parse


@pytest.mark.parametrize("path, site", [
    ("transformer.h.0.attn", "L0.attn.out"),
    ("transformer.h.2.attn.c_proj", "L2.attn.out"),
    ("transformer.h.3.mlp.c_proj", "L3.mlp.out"),
    ("transformer.h.3.mlp.c_fc", "L3.mlp.pre"),
    ("transformer.h.1", "L1.resid_post"),
    ("model.layers.5.self_attn.o_proj", "L5.attn.out"),
    ("model.layers.5.self_attn.q_proj", "L5.attn.q"),
    ("model.layers.5.mlp.down_proj", "L5.mlp.out"),
    ("model.layers.5.mlp", "L5.mlp.out"),
    ("gpt_neox.layers.0.attention.dense", "L0.attn.out"),
    ("blocks.0.attn.hook_result", "L0.H*.out"),
    ("transformer.wte", "embed"),
    ("model.embed_tokens", "embed"),
    ("lm_head", "logits"),
    ("model.layers.5.input_layernorm", None),  # no site is that module's output
    ("L0.attn.c_proj", None),
])
def test_site_of_module(path, site):
    assert site_of_module(path) == site


@pytest.fixture(scope="module")
def models() -> Models:
    return build()


def test_module_path_as_a_site_hints_the_site(models: Models):
    text = ('model "./gpt2"\nrun a = ["When Mary went"]\n'
            "ablate transformer.h.1.mlp in a with zero  measure logit(\" Mary\")\n")
    with pytest.raises(PatchcError) as info:
        check(parse(text, "case.patch", models.spec_dir()))
    [e] = info.value.errors
    assert (e.code, e.line, e.col) == ("E200", 3, 8)
    assert "the output of transformer.h.1.mlp is L1.mlp.out" in (e.hint or "")
