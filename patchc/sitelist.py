"""`patchc sites MODEL`: the sites a model has and their shapes, from its config alone.

No weight is read and torch is never imported: the listing is what `patchc check` would
accept for this model (each site is tried through the checker's own `expand_site`, so a
site the architecture lacks, such as `resid_mid` on a parallel-block model, is listed as
absent with the checker's reason). Grouped the way one reads a transformer: embedding,
per-layer residual sites, attention, MLP, normalizers, logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from patchc.compiler import ast as A
from patchc.compiler.errors import NO_SPAN, CheckError
from patchc.compiler.modelspec import ModelSpec, load_model_spec
from patchc.compiler.resolve import expand_site
from patchc.compiler.sites import SITE_KINDS

# Each group lists its site kinds in reading order.
_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("embedding", ("embed",)),
    ("residual stream (per layer)", ("resid_pre", "resid_mid", "resid_post", "attn.out",
                                     "mlp.out")),
    ("attention (per layer)", ("attn.q", "attn.k", "attn.v", "attn.z", "attn.pattern")),
    ("attention heads (per layer and head)", ("q", "k", "v", "z", "pattern", "out")),
    ("MLP (per layer)", ("mlp.pre", "mlp.post")),
    ("mixture of experts (per layer and expert)", ("router", "expert.out", "expert.post",
                                                  "shared.out")),
    ("normalizers", ("ln1.scale", "ln2.scale", "ln_final.scale")),
    ("output", ("logits",)),
    ("edge receivers' inputs (a write reaches that component only)",
     ("q.in", "k.in", "v.in", "mlp.in", "logits.in")),
)


# How the listing names a width that is not a config field.
_DIM_NAMES = {"n_ctx": "key positions", "1": "scalar"}


def _doc(kind: str, model: ModelSpec) -> str:
    if kind == "embed" and model.positional != "learned":
        return "token embedding (positions are rotary, inside attention)"
    return SITE_KINDS[kind].doc


@dataclass(frozen=True, slots=True)
class SiteRow:
    pattern: str  # how a spec names every instance: `L*.H*.z`, `embed`
    width: int  # features per token (for patterns: n_ctx, the most key positions)
    dim: str  # what the width is: d_model, d_head, n_ctx (key positions), ...
    doc: str
    absent: str | None = None  # the checker's reason when the model lacks this site


_MOE = ("router", "expert.out", "expert.post", "shared.out")


def _pattern(kind: str) -> str:
    k = SITE_KINDS[kind]
    if k.expert:  # expert.out -> L*.E*.out
        return "L*.E*." + kind.split(".", 1)[1]
    return ("L*." if k.layered else "") + ("H*." if k.headed else "") + kind


def _absent(kind: str, model: ModelSpec) -> str | None:
    """The checker's objection to the first instance of `kind`, if any."""
    k = SITE_KINDS[kind]
    ref = A.SiteRef(kind, kind, A.Idx(0, NO_SPAN) if k.layered else None,
                    A.Idx(0, NO_SPAN) if k.headed else None, None, (), None, NO_SPAN)
    try:
        expand_site(ref, model)
    except CheckError as e:
        return e.message
    return None


def site_groups(model: ModelSpec) -> list[tuple[str, list[SiteRow]]]:
    """Every site kind of the catalog, grouped, with this model's width for it."""
    listed = {kind for _, kinds in _GROUPS for kind in kinds}
    # A kind added to the catalog later still shows up, in a group of its own.
    extra = tuple(k for k in SITE_KINDS if k not in listed)
    groups = _GROUPS + ((("other", extra),) if extra else ())
    out = []
    for title, kinds in groups:
        rows = []
        for kind in kinds:
            k = SITE_KINDS[kind]
            width = model.n_ctx if k.dim == "n_ctx" else model.dim_of(k.dim)
            absent = _absent(kind, model)
            if kind in _MOE and absent:  # expert sites: listed only where the model has them
                continue
            rows.append(SiteRow(_pattern(kind), width, _DIM_NAMES.get(k.dim, k.dim),
                                _doc(kind, model), absent))
        if rows:
            out.append((title, rows))
    return out


def kv_groups(model: ModelSpec) -> list[tuple[int, list[int]]]:
    """(kv head, the query heads that read it) under grouped-query attention."""
    return [(kv, [h for h in range(model.n_heads) if model.kv_head(h) == kv])
            for kv in range(model.n_kv_heads)]


