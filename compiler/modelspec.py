"""ModelSpec: the shape of a model, read from its HF config alone (no weights, no torch).

`check.py` validates sites against it before anything is loaded; the runtime adapters build
the same ModelSpec from a loaded model's config, and both read the one family table in
families.py, so the two can never disagree.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import CheckError

if TYPE_CHECKING:
    from .dictionaries import DictInfo
from .paths import near, shown
from .families import SINGLE_NORM, Family, normalize
from .family_inference import family_for, why_refused


@dataclass(frozen=True, slots=True)
class ModelSpec:
    family: str  # normalized model_type: a key of families.FAMILIES
    n_layers: int
    n_heads: int
    n_kv_heads: int  # == n_heads without grouped-query attention
    d_model: int
    d_head: int
    d_mlp: int
    vocab_size: int
    n_ctx: int  # maximum positions
    parallel_attn: bool  # attention and MLP read the same residual (NeoX, Phi-2): no resid_mid
    gated_mlp: bool  # act(gate(x)) * up(x)
    norm: str  # "layernorm" or "rmsnorm"
    positional: str  # "learned" or "rotary"
    exposes_pattern: bool = True  # False under a fused kernel forced by the config
    n_experts: int = 0  # a mixture-of-experts MLP: its experts (d_mlp is one expert's width)
    top_k: int = 0  # experts per token
    unavailable: tuple[tuple[str, str], ...] = ()  # (site kind, why this model lacks it)
    inferred: bool = False  # its family is not in the table: inferred from the config
    # Dictionaries a spec attaches (check_dicts.py adds them): their latents are sites.
    dictionaries: tuple["DictInfo", ...] = ()

    def dictionary(self, name: str) -> "DictInfo | None":
        """The attached dictionary called `name`, if any."""
        return next((d for d in self.dictionaries if d.name == name), None)

    def missing(self, kind: str) -> str | None:
        """Why this model has no `kind` site (None: it has one)."""
        return dict(self.unavailable).get(kind)

    @property
    def d_attn(self) -> int:
        return self.n_heads * self.d_head

    @property
    def d_kv(self) -> int:
        return self.n_kv_heads * self.d_head

    @property
    def grouped_query(self) -> bool:
        return self.n_kv_heads != self.n_heads

    def kv_head(self, head: int) -> int:
        """The kv head that query head `head` reads under grouped-query attention."""
        return head // (self.n_heads // self.n_kv_heads)

    def dim_of(self, attr: str) -> int:
        """Size of a site kind's feature axis, by the `SiteKind.dim` attribute name."""
        if attr == "1":
            return 1
        return int(getattr(self, attr))


# ---------------------------------------------------------------------------------------------
# Building a ModelSpec from an HF config dict (config.json, or `SomeConfig(...).to_dict()`)
# ---------------------------------------------------------------------------------------------

# Attention implementations whose kernels never materialize the pattern. "sdpa" and "eager"
# are fine: the runtime registers its own attention function in their place.
_FUSED_PREFIX = "flash_attention"


def _get(config: dict[str, Any], names: tuple[str, ...], family: str) -> int:
    for name in names:
        value = config.get(name)
        if value is not None:
            return _valid_size(value, name, family)
    raise CheckError("E211", f"{family} config has no '{names[0]}' field, which patchc needs")


def _opt_int(config: dict[str, Any], name: str, family: str = "model") -> int | None:
    value = config.get(name)
    return None if value is None else _valid_size(value, name, family)


# Far above any real model; a config beyond it is corrupt (and would make check's tables huge).
_MAX_SIZE = 1 << 24


def _valid_size(value: Any, name: str, family: str) -> int:
    """A count or size from the config: a whole number from 1 up. `"four"`, `0`, `-2`, `1.5`
    or `true` is a corrupt config (E214), not a reason for check to crash later."""
    ok = isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, float) and value.is_integer())
    if not ok or not 1 <= value <= _MAX_SIZE:
        raise CheckError("E214", f"{family} config: '{name}' must be a whole number from 1 to "
                         f"{_MAX_SIZE}; got {json.dumps(value)[:40]}")
    return int(value)


