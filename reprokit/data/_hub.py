"""Loading from the Hugging Face Hub without hanging when there is no network.

Without a reachable Hub endpoint (or with ``HF_HUB_OFFLINE=1``) datasets is put in offline mode for
the call, so only a copy already in the local Hugging Face cache can load; otherwise its download
retries would take tens of seconds before failing.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

_PROBE_TIMEOUT_S = 3.0


def load_hub_dataset(name: str, config: str | None = None, split: str | None = None) -> tuple[Any, str]:
    """``(dataset, "")`` or ``(None, why not)``; any failure (network, auth, missing repo) counts as unreachable."""
    import datasets
    import huggingface_hub.constants as hub_constants

    offline = _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE") or bool(hub_constants.HF_HUB_OFFLINE)
    if not offline and not _hub_reachable():
        offline = True
    try:
        with _offline_mode(offline):
            return datasets.load_dataset(name, config, split=split), ""
    except Exception as err:
        first_line = str(err).splitlines()[0] if str(err) else ""
        return None, f"{'offline, cache only; ' if offline else ''}{type(err).__name__}: {first_line}"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_reachable() -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


@contextmanager
def _offline_mode(offline: bool):
    """Offline mode for one call: both libraries read these flags at call time, not only at import."""
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    if offline:
        datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
