"""A file a spec names that does not exist is shown as the user would write it (no `./../`)
and, when its folder holds a close name, the hint proposes it (a typo in a path)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from patchc.compiler.check import check  # noqa: E402
from patchc.compiler.errors import PatchcError  # noqa: E402
from patchc.compiler.parse import parse_file  # noqa: E402


def test_missing_paths_are_normalized_and_hinted(tmp_path, monkeypatch):
    for folder in ("specs", "models/ioi-gpt2", "data"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "data" / "ioi.jsonl").write_text('{"p": "x"}\n')
    (tmp_path / "data" / "vectors.safetensors").write_bytes(b"")
    (tmp_path / "specs" / "p.patch").write_text(
        'model "../models/ioi-gpt2x"\n'
        'data ioi = "../data/ioii.jsonl"\n'
        'vector v = load("../data/vector.safetensors", key="x")\n'
        'data far = "../data/unrelated.jsonl"\n')
    monkeypatch.chdir(tmp_path / "specs")
    with pytest.raises(PatchcError) as info:
        check(parse_file("p.patch"))  # base folder ".": paths were shown as ./../...
    found = {e.code: e for e in info.value.errors}
    assert sorted(e.code for e in info.value.errors) == ["E212", "E314", "E314", "E328"]
    model = found["E212"]
    assert "no model directory at ../models/ioi-gpt2x " in model.message
    assert model.hint == 'did you mean "../models/ioi-gpt2"?'
    data = [e for e in info.value.errors if e.code == "E314"]
    assert data[0].message == "data file not found: ../data/ioii.jsonl"
    assert data[0].hint == 'did you mean "../data/ioi.jsonl"?'
    assert data[1].hint == "relative paths resolve against the spec file's directory"
    assert found["E328"].hint == 'did you mean "../data/vectors.safetensors"?'


def test_paths_written_from_the_working_directory(tmp_path, monkeypatch):
    """A spec kept in a subfolder with its paths written from the repository root: the
    hint says how to write them from the spec's folder."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ioi.jsonl").write_text('{"p": "x"}\n')
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.patch").write_text(
        'model "m"\ndata ioi = "data/ioi.jsonl"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PatchcError) as info:
        check(parse_file("specs/a.patch"))
    [data] = [e for e in info.value.errors if e.code == "E314"]
    assert data.hint == ("relative paths resolve against the spec's folder, not the working "
                         'directory: write "../data/ioi.jsonl"')


def test_dictionary_folder_written_from_the_working_directory(tmp_path, monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    (tmp_path / "a.patch").write_text(
        f'model "{root}/examples/models/ioi-gpt2"\n'
        'sae s = "examples/saes/ioi-L1-resid_post" at L1.resid_post\n')
    monkeypatch.chdir(root)
    with pytest.raises(PatchcError) as info:
        check(parse_file(str(tmp_path / "a.patch")))
    [e] = info.value.errors
    assert e.code == "E381" and e.hint is not None
    assert e.hint.startswith("relative paths resolve against the spec's folder")
    assert e.hint.endswith('examples/saes/ioi-L1-resid_post"')
    written = e.hint.split('write "')[1].rstrip('"')
    assert (tmp_path / written).resolve() == root / "examples" / "saes" / "ioi-L1-resid_post"
