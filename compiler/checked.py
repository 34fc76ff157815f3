"""What check.py hands to lower.py: the AST plus everything learned while checking it.

`Options` (the `set` statements) is a pydantic model because it crosses process and file
boundaries (the manifest, worker processes); the rest are plain frozen dataclasses.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from . import ast as A
from .device_map import valid_value
from .errors import PatchcError
from .limits import MAX_MEMORY_BYTES, SEED_RANGE
from .modelspec import ModelSpec


MAX_THREADS = 1024  # torch's intra-op threads: far past any machine's cores


class Options(BaseModel):
    """The `set` options of a spec (docs/language.md §4), validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"  # cpu, cuda, cuda:N, auto
    batch_size: int | None = None  # examples per pass; None: as many as memory allows
    memory: str | None = None  # budget the scheduler plans under, e.g. "8GB"
    seed: int = 0
    # "auto" (or another accelerate strategy), a .json map file, or (API) a dict; see
    # compiler/device_map.py
    device_map: str | dict[str, int | str] | None = None
    # CPU threads torch computes with (torch.set_num_threads); None: runtime/threads.py
    # chooses from the machine and the model's size
    threads: int | None = None

    # Values are checked here, not at run time, so `patchc check` catches `set device = gpu`.
    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"cpu|auto|mps|cuda(:\d+)?", v):
            raise ValueError("device must be cpu, cuda, cuda:N, mps or auto")
        return v

    @field_validator("memory", mode="before")
    @classmethod
    def _memory_text(cls, v: object) -> object:
        if v is not None and not isinstance(v, str):  # (`--set memory=512`: no unit)
            raise ValueError(f'memory must be a size with its unit, such as "8GB" or '
                             f'"512MiB"; got {v!r}')
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\d+(\.\d+)?\s*([KMGT]i?B|B)", v.strip(),
                                              re.IGNORECASE):
            raise ValueError('memory must be a size such as "8GB" or "512MiB"')
        return v

    @field_validator("memory")
    @classmethod
    def _memory_bound(cls, v: str | None) -> str | None:
        from .costs import parse_bytes

        try:
            too_big = v is not None and parse_bytes(v) > MAX_MEMORY_BYTES
        except OverflowError:  # 400 digits: beyond a float
            too_big = True
        if too_big:
            raise ValueError("memory must be at most 1 EiB")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if not SEED_RANGE[0] <= v <= SEED_RANGE[1]:
            raise ValueError("seed must be a 64-bit integer (-2^63 to 2^63-1)")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("batch_size must be at least 1")
        return v

    @field_validator("threads")
    @classmethod
    def _threads(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= MAX_THREADS:  # (100000 crashed OpenMP)
            raise ValueError(f"threads must be from 1 to {MAX_THREADS}")
        return v

    @field_validator("device_map")
    @classmethod
    def _device_map(cls, v: str | dict | None) -> str | dict | None:
        problem = None if v is None else valid_value(v)
        if problem:
            raise ValueError(problem)
        return v


@dataclass(frozen=True, slots=True)
class DataTable:
    """A `data` declaration, loaded: column names and rows (plain dicts, read-only)."""

    name: str
    columns: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]
    path: str | None = None  # resolved file path, None for inline rows
    row_lines: tuple[int, ...] | None = None  # line of each row in a .jsonl/.csv file

    def where(self, row: int) -> str:
        """How a message names a row: `row 2 (line 3 of ioi.jsonl)`."""
        if self.row_lines and self.path and row < len(self.row_lines):
            return f"row {row} (line {self.row_lines[row]} of {os.path.basename(self.path)})"
        return f"row {row}"


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A `run` declaration with its prompts resolved. `lengths` are the token counts per
    example (None when no tokenizer could be read without loading the model)."""

    name: str
    texts: tuple[str, ...]
    lengths: tuple[int, ...] | None
    data: str | None = None  # the data table its prompts come from, if any
    samples: int = 1  # noise(..., samples=N): each example is run N times

    @property
    def n_examples(self) -> int:
        return len(self.texts)

    @property
    def n_tokens(self) -> int | None:
        """The common token count, if every example has the same one."""
        if not self.lengths or len(set(self.lengths)) != 1:
            return None
        return self.lengths[0]

    @property
    def max_tokens(self) -> int | None:
        """The longest example's token count (`@ each` sweeps 0..max_tokens-1)."""
        return max(self.lengths) if self.lengths else None


@dataclass(frozen=True, slots=True)
class CheckedSpec:
    spec: A.Spec
    model: ModelSpec
    options: Options
    data: dict[str, DataTable]
    runs: dict[str, RunInfo]
    metrics: dict[str, A.MetricDecl]
    vectors: dict[str, A.VectorDecl]
    warnings: tuple[PatchcError, ...] = field(default=())
    vector_dims: dict[str, int] = field(default_factory=dict)  # size of each `vector`
    # What check tokenized with (tokens.py), holding the ids it made: the runtime reuses
    # them when it runs with the same tokenizer (tokens.shared). None: no tokenizer.
    tokenizer: Any = field(default=None, compare=False, repr=False)
    # The site patterns' matches as check expanded them (resolve.Expansions): lowering asks
    # for the same patterns again. None: lowering expands them itself.
    sites: Any = field(default=None, compare=False, repr=False)
