"""A result folder, written all at once: `patchc run --out DIR` and `Results.save(DIR)`.

Everything a run writes (CSVs, manifest.json, PNGs, any other output file) goes into a
staging folder beside DIR (`.DIR.patchc-staging-PID-XXXX`, same filesystem), and only a
complete staging folder takes DIR's place, in one atomic exchange of the two folders. So a
kill -9 at any moment leaves DIR as it was (the old result, or nothing) or the new result,
never a mix, and the stale tables of an earlier result go with it.

A lock file beside DIR (`.DIR.patchc-lock`, holding the writer's pid, locked with flock) is
held from before the model loads until the folder is in place: a second run into the same
folder is refused at once (E607). The kernel drops a flock when its process dies, so the lock
of a killed run is simply taken over, and so are the staging folders it left behind.

DIR must be a folder that holds nothing but an earlier result (every entry accounted for by
its manifest.json), or be empty or absent. Any other folder is refused (E606) unless `force`:
then the new files replace same-named ones one by one, the earlier result's other files are
removed and the user's own files are kept (all-or-nothing holds only for folders patchc owns).
The same file-by-file replacement serves a DIR that holds the working directory (`--out .`),
which an exchange would leave deleted under the user's shell. A DIR the user cannot write to
is refused (E605), although its parent could rename it away.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from patchc.compiler.errors import PatchcError
from patchc.manifest import check_file_name

MANIFEST = "manifest.json"


class OutputError(PatchcError):
    """A result folder that cannot be written (E605-E607)."""


def resolve_out(out: str | os.PathLike[str]) -> Path:
    """The absolute folder; through symlinks, so that a link to a result folder stays a link
    (its target is what gets replaced)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(out))))


def check_out(out: str | os.PathLike[str], force: bool = False) -> Path:
    """Refuse an --out that cannot take a result, before anything is computed."""
    path = resolve_out(out)
    if path.exists() and not path.is_dir():
        raise OutputError("E605", f"--out {out} is a file, not a folder",
                          hint="name a folder (it is created if it does not exist)")
    if path.is_dir() and not os.access(path, os.W_OK):  # (its parent could still rename it)
        raise OutputError("E605", f"--out {out} is a folder you cannot write to",
                          hint="name another folder, or make this one writable")
    if path.is_dir() and not force:
        foreign = foreign_entries(path)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more"
                                              if len(foreign) > 3 else "")
            raise OutputError(
                "E606", f"--out {out} holds files that are not a patchc result ({shown}); "
                "writing there would replace or mix with them",
                hint="choose an empty or new folder, or pass --force to write beside them")
    return path