def _summary(model: ModelSpec) -> list[str]:
    block = ("parallel block (attention and MLP read the same residual)"
             if model.parallel_attn else "sequential block")
    mlp = "gated MLP" if model.gated_mlp else "MLP"
    if model.n_experts:  # d_mlp is then one expert's width
        mlp = f"{model.n_experts} experts ({model.top_k} per token), each a {mlp}"
    lines = [f"{model.family}: {model.n_layers} layers (L0..L{model.n_layers - 1}), "
             f"d_model {model.d_model}, vocab {model.vocab_size}, n_ctx {model.n_ctx}",
             f"attention: {model.n_heads} heads (H0..H{model.n_heads - 1}) x d_head "
             f"{model.d_head}" + (f", {model.n_kv_heads} kv heads" if model.grouped_query
                                  else ""),
             f"{mlp}: d_mlp {model.d_mlp}; {model.norm}; {model.positional} positions; {block}"]
    if model.grouped_query:
        mapping = "; ".join(f"kv{kv} <- " + ",".join(f"H{h}" for h in heads)
                            for kv, heads in kv_groups(model))
        lines += [f"grouped-query attention: {mapping}",
                  "  (a query head's H*.k and H*.v are its kv head's; writing them writes "
                  "the shared kv head)"]
    return lines


def _shape(r: SiteRow) -> str:
    """`[pos, d_model 128]`; a head's pattern is `[pos, pos]` (query x key positions) and
    `attn.pattern` holds every head's: the runtime reads it as [heads, query, key]."""
    if r.dim == _DIM_NAMES["n_ctx"]:
        return "[heads, pos, pos]" if r.pattern.endswith("attn.pattern") else "[pos, pos]"
    if r.dim == _DIM_NAMES["1"]:
        return "[pos, 1]"
    return f"[pos, {r.dim} {r.width}]"


def render(model_id: str, model: ModelSpec) -> str:
    """The terminal listing: a summary, then one aligned block per group."""
    lines = [f"{model_id}", *("  " + s for s in _summary(model)), ""]
    groups = site_groups(model)
    wide = max(len(r.pattern) for _, rows in groups for r in rows)
    shape_w = max(len(_shape(r)) for _, rows in groups for r in rows)
    for title, rows in groups:
        lines.append(title)
        for r in rows:
            shape = _shape(r)
            if r.absent:
                lines.append(f"  {r.pattern:<{wide}}  {'-':<{shape_w}}  absent: {r.absent}")
            else:
                lines.append(f"  {r.pattern:<{wide}}  {shape:<{shape_w}}  {r.doc}")
        lines.append("")
    lines.append(f"pattern widths are key positions: the prompt's length (at most n_ctx "
                 f"{model.n_ctx}).")
    lines.append("Any site takes `@ POS`; feature slices `[i]`, `[a:b]` and `[*]` index its "
                 "last axis.")
    return "\n".join(lines) + "\n"


def as_json(model_id: str, model: ModelSpec) -> dict[str, Any]:
    """The same listing as data (`patchc sites MODEL --json`)."""
    return {
        "model": model_id,
        "family": model.family,
        "n_layers": model.n_layers, "n_heads": model.n_heads, "n_kv_heads": model.n_kv_heads,
        "d_model": model.d_model, "d_head": model.d_head, "d_mlp": model.d_mlp,
        "vocab_size": model.vocab_size, "n_ctx": model.n_ctx,
        "norm": model.norm, "positional": model.positional,
        "parallel_attn": model.parallel_attn, "gated_mlp": model.gated_mlp,
        "kv_heads": ({f"kv{kv}": [f"H{h}" for h in heads] for kv, heads in kv_groups(model)}
                     if model.grouped_query else None),
        "groups": [{"group": title,
                    "sites": [{"site": r.pattern, "width": r.width, "dim": r.dim,
                               "doc": r.doc, "available": r.absent is None,
                               **({"absent": r.absent} if r.absent else {})}
                              for r in rows]}
                   for title, rows in site_groups(model)],
    }


def load(model_id: str, revision: str | None = None) -> ModelSpec:
    return load_model_spec(model_id, revision, ".")
