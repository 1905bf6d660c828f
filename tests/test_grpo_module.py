"""GRPOModule end to end: the real recipe entry points on CPU, resuming, learning, and DDP with two processes."""

import dataclasses
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from reprokit.data import OneShotDataModule, Prompt
from reprokit.policy import ModelConfig, load_policy, trainable_state_dict
from reprokit.recipes import focal_tokens, one_shot
from reprokit.training.grpo import GRPOConfig, GRPOModule, LossConfig, rollout_metrics


def _quantized_base(model) -> dict[str, torch.Tensor]:
    """The frozen base's stored (4-bit packed) weights, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


def _tb_events(run_dir: Path) -> list[Path]:
    return list((run_dir / "tb").rglob("events.out.tfevents.*"))


def test_one_shot_cpu_preset_trains_lora_only_logs_checkpoints_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["--preset", "cpu", "--run_dir", str(run_dir), "--max_steps", "2", "--run.checkpoint_every", "2"]
    summary, trainer, module = one_shot.run(argv)
    assert trainer.global_step == 2 and summary["steps"] == 2
    # The preset trains the CPU world's base on one world problem and tests it on the world's test split.
    for when in ("before", "after"):
        assert 0.0 < summary[when]["val/world_test/pass@1"] < 1.0, summary[when]
        assert 0.0 < summary[when]["val/world_test/mode"] < 1.0, "the preset's world has a careful mode"
        point, low, high = summary["intervals"]["world_test"][when]
        assert low <= point <= high and point == pytest.approx(summary[when]["val/world_test/pass@1"], abs=1e-6)

    fresh, _ = load_policy(_cpu_model_config())  # the same base, adapter untrained
    trained_lora = trainable_state_dict(module.model)
    initial_lora = trainable_state_dict(fresh)
    assert trained_lora.keys() == initial_lora.keys() and trained_lora
    changed = [k for k in trained_lora if not torch.equal(trained_lora[k], initial_lora[k])]
    assert changed, "no LoRA weight changed after two GRPO steps"

    trained_base, initial_base = _quantized_base(module.model), _quantized_base(fresh)
    assert trained_base.keys() == initial_base.keys()
    assert any("weight" in k and trained_base[k].dtype == torch.uint8 for k in trained_base), "base is not 4-bit"
    for name in trained_base:
        assert torch.equal(trained_base[name], initial_base[name]), f"frozen base weight {name} changed"

    assert _tb_events(run_dir), "no TensorBoard event file"
    assert (run_dir / "config.yaml").is_file()
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file() and (run_dir / "checkpoints" / "step-2.ckpt").is_file()
    ckpt = torch.load(last, weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 2
    assert all("lora_" in k for k in ckpt["state_dict"]), "a checkpoint must hold only adapter weights"
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"] and "rng_state" in ckpt

    summary, trainer, module = one_shot.run(["--run_dir", str(run_dir), "--resume", "--max_steps", "3"])
    assert trainer.global_step == 3, "resume did not continue from step 2 to step 3"
    resumed = torch.load(last, weights_only=False, map_location="cpu")
    assert resumed["global_step"] == 3


def _cpu_model_config() -> ModelConfig:
    import yaml

    from reprokit import registry
    from reprokit.worlds import WorldConfig

    preset = yaml.safe_load((Path(one_shot.__file__).parents[2] / "presets" / "one_shot" / "cpu.yaml").read_text())
    registry.configure("world", WorldConfig(**preset["world"]))  # "world" names the preset's world
    return ModelConfig(**preset["model"])


def test_recipe_rejects_unknown_preset_and_bad_option_naming_them(tmp_path):
    with pytest.raises(SystemExit, match="no-such-preset"):
        one_shot.run(["--preset", "no-such-preset", "--run_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="focal_fraction"):
        LossConfig(focal_fraction=1.5)


def fraction_of_a(completions, answers, **fields):
    """An easy reward: the share of 'a' characters in the response."""
    return [sum(ch == "a" for ch in c) / max(1, len(c)) for c in completions]


def _confident_tiny_policy():
    """A tiny LoRA policy whose output layer is as confident as a trained model's.

    A random tiny model's tied embeddings (std 0.02) cap every logit near 0: with the head frozen, no adapter
    can make any token likely, so nothing could be learned. Scaling the embeddings gives logits of std ~1.
    """
    from peft import LoraConfig, get_peft_model

    from reprokit.tiny import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=0)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(4.0)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")), tokenizer


def test_grpo_raises_an_easy_reward_within_a_bounded_number_of_steps():
    L.seed_everything(0, verbose=False)
    model, tokenizer = _confident_tiny_policy()
    data = OneShotDataModule(tokenizer, examples="pi1", batch_size=4, prompt=Prompt(template="none", cot_suffix=False))
    cfg = GRPOConfig.of(
        group_size=8, temperature=1.0, max_new_tokens=8, micro_batch_size=32, lr=2e-2,
        kl_coef=0.0, entropy_coef=0.0, log_completions_every=0,
    )
    module = GRPOModule(model, tokenizer, cfg, reward_fn=fraction_of_a)
    rewards = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rewards.append(pl_module.last_metrics["reward/mean"])

    trainer = L.Trainer(
        max_steps=8, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, callbacks=[Record()], enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    first, last = rewards[0], np.mean(rewards[-3:])
    assert first < 0.1 and last > first + 0.3, f"mean reward went {first:.3f} -> {last:.3f} in {len(rewards)} steps"


class DumpFocal(Callback):
    """Writes each rank's valid rollout entropies, its focal threshold and its logged metrics."""

    def __init__(self, out: Path):
        self.out = out

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ro = pl_module.last_rollout
        record = {
            "entropies": ro.entropy[ro.loss_mask.bool()].tolist(),
            "threshold": pl_module.last_metrics["focal/threshold"],
            "reward_mean": pl_module.last_metrics["reward/mean"],
            "n_prompts": len(batch.example_ids),
            "logged_reward_mean": float(trainer.callback_metrics["reward/mean"]),
        }
        path = self.out / f"rank{trainer.global_rank}-step{trainer.global_step}.json"
        path.write_text(json.dumps(record))


