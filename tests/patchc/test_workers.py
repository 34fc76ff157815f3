"""`patchc run --workers N`: the plan sharded over N processes (gloo, on the CPU) gives the
same tables as one process, bit for bit; under torchrun too. A worker that fails is reported
with its own error; combinations that cannot work are refused up front.

Uses the bundled trained IOI GPT-2 (4 layers) and every kind of operation, so that every
kind of step (batched forwards, narrowed and prefix-sharing ones, backwards, estimates,
vectors, generation, a circuit's ranking and its gated forwards, a compact edge estimate)
is dealt to some worker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, GPT2LMHeadModel  # noqa: E402

import patchc  # noqa: E402
from patchc.cli import main  # noqa: E402
from patchc.compiler.errors import PatchcError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EX = ROOT / "examples"
SPEC = f"""model "{EX / 'models/ioi-gpt2'}"
data ioi = "{EX / 'data/ioi.jsonl'}"
data hops = "{EX / 'data/hops.jsonl'}"
run clean = ioi.clean
run corrupt = ioi.corrupt
run noisy = ioi.clean with noise(embed @ 1..2, std=0.5, samples=3, seed=1)
run q = hops.prompt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
metric solved = generate(2) contains hops.answer
vector v = mean(clean.L1.resid_post @ last) - mean(corrupt.L1.resid_post @ last)

swap L*.H*.z from clean into corrupt  measure ld normalized  as heads
swap L*.H*.z @ last from clean into corrupt  measure ld, kl(clean)  as heads_last
swap L{{0,2}}.resid_pre @ each from clean into corrupt  measure ld  as resid
ablate L*.mlp.out in clean with mean(corrupt)  measure ld  as mean_mlps
ablate L1.H*.z in clean with resample(corrupt)  measure ld  as resampled
steer L1.resid_post @ last in corrupt by {{0.5, 1}} * v  measure ld  as steered
attribute L*.H*.z from clean into corrupt using atp  measure ld  as atp
attribute L{{1,3}}.mlp.out from clean into corrupt using ig(steps=3)  measure ld  as ig
dla L*.H*.out @ last in clean  measure ld  as direct
trace L$l.resid_post @ 2 from clean into noisy  measure ld  as traced
compare atp, relp against swap on L*.mlp.out, L*.attn.out @ each from clean into corrupt
    measure ld  as agree
backpatch L$j.resid_post -> L$i.resid_post @ last in q  where $j > $i  measure solved  as hop
circuit top_heads = top {{2, 50%}} of heads
attribute * -> * from clean into corrupt using eap_ig(steps=2)  measure ld  as edges
circuit top_edges = top {{5, 10%}} of edges
evaluate top_heads in clean with ablate(corrupt)  measure ld  as faithful
"""


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "sweep.patch"
    path.write_text(SPEC, "utf-8")
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Workers get this process's threads divided among them (here 1 each); a reduction can
    # round differently with another thread count, so the single run uses 1 thread too.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def single(spec_file: Path, one_thread) -> patchc.Results:
    return patchc.run(spec_file)


def _same(a: patchc.Results, b: patchc.Results) -> None:
    assert list(a.tables) == list(b.tables)
    for name in a.tables:
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name], check_exact=True,
                                      obj=name)


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_give_the_single_process_tables(spec_file: Path, single: patchc.Results,
                                                workers: int, monkeypatch) -> None:
    # (how a plan shards is what is tested, on any machine: the cap of one worker per core
    # would refuse 3 on two cores)
    monkeypatch.setattr("patchc.runner.max_workers", lambda: 8)
    sharded = patchc.run(spec_file, workers=workers)
    _same(single, sharded)
    assert sharded.manifest["workers"] == workers
    assert sharded.manifest["weights_sha256"] == single.manifest["weights_sha256"]


def test_cli_workers_writes_the_same_files(spec_file: Path, single: patchc.Results,
                                           tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    single.save(one)
    assert main(["run", str(spec_file), "--workers", "2", "--out", str(two), "--quiet",
                 "--no-plots"]) == 0
    for csv in sorted(one.glob("*.csv")):
        assert csv.read_bytes() == (two / csv.name).read_bytes(), csv.name


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is installed with torch")
def test_torchrun_launch(spec_file: Path, single: patchc.Results, tmp_path: Path) -> None:
    out = tmp_path / "out"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "patchc.cli", "run",
         str(spec_file), "--out", str(out), "--quiet", "--no-plots"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("== heads:") == 1  # rank 0 alone reports
    one = tmp_path / "one"
    single.save(one)
    for csv in sorted(one.glob("*.csv")):
        assert csv.read_bytes() == (out / csv.name).read_bytes(), csv.name


class BrokenInWorkers(GPT2LMHeadModel):
    """Fails in any process but the one that built it: a worker's crash, on demand."""

    def forward(self, *args, **kwargs):
        if os.getpid() != self.config.built_in:
            raise RuntimeError("out of memory (simulated)")
        return super().forward(*args, **kwargs)


