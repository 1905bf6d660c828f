"""The six math benchmarks of the 1-shot RLVR evaluation, from a local folder or the Hugging Face Hub.

A local folder is tried first: ``data_dir`` (else ``$REPROKIT_DATA_DIR``) laid out as
``<dir>/eval/<name>/test.jsonl``, or ``<dir>`` being that ``eval`` folder itself. The Hub copy
named in :data:`BENCHMARKS` is the fallback; without a network it is read from the local Hugging
Face cache only (``HF_HUB_OFFLINE=1`` forces that), so a missing benchmark fails in seconds
instead of waiting on download retries.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from reprokit import registry
from reprokit.data._hub import load_hub_dataset
from reprokit.data.errors import DataError
from reprokit.data.readers import AUTO, Example, _build_examples, _hf_records, _jsonl_records, _lookup, _RowError, _text

__all__ = ["BENCHMARKS", "Benchmark", "default_data_dirs", "load_benchmark", "load_problems"]

@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives and how to read its rows.

    Attributes:
        name: registry key and local folder name (``<dir>/eval/<name>/``).
        question_field: problem text field in the local JSONL.
        answer: ``"field:<name>"`` to read a field (lists joined with ", "), or ``"boxed:<name>"``
            for the last ``\\boxed{}`` inside that field (a row with an ``answer`` field uses it).
        hub_id / hub_config / hub_split: the Hub copy tried when no local folder has it.
        rows: row count of the reference copy, for checks and documentation.
    """

    name: str
    question_field: str
    answer: str
    hub_id: str
    hub_split: str
    hub_config: str | None = None
    rows: int | None = None


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("math500", "problem", "field:answer", "HuggingFaceH4/MATH-500", "test", rows=500),
        Benchmark("aime24", "problem", "field:answer", "HuggingFaceH4/aime_2024", "train", rows=30),
        Benchmark("aime25", "problem", "field:answer", "math-ai/aime25", "test", rows=30),
        Benchmark("amc23", "question", "field:answer", "math-ai/amc23", "test", rows=40),
        Benchmark("minerva_math", "problem", "boxed:solution", "math-ai/minervamath", "test", rows=272),
        Benchmark(
            "olympiadbench", "question", "field:final_answer", "Hothan/OlympiadBench", "train",
            hub_config="OE_TO_maths_en_COMP", rows=675,
        ),
    )
}


# A source checkout's sibling data folder (the layout of this project's machines: <root>/main and <root>/shared/data).
_BESIDE_CHECKOUT = Path(__file__).resolve().parents[3] / "shared" / "data"


def default_data_dirs() -> list[Path]:
    """Where data is looked for when no folder is given: ``$REPROKIT_DATA_DIR``, then ``../shared/data`` beside a
    source checkout, each only if it exists."""
    found = [Path(os.environ["REPROKIT_DATA_DIR"])] if os.environ.get("REPROKIT_DATA_DIR") else []
    if _BESIDE_CHECKOUT.is_dir():
        found.append(_BESIDE_CHECKOUT)
    return found


