"""Loading a model and tokenizer for a spec, and fingerprinting the weights.

A spec never executes code: `trust_remote_code` comes only from the caller (CLI flag or API
argument). Weights load through transformers, which reads safetensors (or a pickle with
`weights_only=True`). A hub id works when the network (or the HF cache) has it.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from patchc.compiler.checked import Options
from patchc.compiler.errors import RuntimeInterventionError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object  # a transformers PreTrainedTokenizer(Fast)
    model_id: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeInterventionError("E410", f"device {name} was asked for, but no CUDA "
                                       "device is available", hint="use cpu (or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RuntimeInterventionError("E410", f"device {name} was asked for, but this "
                                       f"machine has {torch.cuda.device_count()} CUDA "
                                       "device(s)", hint="use cuda:0 (or auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeInterventionError("E410", f"device {name} was asked for, but this torch "
                                       "has no mps (Apple GPU) device available",
                                       hint="use cpu (or auto)")
    return device


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the model's inputs go: the device its embedding computes on (with a device map,
    accelerate's hooks move every later value to the device of the module that uses it)."""
    embed = model.get_input_embeddings()
    hook = getattr(embed, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    return embed.weight.device


def is_dispatched(model: torch.nn.Module) -> bool:
    """Placed by a device map (accelerate's hooks): `.to(device)` would break it."""
    return getattr(model, "hf_device_map", None) is not None


def _device_map(value: str | dict, base_dir: str) -> str | dict:
    from patchc.compiler import device_map

    try:
        return device_map.resolve(value, base_dir)
    except ValueError as e:  # an API/CLI override (a spec's own map file was checked)
        raise RuntimeInterventionError("E414", str(e)) from None


def _offload_folder() -> str:
    """Where accelerate may offload weights to disk (a map's "disk", or `auto` for a model
    larger than GPU and CPU memory); removed when the process ends."""
    folder = tempfile.mkdtemp(prefix="patchc-offload-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def model_location(model_id: str, base_dir: str) -> str:
    """A local directory (relative to the spec) if there is one, else the hub id as given."""
    local = Path(base_dir) / model_id
    if not Path(model_id).is_absolute() and local.is_dir():
        return str(local)
    return model_id


def load(model_id: str, revision: str | None, options: Options, base_dir: str = ".",
         trust_remote_code: bool = False) -> LoadedModel:
    """Load the causal LM and its tokenizer in eval mode on the spec's device and dtype."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from .compat import DTYPE_ARG, load_config, tie_offloaded

    hf_logging.disable_progress_bar()  # patchc shows its own progress; keep output clean
    where = model_location(model_id, base_dir)
    device = resolve_device(options.device)
    dtype = DTYPES[options.dtype]
    kwargs: dict = {"revision": revision, "trust_remote_code": trust_remote_code}
    placement: dict = {}
    if options.device_map:
        placement = {"device_map": _device_map(options.device_map, base_dir),
                     "offload_folder": _offload_folder()}
    try:
        tokenizer = load_tokenizer(where, **kwargs)
    except Exception as e:  # whatever a broken tokenizer folder raises: the folder's fault
        raise RuntimeInterventionError(
            "E419", f"could not load the tokenizer of model {model_id!r}: {_why(e)}",
            hint="check tokenizer.json / tokenizer_config.json of the model") from None
    try:
        with _quiet_transformers():  # (its load report: _check_loaded says what matters)
            model, info = AutoModelForCausalLM.from_pretrained(
                where, config=load_config(where, **kwargs), **{DTYPE_ARG: dtype},
                output_loading_info=True, **kwargs, **placement)
    except OSError as e:
        if "Unable to load weights" in str(e) and e.__context__ is not None:
            # transformers 4.x wraps what went wrong in a weights file in an OSError (after
            # other errors of its own): the first error of the chain says what it was
            first: BaseException = e
            while first.__context__ is not None:
                first = first.__context__
            raise RuntimeInterventionError(
                "E411", f"could not load the weights of model {model_id!r}: "
                f"{_why(first)}") from None
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        local = os.path.isdir(where)
        hint = ("the folder needs the weights beside config.json (model.safetensors, or "
                "pytorch_model.bin): save them with model.save_pretrained(FOLDER)" if local
                else "pass a local directory" if offline else None)
        raise RuntimeInterventionError(
            "E411", f"could not load model {model_id!r}: {e}".splitlines()[0],
            hint=hint) from None
    except Exception as e:  # a corrupt, truncated or hostile weights file, or wrong shapes
        raise RuntimeInterventionError(
            "E411", f"could not load the weights of model {model_id!r}: {_why(e)}") from None
    _check_loaded(model_id, model, tokenizer, info)
    if options.device_map:
        tie_offloaded(model)
        device = input_device(model)
    else:
        model = model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        # Padding is masked out, so any id works; the EOS id is the conventional choice.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return LoadedModel(model, tokenizer, model_id, revision, device, dtype)


# tokenizer_config.json classes that only say "the tokenizer.json beside me": transformers 5
# then picks a class from the *model's* type (Qwen2Tokenizer for qwen2), which rebuilds a
# different tokenizer. The tokenizer must follow its own files, never the model_type.
_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(where: str, **kwargs):
    """The tokenizer of a model directory or hub id, as its own files describe it."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    try:
        declared = get_tokenizer_config(where, revision=kwargs.get("revision")).get(
            "tokenizer_class")
    except Exception:  # no tokenizer_config.json: let AutoTokenizer decide
        declared = None
    if declared in _GENERIC_TOKENIZERS:
        return PreTrainedTokenizerFast.from_pretrained(where, **kwargs)
    return AutoTokenizer.from_pretrained(where, **kwargs)


def _why(e: BaseException) -> str:
    """What went wrong in a model folder, in one line."""
    kind = type(e).__name__
    text = (str(e).strip().splitlines() or [""])[0]
    if kind == "UnpicklingError":
        return ("its pickle holds more than tensors; patchc loads pickled weights only with "
                "torch.load(weights_only=True) and never runs code from one (convert it to "
                "safetensors)")
    if "ignore_mismatched_sizes" in text or "size mismatch" in str(e):
        return "its weights have other shapes than its config.json says"
    if kind == "SafetensorError":
        return f"its safetensors file is corrupt ({text[:160]})"
    if "PytorchStreamReader" in text or kind == "EOFError":
        return "its pickled weights file is truncated or corrupt"
    return f"{kind}: {text[:200]}"


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' own warnings off (errors still shown) for the duration."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def _check_loaded(model_id: str, model: torch.nn.Module, tokenizer, info: dict) -> None:
    """A checkpoint that lacks weights would run with random ones; an empty tokenizer would
    tokenize every prompt to nothing, and one with ids past the embedding would crash in it:
    all the model folder's mistakes (E411, E419)."""
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    if missing:
        other = (f"; the file holds {len(unexpected)} tensor(s) this model does not have "
                 f"({', '.join(unexpected[:2])}, ...): weights of another architecture?"
                 if unexpected else "")
        raise RuntimeInterventionError(
            "E411", f"the weights of model {model_id!r} lack {len(missing)} tensor(s) "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); they would be "
            f"random{other}")
    if len(tokenizer) <= 1:  # transformers builds an empty one from a folder without files
        raise RuntimeInterventionError(
            "E419", f"the tokenizer of model {model_id!r} is empty ({len(tokenizer)} "
            "token(s)): every prompt would tokenize to nothing",
            hint="save the tokenizer beside the weights (`tokenizer.save_pretrained(FOLDER)`)")
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise RuntimeInterventionError(
            "E419", f"the tokenizer of model {model_id!r} has {len(tokenizer)} tokens but the "
            f"model embeds only {rows}", hint="use the tokenizer saved with these weights")


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, in name order: pins the exact weights a table
    was computed with (the manifest records it; `patchc verify` compares it)."""
    h = hashlib.sha256()
    for name, tensor in sorted(_state_dict(model).items()):
        h.update(name.encode())
        t = tensor.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights; for a model with modules offloaded by accelerate (their
    parameters sit on the meta device between calls), read back one module at a time."""
    state = model.state_dict()
    if any(t.device.type == "meta" for t in state.values()):
        from accelerate.utils.modeling import get_state_dict_offloaded_model

        offloaded = get_state_dict_offloaded_model(model)
        state = {k: offloaded.get(k, t) for k, t in state.items()}
    return state
