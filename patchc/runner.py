"""How a run is executed: in this process, or sharded over worker processes.

`execute` is the entry point of patchc.run and `patchc run`. It refuses what cannot run over
workers, then hands one process's run to patchc/execution.py, or starts the workers through
patchc/workers.py (which calls execution.py in each of them). Imports point one way:
runner.py -> workers.py -> execution.py.
"""

from __future__ import annotations

import os

from typing import Any, Callable

from patchc.compiler import ast as A
from patchc.compiler.errors import RuntimeInterventionError
from patchc.execution import run_process
from patchc.results import Results


def max_workers() -> int:
    """One worker per CPU core this process may use, or per GPU, whichever is more."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    return max(cores, torch.cuda.device_count() if torch.cuda.is_available() else 0)


def execute(spec: A.Spec, model: Any = None, tokenizer: Any = None, naive: bool = False,
            trust_remote_code: bool = False,
            progress: Callable[[int, int], None] | None = None,
            overrides: dict[str, Any] | None = None,
            workers: int | str = 1, saes: dict[str, Any] | None = None) -> Results | None:
    """Run a spec. `workers` N > 1 spawns N-1 worker processes (patchc/workers.py);
    "torchrun" joins the processes torchrun started. With workers, only rank 0 returns
    Results (the others None). `saes`: SAELens objects for dictionaries the spec declares
    (api.run)."""
    if workers == 1:
        return run_process(spec, model, tokenizer, naive, trust_remote_code, progress,
                           overrides, saes=saes)
    if saes:
        raise RuntimeInterventionError(
            "E484", "SAE objects (saes=...) are used in this process only: run without "
            "workers, or give the spec their folders").with_source(spec.source)
    from patchc import workers as W  # torch.distributed: only when workers are asked for

    if naive or (workers != "torchrun" and int(workers) < 1):
        raise RuntimeInterventionError(
            "E416", f"--workers {workers} with --naive: the naive interpreter (the "
            "reference oracle) runs in one process" if naive else
            f"--workers must be at least 1, not {workers}",
            hint="drop --naive or --workers" if naive else None).with_source(spec.source)
    if workers == "torchrun":
        return run_process(spec, model, tokenizer, False, trust_remote_code, progress,
                           overrides, group=W.join_torchrun())
    most = max_workers()
    if int(workers) > most:  # (each worker loads the model: more than the machine has only
        raise RuntimeInterventionError(  # contends, and thousands exhaust the system)
            "E416", f"--workers {workers}: this machine has room for {most} (one per CPU core "
            "or GPU, whichever is more)", hint=f"--workers {most} or fewer"
        ).with_source(spec.source)
    return W.spawn(spec, int(workers), model, tokenizer, trust_remote_code, progress,
                   overrides)
