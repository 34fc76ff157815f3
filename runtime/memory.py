"""The memory budget a run plans under: `set memory`, else what the device has free now.

The schedule (compiler/schedule.py) splits passes into chunks that fit this budget; the
runtime reads the free memory once per run, before the first pass.
"""

from __future__ import annotations

import torch

from patchc.compiler.costs import parse_bytes

QUANTUM = 64 << 20


def memory_budget(memory: str | None, device: torch.device, weights: int, share: int = 1
                  ) -> int:
    """`set memory`, else weights + half of the memory free now (a conservative budget),
    divided among the `share` worker processes that compute on this device and rounded
    down to QUANTUM."""
    if memory is not None:
        return parse_bytes(memory)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = available_ram()
    half = free // 2 // share
    # Rounded down to a QUANTUM: a budget that moved with every page freed elsewhere would
    # make each run's plan a new one (patchc/compile_cache.py keeps plans per budget).
    return weights + (half - half % QUANTUM if half > QUANTUM else half)


def available_ram() -> int:
    """The memory available now: Linux's MemAvailable (what psutil reports there, read
    directly: psutil parses every field), else psutil's, else 4 GiB."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return 4 << 30
