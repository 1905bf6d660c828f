"""Example selection for 1-shot RLVR (Wang et al. 2025, arXiv 2504.20571, "historical variance score").

What it reproduces: run RLVR on a whole training set, record every example's training accuracy in each
epoch, then rank the examples by the variance of that accuracy history, largest first; π_j is the j-th.
An example the policy keeps flipping between solving and failing is the one whose reward signal
carries the most learning. With the paper's record of 500 DSR-sub steps
(``shared/data/train/dsr_sub_acc_step_500.json``) it gives π1 = index 124, π2 = 267, π13 = 682.

The score is the population variance (``np.var``: divide by the number of epochs). Equal scores (about
a hundred DSR-sub examples were always or never solved: variance 0) keep the order of the file, as a
stable sort of the paper's record does; that order also gives its π1209 = index 789. ``--ties index``
orders them by index instead (numerically when every index is an integer). The paper uses no other
filter.

Input: ``--acc_file`` maps an example index to its list of per-epoch accuracies, as JSON; the paper's
file and the ``example_accuracy.json`` that a GRPO run writes to its run directory
(``<run_dir>/example_accuracy.json``) are both in this format, so you can rank your own data the same way.
Output in ``--run_dir``: ``ranking.csv`` (columns rank, index, score), ``ranking.png`` (the top
scores), and the top of the ranking printed. With ``--data`` (the training file the indices refer to)
it also writes ``top_examples.jsonl``: the rows of the ``--write_top`` best-ranked examples, unchanged,
ready for ``python -m reprokit.recipes.one_shot --data.examples RUN_DIR/top_examples.jsonl``.

    python -m reprokit.recipes.select_examples --acc_file ../shared/data/train/dsr_sub_acc_step_500.json \\
        --run_dir runs/select_examples
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from reprokit import plots
from reprokit.cli import Recipe, parse


@dataclass
class SelectOptions:
    """Which accuracy record to rank and where the ranking goes."""

    acc_file: str
    """JSON file: example index -> list of per-epoch training accuracies (a GRPO run's example_accuracy.json)."""
    run_dir: str = "runs/select_examples"
    """Output folder: ranking.csv, ranking.png."""
    show: int = 10
    """Print this many top-ranked examples."""
    plot_top: int = 20
    """Bar plot of the scores of this many top-ranked examples (0 = no plot)."""
    ties: Literal["file", "index"] = "file"
    """Order of equal scores: file (the record's order, as the paper's ranking) or index."""
    data: str | None = None
    """The training file the indices refer to; set it to write the top rows to top_examples.jsonl."""
    question_field: str = "auto"
    """Question field of --data (as in the training run)."""
    answer_field: str = "auto"
    """Answer field of --data (as in the training run)."""
    id_field: str | None = None
    """Id field of --data, if the training run used one (default: the row position is the index)."""
    skip_invalid: bool = True
    """Skip rows of --data without a question or answer, as the training recipes do (indices stay row positions)."""
    write_top: int = 1
    """With --data: how many top-ranked examples go to top_examples.jsonl (π1 alone by default)."""


@dataclass
class RankedExample:
    """One row of ranking.csv."""

    rank: int
    index: str
    score: float


RECIPE = Recipe(
    name="select_examples", description=__doc__.split("\n\n")[0], sections={"": SelectOptions}, run_dir_key="run_dir",
    registry_sections=False,
)


def main(argv: list[str] | None = None) -> list[RankedExample]:
    """Run from the command line; returns the full ranking."""
    opts: SelectOptions = parse(RECIPE, argv).section("")

    history = read_accuracy_file(opts.acc_file)
    ranking = rank_examples(history, ties=opts.ties)
    run_dir = Path(opts.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_ranking(ranking, run_dir / "ranking.csv")
    print(f"[reprokit] ranked {len(ranking)} examples of {opts.acc_file} by the variance of their training accuracy")
    _print_top(ranking, history, opts.show)
    if opts.plot_top > 0:
        png = plots.ranking(ranking[: opts.plot_top], run_dir / "ranking.png")
        print(f"[reprokit] plot: {png}")
    print(f"[reprokit] ranking: {csv_path}")
    if opts.data is not None:
        top = write_top_examples(ranking[: opts.write_top], opts, run_dir / "top_examples.jsonl")
        print(f"[reprokit] top {opts.write_top} example(s) of {opts.data}: {top}")
    return ranking


def read_accuracy_file(path: str | Path) -> dict[str, list[float]]:
    """``{index: [accuracy per epoch]}`` from a JSON object; errors name the file, the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(
            f"--acc_file {path}: no such file. Point it at a JSON record of per-epoch accuracies, such as the "
            "example_accuracy.json a GRPO run writes to its run directory"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(
            f"{path}: expected a non-empty JSON object mapping each example index to a list of per-epoch "
            f'accuracies ({{"124": [0.25, 0.5, ...], ...}}), got {type(data).__name__}'
            + (" with no entries" if isinstance(data, dict) else "")
        )
    history = {}
    for key, values in data.items():
        if not isinstance(values, list) or not values:
            raise ValueError(
                f"{path}: key {key!r} holds {values!r}; every index needs a non-empty list of per-epoch accuracies"
            )
        for epoch, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(
                    f"{path}: key {key!r}, epoch {epoch}: {value!r} is not a finite number; accuracies are "
                    "fractions of correct responses in [0, 1]"
                )
            if not 0 <= value <= 1:
                raise ValueError(f"{path}: key {key!r}, epoch {epoch}: accuracy {value} is outside [0, 1]")
        history[str(key)] = [float(v) for v in values]
    return history


def variance_score(accuracies: list[float]) -> float:
    """The historical variance score: population variance of the per-epoch accuracies."""
    return float(np.var(np.asarray(accuracies, dtype=np.float64)))


def rank_examples(history: dict[str, list[float]], ties: str = "file") -> list[RankedExample]:
    """Examples by decreasing variance score.

    ``ties="file"`` keeps equal scores in the order of ``history`` (the file's order; Python's sort is
    stable); ``ties="index"`` orders them by index, numerically when every index is an integer.
    """
    if ties not in ("file", "index"):
        raise ValueError(f"ties={ties!r}: use 'file' (the record's order) or 'index'")
    numeric = all(key.lstrip("-").isdigit() for key in history)
    position = {key: i for i, key in enumerate(history)}
    tie_key = (lambda key: int(key) if numeric else key) if ties == "index" else position.__getitem__
    scores = {key: variance_score(values) for key, values in history.items()}
    # Equal variances can differ in the last bits (another list length, another summation order); rounding
    # makes them tie, while distinct variances of accuracies (fractions of a few samples) differ far more.
    ordered = sorted(scores, key=lambda key: (-round(scores[key], 12), tie_key(key)))
    return [RankedExample(rank=i + 1, index=key, score=scores[key]) for i, key in enumerate(ordered)]


def write_ranking(ranking: list[RankedExample], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "index", "score"])
        for row in ranking:
            writer.writerow([row.rank, row.index, repr(row.score)])
    return path


def write_top_examples(top: list[RankedExample], opts: SelectOptions, path: Path) -> Path:
    """The source rows of ``top`` (in rank order) as JSONL; an index missing from the data is an error."""
    from reprokit.data import read_examples

    examples = read_examples(
        opts.data, question_field=opts.question_field, answer_field=opts.answer_field, id_field=opts.id_field,
        skip_invalid=opts.skip_invalid,
    )
    by_id = {example.id: example for example in examples}
    missing = [row.index for row in top if row.index not in by_id]
    if missing:
        how = f"field {opts.id_field!r}" if opts.id_field else "0-based row positions"
        raise ValueError(
            f"--data {opts.data}: no example with index {missing[0]!r} (its indices are {how}, "
            f"{len(examples)} rows); pass the file and --id_field the training run used"
        )
    with path.open("w") as f:
        for row in top:
            f.write(json.dumps(by_id[row.index].fields, default=str) + "\n")
    return path


def _print_top(ranking: list[RankedExample], history: dict[str, list[float]], show: int) -> None:
    print(f"{'rank':>5}  {'index':>8}  {'score':>8}  {'mean acc':>8}  epochs")
    for row in ranking[:show]:
        values = history[row.index]
        print(f"{row.rank:>5}  {row.index:>8}  {row.score:>8.5f}  {np.mean(values):>8.3f}  {len(values)}")


if __name__ == "__main__":
    main()
