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
before rotary (k/v of a query head are its kv head's), `out` is z_h @ W_O[h] without the bias,
`*.scale` the normalizer's 1/sigma, `mlp.pre` the (gate) pre-activation, `mlp.post` the input
of the MLP output projection. `resid_mid` is written in place (the block keeps that tensor as
its residual): a hook that keeps the tensor it read there must clone it if a later hook writes
the same site in the same forward.

Errors (RuntimeInterventionError): E401 unsupported model, E402 resid_mid of a parallel block,
E403 a site this model lacks, E404 a hook returned something of the wrong shape.

A family subclass only says where things are (`layer`, `attn`, `ln1`, `qkv`, ...); the hooks
are built here from the taps in `taps.py`, and patterns come from the attention function in
`attention.py`.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Callable, Iterator

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from patchc.runtime.offload import param
from patchc.compiler.errors import RuntimeInterventionError
from patchc.compiler.modelspec import ModelSpec, spec_from_config

from . import attention, taps
from .taps import Cols, HookFn

UNLAYERED = frozenset({"embed", "ln_final.scale", "logits"})
HEADED = frozenset({"z", "q", "k", "v", "pattern", "out"})
LAYERED = frozenset(
    {
        "resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out", "mlp.pre", "mlp.post",
        "ln1.scale", "ln2.scale", "attn.z", "attn.q", "attn.k", "attn.v", "attn.pattern",
    }
)  # fmt: skip
KINDS = UNLAYERED | HEADED | LAYERED
# Sites whose modules see [batch*pos, d] in families with `flat_mlp` (OPT reshapes its MLP).
_FLAT_SITES = frozenset({"resid_mid", "ln2.scale", "mlp.pre", "mlp.post", "mlp.out"})


class Adapter(abc.ABC):
    """Canonical sites of one loaded HF causal LM. Subclasses fill in the module map."""

    family: str = ""
    norm: str = "rmsnorm"  # "layernorm" (centered) or "rmsnorm"
    rms_offset: float = 0.0  # Gemma's RMSNorm multiplies by (1 + weight)
    flat_mlp: bool = False  # MLP modules see [batch*pos, d] (OPT)

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config
        self.base: nn.Module = getattr(model, "base_model", model)
        cfg = self.config
        self.n_layers: int = int(cfg.num_hidden_layers)
        self.n_heads: int = int(cfg.num_attention_heads)
        self.n_kv_heads: int = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.d_model: int = int(cfg.hidden_size)
        self.d_head: int = int(getattr(cfg, "head_dim", None) or self.d_model // self.n_heads)
        self.d_mlp: int = self._d_mlp()
        self.vocab_size: int = int(cfg.vocab_size)
        self.n_ctx: int = int(getattr(cfg, "max_position_embeddings", 0) or 0)
        self.parallel_attn: bool = self._parallel_attn()
        self._chains: dict[str, tuple[list[HookFn], RemovableHandle | taps.Handles]] = {}

    # ---- what a family says: sizes and where things are ---------------------------------
    def _d_mlp(self) -> int:
        return int(self.config.intermediate_size)

    def _parallel_attn(self) -> bool:
        return False

    @abc.abstractmethod
    def layers(self) -> nn.ModuleList:
        ...

    def layer(self, layer: int) -> nn.Module:
        return self.layers()[layer]

    @abc.abstractmethod
    def attn(self, layer: int) -> nn.Module:
        ...

    @abc.abstractmethod
    def mlp(self, layer: int) -> nn.Module:
        ...

    @abc.abstractmethod
    def ln1(self, layer: int) -> nn.Module:
        ...

    @abc.abstractmethod
    def ln2(self, layer: int) -> nn.Module:
        ...

    @abc.abstractmethod
    def ln_final(self) -> nn.Module:
        ...

    @abc.abstractmethod
    def o_proj(self, layer: int) -> nn.Module:
        """The attention output projection; its input is attn.z."""
        ...

    @abc.abstractmethod
    def qkv(self, layer: int, which: str, head: int | None) -> tuple[nn.Module, Cols | None]:
        """The projection whose output holds q/k/v ('q','k','v') of `head` (a query head for
        q, a kv head for k/v; None: all heads), and the columns of its output to select."""
        ...

    @abc.abstractmethod
    def mlp_pre(self, layer: int) -> tuple[nn.Module, Cols | None]:
        """The module whose output (or these columns of it) is mlp.pre."""
        ...

    @abc.abstractmethod
    def mlp_down(self, layer: int) -> nn.Module:
        """The MLP output projection; its input is mlp.post."""
        ...

    def attn_out_module(self, layer: int) -> nn.Module:
        """The module whose output is added to the residual by the attention block."""
        return self.attn(layer)

    def mlp_out_module(self, layer: int) -> nn.Module:
        """The module whose output is added to the residual by the MLP block."""
        return self.mlp(layer)

    def resid_mid_module(self, layer: int) -> nn.Module:
        """The module whose input is resid_mid (the residual kept for the MLP add)."""
        return self.ln2(layer)

    def w_out(self, layer: int, head: int) -> Tensor:
        """W_O[head] as [d_head, d_model], so that z_h @ W_O[head] is the head's output."""
        w = param(self.o_proj(layer))  # nn.Linear: [d_model, n_heads * d_head]
        return w[:, head * self.d_head : (head + 1) * self.d_head].T

    def unembed(self, resid: Tensor) -> Tensor:
        """Final residual -> logits: final norm, unembedding (and family extras)."""
        return self.model.get_output_embeddings()(self.ln_final()(resid))

    def unembed_rows(self, tokens: Tensor) -> Tensor:
        """[k, d_model] rows u_t such that logit(t) = normed_resid @ u_t + (a bias): the
        unembedding after the final norm, for direct logit attribution. None of the families'
        extras between the norm and the unembedding may be nonlinear (see final_softcap)."""
        w = param(self.model.get_output_embeddings())
        return w[tokens.to(w.device)]

    def final_softcap(self) -> float | None:
        """A tanh soft-cap on the final logits (Gemma-2), which makes them nonlinear."""
        return None

    # ---- where RelP's LRP rules apply (runtime/lrp.py installs them) ---------------------
    def act_fn(self, layer: int) -> nn.Module:
        """The MLP's elementwise activation module: its input is mlp.pre (the gate's
        pre-activation), its output act(mlp.pre)."""
        return self.mlp(layer).act

    def gate_up(self, layer: int) -> tuple[nn.Module, Cols | None] | None:
        """Gated MLPs, act(gate) * up: the module whose output (these columns of it) is `up`;
        the product is mlp_down's input. None for an un-gated MLP."""
        return None

    def extra_norms(self) -> list[nn.Module]:
        """Normalizers without a scale site (Gemma-2's post-norms); the LN-rule covers them."""
        return []

    # ---- derived facts ------------------------------------------------------------------
    def kv_head(self, head: int) -> int:
        return head // (self.n_heads // self.n_kv_heads)

    def norm_weight(self, module: nn.Module) -> Tensor | None:
        """The normalizer's effective elementwise weight (None: no affine weight)."""
        w = param(module)
        if w is None:
            return None
        return w + self.rms_offset if self.rms_offset else w

    def norm_eps(self, module: nn.Module) -> float:
        for name in ("eps", "variance_epsilon", "epsilon"):
            if getattr(module, name, None) is not None:
                return float(getattr(module, name))
        name = type(module).__name__
        raise RuntimeInterventionError("E401", f"cannot find the epsilon of {name}")

    def spec(self) -> ModelSpec:
        """The compiler's ModelSpec of this model, from the same config (`check` agrees)."""
        return spec_from_config(self.config.to_dict())

    # ---- hooks --------------------------------------------------------------------------
    def hook(
        self, kind: str, layer: int | None, head: int | None, fn: HookFn
    ) -> contextlib.AbstractContextManager["Adapter"]:
        """Call fn on the site's activation in every forward while the context is active.
        The site is checked now (a bad site raises here, not on entering the context)."""
        layer, head = self._validate(kind, layer, head)
        return self._hooked(kind, layer, head, fn)

    @contextlib.contextmanager
    def _hooked(
        self, kind: str, layer: int | None, head: int | None, fn: HookFn
    ) -> Iterator["Adapter"]:
        removers: list = []
        try:
            self._install(kind, layer, head, fn, removers)
            yield self
        finally:
            for r in reversed(removers):
                r.remove() if hasattr(r, "remove") else r()

    @contextlib.contextmanager
    def hooks(self, sites: list[tuple[str, int | None, int | None, HookFn]]) -> Iterator["Adapter"]:
        """Several hooks at once (entered in order)."""
        with contextlib.ExitStack() as stack:
            for kind, layer, head, fn in sites:
                stack.enter_context(self.hook(kind, layer, head, fn))
            yield self

    def site_name(self, kind: str, layer: int | None, head: int | None) -> str:
        parts = [] if layer is None else [f"L{layer}"]
        parts += [] if head is None else [f"H{head}"]
        return ".".join([*parts, kind])

    def _validate(self, kind: str, layer: int | None, head: int | None) -> tuple[int | None, ...]:
        if kind not in KINDS:
            raise RuntimeInterventionError(
                "E403", f"unknown site kind '{kind}'; known: {', '.join(sorted(KINDS))}"
            )
        if kind in UNLAYERED:
            if layer is not None or head is not None:
                raise RuntimeInterventionError("E403", f"site '{kind}' takes no layer or head")
            return None, None
        if layer is None or not -self.n_layers <= layer < self.n_layers:
            raise RuntimeInterventionError(
                "E403", f"model has {self.n_layers} layers (L0..L{self.n_layers - 1}); got L{layer}"
            )
        layer %= self.n_layers
        if kind in HEADED:
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
        if kind == "embed":
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


def head_cols_interleaved(n_heads: int, d_head: int, which: int, head: int | None) -> Cols:
    """Columns of q/k/v in a per-head interleaved fused projection (NeoX: [h0 q k v, h1 q k v])."""
    heads = range(n_heads) if head is None else [head]
    index = [h * 3 * d_head + which * d_head + i for h in heads for i in range(d_head)]
    if head is not None:
        return Cols(index[0], index[-1] + 1)
    return Cols(index=index)
