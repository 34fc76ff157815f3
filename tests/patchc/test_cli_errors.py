"""Mistakes on the command line are reported as the flag they are (exit 1), never as line 1
of the spec or an internal error; `check` states the cost (a long run's as a note)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import patchc.cli  # noqa: E402
from patchc.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HEAD = f'''model "{ROOT / 'examples' / 'models' / 'tiny-gpt2'}"
data ioi = "{ROOT / 'examples' / 'data' / 'ioi.jsonl'}"
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
'''
BODY = "swap L0.mlp.out from clean into corrupt  measure ld\n"


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    p = tmp_path / "spec.patch"
    p.write_text(HEAD + BODY, "utf-8")
    return p


@pytest.mark.parametrize("pair,fragment", [
    ("naive=1", "`naive` is not a `set` option; use --naive"),
    ("workers=2", "use --workers N"),
    ("progress=0", "use --quiet"),
    ("model=gpt2", "use the spec's `model` line"),
    ("tokenizer=x", "use the spec's `model` line"),
    ("trust_remote_code=1", "use --trust-remote-code"),
    ("seed=abc", "valid integer"),
    ("seed=99999999999999999999", "64-bit integer"),
    ("batch_size=0", "at least 1"),
    ("device=gpu", "device must be"),
    ("memory=lots", "memory must be a size"),
    ("colour=red", "no such option"),
    ("novalue", "takes KEY=VALUE"),
])
def test_set_mistakes_name_the_flag(capsys, spec: Path, pair: str, fragment: str):
    code, out, err = cli(capsys, "run", spec, "--quiet", "--set", pair)
    assert code == 1, err
    assert err.startswith("patchc run: error: --set") and fragment in err, err
    assert "spec.patch:" not in err and "Traceback" not in err and "internal" not in err


def test_device_map_mistake_names_the_flag(capsys, spec: Path):
    code, _, err = cli(capsys, "run", spec, "--quiet", "--device-map", "nope.json")
    assert code == 1 and err.startswith("patchc run: error: --device-map") and "not found" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without "
                    "CUDA")
def test_no_cuda(capsys, spec: Path, tmp_path: Path):
    code, _, err = cli(capsys, "run", spec, "--quiet", "--set", "device=cuda")
    assert code == 1 and "--set device=cuda: no CUDA device" in err
    p = tmp_path / "cuda.patch"
    p.write_text(HEAD + 'set device = "cuda"\n' + BODY, "utf-8")
    code, _, err = cli(capsys, "run", p, "--quiet")
    assert code == 1 and f"{p}:6:1: error[E410]" in err, err  # the `set` line
    assert err.splitlines()[1].endswith('set device = "cuda"')


@pytest.mark.skipif(__import__("torch").backends.mps.is_available(), reason="needs a machine "
                    "without an Apple GPU")
def test_no_mps(capsys, spec: Path, tmp_path: Path):
    p = tmp_path / "mps.patch"
    p.write_text(HEAD + "set device = mps\n" + BODY, "utf-8")
    code, _, err = cli(capsys, "run", p, "--quiet")
    assert code == 1 and f"{p}:6:1: error[E410]" in err and "no mps" in err, err
    assert "internal error" not in err


def test_unlocated_errors_print_no_line(capsys, spec: Path):
    code, _, err = cli(capsys, "run", spec, "--quiet", "--naive", "--workers", "2")
    assert code == 1 and err.startswith(f"{spec}: error[E416]: "), err


def test_check_notes_a_long_run(capsys, spec: Path, monkeypatch):
    code, out, _ = cli(capsys, "check", spec)
    lines = out.splitlines()
    assert code == 0 and "long run" not in out and len(lines) == 2, out
    # Every check states the cost: experiments, model passes, FLOPs and a time.
    assert lines[1].startswith("cost: 1 experiment(s) in 2 model pass(es), "), out
    assert "FLOPs: about" in lines[1] and " s at 3e+10 FLOP/s on cpu" in lines[1]
    monkeypatch.setattr(patchc.cli, "LONG_RUN_SECONDS", 0.0)
    code, out, _ = cli(capsys, "check", spec)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2, out
    assert lines[1].startswith("note: a long run: 1 experiment(s) in 2 model pass(es), ")
    assert "FLOPs: about" in lines[1] and "FLOP/s on cpu" in lines[1]


def test_verify_of_no_result_folder_says_what_it_is(tmp_path: Path, spec: Path, capsys):
    """A mistyped folder, a file, a folder of other things: E601 at once, naming which, and
    no tolerance line of a report that never starts."""
    (tmp_path / "out1").mkdir()
    cases = [(tmp_path / "out11", "there is no folder", 'did you mean "'),
             (tmp_path / "nothing_like_it", "there is no folder", "--out DIR` wrote"),
             (spec, "is a file, not a result folder", "--out DIR` wrote"),
             (tmp_path / "out1", "has no manifest.json", None)]
    for path, message, hint in cases:
        code, out, err = cli(capsys, "verify", path)
        assert code == 1 and "tolerance" not in out, (out, err)
        assert "error[E601]" in err and message in err, err
        assert hint is None or hint in err, err


@pytest.mark.parametrize("flag, value", [("--atol", "-1"), ("--rtol", "nan"),
                                         ("--atol", "inf")])
def test_verify_tolerance_must_be_a_number_at_least_0(tmp_path: Path, flag, value, capsys):
    """A negative or NaN tolerance would match no value: refused as the flag it is."""
    code, out, err = cli(capsys, "verify", tmp_path, flag, value)
    assert code == 1 and not out
    assert f"{flag} must be a number >= 0" in err


def test_a_dictionary_folder_as_the_model_says_so(capsys):
    folder = ROOT / "examples" / "saes" / "ioi-L1-resid_post"
    code, out, err = cli(capsys, "sites", folder)
    assert code == 1 and "has no config.json" in err
    assert "this folder is a dictionary (cfg.json)" in err and "/./" not in err


def test_a_model_folder_without_a_tokenizer_is_refused_by_check(tmp_path: Path, capsys):
    """Weights but no tokenizer file: transformers would build an empty tokenizer and the
    run fail on the first answer (E420, "tokenizes to no tokens"); check says what is
    missing. A folder of config.json alone still checks, with W300 (test_cli.py)."""
    import shutil

    src = ROOT / "examples" / "models" / "tiny-gpt2"
    (tmp_path / "m").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, tmp_path / "m" / name)
    spec = tmp_path / "s.patch"
    spec.write_text('model "m"\nrun a = ["the cat"]\nmeasure logit(" the") in a\n', "utf-8")
    for command in ("check", "run"):
        code, out, err = cli(capsys, command, spec)
        assert code == 1 and "error[E472]" in err and "has no tokenizer" in err, err
        assert "s.patch:1:1:" in err and "save_pretrained" in err


def test_threads_and_workers_past_the_machine_are_refused(capsys, spec: Path):
    """`--threads 100000` crashed OpenMP; `--workers 99999` spawned processes until the
    system ran out of files."""
    from patchc.runner import max_workers

    code, _, err = cli(capsys, "run", spec, "--quiet", "--threads", "100000")
    assert code == 1 and "--threads must be from 1 to 1024" in err
    too_many = max_workers() + 1
    code, _, err = cli(capsys, "run", spec, "--quiet", "--workers", too_many)
    assert code == 1 and f"error[E416]: --workers {too_many}: this machine has room" in err


def test_messages_say_what_is_wrong_where(capsys, tmp_path: Path):
    """Found by a command-line trial: each message named the wrong thing."""
    data = tmp_path / "d.jsonl"
    data.mkdir()  # a folder where the data file should be
    p = tmp_path / "s.patch"
    p.write_text(HEAD.replace(str(ROOT / "examples" / "data" / "ioi.jsonl"), str(data)) + BODY)
    code, _, err = cli(capsys, "check", p)
    assert code == 1 and "error[E314]" in err and "is a folder" in err
    assert "did you mean" not in err
    csv = tmp_path / "pos.csv"  # one NaN makes the column text: row 1 is the culprit
    csv.write_text("clean,corrupt,answer,distractor,pos\n" + "".join(
        f'"a b c","a b d"," x"," y",{v}\n' for v in ("1", "NaN", "2")))
    p.write_text(HEAD + f'data t = "{csv}"\nrun a = t.clean\n'
                 "swap L0.mlp.out @ t.pos from a into a  measure logit(t.answer)\n")
    code, _, err = cli(capsys, "check", p)
    assert code == 1 and "row 1 is 'NaN'" in err
    p.write_text(HEAD + 'set memory = "1KB"\n' + BODY)
    code, _, err = cli(capsys, "check", p)
    assert code == 1 and "`set memory` = 1 KB" in err
    code, _, err = cli(capsys, "run", p, "--quiet", "--set", "memory=512")
    assert code == 1 and "a size with its unit" in err
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    code, _, err = cli(capsys, "run", p.with_name("spec.patch").parent / "s.patch", "--quiet",
                       "--out", blocked / "sub", "--set", "memory=1GB")
    assert code == 1 and "error[E605]" in err and f"cannot write in {blocked}" in err


def test_verify_names_a_nan_cell(capsys):
    import numpy as np
    import pandas as pd

    from patchc.verify import compare_frames

    ok, detail = compare_frames(pd.DataFrame({"x": [np.nan, 2.0]}),
                                pd.DataFrame({"x": [1.0, 2.0]}), 0.0, 0.0)
    assert not ok and "NaN on one side only" in detail and "max |diff|" not in detail


def test_rows_and_out_values_that_mean_nothing_are_usage_errors(capsys, spec: Path):
    code, _, err = cli(capsys, "run", spec, "--quiet", "--rows", "-1")
    assert code == 1 and "--rows must be 0 or more" in err
    code, _, err = cli(capsys, "run", spec, "--quiet", "--out", "")
    assert code == 1 and "--out needs a folder name" in err
    code, out, _ = cli(capsys, "run", spec, "--quiet", "--rows", "0")
    assert code == 0 and "== op_6: 1 rows" in out and "Empty DataFrame" not in out


def test_an_unknown_flag_is_told_with_its_commands_usage(capsys, spec: Path):
    code, _, err = cli(capsys, "check", "--bogus", spec)
    assert code == 1 and err.startswith("usage: patchc check") and "--bogus" in err
    code, _, err = cli(capsys)
    assert code == 1 and "name a command first: check, compile, run" in err
