"""generate(): the same responses as transformers' generate, right masks, and samples from the right distribution."""

import pytest
import torch

from reprokit.policy import ModelConfig, load_policy
from reprokit.sampling import MergedCopy, _decode, _PreallocatedLayer, _supports_decode_loop, generate
from reprokit.tiny import build_tiny_model, build_tiny_tokenizer

PROMPTS = ["1+1=", "The pressure on a sail", "x", "Find the wind velocity when", "12*7=", "abc"]
EOS_BIAS = 4.5  # with it, some greedy responses of the model below end within 30 tokens and others do not


@pytest.fixture(autouse=True)
def _one_thread():
    # A tiny model has no matmul worth splitting, and on a busy two-core machine a second thread only waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _confident_model(tokenizer, eos_bias: float = EOS_BIAS):
    """A tiny model with logits of std ~3 (a random one's are all ~0) and a push towards EOS, so lengths vary."""
    model = build_tiny_model(tokenizer, tie_word_embeddings=False, seed=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    _add_eos_bias(model.lm_head, tokenizer.eos_token_id, eos_bias)
    return model.eval()


def _add_eos_bias(lm_head, eos_id: int, bias: float):
    def hook(module, args, logits):
        return logits + bias * torch.nn.functional.one_hot(torch.tensor(eos_id), logits.shape[-1]).to(logits.dtype)

    lm_head.register_forward_hook(hook)


def _reference_mask(response_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain loops: 1 up to and including the first EOS of each row; whether a row has none."""
    mask = torch.zeros_like(response_ids)
    truncated = torch.ones(response_ids.shape[0], dtype=torch.bool)
    for row, ids in enumerate(response_ids.tolist()):
        for col, token in enumerate(ids):
            mask[row, col] = 1
            if token in eos_ids:
                truncated[row] = False
                break
    return mask, truncated


def _hf_greedy(model, ids, mask, n, max_new_tokens, eos_ids, pad_id) -> torch.Tensor:
    """transformers' greedy generate on each prompt repeated n times (it refuses num_return_sequences > 1 greedily)."""
    out = model.generate(
        input_ids=ids.repeat_interleave(n, 0),
        attention_mask=mask.repeat_interleave(n, 0),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
    )  # [p*n, L + t]
    return out[:, ids.shape[1] :]


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "nf4-lora"])
def test_greedy_matches_transformers_generate_with_padding_eos_and_chunks(quantized):
    tokenizer = build_tiny_tokenizer()
    if quantized:
        model, tokenizer = load_policy(ModelConfig("tiny", quantization="nf4", lora_r=8, gradient_checkpointing=False))
        with torch.no_grad():
            model.get_base_model().get_output_embeddings().weight.mul_(20.0)  # tied: the inputs scale too
        _add_eos_bias(model.get_base_model().get_output_embeddings(), tokenizer.eos_token_id, 2.0)
        model.eval()
    else:
        model = _confident_model(tokenizer)
    assert _supports_decode_loop(model)
    eos_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)  # left-padded
    n, max_new = 3, 30

    comps = generate(
        model, tokenizer, enc.input_ids, enc.attention_mask, n=n, max_new_tokens=max_new, temperature=0.0,
        eos_ids=eos_ids, batch_size=2 * n,  # three decode calls of two prompts each
    )
    reference = _hf_greedy(model, enc.input_ids, enc.attention_mask, n, max_new, eos_ids, tokenizer.pad_token_id)
    ref_mask, ref_truncated = _reference_mask(reference, eos_ids)
    lengths = ref_mask.sum(1)
    if not quantized:
        # The case that matters: rows that end early leave the batch while others run to the limit.
        assert ref_truncated.any() and (~ref_truncated).any() and int(lengths.min()) < max_new // 2

    width = int(lengths.max())
    assert comps.response_ids.shape == (len(PROMPTS) * n, width)
    assert torch.equal(comps.response_mask, ref_mask[:, :width])
    assert torch.equal(comps.truncated, ref_truncated)
    expected_ids = reference[:, :width].masked_fill(ref_mask[:, :width] == 0, tokenizer.pad_token_id)
    assert torch.equal(comps.response_ids, expected_ids)
    assert comps.texts == tokenizer.batch_decode(expected_ids, skip_special_tokens=True)
    assert torch.equal(comps.prompt_ids, enc.input_ids.repeat_interleave(n, 0))
    assert torch.equal(comps.prompt_mask, enc.attention_mask.repeat_interleave(n, 0))


