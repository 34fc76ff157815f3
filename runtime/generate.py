"""`generate(N) contains DATA.column`: greedy generation scored by answer containment.

The interventions apply to the prompt pass only (as back-patching does): the prompt runs
once with the forward's hooks, filling a KV cache; the N-1 further tokens are decoded from
that cache without hooks.
"""

from __future__ import annotations

import torch

from .compat import output_cache, with_cache
from .inputs import Batch


@torch.no_grad()
def contains_answer(interp, batch: Batch, hooks: list, n_new: int, answers: list[str],
                    samples: int) -> torch.Tensor:
    """1.0 where the greedy continuation's text contains the row's answer, else 0.0 [N]."""
    model, device = interp.model, interp.device
    kwargs = batch.to(device).model_kwargs()
    with interp.adapter.hooks(hooks), interp.model_pass():
        out = model(**kwargs, use_cache=True)
    cache = output_cache(out)
    mask = kwargs["attention_mask"]
    pos = kwargs["position_ids"][:, -1:]
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    generated = [token]
    for _ in range(n_new - 1):
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        pos = pos + 1
        step = {"input_ids": token, "attention_mask": mask, "position_ids": pos,
                "use_cache": True}
        with interp.model_pass():
            out = model(**with_cache(model, step, cache))
        cache = output_cache(out)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        generated.append(token)
    ids = torch.cat(generated, dim=1).cpu()
    texts = interp.tokenizer.batch_decode(ids, skip_special_tokens=True)
    rows = [a for a in answers for _ in range(samples)]
    return torch.tensor([float(a.strip() in t) for a, t in zip(rows, texts)])
