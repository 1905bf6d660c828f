"""docs/adapting.md tried as a new user would: write the files it shows, run every command it shows, in order,
in an empty folder on CPU; plus the two worked rewards it points to (reprokit/rewards/choice.py)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reprokit.rewards import REWARDS, get_reward
from reprokit.rewards.choice import choice_reward, extract_choice, numeric_reward, parse_number

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "adapting.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
FILE_MARKER = re.compile(r"<!-- file: ([\w./-]+) -->\s*$")
PRINTS = re.compile(r"^It prints `([^`]+)`")


def guide_steps(text: str) -> tuple[dict[str, str], list[tuple[str, str | None]]]:
    """The files the guide tells the user to create ({name: content}) and its shell commands in order, each
    with the output the guide says it prints (or None)."""
    files, commands = {}, []
    for match in FENCE.finditer(text):
        language, body = match.group(1), match.group(2)
        before = text[: match.start()].rstrip("\n").splitlines()
        marker = FILE_MARKER.search(before[-1]) if before else None
        if marker:
            files[marker.group(1)] = body
        elif language == "bash":
            after = text[match.end() :].lstrip("\n")
            printed = PRINTS.match(after)
            commands.append((body.strip(), printed.group(1) if printed else None))
    return files, commands


def test_the_guide_runs_as_written(tmp_path):
    files, commands = guide_steps(GUIDE.read_text())
    assert {"my_data.jsonl", "my_test.jsonl", "my_rewards.py", "my_one_shot.yaml"} <= set(files)
    assert len(commands) >= 6, "the guide lost commands"
    for name, content in files.items():
        (tmp_path / name).write_text(content)

    env = dict(os.environ)
    # `python` in the guide is this interpreter; the package is importable as after `pip install -e .`.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false")
    started = time.perf_counter()
    for command, printed in commands:
        result = subprocess.run(
            ["bash", "-e", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"`{command}` failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        if printed is not None:
            assert result.stdout.strip().splitlines()[-1] == printed, f"`{command}` printed {result.stdout!r}"
    elapsed = time.perf_counter() - started

    ranking = (tmp_path / "runs/my_ranking/ranking.csv").read_text().splitlines()
    assert ranking[0] == "rank,index,score" and len(ranking) == 1 + 6
    accuracy = json.loads((tmp_path / "runs/my_full_data/example_accuracy.json").read_text())
    assert sorted(accuracy, key=int) == [str(i) for i in range(6)]
    assert all(len(history) == 3 for history in accuracy.values()), "three steps of all six questions = three epochs"
    top = json.loads((tmp_path / "runs/my_ranking/top_examples.jsonl").read_text())
    data = [json.loads(line) for line in files["my_data.jsonl"].splitlines()]
    assert top == data[int(ranking[1].split(",")[1])]
    assert (tmp_path / "runs/my_one_shot/checkpoints/last.ckpt").is_file()
    summary = json.loads((tmp_path / "runs/my_pass_at_k/summary.json").read_text())
    assert set(summary["models"]) == {"base", "trained"} and summary["problems"] == {"my_test": 4}
    assert (tmp_path / "runs/my_pass_at_k/pass_at_k.png").stat().st_size > 0
    entropy = json.loads((tmp_path / "runs/my_entropy/entropy_stats.json").read_text())
    assert entropy["num_responses"] == 4 * 8 and entropy["temperature"] == 0.6
    print(f"the guide's {len(commands)} commands took {elapsed:.0f} s")


def test_choice_reward_reads_the_letter():
    cases = [
        ("So the answer is \\boxed{C}.", "C", 1.0),
        ("\\boxed{\\text{(b)}}", "B", 1.0),
        ("Answer: (d)", "D", 1.0),
        ("The answer is C. A quick check agrees.", "C", 1.0),  # the stated answer beats a later capital
        ("Options A and B fail, so E.", "E", 1.0),
        ("I pick a.", "A", 1.0),  # lower case only when no capital letter stands alone
        ("Bacteria and Cells", "B", 0.0),  # letters inside words do not count
        ("no idea", "A", 0.0),
    ]
    assert choice_reward([c for c, _, _ in cases], [g for _, g, _ in cases]) == [r for _, _, r in cases]
    assert choice_reward(["(B)"], ["(b)"]) == [1.0]
    assert extract_choice("nothing here") is None
    with pytest.raises(ValueError, match=r"answer 'F' of completion 0"):
        choice_reward(["A"], ["F"])


def test_numeric_reward_tolerances_from_row_fields():
    completions = ["\\boxed{12.7}", "V = 12.75", "\\boxed{\\frac{3}{4}}", "total 1,234.5", "\\boxed{45\\%}", "none", "x = -0.0000001"]
    answers = ["12.7", "12.7", "0.75", "1234.5", "0.45", "1", "0"]
    assert numeric_reward(completions, answers) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    # A tighter relative tolerance on the second row only, as a row field the trainer passes per completion.
    rel = [None, 0.001, None, None, None, None, None]
    assert numeric_reward(completions, answers, rel_tol=rel) == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    assert numeric_reward(["7.5"], ["7"], abs_tol=0.6) == [1.0]
    assert numeric_reward(["7.5"], ["7"]) == [0.0]
    assert parse_number("3/4") == 0.75 and parse_number("-2.5e-3") == -0.0025 and parse_number("twelve") is None
    with pytest.raises(ValueError, match=r"answer 'twelve' of completion 0 is not a number"):
        numeric_reward(["12"], ["twelve"])
    with pytest.raises(ValueError, match=r"rel_tol='x' of completion 0"):
        numeric_reward(["12"], ["12"], rel_tol=["x"])


def test_worked_rewards_are_registered_by_name():
    assert REWARDS["choice"] is choice_reward and REWARDS["numeric"] is numeric_reward
    assert get_reward("choice") is choice_reward
    assert get_reward("reprokit.rewards.choice:numeric_reward") is numeric_reward
