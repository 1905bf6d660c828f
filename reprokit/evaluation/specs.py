"""Model specs: load a model from one string, ready for evaluation.

    tiny, tiny:llama                          a random tiny model built in-process (tests, CPU smoke runs)
    Qwen/Qwen2.5-Math-1.5B                    a Hugging Face Hub id
    /models/qwen-math, runs/world/base        a local model folder (config.json, weights, tokenizer)
    /models/gemma-3-270m-q4_k_m.gguf          a GGUF file (converted once into a cached model folder)
    world, gemma-3-270m                       a model name of reprokit.registry (the CPU world's base, Gemma-3-270M)
    runs/sft/adapter                          a peft adapter folder (adapter_config.json), loaded on its base
    runs/x/checkpoints/step-500.ckpt          a training checkpoint (LoRA tensors); ".ckpt" may be left out
    runs/x                                    a run folder: its checkpoints/last.ckpt

A checkpoint holds only the adapter (or every weight, for a run with ``finetune: full``): the base comes from the
``model`` section of the run's ``config.yaml`` (two folders above the checkpoint) and is loaded with
:func:`reprokit.policy.load_policy`.
"""

from __future__ import annotations

import gc
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from reprokit import registry
from reprokit.policy import (
    ModelConfig,
    ModelConfigError,
    ModelLoadError,
    configure_padding,
    load_base_model,
    load_policy,
    load_tokenizer,
    load_trainable_state_dict,
    resolve_device,
)
from reprokit.tiny import is_tiny

__all__ = [
    "QUANTIZATION_CHOICES",
    "ModelSource",
    "ModelSpecError",
    "free_memory",
    "load_model_spec",
    "model_device",
    "parse_models",
    "resolve_model_spec",
]

QUANTIZATION_CHOICES = ("auto", "none", "nf4")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelSpecError(ValueError):
    """A model spec that names nothing loadable; the message names the spec, what was tried and the fix."""


def parse_models(items: Sequence[str]) -> dict[str, str]:
    """``["base=Qwen/Qwen2.5-Math-1.5B", "rl=runs/x/checkpoints/step-500"]`` -> ``{"base": ..., "rl": ...}``.

    Order is kept (the first model is the reference of the overlap and perplexity analyses unless the
    recipe is told otherwise). A bare spec without ``name=`` is named after its last path part.

    Raises:
        ModelSpecError: an empty list, an empty name or spec, a name with characters other than letters,
            digits and ``_.+-``, or a name given twice.
    """
    if isinstance(items, str):
        items = [items]
    if not items:
        raise ModelSpecError("no models given: pass --models NAME=SPEC [NAME=SPEC ...], e.g. --models base=tiny")
    models: dict[str, str] = {}
    for item in items:
        if not isinstance(item, str):
            raise ModelSpecError(f"model entry {item!r} is not a string; write NAME=SPEC, e.g. rl=runs/x")
        name, sep, spec = item.partition("=")
        if not sep:
            spec = item
            name = Path(item.rstrip("/")).name.removesuffix(".ckpt") or item
        name, spec = name.strip(), spec.strip()
        if not spec:
            raise ModelSpecError(f"model entry {item!r} has no spec after '='; write NAME=SPEC, e.g. rl=runs/x")
        if not _NAME.match(name):
            raise ModelSpecError(
                f"model entry {item!r}: the name {name!r} must start with a letter or digit and hold only letters, "
                "digits and _.+- (it names rows of the CSV and lines of the plots); write NAME=SPEC"
            )
        if name in models:
            raise ModelSpecError(
                f"model name {name!r} is given twice ({models[name]!r} and {spec!r}); give each model its own name"
            )
        models[name] = spec
    return models


@dataclass(frozen=True)
class ModelSource:
    """What a spec resolved to: ``kind`` in tiny / local / adapter / checkpoint / hub, and the path or id."""

    kind: str
    location: str


