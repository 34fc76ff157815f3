"""Reading one small file (config.json, tokenizer.json) of a hub model: from the local cache,
else from the hub, but only after a quick look that the hub can be reached at all, so that an
offline machine fails in about a second with "unreachable" instead of retrying for half a
minute and then saying "not found".
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from .errors import CheckError

REACH_TIMEOUT_S = 1.5  # connect to the hub's host; a working network answers in milliseconds


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _proxy() -> str | None:
    """Behind a proxy the hub is reached through it: the proxy is what must answer."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def reachable(url: str | None = None, timeout: float = REACH_TIMEOUT_S) -> bool:
    """Can a TCP connection to the hub's host (or the proxy to it) be opened within
    `timeout`? (A thread bounds the name lookup too, which has no timeout of its own.)"""
    parsed = urlparse(url or _proxy() or endpoint())
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def fetch(model_id: str, filename: str, revision: str | None = None) -> str:
    """The local path of `filename` of hub model `model_id`. Raises CheckError E213 saying
    whether the hub was unreachable, the id or file not found, or the download failed."""
    from huggingface_hub import hf_hub_download

    def from_cache() -> str | None:
        try:
            return hf_hub_download(model_id, filename, revision=revision, local_files_only=True)
        except Exception:  # not cached (or a malformed id): decided below
            return None

    local = from_cache()
    if local is not None:
        return local
    hint = "pass a local directory that holds config.json"
    if offline():
        raise CheckError("E213", f"model '{model_id}' is not a local directory and its hub id "
                         "could not be resolved offline (HF_HUB_OFFLINE is set and it is not "
                         "in the cache)", hint=hint)
    if not reachable():
        raise CheckError("E213", f"model '{model_id}' is not a local directory, is not in the "
                         f"hub cache, and the hub ({endpoint()}) is unreachable", hint=hint)
    try:
        return hf_hub_download(model_id, filename, revision=revision)
    except Exception as e:  # any hub failure is one user error
        kind = type(e).__name__
        found = "NotFound" in kind or "HFValidationError" in kind
        why = f"was not found on the hub ({kind})" if found else \
            f"could not be downloaded ({kind}: {str(e).splitlines()[0][:120] if str(e) else ''})"
        raise CheckError("E213", f"model '{model_id}' is not a local directory and its hub id "
                         f"{why}", hint=hint) from None
