"""`patchc run --out`: tables, manifest, plots; `patchc verify` and `patchc plot`; the Pygments
lexer and the %%patch magic. Uses the bundled tiny GPT-2 (random weights) and few rows."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from pygments.token import Error  # noqa: E402

from patchc.cli import main  # noqa: E402
from patchc.magic import run_cell  # noqa: E402
from patchc.pygments_lexer import PatchLexer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "models" / "tiny-gpt2"
SPEC = f"""model "{MODEL}"
data d = [
    {{"clean": "When Mary and John went to the store , John gave a drink to",
      "corrupt": "When Alice and Bob went to the store , Tom gave a drink to",
      "answer": " Mary", "distractor": " John"}},
    {{"clean": "When Kate and Paul went to the park , Paul gave a ring to",
      "corrupt": "When Anna and Mark went to the park , Lucy gave a ring to",
      "answer": " Kate", "distractor": " Paul"}}
]
run clean = d.clean
run corrupt = d.corrupt
metric ld = logit(d.answer) - logit(d.distractor)
swap L0..1.H0..2.z @ last from clean into corrupt
    measure ld normalized
    as heads
ablate L0..2.mlp.out in clean  measure ld  as mlps
"""


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    spec = tmp_path_factory.mktemp("spec") / "small.patch"
    spec.write_text(SPEC, "utf-8")
    out = tmp_path_factory.mktemp("out")
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    return out


def test_run_writes_tables_manifest_and_plots(out_dir: Path):
    heads = pd.read_csv(out_dir / "heads.csv")
    # every mean with its standard error (docs/reading.md)
    assert list(heads.columns) == ["layer", "head", "ld", "ld_se"] and len(heads) == 6
    assert list(pd.read_csv(out_dir / "mlps.csv").columns) == ["layer", "ld", "ld_se"]
    examples = pd.read_csv(out_dir / "heads.examples.csv")
    assert list(examples.columns)[:3] == ["layer", "head", "example"]
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["spec_text"] == SPEC and len(manifest["spec_sha256"]) == 64
    assert len(manifest["weights_sha256"]) == 64
    assert {"patchc", "torch", "transformers"} <= set(manifest["versions"])
    assert manifest["tables"]["heads"]["keys"] == ["layer", "head"]
    assert manifest["plan"]["forwards"] >= 6 and manifest["seed"] == 0
    for png in ("heads.png", "mlps.png"):
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verify_passes_then_fails_on_a_tampered_table(out_dir: Path, tmp_path: Path, capsys):
    assert main(["verify", str(out_dir)]) == 0
    assert "verified" in capsys.readouterr().out
    tampered = tmp_path / "t"
    tampered.mkdir()
    for f in out_dir.iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    df = pd.read_csv(tampered / "mlps.csv")
    df.loc[0, "ld"] += 0.5
    df.to_csv(tampered / "mlps.csv", index=False)
    assert main(["verify", str(tampered)]) == 1
    out = capsys.readouterr().out
    assert "FAIL mlps" in out and "ok   heads" in out


def test_plot_redraws(out_dir: Path, capsys):
    (out_dir / "heads.png").unlink()
    assert main(["plot", str(out_dir)]) == 0
    assert (out_dir / "heads.png").is_file()


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_plot_keeps_a_figure_it_cannot_redraw(out_dir: Path, tmp_path: Path, capsys):
    folder = _copy(out_dir, tmp_path / "r")
    before = (folder / "heads.png").read_bytes()
    text = (folder / "heads.csv").read_text().splitlines()
    cells = text[1].split(",")
    cells[2] = "oops"  # (the `ld` column: no number left to draw)
    (folder / "heads.csv").write_text("\n".join([text[0], ",".join(cells), *text[2:]]))
    assert main(["plot", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "E609" in err and "heads" in err
    assert (folder / "heads.png").read_bytes() == before  # (it used to be deleted)
    assert "heads.png" in json.loads((folder / "manifest.json").read_text())["files"]
    assert (folder / "mlps.png").is_file()


def test_plot_names_a_missing_csv_where_it_is_missing(out_dir: Path, tmp_path: Path, capsys):
    folder = _copy(out_dir, tmp_path / "r")
    (folder / "mlps.csv").unlink()
    assert main(["plot", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "E602" in err and f"{folder / 'mlps.csv'} is missing" in err
    assert "staging" not in err


def test_run_into_the_working_directory_leaves_it_in_place(tmp_path: Path, monkeypatch):
    """`--out .`: the folder the shell is in is written file by file, not swapped away."""
    spec = tmp_path / "s.patch"
    spec.write_text(SPEC, "utf-8")
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    inode = os.stat(".").st_ino
    for _ in range(2):  # (the second time, over the first result)
        assert main(["run", str(spec), "--out", ".", "--quiet"]) == 0
        assert os.stat(here).st_ino == inode and (here / "heads.csv").is_file()
    assert main(["verify", "."]) == 0


def test_plot_of_a_folder_without_manifest_is_a_user_error(tmp_path: Path, capsys):
    assert main(["plot", str(tmp_path)]) == 1
    assert "E601" in capsys.readouterr().err


def test_failed_run_writes_nothing(tmp_path: Path, capsys):
    spec = tmp_path / "bad.patch"
    # The spec checks (config and tokenizer are there) but the run fails: no weights.
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text((MODEL / "config.json").read_text())
    (tmp_path / "m" / "tokenizer.json").write_text((MODEL / "tokenizer.json").read_text())
    spec.write_text(SPEC.replace(str(MODEL), str(tmp_path / "m")), "utf-8")
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 1
    assert "error[E411]" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_lexer_has_no_error_tokens_on_the_examples():
    lexer = PatchLexer()
    for path in sorted((ROOT / "examples").rglob("*.patch")):
        tokens = list(lexer.get_tokens(path.read_text("utf-8")))
        assert not [t for t in tokens if t[0] is Error], path


def test_magic_prints_a_spec_error_without_a_traceback():
    import io

    from patchc.magic import cell_magic

    out = io.StringIO()
    ns: dict = {}
    bad = SPEC.replace("measure", "measur", 1)
    assert cell_magic("res", bad, ns, stream=out) is None and "res" not in ns
    text = out.getvalue()
    assert "error[E100]" in text and "did you mean `measure`?" in text
    assert "Traceback" not in text


def test_magic_returns_results_and_binds_a_name():
    ns: dict = {}
    results = run_cell("res", SPEC, ns)
    assert ns["res"] is results and len(results["heads"]) == 6
