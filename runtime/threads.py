"""How many CPU threads torch computes with during a run (`set threads`, `--threads`).

torch's own default is one thread per physical core. For the small matrices of small models
(and of narrowed, batched passes) the threads spend more time meeting than computing, and
on a machine other processes keep busy they wait for cores: on a loaded 2-core machine the
default ran 4-5x slower than one thread (docs/performance.md has the measurements). So unless
the spec says, patchc takes the smallest of: torch's core count, the cores the load average
leaves free, and one thread per 512 model dimensions (at least 1). The setting is restored
after the run, so a notebook's own choice survives.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

DIMS_PER_THREAD = 512
_CORES = torch.get_num_threads()  # torch's default: the physical cores it may use


def default_threads(d_model: int, cores: int | None = None,
                    load: float | None = None) -> int:
    """Threads for a model of width d_model on this machine (cores, 1-minute load)."""
    cores = cores if cores is not None else _CORES
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not available on this platform
            load = 0.0
    free = cores - int(load + 0.5)
    return max(1, min(cores, free, d_model // DIMS_PER_THREAD))


@contextlib.contextmanager
def using_threads(n: int) -> Iterator[int]:
    """torch computes with n threads inside (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
