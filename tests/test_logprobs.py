"""Chunked per-token log-probs / entropies against the full-logits reference."""

import math

import pytest
import torch
from torch import nn

from reprokit.algorithms import naive_logprobs_and_entropy, token_logprobs_and_entropy

B, T, H, V = 2, 13, 16, 300  # B * T = 26 positions: not a multiple of 5 or 7


class WrappedHead(nn.Module):
    """A head that is not a plain nn.Linear (like a PEFT / quantised head): the checkpointed path."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.inner = linear

    def forward(self, x):
        return self.inner(x)


def make_inputs(bias: bool, seed: int = 0, logit_scale: float = 3.0):
    torch.manual_seed(seed)
    head = nn.Linear(H, V, bias=bias)
    with torch.no_grad():
        head.weight.mul_(logit_scale)  # logits of a few units, so temperature and soft-cap matter
    hidden = torch.randn(B, T, H)  # [B, T, H]
    labels = torch.randint(0, V, (B, T))  # [B, T]
    return head, hidden, labels


def run(fn, head_arg, hidden, labels, params, **kw):
    """Outputs and gradients of sum(w1 * logp) + sum(w2 * entropy) w.r.t. hidden and params."""
    hidden = hidden.clone().requires_grad_()
    for p in params:
        p.grad = None
    logp, entropy = fn(hidden, head_arg, labels, **kw)
    w1 = torch.linspace(-1, 1, logp.numel()).view_as(logp)  # [B, T]
    objective = (w1 * logp).sum()
    if entropy is not None:
        w2 = torch.linspace(0.5, -2, entropy.numel()).view_as(entropy)  # [B, T]
        objective = objective + (w2 * entropy).sum()
    objective.backward()
    grads = [hidden.grad] + [p.grad.clone() for p in params]
    return logp.detach(), (entropy.detach() if entropy is not None else None), grads


# The fused path (nn.Linear) over the full grid; the weight-tensor and checkpointed-module paths
# over a slice of it (they share the chunk loop / the autograd recomputation respectively).
CASES = [
    ("linear", chunk, temp, bias, cap)
    for chunk in (5, 7, 64)
    for temp in (0.6, 1.0)
    for bias in (False, True)
    for cap in (None, 2.5)
] + [("weight", 7, 0.6, True, cap) for cap in (None, 2.5)] + [
    ("module", chunk, temp, True, cap) for chunk in (7, 64) for temp in (0.6, 1.0) for cap in (None, 2.5)
]


@pytest.mark.parametrize("path,chunk_size,temperature,bias,softcap", CASES)
def test_chunked_matches_naive(chunk_size, temperature, bias, softcap, path):
    head, hidden, labels = make_inputs(bias)
    params = [p for p in head.parameters()]
    kw = dict(temperature=temperature, softcap=softcap)
    want_logp, want_ent, want_grads = run(naive_logprobs_and_entropy, head, hidden, labels, params, **kw)

    if path == "linear":
        head_arg = head
    elif path == "weight":
        head_arg = head.weight
        kw["bias"] = head.bias
    else:
        head_arg = WrappedHead(head)
    got_logp, got_ent, got_grads = run(
        token_logprobs_and_entropy, head_arg, hidden, labels, params, chunk_size=chunk_size, **kw
    )
    assert got_logp.dtype == torch.float32 and got_logp.shape == (B, T)
    assert torch.allclose(got_logp, want_logp, atol=1e-5, rtol=0)
    assert torch.allclose(got_ent, want_ent, atol=1e-5, rtol=0)
    for got, want in zip(got_grads, want_grads):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("path", ["linear", "module"])
def test_logprobs_only(path):
    head, hidden, labels = make_inputs(bias=True)
    params = list(head.parameters())
    head_arg = head if path == "linear" else WrappedHead(head)

    def naive_logp_only(h, hd, y, **kw):
        return naive_logprobs_and_entropy(h, hd, y, **kw)[0], None

    want_logp, _, want_grads = run(naive_logp_only, head, hidden, labels, params, temperature=0.6)
    got_logp, got_ent, got_grads = run(
        token_logprobs_and_entropy, head_arg, hidden, labels, params, temperature=0.6, chunk_size=6, with_entropy=False
    )
    assert got_ent is None
    assert torch.allclose(got_logp, want_logp, atol=1e-5)
    for got, want in zip(got_grads, want_grads):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_entropy_equals_full_softmax_entropy_loop():
    head, hidden, labels = make_inputs(bias=True, logit_scale=1.0)
    temperature = 0.6
    _, entropy = token_logprobs_and_entropy(hidden, head, labels, temperature=temperature, chunk_size=4)
    logits = head(hidden).double() / temperature  # [B, T, V]
    for b in range(B):
        for t in range(T):
            row = logits[b, t].tolist()
            top = max(row)
            z = sum(math.exp(x - top) for x in row)
            probs = [math.exp(x - top) / z for x in row]
            want = -sum(p * math.log(p) for p in probs if p > 0)
            assert entropy[b, t].item() == pytest.approx(want, abs=1e-5)
            assert 0.0 <= entropy[b, t].item() <= math.log(V) + 1e-5


def test_gradcheck_float64():
    torch.manual_seed(1)
    hidden = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)  # [B, T, H]
    weight = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)  # [V, H]
    bias = torch.randn(11, dtype=torch.float64, requires_grad=True)  # [V]
    labels = torch.randint(0, 11, (2, 5))  # [B, T]

    def fn(h, w, b):
        return token_logprobs_and_entropy(h, w, labels, temperature=0.7, chunk_size=3, bias=b, softcap=2.0)

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


def test_ignore_index_positions():
    head, hidden, labels = make_inputs(bias=False)
    labels[0, :4] = -100
    hidden = hidden.clone().requires_grad_()
    logp, _ = token_logprobs_and_entropy(hidden, head, labels, chunk_size=5, with_entropy=False)
    assert torch.all(logp[0, :4] == 0)
    logp.sum().backward()
    assert torch.all(hidden.grad[0, :4] == 0) and torch.any(hidden.grad[0, 4:] != 0)
    want, _ = naive_logprobs_and_entropy(hidden.detach(), head, labels)
    assert torch.allclose(logp.detach(), want, atol=1e-5)


def test_logit_transform_matches_naive():
    head, hidden, labels = make_inputs(bias=False)
    scale = lambda z: z * 0.3  # noqa: E731  (Cohere-style logit_scale)
    got, got_ent = token_logprobs_and_entropy(hidden, head, labels, chunk_size=7, logit_transform=scale)
    want, want_ent = naive_logprobs_and_entropy(hidden, head, labels, logit_transform=scale)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(got_ent, want_ent, atol=1e-5)


@pytest.mark.parametrize("path", ["linear", "module"])
def test_graph_keeps_no_logits(path):
    """What autograd saves for backward is far smaller than the [B*T, V] logits."""
    torch.manual_seed(0)
    n_pos, vocab, width, chunk = 64, 2000, 4, 8
    head = nn.Linear(width, vocab)
    head_arg = head if path == "linear" else WrappedHead(head)
    hidden = torch.randn(1, n_pos, width, requires_grad=True)  # [1, T, H]
    labels = torch.randint(0, vocab, (1, n_pos))  # [1, T]
    saved = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        logp, entropy = token_logprobs_and_entropy(hidden, head_arg, labels, chunk_size=chunk)
    assert max(saved) <= max(vocab * width, n_pos * width)  # the head weight at most, no [n, V] logits
    (logp.sum() + entropy.sum()).backward()

    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        naive_logprobs_and_entropy(hidden, head, labels)
    assert max(saved) >= n_pos * vocab  # the reference does keep the full logits


def test_transformers_decoder_hidden_states():
    """The documented recipe: decoder hidden states + output embeddings = the model's own logits."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen2Config(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    ids = torch.randint(0, 97, (2, 9))  # [B, L]
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state  # [B, L, H]
        logp, entropy = token_logprobs_and_entropy(hidden[:, :-1], model.get_output_embeddings(), ids[:, 1:], 0.6)
        logits = model(input_ids=ids).logits[:, :-1].float() / 0.6  # [B, L-1, V]
    log_probs = torch.log_softmax(logits, dim=-1)  # [B, L-1, V]
    assert torch.allclose(logp, log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1), atol=1e-5)
    assert torch.allclose(entropy, -(log_probs.exp() * log_probs).sum(-1), atol=1e-5)


