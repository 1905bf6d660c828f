"""The samples file: one graded response per JSON line, appended as it is produced, read back tolerating the
torn last line a killed run leaves.

``{"model", "benchmark", "problem_id", "sample_index", "text", "correct", "n_tokens", "truncated"}``
(``correct`` is the reward, a float). Lines are appended as each batch is graded and flushed, so a killed
run loses at most the batch in flight; :func:`read_samples` drops a last line cut off by the kill.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

__all__ = ["Sample", "SampleWriter", "read_jsonl_lines", "read_samples", "write_samples_atomically"]


@dataclass
class Sample:
    """One graded response, one line of the samples file."""

    model: str
    benchmark: str
    problem_id: str
    sample_index: int
    text: str
    correct: float
    """The reward; a sample counts as solving its problem when this is >= 1."""
    n_tokens: int
    truncated: bool
    """No end-of-response token within max_new_tokens."""

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.model, self.problem_id, self.sample_index)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


_SAMPLE_FIELDS = tuple(f.name for f in fields(Sample))


def _sample_from_row(row: object, where: str) -> Sample:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [name for name in _SAMPLE_FIELDS if name not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    return Sample(
        model=str(row["model"]),
        benchmark=str(row["benchmark"]),
        problem_id=str(row["problem_id"]),
        sample_index=int(row["sample_index"]),
        text=str(row["text"]),
        correct=float(row["correct"]),
        n_tokens=int(row["n_tokens"]),
        truncated=bool(row["truncated"]),
    )


def read_jsonl_lines(path: str | Path, *, repair: bool = False) -> list[tuple[int, str]]:
    """The complete lines of an append-only JSONL file, numbered from 1; a missing file has none.

    A last line without its newline is what a killed run leaves: it is reported (a warning) and ignored, and
    with ``repair=True`` cut from the file, so that the next append starts on a fresh line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes up to and including the last complete line
    if end < len(data):
        warnings.warn(
            f"{path}: the last line ({len(data) - end} bytes) was cut off (a killed run?); ignoring it"
            + (" and removing it from the file" if repair else ""),
            stacklevel=3,
        )
        if repair:
            with path.open("r+b") as f:
                f.truncate(end)
    return [(n, line) for n, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1) if line.strip()]


def read_samples(path: str | Path, *, repair: bool = False) -> list[Sample]:
    """Every sample in a samples file, in file order; a missing file reads as no samples.

    A torn last line is dropped (see :func:`read_jsonl_lines`). A key ``(model, problem_id, sample_index)`` that
    occurs twice keeps its first line (reported).

    Raises:
        ValueError: a complete line in the middle of the file is not a sample (the message names the line).
    """
    path = Path(path)
    samples: list[Sample] = []
    seen: set[tuple[str, str, int]] = set()
    duplicates = 0
    for number, line in read_jsonl_lines(path, repair=repair):
        try:
            sample = _sample_from_row(json.loads(line), f"{path} line {number}")
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{path} line {number} is not a sample ({err}); delete that line (its sample is generated again) "
                "or use another run folder"
            ) from None
        if sample.key in seen:
            duplicates += 1
            continue
        seen.add(sample.key)
        samples.append(sample)
    if duplicates:
        warnings.warn(
            f"{path}: {duplicates} repeated (model, problem_id, sample_index) line(s); kept the first", stacklevel=2
        )
    return samples


class SampleWriter:
    """Appends samples to a samples file; every :meth:`write` ends flushed and synced to disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, samples: Iterable[Sample]) -> None:
        self._file.write("".join(s.to_json() + "\n" for s in samples))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_samples_atomically(path: Path, samples: Iterable[Sample]) -> None:
    """Replace the file in one rename, so an interrupted rewrite leaves the old file intact."""
    tmp = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False)
    with tmp as f:
        for sample in samples:
            f.write(sample.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


