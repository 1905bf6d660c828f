"""The CPU-world study end to end (--quick): every model trained and evaluated, and RL beats the base at pass@1."""

import json

from reprokit.recipes import tiny_world


def test_quick_study_runs_end_to_end_and_grpo_beats_the_base_at_pass_at_1(tmp_path):
    run_dir = tmp_path / "study"
    tiny_world.main(["--quick", "--run_dir", str(run_dir)])

    saved = json.loads((run_dir / "findings.json").read_text())
    for name in ("base", "grpo", "one_shot", "focal", "distill"):
        curve = saved[name]
        ks = sorted(int(k) for k in curve)
        assert ks[0] == 1 and ks[-1] == saved["study"]["eval_n"]
        values = [curve[str(k)] for k in ks]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert values == sorted(values), f"{name}: pass@k must not fall as k grows"
        assert saved["entropy"][name]["mean"] >= 0
        assert (run_dir / name / "tb").is_dir() or name == "base"
    for plot in ("pass_at_k.png", "entropy_histogram.png", "accuracy_histograms.png"):
        assert (run_dir / plot).stat().st_size > 1000
    assert set(saved["overlap_with_base"]["grpo"]["test"]) >= {"base_only", "both", "other_only"}
    assert saved["grpo"]["1"] > saved["base"]["1"], (
        f"GRPO pass@1 {saved['grpo']['1']:.3f} did not exceed the base's {saved['base']['1']:.3f}"
    )
