"""`patchc verify` cannot be fooled: every tampering of a result folder (or of an input the
spec reads) fails with the check that names it, a malformed folder is a clear user error
(exit 1, never a crash), and an untouched result verifies from any working directory, exactly.
Uses the bundled tiny GPT-2 and a two-row data file."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from patchc.cli import main  # noqa: E402
from patchc.verify import compare_frames  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "models" / "tiny-gpt2"
ROWS = [
    {"clean": "When Mary and John went to the store , John gave a drink to",
     "corrupt": "When Alice and Bob went to the store , Tom gave a drink to",
     "answer": " Mary", "distractor": " John"},
    {"clean": "When Kate and Paul went to the park , Paul gave a ring to",
     "corrupt": "When Anna and Mark went to the park , Lucy gave a ring to",
     "answer": " Kate", "distractor": " Paul"},
]
SPEC = f"""model "{MODEL}"
data d = "d.jsonl"
run clean = d.clean
run corrupt = d.corrupt
metric ld = logit(d.answer) - logit(d.distractor)
swap L0..1.H0..1.z @ last from clean into corrupt
    measure ld normalized
    as heads
ablate L0..1.mlp.out in clean  measure ld  as mlps
"""


def write_spec(folder: Path, text: str = SPEC) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), "utf-8")
    (folder / "small.patch").write_text(text, "utf-8")
    return folder / "small.patch"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, Path]:
    """(result folder, spec folder), run from the spec's folder with relative paths."""
    spec_dir = tmp_path_factory.mktemp("spec")
    write_spec(spec_dir)
    out = tmp_path_factory.mktemp("res") / "out"
    cwd = os.getcwd()
    os.chdir(spec_dir)
    try:
        assert main(["run", "small.patch", "--out", str(out), "--quiet", "--no-plots"]) == 0
    finally:
        os.chdir(cwd)
    return out, spec_dir


def copy(recorded, tmp_path: Path) -> tuple[Path, Path]:
    out, spec_dir = recorded
    shutil.copytree(out, tmp_path / "out")
    shutil.copytree(spec_dir, tmp_path / "spec")
    return tmp_path / "out", tmp_path / "spec"


