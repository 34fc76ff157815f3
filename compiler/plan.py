"""The Plan: what compiler/schedule.py makes and runtime/execute.py runs (pydantic models,
because a Plan crosses process boundaries: `--emit plan` prints it, workers receive it).
See schedule.py for what each step means."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field


class ForwardStep(BaseModel):
    kind: Literal["forward"] = "forward"
    members: list[str]
    run: str
    samples: int = 1
    rows: int  # batch rows: members x examples x samples
    width: int  # padded prompt width
    p0: int = 0  # first position computed; earlier keys/values come from the twin's cache
    start_layer: int = 0
    start: str | None = None  # the Read holding the twin's resid_pre(start_layer)
    twin: str | None = None
    keep_kv: bool = False  # others narrow from this forward: keep its key/value cache
    logit_positions: int | None = None  # per row (None: every position computed)
    logit_tokens: bool = False
    generate: bool = False  # a metric generates text: run as the naive interpreter does
    flops: float = 0.0
    bytes: int = 0  # activation estimate of the pass
    caches: list[str] = []
    frees: list[str] = []
    # A chunk of a compact sweep (members == [the sweep Forward]): the range of its
    # execution order this pass runs (compiler/schedule_sweep.py).
    sweep: tuple[int, int] | None = None
    passes: int = 1  # model passes (the naive plan runs a sweep's members one pass each)

    def experiments(self) -> int:
        return self.sweep[1] - self.sweep[0] if self.sweep else len(self.members)


class NodeStep(BaseModel):
    kind: Literal["vector", "metric", "backward", "estimate", "select"]
    node: str
    flops: float = 0.0
    frees: list[str] = []


Step = Annotated[Union[ForwardStep, NodeStep], Field(discriminator="kind")]


class PlanSummary(BaseModel):
    forwards: int  # model passes (a batched chunk is one)
    experiments: int  # Forward nodes computed
    backwards: int
    flops: float
    peak_bytes: int


class Plan(BaseModel):
    steps: list[Step]
    budget_bytes: int | None  # None: unbounded
    batch_size: int | None = None  # rows per pass cap (`set batch_size`)
    weights_bytes: int
    dtype_bytes: int = 4
    passes: list[str] = []
    optimized: PlanSummary
    naive: PlanSummary | None = None
    over_budget: list[int] = []  # steps that could not be made to fit (one forward each)

    def forward_steps(self) -> list[ForwardStep]:
        return [s for s in self.steps if isinstance(s, ForwardStep)]
