"""The GRPO recipes' presets: every shipped YAML parses into valid sections, each recipe ships its paper's own
settings as `paper`, and README's departures table of every one-GPU preset lists exactly the settings in which it
differs from `paper`, with their current values."""

import re
from pathlib import Path

import pytest

from reprokit.cli import PRESETS_DIR, parse, preset_departures, preset_names, render_value
from reprokit.recipes import focal_tokens, one_shot

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"one_shot": one_shot.RECIPE, "focal_tokens": focal_tokens.RECIPE}
ONE_GPU = [("one_shot", "qwen2.5-math-1.5b"), ("one_shot", "consumer-12gb"), ("focal_tokens", "qwen2.5-math-1.5b")]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_preset_parses_into_valid_sections(recipe):
    names = preset_names(recipe)
    assert {"paper", "qwen2.5-math-1.5b", "cpu"} <= set(names)
    for name in names:
        parsed = parse(RECIPES[recipe], ["--preset", name])
        for section in ("run", "model", "rollout", "loss", "train", "data", "prompt", "eval"):
            assert parsed.section(section) is not None, f"{recipe}/{name}.yaml: no {section} section"


def test_paper_presets_hold_the_official_scripts_settings():
    shot = parse(one_shot.RECIPE, ["--preset", "paper"])
    rollout, loss, train, run, data = (shot.section(s) for s in ("rollout", "loss", "train", "run", "data"))
    assert (train.finetune, train.lr, train.weight_decay, loss.kl_coef, loss.entropy_coef) == ("full", 1e-6, 0.01, 0.001, 0.001)
    assert (data.prompts_per_step, rollout.group_size, train.mini_batch_size, rollout.max_new_tokens) == (128, 8, None, 3072)
    assert (run.devices, run.strategy, run.max_steps, rollout.stop_at_chat_end) == ("8", "ddp", 2000, False)
    focal = parse(focal_tokens.RECIPE, ["--preset", "paper"])
    rollout, loss, train, run, data = (focal.section(s) for s in ("rollout", "loss", "train", "run", "data"))
    assert (data.prompts_per_step, rollout.group_size, train.mini_batch_size) == (512, 16, 32)  # 16 updates per step
    assert (loss.epsilon_low, loss.epsilon_high, loss.dual_clip, train.weight_decay, train.warmup_steps) == (0.2, 0.28, 10.0, 0.1, 10)
    assert (rollout.max_new_tokens, rollout.overlong_buffer, loss.focal_fraction, loss.focal_scope) == (20480, 4096, 0.2, "micro_batch")
    assert (run.strategy, run.devices, run.num_nodes, train.finetune) == ("fsdp", "8", 16, "full")


def _cells(line: str) -> list[str]:
    """A markdown table row's cells; a pipe written as \\| (inside code) is not a cell border."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _readme_departures(recipe: str, preset: str) -> dict[str, tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    marker = f"<!-- departures: {recipe} {preset} -->"
    assert marker in text, f"README.md has no departures table for {recipe} {preset} ({marker})"
    rows = {}
    for line in text.split(marker, 1)[1].lstrip().splitlines()[2:]:
        if not line.startswith("|"):
            break
        key, paper, mine, why, effect = _cells(line)
        assert why and effect, f"{key}: a departure needs its reason and its expected effect"
        rows[key.strip("`")] = (paper.strip("`"), mine.strip("`"))
    return rows


@pytest.mark.parametrize(("recipe", "preset"), ONE_GPU)
def test_readme_lists_every_departure_of_a_one_gpu_preset_from_its_paper_preset(recipe, preset):
    want = {key: (render_value(paper), render_value(mine)) for key, paper, mine in preset_departures(RECIPES[recipe], preset)}
    got = _readme_departures(recipe, preset)
    assert sorted(set(want) - set(got)) == [], "README leaves these departures out"
    assert sorted(set(got) - set(want)) == [], "README lists settings that no longer differ"
    for key in want:
        assert got[key] == want[key], f"{key}: README shows {got[key]}, the presets say {want[key]}"


def test_departures_flag_prints_the_difference_and_exits(capsys):
    with pytest.raises(SystemExit) as stop:
        one_shot.run(["--preset", "consumer-12gb", "--departures"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "rollout.max_new_tokens" in out and "train.lr" in out and str(PRESETS_DIR / "one_shot" / "paper.yaml") in out


def test_an_old_spelling_is_refused_with_the_new_one_but_a_saved_run_in_the_old_layout_resumes(tmp_path):
    """Options that moved sections: a flag or a user's config with the old spelling fails naming the new one; the
    config.yaml of a run saved before the move is read with every option in its new section (same values)."""
    with pytest.raises(SystemExit, match=r"--grpo\.lr has moved: write --train\.lr"):
        parse(one_shot.RECIPE, ["--preset", "cpu", "--grpo.lr", "1e-3"])
    user = tmp_path / "mine.yaml"
    user.write_text("grpo:\n  lr: 0.001\n  top_entropy_quantile: 0.2\n")
    with pytest.raises(SystemExit, match=r"grpo: lr -> train: lr; grpo: top_entropy_quantile -> loss: focal_fraction"):
        parse(one_shot.RECIPE, ["--config", str(user)])
    with pytest.raises(SystemExit, match="is gone: every GRPO run writes"):
        parse(one_shot.RECIPE, ["--grpo.accuracy_file", "x.json"])
    with pytest.raises(SystemExit, match=r"--world\.hidden_size has moved: write --world_base\.hidden_size"):
        parse(one_shot.RECIPE, ["--preset", "cpu", "--world.hidden_size", "64"])

    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(
        "run:\n  max_steps: 7\n"
        "grpo:\n  lr: 0.003\n  top_entropy_quantile: 0.2\n  val_n: 3\n  val_temperature: 0.6\n  group_size: 6\n  accuracy_file: old.json\n"
        "data:\n  template: 'Q: {question} A:'\n  prompts_per_step: 2\n"
    )
    parsed = parse(one_shot.RECIPE, ["--run_dir", str(run_dir), "--resume"])
    assert parsed.section("train").lr == 0.003 and parsed.section("loss").focal_fraction == 0.2
    assert parsed.section("eval").n == 3 and parsed.section("rollout").group_size == 6
    assert parsed.section("prompt").template == "Q: {question} A:" and parsed.section("data").prompts_per_step == 2
    assert parsed.section("run").max_steps == 7