def test_errors():
    head, hidden, labels = make_inputs(bias=False)
    with pytest.raises(ValueError, match="labels"):
        token_logprobs_and_entropy(hidden, head, labels[:, :-1])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs_and_entropy(hidden, head, labels, temperature=0.0)
    with pytest.raises(ValueError, match="bias"):
        token_logprobs_and_entropy(hidden, head, labels, bias=torch.zeros(V))


def test_bfloat16_head_matches_naive():
    """bf16 weights: logits are rounded to bf16 like the model's own, then handled in float32."""
    torch.manual_seed(0)
    head = nn.Linear(32, 500, bias=True).to(torch.bfloat16)
    hidden = torch.randn(2, 30, 32, dtype=torch.bfloat16)  # [B, T, H]
    labels = torch.randint(0, 500, (2, 30))  # [B, T]
    params = list(head.parameters())
    for softcap in (None, 3.0):
        want_logp, want_ent, want_grads = run(
            naive_logprobs_and_entropy, head, hidden, labels, params, temperature=0.6, softcap=softcap
        )
        got_logp, got_ent, got_grads = run(
            token_logprobs_and_entropy, head, hidden, labels, params, temperature=0.6, softcap=softcap, chunk_size=7
        )
        assert got_logp.dtype == torch.float32
        assert torch.allclose(got_logp, want_logp, atol=1e-5) and torch.allclose(got_ent, want_ent, atol=1e-5)
        for got, want in zip(got_grads, want_grads):
            assert got.dtype == torch.bfloat16
            assert (got.float() - want.float()).abs().max() <= 2e-2 * want.float().abs().max()
