"""Every training path computes the gradient it claims, each checked against a reference computed another way:
NF4 on CPU against plain float32 layers, micro-batch splits against a per-token Python loop, two DDP processes
against one process on both rollouts, resumed runs against uninterrupted ones."""

import contextlib
import copy
import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from torch.optim.optimizer import register_optimizer_step_pre_hook

from reprokit.algorithms import token_logprobs_and_entropy
from reprokit.algorithms.schedules import LRSchedule
from reprokit.policy import ModelConfig, load_policy, load_trainable_state_dict
from reprokit.sampling import MergedCopy, generate
from reprokit.data import Validation
from reprokit.training.grpo import (
    GRPOConfig,
    GRPOModule,
    LossConfig,
    Rollout,
    RolloutConfig,
    TrainConfig,
    accumulate_gradients,
    logprob_passes,
    mini_batch_plan,
    with_focal_mask,
)
from reprokit.training.trainer import RunConfig

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
import recorders  # noqa: E402


def _lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """|got - want| / |want| over all tensors together (one flattened gradient vector)."""
    assert got.keys() == want.keys()
    diff = torch.cat([(got[k].double() - want[k].double()).flatten() for k in want])
    ref = torch.cat([want[k].double().flatten() for k in want])
    assert ref.norm() > 0, "the reference gradient is zero: the check would prove nothing"
    return float(diff.norm() / ref.norm())


def _randomize_lora_b(model, seed: int = 0) -> None:
    """peft starts B at 0, which makes every A gradient 0; a nonzero B makes the check see every layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# ---------------------------------------------------------------------------------------------- 1. NF4 on CPU
def _float32_reference(policy):
    """The same network with every NF4 weight dequantized into a plain float32 layer and the same LoRA adapter."""
    from peft import get_peft_model

    adapter = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.zero_()  # so the merged copy holds the dequantized base alone
    plain = MergedCopy(policy, dtype=torch.float32).model
    load_trainable_state_dict(policy, adapter)
    reference = get_peft_model(plain, copy.deepcopy(policy.peft_config["default"]))
    load_trainable_state_dict(reference, adapter)
    assert not any("Linear4bit" in type(m).__name__ for m in reference.modules())
    return reference.train()


def _chunked_logprob_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """The GRPO update's scoring path: decoder hidden states, then the chunked log-prob / entropy pass."""
    base = model.get_base_model()
    hidden = base.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state  # [1, L, H]
    logp, entropy = token_logprobs_and_entropy(
        hidden[:, :-1], base.get_output_embeddings(), ids[:, 1:], temperature=0.7, chunk_size=5
    )  # [1, L-1], [1, L-1]
    return -logp.sum() - 0.1 * entropy.sum()


def _full_logits_loss(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits.float()  # [1, L, V]
    return -logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).sum()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("loss_fn", [_chunked_logprob_loss, _full_logits_loss], ids=["chunked", "logits"])
def test_nf4_lora_gradient_after_a_rollout_equals_fresh_and_float32_reference(arch, loss_fn):
    policy, tokenizer = load_policy(
        ModelConfig(name_or_path=f"tiny:{arch}", quantization="nf4", lora_r=8, gradient_checkpointing=False)
    )
    _randomize_lora_b(policy)
    reference = _float32_reference(policy)
    ids = tokenizer(["12+34= 46, so 7*8 is"], return_tensors="pt").input_ids  # [1, L]

    def grads(model):
        model.zero_grad(set_to_none=True)
        loss_fn(model, ids).backward()
        return _lora_grads(model)

    fresh = grads(policy)
    prompt = tokenizer(["1+1="], return_tensors="pt")
    generate(policy, tokenizer, prompt.input_ids, prompt.attention_mask, n=2, max_new_tokens=4, temperature=1.0)
    after = grads(policy)
    want = grads(reference)
    assert _relative_error(fresh, want) < 1e-4, "NF4 gradient differs from the float32 reference"
    assert _relative_error(after, want) < 1e-4, "the gradient changed after a rollout (eval-mode forward)"
    for name in want:  # layer by layer too: the bug left the last layer exact and every other one wrong
        assert torch.allclose(after[name], want[name], rtol=1e-3, atol=1e-6), name