def test_focal_threshold_and_metrics_are_global_under_two_process_ddp(tmp_path):
    model, tokenizer = load_policy(ModelConfig(name_or_path="tiny", quantization="none", lora_r=4, gradient_checkpointing=False))
    data = OneShotDataModule(tokenizer, examples="pi1,pi13", batch_size=4, prompt=Prompt(template="none", cot_suffix=False))
    cfg = GRPOConfig.of(
        group_size=4, temperature=1.0, max_new_tokens=12, micro_batch_size=3, lr=1e-3, kl_coef=0.0,
        entropy_coef=0.0, focal_fraction=0.2, log_completions_every=0,
    )
    module = GRPOModule(model, tokenizer, cfg, reward_fn=fraction_of_a)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, callbacks=[DumpFocal(tmp_path)],
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    for step in (1, 2):
        ranks = [json.loads((tmp_path / f"rank{r}-step{step}.json").read_text()) for r in (0, 1)]
        assert [r["n_prompts"] for r in ranks] == [2, 2], "each process should get half of the 4 prompts"
        pooled = np.array(ranks[0]["entropies"] + ranks[1]["entropies"])
        expected = np.sort(pooled)[::-1][math.ceil(0.2 * len(pooled)) - 1]  # the smallest of the top 20%
        for r in ranks:
            assert r["threshold"] == pytest.approx(expected, rel=1e-5, abs=1e-6), "threshold is not pooled over both processes"
        mean_of_ranks = (ranks[0]["reward_mean"] + ranks[1]["reward_mean"]) / 2
        for r in ranks:
            assert r["logged_reward_mean"] == pytest.approx(mean_of_ranks, abs=1e-6), "logged metrics are not reduced across processes"


def test_focal_tokens_cpu_preset_runs_through_its_entry_point(tmp_path, data_dir):
    summary, trainer, module = focal_tokens.run(
        ["--preset", "cpu", "--run_dir", str(tmp_path / "focal"), "--data.data_dir", str(data_dir), "--max_steps", "1"]
    )
    assert trainer.global_step == 1
    assert 0.0 < summary["train"]["focal/kept_frac"] <= 0.35
    assert (tmp_path / "focal" / "example_accuracy.json").is_file()


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for path in _tb_events(run_dir):
        events = EventAccumulator(str(path))
        events.Reload()
        if tag in events.Tags()["scalars"]:
            values += [(e.step, e.value) for e in events.Scalars(tag)]
    return sorted(values)


def test_cpu_preset_with_mini_batches_counts_rollout_steps_and_updates_off_policy(tmp_path):
    """8 prompts per step in mini-batches of 2: 4 optimizer updates per rollout step, 3 rollout steps in all; the
    step count of checkpoints and TensorBoard is the rollout steps', and the updates after the first are off-policy."""
    run_dir = tmp_path / "mini"
    summary, trainer, module = one_shot.run([
        "--preset", "cpu", "--run_dir", str(run_dir), "--train.mini_batch_size", "2", "--max_steps", "3",
        "--run.checkpoint_every", "1", "--run.val_every", "0", "--eval.limit", "20",
    ])
    assert trainer.global_step == 3 and summary["steps"] == 3
    assert len(module.last_updates) == 4 and module.last_metrics["update/optimizer_steps"] == 4
    assert [m["ratio/deviation_max"] for m in module.last_updates][0] == 0.0
    assert min(m["ratio/deviation_max"] for m in module.last_updates[1:]) > 0.0, "later updates should be off-policy"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.ckpt")) == ["step-1.ckpt", "step-2.ckpt", "step-3.ckpt"]
    logged = _scalars(run_dir, "update/optimizer_steps")
    assert [value for _, value in logged] == [4.0, 4.0, 4.0]
    assert len({step for step, _ in logged}) == 3 and max(step for step, _ in logged) <= 3