def test_every_decode_variant_gives_the_same_greedy_tokens():
    tokenizer = build_tiny_tokenizer()
    model = _confident_model(tokenizer)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    kwargs = dict(n=2, max_new_tokens=30, temperature=0.0, top_p=1.0, eos_ids=[0], pad_id=0)
    full = _decode(model, enc.input_ids, enc.attention_mask, **kwargs)
    for switch in ("prefill_once", "preallocate", "drop_finished"):
        assert torch.equal(_decode(model, enc.input_ids, enc.attention_mask, **kwargs, **{switch: False}), full), switch


def test_models_outside_the_decode_loop_go_through_generate_with_the_same_result(monkeypatch):
    import reprokit.sampling as sampling

    tokenizer = build_tiny_tokenizer()
    model = _confident_model(tokenizer)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    kwargs = dict(n=2, max_new_tokens=30, temperature=0.0, eos_ids=[0])
    loop = generate(model, tokenizer, enc.input_ids, enc.attention_mask, **kwargs)
    monkeypatch.setattr(sampling, "_supports_decode_loop", lambda model: False)
    fallback = generate(model, tokenizer, enc.input_ids, enc.attention_mask, **kwargs)
    assert torch.equal(loop.response_ids, fallback.response_ids) and loop.texts == fallback.texts


