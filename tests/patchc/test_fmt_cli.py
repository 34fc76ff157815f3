"""`patchc fmt` on the command line: `--check` prints a unified diff, folders are formatted
file by file, and the bundled examples pass `patchc fmt --check examples/`."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

from patchc.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MESSY = '''model "m"
data ioi = "ioi.jsonl"
run clean   = ioi.clean
swap L0.mlp.out from clean into clean  measure logit(ioi.answer)  as t
'''


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_prints_a_unified_diff(capsys, tmp_path: Path):
    path = tmp_path / "s.patch"
    path.write_text(MESSY, "utf-8")
    code, out, err = cli(capsys, "fmt", "--check", path)
    assert code == 1 and err == f"{path}: would be reformatted\n"
    assert out == (
        f"--- {path}\n"
        f"+++ {path} (formatted)\n"
        "@@ -1,4 +1,9 @@\n"
        ' model "m"\n'
        "+\n"
        ' data ioi = "ioi.jsonl"\n'
        "-run clean   = ioi.clean\n"
        "-swap L0.mlp.out from clean into clean  measure logit(ioi.answer)  as t\n"
        "+\n"
        "+run clean = ioi.clean\n"
        "+\n"
        "+swap L0.mlp.out from clean into clean\n"
        "+    measure logit(ioi.answer)\n"
        "+    as t\n")
    assert path.read_text("utf-8") == MESSY  # --check never writes


def test_a_folder_is_formatted_file_by_file(capsys, tmp_path: Path):
    (tmp_path / "sub").mkdir()
    messy, clean = tmp_path / "sub" / "a.patch", tmp_path / "b.patch"
    messy.write_text(MESSY, "utf-8")
    clean.write_text('model "m"\n', "utf-8")
    (tmp_path / "notes.txt").write_text("not a spec", "utf-8")
    code, out, err = cli(capsys, "fmt", "--check", tmp_path)
    assert code == 1 and f"{clean}: already formatted" in out and str(messy) in err
    code, out, _ = cli(capsys, "fmt", tmp_path)
    assert code == 0 and out == f"{clean}: already formatted\n{messy}: formatted\n"
    assert cli(capsys, "fmt", "--check", tmp_path, clean)[0] == 0


def test_a_spec_that_does_not_parse_does_not_stop_the_others(capsys, tmp_path: Path):
    bad, messy = tmp_path / "a_bad.patch", tmp_path / "b.patch"
    bad.write_text('model "m"\nswap L0.mlp.out fromm clean\n', "utf-8")
    messy.write_text(MESSY, "utf-8")
    code, out, err = cli(capsys, "fmt", tmp_path)
    assert code == 1 and f"{messy}: formatted" in out
    assert "error[E100]" in err and f"{bad}: not formatted" in err
    assert bad.read_text("utf-8") == 'model "m"\nswap L0.mlp.out fromm clean\n'
    code, _, err = cli(capsys, "fmt", bad)  # (one file: its error, as before)
    assert code == 1 and "error[E100]" in err and "not formatted" not in err


def test_a_folder_without_specs_is_a_user_error(capsys, tmp_path: Path):
    code, out, err = cli(capsys, "fmt", tmp_path)
    assert code == 1 and f"no .patch files under {tmp_path}" in err and "Traceback" not in err


def test_the_bundled_examples_are_formatted(capsys):
    code, out, err = cli(capsys, "fmt", "--check", ROOT / "examples")
    assert code == 0, out + err
    assert out.count("already formatted") == len(list((ROOT / "examples").rglob("*.patch")))
