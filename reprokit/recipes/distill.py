"""Distillation: supervised fine-tuning on a stronger teacher's solutions (the baseline of Yue et al. 2025,
arXiv 2504.13837, §1 of PAPERS.md).

What it reproduces: RL with verifiable rewards sharpens what the base model already samples, so its pass@k
falls below the base's at large k; distillation, next-token training on a teacher's reasoning traces, can
add patterns the base never produces, and its pass@k curve lies above the base's at every k. This recipe
trains the student; ``python -m reprokit.recipes.pass_at_k`` then compares the curves (its checkpoints load
as ``RUN_DIR/checkpoints/last.ckpt`` with the run's ``config.yaml``).

Input: a JSONL file of teacher traces, one ``{"problem": ..., "response": ...}`` per line (rename the fields
with ``--data.problem_field`` / ``--data.response_field``). Each problem is rendered with the same prompt
options as the GRPO recipes (``--prompt.template``, ``--prompt.cot_suffix``), so the student is trained and
evaluated on identical prompts; the loss covers the response and the EOS that ends it, never the prompt.

Where it departs from the paper's distilled models (DeepSeek-R1-Distill-Qwen, full fine-tuning on 800k
R1 traces): LoRA adapters on a 4-bit base by default, and whatever traces you bring. ``--train.finetune
full`` trains every weight instead (needs ``--model.quantization none``); it is meant for the small models
of the CPU world, where a full copy per checkpoint costs little.

Run directory: ``config.yaml``, ``tb/`` (TensorBoard: loss, LR, tokens/s), ``train_log.csv`` and
``loss.png`` (loss per step), ``checkpoints/step-N.ckpt`` + ``last.ckpt`` (LoRA: the adapter only, never the
frozen base; full: every weight, plus model folders ``checkpoints/step-N/`` and ``checkpoints/last/``).
Either way the model spec ``RUN/checkpoints/last`` (or ``.../step-N``) evaluates the student:
``python -m reprokit.recipes.pass_at_k --models base=BASE distilled=RUN/checkpoints/last``.
``--resume --run_dir DIR`` continues from ``last.ckpt``. Without a CUDA device and without ``--preset`` it
runs the ``cpu`` preset (a tiny model) and says so.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from reprokit import plots, registry
from reprokit.cli import Recipe, gpu_preset, parse
from reprokit.data import Prompt, render_prompt
from reprokit.data.templates import uses_chat_markup
from reprokit.policy import ModelConfig, load_policy
from reprokit.training.checkpoints import adapter_state_dict, load_adapter_state_dict, restore_rng_state, rng_state
from reprokit.training.sft import CausalLMModule, SFTDataModule, read_pairs
from reprokit.training.trainer import RunConfig, build_trainer, last_checkpoint, refuse_to_overwrite


@dataclass
class DistillData:
    """The teacher traces and how problems become prompts."""

    file: str | None = None
    """JSONL file of teacher traces (a problem and a response field per line), or a registered trace set:
    `world:teacher_alt` = the CPU world's train split solved by its alternative teacher, written to
    RUN_DIR/teacher_traces.jsonl."""
    problem_field: str = "problem"
    """Field holding the problem text (the question, without template)."""
    response_field: str = "response"
    """Field holding the teacher's full response (reasoning and final answer)."""
    max_length: int = 4096
    """Longest training sequence (prompt + response) in tokens; longer responses lose their end."""
    batch_size: int = 8
    """Sequences per optimizer step on each device."""


@dataclass
class DistillTrain:
    """The optimizer and what it trains."""

    finetune: Literal["lora", "full"] = "lora"
    """lora: train the LoRA adapters of the model section on a frozen base; full: every weight (quantization none)."""
    lr: float = 1e-4
    """Peak AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices (not norms and biases)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """cosine: decay to min_lr_ratio * lr at max_steps; constant: no decay."""
    min_lr_ratio: float = 0.1
    """Floor of the cosine schedule as a fraction of lr."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"DistillTrain.lr={self.lr}: must be > 0")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"DistillTrain.max_grad_norm={self.max_grad_norm}: must be > 0 or null")


