"""The `patchc` command line, run in-process through `main([...])` (plus one subprocess that
proves `check` never imports torch, and times it).

Exit codes: 0 ok, 1 a mistake in the spec or the command line, 2 an internal error.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import patchc  # noqa: E402
import patchc.api  # noqa: E402
from patchc.cli import main  # noqa: E402
from patchc.compiler.fmt import comments, format_source  # noqa: E402
from patchc.compiler.parse import parse_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "language").glob("*.patch"))
IOI = ROOT / "examples" / "language" / "ioi_heads.patch"
LOCATED = re.compile(r"^(?P<file>\S+?):(?P<line>\d+):(?P<col>\d+): error\[(?P<code>E\d{3})\]: ",
                     re.MULTILINE)

HEAD = f'''model "{ROOT / 'examples' / 'models' / 'tiny-gpt2'}"
data ioi = "{ROOT / 'examples' / 'data' / 'ioi.jsonl'}"
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
'''


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str, name: str = "spec.patch") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


# ---- check -------------------------------------------------------------------------------------


def test_examples_found():
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_check_examples_ok(capsys, path: Path):
    code, out, err = cli(capsys, "check", path)
    assert code == 0, err
    assert out.startswith(f"{path}: ok: ") and "experiment(s)" in out
    assert "error" not in err and "Traceback" not in err


def test_check_bad_spec_is_located(capsys, tmp_path: Path):
    path = write(tmp_path, HEAD + "swap L12.H*.z from clean into corrupt\n    measure ld\n")
    code, out, err = cli(capsys, "check", path)
    assert code == 1 and out == ""
    m = LOCATED.search(err)
    assert m, err
    assert (m["file"], m["line"], m["col"], m["code"]) == (str(path), "6", "6", "E201")
    assert " 6 | swap L12.H*.z from clean into corrupt" in err
    assert re.search(r"^ +\| +\^+$", err, re.MULTILINE), err  # the caret line
    assert "Traceback" not in err


def test_check_reports_every_error(capsys, tmp_path: Path):
    path = write(tmp_path, HEAD + "swap L12.H*.z from clean into nope\n    measure ld\n")
    code, _, err = cli(capsys, "check", path)
    assert code == 1
    assert {m["code"] for m in LOCATED.finditer(err)} >= {"E201", "E309"}
    assert err.rstrip().endswith("errors") and "Traceback" not in err


def test_check_syntax_error(capsys, tmp_path: Path):
    path = write(tmp_path, HEAD + "swap L1.H*.z clean into corrupt\n")
    code, _, err = cli(capsys, "check", path)
    m = LOCATED.search(err)
    assert code == 1 and m and m["code"] == "E100" and m["line"] == "6", err


def test_check_prints_warnings_then_ok(capsys, tmp_path: Path):
    # A model folder with a config but no tokenizer.json: W300, and the check still passes.
    (tmp_path / "m").mkdir()
    shutil.copy(ROOT / "examples" / "models" / "tiny-gpt2" / "config.json", tmp_path / "m")
    path = write(tmp_path, HEAD.replace(str(ROOT / "examples" / "models" / "tiny-gpt2"), "m")
                 + "swap L1.H*.z from clean into corrupt  measure ld\n")
    code, out, err = cli(capsys, "check", path)
    assert code == 0, err
    assert "warning[W300]" in err and "1 warning" in out and out.count("\n") == 2
    # the count goes with `ok`, not in front of the tables (it read as if op_6 warned)
    assert out.startswith(f"{path}: ok (1 warning above): 1 table(s), 12 experiment(s): ")
    assert out.splitlines()[1].startswith("cost: 12 experiment(s) in ")


@pytest.mark.parametrize("command", ["check", "compile", "fmt"])
def test_missing_spec_file(capsys, tmp_path: Path, command: str):
    code, out, err = cli(capsys, command, tmp_path / "nope.patch")
    assert code == 1 and out == ""
    assert "error[E001]" in err and "nope.patch" in err and "Traceback" not in err


def test_spec_that_is_a_folder_is_a_user_error(capsys, tmp_path: Path):
    folder = tmp_path / "dir.patch"
    folder.mkdir()
    code, _, err = cli(capsys, "fmt", folder)
    assert code == 1 and "Traceback" not in err and "internal" not in err


# ---- compile -----------------------------------------------------------------------------------


def test_compile_emit_ast(capsys):
    code, out, err = cli(capsys, "compile", IOI, "--emit", "ast")
    assert code == 0, err
    assert out.startswith("Spec\n  statements:\n    [0] ModelDecl @2:1-2:28")


@pytest.mark.parametrize("optimized", [[], ["--optimized"]])
def test_compile_emit_ir(capsys, optimized: list[str]):
    code, out, err = cli(capsys, "compile", IOI, "--emit", "ir", *optimized)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "f0 = forward clean"
    assert "table heads = swap line 11: 144 rows, columns layer, head, ld" in lines
    # One compact sweep per layer (12 heads each), each reading its layer's 12 heads of the
    # clean run; the optimizer adds the 11 resid_pre reads layers 1..11 start from.
    assert sum("sweep 12 x replace z L" in line for line in lines) == 12
    reads = 155 if optimized else 144
    assert lines[-1].startswith(f"14 forwards, {reads} reads, 0 vectors, 0 writes, 14 metrics")


@pytest.mark.parametrize("optimized", [[], ["--optimized"]])
def test_compile_emit_json(capsys, optimized: list[str]):
    code, out, err = cli(capsys, "compile", IOI, "--emit", "json", *optimized)
    assert code == 0, err
    data = json.loads(out)
    assert {"nodes", "edges", "tables"} <= set(data)
    (table,) = data["tables"]
    assert table["name"] == "heads" and table["rows"] == [] and table["pairs"] == []
    # compact sweeps: one per layer, 12 heads each (the keys: its Forward's `sweep`)
    assert [b["count"] for b in table["sweeps"]] == [12] * 12
    assert {n["type"] for n in data["nodes"]} == {"Forward", "Read", "Metric"}


def test_compile_json_of_compare_has_pairs(capsys):
    code, out, _ = cli(capsys, "compile", ROOT / "examples/language/attribution.patch",
                       "--emit", "json")
    assert code == 0
    (cmp,) = [t for t in json.loads(out)["tables"] if t["op"] == "compare"]
    assert cmp["pairs"] and {"estimate", "metric", "key", "normalize", "members"} == \
        set(cmp["pairs"][0])
    # a compact compare: each pair names the estimate's members its metric measures
    assert all(len(p["members"]) == 2 for p in cmp["pairs"])


def test_compile_bad_spec(capsys, tmp_path: Path):
    path = write(tmp_path, HEAD + "swap L1.H99.z from clean into corrupt  measure ld\n")
    code, out, err = cli(capsys, "compile", path, "--emit", "json")
    assert code == 1 and out == "" and "error[E202]" in err


# ---- fmt ---------------------------------------------------------------------------------------


def test_fmt_rewrites_and_keeps_comments(capsys, tmp_path: Path):
    original = IOI.read_text("utf-8")
    path = write(tmp_path, original.replace("\n    as heads", "  as heads  # the table"))
    os.chmod(path, 0o640)
    before = [c.text for c in comments(path.read_text("utf-8"))]
    code, out, err = cli(capsys, "fmt", "--check", path)
    assert code == 1 and "would be reformatted" in err
    code, out, err = cli(capsys, "fmt", path)
    assert code == 0 and out == f"{path}: formatted\n", err
    text = path.read_text("utf-8")
    assert text == format_source(parse_file(path))
    assert [c.text for c in comments(text)] == before
    assert "swap L*.H*.z from clean into corrupt  # the table\n" not in text  # not its line
    assert "# HF hub id or local directory" in text
    assert "    measure ld normalized  # the table\n" in text  # on the line it ended
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the rename kept the permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.patch"]  # no temp file left
    assert cli(capsys, "fmt", "--check", path)[0] == 0
    code, out, _ = cli(capsys, "fmt", path)
    assert code == 0 and "already formatted" in out


def test_fmt_check_exit_codes(capsys, tmp_path: Path):
    formatted = write(tmp_path, format_source(parse_file(IOI)), "a.patch")
    messy_text = IOI.read_text("utf-8").replace("run clean = ", "run clean   = ")
    messy = write(tmp_path, messy_text, "b.patch")
    assert cli(capsys, "fmt", "--check", formatted)[0] == 0
    code, _, err = cli(capsys, "fmt", "--check", messy)
    assert code == 1 and f"{messy}: would be reformatted" in err
    assert messy.read_text("utf-8") == messy_text  # --check never writes


def test_fmt_stdout_does_not_write(capsys, tmp_path: Path):
    path = write(tmp_path, IOI.read_text("utf-8"))
    code, out, _ = cli(capsys, "fmt", "--stdout", path)
    assert code == 0 and out == format_source(parse_file(IOI))
    assert path.read_text("utf-8") == IOI.read_text("utf-8")


def test_fmt_syntax_error_leaves_file_untouched(capsys, tmp_path: Path):
    raw = b"# keep me\r\nmodel  \"m\"\nswap L1.z from a  # no into\n\tmeasure x\n"
    path = tmp_path / "bad.patch"
    path.write_bytes(raw)
    mtime = path.stat().st_mtime_ns
    code, out, err = cli(capsys, "fmt", path)
    assert code == 1 and out == ""
    m = LOCATED.search(err)
    assert m and m["code"] == "E100" and "Traceback" not in err, err
    assert path.read_bytes() == raw and path.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == ["bad.patch"]


def test_fmt_check_and_stdout_exclude_each_other(capsys, tmp_path: Path):
    code, _, err = cli(capsys, "fmt", "--check", "--stdout", IOI)
    assert code == 1 and "not allowed with" in err


# ---- the rest of the command line --------------------------------------------------------------


def test_version(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"patchc {patchc.__version__}"


def test_usage_errors_exit_1(capsys):
    assert cli(capsys)[0] == 1
    code, _, err = cli(capsys, "compile", IOI, "--emit", "svg")
    assert code == 1 and "invalid choice" in err
    assert cli(capsys, "frobnicate")[0] == 1
    assert cli(capsys, "--help")[0] == 0


def _boom(*args, **kwargs):
    raise RuntimeError("a bug\nover two lines")


def test_internal_error_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("PATCHC_DEBUG", raising=False)
    monkeypatch.setattr(patchc.api, "compile", _boom)
    code, out, err = cli(capsys, "check", IOI)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines[0] == "patchc: internal error: RuntimeError: a bug"
    assert len(lines) == 2 and "PATCHC_DEBUG=1" in lines[1]
    assert "Traceback" not in err


def test_internal_error_traceback_with_debug(capsys, monkeypatch):
    monkeypatch.setenv("PATCHC_DEBUG", "1")
    monkeypatch.setattr(patchc.api, "compile", _boom)
    code, _, err = cli(capsys, "check", IOI)
    assert code == 2 and "Traceback" in err and "_boom" in err


# ---- one real process: check never imports torch, and starts fast ------------------------------

NO_TORCH = """
import sys
from patchc.cli import main
rc = main(["check", sys.argv[1]])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers"})
assert not heavy, f"patchc check imported {heavy}"
sys.exit(rc)
"""


def test_check_never_imports_torch_and_is_fast():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(IOI)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)
    elapsed = time.perf_counter() - start
    print(f"patchc check {IOI.name} in a fresh process: {elapsed:.2f} s")
    assert proc.returncode == 0, proc.stderr
    assert "ok:" in proc.stdout
    assert elapsed < 3.0, f"patchc check took {elapsed:.2f} s"


def test_compile_emit_plan_and_dot(capsys):
    code, out, err = cli(capsys, "compile", IOI, "--emit", "plan")
    assert code == 0, err
    assert out.startswith("plan: 14 model passes for 146 forwards, 0 backwards (naive: 146 ")
    assert "steps:" in out and "from r144" in out
    code, out, err = cli(capsys, "compile", IOI, "--emit", "dot", "--optimized")
    assert code == 0, err
    assert out.startswith("digraph patchc {") and "sweep 12 x replace z L1 H0..11" in out


def test_compile_emit_plan_for_workers(capsys):
    code, out, err = cli(capsys, "compile", IOI, "--emit", "plan", "--workers", "3")
    assert code == 0, err
    assert "\nworkers: 3, together " in out
    shares = [line for line in out.splitlines() if line.startswith("worker ")]
    assert [s.split(":")[0] for s in shares] == ["worker 0", "worker 1", "worker 2"]
    assert all("%), reports m" in s for s in shares)
    code, _, err = cli(capsys, "compile", IOI, "--emit", "ir", "--workers", "2")
    assert code == 1 and "--workers applies to --emit plan" in err
    code, _, err = cli(capsys, "compile", IOI, "--emit", "plan", "--workers", "0")
    assert code == 1 and "at least 1" in err


def test_run_refuses_a_memory_budget_nothing_fits(tmp_path, capsys):
    # `run` refuses as `check` does (E422 at the `set memory` line), before any model pass,
    # and leaves no result folder behind
    spec = write(tmp_path, 'set memory = "1MB"\n' + HEAD
                 + "swap L*.mlp.post[*] @ last from clean into corrupt measure ld\n")
    code, out, err = cli(capsys, "run", spec, "--out", tmp_path / "out")
    assert code == 1, err
    assert re.search(r"spec\.patch:1:\d+: error\[E422\]: .*smallest budget that fits is \d+ MB",
                     err), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
