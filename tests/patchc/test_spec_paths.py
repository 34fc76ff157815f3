"""A SPEC argument is a path or spec text by one rule (`looks_like_path`), the same in every
subcommand and in `patchc.compile`/`patchc.run`: a mistyped path or a folder is reported as
such (E001), never parsed as spec text (E100)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import patchc  # noqa: E402
from patchc.cli import main  # noqa: E402
from patchc.compiler.errors import PatchcError  # noqa: E402
from patchc.compiler.parse import looks_like_path  # noqa: E402


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "ioi_heads.patch").write_text("# empty\n", "utf-8")
    return tmp_path


@pytest.mark.parametrize("sub", [["check"], ["compile", "--emit", "ast"],
                                 ["compile", "--emit", "ir"], ["run"], ["fmt"]])
def test_mistyped_path_is_e001_with_near_name(folder, capsys, sub):
    code = main([*sub, str(folder / "ioi_head")])
    err = capsys.readouterr().err
    assert code == 1
    assert "error[E001]: spec file not found" in err and "E100" not in err
    assert f"did you mean {folder / 'ioi_heads.patch'}?" in err


@pytest.mark.parametrize("sub", [["check"], ["compile", "--emit", "ast"], ["run"]])
def test_folder_is_reported_as_folder(folder, capsys, sub):
    code = main([*sub, str(folder)])
    err = capsys.readouterr().err
    assert code == 1
    assert "error[E001]: spec path is a directory" in err and "E100" not in err
    assert str(folder / "ioi_heads.patch") in err


@pytest.mark.parametrize("api", [patchc.compile, patchc.run])
def test_api_applies_the_same_rule(folder, api):
    with pytest.raises(PatchcError) as info:
        api(str(folder / "ioi_head"))
    assert info.value.code == "E001" and "ioi_heads.patch" in (info.value.hint or "")
    with pytest.raises(PatchcError) as info:
        api(str(folder))
    assert info.value.code == "E001" and "directory" in info.value.message


def test_rule():
    assert looks_like_path("examples/ioi_head")
    assert looks_like_path("my spec.patch")
    assert not looks_like_path('model "x"')
    assert not looks_like_path("model \"x\"\nrun clean = d.clean\n")
    assert not looks_like_path("")


def test_a_spec_without_a_model_line_says_why_it_needs_one():
    """`patchc.run(spec, model=m, tokenizer=t)` still needs the `model` line: it names the
    model the manifest records and `verify` reloads. The error says so, located."""
    import patchc
    from patchc.compiler.errors import PatchcError

    with pytest.raises(PatchcError) as info:
        patchc.run('run a = ["x y"]\nmeasure logit(" y") in a\n', model=object(),
                   tokenizer=object())
    e = info.value
    assert (e.code, e.line, e.col) == ("E300", 1, 1) and "model=" in e.hint
