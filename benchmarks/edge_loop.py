"""The plain way to patch one edge, for benchmarks/edges.py to time and check against.

For each edge, one forward of the corrupt prompts with torch hooks on a GPT-2's HF modules
that add the sender's (clean - corrupt) difference to the receiver's own input: a head's q,
k or v slice of the fused projection, an MLP's input, or the final norm's input (logits).
"""

from __future__ import annotations

import re

import torch


class HandLoop:
    """The plain way: for each edge, one forward of the corrupt prompts with torch hooks that
    add the sender's (clean - corrupt) difference to the receiver's own input."""

    def __init__(self, model, ids_clean, ids_corrupt, answer: int, distractor: int) -> None:
        self.m, self.a, self.b = model, ids_clean, ids_corrupt
        self.ans, self.dis = answer, distractor
        self.blocks = model.transformer.h
        self.cache = {"clean": self._senders(ids_clean), "corrupt": self._senders(ids_corrupt)}

    def _senders(self, ids) -> dict[str, torch.Tensor]:
        got: dict[str, torch.Tensor] = {}
        hs = [self.blocks[0].register_forward_pre_hook(
            lambda m, a, k: got.__setitem__("embed", (a[0] if a else k["hidden_states"])),
            with_kwargs=True)]
        dh = self.m.config.n_embd // self.m.config.n_head
        for i, blk in enumerate(self.blocks):
            hs.append(blk.mlp.register_forward_hook(
                lambda m, a, o, i=i: got.__setitem__(f"L{i}.mlp.out", o)))

            def heads(m, a, i=i):
                z = a[0]
                for h in range(self.m.config.n_head):
                    got[f"L{i}.H{h}.out"] = z[..., h * dh:(h + 1) * dh] @ \
                        m.weight[h * dh:(h + 1) * dh]
            hs.append(blk.attn.c_proj.register_forward_pre_hook(heads))
        with torch.no_grad():
            self.m(ids)
        for h in hs:
            h.remove()
        return got

    def one(self, sender: str, receiver: str) -> float:
        delta = self.cache["clean"][sender] - self.cache["corrupt"][sender]
        m = re.match(r"L(\d+)\.(?:H(\d+)\.)?(q|k|v|mlp\.in)$", receiver)
        hs = []
        if receiver == "logits":
            hs.append(self.m.transformer.ln_f.register_forward_pre_hook(
                lambda mod, a: (a[0] + delta,)))
        else:
            assert m
            blk = self.blocks[int(m.group(1))]
            box: dict = {}
            if m.group(3) == "mlp.in":
                hs.append(blk.ln_2.register_forward_pre_hook(
                    lambda mod, a: box.__setitem__("x", a[0])))
                hs.append(blk.mlp.register_forward_pre_hook(
                    lambda mod, a: (blk.ln_2.forward(box["x"] + delta),)))
            else:
                d, h = self.m.config.n_embd, int(m.group(2))
                dh = d // self.m.config.n_head
                lo = "qkv".index(m.group(3)) * d + h * dh
                hs.append(blk.ln_1.register_forward_pre_hook(
                    lambda mod, a: box.__setitem__("x", a[0])))

                def post(mod, a, out):
                    full = mod.forward(blk.ln_1.forward(box["x"] + delta))
                    out = out.clone()
                    out[..., lo:lo + dh] = full[..., lo:lo + dh]
                    return out
                hs.append(blk.attn.c_attn.register_forward_hook(post))
        with torch.no_grad():
            logits = self.m(self.b).logits
        for x in hs:
            x.remove()
        last = logits[:, -1]
        return float((last[:, self.ans] - last[:, self.dis]).mean())
