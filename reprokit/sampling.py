"""Sampling responses from a causal LM: the rollout stage of GRPO and of every evaluation recipe.

:func:`generate` runs its own decode loop instead of ``model.generate(num_return_sequences=n)``, for four
savings that ``benchmarks/grpo_step.py --compare-sampling`` times one by one against the plain ``generate``:

* **Each distinct prompt is prefilled once.** ``num_return_sequences`` copies every prompt ``n`` times *before*
  the prefill, so a group of 8 pays for 8 identical prefills; here the unique prompt rows of a call (in a
  one-shot run every row is the same prompt) are prefilled once and their KV cache is copied to the ``n`` rows.
* **The KV cache is allocated once, for the full length.** transformers' ``DynamicCache`` concatenates every
  new token onto the whole cache, which copies the cache at every step (quadratic traffic in the length).
* **Finished responses leave the decode batch.** ``generate`` keeps computing every row until the last one
  ends; here rows that reached an end-of-sequence token are dropped from the batch (and the cache) once an
  eighth of the batch is done, so later steps cost only what is still being written.
* **One uniform number per sampled token.** ``torch.multinomial`` draws an exponential variate for every
  vocabulary entry (151936 per row and step for Qwen2.5); an inverse-CDF draw needs one.

The samples have exactly the distribution ``generate`` samples from (softmax of logits / temperature, then
nucleus filtering through transformers' own ``TopPLogitsWarper``), and greedy decoding (temperature 0) returns
the same tokens. The random stream is consumed differently, so a seeded sample is reproducible but not the
same string ``model.generate`` would draw. Models whose cache is not plain (full or sliding-window) attention,
and encoder-decoder models, go through ``model.generate``.

:class:`MergedCopy` is the caller's choice on top: sampling from a copy of the policy with the LoRA adapter
merged into full-precision weights skips the per-step dequantization of a 4-bit base and the adapter's extra
matmuls, for the memory of that copy.
"""

from __future__ import annotations

import copy
import inspect
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
from transformers.generation.logits_process import TopPLogitsWarper

from reprokit.rewards import reward_keywords, score

__all__ = ["Completions", "Graded", "MergedCopy", "generate", "response_mask_from_ids", "sample_and_grade", "seeded_generator"]


@dataclass
class Completions:
    """Responses sampled for a batch of prompts, laid out group-contiguously (prompt i's n samples at i*n … i*n+n-1)."""

    prompt_ids: torch.Tensor  # [N, L] left-padded, each prompt repeated n times
    prompt_mask: torch.Tensor  # [N, L]
    response_ids: torch.Tensor  # [N, T] right-padded with the pad id
    response_mask: torch.Tensor  # [N, T] 1 up to and including the first EOS
    truncated: torch.Tensor  # [N] bool: no EOS within max_new_tokens
    texts: list[str]  # decoded responses, special tokens removed
    seconds: float  # wall time spent in generate

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)  # [N]

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())


