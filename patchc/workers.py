"""How a run is spread over processes: `patchc run SPEC --workers N`, or under torchrun.

Every worker checks the spec, holds the model and plans the run; rank 0's Plan is broadcast
so that all shard the same one (the memory budget, read from free memory, can differ per
process). Each worker runs its shard (compiler/shard.py) and sends the results it owns to
rank 0 over torch.distributed (gloo: results are small, and gloo runs on every machine),
where the tables are built exactly as in one process.

Two ways to start the workers:
  - `spawn`: patchc starts N-1 processes beside the caller, which becomes rank 0. The model
    the caller loaded is handed to them through torch.multiprocessing, so on the CPU its
    weights are shared, not copied. With GPUs, worker r computes on GPU r (mod the count).
  - `join_torchrun`: `torchrun --nproc-per-node N -m patchc.cli run SPEC`; each process
    loads the model itself, on GPU LOCAL_RANK when there are GPUs.

A worker that fails prints its error (spawned: into a file rank 0 reads) and exits; gloo then
breaks rank 0's wait at once ("connection closed"), and rank 0 reports the worker's error.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from patchc.compiler.checked import Options
from patchc.compiler.errors import PatchcError, RuntimeInterventionError
from patchc.compiler.ir import IRGraph
from patchc.compiler.schedule import Plan
from patchc.compiler.shard import shard

# How long rank 0 waits for the slowest worker's results. A worker that dies is noticed at
# once (its connection closes), so this only bounds a worker that hangs.
TIMEOUT = datetime.timedelta(hours=24)


class Group:
    """This process's place among the workers of one run."""

    def __init__(self, rank: int, world: int, local_rank: int | None = None,
                 errors_dir: Path | None = None) -> None:
        self.rank, self.world = rank, world
        self.local_rank = rank if local_rank is None else local_rank
        self.errors_dir = errors_dir  # spawned workers write their errors here

    def placement(self, options: Options) -> dict[str, Any]:
        """Option overrides for this worker: its own GPU when the run is on GPUs."""
        check_options(options)
        gpu = options.device.startswith("cuda") or (
            options.device == "auto" and torch.cuda.is_available())
        if not gpu or not torch.cuda.is_available():
            return {}
        return {"device": f"cuda:{self.local_rank % torch.cuda.device_count()}"}

    def same_plan(self, ir: IRGraph, plan: Plan) -> Plan:
        """Rank 0's plan, on every worker (after checking they lowered the same graph)."""
        box = [(fingerprint(ir), plan.model_dump_json())] if self.rank == 0 else [None]
        self._collective(dist.broadcast_object_list, box, src=0)
        theirs, text = box[0]  # type: ignore[misc]
        if theirs != fingerprint(ir):
            raise RuntimeInterventionError(
                "E418", f"worker {self.rank} lowered another graph than rank 0",
                hint="give every worker the same spec, data files and patchc version")
        return Plan.model_validate_json(text)

    def run(self, interp: Any, ir: IRGraph, plan: Plan
            ) -> tuple[dict[str, Any], dict[str, float]] | None:
        """Run this worker's shard; on rank 0, every worker's results and node times."""
        mine = shard(ir, plan, self.world)[self.rank]
        values = interp.run(ir, mine.plan)
        sent = ({n: _to_cpu(values[n]) for n in mine.owns}, dict(interp.node_seconds))
        box: list | None = [None] * self.world if self.rank == 0 else None
        self._collective(dist.gather_object, sent, box, dst=0)
        if box is None:
            return None
        merged: dict[str, Any] = {}
        seconds: dict[str, float] = {}
        for owned, secs in box:
            merged.update(owned)
            for n, t in secs.items():
                seconds[n] = max(seconds.get(n, 0.0), t)
        return merged, seconds

    def _collective(self, fn: Callable, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except RuntimeError as e:  # a peer died: say which, with its own error
            raise RuntimeInterventionError(
                "E415", self._failure() or f"a worker stopped: {str(e).splitlines()[0]}",
                hint="the worker's error is above; rerun without --workers to see it alone") \
                from None

    def _failure(self) -> str | None:
        if self.errors_dir is None:
            return None
        for f in sorted(self.errors_dir.glob("worker-*.err")):
            text = f.read_text().strip()
            if text:
                return f"{f.stem.replace('-', ' ')} failed: {text.splitlines()[0]}"
        return None

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def check_options(options: Options) -> None:
    if options.device_map is not None:
        raise RuntimeInterventionError(
            "E417", "workers and `device_map` do not combine: each worker would spread its "
            "copy of the model over every GPU",
            hint="use device_map when the model does not fit on one device, workers when it "
            "fits and the sweep is large (docs/scaling.md)")


def fingerprint(ir: IRGraph) -> str:
    """A digest of the lowered graph: every node and edge, in order."""
    h = hashlib.sha256()
    for nid in sorted(ir.g.nodes):
        h.update(f"{nid}={ir.node(nid)!r};".encode())
    for u, v in sorted(ir.g.edges):
        h.update(f"{u}>{v};".encode())
    return h.hexdigest()


def _to_cpu(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


# ---- torchrun -------------------------------------------------------------------------------

def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" in os.environ


def join_torchrun() -> Group:
    """The group torchrun's environment describes (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return Group(dist.get_rank(), dist.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", dist.get_rank())))


# ---- spawned workers ------------------------------------------------------------------------

def spawn(spec: Any, workers: int, model: Any, tokenizer: Any, naive: bool,
          trust_remote_code: bool, progress: Callable[[int, int], None] | None,
          overrides: dict[str, Any] | None) -> Any:
    """Start workers-1 processes, run as rank 0 among them, return rank 0's Results."""
    from patchc import runner

    if workers < 1:
        raise RuntimeInterventionError("E416", f"--workers must be at least 1, not {workers}")
    if workers == 1:
        return runner.execute(spec, model, tokenizer, naive, trust_remote_code, progress,
                              overrides)
    if naive:
        raise RuntimeInterventionError(
            "E416", "the naive interpreter runs in one process",
            hint="drop --naive, or --workers (the naive run is the reference oracle)")
    # Load once here: a bad spec or a missing model fails before any process starts, and
    # the workers get these weights (shared memory on the CPU) instead of reading them again.
    try:
        checked, model, tokenizer, _ = runner.prepare(spec, model, tokenizer,
                                                      trust_remote_code, overrides)
        check_options(checked.options)
    except PatchcError as e:
        raise e.with_source(spec.source) from None
    threads = max(1, torch.get_num_threads() // workers)  # the cores, divided
    root = Path(tempfile.mkdtemp(prefix="patchc-workers-"))
    store = f"file://{root / 'store'}"
    ctx = torch.multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(rank, workers, store, root, threads, spec, model, tokenizer,
                               overrides))
             for rank in range(1, workers)]
    saved = torch.get_num_threads()
    group = None
    try:
        for p in procs:
            p.start()
        dist.init_process_group("gloo", init_method=store, rank=0, world_size=workers,
                                timeout=TIMEOUT)
        group = Group(0, workers, errors_dir=root)
        torch.set_num_threads(threads)
        return runner.execute(spec, model, tokenizer, False, trust_remote_code, progress,
                              overrides, group=group)
    finally:
        torch.set_num_threads(saved)
        if group is not None:
            group.close()
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
        shutil.rmtree(root, ignore_errors=True)


def _worker(rank: int, world: int, store: str, root: Path, threads: int, spec: Any,
            model: Any, tokenizer: Any, overrides: dict[str, Any] | None) -> None:
    """A spawned worker: join the group, run its shard, send its results to rank 0."""
    from patchc import runner

    torch.set_num_threads(threads)
    group = None
    try:
        dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world,
                                timeout=TIMEOUT)
        group = Group(rank, world, errors_dir=root)
        runner.execute(spec, model, tokenizer, False, False, None, overrides, group=group)
    except BaseException as e:  # noqa: BLE001 - reported to rank 0, then this process ends
        text = e.render() if isinstance(e, PatchcError) else \
            f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        (root / f"worker-{rank}.err").write_text(text)
        print(f"patchc worker {rank}: {text}", file=sys.stderr)
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(1)  # skip gloo's teardown: rank 0 must see the connection close now
    finally:
        if group is not None:
            group.close()
