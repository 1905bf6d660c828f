"""distill end to end on CPU: SFT on teacher traces with LoRA (adapter-only checkpoints that the evaluation loader
reads) or full fine-tuning, prompts rendered as the evaluation renders them, resuming, errors."""

import csv
import json

import pytest
import torch

from reprokit.data import Example, Prompt, tokenize_examples
from reprokit.evaluation import load_model_spec
from reprokit.policy import ModelConfig, load_policy, trainable_state_dict
from reprokit.recipes import distill

TEMPLATE = "Problem: {question}\nSolution:"


def write_traces(path, n=12):
    """Teacher traces with the user's own field names."""
    rows = [{"q": f"{a}+{b}", "sol": f" {a}+{b}={a + b}\n\\boxed{{{a + b}}}"} for a in range(1, 4) for b in range(1, 5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    return rows[:n]


def lora_args(traces, run_dir, *extra):
    return [
        "--preset", "cpu", "--data.file", str(traces), "--data.problem_field", "q", "--data.response_field", "sol",
        "--prompt.template", TEMPLATE, "--prompt.cot_suffix", "false", "--run_dir", str(run_dir), *extra,
    ]


def test_lora_distillation_checkpoints_load_for_evaluation_and_resume(tmp_path):
    traces = tmp_path / "traces.jsonl"
    write_traces(traces)
    run_dir = tmp_path / "run"
    summary, trainer, module = distill.run(lora_args(traces, run_dir, "--max_steps", "4", "--run.checkpoint_every", "2"))
    assert trainer.global_step == 4 and summary["steps"] == 4

    for name in ("config.yaml", "train_log.csv", "loss.png", "checkpoints/step-2.ckpt", "checkpoints/step-4.ckpt",
                 "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    with (run_dir / "train_log.csv").open() as f:
        log = list(csv.DictReader(f))
    assert [int(r["step"]) for r in log] == [1, 2, 3, 4]
    assert all(float(r["loss"]) > 0 for r in log)

    # Only the adapter moved, and only the adapter was saved.
    fresh, _ = load_policy(ModelConfig(name_or_path="tiny", quantization="none", lora_r=8, lora_alpha=16,
                                       gradient_checkpointing=False), device="cpu")
    trained, initial = trainable_state_dict(module.model), trainable_state_dict(fresh)
    assert any(not torch.equal(trained[k], initial[k]) for k in trained), "no LoRA weight changed"
    base_now = {n: p for n, p in module.model.named_parameters() if "lora_" not in n}
    base_fresh = dict((n, p) for n, p in fresh.named_parameters() if "lora_" not in n)
    assert all(torch.equal(base_now[n], base_fresh[n]) for n in base_fresh), "a frozen base weight changed"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"] and ckpt["finetune"] == "lora"

    # pass_at_k's loader reads the run as the student: base from config.yaml plus these adapter tensors.
    student, _ = load_model_spec(str(run_dir / "checkpoints" / "last"), quantization="none", device="cpu")
    loaded = {n: p for n, p in student.named_parameters() if "lora_" in n}
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)

    summary, trainer, _ = distill.run(["--run_dir", str(run_dir), "--resume", "--max_steps", "6"])
    assert trainer.global_step == 6
    with (run_dir / "train_log.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]


def test_prompts_match_what_evaluation_samples_from(tmp_path):
    traces = tmp_path / "traces.jsonl"
    rows = write_traces(traces, n=3)
    _, tokenizer = load_policy(ModelConfig(name_or_path="tiny", quantization="none", gradient_checkpointing=False), device="cpu")
    for template, cot in ((TEMPLATE, False), ("qwen25-math-cot", True)):
        data = distill.DistillData(file=str(traces), problem_field="q", response_field="sol")
        pairs = distill.teacher_pairs(data, Prompt(template=template, cot_suffix=cot), tokenizer)
        assert [response for _, response in pairs] == [r["sol"] for r in rows]
        examples = [Example(str(i), r["q"], "0") for i, r in enumerate(rows)]
        items = tokenize_examples(examples, tokenizer, template=template, cot_suffix=cot)
        for (prompt, _), item in zip(pairs, items):
            assert tokenizer(prompt, add_special_tokens=False)["input_ids"] == item.input_ids


def test_full_finetuning_trains_every_weight_and_exports_model_folders(tmp_path):
    traces = tmp_path / "traces.jsonl"
    write_traces(traces, n=8)
    run_dir = tmp_path / "full"
    _, _, module = distill.run(
        lora_args(traces, run_dir, "--train.finetune", "full", "--max_steps", "2", "--run.checkpoint_every", "2")
    )
    fresh, _ = load_policy(ModelConfig(name_or_path="tiny", quantization="none", gradient_checkpointing=False), device="cpu")
    fresh = fresh.merge_and_unload()
    now = dict(module.model.named_parameters())
    assert now.keys() == dict(fresh.named_parameters()).keys(), "full fine-tuning must train the plain model"
    changed = [n for n, p in fresh.named_parameters() if not torch.equal(p, now[n])]
    assert len(changed) == len(now), f"{len(now) - len(changed)} weights did not move"
    for name in ("step-2", "last"):
        student, _ = load_model_spec(str(run_dir / "checkpoints" / name), device="cpu")
        for n, p in student.named_parameters():
            assert torch.equal(p, now[n].detach()), n


def test_errors_name_the_option(tmp_path):
    with pytest.raises(SystemExit, match="--data.file"):
        distill.run(["--preset", "cpu", "--data.file", "", "--run_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="quantization none"):
        distill.run(["--preset", "cpu", "--data.file", "x.jsonl", "--train.finetune", "full", "--model.quantization",
                     "nf4", "--run_dir", str(tmp_path)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "1+1"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1.*response"):
        distill.run(["--preset", "cpu", "--data.file", str(bad), "--run_dir", str(tmp_path / "r")])


def test_every_preset_parses():
    from reprokit.cli import PRESETS_DIR, parse

    presets = sorted((PRESETS_DIR / "distill").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"cpu", "qwen2.5-math-1.5b", "consumer-12gb"}
    for preset in presets:
        init = parse(distill.RECIPE, ["--preset", preset.stem]).init
        assert init.train.finetune in ("lora", "full") and init.run.max_steps > 0, preset
