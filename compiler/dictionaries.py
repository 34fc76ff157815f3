"""Dictionaries (sparse autoencoders and transcoders) as the compiler sees them: what a
dictionary's `cfg.json` says, and how its latents are named as IR sites.

A dictionary is an SAELens folder: `cfg.json` and `sae_weights.safetensors` (or a
`sae_weights.npz`, read without pickles). `read_config` reads cfg.json only, never the
weights, so `patchc check` stays cheap; the runtime (runtime/dictionaries.py) loads the
weights and computes encode/decode with the options recorded here.

Latents are sites of their own: `NAME[i]` is the IR site `Site("dict:NAME", features=(i,
i+1))` and `NAME.err` (the site's value minus the reconstruction) is `Site("dict:NAME.err")`.
The `dict:` prefix keeps them apart from the model's own site kinds; the runtime attaches the
dictionary to its host site whenever a hook on one of these kinds is active
(runtime/adapters/dictionary.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from .errors import CheckError, Span
from .ir import Site
from .paths import near, shown

PREFIX = "dict:"
CFG_FILE = "cfg.json"
WEIGHT_FILES = ("sae_weights.safetensors", "sae_weights.npz")

# SAELens architectures patchc computes (sae_lens/saes/*.py), by dictionary kind.
SAE_ARCHITECTURES = ("standard", "topk", "jumprelu")
TRANSCODER_ARCHITECTURES = ("transcoder", "skip_transcoder", "jumprelu_transcoder")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")


class DeclarationFailed(CheckError):
    """A site of a dictionary whose declaration failed: its error is reported there, so
    Context.catch drops this one (no cascade of unknown-site errors)."""


@dataclass(frozen=True, slots=True)
class DictInfo:
    """One declared dictionary: where it is, what it computes, where it attaches.

    `host` is the site whose value the dictionary stands in for (an SAE's own site; a
    transcoder's `Ll.mlp.out`); a transcoder reads the MLP's input (`reads_mlp_input`).
    The encode/decode options are SAELens' cfg.json fields of the same names.
    """

    name: str
    kind: str  # "sae" or "transcoder"
    path: str  # the folder
    weights: str  # the weight file's name inside it ("": none found at check time)
    architecture: str
    d_in: int
    d_sae: int
    d_out: int  # == d_in for an SAE
    host: Site
    apply_b_dec_to_input: bool = False
    normalize_activations: str = "none"
    k: int = 0  # topk
    rescale_acts_by_decoder_norm: bool = False  # topk
    hook_name: str | None = None  # the SAELens/TransformerLens hook it was trained on
    ok: bool = True  # False: its declaration failed (its name is known, nothing else)

    @property
    def reads_mlp_input(self) -> bool:
        return self.kind == "transcoder"

    @property
    def latents(self) -> str:
        """The IR site kind of this dictionary's latents."""
        return latent_kind(self.name)

    @property
    def err(self) -> str:
        """The IR site kind of this dictionary's error term."""
        return err_kind(self.name)


def latent_kind(name: str) -> str:
    return f"{PREFIX}{name}"


def err_kind(name: str) -> str:
    return f"{PREFIX}{name}.err"


def is_dict_kind(kind: str) -> bool:
    return kind.startswith(PREFIX)


# The latents in the host's units, f x (each token's output factor of the decode): a
# read-only kind that `dla` and `lens` read (never written in a spec), so that a latent's
# contribution is (scaled latents) @ W_dec even where an SAE rescales its output per token.
SCALED = ".scaled"


def scaled_kind(name: str) -> str:
    return f"{PREFIX}{name}{SCALED}"


def is_scaled(kind: str) -> bool:
    return is_dict_kind(kind) and kind.endswith(SCALED)


def decoded_site(site: Site) -> Site:
    """What `dla`/`lens` read for a site: a dictionary's latents as scaled latents (same
    features), anything else (an error term, a model site) as itself."""
    if not is_dict_kind(site.kind) or split_kind(site.kind)[1]:
        return site
    return Site(scaled_kind(split_kind(site.kind)[0]), site.layer, site.head, site.features)


def split_kind(kind: str) -> tuple[str, bool]:
    """`dict:s1` -> ("s1", False); `dict:s1.err` -> ("s1", True); the scaled latents
    `dict:s1.scaled` -> ("s1", False)."""
    body = kind[len(PREFIX):]
    if body.endswith(".err"):
        return body[:-4], True
    if body.endswith(SCALED):
        return body[:-len(SCALED)], False
    return body, False


def kind_text(kind: str) -> str:
    """A site kind as a spec writes it: a dictionary's `s1` or `s1.err`, else the kind."""
    if not is_dict_kind(kind):
        return kind
    name, err = split_kind(kind)
    return f"{name}.err" if err else name


def dictionary_files(written: str, base_dir: str) -> list[str]:
    """The files of a dictionary folder as the spec names them (for the manifest's input
    hashes): cfg.json and its weight file (the safetensors one when neither exists)."""
    folder = os.path.join(base_dir, os.path.expanduser(written))
    weights = next((w for w in WEIGHT_FILES if os.path.isfile(os.path.join(folder, w))),
                   WEIGHT_FILES[0])
    return [f"{written.rstrip('/')}/{CFG_FILE}", f"{written.rstrip('/')}/{weights}"]


# ---------------------------------------------------------------------------------------------
# cfg.json


def read_config(path: str, span: Span, written: str | None = None, base_dir: str | None = None
                ) -> tuple[dict[str, Any], str]:
    """cfg.json of the folder `path` as SAELens would default it, and the weight file's
    name ("" when the folder has none yet: `check` needs only cfg.json). Raises CheckError
    E381 (folder or cfg.json missing) or E382 (not a config). `written`
    and `base_dir` (the path as the spec has it, the spec's folder) make a missing folder's
    hint name the path to write."""
    if not os.path.isdir(path):
        raise CheckError("E381", f"no dictionary folder at {shown(path)}", span,
                         hint=near(written or shown(path), path, base_dir)
                         or "a dictionary is a folder with cfg.json "
                         "and sae_weights.safetensors (SAELens' layout)")
    cfg_path = os.path.join(path, CFG_FILE)
    if not os.path.isfile(cfg_path):
        raise CheckError("E381", f"the dictionary folder {path} has no {CFG_FILE}", span)
    # The weights are the run's business (check_dicts.require_weights): "" when absent.
    weights = next((w for w in WEIGHT_FILES if os.path.isfile(os.path.join(path, w))), "")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckError("E382", f"{cfg_path} is not valid JSON: {e}", span) from None
    if not isinstance(cfg, dict):
        raise CheckError("E382", f"{cfg_path} must hold a JSON object", span)
    return with_defaults(cfg), weights


def with_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """SAELens' defaults for configs written before its 6.0 (sae_lens/loading/
    pretrained_sae_loaders.py, handle_pre_6_0_config): renamed keys, `architecture`
    standard, TopK given as activation_fn "topk" with activation_fn_kwargs.k, a boolean
    normalize_activations."""
    out = dict(cfg)
    for old, new in (("hook_point", "hook_name"), ("activation_fn_str", "activation_fn")):
        if old in out and new not in out:
            out[new] = out[old]
    if "architecture" not in out:
        out.setdefault("apply_b_dec_to_input", True)
        kwargs = out.get("activation_fn_kwargs") or {}
        if out.get("activation_fn") == "topk" and isinstance(kwargs, dict) and "k" in kwargs:
            out["architecture"], out["k"] = "topk", kwargs["k"]
        else:
            out["architecture"] = "standard"
    norm = out.get("normalize_activations")
    if isinstance(norm, bool):
        out["normalize_activations"] = "expected_average_only_in" if norm else "none"
    elif norm is None:
        out["normalize_activations"] = "none"
    meta = out.get("metadata")
    if "hook_name" not in out and isinstance(meta, dict) and "hook_name" in meta:
        out["hook_name"] = meta["hook_name"]
    return out


def _int_field(cfg: dict[str, Any], key: str, where: str, span: Span) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckError("E382", f"{where}: `{key}` must be a positive integer; got "
                         f"{json.dumps(value)}", span)
    return value


def dict_info(name: str, kind: str, path: str, cfg: dict[str, Any], weights: str,
              host: Site, span: Span) -> DictInfo:
    """A DictInfo from a (defaulted) cfg.json; E382/E383 for what patchc cannot compute."""
    where = os.path.join(path, CFG_FILE)
    arch = cfg.get("architecture")
    allowed = SAE_ARCHITECTURES if kind == "sae" else TRANSCODER_ARCHITECTURES
    if arch not in allowed:
        other = TRANSCODER_ARCHITECTURES if kind == "sae" else SAE_ARCHITECTURES
        hint = (f"declare it with `{'transcoder' if kind == 'sae' else 'sae'}`"
                if arch in other else None)
        raise CheckError("E383", f"{where}: a {kind} with architecture {json.dumps(arch)} is "
                         f"not supported (a {kind} is one of {', '.join(allowed)})", span,
                         hint=hint)
    norm = cfg.get("normalize_activations", "none")
    if norm not in NORMALIZATIONS:
        raise CheckError("E383", f"{where}: normalize_activations {json.dumps(norm)} is not "
                         f"one of {', '.join(NORMALIZATIONS)}", span)
    d_in = _int_field(cfg, "d_in", where, span)
    d_sae = _int_field(cfg, "d_sae", where, span)
    d_out = _int_field(cfg, "d_out", where, span) if kind == "transcoder" else d_in
    apply_b_dec = bool(cfg.get("apply_b_dec_to_input", False))
    if kind == "transcoder" and apply_b_dec:
        raise CheckError("E383", f"{where}: apply_b_dec_to_input is not defined for a "
                         "transcoder (its decoder bias is in the output's space)", span)
    k = _int_field(cfg, "k", where, span) if arch == "topk" else 0
    if arch == "topk" and k > d_sae:
        raise CheckError("E382", f"{where}: k = {k} is more than d_sae = {d_sae}", span)
    hook = cfg.get("hook_name")
    return DictInfo(name, kind, path, weights, str(arch), d_in, d_sae, d_out, host,
                    apply_b_dec, str(norm), k, bool(cfg.get("rescale_acts_by_decoder_norm")),
                    hook if isinstance(hook, str) else None)


def dict_width(model: Any, kind: str) -> int:
    """Features per token of a dictionary site kind on `model` (a ModelSpec): latents are
    d_sae wide, the error term is as wide as the host site."""
    name, err = split_kind(kind)
    info = model.dictionary(name)
    if info is None:
        raise CheckError("E387", f"no dictionary called {name}", Span(1, 1, 1, 1))
    return info.d_out if err else info.d_sae


# Host sites whose value is in the residual stream's space (what it holds, or a summand the
# block adds to it): a latent's decoded contribution there is something `dla` and `lens` can
# push through the final norm and unembedding.
RESIDUAL_HOSTS = ("embed", "resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out", "out",
                  "expert.out", "shared.out")


def residual_refusal(info: DictInfo, err: bool, what: str) -> tuple[str, str, str] | None:
    """Why `what` (dla or lens) cannot decode this dictionary's latents (or error term) into
    the residual stream: (code, message, hint), or None when it can."""
    text = f"{info.name}.err" if err else f"{info.name}'s latents"
    if info.host.kind not in RESIDUAL_HOSTS:
        return ("E356", f"{what} decodes into the residual stream, but {text} live in "
                f"{info.host}'s space ({info.kind} `{info.name}` is attached there), which "
                "the residual stream neither holds nor adds",
                "attach the dictionary to a residual-stream site (resid_pre/mid/post, "
                "attn.out, mlp.out, Ll.Hh.out; a transcoder stands in for Ll.mlp.out)")
    return None
