"""Metrics that run the model past the prompt: `generate(N) contains DATA.column`,
`text(N)` (the greedy continuation) and `seqlogprob(TOK)` (teacher forcing).

The interventions apply to the prompt pass only (as back-patching does): the prompt runs
once with the forward's hooks, filling a KV cache; the further tokens are decoded from that
cache without hooks. The plan interpreter runs a batch of such forwards together
(`run_generating`): one prompt pass of every member's rows, each member's writes on its own
rows, then all rows decoded together, as many tokens as the longest continuation asks (a
greedy continuation of N tokens is the first N of a longer one).
"""

from __future__ import annotations

import torch

from patchc.compiler import ast as A
from patchc.compiler import printer
from patchc.compiler.ir import Forward, IRGraph, Metric

from .compat import output_cache, with_cache
from .inputs import Batch, position_index
from .prefix import trimmed_logits


def _prompt(interp, batch: Batch, hooks: list):
    """The prompt pass with the forward's hooks: (output, model kwargs)."""
    kwargs = batch.to(interp.device).model_kwargs()
    with interp.adapter.hooks(hooks), interp.model_pass():
        out = interp.model(**kwargs, use_cache=True)
    return out, kwargs


@torch.no_grad()
def greedy(interp, batch: Batch, hooks: list, n_new: int) -> list[str]:
    """The greedy continuation of every row, n_new tokens, decoded to text."""
    out, kwargs = _prompt(interp, batch, hooks)
    ids = _decode(interp, out, kwargs, n_new)
    return interp.tokenizer.batch_decode(ids, skip_special_tokens=True)


def _logit_slots(ir: IRGraph, fids: list[str], batch: Batch, columns) -> tuple:
    """The prompt pass's logits: (slot per metric position, [n, K] padded positions), the
    last slot the last position (decoding starts there); (None, None) for every position,
    when a metric needs them all (loss)."""
    metrics = [m for fid in fids for x in ir.g.successors(fid)
               if isinstance(m := ir.node(x), Metric) and (m.lens is None or m.reference == fid)]
    if any(isinstance(e, A.MLoss) for m in metrics for e in A.metric_nodes(m.expr)):
        return None, None
    positions = list(dict.fromkeys(m.pos for m in metrics))
    cols = [position_index(batch, p, columns)[:, :1] for p in positions]
    last = torch.full((batch.n, 1), batch.width - 1, dtype=torch.long)
    return {p: j for j, p in enumerate(positions)}, torch.cat([*cols, last], 1)


def _decode(interp, out, kwargs: dict, n_new: int) -> torch.Tensor:
    """[rows, n_new] token ids: the greedy continuation after the prompt pass `out` (whose
    last logit slot is the prompt's last position)."""
    model = interp.model
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
    return torch.cat(generated, dim=1).cpu()


def contains_answer(interp, batch: Batch, hooks: list, n_new: int, answers: list[str],
                    samples: int) -> torch.Tensor:
    """1.0 where the greedy continuation's text contains the row's answer, else 0.0 [N]."""
    return _contains(greedy(interp, batch, hooks, n_new), answers, samples)


def _contains(texts: list[str], answers: list[str], samples: int) -> torch.Tensor:
    rows = [a for a in answers for _ in range(samples)]
    return torch.tensor([float(a.strip() in t) for a, t in zip(rows, texts)])


@torch.no_grad()
def run_generating(ex, ir: IRGraph, step) -> None:
    """A plan step whose forwards' metrics generate (runtime/execute.py): every member's
    ForwardOutput into `ex.values`, as the reference interpreter's forward makes it."""
    fids = list(step.members)
    members: list[Forward] = [ir.node(m) for m in fids]  # type: ignore[misc]
    first = members[0]
    batch = ex.run_inputs(first.run).batch.repeat(first.samples)
    columns = ex.columns_for(first.run)
    k, n = len(members), batch.n
    blocks = [slice(i * n, (i + 1) * n) for i in range(k)]
    hooks = ex.member_hooks(ir, step, batch, columns)
    slots, index = _logit_slots(ir, fids, batch, columns)
    out, kwargs = _prompt_of(ex, step, batch, k, hooks, index)
    outs = [ex.forward_output(ir, fid, f, batch, columns, out.logits[rows], slots, 0, None)
            for fid, f, rows in zip(fids, members, blocks)]
    terms = {e for fid in fids for m in ir.g.successors(fid)
             if isinstance(node := ir.node(m), Metric) and node.forward == fid and
             node.lens is None for e in A.metric_nodes(node.expr)
             if isinstance(e, A.GENERATING)}
    lengths = {e.n for e in terms if isinstance(e, (A.MGenerate, A.MText))}
    texts: dict[int, list[str]] = {}
    if lengths:
        ids = _decode(ex, out, kwargs, max(lengths))
        texts = {m: ex.tokenizer.batch_decode(ids[:, :m], skip_special_tokens=True)
                 for m in sorted(lengths)}
    del out
    rows = ex.run_inputs(first.run).rows
    for e in sorted(terms, key=printer.mexpr):
        if isinstance(e, A.MGenerate):
            answers = [str(r[e.answer.column]) for r in rows]
            for o, b in zip(outs, blocks):
                o.contains[(e.n, e.answer.data, e.answer.column)] = _contains(
                    texts[e.n][b], answers, first.samples)
        elif isinstance(e, A.MText):
            for o, b in zip(outs, blocks):
                o.texts[e.n] = texts[e.n][b]
        else:  # seqlogprob: a teacher-forced pass of every row, after a prompt pass of its own
            answers = ex.seqlogprob_answers(e, first.run, n)
            last = torch.full((n, 1), batch.width - 1, dtype=torch.long)
            values = _teacher(ex, *_prompt_of(ex, step, batch, k, hooks, last), answers * k)
            for o, b in zip(outs, blocks):
                o.seqlogprob[printer.tok(e.tok)] = values[b]
    for fid, o in zip(fids, outs):
        ex.values[fid] = o


def _prompt_of(ex, step, batch: Batch, k: int, hooks: list, index: torch.Tensor | None
               ) -> tuple:
    """The prompt pass of a step's k members (rows member-major) with a key/value cache to
    continue from: from position p0 when the step is narrowed (the earlier positions' keys
    and values the twin's), logits only at `index` ([n, K] padded positions; None: all).
    Returns (output, the model kwargs: the whole prompt's mask and position ids)."""
    kwargs = ex.pass_inputs(step, batch, k, True)  # (a generating step starts at layer 0)
    keep = None if index is None else (index - step.p0).repeat(k, 1)
    with ex.adapter.hooks(hooks), trimmed_logits(ex.model.get_output_embeddings(), keep, None), \
            ex.model_pass():
        return ex.model(**kwargs), kwargs


@torch.no_grad()
def sequence_logprob(interp, batch: Batch, hooks: list, answers: list[list[int]]
                     ) -> torch.Tensor:
    """[N] float32: the summed log-probability of each row's answer tokens, the first
    predicted at the prompt's last position, each later one after the ones before it."""
    return _teacher(interp, *_prompt(interp, batch, hooks), answers)


def _teacher(interp, out, kwargs: dict, answers: list[list[int]]) -> torch.Tensor:
    """sequence_logprob after the prompt pass `out` (its last logit slot the prompt's last
    position)."""
    first = torch.log_softmax(out.logits[:, -1].float(), -1)
    k = max(len(a) for a in answers)
    n = len(answers)
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
