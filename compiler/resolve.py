"""Site resolution: expand site patterns against a ModelSpec into concrete sites.

This is where `L*.H$h.z`, `L-1.mlp.post[0:512]` or `all(L9.H6.z, L10.H0.z)` become lists of
`ir.Site`, each with the values of its sweep columns. check.py calls it to report sites the
model lacks (with the span of the offending index); lower.py calls it to enumerate
experiments; `Program` uses it to count table rows.
"""

from __future__ import annotations

import re

from dataclasses import dataclass
from functools import lru_cache

from . import ast as A
from .errors import CheckError, Span
from .ir import Positions, Site
from .modelspec import ModelSpec
from .dictionaries import DeclarationFailed, DictInfo, err_kind, latent_kind
from .module_names import site_of_module
from .sites import SITE_KINDS

# Default result column of an unnamed pattern, per axis (docs/language.md §5).
DEFAULT_COLUMN = {"layer": "layer", "head": "head", "expert": "expert", "features": "neuron",
                  "latent": "feature", "pos": "pos"}


@dataclass(frozen=True, slots=True)
class Match:
    """One concrete choice for a sweep: the sites written jointly, and the column values."""

    sites: tuple[Site, ...]
    key: tuple[tuple[str, int], ...]


def expand_index(
    idx: A.Index | None, size: int, axis: str, what: str
) -> list[tuple[int, str | None]]:
    """Concrete indices of a pattern on an axis of `size`; each with the column it binds
    (None for a fixed index). Raises CheckError for an index the model lacks."""
    if idx is None:
        return [(0, None)]
    col = DEFAULT_COLUMN[axis]
    if isinstance(idx, A.Star):
        return [(i, col) for i in range(size)]
    if isinstance(idx, A.Capture):
        return [(i, idx.name) for i in range(size)]
    if isinstance(idx, A.Idx):
        return [(_in_range(idx.value, size, what, idx.span), None)]
    if isinstance(idx, A.IdxRange):
        lo = _in_range(idx.lo, size, what, idx.span)
        hi = _in_range(idx.hi, size, what, idx.span)
        if hi < lo:
            raise CheckError("E204", f"empty range {idx.lo}..{idx.hi}", idx.span)
        return [(i, col) for i in range(lo, hi + 1)]
    if isinstance(idx, A.IdxSet):  # (each index once: `L{1, -3}` on 4 layers is one layer;
        # check_sites warns, W303)
        got = [_in_range(v, size, what, idx.span) for v in idx.values]
        return [(i, col) for i in dict.fromkeys(got)]
    raise AssertionError(idx)


def _in_range(value: int, size: int, what: str, span: Span) -> int:
    resolved = value + size if value < 0 else value
    if not 0 <= resolved < size:
        names = {"layer": "layers", "head": "heads", "expert": "experts", "neuron": "features"}
        prefix = {"layer": "L", "head": "H", "expert": "E"}.get(what, "")
        raise CheckError(
            "E201" if what == "layer" else "E202" if what in ("head", "expert") else "E203",
            f"model has {size} {names.get(what, what)} ({prefix}0..{prefix}{size - 1}); "
            f"got {prefix}{value}",
            span,
        )
    return resolved


