"""select_examples: the historical-variance ranking of 1-shot RLVR, through its command-line entry point."""

import csv
import json
from fractions import Fraction

import pytest

from reprokit.recipes import select_examples


def read_ranking(path):
    with path.open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["rank", "index", "score"]
        return [(int(row["rank"]), row["index"], float(row["score"])) for row in reader]


def plain_variance(values):
    """Population variance written out in exact arithmetic: mean of squared deviations from the mean."""
    values = [Fraction(v) for v in values]
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def reference_ranking(history, ties):
    """Selection by repeated maximum, a different algorithm from sorting: the largest score first; among
    equal scores the first in file order (ties='file') or the smallest index (ties='index')."""
    score = {key: plain_variance(values) for key, values in history.items()}
    left = list(history)
    ranking = []
    while left:
        best = left[0]
        for key in left[1:]:
            if score[key] > score[best] or (score[key] == score[best] and ties == "index" and int(key) < int(best)):
                best = key
        ranking.append((len(ranking) + 1, best, score[best]))
        left.remove(best)
    return ranking


def test_paper_record_gives_pi1_pi2_pi13_and_pi1209(data_dir, tmp_path):
    acc_file = data_dir / "train" / "dsr_sub_acc_step_500.json"
    returned = select_examples.main(["--acc_file", str(acc_file), "--run_dir", str(tmp_path)])
    ranking = read_ranking(tmp_path / "ranking.csv")
    assert len(ranking) == 1209
    assert ranking[0][:2] == (1, "124")  # π1, the wind-pressure problem
    assert ranking[1][:2] == (2, "267")  # π2
    assert ranking[12][:2] == (13, "682")  # π13
    assert ranking[-1][:2] == (1209, "789")  # π1209: the paper's last, a zero-variance example in file order
    assert [(r.rank, r.index) for r in returned] == [(rank, index) for rank, index, _ in ranking]
    assert (tmp_path / "ranking.png").stat().st_size > 0

    history = json.loads(acc_file.read_text())
    reference = reference_ranking(history, "file")
    assert [index for _, index, _ in ranking] == [index for _, index, _ in reference]
    for (_, _, score), (_, _, expected) in zip(ranking, reference):
        assert score == pytest.approx(float(expected), abs=1e-12)


def test_ties_by_index_and_grpo_record_with_string_keys(tmp_path):
    # The GRPO module writes {example id: [accuracy per epoch]}; row-position ids are strings of integers.
    history = {"7": [0.5, 0.5], "3": [0.0, 1.0], "10": [1.0, 0.0, 1.0, 0.0], "2": [0.25, 0.75], "5": [0.5, 0.5, 0.5]}
    acc_file = tmp_path / "example_accuracy.json"
    acc_file.write_text(json.dumps(history))
    for ties in ("file", "index"):
        out = tmp_path / ties
        select_examples.main(["--acc_file", str(acc_file), "--run_dir", str(out), "--ties", ties, "--plot_top", "0"])
        got = read_ranking(out / "ranking.csv")
        expected = reference_ranking(history, ties)
        assert [index for _, index, _ in got] == [index for _, index, _ in expected]
        assert [score for _, _, score in got] == pytest.approx([float(score) for _, _, score in expected])
        assert not (out / "ranking.png").exists()
    # ties by index are numeric: "3" before "10"; in file order "7" (first in the file) leads the zeros.
    assert [i for _, i, _ in read_ranking(tmp_path / "index" / "ranking.csv")] == ["3", "10", "2", "5", "7"]
    assert [i for _, i, _ in read_ranking(tmp_path / "file" / "ranking.csv")] == ["3", "10", "2", "7", "5"]


def test_writes_the_top_rows_of_the_training_file(tmp_path):
    rows = [{"prompt_text": f"question {i}", "label": "ABCDE"[i]} for i in range(5)]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    acc_file = tmp_path / "acc.json"
    acc_file.write_text(json.dumps({"0": [1, 1], "1": [0, 1], "2": [0.5, 0.5], "3": [0, 0.5], "4": [1, 1]}))
    select_examples.main(
        ["--acc_file", str(acc_file), "--run_dir", str(tmp_path / "out"), "--data", str(data),
         "--question_field", "prompt_text", "--answer_field", "label", "--write_top", "2"]
    )
    top = [json.loads(line) for line in (tmp_path / "out" / "top_examples.jsonl").read_text().splitlines()]
    assert top == [rows[1], rows[3]]


def test_errors_name_the_file_and_the_key(tmp_path):
    with pytest.raises(SystemExit, match="no_such.json"):
        select_examples.main(["--acc_file", str(tmp_path / "no_such.json"), "--run_dir", str(tmp_path)])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"0": [0.5, 1.0], "17": [0.5, "x"]}))
    with pytest.raises(ValueError, match=r"bad\.json.*'17'.*epoch 1"):
        select_examples.main(["--acc_file", str(bad), "--run_dir", str(tmp_path)])
    bad.write_text(json.dumps({"0": [0.5], "4": []}))
    with pytest.raises(ValueError, match=r"bad\.json.*'4'"):
        select_examples.main(["--acc_file", str(bad), "--run_dir", str(tmp_path)])
    bad.write_text(json.dumps([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"bad\.json.*JSON object"):
        select_examples.main(["--acc_file", str(bad), "--run_dir", str(tmp_path)])
    bad.write_text(json.dumps({"3": [0.5, 1.5]}))
    with pytest.raises(ValueError, match=r"'3'.*outside \[0, 1\]"):
        select_examples.main(["--acc_file", str(bad), "--run_dir", str(tmp_path)])
    good = tmp_path / "good.json"
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    good.write_text(json.dumps({"9": [0.5, 1.0]}))
    with pytest.raises(ValueError, match=r"no example with index '9'"):
        select_examples.main(["--acc_file", str(good), "--run_dir", str(tmp_path), "--data", str(data)])
