"""Tokenized inputs of a run: left padding, attention mask, position ids, and the mapping
from a spec's positions (`last`, `3`, `2..5`, a data column) to padded token indices.

Prompts are padded on the left so that the last token sits at the same index in every row;
position ids count from each row's first real token, so a padded row computes exactly what
the unpadded prompt would (docs/language.md §3, `run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from patchc.compiler.errors import RuntimeInterventionError
from patchc.compiler.ir import Positions


@dataclass
class Batch:
    """One run's prompts, ready for the model."""

    input_ids: torch.Tensor  # [n, T]
    attention_mask: torch.Tensor  # [n, T], 0 on padding
    position_ids: torch.Tensor  # [n, T]
    lengths: list[int]  # real tokens per row
    # position_index results by position (not data-column ones): a sweep `@ each` asks for
    # the same few positions at every site. Read-only tensors; a new Batch starts empty.
    _index: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    def offset(self, row: int) -> int:
        """Padded index of the row's first real token."""
        return self.width - self.lengths[row]

    def repeat(self, times: int) -> "Batch":
        """Each row repeated `times` times in a row (noise samples)."""
        if times == 1:
            return self
        return Batch(self.input_ids.repeat_interleave(times, 0),
                     self.attention_mask.repeat_interleave(times, 0),
                     self.position_ids.repeat_interleave(times, 0),
                     [n for n in self.lengths for _ in range(times)])

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     self.position_ids.to(device), self.lengths)

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids}


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each prompt, special tokens (BOS) included as the tokenizer adds them.
    One call for the whole list (the same ids as one call per prompt, without padding):
    per call, an HF tokenizer's own overhead was most of tokenizing a short prompt."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]


def make_batch(ids: list[list[int]], pad_id: int) -> Batch:
    """The rows padded on the left: ids, mask (1 on real tokens) and position ids (counting
    from each row's first real token, 0 on padding), each made in one operation."""
    width = max(len(r) for r in ids)
    lengths = [len(r) for r in ids]
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in ids],
                             dtype=torch.long).view(len(ids), width)
    offsets = torch.tensor([width - n for n in lengths], dtype=torch.long)[:, None]
    mask = (torch.arange(width)[None, :] >= offsets).long()
    pos = (torch.arange(width)[None, :] - offsets).clamp(min=0)
    return Batch(input_ids, mask, pos, lengths)


def token_id(tokenizer, text: str) -> int:
    """The first token of `text` tokenized without special tokens; a leading space is kept
    as the data gives it (" Mary" is one GPT-2 token). `tokenizer`: an HF tokenizer, or a
    wrapped one (compiler/tokens.py: its cached ids)."""
    plain = getattr(tokenizer, "encode_plain", None)
    ids = plain(text) if plain is not None else \
        tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise RuntimeInterventionError("E420", f"{text!r} tokenizes to no tokens")
    return int(ids[0])


def position_index(batch: Batch, pos: Positions, columns: dict[tuple[str, str], list[int]],
                   ) -> torch.Tensor:
    """A [n, k] LongTensor of padded token indices selected by `pos` in each row; k is 1 for
    last/index/column positions, hi-lo+1 for ranges, T for all positions (padding included:
    writes at padded indices are harmless, they are masked out). Callers must not write
    into the result (it is cached on the batch)."""
    if pos.kind == "column":
        return _position_index(batch, pos, columns)
    if pos not in batch._index:
        batch._index[pos] = _position_index(batch, pos, columns)
    return batch._index[pos]


def _position_index(batch: Batch, pos: Positions, columns: dict[tuple[str, str], list[int]],
                    ) -> torch.Tensor:
    n, width = batch.n, batch.width
    if pos.kind == "all":
        return torch.arange(width).expand(n, width)
    if pos.kind == "last":
        return torch.full((n, 1), width - 1, dtype=torch.long)
    offsets = width - torch.tensor(batch.lengths, dtype=torch.long)  # batch.offset(i)
    if pos.kind == "index":
        # A row shorter than the position (an `@ each` sweep over prompts of different
        # lengths) points at its last token; position_valid() marks it so nothing uses it.
        lengths = torch.tensor(batch.lengths, dtype=torch.long)
        return (offsets + torch.minimum(torch.tensor(pos.lo), lengths - 1))[:, None]
    if pos.kind == "range":
        _check_inside(batch, pos.lo, pos.hi)
        return offsets[:, None] + torch.arange(pos.lo, pos.hi + 1)[None, :]
    if pos.kind == "set":
        _check_inside(batch, min(pos.values), max(pos.values))
        return offsets[:, None] + torch.tensor(pos.values, dtype=torch.long)[None, :]
    if pos.kind == "span":
        return _span_index(batch, pos, columns)
    assert pos.column is not None
    values = _column(columns, pos.column, n)
    for i, v in enumerate(values):
        if not 0 <= v < batch.lengths[i]:
            raise RuntimeInterventionError(
                "E421", f"row {i}: position {'.'.join(pos.column)} = {v} is outside its "
                f"{batch.lengths[i]} tokens")
    return (offsets + torch.tensor(values, dtype=torch.long))[:, None]


