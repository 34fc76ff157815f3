"""When a file read before is known to be unchanged: its stamp.

A stamp is the file's device, inode, size, modification and change times. Every write sets
the change time, which no program can set back (a copy that keeps the modification time
still moves it), so what was read from a file under one stamp holds while the stamp does.
Two writes within one tick of a coarse filesystem clock can leave the same times, so a file
that changed within the last SETTLED_SECONDS has no stamp yet: read it again.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

SETTLED_SECONDS = 2.0


def settled_stamp(path: str | os.PathLike[str]) -> tuple | None:
    """The file's stamp, or None while it changed too recently to be trusted."""
    st = os.stat(path)
    if time.time() - max(st.st_mtime, st.st_ctime) <= SETTLED_SECONDS:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_settled(reader: Callable[..., Any], path: str, *args: Any) -> Any:
    """`reader(path, *args, stamp)`, an lru_cache'd function of the file, kept per stamp;
    called afresh (its cache bypassed) while the file has no stamp yet."""
    stamp = settled_stamp(path)
    if stamp is None:
        return reader.__wrapped__(path, *args, ())
    return reader(path, *args, stamp)
