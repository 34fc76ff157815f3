"""What `read` and `lens` need at run time: a Read's captured value as the tensor that
`results.activations(NAME)` returns, and a residual-shaped value decoded to logits.

A read's tensor is [rows, positions, width] (patterns: [rows, query positions, key
positions]). Rows are the run's examples (times its noise samples, samples of one example
consecutive). Positions are as the Read selected them, counted from each prompt's first
token: for every position (`read SITE in RUN`), the axis covers the longest prompt, and a
shorter prompt's positions past its end are NaN (for a run of one prompt, or of prompts of
one length, there is no padding at all); a per-example span shorter than the longest is
NaN-filled after its end, and so is a single position (an `@ each` sweep's) past a short
prompt's end. Pattern key positions are likewise counted from the prompt's first
token.
"""

from __future__ import annotations

import torch

from patchc.compiler.ir import IRGraph, Read, Site

from .dictionaries import host_space
from .inputs import position_valid
from .writes import ReadValue


def read_tensor(rv: ReadValue, pattern: bool) -> torch.Tensor:
    """The padding-free tensor of a captured Read (see the module docstring)."""
    value = rv.value.detach().float().cpu()
    batch = rv.batch
    if rv.mask is not None:
        value = torch.where(rv.mask[..., None], value, torch.nan)
    if rv.pos.kind == "index":  # an `@ each` position past a short prompt's end
        have = position_valid(batch, rv.pos)
        if not bool(have.all()):
            value = torch.where(have.view(-1, *[1] * (value.dim() - 1)), value, torch.nan)
    if rv.pos.kind == "all" and any(n != batch.width for n in batch.lengths):
        out = torch.full_like(value, torch.nan)
        for i, n in enumerate(batch.lengths):
            out[i, :n] = value[i, batch.offset(i):]
        value = out
    if pattern and any(n != batch.width for n in batch.lengths):
        out = torch.full_like(value, torch.nan)
        for i, n in enumerate(batch.lengths):
            out[i, :, :n] = value[i, :, batch.width - n:]
        value = out
    return value.contiguous()


def table_reads(ir: IRGraph) -> list[str]:
    """The Reads that a table reports (`read` statements)."""
    return [nid for t in ir.tables for row in t.rows for _, nid in row.values
            if nid in ir.g and isinstance(ir.node(nid), Read)]


def collect_reads(ir: IRGraph, values: dict, results: dict) -> None:
    """Put each reported Read's tensor into `results`."""
    for rid in table_reads(ir):
        if rid in values and rid not in results:
            read: Read = ir.node(rid)  # type: ignore[assignment]
            results[rid] = read_tensor(values[rid], read.site.kind == "pattern")


@torch.no_grad()
def lens_logits(adapter, rv: ReadValue, site: Site) -> torch.Tensor:
    """[n, vocab] float32: a residual-shaped value at one position decoded through the
    model's own final norm and unembedding. A dictionary's latents are decoded as their
    contribution to the host site (activation x decoder row); its error term as itself."""
    x, _ = host_space(adapter.dictionaries, site, rv.value[:, :1])
    weight = next(adapter.ln_final().parameters(), None)
    if weight is not None and weight.device.type != "meta":
        x = x.to(weight.device, weight.dtype)
    return adapter.unembed(x)[:, 0].float()
