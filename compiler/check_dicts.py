"""Checking `sae NAME = "PATH" at SITE` and `transcoder NAME = "PATH" at Ll.mlp`.

Each declaration is checked against the model's shape and its folder's cfg.json alone (no
weights are read): the folder exists and holds a weight file, the architecture is one patchc
computes, the attachment site is one concrete site of the model, and the dictionary's input
and output widths are the site's. The dictionaries that pass are added to the ModelSpec
(`ModelSpec.dictionaries`), so every later check resolves `NAME[i]` and `NAME.err` like
any other site (resolve.py).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from . import ast as A
from . import resolve
from .check_context import Context
from .check_sites import site_width
from .dictionaries import WEIGHT_FILES, DictInfo, dict_info, read_config, with_defaults
from .errors import CheckError, ParseError, Span
from .families import lookup
from .ir import Site
from .modelspec import ModelSpec
from .sites import SITE_KINDS, TL_ALIASES, is_site_head, parse_site_path

# Sites a dictionary cannot attach to: no per-token vector of fixed width to encode.
NOT_HOSTS = frozenset({"pattern", "attn.pattern", "ln1.scale", "ln2.scale", "ln_final.scale",
                       "logits"})
_INDEX_NAME = re.compile(r"[LHE]\d+$")


def check_dictionaries(ctx: Context, decls: list[A.DictDecl],
                       given: dict[str, dict[str, Any]] | None = None) -> None:
    """Check every declaration; add those that pass to `ctx.model`. `given`: cfg.json
    contents by name that stand in for a folder (an SAELens object passed to patchc.run)."""
    if ctx.model is None or not decls:
        return
    found: list[DictInfo] = []
    for d in decls:
        before = len(ctx.errors)
        with ctx.catch(d.span):
            found.append(_check_one(ctx, d, ctx.model, found, (given or {}).get(d.name.value)))
        if len(ctx.errors) > before and not _site_like(d.name.value):
            # Known by name (not a site's name), so that its sites raise no further errors.
            found.append(DictInfo(d.name.value, d.kind, d.path, "", "", 0, 0, 0, Site("?"),
                                  ok=False))
    if found:
        ctx.model = dataclasses.replace(ctx.model, dictionaries=tuple(found))


def _check_one(ctx: Context, d: A.DictDecl, model: ModelSpec, before: list[DictInfo],
               given: dict[str, Any] | None) -> DictInfo:
    name = d.name.value
    if _site_like(name):
        raise CheckError("E386", f"`{name}` reads as a site of the model and cannot name a "
                         f"{d.kind}", d.name.span, hint=f"rename it, e.g. `{name.lower()}_sae`")
    path = os.path.join(ctx.base_dir, os.path.expanduser(d.path))
    span = _path_span(d)
    if d.site is None:  # no `at`: the site cfg.json's hook_name names
        cfg, weights = _config(path, span, given, d.path, ctx.base_dir)
        d = dataclasses.replace(d, site=_site_of_hook(d, cfg.get("hook_name"), span))
    host = _host(d, model)
    assert d.site is not None
    taken = next((b for b in before if b.ok and b.host == host), None)
    if taken is not None:
        raise CheckError("E385", f"{host} already has the {taken.kind} `{taken.name}` attached",
                         d.site.span, hint="attach one dictionary per site")
    cfg, weights = _config(path, span, given, d.path, ctx.base_dir)
    info = dict_info(name, d.kind, path, cfg, weights, host, span)
    if d.kind == "sae":
        width = site_width(model, host)
        if info.d_in != width:
            raise CheckError("E384", f"{d.kind} `{name}` has d_in = {info.d_in}, but {host} is "
                             f"{width} wide", d.site.span, hint=f"it was trained on "
                             f"{info.hook_name}" if info.hook_name else None)
    else:
        for what, value in (("d_in", info.d_in), ("d_out", info.d_out)):
            if value != model.d_model:
                side = "input" if what == "d_in" else "output"
                raise CheckError("E384", f"transcoder `{name}` has {what} = {value}, but the "
                                 f"MLP's {side} at L{host.layer} is {model.d_model} wide",
                                 d.site.span)
    _warn_hook(ctx, d, info)
    _warn_model(ctx, d, cfg)
    return info


def _site_like(name: str) -> bool:
    """Does a name read as a site of the model (`L1`, `embed`, `mlp`, `blocks`)?"""
    return name in SITE_KINDS or is_site_head(name) or bool(_INDEX_NAME.match(name)) or \
        name in {k.split(".")[0] for k in SITE_KINDS}


def _config(path: str, span: Span, given: dict[str, Any] | None, written: str, base_dir: str
            ) -> tuple[dict[str, Any], str]:
    """cfg.json and the weight file's name, or a given config (an SAELens object's)."""
    if given is not None:
        return with_defaults(given), ""
    return read_config(path, span, written, base_dir)


def _site_of_hook(d: A.DictDecl, hook: Any, span: Span) -> A.SiteRef:
    """The site a TransformerLens hook name stands for (`blocks.1.hook_resid_post` ->
    L1.resid_post; a transcoder's `blocks.1.ln2.hook_normalized` -> L1.mlp), at `span`."""
    ref = None
    if isinstance(hook, str) and hook:
        try:
            parsed = parse_site_path(hook, span)
        except ParseError:
            parsed = None
        if parsed is not None and d.kind == "transcoder" and isinstance(parsed.layer, A.Idx):
            ref = A.SiteRef(hook, "mlp", parsed.layer, None, None, (), None, span)
        elif parsed is not None and d.kind == "sae" and parsed.kind in SITE_KINDS:
            ref = A.SiteRef(hook, parsed.kind, parsed.layer, parsed.head, None, (), None, span)
    if ref is None:
        what = f"its hook_name {hook!r} is not a site patchc knows" if hook else \
            "its cfg.json names no hook_name"
        raise CheckError("E385", f"{d.kind} `{d.name.value}` needs `at SITE`: {what}", span,
                         hint=f"write {d.kind} {d.name.value} = \"{d.path}\" at "
                         + ("Ll.mlp" if d.kind == "transcoder" else "SITE"))
    return _spanned(ref, span)


def _spanned(ref: A.SiteRef, span: Span) -> A.SiteRef:
    """`ref` with every index at `span` (errors about it then point at the path)."""
    def at(idx):
        return dataclasses.replace(idx, span=span) if idx is not None else None
    return dataclasses.replace(ref, layer=at(ref.layer), head=at(ref.head))


def _host(d: A.DictDecl, model: ModelSpec) -> Site:
    """The one concrete site a declaration attaches to (E385 otherwise)."""
    ref = d.site
    assert ref is not None
    if ref.features is not None or ref.subspace or ref.pos is not None:
        raise CheckError("E385", f"a {d.kind} attaches to a whole site, without [...] or @",
                         ref.span, hint="select latents later: NAME[i], NAME[a:b], NAME @ POS")
    if d.kind == "transcoder":
        if ref.kind != "mlp" or not isinstance(ref.layer, A.Idx) or ref.head is not None:
            raise CheckError("E385", f"a transcoder attaches at one layer's MLP, Ll.mlp; got "
                             f"{ref.text}", ref.span, hint="e.g. transcoder t = \"PATH\" at L0.mlp")
        family = lookup(model.family)
        if family is not None and family.flat_mlp:
            raise CheckError("E385", f"{model.family}'s MLP is not a module of its own, so a "
                             "transcoder cannot read its input", ref.span,
                             hint="attach an SAE to Ll.mlp.out instead")
        out = resolve.expand_site(dataclasses.replace(ref, kind="mlp.out"), model)
        return out[0].sites[0]
    if ref.kind in NOT_HOSTS:
        raise CheckError("E385", f"an SAE cannot attach to {ref.text}: it has no fixed-width "
                         "vector per token", ref.span)
    if model.dictionary(ref.kind.removesuffix(".err")) is not None:
        raise CheckError("E385", "an SAE attaches to a site of the model, not to another "
                         "dictionary's latents", ref.span)
    for idx in (ref.layer, ref.head):
        if idx is not None and not isinstance(idx, A.Idx):
            raise CheckError("E385", f"an SAE attaches to one site; {ref.text} is a pattern",
                             idx.span)
    return resolve.expand_site(ref, model)[0].sites[0]


def _path_span(d: A.DictDecl) -> Span:
    """The span of the quoted path: after `KIND NAME = `."""
    start = d.name.span.end_col + 3
    return Span(d.span.line, start, d.span.line, start + len(d.path) + 2)


def _warn_model(ctx: Context, d: A.DictDecl, cfg: dict[str, Any]) -> None:
    """W473: cfg.json's model_name is not the spec's model. Names are compared loosely
    (case, punctuation and an organisation prefix ignored; one inside the other matches), as
    SAELens names models the TransformerLens way: `gpt2-small` for `openai-community/gpt2`."""
    trained = cfg.get("model_name") or (cfg.get("metadata") or {}).get("model_name")
    if not isinstance(trained, str) or not trained or not ctx.model_id:
        return

    def key(name: str) -> str:
        return re.sub(r"[^a-z0-9]", "", os.path.basename(name.rstrip("/\\")).lower())

    a, b = key(trained), key(ctx.model_id)
    if a and b and a not in b and b not in a:
        ctx.warn("W473", f"{d.kind} `{d.name.value}` was trained on the model {trained!r}, "
                 f"but the spec's model is {ctx.model_id!r}", _path_span(d),
                 hint="a dictionary reads activations of the model it was trained on: check "
                 "the folder (a wrong one of the same width gives meaningless latents)")


def _warn_hook(ctx: Context, d: A.DictDecl, info: DictInfo) -> None:
    """W381: cfg.json's hook_name (a TransformerLens hook) names another site than `at`."""
    hook = info.hook_name
    if not hook or d.site is None or d.site.text == hook:
        return
    try:
        parsed = parse_site_path(hook, d.site.span)
    except ParseError:
        return
    layer = parsed.layer.value if isinstance(parsed.layer, A.Idx) else None
    if d.kind == "transcoder":
        same = layer is None or layer == info.host.layer
    else:
        kind = TL_ALIASES.get(parsed.kind, parsed.kind)
        if kind not in SITE_KINDS:
            return
        same = kind == info.host.kind and (layer is None or layer == info.host.layer)
    if not same:
        ctx.warn("W381", f"{d.kind} `{info.name}` was trained on {hook}, but it is attached at "
                 f"{d.site.text}", d.site.span, hint="check the `at` site")


def require_weights(spec: A.Spec, infos: tuple[DictInfo, ...], given: set[str]) -> None:
    """E381 at a dictionary's path when its folder has no weight file: `check` reads only
    cfg.json, a run needs the weights too (unless the caller passed the SAELens object,
    `given` holds those names)."""
    for info in infos:
        if not info.ok or info.weights or info.name in given:
            continue
        decl = next(d for d in spec.statements
                    if isinstance(d, A.DictDecl) and d.name.value == info.name)
        raise CheckError("E381", f"the dictionary folder {info.path} has no "
                         f"{' or '.join(WEIGHT_FILES)}: `check` needs only cfg.json, a run "
                         "needs the weights too", _path_span(decl))
