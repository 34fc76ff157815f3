"""Every broken model folder is a located error at the `model` line (exit 1), never an
internal error; a hostile pickle is refused without running it."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import patchc  # noqa: E402
from patchc.compiler.errors import PatchcError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "models" / "tiny-gpt2"
SPEC = '''# a broken model
model "{model}"
run a = ["When Mary"]
metric m = logit(" John")
ablate L0.mlp.out in a  measure m
'''
PWNED = []


class _Evil:
    def __reduce__(self):
        return (PWNED.append, ("ran",))


def _config(d: Path, **changes) -> None:
    c = json.loads((d / "config.json").read_text())
    c.update(changes)
    (d / "config.json").write_text(json.dumps(c))


def _pickle(d: Path, obj) -> Path:
    (d / "model.safetensors").unlink()
    torch.save(obj, d / "pytorch_model.bin")
    return d / "pytorch_model.bin"


def _weights() -> dict:
    from safetensors.torch import load_file

    return load_file(str(TINY / "model.safetensors"))


def garbage_header(d: Path) -> None:
    b = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 200) + b"{garbage" + b[16:])


def truncated_safetensors(d: Path) -> None:
    b = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(b[:len(b) // 2])


def truncated_pickle(d: Path) -> None:
    p = _pickle(d, _weights())
    p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])


def hostile_pickle(d: Path) -> None:
    _pickle(d, {"x": _Evil()})


def wider_config(d: Path) -> None:
    _config(d, n_embd=96)


def smaller_vocab_config(d: Path) -> None:
    _config(d, vocab_size=50)


def corrupt_tokenizer(d: Path) -> None:
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')


def missing_weight(d: Path) -> None:
    from safetensors.torch import save_file

    w = _weights()
    del w[next(k for k in w if k.endswith("mlp.c_fc.weight"))]
    save_file(w, str(d / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("breaks,code,fragment", [
    (lambda d: _config(d, n_head=0), "E214", "'n_head' must be a whole number"),
    (lambda d: _config(d, n_layer="four"), "E214", "'n_layer' must be a whole number"),
    (lambda d: _config(d, n_layer=0), "E214", "got 0"),
    (lambda d: _config(d, n_embd=True), "E214", "got true"),
    (garbage_header, "E411", "safetensors file is corrupt"),
    (truncated_safetensors, "E411", "safetensors file is corrupt"),
    (truncated_pickle, "E411", "truncated or corrupt"),
    (hostile_pickle, "E411", "never runs code"),
    (wider_config, "E411", "other shapes than its config.json"),
    (smaller_vocab_config, "E215", "vocab_size 50"),
    (corrupt_tokenizer, "E215", "tokenizer.json cannot be read"),
    (missing_weight, "E411", "lack 1 tensor(s)"),
], ids=lambda x: getattr(x, "__name__", None) if callable(x) else None)
def test_broken_model_folder_is_located(tmp_path: Path, breaks, code: str, fragment: str):
    d = tmp_path / "model"
    shutil.copytree(TINY, d)
    breaks(d)
    spec = tmp_path / "s.patch"
    spec.write_text(SPEC.format(model="model"))
    with pytest.raises(PatchcError) as info:
        patchc.run(str(spec))
    e = info.value
    assert e.code == code and fragment in e.message, e.render()
    assert (e.line, e.col) == (2, 7), e.render()  # the model's path
    assert PWNED == []


def test_tokenizer_larger_than_the_embedding_at_load(tmp_path: Path):
    """What check cannot see (no tokenizer.json at check time) the loader still refuses."""
    from transformers import AutoModelForCausalLM

    from patchc.compiler.checked import Options
    from patchc.runtime.loading import load

    m = AutoModelForCausalLM.from_pretrained(TINY)
    m.resize_token_embeddings(50)
    m.save_pretrained(tmp_path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY / f, tmp_path / f)
    with pytest.raises(PatchcError) as info:
        load(str(tmp_path), None, Options())
    assert info.value.code == "E419" and "embeds only 50" in info.value.message


def test_empty_tokenizer_at_load(tmp_path: Path):
    """A folder whose tokenizer files are gone loads an empty tokenizer in transformers 5
    (check says E472 first; the loader refuses it too, for callers that skip check)."""
    from transformers import AutoModelForCausalLM

    from patchc.compiler.checked import Options
    from patchc.runtime.loading import load

    AutoModelForCausalLM.from_pretrained(TINY).save_pretrained(tmp_path)
    with pytest.raises(PatchcError) as info:
        load(str(tmp_path), None, Options())
    # (transformers 4 refuses to build the tokenizer at all: E419 "could not load")
    msg = info.value.message
    assert info.value.code == "E419" and ("empty" in msg or "could not load" in msg), msg