def always_right(completions, answers, **fields):
    return [1.0] * len(completions)


def test_overlong_punishment_shapes_the_advantage_but_not_which_groups_are_informative():
    from reprokit.algorithms import group_advantages, overlong_penalty

    torch.manual_seed(0)
    model, tokenizer = load_policy(ModelConfig(name_or_path="tiny", quantization="none", lora_r=4, gradient_checkpointing=False))
    data = OneShotDataModule(tokenizer, examples="pi1", batch_size=3, prompt=Prompt(template="none", cot_suffix=False))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    cfg = GRPOConfig.of(group_size=4, temperature=1.0, max_new_tokens=12, overlong_buffer=6, overlong_penalty=0.5, kl_coef=0.0)
    module = GRPOModule(model, tokenizer, cfg, reward_fn=always_right)
    ro, rounds = module.sample(batch)
    metrics = rollout_metrics(rounds, {})
    lengths = ro.attention_mask[:, ro.prompt_len :].sum(-1)  # [N] response tokens, the EOS included
    assert len(set(lengths.tolist())) > 1, "the responses should differ in length for the check to mean anything"
    shaped = 1.0 + overlong_penalty(lengths, 12, 6, 0.5)
    assert torch.allclose(ro.advantages, group_advantages(shaped, 4), atol=1e-6)
    assert metrics["reward/mean"] == 1.0 and metrics["reward/overlong_penalty"] == pytest.approx(float(shaped.mean() - 1))

    dynamic = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, dynamic_sampling=True))
    ro, rounds = GRPOModule(model, tokenizer, dynamic, reward_fn=always_right).sample(batch)
    metrics = rollout_metrics(rounds, {})
    assert ro.num_real_rows == 0 and metrics["groups/informative_frac"] == 0.0, "every group is right: none informative"


def test_responses_stop_at_the_chat_end_token_only_when_asked():
    model, tokenizer = load_policy(ModelConfig(name_or_path="tiny", quantization="none", lora_r=4, gradient_checkpointing=False))
    im_end, eos = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id
    kit = GRPOModule(model, tokenizer, GRPOConfig.of(kl_coef=0.0))
    paper = GRPOModule(model, tokenizer, GRPOConfig.of(kl_coef=0.0, stop_at_chat_end=False))
    assert im_end in kit.policy.eos_ids and eos in kit.policy.eos_ids
    assert paper.policy.eos_ids == [eos], "the papers' verl stops only at the generation config's EOS"


def test_a_second_run_into_the_same_run_dir_is_refused_and_the_first_run_loses_nothing(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["--preset", "cpu", "--run_dir", str(run_dir), "--max_steps", "1", "--run.val_every", "0", "--eval.limit", "10"]
    one_shot.run(argv)
    held = {p: p.read_bytes() for p in [*run_dir.rglob("*.ckpt"), *run_dir.rglob("events.out.tfevents.*"), run_dir / "config.yaml"]}
    assert any(p.suffix == ".ckpt" for p in held) and _tb_events(run_dir)
    with pytest.raises(SystemExit, match="--resume --run_dir"):
        one_shot.run(argv)
    after = {p: p.read_bytes() for p in [*run_dir.rglob("*.ckpt"), *run_dir.rglob("events.out.tfevents.*"), run_dir / "config.yaml"]}
    assert after == held, "the refused run changed the first run's files"


def test_a_run_whose_output_is_no_terminal_prints_plain_progress_lines_and_no_accelerator_census(tmp_path, capsys, caplog):
    import logging

    caplog.set_level(logging.INFO)
    one_shot.run(["--preset", "cpu", "--run_dir", str(tmp_path / "log"), "--max_steps", "3", "--run.log_every", "2",
                  "--run.val_every", "0", "--eval.limit", "10"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("[reprokit] step ")]
    assert [line.split(";")[0] for line in lines] == ["[reprokit] step 2/3", "[reprokit] step 3/3"]
    assert all("reward" in line and "min left" in line for line in lines)
    census = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("GPU available", "TPU available"))]
    assert not census and "GPU available" not in out
