"""Where things are in a loaded decoder-only causal LM, found from its module tree.

HF families name their parts from a small vocabulary (`self_attn`/`attn`/`attention`,
`q_proj`/`c_attn`/`query_key_value`, `input_layernorm`/`ln_1`, `gate_proj`/`fc1`/`c_fc`, ...).
`find_structure` looks those names up on the model's first block and records the dotted path of
each part, relative to a block; the family table (compiler/families.py) supplies what names
cannot say (norm kind, the head layout of a fused projection, post-norms). A part that cannot be
found leaves its sites unavailable with a message naming the module that was searched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from patchc.compiler.errors import RuntimeInterventionError
from patchc.compiler.families import Family

LAYER_LISTS = ("layers", "h", "blocks", "decoder.layers", "transformer.blocks")
FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "layer_norm",
               "decoder.final_layer_norm")
ATTN = ("self_attn", "attn.attention", "attn", "attention", "self_attention")  # GPT-Neo nests
MLP = ("mlp", "feed_forward", "block_sparse_moe", "ffn")
LN1 = ("input_layernorm", "ln_1", "ln_attn", "norm_1", "self_attn_layer_norm",
       "attention_layernorm", "attention_norm")
LN2 = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2", "ln_mlp", "norm_2",
       "final_layer_norm", "feedforward_layernorm", "ffn_norm", "pre_mlp_layernorm")
# (and post_attention_layernorm in post-norm families; post_norm1/2: HyperCLOVA X peri-norms)
POST_ATTN = ("post_self_attn_layernorm", "post_norm1")
POST_MLP = ("post_feedforward_layernorm", "post_mlp_layernorm", "post_norm2")
SEPARATE_QKV = (("q_proj", "k_proj", "v_proj"),)
FUSED_QKV = ("qkv_proj", "c_attn", "query_key_value", "Wqkv")
O_PROJ = ("o_proj", "c_proj", "dense", "out_proj")
GATE = ("gate_proj",)
FUSED_GATE_UP = ("gate_up_proj",)
UP = ("up_proj", "c_fc", "fc1", "fc_in", "dense_h_to_4h")
DOWN = ("down_proj", "c_proj", "fc2", "fc_out", "dense_4h_to_h")
ACT = ("act_fn", "act", "activation_fn", "gelu_impl", "activation")
ROUTER = ("gate", "router")


@dataclass(frozen=True)
class Structure:
    """Dotted paths of a block's parts (relative to the block; None: the block has none)."""

    layers: str
    final_norm: str
    attn: str
    o_proj: str
    q: str | None = None  # separate projections
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # one fused projection
    mlp: str | None = None  # None: the MLP's parts sit on the block (OPT)
    mlp_out: str = ""  # the module whose output the block adds as the MLP's contribution
    up: str | None = None  # the un-gated first projection, or `up` of a gated MLP
    gate: str | None = None
    gate_up: str | None = None  # fused [gate | up]
    down: str | None = None
    act: str | None = None
    ln1: str | None = None
    ln2: str | None = None
    post_attn: str | None = None
    attn_out: str | None = None  # what the block adds, where it is not attn/post_attn (Bloom)
    post_mlp: str | None = None
    router: str | None = None  # mixture of experts
    experts: str | None = None
    shared: str | None = None
    shared_gate: str | None = None
    problems: dict[str, str] = field(default_factory=dict)  # site kind -> what was not found


def get(root: nn.Module, path: str | None) -> nn.Module | None:
    """The submodule at a dotted path (None for a missing path)."""
    if not path:
        return None
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _first(root: nn.Module, names: tuple[str, ...], prefix: str = "") -> str | None:
    for name in names:
        path = f"{prefix}.{name}" if prefix else name
        if get(root, path) is not None:
            return path
    return None


def _children(module: nn.Module) -> str:
    return ", ".join(n for n, _ in module.named_children()) or "none"


