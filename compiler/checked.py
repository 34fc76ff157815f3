"""What check.py hands to lower.py: the AST plus everything learned while checking it.

`Options` (the `set` statements) is a pydantic model because it crosses process and file
boundaries (the manifest, worker processes); the rest are plain frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from . import ast as A
from .errors import PatchcError
from .modelspec import ModelSpec


class Options(BaseModel):
    """The `set` options of a spec (LANGUAGE.md §3), validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"  # cpu, cuda, cuda:N, auto
    batch_size: int | None = None  # examples per pass; None: as many as memory allows
    memory: str | None = None  # budget the scheduler plans under, e.g. "8GB"
    seed: int = 0
    device_map: str | None = None  # "auto": shard over all GPUs with accelerate


@dataclass(frozen=True, slots=True)
class DataTable:
    """A `data` declaration, loaded: column names and rows (plain dicts, read-only)."""

    name: str
    columns: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]
    path: str | None = None  # resolved file path, None for inline rows


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A `run` declaration with its prompts resolved. `lengths` are the token counts per
    example (None when no tokenizer could be read without loading the model)."""

    name: str
    texts: tuple[str, ...]
    lengths: tuple[int, ...] | None
    data: str | None = None  # the data table its prompts come from, if any

    @property
    def n_examples(self) -> int:
        return len(self.texts)

    @property
    def n_tokens(self) -> int | None:
        """The common token count, if every example has the same one."""
        if not self.lengths or len(set(self.lengths)) != 1:
            return None
        return self.lengths[0]


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