def earlier_spec(out: str | os.PathLike[str]) -> str | None:
    """The spec file of the result already in `out`, if one is (to say it is replaced)."""
    try:
        manifest = json.loads((resolve_out(out) / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    spec = manifest.get("spec_file") if isinstance(manifest, dict) else None
    return spec if isinstance(spec, str) else None


def recorded_files(manifest: dict[str, Any]) -> set[str]:
    """The files a result folder's manifest accounts for."""
    files = manifest.get("files")
    if isinstance(files, list):
        return {f for f in files if isinstance(f, str)} | {MANIFEST}
    tables = manifest.get("tables")  # a manifest from before `files` was recorded
    names = set(tables) if isinstance(tables, dict) else set()
    return {f"{n}.csv" for n in names} | {f"{n}.png" for n in names} | {MANIFEST}


def _ours(entry: str, recorded: set[str], tables: set[str]) -> bool:
    if entry in recorded:
        return True
    # an older manifest without `files`: per-column plots are NAME_COLUMN.png
    return entry.endswith(".png") and any(entry.startswith(f"{t}_") for t in tables)


def foreign_entries(path: Path) -> list[str]:
    """Entries of `path` that no patchc result there accounts for (sorted)."""
    entries = sorted(os.listdir(path))
    if not entries:
        return []
    try:
        manifest = json.loads((path / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return entries
    if not isinstance(manifest, dict) or "spec_sha256" not in manifest:
        return entries
    tables = manifest.get("tables")
    names = set(tables) if isinstance(tables, dict) and "files" not in manifest else set()
    recorded = recorded_files(manifest)
    return [e for e in entries
            if not (_ours(e, recorded, names) and (path / e).is_file())]


class OutputLock:
    """An exclusive flock on `.DIR.patchc-lock` beside DIR; the file holds the owner's pid.

    Acquire refuses (E607) while another live process holds it. The file is removed on
    release, and an acquire checks that the file it locked is still the one at the path (a
    releaser may have removed it in between), so two processes never both hold the lock.
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = resolve_out(out)
        self.path = self.out.parent / f".{self.out.name}.patchc-lock"
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        import fcntl

        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:  # (the result is written beside DIR, in its folder)
            raise OutputError("E605", f"cannot write in {self.out.parent}, where --out "
                              f"{self.out.name} is written: {e.strerror or e}",
                              hint="choose an --out in a folder you can write to") from None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise OutputError(
                    "E607", f"another patchc run{_owner(self.path)} is writing {self.out}; "
                    "two runs into one folder would mix their results",
                    hint="wait for it, or write to another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the file was removed by its releaser: lock the new one
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _sweep(self.out)  # what a killed writer left: its staging and swap folders
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _owner(path: Path) -> str:
    """" (pid N)" of the lock's holder (it writes its pid right after locking: wait a moment
    for it)."""
    for _ in range(50):
        try:
            pid = path.read_text().strip()
        except OSError:
            return ""
        if pid.isdigit():
            return f" (pid {pid})"
        time.sleep(0.01)
    return ""


def _sweep(out: Path) -> None:
    """Remove the staging folders of dead writers (the caller holds the lock, so every
    staging folder of `out` is a dead one's); restore a result left mid-swap by the
    two-rename fallback."""
    prefix = f".{out.name}.patchc-"
    for entry in os.listdir(out.parent):
        if not entry.startswith(prefix):
            continue
        p = out.parent / entry
        if entry.startswith(prefix + "old-") and not out.exists():
            os.rename(p, out)  # killed between the fallback's two renames: the old result
        elif entry.startswith((prefix + "staging-", prefix + "old-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


class Folder:
    """Where output files are written: `path(name)` for a writer that takes a path
    (savefig, safetensors), `write_text(name, text)`; `names` lists them in order."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.names: list[str] = []

    def path(self, name: str) -> Path:
        """Where the output file `name` is written (a plain file name, nothing else)."""
        check_file_name(name)
        if name not in self.names:
            self.names.append(name)
        return self.dir / name

    def write_text(self, name: str, text: str) -> Path:
        p = self.path(name)
        with open(p, "w", encoding="utf-8", newline="\n") as f:  # mode from the umask
            f.write(text)
        return p


class Staging(Folder):
    """A fresh folder beside DIR that a result is written into, then committed as DIR."""

    def __init__(self, out: Path) -> None:
        self.out = out
        # plain mkdir honours the umask (mkdtemp would make it 0700)
        directory = out.parent / f".{out.name}.patchc-staging-{os.getpid()}-" \
                                 f"{secrets.token_hex(4)}"
        os.mkdir(directory)
        super().__init__(directory)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def commit(self, force: bool = False) -> None:
        """Put the staged files in place of DIR (see the module docstring)."""
        out = self.out
        if out.is_dir() and foreign_entries(out):
            if not force:  # appeared while computing: still never mix with the user's files
                check_out(out)
            _merge(self.dir, out)
            return
        if out.is_dir() and _holds_cwd(out):  # (exchanged, it would leave the shell in a
            _merge(self.dir, out)             # deleted folder: file by file instead)
            return
        if not out.exists():
            os.rename(self.dir, out)
            return
        if not _exchange(self.dir, out):
            old = out.parent / f".{out.name}.patchc-old-{os.getpid()}"
            os.rename(out, old)
            os.rename(self.dir, out)
            shutil.rmtree(old, ignore_errors=True)
            return
        shutil.rmtree(self.dir, ignore_errors=True)  # now holds the old result


def _holds_cwd(out: Path) -> bool:
    """Is the working directory DIR or inside it (`--out .`)?"""
    try:
        cwd = Path(os.getcwd()).resolve()
    except OSError:
        return False
    return cwd == out or out in cwd.parents


def _merge(staged: Path, out: Path) -> None:
    """--force into a folder with the user's files: replace file by file, drop the stale
    files of an earlier result, keep everything else."""
    try:
        old = json.loads((out / MANIFEST).read_text("utf-8"))
        stale = recorded_files(old) if isinstance(old, dict) and "spec_sha256" in old \
            else set()
    except (OSError, ValueError):
        stale = set()
    names = [n for n in os.listdir(staged) if n != MANIFEST] + [MANIFEST]
    for name in names:
        if (staged / name).exists():
            os.replace(staged / name, out / name)
    for name in stale - set(names):
        if (out / name).is_file():
            (out / name).unlink()
    shutil.rmtree(staged, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux renameat2 RENAME_EXCHANGE); False where the
    system cannot, and the caller falls back to two renames."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


Writer = Callable[[Staging], None]


def save_result(results: Any, out: str | os.PathLike[str], force: bool = False,
                plots: bool = False, lock: OutputLock | None = None) -> list[Path]:
    """Write `results` as the folder `out`, all at once; returns the final paths.

    `results.write_files(staging)` writes every output file (Results: one CSV per table,
    and whatever else a statement produces); then the plots; then manifest.json, which lists
    them all under `files`. `lock`: one the caller already holds (the CLI takes it before
    computing); otherwise it is taken here."""
    path = check_out(out, force)
    own = lock is None
    if own:
        lock = OutputLock(path).acquire()
    staging = Staging(path)
    try:
        results.write_files(staging)
        manifest = dict(results.manifest)
        if plots:
            from patchc.plots import plot_dir

            # plot_dir reads the tables' keys from the manifest: a first one, without `files`
            staging.write_text(MANIFEST, _json(manifest))
            for p in plot_dir(staging.dir):
                staging.path(p.name)
        names = sorted(n for n in staging.names if n != MANIFEST)
        manifest["files"] = names
        beside = [e for e in (foreign_entries(path) if force and path.is_dir() else [])
                  if e not in names and e != MANIFEST]
        if beside:  # (the user's files the result is written beside: verify skips them)
            manifest["beside"] = beside
        staging.write_text(MANIFEST, _json(manifest))
        results.manifest["files"] = names
        staging.commit(force)
    except BaseException:
        staging.discard()
        raise
    finally:
        if own:
            lock.release()
    return [path / n for n in [*names, MANIFEST]]


def _json(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"


def redraw_plots(out_dir: str | os.PathLike[str]) -> list[Path]:
    """`patchc plot DIR`: redraw the PNGs of a result folder from its CSVs and manifest, and
    put them in place like a run does (staged, under the lock, the manifest's `files`
    updated), so that a redraw is never half-written nor mixed with a run's."""
    from patchc.manifest import read_manifest
    from patchc.plots import plot_dir

    path = resolve_out(out_dir)
    manifest = read_manifest(path)  # E601/E604 before anything is locked or written
    for table in manifest.get("tables") or {}:
        if isinstance(table, str) and not (path / f"{table}.csv").is_file():
            raise OutputError("E602", f"{path / f'{table}.csv'} is missing",
                              hint="rerun the spec with --out, or restore the file")
    failures: list[str] = []
    with OutputLock(path):
        staging = Staging(path)
        try:  # (the earlier figures too: one that cannot be redrawn stays as it was)
            for name in sorted(recorded_files(manifest)):
                if (path / name).is_file():
                    shutil.copyfile(path / name, staging.path(name))
            pngs = [staging.path(p.name) for p in plot_dir(staging.dir, failures)]
            manifest["files"] = sorted(n for n in staging.names if n != MANIFEST)
            staging.write_text(MANIFEST, _json(manifest))
            staging.commit(force=True)  # the user's own files there, if any, are kept
        except BaseException:
            staging.discard()
            raise
    kept = sorted(n for n in recorded_files(manifest)
                  if n.endswith(".png") and n not in {p.name for p in pngs})
    if failures or kept:
        what = ", ".join(failures) if failures else ", ".join(kept)
        raise OutputError("E609", f"no figure could be redrawn for {what}; the earlier "
                          f"figure{'s were' if len(kept) != 1 else ' was'} kept"
                          + (f" ({', '.join(kept)})" if kept and failures else ""),
                          hint="check the table's CSV (`patchc verify DIR` compares it with a "
                               "rerun)")
    return [path / p.name for p in pngs]