def find_structure(base: nn.Module, fam: Family, n_layers: int, parallel: bool) -> Structure:
    """The structure of a decoder stack `base` (the model's base_model)."""
    layers = _first(base, LAYER_LISTS)
    if layers is None or not isinstance(get(base, layers), nn.ModuleList):
        raise RuntimeInterventionError(
            "E401", f"cannot find the list of blocks in {type(base).__name__} (looked for "
                    f"{', '.join(LAYER_LISTS)}; it has {_children(base)})")
    block = get(base, layers)[0]  # type: ignore[index]
    if len(get(base, layers)) != n_layers:  # type: ignore[arg-type]
        raise RuntimeInterventionError(
            "E401", f"{type(base).__name__}.{layers} has {len(get(base, layers))} blocks, the "
                    f"config says {n_layers}")
    final = _first(base, FINAL_NORMS)
    attn = _first(block, ATTN)
    if final is None or attn is None:
        what = "final norm" if final is None else f"attention module of {type(block).__name__}"
        where = base if final is None else block
        raise RuntimeInterventionError(
            "E401", f"cannot find the {what} (it has {_children(where)})")
    problems: dict[str, str] = {}
    parts: dict[str, str | None] = {"layers": layers, "final_norm": final, "attn": attn}
    parts["o_proj"] = _first(block, O_PROJ, attn)
    if parts["o_proj"] is None:
        raise RuntimeInterventionError(
            "E401", f"cannot find the attention output projection of {type(get(block, attn))}"
                    f" (it has {_children(get(block, attn))})")  # type: ignore[arg-type]
    if all(get(block, f"{attn}.{n}") is not None for n in SEPARATE_QKV[0]):
        parts.update(q=f"{attn}.q_proj", k=f"{attn}.k_proj", v=f"{attn}.v_proj")
    else:
        parts["qkv"] = _first(block, FUSED_QKV, attn)
        if parts["qkv"] is None:
            why = f"no q/k/v projection found in {type(get(block, attn)).__name__}"
            problems.update({k: why for k in ("q", "k", "v", "attn.q", "attn.k", "attn.v")})
    _find_norms(block, fam, parts, parallel)
    _find_mlp(block, fam, parts, problems)
    return Structure(**parts, problems=problems)  # type: ignore[arg-type]


def _find_norms(block: nn.Module, fam: Family, parts: dict, parallel: bool) -> None:
    parts["ln1"] = _first(block, LN1)
    parts["post_mlp"] = _first(block, POST_MLP)
    if fam.post_norms:  # post_attention_layernorm normalizes the attention output (Gemma 2)
        parts["post_attn"] = _first(block, ("post_attention_layernorm", *POST_ATTN))
        parts["ln2"] = _first(block, tuple(n for n in LN2 if n != "post_attention_layernorm"))
    else:
        parts["post_attn"] = _first(block, POST_ATTN)
        parts["ln2"] = _first(block, LN2)
    if "attn" in fam.residual_inside:  # attention adds the residual itself (Bloom)
        parts["attn_out"] = parts["o_proj"]
    if parts["ln2"] is None and parts["ln1"] is not None and parallel:
        parts["ln2"] = parts["ln1"]  # one norm feeds both (GPT-J, Phi, Cohere, Falcon-7B)


def _find_mlp(block: nn.Module, fam: Family, parts: dict, problems: dict) -> None:
    mlp = _first(block, MLP)
    parts["mlp"] = mlp
    parts["mlp_out"] = mlp or ""
    if fam.moe:
        assert mlp is not None
        parts["router"] = _first(block, ROUTER, mlp)
        parts["experts"] = _first(block, ("experts",), mlp)
        parts["shared"] = _first(block, ("shared_expert", "shared_experts", "shared_mlp"), mlp)
        parts["shared_gate"] = _first(block, ("shared_expert_gate",), mlp)
        if fam.shared_expert and parts["shared"] is None:  # configured without one (ERNIE)
            problems["shared.out"] = f"no shared expert in {type(get(block, mlp)).__name__}"
        return
    prefix = mlp or ""
    parts["down"] = _first(block, DOWN, prefix)
    parts["act"] = _first(block, ACT, prefix)
    if fam.gated and get(block, _join(prefix, "gate_up_proj")) is not None:
        parts["gate_up"] = _join(prefix, "gate_up_proj")
    elif fam.gated and get(block, _join(prefix, "gate_proj")) is not None:
        parts["gate"] = _join(prefix, "gate_proj")
        parts["up"] = _first(block, ("up_proj",), prefix)
    else:
        parts["up"] = _first(block, UP, prefix)
    if mlp is None:  # no one module an edge's mlp.in receiver could feed (receivers.py)
        problems["mlp.in"] = "the MLP's layers sit on the block, not in one module"
    if mlp is None or "mlp" in fam.residual_inside:
        # The MLP's parts sit on the block (OPT), or the MLP adds the residual itself (Bloom,
        # MPT): its contribution is the down projection's output.
        parts["mlp_out"] = parts["down"] or ""
    if parts["down"] is None or not (parts.get("up") or parts.get("gate_up")):
        why = f"no MLP projections found in {type(get(block, prefix) or block).__name__}"
        problems.update({k: why for k in ("mlp.pre", "mlp.post", "mlp.out")})


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
