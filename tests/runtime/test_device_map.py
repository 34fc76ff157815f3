"""`set device_map`: every site and operation works when the layers live on different devices.

A tiny model of each family (GPT-2 with a tied unembedding, Llama with grouped-query
attention, NeoX with a parallel residual) is loaded twice from the same saved weights: plainly,
and with an explicit map that splits it in two: the embedding and the first half of the
layers on "cpu", the rest of the layers, the final norm and the unembedding on "disk" (a tied
unembedding stays with the embedding). On a CPU-only machine "cpu" and "disk" are the two
placements accelerate offers: a disk-offloaded module keeps its parameters on the meta device
between calls and accelerate's hooks load them for each forward (and move every input to the
module's execution device), so the second half is exactly the situation of a layer on another
device: a value read or written there must reach the hook that uses it, and weights patchc
reads outside a forward (W_O, the unembedding, norm weights: runtime/offload.py) must be
fetched. The tables of one spec covering every operation must be *equal* (bit for bit) on the
two models, and the manifest must pin the same weights and record the map.

Also the spec path end to end (a `.json` map next to the spec, the API's dict override, the
CLI's --device-map) and the errors: E353 (`check`: a missing or malformed map file), E414 (a
missing map file given as an override), E412 (a bad device in a dict override).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers as tf
from conftest import Fam, inline

import patchc
from patchc.cli import main
from patchc.compiler.errors import PatchcError
from patchc.runtime.compat import load_config

FAMILIES = ["gpt2", "llama", "neox"]
ROWS = [
    {"clean": "when Mary and John went to", "corrupt": "when Anna and Bob went to",
     "answer": "Mary", "distractor": "John", "p": 1},
    {"clean": "the cat sat on the mat", "corrupt": "the dog sat on the tree",
     "answer": "mat", "distractor": "tree", "p": 1},
    {"clean": "a bird was on the tree", "corrupt": "a fish was on the mat",
     "answer": "bird", "distractor": "fish", "p": 2},
]
SPEC = f"""
data d = {inline(ROWS)}
run clean = d.clean
run corrupt = d.corrupt
run noisy = d.clean with noise(embed @ d.p, std=3*std(embed), samples=2, seed=1)
run frozen = d.corrupt with freeze ln from clean, ablate L0.mlp.out
metric ld = logit(d.answer) - logit(d.distractor)
vector v = mean(clean.L1.resid_post @ last) - mean(corrupt.L1.resid_post @ last)

swap L*.H*.z from clean into corrupt measure ld normalized, kl(clean), loss as heads
swap L*.H*.z @ last from clean into corrupt measure ld, rank(d.answer) as heads_last
swap L*.resid_pre @ each from clean into corrupt measure ld normalized as resid
swap L*.mlp.out, L*.attn.out, L1.H*.v @ last, L2.H1.pattern @ last from clean into corrupt
    measure ld, prob(d.answer)
    as blocks
swap L1.mlp.post[3], L0.mlp.post[0:4], L$l.resid_post[v] @ last from clean into corrupt
    measure ld normalized
    as slices
swap L*.H{{0,2}}.z @ last from clean into frozen measure ld as on_frozen
ablate L*.mlp.out in corrupt measure ld normalized as abl_zero
ablate L*.H*.z in corrupt with mean(clean) measure ld normalized as abl_mean
ablate L*.attn.out in corrupt with resample(clean) measure ld as abl_resample
ablate L1.resid_post[v] @ last in clean measure ld normalized as abl_subspace
steer L*.resid_post @ last in corrupt by {{1, 3}} * v measure ld as steered
scale L*.H*.z in clean by {{0, 0.5}} measure ld normalized as scaled
backpatch L$j.resid_post -> L$i.resid_pre @ last in clean from corrupt where $j >= $i
    measure ld, generate(2) contains d.answer
    as backpatched
attribute L*.mlp.out, L*.H*.z from clean into corrupt using atp measure ld normalized as atp
attribute L*.mlp.out @ each from clean into corrupt using relp measure ld as relp
attribute L*.attn.out from clean into corrupt using ig(steps=3) measure ld as ig
dla L*.H*.out @ last, embed @ last, L*.attn.out @ last, L*.mlp.out @ last in clean
    measure ld
    as direct