def test_a_failing_worker_is_reported(spec_file: Path, capfd) -> None:
    """A worker's internal error is rank 0's internal error (the CLI's exit 2), in one line:
    no traceback from the worker."""
    from patchc.workers import WorkerCrashed

    path = EX / "models" / "ioi-gpt2"
    model = BrokenInWorkers.from_pretrained(path).eval()
    model.config.built_in = os.getpid()
    tok = AutoTokenizer.from_pretrained(path)
    capfd.readouterr()
    with pytest.raises(WorkerCrashed) as e:
        patchc.run(spec_file, model=model, tokenizer=tok, workers=2)
    assert not isinstance(e.value, PatchcError)
    assert str(e.value) == "worker 1 failed: RuntimeError: out of memory (simulated)"
    assert "Traceback" not in capfd.readouterr().err


def test_rank_0_killed_leaves_no_worker_and_no_folder(spec_file: Path, tmp_path: Path) -> None:
    import psutil

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "patchc.cli", "run", str(spec_file),
                             "--workers", "2", "--quiet", "--no-plots"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("patchc-workers-*/worker-*")) and proc.poll() is None:
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        family = psutil.Process(proc.pid).children(recursive=True)

        def command(p: psutil.Process) -> str:
            try:
                return " ".join(p.cmdline())
            except psutil.Error:  # (a child that has just exited: a zombie has no cmdline)
                return ""
        workers = [p for p in family if "forkserver" not in command(p)]
        assert workers
        proc.kill()
        proc.wait()
        gone, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, [p.cmdline() for p in alive]
        # A worker still computing removes the folder when rank 0 dies; one that had already
        # sent its results cannot: then the next run's start removes it (its owner is gone).
        left = list(tmp_path.glob("patchc-workers-*"))
        if left:
            again = subprocess.run([sys.executable, "-m", "patchc.cli", "run", str(spec_file),
                                    "--workers", "2", "--quiet", "--no-plots"], env=env,
                                   capture_output=True, timeout=300)
            assert again.returncode == 0, again.stderr
            assert not any(p.exists() for p in left)
        assert not list(tmp_path.glob("patchc-workers-*"))
    finally:
        if proc.poll() is None:
            proc.kill()


def test_refused_combinations(spec_file: Path, tmp_path: Path, capsys) -> None:
    assert main(["run", str(spec_file), "--workers", "0", "--quiet"]) == 1
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert main(["run", str(spec_file), "--workers", "2", "--naive", "--quiet"]) == 1
    assert "error[E416]" in capsys.readouterr().err
    mapped = tmp_path / "mapped.patch"
    mapped.write_text(SPEC.replace("data ioi", 'set device_map = "auto"\ndata ioi', 1))
    assert main(["run", str(mapped), "--workers", "2", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{mapped}:2:1: error[E417]" in err and 'set device_map = "auto"' in err



def test_the_spec_spreads_a_sweep_over_the_workers(spec_file: Path) -> None:
    """The tables above are compared with a sweep whose rows come from several workers."""
    from patchc.compiler.schedule import run_shapes, schedule
    from patchc.compiler.shard import shard

    prog = patchc.compile(spec_file)
    plan = schedule(prog.optimized, prog.checked.model, run_shapes(prog.checked))
    for workers in (2, 3):
        shards = shard(prog.optimized, plan, workers)
        spread = [m for sh in shards for m in sh.parts]
        assert spread and any(spread.count(m) > 1 for m in spread)


def test_a_new_run_removes_the_folders_of_runs_whose_rank_0_is_gone(tmp_path, monkeypatch):
    from patchc import worker_watch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = tmp_path / "patchc-workers-stale", tmp_path / "patchc-workers-live"
    for folder, owner in ((stale, dead.pid), (live, os.getpid())):
        folder.mkdir()
        (folder / worker_watch.OWNER).write_text(str(owner))
    root = worker_watch.new_root()
    assert not stale.exists() and live.exists() and root.exists()
    assert (root / worker_watch.OWNER).read_text() == str(os.getpid())