RECIPE = Recipe(
    name="distill",
    description=__doc__.split("\n\n")[0],
    sections={"run": RunConfig, "model": ModelConfig, "train": DistillTrain, "data": DistillData, "prompt": Prompt},
    resumable=True,
    default_preset=gpu_preset,
)


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe from the command line; returns the summary printed at the end."""
    return run(argv)[0]


def run(argv: list[str] | None = None) -> tuple[dict, L.Trainer, "DistillModule"]:
    """Parse, build, train; returns (summary, trainer, module) for callers that inspect the run."""
    parsed = parse(RECIPE, argv)
    parsed.print_notes()
    run_cfg: RunConfig = parsed.section("run")
    data: DistillData = parsed.section("data")
    train: DistillTrain = parsed.section("train")
    model_cfg: ModelConfig = parsed.section("model")
    if not data.file:
        raise SystemExit(
            "--data.file is not set: pass a JSONL file of teacher traces (fields problem, response), "
            "or world:teacher_alt for the CPU world's traces"
        )
    if train.finetune == "full" and model_cfg.quantization != "none":
        raise SystemExit(
            "--train.finetune full with --model.quantization nf4: 4-bit weights cannot be trained; "
            "set --model.quantization none, or keep --train.finetune lora"
        )
    run_dir = Path(run_cfg.run_dir)
    refuse_to_overwrite(run_dir, parsed.resume)
    config_path = parsed.save(run_dir)
    print(f"[reprokit] run directory {run_dir} (config saved to {config_path})")
    L.seed_everything(run_cfg.seed, workers=True, verbose=False)

    prefix, sep, rest = data.file.partition(":")
    if sep and registry.lookup("traces", prefix) and not Path(data.file).exists():
        # A registered trace set (world:teacher_alt) is written into the run directory, then read like any file.
        write = registry.resolve("traces", prefix, what="data.file")
        data.file = str(write(rest, run_dir / "teacher_traces.jsonl"))
    model, tokenizer = load_policy(model_cfg, finetune=train.finetune)
    pairs = teacher_pairs(data, parsed.section("prompt"), tokenizer)
    print(f"[reprokit] {len(pairs)} teacher traces from {data.file}")
    datamodule = SFTDataModule(
        pairs, tokenizer, batch_size=data.batch_size, max_length=data.max_length, seed=run_cfg.seed, add_eos=True
    )
    module = DistillModule(
        model,
        lora=train.finetune == "lora",
        max_grad_norm=train.max_grad_norm,
        lr=train.lr,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_steps,
        lr_schedule=train.lr_schedule,
        min_lr_ratio=train.min_lr_ratio,
    )
    callbacks = [LossLog(run_dir / "train_log.csv")]
    if train.finetune == "full":
        callbacks.append(ExportPretrained(run_dir / "checkpoints", tokenizer, run_cfg.checkpoint_every))
    trainer = build_trainer(run_cfg, run_dir, val_every=0, callbacks=callbacks)
    ckpt = last_checkpoint(run_dir) if parsed.resume else None
    if parsed.resume and ckpt is None:
        raise SystemExit(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)

    summary = {"steps": trainer.global_step, "final_loss": _last_loss(run_dir / "train_log.csv")}
    if trainer.is_global_zero:
        png = plots.loss_curve(_read_log(run_dir / "train_log.csv"), run_dir / "loss.png")
        print(f"[reprokit] finished {summary['steps']} steps, final loss {summary['final_loss']:.4f}")
        print(f"[reprokit] loss curve: {png}")
        print(f"[reprokit] TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
        print(f"[reprokit] checkpoints: {run_dir / 'checkpoints'} (evaluate with python -m reprokit.recipes.pass_at_k)")
    return summary, trainer, module


def teacher_pairs(data: DistillData, prompt: Prompt, tokenizer) -> list[tuple[str, str]]:
    """(prompt, response) pairs: each problem rendered exactly as the GRPO recipes and pass_at_k render it."""
    rows = read_pairs(data.file, data.problem_field, data.response_field)
    # Generation tokenizes plain-text prompts with the tokenizer's special tokens (a BOS for Llama-style
    # tokenizers) while SFT tokenizes them without; writing the BOS into the text makes both see the same ids.
    bos = ""
    if not uses_chat_markup(prompt.template) and tokenizer.bos_token is not None:
        with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
        if with_special and with_special[0] == tokenizer.bos_token_id:
            bos = tokenizer.bos_token
    return [
        (bos + render_prompt(problem, prompt.template, tokenizer, cot_suffix=prompt.cot_suffix), response)
        for problem, response in rows
    ]


class DistillModule(CausalLMModule):
    """CausalLMModule with adapter-only checkpoints for LoRA (as GRPOModule) and gradient clipping.

    A LoRA checkpoint holds ``state_dict`` = the adapter tensors keyed ``model.<name>``, the optimizer and
    scheduler, the step and the RNG states; never the frozen base. A full fine-tuning checkpoint is
    Lightning's usual one (every weight).
    """

    def __init__(self, model: torch.nn.Module, *, lora: bool = True, max_grad_norm: float | None = 1.0, **kwargs):
        super().__init__(model, **kwargs)
        self.lora = lora
        self.max_grad_norm = max_grad_norm
        # Adapter-only checkpoints: loading must not demand the frozen base weights.
        self.strict_loading = not lora

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if self.max_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.lora:
            checkpoint["state_dict"] = adapter_state_dict(self.model)
        checkpoint["rng_state"] = rng_state()
        checkpoint["finetune"] = "lora" if self.lora else "full"

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.lora:
            load_adapter_state_dict(self.model, checkpoint)
        restore_rng_state(checkpoint.get("rng_state"))


class ExportPretrained(Callback):
    """Full fine-tuning: the weights as a model folder (``save_pretrained``) beside each Lightning checkpoint.

    ``checkpoints/step-N/`` and, at the end, ``checkpoints/last/`` hold config.json, the weights and the
    tokenizer, so the model specs ``RUN/checkpoints/step-N`` and ``RUN/checkpoints/last`` load a full
    fine-tuning run exactly as they load a LoRA run's ``step-N.ckpt`` / ``last.ckpt``. Saved on the steps
    Lightning's checkpoint callback saves on (every ``every`` optimizer steps).
    """

    def __init__(self, folder: Path, tokenizer, every: int):
        self.folder = Path(folder)
        self.tokenizer = tokenizer
        self.every = max(1, every)

    def _export(self, model, name: str) -> None:
        target = self.folder / name
        model.save_pretrained(target)
        self.tokenizer.save_pretrained(target)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.is_global_zero and trainer.global_step % self.every == 0:
            self._export(pl_module.model, f"step-{trainer.global_step}")

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self._export(pl_module.model, "last")


class LossLog(Callback):
    """Appends (step, loss, lr) to a CSV after every optimizer step; a resumed run appends to the same file."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not trainer.is_global_zero:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        new = not self.path.is_file()
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "loss", "lr"])
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            writer.writerow([trainer.global_step, f"{float(loss):.6f}", f"{lr:.6g}"])


def _read_log(path: Path) -> dict[int, float]:
    """step -> loss; a step logged twice (a run resumed from an earlier checkpoint) keeps its latest value."""
    if not path.is_file():
        return {}
    with path.open() as f:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(f)}


def _last_loss(path: Path) -> float:
    log = _read_log(path)
    return log[max(log)] if log else math.nan


if __name__ == "__main__":
    main()