# ---------------------------------------------------------------------------------------------- 3. micro-batches
def _hand_rollout(tokenizer, model) -> Rollout:
    """8 responses to 3 left-padded prompts: 3 truncated (no EOS, masked with mask_truncated), lengths 1 to 7."""
    g = torch.Generator().manual_seed(1)
    prompts = ["1+2=", "12*3-4=", "7="]
    rows_prompt = [0, 0, 0, 1, 1, 1, 2, 2]
    lengths = [7, 3, 7, 1, 5, 7, 2, 4]  # 7 = max_new_tokens: truncated
    width_l = max(len(tokenizer(p).input_ids) for p in prompts)
    T = 7
    vocab = len(tokenizer)
    n = len(rows_prompt)
    sequences = torch.full((n, width_l + T), tokenizer.pad_token_id)
    attention = torch.zeros(n, width_l + T, dtype=torch.long)
    completion = torch.full((n, T), tokenizer.pad_token_id)
    for row, (p, length) in enumerate(zip(rows_prompt, lengths)):
        ids = tokenizer(prompts[p]).input_ids
        sequences[row, width_l - len(ids) : width_l] = torch.tensor(ids)
        attention[row, width_l - len(ids) : width_l] = 1
        tokens = torch.randint(5, vocab, (length,), generator=g)
        if length < T:
            tokens[-1] = tokenizer.eos_token_id
        completion[row, :length] = tokens
        sequences[row, width_l : width_l + length] = tokens
        attention[row, width_l : width_l + length] = 1
    mask = attention[:, width_l:].clone()
    mask[torch.tensor(lengths) == T] = 0  # mask_truncated
    advantages = torch.randn(n, generator=g)
    return Rollout(
        sequences=sequences, attention_mask=attention, prompt_len=width_l, response_ids=completion, loss_mask=mask,
        advantages=advantages,
    )


def _flat(cfg: GRPOConfig) -> SimpleNamespace:
    """Every rollout, loss and train setting by its name (the reference reads them without their sections)."""
    return SimpleNamespace(**vars(cfg.rollout), **vars(cfg.loss), **vars(cfg.train))


def _backward(loss: torch.Tensor) -> None:
    loss.backward()


