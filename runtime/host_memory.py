"""How the C allocator hands host memory to torch during a CPU run.

torch's CPU tensors come from the C library's malloc, and glibc's defaults return freed
memory to the operating system eagerly: a freed block at the top of the heap above the trim
threshold is released, and blocks above the mmap threshold are mapped and unmapped one by
one. Both thresholds adapt, but a batched pass allocates and frees the same few megabytes of
activations per module, so memory is released and faulted back in (zero-filled, page by page)
over and over. On the bundled IOI model a forward of 48 prompts x 14 tokens ran 1.5x slower
per row than one of 32 for that reason alone, and patchc's batched passes are exactly such
forwards (docs/performance.md, "The host allocator").

So before its first CPU run patchc keeps freed memory in the process: blocks up to
`MMAP_THRESHOLD` come from the heap, and up to `TRIM_THRESHOLD` of free memory at its top is
kept for the next allocation. The memory a run has live is the same; what the process holds
can be more: up to TRIM_THRESHOLD of freed memory per malloc arena stays with it between
runs, and blocks the heap now serves (up to 32 MiB) can leave gaps in it. The setting is per
process and made once; `PATCHC_SYSTEM_MALLOC=1` leaves the allocator as it is. Other C
libraries (macOS, musl, Windows) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3

_tried: bool | None = None  # None: not yet; else whether the thresholds were set


def keep_freed_memory() -> bool:
    """Set glibc's thresholds for this process, once (the first call decides). True when
    they are set, False where the C library is not glibc or the user opted out."""
    global _tried
    if _tried is None:
        _tried = _set()
    return _tried


def _set() -> bool:
    if os.environ.get("PATCHC_SYSTEM_MALLOC", "") not in ("", "0"):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    # Both together: setting either one turns glibc's own adaptation off for both.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _mallopt():
    """glibc's mallopt, or None where the process does not run on glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        if not hasattr(libc, "gnu_get_libc_version"):  # only glibc has it (musl does not)
            return None
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt
