"""Causal-LM training: masked loss, the SFT data module, LoRA, LR schedules, and sampling a model it trained."""

import json
import math

import lightning as L
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from reprokit.sampling import generate, seeded_generator
from reprokit.training.sft import CausalLMModule, SFTDataModule, masked_lm_loss, read_pairs
from reprokit.worlds import WorldConfig, build_tokenizer

PAIRS = [("1+2\n", "1+2=3\n\\boxed{13}"), ("4*3+1\n", "4*3=2\n2+1=3\n\\boxed{423}"), ("9\n", "\\boxed{9}")]


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    # Models here are tiny: a second thread speeds nothing up, and when other jobs hold the cores its
    # busy-waiting makes a 20-step fit take 30 s instead of 2 s.
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(WorldConfig())


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=128, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return Qwen2ForCausalLM(cfg)


def one_batch(tok, pairs=PAIRS, **kw):
    dm = SFTDataModule(pairs, tok, batch_size=8, seed=0, **kw)
    dm.setup()
    return dm.collate([dm.dataset[i] for i in range(len(dm.dataset))])


def test_batch_is_right_padded_with_prompt_masked(tok):
    batch = one_batch(tok)
    eos = tok.eos_token_id
    for row, (prompt, response) in enumerate(PAIRS):
        ids = tok(prompt + response, add_special_tokens=False)["input_ids"] + [eos]
        n, p = len(ids), len(prompt)
        assert batch["input_ids"][row, :n].tolist() == ids
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert batch["labels"][row, :p].eq(-100).all() and batch["labels"][row, n:].eq(-100).all()
        assert batch["labels"][row, p:n].tolist() == ids[p:]


def test_loss_equals_hand_computed_masked_cross_entropy(tok):
    model = tiny_model(tok)
    batch = one_batch(tok)
    module = CausalLMModule(model)
    logits = module(batch["input_ids"], batch["attention_mask"])
    loss, n_tokens = masked_lm_loss(logits, batch["labels"])

    terms = []
    for row, (prompt, response) in enumerate(PAIRS):
        ids = tok(prompt + response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        for t in range(len(prompt), len(ids)):  # every response token and EOS, predicted from position t-1
            logp = torch.log_softmax(logits[row, t - 1].double(), dim=-1)
            terms.append(-logp[ids[t]].item())
    assert n_tokens.item() == len(terms)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_pairs_from_jsonl_and_bad_rows(tok, tmp_path):
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS))
    assert read_pairs(path) == PAIRS
    assert torch.equal(one_batch(tok, pairs=path)["labels"], one_batch(tok)["labels"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "1\n", "response": "x"}) + "\n" + json.dumps({"prompt": "2\n"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2.*response"):
        read_pairs(bad)
    with pytest.raises(ValueError, match="max_length"):
        one_batch(tok, max_length=3)


def fit(module, tok, pairs, steps, batch_size=4):
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, datamodule=SFTDataModule(pairs, tok, batch_size=batch_size, seed=0))
    return trainer


def test_training_reduces_loss_and_logs(tok):
    model = tiny_model(tok)
    batch = one_batch(tok)
    module = CausalLMModule(model, lr=1e-2, warmup_steps=2)
    with torch.no_grad():
        before = masked_lm_loss(module(batch["input_ids"], batch["attention_mask"]), batch["labels"])[0].item()
    trainer = fit(module, tok, PAIRS * 4, steps=20)
    with torch.no_grad():
        after = masked_lm_loss(module(batch["input_ids"], batch["attention_mask"]), batch["labels"])[0].item()
    assert after < 0.5 * before
    assert {"train/loss", "train/lr", "train/tokens_per_s"} <= set(trainer.callback_metrics)
    assert module.tokens_seen > 0


def test_lora_trains_adapters_only(tok):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_model(tok), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    module = CausalLMModule(model, lr=1e-2)
    fit(module, tok, PAIRS * 2, steps=3)
    optimized = {id(p) for g in module.optimizers().optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert optimized == {id(params[n]) for n in lora}
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert any(not torch.equal(params[n], v) for n, v in lora.items())


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_lr_schedule(tok, schedule):
    module = CausalLMModule(tiny_model(tok), lr=1.0, warmup_steps=4, lr_schedule=schedule, min_lr_ratio=0.1)
    trainer = L.Trainer(accelerator="cpu", max_steps=20, logger=False, enable_progress_bar=False)
    module.trainer = trainer
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    lambdas = [sched.lr_lambdas[0](s) for s in range(21)]
    assert lambdas[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    if schedule == "constant":
        assert lambdas[4:] == pytest.approx([1.0] * 17)
    else:
        expected = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 16)) for s in range(4, 21)]
        assert lambdas[4:] == pytest.approx(expected)
    with pytest.raises(ValueError, match="lr_schedule"):
        CausalLMModule(tiny_model(tok), lr_schedule="linear")


def sample_completions(model, tok, prompts, n=1, temperature=1.0, max_new_tokens=12, seed=0):
    """The kit's one sampler, as the world's pretraining evaluates its base: texts per prompt."""
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    comps = generate(
        model, tok, enc["input_ids"], enc["attention_mask"], n=n, max_new_tokens=max_new_tokens,
        temperature=temperature, generator=seeded_generator("cpu", seed),
    )
    return [comps.texts[i * n : (i + 1) * n] for i in range(len(prompts))]


def test_sample_completions(tok):
    model = tiny_model(tok)
    prompts = ["1+2\n", "4*3+1*7+2\n"]
    out = sample_completions(model, tok, prompts, n=3, max_new_tokens=12, seed=0)
    assert [len(o) for o in out] == [3, 3]
    assert all(tok.eos_token not in c and len(c) <= 12 for o in out for c in o)
    assert out == sample_completions(model, tok, prompts, n=3, max_new_tokens=12, seed=0)
    # left padding: greedy output of a prompt does not depend on the longer prompt beside it
    alone = sample_completions(model, tok, prompts[:1], n=1, temperature=0, max_new_tokens=12)
    together = sample_completions(model, tok, prompts, n=1, temperature=0, max_new_tokens=12)
    assert together[0] == alone[0]
    assert model.training  # sampling restores the training mode it found

    # a model that always emits EOS first yields empty completions
    always_eos = torch.nn.Linear(32, len(tok))
    with torch.no_grad():
        always_eos.weight.zero_()
        always_eos.bias.fill_(-10.0)
        always_eos.bias[tok.eos_token_id] = 10.0
    model.lm_head = always_eos
    assert sample_completions(model, tok, prompts, n=2, max_new_tokens=5, seed=0) == [["", ""], ["", ""]]