def _token_loop_gradient(model, ro: Rollout, cfg: GRPOConfig, old_logp: torch.Tensor | None = None, focal_groups=None,
                         reference=None):
    """The whole batch's objective built one token at a time from full logits, then one backward.

    ``old_logp`` ``[N, T]``: the behaviour log-probs of an off-policy update (None: on-policy, ratio 1).
    ``focal_groups``: lists of rows that each choose their own top tokens (the micro-batches of focal_scope
    micro_batch); None = the whole batch chooses together. ``reference``: the KL reference model (None: the
    policy with its adapter off)."""
    cfg = _flat(cfg)
    model.zero_grad(set_to_none=True)
    position_ids = (ro.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ro.sequences, attention_mask=ro.attention_mask, position_ids=position_ids).logits
    logits = logits[:, ro.prompt_len - 1 : -1].float() / cfg.temperature  # [N, T, V]
    with torch.no_grad(), contextlib.nullcontext() if reference is not None else model.disable_adapter():
        ref_model = model if reference is None else reference
        ref_logits = ref_model(input_ids=ro.sequences, attention_mask=ro.attention_mask, position_ids=position_ids).logits
        ref_logits = ref_logits[:, ro.prompt_len - 1 : -1].float() / cfg.temperature
    n, t_len = ro.loss_mask.shape
    tok = {}  # (b, t) -> (logp, entropy, ref_logp)
    for b in range(n):
        for t in range(t_len):
            if ro.loss_mask[b, t]:
                logprobs = logits[b, t].log_softmax(-1)
                entropy = -(logprobs.exp() * logprobs).sum()
                tok[b, t] = (logprobs[ro.response_ids[b, t]], entropy, ref_logits[b, t].log_softmax(-1)[ro.response_ids[b, t]])
    # Forking tokens: the ceil(rho * N) highest entropies of the batch (or of each group of rows), earlier tokens
    # first among ties.
    focal = set()
    for rows in focal_groups or [range(n)]:
        ranked = sorted((bt for bt in tok if bt[0] in rows), key=lambda bt: -float(tok[bt][1].detach()))
        focal |= set(ranked[: math.ceil(cfg.focal_fraction * len(ranked))])

    def pg_token(b, t):
        logp = tok[b, t][0]
        ratio = torch.exp(logp - (logp.detach() if old_logp is None else old_logp[b, t]))
        a = float(ro.advantages[b])
        clipped = ratio.clamp(1 - cfg.epsilon_low, 1 + cfg.epsilon_high)
        return -torch.minimum(ratio * a, clipped * a)

    def kl_token(b, t):
        d = tok[b, t][2] - tok[b, t][0]
        return torch.exp(d) - d - 1

    def aggregate(value, tokens):
        if cfg.loss_agg == "token-mean":
            return sum(value(b, t) for b, t in tokens) / max(1, len(tokens))
        per_row = []
        for b in range(n):
            row = [value(bb, t) for bb, t in tokens if bb == b]
            if cfg.loss_agg == "seq-mean-token-mean":
                if row:
                    per_row.append(sum(row) / len(row))
            else:
                per_row.append(sum(row) / cfg.max_new_tokens if row else torch.zeros(()))
        return sum(per_row) / max(1, len(per_row))

    pg_tokens = sorted(focal)
    valid_tokens = sorted(tok)
    loss = aggregate(pg_token, pg_tokens)
    loss = loss - cfg.entropy_coef * aggregate(lambda b, t: tok[b, t][1], valid_tokens)
    loss = loss + cfg.kl_coef * aggregate(kl_token, valid_tokens)
    loss.backward()
    return _lora_grads(model), focal


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_gradient_is_the_same_for_every_micro_batch_size_and_equals_a_token_loop(loss_agg):
    torch.manual_seed(0)  # peft draws LoRA A from the global generator: fix it so the batch has the rows it needs
    model, tokenizer = load_policy(ModelConfig(name_or_path="tiny", quantization="none", lora_r=4, gradient_checkpointing=False))
    _randomize_lora_b(model)
    cfg = GRPOConfig.of(
        group_size=2, temperature=0.8, max_new_tokens=7, loss_agg=loss_agg, focal_fraction=0.3,
        mask_truncated=True, kl_coef=0.05, entropy_coef=0.01, epsilon_high=0.28,
    )
    ro = _hand_rollout(tokenizer, model)
    module = GRPOModule(model, tokenizer, cfg, reward_fn=recorders.share_of_a)
    want, focal = _token_loop_gradient(model, ro, cfg)
    focal_rows = {b for b, _ in focal}
    empty = [b for b in range(ro.num_rows) if ro.loss_mask[b].any() and b not in focal_rows]
    assert empty, "the batch should hold a response with valid tokens but none above the focal threshold"
    assert (ro.loss_mask.sum(-1) == 0).sum() == 3, "the batch should hold masked (truncated) responses"
    for micro_batch_size in (1, 3, ro.num_rows):
        cfg.train.micro_batch_size = micro_batch_size
        scored = logprob_passes(module.policy, ro, behaviour=False)
        model.zero_grad(set_to_none=True)
        accumulate_gradients(module.policy, scored, _backward)
        got = _lora_grads(model)
        assert _relative_error(got, want) < 1e-5, f"micro_batch_size={micro_batch_size}"
        kept = {(int(b), int(t)) for b, t in with_focal_mask(scored, cfg.loss.focal_fraction)[0].pg_mask.nonzero()}
        assert kept == focal


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-sum-norm"])
def test_focal_scope_micro_batch_keeps_each_micro_batchs_top_tokens_by_its_own_forward(loss_agg):
    """The released 80/20 code: each micro-batch keeps the top ceil(rho * n) of its n valid tokens, by the entropy of
    the forward that takes the gradient; the reference ranks each micro-batch's tokens in a plain loop."""
    torch.manual_seed(0)
    model, tokenizer = load_policy(ModelConfig(name_or_path="tiny", quantization="none", lora_r=4, gradient_checkpointing=False))
    _randomize_lora_b(model)
    ro = _hand_rollout(tokenizer, model)
    for micro_batch_size in (1, 3, ro.num_rows):
        cfg = GRPOConfig.of(
            group_size=2, temperature=0.8, max_new_tokens=7, loss_agg=loss_agg, focal_fraction=0.3,
            focal_scope="micro_batch", mask_truncated=True, kl_coef=0.05, entropy_coef=0.01, epsilon_high=0.28,
            micro_batch_size=micro_batch_size,
        )
        module = GRPOModule(model, tokenizer, cfg, reward_fn=recorders.share_of_a)
        groups = [range(b, min(b + micro_batch_size, ro.num_rows)) for b in range(0, ro.num_rows, micro_batch_size)]
        want, focal = _token_loop_gradient(model, ro, cfg, focal_groups=groups)
        scored = logprob_passes(module.policy, ro, behaviour=False)
        assert scored.entropy is None, "micro_batch scope takes no rollout-time entropy"
        model.zero_grad(set_to_none=True)
        metrics = accumulate_gradients(module.policy, scored, _backward)
        assert _relative_error(_lora_grads(model), want) < 1e-5, f"micro_batch_size={micro_batch_size}"
        kept = sum(math.ceil(0.3 * int(ro.loss_mask[list(g)].sum()) - 1e-9) for g in groups)
        assert len(focal) == kept and metrics["focal/kept_frac"] == pytest.approx(kept / int(ro.loss_mask.sum()))
    whole_batch = _token_loop_gradient(model, ro, dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, focal_scope="batch")))[1]
    per_row = _token_loop_gradient(model, ro, cfg, focal_groups=[[b] for b in range(ro.num_rows)])[1]
    assert whole_batch != per_row, "the rollout should tell the scopes apart"