trace L$l.resid_post @ each from clean into noisy measure prob(d.answer) as traced
compare atp, relp against swap on L*.mlp.out from clean into corrupt measure ld as cmp
"""
TABLES = ["heads", "heads_last", "resid", "blocks", "slices", "on_frozen", "abl_zero",
          "abl_mean", "abl_resample", "abl_subspace", "steered", "scaled", "backpatched",
          "atp", "relp", "ig", "direct", "traced", "cmp"]


def split_map(model: torch.nn.Module, first: str = "cpu", second: str = "disk") -> dict[str, str]:
    """Module name -> placement: what comes before the layer list and its first half on
    `first`, the rest on `second`; a tied unembedding goes with the embedding."""
    layers = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))
    dmap: dict[str, str] = {}

    def walk(prefix: str, module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if child is layers:
                for i in range(len(layers)):
                    dmap[f"{full}.{i}"] = first if i < (len(layers) + 1) // 2 else second
            elif any(m is layers for m in child.modules()):
                walk(full, child)
            else:  # before the layers: first; after them: second
                dmap[full] = first if all(v == first for v in dmap.values()) else second

    walk("", model)
    if model.config.tie_word_embeddings:
        names = {m: n for n, m in model.named_modules()}
        dmap[names[model.get_output_embeddings()]] = dmap[names[model.get_input_embeddings()]]
    return dmap


def load_mapped(path: str, dmap: dict[str, str], offload: Path) -> torch.nn.Module:
    # the config as patchc reads it (transformers before 5.9 misread NeoX's partial rotary
    # factor in a config saved by a newer release)
    return tf.AutoModelForCausalLM.from_pretrained(path, config=load_config(path), device_map=dmap,
                                                   offload_folder=str(offload)).eval()


def offloaded(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.device.type == "meta"}


def assert_same_tables(a: patchc.Results, b: patchc.Results) -> None:
    assert list(a) == list(b) == TABLES
    for name in TABLES:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)
        pd.testing.assert_frame_equal(a.per_example(name), b.per_example(name),
                                      check_exact=True, obj=f"{name} per example")
        numbers = a[name].select_dtypes("number")
        assert numbers.notna().to_numpy().any(), name  # equal because both ran, not NaN


@pytest.fixture(scope="module")
def split(any_family, tmp_path_factory: pytest.TempPathFactory):
    """family -> (Fam, its split map, the model loaded from its directory with that map)."""
    cache: dict[str, tuple[Fam, dict[str, str], torch.nn.Module]] = {}

    def get(name: str) -> tuple[Fam, dict[str, str], torch.nn.Module]:
        if name not in cache:
            fam = any_family(name)
            dmap = split_map(fam.model)
            offload = tmp_path_factory.mktemp(f"offload-{name}")
            cache[name] = fam, dmap, load_mapped(fam.path, dmap, offload)
        return cache[name]
    return get


@pytest.mark.parametrize("name", FAMILIES)
def test_the_map_really_splits_the_model(name: str, split) -> None:
    fam, dmap, mapped = split(name)
    assert mapped.hf_device_map == dmap and set(dmap.values()) == {"cpu", "disk"}
    on_disk = tuple(f"{m}." for m, place in dmap.items() if place == "disk")
    meta = offloaded(mapped)
    assert meta and all(n.startswith(on_disk) for n in meta)  # the disk half is offloaded
    assert meta == {n for n, _ in mapped.named_parameters() if n.startswith(on_disk)}
    layer_places = [place for m, place in dmap.items() if m.split(".")[-1].isdigit()]
    assert layer_places == ["cpu", "cpu", "disk"]  # the split runs through the layers


@pytest.mark.parametrize("naive", [False, True], ids=["optimized", "naive"])
@pytest.mark.parametrize("name", FAMILIES)
def test_every_operation_is_exact_on_a_split_model(name: str, naive: bool, split) -> None:
    fam, dmap, mapped = split(name)
    plain = fam.run(SPEC, naive=naive)
    moved = patchc.run(fam.spec(SPEC), model=mapped, tokenizer=fam.tok, naive=naive)
    assert_same_tables(plain, moved)
    assert plain["heads"]["ld"].nunique() > 1  # the sweep does something
    assert moved.manifest["weights_sha256"] == plain.manifest["weights_sha256"]
    assert moved.manifest["device_map"] == dmap and plain.manifest["device_map"] is None
    assert offloaded(mapped)  # patchc never moved the dispatched model (.to() would break it)


def write_spec(folder: Path, fam: Fam, options: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.patch"
    path.write_text(f'model "{fam.path}"\n{options}{SPEC}')
    return path


@pytest.mark.parametrize("name", FAMILIES)
def test_map_file_next_to_the_spec_and_dict_override(name: str, split, tmp_path: Path) -> None:
    """`patchc.run(path)` loads the model itself with the spec's map file (relative to the
    spec's folder); a dict override replaces it: here the mirrored split."""
    fam, dmap, _ = split(name)
    (tmp_path / "split.json").write_text(json.dumps(dmap))
    path = write_spec(tmp_path, fam, 'set device_map = "split.json"\n')
    plain = fam.run(SPEC)
    res = patchc.run(path)
    assert_same_tables(plain, res)
    assert res.manifest["device_map"] == dmap
    assert res.manifest["weights_sha256"] == plain.manifest["weights_sha256"]

    mirrored = split_map(fam.model, first="disk", second="cpu")
    res = patchc.run(path, device_map=mirrored)
    assert_same_tables(plain, res)
    assert res.manifest["device_map"] == mirrored
    assert res.manifest["weights_sha256"] == plain.manifest["weights_sha256"]


