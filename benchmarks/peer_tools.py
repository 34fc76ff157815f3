"""The experiments E1-E6 of benchmarks/peers.py written in each peer tool, the way a researcher
writes them with that tool: a plain PyTorch hook loop on the HF modules (the reference) and
TransformerLens (TransformerBridge); nnsight and pyvene are in peer_tools_more.py.

Every experiment returns one float64 vector in a fixed order (see `ORDER`): the mean over
examples of the metric `ld` = logit(answer) - logit(distractor) at the last token, one entry per
experiment (E1-E4, E6) or per estimate (E5: attribution patching, m_B + (a_A - a_B) . grad).

Sites on GPT-2 (what patchc's adapter names them): z = the input of `attn.c_proj`, resid_pre =
a block's input, attn.out = the attention module's output, mlp.out = the MLP's output.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

ORDER = {
    "E1": "(layer, head), layer-major",
    "E2": "(layer, head), layer-major",
    "E3": "(layer, position)",
    "E4": "attn.out (layer, position), then mlp.out (layer, position)",
    "E5": "resid_pre, attn.out, mlp.out; each (layer, position)",
    "E6": "zero each mlp.out (layer), then mean each attn.out (layer)",
}
EXPERIMENTS = tuple(ORDER)
KINDS = ("resid_pre", "attn.out", "mlp.out")  # E5's order; E4 uses the last two


@dataclass
class Task:
    """One model and its two runs, already tokenized (every prompt the same length)."""

    model: torch.nn.Module  # a GPT2LMHeadModel in eval mode
    clean: Tensor  # [n, T] token ids
    corrupt: Tensor  # [n, T]
    answer: Tensor  # [n] token ids
    distractor: Tensor  # [n]

    @property
    def n_layers(self) -> int:
        return self.model.config.n_layer

    @property
    def n_heads(self) -> int:
        return self.model.config.n_head

    @property
    def d_head(self) -> int:
        return self.model.config.n_embd // self.model.config.n_head

    @property
    def width(self) -> int:
        return int(self.clean.shape[1])

    def ld(self, logits: Tensor) -> Tensor:
        """Per-example logit difference at the last token [n] (float32)."""
        last = logits[:, -1].float()
        rows = torch.arange(last.shape[0], device=last.device)
        return last[rows, self.answer] - last[rows, self.distractor]


def _vec(values: list) -> Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def _estimates(task: Task, m_b: Tensor, a: list[Tensor], b: list[Tensor], g: list[Tensor]
               ) -> Tensor:
    """AtP per (site, position): mean over examples of m_B + sum_d (a_A - a_B) * grad."""
    out = []
    for aa, bb, gg in zip(a, b, g):  # [n, T, d] each
        est = m_b.double()[:, None] + ((aa.double() - bb.double()) * gg.double()).sum(-1)
        out.append(est.mean(0))
    return torch.cat(out).cpu()


# ---- the plain hook loop (the reference) ------------------------------------------------------
class HookLoop:
    """Plain torch forward hooks on the HF modules; one forward per experiment."""

    name = "plain hooks"

    def __init__(self, task: Task) -> None:
        self.t = task
        self.h = task.model.transformer.h

    def _module(self, kind: str, layer: int) -> tuple[torch.nn.Module, bool]:
        """(module, whether the site is the module's input)."""
        block = self.h[layer]
        return {"z": (block.attn.c_proj, True), "resid_pre": (block, True),
                "attn.out": (block.attn, False), "mlp.out": (block.mlp, False)}[kind]

    def _hook(self, kind: str, layer: int, edit: Callable[[Tensor], Tensor | None]):
        """Install `edit` on a site: it gets the activation and returns a new one (or None)."""
        module, is_input = self._module(kind, layer)
        if is_input:
            def pre(_m, args):
                new = edit(args[0])
                return None if new is None else (new, *args[1:])
            return module.register_forward_pre_hook(pre)

        def post(_m, _args, out):
            act = out[0] if isinstance(out, tuple) else out
            new = edit(act)
            if new is None:
                return None
            return (new, *out[1:]) if isinstance(out, tuple) else new
        return module.register_forward_hook(post)

    def _run(self, ids: Tensor, hooks: list[tuple[str, int, Callable]]) -> Tensor:
        handles = [self._hook(k, layer, fn) for k, layer, fn in hooks]
        try:
            return self.t.ld(self.t.model(ids).logits)
        finally:
            for h in handles:
                h.remove()

    def _cache(self, ids: Tensor, kinds: tuple[str, ...]) -> dict[tuple[str, int], Tensor]:
        """Every layer's activation of each kind, from one forward."""
        got: dict[tuple[str, int], Tensor] = {}
        keep = lambda s: lambda act: got.__setitem__(s, act.detach().clone())  # noqa: E731
        self._run(ids, [(k, i, keep((k, i))) for k in kinds for i in range(self.t.n_layers)])
        return got

    @torch.no_grad()
    def heads(self, last: bool) -> Tensor:
        t, dh = self.t, self.t.d_head
        src = self._cache(t.clean, ("z",))
        out = []
        for layer in range(t.n_layers):
            for h in range(t.n_heads):
                cols = slice(h * dh, (h + 1) * dh)
                pos = slice(-1, None) if last else slice(None)

                def patch(act, cols=cols, pos=pos, src=src["z", layer]):
                    act = act.clone()
                    act[:, pos, cols] = src[:, pos, cols]
                    return act
                out.append(self._run(t.corrupt, [("z", layer, patch)]).mean())
        return _vec(out)

    @torch.no_grad()
    def positions(self, kinds: tuple[str, ...]) -> Tensor:
        t = self.t
        out = []
        src = self._cache(t.clean, kinds)
        for kind in kinds:
            for layer in range(t.n_layers):
                for p in range(t.width):
                    def patch(act, p=p, src=src[kind, layer]):
                        act = act.clone()
                        act[:, p] = src[:, p]
                        return act
                    out.append(self._run(t.corrupt, [(kind, layer, patch)]).mean())
        return _vec(out)

    def attribution(self) -> Tensor:
        t = self.t
        sites = [(k, layer) for k in KINDS for layer in range(t.n_layers)]
        with torch.no_grad():
            clean = self._cache(t.clean, KINDS)
        acts: dict[tuple[str, int], Tensor] = {}
        zeros: dict[tuple[str, int], Tensor] = {}

        def keep(site):
            # A zero added at the site: its gradient is the total derivative there, and the
            # paths through the other sites stay open (whether or not weights want grads).
            def fn(act):
                acts[site] = act.detach()
                zeros[site] = torch.zeros_like(act, requires_grad=True)
                return act + zeros[site]
            return fn
        with torch.enable_grad():
            m_b = self._run(t.corrupt, [(k, layer, keep((k, layer))) for k, layer in sites])
            grads = torch.autograd.grad(m_b.sum(), [zeros[s] for s in sites])
        return _estimates(t, m_b.detach(), [clean[s] for s in sites],
                          [acts[s] for s in sites], list(grads))

    @torch.no_grad()
    def ablations(self) -> Tensor:
        t = self.t
        out = [self._run(t.clean, [("mlp.out", layer, torch.zeros_like)]).mean()
               for layer in range(t.n_layers)]
        src = self._cache(t.corrupt, ("attn.out",))
        for layer in range(t.n_layers):
            mean = src["attn.out", layer].mean(0, keepdim=True)
            fill = lambda act, m=mean: m.expand_as(act).clone()  # noqa: E731
            out.append(self._run(t.clean, [("attn.out", layer, fill)]).mean())
        return _vec(out)

    def run(self, exp: str) -> Tensor:
        return {"E1": lambda: self.heads(False), "E2": lambda: self.heads(True),
                "E3": lambda: self.positions(("resid_pre",)),
                "E4": lambda: self.positions(("attn.out", "mlp.out")),
                "E5": self.attribution, "E6": self.ablations}[exp]()


# ---- TransformerLens ------------------------------------------------------------------------
TL_HOOK = {"z": "attn.hook_z", "resid_pre": "hook_resid_pre", "attn.out": "hook_attn_out",
           "mlp.out": "hook_mlp_out"}


class TLens:
    """TransformerLens 4 (TransformerBridge over a copy of the same HF weights): run_with_cache
    for the clean run, run_with_hooks per experiment; attribution with fwd/bwd hooks and
    `backward()`, the library's attribution-patching recipe."""

    name = "TransformerLens"

    def __init__(self, task: Task, path: str, device: str, dtype) -> None:
        import transformers as tf
        from transformer_lens.model_bridge import TransformerBridge

        self.t = task
        # The bridge switches its model to eager attention and adjusts its tokenizer: give
        # it its own copies (the tokens are ours anyway).
        tokenizer = tf.AutoTokenizer.from_pretrained(path)
        self.b = TransformerBridge.boot_transformers(
            path, hf_model=copy.deepcopy(task.model), tokenizer=tokenizer, device=device,
            dtype=dtype)

    def _name(self, kind: str, layer: int) -> str:
        return f"blocks.{layer}.{TL_HOOK[kind]}"

    def _ld(self, ids: Tensor, hooks: list) -> Tensor:
        return self.t.ld(self.b.run_with_hooks(ids, fwd_hooks=hooks))

    def _cache(self, ids: Tensor, kinds: tuple[str, ...]) -> dict[tuple[str, int], Tensor]:
        names = {self._name(k, i): (k, i) for k in kinds for i in range(self.t.n_layers)}
        _, cache = self.b.run_with_cache(ids, names_filter=lambda n: n in names)
        return {site: cache[n] for n, site in names.items()}

    @torch.no_grad()
    def heads(self, last: bool) -> Tensor:
        t, dh = self.t, self.t.d_head
        src = self._cache(t.clean, ("z",))
        pos = slice(-1, None) if last else slice(None)
        out = []
        for layer in range(t.n_layers):
            for h in range(t.n_heads):
                def patch(z, hook, h=h, src=src["z", layer]):
                    z = z.clone()
                    if z.dim() == 4:  # [batch, pos, head, d_head]
                        z[:, pos, h] = src[:, pos, h]
                    else:
                        z[:, pos, h * dh:(h + 1) * dh] = src[:, pos, h * dh:(h + 1) * dh]
                    return z
                out.append(self._ld(t.corrupt, [(self._name("z", layer), patch)]).mean())
        return _vec(out)

    @torch.no_grad()
    def positions(self, kinds: tuple[str, ...]) -> Tensor:
        t = self.t
        out = []
        src = self._cache(t.clean, kinds)
        for kind in kinds:
            for layer in range(t.n_layers):
                for p in range(t.width):
                    def patch(act, hook, p=p, src=src[kind, layer]):
                        act = act.clone()
                        act[:, p] = src[:, p]
                        return act
                    out.append(self._ld(t.corrupt, [(self._name(kind, layer), patch)]).mean())
        return _vec(out)

    def attribution(self) -> Tensor:
        t = self.t
        names = [self._name(k, layer) for k in KINDS for layer in range(t.n_layers)]
        with torch.no_grad():
            _, clean = self.b.run_with_cache(t.clean, names_filter=lambda n: n in names)
        acts: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}

        def fwd(n):  # keyed by our name: `hook.name` is the bridge's own (an alias's target)
            return lambda act, hook: acts.__setitem__(n, act.detach())

        def bwd(n):
            return lambda grad, hook: grads.__setitem__(n, grad.detach())
        self.b.reset_hooks()
        for n in names:
            self.b.add_hook(n, fwd(n), "fwd")
            self.b.add_hook(n, bwd(n), "bwd")
        try:
            m_b = t.ld(self.b(t.corrupt))
            m_b.sum().backward()
        finally:
            self.b.reset_hooks()
            self.b.zero_grad(set_to_none=True)
        return _estimates(t, m_b.detach(), [clean[n] for n in names], [acts[n] for n in names],
                          [grads[n] for n in names])

    @torch.no_grad()
    def ablations(self) -> Tensor:
        t = self.t
        zero = lambda act, hook: torch.zeros_like(act)  # noqa: E731
        out = [self._ld(t.clean, [(self._name("mlp.out", layer), zero)]).mean()
               for layer in range(t.n_layers)]
        src = self._cache(t.corrupt, ("attn.out",))
        for layer in range(t.n_layers):
            mean = src["attn.out", layer].mean(0, keepdim=True)
            fill = lambda act, hook, m=mean: m.expand_as(act).clone()  # noqa: E731
            out.append(self._ld(t.clean, [(self._name("attn.out", layer), fill)]).mean())
        return _vec(out)

    run = HookLoop.run
