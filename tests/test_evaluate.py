"""The evaluate recipe: a paper's table from one command, resumable, with intervals checked against plain loops."""

import json
import random

import numpy as np
import pytest

from reprokit.metrics.functional import stratified_bootstrap_interval
from reprokit.recipes import evaluate, one_shot


def _samples(run_dir):
    return (run_dir / "samples.jsonl").read_text().splitlines()


def test_one_shot_protocol_table_names_six_benchmarks_and_a_second_call_samples_nothing(tmp_path, data_dir):
    run_dir = tmp_path / "eval"
    argv = ["--models", "base=tiny", "--limit", "2", "--max_new_tokens", "16", "--run_dir", str(run_dir),
            "--data_dir", str(data_dir), "--progress_bar", "false"]
    results = evaluate.main(argv)
    table = (run_dir / "table.md").read_text()
    for name in ("math500", "aime24", "aime25", "amc23", "minerva_math", "olympiadbench", "average"):
        assert name in table, name
    # greedy benchmarks 1 sample, AIME/AMC 8 samples: 2 problems each
    assert len(_samples(run_dir)) == 2 * (1 + 8 + 8 + 1 + 1 + 8)
    assert (run_dir / "table.csv").is_file() and (run_dir / "table.png").is_file()
    assert json.loads((run_dir / "results.json").read_text())["protocol"] == "one-shot-rlvr"
    before = _samples(run_dir)
    again = evaluate.main(argv)
    assert _samples(run_dir) == before, "a second call sampled again"
    assert json.loads(json.dumps(again["rows"])) == json.loads(json.dumps(results["rows"]))
    with pytest.raises(SystemExit, match="other settings"):
        evaluate.main([*argv[:-6], "--max_new_tokens", "8", "--run_dir", str(run_dir), "--data_dir", str(data_dir)])


def test_cpu_world_protocol_compares_the_worlds_base_with_the_one_shot_checkpoint(tmp_path):
    run = tmp_path / "one_shot"
    one_shot.run(["--preset", "cpu", "--run_dir", str(run), "--max_steps", "4", "--run.checkpoint_every", "2",
                  "--run.val_every", "0", "--eval.limit", "10", "--run.progress_bar", "false"])
    out = tmp_path / "eval"
    results = evaluate.main([
        "--models", "base=world", f"rl={run}", "--protocol", "cpu-world", "--limit", "40", "--run_dir", str(out),
        "--world.careful_marker", "#", "--progress_bar", "false",
    ])
    assert list(results["rows"]) == ["base", "rl.step-2", "rl.step-4"], "a run folder stands for its checkpoints"
    assert results["problems"] == {"world_test": 40}
    base = results["rows"]["base"]["accuracy"]["world_test"]
    assert 0.0 < base[0] < 1.0 and base[1] <= base[0] <= base[2]
    step4 = results["rows"]["rl.step-4"]
    assert step4["difference"]["world_test"][0] == pytest.approx(step4["accuracy"]["world_test"][0] - base[0], abs=1e-9)
    best = results["best checkpoint"]["rl"]
    assert best in ("rl.step-2", "rl.step-4") and "(best average)" in (out / "table.md").read_text()
    every = evaluate.expand_run_folders({"rl": str(run)}, every=2)
    assert list(every) == ["rl.step-4"], "every 2nd checkpoint of 2, the last always"


def test_stratified_bootstrap_is_the_average_of_group_means_resampled_within_groups():
    rng = random.Random(0)
    groups = [[rng.random() for _ in range(n)] for n in (5, 30, 12)]
    paired = [[rng.random() for _ in g] for g in groups]
    point, low, high = stratified_bootstrap_interval(groups, paired, resamples=400, seed=3)
    assert point == pytest.approx(np.mean([np.mean(g) - np.mean(p) for g, p in zip(groups, paired)]))
    # A plain loop with the same draws: each group in turn, its problems with replacement from itself only.
    draws = np.random.default_rng(3)
    totals = np.zeros(400)
    for g, p in zip(groups, paired):
        diff = np.array(g) - np.array(p)
        idx = draws.integers(0, len(diff), size=(400, len(diff)))
        totals += np.array([diff[row].mean() for row in idx])
    want_low, want_high = np.quantile(totals / 3, [0.025, 0.975])
    assert (low, high) == pytest.approx((want_low, want_high))
    assert low < point < high