def _column(columns: dict[tuple[str, str], list[int]], column: tuple[str, str], n: int
            ) -> list[int]:
    values = columns[column]
    if len(values) != n:
        values = [v for v in values for _ in range(n // len(values))]  # noise samples
    return values


def span_bounds(batch: Batch, pos: Positions, columns) -> tuple[list[int], list[int]]:
    """Each row's first and last position of an `@ d.a..d.b` span (checked inside it)."""
    assert pos.column is not None and pos.end is not None
    los, his = _column(columns, pos.column, batch.n), _column(columns, pos.end, batch.n)
    for i, (lo, hi) in enumerate(zip(los, his)):
        if not 0 <= lo <= hi < batch.lengths[i]:
            raise RuntimeInterventionError(
                "E421", f"row {i}: positions {lo}..{hi} ({pos}) are not a span inside its "
                f"{batch.lengths[i]} tokens")
    return los, his


def _span_index(batch: Batch, pos: Positions, columns) -> torch.Tensor:
    """[n, k] with k the longest span; a shorter row repeats its last position in the
    slots past its span (slot_mask marks them; writers copy that slot's new value)."""
    los, his = span_bounds(batch, pos, columns)
    k = max(h - lo + 1 for lo, h in zip(los, his))
    out = torch.empty(batch.n, k, dtype=torch.long)
    for i, (lo, hi) in enumerate(zip(los, his)):
        out[i] = batch.offset(i) + torch.clamp(torch.arange(lo, lo + k), max=hi)
    return out


def slot_mask(batch: Batch, pos: Positions, columns) -> torch.Tensor | None:
    """[n, k] bool: which slots of position_index are a row's own positions; None when all
    are (only per-example spans of different lengths have repeated slots)."""
    if pos.kind != "span":
        return None
    los, his = span_bounds(batch, pos, columns)
    k = max(h - lo + 1 for lo, h in zip(los, his))
    mask = torch.arange(k)[None, :] <= torch.tensor([h - lo for lo, h in zip(los, his)])[:, None]
    return None if bool(mask.all()) else mask


def position_valid(batch: Batch, pos: Positions) -> torch.Tensor:
    """[n] bool: does each row have the position? Only an index past a row's length (from
    `@ each` over prompts of different lengths) is missing; that row's experiment result is
    NaN and it is left out of the table's means."""
    if pos.kind != "index":
        return torch.ones(batch.n, dtype=torch.bool)
    return torch.tensor([pos.lo < n for n in batch.lengths])


def positions_index(batch: Batch, positions, columns) -> tuple[torch.Tensor, list[int]]:
    """position_index of each of `positions`, concatenated ([n, sum k]), and each one's k.
    Single token indices (an `@ each` sweep's positions) are computed in one operation, as
    position_index computes each."""
    if positions and all(p.kind == "index" for p in positions):
        lengths = torch.tensor(batch.lengths, dtype=torch.long)
        los = torch.tensor([p.lo for p in positions], dtype=torch.long)
        index = (batch.width - lengths)[:, None] + torch.minimum(los[None, :],
                                                                 (lengths - 1)[:, None])
        return index, [1] * len(positions)
    index = [position_index(batch, p, columns) for p in positions]
    return torch.cat(index, 1), [int(i.shape[1]) for i in index]


def positions_valid(batch: Batch, positions) -> torch.Tensor:
    """[P, n] bool: position_valid of each of `positions`, stacked."""
    if positions and all(p.kind == "index" for p in positions):
        los = torch.tensor([p.lo for p in positions], dtype=torch.long)
        return los[:, None] < torch.tensor(batch.lengths, dtype=torch.long)[None, :]
    return torch.stack([position_valid(batch, p) for p in positions])


def _check_inside(batch: Batch, lo: int, hi: int) -> None:
    short = min(batch.lengths)
    if hi >= short:
        row = batch.lengths.index(short)
        raise RuntimeInterventionError(
            "E421", f"position {hi if lo == hi else f'{lo}..{hi}'} is outside row {row}, which "
            f"has {short} tokens")
