"""The CPU-world study end to end (--quick: the control world, the mode world p = 0.2 and the blind-spot world).

It checks the directions the full study shows with confidence (README, "What the CPU worlds show"):
- in the control world, full-data GRPO and focal-token GRPO raise test pass@1 (finding 1 and 4);
- in the mode world, 1-shot GRPO on the variance-rule example raises test pass@1 and the share of responses in
  the careful mode (finding 3);
- in the blind-spot world, SFT on fresh teacher traces solves test problems the base never solves and puts
  probability on the blind-spot facts, where GRPO with the same number of steps does not (finding 5).
Each change is paired over the same test problems, and "raises" means the lower end of its 95% bootstrap
interval is above 0.
"""

import json

import pytest

from reprokit.recipes import tiny_world


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("study")
    tiny_world.main(["--quick", "--run_dir", str(run_dir)])
    return run_dir, json.loads((run_dir / "findings.json").read_text())


def _check_interval(iv, lo=0.0, hi=1.0):
    point, low, high = iv
    assert lo <= low <= point <= high <= hi, iv


def test_quick_study_writes_every_table_and_figure_with_intervals(study):
    run_dir, saved = study
    assert set(saved["worlds"]) == {"control", "mode-0.2", "blindspot"}
    for name, world in saved["worlds"].items():
        _check_interval(world["base"]["pass@1"])
        _check_interval(world["full-data GRPO"]["change"], -1.0, 1.0)
        assert world["variance example"].startswith("train-")
        for label, setting in world["settings"].items():
            _check_interval(setting["pass@1"])
            _check_interval(setting["change"], -1.0, 1.0)
            assert setting["runs"] == len(setting["per run"]) >= 1, label
        for curve in world["pass@k curve"].values():
            points = [curve[k][0] for k in sorted(curve, key=int)]
            assert points == sorted(points), f"{name}: pass@k must not fall as k grows"
    control_pass_at_k = saved["worlds"]["control"]["pass@k"]
    assert set(control_pass_at_k) == {"base", "full-data GRPO", "focal tokens"}
    plots = ("curves_control.png", "curves_mode-0.2.png", "curves_blindspot.png", "pass_at_k_worlds.png", "pass_at_k.png")
    for plot in plots + ("one_shot_gain.png",):
        assert (run_dir / plot).stat().st_size > 1000, plot
    table = (run_dir / "findings.md").read_text()
    assert "variance rule" in table and "95%" in table


def test_one_example_lifts_the_mode_world_and_full_data_rl_lifts_the_control(study):
    _, saved = study
    mode = saved["worlds"]["mode-0.2"]
    one_shot = mode["settings"]["variance rule"]
    assert one_shot["change"][1] > 0, f"1-shot change in the mode world {one_shot['change']} should exclude 0"
    assert one_shot["mode"] > mode["base"]["mode"] + 0.1, (one_shot["mode"], mode["base"]["mode"])
    control = saved["worlds"]["control"]
    assert control["full-data GRPO"]["change"][1] > 0, control["full-data GRPO"]["change"]
    assert control["focal tokens"]["change"][1] > 0, control["focal tokens"]["change"]


def test_distillation_reaches_the_blind_spots_that_rl_does_not(study):
    _, saved = study
    blind = saved["worlds"]["blindspot"]["blind spots"]
    n = saved["study"]["eval_n"]
    base, sft, grpo = blind["base"], blind["SFT (full fine-tuning)"], blind["GRPO, same steps"]
    assert blind["problems with a blind-spot fact"] >= 10, blind
    assert base["p_right"] < 0.02 and base[f"pass@{n} on blind problems"][0] == 0.0, base
    assert sft["p_right"] > 0.5, sft
    assert sft[f"pass@{n} on blind problems"][1] > 0, f"SFT solves no blind-spot problem the base misses: {sft}"
    assert grpo["p_right"] < 0.05 and grpo["p_right"] < sft["p_right"] / 10, (grpo, sft)