def resolve_model_spec(spec: str) -> ModelSource:
    """Decide what ``spec`` names without loading anything (see the module docstring for the forms).

    Raises:
        ModelSpecError: nothing matches; the message lists every place that was tried.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"model spec {spec!r} is empty: give a Hub id, a model folder, a checkpoint or 'tiny'")
    spec = spec.strip()
    if is_tiny(spec):
        return ModelSource("tiny", spec)
    if registry.lookup("model", spec) and not Path(spec).exists():
        return ModelSource("local", spec)  # a registered name (the CPU world's base): its folder is found when loading
    path = Path(spec).expanduser()
    tried: list[str] = []
    if path.is_file():
        if path.suffix == ".ckpt":
            return ModelSource("checkpoint", str(path))
        if path.suffix.lower() == ".gguf":
            return ModelSource("local", str(path))  # converted into a model folder when loading
        raise ModelSpecError(
            f"model spec {spec!r} is a file but not a training checkpoint (*.ckpt); pass a checkpoint, a model "
            "folder (config.json, weights, tokenizer), a peft adapter folder or a run folder"
        )
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return ModelSource("adapter", str(path))
        if (path / "config.json").is_file():
            return ModelSource("local", str(path))
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return ModelSource("checkpoint", str(candidate))
        raise ModelSpecError(
            f"model spec {spec!r}: the folder {path} holds no model: tried {path / 'adapter_config.json'} "
            f"(peft adapter), {path / 'config.json'} (model folder), {path / 'checkpoints' / 'last.ckpt'} "
            f"(run folder) and {path / 'last.ckpt'}. Point at one of these."
        )
    tried.append(f"{path} (no such file or folder)")
    with_suffix = path.with_name(path.name + ".ckpt")
    if with_suffix.is_file():
        return ModelSource("checkpoint", str(with_suffix))
    tried.append(f"{with_suffix} (no such checkpoint)")
    if _HUB_ID.match(spec) and ".." not in spec:
        return ModelSource("hub", spec)
    raise ModelSpecError(
        f"model spec {spec!r} names nothing loadable: tried {'; '.join(tried)}; and it is not a Hub id "
        "(owner/name). Give a Hub id, an existing model, adapter or run folder, a checkpoint path, or 'tiny'."
    )


def load_model_spec(
    spec: str,
    *,
    quantization: str = "auto",
    device: torch.device | str | int | None = None,
    compute_dtype: str = "auto",
):
    """Load the model a spec names, ready for evaluation (eval mode, no gradients, left padding).

    Args:
        spec: a Hub id, a local model folder (a CPU-world base, a ``save_tiny`` folder), a peft adapter folder
            (loaded on top of its ``base_model_name_or_path``), a training checkpoint ``.../step-500.ckpt``
            (with or without ``.ckpt``), a run folder (its ``checkpoints/last.ckpt``), ``tiny`` / ``tiny:llama``, or
            ``world`` (the CPU world's base model).
        quantization: ``nf4`` (4-bit base through bitsandbytes), ``none`` (full precision), or ``auto``: a
            checkpoint's base as it was trained (its config's ``model.quantization``), anything else ``none``.
        device: where to load; None = the current CUDA device when there is one, else the CPU.
        compute_dtype: ``auto`` (bfloat16 on a capable GPU, else float32), ``bfloat16``, ``float16``, ``float32``.

    Returns:
        ``(model, tokenizer)``; the tokenizer pads on the left and the model's ``generation_config`` lists every
        end-of-response id.

    Raises:
        ModelSpecError: the spec names nothing loadable, a checkpoint has no readable config.yaml beside its
            run, or its tensors do not fit the base; the message names the spec and what was tried.
    """
    if quantization not in QUANTIZATION_CHOICES:
        raise ModelSpecError(
            f"quantization={quantization!r} for model spec {spec!r}: use one of {', '.join(QUANTIZATION_CHOICES)}"
        )
    source = resolve_model_spec(spec)
    device = resolve_device(device)
    try:
        if source.kind == "checkpoint":
            model, tokenizer = _load_checkpoint(spec, Path(source.location), quantization, device, compute_dtype)
        elif source.kind == "adapter":
            model, tokenizer = _load_adapter(spec, Path(source.location), quantization, device, compute_dtype)
        else:
            model, tokenizer = _load_plain(source, quantization, device, compute_dtype)
    except (ModelLoadError, ModelConfigError) as err:
        raise ModelSpecError(f"model spec {spec!r} ({source.kind} {source.location}): {err}") from err
    return _ready_for_eval(model, tokenizer)


def _plain_config(name_or_path: str, quantization: str, compute_dtype: str) -> ModelConfig:
    return ModelConfig(
        name_or_path=name_or_path,
        quantization="none" if quantization == "auto" else quantization,
        compute_dtype=compute_dtype,
        gradient_checkpointing=False,
    )


def _load_plain(source: ModelSource, quantization: str, device: torch.device, compute_dtype: str):
    """A model without adapters: tiny, a local folder, a registered name or a Hub id."""
    return load_base_model(_plain_config(source.location, quantization, compute_dtype), device)


def _load_adapter(spec: str, folder: Path, quantization: str, device: torch.device, compute_dtype: str):
    """A peft adapter folder on top of the base its adapter_config.json names."""
    from peft import PeftModel

    try:
        base_name = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise ModelSpecError(f"model spec {spec!r}: cannot read {folder / 'adapter_config.json'} ({err})") from err
    if not base_name:
        raise ModelSpecError(
            f"model spec {spec!r}: {folder / 'adapter_config.json'} names no base_model_name_or_path; "
            "set it to the base model's Hub id or folder"
        )
    base_source = resolve_model_spec(base_name)
    if base_source.kind not in ("local", "hub", "tiny"):
        raise ModelSpecError(
            f"model spec {spec!r}: the adapter's base {base_name!r} is a {base_source.kind}, not a model; "
            "base_model_name_or_path must name a model folder or Hub id"
        )
    model, tokenizer = _load_plain(base_source, quantization, device, compute_dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(str(folder))
    return model, tokenizer


def _load_checkpoint(spec: str, ckpt: Path, quantization: str, device: torch.device, compute_dtype: str):
    """A Lightning checkpoint of a training recipe: the run's base (config.yaml) plus the saved LoRA tensors."""
    import yaml

    run_dir = ckpt.parent.parent
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ModelSpecError(
            f"model spec {spec!r}: checkpoint {ckpt} has no {config_path} (the run's saved config, two folders above "
            "the checkpoint, whose `model` section names the base). Keep checkpoints inside their run folder "
            "(<run>/checkpoints/step-N.ckpt)."
        )
    try:
        saved = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ModelSpecError(f"model spec {spec!r}: cannot parse {config_path} ({err})") from err
    section = saved.get("model") if isinstance(saved, Mapping) else None
    if not isinstance(section, Mapping) or "name_or_path" not in section:
        raise ModelSpecError(
            f"model spec {spec!r}: {config_path} has no `model` section with name_or_path; it must be the config.yaml "
            "a training recipe saved"
        )
    if registry.lookup("model", str(section["name_or_path"])):
        _check_registered_sections(spec, config_path, saved)
    known = {f.name for f in fields(ModelConfig)}
    options = {k: v for k, v in section.items() if k in known}
    if quantization != "auto":
        options["quantization"] = quantization
    if compute_dtype != "auto":
        options["compute_dtype"] = compute_dtype
    options["gradient_checkpointing"] = False
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or foreign file: say which one
        raise ModelSpecError(
            f"model spec {spec!r}: cannot read checkpoint {ckpt} ({type(err).__name__}: {err})"
        ) from err
    tensors = state.get("state_dict") if isinstance(state, Mapping) else None
    if not isinstance(tensors, Mapping) or not tensors:
        raise ModelSpecError(f"model spec {spec!r}: checkpoint {ckpt} has no state_dict of adapter tensors")
    adapter = {k.removeprefix("model."): v for k, v in tensors.items()}
    # A run that trained every weight (train.finetune or train.finetune full) saved every weight, in full precision.
    train = saved.get("train")
    finetune = train.get("finetune", "lora") if isinstance(train, Mapping) else "lora"
    if finetune == "full":
        options["quantization"] = "none"
    model, tokenizer = load_policy(ModelConfig(**options), device=device, finetune=finetune)
    try:
        load_trainable_state_dict(model, adapter)
    except (KeyError, ValueError) as err:
        raise ModelSpecError(
            f"model spec {spec!r}: checkpoint {ckpt} does not fit the base of {config_path} "
            f"({section.get('name_or_path')!r}): {err}"
        ) from err
    return model, tokenizer


