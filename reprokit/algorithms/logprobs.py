"""Per-token log-probs and entropies from last hidden states, without a [B, T, V] float32 tensor.

A causal LM's head turns hidden states ``[B, T, H]`` into logits ``[B, T, V]``. With Qwen2.5's
V = 151 936, a 4096-token response is 2.5 GB of float32 logits, and autograd keeps several such
tensors (log-softmax, softmax, their product) for backward. GRPO only needs two numbers per
position: log p(label) and the entropy. :func:`token_logprobs_and_entropy` computes them over
chunks of positions and recomputes each chunk's logits in backward, so forward and backward each
hold about one chunk of logits ``[chunk_size, V]`` (a few copies) at a time.

Getting the hidden states (transformers)::

    # Qwen2 / Llama / Mistral / Gemma: the decoder without the head; no logits are built at all.
    out = model.get_decoder()(input_ids=ids, attention_mask=attn)   # model.model(...) is the same
    hidden = out.last_hidden_state                                  # [B, L, H], after the final norm
    # (with PEFT: peft_model.get_base_model().get_decoder())
    # Labels are the next tokens: position t predicts ids[:, t + 1].
    logp, ent = token_logprobs_and_entropy(hidden[:, :-1], model.get_output_embeddings(),
                                           ids[:, 1:], temperature=0.6)

``model(..., output_hidden_states=True).hidden_states[-1]`` also gives the post-norm last hidden
state, but the model then also builds the full logits, which is what this module avoids. Slice
``hidden`` to the response positions before the call: prompt positions cost the same as response
ones and GRPO does not use them.

The fused path reads ``lm_head.weight`` outside the module's own forward. Under parameter
sharding (FSDP / ZeRO-3) the weight is only gathered inside a forward, so pass a head that is its
own sharding unit: any module other than a plain ``nn.Linear`` takes the checkpointed path, which
calls ``lm_head(...)``.

Some architectures change the logits after the head. Gemma 2 uses final logit soft-capping,
``cap * tanh(logits / cap)`` (``config.final_logit_softcapping``, 30.0; check the config of any
model): pass ``softcap=cap``. Cohere
multiplies by ``config.logit_scale``: pass ``logit_transform=lambda z: z * scale`` (any callable on
float32 ``[n, V]`` logits). Both are applied before the temperature, as generation does.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["naive_logprobs_and_entropy", "response_logprobs", "token_logprobs_and_entropy"]

LogitTransform = Callable[[Tensor], Tensor]


def token_logprobs_and_entropy(
    hidden: Tensor,
    lm_head: nn.Module | Tensor,
    labels: Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = True,
    *,
    bias: Tensor | None = None,
    softcap: float | None = None,
    logit_transform: LogitTransform | None = None,
    ignore_index: int = -100,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of ``labels`` and full-vocabulary entropies under softmax(logits / temperature).

    Args:
        hidden: ``[B, T, H]`` last hidden states (after the final norm), any float dtype.
        lm_head: the output layer: an ``nn.Module`` mapping ``[..., H] -> [..., V]`` (``nn.Linear``,
            a PEFT-wrapped or quantised head), or its weight ``[V, H]`` (then ``bias`` ``[V]`` is optional).
        labels: ``[B, T]`` token ids scored at each position; positions equal to ``ignore_index``
            get log-prob 0 and no gradient (their entropy is still computed; mask it out).
        temperature: the sampling temperature; both outputs are for softmax(logits / temperature),
            which is what the rollout sampled from.
        chunk_size: positions per chunk (over the flattened B * T); memory is about
            ``a few x chunk_size x V x 4`` bytes in forward and in backward.
        with_entropy: False skips the entropy (one pass over the chunk less) and returns None for it.
        bias: ``[V]`` output bias when ``lm_head`` is a weight tensor.
        softcap: final logit soft-capping ``cap * tanh(z / cap)`` (Gemma 2 / 3).
        logit_transform: any other map of float32 logits ``[n, V] -> [n, V]``, applied before the
            temperature (e.g. Cohere's ``logit_scale``).
        ignore_index: label value marking positions without a target.

    Returns:
        ``(logp [B, T], entropy [B, T] or None)``, float32 (float64 for a float64 head),
        differentiable w.r.t. ``hidden`` and the head's parameters.

    A plain ``nn.Linear`` head or a weight tensor goes through a fused autograd function that
    writes the gradient of each chunk's logits in place (about three ``[chunk, V]`` float32 buffers).
    Any other module or a ``logit_transform`` goes through per-chunk activation checkpointing:
    the same result, somewhat more memory per chunk.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, H], got shape {tuple(hidden.shape)}")
    if labels.shape != hidden.shape[:2]:
        raise ValueError(f"labels must be [B, T] = {tuple(hidden.shape[:2])}, got {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if softcap is not None and softcap <= 0:
        raise ValueError(f"softcap must be > 0 or None, got {softcap}")
    if isinstance(lm_head, Tensor) and lm_head.dim() != 2:
        raise ValueError(f"an lm_head weight must be [V, H], got shape {tuple(lm_head.shape)}")
    if bias is not None and not isinstance(lm_head, Tensor):
        raise ValueError("bias is only for an lm_head given as a weight tensor; a module carries its own bias")

    b, t, h = hidden.shape
    flat_hidden = hidden.reshape(b * t, h)  # [N, H]
    flat_labels = labels.reshape(b * t)  # [N]

    weight, head_bias = _linear_parameters(lm_head, bias)
    if weight is not None and logit_transform is None:
        logp, entropy = _FusedLinearLogprobs.apply(
            flat_hidden, weight, head_bias, flat_labels, temperature, chunk_size, with_entropy, softcap, ignore_index
        )  # [N], [N] or None
    else:
        logp, entropy = _checkpointed_logprobs(
            flat_hidden, lm_head, bias, flat_labels, temperature, chunk_size, with_entropy, softcap,
            logit_transform, ignore_index,
        )  # [N], [N] or None
    logp = logp.view(b, t)  # [B, T]
    entropy = entropy.view(b, t) if with_entropy else None  # [B, T]
    return logp, entropy


def response_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    *,
    first: int,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs (and entropies) of a causal LM for the tokens ``labels`` that follow position ``first``: the one
    way the kit scores responses (the GRPO update, perplexity, entropy analyses).

    Args:
        model: a transformers causal LM, or a peft model around one (its adapter as it is set).
        input_ids: ``[B, L]`` the sequences (prompt and response; left or right padding).
        attention_mask: ``[B, L]`` 1 on real tokens; position ids count real tokens only, so a left-padded
            prompt starts at position 0 as in generation.
        labels: ``[B, T]`` the tokens scored: ``labels[:, t]`` is predicted by the hidden state at position
            ``first + t`` (``input_ids[:, first + t + 1]`` for a plain continuation); ``-100`` = no target.
        first: the position whose hidden state predicts ``labels[:, 0]`` (the prompt length minus 1 for a
            response after a left-padded prompt).
        temperature, chunk_size, with_entropy: see :func:`token_logprobs_and_entropy`.

    Returns:
        ``(logp [B, T], entropy [B, T] or None)`` at softmax(logits / temperature), float32. The decoder's hidden
        states go through the chunked head pass, so no ``[B, L, V]`` logits are built; a config's
        ``final_logit_softcapping`` (Gemma 2 / 3) is applied as the model's own head does.
    """
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, L]
    hidden = decoder(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state  # [B, L, H]
    hidden = hidden[:, first : first + labels.shape[1]]  # [B, T, H]
    softcap = getattr(getattr(base, "config", None), "final_logit_softcapping", None)
    return token_logprobs_and_entropy(
        hidden, head, labels, temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy, softcap=softcap
    )  # [B, T], [B, T] | None


def naive_logprobs_and_entropy(
    hidden: Tensor,
    lm_head: nn.Module | Tensor,
    labels: Tensor,
    temperature: float = 1.0,
    *,
    bias: Tensor | None = None,
    softcap: float | None = None,
    logit_transform: LogitTransform | None = None,
    ignore_index: int = -100,
) -> tuple[Tensor, Tensor]:
    """Reference: the same outputs from the full ``[B, T, V]`` float32 logits (memory-hungry)."""
    logits = _apply_head(hidden, lm_head, bias)  # [B, T, V]
    logits = logits.to(_compute_dtype(logits.dtype))  # [B, T, V]
    logits = _transform_logits(logits, softcap, logit_transform) / temperature  # [B, T, V]
    log_probs = F.log_softmax(logits, dim=-1)  # [B, T, V]
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)  # [B, T]
    ignored = labels == ignore_index  # [B, T]
    safe_labels = labels.masked_fill(ignored, 0)  # [B, T]
    logp = log_probs.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)  # [B, T]
    logp = logp.masked_fill(ignored, 0.0)  # [B, T]
    return logp, entropy


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _linear_parameters(lm_head: nn.Module | Tensor, bias: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """(weight, bias) when the head is a plain affine map, else (None, None)."""
    if isinstance(lm_head, Tensor):
        return lm_head, bias
    # Exact type: subclasses (bitsandbytes Linear4bit, PEFT LoRA layers) override forward.
    if type(lm_head) is nn.Linear:
        return lm_head.weight, lm_head.bias
    return None, None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half / bfloat16 / float32 logits; float64 stays float64 (for gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def _apply_head(hidden: Tensor, lm_head: nn.Module | Tensor, bias: Tensor | None) -> Tensor:
    if isinstance(lm_head, Tensor):
        return F.linear(hidden, lm_head, bias)  # [..., V]
    return lm_head(hidden)  # [..., V]


def _transform_logits(logits: Tensor, softcap: float | None, logit_transform: LogitTransform | None) -> Tensor:
    if logit_transform is not None:
        logits = logit_transform(logits)  # [..., V]
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap  # [..., V]
    return logits


# --------------------------------------------------------------------------------------------
# Fused path: nn.Linear head, analytic backward per chunk
# --------------------------------------------------------------------------------------------


class _FusedLinearLogprobs(torch.autograd.Function):
    """logp and entropy of softmax(cap(h W^T + b) / T), chunked over positions in both passes.

    Backward, with z the tempered logits, p = softmax(z), H the entropy, y the label:
        d logp_y / dz = onehot(y) - p
        d H / dz      = -p * (log p + H)
    then through the soft-cap (1 - tanh^2) and the temperature, and into h, W, b by matmuls.

    Each pass allocates its [chunk, V] buffers once and works in place: on CPU every fresh
    allocation of that size costs page faults comparable to the arithmetic itself.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, chunk_size, with_entropy, softcap, ignore_index):
        n_total = hidden.shape[0]
        dtype = _compute_dtype(weight.dtype)
        new = dict(dtype=dtype, device=hidden.device)
        logp = torch.empty(n_total, **new)  # [N]
        lse = torch.empty(n_total, **new)  # [N]
        entropy = torch.empty(n_total, **new) if with_entropy else None  # [N]
        ignored = labels == ignore_index  # [N]
        safe_labels = labels.masked_fill(ignored, 0)  # [N]
        rows = min(chunk_size, n_total)
        z_buf = torch.empty(rows, weight.shape[0], **new)  # [chunk, V]
        p_buf = torch.empty_like(z_buf)  # [chunk, V]
        cap_buf = torch.empty_like(z_buf) if softcap is not None else None  # [chunk, V]

        for start in range(0, n_total, chunk_size):
            end = min(start + chunk_size, n_total)
            n = end - start
            z, _ = _fused_chunk_logits(hidden[start:end], weight, bias, temperature, softcap, z_buf, cap_buf)  # [n, V]
            z_max = z.amax(dim=-1, keepdim=True)  # [n, 1]
            shifted = z.sub_(z_max)  # [n, V], max 0
            probs_unnorm = torch.exp(shifted, out=p_buf[:n])  # [n, V]
            norm = probs_unnorm.sum(dim=-1)  # [n]
            log_norm = norm.log()  # [n]
            lse[start:end] = z_max.squeeze(-1) + log_norm
            logp[start:end] = shifted.gather(-1, safe_labels[start:end, None]).squeeze(-1) - log_norm
            if with_entropy:
                # H = log norm - E_p[shifted]; with the max subtracted both terms stay small, so
                # peaked distributions (most tokens have entropy < 0.01) lose no precision.
                entropy[start:end] = log_norm - probs_unnorm.mul_(shifted).sum(dim=-1) / norm
        del z_buf, p_buf, cap_buf
        logp.masked_fill_(ignored, 0.0)

        ctx.save_for_backward(hidden, weight, bias, safe_labels, ignored, lse, entropy)
        ctx.config = (temperature, chunk_size, with_entropy, softcap)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, labels, ignored, lse, entropy = ctx.saved_tensors
        temperature, chunk_size, with_entropy, softcap = ctx.config
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        n_total = hidden.shape[0]
        dtype = _compute_dtype(weight.dtype)
        new = dict(dtype=dtype, device=hidden.device)

        grad_hidden = torch.zeros_like(hidden) if need_hidden else None  # [N, H]
        grad_weight = torch.zeros(weight.shape, **new) if need_weight else None  # [V, H]
        grad_bias = torch.zeros(bias.shape, **new) if need_bias else None  # [V]
        if grad_logp is None:
            grad_logp = torch.zeros(n_total, **new)  # [N]
        grad_logp = grad_logp.to(dtype).masked_fill(ignored, 0.0)  # [N]
        use_entropy = with_entropy and grad_entropy is not None
        if use_entropy:
            grad_entropy = grad_entropy.to(dtype)  # [N]
        rows = min(chunk_size, n_total)
        z_buf = torch.empty(rows, weight.shape[0], **new)  # [chunk, V]
        p_buf = torch.empty_like(z_buf)  # [chunk, V]
        cap_buf = torch.empty_like(z_buf) if softcap is not None else None  # [chunk, V]

        for start in range(0, n_total, chunk_size):
            end = min(start + chunk_size, n_total)
            n = end - start
            h_chunk = hidden[start:end]  # [n, H]
            z, capped = _fused_chunk_logits(h_chunk, weight, bias, temperature, softcap, z_buf, cap_buf)  # [n, V]
            log_probs = z.sub_(lse[start:end, None])  # [n, V]
            probs = torch.exp(log_probs, out=p_buf[:n])  # [n, V]
            g_logp = grad_logp[start:end, None]  # [n, 1]
            if use_entropy:
                # dL/dz = -g_H * p * (log p + H) - g_logp * p  (+ g_logp at the label, below)
                grad_z = log_probs.add_(entropy[start:end, None]).mul_(probs)  # [n, V]
                grad_z.mul_(-grad_entropy[start:end, None]).sub_(probs.mul_(g_logp))  # [n, V]
            else:
                grad_z = probs.mul_(-g_logp)  # [n, V]
            grad_z.scatter_add_(-1, labels[start:end, None], g_logp)  # [n, V]
            if softcap is not None:
                # d/dx [cap * tanh(x / cap)] = 1 - tanh^2: g - g * tanh^2, in place.
                grad_z.addcmul_(grad_z, capped.square_(), value=-1.0)  # [n, V]
            # The 1 / temperature of dz/draw goes into the [n, H] / [V, H] products, not over [n, V].
            grad_raw = grad_z.to(weight.dtype)  # [n, V]
            h_w = h_chunk.to(weight.dtype)  # [n, H]
            if need_hidden:
                grad_hidden[start:end] = (grad_raw @ weight).div_(temperature).to(hidden.dtype)  # [n, H]
            if need_weight:
                if grad_weight.dtype == grad_raw.dtype:
                    grad_weight.addmm_(grad_raw.t(), h_w, alpha=1.0 / temperature)  # [V, H]
                else:
                    # Low-precision weights: accumulate the chunks' contributions in float32.
                    grad_weight.add_((grad_raw.t() @ h_w).to(dtype), alpha=1.0 / temperature)  # [V, H]
            if need_bias:
                grad_bias.add_(grad_z.sum(dim=0), alpha=1.0 / temperature)  # [V]
            del grad_raw, grad_z, probs, log_probs
        del z_buf, p_buf, cap_buf

        if need_weight:
            grad_weight = grad_weight.to(weight.dtype)  # [V, H]
        if need_bias:
            grad_bias = grad_bias.to(bias.dtype)  # [V]
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None


def _fused_chunk_logits(
    h_chunk: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    temperature: float,
    softcap: float | None,
    z_buf: Tensor,
    cap_buf: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """Write one chunk's tempered logits into ``z_buf`` (and tanh(raw / cap) into ``cap_buf``).

    Returns views ``[n, V]`` of the buffers. The matmul runs in the weights' dtype (bf16 on GPU);
    only its output is upcast.
    """
    n = h_chunk.shape[0]
    z = z_buf[:n]  # [n, V]
    if weight.dtype == z.dtype:
        if softcap is None:
            # (h W^T + b) / T as (h / T) W^T + b / T: the temperature costs no pass over [n, V].
            h_chunk = h_chunk / temperature  # [n, H]
            bias = bias / temperature if bias is not None else None  # [V]
        h_w = h_chunk.to(weight.dtype)  # [n, H]
        if bias is None:
            torch.mm(h_w, weight.t(), out=z)  # [n, V]
        else:
            torch.addmm(bias, h_w, weight.t(), out=z)  # [n, V]
        if softcap is None:
            return z, None
    else:
        # Low-precision weights: round the raw logits like a bf16 model (and vLLM) does, then
        # divide in float32; scaling h first would round h / T instead.
        z.copy_(F.linear(h_chunk.to(weight.dtype), weight, bias))  # [n, V]
        if softcap is None:
            return z.div_(temperature), None
    capped = torch.tanh(z.div_(softcap), out=cap_buf[:n])  # [n, V]
    torch.mul(capped, softcap / temperature, out=z)  # [n, V]
    return z, capped


# --------------------------------------------------------------------------------------------
# Generic path: any head module or logit transform, per-chunk activation checkpointing
# --------------------------------------------------------------------------------------------


def _checkpointed_logprobs(
    hidden: Tensor,
    lm_head: nn.Module | Tensor,
    bias: Tensor | None,
    labels: Tensor,
    temperature: float,
    chunk_size: int,
    with_entropy: bool,
    softcap: float | None,
    logit_transform: LogitTransform | None,
    ignore_index: int,
) -> tuple[Tensor, Tensor | None]:
    """Chunk loop whose chunks keep only their inputs for backward and recompute the logits."""
    ignored = labels == ignore_index  # [N]
    safe_labels = labels.masked_fill(ignored, 0)  # [N]

    def chunk_fn(h_chunk: Tensor, y_chunk: Tensor) -> tuple[Tensor, Tensor]:
        z = _apply_head(h_chunk, lm_head, bias)  # [n, V]
        z = z.to(_compute_dtype(z.dtype))  # [n, V]
        z = _transform_logits(z, softcap, logit_transform)  # [n, V]
        logp, entropy = _LogprobsFromLogits.apply(z, y_chunk, temperature, with_entropy)  # [n], [n] or None
        return logp, entropy if with_entropy else logp.new_empty(0)

    params_need_grad = isinstance(lm_head, nn.Module) and any(p.requires_grad for p in lm_head.parameters())
    tensors_need_grad = any(x is not None and x.requires_grad for x in (hidden, bias)) or (
        isinstance(lm_head, Tensor) and lm_head.requires_grad
    )
    use_checkpoint = torch.is_grad_enabled() and (params_need_grad or tensors_need_grad)

    logps, entropies = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        end = min(start + chunk_size, hidden.shape[0])
        if use_checkpoint:
            logp, entropy = checkpoint(
                chunk_fn, hidden[start:end], safe_labels[start:end], use_reentrant=False
            )  # [n], [n]
        else:
            logp, entropy = chunk_fn(hidden[start:end], safe_labels[start:end])  # [n], [n]
        logps.append(logp)
        entropies.append(entropy)
    logp = torch.cat(logps).masked_fill(ignored, 0.0)  # [N]
    entropy = torch.cat(entropies) if with_entropy else None  # [N]
    return logp, entropy


class _LogprobsFromLogits(torch.autograd.Function):
    """logp and entropy of softmax(z / T) for one chunk of logits z ``[n, V]``.

    Same result as log_softmax + gather + -(p * log p).sum, but autograd keeps only z (which the
    checkpoint recomputes) instead of log-softmax, softmax and their product, and backward builds
    the gradient of z in two ``[n, V]`` buffers.
    """

    @staticmethod
    def forward(ctx, z, labels, temperature, with_entropy):
        shifted = z * (1.0 / temperature)  # [n, V]
        z_max = shifted.amax(dim=-1, keepdim=True)  # [n, 1]
        shifted.sub_(z_max)  # [n, V], max 0
        probs_unnorm = torch.exp(shifted)  # [n, V]
        norm = probs_unnorm.sum(dim=-1)  # [n]
        log_norm = norm.log()  # [n]
        logp = shifted.gather(-1, labels[:, None]).squeeze(-1) - log_norm  # [n]
        entropy = None
        if with_entropy:
            entropy = log_norm - probs_unnorm.mul_(shifted).sum(dim=-1) / norm  # [n]
        lse = z_max.squeeze(-1) + log_norm  # [n]
        ctx.save_for_backward(z, labels, lse, entropy)
        ctx.temperature = temperature
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        z, labels, lse, entropy = ctx.saved_tensors
        inv_t = 1.0 / ctx.temperature
        # The 1 / T of d(z / T)/dz is folded into the per-position factors.
        g_logp = (grad_logp if grad_logp is not None else torch.zeros_like(lse))[:, None] * inv_t  # [n, 1]
        log_probs = (z * inv_t).sub_(lse[:, None])  # [n, V]
        probs = torch.exp(log_probs)  # [n, V]
        if entropy is not None and grad_entropy is not None:
            # dL/dz = -g_H * p * (log p + H) - g_logp * p  (+ g_logp at the label, below)
            grad_z = log_probs.add_(entropy[:, None]).mul_(probs).mul_(grad_entropy[:, None] * -inv_t)  # [n, V]
            grad_z.sub_(probs.mul_(g_logp))  # [n, V]
        else:
            grad_z = probs.mul_(-g_logp)  # [n, V]
        grad_z.scatter_add_(-1, labels[:, None], g_logp)  # [n, V]
        return grad_z, None, None, None
