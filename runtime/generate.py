"""Metrics that run the model past the prompt: `generate(N) contains DATA.column`,
`text(N)` (the greedy continuation) and `seqlogprob(TOK)` (teacher forcing).

The interventions apply to the prompt pass only (as back-patching does): the prompt runs
once with the forward's hooks, filling a KV cache; the further tokens are decoded from that
cache without hooks.
"""

from __future__ import annotations

import torch

from .compat import output_cache, with_cache
from .inputs import Batch


def _prompt(interp, batch: Batch, hooks: list):
    """The prompt pass with the forward's hooks: (output, model kwargs)."""
    kwargs = batch.to(interp.device).model_kwargs()
    with interp.adapter.hooks(hooks), interp.model_pass():
        out = interp.model(**kwargs, use_cache=True)
    return out, kwargs


@torch.no_grad()
def greedy(interp, batch: Batch, hooks: list, n_new: int) -> list[str]:
    """The greedy continuation of every row, n_new tokens, decoded to text."""
    model = interp.model
    out, kwargs = _prompt(interp, batch, hooks)
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
    return interp.tokenizer.batch_decode(ids, skip_special_tokens=True)


def contains_answer(interp, batch: Batch, hooks: list, n_new: int, answers: list[str],
                    samples: int) -> torch.Tensor:
    """1.0 where the greedy continuation's text contains the row's answer, else 0.0 [N]."""
    texts = greedy(interp, batch, hooks, n_new)
    rows = [a for a in answers for _ in range(samples)]
    return torch.tensor([float(a.strip() in t) for a, t in zip(rows, texts)])


@torch.no_grad()
def sequence_logprob(interp, batch: Batch, hooks: list, answers: list[list[int]]
                     ) -> torch.Tensor:
    """[N] float32: the summed log-probability of each row's answer tokens, the first
    predicted at the prompt's last position, each later one after the ones before it."""
    out, kwargs = _prompt(interp, batch, hooks)
    first = torch.log_softmax(out.logits[:, -1].float(), -1)
    k = max(len(a) for a in answers)
    n = batch.n
    ids = torch.zeros(n, k, dtype=torch.long)
    real = torch.zeros(n, k, dtype=torch.bool)
    for i, a in enumerate(answers):
        ids[i, :len(a)] = torch.tensor(a, dtype=torch.long)
        real[i, :len(a)] = True
    device = first.device
    total = first.gather(1, ids[:, :1].to(device))[:, 0]
    if k > 1:
        # Feed the answer tokens after the cached prompt; a shorter answer's padding comes
        # after its real tokens, so (causal attention) it changes none of them.
        mask = torch.cat([kwargs["attention_mask"],
                          torch.ones(n, k, dtype=kwargs["attention_mask"].dtype,
                                     device=kwargs["attention_mask"].device)], dim=1)
        pos = kwargs["position_ids"][:, -1:] + 1 + torch.arange(k, device=mask.device)[None]
        step = {"input_ids": ids.to(mask.device), "attention_mask": mask, "position_ids": pos}
        with interp.model_pass():
            more = interp.model(**with_cache(interp.model, step, output_cache(out)))
        lp = torch.log_softmax(more.logits[:, :-1].float(), -1).to(device)
        picked = lp.gather(2, ids[:, 1:, None].to(device))[..., 0]
        total = total + (picked * real[:, 1:].to(device)).sum(1)
    return total.cpu()