def test_cli_device_map_flag_writes_identical_tables(split, tmp_path: Path, capsys) -> None:
    fam, dmap, _ = split("llama")
    path = write_spec(tmp_path, fam)
    (tmp_path / "split.json").write_text(json.dumps(dmap))
    args = ["run", str(path), "--quiet", "--no-plots"]
    assert main(args + ["--out", str(tmp_path / "plain")]) == 0
    assert main(args + ["--device-map", str(tmp_path / "split.json"),
                        "--out", str(tmp_path / "mapped")]) == 0
    capsys.readouterr()
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text())
                 for d in ("plain", "mapped")]
    assert manifests[0]["device_map"] is None and manifests[1]["device_map"] == dmap
    assert manifests[0]["weights_sha256"] == manifests[1]["weights_sha256"]
    for table in TABLES:
        plain, mapped = (tmp_path / d / f"{table}.csv" for d in ("plain", "mapped"))
        assert plain.read_text() == mapped.read_text(), table


BAD_MAPS = [  # (map file text, or None for no file; a fragment of the message)
    (None, "not found"),
    ('{"model.layers.0": "gpu7"}', "'gpu7' is not a device"),
    ('{"model.layers.0": "cpu",', "is not JSON"),
    ("{}", "non-empty JSON object"),
    ('{"model.layers.0": -1}', "-1 is not a device"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_MAPS,
                         ids=["missing", "bad-device", "bad-json", "empty", "negative-gpu"])
def test_bad_map_file_is_a_check_error(text: str | None, fragment: str, split,
                                       tmp_path: Path, capsys) -> None:
    fam, _, _ = split("llama")
    if text is not None:
        (tmp_path / "split.json").write_text(text)
    path = write_spec(tmp_path, fam, 'set device_map = "split.json"\n')
    with pytest.raises(PatchcError) as info:
        patchc.compile(path)
    [err] = info.value.errors
    assert (err.code, err.span.line, err.span.col) == ("E353", 2, 1)
    assert fragment in err.message and "split.json" in err.message
    code = main(["check", str(path)])
    err_text = capsys.readouterr().err
    assert code == 1 and f"{path}:2:1: error[E353]" in err_text, err_text
    assert "Traceback" not in err_text


def test_bad_override_fails_at_load(split, tmp_path: Path) -> None:
    fam, _, _ = split("gpt2")
    path = write_spec(tmp_path, fam)
    with pytest.raises(PatchcError) as info:  # a spec's own file is checked, an override at load
        patchc.run(path, device_map="nope.json")
    assert info.value.code == "E414" and "nope.json" in info.value.message
    with pytest.raises(PatchcError) as info:  # a dict override is validated as an option
        patchc.run(path, device_map={"transformer.h.0": "gpu7"})
    assert info.value.code == "E412"