def _check_registered_sections(spec: str, config_path: Path, saved: Mapping) -> None:
    """A base named through the registry (``world``) is chosen by registered config sections (``--world.*``): the
    checkpoint's adapter only fits the base its run was trained with, so this command's sections must match."""
    for name in registry.names("section"):
        if not isinstance(saved.get(name), Mapping):
            continue
        cls = registry.resolve("section", name)
        try:
            want = cls.from_dict(dict(saved[name])) if hasattr(cls, "from_dict") else cls(**saved[name])
        except (TypeError, ValueError) as err:
            raise ModelSpecError(f"model spec {spec!r}: the `{name}` section of {config_path} is not valid ({err})") from err
        have = registry.settings(name) or cls()
        if want != have:
            flags = " ".join(
                f"--{name}.{f.name} {getattr(want, f.name)!r}" for f in fields(want) if getattr(want, f.name) != getattr(have, f.name)
            )
            raise ModelSpecError(
                f"model spec {spec!r}: its run was trained with other `{name}` settings ({config_path}) than this "
                f"command's, so the base would not be the one its adapter was trained on; add {flags}"
            )


def _ready_for_eval(model, tokenizer):
    configure_padding(tokenizer, model)
    for param in model.parameters():
        param.requires_grad_(False)
    model.eval()
    return model, tokenizer


def free_memory() -> None:
    """Return a dropped model's memory: call after ``del model`` (the last reference)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_device(model) -> torch.device:
    return next(model.parameters()).device


