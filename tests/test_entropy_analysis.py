"""entropy_analysis end to end on CPU: token entropies, their statistics, the high-entropy token table and the
overlap of top-20% positions between a base and the checkpoints of a training run, against plain references."""

import csv
import json
from collections import Counter

import numpy as np
import pytest
import torch
import yaml

from reprokit.evaluation import Sample, SampleWriter
from reprokit.policy import ModelConfig, load_policy, trainable_state_dict
from reprokit.recipes import entropy_analysis
from reprokit.tiny import build_tiny_model, build_tiny_tokenizer

QS = (0.1, 0.25, 0.5, 0.75, 0.8, 0.9, 0.95, 0.99)
WORLD_PROMPT = ["--problems", "world:test", "--template", "{question}\n", "--cot_suffix", "false"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny model folder whose output layer is scaled up, so its entropies spread over (0, 1) nats
    instead of sitting at log(vocabulary) like an untrained model's."""
    path = tmp_path_factory.mktemp("base")
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(6.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def training_run(base_dir, tmp_path_factory):
    """A training run folder as the GRPO recipes leave it: config.yaml with the model section and adapter-only
    checkpoints/step-N.ckpt; the adapters move further from zero with the step."""
    run = tmp_path_factory.mktemp("run")
    section = dict(name_or_path=str(base_dir), quantization="none", lora_r=4, lora_alpha=8, gradient_checkpointing=False)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": section}))
    model, _ = load_policy(ModelConfig(**section), device="cpu")
    (run / "checkpoints").mkdir()
    generator = torch.Generator().manual_seed(0)
    noise = {k: torch.randn(v.shape, generator=generator) for k, v in trainable_state_dict(model).items()}
    for step, scale in ((2, 0.05), (4, 0.6)):
        state = {f"model.{k}": v * scale for k, v in noise.items()}
        torch.save({"state_dict": state, "global_step": step}, run / "checkpoints" / f"step-{step}.ckpt")
    return run


def naive_entropies(model, prompt_ids, response_ids, temperature):
    """Entropy of softmax(logits / T) at each response position from the full float64 logits."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # [L, V]
    logits = logits[len(prompt_ids) - 1 : len(prompt_ids) + len(response_ids) - 1] / temperature
    p = logits.softmax(-1)
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1).numpy()


def top_mask(values, rho=0.2):
    return values >= np.quantile(values, 1 - rho)


def test_sampled_responses_stats_tokens_and_overlap(base_dir, training_run, tmp_path):
    out = tmp_path / "out"
    stats = entropy_analysis.main(
        ["--model", str(base_dir), "--quantization", "none", *WORLD_PROMPT, "--limit", "6", "--n", "2",
         "--temperature", "1.0", "--max_new_tokens", "24", "--run_dir", str(out),
         "--run_dir_of_training", str(training_run)]
    )
    for name in ("entropy_stats.json", "entropy_hist.png", "top_tokens.csv", "top_tokens.png", "token_entropy.npz",
                 "responses.jsonl", "overlap.csv", "overlap.png", "overlap_entropy.npz"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "entropy_stats.json").read_text()) == json.loads(json.dumps(stats))

    saved = np.load(out / "token_entropy.npz")
    values, token_ids, response = saved["entropy"].astype(np.float64), saved["token_id"], saved["response"]
    assert stats["num_responses"] == 12 and stats["num_tokens"] == values.size > 0

    # The entropies themselves, against full-softmax float64 logits of the same model on the same tokens.
    tokenizer = build_tiny_tokenizer()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    for i in range(3):
        prompt_ids = tokenizer(rows[i]["prompt"])["input_ids"]
        mine = values[response == i]
        expected = naive_entropies(model, prompt_ids, token_ids[response == i].tolist(), 1.0)
        np.testing.assert_allclose(mine, expected, atol=2e-5)

    # Summary statistics against numpy on the same values.
    for q in QS:
        assert stats[f"p{round(100 * q)}"] == pytest.approx(np.quantile(values, q), abs=1e-9)
    assert stats["mean"] == pytest.approx(values.mean())
    assert stats["frac_low"] == pytest.approx(np.mean(values < 0.01))
    assert stats["top_rho_threshold"] == pytest.approx(np.quantile(values, 0.8), abs=1e-9)

    # The high-entropy token table: counts recomputed from the saved values.
    high = top_mask(values)
    expected_counts = Counter(token_ids[high].tolist())
    with (out / "top_tokens.csv").open() as f:
        table = list(csv.DictReader(f))
    assert {int(r["token_id"]): int(r["count"]) for r in table} == dict(expected_counts)
    assert [int(r["count"]) for r in table] == sorted((int(r["count"]) for r in table), reverse=True)
    everywhere = Counter(token_ids.tolist())
    for r in table:
        assert float(r["share"]) == pytest.approx(int(r["count"]) / high.sum())
        assert float(r["high_rate"]) == pytest.approx(int(r["count"]) / everywhere[int(r["token_id"])])

    # Overlap per checkpoint: the same base tokens scored by each checkpoint, against a plain set computation.
    with (out / "overlap.csv").open() as f:
        overlap = list(csv.DictReader(f))
    assert [int(r["step"]) for r in overlap] == [0, 2, 4]
    by_step = np.load(out / "overlap_entropy.npz")
    for r in overlap[1:]:
        other = by_step[f"step_{r['step']}"].astype(np.float64)
        assert other.shape == values.shape
        a, b = top_mask(values), top_mask(other)
        assert float(r["overlap"]) == pytest.approx((a & b).sum() / a.sum())
    assert float(overlap[0]["overlap"]) == 1.0
    assert float(overlap[2]["overlap"]) < 1.0, "a larger adapter changed no top-20% position"
    assert not np.allclose(by_step["step_4"], values), "the checkpoint's adapter was not applied"


def test_reads_pass_at_k_samples_instead_of_sampling(base_dir, tmp_path):
    # A pass_at_k run folder: samples.jsonl beside the config.yaml whose data section rebuilds the prompts.
    pk = tmp_path / "pass_at_k"
    pk.mkdir()
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"question": q, "answer": "0"}) + "\n" for q in ("3+4", "5*2+1")))
    config = {"eval": {"models": ["base=tiny", "rl=tiny"]},
              "data": {"benchmarks": [], "path": str(problems), "name": "mine", "template": "Q: {question}\n",
                       "cot_suffix": False}}
    (pk / "config.yaml").write_text(yaml.safe_dump(config))
    texts = {("mine/0", 0): "3+4=7", ("mine/0", 1): "\\boxed{7}", ("mine/0", 2): "unused",
             ("mine/1", 0): "5*2=0", ("mine/1", 1): "5*2=10\n10+1=1"}
    with SampleWriter(pk / "samples.jsonl") as writer:
        for (pid, index), text in texts.items():
            for model in ("base", "rl"):
                writer.write([Sample(model, "mine", pid, index, text if model == "base" else "x", 0.0, len(text),
                                     truncated=(pid, index) == ("mine/1", 1))])

    out = tmp_path / "out"
    stats = entropy_analysis.main(
        ["--model", str(base_dir), "--samples", str(pk / "samples.jsonl"), "--n", "2", "--temperature", "0.6",
         "--run_dir", str(out)]
    )
    rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert [(r["example_id"], r["response"]) for r in rows] == [
        ("mine/0", "3+4=7"), ("mine/0", "\\boxed{7}"), ("mine/1", "5*2=0"), ("mine/1", "5*2=10\n10+1=1")
    ]
    assert rows[0]["prompt"] == "Q: 3+4\n"
    # Character tokenizer: one token per character, plus the end token unless the response was truncated.
    assert [r["num_tokens"] for r in rows] == [6, 10, 6, 13]
    assert stats["num_tokens"] == 35 and stats["temperature"] == 0.6


def test_summary_against_numpy():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(0, 0.02, 500), rng.exponential(0.8, 300)])
    stats = entropy_analysis.entropy_summary(torch.tensor(values, dtype=torch.float32), rho=0.2)
    values32 = values.astype(np.float32).astype(np.float64)
    for q in QS:
        assert stats[f"p{round(100 * q)}"] == pytest.approx(np.quantile(values32, q), abs=1e-9)
    assert stats["frac_low"] == pytest.approx(np.mean(values32 < 0.01))
    assert 0.2 < stats["frac_low"] < 0.5
    assert stats["top_rho_count"] == int(top_mask(values32).sum())


def test_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="rho"):
        entropy_analysis.main(["--preset", "cpu", "--rho", "0", "--run_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="no checkpoints/step-N.ckpt"):
        entropy_analysis.checkpoints_of(tmp_path, None)


def test_every_preset_parses():
    from reprokit.cli import PRESETS_DIR

    presets = sorted((PRESETS_DIR / "entropy_analysis").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"cpu", "qwen2.5-math-1.5b"}
    for preset in presets:
        opts, sampling, _ = entropy_analysis.parse_options(["--preset", preset.stem])
        assert sampling.n >= 1 and opts.rho == 0.2, preset
