"""Whether rank 0 of a spawned run is still there, and removing the run's temporary folder
when it is not: a spawned worker's watch on its parent (patchc/workers.py), and the next
run's sweep of folders whose rank 0 is gone."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

# How often a spawned worker looks whether rank 0 is still there.
PARENT_POLL_S = 0.5


def watch_parent(parent: int, root: Path) -> None:
    """End this worker when rank 0 is gone (killed: it cannot stop its workers, and gloo
    would wait a day for it), and remove the run's temporary folder it can no longer
    remove itself. A worker's parent is the fork server, so rank 0 is watched by its pid."""
    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if not alive(parent):
                remove(root)
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="patchc-parent-watch").start()


OWNER = "owner"  # in a run's folder: rank 0's pid


def new_root() -> Path:
    """A run's temporary folder, holding rank 0's pid; the folders of earlier runs whose rank
    0 is gone are removed first (killed after its workers had finished, a run leaves its
    folder to nobody else)."""
    for old in Path(tempfile.gettempdir()).glob("patchc-workers-*"):
        try:
            owner = int((old / OWNER).read_text())
        except (OSError, ValueError):
            continue  # (being made, or not ours to judge)
        if owner != os.getpid() and not alive(owner):
            remove(old)
    root = Path(tempfile.mkdtemp(prefix="patchc-workers-"))
    (root / OWNER).write_text(str(os.getpid()))
    return root


def remove(root: Path) -> None:
    """Remove the run's folder, again while another worker still writes into it."""
    for _ in range(20):
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            return
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Is process `pid` running (not gone, not a zombie waiting to be reaped)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