def _updates_of(model, tokenizer, cfg: GRPOConfig, ro: Rollout, start: dict, module=None) -> tuple[Rollout, list[dict], GRPOModule]:
    """Every optimizer update of one rollout step from adapter ``start``: the weights it began from and its gradient."""
    load_trainable_state_dict(model, start)
    module = module or GRPOModule(model, tokenizer, cfg, reward_fn=recorders.share_of_a)
    plan = mini_batch_plan(ro, cfg)
    scored = logprob_passes(module.policy, ro, behaviour=True)
    seen = []

    def before_step(optimizer, args, kwargs):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        seen.append(({n: p.detach().clone() for n, p in named}, _lora_grads(model)))

    handle = register_optimizer_step_pre_hook(before_step)
    try:
        metrics = module.update(scored, plan)
    finally:
        handle.remove()
    assert metrics["update/optimizer_steps"] == len(seen) == cfg.train.num_iterations * len(plan)
    return scored, seen, module


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_every_mini_batch_update_has_the_token_loop_gradient_of_its_mini_batch(loss_agg):
    """4 groups, 2 per update, 2 passes: 4 optimizer updates. The first is on-policy (ratio exactly 1); each later one
    equals a per-token loop over its mini-batch's rows with the rollout's old log-probs, at the weights it started
    from, for micro-batch sizes 1, 3 and all."""
    torch.manual_seed(0)
    model, tokenizer = load_policy(ModelConfig(name_or_path="tiny", quantization="none", lora_r=4, gradient_checkpointing=False))
    _randomize_lora_b(model)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ro = _hand_rollout(tokenizer, model)
    cfg = GRPOConfig.of(
        group_size=2, temperature=0.8, max_new_tokens=7, loss_agg=loss_agg, mask_truncated=True, kl_coef=0.05,
        entropy_coef=0.01, epsilon_high=0.28, mini_batch_size=2, num_iterations=2, lr=0.05, weight_decay=0.0,
        max_grad_norm=None,
    )
    rows = [torch.arange(0, 4), torch.arange(4, 8)]  # two groups of two responses per update
    for micro_batch_size in (1, 3, ro.num_rows):
        cfg.train.micro_batch_size = micro_batch_size
        scored, seen, module = _updates_of(model, tokenizer, cfg, ro, start)
        assert len(seen) == 4
        for index, (weights, got) in enumerate(seen):
            load_trainable_state_dict(model, weights)
            part = scored.select(rows[index % 2])
            old = None if index == 0 else part.old_logp
            want, _ = _token_loop_gradient(model, part, cfg, old_logp=old)
            assert _relative_error(got, want) < 1e-5, f"micro_batch_size={micro_batch_size}, update {index}"
        deviations = [m["ratio/deviation_max"] for m in module.last_updates]
        assert deviations[0] == 0.0, "the first update is on-policy: its ratio is exactly 1"
        assert min(deviations[1:]) > 0.0, "a later update is off-policy: its ratio leaves 1"
        assert max(m["clip/frac"] for m in module.last_updates[1:]) > 0.0, "the clip should act in a later update"


def test_clip_higher_changes_the_off_policy_updates_and_not_the_first():
    """With one on-policy update, epsilon_high 0.2, 0.28 and 5.0 give one gradient (the ratio is 1); with mini-batches
    the later updates' ratios leave [0.8, 1.2] and clip-higher changes their gradients."""
    torch.manual_seed(0)
    model, tokenizer = load_policy(ModelConfig(name_or_path="tiny", quantization="none", lora_r=4, gradient_checkpointing=False))
    _randomize_lora_b(model)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ro = _hand_rollout(tokenizer, model)
    ro = dataclasses.replace(ro, advantages=ro.advantages.abs())  # positive advantages: the upper clip is the one that acts
    grads = {}
    for eps in (0.2, 0.28, 5.0):
        cfg = GRPOConfig.of(
            group_size=2, temperature=0.8, max_new_tokens=7, mask_truncated=True, kl_coef=0.0, entropy_coef=0.0,
            epsilon_high=eps, mini_batch_size=2, num_iterations=2, lr=0.05, weight_decay=0.0, max_grad_norm=None,
        )
        _, seen, module = _updates_of(model, tokenizer, cfg, ro, start)
        grads[eps] = [g for _, g in seen]
        if eps == 0.28:
            assert max(m["clip/high_frac"] for m in module.last_updates[1:]) > 0, "the upper clip never acted"
    for eps in (0.28, 5.0):
        assert _relative_error(grads[eps][0], grads[0.2][0]) < 1e-7, "the on-policy update cannot depend on the clip"
    assert _relative_error(grads[0.28][-1], grads[5.0][-1]) > 1e-3, "clip-higher should change an off-policy update"


