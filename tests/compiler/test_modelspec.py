"""ModelSpec from HF configs: every supported family, GQA, loading, and no torch on import."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import transformers as T  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from patchc.compiler.errors import CheckError  # noqa: E402
from patchc.compiler.families import FAMILIES  # noqa: E402
from patchc.compiler.modelspec import (  # noqa: E402
    ModelSpec,
    load_config,
    load_model_spec,
    spec_from_config,
)

TINY = dict(vocab_size=101)


def spec(**kw: object) -> ModelSpec:
    """A ModelSpec with defaults for the fields a case does not care about (the sites a
    family lacks come from the family table)."""
    missing = FAMILIES[str(kw["family"])].missing()
    base = dict(n_kv_heads=kw.get("n_heads"), exposes_pattern=True,
                unavailable=tuple(sorted(missing.items())))
    return ModelSpec(**{**base, **kw})  # type: ignore[arg-type]


CASES = [
    (
        T.GPT2Config(n_layer=3, n_head=4, n_embd=32, n_positions=64, **TINY),
        spec(family="gpt2", n_layers=3, n_heads=4, d_model=32, d_head=8, d_mlp=128,
             vocab_size=101, n_ctx=64, parallel_attn=False, gated_mlp=False,
             norm="layernorm", positional="learned"),
    ),
    (
        T.GPT2Config(n_layer=2, n_head=2, n_embd=16, n_inner=40, n_positions=32, **TINY),
        spec(family="gpt2", n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=40,
             vocab_size=101, n_ctx=32, parallel_attn=False, gated_mlp=False,
             norm="layernorm", positional="learned"),
    ),
    (
        T.LlamaConfig(num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                      hidden_size=64, intermediate_size=96, max_position_embeddings=128, **TINY),
        spec(family="llama", n_layers=2, n_heads=8, n_kv_heads=2, d_model=64, d_head=8,
             d_mlp=96, vocab_size=101, n_ctx=128, parallel_attn=False, gated_mlp=True,
             norm="rmsnorm", positional="rotary"),
    ),
    (
        T.GPTNeoXConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32,
                        intermediate_size=128, max_position_embeddings=64,
                        use_parallel_residual=True, **TINY),
        spec(family="gpt_neox", n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=128,
             vocab_size=101, n_ctx=64, parallel_attn=True, gated_mlp=False,
             norm="layernorm", positional="rotary"),
    ),
    (
        T.GPTNeoXConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32,
                        intermediate_size=128, max_position_embeddings=64,
                        use_parallel_residual=False, **TINY),
        spec(family="gpt_neox", n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=128,
             vocab_size=101, n_ctx=64, parallel_attn=False, gated_mlp=False,
             norm="layernorm", positional="rotary"),
    ),
    (
        T.Qwen2Config(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      hidden_size=32, intermediate_size=48, max_position_embeddings=256, **TINY),
        spec(family="qwen2", n_layers=3, n_heads=4, n_kv_heads=2, d_model=32, d_head=8,
             d_mlp=48, vocab_size=101, n_ctx=256, parallel_attn=False, gated_mlp=True,
             norm="rmsnorm", positional="rotary"),
    ),
    (
        T.MistralConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                        hidden_size=32, intermediate_size=64, max_position_embeddings=512,
                        head_dim=None, **TINY),
        spec(family="mistral", n_layers=2, n_heads=4, n_kv_heads=1, d_model=32, d_head=8,
             d_mlp=64, vocab_size=101, n_ctx=512, parallel_attn=False, gated_mlp=True,
             norm="rmsnorm", positional="rotary"),
    ),
    (
        # Gemma: explicit head_dim, so n_heads * d_head (4 * 16) != d_model (48).
        T.GemmaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                      head_dim=16, hidden_size=48, intermediate_size=64,
                      max_position_embeddings=128, **TINY),
        spec(family="gemma", n_layers=2, n_heads=4, d_model=48, d_head=16, d_mlp=64,
             vocab_size=101, n_ctx=128, parallel_attn=False, gated_mlp=True,
             norm="rmsnorm", positional="rotary"),
    ),
    (
        T.Gemma2Config(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16, hidden_size=32, intermediate_size=64,
                       max_position_embeddings=128, **TINY),
        spec(family="gemma2", n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, d_head=16,
             d_mlp=64, vocab_size=101, n_ctx=128, parallel_attn=False, gated_mlp=True,
             norm="rmsnorm", positional="rotary"),
    ),
    (
        T.Phi3Config(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                     hidden_size=32, intermediate_size=64, max_position_embeddings=256,
                     original_max_position_embeddings=256, pad_token_id=0, **TINY),
        spec(family="phi3", n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=64,
             vocab_size=101, n_ctx=256, parallel_attn=False, gated_mlp=True,
             norm="rmsnorm", positional="rotary"),
    ),
    (
        T.OPTConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, ffn_dim=80,
                    word_embed_proj_dim=32, max_position_embeddings=64, **TINY),
        spec(family="opt", n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=80,
             vocab_size=101, n_ctx=64, parallel_attn=False, gated_mlp=False,
             norm="layernorm", positional="learned"),
    ),
    (
        T.GPTJConfig(n_layer=2, n_head=4, n_embd=32, n_positions=64, rotary_dim=4, **TINY),
        spec(family="gptj", n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=128,
             vocab_size=101, n_ctx=64, parallel_attn=True, gated_mlp=False,
             norm="layernorm", positional="rotary"),
    ),
    (
        T.PhiConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32,
                    intermediate_size=64, max_position_embeddings=64, **TINY),
        spec(family="phi", n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=64,
             vocab_size=101, n_ctx=64, parallel_attn=True, gated_mlp=False,
             norm="layernorm", positional="rotary"),
    ),
]


@pytest.mark.parametrize(("config", "expected"), CASES, ids=lambda x: getattr(x, "family", ""))
def test_families(config: T.PretrainedConfig, expected: ModelSpec) -> None:
    from patchc.compiler.families import lookup

    if lookup(expected.family) is None:  # needs a newer transformers (families.SINCE)
        pytest.skip(f"{expected.family} needs a newer transformers than the one installed")
    got = spec_from_config(config.to_dict())
    assert got == expected
    # the dict that config.json holds gives the same spec
    assert spec_from_config(json.loads(config.to_json_string())) == expected


def test_gqa_kv_head_mapping() -> None:
    s = spec_from_config(CASES[2][0].to_dict())  # llama, 8 query heads over 2 kv heads
    assert s.grouped_query and s.d_attn == 64 and s.d_kv == 16
    assert [s.kv_head(h) for h in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    mistral = spec_from_config(CASES[6][0].to_dict())  # multi-query: one kv head
    assert [mistral.kv_head(h) for h in range(4)] == [0, 0, 0, 0]
    gpt2 = spec_from_config(CASES[0][0].to_dict())
    assert not gpt2.grouped_query and [gpt2.kv_head(h) for h in range(4)] == [0, 1, 2, 3]


def test_gemma_attn_width_differs_from_d_model() -> None:
    s = spec_from_config(CASES[7][0].to_dict())
    assert s.d_attn == 64 and s.d_model == 48


@pytest.mark.parametrize(
    ("impl", "exposes"),
    [("flash_attention_2", False), ("flash_attention_3", False), ("sdpa", True), ("eager", True)],
)
@pytest.mark.parametrize("key", ["_attn_implementation", "attn_implementation"])
def test_exposes_pattern(key: str, impl: str, exposes: bool) -> None:
    cfg = {**CASES[2][0].to_dict(), key: impl}
    assert spec_from_config(cfg).exposes_pattern is exposes


def test_unsupported_family() -> None:
    cfg = T.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4).to_dict()
    with pytest.raises(CheckError) as ei:
        spec_from_config(cfg)
    assert ei.value.code == "E210"
    assert "'bert'" in ei.value.message and "llama" in ei.value.message


@pytest.mark.parametrize(("family", "field"), [(0, "n_layer"), (2, "num_attention_heads"),
                                               (10, "ffn_dim")])
def test_missing_field(family: int, field: str) -> None:
    cfg = CASES[family][0].to_dict()
    del cfg[field]
    with pytest.raises(CheckError) as ei:
        spec_from_config(cfg)
    assert ei.value.code == "E211" and f"'{field}'" in ei.value.message


def test_missing_model_type() -> None:
    with pytest.raises(CheckError) as ei:
        spec_from_config({"n_layer": 2})
    assert ei.value.code == "E211" and "model_type" in ei.value.message


@settings(max_examples=40, deadline=None)
@given(
    n_layers=st.integers(1, 6),
    n_heads=st.integers(1, 8),
    d_head=st.integers(1, 16),
    n_inner=st.one_of(st.none(), st.integers(1, 256)),
    n_ctx=st.integers(1, 2048),
    vocab=st.integers(1, 1000),
)
def test_gpt2_random(n_layers: int, n_heads: int, d_head: int, n_inner: int | None, n_ctx: int,
                     vocab: int) -> None:
    d_model = n_heads * d_head
    cfg = T.GPT2Config(n_layer=n_layers, n_head=n_heads, n_embd=d_model, n_inner=n_inner,
                       n_positions=n_ctx, vocab_size=vocab)
    s = spec_from_config(cfg.to_dict())
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_model, s.d_head) == (
        n_layers, n_heads, n_heads, d_model, d_head)
    assert s.d_mlp == (n_inner or 4 * d_model)
    assert (s.n_ctx, s.vocab_size, s.parallel_attn, s.gated_mlp) == (n_ctx, vocab, False, False)


@settings(max_examples=40, deadline=None)
@given(
    n_layers=st.integers(1, 6),
    n_kv=st.integers(1, 4),
    group=st.integers(1, 4),
    d_head=st.sampled_from([2, 4, 8, 16]),
    d_mlp=st.integers(1, 256),
    n_ctx=st.integers(1, 4096),
    data=st.data(),
)
def test_llama_random(n_layers: int, n_kv: int, group: int, d_head: int, d_mlp: int,
                      n_ctx: int, data: st.DataObject) -> None:
    n_heads = n_kv * group
    d_model = n_heads * d_head
    cfg = T.LlamaConfig(num_hidden_layers=n_layers, num_attention_heads=n_heads,
                        num_key_value_heads=n_kv, hidden_size=d_model, intermediate_size=d_mlp,
                        max_position_embeddings=n_ctx, vocab_size=97)
    s = spec_from_config(cfg.to_dict())
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_model, s.d_head, s.d_mlp, s.n_ctx) == (
        n_layers, n_heads, n_kv, d_model, d_head, d_mlp, n_ctx)
    assert s.grouped_query == (group > 1)
    h = data.draw(st.integers(0, n_heads - 1))
    assert s.kv_head(h) == h // group and 0 <= s.kv_head(h) < n_kv


def test_load_config_local_dir(tmp_path) -> None:  # noqa: ANN001
    config, expected = CASES[2]
    config.save_pretrained(tmp_path / "tiny")
    assert load_config(str(tmp_path / "tiny"))["model_type"] == "llama"
    # relative ids resolve against base_dir
    assert load_model_spec("tiny", base_dir=str(tmp_path)) == expected
    assert load_model_spec("./tiny", base_dir=str(tmp_path)) == expected


def test_load_config_missing_dir(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(CheckError) as ei:
        load_config(str(tmp_path / "nope"))
    assert ei.value.code == "E212" and "config.json" in ei.value.message
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckError) as ei:
        load_config("empty", base_dir=str(tmp_path))
    assert ei.value.code == "E212" and "config.json" in ei.value.message


def test_load_config_unsupported_family(tmp_path) -> None:  # noqa: ANN001
    T.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4).save_pretrained(
        tmp_path)
    with pytest.raises(CheckError) as ei:
        load_model_spec(str(tmp_path))
    assert ei.value.code == "E210"


def test_hub_id_offline(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(CheckError) as ei:
        load_config("patchc-nonexistent-org/no-such-model-xyz", base_dir=str(tmp_path))
    assert ei.value.code == "E213" and "offline" in ei.value.message
    assert ei.value.hint and "local directory" in ei.value.hint


def test_import_does_not_load_torch() -> None:
    code = ("import patchc.compiler.modelspec, sys; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_width_that_heads_do_not_divide_is_refused() -> None:
    """n_embd 130 over 4 heads read as d_head 32 (128 of the 130 features)."""
    cfg = T.GPT2Config(n_layer=2, n_head=4, n_embd=130).to_dict()
    with pytest.raises(CheckError) as e:
        spec_from_config(cfg)
    assert e.value.code == "E214" and "n_embd=130 does not divide into 4 heads" in e.value.message
    with_dim = {**T.LlamaConfig(num_hidden_layers=2, hidden_size=128,
                                num_attention_heads=4).to_dict(), "hidden_size": 130,
                "head_dim": 32}
    assert spec_from_config(with_dim).d_head == 32  # (an explicit head_dim says so)