def expand_site(ref: A.SiteRef, model: ModelSpec) -> list[Match]:
    """Every concrete site a pattern matches, with its sweep-column values.

    Raises CheckError for an unknown kind, a missing or superfluous L/H index, an index out
    of range, a site the architecture lacks, or a feature index beyond the site's width.
    """
    latents = _latent_sites(ref, model)
    if latents is not None:
        return latents
    kind = SITE_KINDS.get(ref.kind)
    if kind is None:
        # (nnsight writes a module's output as `PATH.output`)
        path = re.sub(r"\.output$", "", ref.text)
        module = site_of_module(path)
        hint = (f"patchc names an activation by what it holds, not by module: the output of "
                f"{path} is {module} (`patchc sites MODEL` lists every site)"
                if module else _suggest(ref.kind, model, ref.text))
        raise CheckError("E200", f"unknown site {ref.text!r}", ref.span, hint=hint)
    if kind.layered and ref.layer is None:
        raise CheckError("E205", f"site {ref.kind} needs a layer, e.g. L0.{ref.kind}", ref.span)
    if not kind.layered and ref.layer is not None:
        raise CheckError("E206", f"site {ref.kind} has no layer index", ref.span)
    if kind.expert and ref.head is None:
        raise CheckError("E205", f"site {ref.text} needs an expert, e.g. L0.E0.out", ref.span)
    if kind.headed and ref.head is None:
        raise CheckError("E205", f"site {ref.kind} needs a head, e.g. L0.H0.{ref.kind}", ref.span)
    if not kind.headed and ref.head is not None:
        raise CheckError("E206", f"site {ref.kind} has no head index", ref.span)
    why = model.missing(ref.kind)
    if why is not None:
        raise CheckError("E209", f"{model.family} has no {ref.kind} site: {why}", ref.span)
    if ref.kind == "resid_mid" and model.parallel_attn:
        raise CheckError("E207", f"{model.family} runs attention and MLP in parallel: "
                         "resid_mid is not defined", ref.span,
                         hint="use resid_pre, attn.out and mlp.out instead")
    if ref.kind in ("pattern", "attn.pattern") and not model.exposes_pattern:
        raise CheckError("E208", "the model's fused attention kernel cannot expose the "
                         "attention pattern", ref.span)
    try:
        layers = expand_index(ref.layer, model.n_layers, "layer", "layer") if kind.layered \
            else [(None, None)]
        axis, count = ("expert", model.n_experts) if kind.expert else ("head", model.n_heads)
        heads = expand_index(ref.head, count, axis, axis) if kind.headed else [(None, None)]
        width = model.dim_of(kind.dim) if kind.dim != "n_ctx" else model.n_ctx
        feats = _expand_features(ref.features, width)
    except CheckError as e:  # an index the model lacks: the error has the site's span
        raise CheckError(e.code, e.message, ref.span, hint=e.hint) from None
    # Each match's key: the (column, value) pairs of the indices a column names, in layer,
    # head, feature order, built up a level at a time (a neuron sweep has ~37k matches).
    whole = slice_bounds(ref.features, width) if isinstance(ref.features, A.Slice) else None
    out = []
    for layer, lcol in layers:
        lkey = ((lcol, layer),) if lcol is not None and layer is not None else ()
        for head, hcol in heads:
            hkey = lkey + ((hcol, head),) if hcol is not None and head is not None else lkey
            for feat, fcol in feats:
                key = hkey + ((fcol, feat),) if fcol is not None and feat is not None else hkey
                fsel = whole if whole is not None else None if feat is None else (feat, feat + 1)
                out.append(Match((Site(ref.kind, layer, head, fsel),), key))
    return out


def _latent_sites(ref: A.SiteRef, model: ModelSpec) -> list[Match] | None:
    """A dictionary's latents `s1[i]`, `s1[*]`, `s1[a:b]`, `s1` or its error `s1.err`
    (None: `ref` names no attached dictionary). A latent sweep's column is `feature`."""
    name, err = ref.kind, False
    if name.endswith(".err"):
        name, err = name[:-4], True
    info = model.dictionary(name)
    if info is None:
        head, _, part = name.partition(".")
        if part and model.dictionary(head) is not None:
            raise CheckError("E387", f"{ref.text}: {head} is a dictionary, whose sites are "
                             f"{head}[i], {head}[a:b], {head} and {head}.err; a latent is "
                             "one number per token, with no attention pattern, head or "
                             f"other part (`.{part}`)", ref.span,
                             hint=f"did you mean {head}.err?" if _close(part, ["err"]) else None)
        return None
    if not info.ok:
        raise DeclarationFailed("E381", f"{name} was not attached", ref.span)
    if ref.layer is not None or ref.head is not None:
        raise CheckError("E387", f"{ref.text}: a dictionary's latents take no layer or head "
                         "index", ref.span, hint=f"write {name}[i] or {name}.err")
    return list(_latent_matches(ref, info, err))