def test_full_fine_tuning_takes_the_kl_against_a_frozen_copy_of_the_base():
    """Every weight trains; the reference is the base as loaded, untouched by the updates. After a first mini-batch
    update has moved the policy off the base, the second update's gradient (KL included) equals the token loop's
    with the base as reference."""
    torch.manual_seed(0)
    model, tokenizer = load_policy(ModelConfig(name_or_path="tiny", quantization="none", gradient_checkpointing=False), finetune="full")
    assert all(p.requires_grad for p in model.parameters()) and not hasattr(model, "disable_adapter")
    base = copy.deepcopy(model)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    ro = _hand_rollout(tokenizer, model)
    cfg = GRPOConfig.of(
        group_size=2, temperature=0.8, max_new_tokens=7, mask_truncated=True, kl_coef=0.5, entropy_coef=0.01,
        mini_batch_size=2, lr=1e-2, weight_decay=0.0, max_grad_norm=None, finetune="full",
    )
    module = GRPOModule(model, tokenizer, cfg, reward_fn=recorders.share_of_a)
    scored, seen, module = _updates_of(model, tokenizer, cfg, ro, start, module=module)
    assert len(seen) == 2
    for name, p in module.reference.named_parameters():
        assert not p.requires_grad and torch.equal(p, dict(base.named_parameters())[name]), f"the reference moved: {name}"
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters()), "no weight moved"
    weights, got = seen[1]
    load_trainable_state_dict(model, weights)
    part = scored.select(torch.arange(4, 8))
    want, _ = _token_loop_gradient(model, part, cfg, old_logp=part.old_logp, reference=base)
    assert _relative_error(got, want) < 1e-5
    no_kl = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, kl_coef=0.0))
    without_kl, _ = _token_loop_gradient(model, part, no_kl, old_logp=part.old_logp, reference=base)
    assert _relative_error(got, without_kl) > 1e-3, "the KL term should matter once the policy has left the base"


# ---------------------------------------------------------------------------------------------- 2. DDP
def _run(module: str, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-m", f"reprokit.recipes.{module}", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=timeout,
    )
    assert result.returncode == 0, f"{module} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


TINY_ONE_SHOT = [
    "--preset", "cpu", "--model.name_or_path", "tiny", "--data.examples", "pi1", "--prompt.template", "none",
    "--prompt.cot_suffix", "false", "--prompt.max_prompt_length", "1024", "--eval.benchmarks", "[]",
    "--rollout.max_new_tokens", "16", "--data.prompts_per_step", "4", "--rollout.group_size", "4",
    "--train.micro_batch_size", "3", "--run.val_every", "0", "--run.progress_bar", "false",
    "--run.callbacks", "[recorders:StepRecorder]", "--train.max_grad_norm", "null",
]


def _records(run_dir: Path, rank: int) -> dict[int, dict]:
    out = {}
    for path in (run_dir / "record").glob(f"rank{rank}-batch*.pt"):
        out[int(path.stem.split("batch")[1])] = torch.load(path, weights_only=False)
    return dict(sorted(out.items()))