def verify(out: Path, spec_dir: Path, capsys) -> tuple[int, str]:
    rc = main(["verify", str(out), "--spec-dir", str(spec_dir)])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def test_an_untouched_result_verifies_exactly_from_another_folder(recorded, tmp_path,
                                                                    monkeypatch, capsys):
    out, _ = recorded
    manifest = json.loads((out / "manifest.json").read_text())
    assert Path(manifest["spec_file"]).is_absolute() and Path(manifest["spec_dir"]).is_dir()
    assert set(manifest["inputs"]) == {"d.jsonl"} and len(manifest["tokenizer_sha256"]) == 64
    assert manifest["files"] == ["heads.csv", "heads.examples.csv", "mlps.csv",
                                 "mlps.examples.csv"]
    monkeypatch.chdir(tmp_path)  # the recorded paths are absolute: no --spec-dir needed
    assert main(["verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert "atol = 0, rtol = 0 (exact)" in text.splitlines()[0]
    assert "ok   input d.jsonl" in text and "ok   heads.csv" in text
    assert text.rstrip().endswith("verified")


def _json_edit(edit: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    def tamper(out: Path, spec: Path) -> None:
        m = json.loads((out / "manifest.json").read_text())
        edit(m)
        (out / "manifest.json").write_text(json.dumps(m))
    return tamper


def _csv_edit(name: str, edit: Callable[[pd.DataFrame], None]) -> Callable[[Path, Path], None]:
    def tamper(out: Path, spec: Path) -> None:
        df = pd.read_csv(out / name)
        edit(df)
        df.to_csv(out / name, index=False)
    return tamper


def _both(*tampers):
    def tamper(out: Path, spec: Path) -> None:
        for t in tampers:
            t(out, spec)
    return tamper


def _nudge(df: pd.DataFrame) -> None:
    df.loc[0, "ld"] += 5e-6


def _set(key, value):
    return _json_edit(lambda m: m.__setitem__(key, value))


def _drop_table(m: dict) -> None:
    del m["tables"]["mlps"]
    m["files"].remove("mlps.csv")
    m["files"].remove("mlps.examples.csv")


def _plot_of(m: dict) -> dict:
    return m["tables"]["heads"].setdefault("plot", {})


def _edit_baseline(m: dict) -> None:
    """A number somewhere in the heads table's description (a baseline, else any)."""
    def first_number(d):
        for k, v in (d.items() if isinstance(d, dict) else enumerate(d)):
            if isinstance(v, float):
                d[k] = v + 99.0
                return True
            if isinstance(v, (dict, list)) and first_number(v):
                return True
        return False
    entry = m["tables"]["heads"]
    assert first_number({k: v for k, v in entry.items() if k != "seconds"})


TAMPERINGS = {
    "spec_sha256 zeroed": (_set("spec_sha256", "0" * 64), "spec"),
    "a comment added to spec_text": (
        _json_edit(lambda m: m.__setitem__("spec_text", m["spec_text"] + "# note\n")), "spec"),
    "set batch_size added to spec_text": (
        _json_edit(lambda m: m.__setitem__(
            "spec_text", m["spec_text"].replace("\n", "\nset batch_size = 1\n", 1))), "spec"),
    "model_id edited": (_set("model_id", "gpt2"), "model"),
    "an answer edited in the data file": (
        lambda out, spec: (spec / "d.jsonl").write_text(
            (spec / "d.jsonl").read_text().replace('" Mary"', '" Kate"')), "input d.jsonl"),
    "input hashes removed": (_set("inputs", {}), "input d.jsonl"),
    "weights hash edited": (_set("weights_sha256", "1" * 64), "weights"),
    "tokenizer hash edited": (_set("tokenizer_sha256", "2" * 64), "tokenizer"),
    "a table removed from the manifest, its CSV altered": (
        _both(_json_edit(_drop_table), _csv_edit("mlps.csv", _nudge)), "table mlps"),
    "tables emptied": (_both(_set("tables", {}), _set("files", [])), "table heads"),
    "a CSV value moved by 5e-6": (_csv_edit("mlps.csv", _nudge), "mlps.csv"),
    # What the figures are drawn from is compared with the rerun's too.
    "a plot title edited": (_json_edit(lambda m: _plot_of(m).__setitem__("title", "FAKE")),
                            "table heads"),
    "a baseline edited": (_json_edit(_edit_baseline), "table heads"),
    "a CSV deleted": (lambda out, spec: (out / "heads.csv").unlink(), "heads.csv"),
    "a CSV added": (lambda out, spec: (out / "extra.csv").write_text("a\n1\n"), "extra.csv"),
    "an empty CSV": (lambda out, spec: (out / "mlps.csv").write_text(""), "mlps.csv"),
    "a table's columns edited": (
        _json_edit(lambda m: m["tables"]["heads"].__setitem__("columns", ["x"])),
        "table heads"),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_verify_detects_each_tampering(name, recorded, tmp_path, capsys):
    tamper, first = TAMPERINGS[name]
    out, spec = copy(recorded, tmp_path)
    tamper(out, spec)
    rc, text = verify(out, spec, capsys)
    assert rc == 1, text
    assert f"verification FAILED: first difference: {first}\n" in text + "\n", text
    assert f"FAIL {first}:" in text


def _truncate(out: Path, spec: Path) -> None:
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text[: len(text) // 2])


MALFORMED = {
    "malformed JSON": (_truncate, "is not valid JSON"),
    "no spec_text": (_json_edit(lambda m: m.pop("spec_text")), "`spec_text` is missing"),
    "options null": (_set("options", None), "`options` is not valid"),
    "a list, not an object": (
        lambda out, spec: (out / "manifest.json").write_text("[]"), "not a JSON object"),
    "tables not an object": (_set("tables", "x"), "`tables` is not valid"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_manifest_is_a_user_error(name, recorded, tmp_path, capsys):
    tamper, message = MALFORMED[name]
    out, spec = copy(recorded, tmp_path)
    tamper(out, spec)
    rc, text = verify(out, spec, capsys)
    assert rc == 1 and "error[E604]" in text and message in text, text
    assert "internal error" not in text


def test_a_flipped_bit_in_the_weights_header_is_a_located_error(tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    spec = write_spec(tmp_path / "spec", SPEC.replace(str(MODEL), str(model)))
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--quiet", "--no-plots"]) == 0
    weights = bytearray((model / "model.safetensors").read_bytes())
    weights[20] ^= 0x04  # inside the JSON header: a field name no longer parses
    (model / "model.safetensors").write_bytes(bytes(weights))
    capsys.readouterr()
    rc, text = verify(out, spec.parent, capsys)
    assert rc == 1 and "error[E411]" in text and "internal error" not in text, text


def test_a_corrupt_recorded_safetensors_output_fails_without_a_crash(tmp_path):
    import torch
    from safetensors.torch import save_file

    from patchc.verify import _compare_file

    for name in ("old", "new"):
        save_file({"x": torch.arange(4.0)}, str(tmp_path / f"{name}.safetensors"))
    ok, _ = _compare_file(tmp_path / "old.safetensors", tmp_path / "new.safetensors", 0, 0)
    assert ok
    data = bytearray((tmp_path / "old.safetensors").read_bytes())
    data[12] ^= 0x01
    (tmp_path / "old.safetensors").write_bytes(bytes(data))
    ok, detail = _compare_file(tmp_path / "old.safetensors", tmp_path / "new.safetensors", 0, 0)
    assert not ok and "cannot be read" in detail


def test_a_result_holding_inf_and_nan_verifies(tmp_path, capsys):
    # ld / 0: -inf or +inf where ld != 0 and NaN where it is 0, in the same cells each run
    spec = write_spec(tmp_path / "spec", SPEC.replace(
        "metric ld = logit(d.answer) - logit(d.distractor)",
        "metric ld = (logit(d.answer) - logit(d.distractor)) / 0"))
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--quiet", "--no-plots"]) == 0
    mlps = pd.read_csv(out / "mlps.csv")
    assert mlps["ld"].map(math.isinf).any()
    capsys.readouterr()
    rc, text = verify(out, spec.parent, capsys)
    assert rc == 0, text


def test_a_table_of_text_only_verifies(tmp_path, capsys):
    # `text(N)` alone: its table has no columns (the strings are in NAME.examples.csv)
    spec = write_spec(tmp_path / "spec", SPEC + "measure says = text(2) in clean as said\n")
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--no-plots"]) == 0
    assert "== said: text per example" in capsys.readouterr().out
    assert "says" in pd.read_csv(out / "said.examples.csv").columns
    rc, text = verify(out, spec.parent, capsys)
    assert rc == 0, text


def test_compare_frames_equates_inf_with_inf_and_nan_with_nan_only():
    inf, nan = math.inf, math.nan
    old = pd.DataFrame({"k": [0, 1, 2], "v": [inf, nan, 1.0]})
    assert compare_frames(old, old.copy(), 0, 0)[0]
    for other in ([-inf, nan, 1.0], [inf, 0.0, 1.0], [inf, nan, nan], [inf, nan, 1.0 + 1e-12]):
        ok, detail = compare_frames(old, pd.DataFrame({"k": [0, 1, 2], "v": other}), 0, 0)
        assert not ok and "differ" in detail
    assert compare_frames(old, pd.DataFrame({"k": [0, 1, 2], "v": [inf, nan, 1.1]}), 0.2, 0)[0]


def test_a_word_where_a_number_was_is_not_called_a_zero_difference():
    old = pd.DataFrame({"k": [0, 1], "v": [0.5, 1.0]})
    ok, detail = compare_frames(old, pd.DataFrame({"k": [0, 1], "v": [0.5, "x"]}), 0, 0)
    assert not ok and "1 of them text or not a number" in detail and "max |diff|" not in detail


def test_plot_refuses_table_names_that_leave_the_folder(recorded, tmp_path, capsys):
    out, spec = copy(recorded, tmp_path)
    victim = tmp_path / "victim.csv"
    victim.write_text("layer,ld\n0,1\n")
    for name in ("../victim", str(victim.with_suffix(""))):
        m = json.loads((out / "manifest.json").read_text())
        m["tables"] = {name: {"keys": ["layer"]}}
        (out / "manifest.json").write_text(json.dumps(m))
        assert main(["plot", str(out)]) == 1
        assert "error[E608]" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png")) and victim.read_text() == "layer,ld\n0,1\n"


def test_every_file_the_spec_reads_is_hashed(tmp_path):
    from patchc.compiler.parse import parse
    from patchc.manifest import hash_inputs, spec_files

    text = ('model "m"\nset device_map = "split.json"\ndata d = "d.jsonl"\n'
            'vector v = load("dirs.safetensors", key="love")\n'
            'vector w = 0.5 * v + sae("sae.safetensors", feature=3)\n'
            "run r = d.clean with steer L0.resid_post by load(\"more.safetensors\", key=\"x\")\n")
    spec = parse(text, "s.patch", str(tmp_path))
    files = spec_files(spec, device_map="/abs/cli_map.json")
    assert files == ["split.json", "d.jsonl", "dirs.safetensors", "sae.safetensors",
                     "more.safetensors", "/abs/cli_map.json"]
    (tmp_path / "d.jsonl").write_text("{}\n")
    hashes = hash_inputs(files, str(tmp_path))
    assert len(hashes["d.jsonl"]) == 64 and hashes["split.json"] == "missing"


def test_tokenizer_hash_is_memoized_and_follows_changes() -> None:
    """The memo gives the digest of hashing everything at once; adding a token, or changing
    the post-processor or a special token, gives a new one."""
    import hashlib
    import json

    import transformers as tf

    from patchc.manifest import _DIGESTS, tokenizer_hash

    def plain(tok) -> str:
        h = hashlib.sha256(tok.backend_tokenizer.to_str().encode("utf-8"))
        h.update(json.dumps(tok.special_tokens_map, sort_keys=True, default=str).encode())
        return h.hexdigest()

    tok = tf.AutoTokenizer.from_pretrained(ROOT / "examples" / "models" / "ioi-gpt2")
    first = tokenizer_hash(tok)
    assert tok in _DIGESTS  # the serialized form is written once, not per run
    assert first == plain(tok) == tokenizer_hash(tok)
    tok.pad_token = tok.eos_token or "<pad>"
    assert tokenizer_hash(tok) == plain(tok)
    tok.add_tokens(["zzzunseen"])
    assert tokenizer_hash(tok) == plain(tok) != first
    from tokenizers import processors

    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A $A", special_tokens=[])
    assert tokenizer_hash(tok) == plain(tok)


def test_a_spec_file_edited_after_the_run_is_noted(recorded, tmp_path, capsys):
    """The recorded spec_text is what verify reruns; it says when the file on disk parted
    from it (the result still verifies)."""
    out, spec = copy(recorded, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    spec_file = Path(manifest["spec_file"])
    edited = tmp_path / "edited.patch"
    edited.write_text(spec_file.read_text() + "# a later note\n")
    manifest["spec_file"] = str(edited)
    (out / "manifest.json").write_text(json.dumps(manifest))
    rc, text = verify(out, spec, capsys)
    assert rc == 0, text
    assert f"ok   spec file: {edited} has changed since the run" in text
