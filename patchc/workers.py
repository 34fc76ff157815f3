"""How a run is spread over processes: `patchc run SPEC --workers N`, or under torchrun.

Every worker checks the spec, holds the model and lowers the same graph; all run rank 0's
Plan (the memory budget, read from free memory, can differ per process), each its own shard
of it (compiler/shard.py). The results each worker owns go to rank 0 over torch.distributed
(gloo: results are small, and gloo runs on every machine), where the tables are built
exactly as in one process.

Two ways to start the workers:
  - spawned (`--workers N`): the caller is rank 0. It plans first, then starts N-1 processes
    and hands them the plan and the model it loaded (through torch.multiprocessing: on the
    CPU the weights are shared, not copied). It computes its own shard while they start
    (importing torch takes seconds); they join the group only to send their results.
    With GPUs, worker r computes on GPU r (mod the count).
  - torchrun (`torchrun --nproc-per-node N -m patchc.cli run SPEC`): the processes start
    together and join at once; rank 0 broadcasts its plan. Each loads the model itself, on
    GPU LOCAL_RANK when there are GPUs.

A spawned worker that fails writes its error to a file and exits; rank 0 notices (the
process is gone, or gloo reports the closed connection) and reports that worker's error: a
mistake (a PatchcError) or a worker that died without a word as E415, a bug in patchc as
WorkerCrashed (the CLI's internal error, exit 2). A worker whose rank 0 dies (kill -9) exits
within a second and removes the run's temporary folder.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import pickle
import shutil
import threading
import time
import traceback
from multiprocessing.reduction import ForkingPickler  # torch registers its tensor reductions
from pathlib import Path
from typing import Any, Callable, NoReturn

import torch
import torch.distributed as dist
import torch.multiprocessing  # noqa: F401 - registers the reductions that share tensors

from patchc import execution
from patchc.compiler.checked import Options
from patchc.compiler.errors import PatchcError, RuntimeInterventionError
from patchc.compiler.ir import IRGraph
from patchc.compiler.schedule import Plan
from patchc.compiler.shard import Shard, rows_of, shard
from patchc.worker_watch import alive as _alive
from patchc.worker_watch import new_root as _new_root
from patchc.worker_watch import remove as _remove
from patchc.worker_watch import watch_parent as _watch_parent

# How long rank 0 waits for the slowest worker's results. A worker that dies is noticed at
# once (its connection closes), so this only bounds a worker that hangs.
TIMEOUT = datetime.timedelta(hours=24)


class WorkerCrashed(RuntimeError):
    """A worker hit an internal error (a bug in patchc, not a mistake in the spec)."""


class Group:
    """This process's place among the workers of one run (torchrun: already connected)."""

    def __init__(self, rank: int, world: int, local_rank: int | None = None,
                 owns: bool = True) -> None:
        self.rank, self.world = rank, world
        self.local_rank = rank if local_rank is None else local_rank
        self.owns = owns  # patchc created the process group (and so ends it)

    def placement(self, options: Options) -> dict[str, Any]:
        """Option overrides for this worker: its own GPU when the run is on GPUs."""
        check_options(options)
        gpu = options.device.startswith("cuda") or options.device == "auto"
        if not gpu or not torch.cuda.is_available():
            return {}
        return {"device": f"cuda:{self.local_rank % torch.cuda.device_count()}"}

    def sharing(self, device: torch.device) -> int:
        """How many workers of this machine compute on `device` (they split its memory;
        rank 0 plans for its share, and every worker runs that plan)."""
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        if device.type == "cuda":
            return -(-local // torch.cuda.device_count())
        return local

    def same_plan(self, ir: IRGraph, plan: Plan) -> Plan:
        """Rank 0's plan, on every worker (after checking they lowered the same graph)."""
        box = [(fingerprint(ir), plan.model_dump_json())] if self.rank == 0 else [None]
        self._collective(dist.broadcast_object_list, box, src=0)
        return _checked_plan(ir, *box[0], self.rank)  # type: ignore[misc]

    def run(self, interp: Any, ir: IRGraph, plan: Plan
            ) -> tuple[dict[str, Any], dict[str, float]] | None:
        """Run this worker's shard; on rank 0, every worker's results and node times."""
        shards = shard(ir, plan, self.world)
        mine = shards[self.rank]
        values = interp.run(ir, mine.plan)
        sent = ({n: _to_cpu(values[n]) for n in mine.owns}, dict(interp.node_seconds))
        self.connect()
        box: list | None = [None] * self.world if self.rank == 0 else None
        self._collective(dist.gather_object, sent, box, dst=0)
        self._finish()
        if box is None:
            return None
        seconds: dict[str, float] = {}
        for _, secs in box:
            for n, t in secs.items():
                seconds[n] = max(seconds.get(n, 0.0), t)
        return merge(ir, shards, [owned for owned, _ in box]), seconds

    def connect(self) -> None:
        """Join the process group (torchrun's workers joined at start)."""

    def _finish(self) -> None:
        """End the group once every worker is done with it: a gloo group left for the
        interpreter's exit to tear down can abort the process (std::terminate)."""
        if self.owns:
            self._collective(dist.barrier)
            close()

    def _collective(self, fn: Callable, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except RuntimeError as e:  # a peer died: say which, with its own error
            self.fail(f"a worker stopped: {(str(e).splitlines() or [''])[0]}")

    def fail(self, fallback: str) -> NoReturn:
        """Raise a failed worker's own error: WorkerCrashed for a bug, E415 for a mistake it
        reported or a worker gone without a word (`fallback`)."""
        found = self.failure()
        if found is not None and found[0] == "internal":
            raise WorkerCrashed(found[1])
        raise RuntimeInterventionError(
            "E415", found[1] if found else fallback,
            hint="rerun without --workers to see the error alone")

    def failure(self) -> tuple[str, str] | None:
        """("internal" or "user", message) of a failed worker, when it could leave one."""
        return None


class Spawned(Group):
    """A group patchc started itself. Rank 0 (the caller) holds the worker processes."""

    def __init__(self, rank: int, world: int, root: Path | None, plan_json: str | None = None,
                 start: Callable[[str, str], list] | None = None) -> None:
        super().__init__(rank, world)
        # The rendezvous file, workers' error files and ready marks (rank 0 makes it when it
        # starts the workers, which remove it should rank 0 die).
        self.root: Path = root  # type: ignore[assignment]
        self.plan_json = plan_json  # rank 0's plan, as a worker received it
        self.start = start  # rank 0: starts the workers with (fingerprint, plan JSON)
        self.procs: list = []
        self.starter: threading.Thread | None = None  # rank 0: starts the workers
        self.start_error: str | None = None

    def same_plan(self, ir: IRGraph, plan: Plan) -> Plan:
        if self.rank == 0:  # the plan is made: now start the workers with it
            self.procs = self.start(fingerprint(ir), plan.model_dump_json())  # type: ignore[misc]
            return plan
        return _checked_plan(ir, *self.plan_json, self.rank)  # type: ignore[misc]

    def connect(self) -> None:
        if self.rank:
            (self.root / f"worker-{self.rank}.ready").touch()
        else:  # wait until every worker is ready, or one is gone
            if self.starter is not None:
                self.starter.join()
            if self.start_error:
                raise RuntimeInterventionError(
                    "E415", f"could not start the worker processes: {self.start_error}")
            while not all((self.root / f"worker-{r}.ready").exists()
                          for r in range(1, self.world)):
                if any(p.exitcode is not None for p in self.procs):
                    time.sleep(0.2)  # its error file is written before it exits
                    self.fail("a worker stopped without a message")
                time.sleep(0.02)
        dist.init_process_group("gloo", init_method=f"file://{self.root / 'store'}",
                                rank=self.rank, world_size=self.world, timeout=TIMEOUT)

    def failure(self) -> tuple[str, str] | None:
        for f in sorted(self.root.glob("worker-*.err")):
            kind, _, text = f.read_text().strip().partition("\n")
            if text:
                return kind, f"{f.stem.replace('-', ' ')} failed: {text.splitlines()[0]}"
        return None


def check_options(options: Options) -> None:
    if options.device_map is not None:
        raise RuntimeInterventionError(
            "E417", "workers and `device_map` do not combine: each worker would spread its "
            "copy of the model over every GPU",
            hint="use device_map when the model does not fit on one device, workers when it "
            "fits and the sweep is large (docs/scaling.md)")


def merge(ir: IRGraph, shards: list[Shard], owned: list[dict[str, Any]]) -> dict[str, Any]:
    """Every worker's results in one dict. A spread sweep's metric comes from several
    workers, each with the rows of its own chunks filled (the others NaN): they are put
    together row by row."""
    out: dict[str, Any] = {}
    for sh, values in zip(shards, owned):
        for nid, value in values.items():
            if nid in sh.parts and nid in out:
                rows = torch.tensor(rows_of(ir, nid, sh.parts[nid]), dtype=torch.long)
                out[nid][rows] = value[rows]
            else:
                out[nid] = value.clone() if nid in sh.parts else value
    return out


def fingerprint(ir: IRGraph) -> str:
    """A digest of the lowered graph: every node and edge, in order."""
    h = hashlib.sha256()
    for nid in sorted(ir.g.nodes):
        h.update(f"{nid}={ir.node(nid)!r};".encode())
    for u, v in sorted(ir.g.edges):
        h.update(f"{u}>{v};".encode())
    return h.hexdigest()


def _checked_plan(ir: IRGraph, theirs: str, plan_json: str, rank: int) -> Plan:
    if theirs != fingerprint(ir):
        raise RuntimeInterventionError(
            "E418", f"worker {rank} lowered another graph than rank 0",
            hint="give every worker the same spec, data files and patchc version")
    return Plan.model_validate_json(plan_json)


def _to_cpu(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- torchrun -------------------------------------------------------------------------------

def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" in os.environ


def join_torchrun() -> Group:
    """The group torchrun's environment describes (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    owns = not dist.is_initialized()  # a script may have joined it already
    if owns:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return Group(dist.get_rank(), dist.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", dist.get_rank())), owns=owns)


# ---- spawned workers ------------------------------------------------------------------------

def spawn(spec: Any, workers: int, model: Any, tokenizer: Any, trust_remote_code: bool,
          progress: Callable[[int, int], None] | None, overrides: dict[str, Any] | None
          ) -> Any:
    """Run as rank 0 of `workers` (> 1) processes, starting the others once the plan is
    made (runner.execute has refused --naive and counts below 2)."""
    ctx = _context()  # before loading: the fork server imports torch meanwhile
    # Load once here: a bad spec or a missing model fails before any process starts, and
    # the workers get these weights (shared memory on the CPU) instead of reading them again.
    try:
        checked, model, tokenizer, _ = execution.prepare(spec, model, tokenizer,
                                                      trust_remote_code, overrides)
        check_options(checked.options)
    except PatchcError as e:
        if e.code == "E417":  # at `set device_map`, unless --device-map/an override gave it
            e.span = execution.set_span(spec, "device_map", overrides or {})
        raise e.with_source(spec.source) from None
    threads = max(1, torch.get_num_threads() // workers)  # the cores, divided

    def start(digest: str, plan_json: str) -> list:
        # Starting waits for the fork server's imports: it happens beside rank 0's own shard.
        # The model is pickled first, here, and once per worker (a shared tensor's handle
        # is good for one receiver): not while rank 0 computes with it and hooks are on it.
        # On the CPU its weights move to shared memory (once; a later run finds them there).
        if model.device.type == "cpu":
            model.share_memory()
        # Made only now, with the workers that remove it should rank 0 be killed: planning
        # can take long, and a folder made before it would outlive a kill -9 during it.
        root = group.root = _new_root()
        procs = [ctx.Process(target=_worker, daemon=True,
                             args=(rank, workers, root, (digest, plan_json), threads,
                                   bytes(ForkingPickler.dumps((spec, model, tokenizer))),
                                   overrides, os.getpid()))
                 for rank in range(1, workers)]
        def start_all() -> None:
            try:
                for p in procs:
                    p.start()
            except Exception as e:  # noqa: BLE001 - rank 0 reports it when it connects
                group.start_error = f"{type(e).__name__}: {e}"

        group.starter = threading.Thread(target=start_all, daemon=True)
        group.starter.start()
        return procs

    group = Spawned(0, workers, None, start=start)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return execution.run_process(spec, model, tokenizer, False, trust_remote_code,
                                     progress, overrides, group=group)
    except BaseException:  # rank 0 failed or was interrupted: the workers' results are moot
        _stop(group, 0)
        raise
    finally:
        torch.set_num_threads(saved)
        close()
        _stop(group, 60)
        if group.root is not None:
            shutil.rmtree(group.root, ignore_errors=True)


def _stop(group: Spawned, wait: float) -> None:
    """Join the workers (they end after sending their results); end any still running."""
    if group.starter is not None:
        group.starter.join()
    for p in group.procs:
        if p.pid is None:  # never started
            continue
        p.join(timeout=wait)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)


def _context():
    """Workers are forked from a fork server that has imported torch, transformers and the
    runtime but never computed (fork after OpenMP ran hangs the child), so a worker starts in
    a fraction of a second instead of the seconds of a fresh import. It starts now, in the
    background, and lives as long as this process (a notebook's later runs reuse it). Where
    there is no fork server (Windows), workers are spawned fresh."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return torch.multiprocessing.get_context("spawn")
    ctx = torch.multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers", "patchc.execution",
                                "patchc.runtime.execute", "patchc.runtime.adapters"])
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return ctx


def _worker(rank: int, world: int, root: Path, plan: tuple[str, str], threads: int,
            payload: bytes, overrides: dict[str, Any] | None, parent: int) -> None:
    """A spawned worker: run its shard of rank 0's plan, send its results to rank 0."""
    _watch_parent(parent, root)
    torch.set_num_threads(threads)
    try:
        spec, model, tokenizer = pickle.loads(payload)
        group = Spawned(rank, world, root, plan_json=plan)  # type: ignore[arg-type]
        execution.run_process(spec, model, tokenizer, False, False, None, overrides,
                              group=group)
        close()
    except BaseException as e:  # noqa: BLE001 - reported to rank 0, then this process ends
        # Rank 0 reports it, in one line: a mistake as E415, anything else as a bug.
        user = isinstance(e, (PatchcError, KeyboardInterrupt))
        first = (str(e).strip().splitlines() or [""])[0]
        text = e.render() if isinstance(e, PatchcError) else f"{type(e).__name__}: {first}"
        if _alive(parent):
            with contextlib.suppress(OSError):
                (root / f"worker-{rank}.err").write_text(
                    f"{'user' if user else 'internal'}\n{text}")
        if not _alive(parent):
            # Rank 0 is gone (it is why gloo failed here): nobody reads the report, and the
            # folder must not outlive the run. Removed after any write of ours, so a report
            # written while another worker's watcher removed the folder cannot leave it.
            _remove(root)
        if os.environ.get("PATCHC_DEBUG"):
            traceback.print_exc()
        os._exit(1)  # skip gloo's teardown: rank 0 must see the connection close now