def load_benchmark(name: str, data_dir: str | Path | None = None, limit: int | None = None) -> list[Example]:
    """Load a benchmark as examples; ``fields["benchmark"]`` holds its name and ids are ``"<name>/<row>"``.

    Args:
        name: a key of :data:`BENCHMARKS`, a benchmark name of :mod:`reprokit.registry` (``world_test`` /
            ``world_hard``: the CPU world's test split and harder slice), or ``"package.module:function"``
            called as ``function(name, limit)`` and returning the examples.
        data_dir: folder with ``eval/<name>/*.jsonl`` (or the ``eval`` folder itself); default
            ``$REPROKIT_DATA_DIR``, then ``../shared/data`` beside a source checkout. Without a local copy the Hub
            is tried.
        limit: keep only the first ``limit`` problems (quick runs).

    Raises:
        DataError: unknown name, or neither a local copy nor the Hub is reachable (the message lists
            what was tried and how to point at a local copy).
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit={limit} must be a positive number of problems (or None for all)")
    if name not in BENCHMARKS:
        if not registry.lookup("benchmark", name) and ":" not in name:
            available = ", ".join([*BENCHMARKS, *registry.names("benchmark")])
            raise DataError(
                f"unknown benchmark {name!r}; available: {available}, or a 'package.module:function' returning the "
                "problems (see reprokit.registry)"
            )
        try:
            load = registry.resolve("benchmark", name, what="benchmark")
        except ValueError as err:
            raise DataError(str(err)) from None
        return load(name, limit)  # e.g. generated in-process from the CPU world's seed: no file to find
    spec = BENCHMARKS[name]
    roots = [Path(data_dir)] if data_dir is not None else []
    if data_dir is None:
        roots += default_data_dirs()
    tried: list[str] = []
    path = None
    for root in roots:
        path = _local_file(root, name, tried)
        if path is not None:
            break
    if path is not None:
        examples = _build_examples(
            str(path), _jsonl_records(path), question_field=spec.question_field, answer_field=AUTO,
            id_field=None, skip_invalid=False, answer_getter=_answer_getter(spec.answer),
        )
    else:
        dataset, reason = load_hub_dataset(spec.hub_id, spec.hub_config, spec.hub_split)
        if dataset is None:
            where = ", ".join(tried) if tried else "no local folder (data_dir and REPROKIT_DATA_DIR are unset, no ../shared/data beside the checkout)"
            raise DataError(
                f"benchmark {name!r} not found: tried {where}; Hugging Face Hub dataset {spec.hub_id!r} "
                f"is not reachable ({reason}). Set --data_dir or REPROKIT_DATA_DIR to a folder laid out as "
                f"<dir>/eval/{name}/test.jsonl (or to the eval folder itself), or connect to the Hub"
            )
        source = f"hf://{spec.hub_id}"
        examples = _build_examples(
            source, _hf_records(dataset, source), question_field=AUTO, answer_field=AUTO,
            id_field=None, skip_invalid=False, answer_getter=_answer_getter(spec.answer),
        )
    if limit is not None:
        examples = examples[:limit]
    for example in examples:
        example.fields["benchmark"] = name
        example.id = f"{name}/{example.id}"
    return examples


def _local_file(root: Path, name: str, tried: list[str]) -> Path | None:
    for folder in (root / "eval" / name, root / name):
        tried.append(str(folder))
        if not folder.is_dir():
            continue
        if (folder / "test.jsonl").is_file():
            return folder / "test.jsonl"
        files = sorted(folder.glob("*.jsonl"))
        if len(files) == 1:
            return files[0]
        if files:
            raise DataError(
                f"{folder}: several JSONL files ({', '.join(f.name for f in files)}) and no test.jsonl; "
                "name the evaluation file test.jsonl"
            )
    return None


def _answer_getter(answer: str) -> Callable[[Mapping], str]:
    kind, _, field = answer.partition(":")
    if kind == "field":
        def from_field(row: Mapping) -> str:
            value = _lookup(row, field)
            # AMC23 stores its integer answers as floats (27.0); "27" is what a solution boxes.
            if isinstance(value, float) and value.is_integer():
                return str(int(value))
            return _text(row, field, "answer_field", join_lists=True)

        return from_field

    def from_boxed(row: Mapping) -> str:
        # A Hub copy may already carry the extracted answer.
        if isinstance(row.get("answer"), str) and row["answer"].strip():
            return row["answer"]
        boxed = _last_boxed(_text(row, field, "answer_field", join_lists=True))
        if not boxed:
            raise _RowError(f"no \\boxed{{...}} answer in field '{field}'")
        return boxed

    return from_boxed


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (nested braces matched) or ``\\boxed x``; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\fbox") if text.startswith("\\fbox", start) else len("\\boxed"))
    body = i
    while i < len(text) and text[i].isspace():
        i += 1
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j].strip()
        return None  # unbalanced braces
    if i == body:  # "\boxedx" is another command, not a boxed answer
        return None
    end = i
    while end < len(text) and not text[end].isspace() and text[end] != "$":
        end += 1
    return text[i:end] or None


def load_problems(
    spec: str,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    question_field: str = AUTO,
    answer_field: str = AUTO,
) -> list[Example]:
    """Problems named by one string, as the analysis recipes take them: a registered example set ``PREFIX:REST``
    (``world:test``), a data file (jsonl/json/csv/parquet, with its question and answer fields), or a benchmark
    name for :func:`load_benchmark`; the first ``limit`` of them."""
    from reprokit.data.readers import read_examples

    prefix, sep, rest = spec.partition(":")
    if sep and registry.lookup("examples", prefix) and not Path(spec).exists():
        examples = registry.resolve("examples", prefix, what="problems")(rest)
    elif Path(spec).exists():
        examples = read_examples(spec, question_field=question_field, answer_field=answer_field)
    else:
        return load_benchmark(spec, data_dir=data_dir, limit=limit)
    return examples[:limit] if limit else examples
