"""`patchc run --out DIR` writes DIR all at once: a kill -9 at any moment leaves the old result
or the new one, never a mix; two runs into one folder are refused, not mixed; a failed write
leaves nothing behind; a folder of other files is refused unless --force; a rerun clears the
stale tables of an earlier result; --out naming a file fails before computing; files honour
the umask. Uses the bundled tiny GPT-2."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import stat
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from result_forker import Forker  # noqa: E402

import patchc.api  # noqa: E402
from patchc.cli import main  # noqa: E402
from patchc.outputs import OutputLock  # noqa: E402
from patchc.results import Results  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "models" / "tiny-gpt2"
ROWS = """    {"clean": "When Mary and John went to the store , John gave a drink to",
     "corrupt": "When Alice and Bob went to the store , Tom gave a drink to",
     "answer": " Mary", "distractor": " John"},
    {"clean": "When Kate and Paul went to the park , Paul gave a ring to",
     "corrupt": "When Anna and Mark went to the park , Lucy gave a ring to",
     "answer": " Kate", "distractor": " Paul"}"""


def spec_text(rows: int = 2, heads: bool = True) -> str:
    data = ROWS if rows == 2 else ROWS.split("},")[0] + "}"
    op = ("swap L0..1.H0..1.z @ last from clean into corrupt  measure ld  as heads\n"
          if heads else "")
    return (f'model "{MODEL}"\ndata d = [\n{data}\n]\nrun clean = d.clean\n'
            "run corrupt = d.corrupt\nmetric ld = logit(d.answer) - logit(d.distractor)\n"
            f"{op}ablate L0..1.mlp.out in clean  measure ld  as mlps\n")


def files(*tables: str, plots: bool = False, extra: tuple[str, ...] = ()) -> list[str]:
    """The files of a result with these tables (NAME.csv, NAME.examples.csv, NAME.png)."""
    names = [f"{t}{ext}" for t in tables
             for ext in (".csv", ".examples.csv") + ((".png",) if plots else ())]
    return sorted([*names, *extra])


def write(path: Path, text: str) -> Path:
    path.write_text(text, "utf-8")
    return path


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.patchc-")]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def no_compute(monkeypatch):
    """Fails the test if the spec is run at all."""
    def refuse(*args, **kwargs):
        raise AssertionError("the spec was run")
    monkeypatch.setattr(patchc.api, "run", refuse)


def test_out_naming_a_file_fails_before_computing(tmp_path, no_compute, capsys):
    spec = write(tmp_path / "s.patch", spec_text())
    (tmp_path / "out").write_text("mine")
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    assert "error[E605]" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "mine"


def test_a_folder_of_other_files_is_refused_unless_force(tmp_path, capsys):
    spec = write(tmp_path / "s.patch", spec_text())
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "mlps.csv").write_text("my own table")
    assert main(["run", str(spec), "--out", str(out), "--quiet", "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert "error[E606]" in err and "mlps.csv, notes.txt" in err and "--force" in err
    assert snapshot(out) == {"mlps.csv": b"my own table", "notes.txt": b"mine"}
    assert main(["run", str(spec), "--out", str(out), "--quiet", "--no-plots", "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "mlps.csv").read_text().startswith("layer,ld")
    assert sorted(os.listdir(out)) == files("heads", "mlps",
                                            extra=("manifest.json", "notes.txt"))
    assert leftovers(out) == []
    # The user's file is recorded as beside the result, and verify leaves it alone.
    assert json.loads((out / "manifest.json").read_text())["beside"] == ["notes.txt"]
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "notes.txt" in line]
    assert len(said) == 1 and "not part of the result" in said[0]


def test_a_rerun_replaces_the_earlier_result_and_its_stale_tables(tmp_path):
    out = tmp_path / "out"
    spec = write(tmp_path / "s.patch", spec_text())
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    assert {"heads.csv", "heads.png", "mlps.csv", "mlps.png"} <= set(os.listdir(out))
    spec = write(tmp_path / "s.patch", spec_text(heads=False))
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    assert sorted(os.listdir(out)) == files("mlps", plots=True, extra=("manifest.json",))
    assert json.loads((out / "manifest.json").read_text())["files"] == files("mlps", plots=True)
    assert leftovers(out) == []


def test_a_held_lock_refuses_a_second_run_at_once(tmp_path, no_compute, capsys):
    spec = write(tmp_path / "s.patch", spec_text())
    out = tmp_path / "out"
    with OutputLock(out):
        assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "error[E607]" in err and f"(pid {os.getpid()})" in err
    assert not out.exists() and leftovers(out) == []


def test_the_lock_and_staging_of_a_dead_run_are_taken_over(tmp_path):
    spec = write(tmp_path / "s.patch", spec_text())
    out = tmp_path / "out"
    (tmp_path / ".out.patchc-lock").write_text("999999\n")  # no process holds it
    junk = tmp_path / ".out.patchc-staging-999999-abcd1234"
    junk.mkdir()
    (junk / "heads.csv").write_text("half")
    assert main(["run", str(spec), "--out", str(out), "--quiet", "--no-plots"]) == 0
    assert leftovers(out) == [] and (out / "heads.csv").read_text().startswith("layer")


def test_a_failed_write_keeps_the_old_result_and_leaves_no_temp_files(tmp_path, monkeypatch,
                                                                       capsys):
    spec = write(tmp_path / "s.patch", spec_text())
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    before = snapshot(out)

    def disk_full(self, staging):
        staging.write_text("heads.csv", "layer,he")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Results, "write_files", disk_full)
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert snapshot(out) == before and leftovers(out) == []


def test_written_files_honour_the_umask(tmp_path):
    spec = write(tmp_path / "s.patch", spec_text())
    out = tmp_path / "out"
    old = os.umask(0o002)
    try:
        assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o775
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o664, f.name


@pytest.fixture(scope="module")
def forker():
    f = Forker()
    yield f
    f.close()


def test_a_kill_9_at_any_moment_leaves_the_old_or_the_new_result(forker, tmp_path):
    """Writers of a computed result (CSVs, plots, manifest, the swap) killed at random
    moments over the time a write takes: the folder holds the old result or the new one."""
    forker.compute("old", write(tmp_path / "old.patch", spec_text(rows=1)))
    forker.compute("new", write(tmp_path / "new.patch", spec_text(rows=2)))
    old, new = tmp_path / "old_ref", tmp_path / "new_ref"
    assert forker.wait(forker.save("old", old, tmp_path / "log")) == 0
    start = time.perf_counter()
    assert forker.wait(forker.save("new", new, tmp_path / "log")) == 0
    seconds = time.perf_counter() - start
    old_files, new_files = snapshot(old), snapshot(new)
    assert set(old_files) == set(new_files) and old_files["mlps.csv"] != new_files["mlps.csv"]
    rng = random.Random(16)
    seen = []
    for i in range(6):
        out = tmp_path / f"out{i}"
        shutil.copytree(old, out)
        pid = forker.save("new", out, tmp_path / "log")
        time.sleep(rng.uniform(0.0, 1.3) * seconds)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        forker.wait(pid)
        now = snapshot(out)
        assert now in (old_files, new_files), (i, sorted(now))
        seen.append("old" if now == old_files else "new")
    # whatever a killed writer left beside its folder, the next one takes it over
    for i in range(6):
        with OutputLock(tmp_path / f"out{i}"):
            pass
        assert leftovers(tmp_path / f"out{i}") == [], seen


def test_a_killed_run_leaves_the_old_result(forker, tmp_path):
    """The whole command line killed while computing: nothing of it in the folder."""
    spec = write(tmp_path / "s.patch", spec_text())
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--quiet", "--no-plots"]) == 0
    before = snapshot(out)
    pid = forker.start(["run", str(spec), "--out", str(out), "--quiet"], tmp_path,
                       tmp_path / "log")
    while not (tmp_path / ".out.patchc-lock").exists():
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    assert forker.wait(pid) == -signal.SIGKILL
    assert snapshot(out) == before


def test_two_runs_into_one_folder_one_is_refused(forker, tmp_path):
    spec = write(tmp_path / "s.patch", spec_text())
    out = tmp_path / "out"
    pids = [forker.start(["run", str(spec), "--out", str(out), "--quiet"], tmp_path,
                         tmp_path / f"log{i}") for i in range(2)]
    rcs = [forker.wait(pid) for pid in pids]
    assert sorted(rcs) == [0, 1], rcs
    loser = rcs.index(1)
    err = (tmp_path / f"log{loser}.err").read_text()
    assert "error[E607]" in err and f"(pid {pids[1 - loser]})" in err
    assert sorted(os.listdir(out)) == files("heads", "mlps", plots=True,
                                            extra=("manifest.json",))
    assert leftovers(out) == []


def test_plot_redraws_through_the_staging_folder_and_lists_its_pngs(tmp_path, capsys):
    spec = write(tmp_path / "s.patch", spec_text())
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--quiet", "--no-plots"]) == 0
    csv = (out / "heads.csv").read_bytes()
    assert main(["plot", str(out)]) == 0
    listed = json.loads((out / "manifest.json").read_text())["files"]
    assert listed == files("heads", "mlps", plots=True)
    assert (out / "heads.csv").read_bytes() == csv and leftovers(out) == []
    with OutputLock(out):  # a run is writing the folder: the redraw waits its turn
        assert main(["plot", str(out)]) == 1
    assert "error[E607]" in capsys.readouterr().err
    # the folder is still a result folder: a rerun into it is not refused
    assert main(["run", str(spec), "--out", str(out), "--quiet", "--no-plots"]) == 0


def test_other_outputs_go_through_the_staging_folder_and_verify_compares_them(tmp_path,
                                                                                capsys):
    """How a statement adds an output file (a tensor file here): `Results.outputs`."""
    import torch
    from safetensors.torch import save_file

    from patchc.verify import verify_dir

    spec = write(tmp_path / "s.patch", spec_text())
    results = patchc.api.run(str(spec))
    results.outputs["heads.safetensors"] = lambda p: save_file(
        {"ld": torch.tensor(results["heads"]["ld"].to_numpy())}, str(p))
    out = tmp_path / "out"
    results.save(out)
    assert json.loads((out / "manifest.json").read_text())["files"] == files(
        "heads", "mlps", extra=("heads.safetensors",))
    # verify reruns the spec; this rerun has no such output: the file is reported, not lost
    v = verify_dir(out)
    assert not v.ok and v.first_failure.what == "heads.safetensors"
    assert "the rerun writes no such file" in v.first_failure.detail


def test_a_symlinked_out_folder_stays_a_link(tmp_path):
    spec = write(tmp_path / "s.patch", spec_text(heads=False))
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for _ in range(2):  # the second run replaces a result through the link
        assert main(["run", str(spec), "--out", str(tmp_path / "link"), "--quiet",
                     "--no-plots"]) == 0
    assert (tmp_path / "link").is_symlink()
    assert sorted(os.listdir(tmp_path / "real")) == files("mlps", extra=("manifest.json",))
    assert leftovers(tmp_path / "real") == [] and leftovers(tmp_path / "link") == []


def test_replacing_another_specs_result_is_said(tmp_path, capsys):
    out = tmp_path / "out"
    first = write(tmp_path / "a.patch", spec_text())
    second = write(tmp_path / "b.patch", spec_text(heads=False))
    assert main(["run", str(first), "--out", str(out), "--quiet", "--no-plots"]) == 0
    assert "replaced" not in capsys.readouterr().err
    assert main(["run", str(second), "--out", str(out), "--quiet", "--no-plots"]) == 0
    assert f"note: this replaced the result of {first}" in capsys.readouterr().err
    assert main(["run", str(second), "--out", str(out), "--quiet", "--no-plots"]) == 0
    assert "replaced" not in capsys.readouterr().err  # (its own earlier result: no note)