def _n_kv_heads(config: dict[str, Any], fam: Family, family: str, n_heads: int) -> int:
    if fam.kv == "multi_query":
        return 1 if config.get("multi_query", True) else n_heads
    if fam.kv == "falcon":
        if config.get("new_decoder_architecture"):
            return _opt_int(config, "num_kv_heads", family) or n_heads
        return 1 if config.get("multi_query", True) else n_heads
    # Without `num_key_value_heads` (or with it null: older Phi/Llama configs) there is no GQA.
    return _opt_int(config, "num_key_value_heads", family) or n_heads


def _d_mlp(config: dict[str, Any], fam: Family, family: str, d_model: int) -> int:
    names = fam.names_for("d_mlp")
    if fam.mlp_default_4x:
        given = [v for v in (_opt_int(config, n, family) for n in names) if v is not None]
        return given[0] if given else 4 * d_model
    return _get(config, names, family)


def _parallel(config: dict[str, Any], fam: Family) -> bool:
    if fam.parallel_key is None:
        return fam.parallel
    return bool(config.get(fam.parallel_key, fam.parallel))


def _moe(config: dict[str, Any], fam: Family, family: str) -> tuple[int, int, int]:
    """(experts, experts per token, expert width) of a mixture-of-experts family."""
    if not fam.moe:
        return 0, 0, 0
    n_key, width_key = fam.moe_names
    return (_get(config, (n_key, "num_experts", "num_local_experts"), family),
            _get(config, ("num_experts_per_tok", "moe_k", "moe_topk", "top_k"), family),
            _get(config, (width_key, "intermediate_size"), family))


# Config fields that count a mixture of experts' shared experts (0: the family's optional one
# is absent).
_SHARED_COUNTS = ("moe_num_shared_experts", "num_shared_experts", "n_shared_experts")


def _dense_layers(config: dict[str, Any]) -> str | None:
    """The config field that makes some layers of a mixture of experts dense, if one does."""
    if config.get("mlp_only_layers"):
        return "mlp_only_layers"
    if (config.get("decoder_sparse_step") or 1) != 1:
        return "decoder_sparse_step"
    if config.get("first_k_dense_replace"):
        return "first_k_dense_replace"
    if config.get("num_dense_layers"):
        return "num_dense_layers"
    if any(t != "sparse" for t in config.get("mlp_layer_types") or ()):
        return "mlp_layer_types"
    # ERNIE 4.5: experts from moe_layer_start_index to moe_layer_end_index (-1: the last layer),
    # every moe_layer_interval-th layer
    if config.get("moe_layer_start_index") or (config.get("moe_layer_interval") or 1) != 1:
        return "moe_layer_start_index" if config.get("moe_layer_start_index") else \
            "moe_layer_interval"
    end = config.get("moe_layer_end_index")
    if end not in (None, -1) and end < (config.get("num_hidden_layers") or 0) - 1:
        return "moe_layer_end_index"
    return None


