"""Model loading: tiny factory, local-dir loading in full precision and NF4, LoRA, reference model, checkpoints."""

from __future__ import annotations

import sys

import pytest
import torch

from reprokit.policy import (
    ModelConfig,
    ModelConfigError,
    ModelLoadError,
    count_parameters,
    eos_token_ids,
    load_policy,
    load_trainable_state_dict,
    reference_model,
    resolve_compute_dtype,
    trainable_state_dict,
)
from reprokit.tiny import build_tiny_model, build_tiny_tokenizer, real_architecture_config, save_tiny

ALL_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
TEXT = "Solve 12+3=?\n  Answer: \\boxed{15}"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "qwen2")


def policy(path, **overrides):
    """A LoRA policy on CPU from ``path``; fp32, no dropout, rank 4 unless overridden."""
    options = dict(name_or_path=str(path), quantization="none", lora_r=4, lora_alpha=8, gradient_checkpointing=False)
    options.update(overrides)
    return load_policy(ModelConfig(**options), device="cpu")


def batch(tokenizer, texts=(TEXT, "1+1=2")):
    return tokenizer(list(texts), padding=True, return_tensors="pt")


def perturb_lora_b(model, seed=1, scale=0.05):
    """LoRA B starts at zero (adapter = identity); give it values so the adapter changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def lora_modules(model) -> set[str]:
    """Leaf names of the modules that carry a LoRA adapter."""
    return {name.split(".")[-1] for name, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)}


def forward_backward(model, tokenizer):
    enc = batch(tokenizer)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)  # [B, L]
    out = model(**enc, labels=labels)
    out.loss.backward()
    return out


# ---------------------------------------------------------------------------------------------- tokenizer
def test_tiny_tokenizer_chatml_pad_eos_left_padding():
    tok = build_tiny_tokenizer()
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.padding_side == "left"
    ids = tok("<|im_start|>ab<|im_end|>").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<|im_start|>", "a", "b", "<|im_end|>"]

    messages = [{"role": "user", "content": "2+2?"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "S"}, *messages]
    assert tok.apply_chat_template(with_system, tokenize=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
    )

    # Character level: every character is one token, spaces and newlines survive the round trip.
    ids = tok(TEXT).input_ids
    assert len(ids) == len(TEXT) and tok.decode(ids) == TEXT
    enc = batch(tok, ["abc", "a"])
    assert enc.input_ids[1].tolist()[:2] == [tok.pad_token_id] * 2  # padded on the left
    assert enc.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_tiny_tokenizer_custom_vocab_and_unknown_characters():
    tok = build_tiny_tokenizer(["0", "1", "+", "=", " ", "wait"])
    assert len(tok) == 4 + 5 + 1  # 3 specials + <unk>, 5 characters, 1 word
    assert tok.convert_ids_to_tokens(tok("1+1 wait=x").input_ids) == ["1", "+", "1", " ", "wait", "=", "<unk>"]
    assert len(build_tiny_tokenizer("0123456789")) == 4 + 10
    with pytest.raises(ValueError, match="non-empty strings"):
        build_tiny_tokenizer(["a", ""])


def test_tiny_model_is_seeded_and_leaves_global_rng_alone():
    tok = build_tiny_tokenizer()
    state = torch.get_rng_state()
    a, b = build_tiny_model(tok, seed=0), build_tiny_model(tok, seed=0)
    c = build_tiny_model(tok, arch="llama", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.config.vocab_size == len(tok) and a.config.model_type == "qwen2" and c.config.model_type == "llama"
    assert a.config.eos_token_id == tok.eos_token_id == a.generation_config.pad_token_id
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.embed_tokens.weight, build_tiny_model(tok, seed=1).model.embed_tokens.weight)
    assert a(**batch(tok)).logits.shape == (2, len(TEXT), len(tok))


# ---------------------------------------------------------------------------------------------- loading
def test_load_local_dir_full_precision(tiny_dir):
    model, tok = policy(tiny_dir)
    # The saved tokenizer comes back as it was built (not rebuilt as Qwen2's byte-level BPE).
    assert tok(TEXT).input_ids == build_tiny_tokenizer()(TEXT).input_ids
    assert tok.padding_side == "left" and tok.pad_token == "<|endoftext|>" and tok.chat_template
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert model.generation_config.eos_token_id == [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    assert model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.float32

    # Train mode throughout: checkpointing and LoRA dropout act only there.
    assert all(m.training for m in model.modules())

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    perturb_lora_b(model)
    forward_backward(model, tok)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_load_local_dir_nf4_on_cpu(tiny_dir):
    import bitsandbytes as bnb

    model, tok = policy(tiny_dir, quantization="nf4", double_quant=True)
    base = model.get_base_model()
    quantized = {n.split(".")[-2] for n, m in base.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantized == ALL_LINEAR  # every decoder linear; embeddings and output head stay dense
    layer = base.model.layers[0].mlp.down_proj.base_layer
    assert layer.weight.dtype == torch.uint8 and layer.weight.quant_state.quant_type == "nf4"
    assert layer.compute_dtype == torch.float32  # auto on CPU
    assert not isinstance(base.lm_head, bnb.nn.Linear4bit)

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # Packed 4-bit weights count as their real number of values: same totals as full precision.
    full, _ = policy(tiny_dir)
    assert count_parameters(model) == count_parameters(full)

    perturb_lora_b(model)
    out = forward_backward(model, tok)
    assert torch.isfinite(out.loss)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_tiny_name_builds_without_a_directory():
    import bitsandbytes as bnb

    model, tok = load_policy(ModelConfig("tiny", quantization="none", lora_r=2), device="cpu")
    assert model.get_base_model().config.model_type == "qwen2" and len(tok) == model.get_base_model().config.vocab_size
    model, _ = load_policy(ModelConfig("tiny:llama", quantization="nf4", lora_r=2), device="cpu")
    base = model.get_base_model()
    assert base.config.model_type == "llama"
    assert isinstance(base.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)


def test_all_linear_vs_explicit_targets(tiny_dir):
    model, _ = policy(tiny_dir, lora_target_modules="all-linear")
    assert lora_modules(model) == ALL_LINEAR  # not lm_head
    model, _ = policy(tiny_dir, lora_target_modules=["q_proj", "v_proj"])
    assert lora_modules(model) == {"q_proj", "v_proj"}
    r, hidden, kv = 4, 64, 32  # tiny defaults: 4 heads of 16, 2 KV heads
    per_layer = r * (hidden + hidden) + r * (hidden + kv)  # A: r x in, B: out x r
    assert count_parameters(model)[0] == 2 * per_layer


def test_bfloat16_on_cpu_warns_and_still_runs(tiny_dir):
    with pytest.warns(UserWarning, match="float32"):
        model, tok = policy(tiny_dir, quantization="nf4", compute_dtype="bfloat16")
    base = model.get_base_model()
    assert base.model.embed_tokens.weight.dtype == torch.bfloat16  # nothing upcast to float32
    assert model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.dtype == torch.float32
    forward_backward(model, tok)


# ---------------------------------------------------------------------------------------------- reference model
def test_reference_model_is_the_base_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    model, tok = policy(tiny_dir)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)  # plain, never adapted
    model.eval()
    enc = batch(tok)
    with torch.no_grad():
        base_logits = fresh(**enc).logits  # [B, L, V]
        torch.testing.assert_close(model(**enc).logits, base_logits)  # B = 0: the adapter is the identity
        perturb_lora_b(model)
        adapted = model(**enc).logits
        assert (adapted - base_logits).abs().max() > 1e-3
        with reference_model(model) as ref:
            torch.testing.assert_close(ref(**enc).logits, base_logits)
        torch.testing.assert_close(model(**enc).logits, adapted)  # adapter back on
        with pytest.raises(RuntimeError), reference_model(model):
            raise RuntimeError("inside")
        torch.testing.assert_close(model(**enc).logits, adapted)  # back on after an exception too
    with pytest.raises(TypeError, match="LoRA adapter"), reference_model(fresh):
        pass


# ---------------------------------------------------------------------------------------------- checkpoints
def test_trainable_state_dict_round_trip(tiny_dir):
    model, _ = policy(tiny_dir)
    perturb_lora_b(model)
    sd = trainable_state_dict(model)
    lora_names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert sorted(sd) == sorted(lora_names)
    assert sum(t.numel() for t in sd.values()) == count_parameters(model)[0]
    assert set(sd) <= set(model.state_dict())

    other, _ = policy(tiny_dir)
    load_trainable_state_dict(other, sd)
    for name, p in other.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, sd[name]), name
    perturb_lora_b(model, seed=2)  # the dict is a copy, not a view
    assert torch.equal(dict(other.named_parameters())[lora_names[1]], sd[lora_names[1]])

    missing = dict(sd)
    del missing[lora_names[0]]
    with pytest.raises(KeyError, match="1 missing") as err:
        load_trainable_state_dict(other, missing)
    assert lora_names[0] in str(err.value)
    with pytest.raises(KeyError, match="unexpected.*model.embed_tokens"):
        load_trainable_state_dict(other, {**sd, "base_model.model.model.embed_tokens.weight": torch.zeros(1)})
    wider, _ = policy(tiny_dir, lora_r=8)
    with pytest.raises(ValueError, match="lora_r"):
        load_trainable_state_dict(wider, sd)


def test_gradient_checkpointing_gives_identical_grads(tiny_dir):
    grads, state = [], None
    for checkpointing in (False, True):
        model, tok = policy(tiny_dir, gradient_checkpointing=checkpointing, lora_dropout=0.0)
        assert model.get_base_model().is_activation_checkpointing == checkpointing
        perturb_lora_b(model)
        if state is None:
            state = trainable_state_dict(model)
        else:  # the same adapter weights in both runs
            load_trainable_state_dict(model, state)
        forward_backward(model, tok)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------- config and errors
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lora_r", 0),
        ("lora_r", -4),
        ("lora_alpha", 0),
        ("lora_dropout", 1.0),
        ("quantization", "int8"),
        ("compute_dtype", "fp8"),
        ("lora_target_modules", "q_proj"),
        ("lora_target_modules", []),
        ("name_or_path", ""),
        ("name_or_path", "tiny:gpt2"),
        ("attn_implementation", ""),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ModelConfigError, match=f"ModelConfig.{field}"):
        ModelConfig(**{field: value})


def test_nf4_without_bitsandbytes_points_to_quantization_none(monkeypatch):
    cfg = ModelConfig("tiny", quantization="none")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(ModelConfigError, match="`quantization: none`"):
        ModelConfig("tiny", quantization="nf4")
    cfg.quantization = "nf4"
    with pytest.raises(ModelConfigError, match="`quantization: none`"):
        load_policy(cfg, device="cpu")


def test_missing_local_path_names_it(tmp_path):
    missing = tmp_path / "models" / "qwen"
    with pytest.raises(ModelLoadError, match="no such directory") as err:
        policy(missing)
    assert str(missing) in str(err.value) and "local directory" in str(err.value)
    with pytest.raises(ModelLoadError, match="no config.json") as err:
        policy(tmp_path)  # exists, but holds no model
    assert str(tmp_path) in str(err.value)


def test_unreachable_hub_says_how_to_pass_a_local_dir(monkeypatch):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(ModelLoadError, match="--local-dir") as err:
        load_policy(ModelConfig("Qwen/Qwen2.5-Math-1.5B", quantization="none"), device="cpu")
    assert "'Qwen/Qwen2.5-Math-1.5B'" in str(err.value) and "name_or_path: DIR" in str(err.value)


def test_config_is_a_cli_and_yaml_schema():
    from jsonargparse import ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # as the recipes' parser does
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ModelConfig, "model")
    args = ["--model.name_or_path", "tiny", "--model.lora_r", "8", "--model.lora_target_modules", "[q_proj, v_proj]"]
    cfg = parser.parse_args(args)
    model_cfg = parser.instantiate(cfg).model
    assert model_cfg.lora_r == 8 and model_cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert "LoRA rank" in parser.format_help()  # field docstrings become the help text
    with pytest.raises(Exception, match="quantization"):
        parser.parse_args(["--model.quantization", "int8"])


# ---------------------------------------------------------------------------------------------- small helpers
def test_eos_token_ids_gathers_every_end_token():
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok)
    endoftext, im_end = tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")
    assert eos_token_ids(tok, model) == [endoftext, im_end]
    assert eos_token_ids(tok, model, chat_end=False) == [endoftext]
    model.generation_config.eos_token_id = [im_end, endoftext]  # the Instruct models' order is kept
    assert eos_token_ids(tok, model) == [im_end, endoftext]


def test_compute_dtype_auto():
    assert resolve_compute_dtype("auto", "cpu") == torch.float32
    assert resolve_compute_dtype("float16", "cpu") == torch.float16
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        assert resolve_compute_dtype("auto", "cuda") == torch.bfloat16


def test_real_architecture_config_builds_qwen25_math_15b_shapes():
    from transformers import AutoModelForCausalLM

    config = real_architecture_config()
    heads = (config.num_attention_heads, config.num_key_value_heads)
    assert (config.hidden_size, config.num_hidden_layers, heads) == (1536, 28, (12, 2))
    assert (config.intermediate_size, config.vocab_size, config.max_position_embeddings) == (8960, 151936, 4096)
    assert config.tie_word_embeddings and config.rms_norm_eps == 1e-6 and not config.use_sliding_window
    with torch.device("meta"):  # shapes only
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.model.embed_tokens.weight.numel()
    assert total == 1_543_714_304  # the published 1.54 B
    assert round((total - embedding) / 1e9, 2) == 1.31  # the published 1.31 B non-embedding
    with pytest.raises(ValueError, match="known"):
        real_architecture_config("Qwen/Qwen9-1T")