@lru_cache(maxsize=32)
def _latent_matches(ref: A.SiteRef, info: DictInfo, err: bool) -> tuple[Match, ...]:
    """`_latent_sites`' matches, made once per (pattern, dictionary): checking and lowering
    expand a 16k-latent sweep several times, and each expansion is 16k Sites."""
    name = info.name
    kind = err_kind(name) if err else latent_kind(name)
    width = info.d_out if err else info.d_sae
    # The host's layer (0 for embed) tells the passes where the site is computed.
    layer = 0 if info.host.kind == "embed" else info.host.layer
    sel = ref.features
    if isinstance(sel, A.Slice):
        lo, hi = slice_bounds(sel, width)
        if not 0 <= lo < hi <= width:
            raise CheckError("E387", f"slice [{sel.lo}:{sel.hi}] is outside {ref.text}'s "
                             f"{width} {'features' if err else 'latents'}", sel.span)
        return (Match((Site(kind, layer, features=(lo, hi)),), ()),)
    if sel is None:
        return (Match((Site(kind, layer),), ()),)
    out = []
    for i, col in _latent_indices(sel, width, ref.text, err):
        key = ((col, i),) if col is not None else ()
        out.append(Match((Site(kind, layer, features=(i, i + 1)),), key))
    return tuple(out)


def _latent_indices(sel: A.Index, width: int, text: str, err: bool
                    ) -> list[tuple[int, str | None]]:
    try:
        return expand_index(sel, width, "features" if err else "latent", "latent")
    except CheckError as e:
        if e.code != "E203":
            raise
        what = "features" if err else "latents"
        raise CheckError("E387", f"{text} has {width} {what} ({text}[0]..{text}[{width - 1}]); "
                         f"got {e.message.rsplit('got ', 1)[-1]}", e.span) from None


def slice_bounds(sel: A.Slice, width: int) -> tuple[int, int]:
    """A feature slice `[a:b]` as non-negative bounds: a negative bound counts from the end
    (`[-4:-1]` of 512 features is [508:511]), as a negative index does."""
    return tuple(b + width if b < 0 else b for b in (sel.lo, sel.hi))  # type: ignore[return-value]


def _expand_features(sel: A.FeatureSel | None, width: int) -> list[tuple[int | None, str | None]]:
    if sel is None:
        return [(None, None)]
    if isinstance(sel, A.Slice):
        lo, hi = slice_bounds(sel, width)
        if not (0 <= lo < hi <= width):
            raise CheckError("E203", f"feature slice [{sel.lo}:{sel.hi}] is outside the site's "
                             f"{width} features", sel.span)
        return [(None, None)]
    return [(i, c) for i, c in expand_index(sel, width, "features", "neuron")]


class Expansions:
    """The matches of the site patterns one compile expands, kept by pattern object and
    model: check expands every pattern of the spec, and lowering asks again for the same
    patterns against the same model (a neuron sweep's pattern has tens of thousands of
    sites). The CheckedSpec hands check's to lowering; callers must not change a list."""

    def __init__(self) -> None:
        # id(pattern) -> (the pattern, the model, its matches); holding the pattern keeps
        # its id from being reused while it is here.
        self._got: dict[int, tuple[A.SiteRef, ModelSpec, list[Match]]] = {}

    def expand(self, ref: A.SiteRef, model: ModelSpec) -> list[Match]:
        """expand_site(ref, model), made once per (pattern, model) object pair."""
        hit = self._got.get(id(ref))
        if hit is not None and hit[0] is ref and hit[1] is model:
            return hit[2]
        out = expand_site(ref, model)
        self._got[id(ref)] = (ref, model, out)
        return out


def expand_item(item: A.SiteItem, model: ModelSpec,
                expansions: Expansions | None = None) -> list[Match]:
    """A sweep item: a site pattern (one Match per concrete site) or an `all(...)` group
    (one Match holding every site of every member). `expansions`: where to keep (and find)
    a pattern's matches."""
    expand = expand_site if expansions is None else expansions.expand
    if isinstance(item, A.SiteRef):
        return expand(item, model)
    sites: list[Site] = []
    for member in item.members:
        for m in expand(member, model):
            sites.extend(m.sites)
    return [Match(tuple(dict.fromkeys(sites)), ())]