def response_mask_from_ids(response_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask that keeps tokens up to and including the first EOS; also whether each row never hit EOS.

    The pad id is often an EOS id too, so the mask cannot come from `!= pad`: only the first EOS ends a response.
    """
    is_eos = torch.zeros_like(response_ids, dtype=torch.bool)  # [N, T]
    for eos in eos_ids:
        is_eos |= response_ids == eos
    seen_before = (is_eos.cumsum(-1) - is_eos.long()) > 0  # [N, T] an EOS strictly earlier in the row
    mask = (~seen_before).long()  # [N, T]
    truncated = ~is_eos.any(-1)  # [N]
    return mask, truncated


def seeded_generator(device: torch.device | str, *keys: int | str) -> torch.Generator:
    """A generator on ``device`` whose stream is a function of ``keys`` alone (run seed, process rank, step, ...).

    Sampling from ``seeded_generator(device, seed, "rollout", step, rank)`` gives every process its own
    responses, the same ones in every run with that seed, and the same ones after a resume, with no RNG state
    to carry in checkpoints.
    """
    words = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) % 2**64 for k in keys]
    seed = int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_ids: list[int] | None = None,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Completions:
    """Sample `n` responses for each left-padded prompt; `temperature == 0` means greedy decoding.

    `batch_size` bounds how many sequences one decode loop runs at once (memory), in whole groups.
    `generator` (on the prompts' device) draws every random number of the call, so a sample is a function of
    the generator's seed alone; None uses torch's global generator.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if temperature > 0 and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    eos_ids = list(eos_ids) if eos_ids else [tokenizer.eos_token_id]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    was_training = model.training
    # Dropout off and the KV cache on (gradient checkpointing turns the cache off in train mode).
    model.eval()
    prompts_per_call = max(1, (batch_size or n * input_ids.shape[0]) // n)
    decode = _decode if _supports_decode_loop(model) else _decode_with_hf_generate
    start = time.perf_counter()
    chunks = []
    try:
        for begin in range(0, input_ids.shape[0], prompts_per_call):
            chunks.append(
                decode(
                    model,
                    input_ids[begin : begin + prompts_per_call],  # [p, L]
                    attention_mask[begin : begin + prompts_per_call],  # [p, L]
                    n=n,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    eos_ids=eos_ids,
                    pad_id=pad_id,
                    generator=generator,
                )  # [p*n, t]
            )
    finally:
        model.train(was_training)
    if input_ids.device.type == "cuda":
        torch.cuda.synchronize(input_ids.device)
    seconds = time.perf_counter() - start

    width = max(c.shape[1] for c in chunks)
    response_ids = torch.cat(
        [torch.nn.functional.pad(c, (0, width - c.shape[1]), value=pad_id) for c in chunks]
    )  # [N, T]
    response_mask, truncated = response_mask_from_ids(response_ids, eos_ids)  # [N, T], [N]
    response_ids = response_ids.masked_fill(response_mask == 0, pad_id)  # [N, T]
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return Completions(
        prompt_ids=input_ids.repeat_interleave(n, dim=0),  # [N, L]
        prompt_mask=attention_mask.repeat_interleave(n, dim=0),  # [N, L]
        response_ids=response_ids,
        response_mask=response_mask,
        truncated=truncated,
        texts=texts,
        seconds=seconds,
    )


# ---------------------------------------------------------------------------------------------- merged copy
class MergedCopy:
    """A plain copy of a LoRA policy, adapter merged into the weights, to sample rollouts from.

    With a 4-bit base every decode step of the policy itself dequantizes each weight matrix (bitsandbytes does
    so whenever more than one sequence is decoded) and runs two extra LoRA matmuls per layer. The copy holds
    ``dequantize(W) + (alpha / r) * B @ A`` in the compute dtype: one plain matmul per layer, at the cost of
    the full-precision weights in memory (2 bytes per parameter in bfloat16: 3.1 GB for Qwen2.5-Math-1.5B).

    Call :meth:`sync` after every optimizer step (before sampling): it re-merges only the adapted layers. The
    copy samples from the same policy up to the rounding of the merged weights to the compute dtype (the
    policy adds the LoRA term in float32), the same kind of gap as sampling with an inference engine.

    Example::

        merged = MergedCopy(policy)
        merged.sync()                                   # after each update
        comps = generate(merged.model, tokenizer, ids, mask, n=8, max_new_tokens=1024)
    """

    def __init__(self, policy, dtype: torch.dtype | None = None):
        from peft.tuners.lora import LoraLayer
        from transformers import AutoModelForCausalLM

        base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        embedding = base.get_input_embeddings().weight
        self.dtype = dtype or embedding.dtype  # the base keeps its embedding in the compute dtype
        config = copy.deepcopy(base.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device(embedding.device):
            self.model = AutoModelForCausalLM.from_config(
                config, dtype=self.dtype, attn_implementation=base.config._attn_implementation
            )
        self.model.generation_config = copy.deepcopy(base.generation_config)
        self.model.eval().requires_grad_(False)

        # (target tensor, source module, attribute) of everything that is copied rather than merged.
        self._frozen: list[tuple[torch.Tensor, torch.nn.Module, str]] = []
        self._trained: list[tuple[torch.Tensor, torch.nn.Module, str]] = []
        targets = dict(self.model.named_modules())
        adapted = {name for name, module in base.named_modules() if isinstance(module, LoraLayer)}
        self._adapted = [(targets[name], base.get_submodule(name)) for name in sorted(adapted)]
        for name, module in base.named_modules():
            parent = name.removesuffix(".base_layer")  # peft moves an adapted layer's own weights one level down
            for attr, param in module.named_parameters(recurse=False):
                if ".lora_" in name or (attr == "weight" and parent != name and parent in adapted):
                    continue  # adapter matrices, and the base weights sync() merges them into
                target = self.model.get_parameter(f"{parent}.{attr}" if parent else attr)
                (self._trained if param.requires_grad else self._frozen).append((target, module, attr))
        with torch.no_grad():
            for target, module, attr in self._frozen:
                target.copy_(_dequantized(module, attr))
        self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        """Copy the policy's current weights in: adapted layers re-merged, trainable non-LoRA tensors copied."""
        for target, lora_layer in self._adapted:
            # A copy: for a full-precision base, float() would return the frozen weight itself.
            weight = _dequantized(lora_layer.get_base_layer(), "weight").to(torch.float32, copy=True)  # [out, in]
            if not lora_layer.disable_adapters:
                for adapter in lora_layer.active_adapters:
                    if adapter in lora_layer.lora_A and adapter not in lora_layer.merged_adapters:
                        weight += lora_layer.get_delta_weight(adapter).float()  # [out, in]
            target.weight.copy_(weight)
        for target, module, attr in self._trained:
            target.copy_(_dequantized(module, attr))


def _dequantized(module: torch.nn.Module, attr: str) -> torch.Tensor:
    """A module's tensor in full precision: bitsandbytes 4-/8-bit weights dequantized, others as they are."""
    if attr == "weight" and type(getattr(module, "weight", None)).__name__ in ("Params4bit", "Int8Params"):
        from peft.utils.integrations import dequantize_module_weight

        return dequantize_module_weight(module)
    return getattr(module, attr)


# ---------------------------------------------------------------------------------------------- decode loop
@torch.no_grad()
def _decode(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_ids: list[int],
    pad_id: int,
    generator: torch.Generator | None = None,
    prefill_once: bool = True,
    preallocate: bool = True,
    drop_finished: bool = True,
    inverse_cdf: bool = True,
) -> torch.Tensor:
    """Token ids ``[p*n, t]`` of ``n`` responses per prompt row, right-padded with ``pad_id`` after the first EOS.

    ``t`` is the longest response (up to its first EOS), as with ``model.generate``. The switches exist so the
    benchmark can time each saving on its own; :func:`generate` always uses all of them.
    """
    device = input_ids.device
    n_rows = input_ids.shape[0] * n
    prompt_len = input_ids.shape[1]
    eos = torch.tensor(eos_ids, device=device)  # [E]
    # All-ones mask = no padding: leaving it out lets attention take its mask-free (causal / GQA) kernels.
    has_padding = not bool(attention_mask.all())

    if prefill_once:
        rows = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1)  # [p, 2L]
        unique_rows, prompt_to_unique = torch.unique(rows, dim=0, return_inverse=True)  # [u, 2L], [p]
        prefill_ids, prefill_mask = unique_rows[:, :prompt_len], unique_rows[:, prompt_len:]  # [u, L], [u, L]
        row_source = prompt_to_unique.repeat_interleave(n)  # [N] which prefilled row each response continues
    else:
        prefill_ids = input_ids.repeat_interleave(n, dim=0)  # [N, L]
        prefill_mask = attention_mask.repeat_interleave(n, dim=0)  # [N, L]
        row_source = torch.arange(n_rows, device=device)  # [N]

    cache = DynamicCache(config=model.config)
    # Positions count real tokens only, so a left-padded prompt starts at position 0 like an unpadded one.
    position_ids = (prefill_mask.cumsum(-1) - 1).clamp(min=0)  # [u, L]
    out = model(
        input_ids=prefill_ids,
        attention_mask=prefill_mask if has_padding else None,
        position_ids=position_ids,
        use_cache=True,
        **{_cache_argument(model): cache},
        **_last_logits_only(model),
    )
    logits = out.logits[:, -1].float()[row_source]  # [N, V]
    _expand_cache(cache, row_source, prompt_len + max_new_tokens if preallocate else None)

    tokens = torch.full((n_rows, max_new_tokens), pad_id, dtype=torch.long, device=device)  # [N, T]
    active = torch.arange(n_rows, device=device)  # [a] response row of each decode-batch row
    next_position = position_ids[row_source, -1] + 1  # [a]
    mask = None  # [a, L + T] when there is padding: the prompt's mask, then ones for the response
    if has_padding:
        mask = torch.ones(n_rows, prompt_len + max_new_tokens, dtype=attention_mask.dtype, device=device)
        mask[:, :prompt_len] = prefill_mask[row_source]
    finished = torch.zeros(n_rows, dtype=torch.bool, device=device)  # [a]
    length = max_new_tokens
    for step in range(max_new_tokens):
        token = _next_tokens(logits, temperature, top_p, inverse_cdf, generator)  # [a]
        # A row that already ended keeps emitting the pad id, as generate() does, until it leaves the batch.
        token = token.masked_fill(finished, pad_id)  # [a]
        tokens[active, step] = token
        finished = finished | torch.isin(token, eos)  # [a]
        n_finished = int(finished.sum())
        if n_finished == active.numel():
            length = step + 1
            break
        if step + 1 == max_new_tokens:
            break
        if drop_finished and n_finished and _worth_compacting(n_finished, active.numel()):
            keep = (~finished).nonzero().squeeze(1)  # [a']
            cache.batch_select_indices(keep)
            active, token, next_position, finished = active[keep], token[keep], next_position[keep], finished[keep]
            if mask is not None:
                mask = mask[keep]
        out = model(
            input_ids=token[:, None],
            attention_mask=mask[:, : prompt_len + step + 1] if mask is not None else None,
            position_ids=next_position[:, None],
            use_cache=True,
            **{_cache_argument(model): cache},
        )
        logits = out.logits[:, -1].float()  # [a, V]
        next_position = next_position + 1
    del cache, out
    return tokens[:, :length]


def _worth_compacting(n_finished: int, n_active: int) -> bool:
    """Whether dropping the finished rows now pays for the copy of the cache it takes.

    Compacting copies the live part of the cache once (about two decode steps' worth of cache traffic), and
    every later step then skips the finished rows; waiting until an eighth of the batch is done keeps the number
    of copies logarithmic in the batch size while losing at most an eighth of a step's work.
    """
    return n_finished * 8 >= n_active


def _next_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    inverse_cdf: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row from float32 logits ``[a, V]``: argmax at temperature 0, else a sample as generate() draws it."""
    if temperature == 0:
        return logits.argmax(-1)  # [a]
    scores = logits / temperature  # [a, V]
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)  # [a, V] -inf outside the nucleus
    probs = torch.softmax(scores, dim=-1)  # [a, V]
    if not inverse_cdf or probs.device.type == "mps":  # MPS has no float64
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)  # [a]
    # Inverse-CDF draw: one uniform per row instead of torch.multinomial's one exponential per vocabulary entry
    # (151936 per row, most of a CPU decode step). The CDF is float64 so that the smallest probabilities keep
    # their own step; searchsorted(right=True) never lands on a zero-probability token.
    cdf = probs.to(torch.float64).cumsum_(dim=-1)  # [a, V]
    u = torch.rand(cdf.shape[0], 1, dtype=torch.float64, device=cdf.device, generator=generator) * cdf[:, -1:]  # [a, 1]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)  # [a]


def _cache_argument(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` in transformers 5.2x (``past_key_values`` is
    deprecated there), ``past_key_values`` in models that do not take ``cache``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _last_logits_only(model) -> dict:
    """``logits_to_keep=1`` where the model takes it: the prefill needs the head only at the last position."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    accepts = "logits_to_keep" in inspect.signature(base.forward).parameters
    return {"logits_to_keep": 1} if accepts else {}


def _supports_decode_loop(model) -> bool:
    """Decoder-only models whose cache is plain full or sliding-window attention; others go through generate()."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or not hasattr(model, "generate"):
        return False
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # a config transformers cannot map to cache layers
        return False
    return bool(layers) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def _expand_cache(cache, row_source: torch.Tensor, capacity: int | None) -> None:
    """Give each response row the prefilled cache of its prompt; full-attention layers get ``capacity`` slots."""
    identity = row_source.numel() == cache.layers[0].keys.shape[0] and bool(
        (row_source == torch.arange(row_source.numel(), device=row_source.device)).all()
    )
    for i, layer in enumerate(cache.layers):
        if capacity is not None and type(layer) is DynamicLayer:
            cache.layers[i] = _PreallocatedLayer(layer.keys, layer.values, row_source, capacity)
        elif not identity:
            layer.batch_select_indices(row_source)


class _PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer with room for the whole response, filled in place.

    transformers' ``DynamicLayer`` concatenates each new token onto the whole cache, so every decode step copies
    it; here a step writes one slot and attention reads a view of the filled part. Dropping rows copies the
    filled part once into a smaller buffer, which also frees the memory of the finished rows.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, capacity: int):
        # keys / values: [u, H, L, D] from the prefill; rows: [N] which of the u rows each cache row copies.
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.length = keys.shape[2]
        self.capacity = max(capacity, self.length)
        self._fill(keys[rows], values[rows])  # [N, H, L, D]
        self.is_initialized = True

    def _fill(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """New buffers of ``capacity`` slots holding ``keys`` / ``values`` [a, H, length, D]."""
        shape = lambda t: (t.shape[0], t.shape[1], self.capacity, t.shape[3])  # noqa: E731
        self._keys = keys.new_empty(shape(keys))  # [a, H, C, D]
        self._values = values.new_empty(shape(values))  # [a, H, C, D]
        self._keys[:, :, : self.length] = keys
        self._values[:, :, : self.length] = values
        self._views()

    def _views(self) -> None:
        self.keys = self._keys[:, :, : self.length]  # [a, H, length, D]
        self.values = self._values[:, :, : self.length]  # [a, H, length, D]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("a preallocated cache layer is built from a prefilled one")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[2]
        if self.length + new > self.capacity:
            # Only reached when decoding past the length allocated for: grow geometrically, like a list.
            self.capacity = max(2 * self.capacity, self.length + new)
            self._fill(self.keys, self.values)
        self._keys[:, :, self.length : self.length + new] = key_states
        self._values[:, :, self.length : self.length + new] = value_states
        self.length += new
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._fill(self.keys[indices], self.values[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._fill(self.keys.repeat_interleave(repeats, 0), self.values.repeat_interleave(repeats, 0))

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self.batch_select_indices(beam_idx.to(self.device))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
        self.length += tokens_to_remove
        self._views()

    def reset(self) -> None:
        self.length = 0
        self._views()

    def offload(self) -> None:
        pass  # the buffers stay where decoding runs

    def prefetch(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------- fallback
@torch.no_grad()
def _decode_with_hf_generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_ids: list[int],
    pad_id: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The same ``[p*n, t]`` token ids through ``model.generate(num_return_sequences=n)``.

    ``generate`` takes no generator: with one, the global RNG is seeded from it inside a forked RNG state, so
    the draw is still a function of the generator's seed and the caller's global RNG is left as it was.
    """
    if generator is not None:
        devices = [input_ids.device] if input_ids.device.type == "cuda" else []
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return _decode_with_hf_generate(
                model, input_ids, attention_mask, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                top_p=top_p, eos_ids=eos_ids, pad_id=pad_id,
            )
    if temperature > 0:
        sample_kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, num_return_sequences=n)
    else:
        # generate() refuses num_return_sequences > 1 for greedy decoding; n greedy copies are n identical rows.
        sample_kwargs = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        input_ids, attention_mask = input_ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        use_cache=True,
        **sample_kwargs,
    )  # [p*n, L + t]
    return out[:, input_ids.shape[1] :]


@dataclass
class Graded:
    """``n`` responses to each of a batch's prompts (group-contiguous: prompt i's at i*n … i*n+n-1) and their rewards."""

    comps: Completions
    rewards: torch.Tensor  # [P*n] float32, on the prompts' device
    n: int

    def correct(self) -> list[int]:
        """Responses per prompt whose reward is >= 1 (counted as solving it)."""
        return (self.rewards >= 1.0).view(-1, self.n).sum(-1).tolist()


def sample_and_grade(
    model,
    tokenizer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    answers: Sequence[str],
    fields: Sequence[Mapping],
    *,
    n: int,
    reward_fn: Callable[..., list[float]],
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    eos_ids: list[int] | None = None,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    reward_generator: torch.Generator | None = None,
) -> Graded:
    """Sample ``n`` responses to each prompt and grade them: the one path every rollout, validation, evaluation and
    CPU-world measurement goes through (:func:`reprokit.sampling.generate`, then :func:`reprokit.rewards.score`).

    Args:
        input_ids, attention_mask: ``[P, L]`` left-padded prompts on the model's device.
        answers, fields: each prompt's reference answer and its example fields (the reward's keywords).
        generator / reward_generator: the sampling stream and the one a random reward draws from.
    """
    comps = generate(
        model, tokenizer, input_ids, attention_mask, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
        top_p=top_p if temperature > 0 else 1.0, eos_ids=eos_ids, batch_size=batch_size, generator=generator,
    )
    expanded = [a for a in answers for _ in range(n)]
    rewards = score(reward_fn, comps.texts, expanded, reward_keywords(list(fields), n), generator=reward_generator)
    return Graded(comps=comps, rewards=torch.tensor(rewards, dtype=torch.float32, device=input_ids.device), n=n)