def test_first_eos_is_kept_later_tokens_are_pad_and_pad_equal_to_eos_is_not_a_stop():
    tokenizer = build_tiny_tokenizer()
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the Qwen layout: <|endoftext|> is both
    model = _confident_model(tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    # Only <|im_end|> ends a response: <|endoftext|> (= pad) is then an ordinary token and must stay in the mask.
    comps = generate(model, tokenizer, enc.input_ids, enc.attention_mask, n=1, max_new_tokens=30, temperature=0.0,
                     eos_ids=[im_end])
    mask, truncated = _reference_mask(comps.response_ids, [im_end])
    assert torch.equal(comps.response_mask, mask) and torch.equal(comps.truncated, truncated)
    pad_inside = (comps.response_ids == tokenizer.pad_token_id) & (comps.response_mask == 1)
    assert pad_inside.any(), "the biased model should emit <|endoftext|> inside some response"

    comps = generate(model, tokenizer, enc.input_ids, enc.attention_mask, n=1, max_new_tokens=30, temperature=0.0,
                     eos_ids=[tokenizer.eos_token_id, im_end])
    for row in range(len(PROMPTS)):
        length = int(comps.lengths[row])
        ids = comps.response_ids[row].tolist()
        if not comps.truncated[row]:
            assert ids[length - 1] in (tokenizer.eos_token_id, im_end), "the first EOS is part of the response"
            assert all(t not in (tokenizer.eos_token_id, im_end) for t in ids[: length - 1])
        assert all(t == tokenizer.pad_token_id for t in ids[length:])
    assert comps.num_tokens == int(comps.lengths.sum())


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    tokenizer = build_tiny_tokenizer()
    model = _confident_model(tokenizer, eos_bias=2.0)
    enc = tokenizer(PROMPTS[:3], return_tensors="pt", padding=True)

    def sample(seed):
        torch.manual_seed(seed)
        return generate(model, tokenizer, enc.input_ids, enc.attention_mask, n=4, max_new_tokens=20,
                        temperature=0.8, top_p=0.95, eos_ids=[0], batch_size=8)

    a, b, c = sample(0), sample(0), sample(1)
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert not torch.equal(a.response_ids, c.response_ids)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.6, 1.0), (1.0, 0.7)])
def test_first_tokens_follow_the_tempered_nucleus_distribution(temperature, top_p):
    tokenizer = build_tiny_tokenizer()
    model = _confident_model(tokenizer, eos_bias=0.0)
    enc = tokenizer(["The pressure"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0, -1].double()  # [V]
    # The distribution written out: softmax(logits / T), then keep the smallest set of top tokens holding top_p.
    probs = torch.softmax(logits / temperature, -1)
    order = probs.argsort(descending=True)
    before = probs[order].cumsum(0) - probs[order]  # mass of strictly more likely tokens
    nucleus = torch.zeros_like(probs, dtype=torch.bool)
    nucleus[order[before < top_p]] = True
    expected = torch.where(nucleus, probs, 0.0)
    expected /= expected.sum()

    n = 4000
    torch.manual_seed(0)
    comps = generate(model, tokenizer, enc.input_ids, enc.attention_mask, n=n, max_new_tokens=1,
                     temperature=temperature, top_p=top_p, eos_ids=[10**6])
    counts = torch.bincount(comps.response_ids[:, 0], minlength=probs.numel()).double()
    assert counts[~nucleus].sum() == 0, "a token outside the nucleus was sampled"
    total_variation = 0.5 * (counts / n - expected).abs().sum()
    # With 4000 draws the expected total variation is ~0.05 for this vocabulary; a wrong temperature gives > 0.2.
    assert total_variation < 0.1, f"total variation {total_variation:.3f} from softmax(logits / {temperature})"


def test_preallocated_cache_layer_grows_and_selects_rows_like_concatenation():
    torch.manual_seed(0)
    keys, values = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)  # [u, H, L, D]
    rows = torch.tensor([0, 0, 1])
    layer = _PreallocatedLayer(keys, values, rows, capacity=6)
    expected_k, expected_v = keys[rows], values[rows]
    for _ in range(4):  # past the capacity of 6
        k, v = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
        got_k, got_v = layer.update(k, v)
        expected_k, expected_v = torch.cat([expected_k, k], 2), torch.cat([expected_v, v], 2)
        assert torch.equal(got_k, expected_k) and torch.equal(got_v, expected_v)
    assert layer.get_seq_length() == 9 and layer.get_mask_sizes(1) == (10, 0)
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(layer.keys, expected_k[[2, 0]]) and torch.equal(layer.values, expected_v[[2, 0]])


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_merged_copy_computes_the_policy_and_follows_adapter_updates(quantization):
    model, tokenizer = load_policy(ModelConfig("tiny", quantization=quantization, lora_r=8, gradient_checkpointing=False))
    model.eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)  # a trained-looking adapter (B starts at zero)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    ids = tokenizer(["The pressure on a sail"], return_tensors="pt").input_ids
    merged = MergedCopy(model)
    assert not any(p.requires_grad for p in merged.model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged.model(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)

        for name, param in model.named_parameters():
            if "lora_A" in name:
                param.add_(0.05)  # an optimizer step
        assert (merged.model(ids).logits - model(ids).logits).abs().max() > 1e-3, "the copy should be stale now"
        merged.sync()
        torch.testing.assert_close(merged.model(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), f"merging changed the policy's frozen {name}"


def test_bad_arguments_name_the_value():
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    enc = tokenizer(["1+1="], return_tensors="pt")
    with pytest.raises(ValueError, match="n must be"):
        generate(model, tokenizer, enc.input_ids, enc.attention_mask, n=0, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tokenizer, enc.input_ids, enc.attention_mask, n=1, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tokenizer, enc.input_ids, enc.attention_mask, n=1, max_new_tokens=4, temperature=-1)


@pytest.mark.gpu
def test_greedy_matches_transformers_generate_on_cuda_with_a_4bit_base():
    model, tokenizer = load_policy(ModelConfig("tiny", quantization="nf4", lora_r=8), device="cuda")
    model.eval()
    eos_ids = [tokenizer.eos_token_id]
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True).to("cuda")
    comps = generate(model, tokenizer, enc.input_ids, enc.attention_mask, n=2, max_new_tokens=24, temperature=0.0,
                     eos_ids=eos_ids)
    reference = _hf_greedy(model, enc.input_ids, enc.attention_mask, 2, 24, eos_ids, tokenizer.pad_token_id).cpu()
    ref_mask, _ = _reference_mask(reference, eos_ids)
    width = int(ref_mask.sum(1).max())
    assert torch.equal(comps.response_ids.cpu(), reference[:, :width].masked_fill(ref_mask[:, :width] == 0, 0))