def positions(pos: A.Pos | None, n_tokens: int | None,
              shortest: bool = False) -> list[tuple[Positions, int | None]]:
    """Concrete positions of a site's `@ POS`; `@ each` sweeps 0..n_tokens-1 (value in the
    `pos` column). Raises CheckError for a position outside the tokenized prompts.

    `shortest`: the prompts differ in length and `n_tokens` is the shortest one's count
    (non-negative positions must fit every prompt; messages say so)."""
    if pos is None:
        return [(Positions("all"), None)]
    if isinstance(pos, A.PosLast):
        return [(Positions("last"), None)]
    if isinstance(pos, A.PosIndex):
        if pos.value == -1:
            return [(Positions("last"), None)]
        return [(Positions("index", _pos_in_range(pos.value, n_tokens, pos.span, shortest)), None)]
    if isinstance(pos, A.PosRange):
        lo = _pos_in_range(pos.lo, n_tokens, pos.span, shortest)
        hi = _pos_in_range(pos.hi, n_tokens, pos.span, shortest)
        if hi < lo:
            raise CheckError("E304", f"empty position range {pos.lo}..{pos.hi}", pos.span)
        return [(Positions("range", lo, hi), None)]
    if isinstance(pos, A.PosEach):
        if n_tokens is None:
            raise CheckError("E305", "@ each needs the run's token count, but its prompts "
                             "could not be tokenized", pos.span)
        return [(Positions("index", i), i) for i in range(n_tokens)]
    if isinstance(pos, A.ColumnRef):
        return [(Positions("column", column=(pos.data, pos.column)), None)]
    if isinstance(pos, A.PosSet):
        values = tuple(dict.fromkeys(_pos_in_range(v, n_tokens, pos.span, shortest)
                                     for v in pos.values))
        return [(Positions("set", values=tuple(sorted(values))), None)]
    if isinstance(pos, A.PosSpan):
        return [(Positions("span", column=(pos.lo.data, pos.lo.column),
                           end=(pos.hi.data, pos.hi.column)), None)]
    raise AssertionError(pos)


def _pos_in_range(value: int, n_tokens: int | None, span: Span, shortest: bool = False) -> int:
    if n_tokens is None:
        if value < 0:
            raise CheckError("E305", "a negative position needs the run's token count", span)
        return value
    resolved = value + n_tokens if value < 0 else value
    if not 0 <= resolved < n_tokens:
        who = "the shortest prompt has" if shortest else "prompts have"
        raise CheckError("E303", f"{who} {n_tokens} tokens (positions 0..{n_tokens - 1});"
                         f" got @ {value}", span)
    return resolved


def _close(word: str, choices: list[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(word, choices, n=1)
    return close[0] if close else None


def _suggest(kind: str, model: ModelSpec, text: str = "") -> str | None:
    """A close site kind; else, for a bare name (`s2` in `s2[6]`), the spec's dictionaries:
    a short name is rarely close enough to match, and it is what the user was reaching for.
    A path that stops at its indices (`L0.H3`) is told the kinds a head or layer has."""
    names = [d.name for d in model.dictionaries]
    close = _close(kind, list(SITE_KINDS) + names + [f"{n}.err" for n in names])
    if close:
        return f"did you mean {close}?"
    if re.fullmatch(r"H\d+", kind):
        head = text or kind
        return (f"a site ends in what it reads: {head}.z (the head's output before W_O), "
                f"{head}.out (after it), {head}.pattern, {head}.q, {head}.k, {head}.v")
    if re.fullmatch(r"L\d+", kind) or not kind:
        return "a site ends in what it reads, e.g. L0.resid_post, L0.mlp.out, L0.H0.z"
    here = ", ".join(k for k in SITE_KINDS if model.missing(k) is None)
    if "." not in kind and names:
        return (f"no site or dictionary is called {kind}; the dictionaries declared are "
                + ", ".join(names))
    if "." not in kind:
        return ("no site is called " + kind + "; a dictionary's latents are sites once it is "
                "declared (`sae NAME = \"FOLDER\" at SITE`); this model's sites are: " + here)
    return "this model's sites are: " + here