def spec_from_config(config: dict[str, Any], fam: Family | None = None) -> ModelSpec:
    """The ModelSpec of an HF config dict; CheckError E210 (unsupported) or E211 (missing).
    `fam`: the family row to read it with (default: the table's, or one inferred for a
    model_type the table does not list: compiler/family_inference.py)."""
    raw_type = config.get("model_type")
    if not raw_type:
        raise CheckError("E211", "config has no 'model_type' field, which patchc needs")
    family = normalize(raw_type)
    fam = fam or family_for(family, config)
    if fam is None:
        raise CheckError("E210", why_refused(raw_type, config))
    if fam.moe and _dense_layers(config):
        raise CheckError("E210", f"{family} with dense MLP layers among the expert layers "
                         f"({_dense_layers(config)}) is not supported: patchc's sites assume "
                         "every layer has the same MLP")
    n_layers = _get(config, fam.names_for("n_layers"), family)
    n_heads = _get(config, fam.names_for("n_heads"), family)
    d_model = _get(config, fam.names_for("d_model"), family)
    d_mlp = _d_mlp(config, fam, family, d_model)
    n_kv_heads = _n_kv_heads(config, fam, family, n_heads)
    if n_heads % n_kv_heads:
        raise CheckError(
            "E211",
            f"{family} config: num_key_value_heads={n_kv_heads} does not divide "
            f"{fam.names_for('n_heads')[0]}={n_heads}",
        )
    d_head = _opt_int(config, "head_dim", family) or d_model // n_heads
    if not _opt_int(config, "head_dim", family) and d_model % n_heads:
        raise CheckError("E214", f"{family} config: {fam.names_for('d_model')[0]}={d_model} "
                         f"does not divide into {n_heads} heads (and no head_dim is given)")
    if d_head < 1:
        raise CheckError("E214", f"{family} config: {n_heads} heads of a {d_model}-wide model "
                         "leave no width per head")
    impl = config.get("_attn_implementation") or config.get("attn_implementation") or ""
    n_ctx_names = fam.names_for("n_ctx")
    if fam.n_ctx_default and not any(config.get(n) for n in n_ctx_names):
        n_ctx = fam.n_ctx_default
    else:
        n_ctx = _get(config, n_ctx_names, family)
    n_experts, top_k, d_expert = _moe(config, fam, family)
    missing = fam.missing()
    if fam.shared_expert and any(config.get(k) == 0 for k in _SHARED_COUNTS):
        missing.setdefault("shared.out", "the model has no shared expert (configured with 0)")
    if family == "falcon" and _parallel(config, fam) and not (
            config.get("new_decoder_architecture")
            and (config.get("num_ln_in_parallel_attn") or 2) == 2):
        missing.setdefault(*SINGLE_NORM)  # Falcon-7B style: one input_layernorm
    positional = fam.positional
    if family == "falcon" and config.get("alibi"):
        positional = "alibi"
    return ModelSpec(
        family=family,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_model=d_model,
        d_head=d_head,
        d_mlp=d_expert if fam.moe else d_mlp,
        vocab_size=_get(config, ("vocab_size",), family),
        n_ctx=n_ctx,
        parallel_attn=_parallel(config, fam),
        gated_mlp=fam.gated,
        norm=fam.norm,
        positional=positional,
        exposes_pattern=not str(impl).startswith(_FUSED_PREFIX),
        n_experts=n_experts,
        top_k=top_k,
        unavailable=tuple(sorted(missing.items())),
        inferred=fam.inferred,
    )


# ---------------------------------------------------------------------------------------------
# Finding the config: a local directory, or a hub id (config.json only, never weights)
# ---------------------------------------------------------------------------------------------


def _looks_local(model_id: str) -> bool:
    """A path, not a hub id: absolute, ./ or ~ prefixed, backslashes, or more than one '/'."""
    return (
        os.path.isabs(model_id)
        or model_id.startswith((".", "~"))
        or "\\" in model_id
        or model_id.count("/") > 1
    )


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckError("E212", f"could not read model config {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckError("E212", f"model config {path} is not a JSON object")
    return data


def load_config(model_id: str, revision: str | None = None, base_dir: str = ".") -> dict[str, Any]:
    """The config dict of a local model directory or (config.json only) of a hub model."""
    path = os.path.join(base_dir, os.path.expanduser(model_id))
    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            sae = os.path.isfile(os.path.join(path, "cfg.json"))  # SAELens' dictionary layout
            raise CheckError("E212", f"model directory {shown(path)} has no config.json",
                             hint="this folder is a dictionary (cfg.json): attach it to a "
                             'model with `sae NAME = "FOLDER" at SITE`' if sae else None)
        return _read_json(config_path)
    if os.path.exists(path) or _looks_local(model_id):
        raise CheckError("E212", f"no model directory at {shown(path)} (looked for "
                         f"{shown(path)}/config.json)", hint=near(model_id, path, base_dir))
    # Lazy: huggingface_hub is only needed for hub ids, and `patchc check` must start fast.
    from .hub import fetch

    local = fetch(model_id, "config.json", revision)
    return _read_json(local)


def load_model_spec(
    model_id: str, revision: str | None = None, base_dir: str = "."
) -> ModelSpec:
    """The ModelSpec of a local model directory or hub id, from its config alone."""
    return spec_from_config(load_config(model_id, revision, base_dir))
