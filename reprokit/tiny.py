"""Tiny models built in-process, no download: character tokenizers and random models of real architectures, the
model name ``tiny`` every recipe accepts (tests, smoke runs, a new domain's plumbing before GPU hours), and the
published configs of the models the kit targets (for benchmarks that build them with random weights).

``ModelConfig(name_or_path="tiny")`` (or ``tiny:llama``) loads :func:`build_tiny_model` through the same code as
a real model, so tests need no network; :func:`build_char_tokenizer` is also the CPU world's tokenizer.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

__all__ = [
    "TINY_ARCHS",
    "TINY_CHAT_TEMPLATE",
    "TINY_SPECIAL_TOKENS",
    "build_char_tokenizer",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "is_tiny",
    "real_architecture_config",
    "save_tiny",
    "tiny_arch",
]

TINY_ARCHS = ("qwen2", "llama")
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_UNK_TOKEN = "<unk>"
# Qwen2.5-Math's ChatML template: with no system message it inserts the Qwen2.5-Math system prompt.
TINY_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nPlease reason step by step, "
    "and put your final answer within \\\\boxed{}.<|im_end|>\\n' }}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def is_tiny(name: str) -> bool:
    """Whether a model name asks for a tiny random model (``tiny``, ``tiny:<arch>``)."""
    return name == "tiny" or name.startswith("tiny:")


def tiny_arch(name: str) -> str:
    """The architecture of a tiny model name; ValueError naming the choices for an unknown one."""
    arch = name.partition(":")[2] or "qwen2"
    if arch not in TINY_ARCHS:
        raise ValueError(
            f"ModelConfig.name_or_path={name!r}: unknown tiny architecture {arch!r}; use one of "
            + ", ".join(f"'tiny:{a}'" for a in TINY_ARCHS)
        )
    return arch


def build_char_tokenizer(
    tokens: list[str],
    *,
    specials: tuple[str, ...] = TINY_SPECIAL_TOKENS,
    unk_token: str | None = TINY_UNK_TOKEN,
    chat_template: str | None = None,
    model_max_length: int | None = None,
):
    """A character-level ``PreTrainedTokenizerFast``: one id per special token, then the unknown token (if any),
    then one per character of ``tokens``; longer strings in ``tokens`` are matched whole before the text is split
    into characters. The first special token is EOS and pad; padding is on the left (generation appends on the
    right). With ``unk_token=None`` a character outside the vocabulary is an error when encoded.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bad = [t for t in tokens if not isinstance(t, str) or not t]
    if bad:
        raise ValueError(f"build_char_tokenizer: vocab entries must be non-empty strings; got {bad[:3]!r}")
    reserved = set(specials) | ({unk_token} if unk_token else set())
    tokens = [t for t in dict.fromkeys(tokens) if t not in reserved]
    if not tokens:
        raise ValueError("build_char_tokenizer: the vocabulary is empty; pass characters such as '0123456789+-='")
    chars = [t for t in tokens if len(t) == 1]
    words = [t for t in tokens if len(t) > 1]

    table = {t: i for i, t in enumerate([*specials, *([unk_token] if unk_token else []), *chars])}
    core = Tokenizer(models.WordLevel(vocab=table, unk_token=unk_token))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per character
    core.decoder = decoders.Fuse()  # join pieces without inserting spaces
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if words:
        core.add_tokens([AddedToken(w, special=False, normalized=False) for w in words])
    extra = {"model_max_length": model_max_length} if model_max_length else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=specials[0],
        pad_token=specials[0],
        unk_token=unk_token,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        **extra,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_tokenizer(vocab: str | list[str] | None = None):
    """A character tokenizer shaped like Qwen2.5's, for tiny models.

    Args:
        vocab: None = every printable ASCII character; a string = its characters; a list = these tokens
            (single characters, plus longer strings that are matched whole before splitting into characters).

    Returns:
        A ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` as EOS and pad, ``<|im_start|>`` / ``<|im_end|>``,
        ``<unk>`` for characters outside the vocabulary, the Qwen2.5-Math ChatML chat template and left padding.
    """
    tokens = list(string.printable) if vocab is None else list(vocab)
    return build_char_tokenizer(tokens, chat_template=TINY_CHAT_TEMPLATE)


def build_tiny_model(
    tokenizer,
    arch: str = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    *,
    tie_word_embeddings: bool = True,
    attn_implementation: str | None = None,
):
    """A randomly initialised causal LM of a real architecture (same module names as the full-size model).

    The vocabulary is ``len(tokenizer)``; pad / EOS ids come from the tokenizer. The global RNG is left untouched.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    if arch not in TINY_ARCHS:
        raise ValueError(f"build_tiny_model: arch={arch!r} is unknown; use one of {', '.join(TINY_ARCHS)}")
    if hidden_size % num_heads or num_heads % num_kv_heads or (hidden_size // num_heads) % 2:
        raise ValueError(
            f"build_tiny_model: hidden_size={hidden_size}, num_heads={num_heads}, num_kv_heads={num_kv_heads} "
            "need hidden_size divisible by num_heads into an even head size, and num_heads by num_kv_heads"
        )
    config_cls = Qwen2Config if arch == "qwen2" else LlamaConfig
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def save_tiny(path: str | Path, *, arch: str = "qwen2", vocab: str | list[str] | None = None, **model_kwargs) -> Path:
    """Write a tiny model and its tokenizer to ``path`` so ``load_policy(ModelConfig(name_or_path=path))`` loads it.

    ``model_kwargs`` go to :func:`build_tiny_model` (hidden_size, num_layers, seed, ...).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(vocab)
    model = build_tiny_model(tokenizer, arch, **model_kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------- real shapes
# The Hub config.json files of the models the kit targets, written out (no download needed). Both use full
# attention in every layer (use_sliding_window false); sliding_window / max_window_layers are written as
# published, and transformers stores sliding_window as None when use_sliding_window is false.
_REAL_CONFIGS: dict[str, dict] = {
    "Qwen/Qwen2.5-Math-1.5B": dict(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=4096,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        use_sliding_window=False,
        sliding_window=4096,
        max_window_layers=21,
        attention_dropout=0.0,
        bos_token_id=151643,
        eos_token_id=151643,
        use_cache=True,
    ),
    "Qwen/Qwen2.5-Math-7B": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        hidden_act="silu",
        max_position_embeddings=4096,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        use_sliding_window=False,
        sliding_window=4096,
        max_window_layers=28,
        attention_dropout=0.0,
        bos_token_id=151643,
        eos_token_id=151643,
        use_cache=True,
    ),
}


def real_architecture_config(name: str = "Qwen/Qwen2.5-Math-1.5B"):
    """The transformers config of a real model (published weights are bfloat16), to build it with random weights.

    Example::

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(real_architecture_config())   # shapes only, no memory
    """
    from transformers import Qwen2Config

    if name not in _REAL_CONFIGS:
        raise ValueError(f"real_architecture_config: no stored config for {name!r}; known: {', '.join(_REAL_CONFIGS)}")
    config = Qwen2Config(**_REAL_CONFIGS[name])
    config.architectures = ["Qwen2ForCausalLM"]
    config._name_or_path = name
    return config