def _single_process_gradient(run_dir: Path, records: list[dict], reward, update: int = 0, rows=None) -> dict[str, torch.Tensor]:
    """One process, the run's config, the adapter the update started from, every rank's rollout (or each rank's
    ``rows`` of it: its share of a mini-batch) concatenated; updates after the first take the rollout's old
    log-probs."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    model, tokenizer = load_policy(ModelConfig(**cfg["model"]), finetune=cfg["train"]["finetune"])
    sections = GRPOConfig(RolloutConfig(**cfg["rollout"]), LossConfig(**cfg["loss"]), TrainConfig(**cfg["train"]), Validation(**cfg["eval"]))
    module = GRPOModule(model, tokenizer, sections, reward_fn=reward)  # full fine-tuning: the base is the reference
    load_trainable_state_dict(model, records[0]["updates"][update]["adapter"])
    parts = []
    for record in records:
        fields = dict(record["rollout"], pg_mask=None, entropy=None)
        ro = Rollout(**fields)
        if ro.num_real_rows:  # a placeholder row (a process with nothing kept) is no response
            parts.append(ro.select(torch.arange(ro.num_real_rows) if rows is None else rows))
    joined = Rollout.concat(parts, pad_id=tokenizer.pad_token_id)
    ro = logprob_passes(module.policy, joined, behaviour=False)
    if update > 0:
        ro = dataclasses.replace(ro, old_logp=joined.old_logp)
    model.zero_grad(set_to_none=True)
    accumulate_gradients(module.policy, ro, _backward)
    return _lora_grads(model)


def test_two_process_one_shot_ranks_sample_differently_and_match_one_process(tmp_path):
    run_dir = tmp_path / "ddp"
    _run("one_shot", TINY_ONE_SHOT + [
        "--rollout.reward", "recorders:share_of_a", "--run.strategy", "ddp", "--run.devices", "2", "--max_steps", "2",
        "--run_dir", str(run_dir),
    ])
    ranks = [_records(run_dir, 0), _records(run_dir, 1)]
    assert sorted(ranks[0]) == sorted(ranks[1]) == [0, 1]
    for batch in (0, 1):
        r0, r1 = ranks[0][batch], ranks[1][batch]
        assert r0["example_ids"] == r1["example_ids"] == ["pi1", "pi1"], "each process takes 2 of the 4 copies of pi1"
        a, b = r0["rollout"]["response_ids"], r1["rollout"]["response_ids"]
        assert a.shape != b.shape or not torch.equal(a, b), "both processes sampled the same responses"
        for name in r0["grads"]:
            assert torch.equal(r0["grads"][name], r1["grads"][name]), "processes disagree on the averaged gradient"
        want = _single_process_gradient(run_dir, [r0, r1], recorders.share_of_a)
        assert _relative_error(r0["grads"], want) < 1e-5, f"batch {batch}: the 2-process gradient is not the 1-process one"


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_two_process_mini_batch_updates_each_match_one_process_on_both_ranks_mini_batch(tmp_path, finetune):
    """4 prompts, mini-batches of 2 (1 group of each process), 2 passes: 4 updates, each the 1-process gradient of
    both processes' share of its mini-batch, the later ones against the rollout's old log-probs. Full fine-tuning
    takes its KL against a frozen copy of the base on each process."""
    run_dir = tmp_path / "ddp-mini"
    extra = ["--train.finetune", "full", "--model.quantization", "none", "--loss.kl_coef", "0.5", "--train.lr", "0.002"]
    _run("one_shot", TINY_ONE_SHOT + [
        "--rollout.reward", "recorders:share_of_a", "--run.strategy", "ddp", "--run.devices", "2", "--max_steps", "1",
        "--train.mini_batch_size", "2", "--train.num_iterations", "2", "--train.lr", "0.02", "--run_dir", str(run_dir),
        *(extra if finetune == "full" else []),
    ])
    r0, r1 = _records(run_dir, 0)[0], _records(run_dir, 1)[0]
    assert len(r0["updates"]) == len(r1["updates"]) == 4
    assert r0["metrics"]["update/optimizer_steps"] == 4
    group = 4
    for update in range(4):
        rows = torch.arange(group) + group * (update % 2)  # each process's mini-batch: one of its two groups
        got = r0["updates"][update]["grads"]
        for name in got:
            assert torch.equal(got[name], r1["updates"][update]["grads"][name]), "processes disagree on the gradient"
        want = _single_process_gradient(run_dir, [r0, r1], recorders.share_of_a, update=update, rows=rows)
        assert _relative_error(got, want) < 1e-5, f"update {update}: the 2-process gradient is not the 1-process one"
    assert r0["metrics"]["ratio/deviation_max"] > 0, "the later updates are off-policy"


def test_two_process_focal_run_with_an_uninformative_rank_finishes_and_matches_one_process(tmp_path, data_dir):
    run_dir = tmp_path / "focal"
    _run("focal_tokens", [
        "--preset", "cpu", "--data.data_dir", str(data_dir), "--rollout.reward", "recorders:share_of_a_except_on_rank_one",
        "--rollout.dynamic_sampling", "true", "--train.micro_batch_size", "3", "--run.strategy", "ddp",
        "--run.devices", "2", "--max_steps", "2", "--run.callbacks", "[recorders:StepRecorder]",
        "--train.max_grad_norm", "null", "--run_dir", str(run_dir), "--run.progress_bar", "false",
    ], timeout=180)
    ranks = [_records(run_dir, 0), _records(run_dir, 1)]
    trained = [b for b, r in ranks[0].items() if r["grads"] is not None]
    assert len(trained) == 2
    for batch in trained:
        r0, r1 = ranks[0][batch], ranks[1][batch]
        assert r1["rollout"]["real_rows"] == 0, "process 1 had no informative group: it runs a placeholder"
        assert r0["metrics"]["focal/kept_frac"] == pytest.approx(0.2, abs=0.02)
        want = _single_process_gradient(run_dir, [r0, r1], recorders.share_of_a_except_on_rank_one)
        assert _relative_error(r0["grads"], want) < 1e-5


def _processes_of(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_stuck_two_process_run_stops_when_told_and_leaves_no_process(tmp_path, data_dir, how):
    """Process 1 hangs in its reward, so process 0 waits in a collective where Python cannot act on a signal."""
    run_dir = tmp_path / f"stuck-{how}"
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    args = [
        sys.executable, "-m", "reprokit.recipes.focal_tokens", "--preset", "cpu", "--data.data_dir", str(data_dir),
        "--rollout.reward", "recorders:share_of_a_then_hang_on_rank_one", "--run.strategy", "ddp", "--run.devices", "2",
        "--max_steps", "100", "--run.callbacks", "[recorders:StepRecorder]", "--run_dir", str(run_dir),
        "--run.progress_bar", "false", "--run.stop_timeout_s", "5",
    ]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list((run_dir / "record").glob("rank0-batch0.pt")) and time.time() < deadline:
            time.sleep(0.5)
        assert list((run_dir / "record").glob("rank0-batch0.pt")), "the run never finished its first step"
        time.sleep(3)  # process 0 is now waiting for process 1 in the second step
        assert len(_processes_of(str(run_dir))) == 2
        start = time.time()
        proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        proc.wait(timeout=60)
        while _processes_of(str(run_dir)) and time.time() - start < 30:
            time.sleep(0.5)
        assert not _processes_of(str(run_dir)), "a process of the run is left behind"
        assert time.time() - start < 20
    finally:
        if proc.poll() is None:
            proc.kill()
        for line in _processes_of(str(run_dir)):
            os.kill(int(line.split()[0]), signal.SIGKILL)


def test_recipes_refuse_spawned_strategies_naming_ddp():
    for strategy in ("ddp_spawn", "ddp_fork"):
        with pytest.raises(ValueError, match="--run.strategy ddp"):
            RunConfig(strategy=strategy)


# ---------------------------------------------------------------------------------------------- 4. resume
def _resume_from(run_dir: Path, step: int, into: Path, module: str, extra: list[str]) -> Path:
    into.mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", into / "config.yaml")
    (into / "checkpoints").mkdir()
    shutil.copy(run_dir / "checkpoints" / f"step-{step}.ckpt", into / "checkpoints" / "last.ckpt")
    config = (into / "config.yaml").read_text().replace(str(run_dir), str(into))
    (into / "config.yaml").write_text(config)
    _run(module, ["--run_dir", str(into), "--resume", *extra])
    return into


@pytest.mark.parametrize("recipe", ["one_shot", "one_shot mini-batches", "focal_tokens"])
def test_a_run_resumed_at_any_checkpoint_trains_on_what_an_uninterrupted_run_does(tmp_path, data_dir, recipe):
    steps = 4
    if recipe.startswith("one_shot"):
        args = TINY_ONE_SHOT + ["--rollout.reward", "recorders:share_of_a"]
        if "mini" in recipe:  # 2 updates per pass, 2 passes: the step count stays the rollout steps'
            args += ["--train.mini_batch_size", "2", "--train.num_iterations", "2", "--train.lr_schedule", "linear"]
        recipe = "one_shot"
    else:  # a full training set: the prompts of every step come from the shuffled epoch order
        args = [
            "--preset", "cpu", "--data.data_dir", str(data_dir), "--rollout.reward", "recorders:share_of_a",
            "--run.callbacks", "[recorders:StepRecorder]", "--run.progress_bar", "false",
            "--data.path", str(TESTS / "fixtures" / "resume_train.jsonl"), "--data.question_field", "question",
            "--data.answer_field", "answer", "--prompt.drop_long_prompts", "false",
        ]
    whole = tmp_path / "whole"
    _run(recipe, args + ["--max_steps", str(steps), "--run.checkpoint_every", "1", "--run_dir", str(whole)])
    want = _records(whole, 0)
    assert len(want) == steps
    assert sorted(p.name for p in (whole / "checkpoints").glob("step-*.ckpt")) == [f"step-{k}.ckpt" for k in range(1, steps + 1)]
    final = torch.load(whole / "checkpoints" / f"step-{steps}.ckpt", weights_only=False)["state_dict"]
    for k in range(1, steps):
        resumed = _resume_from(whole, k, tmp_path / f"from-{k}", recipe, ["--max_steps", str(steps)])
        got = _records(resumed, 0)
        assert sorted(got) == list(range(k, steps)), f"resumed at {k}: trained batches {sorted(got)}"
        for batch, record in got.items():
            assert record["example_ids"] == want[batch]["example_ids"], f"resumed at {k}: other prompts at batch {batch}"
            assert torch.equal(record["rollout"]["response_ids"], want[batch]["rollout"]["response_ids"]), (
                f"resumed at {k}: other responses at batch {batch}"
            )
        end = torch.load(resumed / "checkpoints" / f"step-{steps}.ckpt", weights_only=False)["state_dict"]
        for name in final:
            assert torch.allclose(end[name], final[name], rtol=0, atol=1e-7), f"resumed at {k}: adapter {name} differs"


def test_lr_schedule_extended_on_resume_continues_without_a_jump(tmp_path):
    run_dir = tmp_path / "lr"
    lr = 1e-3
    args = TINY_ONE_SHOT + ["--rollout.reward", "recorders:share_of_a", "--train.lr", str(lr), "--train.lr_schedule", "linear"]
    _run("one_shot", args + ["--max_steps", "3", "--run_dir", str(run_dir)])
    _run("one_shot", ["--run_dir", str(run_dir), "--resume", "--max_steps", "6"])
    used = [r["metrics"]["lr"] for r in _records(run_dir, 0).values()]
    # 3 steps of a linear decay to 0 at step 3, then the rest of the decay (from 1/3) spread over steps 3..6.
    want = [lr * f for f in (1, 2 / 3, 1 / 3, 1 / 4, 1 / 6, 1 / 12)]
    assert used == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_schedule_extension_is_continuous_and_ends_at_the_new_length(schedule):
    for warmup, stop in ((0, 40), (5, 3), (5, 60)):
        ref = LRSchedule(schedule, warmup=warmup, total=100)
        extended = copy.deepcopy(ref)
        extended.extend(total=200, step=stop)
        for step in range(stop):  # nothing before the resume changes
            assert extended(step) == pytest.approx(ref(step))
        factors = [extended(s) for s in range(stop - 1, 201)]
        assert all(b <= a + 1e-12 for a, b in zip(factors[max(0, warmup - stop + 1):], factors[max(0, warmup - stop + 2):]))
        assert factors[-1] == pytest.approx(0.0, abs=1e-12) and extended(199) > 0
        jumps = [abs(b - a) for a, b in zip(factors, factors[1:])]
        assert max(jumps[max(0, warmup - stop + 1):]) < 0.02, "the extended schedule jumps"


# ---------------------------------------------------------------------------------------------- 5. dynamic sampling
def test_dynamic_sampling_refills_to_prompts_per_step_and_logs_rounds(tmp_path, data_dir):
    common = [
        "--preset", "cpu", "--data.data_dir", str(data_dir), "--rollout.reward", "recorders:share_of_a",
        "--rollout.dynamic_sampling", "true", "--data.prompts_per_step", "4", "--rollout.max_new_tokens", "12",
        "--max_steps", "3", "--run.callbacks", "[recorders:StepRecorder]", "--run.progress_bar", "false",
    ]
    _run("focal_tokens", common + ["--rollout.max_refill_rounds", "6", "--run_dir", str(tmp_path / "refill")])
    _run("focal_tokens", common + ["--rollout.max_refill_rounds", "0", "--run_dir", str(tmp_path / "drop")])
    refill = [r for r in _records(tmp_path / "refill", 0).values() if r["rollout"] is not None]
    drop = [r for r in _records(tmp_path / "drop", 0).values() if r["rollout"] is not None]
    group = 4
    for r in refill:
        rounds = r["metrics"]["rollout/rounds"]
        groups = r["rollout"]["sequences"].shape[0] // group
        assert groups == 4 or rounds == 7, f"{groups} informative groups after {rounds} rounds"
        rewards = r["rollout"]["rewards"].view(-1, group)
        assert (rewards.max(-1).values > rewards.min(-1).values).all(), "an uninformative group was kept"
    assert any(r["metrics"]["rollout/rounds"] > 1 for r in refill), "no step needed a refill: the test shows nothing"
    assert all(r["metrics"]["rollout/rounds"] == 1 for r in drop)
    assert any(r["rollout"]["sequences"].shape[0] // group < 4 for r in drop)
