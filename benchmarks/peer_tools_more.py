"""nnsight and pyvene versions of benchmarks/peers.py's experiments E1-E6 (the plain hook
loop, TransformerLens and the shared pieces are in peer_tools.py): the same sites, the same
value order (peer_tools.ORDER), written the way each library is used."""

from __future__ import annotations

import torch
from peer_tools import KINDS, HookLoop, Task, _estimates, _vec
from torch import Tensor


# ---- nnsight --------------------------------------------------------------------------------
class NNsightTool:
    """nnsight: a trace saves the clean activations, one trace per experiment edits the
    corrupt run in place; attribution saves activations and, under `metric.backward()`, their
    gradients."""

    name = "nnsight"

    def __init__(self, task: Task) -> None:
        from nnsight import NNsight

        self.t = task
        self.m = NNsight(task.model)

    def _site(self, kind: str, layer: int):
        block = self.m.transformer.h[layer]
        if kind == "z":
            return block.attn.c_proj.input
        if kind == "resid_pre":
            return block.input
        if kind == "attn.out":
            return block.attn.output[0]
        return block.mlp.output

    def _cache(self, ids: Tensor, kinds: tuple[str, ...]) -> dict[tuple[str, int], Tensor]:
        saved = {}
        with self.m.trace(ids):  # nnsight wants the sites in the order the model runs them
            for layer in range(self.t.n_layers):
                for k in kinds:
                    saved[k, layer] = self._site(k, layer).save()
        return saved

    def _patched(self, ids: Tensor, kind: str, layer: int, index: tuple, value: Tensor
                 ) -> Tensor:
        with self.m.trace(ids):
            self._site(kind, layer)[index] = value
            m = self.t.ld(self.m.lm_head.output).mean().save()
        return m

    @torch.no_grad()
    def heads(self, last: bool) -> Tensor:
        t, dh = self.t, self.t.d_head
        src = self._cache(t.clean, ("z",))
        pos = slice(-1, None) if last else slice(None)
        out = []
        for layer in range(t.n_layers):
            for h in range(t.n_heads):
                index = (slice(None), pos, slice(h * dh, (h + 1) * dh))
                out.append(self._patched(t.corrupt, "z", layer, index,
                                         src["z", layer][index]))
        return _vec(out)

    @torch.no_grad()
    def positions(self, kinds: tuple[str, ...]) -> Tensor:
        t = self.t
        src = self._cache(t.clean, kinds)
        out = []
        for kind in kinds:
            for layer in range(t.n_layers):
                for p in range(t.width):
                    index = (slice(None), p)
                    out.append(self._patched(t.corrupt, kind, layer, index,
                                             src[kind, layer][index]))
        return _vec(out)

    def attribution(self) -> Tensor:
        t = self.t
        sites = [(k, layer) for k in KINDS for layer in range(t.n_layers)]
        with torch.no_grad():
            clean = self._cache(t.clean, KINDS)
        acts, grads = {}, {}
        with self.m.trace(t.corrupt):
            for layer in range(t.n_layers):  # in the order the model runs them
                for k in KINDS:
                    acts[k, layer] = self._site(k, layer).save()
            m_b = t.ld(self.m.lm_head.output).save()
            with m_b.sum().backward():
                for s in reversed(list(acts)):  # the order the backward reaches them
                    grads[s] = acts[s].grad.save()
        t.model.zero_grad(set_to_none=True)
        return _estimates(t, m_b.detach(), [clean[s] for s in sites],
                          [acts[s].detach() for s in sites], [grads[s] for s in sites])

    @torch.no_grad()
    def ablations(self) -> Tensor:
        t = self.t
        out = []
        for layer in range(t.n_layers):
            with self.m.trace(t.clean):
                self.m.transformer.h[layer].mlp.output[:] = 0
                out.append(t.ld(self.m.lm_head.output).mean().save())
        src = self._cache(t.corrupt, ("attn.out",))
        for layer in range(t.n_layers):
            mean = src["attn.out", layer].mean(0, keepdim=True)
            out.append(self._patched(t.clean, "attn.out", layer, (slice(None),), mean))
        return _vec(out)

    run = HookLoop.run


# ---- pyvene ---------------------------------------------------------------------------------
PV_COMPONENT = {"z": "head_attention_value_output", "resid_pre": "block_input",
                "attn.out": "attention_output", "mlp.out": "mlp_output"}


class PyveneTool:
    """pyvene: one IntervenableModel with a vanilla (interchange) intervention per layer and
    site kind; each call runs the source (clean) and the base (corrupt) forward, with
    unit_locations choosing the head and positions. pyvene has no attribution patching or
    mean ablation built in: E5 and E6 are not run."""

    name = "pyvene"
    supports = ("E1", "E2", "E3", "E4")

    def __init__(self, task: Task) -> None:
        self.t = task

    def _model(self, kind: str, layer: int):
        import pyvene as pv

        unit = "h.pos" if kind == "z" else "pos"
        cfg = pv.IntervenableConfig([{"layer": layer, "component": PV_COMPONENT[kind],
                                      "unit": unit}],
                                    intervention_types=pv.VanillaIntervention)
        # pyvene freezes the model's weights; the other tools share the model: restore them.
        flags = [p.requires_grad for p in self.t.model.parameters()]
        pvm = pv.IntervenableModel(cfg, self.t.model)
        for p, flag in zip(self.t.model.parameters(), flags):
            p.requires_grad_(flag)
        return pvm

    def _ld(self, pvm, locs) -> Tensor:
        t = self.t
        _, out = pvm({"input_ids": t.corrupt}, [{"input_ids": t.clean}],
                     unit_locations={"sources->base": (locs, locs)})
        return t.ld(out.logits).mean()

    @torch.no_grad()
    def heads(self, last: bool) -> Tensor:
        t = self.t
        n = t.clean.shape[0]
        pos = [t.width - 1] if last else list(range(t.width))
        out = []
        for layer in range(t.n_layers):
            pvm = self._model("z", layer)
            for h in range(t.n_heads):
                out.append(self._ld(pvm, [[[[h]] * n, [pos] * n]]))
        return _vec(out)

    @torch.no_grad()
    def positions(self, kinds: tuple[str, ...]) -> Tensor:
        t = self.t
        n = t.clean.shape[0]
        out = []
        for kind in kinds:
            for layer in range(t.n_layers):
                pvm = self._model(kind, layer)
                for p in range(t.width):
                    out.append(self._ld(pvm, [[[p]] * n]))
        return _vec(out)

    def run(self, exp: str) -> Tensor:
        return {"E1": lambda: self.heads(False), "E2": lambda: self.heads(True),
                "E3": lambda: self.positions(("resid_pre",)),
                "E4": lambda: self.positions(("attn.out", "mlp.out"))}[exp]()
