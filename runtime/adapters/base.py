"""The Adapter base: one uniform way to read and write every canonical site of a native model.

`adapter.hook(kind, layer, head, fn)` is a context manager; while it is active, every forward
calls `fn(act)` with the site's activation for the whole batch and all positions:

    [batch, pos, dim]        vector sites (a per-head site: that head's slice, dim = d_head)
    [batch, q_pos, k_pos]    `pattern` of one head
    [batch, heads, q, k]     `attn.pattern`
    [batch, pos, 1]          `*.scale` sites (float32)

and uses its return value in place of the activation (None: leave it, a read). Hooks on
different sites compose; hooks on one site run in the order they were entered, each seeing what
the previous one wrote. To take a gradient at a site, return a tensor (e.g.
`act.detach().requires_grad_()`): a write always puts the returned tensor into the graph, a
read of a derived site (a head's slice, a scale) need not be in it.

What the sites are, in every family: `embed` and `resid_pre` are a block's input, `resid_post`
its output, `attn.out`/`mlp.out` what each sub-block adds to the residual (biases included),
`attn.z`/`z` the input of the attention output projection, `q`/`k`/`v` the projection outputs
before QK-norm and rotary (k/v of a query head are its kv head's), `out` is z_h @ W_O[h]
without the bias, `*.scale` the normalizer's 1/sigma, `mlp.pre` the (gate) pre-activation,
`mlp.post` the input of the MLP output projection. Where a block normalizes a sub-block's
output (Gemma 2/3, OLMo 2) or scales it (Granite), `attn.out`/`mlp.out` are after that, and the
heads' `out` sum to the output projection before it. `resid_mid` is written in place (the
block keeps that tensor as its residual): a hook that keeps the tensor it read there must clone
it if a later hook writes the same site in the same forward.

Errors (RuntimeInterventionError): E401 unsupported model, E402 resid_mid of a parallel block,
E403 a site this model lacks, E404 a hook returned something of the wrong shape.

Mixture-of-experts MLPs add `router` (the router's logits, [batch, pos, experts]),
`expert.out` / `expert.post` (expert e's weighted contribution to mlp.out and its neurons, the
expert index in the `head` slot; zero at tokens not routed to it) and `shared.out`; see moe.py.

Where things are comes from `parts.Parts` (one mechanism for every family in the family
table); the hooks are built here from the taps in `taps.py`, patterns come from the attention
function in `attention.py`, expert sites from the experts function in `moe.py`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from patchc.compiler.errors import RuntimeInterventionError
from patchc.compiler.families import Family

from . import attention, dictionary, moe, multiplier, receivers, taps
from .parts import Parts
from .taps import Cols, HookFn

UNLAYERED = frozenset({"embed", "ln_final.scale", "logits", "logits.in"})
HEADED = frozenset({"z", "q", "k", "v", "pattern", "out", "q.in", "k.in", "v.in"})
EXPERT = frozenset({"expert.out", "expert.post"})  # the expert index takes the head slot
LAYERED = frozenset(
    {
        "resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out", "mlp.pre", "mlp.post",
        "ln1.scale", "ln2.scale", "attn.z", "attn.q", "attn.k", "attn.v", "attn.pattern",
        "router", "shared.out", "mlp.in",
    }
)  # fmt: skip
# Receiver inputs (edges, receivers.py): q/k/v.in per head, mlp.in per layer, logits.in after
# the last block (its layer, if given, is the layer count).
KINDS = UNLAYERED | HEADED | LAYERED | EXPERT | receivers.KINDS
# Sites whose modules see [batch*pos, d] in families with `flat_mlp` (OPT reshapes its MLP).
_FLAT_SITES = frozenset({"resid_mid", "ln2.scale", "mlp.pre", "mlp.post", "mlp.out"})


class Adapter(Parts):
    """Canonical sites of one loaded HF causal LM, as hooks on its own modules."""

    def __init__(self, model: nn.Module, fam: Family | None = None) -> None:
        super().__init__(model, fam)
        self._chains: dict[str, tuple[list[HookFn], RemovableHandle | taps.Handles]] = {}
        # Dictionaries by name (runtime/dictionaries.Dictionary), set by whoever loads them;
        # their latent and error sites (`dict:NAME`, `dict:NAME.err`) are in dictionary.py.
        self.dictionaries: dict = {}
        self._attachments: dict = {}

    # ---- hooks --------------------------------------------------------------------------
    def hook(
        self, kind: str, layer: int | None, head: int | None, fn: HookFn
    ) -> contextlib.AbstractContextManager["Adapter"]:
        """Call fn on the site's activation in every forward while the context is active.
        The site is checked now (a bad site raises here, not on entering the context)."""
        if kind.startswith("dict:"):
            return dictionary.hooked(self, kind, fn)
        layer, head = self._validate(kind, layer, head)
        return self._hooked([(kind, layer, head, fn)])

    def hooks(self, sites: list[tuple[str, int | None, int | None, HookFn]]
              ) -> contextlib.AbstractContextManager["Adapter"]:
        """Several hooks at once: each checked as `hook` checks it, entered in order and
        removed in the reverse order, as nested `hook` contexts would be (with one list of
        removers: a context per hook cost more than installing it)."""
        return self._hooked(sites, validate=True)

    @contextlib.contextmanager
    def _hooked(self, sites: list[tuple[str, int | None, int | None, HookFn]],
                validate: bool = False) -> Iterator["Adapter"]:
        removers: list = []
        try:
            for kind, layer, head, fn in sites:
                if kind.startswith("dict:"):
                    cm = dictionary.hooked(self, kind, fn)
                    cm.__enter__()
                    removers.append(lambda cm=cm: cm.__exit__(None, None, None))
                    continue
                if validate:
                    layer, head = self._validate(kind, layer, head)
                self._install(kind, layer, head, fn, removers)
            yield self
        finally:
            for r in reversed(removers):
                r.remove() if hasattr(r, "remove") else r()

    def site_name(self, kind: str, layer: int | None, head: int | None) -> str:
        parts = [] if layer is None else [f"L{layer}"]
        if kind in EXPERT:
            return ".".join([*parts, f"E{head}", kind.split(".")[1]])
        parts += [] if head is None else [f"H{head}"]
        return ".".join([*parts, kind])

    def _validate(self, kind: str, layer: int | None, head: int | None) -> tuple[int | None, ...]:
        if kind not in KINDS:
            raise RuntimeInterventionError(
                "E403", f"unknown site kind '{kind}'; known: {', '.join(sorted(KINDS))}"
            )
        if kind == "logits.in" and layer in (None, self.n_layers) and head is None:
            return None, None  # after the last block (an edge receiver's layer is the count)
        if kind in UNLAYERED:
            if layer is not None or head is not None:
                raise RuntimeInterventionError("E403", f"site '{kind}' takes no layer or head")
            why = self.missing(kind)
            if why is not None:
                raise RuntimeInterventionError("E403", f"{self.family} has no {kind} site: {why}")
            return None, None
        if layer is None or not -self.n_layers <= layer < self.n_layers:
            raise RuntimeInterventionError(
                "E403", f"model has {self.n_layers} layers (L0..L{self.n_layers - 1}); got L{layer}"
            )
        layer %= self.n_layers
        why = self.missing(kind)
        if why is not None:
            raise RuntimeInterventionError("E403", f"{self.family} has no {kind} site: {why}")
        if kind in EXPERT:
            if head is None or not -self.n_experts <= head < self.n_experts:
                raise RuntimeInterventionError(
                    "E403", f"model has {self.n_experts} experts (E0..E{self.n_experts - 1}); "
                            f"got E{head}")
            head %= self.n_experts
        elif kind in HEADED:
            if head is None or not -self.n_heads <= head < self.n_heads:
                raise RuntimeInterventionError(
                    "E403", f"model has {self.n_heads} heads (H0..H{self.n_heads - 1}); got H{head}"
                )
            head %= self.n_heads
        elif head is not None:
            raise RuntimeInterventionError("E403", f"site '{kind}' is not per head")
        if kind == "resid_mid" and self.parallel_attn:
            raise RuntimeInterventionError(
                "E402",
                f"resid_mid is not defined for {self.family}: attention and MLP run in parallel "
                "on the same residual (use resid_pre, attn.out, mlp.out)",
            )
        return layer, head

    def _install(
        self, kind: str, layer: int | None, head: int | None, fn: HookFn, removers: list
    ) -> None:
        what = self.site_name(kind, layer, head)
        lead = None
        if self.flat_mlp and kind in _FLAT_SITES and kind != "ln2.scale":  # (chained: below)
            assert layer is not None
            lead, handle = taps.tap_lead(self.layer(layer))
            removers.append(handle)
        add = removers.append
        if kind in receivers.KINDS:
            receivers.install(self, kind, layer, head, fn, what, add)
        elif kind == "embed":
            # The input of block 0, like L0.resid_pre, but its hooks run before resid_pre's.
            block0 = self.layer(0)
            add(self._chained(what, fn, lambda f: taps.tap_input(block0, f, what, prepend=True)))
        elif kind == "logits":
            add(taps.tap_output(self.model, fn, what))
        elif kind == "ln_final.scale":
            add(self._chained(what, fn, lambda f: self._norm_tap(self.ln_final(), f, what, None)))
        else:
            assert layer is not None
            self._install_layered(kind, layer, head, fn, what, lead, add)

    def _install_layered(
        self, kind: str, layer: int, h: int | None, fn: HookFn, what: str, lead, add
    ) -> None:
        dh = self.d_head
        head_cols = None if h is None else Cols(h * dh, (h + 1) * dh)
        if kind in ("attn.out", "mlp.out") and self.fam.residual_multiplier:
            add(multiplier.neutralize(self, layer))
        if kind == "resid_pre":
            add(taps.tap_input(self.layer(layer), fn, what))
        elif kind == "resid_post":
            add(taps.tap_output(self.layer(layer), fn, what))
        elif kind == "resid_mid":
            add(taps.tap_inplace(self.resid_mid_module(layer), fn, what, lead))
        elif kind == "attn.out":
            add(taps.tap_output(self.attn_out_module(layer), fn, what))
        elif kind == "mlp.out":
            add(taps.tap_output(self.mlp_out_module(layer), fn, what, lead=lead))
        elif kind == "mlp.pre":
            mod, cols = self.mlp_pre(layer)
            add(taps.tap_output(mod, fn, what, cols, lead))
        elif kind == "mlp.post":
            add(taps.tap_input(self.mlp_down(layer), fn, what, lead=lead))
        elif kind == "ln1.scale":
            norm = self.ln1(layer)
            add(self._chained(what, fn, lambda f: self._norm_tap(norm, f, what, None)))
        elif kind == "ln2.scale":
            norm, block = self.ln2(layer), self.layer(layer)

            def install(f: HookFn) -> taps.Handles:
                # The chain's torch hook outlives the hook that created it: so does its lead.
                shape, track = taps.tap_lead(block) if self.flat_mlp else (None, None)
                return taps.Handles(track, self._norm_tap(norm, f, what, shape))

            add(self._chained(what, fn, install))
        elif kind in ("attn.z", "z"):
            add(taps.tap_input(self.o_proj(layer), fn, what, head_cols))
        elif kind in ("attn.q", "attn.k", "attn.v", "q", "k", "v"):
            which = kind[-1]
            idx = h if h is None or which == "q" else self.kv_head(h)
            mod, cols = self.qkv(layer, which, idx)
            add(taps.tap_output(mod, fn, what, cols))
        elif kind == "out":
            assert h is not None and head_cols is not None
            o_proj, cols = self.o_proj(layer), head_cols
            w_head = lambda: self.w_out(layer, h)  # noqa: E731 - read at call: weights may change
            add(self._chained(what, fn, lambda f: taps.tap_head_out(o_proj, f, what, cols, w_head)))
        elif kind in ("router", "shared.out", "expert.out", "expert.post"):
            moe.install(self, kind, layer, h, fn, what, add)
        elif kind in ("pattern", "attn.pattern"):
            attns = [self.attn(i) for i in range(self.n_layers)]
            attention.acquire(self.model, attns)
            add(lambda: attention.release(self.model, attns))
            add(attention.add_pattern_hook(self.attn(layer), h, fn))
        else:  # pragma: no cover - _validate admits only the kinds above
            raise RuntimeInterventionError("E403", f"unhandled site kind '{kind}'")

    def _chained(
        self, key: str, fn: HookFn, install: Callable[[HookFn], RemovableHandle | taps.Handles]
    ) -> Callable[[], None]:
        """Sites computed inside a tap (embed, scales, head outputs) get one torch hook per site
        that runs all of that site's hooks in the order they were entered, each seeing what the
        previous one wrote. Returns the remover of `fn`."""
        fns, handle = self._chains.get(key, ([], None))
        if handle is None:

            def chained(act: Tensor) -> Tensor | None:
                changed = False
                for f in list(fns):
                    res = f(act)
                    if res is not None:
                        act, changed = taps.conform(res, act, key), True
                return act if changed else None

            handle = install(chained)
            self._chains[key] = (fns, handle)
        fns.append(fn)

        def remove() -> None:
            fns.remove(fn)
            if not fns:
                handle.remove()
                del self._chains[key]

        return remove

    def _norm_tap(self, module: nn.Module, fn: HookFn, what: str, lead):
        return taps.tap_norm_scale(
            module,
            fn,
            what,
            centered=self.norm == "layernorm",
            eps=self.norm_eps(module),
            weight=lambda: self.norm_weight(module),
            lead=lead,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(layers={self.n_layers}, heads={self.n_heads}, "
            f"kv_heads={self.n_kv_heads}, d_model={self.d_model}, d_head={self.d_head}, "
            f"d_mlp={self.d_mlp}, parallel_attn={self.parallel_attn})"
        )
